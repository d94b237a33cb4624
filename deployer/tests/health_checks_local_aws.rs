//! Route 53 health checks against the local AWS: per region an endpoint check and its switch;
//! create, a second plan is empty, a changed failure threshold is exactly one update per region and
//! is applied, a changed interval replaces the endpoint check (its switch follows it, and a switch
//! turned off stays off), removal spares a check that is not ours.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType};
use deployer::desired::{Kind, Resolved, Resource, reference_attr_key};
use deployer::plan::{Action, FieldChange, plan};
use deployer::resources::{Scope, health_check};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, unique_name};

const REGIONS: [&str; 2] = [REGION_A, REGION_B];

fn regions() -> Vec<String> {
    REGIONS.iter().map(|r| (*r).to_owned()).collect()
}

/// The wanted checks, their references resolved from `observed` (a switch names its endpoint
/// check's ID once that exists).
fn wanted(app: &str, threshold: i32, interval: i32, observed: &[Resource]) -> Vec<Resource> {
    let d = support::deployment(
        app,
        &[
            ("interval = 30", format!("interval = {interval}")),
            (
                "failure_threshold = 3",
                format!(
                    "failure_threshold = {threshold}\nregions = [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]"
                ),
            ),
        ],
    );
    let mut resolved: Resolved = deployer::engine::references(observed);
    for region in REGIONS {
        resolved.insert(
            reference_attr_key(Kind::RestApi, region, &format!("{app}-test"), "host"),
            json!(format!("abc123.execute-api.{region}.amazonaws.com")),
        );
    }
    support::wanted(&d, "sha", Kind::HealthCheck, None, &resolved)
}

async fn observe(client: &aws_sdk_route53::Client, scope: &Scope) -> Vec<Resource> {
    health_check::observe(client, scope, &regions())
        .await
        .expect("observe")
}

/// Plans and applies, change by change, each with references resolved from what exists then (as
/// the engine does). Returns the plan.
async fn up(
    client: &aws_sdk_route53::Client,
    scope: &Scope,
    app: &str,
    setting: Option<(i32, i32)>,
) -> Vec<deployer::plan::Change> {
    let want = |observed: &[Resource]| match setting {
        Some((threshold, interval)) => wanted(app, threshold, interval, observed),
        None => Vec::new(),
    };
    let observed = observe(client, scope).await;
    let plan = plan(&want(&observed), &observed);
    for change in &plan.changes {
        let observed = observe(client, scope).await;
        let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
        health_check::apply(
            client,
            change,
            find(&want(&observed)).as_ref(),
            find(&observed).as_ref(),
            &observed,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes
}

fn endpoint_checks(observed: &[Resource]) -> Vec<&Resource> {
    observed
        .iter()
        .filter(|c| c.props["type"] == "HTTPS")
        .collect()
}

#[tokio::test]
async fn health_checks_reconcile() {
    let local = LocalAws::from_env();
    let client = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let app = unique_name("hc")
        .replace('-', "")
        .chars()
        .rev()
        .take(12)
        .collect::<String>();
    let app = format!("h{app}");
    let scope = Scope {
        app: app.clone(),
        stage: "test".into(),
    };

    // A health check that is not ours.
    let foreign = client
        .create_health_check()
        .caller_reference(unique_name("foreign"))
        .health_check_config(
            HealthCheckConfig::builder()
                .r#type(HealthCheckType::Https)
                .fully_qualified_domain_name("example.org")
                .resource_path("/")
                .build()
                .expect("config"),
        )
        .send()
        .await
        .expect("foreign check")
        .health_check
        .expect("check")
        .id()
        .to_owned();

    let created = up(&client, &scope, &app, Some((3, 10))).await;
    assert_eq!(created.len(), 4, "{created:?}");
    assert!(created.iter().all(|c| c.action == Action::Create));
    let observed = observe(&client, &scope).await;
    assert_eq!(observed.len(), 4);
    assert_eq!(endpoint_checks(&observed).len(), 2);
    for check in endpoint_checks(&observed) {
        assert_eq!(check.props["failure_threshold"], 3);
        assert_eq!(check.props["request_interval"], 10);
        // The region's own name under the custom domain, without the stage (its mapping is at
        // the root).
        assert_eq!(check.props["resource_path"], "/todos/health");
        assert_eq!(
            check.props["target"],
            format!("{}.api.example.com", check.region.as_deref().unwrap())
        );
        assert_eq!(check.props["enable_sni"], true);
        assert_eq!(check.props["tags"]["Name"], check.name.as_str());
        // Its switch: CALCULATED over it, on.
        let switch = observed
            .iter()
            .find(|c| c.name == format!("{}-switch", check.name))
            .unwrap();
        assert_eq!(switch.props["type"], "CALCULATED");
        assert_eq!(switch.props["children"], json!([check.props["id"]]));
        assert_eq!(switch.props["switch_on"], true);
        assert_eq!(switch.region, check.region);
    }
    assert!(
        plan(&wanted(&app, 3, 10, &observed), &observed).is_empty(),
        "a second up changes nothing"
    );

    // One setting changed: exactly that field, in each region, then applied.
    let changes = plan(&wanted(&app, 5, 10, &observed), &observed).changes;
    assert_eq!(changes.len(), 2);
    for c in &changes {
        assert_eq!(
            c.action,
            Action::Update {
                changes: vec![FieldChange {
                    field: "failure_threshold".into(),
                    from: json!(3),
                    to: json!(5)
                }]
            }
        );
    }
    up(&client, &scope, &app, Some((5, 10))).await;
    let observed = observe(&client, &scope).await;
    assert!(
        endpoint_checks(&observed)
            .iter()
            .all(|c| c.props["failure_threshold"] == 5)
    );
    assert!(plan(&wanted(&app, 5, 10, &observed), &observed).is_empty());

    // A failover turns the primary's switch off; `up` leaves it so.
    let primary_switch = observed
        .iter()
        .find(|c| c.region.as_deref() == Some(REGION_A) && c.props["type"] == "CALCULATED")
        .unwrap();
    health_check::set_switch(
        &client,
        primary_switch.props["id"].as_str().unwrap(),
        &health_check::children_of(primary_switch),
        false,
    )
    .await
    .unwrap();
    let observed = observe(&client, &scope).await;
    let after = plan(&wanted(&app, 5, 10, &observed), &observed);
    assert!(after.is_empty(), "{after:?}");

    // The interval is fixed once created: a replacement, which keeps an inversion, moves the switch
    // to the new check and leaves the switch off (up never undoes a failover).
    let primary = endpoint_checks(&observed)
        .into_iter()
        .find(|c| c.region.as_deref() == Some(REGION_A))
        .unwrap();
    health_check::set_inverted(&client, primary.props["id"].as_str().unwrap(), true)
        .await
        .unwrap();
    let replaced = up(&client, &scope, &app, Some((5, 30))).await;
    assert_eq!(replaced.len(), 2, "{replaced:?}");
    assert!(
        replaced
            .iter()
            .all(|c| matches!(c.action, Action::Replace { .. })),
        "{replaced:?}"
    );
    let observed = observe(&client, &scope).await;
    assert_eq!(observed.len(), 4);
    assert!(
        plan(&wanted(&app, 5, 30, &observed), &observed).is_empty(),
        "the switches already name the new checks"
    );
    for c in endpoint_checks(&observed) {
        assert_eq!(c.props["request_interval"], 30);
        let in_a = c.region.as_deref() == Some(REGION_A);
        assert_eq!(c.props["inverted"], in_a, "{}", c.name);
        let switch = observed
            .iter()
            .find(|s| s.name == format!("{}-switch", c.name))
            .unwrap();
        assert_eq!(switch.props["children"], json!([c.props["id"]]));
        assert_eq!(switch.props["switch_on"], !in_a, "{}", switch.name);
    }

    // Interrupted between creating and tagging: an untagged check whose caller reference is ours
    // is found, and adopted (tagged) by exactly a tags update.
    let secondary = endpoint_checks(&observed)
        .into_iter()
        .find(|c| c.region.as_deref() == Some(REGION_B))
        .unwrap()
        .clone();
    client
        .change_tags_for_resource()
        .resource_type(aws_sdk_route53::types::TagResourceType::Healthcheck)
        .resource_id(secondary.props["id"].as_str().unwrap())
        .set_remove_tag_keys(Some(vec![
            "Name".into(),
            "tworegion:app".into(),
            "tworegion:stage".into(),
        ]))
        .send()
        .await
        .unwrap();
    let adopted = up(&client, &scope, &app, Some((5, 30))).await;
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert!(
        matches!(&adopted[0].action, Action::Update { changes } if changes.len() == 1 && changes[0].field == "tags"),
        "{adopted:?}"
    );
    let observed = observe(&client, &scope).await;
    assert!(plan(&wanted(&app, 5, 30, &observed), &observed).is_empty());

    // Down: ours go (each switch before its endpoint check), the foreign one stays.
    let removed = up(&client, &scope, &app, None).await;
    assert_eq!(removed.len(), 4);
    assert!(observe(&client, &scope).await.is_empty());
    client
        .get_health_check()
        .health_check_id(&foreign)
        .send()
        .await
        .expect("the foreign check is untouched");
    client
        .delete_health_check()
        .health_check_id(&foreign)
        .send()
        .await
        .expect("clean up");
}
