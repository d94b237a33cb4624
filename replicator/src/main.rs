//! Replicates a DynamoDB table's stream into a table in another region (one-way or last-writer-wins).
//!
//! Its commands arrive with issue #3; until then the binary only describes itself.

use clap::{CommandFactory, Parser};

/// Replicates a DynamoDB table's stream into a table in another region (one-way or last-writer-wins).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    let _ = Cli::command().print_help();
    eprintln!("\nreplicator has no commands yet (they arrive with issue #3).");
    std::process::ExitCode::from(2)
}
