//! The metrics as CloudWatch Embedded Metric Format (EMF) lines on stdout (`--metrics-format emf`): in
//! a plain ECS service nothing scrapes `/metrics`, but the task's log driver sends stdout to CloudWatch
//! Logs, which turns each EMF line into metrics.
//!
//! One line every `--emf-interval` (60 s) and one at shutdown, built from the same registry `/metrics`
//! serves (so the two never disagree):
//!
//! - counters: the increase since the last line (`Count`), so CloudWatch's Sum over a period is the
//!   period's total;
//! - gauges: the current value (`Seconds` for names in seconds, `Count` otherwise);
//! - histograms (the lag): the number of observations since the last line (`.Count`) and the upper
//!   bound of the bucket holding their 50th and 99th percentile (`.P50`, `.P99`, `Seconds`; omitted
//!   when nothing was observed);
//! - labels become name suffixes (`Errors.throttled`, `ReplicationLagSeconds.stream.P99`), so each metric has one
//!   dimension set: `Path` (the path's source and target tables) and every `--emf-dimension`.
//!
//! The format: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>
//! (at most 100 metrics per directive: more are split over several directives of the same line).

use std::collections::{BTreeMap, HashMap};

/// What each line carries besides the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfSettings {
    /// The CloudWatch namespace.
    pub namespace: String,
    /// Dimension names and values, `Path` first.
    pub dimensions: Vec<(String, String)>,
}

/// Turns successive Prometheus text expositions into EMF lines.
#[derive(Debug)]
pub struct Emf {
    settings: EmfSettings,
    /// The previous value of every counter and histogram bucket, by sample key.
    last: HashMap<String, f64>,
}

/// A metric of one line.
#[derive(Debug, Clone, PartialEq)]
struct Value {
    name: String,
    unit: &'static str,
    value: f64,
}

/// `records_read` to `RecordsRead`.
fn pascal(name: &str) -> String {
    name.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// A sample's name, labels (in order) and value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// A sample line: `name{a="x",b="y"} value` (labels in order) or `name value`.
fn sample(line: &str) -> Option<Sample<'_>> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (head, Vec::new()),
    };
    Some((name, labels, value))
}

impl Emf {
    /// Lines with `settings`.
    pub fn new(settings: EmfSettings) -> Emf {
        Emf {
            settings,
            last: HashMap::new(),
        }
    }

    fn delta(&mut self, key: String, now: f64) -> f64 {
        let before = self.last.insert(key, now).unwrap_or(0.0);
        // A counter never goes down; if it did (it cannot here), count from zero.
        if now >= before { now - before } else { now }
    }

    /// The metrics of `exposition` (Prometheus text, `prefix_` stripped from names).
    fn values(&mut self, exposition: &str, prefix: &str) -> Vec<Value> {
        let mut types: HashMap<&str, &str> = HashMap::new();
        let mut out = Vec::new();
        // Histogram buckets by (family, labels without le): (le, count) in order.
        let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for line in exposition.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    types.insert(name, kind);
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let suffix: String = labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(_, v)| format!(".{v}"))
                .collect();
            let key = |family: &str| {
                format!(
                    "{}{suffix}",
                    pascal(family.strip_prefix(prefix).unwrap_or(family))
                )
            };
            if let Some(family) = name.strip_suffix("_total")
                && types.get(family) == Some(&"counter")
            {
                let name = key(family);
                let value = self.delta(name.clone(), value);
                out.push(Value {
                    name,
                    unit: "Count",
                    value,
                });
            } else if types.get(name) == Some(&"gauge") {
                out.push(Value {
                    name: key(name),
                    unit: if name.ends_with("seconds") {
                        "Seconds"
                    } else {
                        "Count"
                    },
                    value,
                });
            } else if let Some(family) = name.strip_suffix("_bucket")
                && types.get(family) == Some(&"histogram")
            {
                let le = labels
                    .iter()
                    .find(|(k, _)| *k == "le")
                    .map_or(f64::INFINITY, |(_, v)| v.parse().unwrap_or(f64::INFINITY));
                let bucket = format!("{}@{le}", key(family));
                let count = self.delta(bucket, value);
                buckets
                    .entry((family.to_owned(), suffix.clone()))
                    .or_default()
                    .push((le, count));
            }
        }
        for ((family, suffix), mut cumulative) in buckets {
            cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = format!(
                "{}{suffix}",
                pascal(family.strip_prefix(prefix).unwrap_or(&family))
            );
            let total = cumulative.last().map_or(0.0, |(_, c)| *c);
            out.push(Value {
                name: format!("{name}.Count"),
                unit: "Count",
                value: total,
            });
            if total > 0.0 {
                for (label, q) in [("P50", 0.5), ("P99", 0.99)] {
                    let bound = cumulative
                        .iter()
                        .find(|(_, c)| *c >= total * q)
                        .map_or(f64::INFINITY, |(le, _)| *le);
                    // Above the largest bucket: the largest finite bound is the most that can be said.
                    let bound = if bound.is_finite() {
                        bound
                    } else {
                        cumulative
                            .iter()
                            .rev()
                            .map(|(le, _)| *le)
                            .find(|le| le.is_finite())
                            .unwrap_or(0.0)
                    };
                    out.push(Value {
                        name: format!("{name}.{label}"),
                        unit: "Seconds",
                        value: bound,
                    });
                }
            }
        }
        out
    }

    /// One EMF line (JSON, no newline) for the metrics in `exposition` (the `/metrics` text; names
    /// lose `prefix_`) at `timestamp_ms`.
    pub fn line(&mut self, exposition: &str, prefix: &str, timestamp_ms: u64) -> String {
        use serde_json::{Map, Value as Json, json};
        let values = self.values(exposition, &format!("{prefix}_"));
        let names: Vec<&str> = self
            .settings
            .dimensions
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let directives: Vec<Json> = values
            .chunks(100)
            .map(|chunk| {
                json!({
                    "Namespace": self.settings.namespace,
                    "Dimensions": [names],
                    "Metrics": chunk.iter().map(|v| json!({"Name": v.name, "Unit": v.unit})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".to_owned(),
            json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
        );
        for (name, value) in &self.settings.dimensions {
            root.insert(name.clone(), Json::String(value.clone()));
        }
        for v in values {
            root.insert(v.name, json!(v.value));
        }
        Json::Object(root).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn settings() -> EmfSettings {
        EmfSettings {
            namespace: "tworegion/replicator".to_owned(),
            dimensions: vec![
                ("Path".to_owned(), "us-east-1/a > us-west-2/b".to_owned()),
                ("Service".to_owned(), "todo".to_owned()),
            ],
        }
    }

    /// Checks `line` against the EMF specification's rules and returns it parsed.
    fn valid_emf(line: &str) -> serde_json::Value {
        let root: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
        assert!(!line.contains('\n'), "one line");
        let aws = &root["_aws"];
        assert!(aws["Timestamp"].is_u64(), "Timestamp: epoch milliseconds");
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .expect("CloudWatchMetrics array");
        assert!(!directives.is_empty());
        for directive in directives {
            assert!(
                directive["Namespace"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty() && n.len() <= 1024)
            );
            let sets = directive["Dimensions"]
                .as_array()
                .expect("Dimensions array");
            for set in sets {
                let set = set.as_array().expect("a dimension set is an array");
                assert!(set.len() <= 30, "at most 30 dimensions");
                for name in set {
                    let name = name.as_str().expect("dimension names are strings");
                    assert!(
                        root[name].is_string(),
                        "dimension {name} has a string value at the root"
                    );
                }
            }
            let metrics = directive["Metrics"].as_array().expect("Metrics array");
            assert!(metrics.len() <= 100, "at most 100 metrics per directive");
            for metric in metrics {
                let name = metric["Name"].as_str().expect("Name");
                assert!(!name.is_empty() && name.len() <= 255);
                let unit = metric["Unit"].as_str().expect("Unit");
                assert!(
                    ["Count", "Seconds"].contains(&unit),
                    "a CloudWatch unit: {unit}"
                );
                assert!(
                    root[name].is_number(),
                    "metric {name} has a number at the root"
                );
            }
        }
        root
    }

    #[test]
    fn lines_follow_the_specification_and_counters_are_deltas() {
        let metrics = Metrics::default();
        let mut emf = Emf::new(settings());
        metrics.records_read.inc_by(10);
        metrics.error("throttled");
        metrics.shards_owned.set(3);
        for _ in 0..99 {
            metrics.lag.get_or_create(&[("by", "stream")]).observe(0.2);
        }
        metrics.lag.get_or_create(&[("by", "stream")]).observe(20.0);
        let first = valid_emf(&emf.line(&metrics.render(), "replicator", 1_700_000_000_000));
        assert_eq!(first["RecordsRead"], 10.0);
        assert_eq!(first["Errors.throttled"], 1.0);
        assert_eq!(first["ShardsOwned"], 3.0);
        assert_eq!(first["Path"], "us-east-1/a > us-west-2/b");
        assert_eq!(first["Service"], "todo");
        assert_eq!(first["ReplicationLagSeconds.stream.Count"], 100.0);
        assert_eq!(first["ReplicationLagSeconds.stream.P50"], 0.25);
        assert_eq!(first["ReplicationLagSeconds.stream.P99"], 0.25);
        assert_eq!(
            first["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["Path", "Service"]])
        );

        metrics.records_read.inc_by(5);
        metrics.lag.get_or_create(&[("by", "stream")]).observe(40.0);
        let second = valid_emf(&emf.line(&metrics.render(), "replicator", 1_700_000_060_000));
        assert_eq!(
            second["RecordsRead"], 5.0,
            "the increase since the last line"
        );
        assert_eq!(second["Errors.throttled"], 0.0);
        assert_eq!(second["ShardsOwned"], 3.0, "a gauge is its value");
        assert_eq!(second["ReplicationLagSeconds.stream.Count"], 1.0);
        assert_eq!(second["ReplicationLagSeconds.stream.P99"], 60.0);
        let third = valid_emf(&emf.line(&metrics.render(), "replicator", 1_700_000_120_000));
        assert_eq!(third["ReplicationLagSeconds.stream.Count"], 0.0);
        assert!(
            third.get("ReplicationLagSeconds.stream.P99").is_none(),
            "no observations, no percentile"
        );
    }

    #[test]
    fn every_line_carries_the_metrics_the_deployers_alarms_watch() {
        // deployer/src/desired.rs (ALARM_METRICS) creates alarms on these names: a rename here
        // must rename them there.
        let metrics = Metrics::default();
        let line = valid_emf(&Emf::new(settings()).line(&metrics.render(), "replicator", 0));
        for name in [
            "OldestUnappliedAgeSeconds",
            "DeadLetters",
            "ShardsStalled",
            "ShardsStopped",
        ] {
            assert!(
                line.get(name).is_some_and(serde_json::Value::is_number),
                "{name} in {line}"
            );
        }
    }

    #[test]
    fn names_are_pascal_case_and_samples_parse() {
        assert_eq!(pascal("records_read"), "RecordsRead");
        assert_eq!(
            pascal("oldest_unapplied_age_seconds"),
            "OldestUnappliedAgeSeconds"
        );
        assert_eq!(
            sample(r#"x_bucket{by="stream",le="0.5"} 3"#),
            Some(("x_bucket", vec![("by", "stream"), ("le", "0.5")], 3.0))
        );
        assert_eq!(sample("x 1.5"), Some(("x", vec![], 1.5)));
        assert_eq!(sample("garbage"), None);
    }
}
