//! The replicator's ECS service (Fargate) in each region where a replicator runs: the task
//! definition's revision, the task count, and the network the tasks run in (the config's
//! `[replicator.network.<region>]`, or the region's default VPC when none is given).
//!
//! # Network
//! With explicit subnets the tasks get no public IP: such subnets are expected to be private with
//! a NAT gateway or VPC endpoints, and a public IP would expose the tasks for nothing. The default
//! VPC has public subnets with an internet gateway and no NAT, so a task there needs a public IP to
//! reach ECR, CloudWatch Logs and DynamoDB at all; its `default` security group admits inbound
//! traffic only from itself, so the public IP opens nothing to the internet.
//!
//! # Lifecycle
//! Deletion scales the service to 0, deletes it (forced) and waits, bounded, until it is
//! `INACTIVE`. A `DRAINING` service is already being deleted: `observe` skips it like an `INACTIVE`
//! one, and a creation under its name first waits for it to finish.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, DeploymentCircuitBreaker, DeploymentConfiguration,
    DeploymentRolloutState, LaunchType, NetworkConfiguration, PropagateTags, Service, ServiceField,
    Tag,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, observed_str, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The value of `subnets` / `security_groups` in desired (and observed) props meaning "the
/// region's default VPC".
pub const DEFAULT_VPC: &str = "default VPC";

/// How long a deletion (or a creation behind a draining namesake) waits for `INACTIVE`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a creation retries while ECS cannot yet assume its service-linked role.
const LINKED_ROLE_WAIT: Duration = Duration::from_secs(90);

/// Whether a refused CreateService is ECS's service-linked role not being usable yet: ECS creates
/// `AWSServiceRoleForECS` on the account's first cluster, and services created in the next moments
/// fail with this message until IAM has propagated it; a retry a few seconds later succeeds.
fn linked_role_not_ready(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("InvalidParameterException")
        && message.is_some_and(|m| m.contains("Unable to assume the service linked role"))
}

/// `describe_services` takes at most this many services per call.
const DESCRIBE_BATCH: usize = 10;

/// The region's default network, or why there is none.
enum DefaultNetwork {
    /// Sorted subnet IDs (default-for-AZ subnets of the default VPC) and the `default` group.
    Found(Vec<String>, Vec<String>),
    /// What is missing, for the operator.
    Missing(String),
}

/// The default network from what EC2 listed: `default_vpcs` are the IDs of VPCs with `isDefault`,
/// `subnets` the default-for-AZ subnets of the first, `groups` its `default` security groups.
fn decide_default_network(
    region: &str,
    default_vpcs: &[String],
    mut subnets: Vec<String>,
    mut groups: Vec<String>,
) -> DefaultNetwork {
    let Some(vpc) = default_vpcs.first() else {
        return DefaultNetwork::Missing(format!("region {region} has no default VPC"));
    };
    if subnets.is_empty() {
        return DefaultNetwork::Missing(format!(
            "the default VPC {vpc} of region {region} has no default subnets"
        ));
    }
    if groups.is_empty() {
        return DefaultNetwork::Missing(format!(
            "the default VPC {vpc} of region {region} has no \"default\" security group"
        ));
    }
    subnets.sort();
    subnets.dedup();
    groups.sort();
    groups.dedup();
    DefaultNetwork::Found(subnets, groups)
}

fn ec2_filter(name: &str, value: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .values(value)
        .build()
}

async fn lookup_default_network(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
) -> Result<DefaultNetwork, DeployError> {
    let id = format!("DefaultVpc/{region}");
    let vpcs = ec2
        .describe_vpcs()
        .filters(ec2_filter("isDefault", "true"))
        .send()
        .await
        .map_err(|e| DeployError::aws("ec2:DescribeVpcs", &id, &e))?;
    let vpc_ids: Vec<String> = vpcs
        .vpcs()
        .iter()
        .filter_map(|v| v.vpc_id().map(str::to_owned))
        .collect();
    let Some(vpc) = vpc_ids.first() else {
        return Ok(decide_default_network(region, &vpc_ids, vec![], vec![]));
    };
    let mut subnets = Vec::new();
    let mut token = None;
    loop {
        let page = ec2
            .describe_subnets()
            .filters(ec2_filter("vpc-id", vpc))
            .filters(ec2_filter("default-for-az", "true"))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| DeployError::aws("ec2:DescribeSubnets", &id, &e))?;
        subnets.extend(
            page.subnets()
                .iter()
                .filter_map(|s| s.subnet_id().map(str::to_owned)),
        );
        match page.next_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => break,
        }
    }
    let groups = ec2
        .describe_security_groups()
        .filters(ec2_filter("vpc-id", vpc))
        .filters(ec2_filter("group-name", "default"))
        .send()
        .await
        .map_err(|e| DeployError::aws("ec2:DescribeSecurityGroups", &id, &e))?;
    let groups: Vec<String> = groups
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect();
    Ok(decide_default_network(region, &vpc_ids, subnets, groups))
}

/// The default VPC's network in `region`: its default-for-AZ subnets and its `default` security
/// group, both sorted. Fails with what to do when the region has no default VPC (or it lacks them).
pub async fn default_network(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
) -> Result<(Vec<String>, Vec<String>), DeployError> {
    match lookup_default_network(ec2, region).await? {
        DefaultNetwork::Found(subnets, groups) => Ok((subnets, groups)),
        DefaultNetwork::Missing(why) => Err(missing_default_network(region, why)),
    }
}

fn missing_default_network(region: &str, why: String) -> DeployError {
    DeployError {
        action: "ec2:DescribeVpcs".to_owned(),
        resource: format!("DefaultVpc/{region}"),
        message: why,
        unreachable: false,
        hint: Some(format!(
            "give subnets and security_groups in [replicator.network.{region}]"
        )),
    }
}

/// A desired `subnets` / `security_groups`: the default VPC's, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ids {
    DefaultVpc,
    List(Vec<String>),
}

impl Ids {
    fn of(props: &BTreeMap<String, Value>, field: &str) -> Ids {
        match props.get(field) {
            Some(Value::Array(items)) => Ids::List(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => Ids::DefaultVpc,
        }
    }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.dedup();
    ids
}

/// How an observed list is reported so that it compares with desired: `"default VPC"` when that is
/// desired and the list is exactly the default VPC's; the desired list itself when the same IDs are
/// there in another order; otherwise the actual IDs, sorted.
fn present(actual: &[String], desired: Option<&Ids>, default: Option<&[String]>) -> Value {
    let actual = sorted(actual.to_vec());
    match desired {
        Some(Ids::DefaultVpc) if default == Some(actual.as_slice()) => json!(DEFAULT_VPC),
        Some(Ids::List(want)) if sorted(want.clone()) == actual => json!(want),
        _ => json!(actual),
    }
}

fn service_tags(service: &Service) -> BTreeMap<String, String> {
    service
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect()
}

fn awsvpc(service: &Service) -> (Vec<String>, Vec<String>) {
    service
        .network_configuration()
        .and_then(NetworkConfiguration::awsvpc_configuration)
        .map(|c| (c.subnets().to_vec(), c.security_groups().to_vec()))
        .unwrap_or_default()
}

/// The services of `cluster` (name or ARN) in `region` that are wanted (`wanted`: the desired
/// `EcsService` resources of this region and cluster, by name) or tagged with `scope`, in the
/// desired form plus `arn`, `running_count` and `status`. `INACTIVE` and `DRAINING` services
/// (deleted or being deleted) are skipped; a cluster that does not exist has none. `subnets` and
/// `security_groups` read `"default VPC"` when the desired ones do and the service runs exactly in
/// the default VPC's subnets with its `default` group.
pub async fn observe(
    ecs: &Client,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    scope: &Scope,
    cluster: &str,
    wanted: &[Resource],
) -> Result<Vec<Resource>, DeployError> {
    let id = format!("EcsService/{region}/{cluster}");
    let mut arns = Vec::new();
    let mut token = None;
    loop {
        let page = match ecs
            .list_services()
            .cluster(cluster)
            .set_next_token(token.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_cluster_not_found_exception()) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(DeployError::aws("ecs:ListServices", &id, &e)),
        };
        arns.extend(page.service_arns().iter().cloned());
        match page.next_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => break,
        }
    }
    let mut services = Vec::new();
    for batch in arns.chunks(DESCRIBE_BATCH) {
        let out = ecs
            .describe_services()
            .cluster(cluster)
            .set_services(Some(batch.to_vec()))
            .include(ServiceField::Tags)
            .send()
            .await
            .map_err(|e| DeployError::aws("ecs:DescribeServices", &id, &e))?;
        services.extend(
            out.services
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.status() == Some("ACTIVE")),
        );
    }
    let desired_of = |name: &str| wanted.iter().find(|w| w.name == name);
    services.retain(|s| {
        let name = s.service_name().unwrap_or_default();
        desired_of(name).is_some() || scope.owns(&service_tags(s))
    });
    // The default network is looked up only when a kept service is wanted on it.
    let on_default = services.iter().any(|s| {
        desired_of(s.service_name().unwrap_or_default()).is_some_and(|w| {
            Ids::of(&w.props, "subnets") == Ids::DefaultVpc
                || Ids::of(&w.props, "security_groups") == Ids::DefaultVpc
        })
    });
    let default = if on_default {
        match lookup_default_network(ec2, region).await? {
            DefaultNetwork::Found(subnets, groups) => Some((subnets, groups)),
            DefaultNetwork::Missing(_) => None,
        }
    } else {
        None
    };
    let mut found = Vec::new();
    for service in &services {
        let name = service.service_name().unwrap_or_default();
        let want = desired_of(name);
        let (subnets, groups) = awsvpc(service);
        let ids = |field: &str| want.map(|w| Ids::of(&w.props, field));
        let props = json!({
            "cluster": service.cluster_arn(),
            "task_definition": service.task_definition(),
            "desired_count": service.desired_count(),
            "launch_type": service.launch_type().map(LaunchType::as_str),
            "subnets": present(&subnets, ids("subnets").as_ref(), default.as_ref().map(|d| d.0.as_slice())),
            "security_groups": present(&groups, ids("security_groups").as_ref(), default.as_ref().map(|d| d.1.as_slice())),
            "tags": Scope::managed_tags(&service_tags(service)),
            "arn": service.service_arn(),
            "running_count": service.running_count(),
            "status": service.status(),
        });
        found.push(Resource::from_props(
            Kind::EcsService,
            Some(region.to_owned()),
            name.to_owned(),
            props,
        ));
    }
    Ok(found)
}

/// What [`wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The service is deleted (`INACTIVE`, or gone).
    Inactive,
    /// The service is `ACTIVE` with one deployment and as many running tasks as desired, none
    /// pending.
    Steady,
}

/// Waits until the service `name` of `cluster` is as `until` says, polling until `timeout`. Fails
/// with the last state seen when the time runs out.
pub async fn wait(
    ecs: &Client,
    cluster: &str,
    name: &str,
    until: Until,
    timeout: Duration,
) -> Result<(), DeployError> {
    wait_for(ecs, cluster, name, until, None, timeout).await
}

/// [`wait`]; with `deployment`, [`Until::Steady`] waits for that deployment (the one a create or
/// update started) and fails when the circuit breaker failed or replaced it.
async fn wait_for(
    ecs: &Client,
    cluster: &str,
    name: &str,
    until: Until,
    deployment: Option<&str>,
    timeout: Duration,
) -> Result<(), DeployError> {
    let id = format!("EcsService/{cluster}/{name}");
    let poll = (timeout / 20).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = ecs
            .describe_services()
            .cluster(cluster)
            .services(name)
            .send()
            .await
            .map_err(|e| DeployError::aws("ecs:DescribeServices", &id, &e))?;
        let service = out.services().first();
        let (done, seen) = match (until, service) {
            (Until::Inactive, None) => (true, "gone".to_owned()),
            (Until::Inactive, Some(s)) => (
                s.status() == Some("INACTIVE"),
                format!("status {}", s.status().unwrap_or("unknown")),
            ),
            (Until::Steady, None) => (false, "not found".to_owned()),
            (Until::Steady, Some(s)) => match readiness(s, deployment) {
                Readiness::Ready => (true, String::new()),
                Readiness::Waiting(seen) => (false, seen),
                Readiness::Failed(why) => {
                    let stopped = stopped_reasons(ecs, cluster, name).await;
                    return Err(not_running(&id, &why, &stopped));
                }
            },
        };
        if done {
            return Ok(());
        }
        if until == Until::Steady && tokio::time::Instant::now() + poll > deadline {
            let stopped = stopped_reasons(ecs, cluster, name).await;
            return Err(not_running(
                &id,
                &format!("not running after {} s ({seen})", timeout.as_secs()),
                &stopped,
            ));
        }
        if tokio::time::Instant::now() + poll > deadline {
            return Err(DeployError {
                action: "ecs:DescribeServices".to_owned(),
                resource: id,
                message: format!(
                    "not {} after {}s ({seen})",
                    match until {
                        Until::Inactive => "inactive",
                        Until::Steady => "steady",
                    },
                    timeout.as_secs()
                ),
                unreachable: false,
                hint: Some(
                    "look at the service's events in the ECS console; run again later".to_owned(),
                ),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Where a service's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Its tasks run (and pass their health checks): the primary deployment's rollout is
    /// `COMPLETED`, or, without a rollout state, one deployment with every desired task running.
    Ready,
    /// Not yet; what was seen.
    Waiting(String),
    /// The rollout failed (the circuit breaker gave up); why.
    Failed(String),
}

/// Where `s`'s rollout stands (ECS marks a deployment `COMPLETED` only once its tasks are running
/// and healthy, `FAILED` when the circuit breaker stops it). With `deployment` (the one this `up`
/// started), that deployment must complete: one that failed, or that is no longer the primary (the
/// circuit breaker rolled back to the previous one, whose `COMPLETED` proves nothing of the new
/// tasks), is a failure.
pub fn readiness(s: &aws_sdk_ecs::types::Service, deployment: Option<&str>) -> Readiness {
    if let Some(id) = deployment {
        let ours = s.deployments().iter().find(|d| d.id() == Some(id));
        match ours {
            Some(d) if d.rollout_state() == Some(&DeploymentRolloutState::Failed) => {
                return Readiness::Failed(format!(
                    "its deployment {id} failed: {}",
                    d.rollout_state_reason().unwrap_or("no reason given")
                ));
            }
            Some(d) if d.status() == Some("PRIMARY") => {}
            _ => {
                return Readiness::Failed(format!(
                    "its deployment {id} is no longer the service's primary one: the circuit \
                     breaker rolled it back, or another update replaced it"
                ));
            }
        }
    }
    let primary = s
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"));
    let seen = format!(
        "status {}, {} of {} tasks running, {} pending, {} deployments{}",
        s.status().unwrap_or("unknown"),
        s.running_count(),
        s.desired_count(),
        s.pending_count(),
        s.deployments().len(),
        primary
            .and_then(|d| d.rollout_state())
            .map(|r| format!(", rollout {}", r.as_str()))
            .unwrap_or_default()
    );
    if s.status() != Some("ACTIVE") {
        return Readiness::Waiting(seen);
    }
    match primary.and_then(|d| d.rollout_state()) {
        Some(DeploymentRolloutState::Completed) => Readiness::Ready,
        Some(DeploymentRolloutState::Failed) => Readiness::Failed(format!(
            "its deployment failed: {} ({seen})",
            primary
                .and_then(|d| d.rollout_state_reason())
                .unwrap_or("no reason given")
        )),
        Some(_) => Readiness::Waiting(seen),
        None if s.deployments().len() <= 1
            && s.pending_count() == 0
            && s.running_count() == s.desired_count() =>
        {
            Readiness::Ready
        }
        None => Readiness::Waiting(seen),
    }
}

/// Why the service's last stopped tasks stopped (at most three), as ECS says it: the task's stopped
/// reason and each container's exit code and reason. Empty when none stopped or they cannot be read.
async fn stopped_reasons(ecs: &Client, cluster: &str, name: &str) -> Vec<String> {
    let Ok(list) = ecs
        .list_tasks()
        .cluster(cluster)
        .service_name(name)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
    else {
        return Vec::new();
    };
    let arns: Vec<String> = list.task_arns().iter().take(3).cloned().collect();
    if arns.is_empty() {
        return Vec::new();
    }
    match ecs
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(arns))
        .send()
        .await
    {
        Ok(out) => out.tasks().iter().map(stopped_reason).collect(),
        Err(_) => Vec::new(),
    }
}

/// One stopped task's reason: `task <id> stopped: <reason>[; container <name> exited <code>:
/// <reason>]...`.
pub fn stopped_reason(task: &aws_sdk_ecs::types::Task) -> String {
    let id = task
        .task_arn()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("?");
    let mut line = format!(
        "task {id} stopped: {}",
        task.stopped_reason().unwrap_or("no reason given")
    );
    for c in task.containers() {
        if c.exit_code().is_some() || c.reason().is_some() {
            line.push_str(&format!(
                "; container {} exited {}{}",
                c.name().unwrap_or("?"),
                c.exit_code()
                    .map_or("(no code)".to_owned(), |x| x.to_string()),
                c.reason().map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
    }
    line
}

fn not_running(id: &str, why: &str, stopped: &[String]) -> DeployError {
    let mut message = why.to_owned();
    if !stopped.is_empty() {
        message.push_str("; last stopped: ");
        message.push_str(&stopped.join(" | "));
    }
    DeployError {
        action: "ecs:DescribeServices".to_owned(),
        resource: id.to_owned(),
        message,
        unreachable: false,
        hint: Some(
            "the replicator's tasks do not start: read the stopped reason above and the task's \
             log group, fix the image, roles or network, and run up again"
                .to_owned(),
        ),
    }
}

fn tags(props: &BTreeMap<String, Value>) -> Vec<Tag> {
    tag_pairs(props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// A resolved string property (an ARN); an unresolved reference is refused, naming what is missing.
fn resolved<'a>(
    props: &'a BTreeMap<String, Value>,
    field: &str,
    action: &str,
    id: &str,
) -> Result<&'a str, DeployError> {
    match props.get(field).and_then(Value::as_str) {
        Some(r) if r.starts_with("ref:") => Err(DeployError::refused(
            action,
            id,
            format!(
                "{field} needs {} which does not exist yet",
                r.trim_start_matches("ref:")
            ),
        )),
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(DeployError::refused(
            action,
            id,
            format!("no {field} given"),
        )),
    }
}

/// The network configuration for the desired props (see the module docs for the public IP).
async fn network(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    props: &BTreeMap<String, Value>,
    action: &str,
    id: &str,
) -> Result<NetworkConfiguration, DeployError> {
    let subnets = Ids::of(props, "subnets");
    let groups = Ids::of(props, "security_groups");
    let (default_subnets, default_groups) =
        if subnets == Ids::DefaultVpc || groups == Ids::DefaultVpc {
            default_network(ec2, region).await?
        } else {
            (Vec::new(), Vec::new())
        };
    // See the module docs: only the default VPC's public subnets need a public IP.
    let public_ip = if subnets == Ids::DefaultVpc {
        AssignPublicIp::Enabled
    } else {
        AssignPublicIp::Disabled
    };
    let pick = |ids: Ids, default: Vec<String>| match ids {
        Ids::List(list) => list,
        Ids::DefaultVpc => default,
    };
    let config = AwsVpcConfiguration::builder()
        .set_subnets(Some(pick(subnets, default_subnets)))
        .set_security_groups(Some(pick(groups, default_groups)))
        .assign_public_ip(public_ip)
        .build()
        .map_err(|e| DeployError::refused(action, id, e.to_string()))?;
    Ok(NetworkConfiguration::builder()
        .awsvpc_configuration(config)
        .build())
}

fn desired_count(props: &BTreeMap<String, Value>) -> i32 {
    props
        .get("desired_count")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(1)
}

async fn create(
    ecs: &Client,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    name: &str,
    want: &Resource,
    id: &str,
) -> Result<Option<String>, DeployError> {
    const ACTION: &str = "ecs:CreateService";
    let cluster = resolved(&want.props, "cluster", ACTION, id)?;
    let task_definition = resolved(&want.props, "task_definition", ACTION, id)?;
    let network = network(ec2, region, &want.props, ACTION, id).await?;
    // A namesake being deleted blocks the name until it is inactive.
    let existing = ecs
        .describe_services()
        .cluster(cluster)
        .services(name)
        .send()
        .await
        .map_err(|e| DeployError::aws("ecs:DescribeServices", id, &e))?;
    if existing
        .services()
        .iter()
        .any(|s| s.status() == Some("DRAINING"))
    {
        wait(ecs, cluster, name, Until::Inactive, DRAIN_TIMEOUT).await?;
    }
    let breaker = DeploymentCircuitBreaker::builder()
        .enable(true)
        .rollback(true)
        .build();
    let request = ecs
        .create_service()
        .cluster(cluster)
        .service_name(name)
        .task_definition(task_definition)
        .desired_count(desired_count(&want.props))
        .launch_type(LaunchType::Fargate)
        .network_configuration(network)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .deployment_circuit_breaker(breaker)
                .build(),
        )
        .set_tags(Some(tags(&want.props)))
        .propagate_tags(PropagateTags::Service);
    let started = tokio::time::Instant::now();
    loop {
        match request.clone().send().await {
            Ok(out) => return Ok(primary_deployment(out.service())),
            Err(e)
                if started.elapsed() < LINKED_ROLE_WAIT
                    && e.as_service_error()
                        .is_some_and(|s| linked_role_not_ready(s.code(), s.message())) =>
            {
                tracing::info!(service = %name, "ECS's service-linked role is not usable yet; retrying.");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(e) => return Err(DeployError::aws(ACTION, id, &e)),
        }
    }
}

/// The ID of the service's PRIMARY deployment (the one a create or update just started).
fn primary_deployment(service: Option<&Service>) -> Option<String> {
    service?
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"))
        .and_then(|d| d.id())
        .map(str::to_owned)
}

async fn delete(ecs: &Client, cluster: &str, name: &str, id: &str) -> Result<(), DeployError> {
    ecs.update_service()
        .cluster(cluster)
        .service(name)
        .desired_count(0)
        .send()
        .await
        .map_err(|e| DeployError::aws("ecs:UpdateService", id, &e))?;
    ecs.delete_service()
        .cluster(cluster)
        .service(name)
        .force(true)
        .send()
        .await
        .map_err(|e| DeployError::aws("ecs:DeleteService", id, &e))?;
    wait(ecs, cluster, name, Until::Inactive, DRAIN_TIMEOUT).await
}

/// Applies one planned change to the service. Create: Fargate in the desired network, tagged (tags
/// propagated to tasks), with the deployment circuit breaker rolling back failed deployments.
/// Update: `update_service` with exactly the changed task definition, count or network, and the
/// tags; `launch_type` and `cluster` cannot change in place and are refused. Replace: delete, then
/// create. Delete: scale to 0, delete (forced), wait until inactive.
pub async fn apply(
    ecs: &Client,
    ec2: &aws_sdk_ec2::Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
    start_timeout: Duration,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let name = &change.name;
    let id = format!("EcsService/{region}/{name}");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let deployment = create(ecs, ec2, region, name, want, &id).await?;
            let cluster = resolved(&want.props, "cluster", "ecs:DescribeServices", &id)?;
            let deployment = deployment.as_deref();
            wait_for(ecs, cluster, name, Until::Steady, deployment, start_timeout).await
        }
        (Action::Update { changes }, Some(want)) => {
            const ACTION: &str = "ecs:UpdateService";
            let changed = |field: &str| changes.iter().any(|c| c.field == field);
            for fixed in ["launch_type", "cluster"] {
                if changed(fixed) {
                    return Err(DeployError::refused(
                        ACTION,
                        &id,
                        format!(
                            "{fixed} cannot change in place; delete the service (down) and run up again"
                        ),
                    ));
                }
            }
            let cluster = resolved(&want.props, "cluster", ACTION, &id)?;
            let mut update = ecs.update_service().cluster(cluster).service(name);
            let mut any = false;
            if changed("task_definition") {
                update =
                    update.task_definition(resolved(&want.props, "task_definition", ACTION, &id)?);
                any = true;
            }
            if changed("desired_count") {
                update = update.desired_count(desired_count(&want.props));
                any = true;
            }
            if changed("subnets") || changed("security_groups") {
                update = update
                    .network_configuration(network(ec2, region, &want.props, ACTION, &id).await?);
                any = true;
            }
            if any {
                let out = update
                    .send()
                    .await
                    .map_err(|e| DeployError::aws(ACTION, &id, &e))?;
                // The new tasks must run before `up` goes on (and before a rollout's next region).
                let deployment = primary_deployment(out.service());
                let deployment = deployment.as_deref();
                wait_for(ecs, cluster, name, Until::Steady, deployment, start_timeout).await?;
            }
            if changed("tags") {
                let arn = observed_str(observed, "arn");
                ecs.tag_resource()
                    .resource_arn(arn)
                    .set_tags(Some(tags(&want.props)))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ecs:TagResource", &id, &e))?;
            }
            Ok(())
        }
        (Action::Replace { .. }, Some(want)) => {
            let cluster = match observed_str(observed, "cluster") {
                "" => resolved(&want.props, "cluster", "ecs:DeleteService", &id)?,
                c => c,
            };
            delete(ecs, cluster, name, &id).await?;
            let deployment = create(ecs, ec2, region, name, want, &id).await?;
            let cluster = resolved(&want.props, "cluster", "ecs:DescribeServices", &id)?;
            let deployment = deployment.as_deref();
            wait_for(ecs, cluster, name, Until::Steady, deployment, start_timeout).await
        }
        (Action::Delete, _) => {
            let cluster = observed_str(observed, "cluster");
            if cluster.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            delete(ecs, cluster, name, &id).await
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: &str, running: i32, desired: i32, rollout: Option<&str>) -> Service {
        let mut deployment = aws_sdk_ecs::types::Deployment::builder()
            .status("PRIMARY")
            .running_count(running)
            .desired_count(desired);
        if let Some(r) = rollout {
            deployment = deployment
                .rollout_state(DeploymentRolloutState::from(r))
                .rollout_state_reason("ECS deployment circuit breaker: tasks failed to start.");
        }
        Service::builder()
            .status(status)
            .running_count(running)
            .desired_count(desired)
            .pending_count(desired - running)
            .deployments(deployment.build())
            .build()
    }

    fn readiness_of(s: &Service) -> Readiness {
        readiness(s, None)
    }

    #[test]
    fn a_deployment_the_circuit_breaker_rolled_back_is_a_failure() {
        let deployment = |id: &str, status: &str, rollout: &str| {
            aws_sdk_ecs::types::Deployment::builder()
                .id(id)
                .status(status)
                .rollout_state(DeploymentRolloutState::from(rollout))
                .rollout_state_reason("tasks failed to start")
                .build()
        };
        let service = |deployments: Vec<aws_sdk_ecs::types::Deployment>| {
            Service::builder()
                .status("ACTIVE")
                .running_count(1)
                .desired_count(1)
                .set_deployments(Some(deployments))
                .build()
        };
        // Ours failed, the rollback to the previous one completed: the primary reads COMPLETED.
        let rolled_back = service(vec![
            deployment("ecs-svc/new", "ACTIVE", "FAILED"),
            deployment("ecs-svc/old", "PRIMARY", "COMPLETED"),
        ]);
        assert_eq!(readiness(&rolled_back, None), Readiness::Ready);
        assert!(matches!(
            readiness(&rolled_back, Some("ecs-svc/new")),
            Readiness::Failed(s) if s.contains("ecs-svc/new failed")
        ));
        // Ours is gone from the list (rolled back and drained).
        let gone = service(vec![deployment("ecs-svc/old", "PRIMARY", "COMPLETED")]);
        assert!(matches!(
            readiness(&gone, Some("ecs-svc/new")),
            Readiness::Failed(s) if s.contains("no longer the service's primary")
        ));
        // Ours is the primary and completes.
        let done = service(vec![deployment("ecs-svc/new", "PRIMARY", "COMPLETED")]);
        assert_eq!(readiness(&done, Some("ecs-svc/new")), Readiness::Ready);
        let going = service(vec![deployment("ecs-svc/new", "PRIMARY", "IN_PROGRESS")]);
        assert!(matches!(
            readiness(&going, Some("ecs-svc/new")),
            Readiness::Waiting(_)
        ));
    }

    #[test]
    fn a_service_is_ready_when_its_rollout_completes() {
        assert_eq!(
            readiness_of(&service("ACTIVE", 1, 1, Some("COMPLETED"))),
            Readiness::Ready
        );
        assert!(matches!(
            readiness_of(&service("ACTIVE", 1, 1, Some("IN_PROGRESS"))),
            Readiness::Waiting(s) if s.contains("1 of 1 tasks running") && s.contains("IN_PROGRESS")
        ));
        assert!(matches!(
            readiness_of(&service("ACTIVE", 0, 1, Some("FAILED"))),
            Readiness::Failed(s) if s.contains("circuit breaker")
        ));
        // Without a rollout state (an older API or another controller): every task running.
        assert_eq!(
            readiness_of(&service("ACTIVE", 2, 2, None)),
            Readiness::Ready
        );
        assert!(matches!(
            readiness_of(&service("ACTIVE", 1, 2, None)),
            Readiness::Waiting(_)
        ));
        assert!(matches!(
            readiness_of(&service("DRAINING", 1, 1, Some("COMPLETED"))),
            Readiness::Waiting(_)
        ));
    }

    #[test]
    fn a_stopped_task_says_why() {
        let task = aws_sdk_ecs::types::Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:123456789012:task/c/0123abcd")
            .stopped_reason("Essential container in task exited")
            .containers(
                aws_sdk_ecs::types::Container::builder()
                    .name("replicator")
                    .exit_code(1)
                    .reason("CannotPullContainerError: access denied")
                    .build(),
            )
            .build();
        assert_eq!(
            stopped_reason(&task),
            "task 0123abcd stopped: Essential container in task exited; container replicator \
             exited 1: CannotPullContainerError: access denied"
        );
        let e = not_running(
            "EcsService/r/s",
            "not running after 600 s",
            &[stopped_reason(&task)],
        );
        assert!(e.to_string().contains("last stopped: task 0123abcd"), "{e}");
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_default_vpc_is_missing_and_the_error_says_what_to_configure() {
        let DefaultNetwork::Missing(why) = decide_default_network("eu-west-1", &[], vec![], vec![])
        else {
            panic!("a region without a default VPC has no default network");
        };
        let error = missing_default_network("eu-west-1", why).to_string();
        assert!(error.contains("no default VPC"), "{error}");
        assert!(error.contains("[replicator.network.eu-west-1]"), "{error}");
    }

    #[test]
    fn a_default_vpc_without_default_subnets_is_missing() {
        assert!(matches!(
            decide_default_network("r", &ids(&["vpc-1"]), vec![], ids(&["sg-1"])),
            DefaultNetwork::Missing(why) if why.contains("no default subnets")
        ));
    }

    #[test]
    fn a_default_vpc_gives_sorted_subnets_and_its_default_group() {
        let DefaultNetwork::Found(subnets, groups) = decide_default_network(
            "r",
            &ids(&["vpc-1"]),
            ids(&["subnet-b", "subnet-a"]),
            ids(&["sg-1"]),
        ) else {
            panic!("found");
        };
        assert_eq!(subnets, ids(&["subnet-a", "subnet-b"]));
        assert_eq!(groups, ids(&["sg-1"]));
    }

    #[test]
    fn only_the_linked_role_refusal_is_retried() {
        let message = "Unable to assume the service linked role. Please verify that the ECS service \
                       linked role exists.";
        assert!(linked_role_not_ready(
            Some("InvalidParameterException"),
            Some(message)
        ));
        assert!(!linked_role_not_ready(
            Some("InvalidParameterException"),
            Some("subnet-1 is not in the VPC")
        ));
        assert!(!linked_role_not_ready(
            Some("ClientException"),
            Some(message)
        ));
        assert!(!linked_role_not_ready(None, None));
    }

    #[test]
    fn observed_lists_compare_with_desired() {
        let default = ids(&["subnet-a", "subnet-b"]);
        let actual = ids(&["subnet-b", "subnet-a"]);
        assert_eq!(
            present(&actual, Some(&Ids::DefaultVpc), Some(&default)),
            json!(DEFAULT_VPC)
        );
        // Only part of the default network is not the default network.
        assert_eq!(
            present(&ids(&["subnet-a"]), Some(&Ids::DefaultVpc), Some(&default)),
            json!(["subnet-a"])
        );
        // The config's order is kept when the IDs are the same.
        assert_eq!(
            present(&actual, Some(&Ids::List(actual.clone())), Some(&default)),
            json!(["subnet-b", "subnet-a"])
        );
        // Not wanted (only tagged): the actual IDs, sorted.
        assert_eq!(
            present(&actual, None, None),
            json!(["subnet-a", "subnet-b"])
        );
        assert_eq!(
            present(&actual, Some(&Ids::List(ids(&["subnet-c"]))), None),
            json!(["subnet-a", "subnet-b"])
        );
    }
}
