//! `replicator leases list | release | reset-checkpoint` through the real binary against the local AWS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use replicator::lease::dynamo::{DynamoLeases, ensure_table};
use replicator::lease::{Lease, LeaseError, LeaseStore};
use replicator::stream::SeqNo;
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

/// A path: a source table with a stream in region A, a target table and a lease table in region B,
/// all deleted when the test ends.
struct TestPath {
    local: LocalAws,
    cleanup: TablesCleanup,
    b: Client,
    src: String,
    dst: String,
    lease_table: String,
    /// The path key, as `replicator run` computes it.
    key: String,
}

impl TestPath {
    async fn create(local: &LocalAws) -> TestPath {
        let cleanup = TablesCleanup::new(local);
        let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
        let (src, dst, lease_table) = (
            unique_name("src"),
            unique_name("dst"),
            unique_name("leases"),
        );
        let arn = create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages))
            .await
            .expect("the source has a stream");
        cleanup.table(REGION_A, &src);
        create_table(&b, &dst, "id", None).await;
        cleanup.table(REGION_B, &dst);
        cleanup.table(REGION_B, &lease_table);
        let key = format!("{arn}>{REGION_B}/{dst}");
        TestPath {
            local: local.clone(),
            cleanup,
            b,
            src,
            dst,
            lease_table,
            key,
        }
    }

    /// The flags that name this path.
    fn flags(&self) -> Vec<String> {
        [
            "--source-region",
            REGION_A,
            "--source-table",
            &self.src,
            "--target-region",
            REGION_B,
            "--target-table",
            &self.dst,
            "--lease-table",
            &self.lease_table,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The lease store of this path, as a worker sees it (the lease table is created if missing).
    async fn store(&self) -> DynamoLeases {
        ensure_table(&self.b, &self.lease_table)
            .await
            .expect("lease table");
        DynamoLeases::new(self.b.clone(), self.lease_table.clone(), self.key.clone())
    }

    /// `replicator leases <args> <path flags>`.
    fn leases(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("leases")
            .args(args)
            .args(self.flags())
            .envs(self.local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .output()
            .expect("run replicator leases");
        Run::from(output)
    }

    /// The raw lease row of `shard`.
    async fn row(&self, shard: &str) -> HashMap<String, AttributeValue> {
        self.b
            .get_item()
            .table_name(&self.lease_table)
            .key("path", s(&self.key))
            .key("shard", s(shard))
            .consistent_read(true)
            .send()
            .await
            .expect("get lease row")
            .item
            .expect("the lease row exists")
    }
}

/// What a command printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn text(row: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match row.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn number(row: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    match row.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn seq(text: &str) -> SeqNo {
    SeqNo::parse(text).expect("a sequence number")
}

fn in_a_minute() -> u64 {
    replicator::worker::now_millis() + 60_000
}

/// A lease of `shard` held by `worker`, checkpointed at `checkpoint` if given.
async fn held(
    store: &DynamoLeases,
    shard: &str,
    worker: &str,
    starting: Option<&SeqNo>,
    checkpoint: Option<&SeqNo>,
) -> Lease {
    assert!(
        store
            .create(shard, &[], starting, false)
            .await
            .expect("create")
    );
    let free = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|l| l.shard == shard)
        .expect("created");
    let taken = store
        .take(&free, worker, in_a_minute())
        .await
        .expect("take");
    match checkpoint {
        Some(seq) => store
            .checkpoint(&taken, Some(seq), false, in_a_minute())
            .await
            .expect("checkpoint"),
        None => taken,
    }
}

#[tokio::test]
async fn list_shows_every_lease_as_a_table_and_as_json() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;
    let store = path.store().await;
    held(
        &store,
        "shardId-a",
        "w1",
        Some(&seq("100")),
        Some(&seq("500")),
    )
    .await;
    held(&store, "shardId-b", "w2", None, None).await;
    assert!(
        store
            .create("shardId-c", &["shardId-a".to_owned()], None, false)
            .await
            .expect("create")
    );

    let run = path.leases(&["list"]);
    assert_eq!(run.code, Some(0), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("Path:        {}", path.key), "{run}");
    assert_eq!(
        lines[1],
        format!("Lease table: {REGION_B}/{}", path.lease_table)
    );
    let header: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SHARD",
            "OWNER",
            "COUNTER",
            "CHECKPOINT",
            "STARTED",
            "FINISHED",
            "PARENTS",
            "HANDOFF_TO",
            "EXPIRES"
        ]
    );
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let a = cells(lines[3]);
    assert_eq!(
        a[..8],
        ["shardId-a", "w1", "2", "500", "yes", "no", "-", "-"],
        "{run}"
    );
    assert_eq!(a[8], "in", "expires in about a minute: {run}");
    assert_eq!(
        cells(lines[5]),
        [
            "shardId-c",
            "free",
            "0",
            "-",
            "no",
            "no",
            "shardId-a",
            "-",
            "-"
        ],
        "{run}"
    );
    assert_eq!(
        lines[6], "3 leases; held by w1 (1), w2 (1); 1 free; 0 finished",
        "{run}"
    );
    assert_eq!(lines.len(), 7, "{run}");

    let run = path.leases(&["list", "--json"]);
    assert_eq!(run.code, Some(0), "{run}");
    let parsed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let leases = parsed.as_array().expect("an array");
    assert_eq!(leases.len(), 3, "{run}");
    assert_eq!(leases[0]["shard"], "shardId-a");
    assert_eq!(leases[0]["owner"], "w1");
    assert_eq!(leases[0]["counter"], 2);
    assert_eq!(leases[0]["checkpoint"], "500");
    assert_eq!(leases[0]["starting"], "100");
    assert_eq!(leases[0]["started"], true);
    assert!(leases[0]["expires_ms"].as_u64().is_some(), "{run}");
    assert_eq!(leases[2]["owner"], serde_json::Value::Null);
    assert_eq!(leases[2]["parents"], serde_json::json!(["shardId-a"]));
    assert_eq!(leases[2]["expires_ms"], serde_json::Value::Null);
}

#[tokio::test]
async fn release_needs_yes_then_frees_the_lease_and_fences_the_owner() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;
    let store = path.store().await;
    let lease = held(&store, "shardId-r", "w1", None, Some(&seq("700"))).await;
    assert_eq!(lease.counter, 2);

    let run = path.leases(&["release", "--shard", "shardId-r"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stdout
            .contains("  now:   held by w1, counter 2, checkpoint 700, started, expires in"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("  after: free, counter 3 (only if the counter is still 2)"),
        "{run}"
    );
    assert!(
        run.stderr.contains(
            "error: nothing was changed; add --yes to release the lease on shard shardId-r"
        ),
        "{run}"
    );
    let row = path.row("shardId-r").await;
    assert_eq!(text(&row, "owner").as_deref(), Some("w1"), "unchanged");
    assert_eq!(number(&row, "counter"), Some(2), "unchanged");

    let run = path.leases(&["release", "--shard", "shardId-r", "--yes"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("Released the lease on shard shardId-r: free, counter 3."),
        "{run}"
    );
    let row = path.row("shardId-r").await;
    assert_eq!(text(&row, "owner"), None, "{row:?}");
    assert_eq!(number(&row, "counter"), Some(3));
    assert_eq!(text(&row, "checkpoint").as_deref(), Some("700"), "kept");
    // The owner's next renewal fails: it stops the shard.
    let renewed = store.renew(&lease, in_a_minute()).await;
    assert!(
        matches!(renewed, Err(LeaseError::Lost { .. })),
        "{renewed:?}"
    );

    let run = path.leases(&["release", "--shard", "shardId-r", "--yes"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("The lease on shard shardId-r is already free (counter 3, checkpoint 700,"),
        "{run}"
    );
    assert_eq!(number(&path.row("shardId-r").await, "counter"), Some(3));
}

#[tokio::test]
async fn reset_to_trim_horizon_removes_checkpoint_and_start_marks_and_frees_the_lease() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;
    let store = path.store().await;
    let lease = held(
        &store,
        "shardId-t",
        "w1",
        Some(&seq("100")),
        Some(&seq("500")),
    )
    .await;
    held(&store, "shardId-u", "w1", None, Some(&seq("900"))).await;
    let args = [
        "reset-checkpoint",
        "--shard",
        "shardId-t",
        "--to",
        "trim-horizon",
    ];

    let run = path.leases(&args);
    assert_eq!(run.code, Some(1), "{run}");
    for expected in [
        "no checkpoint (was 500), not started, no starting sequence number, not finished, free",
        "counter 3 (only if the counter is still 2)",
        "records up to 500 that the stream still holds are applied again",
        "w1 loses the lease",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} in {run}");
    }
    assert!(
        run.stderr
            .contains("add --yes to reset the checkpoint of shard shardId-t to trim-horizon"),
        "{run}"
    );
    let row = path.row("shardId-t").await;
    assert_eq!(
        text(&row, "checkpoint").as_deref(),
        Some("500"),
        "unchanged"
    );

    let mut confirmed = args.to_vec();
    confirmed.push("--yes");
    let run = path.leases(&confirmed);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("Reset shard shardId-t: no checkpoint (trim horizon), free, counter 3."),
        "{run}"
    );
    let row = path.row("shardId-t").await;
    for gone in ["checkpoint", "started", "starting", "owner", "handoff_to"] {
        assert!(!row.contains_key(gone), "{gone} removed: {row:?}");
    }
    assert_eq!(row.get("finished"), Some(&AttributeValue::Bool(false)));
    assert_eq!(number(&row, "counter"), Some(3));
    // The owner cannot move the checkpoint any more.
    let moved = store
        .checkpoint(&lease, Some(&seq("600")), false, in_a_minute())
        .await;
    assert!(matches!(moved, Err(LeaseError::Lost { .. })), "{moved:?}");
    // The other shard is untouched.
    let other = path.row("shardId-u").await;
    assert_eq!(text(&other, "checkpoint").as_deref(), Some("900"));
    assert_eq!(text(&other, "owner").as_deref(), Some("w1"));
}

#[tokio::test]
async fn reset_to_a_sequence_number_sets_the_checkpoint() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;
    let store = path.store().await;
    held(
        &store,
        "shardId-s",
        "w1",
        Some(&seq("100")),
        Some(&seq("500")),
    )
    .await;

    let run = path.leases(&["reset-checkpoint", "--shard", "shardId-s", "--to", "800"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stdout
            .contains("records after 500 up to and including 800 are SKIPPED"),
        "{run}"
    );

    let run = path.leases(&[
        "reset-checkpoint",
        "--shard",
        "shardId-s",
        "--to",
        "400",
        "--yes",
    ]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("records after 400 up to and including 500 are applied again"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("Reset shard shardId-s: checkpoint 400, free, counter 3."),
        "{run}"
    );
    let row = path.row("shardId-s").await;
    assert_eq!(text(&row, "checkpoint").as_deref(), Some("400"));
    assert_eq!(text(&row, "owner"), None);
    assert_eq!(
        row.get("started"),
        Some(&AttributeValue::Bool(true)),
        "kept"
    );
    assert_eq!(row.get("finished"), Some(&AttributeValue::Bool(false)));
    assert_eq!(number(&row, "counter"), Some(3));

    // A sequence number before the shard's first one is another shard's: refused, nothing changes.
    let run = path.leases(&[
        "reset-checkpoint",
        "--shard",
        "shardId-s",
        "--to",
        "50",
        "--yes",
    ]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr
            .contains("sequence number 50 is before shard shardId-s's first sequence number 100"),
        "{run}"
    );
    assert_eq!(number(&path.row("shardId-s").await, "counter"), Some(3));
}

#[tokio::test]
async fn bad_input_gets_errors_that_say_what_to_fix() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;

    // No lease table yet.
    let run = path.leases(&["list"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "lease table {} does not exist in {REGION_B}; fix --lease-table / --lease-region",
            path.lease_table
        )),
        "{run}"
    );

    let store = path.store().await;
    // A lease table without leases of this path.
    let run = path.leases(&["release", "--shard", "shardId-x"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "the lease table has no leases for path {}",
            path.key
        )),
        "{run}"
    );
    let run = path.leases(&["list"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("0 leases."), "{run}");

    held(&store, "shardId-1", "w1", None, None).await;
    held(&store, "shardId-2", "w1", None, None).await;
    let run = path.leases(&["release", "--shard", "shardId-9", "--yes"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains(
            "there is no lease for shard shardId-9 on this path; the shards with leases are: \
             shardId-1, shardId-2"
        ),
        "{run}"
    );

    let run = path.leases(&[
        "reset-checkpoint",
        "--shard",
        "shardId-1",
        "--to",
        "latest",
        "--yes",
    ]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("\"latest\" is neither trim-horizon nor a sequence number"),
        "{run}"
    );
    let row = path.row("shardId-1").await;
    assert_eq!(text(&row, "owner").as_deref(), Some("w1"), "unchanged");

    // The path flags come from the same variables as `run`'s too.
    let env = |source_region: &str, source_table: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .args(["leases", "list"])
            .envs(local.child_env())
            .env("REPLICATOR_SOURCE_REGION", source_region)
            .env("REPLICATOR_SOURCE_TABLE", source_table)
            .env("REPLICATOR_TARGET_REGION", REGION_B)
            .env("REPLICATOR_TARGET_TABLE", &path.dst)
            .env("REPLICATOR_LEASE_TABLE", &path.lease_table)
            .stdin(Stdio::null())
            .output()
            .expect("run replicator leases");
        Run::from(output)
    };
    let run = env(REGION_A, &path.src);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("2 leases; held by w1 (2)"), "{run}");
    let run = env("us-east", &path.src);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("error: --source-region: invalid AWS region \"us-east\""),
        "{run}"
    );

    // A source table without a stream has no path.
    let plain = unique_name("nostream");
    create_table(&local.dynamodb(REGION_A), &plain, "id", None).await;
    path.cleanup.table(REGION_A, &plain);
    let run = env(REGION_A, &plain);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "source table {plain} in {REGION_A} has no stream, so it has no replication path"
        )),
        "{run}"
    );
    let run = env(REGION_A, "no-such-table");
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr
            .contains("source table no-such-table does not exist in us-east-1"),
        "{run}"
    );
}

/// `replicator run` in the background, killed when dropped.
struct Replicator {
    child: Child,
    log: PathBuf,
}

impl Replicator {
    fn start(path: &TestPath, worker: &str) -> Replicator {
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("replicator")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("run")
            .args(path.flags())
            .args(["--mode", "one-way", "--worker-id", worker])
            .args(["--lease-duration", "3s", "--idle-poll", "200ms"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .envs(path.local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start replicator");
        Replicator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_running_worker_is_listed_and_stops_the_shard_it_is_released_from() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local).await;
    let worker = Replicator::start(&path, "w-run");

    // The binary finds the same path as `run`: the worker's leases show up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leases = loop {
        let run = path.leases(&["list", "--json"]);
        if run.code == Some(0) {
            let parsed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
            let leases = parsed.as_array().cloned().unwrap_or_default();
            if !leases.is_empty() && leases.iter().all(|l| l["owner"] == "w-run") {
                break leases;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the worker's leases never showed up: {run}\nlog:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let shard = leases[0]["shard"].as_str().expect("shard").to_owned();
    let counter = leases[0]["counter"].as_u64().expect("counter");

    let run = path.leases(&["list"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains(&shard), "{run}");
    assert!(
        run.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!(
                "{} lease{}; held by w-run ({})",
                leases.len(),
                if leases.len() == 1 { "" } else { "s" },
                leases.len()
            ))),
        "{run}"
    );

    // The worker renews every second: a renewal between the command's read and its write makes the
    // command refuse (the lease moved); then it is simply repeated.
    let mut attempts = 0;
    let run = loop {
        let run = path.leases(&["release", "--shard", &shard, "--yes"]);
        attempts += 1;
        if run.code == Some(1)
            && run.stderr.contains("changed while this command ran")
            && attempts < 5
        {
            continue;
        }
        break run;
    };
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("held by w-run"), "{run}");
    assert!(
        number(&path.row(&shard).await, "counter").is_some_and(|c| c > counter),
        "the counter moved"
    );
    // The worker's next renewal fails its condition: it stops the shard (and later takes the free
    // lease again, being the only worker).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker.log().contains("Lease lost") {
        assert!(
            Instant::now() < deadline,
            "the worker did not notice; log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
