//! The replicator engine driven in-process against its in-memory models: `MemoryStream` (shards,
//! splits, trimming, iterator expiry), `MemoryTarget` (conditional writes) and `MemoryLeases`
//! (conditional lease rows). No AWS, no network.
//!
//! Every test runs on a current-thread runtime with a paused tokio clock (`start_paused`, needs
//! tokio's `test-util` feature): time advances only when every task is idle, so lease intervals, idle
//! polls and backoffs cost no wall-clock time, and every wait is bounded by a `tokio::time::timeout`
//! on that clock. A task that spins without ever yielding would starve those timeouts, so each test
//! also runs on its own thread under a real-time watchdog ([`model_test`]). Assertions are on
//! outcomes: target items, lease rows, rendered metrics, `ShardExit` values, readiness.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use replicator::apply::plan::PlanContext;
use replicator::apply::target::{MemoryTarget, Outcome, TargetTable, Write};
use replicator::config::{Mode, StartPosition, Tuning};
use replicator::coordinator;
use replicator::dead_letter::MemoryDeadLetters;
use replicator::error::{AwsFailure, ErrorClass};
use replicator::item::{Item, key_string};
use replicator::lease::memory::MemoryLeases;
use replicator::lease::{Lease, LeaseStore};
use replicator::metrics::{Health, Metrics};
use replicator::stream::memory::MemoryStream;
use replicator::stream::{EventKind, SeqNo};
use replicator::worker::{Engine, Held, ShardExit};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tworegion_common::version::VersionAttributes;

/// Longest wait for any condition (on the paused clock).
const WAIT: Duration = Duration::from_secs(20);
/// Longest real time a whole test may take (they take milliseconds).
const HANG: Duration = Duration::from_secs(60);
const SOURCE_REGION: &str = "us-east-1";
const OTHER_REGION: &str = "us-west-2";

type Eng<T> = Engine<MemoryStream, T, MemoryLeases>;

// ---------------------------------------------------------------------------------------------
// Items and stream records
// ---------------------------------------------------------------------------------------------

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(id: &str) -> Item {
    [("id".to_owned(), s(id))].into()
}

fn item(id: &str, text: &str) -> Item {
    [("id".to_owned(), s(id)), ("text".to_owned(), s(text))].into()
}

fn lww_item(id: &str, text: &str, version: u64, origin: &str) -> Item {
    let mut i = item(id, text);
    i.insert("rep_version".to_owned(), n(version));
    i.insert("rep_origin".to_owned(), s(origin));
    i
}

fn put(stream: &MemoryStream, shard: &str, id: &str, text: &str) -> SeqNo {
    stream.append(
        shard,
        EventKind::Insert,
        key(id),
        Some(item(id, text)),
        None,
    )
}

fn update(stream: &MemoryStream, shard: &str, id: &str, old: &str, text: &str) -> SeqNo {
    stream.append(
        shard,
        EventKind::Modify,
        key(id),
        Some(item(id, text)),
        Some(item(id, old)),
    )
}

fn delete(stream: &MemoryStream, shard: &str, id: &str, old: &str) -> SeqNo {
    stream.append(shard, EventKind::Remove, key(id), None, Some(item(id, old)))
}

/// The target state `(id, text)` pairs describe, keyed like `MemoryTarget::items`.
fn state(pairs: &[(&str, &str)]) -> HashMap<String, Item> {
    pairs
        .iter()
        .map(|(id, text)| (key_string(&key(id)), item(id, text)))
        .collect()
}

fn text_of(items: &HashMap<String, Item>, id: &str) -> Option<String> {
    match items.get(&key_string(&key(id)))?.get("text")? {
        AttributeValue::S(t) => Some(t.clone()),
        other => panic!("text of {id} is {other:?}"),
    }
}

/// The `id` a write is about.
fn write_id(write: &Write) -> String {
    let attrs = match write {
        Write::Put { item, .. } => item,
        Write::Delete { key, .. } => key,
    };
    match attrs.get("id") {
        Some(AttributeValue::S(id)) => id.clone(),
        other => panic!("write without a string id: {other:?}"),
    }
}

fn write_text(write: &Write) -> Option<String> {
    match write {
        Write::Put { item, .. } => match item.get("text") {
            Some(AttributeValue::S(t)) => Some(t.clone()),
            _ => None,
        },
        Write::Delete { .. } => None,
    }
}

// ---------------------------------------------------------------------------------------------
// A target wrapper: logs every write in order, injects failures
// ---------------------------------------------------------------------------------------------

/// One write as the wrapper saw it. `started`/`ended` come from one counter shared by all writes, so
/// `a.ended < b.started` means `a` finished before `b` began.
#[derive(Debug, Clone)]
struct WriteEvent {
    id: String,
    text: Option<String>,
    started: usize,
    ended: usize,
    result: Result<Outcome, &'static str>,
}

/// Delegates to a `MemoryTarget`; fails writes of `fatal_id` with a fatal `validation` error and the
/// first `retryable` writes (of any key) with a retryable `throttled` error.
#[derive(Debug)]
struct ModelTarget {
    inner: MemoryTarget,
    fatal_id: Option<String>,
    retryable: AtomicUsize,
    clock: AtomicUsize,
    log: Mutex<Vec<WriteEvent>>,
}

impl ModelTarget {
    fn new() -> ModelTarget {
        ModelTarget {
            inner: MemoryTarget::new(&["id"], VersionAttributes::default()),
            fatal_id: None,
            retryable: AtomicUsize::new(0),
            clock: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        }
    }

    fn failing_on(id: &str) -> ModelTarget {
        ModelTarget {
            fatal_id: Some(id.to_owned()),
            ..ModelTarget::new()
        }
    }

    fn throttling_first(count: usize) -> ModelTarget {
        ModelTarget {
            retryable: AtomicUsize::new(count),
            ..ModelTarget::new()
        }
    }

    fn log(&self) -> Vec<WriteEvent> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn live_items(&self) -> HashMap<String, Item> {
        self.inner.live_items()
    }
}

impl TargetTable for ModelTarget {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        let started = self.clock.fetch_add(1, Ordering::SeqCst);
        let id = write_id(write);
        let throttled = self
            .retryable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        let result = if throttled {
            Err(AwsFailure::synthetic(
                ErrorClass::Retryable,
                "throttled",
                "injected: slow down",
            ))
        } else if self.fatal_id.as_deref() == Some(id.as_str()) {
            Err(AwsFailure::synthetic(
                ErrorClass::Fatal,
                "validation",
                format!("injected: item {id} is invalid"),
            ))
        } else {
            self.inner.write(write).await
        };
        let ended = self.clock.fetch_add(1, Ordering::SeqCst);
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(WriteEvent {
                id,
                text: write_text(write),
                started,
                ended,
                result: result.as_ref().map(|o| *o).map_err(|f| f.kind),
            });
        result
    }
}

// ---------------------------------------------------------------------------------------------
// Engines, coordinators, waiting, metrics
// ---------------------------------------------------------------------------------------------

fn tuning() -> Tuning {
    Tuning {
        batch_size: 100,
        max_in_flight: 16,
        shard_concurrency: 4,
        idle_poll: Duration::from_millis(10),
        reads_per_second: 5,
        checkpoint_interval: Duration::from_secs(1),
        max_buffered_records: 10_000,
        shard_sync_interval: Duration::from_millis(50),
        lease_duration: Duration::from_secs(1),
        max_backoff: Duration::from_millis(50),
        shutdown_deadline: Duration::from_secs(5),
        aws_timeout: Duration::from_secs(5),
        tombstone_ttl: Duration::from_secs(2 * 86_400),
        stall_timeout: Duration::from_secs(60),
    }
}

fn engine<T: TargetTable>(
    worker: &str,
    mode: Mode,
    tuning: Tuning,
    stream: &Arc<MemoryStream>,
    target: &Arc<T>,
    leases: &Arc<MemoryLeases>,
) -> Arc<Eng<T>> {
    engine_from(
        worker,
        mode,
        StartPosition::TrimHorizon,
        tuning,
        stream,
        target,
        leases,
    )
}

fn engine_from<T: TargetTable>(
    worker: &str,
    mode: Mode,
    start_position: StartPosition,
    tuning: Tuning,
    stream: &Arc<MemoryStream>,
    target: &Arc<T>,
    leases: &Arc<MemoryLeases>,
) -> Arc<Eng<T>> {
    Arc::new(Engine {
        source: stream.clone(),
        target: target.clone(),
        leases: leases.clone(),
        plan: PlanContext::new(
            mode,
            SOURCE_REGION,
            OTHER_REGION,
            VersionAttributes::default(),
        ),
        target_name: "us-west-2/model".to_owned(),
        worker_id: worker.to_owned(),
        start_position,
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::new(tuning.lease_interval(), tuning.stall_timeout)),
        in_flight: Arc::new(Semaphore::new(tuning.max_in_flight)),
        buffered: Arc::new(Semaphore::new(tuning.max_buffered_records)),
        jitter_seed: AtomicU64::new(7),
        // The stop policy unless a test parks refused records (`with_dead_letters`).
        dead_letters: None,
        tuning,
    })
}

/// Runs a test body on its own thread, on a current-thread runtime whose clock starts paused, and
/// fails the test if the body has not finished within [`HANG`] of real time.
fn model_test<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let name = std::thread::current()
        .name()
        .unwrap_or("model test")
        .to_owned();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a tokio runtime");
            runtime.block_on(body());
            let _ = done_tx.send(());
        })
        .expect("a test thread");
    match done_rx.recv_timeout(HANG) {
        Ok(()) => thread.join().expect("the test thread ends"),
        Err(RecvTimeoutError::Timeout) => panic!(
            "{name} hung: still running after {HANG:?} of real time (a task that never yields?)"
        ),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// A coordinator running in its own task.
struct Worker {
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

fn start<T: TargetTable>(engine: &Arc<Eng<T>>) -> Worker {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(coordinator::run(engine.clone(), shutdown.clone()));
    Worker { shutdown, handle }
}

/// Cancels the coordinator and waits (bounded) for it to stop tasks and release leases.
async fn stop(worker: Worker) {
    worker.shutdown.cancel();
    timeout(Duration::from_secs(5), worker.handle)
        .await
        .expect("the coordinator stops within 5 s of shutdown")
        .expect("the coordinator does not panic");
}

/// Waits (bounded, on the paused clock) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let waited = timeout(WAIT, async {
        while !done() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {WAIT:?} waiting for {what}"
    );
}

/// Runs one shard task to its end (bounded).
async fn run_shard_to_end<T: TargetTable>(engine: &Arc<Eng<T>>, held: Arc<Held>) -> ShardExit {
    timeout(WAIT, engine.run_shard(held))
        .await
        .expect("run_shard ends on its own")
}

/// Creates the lease of `shard` (if needed) and takes it for `worker`, as the coordinator would.
async fn take_lease(leases: &MemoryLeases, shard: &str, worker: &str) -> Arc<Held> {
    leases
        .create(shard, &[], None, false)
        .await
        .expect("create lease");
    let observed = leases.get(shard).expect("lease row");
    let taken = leases
        .take(&observed, worker, u64::MAX)
        .await
        .expect("take lease");
    Arc::new(Held::new(taken, CancellationToken::new(), Instant::now()))
}

/// The value of one series (`name{labels}` exactly as rendered) in the metrics text.
fn metric(metrics: &Metrics, series: &str) -> Option<f64> {
    let text = metrics.render();
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn lease(leases: &MemoryLeases, shard: &str) -> Lease {
    leases
        .get(shard)
        .unwrap_or_else(|| panic!("no lease row for {shard}"))
}

/// The owner of each shard's lease (`None` also while the lease does not exist yet).
fn owners(leases: &MemoryLeases, shards: &[&str]) -> Vec<Option<String>> {
    shards
        .iter()
        .map(|s| leases.get(s).and_then(|l| l.owner))
        .collect()
}

fn count_owned(leases: &MemoryLeases, shards: &[&str], worker: &str) -> usize {
    owners(leases, shards)
        .iter()
        .filter(|o| o.as_deref() == Some(worker))
        .count()
}

// ---------------------------------------------------------------------------------------------
// 1. One-way replication through the lease loop
// ---------------------------------------------------------------------------------------------

#[test]
fn one_way_replication_reaches_the_final_state_checkpoints_and_releases() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        put(&stream, "s1", "b", "b1");
        update(&stream, "s1", "a", "a1", "a2");
        put(&stream, "s1", "c", "c1");
        delete(&stream, "s1", "b", "b1");
        update(&stream, "s1", "c", "c1", "c2");
        put(&stream, "s1", "d", "d1");
        delete(&stream, "s1", "d", "d1");
        let last = update(&stream, "s1", "a", "a2", "a3");
        let expected = state(&[("a", "a3"), ("c", "c2")]);

        // Small pages, so the state is reached over several batches and checkpoints.
        let engine = engine(
            "w1",
            Mode::OneWay,
            Tuning {
                batch_size: 2,
                ..tuning()
            },
            &stream,
            &target,
            &leases,
        );
        let worker = start(&engine);
        eventually("the target to reach the final state and checkpoint", || {
            target.live_items() == expected
                && leases.get("s1").and_then(|l| l.checkpoint) == Some(last.clone())
        })
        .await;
        assert_eq!(lease(&leases, "s1").owner.as_deref(), Some("w1"));
        stop(worker).await;

        assert_eq!(target.live_items(), expected);
        let row = lease(&leases, "s1");
        assert_eq!(
            row.checkpoint,
            Some(last),
            "checkpoint = last appended record"
        );
        assert_eq!(row.owner, None, "released on shutdown");
        assert!(!row.finished, "an open shard is never finished");
        assert_eq!(
            metric(&engine.metrics, "replicator_records_read_total"),
            Some(9.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_records_applied_total"),
            Some(9.0)
        );
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_lease_changes_total{change=\"released\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_shards_owned"),
            Some(0.0)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2. A parent shard is finished before its children start
// ---------------------------------------------------------------------------------------------

#[test]
fn parent_shard_is_applied_before_its_children() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::new());
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("p", None);
        put(&stream, "p", "k", "p-v1");
        put(&stream, "p", "x", "p-x1");
        update(&stream, "p", "k", "p-v1", "p-v2");
        let p_last = put(&stream, "p", "y", "p-y1");
        stream.split("p", &["c1", "c2"]);
        update(&stream, "c1", "k", "p-v2", "c1-v3");
        let c1_last = put(&stream, "c1", "z", "c1-z1");
        let c2_last = update(&stream, "c2", "x", "p-x1", "c2-x2");

        // One record per page: every parent record is a separate write.
        let engine = engine(
            "w1",
            Mode::OneWay,
            Tuning {
                batch_size: 1,
                ..tuning()
            },
            &stream,
            &target,
            &leases,
        );
        let worker = start(&engine);
        let expected = state(&[
            ("k", "c1-v3"),
            ("x", "c2-x2"),
            ("y", "p-y1"),
            ("z", "c1-z1"),
        ]);
        eventually("the children to be applied", || {
            target.live_items() == expected
                && leases.get("c1").and_then(|l| l.checkpoint) == Some(c1_last.clone())
                && leases.get("c2").and_then(|l| l.checkpoint) == Some(c2_last.clone())
        })
        .await;
        stop(worker).await;

        assert_eq!(text_of(&target.live_items(), "k").as_deref(), Some("c1-v3"));
        let log = target.log();
        let from = |prefix: &str| -> Vec<&WriteEvent> {
            log.iter()
                .filter(|e| e.text.as_deref().is_some_and(|t| t.starts_with(prefix)))
                .collect()
        };
        let parent = from("p-");
        let children: Vec<&WriteEvent> = from("c1-").into_iter().chain(from("c2-")).collect();
        assert_eq!(parent.len(), 4, "one write per parent record: {log:?}");
        assert_eq!(children.len(), 3, "one write per child record: {log:?}");
        let last_parent_end = parent.iter().map(|e| e.ended).max().expect("parent writes");
        let first_child_start = children
            .iter()
            .map(|e| e.started)
            .min()
            .expect("child writes");
        assert!(
            last_parent_end < first_child_start,
            "a child write began before the parent's last write ended: {log:?}"
        );

        let p = lease(&leases, "p");
        assert!(p.finished, "the parent is finished");
        assert_eq!(p.checkpoint, Some(p_last));
        assert_eq!(p.owner, None, "a finished lease is released");
        for child in ["c1", "c2"] {
            let row = lease(&leases, child);
            assert_eq!(row.parents, vec!["p".to_owned()], "{child}'s parents");
            assert!(!row.finished, "{child} is open");
            assert_eq!(row.owner, None, "{child} released on shutdown");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 3. An expired iterator is re-sought after the last applied record
// ---------------------------------------------------------------------------------------------

#[test]
fn expired_iterator_is_resought_after_the_checkpoint_without_replay_or_loss() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        put(&stream, "s1", "b", "b1");
        let first = put(&stream, "s1", "c", "c1");

        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&engine);
        eventually("the first records to be checkpointed", || {
            leases.get("s1").and_then(|l| l.checkpoint) == Some(first.clone())
        })
        .await;
        assert_eq!(target.writes(), 3);

        // The shard task's iterator expires while it idles; more records arrive.
        stream.expire_iterators();
        put(&stream, "s1", "d", "d1");
        put(&stream, "s1", "e", "e1");
        let last = put(&stream, "s1", "f", "f1");
        let expected = state(&[
            ("a", "a1"),
            ("b", "b1"),
            ("c", "c1"),
            ("d", "d1"),
            ("e", "e1"),
            ("f", "f1"),
        ]);
        eventually("the later records to be checkpointed", || {
            target.live_items() == expected
                && leases.get("s1").and_then(|l| l.checkpoint) == Some(last.clone())
        })
        .await;
        stop(worker).await;

        assert_eq!(target.live_items(), expected);
        assert_eq!(
            target.writes(),
            6,
            "each record written once: re-sought after the checkpoint, not from the trim horizon"
        );
        let text = engine.metrics.render();
        assert!(
            text.contains("replicator_errors_total{kind=\"expired_iterator\"}"),
            "{text}"
        );
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_errors_total{kind=\"expired_iterator\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_records_read_total"),
            Some(6.0)
        );
        assert_eq!(metric(&engine.metrics, "replicator_gaps_total"), Some(0.0));
        assert_eq!(lease(&leases, "s1").checkpoint, Some(last));
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A trimmed gap halts the shard; nothing after it is applied
// ---------------------------------------------------------------------------------------------

#[test]
fn trimmed_gap_behind_the_checkpoint_halts_the_shard_loudly() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "r1", "v");
        let applied = put(&stream, "s1", "r2", "v");
        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);

        // First run: apply r1, r2, then stop (as on shutdown).
        let held = take_lease(&leases, "s1", "w1").await;
        let task = tokio::spawn({
            let engine = engine.clone();
            let held = held.clone();
            async move { engine.run_shard(held).await }
        });
        eventually("r1 and r2 to be checkpointed", || {
            leases.get("s1").and_then(|l| l.checkpoint) == Some(applied.clone())
        })
        .await;
        held.stop.cancel();
        let exit = timeout(WAIT, task).await.expect("stops").expect("no panic");
        assert_eq!(exit, ShardExit::Stopped);
        assert_eq!(target.live_items(), state(&[("r1", "v"), ("r2", "v")]));

        // While no one reads: r3, r4 arrive and are trimmed away unread; r5, r6 arrive after them.
        put(&stream, "s1", "r3", "v");
        put(&stream, "s1", "r4", "v");
        put(&stream, "s1", "r5", "v");
        stream.trim("s1", 4);
        put(&stream, "s1", "r6", "v");

        engine.health.lease_synced();
        assert!(engine.health.ready().is_ok(), "ready before the gap");
        let row = lease(&leases, "s1");
        let resumed = Arc::new(Held::new(row, CancellationToken::new(), Instant::now()));
        let exit = run_shard_to_end(&engine, resumed).await;

        assert_eq!(exit, ShardExit::Halted);
        assert_eq!(metric(&engine.metrics, "replicator_gaps_total"), Some(1.0));
        assert_eq!(
            metric(&engine.metrics, "replicator_errors_total{kind=\"trimmed\"}"),
            Some(1.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_shards_stopped"),
            Some(1.0)
        );
        let why = engine
            .health
            .ready()
            .expect_err("not ready with a halted shard");
        assert!(why.contains("stopped"), "{why}");
        assert_eq!(
            target.live_items(),
            state(&[("r1", "v"), ("r2", "v")]),
            "r5 and r6 (after the gap) must not be applied"
        );
        assert_eq!(
            lease(&leases, "s1").checkpoint,
            Some(applied),
            "the checkpoint does not jump over the gap"
        );
    });
}

#[test]
fn trimmed_gap_found_while_reading_halts_the_shard() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "r1", "v");
        let applied = put(&stream, "s1", "r2", "v");
        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let task = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run_shard(held).await }
        });
        eventually("r1 and r2 to be checkpointed", || {
            leases.get("s1").and_then(|l| l.checkpoint) == Some(applied.clone())
        })
        .await;
        // The shard task idles on an iterator just after r2. Records are appended and trimmed before it
        // reads again (no await in between, so it cannot read them first).
        put(&stream, "s1", "r3", "v");
        put(&stream, "s1", "r4", "v");
        put(&stream, "s1", "r5", "v");
        stream.trim("s1", 4);
        put(&stream, "s1", "r6", "v");

        let exit = timeout(WAIT, task)
            .await
            .expect("the shard halts on its own")
            .expect("no panic");
        assert_eq!(exit, ShardExit::Halted);
        assert_eq!(metric(&engine.metrics, "replicator_gaps_total"), Some(1.0));
        assert_eq!(target.live_items(), state(&[("r1", "v"), ("r2", "v")]));
        assert_eq!(lease(&leases, "s1").checkpoint, Some(applied));
    });
}

// ---------------------------------------------------------------------------------------------
// 5. A fatal apply error stops the shard
// ---------------------------------------------------------------------------------------------

#[test]
fn a_refused_record_is_parked_and_the_records_after_it_are_applied() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::failing_on("bad"));
        let leases = Arc::new(MemoryLeases::default());
        let parked = Arc::new(MemoryDeadLetters::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        let failing = put(&stream, "s1", "bad", "x");
        put(&stream, "s1", "c", "c1");
        let last = put(&stream, "s1", "d", "d1");
        stream.split("s1", &[]);
        let mut engine = engine(
            "w1",
            Mode::OneWay,
            Tuning {
                batch_size: 2,
                ..tuning()
            },
            &stream,
            &target,
            &leases,
        );
        Arc::get_mut(&mut engine).expect("unshared").dead_letters = Some(parked.clone());
        let held = take_lease(&leases, "s1", "w1").await;
        let exit = run_shard_to_end(&engine, held).await;

        assert_eq!(exit, ShardExit::Finished, "the shard goes on");
        assert_eq!(lease(&leases, "s1").checkpoint, Some(last));
        assert_eq!(
            target.live_items(),
            state(&[("a", "a1"), ("c", "c1"), ("d", "d1")])
        );
        let letters = parked.letters();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].shard, "s1");
        assert_eq!(letters[0].change.seq, failing);
        assert!(
            letters[0].error.contains("item bad is invalid"),
            "{}",
            letters[0].error
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_dead_letters_total"),
            Some(1.0)
        );
    });
}

#[test]
fn fatal_apply_error_halts_the_shard_before_the_failing_record() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::failing_on("bad"));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        let before = put(&stream, "s1", "b", "b1");
        let failing = put(&stream, "s1", "bad", "x");
        put(&stream, "s1", "c", "c1");
        put(&stream, "s1", "d", "d1");
        // Pages of two: [a, b] [bad, c] [d].
        let engine = engine(
            "w1",
            Mode::OneWay,
            Tuning {
                batch_size: 2,
                ..tuning()
            },
            &stream,
            &target,
            &leases,
        );
        let held = take_lease(&leases, "s1", "w1").await;
        let exit = run_shard_to_end(&engine, held).await;

        assert_eq!(exit, ShardExit::Halted);
        let row = lease(&leases, "s1");
        assert_eq!(
            row.checkpoint,
            Some(before.clone()),
            "checkpoint stops at b"
        );
        assert!(
            row.checkpoint.as_ref().is_some_and(|c| *c < failing),
            "the checkpoint must not pass the failing record"
        );
        assert!(!row.finished);
        assert_eq!(
            row.owner.as_deref(),
            Some("w1"),
            "a halted shard keeps its lease"
        );
        let items = target.live_items();
        assert_eq!(text_of(&items, "a").as_deref(), Some("a1"));
        assert_eq!(text_of(&items, "b").as_deref(), Some("b1"));
        assert_eq!(text_of(&items, "bad"), None);
        assert_eq!(
            text_of(&items, "d"),
            None,
            "nothing after the halted page is read"
        );
        let fatal: Vec<WriteEvent> = target.log().into_iter().filter(|e| e.id == "bad").collect();
        assert_eq!(fatal.len(), 1, "a fatal error is not retried: {fatal:?}");
        assert_eq!(fatal[0].result, Err("validation"));
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_errors_total{kind=\"validation\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_shards_stopped"),
            Some(1.0)
        );
        assert!(engine.health.ready().is_err());
    });
}

#[test]
fn halted_shard_keeps_its_lease_until_shutdown_and_the_next_owner_halts_too() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::failing_on("bad"));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        let before = put(&stream, "s1", "a", "a1");
        put(&stream, "s1", "bad", "x");
        put(&stream, "s1", "c", "c1");
        let single = Tuning {
            batch_size: 1,
            ..tuning()
        };
        let a = engine("a", Mode::OneWay, single.clone(), &stream, &target, &leases);
        let b = engine("b", Mode::OneWay, single, &stream, &target, &leases);
        let worker_a = start(&a);
        eventually("the shard to halt", || {
            metric(&a.metrics, "replicator_shards_stopped") == Some(1.0)
        })
        .await;
        let worker_b = start(&b);
        // Several lease durations: a keeps renewing the halted lease, so b may not take it over.
        sleep(Duration::from_secs(5)).await;
        let row = lease(&leases, "s1");
        assert_eq!(row.owner.as_deref(), Some("a"));
        assert_eq!(row.checkpoint, Some(before.clone()));
        assert_eq!(metric(&b.metrics, "replicator_shards_owned"), Some(0.0));
        assert_eq!(
            target.log().iter().filter(|e| e.id == "bad").count(),
            1,
            "the failing record is attempted once, by a only, while a holds the shard"
        );
        assert_eq!(text_of(&target.live_items(), "c"), None);
        assert!(a.health.ready().is_err(), "a reports the halted shard");

        // a shuts down and gives the lease up; b resumes from the checkpoint, meets the same record
        // and halts too: the record is never skipped, whoever holds the shard.
        stop(worker_a).await;
        assert_ne!(
            lease(&leases, "s1").owner.as_deref(),
            Some("a"),
            "shutdown releases every lease, a halted one too"
        );
        eventually(
            "b to take the shard over and halt on the same record",
            || metric(&b.metrics, "replicator_shards_stopped") == Some(1.0),
        )
        .await;
        let row = lease(&leases, "s1");
        assert_eq!(row.owner.as_deref(), Some("b"));
        assert_eq!(row.checkpoint, Some(before));
        assert_eq!(target.log().iter().filter(|e| e.id == "bad").count(), 2);
        assert_eq!(text_of(&target.live_items(), "c"), None);
        stop(worker_b).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Retryable errors are retried
// ---------------------------------------------------------------------------------------------

#[test]
fn retryable_errors_are_retried_until_applied() {
    model_test(|| async {
        const FAILURES: usize = 3;
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::throttling_first(FAILURES));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        put(&stream, "s1", "b", "b1");
        update(&stream, "s1", "a", "a1", "a2");
        put(&stream, "s1", "c", "c1");
        let last = delete(&stream, "s1", "c", "c1");
        // Closed: run_shard reads it to the end and finishes.
        stream.split("s1", &[]);
        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let exit = run_shard_to_end(&engine, held).await;

        assert_eq!(exit, ShardExit::Finished);
        assert_eq!(target.live_items(), state(&[("a", "a2"), ("b", "b1")]));
        let row = lease(&leases, "s1");
        assert_eq!(row.checkpoint, Some(last));
        assert!(row.finished);
        let log = target.log();
        let throttled = log.iter().filter(|e| e.result == Err("throttled")).count();
        assert_eq!(throttled, FAILURES, "{log:?}");
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_errors_total{kind=\"throttled\"}"
            ),
            Some(FAILURES as f64)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_shards_stopped"),
            Some(0.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_records_applied_total"),
            Some(5.0)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Last-writer-wins: loop prevention and conditional writes
// ---------------------------------------------------------------------------------------------

#[test]
fn lww_skips_replicated_in_records_and_never_overwrites_newer_versions() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        // The target already holds newer versions of "old" and "kept".
        for (id, version) in [("old", 500), ("kept", 900)] {
            let seeded = target
                .write(&Write::Put {
                    item: lww_item(id, "newer-in-target", version, SOURCE_REGION),
                    condition: None,
                })
                .await
                .expect("seed");
            assert_eq!(seeded, Outcome::Applied);
        }
        stream.open_shard("s1", None);
        let append = |kind, id: &str, new: Option<Item>, old: Option<Item>| {
            stream.append("s1", kind, key(id), new, old)
        };
        append(
            EventKind::Insert,
            "a",
            Some(lww_item("a", "a1", 100, SOURCE_REGION)),
            None,
        );
        append(
            EventKind::Insert,
            "r",
            Some(lww_item("r", "from-west", 100, OTHER_REGION)),
            None,
        );
        append(
            EventKind::Insert,
            "old",
            Some(lww_item("old", "stale", 200, SOURCE_REGION)),
            None,
        );
        append(
            EventKind::Remove,
            "kept",
            None,
            Some(lww_item("kept", "stale", 300, SOURCE_REGION)),
        );
        let last = append(
            EventKind::Modify,
            "a",
            Some(lww_item("a", "a2", 150, SOURCE_REGION)),
            Some(lww_item("a", "a1", 100, SOURCE_REGION)),
        );
        stream.split("s1", &[]);
        let engine = engine("w1", Mode::Lww, tuning(), &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let exit = run_shard_to_end(&engine, held).await;

        assert_eq!(exit, ShardExit::Finished);
        let items = target.live_items();
        assert_eq!(
            items.get(&key_string(&key("a"))),
            Some(&lww_item("a", "a2", 150, SOURCE_REGION))
        );
        assert_eq!(
            text_of(&items, "r"),
            None,
            "a replicated-in write is not sent back"
        );
        assert_eq!(
            items.get(&key_string(&key("old"))),
            Some(&lww_item("old", "newer-in-target", 500, SOURCE_REGION)),
            "an older put does not overwrite a newer item"
        );
        assert_eq!(
            items.get(&key_string(&key("kept"))),
            Some(&lww_item("kept", "newer-in-target", 900, SOURCE_REGION)),
            "a delete of an older version does not remove a newer item"
        );
        assert_eq!(items.len(), 3);
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_records_skipped_total{reason=\"replicated_in\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_conflicts_total"),
            Some(2.0)
        );
        assert_eq!(
            metric(&engine.metrics, "replicator_records_applied_total"),
            Some(2.0),
            "a (2 records) applied; the skip and the conflicts are not"
        );
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_records_skipped_total{reason=\"conflict\"}"
            ),
            Some(2.0),
            "records settled by a lost conflict"
        );
        let row = lease(&leases, "s1");
        assert_eq!(
            row.checkpoint,
            Some(last),
            "skipped and conflicting records are settled"
        );
        assert!(row.finished);
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Two workers: balance, fencing, release and takeover
// ---------------------------------------------------------------------------------------------

#[test]
fn two_workers_balance_and_the_survivor_takes_over_released_leases() {
    model_test(|| async {
        const SHARDS: [&str; 4] = ["s1", "s2", "s3", "s4"];
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        let mut expected = Vec::new();
        for shard in SHARDS {
            stream.open_shard(shard, None);
            for i in 0..3 {
                let id = format!("{shard}-k{i}");
                put(&stream, shard, &id, "v1");
                expected.push((id, "v1".to_owned()));
            }
        }
        let a = engine("a", Mode::OneWay, tuning(), &stream, &target, &leases);
        let b = engine("b", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker_a = start(&a);
        eventually("a to hold every lease", || {
            SHARDS.iter().all(|s| {
                leases
                    .get(s)
                    .is_some_and(|l| l.owner.as_deref() == Some("a"))
            })
        })
        .await;
        let worker_b = start(&b);
        eventually("two leases each", || {
            count_owned(&leases, &SHARDS, "a") == 2 && count_owned(&leases, &SHARDS, "b") == 2
        })
        .await;
        // Balanced and stable: a few more lease intervals change nothing.
        sleep(Duration::from_secs(2)).await;
        assert_eq!(count_owned(&leases, &SHARDS, "a"), 2);
        assert_eq!(count_owned(&leases, &SHARDS, "b"), 2);
        assert!(
            metric(
                &b.metrics,
                "replicator_lease_changes_total{change=\"handoff_requested\"}"
            )
            .is_some_and(|v| v >= 2.0)
        );
        let a_shards: Vec<&str> = SHARDS
            .iter()
            .copied()
            .filter(|s| lease(&leases, s).owner.as_deref() == Some("a"))
            .collect();

        stop(worker_a).await;
        for shard in &a_shards {
            let owner = lease(&leases, shard).owner;
            assert_ne!(owner.as_deref(), Some("a"), "{shard} released by a");
        }
        assert_eq!(metric(&a.metrics, "replicator_shards_owned"), Some(0.0));

        // Records arriving after a left are applied by b.
        for shard in SHARDS {
            for i in 0..3 {
                let id = format!("{shard}-k{i}");
                update(&stream, shard, &id, "v1", "v2");
            }
            let id = format!("{shard}-new");
            put(&stream, shard, &id, "n1");
            expected.push((id, "n1".to_owned()));
        }
        for (_, text) in expected.iter_mut().filter(|(_, t)| t == "v1") {
            *text = "v2".to_owned();
        }
        let pairs: Vec<(&str, &str)> = expected
            .iter()
            .map(|(i, t)| (i.as_str(), t.as_str()))
            .collect();
        let expected = state(&pairs);
        eventually("b to hold every lease and apply everything", || {
            count_owned(&leases, &SHARDS, "b") == 4 && target.live_items() == expected
        })
        .await;
        stop(worker_b).await;
        assert_eq!(target.live_items(), expected);
        assert_eq!(owners(&leases, &SHARDS), vec![None; 4], "all released");
    });
}

#[test]
fn crashed_workers_leases_are_taken_over_only_after_the_lease_duration() {
    model_test(|| async {
        const SHARDS: [&str; 2] = ["s1", "s2"];
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        let mut checkpoints = HashMap::new();
        for shard in SHARDS {
            stream.open_shard(shard, None);
            checkpoints.insert(shard, put(&stream, shard, shard, "v1"));
        }
        let a = engine("a", Mode::OneWay, tuning(), &stream, &target, &leases);
        let b = engine("b", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker_a = start(&a);
        eventually("a to apply and checkpoint both shards", || {
            SHARDS
                .iter()
                .all(|s| leases.get(s).and_then(|l| l.checkpoint) == checkpoints.get(s).cloned())
        })
        .await;
        // a dies without releasing anything (its shard tasks die with it).
        worker_a.handle.abort();
        let _ = timeout(Duration::from_secs(1), worker_a.handle).await;
        assert_eq!(count_owned(&leases, &SHARDS, "a"), 2);

        let since = Instant::now();
        let worker_b = start(&b);
        eventually("b to take both leases", || {
            count_owned(&leases, &SHARDS, "b") == 2
        })
        .await;
        assert!(
            since.elapsed() >= b.tuning.lease_duration,
            "taken after {:?}, before a full lease duration without counter movement",
            since.elapsed()
        );
        for shard in SHARDS {
            update(&stream, shard, shard, "v1", "v2");
        }
        let expected = state(&[("s1", "v2"), ("s2", "v2")]);
        eventually("b to apply the new records", || {
            target.live_items() == expected
        })
        .await;
        assert_eq!(
            target.writes(),
            4,
            "b resumes after a's checkpoints: nothing is replayed"
        );
        stop(worker_b).await;
    });
}

#[test]
fn a_worker_that_lost_its_lease_cannot_move_the_checkpoint() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        put(&stream, "s1", "b", "b1");
        let engine = engine("a", Mode::OneWay, tuning(), &stream, &target, &leases);
        let stale = take_lease(&leases, "s1", "a").await;
        // b takes the lease over (say a was paused for longer than the lease duration).
        let a_row = stale.lease().await;
        let b_row = leases.take(&a_row, "b", u64::MAX).await.expect("b takes");

        let exit = run_shard_to_end(&engine, stale.clone()).await;

        assert_eq!(exit, ShardExit::LeaseLost);
        assert!(stale.stop.is_cancelled(), "the lost lease stops its task");
        let row = lease(&leases, "s1");
        assert_eq!(row, b_row, "the lease row is untouched by the old owner");
        assert_eq!(row.checkpoint, None);
        assert_eq!(
            metric(
                &engine.metrics,
                "replicator_lease_changes_total{change=\"lost\"}"
            ),
            Some(1.0)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Further cases: a split while running, LATEST starts
// ---------------------------------------------------------------------------------------------

#[test]
fn split_while_running_moves_on_to_the_children_in_order() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::new());
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("p", None);
        put(&stream, "p", "k", "p-v1");
        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&engine);
        eventually("the parent's first record", || {
            text_of(&target.live_items(), "k").as_deref() == Some("p-v1")
        })
        .await;
        // More records, then the split, then the children's records, with no pause in between:
        // the parent's tail is still unread when the children get theirs.
        update(&stream, "p", "k", "p-v1", "p-v2");
        let p_last = put(&stream, "p", "m", "p-m1");
        stream.split("p", &["c1", "c2"]);
        update(&stream, "c1", "k", "p-v2", "c1-v3");
        update(&stream, "c2", "m", "p-m1", "c2-m2");
        let expected = state(&[("k", "c1-v3"), ("m", "c2-m2")]);
        eventually("the children's records", || target.live_items() == expected).await;
        stop(worker).await;

        let log = target.log();
        let last_parent_end = log
            .iter()
            .filter(|e| e.text.as_deref().is_some_and(|t| t.starts_with("p-")))
            .map(|e| e.ended)
            .max()
            .expect("parent writes");
        let first_child_start = log
            .iter()
            .filter(|e| e.text.as_deref().is_some_and(|t| t.starts_with('c')))
            .map(|e| e.started)
            .min()
            .expect("child writes");
        assert!(last_parent_end < first_child_start, "{log:?}");
        let p = lease(&leases, "p");
        assert!(p.finished);
        assert_eq!(p.checkpoint, Some(p_last));
        for child in ["c1", "c2"] {
            assert_eq!(lease(&leases, child).parents, vec!["p".to_owned()]);
        }
    });
}

#[test]
fn latest_start_skips_older_records_and_applies_newer_ones() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "before", "v");
        let engine = engine_from(
            "w1",
            Mode::OneWay,
            StartPosition::Latest,
            tuning(),
            &stream,
            &target,
            &leases,
        );
        let worker = start(&engine);
        eventually("the shard task to poll", || stream.reads() >= 2).await;
        let last = put(&stream, "s1", "after", "v");
        eventually("the new record to be checkpointed", || {
            leases.get("s1").and_then(|l| l.checkpoint) == Some(last.clone())
        })
        .await;
        stop(worker).await;
        assert_eq!(target.live_items(), state(&[("after", "v")]));
    });
}

#[test]
fn latest_start_after_rollovers_begins_at_the_newest_records_of_the_open_shards() {
    model_test(|| async {
        // Hours of history in a lineage: closed root r, closed child c, open grandchild g. LATEST must
        // not replay r, c or g's older records (before, a closed root was read from its trim horizon
        // and its descendants from their first records: up to 24 hours of replay).
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("r", None);
        put(&stream, "r", "old-r", "v");
        stream.split("r", &["c"]);
        put(&stream, "c", "old-c", "v");
        stream.split("c", &["g"]);
        put(&stream, "g", "old-g", "v");
        let engine = engine_from(
            "w1",
            Mode::OneWay,
            StartPosition::Latest,
            tuning(),
            &stream,
            &target,
            &leases,
        );
        let worker = start(&engine);
        eventually("the open shard to be polled", || {
            leases.get("g").is_some_and(|l| l.started) && stream.reads() >= 2
        })
        .await;
        let last = put(&stream, "g", "new", "v");
        eventually("the new record to be checkpointed", || {
            leases.get("g").and_then(|l| l.checkpoint) == Some(last.clone())
        })
        .await;
        stop(worker).await;
        assert_eq!(target.live_items(), state(&[("new", "v")]));
        assert!(lease(&leases, "r").finished && lease(&leases, "c").finished);
        assert_eq!(lease(&leases, "r").checkpoint, None, "never read");
    });
}

#[test]
fn latest_start_expired_iterator_before_the_first_checkpoint_loses_nothing() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "before", "v");
        let engine = engine_from(
            "w1",
            Mode::OneWay,
            StartPosition::Latest,
            tuning(),
            &stream,
            &target,
            &leases,
        );
        let worker = start(&engine);
        eventually("the shard task to poll", || stream.reads() >= 2).await;
        // The replicator is running; a change is made; the shard's iterator expires before the next
        // read (on AWS: 15 minutes without a read, e.g. while the lease could not be renewed).
        stream.expire_iterators();
        put(&stream, "s1", "after", "v");
        let applied = timeout(Duration::from_secs(5), async {
            while text_of(&target.live_items(), "after").is_none() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let errors = metric(
            &engine.metrics,
            "replicator_errors_total{kind=\"expired_iterator\"}",
        );
        stop(worker).await;
        assert_eq!(errors, Some(1.0), "the iterator did expire");
        assert!(
            applied.is_ok(),
            "a change made after the replicator started was skipped silently: {:?}",
            target.live_items()
        );
    });
}

#[test]
fn latest_start_restart_before_the_first_checkpoint_loses_nothing() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "before", "v");
        let first = engine_from(
            "w1",
            Mode::OneWay,
            StartPosition::Latest,
            tuning(),
            &stream,
            &target,
            &leases,
        );
        let worker = start(&first);
        eventually("the shard task to poll", || stream.reads() >= 2).await;
        // A change is made while the replicator runs; it is restarted (a deployment) before its next
        // poll, so the change is not read yet and the lease has no checkpoint.
        put(&stream, "s1", "after", "v");
        stop(worker).await;
        assert_eq!(lease(&leases, "s1").checkpoint, None);

        let second = engine_from(
            "w1",
            Mode::OneWay,
            StartPosition::Latest,
            tuning(),
            &stream,
            &target,
            &leases,
        );
        let worker = start(&second);
        let applied = timeout(Duration::from_secs(5), async {
            while text_of(&target.live_items(), "after").is_none() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        stop(worker).await;
        assert!(
            applied.is_ok(),
            "a change made while the replicator ran was skipped silently: {:?}",
            target.live_items()
        );
    });
}

#[test]
fn balancing_still_works_when_the_busiest_worker_holds_a_halted_shard() {
    model_test(|| async {
        const SHARDS: [&str; 4] = ["s1", "s2", "s3", "s4"];
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::failing_on("bad"));
        let leases = Arc::new(MemoryLeases::default());
        for shard in SHARDS {
            stream.open_shard(shard, None);
            put(&stream, shard, &format!("{shard}-k"), "v1");
        }
        // s1 (first in lease order) halts on a record that cannot be applied.
        put(&stream, "s1", "bad", "x");
        let a = engine("a", Mode::OneWay, tuning(), &stream, &target, &leases);
        let b = engine("b", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker_a = start(&a);
        eventually("a to hold every lease and halt s1", || {
            count_owned(&leases, &SHARDS, "a") == 4
                && metric(&a.metrics, "replicator_shards_stopped") == Some(1.0)
        })
        .await;
        let worker_b = start(&b);
        let balanced = timeout(Duration::from_secs(10), async {
            while count_owned(&leases, &SHARDS, "b") < 2 {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let rows: Vec<Lease> = SHARDS.iter().map(|s| lease(&leases, s)).collect();
        stop(worker_b).await;
        stop(worker_a).await;
        assert!(
            balanced.is_ok(),
            "b never got its share of the healthy shards: {rows:#?}"
        );
        assert_eq!(
            rows[0].owner.as_deref(),
            Some("a"),
            "the halted shard stays"
        );
    });
}

#[test]
fn children_of_a_halted_parent_never_start() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(ModelTarget::failing_on("bad"));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("p", None);
        put(&stream, "p", "k", "p-v1");
        put(&stream, "p", "bad", "x");
        stream.split("p", &["c1"]);
        put(&stream, "c1", "k", "c1-v2");
        let engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&engine);
        eventually("the parent to halt", || {
            metric(&engine.metrics, "replicator_shards_stopped") == Some(1.0)
        })
        .await;
        // Many lease intervals and shard listings later, the child still has not started.
        sleep(Duration::from_secs(5)).await;
        let p = lease(&leases, "p");
        let c1 = lease(&leases, "c1");
        stop(worker).await;
        assert!(!p.finished);
        assert_eq!(c1.owner, None, "the child was never taken");
        assert_eq!(c1.checkpoint, None);
        assert_eq!(text_of(&target.live_items(), "k").as_deref(), Some("p-v1"));
        assert!(
            target
                .log()
                .iter()
                .all(|e| e.text.as_deref() != Some("c1-v2")),
            "no write from the child"
        );
    });
}

#[test]
fn after_an_outage_a_shard_whose_parent_was_trimmed_away_starts_at_its_first_record_and_reports_the_gap()
 {
    model_test(|| async {
        // Fresh seed 900108's kind: replication began on p; during an outage longer than the retention
        // p split into c, c into g; p and c were trimmed away and left the listing, and g's first record
        // was trimmed too. g must be read as a child (AT its first record: a reported gap), not as a new
        // root from the trim horizon (which silently skipped k1).
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("p", None);
        let first = put(&stream, "p", "k0", "v");
        let first_engine = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&first_engine);
        eventually("p's first record to be checkpointed", || {
            leases.get("p").and_then(|l| l.checkpoint) == Some(first.clone())
        })
        .await;
        stop(worker).await;
        // The outage.
        put(&stream, "p", "k9", "lost");
        stream.split("p", &["c"]);
        put(&stream, "c", "k8", "lost");
        stream.split("c", &["g"]);
        put(&stream, "g", "k1", "lost");
        put(&stream, "g", "k2", "v");
        stream.unlist("p");
        stream.unlist("c");
        stream.trim("g", 1);
        let second = engine("w2", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&second);
        eventually("both gaps to be reported", || {
            metric(&second.metrics, "replicator_gaps_total") == Some(2.0)
        })
        .await;
        stop(worker).await;
        assert_eq!(lease(&leases, "g").parents, vec!["c".to_owned()]);
        assert_eq!(
            lease(&leases, "g").checkpoint,
            None,
            "g halted before anything"
        );
        assert_eq!(
            text_of(&target.live_items(), "k2"),
            None,
            "nothing after the gap"
        );
        assert_eq!(text_of(&target.live_items(), "k0").as_deref(), Some("v"));
    });
}

#[test]
fn child_records_trimmed_before_the_child_started_are_reported_as_a_gap() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("p", None);
        let p_first = put(&stream, "p", "a", "a1");
        let first = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&first);
        eventually("p's record to be checkpointed", || {
            leases.get("p").and_then(|l| l.checkpoint) == Some(p_first.clone())
        })
        .await;
        stop(worker).await;

        // An outage longer than the stream's retention: p is split, the child gets records, and the
        // oldest records (p's, then the child's first) are trimmed before anyone reads them.
        stream.split("p", &["c1"]);
        put(&stream, "c1", "k1", "v");
        put(&stream, "c1", "k2", "v");
        stream.trim("p", 1);
        stream.trim("c1", 1);

        let second = engine("w1", Mode::OneWay, tuning(), &stream, &target, &leases);
        let worker = start(&second);
        eventually("p to finish and c1 to be read", || {
            leases.get("p").is_some_and(|l| l.finished) && {
                let items = target.live_items();
                text_of(&items, "k2").is_some()
                    || metric(&second.metrics, "replicator_gaps_total") == Some(1.0)
            }
        })
        .await;
        stop(worker).await;
        let items = target.live_items();
        assert!(
            text_of(&items, "k1").is_some()
                || metric(&second.metrics, "replicator_gaps_total") == Some(1.0),
            "k1 was neither applied nor reported as a gap: target {items:?}, metrics:\n{}",
            second.metrics.render()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Stalls: /healthz and the lag gauge
// ---------------------------------------------------------------------------------------------

#[test]
fn a_hung_stream_read_fails_healthz_after_the_stall_timeout_and_says_why() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        stream.hang_reads(true);
        let tuning = Tuning {
            stall_timeout: Duration::from_secs(30),
            ..tuning()
        };
        let engine = engine("w1", Mode::OneWay, tuning, &stream, &target, &leases);
        let worker = start(&engine);
        sleep(Duration::from_secs(10)).await;
        assert_eq!(engine.health.live(), Ok(()), "not stalled yet");
        sleep(Duration::from_secs(25)).await;
        let why = engine.health.live().expect_err("stalled after 30 s");
        assert!(
            why.contains("s1") && why.contains("reading the stream"),
            "{why}"
        );
        engine.health.publish(&engine.metrics);
        assert_eq!(
            metric(&engine.metrics, "replicator_shards_stalled"),
            Some(1.0)
        );
        // The read answers again: the record is applied and the shard is healthy.
        stream.hang_reads(false);
        eventually("the record to be applied", || {
            target.live_items().len() == 1
        })
        .await;
        assert_eq!(engine.health.live(), Ok(()));
        stop(worker).await;
    });
}

#[test]
fn lag_is_reported_while_writes_are_refused_and_a_write_retried_forever_is_a_stall() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        // Throttled for 700 attempts: 35 to 70 s of backoffs (50 ms, jittered).
        let target = Arc::new(ModelTarget::throttling_first(700));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "a1");
        let tuning = Tuning {
            stall_timeout: Duration::from_secs(30),
            ..tuning()
        };
        let engine = engine("w1", Mode::OneWay, tuning, &stream, &target, &leases);
        let worker = start(&engine);
        sleep(Duration::from_secs(5)).await;
        engine.health.publish(&engine.metrics);
        let age = metric(&engine.metrics, "replicator_oldest_unapplied_age_seconds")
            .expect("the lag gauge");
        // The record's ApproximateCreationDateTime is in 2023: its age is years, and it is reported
        // although nothing new arrives.
        assert!(age > 1e7, "age {age}");
        sleep(Duration::from_secs(30)).await;
        let why = engine
            .health
            .live()
            .expect_err("a write retried for 30 s is a stall");
        assert!(why.contains("applying writes"), "{why}");
        let through = timeout(Duration::from_secs(120), async {
            while target.live_items().len() != 1 {
                sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            through.is_ok(),
            "the write gets through once throttling ends"
        );
        eventually("the shard to be caught up", || {
            engine.health.publish(&engine.metrics);
            metric(&engine.metrics, "replicator_oldest_unapplied_age_seconds") == Some(0.0)
        })
        .await;
        assert_eq!(engine.health.live(), Ok(()));
        stop(worker).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Pacing: reads per second per shard, checkpoints at most every interval, always when stopping
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_are_paced_and_the_next_page_is_read_while_one_applies() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        let mut last = None;
        for i in 0..1000 {
            last = Some(put(&stream, "s1", &format!("k{i}"), "v"));
        }
        stream.split("s1", &[]);
        let mut paced = tuning();
        paced.lease_duration = Duration::from_secs(60);
        let engine = engine("w1", Mode::OneWay, paced, &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let started = Instant::now();
        assert_eq!(run_shard_to_end(&engine, held).await, ShardExit::Finished);
        // Ten pages of 100 at 5 reads a second: the first at once, each later one 200 ms after the
        // one before (on the paused clock, exactly), and no sooner.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1800),
            "10 pages read in {elapsed:?}: faster than 5 reads a second"
        );
        assert!(elapsed < Duration::from_millis(2600), "{elapsed:?}");
        assert_eq!(target.writes(), 1000);
        let row = lease(&leases, "s1");
        assert!(row.finished);
        assert_eq!(row.checkpoint, last);
    });
}

#[test]
fn a_stop_writes_the_checkpoint_that_pacing_held_back() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        let mut seqs = Vec::new();
        for i in 0..1000 {
            seqs.push(put(&stream, "s1", &format!("k{i}"), "v"));
        }
        let mut slow = tuning();
        slow.checkpoint_interval = Duration::from_secs(60);
        slow.reads_per_second = 1;
        // Nobody renews this hand-taken lease: keep it valid for the whole test.
        slow.lease_duration = Duration::from_secs(60);
        let engine = engine("w1", Mode::OneWay, slow, &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let task = tokio::spawn({
            let engine = engine.clone();
            let held = held.clone();
            async move { engine.run_shard(held).await }
        });
        // After 2.5 s three pages are applied and the fourth is waiting for its read; no
        // checkpoint was due yet.
        sleep(Duration::from_millis(2500)).await;
        assert_eq!(target.writes(), 300);
        assert_eq!(lease(&leases, "s1").checkpoint, None);
        held.stop.cancel();
        let exit = timeout(WAIT, task).await.expect("stops").expect("no panic");
        assert_eq!(exit, ShardExit::Stopped);
        assert_eq!(
            lease(&leases, "s1").checkpoint,
            Some(seqs[299].clone()),
            "the stop writes the checkpoint of everything applied"
        );
    });
}

#[test]
fn a_caught_up_shard_checkpoints_at_once_not_after_the_interval() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        let last = put(&stream, "s1", "a", "v");
        let mut slow = tuning();
        slow.checkpoint_interval = Duration::from_secs(30);
        slow.idle_poll = Duration::from_secs(30);
        slow.lease_duration = Duration::from_secs(60);
        let engine = engine("w1", Mode::OneWay, slow, &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let task = tokio::spawn({
            let engine = engine.clone();
            let held = held.clone();
            async move { engine.run_shard(held).await }
        });
        // The page, then an empty read 200 ms later: caught up, so the checkpoint is written then,
        // not 30 s later.
        sleep(Duration::from_secs(1)).await;
        assert_eq!(lease(&leases, "s1").checkpoint, Some(last));
        held.stop.cancel();
        let exit = timeout(WAIT, task).await.expect("stops").expect("no panic");
        assert_eq!(exit, ShardExit::Stopped);
    });
}

#[test]
fn one_empty_read_costs_a_short_pause_not_the_whole_idle_poll() {
    model_test(|| async {
        let stream = Arc::new(MemoryStream::default());
        let target = Arc::new(MemoryTarget::new(&["id"], VersionAttributes::default()));
        let leases = Arc::new(MemoryLeases::default());
        stream.open_shard("s1", None);
        put(&stream, "s1", "a", "v");
        let mut slow = tuning();
        slow.idle_poll = Duration::from_secs(30);
        slow.lease_duration = Duration::from_secs(60);
        let engine = engine("w1", Mode::OneWay, slow, &stream, &target, &leases);
        let held = take_lease(&leases, "s1", "w1").await;
        let task = tokio::spawn({
            let engine = engine.clone();
            let held = held.clone();
            async move { engine.run_shard(held).await }
        });
        // Reads at 0 ms (the record) and 200 ms (empty: the pause is 400 ms, not 30 s), then 600 ms.
        sleep(Duration::from_millis(300)).await;
        put(&stream, "s1", "b", "v");
        sleep(Duration::from_millis(700)).await;
        assert_eq!(
            text_of(&target.items(), "b").as_deref(),
            Some("v"),
            "a record written during a short lull waited for the whole --idle-poll"
        );
        held.stop.cancel();
        let exit = timeout(WAIT, task).await.expect("stops").expect("no panic");
        assert_eq!(exit, ShardExit::Stopped);
    });
}
