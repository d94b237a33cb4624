//! The Lambda function in each region: the artifact (compared by its SHA-256, as Lambda reports it),
//! runtime, architecture, handler, memory, timeout, role, environment and tags.

use std::collections::BTreeMap;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use std::time::Duration;

use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::operation::create_function::CreateFunctionError;
use aws_sdk_lambda::types::{
    Architecture, Environment, FunctionCode, FunctionConfiguration, LastUpdateStatus, Runtime,
    State,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{DeployError, Scope, int, text};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The artifact's SHA-256 in base64, the form Lambda reports as `CodeSha256`.
pub fn code_sha256(artifact: &[u8]) -> String {
    base64(&Sha256::digest(artifact))
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The function `name` in `region`, if it exists, in the desired form (with its `arn`).
pub async fn observe(
    client: &Client,
    region: &str,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("LambdaFunction/{region}/{name}");
    let out = match client.get_function().function_name(name).send().await {
        Ok(out) => out,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("lambda:GetFunction", &id, &e)),
    };
    let Some(config) = out.configuration() else {
        return Ok(None);
    };
    let tags: BTreeMap<String, String> = out
        .tags()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut props = code_props(config);
    props["tags"] = Scope::managed_tags(&tags);
    props["arn"] = json!(config.function_arn());
    Ok(Some(Resource::from_props(
        Kind::LambdaFunction,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

/// The code and settings of a function or of one of its published versions, in the desired form
/// (the fields that a version freezes, so that an alias can be compared with the function).
pub fn code_props(config: &FunctionConfiguration) -> Value {
    let environment: BTreeMap<String, String> = config
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    json!({
        "runtime": config.runtime().map(|r| r.as_str()),
        "architecture": config.architectures().first().map(|a| a.as_str()),
        "handler": config.handler(),
        "memory_mb": config.memory_size(),
        "timeout_seconds": config.timeout(),
        "code_sha256": config.code_sha256(),
        "role": config.role(),
        "environment": environment,
    })
}

fn environment(props: &BTreeMap<String, Value>) -> Environment {
    let vars = props
        .get("environment")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        });
    Environment::builder().set_variables(vars).build()
}

fn role(props: &BTreeMap<String, Value>, id: &str) -> Result<String, DeployError> {
    text(props, "role")
        .filter(|r| !r.starts_with("ref:"))
        .map(str::to_owned)
        .ok_or_else(|| {
            DeployError::refused(
                "lambda:CreateFunction",
                id,
                "the function's role does not exist yet",
            )
        })
}

const ROLE_RETRIES: usize = 12;

fn role_not_ready<R>(e: &SdkError<CreateFunctionError, R>) -> bool {
    e.as_service_error().is_some_and(|s| {
        s.is_invalid_parameter_value_exception()
            && s.meta()
                .message()
                .is_some_and(|m| m.contains("cannot be assumed"))
    })
}

/// Waits (at most two minutes) until the function is Active and its last update is done: Lambda
/// refuses further changes while one is in progress.
pub(crate) async fn wait_updated(client: &Client, name: &str, id: &str) -> Result<(), DeployError> {
    for _ in 0..120 {
        let config = client
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .map_err(|e| DeployError::aws("lambda:GetFunctionConfiguration", id, &e))?;
        let pending = config.state() == Some(&State::Pending)
            || config.last_update_status() == Some(&LastUpdateStatus::InProgress);
        if !pending {
            if config.state() == Some(&State::Failed)
                || config.last_update_status() == Some(&LastUpdateStatus::Failed)
            {
                return Err(DeployError::refused(
                    "lambda:GetFunctionConfiguration",
                    id,
                    format!(
                        "the function's last update failed: {}",
                        config
                            .last_update_status_reason()
                            .or(config.state_reason())
                            .unwrap_or("no reason given")
                    ),
                ));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(DeployError::refused(
        "lambda:GetFunctionConfiguration",
        id,
        "the function is still updating after two minutes; run up again",
    ))
}

/// Applies one planned change to the function; `artifact` is the zip's content (for creation and code
/// updates).
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
    artifact: &[u8],
) -> Result<(), DeployError> {
    let name = &change.name;
    let id = format!(
        "LambdaFunction/{}/{name}",
        change.region.as_deref().unwrap_or_default()
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let p = &want.props;
            let tags = Some(super::tag_pairs(p).into_iter().collect());
            let create = client
                .create_function()
                .function_name(name)
                .runtime(Runtime::from(
                    text(p, "runtime").unwrap_or("provided.al2023"),
                ))
                .architectures(Architecture::from(
                    text(p, "architecture").unwrap_or("x86_64"),
                ))
                .handler(text(p, "handler").unwrap_or("bootstrap"))
                .role(role(p, &id)?)
                .set_memory_size(int(p, "memory_mb"))
                .set_timeout(int(p, "timeout_seconds"))
                .environment(environment(p))
                .code(
                    FunctionCode::builder()
                        .zip_file(Blob::new(artifact.to_vec()))
                        .build(),
                )
                .set_tags(tags);
            // A role made a moment ago may not be assumable by Lambda yet (IAM is eventually
            // consistent): retry that one refusal for up to a minute.
            let mut attempt = 0;
            loop {
                match create.clone().send().await {
                    Ok(_) => break,
                    Err(e) if attempt < ROLE_RETRIES && role_not_ready(&e) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Err(e) => return Err(DeployError::aws("lambda:CreateFunction", &id, &e)),
                }
            }
            wait_updated(client, name, &id).await
        }
        (Action::Update { changes } | Action::Replace { changes }, Some(want)) => {
            let p = &want.props;
            if changes
                .iter()
                .any(|c| c.field == "code_sha256" || c.field == "architecture")
            {
                client
                    .update_function_code()
                    .function_name(name)
                    .zip_file(Blob::new(artifact.to_vec()))
                    .architectures(Architecture::from(
                        text(p, "architecture").unwrap_or("x86_64"),
                    ))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("lambda:UpdateFunctionCode", &id, &e))?;
                // A configuration update while the code update runs is refused (409).
                wait_updated(client, name, &id).await?;
            }
            let config_fields = [
                "runtime",
                "handler",
                "memory_mb",
                "timeout_seconds",
                "role",
                "environment",
            ];
            if changes
                .iter()
                .any(|c| config_fields.contains(&c.field.as_str()))
            {
                client
                    .update_function_configuration()
                    .function_name(name)
                    .runtime(Runtime::from(
                        text(p, "runtime").unwrap_or("provided.al2023"),
                    ))
                    .handler(text(p, "handler").unwrap_or("bootstrap"))
                    .role(role(p, &id)?)
                    .set_memory_size(int(p, "memory_mb"))
                    .set_timeout(int(p, "timeout_seconds"))
                    .environment(environment(p))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("lambda:UpdateFunctionConfiguration", &id, &e))?;
                wait_updated(client, name, &id).await?;
            }
            if changes.iter().any(|c| c.field == "tags") {
                // Adopting a function made by hand: add the managed tags (others stay).
                let arn = super::observed_str(observed, "arn");
                client
                    .tag_resource()
                    .resource(arn)
                    .set_tags(Some(super::tag_pairs(p).into_iter().collect()))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("lambda:TagResource", &id, &e))?;
            }
            Ok(())
        }
        (Action::Delete, _) => {
            client
                .delete_function()
                .function_name(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("lambda:DeleteFunction", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_base64_as_lambda_reports_it() {
        // sha256("") = e3b0c442...; base64 of the raw digest:
        assert_eq!(
            code_sha256(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
