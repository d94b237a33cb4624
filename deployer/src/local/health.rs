//! Route 53's health checkers, locally: every health check the zone's records use is probed from
//! several simulated checker locations (the check's regions, or Route 53's default eight), each on
//! its own phase of the interval as Route 53's uncoordinated checkers are. A checker changes its view
//! after `FailureThreshold` consecutive contrary results; the check is healthy when more than 18% of
//! its checkers say so; CALCULATED checks count healthy children against `HealthThreshold`;
//! `Disabled` counts as healthy and `Inverted` flips the result.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::zone::{CheckDef, Snapshot};

/// Route 53's default checker regions (used when a check names none).
pub use crate::config::CHECKER_REGIONS as DEFAULT_LOCATIONS;

/// Route 53 counts a TCP connection slower than this as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// ... and an HTTP status that does not arrive this long after connecting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// String matching reads this much of the body.
const MATCH_BYTES: usize = 5120;

/// One checker location's view of a check.
#[derive(Debug, Clone)]
struct LocationView {
    location: String,
    healthy: bool,
    last: Option<String>,
    streak: u32,
    next_due: Instant,
    in_flight: bool,
}

/// One checker location's view, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckerView {
    /// The simulated checker location.
    pub location: String,
    /// Its current view.
    pub healthy: bool,
    /// The last probe's outcome.
    pub last: Option<String>,
}

#[derive(Debug, Clone)]
struct CheckState {
    def: CheckDef,
    views: Vec<LocationView>,
}

/// Where a check's probes go: the local address for its target, or why there is none.
pub type Target = dyn Fn(&CheckDef) -> Result<SocketAddr, String> + Send + Sync;

/// The checkers' shared state.
#[derive(Default)]
pub struct Checker {
    state: Mutex<BTreeMap<String, CheckState>>,
}

/// A check as Route 53 concludes it, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// ID.
    pub id: String,
    /// Type.
    pub kind: String,
    /// Target (`fqdn:port path`).
    pub target: String,
    /// Inverted.
    pub inverted: bool,
    /// Disabled.
    pub disabled: bool,
    /// Route 53's conclusion.
    pub healthy: bool,
    /// Checkers reporting healthy, of all.
    pub checkers_healthy: usize,
    /// Every checker's view.
    pub checkers: Vec<CheckerView>,
    /// CALCULATED: the child checks' IDs.
    #[serde(default)]
    pub children: Vec<String>,
    /// CALCULATED: how many children must be healthy (above their number: always unhealthy, the
    /// deployer's switch turned off).
    #[serde(default)]
    pub health_threshold: Option<u32>,
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CheckState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Route 53's conclusion for `id` (unknown checks count as healthy).
    pub fn healthy(&self, id: &str) -> bool {
        conclude(&self.lock(), id, 0)
    }

    /// Every check and its checkers.
    pub fn report(&self) -> Vec<CheckReport> {
        let state = self.lock();
        state
            .values()
            .map(|s| CheckReport {
                id: s.def.id.clone(),
                kind: s.def.kind.clone(),
                target: format!(
                    "{}:{} {}",
                    s.def.fqdn.as_deref().or(s.def.ip.as_deref()).unwrap_or("-"),
                    s.def.port.unwrap_or(0),
                    s.def.path
                ),
                inverted: s.def.inverted,
                disabled: s.def.disabled,
                healthy: conclude(&state, &s.def.id, 0),
                checkers_healthy: s.views.iter().filter(|v| v.healthy).count(),
                checkers: s
                    .views
                    .iter()
                    .map(|v| CheckerView {
                        location: v.location.clone(),
                        healthy: v.healthy,
                        last: v.last.clone(),
                    })
                    .collect(),
                children: s.def.children.clone(),
                health_threshold: (s.def.kind == "CALCULATED").then_some(s.def.health_threshold),
            })
            .collect()
    }

    /// Takes the checks in `snapshot`: new ones start with every checker healthy (as Route 53 counts
    /// a new check until it has data), changed ones keep their checkers' views.
    fn sync(&self, snapshot: &Snapshot, now: Instant) {
        let mut state = self.lock();
        state.retain(|id, _| snapshot.checks.contains_key(id));
        for (id, def) in &snapshot.checks {
            let locations: Vec<String> = if def.regions.is_empty() {
                DEFAULT_LOCATIONS.iter().map(|s| (*s).to_owned()).collect()
            } else {
                def.regions.clone()
            };
            let interval = Duration::from_secs(u64::from(def.interval.max(1)));
            let fresh = || {
                let n = locations.len().max(1) as u32;
                locations
                    .iter()
                    .enumerate()
                    .map(|(i, location)| LocationView {
                        location: location.clone(),
                        healthy: true,
                        last: None,
                        streak: 0,
                        // Spread over the interval: the first probe of each location at its phase.
                        next_due: now + interval * i as u32 / n,
                        in_flight: false,
                    })
                    .collect::<Vec<_>>()
            };
            match state.get_mut(id) {
                Some(s) => {
                    let same_locations = s.views.len() == locations.len()
                        && s.views
                            .iter()
                            .zip(&locations)
                            .all(|(v, l)| &v.location == l);
                    if !same_locations {
                        s.views = fresh();
                    }
                    s.def = def.clone();
                }
                None => {
                    state.insert(
                        id.clone(),
                        CheckState {
                            def: def.clone(),
                            views: fresh(),
                        },
                    );
                }
            }
        }
    }

    /// The probes due now, marked in flight.
    fn due(&self, now: Instant) -> Vec<(String, usize, CheckDef)> {
        let mut state = self.lock();
        let mut due = Vec::new();
        for (id, s) in state.iter_mut() {
            if s.def.kind == "CALCULATED" || s.def.disabled {
                continue;
            }
            let interval = Duration::from_secs(u64::from(s.def.interval.max(1)));
            for (i, view) in s.views.iter_mut().enumerate() {
                if !view.in_flight && view.next_due <= now {
                    view.in_flight = true;
                    view.next_due = now + interval;
                    due.push((id.clone(), i, s.def.clone()));
                }
            }
        }
        due
    }

    /// Records one probe's result.
    fn record(&self, id: &str, index: usize, ok: bool, detail: String) {
        let mut state = self.lock();
        let Some(s) = state.get_mut(id) else {
            return;
        };
        let threshold = s.def.threshold.max(1);
        let Some(view) = s.views.get_mut(index) else {
            return;
        };
        view.in_flight = false;
        view.last = Some(detail);
        if ok == view.healthy {
            view.streak = 0;
        } else {
            view.streak += 1;
            if view.streak >= threshold {
                view.healthy = ok;
                view.streak = 0;
            }
        }
    }

    /// Probes until `stop`, taking the checks from every new snapshot.
    pub async fn run(
        self: Arc<Self>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        target: Arc<Target>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if snapshots.has_changed().unwrap_or(false) {
                let snapshot = snapshots.borrow_and_update().clone();
                self.sync(&snapshot, Instant::now());
            }
            for (id, index, def) in self.due(Instant::now()) {
                let me = self.clone();
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let outcome = tokio::select! {
                        () = stop.cancelled() => return,
                        outcome = probe(&def, &*target) => outcome,
                    };
                    let (ok, detail) = match outcome {
                        Ok(detail) => (true, detail),
                        Err(detail) => (false, detail),
                    };
                    me.record(&id, index, ok, detail);
                });
            }
        }
    }
}

fn conclude(state: &BTreeMap<String, CheckState>, id: &str, depth: usize) -> bool {
    let Some(s) = state.get(id) else {
        return true;
    };
    let def = &s.def;
    let base = if def.disabled {
        true
    } else if def.kind == "CALCULATED" {
        let healthy = if depth > 4 {
            0
        } else {
            def.children
                .iter()
                .filter(|c| conclude(state, c, depth + 1))
                .count()
        };
        healthy >= def.health_threshold as usize
    } else {
        let up = s.views.iter().filter(|v| v.healthy).count();
        !s.views.is_empty() && up * 100 > s.views.len() * 18
    };
    base != def.inverted
}

/// One probe: Ok with what was seen, Err with why it failed.
async fn probe(def: &CheckDef, target: &Target) -> Result<String, String> {
    let addr = target(def)?;
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
            Err(_) => return Err(format!("connect {addr}: no connection within 4 s")),
        };
    if def.kind == "TCP" {
        return Ok(format!("connected to {addr}"));
    }
    let host = def
        .fqdn
        .clone()
        .or_else(|| def.ip.clone())
        .unwrap_or_else(|| addr.ip().to_string());
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(def.path.as_str())
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                "Amazon-Route53-Health-Check-Service (local)",
            )
            .header(hyper::header::CONNECTION, "close")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = match tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await {
        Ok(r) => r?,
        Err(_) => return Err("no HTTP status within 2 s".to_owned()),
    };
    let status = response.status();
    if !(status.is_success() || status.is_redirection()) {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    if let Some(search) = &def.search {
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < MATCH_BYTES {
            match tokio::time::timeout(RESPONSE_TIMEOUT, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        seen.truncate(MATCH_BYTES);
        if !String::from_utf8_lossy(&seen).contains(search.as_str()) {
            return Err(format!(
                "HTTP {}: {search:?} not in the body",
                status.as_u16()
            ));
        }
    }
    Ok(format!("HTTP {}", status.as_u16()))
}

/// The local address for a check: its IP address, or its name resolved by `resolve`; ports 80 and
/// 443 (and none) become the shared API port, since every local API serves plain HTTP on it.
pub fn local_target(
    def: &CheckDef,
    api_port: u16,
    resolve: &dyn Fn(&str) -> Option<Ipv4Addr>,
) -> Result<SocketAddr, String> {
    let ip = match (&def.ip, &def.fqdn) {
        (Some(ip), _) => ip
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?,
        (None, Some(name)) => {
            resolve(name).ok_or_else(|| format!("{name} does not resolve locally"))?
        }
        (None, None) => return Err("the check has no target".to_owned()),
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{ip} is not a loopback address: the local checker probes 127.0.0.0/8 only"
        ));
    }
    let port = match def.port {
        None | Some(80) | Some(443) => api_port,
        Some(p) => p,
    };
    Ok(SocketAddr::from((ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: &str, kind: &str) -> CheckDef {
        CheckDef {
            id: id.into(),
            kind: kind.into(),
            fqdn: Some("abc.execute-api.us-east-1.amazonaws.com".into()),
            ip: None,
            port: Some(443),
            path: "/live/todos/health".into(),
            interval: 10,
            threshold: 3,
            inverted: false,
            disabled: false,
            search: None,
            children: vec![],
            health_threshold: 0,
            regions: vec![],
        }
    }

    fn checker(defs: Vec<CheckDef>) -> Checker {
        let checker = Checker::default();
        let snapshot = Snapshot {
            zone: "todos.test.".into(),
            records: vec![],
            checks: defs.into_iter().map(|d| (d.id.clone(), d)).collect(),
        };
        checker.sync(&snapshot, Instant::now());
        checker
    }

    #[test]
    fn threshold_and_eighteen_percent() {
        let c = checker(vec![def("a", "HTTPS")]);
        assert!(c.healthy("a"));
        // Two failures from every checker: still healthy (threshold 3).
        for _ in 0..2 {
            for i in 0..8 {
                c.record("a", i, false, "x".into());
            }
        }
        assert!(c.healthy("a"));
        // The third failure from 7 of 8 checkers: 1/8 = 12.5% healthy -> unhealthy.
        for i in 0..7 {
            c.record("a", i, false, "x".into());
        }
        assert!(!c.healthy("a"));
        // The last checker fails too; then one checker back (1/8): still unhealthy; two (2/8 =
        // 25% > 18%): healthy again.
        c.record("a", 7, false, "x".into());
        c.record("a", 7, false, "x".into());
        c.record("a", 7, false, "x".into());
        for _ in 0..3 {
            c.record("a", 0, true, "ok".into());
        }
        assert!(!c.healthy("a"));
        for _ in 0..3 {
            c.record("a", 1, true, "ok".into());
        }
        assert!(c.healthy("a"));
    }

    #[test]
    fn inverted_disabled_and_calculated() {
        let mut inverted = def("inv", "HTTPS");
        inverted.inverted = true;
        let mut disabled = def("off", "HTTPS");
        disabled.disabled = true;
        let mut calc = def("calc", "CALCULATED");
        calc.children = vec!["inv".into(), "off".into()];
        calc.health_threshold = 2;
        let c = checker(vec![inverted, disabled, calc]);
        assert!(!c.healthy("inv"));
        assert!(c.healthy("off"));
        assert!(
            !c.healthy("calc"),
            "one of two children healthy, threshold 2"
        );
        assert!(c.healthy("unknown"));
        // A disabled check is never probed.
        assert!(
            c.due(Instant::now() + Duration::from_secs(60))
                .iter()
                .all(|(id, _, _)| id == "inv")
        );
    }

    #[test]
    fn targets_map_to_the_local_port() {
        let resolve = |_: &str| Some(Ipv4Addr::new(127, 0, 0, 11));
        let d = def("a", "HTTPS");
        assert_eq!(
            local_target(&d, 8080, &resolve),
            Ok("127.0.0.11:8080".parse().unwrap())
        );
        let mut far = d.clone();
        far.ip = Some("10.0.0.1".into());
        assert!(
            local_target(&far, 8080, &resolve)
                .unwrap_err()
                .contains("loopback")
        );
    }
}
