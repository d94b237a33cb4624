//! Reading a DynamoDB Stream: the [`StreamSource`] seam, its records, and shard lineage.
//!
//! - `aws`: the DynamoDB Streams implementation.
//! - `record`: decoding stream records (images, keys, sequence numbers) into [`Change`]s.
//! - `memory`: an in-process stream with several shards, splits, trimming and iterator expiry, for tests.

pub mod aws;
pub mod memory;
pub mod record;

use std::cmp::Ordering;
use std::future::Future;

use crate::error::AwsFailure;
use crate::item::Item;

/// A stream sequence number: a decimal string of 21 to 40 digits, compared numerically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqNo(String);

impl SeqNo {
    /// Wraps a decimal sequence number; `None` if it is not all digits.
    pub fn parse(text: &str) -> Option<SeqNo> {
        let trimmed = text.trim_start_matches('0');
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SeqNo(if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    /// The sequence number `n` (in-process models).
    pub fn from_u128(n: u128) -> SeqNo {
        SeqNo(n.to_string())
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SeqNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shard as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The shard ID.
    pub id: String,
    /// The shard it was split from, if any.
    pub parent: Option<String>,
    /// The shard's first sequence number (DescribeStream's StartingSequenceNumber).
    pub starting: Option<SeqNo>,
    /// Set once the shard is closed: no records will be added after it.
    pub ending: Option<SeqNo>,
}

/// Where to start reading a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still retained.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
    /// Just after this sequence number (the checkpoint).
    After(SeqNo),
    /// At this sequence number (a new child shard's first one: if it was trimmed, that is a gap).
    At(SeqNo),
}

impl std::fmt::Display for StartAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartAt::TrimHorizon => f.write_str("TRIM_HORIZON"),
            StartAt::Latest => f.write_str("LATEST"),
            StartAt::After(seq) => write!(f, "AFTER_SEQUENCE_NUMBER {seq}"),
            StartAt::At(seq) => write!(f, "AT_SEQUENCE_NUMBER {seq}"),
        }
    }
}

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new item.
    Insert,
    /// An item replaced or updated.
    Modify,
    /// An item deleted.
    Remove,
}

/// One change from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Position in the shard.
    pub seq: SeqNo,
    /// What happened.
    pub kind: EventKind,
    /// The item's key attributes.
    pub keys: Item,
    /// The item after the change (INSERT, MODIFY).
    pub new_image: Option<Item>,
    /// The item before the change (MODIFY, REMOVE).
    pub old_image: Option<Item>,
    /// When the change was made, epoch seconds, rounded down to the second by DynamoDB.
    pub created_at: Option<f64>,
    /// A deletion made by DynamoDB's TTL process (user identity `dynamodb.amazonaws.com`).
    pub by_ttl: bool,
}

/// One GetRecords answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The changes, in shard order.
    pub changes: Vec<Change>,
    /// The iterator for the next read; `None` once a closed shard has been read to its end.
    pub next: Option<String>,
}

/// A failed stream call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The iterator is older than 15 minutes: ask for a new one after the last applied record.
    #[error("the shard iterator expired")]
    ExpiredIterator,
    /// The position asked for is older than the stream's 24-hour retention: changes were lost.
    #[error("the position is beyond the trim horizon: {0}")]
    Trimmed(String),
    /// A record that cannot be decoded.
    #[error("undecodable stream record: {0}")]
    Decode(#[from] record::DecodeError),
    /// Any other AWS error, classified.
    #[error(transparent)]
    Aws(#[from] AwsFailure),
}

impl StreamError {
    /// Short, low-cardinality name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamError::ExpiredIterator => "expired_iterator",
            StreamError::Trimmed(_) => "trimmed",
            StreamError::Decode(_) => "decode",
            StreamError::Aws(failure) => failure.kind,
        }
    }
}

/// The stream of one source table, as the replicator uses it.
pub trait StreamSource: Send + Sync + 'static {
    /// Every shard of the stream (all pages of DescribeStream).
    fn shards(&self) -> impl Future<Output = Result<Vec<Shard>, StreamError>> + Send;
    /// The children of a shard that has ended (DescribeStream with a CHILD_SHARDS filter).
    fn children(
        &self,
        parent: &str,
    ) -> impl Future<Output = Result<Vec<Shard>, StreamError>> + Send;
    /// An iterator for `shard` starting at `at`.
    fn iterator(
        &self,
        shard: &str,
        at: &StartAt,
    ) -> impl Future<Output = Result<String, StreamError>> + Send;
    /// Up to `limit` records from `iterator`.
    fn read(
        &self,
        iterator: &str,
        limit: i32,
    ) -> impl Future<Output = Result<Page, StreamError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_numerically() {
        let a = SeqNo::parse("900000000000000000001").unwrap();
        let b = SeqNo::parse("1000000000000000000000").unwrap();
        assert!(a < b, "21 digits sort before 22 digits");
        assert_eq!(SeqNo::parse("000123"), SeqNo::parse("123"));
        assert!(SeqNo::parse("12a").is_none());
        assert!(SeqNo::parse("").is_none());
    }
}
