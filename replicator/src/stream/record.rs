//! Decoding DynamoDB Streams records into [`Change`]s.
//!
//! Stream attribute values are a different Rust type from table attribute values; they are converted
//! with a recursive match (never through JSON, which would lose sets and binary types).

use aws_sdk_dynamodb::types::AttributeValue as TableValue;
use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, OperationType, Record};

use super::{Change, EventKind, SeqNo};
use crate::item::Item;

/// The principal that DynamoDB's TTL process uses for its deletions.
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// What was wrong with a stream record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required part is missing.
    #[error("the record has no {0}")]
    Missing(&'static str),
    /// The sequence number is not decimal digits.
    #[error("sequence number {0:?} is not a decimal number")]
    BadSequence(String),
    /// An event name other than INSERT, MODIFY, REMOVE.
    #[error("unknown event name {0:?}")]
    UnknownEvent(String),
    /// An attribute value of a type this SDK version does not know.
    #[error("attribute {0:?} has a value type this replicator does not know")]
    UnknownValue(String),
}

/// Converts one stream attribute value, moving its contents; `name` is used in the error.
pub fn into_value(name: &str, value: StreamValue) -> Result<TableValue, DecodeError> {
    Ok(match value {
        StreamValue::S(s) => TableValue::S(s),
        StreamValue::N(n) => TableValue::N(n),
        StreamValue::B(b) => TableValue::B(b),
        StreamValue::Bool(b) => TableValue::Bool(b),
        StreamValue::Null(n) => TableValue::Null(n),
        StreamValue::Ss(v) => TableValue::Ss(v),
        StreamValue::Ns(v) => TableValue::Ns(v),
        StreamValue::Bs(v) => TableValue::Bs(v),
        StreamValue::L(list) => TableValue::L(
            list.into_iter()
                .map(|v| into_value(name, v))
                .collect::<Result<_, _>>()?,
        ),
        StreamValue::M(map) => TableValue::M(into_image(map)?),
        _ => return Err(DecodeError::UnknownValue(name.to_owned())),
    })
}

/// Converts a whole image, moving its contents (no copy of any name or value).
pub fn into_image(
    image: std::collections::HashMap<String, StreamValue>,
) -> Result<Item, DecodeError> {
    image
        .into_iter()
        .map(|(k, v)| {
            let v = into_value(&k, v)?;
            Ok((k, v))
        })
        .collect()
}

/// Decodes one stream record (a copy; see [`decode_owned`]).
pub fn decode(record: &Record) -> Result<Change, DecodeError> {
    decode_owned(record.clone())
}

/// Decodes one stream record, moving its images into the change: the read path, where a copy of every
/// name and value per record was a measurable share of the CPU and the memory (docs/BENCHMARKS.md).
pub fn decode_owned(record: Record) -> Result<Change, DecodeError> {
    let by_ttl = record.user_identity().is_some_and(|identity| {
        identity.r#type() == Some("Service") && identity.principal_id() == Some(TTL_PRINCIPAL)
    });
    let kind = match record.event_name {
        Some(OperationType::Insert) => EventKind::Insert,
        Some(OperationType::Modify) => EventKind::Modify,
        Some(OperationType::Remove) => EventKind::Remove,
        Some(other) => return Err(DecodeError::UnknownEvent(other.as_str().to_owned())),
        None => return Err(DecodeError::Missing("event name")),
    };
    let body = record
        .dynamodb
        .ok_or(DecodeError::Missing("dynamodb section"))?;
    let seq_text = body
        .sequence_number
        .ok_or(DecodeError::Missing("sequence number"))?;
    let seq = SeqNo::parse(&seq_text).ok_or(DecodeError::BadSequence(seq_text))?;
    let keys = into_image(body.keys.ok_or(DecodeError::Missing("keys"))?)?;
    if keys.is_empty() {
        return Err(DecodeError::Missing("keys"));
    }
    let new_image = body.new_image.map(into_image).transpose()?;
    let old_image = body.old_image.map(into_image).transpose()?;
    let created_at = body.approximate_creation_date_time.map(|t| t.as_secs_f64());
    Ok(Change {
        seq,
        kind,
        keys,
        new_image,
        old_image,
        created_at,
        by_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
    use aws_sdk_dynamodbstreams::types::{Identity, StreamRecord};

    fn s(v: &str) -> StreamValue {
        StreamValue::S(v.to_owned())
    }

    fn record(event: OperationType, body: Option<StreamRecord>) -> Record {
        Record::builder()
            .event_name(event)
            .set_dynamodb(body)
            .build()
    }

    #[test]
    fn decodes_every_value_type_and_the_ttl_identity() {
        let nested = StreamValue::M(
            [
                (
                    "l".to_owned(),
                    StreamValue::L(vec![s("a"), StreamValue::N("1".into())]),
                ),
                ("b".to_owned(), StreamValue::B(Blob::new(vec![1, 2]))),
                ("bs".to_owned(), StreamValue::Bs(vec![Blob::new(vec![3])])),
                ("ss".to_owned(), StreamValue::Ss(vec!["x".into()])),
                ("ns".to_owned(), StreamValue::Ns(vec!["2".into()])),
                ("t".to_owned(), StreamValue::Bool(true)),
                ("z".to_owned(), StreamValue::Null(true)),
            ]
            .into(),
        );
        let body = StreamRecord::builder()
            .sequence_number("000100000000000000000001")
            .keys("id", s("k"))
            .old_image("id", s("k"))
            .old_image("m", nested)
            .approximate_creation_date_time(DateTime::from_secs(1_700_000_000))
            .build();
        let rec = Record::builder()
            .event_name(OperationType::Remove)
            .dynamodb(body)
            .user_identity(
                Identity::builder()
                    .r#type("Service")
                    .principal_id(TTL_PRINCIPAL)
                    .build(),
            )
            .build();
        let change = decode(&rec).unwrap();
        assert_eq!(change.kind, EventKind::Remove);
        assert!(change.by_ttl);
        assert_eq!(change.seq.as_str(), "100000000000000000001");
        assert_eq!(change.created_at, Some(1_700_000_000.0));
        let TableValue::M(m) = &change.old_image.unwrap()["m"] else {
            panic!("map")
        };
        assert_eq!(m["b"], TableValue::B(Blob::new(vec![1, 2])));
        assert_eq!(m["ss"], TableValue::Ss(vec!["x".into()]));
        assert_eq!(
            m["l"],
            TableValue::L(vec![TableValue::S("a".into()), TableValue::N("1".into())])
        );
        assert_eq!(m["z"], TableValue::Null(true));
    }

    #[test]
    fn malformed_records_are_errors_that_say_what_is_wrong() {
        assert_eq!(
            decode(&record(OperationType::Insert, None)),
            Err(DecodeError::Missing("dynamodb section"))
        );
        let no_seq = StreamRecord::builder().keys("id", s("k")).build();
        assert_eq!(
            decode(&record(OperationType::Insert, Some(no_seq))),
            Err(DecodeError::Missing("sequence number"))
        );
        let bad_seq = StreamRecord::builder()
            .sequence_number("12x")
            .keys("id", s("k"))
            .build();
        assert_eq!(
            decode(&record(OperationType::Insert, Some(bad_seq))),
            Err(DecodeError::BadSequence("12x".into()))
        );
        let no_keys = StreamRecord::builder().sequence_number("1").build();
        assert_eq!(
            decode(&record(OperationType::Insert, Some(no_keys))),
            Err(DecodeError::Missing("keys"))
        );
        let unknown = StreamRecord::builder()
            .sequence_number("1")
            .keys("id", s("k"))
            .build();
        assert!(matches!(
            decode(&record(OperationType::from("UPSERT"), Some(unknown))),
            Err(DecodeError::UnknownEvent(e)) if e == "UPSERT"
        ));
        // A user's own delete is not a TTL deletion.
        let body = StreamRecord::builder()
            .sequence_number("1")
            .keys("id", s("k"))
            .build();
        let user = Record::builder()
            .event_name(OperationType::Remove)
            .dynamodb(body)
            .user_identity(
                Identity::builder()
                    .r#type("Service")
                    .principal_id("someone")
                    .build(),
            )
            .build();
        assert!(!decode(&user).unwrap().by_ttl);
    }
}
