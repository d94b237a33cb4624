//! The regional custom domain of the API in each region (API Gateway `DomainName`: REGIONAL endpoint,
//! TLS 1.2, the region's ACM certificate, tags) and its empty base path mapping to the API's stage.
//! The failover DNS records alias the domain's `regionalDomainName`, reported as `alias`.

use std::collections::BTreeMap;

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{
    DomainName, EndpointConfiguration, EndpointType, Op, PatchOperation, SecurityPolicy,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, dotted, tag_pairs, text};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// How API Gateway names the empty base path.
const NO_BASE_PATH: &str = "(none)";

/// The ARN API Gateway tags a custom domain by.
fn domain_arn(region: &str, domain: &str) -> String {
    super::rest_api::tagging_arn(region, &format!("/domainnames/{domain}"))
}

fn domain_resource(region: &str, domain: &DomainName) -> Resource {
    let tags: BTreeMap<String, String> = domain
        .tags()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let endpoint = domain
        .endpoint_configuration()
        .and_then(|c| c.types().first())
        .map(|t| json!(t.as_str()))
        .unwrap_or(Value::Null);
    let alias = match (
        domain.regional_domain_name(),
        domain.regional_hosted_zone_id(),
    ) {
        (Some(name), Some(zone)) => json!({ "dns_name": dotted(name), "hosted_zone_id": zone }),
        _ => Value::Null,
    };
    Resource::from_props(
        Kind::DomainName,
        Some(region.to_owned()),
        domain.domain_name().unwrap_or_default().to_owned(),
        json!({
            "endpoint": endpoint,
            "security_policy": domain.security_policy().map(|p| p.as_str()),
            "certificate": domain.regional_certificate_arn(),
            "tags": Scope::managed_tags(&tags),
            "regional_domain_name": domain.regional_domain_name().map(dotted),
            "alias": alias,
            "status": domain.domain_name_status().map(|s| s.as_str()),
        }),
    )
}

/// The custom domains in `region` that are named in `wanted` (adopted even without tags) or tagged
/// with the scope (to be deleted when no longer wanted), in the desired form plus
/// `"alias": {"dns_name": <regionalDomainName, lower case with the trailing dot, as Route 53 reports
/// alias targets>, "hosted_zone_id": <regionalHostedZoneId>}` and `"status"`.
pub async fn observe(
    client: &Client,
    region: &str,
    scope: &Scope,
    wanted: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let id = &format!("DomainName/{region}");
    let mut found = Vec::new();
    let domains = super::apigateway_pages(|position| async move {
        let page = client
            .get_domain_names()
            .limit(500)
            .set_position(position)
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:GET /domainnames", id, &e))?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await?;
    for domain in &domains {
        let Some(name) = domain.domain_name() else {
            continue;
        };
        let tags: BTreeMap<String, String> = domain
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if wanted.iter().any(|w| w == name) || scope.owns(&tags) {
            found.push(domain_resource(region, domain));
        }
    }
    Ok(found)
}

fn patch(path: &str, value: &str) -> PatchOperation {
    PatchOperation::builder()
        .op(Op::Replace)
        .path(path)
        .value(value)
        .build()
}

/// The certificate ARN of desired props, refused while it is still a reference.
fn certificate(props: &BTreeMap<String, Value>, id: &str) -> Result<String, DeployError> {
    match text(props, "certificate") {
        Some(arn) if !arn.starts_with("ref:") && !arn.is_empty() => Ok(arn.to_owned()),
        other => Err(DeployError::refused(
            "apigateway:POST /domainnames",
            id,
            format!(
                "the certificate {} does not exist yet",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

async fn create_domain(
    client: &Client,
    region: &str,
    name: &str,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let certificate = certificate(&want.props, id)?;
    let endpoint = text(&want.props, "endpoint").unwrap_or("REGIONAL");
    let mut request = client
        .create_domain_name()
        .domain_name(name)
        .regional_certificate_arn(certificate)
        .endpoint_configuration(
            EndpointConfiguration::builder()
                .types(EndpointType::from(endpoint))
                .build(),
        )
        .security_policy(SecurityPolicy::from(
            text(&want.props, "security_policy").unwrap_or("TLS_1_2"),
        ));
    for (k, v) in tag_pairs(&want.props) {
        request = request.tags(k, v);
    }
    request
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:POST /domainnames", id, &e))?;
    tracing::info!(domain = %name, region = %region, "Custom domain created.");
    Ok(())
}

async fn delete_domain(client: &Client, name: &str, id: &str) -> Result<(), DeployError> {
    match client.delete_domain_name().domain_name(name).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(DeployError::aws("apigateway:DELETE /domainnames", id, &e)),
    }
}

/// Applies one planned change to a custom domain. Create: REGIONAL endpoint, the security policy,
/// the certificate as `regionalCertificateArn`, tags. Update, in place: the certificate and the
/// security policy with one PATCH, the tags with TagResource; a different endpoint type is refused
/// (migrating an existing EDGE domain is left to its owner). Replace: delete, then create. Delete.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let name = change.name.as_str();
    let id = format!("DomainName/{region}/{name}");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => create_domain(client, region, name, want, &id).await,
        (Action::Replace { .. }, Some(want)) => {
            delete_domain(client, name, &id).await?;
            create_domain(client, region, name, want, &id).await
        }
        (Action::Update { changes }, Some(want)) => {
            let mut patches = Vec::new();
            for c in changes {
                match c.field.as_str() {
                    "certificate" => {
                        patches.push(patch(
                            "/regionalCertificateArn",
                            &certificate(&want.props, &id)?,
                        ));
                    }
                    "security_policy" => {
                        if let Some(policy) = text(&want.props, "security_policy") {
                            patches.push(patch("/securityPolicy", policy));
                        }
                    }
                    "endpoint" => {
                        return Err(DeployError::refused(
                            "apigateway:PATCH /domainnames",
                            &id,
                            format!(
                                "the custom domain's endpoint is {}, not {}: migrate it in the API \
                                 Gateway console (or delete it) and run up again",
                                super::observed_str(observed, "endpoint"),
                                text(&want.props, "endpoint").unwrap_or_default()
                            ),
                        ));
                    }
                    "tags" => {
                        let mut request =
                            client.tag_resource().resource_arn(domain_arn(region, name));
                        for (k, v) in tag_pairs(&want.props) {
                            request = request.tags(k, v);
                        }
                        request
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("apigateway:PUT /tags", &id, &e))?;
                    }
                    _ => {}
                }
            }
            if !patches.is_empty() {
                client
                    .update_domain_name()
                    .domain_name(name)
                    .set_patch_operations(Some(patches))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("apigateway:PATCH /domainnames", &id, &e))?;
            }
            Ok(())
        }
        (Action::Delete, _) => delete_domain(client, name, &id).await,
        _ => Err(DeployError::unplanned(&id)),
    }
}

/// The domain and the base path of a mapping's name `<domain>/<base path or (none)>`.
fn split_mapping(name: &str) -> (&str, &str) {
    name.rsplit_once('/').unwrap_or((name, NO_BASE_PATH))
}

/// The empty base path mappings of `domains` (the desired custom domains and those observed as
/// ours; each given as the domain or as the mapping's name `<domain>/(none)`) in `region`, named
/// `<domain>/(none)`, as `{"base_path": "", "api": <REST API id>, "stage"}`. A domain that does not
/// exist has none. Mappings with other base paths are not the deployer's and are never reported.
pub async fn observe_mapping(
    client: &Client,
    region: &str,
    domains: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let mut unique: Vec<&str> = domains
        .iter()
        .map(|d| d.split_once('/').map_or(d.as_str(), |(domain, _)| domain))
        .collect();
    unique.sort_unstable();
    unique.dedup();
    let mut found = Vec::new();
    for domain in unique {
        let id = &format!("BasePathMapping/{region}/{domain}/{NO_BASE_PATH}");
        let mappings = super::apigateway_pages(|position| async move {
            match client
                .get_base_path_mappings()
                .domain_name(domain)
                .limit(500)
                .set_position(position)
                .send()
                .await
            {
                Ok(page) => Ok((page.items().to_vec(), page.position().map(str::to_owned))),
                // No such domain: no mappings.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_not_found_exception()) =>
                {
                    Ok((Vec::new(), None))
                }
                Err(e) => Err(DeployError::aws(
                    "apigateway:GET /domainnames/basepathmappings",
                    id,
                    &e,
                )),
            }
        })
        .await?;
        for mapping in &mappings {
            let base = mapping.base_path().unwrap_or(NO_BASE_PATH);
            if base != NO_BASE_PATH && !base.is_empty() {
                continue;
            }
            found.push(Resource::from_props(
                Kind::BasePathMapping,
                Some(region.to_owned()),
                format!("{domain}/{NO_BASE_PATH}"),
                json!({
                    "base_path": "",
                    "api": mapping.rest_api_id(),
                    "stage": mapping.stage(),
                }),
            ));
        }
    }
    Ok(found)
}

/// The REST API id and stage of desired mapping props, refused while the API is still a reference.
fn target<'a>(
    props: &'a BTreeMap<String, Value>,
    id: &str,
) -> Result<(&'a str, &'a str), DeployError> {
    let api = text(props, "api").unwrap_or_default();
    if api.is_empty() || api.starts_with("ref:") {
        return Err(DeployError::refused(
            "apigateway:POST /domainnames/basepathmappings",
            id,
            format!("the REST API {api} does not exist yet"),
        ));
    }
    Ok((api, text(props, "stage").unwrap_or_default()))
}

async fn create_mapping(
    client: &Client,
    domain: &str,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let (api, stage) = target(&want.props, id)?;
    let base = text(&want.props, "base_path").unwrap_or_default();
    let mut request = client
        .create_base_path_mapping()
        .domain_name(domain)
        .rest_api_id(api);
    if !base.is_empty() {
        request = request.base_path(base);
    }
    if !stage.is_empty() {
        request = request.stage(stage);
    }
    request
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:POST /domainnames/basepathmappings", id, &e))?;
    Ok(())
}

async fn delete_mapping(
    client: &Client,
    domain: &str,
    base: &str,
    id: &str,
) -> Result<(), DeployError> {
    match client
        .delete_base_path_mapping()
        .domain_name(domain)
        .base_path(base)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(DeployError::aws(
            "apigateway:DELETE /domainnames/basepathmappings",
            id,
            &e,
        )),
    }
}

/// Applies one planned change to a base path mapping: Create, Update (PATCH of `/restapiId` and
/// `/stage`, the fields that changed), Replace (delete, then create) and Delete. `_observed` is not
/// needed (the name says the domain and base path); it keeps the shape of the other kinds' `apply`.
pub async fn apply_mapping(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    _observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("BasePathMapping/{region}/{}", change.name);
    let (domain, base) = split_mapping(&change.name);
    match (&change.action, desired) {
        (Action::Create, Some(want)) => create_mapping(client, domain, want, &id).await,
        (Action::Replace { .. }, Some(want)) => {
            delete_mapping(client, domain, base, &id).await?;
            create_mapping(client, domain, want, &id).await
        }
        (Action::Update { changes }, Some(want)) => {
            let (api, stage) = target(&want.props, &id)?;
            let patches: Vec<PatchOperation> = changes
                .iter()
                .filter_map(|c| match c.field.as_str() {
                    "api" => Some(patch("/restapiId", api)),
                    "stage" => Some(patch("/stage", stage)),
                    _ => None,
                })
                .collect();
            if patches.is_empty() {
                return Ok(());
            }
            client
                .update_base_path_mapping()
                .domain_name(domain)
                .base_path(base)
                .set_patch_operations(Some(patches))
                .send()
                .await
                .map_err(|e| {
                    DeployError::aws("apigateway:PATCH /domainnames/basepathmappings", &id, &e)
                })?;
            Ok(())
        }
        (Action::Delete, _) => delete_mapping(client, domain, base, &id).await,
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_names_split_into_domain_and_base_path() {
        assert_eq!(
            split_mapping("api.example.com/(none)"),
            ("api.example.com", "(none)")
        );
        assert_eq!(
            split_mapping("api.example.com"),
            ("api.example.com", "(none)")
        );
    }

    #[test]
    fn domains_are_tagged_by_their_partition_arn() {
        assert_eq!(
            domain_arn("us-east-1", "api.example.com"),
            "arn:aws:apigateway:us-east-1::/domainnames/api.example.com"
        );
        assert!(domain_arn("cn-north-1", "x").starts_with("arn:aws-cn:"));
    }
}
