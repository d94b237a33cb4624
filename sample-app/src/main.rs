//! The todo REST API served from both regions, on AWS Lambda or as a local HTTP server.
//!
//! Its commands arrive with issue #5; until then the binary only describes itself.

use clap::{CommandFactory, Parser};

/// The todo REST API served from both regions, on AWS Lambda or as a local HTTP server.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    let _ = Cli::command().print_help();
    eprintln!("\nsample-app has no commands yet (they arrive with issue #5).");
    std::process::ExitCode::from(2)
}
