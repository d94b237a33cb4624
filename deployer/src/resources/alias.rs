//! The function's alias `live`, which API Gateway invokes: it names a published version, so a new
//! build reaches users only when the alias moves to the version that holds it, and a rollout that
//! fails moves it back (see [`point`]). The alias is compared with the function by what its version
//! froze (code SHA-256 and settings).
//!
//! Lambda publishes a version of `$LATEST` only when its code or settings changed since the last
//! one; otherwise `PublishVersion` returns that last version, so re-running `up` never piles up
//! versions. Old versions are kept (Lambda's code storage quota counts them).

use aws_sdk_lambda::Client;
use serde_json::{Value, json};

use super::function::{code_props, wait_updated};
use super::{DeployError, text};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The alias `name` of `function` in `region`, if both exist: the code and settings of the version
/// it names, plus `function`, `version` and `arn` (the alias ARN, which API Gateway invokes).
pub async fn observe(
    client: &Client,
    region: &str,
    function: &str,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("LambdaAlias/{region}/{name}");
    let alias = match client
        .get_alias()
        .function_name(function)
        .name(name)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("lambda:GetAlias", &id, &e)),
    };
    let version = alias.function_version().unwrap_or("$LATEST").to_owned();
    let out = client
        .get_function()
        .function_name(function)
        .qualifier(&version)
        .send()
        .await
        .map_err(|e| DeployError::aws("lambda:GetFunction", &id, &e))?;
    let Some(config) = out.configuration() else {
        return Ok(None);
    };
    let mut props = code_props(config);
    props["function"] = json!(function);
    props["version"] = json!(version);
    props["arn"] = json!(alias.alias_arn());
    props["revision_id"] = json!(alias.revision_id());
    Ok(Some(Resource::from_props(
        Kind::LambdaAlias,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

/// Moves (`exists`) or creates the alias `name` of `function` to `version`. With `revision` (the
/// alias's revision when it was observed), Lambda refuses the move if the alias changed since.
pub async fn point(
    client: &Client,
    function: &str,
    name: &str,
    version: &str,
    exists: bool,
    revision: Option<&str>,
    id: &str,
) -> Result<(), DeployError> {
    if exists {
        client
            .update_alias()
            .function_name(function)
            .name(name)
            .function_version(version)
            .set_revision_id(revision.map(str::to_owned))
            .send()
            .await
            .map_err(|e| DeployError::aws("lambda:UpdateAlias", id, &e))?;
    } else {
        client
            .create_alias()
            .function_name(function)
            .name(name)
            .function_version(version)
            .send()
            .await
            .map_err(|e| DeployError::aws("lambda:CreateAlias", id, &e))?;
    }
    Ok(())
}

/// Applies one planned change: publishes `$LATEST` (which the function's change, applied before,
/// made what the config asks for) and points the alias at that version; a deletion deletes the alias.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("LambdaAlias/{region}/{}", change.name);
    match (&change.action, desired) {
        (Action::Create | Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            let function = text(&want.props, "function").unwrap_or_default();
            let sha = text(&want.props, "code_sha256").unwrap_or_default();
            wait_updated(client, function, &id).await?;
            // CodeSha256 makes Lambda refuse to publish anything but the artifact this run
            // uploaded (another `up` may have changed $LATEST meanwhile).
            let published = client
                .publish_version()
                .function_name(function)
                .code_sha256(sha)
                .description("published by deployer up")
                .send()
                .await
                .map_err(|e| DeployError::aws("lambda:PublishVersion", &id, &e))?;
            let version = published.version().unwrap_or_default();
            if published.code_sha256() != Some(sha) {
                return Err(DeployError::refused(
                    "lambda:PublishVersion",
                    &id,
                    format!(
                        "version {version} holds code {}, not this artifact ({sha}): the function \
                         changed meanwhile; run up again",
                        published.code_sha256().unwrap_or("unknown")
                    ),
                ));
            }
            point(
                client,
                function,
                &change.name,
                version,
                observed.is_some(),
                observed
                    .and_then(|o| o.props.get("revision_id"))
                    .and_then(Value::as_str),
                &id,
            )
            .await
        }
        (Action::Delete, _) => {
            let function = super::observed_str(observed, "function");
            client
                .delete_alias()
                .function_name(function)
                .name(&change.name)
                .send()
                .await
                .map_err(|e| DeployError::aws("lambda:DeleteAlias", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

/// The version an observed alias names (`None` when there is no alias).
pub fn version(observed: Option<&Resource>) -> Option<String> {
    observed
        .and_then(|r| r.props.get("version"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}
