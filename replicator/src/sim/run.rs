//! One simulated run: set up the world, start the workers, write, inject faults, heal, wait until the
//! system is quiet, then check the properties.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tworegion_common::version::{Version, compare_writes};

use super::config::{SimConfig, Switches};
use super::rng::Rng;
use super::seams::{POISON, SimDeadLetters, SimLeases, SimSource, SimTarget};
use super::world::{Acknowledged, REGIONS, Shared, World, lock};
use crate::apply::plan::PlanContext;
use crate::apply::target::stored_version;
use crate::config::{Mode, StartPosition, Tuning};
use crate::dead_letter::MemoryDeadLetters;
use crate::item::Item;
use crate::lease::memory::MemoryLeases;
use crate::metrics::{Health, Metrics};
use crate::worker::Engine;

/// What the engine may do wrong on purpose, to show that the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    /// The real engine.
    #[default]
    None,
    /// Report every write as applied without waiting for it: checkpoints then pass unapplied data.
    AckBeforeWrite,
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Property violations; empty when the seed passed.
    pub violations: Vec<String>,
    /// Hash of the whole trace (same seed, same hash).
    pub trace_hash: u64,
    /// The trace, when asked for.
    pub trace: Vec<String>,
    /// Counters (writes, faults, conflicts, ...).
    pub stats: BTreeMap<&'static str, u64>,
    /// The drawn settings, for the report.
    pub config: String,
}

struct WorkerSlot {
    id: String,
    path: usize,
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

struct Paths {
    leases: [Arc<MemoryLeases>; 2],
    dead_letters: [Arc<MemoryDeadLetters>; 2],
    slots: Vec<WorkerSlot>,
    next_id: u64,
    dead_metrics: Vec<(usize, Arc<Metrics>)>,
}

fn tuning(config: &SimConfig) -> Tuning {
    Tuning {
        batch_size: 1000,
        max_in_flight: 16,
        shard_concurrency: 4,
        idle_poll: Duration::from_millis(500),
        reads_per_second: 5,
        checkpoint_interval: config.checkpoint_interval,
        max_buffered_records: config.max_buffered_records,
        shard_sync_interval: Duration::from_secs(5),
        lease_duration: Duration::from_secs(6),
        max_backoff: Duration::from_secs(1),
        shutdown_deadline: Duration::from_secs(20),
        aws_timeout: Duration::from_secs(5),
        tombstone_ttl: Duration::from_secs(2 * 86_400),
        stall_timeout: Duration::from_secs(60),
    }
}

fn paths_for(mode: Mode) -> Vec<usize> {
    match mode {
        Mode::OneWay => vec![0],
        Mode::Lww => vec![0, 1],
    }
}

/// A target that acknowledges before writing (the sabotaged variant): the write happens later, in the
/// background, so the engine checkpoints records that are not applied yet.
#[derive(Debug, Clone)]
struct EagerTarget(SimTarget);

impl crate::apply::target::TargetTable for EagerTarget {
    async fn write(
        &self,
        write: &crate::apply::target::Write,
    ) -> Result<crate::apply::target::Outcome, crate::error::AwsFailure> {
        let inner = self.0.clone();
        let write = write.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = crate::apply::target::TargetTable::write(&inner, &write).await;
        });
        Ok(crate::apply::target::Outcome::Applied)
    }
}

fn spawn_worker(world: &Shared, paths: &mut Paths, path: usize, sabotage: Sabotage) {
    paths.next_id += 1;
    let id = format!("w{}-{}", paths.next_id, REGIONS[1 - path]);
    let config = lock(world).config.clone();
    let metrics = Arc::new(Metrics::default());
    let tuning = tuning(&config);
    let stop = CancellationToken::new();
    let source = SimSource {
        world: world.clone(),
        region: path,
        worker: id.clone(),
    };
    let target = SimTarget {
        world: world.clone(),
        region: 1 - path,
        worker: id.clone(),
    };
    let leases = SimLeases {
        world: world.clone(),
        leases: paths.leases[path].clone(),
        source: path,
        worker: id.clone(),
    };
    let plan = PlanContext::new(
        config.mode,
        REGIONS[path],
        REGIONS[1 - path],
        lock(world).attributes.clone(),
    );
    macro_rules! engine {
        ($target:expr) => {
            Arc::new(Engine {
                source: Arc::new(source),
                target: Arc::new($target),
                leases: Arc::new(leases),
                plan,
                target_name: format!("{}/todos", REGIONS[1 - path]),
                worker_id: id.clone(),
                start_position: StartPosition::TrimHorizon,
                tuning: tuning.clone(),
                metrics: metrics.clone(),
                health: Arc::new(Health::new(tuning.lease_interval(), tuning.stall_timeout)),
                in_flight: Arc::new(Semaphore::new(tuning.max_in_flight)),
                buffered: Arc::new(Semaphore::new(tuning.max_buffered_records)),
                jitter_seed: AtomicU64::new(paths.next_id * 1_000_000),
                dead_letters: Some(Arc::new(SimDeadLetters {
                    world: world.clone(),
                    store: paths.dead_letters[path].clone(),
                    source: path,
                })),
            })
        };
    }
    let task = match sabotage {
        Sabotage::None => tokio::spawn(crate::coordinator::run(engine!(target), stop.clone())),
        Sabotage::AckBeforeWrite => tokio::spawn(crate::coordinator::run(
            engine!(EagerTarget(target)),
            stop.clone(),
        )),
    };
    let text = id.clone();
    lock(world).event(|| format!("start {text}"));
    paths.slots.push(WorkerSlot {
        id,
        path,
        stop,
        task,
        metrics,
    });
}

fn item(id: &str, text: String) -> Item {
    [
        ("id".to_owned(), AttributeValue::S(id.to_owned())),
        ("text".to_owned(), AttributeValue::S(text)),
    ]
    .into()
}

/// One workload write in `region`, made atomically (it models a conditional write that reads the
/// stored version and writes a newer one, as the sample app does).
fn workload_write(world: &mut World, region: usize, writer_clock: &mut u64) {
    let keys = world.config.keys;
    let key = format!("k{}", world.rng.below(keys));
    let op = world.rng.below(10);
    let attrs = world.attributes.clone();
    let current = world.regions[region].table.get(&key).cloned();
    let stored = current
        .as_ref()
        .and_then(|i| stored_version(i, &attrs))
        .map(|(v, _)| v.0)
        .unwrap_or(0);
    // The region's hybrid logical clock: its (skewed) wall clock, ahead of what it wrote and read.
    let wall = Version::from_millis(world.wall_millis(region)).0;
    *writer_clock = wall.max(*writer_clock + 1).max(stored + 1);
    let version = Version(*writer_clock);
    let origin = REGIONS[region].to_owned();
    let size = if world.rng.chance(0.05) { 30_000 } else { 20 };
    let poison = world.config.poison;
    let text = if poison > 0.0 && world.rng.chance(poison) {
        format!("{POISON} {origin} #{version}")
    } else {
        format!("{origin} #{version} {}", "x".repeat(size))
    };
    let (new, kind) = match op {
        // hard delete of an existing item
        0 if current.is_some() => (None, "hard-delete"),
        // soft delete: a tombstone
        1 | 2 if world.config.mode == Mode::Lww || current.is_some() => {
            let mut tomb = item(&key, String::new());
            tomb.insert(attrs.deleted.clone(), AttributeValue::Bool(true));
            tomb.insert(
                attrs.expires.clone(),
                AttributeValue::N("4102444800".into()),
            );
            (Some(tomb), "tombstone")
        }
        // update of an existing item: keeps its other attributes
        3..=5 if current.is_some() => {
            let mut updated = current.clone().unwrap_or_default();
            updated.insert("text".into(), AttributeValue::S(text));
            updated.remove(&attrs.deleted);
            updated.remove(&attrs.expires);
            (Some(updated), "update")
        }
        _ => (Some(item(&key, text)), "put"),
    };
    let new = new.map(|mut i| {
        i.insert(
            attrs.version.clone(),
            AttributeValue::N(version.to_string()),
        );
        i.insert(attrs.origin.clone(), AttributeValue::S(origin.clone()));
        i
    });
    let deleted_version = current
        .as_ref()
        .and_then(|i| stored_version(i, &attrs))
        .map(|(v, _)| v)
        .unwrap_or(Version(0));
    if world.commit(region, &key, new.clone(), false) {
        world.count("workload writes");
        let entry = match &new {
            Some(item) => Acknowledged {
                version,
                origin: origin.clone(),
                item: Some(item.clone()),
            },
            None => Acknowledged {
                version: deleted_version,
                origin: origin.clone(),
                item: None,
            },
        };
        world.history.entry(key.clone()).or_default().push(entry);
        world.event(|| format!("write {origin} {key} {kind} v{version}"));
    }
}

async fn writer(world: Shared, region: usize) {
    let mut clock = 0u64;
    loop {
        let gap = {
            let mut w = lock(&world);
            if w.now() >= w.config.write_for {
                return;
            }
            workload_write(&mut w, region, &mut clock);
            let (lo, hi) = w.config.write_gap;
            w.rng.millis(lo, hi)
        };
        tokio::time::sleep(gap).await;
    }
}

/// Faults over time: splits, trimming, crashes and restarts, stalls, an outage.
async fn chaos(
    world: Shared,
    paths: Arc<Mutex<Paths>>,
    stop: CancellationToken,
    sabotage: Sabotage,
) {
    let tick = Duration::from_millis(250);
    let mut next_split = [Duration::ZERO; 2];
    let mut next_crash = Duration::ZERO;
    let mut next_stall = Duration::ZERO;
    let mut restarts: Vec<(Duration, usize)> = Vec::new();
    let (outage_start, outage_end) = {
        let mut w = lock(&world);
        let start = w.rng.millis(2000, 8000);
        let end = start + w.config.retention + Duration::from_secs(10);
        (start, end)
    };
    let mut outage_on = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let mut w = lock(&world);
        let now = w.now();
        let config = w.config.clone();
        for (region, next) in next_split.iter_mut().enumerate() {
            w.trim(region);
            if let Some(every) = config.split_every {
                if next.is_zero() {
                    *next = now + w.rng.millis(0, every.as_millis() as u64 * 2);
                } else if now >= *next {
                    w.split(region);
                    *next = now
                        + w.rng.millis(
                            every.as_millis() as u64 / 2,
                            every.as_millis() as u64 * 3 / 2,
                        );
                }
            }
        }
        let mut p = paths.lock().unwrap_or_else(|e| e.into_inner());
        // An outage: every worker of path 0 is down for longer than the retention.
        // (It starts once replication has begun on every shard of the path: before that, the records
        // were never part of the replication, and trimming them loses nothing the replicator knew of.)
        let path_started = w.regions[0]
            .stream
            .shards
            .iter()
            .filter(|s| s.parent.is_none())
            .all(|s| w.started[0].contains_key(&s.id));
        if config.outage && !outage_on && now >= outage_start && now < outage_end && path_started {
            outage_on = true;
            let victims: Vec<usize> = (0..p.slots.len())
                .filter(|&i| p.slots[i].path == 0)
                .collect();
            for i in victims.into_iter().rev() {
                let slot = p.slots.remove(i);
                slot.task.abort();
                w.event(|| format!("outage: crash {}", slot.id));
                p.dead_metrics.push((slot.path, slot.metrics));
            }
            w.count("outages");
        }
        if outage_on && now >= outage_end {
            outage_on = false;
            let n = config.workers_per_path;
            drop(w);
            for _ in 0..n {
                spawn_worker(&world, &mut p, 0, sabotage);
            }
            w = lock(&world);
        }
        if let Some(every) = config.crash_every {
            if next_crash.is_zero() {
                next_crash = now + w.rng.millis(0, every.as_millis() as u64);
            } else if now >= next_crash && !p.slots.is_empty() {
                let i = w.rng.below(p.slots.len() as u64) as usize;
                let slot = p.slots.remove(i);
                slot.task.abort();
                w.count("crashes");
                w.event(|| format!("crash {}", slot.id));
                let back = now + w.rng.millis(0, 8000);
                restarts.push((back, slot.path));
                p.dead_metrics.push((slot.path, slot.metrics));
                next_crash = now
                    + w.rng.millis(
                        every.as_millis() as u64 / 2,
                        every.as_millis() as u64 * 3 / 2,
                    );
            }
        }
        if let Some(every) = config.stall_every {
            if next_stall.is_zero() {
                next_stall = now + w.rng.millis(0, every.as_millis() as u64);
            } else if now >= next_stall && !p.slots.is_empty() {
                let i = w.rng.below(p.slots.len() as u64) as usize;
                let id = p.slots[i].id.clone();
                let until = now + w.rng.millis(4000, 15_000);
                w.stalled_until.insert(id.clone(), until);
                w.count("stalls");
                w.event(|| format!("stall {id} until {until:?}"));
                next_stall = now
                    + w.rng.millis(
                        every.as_millis() as u64 / 2,
                        every.as_millis() as u64 * 3 / 2,
                    );
            }
        }
        let due: Vec<usize> = restarts
            .iter()
            .filter(|(at, path)| now >= *at && !(outage_on && *path == 0))
            .map(|(_, path)| *path)
            .collect();
        restarts.retain(|(at, path)| !(now >= *at && !(outage_on && *path == 0)));
        drop(w);
        for path in due {
            spawn_worker(&world, &mut p, path, sabotage);
        }
    }
}

/// What a key must hold at the end under last-writer-wins.
enum Expect {
    /// Exactly the highest `(version, origin)` put or tombstone.
    Highest(Option<Item>),
    /// The key saw a hard delete, which leaves no tombstone: a write made after it with a lower
    /// version (a region whose clock is behind) may rightly survive it. Then the regions must agree on
    /// one of the acknowledged items, or on nothing.
    AnyAcknowledged(Vec<Item>),
}

fn expected(history: &[Acknowledged]) -> Expect {
    if history.iter().any(|a| a.item.is_none()) {
        return Expect::AnyAcknowledged(history.iter().filter_map(|a| a.item.clone()).collect());
    }
    Expect::Highest(
        history
            .iter()
            .max_by(|a, b| compare_writes((a.version, &a.origin), (b.version, &b.origin)))
            .and_then(|a| a.item.clone()),
    )
}

fn quiet(
    world: &World,
    leases: &[Arc<MemoryLeases>; 2],
    mode: Mode,
    gaps_reported: [bool; 2],
) -> bool {
    for path in paths_for(mode) {
        let rows: BTreeMap<String, crate::lease::Lease> = leases[path]
            .rows()
            .into_iter()
            .map(|l| (l.shard.clone(), l))
            .collect();
        for shard in &world.regions[path].stream.shards {
            let Some(last) = shard.records.last().map(|r| &r.change.seq) else {
                continue;
            };
            if gaps_reported[path] && world.lost[path].iter().any(|l| l.starts_with(&shard.id)) {
                continue; // a reported gap stops this shard for good
            }
            // A lease deleted because its shard was finished and trimmed away was checked when its
            // checkpoints moved.
            let deleted = !rows.contains_key(&shard.id) && !world.listed(shard);
            let done = deleted
                || rows.get(&shard.id).is_some_and(|l| {
                    l.finished || l.checkpoint.as_ref().is_some_and(|c| c >= last)
                });
            if !done {
                return false;
            }
        }
    }
    true
}

async fn simulate(
    seed: u64,
    mode: Mode,
    switches: Switches,
    sabotage: Sabotage,
    trace: bool,
) -> SeedResult {
    let mut rng = Rng::new(seed);
    let config = SimConfig::draw(mode, switches, &mut rng);
    let summary = format!("{config:?}");
    let world: Shared = Arc::new(Mutex::new(World::new(config.clone(), seed, trace)));
    let paths = Arc::new(Mutex::new(Paths {
        leases: [
            Arc::new(MemoryLeases::default()),
            Arc::new(MemoryLeases::default()),
        ],
        dead_letters: [
            Arc::new(MemoryDeadLetters::default()),
            Arc::new(MemoryDeadLetters::default()),
        ],
        slots: Vec::new(),
        next_id: 0,
        dead_metrics: Vec::new(),
    }));
    {
        let mut p = paths.lock().unwrap_or_else(|e| e.into_inner());
        for path in paths_for(mode) {
            for _ in 0..config.workers_per_path {
                spawn_worker(&world, &mut p, path, sabotage);
            }
        }
    }
    let writers: Vec<JoinHandle<()>> = match mode {
        Mode::OneWay => vec![tokio::spawn(writer(world.clone(), 0))],
        Mode::Lww => vec![
            tokio::spawn(writer(world.clone(), 0)),
            tokio::spawn(writer(world.clone(), 1)),
        ],
    };
    let chaos_stop = CancellationToken::new();
    let chaos_task = tokio::spawn(chaos(
        world.clone(),
        paths.clone(),
        chaos_stop.clone(),
        sabotage,
    ));
    for w in writers {
        let _ = w.await;
    }
    // Faults go on for a while after the writes, then heal. An outage lasts its full length.
    let heal_at = {
        let w = lock(&world);
        w.now() + Duration::from_secs(5)
    };
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = lock(&world).now();
        let outage_running = {
            let p = paths.lock().unwrap_or_else(|e| e.into_inner());
            config.outage && !p.slots.iter().any(|s| s.path == 0)
        };
        if now >= heal_at && !outage_running {
            break;
        }
    }
    chaos_stop.cancel();
    let _ = chaos_task.await;
    {
        let mut w = lock(&world);
        w.healed = true;
        w.stalled_until.clear();
        w.event(|| "healed".to_owned());
    }
    {
        let mut p = paths.lock().unwrap_or_else(|e| e.into_inner());
        for path in paths_for(mode) {
            while p.slots.iter().filter(|s| s.path == path).count() < config.workers_per_path {
                spawn_worker(&world, &mut p, path, sabotage);
            }
        }
    }
    // Wait until every record of every stream is applied (or lost to a reported gap).
    let leases = paths
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .leases
        .clone();
    let mut settled = false;
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reported = {
            let p = paths.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<(usize, Arc<Metrics>)> = p
                .slots
                .iter()
                .map(|s| (s.path, s.metrics.clone()))
                .chain(p.dead_metrics.iter().cloned())
                .collect();
            [gaps(&all, 0) > 0, gaps(&all, 1) > 0]
        };
        let mut w = lock(&world);
        for region in 0..2 {
            w.trim(region);
        }
        if quiet(&w, &leases, mode, reported) {
            settled = true;
            break;
        }
    }
    // Stop every worker gracefully.
    let slots = std::mem::take(&mut paths.lock().unwrap_or_else(|e| e.into_inner()).slots);
    for slot in &slots {
        slot.stop.cancel();
    }
    let mut metrics: Vec<(usize, Arc<Metrics>)> = Vec::new();
    for slot in slots {
        if tokio::time::timeout(Duration::from_secs(30), slot.task)
            .await
            .is_err()
        {
            lock(&world).violation(format!(
                "{} did not stop within 30 s of being told to",
                slot.id
            ));
        }
        metrics.push((slot.path, slot.metrics));
    }
    metrics.extend(std::mem::take(
        &mut paths.lock().unwrap_or_else(|e| e.into_inner()).dead_metrics,
    ));

    let mut w = lock(&world);
    if !settled {
        let v = "the system did not go quiet within 600 s after healing (records left unapplied)"
            .to_owned();
        w.violation(v);
    }
    check(&mut w, mode, &metrics);
    SeedResult {
        seed,
        violations: w.violations.clone(),
        trace_hash: w.trace_hash,
        trace: w.trace.clone().unwrap_or_default(),
        stats: w.stats.clone(),
        config: summary,
    }
}

fn gaps(metrics: &[(usize, Arc<Metrics>)], path: usize) -> u64 {
    metrics
        .iter()
        .filter(|(p, _)| *p == path)
        .map(|(_, m)| m.gaps.get())
        .sum()
}

fn check(w: &mut World, mode: Mode, metrics: &[(usize, Arc<Metrics>)]) {
    let mut lost_any = false;
    for path in paths_for(mode) {
        let reported = gaps(metrics, path);
        if !w.lost[path].is_empty() {
            lost_any = true;
            if reported == 0 {
                let v = format!(
                    "records were trimmed before being applied on path {} -> {} ({:?}) and no gap was reported",
                    REGIONS[path],
                    REGIONS[1 - path],
                    w.lost[path].iter().take(3).collect::<Vec<_>>()
                );
                w.violation(v);
            } else {
                w.count("gaps reported");
            }
        } else if reported > 0 {
            let v = format!(
                "a gap was reported on path {} but no record was lost",
                REGIONS[path]
            );
            w.violation(v);
        }
    }
    if lost_any {
        return; // data was lost and reported: the tables cannot match
    }
    let (mut a, mut b) = (w.regions[0].table.clone(), w.regions[1].table.clone());
    // Keys whose current item (in either region) or highest acknowledged write is a poison record: the
    // target refused it for good, so the regions may rightly differ there, but only if it was parked
    // as a dead letter (nothing dropped silently). They are left out of the comparisons below.
    let is_poison = |item: Option<&Item>| matches!(item.and_then(|i| i.get("text")), Some(AttributeValue::S(t)) if t.starts_with(POISON));
    let mut poisoned: Vec<String> = a
        .iter()
        .chain(b.iter())
        .filter(|(_, item)| is_poison(Some(item)))
        .map(|(key, _)| key.clone())
        .collect();
    if mode == Mode::Lww {
        for (key, writes) in &w.history {
            if let Expect::Highest(item) = expected(writes)
                && is_poison(item.as_ref())
            {
                poisoned.push(key.clone());
            }
        }
    }
    poisoned.sort();
    poisoned.dedup();
    for key in &poisoned {
        let parked = w.dead_letters.iter().any(|d| d.values().any(|k| k == key));
        if !parked {
            w.violation(format!(
                "key {key} ends with a record the target refuses, which was neither applied nor parked as a dead letter"
            ));
        }
        a.remove(key);
        b.remove(key);
    }
    match mode {
        Mode::OneWay => {
            // What a reader that follows the convention sees: tombstones (the workload's soft deletes,
            // and those one-way deletes leave in the target) are absent; fencing tokens left out.
            let live = |t: BTreeMap<String, Item>| -> BTreeMap<String, Item> {
                crate::apply::target::live(
                    t.into_iter().collect::<std::collections::HashMap<_, _>>(),
                    &w.attributes,
                )
                .into_iter()
                .collect()
            };
            let (a, b) = (live(a), live(b));
            if a != b {
                let diff = diff_keys(&a, &b);
                w.violation(format!(
                    "one-way: target differs from source at keys {diff:?}"
                ));
            }
        }
        Mode::Lww => {
            if a != b {
                let diff = diff_keys(&a, &b);
                w.violation(format!("lww: the regions differ at keys {diff:?}"));
            }
            let history = w.history.clone();
            for (key, writes) in &history {
                if poisoned.contains(key) {
                    continue;
                }
                let want = match expected(writes) {
                    Expect::Highest(item) => item,
                    Expect::AnyAcknowledged(items) => {
                        let got = a.get(key);
                        if got.is_some_and(|g| !items.contains(g)) {
                            w.violation(format!(
                                "lww: key {key} holds an item that was never written"
                            ));
                        }
                        continue;
                    }
                };
                for (region, table) in [(0, &a), (1, &b)] {
                    if table.get(key) != want.as_ref() {
                        let got = table
                            .get(key)
                            .and_then(|i| stored_version(i, &w.attributes));
                        let want_v = want.as_ref().and_then(|i| stored_version(i, &w.attributes));
                        let v = format!(
                            "lww: {} holds {got:?} for key {key}, but its highest acknowledged write is {want_v:?}",
                            REGIONS[region]
                        );
                        w.violation(v);
                    }
                }
            }
        }
    }
}

fn diff_keys(a: &BTreeMap<String, Item>, b: &BTreeMap<String, Item>) -> Vec<String> {
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys.truncate(5);
    keys
}

/// Runs one seed on a fresh single-threaded runtime with a paused clock.
pub fn run_seed(
    seed: u64,
    mode: Mode,
    switches: Switches,
    sabotage: Sabotage,
    trace: bool,
) -> SeedResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(simulate(seed, mode, switches, sabotage, trace)),
        Err(error) => SeedResult {
            seed,
            violations: vec![format!("could not start a runtime: {error}")],
            trace_hash: 0,
            trace: Vec::new(),
            stats: BTreeMap::new(),
            config: String::new(),
        },
    }
}
