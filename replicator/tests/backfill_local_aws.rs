//! `replicator backfill` through the real binary against the local AWS: a table holding 5,000 items
//! from before its stream was enabled is copied into the other region while writers keep writing and
//! `replicator run` streams, and `replicator verify` then finds both tables equal: in lww mode with
//! writers in both regions, in one-way mode with writers in the source and a backfill killed with
//! SIGKILL half-way and resumed.

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, PutRequest, StreamSpecification, StreamViewType, WriteRequest,
};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

const ITEMS: usize = 5_000;

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn todo(id: &str, text: &str, version: u64, origin: &str) -> Item {
    [
        ("id", s(id)),
        ("text", s(text)),
        ("rep_version", AttributeValue::N(version.to_string())),
        ("rep_origin", s(origin)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn millis() -> u64 {
    tworegion_common::version::system_millis()
}

/// A table that held `ITEMS` items before its stream was enabled: the stream has none of them.
async fn filled_table(client: &Client, table: &str) {
    create_table(client, table, "id", None).await;
    let items: Vec<Item> = (0..ITEMS)
        .map(|i| {
            todo(
                &format!("item-{i:05}"),
                &format!("old text {i}"),
                1_000 + i as u64,
                REGION_A,
            )
        })
        .collect();
    for chunk in items.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .expect("put request"),
                    )
                    .build()
            })
            .collect();
        while !requests.is_empty() {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .expect("batch_write_item");
            requests = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
        }
    }
    client
        .update_table()
        .table_name(table)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .expect("stream specification"),
        )
        .send()
        .await
        .expect("enable the stream");
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path(src_region: &str, src: &str, dst_region: &str, dst: &str, leases: &str) -> Vec<String> {
    [
        "--source-region",
        src_region,
        "--source-table",
        src,
        "--target-region",
        dst_region,
        "--target-table",
        dst,
        "--lease-table",
        leases,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn replicator(local: &LocalAws, command: &str, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_replicator"));
    c.arg(command)
        .args(args)
        .envs(local.child_env())
        .env("REPLICATOR_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    c
}

fn run(local: &LocalAws, args: &[String], mode: &str) -> Process {
    Process(
        replicator(local, "run", args)
            .args(["--mode", mode, "--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start replicator run"),
    )
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes until `stop`, at most 400 writes and 120 s: updates of old items, new items and (with
/// `deletes`) deletes, each stamped with a fresh version and its region, round-robin over `regions`.
fn writers(
    regions: Vec<(Client, String, &'static str)>,
    deletes: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut written = 0;
        for i in 0..400usize {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let (client, table, region) = &regions[i % regions.len()];
            let version = millis() * 10 + (i % 10) as u64;
            let id = if i % 3 == 0 {
                format!("new-{i:04}")
            } else {
                format!("item-{:05}", (i * 7919) % ITEMS)
            };
            if deletes && i % 5 == 1 {
                client
                    .delete_item()
                    .table_name(table)
                    .key("id", s(&id))
                    .send()
                    .await
                    .expect("delete");
            } else {
                client
                    .put_item()
                    .table_name(table)
                    .set_item(Some(todo(&id, &format!("written {i}"), version, region)))
                    .send()
                    .await
                    .expect("put");
            }
            written += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        written
    })
}

/// `verify` until it exits 0 (writes in flight settle), at most `limit`.
async fn verify_until_equal(
    local: &LocalAws,
    args: &[String],
    mode: &str,
    limit: Duration,
) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        let output = replicator(local, "verify", args)
            .args(["--mode", mode, "--recheck-after", "2s", "--rechecks", "3"])
            .output()
            .expect("run verify");
        if output.status.code() == Some(0) || Instant::now() > deadline {
            return output;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn lww_backfill_beside_writers_in_both_regions_ends_equal() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let (src, dst, leases) = (
        unique_name("bf-lww-a"),
        unique_name("bf-lww-b"),
        unique_name("bf-lww-leases"),
    );
    filled_table(&a, &src).await;
    cleanup.table(REGION_A, &src);
    create_table(&b, &dst, "id", Some(StreamViewType::NewAndOldImages)).await;
    cleanup.table(REGION_B, &dst);
    cleanup.table(REGION_A, &leases);
    cleanup.table(REGION_B, &leases);
    let a_to_b = path(REGION_A, &src, REGION_B, &dst, &leases);
    let b_to_a = path(REGION_B, &dst, REGION_A, &src, &leases);
    let _forward = run(&local, &a_to_b, "lww");
    let _backward = run(&local, &b_to_a, "lww");
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(
        vec![
            (a.clone(), src.clone(), REGION_A),
            (b.clone(), dst.clone(), REGION_B),
        ],
        false,
        stop.clone(),
    );

    // Off the test's thread, so the writers keep writing while it runs.
    let mut command = replicator(&local, "backfill", &a_to_b);
    command.args([
        "--mode",
        "lww",
        "--segments",
        "4",
        "--progress-interval",
        "1s",
    ]);
    let backfill = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run backfill");
    stop.store(true, Ordering::Relaxed);
    let written = writing.await.expect("writers");
    let out = text(&backfill);
    assert_eq!(backfill.status.code(), Some(0), "{out}");
    assert!(out.contains("items read"), "{out}");
    assert!(written > 0, "the writers wrote during the backfill");
    assert!(
        out.contains("Backfill progress."),
        "progress is logged: {out}"
    );

    let equal = verify_until_equal(&local, &a_to_b, "lww", Duration::from_secs(90)).await;
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
}

#[tokio::test]
async fn one_way_backfill_killed_half_way_resumes_and_ends_equal() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let (src, dst, leases) = (
        unique_name("bf-ow-a"),
        unique_name("bf-ow-b"),
        unique_name("bf-ow-leases"),
    );
    filled_table(&a, &src).await;
    cleanup.table(REGION_A, &src);
    create_table(&b, &dst, "id", None).await;
    cleanup.table(REGION_B, &dst);
    cleanup.table(REGION_B, &leases);
    let a_to_b = path(REGION_A, &src, REGION_B, &dst, &leases);
    let _forward = run(&local, &a_to_b, "one-way");
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(vec![(a.clone(), src.clone(), REGION_A)], true, stop.clone());

    let flags = [
        "--mode",
        "one-way",
        "--segments",
        "4",
        "--page-size",
        "100",
        "--progress-interval",
        "1s",
    ];
    let mut first = Process(
        replicator(&local, "backfill", &a_to_b)
            .args(flags)
            .args(["--write-units-per-second", "150"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backfill"),
    );
    // Killed once some pages are saved and well before the end.
    let progress_key = format!("backfill {REGION_A}/{src} > {REGION_B}/{dst}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut saved = 0u64;
    while saved < 1_000 {
        assert!(
            Instant::now() < deadline,
            "the backfill saved no progress in time"
        );
        assert!(
            first.0.try_wait().expect("try_wait").is_none(),
            "the backfill ended before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        saved = b
            .query()
            .table_name(&leases)
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", "path")
            .expression_attribute_values(":p", s(&progress_key))
            .send()
            .await
            .map(|out| {
                out.items
                    .unwrap_or_default()
                    .iter()
                    .map(|row| match row.get("copied") {
                        Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap_or(0),
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0);
    }
    assert!(
        saved < ITEMS as u64,
        "killed half-way, not at the end ({saved} saved)"
    );
    first.0.kill().expect("SIGKILL the backfill");
    let _ = first.0.wait();

    let mut command = replicator(&local, "backfill", &a_to_b);
    command.args(flags);
    let resumed = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run backfill again");
    stop.store(true, Ordering::Relaxed);
    let written = writing.await.expect("writers");
    let out = text(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{out}");
    assert!(out.contains("items were copied before the resume"), "{out}");
    // It went on where it was: fewer items read than the table holds.
    let read: usize = out
        .split(" items read")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no items-read figure: {out}"));
    assert!(
        read < ITEMS,
        "the resumed run read {read} items, not the rest: {out}"
    );
    assert!(written > 0, "the writers wrote during the backfill");
    // A third run finds nothing to do.
    let again = replicator(&local, "backfill", &a_to_b)
        .args(flags)
        .output()
        .expect("run backfill a third time");
    assert!(
        text(&again).contains("already complete"),
        "{}",
        text(&again)
    );

    let equal = verify_until_equal(&local, &a_to_b, "one-way", Duration::from_secs(90)).await;
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
}
