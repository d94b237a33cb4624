//! `deployer plan | up | status | failover --to REGION | failback | down --yes` (see `deployer::cli`).

use std::process::ExitCode;

use clap::Parser as _;
use deployer::cli::{Cli, run};
use tworegion_common::telemetry::{LogFormat, init_logging};

#[tokio::main]
async fn main() -> ExitCode {
    // With --json, errors are JSON on stdout too ({"error": {"message", "exit_code"}}), also
    // those found while reading the command line.
    let json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if json && e.use_stderr() {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or("bad arguments");
                json_error(first.trim_start_matches("error: "));
            }
            // 2 is reserved for `plan` with changes; help and version are not errors.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = std::env::var("DEPLOYER_LOG").unwrap_or_else(|_| "warn".to_owned());
    if let Err(error) = init_logging(LogFormat::Auto, &filter) {
        eprintln!("error: DEPLOYER_LOG: {error}");
        return ExitCode::from(1);
    }
    let mut stdout = std::io::stdout();
    match run(&cli, &mut stdout).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.0);
            if cli.json {
                json_error(&failure.0);
            }
            ExitCode::from(1)
        }
    }
}

/// An error as JSON on stdout, for `--json` callers.
fn json_error(message: &str) {
    println!(
        "{}",
        serde_json::json!({ "error": { "message": message, "exit_code": 1 } })
    );
}
