//! GetRecords sent directly: the one stream call made for every page of records, signed and sent as
//! the direct writer sends its writes ([`DirectClient`]: the SDK's credentials, endpoint resolver and
//! signing-key derivation, one attempt within a deadline), and its answer parsed straight into
//! [`Change`]s, without the SDK's deserializer and its intermediate types (docs/BENCHMARKS.md: that
//! was 7% of the CPU of a drain). The stream's other calls (DescribeStream, GetShardIterator), made a
//! few times per shard, still go through the SDK ([`super::aws::AwsStream`]).
//!
//! The answer is read as the SDK reads it: `Records[].eventName`, `dynamodb.{Keys, NewImage,
//! OldImage, SequenceNumber, ApproximateCreationDateTime}`, `userIdentity.{Type, PrincipalId}` and
//! `NextShardIterator` (absent or null once a closed shard has been read to its end); other fields
//! are ignored. `Records` must be there (DynamoDB Streams always sends it, `[]` when empty): JSON
//! without it is not a GetRecords answer, and is retried rather than taken for a shard's end. A record this replicator cannot decode (a missing part, an attribute type it does not
//! know) stops the shard, as with the SDK ([`StreamError::Decode`]); an answer that is not JSON at
//! all (cut off, a proxy's page) is a retryable failure.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

use super::record::{DecodeError, TTL_PRINCIPAL, event_kind, sequence};
use super::{Change, Page, StreamError};
use crate::apply::direct::DirectClient;
use crate::error::{AwsFailure, ErrorClass};
use crate::item::Item;

/// The largest GetRecords answer read. DynamoDB Streams returns at most 1 MB of record data a call;
/// its JSON (names, quoting, base64 of binary values) is larger than the data.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// GetRecords of one stream's shards, sent directly (see the module's documentation).
#[derive(Debug)]
pub struct DirectReader {
    client: DirectClient,
}

impl DirectReader {
    /// A reader at `endpoint` (the SDK's DynamoDB Streams endpoint for `region`), with credentials from
    /// `provider`; each read is one attempt within `attempt_timeout`.
    pub fn new(
        region: &str,
        endpoint: &str,
        provider: SharedCredentialsProvider,
        attempt_timeout: Duration,
    ) -> Result<DirectReader, String> {
        Ok(DirectReader {
            client: DirectClient::new(
                "the source stream",
                region,
                endpoint,
                provider,
                attempt_timeout,
                MAX_ANSWER_BYTES,
            )?,
        })
    }

    /// Up to `limit` records from `iterator`.
    pub async fn read(&self, iterator: &str, limit: i32) -> Result<Page, StreamError> {
        let mut body = Vec::with_capacity(iterator.len() + 40);
        body.extend_from_slice(b"{\"ShardIterator\":");
        // Writing to a Vec cannot fail, and a &str always serializes.
        let _ = serde_json::to_writer(&mut body, iterator);
        body.extend_from_slice(format!(",\"Limit\":{limit}}}").as_bytes());
        match self
            .client
            .call("DynamoDBStreams_20120810.GetRecords", body)
            .await
        {
            Ok((_, answer)) => parse_page(&answer).map_err(|error| match error {
                Unreadable::NotJson(why) => StreamError::Aws(AwsFailure::synthetic(
                    ErrorClass::Retryable,
                    "response",
                    format!(
                        "the GetRecords answer from {} is not DynamoDB Streams' JSON: {why}",
                        self.client.endpoint()
                    ),
                )),
                Unreadable::Record(error) => StreamError::Decode(error),
            }),
            Err(failure) => Err(match failure.code.as_deref() {
                Some("ExpiredIteratorException") => StreamError::ExpiredIterator,
                Some("TrimmedDataAccessException") => StreamError::Trimmed(failure.message),
                _ => StreamError::Aws(failure),
            }),
        }
    }
}

/// Why an answer could not be read.
#[derive(Debug)]
enum Unreadable {
    /// Not JSON, or cut off: not an answer of DynamoDB Streams at all.
    NotJson(String),
    /// JSON, but a record in it cannot be decoded.
    Record(DecodeError),
}

/// A GetRecords answer's body as [`Page`].
fn parse_page(answer: &[u8]) -> Result<Page, Unreadable> {
    let parsed: Answer = serde_json::from_slice(answer).map_err(|e| {
        if e.is_data() {
            Unreadable::Record(DecodeError::Unreadable(e.to_string()))
        } else {
            Unreadable::NotJson(e.to_string())
        }
    })?;
    // DynamoDB Streams always sends `Records` (`[]` when there are none). Without it this is not
    // its answer (a proxy's or a wrong endpoint's JSON), and taking it as one would take the missing
    // `NextShardIterator` for the end of the shard and skip the rest of it.
    let records = parsed.records.ok_or_else(|| {
        Unreadable::NotJson("it has no Records, so it is not a GetRecords answer".to_owned())
    })?;
    let changes = records
        .into_iter()
        .map(RawRecord::decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Unreadable::Record)?;
    Ok(Page {
        changes,
        next: parsed.next,
    })
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Records")]
    records: Option<Vec<RawRecord>>,
    #[serde(rename = "NextShardIterator")]
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    dynamodb: Option<RawBody>,
    #[serde(rename = "userIdentity")]
    user_identity: Option<RawIdentity>,
}

#[derive(Deserialize)]
struct RawBody {
    #[serde(rename = "ApproximateCreationDateTime")]
    created_at: Option<f64>,
    #[serde(rename = "Keys")]
    keys: Option<Image>,
    #[serde(rename = "NewImage")]
    new_image: Option<Image>,
    #[serde(rename = "OldImage")]
    old_image: Option<Image>,
    #[serde(rename = "SequenceNumber")]
    sequence_number: Option<String>,
}

#[derive(Deserialize)]
struct RawIdentity {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "PrincipalId")]
    principal: Option<String>,
}

impl RawRecord {
    /// As [`super::record::decode_owned`] decodes the SDK's record.
    fn decode(self) -> Result<Change, DecodeError> {
        let by_ttl = self.user_identity.is_some_and(|identity| {
            identity.kind.as_deref() == Some("Service")
                && identity.principal.as_deref() == Some(TTL_PRINCIPAL)
        });
        let kind = event_kind(self.event_name.as_deref())?;
        let body = self
            .dynamodb
            .ok_or(DecodeError::Missing("dynamodb section"))?;
        let seq = sequence(body.sequence_number)?;
        let keys = body.keys.ok_or(DecodeError::Missing("keys"))?.0;
        if keys.is_empty() {
            return Err(DecodeError::Missing("keys"));
        }
        Ok(Change {
            seq,
            kind,
            keys,
            new_image: body.new_image.map(|i| i.0),
            old_image: body.old_image.map(|i| i.0),
            created_at: body.created_at,
            by_ttl,
        })
    }
}

/// An item in DynamoDB's JSON (`{"name": {"S": "..."}, ...}`), read straight into the SDK's types.
struct Image(Item);

impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Image, D::Error> {
        struct ImageVisitor;
        impl<'de> Visitor<'de> for ImageVisitor {
            type Value = Image;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an item: attribute names and typed values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Image, A::Error> {
                let mut item = HashMap::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value_seed(Typed { name: &name })?;
                    item.insert(name, value);
                }
                Ok(Image(item))
            }
        }
        deserializer.deserialize_map(ImageVisitor)
    }
}

/// The list's attribute name, carried into its elements for errors.
struct Elements<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = Vec<AttributeValue>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        struct ElementsVisitor<'a> {
            name: &'a str,
        }
        impl<'de> Visitor<'de> for ElementsVisitor<'_> {
            type Value = Vec<AttributeValue>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of typed values in attribute {:?}", self.name)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(value) = seq.next_element_seed(Typed { name: self.name })? {
                    out.push(value);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(ElementsVisitor { name: self.name })
    }
}

/// A typed value (`{"S": "..."}`, `{"M": {...}}`...) of attribute `name`.
struct Typed<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for Typed<'_> {
    type Value = AttributeValue;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<AttributeValue, D::Error> {
        deserializer.deserialize_map(self)
    }
}

fn binary<E: de::Error>(name: &str, text: &str) -> Result<Blob, E> {
    aws_smithy_types::base64::decode(text)
        .map(Blob::new)
        .map_err(|e| {
            E::custom(format!(
                "attribute {name:?}: a binary value that is not base64: {e}"
            ))
        })
}

impl<'de> Visitor<'de> for Typed<'_> {
    type Value = AttributeValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a typed value in attribute {:?}", self.name)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributeValue, A::Error> {
        let name = self.name;
        let Some(tag) = map.next_key::<std::borrow::Cow<'de, str>>()? else {
            return Err(de::Error::custom(format!(
                "attribute {name:?} has a value without a type"
            )));
        };
        let value = match tag.as_ref() {
            "S" => AttributeValue::S(map.next_value()?),
            "N" => AttributeValue::N(map.next_value()?),
            "B" => {
                let text: std::borrow::Cow<'de, str> = map.next_value()?;
                AttributeValue::B(binary(name, &text)?)
            }
            "BOOL" => AttributeValue::Bool(map.next_value()?),
            "NULL" => AttributeValue::Null(map.next_value()?),
            "SS" => AttributeValue::Ss(map.next_value()?),
            "NS" => AttributeValue::Ns(map.next_value()?),
            "BS" => {
                let texts: Vec<std::borrow::Cow<'de, str>> = map.next_value()?;
                AttributeValue::Bs(
                    texts
                        .iter()
                        .map(|t| binary(name, t))
                        .collect::<Result<_, _>>()?,
                )
            }
            "L" => AttributeValue::L(map.next_value_seed(Elements { name })?),
            "M" => AttributeValue::M(map.next_value::<Image>()?.0),
            other => {
                return Err(de::Error::custom(format!(
                    "attribute {name:?} has a value of type {other:?}, which this replicator does not know"
                )));
            }
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "attribute {name:?} has a value with more than one type"
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::record::decode_owned;
    use aws_sdk_dynamodbstreams::types::Record;

    /// A GetRecords answer as DynamoDB Streams writes it: every value type, nested, escapes and a
    /// surrogate pair, a TTL deletion and another service's change, binary keys, and a creation time
    /// with a fraction.
    const ANSWER: &str = r#"{
        "NextShardIterator": "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x|1|AAAA",
        "Records": [
            {"awsRegion": "eu-west-1", "eventID": "e1", "eventName": "INSERT", "eventSource": "aws:dynamodb", "eventVersion": "1.1",
             "dynamodb": {"ApproximateCreationDateTime": 1700000000.5, "Keys": {"pk": {"S": "a\"b\u00e9\ud83d\ude00"}},
                          "NewImage": {"pk": {"S": "a\"b\u00e9\ud83d\ude00"}, "\u00fc": {"S": "\n"}, "n": {"N": "-1.5E3"}, "b": {"B": "AP8B"}, "t": {"BOOL": true},
                                       "z": {"NULL": true}, "ss": {"SS": ["x", "y"]}, "ns": {"NS": ["1", "2.5"]},
                                       "bs": {"BS": ["aGk=", ""]}, "l": {"L": [{"S": "q"}, {"L": []}, {"M": {"k": {"N": "1"}}}]},
                                       "m": {"M": {"inner": {"M": {}}}}},
                          "SequenceNumber": "100000000000000000001", "SizeBytes": 90, "StreamViewType": "NEW_AND_OLD_IMAGES"}},
            {"eventName": "MODIFY", "userIdentity": {"PrincipalId": "backup.amazonaws.com", "Type": "Service"},
             "dynamodb": {"ApproximateCreationDateTime": 1700000001, "Keys": {"pk": {"B": "AQI="}},
                          "NewImage": {"pk": {"B": "AQI="}, "v": {"N": "2"}}, "OldImage": {"pk": {"B": "AQI="}, "v": {"N": "1"}},
                          "SequenceNumber": "200000000000000000002"}},
            {"eventName": "REMOVE", "userIdentity": {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"},
             "dynamodb": {"Keys": {"pk": {"S": "gone"}}, "OldImage": {"pk": {"S": "gone"}}, "SequenceNumber": "300000000000000000003"}}
        ]
    }"#;

    #[test]
    fn decodes_an_answer_exactly_as_the_sdk_path_does() {
        let page = parse_page(ANSWER.as_bytes()).unwrap();
        assert_eq!(
            page.next.as_deref(),
            Some("arn:aws:dynamodb:eu-west-1:1:table/t/stream/x|1|AAAA")
        );
        // The SDK's deserializer and the SDK path's decoding of the same answer.
        let sdk: Vec<Change> = sdk_records(ANSWER)
            .into_iter()
            .map(|r| decode_owned(r).unwrap())
            .collect();
        assert_eq!(page.changes, sdk);
        assert_eq!(page.changes.len(), 3);
        assert!(page.changes[2].by_ttl && !page.changes[1].by_ttl);
        assert_eq!(page.changes[0].created_at, Some(1_700_000_000.5));
        assert_eq!(
            page.changes[0].keys["pk"],
            AttributeValue::S("a\"b\u{e9}\u{1f600}".into())
        );
        let image = page.changes[0].new_image.as_ref().unwrap();
        assert_eq!(image["b"], AttributeValue::B(Blob::new(vec![0, 255, 1])));
        assert_eq!(
            image["bs"],
            AttributeValue::Bs(vec![Blob::new(b"hi".to_vec()), Blob::new(vec![])])
        );
    }

    /// The records of `answer` as the SDK's own deserializer gives them: the answer served over
    /// loopback to the SDK's DynamoDB Streams client.
    fn sdk_records(answer: &'static str) -> Vec<Record> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let endpoint = serve_once("200 OK", answer);
            let config = aws_sdk_dynamodbstreams::Config::builder()
                .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
                .region(aws_sdk_dynamodbstreams::config::Region::new("eu-west-1"))
                .credentials_provider(aws_credential_types::Credentials::new(
                    "AKID", "SECRET", None, None, "test",
                ))
                .endpoint_url(endpoint)
                .build();
            aws_sdk_dynamodbstreams::Client::from_conf(config)
                .get_records()
                .shard_iterator("it")
                .send()
                .await
                .unwrap()
                .records
                .unwrap_or_default()
        })
    }

    /// Answers the first request on a loopback port with `status` (`200 OK`) and `body`.
    fn serve_once(status: &str, body: &str) -> String {
        crate::apply::direct::answer_once(format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    #[test]
    fn a_closed_shard_read_to_its_end_has_no_next_iterator() {
        for answer in [
            r#"{"Records": []}"#,
            r#"{"Records": [], "NextShardIterator": null}"#,
        ] {
            let page = parse_page(answer.as_bytes()).unwrap();
            assert_eq!((page.changes.len(), page.next), (0, None), "{answer}");
        }
    }

    #[test]
    fn undecodable_records_stop_the_shard_and_garbage_is_retried() {
        let record = |body: &str| {
            format!(
                r#"{{"Records": [{{"eventName": "INSERT", "dynamodb": {body}}}], "NextShardIterator": "i"}}"#
            )
        };
        for (body, says) in [
            (
                r#"{"Keys": {"pk": {"X": "1"}}, "SequenceNumber": "1"}"#,
                "type \"X\", which this replicator does not know",
            ),
            (
                r#"{"Keys": {"pk": {}}, "SequenceNumber": "1"}"#,
                "without a type",
            ),
            (
                r#"{"Keys": {"pk": {"S": "a", "N": "1"}}, "SequenceNumber": "1"}"#,
                "more than one type",
            ),
            (
                r#"{"Keys": {"pk": {"B": "!!"}}, "SequenceNumber": "1"}"#,
                "not base64",
            ),
            (
                r#"{"Keys": {"pk": {"S": 1}}, "SequenceNumber": "1"}"#,
                "invalid type",
            ),
            (r#"{"Keys": {"pk": {"S": "a"}}}"#, "sequence number"),
            (r#"{"Keys": {}, "SequenceNumber": "1"}"#, "keys"),
            (
                r#"{"Keys": {"pk": {"S": "a"}}, "SequenceNumber": "x1"}"#,
                "not a decimal",
            ),
        ] {
            match parse_page(record(body).as_bytes()) {
                Err(Unreadable::Record(error)) => {
                    assert!(error.to_string().contains(says), "{body}: {error}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        let unknown_event = r#"{"Records": [{"eventName": "TRUNCATE", "dynamodb": {"Keys": {"pk": {"S": "a"}}, "SequenceNumber": "1"}}]}"#;
        assert!(matches!(
            parse_page(unknown_event.as_bytes()),
            Err(Unreadable::Record(DecodeError::UnknownEvent(_)))
        ));
        for garbage in [
            "<html>busy</html>",
            r#"{"Records": [{"eventName": "INS"#,
            "",
            "{}",
            r#"{"message": "hello from a proxy"}"#,
        ] {
            assert!(
                matches!(parse_page(garbage.as_bytes()), Err(Unreadable::NotJson(_))),
                "{garbage}"
            );
        }
    }

    #[tokio::test]
    async fn error_answers_keep_their_meaning() {
        let read = |status: &'static str, body: &'static str| async move {
            DirectReader::new(
                "eu-west-1",
                &serve_once(status, body),
                SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                    "AKID", "SECRET", None, None, "test",
                )),
                Duration::from_secs(5),
            )
            .unwrap()
            .read("it", 10)
            .await
        };
        let error = |code: &'static str| match code {
            "expired" => {
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ExpiredIteratorException","message":"old"}"#
            }
            "trimmed" => {
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#TrimmedDataAccessException","message":"gone"}"#
            }
            _ => {
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#LimitExceededException","message":"slow down"}"#
            }
        };
        assert!(matches!(
            read("400 Bad Request", error("expired")).await,
            Err(StreamError::ExpiredIterator)
        ));
        assert!(matches!(
            read("400 Bad Request", error("trimmed")).await,
            Err(StreamError::Trimmed(_))
        ));
        match read("400 Bad Request", error("throttled")).await {
            Err(StreamError::Aws(failure)) => {
                assert_eq!(failure.class, ErrorClass::Retryable);
                assert_eq!(failure.code.as_deref(), Some("LimitExceededException"));
            }
            other => panic!("{other:?}"),
        }
        match read("200 OK", "<html>busy</html>").await {
            Err(StreamError::Aws(failure)) => {
                assert_eq!(
                    (failure.class, failure.kind),
                    (ErrorClass::Retryable, "response")
                )
            }
            other => panic!("{other:?}"),
        }
        // The request itself: its operation, signing scope and body.
        let body = r#"{"Records":[],"NextShardIterator":"next"}"#;
        let (endpoint, request) = crate::apply::direct::answer_once_capturing(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let page = DirectReader::new(
            "eu-west-1",
            &endpoint,
            SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                "AKID", "SECRET", None, None, "test",
            )),
            Duration::from_secs(5),
        )
        .unwrap()
        .read("it\"x", 10)
        .await
        .unwrap();
        assert_eq!(page.next.as_deref(), Some("next"));
        let request = String::from_utf8(request.recv().unwrap())
            .unwrap()
            .to_lowercase();
        assert!(request.starts_with("post / http/1.1\r\n"), "{request}");
        assert!(
            request.contains("x-amz-target: dynamodbstreams_20120810.getrecords\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/x-amz-json-1.0\r\n"),
            "{request}"
        );
        assert!(
            request.contains("/eu-west-1/dynamodb/aws4_request"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"sharditerator":"it\"x","limit":10}"#),
            "{request}"
        );
    }
}
