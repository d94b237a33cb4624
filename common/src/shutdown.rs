//! SIGTERM and SIGINT handling.
//!
//! The first signal cancels one [`CancellationToken`] that every loop selects on; the binary then stops
//! gracefully within its deadline. A second signal resolves [`ForcedExit`], which `main` turns into an
//! immediate exit (an operator pressing Ctrl-C twice, or ECS escalating).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (ECS stopping a task, `kill`).
    Term,
    /// SIGINT (Ctrl-C).
    Int,
}

impl Signal {
    /// The conventional exit status for a process ended by this signal (128 + number).
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Term => 128 + 15,
            Signal::Int => 128 + 2,
        }
    }
}

/// Resolves when a second signal arrives after the first cancelled the token.
#[derive(Debug)]
pub struct ForcedExit(oneshot::Receiver<Signal>);

impl Future for ForcedExit {
    type Output = Signal;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Signal> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok(signal)) => Poll::Ready(signal),
            // The listener is gone (runtime shutting down): no second signal will come.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Registers SIGTERM and SIGINT handlers and spawns their listener on the current Tokio runtime.
///
/// Returns the token that the first signal cancels, and the future that the second resolves.
pub fn listen() -> std::io::Result<(CancellationToken, ForcedExit)> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let (forced_tx, forced_rx) = oneshot::channel();
    let cancel = token.clone();
    tokio::spawn(async move {
        let first = next_signal(&mut term, &mut int).await;
        tracing::info!(signal = ?first, "Shutdown requested; stopping gracefully. Send it again to exit at once.");
        cancel.cancel();
        let second = next_signal(&mut term, &mut int).await;
        tracing::warn!(signal = ?second, "Second signal; exiting at once.");
        let _ = forced_tx.send(second);
    });
    Ok((token, ForcedExit(forced_rx)))
}

async fn next_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Signal {
    tokio::select! {
        _ = term.recv() => Signal::Term,
        _ = int.recv() => Signal::Int,
    }
}
