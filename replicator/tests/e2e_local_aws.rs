//! End-to-end tests through the real `replicator` binary against the local two-region AWS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, free_port, unique_name,
};
use tworegion_common::version::{HybridClock, Version};

type Items = BTreeMap<String, BTreeMap<String, AttributeValue>>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

async fn scan(client: &Client, table: &str) -> Items {
    let mut items = Items::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        for item in out.items() {
            let AttributeValue::S(id) = &item["id"] else {
                panic!("id is a string")
            };
            items.insert(id.clone(), item.clone().into_iter().collect());
        }
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return items,
        }
    }
}

/// A one-way target as a reader that follows the convention sees it: the tombstones that deletes leave
/// are absent, and the fencing token is left out (the source has neither).
async fn live_scan(client: &Client, table: &str) -> Items {
    scan(client, table)
        .await
        .into_iter()
        .filter_map(|(id, mut item)| {
            item.remove(replicator::apply::target::FENCE_ATTRIBUTE);
            let tombstone = item.get("rep_deleted") == Some(&AttributeValue::Bool(true));
            (!tombstone).then_some((id, item))
        })
        .collect()
}

struct Replicator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Replicator {
    fn start(local: &LocalAws, args: &[&str]) -> Replicator {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("replicator")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("run")
            .args(args)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .envs(local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start replicator");
        Replicator { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        tworegion_common::test_support::http_get(self.port, path).await
    }

    /// The value of an unlabelled counter, 0 if absent.
    async fn counter(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics").await else {
            return 0.0;
        };
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 250 ms until it is true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// A deterministic pseudo-random sequence (no dependency, same every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn path_args<'a>(
    src: &'a str,
    dst: &'a str,
    mode: &'a str,
    leases: &'a str,
    source: &'a str,
    target: &'a str,
) -> Vec<&'a str> {
    vec![
        "--source-region",
        source,
        "--source-table",
        src,
        "--target-region",
        target,
        "--target-table",
        dst,
        "--mode",
        mode,
        "--lease-table",
        leases,
        "--idle-poll",
        "200ms",
        "--lease-duration",
        "3s",
    ]
}

/// Lease rows of a lease table: (shard, owner, checkpoint).
async fn leases(client: &Client, table: &str) -> Vec<(String, Option<String>, Option<String>)> {
    // The replicator creates the table; until then there are no leases.
    let Ok(out) = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
    else {
        return Vec::new();
    };
    // Lease rows only (the path's fencing-token row is not one).
    out.items()
        .iter()
        .filter_map(replicator::lease::dynamo::decode)
        .map(|l| (l.shard, l.owner, l.checkpoint.map(|c| c.to_string())))
        .collect()
}

async fn mixed_writes(client: &Client, table: &str, rng: &mut Lcg, count: usize, keys: u64) {
    for i in 0..count {
        let id = format!("k{}", rng.next(keys));
        match rng.next(10) {
            0..=5 => {
                client
                    .put_item()
                    .table_name(table)
                    .item("id", s(&id))
                    .item("n", AttributeValue::N(i.to_string()))
                    .item(
                        "tags",
                        AttributeValue::Ss(vec!["a".into(), format!("t{i}")]),
                    )
                    .send()
                    .await
                    .expect("put");
            }
            6..=7 => {
                client
                    .update_item()
                    .table_name(table)
                    .key("id", s(&id))
                    .update_expression("SET n = :n, touched = :t")
                    .expression_attribute_values(":n", AttributeValue::N(i.to_string()))
                    .expression_attribute_values(":t", AttributeValue::Bool(true))
                    .send()
                    .await
                    .expect("update");
            }
            _ => {
                client
                    .delete_item()
                    .table_name(table)
                    .key("id", s(&id))
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
}

/// A one-way path: a source table with a stream in region A, a target table in region B, and the
/// name of a lease table (the replicator creates it); all deleted when the test ends.
struct OneWayPath {
    cleanup: TablesCleanup,
    a: Client,
    b: Client,
    src: String,
    dst: String,
    lease_table: String,
}

impl OneWayPath {
    async fn create(local: &LocalAws) -> OneWayPath {
        let cleanup = TablesCleanup::new(local);
        let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
        let (src, dst, lease_table) = (
            unique_name("src"),
            unique_name("dst"),
            unique_name("leases"),
        );
        create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
        cleanup.table(REGION_A, &src);
        create_table(&b, &dst, "id", None).await;
        cleanup.table(REGION_B, &dst);
        cleanup.table(REGION_B, &lease_table);
        OneWayPath {
            cleanup,
            a,
            b,
            src,
            dst,
            lease_table,
        }
    }
}

#[tokio::test]
async fn one_way_mixed_writes_converge_and_sigterm_releases_leases() {
    let local = LocalAws::from_env();
    let OneWayPath {
        cleanup: _cleanup,
        a,
        b,
        src,
        dst,
        lease_table,
    } = OneWayPath::create(&local).await;

    let mut replicator = Replicator::start(
        &local,
        &path_args(&src, &dst, "one-way", &lease_table, REGION_A, REGION_B),
    );
    let mut rng = Lcg(7);
    mixed_writes(&a, &src, &mut rng, 1000, 150).await;
    let expected = scan(&a, &src).await;
    assert!(expected.len() > 50, "the workload leaves items behind");
    let converged = eventually(Duration::from_secs(120), || async {
        live_scan(&b, &dst).await == expected
    })
    .await;
    assert!(
        converged,
        "target differs from source; log:\n{}",
        replicator.log()
    );
    assert_eq!(replicator.get("/readyz").await.map(|r| r.0), Some(200));
    // Every record read was applied (deleting an absent item emits no record, so fewer than 1000).
    let read = replicator.counter("replicator_records_read_total").await;
    assert!(read > 500.0, "records read: {read}");
    assert_eq!(
        replicator.counter("replicator_records_applied_total").await,
        read
    );

    replicator.signal("-TERM");
    let status = replicator
        .wait(Duration::from_secs(20))
        .await
        .expect("exits within the 20 s deadline");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        replicator.log()
    );
    let rows = leases(&b, &lease_table).await;
    assert_eq!(rows.len(), 1, "moto has one shard: {rows:?}");
    assert_eq!(rows[0].1, None, "the lease is released on SIGTERM");
    assert!(rows[0].2.is_some(), "the final checkpoint is written");
}

/// A writer that behaves like the sample app: versions from a hybrid logical clock, ahead of what it
/// read, written conditionally so a region never goes back.
async fn versioned_write(
    client: &Client,
    table: &str,
    region: &str,
    clock: &HybridClock,
    id: &str,
    delete: bool,
    n: usize,
) -> Option<(Version, String)> {
    for _ in 0..5 {
        let stored = client
            .get_item()
            .table_name(table)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
            .and_then(|i| match i.get("rep_version") {
                Some(AttributeValue::N(v)) => Version::parse(v),
                _ => None,
            });
        let version = match stored {
            Some(v) => clock.after(v).expect("a plausible stored version"),
            None => clock.now(),
        };
        let mut request = client
            .put_item()
            .table_name(table)
            .item("id", s(id))
            .item("rep_version", AttributeValue::N(version.to_string()))
            .item("rep_origin", s(region))
            .item("text", s(&format!("{region} write {n}")))
            .condition_expression("attribute_not_exists(rep_version) OR rep_version < :v")
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()));
        if delete {
            request = request
                .item("rep_deleted", AttributeValue::Bool(true))
                .item("rep_expires", AttributeValue::N("4102444800".into()));
        }
        match request.send().await {
            Ok(_) => return Some((version, region.to_owned())),
            Err(_) => continue, // lost a race with the replicator: read again, write a newer version
        }
    }
    None
}

#[tokio::test]
async fn lww_both_ways_converges_to_the_highest_version_without_ping_pong() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let table = unique_name("todos");
    let lease_table = unique_name("leases");
    for (client, region) in [(&a, REGION_A), (&b, REGION_B)] {
        create_table(client, &table, "id", Some(StreamViewType::NewAndOldImages)).await;
        cleanup.table(region, &table);
        cleanup.table(region, &lease_table);
    }
    // A to B runs in B (lease table in B), B to A runs in A.
    let a_to_b = Replicator::start(
        &local,
        &path_args(&table, &table, "lww", &lease_table, REGION_A, REGION_B),
    );
    let b_to_a = Replicator::start(
        &local,
        &path_args(&table, &table, "lww", &lease_table, REGION_B, REGION_A),
    );

    let mut acknowledged: BTreeMap<String, (Version, String)> = BTreeMap::new();
    let clock_a = HybridClock::default();
    let clock_b = HybridClock::default();
    let mut rng = Lcg(11);
    for n in 0..150 {
        let id = format!("k{}", rng.next(12));
        let delete = rng.next(6) == 0;
        let (client, region, clock) = if n % 2 == 0 {
            (&a, REGION_A, &clock_a)
        } else {
            (&b, REGION_B, &clock_b)
        };
        if let Some(written) = versioned_write(client, &table, region, clock, &id, delete, n).await
        {
            let best = acknowledged.entry(id).or_insert(written.clone());
            if (written.0, &written.1) > (best.0, &best.1) {
                *best = written;
            }
        }
    }
    let version_of = |items: &Items| -> BTreeMap<String, (Version, String)> {
        items
            .iter()
            .map(|(id, item)| {
                let v = match &item["rep_version"] {
                    AttributeValue::N(v) => Version::parse(v).expect("version"),
                    other => panic!("version {other:?}"),
                };
                let AttributeValue::S(o) = &item["rep_origin"] else {
                    panic!("origin")
                };
                (id.clone(), (v, o.clone()))
            })
            .collect()
    };
    let converged = eventually(Duration::from_secs(120), || async {
        let (ia, ib) = (scan(&a, &table).await, scan(&b, &table).await);
        ia == ib && version_of(&ia) == acknowledged
    })
    .await;
    assert!(
        converged,
        "regions differ or a key lost its highest write\nA->B log:\n{}\nB->A log:\n{}",
        a_to_b.log(),
        b_to_a.log()
    );
    // Tombstones are ordinary versioned items: where the highest write was a delete, both regions hold it.
    let ia = scan(&a, &table).await;
    for (id, item) in &ia {
        let deleted = item.get("rep_deleted") == Some(&AttributeValue::Bool(true));
        let AttributeValue::S(text) = &item["text"] else {
            panic!("text")
        };
        assert!(text.starts_with(&acknowledged[id].1), "{id}: {text}");
        let _ = deleted;
    }
    // No ping-pong: once converged, nothing more is read or applied for 5 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (
        a_to_b.counter("replicator_records_read_total").await,
        b_to_a.counter("replicator_records_read_total").await,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (
        a_to_b.counter("replicator_records_read_total").await,
        b_to_a.counter("replicator_records_read_total").await,
    );
    assert_eq!(
        before, after,
        "records kept flowing after convergence (ping-pong)"
    );
    assert!(a_to_b.counter("replicator_records_read_total").await > 0.0);
    let skipped = a_to_b.get("/metrics").await.expect("metrics").1;
    assert!(
        skipped.contains("replicator_records_skipped_total{reason=\"replicated_in\"}"),
        "loop prevention counted"
    );
}

#[tokio::test]
async fn kill_9_mid_stream_and_restart_loses_nothing() {
    let local = LocalAws::from_env();
    let OneWayPath {
        cleanup: _cleanup,
        a,
        b,
        src,
        dst,
        lease_table,
    } = OneWayPath::create(&local).await;
    let args = path_args(&src, &dst, "one-way", &lease_table, REGION_A, REGION_B);

    // The first worker writes through the SDK's client, the second (after the crash) directly: both
    // write clients on one path, handing over mid-stream.
    let mut sdk_args = args.clone();
    sdk_args.extend(["--write-client", "sdk"]);
    let mut first = Replicator::start(&local, &sdk_args);
    let mut rng = Lcg(3);
    mixed_writes(&a, &src, &mut rng, 300, 100).await;
    let started = eventually(Duration::from_secs(60), || async {
        live_scan(&b, &dst).await.len() > 20
    })
    .await;
    assert!(started, "log:\n{}", first.log());
    first.signal("-KILL");
    first.wait(Duration::from_secs(5)).await.expect("killed");
    mixed_writes(&a, &src, &mut rng, 200, 100).await;

    let second = Replicator::start(&local, &args);
    let expected = scan(&a, &src).await;
    let converged = eventually(Duration::from_secs(120), || async {
        live_scan(&b, &dst).await == expected
    })
    .await;
    assert!(
        converged,
        "after restart the target differs; log:\n{}",
        second.log()
    );
}

#[tokio::test]
async fn a_second_worker_takes_over_when_the_first_is_killed() {
    let local = LocalAws::from_env();
    let OneWayPath {
        cleanup: _cleanup,
        a,
        b,
        src,
        dst,
        lease_table,
    } = OneWayPath::create(&local).await;
    let base = path_args(&src, &dst, "one-way", &lease_table, REGION_A, REGION_B);
    let with_id = |id: &'static str| {
        let mut v = base.clone();
        v.extend(["--worker-id", id]);
        v
    };
    let mut workers = [
        ("w1", Replicator::start(&local, &with_id("w1"))),
        ("w2", Replicator::start(&local, &with_id("w2"))),
    ];
    let owned = eventually(Duration::from_secs(30), || async {
        leases(&b, &lease_table)
            .await
            .first()
            .is_some_and(|l| l.1.is_some())
    })
    .await;
    assert!(owned, "nobody took the lease");
    // The other worker keeps trying; the lease must not flap between two live workers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rows = leases(&b, &lease_table).await;
    assert_eq!(rows.len(), 1);
    let owner = rows[0].1.clone().expect("still owned");
    let holder = workers
        .iter()
        .position(|(id, _)| *id == owner)
        .expect("owner is one of ours");
    let other_id = workers[1 - holder].0;
    workers[holder].1.signal("-KILL");
    workers[holder]
        .1
        .wait(Duration::from_secs(5))
        .await
        .expect("killed");
    mixed_writes(&a, &src, &mut Lcg(5), 100, 50).await;
    let took_over = eventually(Duration::from_secs(30), || async {
        leases(&b, &lease_table)
            .await
            .first()
            .and_then(|l| l.1.as_deref())
            == Some(other_id)
    })
    .await;
    let survivor = &workers[1 - holder].1;
    assert!(
        took_over,
        "the lease did not move to {other_id}; log:\n{}",
        survivor.log()
    );
    let expected = scan(&a, &src).await;
    let converged = eventually(Duration::from_secs(60), || async {
        live_scan(&b, &dst).await == expected
    })
    .await;
    assert!(converged, "log:\n{}", survivor.log());
}

async fn start_up_error(local: &LocalAws, args: &[&str]) -> String {
    let mut r = Replicator::start(local, args);
    let status = r.wait(Duration::from_secs(30)).await.expect("exits");
    assert!(!status.success(), "start-up must fail: {}", r.log());
    r.log()
}

#[tokio::test]
async fn start_up_errors_name_the_problem() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let keys_only = unique_name("keysonly");
    let no_stream = unique_name("nostream");
    let good = unique_name("good");
    let other_key = unique_name("pk");
    let lease_table = unique_name("leases");
    create_table(&a, &keys_only, "id", Some(StreamViewType::KeysOnly)).await;
    create_table(&a, &no_stream, "id", None).await;
    create_table(&a, &good, "id", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&b, &other_key, "pk", None).await;
    for t in [&keys_only, &no_stream, &good] {
        cleanup.table(REGION_A, t);
    }
    cleanup.table(REGION_B, &other_key);

    let log = start_up_error(
        &local,
        &path_args(
            &keys_only,
            &other_key,
            "one-way",
            &lease_table,
            REGION_A,
            REGION_B,
        ),
    )
    .await;
    assert!(
        log.contains("KEYS_ONLY records carry no item contents"),
        "{log}"
    );
    let log = start_up_error(
        &local,
        &path_args(
            &no_stream,
            &other_key,
            "one-way",
            &lease_table,
            REGION_A,
            REGION_B,
        ),
    )
    .await;
    assert!(log.contains("has no enabled stream"), "{log}");
    let log = start_up_error(
        &local,
        &path_args(
            &good,
            &other_key,
            "one-way",
            &lease_table,
            REGION_A,
            REGION_B,
        ),
    )
    .await;
    assert!(
        log.contains("the HASH key is named id in the source and pk in the target"),
        "{log}"
    );
    let log = start_up_error(
        &local,
        &path_args(
            &good,
            "missing-table",
            "one-way",
            &lease_table,
            REGION_A,
            REGION_B,
        ),
    )
    .await;
    assert!(
        log.contains("target table missing-table does not exist in us-west-2"),
        "{log}"
    );
}

/// A writer that knows nothing of the convention: `UpdateItem SET text = :t`, no stamps touched.
async fn plain_update(client: &Client, table: &str, id: &str, text: &str) {
    client
        .update_item()
        .table_name(table)
        .key("id", s(id))
        .update_expression("SET #t = :t")
        .expression_attribute_names("#t", "text")
        .expression_attribute_values(":t", s(text))
        .send()
        .await
        .expect("update_item");
}

fn text_of(items: &Items, id: &str) -> Option<String> {
    match items.get(id)?.get("text")? {
        AttributeValue::S(t) => Some(t.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn lww_plain_update_items_without_stamps_reach_the_other_region_both_ways() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let table = unique_name("todos");
    let lease_table = unique_name("leases");
    for (client, region) in [(&a, REGION_A), (&b, REGION_B)] {
        create_table(client, &table, "id", Some(StreamViewType::NewAndOldImages)).await;
        cleanup.table(region, &table);
        cleanup.table(region, &lease_table);
    }
    let a_to_b = Replicator::start(
        &local,
        &path_args(&table, &table, "lww", &lease_table, REGION_A, REGION_B),
    );
    let b_to_a = Replicator::start(
        &local,
        &path_args(&table, &table, "lww", &lease_table, REGION_B, REGION_A),
    );
    let logs = || format!("A->B log:\n{}\nB->A log:\n{}", a_to_b.log(), b_to_a.log());
    let both_hold = |id: &'static str, text: &'static str| {
        let (a, b, table) = (a.clone(), b.clone(), table.clone());
        async move {
            let (ia, ib) = (scan(&a, &table).await, scan(&b, &table).await);
            text_of(&ia, id).as_deref() == Some(text) && text_of(&ib, id).as_deref() == Some(text)
        }
    };

    // A stamped item written in A arrives in B carrying A's origin.
    let clock = HybridClock::default();
    versioned_write(&a, &table, REGION_A, &clock, "k1", false, 0)
        .await
        .expect("stamped write");
    assert!(
        eventually(Duration::from_secs(60), || both_hold(
            "k1",
            "us-east-1 write 0"
        ))
        .await,
        "the stamped item reaches B\n{}",
        logs()
    );
    // A console-style edit in B of the item that arrived from A (its origin is A's): before, it was
    // skipped as "replicated in" and never reached A.
    plain_update(&b, &table, "k1", "edited in B").await;
    assert!(
        eventually(Duration::from_secs(60), || both_hold("k1", "edited in B")).await,
        "the unstamped edit in B reaches A\n{}",
        logs()
    );
    // And the same the other way.
    plain_update(&a, &table, "k1", "edited in A").await;
    assert!(
        eventually(Duration::from_secs(60), || both_hold("k1", "edited in A")).await,
        "the unstamped edit in A reaches B\n{}",
        logs()
    );
    // A new item without any stamp (the fallback version) too.
    plain_update(&b, &table, "k2", "new in B").await;
    assert!(
        eventually(Duration::from_secs(60), || both_hold("k2", "new in B")).await,
        "an unstamped new item reaches A\n{}",
        logs()
    );
    // It settles: nothing keeps flowing (no ping-pong of re-stamped copies).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = (
        a_to_b.counter("replicator_records_read_total").await,
        b_to_a.counter("replicator_records_read_total").await,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (
        a_to_b.counter("replicator_records_read_total").await,
        b_to_a.counter("replicator_records_read_total").await,
    );
    assert_eq!(before, after, "records kept flowing\n{}", logs());
    assert!(a_to_b.counter("replicator_records_restamped_total").await >= 1.0);
    assert!(b_to_a.counter("replicator_records_restamped_total").await >= 1.0);
}
