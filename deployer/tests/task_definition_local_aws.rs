//! The replicator's task definition against the local AWS: registered with image, sizes, roles,
//! `replicator run` and its environment, health check, stop timeout and logs; a second plan is
//! empty; a new image is exactly that update (a new revision); removal deregisters every revision.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resolved, Resource, reference_key};
use deployer::plan::{Action, plan};
use deployer::resources::task_definition;
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

fn wanted(app: &str, image: &str) -> Resource {
    let d = support::deployment(
        app,
        &[
            ("mode = \"lww\"", "mode = \"one-way\"".to_owned()),
            ("image = \"img\"", format!("image = \"{image}\"")),
            ("cpu = 256", "cpu = 512".to_owned()),
            ("memory = 512", "memory = 1024".to_owned()),
        ],
    );
    let prefix = format!("{app}-test");
    let mut resolved = Resolved::new();
    resolved.insert(
        reference_key(
            Kind::TaskRole,
            REGION_B,
            &format!("{prefix}-replicator-{REGION_B}"),
        ),
        json!(format!(
            "arn:aws:iam::123456789012:role/{prefix}-replicator-{REGION_B}"
        )),
    );
    resolved.insert(
        reference_key(
            Kind::ExecutionRole,
            REGION_B,
            &format!("{prefix}-replicator-exec-{REGION_B}"),
        ),
        json!(format!(
            "arn:aws:iam::123456789012:role/{prefix}-replicator-exec-{REGION_B}"
        )),
    );
    let all = support::wanted(&d, "sha", Kind::TaskDefinition, None, &resolved);
    assert_eq!(all.len(), 1);
    all.into_iter().next().unwrap()
}

#[tokio::test]
async fn task_definition_reconciles() {
    let local = LocalAws::from_env();
    let ecs = aws_sdk_ecs::Client::new(&local.sdk_config(REGION_B));
    let app = format!("t{}", std::process::id() % 1_000_000);
    let want = wanted(&app, "registry.example/replicator:1");
    let name = want.name.clone();
    assert_eq!(
        name,
        format!("{app}-test-replicator-{REGION_A}-to-{REGION_B}")
    );

    let step = |want: Option<Resource>| {
        let ecs = ecs.clone();
        let name = name.clone();
        async move {
            let observed: Vec<Resource> = task_definition::observe(&ecs, REGION_B, &name)
                .await
                .unwrap()
                .into_iter()
                .collect();
            let want: Vec<Resource> = want.into_iter().collect();
            let plan = plan(&want, &observed);
            for change in &plan.changes {
                task_definition::apply(&ecs, change, want.first(), observed.first())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            plan.changes
        }
    };
    assert_eq!(step(Some(want.clone())).await.len(), 1);
    let observed = task_definition::observe(&ecs, REGION_B, &name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        observed.props["environment"]["REPLICATOR_SOURCE_REGION"],
        REGION_A
    );
    assert_eq!(observed.props["environment"]["REPLICATOR_MODE"], "one-way");
    assert_eq!(
        observed.props["health_check"],
        json!(["CMD", "/replicator", "healthcheck"])
    );
    let second = plan(std::slice::from_ref(&want), std::slice::from_ref(&observed));
    assert!(second.is_empty(), "a second up changes nothing: {second:?}");

    let first_arn = observed.props["arn"].as_str().unwrap().to_owned();
    let newer = wanted(&app, "registry.example/replicator:2");
    let changed = step(Some(newer.clone())).await;
    assert!(
        matches!(&changed[0].action, Action::Update { changes } if changes.len() == 1 && changes[0].field == "image"),
        "{changed:?}"
    );
    let observed = task_definition::observe(&ecs, REGION_B, &name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(observed.props["image"], "registry.example/replicator:2");
    assert!(
        observed.props["revision"].as_i64().unwrap() >= 2,
        "a new revision"
    );
    // The superseded revision is deregistered: revisions do not pile up.
    let first = ecs
        .describe_task_definition()
        .task_definition(&first_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.task_definition().unwrap().status().unwrap().as_str(),
        "INACTIVE"
    );

    assert_eq!(step(None).await.len(), 1);
    assert!(
        task_definition::observe(&ecs, REGION_B, &name)
            .await
            .unwrap()
            .is_none(),
        "every revision deregistered"
    );
}
