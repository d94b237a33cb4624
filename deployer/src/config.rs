//! The deployer's config file (TOML): what to build in both regions. Parsed with unknown fields
//! rejected, then validated into a [`Deployment`]; every error names the field and says how to fix it.

use std::collections::BTreeMap;

use serde::Deserialize;
use tworegion_common::aws::parse_region;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The application's name; part of every resource name and tag (`tworegion:app`).
    pub app: String,
    /// The stage (dev, prod, ...); part of every resource name and tag (`tworegion:stage`).
    pub stage: String,
    /// The region that serves traffic (PRIMARY in failover routing).
    pub primary_region: String,
    /// The other region (SECONDARY in failover routing).
    pub secondary_region: String,
    /// The public name and its hosted zone.
    pub dns: DnsFile,
    /// TLS certificates for the custom domain, one per region.
    pub certificates: CertificatesFile,
    /// The DynamoDB table.
    pub table: TableFile,
    /// The API key shared by both regions.
    pub api_key: ApiKeyFile,
    /// The usage plan of the API stage.
    #[serde(default)]
    pub usage_plan: UsagePlanFile,
    /// Route 53 health checks on each region's health path.
    #[serde(default)]
    pub health_check: HealthCheckFile,
    /// How Route 53 sends clients to the regions.
    #[serde(default)]
    pub routing: RoutingFile,
    /// The Lambda function.
    pub lambda: LambdaFile,
    /// The replicator's ECS services.
    pub replicator: ReplicatorFile,
    /// The local two-region environment (`deployer local up`); ignored by every other command.
    #[serde(default)]
    pub local: LocalFile,
}

/// `[local]`: addresses, ports and emulated network of `deployer local up` (docs/local.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    /// Each region's loopback address (`{ us-east-1 = "127.0.0.11" }`); default 127.0.0.11 for the
    /// primary and 127.0.0.12 for the secondary.
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
    /// The API port, the same in both regions (as on AWS, only DNS tells them apart); 0 or absent:
    /// a free one.
    #[serde(default)]
    pub port: u16,
    /// The DNS server's port on 127.0.0.1; 0 or absent: a free one.
    #[serde(default)]
    pub dns_port: u16,
    /// The control API's port on 127.0.0.1; 0 or absent: a free one.
    #[serde(default)]
    pub control_port: u16,
    /// Round trip added to every AWS call from one region to the other (a replicator reading the
    /// other region's stream), e.g. "65ms" (the default, us-east-1 to us-west-2).
    pub cross_region_delay: Option<String>,
    /// The TTL the DNS server gives alias answers (Route 53 uses the target's; default 60).
    pub alias_ttl: Option<u32>,
    /// Where latency routing places the client (default: the primary region).
    pub client_region: Option<String>,
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// The public name clients use, e.g. `api.todos.example.com`.
    pub domain_name: String,
    /// The Route 53 hosted zone: its name (`todos.example.com`) or ID (`Z0123456789ABC`).
    pub hosted_zone: String,
    /// Create the hosted zone (tagged; deleted by `down`) instead of expecting it to exist. Meant for
    /// the local AWS, which starts empty; a real public zone also needs delegation from its parent.
    #[serde(default)]
    pub create_hosted_zone: bool,
    /// `alias` (default): alias A records to each region's custom domain, whose TTL is the target's
    /// (60 s for AWS targets). `cname`: CNAME records to each region's regional domain name with
    /// `ttl`, so clients move sooner after a failover.
    #[serde(default)]
    pub record_style: RecordStyle,
    /// The CNAME records' TTL in seconds (record_style = "cname" only; default 10).
    pub ttl: Option<i64>,
}

/// `dns.record_style`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStyle {
    /// Alias A records (TTL: the target's, 60 s).
    #[default]
    Alias,
    /// CNAME records with `dns.ttl`.
    Cname,
}

/// The TTL Route 53 gives alias records to AWS targets (the Route 53 FAQ: 60 s for ELB and S3
/// website targets; not documented for API Gateway regional domain names).
pub const ALIAS_TTL_SECONDS: i64 = 60;

/// How long clients can keep being sent to a failed region, worst case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FailoverTime {
    /// Route 53 noticing: interval x failure threshold.
    pub detection_seconds: i64,
    /// Clients dropping the answer they hold: the records' TTL.
    pub ttl_seconds: i64,
    /// The sum (Route 53's propagation and clients caching beyond the TTL come on top).
    pub total_seconds: i64,
}

impl FailoverTime {
    /// In words, for `plan` and `status`.
    pub fn words(&self, style: RecordStyle) -> String {
        let style = match style {
            RecordStyle::Alias => "alias records take their target's",
            RecordStyle::Cname => "the CNAME records'",
        };
        format!(
            "Expected worst-case failover: about {} s: up to {} s for Route 53 to see a region fail \
             (health check interval x failure threshold), then up to {} s for clients to drop the \
             answer they hold ({style} TTL), plus Route 53's propagation (seconds) and clients that \
             cache longer than the TTL.",
            self.total_seconds, self.detection_seconds, self.ttl_seconds
        )
    }
}

impl ConfigFile {
    /// The worst case from a region failing to clients using the other one.
    pub fn failover_time(&self) -> FailoverTime {
        let detection =
            i64::from(self.health_check.interval) * i64::from(self.health_check.failure_threshold);
        let ttl = self.dns.answer_ttl();
        FailoverTime {
            detection_seconds: detection,
            ttl_seconds: ttl,
            total_seconds: detection + ttl,
        }
    }
}

/// The default `dns.ttl` of CNAME records.
pub const DEFAULT_CNAME_TTL: i64 = 10;

impl DnsFile {
    /// The TTL clients cache an answer for: the CNAME's, or the alias target's.
    pub fn answer_ttl(&self) -> i64 {
        match self.record_style {
            RecordStyle::Alias => ALIAS_TTL_SECONDS,
            RecordStyle::Cname => self.ttl.unwrap_or(DEFAULT_CNAME_TTL),
        }
    }
}

/// `[certificates]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertificatesFile {
    /// An existing ACM certificate ARN per region (`{ us-east-1 = "arn:...", us-west-2 = "arn:..." }`).
    /// Leave empty to request certificates from ACM with DNS validation records in the hosted zone.
    #[serde(default)]
    pub arns: BTreeMap<String, String>,
}

/// `[table]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    /// The table's name (the same in both regions).
    pub name: String,
    /// The partition key.
    pub partition_key: KeyFile,
    /// The sort key, if any.
    pub sort_key: Option<KeyFile>,
    /// `PAY_PER_REQUEST` (default) or `PROVISIONED`.
    #[serde(default = "default_billing")]
    pub billing_mode: String,
    /// Read capacity units (PROVISIONED only).
    pub read_capacity: Option<i64>,
    /// Write capacity units (PROVISIONED only).
    pub write_capacity: Option<i64>,
    /// DynamoDB deletion protection (default on: nothing deletes the table until it is turned
    /// off; `down --allow-data-loss` turns it off for the tables it deletes).
    #[serde(default = "yes")]
    pub deletion_protection: bool,
    /// Point-in-time recovery, the last 35 days restorable to any second (default on).
    #[serde(default = "yes")]
    pub point_in_time_recovery: bool,
}

fn yes() -> bool {
    true
}

fn default_billing() -> String {
    "PAY_PER_REQUEST".to_owned()
}

/// A key attribute.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Attribute name.
    pub name: String,
    /// `S`, `N` or `B`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `[api_key]`: exactly one of `from_env` and `generate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// Take the key's value from this environment variable (20 to 128 characters).
    pub from_env: Option<String>,
    /// Generate a value on the first `up` in the primary region and read it back from there afterwards.
    #[serde(default)]
    pub generate: bool,
}

/// `[usage_plan]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsagePlanFile {
    /// Steady requests per second per key.
    #[serde(default = "default_rate")]
    pub rate_limit: f64,
    /// Burst size.
    #[serde(default = "default_burst")]
    pub burst_limit: i32,
    /// Requests per quota period; 0 means no quota.
    #[serde(default)]
    pub quota_limit: i32,
    /// `DAY`, `WEEK` or `MONTH`.
    #[serde(default = "default_period")]
    pub quota_period: String,
}

fn default_rate() -> f64 {
    100.0
}
fn default_burst() -> i32 {
    200
}
fn default_period() -> String {
    "MONTH".to_owned()
}

impl UsagePlanFile {
    /// A warning when the quota runs out in under a month at the rate limit. With one API key shared
    /// by every client, a per-key quota is a global one: once spent, every keyed request gets 429
    /// while the health path (no key) stays 200, so nothing fails over and no health alarm fires.
    pub fn quota_warning(&self) -> Option<String> {
        if self.quota_limit <= 0 || self.rate_limit <= 0.0 {
            return None;
        }
        const MONTH: f64 = 30.0 * 86_400.0;
        let seconds = f64::from(self.quota_limit) / self.rate_limit;
        (seconds < MONTH).then(|| {
            format!(
                "usage_plan: at the rate limit ({} requests/s) the quota of {} per {} is spent in \
                 {}; the API key is shared by every client, so the quota is global: once spent, \
                 every keyed request gets 429 while the health check stays healthy (no failover, no \
                 health alarm). Set quota_limit = 0 (no quota) unless that is what you want.",
                self.rate_limit,
                self.quota_limit,
                self.quota_period,
                human_seconds(seconds)
            )
        })
    }
}

fn human_seconds(s: f64) -> String {
    if s < 3_600.0 {
        format!("{:.0} minutes", (s / 60.0).max(1.0))
    } else if s < 2.0 * 86_400.0 {
        format!("{:.1} hours", s / 3_600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

impl Default for UsagePlanFile {
    fn default() -> Self {
        UsagePlanFile {
            rate_limit: default_rate(),
            burst_limit: default_burst(),
            quota_limit: 0,
            quota_period: default_period(),
        }
    }
}

/// `[health_check]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// The path Route 53 requests (HTTPS, SNI) on each region's API.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Seconds between checks: 10 or 30 (fixed once created).
    #[serde(default = "default_interval")]
    pub interval: i32,
    /// Consecutive failures before a region counts as unhealthy: 1 to 10.
    #[serde(default = "default_threshold")]
    pub failure_threshold: i32,
    /// Checker regions (at least 3 of Route 53's), or empty for Route 53's default set.
    #[serde(default)]
    pub regions: Vec<String>,
    /// What the check probes: `domain`, the region's own name under the custom domain
    /// (`<region>.<domain>`, with SNI: the certificate, API Gateway's custom domain and its base
    /// path mapping are in the path, as for users), or `execute-api` (the API's own host). Default:
    /// `domain` when the deployer requests the certificates (it adds `*.<domain>`), `execute-api`
    /// when they are given (they may not cover `<region>.<domain>`).
    #[serde(default)]
    pub probe: Option<String>,
}

fn default_health_path() -> String {
    "/todos/health".to_owned()
}
fn default_interval() -> i32 {
    30
}
fn default_threshold() -> i32 {
    3
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            path: default_health_path(),
            interval: default_interval(),
            failure_threshold: default_threshold(),
            regions: Vec::new(),
            probe: None,
        }
    }
}

/// `[routing]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// `failover` (active-passive, default) or `latency` (active-active).
    #[serde(default)]
    pub mode: Option<String>,
}

/// `[lambda]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaFile {
    /// The artifact: a zip holding `bootstrap` (scripts/package-lambda builds it).
    pub artifact: String,
    /// Memory in MB (128 to 10240).
    #[serde(default = "default_memory")]
    pub memory_mb: i32,
    /// Timeout in seconds (1 to 29, below API Gateway's 29 s integration limit).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: i32,
}

fn default_memory() -> i32 {
    256
}
fn default_timeout() -> i32 {
    10
}

/// `[replicator]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatorFile {
    /// `one-way` (primary to secondary only) or `lww` (both ways).
    pub mode: String,
    /// The container image.
    pub image: String,
    /// Fargate CPU units (256, 512, 1024, 2048, 4096).
    #[serde(default = "default_cpu")]
    pub cpu: i32,
    /// Fargate memory in MB (valid for the CPU).
    #[serde(default = "default_task_memory")]
    pub memory: i32,
    /// Tasks per direction.
    #[serde(default = "default_count")]
    pub desired_count: i32,
    /// How long `up` waits for a created or changed service's tasks to run and pass their health
    /// check, in seconds.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u64,
    /// Subnets and security groups per region; the default VPC's when a region is not given.
    #[serde(default)]
    pub network: BTreeMap<String, NetworkFile>,
    /// The CloudWatch alarms on the replicator's metrics.
    #[serde(default)]
    pub alarms: AlarmsFile,
}

/// `[replicator.alarms]`: CloudWatch alarms on the metrics each replicator task writes (EMF), in the
/// region where it runs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlarmsFile {
    /// Whether `up` creates them (false: `up` removes those it made).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The lag alarm fires when the oldest record read but not applied is older than this for 3
    /// minutes in a row (or no task reports for 3 minutes), in seconds.
    #[serde(default = "default_lag_seconds")]
    pub lag_seconds: u32,
    /// SNS topics notified when an alarm fires and when it clears, per region (a topic must be in
    /// the alarm's region).
    #[serde(default)]
    pub actions: BTreeMap<String, Vec<String>>,
}

impl Default for AlarmsFile {
    fn default() -> Self {
        AlarmsFile {
            enabled: true,
            lag_seconds: default_lag_seconds(),
            actions: BTreeMap::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_lag_seconds() -> u32 {
    300
}

fn default_cpu() -> i32 {
    256
}
fn default_task_memory() -> i32 {
    512
}
fn default_count() -> i32 {
    1
}
fn default_start_timeout() -> u64 {
    600
}

/// `[replicator.network.<region>]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// Subnet IDs.
    pub subnets: Vec<String>,
    /// Security group IDs.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// A config problem: the field (dotted path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// Dotted path, e.g. `health_check.failure_threshold`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// How clients are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// PRIMARY / SECONDARY failover records with health checks.
    Failover,
    /// Latency records with health checks (active-active).
    Latency,
}

/// Where the API key's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// This value (read from the named environment variable).
    Value(String),
    /// Generated once, then read back from the primary region.
    Generate,
    /// From this environment variable, which is not set: fine for every command that creates no
    /// key (`status`, `failover`, `down`, `plan` without comparing the value); `up` refuses.
    Unread(String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The file, checked.
    pub file: ConfigFile,
    /// `[primary, secondary]`.
    pub regions: [String; 2],
    /// Routing mode.
    pub routing: Routing,
    /// The API key's source.
    pub api_key: ApiKeySource,
}

impl Deployment {
    /// Whether the health checks probe each region's name under the custom domain.
    pub fn probes_domain(&self) -> bool {
        match self.file.health_check.probe.as_deref() {
            Some(probe) => probe == "domain",
            None => self.file.certificates.arns.is_empty(),
        }
    }

    /// What `plan` warns about besides its changes: a quota that ends service, and replicator
    /// tasks in given subnets that must reach the other region.
    pub fn plan_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self.file.usage_plan.quota_warning().into_iter().collect();
        let lww = self.file.replicator.mode == "lww";
        for (index, region) in self.regions.iter().enumerate() {
            let runs_here = lww || index == 1;
            let Some(network) = self.file.replicator.network.get(region) else {
                continue;
            };
            if !runs_here || network.subnets.is_empty() {
                continue;
            }
            let other = &self.regions[1 - index];
            warnings.push(format!(
                "replicator.network.{region}: the replicator's tasks run in the given subnets \
                 without a public IP and read the DynamoDB stream in {other}; a VPC endpoint reaches \
                 only its own region's DynamoDB, so those subnets need a route to a NAT gateway (or \
                 the tasks cannot replicate, and pull their image only through ECR endpoints)"
            ));
        }
        warnings
    }

    /// `up` creates and checks the API keys: it needs the key's value when the config names a
    /// variable for it.
    pub fn key_needed_for_up(&self) -> Result<(), String> {
        match &self.api_key {
            ApiKeySource::Unread(var) => Err(format!(
                "api_key.from_env: the environment variable {var} is not set; up needs the key's \
                 value to create or check the API keys: export {var}=<20 to 128 characters>"
            )),
            _ => Ok(()),
        }
    }
}

/// Route 53's health checker regions (also its default set when a check names none).
pub const CHECKER_REGIONS: &[&str] = &[
    "us-east-1",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
];

fn name(field: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!(
                "{value:?} must start with a letter and have 1 to {max} letters, digits or '-'"
            ),
        ))
    }
}

impl ConfigFile {
    /// Parses TOML text; unknown fields and wrong types are errors naming the field.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let field = message
                .split('`')
                .nth(1)
                .filter(|_| message.starts_with("unknown field"))
                .unwrap_or("config")
                .to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            bad(&field, format!("{message}{at}"))
        })
    }

    /// Validates the file. `env` looks up environment variables (the API key's value), so that tests
    /// need not set any.
    pub fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Deployment, ConfigError> {
        name("app", &self.app, 20)?;
        name("stage", &self.stage, 12)?;
        for (field, region) in [
            ("primary_region", &self.primary_region),
            ("secondary_region", &self.secondary_region),
        ] {
            parse_region(region).map_err(|e| bad(field, e.to_string()))?;
        }
        if self.primary_region == self.secondary_region {
            return Err(bad("secondary_region", "must differ from primary_region"));
        }
        let regions = [self.primary_region.clone(), self.secondary_region.clone()];
        let domain = &self.dns.domain_name;
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains(' ')
        {
            return Err(bad(
                "dns.domain_name",
                format!("{domain:?} is not a domain name like api.example.com"),
            ));
        }
        match (self.dns.record_style, self.dns.ttl) {
            (RecordStyle::Alias, Some(_)) => {
                return Err(bad(
                    "dns.ttl",
                    "applies to record_style = \"cname\" only: alias records take their target's \
                     TTL (60 s); remove dns.ttl or set dns.record_style = \"cname\"",
                ));
            }
            (RecordStyle::Cname, Some(ttl)) if !(1..=86_400).contains(&ttl) => {
                return Err(bad(
                    "dns.ttl",
                    format!("{ttl} is not between 1 and 86400 seconds (10 is common for failover)"),
                ));
            }
            _ => {}
        }
        if self.dns.hosted_zone.trim().is_empty() {
            return Err(bad("dns.hosted_zone", "give the hosted zone's name or ID"));
        }
        if self.dns.create_hosted_zone && !self.dns.hosted_zone.contains('.') {
            return Err(bad(
                "dns.create_hosted_zone",
                "a zone to create needs a name (todos.example.com) in dns.hosted_zone, not an ID",
            ));
        }
        for (region, arn) in &self.certificates.arns {
            if !regions.contains(region) {
                return Err(bad(
                    &format!("certificates.arns.{region}"),
                    "not one of the two regions",
                ));
            }
            if !arn.starts_with("arn:aws")
                || !arn.contains(":acm:")
                || !arn.contains(region.as_str())
            {
                return Err(bad(
                    &format!("certificates.arns.{region}"),
                    format!("{arn:?} is not an ACM certificate ARN in {region}"),
                ));
            }
        }
        if !self.certificates.arns.is_empty() && self.certificates.arns.len() != 2 {
            return Err(bad(
                "certificates.arns",
                "give an ARN for both regions, or none to request them from ACM",
            ));
        }
        if !(3..=255).contains(&self.table.name.len()) {
            return Err(bad("table.name", "must have 3 to 255 characters"));
        }
        for (field, key) in [
            ("table.partition_key", Some(&self.table.partition_key)),
            ("table.sort_key", self.table.sort_key.as_ref()),
        ] {
            if let Some(key) = key {
                if key.name.is_empty() {
                    return Err(bad(&format!("{field}.name"), "must not be empty"));
                }
                if !matches!(key.kind.as_str(), "S" | "N" | "B") {
                    return Err(bad(
                        &format!("{field}.type"),
                        format!("{:?} is not S, N or B", key.kind),
                    ));
                }
            }
        }
        // The sample app addresses a todo by one string key, whatever its name.
        if self.table.partition_key.kind != "S" {
            return Err(bad(
                "table.partition_key.type",
                "the sample app's todo IDs are strings: use type = \"S\"",
            ));
        }
        if self.table.sort_key.is_some() {
            return Err(bad(
                "table.sort_key",
                "the sample app addresses each todo by its partition key alone: remove table.sort_key",
            ));
        }
        match self.table.billing_mode.as_str() {
            "PAY_PER_REQUEST" => {
                if self.table.read_capacity.is_some() || self.table.write_capacity.is_some() {
                    return Err(bad(
                        "table.read_capacity",
                        "capacities apply to PROVISIONED billing only",
                    ));
                }
            }
            "PROVISIONED" => {
                for (field, v) in [
                    ("table.read_capacity", self.table.read_capacity),
                    ("table.write_capacity", self.table.write_capacity),
                ] {
                    if v.is_none_or(|v| v < 1) {
                        return Err(bad(
                            field,
                            "PROVISIONED billing needs a capacity of at least 1",
                        ));
                    }
                }
            }
            other => {
                return Err(bad(
                    "table.billing_mode",
                    format!("{other:?} is not PAY_PER_REQUEST or PROVISIONED"),
                ));
            }
        }
        let api_key = match (&self.api_key.from_env, self.api_key.generate) {
            // Not set: checked by the commands that need it (`up`); a `status` or `failover`
            // during an outage must not need the key's secret.
            (Some(var), false) if env(var).is_none() => ApiKeySource::Unread(var.clone()),
            (Some(var), false) => {
                let value = env(var).unwrap_or_default();
                if !(20..=128).contains(&value.chars().count()) {
                    return Err(bad(
                        "api_key.from_env",
                        format!(
                            "the key in {var} has {} characters; API Gateway needs 20 to 128",
                            value.chars().count()
                        ),
                    ));
                }
                ApiKeySource::Value(value)
            }
            (None, true) => ApiKeySource::Generate,
            _ => {
                return Err(bad(
                    "api_key",
                    "set exactly one of from_env = \"VAR\" and generate = true",
                ));
            }
        };
        let plan = &self.usage_plan;
        if plan.rate_limit <= 0.0 || plan.burst_limit < 1 {
            return Err(bad(
                "usage_plan.rate_limit",
                "rate_limit and burst_limit must be positive",
            ));
        }
        if plan.quota_limit < 0 || !matches!(plan.quota_period.as_str(), "DAY" | "WEEK" | "MONTH") {
            return Err(bad(
                "usage_plan.quota_period",
                "quota_limit >= 0 and quota_period DAY, WEEK or MONTH",
            ));
        }
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            return Err(bad("health_check.path", "must start with /"));
        }
        if let Some(probe) = &hc.probe
            && !matches!(probe.as_str(), "domain" | "execute-api")
        {
            return Err(bad(
                "health_check.probe",
                format!(
                    "{probe:?} is not \"domain\" (the region's name under the custom domain) or \
                     \"execute-api\" (the API's own host)"
                ),
            ));
        }
        if !matches!(hc.interval, 10 | 30) {
            return Err(bad(
                "health_check.interval",
                format!("{} is not 10 or 30 (seconds)", hc.interval),
            ));
        }
        if !(1..=10).contains(&hc.failure_threshold) {
            return Err(bad(
                "health_check.failure_threshold",
                format!("{} is outside 1 to 10", hc.failure_threshold),
            ));
        }
        if !hc.regions.is_empty() {
            if hc.regions.len() < 3 {
                return Err(bad(
                    "health_check.regions",
                    "give at least 3 checker regions, or none for the default set",
                ));
            }
            if let Some(r) = hc
                .regions
                .iter()
                .find(|r| !CHECKER_REGIONS.contains(&r.as_str()))
            {
                return Err(bad(
                    "health_check.regions",
                    format!("{r:?} is not a Route 53 checker region ({CHECKER_REGIONS:?})"),
                ));
            }
        }
        let routing = match self.routing.mode.as_deref() {
            None | Some("failover") => Routing::Failover,
            Some("latency") => Routing::Latency,
            Some(other) => {
                return Err(bad(
                    "routing.mode",
                    format!("{other:?} is not failover or latency"),
                ));
            }
        };
        if !self.lambda.artifact.ends_with(".zip") {
            return Err(bad(
                "lambda.artifact",
                "must be a .zip holding bootstrap (scripts/package-lambda)",
            ));
        }
        if !(128..=10_240).contains(&self.lambda.memory_mb) {
            return Err(bad("lambda.memory_mb", "must be 128 to 10240"));
        }
        if !(1..=29).contains(&self.lambda.timeout_seconds) {
            return Err(bad(
                "lambda.timeout_seconds",
                "must be 1 to 29 (API Gateway gives up after 29 s)",
            ));
        }
        let r = &self.replicator;
        if !matches!(r.mode.as_str(), "one-way" | "lww") {
            return Err(bad(
                "replicator.mode",
                format!("{:?} is not one-way or lww", r.mode),
            ));
        }
        if r.image.trim().is_empty() {
            return Err(bad("replicator.image", "give the container image"));
        }
        let memory_ok = match r.cpu {
            256 => [512, 1024, 2048].contains(&r.memory),
            512 => (1024..=4096).contains(&r.memory) && r.memory % 1024 == 0,
            1024 => (2048..=8192).contains(&r.memory) && r.memory % 1024 == 0,
            2048 => (4096..=16_384).contains(&r.memory) && r.memory % 1024 == 0,
            4096 => (8192..=30_720).contains(&r.memory) && r.memory % 1024 == 0,
            _ => {
                return Err(bad(
                    "replicator.cpu",
                    format!("{} is not 256, 512, 1024, 2048 or 4096", r.cpu),
                ));
            }
        };
        if !memory_ok {
            return Err(bad(
                "replicator.memory",
                format!(
                    "{} MB is not a Fargate size for {} CPU units",
                    r.memory, r.cpu
                ),
            ));
        }
        if !(0..=10).contains(&r.desired_count) {
            return Err(bad("replicator.desired_count", "must be 0 to 10"));
        }
        if !(5..=3600).contains(&r.start_timeout_seconds) {
            return Err(bad(
                "replicator.start_timeout_seconds",
                "must be 5 to 3600 (seconds `up` waits for the tasks to run)",
            ));
        }
        if !(60..=86_400).contains(&r.alarms.lag_seconds) {
            return Err(bad(
                "replicator.alarms.lag_seconds",
                format!(
                    "{} is outside 60 to 86400 (seconds of lag before the alarm fires)",
                    r.alarms.lag_seconds
                ),
            ));
        }
        for (region, topics) in &r.alarms.actions {
            let field = format!("replicator.alarms.actions.{region}");
            if !regions.contains(region) {
                return Err(bad(&field, "not one of the two regions"));
            }
            if topics.len() > 5 {
                return Err(bad(
                    &field,
                    "at most 5 topics (CloudWatch allows 5 actions per alarm state)",
                ));
            }
            for (i, topic) in topics.iter().enumerate() {
                sns_topic_in(topic, region).map_err(|problem| bad(&field, problem))?;
                if topics[..i].contains(topic) {
                    return Err(bad(&field, format!("{topic:?} is given twice")));
                }
            }
        }
        for (region, net) in &r.network {
            if !regions.contains(region) {
                return Err(bad(
                    &format!("replicator.network.{region}"),
                    "not one of the two regions",
                ));
            }
            if net.subnets.is_empty() {
                return Err(bad(
                    &format!("replicator.network.{region}.subnets"),
                    "give at least one subnet",
                ));
            }
        }
        Ok(Deployment {
            file: self,
            regions,
            routing,
            api_key,
        })
    }
}

/// Checks that `arn` is an SNS topic ARN in `region` (an alarm's actions must be in its region).
fn sns_topic_in(arn: &str, region: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let valid = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sns"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && !parts[5].is_empty();
    if !valid {
        return Err(format!(
            "{arn:?} is not an SNS topic ARN (arn:aws:sns:<region>:<12-digit account>:<topic>)"
        ));
    }
    if parts[3] != region {
        return Err(format!(
            "{arn:?} is in {}, not {region}: an alarm can only notify a topic in its own region",
            parts[3]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn alarm_topics_must_be_sns_topics_in_their_region() {
        use super::sns_topic_in;
        assert_eq!(
            sns_topic_in("arn:aws:sns:us-east-1:123456789012:ops", "us-east-1"),
            Ok(())
        );
        let wrong_region =
            sns_topic_in("arn:aws:sns:us-west-2:123456789012:ops", "us-east-1").unwrap_err();
        assert!(
            wrong_region.contains("in us-west-2, not us-east-1"),
            "{wrong_region}"
        );
        for bad in [
            "arn:aws:sqs:us-east-1:123456789012:ops",
            "arn:aws:sns:us-east-1:1234:ops",
            "arn:aws:sns:us-east-1:123456789012:",
            "ops",
        ] {
            assert!(
                sns_topic_in(bad, "us-east-1")
                    .unwrap_err()
                    .contains("not an SNS topic ARN"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_quota_spent_in_under_a_month_is_warned_about() {
        let mut p = UsagePlanFile::default();
        assert_eq!(p.quota_warning(), None, "no quota by default");
        p.rate_limit = 100.0;
        p.quota_limit = 1_000_000;
        let w = p.quota_warning().expect("1,000,000 at 100/s is 2.8 hours");
        assert!(w.contains("2.8 hours") && w.contains("429"), "{w}");
        p.rate_limit = 0.1;
        p.quota_limit = 1_000_000;
        assert_eq!(p.quota_warning(), None, "115 days at 0.1/s");
    }

    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
app = "todos"
stage = "dev"
primary_region = "us-east-1"
secondary_region = "us-west-2"

[dns]
domain_name = "api.todos.example.com"
hosted_zone = "todos.example.com"

[certificates]

[table]
name = "todos"
partition_key = { name = "id", type = "S" }

[api_key]
from_env = "TODOS_API_KEY"

[health_check]
path = "/todos/health"
interval = 10
failure_threshold = 3
regions = ["us-east-1", "us-west-2", "eu-west-1"]

[lambda]
artifact = "target/lambda/sample-app.zip"

[replicator]
mode = "lww"
image = "public.ecr.aws/example/tworegion-replicator:0.1.0"
"#;

    fn env(var: &str) -> Option<String> {
        (var == "TODOS_API_KEY").then(|| "0123456789abcdefghij-key".to_owned())
    }

    fn with(change: &str, value: &str) -> Result<Deployment, ConfigError> {
        let text = EXAMPLE.replace(change, value);
        ConfigFile::parse(&text)?.validate(&env)
    }

    #[test]
    fn the_table_is_keyed_as_the_sample_app_reads_it() {
        let err = with(
            "partition_key = { name = \"id\", type = \"S\" }",
            "partition_key = { name = \"id\", type = \"N\" }",
        )
        .unwrap_err();
        assert_eq!(err.field, "table.partition_key.type", "{err}");
        let err = with(
            "partition_key = { name = \"id\", type = \"S\" }",
            "partition_key = { name = \"id\", type = \"S\" }\nsort_key = { name = \"sk\", type = \"S\" }",
        )
        .unwrap_err();
        assert_eq!(err.field, "table.sort_key", "{err}");
        let d = with(
            "partition_key = { name = \"id\", type = \"S\" }",
            "partition_key = { name = \"pk\", type = \"S\" }",
        )
        .unwrap();
        let function = crate::desired::desired(&d, "sha")
            .into_iter()
            .find(|r| r.kind == crate::desired::Kind::LambdaFunction)
            .unwrap();
        assert_eq!(
            function.props["environment"]["SAMPLE_APP_PARTITION_KEY"],
            "pk"
        );
    }

    #[test]
    fn plan_warns_that_given_subnets_need_a_nat_route() {
        let d = ConfigFile::parse(EXAMPLE).unwrap().validate(&env).unwrap();
        assert!(d.plan_warnings().is_empty(), "{:?}", d.plan_warnings());
        let text = format!(
            "{EXAMPLE}\n[replicator.network.us-west-2]\nsubnets = [\"subnet-1\"]\nsecurity_groups = [\"sg-1\"]\n"
        );
        let d = ConfigFile::parse(&text).unwrap().validate(&env).unwrap();
        let warnings = d.plan_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("replicator.network.us-west-2:")
                && warnings[0].contains("NAT")
                && warnings[0].contains("us-east-1"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_example_is_valid() {
        let d = ConfigFile::parse(EXAMPLE).unwrap().validate(&env).unwrap();
        assert_eq!(d.regions, ["us-east-1".to_owned(), "us-west-2".to_owned()]);
        assert_eq!(d.routing, Routing::Failover);
        assert_eq!(
            d.api_key,
            ApiKeySource::Value("0123456789abcdefghij-key".into())
        );
        assert_eq!(d.file.usage_plan.rate_limit, 100.0);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "stage = \"dev\"",
                "stage = \"dev\"\ncolour = \"blue\"",
                "colour",
            ),
            (
                "primary_region = \"us-east-1\"",
                "primary_region = \"mars-1\"",
                "primary_region",
            ),
            (
                "failure_threshold = 3",
                "failure_threshold = 11",
                "health_check.failure_threshold",
            ),
            ("interval = 10", "interval = 20", "health_check.interval"),
            (
                "from_env = \"TODOS_API_KEY\"",
                "from_env = \"SHORT_KEY\"",
                "api_key.from_env",
            ),
            ("mode = \"lww\"", "mode = \"both\"", "replicator.mode"),
            (
                "regions = [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]",
                "regions = [\"us-east-1\"]",
                "health_check.regions",
            ),
            (
                "artifact = \"target/lambda/sample-app.zip\"",
                "artifact = \"bootstrap\"",
                "lambda.artifact",
            ),
            (
                "partition_key = { name = \"id\", type = \"S\" }",
                "partition_key = { name = \"id\", type = \"X\" }",
                "table.partition_key.type",
            ),
            (
                "secondary_region = \"us-west-2\"",
                "secondary_region = \"us-east-1\"",
                "secondary_region",
            ),
        ];
        let env_short = |var: &str| match var {
            "SHORT_KEY" => Some("too-short".to_owned()),
            other => env(other),
        };
        for (from, to, field) in cases {
            let text = EXAMPLE.replace(from, to);
            let result = ConfigFile::parse(&text).and_then(|f| f.validate(&env_short));
            let err = result.err().unwrap_or_else(|| panic!("{to} must fail"));
            assert_eq!(err.field, field, "{to}: {err}");
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        }
        // Not set: loads (status and failover need no secret), and `up` refuses.
        let d = with("from_env = \"TODOS_API_KEY\"", "from_env = \"MISSING\"").unwrap();
        assert_eq!(d.api_key, ApiKeySource::Unread("MISSING".into()));
        let err = d.key_needed_for_up().unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
        let short = EXAMPLE.replace("from_env = \"TODOS_API_KEY\"", "from_env = \"SHORT_KEY\"");
        let err = ConfigFile::parse(&short)
            .and_then(|f| f.validate(&env_short))
            .unwrap_err();
        assert_eq!(err.field, "api_key.from_env", "{err}");
    }

    #[test]
    fn record_style_ttl_and_failover_time() {
        let zone = "hosted_zone = \"todos.example.com\"";
        let alias = with(zone, zone).unwrap();
        assert_eq!(alias.file.dns.record_style, RecordStyle::Alias);
        let t = alias.file.failover_time();
        assert_eq!(
            (t.detection_seconds, t.ttl_seconds, t.total_seconds),
            (30, 60, 90)
        );
        assert!(
            t.words(RecordStyle::Alias).contains("about 90 s"),
            "{}",
            t.words(RecordStyle::Alias)
        );
        let cname = with(zone, &format!("{zone}\nrecord_style = \"cname\"")).unwrap();
        assert_eq!(
            cname.file.failover_time().total_seconds,
            30 + DEFAULT_CNAME_TTL
        );
        let five = with(zone, &format!("{zone}\nrecord_style = \"cname\"\nttl = 5")).unwrap();
        assert_eq!(five.file.failover_time().total_seconds, 35);
        let err = with(zone, &format!("{zone}\nttl = 5")).unwrap_err();
        assert_eq!(err.field, "dns.ttl");
        assert!(err.problem.contains("record_style"), "{err}");
        let err = with(zone, &format!("{zone}\nrecord_style = \"cname\"\nttl = 0")).unwrap_err();
        assert_eq!(err.field, "dns.ttl");
        let err = with(zone, &format!("{zone}\nrecord_style = \"txt\"")).unwrap_err();
        assert!(
            err.problem.contains("alias") && err.problem.contains("cname"),
            "{err}"
        );
    }
}
