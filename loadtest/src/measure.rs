//! The failover figures, computed from what a run recorded: a per-second series of responses and the
//! writes the service acknowledged. Pure arithmetic, so that every definition is testable on
//! synthetic series.
//!
//! Definitions (times in seconds from the start of the run):
//! - `rto_seconds`: from the fault to the start of the first whole second `s` at or after the fault
//!   such that every second from `s` to the end of the failover phase (the recovery, or the end of the
//!   run) that saw any request had at least 99% success. `None` when no such second exists. Success
//!   here means the service answered: a 2xx, or a 4xx about the data (404, 409, 412: for example
//!   an item the survivor does not have yet); connection failures, timeouts, 5xx and other 4xx
//!   (403, 429...) are failures.
//! - `detected_seconds`: from the fault to the first second after it with a successful response from
//!   a region other than the one that failed.
//! - `missing_after_failover`: writes acknowledged by the failed region before the fault that the
//!   survivor does not hold when it starts serving; `rpo_seconds`: the time between the oldest of
//!   them being acknowledged and the fault (0 when none is missing).

use std::collections::BTreeMap;

/// What one second of the run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Second {
    /// Requests that got a successful (2xx) answer.
    pub succeeded: u64,
    /// Requests that failed, for any cause.
    pub failed: u64,
    /// Successful answers by the region that gave them (`x-tworegion-region`).
    pub by_region: BTreeMap<String, u64>,
}

impl Second {
    fn requests(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Whether at least 99% of this second's requests succeeded (a second without requests says
    /// nothing and passes).
    fn good(&self) -> bool {
        self.succeeded * 100 >= self.requests() * 99
    }
}

/// `rto_seconds` (see the module's definitions): `series[i]` is second `i` of the run.
pub fn rto_seconds(series: &[Second], fault_at: f64, phase_end: f64) -> Option<f64> {
    let first = fault_at.max(0.0).floor() as usize;
    let end = (phase_end.max(0.0).ceil() as usize).min(series.len());
    if first >= end {
        return None;
    }
    // The last bad second of the phase; recovery starts right after it.
    let last_bad = (first..end).rev().find(|&s| !series[s].good());
    let start = match last_bad {
        None => first,
        Some(s) if s + 1 < end => s + 1,
        Some(_) => return None,
    };
    Some((start as f64 - fault_at).max(0.0))
}

/// `detected_seconds` (see the module's definitions).
pub fn detected_seconds(series: &[Second], fault_at: f64, failed_region: &str) -> Option<f64> {
    let first = fault_at.max(0.0).floor() as usize;
    (first..series.len())
        .find(|&s| {
            series[s]
                .by_region
                .iter()
                .any(|(region, n)| region != failed_region && *n > 0)
        })
        .map(|s| (s as f64 - fault_at).max(0.0))
}

/// A write the service acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct AckedWrite {
    /// The item's key.
    pub id: String,
    /// The region that acknowledged it.
    pub region: String,
    /// When (seconds from the start of the run).
    pub acked_at: f64,
}

/// What the survivor lacked of the failed region's acknowledged writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// `missing_after_failover`.
    pub missing: usize,
    /// `rpo_seconds`.
    pub rpo_seconds: f64,
}

/// `missing_after_failover` and `rpo_seconds` (see the module's definitions): `survivor_has` says
/// whether the survivor held a key when it started serving.
pub fn loss(
    acked: &[AckedWrite],
    failed_region: &str,
    fault_at: f64,
    survivor_has: &dyn Fn(&str) -> bool,
) -> Loss {
    let missing: Vec<&AckedWrite> = acked
        .iter()
        .filter(|w| w.region == failed_region && w.acked_at <= fault_at && !survivor_has(&w.id))
        .collect();
    let oldest = missing
        .iter()
        .map(|w| w.acked_at)
        .fold(f64::INFINITY, f64::min);
    Loss {
        missing: missing.len(),
        rpo_seconds: if missing.is_empty() {
            0.0
        } else {
            (fault_at - oldest).max(0.0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(ok: u64, failed: u64, region: &str) -> Second {
        Second {
            succeeded: ok,
            failed,
            by_region: BTreeMap::from([(region.to_owned(), ok)]),
        }
    }

    /// 10 good seconds in A, the fault at 10.5, 12 bad seconds, then B serving.
    fn series() -> Vec<Second> {
        let mut s: Vec<Second> = (0..10).map(|_| second(100, 0, "A")).collect();
        s.extend((10..22).map(|_| second(20, 80, "A")));
        s.extend((22..40).map(|_| second(100, 0, "B")));
        s
    }

    #[test]
    fn rto_is_from_the_fault_to_the_second_success_stays_high() {
        let s = series();
        assert_eq!(rto_seconds(&s, 10.5, 40.0), Some(11.5));
        // One bad second later on moves the recovery after it.
        let mut late = s.clone();
        late[30] = second(90, 10, "B");
        assert_eq!(rto_seconds(&late, 10.5, 40.0), Some(20.5));
        // 99% exactly passes; a phase ending bad has no recovery.
        late[30] = second(99, 1, "B");
        assert_eq!(rto_seconds(&late, 10.5, 40.0), Some(11.5));
        assert_eq!(rto_seconds(&s, 10.5, 20.0), None);
        // No failure at all: 0.
        let calm: Vec<Second> = (0..20).map(|_| second(5, 0, "A")).collect();
        assert_eq!(rto_seconds(&calm, 5.0, 20.0), Some(0.0));
        // Seconds without requests say nothing.
        let mut gaps = s.clone();
        gaps[25] = Second::default();
        assert_eq!(rto_seconds(&gaps, 10.5, 40.0), Some(11.5));
    }

    #[test]
    fn detection_is_the_first_answer_from_another_region() {
        let s = series();
        assert_eq!(detected_seconds(&s, 10.5, "A"), Some(11.5));
        assert_eq!(detected_seconds(&s[..20], 10.5, "A"), None);
    }

    #[test]
    fn loss_counts_only_the_failed_regions_acknowledged_writes_before_the_fault() {
        let w = |id: &str, region: &str, at: f64| AckedWrite {
            id: id.into(),
            region: region.into(),
            acked_at: at,
        };
        let acked = vec![
            w("a1", "A", 8.0),
            w("a2", "A", 9.5),
            w("a3", "A", 10.4),
            w("late", "A", 11.0), // after the fault: not the failover's loss
            w("b1", "B", 9.0),    // the survivor's own
        ];
        let has = |id: &str| id == "a1";
        assert_eq!(
            loss(&acked, "A", 10.5, &has),
            Loss {
                missing: 2,
                rpo_seconds: 1.0
            }
        );
        let all = |_: &str| true;
        assert_eq!(
            loss(&acked, "A", 10.5, &all),
            Loss {
                missing: 0,
                rpo_seconds: 0.0
            }
        );
    }
}
