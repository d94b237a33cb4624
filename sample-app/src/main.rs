//! `sample-app`: the todo API as a local HTTP server (`--listen`), or on AWS Lambda (detected from
//! `AWS_LAMBDA_RUNTIME_API`). Every flag can also be given as `SAMPLE_APP_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sample_app::store::DynamoStore;
use sample_app::todo::validate_partition_key;
use sample_app::{App, Maintenance, router};
use tworegion_common::aws::{AwsOptions, parse_region, sdk_config};
use tworegion_common::telemetry::{LogFormat, init_logging};
use tworegion_common::version::{HybridClock, VersionAttributes};

/// The todo REST API served from both regions: on AWS Lambda behind API Gateway, or as a local HTTP
/// server. Writes carry the versions the replicator's last-writer-wins rule uses.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Serve HTTP on this address (local mode), e.g. 127.0.0.1:8080. Without it, the app expects to run
    /// on AWS Lambda.
    #[arg(long, env = "SAMPLE_APP_LISTEN")]
    listen: Option<SocketAddr>,
    /// The region this app serves, also stamped on its writes [default: AWS_REGION].
    #[arg(long, env = "SAMPLE_APP_REGION")]
    region: Option<String>,
    /// The DynamoDB table (its partition key a String, named by --partition-key).
    #[arg(long, env = "SAMPLE_APP_TABLE")]
    table: String,
    /// The name of the table's partition key attribute (a String; no sort key). The API still calls the
    /// todo's id `id`.
    #[arg(long, env = "SAMPLE_APP_PARTITION_KEY", default_value = "id")]
    partition_key: String,
    /// The API key the local server requires in `x-api-key` (20 to 128 characters, as API Gateway).
    /// On Lambda, API Gateway checks the key and this is not used.
    #[arg(long, env = "SAMPLE_APP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Start with the maintenance switch on (health answers 503).
    #[arg(long, env = "SAMPLE_APP_MAINTENANCE")]
    maintenance: bool,
    /// The maintenance switch is on while this file exists (checked on every health call).
    #[arg(long, env = "SAMPLE_APP_MAINTENANCE_FILE")]
    maintenance_file: Option<PathBuf>,
    /// How long tombstones of deleted todos are kept (their TTL), e.g. 7d, 36h.
    #[arg(long, env = "SAMPLE_APP_TOMBSTONE_RETENTION", default_value = "7d", value_parser = parse_days)]
    tombstone_retention: Duration,
    /// Longest wait for the table in a health check, e.g. 2s, 500ms.
    #[arg(long, env = "SAMPLE_APP_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_days)]
    health_timeout: Duration,
    /// Log filter (info, debug, ...).
    #[arg(long, env = "SAMPLE_APP_LOG", default_value = "info")]
    log: String,
    /// Log format: auto, human or json.
    #[arg(long, env = "SAMPLE_APP_LOG_FORMAT", default_value = "auto")]
    log_format: LogFormat,
}

/// Parses `500ms`, `2s`, `10m`, `36h`, `7d`.
fn parse_days(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write it like 7d, 36h, 2s or 500ms"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let factor = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(factor)
        .filter(|s| *s <= 10 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is longer than 10 years"))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    if cli.listen.is_none() && !on_lambda {
        bail!(
            "give --listen ADDRESS (for example 127.0.0.1:8080) to run locally; on AWS Lambda the runtime is detected"
        );
    }
    let region = match cli
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
    {
        Some(r) => r,
        None => bail!("--region: required (or AWS_REGION)"),
    };
    parse_region(&region).context("--region")?;
    if cli.table.trim().is_empty() {
        bail!("--table: required");
    }
    let attributes = VersionAttributes::default();
    if let Err(problem) = validate_partition_key(&cli.partition_key, &attributes) {
        bail!("--partition-key: {problem}");
    }
    if cli.tombstone_retention < Duration::from_secs(3600) {
        bail!(
            "--tombstone-retention: at least 1h, longer than replication can lag (default 7d); a tombstone that expires first lets an older write bring the todo back"
        );
    }
    let api_key = match (&cli.listen, cli.api_key) {
        (Some(_), None) => bail!("--api-key: required for the local server (20 to 128 characters)"),
        (Some(_), Some(key)) if !(20..=128).contains(&key.len()) => {
            bail!(
                "--api-key: must have 20 to 128 characters (it has {})",
                key.len()
            )
        }
        (Some(_), key) => key,
        (None, _) => None,
    };
    let sdk = sdk_config(parse_region(&region)?, &AwsOptions::default()).await;
    let app = Arc::new(App {
        store: DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            cli.table.clone(),
            cli.partition_key.clone(),
            attributes.clone(),
        ),
        region: region.clone(),
        table: cli.table.clone(),
        clock: HybridClock::default(),
        attributes,
        tombstone_retention: cli.tombstone_retention,
        api_key,
        maintenance: Maintenance {
            flag: AtomicBool::new(cli.maintenance),
            file: cli.maintenance_file.clone(),
        },
        health_timeout: cli.health_timeout,
    });
    let router = router(app);
    match cli.listen {
        Some(addr) => {
            let (shutdown, forced) = tworegion_common::shutdown::listen()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--listen {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, region, table = cli.table, partition_key = cli.partition_key, "Serving the todo API.");
            let server =
                axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
            tokio::select! {
                result = server => result.context("serving HTTP")?,
                _ = forced => {}
            }
            Ok(())
        }
        None => {
            let service = tower::ServiceBuilder::new()
                .map_request(sample_app::strip_stage)
                .service(router);
            lambda_http::run(service)
                .await
                .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format, &cli.log) {
        eprintln!("error: --log: {error}");
        return ExitCode::from(2);
    }
    match serve(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
