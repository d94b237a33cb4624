//! The last-writer-wins conditions as DynamoDB evaluates them (the local AWS), and the in-memory
//! model's agreement with it, over every ordering and tie.

use aws_sdk_dynamodb::types::AttributeValue;
use replicator::apply::direct::{DirectConfig, DirectTarget, Writer, resolve_endpoint};
use replicator::apply::target::{AwsTarget, Condition, MemoryTarget, Outcome, TargetTable, Write};
use replicator::config::WriteClient;
use tworegion_common::test_support::{
    LocalAws, REGION_B, TablesCleanup, create_table, unique_name,
};
use tworegion_common::version::{Version, VersionAttributes};

type Item = std::collections::HashMap<String, AttributeValue>;

/// (what is checked, the stored version and origin before the write, the write, the expected outcome)
type Case = (&'static str, Option<(u64, &'static str)>, Write, Outcome);

fn item(id: &str, version: Option<u64>, origin: &str) -> Item {
    let mut item: Item = [
        ("id".to_owned(), AttributeValue::S(id.to_owned())),
        (
            "text".to_owned(),
            AttributeValue::S(format!("{version:?}/{origin}")),
        ),
    ]
    .into();
    if let Some(v) = version {
        item.insert("rep_version".into(), AttributeValue::N(v.to_string()));
        item.insert("rep_origin".into(), AttributeValue::S(origin.to_owned()));
    }
    item
}

fn put(id: &str, version: u64, origin: &str) -> Write {
    Write::Put {
        item: item(id, Some(version), origin),
        condition: Some(Condition::Newer {
            version: Version(version),
            origin: origin.to_owned(),
        }),
    }
}

fn delete(id: &str, version: u64) -> Write {
    Write::Delete {
        key: [("id".to_owned(), AttributeValue::S(id.to_owned()))].into(),
        condition: Some(Condition::NotNewerThan {
            version: Version(version),
        }),
    }
}

/// The target writer `replicator run --write-client KIND` uses, on `table` in region B.
async fn writer(
    local: &LocalAws,
    kind: WriteClient,
    client: aws_sdk_dynamodb::Client,
    table: String,
) -> Writer {
    match kind {
        WriteClient::Sdk => {
            Writer::Sdk(AwsTarget::new(client, table, VersionAttributes::default()))
        }
        WriteClient::Direct => {
            let sdk = local.sdk_config(REGION_B);
            let config = DirectConfig {
                region: REGION_B.to_owned(),
                endpoint: resolve_endpoint(&sdk).await.expect("endpoint"),
                table,
                attributes: VersionAttributes::default(),
                attempt_timeout: std::time::Duration::from_secs(10),
            };
            let provider = sdk.credentials_provider().expect("credentials");
            Writer::Direct(Box::new(
                DirectTarget::new(config, provider).expect("direct writer"),
            ))
        }
    }
}

#[tokio::test]
async fn conflict_rule_over_every_ordering_and_tie() {
    for kind in [WriteClient::Sdk, WriteClient::Direct] {
        conflict_rule(kind).await;
    }
}

async fn conflict_rule(kind: WriteClient) {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_B);
    let table = unique_name("conditions");
    create_table(&client, &table, "id", None).await;
    cleanup.table(REGION_B, &table);
    let aws = writer(&local, kind, client, table).await;
    let memory = MemoryTarget::new(&["id"], VersionAttributes::default());

    // (stored item before the write, the write, expected outcome)
    let existing = Some((10, "us-east-1"));
    let cases: Vec<Case> = vec![
        ("absent", None, put("c1", 5, "us-east-1"), Outcome::Applied),
        (
            "older",
            existing,
            put("c2", 9, "us-west-2"),
            Outcome::Conflict,
        ),
        (
            "same version and origin (a replay, or a later same-second fallback)",
            existing,
            put("c3", 10, "us-east-1"),
            Outcome::Applied,
        ),
        (
            "same version, greater origin",
            existing,
            put("c4", 10, "us-west-2"),
            Outcome::Applied,
        ),
        (
            "same version, lower origin",
            existing,
            put("c5", 10, "eu-west-1"),
            Outcome::Conflict,
        ),
        (
            "newer",
            existing,
            put("c6", 11, "ap-south-1"),
            Outcome::Applied,
        ),
        (
            "stored item has no version",
            Some((0, "")),
            put("c7", 1, "us-east-1"),
            Outcome::Applied,
        ),
        (
            "delete of a newer item",
            existing,
            delete("d1", 9),
            Outcome::Conflict,
        ),
        (
            "delete of the same version",
            existing,
            delete("d2", 10),
            Outcome::Applied,
        ),
        (
            "delete of an older item",
            existing,
            delete("d3", 11),
            Outcome::Applied,
        ),
        (
            "delete of an absent item",
            None,
            delete("d4", 1),
            Outcome::Applied,
        ),
    ];
    for (name, stored, write, expected) in cases {
        let id = match &write {
            Write::Put { item, .. } => item["id"].clone(),
            Write::Delete { key, .. } => key["id"].clone(),
        };
        let AttributeValue::S(id) = id else {
            panic!("string id")
        };
        if let Some((version, origin)) = stored {
            let seed = Write::Put {
                item: item(&id, (version > 0).then_some(version), origin),
                condition: None,
            };
            aws.write(&seed).await.expect("seed");
            memory.write(&seed).await.expect("seed");
        }
        assert_eq!(
            aws.write(&write).await.expect("write"),
            expected,
            "DynamoDB ({kind:?} writer): {name}"
        );
        assert_eq!(
            memory.write(&write).await.expect("write"),
            expected,
            "model: {name}"
        );
    }
}

/// (what is checked, writes in order with their fencing token (0: outside the replicator), the last
/// write's outcome)
type FencedCase = (&'static str, Vec<(Write, u64)>, Outcome);

#[tokio::test]
async fn fenced_one_way_writes_never_land_over_a_later_owners_copy() {
    for kind in [WriteClient::Sdk, WriteClient::Direct] {
        fenced_writes(kind).await;
    }
}

async fn fenced_writes(kind: WriteClient) {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_B);
    let table = unique_name("fenced");
    create_table(&client, &table, "id", None).await;
    cleanup.table(REGION_B, &table);
    let attributes = VersionAttributes::default();
    let aws = writer(&local, kind, client.clone(), table.clone()).await;
    let memory = MemoryTarget::new(&["id"], attributes.clone());
    let plain = |id: &str, text: &str| Write::Put {
        item: [
            ("id".to_owned(), AttributeValue::S(id.to_owned())),
            ("text".to_owned(), AttributeValue::S(text.to_owned())),
        ]
        .into(),
        condition: None,
    };
    let delete = |id: &str| Write::Delete {
        key: [("id".to_owned(), AttributeValue::S(id.to_owned()))].into(),
        condition: None,
    };
    let fenced = |write: &Write, fence| {
        replicator::apply::plan::fenced(write, fence, &attributes, 4_102_444_800)
    };
    // (what, the writes in order with their fence, the outcome of the last one)
    let cases: Vec<FencedCase> = vec![
        ("first copy", vec![(plain("f1", "a"), 3)], Outcome::Applied),
        (
            "the same owner again",
            vec![(plain("f2", "a"), 3), (plain("f2", "b"), 3)],
            Outcome::Applied,
        ),
        (
            "a later owner",
            vec![(plain("f3", "a"), 3), (plain("f3", "b"), 4)],
            Outcome::Applied,
        ),
        (
            "a stale owner after a later one",
            vec![(plain("f4", "b"), 4), (plain("f4", "a"), 3)],
            Outcome::Conflict,
        ),
        (
            "a stale owner's put after a later owner's delete (the tombstone holds)",
            vec![
                (plain("f5", "a"), 3),
                (delete("f5"), 4),
                (plain("f5", "a"), 3),
            ],
            Outcome::Conflict,
        ),
        (
            "a later owner's put over a tombstone",
            vec![(delete("f6"), 3), (plain("f6", "c"), 4)],
            Outcome::Applied,
        ),
        (
            "over an item written outside the replicator (no token)",
            vec![(plain("f7", "x"), 0), (plain("f7", "y"), 2)],
            Outcome::Applied,
        ),
    ];
    for (name, writes, expected) in cases {
        let mut last = None;
        for (write, fence) in &writes {
            // Fence 0 stands for a write made outside the replicator (unconditional, no token).
            let write = if *fence == 0 {
                write.clone()
            } else {
                fenced(write, *fence)
            };
            let got_aws = aws.write(&write).await.expect("write");
            let got_memory = memory.write(&write).await.expect("write");
            assert_eq!(
                got_aws, got_memory,
                "model and DynamoDB ({kind:?} writer) agree: {name}"
            );
            last = Some(got_aws);
        }
        assert_eq!(last, Some(expected), "{name}");
    }
    let stored = memory.items();
    for (key, item) in &stored {
        let AttributeValue::S(id) = &item["id"] else {
            panic!("{key}")
        };
        let got = client
            .get_item()
            .table_name(&table)
            .key("id", AttributeValue::S(id.clone()))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
            .expect("stored");
        assert_eq!(
            &got, item,
            "{id}: DynamoDB and the model hold the same item"
        );
    }
}

#[tokio::test]
async fn fencing_tokens_rise_across_calls_and_across_paths_to_the_same_target() {
    use replicator::lease::LeaseStore;
    use replicator::lease::dynamo::{DynamoLeases, ensure_table};
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_B);
    let table = unique_name("leases");
    ensure_table(&client, &table).await.expect("lease table");
    cleanup.table(REGION_B, &table);
    let before = tworegion_common::version::system_millis();
    let old_path = DynamoLeases::new(client.clone(), table.clone(), "stream-1>us-west-2/t".into());
    let first = old_path.next_fence().await.expect("token");
    let second = old_path.next_fence().await.expect("token");
    assert!(
        first > before,
        "the counter starts from the clock: {first} <= {before}"
    );
    assert_eq!(second, first + 1);
    assert!(
        old_path.list().await.expect("list").is_empty(),
        "the token row is not a lease"
    );
    // The stream was re-enabled: a new path, a new counter, for the same target. Its tokens must stay
    // above the old path's, or every fenced write would lose its condition against the old copies.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let new_path = DynamoLeases::new(client.clone(), table.clone(), "stream-2>us-west-2/t".into());
    let third = new_path.next_fence().await.expect("token");
    assert!(third > second, "{third} <= {second}");
}
