//! `replicator run | healthcheck | leases | dlq | verify | backfill`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    #[command(flatten)]
    globals: Globals,
}

/// Flags every command takes.
#[derive(Debug, clap::Args)]
struct Globals {
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

/// The command line: [`Cli`] with `run --config FILE`, which replaces `run`'s other flags (so they
/// are not required with it, and cannot be given beside it: [`config_conflict`]).
fn cli() -> clap::Command {
    Cli::command().mut_subcommand("run", |run| {
        run.mut_args(|arg| {
            if arg.is_required_set() {
                arg.required(false).required_unless_present("config")
            } else {
                arg
            }
        })
        .override_usage(
            "replicator run --source-region <REGION> --source-table <TABLE> --target-region <REGION> \
             --target-table <TABLE> --mode <MODE> [OPTIONS]\n       replicator run --config <FILE>",
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .env("REPLICATOR_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Run every [[path]] of this TOML file in one process instead of the one path \
                     the flags give: its keys are these flags without dashes (docs/replicator.md, \
                     \"Several paths in one process\")",
                ),
        )
    })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate until SIGTERM or SIGINT: the path the flags give, or every [[path]] of --config FILE.
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

/// One of a path's tables.
#[derive(Debug, Clone, Copy)]
enum Table {
    Source,
    Target,
    /// The lease table, and the dead-letter table beside it (same region and account).
    Lease,
}

/// The SDK configuration for one of `path`'s tables, through its role when it has one.
async fn table_sdk(
    path: &PathSpec,
    table: Table,
    aws: &AwsOptions,
) -> anyhow::Result<aws_config::SdkConfig> {
    let (what, table, role) = match table {
        Table::Source => ("source", &path.source, path.roles.source.as_ref()),
        Table::Target => ("target", &path.target, path.roles.target.as_ref()),
        Table::Lease => ("lease table", &path.lease, path.roles.lease.as_ref()),
    };
    Ok(table_sdk_config(what, table, role, aws).await?)
}

/// A client that makes one attempt per call: for writes conditional on what was read, where an SDK
/// retry of a write that DynamoDB applied but whose answer was lost would fail its own condition. The
/// operator repeats the command.
fn one_attempt(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk)
            .retry_config(
                aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
            )
            .build(),
    )
}

/// The exit of an operator command: 0, or the error on stderr and `code(error)`.
fn finish(result: anyhow::Result<()>, code: impl FnOnce(&anyhow::Error) -> u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code(&error))
        }
    }
}

/// `replicator leases ...` on the validated path `spec`, with AWS clients made as `run` makes them.
async fn leases(command: &LeasesCommand, spec: &PathSpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let source = aws_sdk_dynamodb::Client::new(&table_sdk(spec, Table::Source, aws).await?);
    // Lease writes are conditional on the counter: a retried write that landed would be reported as
    // a lease that moved. One attempt each, as in `run`.
    let lease = one_attempt(&table_sdk(spec, Table::Lease, aws).await?);
    let mut stdout = std::io::stdout();
    let result = replicator::admin::leases::run(command, spec, &source, &lease, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator dlq ...` on the validated `spec`, with AWS clients made as `run` makes them.
async fn dlq(command: &DlqCommand, spec: &DlqSpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let path = &spec.path;
    let clients = replicator::admin::dlq::Clients {
        source: aws_sdk_dynamodb::Client::new(&table_sdk(path, Table::Source, aws).await?),
        // Replay writes are conditional on what was read.
        target: one_attempt(&table_sdk(path, Table::Target, aws).await?),
        dead_letters: aws_sdk_dynamodb::Client::new(&table_sdk(path, Table::Lease, aws).await?),
    };
    let mut stdout = std::io::stdout();
    let result = replicator::admin::dlq::run(command, spec, &clients, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator verify ...` on the validated `spec`.
async fn verify(spec: &VerifySpec, aws: &AwsOptions) -> anyhow::Result<()> {
    let source_sdk = table_sdk(&spec.path, Table::Source, aws).await?;
    let target_sdk = table_sdk(&spec.path, Table::Target, aws).await?;
    // Repair writes are conditional on what was read.
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
    let clients = replicator::admin::backfill::Clients {
        source: aws_sdk_dynamodb::Client::new(&table_sdk(path, Table::Source, aws).await?),
        target: aws_sdk_dynamodb::Client::new(&table_sdk(path, Table::Target, aws).await?),
        lease: aws_sdk_dynamodb::Client::new(&table_sdk(path, Table::Lease, aws).await?),
    };
    let mut stdout = std::io::stdout();
    let result = replicator::admin::backfill::run(spec, &clients, &mut stdout).await;
    std::io::Write::flush(&mut stdout).context("writing the output")?;
    Ok(result?)
}

/// `replicator run`: the paths until SIGTERM or SIGINT (a second signal exits at once).
async fn run(
    configs: Vec<replicator::config::Config>,
    labelled: bool,
    aws: AwsOptions,
) -> ExitCode {
    let (shutdown, forced) = match tworegion_common::shutdown::listen() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot handle signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        result = replicator::run_paths(configs, labelled, aws, shutdown) => match result {
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

/// A flag or `REPLICATOR_*` variable of `run` given beside `--config` (or `REPLICATOR_CONFIG`),
/// said with where each came from: with a file, every setting comes from the file.
fn config_conflict(run: &clap::ArgMatches) -> Option<String> {
    use clap::parser::ValueSource;
    let config = run.value_source("config")?;
    let command = cli();
    let flags = command.find_subcommand("run")?.get_arguments();
    for arg in flags.filter(|a| a.get_id() != "config") {
        let long = arg.get_long().unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        match (run.value_source(arg.get_id().as_str()), config) {
            (Some(ValueSource::CommandLine), ValueSource::EnvVariable) => {
                return Some(format!(
                    "REPLICATOR_CONFIG is set, so `run` takes its paths from that file and not from \
                     --{long}: unset REPLICATOR_CONFIG to give the path with flags"
                ));
            }
            (Some(ValueSource::CommandLine), _) => {
                return Some(format!(
                    "--{long} cannot be given with --config: set `{long}` in the file"
                ));
            }
            (Some(ValueSource::EnvVariable), _) => {
                return Some(format!(
                    "{env} is set, but with --config every setting comes from the file: set \
                     `{long}` there and unset {env}"
                ));
            }
            _ => {}
        }
    }
    None
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = cli().get_matches();
    let exit = |error: clap::Error| -> ! { error.format(&mut cli()).exit() };
    let globals = Globals::from_arg_matches(&matches).unwrap_or_else(|e| exit(e));
    // With `run --config`, the derived `run` lacks its required flags: the file gives them.
    let config_file = matches
        .subcommand_matches("run")
        .and_then(|run| run.get_one::<PathBuf>("config"))
        .cloned();
    if let Err(error) = init_logging(globals.log_format, &globals.log) {
        eprintln!("error: --log: {error}");
        return ExitCode::from(2);
    }
    let aws = AwsOptions {
        profile: globals.profile,
        ..AwsOptions::default()
    };
    if let Some(file) = config_file {
        if let Some(conflict) = matches.subcommand_matches("run").and_then(config_conflict) {
            eprintln!("error: {conflict}");
            return ExitCode::from(2);
        }
        return match replicator::config_file::load(&file, &default_worker_id()) {
            Ok(configs) => run(configs, true, aws).await,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    match Command::from_arg_matches(&matches).unwrap_or_else(|e| exit(e)) {
        Command::Healthcheck { metrics_addr } => {
            match replicator::metrics::check_health(metrics_addr).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("unhealthy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => match args.into_config(default_worker_id()) {
            Ok(config) => run(vec![config], false, aws).await,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Leases { command } => {
            let spec = match command.path().validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            finish(leases(&command, &spec, &aws).await, |_| 1)
        }
        Command::Backfill(args) => {
            let spec = match args.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            finish(backfill(&spec, &aws).await, |error| {
                error
                    .downcast_ref::<BackfillError>()
                    .map_or(1, BackfillError::exit_code)
            })
        }
        Command::Verify(args) => {
            let spec = match args.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            finish(verify(&spec, &aws).await, |error| {
                error
                    .downcast_ref::<VerifyError>()
                    .map_or(1, VerifyError::exit_code)
            })
        }
        Command::Dlq { command } => {
            let spec = match command.validate() {
                Ok(spec) => spec,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            finish(dlq(&command, &spec, &aws).await, |error| {
                error
                    .downcast_ref::<DlqError>()
                    .map_or(1, DlqError::exit_code)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        cli().try_get_matches_from(std::iter::once("replicator").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_either_a_config_file_or_the_path_flags() {
        cli().debug_assert();
        // The flag form still requires its flags.
        let missing = parse(&["run", "--mode", "lww"]).unwrap_err();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(missing.to_string().contains("--source-region"), "{missing}");
        assert!(
            missing
                .to_string()
                .contains("replicator run --config <FILE>"),
            "the usage shows both forms: {missing}"
        );
        // The file form needs none of them, and takes none beside it.
        let file = parse(&["run", "--config", "paths.toml"]).unwrap();
        let run = file.subcommand_matches("run").unwrap();
        assert_eq!(config_conflict(run), None);
        let both = parse(&["run", "--config", "paths.toml", "--batch-size", "5"]).unwrap();
        assert_eq!(
            config_conflict(both.subcommand_matches("run").unwrap()).as_deref(),
            Some("--batch-size cannot be given with --config: set `batch-size` in the file")
        );
        // The flag form parses into the derived command as before.
        let flags = parse(&[
            "run",
            "--source-region",
            "us-east-1",
            "--source-table",
            "a",
            "--target-region",
            "us-west-2",
            "--target-table",
            "a",
            "--mode",
            "lww",
        ])
        .unwrap();
        assert!(matches!(
            Command::from_arg_matches(&flags).unwrap(),
            Command::Run(_)
        ));
    }
}
