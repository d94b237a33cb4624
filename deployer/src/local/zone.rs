//! What Route 53 holds for the hosted zone, read from the local AWS, and the answers Route 53's
//! DNS would give from it: failover, latency, weighted and simple record sets, alias and CNAME
//! records, health checks as the local checker sees them. Pure except for [`read`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{HealthCheckType, ResourceRecordSet};

use crate::resources::dns_record;

/// One record set as Route 53 stores it (names lower case with the trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Owner name.
    pub name: String,
    /// `A`, `CNAME`, ...
    pub kind: String,
    /// TTL (None for alias records).
    pub ttl: Option<u32>,
    /// Values (A addresses, the CNAME's target).
    pub values: Vec<String>,
    /// Alias target's DNS name.
    pub alias: Option<String>,
    /// Set identifier (routed records).
    pub set_identifier: Option<String>,
    /// `PRIMARY` or `SECONDARY`.
    pub failover: Option<String>,
    /// Latency region.
    pub region: Option<String>,
    /// Weight (weighted records).
    pub weight: Option<i64>,
    /// Health check ID.
    pub health_check: Option<String>,
}

/// A health check's definition, as far as the local checker uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    /// ID.
    pub id: String,
    /// `HTTP`, `HTTPS`, `HTTP_STR_MATCH`, `HTTPS_STR_MATCH`, `TCP`, `CALCULATED`, ...
    pub kind: String,
    /// Target host name.
    pub fqdn: Option<String>,
    /// Target address (takes precedence over the name for the connection, as in Route 53).
    pub ip: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Path (HTTP kinds).
    pub path: String,
    /// Seconds between probes of one checker.
    pub interval: u32,
    /// Consecutive results before a checker changes its view.
    pub threshold: u32,
    /// Inverted.
    pub inverted: bool,
    /// Disabled (Route 53 then counts it healthy).
    pub disabled: bool,
    /// String matching kinds: the text the body must contain.
    pub search: Option<String>,
    /// CALCULATED: children and how many must be healthy.
    pub children: Vec<String>,
    /// CALCULATED: the threshold.
    pub health_threshold: u32,
    /// Checker regions (empty: Route 53's default set).
    pub regions: Vec<String>,
}

/// The zone and the health checks its records use.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The zone's name (lower case, trailing dot); empty when the zone does not exist (yet).
    pub zone: String,
    /// Its record sets.
    pub records: Vec<RecordSet>,
    /// Health checks referenced by the records, and their children.
    pub checks: BTreeMap<String, CheckDef>,
}

pub use crate::resources::dotted;

fn record_set(set: &ResourceRecordSet) -> RecordSet {
    RecordSet {
        name: dotted(&unescape(set.name())),
        kind: set.r#type().as_str().to_owned(),
        ttl: set.ttl().and_then(|t| u32::try_from(t).ok()),
        values: set
            .resource_records()
            .iter()
            .map(|r| r.value().to_owned())
            .collect(),
        alias: set.alias_target().map(|a| dotted(a.dns_name())),
        set_identifier: set.set_identifier().map(str::to_owned),
        failover: set.failover().map(|f| f.as_str().to_owned()),
        region: set.region().map(|r| r.as_str().to_owned()),
        weight: set.weight(),
        health_check: set.health_check_id().map(str::to_owned),
    }
}

/// Route 53 lists `*` as `\052`.
fn unescape(name: &str) -> String {
    name.replace("\\052", "*")
}

/// The hosted zone's ID and name, found once (`read` keeps them between calls).
pub type Located = Option<(String, String)>;

/// Reads the zone `zone` (a name or an ID) and the health checks its records use from Route 53 (the
/// local AWS). The zone's ID and name are looked up on the first call that finds the zone and kept
/// in `located`; a zone that does not exist yet is an empty snapshot.
pub async fn read(client: &Client, zone: &str, located: &mut Located) -> Result<Snapshot, String> {
    if located.is_none() {
        *located = locate(client, zone).await?;
    }
    let Some((zone_id, zone_name)) = located.clone() else {
        return Ok(Snapshot::default());
    };
    let sets = dns_record::all_record_sets(client, &zone_id, zone)
        .await
        .map_err(|e| e.to_string())?;
    let records: Vec<RecordSet> = sets.iter().map(record_set).collect();
    let mut wanted: Vec<String> = records
        .iter()
        .filter_map(|r| r.health_check.clone())
        .collect();
    let mut checks = BTreeMap::new();
    while let Some(id) = wanted.pop() {
        if checks.contains_key(&id) {
            continue;
        }
        let out = match client.get_health_check().health_check_id(&id).send().await {
            Ok(out) => out,
            // A record naming a deleted check: Route 53 treats an unknown check as healthy.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_health_check()) =>
            {
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "route53:GetHealthCheck {id}: {}",
                    aws_sdk_route53::error::DisplayErrorContext(&e)
                ));
            }
        };
        let Some(config) = out.health_check().and_then(|h| h.health_check_config()) else {
            continue;
        };
        let def = CheckDef {
            id: id.clone(),
            kind: config.r#type().as_str().to_owned(),
            fqdn: config.fully_qualified_domain_name().map(str::to_owned),
            ip: config.ip_address().map(str::to_owned),
            port: config.port().and_then(|p| u16::try_from(p).ok()),
            path: config.resource_path().unwrap_or("/").to_owned(),
            interval: config
                .request_interval()
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(30),
            threshold: config
                .failure_threshold()
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(3),
            inverted: config.inverted().unwrap_or(false),
            disabled: config.disabled().unwrap_or(false),
            search: config.search_string().map(str::to_owned),
            children: config.child_health_checks().to_vec(),
            health_threshold: config
                .health_threshold()
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
            regions: config
                .regions()
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
        };
        if *config.r#type() == HealthCheckType::Calculated {
            wanted.extend(def.children.iter().cloned());
        }
        checks.insert(id, def);
    }
    Ok(Snapshot {
        zone: dotted(&zone_name),
        records,
        checks,
    })
}

/// The zone's ID and its name (queries end with the name, also when the config gives the ID).
async fn locate(client: &Client, zone: &str) -> Result<Located, String> {
    let zone_id = match dns_record::zone_id(client, zone).await {
        Ok(id) => id,
        Err(e) if e.to_string().contains("no such hosted zone") => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let zone_name = if zone.contains('.') {
        zone.to_owned()
    } else {
        client
            .get_hosted_zone()
            .id(&zone_id)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "route53:GetHostedZone {zone_id}: {}",
                    aws_sdk_route53::error::DisplayErrorContext(&e)
                )
            })?
            .hosted_zone()
            .map(|z| z.name().to_owned())
            .unwrap_or_default()
    };
    Ok(Some((zone_id, zone_name)))
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// An address.
    A(Ipv4Addr),
    /// An alias name.
    Cname(String),
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name (lower case, trailing dot).
    pub name: String,
    /// TTL.
    pub ttl: u32,
    /// Data.
    pub data: Data,
}

/// The outcome of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records (possibly none: the name exists without records of the type).
    Answers(Vec<Answer>),
    /// The name does not exist in the zone.
    NxDomain,
    /// Not a name this server answers for.
    Refused,
}

/// What the answers depend on besides the snapshot.
pub struct View<'a> {
    /// The zone.
    pub snapshot: &'a Snapshot,
    /// Route 53's conclusion for a health check ID (inversion included); unknown IDs are healthy.
    pub healthy: &'a dyn Fn(&str) -> bool,
    /// Each region's local address (execute-api and regional domain names resolve to it).
    pub addresses: &'a BTreeMap<String, Ipv4Addr>,
    /// TTL of answers for AWS alias targets and execute-api names.
    pub alias_ttl: u32,
    /// Where latency routing places the client.
    pub client_region: &'a str,
    /// Regions nearest first from the client (latency routing's preference order).
    pub region_order: &'a [String],
}

/// The region of an API Gateway host (`<id>.execute-api.<region>.amazonaws.com`, and regional
/// domain names `d-<id>.execute-api.<region>.amazonaws.com`).
pub fn execute_api_region(name: &str) -> Option<&str> {
    let name = name.trim_end_matches('.');
    let rest = name.split_once(".execute-api.")?.1;
    let region = rest.strip_suffix(".amazonaws.com")?;
    (!region.contains('.')).then_some(region)
}

/// Resolves `name` (A queries; `want_a` false answers only CNAMEs, as for other types).
pub fn resolve(view: &View<'_>, name: &str, want_a: bool) -> Outcome {
    let mut answers = Vec::new();
    let mut seen = BTreeSet::new();
    let outcome = chase(view, &dotted(name), want_a, &mut answers, &mut seen, 0);
    match outcome {
        Step::Done => Outcome::Answers(answers),
        Step::NxDomain if answers.is_empty() => Outcome::NxDomain,
        // A CNAME whose target does not exist: the answer is the CNAME alone.
        Step::NxDomain | Step::Refused if !answers.is_empty() => Outcome::Answers(answers),
        Step::NxDomain => Outcome::NxDomain,
        Step::Refused => Outcome::Refused,
    }
}

enum Step {
    Done,
    NxDomain,
    Refused,
}

fn chase(
    view: &View<'_>,
    name: &str,
    want_a: bool,
    out: &mut Vec<Answer>,
    seen: &mut BTreeSet<String>,
    depth: usize,
) -> Step {
    if depth > 8 || !seen.insert(name.to_owned()) {
        return Step::Done;
    }
    if let Some(region) = execute_api_region(name) {
        return match view.addresses.get(region) {
            Some(addr) => {
                if want_a {
                    out.push(Answer {
                        name: name.to_owned(),
                        ttl: view.alias_ttl,
                        data: Data::A(*addr),
                    });
                }
                Step::Done
            }
            None => Step::NxDomain,
        };
    }
    let zone = &view.snapshot.zone;
    let in_zone = !zone.is_empty() && (name == zone || name.ends_with(&format!(".{zone}")));
    if !in_zone {
        return Step::Refused;
    }
    let at_name: Vec<&RecordSet> = view
        .snapshot
        .records
        .iter()
        .filter(|r| r.name == name)
        .collect();
    if at_name.is_empty() {
        let below = view
            .snapshot
            .records
            .iter()
            .any(|r| r.name.ends_with(&format!(".{name}")));
        return if below { Step::Done } else { Step::NxDomain };
    }
    let cnames: Vec<&RecordSet> = at_name
        .iter()
        .copied()
        .filter(|r| r.kind == "CNAME")
        .collect();
    let group: Vec<&RecordSet> = if !cnames.is_empty() {
        cnames
    } else if want_a {
        at_name.into_iter().filter(|r| r.kind == "A").collect()
    } else {
        Vec::new()
    };
    let Some(chosen) = choose(view, &group) else {
        return Step::Done;
    };
    if let Some(target) = &chosen.alias {
        // An alias answers with its target's records under the alias's own name.
        let mut inner = Vec::new();
        // A target this server cannot resolve (an AWS resource other than API Gateway) leaves
        // the name without addresses here, not refused: the name is the zone's.
        let step = match chase(view, target, want_a, &mut inner, seen, depth + 1) {
            Step::Refused => Step::Done,
            step => step,
        };
        let ttl_of_aws_target = execute_api_region(target).is_some();
        for a in inner {
            if let Data::A(addr) = a.data {
                out.push(Answer {
                    name: name.to_owned(),
                    ttl: if ttl_of_aws_target {
                        view.alias_ttl
                    } else {
                        a.ttl
                    },
                    data: Data::A(addr),
                });
            }
        }
        return step;
    }
    let ttl = chosen.ttl.unwrap_or(300);
    if chosen.kind == "CNAME" {
        let Some(target) = chosen.values.first() else {
            return Step::Done;
        };
        let target = dotted(target);
        out.push(Answer {
            name: name.to_owned(),
            ttl,
            data: Data::Cname(target.clone()),
        });
        if !want_a {
            return Step::Done;
        }
        return chase(view, &target, want_a, out, seen, depth + 1);
    }
    for value in &chosen.values {
        if let Ok(addr) = value.parse::<Ipv4Addr>() {
            out.push(Answer {
                name: name.to_owned(),
                ttl,
                data: Data::A(addr),
            });
        }
    }
    Step::Done
}

/// Picks the record set Route 53 answers with from one name-and-type group.
fn choose<'s>(view: &View<'_>, group: &[&'s RecordSet]) -> Option<&'s RecordSet> {
    let healthy = |r: &RecordSet| {
        r.health_check
            .as_deref()
            .is_none_or(|id| (view.healthy)(id))
    };
    if group.iter().any(|r| r.failover.is_some()) {
        let primary = group
            .iter()
            .find(|r| r.failover.as_deref() == Some("PRIMARY"));
        let secondary = group
            .iter()
            .find(|r| r.failover.as_deref() == Some("SECONDARY"));
        return match (primary, secondary) {
            (Some(p), _) if healthy(p) => Some(p),
            (_, Some(s)) if healthy(s) => Some(s),
            // Both unhealthy: Route 53 answers with the primary.
            (Some(p), _) => Some(p),
            (None, s) => s.copied(),
        };
    }
    if group.iter().any(|r| r.region.is_some()) {
        let up: Vec<&RecordSet> = group.iter().copied().filter(|r| healthy(r)).collect();
        // All unhealthy: Route 53 answers as if all were healthy.
        let candidates = if up.is_empty() { group.to_vec() } else { up };
        let rank = |r: &RecordSet| {
            let region = r.region.as_deref().unwrap_or_default();
            if region == view.client_region {
                0
            } else {
                1 + view
                    .region_order
                    .iter()
                    .position(|o| o == region)
                    .unwrap_or(usize::MAX - 1)
            }
        };
        return candidates.into_iter().min_by_key(|r| rank(r));
    }
    if group.iter().any(|r| r.weight.is_some()) {
        // Weighted: deterministic locally, the heaviest healthy record (documented).
        let up: Vec<&RecordSet> = group.iter().copied().filter(|r| healthy(r)).collect();
        let candidates = if up.is_empty() { group.to_vec() } else { up };
        return candidates.into_iter().max_by_key(|r| r.weight.unwrap_or(0));
    }
    group.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kind: &str, failover: Option<&str>, check: &str, to: &str) -> RecordSet {
        RecordSet {
            name: "api.todos.test.".into(),
            kind: kind.into(),
            ttl: (kind == "CNAME").then_some(5),
            values: if kind == "CNAME" {
                vec![to.into()]
            } else {
                vec![]
            },
            alias: (kind == "A").then(|| to.to_owned()),
            set_identifier: Some(format!("x-{check}")),
            failover: failover.map(str::to_owned),
            region: None,
            weight: None,
            health_check: Some(check.into()),
        }
    }

    fn snapshot(kind: &str) -> Snapshot {
        Snapshot {
            zone: "todos.test.".into(),
            records: vec![
                set(
                    kind,
                    Some("PRIMARY"),
                    "hc-east",
                    "d-1.execute-api.us-east-1.amazonaws.com.",
                ),
                set(
                    kind,
                    Some("SECONDARY"),
                    "hc-west",
                    "d-2.execute-api.us-west-2.amazonaws.com.",
                ),
            ],
            checks: BTreeMap::new(),
        }
    }

    fn addresses() -> BTreeMap<String, Ipv4Addr> {
        BTreeMap::from([
            ("us-east-1".to_owned(), Ipv4Addr::new(127, 0, 0, 11)),
            ("us-west-2".to_owned(), Ipv4Addr::new(127, 0, 0, 12)),
        ])
    }

    fn ask(snapshot: &Snapshot, down: &[&str], name: &str) -> Outcome {
        let addresses = addresses();
        let order = vec!["us-east-1".to_owned(), "us-west-2".to_owned()];
        let healthy = |id: &str| !down.contains(&id);
        let view = View {
            snapshot,
            healthy: &healthy,
            addresses: &addresses,
            alias_ttl: 60,
            client_region: "us-east-1",
            region_order: &order,
        };
        resolve(&view, name, true)
    }

    fn a(name: &str, ttl: u32, last: u8) -> Answer {
        Answer {
            name: name.into(),
            ttl,
            data: Data::A(Ipv4Addr::new(127, 0, 0, last)),
        }
    }

    #[test]
    fn failover_alias_follows_health() {
        let s = snapshot("A");
        let name = "api.todos.test.";
        assert_eq!(
            ask(&s, &[], "API.todos.test"),
            Outcome::Answers(vec![a(name, 60, 11)])
        );
        assert_eq!(
            ask(&s, &["hc-east"], name),
            Outcome::Answers(vec![a(name, 60, 12)])
        );
        // Both unhealthy: the primary.
        assert_eq!(
            ask(&s, &["hc-east", "hc-west"], name),
            Outcome::Answers(vec![a(name, 60, 11)])
        );
    }

    #[test]
    fn cname_answers_carry_the_record_ttl_and_the_chased_address() {
        let s = snapshot("CNAME");
        let target = "d-2.execute-api.us-west-2.amazonaws.com.";
        assert_eq!(
            ask(&s, &["hc-east"], "api.todos.test."),
            Outcome::Answers(vec![
                Answer {
                    name: "api.todos.test.".into(),
                    ttl: 5,
                    data: Data::Cname(target.into())
                },
                a(target, 60, 12)
            ])
        );
    }

    #[test]
    fn latency_prefers_the_client_region_while_healthy() {
        let mut s = snapshot("A");
        for (r, region) in s.records.iter_mut().zip(["us-east-1", "us-west-2"]) {
            r.failover = None;
            r.region = Some(region.into());
        }
        let name = "api.todos.test.";
        assert_eq!(ask(&s, &[], name), Outcome::Answers(vec![a(name, 60, 11)]));
        assert_eq!(
            ask(&s, &["hc-east"], name),
            Outcome::Answers(vec![a(name, 60, 12)])
        );
        // All unhealthy: as if all were healthy.
        assert_eq!(
            ask(&s, &["hc-east", "hc-west"], name),
            Outcome::Answers(vec![a(name, 60, 11)])
        );
    }

    #[test]
    fn other_names() {
        let s = snapshot("A");
        assert_eq!(ask(&s, &[], "nope.todos.test."), Outcome::NxDomain);
        assert_eq!(ask(&s, &[], "example.com."), Outcome::Refused);
        assert_eq!(
            ask(&s, &[], "abc.execute-api.us-west-2.amazonaws.com"),
            Outcome::Answers(vec![a("abc.execute-api.us-west-2.amazonaws.com.", 60, 12)])
        );
        assert_eq!(
            ask(&s, &[], "abc.execute-api.eu-west-1.amazonaws.com"),
            Outcome::NxDomain
        );
        assert_eq!(
            execute_api_region("d-1.execute-api.us-east-1.amazonaws.com."),
            Some("us-east-1")
        );
        // An alias to a target this server cannot resolve: no addresses, but not refused.
        let mut cdn = snapshot("A");
        cdn.records.truncate(1);
        cdn.records[0].alias = Some("d111.cloudfront.net.".into());
        assert_eq!(ask(&cdn, &[], "api.todos.test."), Outcome::Answers(vec![]));
    }
}
