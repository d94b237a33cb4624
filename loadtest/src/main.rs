//! Drives load through the failover domain, injects a regional failure and measures what users feel.
//! Exit codes: 0 completed, 1 an error or an interrupted run, 3 a `--max-*` threshold exceeded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loadtest::run::{FaultArgs, LoadArgs};

/// Drives load through the failover domain name, injects a regional failure and measures what
/// users feel: seconds to fail over, failed requests, writes lost or late, replication lag.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Constant-rate open-loop load; results.json and report.html in --out.
    Run {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// `run` plus a scripted fault (--fault-at, --recover-at), a fail-back phase and the checks.
    Failover {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        fault: FaultArgs,
    },
    /// Renders DIR/report.html again from DIR/results.json.
    Report {
        /// A results directory.
        dir: PathBuf,
    },
    /// Merges several agents' results of one test into --out.
    Merge {
        /// Results directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the merged results go.
        #[arg(long)]
        out: PathBuf,
    },
    /// A minimal local endpoint for measuring the generator itself (docs/loadtest.md).
    #[command(hide = true)]
    BenchTarget {
        /// Where to listen (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn fail(message: &str) -> ExitCode {
    eprintln!("loadtest: {message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: what is wrong and how to fix it.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            return fail(&format!("{first} (see loadtest --help)"));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { load } => match loadtest::run::execute(load, None).await {
                Ok(o) => ExitCode::from(o.code),
                Err(e) => fail(&e),
            },
            Command::Failover { load, fault } => {
                match loadtest::run::execute(load, Some(fault)).await {
                    Ok(o) => ExitCode::from(o.code),
                    Err(e) => fail(&e),
                }
            }
            Command::Report { dir } => match loadtest::report::read(&dir)
                .and_then(|r| loadtest::report::write(&dir, &r).map(|()| r))
            {
                Ok(r) => {
                    println!("{}", loadtest::report::table(&r));
                    println!("report: {}", dir.join("report.html").display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Command::Merge { dirs, out } => {
                let docs: Result<Vec<_>, String> =
                    dirs.iter().map(|d| loadtest::report::read(d)).collect();
                match docs
                    .and_then(loadtest::merge::merge)
                    .and_then(|m| loadtest::report::write(&out, &m).map(|()| m))
                {
                    Ok(m) => {
                        println!("{}", loadtest::report::table(&m));
                        println!("merged {} agents into {}", m.agents, out.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::BenchTarget { listen } => match loadtest::bench::run(listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            },
        }
    })
}
