//! `loadtest run` and `loadtest failover`: the load, the scripted fault, the checks and the results.
//!
//! Phases: `steady` (before the fault), `failover` (fault to recovery), `failback` (recovery to the
//! end of the load), `verify` (after the load: catch-up and the fail-back comparison). Everything
//! is bounded: the load by `--duration`, each request by `--timeout`, each lag sample by
//! `--lag-limit`, the catch-up by `--catch-up`. Ctrl-C (or SIGTERM) stops the load, undoes the
//! fault and still writes the partial results (`completed: false`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tworegion_common::aws::AwsOptions;
use tworegion_common::duration::parse_duration;

use crate::client::{Client, Failure, Url};
use crate::dns::Dns;
use crate::faults::{self, FaultKind, Target, Undo};
use crate::measure;
use crate::results::{self, FaultRecord, LagSample, Phase, Results, SCHEMA, Settings, Summary};
use crate::schedule;
use crate::stats::{Outcome, Recorder, percentiles};
use crate::verify::{self, Region};
use crate::workload::{self, Ack, Op, Workload, WriteOutcome};

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

fn region_url(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(r, u)| !r.is_empty() && !u.is_empty())
        .map(|(r, u)| (r.to_owned(), u.to_owned()))
        .ok_or_else(|| format!("{text:?}: give REGION=URL, for example us-east-1=https://abc.execute-api.us-east-1.amazonaws.com/prod"))
}

/// The load: what `run` and `failover` share.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The API's URL (the failover domain name), for example https://api.example.com. With
    /// --local: the local environment's public URL unless given.
    #[arg(long)]
    pub url: Option<String>,
    /// The environment variable holding the API key (sent as x-api-key). With --local: the local
    /// environment's key unless given.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Requests per second (constant arrival rate, open loop).
    #[arg(long)]
    pub rate: f64,
    /// How long the load runs (30s, 5m).
    #[arg(long, value_parser = duration)]
    pub duration: Duration,
    /// Share of requests that write (0 to 1): create 50%, update 35%, delete 15% of writes; reads
    /// are get 80%, list 20%.
    #[arg(long, default_value_t = 0.5)]
    pub write_ratio: f64,
    /// A DNS server (IP:PORT) for the URL's host, instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,
    /// The most connections (and so requests) at once.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Each request's time limit, connection included.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Where results.json and report.html go (default loadtest-results/<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Against the local two-region environment (`deployer local up`): URL, resolver, API key,
    /// regional endpoints and replication mode come from it.
    #[arg(long)]
    pub local: bool,
    /// The local environment's state directory (as `deployer local --state-dir`).
    #[arg(long, env = "DEPLOYER_LOCAL_STATE", default_value = ".tworegion-local")]
    pub local_state_dir: PathBuf,
    /// A region's own endpoint (REGION=URL, repeatable), read directly for replication lag and the
    /// loss checks (for example the regional execute-api URL with its stage).
    #[arg(long = "region-url", value_name = "REGION=URL", value_parser = region_url)]
    pub region_urls: Vec<(String, String)>,
    /// The replication mode the checks expect (`lww`: both ways; `one-way`: primary to
    /// secondary). With --local: the environment's.
    #[arg(long, value_parser = ["lww", "one-way"])]
    pub mode: Option<String>,
    /// Writes sampled per second for replication lag.
    #[arg(long, default_value_t = 5.0)]
    pub lag_samples: f64,
    /// How long a lag sample waits for the other region.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub lag_limit: Duration,
    /// The AWS profile (AWS faults).
    #[arg(long)]
    pub aws_profile: Option<String>,
    /// An AWS endpoint (AWS faults against a local AWS).
    #[arg(long)]
    pub aws_endpoint_url: Option<String>,
}

/// The scripted fault.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// When to inject (from the start of the load).
    #[arg(long, value_parser = duration)]
    pub fault_at: Duration,
    /// When to undo it.
    #[arg(long, value_parser = duration)]
    pub recover_at: Duration,
    /// local:outage | local:unhealthy | aws:lambda-concurrency-zero | aws:invert-health-check |
    /// cmd:'COMMAND'.
    #[arg(long)]
    pub fault: String,
    /// The region to fail (default: the one serving at the fault).
    #[arg(long)]
    pub fault_region: Option<String>,
    /// aws:lambda-concurrency-zero: the function in the failed region.
    #[arg(long)]
    pub function: Option<String>,
    /// aws:invert-health-check: the failed region's Route 53 health check.
    #[arg(long)]
    pub health_check_id: Option<String>,
    /// cmd: the command that undoes it.
    #[arg(long)]
    pub recover_cmd: Option<String>,
    /// After the load, how long to wait for both regions to agree before comparing.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub catch_up: Duration,
    /// Exit 3 when rto_seconds is above this (or not reached).
    #[arg(long)]
    pub max_rto: Option<f64>,
    /// Exit 3 when rpo_seconds is above this.
    #[arg(long)]
    pub max_rpo: Option<f64>,
    /// Exit 3 when missing_after_failback is above this.
    #[arg(long)]
    pub max_missing_after_failback: Option<u64>,
}

/// Everything checked and resolved before any load is sent.
struct Plan {
    url: Url,
    url_text: String,
    resolver: Option<SocketAddr>,
    api_key: Option<String>,
    regions: BTreeMap<String, Url>,
    mode: String,
    control: Option<SocketAddr>,
    /// The region the local environment served from at the start (the fault's default region
    /// when the answers do not say).
    serving: Option<String>,
    fault: Option<(FaultKind, FaultArgs)>,
    out: PathBuf,
    aws: AwsOptions,
}

async fn plan(load: &LoadArgs, fault: Option<&FaultArgs>) -> Result<Plan, String> {
    if !(load.rate.is_finite() && load.rate > 0.0) {
        return Err(format!(
            "--rate {}: give a number of requests per second above 0, for example --rate 100",
            load.rate
        ));
    }
    if load.duration.is_zero() {
        return Err("--duration 0: give how long to run, for example --duration 60s".into());
    }
    if !(0.0..=1.0).contains(&load.write_ratio) {
        return Err(format!(
            "--write-ratio {}: give a share from 0 to 1, for example 0.5",
            load.write_ratio
        ));
    }
    if load.connections == 0 {
        return Err("--connections 0: give at least 1".into());
    }
    if load.timeout.is_zero() {
        return Err("--timeout 0: give a time limit, for example 10s".into());
    }
    if !(load.lag_samples.is_finite() && (load.lag_samples == 0.0 || load.lag_samples >= 1.0)) {
        return Err(format!(
            "--lag-samples {}: give 0 (no lag samples) or at least 1 sample per second",
            load.lag_samples
        ));
    }
    let fault = match fault {
        None => None,
        Some(f) => {
            let kind = FaultKind::parse(&f.fault)?;
            if f.fault_at >= f.recover_at {
                return Err(format!(
                    "--fault-at {:?} is not before --recover-at {:?}: recover after the fault",
                    f.fault_at, f.recover_at
                ));
            }
            if f.recover_at >= load.duration {
                return Err(format!(
                    "--duration {:?} ends before --recover-at {:?} (and the fail-back after it): \
                     give a longer --duration, for example {}s",
                    load.duration,
                    f.recover_at,
                    f.recover_at.as_secs() + 30
                ));
            }
            if kind.is_local() && !load.local {
                return Err(format!(
                    "--fault {}: a local fault needs --local (the local environment from \
                     `deployer local up`)",
                    f.fault
                ));
            }
            Some((kind, f.clone()))
        }
    };
    let env = if load.local {
        Some(crate::local::find(&load.local_state_dir).await?)
    } else {
        None
    };
    let url_text = match (&load.url, &env) {
        (Some(u), _) => u.clone(),
        (None, Some(e)) => e.url.clone(),
        (None, None) => {
            return Err("give --url URL (the API's failover domain) or --local".into());
        }
    };
    let url = Url::parse(&url_text)?;
    let api_key = match (&load.api_key_env, &env) {
        (Some(var), _) => Some(
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!(
                        "--api-key-env {var}: {var} is not set; export it with the API key \
                     (`deployer status --show-api-key` prints it)"
                    )
                })?,
        ),
        (None, Some(e)) => e.api_key.clone(),
        (None, None) => {
            return Err(
                "give --api-key-env VAR (the variable holding the API key; the API refuses \
                 requests without it)"
                    .into(),
            );
        }
    };
    let resolver = match (load.resolver, &env) {
        (Some(r), _) => Some(r),
        (None, Some(e)) if load.url.is_none() => Some(
            e.dns
                .parse()
                .map_err(|_| format!("the local environment's DNS address {:?}", e.dns))?,
        ),
        _ => None,
    };
    if let Some(key) = &api_key
        && hyper::header::HeaderValue::from_str(key).is_err()
    {
        return Err(
            "the API key has characters a header cannot carry (a line break, non-ASCII): \
             check the variable's value"
                .into(),
        );
    }
    let mut regions = BTreeMap::new();
    if let Some(e) = &env {
        for (name, r) in &e.regions {
            regions.insert(name.clone(), Url::parse(&r.endpoint)?);
        }
    }
    for (name, u) in &load.region_urls {
        regions.insert(
            name.clone(),
            Url::parse(u).map_err(|e| format!("--region-url {name}: {e}"))?,
        );
    }
    let mode = load
        .mode
        .clone()
        .or_else(|| env.as_ref().map(|e| e.mode().to_owned()))
        .unwrap_or_else(|| "lww".to_owned());
    let control = env.as_ref().map(|e| e.control_addr()).transpose()?;
    if let Some((_, f)) = &fault
        && let Some(r) = &f.fault_region
        && !regions.is_empty()
        && !regions.contains_key(r)
    {
        return Err(format!(
            "--fault-region {r} is not one of the regions ({}): give one of them",
            regions.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let aws = AwsOptions {
        profile: load.aws_profile.clone(),
        endpoint_url: load.aws_endpoint_url.clone(),
        placeholder_credentials: false,
    };
    if let Some((kind, f)) = &fault {
        let target = Target {
            region: f.fault_region.clone().unwrap_or_default(),
            control,
            function: f.function.clone(),
            health_check_id: f.health_check_id.clone(),
            recover_cmd: f.recover_cmd.clone(),
            aws: aws.clone(),
        };
        faults::preflight(kind, &target).await?;
    }
    let out = match &load.out {
        Some(o) => o.clone(),
        // The process ID too: agents started together on one host get a directory each.
        None => PathBuf::from("loadtest-results").join(format!(
            "{}-{}",
            utc_stamp(),
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&out)
        .map_err(|e| format!("--out {}: cannot create it: {e}", out.display()))?;
    Ok(Plan {
        url,
        url_text,
        resolver,
        api_key,
        regions,
        mode,
        control,
        serving: env.as_ref().and_then(|e| e.serving.clone()),
        fault,
        out,
        aws,
    })
}

fn utc_stamp() -> String {
    // For example 20261201T020012Z.
    tworegion_common::time::basic_utc(tworegion_common::version::system_millis() / 1000)
}

/// What the run shares between its tasks.
struct Shared {
    start: Instant,
    recorder: Mutex<Recorder>,
    workload: Workload,
    phase: Mutex<String>,
    phases: Mutex<Vec<Phase>>,
    lag_samples: Mutex<Vec<LagSample>>,
    lag_budget: Mutex<(u64, f64)>,
    fault_active: AtomicBool,
    first_region: Mutex<Option<String>>,
    pending_lag: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn enter(&self, phase: &str) {
        *lock(&self.phase) = phase.to_owned();
        lock(&self.phases).push(Phase {
            name: phase.to_owned(),
            at: self.now(),
        });
    }

    /// Whether to sample this write for lag: at most `per_second` a second.
    fn take_lag_sample(&self, per_second: f64) -> bool {
        let second = self.start.elapsed().as_secs();
        let mut b = lock(&self.lag_budget);
        if b.0 != second {
            *b = (second, 0.0);
        }
        if b.1 + 1.0 <= per_second {
            b.1 += 1.0;
            true
        } else {
            false
        }
    }
}

/// The id of a created todo from its JSON body.
fn created_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

fn classify(result: &Result<crate::client::Answer, Failure>) -> Outcome {
    match result {
        Ok(a) if (200..300).contains(&a.status) => {
            Outcome::Ok(a.region.clone().unwrap_or_else(|| "unknown".to_owned()))
        }
        Ok(a) if a.status >= 500 => Outcome::Status5xx(a.region.clone()),
        Ok(a) if matches!(a.status, 404 | 409 | 412) => Outcome::DataAnswer(a.region.clone()),
        Ok(a) => Outcome::Status4xx(a.region.clone()),
        Err(Failure::Timeout) => Outcome::Timeout,
        Err(Failure::Connect { .. }) => Outcome::Connect,
    }
}

fn write_outcome(
    op: &Op,
    result: &Result<crate::client::Answer, Failure>,
    at: f64,
) -> WriteOutcome {
    match result {
        Ok(a) if (200..300).contains(&a.status) => {
            let id = match op {
                Op::Create => created_id(&a.body),
                Op::Update(id) | Op::Delete(id) => Some(id.clone()),
                _ => None,
            };
            match id {
                Some(id) => WriteOutcome::Acked {
                    id,
                    version: a.etag.as_deref().and_then(|e| e.parse().ok()),
                    region: a.region.clone().unwrap_or_else(|| "unknown".to_owned()),
                    at,
                },
                None => WriteOutcome::MaybeApplied,
            }
        }
        Ok(a) if a.status >= 500 => WriteOutcome::MaybeApplied,
        Ok(_) => WriteOutcome::NotApplied,
        Err(Failure::Connect { sent: false, .. }) => WriteOutcome::NotApplied,
        Err(_) => WriteOutcome::MaybeApplied,
    }
}

/// The region with the most successes in seconds `[from, to)`.
fn serving(r: &Recorder, from: usize, to: usize) -> Option<String> {
    let mut count: BTreeMap<&str, u64> = BTreeMap::new();
    for s in r.seconds.iter().take(to).skip(from) {
        for (region, n) in &s.by_region {
            *count.entry(region).or_default() += n;
        }
    }
    count
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(r, _)| r.to_owned())
}

/// The outcome of a run: its results and the exit code.
pub struct Outcome3 {
    /// The document written.
    pub results: Results,
    /// 0 completed, 1 interrupted, 3 a threshold exceeded.
    pub code: u8,
}

/// Runs `run` (no fault) or `failover`.
pub async fn execute(load: LoadArgs, fault: Option<FaultArgs>) -> Result<Outcome3, String> {
    let plan = plan(&load, fault.as_ref()).await?;
    let dns = Arc::new(Dns::new(&plan.url.host, plan.url.port, plan.resolver).await?);
    let client = Arc::new(Client::new(
        &plan.url,
        dns.clone(),
        plan.api_key.clone(),
        load.connections,
        load.timeout,
    )?);
    let mut regions: BTreeMap<String, Arc<Region>> = BTreeMap::new();
    for (name, u) in &plan.regions {
        let rdns = Arc::new(Dns::new(&u.host, u.port, None).await?);
        regions.insert(
            name.clone(),
            Arc::new(Region {
                name: name.clone(),
                client: Client::new(u, rdns, plan.api_key.clone(), 32, Duration::from_secs(5))?,
            }),
        );
    }

    // Ctrl-C or SIGTERM: `interrupt` stops the load, the fault script (which undoes the fault),
    // the lag samples and the verification; the results are still written. A second signal exits
    // at once (the fault, if any, must then be undone by hand: the first message says which).
    let interrupt = CancellationToken::new();
    let stop = interrupt.child_token();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupt = interrupt.clone();
        let interrupted = interrupted.clone();
        let fault_text = fault.as_ref().map(|f| f.fault.clone());
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            for n in 0..2 {
                #[cfg(unix)]
                let term_recv = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let term_recv = std::future::pending::<()>();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = term_recv => {}
                }
                if n == 0 {
                    interrupted.store(true, Ordering::SeqCst);
                    eprintln!(
                        "loadtest: interrupted; stopping the load, undoing the fault, writing \
                         results (interrupt again to exit at once)"
                    );
                    interrupt.cancel();
                } else {
                    eprintln!(
                        "loadtest: interrupted twice: exiting now{}",
                        fault_text
                            .as_deref()
                            .map(|f| format!("; if {f} was injected, undo it by hand"))
                            .unwrap_or_default()
                    );
                    std::process::exit(1);
                }
            }
        });
    }

    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        recorder: Mutex::new(Recorder::default()),
        workload: Workload::new(load.write_ratio, started_at_ms ^ 0x5DEE_CE66),
        phase: Mutex::new(String::new()),
        phases: Mutex::new(Vec::new()),
        lag_samples: Mutex::new(Vec::new()),
        lag_budget: Mutex::new((0, 0.0)),
        fault_active: AtomicBool::new(false),
        first_region: Mutex::new(None),
        pending_lag: AtomicU64::new(0),
    });
    shared.enter("steady");
    let refresh_stop = CancellationToken::new();
    tokio::spawn(dns.clone().refresh(start, refresh_stop.clone()));
    let lag_stop = interrupt.child_token();

    // Progress: one line a second on a terminal.
    let progress_stop = CancellationToken::new();
    if !load.quiet && std::io::stderr().is_terminal() {
        let shared = shared.clone();
        let stop = progress_stop.clone();
        let rate = load.rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let t = shared.start.elapsed().as_secs() as usize;
                if t == 0 {
                    continue;
                }
                let line = {
                    let r = lock(&shared.recorder);
                    let s = r.seconds.get(t - 1).cloned().unwrap_or_default();
                    let n = s.succeeded + s.failed.total();
                    let ok = if n == 0 {
                        100.0
                    } else {
                        s.succeeded as f64 * 100.0 / n as f64
                    };
                    let p99 = s
                        .latency
                        .as_ref()
                        .map(|h| percentiles(h).p99)
                        .unwrap_or(0.0);
                    format!(
                        "t={t:>4}s  {:<8}  rate {n:>6}/s of {rate}  ok {ok:5.1}%  p99 {p99:8.1} ms  serving {}",
                        lock(&shared.phase),
                        serving(&r, t - 1, t).unwrap_or_else(|| "-".into())
                    )
                };
                eprintln!("{line}");
            }
        });
    }

    // The scripted fault.
    let mut fault_task = None;
    if let Some((kind, f)) = plan.fault.clone() {
        let shared = shared.clone();
        let stop = stop.clone();
        let regions = regions.clone();
        let control = plan.control;
        let aws = plan.aws.clone();
        let default_region = plan.serving.clone();
        fault_task = Some(tokio::spawn(async move {
            let place = Place {
                control,
                aws,
                default_region,
            };
            script(shared, stop, kind, f, place, regions).await
        }));
    }

    // The load.
    let lag_limit = load.lag_limit;
    let lag_rate = load.lag_samples;
    let mode = plan.mode.clone();
    let lag_tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
    let sent = schedule::drive(start, load.rate, load.duration, &stop, |index, intended| {
        let shared = shared.clone();
        let client = client.clone();
        let regions = regions.clone();
        let mode = mode.clone();
        let lag_tasks = lag_tasks.clone();
        let lag_stop = lag_stop.clone();
        // From the earlier of the intended start and the real one: a late start (a slow
        // generator, a stall) counts against the answer, an early one never flatters it.
        let from = intended.min(shared.start.elapsed());
        async move {
            let op = shared.workload.next_op();
            let (method, path, body) = op.request(index);
            let result = client.send(method, &path, body).await;
            let latency = shared.start.elapsed().saturating_sub(from);
            let outcome = classify(&result);
            if let Outcome::Ok(region) = &outcome {
                lock(&shared.first_region).get_or_insert_with(|| region.clone());
            }
            lock(&shared.recorder).record(intended, latency, &outcome);
            if !op.is_write() {
                return;
            }
            let done = write_outcome(&op, &result, shared.now());
            if let WriteOutcome::Acked {
                id,
                version: Some(version),
                region,
                ..
            } = &done
            {
                let source_ok =
                    mode == "lww" || lock(&shared.first_region).as_deref() == Some(region.as_str());
                let other = regions
                    .iter()
                    .find(|(n, _)| *n != region)
                    .map(|(_, r)| r.clone());
                if let Some(to) = other
                    && source_ok
                    && !shared.fault_active.load(Ordering::SeqCst)
                    && shared.take_lag_sample(lag_rate)
                {
                    let (id, version, from, t) =
                        (id.clone(), *version, region.clone(), shared.now());
                    let acked = Instant::now();
                    shared.pending_lag.fetch_add(1, Ordering::SeqCst);
                    let shared2 = shared.clone();
                    lock(&lag_tasks).spawn(async move {
                        let to_name = to.name.clone();
                        let lag_ms = verify::lag(to, id, version, acked, lag_limit, lag_stop).await;
                        lock(&shared2.lag_samples).push(LagSample {
                            t,
                            from,
                            to: to_name,
                            lag_ms,
                        });
                        shared2.pending_lag.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
            shared.workload.done(&op, done);
        }
    })
    .await;
    let load_end = shared.now();

    // The fault's end (it undoes itself on stop too).
    let mut fault_report = None;
    if let Some(task) = fault_task {
        stop.cancel();
        if let Ok(report) = task.await {
            fault_report = Some(report);
        }
    }
    progress_stop.cancel();

    // Lag samples still waiting (each bounded by --lag-limit).
    let lag_wait = tokio::time::timeout(lag_limit + Duration::from_secs(5), async {
        loop {
            let next = lock(&lag_tasks).try_join_next();
            match next {
                Some(_) => {}
                None if shared.pending_lag.load(Ordering::SeqCst) == 0 => break,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = lag_wait.await;

    // Fail-back comparison.
    let acks = shared.workload.acks();
    let uncertain = shared.workload.uncertain();
    let mut summary = Summary::default();
    if let (Some((_, f)), Some(report)) = (&plan.fault, &fault_report)
        && report.injected
        && !interrupt.is_cancelled()
    {
        shared.enter("verify");
        let failed = report.region.clone();
        let primary = regions.get(&failed).cloned();
        let other = regions
            .iter()
            .find(|(n, _)| **n != failed)
            .map(|(_, r)| r.clone());
        match (primary, other) {
            (Some(p), Some(o)) => {
                let expected = workload::expected(&acks, &uncertain);
                let (fb, took) = verify::catch_up(&expected, &p, &o, f.catch_up, &interrupt).await;
                summary.catch_up_seconds = Some(took.as_secs_f64());
                match fb {
                    Some(fb) => {
                        summary.missing_after_failback = Some(fb.missing.len() as u64);
                        summary.stale_after_failback = Some(fb.stale.len() as u64);
                        summary.checked_after_failback = Some(fb.checked);
                        if fb.unreadable > 0 {
                            summary.notes.push(format!(
                                "{} keys could not be read after fail-back and are not counted",
                                fb.unreadable
                            ));
                        }
                    }
                    None => summary
                        .notes
                        .push("the fail-back comparison was interrupted".into()),
                }
            }
            _ => summary.notes.push(
                "missing_after_failback and stale_after_failback need both regions' endpoints \
                 (--region-url REGION=URL for each, or --local)"
                    .into(),
            ),
        }
    }
    refresh_stop.cancel();
    lag_stop.cancel();
    let interrupted_now = interrupted.load(Ordering::SeqCst);

    // The figures.
    let recorder = lock(&shared.recorder).clone();
    let (requests, succeeded, failed) = recorder.totals();
    summary.requests = requests;
    summary.succeeded = succeeded;
    summary.failed = failed;
    summary.rate_asked = load.rate;
    let ran = if interrupted_now {
        load_end
    } else {
        load.duration.as_secs_f64()
    };
    summary.rate_achieved = if ran > 0.0 { sent as f64 / ran } else { 0.0 };
    summary.latency_ms = percentiles(&recorder.overall);
    summary.latency_ms_by_region = recorder
        .by_region
        .iter()
        .map(|(k, h)| (k.clone(), percentiles(h)))
        .collect();
    summary.acked_writes = acks.len() as u64;
    summary.uncertain_keys = uncertain.len() as u64;
    summary.connections_opened = client.connections_opened();
    let (lookups, dns_failures) = dns.counts();
    summary.dns_lookups = lookups;
    summary.dns_failures = dns_failures;
    let series = recorder.series();
    let dns_changes = dns.changes();
    let mut faults_done = Vec::new();
    match (&plan.fault, &fault_report) {
        (Some(_), Some(report)) => {
            let fault_at = report.record.injected_at;
            let recover_at = report.record.undone_at.unwrap_or(load_end);
            summary.primary = serving(&recorder, 0, fault_at.floor() as usize);
            summary.failed_region = Some(report.region.clone());
            summary.rto_seconds = measure::rto_seconds(&series, fault_at, recover_at);
            summary.detected_seconds = measure::detected_seconds(&series, fault_at, &report.region);
            summary.dns_moved_seconds = crate::dns::moved_after(&dns_changes, fault_at);
            let from = recover_at.floor() as usize;
            summary.failback_seconds = (from..series.len())
                .find(|&s| {
                    series[s]
                        .by_region
                        .get(&report.region)
                        .is_some_and(|n| *n > 0)
                })
                .map(|s| (s as f64 - recover_at).max(0.0));
            if let Some(check) = &report.failover_check {
                summary.missing_after_failover = Some(check.missing);
                summary.checked_after_failover = Some(check.checked);
                summary.rpo_seconds = Some(check.rpo_seconds);
                if check.unreadable > 0 {
                    summary.notes.push(format!(
                        "{} keys could not be read in the survivor after the failover and are \
                         not counted",
                        check.unreadable
                    ));
                }
            } else {
                summary.notes.push(
                    report
                        .failover_note
                        .clone()
                        .unwrap_or_else(|| "missing_after_failover was not measured".to_owned()),
                );
            }
            if report.injected {
                faults_done.push(report.record.clone());
            }
        }
        _ => summary.primary = serving(&recorder, 0, recorder.seconds.len()),
    }
    let lag_samples = lock(&shared.lag_samples).clone();
    summary.replication_lag_ms = results::lag(
        &lag_samples,
        if regions.is_empty() {
            "not measured: no regional endpoints (--region-url REGION=URL, or --local)"
        } else {
            "GET /todos/{id} through the other region's own endpoint (a consistent read) until its ETag version is at least the acknowledged one"
        },
    );
    let (series_out, histograms) = results::from_recorder(&recorder);
    let phases = lock(&shared.phases).clone();
    let results = Results {
        schema: SCHEMA.to_owned(),
        command: if plan.fault.is_some() {
            "failover"
        } else {
            "run"
        }
        .to_owned(),
        completed: !interrupted_now,
        started_at_ms,
        settings: Settings {
            url: plan.url_text.clone(),
            rate: load.rate,
            duration_seconds: load.duration.as_secs_f64(),
            write_ratio: load.write_ratio,
            connections: load.connections,
            timeout_seconds: load.timeout.as_secs_f64(),
            resolver: plan.resolver.map(|r| r.to_string()),
            mode: plan.mode.clone(),
            fault: plan.fault.as_ref().map(|(_, f)| f.fault.clone()),
            fault_at: plan.fault.as_ref().map(|(_, f)| f.fault_at.as_secs_f64()),
            recover_at: plan.fault.as_ref().map(|(_, f)| f.recover_at.as_secs_f64()),
        },
        summary,
        series: series_out,
        histograms,
        faults: faults_done,
        dns_changes,
        phases,
        lag_samples,
        agents: 1,
    };
    crate::report::write(&plan.out, &results)?;
    let mut code = if interrupted_now { 1 } else { 0 };
    if let Some(report) = &fault_report {
        if let Some(e) = &report.inject_error {
            eprintln!("loadtest: error: the fault was not injected ({e})");
            code = 1;
        }
        if let Some(e) = &report.record.undo_error {
            eprintln!("loadtest: error: the fault was not undone ({e}); undo it by hand");
            code = 1;
        }
    }
    if let Some((_, f)) = &plan.fault
        && code == 0
        && let Some(why) = exceeded(&results.summary, f)
    {
        eprintln!("loadtest: threshold exceeded: {why}");
        code = 3;
    }
    println!("{}", crate::report::table(&results));
    println!("results: {}", plan.out.join("results.json").display());
    println!("report:  {}", plan.out.join("report.html").display());
    Ok(Outcome3 { results, code })
}

/// Which `--max-*` threshold the summary exceeds.
pub fn exceeded(s: &Summary, f: &FaultArgs) -> Option<String> {
    if let Some(max) = f.max_rto {
        match s.rto_seconds {
            None => return Some(format!("rto_seconds: never reached (--max-rto {max})")),
            Some(r) if r > max => return Some(format!("rto_seconds {r} > --max-rto {max}")),
            _ => {}
        }
    }
    if let Some(max) = f.max_rpo {
        match s.rpo_seconds {
            None => return Some(format!("rpo_seconds: not measured (--max-rpo {max})")),
            Some(r) if r > max => return Some(format!("rpo_seconds {r:.3} > --max-rpo {max}")),
            _ => {}
        }
    }
    if let Some(max) = f.max_missing_after_failback {
        match s.missing_after_failback {
            None => {
                return Some(format!(
                    "missing_after_failback: not measured (--max-missing-after-failback {max})"
                ));
            }
            Some(m) if m > max => {
                return Some(format!(
                    "missing_after_failback {m} > --max-missing-after-failback {max}"
                ));
            }
            _ => {}
        }
    }
    None
}

/// What the failover check found.
#[derive(Debug, Clone)]
struct FailoverCheck {
    missing: u64,
    checked: u64,
    rpo_seconds: f64,
    unreadable: usize,
}

/// What the fault script did.
#[derive(Debug, Clone)]
struct FaultReport {
    region: String,
    /// Whether the fault was injected (or may have been: a failed injection is undone anyway).
    injected: bool,
    /// Why injecting failed.
    inject_error: Option<String>,
    record: FaultRecord,
    failover_check: Option<FailoverCheck>,
    failover_note: Option<String>,
}

/// Where the fault script reaches: the local environment, AWS, and the region to fail when the
/// answers do not say.
struct Place {
    control: Option<SocketAddr>,
    aws: AwsOptions,
    default_region: Option<String>,
}

/// The longest a fault's injection or undo may take (an AWS call without an answer, a command).
const AWS_CALL_LIMIT: Duration = Duration::from_secs(120);

async fn undo_bounded(u: &Undo, aws: &AwsOptions) -> Result<String, String> {
    tokio::time::timeout(AWS_CALL_LIMIT, faults::undo(u, aws))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {AWS_CALL_LIMIT:?}")))
}

/// Injects the fault at its time, checks the survivor when it starts serving, undoes the fault at
/// recovery (or on stop).
async fn script(
    shared: Arc<Shared>,
    stop: CancellationToken,
    kind: FaultKind,
    f: FaultArgs,
    place: Place,
    regions: BTreeMap<String, Arc<Region>>,
) -> FaultReport {
    let Place {
        control,
        aws,
        default_region,
    } = place;
    let wait = |until: Duration| {
        let stop = stop.clone();
        let start = shared.start;
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                () = tokio::time::sleep_until(start + until) => true,
            }
        }
    };
    let mut report = FaultReport {
        region: f.fault_region.clone().unwrap_or_default(),
        injected: false,
        inject_error: None,
        record: FaultRecord {
            kind: f.fault.clone(),
            region: String::new(),
            injected_at: f.fault_at.as_secs_f64(),
            changed: "not injected (the run stopped first)".into(),
            undone_at: None,
            undone: None,
            undo_error: None,
        },
        failover_check: None,
        failover_note: None,
    };
    if !wait(f.fault_at).await {
        return report;
    }
    let region = match &f.fault_region {
        Some(r) => r.clone(),
        None => {
            let r = lock(&shared.recorder);
            let t = shared.start.elapsed().as_secs() as usize;
            serving(&r, t.saturating_sub(3), t)
                .filter(|s| regions.is_empty() || regions.contains_key(s))
                .or_else(|| lock(&shared.first_region).clone())
                .or_else(|| default_region.clone())
                .unwrap_or_default()
        }
    };
    report.region = region.clone();
    report.record.region = region.clone();
    let target = Target {
        region: region.clone(),
        control,
        function: f.function.clone(),
        health_check_id: f.health_check_id.clone(),
        recover_cmd: f.recover_cmd.clone(),
        aws: aws.clone(),
    };
    // The state of every key as acknowledged up to the fault.
    let fault_at = shared.now();
    let injected = match tokio::time::timeout(AWS_CALL_LIMIT, faults::inject(&kind, &target)).await
    {
        Ok(result) => result,
        Err(_) => Err(faults::Failed {
            error: format!("no answer within {AWS_CALL_LIMIT:?}"),
            // It may have been applied after all: restore what can be restored.
            undo: None,
        }),
    };
    report.record.injected_at = fault_at;
    let undo_with: Undo = match injected {
        Ok((changed, undo)) => {
            eprintln!("loadtest: fault at {fault_at:.1}s: {changed}");
            report.record.changed = changed;
            report.injected = true;
            undo
        }
        Err(failed) => {
            let e = failed.error;
            eprintln!("loadtest: the fault could not be injected: {e}");
            report.record.changed = format!("failed: {e}");
            report.failover_note = Some(format!("the fault could not be injected: {e}"));
            report.inject_error = Some(e);
            // What may have been changed anyway is restored (restoring is safe to repeat).
            if let Some(u) = failed.undo {
                report.injected = true;
                match undo_bounded(&u, &aws).await {
                    Ok(what) => {
                        eprintln!("loadtest: restored anyway: {what}");
                        report.record.undone_at = Some(shared.now());
                        report.record.undone = Some(what);
                    }
                    Err(e) => {
                        eprintln!("loadtest: could NOT restore: {e} (check it by hand)");
                        report.record.undo_error = Some(e);
                    }
                }
            }
            return report;
        }
    };
    shared.fault_active.store(true, Ordering::SeqCst);
    shared.enter("failover");
    let at_fault: HashMap<String, Ack> = workload::expected(
        &shared
            .workload
            .acks()
            .into_iter()
            .filter(|a| a.at <= fault_at)
            .collect::<Vec<_>>(),
        &shared.workload.uncertain(),
    );

    // When the survivor starts serving (the first success from another region), check it.
    let survivor = regions
        .iter()
        .find(|(n, _)| **n != region)
        .map(|(_, r)| r.clone());
    let check = {
        let shared = shared.clone();
        let region = region.clone();
        let recover_at = f.recover_at;
        let stop = stop.clone();
        async move {
            let Some(survivor) = survivor else {
                return Err("missing_after_failover needs the regions' own endpoints \
                            (--region-url REGION=URL, or --local)"
                    .to_owned());
            };
            loop {
                let started_serving = {
                    let r = lock(&shared.recorder);
                    let first = fault_at.floor() as usize;
                    r.seconds
                        .iter()
                        .skip(first)
                        .any(|s| s.by_region.iter().any(|(n, c)| *n != region && *c > 0))
                };
                if started_serving {
                    break;
                }
                if stop.is_cancelled() || shared.start.elapsed() >= recover_at {
                    return Err("no other region served before recovery: \
                                missing_after_failover was not measured"
                        .to_owned());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let uncertain = shared.workload.uncertain();
            let expected = verify::without(at_fault, &uncertain);
            // Cut off at recovery: after it, replication would hide what was missing.
            let read = tokio::time::timeout_at(
                shared.start + recover_at,
                verify::after_failover(&expected, &region, &survivor),
            )
            .await
            .map_err(|_| {
                "the survivor could not be read before recovery: missing_after_failover was \
                 not measured"
                    .to_owned()
            })?;
            let (pairs, unreadable) = read;
            // The load goes on meanwhile: a key written since the fault (or being written, or
            // written without an answer) may hold something newer than the fault's state, so
            // it says nothing about replication and is left out.
            let mut touched: HashSet<String> = shared
                .workload
                .acks()
                .into_iter()
                .filter(|a| a.at > fault_at)
                .map(|a| a.id)
                .collect();
            touched.extend(shared.workload.busy());
            touched.extend(shared.workload.uncertain());
            let kept: Vec<(Ack, verify::Held)> = pairs
                .into_iter()
                .filter(|(a, _)| !touched.contains(&a.id))
                .collect();
            let acked: Vec<measure::AckedWrite> = kept
                .iter()
                .map(|(a, _)| measure::AckedWrite {
                    id: a.id.clone(),
                    region: a.region.clone(),
                    acked_at: a.at,
                })
                .collect();
            let missing: HashSet<&str> = kept
                .iter()
                .filter(|(a, held)| !verify::reflects(*held, a))
                .map(|(a, _)| a.id.as_str())
                .collect();
            let loss = measure::loss(&acked, &region, fault_at, &|id| !missing.contains(id));
            Ok(FailoverCheck {
                missing: loss.missing as u64,
                checked: kept.len() as u64,
                rpo_seconds: loss.rpo_seconds,
                unreadable,
            })
        }
    };
    let check_task = tokio::spawn(check);

    let recovered_in_time = wait(f.recover_at).await;
    let undone = undo_bounded(&undo_with, &aws).await;
    let undone_at = shared.now();
    shared.fault_active.store(false, Ordering::SeqCst);
    match undone {
        Ok(what) => {
            eprintln!("loadtest: recovery at {undone_at:.1}s: {what}");
            report.record.undone_at = Some(undone_at);
            report.record.undone = Some(what);
        }
        Err(e) => {
            eprintln!("loadtest: the fault could NOT be undone: {e} (undo it by hand)");
            report.record.undo_error = Some(e);
        }
    }
    if recovered_in_time {
        shared.enter("failback");
    }
    match check_task.await {
        Ok(Ok(c)) => report.failover_check = Some(c),
        Ok(Err(note)) => report.failover_note = Some(note),
        Err(e) => report.failover_note = Some(format!("the failover check failed: {e}")),
    }
    // Wait for the rest of the load (the caller cancels `stop` when the load is done).
    stop.cancelled().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_utc_stamp_is_a_date_and_time() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[8] == b'T',
            "{s}"
        );
    }
}
