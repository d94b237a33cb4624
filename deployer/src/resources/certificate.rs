//! The ACM certificate of the custom domain in each region. Either one given in `[certificates]`
//! (checked, never created, changed or deleted), or one requested from ACM with DNS validation: its
//! validation CNAME records go into the hosted zone, and it carries the app and stage tags.
//!
//! ACM gives the same validation record to every certificate for a domain in an account, in every
//! region, so a record is only removed when no other certificate (in this region or the regions given
//! to [`apply`]) still needs it for validation or renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_acm::Client as AcmClient;
use aws_sdk_acm::types::{
    CertificateDetail, CertificateStatus, Filters, KeyAlgorithm, Tag, ValidationMethod,
};
use aws_sdk_route53::Client as Route53Client;
use aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, sleep};

use super::{DeployError, Scope, dns_record, dotted, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// How long ACM may take to show the validation records of a new certificate (usually seconds).
const RECORDS_WAIT: Duration = Duration::from_secs(120);
/// How long to wait for ACM to issue a certificate once its records are in the zone.
const ISSUE_WAIT: Duration = Duration::from_secs(600);
/// How long API Gateway may take to release a certificate of a deleted custom domain: minutes, not
/// seconds (Terraform's aws_acm_certificate retries ResourceInUseException for 20 minutes).
const IN_USE_WAIT: Duration = Duration::from_secs(15 * 60);
/// The validation records' TTL.
const RECORD_TTL: i64 = 300;

/// Every status, so that ours are found (and deleted) in any state.
const STATUSES: [CertificateStatus; 7] = [
    CertificateStatus::PendingValidation,
    CertificateStatus::Issued,
    CertificateStatus::Inactive,
    CertificateStatus::Expired,
    CertificateStatus::ValidationTimedOut,
    CertificateStatus::Revoked,
    CertificateStatus::Failed,
];

/// One DNS validation record of a certificate (always a CNAME).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ValidationRecord {
    /// Fully qualified, lower case, with the trailing dot.
    name: String,
    /// As ACM gives it, with the trailing dot.
    value: String,
}

fn status_str(detail: &CertificateDetail) -> String {
    detail
        .status()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "UNKNOWN".to_owned())
}

/// The distinct validation records of a certificate, and whether ACM has given all of them yet.
fn validation_records(detail: &CertificateDetail) -> (Vec<ValidationRecord>, bool) {
    let mut complete = true;
    let mut records = BTreeSet::new();
    for option in detail.domain_validation_options() {
        match option.resource_record() {
            Some(r) => {
                records.insert(ValidationRecord {
                    name: dotted(r.name()),
                    value: dotted(r.value()),
                });
            }
            None => complete = false,
        }
    }
    (records.into_iter().collect(), complete)
}

fn records_json(records: &[ValidationRecord]) -> Value {
    Value::Array(
        records
            .iter()
            .map(|r| json!({ "name": r.name, "type": "CNAME", "value": r.value }))
            .collect(),
    )
}

fn records_from_json(props: &BTreeMap<String, Value>) -> Vec<ValidationRecord> {
    props
        .get("validation_records")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|r| {
                    Some(ValidationRecord {
                        name: dotted(r.get("name")?.as_str()?),
                        value: dotted(r.get("value")?.as_str()?),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a certificate for `names` (its domain and alternative names) is valid for `domain`.
fn covers<'a>(names: impl IntoIterator<Item = &'a str>, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    names.into_iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name == domain {
            return true;
        }
        match (name.strip_prefix("*."), domain.split_once('.')) {
            (Some(rest), Some((label, parent))) => !label.is_empty() && rest == parent,
            _ => false,
        }
    })
}

fn names_of(detail: &CertificateDetail) -> Vec<&str> {
    detail
        .domain_name()
        .into_iter()
        .chain(
            detail
                .subject_alternative_names()
                .iter()
                .map(String::as_str),
        )
        .collect()
}

/// The idempotency token of a request: the same for the same app, stage, region and domain within a
/// ten-minute window, so that a retried request does not make a second certificate, while a
/// certificate requested again long after a deletion is a new one.
fn idempotency_token(scope: &Scope, region: &str, domain: &str, unix_seconds: u64) -> String {
    let window = unix_seconds / 600;
    let digest = Sha256::digest(
        format!(
            "{}/{}/{region}/{}/{window}",
            scope.app,
            scope.stage,
            domain.to_ascii_lowercase()
        )
        .as_bytes(),
    );
    let mut token = String::with_capacity(32);
    for byte in digest.iter().take(16) {
        let _ = write!(token, "{byte:02x}");
    }
    token
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The certificate `arn`, or `None` when it does not exist.
async fn describe(
    acm: &AcmClient,
    arn: &str,
    id: &str,
) -> Result<Option<CertificateDetail>, DeployError> {
    match acm.describe_certificate().certificate_arn(arn).send().await {
        Ok(out) => Ok(out.certificate),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(DeployError::aws("acm:DescribeCertificate", id, &e)),
    }
}

/// The ARNs of the certificates in the client's region whose domain or alternative names include
/// `domain` (or its wildcard), in any status and with any key type.
async fn certificates_for(
    acm: &AcmClient,
    domain: &str,
    id: &str,
) -> Result<Vec<String>, DeployError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let wildcard = domain
        .split_once('.')
        .map(|(_, parent)| format!("*.{parent}"));
    let matches = |name: &str| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == domain || wildcard.as_deref() == Some(name.as_str())
    };
    let key_types: Vec<KeyAlgorithm> = KeyAlgorithm::values()
        .iter()
        .map(|k| KeyAlgorithm::from(*k))
        .collect();
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = acm
            .list_certificates()
            .set_certificate_statuses(Some(STATUSES.to_vec()))
            .includes(
                Filters::builder()
                    .set_key_types(Some(key_types.clone()))
                    .build(),
            )
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| DeployError::aws("acm:ListCertificates", id, &e))?;
        for summary in page.certificate_summary_list() {
            let named = summary.domain_name().is_some_and(matches)
                || summary
                    .subject_alternative_name_summaries()
                    .iter()
                    .any(|n| matches(n));
            if let (true, Some(arn)) = (named, summary.certificate_arn()) {
                found.push(arn.to_owned());
            }
        }
        match page.next_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => return Ok(found),
        }
    }
}

async fn tags_of(
    acm: &AcmClient,
    arn: &str,
    id: &str,
) -> Result<Option<BTreeMap<String, String>>, DeployError> {
    match acm
        .list_tags_for_certificate()
        .certificate_arn(arn)
        .send()
        .await
    {
        Ok(out) => Ok(Some(
            out.tags()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().unwrap_or_default().to_owned()))
                .collect(),
        )),
        // Deleted between the listing and now.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(DeployError::aws("acm:ListTagsForCertificate", id, &e)),
    }
}

/// The record set `name` CNAME in the zone, if there is one.
async fn find_record(
    route53: &Route53Client,
    zone_id: &str,
    name: &str,
    id: &str,
) -> Result<Option<ResourceRecordSet>, DeployError> {
    let page = route53
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .start_record_name(name)
        .start_record_type(RrType::Cname)
        .max_items(1)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ListResourceRecordSets", id, &e))?;
    Ok(page
        .resource_record_sets()
        .iter()
        .find(|s| dotted(s.name()) == dotted(name) && s.r#type() == &RrType::Cname)
        .cloned())
}

fn holds(set: &ResourceRecordSet, record: &ValidationRecord) -> bool {
    set.resource_records()
        .iter()
        .any(|r| dotted(r.value()) == record.value)
}

/// The public hosted zone that holds `name`: the one with the longest matching name.
async fn zone_holding(
    route53: &Route53Client,
    name: &str,
    id: &str,
) -> Result<Option<String>, DeployError> {
    let name = dotted(name);
    let mut suffix = name.as_str();
    while let Some((_, parent)) = suffix.split_once('.') {
        if parent.is_empty() {
            break;
        }
        let out = route53
            .list_hosted_zones_by_name()
            .dns_name(parent)
            .max_items(10)
            .send()
            .await
            .map_err(|e| DeployError::aws("route53:ListHostedZonesByName", id, &e))?;
        let public = out
            .hosted_zones()
            .iter()
            .find(|z| dotted(z.name()) == parent && !z.config().is_some_and(|c| c.private_zone()));
        if let Some(zone) = public {
            return Ok(Some(
                zone.id().trim_start_matches("/hostedzone/").to_owned(),
            ));
        }
        suffix = parent;
    }
    Ok(None)
}

/// What the deployer reads of one of its requested certificates.
struct Requested {
    arn: String,
    status: String,
    created: i64,
    records: Vec<ValidationRecord>,
    /// Its names besides the domain, sorted.
    alternative_names: Vec<String>,
}

impl Requested {
    /// Issued first, then pending, then the rest; newer before older.
    fn rank(&self) -> (u8, i64) {
        let class = match self.status.as_str() {
            "ISSUED" => 0,
            "PENDING_VALIDATION" => 1,
            _ => 2,
        };
        (class, -self.created)
    }
}

fn resource(region: &str, name: String, props: Value) -> Resource {
    Resource::from_props(Kind::Certificate, Some(region.to_owned()), name, props)
}

/// The certificates of the custom domain in `region`, in the desired form.
///
/// `wanted` is the desired certificate of the region (as `desired` writes it, also for `down`): it
/// says the domain, and either the given ARN or the hosted zone of requested certificates.
///
/// - Given ARN: that certificate, if it exists, as `{"domain_name", "given_arn", "arn", "status"}`.
///   `given_arn` is the ARN only when the certificate is ISSUED (otherwise `"<arn> (<STATUS>)"`) and
///   `domain_name` is the domain only when the certificate covers it (otherwise the certificate's own
///   domain), so that an unusable certificate shows in the plan and its apply says what to do.
/// - Requested: the certificate for the domain tagged with the scope (issued before pending, newest
///   first) as `{"domain_name", "validation", "hosted_zone", "tags", "arn", "status",
///   "validation_records"}`. `validation` is `"DNS"` when the certificate is ISSUED and its
///   validation records are in the hosted zone, otherwise `"DNS (<what is wrong>)"`.
///
/// Any other certificate for the domain tagged with the scope is reported under the name
/// `<domain>/<certificate id>`, to be deleted. Certificates neither given nor tagged are never reported.
pub async fn observe(
    acm: &AcmClient,
    route53: &Route53Client,
    scope: &Scope,
    wanted: &Resource,
) -> Result<Vec<Resource>, DeployError> {
    let region = wanted.region.as_deref().unwrap_or_default();
    let domain = wanted.name.as_str();
    let id = wanted.id();
    let given = wanted.props.get("given_arn").and_then(Value::as_str);
    let mut found = Vec::new();

    let mut ours = Vec::new();
    for arn in certificates_for(acm, domain, &id).await? {
        if Some(arn.as_str()) == given {
            continue;
        }
        let Some(tags) = tags_of(acm, &arn, &id).await? else {
            continue;
        };
        if !scope.owns(&tags) {
            continue;
        }
        let Some(detail) = describe(acm, &arn, &id).await? else {
            continue;
        };
        if !detail
            .domain_name()
            .is_some_and(|d| d.eq_ignore_ascii_case(domain))
        {
            continue;
        }
        let mut alternative_names: Vec<String> = detail
            .subject_alternative_names()
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case(domain))
            .map(|n| n.to_ascii_lowercase())
            .collect();
        alternative_names.sort();
        alternative_names.dedup();
        ours.push(Requested {
            status: status_str(&detail),
            created: detail.created_at().map(|t| t.secs()).unwrap_or_default(),
            records: validation_records(&detail).0,
            alternative_names,
            arn,
        });
    }
    ours.sort_by_key(Requested::rank);

    let mut extras = ours.as_slice();
    if let Some(arn) = given {
        if let Some(detail) = describe(acm, arn, &id).await? {
            let status = status_str(&detail);
            let given_arn = if status == "ISSUED" {
                arn.to_owned()
            } else {
                format!("{arn} ({status})")
            };
            let names = names_of(&detail);
            let domain_name = if covers(names.iter().copied(), domain) {
                domain.to_owned()
            } else {
                detail.domain_name().unwrap_or_default().to_owned()
            };
            // The wanted names it covers (the health check's): a missing one differs.
            let covered: Vec<String> = super::strings(&wanted.props, "covers")
                .into_iter()
                .filter(|n| covers(names.iter().copied(), n))
                .collect();
            found.push(resource(
                region,
                domain.to_owned(),
                // The operator's: used while wanted, never deleted (nor reported for deletion).
                json!({ "domain_name": domain_name, "given_arn": given_arn, "covers": covered, "arn": arn, "status": status, "owned": false }),
            ));
        }
    } else if let Some((chosen, rest)) = ours.split_first() {
        extras = rest;
        let zone = wanted
            .props
            .get("hosted_zone")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let zone_id = dns_record::zone_id(route53, zone).await?;
        let mut missing = false;
        for record in &chosen.records {
            let present = find_record(route53, &zone_id, &record.name, &id)
                .await?
                .is_some_and(|set| holds(&set, record));
            missing |= !present;
        }
        let validation = match (chosen.status.as_str(), missing) {
            ("ISSUED", false) => "DNS".to_owned(),
            ("ISSUED", true) => {
                "DNS (validation record missing from the hosted zone; renewal would fail)"
                    .to_owned()
            }
            (status, _) => format!("DNS ({status})"),
        };
        found.push(resource(
            region,
            domain.to_owned(),
            json!({
                "domain_name": domain,
                "alternative_names": chosen.alternative_names,
                "validation": validation,
                "hosted_zone": zone,
                "tags": scope.tags(),
                "arn": chosen.arn,
                "status": chosen.status,
                "validation_records": records_json(&chosen.records),
            }),
        ));
    }
    for extra in extras {
        let suffix = extra.arn.rsplit('/').next().unwrap_or(&extra.arn);
        found.push(resource(
            region,
            format!("{domain}/{suffix}"),
            json!({
                "domain_name": domain,
                "validation": format!("DNS ({})", extra.status),
                "tags": scope.tags(),
                "arn": extra.arn,
                "status": extra.status,
                "validation_records": records_json(&extra.records),
            }),
        ));
    }
    Ok(found)
}

/// Checks a given certificate: it must exist, be ISSUED and cover the domain. Nothing is created.
async fn check_given(
    acm: &AcmClient,
    arn: &str,
    domain: &str,
    region: &str,
    id: &str,
) -> Result<(), DeployError> {
    let refuse = |message: String| DeployError::refused("acm:DescribeCertificate", id, message);
    let Some(detail) = describe(acm, arn, id).await? else {
        return Err(refuse(format!(
            "certificate {arn} does not exist in {region}: give the ARN of an issued ACM certificate \
             for {domain} in {region} in [certificates] arns, or remove [certificates] arns to have \
             certificates requested from ACM"
        )));
    };
    let status = status_str(&detail);
    if status == "PENDING_VALIDATION" {
        let records: Vec<String> = validation_records(&detail)
            .0
            .iter()
            .map(|r| format!("{} CNAME {}", r.name, r.value))
            .collect();
        return Err(refuse(format!(
            "certificate {arn} is PENDING_VALIDATION: add its DNS validation record ({}) to the \
             domain's zone and wait until ACM issues it, or give an issued certificate's ARN in \
             [certificates] arns",
            if records.is_empty() {
                "see the ACM console".to_owned()
            } else {
                records.join(", ")
            }
        )));
    }
    if status != "ISSUED" {
        return Err(refuse(format!(
            "certificate {arn} is {status}, not ISSUED: give an issued certificate's ARN for \
             {domain} in {region} in [certificates] arns"
        )));
    }
    let names = names_of(&detail);
    if !covers(names.iter().copied(), domain) {
        return Err(refuse(format!(
            "certificate {arn} is for {}, not {domain}: give the ARN of a certificate for {domain} \
             in [certificates] arns",
            names.join(", ")
        )));
    }
    Ok(())
}

/// A given certificate must also cover `names` (the health check's name under the domain).
async fn check_covers(
    acm: &AcmClient,
    arn: &str,
    names: &[String],
    id: &str,
) -> Result<(), DeployError> {
    if names.is_empty() {
        return Ok(());
    }
    let Some(detail) = describe(acm, arn, id).await? else {
        return Ok(());
    };
    let have = names_of(&detail);
    let missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !covers(have.iter().copied(), n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DeployError::refused(
        "acm:DescribeCertificate",
        id,
        format!(
            "certificate {arn} ({}) does not cover {}, which the region's health check probes: give \
             a certificate that also covers it (or the domain's wildcard), or set \
             health_check.probe = \"execute-api\"",
            have.join(", "),
            missing.join(", ")
        ),
    ))
}

fn record_change(
    action: ChangeAction,
    set: ResourceRecordSet,
    id: &str,
) -> Result<R53Change, DeployError> {
    R53Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| DeployError::refused("route53:ChangeResourceRecordSets", id, e.to_string()))
}

async fn change_records(
    route53: &Route53Client,
    zone_id: &str,
    changes: Vec<R53Change>,
    id: &str,
) -> Result<(), DeployError> {
    let batch = ChangeBatch::builder()
        .set_changes(Some(changes))
        .comment("tworegion: ACM DNS validation")
        .build()
        .map_err(|e| DeployError::refused("route53:ChangeResourceRecordSets", id, e.to_string()))?;
    route53
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| DeployError::aws("route53:ChangeResourceRecordSets", id, &e))?;
    Ok(())
}

/// Puts the certificate's validation records into the zone (as soon as ACM shows them) and waits
/// until ACM issues it.
async fn validate(
    acm: &AcmClient,
    route53: &Route53Client,
    zone: &str,
    arn: &str,
    id: &str,
) -> Result<(), DeployError> {
    let zone_id = dns_record::zone_id(route53, zone).await?;
    let started = Instant::now();
    let records = loop {
        let detail = describe(acm, arn, id).await?.ok_or_else(|| {
            DeployError::refused(
                "acm:DescribeCertificate",
                id,
                format!("certificate {arn} disappeared while it was being validated; run up again"),
            )
        })?;
        let (records, complete) = validation_records(&detail);
        if complete && !records.is_empty() {
            break records;
        }
        if started.elapsed() >= RECORDS_WAIT {
            return Err(DeployError::refused(
                "acm:DescribeCertificate",
                id,
                format!(
                    "ACM did not give the DNS validation records of {arn} within {} s; run up again",
                    RECORDS_WAIT.as_secs()
                ),
            ));
        }
        sleep(Duration::from_secs(2)).await;
    };
    let mut changes = Vec::new();
    for record in &records {
        let set = ResourceRecordSet::builder()
            .name(&record.name)
            .r#type(RrType::Cname)
            .ttl(RECORD_TTL)
            .resource_records(
                ResourceRecord::builder()
                    .value(&record.value)
                    .build()
                    .map_err(|e| {
                        DeployError::refused("route53:ChangeResourceRecordSets", id, e.to_string())
                    })?,
            )
            .build()
            .map_err(|e| {
                DeployError::refused("route53:ChangeResourceRecordSets", id, e.to_string())
            })?;
        changes.push(record_change(ChangeAction::Upsert, set, id)?);
    }
    change_records(route53, &zone_id, changes, id).await?;
    tracing::info!(
        certificate = %arn,
        records = records.len(),
        zone = %zone,
        "Validation records in the hosted zone; waiting for ACM to issue the certificate (up to 10 minutes)."
    );
    let started = Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        let status = describe(acm, arn, id)
            .await?
            .map(|d| status_str(&d))
            .unwrap_or_else(|| "DELETED".to_owned());
        match status.as_str() {
            "ISSUED" => {
                tracing::info!(certificate = %arn, "Certificate issued.");
                return Ok(());
            }
            "PENDING_VALIDATION" => {}
            other => {
                return Err(DeployError::refused(
                    "acm:DescribeCertificate",
                    id,
                    format!(
                        "certificate {arn} is {other}: ACM will not issue it; delete it (aws acm \
                         delete-certificate --certificate-arn {arn}) and run up again to request \
                         a new one"
                    ),
                ));
            }
        }
        if started.elapsed() >= ISSUE_WAIT {
            let listed: Vec<String> = records
                .iter()
                .map(|r| format!("{} CNAME {}", r.name, r.value))
                .collect();
            return Err(DeployError::refused(
                "acm:DescribeCertificate",
                id,
                format!(
                    "certificate {arn} is still PENDING_VALIDATION after {} minutes: check that the \
                     hosted zone {zone} is the domain's public zone (its name servers set at the \
                     registrar) and holds {}; then run up again",
                    ISSUE_WAIT.as_secs() / 60,
                    listed.join(", ")
                ),
            ));
        }
        tracing::info!(
            certificate = %arn,
            waited_seconds = started.elapsed().as_secs(),
            "Certificate still PENDING_VALIDATION."
        );
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(15));
    }
}

async fn request(
    acm: &AcmClient,
    route53: &Route53Client,
    want: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let region = want.region.as_deref().unwrap_or_default();
    let domain = want
        .props
        .get("domain_name")
        .and_then(Value::as_str)
        .unwrap_or(&want.name);
    let zone = want
        .props
        .get("hosted_zone")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let pairs = tag_pairs(&want.props);
    let scope = Scope {
        app: pairs
            .iter()
            .find(|(k, _)| k == super::APP_TAG)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        stage: pairs
            .iter()
            .find(|(k, _)| k == super::STAGE_TAG)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    };
    let tags = pairs
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DeployError::refused("acm:RequestCertificate", id, e.to_string()))?;
    let alternative = super::strings(&want.props, "alternative_names");
    // The names are part of the request's identity: a replacement that adds one within the
    // token's window must not get the old certificate back.
    let identity = std::iter::once(domain.to_owned())
        .chain(alternative.iter().cloned())
        .collect::<Vec<_>>()
        .join(",");
    let out = acm
        .request_certificate()
        .domain_name(domain)
        .set_subject_alternative_names((!alternative.is_empty()).then(|| {
            std::iter::once(domain.to_owned())
                .chain(alternative.iter().cloned())
                .collect()
        }))
        .validation_method(ValidationMethod::Dns)
        .idempotency_token(idempotency_token(&scope, region, &identity, now_unix()))
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| DeployError::aws("acm:RequestCertificate", id, &e))?;
    let arn = out.certificate_arn().unwrap_or_default().to_owned();
    tracing::info!(certificate = %arn, domain = %domain, region = %region, "Certificate requested from ACM.");
    validate(acm, route53, zone, &arn, id).await
}

/// Another certificate (here or in `others`) that still uses `record`, if any.
async fn still_used(
    clients: &[&AcmClient],
    deleted: &str,
    record: &ValidationRecord,
    id: &str,
) -> Result<Option<String>, DeployError> {
    let Some((_, domain)) = record.name.split_once('.') else {
        return Ok(None);
    };
    for acm in clients {
        for arn in certificates_for(acm, domain, id).await? {
            if arn == deleted {
                continue;
            }
            if let Some(detail) = describe(acm, &arn, id).await?
                && validation_records(&detail).0.contains(record)
            {
                return Ok(Some(arn));
            }
        }
    }
    Ok(None)
}

async fn delete(
    acm: &AcmClient,
    route53: &Route53Client,
    other_regions: &[AcmClient],
    have: &Resource,
    id: &str,
) -> Result<(), DeployError> {
    let arn = have
        .props
        .get("arn")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut records = records_from_json(&have.props);
    let started = Instant::now();
    loop {
        match acm.delete_certificate().certificate_arn(arn).send().await {
            Ok(_) => break,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                break;
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception())
                    && started.elapsed() < IN_USE_WAIT =>
            {
                tracing::info!(certificate = %arn, "Certificate still in use (API Gateway releases it shortly after its domain is deleted); waiting.");
                sleep(Duration::from_secs(10)).await;
            }
            Err(e) => return Err(DeployError::aws("acm:DeleteCertificate", id, &e)),
        }
    }
    tracing::info!(certificate = %arn, "Certificate deleted.");
    records.sort();
    records.dedup();
    let mut clients: Vec<&AcmClient> = vec![acm];
    clients.extend(other_regions.iter());
    for record in &records {
        if let Some(user) = still_used(&clients, arn, record, id).await? {
            tracing::info!(record = %record.name, certificate = %user, "Validation record kept: another certificate uses it.");
            continue;
        }
        let zone_id = match have.props.get("hosted_zone").and_then(Value::as_str) {
            Some(zone) if !zone.is_empty() => Some(dns_record::zone_id(route53, zone).await?),
            _ => zone_holding(route53, &record.name, id).await?,
        };
        let Some(zone_id) = zone_id else {
            continue;
        };
        if let Some(set) = find_record(route53, &zone_id, &record.name, id).await?
            && holds(&set, record)
        {
            change_records(
                route53,
                &zone_id,
                vec![record_change(ChangeAction::Delete, set, id)?],
                id,
            )
            .await?;
            tracing::info!(record = %record.name, "Validation record deleted.");
        }
    }
    Ok(())
}

/// Applies one planned change to a certificate.
///
/// - Given ARN (desired has `given_arn`): Create, Update and Replace only check that the certificate
///   exists, is ISSUED and covers the domain, and otherwise fail with what to do; Delete leaves a
///   given certificate alone.
/// - Requested: Create requests it (DNS validation, tags, an idempotency token), puts its validation
///   records into the hosted zone and waits (at most 10 minutes) until it is ISSUED. Update re-tags
///   it and, when its validation is not complete, puts the records back and waits again. Replace
///   requests a new one (the old one, no longer chosen, is deleted by the next `up`). Delete deletes
///   it and its validation records, except records that another certificate in this region or in
///   `other_regions` (ACM clients of the deployment's other regions) still uses.
pub async fn apply(
    acm: &AcmClient,
    route53: &Route53Client,
    other_regions: &[AcmClient],
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("Certificate/{region}/{}", change.name);
    let given = desired.and_then(|d| d.props.get("given_arn").and_then(Value::as_str));
    match (&change.action, desired, given) {
        (
            Action::Create | Action::Update { .. } | Action::Replace { .. },
            Some(want),
            Some(arn),
        ) => {
            let domain = want
                .props
                .get("domain_name")
                .and_then(Value::as_str)
                .unwrap_or(&want.name);
            check_given(acm, arn, domain, region, &id).await?;
            check_covers(acm, arn, &super::strings(&want.props, "covers"), &id).await
        }
        (Action::Create, Some(want), None) => request(acm, route53, want, &id).await,
        (Action::Replace { .. }, Some(want), None) => {
            tracing::info!(certificate = %super::observed_str(observed, "arn"), "Replacing the certificate; the old one is deleted by the next up.");
            request(acm, route53, want, &id).await
        }
        (Action::Update { changes }, Some(want), None) => {
            let arn = super::observed_str(observed, "arn");
            if arn.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            for c in changes {
                match c.field.as_str() {
                    "tags" => {
                        let tags = tag_pairs(&want.props)
                            .into_iter()
                            .map(|(k, v)| Tag::builder().key(k).value(v).build())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| {
                                DeployError::refused("acm:AddTagsToCertificate", &id, e.to_string())
                            })?;
                        acm.add_tags_to_certificate()
                            .certificate_arn(arn)
                            .set_tags(Some(tags))
                            .send()
                            .await
                            .map_err(|e| DeployError::aws("acm:AddTagsToCertificate", &id, &e))?;
                    }
                    "validation" | "hosted_zone" => {
                        let zone = want
                            .props
                            .get("hosted_zone")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        validate(acm, route53, zone, arn, &id).await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        (Action::Delete, _, _) => {
            let Some(have) = observed else {
                return Err(DeployError::unplanned(&id));
            };
            if have.props.contains_key("given_arn") {
                tracing::info!(certificate = %super::observed_str(observed, "arn"), "Given certificate left as it is.");
                return Ok(());
            }
            delete(acm, route53, other_regions, have, &id).await
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_covers_its_names_and_one_wildcard_level() {
        assert!(covers(["api.example.com"], "API.example.com."));
        assert!(covers(["example.com", "*.example.com"], "api.example.com"));
        assert!(!covers(["*.example.com"], "a.api.example.com"));
        assert!(!covers(["*.example.com"], "example.com"));
        assert!(!covers(["other.example.com"], "api.example.com"));
    }

    #[test]
    fn the_token_is_stable_for_a_retry_and_differs_per_region_and_later() {
        let scope = Scope {
            app: "todos".into(),
            stage: "prod".into(),
        };
        let a = idempotency_token(&scope, "us-east-1", "api.example.com", 1_000_000);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(
            a,
            idempotency_token(&scope, "us-east-1", "API.example.com", 1_000_010)
        );
        assert_ne!(
            a,
            idempotency_token(&scope, "us-west-2", "api.example.com", 1_000_000)
        );
        assert_ne!(
            a,
            idempotency_token(&scope, "us-east-1", "api.example.com", 1_003_600)
        );
    }
}
