//! `results.json`: the versioned document a run writes, `report` renders and `merge` adds up. Its
//! JSON Schema is `loadtest/results.schema.json` (the tests validate real runs against it).
//!
//! Histograms are stored as `[value_us, count]` pairs of HdrHistogram's recorded buckets, so that
//! reading them back and adding them is exact.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::dns::DnsChange;
use crate::stats::{Failures, Percentiles, Recorder, SecondStats, histogram, percentiles};

/// The schema this build writes and reads.
pub const SCHEMA: &str = "tworegion-loadtest/1";

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// `tworegion-loadtest/1`.
    pub schema: String,
    /// `run` or `failover` (or `merge` of several).
    pub command: String,
    /// Whether the run went to its end (false: interrupted; the figures cover what ran).
    pub completed: bool,
    /// Start, Unix milliseconds.
    pub started_at_ms: u64,
    /// What was asked.
    pub settings: Settings,
    /// The figures.
    pub summary: Summary,
    /// Second by second.
    pub series: Vec<SeriesSecond>,
    /// Latency histograms.
    pub histograms: Histograms,
    /// Faults injected and undone.
    pub faults: Vec<FaultRecord>,
    /// Changes of the DNS answer.
    pub dns_changes: Vec<DnsChange>,
    /// Phases: name and start (seconds from the start).
    pub phases: Vec<Phase>,
    /// Replication-lag samples.
    pub lag_samples: Vec<LagSample>,
    /// The agents merged into this document (1 for a single run).
    pub agents: u32,
}

/// What was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Target URL.
    pub url: String,
    /// Requests per second asked.
    pub rate: f64,
    /// Seconds of load.
    pub duration_seconds: f64,
    /// Share of writes.
    pub write_ratio: f64,
    /// Most connections at once.
    pub connections: usize,
    /// Request timeout, seconds.
    pub timeout_seconds: f64,
    /// DNS server (None: the system's).
    pub resolver: Option<String>,
    /// Replication mode the checks assume (`lww` or `one-way`).
    pub mode: String,
    /// The fault, when `failover`.
    pub fault: Option<String>,
    /// Seconds from the start.
    pub fault_at: Option<f64>,
    /// Seconds from the start.
    pub recover_at: Option<f64>,
}

/// A phase of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `steady`, `failover`, `failback`, `verify`.
    pub name: String,
    /// Seconds from the start.
    pub at: f64,
}

/// A fault as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// As given (`local:outage`).
    pub kind: String,
    /// The region it hit.
    pub region: String,
    /// Seconds from the start when injected.
    pub injected_at: f64,
    /// What was changed.
    pub changed: String,
    /// Seconds from the start when undone (None: never, see `undo_error`).
    pub undone_at: Option<f64>,
    /// What undoing did.
    pub undone: Option<String>,
    /// Why undoing failed.
    pub undo_error: Option<String>,
}

/// One replication-lag sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    /// When the write was acknowledged (seconds from the start).
    pub t: f64,
    /// Where it was acknowledged.
    pub from: String,
    /// Where it was looked for.
    pub to: String,
    /// Milliseconds until the other region held that version (None: not within the limit).
    pub lag_ms: Option<f64>,
}

/// One second of the series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSecond {
    /// Second from the start.
    pub t: u64,
    /// Requests due in it.
    pub requests: u64,
    /// 2xx.
    pub succeeded: u64,
    /// Failures by cause.
    pub failed: Failures,
    /// 2xx by region.
    pub by_region: BTreeMap<String, u64>,
    /// Of the 4xx, answers about the data (404, 409, 412).
    #[serde(default)]
    pub data_4xx: u64,
    /// Latency percentiles of the requests due in it.
    pub latency_ms: Percentiles,
}

/// The histograms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histograms {
    /// Every request.
    pub overall: Vec<[u64; 2]>,
    /// Successful answers by region.
    pub by_region: BTreeMap<String, Vec<[u64; 2]>>,
    /// Per second (index = second).
    pub per_second: Vec<Vec<[u64; 2]>>,
}

/// Percentiles of replication lag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Samples taken.
    pub samples: u64,
    /// Samples not seen in the other region within the limit.
    pub unseen: u64,
    /// Median, ms.
    pub p50: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
    /// Maximum, ms.
    pub max: Option<f64>,
    /// How it was read.
    pub method: String,
}

/// The figures (names as the issue and docs/loadtest.md define them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// 2xx answers.
    pub succeeded: u64,
    /// Failures by cause.
    pub failed: Failures,
    /// Requests per second asked.
    pub rate_asked: f64,
    /// Requests per second sent (requests / duration).
    pub rate_achieved: f64,
    /// Latency from each request's intended start, ms.
    pub latency_ms: Percentiles,
    /// Per region (successful answers).
    pub latency_ms_by_region: BTreeMap<String, Percentiles>,
    /// Region serving before the fault (or the most answers in a run).
    pub primary: Option<String>,
    /// The region the fault hit.
    pub failed_region: Option<String>,
    /// Fault to sustained >= 99% success (see docs).
    pub rto_seconds: Option<f64>,
    /// Fault to the first success from another region.
    pub detected_seconds: Option<f64>,
    /// Fault to the first change of the DNS answer.
    pub dns_moved_seconds: Option<f64>,
    /// Recovery to the first success from the failed region again.
    pub failback_seconds: Option<f64>,
    /// Writes acknowledged.
    pub acked_writes: u64,
    /// Keys left out of the checks (a write may or may not have been applied).
    pub uncertain_keys: u64,
    /// See docs.
    pub missing_after_failover: Option<u64>,
    /// Keys checked for `missing_after_failover`.
    pub checked_after_failover: Option<u64>,
    /// Age at the fault of the oldest missing write.
    pub rpo_seconds: Option<f64>,
    /// See docs.
    pub missing_after_failback: Option<u64>,
    /// See docs.
    pub stale_after_failback: Option<u64>,
    /// Keys checked after fail-back.
    pub checked_after_failback: Option<u64>,
    /// Seconds the catch-up wait took.
    pub catch_up_seconds: Option<f64>,
    /// Replication lag.
    pub replication_lag_ms: Lag,
    /// Connections opened.
    pub connections_opened: u64,
    /// DNS lookups and failed lookups.
    pub dns_lookups: u64,
    /// Failed DNS lookups (the last answer was kept).
    pub dns_failures: u64,
    /// Why a figure is missing (for example no regional URLs to check with).
    pub notes: Vec<String>,
}

/// A histogram as pairs.
pub fn encode(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// Pairs back into a histogram.
pub fn decode(pairs: &[[u64; 2]]) -> Histogram<u64> {
    let mut h = histogram();
    for [value, count] in pairs {
        let _ = h.record_n(*value, *count);
    }
    h
}

/// The series and histograms of a recorder.
pub fn from_recorder(r: &Recorder) -> (Vec<SeriesSecond>, Histograms) {
    let series = r
        .seconds
        .iter()
        .enumerate()
        .map(|(t, s)| SeriesSecond {
            t: t as u64,
            requests: s.succeeded + s.failed.total(),
            succeeded: s.succeeded,
            failed: s.failed,
            by_region: s.by_region.clone(),
            data_4xx: s.data_4xx,
            latency_ms: s.latency.as_ref().map(percentiles).unwrap_or_default(),
        })
        .collect();
    let histograms = Histograms {
        overall: encode(&r.overall),
        by_region: r
            .by_region
            .iter()
            .map(|(k, h)| (k.clone(), encode(h)))
            .collect(),
        per_second: r
            .seconds
            .iter()
            .map(|s| s.latency.as_ref().map(encode).unwrap_or_default())
            .collect(),
    };
    (series, histograms)
}

/// A recorder back from a document (for `merge`).
pub fn to_recorder(results: &Results) -> Recorder {
    let mut r = Recorder {
        overall: decode(&results.histograms.overall),
        by_region: results
            .histograms
            .by_region
            .iter()
            .map(|(k, v)| (k.clone(), decode(v)))
            .collect(),
        seconds: Vec::new(),
    };
    for (i, s) in results.series.iter().enumerate() {
        let pairs = results.histograms.per_second.get(i);
        r.seconds.push(SecondStats {
            succeeded: s.succeeded,
            failed: s.failed,
            by_region: s.by_region.clone(),
            data_4xx: s.data_4xx,
            latency: pairs.filter(|p| !p.is_empty()).map(|p| decode(p)),
        });
    }
    r
}

/// Lag percentiles of the samples.
pub fn lag(samples: &[LagSample], method: &str) -> Lag {
    let mut seen: Vec<f64> = samples.iter().filter_map(|s| s.lag_ms).collect();
    seen.sort_by(f64::total_cmp);
    let at = |q: f64| -> Option<f64> {
        if seen.is_empty() {
            return None;
        }
        let i = ((q * seen.len() as f64).ceil() as usize).clamp(1, seen.len()) - 1;
        Some(seen[i])
    };
    Lag {
        samples: samples.len() as u64,
        unseen: samples.iter().filter(|s| s.lag_ms.is_none()).count() as u64,
        p50: at(0.50),
        p99: at(0.99),
        max: seen.last().copied(),
        method: method.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use std::time::Duration;

    #[test]
    fn histograms_survive_the_document_exactly() {
        let mut r = Recorder::default();
        for i in 0..2_000u64 {
            let outcome = if i % 10 == 0 {
                Outcome::Timeout
            } else {
                Outcome::Ok(if i % 2 == 0 { "a" } else { "b" }.into())
            };
            r.record(
                Duration::from_millis(i * 3),
                Duration::from_micros(500 + i * 37),
                &outcome,
            );
        }
        let (series, histograms) = from_recorder(&r);
        let doc = Results {
            schema: SCHEMA.into(),
            command: "run".into(),
            completed: true,
            started_at_ms: 0,
            settings: Settings {
                url: "http://x".into(),
                rate: 1.0,
                duration_seconds: 1.0,
                write_ratio: 0.5,
                connections: 1,
                timeout_seconds: 1.0,
                resolver: None,
                mode: "lww".into(),
                fault: None,
                fault_at: None,
                recover_at: None,
            },
            summary: Summary::default(),
            series,
            histograms,
            faults: vec![],
            dns_changes: vec![],
            phases: vec![],
            lag_samples: vec![],
            agents: 1,
        };
        let text = serde_json::to_string(&doc).expect("json");
        let back: Results = serde_json::from_str(&text).expect("read back");
        let r2 = to_recorder(&back);
        assert_eq!(r2.overall, r.overall);
        assert_eq!(r2.by_region, r.by_region);
        assert_eq!(r2.totals(), r.totals());
        for (a, b) in r.seconds.iter().zip(&r2.seconds) {
            assert_eq!(a.latency, b.latency);
        }
    }

    #[test]
    fn lag_percentiles_count_unseen_samples_apart() {
        let mut samples: Vec<LagSample> = (1..=100)
            .map(|i| LagSample {
                t: i as f64,
                from: "a".into(),
                to: "b".into(),
                lag_ms: Some(i as f64),
            })
            .collect();
        samples.push(LagSample {
            t: 0.0,
            from: "a".into(),
            to: "b".into(),
            lag_ms: None,
        });
        let l = lag(&samples, "m");
        assert_eq!((l.samples, l.unseen), (101, 1));
        assert_eq!((l.p50, l.p99, l.max), (Some(50.0), Some(99.0), Some(100.0)));
    }
}
