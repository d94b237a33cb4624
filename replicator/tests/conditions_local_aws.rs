//! The last-writer-wins conditions as DynamoDB evaluates them (the local AWS), and the in-memory
//! model's agreement with it, over every ordering and tie.

use aws_sdk_dynamodb::types::AttributeValue;
use replicator::apply::target::{AwsTarget, Condition, MemoryTarget, Outcome, TargetTable, Write};
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

#[tokio::test]
async fn conflict_rule_over_every_ordering_and_tie() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_B);
    let table = unique_name("conditions");
    create_table(&client, &table, "id", None).await;
    cleanup.table(REGION_B, &table);
    let aws = AwsTarget::new(client, table, VersionAttributes::default());
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
            "DynamoDB: {name}"
        );
        assert_eq!(
            memory.write(&write).await.expect("write"),
            expected,
            "model: {name}"
        );
    }
}
