//! `replicator run --metrics-format emf` against the local AWS: stdout carries CloudWatch Embedded
//! Metric Format lines (one per `--emf-interval` and a last one at SIGTERM) whose record counts add up
//! to the records replicated, with the path and the configured dimensions; logs stay on stderr.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

#[tokio::test]
async fn emf_lines_on_stdout_count_what_was_replicated() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let (src, dst, leases) = (
        unique_name("emf-src"),
        unique_name("emf-dst"),
        unique_name("emf-leases"),
    );
    create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
    cleanup.table(REGION_A, &src);
    create_table(&b, &dst, "id", None).await;
    cleanup.table(REGION_B, &dst);
    cleanup.table(REGION_B, &leases);
    let mut child = Command::new(env!("CARGO_BIN_EXE_replicator"))
        .args(["run", "--mode", "one-way", "--metrics-addr", "127.0.0.1:0"])
        .args(["--source-region", REGION_A, "--source-table", &src])
        .args(["--target-region", REGION_B, "--target-table", &dst])
        .args(["--lease-table", &leases])
        .args(["--metrics-format", "emf", "--emf-interval", "1s"])
        .args([
            "--emf-namespace",
            "tworegion-test",
            "--emf-dimension",
            "Service=todo",
        ])
        .envs(local.child_env())
        .env("REPLICATOR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replicator");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    for i in 0..12 {
        a.put_item()
            .table_name(&src)
            .item("id", AttributeValue::S(format!("todo-{i}")))
            .send()
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = b
            .scan()
            .table_name(&dst)
            .send()
            .await
            .map(|out| out.count)
            .unwrap_or(0);
        if copied == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "replication did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Over a second more, so at least one line is written by the clock, then the last one at SIGTERM.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "the replicator stops cleanly: {exit}");
    let lines = reader.join().expect("reader");
    assert!(
        lines.len() >= 2,
        "a line a second and one at the end: {lines:?}"
    );
    let mut applied = 0.0;
    for line in &lines {
        let emf: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout holds only EMF lines ({e}): {line}"));
        let directive = &emf["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "tworegion-test");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["Path", "Service"]])
        );
        assert_eq!(emf["Path"], format!("{REGION_A}/{src} > {REGION_B}/{dst}"));
        assert_eq!(emf["Service"], "todo");
        applied += emf["RecordsApplied"]
            .as_f64()
            .expect("RecordsApplied in every line");
    }
    assert_eq!(
        applied, 12.0,
        "the lines' increases add up to the records applied: {lines:?}"
    );
}
