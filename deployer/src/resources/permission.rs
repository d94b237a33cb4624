//! API Gateway's permission to invoke the Lambda function: one statement in the function's resource
//! policy, its `Sid` the resource's name, limited to the region's REST API (`AWS:SourceArn`), on the
//! alias that API Gateway invokes (`qualifier`: a permission on the function alone does not cover
//! invoking an alias).

use aws_sdk_lambda::Client;
use serde_json::{Value, json};

use super::DeployError;
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The statement `name` in `function`'s policy, if present, in the desired form.
pub async fn observe(
    client: &Client,
    region: &str,
    function: &str,
    qualifier: Option<&str>,
    name: &str,
) -> Result<Option<Resource>, DeployError> {
    let id = format!("LambdaPermission/{region}/{name}");
    let policy = match client
        .get_policy()
        .function_name(function)
        .set_qualifier(qualifier.map(str::to_owned))
        .send()
        .await
    {
        Ok(out) => out.policy.unwrap_or_default(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DeployError::aws("lambda:GetPolicy", &id, &e)),
    };
    let document: Value = serde_json::from_str(&policy).unwrap_or(Value::Null);
    let statement = document["Statement"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["Sid"] == name));
    let Some(statement) = statement else {
        return Ok(None);
    };
    let principal = statement["Principal"]["Service"]
        .as_str()
        .or_else(|| statement["Principal"].as_str())
        .map(str::to_owned);
    let source = statement["Condition"]["ArnLike"]["AWS:SourceArn"]
        .as_str()
        .map(str::to_owned);
    let props = json!({ "function": function, "qualifier": qualifier, "principal": principal,
                        "source": source });
    Ok(Some(Resource::from_props(
        Kind::LambdaPermission,
        Some(region.to_owned()),
        name.to_owned(),
        props,
    )))
}

async fn add(client: &Client, want: &Resource, id: &str) -> Result<(), DeployError> {
    let text = |field: &str| {
        want.props
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let source = text("source");
    if source.starts_with("ref:") || source.is_empty() {
        return Err(DeployError::refused(
            "lambda:AddPermission",
            id,
            "the REST API does not exist yet",
        ));
    }
    client
        .add_permission()
        .function_name(text("function"))
        .set_qualifier(Some(text("qualifier")).filter(|q| !q.is_empty()))
        .statement_id(&want.name)
        .action("lambda:InvokeFunction")
        .principal(text("principal"))
        .source_arn(source)
        .send()
        .await
        .map_err(|e| DeployError::aws("lambda:AddPermission", id, &e))?;
    Ok(())
}

async fn remove(
    client: &Client,
    observed: Option<&Resource>,
    name: &str,
    id: &str,
) -> Result<(), DeployError> {
    let qualifier = super::observed_str(observed, "qualifier");
    client
        .remove_permission()
        .function_name(super::observed_str(observed, "function"))
        .set_qualifier(Some(qualifier.to_owned()).filter(|q| !q.is_empty()))
        .statement_id(name)
        .send()
        .await
        .map_err(|e| DeployError::aws("lambda:RemovePermission", id, &e))?;
    Ok(())
}

/// Applies one planned change (a changed statement is removed and added again).
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let id = format!(
        "LambdaPermission/{}/{}",
        change.region.as_deref().unwrap_or_default(),
        change.name
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => add(client, want, &id).await,
        (Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            remove(client, observed, &change.name, &id).await?;
            add(client, want, &id).await
        }
        (Action::Delete, _) => remove(client, observed, &change.name, &id).await,
        _ => Err(DeployError::unplanned(&id)),
    }
}
