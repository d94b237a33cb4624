//! The replicator's ECS service against the local AWS: created on Fargate in the default VPC with a
//! public IP; a second plan is empty; a new task count is exactly that update; explicit subnets and
//! security groups from the config are planned and applied (without a public IP); a foreign service
//! in the same cluster is never returned and survives; removal deletes ours. And the default
//! network, or the error that says what to configure when a region has no default VPC.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use aws_sdk_ecs::types::{AssignPublicIp, AwsVpcConfiguration, NetworkConfiguration};
use deployer::desired::{Kind, Resolved, Resource, desired, reference_key, resolve};
use deployer::plan::{Action, Change, plan};
use deployer::resources::{Scope, cluster, service, task_definition};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_B};

/// The desired resources of `kind` for `app` (one-way: the replicator runs only in REGION_B), with
/// `extra` appended to the `[replicator]` table and the references in `resolved` filled in.
fn wanted(app: &str, extra: &str, kind: Kind, resolved: &Resolved) -> Resource {
    let d = support::deployment(
        app,
        &[
            ("mode = \"lww\"", "mode = \"one-way\"".to_owned()),
            ("memory = 512", format!("memory = 512\n{extra}")),
        ],
    );
    let all: Vec<Resource> = desired(&d, "sha")
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect();
    assert_eq!(all.len(), 1, "{kind:?}");
    assert_eq!(all[0].region.as_deref(), Some(REGION_B));
    resolve(&all, resolved).remove(0)
}

struct Env {
    ecs: aws_sdk_ecs::Client,
    ec2: aws_sdk_ec2::Client,
    scope: Scope,
    cluster_arn: String,
}

impl Env {
    async fn observe(&self, wanted: &[Resource]) -> Vec<Resource> {
        service::observe(
            &self.ecs,
            &self.ec2,
            REGION_B,
            &self.scope,
            &self.cluster_arn,
            wanted,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One `up` of the service alone: observe, plan, apply; returns the changes.
    async fn up(&self, want: &[Resource]) -> Vec<Change> {
        let observed = self.observe(want).await;
        let plan = plan(want, &observed);
        for change in &plan.changes {
            let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
            service::apply(
                &self.ecs,
                &self.ec2,
                change,
                find(want).as_ref(),
                find(&observed).as_ref(),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        plan.changes
    }

    async fn network(&self, name: &str) -> AwsVpcConfiguration {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster_arn)
            .services(name)
            .send()
            .await
            .unwrap();
        out.services()[0]
            .network_configuration()
            .and_then(NetworkConfiguration::awsvpc_configuration)
            .unwrap()
            .clone()
    }

    async fn status(&self, name: &str) -> Option<String> {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster_arn)
            .services(name)
            .send()
            .await
            .unwrap();
        out.services()
            .first()
            .and_then(|s| s.status())
            .map(str::to_owned)
    }
}

/// The cluster and task definition the service needs, made with their own modules; returns the
/// references resolved to their ARNs.
async fn prerequisites(local: &LocalAws, app: &str) -> Resolved {
    let ecs = aws_sdk_ecs::Client::new(&local.sdk_config(REGION_B));
    let prefix = format!("{app}-test");
    let mut resolved = Resolved::new();
    for role in [
        format!("{prefix}-replicator-{REGION_B}"),
        format!("{prefix}-replicator-exec-{REGION_B}"),
    ] {
        let kind = if role.contains("-exec-") {
            Kind::ExecutionRole
        } else {
            Kind::TaskRole
        };
        resolved.insert(
            reference_key(kind, REGION_B, &role),
            json!(format!("arn:aws:iam::123456789012:role/{role}")),
        );
    }
    let cluster_want = wanted(app, "", Kind::EcsCluster, &resolved);
    let create = |r: &Resource| Change {
        kind: r.kind,
        region: r.region.clone(),
        name: r.name.clone(),
        action: Action::Create,
    };
    cluster::apply(&ecs, &create(&cluster_want), Some(&cluster_want), None)
        .await
        .unwrap();
    let cluster_arn = cluster::observe(&ecs, REGION_B, &cluster_want.name)
        .await
        .unwrap()
        .unwrap()
        .props["arn"]
        .clone();
    let task = wanted(app, "", Kind::TaskDefinition, &resolved);
    task_definition::apply(&ecs, &create(&task), Some(&task), None)
        .await
        .unwrap();
    let task_arn = ecs
        .describe_task_definition()
        .task_definition(&task.name)
        .send()
        .await
        .unwrap()
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    resolved.insert(
        reference_key(Kind::EcsCluster, REGION_B, &cluster_want.name),
        cluster_arn,
    );
    resolved.insert(
        reference_key(Kind::TaskDefinition, REGION_B, &task.name),
        json!(task_arn),
    );
    resolved
}

/// A VPC of our own with two subnets and a security group, for the explicit network.
async fn own_network(ec2: &aws_sdk_ec2::Client) -> (Vec<String>, String) {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_owned();
    let mut subnets = Vec::new();
    for cidr in ["10.42.1.0/24", "10.42.2.0/24"] {
        subnets.push(
            ec2.create_subnet()
                .vpc_id(&vpc)
                .cidr_block(cidr)
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_owned(),
        );
    }
    let group = ec2
        .create_security_group()
        .vpc_id(&vpc)
        .group_name(format!("replicator-{}", std::process::id()))
        .description("replicator tasks")
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    (subnets, group)
}

fn single_update(changes: &[Change]) -> Vec<String> {
    assert_eq!(changes.len(), 1, "{changes:?}");
    match &changes[0].action {
        Action::Update { changes } => changes.iter().map(|c| c.field.clone()).collect(),
        other => panic!("an update, not {other:?}"),
    }
}

#[tokio::test]
async fn service_reconciles_and_leaves_foreign_services_alone() {
    let local = LocalAws::from_env();
    let app = format!("s{}", std::process::id() % 1_000_000);
    let resolved = prerequisites(&local, &app).await;
    let want = wanted(&app, "", Kind::EcsService, &resolved);
    assert_eq!(want.props["subnets"], json!(service::DEFAULT_VPC));
    let cluster_arn = want.props["cluster"].as_str().unwrap().to_owned();
    assert!(cluster_arn.starts_with("arn:"), "{cluster_arn}");
    let env = Env {
        ecs: aws_sdk_ecs::Client::new(&local.sdk_config(REGION_B)),
        ec2: aws_sdk_ec2::Client::new(&local.sdk_config(REGION_B)),
        scope: Scope {
            app: app.clone(),
            stage: "test".to_owned(),
        },
        cluster_arn: cluster_arn.clone(),
    };
    let (default_subnets, default_groups) = service::default_network(&env.ec2, REGION_B)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!default_subnets.is_empty());
    assert_eq!(default_groups.len(), 1);

    // Someone else's service in the same cluster, made by hand before the deployer runs.
    let foreign = format!("{app}-foreign");
    env.ecs
        .create_service()
        .cluster(&cluster_arn)
        .service_name(&foreign)
        .task_definition(want.props["task_definition"].as_str().unwrap())
        .desired_count(1)
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder()
                        .subnets(&default_subnets[0])
                        .security_groups(&default_groups[0])
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();

    // Created on the default VPC, with a public IP there.
    let created = env.up(std::slice::from_ref(&want)).await;
    assert_eq!(created.len(), 1);
    assert!(matches!(created[0].action, Action::Create));
    let observed = env.observe(std::slice::from_ref(&want)).await;
    assert_eq!(observed.len(), 1, "only ours: {observed:?}");
    let ours = &observed[0];
    assert_eq!(ours.name, want.name);
    assert_eq!(ours.props["subnets"], json!(service::DEFAULT_VPC));
    assert_eq!(ours.props["security_groups"], json!(service::DEFAULT_VPC));
    assert_eq!(ours.props["launch_type"], "FARGATE");
    assert_eq!(ours.props["status"], "ACTIVE");
    assert_eq!(ours.props["task_definition"], want.props["task_definition"]);
    assert!(
        ours.props["arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:ecs:")
    );
    let net = env.network(&want.name).await;
    let mut subnets = net.subnets().to_vec();
    subnets.sort();
    assert_eq!(subnets, default_subnets);
    assert_eq!(net.security_groups(), default_groups.as_slice());
    assert_eq!(net.assign_public_ip(), Some(&AssignPublicIp::Enabled));
    let second = plan(std::slice::from_ref(&want), &observed);
    assert!(second.is_empty(), "a second up changes nothing: {second:?}");

    // A new task count is exactly that update.
    let two = wanted(&app, "desired_count = 2", Kind::EcsService, &resolved);
    assert_eq!(
        single_update(&env.up(std::slice::from_ref(&two)).await),
        ["desired_count"]
    );
    let observed = env.observe(std::slice::from_ref(&two)).await;
    assert_eq!(observed[0].props["desired_count"], 2);
    assert!(plan(std::slice::from_ref(&two), &observed).is_empty());
    service::wait(
        &env.ecs,
        &cluster_arn,
        &two.name,
        service::Until::Steady,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Explicit subnets (in the config's order, not sorted) and a security group.
    let (mut own_subnets, group) = own_network(&env.ec2).await;
    own_subnets.reverse();
    let explicit = wanted(
        &app,
        &format!(
            "desired_count = 2\n[replicator.network.{REGION_B}]\nsubnets = {}\nsecurity_groups = [\"{group}\"]",
            json!(own_subnets)
        ),
        Kind::EcsService,
        &resolved,
    );
    assert_eq!(explicit.props["subnets"], json!(own_subnets));
    let mut fields = single_update(&env.up(std::slice::from_ref(&explicit)).await);
    fields.sort();
    assert_eq!(fields, ["security_groups", "subnets"]);
    let net = env.network(&explicit.name).await;
    let mut sorted_own = own_subnets.clone();
    sorted_own.sort();
    let mut subnets = net.subnets().to_vec();
    subnets.sort();
    assert_eq!(subnets, sorted_own);
    assert_eq!(net.security_groups(), std::slice::from_ref(&group));
    assert_eq!(net.assign_public_ip(), Some(&AssignPublicIp::Disabled));
    let observed = env.observe(std::slice::from_ref(&explicit)).await;
    assert_eq!(observed[0].props["subnets"], json!(own_subnets));
    let third = plan(std::slice::from_ref(&explicit), &observed);
    assert!(third.is_empty(), "explicit network is stable: {third:?}");

    // Back to the default VPC is one update again, reported as "default VPC" afterwards.
    let mut fields = single_update(&env.up(std::slice::from_ref(&two)).await);
    fields.sort();
    assert_eq!(fields, ["security_groups", "subnets"]);
    assert!(
        plan(
            std::slice::from_ref(&two),
            &env.observe(std::slice::from_ref(&two)).await
        )
        .is_empty()
    );

    // Removal: found by its tags alone, deleted; the foreign service is never planned and survives.
    let removed = env.up(&[]).await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0].name, want.name);
    assert!(matches!(removed[0].action, Action::Delete));
    assert!(env.observe(&[]).await.is_empty());
    assert!(env.observe(std::slice::from_ref(&want)).await.is_empty());
    assert_eq!(env.status(&want.name).await.as_deref(), Some("INACTIVE"));
    assert_eq!(env.status(&foreign).await.as_deref(), Some("ACTIVE"));
    assert!(env.up(&[]).await.is_empty(), "a second down does nothing");

    // Created again after the deletion (the name is free once inactive).
    assert_eq!(env.up(std::slice::from_ref(&want)).await.len(), 1);
    assert_eq!(env.status(&want.name).await.as_deref(), Some("ACTIVE"));
    assert_eq!(env.up(&[]).await.len(), 1);
}

#[tokio::test]
async fn a_region_without_a_default_vpc_says_what_to_configure() {
    // A region no other test uses: its default VPC is removed here.
    const REGION: &str = "sa-east-1";
    let local = LocalAws::from_env();
    let ec2 = aws_sdk_ec2::Client::new(&local.sdk_config(REGION));
    if let Ok((subnets, _)) = service::default_network(&ec2, REGION).await {
        for subnet in subnets {
            ec2.delete_subnet().subnet_id(subnet).send().await.unwrap();
        }
        let vpcs = ec2
            .describe_vpcs()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("isDefault")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        for vpc in vpcs.vpcs() {
            ec2.delete_vpc()
                .vpc_id(vpc.vpc_id().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    let error = service::default_network(&ec2, REGION)
        .await
        .expect_err("no default VPC")
        .to_string();
    assert!(error.contains("no default VPC"), "{error}");
    assert!(
        error.contains(&format!("[replicator.network.{REGION}]")),
        "{error}"
    );
}
