//! The deployer binary against the local AWS in the configs the main end-to-end test does not cover:
//! certificates given by ARN (`down` must leave them and finish), a switch of the routing mode (the
//! other mode's records are planned for deletion and replaced), and a stale health check left by an
//! interrupted replacement (deleted by the next `up`, never used by DNS), and an adopted table (`down`
//! releases it, untagged, with its data).

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod cli_support;

use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType, RrType, Tag, TagResourceType};
use cli_support::{Workspace, deployer, expect};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

/// An issued ACM certificate for `domain` (and `also`) in `region`, made outside the deployer.
async fn issued_certificate(local: &LocalAws, region: &str, domain: &str, also: &[&str]) -> String {
    let acm = aws_sdk_acm::Client::new(&local.sdk_config(region));
    let mut names = vec![domain.to_owned()];
    names.extend(also.iter().map(|n| (*n).to_owned()));
    let arn = acm
        .request_certificate()
        .domain_name(domain)
        .set_subject_alternative_names((!also.is_empty()).then_some(names))
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await
        .unwrap()
        .certificate_arn()
        .unwrap()
        .to_owned();
    for _ in 0..60 {
        let status = acm
            .describe_certificate()
            .certificate_arn(&arn)
            .send()
            .await
            .unwrap()
            .certificate()
            .and_then(|c| c.status().cloned());
        if status == Some(aws_sdk_acm::types::CertificateStatus::Issued) {
            return arn;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("{arn} was not issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_certificates_are_used_and_down_leaves_them() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let domain = format!("api.{}.test", w.app);
    // A certificate for the domain alone does not cover the health checks' names.
    let narrow = issued_certificate(&local, REGION_A, &domain, &[]).await;
    let wildcard = format!("*.{domain}");
    let a = issued_certificate(&local, REGION_A, &domain, &[&wildcard]).await;
    let b = issued_certificate(&local, REGION_B, &domain, &[&wildcard]).await;
    // With given certificates the probe is the execute-api host unless asked for: asked here.
    let probe_domain = (
        "regions = []",
        "regions = []\nprobe = \"domain\"".to_owned(),
    );
    w.write_with(&[
        (
            "[certificates]",
            format!("[certificates]\narns = {{ {REGION_A} = \"{narrow}\", {REGION_B} = \"{b}\" }}"),
        ),
        (probe_domain.0, probe_domain.1.clone()),
    ]);
    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(
        &run,
        1,
        "up with a certificate that does not cover the probe",
    );
    assert!(
        run.stderr
            .contains(&format!("does not cover {REGION_A}.{domain}"))
            && run.stderr.contains("health_check.probe"),
        "{}",
        run.stderr
    );
    w.write_with(&[
        (
            "[certificates]",
            format!("[certificates]\narns = {{ {REGION_A} = \"{a}\", {REGION_B} = \"{b}\" }}"),
        ),
        (probe_domain.0, probe_domain.1.clone()),
    ]);
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    expect(
        &deployer(&local, &w.config, &["plan"], &[]),
        0,
        "plan after up",
    );
    let run = deployer(
        &local,
        &w.config,
        &["--json", "down", "--yes", "--allow-data-loss"],
        &[],
    );
    expect(&run, 0, "down");
    let deleted: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        !deleted["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "Certificate"),
        "a given certificate is reported deleted: {deleted}"
    );
    for (region, arn) in [(REGION_A, &a), (REGION_B, &b)] {
        let acm = aws_sdk_acm::Client::new(&local.sdk_config(region));
        acm.describe_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the given certificate {arn} is gone: {e:?}"));
        acm.delete_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .unwrap();
    }
}

/// The A records of the public name: (set identifier, failover, region).
async fn records(local: &LocalAws, app: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let r53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let zone = r53
        .list_hosted_zones_by_name()
        .dns_name(format!("{app}.test."))
        .send()
        .await
        .unwrap()
        .hosted_zones()
        .iter()
        .find(|z| z.name() == format!("{app}.test."))
        .map(|z| z.id().to_owned())
        .unwrap();
    let sets = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let mut found: Vec<_> = sets
        .resource_record_sets()
        .iter()
        .filter(|s| s.r#type() == &RrType::A && s.name() == format!("api.{app}.test."))
        .map(|s| {
            (
                s.set_identifier().unwrap_or_default().to_owned(),
                s.failover().map(|f| f.as_str().to_owned()),
                s.region().map(|r| r.as_str().to_owned()),
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_routing_replaces_the_records() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let app = w.app.clone();
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    let ids = [
        format!("{app}-local-{REGION_A}"),
        format!("{app}-local-{REGION_B}"),
    ];
    for (from, to) in [("failover", "latency"), ("latency", "failover")] {
        w.write_with(&[("mode = \"failover\"", format!("mode = \"{to}\""))]);
        let run = deployer(&local, &w.config, &["plan"], &[]);
        expect(&run, 2, &format!("plan {from} -> {to}"));
        let old: Vec<String> = if from == "failover" {
            vec!["PRIMARY".into(), "SECONDARY".into()]
        } else {
            vec![REGION_A.into(), REGION_B.into()]
        };
        for label in &old {
            assert!(
                run.stdout.contains(&format!(
                    "- delete DnsRecord api.{app}.test/{label} in global"
                )),
                "the {from} record {label} is not planned for deletion:\n{}",
                run.stdout
            );
        }
        expect(
            &deployer(&local, &w.config, &["up", "--parallel"], &[]),
            0,
            "up",
        );
        expect(
            &deployer(&local, &w.config, &["plan"], &[]),
            0,
            "plan after up",
        );
        let want = if to == "latency" {
            vec![
                (ids[0].clone(), None, Some(REGION_A.to_owned())),
                (ids[1].clone(), None, Some(REGION_B.to_owned())),
            ]
        } else {
            vec![
                (ids[0].clone(), Some("PRIMARY".to_owned()), None),
                (ids[1].clone(), Some("SECONDARY".to_owned()), None),
            ]
        };
        assert_eq!(records(&local, &app).await, want);
    }
    cli_support::down(&local, &w.config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_health_check_is_deleted_and_failover_inverts_the_right_one() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let app = w.app.clone();
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    let r53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    // What an `up` killed inside a health check's replacement leaves: an older check, tagged with
    // the same Name (its caller reference is older too).
    let name = format!("{app}-local-{REGION_A}");
    let stale = r53
        .create_health_check()
        .caller_reference(format!("{name}-1000"))
        .health_check_config(
            HealthCheckConfig::builder()
                .r#type(HealthCheckType::Https)
                .fully_qualified_domain_name("stale.example.com")
                .resource_path("/live/todos/health")
                .port(443)
                .request_interval(30)
                .failure_threshold(3)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .health_check()
        .unwrap()
        .id()
        .to_owned();
    let tags = [
        ("Name", name.as_str()),
        ("tworegion:app", app.as_str()),
        ("tworegion:stage", "local"),
    ];
    r53.change_tags_for_resource()
        .resource_type(TagResourceType::Healthcheck)
        .resource_id(&stale)
        .set_add_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .send()
        .await
        .unwrap();

    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 2, "plan with a stale health check");
    assert!(
        run.stdout.contains(&format!(
            "- delete HealthCheck {name}/{stale} in {REGION_A}\n"
        )) && run
            .stdout
            .contains("Plan: 0 to create, 0 to update, 0 to replace, 1 to delete."),
        "{}",
        run.stdout
    );
    // Failover turns the switch off and touches no stale check.
    expect(
        &deployer(&local, &w.config, &["failover", "--to", REGION_B], &[]),
        0,
        "failover",
    );
    let stale_config = r53
        .get_health_check()
        .health_check_id(&stale)
        .send()
        .await
        .unwrap();
    assert_ne!(
        stale_config
            .health_check()
            .and_then(|h| h.health_check_config())
            .and_then(|c| c.inverted()),
        Some(true),
        "failover changed the stale check"
    );
    expect(
        &deployer(&local, &w.config, &["failback"], &[]),
        0,
        "failback",
    );
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    expect(
        &deployer(&local, &w.config, &["plan"], &[]),
        0,
        "plan after up",
    );
    assert!(
        r53.get_health_check()
            .health_check_id(&stale)
            .send()
            .await
            .is_err(),
        "the stale check {stale} still exists"
    );
    cli_support::down(&local, &w.config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_finishes_when_the_primary_key_is_already_gone() {
    // A `down` interrupted after deleting the primary's generated key: the secondary key (created
    // from the primary's value) must still be deletable.
    let local = LocalAws::from_env();
    let w = Workspace::new();
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    let apigw = aws_sdk_apigateway::Client::new(&local.sdk_config(REGION_A));
    let name = format!("{}-local-key", w.app);
    let keys = apigw.get_api_keys().name_query(&name).send().await.unwrap();
    let key = keys
        .items()
        .iter()
        .find(|k| k.name() == Some(name.as_str()))
        .unwrap();
    apigw
        .delete_api_key()
        .api_key(key.id().unwrap())
        .send()
        .await
        .unwrap();
    cli_support::down(&local, &w.config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_releases_an_adopted_table_with_its_data() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let table = format!("{}-todos", w.app);
    let cleanup = tworegion_common::test_support::TablesCleanup::new(&local);
    // The table existed before the deployer (made by hand, with an item in it).
    for region in [REGION_A, REGION_B] {
        cleanup.table(region, &table);
        tworegion_common::test_support::create_table(&local.dynamodb(region), &table, "id", None)
            .await;
    }
    local
        .dynamodb(REGION_A)
        .put_item()
        .table_name(&table)
        .item(
            "id",
            aws_sdk_dynamodb::types::AttributeValue::S("kept".into()),
        )
        .send()
        .await
        .unwrap();
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up (adopts the table)",
    );
    // Even with --allow-data-loss: the tables the deployer created (the replicator's) go, the
    // adopted one is released.
    let run = deployer(
        &local,
        &w.config,
        &["--json", "down", "--yes", "--allow-data-loss"],
        &[],
    );
    expect(&run, 0, "down --yes with an adopted table");
    let out = run.json();
    let deleted_tables: Vec<&str> = out["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "Table")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!deleted_tables.contains(&table.as_str()), "{out}");
    assert!(
        deleted_tables.iter().all(|t| t.contains("-replicator-")),
        "{out}"
    );
    let released: Vec<&str> = out["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(released, [table.as_str(), table.as_str()], "{out}");
    for region in [REGION_A, REGION_B] {
        let dynamodb = local.dynamodb(region);
        let described = dynamodb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{region}: down deleted the adopted table: {e:?}"));
        let arn = described.table().unwrap().table_arn().unwrap().to_owned();
        let tags = dynamodb
            .list_tags_of_resource()
            .resource_arn(arn)
            .send()
            .await
            .unwrap();
        assert!(
            !tags
                .tags()
                .iter()
                .any(|t| t.key().starts_with("tworegion:")),
            "{region}: the released table still carries the deployer's tags: {:?}",
            tags.tags()
        );
    }
    let item = local
        .dynamodb(REGION_A)
        .get_item()
        .table_name(&table)
        .key(
            "id",
            aws_sdk_dynamodb::types::AttributeValue::S("kept".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(item.item().is_some(), "the adopted table's data is gone");
    // Nothing of the deployment is left: a second down has nothing to do.
    let run = deployer(&local, &w.config, &["down", "--yes"], &[]);
    expect(&run, 0, "a second down");
    assert!(run.stdout.contains("Nothing to delete."), "{}", run.stdout);
}
