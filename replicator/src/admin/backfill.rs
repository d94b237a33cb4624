//! `replicator backfill`: copy a live table that already holds data (more than the stream's 24 hours)
//! into the other region, alongside `replicator run`, with nothing lost and nothing older winning.
//!
//! How the hand-off to streaming stays gap-free: the stream replay is `run`'s, from the path's
//! checkpoints (or, for a new path, the stream's trim horizon), and every backfill write is
//! conditional, so the two may run in any order and at the same time:
//!
//! - one-way: an item is put only where the target holds nothing at its key. A change made during
//!   the backfill reaches the target through the stream whichever lands first: if the stream's copy
//!   lands first the backfill's older copy is refused; if the backfill's lands first the stream's
//!   replaces it (the backfill's copy carries no fencing token, so any owner's fenced write applies).
//!   A delete leaves the replicator's tombstone, which also refuses the older copy.
//! - lww: an item is put on the replicator's own condition (the stored version is not higher;
//!   tombstones are copied too, they are versions); an item without a version only where the key
//!   holds nothing.
//!
//! So the one thing the operator must make sure of is that `run` replays from before the backfill's
//! scan started: start `run` for the path before (or within the stream's 24 hours after) starting the
//! backfill. The command says so when the path has no leases yet.
//!
//! The scan is a parallel segmented Scan (`--segments`), limited to `--read-units-per-second` and
//! `--write-units-per-second` (capacity units as DynamoDB reports them, so production traffic keeps
//! the rest). Each segment's position is saved in the lease table after each page is written, so a
//! killed backfill resumes where it was (a page may be copied twice, which the conditions make
//! harmless). Progress (items, items a second, an estimate of the time left) is logged every
//! `--progress-interval`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tworegion_common::duration::parse_duration;
use tworegion_common::version::VersionAttributes;

use super::verify::{VerifyError, matching_keys};
use super::{AdminError, PathArgs, PathSpec, bad};
use crate::apply::retry::{GaveUp, RetryPolicy};
use crate::apply::target::{Outcome, put_if_absent, put_lww};
use crate::config::within;
use crate::config::{AttributeArgs, ConfigError, Mode, TableRef};
use crate::dead_letter::refused_for_good;
use crate::error::{AwsFailure, ErrorClass};
use crate::item::{Item, key_string};
use crate::lease::dynamo::{FENCE_ROW, PATH, SHARD, ensure_table, query_path};

/// `replicator backfill` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    /// The source, target and lease tables (progress is kept in the lease table).
    #[command(flatten)]
    pub path: PathArgs,
    /// The path's mode: one-way (copy where the target has nothing) or lww (copy unless the target
    /// holds a newer version).
    #[arg(long, env = "REPLICATOR_MODE", value_enum)]
    pub mode: Mode,
    /// The convention's attribute names.
    #[command(flatten)]
    pub attributes: AttributeArgs,
    /// Parallel Scan segments (1 to 1,000). A resumed backfill must use the same number.
    #[arg(long, default_value_t = 4)]
    pub segments: u32,
    /// Read capacity units a second the scan may use (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub read_units_per_second: u32,
    /// Write capacity units a second the copies may use (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub write_units_per_second: u32,
    /// Writes in flight per segment (1 to 100).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Items per Scan page (1 to 10,000; DynamoDB also ends a page at 1 MB). Progress is saved after
    /// each page, so a resumed backfill copies at most this many items of a segment again.
    #[arg(long, default_value_t = 500)]
    pub page_size: i32,
    /// Forget the progress of an earlier backfill of this path and copy everything again.
    #[arg(long)]
    pub restart: bool,
    /// How often progress is logged.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
}

/// Validated [`BackfillArgs`].
#[derive(Debug, Clone)]
pub struct BackfillSpec {
    /// The tables.
    pub path: PathSpec,
    /// How items are copied.
    pub mode: Mode,
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// See [`BackfillArgs`].
    pub segments: u32,
    /// See [`BackfillArgs`].
    pub read_units_per_second: u32,
    /// See [`BackfillArgs`].
    pub write_units_per_second: u32,
    /// See [`BackfillArgs`].
    pub concurrency: usize,
    /// See [`BackfillArgs`].
    pub page_size: i32,
    /// See [`BackfillArgs`].
    pub restart: bool,
    /// See [`BackfillArgs`].
    pub progress_interval: Duration,
}

impl BackfillArgs {
    /// Validates the flags; errors name the flag.
    pub fn validate(&self) -> Result<BackfillSpec, ConfigError> {
        let path = self.path.validate()?;
        let attributes = self.attributes.validate()?;
        within("segments", self.segments, 1, 1000)?;
        within("concurrency", self.concurrency, 1, 100)?;
        within("page-size", self.page_size, 1, 10_000)?;
        if self.progress_interval < Duration::from_secs(1) {
            return Err(bad("progress-interval", "give at least 1s"));
        }
        Ok(BackfillSpec {
            path,
            mode: self.mode,
            attributes,
            segments: self.segments,
            read_units_per_second: self.read_units_per_second,
            write_units_per_second: self.write_units_per_second,
            concurrency: self.concurrency,
            page_size: self.page_size,
            restart: self.restart,
            progress_interval: self.progress_interval,
        })
    }
}

/// The clients of a backfill.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The source table.
    pub source: Client,
    /// The target table.
    pub target: Client,
    /// The lease table (progress).
    pub lease: Client,
}

/// Why a backfill did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The tables cannot be compared or read.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A call failed for good (progress is saved; run the command again).
    #[error("{0}; the progress is saved: run the same command again to resume")]
    Admin(#[from] AdminError),
    /// An earlier backfill used another segment count.
    #[error(
        "a backfill of this path with {saved} segments is in progress; give --segments {saved} to \
         resume it, or --restart to copy everything again"
    )]
    Segments {
        /// The saved count.
        saved: u32,
    },
    /// Items the target refused for good.
    #[error(
        "{} the target refused for good (listed when they were met, and in the log); fix them in the \
         source (for example make them smaller), then copy them with `replicator verify --repair`",
        if *count == 1 { "1 item".to_owned() } else { format!("{count} items") }
    )]
    Refused {
        /// How many.
        count: usize,
    },
}

impl BackfillError {
    /// The process's exit code: 4 when items were refused (the rest is copied), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackfillError::Refused { .. } => 4,
            _ => 1,
        }
    }
}

impl From<std::io::Error> for BackfillError {
    fn from(error: std::io::Error) -> Self {
        BackfillError::Admin(AdminError::Output(error))
    }
}

/// A rate limit in capacity units a second (0: none), shared by the segments: each call takes what it
/// used; a call that used more than was available makes the next ones wait.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    /// A limit of `rate` units a second, with a second's worth available at the start.
    pub fn new(rate: u32) -> Limiter {
        Limiter {
            rate: f64::from(rate),
            state: Mutex::new((f64::from(rate), Instant::now())),
        }
    }

    /// The pause before spending `units` (and spends them).
    pub fn reserve(&self, units: f64, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (available, at) = &mut *state;
        *available = (*available + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.rate);
        // Callers may pass instants out of order; time never steps back.
        *at = (*at).max(now);
        *available -= units;
        if *available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*available / self.rate)
        }
    }

    async fn take(&self, units: f64) {
        let pause = self.reserve(units, Instant::now());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// One segment's saved position.
#[derive(Debug, Clone, Default, PartialEq)]
struct Progress {
    /// Where the next page starts (`None` with `done` false: at the beginning).
    next: Option<Item>,
    done: bool,
    copied: u64,
    skipped: u64,
    /// Items the target refused for good (listed in the run that met them).
    refused: u64,
    /// When the backfill of this segment first started (epoch ms; 0: not yet).
    started_ms: u64,
}

/// How one copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    /// The target now holds the item.
    Written,
    /// The target kept its own (already there, or newer).
    Kept,
    /// The target refuses the item for good.
    Refused,
}

/// `item` with version 0 and `region` as its origin if it has no valid version (lww).
fn stamped(mut item: Item, attributes: &VersionAttributes, region: &str) -> Item {
    if crate::apply::target::stored_version(&item, attributes).is_none() {
        item.insert(
            attributes.version.clone(),
            AttributeValue::N("0".to_owned()),
        );
        item.insert(
            attributes.origin.clone(),
            AttributeValue::S(region.to_owned()),
        );
    }
    item
}

/// Counters over all segments.
#[derive(Debug, Default)]
struct Totals {
    read: AtomicU64,
    copied: AtomicU64,
    skipped: AtomicU64,
}

struct Run<'a> {
    spec: &'a BackfillSpec,
    clients: &'a Clients,
    key_name: String,
    progress_key: String,
    reads: Limiter,
    writes: Limiter,
    totals: Totals,
    refused: Mutex<Vec<String>>,
    /// Jitter seeds for the retries.
    seed: AtomicU64,
    /// Never cancelled: a backfill stops by being killed, and resumes from its saved progress.
    never: CancellationToken,
}

/// The size DynamoDB bills an item at, roughly: names and values in bytes.
fn item_bytes(item: &Item) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
            AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
            AttributeValue::L(v) => 3 + v.iter().map(|x| 1 + value(x)).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, x)| 1 + k.len() + value(x)).sum::<usize>()
            }
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

impl Run<'_> {
    /// Whether the path has lease rows (a worker runs or ran it, so its stream replay is under way).
    async fn path_has_leases(&self) -> Result<bool, AdminError> {
        let path = super::path_key(&self.clients.source, &self.spec.path).await?;
        let rows = query_path(&self.clients.lease, &self.spec.path.lease.table, &path)
            .await
            .map_err(|source| AdminError::Aws {
                what: format!("reading the path's leases in {}", self.spec.path.lease),
                source,
            })?;
        Ok(rows
            .iter()
            .any(|row| !matches!(row.get(SHARD), Some(AttributeValue::S(s)) if s == FENCE_ROW)))
    }

    fn segment_key(&self, segment: u32) -> String {
        format!("segment {segment} of {}", self.spec.segments)
    }

    async fn saved(&self) -> Result<Vec<(u32, u32, Progress)>, AdminError> {
        let rows = query_path(
            &self.clients.lease,
            &self.spec.path.lease.table,
            &self.progress_key,
        )
        .await
        .map_err(|source| AdminError::Aws {
            what: format!(
                "reading the backfill's progress in {}",
                self.spec.path.lease
            ),
            source,
        })?;
        let mut saved = Vec::new();
        for row in rows {
            let Some(AttributeValue::S(name)) = row.get(SHARD) else {
                continue;
            };
            let mut words = name.split(' ');
            let (Some("segment"), Some(i), Some("of"), Some(n)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let (Ok(i), Ok(n)) = (i.parse(), n.parse()) else {
                continue;
            };
            let number = |name: &str| match row.get(name) {
                Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
                _ => 0,
            };
            saved.push((
                i,
                n,
                Progress {
                    next: match row.get("next") {
                        Some(AttributeValue::M(m)) => Some(m.clone()),
                        _ => None,
                    },
                    done: matches!(row.get("done"), Some(AttributeValue::Bool(true))),
                    copied: number("copied"),
                    skipped: number("skipped"),
                    refused: number("refused"),
                    started_ms: number("started_ms"),
                },
            ));
        }
        Ok(saved)
    }

    async fn forget(&self, rows: &[(u32, u32, Progress)]) -> Result<(), AdminError> {
        for (i, n, _) in rows {
            self.clients
                .lease
                .delete_item()
                .table_name(&self.spec.path.lease.table)
                .key(PATH, AttributeValue::S(self.progress_key.clone()))
                .key(SHARD, AttributeValue::S(format!("segment {i} of {n}")))
                .send()
                .await
                .map_err(|e| AdminError::Aws {
                    what: format!(
                        "forgetting the backfill's progress in {}",
                        self.spec.path.lease
                    ),
                    source: AwsFailure::from_sdk(&e),
                })?;
        }
        Ok(())
    }

    async fn save(&self, segment: u32, progress: &Progress) -> Result<(), AdminError> {
        let mut row: Item = [
            (
                PATH.to_owned(),
                AttributeValue::S(self.progress_key.clone()),
            ),
            (
                SHARD.to_owned(),
                AttributeValue::S(self.segment_key(segment)),
            ),
            ("done".to_owned(), AttributeValue::Bool(progress.done)),
            (
                "copied".to_owned(),
                AttributeValue::N(progress.copied.to_string()),
            ),
            (
                "skipped".to_owned(),
                AttributeValue::N(progress.skipped.to_string()),
            ),
            (
                "updated_at".to_owned(),
                AttributeValue::S(tworegion_common::time::rfc3339(
                    tworegion_common::version::system_millis(),
                )),
            ),
        ]
        .into();
        if let Some(next) = &progress.next {
            row.insert("next".to_owned(), AttributeValue::M(next.clone()));
        }
        self.retried(|| async {
            self.clients
                .lease
                .put_item()
                .table_name(&self.spec.path.lease.table)
                .set_item(Some(row.clone()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsFailure::from_sdk(&e))
        })
        .await
        .map_err(|source| AdminError::Aws {
            what: format!("saving the backfill's progress in {}", self.spec.path.lease),
            source,
        })
    }

    /// Retries `op` through throttling and timeouts (100 ms doubling to 10 s, jittered) until it
    /// succeeds or fails for good.
    async fn retried<T, F, Fut>(&self, op: F) -> Result<T, AwsFailure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AwsFailure>>,
    {
        let policy = RetryPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let on_retry = |failure: &AwsFailure| {
            tracing::warn!(error = %failure.message, "A backfill call failed; retrying.");
        };
        match policy.run(&self.never, seed, on_retry, op).await {
            Ok(value) => Ok(value),
            Err(GaveUp::Fatal(failure)) => Err(failure),
            Err(GaveUp::Stopped) => Err(AwsFailure::synthetic(
                ErrorClass::Fatal,
                "stopped",
                "stopped before the call succeeded",
            )),
        }
    }

    /// Copies one item.
    async fn copy(&self, item: Item) -> Result<Copied, AdminError> {
        let units = (item_bytes(&item) as f64 / 1024.0).ceil().max(1.0);
        self.writes.take(units).await;
        let target = &self.spec.path.target;
        let item = match self.spec.mode {
            Mode::OneWay => item,
            // An item without a version gets the lowest one, from the source's region, as the
            // replicator stamps what it copies: the target's replicator then knows it for a copy
            // (not a local write to send back), and any later write wins over it.
            Mode::Lww => stamped(item, &self.spec.attributes, &self.spec.path.source.region),
        };
        let result = self
            .retried(|| async {
                match self.spec.mode {
                    Mode::OneWay => {
                        put_if_absent(&self.clients.target, &target.table, &self.key_name, &item)
                            .await
                    }
                    Mode::Lww => {
                        put_lww(
                            &self.clients.target,
                            &target.table,
                            &self.key_name,
                            &item,
                            &self.spec.attributes,
                            &self.spec.path.source.region,
                        )
                        .await
                    }
                }
            })
            .await;
        match result {
            Ok(Outcome::Applied) => Ok(Copied::Written),
            Ok(Outcome::Conflict) => Ok(Copied::Kept),
            Err(failure) if refused_for_good(&failure) => {
                let line = format!("{}: {}", key_string(&item), failure.message);
                tracing::error!(item = %key_string(&item), error = %failure.message, "The target refuses an item; it is not copied.");
                self.refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
                Ok(Copied::Refused)
            }
            Err(source) => Err(AdminError::Aws {
                what: format!("copying {} into {target}", key_string(&item)),
                source,
            }),
        }
    }

    async fn segment(&self, segment: u32, mut progress: Progress) -> Result<(), AdminError> {
        let source: &TableRef = &self.spec.path.source;
        if progress.started_ms == 0 {
            progress.started_ms = tworegion_common::version::system_millis();
        }
        // Each page's read units are taken before it, estimated from the page before (the first
        // from a tenth of a unit an item), and settled from what DynamoDB reports after it.
        let mut estimate = (f64::from(self.spec.page_size) / 10.0).max(1.0);
        while !progress.done {
            self.reads.take(estimate).await;
            let page = self
                .retried(|| async {
                    self.clients
                        .source
                        .scan()
                        .table_name(&source.table)
                        .segment(i32::try_from(segment).unwrap_or(0))
                        .total_segments(i32::try_from(self.spec.segments).unwrap_or(1))
                        .set_exclusive_start_key(progress.next.clone())
                        .limit(self.spec.page_size)
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                        .await
                        .map_err(|e| AwsFailure::from_sdk(&e))
                })
                .await
                .map_err(|e| AdminError::Aws {
                    what: format!("scanning {source}"),
                    source: e,
                })?;
            let items = page.items.unwrap_or_default();
            let used = page
                .consumed_capacity
                .and_then(|c| c.capacity_units)
                .unwrap_or_else(|| {
                    // Eventually consistent: half a unit per 4 KB.
                    let bytes: usize = items.iter().map(item_bytes).sum();
                    (bytes as f64 / 4096.0 / 2.0).max(0.5)
                });
            if used > estimate {
                self.reads.take(used - estimate).await;
            }
            estimate = used;
            self.totals
                .read
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            let mut copies = futures::stream::iter(items)
                .map(|item| self.copy(item))
                .buffer_unordered(self.spec.concurrency);
            while let Some(copied) = copies.next().await {
                match copied? {
                    Copied::Written => {
                        progress.copied += 1;
                        self.totals.copied.fetch_add(1, Ordering::Relaxed);
                    }
                    Copied::Kept => {
                        progress.skipped += 1;
                        self.totals.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Copied::Refused => progress.refused += 1,
                }
            }
            progress.next = page.last_evaluated_key.filter(|k| !k.is_empty());
            progress.done = progress.next.is_none();
            self.save(segment, &progress).await?;
        }
        Ok(())
    }
}

/// Runs the backfill of `spec`; the summary goes to `out`.
pub async fn run(
    spec: &BackfillSpec,
    clients: &Clients,
    out: &mut dyn Write,
) -> Result<(), BackfillError> {
    let keys = matching_keys(&clients.source, &clients.target, &spec.path).await?;
    ensure_table(&clients.lease, &spec.path.lease.table)
        .await
        .map_err(|e| AdminError::Aws {
            what: format!("making sure the lease table {} exists", spec.path.lease),
            source: AwsFailure::synthetic(ErrorClass::Fatal, "lease_table", e.to_string()),
        })?;
    let run = Run {
        spec,
        clients,
        key_name: keys.first().cloned().unwrap_or_default(),
        progress_key: format!("backfill {} > {}", spec.path.source, spec.path.target),
        reads: Limiter::new(spec.read_units_per_second),
        writes: Limiter::new(spec.write_units_per_second),
        totals: Totals::default(),
        refused: Mutex::new(Vec::new()),
        seed: AtomicU64::new(tworegion_common::version::system_millis()),
        never: CancellationToken::new(),
    };
    let mut saved = run.saved().await?;
    if spec.restart {
        run.forget(&saved).await?;
        saved.clear();
    }
    if let Some((_, n, _)) = saved.iter().find(|(_, n, _)| *n != spec.segments) {
        return Err(BackfillError::Segments { saved: *n });
    }
    let mut segments: HashMap<u32, Progress> = (0..spec.segments)
        .map(|i| (i, Progress::default()))
        .collect();
    for (i, _, progress) in saved {
        segments.insert(i, progress);
    }
    let resumed: u64 = segments.values().map(|p| p.copied + p.skipped).sum();
    let refused_before: u64 = segments.values().map(|p| p.refused).sum();
    // The first start of any segment: what the stream must still hold when `run` starts.
    let first_start = segments
        .values()
        .map(|p| p.started_ms)
        .filter(|ms| *ms > 0)
        .min();
    if segments.values().all(|p| p.done) {
        writeln!(
            out,
            "The backfill of {} into {} is already complete ({resumed} items); give --restart to copy \
             everything again.",
            spec.path.source, spec.path.target
        )?;
        if refused_before > 0 {
            return Err(BackfillError::Refused {
                count: usize::try_from(refused_before).unwrap_or(usize::MAX),
            });
        }
        return Ok(());
    }
    let estimate = clients
        .source
        .describe_table()
        .table_name(&spec.path.source.table)
        .send()
        .await
        .ok()
        .and_then(|d| d.table.and_then(|t| t.item_count))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    if resumed > 0 {
        tracing::info!(items = resumed, "Resuming a backfill.");
    }
    let streaming = run.path_has_leases().await?;
    if !streaming {
        tracing::warn!(path = %run.progress_key, "No worker holds leases for this path yet: start `replicator run` for it; the changes made during the backfill reach the target only through its stream replay.");
    }
    let started_at = tworegion_common::time::rfc3339(
        first_start.unwrap_or_else(tworegion_common::version::system_millis),
    );
    let started = Instant::now();
    let done = CancellationToken::new();
    let report = async {
        let mut ticks = tokio::time::interval(spec.progress_interval);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let items = run.totals.copied.load(Ordering::Relaxed)
                + run.totals.skipped.load(Ordering::Relaxed);
            let rate = items as f64 / started.elapsed().as_secs_f64().max(0.001);
            let left = estimate.saturating_sub(items + resumed);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "unknown".to_owned()
            };
            tracing::info!(items = items + resumed, per_second = format!("{rate:.0}"), eta = %eta, estimate, "Backfill progress.");
        }
    };
    let work = async {
        let result = futures::future::try_join_all(
            segments
                .into_iter()
                .filter(|(_, p)| !p.done)
                .map(|(i, p)| run.segment(i, p)),
        )
        .await;
        done.cancel();
        result
    };
    let (result, ()) = tokio::join!(work, report);
    result?;
    let (copied, skipped) = (
        run.totals.copied.load(Ordering::Relaxed),
        run.totals.skipped.load(Ordering::Relaxed),
    );
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "Backfilled {} into {} ({}): {} items read, {copied} written, {skipped} kept the target's own \
         (already there{}), in {seconds:.1} s ({:.0} items/s){}.",
        spec.path.source,
        spec.path.target,
        spec.mode.label(),
        run.totals.read.load(Ordering::Relaxed),
        if spec.mode == Mode::Lww {
            " or newer"
        } else {
            ""
        },
        (copied + skipped) as f64 / seconds.max(0.001),
        if resumed > 0 {
            format!("; {resumed} items were copied before the resume")
        } else {
            String::new()
        }
    )?;
    if !streaming {
        writeln!(
            out,
            "No worker holds leases for this path yet. Start `replicator run` for it (--start-position \
             trim-horizon, the default) before {started_at} + 24 h: its stream replay carries the changes \
             made during the backfill, and the stream keeps records for 24 hours."
        )?;
    }
    let refused = run.refused.into_inner().unwrap_or_else(|p| p.into_inner());
    for line in &refused {
        writeln!(out, "refused  {line}")?;
    }
    let count = refused.len() + usize::try_from(refused_before).unwrap_or(usize::MAX);
    if count > 0 {
        return Err(BackfillError::Refused { count });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_spends_a_second_then_waits() {
        let limiter = Limiter::new(10);
        let start = Instant::now();
        assert_eq!(
            limiter.reserve(10.0, start),
            Duration::ZERO,
            "a second's worth at once"
        );
        assert_eq!(limiter.reserve(5.0, start), Duration::from_millis(500));
        // Half a second later the debt is paid; another 5 units cost another half second.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.reserve(5.0, later), Duration::from_millis(500));
        assert_eq!(
            Limiter::new(0).reserve(1e9, start),
            Duration::ZERO,
            "0: no limit"
        );
    }

    #[test]
    fn lww_copies_of_unversioned_items_get_the_lowest_version() {
        let a = VersionAttributes::default();
        let plain: Item = [("id".to_owned(), AttributeValue::S("k".into()))].into();
        let copy = stamped(plain, &a, "us-east-1");
        assert_eq!(
            copy.get("rep_version"),
            Some(&AttributeValue::N("0".into()))
        );
        assert_eq!(
            copy.get("rep_origin"),
            Some(&AttributeValue::S("us-east-1".into()))
        );
        let versioned = stamped(copy.clone(), &a, "us-west-2");
        assert_eq!(versioned, copy, "a versioned item is copied as it is");
    }

    #[test]
    fn item_sizes_count_names_and_values() {
        let item: Item = [
            ("id".to_owned(), AttributeValue::S("abc".into())),
            ("n".to_owned(), AttributeValue::N("12".into())),
        ]
        .into();
        assert_eq!(item_bytes(&item), 2 + 3 + 1 + 2);
    }
}
