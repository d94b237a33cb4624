//! `replicator verify [--repair] [--json]` through the real binary against the local AWS: hand-made
//! missing, extra and different items are found (and nothing else: tombstones, fencing tokens and
//! ignored attributes are not differences), `--repair` fixes exactly those by the mode's rule, a
//! difference that a write in flight resolves before the recheck is not reported, and tables with
//! different keys are refused with a clear error.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A stamped item.
fn todo(id: &str, text: &str, version: u64, origin: &str) -> Item {
    [
        ("id", s(id)),
        ("text", s(text)),
        ("rep_version", n(version)),
        ("rep_origin", s(origin)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn put(client: &Client, table: &str, item: Item) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("put_item");
}

async fn get(client: &Client, table: &str, id: &str) -> Option<Item> {
    client
        .get_item()
        .table_name(table)
        .key("id", s(id))
        .consistent_read(true)
        .send()
        .await
        .expect("get_item")
        .item
}

struct Tables {
    local: LocalAws,
    a: Client,
    b: Client,
    src: String,
    dst: String,
    _cleanup: TablesCleanup,
}

impl Tables {
    async fn new(dst_key: &str) -> Tables {
        let local = LocalAws::from_env();
        let cleanup = TablesCleanup::new(&local);
        let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
        let (src, dst) = (unique_name("verify-src"), unique_name("verify-dst"));
        create_table(&a, &src, "id", None).await;
        cleanup.table(REGION_A, &src);
        create_table(&b, &dst, dst_key, None).await;
        cleanup.table(REGION_B, &dst);
        Tables {
            local,
            a,
            b,
            src,
            dst,
            _cleanup: cleanup,
        }
    }

    /// `replicator verify --mode <mode> <args>`, with no pause before the recheck.
    fn verify(&self, mode: &str, args: &[&str]) -> Output {
        self.command(mode, &["--recheck-after", "0s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run replicator verify")
    }

    fn command(&self, mode: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_replicator"));
        command
            .arg("verify")
            .args([
                "--source-region",
                REGION_A,
                "--source-table",
                &self.src,
                "--target-region",
                REGION_B,
                "--target-table",
                &self.dst,
                "--mode",
                mode,
                "--segments",
                "3",
            ])
            .args(args)
            .envs(self.local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json");
        command
    }

    /// The same items in both tables, and differences that are not differences: a tombstone on one
    /// side only, a fencing token on one side only, an ignored attribute that differs, numbers and
    /// sets written differently.
    async fn equal_items(&self) {
        for i in 0..120 {
            let item = todo(
                &format!("same-{i:03}"),
                &format!("text {i}"),
                1_000 + i,
                REGION_A,
            );
            put(&self.a, &self.src, item.clone()).await;
            put(&self.b, &self.dst, item).await;
        }
        let mut tombstone = todo("gone", "", 2_000, REGION_A);
        tombstone.insert("rep_deleted".to_owned(), AttributeValue::Bool(true));
        put(&self.a, &self.src, tombstone).await;
        let fenced = todo("fenced", "x", 5, REGION_A);
        put(&self.a, &self.src, fenced.clone()).await;
        let mut with_fence = fenced;
        with_fence.insert("rep_fence".to_owned(), n(3));
        put(&self.b, &self.dst, with_fence).await;
        let mut stamped = todo("ignored", "x", 5, REGION_A);
        stamped.insert("seen_at".to_owned(), s("monday"));
        stamped.insert("price".to_owned(), AttributeValue::N("1.50".into()));
        stamped.insert(
            "tags".to_owned(),
            AttributeValue::Ss(vec!["a".into(), "b".into()]),
        );
        put(&self.a, &self.src, stamped.clone()).await;
        stamped.insert("seen_at".to_owned(), s("tuesday"));
        stamped.insert("price".to_owned(), AttributeValue::N("1.5".into()));
        stamped.insert(
            "tags".to_owned(),
            AttributeValue::Ss(vec!["b".into(), "a".into()]),
        );
        put(&self.b, &self.dst, stamped).await;
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {}", text(output)))
}

#[tokio::test]
async fn lww_finds_and_repairs_exactly_the_hand_made_differences() {
    let t = Tables::new("id").await;
    t.equal_items().await;
    // Missing in the target, extra in the target, different (the source newer, then the target
    // newer), and a tie the rule cannot order.
    put(&t.a, &t.src, todo("missing", "only in A", 10, REGION_A)).await;
    put(&t.b, &t.dst, todo("extra", "only in B", 11, REGION_B)).await;
    put(&t.a, &t.src, todo("newer-in-a", "new", 20, REGION_A)).await;
    put(&t.b, &t.dst, todo("newer-in-a", "old", 15, REGION_B)).await;
    put(&t.a, &t.src, todo("newer-in-b", "old", 30, REGION_A)).await;
    put(&t.b, &t.dst, todo("newer-in-b", "new", 31, REGION_B)).await;
    put(&t.a, &t.src, todo("tie", "left", 40, REGION_A)).await;
    put(&t.b, &t.dst, todo("tie", "right", 40, REGION_A)).await;

    let found = t.verify("lww", &["--json", "--ignore-attribute", "seen_at"]);
    assert_eq!(found.status.code(), Some(4), "{}", text(&found));
    let report = json(&found);
    assert_eq!(
        (
            &report["missing"],
            &report["extra"],
            &report["different"],
            &report["remaining"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(3),
            &serde_json::json!(5)
        ),
        "{report:#}"
    );
    let kinds: Vec<(String, String)> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().expect("key").to_owned(),
                d["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("\"id\"=S\"extra\"", "extra"),
            ("\"id\"=S\"missing\"", "missing"),
            ("\"id\"=S\"newer-in-a\"", "different"),
            ("\"id\"=S\"newer-in-b\"", "different"),
            ("\"id\"=S\"tie\"", "different"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
        "{report:#}"
    );
    let different = &report["differences"][2];
    assert_eq!(
        different["attributes"],
        serde_json::json!(["rep_origin", "rep_version", "text"])
    );
    assert_eq!(different["source"]["text"], serde_json::json!({"S": "new"}));
    // Without the ignored attribute, that item differs too.
    let strict = t.verify("lww", &["--json"]);
    assert_eq!(json(&strict)["different"], serde_json::json!(4));

    let repaired = t.verify("lww", &["--repair", "--ignore-attribute", "seen_at"]);
    let out = text(&repaired);
    assert_eq!(repaired.status.code(), Some(4), "the tie remains: {out}");
    assert!(out.contains("1 remain after the repair"), "{out}");
    assert!(out.contains("cannot order them"), "{out}");
    assert_eq!(
        get(&t.b, &t.dst, "missing").await,
        Some(todo("missing", "only in A", 10, REGION_A))
    );
    assert_eq!(
        get(&t.a, &t.src, "extra").await,
        Some(todo("extra", "only in B", 11, REGION_B))
    );
    assert_eq!(
        get(&t.b, &t.dst, "newer-in-a").await,
        Some(todo("newer-in-a", "new", 20, REGION_A))
    );
    assert_eq!(
        get(&t.a, &t.src, "newer-in-b").await,
        Some(todo("newer-in-b", "new", 31, REGION_B))
    );
    assert_eq!(
        get(&t.b, &t.dst, "tie").await,
        Some(todo("tie", "right", 40, REGION_A)),
        "a tie is left alone"
    );
    // What nobody asked to repair is untouched.
    assert_eq!(
        get(&t.b, &t.dst, "gone").await,
        None,
        "a tombstone is not copied"
    );

    // The operator rewrites the tie through the application (a new version); then all is equal.
    put(&t.a, &t.src, todo("tie", "right", 41, REGION_A)).await;
    put(&t.b, &t.dst, todo("tie", "right", 41, REGION_A)).await;
    let equal = t.verify("lww", &["--ignore-attribute", "seen_at"]);
    let out = text(&equal);
    assert_eq!(equal.status.code(), Some(0), "{out}");
    assert!(out.contains("The tables are equal."), "{out}");
}

#[tokio::test]
async fn one_way_repair_makes_the_target_mirror_the_source() {
    let t = Tables::new("id").await;
    t.equal_items().await;
    put(&t.a, &t.src, todo("missing", "only in A", 1, REGION_A)).await;
    let mut extra = todo("extra", "only in B", 1, REGION_A);
    extra.insert("rep_fence".to_owned(), n(2));
    put(&t.b, &t.dst, extra).await;
    put(&t.a, &t.src, todo("changed", "source", 1, REGION_A)).await;
    let mut stale = todo("changed", "stale", 9, REGION_A);
    stale.insert("rep_fence".to_owned(), n(2));
    put(&t.b, &t.dst, stale).await;

    let found = t.verify("one-way", &["--ignore-attribute", "seen_at"]);
    let out = text(&found);
    assert_eq!(found.status.code(), Some(4), "{out}");
    assert!(out.contains("1 missing, 1 extra, 1 different."), "{out}");

    let repaired = t.verify("one-way", &["--repair", "--ignore-attribute", "seen_at"]);
    let out = text(&repaired);
    assert_eq!(repaired.status.code(), Some(0), "{out}");
    assert!(out.contains("0 remain after the repair"), "{out}");
    assert_eq!(
        get(&t.b, &t.dst, "missing").await,
        Some(todo("missing", "only in A", 1, REGION_A))
    );
    assert_eq!(get(&t.b, &t.dst, "extra").await, None);
    assert_eq!(
        get(&t.b, &t.dst, "changed").await,
        Some(todo("changed", "source", 1, REGION_A)),
        "the source wins whatever the versions say"
    );
    assert_eq!(
        get(&t.a, &t.src, "extra").await,
        None,
        "the source is never written"
    );

    let equal = t.verify("one-way", &["--ignore-attribute", "seen_at"]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
}

#[tokio::test]
async fn a_write_in_flight_is_not_reported() {
    let t = Tables::new("id").await;
    put(&t.a, &t.src, todo("k", "new", 2, REGION_A)).await;
    put(&t.b, &t.dst, todo("k", "old", 1, REGION_A)).await;
    let mut child = t
        .command("lww", &["--recheck-after", "4s", "--rechecks", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replicator verify");
    // Once the scans are done and the recheck is waiting, the replicated write lands.
    // The reader drains the child's log to the end and says when the line shows.
    let stderr = child.stderr.take().expect("stderr");
    let (seen, waiting) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Reading the differences again.") {
                let _ = seen.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let reached =
        tokio::task::spawn_blocking(move || waiting.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join");
    assert!(reached.is_ok(), "verify never reached its recheck");
    put(&t.b, &t.dst, todo("k", "new", 2, REGION_A)).await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let out = format!("{}{}", text(&output), log.join().expect("log reader"));
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("1 of 1 differences the scans found were equal when read again"),
        "{out}"
    );
}

#[tokio::test]
async fn tables_with_different_keys_are_refused() {
    let t = Tables::new("pk").await;
    let output = t.verify("lww", &[]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("the tables have different keys") && out.contains("pk (HASH S)"),
        "{out}"
    );
}

/// Repair writes that fail (here: the target's writes go to a port where nothing listens) are
/// reported key by key with their error, the run goes on to the end and exits 4, and nothing is
/// lost: a later `--repair` fixes every key.
#[tokio::test]
async fn failed_repair_writes_are_reported_and_the_run_goes_on() {
    use clap::Parser;
    use replicator::admin::verify::{Clients, VerifyArgs, VerifyError, run};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: VerifyArgs,
    }
    let t = Tables::new("id").await;
    put(&t.a, &t.src, todo("one", "only in A", 1, REGION_A)).await;
    put(&t.a, &t.src, todo("two", "only in A", 2, REGION_A)).await;
    let spec = Cli::try_parse_from([
        "verify",
        "--source-region",
        REGION_A,
        "--source-table",
        &t.src,
        "--target-region",
        REGION_B,
        "--target-table",
        &t.dst,
        "--mode",
        "one-way",
        "--repair",
        "--json",
        "--recheck-after",
        "0s",
    ])
    .expect("flags")
    .args
    .validate()
    .expect("valid");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let clients = Clients {
        source: t.a.clone(),
        target: t.b.clone(),
        source_writes: t.a.clone(),
        target_writes: Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&t.local.sdk_config(REGION_B))
                .endpoint_url(nowhere)
                .retry_config(
                    aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1),
                )
                .build(),
        ),
    };
    let mut out = Vec::new();
    let result = run(&spec, &clients, &mut out).await;
    assert!(
        matches!(
            result,
            Err(VerifyError::Differences {
                remaining: 2,
                repaired: true
            })
        ),
        "{result:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out).expect("the whole report");
    let repairs: Vec<(&str, &str)> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().expect("key"),
                d["repair"]["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(repairs.len(), 2, "{report}");
    assert!(repairs.iter().all(|(_, o)| *o == "failed"), "{report}");
    assert!(
        report["differences"][0]["repair"]["what"]
            .as_str()
            .expect("why")
            .contains("repairing"),
        "{report}"
    );
    assert_eq!(report["remaining"], 2);
    // A failure that retrying will not fix (the target table is not where the writes go) stops the
    // repair at the first key: the report is still printed, the rest are not attempted, exit 1.
    let mut wrong_region = clients;
    wrong_region.target_writes = t.local.dynamodb(REGION_A);
    let mut out = Vec::new();
    let result = run(&spec, &wrong_region, &mut out).await;
    assert!(
        matches!(result, Err(VerifyError::RepairStopped(_))),
        "{result:?}"
    );
    assert_eq!(result.as_ref().unwrap_err().exit_code(), 1);
    let report: serde_json::Value = serde_json::from_slice(&out).expect("the whole report");
    let outcomes: Vec<&str> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| d["repair"]["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, ["failed", "not attempted"], "{report}");
    assert!(report["repair_stopped"].is_string(), "{report}");
    // Nothing was lost: the next repair, with a target that answers, fixes both.
    let repaired = t.verify("one-way", &["--repair"]);
    assert_eq!(repaired.status.code(), Some(0), "{}", text(&repaired));
    assert!(get(&t.b, &t.dst, "one").await.is_some());
    assert!(get(&t.b, &t.dst, "two").await.is_some());
}
