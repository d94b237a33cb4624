//! The replicator's log group and ECS cluster against the local AWS: created with tags where the
//! replicator runs, a second plan is empty, a changed retention is that one update, removal deletes.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resource, desired};
use deployer::plan::{Action, plan};
use deployer::resources::{cluster, log_group};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_B};

fn wanted(app: &str) -> Vec<Resource> {
    let d = support::deployment(app, &[("mode = \"lww\"", "mode = \"one-way\"".to_owned())]);
    desired(&d, "sha")
        .into_iter()
        // The replicator's (the function's log group is in every region).
        .filter(|r| matches!(r.kind, Kind::LogGroup | Kind::EcsCluster))
        .filter(|r| !r.name.starts_with("/aws/lambda/"))
        .collect()
}

async fn observe(local: &LocalAws, names: &[(Kind, String)]) -> Vec<Resource> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&local.sdk_config(REGION_B));
    let ecs = aws_sdk_ecs::Client::new(&local.sdk_config(REGION_B));
    let mut found = Vec::new();
    for (kind, name) in names {
        let r = match kind {
            Kind::LogGroup => log_group::observe(&logs, REGION_B, name).await.unwrap(),
            _ => cluster::observe(&ecs, REGION_B, name).await.unwrap(),
        };
        found.extend(r);
    }
    found
}

async fn up(
    local: &LocalAws,
    want: &[Resource],
    observed: &[Resource],
) -> Vec<deployer::plan::Change> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&local.sdk_config(REGION_B));
    let ecs = aws_sdk_ecs::Client::new(&local.sdk_config(REGION_B));
    let plan = plan(want, observed);
    for change in &plan.changes {
        let find = |list: &[Resource]| {
            list.iter()
                .find(|r| r.kind == change.kind && r.name == change.name)
                .cloned()
        };
        let (w, o) = (find(want), find(observed));
        match change.kind {
            Kind::LogGroup => log_group::apply(&logs, change, w.as_ref(), o.as_ref()).await,
            _ => cluster::apply(&ecs, change, w.as_ref(), o.as_ref()).await,
        }
        .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes
}

#[tokio::test]
async fn log_group_and_cluster_reconcile() {
    let local = LocalAws::from_env();
    let app = format!("e{}", std::process::id() % 1_000_000);
    let want = wanted(&app);
    assert_eq!(
        want.len(),
        2,
        "one-way: the replicator runs only in the secondary region"
    );
    assert!(want.iter().all(|r| r.region.as_deref() == Some(REGION_B)));
    let names: Vec<(Kind, String)> = want.iter().map(|r| (r.kind, r.name.clone())).collect();

    let created = up(&local, &want, &observe(&local, &names).await).await;
    assert_eq!(created.len(), 2);
    let observed = observe(&local, &names).await;
    assert_eq!(observed.len(), 2);
    assert!(
        plan(&want, &observed).is_empty(),
        "a second up changes nothing: {:?}",
        plan(&want, &observed)
    );

    let mut longer = want.clone();
    for r in &mut longer {
        if r.kind == Kind::LogGroup {
            r.props.insert("retention_days".into(), json!(90));
        }
    }
    let changed = up(&local, &longer, &observed).await;
    assert_eq!(changed.len(), 1);
    assert!(
        matches!(&changed[0].action, Action::Update { changes } if changes.len() == 1 && changes[0].field == "retention_days")
    );
    assert!(plan(&longer, &observe(&local, &names).await).is_empty());

    let removed = up(&local, &[], &observe(&local, &names).await).await;
    assert_eq!(removed.len(), 2);
    assert!(observe(&local, &names).await.is_empty());
}
