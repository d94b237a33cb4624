//! The API key, the usage plan and the key's membership against the local AWS, in both regions: the
//! key generated in the primary and given the same value in the secondary, each attached to its
//! region's plan; second plans are empty; a changed setting is exactly that change; a key with
//! another value is replaced (and its membership then re-created); deleting ours leaves an
//! unrelated key and plan alone.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_apigateway::Client;
use deployer::desired::{Kind, Resolved, Resource, desired, reference_key, resolve};
use deployer::plan::{Action, Change, Plan, plan};
use deployer::resources::{Scope, api_key, rest_api, usage_plan};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

struct Region {
    name: &'static str,
    client: Client,
}

struct Fixture {
    scope: Scope,
    all: Vec<Resource>,
    resolved: Resolved,
}

impl Fixture {
    fn new(app: &str) -> Fixture {
        let d = support::deployment(app, &[]);
        let mut resolved = Resolved::new();
        for r in [REGION_A, REGION_B] {
            resolved.insert(
                reference_key(Kind::LambdaAlias, r, "live"),
                json!(format!(
                    "arn:aws:lambda:{r}:123456789012:function:{app}-test-api:live"
                )),
            );
        }
        Fixture {
            scope: Scope {
                app: app.to_owned(),
                stage: "test".to_owned(),
            },
            all: desired(&d, "sha"),
            resolved,
        }
    }

    /// The desired resource of `kind` in `region`, with the references known so far resolved.
    fn want(&self, kind: Kind, region: &str) -> Resource {
        let one: Vec<Resource> = self
            .all
            .iter()
            .filter(|r| r.kind == kind && r.region.as_deref() == Some(region))
            .cloned()
            .collect();
        resolve(&one, &self.resolved).remove(0)
    }

    /// Records `observed`'s `id` as the value of references to it.
    fn learn(&mut self, observed: &Resource) {
        let region = observed.region.as_deref().unwrap();
        self.resolved.insert(
            reference_key(observed.kind, region, &observed.name),
            observed.props["id"].clone(),
        );
    }
}

async fn keys(f: &Fixture, r: &Region, expected: Option<&str>) -> Vec<Resource> {
    let want = f.want(Kind::ApiKey, r.name);
    api_key::observe(
        &r.client,
        r.name,
        &f.scope,
        &want.name,
        expected,
        &want.props["value"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn plans(f: &Fixture, r: &Region) -> Vec<Resource> {
    let want = f.want(Kind::UsagePlan, r.name);
    usage_plan::observe(&r.client, r.name, &f.scope, &[want.name])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn memberships(f: &Fixture, r: &Region) -> Vec<Resource> {
    let name = f.want(Kind::UsagePlanKey, r.name).name;
    let plans = plans(f, r).await;
    let keys = keys(f, r, None).await;
    usage_plan::observe_key(&r.client, r.name, &name, &plans, &keys)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

/// Applies `plan` to one kind; `value` for API keys.
async fn apply(r: &Region, plan: &Plan, want: &[Resource], have: &[Resource], value: Option<&str>) {
    for change in &plan.changes {
        let want = want.iter().find(|w| w.name == change.name);
        let have = have.iter().find(|h| h.name == change.name);
        let done = match change.kind {
            Kind::ApiKey => api_key::apply(&r.client, change, want, have, value).await,
            Kind::UsagePlan => usage_plan::apply(&r.client, change, want, have).await,
            Kind::UsagePlanKey => usage_plan::apply_key(&r.client, change, want, have).await,
            other => panic!("{other:?}"),
        };
        done.unwrap_or_else(|e| panic!("{e}"));
    }
}

fn fields(change: &Change) -> Vec<String> {
    match &change.action {
        Action::Update { changes } | Action::Replace { changes } => {
            changes.iter().map(|c| c.field.clone()).collect()
        }
        _ => Vec::new(),
    }
}

/// Creates the region's REST API (the plan needs its stage) and records its ID.
async fn rest_api_in(f: &mut Fixture, r: &Region) {
    let want = f.want(Kind::RestApi, r.name);
    let create = plan(std::slice::from_ref(&want), &[]);
    rest_api::apply(&r.client, &create.changes[0], Some(&want), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let observed = rest_api::observe(&r.client, r.name, &f.scope, &[want.name])
        .await
        .unwrap();
    f.learn(&observed[0]);
}

#[tokio::test]
async fn key_plan_and_membership_reconcile_in_both_regions() {
    let local = LocalAws::from_env();
    let app = format!("ak{}", std::process::id() % 1_000_000);
    let regions: Vec<Region> = [REGION_A, REGION_B]
        .into_iter()
        .map(|name| Region {
            name,
            client: Client::new(&local.sdk_config(name)),
        })
        .collect();
    let mut f = Fixture::new(&app);
    let (a, b) = (&regions[0], &regions[1]);

    // A key and a plan of the same app in another stage, made beforehand: never ours.
    let unrelated_key = a
        .client
        .create_api_key()
        .name(format!("{app}-other-key"))
        .enabled(true)
        .tags("tworegion:app", &app)
        .tags("tworegion:stage", "other")
        .send()
        .await
        .unwrap()
        .id()
        .unwrap()
        .to_owned();
    let unrelated_plan = a
        .client
        .create_usage_plan()
        .name(format!("{app}-other-plan"))
        .tags("tworegion:app", &app)
        .tags("tworegion:stage", "other")
        .send()
        .await
        .unwrap()
        .id()
        .unwrap()
        .to_owned();

    // The key: generated in the primary, the same value in the secondary.
    let want_a = f.want(Kind::ApiKey, a.name);
    let first = plan(std::slice::from_ref(&want_a), &keys(&f, a, None).await);
    assert_eq!(first.changes.len(), 1);
    assert_eq!(first.changes[0].action, Action::Create);
    apply(a, &first, std::slice::from_ref(&want_a), &[], None).await;
    let key_a = keys(&f, a, None).await;
    assert_eq!(key_a.len(), 1, "only ours: {key_a:?}");
    let secret = api_key::value(&a.client, key_a[0].props["id"].as_str().unwrap())
        .await
        .unwrap();
    assert!(secret.len() >= 20);

    let want_b = f.want(Kind::ApiKey, b.name);
    let first = plan(
        std::slice::from_ref(&want_b),
        &keys(&f, b, Some(&secret)).await,
    );
    assert_eq!(first.changes[0].action, Action::Create);
    apply(b, &first, std::slice::from_ref(&want_b), &[], Some(&secret)).await;
    for r in &regions {
        let observed = keys(&f, r, Some(&secret)).await;
        let want = f.want(Kind::ApiKey, r.name);
        assert!(
            plan(std::slice::from_ref(&want), &observed).is_empty(),
            "{}",
            r.name
        );
        let id = observed[0].props["id"].as_str().unwrap();
        assert_eq!(api_key::value(&r.client, id).await.unwrap(), secret);
        assert_eq!(observed[0].props["enabled"], true);
        for o in &observed {
            assert!(
                !serde_json::to_string(&o.props).unwrap().contains(&secret),
                "the secret never appears in observed props"
            );
        }
        f.learn(&observed[0]);
    }

    // The plan and the key's membership in each region.
    for r in &regions {
        rest_api_in(&mut f, r).await;
        let want = f.want(Kind::UsagePlan, r.name);
        let first = plan(std::slice::from_ref(&want), &plans(&f, r).await);
        assert_eq!(first.changes[0].action, Action::Create);
        apply(r, &first, std::slice::from_ref(&want), &[], None).await;
        let observed = plans(&f, r).await;
        assert_eq!(observed.len(), 1, "only ours: {observed:?}");
        assert!(
            plan(std::slice::from_ref(&want), &observed).is_empty(),
            "{observed:?}"
        );
        f.learn(&observed[0]);

        let want = f.want(Kind::UsagePlanKey, r.name);
        assert!(
            want.props["plan"]
                .as_str()
                .is_some_and(|p| !p.starts_with("ref:"))
        );
        let first = plan(std::slice::from_ref(&want), &memberships(&f, r).await);
        assert_eq!(first.changes[0].action, Action::Create);
        apply(r, &first, std::slice::from_ref(&want), &[], None).await;
        let observed = memberships(&f, r).await;
        assert!(
            plan(std::slice::from_ref(&want), &observed).is_empty(),
            "{observed:?}"
        );
        // The plan holds the key with the shared value.
        let members = r
            .client
            .get_usage_plan_keys()
            .usage_plan_id(want.props["plan"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(members.items().len(), 1);
        assert_eq!(members.items()[0].value(), Some(secret.as_str()));
    }

    // A changed rate limit is exactly that change.
    let mut want = f.want(Kind::UsagePlan, b.name);
    want.props.insert("rate_limit".into(), json!(42.0));
    let observed = plans(&f, b).await;
    let changed = plan(std::slice::from_ref(&want), &observed);
    assert_eq!(changed.changes.len(), 1);
    assert_eq!(fields(&changed.changes[0]), vec!["rate_limit"]);
    apply(b, &changed, std::slice::from_ref(&want), &observed, None).await;
    let observed = plans(&f, b).await;
    assert_eq!(observed[0].props["rate_limit"], json!(42.0));
    assert!(plan(std::slice::from_ref(&want), &observed).is_empty());

    // A disabled key is exactly that change.
    let mut want = f.want(Kind::ApiKey, b.name);
    want.props.insert("enabled".into(), json!(false));
    let observed = keys(&f, b, Some(&secret)).await;
    let changed = plan(std::slice::from_ref(&want), &observed);
    assert_eq!(fields(&changed.changes[0]), vec!["enabled"]);
    assert!(matches!(changed.changes[0].action, Action::Update { .. }));
    apply(
        b,
        &changed,
        std::slice::from_ref(&want),
        &observed,
        Some(&secret),
    )
    .await;
    let observed = keys(&f, b, Some(&secret)).await;
    assert_eq!(observed[0].props["enabled"], false);
    assert!(plan(std::slice::from_ref(&want), &observed).is_empty());

    // The secondary's key holds another value than the primary's: a replacement, described without
    // either secret; then the membership of the new key is created.
    let want = f.want(Kind::ApiKey, b.name);
    let expected = "another-value-for-the-key-0123";
    let observed = keys(&f, b, Some(expected)).await;
    assert_eq!(
        observed[0].props["value"],
        json!({ "source": "differs from the expected value", "value_length": secret.chars().count() })
    );
    let replaced = plan(std::slice::from_ref(&want), &observed);
    assert_eq!(fields(&replaced.changes[0]), vec!["enabled", "value"]);
    assert!(matches!(replaced.changes[0].action, Action::Replace { .. }));
    apply(
        b,
        &replaced,
        std::slice::from_ref(&want),
        &observed,
        Some(expected),
    )
    .await;
    let observed = keys(&f, b, Some(expected)).await;
    assert!(plan(std::slice::from_ref(&want), &observed).is_empty());
    assert_eq!(
        api_key::value(&b.client, observed[0].props["id"].as_str().unwrap())
            .await
            .unwrap(),
        expected
    );
    f.learn(&observed[0]);
    let want = f.want(Kind::UsagePlanKey, b.name);
    let rejoin = plan(std::slice::from_ref(&want), &memberships(&f, b).await);
    assert_eq!(rejoin.changes[0].action, Action::Create);
    apply(b, &rejoin, std::slice::from_ref(&want), &[], None).await;
    assert!(plan(std::slice::from_ref(&want), &memberships(&f, b).await).is_empty());

    // Nothing wanted: ours go, membership first, found by name and tags; the unrelated stay.
    for r in &regions {
        let gone = plan(&[], &memberships(&f, r).await);
        assert_eq!(gone.changes.len(), 1);
        apply(r, &gone, &[], &memberships(&f, r).await, None).await;
        let observed = plans(&f, r).await;
        let gone = plan(&[], &observed);
        assert_eq!(gone.changes.len(), 1, "only ours: {gone:?}");
        assert_eq!(gone.changes[0].name, format!("{app}-test-plan"));
        apply(r, &gone, &[], &observed, None).await;
        let observed = keys(&f, r, None).await;
        let gone = plan(&[], &observed);
        assert_eq!(gone.changes.len(), 1, "only ours: {gone:?}");
        assert_eq!(gone.changes[0].name, format!("{app}-test-key"));
        apply(r, &gone, &[], &observed, None).await;
        assert!(plans(&f, r).await.is_empty());
        assert!(keys(&f, r, None).await.is_empty());
        let api = rest_api::observe(&r.client, r.name, &f.scope, &[])
            .await
            .unwrap();
        let gone = plan(&[], &api);
        rest_api::apply(&r.client, &gone.changes[0], None, api.first())
            .await
            .unwrap();
    }
    a.client
        .get_api_key()
        .api_key(&unrelated_key)
        .send()
        .await
        .expect("the unrelated key survives");
    a.client
        .get_usage_plan()
        .usage_plan_id(&unrelated_plan)
        .send()
        .await
        .expect("the unrelated plan survives");
    a.client
        .delete_usage_plan()
        .usage_plan_id(&unrelated_plan)
        .send()
        .await
        .unwrap();
    a.client
        .delete_api_key()
        .api_key(&unrelated_key)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_from_the_config_is_created_with_that_value() {
    let local = LocalAws::from_env();
    let app = format!("ac{}", std::process::id() % 1_000_000);
    let r = Region {
        name: REGION_A,
        client: Client::new(&local.sdk_config(REGION_A)),
    };
    let f = Fixture::new(&app);
    let secret = format!("{app}-configured-value-0123456789");
    let mut want = f.want(Kind::ApiKey, r.name);
    let value_prop = json!({ "source": "config", "value_length": secret.chars().count() });
    want.props.insert("value".into(), value_prop.clone());
    let observe = || {
        api_key::observe(
            &r.client,
            r.name,
            &f.scope,
            &want.name,
            Some(&secret),
            &value_prop,
        )
    };
    let first = plan(std::slice::from_ref(&want), &observe().await.unwrap());
    // Without the value, the creation is refused rather than made with a generated one.
    let refused = api_key::apply(&r.client, &first.changes[0], Some(&want), None, None).await;
    assert!(refused.is_err());
    assert!(observe().await.unwrap().is_empty());
    apply(&r, &first, std::slice::from_ref(&want), &[], Some(&secret)).await;
    let observed = observe().await.unwrap();
    assert!(plan(std::slice::from_ref(&want), &observed).is_empty());
    let id = observed[0].props["id"].as_str().unwrap();
    assert_eq!(api_key::value(&r.client, id).await.unwrap(), secret);
    let gone = plan(&[], &observed);
    apply(&r, &gone, &[], &observed, None).await;
    assert!(observe().await.unwrap().is_empty());
}
