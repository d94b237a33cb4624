//! Drives load through the failover domain, injects a regional failure and measures what users feel.
//!
//! Its commands arrive with a later issue; until then the binary only describes itself.

use clap::{CommandFactory, Parser};

/// Drives load through the failover domain, injects a regional failure and measures what users feel.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    let _ = Cli::command().print_help();
    eprintln!("\nloadtest has no commands yet (they arrive with a later issue).");
    std::process::ExitCode::from(2)
}
