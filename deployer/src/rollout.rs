//! Rolling out region by region: `up` changes the region that is not serving first, checks it (its
//! Route 53 health check must pass on the new version, and a smoke request through its regional
//! endpoint must succeed), and only then changes the other. A region that fails its check is rolled
//! back by moving its Lambda alias to the version it named before, and the other region is not
//! touched. `up --parallel` changes both at once, unchecked.
//!
//! What a check can and cannot catch: a build that fails its requests (errors, crashes, a broken
//! route) shows in both probes; one that fails only under load or for some keys does not. Only the
//! Lambda alias is rolled back: a change to API Gateway, DNS or the table is not undone (those are
//! reconciled to the config, and the config is what changed).

use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::engine::effective_health;
use crate::resources::health_check;

/// How `up` changes the two regions.
#[derive(Clone, Copy)]
pub enum Rollout<'a> {
    /// Both regions in one pass, nothing checked between them (`up --parallel`).
    Parallel,
    /// One region at a time, the one not serving first, each checked by the gate before the next.
    RegionByRegion(&'a dyn Gate),
}

/// The region's endpoint check as Route 53 runs it.
#[derive(Debug, Clone)]
pub struct CheckRef {
    /// Its ID.
    pub id: String,
    /// Seconds between probes of one checker (10 or 30).
    pub interval: u64,
    /// Failed probes in a row before a checker reads unhealthy.
    pub threshold: u64,
    /// Whether the check is inverted (an earlier version's failover).
    pub inverted: bool,
}

/// What a gate checks in one region just changed.
#[derive(Debug, Clone)]
pub struct Target {
    /// The region.
    pub region: String,
    /// Route 53 (global), to read the endpoint check's checkers.
    pub route53: aws_sdk_route53::Client,
    /// The region's endpoint check, once it exists.
    pub check: Option<CheckRef>,
    /// The regional endpoint (`https://<api>.execute-api.<region>.amazonaws.com/<stage>`).
    pub base_url: Option<String>,
    /// The health path (`/todos/health`).
    pub health_path: String,
    /// The API key, for a smoke request through the keyed route.
    pub api_key: Option<String>,
}

/// Decides whether a region that was just changed is fit to serve. `Err` says why not.
pub trait Gate: Send + Sync {
    /// Checks `target`.
    fn check<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<(), String>>;
}

/// The gate `up` uses: Route 53's checkers must read the region healthy after they have probed the
/// new version, then a smoke request must succeed through the regional endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HealthGate {
    /// The longest the check may take beyond what the checkers need: the health wait is never
    /// shorter than the checkers' settle time plus 15 s, the smoke requests get at least 20 s.
    pub timeout: Duration,
}

impl Gate for HealthGate {
    fn check<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            if let Some(check) = &target.check {
                wait_healthy(&target.route53, check, self.timeout).await?;
            }
            let Some(base) = &target.base_url else {
                return Err(
                    "the region has no regional endpoint to send a smoke request to".into(),
                );
            };
            // What is left of the time, but at least 20 s: a new key's usage plan membership and
            // a cold start can take a few seconds to answer.
            let budget = self
                .timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(20));
            smoke_until(base, &target.health_path, target.api_key.as_deref(), budget).await
        })
    }
}

/// [`smoke`], tried every 5 s until it succeeds or `budget` is spent; the last failure is the answer.
pub async fn smoke_until(
    base: &str,
    health_path: &str,
    api_key: Option<&str>,
    budget: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = smoke(
            base,
            health_path,
            api_key,
            left.min(Duration::from_secs(10)),
        )
        .await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + Duration::from_secs(5) < deadline => {
                tracing::info!("smoke request failed, trying again in 5 s: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long after a change Route 53's checkers need to have probed it: each checker fails a region
/// after `threshold` failed probes `interval` seconds apart; a little more for the status to reach
/// the API.
pub fn settle_time(check: &CheckRef) -> Duration {
    Duration::from_secs(check.interval * check.threshold + 5)
}

/// Waits until the checkers have had time to probe the new version (the whole [`settle_time`],
/// whatever `timeout` says: a verdict read earlier could be the old version's), then until they read
/// it healthy: until `timeout`, no longer than two more settle times (a region still unhealthy that
/// long after the change is failing, not starting), and at least 15 s.
async fn wait_healthy(
    route53: &aws_sdk_route53::Client,
    check: &CheckRef,
    timeout: Duration,
) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    let settle = settle_time(check);
    tokio::time::sleep(settle).await;
    let deadline = start
        + timeout
            .min(settle * 3)
            .max(settle + Duration::from_secs(15));
    loop {
        let (healthy, reporting) = health_check::checker_status(route53, &check.id)
            .await
            .map_err(|e| e.to_string())?;
        if effective_health(healthy, reporting, check.inverted) {
            return Ok(());
        }
        if tokio::time::Instant::now() + Duration::from_secs(5) > deadline {
            return Err(format!(
                "its health check {} reads unhealthy ({healthy} of {reporting} checkers healthy) \
                 {} s after the change",
                check.id,
                start.elapsed().as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The smoke request: `GET <base><health path>` must answer 200, and, with a key, `GET
/// <base>/todos?limit=1` through the keyed route must answer 2xx. Follows no redirects.
pub async fn smoke(
    base: &str,
    health_path: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let base = base.trim_end_matches('/');
    let health = format!("{base}{health_path}");
    let status = get(&health, None, timeout).await?;
    if status != 200 {
        return Err(format!("GET {health} answered {status}, not 200"));
    }
    if let Some(key) = api_key {
        let list = format!("{base}/todos?limit=1");
        let status = get(&list, Some(key), timeout).await?;
        if !(200..300).contains(&status) {
            return Err(format!("GET {list} (with the API key) answered {status}"));
        }
    }
    Ok(())
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// The smoke requests' client, built once (the system's TLS roots are read from disk).
fn http_client() -> Result<&'static HttpClient, String> {
    static CLIENT: std::sync::OnceLock<Result<HttpClient, String>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
                .map_err(|e| format!("no TLS roots on this machine: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            // No idle connections kept: a few requests seconds apart need none, and a kept one
            // would belong to the runtime that opened it.
            Ok(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build(connector),
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One GET over HTTPS (the system's roots) or HTTP; returns the status.
async fn get(url: &str, api_key: Option<&str>, timeout: Duration) -> Result<u16, String> {
    let client = http_client()?;
    let mut request = hyper::Request::get(url);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let response = tokio::time::timeout(timeout, async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        // Read the body so that a response cut short counts as a failure.
        response.into_body().collect().await?;
        Ok::<u16, Box<dyn std::error::Error + Send + Sync>>(status)
    })
    .await
    .map_err(|_| format!("GET {url}: no answer within {} s", timeout.as_secs()))?;
    response.map_err(|e| format!("GET {url}: {e}"))
}

/// The order of a region-by-region rollout: a region that DNS does not send clients to goes first;
/// when both serve (latency routing), the secondary (the second configured region). When none does
/// (a first deployment, no records yet) the primary goes first: no client is served either way, and
/// the secondary's API key takes the value API Gateway generates in the primary.
pub fn order(regions: &[String; 2], serving: &[String]) -> [String; 2] {
    let [primary, secondary] = regions.clone();
    let serves = |r: &String| serving.contains(r);
    if serving.is_empty() || (serves(&secondary) && !serves(&primary)) {
        [primary, secondary]
    } else {
        [secondary, primary]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> [String; 2] {
        ["us-east-1".to_owned(), "us-west-2".to_owned()]
    }

    #[test]
    fn the_region_not_serving_goes_first() {
        let [a, b] = regions();
        assert_eq!(
            order(&regions(), std::slice::from_ref(&a)),
            [b.clone(), a.clone()]
        );
        assert_eq!(
            order(&regions(), std::slice::from_ref(&b)),
            [a.clone(), b.clone()]
        );
        assert_eq!(
            order(&regions(), &[a.clone(), b.clone()]),
            [b.clone(), a.clone()]
        );
        assert_eq!(
            order(&regions(), &[]),
            [a, b],
            "a first deployment: the primary"
        );
    }

    #[test]
    fn checkers_get_threshold_probes_before_a_verdict() {
        let check = CheckRef {
            id: "x".into(),
            interval: 10,
            threshold: 3,
            inverted: false,
        };
        assert_eq!(settle_time(&check), Duration::from_secs(35));
    }

    /// A loopback server (see [`serve_on`]); returns its base URL.
    async fn server(health: u16, list: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve_on(listener, health, list);
        format!("http://{addr}/live")
    }

    /// Serves `health` on the health path, `list` on keyed requests, 403 otherwise.
    fn serve_on(listener: tokio::net::TcpListener, health: u16, list: u16) {
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let keyed = req.headers().get("x-api-key").is_some();
                        let status = if req.uri().path() == "/live/todos/health" {
                            health
                        } else if keyed {
                            list
                        } else {
                            403
                        };
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn the_smoke_request_is_tried_again_within_its_budget() {
        // Unreachable for the first attempt, serving from the second.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let start = tokio::time::Instant::now();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), 200, 200);
        });
        smoke_until(
            &format!("http://{addr}/live"),
            "/todos/health",
            Some("k"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        late.await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
        // A region that never serves fails once the budget is spent, with the last failure.
        let broken = server(500, 500).await;
        let e = smoke_until(&broken, "/todos/health", None, Duration::from_secs(6))
            .await
            .unwrap_err();
        assert!(e.contains("answered 500"), "{e}");
    }

    #[tokio::test]
    async fn the_smoke_request_needs_a_healthy_and_serving_region() {
        let t = Duration::from_secs(5);
        let ok = server(200, 200).await;
        smoke(&ok, "/todos/health", Some("key"), t).await.unwrap();
        let broken = server(502, 200).await;
        let e = smoke(&broken, "/todos/health", Some("key"), t)
            .await
            .unwrap_err();
        assert!(e.contains("answered 502"), "{e}");
        let keyed_broken = server(200, 500).await;
        let e = smoke(&keyed_broken, "/todos/health", Some("key"), t)
            .await
            .unwrap_err();
        assert!(e.contains("/todos?limit=1") && e.contains("500"), "{e}");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = smoke(&format!("http://{closed}/live"), "/todos/health", None, t)
            .await
            .unwrap_err();
        assert!(e.contains("GET http://"), "{e}");
    }
}
