//! Dead letters: stream records that the target refuses for good (an item over 400 KB once stamped, a
//! key or index attribute of the wrong type, a version that is not a number). Under the default policy
//! (`--on-refused-record dead-letter`) such a record is parked, with its error and its position, in a
//! DynamoDB table of its own, counted in `replicator_dead_letters_total`, logged at ERROR, and the shard
//! goes on; `replicator dlq list | replay | purge` manages them. Under `--on-refused-record stop` the
//! shard stops before the record instead, as it always did before.
//!
//! Only refusals that concern the record itself are parked (`ValidationException`, a record that
//! cannot be planned). A missing table or missing permissions concern every record: the shard stops.
//!
//! # Layout
//! - this file: [`DeadLetter`], the [`DeadLetterSink`] seam and the in-memory sink.
//! - `dynamo`: the dead-letter table (created on demand), listing, replay and purge.

pub mod dynamo;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::error::AwsFailure;
use crate::stream::Change;

/// A parked record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The shard it was read from.
    pub shard: String,
    /// The record (its sequence number is its position in the shard).
    pub change: Change,
    /// Why the target refused it (`Code: message`).
    pub error: String,
    /// The service's error code, if any.
    pub code: Option<String>,
    /// The service's request ID, if any.
    pub request_id: Option<String>,
    /// The worker that parked it.
    pub worker: String,
    /// When, in epoch milliseconds.
    pub at_ms: u64,
    /// The images were too large to keep beside the error (the dead-letter row has the same 400 KB limit
    /// as any item): only the key and the position are kept.
    pub images_omitted: bool,
}

impl DeadLetter {
    /// The row's sort key: shard and sequence number, unique per record.
    pub fn id(&self) -> String {
        format!("{}#{}", self.shard, self.change.seq)
    }
}

/// Where refused records are parked.
pub trait DeadLetterSink: Send + Sync + std::fmt::Debug {
    /// Parks one record. Retryable failures are the caller's to retry; a fatal one stops the shard.
    fn park<'a>(
        &'a self,
        letter: &'a DeadLetter,
    ) -> Pin<Box<dyn Future<Output = Result<(), AwsFailure>> + Send + 'a>>;
}

/// An in-memory sink, for tests and the simulator.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    /// Everything parked so far.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn park<'a>(
        &'a self,
        letter: &'a DeadLetter,
    ) -> Pin<Box<dyn Future<Output = Result<(), AwsFailure>> + Send + 'a>> {
        Box::pin(async move {
            let mut letters = self.letters.lock().unwrap_or_else(|p| p.into_inner());
            // Parking is idempotent by id (a retried batch parks the same record again).
            if !letters.iter().any(|l| l.id() == letter.id()) {
                letters.push(letter.clone());
            }
            Ok(())
        })
    }
}

/// Whether a failed write is the record's own problem (parked) rather than the table's or the
/// account's (the shard stops).
pub fn refused_for_good(failure: &AwsFailure) -> bool {
    failure.kind == "validation"
}
