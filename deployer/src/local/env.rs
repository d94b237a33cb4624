//! The running environment (`deployer local up`) and `deployer local down`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tworegion_common::aws::{AwsOptions, parse_region, sdk_config};

use super::faults::{Fault, Faults};
use super::gateway::{Gateway, Routes};
use super::health::{self, Checker};
use super::zone::{self, Data, Outcome, Snapshot, View};
use super::{
    Proc, RegionStatus, ReplicatorStatus, Settings, Status, running, start_time, state_file,
};
use crate::config::{Deployment, RecordStyle};
use crate::desired::Kind;
use crate::engine::{Clients, Engine};

/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often Route 53's state is read for DNS and the checkers.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The processes the environment started; `children.json` in the state folder lists them from the
/// moment each starts, so that `local down` finds them even if the supervisor dies while starting.
struct Children {
    list: Vec<(Proc, PathBuf)>,
    record: PathBuf,
    shared: Arc<Mutex<Vec<Proc>>>,
    exits_tx: mpsc::UnboundedSender<(u32, String)>,
    exits: mpsc::UnboundedReceiver<(u32, String)>,
    states: Arc<Mutex<BTreeMap<u32, String>>>,
}

/// Environment variables a child must not inherit: its endpoints, credentials and settings are the
/// environment's (a user's `AWS_ENDPOINT_URL_DYNAMODB` would route around the fault proxy, a
/// `REPLICATOR_MODE` change what the config asks for).
const NOT_INHERITED: &[&str] = &["AWS_", "REPLICATOR_", "SAMPLE_APP_"];

/// Sends `signal` to the process group a child leads (it and anything it started).
fn signal_group(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(-(pid as i32)), signal);
}

impl Children {
    fn new(state_dir: &Path) -> Children {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Children {
            list: Vec::new(),
            record: children_file(state_dir),
            shared: Arc::default(),
            exits_tx,
            exits,
            states: Arc::default(),
        }
    }

    /// Starts `program` with `args` and `env`, output to `log`, in its own process group (so the
    /// terminal's Ctrl-C reaches only the supervisor, which stops the children in order).
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<u32, String> {
        let file = std::fs::File::create(log).map_err(io(&log.display().to_string()))?;
        let err = file.try_clone().map_err(io("log"))?;
        let mut command = tokio::process::Command::new(program);
        for (key, _) in std::env::vars_os() {
            let text = key.to_string_lossy();
            if NOT_INHERITED.iter().any(|p| text.starts_with(p)) {
                command.env_remove(&key);
            }
        }
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let proc = Proc {
            name: name.to_owned(),
            pid,
            start: start_time(pid).unwrap_or(0),
        };
        self.list.push((proc.clone(), log.to_owned()));
        let all: Vec<Proc> = self.list.iter().map(|(p, _)| p.clone()).collect();
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = all.clone();
        if let Ok(text) = serde_json::to_string(&all) {
            let _ = std::fs::write(&self.record, text);
        }
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, "running".to_owned());
        let tx = self.exits_tx.clone();
        let states = self.states.clone();
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(signal)) => format!("was killed by signal {signal}"),
                    _ => "exited".to_owned(),
                },
                Err(e) => format!("could not be waited for: {e}"),
            };
            states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, how.clone());
            let _ = tx.send((pid, how));
        });
        Ok(pid)
    }

    fn name(&self, pid: u32) -> (String, Option<PathBuf>) {
        self.list
            .iter()
            .find(|(p, _)| p.pid == pid)
            .map(|(p, l)| (p.name.clone(), Some(l.clone())))
            .unwrap_or_else(|| (format!("process {pid}"), None))
    }

    fn is_running(&self, pid: u32) -> bool {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .is_some_and(|s| s == "running")
    }

    /// SIGTERM to each of `pids` still running (to its process group), SIGKILL after the grace
    /// period.
    async fn stop(&mut self, pids: &[u32]) {
        let running: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| self.is_running(*p))
            .collect();
        for pid in &running {
            signal_group(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while running.iter().any(|p| self.is_running(*p)) && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.exits.recv()).await;
        }
        for pid in running.iter().filter(|p| self.is_running(**p)) {
            let (name, _) = self.name(*pid);
            eprintln!("local: {name} (pid {pid}) did not stop within 10 s; killing it");
            signal_group(*pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while running.iter().any(|p| self.is_running(*p)) && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.exits.recv()).await;
        }
    }

    fn procs(&self) -> Vec<Proc> {
        self.list.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// The file listing the children as they start.
fn children_file(dir: &Path) -> PathBuf {
    dir.join("children.json")
}

/// Processes of an earlier environment of `dir` that still run.
fn leftovers(dir: &Path) -> Vec<Proc> {
    let text = std::fs::read_to_string(children_file(dir)).unwrap_or_default();
    let procs: Vec<Proc> = serde_json::from_str(&text).unwrap_or_default();
    procs.into_iter().filter(Proc::runs).collect()
}

/// The last lines of a log.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs one of the environment's own parts (a front, the DNS server, ...) as a task; if it ends
/// before the environment stops, or panics, the supervisor hears which and why.
fn spawn_part<F>(
    name: String,
    stop: &CancellationToken,
    parts: &mpsc::UnboundedSender<(String, String)>,
    part: F,
) where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let stop = stop.clone();
    let parts = parts.clone();
    tokio::spawn(async move {
        let outcome = tokio::spawn(part).await;
        if !stop.is_cancelled() {
            let why = match outcome {
                Ok(Ok(())) => "it ended unexpectedly".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => format!("it failed: {e}"),
            };
            let _ = parts.send((name, why));
        }
    });
}

/// The custom domains a region's front serves (lower case): the public name, and the region's own
/// name its health check probes when it probes one.
fn custom_domains(d: &Deployment, region: &str) -> Vec<String> {
    let domain = &d.file.dns.domain_name;
    let mut names = vec![domain.to_ascii_lowercase()];
    if d.probes_domain() {
        names.push(crate::names::probe_domain(region, domain).to_ascii_lowercase());
    }
    names
}

/// A free TCP port on `ip` (bound and released).
fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(io(&format!("a free port on {ip}")))?;
    Ok(l.local_addr().map_err(io("port"))?.port())
}

/// Binds the shared API port on both regions' addresses: the configured port, or one free on both.
async fn bind_api(settings: &Settings) -> Result<(u16, Vec<TcpListener>), String> {
    let addrs: Vec<Ipv4Addr> = settings
        .regions
        .iter()
        .map(|r| settings.addresses[r])
        .collect();
    if settings.port != 0 {
        let mut listeners = Vec::new();
        for ip in &addrs {
            let l = TcpListener::bind((*ip, settings.port)).await.map_err(|e| {
                format!(
                    "local.port: cannot listen on {ip}:{}: {e}; choose another port, or 0 for a free one",
                    settings.port
                )
            })?;
            listeners.push(l);
        }
        return Ok((settings.port, listeners));
    }
    for _ in 0..50 {
        let first = TcpListener::bind((addrs[0], 0)).await.map_err(|e| {
            format!(
                "cannot listen on {}: {e}; set local.addresses to loopback addresses this machine \
                 has (Linux has all of 127.0.0.0/8; elsewhere add an alias, e.g. \
                 `sudo ifconfig lo0 alias {}`)",
                addrs[0], addrs[0]
            )
        })?;
        let port = first.local_addr().map_err(io("port"))?.port();
        if let Ok(second) = TcpListener::bind((addrs[1], port)).await {
            return Ok((port, vec![first, second]));
        }
    }
    Err(format!(
        "found no port free on both {} and {}; set local.port",
        addrs[0], addrs[1]
    ))
}

/// Binds the DNS server's UDP and TCP sockets on one port of 127.0.0.1.
async fn bind_dns(port: u16) -> Result<(UdpSocket, TcpListener), String> {
    let localhost = Ipv4Addr::LOCALHOST;
    let attempts = if port == 0 { 50 } else { 1 };
    let mut last = String::new();
    for _ in 0..attempts {
        let udp = UdpSocket::bind((localhost, port)).await.map_err(|e| {
            format!("local.dns_port: cannot listen on 127.0.0.1:{port}/udp: {e}; choose another port or 0")
        })?;
        let chosen = udp.local_addr().map_err(io("port"))?.port();
        match TcpListener::bind((localhost, chosen)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = format!("127.0.0.1:{chosen}/tcp: {e}"),
        }
    }
    Err(format!(
        "local.dns_port: cannot listen on {last}; choose another port or 0"
    ))
}

/// A binary of this project: next to the running deployer (cargo puts them together), or in
/// `TWOREGION_BIN_DIR`.
fn sibling(name: &str) -> Result<PathBuf, String> {
    let dir = match std::env::var_os("TWOREGION_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_default(),
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{name} is not at {}: build it next to the deployer (`cargo build -p {name}`), or set \
             TWOREGION_BIN_DIR to the folder holding it",
            path.display()
        ))
    }
}

/// `moto_server` of the project's virtualenv (`scripts/local-aws install`), searched upwards from
/// the current folder and the config's, or `TWOREGION_MOTO_SERVER`.
fn moto_server(config: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TWOREGION_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let mut starts = vec![std::env::current_dir().unwrap_or_default()];
    if let Some(dir) = config.parent().and_then(|d| d.canonicalize().ok()) {
        starts.push(dir);
    }
    for start in starts {
        for dir in start.ancestors() {
            let candidate = dir.join(".venv/bin/moto_server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "no local AWS: AWS_ENDPOINT_URL is not set and the project's moto is not installed; run \
         scripts/local-aws install (or start one with scripts/local-aws start and export \
         AWS_ENDPOINT_URL)"
            .to_owned(),
    )
}

/// The loopback socket address of an endpoint URL `http://127.0.0.1:PORT`.
fn endpoint_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("AWS_ENDPOINT_URL={url}: the local AWS must be http://127.x.y.z:PORT")
    })?;
    let addr: SocketAddr = rest.trim_end_matches('/').parse().map_err(|_| {
        format!("AWS_ENDPOINT_URL={url}: the local AWS must be http://127.x.y.z:PORT (an IP, not a name)")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "AWS_ENDPOINT_URL={url}: not a loopback address; the local environment stays on 127.0.0.0/8"
        ));
    }
    Ok(addr)
}

async fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A replicator process.
struct ReplicatorInfo {
    source: String,
    target: String,
    pid: u32,
    metrics: SocketAddr,
    log: PathBuf,
}

/// What the control API, the DNS server and the state file read.
struct Shared {
    deployment: Deployment,
    settings: Settings,
    port: u16,
    faults: Arc<Faults>,
    checker: Arc<Checker>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    api_key: Option<String>,
    dns: SocketAddr,
    control: SocketAddr,
    outside_proxy: SocketAddr,
    local_aws: String,
    region_proxies: BTreeMap<String, SocketAddr>,
    api_hosts: BTreeMap<String, Option<String>>,
    app_pids: BTreeMap<String, u32>,
    replicators: Vec<ReplicatorInfo>,
    child_states: Arc<Mutex<BTreeMap<u32, String>>>,
    children: RwLock<Vec<Proc>>,
    logs: PathBuf,
}

impl Shared {
    fn resolve(&self, name: &str, want_a: bool) -> Outcome {
        let snapshot = self.snapshot.borrow().clone();
        let checker = self.checker.clone();
        let healthy = move |id: &str| checker.healthy(id);
        let order = self.settings.regions.to_vec();
        let view = View {
            snapshot: &snapshot,
            healthy: &healthy,
            addresses: &self.settings.addresses,
            alias_ttl: self.settings.alias_ttl,
            client_region: &self.settings.client_region,
            region_order: &order,
        };
        zone::resolve(&view, name, want_a)
    }

    fn first_address(&self, name: &str) -> Option<Ipv4Addr> {
        match self.resolve(name, true) {
            Outcome::Answers(answers) => answers.into_iter().find_map(|a| match a.data {
                Data::A(ip) => Some(ip),
                Data::Cname(_) => None,
            }),
            _ => None,
        }
    }

    fn region_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.settings
            .addresses
            .iter()
            .find(|(_, a)| **a == ip)
            .map(|(r, _)| r.clone())
    }

    /// The health check ID of a region's record (set identifier `<app>-<stage>-<region>`).
    fn check_of(&self, region: &str) -> Option<String> {
        let f = &self.deployment.file;
        let id = crate::names::set_identifier(&crate::names::prefix(&f.app, &f.stage), region);
        self.snapshot
            .borrow()
            .records
            .iter()
            .find(|r| r.set_identifier.as_deref() == Some(id.as_str()))
            .and_then(|r| r.health_check.clone())
    }

    async fn status(&self, show_api_key: bool) -> Status {
        let f = &self.deployment.file;
        let domain = f.dns.domain_name.clone();
        let answer: Vec<Ipv4Addr> = match self.resolve(&domain, true) {
            Outcome::Answers(a) => a
                .into_iter()
                .filter_map(|a| match a.data {
                    Data::A(ip) => Some(ip),
                    Data::Cname(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let serving = answer.first().and_then(|ip| self.region_of(*ip));
        let reports = self.checker.report();
        let states = self
            .child_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut regions = BTreeMap::new();
        for region in &self.settings.regions {
            let check = self.check_of(region);
            let report = check
                .as_ref()
                .and_then(|id| reports.iter().find(|r| &r.id == id).cloned());
            let endpoint_report = report
                .as_ref()
                .and_then(|r| r.children.first())
                .and_then(|id| reports.iter().find(|r| &r.id == id).cloned());
            regions.insert(
                region.clone(),
                RegionStatus {
                    endpoint: format!("http://{}:{}", self.settings.addresses[region], self.port),
                    fault: self.faults.get(region).label(),
                    healthy: check.as_ref().map(|id| self.checker.healthy(id)),
                    table: f.table.name.clone(),
                    aws_endpoint: format!("http://{}", self.region_proxies[region]),
                    api_host: self.api_hosts.get(region).cloned().flatten(),
                    app_pid: self.app_pids.get(region).copied(),
                    health_check: report,
                    endpoint_check: endpoint_report,
                },
            );
        }
        let scrapes = futures::future::join_all(
            self.replicators
                .iter()
                .map(|r| super::http::get_text(r.metrics, "/metrics", Duration::from_secs(1))),
        )
        .await;
        let mut replicators = Vec::new();
        for (r, scraped) in self.replicators.iter().zip(scrapes) {
            let metrics = scraped.ok();
            let value = |name: &str| -> Option<f64> {
                let text = &metrics.as_ref()?.1;
                let sum: f64 = text
                    .lines()
                    .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                Some(sum)
            };
            replicators.push(ReplicatorStatus {
                source_region: r.source.clone(),
                target_region: r.target.clone(),
                pid: r.pid,
                state: states.get(&r.pid).cloned().unwrap_or_default(),
                metrics: format!("http://{}", r.metrics),
                lag_seconds: value("replicator_oldest_unapplied_age_seconds"),
                records_applied: value("replicator_records_applied_total"),
                log: r.log.display().to_string(),
            });
        }
        let hc = &f.health_check;
        let ttl = match f.dns.record_style {
            RecordStyle::Alias => self.settings.alias_ttl,
            RecordStyle::Cname => u32::try_from(f.dns.answer_ttl()).unwrap_or(u32::MAX),
        };
        Status {
            domain_name: domain.clone(),
            url: format!("http://{domain}:{}/", self.port),
            dns: self.dns.to_string(),
            control: format!("http://{}", self.control),
            api_key_env: f.api_key.from_env.clone(),
            api_key: if show_api_key {
                self.api_key.clone()
            } else {
                None
            },
            aws_endpoint: format!("http://{}", self.outside_proxy),
            local_aws: self.local_aws.clone(),
            serving,
            dns_answer: answer.iter().map(ToString::to_string).collect(),
            record_style: match f.dns.record_style {
                RecordStyle::Alias => "alias".to_owned(),
                RecordStyle::Cname => "cname".to_owned(),
            },
            ttl_seconds: ttl,
            expected_failover_seconds: u64::try_from(hc.interval * hc.failure_threshold)
                .unwrap_or(0)
                + u64::from(ttl),
            regions,
            replicators,
            faults: self.faults.history(),
            pid: std::process::id(),
            pid_start: start_time(std::process::id()).unwrap_or(0),
            children: self
                .children
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            logs: self.logs.display().to_string(),
        }
    }
}

fn write_state(dir: &Path, status: &Status) -> Result<(), String> {
    let path = state_file(dir);
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_string_pretty(status).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(io(&tmp.display().to_string()))?;
    std::fs::rename(&tmp, &path).map_err(io(&path.display().to_string()))
}

/// The lock file: the supervisor holds an exclusive `flock` on it for its whole life (the kernel
/// releases it when the process dies, so a stale file never looks alive) and writes its PID in it.
fn lock_file(dir: &Path) -> PathBuf {
    dir.join("supervisor.pid")
}

/// The lock, if no supervisor holds it: `Ok(None)` when one does.
fn try_lock(dir: &Path) -> Result<Option<Flock<std::fs::File>>, String> {
    let path = lock_file(dir);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path.display().to_string()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

fn take_lock(dir: &Path) -> Result<Flock<std::fs::File>, String> {
    std::fs::create_dir_all(dir).map_err(io(&dir.display().to_string()))?;
    let Some(lock) = try_lock(dir)? else {
        let pid = std::fs::read_to_string(lock_file(dir)).unwrap_or_default();
        let where_ = running(dir)
            .map(|s| {
                format!(
                    "; its control API is {} and its public URL {}",
                    s.control, s.url
                )
            })
            .unwrap_or_else(|| " (still starting)".to_owned());
        return Err(format!(
            "a local environment is already running for the state folder {} (pid {}){where_}; \
             stop it with `deployer local down`, or use another --state-dir",
            dir.display(),
            pid.trim()
        ));
    };
    let left = leftovers(dir);
    if !left.is_empty() {
        let names: Vec<String> = left
            .iter()
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        return Err(format!(
            "processes of an earlier environment of the state folder {} still run: {}; its \
             supervisor died; stop them with `deployer local down --state-dir {}`",
            dir.display(),
            names.join(", "),
            dir.display()
        ));
    }
    lock.set_len(0).map_err(io("lock file"))?;
    (&*lock)
        .write_all(std::process::id().to_string().as_bytes())
        .map_err(io("lock file"))?;
    let _ = std::fs::remove_file(children_file(dir));
    Ok(lock)
}

fn release_lock(dir: &Path) {
    let _ = std::fs::remove_file(state_file(dir));
    let _ = std::fs::remove_file(children_file(dir));
    let _ = std::fs::remove_file(lock_file(dir));
}

/// `local up`.
pub async fn up(
    config: &Path,
    state_dir: &Path,
    detach: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, String> {
    if detach {
        return up_detached(config, state_dir, json, out).await;
    }
    let d = crate::cli::load(config).map_err(|f| f.0)?;
    d.key_needed_for_up()?;
    let settings =
        Settings::from_deployment(&d).map_err(|e| format!("{}: {e}", config.display()))?;
    let artifact_path = crate::cli::artifact_path(config, &d.file.lambda.artifact);
    let artifact = std::fs::read(&artifact_path).map_err(|e| {
        format!(
            "lambda.artifact: cannot read {}: {e}; build it with scripts/package-lambda, or point \
             lambda.artifact at any zip (the local AWS stores the code without running it)",
            artifact_path.display()
        )
    })?;
    let lock = take_lock(state_dir)?;
    let (shutdown, forced) = tworegion_common::shutdown::listen().map_err(io("signals"))?;
    let mut children = Children::new(state_dir);
    // A second Ctrl-C or SIGTERM while stopping: kill every child's process group at once.
    let everyone = children.shared.clone();
    tokio::spawn(async move {
        let signal = forced.await;
        eprintln!("local: second signal; killing every process of the environment");
        for p in everyone.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            signal_group(p.pid, Signal::SIGKILL);
        }
        std::process::exit(signal.exit_code());
    });
    let stop = CancellationToken::new();
    let (parts_tx, mut parts) = mpsc::unbounded_channel();
    let result = tokio::select! {
        result = start(
            &d,
            &settings,
            artifact,
            config,
            state_dir,
            &mut children,
            &stop,
            &parts_tx,
            json,
            out,
        ) => result,
        () = shutdown.cancelled() => Err("interrupted while starting".to_owned()),
    };
    let code = match result {
        Ok(shared) => supervise(&shared, state_dir, &mut children, &shutdown, &mut parts).await,
        Err(e) => Err(e),
    };
    eprintln!("local: stopping");
    stop.cancel();
    let pids = |moto: bool| -> Vec<u32> {
        children
            .list
            .iter()
            .filter(|(p, _)| (p.name == "local AWS") == moto)
            .map(|(p, _)| p.pid)
            .collect()
    };
    let (moto, others) = (pids(true), pids(false));
    children.stop(&others).await;
    children.stop(&moto).await;
    release_lock(state_dir);
    drop(lock);
    eprintln!("local: stopped");
    code
}

/// Waits for Ctrl-C, SIGTERM or a child's death, keeping the state file fresh.
async fn supervise(
    shared: &Arc<Shared>,
    state_dir: &Path,
    children: &mut Children,
    shutdown: &CancellationToken,
    parts: &mut mpsc::UnboundedReceiver<(String, String)>,
) -> Result<u8, String> {
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(0),
            part = parts.recv() => {
                let Some((name, why)) = part else { return Ok(0) };
                return Err(format!("{name} stopped: {why}; stopping everything"));
            }
            exit = children.exits.recv() => {
                let Some((pid, how)) = exit else { return Ok(0) };
                let (name, log) = children.name(pid);
                let last = log.as_deref().map(|l| tail(l, 15)).unwrap_or_default();
                return Err(format!(
                    "{name} (pid {pid}) {how}; stopping everything. Last lines of its log{}:\n{last}",
                    log.map(|l| format!(" ({})", l.display())).unwrap_or_default()
                ));
            }
            _ = refresh.tick() => {
                let status = shared.status(false).await;
                if let Err(e) = write_state(state_dir, &status) {
                    eprintln!("local: cannot write the state file: {e}");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn start(
    d: &Deployment,
    settings: &Settings,
    artifact: Vec<u8>,
    config: &Path,
    state_dir: &Path,
    children: &mut Children,
    stop: &CancellationToken,
    parts: &mpsc::UnboundedSender<(String, String)>,
    json: bool,
    out: &mut dyn Write,
) -> Result<Arc<Shared>, String> {
    let f = &d.file;
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs.display().to_string()))?;
    let sample_app = sibling("sample-app")?;
    let replicator = sibling("replicator")?;
    // Every port first, so that a port in use fails before anything starts.
    let (port, api_listeners) = bind_api(settings).await?;
    let (dns_udp, dns_tcp) = bind_dns(settings.dns_port).await?;
    let dns_addr = dns_udp.local_addr().map_err(io("dns"))?;
    let control_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, settings.control_port))
        .await
        .map_err(|e| {
            format!(
                "local.control_port: cannot listen on 127.0.0.1:{}: {e}; choose another port or 0",
                settings.control_port
            )
        })?;
    let control_addr = control_listener.local_addr().map_err(io("control"))?;

    // The local AWS: the one AWS_ENDPOINT_URL names, or the project's moto started here.
    let local_aws = match std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => {
            let addr = endpoint_addr(&url)?;
            if !wait_listening(addr, Duration::from_secs(2)).await {
                return Err(format!(
                    "AWS_ENDPOINT_URL={url}: nothing answers there; start the local AWS \
                     (scripts/local-aws start) or unset AWS_ENDPOINT_URL to let `local up` start one"
                ));
            }
            url.trim_end_matches('/').to_owned()
        }
        None => {
            let moto = moto_server(config)?;
            let moto_port = free_port(Ipv4Addr::LOCALHOST)?;
            let log = logs.join("local-aws.log");
            eprintln!("local: starting the local AWS (moto) on 127.0.0.1:{moto_port}");
            children.spawn(
                "local AWS",
                &moto,
                &[
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    moto_port.to_string(),
                ],
                &[
                    ("MOTO_ACM_VALIDATION_WAIT".into(), "1".into()),
                    // moto runs no ECS task; the replicators run here as processes instead.
                    // Report the service's tasks running, so that `up` finds them started
                    // (moto reports this many for every new service).
                    (
                        "MOTO_ECS_SERVICE_RUNNING".into(),
                        f.replicator.desired_count.to_string(),
                    ),
                ],
                &log,
            )?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, moto_port));
            if !wait_listening(addr, Duration::from_secs(60)).await {
                return Err(format!(
                    "the local AWS did not start within 60 s; see {}:\n{}",
                    log.display(),
                    tail(&log, 15)
                ));
            }
            format!("http://{addr}")
        }
    };
    let upstream = endpoint_addr(&local_aws)?;
    let faults = Arc::new(Faults::new(&settings.regions));

    // The AWS proxies: one per region (for the processes in it) and one for tools outside both.
    let mut region_proxies = BTreeMap::new();
    let mut outside_proxy = None;
    for home in settings
        .regions
        .iter()
        .map(|r| Some(r.clone()))
        .chain([None])
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(io("AWS proxy"))?;
        let addr = listener.local_addr().map_err(io("AWS proxy"))?;
        let proxy = Arc::new(super::aws_proxy::AwsProxy {
            home: home.clone(),
            upstream,
            faults: faults.clone(),
            delay: settings.delay,
            client: super::http::upstream(),
        });
        let serve =
            super::http::serve(listener, stop.clone(), move |req| proxy.clone().handle(req));
        let name = match &home {
            Some(region) => format!("the AWS proxy of {region}"),
            None => "the outside AWS proxy".to_owned(),
        };
        spawn_part(name, stop, parts, async move {
            serve.await;
            Ok(())
        });
        match home {
            Some(region) => {
                region_proxies.insert(region, addr);
            }
            None => outside_proxy = Some(addr),
        }
    }
    let outside_proxy = outside_proxy.ok_or("no outside proxy")?;

    // `deployer up` against the local AWS, with the same engine.
    eprintln!(
        "local: reconciling both regions against the local AWS ({local_aws}), as `deployer up` does"
    );
    let placeholder = std::env::var_os("AWS_ACCESS_KEY_ID").is_none();
    let options = AwsOptions {
        profile: None,
        endpoint_url: Some(local_aws.clone()),
        placeholder_credentials: placeholder,
    };
    let clients = Clients::load(&d.regions, &options)
        .await
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(d.clone(), clients, Some(artifact));
    let mut progress = std::io::stderr();
    let report = engine
        .up(
            crate::engine::DataPolicy::default(),
            None,
            // Nothing serves yet to check (the apps and health checkers start below).
            crate::rollout::Rollout::Parallel,
            &mut progress,
        )
        .await
        .map_err(|e| format!("deployer up against the local AWS: {e}"))?;
    let api_key = engine.client_api_key().await.map_err(|e| e.to_string())?;
    let Some(api_key) = api_key else {
        return Err(
            "the deployment has no API key after `up` (the primary's key was not found); run \
             `deployer local up` again, or check [api_key] in the config"
                .to_owned(),
        );
    };
    let api_hosts: BTreeMap<String, Option<String>> = report
        .endpoints
        .regional
        .iter()
        .map(|(r, url)| {
            let host = url.as_deref().and_then(|u| {
                u.strip_prefix("https://")
                    .and_then(|h| h.split('/').next())
                    .map(str::to_owned)
            });
            (r.clone(), host)
        })
        .collect();
    let aws_env = |region: &str| -> Vec<(String, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://{}", region_proxies[region]),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "local".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "local".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_REGION".into(), region.to_owned()),
        ]
    };

    // Per region: the sample app behind its front.
    let mut app_pids = BTreeMap::new();
    let mut gateways = Vec::new();
    for (region, listener) in settings.regions.iter().zip(api_listeners) {
        let app_port = free_port(Ipv4Addr::LOCALHOST)?;
        let app_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, app_port));
        let log = logs.join(format!("sample-app-{region}.log"));
        let pid = children.spawn(
            &format!("sample-app {region}"),
            &sample_app,
            &[
                "--listen".into(),
                app_addr.to_string(),
                "--region".into(),
                region.clone(),
                "--table".into(),
                f.table.name.clone(),
                "--log-format".into(),
                "json".into(),
            ],
            &[
                aws_env(region),
                vec![
                    ("SAMPLE_APP_API_KEY".into(), api_key.clone()),
                    (
                        "SAMPLE_APP_PARTITION_KEY".into(),
                        f.table.partition_key.name.clone(),
                    ),
                ],
            ]
            .concat(),
            &log,
        )?;
        app_pids.insert(region.clone(), pid);
        let gateway = Arc::new(Gateway {
            region: region.clone(),
            listen: SocketAddr::from((settings.addresses[region], port)),
            app: app_addr,
            faults: faults.clone(),
            routes: RwLock::new(Routes {
                stage: "live".to_owned(),
                api_hosts: api_hosts
                    .get(region)
                    .cloned()
                    .flatten()
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                // Then followed by the API Gateway reader.
                domain_names: custom_domains(d, region),
            }),
            health_path: f.health_check.path.clone(),
            client: super::http::upstream(),
        });
        gateways.push((gateway, listener, app_addr, log));
    }
    for (gateway, _, app_addr, log) in &gateways {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) =
                super::http::get_text(*app_addr, &f.health_check.path, Duration::from_secs(3)).await
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sample-app {} did not become healthy within 30 s; see {}:\n{}",
                    gateway.region,
                    log.display(),
                    tail(log, 15)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let fronts: Vec<Arc<Gateway>> = gateways.iter().map(|g| g.0.clone()).collect();
    for (gateway, listener, _, _) in gateways {
        let name = format!("the API front of {}", gateway.region);
        spawn_part(name, stop, parts, gateway.run(listener, stop.clone()));
    }
    // API Gateway's custom domains, read continually: a front serves a custom domain only while
    // its root base path mapping to the stage exists (a mapping deleted by hand fails the health
    // check that probes it, as on AWS).
    for front in fronts {
        let region = front.region.clone();
        let client = aws_sdk_apigateway::Client::new(
            &sdk_config(
                parse_region(&region).map_err(|e| e.to_string())?,
                &AwsOptions {
                    profile: None,
                    endpoint_url: Some(local_aws.clone()),
                    placeholder_credentials: true,
                },
            )
            .await,
        );
        let candidates = custom_domains(d, &region);
        let stop_reading = stop.clone();
        spawn_part(
            format!("the API Gateway reader of {region}"),
            stop,
            parts,
            async move {
                let mut last_error: Option<String> = None;
                loop {
                    tokio::select! {
                        () = stop_reading.cancelled() => return Ok(()),
                        () = tokio::time::sleep(SNAPSHOT_EVERY) => {}
                    }
                    let stage = front
                        .routes
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .stage
                        .clone();
                    let mut mapped = Vec::new();
                    let mut known = true;
                    for domain in &candidates {
                        match super::gateway::root_mapping(&client, domain, &stage).await {
                            Ok(true) => mapped.push(domain.clone()),
                            Ok(false) => {}
                            Err(error) => {
                                // Said once per distinct error, not every half second.
                                if last_error.as_deref() != Some(error.as_str()) {
                                    tracing::warn!(%error, %domain, "reading API Gateway failed");
                                    last_error = Some(error);
                                }
                                known = false;
                            }
                        }
                    }
                    if known {
                        let mut routes = front.routes.write().unwrap_or_else(|p| p.into_inner());
                        if routes.domain_names != mapped {
                            tracing::info!(region = %front.region, domains = ?mapped, "custom domains served");
                            routes.domain_names = mapped;
                        }
                    }
                }
            },
        );
    }

    // The replicators, exactly as the ECS task definitions say (their environment), in the region
    // where ECS would run them.
    let mut replicators = Vec::new();
    for task in engine
        .desired()
        .iter()
        .filter(|r| r.kind == Kind::TaskDefinition)
    {
        let Some(region) = task.region.clone() else {
            continue;
        };
        let mut env: Vec<(String, String)> = task
            .props
            .get("environment")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
        env.retain(|(k, _)| k != "REPLICATOR_METRICS_ADDR");
        env.push(("REPLICATOR_METRICS_ADDR".into(), metrics.to_string()));
        env.push(("REPLICATOR_LOG_FORMAT".into(), "json".into()));
        env.extend(aws_env(&region));
        let source = env
            .iter()
            .find(|(k, _)| k == "REPLICATOR_SOURCE_REGION")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let log = logs.join(format!("replicator-{source}-to-{region}.log"));
        let pid = children.spawn(
            &format!("replicator {source} -> {region}"),
            &replicator,
            &["run".into()],
            &env,
            &log,
        )?;
        replicators.push(ReplicatorInfo {
            source,
            target: region,
            pid,
            metrics,
            log,
        });
    }
    for r in &replicators {
        if !wait_listening(r.metrics, Duration::from_secs(30)).await {
            return Err(format!(
                "replicator {} -> {} did not open its metrics address within 30 s; see {}:\n{}",
                r.source,
                r.target,
                r.log.display(),
                tail(&r.log, 15)
            ));
        }
    }

    // Route 53's state, read continually; the checkers and the DNS server follow it.
    let r53 = aws_sdk_route53::Client::new(
        &sdk_config(
            parse_region(&d.regions[0]).map_err(|e| e.to_string())?,
            &AwsOptions {
                profile: None,
                endpoint_url: Some(local_aws.clone()),
                placeholder_credentials: true,
            },
        )
        .await,
    );
    let mut located = None;
    let first = zone::read(&r53, &f.dns.hosted_zone, &mut located).await?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(first));
    {
        let zone_name = f.dns.hosted_zone.clone();
        let stop_reading = stop.clone();
        spawn_part("the Route 53 reader".to_owned(), stop, parts, async move {
            loop {
                tokio::select! {
                    () = stop_reading.cancelled() => return Ok(()),
                    () = tokio::time::sleep(SNAPSHOT_EVERY) => {}
                }
                match zone::read(&r53, &zone_name, &mut located).await {
                    Ok(s) => {
                        snapshot_tx.send_if_modified(|old| {
                            let changed = old.records != s.records || old.checks != s.checks;
                            if changed {
                                *old = Arc::new(s);
                            }
                            changed
                        });
                    }
                    Err(error) => tracing::warn!(%error, "reading Route 53 failed"),
                }
            }
        });
    }
    let checker = Arc::new(Checker::default());
    let shared = Arc::new(Shared {
        deployment: d.clone(),
        settings: settings.clone(),
        port,
        faults: faults.clone(),
        checker: checker.clone(),
        snapshot: snapshot_rx.clone(),
        api_key: Some(api_key),
        dns: dns_addr,
        control: control_addr,
        outside_proxy,
        local_aws: local_aws.clone(),
        region_proxies,
        api_hosts,
        app_pids,
        replicators,
        child_states: children.states.clone(),
        children: RwLock::new(children.procs()),
        logs: logs.clone(),
    });
    {
        let for_targets = shared.clone();
        let target: Arc<health::Target> = Arc::new(move |def| {
            health::local_target(def, port, &|name| for_targets.first_address(name))
        });
        let mut rx = snapshot_rx;
        rx.mark_changed();
        let run = checker.run(rx, target, stop.clone());
        spawn_part("the health checker".to_owned(), stop, parts, async move {
            run.await;
            Ok(())
        });
    }
    {
        let for_dns = shared.clone();
        let resolver: Arc<super::dns::Resolver> =
            Arc::new(move |name: &str, want_a: bool| for_dns.resolve(name, want_a));
        let udp = super::dns::serve_udp(dns_udp, resolver.clone(), stop.clone());
        let tcp = super::dns::serve_tcp(dns_tcp, resolver, stop.clone());
        spawn_part("the DNS server (UDP)".to_owned(), stop, parts, async move {
            udp.await;
            Ok(())
        });
        spawn_part("the DNS server (TCP)".to_owned(), stop, parts, async move {
            tcp.await;
            Ok(())
        });
    }
    {
        let app = axum::Router::new()
            .route("/status", get(control_status))
            .route("/fault", post(control_fault))
            .route("/faults", get(control_faults))
            .with_state(shared.clone());
        let stop_serving = stop.clone();
        spawn_part("the control API".to_owned(), stop, parts, async move {
            axum::serve(control_listener, app)
                .with_graceful_shutdown(stop_serving.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        });
    }
    let status = shared.status(false).await;
    write_state(state_dir, &status)?;
    if json {
        writeln!(out, "{}", json!(status)).map_err(|e| e.to_string())?;
    } else {
        writeln!(
            out,
            "Local two-region environment is up (Ctrl-C or `deployer local down` stops it)."
        )
        .map_err(|e| e.to_string())?;
        super::render(&status, out).map_err(|e| e.to_string())?;
        writeln!(
            out,
            "Try: curl --resolve {}:{port}:{} -H \"x-api-key: $(deployer local status --show-api-key --json | jq -r .api_key)\" {}todos",
            f.dns.domain_name,
            status.dns_answer.first().cloned().unwrap_or_default(),
            status.url
        )
        .map_err(|e| e.to_string())?;
    }
    let _ = out.flush();
    Ok(shared)
}

async fn control_status(State(shared): State<Arc<Shared>>, uri: Uri) -> Json<Status> {
    let show = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "show_api_key=true"));
    Json(shared.status(show).await)
}

#[derive(serde::Deserialize)]
struct FaultRequest {
    region: String,
    fault: String,
}

async fn control_fault(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<FaultRequest>,
) -> (StatusCode, Json<Value>) {
    let fault = match Fault::parse(&request.fault) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    };
    match shared.faults.set(&request.region, fault) {
        Ok(()) => {
            eprintln!("local: {} fault {}", request.region, fault.label());
            (
                StatusCode::OK,
                Json(json!({ "region": request.region, "fault": fault.label() })),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    }
}

async fn control_faults(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "faults": shared.faults.history(), "now": shared.faults.labels() }))
}

/// `local up --detach`: the same command in the background, returning once it is ready.
async fn up_detached(
    config: &Path,
    state_dir: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, String> {
    if let Some(s) = running(state_dir) {
        return Err(format!(
            "a local environment is already running for the state folder {} (pid {}, control {}); \
             stop it with `deployer local down`",
            state_dir.display(),
            s.pid,
            s.control
        ));
    }
    std::fs::create_dir_all(state_dir).map_err(io(&state_dir.display().to_string()))?;
    let log = state_dir.join("local.log");
    let file = std::fs::File::create(&log).map_err(io(&log.display().to_string()))?;
    let exe = std::env::current_exe().map_err(io("the deployer's path"))?;
    let mut child = std::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("local")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(io("log"))?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(io("starting the environment in the background"))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = running(state_dir).filter(|s| s.pid == pid) {
            if json {
                writeln!(out, "{}", json!(status)).map_err(|e| e.to_string())?;
            } else {
                writeln!(
                    out,
                    "Local two-region environment is up in the background (pid {pid}; log {}).",
                    log.display()
                )
                .map_err(|e| e.to_string())?;
                super::render(&status, out).map_err(|e| e.to_string())?;
            }
            return Ok(0);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(format!(
                "the environment did not start ({exit}); the last lines of {}:\n{}",
                log.display(),
                tail(&log, 25)
            ));
        }
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            return Err(format!(
                "the environment was not ready within 5 minutes; see {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `local down`: SIGTERM to the supervisor (the holder of the lock), which stops its children; then
/// any process the environment started that still runs (the supervisor died, or was killed while
/// starting) is stopped here: only processes whose PID and start time both match what was recorded.
pub async fn down(state_dir: &Path, json: bool, out: &mut dyn Write) -> Result<u8, String> {
    let mut stopped = Vec::new();
    let lock_held = state_dir.exists() && try_lock(state_dir)?.is_none();
    if lock_held {
        let pid: Option<u32> = std::fs::read_to_string(lock_file(state_dir))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let Some(pid) = pid else {
            return Err(format!(
                "the environment of {} is still starting (its lock has no PID yet); try again in a moment",
                state_dir.display()
            ));
        };
        // It holds the lock, so this PID is the supervisor's.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE * 3;
        while try_lock(state_dir)?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if try_lock(state_dir)?.is_none() {
            eprintln!("local: the supervisor (pid {pid}) did not stop within 30 s; killing it");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stopped.push(pid);
    }
    for p in leftovers(state_dir) {
        signal_group(p.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while p.runs() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if p.runs() {
            signal_group(p.pid, Signal::SIGKILL);
        }
        eprintln!(
            "local: stopped {} (pid {}), left by an earlier supervisor",
            p.name, p.pid
        );
        stopped.push(p.pid);
    }
    if stopped.is_empty() {
        release_lock(state_dir);
        if json {
            writeln!(out, "{}", json!({ "stopped": false })).map_err(|e| e.to_string())?;
        } else {
            writeln!(
                out,
                "Nothing is running for the state folder {}.",
                state_dir.display()
            )
            .map_err(|e| e.to_string())?;
        }
        return Ok(0);
    }
    release_lock(state_dir);
    if json {
        writeln!(out, "{}", json!({ "stopped": true, "pids": stopped }))
            .map_err(|e| e.to_string())?;
    } else {
        writeln!(
            out,
            "Stopped the local environment of {}.",
            state_dir.display()
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(0)
}
