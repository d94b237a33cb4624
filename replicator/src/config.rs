//! Command-line arguments and the validated configuration they become.

use std::net::SocketAddr;
use std::time::Duration;

use tworegion_common::aws::{
    AssumeRole, parse_external_id, parse_region, parse_role_arn, session_name,
};
use tworegion_common::version::VersionAttributes;

/// How changes are applied to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Active-passive: the target mirrors the source; puts and deletes are applied as they come.
    OneWay,
    /// Active-active: conditional writes by `(rep_version, rep_origin)`, loop prevention, tombstones.
    Lww,
}

impl Mode {
    /// The flag's spelling: `one-way` or `lww`.
    pub fn label(self) -> &'static str {
        match self {
            Mode::OneWay => "one-way",
            Mode::Lww => "lww",
        }
    }
}

/// Where a shard that has no checkpoint yet starts (root shards only; children of a finished parent
/// always start at the trim horizon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartPosition {
    /// The oldest record still in the stream (up to 24 hours back).
    TrimHorizon,
    /// Only changes made after the replicator starts.
    Latest,
}

/// What happens to a record that the target refuses for good (an item over 400 KB once stamped, a key
/// or index attribute of the wrong type, a version that is not a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRefusedRecord {
    /// Park it in the dead-letter table (`--dead-letter-table`) and go on with the shard.
    DeadLetter,
    /// Stop the shard before it until an operator acts: the checkpoint stays before it (writes of the
    /// same batch already in flight may land; they are applied again after the operator acts).
    Stop,
}

/// Where metrics go besides `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsFormat {
    /// `/metrics` only (Prometheus text).
    Prometheus,
    /// Also CloudWatch Embedded Metric Format lines on stdout.
    Emf,
}

/// EMF output (`--metrics-format emf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfConfig {
    /// The namespace.
    pub namespace: String,
    /// Dimensions besides `Path`.
    pub dimensions: Vec<(String, String)>,
    /// How often a line is written.
    pub interval: Duration,
}

/// How the target table's writes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteClient {
    /// Signed with the SDK's signer and sent over a pooled HTTP connection without the SDK's per-request
    /// machinery: about half the CPU per record (docs/BENCHMARKS.md).
    Direct,
    /// Through the AWS SDK's DynamoDB client, as every other call.
    Sdk,
}

/// The flags that name a path (source stream to target table) and its lease table; `replicator run`,
/// `leases` and `dlq` share them.
#[derive(Debug, Clone, clap::Args)]
pub struct PathArgs {
    /// Region of the table whose stream is read.
    #[arg(long, env = "REPLICATOR_SOURCE_REGION")]
    pub source_region: String,
    /// Table whose stream is read (it needs a NEW_AND_OLD_IMAGES stream; one-way mode accepts NEW_IMAGE).
    #[arg(long, env = "REPLICATOR_SOURCE_TABLE")]
    pub source_table: String,
    /// Region of the table that changes are written to.
    #[arg(long, env = "REPLICATOR_TARGET_REGION")]
    pub target_region: String,
    /// Table that changes are written to; it must have the source's key schema.
    #[arg(long, env = "REPLICATOR_TARGET_TABLE")]
    pub target_table: String,
    /// Table that holds the shard leases and checkpoints; created (on-demand billing) if missing.
    #[arg(
        long,
        env = "REPLICATOR_LEASE_TABLE",
        default_value = "tworegion-replicator-leases"
    )]
    pub lease_table: String,
    /// Region of the lease table [default: the target region].
    #[arg(long, env = "REPLICATOR_LEASE_REGION")]
    pub lease_region: Option<String>,
    /// A role to assume for the source table and its stream, when they are in another account
    /// (arn:aws:iam::<account>:role/<name>); the process's own credentials must be allowed to assume it.
    #[arg(long, env = "REPLICATOR_SOURCE_ROLE_ARN")]
    pub source_role_arn: Option<String>,
    /// The external ID the source role's trust policy asks for.
    #[arg(long, env = "REPLICATOR_SOURCE_EXTERNAL_ID")]
    pub source_external_id: Option<String>,
    /// A role to assume for the target table (another account).
    #[arg(long, env = "REPLICATOR_TARGET_ROLE_ARN")]
    pub target_role_arn: Option<String>,
    /// The external ID the target role's trust policy asks for.
    #[arg(long, env = "REPLICATOR_TARGET_EXTERNAL_ID")]
    pub target_external_id: Option<String>,
    /// A role to assume for the lease table and the dead-letter table (another account).
    #[arg(long, env = "REPLICATOR_LEASE_ROLE_ARN")]
    pub lease_role_arn: Option<String>,
    /// The external ID the lease role's trust policy asks for.
    #[arg(long, env = "REPLICATOR_LEASE_EXTERNAL_ID")]
    pub lease_external_id: Option<String>,
}

/// The roles the tables of a path are reached through; `None`: the process's own credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// The source table and its stream.
    pub source: Option<AssumeRole>,
    /// The target table.
    pub target: Option<AssumeRole>,
    /// The lease table and the dead-letter table.
    pub lease: Option<AssumeRole>,
}

impl Roles {
    /// The same roles with `name` as every session's name.
    pub fn with_session_name(mut self, name: &str) -> Roles {
        for role in [&mut self.source, &mut self.target, &mut self.lease]
            .into_iter()
            .flatten()
        {
            role.session_name = session_name(name);
        }
        self
    }
}

/// The SDK configuration for `table`, through `role` when one is given (logged, so the operator sees
/// which account each table is reached in).
pub async fn table_sdk_config(
    what: &str,
    table: &TableRef,
    role: Option<&AssumeRole>,
    aws: &tworegion_common::aws::AwsOptions,
) -> Result<aws_config::SdkConfig, tworegion_common::aws::InvalidRegion> {
    if let Some(role) = role {
        tracing::info!(table = %table, role = %role.arn, external_id = role.external_id.is_some(), session = %role.session_name, "The {what} is reached through an assumed role.");
    }
    Ok(tworegion_common::aws::sdk_config_as(parse_region(&table.region)?, aws, role).await)
}

fn role(
    arn_flag: &'static str,
    arn: Option<&String>,
    id_flag: &'static str,
    external_id: Option<&String>,
) -> Result<Option<AssumeRole>, ConfigError> {
    match (arn, external_id) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(bad(
            id_flag,
            format!("an external ID is used only with --{arn_flag}; give the role too, or drop it"),
        )),
        (Some(arn), id) => Ok(Some(AssumeRole {
            arn: parse_role_arn(arn).map_err(|e| bad(arn_flag, e.to_string()))?,
            external_id: id
                .map(|id| parse_external_id(id).map_err(|e| bad(id_flag, e)))
                .transpose()?,
            session_name: session_name("tworegion-replicator"),
        })),
    }
}

/// A validated [`PathArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSpec {
    /// The table whose stream is read.
    pub source: TableRef,
    /// The table written to.
    pub target: TableRef,
    /// The lease table.
    pub lease: TableRef,
    /// The roles the tables are reached through.
    pub roles: Roles,
}

/// The convention's attribute names (`replicator run` and `dlq replay`).
#[derive(Debug, Clone, clap::Args)]
pub struct AttributeArgs {
    /// Name of the version attribute (lww mode).
    #[arg(
        long,
        env = "REPLICATOR_VERSION_ATTRIBUTE",
        default_value = "rep_version"
    )]
    pub version_attribute: String,
    /// Name of the origin-region attribute (lww mode).
    #[arg(
        long,
        env = "REPLICATOR_ORIGIN_ATTRIBUTE",
        default_value = "rep_origin"
    )]
    pub origin_attribute: String,
    /// Name of the tombstone flag attribute (lww tombstones; one-way deletes leave one too).
    #[arg(
        long,
        env = "REPLICATOR_DELETED_ATTRIBUTE",
        default_value = "rep_deleted"
    )]
    pub deleted_attribute: String,
    /// Name of the tombstone TTL attribute (epoch seconds: the target table's TTL attribute).
    #[arg(
        long,
        env = "REPLICATOR_EXPIRES_ATTRIBUTE",
        default_value = "rep_expires"
    )]
    pub expires_attribute: String,
}

/// `replicator run` flags. Every flag can also be given as `REPLICATOR_<FLAG>`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The source table, the target table and the lease table.
    #[command(flatten)]
    pub path: PathArgs,
    /// one-way (active-passive) or lww (last-writer-wins both ways, active-active).
    #[arg(long, env = "REPLICATOR_MODE", value_enum)]
    pub mode: Mode,
    /// What to do with a record that the target refuses for good.
    #[arg(
        long,
        env = "REPLICATOR_ON_REFUSED_RECORD",
        value_enum,
        default_value = "dead-letter"
    )]
    pub on_refused_record: OnRefusedRecord,
    /// Table (in the lease table's region) where refused records are parked; created (on-demand
    /// billing) when the first one is.
    #[arg(
        long,
        env = "REPLICATOR_DEAD_LETTER_TABLE",
        default_value = "tworegion-replicator-dead-letters"
    )]
    pub dead_letter_table: String,
    /// This worker's name in the lease table [default: <hostname>-<pid>].
    #[arg(long, env = "REPLICATOR_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "REPLICATOR_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: String,
    /// Where shards without a checkpoint start.
    #[arg(
        long,
        env = "REPLICATOR_START_POSITION",
        value_enum,
        default_value = "trim-horizon"
    )]
    pub start_position: StartPosition,
    /// How target writes are sent: direct (the SDK's signer, credentials and endpoint, without its
    /// per-request machinery) or sdk (the SDK's client). Both send the same conditional requests.
    #[arg(
        long,
        env = "REPLICATOR_WRITE_CLIENT",
        value_enum,
        default_value = "direct"
    )]
    pub write_client: WriteClient,
    /// The convention's attribute names.
    #[command(flatten)]
    pub attributes: AttributeArgs,
    /// `prometheus`: metrics on /metrics only; `emf`: also CloudWatch Embedded Metric Format lines on
    /// stdout, one per --emf-interval, for ECS tasks that nothing scrapes.
    #[arg(
        long,
        env = "REPLICATOR_METRICS_FORMAT",
        value_enum,
        default_value = "prometheus"
    )]
    pub metrics_format: MetricsFormat,
    /// The CloudWatch namespace of the EMF metrics.
    #[arg(
        long,
        env = "REPLICATOR_EMF_NAMESPACE",
        default_value = "tworegion/replicator"
    )]
    pub emf_namespace: String,
    /// A dimension of every EMF metric besides Path, as NAME=VALUE (repeat the flag, or separate with
    /// commas in REPLICATOR_EMF_DIMENSIONS).
    #[arg(
        long = "emf-dimension",
        env = "REPLICATOR_EMF_DIMENSIONS",
        value_delimiter = ','
    )]
    pub emf_dimensions: Vec<String>,
    /// How often an EMF line is written (1s to 1h; CloudWatch's standard resolution is a minute).
    #[arg(long, env = "REPLICATOR_EMF_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub emf_interval: Duration,
    /// Records per GetRecords call (1 to 1000).
    #[arg(long, env = "REPLICATOR_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: i32,
    /// Writes in flight at once, over all shards (each in-flight write holds one connection).
    #[arg(long, env = "REPLICATOR_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
    /// Writes in flight at once for one shard (32 keeps one shard near its read limit of 5,000
    /// records/s at a few milliseconds per write).
    #[arg(long, env = "REPLICATOR_SHARD_CONCURRENCY", default_value_t = 32)]
    pub shard_concurrency: usize,
    /// Longest pause after reads that returned nothing (for example 500ms, 1s): the pause starts at the
    /// read pacing interval and doubles with each empty read in a row up to this.
    #[arg(long, env = "REPLICATOR_IDLE_POLL", default_value = "1s", value_parser = parse_duration)]
    pub idle_poll: Duration,
    /// GetRecords calls per second per shard at most (DynamoDB Streams allows 5 per shard, shared by
    /// every reader of the stream: lower it when something else reads the same stream, such as a Lambda
    /// trigger).
    #[arg(long, env = "REPLICATOR_READS_PER_SECOND", default_value_t = 5)]
    pub reads_per_second: u32,
    /// Records read but not yet applied, over all shards, at most (each read waits for room for a
    /// whole page): bounds memory however many shards the worker holds. A read asks for the shard's
    /// share of it among the shards that are reading records (at least 200 records, at most
    /// --batch-size), so pages get smaller as more shards are busy: raise it for faster catch-up when
    /// one worker holds many busy shards.
    #[arg(long, env = "REPLICATOR_MAX_BUFFERED_RECORDS", default_value_t = 4_000)]
    pub max_buffered_records: usize,
    /// How often at most a shard's checkpoint is written while records flow (for example 1s; 0s: after
    /// every page). A stop, a hand-off and a shard's end always write it; after a crash, at most this
    /// much is replayed (replays are harmless: every write is conditional).
    #[arg(long, env = "REPLICATOR_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// How often to list the stream's shards to find new ones.
    #[arg(long, env = "REPLICATOR_SHARD_SYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub shard_sync_interval: Duration,
    /// How long a lease lives without renewal; renewals happen every third of it.
    #[arg(long, env = "REPLICATOR_LEASE_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Longest pause between retries of a throttled or failed call.
    #[arg(long, env = "REPLICATOR_MAX_BACKOFF", default_value = "5s", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Time allowed for a graceful stop after SIGTERM (below ECS's 30 s stop timeout).
    #[arg(long, env = "REPLICATOR_SHUTDOWN_DEADLINE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_deadline: Duration,
    /// How long the tombstone that a one-way delete leaves in the target lives (its `--expires-attribute`
    /// value; the target table's TTL removes it then). It must outlast any replay of the stream (24 h
    /// retention) by a stale worker.
    #[arg(long, env = "REPLICATOR_TOMBSTONE_TTL", default_value = "2d", value_parser = parse_duration)]
    pub tombstone_ttl: Duration,
    /// Longest wait for one stream call (GetRecords, DescribeStream) or start-up call before it counts
    /// as failed and is retried. Lease-table calls get the smaller of this and a quarter of the lease
    /// duration (so a hung renewal fails while the lease is still valid); target writes a quarter of
    /// the lease duration.
    #[arg(long, env = "REPLICATOR_AWS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub aws_timeout: Duration,
    /// A shard that this worker holds and that makes no progress (no successful read that found it
    /// caught up, no checkpoint moving) for this long fails /healthz, so ECS replaces the task.
    #[arg(long, env = "REPLICATOR_STALL_TIMEOUT", default_value = "3m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
}

pub use tworegion_common::duration::parse_duration;

/// A table in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// The region.
    pub region: String,
    /// The table name.
    pub table: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.region, self.table)
    }
}

/// Tuning knobs, all with defaults.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Records per GetRecords call.
    pub batch_size: i32,
    /// Writes in flight over all shards.
    pub max_in_flight: usize,
    /// Writes in flight per shard.
    pub shard_concurrency: usize,
    /// Pause after an empty read.
    pub idle_poll: Duration,
    /// GetRecords calls per second per shard at most.
    pub reads_per_second: u32,
    /// Longest time between checkpoints of a shard while records flow.
    pub checkpoint_interval: Duration,
    /// Records read but not yet applied, over all shards, at most.
    pub max_buffered_records: usize,
    /// Interval between shard listings.
    pub shard_sync_interval: Duration,
    /// Lease lifetime without renewal.
    pub lease_duration: Duration,
    /// Cap on retry backoff.
    pub max_backoff: Duration,
    /// Graceful-stop deadline.
    pub shutdown_deadline: Duration,
    /// Timeout of one stream or lease-table call.
    pub aws_timeout: Duration,
    /// Lifetime of a one-way delete's tombstone in the target.
    pub tombstone_ttl: Duration,
    /// No progress on a held shard for this long fails /healthz.
    pub stall_timeout: Duration,
}

impl Tuning {
    /// How often held leases are renewed and the lease table is scanned.
    pub fn lease_interval(&self) -> Duration {
        self.lease_duration / 3
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            batch_size: 1000,
            max_in_flight: 128,
            shard_concurrency: 32,
            idle_poll: Duration::from_secs(1),
            reads_per_second: 5,
            checkpoint_interval: Duration::from_secs(1),
            max_buffered_records: 4_000,
            shard_sync_interval: Duration::from_secs(30),
            lease_duration: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(20),
            aws_timeout: Duration::from_secs(10),
            tombstone_ttl: Duration::from_secs(2 * 86_400),
            stall_timeout: Duration::from_secs(180),
        }
    }
}

/// The validated configuration of `replicator run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The table whose stream is read.
    pub source: TableRef,
    /// The table written to.
    pub target: TableRef,
    /// How changes are applied.
    pub mode: Mode,
    /// The lease table.
    pub lease: TableRef,
    /// The roles the tables are reached through (sessions named after the worker).
    pub roles: Roles,
    /// Where refused records are parked (`None`: `--on-refused-record stop`).
    pub dead_letters: Option<TableRef>,
    /// This worker's name.
    pub worker_id: String,
    /// Where /metrics, /healthz, /readyz listen.
    pub metrics_addr: SocketAddr,
    /// Where new root shards start.
    pub start_position: StartPosition,
    /// How target writes are sent.
    pub write_client: WriteClient,
    /// The lww convention's attribute names.
    pub attributes: VersionAttributes,
    /// EMF lines on stdout, when asked for.
    pub emf: Option<EmfConfig>,
    /// Tuning knobs.
    pub tuning: Tuning,
}

/// A flag whose value cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

pub(crate) fn bad(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        problem: problem.into(),
    }
}

/// `value` if it is within `min..=max`, else an error naming `flag` and the range.
pub(crate) fn within<T: PartialOrd + std::fmt::Display>(
    flag: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(bad(
            flag,
            format!("{value} is out of range; give {min} to {max}"),
        ));
    }
    Ok(value)
}

pub(crate) fn table_name(flag: &'static str, name: &str) -> Result<String, ConfigError> {
    let valid = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(bad(
            flag,
            format!(
                "{name:?} is not a DynamoDB table name (3 to 255 characters: a-z, A-Z, 0-9, '_', '-', '.')"
            ),
        ))
    }
}

fn region(flag: &'static str, name: &str) -> Result<String, ConfigError> {
    parse_region(name)
        .map(|r| r.as_ref().to_owned())
        .map_err(|e| bad(flag, e.to_string()))
}

fn attribute(flag: &'static str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || name.len() > 255 {
        return Err(bad(flag, "an attribute name must have 1 to 255 characters"));
    }
    Ok(name.to_owned())
}

impl PathArgs {
    /// Validates the flags into tables; errors name the flag.
    pub fn validate(&self) -> Result<PathSpec, ConfigError> {
        let source = TableRef {
            region: region("source-region", &self.source_region)?,
            table: table_name("source-table", &self.source_table)?,
        };
        let target = TableRef {
            region: region("target-region", &self.target_region)?,
            table: table_name("target-table", &self.target_table)?,
        };
        if source == target {
            return Err(bad(
                "target-table",
                format!(
                    "the target is the source ({source}); replicate to another region or table"
                ),
            ));
        }
        let lease = TableRef {
            region: match &self.lease_region {
                Some(r) => region("lease-region", r)?,
                None => target.region.clone(),
            },
            table: table_name("lease-table", &self.lease_table)?,
        };
        let roles = Roles {
            source: role(
                "source-role-arn",
                self.source_role_arn.as_ref(),
                "source-external-id",
                self.source_external_id.as_ref(),
            )?,
            target: role(
                "target-role-arn",
                self.target_role_arn.as_ref(),
                "target-external-id",
                self.target_external_id.as_ref(),
            )?,
            lease: role(
                "lease-role-arn",
                self.lease_role_arn.as_ref(),
                "lease-external-id",
                self.lease_external_id.as_ref(),
            )?,
        };
        Ok(PathSpec {
            source,
            target,
            lease,
            roles,
        })
    }
}

impl AttributeArgs {
    /// Validates the names: 1 to 255 characters each, all four different.
    pub fn validate(&self) -> Result<VersionAttributes, ConfigError> {
        let attributes = VersionAttributes {
            version: attribute("version-attribute", &self.version_attribute)?,
            origin: attribute("origin-attribute", &self.origin_attribute)?,
            deleted: attribute("deleted-attribute", &self.deleted_attribute)?,
            expires: attribute("expires-attribute", &self.expires_attribute)?,
        };
        let names = [
            &attributes.version,
            &attributes.origin,
            &attributes.deleted,
            &attributes.expires,
        ];
        for (i, a) in names.iter().enumerate() {
            if names[..i].contains(a) {
                return Err(bad(
                    "origin-attribute",
                    format!(
                        "the convention's four attribute names must differ; {a:?} is used twice"
                    ),
                ));
            }
        }
        Ok(attributes)
    }
}

fn emf_config(
    namespace: &str,
    dimensions: &[String],
    interval: Duration,
) -> Result<EmfConfig, ConfigError> {
    let namespace_ok = (1..=255).contains(&namespace.len())
        && !namespace.starts_with("AWS/")
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#: ".contains(&b));
    if !namespace_ok {
        return Err(bad(
            "emf-namespace",
            format!(
                "{namespace:?} is not a CloudWatch namespace (1 to 255 characters: letters, digits and \
                 . - _ / # : or space, not starting with AWS/)"
            ),
        ));
    }
    if dimensions.len() > 29 {
        return Err(bad(
            "emf-dimension",
            "at most 29 dimensions besides Path (CloudWatch allows 30)",
        ));
    }
    let mut pairs = Vec::new();
    for dimension in dimensions {
        let Some((name, value)) = dimension.split_once('=') else {
            return Err(bad(
                "emf-dimension",
                format!("{dimension:?} is not NAME=VALUE (for example Service=todo)"),
            ));
        };
        if !(1..=255).contains(&name.len())
            || name.starts_with(':')
            || name == "Path"
            || name == "_aws"
        {
            return Err(bad(
                "emf-dimension",
                format!(
                    "{name:?} cannot be a dimension name (1 to 255 characters, not starting with ':', \
                     not Path, which every metric has, nor _aws)"
                ),
            ));
        }
        if !(1..=1024).contains(&value.len()) {
            return Err(bad(
                "emf-dimension",
                format!("the value of {name} must have 1 to 1024 characters"),
            ));
        }
        if pairs.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(bad("emf-dimension", format!("{name} is given twice")));
        }
        pairs.push((name.to_owned(), value.to_owned()));
    }
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
        return Err(bad("emf-interval", "give 1s to 1h"));
    }
    Ok(EmfConfig {
        namespace: namespace.to_owned(),
        dimensions: pairs,
        interval,
    })
}

impl RunArgs {
    /// Validates the flags into a [`Config`]. `default_worker_id` is used when `--worker-id` is absent.
    pub fn into_config(self, default_worker_id: String) -> Result<Config, ConfigError> {
        let PathSpec {
            source,
            target,
            lease,
            roles,
        } = self.path.validate()?;
        let dead_letters = match self.on_refused_record {
            OnRefusedRecord::Stop => None,
            OnRefusedRecord::DeadLetter => Some(TableRef {
                region: lease.region.clone(),
                table: table_name("dead-letter-table", &self.dead_letter_table)?,
            }),
        };
        if dead_letters
            .as_ref()
            .is_some_and(|d| d.table == lease.table)
        {
            return Err(bad(
                "dead-letter-table",
                format!(
                    "{:?} is the lease table; give the dead letters a table of their own",
                    self.dead_letter_table
                ),
            ));
        }
        let worker_id = self.worker_id.unwrap_or(default_worker_id);
        if worker_id.is_empty() || worker_id.len() > 256 {
            return Err(bad("worker-id", "must have 1 to 256 characters"));
        }
        let metrics_addr = self.metrics_addr.parse().map_err(|_| {
            bad(
                "metrics-addr",
                format!(
                    "{:?} is not an address like 0.0.0.0:9464 or 127.0.0.1:0",
                    self.metrics_addr
                ),
            )
        })?;
        let attributes = self.attributes.validate()?;
        let emf = match self.metrics_format {
            MetricsFormat::Prometheus => None,
            MetricsFormat::Emf => Some(emf_config(
                &self.emf_namespace,
                &self.emf_dimensions,
                self.emf_interval,
            )?),
        };
        if !(1..=1000).contains(&self.batch_size) {
            return Err(bad(
                "batch-size",
                format!(
                    "{} is outside 1..=1000 (GetRecords' limit)",
                    self.batch_size
                ),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(bad("max-in-flight", "must be at least 1"));
        }
        if self.shard_concurrency == 0 {
            return Err(bad("shard-concurrency", "must be at least 1"));
        }
        let within = |flag: &'static str, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                Err(bad(
                    flag,
                    format!("{value:?} is outside {min:?} to {max:?}"),
                ))
            } else {
                Ok(())
            }
        };
        let secs = Duration::from_secs;
        within("lease-duration", self.lease_duration, secs(1), secs(600))?;
        within("idle-poll", self.idle_poll, Duration::ZERO, secs(60))?;
        if !(1..=5).contains(&self.reads_per_second) {
            return Err(bad(
                "reads-per-second",
                format!(
                    "{} is outside 1..=5: DynamoDB Streams allows 5 GetRecords calls per second per shard \
                     (more are throttled)",
                    self.reads_per_second
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_buffered_records) {
            return Err(bad(
                "max-buffered-records",
                format!("{} is outside 1..=1000000", self.max_buffered_records),
            ));
        }
        within(
            "checkpoint-interval",
            self.checkpoint_interval,
            Duration::ZERO,
            secs(60),
        )?;
        within(
            "shard-sync-interval",
            self.shard_sync_interval,
            secs(1),
            secs(3600),
        )?;
        within(
            "max-backoff",
            self.max_backoff,
            Duration::from_millis(10),
            secs(300),
        )?;
        if self.max_in_flight > 10_000 {
            return Err(bad("max-in-flight", "must be at most 10000"));
        }
        if self.shard_concurrency > 10_000 {
            return Err(bad("shard-concurrency", "must be at most 10000"));
        }
        within(
            "shutdown-deadline",
            self.shutdown_deadline,
            Duration::from_millis(100),
            secs(600),
        )?;
        within("aws-timeout", self.aws_timeout, secs(1), secs(120))?;
        within(
            "tombstone-ttl",
            self.tombstone_ttl,
            secs(25 * 3600),
            secs(365 * 86_400),
        )?;
        within(
            "stall-timeout",
            self.stall_timeout,
            secs(10),
            secs(24 * 3600),
        )?;
        if self.stall_timeout <= self.aws_timeout * 2 {
            return Err(bad(
                "stall-timeout",
                format!(
                    "{:?} must be more than twice --aws-timeout ({:?}), or one slow call would fail the health check",
                    self.stall_timeout, self.aws_timeout
                ),
            ));
        }
        Ok(Config {
            source,
            target,
            mode: self.mode,
            lease,
            roles: roles.with_session_name(&format!("tworegion-{worker_id}")),
            dead_letters,
            worker_id,
            metrics_addr,
            start_position: self.start_position,
            write_client: self.write_client,
            attributes,
            emf,
            tuning: Tuning {
                batch_size: self.batch_size,
                max_in_flight: self.max_in_flight,
                shard_concurrency: self.shard_concurrency,
                idle_poll: self.idle_poll,
                reads_per_second: self.reads_per_second,
                checkpoint_interval: self.checkpoint_interval,
                max_buffered_records: self.max_buffered_records,
                shard_sync_interval: self.shard_sync_interval,
                lease_duration: self.lease_duration,
                max_backoff: self.max_backoff,
                shutdown_deadline: self.shutdown_deadline,
                aws_timeout: self.aws_timeout,
                tombstone_ttl: self.tombstone_ttl,
                stall_timeout: self.stall_timeout,
            },
        })
    }
}

/// The path flags the unit tests of several modules parse (us-east-1/todos to us-west-2/todos).
#[cfg(test)]
pub(crate) const TEST_PATH_FLAGS: [&str; 8] = [
    "--source-region",
    "us-east-1",
    "--source-table",
    "todos",
    "--target-region",
    "us-west-2",
    "--target-table",
    "todos",
];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["replicator"];
        argv.extend_from_slice(&TEST_PATH_FLAGS);
        argv.extend_from_slice(&["--mode", "lww"]);
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .run
            .into_config("w1".into())
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(
            c.lease.region, "us-west-2",
            "the lease table lives in the target region"
        );
        assert_eq!(c.lease.table, "tworegion-replicator-leases");
        assert_eq!(c.worker_id, "w1");
        assert_eq!(c.tuning.lease_duration, Duration::from_secs(10));
        assert_eq!(c.tuning.shutdown_deadline, Duration::from_secs(20));
        assert_eq!(c.attributes, VersionAttributes::default());
        assert_eq!(c.start_position, StartPosition::TrimHorizon);
    }

    #[test]
    fn emf_settings_are_checked() {
        assert_eq!(args(&[]).unwrap().emf, None);
        let c = args(&[
            "--metrics-format",
            "emf",
            "--emf-dimension",
            "Service=todo",
            "--emf-dimension",
            "Stage=prod",
        ])
        .unwrap();
        let emf = c.emf.expect("emf");
        assert_eq!(emf.namespace, "tworegion/replicator");
        assert_eq!(emf.interval, Duration::from_secs(60));
        assert_eq!(
            emf.dimensions,
            vec![
                ("Service".to_owned(), "todo".to_owned()),
                ("Stage".to_owned(), "prod".to_owned())
            ]
        );
        for (extra, flag) in [
            (&["--emf-namespace", "AWS/DynamoDB"][..], "emf-namespace"),
            (&["--emf-dimension", "Service"][..], "emf-dimension"),
            (&["--emf-dimension", "Path=x"][..], "emf-dimension"),
            (&["--emf-dimension", "_aws=x"][..], "emf-dimension"),
            (
                &["--emf-dimension", "A=1", "--emf-dimension", "A=2"][..],
                "emf-dimension",
            ),
            (&["--emf-interval", "0s"][..], "emf-interval"),
        ] {
            let mut all = vec!["--metrics-format", "emf"];
            all.extend_from_slice(extra);
            assert_eq!(args(&all).unwrap_err().flag, flag, "{extra:?}");
        }
    }

    #[test]
    fn roles_are_checked_and_sessions_named_after_the_worker() {
        assert_eq!(args(&[]).unwrap().roles, Roles::default());
        let c = args(&[
            "--target-role-arn",
            "arn:aws:iam::222222222222:role/writer",
            "--target-external-id",
            "ext-1",
            "--lease-role-arn",
            "arn:aws:iam::333333333333:role/leases",
        ])
        .unwrap();
        assert_eq!(c.roles.source, None);
        let target = c.roles.target.expect("target role");
        assert_eq!(target.arn, "arn:aws:iam::222222222222:role/writer");
        assert_eq!(target.external_id.as_deref(), Some("ext-1"));
        assert_eq!(target.session_name, "tworegion-w1");
        let lease = c.roles.lease.expect("lease role");
        assert_eq!(
            (lease.external_id, lease.session_name.as_str()),
            (None, "tworegion-w1")
        );
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--source-role-arn", "writer"],
                "source-role-arn",
                "not an IAM role ARN",
            ),
            (
                &["--source-external-id", "ext-1"],
                "source-external-id",
                "--source-role-arn",
            ),
            (
                &[
                    "--lease-role-arn",
                    "arn:aws:iam::333333333333:role/x",
                    "--lease-external-id",
                    "a b",
                ],
                "lease-external-id",
                "letters, digits",
            ),
        ];
        for (extra, flag, text) in cases {
            let error = args(extra).expect_err(flag);
            assert_eq!(error.flag, *flag);
            assert!(error.problem.contains(text), "{error}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--batch-size", "0"], "batch-size"),
            (&["--batch-size", "1001"], "batch-size"),
            (&["--lease-region", "mars"], "lease-region"),
            (&["--metrics-addr", "nowhere"], "metrics-addr"),
            (&["--lease-table", "x"], "lease-table"),
            (&["--lease-duration", "100ms"], "lease-duration"),
            (&["--max-in-flight", "0"], "max-in-flight"),
            (&["--origin-attribute", "rep_version"], "origin-attribute"),
            (&["--lease-duration", "100000s"], "lease-duration"),
            (
                &["--shard-sync-interval", "9999999s"],
                "shard-sync-interval",
            ),
            (&["--max-backoff", "0s"], "max-backoff"),
            (&["--max-in-flight", "1000000000"], "max-in-flight"),
        ];
        for (extra, flag) in cases {
            let err = args(extra).unwrap_err();
            assert_eq!(err.flag, *flag, "{extra:?}: {err}");
            assert!(err.to_string().starts_with(&format!("--{flag}: ")));
        }
    }

    #[test]
    fn same_source_and_target_is_refused() {
        let err = Cli::try_parse_from([
            "r",
            "--source-region",
            "us-east-1",
            "--source-table",
            "todos",
            "--target-region",
            "us-east-1",
            "--target-table",
            "todos",
            "--mode",
            "one-way",
        ])
        .unwrap()
        .run
        .into_config("w".into())
        .unwrap_err();
        assert_eq!(err.flag, "target-table");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10w").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_duration("10h"), Ok(Duration::from_secs(36_000)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("s").is_err());
    }
}
