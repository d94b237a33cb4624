//! Route 53 health checks: per region one on the region's health path (HTTPS with SNI, interval,
//! failure threshold, checker regions) and the region's switch, a CALCULATED check over it that the
//! failover records use; a `Name` tag identifies each.
//!
//! The switch is how `failover` moves traffic: its `HealthThreshold` is 1 (on: the switch is as
//! healthy as the endpoint) or 2 (off: more than its one child, which Route 53 always reads as
//! unhealthy, whatever the endpoint's real health; Route 53 API reference, HealthCheckConfig). Unlike
//! inverting the endpoint check, turning a region off can never make a dead region read healthy.

use std::collections::BTreeMap;

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{
    HealthCheckConfig, HealthCheckRegion, HealthCheckType, Tag, TagResourceType,
};
use serde_json::{Value, json};

use super::{DeployError, Scope};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

const NAME: &str = "Name";

/// Every health check of this app and stage (found by their tags), in the desired form, with the
/// check's ID in `id`. Health checks have no names of their own: the `Name` tag is the name.
pub async fn observe(
    client: &Client,
    scope: &Scope,
    regions: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let mut checks = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_health_checks()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| DeployError::aws("route53:ListHealthChecks", "health checks", &e))?;
        checks.extend(page.health_checks().iter().cloned());
        match (page.is_truncated(), page.next_marker) {
            (true, Some(next)) => marker = Some(next),
            _ => break,
        }
    }
    let mut tags: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ids in checks.chunks(10) {
        let out = client
            .list_tags_for_resources()
            .resource_type(TagResourceType::Healthcheck)
            .set_resource_ids(Some(ids.iter().map(|c| c.id().to_owned()).collect()))
            .send()
            .await
            .map_err(|e| DeployError::aws("route53:ListTagsForResources", "health checks", &e))?;
        for set in out.resource_tag_sets() {
            let map = set
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect();
            tags.insert(set.resource_id().unwrap_or_default().to_owned(), map);
        }
    }
    let mut found = Vec::new();
    let no_tags = BTreeMap::new();
    let prefix = crate::names::prefix(&scope.app, &scope.stage);
    for check in checks {
        let tags = tags.get(check.id()).unwrap_or(&no_tags);
        // A check is ours when tagged so, or when its caller reference is one `create` wrote for
        // this app and stage and it has no tags yet (interrupted between creating and tagging).
        let from_reference = created_name(scope, check.caller_reference(), regions);
        let name = if scope.owns(tags) {
            match tags.get(NAME) {
                Some(name) => name.clone(),
                None => continue,
            }
        } else if tags.is_empty()
            && let Some(name) = from_reference
        {
            name
        } else {
            continue;
        };
        let name = &name;
        let Some(config) = check.health_check_config() else {
            continue;
        };
        // The part before `/<id>` (a stale duplicate's name) names the region.
        let base = name.split('/').next().unwrap_or_default();
        let region = crate::names::parse_check(&prefix, base, regions).map(|(r, _)| r.to_owned());
        let tags_prop = if tags.is_empty() {
            json!({})
        } else {
            json!({
                NAME: name,
                super::APP_TAG: scope.app,
                super::STAGE_TAG: scope.stage,
            })
        };
        let props = if *config.r#type() == HealthCheckType::Calculated {
            let threshold = config.health_threshold();
            json!({
                "type": config.r#type().as_str(),
                "children": config.child_health_checks(),
                "tags": tags_prop,
                "id": check.id(),
                "owned": true,
                // Operational state, not managed by `up`: the switch (`failover` sets it).
                "health_threshold": threshold,
                "switch_on": switch_on(threshold, config.child_health_checks().len())
                    && !config.disabled().unwrap_or(false),
                "inverted": config.inverted(),
            })
        } else {
            json!({
                "type": config.r#type().as_str(),
                "target": config.fully_qualified_domain_name(),
                "resource_path": config.resource_path(),
                "port": config.port(),
                "enable_sni": config.enable_sni(),
                "request_interval": config.request_interval(),
                "failure_threshold": config.failure_threshold(),
                "regions": config.regions().iter().map(|r| r.as_str().to_owned()).collect::<Vec<_>>(),
                "tags": tags_prop,
                "id": check.id(),
                // Ours (tagged, or its caller reference says this deployment made it), so that
                // `down` also removes one whose tagging was interrupted.
                "owned": true,
                // Operational state, not managed by `up` (an earlier version's `failover` set it;
                // `failover` and `failback` now clear it).
                "inverted": config.inverted(),
            })
        };
        found.push((
            created_millis(check.caller_reference()),
            Resource::from_props(Kind::HealthCheck, region, name.clone(), props),
        ));
    }
    Ok(newest_keeps_the_name(found))
}

/// The check's name when its caller reference is `<name>-<millis>` as `create` writes it, for a name
/// of this scope and one of `regions` (an endpoint check or a switch).
fn created_name(scope: &Scope, caller_reference: &str, regions: &[String]) -> Option<String> {
    let (name, millis) = caller_reference.rsplit_once('-')?;
    millis.parse::<u128>().ok()?;
    let prefix = crate::names::prefix(&scope.app, &scope.stage);
    crate::names::parse_check(&prefix, name, regions).map(|_| name.to_owned())
}

/// A switch's children, as observed.
pub fn children_of(observed: &Resource) -> Vec<String> {
    super::strings(&observed.props, "children")
}

/// Whether a switch with `threshold` over `children` checks is on: it follows its endpoint (a
/// threshold of 0 reads always healthy, and more than the children always unhealthy: neither
/// follows, and `failback` sets 1 again).
pub fn switch_on(threshold: Option<i32>, children: usize) -> bool {
    threshold.is_some_and(|t| usize::try_from(t).is_ok_and(|t| t >= 1 && t <= children))
}

/// When the caller reference is `<name>-<millis>` (as `create` writes it), the millis.
fn created_millis(caller_reference: &str) -> u128 {
    caller_reference
        .rsplit_once('-')
        .and_then(|(_, millis)| millis.parse().ok())
        .unwrap_or_default()
}

/// Of several checks with one `Name` (an interrupted replacement leaves the old one), the newest
/// keeps the name; the others are reported as `<name>/<id>` so that `up` and `down` delete them and
/// `failover` never inverts a stale one.
fn newest_keeps_the_name(mut found: Vec<(u128, Resource)>) -> Vec<Resource> {
    found.sort_by(|(a, ra), (b, rb)| ra.name.cmp(&rb.name).then(b.cmp(a)));
    let mut out: Vec<Resource> = Vec::new();
    for (_, mut r) in found {
        if out.iter().any(|o| o.name == r.name) {
            let id = super::observed_str(Some(&r), "id").to_owned();
            r.name = format!("{}/{id}", r.name);
        }
        out.push(r);
    }
    out
}

fn config(props: &BTreeMap<String, Value>) -> Result<HealthCheckConfig, String> {
    if props.get("type").and_then(Value::as_str) == Some("CALCULATED") {
        let children = children(props)?;
        return HealthCheckConfig::builder()
            .r#type(HealthCheckType::Calculated)
            .set_child_health_checks(Some(children))
            // Created on; only `failover` turns it off.
            .health_threshold(1)
            .build()
            .map_err(|e| e.to_string());
    }
    let int = |field: &str| {
        props
            .get(field)
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    };
    let target = props
        .get("target")
        .and_then(Value::as_str)
        .filter(|t| !t.starts_with("ref:"))
        .ok_or("the health check's target is not known yet (its REST API does not exist)")?;
    HealthCheckConfig::builder()
        .r#type(HealthCheckType::from(
            props.get("type").and_then(Value::as_str).unwrap_or("HTTPS"),
        ))
        .fully_qualified_domain_name(target)
        .resource_path(
            props
                .get("resource_path")
                .and_then(Value::as_str)
                .unwrap_or("/"),
        )
        .set_port(int("port"))
        .enable_sni(
            props
                .get("enable_sni")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        )
        .set_request_interval(int("request_interval"))
        .set_failure_threshold(int("failure_threshold"))
        .set_regions(regions(props))
        .build()
        .map_err(|e| e.to_string())
}

/// A CALCULATED check's children, once every one exists.
fn children(props: &BTreeMap<String, Value>) -> Result<Vec<String>, String> {
    let list = super::strings(props, "children");
    if list.is_empty() || list.iter().any(|c| c.starts_with("ref:")) {
        return Err("the switch's endpoint check does not exist yet".to_owned());
    }
    Ok(list)
}

fn regions(props: &BTreeMap<String, Value>) -> Option<Vec<HealthCheckRegion>> {
    let list: Vec<HealthCheckRegion> = props
        .get("regions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(HealthCheckRegion::from)
                .collect()
        })
        .unwrap_or_default();
    (!list.is_empty()).then_some(list)
}

/// Creates the check; returns its ID. `keep` is the operational state of the check it replaces
/// (inverted; a switch's threshold), which a replacement keeps: `up` never undoes a failover.
async fn create(
    client: &Client,
    want: &Resource,
    keep: Option<&Resource>,
    id: &str,
) -> Result<String, DeployError> {
    let mut config = config(&want.props)
        .map_err(|e| DeployError::refused("route53:CreateHealthCheck", id, e))?;
    let kept = |field: &str| keep.and_then(|o| o.props.get(field));
    config.inverted = Some(kept("inverted").and_then(Value::as_bool).unwrap_or(false));
    if *config.r#type() == HealthCheckType::Calculated
        && let Some(threshold) = kept("health_threshold")
            .and_then(Value::as_i64)
            .and_then(|t| i32::try_from(t).ok())
    {
        config.health_threshold = Some(threshold);
    }
    let caller_reference = format!(
        "{}-{}",
        want.name,
        tworegion_common::version::system_millis()
    );
    let out = client
        .create_health_check()
        .caller_reference(caller_reference)
        .health_check_config(config)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:CreateHealthCheck", id, &e))?;
    let check_id = out
        .health_check()
        .map(|h| h.id().to_owned())
        .unwrap_or_default();
    tag(client, &check_id, want, id).await?;
    Ok(check_id)
}

async fn tag(
    client: &Client,
    check_id: &str,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let tags: Vec<Tag> = super::tag_pairs(&want.props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    client
        .change_tags_for_resource()
        .resource_type(TagResourceType::Healthcheck)
        .resource_id(check_id)
        .set_add_tags(Some(tags))
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ChangeTagsForResource", id, &e))?;
    Ok(())
}

fn observed_id(observed: Option<&Resource>, id: &str) -> Result<String, DeployError> {
    Some(super::observed_str(observed, "id"))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            DeployError::refused("route53", id, "the existing health check's ID is unknown")
        })
}

/// Turns a region's switch on (threshold 1: as healthy as its endpoint) or off (threshold 2, above
/// its one child: always unhealthy): what `failover` and `failback` do. `up` leaves it alone.
///
/// The switch's `children` go with the threshold: AWS keeps every element a request omits, but the
/// local AWS (moto 5.2.5) resets omitted `ChildHealthChecks` to none, which would leave the local
/// environment's switch with nothing to follow. Naming them is the same request on AWS.
pub async fn set_switch(
    client: &Client,
    check_id: &str,
    children: &[String],
    on: bool,
) -> Result<(), DeployError> {
    client
        .update_health_check()
        .health_check_id(check_id)
        .set_child_health_checks(Some(children.to_vec()))
        .health_threshold(if on { 1 } else { 2 })
        // A disabled check reads healthy whatever its children: a switch is never disabled.
        .disabled(false)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:UpdateHealthCheck", check_id, &e))?;
    Ok(())
}

/// Inverts a health check (Route 53 then treats a healthy target as unhealthy) or restores it.
/// Earlier versions' `failover` inverted the endpoint checks; `failover` and `failback` now clear
/// that. `up` leaves this setting alone.
pub async fn set_inverted(
    client: &Client,
    check_id: &str,
    inverted: bool,
) -> Result<(), DeployError> {
    client
        .update_health_check()
        .health_check_id(check_id)
        .inverted(inverted)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:UpdateHealthCheck", check_id, &e))?;
    Ok(())
}

/// What Route 53's checkers report for a health check: `(healthy, reporting)`, the number of checkers
/// whose last observation was a success and the number reporting at all. Route 53 considers the
/// target healthy when more than 18% of the checkers do (before `Inverted` is applied).
pub async fn checker_status(
    client: &Client,
    check_id: &str,
) -> Result<(usize, usize), DeployError> {
    let out = client
        .get_health_check_status()
        .health_check_id(check_id)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:GetHealthCheckStatus", check_id, &e))?;
    let reports = out.health_check_observations();
    let healthy = reports
        .iter()
        .filter(|o| {
            o.status_report()
                .and_then(|r| r.status())
                .is_some_and(|s| s.starts_with("Success"))
        })
        .count();
    Ok((healthy, reports.len()))
}

/// Applies one planned change to a health check. `all` is every observed check (a replaced
/// endpoint check's switches are moved to the new check before the old one goes).
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
    all: &[Resource],
) -> Result<(), DeployError> {
    let id = format!("HealthCheck/{}", change.name);
    match (&change.action, desired) {
        (Action::Create, Some(want)) => create(client, want, None, &id).await.map(|_| ()),
        (Action::Update { changes }, Some(want)) => {
            let check_id = observed_id(observed, &id)?;
            if changes.iter().any(|c| c.field == "tags") {
                tag(client, &check_id, want, &id).await?;
            }
            if changes.iter().all(|c| c.field == "tags") {
                return Ok(());
            }
            let c = config(&want.props)
                .map_err(|e| DeployError::refused("route53:UpdateHealthCheck", &id, e))?;
            if *c.r#type() == HealthCheckType::Calculated {
                // The children only: the threshold is the switch, not `up`'s.
                client
                    .update_health_check()
                    .health_check_id(check_id)
                    .set_child_health_checks(c.child_health_checks.clone())
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("route53:UpdateHealthCheck", &id, &e))?;
                return Ok(());
            }
            client
                .update_health_check()
                .health_check_id(check_id)
                .fully_qualified_domain_name(c.fully_qualified_domain_name().unwrap_or_default())
                .resource_path(c.resource_path().unwrap_or_default())
                .set_port(c.port())
                .set_enable_sni(c.enable_sni())
                .set_failure_threshold(c.failure_threshold())
                .set_regions(regions(&want.props))
                .send()
                .await
                .map_err(|e| DeployError::aws("route53:UpdateHealthCheck", &id, &e))?;
            Ok(())
        }
        (Action::Replace { .. }, Some(want)) => {
            // The interval and type are fixed once created: a new check, then the old one goes.
            // (The failover records that point at it are updated after, in dependency order.)
            let check_id = observed_id(observed, &id)?;
            let new_id = create(client, want, observed, &id).await?;
            // A switch over the old check follows it to the new one before the old one goes, so
            // that it never counts a missing child as unhealthy.
            for parent in all {
                let kids = children_of(parent);
                if !kids.contains(&check_id) {
                    continue;
                }
                let moved: Vec<String> = kids
                    .into_iter()
                    .map(|k| if k == check_id { new_id.clone() } else { k })
                    .collect();
                let parent_id = observed_id(Some(parent), &id)?;
                client
                    .update_health_check()
                    .health_check_id(parent_id)
                    .set_child_health_checks(Some(moved))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("route53:UpdateHealthCheck", &id, &e))?;
            }
            client
                .delete_health_check()
                .health_check_id(check_id)
                .send()
                .await
                .map_err(|e| DeployError::aws("route53:DeleteHealthCheck", &id, &e))?;
            Ok(())
        }
        (Action::Delete, _) => {
            let check_id = observed_id(observed, &id)?;
            client
                .delete_health_check()
                .health_check_id(check_id)
                .send()
                .await
                .map_err(|e| DeployError::aws("route53:DeleteHealthCheck", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_references_name_only_this_scopes_checks() {
        let regions = vec!["us-east-1".to_owned(), "us-gov-west-1".to_owned()];
        let scope = Scope {
            app: "a".into(),
            stage: "b-c".into(),
        };
        assert_eq!(
            created_name(&scope, "a-b-c-us-east-1-1732890000000", &regions).as_deref(),
            Some("a-b-c-us-east-1")
        );
        assert_eq!(
            created_name(&scope, "a-b-c-us-gov-west-1-switch-1732890000000", &regions).as_deref(),
            Some("a-b-c-us-gov-west-1-switch")
        );
        // App `a-b`, stage `c`: another deployment's check with the same prefix.
        let other = Scope {
            app: "a-b".into(),
            stage: "c".into(),
        };
        assert_eq!(
            created_name(&other, "a-b-c-us-east-1-1732890000000", &regions).as_deref(),
            Some("a-b-c-us-east-1")
        );
        assert_eq!(
            created_name(&scope, "a-b-c-x-us-east-1-1732890000000", &regions),
            None
        );
        assert_eq!(
            created_name(&scope, "a-b-c-us-east-1-notmillis", &regions),
            None
        );
        assert_eq!(created_name(&scope, "foreign-123", &regions), None);
    }

    #[test]
    fn a_switch_is_on_only_at_a_threshold_its_children_can_meet() {
        assert!(switch_on(Some(1), 1));
        assert!(!switch_on(Some(2), 1));
        assert!(!switch_on(None, 1));
        // 0 reads always healthy: not following the endpoint, so not "on".
        assert!(!switch_on(Some(0), 1));
    }

    #[test]
    fn a_switch_waits_for_its_endpoint_check() {
        let props: BTreeMap<String, Value> = [
            ("type".to_owned(), json!("CALCULATED")),
            ("children".to_owned(), json!(["ref:HealthCheck/r/x"])),
        ]
        .into_iter()
        .collect();
        assert!(config(&props).is_err());
        let props: BTreeMap<String, Value> = [
            ("type".to_owned(), json!("CALCULATED")),
            ("children".to_owned(), json!(["abc"])),
        ]
        .into_iter()
        .collect();
        let c = config(&props).unwrap();
        assert_eq!(c.health_threshold(), Some(1));
        assert_eq!(c.child_health_checks(), ["abc"]);
    }

    fn check(name: &str, id: &str) -> Resource {
        Resource {
            kind: Kind::HealthCheck,
            region: Some("us-east-1".to_owned()),
            name: name.to_owned(),
            props: [("id".to_owned(), json!(id))].into_iter().collect(),
        }
    }

    #[test]
    fn of_two_checks_with_one_name_the_newest_keeps_it() {
        assert_eq!(
            created_millis("todos-dev-us-east-1-1700000000000"),
            1_700_000_000_000
        );
        assert_eq!(created_millis("by-hand"), 0);
        let found = newest_keeps_the_name(vec![
            (2, check("a-us-east-1", "new")),
            (1, check("a-us-east-1", "old")),
            (5, check("b-us-east-1", "only")),
        ]);
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|r| (r.name.as_str(), observed_str_id(r)))
            .collect();
        assert_eq!(
            names,
            [
                ("a-us-east-1", "new"),
                ("a-us-east-1/old", "old"),
                ("b-us-east-1", "only")
            ]
        );
    }

    fn observed_str_id(r: &Resource) -> &str {
        super::super::observed_str(Some(r), "id")
    }
}
