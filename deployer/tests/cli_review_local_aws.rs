//! The deployer binary against the local AWS in the configs the main end-to-end test does not cover:
//! certificates given by ARN (`down` must leave them and finish), a switch of the routing mode (the
//! other mode's records are planned for deletion and replaced), and a stale health check left by an
//! interrupted replacement (deleted by the next `up`, never used by DNS).

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType, RrType, Tag, TagResourceType};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, unique_name};

const EXAMPLE: &str = include_str!("../examples/local.toml");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn deployer(local: &LocalAws, config: &Path, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployer"));
    command.arg("--config").arg(config).args(args);
    command.env_remove("DEPLOYER_CONFIG");
    for (k, v) in local.child_env() {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expect(run: &Run, code: i32, what: &str) {
    assert_eq!(
        run.code, code,
        "{what}: exit {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
}

/// The example with unique names, a small artifact, and each `(line start, replacement)` applied.
struct Workspace {
    dir: PathBuf,
    config: PathBuf,
    app: String,
}

impl Workspace {
    fn new() -> Workspace {
        // `r-<pid>-<counter>-<millis>`: the counter keeps tests started in one millisecond apart.
        let n = unique_name("r");
        let parts: Vec<&str> = n.split('-').collect();
        let app = format!("r{}x{}", parts[2], &parts[3][parts[3].len() - 6..]);
        let dir = std::env::temp_dir().join(unique_name("deployer-review"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut zip = vec![0x50, 0x4b, 0x05, 0x06];
        zip.extend([0u8; 18]);
        std::fs::write(dir.join("lambda.zip"), zip).unwrap();
        let config = dir.join("tworegion.toml");
        let w = Workspace { dir, config, app };
        w.write(&[]);
        w
    }

    fn write(&self, edits: &[(&str, String)]) {
        let app = &self.app;
        let mut lines: Vec<(&str, String)> = vec![
            ("app = ", format!("app = \"{app}\"")),
            (
                "domain_name = ",
                format!("domain_name = \"api.{app}.test\""),
            ),
            ("hosted_zone = ", format!("hosted_zone = \"{app}.test\"")),
            ("name = \"todos-local\"", format!("name = \"{app}-todos\"")),
            ("artifact = ", "artifact = \"lambda.zip\"".to_owned()),
        ];
        lines.extend(edits.iter().cloned());
        let text: Vec<String> = EXAMPLE
            .lines()
            .map(|l| {
                lines
                    .iter()
                    .find(|(start, _)| l.starts_with(start))
                    .map(|(_, line)| line.clone())
                    .unwrap_or_else(|| l.to_owned())
            })
            .collect();
        std::fs::write(&self.config, text.join("\n")).unwrap();
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An issued ACM certificate for `domain` in `region`, made outside the deployer.
async fn issued_certificate(local: &LocalAws, region: &str, domain: &str) -> String {
    let acm = aws_sdk_acm::Client::new(&local.sdk_config(region));
    let arn = acm
        .request_certificate()
        .domain_name(domain)
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
    let a = issued_certificate(&local, REGION_A, &domain).await;
    let b = issued_certificate(&local, REGION_B, &domain).await;
    w.write(&[(
        "[certificates]",
        format!("[certificates]\narns = {{ {REGION_A} = \"{a}\", {REGION_B} = \"{b}\" }}"),
    )]);
    expect(&deployer(&local, &w.config, &["up"]), 0, "up");
    expect(&deployer(&local, &w.config, &["plan"]), 0, "plan after up");
    let run = deployer(&local, &w.config, &["--json", "down", "--yes"]);
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
    expect(&deployer(&local, &w.config, &["up"]), 0, "up");
    let ids = [
        format!("{app}-local-{REGION_A}"),
        format!("{app}-local-{REGION_B}"),
    ];
    for (from, to) in [("failover", "latency"), ("latency", "failover")] {
        w.write(&[("mode = \"failover\"", format!("mode = \"{to}\""))]);
        let run = deployer(&local, &w.config, &["plan"]);
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
        expect(&deployer(&local, &w.config, &["up"]), 0, "up");
        expect(&deployer(&local, &w.config, &["plan"]), 0, "plan after up");
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
    expect(&deployer(&local, &w.config, &["down", "--yes"]), 0, "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_health_check_is_deleted_and_failover_inverts_the_right_one() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let app = w.app.clone();
    expect(&deployer(&local, &w.config, &["up"]), 0, "up");
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

    let run = deployer(&local, &w.config, &["plan"]);
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
    // Failover inverts the check DNS uses, not the stale one.
    expect(
        &deployer(&local, &w.config, &["failover", "--to", REGION_B]),
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
        "failover inverted the stale check"
    );
    expect(&deployer(&local, &w.config, &["failback"]), 0, "failback");
    expect(&deployer(&local, &w.config, &["up"]), 0, "up");
    expect(&deployer(&local, &w.config, &["plan"]), 0, "plan after up");
    assert!(
        r53.get_health_check()
            .health_check_id(&stale)
            .send()
            .await
            .is_err(),
        "the stale check {stale} still exists"
    );
    expect(&deployer(&local, &w.config, &["down", "--yes"]), 0, "down");
}
