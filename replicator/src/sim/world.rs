//! The simulated world: two regions, each with a table and its stream (shards, lineage, trimming,
//! iterators), the faults in force, the history of acknowledged writes, and the checks that watch the
//! replicator while it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::time::Instant;
use tworegion_common::version::{Version, VersionAttributes};

use super::config::SimConfig;
use super::rng::{FNV_START, Rng, fnv};
use crate::item::Item;
use crate::stream::{Change, EventKind, SeqNo};

/// The regions, by index.
pub const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

/// Seconds since the Unix epoch at simulated time zero.
pub const EPOCH_SECS: u64 = 1_800_000_000;

/// Sequence numbers start here (21 digits, as on AWS).
const SEQ_BASE: u128 = 100_000_000_000_000_000_000;

/// One stream record and when it was made.
#[derive(Debug, Clone)]
pub struct Record {
    /// The change.
    pub change: Change,
    /// Simulated time of the write.
    pub made: Duration,
}

/// One shard of a simulated stream.
#[derive(Debug)]
pub struct ShardState {
    /// Shard ID.
    pub id: String,
    /// Parent shard ID.
    pub parent: Option<String>,
    /// First sequence number.
    pub starting: u128,
    /// Records; those before `trimmed` are gone.
    pub records: Vec<Record>,
    /// Count of records trimmed from the front.
    pub trimmed: usize,
    /// Closed: no more records.
    pub closed: bool,
    /// When it closed; a shard closed longer than the retention is no longer listed.
    pub closed_at: Option<Duration>,
    /// The key-hash range `[lo, hi)` this shard receives while open.
    pub range: (u64, u64),
}

/// An iterator handed out.
#[derive(Debug, Clone)]
pub struct IteratorState {
    /// Index of the shard.
    pub shard: usize,
    /// Next record index.
    pub position: usize,
    /// When it was handed out.
    pub created: Duration,
}

/// A region's stream.
#[derive(Debug, Default)]
pub struct StreamState {
    /// All shards ever opened, in order.
    pub shards: Vec<ShardState>,
    /// Last sequence number used.
    pub next_seq: u128,
    /// Live iterators.
    pub iterators: BTreeMap<String, IteratorState>,
    /// Iterator names issued.
    pub next_iterator: u64,
    /// Shard names issued.
    pub next_shard: u64,
}

/// One region.
#[derive(Debug, Default)]
pub struct RegionState {
    /// The table, by key (`id`).
    pub table: BTreeMap<String, Item>,
    /// Its stream.
    pub stream: StreamState,
}

/// One acknowledged write, as the workload made it.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    /// Its version (lww) or write number (one-way).
    pub version: Version,
    /// The region that accepted it.
    pub origin: String,
    /// The item written; `None` for a hard delete.
    pub item: Option<Item>,
}

/// A write to a target table by a replicator worker, for the checks.
#[derive(Debug, Clone)]
struct InFlight {
    worker: String,
    started: Duration,
    /// Its process froze after the lease check: it may overlap a newer owner's writes, which is why
    /// writes are conditional; it is left out of the one-writer check.
    frozen: bool,
}

/// Everything simulated. Shared by all tasks behind one mutex that is never held across an await.
#[derive(Debug)]
pub struct World {
    /// Settings and fault switches.
    pub config: SimConfig,
    /// The only randomness.
    pub rng: Rng,
    start: Instant,
    /// The two regions.
    pub regions: [RegionState; 2],
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// Acknowledged writes per key, in order.
    pub history: BTreeMap<String, Vec<Acknowledged>>,
    /// Property violations seen while running.
    pub violations: Vec<String>,
    /// Hash of every event, for determinism checks.
    pub trace_hash: u64,
    /// Events, when tracing.
    pub trace: Option<Vec<String>>,
    /// Faults are switched off (the heal phase).
    pub healed: bool,
    /// Per worker: lease calls hang until this time (a stalled process).
    pub stalled_until: BTreeMap<String, Duration>,
    /// Per path (source region): records trimmed before they were applied.
    pub lost: [Vec<String>; 2],
    /// Per (worker, shard, seq): when the record was last served to that worker.
    served: BTreeMap<(String, String, SeqNo), Duration>,
    /// Per (worker, region, key): when the latest settled write started.
    settled: BTreeMap<(String, usize, String), Duration>,
    /// Per (region, key): writes by replicator workers now in flight.
    in_flight: BTreeMap<(usize, String), Vec<InFlight>>,
    /// Per path: the checkpoint each shard's lease had, as the checks saw it.
    pub checkpoints: [BTreeMap<String, SeqNo>; 2],
    /// Per path: shards some worker began reading, with how many records were already trimmed then.
    pub started: [BTreeMap<String, usize>; 2],
    /// Counters for the summary.
    pub stats: BTreeMap<&'static str, u64>,
    /// Per path: records parked as dead letters, by (shard, seq), with their key.
    pub dead_letters: [BTreeMap<(String, SeqNo), String>; 2],
}

/// The shared world.
pub type Shared = Arc<Mutex<World>>;

/// Locks the world (a panic elsewhere does not hide it: the poisoned state is used as is).
pub fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hash of a key, which routes it to a shard.
pub fn key_hash(key: &str) -> u64 {
    fnv(key.as_bytes(), FNV_START)
}

impl World {
    /// A world for `config`, seeded with `seed`, starting now (on the paused clock).
    pub fn new(config: SimConfig, seed: u64, trace: bool) -> World {
        let mut world = World {
            config,
            rng: Rng::new(seed),
            start: Instant::now(),
            regions: [RegionState::default(), RegionState::default()],
            attributes: VersionAttributes::default(),
            history: BTreeMap::new(),
            violations: Vec::new(),
            trace_hash: FNV_START,
            trace: trace.then(Vec::new),
            healed: false,
            stalled_until: BTreeMap::new(),
            lost: [Vec::new(), Vec::new()],
            served: BTreeMap::new(),
            settled: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            checkpoints: [BTreeMap::new(), BTreeMap::new()],
            started: [BTreeMap::new(), BTreeMap::new()],
            stats: BTreeMap::new(),
            dead_letters: [BTreeMap::new(), BTreeMap::new()],
        };
        for region in 0..2 {
            let n = world.config.initial_shards.max(1) as u64;
            let width = u64::MAX / n;
            for i in 0..n {
                let hi = if i + 1 == n {
                    u64::MAX
                } else {
                    (i + 1) * width
                };
                world.open_shard(region, None, (i * width, hi));
            }
        }
        world
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records an event in the trace hash (and the trace, when on).
    pub fn event(&mut self, text: impl FnOnce() -> String) {
        let line = format!("{:>9.3} {}", self.now().as_secs_f64(), text());
        self.trace_hash = fnv(line.as_bytes(), self.trace_hash);
        self.trace_hash = fnv(b"\n", self.trace_hash);
        if let Some(trace) = &mut self.trace {
            trace.push(line);
        }
    }

    /// Counts something for the summary.
    pub fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// A property violation.
    pub fn violation(&mut self, text: String) {
        self.event(|| format!("VIOLATION {text}"));
        self.violations.push(text);
    }

    /// Wall-clock milliseconds in `region` now (with that region's clock skew).
    pub fn wall_millis(&self, region: usize) -> u64 {
        let base = EPOCH_SECS * 1000 + self.now().as_millis() as u64;
        if region == 1 {
            base.saturating_add_signed(self.config.skew_ms)
        } else {
            base
        }
    }

    fn open_shard(&mut self, region: usize, parent: Option<String>, range: (u64, u64)) -> String {
        let stream = &mut self.regions[region].stream;
        stream.next_shard += 1;
        let id = format!("shardId-{:05}-{}", stream.next_shard, REGIONS[region]);
        stream.shards.push(ShardState {
            id: id.clone(),
            parent,
            starting: SEQ_BASE + stream.next_seq + 1,
            records: Vec::new(),
            trimmed: 0,
            closed: false,
            closed_at: None,
            range,
        });
        id
    }

    /// Closes an open shard and opens one child (a rollover) or two (a split of its key range).
    pub fn split(&mut self, region: usize) {
        let open: Vec<usize> = (0..self.regions[region].stream.shards.len())
            .filter(|&i| !self.regions[region].stream.shards[i].closed)
            .collect();
        if open.is_empty() {
            return;
        }
        let index = open[self.rng.below(open.len() as u64) as usize];
        let two = self.rng.chance(0.5) && open.len() < 6;
        let now = self.now();
        let (id, (lo, hi)) = {
            let shard = &mut self.regions[region].stream.shards[index];
            shard.closed = true;
            shard.closed_at = Some(now);
            (shard.id.clone(), shard.range)
        };
        let children = if two {
            let mid = lo + (hi - lo) / 2;
            vec![
                self.open_shard(region, Some(id.clone()), (lo, mid)),
                self.open_shard(region, Some(id.clone()), (mid, hi)),
            ]
        } else {
            vec![self.open_shard(region, Some(id.clone()), (lo, hi))]
        };
        self.count("shard splits");
        self.event(|| format!("split {} {id} -> {children:?}", REGIONS[region]));
    }

    /// Drops records older than the retention; notes those lost: not yet applied (checkpointed) in a
    /// shard whose replication had begun (a child shard always counts: it is read from its first record).
    /// A root shard nobody had read yet is not replicated yet, so trimming it loses nothing.
    pub fn trim(&mut self, region: usize) {
        let now = self.now();
        let retention = self.config.retention;
        let mut lost = Vec::new();
        let checkpoints = &self.checkpoints[region];
        let started = &self.started[region];
        for shard in &mut self.regions[region].stream.shards {
            let replicating = shard.parent.is_some() || started.contains_key(&shard.id);
            while shard.trimmed < shard.records.len()
                && now.saturating_sub(shard.records[shard.trimmed].made) > retention
            {
                let seq = &shard.records[shard.trimmed].change.seq;
                if replicating && checkpoints.get(&shard.id).is_none_or(|cp| cp < seq) {
                    lost.push(format!("{} {seq}", shard.id));
                }
                shard.trimmed += 1;
            }
        }
        if !lost.is_empty() {
            self.event(|| format!("trimmed unapplied records in {}: {lost:?}", REGIONS[region]));
            self.lost[region].extend(lost);
        }
    }

    /// Writes `new` (or deletes, with `None`) for `key` in `region`'s table, and appends a stream record
    /// if the item changed. Returns whether it changed.
    pub fn commit(&mut self, region: usize, key: &str, new: Option<Item>, by_ttl: bool) -> bool {
        let old = self.regions[region].table.get(key).cloned();
        if old == new {
            return false; // DynamoDB emits no record for a write that changes nothing
        }
        let kind = match (&old, &new) {
            (None, _) => EventKind::Insert,
            (_, None) => EventKind::Remove,
            _ => EventKind::Modify,
        };
        match &new {
            Some(item) => self.regions[region]
                .table
                .insert(key.to_owned(), item.clone()),
            None => self.regions[region].table.remove(key),
        };
        let hash = key_hash(key);
        let made = self.now();
        let stream = &mut self.regions[region].stream;
        stream.next_seq += 1;
        let seq = SeqNo::from_u128(SEQ_BASE + stream.next_seq);
        let Some(shard) = stream.shards.iter_mut().find(|s| {
            !s.closed && s.range.0 <= hash && (hash < s.range.1 || s.range.1 == u64::MAX)
        }) else {
            self.violation(format!("model: no open shard for key {key}"));
            return true;
        };
        shard.records.push(Record {
            change: Change {
                seq,
                kind,
                keys: [("id".to_owned(), AttributeValue::S(key.to_owned()))].into(),
                new_image: new,
                old_image: old,
                created_at: Some((EPOCH_SECS + made.as_secs()) as f64),
                by_ttl,
            },
            made,
        });
        true
    }

    /// Whether DescribeStream still lists the shard: a closed shard disappears once it has been closed
    /// longer than the retention (all its records are trimmed by then).
    pub fn listed(&self, shard: &ShardState) -> bool {
        shard
            .closed_at
            .is_none_or(|at| self.now().saturating_sub(at) <= self.config.retention)
    }

    /// Notes that `worker` was served a record.
    pub fn served(&mut self, worker: &str, shard: &str, seq: &SeqNo) {
        let now = self.now();
        self.served
            .insert((worker.to_owned(), shard.to_owned(), seq.clone()), now);
    }

    /// A replicator write starts: at most one worker may be writing a key at a time (a key's records
    /// live in one shard lineage, which one worker at a time may apply).
    pub fn write_started(&mut self, worker: &str, region: usize, key: &str) -> Duration {
        let now = self.now();
        let list = self.in_flight.entry((region, key.to_owned())).or_default();
        if let Some(other) = list.iter().find(|w| w.worker != worker && !w.frozen) {
            let text = format!(
                "two workers apply key {key} in {} at once: {} (since {:?}) and {worker}",
                REGIONS[region], other.worker, other.started
            );
            self.violation(text);
        }
        self.in_flight
            .entry((region, key.to_owned()))
            .or_default()
            .push(InFlight {
                worker: worker.to_owned(),
                started: now,
                frozen: false,
            });
        now
    }

    /// The write started at `started` by `worker` froze (see [`InFlight::frozen`]).
    pub fn write_frozen(&mut self, worker: &str, region: usize, key: &str, started: Duration) {
        if let Some(w) = self
            .in_flight
            .get_mut(&(region, key.to_owned()))
            .and_then(|list| {
                list.iter_mut()
                    .find(|w| w.worker == worker && w.started == started)
            })
        {
            w.frozen = true;
        }
    }

    /// A replicator write ended; `settled` when it was applied or lost its condition.
    pub fn write_ended(
        &mut self,
        worker: &str,
        region: usize,
        key: &str,
        started: Duration,
        settled: bool,
    ) {
        if let Some(list) = self.in_flight.get_mut(&(region, key.to_owned()))
            && let Some(i) = list
                .iter()
                .position(|w| w.worker == worker && w.started == started)
        {
            list.remove(i);
        }
        if settled {
            let entry = self
                .settled
                .entry((worker.to_owned(), region, key.to_owned()))
                .or_insert(started);
            *entry = (*entry).max(started);
        }
    }

    /// Whether the lww rules skip this record when replicating out of `source`: a TTL deletion, a
    /// write that changed nothing, or an echo (origin the target region, stamp changed).
    pub fn skippable(&self, change: &Change, source: usize) -> bool {
        if self.config.mode != crate::config::Mode::Lww {
            return false;
        }
        if change.by_ttl {
            return true;
        }
        let image = match change.kind {
            EventKind::Remove => return false,
            _ => change.new_image.as_ref(),
        };
        if image.is_some() && image == change.old_image.as_ref() {
            return true;
        }
        let stamp = |i: Option<&Item>| {
            i.map(|i| {
                (
                    i.get(&self.attributes.version).cloned(),
                    i.get(&self.attributes.origin).cloned(),
                )
            })
        };
        let new = stamp(image);
        if new.as_ref().is_some_and(|(v, _)| v.is_some()) && new == stamp(change.old_image.as_ref())
        {
            return false; // a writer that does not stamp: replicated with a fresh version
        }
        matches!(image.and_then(|i| i.get(&self.attributes.origin)),
            Some(AttributeValue::S(origin)) if origin == REGIONS[1 - source])
    }

    /// A record of `shard` on path `source` was parked as a dead letter.
    pub fn parked(&mut self, source: usize, shard: &str, change: &Change) {
        let key = match change.keys.get("id") {
            Some(AttributeValue::S(id)) => id.clone(),
            _ => crate::item::key_string(&change.keys),
        };
        if self.dead_letters[source]
            .insert((shard.to_owned(), change.seq.clone()), key.clone())
            .is_none()
        {
            self.count("dead letters");
            self.event(|| {
                format!(
                    "dead letter {} {shard} {} {key}",
                    REGIONS[source], change.seq
                )
            });
        }
    }

    /// A lease change marked `shard` of path `source` as started (its first read is about to happen).
    pub fn shard_started(&mut self, source: usize, shard: &str) {
        if !self.started[source].contains_key(shard) {
            let trimmed = self.regions[source]
                .stream
                .shards
                .iter()
                .find(|s| s.id == shard)
                .map_or(0, |s| s.trimmed);
            self.started[source].insert(shard.to_owned(), trimmed);
        }
    }

    /// A checkpoint by `worker` on `shard` of path `source` moves to `seq`: every record it newly covers
    /// must have been applied by that worker after the worker read it (records of a root shard trimmed
    /// before anyone began reading it were never part of the replication).
    pub fn checkpoint_moved(&mut self, worker: &str, source: usize, shard: &str, seq: &SeqNo) {
        // A root shard's records trimmed before anyone began reading it were never part of the
        // replication; a child shard's always are (it is read from its first record).
        let is_child = self.regions[source]
            .stream
            .shards
            .iter()
            .any(|s| s.id == shard && s.parent.is_some());
        let before_start = if is_child {
            0
        } else {
            self.started[source].get(shard).copied().unwrap_or(0)
        };
        let previous = self.checkpoints[source].get(shard).cloned();
        let target = 1 - source;
        let mut problems = Vec::new();
        if let Some(state) = self.regions[source]
            .stream
            .shards
            .iter()
            .find(|s| s.id == shard)
        {
            for record in state.records.iter().skip(before_start) {
                let r = &record.change;
                if previous.as_ref().is_some_and(|p| &r.seq <= p) || &r.seq > seq {
                    continue;
                }
                if self.skippable(r, source)
                    || self.dead_letters[source].contains_key(&(shard.to_owned(), r.seq.clone()))
                {
                    continue;
                }
                let key = crate::item::key_string(&r.keys);
                let id = match r.keys.get("id") {
                    Some(AttributeValue::S(id)) => id.clone(),
                    _ => key.clone(),
                };
                let served = self
                    .served
                    .get(&(worker.to_owned(), shard.to_owned(), r.seq.clone()))
                    .copied();
                let settled = self
                    .settled
                    .get(&(worker.to_owned(), target, id.clone()))
                    .copied();
                let ok = matches!((served, settled), (Some(s), Some(w)) if w >= s);
                if !ok {
                    problems.push(format!(
                        "checkpoint by {worker} on {shard} to {seq} passes record {} (key {id}) that it has not applied (served {served:?}, settled write {settled:?})",
                        r.seq
                    ));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
        self.checkpoints[source].insert(shard.to_owned(), seq.clone());
    }
}
