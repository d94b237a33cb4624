//! Certificates, custom domains and base path mappings against the local AWS, in both regions:
//! requested certificates are issued with their validation records in the zone, given ones are only
//! checked, domains carry the certificate and report their alias, a second plan is empty, foreign
//! resources survive, and deletion removes ours with their validation records.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_acm::types::{CertificateStatus, Tag, ValidationMethod};
use aws_sdk_apigateway::types::{EndpointConfiguration, EndpointType, IntegrationType};
use aws_sdk_route53::types::RrType;
use deployer::config::Deployment;
use deployer::desired::{Kind, Resolved, Resource, desired, reference_key, resolve};
use deployer::plan::{Action, Change, plan};
use deployer::resources::{Scope, certificate, dns_record, domain_name};
use serde_json::{Value, json};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, unique_name};

const KINDS: [Kind; 3] = [Kind::Certificate, Kind::DomainName, Kind::BasePathMapping];

/// A short app name (at most 20 characters) that no other test run uses.
fn app_name(tag: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "cd{tag}{}x{}",
        std::process::id() % 100_000,
        millis % 10_000_000
    )
}

struct Region {
    name: &'static str,
    acm: aws_sdk_acm::Client,
    apigateway: aws_sdk_apigateway::Client,
}

struct World {
    scope: Scope,
    route53: aws_sdk_route53::Client,
    regions: Vec<Region>,
    zone: String,
    domain: String,
    /// The desired certificates, domains and mappings, unresolved.
    desired: Vec<Resource>,
    resolved: Resolved,
}

impl World {
    fn new(local: &LocalAws, d: &Deployment, zone: &str, domain: &str) -> World {
        let regions = [REGION_A, REGION_B]
            .into_iter()
            .map(|r| Region {
                name: r,
                acm: aws_sdk_acm::Client::new(&local.sdk_config(r)),
                apigateway: aws_sdk_apigateway::Client::new(&local.sdk_config(r)),
            })
            .collect();
        World {
            scope: Scope {
                app: d.file.app.clone(),
                stage: d.file.stage.clone(),
            },
            route53: aws_sdk_route53::Client::new(&local.sdk_config(REGION_A)),
            regions,
            zone: zone.to_owned(),
            domain: domain.to_owned(),
            desired: desired(d, "sha")
                .into_iter()
                .filter(|r| KINDS.contains(&r.kind))
                .collect(),
            resolved: Resolved::new(),
        }
    }

    fn region(&self, name: &str) -> &Region {
        self.regions.iter().find(|r| r.name == name).unwrap()
    }

    fn other_acm(&self, name: &str) -> Vec<aws_sdk_acm::Client> {
        self.regions
            .iter()
            .filter(|r| r.name != name)
            .map(|r| r.acm.clone())
            .collect()
    }

    fn wanted_certificate(&self, region: &str) -> Option<Resource> {
        self.desired
            .iter()
            .find(|r| r.kind == Kind::Certificate && r.region.as_deref() == Some(region))
            .cloned()
    }

    /// Everything of the three kinds in both regions, and the references they resolve to.
    async fn observe(&mut self) -> Vec<Resource> {
        let mut found = Vec::new();
        for region in &self.regions {
            if let Some(wanted) = self.wanted_certificate(region.name) {
                found.extend(
                    certificate::observe(&region.acm, &self.route53, &self.scope, &wanted)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            let domains = domain_name::observe(
                &region.apigateway,
                region.name,
                &self.scope,
                std::slice::from_ref(&self.domain),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let mut names: Vec<String> = domains.iter().map(|r| r.name.clone()).collect();
            names.push(format!("{}/(none)", self.domain));
            found.extend(domains);
            found.extend(
                domain_name::observe_mapping(&region.apigateway, region.name, &names)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        for r in &found {
            let region = r.region.as_deref().unwrap();
            let value = match r.kind {
                Kind::Certificate => r.props.get("arn"),
                Kind::DomainName => r.props.get("alias"),
                _ => continue,
            };
            if let Some(value) = value {
                self.resolved
                    .insert(reference_key(r.kind, region, &r.name), value.clone());
            }
        }
        found
    }

    fn want(&self) -> Vec<Resource> {
        resolve(&self.desired, &self.resolved)
    }

    async fn apply(
        &self,
        change: &Change,
        want: &[Resource],
        have: &[Resource],
    ) -> Result<(), deployer::resources::DeployError> {
        let find = |list: &[Resource]| {
            list.iter()
                .find(|r| {
                    r.kind == change.kind && r.region == change.region && r.name == change.name
                })
                .cloned()
        };
        let (want, have) = (find(want), find(have));
        let region = self.region(change.region.as_deref().unwrap());
        match change.kind {
            Kind::Certificate => {
                certificate::apply(
                    &region.acm,
                    &self.route53,
                    &self.other_acm(region.name),
                    change,
                    want.as_ref(),
                    have.as_ref(),
                )
                .await
            }
            Kind::DomainName => {
                domain_name::apply(&region.apigateway, change, want.as_ref(), have.as_ref()).await
            }
            _ => {
                domain_name::apply_mapping(&region.apigateway, change, want.as_ref(), have.as_ref())
                    .await
            }
        }
    }

    /// One `up` of the three kinds, kind by kind (later kinds need the earlier ones' values).
    /// Returns the number of changes made.
    async fn up(&mut self) -> usize {
        let mut count = 0;
        for kind in KINDS {
            let observed = self.observe().await;
            let want = self.want();
            let of = |list: &[Resource]| -> Vec<Resource> {
                list.iter().filter(|r| r.kind == kind).cloned().collect()
            };
            let planned = plan(&of(&want), &of(&observed));
            for change in &planned.changes {
                self.apply(change, &want, &observed)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
            if kind == Kind::DomainName {
                self.prime_moto_mappings().await;
            }
        }
        count
    }

    /// Moto gap: GetBasePathMappings of a domain that never had a mapping fails with HTTP 500 (a
    /// KeyError) where AWS answers an empty list. A mapping created and deleted right away gives
    /// moto's domain its (empty) list, so the observation sees what AWS would show.
    async fn prime_moto_mappings(&self) {
        for region in &self.regions {
            let client = &region.apigateway;
            if client
                .get_domain_name()
                .domain_name(&self.domain)
                .send()
                .await
                .is_err()
                || client
                    .get_base_path_mappings()
                    .domain_name(&self.domain)
                    .send()
                    .await
                    .is_ok()
            {
                continue;
            }
            let api = self.resolved[&reference_key(
                Kind::RestApi,
                region.name,
                &format!("{}-test", self.scope.app),
            )]
                .as_str()
                .unwrap();
            client
                .create_base_path_mapping()
                .domain_name(&self.domain)
                .base_path("moto-primer")
                .rest_api_id(api)
                .send()
                .await
                .unwrap();
            client
                .delete_base_path_mapping()
                .domain_name(&self.domain)
                .base_path("moto-primer")
                .send()
                .await
                .unwrap();
        }
    }

    /// The CNAME records of the zone, as (name, value).
    async fn cnames(&self) -> Vec<(String, String)> {
        let zone_id = dns_record::zone_id(&self.route53, &self.zone)
            .await
            .unwrap();
        let sets = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .send()
            .await
            .unwrap();
        sets.resource_record_sets()
            .iter()
            .filter(|s| s.r#type() == &RrType::Cname)
            .flat_map(|s| {
                s.resource_records()
                    .iter()
                    .map(|r| (s.name().to_owned(), r.value().to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

async fn hosted_zone(route53: &aws_sdk_route53::Client) -> String {
    let zone = format!("{}.example", unique_name("zone"));
    route53
        .create_hosted_zone()
        .name(&zone)
        .caller_reference(unique_name("zone"))
        .send()
        .await
        .expect("hosted zone");
    zone
}

/// A REST API with a `live` stage, as the deployer's RestApi kind would leave it.
async fn rest_api(client: &aws_sdk_apigateway::Client, stages: &[&str]) -> String {
    let api = client
        .create_rest_api()
        .name(unique_name("api"))
        .endpoint_configuration(
            EndpointConfiguration::builder()
                .types(EndpointType::Regional)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = api.id().unwrap().to_owned();
    let root = client
        .get_resources()
        .rest_api_id(&id)
        .send()
        .await
        .unwrap()
        .items()
        .iter()
        .find(|r| r.path() == Some("/"))
        .and_then(|r| r.id())
        .unwrap()
        .to_owned();
    client
        .put_method()
        .rest_api_id(&id)
        .resource_id(&root)
        .http_method("GET")
        .authorization_type("NONE")
        .send()
        .await
        .unwrap();
    client
        .put_integration()
        .rest_api_id(&id)
        .resource_id(&root)
        .http_method("GET")
        .r#type(IntegrationType::Mock)
        .send()
        .await
        .unwrap();
    for stage in stages {
        client
            .create_deployment()
            .rest_api_id(&id)
            .stage_name(*stage)
            .send()
            .await
            .unwrap();
    }
    id
}

/// A certificate made outside the deployer, issued (moto issues after MOTO_ACM_VALIDATION_WAIT).
async fn outside_certificate(
    client: &aws_sdk_acm::Client,
    domain: &str,
    tags: &[(&str, &str)],
) -> String {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build().unwrap())
        .collect();
    let arn = client
        .request_certificate()
        .domain_name(domain)
        .validation_method(ValidationMethod::Dns)
        .set_tags((!tags.is_empty()).then_some(tags))
        .send()
        .await
        .unwrap()
        .certificate_arn()
        .unwrap()
        .to_owned();
    for _ in 0..100 {
        let status = client
            .describe_certificate()
            .certificate_arn(&arn)
            .send()
            .await
            .unwrap()
            .certificate()
            .and_then(|c| c.status().cloned());
        if status == Some(CertificateStatus::Issued) {
            return arn;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "certificate {arn} was not issued: is MOTO_ACM_VALIDATION_WAIT=1 set (scripts/local-aws)?"
    );
}

async fn certificate_exists(client: &aws_sdk_acm::Client, arn: &str) -> bool {
    client
        .describe_certificate()
        .certificate_arn(arn)
        .send()
        .await
        .is_ok()
}

async fn domain_exists(client: &aws_sdk_apigateway::Client, name: &str) -> bool {
    client
        .get_domain_name()
        .domain_name(name)
        .send()
        .await
        .is_ok()
}

fn deployment(app: &str, zone: &str, domain: &str, certificates: Option<String>) -> Deployment {
    let mut edits = vec![
        (
            "domain_name = \"api.example.com\"",
            format!("domain_name = \"{domain}\""),
        ),
        (
            "hosted_zone = \"example.com\"",
            format!("hosted_zone = \"{zone}\""),
        ),
    ];
    if let Some(arns) = certificates {
        edits.push(("[certificates]", format!("[certificates]\narns = {arns}")));
    }
    // The public name's certificate, domain and mapping alone: the regions' own names (the health
    // checks' probes) are covered end to end by cli_review_local_aws and the local environment.
    edits.push((
        "failure_threshold = 3",
        "failure_threshold = 3\nprobe = \"execute-api\"".to_owned(),
    ));
    support::deployment(app, &edits)
}

fn named<'a>(list: &'a [Resource], kind: Kind, region: &str, name: &str) -> &'a Resource {
    list.iter()
        .find(|r| r.kind == kind && r.region.as_deref() == Some(region) && r.name == name)
        .unwrap_or_else(|| panic!("{kind:?} {name} in {region} not observed: {list:#?}"))
}

#[tokio::test]
async fn requested_certificates_domains_and_mappings_reconcile_in_both_regions() {
    let local = LocalAws::from_env();
    let route53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let zone = hosted_zone(&route53).await;
    let domain = format!("api.{zone}");
    let app = app_name("r");
    let d = deployment(&app, &zone, &domain, None);
    let mut world = World::new(&local, &d, &zone, &domain);

    // Made beforehand and not ours: a certificate and a domain for another name (untagged), and a
    // domain of the same app in another stage.
    let other = format!("other.{zone}");
    let sibling = format!("sibling.{zone}");
    let mut foreign_certificates = Vec::new();
    let mut apis = Vec::new();
    for region in &world.regions {
        let arn = outside_certificate(&region.acm, &other, &[]).await;
        for (name, tags) in [
            (&other, vec![]),
            (
                &sibling,
                vec![
                    ("tworegion:app", app.as_str()),
                    ("tworegion:stage", "other"),
                ],
            ),
        ] {
            let mut request = region
                .apigateway
                .create_domain_name()
                .domain_name(name)
                .regional_certificate_arn(&arn)
                .endpoint_configuration(
                    EndpointConfiguration::builder()
                        .types(EndpointType::Regional)
                        .build(),
                );
            for (k, v) in tags {
                request = request.tags(k, v);
            }
            request.send().await.unwrap();
        }
        foreign_certificates.push((region.name, arn));
        let api = rest_api(&region.apigateway, &["live", "v2"]).await;
        world.resolved.insert(
            reference_key(Kind::RestApi, region.name, &format!("{app}-test")),
            json!(api),
        );
        apis.push((region.name, api));
    }

    // Up: per region one certificate, one domain, one mapping.
    assert_eq!(world.up().await, 6);
    let observed = world.observe().await;
    let records = world.cnames().await;
    for (region, api) in &apis {
        let cert = named(&observed, Kind::Certificate, region, &domain);
        assert_eq!(cert.props["status"], "ISSUED", "{cert:?}");
        assert_eq!(cert.props["validation"], "DNS");
        assert_eq!(cert.props["tags"], world.scope.tags());
        let arn = cert.props["arn"].as_str().unwrap();
        assert!(arn.contains(&format!(":acm:{region}:")), "{arn}");
        let validation = cert.props["validation_records"].as_array().unwrap();
        assert!(!validation.is_empty());
        for record in validation {
            let wanted = (
                record["name"].as_str().unwrap().to_owned(),
                record["value"].as_str().unwrap().to_owned(),
            );
            assert!(
                records
                    .iter()
                    .any(|r| r.0.to_ascii_lowercase() == wanted.0 && r.1 == wanted.1),
                "validation record {wanted:?} in the zone: {records:?}"
            );
        }

        let custom = named(&observed, Kind::DomainName, region, &domain);
        assert_eq!(custom.props["certificate"], json!(arn));
        assert_eq!(custom.props["endpoint"], "REGIONAL");
        assert_eq!(custom.props["security_policy"], "TLS_1_2");
        assert_eq!(custom.props["tags"], world.scope.tags());
        let alias = &custom.props["alias"];
        let dns_name = alias["dns_name"].as_str().unwrap();
        assert!(
            dns_name.ends_with(&format!(".execute-api.{region}.amazonaws.com.")),
            "{alias}"
        );
        assert!(!alias["hosted_zone_id"].as_str().unwrap().is_empty());
        assert_eq!(
            world.resolved[&reference_key(Kind::DomainName, region, &domain)],
            *alias
        );

        let mapping = named(
            &observed,
            Kind::BasePathMapping,
            region,
            &format!("{domain}/(none)"),
        );
        assert_eq!(
            mapping.props,
            [
                ("base_path".to_owned(), json!("")),
                ("api".to_owned(), json!(api)),
                ("stage".to_owned(), json!("live")),
            ]
            .into_iter()
            .collect()
        );
    }
    for r in &observed {
        assert!(
            r.name == domain || r.name == format!("{domain}/(none)"),
            "only ours observed, got {} {}",
            r.id(),
            Value::Object(r.props.clone().into_iter().collect())
        );
    }
    let again = plan(&world.want(), &observed);
    assert!(again.is_empty(), "a second up changes nothing: {again:?}");
    assert_eq!(world.up().await, 0);

    // The mapping follows a new stage in place.
    let mut moved = world.desired.clone();
    for r in moved.iter_mut().filter(|r| r.kind == Kind::BasePathMapping) {
        r.props.insert("stage".into(), json!("v2"));
    }
    let live = std::mem::replace(&mut world.desired, moved);
    let observed = world.observe().await;
    let planned = plan(&world.want(), &observed);
    assert_eq!(planned.changes.len(), 2, "{planned:?}");
    for change in &planned.changes {
        assert!(matches!(change.action, Action::Update { .. }), "{change:?}");
        world
            .apply(change, &world.want(), &observed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let observed = world.observe().await;
    for (region, _) in &apis {
        let mapping = named(
            &observed,
            Kind::BasePathMapping,
            region,
            &format!("{domain}/(none)"),
        );
        assert_eq!(mapping.props["stage"], "v2");
    }
    world.desired = live;
    assert_eq!(world.up().await, 2, "back to live");

    // Down: everything of ours goes, in reverse dependency order; the validation record stays
    // while the other region's certificate still uses it.
    let observed = world.observe().await;
    let down = plan(&[], &observed);
    let kinds: Vec<(Kind, &str)> = down
        .changes
        .iter()
        .map(|c| {
            assert_eq!(c.action, Action::Delete);
            (c.kind, c.region.as_deref().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Kind::BasePathMapping, REGION_B),
            (Kind::BasePathMapping, REGION_A),
            (Kind::DomainName, REGION_B),
            (Kind::DomainName, REGION_A),
            (Kind::Certificate, REGION_B),
            (Kind::Certificate, REGION_A),
        ]
    );
    let validation: Vec<(String, String)> = named(&observed, Kind::Certificate, REGION_A, &domain)
        .props["validation_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let in_zone = |records: &[(String, String)]| {
        validation
            .iter()
            .filter(|v| {
                records
                    .iter()
                    .any(|r| r.0.to_ascii_lowercase() == v.0 && r.1 == v.1)
            })
            .count()
    };
    for change in &down.changes {
        world
            .apply(change, &[], &observed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if change.kind == Kind::Certificate && change.region.as_deref() == Some(REGION_B) {
            // ACM gives every certificate for a domain in an account the same validation record.
            assert_eq!(
                in_zone(&world.cnames().await),
                validation.len(),
                "kept for the certificate in {REGION_A}"
            );
        }
    }
    assert!(world.observe().await.is_empty(), "nothing of ours is left");
    assert_eq!(
        in_zone(&world.cnames().await),
        0,
        "validation records removed"
    );
    for (region, arn) in &foreign_certificates {
        let r = world.region(region);
        assert!(
            certificate_exists(&r.acm, arn).await,
            "foreign certificate kept"
        );
        assert!(
            domain_exists(&r.apigateway, &other).await,
            "foreign domain kept"
        );
        assert!(
            domain_exists(&r.apigateway, &sibling).await,
            "other stage's domain kept"
        );
    }
}

#[tokio::test]
async fn given_certificates_are_checked_never_created_or_deleted() {
    let local = LocalAws::from_env();
    let route53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let zone = hosted_zone(&route53).await;
    let domain = format!("api.{zone}");
    let app = app_name("g");
    let acm = |r: &str| aws_sdk_acm::Client::new(&local.sdk_config(r));
    let given_a = outside_certificate(&acm(REGION_A), &domain, &[]).await;
    let given_b = outside_certificate(&acm(REGION_B), &domain, &[]).await;
    let arns = |a: &str, b: &str| Some(format!("{{ {REGION_A} = \"{a}\", {REGION_B} = \"{b}\" }}"));
    let d = deployment(&app, &zone, &domain, arns(&given_a, &given_b));
    let mut world = World::new(&local, &d, &zone, &domain);
    world.desired.retain(|r| r.kind == Kind::Certificate);

    // A certificate this deployment requested earlier (tagged), with its validation record in the
    // zone: no longer wanted once ARNs are given.
    let leftover = outside_certificate(
        &acm(REGION_A),
        &domain,
        &[("tworegion:app", app.as_str()), ("tworegion:stage", "test")],
    )
    .await;
    let mut requested = World::new(
        &local,
        &deployment(&app, &zone, &domain, None),
        &zone,
        &domain,
    );
    requested
        .desired
        .retain(|r| r.kind == Kind::Certificate && r.region.as_deref() == Some(REGION_A));
    let observed = requested.observe().await;
    let update = plan(&requested.want(), &observed);
    assert_eq!(
        update.changes.len(),
        1,
        "the leftover's record is missing: {update:?}"
    );
    requested
        .apply(&update.changes[0], &requested.want(), &observed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let record_count = world.cnames().await.len();
    assert!(record_count >= 1);

    let observed = world.observe().await;
    for (region, arn) in [(REGION_A, &given_a), (REGION_B, &given_b)] {
        let cert = named(&observed, Kind::Certificate, region, &domain);
        assert_eq!(cert.props["given_arn"], json!(arn));
        assert_eq!(cert.props["arn"], json!(arn));
        assert_eq!(cert.props["status"], "ISSUED");
        assert_eq!(cert.props["domain_name"], json!(domain));
    }
    let planned = plan(&world.want(), &observed);
    let leftover_id = leftover.rsplit('/').next().unwrap();
    assert_eq!(
        planned.changes,
        vec![Change {
            kind: Kind::Certificate,
            region: Some(REGION_A.to_owned()),
            name: format!("{domain}/{leftover_id}"),
            action: Action::Delete,
        }],
        "the given certificates are as wanted; the leftover goes"
    );
    world
        .apply(&planned.changes[0], &world.want(), &observed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!certificate_exists(&acm(REGION_A), &leftover).await);
    assert_eq!(
        world.cnames().await.len(),
        record_count,
        "the validation record stays: the given certificates for the domain use it too"
    );
    assert!(plan(&world.want(), &world.observe().await).is_empty());

    // Down leaves given certificates alone.
    let observed = world.observe().await;
    let down = plan(&[], &observed);
    assert_eq!(down.changes.len(), 2);
    for change in &down.changes {
        world
            .apply(change, &[], &observed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(certificate_exists(&acm(REGION_A), &given_a).await);
    assert!(certificate_exists(&acm(REGION_B), &given_b).await);

    // A given ARN that does not exist, and one for another name, fail and say what to do.
    let missing = format!(
        "arn:aws:acm:{REGION_A}:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    );
    let elsewhere = outside_certificate(&acm(REGION_B), &format!("other.{zone}"), &[]).await;
    let d = deployment(&app, &zone, &domain, arns(&missing, &elsewhere));
    let mut wrong = World::new(&local, &d, &zone, &domain);
    wrong.desired.retain(|r| r.kind == Kind::Certificate);
    let observed = wrong.observe().await;
    let planned = plan(&wrong.want(), &observed);
    let actions: Vec<(&str, &Action)> = planned
        .changes
        .iter()
        .map(|c| (c.region.as_deref().unwrap(), &c.action))
        .collect();
    assert_eq!(actions.len(), 2, "{planned:?}");
    assert_eq!(actions[0], (REGION_A, &Action::Create));
    assert!(
        matches!(actions[1], (REGION_B, Action::Replace { .. })),
        "{planned:?}"
    );
    for change in &planned.changes {
        let error = wrong
            .apply(change, &wrong.want(), &observed)
            .await
            .expect_err("an unusable given certificate fails")
            .to_string();
        assert!(error.contains("[certificates]"), "{error}");
        if change.region.as_deref() == Some(REGION_A) {
            assert!(error.contains("does not exist"), "{error}");
        } else {
            assert!(error.contains(&format!("not {domain}")), "{error}");
        }
    }
    let listed = acm(REGION_A)
        .list_certificates()
        .send()
        .await
        .unwrap()
        .certificate_summary_list()
        .iter()
        .filter(|c| c.domain_name() == Some(domain.as_str()))
        .count();
    assert_eq!(
        listed, 1,
        "only the given certificate; nothing was requested"
    );
}
