//! The replicator: reads a DynamoDB table's stream in one region and applies every change to a table in
//! another region, one-way (active-passive) or last-writer-wins both ways (active-active).
//!
//! # Layout
//! - `admin/`: operator commands: `replicator leases list | release | reset-checkpoint` on the lease
//!   table, `replicator dlq list | replay | purge` on the dead letters.
//! - `config`: flags and their validation into a [`config::Config`]; `config_file`: `run --config`,
//!   several paths in one process ([`run_paths`]).
//! - `startup`: checks of the source stream, the target's key schema and the lease table.
//! - `stream/`: the [`stream::StreamSource`] seam (DynamoDB Streams, in-memory), record decoding.
//! - `apply/`: write plans (skip rules, last change per key, conflict conditions), the target seam,
//!   the checkpoint watermark, retries.
//! - `lease/`: the lease table seam (DynamoDB, in-memory): ownership, counters, checkpoints, the path's
//!   fencing tokens.
//! - `dead_letter/`: records the target refuses for good, parked in a table of their own.
//! - `worker`: one shard's read-apply-checkpoint loop. `coordinator/`: the lease loop (`decide`: its
//!   decisions as pure functions of a snapshot).
//! - `metrics`: every metric, `/metrics`, `/healthz`, `/readyz`. `error`: AWS error classification.
//! - `sim/`: deterministic simulation of two regions with faults, driving the real engine (`bin/sim`).
//!
//! # Invariants
//! - A checkpoint names a sequence number only when every record up to it has been applied (or
//!   settled: skipped by rule, lost a last-writer-wins condition, or parked as a dead letter).
//! - Checkpoints are fenced by the lease counter: a worker that lost its lease cannot move them.
//! - A parent shard is finished before any child starts; a trimmed gap stops its shard loudly; a
//!   record the target refuses for good is parked (or stops the shard, by policy). Nothing is skipped
//!   silently.
//! - Every write is safe to replay: one-way writes are idempotent per key in stream order and fenced
//!   by the lease owner's token (a stale owner's late write never lands); lww writes are conditional
//!   on `(rep_version, rep_origin)`.
//! - A shard is in one task's hands: a lost lease's task must end before the shard is taken again.

pub mod admin;
pub mod apply;
pub mod config;
pub mod config_file;
pub mod coordinator;
pub mod dead_letter;
pub mod emf;
pub mod error;
pub mod item;
pub mod lease;
pub mod metrics;
pub mod sim;
pub mod startup;
pub mod stream;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::config::table_sdk_config;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tworegion_common::aws::{AssumeRole, AwsOptions};

use crate::apply::direct::{DirectConfig, DirectTarget, Writer, resolve_endpoint};
use crate::apply::plan::PlanContext;
use crate::apply::target::AwsTarget;
use crate::config::{Config, TableRef, WriteClient};
use crate::lease::dynamo::{DynamoLeases, LeaseTableError, ensure_table};
use crate::metrics::{Health, Metrics, Served};
use crate::stream::aws::AwsStream;
use crate::worker::Engine;

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A start-up check failed.
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    /// The lease table cannot be used.
    #[error(transparent)]
    LeaseTable(#[from] LeaseTableError),
    /// The metrics address cannot be bound.
    #[error("--metrics-addr {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Shutdown took longer than the deadline; unreleased leases will expire.
    #[error(
        "graceful shutdown did not finish within {0:?}; unreleased leases will expire and be taken over"
    )]
    ShutdownDeadline(std::time::Duration),
    /// The lease loop ended before shutdown (a bug).
    #[error("the lease loop ended unexpectedly: {0}")]
    LeaseLoop(String),
    /// The direct target writer could not be set up.
    #[error("cannot set up the target writer (--write-client direct): {0}")]
    WriteClient(String),
    /// A region name was invalid.
    #[error(transparent)]
    Region(#[from] tworegion_common::aws::InvalidRegion),
    /// One path of several failed.
    #[error("path {path}: {error}")]
    Path {
        /// `<source> > <target>`.
        path: String,
        /// What failed.
        error: Box<RunError>,
    },
}

/// Writes an EMF line ([`emf`]) to stdout every `settings.interval`, and one more when `stop` is
/// cancelled.
async fn emf_lines(
    settings: config::EmfConfig,
    path: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut dimensions = vec![("Path".to_owned(), path)];
    dimensions.extend(settings.dimensions);
    let mut lines = emf::Emf::new(emf::EmfSettings {
        namespace: settings.namespace,
        dimensions,
    });
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticks.tick() => false,
        };
        health.publish(&metrics);
        let mut line = lines.line(
            &metrics.render(),
            "replicator",
            tworegion_common::version::system_millis(),
        );
        line.push('\n');
        // One write per line, so lines never interleave with anything else on stdout.
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = std::io::Write::write_all(&mut stdout, line.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut stdout))
        {
            tracing::warn!(error = %error, "Writing an EMF line to stdout failed.");
        }
        if last {
            return;
        }
    }
}

/// Runs the replicator for one path until `shutdown` is cancelled, then stops gracefully within the
/// deadline (the flag form: metrics without a `path` label).
pub async fn run(
    config: Config,
    aws: AwsOptions,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_paths(vec![config], false, aws, shutdown).await
}

/// The SDK configurations of a process's tables, one per region and role: paths that reach a region
/// the same way share its credentials provider and their cache (one set of credentials, refreshed
/// once). Each client keeps its own HTTP connections.
#[derive(Default)]
struct SdkConfigs(Vec<((String, Option<AssumeRole>), aws_config::SdkConfig)>);

impl SdkConfigs {
    async fn get(
        &mut self,
        what: &str,
        table: &TableRef,
        role: Option<&AssumeRole>,
        aws: &AwsOptions,
    ) -> Result<aws_config::SdkConfig, RunError> {
        let key = (table.region.clone(), role.cloned());
        if let Some((_, sdk)) = self.0.iter().find(|(k, _)| *k == key) {
            return Ok(sdk.clone());
        }
        let sdk = table_sdk_config(what, table, role, aws).await?;
        self.0.push((key, sdk.clone()));
        Ok(sdk)
    }
}

/// One path, checked and ready to run.
struct PathRun {
    config: Config,
    /// `<source> > <target>`: the `path` label and the EMF `Path` dimension.
    name: String,
    stream_arn: String,
    engine: Arc<Engine<AwsStream, Writer, DynamoLeases>>,
}

/// Makes `config`'s clients (from the shared `sdks`), runs its start-up checks and builds its engine;
/// `name` is the path's `<source> > <target>`.
async fn prepare(
    config: Config,
    name: String,
    index: usize,
    sdks: &mut SdkConfigs,
    aws: &AwsOptions,
) -> Result<PathRun, RunError> {
    let roles = &config.roles;
    let source_sdk = sdks
        .get("source", &config.source, roles.source.as_ref(), aws)
        .await?;
    let target_sdk = sdks
        .get("target", &config.target, roles.target.as_ref(), aws)
        .await?;
    let lease_sdk = sdks
        .get("lease table", &config.lease, roles.lease.as_ref(), aws)
        .await?;
    // Every call the replicator makes has a deadline, so a hung connection is a retried failure (or a
    // start-up error naming the call), never a silent stall.
    let deadline = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(config.tuning.aws_timeout)
        .operation_timeout(config.tuning.aws_timeout * 3)
        .build();
    let with_deadline = |sdk: &aws_config::SdkConfig| {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .timeout_config(deadline.clone())
                .build(),
        )
    };
    let source_ddb = with_deadline(&source_sdk);
    let target_ddb = with_deadline(&target_sdk);
    // Stream reads are idempotent: the SDK's standard retries are fine.
    // Stalled-stream protection is off: every call already has a deadline (a stalled body fails it),
    // and the protection's per-request timer costs CPU on every record (docs/BENCHMARKS.md).
    let streams = aws_sdk_dynamodbstreams::Client::from_conf(
        aws_sdk_dynamodbstreams::config::Builder::from(&source_sdk)
            .timeout_config(deadline.clone())
            .stalled_stream_protection(
                aws_sdk_dynamodbstreams::config::StalledStreamProtectionConfig::disabled(),
            )
            .build(),
    );
    // Lease writes are conditional on the counter: an SDK retry of a write that DynamoDB applied but
    // whose answer was lost fails its own condition and looks like a lost lease. One attempt each; the
    // lease loop retries at its own pace (renewals every third of the lease duration, checkpoints on
    // the next turn), and a lease that was really renewed shows up as such in the next listing.
    let lease_timeout = config
        .tuning
        .aws_timeout
        .min(config.tuning.lease_duration / 4);
    let lease_ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&lease_sdk)
            .retry_config(
                aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
            )
            .timeout_config(
                // Within a quarter of the lease duration, so a hung call fails while the leases it
                // would renew are still valid.
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(lease_timeout)
                    .operation_timeout(lease_timeout)
                    .build(),
            )
            .build(),
    );

    let checked = startup::check(&config, &source_ddb, &streams, &target_ddb).await?;
    ensure_table(&lease_ddb, &config.lease.table).await?;
    // Writes get one attempt each with a timeout well inside the lease's safety margin (the engine
    // retries with backoff and checks the lease before every attempt), so a write cannot land long
    // after the lease stopped being valid.
    let attempt = config.tuning.lease_duration / 4;
    let write_config = aws_sdk_dynamodb::config::Builder::from(&target_sdk)
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1))
        .stalled_stream_protection(
            aws_sdk_dynamodb::config::StalledStreamProtectionConfig::disabled(),
        )
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt)
                .operation_timeout(attempt)
                .build(),
        )
        .build();
    let target = match config.write_client {
        WriteClient::Sdk => Writer::Sdk(AwsTarget::new(
            aws_sdk_dynamodb::Client::from_conf(write_config),
            config.target.table.clone(),
            config.attributes.clone(),
        )),
        WriteClient::Direct => {
            let endpoint = resolve_endpoint(&target_sdk)
                .await
                .map_err(RunError::WriteClient)?;
            let provider = target_sdk.credentials_provider().ok_or_else(|| {
                RunError::WriteClient(
                    "no credentials provider is configured for the target region".to_owned(),
                )
            })?;
            Writer::Direct(Box::new(
                DirectTarget::new(
                    DirectConfig {
                        region: config.target.region.clone(),
                        endpoint,
                        table: config.target.table.clone(),
                        attributes: config.attributes.clone(),
                        attempt_timeout: attempt,
                    },
                    provider,
                )
                .map_err(RunError::WriteClient)?,
            ))
        }
    };
    let path = format!("{}>{}", checked.stream_arn, config.target);
    let dead_letters: Option<Arc<dyn dead_letter::DeadLetterSink>> =
        config.dead_letters.as_ref().map(|table| {
            Arc::new(dead_letter::dynamo::DynamoDeadLetters::new(
                lease_ddb.clone(),
                table.table.clone(),
                path.clone(),
            )) as Arc<dyn dead_letter::DeadLetterSink>
        });
    let engine = Arc::new(Engine {
        source: Arc::new(AwsStream::new(streams, checked.stream_arn.clone())),
        target: Arc::new(target),
        leases: Arc::new(DynamoLeases::new(
            lease_ddb,
            config.lease.table.clone(),
            path,
        )),
        dead_letters,
        plan: PlanContext::new(
            config.mode,
            config.source.region.clone(),
            config.target.region.clone(),
            config.attributes.clone(),
        ),
        target_name: config.target.to_string(),
        worker_id: config.worker_id.clone(),
        start_position: config.start_position,
        tuning: config.tuning.clone(),
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::new(
            config.tuning.lease_interval(),
            config.tuning.stall_timeout,
        )),
        in_flight: Arc::new(Semaphore::new(config.tuning.max_in_flight)),
        buffered: Arc::new(Semaphore::new(config.tuning.max_buffered_records)),
        // Different workers (and a worker's paths) back off on different schedules.
        jitter_seed: AtomicU64::new(
            tworegion_common::version::system_millis()
                ^ u64::from(std::process::id())
                ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ),
    });
    Ok(PathRun {
        name,
        stream_arn: checked.stream_arn,
        config,
        engine,
    })
}

/// Runs every path of `configs` in this process until `shutdown` is cancelled, then stops them all
/// gracefully within the deadline. The paths share the SDK configurations (connections and
/// credentials per region and role), the metrics endpoint (each path's metrics labelled
/// `path="<source> > <target>"` when `labelled`; `/healthz` and `/readyz` fail while any path fails
/// them) and the process settings, which are taken from the first path (`--config` gives every path
/// the same: worker ID, metrics address, EMF settings, shutdown deadline). Each path keeps its own
/// engine: its own leases, checkpoints, dead letters, tuning and bounds. A path that fails its
/// start-up checks stops the process before any path starts; a path whose lease loop ends stops
/// them all.
pub async fn run_paths(
    configs: Vec<Config>,
    labelled: bool,
    aws: AwsOptions,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let Some(first) = configs.first() else {
        return Ok(());
    };
    // Several paths' metrics without labels would be one series reported several times.
    let labelled = labelled || configs.len() > 1;
    let (metrics_addr, emf_settings, shutdown_deadline) = (
        first.metrics_addr,
        first.emf.clone(),
        first.tuning.shutdown_deadline,
    );
    let name_errors = |name: String, error: RunError| {
        if labelled {
            RunError::Path {
                path: name,
                error: Box::new(error),
            }
        } else {
            error
        }
    };
    let prepare_all = async {
        let mut sdks = SdkConfigs::default();
        let mut paths = Vec::new();
        for (i, config) in configs.into_iter().enumerate() {
            let name = format!("{} > {}", config.source, config.target);
            paths.push(
                prepare(config, name.clone(), i, &mut sdks, &aws)
                    .await
                    .map_err(|e| name_errors(name, e))?,
            );
        }
        Ok::<_, RunError>(paths)
    };
    let paths = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Ok(()), // stopped during start-up: nothing to release
        paths = prepare_all => paths?,
    };

    let served: Vec<Served> = paths
        .iter()
        .map(|p| Served {
            label: labelled.then(|| p.name.clone()),
            metrics: p.engine.metrics.clone(),
            health: p.engine.health.clone(),
        })
        .collect();
    let http_stop = CancellationToken::new();
    let (bound, http) = metrics::serve(metrics_addr, served, http_stop.clone())
        .await
        .map_err(|source| RunError::Metrics {
            addr: metrics_addr,
            source,
        })?;
    let emf_stop = CancellationToken::new();
    let mut emf = tokio::task::JoinSet::new();
    if let Some(settings) = emf_settings {
        for p in &paths {
            emf.spawn(emf_lines(
                settings.clone(),
                p.name.clone(),
                p.engine.metrics.clone(),
                p.engine.health.clone(),
                emf_stop.clone(),
            ));
        }
    }
    // The lease loops stop on shutdown, or when one of them ended on its own (the others then stop
    // gracefully, releasing their leases, before the error is returned).
    let stop = shutdown.child_token();
    let mut loops = tokio::task::JoinSet::new();
    let mut task_paths = std::collections::HashMap::new();
    for (i, p) in paths.iter().enumerate() {
        let config = &p.config;
        tracing::info!(
            source = %config.source, target = %config.target, mode = ?config.mode, worker_id = %config.worker_id,
            lease_table = %config.lease, stream_arn = %p.stream_arn, metrics_addr = %bound,
            "Replicator started."
        );
        let task = loops.spawn({
            let (engine, stop) = (p.engine.clone(), stop.clone());
            async move {
                coordinator::run(engine, stop).await;
                i
            }
        });
        task_paths.insert(task.id(), i);
    }
    let ended_early = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        joined = loops.join_next() => joined,
    };
    for p in &paths {
        p.engine.health.stopping();
    }
    stop.cancel();
    let early = ended_early.map(|joined| {
        let (i, detail) = match joined {
            Ok(i) => (Some(i), "it returned".to_owned()),
            Err(error) => (task_paths.get(&error.id()).copied(), error.to_string()),
        };
        let error = RunError::LeaseLoop(detail);
        match i {
            Some(i) => name_errors(paths[i].name.clone(), error),
            None => error,
        }
    });
    match &early {
        None => {
            tracing::info!(deadline = ?shutdown_deadline, "Stopping: finishing in-flight writes, checkpointing, releasing leases.")
        }
        Some(error) if paths.len() > 1 => {
            tracing::error!(error = %error, deadline = ?shutdown_deadline, "A lease loop ended on its own: stopping the other paths, releasing their leases.")
        }
        Some(_) => {}
    }
    let finished = tokio::time::timeout(shutdown_deadline, async {
        while loops.join_next().await.is_some() {}
    })
    .await;
    http_stop.cancel();
    // The last line of each path carries what happened since the one before.
    emf_stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while emf.join_next().await.is_some() {}
    })
    .await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http).await;
    if let Some(error) = early {
        return Err(error);
    }
    match finished {
        Ok(()) => {
            tracing::info!("Replicator stopped.");
            Ok(())
        }
        Err(_) => Err(RunError::ShutdownDeadline(shutdown_deadline)),
    }
}
