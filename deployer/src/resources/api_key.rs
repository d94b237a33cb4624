//! The API key in each region, with the same value in both (from the config, or generated in the
//! primary region and read back from there for the secondary).
//!
//! The key's value is a secret and plans are printed: observed props never carry it. They say
//! instead whether it is the expected value (then they repeat the desired `value` prop) or not (its
//! length only). A key's value cannot change, so a different value replaces the key.

use std::collections::BTreeMap;

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{ApiKey, Op, PatchOperation};
use serde_json::{Value, json};

use super::rest_api::{resource, retag, tagging_arn};
use super::{DeployError, Scope, observed_str, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// All API keys in the region, with their values when `values` (never returned to callers).
async fn list_keys(
    client: &Client,
    region: &str,
    values: bool,
) -> Result<Vec<ApiKey>, DeployError> {
    super::apigateway_pages(|position| async move {
        let page = client
            .get_api_keys()
            .include_values(values)
            .limit(500)
            .set_position(position)
            .send()
            .await
            .map_err(|e| {
                DeployError::aws(
                    "apigateway:GET (GetApiKeys)",
                    &format!("API keys in {region}"),
                    &e,
                )
            })?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await
}

/// The `value` prop of an existing key: `desired_value_prop` when nothing is expected or the key
/// holds the expected value, else a description that differs from it (without the secret).
fn value_prop(real: &str, expected: Option<&str>, desired_value_prop: &Value) -> Value {
    match expected {
        Some(expected) if expected != real => json!({
            "source": "differs from the expected value",
            "value_length": real.chars().count(),
        }),
        _ => desired_value_prop.clone(),
    }
}

/// The API keys of this app and stage in `region`: the one named `name` (adopted even without tags)
/// and any other key tagged with the scope (to be deleted). Props: `value` (see the module doc;
/// `expected_value` is the value the key should hold, `None` when any value will do), `enabled`,
/// `tags`, `id`. Of several keys with one name, the one tagged with the scope is taken.
pub async fn observe(
    client: &Client,
    region: &str,
    scope: &Scope,
    name: &str,
    expected_value: Option<&str>,
    desired_value_prop: &Value,
) -> Result<Vec<Resource>, DeployError> {
    let mut chosen: BTreeMap<String, (bool, ApiKey)> = BTreeMap::new();
    // The secret is read only when there is a value to compare it with.
    for key in list_keys(client, region, expected_value.is_some()).await? {
        let key_name = key.name().unwrap_or_default().to_owned();
        let tags: BTreeMap<String, String> = key
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let owned = scope.owns(&tags);
        if !owned && key_name != name {
            continue;
        }
        if chosen.get(&key_name).is_none_or(|(had, _)| owned && !had) {
            chosen.insert(key_name, (owned, key));
        }
    }
    Ok(chosen
        .into_iter()
        .map(|(key_name, (_, key))| {
            let tags: BTreeMap<String, String> = key
                .tags()
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let props = json!({
                "value": value_prop(key.value().unwrap_or_default(), expected_value, desired_value_prop),
                "enabled": key.enabled(),
                "tags": Scope::managed_tags(&tags),
                "id": key.id(),
            });
            resource(Kind::ApiKey, region, &key_name, props)
        })
        .collect())
}

/// The real value of the key `id` (to give the secondary region the primary's generated value).
pub async fn value(client: &Client, id: &str) -> Result<String, DeployError> {
    let key = client
        .get_api_key()
        .api_key(id)
        .include_value(true)
        .send()
        .await
        .map_err(|e| {
            DeployError::aws("apigateway:GET (GetApiKey)", &format!("API key {id}"), &e)
        })?;
    key.value().map(str::to_owned).ok_or_else(|| {
        DeployError::refused(
            "apigateway:GET (GetApiKey)",
            &format!("API key {id}"),
            "the key has no value",
        )
    })
}

async fn create(
    client: &Client,
    want: &Resource,
    value: Option<&str>,
    id: &str,
) -> Result<(), DeployError> {
    let wanted = want.props.get("value").unwrap_or(&Value::Null);
    if wanted["source"] == "config" {
        let length = wanted["value_length"].as_u64();
        let given = value.map(|v| v.chars().count() as u64);
        if given.is_none() || length.is_some() && given != length {
            return Err(DeployError::refused(
                "apigateway:POST (CreateApiKey)",
                id,
                "the config's key value was not given to the deployer (or has another length)",
            ));
        }
    }
    client
        .create_api_key()
        .name(&want.name)
        .enabled(
            want.props
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        )
        .set_value(value.map(str::to_owned))
        .set_tags(Some(tag_pairs(&want.props).into_iter().collect()))
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:POST (CreateApiKey)", id, &e))?;
    Ok(())
}

async fn delete(client: &Client, key_id: &str, id: &str) -> Result<(), DeployError> {
    if key_id.is_empty() {
        return Err(DeployError::unplanned(id));
    }
    client
        .delete_api_key()
        .api_key(key_id)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteApiKey)", id, &e))?;
    Ok(())
}

/// Applies one planned change to an API key. `value` is the key's value for a creation (`None`:
/// API Gateway generates one); a replacement deletes the key and creates it with `value`.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
    value: Option<&str>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("ApiKey/{region}/{}", change.name);
    let key_id = observed_str(observed, "id");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => create(client, want, value, &id).await,
        (Action::Update { changes }, Some(want)) => {
            for c in changes {
                match c.field.as_str() {
                    "enabled" => {
                        let enabled = want
                            .props
                            .get("enabled")
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        client
                            .update_api_key()
                            .api_key(key_id)
                            .patch_operations(
                                PatchOperation::builder()
                                    .op(Op::Replace)
                                    .path("/enabled")
                                    .value(enabled.to_string())
                                    .build(),
                            )
                            .send()
                            .await
                            .map_err(|e| {
                                DeployError::aws("apigateway:PATCH (UpdateApiKey)", &id, &e)
                            })?;
                    }
                    "tags" => {
                        let arn = tagging_arn(region, &format!("/apikeys/{key_id}"));
                        retag(client, &arn, want, observed, &id).await?;
                    }
                    other => {
                        return Err(DeployError::refused(
                            "apigateway:PATCH (UpdateApiKey)",
                            &id,
                            format!("{other} cannot change in place"),
                        ));
                    }
                }
            }
            Ok(())
        }
        (Action::Replace { .. }, Some(want)) => {
            delete(client, key_id, &id).await?;
            create(client, want, value, &id).await
        }
        (Action::Delete, _) => delete(client, key_id, &id).await,
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_described_never_shown() {
        let desired = json!({ "source": "config", "value_length": 24 });
        let secret = "0123456789abcdefghij-key";
        assert_eq!(value_prop(secret, Some(secret), &desired), desired);
        assert_eq!(value_prop(secret, None, &desired), desired);
        let other = value_prop(secret, Some("another-value-of-the-key"), &desired);
        assert_eq!(
            other,
            json!({ "source": "differs from the expected value", "value_length": 24 })
        );
        assert!(!other.to_string().contains(secret));
    }
}
