//! Route 53 health checks against the local AWS: create, a second plan is empty, a changed failure
//! threshold is exactly one update per region and is applied, a changed interval replaces the check,
//! removal spares a check that is not ours.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType};
use deployer::desired::{Kind, Resolved, Resource, reference_attr_key};
use deployer::plan::{Action, FieldChange, plan};
use deployer::resources::{Scope, health_check};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, unique_name};

fn wanted(app: &str, threshold: i32, interval: i32) -> Vec<Resource> {
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
    let mut resolved = Resolved::new();
    for region in [REGION_A, REGION_B] {
        resolved.insert(
            reference_attr_key(Kind::RestApi, region, &format!("{app}-test"), "host"),
            json!(format!("abc123.execute-api.{region}.amazonaws.com")),
        );
    }
    support::wanted(&d, "sha", Kind::HealthCheck, None, &resolved)
}

async fn up(
    client: &aws_sdk_route53::Client,
    scope: &Scope,
    want: &[Resource],
) -> Vec<deployer::plan::Change> {
    let observed = health_check::observe(client, scope).await.expect("observe");
    let plan = plan(want, &observed);
    for change in &plan.changes {
        let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
        health_check::apply(
            client,
            change,
            find(want).as_ref(),
            find(&observed).as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes
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

    let created = up(&client, &scope, &wanted(&app, 3, 10)).await;
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|c| c.action == Action::Create));
    let observed = health_check::observe(&client, &scope).await.unwrap();
    assert_eq!(observed.len(), 2);
    for check in &observed {
        assert_eq!(check.props["failure_threshold"], 3);
        assert_eq!(check.props["request_interval"], 10);
        assert_eq!(check.props["resource_path"], "/live/todos/health");
        assert_eq!(check.props["enable_sni"], true);
        assert_eq!(check.props["tags"]["Name"], check.name.as_str());
    }
    assert!(
        plan(&wanted(&app, 3, 10), &observed).is_empty(),
        "a second up changes nothing"
    );

    // One setting changed: exactly that field, in each region, then applied.
    let changes = plan(&wanted(&app, 5, 10), &observed).changes;
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
    up(&client, &scope, &wanted(&app, 5, 10)).await;
    let observed = health_check::observe(&client, &scope).await.unwrap();
    assert!(observed.iter().all(|c| c.props["failure_threshold"] == 5));
    assert!(plan(&wanted(&app, 5, 10), &observed).is_empty());

    // The interval is fixed once created: a replacement, which keeps a controlled failover's
    // inversion (up never undoes a failover).
    let primary = observed
        .iter()
        .find(|c| c.region.as_deref() == Some(REGION_A))
        .unwrap();
    health_check::set_inverted(&client, primary.props["id"].as_str().unwrap(), true)
        .await
        .unwrap();
    let replaced = up(&client, &scope, &wanted(&app, 5, 30)).await;
    assert!(
        replaced
            .iter()
            .all(|c| matches!(c.action, Action::Replace { .. })),
        "{replaced:?}"
    );
    let observed = health_check::observe(&client, &scope).await.unwrap();
    assert_eq!(observed.len(), 2);
    assert!(observed.iter().all(|c| c.props["request_interval"] == 30));
    for c in &observed {
        let inverted = c.region.as_deref() == Some(REGION_A);
        assert_eq!(c.props["inverted"], inverted, "{}", c.name);
    }

    // Interrupted between creating and tagging: an untagged check whose caller reference is ours
    // is found, and adopted (tagged) by exactly a tags update.
    let secondary = observed
        .iter()
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
    let adopted = up(&client, &scope, &wanted(&app, 5, 30)).await;
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert!(
        matches!(&adopted[0].action, Action::Update { changes } if changes.len() == 1 && changes[0].field == "tags"),
        "{adopted:?}"
    );
    let observed = health_check::observe(&client, &scope).await.unwrap();
    assert!(plan(&wanted(&app, 5, 30), &observed).is_empty());

    // Down: ours go, the foreign one stays.
    let removed = up(&client, &scope, &[]).await;
    assert_eq!(removed.len(), 2);
    assert!(
        health_check::observe(&client, &scope)
            .await
            .unwrap()
            .is_empty()
    );
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
