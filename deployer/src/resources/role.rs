//! IAM roles: the Lambda function's role and the replicator's task and execution roles. Each has a
//! trust policy for one service, and either one inline policy (generated from the config, least
//! privilege) or one AWS-managed policy. IAM is global, so the role names carry the region.

use std::collections::BTreeMap;

use aws_sdk_iam::Client;
use aws_sdk_iam::types::Tag;
use serde_json::{Value, json};

use super::{DeployError, Scope};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The name of the inline policy the deployer writes.
pub const POLICY_NAME: &str = "tworegion";

/// The trust policy letting `service` assume a role.
pub fn trust_policy(service: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Principal": { "Service": service }, "Action": "sts:AssumeRole" }]
    })
}

/// IAM returns policy documents URL-encoded; decodes them (plain JSON is returned as it is).
pub fn decode_document(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(text) {
        return Some(v);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    serde_json::from_slice(&out).ok()
}

/// The kind and region of one of this deployment's roles, from its name (`<app>-<stage>-api-<region>`,
/// `...-replicator-exec-<region>`, `...-replicator-<region>`).
fn classify(prefix: &str, name: &str) -> Option<(Kind, String)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (kind, region) = if let Some(r) = rest.strip_prefix("api-") {
        (Kind::LambdaRole, r)
    } else if let Some(r) = rest.strip_prefix("replicator-exec-") {
        (Kind::ExecutionRole, r)
    } else if let Some(r) = rest.strip_prefix("replicator-") {
        (Kind::TaskRole, r)
    } else {
        return None;
    };
    Some((kind, region.to_owned()))
}

async fn read(
    client: &Client,
    kind: Kind,
    region: &str,
    name: &str,
) -> Result<Option<(Resource, BTreeMap<String, String>)>, DeployError> {
    let id = format!("{kind:?}/{region}/{name}");
    let role = match client.get_role().role_name(name).send().await {
        Ok(out) => out.role,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("iam:GetRole", &id, &e)),
    };
    let Some(role) = role else { return Ok(None) };
    let assume = role
        .assume_role_policy_document()
        .and_then(decode_document)
        .and_then(|d| {
            d["Statement"][0]["Principal"]["Service"]
                .as_str()
                .map(str::to_owned)
        });
    let policy = match client
        .get_role_policy()
        .role_name(name)
        .policy_name(POLICY_NAME)
        .send()
        .await
    {
        Ok(out) => decode_document(out.policy_document()).unwrap_or(Value::Null),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Value::Null
        }
        Err(e) => return Err(DeployError::aws("iam:GetRolePolicy", &id, &e)),
    };
    let managed = client
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .map_err(|e| DeployError::aws("iam:ListAttachedRolePolicies", &id, &e))?
        .attached_policies()
        .first()
        .and_then(|p| p.policy_arn().map(str::to_owned));
    let tags: BTreeMap<String, String> = client
        .list_role_tags()
        .role_name(name)
        .send()
        .await
        .map_err(|e| DeployError::aws("iam:ListRoleTags", &id, &e))?
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let props = json!({
        "assume": assume,
        "policy": policy,
        "managed_policy": managed,
        "tags": Scope::managed_tags(&tags),
        "arn": role.arn(),
    });
    let resource = Resource::from_props(kind, Some(region.to_owned()), name.to_owned(), props);
    Ok(Some((resource, tags)))
}

/// The roles of this deployment: the desired ones by name (adopted even without tags) and any other
/// role named and tagged as this deployment's (to be deleted).
pub async fn observe(
    client: &Client,
    scope: &Scope,
    wanted: &[Resource],
) -> Result<Vec<Resource>, DeployError> {
    let prefix = crate::names::prefix(&scope.app, &scope.stage);
    let mut found = Vec::new();
    for want in wanted {
        let region = want.region.as_deref().unwrap_or_default();
        if let Some((resource, _)) = read(client, want.kind, region, &want.name).await? {
            found.push(resource);
        }
    }
    let mut marker = None;
    loop {
        let page = client
            .list_roles()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| DeployError::aws("iam:ListRoles", "roles", &e))?;
        for role in page.roles() {
            let name = role.role_name();
            if wanted.iter().any(|w| w.name == name) {
                continue;
            }
            let Some((kind, region)) = classify(&prefix, name) else {
                continue;
            };
            if let Some((resource, tags)) = read(client, kind, &region, name).await?
                && scope.owns(&tags)
            {
                found.push(resource);
            }
        }
        match (page.is_truncated, page.marker) {
            (true, Some(next)) => marker = Some(next),
            _ => return Ok(found),
        }
    }
}

fn tags(props: &BTreeMap<String, Value>) -> Vec<Tag> {
    super::tag_pairs(props)
        .into_iter()
        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
        .collect()
}

async fn put_permissions(
    client: &Client,
    name: &str,
    props: &BTreeMap<String, Value>,
    id: &str,
) -> Result<(), DeployError> {
    if let Some(policy) = props.get("policy").filter(|p| p.is_object()) {
        client
            .put_role_policy()
            .role_name(name)
            .policy_name(POLICY_NAME)
            .policy_document(policy.to_string())
            .send()
            .await
            .map_err(|e| DeployError::aws("iam:PutRolePolicy", id, &e))?;
    }
    if let Some(arn) = props.get("managed_policy").and_then(Value::as_str) {
        client
            .attach_role_policy()
            .role_name(name)
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| DeployError::aws("iam:AttachRolePolicy", id, &e))?;
    }
    Ok(())
}

/// Applies one planned change to a role.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let name = &change.name;
    let id = format!(
        "{:?}/{}/{name}",
        change.kind,
        change.region.as_deref().unwrap_or_default()
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let service = want
                .props
                .get("assume")
                .and_then(Value::as_str)
                .unwrap_or_default();
            client
                .create_role()
                .role_name(name)
                .assume_role_policy_document(trust_policy(service).to_string())
                .set_tags(Some(tags(&want.props)))
                .send()
                .await
                .map_err(|e| DeployError::aws("iam:CreateRole", &id, &e))?;
            put_permissions(client, name, &want.props, &id).await
        }
        (Action::Update { changes } | Action::Replace { changes }, Some(want)) => {
            for c in changes {
                match c.field.as_str() {
                    "assume" => {
                        let service = want
                            .props
                            .get("assume")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        client
                            .update_assume_role_policy()
                            .role_name(name)
                            .policy_document(trust_policy(service).to_string())
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("iam:UpdateAssumeRolePolicy", &id, &e))?;
                    }
                    "tags" => {
                        client
                            .tag_role()
                            .role_name(name)
                            .set_tags(Some(tags(&want.props)))
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("iam:TagRole", &id, &e))?;
                    }
                    _ => put_permissions(client, name, &want.props, &id).await?,
                }
            }
            Ok(())
        }
        (Action::Delete, _) => {
            if observed
                .and_then(|o| o.props.get("policy"))
                .is_some_and(Value::is_object)
            {
                client
                    .delete_role_policy()
                    .role_name(name)
                    .policy_name(POLICY_NAME)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("iam:DeleteRolePolicy", &id, &e))?;
            }
            if let Some(arn) = observed
                .and_then(|o| o.props.get("managed_policy"))
                .and_then(Value::as_str)
            {
                client
                    .detach_role_policy()
                    .role_name(name)
                    .policy_arn(arn)
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("iam:DetachRolePolicy", &id, &e))?;
            }
            client
                .delete_role()
                .role_name(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("iam:DeleteRole", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_decode_and_names_classify() {
        let doc = trust_policy("lambda.amazonaws.com");
        let encoded: String = doc
            .to_string()
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_eq!(decode_document(&encoded), Some(doc.clone()));
        assert_eq!(decode_document(&doc.to_string()), Some(doc));
        assert_eq!(
            classify("todos-dev", "todos-dev-api-us-east-1"),
            Some((Kind::LambdaRole, "us-east-1".into()))
        );
        assert_eq!(
            classify("todos-dev", "todos-dev-replicator-exec-us-west-2"),
            Some((Kind::ExecutionRole, "us-west-2".into()))
        );
        assert_eq!(
            classify("todos-dev", "todos-dev-replicator-us-west-2"),
            Some((Kind::TaskRole, "us-west-2".into()))
        );
        assert_eq!(classify("todos-dev", "todos-prod-api-us-east-1"), None);
    }
}
