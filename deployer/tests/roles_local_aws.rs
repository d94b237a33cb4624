//! IAM roles against the local AWS: created with their trust and permission policies and tags, a
//! second plan is empty, a config change updates exactly the policies, removal spares other roles.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resource, desired};
use deployer::plan::{Action, plan};
use deployer::resources::{Scope, role};
use tworegion_common::test_support::{LocalAws, REGION_A, unique_name};

fn wanted(app: &str, table: &str) -> Vec<Resource> {
    let d = support::deployment(app, &[("name = \"todos\"", format!("name = \"{table}\""))]);
    desired(&d, "sha")
        .into_iter()
        .filter(|r| {
            matches!(
                r.kind,
                Kind::LambdaRole | Kind::TaskRole | Kind::ExecutionRole
            )
        })
        .collect()
}

async fn up(
    client: &aws_sdk_iam::Client,
    scope: &Scope,
    want: &[Resource],
) -> Vec<deployer::plan::Change> {
    let observed = role::observe(client, scope, want).await.expect("observe");
    let plan = plan(want, &observed);
    for change in &plan.changes {
        let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
        role::apply(
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
async fn roles_reconcile() {
    let local = LocalAws::from_env();
    let client = aws_sdk_iam::Client::new(&local.sdk_config(REGION_A));
    let app = format!("r{}", std::process::id() % 1_000_000);
    let scope = Scope {
        app: app.clone(),
        stage: "test".into(),
    };
    let foreign = unique_name("foreign-role");
    client
        .create_role()
        .role_name(&foreign)
        .assume_role_policy_document(role::trust_policy("ec2.amazonaws.com").to_string())
        .send()
        .await
        .unwrap();

    let want = wanted(&app, "todos");
    assert_eq!(
        want.len(),
        6,
        "the Lambda role per region, task and execution roles per region (lww)"
    );
    let created = up(&client, &scope, &want).await;
    assert_eq!(created.len(), 6);
    assert!(created.iter().all(|c| c.action == Action::Create));
    let observed = role::observe(&client, &scope, &want).await.unwrap();
    assert_eq!(observed.len(), 6);
    assert!(
        plan(&want, &observed).is_empty(),
        "a second up changes nothing: {:?}",
        plan(&want, &observed)
    );

    // Another table: the policies that name it change, nothing else.
    let moved = wanted(&app, "todos2");
    let changes = plan(&moved, &observed).changes;
    assert!(!changes.is_empty());
    for c in &changes {
        match &c.action {
            Action::Update { changes } => assert_eq!(
                changes.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(),
                vec!["policy"]
            ),
            other => panic!("{other:?}"),
        }
    }
    up(&client, &scope, &moved).await;
    assert!(
        plan(
            &moved,
            &role::observe(&client, &scope, &moved).await.unwrap()
        )
        .is_empty()
    );

    // Down: ours go (found by name and tags), the foreign role stays.
    let removed = up(&client, &scope, &[]).await;
    assert_eq!(removed.len(), 6);
    assert!(
        role::observe(&client, &scope, &[])
            .await
            .unwrap()
            .is_empty()
    );
    client
        .get_role()
        .role_name(&foreign)
        .send()
        .await
        .expect("the foreign role is untouched");
}
