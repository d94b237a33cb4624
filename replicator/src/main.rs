//! `replicator run | healthcheck | leases | dlq | verify | backfill`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use replicator::admin::PathSpec;
use replicator::admin::backfill::{BackfillArgs, BackfillError, BackfillSpec};
use replicator::admin::dlq::{DlqCommand, DlqError, DlqSpec};
use replicator::admin::leases::LeasesCommand;
use replicator::admin::verify::{VerifyArgs, VerifyError, VerifySpec};
use replicator::config::RunArgs;
use replicator::config::table_sdk_config;
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
    /// Look at or change the lease table: list, release or reset-checkpoint (instead of editing rows).
    Leases {
        #[command(subcommand)]
        command: LeasesCommand,
    },
    /// Look at, replay or delete the dead letters (records the target refused for good): list, replay
    /// or purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Compare the source and target tables of a path (exit 4 if they differ); --repair writes the
    /// winner of each difference by the mode's rule.
    Verify(Box<VerifyArgs>),
    /// Copy a table that already holds data into the other region, beside `run` (which replays the
    /// stream); resumable, rate-limited, every write conditional.
    Backfill(Box<BackfillArgs>),
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `replicator leases ...` on the validated path `spec`, with AWS clients made as `run` makes them.
async fn leases(command: &LeasesCommand, spec: &PathSpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let source_sdk =
        table_sdk_config("source", &spec.source, spec.roles.source.as_ref(), aws).await?;
    let lease_sdk =
        table_sdk_config("lease table", &spec.lease, spec.roles.lease.as_ref(), aws).await?;
    let source = aws_sdk_dynamodb::Client::new(&source_sdk);
    // Lease writes are conditional on the counter: an SDK retry of a write that DynamoDB applied but
    // whose answer was lost would fail its own condition and be reported as a lease that moved. One
    // attempt each, as in `run`; the operator repeats the command.
    let lease = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&lease_sdk)
            .retry_config(
                aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
            )
            .build(),
    );
    let mut stdout = std::io::stdout();
    let result = replicator::admin::leases::run(command, spec, &source, &lease, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator dlq ...` on the validated `spec`, with AWS clients made as `run` makes them.
async fn dlq(command: &DlqCommand, spec: &DlqSpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let path = &spec.path;
    let source_sdk =
        table_sdk_config("source", &path.source, path.roles.source.as_ref(), aws).await?;
    let target_sdk =
        table_sdk_config("target", &path.target, path.roles.target.as_ref(), aws).await?;
    // The dead-letter table is in the lease table's region (and account).
    let lease_sdk =
        table_sdk_config("lease table", &path.lease, path.roles.lease.as_ref(), aws).await?;
    let clients = replicator::admin::dlq::Clients {
        source: aws_sdk_dynamodb::Client::new(&source_sdk),
        // Replay writes are conditional on what was read: an SDK retry of a write that DynamoDB applied
        // but whose answer was lost would fail its own condition. One attempt each; the operator
        // repeats the command.
        target: aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&target_sdk)
                .retry_config(
                    aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
                )
                .build(),
        ),
        dead_letters: aws_sdk_dynamodb::Client::new(&lease_sdk),
    };
    let mut stdout = std::io::stdout();
    let result = replicator::admin::dlq::run(command, spec, &clients, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator verify ...` on the validated `spec`.
async fn verify(spec: &VerifySpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let path = &spec.path;
    let source_sdk =
        table_sdk_config("source", &path.source, path.roles.source.as_ref(), aws).await?;
    let target_sdk =
        table_sdk_config("target", &path.target, path.roles.target.as_ref(), aws).await?;
    let one_attempt = |sdk: &aws_config::SdkConfig| {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .retry_config(
                    aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
                )
                .build(),
        )
    };
    let clients = replicator::admin::verify::Clients {
        source: aws_sdk_dynamodb::Client::new(&source_sdk),
        target: aws_sdk_dynamodb::Client::new(&target_sdk),
        source_writes: one_attempt(&source_sdk),
        target_writes: one_attempt(&target_sdk),
    };
    let mut stdout = std::io::stdout();
    let result = replicator::admin::verify::run(spec, &clients, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator backfill ...` on the validated `spec`.
async fn backfill(spec: &BackfillSpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let path = &spec.path;
    let source_sdk =
        table_sdk_config("source", &path.source, path.roles.source.as_ref(), aws).await?;
    let target_sdk =
        table_sdk_config("target", &path.target, path.roles.target.as_ref(), aws).await?;
    let lease_sdk =
        table_sdk_config("lease table", &path.lease, path.roles.lease.as_ref(), aws).await?;
    let clients = replicator::admin::backfill::Clients {
        source: aws_sdk_dynamodb::Client::new(&source_sdk),
        target: aws_sdk_dynamodb::Client::new(&target_sdk),
        lease: aws_sdk_dynamodb::Client::new(&lease_sdk),
    };
    let mut stdout = std::io::stdout();
    let result = replicator::admin::backfill::run(spec, &clients, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format, &cli.log) {
        eprintln!("error: --log: {error}");
        return ExitCode::from(2);
    }
    let aws = AwsOptions {
        profile: cli.profile,
        ..AwsOptions::default()
    };
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
        Command::Leases { command } => {
            let spec = match command.path().validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            match leases(&command, &spec, &aws).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backfill(args) => {
            let spec = match args.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            match backfill(&spec, &aws).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    let refused = matches!(
                        error.downcast_ref::<BackfillError>(),
                        Some(BackfillError::Refused { .. })
                    );
                    ExitCode::from(if refused { 4 } else { 1 })
                }
            }
        }
        Command::Verify(args) => {
            let spec = match args.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            match verify(&spec, &aws).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(
                        error
                            .downcast_ref::<VerifyError>()
                            .map_or(1, VerifyError::exit_code),
                    )
                }
            }
        }
        Command::Dlq { command } => {
            let spec = match command.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            match dlq(&command, &spec, &aws).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(
                        error
                            .downcast_ref::<DlqError>()
                            .map_or(1, DlqError::exit_code),
                    )
                }
            }
        }
    }
}
