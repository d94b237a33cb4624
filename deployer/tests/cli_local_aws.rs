//! The deployer binary end to end against the local AWS, with deployer/examples/local.toml (only the
//! names made unique for this run, and a small artifact): `plan`, `up`, a second `up` and `plan` that
//! change nothing, one changed setting planned and applied exactly, `status`, `failover`/`failback`,
//! and `down --yes` removing everything of the app and stage and nothing else. Every resource is
//! checked through the SDK, not through the deployer's own observations.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::process::Command;

use cli_support::{EXAMPLE, Workspace, deployer, edit, expect};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

const AWS_EXAMPLE: &str = include_str!("../examples/aws.toml");

async fn health_checks(
    r53: &aws_sdk_route53::Client,
    app: &str,
) -> Vec<(String, String, aws_sdk_route53::types::HealthCheckConfig)> {
    let mut found = Vec::new();
    let list = r53.list_health_checks().send().await.unwrap();
    for check in list.health_checks() {
        let tags = r53
            .list_tags_for_resource()
            .resource_type(aws_sdk_route53::types::TagResourceType::Healthcheck)
            .resource_id(check.id())
            .send()
            .await
            .unwrap();
        let name = tags
            .resource_tag_set()
            .map(|s| {
                s.tags()
                    .iter()
                    .find(|t| t.key() == Some("Name"))
                    .and_then(|t| t.value())
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default();
        if name.starts_with(&format!("{app}-local-")) {
            found.push((
                name,
                check.id().to_owned(),
                check.health_check_config().unwrap().clone(),
            ));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

async fn zone_id(r53: &aws_sdk_route53::Client, zone: &str) -> Option<String> {
    let out = r53
        .list_hosted_zones_by_name()
        .dns_name(format!("{zone}."))
        .send()
        .await
        .unwrap();
    out.hosted_zones()
        .iter()
        .find(|z| z.name() == format!("{zone}."))
        .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_plan_change_status_failover_down() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let app = w.app.clone();
    let table = format!("{app}-todos");
    let apigw = |r: &str| aws_sdk_apigateway::Client::new(&local.sdk_config(r));
    let r53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));

    // Unrelated resources made beforehand: a table of another app, an untagged REST API.
    let unrelated_table = format!("{app}-unrelated");
    tworegion_common::test_support::create_table(
        &local.dynamodb(REGION_A),
        &unrelated_table,
        "id",
        None,
    )
    .await;
    let unrelated_api = apigw(REGION_A)
        .create_rest_api()
        .name(format!("{app}-local-unrelated"))
        .send()
        .await
        .unwrap();

    // A fresh plan shows creations and exits 2.
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 2, "first plan");
    assert!(run.stdout.contains("create"), "{}", run.stdout);

    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(&run, 0, "up");
    assert!(
        run.stdout.contains(&format!("https://api.{app}.test/")),
        "{}",
        run.stdout
    );

    // --- Every resource, through the SDK ---
    // Tables with streams and TTL.
    for region in [REGION_A, REGION_B] {
        let ddb = local.dynamodb(region);
        let t = ddb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .unwrap();
        let spec = t.table().unwrap().stream_specification().unwrap();
        assert!(spec.stream_enabled(), "{region}");
        assert_eq!(
            spec.stream_view_type().unwrap().as_str(),
            "NEW_AND_OLD_IMAGES"
        );
        let ttl = ddb
            .describe_time_to_live()
            .table_name(&table)
            .send()
            .await
            .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        assert_eq!(ttl.attribute_name(), Some("rep_expires"), "{region}");
    }
    // The function's log group, with a retention.
    for region in [REGION_A, REGION_B] {
        let logs = aws_sdk_cloudwatchlogs::Client::new(&local.sdk_config(region));
        let name = format!("/aws/lambda/{app}-local-api");
        let groups = logs
            .describe_log_groups()
            .log_group_name_prefix(&name)
            .send()
            .await
            .unwrap();
        let group = groups
            .log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(&name));
        assert_eq!(
            group.and_then(|g| g.retention_in_days()),
            Some(30),
            "{region}"
        );
    }
    // The API key: one value in both regions, attached to each region's usage plan.
    let mut values = Vec::new();
    for region in [REGION_A, REGION_B] {
        let c = apigw(region);
        let keys = c
            .get_api_keys()
            .name_query(format!("{app}-local-key"))
            .include_values(true)
            .send()
            .await
            .unwrap();
        let keys: Vec<_> = keys
            .items()
            .iter()
            .filter(|k| k.name() == Some(&format!("{app}-local-key")))
            .collect();
        assert_eq!(keys.len(), 1, "{region}");
        values.push(keys[0].value().unwrap().to_owned());
        let plans = c.get_usage_plans().send().await.unwrap();
        let plan = plans
            .items()
            .iter()
            .find(|p| p.name() == Some(&format!("{app}-local-plan")))
            .unwrap();
        let members = c
            .get_usage_plan_keys()
            .usage_plan_id(plan.id().unwrap())
            .send()
            .await
            .unwrap();
        assert!(
            members.items().iter().any(|m| m.id() == keys[0].id()),
            "{region}: the key is not in the usage plan"
        );
    }
    assert_eq!(values[0], values[1], "the API key differs between regions");
    assert!(values[0].len() >= 20);
    // Regional custom domains with their certificate, base path ''.
    let domain = format!("api.{app}.test");
    for region in [REGION_A, REGION_B] {
        let c = apigw(region);
        let d = c
            .get_domain_name()
            .domain_name(&domain)
            .send()
            .await
            .unwrap();
        let cert = d.regional_certificate_arn().unwrap();
        assert!(cert.contains(region), "{region}: {cert}");
        let acm = aws_sdk_acm::Client::new(&local.sdk_config(region));
        let described = acm
            .describe_certificate()
            .certificate_arn(cert)
            .send()
            .await
            .unwrap();
        assert_eq!(
            described.certificate().unwrap().status().unwrap().as_str(),
            "ISSUED"
        );
        let mappings = c
            .get_base_path_mappings()
            .domain_name(&domain)
            .send()
            .await
            .unwrap();
        assert_eq!(mappings.items().len(), 1, "{region}");
        assert_eq!(mappings.items()[0].base_path(), Some("(none)"));
        assert_eq!(mappings.items()[0].stage(), Some("live"));
    }
    // Health checks: per region the endpoint's (path, interval, threshold) and its switch.
    let all_checks = health_checks(&r53, &app).await;
    assert_eq!(all_checks.len(), 4, "{all_checks:?}");
    let (switches, checks): (Vec<_>, Vec<_>) = all_checks
        .into_iter()
        .partition(|(name, _, _)| name.ends_with("-switch"));
    for (name, _, config) in &switches {
        assert_eq!(config.r#type().as_str(), "CALCULATED", "{name}");
        assert_eq!(config.health_threshold(), Some(1), "{name}");
        let endpoint = checks
            .iter()
            .find(|c| format!("{}-switch", c.0) == *name)
            .unwrap();
        assert_eq!(
            config.child_health_checks(),
            std::slice::from_ref(&endpoint.1),
            "{name}"
        );
    }
    for (name, _, config) in &checks {
        // What users call: the region's own name under the custom domain, with SNI.
        let region = if name.ends_with(REGION_A) {
            REGION_A
        } else {
            REGION_B
        };
        assert_eq!(
            config.fully_qualified_domain_name(),
            Some(format!("{region}.{domain}").as_str())
        );
        assert_eq!(config.resource_path(), Some("/todos/health"));
        assert_eq!(config.request_interval(), Some(10));
        assert_eq!(config.failure_threshold(), Some(3));
        assert_eq!(config.r#type().as_str(), "HTTPS");
        assert_eq!(config.enable_sni(), Some(true));
    }
    // Exactly one PRIMARY and one SECONDARY record, each with its region's switch.
    let zone = zone_id(&r53, &format!("{app}.test")).await.unwrap();
    let sets = r53
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .unwrap();
    let records: Vec<_> = sets
        .resource_record_sets()
        .iter()
        .filter(|s| s.name() == format!("{domain}.") && s.r#type().as_str() == "A")
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    for (role, region) in [("PRIMARY", REGION_A), ("SECONDARY", REGION_B)] {
        let record = records
            .iter()
            .find(|r| r.failover().map(|f| f.as_str()) == Some(role))
            .unwrap();
        let check = switches
            .iter()
            .find(|c| c.0.ends_with(&format!("{region}-switch")))
            .unwrap();
        assert_eq!(record.health_check_id(), Some(check.1.as_str()), "{role}");
        assert!(record.alias_target().is_some(), "{role}");
    }
    // Task definitions with the image and the environment of each direction.
    for (source, target) in [(REGION_A, REGION_B), (REGION_B, REGION_A)] {
        let ecs = aws_sdk_ecs::Client::new(&local.sdk_config(target));
        let family = format!("{app}-local-replicator-{source}-to-{target}");
        let td = ecs
            .describe_task_definition()
            .task_definition(&family)
            .send()
            .await
            .unwrap();
        let container = &td.task_definition().unwrap().container_definitions()[0];
        assert_eq!(container.image(), Some("tworegion/replicator:local"));
        let env: std::collections::BTreeMap<_, _> = container
            .environment()
            .iter()
            .map(|kv| {
                (
                    kv.name().unwrap().to_owned(),
                    kv.value().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(env["REPLICATOR_SOURCE_REGION"], source);
        assert_eq!(env["REPLICATOR_TARGET_REGION"], target);
        assert_eq!(env["REPLICATOR_SOURCE_TABLE"], table);
        assert_eq!(env["REPLICATOR_MODE"], "lww");
        let services = ecs
            .describe_services()
            .cluster(format!("{app}-local-replicator"))
            .services(&family)
            .send()
            .await
            .unwrap();
        assert_eq!(services.services().len(), 1, "{family}");
        assert_eq!(services.services()[0].desired_count(), 1);
        // Its four alarms, in its region, on its path.
        let cw = aws_sdk_cloudwatch::Client::new(&local.sdk_config(target));
        let alarms = cw
            .describe_alarms()
            .alarm_name_prefix(&family)
            .send()
            .await
            .unwrap();
        let names: Vec<&str> = alarms
            .metric_alarms()
            .iter()
            .filter_map(|a| a.alarm_name())
            .collect();
        assert_eq!(
            names,
            ["dead-letters", "lag", "stalled", "stopped"].map(|s| format!("{family}-{s}")),
            "{family}"
        );
        for alarm in alarms.metric_alarms() {
            assert!(
                alarm.dimensions().iter().any(|d| d.name() == Some("Path")
                    && d.value() == Some(&format!("{source}/{table} > {target}/{table}"))),
                "{alarm:?}"
            );
        }
    }

    // --- A second up and plan change nothing ---
    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(&run, 0, "second up");
    assert!(run.stdout.contains("Nothing to change"), "{}", run.stdout);
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 0, "plan after up");
    let run = deployer(&local, &w.config, &["--json", "plan"], &[]);
    expect(&run, 0, "json plan after up");
    assert_eq!(run.json()["changes"], serde_json::json!([]));

    // --- One changed setting: exactly that change, then applied ---
    w.write(&edit(
        &w.text(),
        "failure_threshold = ",
        "failure_threshold = 5",
    ));
    let run = deployer(&local, &w.config, &["--json", "plan"], &[]);
    expect(&run, 2, "plan with a changed threshold");
    let changes = run.json()["changes"].as_array().unwrap().clone();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for c in &changes {
        assert_eq!(c["kind"], "HealthCheck");
        assert_eq!(c["action"], "update");
        assert_eq!(
            c["changes"],
            serde_json::json!([{ "field": "failure_threshold", "from": 3, "to": 5 }])
        );
    }
    assert_eq!(run.json()["warnings"], serde_json::json!([]));
    // Out of sync while serving healthily: `status` exits 4.
    let run = deployer(&local, &w.config, &["--json", "status"], &[]);
    expect(&run, 4, "status with a change pending");
    assert_eq!(run.json()["pending_changes"], 2);
    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(&run, 0, "up with a changed threshold");
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 0, "plan after applying the threshold");
    // A quota spent in under a month at the rate limit is warned about (and not applied here).
    let applied = edit(&w.text(), "failure_threshold = ", "failure_threshold = 5");
    w.write(&edit(&applied, "quota_limit = ", "quota_limit = 1000000"));
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 2, "plan with a quota");
    assert!(
        run.stdout
            .contains("WARNING: usage_plan: at the rate limit"),
        "{}",
        run.stdout
    );
    w.write(&applied);
    for (name, _, config) in health_checks(&r53, &app).await {
        if !name.ends_with("-switch") {
            assert_eq!(config.failure_threshold(), Some(5), "{name}");
        }
    }

    // --- status, failover, failback ---
    let run = deployer(&local, &w.config, &["--json", "status"], &[]);
    expect(&run, 0, "status");
    let status = run.json();
    assert_eq!(status["pending_changes"], 0);
    assert_eq!(status["serving"], serde_json::json!([REGION_A]));
    assert_eq!(
        status["regions"][REGION_B]["replicators"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let run = deployer(&local, &w.config, &["failover", "--to", "eu-west-1"], &[]);
    expect(&run, 1, "failover to a region not in the config");
    assert!(run.stderr.contains("--to must be one of"), "{}", run.stderr);
    let run = deployer(&local, &w.config, &["failover", "--to", REGION_B], &[]);
    expect(&run, 0, "failover");
    let status = deployer(&local, &w.config, &["--json", "status"], &[]).json();
    assert_eq!(status["serving"], serde_json::json!([REGION_B]));
    // The switch is off; the endpoint's real health is shown beside it, untouched.
    let a = &status["regions"][REGION_A]["health"];
    assert_eq!(a["switch_on"], false, "{a}");
    assert_eq!(a["inverted"], false, "{a}");
    assert_eq!(a["endpoint_healthy"], true, "{a}");
    assert_eq!(a["healthy"], false, "{a}");
    assert_eq!(status["regions"][REGION_B]["health"]["switch_on"], true);
    // up leaves an operational failover alone.
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 0, "plan during a failover");
    let run = deployer(&local, &w.config, &["failback"], &[]);
    expect(&run, 0, "failback");
    let status = deployer(&local, &w.config, &["--json", "status"], &[]).json();
    assert_eq!(status["serving"], serde_json::json!([REGION_A]));

    // An `up` of this version interrupted before its DNS step leaves the PRIMARY record on the
    // endpoint check: a switch would then move nothing, so `failover` refuses and changes nothing.
    let endpoint_a = checks
        .iter()
        .find(|c| c.0.ends_with(REGION_A))
        .unwrap()
        .1
        .clone();
    let sets = r53
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .unwrap();
    let mut primary = sets
        .resource_record_sets()
        .iter()
        .find(|s| {
            s.name() == format!("{domain}.") && s.failover().map(|f| f.as_str()) == Some("PRIMARY")
        })
        .unwrap()
        .clone();
    primary.health_check_id = Some(endpoint_a);
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            aws_sdk_route53::types::ChangeBatch::builder()
                .changes(
                    aws_sdk_route53::types::Change::builder()
                        .action(aws_sdk_route53::types::ChangeAction::Upsert)
                        .resource_record_set(primary)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let run = deployer(&local, &w.config, &["failover", "--to", REGION_B], &[]);
    expect(
        &run,
        1,
        "failover while a record is still on its endpoint check",
    );
    assert!(
        run.stderr
            .contains("does not use its health check switch yet")
            && run.stderr.contains("deployer up"),
        "{}",
        run.stderr
    );
    let status = deployer(&local, &w.config, &["--json", "status"], &[]).json();
    assert_eq!(status["regions"][REGION_A]["health"]["switch_on"], true);
    assert_eq!(
        status["regions"][REGION_A]["health"]["switch_in_dns"],
        false
    );
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up puts the record on the switch",
    );
    let status = deployer(&local, &w.config, &["--json", "status"], &[]).json();
    assert_eq!(status["regions"][REGION_A]["health"]["switch_in_dns"], true);

    // --- a renamed table: plan marks the deletion, up refuses it, the table survives ---
    let current = std::fs::read_to_string(&w.config).unwrap();
    w.write(&edit(
        &current,
        &format!("name = \"{table}\""),
        &format!("name = \"{table}-renamed\""),
    ));
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 2, "plan with a renamed table");
    assert!(
        run.stdout.contains(&format!(
            "- delete Table {table} in {REGION_A}\n    !! DATA LOSS"
        )),
        "{}",
        run.stdout
    );
    let run = deployer(&local, &w.config, &["--json", "plan"], &[]);
    assert!(
        run.json()["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains(&format!("DATA LOSS: delete Table/{REGION_A}/{table}"))),
        "{}",
        run.stdout
    );
    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(&run, 1, "up with a renamed table");
    assert!(
        run.stderr.contains(&format!("Table {table} in {REGION_A}"))
            && run.stderr.contains("--allow-data-loss")
            && run.stderr.contains("put the old name back"),
        "{}",
        run.stderr
    );
    for region in [REGION_A, REGION_B] {
        let dynamodb = local.dynamodb(region);
        assert!(
            dynamodb
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .is_ok(),
            "{region}: up deleted the renamed table"
        );
        assert!(
            dynamodb
                .describe_table()
                .table_name(format!("{table}-renamed"))
                .send()
                .await
                .is_err(),
            "{region}: up changed something before refusing"
        );
    }
    w.write(&current);
    expect(
        &deployer(&local, &w.config, &["plan"], &[]),
        0,
        "plan with the old name back",
    );

    // --- down ---
    let run = deployer(&local, &w.config, &["down"], &[]);
    expect(&run, 1, "down without --yes");
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    let run = deployer(&local, &w.config, &["down", "--yes"], &[]);
    expect(&run, 1, "down --yes without --allow-data-loss");
    assert!(
        run.stderr.contains(&format!("Table {table} in {REGION_A}"))
            && run.stderr.contains("--allow-data-loss")
            && run.stderr.contains("--keep-data"),
        "{}",
        run.stderr
    );
    expect(
        &deployer(&local, &w.config, &["plan"], &[]),
        0,
        "plan after a refused down",
    );
    let run = deployer(
        &local,
        &w.config,
        &["down", "--yes", "--allow-data-loss"],
        &[],
    );
    expect(&run, 0, "down --yes --allow-data-loss");
    for region in [REGION_A, REGION_B] {
        let gone = local
            .dynamodb(region)
            .describe_table()
            .table_name(&table)
            .send()
            .await;
        assert!(gone.is_err(), "{region}: the table is still there");
        let apis = apigw(region)
            .get_rest_apis()
            .limit(500)
            .send()
            .await
            .unwrap();
        assert!(
            !apis
                .items()
                .iter()
                .any(|a| a.name() == Some(&format!("{app}-local"))),
            "{region}: the REST API is still there"
        );
        let domains = apigw(region).get_domain_names().send().await.unwrap();
        assert!(
            !domains
                .items()
                .iter()
                .any(|d| d.domain_name() == Some(domain.as_str()))
        );
    }
    assert!(health_checks(&r53, &app).await.is_empty());
    for region in [REGION_A, REGION_B] {
        let cw = aws_sdk_cloudwatch::Client::new(&local.sdk_config(region));
        let left = cw
            .describe_alarms()
            .alarm_name_prefix(format!("{app}-local-"))
            .send()
            .await
            .unwrap();
        assert!(left.metric_alarms().is_empty(), "{region}: {left:?}");
    }
    assert!(
        zone_id(&r53, &format!("{app}.test")).await.is_none(),
        "the zone is still there"
    );
    // The unrelated resources are untouched.
    local
        .dynamodb(REGION_A)
        .describe_table()
        .table_name(&unrelated_table)
        .send()
        .await
        .unwrap();
    apigw(REGION_A)
        .get_rest_api()
        .rest_api_id(unrelated_api.id().unwrap())
        .send()
        .await
        .unwrap();
    // And a plan now wants everything again.
    let run = deployer(&local, &w.config, &["plan"], &[]);
    expect(&run, 2, "plan after down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_up_is_finished_by_the_next() {
    use std::io::{BufRead, BufReader};
    let local = LocalAws::from_env();
    // Early (roles, functions), middle (certificates), late (ECS). Never between a custom domain
    // and its base path mapping: the local AWS (moto 5.2.5) answers GetBasePathMappings with HTTP
    // 500 for a domain that has none, where AWS answers with an empty list.
    for kill_after in [5, 19, 33] {
        let w = Workspace::new();
        let mut command = Command::new(env!("CARGO_BIN_EXE_deployer"));
        command
            .arg("--config")
            .arg(&w.config)
            .arg("up")
            .arg("--parallel")
            .env_remove("DEPLOYER_CONFIG")
            .stdout(std::process::Stdio::piped());
        for (k, v) in local.child_env() {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // kill -9 while the next change is in flight.
        let mut seen = Vec::new();
        while seen.len() < kill_after {
            match lines.next() {
                Some(Ok(line)) => seen.push(line),
                _ => break,
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            seen.len(),
            kill_after,
            "up ended before it was interrupted: {seen:?}"
        );

        let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
        expect(&run, 0, "up after an interrupted up");
        let run = deployer(&local, &w.config, &["plan"], &[]);
        expect(&run, 0, "plan after the resumed up");
        let run = deployer(
            &local,
            &w.config,
            &["down", "--yes", "--allow-data-loss"],
            &[],
        );
        expect(&run, 0, "down");
        let run = deployer(&local, &w.config, &["--json", "status"], &[]);
        // Nothing serves any more: 5 (docs/deployer.md, exit codes).
        expect(&run, 5, "status after down");
        let status = run.json();
        for region in [REGION_A, REGION_B] {
            assert_eq!(
                status["regions"][region]["resources_present"], 0,
                "{status}"
            );
        }
    }
}

#[test]
fn invalid_configs_fail_naming_the_field() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (format!("{}\ncolour = \"blue\"", w.text()), "colour", vec![]),
        (
            edit(
                &w.text(),
                "primary_region = ",
                "primary_region = \"us-east\"",
            ),
            "primary_region",
            vec![],
        ),
        (
            edit(&w.text(), "failure_threshold = ", "failure_threshold = 11"),
            "health_check.failure_threshold",
            vec![],
        ),
        (
            edit(
                &w.text(),
                "desired_count = ",
                "desired_count = 1\nstart_timeout_seconds = 1",
            ),
            "replicator.start_timeout_seconds",
            vec![],
        ),
        (
            edit(&w.text(), "generate = true", "from_env = \"SHORT_KEY\""),
            "api_key.from_env",
            vec![("SHORT_KEY", "only-19-characters!")],
        ),
    ];
    for (text, field, env) in cases {
        w.write(&text);
        let run = deployer(&local, &w.config, &["plan"], &env);
        expect(&run, 1, field);
        assert!(run.stderr.contains(field), "{field}: {}", run.stderr);
    }
    // Bad flags are errors (1), never "changes" (2); help is not an error.
    let run = deployer(&local, &w.config, &["plan", "--colour"], &[]);
    expect(&run, 1, "unknown flag");
    let run = deployer(&local, &w.config, &["--help"], &[]);
    expect(&run, 0, "--help");
    let run = deployer(&local, &w.dir.join("missing.toml"), &["plan"], &[]);
    expect(&run, 1, "missing config");
    assert!(run.stderr.contains("--config"), "{}", run.stderr);
}

#[test]
fn the_examples_are_valid_as_they_are() {
    for (name, text) in [("local.toml", EXAMPLE), ("aws.toml", AWS_EXAMPLE)] {
        deployer::config::ConfigFile::parse(text)
            .and_then(|f| {
                f.validate(&|var| {
                    (var == "TODOS_API_KEY")
                        .then(|| "an-api-key-of-at-least-20-characters".to_owned())
                })
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
