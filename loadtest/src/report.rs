//! `report.html` (one self-contained file: inline CSS and SVG drawn from the data, no scripts, no
//! network fetches) and the summary table printed at the end of a run.

use std::fmt::Write as _;
use std::path::Path;

use crate::results::{Results, SCHEMA};
use crate::stats::Percentiles;

/// Writes `results.json` and `report.html` into `dir`.
pub fn write(dir: &Path, results: &Results) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| format!("results: {e}"))?;
    std::fs::write(dir.join("results.json"), json)
        .map_err(|e| format!("{}: {e}", dir.join("results.json").display()))?;
    std::fs::write(dir.join("report.html"), html(results))
        .map_err(|e| format!("{}: {e}", dir.join("report.html").display()))?;
    Ok(())
}

/// Reads `dir/results.json` (checking its schema).
pub fn read(dir: &Path) -> Result<Results, String> {
    let file = dir.join("results.json");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
    let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
    if schema != SCHEMA {
        return Err(format!(
            "{}: schema {schema:?}, this loadtest reads {SCHEMA:?}",
            file.display()
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("{}: {e}", file.display()))
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"))
}

fn count(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms",
        p.p50, p.p90, p.p99, p.p999, p.max
    )
}

/// The rows of the summary: (name, value).
fn rows(r: &Results) -> Vec<(String, String)> {
    let s = &r.summary;
    let mut rows = vec![
        ("requests".to_owned(), s.requests.to_string()),
        (
            "succeeded".to_owned(),
            format!(
                "{} ({:.2}%)",
                s.succeeded,
                if s.requests == 0 {
                    0.0
                } else {
                    s.succeeded as f64 * 100.0 / s.requests as f64
                }
            ),
        ),
        (
            "failed".to_owned(),
            format!(
                "{} (connect {}, timeout {}, 5xx {}, 4xx {})",
                s.failed.total(),
                s.failed.connect,
                s.failed.timeout,
                s.failed.status_5xx,
                s.failed.status_4xx
            ),
        ),
        (
            "rate".to_owned(),
            format!(
                "{:.1}/s achieved of {:.1}/s asked",
                s.rate_achieved, s.rate_asked
            ),
        ),
        ("latency_ms".to_owned(), pct(&s.latency_ms)),
    ];
    for (region, p) in &s.latency_ms_by_region {
        rows.push((format!("latency_ms {region}"), pct(p)));
    }
    if r.settings.fault.is_some() {
        rows.extend([
            (
                "primary / failed region".to_owned(),
                format!(
                    "{} / {}",
                    s.primary.as_deref().unwrap_or("-"),
                    s.failed_region.as_deref().unwrap_or("-")
                ),
            ),
            ("rto_seconds".to_owned(), opt(s.rto_seconds, " s")),
            ("detected_seconds".to_owned(), opt(s.detected_seconds, " s")),
            (
                "dns_moved_seconds".to_owned(),
                opt(s.dns_moved_seconds, " s"),
            ),
            ("failback_seconds".to_owned(), opt(s.failback_seconds, " s")),
            (
                "missing_after_failover".to_owned(),
                format!(
                    "{} of {} checked",
                    count(s.missing_after_failover),
                    count(s.checked_after_failover)
                ),
            ),
            ("rpo_seconds".to_owned(), opt(s.rpo_seconds, " s")),
            (
                "missing_after_failback".to_owned(),
                format!(
                    "{} of {} checked",
                    count(s.missing_after_failback),
                    count(s.checked_after_failback)
                ),
            ),
            (
                "stale_after_failback".to_owned(),
                count(s.stale_after_failback),
            ),
        ]);
    }
    let l = &s.replication_lag_ms;
    rows.extend([
        ("acked_writes".to_owned(), s.acked_writes.to_string()),
        ("uncertain_keys".to_owned(), s.uncertain_keys.to_string()),
        (
            "replication_lag_ms".to_owned(),
            format!(
                "p50 {}  p99 {}  max {}  ({} samples, {} unseen)",
                opt(l.p50, ""),
                opt(l.p99, ""),
                opt(l.max, ""),
                l.samples,
                l.unseen
            ),
        ),
    ]);
    rows
}

/// The summary table printed at the end.
pub fn table(r: &Results) -> String {
    let rows = rows(r);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    for n in &r.summary.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A vertical marker on every chart.
struct Marker {
    t: f64,
    label: String,
    color: &'static str,
}

struct Line {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
    dots: bool,
}

const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
const PALETTE: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22",
];

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if v <= step * mag {
            return step * mag;
        }
    }
    10.0 * mag
}

/// An SVG chart: lines (or dots) over seconds, y from 0 (or log scale), markers across.
fn chart(
    title: &str,
    y_label: &str,
    x_max: f64,
    lines: &[Line],
    markers: &[Marker],
    log: bool,
) -> String {
    let x_max = x_max.max(1.0);
    let all: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .collect();
    let y_top = all.iter().copied().fold(0.0, f64::max);
    let (y_min_log, y_max_log) = if log {
        let lo = all
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let lo = if lo.is_finite() {
            lo.log10().floor()
        } else {
            0.0
        };
        (lo, nice_max(y_top).log10().ceil().max(lo + 1.0))
    } else {
        (0.0, 0.0)
    };
    let y_max = nice_max(y_top);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + pw * (t / x_max).clamp(0.0, 1.0);
    let y = |v: f64| {
        let f = if log {
            if v <= 0.0 {
                0.0
            } else {
                ((v.log10() - y_min_log) / (y_max_log - y_min_log)).clamp(0.0, 1.0)
            }
        } else {
            (v / y_max).clamp(0.0, 1.0)
        };
        TOP + ph * (1.0 - f)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"##,
        esc(title),
        esc(title)
    );
    // Axes and grid.
    let ticks: Vec<f64> = if log {
        (y_min_log as i64..=y_max_log as i64)
            .map(|e| 10f64.powi(e as i32))
            .collect()
    } else {
        (0..=4).map(|i| y_max * i as f64 / 4.0).collect()
    };
    for v in ticks {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            if v >= 100.0 || v == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        );
    }
    let step = nice_max(x_max / 8.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let xx = x(t);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" class="tick">{t:.0}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">seconds from start</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle" class="axis">{}</text>"##,
        LEFT + pw / 2.0,
        H - 4.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, m) in markers.iter().enumerate() {
        let xx = x(m.t);
        // Labels of markers close together would overlap: three heights in turn.
        let label_y = TOP + 12.0 + (i % 3) as f64 * 13.0;
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="{}" stroke-width="2" stroke-dasharray="6 3"/><text x="{:.1}" y="{:.1}" class="marker" fill="{}">{}</text>"##,
            H - BOTTOM,
            m.color,
            xx + 3.0,
            label_y,
            m.color,
            esc(&m.label)
        );
    }
    for l in lines {
        if l.dots {
            for (t, v) in &l.points {
                let _ = write!(
                    s,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"##,
                    x(*t),
                    y(*v),
                    l.color
                );
            }
        } else if !l.points.is_empty() {
            let pts: Vec<String> = l
                .points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = write!(
                s,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"##,
                l.color,
                pts.join(" ")
            );
        }
    }
    s.push_str("</svg><div class=\"legend\">");
    for l in lines {
        let _ = write!(
            s,
            r##"<span><i style="background:{}"></i>{}</span>"##,
            l.color,
            esc(&l.name)
        );
    }
    s.push_str("</div></figure>");
    s
}

/// The whole page.
pub fn html(r: &Results) -> String {
    let x_max = (r.series.len() as f64).max(r.settings.duration_seconds);
    let mut markers = Vec::new();
    for f in &r.faults {
        markers.push(Marker {
            t: f.injected_at,
            label: format!("fault {} ({})", f.kind, f.region),
            color: "#d62728",
        });
        if let Some(u) = f.undone_at {
            markers.push(Marker {
                t: u,
                label: "recovery".into(),
                color: "#2ca02c",
            });
        }
    }
    for c in &r.dns_changes {
        markers.push(Marker {
            t: c.t,
            label: format!("DNS → {}", c.to.join(",")),
            color: "#7f7f7f",
        });
    }
    // Requests per second by region (2xx) and failures by cause.
    let mut regions: Vec<&String> = r.series.iter().flat_map(|s| s.by_region.keys()).collect();
    regions.sort();
    regions.dedup();
    let mut lines = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        lines.push(Line {
            name: format!("2xx from {region}"),
            color: PALETTE[i % PALETTE.len()],
            points: r
                .series
                .iter()
                .map(|s| {
                    (
                        s.t as f64 + 0.5,
                        *s.by_region.get(*region).unwrap_or(&0) as f64,
                    )
                })
                .collect(),
            dots: false,
        });
    }
    type Cause = (
        &'static str,
        &'static str,
        fn(&crate::results::SeriesSecond) -> u64,
    );
    let causes: [Cause; 4] = [
        ("connect errors", "#d62728", |s| s.failed.connect),
        ("timeouts", "#e377c2", |s| s.failed.timeout),
        ("5xx", "#ff9896", |s| s.failed.status_5xx),
        ("4xx", "#c49c94", |s| s.failed.status_4xx),
    ];
    for (name, color, f) in causes {
        if r.series.iter().any(|s| f(s) > 0) {
            lines.push(Line {
                name: name.into(),
                color,
                points: r
                    .series
                    .iter()
                    .map(|s| (s.t as f64 + 0.5, f(s) as f64))
                    .collect(),
                dots: false,
            });
        }
    }
    let requests = chart(
        "Requests per second, by region and status",
        "requests / s",
        x_max,
        &lines,
        &markers,
        false,
    );
    let lat = |name: &str, color: &'static str, f: fn(&Percentiles) -> f64| Line {
        name: name.into(),
        color,
        points: r
            .series
            .iter()
            .filter(|s| s.requests > 0)
            .map(|s| (s.t as f64 + 0.5, f(&s.latency_ms)))
            .collect(),
        dots: false,
    };
    let latency = chart(
        "Latency from each request's intended start (per second of intended start)",
        "ms (log scale)",
        x_max,
        &[
            lat("p50", "#1f77b4", |p| p.p50),
            lat("p90", "#2ca02c", |p| p.p90),
            lat("p99", "#ff7f0e", |p| p.p99),
            lat("max", "#d62728", |p| p.max),
        ],
        &markers,
        true,
    );
    let mut lag_lines = Vec::new();
    let mut pairs: Vec<(String, String)> = r
        .lag_samples
        .iter()
        .map(|s| (s.from.clone(), s.to.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    for (i, (from, to)) in pairs.iter().enumerate() {
        lag_lines.push(Line {
            name: format!("{from} → {to}"),
            color: PALETTE[i % PALETTE.len()],
            points: r
                .lag_samples
                .iter()
                .filter(|s| &s.from == from && &s.to == to)
                .filter_map(|s| s.lag_ms.map(|l| (s.t, l)))
                .collect(),
            dots: true,
        });
    }
    let lag = if lag_lines.is_empty() {
        "<p class=\"note\">No replication-lag samples (no regional endpoints, or none taken).</p>"
            .to_owned()
    } else {
        chart(
            "Replication lag of sampled writes (acknowledged → visible in the other region)",
            "ms",
            x_max,
            &lag_lines,
            &markers,
            false,
        )
    };
    let s = &r.summary;
    let card = |name: &str, value: String, bad: bool| {
        format!(
            "<div class=\"card{}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            if bad { " bad" } else { "" },
            esc(&value),
            esc(name)
        )
    };
    let ok_pct = if s.requests == 0 {
        0.0
    } else {
        s.succeeded as f64 * 100.0 / s.requests as f64
    };
    let mut cards = vec![
        card("requests", s.requests.to_string(), false),
        card("succeeded", format!("{ok_pct:.2}%"), ok_pct < 99.0),
        card("latency p99", format!("{:.1} ms", s.latency_ms.p99), false),
    ];
    if r.settings.fault.is_some() {
        cards.push(card(
            "rto_seconds",
            opt(s.rto_seconds, " s"),
            s.rto_seconds.is_none(),
        ));
        cards.push(card(
            "rpo_seconds",
            opt(s.rpo_seconds, " s"),
            s.rpo_seconds.is_some_and(|v| v > 0.0),
        ));
        cards.push(card(
            "missing_after_failback",
            count(s.missing_after_failback),
            s.missing_after_failback.is_some_and(|v| v > 0),
        ));
    }
    cards.push(card(
        "replication lag p99",
        opt(s.replication_lag_ms.p99, " ms"),
        false,
    ));
    let mut table = String::from("<table class=\"summary\">");
    for (k, v) in rows(r) {
        let _ = write!(table, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    table.push_str("</table>");
    let mut faults = String::new();
    if !r.faults.is_empty() {
        faults.push_str("<h2>Faults</h2><table><tr><th>kind</th><th>region</th><th>injected</th><th>changed</th><th>undone</th><th>undo</th></tr>");
        for f in &r.faults {
            let _ = write!(
                faults,
                "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.kind),
                esc(&f.region),
                f.injected_at,
                esc(&f.changed),
                opt(f.undone_at, " s"),
                esc(f
                    .undone
                    .as_deref()
                    .or(f.undo_error.as_deref())
                    .unwrap_or("-"))
            );
        }
        faults.push_str("</table>");
    }
    let mut dns = String::new();
    if !r.dns_changes.is_empty() {
        dns.push_str("<h2>DNS answers</h2><table><tr><th>at</th><th>from</th><th>to</th></tr>");
        for c in &r.dns_changes {
            let _ = write!(
                dns,
                "<tr><td>{:.1} s</td><td>{}</td><td>{}</td></tr>",
                c.t,
                esc(&c.from.join(", ")),
                esc(&c.to.join(", "))
            );
        }
        dns.push_str("</table>");
    }
    let notes: String = s
        .notes
        .iter()
        .map(|n| format!("<p class=\"note\">{}</p>", esc(n)))
        .collect();
    let st = &r.settings;
    let settings = format!(
        "{} at {} req/s for {} s, write ratio {}, {} connections, timeout {} s, mode {}{}{}{}",
        st.url,
        st.rate,
        st.duration_seconds,
        st.write_ratio,
        st.connections,
        st.timeout_seconds,
        st.mode,
        st.resolver
            .as_ref()
            .map(|r| format!(", resolver {r}"))
            .unwrap_or_default(),
        st.fault
            .as_ref()
            .map(|f| format!(
                ", fault {f} at {} s, recovery at {} s",
                st.fault_at.unwrap_or(0.0),
                st.recover_at.unwrap_or(0.0)
            ))
            .unwrap_or_default(),
        if r.agents > 1 {
            format!(", {} agents merged", r.agents)
        } else {
            String::new()
        },
    );
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tworegion loadtest: {command}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:960px;color:#222;padding:0 12px}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:28px 0 8px}}
.sub{{color:#666;margin-bottom:16px}} .incomplete{{background:#fdd;padding:8px;border-radius:4px}}
.cards{{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}}
.card{{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}} .card.bad{{border-color:#d62728;background:#fff4f4}}
.card .v{{font-size:20px;font-weight:600}} .card .k{{color:#666;font-size:12px}}
table{{border-collapse:collapse;margin:8px 0}} th,td{{border-bottom:1px solid #eee;padding:4px 10px;text-align:left;vertical-align:top}}
table.summary th{{font-weight:500;color:#444;white-space:nowrap}}
figure{{margin:18px 0}} figcaption{{font-weight:600;margin-bottom:4px}}
svg{{max-width:100%;height:auto;background:#fff}} .tick{{font-size:11px;fill:#666}} .axis{{font-size:12px;fill:#444}} .marker{{font-size:11px}}
.legend span{{margin-right:14px;font-size:12px}} .legend i{{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}}
.note{{color:#8a6d3b}}
</style></head><body>
<h1>tworegion loadtest: {command}</h1>
<div class="sub">{settings}</div>
{incomplete}
<div class="cards">{cards}</div>
{notes}
{requests}
{latency}
{lag}
<h2>Summary</h2>
{table}
{faults}
{dns}
<p class="sub">Definitions of every figure: docs/loadtest.md. Data: results.json (schema {schema}).</p>
</body></html>
"##,
        command = esc(&r.command),
        settings = esc(&settings),
        incomplete = if r.completed {
            String::new()
        } else {
            "<p class=\"incomplete\">The run was interrupted: the figures cover what ran.</p>"
                .to_owned()
        },
        cards = cards.join(""),
        schema = SCHEMA,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_maxima_round_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(450.0), 500.0);
    }

    #[test]
    fn text_from_the_data_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
