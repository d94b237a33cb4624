//! Every metric the replicator exposes (defined here and nowhere else), the health state, and the HTTP
//! endpoints `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` (the ECS container health check, through `replicator healthcheck`) fails while a shard
//! this worker holds has made no progress for `--stall-timeout`: no read that found it caught up and no
//! checkpoint moving (a hung call, a write retried forever, a lease never renewed). `/readyz` fails
//! while a shard is halted or the lease loop is behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One low-cardinality label.
pub type Label = [(&'static str, &'static str); 1];

/// The replicator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Stream records read.
    pub records_read: Counter,
    /// Records applied to the target (including those settled by a later write of the same key).
    pub records_applied: Counter,
    /// Records that needed no write, by reason.
    pub records_skipped: Family<Label, Counter>,
    /// Writes that lost the last-writer-wins condition.
    pub conflicts: Counter,
    /// Errors, by kind (retried ones included).
    pub errors: Family<Label, Counter>,
    /// Replication lag in seconds, by how it was measured (`stream`: now minus ApproximateCreationDateTime;
    /// `version`: now minus the version's milliseconds, lww only).
    pub lag: Family<Label, Histogram>,
    /// Shards this worker holds.
    pub shards_owned: Gauge,
    /// Shards stopped until an operator acts.
    pub shards_stopped: Gauge,
    /// Lease changes, by change (`taken`, `released`, `lost`, `handoff`).
    pub lease_changes: Family<Label, Counter>,
    /// Checkpoints written.
    pub checkpoints: Counter,
    /// Trimmed gaps found (changes lost before they were read).
    pub gaps: Counter,
    /// lww records without a version that got the fallback.
    pub unversioned: Counter,
    /// lww records written by a writer that does not stamp versions (data changed, stamp did not),
    /// replicated with a fresh version.
    pub restamped: Counter,
    /// Age in seconds of the oldest record read but not yet applied, over the shards held (0 when all
    /// are caught up). Kept current on every scrape, also when nothing arrives.
    pub oldest_unapplied_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Shards held that have made no progress for the stall timeout.
    pub shards_stalled: Gauge,
    /// Records the target refused for good, parked in the dead-letter table.
    pub dead_letters: Counter,
}

fn lag_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("replicator");
        let m = Metrics {
            registry: Registry::default(),
            records_read: Counter::default(),
            records_applied: Counter::default(),
            records_skipped: Family::default(),
            conflicts: Counter::default(),
            errors: Family::default(),
            lag: Family::new_with_constructor(lag_histogram),
            shards_owned: Gauge::default(),
            shards_stopped: Gauge::default(),
            lease_changes: Family::default(),
            checkpoints: Counter::default(),
            gaps: Counter::default(),
            unversioned: Counter::default(),
            restamped: Counter::default(),
            oldest_unapplied_age: Gauge::default(),
            shards_stalled: Gauge::default(),
            dead_letters: Counter::default(),
        };
        registry.register(
            "records_read",
            "Stream records read",
            m.records_read.clone(),
        );
        registry.register(
            "records_applied",
            "Stream records applied to the target",
            m.records_applied.clone(),
        );
        registry.register(
            "records_skipped",
            "Stream records that needed no write, by reason",
            m.records_skipped.clone(),
        );
        registry.register(
            "conflicts",
            "Writes that lost the last-writer-wins condition",
            m.conflicts.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind, retried ones included",
            m.errors.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds from the source write to its application",
            m.lag.clone(),
        );
        registry.register(
            "shards_owned",
            "Shards this worker holds a lease on",
            m.shards_owned.clone(),
        );
        registry.register(
            "shards_stopped",
            "Shards stopped until an operator acts",
            m.shards_stopped.clone(),
        );
        registry.register(
            "lease_changes",
            "Lease changes by kind",
            m.lease_changes.clone(),
        );
        registry.register(
            "checkpoints_written",
            "Checkpoints written to the lease table",
            m.checkpoints.clone(),
        );
        registry.register(
            "gaps",
            "Trimmed gaps: stream records lost before they were read",
            m.gaps.clone(),
        );
        registry.register(
            "records_unversioned",
            "lww records without a version (fallback applied)",
            m.unversioned.clone(),
        );
        registry.register(
            "records_restamped",
            "lww records from writers that do not stamp versions, replicated with a fresh version",
            m.restamped.clone(),
        );
        registry.register(
            "oldest_unapplied_age_seconds",
            "Age of the oldest record read but not yet applied, over the shards held (0 when caught up)",
            m.oldest_unapplied_age.clone(),
        );
        registry.register(
            "shards_stalled",
            "Shards held that made no progress for the stall timeout",
            m.shards_stalled.clone(),
        );
        registry.register(
            "dead_letters",
            "Records the target refused for good, parked in the dead-letter table",
            m.dead_letters.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// Counts a lease change.
    pub fn lease_change(&self, change: &'static str) {
        self.lease_changes
            .get_or_create(&[("change", change)])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Progress of one shard task, for `/healthz` and the lag gauge.
#[derive(Debug)]
struct ShardProgress {
    /// Last read that found the shard caught up, or last checkpoint that moved.
    last: Instant,
    /// ApproximateCreationDateTime (epoch seconds) of the oldest record read and not yet applied.
    oldest_unapplied: Option<f64>,
    /// What the task is doing, for the stall report.
    doing: &'static str,
    /// The current stall was logged.
    reported: bool,
    /// The last read returned records (a shard with a backlog or a stream of changes); a shard that
    /// has not read yet counts as busy, so shards starting together share the bound from the start.
    busy: bool,
}

/// What `/healthz` and `/readyz` report.
#[derive(Debug)]
pub struct Health {
    stopped: AtomicI64,
    stopping: std::sync::atomic::AtomicBool,
    last_lease_sync: Mutex<Option<Instant>>,
    lease_interval: Duration,
    stall_timeout: Duration,
    shards: Mutex<std::collections::BTreeMap<String, ShardProgress>>,
}

/// Tracks one shard task's progress while it lives; dropping it (the task ended, or was aborted) stops
/// tracking.
#[derive(Debug)]
pub struct ShardTracker {
    health: Arc<Health>,
    shard: String,
}

impl ShardTracker {
    /// The shard is caught up: a read returned nothing new (or every record read so far is applied).
    pub fn caught_up(&self) {
        self.health.update(&self.shard, |p| {
            p.last = Instant::now();
            p.oldest_unapplied = None;
            p.reported = false;
            p.busy = false;
        });
    }

    /// Records were read that are not applied yet; `created` is the oldest one's creation time.
    pub fn pending(&self, created: Option<f64>) {
        self.health.update(&self.shard, |p| {
            p.busy = true;
            if p.oldest_unapplied.is_none() {
                p.oldest_unapplied = created;
            }
        });
    }

    /// A checkpoint moved: progress, and the records before `next_created` (if any remain) are applied.
    pub fn checkpointed(&self, next_created: Option<f64>) {
        self.health.update(&self.shard, |p| {
            p.last = Instant::now();
            p.oldest_unapplied = next_created;
            p.reported = false;
        });
    }

    /// What the task is doing now (for the stall report).
    pub fn doing(&self, what: &'static str) {
        self.health.update(&self.shard, |p| p.doing = what);
    }
}

impl Drop for ShardTracker {
    fn drop(&mut self) {
        self.health
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.shard);
    }
}

impl Health {
    /// Health for a worker whose lease loop runs every `lease_interval`, with the stall timeout.
    pub fn new(lease_interval: Duration, stall_timeout: Duration) -> Health {
        Health {
            stopped: AtomicI64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            last_lease_sync: Mutex::new(None),
            lease_interval,
            stall_timeout,
            shards: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// How many of this worker's shards returned records at their last read.
    pub fn busy_shards(&self) -> usize {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.busy)
            .count()
    }

    /// Starts tracking a shard task.
    pub fn track(self: &Arc<Self>, shard: &str) -> ShardTracker {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                shard.to_owned(),
                ShardProgress {
                    last: Instant::now(),
                    oldest_unapplied: None,
                    doing: "starting",
                    reported: false,
                    busy: true,
                },
            );
        ShardTracker {
            health: self.clone(),
            shard: shard.to_owned(),
        }
    }

    fn update(&self, shard: &str, change: impl FnOnce(&mut ShardProgress)) {
        if let Some(p) = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(shard)
        {
            change(p);
        }
    }

    /// Shards with no progress for the stall timeout, with how long and what they were doing. Each
    /// stall is logged once (ERROR: the task will be replaced).
    pub fn stalled(&self) -> Vec<String> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (shard, p) in shards.iter_mut() {
            let idle = p.last.elapsed();
            if idle >= self.stall_timeout {
                if !p.reported {
                    p.reported = true;
                    tracing::error!(
                        shard_id = %shard, seconds = idle.as_secs(), doing = p.doing,
                        "Shard stalled: no progress for longer than --stall-timeout; /healthz fails so the task is replaced."
                    );
                }
                out.push(format!(
                    "shard {shard} made no progress for {}s ({})",
                    idle.as_secs(),
                    p.doing
                ));
            }
        }
        out
    }

    /// `/healthz`: fails while a held shard is stalled.
    pub fn live(&self) -> Result<(), String> {
        let stalled = self.stalled();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("; "))
        }
    }

    /// Age of the oldest unapplied record over the tracked shards, at `now_epoch_secs`.
    pub fn oldest_unapplied_age(&self, now_epoch_secs: f64) -> f64 {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|p| p.oldest_unapplied)
            .map(|created| (now_epoch_secs - created).max(0.0))
            .fold(0.0, f64::max)
    }

    /// Sets the gauges that follow progress (called on every scrape and every lease-loop pass).
    pub fn publish(&self, metrics: &Metrics) {
        let now = tworegion_common::version::system_millis() as f64 / 1000.0;
        metrics
            .oldest_unapplied_age
            .set(self.oldest_unapplied_age(now));
        metrics.shards_stalled.set(self.stalled().len() as i64);
    }

    /// Shutdown began: not ready any more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// A halted shard's lease went to another worker (or was released): it no longer counts here.
    pub fn shard_resumed(&self) {
        self.stopped.fetch_sub(1, Ordering::SeqCst);
    }

    /// The lease loop renewed and listed leases successfully.
    pub fn lease_synced(&self) {
        *self
            .last_lease_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A shard stopped (gap or unappliable record).
    pub fn shard_stopped(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }

    /// Ready: the lease loop is current (synced within three intervals) and no shard is stopped.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down".to_owned());
        }
        let stopped = self.stopped.load(Ordering::SeqCst);
        if stopped > 0 {
            return Err(format!("{stopped} shard(s) stopped; see the ERROR logs"));
        }
        match *self
            .last_lease_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            None => Err("the lease table has not been read yet".to_owned()),
            Some(at) if at.elapsed() > self.lease_interval * 3 => Err(format!(
                "leases not renewed for {:.1}s",
                at.elapsed().as_secs_f64()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// One path's metrics and health, served on the process's endpoints.
#[derive(Debug, Clone)]
pub struct Served {
    /// The `path` label of its metrics (`None`: unlabelled, the flag form's single path).
    pub label: Option<String>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its health.
    pub health: Arc<Health>,
}

#[derive(Clone)]
struct AppState {
    paths: Arc<Vec<Served>>,
}

/// The exposition of every path's metrics as one: each family's help and type once, then every
/// path's samples of it with a `path` label (Prometheus refuses a family declared twice).
pub fn render_all(paths: &[Served]) -> String {
    if let [only] = paths
        && only.label.is_none()
    {
        return only.metrics.render();
    }
    // Families in first-seen order: (name, header lines, sample lines).
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for served in paths {
        let label = served.label.as_deref().map(|l| {
            let escaped = l
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("path=\"{escaped}\"")
        });
        let mut current: Option<usize> = None;
        for line in served.metrics.render().lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (_kind, name) = (words.next(), words.next().unwrap_or_default());
                let at = match families.iter().position(|(n, _, _)| n == name) {
                    Some(at) => at,
                    None => {
                        families.push((name.to_owned(), Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                let headers = &mut families[at].1;
                if !headers.iter().any(|h| h == line) {
                    headers.push(line.to_owned());
                }
                current = Some(at);
                continue;
            }
            let sample = match &label {
                None => line.to_owned(),
                Some(label) => match line.find(['{', ' ']) {
                    Some(at) if line.as_bytes()[at] == b'{' => {
                        let close = if line.as_bytes().get(at + 1) == Some(&b'}') {
                            ""
                        } else {
                            ","
                        };
                        format!("{}{{{label}{close}{}", &line[..at], &line[at + 1..])
                    }
                    Some(at) => format!("{}{{{label}}}{}", &line[..at], &line[at..]),
                    None => line.to_owned(),
                },
            };
            match current {
                Some(at) => families[at].2.push(sample),
                None => families.push((String::new(), Vec::new(), vec![sample])),
            }
        }
    }
    let mut out = String::new();
    for (_, headers, samples) in families {
        for line in headers.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Every path's result of `check`, or the failures, each named by its path.
fn all_paths(
    paths: &[Served],
    check: impl Fn(&Health) -> Result<(), String>,
) -> Result<(), String> {
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            check(&p.health).err().map(|why| match &p.label {
                Some(label) => format!("{label}: {why}"),
                None => why,
            })
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    for p in state.paths.iter() {
        p.health.publish(&p.metrics);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_all(&state.paths),
    )
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match all_paths(&state.paths, Health::live) {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match all_paths(&state.paths, Health::ready) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds `addr` and serves the endpoints for `paths` until `stop` is cancelled: `/metrics` with every
/// path's metrics, `/healthz` and `/readyz` failing while any path fails them. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    paths: Vec<Served>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            paths: Arc::new(paths),
        });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok((bound, task))
}

/// `replicator healthcheck`: GET /healthz on `addr` (0.0.0.0 becomes 127.0.0.1); true on a 200.
pub async fn check_health(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(format!("GET /healthz HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| format!("no answer from {target} within 3 s"))?
        .map_err(|e| format!("{target}: {e}"))?;
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("{target} answered {status_line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names() {
        let m = Metrics::default();
        m.records_read.inc_by(3);
        m.error("throttled");
        m.lag.get_or_create(&[("source", "version")]).observe(0.2);
        let text = m.render();
        assert!(text.contains("replicator_records_read_total 3"), "{text}");
        assert!(
            text.contains("replicator_errors_total{kind=\"throttled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "replicator_replication_lag_seconds_bucket{le=\"0.25\",source=\"version\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn several_paths_render_as_one_exposition_labelled_by_path() {
        let path = |label: &str, read: u64| {
            let metrics = Arc::new(Metrics::default());
            metrics.records_read.inc_by(read);
            metrics.error("throttled");
            metrics
                .lag
                .get_or_create(&[("source", "stream")])
                .observe(0.2);
            Served {
                label: Some(label.to_owned()),
                metrics,
                health: Arc::new(Health::new(Duration::from_secs(1), Duration::from_secs(60))),
            }
        };
        let text = render_all(&[path("us-east-1/a > us-west-2/a", 3), path("x\"y", 5)]);
        // Each family is declared once, however many paths report it, and the text ends once.
        for header in text
            .lines()
            .filter(|l| l.starts_with("# ") && *l != "# EOF")
        {
            assert_eq!(
                text.lines().filter(|l| l == &header).count(),
                1,
                "{header} twice in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
        for line in [
            "replicator_records_read_total{path=\"us-east-1/a > us-west-2/a\"} 3",
            "replicator_records_read_total{path=\"x\\\"y\"} 5",
            "replicator_errors_total{path=\"x\\\"y\",kind=\"throttled\"} 1",
            "replicator_replication_lag_seconds_bucket{path=\"us-east-1/a > us-west-2/a\",le=\"0.25\",source=\"stream\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        // The samples of a family follow its declaration, both paths' together.
        let declared = text
            .lines()
            .position(|l| l.starts_with("# TYPE replicator_records_read "))
            .unwrap();
        let samples: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("replicator_records_read_total{"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(samples, vec![declared + 1, declared + 2], "{text}");
        // A single path from a file is labelled too (the flag form's one path is not).
        let one = render_all(&[path("p", 1)]);
        assert!(
            one.lines()
                .any(|l| l == "replicator_records_read_total{path=\"p\"} 1"),
            "{one}"
        );
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_follows_health() {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::new(Duration::from_secs(1), Duration::from_secs(60)));
        let stop = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            vec![Served {
                label: None,
                metrics,
                health: health.clone(),
            }],
            stop.clone(),
        )
        .await
        .unwrap();
        check_health(addr).await.unwrap();
        assert!(
            health.ready().is_err(),
            "not ready before the first lease sync"
        );
        health.lease_synced();
        assert!(health.ready().is_ok());
        health.shard_stopped();
        assert!(health.ready().unwrap_err().contains("stopped"));
        stop.cancel();
        task.await.unwrap().unwrap();
        assert!(check_health(addr).await.is_err(), "closed after stop");
    }
}
