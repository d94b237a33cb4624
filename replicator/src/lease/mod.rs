//! Shard leases and checkpoints, shared by every worker of one path (source stream to target table).
//!
//! A lease row holds: owner (absent when free), counter (bumped by every successful change), expires
//! (the owner's wall clock + lease duration; informational), checkpoint (last applied sequence number),
//! parents (shards that must finish first), starting (the shard's first sequence number), started
//! (someone began reading it), finished (the shard was read to its end and applied), and handoff_to
//! (a worker that asked for the lease to balance load).
//!
//! Invariants:
//! - Every change is a conditional write on `owner` and `counter`: a worker that lost its lease can
//!   neither renew it nor move its checkpoint (fencing).
//! - A lease is taken over only when free, or when its counter has not moved for a whole lease duration
//!   as observed on the taker's own monotonic clock (no dependence on wall clocks agreeing).
//! - A worker stops applying a shard when it has not renewed the lease for longer than the lease
//!   duration minus a safety margin, before anyone else may take it.

pub mod dynamo;
pub mod memory;

use std::future::Future;

use crate::error::AwsFailure;
use crate::stream::SeqNo;

/// One shard's lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard ID.
    pub shard: String,
    /// The worker that holds it, if any.
    pub owner: Option<String>,
    /// Bumped by every successful change.
    pub counter: u64,
    /// Last applied sequence number.
    pub checkpoint: Option<SeqNo>,
    /// Shards that must be finished before this one starts.
    pub parents: Vec<String>,
    /// The shard's first sequence number, when the stream told it.
    pub starting: Option<SeqNo>,
    /// Some worker has started reading the shard (set by every checkpoint). A root shard starts at
    /// `--start-position latest` only when this is false; afterwards, without a checkpoint, it starts at
    /// the trim horizon, so records made before a restart are never skipped.
    pub started: bool,
    /// The shard was read to its end and everything in it applied.
    pub finished: bool,
    /// A worker that asked the owner to hand the lease over.
    pub handoff_to: Option<String>,
    /// The owner's wall-clock expiry in epoch milliseconds (for operators; takeover does not trust it).
    pub expires_ms: u64,
}

/// A failed lease operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// The condition failed: someone else changed the lease.
    #[error(
        "lease on shard {shard} lost (expected counter {counter}); another worker holds or changed it"
    )]
    Lost {
        /// The shard.
        shard: String,
        /// The counter we expected.
        counter: u64,
    },
    /// Any other AWS failure.
    #[error(transparent)]
    Aws(#[from] AwsFailure),
}

impl LeaseError {
    /// Short, low-cardinality name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::Lost { .. } => "lease_lost",
            LeaseError::Aws(f) => f.kind,
        }
    }
}

/// The lease table of one path.
pub trait LeaseStore: Send + Sync + 'static {
    /// Every lease of the path (consistent read).
    fn list(&self) -> impl Future<Output = Result<Vec<Lease>, LeaseError>> + Send;
    /// Creates a free lease for a new shard; `false` if it already exists. A lease created `finished`
    /// is never read (a shard closed before replication began at `--start-position latest`).
    fn create(
        &self,
        shard: &str,
        parents: &[String],
        starting: Option<&SeqNo>,
        finished: bool,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send;
    /// Takes `observed` for `worker` if its counter is still the one observed.
    fn take(
        &self,
        observed: &Lease,
        worker: &str,
        expires_ms: u64,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Renews a held lease.
    fn renew(
        &self,
        held: &Lease,
        expires_ms: u64,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Moves the checkpoint of a held lease (and marks it finished at the shard's end).
    fn checkpoint(
        &self,
        held: &Lease,
        seq: Option<&SeqNo>,
        finished: bool,
        expires_ms: u64,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Gives a held lease up so another worker can take it at once. A pending `handoff_to` stays, so
    /// the lease goes to the worker that asked for it.
    fn release(&self, held: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Refuses a pending hand-off request on a held lease (a halted shard stays with its owner, so
    /// nobody reads past its problem); the requester then asks for another lease.
    fn decline_handoff(
        &self,
        held: &Lease,
        expires_ms: u64,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Deletes a finished lease (its shard is gone from the stream), if it is still finished and free.
    fn delete_finished(
        &self,
        observed: &Lease,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// The next fencing token of the path: a number that every call returns higher than any before
    /// (gaps allowed), and higher than any token of an earlier path to the same target (the counter
    /// starts from the wall clock in milliseconds). A worker draws one before each take; one-way writes carry it and apply only over
    /// an item written with the same or a lower token, so a stale owner (paused past its lease, then
    /// woken) can never land an older image over a newer owner's writes.
    fn next_fence(&self) -> impl Future<Output = Result<u64, LeaseError>> + Send;
    /// Asks the owner of `observed` to hand it to `worker`.
    fn request_handoff(
        &self,
        observed: &Lease,
        worker: &str,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
}
