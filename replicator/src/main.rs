//! `replicator run | healthcheck`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use replicator::config::RunArgs;
use tworegion_common::aws::AwsOptions;
use tworegion_common::telemetry::{LogFormat, init_logging};

/// Replicates a DynamoDB table's stream into a table in another region, one-way (active-passive) or
/// last-writer-wins both ways (active-active). `AWS_ENDPOINT_URL` points it at another endpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter: a level (info, debug) or directives like "info,replicator=debug".
    #[arg(long, global = true, env = "REPLICATOR_LOG", default_value = "info")]
    log: String,
    /// Log format: auto (human on a terminal, JSON otherwise), human or json.
    #[arg(
        long,
        global = true,
        env = "REPLICATOR_LOG_FORMAT",
        default_value = "auto"
    )]
    log_format: LogFormat,
    /// AWS profile from ~/.aws/config [default: the standard credential chain].
    #[arg(long, global = true, env = "REPLICATOR_PROFILE")]
    profile: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Exit 0 if the local /healthz answers (for container health checks).
    Healthcheck {
        /// The address `run` listens on.
        #[arg(long, env = "REPLICATOR_METRICS_ADDR", default_value = "0.0.0.0:9464")]
        metrics_addr: SocketAddr,
    },
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format, &cli.log) {
        eprintln!("error: --log: {error}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Healthcheck { metrics_addr } => {
            match replicator::metrics::check_health(metrics_addr).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("unhealthy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let config = match args.into_config(default_worker_id()) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let (shutdown, forced) = match tworegion_common::shutdown::listen() {
                Ok(signals) => signals,
                Err(error) => {
                    eprintln!("error: cannot handle signals: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let aws = AwsOptions {
                profile: cli.profile,
                endpoint_url: None,
            };
            tokio::select! {
                result = replicator::run(config, aws, shutdown) => match result {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        tracing::error!(error = %error, "Replicator failed.");
                        eprintln!("error: {error:#}");
                        ExitCode::FAILURE
                    }
                },
                signal = forced => ExitCode::from(u8::try_from(signal.exit_code()).unwrap_or(1)),
            }
        }
    }
}
