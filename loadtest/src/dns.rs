//! Resolving the target's host as a well-behaved client does: one lookup, kept for the answer's TTL
//! (hickory-resolver's `valid_until`), then looked up again; new connections go to the newest
//! answer. Every change of answer is recorded with its time, for `dns_moved_seconds`.
//!
//! A lookup that fails keeps the last answer (as browsers and most resolvers' clients do) and is
//! retried a second later; the failure is counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The shortest time an answer is kept (a TTL of 0 would otherwise mean a lookup per request).
const MIN_KEEP: Duration = Duration::from_millis(100);

/// A change of answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsChange {
    /// Seconds from the start of the run.
    pub t: f64,
    /// The answer before.
    pub from: Vec<String>,
    /// The answer after.
    pub to: Vec<String>,
}

struct State {
    addrs: Vec<SocketAddr>,
    valid_until: Instant,
    changes: Vec<DnsChange>,
    lookups: u64,
    failures: u64,
}

enum Source {
    /// The URL names an address: nothing to resolve.
    Literal,
    /// A name, looked up with this resolver.
    Name {
        resolver: Box<TokioResolver>,
        host: String,
    },
}

/// The current answer for the target's host.
pub struct Dns {
    source: Source,
    port: u16,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn texts(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(|a| a.ip().to_string()).collect()
}

impl Dns {
    /// Resolves `host` once (through `resolver`, or the system's configuration when None) and
    /// returns the answer holder; fails with a message when the first lookup does.
    pub async fn new(host: &str, port: u16, resolver: Option<SocketAddr>) -> Result<Dns, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Dns {
                source: Source::Literal,
                port,
                state: Mutex::new(State {
                    addrs: vec![SocketAddr::new(ip, port)],
                    valid_until: Instant::now() + Duration::from_secs(86_400 * 365),
                    changes: Vec::new(),
                    lookups: 0,
                    failures: 0,
                }),
            });
        }
        let mut builder = match resolver {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    server.ip(),
                    true,
                    vec![udp, tcp],
                )]);
                let mut b =
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                b.options_mut().use_hosts_file = ResolveHosts::Never;
                b
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("the system's DNS configuration: {e}"))?,
        };
        builder.options_mut().timeout = Duration::from_secs(2);
        builder.options_mut().attempts = 2;
        let built = builder
            .build()
            .map_err(|e| format!("the DNS resolver: {e}"))?;
        let dns = Dns {
            source: Source::Name {
                resolver: Box::new(built),
                host: host.to_owned(),
            },
            port,
            state: Mutex::new(State {
                addrs: Vec::new(),
                valid_until: Instant::now(),
                changes: Vec::new(),
                lookups: 0,
                failures: 0,
            }),
        };
        let (addrs, valid_until) = dns.lookup().await.map_err(|e| {
            format!(
                "cannot resolve {host}{}: {e}",
                resolver
                    .map(|r| format!(" through {r}"))
                    .unwrap_or_default()
            )
        })?;
        {
            let mut s = lock(&dns.state);
            s.addrs = addrs;
            s.valid_until = valid_until;
            s.lookups = 1;
        }
        Ok(dns)
    }

    async fn lookup(&self) -> Result<(Vec<SocketAddr>, Instant), String> {
        let Source::Name { resolver, host } = &self.source else {
            return Err("an address needs no lookup".to_owned());
        };
        let answer = resolver
            .lookup_ip(host.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut addrs: Vec<SocketAddr> = answer
            .iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no addresses in the answer".to_owned());
        }
        let valid_until = Instant::from_std(answer.valid_until()).max(Instant::now() + MIN_KEEP);
        Ok((addrs, valid_until))
    }

    /// Where new connections go now (the answer's first address, in a stable order).
    pub fn current(&self) -> SocketAddr {
        lock(&self.state).addrs[0]
    }

    /// Whether `addr` is in the current answer (pooled connections elsewhere are dropped).
    pub fn holds(&self, addr: SocketAddr) -> bool {
        lock(&self.state).addrs.contains(&addr)
    }

    /// The changes of answer so far.
    pub fn changes(&self) -> Vec<DnsChange> {
        lock(&self.state).changes.clone()
    }

    /// Lookups made and failed.
    pub fn counts(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.lookups, s.failures)
    }

    /// Looks the name up again whenever the answer expires, until `stop`; `start` is the run's
    /// start (for the times of changes).
    pub async fn refresh(self: Arc<Self>, start: Instant, stop: CancellationToken) {
        if matches!(self.source, Source::Literal) {
            return;
        }
        loop {
            let due = lock(&self.state).valid_until;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
            }
            let result = self.lookup().await;
            let mut s = lock(&self.state);
            s.lookups += 1;
            match result {
                Ok((addrs, valid_until)) => {
                    if addrs != s.addrs {
                        let change = DnsChange {
                            t: start.elapsed().as_secs_f64(),
                            from: texts(&s.addrs),
                            to: texts(&addrs),
                        };
                        s.changes.push(change);
                        s.addrs = addrs;
                    }
                    s.valid_until = valid_until;
                }
                Err(_) => {
                    s.failures += 1;
                    s.valid_until = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }
}

/// `dns_moved_seconds`: from `fault_at` to the first change after it to an answer with no address
/// in common with the one before (a rotation among one region's addresses is not a move).
pub fn moved_after(changes: &[DnsChange], fault_at: f64) -> Option<f64> {
    changes
        .iter()
        .find(|c| c.t >= fault_at && c.from.iter().all(|a| !c.to.contains(a)))
        .map(|c| c.t - fault_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_within_one_region_is_not_a_move() {
        let change = |t: f64, from: &[&str], to: &[&str]| DnsChange {
            t,
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
        };
        let changes = [
            change(3.0, &["10.0.0.1"], &["10.0.0.2"]),
            change(12.0, &["10.0.0.2", "10.0.0.3"], &["10.0.0.3", "10.0.0.4"]),
            change(20.5, &["10.0.0.3", "10.0.0.4"], &["10.1.0.1"]),
        ];
        assert_eq!(moved_after(&changes, 10.0), Some(10.5));
        assert_eq!(moved_after(&changes, 2.0), Some(1.0));
        assert_eq!(moved_after(&changes, 21.0), None);
    }

    #[tokio::test]
    async fn an_address_needs_no_lookup() {
        let dns = Dns::new("127.0.0.9", 8080, None).await.expect("literal");
        assert_eq!(dns.current(), "127.0.0.9:8080".parse().expect("addr"));
        let dns6 = Dns::new("[::1]", 80, None).await.expect("literal v6");
        assert_eq!(dns6.current(), "[::1]:80".parse().expect("addr"));
    }

    #[tokio::test]
    async fn a_name_the_resolver_cannot_answer_is_an_error() {
        // Nothing listens on this loopback port: the lookup times out and says through what.
        let Err(err) = Dns::new(
            "api.example.test",
            80,
            Some("127.0.0.1:9".parse().expect("addr")),
        )
        .await
        else {
            panic!("no DNS server there, yet an answer");
        };
        assert!(
            err.contains("cannot resolve api.example.test through 127.0.0.1:9"),
            "{err}"
        );
    }
}
