//! Observing and applying resources on AWS, one file per kind. Each kind reads what exists (by the
//! desired names, so that untagged resources are adopted, and by the app/stage tags, so that resources
//! no longer wanted are found) into the same plain form as `desired`, and applies one planned change.

pub mod alarm;
pub mod alias;
pub mod api_key;
pub mod certificate;
pub mod cluster;
pub mod dns_record;
pub mod domain_name;
pub mod function;
pub mod health_check;
pub mod hosted_zone;
pub mod log_group;
pub mod permission;
pub mod rest_api;
pub mod role;
pub mod service;
pub mod table;
pub mod task_definition;
pub mod usage_plan;

use std::collections::BTreeMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde_json::{Value, json};

/// The app and stage whose resources the deployer manages; nothing else is ever changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `tworegion:app`.
    pub app: String,
    /// `tworegion:stage`.
    pub stage: String,
}

/// The tag keys that mark a resource as managed.
pub const APP_TAG: &str = "tworegion:app";
/// See [`APP_TAG`].
pub const STAGE_TAG: &str = "tworegion:stage";

impl Scope {
    /// The managed tags as `desired` writes them.
    pub fn tags(&self) -> Value {
        json!({ APP_TAG: self.app, STAGE_TAG: self.stage })
    }

    /// Whether a resource with these tags belongs to this app and stage.
    pub fn owns(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(APP_TAG) == Some(&self.app) && tags.get(STAGE_TAG) == Some(&self.stage)
    }

    /// The managed tags among `tags`, as `desired` writes them (other tags are not the deployer's).
    pub fn managed_tags(tags: &BTreeMap<String, String>) -> Value {
        let map: serde_json::Map<String, Value> = tags
            .iter()
            .filter(|(k, _)| k.as_str() == APP_TAG || k.as_str() == STAGE_TAG)
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Value::Object(map)
    }
}

/// The `tags` property of a desired resource as key-value pairs (each service has its own tag type).
pub fn tag_pairs(props: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    pairs(props, "tags")
}

/// A property that is an object of strings (tags, an environment, dimensions) as key-value pairs.
pub fn pairs(props: &BTreeMap<String, Value>, field: &str) -> Vec<(String, String)> {
    props
        .get(field)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every item of an API Gateway listing: follows `position` until a page has none, or is empty (the
/// local AWS repeats the last position on an empty page). `fetch` gets the position to start from and
/// returns the page's items and its `position`.
pub(crate) async fn apigateway_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, DeployError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), DeployError>>,
{
    let mut items = Vec::new();
    let mut position = None;
    loop {
        let (page, next) = fetch(position.take()).await?;
        let empty = page.is_empty();
        items.extend(page);
        match next {
            Some(next) if !next.is_empty() && !empty => position = Some(next),
            _ => return Ok(items),
        }
    }
}

/// A DNS name as Route 53 reports it: lower case, with the trailing dot.
pub fn dotted(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

/// The strings of an array property (none when missing).
pub fn strings(props: &BTreeMap<String, Value>, field: &str) -> Vec<String> {
    props
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An integer property that fits an `i32` (the SDKs' integer fields), if it is one.
pub fn int(props: &BTreeMap<String, Value>, field: &str) -> Option<i32> {
    props
        .get(field)
        .and_then(Value::as_i64)
        .and_then(|v| i32::try_from(v).ok())
}

/// A string property, if it is one.
pub fn text<'a>(props: &'a BTreeMap<String, Value>, field: &str) -> Option<&'a str> {
    props.get(field).and_then(Value::as_str)
}

/// A string property of an observed resource (its `arn`, `id`, ...), or "" when it is not known.
pub fn observed_str<'a>(observed: Option<&'a crate::desired::Resource>, field: &str) -> &'a str {
    observed
        .and_then(|o| o.props.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A failed AWS call, said so that an operator can act.
#[derive(Debug, thiserror::Error)]
#[error("{action} on {resource}: {message}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct DeployError {
    /// The API action, e.g. `dynamodb:CreateTable`.
    pub action: String,
    /// The resource, e.g. `Table/us-east-1/todos`.
    pub resource: String,
    /// What the service said.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The service could not be reached or failed on its side (no connection, a timeout, a 5xx,
    /// the local environment's outage): what a region that is down looks like, as opposed to a
    /// refusal (access denied, bad request) that a region which answers gives.
    pub unreachable: bool,
}

impl DeployError {
    /// A failure of `action` on `resource`, with a hint for the common causes.
    pub fn aws<E, R>(action: &str, resource: &str, error: &SdkError<E, R>) -> DeployError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = error
            .as_service_error()
            .and_then(|e| e.code())
            .unwrap_or_default();
        let hint = match code {
            "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => Some(format!(
                "the credentials lack the {action} permission; grant it and run up again"
            )),
            "ResourceInUseException" => Some(
                "another operation is still running on it; run up again in a minute".to_owned(),
            ),
            "LimitExceededException" | "ThrottlingException" | "TooManyRequestsException" => {
                Some("AWS throttled the call; run up again".to_owned())
            }
            _ => None,
        };
        DeployError {
            action: action.to_owned(),
            resource: resource.to_owned(),
            message: DisplayErrorContext(error).to_string(),
            hint,
            unreachable: unreachable(error, code),
        }
    }

    /// Whether this failure means the service is not there (see [`DeployError::unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// A planned change that lacks the resource it needs (a bug in the caller).
    pub fn unplanned(resource: &str) -> DeployError {
        DeployError::refused("plan", resource, "a change without the resource it needs")
    }

    /// A refusal of the deployer's own (a change it will not make).
    pub fn refused(action: &str, resource: &str, message: impl Into<String>) -> DeployError {
        DeployError {
            action: action.to_owned(),
            resource: resource.to_owned(),
            message: message.into(),
            hint: None,
            unreachable: false,
        }
    }
}

/// No connection, a timeout, an unreadable answer, or a server-side error code.
fn unreachable<E, R>(error: &SdkError<E, R>, code: &str) -> bool {
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => matches!(
            code,
            "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "InternalServerError"
                | "InternalFailure"
                | "InternalServerException"
                | "InternalError"
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;

    fn service(code: &str) -> SdkError<DescribeTableError, ()> {
        SdkError::service_error(
            DescribeTableError::generic(ErrorMetadata::builder().code(code).build()),
            (),
        )
    }

    #[test]
    fn only_a_region_that_is_not_there_is_unreachable() {
        let down = |e: &SdkError<DescribeTableError, ()>| {
            DeployError::aws("dynamodb:DescribeTable", "Table/r/t", e).is_unreachable()
        };
        assert!(down(&SdkError::timeout_error("no answer")));
        assert!(down(&service("ServiceUnavailable")));
        assert!(down(&service("InternalServerError")));
        // A region that answers with a refusal is there: an error, not an outage.
        assert!(!down(&service("AccessDeniedException")));
        assert!(!down(&service("ValidationException")));
        assert!(!down(&SdkError::construction_failure("bad input")));
        assert!(!DeployError::refused("a", "b", "c").is_unreachable());
    }
}
