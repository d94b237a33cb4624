//! The replicator's seams on the simulated world: a stream source, a target table and a lease store
//! for one worker, with latency, throttling, transient and ambiguous failures, and stalls.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use super::world::{REGIONS, Shared, lock};
use crate::apply::target::{Outcome, TargetTable, Write, condition_holds};
use crate::error::{AwsFailure, ErrorClass};
use crate::lease::memory::MemoryLeases;
use crate::lease::{Lease, LeaseError, LeaseStore};
use crate::stream::{Page, SeqNo, Shard, StartAt, StreamError, StreamSource};

fn throttled(code: &str) -> AwsFailure {
    AwsFailure {
        class: ErrorClass::Retryable,
        kind: "throttled",
        code: Some(code.to_owned()),
        message: format!("{code} (simulated)"),
        request_id: None,
    }
}

fn server_error() -> AwsFailure {
    AwsFailure {
        class: ErrorClass::Retryable,
        kind: "server",
        code: Some("InternalServerError".to_owned()),
        message: "HTTP 500 (simulated)".to_owned(),
        request_id: None,
    }
}

/// Whether the answer of a call that took effect is lost (a timeout or 5xx after the service applied
/// it): the caller cannot tell it from a failure before. Counted under `what`.
fn lose_answer(w: &mut super::world::World, what: &'static str) -> bool {
    if w.healed {
        return false;
    }
    let p = w.config.ambiguous_error;
    if w.rng.chance(p) {
        w.count(what);
        true
    } else {
        false
    }
}

/// Waits a latency drawn from the world: uniform in `range`, with a rare spike up to 800 ms.
async fn latency(world: &Shared, range: (u64, u64)) {
    let delay = {
        let mut w = lock(world);
        let mut delay = w.rng.millis(range.0, range.1);
        if w.rng.chance(0.01) {
            delay += w.rng.millis(100, 800);
        }
        delay
    };
    tokio::time::sleep(delay).await;
}

/// One worker's view of a source stream (in the other region: calls cross regions).
#[derive(Debug, Clone)]
pub struct SimSource {
    /// The world.
    pub world: Shared,
    /// The source region's index.
    pub region: usize,
    /// The worker, for the checks.
    pub worker: String,
}

impl SimSource {
    async fn call(&self) -> Result<(), StreamError> {
        let range = lock(&self.world).config.cross_latency;
        latency(&self.world, range).await;
        let mut w = lock(&self.world);
        if !w.healed {
            let (throttle, server) = (w.config.read_throttle, w.config.server_error);
            if w.rng.chance(throttle) {
                w.count("read throttles");
                return Err(StreamError::Aws(throttled("LimitExceededException")));
            }
            if w.rng.chance(server) {
                w.count("read 5xx");
                return Err(StreamError::Aws(server_error()));
            }
        }
        Ok(())
    }

    fn shard_list(&self) -> Vec<Shard> {
        let w = lock(&self.world);
        w.regions[self.region]
            .stream
            .shards
            .iter()
            .filter(|s| w.listed(s))
            .map(|s| Shard {
                id: s.id.clone(),
                parent: s.parent.clone(),
                starting: Some(SeqNo::from_u128(s.starting)),
                ending: s.closed.then(|| {
                    s.records
                        .last()
                        .map(|r| r.change.seq.clone())
                        .unwrap_or_else(|| SeqNo::from_u128(s.starting))
                }),
            })
            .collect()
    }
}

impl StreamSource for SimSource {
    async fn shards(&self) -> Result<Vec<Shard>, StreamError> {
        let shards = self.shard_list();
        let page = lock(&self.world).config.describe_page.max(1);
        // One DescribeStream call per page of shards.
        for _ in 0..shards.len().div_ceil(page).max(1) {
            self.call().await?;
        }
        Ok(shards)
    }

    async fn children(&self, parent: &str) -> Result<Vec<Shard>, StreamError> {
        self.call().await?;
        Ok(self
            .shard_list()
            .into_iter()
            .filter(|s| s.parent.as_deref() == Some(parent))
            .collect())
    }

    async fn iterator(&self, shard: &str, at: &StartAt) -> Result<String, StreamError> {
        self.call().await?;
        let mut w = lock(&self.world);
        let now = w.now();
        let retention = w.config.retention;
        let stream = &mut w.regions[self.region].stream;
        let Some(index) = stream.shards.iter().position(|s| s.id == shard) else {
            return Err(StreamError::Aws(AwsFailure::synthetic(
                ErrorClass::Fatal,
                "not_found",
                format!("no shard {shard}"),
            )));
        };
        let gone = {
            let s = &stream.shards[index];
            s.closed_at
                .is_some_and(|at| now.saturating_sub(at) > retention)
        };
        if gone {
            // As the AWS stream maps ResourceNotFound on a vanished shard: everything in it was trimmed.
            return Err(StreamError::Trimmed(format!(
                "shard {shard} is no longer in the stream"
            )));
        }
        let s = &stream.shards[index];
        let first_at_or_after = |pred: &dyn Fn(&SeqNo) -> bool| {
            s.records
                .iter()
                .position(|r| pred(&r.change.seq))
                .unwrap_or(s.records.len())
        };
        let position = match at {
            StartAt::TrimHorizon => s.trimmed,
            StartAt::Latest => s.records.len(),
            StartAt::After(seq) => first_at_or_after(&|r| r > seq),
            StartAt::At(seq) => first_at_or_after(&|r| r >= seq),
        };
        if position < s.trimmed {
            return Err(StreamError::Trimmed(format!(
                "TrimmedDataAccessException: shard {shard} at {at} is before the trim horizon"
            )));
        }
        stream.next_iterator += 1;
        let name = format!("iter-{}", stream.next_iterator);
        stream.iterators.insert(
            name.clone(),
            super::world::IteratorState {
                shard: index,
                position,
                created: now,
            },
        );
        Ok(name)
    }

    async fn read(&self, iterator: &str, limit: i32) -> Result<Page, StreamError> {
        self.call().await?;
        let mut w = lock(&self.world);
        let now = w.now();
        let ttl = w.config.iterator_ttl;
        let (records_limit, bytes_limit) = (w.config.records_limit, w.config.bytes_limit);
        let stream = &mut w.regions[self.region].stream;
        // An iterator can be used again until it expires (a retry after a lost answer reads the same
        // page), as GetRecords allows. Long-expired ones are forgotten.
        if let Some(ttl) = ttl {
            stream
                .iterators
                .retain(|_, c| now.saturating_sub(c.created) <= ttl * 2);
        }
        let Some(cursor) = stream.iterators.get(iterator).cloned() else {
            return Err(StreamError::ExpiredIterator);
        };
        if ttl.is_some_and(|ttl| now.saturating_sub(cursor.created) > ttl) {
            w.count("expired iterators");
            return Err(StreamError::ExpiredIterator);
        }
        let shard = &stream.shards[cursor.shard];
        if cursor.position < shard.trimmed {
            return Err(StreamError::Trimmed(format!(
                "TrimmedDataAccessException: shard {} position {} was trimmed",
                shard.id, cursor.position
            )));
        }
        let limit = usize::try_from(limit.max(1))
            .unwrap_or(1)
            .min(records_limit);
        let mut end = cursor.position;
        let mut bytes = 0;
        while end < shard.records.len() && end - cursor.position < limit {
            let size = approximate_size(&shard.records[end].change);
            if end > cursor.position && bytes + size > bytes_limit {
                break;
            }
            bytes += size;
            end += 1;
        }
        let changes: Vec<_> = shard.records[cursor.position..end]
            .iter()
            .map(|r| r.change.clone())
            .collect();
        let finished = shard.closed && end == shard.records.len();
        let shard_id = shard.id.clone();
        let next = if finished {
            None
        } else {
            stream.next_iterator += 1;
            let name = format!("iter-{}", stream.next_iterator);
            stream.iterators.insert(
                name.clone(),
                super::world::IteratorState {
                    shard: cursor.shard,
                    position: end,
                    created: now,
                },
            );
            Some(name)
        };
        for change in &changes {
            w.served(&self.worker, &shard_id, &change.seq);
        }
        let worker = self.worker.clone();
        let n = changes.len();
        if n > 0 {
            w.event(|| format!("{worker} read {n} from {shard_id}"));
        }
        if lose_answer(&mut w, "ambiguous reads") {
            return Err(StreamError::Aws(server_error()));
        }
        Ok(Page { changes, next })
    }
}

fn approximate_size(change: &crate::stream::Change) -> usize {
    let image = |i: &Option<crate::item::Item>| {
        i.as_ref().map_or(0, |item| {
            item.iter()
                .map(|(k, v)| {
                    k.len()
                        + match v {
                            AttributeValue::S(s) => s.len(),
                            _ => 8,
                        }
                })
                .sum()
        })
    };
    64 + image(&change.new_image) + image(&change.old_image)
}

/// One worker's view of its target table (in its own region).
#[derive(Debug, Clone)]
pub struct SimTarget {
    /// The world.
    pub world: Shared,
    /// The target region's index.
    pub region: usize,
    /// The worker.
    pub worker: String,
}

/// Items whose text starts with this are refused by every target for good (a poison record).
pub const POISON: &str = "POISON";

fn poisoned(write: &Write) -> bool {
    matches!(write, Write::Put { item, .. }
        if matches!(item.get("text"), Some(AttributeValue::S(t)) if t.starts_with(POISON)))
}

impl TargetTable for SimTarget {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        if poisoned(write) {
            let range = lock(&self.world).config.local_latency;
            latency(&self.world, range).await;
            lock(&self.world).count("refused writes");
            return Err(AwsFailure {
                class: ErrorClass::Fatal,
                kind: "validation",
                code: Some("ValidationException".to_owned()),
                message: "ValidationException: Item size has exceeded the maximum allowed size (simulated)"
                    .to_owned(),
                request_id: None,
            });
        }
        let key = match write {
            Write::Put { item, .. } => item.get("id"),
            Write::Delete { key, .. } => key.get("id"),
        };
        let Some(AttributeValue::S(key)) = key.cloned() else {
            return Err(AwsFailure::synthetic(
                ErrorClass::Fatal,
                "validation",
                "the item has no string key id",
            ));
        };
        let (started, range) = {
            let mut w = lock(&self.world);
            if !w.healed {
                let (throttle, server) = (w.config.write_throttle, w.config.server_error);
                if w.rng.chance(throttle) {
                    w.count("write throttles");
                    return Err(throttled("ProvisionedThroughputExceededException"));
                }
                if w.rng.chance(server) {
                    w.count("write 5xx");
                    return Err(server_error());
                }
            }
            (
                w.write_started(&self.worker, self.region, &key),
                w.config.local_latency,
            )
        };
        // The guard ends the write's in-flight record even if the worker is aborted mid-call.
        let guard = InFlightGuard {
            world: self.world.clone(),
            worker: self.worker.clone(),
            region: self.region,
            key: key.clone(),
            started,
            settled: false,
        };
        latency(&self.world, range).await;
        // A frozen process (a CPU-starved task, a GC-like pause) that had passed its lease check: the
        // write reaches the table only when the pause ends, perhaps long after the lease was taken over.
        let frozen = {
            let mut w = lock(&self.world);
            let now = w.now();
            let until = w.stalled_until.get(&self.worker).copied();
            match until.filter(|u| *u > now && w.config.freeze_writes) {
                Some(until) => {
                    w.count("frozen writes");
                    w.write_frozen(&self.worker, self.region, &key, started);
                    Some(until - now)
                }
                None => None,
            }
        };
        if let Some(pause) = frozen {
            tokio::time::sleep(pause).await;
        }
        let mut guard = guard;
        let mut w = lock(&self.world);
        let attributes = w.attributes.clone();
        let current = w.regions[self.region].table.get(&key).cloned();
        let (condition, new) = match write {
            Write::Put { item, condition } => (condition.as_ref(), Some(item.clone())),
            Write::Delete { condition, .. } => (condition.as_ref(), None),
        };
        let outcome = if condition_holds(condition, current.as_ref(), &attributes) {
            w.commit(self.region, &key, new, false);
            Outcome::Applied
        } else {
            w.count("conflicts");
            Outcome::Conflict
        };
        guard.settled = true;
        let worker = self.worker.clone();
        w.event(|| {
            format!(
                "{worker} wrote {key} in {}: {outcome:?}",
                REGIONS[self.region]
            )
        });
        let ambiguous = !w.healed && {
            let p = w.config.ambiguous_error;
            w.rng.chance(p)
        };
        drop(w);
        drop(guard);
        if ambiguous {
            lock(&self.world).count("ambiguous 5xx");
            return Err(server_error());
        }
        Ok(outcome)
    }
}

struct InFlightGuard {
    world: Shared,
    worker: String,
    region: usize,
    key: String,
    started: Duration,
    settled: bool,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.world).write_ended(
            &self.worker,
            self.region,
            &self.key,
            self.started,
            self.settled,
        );
    }
}

/// One worker's view of its path's lease table (in the target region).
#[derive(Debug, Clone)]
pub struct SimLeases {
    /// The world.
    pub world: Shared,
    /// The path's lease rows.
    pub leases: Arc<MemoryLeases>,
    /// The path's source region.
    pub source: usize,
    /// The worker.
    pub worker: String,
}

impl SimLeases {
    async fn call(&self) -> Result<(), LeaseError> {
        let (range, stalled) = {
            let w = lock(&self.world);
            let until = w.stalled_until.get(&self.worker).copied();
            (
                w.config.local_latency,
                until.map(|u| u.saturating_sub(w.now())),
            )
        };
        if let Some(stall) = stalled.filter(|d| !d.is_zero()) {
            tokio::time::sleep(stall).await;
        }
        latency(&self.world, range).await;
        let mut w = lock(&self.world);
        let p = w.config.server_error;
        if !w.healed && w.rng.chance(p) {
            return Err(LeaseError::Aws(server_error()));
        }
        Ok(())
    }

    fn note(&self, what: &str, shard: &str, result: &Result<Lease, LeaseError>) {
        let worker = self.worker.clone();
        let outcome = match result {
            Ok(lease) => format!("ok counter {}", lease.counter),
            Err(e) => format!("failed: {}", e.kind()),
        };
        let shard = shard.to_owned();
        let what = what.to_owned();
        lock(&self.world).event(|| format!("{worker} lease {what} {shard}: {outcome}"));
    }
}

impl SimLeases {
    /// The answer of a lease call that was applied, unless it is lost on the way back.
    fn answer<T>(&self, result: Result<T, LeaseError>) -> Result<T, LeaseError> {
        if result.is_ok() && lose_answer(&mut lock(&self.world), "ambiguous lease calls") {
            return Err(LeaseError::Aws(server_error()));
        }
        result
    }
}

impl LeaseStore for SimLeases {
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.call().await?;
        self.leases.list().await
    }

    async fn create(
        &self,
        shard: &str,
        parents: &[String],
        starting: Option<&SeqNo>,
        finished: bool,
    ) -> Result<bool, LeaseError> {
        self.call().await?;
        self.answer(self.leases.create(shard, parents, starting, finished).await)
    }

    async fn take(
        &self,
        observed: &Lease,
        worker: &str,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        self.call().await?;
        let result = self.leases.take(observed, worker, expires_ms).await;
        self.note("take", &observed.shard, &result);
        self.answer(result)
    }

    async fn renew(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        self.call().await?;
        let result = self.leases.renew(held, expires_ms).await;
        self.note("renew", &held.shard, &result);
        self.answer(result)
    }

    async fn checkpoint(
        &self,
        held: &Lease,
        seq: Option<&SeqNo>,
        finished: bool,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        self.call().await?;
        let result = self
            .leases
            .checkpoint(held, seq, finished, expires_ms)
            .await;
        if result.is_ok() {
            let mut w = lock(&self.world);
            w.shard_started(self.source, &held.shard);
            if let Some(seq) = seq {
                w.checkpoint_moved(&self.worker, self.source, &held.shard, seq);
            }
        }
        self.note("checkpoint", &held.shard, &result);
        self.answer(result)
    }

    async fn release(&self, held: &Lease) -> Result<(), LeaseError> {
        self.call().await?;
        let result = self.leases.release(held).await;
        self.note(
            "release",
            &held.shard,
            &result.clone().map(|()| held.clone()),
        );
        self.answer(result)
    }

    async fn decline_handoff(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        self.call().await?;
        self.answer(self.leases.decline_handoff(held, expires_ms).await)
    }

    async fn delete_finished(&self, observed: &Lease) -> Result<(), LeaseError> {
        self.call().await?;
        let result = self.leases.delete_finished(observed).await;
        if result.is_ok() {
            lock(&self.world).count("finished leases deleted");
        }
        self.answer(result)
    }

    async fn next_fence(&self) -> Result<u64, LeaseError> {
        self.call().await?;
        self.answer(self.leases.next_fence().await)
    }

    async fn request_handoff(&self, observed: &Lease, worker: &str) -> Result<(), LeaseError> {
        self.call().await?;
        self.answer(self.leases.request_handoff(observed, worker).await)
    }
}

/// One path's dead letters, noting in the world which records were parked (they count as settled for
/// the checkpoint check).
#[derive(Debug)]
pub struct SimDeadLetters {
    /// The world.
    pub world: Shared,
    /// The path's parked records.
    pub store: Arc<crate::dead_letter::MemoryDeadLetters>,
    /// The path's source region.
    pub source: usize,
}

impl crate::dead_letter::DeadLetterSink for SimDeadLetters {
    fn park<'a>(
        &'a self,
        letter: &'a crate::dead_letter::DeadLetter,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AwsFailure>> + Send + 'a>>
    {
        Box::pin(async move {
            let range = lock(&self.world).config.local_latency;
            latency(&self.world, range).await;
            {
                let mut w = lock(&self.world);
                let p = w.config.server_error;
                if !w.healed && w.rng.chance(p) {
                    return Err(server_error());
                }
                w.parked(self.source, &letter.shard, &letter.change);
            }
            self.store.park(letter).await
        })
    }
}
