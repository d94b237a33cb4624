//! The public name's Route 53 records: one record per region to the region's custom domain (an alias
//! A record, or a CNAME to its regional domain name with a TTL of the config's choosing:
//! `dns.record_style`), with failover (PRIMARY / SECONDARY) or latency routing and the region's
//! health check. Records
//! cannot carry tags: the set identifier `<app>-<stage>-<region>` marks them as this deployment's.

use std::collections::BTreeMap;

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{
    AliasTarget, Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet,
    ResourceRecordSetFailover, ResourceRecordSetRegion, RrType,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, dotted};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// The hosted zone's ID, from its ID or its name.
pub async fn zone_id(client: &Client, zone: &str) -> Result<String, DeployError> {
    let looks_like_id = !zone.contains('.') && zone.starts_with('Z');
    if looks_like_id {
        return Ok(zone.to_owned());
    }
    let wanted = dotted(zone);
    let out = client
        .list_hosted_zones_by_name()
        .dns_name(&wanted)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ListHostedZonesByName", zone, &e))?;
    let named: Vec<_> = out
        .hosted_zones()
        .iter()
        .filter(|z| dotted(z.name()) == wanted)
        .collect();
    // Never a private zone by name: records there answer only inside its VPCs, so clients on the
    // internet would never see a failover. (A private zone given by ID is the operator's choice.)
    match named
        .iter()
        .find(|z| !z.config().is_some_and(|c| c.private_zone()))
    {
        Some(z) => Ok(z.id().trim_start_matches("/hostedzone/").to_owned()),
        None if !named.is_empty() => Err(DeployError::refused(
            "route53:ListHostedZonesByName",
            zone,
            "only a private hosted zone has this name, and its records are not visible on the \
             internet; create a public hosted zone for it, or give the zone's ID in dns.hosted_zone \
             if a private zone is really meant",
        )),
        None => Err(DeployError::refused(
            "route53:ListHostedZonesByName",
            zone,
            "no such hosted zone in this account; create it or fix dns.hosted_zone",
        )),
    }
}

/// Whether a set identifier is exactly one of this deployment's (`<app>-<stage>-<region>`): app
/// `a-b` stage `c` and app `a` stage `b-c` share the prefix `a-b-c-`, so a prefix match would take
/// another deployment's records.
fn is_ours(identifier: &str, scope: &Scope, regions: &[String]) -> bool {
    peers(scope, regions).iter().any(|p| p == identifier)
}

/// The set identifiers of this deployment's records, one per region (`peers` in the props).
pub fn peers(scope: &Scope, regions: &[String]) -> Vec<String> {
    let prefix = crate::names::prefix(&scope.app, &scope.stage);
    regions
        .iter()
        .map(|region| crate::names::set_identifier(&prefix, region))
        .collect()
}

/// This deployment's records for `domain` in the zone, in the desired form.
pub async fn observe(
    client: &Client,
    scope: &Scope,
    regions: &[String],
    zone: &str,
    domain: &str,
) -> Result<Vec<Resource>, DeployError> {
    let zone_id = zone_id(client, zone).await?;
    let mut found = Vec::new();
    for set in record_sets(client, &zone_id, zone, domain).await? {
        let Some(identifier) = set.set_identifier() else {
            continue;
        };
        if !is_ours(identifier, scope, regions) {
            continue;
        }
        let routing = match (set.failover(), set.region(), set.weight()) {
            (Some(f), _, _) => json!({ "failover": f.as_str() }),
            (None, Some(r), _) => json!({ "latency_region": r.as_str() }),
            (None, None, Some(w)) => json!({ "weight": w }),
            _ => Value::Null,
        };
        // The label `desired` names the record by: the failover role, the latency region, or
        // `probe` for a region's own (weighted) name.
        let label = match (set.failover(), set.region(), set.weight()) {
            (Some(f), _, _) => f.as_str().to_owned(),
            (None, Some(r), _) => r.as_str().to_owned(),
            (None, None, Some(_)) => "probe".to_owned(),
            _ => String::new(),
        };
        let alias = set.alias_target().map(
            |a| json!({ "dns_name": dotted(a.dns_name()), "hosted_zone_id": a.hosted_zone_id() }),
        );
        let cname = (set.r#type() == &RrType::Cname)
            .then(|| set.resource_records().first().map(|r| dotted(r.value())))
            .flatten();
        let props = json!({
            "zone": zone,
            "type": set.r#type().as_str(),
            "alias_to": alias,
            "cname_to": cname,
            "ttl": set.ttl(),
            "peers": peers(scope, regions),
            "set_identifier": identifier,
            "routing": routing,
            "health_check": set.health_check_id(),
        });
        found.push(Resource::from_props(
            Kind::DnsRecord,
            None,
            format!("{domain}/{label}"),
            props,
        ));
    }
    Ok(found)
}

/// Every A and CNAME record set named `domain` in the zone `zone_id` (`zone` names it in errors).
async fn record_sets(
    client: &Client,
    zone_id: &str,
    zone: &str,
    domain: &str,
) -> Result<Vec<ResourceRecordSet>, DeployError> {
    let wanted = dotted(domain);
    Ok(all_record_sets(client, zone_id, zone)
        .await?
        .into_iter()
        .filter(|set| {
            dotted(set.name()) == wanted && matches!(set.r#type(), RrType::A | RrType::Cname)
        })
        .collect())
}

/// Every record set in the zone `zone_id` (`zone` names it in errors).
pub async fn all_record_sets(
    client: &Client,
    zone_id: &str,
    zone: &str,
) -> Result<Vec<ResourceRecordSet>, DeployError> {
    let mut found = Vec::new();
    let mut start: Option<(String, RrType, Option<String>)> = None;
    loop {
        let mut request = client.list_resource_record_sets().hosted_zone_id(zone_id);
        if let Some((name, kind, set)) = start.take() {
            request = request
                .start_record_name(name)
                .start_record_type(kind)
                .set_start_record_identifier(set);
        }
        let page = request
            .send()
            .await
            .map_err(|e| DeployError::aws("route53:ListResourceRecordSets", zone, &e))?;
        found.extend(page.resource_record_sets().iter().cloned());
        if page.is_truncated() {
            start = page
                .next_record_name
                .clone()
                .zip(page.next_record_type.clone())
                .map(|(n, t)| (n, t, page.next_record_identifier.clone()));
            if start.is_none() {
                break;
            }
        } else {
            break;
        }
    }
    Ok(found)
}

/// Whether two record sets with one set identifier use the same routing policy and type (an UPSERT
/// can change neither: the old set is deleted and the new one created in one batch).
fn same_routing(a: &ResourceRecordSet, b: &ResourceRecordSet) -> bool {
    a.failover() == b.failover()
        && a.region() == b.region()
        && a.weight().is_some() == b.weight().is_some()
        && a.r#type() == b.r#type()
}

fn record(domain: &str, props: &BTreeMap<String, Value>) -> Result<ResourceRecordSet, String> {
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let builder = ResourceRecordSet::builder().name(dotted(domain));
    let builder = if props.get("type").and_then(Value::as_str) == Some("CNAME") {
        let target = props
            .get("cname_to")
            .and_then(Value::as_str)
            .filter(|t| !t.starts_with("ref:"))
            .ok_or("the custom domain does not exist yet")?;
        let ttl = props
            .get("ttl")
            .and_then(Value::as_i64)
            .ok_or("a CNAME record needs dns.ttl")?;
        builder.r#type(RrType::Cname).ttl(ttl).resource_records(
            ResourceRecord::builder()
                .value(dotted(target))
                .build()
                .map_err(|e| e.to_string())?,
        )
    } else {
        let alias = props
            .get("alias_to")
            .filter(|v| v.is_object())
            .ok_or("the custom domain does not exist yet")?;
        let target = AliasTarget::builder()
            .dns_name(text(alias, "dns_name").ok_or("alias_to.dns_name unknown")?)
            .hosted_zone_id(text(alias, "hosted_zone_id").ok_or("alias_to.hosted_zone_id unknown")?)
            .evaluate_target_health(false)
            .build()
            .map_err(|e| e.to_string())?;
        builder.r#type(RrType::A).alias_target(target)
    };
    let mut set = builder.set_identifier(
        props
            .get("set_identifier")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    if let Some(check) = props.get("health_check").and_then(Value::as_str) {
        if check.starts_with("ref:") {
            return Err("the health check does not exist yet".to_owned());
        }
        set = set.health_check_id(check);
    }
    let routing = props.get("routing").cloned().unwrap_or(Value::Null);
    if let Some(f) = routing.get("failover").and_then(Value::as_str) {
        set = set.failover(ResourceRecordSetFailover::from(f));
    } else if let Some(r) = routing.get("latency_region").and_then(Value::as_str) {
        set = set.region(ResourceRecordSetRegion::from(r));
    } else if let Some(w) = routing.get("weight").and_then(Value::as_i64) {
        set = set.weight(w);
    }
    set.build().map_err(|e| e.to_string())
}

/// Applies one planned change to a record (UPSERT for create, update and replace; DELETE with the
/// record as it is).
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let id = format!("DnsRecord/{}", change.name);
    let domain = change
        .name
        .rsplit_once('/')
        .map(|(d, _)| d)
        .unwrap_or(&change.name);
    let (action, source) = match (&change.action, desired, observed) {
        (Action::Delete, _, Some(have)) => (ChangeAction::Delete, have),
        (Action::Create | Action::Update { .. } | Action::Replace { .. }, Some(want), _) => {
            (ChangeAction::Upsert, want)
        }
        _ => {
            return Err(DeployError::unplanned(&id));
        }
    };
    let zone = source
        .props
        .get("zone")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let zone_id = zone_id(client, &zone).await?;
    let set = record(domain, &source.props)
        .map_err(|e| DeployError::refused("route53:ChangeResourceRecordSets", &id, e))?;
    let mut changes = Vec::new();
    if action == ChangeAction::Upsert {
        // A set with this identifier but another routing policy or type (the config switched
        // between failover and latency, or between alias and CNAME): Route 53 cannot change either
        // in place.
        // Route 53 also refuses a CNAME beside records of another type with the same name, so a
        // change of style deletes the other region's old record (`peers`: this deployment's set
        // identifiers) in the same batch; its own change then creates it anew, and until then DNS
        // answers with this region alone.
        let peers: Vec<&str> = source
            .props
            .get("peers")
            .and_then(Value::as_array)
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let old = record_sets(client, &zone_id, &zone, domain)
            .await?
            .into_iter()
            .filter(|old| {
                let same_set = old.set_identifier() == set.set_identifier();
                let peer = old.set_identifier().is_some_and(|id| peers.contains(&id));
                (same_set && !same_routing(old, &set)) || (peer && old.r#type() != set.r#type())
            });
        for old in old {
            changes.push((ChangeAction::Delete, old));
        }
    }
    changes.push((action, set));
    let changes = changes
        .into_iter()
        .map(|(action, set)| {
            R53Change::builder()
                .action(action)
                .resource_record_set(set)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            DeployError::refused("route53:ChangeResourceRecordSets", &id, e.to_string())
        })?;
    let batch = ChangeBatch::builder()
        .set_changes(Some(changes))
        .build()
        .map_err(|e| {
            DeployError::refused("route53:ChangeResourceRecordSets", &id, e.to_string())
        })?;
    client
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ChangeResourceRecordSets", &id, &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_ours_by_exact_set_identifier() {
        let regions = ["us-east-1".to_owned(), "us-west-2".to_owned()];
        let ab_c = Scope {
            app: "a-b".into(),
            stage: "c".into(),
        };
        let a_bc = Scope {
            app: "a".into(),
            stage: "b-c".into(),
        };
        assert!(is_ours("a-b-c-us-east-1", &ab_c, &regions));
        // Same prefix, other deployment's region list: only exact identifiers count.
        assert!(!is_ours("a-b-c-eu-west-1", &ab_c, &regions));
        assert!(!is_ours("a-b-c-d-us-east-1", &a_bc, &regions));
        assert!(!is_ours("a-b-c-us-east-1x", &ab_c, &regions));
    }
}
