//! Reading each region directly, to see what it holds: through the region's own API endpoint
//! (`--region-url REGION=URL`, or the local environment's region endpoints), with `GET /todos/{id}`,
//! which the sample app serves with a consistent read and the item's version as its `ETag`. So every
//! check here reads the region's table as the app sees it, through that region's endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper::Method;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Failure};
use crate::workload::{Ack, AckKind};

/// What a region holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nothing (or a tombstone): 404.
    Absent,
    /// The item at this version.
    Version(u64),
}

/// One region's API, read directly.
pub struct Region {
    /// The region's name.
    pub name: String,
    /// A client for its endpoint.
    pub client: Client,
}

impl Region {
    /// What the region holds for `id` (three attempts; an error when none answered).
    pub async fn held(&self, id: &str) -> Result<Held, String> {
        let mut last = String::new();
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            match self
                .client
                .send(Method::GET, &format!("/todos/{id}"), None)
                .await
            {
                Ok(a) if a.status == 404 => return Ok(Held::Absent),
                Ok(a) if a.status == 200 => {
                    return a
                        .etag
                        .as_deref()
                        .and_then(|e| e.parse().ok())
                        .map(Held::Version)
                        .ok_or_else(|| format!("{}: todo {id} has no version ETag", self.name));
                }
                Ok(a) => last = format!("{} answered {}", self.name, a.status),
                Err(Failure::Timeout) => last = format!("{} did not answer", self.name),
                Err(Failure::Connect { detail, .. }) => last = format!("{}: {detail}", self.name),
            }
        }
        Err(last)
    }
}

/// Whether `held` reflects the acknowledged write `ack` (the version or a newer one; absent for a
/// delete).
pub fn reflects(held: Held, ack: &Ack) -> bool {
    match (ack.kind, held) {
        (AckKind::Delete, Held::Absent) => true,
        (AckKind::Delete, Held::Version(_)) => false,
        (AckKind::Put, Held::Absent) => false,
        (AckKind::Put, Held::Version(v)) => ack.version.is_none_or(|want| v >= want),
    }
}

/// Reads `ids` from `region`, 16 at a time; unreadable keys are returned apart.
pub async fn read_all(
    region: &Region,
    ids: Vec<String>,
) -> (HashMap<String, Held>, Vec<(String, String)>) {
    let results: Vec<(String, Result<Held, String>)> = futures::stream::iter(ids)
        .map(|id| async move {
            let r = region.held(&id).await;
            (id, r)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut held = HashMap::new();
    let mut errors = Vec::new();
    for (id, r) in results {
        match r {
            Ok(h) => {
                held.insert(id, h);
            }
            Err(e) => errors.push((id, e)),
        }
    }
    (held, errors)
}

/// What `survivor` holds of the writes `failed` acknowledged last before the fault: for each key
/// whose last acknowledged write before the fault came from the failed region, that write and what
/// the survivor holds (keys that could not be read are left out and counted).
pub async fn after_failover(
    expected_at_fault: &HashMap<String, Ack>,
    failed: &str,
    survivor: &Region,
) -> (Vec<(Ack, Held)>, usize) {
    let candidates: Vec<&Ack> = expected_at_fault
        .values()
        .filter(|a| a.region == failed)
        .collect();
    let ids = candidates.iter().map(|a| a.id.clone()).collect();
    let (held, errors) = read_all(survivor, ids).await;
    let pairs = candidates
        .into_iter()
        .filter_map(|a| held.get(&a.id).map(|h| (a.clone(), *h)))
        .collect();
    (pairs, errors.len())
}

/// After fail-back: keys whose last acknowledged write the primary does not reflect (`missing`)
/// and keys on which the other region still disagrees with the primary (`stale`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failback {
    /// Keys read.
    pub checked: u64,
    /// The primary lacks the last acknowledged write.
    pub missing: Vec<String>,
    /// The other region holds something else than the primary.
    pub stale: Vec<String>,
    /// Keys that could not be read.
    pub unreadable: usize,
}

/// Reads every expected key in both regions and compares.
pub async fn failback(
    expected: &HashMap<String, Ack>,
    primary: &Region,
    other: &Region,
) -> Failback {
    let ids: Vec<String> = expected.keys().cloned().collect();
    let (in_primary, e1) = read_all(primary, ids.clone()).await;
    let (in_other, e2) = read_all(other, ids).await;
    let mut out = Failback {
        unreadable: e1.len() + e2.len(),
        ..Failback::default()
    };
    for (id, ack) in expected {
        let Some(p) = in_primary.get(id) else {
            continue;
        };
        out.checked += 1;
        if !reflects(*p, ack) {
            out.missing.push(id.clone());
        }
        if let Some(o) = in_other.get(id)
            && o != p
        {
            out.stale.push(id.clone());
        }
    }
    out.missing.sort();
    out.stale.sort();
    out
}

/// Repeats `failback` until nothing is missing or stale, `limit` passes or `stop`; returns the
/// last whole comparison (None when not even one finished in time) and the time it took. A round
/// still reading at the limit is cut off, so the whole wait is bounded by `limit` (plus one round
/// when the first has not finished: a comparison is needed to report anything).
pub async fn catch_up(
    expected: &HashMap<String, Ack>,
    primary: &Region,
    other: &Region,
    limit: Duration,
    stop: &CancellationToken,
) -> (Option<Failback>, Duration) {
    let start = Instant::now();
    let mut last: Option<Failback> = None;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let round = async {
            if last.is_none() {
                Some(failback(expected, primary, other).await)
            } else {
                tokio::time::timeout(left, failback(expected, primary, other))
                    .await
                    .ok()
            }
        };
        let f = tokio::select! {
            () = stop.cancelled() => None,
            f = round => f,
        };
        let Some(f) = f else {
            return (last, start.elapsed());
        };
        let settled = f.missing.is_empty() && f.stale.is_empty() && f.unreadable == 0;
        last = Some(f);
        if settled || start.elapsed() >= limit || stop.is_cancelled() {
            return (last, start.elapsed());
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Polls `to` until it holds version `version` of `id` or newer, for at most `limit` from `acked`
/// (each read is cut off at the limit too); the lag from `acked` in milliseconds. A todo deleted in
/// the meantime is never seen, and its sample counts as unseen.
pub async fn lag(
    to: Arc<Region>,
    id: String,
    version: u64,
    acked: Instant,
    limit: Duration,
    stop: CancellationToken,
) -> Option<f64> {
    let mut pause = Duration::from_millis(20);
    while acked.elapsed() < limit && !stop.is_cancelled() {
        let left = limit.saturating_sub(acked.elapsed());
        if let Ok(Ok(Held::Version(v))) = tokio::time::timeout(left, to.held(&id)).await
            && v >= version
        {
            return Some(acked.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(pause).await;
        pause = next_lag_poll(pause, acked.elapsed());
    }
    None
}

/// The pause before a lag sample's next read: from 20 ms doubling to 200 ms, then a tenth of the
/// time waited so far, at most 1 s. A sample's reads go to the region that must take the load when
/// the other fails, and samples waiting through an outage would otherwise read it five times a
/// second each: with the pause growing, one waiting 20 s reads it about 40 times instead of 100,
/// and its figure is still within 10% (at most 1 s).
pub fn next_lag_poll(pause: Duration, waited: Duration) -> Duration {
    (pause * 2)
        .min(Duration::from_millis(200))
        .max(waited / 10)
        .min(Duration::from_secs(1))
}

/// Keys left out because a write to them may or may not have been applied.
pub fn without(
    expected: HashMap<String, Ack>,
    uncertain: &HashSet<String>,
) -> HashMap<String, Ack> {
    expected
        .into_iter()
        .filter(|(k, _)| !uncertain.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_polls_back_off_to_a_tenth_of_the_wait_and_at_most_a_second() {
        let ms = Duration::from_millis;
        assert_eq!(next_lag_poll(ms(20), ms(20)), ms(40));
        assert_eq!(next_lag_poll(ms(160), ms(400)), ms(200));
        assert_eq!(next_lag_poll(ms(200), ms(1_500)), ms(200));
        assert_eq!(next_lag_poll(ms(200), ms(5_000)), ms(500));
        assert_eq!(next_lag_poll(ms(900), ms(60_000)), ms(1_000));
        // The reads of a sample that waits 20 s (an outage between the write and its replica).
        let (mut pause, mut waited, mut reads) = (ms(20), Duration::ZERO, 0);
        while waited < Duration::from_secs(20) {
            reads += 1;
            waited += pause;
            pause = next_lag_poll(pause, waited);
        }
        assert!((35..=45).contains(&reads), "{reads}");
    }

    #[test]
    fn a_region_reflects_a_write_when_it_holds_that_version_or_newer() {
        let put = Ack {
            id: "a".into(),
            kind: AckKind::Put,
            version: Some(10),
            region: "r".into(),
            at: 0.0,
        };
        assert!(reflects(Held::Version(10), &put));
        assert!(reflects(Held::Version(11), &put));
        assert!(!reflects(Held::Version(9), &put));
        assert!(!reflects(Held::Absent, &put));
        let del = Ack {
            kind: AckKind::Delete,
            version: None,
            ..put
        };
        assert!(reflects(Held::Absent, &del));
        assert!(!reflects(Held::Version(12), &del));
    }
}
