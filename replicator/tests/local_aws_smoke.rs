//! Smoke test of the local two-region AWS through the real Rust SDK: tables with streams in two regions,
//! writes, and the stream read back record by record. It pins down what the replicator builds on.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, StreamViewType};
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, OperationType, Record, ShardIteratorType,
};
use tworegion_common::test_support::{
    self, LocalAws, REGION_A, REGION_B, TablesCleanup, unique_name,
};

async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) -> String {
    test_support::create_table(client, name, "id", Some(StreamViewType::NewAndOldImages))
        .await
        .expect("a table with a stream has a stream ARN")
}

/// Every record on the stream, in order (bounded: at most 20 GetRecords calls per shard).
async fn read_stream(client: &aws_sdk_dynamodbstreams::Client, arn: &str) -> Vec<Record> {
    let description = client
        .describe_stream()
        .stream_arn(arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .expect("stream description");
    assert_eq!(
        description.stream_view_type(),
        Some(&aws_sdk_dynamodbstreams::types::StreamViewType::NewAndOldImages)
    );
    let mut records = Vec::new();
    for shard in description.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_arn(arn)
            .shard_id(shard.shard_id().expect("shard id"))
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("get shard iterator")
            .shard_iterator;
        for _ in 0..20 {
            let Some(it) = iterator.take() else { break };
            let page = client
                .get_records()
                .shard_iterator(it)
                .limit(100)
                .send()
                .await
                .expect("get records");
            let empty = page.records().is_empty();
            records.extend(page.records().iter().cloned());
            iterator = page.next_shard_iterator;
            if empty {
                break; // an open shard keeps giving iterators; an empty page means we are at its end
            }
        }
    }
    records
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}

fn image(record: &Record, new: bool) -> Option<&HashMap<String, StreamValue>> {
    let change = record.dynamodb().expect("stream record body");
    if new {
        change.new_image.as_ref()
    } else {
        change.old_image.as_ref()
    }
}

fn attr<'a>(image: &'a HashMap<String, StreamValue>, name: &str) -> &'a StreamValue {
    image
        .get(name)
        .unwrap_or_else(|| panic!("image lacks {name}: {image:?}"))
}

#[tokio::test]
async fn streams_carry_every_change_and_regions_are_isolated() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let table = unique_name("smoke");
    let east = local.dynamodb(REGION_A);
    let west = local.dynamodb(REGION_B);
    let east_streams = aws_sdk_dynamodbstreams::Client::new(&local.sdk_config(REGION_A));
    let west_streams = aws_sdk_dynamodbstreams::Client::new(&local.sdk_config(REGION_B));

    let east_arn = create_table(&east, &table).await;
    cleanup.table(REGION_A, &table);
    let west_arn = create_table(&west, &table).await;
    cleanup.table(REGION_B, &table);

    // In region A: insert a, update a, insert b, delete a.
    east.put_item()
        .table_name(&table)
        .item("id", s("a"))
        .item("text", s("buy milk"))
        .item("n", n("1"))
        .send()
        .await
        .expect("put a");
    let updated = east
        .update_item()
        .table_name(&table)
        .key("id", s("a"))
        .update_expression("SET n = :n")
        .expression_attribute_values(":n", n("2"))
        .return_values(ReturnValue::AllNew)
        .send()
        .await
        .expect("update a");
    assert_eq!(updated.attributes().and_then(|a| a.get("n")), Some(&n("2")));
    east.put_item()
        .table_name(&table)
        .item("id", s("b"))
        .item("text", s("walk"))
        .send()
        .await
        .expect("put b");
    east.delete_item()
        .table_name(&table)
        .key("id", s("a"))
        .send()
        .await
        .expect("delete a");
    // In region B: one item of its own.
    west.put_item()
        .table_name(&table)
        .item("id", s("w"))
        .send()
        .await
        .expect("put w");

    let records = read_stream(&east_streams, &east_arn).await;
    let summary: Vec<(OperationType, String)> = records
        .iter()
        .map(|r| {
            let key = r.dynamodb().and_then(|d| d.keys()).expect("keys");
            let StreamValue::S(id) = attr(key, "id") else {
                panic!("id is a string")
            };
            (r.event_name().expect("event name").clone(), id.clone())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (OperationType::Insert, "a".to_owned()),
            (OperationType::Modify, "a".to_owned()),
            (OperationType::Insert, "b".to_owned()),
            (OperationType::Remove, "a".to_owned()),
        ]
    );

    // Images: INSERT has only a new image, MODIFY both, REMOVE only the old one.
    let insert_a = image(&records[0], true).expect("INSERT has a new image");
    assert!(image(&records[0], false).is_none());
    assert_eq!(attr(insert_a, "text"), &StreamValue::S("buy milk".into()));
    assert_eq!(attr(insert_a, "n"), &StreamValue::N("1".into()));
    let old = image(&records[1], false).expect("MODIFY has an old image");
    let new = image(&records[1], true).expect("MODIFY has a new image");
    assert_eq!(attr(old, "n"), &StreamValue::N("1".into()));
    assert_eq!(attr(new, "n"), &StreamValue::N("2".into()));
    assert_eq!(attr(new, "text"), &StreamValue::S("buy milk".into()));
    let insert_b = image(&records[2], true).expect("INSERT b has a new image");
    assert_eq!(attr(insert_b, "text"), &StreamValue::S("walk".into()));
    let removed = image(&records[3], false).expect("REMOVE has the old image");
    assert!(image(&records[3], true).is_none());
    assert_eq!(attr(removed, "n"), &StreamValue::N("2".into()));

    // Sequence numbers are strictly increasing (they are decimal strings of varying length).
    let seqs: Vec<u128> = records
        .iter()
        .map(|r| {
            r.dynamodb()
                .and_then(|d| d.sequence_number())
                .expect("sequence number")
                .parse()
                .expect("decimal sequence number")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Isolation: region B's table and stream hold only region B's write, and region A does not see it.
    let west_records = read_stream(&west_streams, &west_arn).await;
    assert_eq!(west_records.len(), 1, "{west_records:?}");
    assert_eq!(west_records[0].event_name(), Some(&OperationType::Insert));
    let west_items = west.scan().table_name(&table).send().await.expect("scan B");
    assert_eq!(west_items.count(), 1);
    assert_eq!(west_items.items()[0].get("id"), Some(&s("w")));
    let east_items = east.scan().table_name(&table).send().await.expect("scan A");
    assert_eq!(east_items.count(), 1);
    assert_eq!(east_items.items()[0].get("id"), Some(&s("b")));
}
