//! Reconciles both regions and the failover DNS from one config file (plan, up, status, failover, down).
//!
//! Its commands arrive with issue #6; until then the binary only describes itself.

use clap::{CommandFactory, Parser};

/// Reconciles both regions and the failover DNS from one config file (plan, up, status, failover, down).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    let _ = Cli::command().print_help();
    eprintln!("\ndeployer has no commands yet (they arrive with issue #6).");
    std::process::ExitCode::from(2)
}
