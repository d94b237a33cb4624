//! `sim`: runs the deterministic simulation for many seeds, or replays one with its trace.
//!
//! ```text
//! cargo run --release -p replicator --bin sim -- --mode one-way|lww --seeds N [--first-seed S]
//! cargo run --release -p replicator --bin sim -- --mode lww --seed S        # replay one, with its trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use replicator::config::Mode;
use replicator::sim::{Sabotage, Switches, run_seed};

/// Deterministic simulation of the replicator under shard splits, trimming, iterator expiry,
/// throttling, 5xx, latency, clock skew, crashes, stalls and outages.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// one-way or lww.
    #[arg(long, value_enum)]
    mode: Mode,
    /// How many seeds to run.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replay one seed and print its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Switch off shard splits and rollovers.
    #[arg(long)]
    no_splits: bool,
    /// Switch off trimming (and outages).
    #[arg(long)]
    no_trim: bool,
    /// Switch off iterator expiry.
    #[arg(long)]
    no_expiry: bool,
    /// Switch off throttling and 5xx.
    #[arg(long)]
    no_errors: bool,
    /// Switch off worker crashes.
    #[arg(long)]
    no_crashes: bool,
    /// Switch off worker stalls.
    #[arg(long)]
    no_stalls: bool,
    /// Switch off clock skew between regions.
    #[arg(long)]
    no_skew: bool,
    /// Break the engine on purpose to show the checks catch it: ack-before-write.
    #[arg(long, value_parser = ["ack-before-write"])]
    sabotage: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let switches = Switches {
        splits: !cli.no_splits,
        trim: !cli.no_trim,
        expiry: !cli.no_expiry,
        errors: !cli.no_errors,
        crashes: !cli.no_crashes,
        stalls: !cli.no_stalls,
        skew: !cli.no_skew,
    };
    let sabotage = match cli.sabotage.as_deref() {
        Some("ack-before-write") => Sabotage::AckBeforeWrite,
        _ => Sabotage::None,
    };
    let mut flags = String::new();
    for (off, name) in [
        (cli.no_splits, "--no-splits"),
        (cli.no_trim, "--no-trim"),
        (cli.no_expiry, "--no-expiry"),
        (cli.no_errors, "--no-errors"),
        (cli.no_crashes, "--no-crashes"),
        (cli.no_stalls, "--no-stalls"),
        (cli.no_skew, "--no-skew"),
    ] {
        if off {
            flags.push(' ');
            flags.push_str(name);
        }
    }
    if let Some(s) = &cli.sabotage {
        flags.push_str(&format!(" --sabotage {s}"));
    }
    let mode = cli.mode.label();
    if let Some(seed) = cli.seed {
        let result = run_seed(seed, cli.mode, switches, sabotage, true);
        for line in &result.trace {
            println!("{line}");
        }
        println!("settings: {}", result.config);
        println!("stats: {:?}", result.stats);
        println!("trace hash: {:016x}", result.trace_hash);
        for v in &result.violations {
            println!("VIOLATION: {v}");
        }
        let (passed, failed) = if result.violations.is_empty() {
            (1, 0)
        } else {
            (0, 1)
        };
        println!("seeds: {passed} passed, {failed} failed");
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for seed in cli.first_seed..cli.first_seed.saturating_add(cli.seeds) {
        let result = run_seed(seed, cli.mode, switches, sabotage, false);
        for (k, v) in &result.stats {
            *totals.entry(k).or_default() += v;
        }
        if result.violations.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            println!("FAIL seed {seed}: {}", result.violations[0]);
            if result.violations.len() > 1 {
                println!("    (and {} more violations)", result.violations.len() - 1);
            }
            println!(
                "    replay: cargo run --release -p replicator --bin sim -- --mode {mode} --seed {seed}{flags}"
            );
        }
    }
    println!(
        "mode {mode}: {} seeds from {} in {:.1}s; totals: {totals:?}",
        cli.seeds,
        cli.first_seed,
        started.elapsed().as_secs_f64()
    );
    println!("seeds: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
