//! Retrying retryable failures with jittered exponential backoff until they succeed, turn fatal, or the
//! worker is told to stop.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::{AwsFailure, ErrorClass};

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First pause.
    pub min: Duration,
    /// Longest pause.
    pub max: Duration,
}

/// Why a retried call gave up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GaveUp {
    /// A fatal failure: an operator must act.
    #[error(transparent)]
    Fatal(AwsFailure),
    /// The worker was told to stop before the call succeeded.
    #[error("stopped before the call succeeded")]
    Stopped,
}

impl RetryPolicy {
    /// Calls `op` until it succeeds, fails fatally, or `stop` is cancelled. `on_retry` sees each
    /// retryable failure (for metrics and logs). Jitter is seeded from `seed` so a run can be replayed.
    pub async fn run<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        seed: u64,
        mut on_retry: impl FnMut(&AwsFailure),
        mut op: F,
    ) -> Result<T, GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsFailure>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(seed)
            .without_max_times()
            .build();
        loop {
            if stop.is_cancelled() {
                return Err(GaveUp::Stopped);
            }
            match op().await {
                Ok(value) => return Ok(value),
                Err(failure) if failure.class == ErrorClass::Retryable => {
                    on_retry(&failure);
                    let delay = delays.next().unwrap_or(self.max);
                    tokio::select! {
                    biased;
                            _ = stop.cancelled() => return Err(GaveUp::Stopped),
                            _ = tokio::time::sleep(delay) => {}
                        }
                }
                Err(failure) => return Err(GaveUp::Fatal(failure)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_failures_until_success() {
        let calls = AtomicUsize::new(0);
        let mut seen = 0;
        let result = policy()
            .run(
                &CancellationToken::new(),
                1,
                |_| seen += 1,
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 5 {
                        Err(AwsFailure::synthetic(
                            ErrorClass::Retryable,
                            "throttled",
                            "slow down",
                        ))
                    } else {
                        Ok(7)
                    }
                },
            )
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(seen, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_failures_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy()
            .run(
                &CancellationToken::new(),
                1,
                |_| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(AwsFailure::synthetic(
                        ErrorClass::Fatal,
                        "validation",
                        "bad item",
                    ))
                },
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Fatal(f)) if f.kind == "validation"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_retries() {
        let stop = CancellationToken::new();
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy()
            .run(
                &stop,
                1,
                |_| {},
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 3 {
                        stop.cancel();
                    }
                    Err(AwsFailure::synthetic(
                        ErrorClass::Retryable,
                        "server",
                        "503",
                    ))
                },
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Stopped)));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
