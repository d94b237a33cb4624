//! `loadtest bench-target`: a minimal HTTP/1.1 endpoint that answers every request at once as the
//! sample app would (201 with a todo and an ETag for POST, 200 otherwise, `x-tworegion-region`), for
//! measuring the generator itself against wrk and oha (docs/loadtest.md). Not a model of the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves on `listener` until `stop`; returns the requests answered.
pub async fn serve(listener: TcpListener, stop: CancellationToken) -> u64 {
    let count = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return count.load(Ordering::Relaxed),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let count = count.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let n = count.fetch_add(1, Ordering::Relaxed);
                async move {
                    let created = req.method() == hyper::Method::POST;
                    let body = format!(
                        "{{\"id\":\"bench-{n}\",\"text\":\"x\",\"checked\":false,\"created_at\":\"\",\"updated_at\":\"\"}}"
                    );
                    let response = Response::builder()
                        .status(if created { 201 } else { 200 })
                        .header("content-type", "application/json")
                        .header("x-tworegion-region", "bench")
                        .header("etag", format!("\"{}\"", n + 1))
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` (loopback only) and serves until Ctrl-C.
pub async fn run(addr: SocketAddr) -> Result<(), String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--listen {addr}: the bench target listens on loopback only (127.0.0.0/8)"
        ));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--listen {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("bench target on http://{local}/");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    let n = serve(listener, stop).await;
    println!("answered {n} requests");
    Ok(())
}
