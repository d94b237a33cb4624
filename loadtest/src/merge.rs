//! `loadtest merge`: several agents' results of one test as one document. Histograms add exactly
//! (they hold the same buckets); the per-second series add up second by second (each agent's
//! seconds count from its own start, so agents must be started together: run the fault from one
//! agent and plain `run` from the others, with the same `--duration`). Counts add up; `rpo_seconds`
//! and the time figures take the worst agent (the largest), `rto_seconds` is recomputed from the
//! merged series.

use crate::measure;
use crate::results::{self, Results};
use crate::stats::percentiles;

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn add_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Merges `docs` (at least one) into one document.
pub fn merge(docs: Vec<Results>) -> Result<Results, String> {
    let mut iter = docs.into_iter();
    let mut out = iter
        .next()
        .ok_or("merge: give at least one results directory")?;
    let mut recorder = results::to_recorder(&out);
    for d in iter {
        let r = results::to_recorder(&d);
        recorder.merge(&r);
        let (a, b) = (&mut out.summary, &d.summary);
        a.acked_writes += b.acked_writes;
        a.uncertain_keys += b.uncertain_keys;
        a.missing_after_failover = add_opt(a.missing_after_failover, b.missing_after_failover);
        a.checked_after_failover = add_opt(a.checked_after_failover, b.checked_after_failover);
        a.missing_after_failback = add_opt(a.missing_after_failback, b.missing_after_failback);
        a.stale_after_failback = add_opt(a.stale_after_failback, b.stale_after_failback);
        a.checked_after_failback = add_opt(a.checked_after_failback, b.checked_after_failback);
        a.rpo_seconds = max_opt(a.rpo_seconds, b.rpo_seconds);
        a.detected_seconds = max_opt(a.detected_seconds, b.detected_seconds);
        a.dns_moved_seconds = max_opt(a.dns_moved_seconds, b.dns_moved_seconds);
        a.failback_seconds = max_opt(a.failback_seconds, b.failback_seconds);
        a.catch_up_seconds = max_opt(a.catch_up_seconds, b.catch_up_seconds);
        a.rate_asked += b.rate_asked;
        a.rate_achieved += b.rate_achieved;
        a.connections_opened += b.connections_opened;
        a.dns_lookups += b.dns_lookups;
        a.dns_failures += b.dns_failures;
        a.notes.extend(b.notes.iter().cloned());
        a.failed_region = a.failed_region.take().or_else(|| b.failed_region.clone());
        out.completed &= d.completed;
        out.settings.rate += d.settings.rate;
        out.settings.connections += d.settings.connections;
        out.started_at_ms = out.started_at_ms.min(d.started_at_ms);
        out.agents += d.agents;
        for f in d.faults {
            if !out.faults.contains(&f) {
                out.faults.push(f);
            }
        }
        out.dns_changes.extend(d.dns_changes);
        out.lag_samples.extend(d.lag_samples);
        if out.settings.fault.is_none() {
            out.settings.fault = d.settings.fault;
            out.settings.fault_at = d.settings.fault_at;
            out.settings.recover_at = d.settings.recover_at;
            out.command = d.command;
        }
    }
    out.dns_changes.sort_by(|a, b| a.t.total_cmp(&b.t));
    out.notes_dedup();
    let (requests, succeeded, failed) = recorder.totals();
    let s = &mut out.summary;
    s.requests = requests;
    s.succeeded = succeeded;
    s.failed = failed;
    s.latency_ms = percentiles(&recorder.overall);
    s.latency_ms_by_region = recorder
        .by_region
        .iter()
        .map(|(k, h)| (k.clone(), percentiles(h)))
        .collect();
    let method = s.replication_lag_ms.method.clone();
    s.replication_lag_ms = results::lag(&out.lag_samples, &method);
    if let (Some(f), Some(region)) = (out.faults.first(), s.failed_region.clone()) {
        let series = recorder.series();
        let end = f.undone_at.unwrap_or(series.len() as f64);
        s.rto_seconds = measure::rto_seconds(&series, f.injected_at, end);
        s.detected_seconds = measure::detected_seconds(&series, f.injected_at, &region);
    }
    let (series, histograms) = results::from_recorder(&recorder);
    out.series = series;
    out.histograms = histograms;
    Ok(out)
}

impl Results {
    fn notes_dedup(&mut self) {
        let mut seen = std::collections::BTreeSet::new();
        self.summary.notes.retain(|n| seen.insert(n.clone()));
    }
}
