//! The replicator's CloudWatch Logs group: retention and tags.

use std::collections::BTreeMap;

use aws_sdk_cloudwatchlogs::Client;
use serde_json::{Value, json};

use super::{DeployError, Scope, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The log group `name` in `region`, if it exists, in the desired form (with its `arn`).
pub async fn observe(
    client: &Client,
    region: &str,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("LogGroup/{region}/{name}");
    let out = client
        .describe_log_groups()
        .log_group_name_prefix(name)
        .send()
        .await
        .map_err(|e| DeployError::aws("logs:DescribeLogGroups", &id, &e))?;
    let Some(group) = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name))
    else {
        return Ok(None);
    };
    let arn = group
        .arn()
        .unwrap_or_default()
        .trim_end_matches(":*")
        .to_owned();
    let tags: BTreeMap<String, String> = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .map_err(|e| DeployError::aws("logs:ListTagsForResource", &id, &e))?
        .tags()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let props = json!({
        "retention_days": group.retention_in_days(),
        "tags": Scope::managed_tags(&tags),
        "arn": arn,
    });
    Ok(Some(Resource::from_props(
        Kind::LogGroup,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

fn retention(props: &BTreeMap<String, Value>) -> Option<i32> {
    super::int(props, "retention_days")
}

/// Applies one planned change to the log group.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let name = &change.name;
    let id = format!(
        "LogGroup/{}/{name}",
        change.region.as_deref().unwrap_or_default()
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            client
                .create_log_group()
                .log_group_name(name)
                .set_tags(Some(tag_pairs(&want.props).into_iter().collect()))
                .send()
                .await
                .map_err(|e| DeployError::aws("logs:CreateLogGroup", &id, &e))?;
            if let Some(days) = retention(&want.props) {
                client
                    .put_retention_policy()
                    .log_group_name(name)
                    .retention_in_days(days)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("logs:PutRetentionPolicy", &id, &e))?;
            }
            Ok(())
        }
        (Action::Update { changes } | Action::Replace { changes }, Some(want)) => {
            for c in changes {
                if c.field == "retention_days" {
                    if let Some(days) = retention(&want.props) {
                        client
                            .put_retention_policy()
                            .log_group_name(name)
                            .retention_in_days(days)
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("logs:PutRetentionPolicy", &id, &e))?;
                    }
                } else if c.field == "tags" {
                    let arn = super::observed_str(observed, "arn");
                    client
                        .tag_resource()
                        .resource_arn(arn)
                        .set_tags(Some(tag_pairs(&want.props).into_iter().collect()))
                        .send()
                        .await
                        .map_err(|e| DeployError::aws("logs:TagResource", &id, &e))?;
                }
            }
            Ok(())
        }
        (Action::Delete, _) => {
            client
                .delete_log_group()
                .log_group_name(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("logs:DeleteLogGroup", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}
