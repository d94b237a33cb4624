//! Randomized property tests (seeded, so a failure replays): malformed or surprising stream records and
//! items never panic, and every error names what was wrong.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue as TableValue;
use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, Identity, OperationType, Record, StreamRecord,
};
use replicator::apply::plan::PlanContext;
use replicator::config::Mode;
use replicator::item::{Item, key_string};
use replicator::sim::rng::Rng;
use replicator::stream::SeqNo;
use replicator::stream::record::{DecodeError, decode};
use tworegion_common::version::VersionAttributes;

const CASES: u64 = 3000;

fn text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "",
        "a",
        "id",
        ",",
        "=",
        "\"",
        "\\",
        "S:",
        "N\"1\"",
        "é",
        "🦀",
        " ",
        "\n",
        "rep_version",
        "0",
        "-1",
        "1.5",
        "99999999999999999999999999999999999999",
        "1e3",
    ];
    (0..rng.below(4))
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

fn value(rng: &mut Rng, depth: u32) -> StreamValue {
    match rng.below(if depth > 3 { 8 } else { 10 }) {
        0 => StreamValue::S(text(rng)),
        1 => StreamValue::N(text(rng)),
        2 => StreamValue::B(Blob::new(text(rng).into_bytes())),
        3 => StreamValue::Bool(rng.chance(0.5)),
        4 => StreamValue::Null(rng.chance(0.5)),
        5 => StreamValue::Ss((0..rng.below(3)).map(|_| text(rng)).collect()),
        6 => StreamValue::Ns((0..rng.below(3)).map(|_| text(rng)).collect()),
        7 => StreamValue::Bs(
            (0..rng.below(3))
                .map(|_| Blob::new(text(rng).into_bytes()))
                .collect(),
        ),
        8 => StreamValue::L((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => StreamValue::M(image(rng, depth + 1)),
    }
}

fn image(rng: &mut Rng, depth: u32) -> HashMap<String, StreamValue> {
    (0..rng.below(5))
        .map(|_| (text(rng), value(rng, depth)))
        .collect()
}

fn record(rng: &mut Rng) -> Record {
    let mut body = StreamRecord::builder();
    if rng.chance(0.9) {
        let seq = if rng.chance(0.8) {
            format!("{}", rng.next_u64() as u128 * 1_000_000_000_000 + 7)
        } else {
            text(rng)
        };
        body = body.sequence_number(seq);
    }
    if rng.chance(0.9) {
        let mut keys = image(rng, 0);
        if rng.chance(0.8) {
            keys.insert("id".into(), value(rng, 3));
        }
        body = body.set_keys(Some(keys));
    }
    if rng.chance(0.6) {
        let mut new = image(rng, 0);
        if rng.chance(0.5) {
            new.insert("rep_version".into(), value(rng, 3));
        }
        if rng.chance(0.5) {
            new.insert("rep_origin".into(), value(rng, 3));
        }
        body = body.set_new_image(Some(new));
    }
    if rng.chance(0.6) {
        body = body.set_old_image(Some(image(rng, 0)));
    }
    if rng.chance(0.5) {
        body = body
            .approximate_creation_date_time(DateTime::from_secs(rng.below(4_000_000_000) as i64));
    }
    let event = match rng.below(5) {
        0 => OperationType::Insert,
        1 => OperationType::Modify,
        2 => OperationType::Remove,
        3 => OperationType::from(text(rng).as_str()),
        _ => OperationType::from("UPSERT"),
    };
    let mut rec = Record::builder().event_name(event);
    if rng.chance(0.9) {
        rec = rec.dynamodb(body.build());
    }
    if rng.chance(0.2) {
        rec = rec.user_identity(
            Identity::builder()
                .r#type(text(rng))
                .principal_id(if rng.chance(0.5) {
                    "dynamodb.amazonaws.com".into()
                } else {
                    text(rng)
                })
                .build(),
        );
    }
    rec.build()
}

#[test]
fn decoding_random_records_never_panics_and_errors_say_what_is_wrong() {
    let mut rng = Rng::new(20261129);
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..CASES {
        let rec = record(&mut rng);
        match decode(&rec) {
            Ok(change) => {
                ok += 1;
                assert!(!change.keys.is_empty());
                assert!(change.seq.as_str().bytes().all(|b| b.is_ascii_digit()));
                let body = rec.dynamodb().expect("decoded records have a body");
                assert_eq!(change.keys.len(), body.keys().map_or(0, |k| k.len()));
                assert_eq!(
                    change.new_image.as_ref().map(|i| i.len()),
                    body.new_image().map(|i| i.len())
                );
            }
            Err(error) => {
                errors += 1;
                let message = error.to_string();
                assert!(!message.is_empty());
                match &error {
                    DecodeError::Missing(what) => assert!(message.contains(what)),
                    DecodeError::BadSequence(s) => assert!(message.contains(&format!("{s:?}"))),
                    DecodeError::UnknownEvent(e) => assert!(message.contains(&format!("{e:?}"))),
                    DecodeError::UnknownValue(n) => assert!(message.contains(&format!("{n:?}"))),
                }
            }
        }
    }
    assert!(
        ok > 300 && errors > 300,
        "both outcomes are exercised: {ok} ok, {errors} errors"
    );
}

#[test]
fn planning_random_changes_never_panics_and_errors_name_record_and_attribute() {
    let mut rng = Rng::new(7);
    let mut planned = 0;
    for case in 0..CASES {
        let changes: Vec<_> = (0..1 + rng.below(6))
            .filter_map(|_| decode(&record(&mut rng)).ok())
            .collect();
        for mode in [Mode::OneWay, Mode::Lww] {
            let ctx =
                PlanContext::new(mode, "us-east-1", "us-west-2", VersionAttributes::default());
            match ctx.plan(&changes) {
                Ok(plan) => {
                    planned += 1;
                    let covered: usize = plan.writes.iter().map(|w| w.covers.len()).sum();
                    assert_eq!(
                        covered + plan.skipped.len(),
                        changes.len(),
                        "case {case}: every record settled once"
                    );
                }
                Err(error) => {
                    assert!(
                        changes.iter().any(|c| c.seq.as_str() == error.seq),
                        "case {case}: {error}"
                    );
                    assert!(!error.problem.is_empty());
                    assert!(
                        error.problem.contains("rep_version")
                            || error.problem.contains("rep_origin")
                            || error.problem.contains("new image"),
                        "case {case}: the problem names the attribute: {error}"
                    );
                }
            }
        }
    }
    assert!(planned > 1000);
}

fn random_key(rng: &mut Rng) -> Item {
    let mut key = Item::new();
    for _ in 0..1 + rng.below(2) {
        let v = match rng.below(3) {
            0 => TableValue::S(text(rng)),
            1 => TableValue::N(text(rng)),
            _ => TableValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                text(rng).into_bytes(),
            )),
        };
        key.insert(
            if rng.chance(0.5) {
                "pk".into()
            } else {
                text(rng)
            },
            v,
        );
    }
    key
}

#[test]
fn key_strings_are_injective() {
    let mut rng = Rng::new(99);
    let mut seen: HashMap<String, Item> = HashMap::new();
    for _ in 0..20_000 {
        let key = random_key(&mut rng);
        let s = key_string(&key);
        if let Some(previous) = seen.get(&s) {
            assert_eq!(previous, &key, "two different keys share the string {s}");
        }
        seen.insert(s, key);
    }
}

#[test]
fn sequence_numbers_order_as_numbers() {
    let mut rng = Rng::new(5);
    for _ in 0..20_000 {
        let a = (rng.next_u64() as u128) << rng.below(64);
        let b = (rng.next_u64() as u128) << rng.below(64);
        let (sa, sb) = (SeqNo::from_u128(a), SeqNo::from_u128(b));
        assert_eq!(sa.cmp(&sb), a.cmp(&b), "{a} vs {b}");
        let padded = SeqNo::parse(&format!("{a:040}")).expect("digits");
        assert_eq!(padded, sa, "leading zeros do not change the number");
    }
}
