//! What a run records: every answer's latency (from its intended start, see `schedule`) in HDR
//! histograms, overall and per region, and a per-second series of outcomes attributed to the second
//! each request was due in. Recorders of several load agents merge exactly (histograms add).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::measure::Second;

/// Latencies are recorded in microseconds, from 1 us to 1 hour, 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;

/// An empty histogram with the recorder's bounds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("constant bounds that HdrHistogram accepts")
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, from this region.
    Ok(String),
    /// A 4xx answer (from this region, when it said).
    Status4xx(Option<String>),
    /// A 4xx answer about the data (404, 409, 412: the service is up, the item is not as the
    /// client expected, for example not yet replicated): counted with the 4xx failures, and as
    /// available for `rto_seconds`.
    DataAnswer(Option<String>),
    /// A 5xx answer.
    Status5xx(Option<String>),
    /// No connection.
    Connect,
    /// No answer in time.
    Timeout,
}

/// Failures by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// No connection.
    pub connect: u64,
    /// No answer in time.
    pub timeout: u64,
    /// 5xx answers.
    #[serde(rename = "5xx")]
    pub status_5xx: u64,
    /// 4xx answers.
    #[serde(rename = "4xx")]
    pub status_4xx: u64,
}

impl Failures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_5xx + self.status_4xx
    }

    fn add(&mut self, other: &Failures) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.status_5xx += other.status_5xx;
        self.status_4xx += other.status_4xx;
    }
}

/// One second of the series.
#[derive(Debug, Clone, Default)]
pub struct SecondStats {
    /// 2xx answers.
    pub succeeded: u64,
    /// Failures by cause.
    pub failed: Failures,
    /// 2xx answers by region.
    pub by_region: BTreeMap<String, u64>,
    /// Of the 4xx failures, answers about the data (see `Outcome::DataAnswer`).
    pub data_4xx: u64,
    /// Latencies of the requests due in this second.
    pub latency: Option<Histogram<u64>>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The percentiles of a histogram of microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// A run's records.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Every latency.
    pub overall: Histogram<u64>,
    /// Latencies of successful answers by region.
    pub by_region: BTreeMap<String, Histogram<u64>>,
    /// Second `i` of the run holds the requests due in it.
    pub seconds: Vec<SecondStats>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            overall: histogram(),
            by_region: BTreeMap::new(),
            seconds: Vec::new(),
        }
    }
}

impl Recorder {
    /// Records one request due at `intended` (from the start) that took `latency` from then.
    pub fn record(&mut self, intended: Duration, latency: Duration, outcome: &Outcome) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(HIGHEST_US)
            .clamp(1, HIGHEST_US);
        self.overall.saturating_record(us);
        let index = intended.as_secs() as usize;
        if self.seconds.len() <= index {
            self.seconds.resize_with(index + 1, SecondStats::default);
        }
        let second = &mut self.seconds[index];
        second
            .latency
            .get_or_insert_with(histogram)
            .saturating_record(us);
        match outcome {
            Outcome::Ok(region) => {
                second.succeeded += 1;
                *second.by_region.entry(region.clone()).or_default() += 1;
                self.by_region
                    .entry(region.clone())
                    .or_insert_with(histogram)
                    .saturating_record(us);
            }
            Outcome::Status4xx(_) => second.failed.status_4xx += 1,
            Outcome::DataAnswer(_) => {
                second.failed.status_4xx += 1;
                second.data_4xx += 1;
            }
            Outcome::Status5xx(_) => second.failed.status_5xx += 1,
            Outcome::Connect => second.failed.connect += 1,
            Outcome::Timeout => second.failed.timeout += 1,
        }
    }

    /// Adds another agent's records (the same run schedule).
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.overall.add(&other.overall);
        for (region, h) in &other.by_region {
            let _ = self
                .by_region
                .entry(region.clone())
                .or_insert_with(histogram)
                .add(h);
        }
        if self.seconds.len() < other.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondStats::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.succeeded += theirs.succeeded;
            mine.data_4xx += theirs.data_4xx;
            mine.failed.add(&theirs.failed);
            for (region, n) in &theirs.by_region {
                *mine.by_region.entry(region.clone()).or_default() += n;
            }
            if let Some(h) = &theirs.latency {
                let _ = mine.latency.get_or_insert_with(histogram).add(h);
            }
        }
    }

    /// Requests, successes and failures by cause over the whole run.
    pub fn totals(&self) -> (u64, u64, Failures) {
        let mut failed = Failures::default();
        let mut ok = 0;
        for s in &self.seconds {
            ok += s.succeeded;
            failed.add(&s.failed);
        }
        (ok + failed.total(), ok, failed)
    }

    /// The series as the failover figures read it (`measure`): answers about the data count as
    /// the service being available (see `Outcome::DataAnswer`).
    pub fn series(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .map(|s| Second {
                succeeded: s.succeeded + s.data_4xx,
                failed: s.failed.total() - s.data_4xx,
                by_region: s.by_region.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn records_by_second_region_and_cause() {
        let mut r = Recorder::default();
        r.record(ms(100), ms(10), &Outcome::Ok("A".into()));
        r.record(ms(900), ms(30), &Outcome::Ok("A".into()));
        r.record(ms(1500), ms(4000), &Outcome::Timeout);
        r.record(ms(1600), ms(2), &Outcome::Connect);
        r.record(ms(2100), ms(20), &Outcome::Ok("B".into()));
        r.record(ms(2200), ms(25), &Outcome::Status5xx(Some("B".into())));
        let (requests, ok, failed) = r.totals();
        assert_eq!((requests, ok, failed.total()), (6, 3, 3));
        assert_eq!(
            (failed.timeout, failed.connect, failed.status_5xx),
            (1, 1, 1)
        );
        let series = r.series();
        assert_eq!(series.len(), 3);
        assert_eq!((series[0].succeeded, series[0].failed), (2, 0));
        assert_eq!((series[1].succeeded, series[1].failed), (0, 2));
        assert_eq!(series[2].by_region.get("B"), Some(&1));
        let p = percentiles(&r.overall);
        assert!((p.max - 4000.0).abs() / 4000.0 < 0.001, "{p:?}");
        let a = percentiles(&r.by_region["A"]);
        assert!(
            (a.max - 30.0).abs() < 0.05 && (a.p50 - 10.0).abs() < 0.02,
            "{a:?}"
        );
    }

    #[test]
    fn merging_two_agents_equals_recording_everything_in_one() {
        let requests: Vec<(Duration, Duration, Outcome)> = (0..2000u64)
            .map(|i| {
                let outcome = match i % 8 {
                    0 => Outcome::Timeout,
                    1 => Outcome::Status4xx(None),
                    7 => Outcome::DataAnswer(Some("B".into())),
                    2..=4 => Outcome::Ok("A".into()),
                    _ => Outcome::Ok("B".into()),
                };
                (ms(i * 3), ms(1 + (i * 37) % 900), outcome)
            })
            .collect();
        let mut one = Recorder::default();
        let (mut left, mut right) = (Recorder::default(), Recorder::default());
        for (i, (at, took, outcome)) in requests.iter().enumerate() {
            one.record(*at, *took, outcome);
            if i % 2 == 0 {
                left.record(*at, *took, outcome);
            } else {
                right.record(*at, *took, outcome);
            }
        }
        left.merge(&right);
        assert_eq!(left.totals(), one.totals());
        assert_eq!(left.series(), one.series());
        assert_eq!(left.overall, one.overall);
        assert_eq!(left.by_region, one.by_region);
        assert_eq!(percentiles(&left.overall), percentiles(&one.overall));
    }

    #[test]
    fn answers_about_the_data_fail_the_request_but_count_as_served_for_rto() {
        // Second 0: all good in A. The fault at 1.0; second 1 refused; from second 2 the survivor
        // answers, one read in ten a 404 for a todo it does not have yet.
        let mut r = Recorder::default();
        for i in 0..10 {
            r.record(ms(i * 100), ms(5), &Outcome::Ok("A".into()));
            r.record(ms(1000 + i * 100), ms(1), &Outcome::Connect);
        }
        for s in 2..6u64 {
            for i in 0..10 {
                let outcome = if i == 0 {
                    Outcome::DataAnswer(Some("B".into()))
                } else {
                    Outcome::Ok("B".into())
                };
                r.record(ms(s * 1000 + i * 100), ms(5), &outcome);
            }
        }
        let (_, ok, failed) = r.totals();
        assert_eq!((ok, failed.status_4xx, failed.connect), (46, 4, 10));
        let series = r.series();
        assert_eq!(crate::measure::rto_seconds(&series, 1.0, 6.0), Some(1.0));
        // Had the 404s been counted as unavailability, service would never have come back.
        let mut other = Recorder::default();
        for (i, s) in r.seconds.iter().enumerate() {
            for _ in 0..s.succeeded {
                other.record(ms(i as u64 * 1000), ms(5), &Outcome::Ok("B".into()));
            }
            for _ in 0..s.data_4xx {
                other.record(ms(i as u64 * 1000), ms(5), &Outcome::Status4xx(None));
            }
            for _ in 0..s.failed.connect {
                other.record(ms(i as u64 * 1000), ms(5), &Outcome::Connect);
            }
        }
        assert_eq!(crate::measure::rto_seconds(&other.series(), 1.0, 6.0), None);
    }
}
