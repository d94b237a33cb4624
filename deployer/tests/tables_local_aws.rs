//! The table resource against the local AWS: observe, plan, apply, and again until nothing changes;
//! adoption of an untagged table with the right name; removal that spares unrelated tables.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resource, desired};
use deployer::plan::{Action, plan};
use deployer::resources::{Scope, table};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

fn config(app: &str, stage: &str, table: &str) -> deployer::config::Deployment {
    support::deployment(
        app,
        &[
            ("stage = \"test\"", format!("stage = \"{stage}\"")),
            ("name = \"todos\"", format!("name = \"{table}\"")),
        ],
    )
}

async fn observe_all(local: &LocalAws, scope: &Scope, wanted: &[Resource]) -> Vec<Resource> {
    let mut observed = Vec::new();
    for region in [REGION_A, REGION_B] {
        let names: Vec<String> = wanted
            .iter()
            .filter(|r| r.region.as_deref() == Some(region))
            .map(|r| r.name.clone())
            .collect();
        observed.extend(
            table::observe(&local.dynamodb(region), region, scope, &names)
                .await
                .expect("observe"),
        );
    }
    observed
}

async fn apply_all(local: &LocalAws, wanted: &[Resource], observed: &[Resource]) -> usize {
    let plan = plan(wanted, observed);
    for change in &plan.changes {
        let region = change.region.as_deref().expect("tables are regional");
        let find = |list: &[Resource]| {
            list.iter()
                .find(|r| {
                    r.kind == change.kind && r.region == change.region && r.name == change.name
                })
                .cloned()
        };
        table::apply(
            &local.dynamodb(region),
            change,
            find(wanted).as_ref(),
            find(observed).as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes.len()
}

#[tokio::test]
async fn tables_reconcile_adopt_and_are_removed_alone() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let app = format!("t{}", std::process::id() % 100_000);
    let stage = "test";
    let scope = Scope {
        app: app.clone(),
        stage: stage.to_owned(),
    };
    let name = unique_name("deploy-table");
    let unrelated = unique_name("unrelated");
    for region in [REGION_A, REGION_B] {
        cleanup.table(region, &name);
    }
    cleanup.table(REGION_A, &unrelated);
    let d = config(&app, stage, &name);
    let wanted: Vec<Resource> = desired(&d, "sha")
        .into_iter()
        .filter(|r| r.kind == Kind::Table && r.name == name)
        .collect();
    assert_eq!(wanted.len(), 2);

    // An untagged table with the right name already exists in region B (made by hand), and an unrelated one.
    let b = local.dynamodb(REGION_B);
    create_table(&b, &name, "id", None).await;
    create_table(&local.dynamodb(REGION_A), &unrelated, "pk", None).await;

    // First plan: create in A; adopt in B (stream, TTL and tags added, no new table).
    let observed = observe_all(&local, &scope, &wanted).await;
    let first = plan(&wanted, &observed);
    let actions: Vec<(String, String)> = first
        .changes
        .iter()
        .map(|c| {
            (
                c.region.clone().unwrap_or_default(),
                match &c.action {
                    Action::Create => "create".to_owned(),
                    Action::Update { changes } => format!(
                        "update {}",
                        changes
                            .iter()
                            .map(|c| c.field.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    other => format!("{other:?}"),
                },
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            (REGION_A.to_owned(), "create".to_owned()),
            (
                REGION_B.to_owned(),
                "update deletion_protection,point_in_time_recovery,stream,tags,ttl_attribute"
                    .to_owned()
            )
        ]
    );
    assert_eq!(apply_all(&local, &wanted, &observed).await, 2);

    // Second round: nothing to do.
    let observed = observe_all(&local, &scope, &wanted).await;
    let second = plan(&wanted, &observed);
    assert!(second.is_empty(), "a second up changes nothing: {second:?}");
    for r in &observed {
        assert_eq!(r.props["stream"], "NEW_AND_OLD_IMAGES", "{}", r.id());
        assert_eq!(r.props["ttl_attribute"], "rep_expires", "{}", r.id());
        // Protected and recoverable by default, created or adopted.
        assert_eq!(r.props["deletion_protection"], true, "{}", r.id());
        assert_eq!(r.props["point_in_time_recovery"], true, "{}", r.id());
        // Which one the deployer made, and which it adopted.
        assert_eq!(
            table::created(r),
            r.region.as_deref() == Some(REGION_A),
            "{}",
            r.id()
        );
    }
    // Deletion protection is real: DynamoDB refuses to delete the table.
    let refused = local
        .dynamodb(REGION_A)
        .delete_table()
        .table_name(&name)
        .send()
        .await;
    assert!(refused.is_err(), "a protected table was deleted");

    // Down (the resource level, told to delete: protection is turned off first): everything
    // tagged for this app and stage goes; the unrelated table stays.
    let observed = observe_all(&local, &scope, &[]).await;
    assert_eq!(
        observed.len(),
        2,
        "both tables are found by their tags: {observed:?}"
    );
    assert_eq!(apply_all(&local, &[], &observed).await, 2);
    assert!(observe_all(&local, &scope, &[]).await.is_empty());
    let still = local
        .dynamodb(REGION_A)
        .describe_table()
        .table_name(&unrelated)
        .send()
        .await;
    assert!(still.is_ok(), "the unrelated table is untouched");
}

#[tokio::test]
async fn a_table_of_another_stage_is_never_adopted() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let app = format!("o{}", std::process::id() % 100_000);
    let scope = Scope {
        app: app.clone(),
        stage: "dev".to_owned(),
    };
    let name = unique_name("shared-name");
    cleanup.table(REGION_A, &name);
    let a = local.dynamodb(REGION_A);
    // The same name, made by the prod stage of the same app.
    let prod = desired(&config(&app, "prod", &name), "sha")
        .into_iter()
        .filter(|r| {
            r.kind == Kind::Table && r.region.as_deref() == Some(REGION_A) && r.name == name
        })
        .collect::<Vec<_>>();
    let prod_scope = Scope {
        app: app.clone(),
        stage: "prod".to_owned(),
    };
    let observed = observe_all(&local, &prod_scope, &prod).await;
    assert_eq!(apply_all(&local, &prod, &observed).await, 1);

    let dev: Vec<Resource> = desired(&config(&app, "dev", &name), "sha")
        .into_iter()
        .filter(|r| {
            r.kind == Kind::Table && r.region.as_deref() == Some(REGION_A) && r.name == name
        })
        .collect();
    let observed = observe_all(&local, &scope, &dev).await;
    // Not created by dev: dev's `down` would release it, never delete it.
    assert!(!table::created(&observed[0]), "{:?}", observed[0]);
    let change = plan(&dev, &observed)
        .changes
        .into_iter()
        .find(|c| c.kind == Kind::Table)
        .expect("the tags differ");
    let error = table::apply(&a, &change, dev.first(), observed.first())
        .await
        .expect_err("dev must not take prod's table");
    let text = error.to_string();
    assert!(
        text.contains("belongs to app") && text.contains("prod"),
        "{text}"
    );
    // Still prod's.
    let after = observe_all(&local, &prod_scope, &prod).await;
    assert!(table::created(&after[0]));
    assert!(plan(&prod, &after).is_empty());
}

#[tokio::test]
async fn a_stream_of_another_view_type_is_refused_not_replaced() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let app = format!("s{}", std::process::id() % 100_000);
    let scope = Scope {
        app: app.clone(),
        stage: "test".to_owned(),
    };
    let name = unique_name("keys-only");
    cleanup.table(REGION_A, &name);
    let wanted: Vec<Resource> = desired(&config(&app, "test", &name), "sha")
        .into_iter()
        .filter(|r| {
            r.kind == Kind::Table && r.region.as_deref() == Some(REGION_A) && r.name == name
        })
        .collect();
    let a = local.dynamodb(REGION_A);
    create_table(
        &a,
        &name,
        "id",
        Some(aws_sdk_dynamodb::types::StreamViewType::KeysOnly),
    )
    .await;

    let observed = observe_all(&local, &scope, &wanted).await;
    assert_eq!(observed[0].props["stream"], "KEYS_ONLY");
    let update = plan(&wanted, &observed);
    let change = update
        .changes
        .iter()
        .find(|c| c.kind == Kind::Table)
        .expect("the table is updated");
    let error = table::apply(&a, change, wanted.first(), observed.first())
        .await
        .expect_err("DynamoDB cannot change an enabled stream's view type in place");
    let text = error.to_string();
    assert!(text.contains("KEYS_ONLY"), "{text}");
    assert!(text.contains("StreamEnabled=false"), "{text}");
    // Nothing was changed: the stream (and its unread records) is still there.
    let after = observe_all(&local, &scope, &wanted).await;
    assert_eq!(after[0].props["stream"], "KEYS_ONLY");
}
