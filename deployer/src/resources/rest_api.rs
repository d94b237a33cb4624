//! The REST API in each region: a REGIONAL endpoint, the routes (each a Lambda proxy integration on
//! the function), a deployment to the stage, tags.
//!
//! A creation is resumable: the API is created with its name and tags first, so that when anything
//! after that fails, the next observation finds it by name and the plan completes it as an update.
//! Every change to routes or the integration is followed by a new deployment to the stage.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{
    EndpointConfiguration, EndpointType, IntegrationType, Op, PatchOperation, RestApi,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, observed_str, tag_pairs};
use crate::desired::{Kind, Resource, partition};
use crate::plan::{Action, Change};

/// API Gateway's page size for list calls (its maximum).
const PAGE: i32 = 500;

/// The Lambda proxy integration URI that invokes `function_arn` from an API in `region`.
pub fn integration_uri(region: &str, function_arn: &str) -> String {
    format!(
        "arn:{}:apigateway:{region}:lambda:path/2015-03-31/functions/{function_arn}/invocations",
        partition(region)
    )
}

/// The default endpoint's host name of the API `api_id` in `region` (China's names end in `.com.cn`).
pub fn execute_api_host(region: &str, api_id: &str) -> String {
    let suffix = if partition(region) == "aws-cn" {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("{api_id}.execute-api.{region}.{suffix}")
}

/// The function ARN inside a Lambda integration URI, if `uri` is one.
pub fn function_of(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once(":lambda:path/2015-03-31/functions/")?;
    rest.strip_suffix("/invocations")
}

/// The ARN that API Gateway's tagging calls take for a resource at `path` (`/restapis/{id}`,
/// `/apikeys/{id}`, `/usageplans/{id}`).
pub(crate) fn tagging_arn(region: &str, path: &str) -> String {
    format!("arn:{}:apigateway:{region}::{path}", partition(region))
}

/// Sets the managed tags of an API Gateway resource to the desired ones: tags what is wanted and
/// removes managed tags that are no longer wanted (other tags are left alone).
pub(crate) async fn retag(
    client: &Client,
    arn: &str,
    want: &Resource,
    observed: Option<&Resource>,
    id: &str,
) -> Result<(), DeployError> {
    let wanted: BTreeMap<String, String> = tag_pairs(&want.props).into_iter().collect();
    let stale: Vec<String> = observed
        .and_then(|o| o.props.get("tags"))
        .and_then(Value::as_object)
        .map(|tags| {
            tags.keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !wanted.is_empty() {
        client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(wanted.into_iter().collect()))
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:PUT (TagResource)", id, &e))?;
    }
    if !stale.is_empty() {
        client
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(stale))
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:DELETE (UntagResource)", id, &e))?;
    }
    Ok(())
}

/// A resource of `kind` with `props` (a JSON object).
pub(crate) fn resource(kind: Kind, region: &str, name: &str, props: Value) -> Resource {
    Resource::from_props(kind, Some(region.to_owned()), name.to_owned(), props)
}

/// A JSON value for a list of things that should be one: the thing when there is exactly one,
/// `null` when there is none, the list otherwise (so that a plan shows the difference).
pub(crate) fn one_or_all(mut values: Vec<Value>) -> Value {
    match values.len() {
        0 => Value::Null,
        1 => values.remove(0),
        _ => Value::Array(values),
    }
}

/// All REST APIs in the region.
async fn list_apis(client: &Client, region: &str) -> Result<Vec<RestApi>, DeployError> {
    super::apigateway_pages(|position| async move {
        let page = client
            .get_rest_apis()
            .limit(PAGE)
            .set_position(position)
            .send()
            .await
            .map_err(|e| {
                DeployError::aws(
                    "apigateway:GET (GetRestApis)",
                    &format!("REST APIs in {region}"),
                    &e,
                )
            })?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await
}

/// One method of the API as it exists.
#[derive(Debug, Clone)]
struct Route {
    path: String,
    method: String,
    api_key_required: bool,
    /// The function ARN of a Lambda proxy integration; any other integration as a description.
    integration: Option<String>,
    resource_id: String,
}

/// The API's methods sorted by (path, method), and the ID of every resource by path.
async fn read_routes(
    client: &Client,
    api_id: &str,
    id: &str,
) -> Result<(Vec<Route>, BTreeMap<String, String>), DeployError> {
    let mut routes = Vec::new();
    let mut resources = BTreeMap::new();
    let items = super::apigateway_pages(|position| async move {
        let page = client
            .get_resources()
            .rest_api_id(api_id)
            .embed("methods")
            .limit(PAGE)
            .set_position(position)
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:GET (GetResources)", id, &e))?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await?;
    for r in &items {
        let path = r.path().unwrap_or_default().to_owned();
        let resource_id = r.id().unwrap_or_default().to_owned();
        for (method, m) in r.resource_methods().into_iter().flatten() {
            let integration = m.method_integration().map(|i| {
                let kind = i.r#type().map(|t| t.as_str()).unwrap_or_default();
                let verb = i.http_method().unwrap_or_default();
                let uri = i.uri().unwrap_or_default();
                match function_of(uri) {
                    Some(function) if kind == "AWS_PROXY" && verb == "POST" => function.to_owned(),
                    _ => format!("{kind} {verb} {uri}"),
                }
            });
            routes.push(Route {
                path: path.clone(),
                method: method.clone(),
                api_key_required: m.api_key_required().unwrap_or(false),
                integration,
                resource_id: resource_id.clone(),
            });
        }
        resources.insert(path, resource_id);
    }
    routes.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    Ok((routes, resources))
}

/// The names of the API's stages, sorted.
async fn stages(client: &Client, api_id: &str, id: &str) -> Result<Vec<String>, DeployError> {
    let out = client
        .get_stages()
        .rest_api_id(api_id)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:GET (GetStages)", id, &e))?;
    let mut names: Vec<String> = out
        .item()
        .iter()
        .filter_map(|s| s.stage_name().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads one API into the desired form.
async fn read(client: &Client, region: &str, api: &RestApi) -> Result<Resource, DeployError> {
    let name = api.name().unwrap_or_default();
    let api_id = api.id().unwrap_or_default();
    let id = format!("RestApi/{region}/{name}");
    let (routes, _) = read_routes(client, api_id, &id).await?;
    let integrations: Vec<Value> = routes
        .iter()
        .map(|r| r.integration.clone().map_or(Value::Null, Value::String))
        .collect();
    // One function for every route, or what there is instead (so that the plan shows it).
    let integration = match integrations.first() {
        None => Value::Null,
        Some(first) if integrations.iter().all(|i| i == first) => first.clone(),
        Some(_) => Value::Array(integrations),
    };
    let account = integration
        .as_str()
        .filter(|f| f.starts_with("arn:"))
        .and_then(|f| f.split(':').nth(4))
        .filter(|a| !a.is_empty())
        .unwrap_or("*")
        .to_owned();
    let endpoint = one_or_all(
        api.endpoint_configuration()
            .map(|e| e.types())
            .unwrap_or_default()
            .iter()
            .map(|t| json!(t.as_str()))
            .collect(),
    );
    let stage = one_or_all(
        stages(client, api_id, &id)
            .await?
            .into_iter()
            .map(Value::String)
            .collect(),
    );
    let tags: BTreeMap<String, String> = api
        .tags()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let props = json!({
        "endpoint": endpoint,
        "routes": routes.iter().map(|r| json!({
            "path": r.path, "method": r.method, "api_key_required": r.api_key_required,
        })).collect::<Vec<_>>(),
        "integration": integration,
        "stage": stage,
        "tags": Scope::managed_tags(&tags),
        "id": api_id,
        "host": execute_api_host(region, api_id),
        "source_arn": format!("arn:{}:execute-api:{region}:{account}:{api_id}/*", partition(region)),
    });
    Ok(resource(Kind::RestApi, region, name, props))
}

/// The REST APIs of this app and stage in `region`: those named in `wanted` (adopted even without
/// tags) and any other API tagged with the scope (to be deleted). API names are not unique: of
/// several APIs with one name, the one tagged with the scope is taken, else the first listed.
pub async fn observe(
    client: &Client,
    region: &str,
    scope: &Scope,
    wanted: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let mut chosen: BTreeMap<String, (bool, RestApi)> = BTreeMap::new();
    for api in list_apis(client, region).await? {
        let name = api.name().unwrap_or_default().to_owned();
        let tags: BTreeMap<String, String> = api
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let owned = scope.owns(&tags);
        if !owned && !wanted.contains(&name) {
            continue;
        }
        let better = chosen.get(&name).is_none_or(|(had, _)| owned && !had);
        if better {
            chosen.insert(name, (owned, api));
        }
    }
    let mut found = Vec::new();
    for (_, api) in chosen.values() {
        found.push(read(client, region, api).await?);
    }
    Ok(found)
}

/// A desired route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WantedRoute {
    path: String,
    method: String,
    api_key_required: bool,
}

fn wanted_routes(want: &Resource) -> Vec<WantedRoute> {
    want.props
        .get("routes")
        .and_then(Value::as_array)
        .map(|routes| {
            routes
                .iter()
                .map(|r| WantedRoute {
                    path: r["path"].as_str().unwrap_or_default().to_owned(),
                    method: r["method"].as_str().unwrap_or_default().to_owned(),
                    api_key_required: r["api_key_required"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn text<'a>(props: &'a BTreeMap<String, Value>, field: &str) -> &'a str {
    props.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The desired function ARN, refusing when the function does not exist yet.
fn function_arn<'a>(want: &'a Resource, id: &str) -> Result<&'a str, DeployError> {
    let function = text(&want.props, "integration");
    if function.is_empty() || function.starts_with("ref:") {
        return Err(DeployError::refused(
            "apigateway:PUT (PutIntegration)",
            id,
            "the Lambda function does not exist yet",
        ));
    }
    Ok(function)
}

/// The paths from the root to `path`: `/a/b` gives `/`, `/a`, `/a/b`.
fn prefixes(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_owned()];
    let mut current = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        current = format!("{current}/{segment}");
        out.push(current.clone());
    }
    out
}

/// The parent path of a non-root path.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The ID of the resource at `path`, creating the missing resources on the way from the root.
async fn ensure_path(
    client: &Client,
    api_id: &str,
    resources: &mut BTreeMap<String, String>,
    path: &str,
    id: &str,
) -> Result<String, DeployError> {
    let mut parent_id = resources.get("/").cloned().ok_or_else(|| {
        DeployError::refused(
            "apigateway:GET (GetResources)",
            id,
            "the API has no root resource",
        )
    })?;
    for prefix in prefixes(path).into_iter().skip(1) {
        if let Some(existing) = resources.get(&prefix) {
            parent_id = existing.clone();
            continue;
        }
        let segment = prefix.rsplit('/').next().unwrap_or_default();
        let created = client
            .create_resource()
            .rest_api_id(api_id)
            .parent_id(&parent_id)
            .path_part(segment)
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:POST (CreateResource)", id, &e))?;
        parent_id = created.id().unwrap_or_default().to_owned();
        resources.insert(prefix, parent_id.clone());
    }
    Ok(parent_id)
}

/// Creates the method of `route` on `resource_id` with its Lambda proxy integration.
async fn put_route(
    client: &Client,
    api_id: &str,
    resource_id: &str,
    route: &WantedRoute,
    uri: &str,
    id: &str,
) -> Result<(), DeployError> {
    client
        .put_method()
        .rest_api_id(api_id)
        .resource_id(resource_id)
        .http_method(&route.method)
        .authorization_type("NONE")
        .api_key_required(route.api_key_required)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:PUT (PutMethod)", id, &e))?;
    put_integration(client, api_id, resource_id, &route.method, uri, id).await
}

async fn put_integration(
    client: &Client,
    api_id: &str,
    resource_id: &str,
    method: &str,
    uri: &str,
    id: &str,
) -> Result<(), DeployError> {
    client
        .put_integration()
        .rest_api_id(api_id)
        .resource_id(resource_id)
        .http_method(method)
        .r#type(IntegrationType::AwsProxy)
        .integration_http_method("POST")
        .uri(uri)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:PUT (PutIntegration)", id, &e))?;
    Ok(())
}

async fn delete_method(
    client: &Client,
    api_id: &str,
    resource_id: &str,
    method: &str,
    id: &str,
) -> Result<(), DeployError> {
    client
        .delete_method()
        .rest_api_id(api_id)
        .resource_id(resource_id)
        .http_method(method)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteMethod)", id, &e))?;
    Ok(())
}

/// Makes the API's methods and integrations those of `want`: creates what is missing, redoes the
/// methods and integrations that differ, removes methods and resources no longer wanted.
async fn sync_routes(
    client: &Client,
    region: &str,
    api_id: &str,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let function = function_arn(want, id)?;
    let uri = integration_uri(region, function);
    let wanted = wanted_routes(want);
    let (current, mut resources) = read_routes(client, api_id, id).await?;
    for route in &current {
        if !wanted
            .iter()
            .any(|w| w.path == route.path && w.method == route.method)
        {
            delete_method(client, api_id, &route.resource_id, &route.method, id).await?;
        }
    }
    for route in &wanted {
        let resource_id = ensure_path(client, api_id, &mut resources, &route.path, id).await?;
        match current
            .iter()
            .find(|c| c.path == route.path && c.method == route.method)
        {
            None => put_route(client, api_id, &resource_id, route, &uri, id).await?,
            // A method's settings cannot all be patched the same way everywhere; putting it again
            // (after removing it) is the one way that works for every setting.
            Some(c) if c.api_key_required != route.api_key_required => {
                delete_method(client, api_id, &resource_id, &route.method, id).await?;
                put_route(client, api_id, &resource_id, route, &uri, id).await?;
            }
            Some(c) if c.integration.as_deref() != Some(function) => {
                put_integration(client, api_id, &resource_id, &route.method, &uri, id).await?;
            }
            Some(_) => {}
        }
    }
    // Resources on no wanted path: delete the topmost ones (their children go with them).
    let needed: BTreeSet<String> = wanted.iter().flat_map(|w| prefixes(&w.path)).collect();
    for (path, resource_id) in &resources {
        if !needed.contains(path) && needed.contains(parent(path)) {
            client
                .delete_resource()
                .rest_api_id(api_id)
                .resource_id(resource_id)
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteResource)", id, &e))?;
        }
    }
    Ok(())
}

/// Deploys the API's current routes to the desired stage and removes any other stage.
async fn deploy(
    client: &Client,
    api_id: &str,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let stage = text(&want.props, "stage");
    if stage.is_empty() {
        return Err(DeployError::refused(
            "apigateway:POST (CreateDeployment)",
            id,
            "the desired REST API has no stage",
        ));
    }
    client
        .create_deployment()
        .rest_api_id(api_id)
        .stage_name(stage)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:POST (CreateDeployment)", id, &e))?;
    for other in stages(client, api_id, id).await? {
        if other != stage {
            client
                .delete_stage()
                .rest_api_id(api_id)
                .stage_name(&other)
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteStage)", id, &e))?;
        }
    }
    Ok(())
}

fn endpoint_type(want: &Resource) -> EndpointType {
    EndpointType::from(match text(&want.props, "endpoint") {
        "" => "REGIONAL",
        other => other,
    })
}

/// Applies one planned change to a REST API. `desired` has its references resolved (the function
/// ARN in `integration`); `observed` carries the API's `id`.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let name = &change.name;
    let id = format!("RestApi/{region}/{name}");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            // Refuse before creating anything, so that a refusal leaves nothing half made.
            function_arn(want, &id)?;
            let created = client
                .create_rest_api()
                .name(name)
                .endpoint_configuration(
                    EndpointConfiguration::builder()
                        .types(endpoint_type(want))
                        .build(),
                )
                .set_tags(Some(tag_pairs(&want.props).into_iter().collect()))
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:POST (CreateRestApi)", &id, &e))?;
            let api_id = created.id().unwrap_or_default();
            sync_routes(client, region, api_id, want, &id).await?;
            deploy(client, api_id, want, &id).await
        }
        (Action::Update { changes }, Some(want)) => {
            let api_id = observed_str(observed, "id");
            if api_id.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            let changed = |field: &str| changes.iter().any(|c| c.field == field);
            if changed("endpoint") {
                let from = observed
                    .and_then(|o| o.props.get("endpoint"))
                    .and_then(Value::as_str)
                    .unwrap_or("EDGE");
                client
                    .update_rest_api()
                    .rest_api_id(api_id)
                    .patch_operations(
                        PatchOperation::builder()
                            .op(Op::Replace)
                            .path(format!("/endpointConfiguration/types/{from}"))
                            .value(endpoint_type(want).as_str())
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("apigateway:PATCH (UpdateRestApi)", &id, &e))?;
            }
            if changed("routes") || changed("integration") {
                sync_routes(client, region, api_id, want, &id).await?;
                deploy(client, api_id, want, &id).await?;
            } else if changed("stage") {
                deploy(client, api_id, want, &id).await?;
            }
            if changed("tags") {
                let arn = tagging_arn(region, &format!("/restapis/{api_id}"));
                retag(client, &arn, want, observed, &id).await?;
            }
            Ok(())
        }
        (Action::Delete, _) => {
            let api_id = observed_str(observed, "id");
            if api_id.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            client
                .delete_rest_api()
                .rest_api_id(api_id)
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteRestApi)", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_uri_round_trips_the_function() {
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:todos-dev-api";
        let uri = integration_uri("us-east-1", arn);
        assert_eq!(
            uri,
            "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:todos-dev-api/invocations"
        );
        assert_eq!(function_of(&uri), Some(arn));
        assert_eq!(function_of("https://example.com/"), None);
    }

    #[test]
    fn arns_and_hosts_follow_the_partition() {
        assert_eq!(
            tagging_arn("us-east-1", "/restapis/a1"),
            "arn:aws:apigateway:us-east-1::/restapis/a1"
        );
        assert_eq!(
            tagging_arn("cn-north-1", "/restapis/a1"),
            "arn:aws-cn:apigateway:cn-north-1::/restapis/a1"
        );
        assert!(integration_uri("us-gov-west-1", "f").starts_with("arn:aws-us-gov:apigateway:"));
        assert_eq!(
            execute_api_host("cn-north-1", "a1"),
            "a1.execute-api.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            execute_api_host("eu-west-1", "a1"),
            "a1.execute-api.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn paths_split_into_their_prefixes() {
        assert_eq!(prefixes("/"), vec!["/"]);
        assert_eq!(prefixes("/{proxy+}"), vec!["/", "/{proxy+}"]);
        assert_eq!(
            prefixes("/todos/health"),
            vec!["/", "/todos", "/todos/health"]
        );
        assert_eq!(parent("/todos/health"), "/todos");
        assert_eq!(parent("/todos"), "/");
    }

    #[test]
    fn several_values_are_reported_as_a_list() {
        assert_eq!(one_or_all(vec![]), Value::Null);
        assert_eq!(one_or_all(vec![json!("a")]), json!("a"));
        assert_eq!(one_or_all(vec![json!("a"), json!("b")]), json!(["a", "b"]));
    }
}
