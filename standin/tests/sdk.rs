//! The stand-in through the real AWS SDK: what the replicator and its lease table call, per region, with
//! streams that roll over and split, throttling and latency.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodbstreams::types::{ShardFilter, ShardFilterType, ShardIteratorType};
use standin::server::{Latency, Shared, router};
use standin::store::Limits;
use tworegion_common::aws::{AwsOptions, parse_region, sdk_config};

async fn serve(limits: Limits, latency: Latency, home: Option<&str>) -> String {
    let shared = Shared::new(limits, latency);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = router(shared, home.map(str::to_owned));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn no_latency() -> Latency {
    Latency {
        default: Duration::ZERO,
        cross_region: Duration::ZERO,
        ..Latency::default()
    }
}

async fn clients(
    url: &str,
    region: &str,
) -> (aws_sdk_dynamodb::Client, aws_sdk_dynamodbstreams::Client) {
    let options = AwsOptions {
        endpoint_url: Some(url.to_owned()),
        placeholder_credentials: true,
        ..AwsOptions::default()
    };
    let config = sdk_config(parse_region(region).expect("region"), &options).await;
    // One attempt per call: the SDK would retry throttling itself and hide it.
    (
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&config)
                .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
                .build(),
        ),
        aws_sdk_dynamodbstreams::Client::from_conf(
            aws_sdk_dynamodbstreams::config::Builder::from(&config)
                .retry_config(aws_sdk_dynamodbstreams::config::retry::RetryConfig::disabled())
                .build(),
        ),
    )
}

async fn create(client: &aws_sdk_dynamodb::Client, name: &str, range: Option<&str>, stream: bool) {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        );
    if let Some(range) = range {
        request = request
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(range)
                    .key_type(KeyType::Range)
                    .build()
                    .expect("key"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(range)
                    .attribute_type(ScalarAttributeType::N)
                    .build()
                    .expect("definition"),
            );
    }
    if stream {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .expect("spec"),
        );
    }
    request.send().await.expect("creates");
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

#[tokio::test]
async fn tables_items_and_expressions_through_the_sdk() {
    let url = serve(Limits::default(), no_latency(), None).await;
    let (east, _) = clients(&url, "us-east-1").await;
    let (west, _) = clients(&url, "us-west-2").await;
    create(&east, "t", Some("sk"), false).await;
    // Tables are per region: the same name in the other region is another table, missing until made.
    let missing = west
        .describe_table()
        .table_name("t")
        .send()
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
    create(&west, "t", Some("sk"), false).await;
    let again = east
        .create_table()
        .table_name("t")
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("def"),
        )
        .send()
        .await
        .expect_err("exists");
    assert_eq!(again.code(), Some("ResourceInUseException"));

    for i in [3, 1, 10, 2] {
        east.put_item()
            .table_name("t")
            .item("pk", s("a"))
            .item("sk", n(i))
            .item("v", n(i * 100))
            .send()
            .await
            .expect("puts");
    }
    // A conditional put that does not hold.
    let refused = east
        .put_item()
        .table_name("t")
        .item("pk", s("a"))
        .item("sk", n(1))
        .condition_expression("attribute_not_exists(#p)")
        .expression_attribute_names("#p", "pk")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Some("ConditionalCheckFailedException"));
    // The replicator's lww condition, as a delete.
    let newer = east
        .delete_item()
        .table_name("t")
        .key("pk", s("a"))
        .key("sk", n(2))
        .condition_expression("attribute_not_exists(#v) OR #v <= :v")
        .expression_attribute_names("#v", "v")
        .expression_attribute_values(":v", n(199))
        .send()
        .await
        .expect_err("stored 200 is newer than 199");
    assert_eq!(newer.code(), Some("ConditionalCheckFailedException"));
    east.delete_item()
        .table_name("t")
        .key("pk", s("a"))
        .key("sk", n(2))
        .condition_expression("attribute_not_exists(#v) OR #v <= :v")
        .expression_attribute_names("#v", "v")
        .expression_attribute_values(":v", n(200))
        .send()
        .await
        .expect("deletes");
    // The lease counter update, returning the new item.
    let updated = east
        .update_item()
        .table_name("t")
        .key("pk", s("a"))
        .key("sk", n(3))
        .update_expression("SET #c = if_not_exists(#c, :zero) + :one, #o = :me REMOVE #v")
        .condition_expression("attribute_exists(#p)")
        .expression_attribute_names("#c", "counter")
        .expression_attribute_names("#o", "owner")
        .expression_attribute_names("#v", "v")
        .expression_attribute_names("#p", "pk")
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":me", s("w1"))
        .return_values(ReturnValue::AllNew)
        .send()
        .await
        .expect("updates");
    let attributes = updated.attributes().expect("attributes");
    assert_eq!(attributes.get("counter"), Some(&n(1)));
    assert_eq!(attributes.get("owner"), Some(&s("w1")));
    assert!(!attributes.contains_key("v"));
    // An unused placeholder is refused, as DynamoDB does.
    let unused = east
        .get_item()
        .table_name("t")
        .key("pk", s("a"))
        .key("sk", n(3))
        .expression_attribute_names("#x", "x")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(unused.code(), Some("ValidationException"));
    // Query in sort-key order (numbers by value), paged.
    let first = east
        .query()
        .table_name("t")
        .key_condition_expression("#p = :p")
        .expression_attribute_names("#p", "pk")
        .expression_attribute_values(":p", s("a"))
        .limit(2)
        .consistent_read(true)
        .send()
        .await
        .expect("queries");
    let sks: Vec<_> = first.items().iter().map(|i| i["sk"].clone()).collect();
    assert_eq!(sks, [n(1), n(3)]);
    let rest = east
        .query()
        .table_name("t")
        .key_condition_expression("#p = :p")
        .expression_attribute_names("#p", "pk")
        .expression_attribute_values(":p", s("a"))
        .set_exclusive_start_key(first.last_evaluated_key().cloned())
        .send()
        .await
        .expect("queries");
    let sks: Vec<_> = rest.items().iter().map(|i| i["sk"].clone()).collect();
    assert_eq!(sks, [n(10)]);
    assert!(rest.last_evaluated_key().is_none());
    // The other region's table saw none of it.
    let other = west
        .get_item()
        .table_name("t")
        .key("pk", s("a"))
        .key("sk", n(1))
        .send()
        .await
        .expect("gets");
    assert!(other.item().is_none());
}

async fn stream_arn(client: &aws_sdk_dynamodb::Client, table: &str) -> String {
    client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .expect("describes")
        .table()
        .and_then(|t| t.latest_stream_arn())
        .expect("stream")
        .to_owned()
}

#[tokio::test]
async fn streams_roll_over_split_and_throttle() {
    let limits = Limits {
        shards: 2,
        get_records_per_second: 5,
        ..Limits::default()
    };
    let shared = Shared::new(limits, no_latency());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn({
        let app = router(shared.clone(), None);
        async move { axum::serve(listener, app).await }
    });
    let (db, streams) = clients(&url, "us-east-1").await;
    create(&db, "s", None, true).await;
    for i in 0..40 {
        db.put_item()
            .table_name("s")
            .item("pk", s(&format!("k{i}")))
            .item("v", n(1))
            .send()
            .await
            .expect("puts");
    }
    // Split every shard: each parent ends, two children continue its keys.
    assert_eq!(
        shared
            .lock()
            .table("us-east-1", "s")
            .expect("table")
            .roll_shards(true),
        4
    );
    for i in 0..40 {
        db.put_item()
            .table_name("s")
            .item("pk", s(&format!("k{i}")))
            .item("v", n(2))
            .send()
            .await
            .expect("puts");
    }
    let arn = stream_arn(&db, "s").await;
    let described = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("describes");
    let shards = described
        .stream_description()
        .expect("description")
        .shards()
        .to_vec();
    assert_eq!(shards.len(), 6);
    let parents: Vec<_> = shards
        .iter()
        .filter(|s| s.parent_shard_id().is_none())
        .collect();
    assert!(parents.iter().all(|p| {
        p.sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some()
    }));
    let children = streams
        .describe_stream()
        .stream_arn(&arn)
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::ChildShards)
                .shard_id(parents[0].shard_id().expect("id"))
                .build(),
        )
        .send()
        .await
        .expect("describes");
    assert_eq!(children.stream_description().expect("d").shards().len(), 2);

    // Every record once, in per-key order: a parent read to its end returns no next iterator.
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut records = 0;
    for shard in &shards {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id().expect("id"))
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator");
        loop {
            let page = loop {
                match streams
                    .get_records()
                    .shard_iterator(&iterator)
                    .limit(7)
                    .send()
                    .await
                {
                    Ok(page) => break page,
                    Err(e) if e.code() == Some("LimitExceededException") => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            };
            for record in page.records() {
                let body = record.dynamodb().expect("body");
                let key = match body.keys().and_then(|k| k.get("pk")) {
                    Some(aws_sdk_dynamodbstreams::types::AttributeValue::S(k)) => k.clone(),
                    other => panic!("{other:?}"),
                };
                let value = match body.new_image().and_then(|k| k.get("v")) {
                    Some(aws_sdk_dynamodbstreams::types::AttributeValue::N(v)) => v.clone(),
                    other => panic!("{other:?}"),
                };
                seen.entry(key).or_default().push(value);
                records += 1;
            }
            match page.next_shard_iterator {
                Some(next) if !page.records().is_empty() => iterator = next,
                Some(_) => {
                    assert!(
                        shard.parent_shard_id().is_some(),
                        "only open shards end with an iterator"
                    );
                    break;
                }
                None => break,
            }
        }
    }
    assert_eq!(records, 80);
    assert!(
        seen.values()
            .all(|v| v == &["1".to_owned(), "2".to_owned()]),
        "{seen:?}"
    );

    // More than 5 GetRecords calls a second on one shard: LimitExceededException.
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(shards[0].shard_id().expect("id"))
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("iterator")
        .shard_iterator
        .expect("iterator");
    let mut throttled = 0;
    for _ in 0..8 {
        if let Err(e) = streams.get_records().shard_iterator(&iterator).send().await {
            assert_eq!(e.code(), Some("LimitExceededException"));
            throttled += 1;
        }
    }
    assert!(throttled >= 3, "{throttled} of 8 throttled");
}

#[tokio::test]
async fn write_capacity_throttles_and_the_other_region_is_far() {
    let limits = Limits {
        partitions: 1,
        partition_write_units: 20,
        ..Limits::default()
    };
    let latency = Latency {
        default: Duration::ZERO,
        cross_region: Duration::from_millis(80),
        ..Latency::default()
    };
    let url = serve(limits, latency, Some("us-west-2")).await;
    let (west, _) = clients(&url, "us-west-2").await;
    let (east, _) = clients(&url, "us-east-1").await;
    create(&west, "w", None, false).await;
    create(&east, "w", None, false).await;
    let mut throttled = 0;
    for i in 0..60 {
        if let Err(e) = west
            .put_item()
            .table_name("w")
            .item("pk", s(&format!("k{i}")))
            .send()
            .await
        {
            assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"));
            throttled += 1;
        }
    }
    assert!(
        throttled > 0,
        "60 quick writes at 20 units/s were all accepted"
    );
    // A call signed for the other region pays the cross-region round trip (a lower bound only).
    let started = Instant::now();
    east.describe_table()
        .table_name("w")
        .send()
        .await
        .expect("describes");
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );
}
