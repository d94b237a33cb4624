//! The reconciler: observes every resource kind in both regions, resolves references from what
//! exists, plans, and applies the plan change by change, re-observing after each change so that the
//! next one sees the IDs it needs. `up` repeats observe-plan-apply until the plan is empty (a
//! dependent can only be planned once what it depends on exists), at most [`MAX_ROUNDS`] times.
//!
//! Interrupting `up` is safe: nothing is remembered between runs except what AWS holds, so the next
//! run observes the half-made state and finishes it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use serde_json::Value;
use tworegion_common::aws::{AwsOptions, parse_region, sdk_config};

use crate::config::{ApiKeySource, Deployment, Routing};
use crate::desired::{
    Kind, Resolved, Resource, desired, reference_attr_key, reference_key, resolve,
};
use crate::names::CheckRole;
use crate::plan::{Action, Change, Plan, plan};
use crate::resources::{
    DeployError, Scope, alarm, alias, api_key, certificate, cluster, dns_record, domain_name,
    function, health_check, hosted_zone, log_group, permission, rest_api, role, service, table,
    task_definition, usage_plan,
};
use crate::rollout::Rollout;

/// How many observe-plan-apply rounds `up` runs before it gives up (a plan that never empties means
/// a resource that AWS reports differently from how it was written: a bug worth reporting).
pub const MAX_ROUNDS: usize = 4;

/// The SDK clients of one region.
#[derive(Debug, Clone)]
pub struct RegionClients {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// Lambda.
    pub lambda: aws_sdk_lambda::Client,
    /// API Gateway (REST).
    pub apigateway: aws_sdk_apigateway::Client,
    /// ACM.
    pub acm: aws_sdk_acm::Client,
    /// CloudWatch Logs.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// CloudWatch (alarms).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// ECS.
    pub ecs: aws_sdk_ecs::Client,
    /// EC2 (the default VPC's network).
    pub ec2: aws_sdk_ec2::Client,
}

/// The clients of both regions and of the global services.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Per region.
    pub regions: BTreeMap<String, RegionClients>,
    /// IAM (global).
    pub iam: aws_sdk_iam::Client,
    /// Route 53 (global).
    pub route53: aws_sdk_route53::Client,
}

impl Clients {
    /// Clients for `regions` (the first also serves the global services).
    pub async fn load(regions: &[String; 2], options: &AwsOptions) -> Result<Clients, DeployError> {
        let mut map = BTreeMap::new();
        let mut global = None;
        for name in regions {
            let region = parse_region(name)
                .map_err(|e| DeployError::refused("config", name, e.to_string()))?;
            let config = sdk_config(region, options).await;
            if global.is_none() {
                global = Some(config.clone());
            }
            map.insert(
                name.clone(),
                RegionClients {
                    dynamodb: aws_sdk_dynamodb::Client::new(&config),
                    lambda: aws_sdk_lambda::Client::new(&config),
                    apigateway: aws_sdk_apigateway::Client::from_conf(
                        aws_sdk_apigateway::config::Builder::from(&config)
                            .retry_config(apigateway_retries())
                            .build(),
                    ),
                    acm: aws_sdk_acm::Client::new(&config),
                    logs: aws_sdk_cloudwatchlogs::Client::new(&config),
                    cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
                    ecs: aws_sdk_ecs::Client::new(&config),
                    ec2: aws_sdk_ec2::Client::new(&config),
                },
            );
        }
        let global =
            global.ok_or_else(|| DeployError::refused("config", "regions", "no region given"))?;
        Ok(Clients {
            regions: map,
            iam: aws_sdk_iam::Client::new(&global),
            route53: aws_sdk_route53::Client::new(&global),
        })
    }

    fn region(&self, region: Option<&str>) -> Result<&RegionClients, DeployError> {
        let name = region.unwrap_or_default();
        self.regions.get(name).ok_or_else(|| {
            DeployError::refused("deployer", name, "not one of the configured regions")
        })
    }
}

/// API Gateway's control plane throttles hard (DeleteRestApi and CreateDomainName: one request per
/// 30 s per account; CreateDeployment: one per 5 s): more attempts and a longer backoff than the
/// SDK's default (3 attempts, 20 s) so that runs close together wait instead of failing.
fn apigateway_retries() -> aws_sdk_apigateway::config::retry::RetryConfig {
    aws_sdk_apigateway::config::retry::RetryConfig::standard()
        .with_max_attempts(8)
        .with_max_backoff(std::time::Duration::from_secs(35))
}

/// The values that references resolve to, from what exists: an API's, key's, plan's or health
/// check's `id`; a custom domain's `alias`; every other kind's `arn`; and the attributes `host` and
/// `source_arn` where a resource reports them.
pub fn references(observed: &[Resource]) -> Resolved {
    let mut resolved = Resolved::new();
    for r in observed {
        let region = r.region.as_deref().unwrap_or("global");
        let main = match r.kind {
            Kind::RestApi | Kind::ApiKey | Kind::UsagePlan | Kind::HealthCheck => "id",
            Kind::DomainName => "alias",
            _ => "arn",
        };
        if let Some(v) = r.props.get(main).filter(|v| !v.is_null()) {
            resolved.insert(reference_key(r.kind, region, &r.name), v.clone());
        }
        for attr in ["host", "source_arn", "regional_domain_name"] {
            if let Some(v) = r.props.get(attr).filter(|v| !v.is_null()) {
                resolved.insert(reference_attr_key(r.kind, region, &r.name, attr), v.clone());
            }
        }
    }
    resolved
}

/// Whether an observed resource belongs to this app and stage. An observer that knows better says
/// so in an `owned` property (a certificate given by ARN is the operator's; a health check whose
/// caller reference this deployment wrote is ours even before it is tagged); otherwise tagged with
/// the scope, or, for the kinds that carry no tags (a permission statement, a base path mapping, a
/// usage plan key, a DNS record), named by this deployment. Only such resources are ever deleted.
pub fn is_ours(r: &Resource, scope: &Scope, targets: &[Resource]) -> bool {
    if let Some(owned) = r.props.get("owned").and_then(Value::as_bool) {
        return owned;
    }
    match r.props.get("tags").and_then(Value::as_object) {
        Some(tags) => {
            tags.get(crate::resources::APP_TAG).and_then(Value::as_str) == Some(scope.app.as_str())
                && tags
                    .get(crate::resources::STAGE_TAG)
                    .and_then(Value::as_str)
                    == Some(scope.stage.as_str())
        }
        None => targets
            .iter()
            .any(|t| t.kind == r.kind && t.region == r.region && t.name == r.name),
    }
}

/// The plan for `desired` (references resolved from `observed`) against `observed`, where only
/// resources that are ours can be deleted: an untagged resource that merely has a wanted name is
/// adopted when wanted, and left alone when not. Pure.
pub fn reconcile(
    desired: &[Resource],
    observed: &[Resource],
    scope: &Scope,
    targets: &[Resource],
) -> Plan {
    let wanted = |r: &Resource| {
        desired
            .iter()
            .any(|d| d.kind == r.kind && d.region == r.region && d.name == r.name)
    };
    let considered: Vec<Resource> = observed
        .iter()
        .filter(|r| wanted(r) || is_ours(r, scope, targets))
        .cloned()
        .collect();
    let resolved = references(observed);
    plan(&resolve(desired, &resolved), &considered)
}

/// How an observation treats a region whose calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every region must answer (`up`, `plan`, `down`).
    All,
    /// A region that fails is reported as unreachable (`status`).
    Tolerant,
    /// As `All`; with one region, the primary's generated API key is read too when it answers (a
    /// region-by-region `up`: the secondary's key takes its value).
    Rollout,
}

/// What `up` and `down` may do to data (tables).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPolicy {
    /// Tables may be deleted (`--allow-data-loss`); deletion protection is turned off first.
    pub allow_data_loss: bool,
    /// `down --keep-data`: release (untag) every table instead of deleting it.
    pub keep_data: bool,
    /// `down --delete-adopted`: adopted tables are deleted too (with `allow_data_loss`), not released.
    pub delete_adopted: bool,
}

/// The plan under `policy`: a table deletion becomes a release when the table was adopted rather
/// than created (unless `delete_adopted`) or with `keep_data`. Returns the plan and the changes
/// that would still lose data without being allowed (then nothing may be applied). Tables named in
/// `disposable` hold no user data (the replicator's leases): deleted, never released or refused.
/// Pure.
pub fn with_data_policy(
    plan: Plan,
    observed: &[Resource],
    policy: DataPolicy,
    disposable: &[String],
) -> (Plan, Vec<Change>) {
    let mut refused = Vec::new();
    let changes = plan
        .changes
        .into_iter()
        .map(|mut change| {
            let holds_data = !disposable.contains(&change.name);
            if change.kind == Kind::Table && change.action == Action::Delete && holds_data {
                let have = find(
                    observed,
                    Kind::Table,
                    change.region.as_deref(),
                    &change.name,
                );
                let adopted = !have.is_some_and(table::created);
                if policy.keep_data || (adopted && !policy.delete_adopted) {
                    change.action = Action::Release;
                }
            }
            if crate::plan::loses_data(&change) && holds_data && !policy.allow_data_loss {
                refused.push(change.clone());
            }
            change
        })
        .collect();
    (Plan { changes }, refused)
}

/// Whether `change` re-targets a health check at a name whose DNS record `desired` makes but that
/// does not exist yet.
fn waits_for_its_name(change: &Change, desired: &[Resource], observed: &[Resource]) -> bool {
    let Action::Update { changes } = &change.action else {
        return false;
    };
    if change.kind != Kind::HealthCheck {
        return false;
    }
    let Some(target) = changes
        .iter()
        .find(|c| c.field == "target")
        .and_then(|c| c.to.as_str())
    else {
        return false;
    };
    let record = format!("{target}/probe");
    find(desired, Kind::DnsRecord, None, &record).is_some()
        && find(observed, Kind::DnsRecord, None, &record).is_none()
}

/// The refusal for changes that would lose data: each named, with what to do instead.
fn data_loss_refusal(action: &str, refused: &[Change], observed: &[Resource]) -> DeployError {
    let named: Vec<String> = refused
        .iter()
        .map(|c| {
            let items = find(observed, c.kind, c.region.as_deref(), &c.name)
                .and_then(|r| r.props.get("item_count"))
                .and_then(Value::as_i64)
                .map(|n| format!(", about {n} items"))
                .unwrap_or_default();
            format!(
                "{:?} {} in {}{items}",
                c.kind,
                c.name,
                c.region.as_deref().unwrap_or("global")
            )
        })
        .collect();
    let instead = if action == "down" {
        "add --allow-data-loss to delete them (deletion protection is turned off first), or \
         --keep-data to remove everything else and leave the tables, untagged, with their data"
    } else {
        "if the table was renamed in the config, put the old name back; to delete it, run up \
         --allow-data-loss (deletion protection is turned off first)"
    };
    DeployError::refused(
        action,
        "data",
        format!(
            "{action} would delete {} and every item in it; nothing was changed: {instead}",
            named.join("; ")
        ),
    )
}

fn find<'a>(
    list: &'a [Resource],
    kind: Kind,
    region: Option<&str>,
    name: &str,
) -> Option<&'a Resource> {
    list.iter()
        .find(|r| r.kind == kind && r.region.as_deref() == region && r.name == name)
}

/// One deployment's reconciler.
pub struct Engine {
    /// Whether the API keys' values are read and compared (`up`, `plan`); `status`, `failover`
    /// and `down` never need the secret.
    read_secrets: bool,
    deployment: Deployment,
    scope: Scope,
    clients: Clients,
    artifact: Option<Vec<u8>>,
    desired: Vec<Resource>,
    targets: Vec<Resource>,
}

/// What `up` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpReport {
    /// The changes applied, in order.
    pub applied: Vec<Change>,
    /// Observe-plan-apply rounds run (the last one found nothing to do).
    pub rounds: usize,
    /// The public endpoint and each region's own.
    pub endpoints: Endpoints,
}

/// Where the API answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoints {
    /// `https://<domain>/` through Route 53.
    pub public: String,
    /// Each region's API Gateway stage URL (`None` until the API exists).
    pub regional: BTreeMap<String, Option<String>>,
}

impl Engine {
    /// An engine for `deployment`. `artifact` is the Lambda zip's content: required for `plan` and
    /// `up`, optional for `status` (without it the function's code is not compared), `down` and
    /// `failover`.
    pub fn new(deployment: Deployment, clients: Clients, artifact: Option<Vec<u8>>) -> Engine {
        let sha = artifact
            .as_deref()
            .map(function::code_sha256)
            .unwrap_or_default();
        let desired = desired(&deployment, &sha);
        // Observe the names of every mode too, so that switching the replicator from lww to one-way
        // finds (and deletes) the primary region's replicator, and switching the routing finds (and
        // deletes) the other routing's records (`<domain>/PRIMARY` or `<domain>/<region>`).
        let mut lww = deployment.clone();
        lww.file.replicator.mode = "lww".to_owned();
        let mut other_routing = deployment.clone();
        other_routing.routing = match deployment.routing {
            Routing::Failover => Routing::Latency,
            Routing::Latency => Routing::Failover,
        };
        // ... and the other probe's, so that the probe names' domains and records are found.
        let mut other_probe = deployment.clone();
        other_probe.file.health_check.probe = Some(if deployment.probes_domain() {
            "execute-api".to_owned()
        } else {
            "domain".to_owned()
        });
        let mut targets = desired.clone();
        let variants = [
            crate::desired::desired(&lww, &sha),
            crate::desired::desired(&other_routing, &sha),
            crate::desired::desired(&other_probe, &sha),
        ];
        for r in variants.into_iter().flatten() {
            if find(&targets, r.kind, r.region.as_deref(), &r.name).is_none() {
                targets.push(r);
            }
        }
        let scope = Scope {
            app: deployment.file.app.clone(),
            stage: deployment.file.stage.clone(),
        };
        Engine {
            read_secrets: true,
            deployment,
            scope,
            clients,
            artifact,
            desired,
            targets,
        }
    }

    /// This engine, never reading an API key's value (for commands that create no key): keys are
    /// then not compared by value.
    #[must_use]
    pub fn without_secrets(mut self) -> Engine {
        self.read_secrets = false;
        self
    }

    /// Tables that hold no user data (the replicator's leases), deleted without `--allow-data-loss`.
    fn disposable(&self) -> Vec<String> {
        vec![crate::names::lease_table(&crate::names::prefix(
            &self.scope.app,
            &self.scope.stage,
        ))]
    }

    /// The deployment.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The resources this deployment wants (references unresolved).
    pub fn desired(&self) -> &[Resource] {
        &self.desired
    }

    fn names(&self, kind: Kind, region: Option<&str>) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.kind == kind && t.region.as_deref() == region)
            .map(|t| t.name.clone())
            .collect()
    }

    fn regions(&self, kind: Kind) -> Vec<Option<String>> {
        if matches!(kind, Kind::DnsRecord | Kind::HostedZone) {
            vec![None]
        } else {
            self.deployment.regions.iter().cloned().map(Some).collect()
        }
    }

    /// The API key clients send (the configured value, or the one API Gateway generated in the
    /// primary); `None` while it does not exist.
    pub async fn client_api_key(&self) -> Result<Option<String>, DeployError> {
        match &self.deployment.api_key {
            ApiKeySource::Value(v) => return Ok(Some(v.clone())),
            ApiKeySource::Unread(_) => return Ok(None),
            ApiKeySource::Generate => {}
        }
        let observed = self.observe().await?;
        let secondary = self.deployment.regions[1].clone();
        self.api_key_value(Some(&secondary), &observed).await
    }

    /// The value `region`'s API key must have: the configured one; with `generate`, none in the
    /// primary (API Gateway generates it there) and the primary's value elsewhere (`None` until the
    /// primary's key exists).
    async fn api_key_value(
        &self,
        region: Option<&str>,
        observed: &[Resource],
    ) -> Result<Option<String>, DeployError> {
        if !self.read_secrets {
            return Ok(None);
        }
        match &self.deployment.api_key {
            ApiKeySource::Value(v) => Ok(Some(v.clone())),
            ApiKeySource::Unread(_) => Ok(None),
            ApiKeySource::Generate => {
                let primary = &self.deployment.regions[0];
                if region == Some(primary.as_str()) {
                    return Ok(None);
                }
                let name = crate::names::api_key(&crate::names::prefix(
                    &self.scope.app,
                    &self.scope.stage,
                ));
                let Some(id) = find(observed, Kind::ApiKey, Some(primary), &name)
                    .and_then(|k| k.props.get("id"))
                    .and_then(Value::as_str)
                else {
                    return Ok(None);
                };
                let client = &self.clients.region(Some(primary))?.apigateway;
                api_key::value(client, id).await.map(Some)
            }
        }
    }

    /// Observes one kind in one region (`None`: global). `so_far` is what has been observed of the
    /// kinds before it (a usage plan key needs the key's ID, a service its cluster's).
    async fn observe_group(
        &self,
        kind: Kind,
        region: Option<&str>,
        so_far: &[Resource],
    ) -> Result<Vec<Resource>, DeployError> {
        let names = self.names(kind, region);
        let scope = &self.scope;
        let here = |r: &Resource| r.kind == kind && r.region.as_deref() == region;
        let mut found = Vec::new();
        match kind {
            Kind::HostedZone => {
                for name in &names {
                    found.extend(hosted_zone::observe(&self.clients.route53, name).await?);
                }
            }
            Kind::Table => {
                let c = &self.clients.region(region)?.dynamodb;
                found = table::observe(c, region.unwrap_or_default(), scope, &names).await?;
            }
            Kind::LambdaRole | Kind::TaskRole | Kind::ExecutionRole => {
                let wanted: Vec<Resource> =
                    self.targets.iter().filter(|r| here(r)).cloned().collect();
                found = role::observe(&self.clients.iam, scope, &wanted).await?;
            }
            Kind::LambdaFunction => {
                let c = &self.clients.region(region)?.lambda;
                for name in &names {
                    found.extend(function::observe(c, region.unwrap_or_default(), name).await?);
                }
            }
            Kind::RestApi => {
                let c = &self.clients.region(region)?.apigateway;
                found = rest_api::observe(c, region.unwrap_or_default(), scope, &names).await?;
            }
            Kind::LambdaAlias | Kind::LambdaPermission => {
                let c = &self.clients.region(region)?.lambda;
                let functions: Vec<String> = so_far
                    .iter()
                    .filter(|r| r.kind == Kind::LambdaFunction && r.region.as_deref() == region)
                    .map(|r| r.name.clone())
                    .collect();
                for t in self.targets.iter().filter(|r| here(r)) {
                    let text = |field: &str| t.props.get(field).and_then(Value::as_str);
                    let function = text("function").unwrap_or_default();
                    // Without its function there is neither alias nor policy to read.
                    if !functions.iter().any(|f| f == function) {
                        continue;
                    }
                    let r = region.unwrap_or_default();
                    found.extend(match kind {
                        Kind::LambdaAlias => alias::observe(c, r, function, &t.name).await?,
                        _ => {
                            permission::observe(c, r, function, text("qualifier"), &t.name).await?
                        }
                    });
                }
            }
            Kind::ApiKey => {
                let c = &self.clients.region(region)?.apigateway;
                let expected = self.api_key_value(region, so_far).await?;
                for t in self.targets.iter().filter(|r| here(r)) {
                    let value_prop = t.props.get("value").cloned().unwrap_or(Value::Null);
                    found.extend(
                        api_key::observe(
                            c,
                            region.unwrap_or_default(),
                            scope,
                            &t.name,
                            expected.as_deref(),
                            &value_prop,
                        )
                        .await?,
                    );
                }
            }
            Kind::UsagePlan => {
                let c = &self.clients.region(region)?.apigateway;
                found = usage_plan::observe(c, region.unwrap_or_default(), scope, &names).await?;
            }
            Kind::UsagePlanKey => {
                let c = &self.clients.region(region)?.apigateway;
                let plans: Vec<Resource> = so_far
                    .iter()
                    .filter(|r| r.kind == Kind::UsagePlan && r.region.as_deref() == region)
                    .cloned()
                    .collect();
                let keys: Vec<Resource> = so_far
                    .iter()
                    .filter(|r| r.kind == Kind::ApiKey && r.region.as_deref() == region)
                    .cloned()
                    .collect();
                for name in &names {
                    found.extend(
                        usage_plan::observe_key(c, region.unwrap_or_default(), name, &plans, &keys)
                            .await?,
                    );
                }
            }
            Kind::Certificate => {
                let c = &self.clients.region(region)?.acm;
                for t in self.targets.iter().filter(|r| here(r)) {
                    found.extend(certificate::observe(c, &self.clients.route53, scope, t).await?);
                }
            }
            Kind::DomainName => {
                let c = &self.clients.region(region)?.apigateway;
                found = domain_name::observe(c, region.unwrap_or_default(), scope, &names).await?;
            }
            Kind::BasePathMapping => {
                let c = &self.clients.region(region)?.apigateway;
                found = domain_name::observe_mapping(c, region.unwrap_or_default(), &names).await?;
            }
            Kind::HealthCheck => {
                found =
                    health_check::observe(&self.clients.route53, scope, &self.deployment.regions)
                        .await?;
            }
            Kind::EcsCluster => {
                let c = &self.clients.region(region)?.ecs;
                for name in &names {
                    found.extend(cluster::observe(c, region.unwrap_or_default(), name).await?);
                }
            }
            Kind::LogGroup => {
                let c = &self.clients.region(region)?.logs;
                for name in &names {
                    found.extend(log_group::observe(c, region.unwrap_or_default(), name).await?);
                }
            }
            Kind::TaskDefinition => {
                let c = &self.clients.region(region)?.ecs;
                for name in &names {
                    found.extend(
                        task_definition::observe(c, region.unwrap_or_default(), name).await?,
                    );
                }
            }
            Kind::EcsService => {
                let c = self.clients.region(region)?;
                let wanted: Vec<Resource> =
                    self.targets.iter().filter(|r| here(r)).cloned().collect();
                let clusters: Vec<String> = so_far
                    .iter()
                    .filter(|r| r.kind == Kind::EcsCluster && r.region.as_deref() == region)
                    .filter_map(|r| {
                        r.props
                            .get("arn")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .collect();
                for cluster_arn in &clusters {
                    found.extend(
                        service::observe(
                            &c.ecs,
                            &c.ec2,
                            region.unwrap_or_default(),
                            scope,
                            cluster_arn,
                            &wanted,
                        )
                        .await?,
                    );
                }
            }
            Kind::Alarm => {
                let c = &self.clients.region(region)?.cloudwatch;
                let f = &self.deployment.file;
                let prefix = format!("{}-replicator-", crate::names::prefix(&f.app, &f.stage));
                found = alarm::observe(c, region.unwrap_or_default(), &prefix).await?;
            }
            Kind::DnsRecord => {
                let f = &self.deployment.file;
                let zone_missing =
                    f.dns.create_hosted_zone && !so_far.iter().any(|r| r.kind == Kind::HostedZone);
                if zone_missing {
                    // Not created yet (or already deleted): it holds no records.
                    return Ok(Vec::new());
                }
                // The public name, and each region's own name (the health checks' probes).
                let mut domains: Vec<&str> = names
                    .iter()
                    .filter_map(|n| n.rsplit_once('/').map(|(domain, _)| domain))
                    .collect();
                domains.sort_unstable();
                domains.dedup();
                for domain in domains {
                    found.extend(
                        dns_record::observe(
                            &self.clients.route53,
                            scope,
                            &self.deployment.regions,
                            &f.dns.hosted_zone,
                            domain,
                        )
                        .await?,
                    );
                }
            }
        }
        Ok(found.into_iter().filter(|r| here(r)).collect())
    }

    /// Everything of this deployment that exists (wanted names, and whatever carries its tags).
    pub async fn observe(&self) -> Result<Vec<Resource>, DeployError> {
        let (observed, _) = self.observe_with(Reach::All, None).await?;
        Ok(observed)
    }

    /// What exists. `only`: observe that region's resources and the global ones, never calling the
    /// other region. With [`Reach::Tolerant`] a region whose calls fail is left out and returned
    /// with the error (global services, Route 53 and IAM, must answer).
    async fn observe_with(
        &self,
        reach: Reach,
        only: Option<&str>,
    ) -> Result<(Vec<Resource>, BTreeMap<String, String>), DeployError> {
        let mut observed = Vec::new();
        let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
        for kind in Kind::ALL {
            // Global listings (IAM roles, Route 53 health checks) serve both regions at once.
            let in_deployment = |r: &Resource| {
                r.kind == kind
                    && r.region
                        .as_ref()
                        .is_some_and(|region| self.deployment.regions.contains(region))
            };
            match kind {
                Kind::HealthCheck => {
                    let found = health_check::observe(
                        &self.clients.route53,
                        &self.scope,
                        &self.deployment.regions,
                    )
                    .await?;
                    observed.extend(found.into_iter().filter(in_deployment));
                    continue;
                }
                Kind::LambdaRole | Kind::TaskRole | Kind::ExecutionRole => {
                    let wanted: Vec<Resource> = self
                        .targets
                        .iter()
                        .filter(|r| r.kind == kind)
                        .cloned()
                        .collect();
                    let found = role::observe(&self.clients.iam, &self.scope, &wanted).await?;
                    observed.extend(found.into_iter().filter(in_deployment));
                    continue;
                }
                _ => {}
            }
            for region in self.regions(kind) {
                if let Some(r) = region.as_deref()
                    && reach == Reach::Rollout
                    && only.is_some_and(|o| o != r)
                    && kind == Kind::ApiKey
                    && self.deployment.api_key == ApiKeySource::Generate
                    && r == self.deployment.regions[0]
                {
                    // The secondary's key takes the primary's generated value: read the primary's
                    // key when it answers (its changes stay out of a one-region plan).
                    if let Ok(found) = self.observe_group(kind, Some(r), &observed).await {
                        observed.extend(found);
                    }
                    continue;
                }
                if let Some(r) = region.as_deref()
                    && (only.is_some_and(|o| o != r) || unreachable.contains_key(r))
                {
                    continue;
                }
                match self.observe_group(kind, region.as_deref(), &observed).await {
                    Ok(found) => observed.extend(found),
                    // Only a region that is not there is reported as unreachable: a refusal
                    // (access denied, a bad request) from one that answers stays an error.
                    Err(error) => match (reach, region) {
                        (Reach::Tolerant, Some(r)) if error.is_unreachable() => {
                            unreachable.insert(r, error.to_string());
                        }
                        _ => return Err(error),
                    },
                }
            }
        }
        Ok((observed, unreachable))
    }

    /// Observes again what a change touched: its kind in its region, or, for a base path mapping,
    /// that mapping's domain alone (fewer calls; and the local AWS, moto 5.2.5, answers
    /// GetBasePathMappings with HTTP 500 for a domain that never had a mapping, where AWS answers
    /// with none, so asking about a sibling domain not yet mapped would fail there).
    async fn refresh(
        &self,
        observed: &mut Vec<Resource>,
        kind: Kind,
        region: Option<&str>,
        name: &str,
    ) -> Result<(), DeployError> {
        if kind == Kind::BasePathMapping {
            let domain = name.split_once('/').map_or(name, |(d, _)| d);
            let client = &self.clients.region(region)?.apigateway;
            let found = domain_name::observe_mapping(
                client,
                region.unwrap_or_default(),
                &[domain.to_owned()],
            )
            .await?;
            observed.retain(|r| {
                !(r.kind == kind
                    && r.region.as_deref() == region
                    && r.name.split_once('/').map_or(r.name.as_str(), |(d, _)| d) == domain)
            });
            observed.extend(found);
            return Ok(());
        }
        let found = self.observe_group(kind, region, observed).await?;
        observed.retain(|r| !(r.kind == kind && r.region.as_deref() == region));
        observed.extend(found);
        Ok(())
    }

    /// The plan: what `up` would change now (adopted tables no longer wanted are released), and the
    /// changes that would lose data, which `up` refuses without `--allow-data-loss`.
    pub async fn plan(&self) -> Result<(Plan, Vec<Change>), DeployError> {
        let observed = self.observe().await?;
        let plan = reconcile(&self.desired, &observed, &self.scope, &self.targets);
        Ok(with_data_policy(
            plan,
            &observed,
            DataPolicy::default(),
            &self.disposable(),
        ))
    }

    async fn apply(
        &self,
        change: &Change,
        want: Option<&Resource>,
        have: Option<&Resource>,
        observed: &[Resource],
    ) -> Result<(), DeployError> {
        let region = change.region.as_deref();
        let global = &self.clients;
        match change.kind {
            Kind::HostedZone => hosted_zone::apply(&global.route53, change, want, have).await,
            Kind::Table => table::apply(&global.region(region)?.dynamodb, change, want, have).await,
            Kind::LambdaRole | Kind::TaskRole | Kind::ExecutionRole => {
                role::apply(&global.iam, change, want, have).await
            }
            Kind::LambdaFunction => {
                let artifact = match (&self.artifact, &change.action) {
                    (Some(bytes), _) => bytes.as_slice(),
                    // A deletion needs no code.
                    (None, Action::Delete) => &[],
                    (None, _) => {
                        return Err(DeployError::refused(
                            "lambda",
                            &change.name,
                            "the Lambda artifact was not read (a bug: up always reads it)",
                        ));
                    }
                };
                function::apply(&global.region(region)?.lambda, change, want, have, artifact).await
            }
            Kind::RestApi => {
                rest_api::apply(&global.region(region)?.apigateway, change, want, have).await
            }
            Kind::LambdaPermission => {
                permission::apply(&global.region(region)?.lambda, change, want, have).await
            }
            Kind::LambdaAlias => {
                alias::apply(&global.region(region)?.lambda, change, want, have).await
            }
            Kind::ApiKey => {
                let value = self.api_key_value(region, observed).await?;
                // Only a creation needs the value: a secondary key can be updated or deleted
                // whether or not the primary's still exists (an interrupted `down`).
                let creates = matches!(change.action, Action::Create | Action::Replace { .. });
                let generated = self.deployment.api_key == ApiKeySource::Generate;
                let primary = region == Some(self.deployment.regions[0].as_str());
                if creates && generated && !primary && value.is_none() {
                    return Err(DeployError::refused(
                        "apigateway:CreateApiKey",
                        &change.name,
                        "the primary region's generated key does not exist yet (or the primary could not be read)",
                    ));
                }
                api_key::apply(
                    &global.region(region)?.apigateway,
                    change,
                    want,
                    have,
                    value.as_deref(),
                )
                .await
            }
            Kind::UsagePlan => {
                usage_plan::apply(&global.region(region)?.apigateway, change, want, have).await
            }
            Kind::UsagePlanKey => {
                usage_plan::apply_key(&global.region(region)?.apigateway, change, want, have).await
            }
            Kind::Certificate => {
                let others: Vec<aws_sdk_acm::Client> = global
                    .regions
                    .iter()
                    .filter(|(name, _)| Some(name.as_str()) != region)
                    .map(|(_, c)| c.acm.clone())
                    .collect();
                certificate::apply(
                    &global.region(region)?.acm,
                    &global.route53,
                    &others,
                    change,
                    want,
                    have,
                )
                .await
            }
            Kind::DomainName => {
                domain_name::apply(&global.region(region)?.apigateway, change, want, have).await
            }
            Kind::BasePathMapping => {
                domain_name::apply_mapping(&global.region(region)?.apigateway, change, want, have)
                    .await
            }
            Kind::HealthCheck => {
                health_check::apply(&global.route53, change, want, have, observed).await
            }
            Kind::EcsCluster => {
                cluster::apply(&global.region(region)?.ecs, change, want, have).await
            }
            Kind::LogGroup => {
                log_group::apply(&global.region(region)?.logs, change, want, have).await
            }
            Kind::TaskDefinition => {
                task_definition::apply(&global.region(region)?.ecs, change, want, have).await
            }
            Kind::EcsService => {
                let c = global.region(region)?;
                let start = std::time::Duration::from_secs(
                    self.deployment.file.replicator.start_timeout_seconds,
                );
                service::apply(&c.ecs, &c.ec2, change, want, have, start).await
            }
            Kind::Alarm => {
                alarm::apply(&global.region(region)?.cloudwatch, change, want, have).await
            }
            Kind::DnsRecord => dns_record::apply(&global.route53, change, want, have).await,
        }
    }

    /// Applies `plan`'s changes in order, re-observing each changed kind so that the next change
    /// sees its references. Progress lines go to `progress`.
    async fn apply_plan(
        &self,
        plan: &Plan,
        observed: &mut Vec<Resource>,
        desired: &[Resource],
        progress: &mut dyn Write,
        applied: &mut Vec<Change>,
    ) -> Result<(), DeployError> {
        for change in &plan.changes {
            let region = change.region.as_deref();
            let resolved = references(observed);
            let want = find(desired, change.kind, region, &change.name)
                .map(|w| resolve(std::slice::from_ref(w), &resolved).remove(0));
            let have = find(observed, change.kind, region, &change.name).cloned();
            if let Some(missing) = want.as_ref().and_then(unresolved) {
                // What it refers to is made later in this round (the permission of a new API).
                let _ = writeln!(
                    progress,
                    "{} ... waits for {missing} (next round)",
                    describe(change)
                );
                continue;
            }
            if matches!(change.action, Action::Delete | Action::Release) && have.is_none() {
                // Gone since the plan was made: an earlier change replaced it (a record whose routing
                // changed is deleted and recreated in one Route 53 batch).
                let _ = writeln!(progress, "{} ... already gone", describe(change));
                continue;
            }
            let started = Instant::now();
            let _ = write!(progress, "{} ... ", describe(change));
            let _ = progress.flush();
            let result = self
                .apply(change, want.as_ref(), have.as_ref(), observed)
                .await;
            match &result {
                Ok(()) => {
                    let _ = writeln!(progress, "done ({:.1} s)", started.elapsed().as_secs_f64());
                }
                Err(_) => {
                    let _ = writeln!(progress, "FAILED");
                }
            }
            result?;
            applied.push(change.clone());
            self.refresh(observed, change.kind, region, &change.name)
                .await?;
        }
        Ok(())
    }

    /// Observes, plans and applies until the plan for `desired` is empty; returns what was applied,
    /// the rounds run (the last found nothing to do) and what exists at the end. `action` names the
    /// command in the error when the plan does not empty within [`MAX_ROUNDS`].
    async fn converge(
        &self,
        desired: &[Resource],
        action: &str,
        policy: DataPolicy,
        only: Option<&str>,
        reach: Reach,
        progress: &mut dyn Write,
    ) -> Result<(Vec<Change>, usize, Vec<Resource>), DeployError> {
        let mut applied = Vec::new();
        let mut round = 0;
        loop {
            round += 1;
            let (mut observed, _) = self.observe_with(reach, only).await?;
            let mut plan = reconcile(desired, &observed, &self.scope, &self.targets);
            if let Some(region) = only {
                plan.changes
                    .retain(|c| self.in_region(c, region, desired, &observed));
            }
            // A health check re-targeted at its region's own name waits, one round, for that
            // name's record (made in this round's DNS step): probing a name that does not resolve
            // yet reads the region unhealthy, and with both regions so Route 53 answers with the
            // primary whatever the switches say.
            plan.changes
                .retain(|c| !waits_for_its_name(c, desired, &observed));
            let (plan, refused) = with_data_policy(plan, &observed, policy, &self.disposable());
            if !refused.is_empty() {
                return Err(data_loss_refusal(action, &refused, &observed));
            }
            if plan.is_empty() {
                return Ok((applied, round, observed));
            }
            if round > MAX_ROUNDS {
                let left: Vec<String> = plan.changes.iter().map(describe).collect();
                return Err(DeployError::refused(
                    action,
                    "deployment",
                    format!(
                        "still not done after {MAX_ROUNDS} rounds; left: {}",
                        left.join("; ")
                    ),
                ));
            }
            self.apply_plan(&plan, &mut observed, desired, progress, &mut applied)
                .await?;
        }
    }

    /// Whether `change` is part of reconciling `region` alone: the region's own resources (the
    /// regional IAM roles and Route 53 health checks included), the hosted zone, and the DNS record
    /// that points at the region.
    fn in_region(
        &self,
        change: &Change,
        region: &str,
        desired: &[Resource],
        observed: &[Resource],
    ) -> bool {
        match (&change.region, change.kind) {
            (Some(r), _) => r == region,
            (None, Kind::DnsRecord) => {
                let record = find(desired, Kind::DnsRecord, None, &change.name)
                    .or_else(|| find(observed, Kind::DnsRecord, None, &change.name));
                let prefix = crate::names::prefix(&self.scope.app, &self.scope.stage);
                record
                    .and_then(|r| r.props.get("set_identifier"))
                    .and_then(Value::as_str)
                    .and_then(|id| {
                        crate::names::parse_set_identifier(&prefix, id, &self.deployment.regions)
                    })
                    == Some(region)
            }
            (None, _) => true,
        }
    }

    /// `up`: applies plans until one is empty; with `only`, for that region (and the global
    /// parts) alone, never calling the other region. Returns what was done.
    pub async fn up(
        &self,
        policy: DataPolicy,
        only: Option<&str>,
        rollout: Rollout<'_>,
        progress: &mut dyn Write,
    ) -> Result<UpReport, DeployError> {
        if let Some(region) = only
            && !self.deployment.regions.iter().any(|r| r == region)
        {
            return Err(DeployError::refused(
                "up",
                region,
                format!(
                    "--region must be one of the configured regions: {} or {}",
                    self.deployment.regions[0], self.deployment.regions[1]
                ),
            ));
        }
        let gate = match (rollout, only) {
            (Rollout::RegionByRegion(gate), None) => gate,
            // One region, or both at once: one pass, unchecked.
            _ => {
                let (applied, rounds, observed) = self
                    .converge(&self.desired, "up", policy, only, Reach::All, progress)
                    .await?;
                return Ok(UpReport {
                    applied,
                    rounds,
                    endpoints: self.endpoints(&observed),
                });
            }
        };
        let serving = self.serving_now().await.map_err(|e| DeployError {
            message: format!(
                "cannot tell which region serves, so cannot choose which to change first: {}",
                e.message
            ),
            ..e
        })?;
        let order = crate::rollout::order(&self.deployment.regions, &serving);
        // Each region's `live` alias as last read: a region's pass changes only its own.
        let mut lives = [
            self.live_alias(&order[0]).await?,
            self.live_alias(&order[1]).await?,
        ];
        let mut applied = Vec::new();
        let mut rounds = 0;
        let mut done: Vec<Resource> = Vec::new();
        for (i, region) in order.iter().enumerate() {
            let other = &order[1 - i];
            writeln!(progress, "up: rolling out to {region} ({} of 2)", i + 1).ok();
            let before = match lives[i].take() {
                Some(live) => Some(live),
                None => self.baseline_alias(region, progress).await?,
            };
            let converged = self
                .converge(
                    &self.desired,
                    "up",
                    policy,
                    Some(region),
                    Reach::Rollout,
                    progress,
                )
                .await;
            let (changes, n, observed) = match converged {
                Ok(done) => done,
                Err(mut e) => {
                    // The alias may have moved before the failure: never leave it on a version
                    // nobody checked.
                    if let Some(undo) = self.undo_unchecked(region, before.as_ref()).await {
                        e.message = format!("{}; {undo}", e.message);
                    }
                    return Err(e);
                }
            };
            rounds += n;
            let touched = changes
                .iter()
                .any(|c| c.region.as_deref() == Some(region.as_str()));
            applied.extend(changes);
            done.retain(|r| r.region.as_deref() != Some(region.as_str()) && r.region.is_some());
            done.extend(observed.iter().cloned());
            // Also checked when nothing changed but it runs other code than the other region: an
            // earlier `up` stopped (Ctrl-C, an error) after moving its alias, before its check.
            lives[i] = self.live_alias(region).await?;
            let live = lives[i].as_ref();
            let differs = code_of(live) != code_of(lives[1 - i].as_ref());
            if !touched && !differs {
                continue;
            }
            writeln!(
                progress,
                "up: checking {region}: its health check on the new version, then a smoke request"
            )
            .ok();
            let verdict = match self.gate_target(region, &observed).await {
                Ok(target) => gate.check(&target).await,
                Err(e) => Err(format!("it cannot be checked: {e}")),
            };
            if let Err(why) = verdict {
                let rollback = match self.roll_back(region, before.as_ref(), live).await {
                    Ok(said) => said,
                    Err(e) => format!(
                        "its alias could NOT be moved back ({e}): it still runs the new version"
                    ),
                };
                let rest = if i == 0 {
                    format!("; {other} was not changed")
                } else {
                    format!("; {other} runs the new version (it passed its check)")
                };
                return Err(DeployError {
                    action: "up".to_owned(),
                    resource: region.clone(),
                    message: format!(
                        "{region} failed its check after the rollout: {why}; {rollback}{rest}"
                    ),
                    unreachable: false,
                    hint: Some(
                        "fix the build (or the config) and run up again; `up --parallel` skips the \
                         checks"
                            .to_owned(),
                    ),
                });
            }
            writeln!(progress, "up: {region} passed its check").ok();
        }
        Ok(UpReport {
            applied,
            rounds,
            endpoints: self.endpoints(&done),
        })
    }

    /// The region's `live` alias as it is now (`None` without function or alias).
    async fn live_alias(&self, region: &str) -> Result<Option<Resource>, DeployError> {
        let Some(function) = self.function_name(region) else {
            return Ok(None);
        };
        let lambda = &self.clients.region(Some(region))?.lambda;
        alias::observe(lambda, region, function, crate::names::LIVE_ALIAS).await
    }

    fn function_name(&self, region: &str) -> Option<&str> {
        self.desired
            .iter()
            .find(|r| r.kind == Kind::LambdaAlias && r.region.as_deref() == Some(region))
            .and_then(|r| r.props.get("function"))
            .and_then(Value::as_str)
    }

    /// A function deployed before the alias existed (an earlier version of the deployer): its
    /// current code is published and named by `live` before anything changes, so that a failed
    /// rollout has a version to go back to. `None` when the region has no function yet.
    async fn baseline_alias(
        &self,
        region: &str,
        progress: &mut dyn Write,
    ) -> Result<Option<Resource>, DeployError> {
        let Some(function) = self.function_name(region) else {
            return Ok(None);
        };
        let lambda = &self.clients.region(Some(region))?.lambda;
        if function::observe(lambda, region, function).await?.is_none() {
            return Ok(None);
        }
        let id = format!("LambdaAlias/{region}/{}", crate::names::LIVE_ALIAS);
        let published = lambda
            .publish_version()
            .function_name(function)
            .description("the code running before the first region-by-region rollout")
            .send()
            .await
            .map_err(|e| DeployError::aws("lambda:PublishVersion", &id, &e))?;
        let version = published.version().unwrap_or_default();
        alias::point(
            lambda,
            function,
            crate::names::LIVE_ALIAS,
            version,
            false,
            None,
            &id,
        )
        .await?;
        writeln!(
            progress,
            "up: {region}: the running function is version {version} behind alias `{}` (what a \
             failed rollout goes back to)",
            crate::names::LIVE_ALIAS
        )
        .ok();
        self.live_alias(region).await
    }

    /// After a failed converge: moves the alias back if it moved since `before`; what it did.
    async fn undo_unchecked(&self, region: &str, before: Option<&Resource>) -> Option<String> {
        let now = match self.live_alias(region).await {
            Ok(now) => now,
            Err(e) => return Some(format!("{region}'s alias could not be read ({e})")),
        };
        if alias::version(before) == alias::version(now.as_ref()) {
            return None;
        }
        Some(match self.roll_back(region, before, now.as_ref()).await {
            Ok(said) => format!("{region}'s rollout stopped unchecked: {said}"),
            Err(e) => format!(
                "{region}'s alias could NOT be moved back ({e}): it runs a version nobody checked"
            ),
        })
    }

    /// Moves the region's alias back to the version it named before the rollout, unless it changed
    /// since `after` was read (another `up`); says what it did.
    async fn roll_back(
        &self,
        region: &str,
        before: Option<&Resource>,
        after: Option<&Resource>,
    ) -> Result<String, DeployError> {
        let (was, now) = (alias::version(before), alias::version(after));
        match (was, now) {
            (Some(was), Some(now)) if was != now => {
                let function = crate::resources::observed_str(after, "function");
                let revision = after
                    .and_then(|a| a.props.get("revision_id"))
                    .and_then(Value::as_str);
                let lambda = &self.clients.region(Some(region))?.lambda;
                let id = format!("LambdaAlias/{region}/{}", crate::names::LIVE_ALIAS);
                alias::point(
                    lambda,
                    function,
                    crate::names::LIVE_ALIAS,
                    &was,
                    true,
                    revision,
                    &id,
                )
                .await?;
                Ok(format!(
                    "rolled back: its alias `{}` is on version {was} again (the new version {now} \
                     stays published, unused)",
                    crate::names::LIVE_ALIAS
                ))
            }
            (Some(_), Some(_)) => Ok(
                "the Lambda version did not change, so there is nothing to roll back (the \
                 change that broke it is elsewhere in the config)"
                    .to_owned(),
            ),
            (None, _) => {
                Ok("nothing to roll back to: the region had no earlier version".to_owned())
            }
            (Some(was), None) => Ok(format!("the alias is gone; it was on version {was}")),
        }
    }

    /// What the gate checks in `region`, from what was observed after its rollout.
    async fn gate_target(
        &self,
        region: &str,
        observed: &[Resource],
    ) -> Result<crate::rollout::Target, DeployError> {
        let check = self
            .health_check(observed, region, CheckRole::Endpoint)
            .map(|c| {
                // Route 53's defaults when a field is missing.
                let int =
                    |f: &str, default| c.props.get(f).and_then(Value::as_u64).unwrap_or(default);
                crate::rollout::CheckRef {
                    id: crate::resources::observed_str(Some(c), "id").to_owned(),
                    interval: int("request_interval", 30),
                    threshold: int("failure_threshold", 3),
                    inverted: c.props.get("inverted").and_then(Value::as_bool) == Some(true),
                }
            });
        Ok(crate::rollout::Target {
            region: region.to_owned(),
            route53: self.clients.route53.clone(),
            check,
            base_url: self
                .endpoints(observed)
                .regional
                .get(region)
                .cloned()
                .flatten(),
            health_path: self.deployment.file.health_check.path.clone(),
            // Every region's key has the secondary's value (the primary's, when generated).
            api_key: Some(
                self.api_key_value(Some(&self.deployment.regions[1]), observed)
                    .await?
                    .ok_or_else(|| {
                        DeployError::refused(
                            "up",
                            region,
                            "the API key's value could not be read for the smoke request",
                        )
                    })?,
            ),
        })
    }

    /// The regions DNS sends clients to now, from Route 53 alone (health checks and records).
    async fn serving_now(&self) -> Result<Vec<String>, DeployError> {
        if self.deployment.file.dns.create_hosted_zone
            && self
                .observe_group(Kind::HostedZone, None, &[])
                .await?
                .is_empty()
        {
            // A first deployment: the zone `up` creates does not exist yet.
            return Ok(Vec::new());
        }
        let observed = self.route53_view().await?;
        let mut healthy = Vec::new();
        for region in &self.deployment.regions {
            let health = self.region_health(&observed, region).await?;
            healthy.push((region.clone(), health.map(|h| h.healthy)));
        }
        let records = observed.iter().any(|r| r.kind == Kind::DnsRecord);
        Ok(serving(self.deployment.routing, &healthy, records))
    }

    /// The deployment's health checks and the public name's records (Route 53 only).
    async fn route53_view(&self) -> Result<Vec<Resource>, DeployError> {
        let f = &self.deployment.file;
        let mut found =
            health_check::observe(&self.clients.route53, &self.scope, &self.deployment.regions)
                .await?;
        found.extend(
            dns_record::observe(
                &self.clients.route53,
                &self.scope,
                &self.deployment.regions,
                &f.dns.hosted_zone,
                &f.dns.domain_name,
            )
            .await?,
        );
        Ok(found)
    }

    /// `down`: deletes everything of this app and stage (in reverse dependency order), nothing
    /// else; tables as `policy` allows (adopted ones are released unless asked).
    pub async fn down(
        &self,
        policy: DataPolicy,
        progress: &mut dyn Write,
    ) -> Result<Vec<Change>, DeployError> {
        let (deleted, _, _) = self
            .converge(&[], "down", policy, None, Reach::All, progress)
            .await?;
        Ok(deleted)
    }

    fn endpoints(&self, observed: &[Resource]) -> Endpoints {
        let f = &self.deployment.file;
        let prefix = crate::names::prefix(&f.app, &f.stage);
        let regional = self
            .deployment
            .regions
            .iter()
            .map(|r| {
                let url = find(observed, Kind::RestApi, Some(r), &prefix)
                    .and_then(|api| api.props.get("host"))
                    .and_then(Value::as_str)
                    .map(|host| format!("https://{host}/live"));
                (r.clone(), url)
            })
            .collect();
        Endpoints {
            public: format!("https://{}/", f.dns.domain_name),
            regional,
        }
    }

    /// The region's endpoint check or switch, by its name (never a stale one left by an
    /// interrupted replacement, which is observed under `<name>/<id>`).
    fn health_check<'a>(
        &self,
        observed: &'a [Resource],
        region: &str,
        role: CheckRole,
    ) -> Option<&'a Resource> {
        let prefix = crate::names::prefix(&self.scope.app, &self.scope.stage);
        let name = match role {
            CheckRole::Endpoint => crate::names::endpoint_check(&prefix, region),
            CheckRole::Switch => crate::names::switch_check(&prefix, region),
        };
        find(observed, Kind::HealthCheck, Some(region), &name)
    }

    /// Route 53's view of a region: its endpoint check's checkers (the real health) and its switch.
    async fn region_health(
        &self,
        observed: &[Resource],
        region: &str,
    ) -> Result<Option<Health>, DeployError> {
        let Some(check) = self.health_check(observed, region, CheckRole::Endpoint) else {
            return Ok(None);
        };
        let id = crate::resources::observed_str(Some(check), "id");
        let (healthy, reporting) = health_check::checker_status(&self.clients.route53, id).await?;
        let inverted = check
            .props
            .get("inverted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let switch = self.health_check(observed, region, CheckRole::Switch);
        let switch_on = switch.map(|s| {
            s.props.get("switch_on").and_then(Value::as_bool) == Some(true)
                && !s
                    .props
                    .get("inverted")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
        });
        let switch_id = switch.map(|s| crate::resources::observed_str(Some(s), "id").to_owned());
        // The switch counts only once the region's record uses it (an `up` of this version that
        // was interrupted can leave the record on the endpoint check).
        let switch_in_dns = switch_id.is_some()
            && self.record_check(observed, region).as_deref() == switch_id.as_deref();
        let endpoint_healthy = effective_health(healthy, reporting, inverted);
        Ok(Some(Health {
            id: id.to_owned(),
            checkers_healthy: healthy,
            checkers_reporting: reporting,
            inverted,
            endpoint_healthy,
            switch_id,
            switch_on,
            switch_in_dns,
            healthy: endpoint_healthy && (!switch_in_dns || switch_on.unwrap_or(true)),
        }))
    }

    /// The health check the region's public record uses, from observed records.
    fn record_check(&self, observed: &[Resource], region: &str) -> Option<String> {
        let prefix = crate::names::prefix(&self.scope.app, &self.scope.stage);
        let id = crate::names::set_identifier(&prefix, region);
        let domain = &self.deployment.file.dns.domain_name;
        observed
            .iter()
            .filter(|r| r.kind == Kind::DnsRecord)
            .filter(|r| r.name.split_once('/').is_some_and(|(d, _)| d == domain))
            .find(|r| r.props.get("set_identifier").and_then(Value::as_str) == Some(id.as_str()))
            .and_then(|r| r.props.get("health_check"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// `status`: what exists, whether it matches the config, each region's health, and which region
    /// DNS sends clients to.
    pub async fn status(&self) -> Result<Status, DeployError> {
        let (observed, unreachable) = self.observe_with(Reach::Tolerant, None).await?;
        // With a region unobserved, every one of its resources would count as missing.
        let pending = if self.artifact.is_some() && unreachable.is_empty() {
            Some(
                reconcile(&self.desired, &observed, &self.scope, &self.targets)
                    .changes
                    .len(),
            )
        } else {
            None
        };
        let endpoints = self.endpoints(&observed);
        let mut regions = BTreeMap::new();
        for region in &self.deployment.regions {
            let wanted: Vec<&Resource> = self
                .desired
                .iter()
                .filter(|r| r.region.as_deref() == Some(region))
                .collect();
            let present = wanted
                .iter()
                .filter(|w| find(&observed, w.kind, Some(region), &w.name).is_some())
                .count();
            let health = self.region_health(&observed, region).await?;
            let replicators = observed
                .iter()
                .filter(|r| r.kind == Kind::EcsService && r.region.as_deref() == Some(region))
                .map(|s| Replicator {
                    service: s.name.clone(),
                    desired: s
                        .props
                        .get("desired_count")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    running: s
                        .props
                        .get("running_count")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                })
                .collect();
            let live = observed
                .iter()
                .find(|r| r.kind == Kind::LambdaAlias && r.region.as_deref() == Some(region));
            let latest = observed
                .iter()
                .find(|r| r.kind == Kind::LambdaFunction && r.region.as_deref() == Some(region));
            regions.insert(
                region.clone(),
                RegionStatus {
                    live_version: alias::version(live),
                    undeployed_build: live.is_some() && code_of(live) != code_of(latest),
                    unreachable: unreachable.get(region).cloned(),
                    resources_present: present,
                    resources_wanted: wanted.len(),
                    endpoint: endpoints.regional.get(region).cloned().flatten(),
                    health,
                    replicators,
                },
            );
        }
        let healthy: Vec<(String, Option<bool>)> = self
            .deployment
            .regions
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    regions
                        .get(r)
                        .and_then(|s: &RegionStatus| s.health.as_ref())
                        .map(|h| h.healthy),
                )
            })
            .collect();
        let records = observed
            .iter()
            .filter(|r| r.kind == Kind::DnsRecord)
            .count();
        Ok(Status {
            app: self.scope.app.clone(),
            stage: self.scope.stage.clone(),
            routing: match self.deployment.routing {
                Routing::Failover => "failover".to_owned(),
                Routing::Latency => "latency".to_owned(),
            },
            pending_changes: pending,
            public_endpoint: endpoints.public,
            dns_records: records,
            serving: serving(self.deployment.routing, &healthy, records > 0),
            regions,
            expected_failover: self.deployment.file.failover_time(),
        })
    }

    /// `failover --to REGION` (`Some`) turns every other region's switch off, so that Route 53
    /// answers with `REGION` whatever the others' real health; `failback` (`None`) turns every
    /// switch on again, so that Route 53 routes by health. Both also clear an inversion that an
    /// earlier version's `failover` left on an endpoint check. Needs nothing but Route 53 (a
    /// region that is down does not stop it). Returns what changed, and the target's real health.
    pub async fn failover(&self, to: Option<&str>) -> Result<FailoverReport, DeployError> {
        if let Some(to) = to
            && !self.deployment.regions.iter().any(|r| r == to)
        {
            return Err(DeployError::refused(
                "failover",
                to,
                format!(
                    "--to must be one of the configured regions: {} or {}",
                    self.deployment.regions[0], self.deployment.regions[1]
                ),
            ));
        }
        // Health checks are global: one listing serves both regions. The switches move traffic
        // only when the records use them: read the records too (Route 53).
        let records_and_checks = self.route53_view().await?;
        let found: Vec<Resource> = records_and_checks
            .iter()
            .filter(|r| r.kind == Kind::HealthCheck)
            .cloned()
            .collect();
        let mut plan = Vec::new();
        for region in &self.deployment.regions {
            let switch_id = self
                .health_check(&found, region, CheckRole::Switch)
                .map(|s| crate::resources::observed_str(Some(s), "id").to_owned());
            let record = self.record_check(&records_and_checks, region);
            if switch_id.is_none() || record != switch_id {
                return Err(DeployError::refused(
                    "failover",
                    region,
                    "the region's DNS record does not use its health check switch yet (an `up` of \
                     this version has not finished, or there are no records): run `deployer up` \
                     (or `deployer up --region` a region that is reachable) first; nothing was \
                     changed",
                ));
            }
        }
        for region in &self.deployment.regions {
            let (Some(endpoint), Some(switch)) = (
                self.health_check(&found, region, CheckRole::Endpoint),
                self.health_check(&found, region, CheckRole::Switch),
            ) else {
                return Err(DeployError::refused(
                    "failover",
                    region,
                    "this region has no health check switch of the deployment (created by \
                     `deployer up` since version 0.2); run `deployer up` first",
                ));
            };
            plan.push((region.clone(), endpoint.clone(), switch.clone()));
        }
        let mut changed = Vec::new();
        let inverted =
            |r: &Resource| r.props.get("inverted").and_then(Value::as_bool) == Some(true);
        for (region, endpoint, switch) in &plan {
            let want_on = to.is_none_or(|t| t == region);
            let have_on = switch.props.get("switch_on").and_then(Value::as_bool) == Some(true);
            let switch_id = crate::resources::observed_str(Some(switch), "id");
            let mut change = SwitchChange {
                region: region.clone(),
                switch_on: want_on,
                switch_changed: false,
                inversion_cleared: false,
            };
            if want_on != have_on {
                let children = health_check::children_of(switch);
                health_check::set_switch(&self.clients.route53, switch_id, &children, want_on)
                    .await?;
                change.switch_changed = true;
            }
            for check in [endpoint, switch] {
                if inverted(check) {
                    let id = crate::resources::observed_str(Some(check), "id");
                    health_check::set_inverted(&self.clients.route53, id, false).await?;
                    change.inversion_cleared = true;
                }
            }
            if change.switch_changed || change.inversion_cleared {
                changed.push(change);
            }
        }
        let target_healthy = match to {
            Some(to) => self
                .region_health(&found, to)
                .await?
                .map(|h| h.endpoint_healthy),
            None => None,
        };
        Ok(FailoverReport {
            changed,
            target_healthy,
        })
    }
}

/// One region's switch as `failover` left it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwitchChange {
    /// The region.
    pub region: String,
    /// The switch is now on (the region serves while its endpoint is healthy) or off.
    pub switch_on: bool,
    /// The switch was changed (else only an old inversion was cleared).
    pub switch_changed: bool,
    /// An inversion left by an earlier version's `failover` was cleared.
    pub inversion_cleared: bool,
}

/// What `failover` or `failback` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverReport {
    /// The regions whose checks changed.
    pub changed: Vec<SwitchChange>,
    /// With `--to`: the target's real health now (`None`: no checkers report yet).
    pub target_healthy: Option<bool>,
}

/// The first reference in `r`'s properties that is not resolved yet.
fn unresolved(r: &Resource) -> Option<String> {
    fn walk(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if s.starts_with("ref:") => {
                Some(s.trim_start_matches("ref:").to_owned())
            }
            Value::Array(items) => items.iter().find_map(walk),
            Value::Object(map) => map.values().find_map(walk),
            _ => None,
        }
    }
    r.props.values().find_map(walk)
}

/// The code an observed function (its `$LATEST`) or alias (its version) runs.
fn code_of(r: Option<&Resource>) -> Option<&Value> {
    r.and_then(|r| r.props.get("code_sha256"))
}

/// Route 53's view of a target: healthy when more than 18% of the reporting checkers say so, and
/// the opposite when the check is inverted.
pub fn effective_health(healthy: usize, reporting: usize, inverted: bool) -> bool {
    let ok = reporting > 0 && healthy * 100 > reporting * 18;
    ok != inverted
}

/// Which regions DNS answers with, given each region's effective health (`None`: no health check).
/// Failover: the primary while it is healthy, else the secondary while that is healthy; with both
/// unhealthy Route 53 answers with the primary. Latency: every healthy region (all when none is).
pub fn serving(routing: Routing, health: &[(String, Option<bool>)], records: bool) -> Vec<String> {
    if !records {
        return Vec::new();
    }
    let healthy = |h: &Option<bool>| h.unwrap_or(true);
    match routing {
        Routing::Failover => {
            let first_healthy = health.iter().find(|(_, h)| healthy(h));
            match first_healthy {
                Some((r, _)) => vec![r.clone()],
                None => health
                    .first()
                    .map(|(r, _)| vec![r.clone()])
                    .unwrap_or_default(),
            }
        }
        Routing::Latency => {
            let up: Vec<String> = health
                .iter()
                .filter(|(_, h)| healthy(h))
                .map(|(r, _)| r.clone())
                .collect();
            if up.is_empty() {
                health.iter().map(|(r, _)| r.clone()).collect()
            } else {
                up
            }
        }
    }
}

/// A region's health as Route 53 sees it: the endpoint's real health and the switch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// The endpoint check's ID.
    pub id: String,
    /// Checkers whose last observation succeeded.
    pub checkers_healthy: usize,
    /// Checkers reporting.
    pub checkers_reporting: usize,
    /// The endpoint check is inverted (an earlier version's `failover`, or a drill).
    pub inverted: bool,
    /// What Route 53 concludes of the endpoint check: the region's real health.
    pub endpoint_healthy: bool,
    /// The switch check's ID (`None`: not created yet).
    pub switch_id: Option<String>,
    /// The switch: on (serves while healthy), off (`failover` sent traffic away); `None`: no switch.
    pub switch_on: Option<bool>,
    /// The region's DNS record uses the switch (else the endpoint check: the switch has no effect
    /// until `up` finishes).
    pub switch_in_dns: bool,
    /// What the DNS records see: the endpoint healthy and the switch on.
    pub healthy: bool,
}

/// One replicator service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replicator {
    /// The service's name (`...-replicator-<source>-to-<target>`).
    pub service: String,
    /// Desired tasks.
    pub desired: i64,
    /// Running tasks.
    pub running: i64,
}

/// One region's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionStatus {
    /// Why the region's APIs could not be observed (`None`: they answered). Its health still
    /// comes from Route 53; its resources are then not counted.
    pub unreachable: Option<String>,
    /// Resources of the config that exist in the region.
    pub resources_present: usize,
    /// Resources the config wants in the region.
    pub resources_wanted: usize,
    /// The API stage URL.
    pub endpoint: Option<String>,
    /// The health check.
    pub health: Option<Health>,
    /// Replicator services running in this region.
    pub replicators: Vec<Replicator>,
    /// What API Gateway invokes: the version the `live` alias names (`None` without one).
    pub live_version: Option<String>,
    /// Whether the function's `$LATEST` holds other code than the live version (a rollout that
    /// was rolled back, or one not finished).
    pub undeployed_build: bool,
}

/// What `status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// App.
    pub app: String,
    /// Stage.
    pub stage: String,
    /// failover or latency.
    pub routing: String,
    /// Changes `up` would make (`None`: not compared, the artifact was not readable).
    pub pending_changes: Option<usize>,
    /// The public URL.
    pub public_endpoint: String,
    /// Route 53 records of the public name.
    pub dns_records: usize,
    /// Regions DNS answers with now.
    pub serving: Vec<String>,
    /// Per region.
    pub regions: BTreeMap<String, RegionStatus>,
    /// The worst case from a region failing to clients moving, for these settings.
    pub expected_failover: crate::config::FailoverTime,
}

impl Status {
    /// `deployer status`'s exit code: 5 when no region serves or a serving region reads unhealthy,
    /// else 6 when a region could not be observed, else 4 when `up` has changes to make, else 0 (a
    /// deployment that could not be compared, its artifact unreadable, is not counted as out of
    /// sync).
    pub fn exit_code(&self) -> u8 {
        let unhealthy = self.serving.is_empty()
            || self.serving.iter().any(|r| {
                self.regions
                    .get(r)
                    .and_then(|s| s.health.as_ref())
                    .is_some_and(|h| !h.healthy)
            });
        if unhealthy {
            5
        } else if self.regions.values().any(|r| r.unreachable.is_some()) {
            6
        } else if self.pending_changes.is_some_and(|n| n > 0) {
            4
        } else {
            0
        }
    }
}

/// `create Table/us-east-1/todos`, `update HealthCheck/... (failure_threshold)`.
pub fn describe(change: &Change) -> String {
    let id = format!(
        "{:?}/{}/{}",
        change.kind,
        change.region.as_deref().unwrap_or("global"),
        change.name
    );
    match &change.action {
        Action::Create => format!("create {id}"),
        Action::Update { changes } => format!(
            "update {id} ({})",
            changes
                .iter()
                .map(|c| c.field.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::Replace { changes } => format!(
            "replace {id} ({})",
            changes
                .iter()
                .map(|c| c.field.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::Delete => format!("delete {id}"),
        Action::Release => format!("release {id} (untag; its data stays)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(kind: Kind, region: Option<&str>, name: &str, props: Value) -> Resource {
        Resource {
            kind,
            region: region.map(str::to_owned),
            name: name.to_owned(),
            props: props
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_check_moves_to_its_regions_name_only_once_the_name_resolves() {
        let record = res(Kind::DnsRecord, None, "us-east-1.api.x/probe", json!({}));
        let change = Change {
            kind: Kind::HealthCheck,
            region: Some("us-east-1".to_owned()),
            name: "a-b-us-east-1".to_owned(),
            action: Action::Update {
                changes: vec![crate::plan::FieldChange {
                    field: "target".to_owned(),
                    from: json!("abc.execute-api.us-east-1.amazonaws.com"),
                    to: json!("us-east-1.api.x"),
                }],
            },
        };
        let desired = vec![record.clone()];
        assert!(waits_for_its_name(&change, &desired, &[]));
        assert!(!waits_for_its_name(&change, &desired, &[record]));
        // Nothing else waits.
        let threshold = Change {
            action: Action::Update {
                changes: vec![crate::plan::FieldChange {
                    field: "failure_threshold".to_owned(),
                    from: json!(3),
                    to: json!(1),
                }],
            },
            ..change.clone()
        };
        assert!(!waits_for_its_name(&threshold, &desired, &[]));
    }

    #[test]
    fn tables_are_deleted_only_when_allowed_and_adopted_ones_are_released() {
        let tagged = json!({"tags": {"tworegion:app": "todos", "tworegion:stage": "dev"}});
        let mut created = tagged.clone();
        created["created_by_deployer"] = json!(true);
        let observed = vec![
            res(Kind::Table, Some("r"), "made", created),
            res(Kind::Table, Some("r"), "adopted", tagged),
            res(Kind::LogGroup, Some("r"), "logs", json!({})),
        ];
        let delete = |kind, name: &str| Change {
            kind,
            region: Some("r".to_owned()),
            name: name.to_owned(),
            action: Action::Delete,
        };
        let plan = Plan {
            changes: vec![
                delete(Kind::Table, "made"),
                delete(Kind::Table, "adopted"),
                delete(Kind::LogGroup, "logs"),
            ],
        };
        let actions = |policy: DataPolicy| {
            let (p, refused) = with_data_policy(plan.clone(), &observed, policy, &[]);
            let actions: Vec<Action> = p.changes.into_iter().map(|c| c.action).collect();
            let refused: Vec<String> = refused.into_iter().map(|c| c.name).collect();
            (actions, refused)
        };
        use Action::{Delete, Release};
        // By default: the created table is refused, the adopted one released, the rest deleted.
        assert_eq!(
            actions(DataPolicy::default()),
            (vec![Delete, Release, Delete], vec!["made".to_owned()])
        );
        let allow = DataPolicy {
            allow_data_loss: true,
            ..DataPolicy::default()
        };
        assert_eq!(actions(allow), (vec![Delete, Release, Delete], vec![]));
        let everything = DataPolicy {
            delete_adopted: true,
            ..allow
        };
        assert_eq!(actions(everything), (vec![Delete, Delete, Delete], vec![]));
        let keep = DataPolicy {
            keep_data: true,
            ..DataPolicy::default()
        };
        assert_eq!(actions(keep), (vec![Release, Release, Delete], vec![]));
        // A replacement of a table is never allowed through silently either.
        let replace = Plan {
            changes: vec![Change {
                action: Action::Replace { changes: vec![] },
                ..delete(Kind::Table, "made")
            }],
        };
        let (_, refused) = with_data_policy(replace, &observed, DataPolicy::default(), &[]);
        assert_eq!(refused.len(), 1);
        // The replicator's leases hold no user data: deleted (not released) without asking.
        let leases = Plan {
            changes: vec![delete(Kind::Table, "adopted")],
        };
        let (p, refused) = with_data_policy(
            leases,
            &observed,
            DataPolicy::default(),
            &["adopted".to_owned()],
        );
        assert_eq!(p.changes[0].action, Action::Delete);
        assert!(refused.is_empty());
    }

    fn scope() -> Scope {
        Scope {
            app: "todos".to_owned(),
            stage: "dev".to_owned(),
        }
    }

    #[test]
    fn references_use_each_kinds_identifier() {
        let observed = vec![
            res(
                Kind::RestApi,
                Some("r1"),
                "api",
                json!({"id": "abc", "host": "abc.h", "source_arn": "arn:x"}),
            ),
            res(
                Kind::LambdaRole,
                Some("r1"),
                "role",
                json!({"arn": "arn:role", "id": "ignored"}),
            ),
            res(
                Kind::DomainName,
                Some("r1"),
                "d",
                json!({"alias": {"dns_name": "x"}, "arn": "no"}),
            ),
            res(Kind::HealthCheck, Some("r1"), "hc", json!({"id": "hc-1"})),
        ];
        let r = references(&observed);
        assert_eq!(r[&reference_key(Kind::RestApi, "r1", "api")], json!("abc"));
        assert_eq!(
            r[&reference_attr_key(Kind::RestApi, "r1", "api", "host")],
            json!("abc.h")
        );
        assert_eq!(
            r[&reference_attr_key(Kind::RestApi, "r1", "api", "source_arn")],
            json!("arn:x")
        );
        assert_eq!(
            r[&reference_key(Kind::LambdaRole, "r1", "role")],
            json!("arn:role")
        );
        assert_eq!(
            r[&reference_key(Kind::DomainName, "r1", "d")],
            json!({"dns_name": "x"})
        );
        assert_eq!(
            r[&reference_key(Kind::HealthCheck, "r1", "hc")],
            json!("hc-1")
        );
    }

    #[test]
    fn only_our_resources_are_deleted_and_named_ones_are_adopted() {
        let tags = json!({"tworegion:app": "todos", "tworegion:stage": "dev"});
        let foreign = json!({"tworegion:app": "todos", "tworegion:stage": "prod"});
        let observed = vec![
            // Ours, no longer wanted: deleted.
            res(Kind::Table, Some("r1"), "old", json!({"tags": tags})),
            // Another stage's, not wanted: left alone.
            res(Kind::Table, Some("r1"), "prod", json!({"tags": foreign})),
            // Wanted by name, untagged: adopted (tags updated), never deleted.
            res(Kind::Table, Some("r1"), "todos", json!({"tags": {}})),
            // Untaggable, named by the deployment's targets: ours.
            res(
                Kind::LambdaPermission,
                Some("r1"),
                "p",
                json!({"function": "f"}),
            ),
            // Untaggable, not ours.
            res(
                Kind::LambdaPermission,
                Some("r1"),
                "other",
                json!({"function": "f"}),
            ),
        ];
        let desired = vec![res(Kind::Table, Some("r1"), "todos", json!({"tags": tags}))];
        let targets = vec![
            desired[0].clone(),
            res(Kind::LambdaPermission, Some("r1"), "p", json!({})),
        ];
        let p = reconcile(&desired, &observed, &scope(), &targets);
        let got: Vec<(String, String)> = p
            .changes
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    format!("{:?}", c.action)
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("todos".to_owned(), "Update".to_owned()),
                ("p".to_owned(), "Delete".to_owned()),
                ("old".to_owned(), "Delete".to_owned()),
            ]
        );
    }

    #[test]
    fn an_untagged_check_this_deployment_created_is_deleted() {
        let orphan = res(
            Kind::HealthCheck,
            Some("r1"),
            "todos-dev-r1/abc",
            json!({"tags": {}, "owned": true}),
        );
        let p = reconcile(&[], std::slice::from_ref(&orphan), &scope(), &[]);
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].action, Action::Delete);
    }

    #[test]
    fn a_given_certificate_is_used_but_never_deleted() {
        let given = res(
            Kind::Certificate,
            Some("r1"),
            "api.example.com",
            json!({"domain_name": "api.example.com", "given_arn": "arn:aws:acm:r1:1:certificate/x", "owned": false}),
        );
        let targets = vec![given.clone()];
        assert!(!is_ours(&given, &scope(), &targets));
        // `down`: nothing to delete.
        assert!(reconcile(&[], std::slice::from_ref(&given), &scope(), &targets).is_empty());
        // `up`: still compared (and found equal).
        assert!(reconcile(&targets, std::slice::from_ref(&given), &scope(), &targets).is_empty());
    }

    #[test]
    fn references_are_resolved_before_comparing() {
        let desired = vec![res(
            Kind::LambdaFunction,
            Some("r1"),
            "f",
            json!({"role": reference_key(Kind::LambdaRole, "r1", "role")}),
        )];
        let observed = vec![
            res(
                Kind::LambdaRole,
                Some("r1"),
                "role",
                json!({"arn": "arn:role"}),
            ),
            res(
                Kind::LambdaFunction,
                Some("r1"),
                "f",
                json!({"role": "arn:role"}),
            ),
        ];
        let p = reconcile(&desired, &observed, &scope(), &desired);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn route53_health_needs_over_18_percent_and_inversion_flips_it() {
        assert!(effective_health(8, 8, false));
        assert!(effective_health(2, 8, false)); // 25%
        assert!(!effective_health(1, 8, false)); // 12.5%
        assert!(!effective_health(0, 0, false));
        assert!(!effective_health(8, 8, true));
        assert!(effective_health(0, 8, true));
    }

    #[test]
    fn dns_serves_the_primary_until_it_is_unhealthy() {
        let h = |a: Option<bool>, b: Option<bool>| vec![("a".to_owned(), a), ("b".to_owned(), b)];
        assert_eq!(
            serving(Routing::Failover, &h(Some(true), Some(true)), true),
            ["a"]
        );
        assert_eq!(
            serving(Routing::Failover, &h(Some(false), Some(true)), true),
            ["b"]
        );
        assert_eq!(
            serving(Routing::Failover, &h(Some(false), Some(false)), true),
            ["a"]
        );
        assert_eq!(
            serving(Routing::Latency, &h(Some(true), Some(true)), true),
            ["a", "b"]
        );
        assert_eq!(
            serving(Routing::Latency, &h(Some(true), Some(false)), true),
            ["a"]
        );
        assert!(serving(Routing::Failover, &h(Some(true), Some(true)), false).is_empty());
    }
}
