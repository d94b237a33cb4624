//! `deployer local up | down | status | fault`: both regions on one machine, on loopback only, with
//! the failover DNS and Route 53's health checking that the local AWS does not have, and faults per
//! region (docs/local.md).
//!
//! # Layout
//! - `env`: the running environment (`local up`): the local AWS, `deployer up` against it, per
//!   region the sample-app process behind its front, the replicator processes, the DNS server, the
//!   health checker, the control API, and the state file; stops everything on every exit path.
//! - `gateway`: a region's API front (API Gateway's data plane) and its faults.
//! - `aws_proxy`: the region-aware proxy in front of the local AWS (outages, cross-region delay).
//! - `zone`: Route 53's state and the answers its DNS gives; `dns`: the server; `health`: checkers.
//! - `faults`: the fault each region is in; `http`: shared HTTP plumbing.
//!
//! # Invariants
//! - Every socket is bound to 127.0.0.0/8.
//! - `local down`, Ctrl-C, SIGTERM and the death of any child stop every process it started.

pub mod aws_proxy;
pub mod dns;
pub mod env;
pub mod faults;
pub mod gateway;
pub mod health;
pub mod http;
pub mod zone;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::config::Deployment;

/// `deployer local ...`
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start both regions, the DNS server, the health checker and the replicators on loopback, and
    /// run `deployer up` against the local AWS; stays in the foreground until Ctrl-C or SIGTERM.
    Up {
        /// Start in the background and return once everything is ready (stop with `local down`).
        #[arg(long)]
        detach: bool,
    },
    /// Stop the environment of this state folder: every process it started.
    Down,
    /// Each region's health and fault, what DNS answers now, the replicators' state and lag.
    Status {
        /// Include the API key's value (`api_key`).
        #[arg(long)]
        show_api_key: bool,
    },
    /// Put a region in a fault: outage, unhealthy, slow=DURATION, or recover.
    Fault {
        /// The region (one of the config's two).
        #[arg(long)]
        region: String,
        /// outage | unhealthy | slow=DURATION (e.g. slow=500ms) | recover
        fault: String,
    },
}

/// The environment's settings, from `[local]` and the rest of the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[primary, secondary]`.
    pub regions: [String; 2],
    /// Each region's loopback address.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// The API port (0: choose).
    pub port: u16,
    /// The DNS port (0: choose).
    pub dns_port: u16,
    /// The control port (0: choose).
    pub control_port: u16,
    /// Cross-region round trip.
    pub delay: Duration,
    /// TTL of alias answers.
    pub alias_ttl: u32,
    /// Where latency routing places the client.
    pub client_region: String,
}

impl Settings {
    /// Reads `[local]`; every error names the field.
    pub fn from_deployment(d: &Deployment) -> Result<Settings, String> {
        let l = &d.file.local;
        let mut addresses = BTreeMap::new();
        for (i, region) in d.regions.iter().enumerate() {
            let default = Ipv4Addr::new(127, 0, 0, 11 + i as u8);
            let addr = match l.addresses.get(region) {
                Some(text) => text.parse::<Ipv4Addr>().map_err(|_| {
                    format!("local.addresses.{region}: {text:?} is not an IPv4 address")
                })?,
                None => default,
            };
            if !addr.is_loopback() {
                return Err(format!(
                    "local.addresses.{region}: {addr} is not a loopback address (127.0.0.0/8); \
                     the local environment binds loopback only"
                ));
            }
            addresses.insert(region.clone(), addr);
        }
        if let Some(other) = l.addresses.keys().find(|r| !d.regions.contains(r)) {
            return Err(format!(
                "local.addresses.{other}: not one of the config's regions ({} and {})",
                d.regions[0], d.regions[1]
            ));
        }
        if addresses[&d.regions[0]] == addresses[&d.regions[1]] {
            return Err(
                "local.addresses: both regions have the same address; they share the port, so \
                 they need two addresses (e.g. 127.0.0.11 and 127.0.0.12)"
                    .to_owned(),
            );
        }
        let delay = match &l.cross_region_delay {
            Some(text) => tworegion_common::duration::parse_duration(text)
                .map_err(|e| format!("local.cross_region_delay: {e}"))?,
            None => Duration::from_millis(65),
        };
        if delay > Duration::from_secs(10) {
            return Err("local.cross_region_delay: at most 10s".to_owned());
        }
        let client_region = l
            .client_region
            .clone()
            .unwrap_or_else(|| d.regions[0].clone());
        if !d.regions.contains(&client_region) {
            return Err(format!(
                "local.client_region: {client_region:?} is not one of the config's regions"
            ));
        }
        let alias_ttl = l.alias_ttl.unwrap_or(60);
        if alias_ttl > 86_400 {
            return Err("local.alias_ttl: at most 86400 seconds".to_owned());
        }
        Ok(Settings {
            regions: d.regions.clone(),
            addresses,
            port: l.port,
            dns_port: l.dns_port,
            control_port: l.control_port,
            delay,
            alias_ttl,
            client_region,
        })
    }
}

/// A region in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionStatus {
    /// The region's API (its address and the shared port).
    pub endpoint: String,
    /// `none`, `outage`, `unhealthy`, `slow=...`.
    pub fault: String,
    /// Route 53's conclusion from the local checkers (None: no health check yet).
    pub healthy: Option<bool>,
    /// The table.
    pub table: String,
    /// The AWS endpoint for processes inside this region (calls to the other region are delayed).
    pub aws_endpoint: String,
    /// The region's execute-api host.
    pub api_host: Option<String>,
    /// The sample-app process.
    pub app_pid: Option<u32>,
    /// The check the region's DNS record uses (the deployer's switch) and every checker's view.
    pub health_check: Option<health::CheckReport>,
    /// The switch's child: the check on the region's endpoint, the region's real health.
    #[serde(default)]
    pub endpoint_check: Option<health::CheckReport>,
}

/// A replicator in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicatorStatus {
    /// Source region.
    pub source_region: String,
    /// Target region (where it runs).
    pub target_region: String,
    /// Process ID.
    pub pid: u32,
    /// `running` or why it is not.
    pub state: String,
    /// Its metrics (`/metrics`, `/healthz`).
    pub metrics: String,
    /// `replicator_oldest_unapplied_age_seconds` (None: not scraped).
    pub lag_seconds: Option<f64>,
    /// `replicator_records_applied_total`.
    pub records_applied: Option<f64>,
    /// Its log file.
    pub log: String,
}

/// `local status --json`, also the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The public name.
    pub domain_name: String,
    /// The public URL (through the DNS server).
    pub url: String,
    /// The DNS server (UDP and TCP).
    pub dns: String,
    /// The control API.
    pub control: String,
    /// The environment variable holding the API key (None: generated; see `api_key`).
    pub api_key_env: Option<String>,
    /// The API key (only with `--show-api-key` / `?show_api_key=true`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api_key: Option<String>,
    /// The AWS endpoint for tools outside both regions (an outage fails calls signed for it).
    pub aws_endpoint: String,
    /// The local AWS itself.
    pub local_aws: String,
    /// The region DNS answers with for the public name now.
    pub serving: Option<String>,
    /// The addresses DNS answers with now.
    pub dns_answer: Vec<String>,
    /// `alias` or `cname`.
    pub record_style: String,
    /// TTL of the public name's answers.
    pub ttl_seconds: u32,
    /// Worst case from a region failing to clients moving (interval x threshold + TTL).
    pub expected_failover_seconds: u64,
    /// Per region.
    pub regions: BTreeMap<String, RegionStatus>,
    /// The replicators.
    pub replicators: Vec<ReplicatorStatus>,
    /// Faults injected so far.
    pub faults: Vec<faults::FaultEvent>,
    /// The supervisor's process ID (`local down` stops it).
    pub pid: u32,
    /// The supervisor's start time (so a reused PID is never taken for it).
    pub pid_start: u64,
    /// Every process it started (for `local down` after a crash).
    pub children: Vec<Proc>,
    /// Logs of the processes.
    pub logs: String,
}

/// A process the environment started, identified by its PID and start time together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// What it is (`replicator us-east-1 -> us-west-2`).
    pub name: String,
    /// Process ID.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Proc {
    /// Whether this very process still runs (not a zombie, and its PID not reused since).
    pub fn runs(&self) -> bool {
        stat(self.pid)
            .is_some_and(|(state, start)| state != "Z" && state != "X" && start == self.start)
    }
}

/// `(state, start time)` of a process from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses): state is field 3, start time field 22.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

/// The start time of a running process (None if it does not run).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// The state file in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// The status written at start and kept fresh, if that environment's supervisor still runs.
pub fn running(dir: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(state_file(dir)).ok()?;
    let status: Status = serde_json::from_str(&text).ok()?;
    let supervisor = Proc {
        name: "supervisor".to_owned(),
        pid: status.pid,
        start: status.pid_start,
    };
    supervisor.runs().then_some(status)
}

/// Runs one `local` command. Returns the exit code.
pub async fn run(
    command: &LocalCommand,
    config: &Path,
    state_dir: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, String> {
    match command {
        LocalCommand::Up { detach } => env::up(config, state_dir, *detach, json, out).await,
        LocalCommand::Down => env::down(state_dir, json, out).await,
        LocalCommand::Status { show_api_key } => {
            let status = fetch_status(state_dir, *show_api_key).await?;
            if json {
                writeln!(out, "{}", serde_json::json!(status)).map_err(|e| e.to_string())?;
            } else {
                render(&status, out).map_err(|e| e.to_string())?;
            }
            Ok(0)
        }
        LocalCommand::Fault { region, fault } => {
            let parsed = faults::Fault::parse(fault)?;
            let status = running(state_dir).ok_or_else(|| not_running(state_dir))?;
            if !status.regions.contains_key(region) {
                return Err(format!(
                    "--region {region}: not in this environment; use {}",
                    status
                        .regions
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" or ")
                ));
            }
            let body = serde_json::json!({ "region": region, "fault": parsed.label() });
            let answer = control_call(&status.control, "POST", "/fault", Some(body)).await?;
            if json {
                writeln!(out, "{answer}").map_err(|e| e.to_string())?;
            } else {
                writeln!(out, "{region}: fault {}", parsed.label()).map_err(|e| e.to_string())?;
            }
            Ok(0)
        }
    }
}

fn not_running(state_dir: &Path) -> String {
    format!(
        "no local environment is running for the state folder {}; start one with `deployer local up` \
         (or pass the --state-dir it used)",
        state_dir.display()
    )
}

/// The live status from the control API.
pub async fn fetch_status(state_dir: &Path, show_api_key: bool) -> Result<Status, String> {
    let status = running(state_dir).ok_or_else(|| not_running(state_dir))?;
    let path = if show_api_key {
        "/status?show_api_key=true"
    } else {
        "/status"
    };
    let answer = control_call(&status.control, "GET", path, None).await?;
    serde_json::from_value(answer).map_err(|e| format!("the control API's status: {e}"))
}

/// One call to the control API: the JSON answer, or its error message.
pub async fn control_call(
    control: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let addr = control.trim_start_matches("http://");
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("the control API at {control} did not answer"))?
        .map_err(|e| format!("the control API at {control}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("the control API at {control} did not answer within 10 s"))??;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("the control API answered {status} with no JSON: {e}"))?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the control API refused the call")
            .to_owned())
    }
}

/// The human form of `local status`.
pub fn render(s: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{} -> serving {} (DNS {} answers {})",
        s.url,
        s.serving.as_deref().unwrap_or("nothing"),
        s.dns,
        if s.dns_answer.is_empty() {
            "nothing".to_owned()
        } else {
            s.dns_answer.join(", ")
        }
    )?;
    writeln!(
        out,
        "records {} (TTL {} s); worst-case failover about {} s",
        s.record_style, s.ttl_seconds, s.expected_failover_seconds
    )?;
    for (region, r) in &s.regions {
        // The endpoint's checkers (the real health), and the switch when the record uses one.
        let probed = r.endpoint_check.as_ref().or(r.health_check.as_ref());
        let health = match (&r.healthy, probed) {
            (Some(h), Some(c)) => format!(
                "{} ({}/{} checkers healthy{}{}{})",
                if *h { "healthy" } else { "UNHEALTHY" },
                c.checkers_healthy,
                c.checkers.len(),
                if c.inverted { ", inverted" } else { "" },
                if c.disabled { ", disabled" } else { "" },
                match &r.health_check {
                    Some(s)
                        if s.health_threshold.is_some_and(|t| {
                            usize::try_from(t).is_ok_and(|t| t > s.children.len())
                        }) =>
                        ", switch OFF: failover sent traffic away",
                    _ => "",
                }
            ),
            _ => "no health check".to_owned(),
        };
        writeln!(
            out,
            "{region:<10} {}  fault {}  {health}  table {}",
            r.endpoint, r.fault, r.table
        )?;
    }
    for rep in &s.replicators {
        writeln!(
            out,
            "replicator {} -> {}: {}, lag {}, applied {}, metrics {}",
            rep.source_region,
            rep.target_region,
            rep.state,
            rep.lag_seconds
                .map(|l| format!("{l:.1} s"))
                .unwrap_or_else(|| "?".to_owned()),
            rep.records_applied
                .map(|n| format!("{n}"))
                .unwrap_or_else(|| "?".to_owned()),
            rep.metrics
        )?;
    }
    writeln!(
        out,
        "control {}  AWS {}  logs {}",
        s.control, s.aws_endpoint, s.logs
    )?;
    if let Some(key) = &s.api_key {
        writeln!(out, "API key {key}")?;
    }
    Ok(())
}
