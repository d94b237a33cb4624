//! The Route 53 hosted zone, for configs that ask the deployer to create it (`dns.create_hosted_zone`,
//! meant for the local AWS). A zone the deployer did not create is never deleted: `down` removes only
//! a zone tagged with this app and stage, and Route 53 itself refuses to delete a zone that still
//! holds records other than its SOA and NS.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{Tag, TagResourceType};
use serde_json::json;

use super::{DeployError, Scope, dotted, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The public hosted zone named `name`, if it exists, with its managed tags and `id`.
pub async fn observe(client: &Client, name: &str) -> Result<Option<Resource>, DeployError> {
    let id = format!("HostedZone/global/{name}");
    let out = client
        .list_hosted_zones_by_name()
        .dns_name(dotted(name))
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ListHostedZonesByName", &id, &e))?;
    let Some(zone) = out.hosted_zones().iter().find(|z| {
        dotted(z.name()) == dotted(name) && !z.config().is_some_and(|c| c.private_zone())
    }) else {
        return Ok(None);
    };
    let zone_id = zone.id().trim_start_matches("/hostedzone/").to_owned();
    let tags: BTreeMap<String, String> = client
        .list_tags_for_resource()
        .resource_type(TagResourceType::Hostedzone)
        .resource_id(&zone_id)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ListTagsForResource", &id, &e))?
        .resource_tag_set()
        .map(|set| {
            set.tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let props = json!({ "tags": Scope::managed_tags(&tags), "id": zone_id });
    Ok(Some(Resource::from_props(
        Kind::HostedZone,
        None,
        name.to_owned(),
        props,
    )))
}

async fn tag(client: &Client, zone_id: &str, want: &Resource, id: &str) -> Result<(), DeployError> {
    let tags: Vec<Tag> = tag_pairs(&want.props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    client
        .change_tags_for_resource()
        .resource_type(TagResourceType::Hostedzone)
        .resource_id(zone_id)
        .set_add_tags(Some(tags))
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ChangeTagsForResource", id, &e))?;
    Ok(())
}

/// Applies one planned change to the zone.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let id = format!("HostedZone/global/{}", change.name);
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            let out = client
                .create_hosted_zone()
                .name(dotted(&change.name))
                .caller_reference(format!("tworegion-{}-{millis}", change.name))
                .send()
                .await
                .map_err(|e| DeployError::aws("route53:CreateHostedZone", &id, &e))?;
            let zone_id = out
                .hosted_zone()
                .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
                .unwrap_or_default();
            tag(client, &zone_id, want, &id).await
        }
        (Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            tag(client, super::observed_str(observed, "id"), want, &id).await
        }
        (Action::Delete, _) => {
            let zone_id = super::observed_str(observed, "id");
            client
                .delete_hosted_zone()
                .id(zone_id)
                .send()
                .await
                .map_err(|e| {
                    let mut error = DeployError::aws("route53:DeleteHostedZone", &id, &e);
                    if e.as_service_error()
                        .is_some_and(|s| s.is_hosted_zone_not_empty())
                    {
                        error.hint = Some(
                            "the zone holds records the deployer did not create; delete them, \
                             or keep the zone by setting dns.create_hosted_zone = false"
                                .to_owned(),
                        );
                    }
                    error
                })?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}
