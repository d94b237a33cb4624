//! `up` region by region against the local AWS: the region not serving goes first, each region is
//! checked before the next, and a region that fails its check is rolled back to its previous Lambda
//! version (by moving its alias) while the other region is not touched. And `up` waits for the
//! replicator's ECS tasks to run.
//!
//! The local AWS runs no Lambda code and reports every health check healthy, so two gates are used:
//! the CLI's own (whose smoke request cannot reach an execute-api host here, so it fails as a broken
//! build would), and, through the library, a gate that fails exactly when the region's alias names
//! the bad build.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::sync::Mutex;

use cli_support::{Workspace, deployer, expect};
use deployer::config::ConfigFile;
use deployer::engine::{Clients, DataPolicy, Engine};
use deployer::resources::{alias, function};
use deployer::rollout::{Gate, Rollout, Target};
use futures::future::BoxFuture;
use tworegion_common::aws::AwsOptions;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

/// A valid empty zip with `comment`: a distinct artifact per build.
fn build(comment: &str) -> Vec<u8> {
    let mut zip = vec![0x50, 0x4b, 0x05, 0x06];
    zip.extend([0u8; 16]);
    zip.extend(u16::try_from(comment.len()).unwrap().to_le_bytes());
    zip.extend(comment.as_bytes());
    zip
}

/// `(alias version, the code it runs, the function's $LATEST code)` in `region`.
async fn lambda_state(
    local: &LocalAws,
    region: &str,
    function_name: &str,
) -> (String, String, String) {
    let lambda = aws_sdk_lambda::Client::new(&local.sdk_config(region));
    let live = alias::observe(&lambda, region, function_name, "live")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{region}: no alias"));
    let latest = function::observe(&lambda, region, function_name)
        .await
        .unwrap()
        .unwrap();
    (
        alias::version(Some(&live)).unwrap(),
        live.props["code_sha256"].as_str().unwrap().to_owned(),
        latest.props["code_sha256"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_failing_its_check_is_rolled_back_and_the_other_is_not_touched() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let function_name = format!("{}-local-api", w.app);
    let good = build("good");
    let bad = build("bad");
    std::fs::write(w.dir.join("lambda.zip"), &good).unwrap();
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up",
    );
    let (a_version, a_code, _) = lambda_state(&local, REGION_A, &function_name).await;
    let (b_version, b_code, _) = lambda_state(&local, REGION_B, &function_name).await;
    assert_eq!(a_code, function::code_sha256(&good));
    assert_eq!(b_code, a_code);

    // A new build: the primary serves (the local AWS reports it healthy), so the secondary goes
    // first, fails its smoke request, and is rolled back.
    std::fs::write(w.dir.join("lambda.zip"), &bad).unwrap();
    let run = deployer(&local, &w.config, &["up", "--rollout-timeout", "10"], &[]);
    expect(&run, 1, "up with a build that fails its check");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!("rolling out to {REGION_B} (1 of 2)")),
        "{said}"
    );
    assert!(
        !said.contains(&format!("rolling out to {REGION_A}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{REGION_B} failed its check")),
        "{said}"
    );
    assert!(
        said.contains(&format!("is on version {b_version} again")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{REGION_A} was not changed")),
        "{said}"
    );
    let (b_after, b_code_after, b_latest) = lambda_state(&local, REGION_B, &function_name).await;
    assert_eq!(
        b_after, b_version,
        "{REGION_B}'s alias is back on the previous version"
    );
    assert_eq!(b_code_after, function::code_sha256(&good));
    assert_eq!(
        b_latest,
        function::code_sha256(&bad),
        "the new build was uploaded there"
    );
    let (a_after, a_code_after, a_latest) = lambda_state(&local, REGION_A, &function_name).await;
    assert_eq!(
        (a_after, a_code_after, a_latest),
        (a_version, a_code.clone(), a_code),
        "{REGION_A} was not touched"
    );

    // `status` shows what each region invokes, and that the secondary holds a build it does not run.
    let status = deployer(&local, &w.config, &["--json", "status"], &[]).json();
    assert_eq!(
        status["regions"][REGION_B]["live_version"],
        b_version.as_str(),
        "{status}"
    );
    assert_eq!(
        status["regions"][REGION_B]["undeployed_build"], true,
        "{status}"
    );
    assert_eq!(
        status["regions"][REGION_A]["undeployed_build"], false,
        "{status}"
    );
    let text = deployer(&local, &w.config, &["status"], &[]).stdout;
    assert!(text.contains("$LATEST holds another build"), "{text}");

    // `--parallel` is today's behaviour: both regions, unchecked.
    expect(
        &deployer(&local, &w.config, &["up", "--parallel"], &[]),
        0,
        "up --parallel",
    );
    for region in [REGION_A, REGION_B] {
        let (_, code, _) = lambda_state(&local, region, &function_name).await;
        assert_eq!(code, function::code_sha256(&bad), "{region}");
    }
    let run = deployer(
        &local,
        &w.config,
        &["up", "--parallel", "--region", REGION_A],
        &[],
    );
    expect(&run, 1, "--parallel with --region");
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
    cli_support::down(&local, &w.config);
}

/// Fails a region whose alias runs `bad`; records the regions it checked, in order.
struct BadBuildGate {
    local: LocalAws,
    function_name: String,
    bad: String,
    checked: Mutex<Vec<String>>,
}

impl Gate for BadBuildGate {
    fn check<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.checked.lock().unwrap().push(target.region.clone());
            assert!(
                target.check.is_some(),
                "the gate is given the region's endpoint check"
            );
            assert!(
                target
                    .base_url
                    .as_deref()
                    .is_some_and(|u| u.contains(&target.region)),
                "the gate is given the regional endpoint: {:?}",
                target.base_url
            );
            let (_, code, _) = lambda_state(&self.local, &target.region, &self.function_name).await;
            if code == self.bad {
                Err("its requests fail (500)".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_build_rolls_out_region_by_region_and_a_bad_one_stops_in_the_first() {
    let local = LocalAws::from_env();
    let w = Workspace::new();
    let function_name = format!("{}-local-api", w.app);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let d = ConfigFile::parse(&text)
        .unwrap()
        .validate(&|k| std::env::var(k).ok())
        .unwrap();
    let options = AwsOptions {
        profile: None,
        endpoint_url: Some(local.endpoint().to_owned()),
        placeholder_credentials: true,
    };
    let engine = |artifact: &[u8]| {
        let d = d.clone();
        let artifact = artifact.to_vec();
        let options = options.clone();
        async move {
            let clients = Clients::load(&d.regions, &options).await.unwrap();
            Engine::new(d, clients, Some(artifact))
        }
    };
    let (v1, v2, bad) = (build("one"), build("two"), build("broken"));
    let gate = BadBuildGate {
        local: local.clone(),
        function_name: function_name.clone(),
        bad: function::code_sha256(&bad),
        checked: Mutex::new(Vec::new()),
    };
    let up = |artifact: Vec<u8>, rollout: Rollout<'static>| {
        let engine = engine(&artifact);
        async move {
            let mut progress = Vec::new();
            let result = engine
                .await
                .up(DataPolicy::default(), None, rollout, &mut progress)
                .await;
            (result, String::from_utf8_lossy(&progress).into_owned())
        }
    };
    // Leaked so that the rollouts can borrow it for 'static (one per test run).
    let gate: &'static BadBuildGate = Box::leak(Box::new(gate));

    let (first, said) = up(v1.clone(), Rollout::RegionByRegion(gate)).await;
    first.unwrap_or_else(|e| panic!("first up: {e}\n{said}"));
    assert_eq!(
        *gate.checked.lock().unwrap(),
        [REGION_A, REGION_B],
        "a first deployment: the primary first, each region checked once it changed"
    );
    gate.checked.lock().unwrap().clear();
    let (again, said) = up(v1.clone(), Rollout::RegionByRegion(gate)).await;
    assert!(again.unwrap().applied.is_empty(), "{said}");
    assert!(
        gate.checked.lock().unwrap().is_empty(),
        "nothing changed, nothing checked"
    );

    // Deployed: the primary serves (the local AWS reports every check healthy), so the secondary
    // goes first from now on.
    let (second, said) = up(v2.clone(), Rollout::RegionByRegion(gate)).await;
    let report = second.unwrap_or_else(|e| panic!("second up: {e}\n{said}"));
    assert_eq!(
        *gate.checked.lock().unwrap(),
        [REGION_B, REGION_A],
        "{said}"
    );
    assert!(
        report.endpoints.regional.values().all(Option::is_some),
        "{report:?}"
    );
    for region in [REGION_A, REGION_B] {
        let (_, code, _) = lambda_state(&local, region, &function_name).await;
        assert_eq!(code, function::code_sha256(&v2), "{region}");
    }
    let (b_good, _, _) = lambda_state(&local, REGION_B, &function_name).await;
    let (a_good, _, _) = lambda_state(&local, REGION_A, &function_name).await;
    let lambda_a = aws_sdk_lambda::Client::new(&local.sdk_config(REGION_A));
    let lambda_b = aws_sdk_lambda::Client::new(&local.sdk_config(REGION_B));

    gate.checked.lock().unwrap().clear();
    let (third, said) = up(bad.clone(), Rollout::RegionByRegion(gate)).await;
    let e = third
        .err()
        .unwrap_or_else(|| panic!("a bad build passed\n{said}"));
    assert_eq!(*gate.checked.lock().unwrap(), [REGION_B]);
    assert!(e.to_string().contains("its requests fail"), "{e}");
    let (b_now, b_code, _) = lambda_state(&local, REGION_B, &function_name).await;
    assert_eq!((b_now, b_code), (b_good, function::code_sha256(&v2)));
    let (a_now, a_code, a_latest) = lambda_state(&local, REGION_A, &function_name).await;
    assert_eq!(
        (a_now, a_code.as_str(), a_latest.as_str()),
        (
            a_good,
            function::code_sha256(&v2).as_str(),
            function::code_sha256(&v2).as_str()
        )
    );

    // A region that runs other code than the other one is checked even when this `up` changes
    // nothing there (an earlier `up` stopped after moving its alias, before its check): here the
    // primary's alias is put back on the first build by hand.
    let first_version = {
        let versions = lambda_a
            .list_versions_by_function()
            .function_name(&function_name)
            .send()
            .await
            .unwrap();
        versions
            .versions()
            .iter()
            .find(|v| v.code_sha256() == Some(function::code_sha256(&v1).as_str()))
            .and_then(|v| v.version())
            .unwrap()
            .to_owned()
    };
    alias::point(
        &lambda_a,
        &function_name,
        "live",
        &first_version,
        true,
        None,
        "test",
    )
    .await
    .unwrap();
    gate.checked.lock().unwrap().clear();
    let (fourth, said) = up(v2.clone(), Rollout::RegionByRegion(gate)).await;
    fourth.unwrap_or_else(|e| panic!("fourth up: {e}\n{said}"));
    assert_eq!(
        *gate.checked.lock().unwrap(),
        [REGION_B, REGION_A],
        "the secondary, unchanged but running other code than the primary, is checked too\n{said}"
    );

    // A function deployed before the alias existed: its running code is published and named by
    // the alias first, so that a failed rollout goes back to it.
    lambda_b
        .delete_alias()
        .function_name(&function_name)
        .name("live")
        .send()
        .await
        .unwrap();
    let (fifth, said) = up(bad.clone(), Rollout::RegionByRegion(gate)).await;
    let e = fifth
        .err()
        .unwrap_or_else(|| panic!("a bad build passed\n{said}"));
    assert!(said.contains("the running function is version"), "{said}");
    assert!(e.to_string().contains("is on version"), "{e}");
    let (_, b_code, b_latest) = lambda_state(&local, REGION_B, &function_name).await;
    assert_eq!(
        b_code,
        function::code_sha256(&v2),
        "back on the code it ran before"
    );
    assert_eq!(b_latest, function::code_sha256(&bad));

    let (down, said) = {
        let engine = engine(&v2).await;
        let mut out = Vec::new();
        let r = engine
            .down(
                DataPolicy {
                    allow_data_loss: true,
                    ..DataPolicy::default()
                },
                &mut out,
            )
            .await;
        (r, String::from_utf8_lossy(&out).into_owned())
    };
    down.unwrap_or_else(|e| panic!("down: {e}\n{said}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_fails_when_the_replicators_tasks_do_not_run() {
    // The local AWS reports MOTO_ECS_SERVICE_RUNNING (1, set by scripts/local-aws) tasks running for
    // a new service: a service that wants 2 never completes its rollout there.
    let local = LocalAws::from_env();
    let w = Workspace::new();
    w.write_with(&[(
        "desired_count = ",
        "desired_count = 2\nstart_timeout_seconds = 5".to_owned(),
    )]);
    let run = deployer(&local, &w.config, &["up", "--parallel"], &[]);
    expect(&run, 1, "up with tasks that do not start");
    assert!(run.stderr.contains("EcsService/"), "{}", run.stderr);
    assert!(
        run.stderr.contains("not running after 5 s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 2 tasks running"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("stopped reason"),
        "the hint says where to look: {}",
        run.stderr
    );
    // (Not followed by an `up` with a count that moto reaches: moto keeps the creation's rollout
    // state IN_PROGRESS through UpdateService, where ECS starts a new deployment.)
    cli_support::down(&local, &w.config);
}

/// A loopback server: `health` on the health path, `list` on requests with an API key, 403
/// otherwise; returns its base URL.
async fn server(health: u16, list: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let status = if text.starts_with("get /live/todos/health ") {
                    health
                } else if text.contains("\r\nx-api-key: ") {
                    list
                } else {
                    403
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/live")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_waits_for_route53_then_sends_the_smoke_request() {
    use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType};
    use deployer::rollout::{CheckRef, HealthGate};
    use std::time::{Duration, Instant};
    let local = LocalAws::from_env();
    let route53 = aws_sdk_route53::Client::new(&local.sdk_config(REGION_A));
    let check = route53
        .create_health_check()
        .caller_reference(tworegion_common::test_support::unique_name("gate"))
        .health_check_config(
            HealthCheckConfig::builder()
                .r#type(HealthCheckType::Https)
                .fully_qualified_domain_name("us-east-1.api.gate.test")
                .resource_path("/todos/health")
                .request_interval(10)
                .failure_threshold(1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let id = check.health_check().unwrap().id().to_owned();
    let target = |base: String, inverted: bool| Target {
        region: REGION_A.to_owned(),
        route53: route53.clone(),
        check: Some(CheckRef {
            id: id.clone(),
            interval: 10,
            threshold: 1,
            inverted,
        }),
        base_url: Some(base),
        health_path: "/todos/health".to_owned(),
        api_key: Some("key".to_owned()),
    };
    // A timeout shorter than the checkers need is not a shortcut: the whole 15 s are waited.
    let gate = HealthGate {
        timeout: Duration::from_secs(10),
    };
    let (ok, keyed_broken, inverted) = (
        target(server(200, 200).await, false),
        target(server(200, 500).await, false),
        // The local AWS reports every checker healthy: inverted, the check reads unhealthy.
        target(server(200, 200).await, true),
    );
    let start = Instant::now();
    let (ok, keyed_broken, inverted) = tokio::join!(
        gate.check(&ok),
        gate.check(&keyed_broken),
        gate.check(&inverted)
    );
    ok.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let e = keyed_broken.unwrap_err();
    assert!(e.contains("/todos?limit=1") && e.contains("500"), "{e}");
    let e = inverted.unwrap_err();
    assert!(e.contains("reads unhealthy"), "{e}");
    assert!(e.contains(&id), "{e}");
}
