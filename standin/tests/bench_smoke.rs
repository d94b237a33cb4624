//! A smoke run of the benchmark (`replicator-bench --quick`: a tiny backlog, a two-second feed), so the
//! instrument never rots. It measures nothing worth keeping (debug build, shared machine); it checks
//! that every part runs end to end against the real replicator binary and reports what it should.
//! `scripts/test` builds the workspace's binaries first; the replicator binary is found beside the
//! bench binary.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_benchmark_runs_every_part_and_reports_them() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_replicator-bench"));
    let replicator = bench.with_file_name("replicator");
    assert!(
        replicator.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        replicator.display()
    );
    let json = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let out = Command::new(&bench)
        .args(["--quick", "--json"])
        .arg(&json)
        .arg("--standin")
        .arg(env!("CARGO_BIN_EXE_standin"))
        .output()
        .expect("runs the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("| mode | shards |"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let _ = std::fs::remove_file(&json);
    let results = report["results"].as_array().expect("results");
    let drains: Vec<_> = results.iter().filter(|r| r["part"] == "drain").collect();
    assert_eq!(
        drains.len(),
        4,
        "two shard counts in two modes: {results:?}"
    );
    for r in &drains {
        assert_eq!(r["records"], 2000);
        assert!(
            r["records_per_second"].as_f64().is_some_and(|x| x > 0.0),
            "{r}"
        );
        assert!(r["cpu_seconds"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(r["peak_rss_mb"].as_f64().is_some_and(|x| x > 1.0), "{r}");
        assert!(r["times_floor"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    let lags: Vec<_> = results.iter().filter(|r| r["part"] == "lag").collect();
    assert_eq!(lags.len(), 2, "{results:?}");
    for r in &lags {
        assert_eq!(r["records"], 1000);
        assert!(r["lag_p99_ms"].as_u64().is_some_and(|x| x > 0), "{r}");
        assert!(r["lag_max_ms"].as_u64() >= r["lag_p50_ms"].as_u64(), "{r}");
    }
    let standin: Vec<_> = results.iter().filter(|r| r["part"] == "standin").collect();
    assert_eq!(standin.len(), 1);
    assert!(
        standin[0]["put_items_per_second"]
            .as_f64()
            .is_some_and(|x| x > 0.0)
    );
}
