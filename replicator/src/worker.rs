//! One shard, read and applied by the worker that holds its lease.
//!
//! ```text
//! start = checkpoint ? AFTER(checkpoint) : (root ? --start-position : TRIM_HORIZON)
//! loop until told to stop:
//!     read the next page (at most --reads-per-second; after empty pages, a pause that doubles up to --idle-poll)
//!         while the previous page applies: one page ahead, no more
//!         expired -> re-seek AFTER(last applied); trimmed -> gap, stop shard
//!     plan = last write per key, skips     a record that cannot be planned -> dead letter or stop shard
//!     apply writes concurrently (bounded), retry retryable failures; a fatal one -> stop shard
//!     checkpoint the watermark (every record up to it settled), fenced by the lease counter, at most
//!         every --checkpoint-interval, and always when stopping
//!     no next iterator -> shard ended: create the children's leases, checkpoint finished, exit
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::plan::PlanContext;
use crate::apply::retry::{GaveUp, RetryPolicy};
use crate::apply::target::{Outcome, TargetTable};
use crate::apply::watermark::Watermark;
use crate::config::{StartPosition, Tuning};
use crate::dead_letter::{DeadLetter, DeadLetterSink, refused_for_good};
use crate::error::{AwsFailure, ErrorClass};
use crate::lease::{Lease, LeaseError, LeaseStore};
use crate::metrics::{Health, Metrics};
use crate::stream::{Change, SeqNo, StartAt, StreamError, StreamSource};

/// What the workers of one process share.
pub struct Engine<S, T, L> {
    /// The source stream.
    pub source: Arc<S>,
    /// The target table.
    pub target: Arc<T>,
    /// The lease table.
    pub leases: Arc<L>,
    /// How changes become writes.
    pub plan: PlanContext,
    /// The target table's name, for logs.
    pub target_name: String,
    /// This worker.
    pub worker_id: String,
    /// Where new root shards start.
    pub start_position: StartPosition,
    /// Knobs.
    pub tuning: Tuning,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Writes in flight over all shards.
    pub in_flight: Arc<Semaphore>,
    /// Records read but not applied yet, over all shards (`--max-buffered-records`).
    pub buffered: Arc<Semaphore>,
    /// Seeds retry jitter.
    pub jitter_seed: AtomicU64,
    /// Where records the target refuses for good are parked; `None`: the shard stops instead
    /// (`--on-refused-record stop`).
    pub dead_letters: Option<Arc<dyn DeadLetterSink>>,
}

/// The pause after the `failures`-th failed stream call in a row: 200 ms doubling up to `max` (the
/// `--max-backoff`), each between half and all of that, jittered by `seed` so shards throttled
/// together spread out. Reads are one attempt each, so this is what eases off a throttled shard
/// (DynamoDB Streams allows 5 reads a second per shard, shared by every reader).
pub fn stream_pause(failures: u32, max: Duration, seed: u64) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max.max(Duration::from_millis(200)));
    // A well-mixed fraction from the seed.
    let thousandths =
        u32::try_from(tworegion_common::mix::splitmix64(&mut { seed }) % 1_000).unwrap_or(0);
    base / 2 + base / 2 * thousandths / 1_000
}

/// The smallest page a read asks for when many shards share `--max-buffered-records`: 5 reads a second
/// of it, 1,000 records/s, is what one partition (and so one stream shard) can be written at.
pub const MIN_PAGE: usize = 200;

/// The records one read asks for when `shards` shards are reading records: the shard's share of
/// `--max-buffered-records`, at least [`MIN_PAGE`], at most `--batch-size` and never more than the
/// whole bound.
pub fn page_limit(tuning: &Tuning, shards: usize) -> u32 {
    let share = (tuning.max_buffered_records / shards.max(1)).max(MIN_PAGE);
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    u32::try_from(tuning.batch_size.max(1))
        .unwrap_or(1)
        .min(to_u32(share))
        .min(to_u32(tuning.max_buffered_records.max(1)))
}

/// A lease this worker holds, shared by the shard task (checkpoints) and the lease loop (renewals).
#[derive(Debug)]
pub struct Held {
    lease: Mutex<Lease>,
    renewed_at: std::sync::Mutex<Instant>,
    /// The fencing token drawn for this take (one-way writes carry it); 0 when none was drawn.
    pub fence: u64,
    /// Cancelled to make the shard task stop reading (shutdown, hand-off, lease lost).
    pub stop: CancellationToken,
}

impl Held {
    /// A freshly taken lease.
    pub fn new(lease: Lease, stop: CancellationToken, renewed_at: Instant) -> Held {
        Held {
            lease: Mutex::new(lease),
            renewed_at: std::sync::Mutex::new(renewed_at),
            fence: 0,
            stop,
        }
    }

    /// The same, with the fencing token drawn before the take.
    pub fn with_fence(mut self, fence: u64) -> Held {
        self.fence = fence;
        self
    }

    /// A copy of the lease as last written.
    pub async fn lease(&self) -> Lease {
        self.lease.lock().await.clone()
    }

    /// True while the last renewal is recent enough that no other worker may have taken the lease:
    /// younger than three quarters of the lease duration.
    pub fn valid(&self, duration: Duration) -> bool {
        self.renewed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < duration * 3 / 4
    }

    /// Applies a conditional change to the lease under its lock, keeping the new counter.
    pub async fn change<F, Fut>(&self, op: F) -> Result<Lease, LeaseError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: std::future::Future<Output = Result<Lease, LeaseError>>,
    {
        let mut lease = self.lease.lock().await;
        let sent_at = Instant::now();
        let result = op(lease.clone()).await;
        match &result {
            Ok(updated) => {
                *lease = updated.clone();
                *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = sent_at;
            }
            Err(LeaseError::Lost { .. }) => self.stop.cancel(),
            Err(_) => {}
        }
        result
    }
}

/// How parking refused records went.
enum Parked {
    /// Every record is in the dead-letter table.
    Yes,
    /// Told to stop first.
    Stopped,
    /// The dead-letter table refused for good: stop the shard.
    Failed,
}

/// How a shard task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// Read to its end and applied; children's leases exist.
    Finished,
    /// Told to stop (shutdown or hand-off); the checkpoint covers everything applied.
    Stopped,
    /// The lease was lost to another worker.
    LeaseLost,
    /// A gap or a record that cannot be applied: the shard stays stopped until an operator acts.
    Halted,
}

/// Where a shard task starts reading:
/// - after the checkpoint, if there is one;
/// - a root shard nobody has read before: `--start-position`;
/// - a child shard, or a root shard read before without a checkpoint (crash, hand-off, expired
///   iterator): AT its first sequence number, so that records trimmed there are a reported gap rather
///   than skipped (the trim horizon when the stream did not give the first sequence number).
pub fn start_position(lease: &Lease, configured: StartPosition) -> StartAt {
    match (
        &lease.checkpoint,
        lease.parents.is_empty() && !lease.started,
        &lease.starting,
    ) {
        (Some(seq), _, _) => StartAt::After(seq.clone()),
        (None, true, _) => match configured {
            StartPosition::TrimHorizon => StartAt::TrimHorizon,
            StartPosition::Latest => StartAt::Latest,
        },
        (None, false, Some(first)) => StartAt::At(first.clone()),
        (None, false, None) => StartAt::TrimHorizon,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    tworegion_common::version::system_millis()
}

impl<S: StreamSource, T: TargetTable, L: LeaseStore> Engine<S, T, L> {
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_millis(50),
            max: self.tuning.max_backoff,
        }
    }

    fn expires(&self) -> u64 {
        now_millis() + u64::try_from(self.tuning.lease_duration.as_millis()).unwrap_or(u64::MAX)
    }

    fn halt(&self) -> ShardExit {
        self.metrics.shards_stopped.inc();
        self.health.shard_stopped();
        ShardExit::Halted
    }

    async fn checkpoint(
        &self,
        held: &Held,
        seq: Option<&SeqNo>,
        finished: bool,
    ) -> Result<bool, ShardExit> {
        let expires = self.expires();
        let result = held
            .change(
                |lease| async move { self.leases.checkpoint(&lease, seq, finished, expires).await },
            )
            .await;
        match result {
            Ok(_) => {
                self.metrics.checkpoints.inc();
                Ok(true)
            }
            Err(LeaseError::Lost { shard, .. }) => {
                self.metrics.lease_change("lost");
                tracing::warn!(shard_id = %shard, "Lease lost; this worker stops the shard.");
                Err(ShardExit::LeaseLost)
            }
            Err(error) => {
                // The caller keeps it and tries again; nothing is lost by waiting (only replayed).
                self.metrics.error(error.kind());
                tracing::warn!(error = %error, "Checkpoint failed; retrying.");
                Ok(false)
            }
        }
    }

    /// Marks the lease started before the first read, retrying until it is written: reading without
    /// the mark could let a later owner start at LATEST again and skip records.
    async fn mark_started(&self, held: &Held) -> Result<(), ShardExit> {
        loop {
            if held.stop.is_cancelled() {
                return Err(ShardExit::Stopped);
            }
            let expires = self.expires();
            let result = held
                .change(|lease| async move {
                    self.leases.checkpoint(&lease, None, false, expires).await
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(LeaseError::Lost { shard, .. }) => {
                    self.metrics.lease_change("lost");
                    tracing::warn!(shard_id = %shard, "Lease lost before the first read.");
                    return Err(ShardExit::LeaseLost);
                }
                Err(error) => {
                    self.metrics.error(error.kind());
                    tracing::warn!(error = %error, "Marking the lease started failed; retrying.");
                    tokio::select! {
                        biased;
                        _ = held.stop.cancelled() => return Err(ShardExit::Stopped),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    async fn seek(
        &self,
        shard: &str,
        at: &StartAt,
        stop: &CancellationToken,
    ) -> Result<String, ShardExit> {
        // Failures in a row, for the backoff.
        let mut failures: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return Err(ShardExit::Stopped);
            }
            match self.source.iterator(shard, at).await {
                Ok(iterator) => return Ok(iterator),
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if let Some(exit) = self.stream_failure(shard, at, &error, failures, stop).await
                    {
                        return Err(exit);
                    }
                }
            }
        }
    }

    /// The pause after the `failures`-th failed stream call in a row ([`stream_pause`]).
    fn stream_backoff(&self, failures: u32) -> Duration {
        let seed = self.jitter_seed.fetch_add(1, Ordering::Relaxed);
        stream_pause(failures, self.tuning.max_backoff, seed)
    }

    /// Handles a failed stream call: `None` to try again (after a pause), or how the shard ends.
    async fn stream_failure(
        &self,
        shard: &str,
        at: &StartAt,
        error: &StreamError,
        failures: u32,
        stop: &CancellationToken,
    ) -> Option<ShardExit> {
        self.metrics.error(error.kind());
        match error {
            StreamError::Trimmed(detail) => {
                self.metrics.gaps.inc();
                tracing::error!(
                    shard_id = %shard, from = %at, error = %detail,
                    "Trimmed gap: records after this position were removed from the stream before they \
                     were replicated. The shard is stopped; see docs/replicator.md (Gaps) to resume."
                );
                Some(self.halt())
            }
            StreamError::Decode(detail) => {
                tracing::error!(shard_id = %shard, from = %at, error = %detail, "Undecodable stream record; the shard is stopped.");
                Some(self.halt())
            }
            StreamError::Aws(failure) if failure.class == ErrorClass::Fatal => {
                tracing::error!(shard_id = %shard, error = %failure, "Reading the stream failed; the shard is stopped.");
                Some(self.halt())
            }
            StreamError::ExpiredIterator | StreamError::Aws(_) => {
                let pause = self.stream_backoff(failures);
                tracing::warn!(shard_id = %shard, error = %error, failures, pause = ?pause, "Stream read failed; retrying.");
                tokio::select! {
                biased;
                    _ = stop.cancelled() => Some(ShardExit::Stopped),
                    _ = tokio::time::sleep(pause) => None,
                }
            }
        }
    }

    /// Reads and applies one shard until it ends or the worker is told to stop.
    ///
    /// The next page is read while the current one applies (one page ahead, no more), reads are paced
    /// to `--reads-per-second`, and the checkpoint is written at most every `--checkpoint-interval`
    /// while records flow, and always on the way out (stop, hand-off, shard end, halt).
    pub async fn run_shard(&self, held: Arc<Held>) -> ShardExit {
        let lease = held.lease().await;
        let shard = lease.shard.clone();
        let stop = held.stop.clone();
        let start = start_position(&lease, self.start_position);
        tracing::info!(shard_id = %shard, from = %start, "Shard started.");
        // Progress for /healthz and the lag gauge, for as long as this task lives.
        let progress = self.health.track(&shard);
        if lease.checkpoint.is_none() && !lease.started {
            // Record that reading began, so a restart or hand-off before the first checkpoint starts at
            // the shard's first record instead of skipping records (at LATEST) or a trim (at the horizon).
            if let Err(exit) = self.mark_started(&held).await {
                return exit;
            }
        }
        let iterator = match self.seek(&shard, &start, &stop).await {
            Ok(it) => it,
            Err(exit) => return exit,
        };
        // Applied but not yet checkpointed (paced, or a write that failed transiently).
        let mut unsaved: Option<SeqNo> = None;
        let exit = self
            .read_and_apply(&held, &lease, &progress, iterator, &mut unsaved)
            .await;
        if matches!(exit, ShardExit::Stopped | ShardExit::Halted)
            && let Some(seq) = unsaved
        {
            // Stopping (shutdown, hand-off) or halted: the checkpoint covers everything applied, so
            // the next owner replays nothing and a halted shard's checkpoint sits at its problem. A few
            // tries; past them the next owner replays (harmless: every write is conditional).
            progress.doing("writing the last checkpoint");
            for attempt in 0..3 {
                match self.checkpoint(&held, Some(&seq), false).await {
                    Ok(true) => break,
                    Ok(false) if attempt < 2 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(false) => {}
                    // Lost meanwhile: a halted shard is someone else's to report now.
                    Err(lost) => return lost,
                }
            }
        }
        exit
    }

    /// The shortest time between two reads of one shard (`--reads-per-second`).
    fn read_interval(&self) -> Duration {
        Duration::from_secs(1) / self.tuning.reads_per_second.max(1)
    }

    /// One read of the shard, no sooner than `next_read_at` (then moved one pacing interval on);
    /// `None` when there is nothing to read or the worker was told to stop.
    async fn paced_read(
        &self,
        iterator: Option<&str>,
        next_read_at: &mut Instant,
        stop: &CancellationToken,
        busy: bool,
    ) -> Option<Result<(crate::stream::Page, OwnedSemaphorePermit), StreamError>> {
        let iterator = iterator?;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep_until(*next_read_at) => {}
        }
        // Room for a whole page among the records buffered over all shards, held until the page is
        // applied: memory stays bounded however many shards this worker holds. The page is this
        // shard's share of the bound among the shards reading records (idle ones hold none of it
        // between reads): with many busy shards, smaller responses are in flight at once, which is
        // what the process's peak memory follows (docs/BENCHMARKS.md).
        let sharing = self.health.busy_shards() + usize::from(!busy);
        let room = page_limit(&self.tuning, sharing);
        let mut permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            permit = self.buffered.clone().acquire_many_owned(room) => permit.ok()?,
        };
        *next_read_at = Instant::now() + self.read_interval();
        // A read has no side effects: abandoning it when told to stop loses nothing.
        let page = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            page = self.source.read(iterator, i32::try_from(room).unwrap_or(i32::MAX)) => page,
        };
        Some(page.map(|page| {
            // Give back the room the page did not use.
            let unused = (room as usize).saturating_sub(page.changes.len());
            if unused > 0 && unused < room as usize {
                drop(permit.split(unused));
            }
            (page, permit)
        }))
    }

    async fn read_and_apply(
        &self,
        held: &Held,
        lease: &Lease,
        progress: &crate::metrics::ShardTracker,
        iterator: String,
        unsaved: &mut Option<SeqNo>,
    ) -> ShardExit {
        let shard = lease.shard.clone();
        let stop = held.stop.clone();
        // The last record applied (the watermark): where an expired iterator is sought again.
        let mut last = lease.checkpoint.clone();
        // Where to read again while there is no checkpoint yet (expired iterator): as if the shard had
        // been read before, never LATEST again (that would skip what was written since the first read).
        let restart = start_position(
            &Lease {
                started: true,
                ..lease.clone()
            },
            self.start_position,
        );
        // The next read (`None` once the shard has ended), the page read but not applied yet, and the
        // pacing of reads and checkpoints.
        let mut iterator = Some(iterator);
        let mut current: Option<(crate::stream::Page, OwnedSemaphorePermit)> = None;
        let mut next_read_at = Instant::now();
        let mut saved_at = Instant::now();
        // The last read found nothing new: write what is unsaved now rather than after the idle pause.
        let mut caught_up = false;
        // Empty reads in a row (the pause after one grows with them), and failed stream calls in a
        // row (the backoff grows with them).
        let mut empty_reads: u32 = 0;
        let mut failed_reads: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return ShardExit::Stopped;
            }
            if let Some(seq) = unsaved.clone()
                && (caught_up || saved_at.elapsed() >= self.tuning.checkpoint_interval)
            {
                progress.doing("writing the checkpoint");
                match self.checkpoint(held, Some(&seq), false).await {
                    Ok(true) => {
                        *unsaved = None;
                        saved_at = Instant::now();
                        // The read-ahead page, if any, is what is unapplied now.
                        progress.checkpointed(
                            current
                                .as_ref()
                                .and_then(|(p, _)| p.changes.first())
                                .and_then(|c| c.created_at),
                        );
                    }
                    Ok(false) => {}
                    Err(exit) => return exit,
                }
            }
            if !held.valid(self.tuning.lease_duration) {
                // Not renewed recently: another worker may take over soon, so apply nothing.
                progress.doing("waiting for the lease to be renewed");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return ShardExit::Stopped,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
            let read = self.paced_read(iterator.as_deref(), &mut next_read_at, &stop, !caught_up);
            let (applied, read) = match current.take() {
                Some((page, room)) => {
                    progress.doing("applying writes");
                    let apply = async {
                        let applied = self.apply_batch(&shard, &page.changes, held).await;
                        // The page's room is free as soon as it is applied, so the read beside it
                        // (and other shards' reads) never wait on a page that is done.
                        drop(room);
                        applied
                    };
                    let (applied, read) = tokio::join!(apply, read);
                    (Some((page, applied)), read)
                }
                None => {
                    progress.doing("reading the stream");
                    (None, read.await)
                }
            };
            if let Some((page, (applied_to, halted))) = applied {
                if let Some(seq) = applied_to {
                    *unsaved = Some(seq.clone());
                    last = Some(seq);
                }
                if halted {
                    // run_shard writes what was applied before the halt.
                    return self.halt();
                }
                if last.as_ref() != page.changes.last().map(|c| &c.seq) {
                    // Told to stop mid-batch: the last checkpoint covers what was applied.
                    return ShardExit::Stopped;
                }
            }
            match read {
                None => {}
                Some(Ok((page, room))) => {
                    failed_reads = 0;
                    iterator = page.next.clone();
                    caught_up = page.changes.is_empty();
                    if caught_up {
                        progress.caught_up();
                        // Nothing new: wait longer before the next read, doubling from the pacing
                        // interval up to --idle-poll with each empty read in a row, so one empty
                        // read while records trickle costs little lag and an idle shard costs few
                        // reads.
                        empty_reads = empty_reads.saturating_add(1);
                        let pause = self
                            .read_interval()
                            .saturating_mul(1 << empty_reads.min(16))
                            .min(self.tuning.idle_poll);
                        next_read_at = next_read_at.max(Instant::now() + pause);
                    } else {
                        empty_reads = 0;
                        progress.pending(page.changes.first().and_then(|c| c.created_at));
                        self.metrics.records_read.inc_by(page.changes.len() as u64);
                        current = Some((page, room));
                    }
                }
                Some(Err(StreamError::ExpiredIterator)) => {
                    self.metrics.error("expired_iterator");
                    let at = last
                        .clone()
                        .map(StartAt::After)
                        .unwrap_or_else(|| restart.clone());
                    tracing::info!(shard_id = %shard, from = %at, "Iterator expired; seeking again.");
                    match self.seek(&shard, &at, &stop).await {
                        Ok(it) => iterator = Some(it),
                        Err(exit) => return exit,
                    }
                }
                Some(Err(error)) => {
                    let at = last
                        .clone()
                        .map(StartAt::After)
                        .unwrap_or_else(|| restart.clone());
                    failed_reads = failed_reads.saturating_add(1);
                    if let Some(exit) = self
                        .stream_failure(&shard, &at, &error, failed_reads, &stop)
                        .await
                    {
                        return exit;
                    }
                }
            }
            if iterator.is_none() && current.is_none() {
                return self.end_shard(held, &shard, last.as_ref()).await;
            }
        }
    }

    async fn end_shard(&self, held: &Held, shard: &str, last: Option<&SeqNo>) -> ShardExit {
        // The children's leases first, then the "finished" mark that lets them start: a crash between
        // the two leaves the parent unfinished (it is read to its end again, which costs one empty read),
        // never a finished parent whose children have no lease and would later be found without it.
        let stop = held.stop.clone();
        'children: loop {
            let failure = match self.source.children(shard).await {
                Ok(children) => {
                    let mut created_all = true;
                    for child in children {
                        if let Err(error) = self
                            .leases
                            .create(
                                &child.id,
                                &[shard.to_owned()],
                                child.starting.as_ref(),
                                false,
                            )
                            .await
                        {
                            self.metrics.error(error.kind());
                            tracing::warn!(shard_id = %child.id, error = %error, "Could not create a child lease; retrying.");
                            created_all = false;
                            break;
                        }
                    }
                    if created_all {
                        break 'children;
                    }
                    None
                }
                Err(error) => Some(error),
            };
            if let Some(error) = failure {
                self.metrics.error(error.kind());
                tracing::warn!(shard_id = %shard, error = %error, "Listing child shards failed; retrying.");
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return ShardExit::Stopped,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        // The "finished" mark lets the children start: write it, however long that takes.
        loop {
            match self.checkpoint(held, last, true).await {
                Ok(true) => break,
                Ok(false) => {
                    tokio::select! {
                        biased;
                        _ = held.stop.cancelled() => return ShardExit::Stopped,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                Err(exit) => return exit,
            }
        }
        tracing::info!(shard_id = %shard, "Shard ended and fully applied.");
        ShardExit::Finished
    }

    /// Parks refused records in the dead-letter table (retrying until it works, the worker is told to
    /// stop, or the table refuses for good).
    async fn park(
        &self,
        shard: &str,
        records: &[&Change],
        failure: &AwsFailure,
        stop: &CancellationToken,
    ) -> Parked {
        let Some(sink) = &self.dead_letters else {
            return Parked::Failed;
        };
        let retry = self.retry();
        for change in records {
            let letter = DeadLetter {
                shard: shard.to_owned(),
                change: (*change).clone(),
                error: failure.message.clone(),
                code: failure.code.clone(),
                request_id: failure.request_id.clone(),
                worker: self.worker_id.clone(),
                at_ms: now_millis(),
                images_omitted: false,
            };
            let seed = self.jitter_seed.fetch_add(1, Ordering::Relaxed);
            let result = retry
                .run(
                    stop,
                    seed,
                    |f| self.metrics.error(f.kind),
                    || sink.park(&letter),
                )
                .await;
            match result {
                Ok(()) => {
                    self.metrics.dead_letters.inc();
                    tracing::error!(
                        shard_id = %shard, table = %self.target_name, key = %crate::item::key_string(&change.keys),
                        seq = %change.seq, error = %failure, code = ?failure.code, request_id = ?failure.request_id,
                        "The target refused a record for good; it is parked in the dead-letter table and the shard goes on (replicator dlq list)."
                    );
                }
                Err(GaveUp::Stopped) => return Parked::Stopped,
                Err(GaveUp::Fatal(parking)) => {
                    self.metrics.error(parking.kind);
                    tracing::error!(
                        shard_id = %shard, table = %self.target_name, key = %crate::item::key_string(&change.keys),
                        seq = %change.seq, error = %failure, parking_error = %parking,
                        "The target refused a record and it could not be parked; the shard is stopped."
                    );
                    return Parked::Failed;
                }
            }
        }
        Parked::Yes
    }

    /// Applies a batch. Returns the new watermark (if it moved) and whether the shard must halt.
    pub async fn apply_batch(
        &self,
        shard: &str,
        changes: &[Change],
        held: &Held,
    ) -> (Option<SeqNo>, bool) {
        let stop = &held.stop;
        let lease_duration = self.tuning.lease_duration;
        let mut watermark = Watermark::new(changes.iter().map(|c| c.seq.clone()).collect());
        let plan = self.plan.plan_all(changes);
        if !plan.refused.is_empty() {
            self.metrics.error("unappliable_record");
            if self.dead_letters.is_none() {
                let (_, error) = &plan.refused[0];
                tracing::error!(
                    shard_id = %shard, table = %self.target_name, key = %error.key, seq = %error.seq,
                    error = %error.problem, "A record cannot be applied; the shard is stopped (--on-refused-record stop)."
                );
                return (None, true);
            }
            for (index, error) in &plan.refused {
                let parked = self
                    .park(
                        shard,
                        &[&changes[*index]],
                        &AwsFailure::synthetic(
                            ErrorClass::Fatal,
                            "unappliable_record",
                            error.problem.clone(),
                        ),
                        stop,
                    )
                    .await;
                match parked {
                    Parked::Yes => watermark.settle(&[*index]),
                    Parked::Stopped => return (watermark.advance(), false),
                    Parked::Failed => return (watermark.advance(), true),
                }
            }
        }
        for (index, reason) in &plan.skipped {
            self.metrics
                .records_skipped
                .get_or_create(&[("reason", reason.label())])
                .inc();
            watermark.settle(&[*index]);
        }
        if plan.unversioned > 0 {
            self.metrics.unversioned.inc_by(plan.unversioned as u64);
        }
        if plan.restamped > 0 {
            self.metrics.restamped.inc_by(plan.restamped as u64);
        }
        let batch_stop = stop.child_token();
        let retry = self.retry();
        let mut planned_writes = plan.writes;
        if self.plan.mode == crate::config::Mode::OneWay {
            // Fenced by the lease owner's token: a stale owner's late write never lands over a newer
            // owner's, and a delete leaves a tombstone so such a write cannot bring the item back.
            let expires = now_millis() / 1000 + self.tuning.tombstone_ttl.as_secs();
            for planned in &mut planned_writes {
                for write in planned
                    .before
                    .iter_mut()
                    .chain(std::iter::once(&mut planned.write))
                {
                    *write = crate::apply::plan::fenced(
                        write,
                        held.fence,
                        &self.plan.attributes,
                        expires,
                    );
                }
            }
        }
        let writes = futures::stream::iter(planned_writes)
            .map(|planned| {
                let batch_stop = batch_stop.clone();
                let seed = self.jitter_seed.fetch_add(1, Ordering::Relaxed);
                async move {
                    if batch_stop.is_cancelled() {
                        return (planned, Err(GaveUp::Stopped));
                    }
                    // A key's chain is applied in order; each write is retried on its own.
                    let mut result = Err(GaveUp::Stopped);
                    for write in planned.before.iter().chain(std::iter::once(&planned.write)) {
                        result = retry
                            .run(
                                &batch_stop,
                                seed,
                                |f| self.metrics.error(f.kind),
                                || {
                                    let batch_stop = batch_stop.clone();
                                    async move {
                                        // The process-wide write permit is held for the call
                                        // only, never through a backoff pause; waiting for it
                                        // ends when the batch is told to stop.
                                        let permit = tokio::select! {
                                            biased;
                                            _ = batch_stop.cancelled() => None,
                                            permit = self.in_flight.acquire() => permit.ok(),
                                        };
                                        let Some(_permit) = permit else {
                                            return Err(AwsFailure::synthetic(
                                                ErrorClass::Retryable,
                                                "stopping",
                                                "stopping before the write was sent",
                                            ));
                                        };
                                        // Every attempt, retries included, needs a recently
                                        // renewed lease, checked once the permit is held: past
                                        // that, another worker may already own the shard.
                                        if !held.valid(lease_duration) {
                                            return Err(AwsFailure::synthetic(
                                                ErrorClass::Retryable,
                                                "lease_not_renewed",
                                                "the lease was not renewed recently; waiting",
                                            ));
                                        }
                                        self.target.write(write).await
                                    }
                                },
                            )
                            .await;
                        if result.is_err() {
                            break;
                        }
                    }
                    (planned, result)
                }
            })
            .buffer_unordered(self.tuning.shard_concurrency);
        tokio::pin!(writes);
        let mut halted = false;
        let mut newest_version_millis = None;
        while let Some((planned, result)) = writes.next().await {
            match result {
                Ok(outcome) => {
                    if outcome == Outcome::Conflict {
                        // The target already holds something newer: these records are settled.
                        self.metrics.conflicts.inc();
                        self.metrics
                            .records_skipped
                            .get_or_create(&[("reason", "conflict")])
                            .inc_by(planned.covers.len() as u64);
                    } else {
                        self.metrics
                            .records_applied
                            .inc_by(planned.covers.len() as u64);
                    }
                    newest_version_millis = newest_version_millis.max(planned.version_millis);
                    watermark.settle(&planned.covers);
                }
                Err(GaveUp::Stopped) => {}
                Err(GaveUp::Fatal(failure)) => {
                    self.metrics.error(failure.kind);
                    if self.dead_letters.is_some() && refused_for_good(&failure) {
                        // The record's own problem: park every record the refused write covers, and go on.
                        let covered: Vec<&Change> =
                            planned.covers.iter().map(|&i| &changes[i]).collect();
                        match self.park(shard, &covered, &failure, stop).await {
                            Parked::Yes => {
                                watermark.settle(&planned.covers);
                                continue;
                            }
                            Parked::Stopped => {
                                batch_stop.cancel();
                                continue;
                            }
                            Parked::Failed => {}
                        }
                    } else {
                        tracing::error!(
                            shard_id = %shard, table = %self.target_name, key = %planned.key,
                            error = %failure, code = ?failure.code, request_id = ?failure.request_id,
                            "A write failed for good; the shard is stopped until an operator acts."
                        );
                    }
                    halted = true;
                    batch_stop.cancel();
                }
            }
        }
        let now = now_millis();
        if let Some(created) = changes.last().and_then(|c| c.created_at) {
            let lag = (now as f64 / 1000.0 - created).max(0.0);
            self.metrics
                .lag
                .get_or_create(&[("source", "stream")])
                .observe(lag);
        }
        if let Some(millis) = newest_version_millis {
            let lag = now.saturating_sub(millis) as f64 / 1000.0;
            self.metrics
                .lag
                .get_or_create(&[("source", "version")])
                .observe(lag);
        }
        (watermark.advance(), halted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_shrink_to_each_shards_share_of_the_buffer_bound() {
        let tuning = Tuning::default(); // --batch-size 1000, --max-buffered-records 4000
        assert_eq!(page_limit(&tuning, 0), 1000);
        assert_eq!(page_limit(&tuning, 1), 1000);
        assert_eq!(page_limit(&tuning, 4), 1000);
        assert_eq!(page_limit(&tuning, 10), 400);
        assert_eq!(page_limit(&tuning, 16), 250);
        assert_eq!(page_limit(&tuning, 64), 200, "never below MIN_PAGE");
        let small = Tuning {
            batch_size: 50,
            ..Tuning::default()
        };
        assert_eq!(page_limit(&small, 1000), 50, "never above --batch-size");
        let tight = Tuning {
            max_buffered_records: 40,
            ..Tuning::default()
        };
        assert_eq!(page_limit(&tight, 64), 40, "never above the whole bound");
    }

    #[test]
    fn failed_stream_calls_back_off_exponentially_with_jitter_up_to_the_maximum() {
        let max = Duration::from_secs(5);
        let ms = Duration::from_millis;
        for seed in 0..200 {
            for (failures, base) in [
                (1, ms(200)),
                (2, ms(400)),
                (3, ms(800)),
                (6, ms(5_000)),
                (60, ms(5_000)),
            ] {
                let pause = stream_pause(failures, max, seed);
                assert!(pause >= base / 2 && pause <= base, "{failures}: {pause:?}");
            }
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|seed| stream_pause(3, max, seed)).collect();
        assert!(spread.len() > 40, "jittered: {spread:?}");
    }
}
