//! The HTTP/1.1 client: a pool of keep-alive connections per address, at most `connections` in
//! use at once, new connections always to the current DNS answer (connections to an address that
//! left the answer are closed once idle), TLS for `https` URLs (the system's roots, SNI from the
//! URL's host). Every exchange is bounded by the request timeout.
//!
//! Failures are classified as the results count them: `Connect` (no connection, or it broke before
//! an answer) and `Timeout` (no whole answer in time). A pooled connection that the server closed
//! before the request was written is not a failure: the request is sent again on a new connection
//! (hyper hands it back unsent); nothing that reached the server is ever sent twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::dns::Dns;

/// The header the sample app names its region in.
pub const REGION_HEADER: &str = "x-tworegion-region";

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `x-tworegion-region`, when present.
    pub region: Option<String>,
    /// `ETag` without quotes (the sample app's version of the item).
    pub etag: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Why there was no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection; `sent` says whether the request may have reached the server (the connection
    /// broke after it was written).
    Connect {
        /// Whether the request may have been applied.
        sent: bool,
        /// What happened.
        detail: String,
    },
    /// No whole answer within the timeout.
    Timeout,
}

/// Where requests go and how.
pub struct Client {
    dns: Arc<Dns>,
    /// `Host` header (the URL's authority).
    host: String,
    /// TLS (https URLs): the connector and the server name.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The URL's path prefix (for example an execute-api stage), without a trailing slash.
    base_path: String,
    api_key: Option<String>,
    timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Full<Bytes>>>>>,
    permits: Semaphore,
    opened: AtomicU64,
}

/// The parts of an http(s) URL the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub https: bool,
    /// Host name or address (IPv6 in brackets).
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for `/`).
    pub base_path: String,
}

impl Url {
    /// Parses `http://host[:port][/base]`; says what is wrong otherwise.
    pub fn parse(text: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "--url {text:?}: give an http:// or https:// URL, for example https://api.example.com"
            ));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(format!(
                "--url {text:?} has no host: give one, for example https://api.example.com"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("--url {text:?}: the port {p:?} is not a number from 1 to 65535")
                })?;
                (h.to_owned(), port)
            }
            _ => (authority.to_owned(), if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!(
                "--url {text:?} has no host: give one, for example https://api.example.com"
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "--url {text:?}: give the API's base URL without a query or fragment"
            ));
        }
        Ok(Url {
            https,
            host,
            port,
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The `Host` header.
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "https: no CA certificates found on this machine (install ca-certificates)".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client for `url` whose host `dns` resolves; at most `connections` exchanges at once.
    pub fn new(
        url: &Url,
        dns: Arc<Dns>,
        api_key: Option<String>,
        connections: usize,
        timeout: Duration,
    ) -> Result<Client, String> {
        let tls = if url.https {
            let name = rustls::pki_types::ServerName::try_from(
                url.host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| format!("--url host {:?}: {e}", url.host))?;
            Some((tls_connector()?, name))
        } else {
            None
        };
        Ok(Client {
            dns,
            host: url.authority(),
            tls,
            base_path: url.base_path.clone(),
            api_key,
            timeout,
            idle: Mutex::new(HashMap::new()),
            permits: Semaphore::new(connections.max(1)),
            opened: AtomicU64::new(0),
        })
    }

    /// The resolver this client follows.
    pub fn dns(&self) -> &Arc<Dns> {
        &self.dns
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sends one request (`path` below the URL's base path) and reads the whole answer, within the
    /// timeout (waiting for a free connection included).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, Failure> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn request(&self, method: &Method, path: &str, body: &Option<Bytes>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base_path))
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::USER_AGENT, "tworegion-loadtest");
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key);
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(body.clone().unwrap_or_default()))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Connect {
            sent: false,
            detail: "the client is closed".to_owned(),
        })?;
        let addr = self.dns.current();
        let mut request = self.request(&method, path, &body);
        // A pooled connection may have been closed by the server while idle: hyper then hands the
        // request back unsent and it goes out on the next connection (a new one at the latest).
        loop {
            let (mut sender, fresh) = match self.take_idle(addr) {
                Some(s) => (s, false),
                None => (self.connect(addr).await?, true),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let header = |name: &str| {
                        response
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let region = header(REGION_HEADER);
                    let etag = header("etag").map(|e| e.trim_matches('"').to_owned());
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| Failure::Connect {
                            sent: true,
                            detail: format!("the answer broke off: {e}"),
                        })?
                        .to_bytes();
                    self.give_back(addr, sender);
                    return Ok(Answer {
                        status,
                        region,
                        etag,
                        body,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    unsent => {
                        return Err(Failure::Connect {
                            // Handed back unsent: it never reached the server.
                            sent: unsent.is_none(),
                            detail: e.into_error().to_string(),
                        });
                    }
                },
            }
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        // Closed connections go; one handed back a moment ago may not read ready yet (its task has
        // not looked at its queue since): it stays for later rather than being closed.
        list.retain(|s| !s.is_closed());
        let i = list.iter().rposition(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn give_back(&self, addr: SocketAddr, sender: SendRequest<Full<Bytes>>) {
        let mut idle = lock(&self.idle);
        if !self.dns.holds(addr) {
            // The name moved: close connections to the old answer (dropping the sender closes it).
            idle.retain(|a, _| self.dns.holds(*a));
            return;
        }
        if !sender.is_closed() {
            idle.entry(addr).or_default().push(sender);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let refused = |detail: String| Failure::Connect {
            sent: false,
            detail,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| refused(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        self.opened.fetch_add(1, Ordering::Relaxed);
        match &self.tls {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| refused(format!("{addr}: {e}")))?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| refused(format!("{addr}: TLS: {e}")))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| refused(format!("{addr}: {e}")))?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }
}

/// One plain-HTTP exchange with a local service (the local environment's control API): the status
/// and the body, within `timeout`.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let url = Url {
        https: false,
        host: addr.ip().to_string(),
        port: addr.port(),
        base_path: String::new(),
    };
    let dns = Arc::new(
        Dns::new(&addr.ip().to_string(), addr.port(), None)
            .await
            .map_err(|e| e.to_string())?,
    );
    let client = Client::new(&url, dns, None, 1, timeout)?;
    match client.send(method, path, body.map(Bytes::from)).await {
        Ok(a) => Ok((a.status, a.body)),
        Err(Failure::Timeout) => Err(format!("{addr} did not answer within {timeout:?}")),
        Err(Failure::Connect { detail, .. }) => Err(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let u = Url::parse("https://api.example.com/prod/").expect("url");
        assert_eq!(
            u,
            Url {
                https: true,
                host: "api.example.com".into(),
                port: 443,
                base_path: "/prod".into()
            }
        );
        assert_eq!(u.authority(), "api.example.com");
        let u = Url::parse("http://api.todos.test:8080").expect("url");
        assert_eq!(
            (u.port, u.authority().as_str()),
            (8080, "api.todos.test:8080")
        );
        let u = Url::parse("http://[::1]:81/").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 81));
        for (bad, says) in [
            ("http:///todos", "has no host"),
            ("api.example.com", "http:// or https://"),
            ("http://h:0/", "not a number from 1 to 65535"),
            ("http://h:x/", "not a number"),
            ("http://h/?a=1", "without a query"),
        ] {
            let err = Url::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
