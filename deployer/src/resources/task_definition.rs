//! The replicator's ECS task definition (Fargate): image, CPU and memory, roles, `replicator run` with
//! its environment, the container health check `replicator healthcheck`, the stop timeout, logs.
//! A change registers a new revision; removal deregisters every revision of the family.

use std::collections::BTreeMap;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, HealthCheck, KeyValuePair, LogConfiguration, LogDriver,
    NetworkMode, Tag, TaskDefinitionField, TaskDefinitionStatus,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, strings, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

const CONTAINER: &str = "replicator";

/// The latest active revision of the family `name` in `region`, in the desired form.
pub async fn observe(
    client: &Client,
    region: &str,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("TaskDefinition/{region}/{name}");
    let out = match client
        .describe_task_definition()
        .task_definition(name)
        .include(TaskDefinitionField::Tags)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_client_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("ecs:DescribeTaskDefinition", &id, &e)),
    };
    let Some(def) = out.task_definition() else {
        return Ok(None);
    };
    if def.status() != Some(&TaskDefinitionStatus::Active) {
        return Ok(None);
    }
    let Some(container) = def
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(CONTAINER))
    else {
        return Ok(None);
    };
    let tags: BTreeMap<String, String> = out
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect();
    let environment: BTreeMap<String, String> = container
        .environment()
        .iter()
        .filter_map(|kv| Some((kv.name()?.to_owned(), kv.value()?.to_owned())))
        .collect();
    let number = |v: Option<&str>| v.and_then(|s| s.parse::<i64>().ok());
    let props = json!({
        "image": container.image(),
        "cpu": number(def.cpu()),
        "memory": number(def.memory()),
        "task_role": def.task_role_arn(),
        "execution_role": def.execution_role_arn(),
        "log_group": container.log_configuration().and_then(|l| l.options()).and_then(|o| o.get("awslogs-group")),
        "command": container.command(),
        "environment": environment,
        "health_check": container.health_check().map(|h| h.command()),
        "stop_timeout_seconds": container.stop_timeout(),
        "tags": Scope::managed_tags(&tags),
        "arn": def.task_definition_arn(),
        "revision": def.revision(),
    });
    Ok(Some(Resource::from_props(
        Kind::TaskDefinition,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

fn text(props: &BTreeMap<String, Value>, field: &str) -> Option<String> {
    props
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.starts_with("ref:"))
        .map(str::to_owned)
}

async fn register(
    client: &Client,
    region: &str,
    name: &str,
    props: &BTreeMap<String, Value>,
    id: &str,
) -> Result<(), DeployError> {
    let refuse = |m: String| DeployError::refused("ecs:RegisterTaskDefinition", id, m);
    let environment: Vec<KeyValuePair> = super::pairs(props, "environment")
        .into_iter()
        .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
        .collect();
    let health = HealthCheck::builder()
        .set_command(Some(strings(props, "health_check")))
        .interval(30)
        .timeout(5)
        .retries(3)
        .start_period(15)
        .build()
        .map_err(|e| refuse(e.to_string()))?;
    let mut options = std::collections::HashMap::new();
    options.insert(
        "awslogs-group".to_owned(),
        text(props, "log_group").unwrap_or_default(),
    );
    options.insert("awslogs-region".to_owned(), region.to_owned());
    options.insert("awslogs-stream-prefix".to_owned(), CONTAINER.to_owned());
    let logs = LogConfiguration::builder()
        .log_driver(LogDriver::Awslogs)
        .set_options(Some(options))
        .build()
        .map_err(|e| refuse(e.to_string()))?;
    let container = ContainerDefinition::builder()
        .name(CONTAINER)
        .set_image(text(props, "image"))
        .essential(true)
        .set_command(Some(strings(props, "command")))
        .set_environment(Some(environment))
        .health_check(health)
        .set_stop_timeout(
            props
                .get("stop_timeout_seconds")
                .and_then(Value::as_i64)
                .and_then(|v| i32::try_from(v).ok()),
        )
        .log_configuration(logs)
        .build();
    let number = |field: &str| {
        props
            .get(field)
            .and_then(Value::as_i64)
            .map(|v| v.to_string())
    };
    let tags: Vec<Tag> = tag_pairs(props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    client
        .register_task_definition()
        .family(name)
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .set_cpu(number("cpu"))
        .set_memory(number("memory"))
        .set_task_role_arn(text(props, "task_role"))
        .set_execution_role_arn(text(props, "execution_role"))
        .container_definitions(container)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| DeployError::aws("ecs:RegisterTaskDefinition", id, &e))?;
    Ok(())
}

/// Applies one planned change: register a revision (and deregister the one it supersedes, so that
/// revisions do not pile up; a service still using it keeps running and scaling, and moves to the new
/// revision with the service's own update), or deregister every revision on removal.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let name = &change.name;
    let id = format!("TaskDefinition/{region}/{name}");
    match (&change.action, desired) {
        (Action::Create | Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            register(client, region, name, &want.props, &id).await?;
            let previous = super::observed_str(observed, "arn");
            if !previous.is_empty() {
                client
                    .deregister_task_definition()
                    .task_definition(previous)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ecs:DeregisterTaskDefinition", &id, &e))?;
            }
            Ok(())
        }
        (Action::Delete, _) => {
            let mut token = None;
            loop {
                let page = client
                    .list_task_definitions()
                    .family_prefix(name)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("ecs:ListTaskDefinitions", &id, &e))?;
                for arn in page.task_definition_arns() {
                    // family_prefix matches prefixes: only this exact family.
                    if arn
                        .rsplit_once(':')
                        .map(|(head, _)| head.ends_with(&format!("/{name}")))
                        != Some(true)
                    {
                        continue;
                    }
                    client
                        .deregister_task_definition()
                        .task_definition(arn)
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("ecs:DeregisterTaskDefinition", &id, &e))?;
                }
                match page.next_token {
                    Some(next) => token = Some(next),
                    None => return Ok(()),
                }
            }
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}
