//! The DynamoDB table in each region: key schema, billing, NEW_AND_OLD_IMAGES stream, TTL on
//! `rep_expires`, deletion protection, point-in-time recovery, tags.
//!
//! A table the deployer created carries [`CREATED_TAG`]; one it adopted (it existed, untagged, with
//! the wanted name) does not, and is released (untagged), not deleted, by `down` unless asked. Which
//! deletions may happen at all is the engine's decision (`--allow-data-loss`); this module does what
//! it is told, turning deletion protection off first.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    PointInTimeRecoveryStatus, ProvisionedThroughput, ScalarAttributeType, StreamSpecification,
    StreamViewType, TableStatus, Tag, TimeToLiveSpecification, TimeToLiveStatus,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, text};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The tag on a table the deployer created (as opposed to adopted).
pub const CREATED_TAG: &str = "tworegion:created-by";

/// One tag's value from a `tags` property.
fn tag<'a>(tags: Option<&'a Value>, key: &str) -> Option<&'a str> {
    tags?.get(key)?.as_str()
}

/// [`CREATED_TAG`]'s value: which deployment created the table.
fn created_value(app: &str, stage: &str) -> String {
    format!("deployer:{app}/{stage}")
}

/// Whether an observed table was created by this deployment (else adopted, or another's).
pub fn created(observed: &Resource) -> bool {
    observed
        .props
        .get("created_by_deployer")
        .and_then(Value::as_bool)
        == Some(true)
}

fn key_json(name: &str, kind: &str) -> Value {
    json!({ "name": name, "type": kind })
}

/// Reads the table `name` in `region`, if it exists, into the desired form.
async fn read(
    client: &Client,
    region: &str,
    name: &str,
    scope: &Scope,
) -> Result<Option<(Resource, BTreeMap<String, String>)>, DeployError> {
    let id = format!("Table/{region}/{name}");
    let described = match client.describe_table().table_name(name).send().await {
        Ok(out) => out,
        Err(error) => {
            let not_found = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception());
            return if not_found {
                Ok(None)
            } else {
                Err(DeployError::aws("dynamodb:DescribeTable", &id, &error))
            };
        }
    };
    let Some(table) = described.table else {
        return Ok(None);
    };
    let types: BTreeMap<&str, &str> = table
        .attribute_definitions()
        .iter()
        .map(|a| (a.attribute_name(), a.attribute_type().as_str()))
        .collect();
    let key = |role: KeyType| {
        table
            .key_schema()
            .iter()
            .find(|k| k.key_type() == &role)
            .map(|k| {
                key_json(
                    k.attribute_name(),
                    types.get(k.attribute_name()).copied().unwrap_or("?"),
                )
            })
            .unwrap_or(Value::Null)
    };
    let billing = table
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .map(|b| b.as_str().to_owned())
        .unwrap_or_else(|| "PROVISIONED".to_owned());
    let (read_capacity, write_capacity) = if billing == "PROVISIONED" {
        let t = table.provisioned_throughput();
        (
            json!(t.and_then(|t| t.read_capacity_units())),
            json!(t.and_then(|t| t.write_capacity_units())),
        )
    } else {
        (Value::Null, Value::Null)
    };
    let stream = table
        .stream_specification()
        .filter(|s| s.stream_enabled())
        .and_then(|s| s.stream_view_type())
        .map(|v| json!(v.as_str()))
        .unwrap_or(Value::Null);
    // A table deleted meanwhile (by someone else) is simply gone. The local AWS (moto) answers
    // DescribeTimeToLive on a missing table with the code `ResourceNotFound` instead of AWS's
    // `ResourceNotFoundException`: both mean gone.
    let ttl = match client.describe_time_to_live().table_name(name).send().await {
        Ok(ttl) => ttl,
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_resource_not_found_exception()
                    || aws_sdk_dynamodb::error::ProvideErrorMetadata::code(s)
                        == Some("ResourceNotFound")
            }) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("dynamodb:DescribeTimeToLive", &id, &e)),
    };
    let ttl_attribute = ttl
        .time_to_live_description()
        .filter(|d| {
            matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            )
        })
        .and_then(|d| d.attribute_name())
        .map(|a| json!(a))
        .unwrap_or(Value::Null);
    let deletion_protection = table.deletion_protection_enabled().unwrap_or(false);
    let item_count = table.item_count();
    let pitr = match client
        .describe_continuous_backups()
        .table_name(name)
        .send()
        .await
    {
        Ok(out) => out
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            .is_some_and(|s| *s == PointInTimeRecoveryStatus::Enabled),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_table_not_found_exception()
                    || aws_sdk_dynamodb::error::ProvideErrorMetadata::code(s)
                        == Some("ResourceNotFoundException")
            }) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(DeployError::aws(
                "dynamodb:DescribeContinuousBackups",
                &id,
                &e,
            ));
        }
    };
    let arn = table.table_arn().unwrap_or_default().to_owned();
    let listed = match client
        .list_tags_of_resource()
        .resource_arn(&arn)
        .send()
        .await
    {
        Ok(listed) => listed,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("dynamodb:ListTagsOfResource", &id, &e)),
    };
    let tags: BTreeMap<String, String> = listed
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let props = json!({
        "partition_key": key(KeyType::Hash),
        "sort_key": key(KeyType::Range),
        "billing_mode": billing,
        "read_capacity": read_capacity,
        "write_capacity": write_capacity,
        "stream": stream,
        "ttl_attribute": ttl_attribute,
        "deletion_protection": deletion_protection,
        "point_in_time_recovery": pitr,
        "tags": Scope::managed_tags(&tags),
        "arn": arn,
        // Created by this app and stage (another stage's table with the same name is not).
        "created_by_deployer": tags.get(CREATED_TAG).is_some_and(|v| *v == created_value(&scope.app, &scope.stage)),
        // DynamoDB's figure, refreshed about every six hours: for messages only.
        "item_count": item_count,
    });
    let resource =
        Resource::from_props(Kind::Table, Some(region.to_owned()), name.to_owned(), props);
    Ok(Some((resource, tags)))
}

/// The tables of this app and stage in `region`: those named in `wanted` (adopted even without tags)
/// and any other table tagged with the scope (to be deleted).
pub async fn observe(
    client: &Client,
    region: &str,
    scope: &Scope,
    wanted: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let mut found = Vec::new();
    for name in wanted {
        if let Some((resource, _)) = read(client, region, name, scope).await? {
            found.push(resource);
        }
    }
    let mut start = None;
    loop {
        let page = client
            .list_tables()
            .set_exclusive_start_table_name(start.take())
            .send()
            .await
            .map_err(|e| {
                DeployError::aws("dynamodb:ListTables", &format!("tables in {region}"), &e)
            })?;
        for name in page.table_names() {
            if wanted.contains(name) {
                continue;
            }
            if let Some((resource, tags)) = read(client, region, name, scope).await?
                && scope.owns(&tags)
            {
                found.push(resource);
            }
        }
        match page.last_evaluated_table_name {
            Some(last) => start = Some(last),
            None => return Ok(found),
        }
    }
}

fn key_part(props: &BTreeMap<String, Value>, field: &str) -> Option<(String, String)> {
    let v = props.get(field)?;
    Some((
        v.get("name")?.as_str()?.to_owned(),
        v.get("type")?.as_str()?.to_owned(),
    ))
}

async fn wait_active(client: &Client, name: &str, id: &str) -> Result<(), DeployError> {
    for _ in 0..240 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| DeployError::aws("dynamodb:DescribeTable", id, &e))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(DeployError::refused(
        "dynamodb:DescribeTable",
        id,
        "the table did not become ACTIVE within 2 minutes; run up again",
    ))
}

fn tags(props: &BTreeMap<String, Value>) -> Vec<Tag> {
    super::tag_pairs(props)
        .into_iter()
        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
        .collect()
}

/// Applies one planned change to a table. `desired` is the wanted resource (none for a deletion),
/// `observed` what exists (none for a creation).
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let name = &change.name;
    let id = format!("Table/{region}/{name}");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let p = &want.props;
            let mut definitions = Vec::new();
            let mut schema = Vec::new();
            for (field, role) in [
                ("partition_key", KeyType::Hash),
                ("sort_key", KeyType::Range),
            ] {
                if let Some((attr, kind)) = key_part(p, field) {
                    let definition = AttributeDefinition::builder()
                        .attribute_name(&attr)
                        .attribute_type(ScalarAttributeType::from(kind.as_str()))
                        .build()
                        .map_err(|e| {
                            DeployError::refused("dynamodb:CreateTable", &id, e.to_string())
                        })?;
                    definitions.push(definition);
                    let element = KeySchemaElement::builder()
                        .attribute_name(&attr)
                        .key_type(role)
                        .build()
                        .map_err(|e| {
                            DeployError::refused("dynamodb:CreateTable", &id, e.to_string())
                        })?;
                    schema.push(element);
                }
            }
            let mut all_tags = tags(p);
            let mine = p.get("tags");
            all_tags.extend(
                Tag::builder()
                    .key(CREATED_TAG)
                    .value(created_value(
                        tag(mine, super::APP_TAG).unwrap_or_default(),
                        tag(mine, super::STAGE_TAG).unwrap_or_default(),
                    ))
                    .build()
                    .ok(),
            );
            let mut request = client
                .create_table()
                .table_name(name)
                .set_attribute_definitions(Some(definitions))
                .set_key_schema(Some(schema))
                .set_tags(Some(all_tags))
                .deletion_protection_enabled(flag(p, "deletion_protection"));
            // The app's table has the stream the replicator reads; its own tables have none.
            if text(p, "stream").is_some() {
                request = request.stream_specification(
                    StreamSpecification::builder()
                        .stream_enabled(true)
                        .stream_view_type(StreamViewType::NewAndOldImages)
                        .build()
                        .map_err(|e| {
                            DeployError::refused("dynamodb:CreateTable", &id, e.to_string())
                        })?,
                );
            }
            if text(p, "billing_mode") == Some("PROVISIONED") {
                request = request
                    .billing_mode(BillingMode::Provisioned)
                    .provisioned_throughput(
                        ProvisionedThroughput::builder()
                            .read_capacity_units(
                                p.get("read_capacity").and_then(Value::as_i64).unwrap_or(1),
                            )
                            .write_capacity_units(
                                p.get("write_capacity").and_then(Value::as_i64).unwrap_or(1),
                            )
                            .build()
                            .map_err(|e| {
                                DeployError::refused("dynamodb:CreateTable", &id, e.to_string())
                            })?,
                    );
            } else {
                request = request.billing_mode(BillingMode::PayPerRequest);
            }
            request
                .send()
                .await
                .map_err(|e| DeployError::aws("dynamodb:CreateTable", &id, &e))?;
            wait_active(client, name, &id).await?;
            if let Some(attribute) = text(p, "ttl_attribute") {
                enable_ttl(client, name, attribute, &id).await?;
            }
            if flag(p, "point_in_time_recovery") {
                set_pitr(client, name, true, &id).await?;
            }
            Ok(())
        }
        (Action::Update { changes }, Some(want)) => {
            let p = &want.props;
            for c in changes {
                match c.field.as_str() {
                    "tags" => {
                        // Adopting a table another app or stage manages would take its data:
                        // refused, naming both.
                        let theirs = observed.and_then(|o| o.props.get("tags"));
                        let mine = p.get("tags");
                        if let (Some(app), Some(stage)) =
                            (tag(theirs, super::APP_TAG), tag(theirs, super::STAGE_TAG))
                            && (Some(app), Some(stage))
                                != (tag(mine, super::APP_TAG), tag(mine, super::STAGE_TAG))
                        {
                            return Err(DeployError::refused(
                                "dynamodb:TagResource",
                                &id,
                                format!(
                                    "the table {name} in {region} belongs to app {app} stage \
                                     {stage} (its tworegion tags); give this deployment's table \
                                     another name in table.name"
                                ),
                            ));
                        }
                        let arn = super::observed_str(observed, "arn");
                        client
                            .tag_resource()
                            .resource_arn(arn)
                            .set_tags(Some(tags(p)))
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("dynamodb:TagResource", &id, &e))?;
                    }
                    "ttl_attribute" => {
                        if let Some(attribute) = text(p, "ttl_attribute") {
                            enable_ttl(client, name, attribute, &id).await?;
                        }
                    }
                    "deletion_protection" => {
                        set_deletion_protection(client, name, flag(p, "deletion_protection"), &id)
                            .await?;
                    }
                    "point_in_time_recovery" => {
                        set_pitr(client, name, flag(p, "point_in_time_recovery"), &id).await?;
                    }
                    "stream" => {
                        // DynamoDB refuses to enable a stream on a table that has one
                        // ("Table already has an enabled stream"): another view type means
                        // disabling it first, which drops the records not yet read from it.
                        let view = super::observed_str(observed, "stream");
                        if !view.is_empty() {
                            return Err(DeployError::refused(
                                "dynamodb:UpdateTable",
                                &id,
                                stream_change_refusal(name, region, view),
                            ));
                        }
                        client
                            .update_table()
                            .table_name(name)
                            .stream_specification(
                                StreamSpecification::builder()
                                    .stream_enabled(true)
                                    .stream_view_type(StreamViewType::NewAndOldImages)
                                    .build()
                                    .map_err(|e| {
                                        DeployError::refused(
                                            "dynamodb:UpdateTable",
                                            &id,
                                            e.to_string(),
                                        )
                                    })?,
                            )
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("dynamodb:UpdateTable", &id, &e))?;
                        wait_active(client, name, &id).await?;
                    }
                    other => {
                        return Err(DeployError::refused(
                            "dynamodb:UpdateTable",
                            &id,
                            format!(
                                "changing {other} in place is not supported yet; change it by hand or keep the config as it was"
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        (Action::Replace { changes }, _) => Err(DeployError::refused(
            "dynamodb:DeleteTable",
            &id,
            format!(
                "the config changes {} of an existing table, which needs a new table; the deployer never deletes a table's data to do that: migrate by hand",
                changes
                    .iter()
                    .map(|c| c.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        (Action::Release, _) => {
            let arn = super::observed_str(observed, "arn");
            client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(vec![
                    super::APP_TAG.to_owned(),
                    super::STAGE_TAG.to_owned(),
                    CREATED_TAG.to_owned(),
                ]))
                .send()
                .await
                .map_err(|e| DeployError::aws("dynamodb:UntagResource", &id, &e))?;
            Ok(())
        }
        (Action::Delete, _) => {
            // Reached only when the engine allowed the data loss: protection off, then delete.
            if observed.is_some_and(|o| flag(&o.props, "deletion_protection")) {
                set_deletion_protection(client, name, false, &id).await?;
            }
            client
                .delete_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("dynamodb:DeleteTable", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

/// Why the deployer does not switch an existing stream's view type itself, and how to do it.
fn stream_change_refusal(table: &str, region: &str, view: &str) -> String {
    format!(
        "the table's stream is {view}, the replicator needs NEW_AND_OLD_IMAGES, and DynamoDB cannot \
         change the view type of an enabled stream: disabling it drops the records nobody has read \
         yet, so do it by hand once nothing reads it (aws dynamodb update-table --region {region} \
         --table-name {table} --stream-specification StreamEnabled=false, wait until the table is \
         ACTIVE, then run up again)"
    )
}

fn flag(props: &BTreeMap<String, Value>, field: &str) -> bool {
    props.get(field).and_then(Value::as_bool).unwrap_or(false)
}

async fn set_deletion_protection(
    client: &Client,
    name: &str,
    on: bool,
    id: &str,
) -> Result<(), DeployError> {
    client
        .update_table()
        .table_name(name)
        .deletion_protection_enabled(on)
        .send()
        .await
        .map_err(|e| DeployError::aws("dynamodb:UpdateTable", id, &e))?;
    wait_active(client, name, id).await
}

async fn set_pitr(client: &Client, name: &str, on: bool, id: &str) -> Result<(), DeployError> {
    let spec = PointInTimeRecoverySpecification::builder()
        .point_in_time_recovery_enabled(on)
        .build()
        .map_err(|e| DeployError::refused("dynamodb:UpdateContinuousBackups", id, e.to_string()))?;
    // Right after CreateTable, DynamoDB refuses for a while with ContinuousBackupsUnavailable
    // ("Backups are being enabled"): asked again, up to 5 minutes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut pause = Duration::from_secs(2);
    loop {
        match client
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(spec.clone())
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_continuous_backups_unavailable_exception())
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(DeployError::aws("dynamodb:UpdateContinuousBackups", id, &e)),
        }
    }
}

async fn enable_ttl(
    client: &Client,
    name: &str,
    attribute: &str,
    id: &str,
) -> Result<(), DeployError> {
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(|e| DeployError::refused("dynamodb:UpdateTimeToLive", id, e.to_string()))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| DeployError::aws("dynamodb:UpdateTimeToLive", id, &e))?;
    Ok(())
}
