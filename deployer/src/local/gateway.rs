//! A region's API front, in place of API Gateway's data plane: it listens on the region's loopback
//! address and the port both regions share, routes by Host as API Gateway does (the custom domain
//! through its base path mapping, the execute-api host through the stage in the path) to the
//! region's sample-app process, and carries the region's fault: `outage` closes the listener and
//! drops every connection (clients see refused connections), `unhealthy` fails the health path,
//! `slow` delays every request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::faults::{Fault, Faults};
use super::http::{self, Upstream};

/// How requests reach the app: what the deployment holds in this region.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// The stage (execute-api paths start with `/<stage>`).
    pub stage: String,
    /// The REST API's execute-api host names (lower case).
    pub api_hosts: Vec<String>,
    /// Custom domain names mapped to the stage at the root (lower case).
    pub domain_names: Vec<String>,
}

/// One region's front.
pub struct Gateway {
    /// The region.
    pub region: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The region's sample-app process.
    pub app: SocketAddr,
    /// The faults.
    pub faults: Arc<Faults>,
    /// Routing, filled in once the deployment exists.
    pub routes: RwLock<Routes>,
    /// The health path the `unhealthy` fault fails (as the app serves it, without the stage).
    pub health_path: String,
    /// Forwarding client.
    pub client: Upstream,
}

/// Where a request goes: the path for the app, or an API Gateway style refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Forward with this path (and the query).
    App(String),
    /// 403, as API Gateway answers for an unknown host or stage.
    Forbidden,
}

/// Whether API Gateway holds a root (`(none)`) base path mapping of `domain` to `stage` (a domain
/// that does not exist has none).
pub async fn root_mapping(
    client: &aws_sdk_apigateway::Client,
    domain: &str,
    stage: &str,
) -> Result<bool, String> {
    match client
        .get_base_path_mappings()
        .domain_name(domain)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .items()
            .iter()
            .any(|m| m.base_path() == Some("(none)") && m.stage() == Some(stage))),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(aws_sdk_apigateway::error::DisplayErrorContext(&e).to_string()),
    }
}

/// Routes a request by its Host header (without port) and path.
pub fn route(routes: &Routes, host: Option<&str>, path: &str) -> Route {
    let host = host.map(|h| {
        h.rsplit_once(':')
            .map_or(h, |(name, _)| name)
            .to_ascii_lowercase()
    });
    match host.as_deref() {
        Some(h) if routes.api_hosts.iter().any(|a| a == h) => {
            let prefix = format!("/{}", routes.stage);
            match path.strip_prefix(&prefix) {
                Some("") => Route::App("/".to_owned()),
                Some(rest) if rest.starts_with('/') => Route::App(rest.to_owned()),
                _ => Route::Forbidden,
            }
        }
        Some(h) if routes.domain_names.iter().any(|d| d == h) => Route::App(path.to_owned()),
        // Addressed by IP or as localhost: treated as the custom domain (documented).
        None => Route::App(path.to_owned()),
        Some(h) if h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() => {
            Route::App(path.to_owned())
        }
        Some(_) => Route::Forbidden,
    }
}

impl Gateway {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let fault = self.faults.get(&self.region);
        if let Fault::Slow(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let path = match route(&routes, host.as_deref(), req.uri().path()) {
            Route::App(path) => path,
            Route::Forbidden => return http::error(StatusCode::FORBIDDEN, "Forbidden"),
        };
        if fault == Fault::Unhealthy && path == self.health_path {
            return http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "local fault: {} is unhealthy (deployer local fault --region {} recover)",
                    self.region, self.region
                ),
            );
        }
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match http::forward(&self.client, self.app, req, Some(pq)).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(region = self.region, %error, "the app did not answer");
                http::error(StatusCode::BAD_GATEWAY, "Internal server error")
            }
        }
    }

    /// Serves until `stop`, closing the listener while the region is in an outage and opening it
    /// again on recovery. `first` is the listener bound at start (so a port in use fails early).
    pub async fn run(
        self: Arc<Self>,
        first: TcpListener,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let mut listener = Some(first);
        let mut changes = self.faults.subscribe();
        loop {
            if self.faults.is_down(&self.region) {
                drop(listener.take());
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = changes.changed() => continue,
                }
            }
            let bound = match listener.take() {
                Some(l) => l,
                None => bind_again(self.listen, &stop).await?,
            };
            // Outages begun so far: one that began and ended between two looks is still seen.
            let seen = self.faults.outages(&self.region);
            let connections = stop.child_token();
            let me = self.clone();
            let serve = http::serve(bound, connections.clone(), move |req| {
                me.clone().handle(req)
            });
            tokio::pin!(serve);
            loop {
                tokio::select! {
                    () = &mut serve => return Ok(()),
                    _ = changes.changed() => {
                        if self.faults.outages(&self.region) != seen {
                            // Drops the listener and every connection, requests in flight too.
                            connections.cancel();
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Binds the region's address again after an outage; the port was ours a moment ago.
async fn bind_again(addr: SocketAddr, stop: &CancellationToken) -> Result<TcpListener, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(error) => last = error.to_string(),
        }
        tokio::select! {
            () = stop.cancelled() => return Err("stopped".to_owned()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Err(format!(
        "could not listen on {addr} again after the outage for 10 s ({last}); another process took \
         the port: set local.port to a port nothing else uses"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_api_gateway() {
        let routes = Routes {
            stage: "live".into(),
            api_hosts: vec!["abc.execute-api.us-east-1.amazonaws.com".into()],
            domain_names: vec!["api.todos.test".into()],
        };
        let api = Some("abc.execute-api.us-east-1.amazonaws.com:8080");
        assert_eq!(
            route(&routes, api, "/live/todos/health"),
            Route::App("/todos/health".into())
        );
        assert_eq!(route(&routes, api, "/todos/health"), Route::Forbidden);
        assert_eq!(route(&routes, api, "/lively"), Route::Forbidden);
        assert_eq!(
            route(&routes, Some("API.todos.test:8080"), "/todos"),
            Route::App("/todos".into())
        );
        assert_eq!(
            route(&routes, Some("127.0.0.11:8080"), "/todos"),
            Route::App("/todos".into())
        );
        assert_eq!(
            route(&routes, Some("other.test"), "/todos"),
            Route::Forbidden
        );
    }
}
