//! Open-loop arrivals: request `i` is due at `i / rate` seconds from the start, whatever happened to
//! the requests before it, and its latency is measured from that intended time. A slow or stalled
//! server therefore shows as latency (and errors), never as a lower send rate: no coordinated
//! omission (the wrk2 / vegeta model).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The timer's resolution.
const TICK: Duration = Duration::from_millis(1);

/// One request's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Its index in the schedule.
    pub index: u64,
    /// When it was due, from the start of the run.
    pub intended: Duration,
    /// When it was actually sent, from the start (late only when the generator itself lags).
    pub sent: Duration,
    /// From the intended time to the answer (or the failure).
    pub latency: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// When request `index` is due at `rate` requests per second.
pub fn due(index: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate)
}

/// How many requests a run of `duration` at `rate` sends.
pub fn count(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).floor() as u64
}

/// Sends `count(rate, duration)` requests, request `index` started with `op(index, intended)` at
/// its due time (`intended` from `start`) without waiting for earlier ones, until all are sent or `stop` is cancelled; then
/// waits for every started request (each should bound its own time: a request timeout). Returns
/// how many were started: fewer than asked when stopped, or when the generator fell more than a
/// second behind (it never runs past the run's end plus a second). Finished requests are reaped as it goes, so memory stays bounded by the
/// requests in flight.
pub async fn drive<F, Fut>(
    start: Instant,
    rate: f64,
    duration: Duration,
    stop: &CancellationToken,
    op: F,
) -> u64
where
    F: Fn(u64, Duration) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let total = count(rate, duration);
    let mut running = JoinSet::new();
    let mut started = 0;
    // A generator that falls behind its schedule sends late (and the latency shows it) but stops
    // a second after the run's end: the unsent rest shows as a lower achieved rate.
    let deadline = start + duration + Duration::from_secs(1);
    for index in 0..total {
        let intended = due(index, rate);
        if Instant::now() > deadline {
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            // The timer fires on the first millisecond tick at or after its deadline: aim a tick
            // early so that requests start on time rather than up to 1 ms late (`op` measures
            // from the earlier of the intended start and the real one, so an early start never
            // makes an answer look faster).
            () = tokio::time::sleep_until(start + intended.saturating_sub(TICK)) => {}
        }
        running.spawn(op(index, intended));
        started += 1;
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    started
}

/// `drive` for a run that keeps every sample: returns them in index order once all have finished
/// (`op` says whether the request succeeded). Latency is from the earlier of the intended start and
/// the real one.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, op: F) -> Vec<Sample>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    drive(
        start,
        rate,
        duration,
        &CancellationToken::new(),
        |index, intended| {
            let sent = start.elapsed();
            let request = op(index);
            let samples = samples.clone();
            async move {
                let ok = request.await;
                let sample = Sample {
                    index,
                    intended,
                    sent,
                    latency: start.elapsed().saturating_sub(intended.min(sent)),
                    ok,
                };
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sample);
            }
        },
    )
    .await;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort_by_key(|s| s.index);
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_server_shows_in_latency_not_in_the_send_rate() {
        // 100 requests/s for 2 s; the server stalls for 500 ms on requests 50 to 59.
        let samples = open_loop(100.0, Duration::from_secs(2), |i| async move {
            let wait = if (50..60).contains(&i) { 500 } else { 5 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            true
        })
        .await;
        assert_eq!(samples.len(), 200);
        for s in &samples {
            // Sent on time: at most one timer tick early, never late.
            assert!(
                s.intended.saturating_sub(TICK) <= s.sent && s.sent <= s.intended,
                "request {} was sent at {:?}, due at {:?}",
                s.index,
                s.sent,
                s.intended
            );
            assert_eq!(s.intended, due(s.index, 100.0));
        }
        // Requests after the stalled ones were sent on time and were not slowed.
        assert_eq!(samples[60].latency, Duration::from_millis(5));
        assert_eq!(samples[55].latency, Duration::from_millis(500));
        // The send rate held: the last request went out at 1.99 s (a tick early).
        assert_eq!(samples[199].sent, Duration::from_millis(1989));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_samples_too() {
        let samples = open_loop(10.0, Duration::from_secs(1), |i| async move { i % 2 == 0 }).await;
        assert_eq!(samples.iter().filter(|s| !s.ok).count(), 5);
        assert_eq!(count(10.0, Duration::from_millis(1050)), 10);
    }
}
