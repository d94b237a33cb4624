//! The resources a deployment needs, as plain data that `plan` can compare with what exists.
//!
//! A resource is identified by its kind, region (none for global ones) and name; its properties are
//! the settings the deployer manages, as JSON values. Values that only exist once something else does
//! (an API's ID) are written as references `"ref:<Kind>/<region>/<name>"`, resolved when applying.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::{ApiKeySource, Deployment, RecordStyle, Routing};

/// Resource kinds, in the order they are created (deleted in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// The Route 53 hosted zone, when the config asks the deployer to create it.
    HostedZone,
    /// DynamoDB table with its stream and TTL.
    Table,
    /// IAM role of the Lambda function (least privilege).
    LambdaRole,
    /// The Lambda function.
    LambdaFunction,
    /// The function's alias that API Gateway invokes (`live`), on a published version: a rollout
    /// moves it, a failed one moves it back.
    LambdaAlias,
    /// API Gateway's permission to invoke the function's alias: before the REST API, so that an
    /// existing API whose integration moves to the alias is never without it (a new API's
    /// permission waits a round for the API's ARN).
    LambdaPermission,
    /// The REST API (proxy and health routes, deployment, stage).
    RestApi,
    /// The API key (same value in both regions).
    ApiKey,
    /// The usage plan of the stage.
    UsagePlan,
    /// The key's membership in the usage plan.
    UsagePlanKey,
    /// The ACM certificate for the domain.
    Certificate,
    /// The regional custom domain.
    DomainName,
    /// The custom domain's empty base path mapping to the stage.
    BasePathMapping,
    /// The Route 53 health check on the region's health path.
    HealthCheck,
    /// The replicator's ECS cluster.
    EcsCluster,
    /// The replicator's log group.
    LogGroup,
    /// The replicator task's role (least privilege).
    TaskRole,
    /// The replicator's execution role (image pull, logs).
    ExecutionRole,
    /// The replicator's task definition.
    TaskDefinition,
    /// The replicator's ECS service.
    EcsService,
    /// A CloudWatch alarm on the replicator's metrics.
    Alarm,
    /// The Route 53 records of the public name (failover or latency).
    DnsRecord,
}

impl Kind {
    /// Every kind, in dependency order.
    pub const ALL: [Kind; 22] = [
        Kind::HostedZone,
        Kind::Table,
        Kind::LambdaRole,
        Kind::LambdaFunction,
        Kind::LambdaAlias,
        Kind::LambdaPermission,
        Kind::RestApi,
        Kind::ApiKey,
        Kind::UsagePlan,
        Kind::UsagePlanKey,
        Kind::Certificate,
        Kind::DomainName,
        Kind::BasePathMapping,
        Kind::HealthCheck,
        Kind::EcsCluster,
        Kind::LogGroup,
        Kind::TaskRole,
        Kind::ExecutionRole,
        Kind::TaskDefinition,
        Kind::EcsService,
        Kind::Alarm,
        Kind::DnsRecord,
    ];

    /// Properties that cannot change in place: a difference replaces the resource.
    pub fn immutable(self) -> &'static [&'static str] {
        match self {
            Kind::Table => &["partition_key", "sort_key"],
            Kind::HealthCheck => &["request_interval", "type"],
            Kind::Certificate => &["domain_name", "alternative_names"],
            // An API key's value cannot change: a new value is a new key.
            Kind::ApiKey => &["value"],
            _ => &[],
        }
    }
}

/// One resource.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Resource {
    /// Its kind.
    pub kind: Kind,
    /// Its region; `None` for global resources (Route 53 records).
    pub region: Option<String>,
    /// Its name.
    pub name: String,
    /// The managed properties.
    pub props: BTreeMap<String, Value>,
}

impl Resource {
    fn new(kind: Kind, region: Option<&str>, name: String, props: Value) -> Resource {
        Resource::from_props(kind, region.map(str::to_owned), name, props)
    }

    /// A resource from a JSON object of properties (anything else gives no properties), as
    /// observers build them.
    pub fn from_props(kind: Kind, region: Option<String>, name: String, props: Value) -> Resource {
        let props = match props {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Resource {
            kind,
            region,
            name,
            props,
        }
    }

    /// `Kind/region/name`, for messages and references.
    pub fn id(&self) -> String {
        format!(
            "{:?}/{}/{}",
            self.kind,
            self.region.as_deref().unwrap_or("global"),
            self.name
        )
    }
}

/// Values of references, known once the referenced resources exist (filled from observations).
pub type Resolved = BTreeMap<String, Value>;

/// Replaces the references in `resources` whose values are known; the others stay as they are (the
/// plan then shows them as changes until the referenced resource exists).
pub fn resolve(resources: &[Resource], resolved: &Resolved) -> Vec<Resource> {
    fn walk(value: &Value, resolved: &Resolved) -> Value {
        match value {
            Value::String(s) if s.starts_with("ref:") => {
                resolved.get(s).cloned().unwrap_or_else(|| value.clone())
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, resolved)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, resolved)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    resources
        .iter()
        .map(|r| Resource {
            props: r
                .props
                .iter()
                .map(|(k, v)| (k.clone(), walk(v, resolved)))
                .collect(),
            ..r.clone()
        })
        .collect()
}

/// The reference string for a resource (see [`resolve`]).
pub fn reference_key(kind: Kind, region: &str, name: &str) -> String {
    format!("ref:{kind:?}/{region}/{name}")
}

/// The reference string for one attribute of a resource, for a resource that others need different
/// values of (a REST API's host for health checks, its ARN for the invoke permission).
pub fn reference_attr_key(kind: Kind, region: &str, name: &str, attr: &str) -> String {
    format!("ref:{kind:?}/{region}/{name}#{attr}")
}

/// The ARN partition of `region`: `aws-cn` in China, `aws-us-gov` in GovCloud, the ISO partitions,
/// and `aws` everywhere else. Every ARN the deployer writes itself starts with `arn:<partition>:`.
pub fn partition(region: &str) -> &'static str {
    const PARTITIONS: [(&str, &str); 6] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
    ];
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

/// An ECR image's repository: `(account, region, repository)` from
/// `ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn]/REPOSITORY[:TAG|@DIGEST]`; `None` for any other
/// registry.
pub fn ecr_repository(image: &str) -> Option<(String, String, String)> {
    let (host, path) = image.split_once('/')?;
    let (account, rest) = host.split_once(".dkr.ecr.")?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    let repository = path.split(['@', ':']).next()?;
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !region.is_empty()
        && !repository.is_empty();
    valid.then(|| (account.to_owned(), region.to_owned(), repository.to_owned()))
}

/// The metrics the replicator's EMF lines carry that its alarms watch (replicator/src/emf.rs names
/// them from `/metrics`; its tests check these names).
pub const ALARM_METRICS: [&str; 4] = [
    "OldestUnappliedAgeSeconds",
    "DeadLetters",
    "ShardsStalled",
    "ShardsStopped",
];

/// The CloudWatch alarms on the replicator from `other` into `r` (named after its task family), on
/// the metrics its tasks write as EMF (namespace `tworegion/replicator`, dimensions `Path` and
/// `Deployment`, as the task definition sets them):
/// - `-lag`: the oldest record read but not applied is older than `lag_seconds` for 3 minutes in a
///   row, or no task reports for 3 minutes (a replicator that does not run is lagging; not when the
///   service is scaled to 0 tasks);
/// - `-dead-letters`: a record was parked as a dead letter within a minute;
/// - `-stalled`: a shard held made no progress for the stall timeout;
/// - `-stopped`: a shard is stopped until an operator acts (a gap, a refused record under the stop
///   policy).
fn replicator_alarms(
    f: &crate::config::ConfigFile,
    prefix: &str,
    other: &str,
    r: &str,
    family: &str,
    tags: &Value,
) -> Vec<Resource> {
    let path = format!("{other}/{} > {r}/{}", f.table.name, f.table.name);
    // Sorted, as CloudWatch lists them (the config refuses a topic given twice).
    let mut actions = f
        .replicator
        .alarms
        .actions
        .get(r)
        .cloned()
        .unwrap_or_default();
    actions.sort();
    // A replicator scaled to no tasks reports nothing, by choice: then no data is not lag.
    let no_lag_data = if f.replicator.desired_count == 0 {
        "notBreaching"
    } else {
        "breaching"
    };
    let lag = f64::from(f.replicator.alarms.lag_seconds);
    [
        ("lag", ALARM_METRICS[0], "Maximum", lag, 3, no_lag_data,
         format!("The replicator {other} to {r} is more than {lag} s behind, or no task reports (3 minutes)")),
        ("dead-letters", ALARM_METRICS[1], "Sum", 0.0, 1, "notBreaching",
         format!("The replicator {other} to {r} parked records it could not apply: `replicator dlq list`")),
        ("stalled", ALARM_METRICS[2], "Maximum", 0.0, 1, "notBreaching",
         format!("A shard of the replicator {other} to {r} makes no progress (see the task's ERROR log)")),
        ("stopped", ALARM_METRICS[3], "Maximum", 0.0, 1, "notBreaching",
         format!("A shard of the replicator {other} to {r} is stopped until an operator acts (see the ERROR log)")),
    ]
    .into_iter()
    .map(|(suffix, metric, statistic, threshold, periods, missing, description)| {
        Resource::new(
            Kind::Alarm,
            Some(r),
            format!("{family}-{suffix}"),
            json!({
                "namespace": "tworegion/replicator",
                "metric": metric,
                "dimensions": { "Path": path, "Deployment": prefix },
                "statistic": statistic,
                "period": 60,
                "evaluation_periods": periods,
                "datapoints_to_alarm": periods,
                "threshold": threshold,
                "comparison": "GreaterThanThreshold",
                "treat_missing_data": missing,
                "actions": actions,
                "description": description,
                "tags": tags,
            }),
        )
    })
    .collect()
}

/// The replicator's execution role: pull its image (ECR read actions on that repository alone,
/// none for another registry) and write its log group.
fn execution_statements(image: &str, region: &str, log_group: &str) -> Value {
    let arn = partition(region);
    let mut statements = Vec::new();
    if let Some((account, repo_region, repository)) = ecr_repository(image) {
        statements.push(
            json!({ "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*" }),
        );
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
            "Resource": format!("arn:{}:ecr:{repo_region}:{account}:repository/{repository}", partition(&repo_region)),
        }));
    }
    statements.push(
        json!({ "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": format!("arn:{arn}:logs:{region}:*:log-group:{log_group}:*") }),
    );
    Value::Array(statements)
}

fn reference(kind: Kind, region: &str, name: &str) -> Value {
    Value::String(format!("ref:{kind:?}/{region}/{name}"))
}

/// Everything the deployment needs. `artifact_sha256` is the Lambda zip's hash (the caller reads the
/// file), so that a new build is an update.
pub fn desired(d: &Deployment, artifact_sha256: &str) -> Vec<Resource> {
    let f = &d.file;
    let prefix = crate::names::prefix(&f.app, &f.stage);
    let tags = json!({ "tworegion:app": f.app, "tworegion:stage": f.stage });
    let stage = "live";
    let mut out = Vec::new();
    if f.dns.create_hosted_zone {
        out.push(Resource::new(
            Kind::HostedZone,
            None,
            f.dns.hosted_zone.trim_end_matches('.').to_owned(),
            json!({ "tags": tags }),
        ));
    }
    let api_key_value = match &d.api_key {
        ApiKeySource::Value(v) => json!({ "source": "config", "value_length": v.chars().count() }),
        ApiKeySource::Generate => json!({ "source": "generated in the primary region" }),
        // Observed keys repeat this when their value is not compared.
        ApiKeySource::Unread(var) => {
            json!({ "source": "config", "not_read": format!("{var} is not set") })
        }
    };
    for (index, region) in d.regions.iter().enumerate() {
        let r = region.as_str();
        let arn = partition(r);
        let table_arn = format!("arn:{arn}:dynamodb:{r}:*:table/{}", f.table.name);
        out.push(Resource::new(
            Kind::Table,
            Some(r),
            f.table.name.clone(),
            json!({
                "partition_key": { "name": f.table.partition_key.name, "type": f.table.partition_key.kind },
                "sort_key": f.table.sort_key.as_ref().map(|k| json!({ "name": k.name, "type": k.kind })),
                "billing_mode": f.table.billing_mode,
                "read_capacity": f.table.read_capacity,
                "write_capacity": f.table.write_capacity,
                "stream": "NEW_AND_OLD_IMAGES",
                "ttl_attribute": "rep_expires",
                "deletion_protection": f.table.deletion_protection,
                "point_in_time_recovery": f.table.point_in_time_recovery,
                "tags": tags,
            }),
        ));
        let function = format!("{prefix}-api");
        let role = format!("{prefix}-api-{r}");
        out.push(Resource::new(
            Kind::LambdaRole,
            Some(r),
            role.clone(),
            json!({
                "assume": "lambda.amazonaws.com",
                "policy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        // What sample-app's DynamoStore calls: GetItem (also its ping), a
                        // conditional PutItem, Scan.
                        { "Effect": "Allow",
                          "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Scan"],
                          "Resource": table_arn },
                        // Lambda creates its own log group on the first invocation. CloudWatch Logs
                        // authorizes CreateLogGroup too against the `log-group:<name>:*` form.
                        { "Effect": "Allow",
                          "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                          "Resource": format!("arn:{arn}:logs:{r}:*:log-group:/aws/lambda/{function}:*") }
                    ]
                },
                "tags": tags,
            }),
        ));
        let code = json!({
            "runtime": "provided.al2023",
            "architecture": "x86_64",
            "handler": "bootstrap",
            "memory_mb": f.lambda.memory_mb,
            "timeout_seconds": f.lambda.timeout_seconds,
            "code_sha256": artifact_sha256,
            "role": reference(Kind::LambdaRole, r, &role),
            "environment": {
                "SAMPLE_APP_TABLE": f.table.name,
                "SAMPLE_APP_PARTITION_KEY": f.table.partition_key.name,
            },
        });
        let mut function_props = code.clone();
        function_props["tags"] = tags.clone();
        out.push(Resource::new(
            Kind::LambdaFunction,
            Some(r),
            function.clone(),
            function_props,
        ));
        // The alias wants a published version with exactly the function's code and settings.
        let mut alias_props = code;
        alias_props["function"] = json!(function);
        out.push(Resource::new(
            Kind::LambdaAlias,
            Some(r),
            crate::names::LIVE_ALIAS.to_owned(),
            alias_props,
        ));
        // The function's log group, managed so that it has a retention and tags and goes with
        // `down` (Lambda would create it on the first invocation, kept forever, untagged).
        out.push(Resource::new(
            Kind::LogGroup,
            Some(r),
            format!("/aws/lambda/{function}"),
            json!({ "retention_days": 30, "tags": tags }),
        ));
        out.push(Resource::new(
            Kind::RestApi,
            Some(r),
            prefix.clone(),
            json!({
                "endpoint": "REGIONAL",
                // Sorted by (path, method), the order in which the REST API is observed.
                "routes": [
                    { "path": "/todos/health", "method": "GET", "api_key_required": false },
                    { "path": "/{proxy+}", "method": "ANY", "api_key_required": true }
                ],
                "integration": reference(Kind::LambdaAlias, r, crate::names::LIVE_ALIAS),
                "stage": stage,
                "tags": tags,
            }),
        ));
        out.push(Resource::new(
            Kind::LambdaPermission,
            Some(r),
            format!("{function}-apigateway"),
            json!({ "function": function, "qualifier": crate::names::LIVE_ALIAS,
                    "principal": "apigateway.amazonaws.com",
                    "source": reference_attr_key(Kind::RestApi, r, &prefix, "source_arn") }),
        ));
        out.push(Resource::new(
            Kind::ApiKey,
            Some(r),
            crate::names::api_key(&prefix),
            json!({ "value": api_key_value, "enabled": true, "tags": tags }),
        ));
        let usage = &f.usage_plan;
        out.push(Resource::new(
            Kind::UsagePlan,
            Some(r),
            format!("{prefix}-plan"),
            json!({
                "stage": stage,
                "api": reference(Kind::RestApi, r, &prefix),
                "rate_limit": usage.rate_limit,
                "burst_limit": usage.burst_limit,
                "quota": if usage.quota_limit > 0 { json!({ "limit": usage.quota_limit, "period": usage.quota_period }) } else { Value::Null },
                "tags": tags,
            }),
        ));
        out.push(Resource::new(
            Kind::UsagePlanKey,
            Some(r),
            format!("{prefix}-plan-key"),
            json!({ "plan": reference(Kind::UsagePlan, r, &format!("{prefix}-plan")),
                    "key": reference(Kind::ApiKey, r, &crate::names::api_key(&prefix)) }),
        ));
        let probe = crate::names::probe_domain(r, &f.dns.domain_name);
        // The health check's name must be covered too: a requested certificate gets the wildcard
        // (one level: `<region>.<domain>`; ACM validates it with the domain's own record), a
        // given one is checked for it.
        let certificate = match (f.certificates.arns.get(region), d.probes_domain()) {
            (Some(arn), true) => {
                json!({ "domain_name": f.dns.domain_name, "given_arn": arn, "covers": [probe] })
            }
            (Some(arn), false) => {
                json!({ "domain_name": f.dns.domain_name, "given_arn": arn, "covers": [] })
            }
            (None, probes) => {
                let alternative: Vec<String> = if probes {
                    vec![format!(
                        "*.{}",
                        f.dns.domain_name.trim_end_matches('.').to_ascii_lowercase()
                    )]
                } else {
                    Vec::new()
                };
                json!({ "domain_name": f.dns.domain_name, "alternative_names": alternative, "validation": "DNS", "hosted_zone": f.dns.hosted_zone, "tags": tags })
            }
        };
        out.push(Resource::new(
            Kind::Certificate,
            Some(r),
            f.dns.domain_name.clone(),
            certificate,
        ));
        out.push(Resource::new(
            Kind::DomainName,
            Some(r),
            f.dns.domain_name.clone(),
            json!({ "endpoint": "REGIONAL", "security_policy": "TLS_1_2",
                    "certificate": reference(Kind::Certificate, r, &f.dns.domain_name), "tags": tags }),
        ));
        out.push(Resource::new(
            Kind::BasePathMapping,
            Some(r),
            format!("{}/(none)", f.dns.domain_name),
            json!({ "base_path": "", "api": reference(Kind::RestApi, r, &prefix), "stage": stage }),
        ));
        if d.probes_domain() {
            // What the health check calls: the same certificate, a custom domain and mapping of
            // the same API and stage, found through DNS like the public name.
            out.push(Resource::new(
                Kind::DomainName,
                Some(r),
                probe.clone(),
                json!({ "endpoint": "REGIONAL", "security_policy": "TLS_1_2",
                        "certificate": reference(Kind::Certificate, r, &f.dns.domain_name), "tags": tags }),
            ));
            out.push(Resource::new(
                Kind::BasePathMapping,
                Some(r),
                format!("{probe}/(none)"),
                json!({ "base_path": "", "api": reference(Kind::RestApi, r, &prefix), "stage": stage }),
            ));
        }
        let hc = &f.health_check;
        let (probe_target, probe_path) = if d.probes_domain() {
            (json!(probe), hc.path.clone())
        } else {
            (
                json!(reference_attr_key(Kind::RestApi, r, &prefix, "host")),
                format!("/{stage}{}", hc.path),
            )
        };
        let endpoint_check = crate::names::endpoint_check(&prefix, r);
        let switch_check = crate::names::switch_check(&prefix, r);
        out.push(Resource::new(
            Kind::HealthCheck,
            Some(r),
            endpoint_check.clone(),
            json!({
                "type": "HTTPS",
                "target": probe_target,
                "resource_path": probe_path,
                "port": 443,
                "enable_sni": true,
                "request_interval": hc.interval,
                "failure_threshold": hc.failure_threshold,
                "regions": hc.regions,
                "tags": { "Name": endpoint_check, "tworegion:app": f.app, "tworegion:stage": f.stage },
            }),
        ));
        // The region's switch: healthy exactly when the endpoint check is and the switch is on
        // (HealthThreshold 1 of the one child; `failover` sets 2, which Route 53 always reads as
        // unhealthy). The threshold is operational state: `up` creates the switch on and never
        // changes it afterwards.
        out.push(Resource::new(
            Kind::HealthCheck,
            Some(r),
            switch_check.clone(),
            json!({
                "type": "CALCULATED",
                "children": [reference(Kind::HealthCheck, r, &endpoint_check)],
                "tags": { "Name": switch_check, "tworegion:app": f.app, "tworegion:stage": f.stage },
            }),
        ));
        // The replicator into this region reads the other region's stream (A to B runs in B).
        let other = &d.regions[1 - index];
        let runs_here = f.replicator.mode == "lww" || index == 1;
        if runs_here {
            let cluster = format!("{prefix}-replicator");
            let log_group = format!("/tworegion/{prefix}/replicator");
            let task_role = format!("{prefix}-replicator-{r}");
            let exec_role = format!("{prefix}-replicator-exec-{r}");
            let lease_table = crate::names::lease_table(&prefix);
            let dead_letter_table = crate::names::dead_letter_table(&prefix);
            let network = f.replicator.network.get(region);
            // The replicator's own tables (rows keyed `path` + shard or record ID, as
            // replicator/src/lease/dynamo.rs and dead_letter/dynamo.rs expect): the deployer
            // creates, tags and removes them, so `down` leaves nothing behind.
            // Leases and checkpoints are operational state: unprotected, no backups, and deleted
            // by `down` without --allow-data-loss. Dead letters are data: protected like the app's.
            for (table, range, data) in [
                (&lease_table, "shard", false),
                (&dead_letter_table, "id", true),
            ] {
                out.push(Resource::new(
                    Kind::Table,
                    Some(r),
                    table.clone(),
                    json!({
                        "partition_key": { "name": "path", "type": "S" },
                        "sort_key": { "name": range, "type": "S" },
                        "billing_mode": "PAY_PER_REQUEST",
                        "read_capacity": null,
                        "write_capacity": null,
                        "stream": null,
                        "ttl_attribute": null,
                        "deletion_protection": data && f.table.deletion_protection,
                        "point_in_time_recovery": data && f.table.point_in_time_recovery,
                        "tags": tags,
                    }),
                ));
            }
            out.push(Resource::new(
                Kind::EcsCluster,
                Some(r),
                cluster.clone(),
                json!({ "tags": tags }),
            ));
            out.push(Resource::new(
                Kind::LogGroup,
                Some(r),
                log_group.clone(),
                json!({ "retention_days": 30, "tags": tags }),
            ));
            out.push(Resource::new(
                Kind::TaskRole,
                Some(r),
                task_role.clone(),
                json!({
                    "assume": "ecs-tasks.amazonaws.com",
                    "policy": {
                        "Version": "2012-10-17",
                        "Statement": [
                            // What the replicator calls: the source stream (startup and
                            // stream/aws.rs), both tables' descriptions (startup), conditional
                            // writes to the target (apply/target.rs) and its TTL setting
                            // (startup), the lease table (lease/dynamo.rs) and the dead-letter
                            // table (dead_letter/dynamo.rs), both created by the deployer (the
                            // replicator only checks their key schema).
                            { "Effect": "Allow",
                              "Action": ["dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"],
                              "Resource": format!("arn:{}:dynamodb:{other}:*:table/{}/stream/*", partition(other), f.table.name) },
                            { "Effect": "Allow", "Action": ["dynamodb:DescribeTable"],
                              "Resource": [format!("arn:{}:dynamodb:{other}:*:table/{}", partition(other), f.table.name), table_arn] },
                            { "Effect": "Allow", "Action": ["dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:DescribeTimeToLive"], "Resource": table_arn },
                            { "Effect": "Allow",
                              "Action": ["dynamodb:DescribeTable", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"],
                              "Resource": [
                                  format!("arn:{arn}:dynamodb:{r}:*:table/{lease_table}"),
                                  format!("arn:{arn}:dynamodb:{r}:*:table/{dead_letter_table}")
                              ] }
                        ]
                    },
                    "tags": tags,
                }),
            ));
            out.push(Resource::new(
                Kind::ExecutionRole,
                Some(r),
                exec_role.clone(),
                json!({
                    "assume": "ecs-tasks.amazonaws.com",
                    // Least privilege instead of the broad AWS-managed execution policy: pull the
                    // image from its own repository (only GetAuthorizationToken takes no resource)
                    // and write this log group.
                    "policy": {
                        "Version": "2012-10-17",
                        "Statement": execution_statements(&f.replicator.image, r, &log_group),
                    },
                    "tags": tags,
                }),
            ));
            let family = format!("{prefix}-replicator-{other}-to-{r}");
            out.push(Resource::new(
                Kind::TaskDefinition,
                Some(r),
                family.clone(),
                json!({
                    "image": f.replicator.image,
                    "cpu": f.replicator.cpu,
                    "memory": f.replicator.memory,
                    "task_role": reference(Kind::TaskRole, r, &task_role),
                    "execution_role": reference(Kind::ExecutionRole, r, &exec_role),
                    "log_group": log_group,
                    "command": ["run"],
                    "environment": {
                        "REPLICATOR_SOURCE_REGION": other, "REPLICATOR_SOURCE_TABLE": f.table.name,
                        "REPLICATOR_TARGET_REGION": r, "REPLICATOR_TARGET_TABLE": f.table.name,
                        "REPLICATOR_MODE": f.replicator.mode, "REPLICATOR_LEASE_TABLE": lease_table,
                        "REPLICATOR_DEAD_LETTER_TABLE": dead_letter_table,
                        "REPLICATOR_METRICS_ADDR": "0.0.0.0:9464",
                        // Nothing scrapes /metrics in an ECS service: the metrics reach CloudWatch as
                        // EMF lines through the task's log driver.
                        "REPLICATOR_METRICS_FORMAT": "emf",
                        "REPLICATOR_EMF_DIMENSIONS": format!("Deployment={prefix}")
                    },
                    "health_check": ["CMD", "/replicator", "healthcheck"],
                    "stop_timeout_seconds": 30,
                    "tags": tags,
                }),
            ));
            if f.replicator.alarms.enabled {
                out.extend(replicator_alarms(f, &prefix, other, r, &family, &tags));
            }
            out.push(Resource::new(
                Kind::EcsService,
                Some(r),
                format!("{prefix}-replicator-{other}-to-{r}"),
                json!({
                    "cluster": reference(Kind::EcsCluster, r, &cluster),
                    "task_definition": reference(Kind::TaskDefinition, r, &family),
                    "desired_count": f.replicator.desired_count,
                    "launch_type": "FARGATE",
                    "subnets": network.map(|n| json!(n.subnets)).unwrap_or(json!("default VPC")),
                    "security_groups": network.map(|n| json!(n.security_groups)).unwrap_or(json!("default VPC")),
                    "tags": tags,
                }),
            ));
        }
    }
    let cname = f.dns.record_style == RecordStyle::Cname;
    if d.probes_domain() {
        // Each region's own name (what its health check probes): a weighted record of its own,
        // no health check, so that it always answers with its region.
        for region in &d.regions {
            let r = region.as_str();
            let probe = crate::names::probe_domain(r, &f.dns.domain_name);
            let set_identifier = crate::names::set_identifier(&prefix, r);
            out.push(Resource::new(
                Kind::DnsRecord,
                None,
                format!("{probe}/probe"),
                json!({
                    "zone": f.dns.hosted_zone,
                    "type": if cname { "CNAME" } else { "A" },
                    "alias_to": if cname { Value::Null } else { reference(Kind::DomainName, r, &probe) },
                    "cname_to": if cname { json!(reference_attr_key(Kind::DomainName, r, &probe, "regional_domain_name")) } else { Value::Null },
                    "ttl": if cname { json!(f.dns.answer_ttl()) } else { Value::Null },
                    // As `dns_record::observe` reports every record of the deployment.
                    "peers": d.regions.iter().map(|r| crate::names::set_identifier(&prefix, r)).collect::<Vec<_>>(),
                    "set_identifier": set_identifier,
                    "routing": { "weight": 100 },
                    "health_check": Value::Null,
                }),
            ));
        }
    }
    let peers: Vec<String> = d
        .regions
        .iter()
        .map(|r| crate::names::set_identifier(&prefix, r))
        .collect();
    for (index, region) in d.regions.iter().enumerate() {
        let r = region.as_str();
        let (set, routing) = match d.routing {
            Routing::Failover => (
                if index == 0 { "PRIMARY" } else { "SECONDARY" },
                json!({ "failover": if index == 0 { "PRIMARY" } else { "SECONDARY" } }),
            ),
            Routing::Latency => (r, json!({ "latency_region": r })),
        };
        out.push(Resource::new(
            Kind::DnsRecord,
            None,
            format!("{}/{set}", f.dns.domain_name),
            json!({
                "zone": f.dns.hosted_zone,
                "type": if cname { "CNAME" } else { "A" },
                "alias_to": if cname { Value::Null } else { reference(Kind::DomainName, r, &f.dns.domain_name) },
                "cname_to": if cname { json!(reference_attr_key(Kind::DomainName, r, &f.dns.domain_name, "regional_domain_name")) } else { Value::Null },
                "ttl": if cname { json!(f.dns.answer_ttl()) } else { Value::Null },
                "peers": peers,
                "set_identifier": crate::names::set_identifier(&prefix, r),
                "routing": routing,
                "health_check": reference(Kind::HealthCheck, r, &crate::names::switch_check(&prefix, r)),
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn deployment(replicator_mode: &str, routing: &str) -> Deployment {
        let text = format!(
            r#"
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
partition_key = {{ name = "id", type = "S" }}
[api_key]
generate = true
[routing]
mode = "{routing}"
[lambda]
artifact = "x.zip"
[replicator]
mode = "{replicator_mode}"
image = "img"
"#
        );
        ConfigFile::parse(&text)
            .unwrap()
            .validate(&|_| None)
            .unwrap()
    }

    #[test]
    fn image_pulls_are_scoped_to_the_images_repository() {
        assert_eq!(
            ecr_repository(
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/tworegion/replicator:1.2"
            ),
            Some((
                "123456789012".to_owned(),
                "us-gov-west-1".to_owned(),
                "tworegion/replicator".to_owned()
            ))
        );
        assert_eq!(
            ecr_repository("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/r@sha256:ab")
                .map(|r| r.2),
            Some("r".to_owned())
        );
        assert_eq!(ecr_repository("ghcr.io/owner/replicator:1"), None);
        assert_eq!(ecr_repository("img"), None);
        let statements = execution_statements(
            "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/rep:1",
            "us-gov-east-1",
            "/tworegion/a-b/replicator",
        );
        let list = statements.as_array().unwrap();
        // Only GetAuthorizationToken (which takes no resource) has "*".
        for s in list {
            if s["Resource"] == "*" {
                assert_eq!(s["Action"], json!(["ecr:GetAuthorizationToken"]));
            }
        }
        assert_eq!(
            list[1]["Resource"],
            "arn:aws-us-gov:ecr:us-gov-west-1:123456789012:repository/rep"
        );
        assert!(
            list[2]["Resource"]
                .as_str()
                .unwrap()
                .starts_with("arn:aws-us-gov:logs:us-gov-east-1:")
        );
        // Another registry: no ECR permissions at all.
        let other = execution_statements("ghcr.io/o/r:1", "us-east-1", "/g");
        assert_eq!(other.as_array().unwrap().len(), 1);
    }

    #[test]
    fn all_kinds_are_listed_once_in_dependency_order() {
        assert!(Kind::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Kind::ALL.first(), Some(&Kind::HostedZone));
        assert_eq!(Kind::ALL.last(), Some(&Kind::DnsRecord));
    }

    fn count(resources: &[Resource], kind: Kind) -> usize {
        resources.iter().filter(|r| r.kind == kind).count()
    }

    #[test]
    fn alarms_watch_each_replicator_where_it_runs() {
        let alarms = |mode: &str| -> Vec<(String, String)> {
            desired(&deployment(mode, "failover"), "sha")
                .into_iter()
                .filter(|r| r.kind == Kind::Alarm)
                .map(|r| (r.region.unwrap(), r.name))
                .collect()
        };
        // One-way: the replicator runs in the secondary only; lww: in both.
        let one_way = alarms("one-way");
        assert_eq!(one_way.len(), 4);
        assert!(one_way.iter().all(|(r, n)| r == "us-west-2"
            && n.starts_with("todos-dev-replicator-us-east-1-to-us-west-2-")));
        assert_eq!(alarms("lww").len(), 8);
        let all = desired(&deployment("lww", "failover"), "sha");
        let task = all
            .iter()
            .find(|r| r.kind == Kind::TaskDefinition && r.region.as_deref() == Some("us-east-1"))
            .unwrap();
        for alarm in all
            .iter()
            .filter(|r| r.kind == Kind::Alarm && r.region.as_deref() == Some("us-east-1"))
        {
            let p = &alarm.props;
            // The metric, namespace and dimensions the task's EMF lines carry.
            assert!(ALARM_METRICS.contains(&p["metric"].as_str().unwrap()));
            assert_eq!(p["namespace"], "tworegion/replicator");
            assert_eq!(
                p["dimensions"]["Deployment"],
                task.props["environment"]["REPLICATOR_EMF_DIMENSIONS"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("Deployment=")
                    .unwrap()
            );
            assert_eq!(
                p["dimensions"]["Path"], "us-west-2/todos > us-east-1/todos",
                "the replicator's path into this region"
            );
            assert_eq!(p["tags"]["tworegion:app"], "todos");
            // Thresholds are floats, as CloudWatch reports them (so a second plan is empty).
            assert!(p["threshold"].is_f64());
        }
        // No task reporting is lag, unless the service runs no tasks on purpose.
        let lag_missing = |count: i32| {
            let mut d = deployment("lww", "failover");
            d.file.replicator.desired_count = count;
            desired(&d, "sha")
                .into_iter()
                .find(|r| r.kind == Kind::Alarm && r.name.ends_with("-lag"))
                .unwrap()
                .props["treat_missing_data"]
                .clone()
        };
        assert_eq!(lag_missing(1), "breaching");
        assert_eq!(lag_missing(0), "notBreaching");
    }

    #[test]
    fn both_regions_get_the_stack_and_dns_gets_one_primary_and_one_secondary() {
        let all = desired(&deployment("lww", "failover"), "abc");
        let app_tables = all
            .iter()
            .filter(|r| r.kind == Kind::Table && r.name == "todos")
            .count();
        assert_eq!(app_tables, 2);
        for kind in [
            Kind::LambdaFunction,
            Kind::RestApi,
            Kind::ApiKey,
            Kind::EcsService,
        ] {
            assert_eq!(count(&all, kind), 2, "{kind:?}");
        }
        // Per region an endpoint check and the switch over it, which the records use.
        assert_eq!(count(&all, Kind::HealthCheck), 4);
        let switch = all
            .iter()
            .find(|r| r.kind == Kind::HealthCheck && r.name == "todos-dev-us-east-1-switch")
            .unwrap();
        assert_eq!(switch.props["type"], "CALCULATED");
        assert_eq!(
            switch.props["children"],
            json!(["ref:HealthCheck/us-east-1/todos-dev-us-east-1"])
        );
        let (probes, records): (Vec<&Resource>, Vec<&Resource>) = all
            .iter()
            .filter(|r| r.kind == Kind::DnsRecord)
            .partition(|r| r.name.ends_with("/probe"));
        assert_eq!(records.len(), 2);
        // Each region's own name, for its health check: weighted, no health check of its own.
        assert_eq!(
            probes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            [
                "us-east-1.api.todos.example.com/probe",
                "us-west-2.api.todos.example.com/probe"
            ]
        );
        assert_eq!(probes[0].props["routing"], json!({"weight": 100}));
        assert_eq!(probes[0].props["health_check"], Value::Null);
        assert_eq!(
            probes[0].props["alias_to"],
            "ref:DomainName/us-east-1/us-east-1.api.todos.example.com"
        );
        let check = all
            .iter()
            .find(|r| r.kind == Kind::HealthCheck && r.name == "todos-dev-us-east-1")
            .unwrap();
        assert_eq!(check.props["target"], "us-east-1.api.todos.example.com");
        assert_eq!(check.props["resource_path"], "/todos/health");
        assert_eq!(check.props["enable_sni"], true);
        let certificate = all.iter().find(|r| r.kind == Kind::Certificate).unwrap();
        assert_eq!(
            certificate.props["alternative_names"],
            json!(["*.api.todos.example.com"])
        );
        assert!(all.iter().any(|r| r.kind == Kind::BasePathMapping
            && r.name == "us-west-2.api.todos.example.com/(none)"));
        assert_eq!(records[0].props["routing"], json!({"failover": "PRIMARY"}));
        assert_eq!(
            records[0].props["health_check"],
            "ref:HealthCheck/us-east-1/todos-dev-us-east-1-switch"
        );
        assert_eq!(
            records[1].props["routing"],
            json!({"failover": "SECONDARY"})
        );
        // Names are unique per kind and region.
        let mut ids: Vec<String> = all.iter().map(Resource::id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // The A-to-B replicator runs in B and reads A's stream.
        let service = all
            .iter()
            .find(|r| r.kind == Kind::TaskDefinition && r.region.as_deref() == Some("us-west-2"))
            .unwrap();
        assert_eq!(
            service.props["environment"]["REPLICATOR_SOURCE_REGION"],
            "us-east-1"
        );
        assert_eq!(
            service.props["environment"]["REPLICATOR_TARGET_REGION"],
            "us-west-2"
        );
    }

    #[test]
    fn one_way_runs_a_single_replicator_in_the_secondary() {
        let all = desired(&deployment("one-way", "latency"), "abc");
        let services: Vec<&Resource> = all.iter().filter(|r| r.kind == Kind::EcsService).collect();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].region.as_deref(), Some("us-west-2"));
        let records: Vec<&Resource> = all
            .iter()
            .filter(|r| r.kind == Kind::DnsRecord && !r.name.ends_with("/probe"))
            .collect();
        assert_eq!(
            records[0].props["routing"],
            json!({"latency_region": "us-east-1"})
        );
    }

    fn actions(r: &Resource) -> Vec<String> {
        let mut out: Vec<String> = r.props["policy"]["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                _ => panic!("action"),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn policies_grant_what_the_function_and_the_replicator_call_and_no_more() {
        let all = desired(&deployment("lww", "failover"), "abc");
        let role = |kind: Kind| all.iter().find(|r| r.kind == kind).unwrap();
        // sample-app's DynamoStore: get (and ping), conditional put, scan; Lambda's own logs.
        assert_eq!(
            actions(role(Kind::LambdaRole)),
            [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Scan",
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents"
            ]
        );
        let logs = &role(Kind::LambdaRole).props["policy"]["Statement"][1];
        assert_eq!(
            logs["Resource"],
            "arn:aws:logs:us-east-1:*:log-group:/aws/lambda/todos-dev-api:*"
        );
        // The replicator: stream reads, both descriptions, target writes, the lease table (which
        // the deployer creates: no CreateTable).
        assert_eq!(
            actions(role(Kind::TaskRole)),
            [
                "dynamodb:DeleteItem",
                "dynamodb:DescribeStream",
                "dynamodb:DescribeTable",
                "dynamodb:DescribeTimeToLive",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:UpdateItem"
            ]
        );
    }

    #[test]
    fn the_execute_api_probe_needs_no_names_of_its_own() {
        let mut d = deployment("lww", "failover");
        d.file.health_check.probe = Some("execute-api".to_owned());
        let all = desired(&d, "abc");
        assert!(!all.iter().any(|r| r.name.contains("us-east-1.api.")));
        let check = all
            .iter()
            .find(|r| r.kind == Kind::HealthCheck && r.name == "todos-dev-us-east-1")
            .unwrap();
        assert_eq!(
            check.props["target"],
            "ref:RestApi/us-east-1/todos-dev#host"
        );
        assert_eq!(check.props["resource_path"], "/live/todos/health");
        let certificate = all.iter().find(|r| r.kind == Kind::Certificate).unwrap();
        assert_eq!(certificate.props["alternative_names"], json!([]));
    }

    #[test]
    fn the_replicators_tables_are_the_deployers() {
        let all = desired(&deployment("one-way", "failover"), "abc");
        let tables: Vec<(&str, &str)> = all
            .iter()
            .filter(|r| r.kind == Kind::Table)
            .map(|r| (r.region.as_deref().unwrap(), r.name.as_str()))
            .collect();
        // One-way: the replicator runs in the secondary only.
        assert_eq!(
            tables,
            [
                ("us-east-1", "todos"),
                ("us-west-2", "todos"),
                ("us-west-2", "todos-dev-replicator-leases"),
                ("us-west-2", "todos-dev-replicator-dead-letters"),
            ]
        );
        let leases = all
            .iter()
            .find(|r| r.name == "todos-dev-replicator-leases")
            .unwrap();
        assert_eq!(
            leases.props["partition_key"],
            json!({"name": "path", "type": "S"})
        );
        assert_eq!(
            leases.props["sort_key"],
            json!({"name": "shard", "type": "S"})
        );
        assert_eq!(leases.props["stream"], Value::Null);
        // The task names the same tables.
        let task = all.iter().find(|r| r.kind == Kind::TaskDefinition).unwrap();
        assert_eq!(
            task.props["environment"]["REPLICATOR_LEASE_TABLE"],
            "todos-dev-replicator-leases"
        );
        assert_eq!(
            task.props["environment"]["REPLICATOR_DEAD_LETTER_TABLE"],
            "todos-dev-replicator-dead-letters"
        );
        // Its metrics reach CloudWatch as EMF lines.
        assert_eq!(
            task.props["environment"]["REPLICATOR_METRICS_FORMAT"],
            "emf"
        );
        assert_eq!(
            task.props["environment"]["REPLICATOR_EMF_DIMENSIONS"],
            "Deployment=todos-dev"
        );
    }

    #[test]
    fn arns_name_the_regions_partition() {
        assert_eq!(partition("us-east-1"), "aws");
        assert_eq!(partition("cn-northwest-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("us-iso-east-1"), "aws-iso");
        assert_eq!(partition("us-isob-east-1"), "aws-iso-b");
        let mut d = deployment("lww", "failover");
        d.regions = ["cn-north-1".to_owned(), "cn-northwest-1".to_owned()];
        for r in desired(&d, "abc") {
            let Some(policy) = r.props.get("policy") else {
                continue;
            };
            for statement in policy["Statement"].as_array().unwrap() {
                let resources = match &statement["Resource"] {
                    Value::String(one) => vec![one.clone()],
                    Value::Array(many) => many
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect(),
                    _ => panic!("resource"),
                };
                for arn in resources.iter().filter(|a| *a != "*") {
                    assert!(arn.starts_with("arn:aws-cn:"), "{}: {arn}", r.id());
                }
            }
        }
    }

    #[test]
    fn policies_name_no_wildcard_data_actions() {
        for r in desired(&deployment("lww", "failover"), "abc") {
            if let Some(policy) = r.props.get("policy") {
                for statement in policy["Statement"].as_array().unwrap() {
                    let actions: Vec<String> = match &statement["Action"] {
                        Value::String(a) => vec![a.clone()],
                        Value::Array(a) => {
                            a.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
                        }
                        _ => panic!("action"),
                    };
                    for a in actions {
                        assert!(!a.contains('*'), "{}: {a}", r.id());
                    }
                }
            }
        }
    }
}
