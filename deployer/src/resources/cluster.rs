//! The replicator's ECS cluster in each region where a replicator runs.

use std::collections::BTreeMap;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{ClusterField, Tag};
use serde_json::{Value, json};

use super::{DeployError, Scope, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The cluster `name` in `region`, if it exists and is active, in the desired form (with its `arn`).
pub async fn observe(
    client: &Client,
    region: &str,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("EcsCluster/{region}/{name}");
    let out = client
        .describe_clusters()
        .clusters(name)
        .include(ClusterField::Tags)
        .send()
        .await
        .map_err(|e| DeployError::aws("ecs:DescribeClusters", &id, &e))?;
    let Some(cluster) = out.clusters().iter().find(|c| c.status() == Some("ACTIVE")) else {
        return Ok(None);
    };
    let tags: BTreeMap<String, String> = cluster
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect();
    let props = json!({ "tags": Scope::managed_tags(&tags), "arn": cluster.cluster_arn() });
    Ok(Some(Resource::from_props(
        Kind::EcsCluster,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

fn tags(props: &BTreeMap<String, Value>) -> Vec<Tag> {
    tag_pairs(props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Applies one planned change to the cluster.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let name = &change.name;
    let id = format!(
        "EcsCluster/{}/{name}",
        change.region.as_deref().unwrap_or_default()
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            client
                .create_cluster()
                .cluster_name(name)
                .set_tags(Some(tags(&want.props)))
                .send()
                .await
                .map_err(|e| DeployError::aws("ecs:CreateCluster", &id, &e))?;
            Ok(())
        }
        (Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            let arn = super::observed_str(observed, "arn");
            client
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(tags(&want.props)))
                .send()
                .await
                .map_err(|e| DeployError::aws("ecs:TagResource", &id, &e))?;
            Ok(())
        }
        (Action::Delete, _) => {
            client
                .delete_cluster()
                .cluster(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("ecs:DeleteCluster", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}
