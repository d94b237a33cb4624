//! The failover records against the local AWS: exactly one PRIMARY and one SECONDARY alias record,
//! each with its region's health check; a second plan is empty; switching to CNAME records
//! (`dns.record_style = "cname"`) replaces both with CNAMEs carrying the TTL and leaves no alias
//! record; removal spares records not ours.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, HealthCheckConfig, HealthCheckType, ResourceRecord,
    ResourceRecordSet, RrType,
};
use deployer::desired::{Kind, Resolved, Resource, reference_attr_key, reference_key};
use deployer::plan::plan;
use deployer::resources::{Scope, dns_record};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, unique_name};

#[tokio::test]
async fn failover_records_reconcile() {
    let local = LocalAws::from_env();
    let client = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let zone_name = format!("{}.example", unique_name("zone"));
    let domain = format!("api.{zone_name}");
    client
        .create_hosted_zone()
        .name(&zone_name)
        .caller_reference(unique_name("zone"))
        .send()
        .await
        .expect("hosted zone");
    let zone_id = dns_record::zone_id(&client, &zone_name)
        .await
        .expect("zone found by name");

    // A record in the zone that is not ours.
    let foreign = ResourceRecordSet::builder()
        .name(format!("other.{zone_name}."))
        .r#type(RrType::A)
        .ttl(60)
        .resource_records(
            ResourceRecord::builder()
                .value("192.0.2.1")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    client
        .change_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(foreign)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("foreign record");

    let d = support::deployment(
        "dns",
        &[
            (
                "domain_name = \"api.example.com\"",
                format!("domain_name = \"{domain}\""),
            ),
            (
                "hosted_zone = \"example.com\"",
                format!("hosted_zone = \"{zone_name}\""),
            ),
            // The public name's records alone (the probe names' are covered end to end).
            (
                "failure_threshold = 3",
                "failure_threshold = 3\nprobe = \"execute-api\"".to_owned(),
            ),
        ],
    );
    let mut resolved = Resolved::new();
    let mut checks = Vec::new();
    for region in [REGION_A, REGION_B] {
        let check = client
            .create_health_check()
            .caller_reference(unique_name("hc"))
            .health_check_config(
                HealthCheckConfig::builder()
                    .r#type(HealthCheckType::Https)
                    .fully_qualified_domain_name(format!("abc.execute-api.{region}.amazonaws.com"))
                    .resource_path("/live/todos/health")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .health_check
            .unwrap()
            .id()
            .to_owned();
        checks.push(check.clone());
        resolved.insert(
            reference_key(
                Kind::HealthCheck,
                region,
                &format!("dns-test-{region}-switch"),
            ),
            json!(check),
        );
        resolved.insert(
            reference_key(Kind::DomainName, region, &domain),
            json!({ "dns_name": format!("d-{region}.execute-api.{region}.amazonaws.com."), "hosted_zone_id": "Z1UJRXOUMOOFQ8" }),
        );
        resolved.insert(
            reference_attr_key(Kind::DomainName, region, &domain, "regional_domain_name"),
            json!(format!("d-{region}.execute-api.{region}.amazonaws.com.")),
        );
    }
    let want: Vec<Resource> = support::wanted(&d, "sha", Kind::DnsRecord, None, &resolved);
    let scope = Scope {
        app: "dns".into(),
        stage: "test".into(),
    };
    let regions = vec![REGION_A.to_owned(), REGION_B.to_owned()];

    let up = |want: Vec<Resource>| {
        let client = client.clone();
        let scope = scope.clone();
        let regions = regions.clone();
        let zone_name = zone_name.clone();
        let domain = domain.clone();
        async move {
            let observed = dns_record::observe(&client, &scope, &regions, &zone_name, &domain)
                .await
                .expect("observe");
            let plan = plan(&want, &observed);
            for change in &plan.changes {
                let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
                dns_record::apply(
                    &client,
                    change,
                    find(&want).as_ref(),
                    find(&observed).as_ref(),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
            plan.changes.len()
        }
    };
    assert_eq!(up(want.clone()).await, 2);
    let observed = dns_record::observe(&client, &scope, &regions, &zone_name, &domain)
        .await
        .unwrap();
    let mut routing: Vec<(String, String)> = observed
        .iter()
        .map(|r| {
            (
                r.props["routing"]["failover"].as_str().unwrap().to_owned(),
                r.props["health_check"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    routing.sort();
    assert_eq!(
        routing,
        vec![
            ("PRIMARY".to_owned(), checks[0].clone()),
            ("SECONDARY".to_owned(), checks[1].clone())
        ]
    );
    assert!(
        plan(&want, &observed).is_empty(),
        "a second up changes nothing"
    );

    // The same records as CNAMEs with a TTL: each set replaced, no alias record left beside them.
    let d_cname = support::deployment(
        "dns",
        &[
            (
                "domain_name = \"api.example.com\"",
                format!("domain_name = \"{domain}\""),
            ),
            (
                "hosted_zone = \"example.com\"",
                format!("hosted_zone = \"{zone_name}\"\nrecord_style = \"cname\"\nttl = 7"),
            ),
            (
                "failure_threshold = 3",
                "failure_threshold = 3\nprobe = \"execute-api\"".to_owned(),
            ),
        ],
    );
    let want_cname: Vec<Resource> =
        support::wanted(&d_cname, "sha", Kind::DnsRecord, None, &resolved);
    assert_eq!(up(want_cname.clone()).await, 2);
    let sets = client
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await
        .unwrap();
    let mut at_domain: Vec<(String, Option<i64>, String)> = sets
        .resource_record_sets()
        .iter()
        .filter(|r| r.name() == format!("{domain}."))
        .map(|r| {
            (
                r.r#type().as_str().to_owned(),
                r.ttl(),
                r.resource_records()
                    .first()
                    .map(|v| v.value().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    at_domain.sort();
    assert_eq!(
        at_domain,
        vec![
            (
                "CNAME".to_owned(),
                Some(7),
                "d-us-east-1.execute-api.us-east-1.amazonaws.com.".to_owned()
            ),
            (
                "CNAME".to_owned(),
                Some(7),
                "d-us-west-2.execute-api.us-west-2.amazonaws.com.".to_owned()
            ),
        ]
    );
    let observed = dns_record::observe(&client, &scope, &regions, &zone_name, &domain)
        .await
        .unwrap();
    assert!(
        plan(&want_cname, &observed).is_empty(),
        "a second up after the switch changes nothing"
    );

    // Down: ours go, the foreign record stays.
    assert_eq!(up(Vec::new()).await, 2);
    assert!(
        dns_record::observe(&client, &scope, &regions, &zone_name, &domain)
            .await
            .unwrap()
            .is_empty()
    );
    let left = client
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await
        .unwrap();
    assert!(
        left.resource_record_sets()
            .iter()
            .any(|r| r.name() == format!("other.{zone_name}.")),
        "foreign record kept"
    );
}
