//! Records the target refuses for good, through the real binary against the local AWS: `replicator run`
//! parks them in the dead-letter table and goes on (or stops the shard under `--on-refused-record
//! stop`), and `replicator dlq list | replay | purge` manages them.
//!
//! The refused record is an item of exactly the largest size the local DynamoDB accepts: the source
//! takes it, but the replicator's copy carries more (the one-way fencing token, the lww stamps) and is
//! refused with "Item size has exceeded the maximum allowed size".

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use replicator::dead_letter::dynamo::DynamoDeadLetters;
use replicator::dead_letter::{DeadLetter, DeadLetterSink};
use replicator::stream::{Change, EventKind, SeqNo};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, free_port, unique_name,
};

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
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

/// The item with `id` (consistent read).
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

async fn text_of(client: &Client, table: &str, id: &str) -> Option<String> {
    match get(client, table, id).await?.get("text") {
        Some(AttributeValue::S(text)) => Some(text.clone()),
        _ => None,
    }
}

async fn put_text(client: &Client, table: &str, id: &str, text: &str) {
    client
        .put_item()
        .table_name(table)
        .item("id", s(id))
        .item("text", s(text))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {id}: {e:?}"));
}

/// The largest `text` an item `{id: "big", text}` may have in this DynamoDB, found on a scratch table
/// of its own (probing the source table would put every probe on its stream).
async fn largest_text(local: &LocalAws, cleanup: &TablesCleanup) -> usize {
    let a = local.dynamodb(REGION_A);
    let scratch = unique_name("scratch");
    create_table(&a, &scratch, "id", None).await;
    cleanup.table(REGION_A, &scratch);
    let fits = |len: usize| {
        let (a, scratch) = (a.clone(), scratch.clone());
        async move {
            let result = a
                .put_item()
                .table_name(&scratch)
                .item("id", s("big"))
                .item("text", s(&"x".repeat(len)))
                .send()
                .await;
            match result {
                Ok(_) => true,
                Err(error) => {
                    let text = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&error));
                    assert!(
                        text.contains("Item size has exceeded the maximum allowed size"),
                        "an unexpected failure while probing the item size limit: {text}"
                    );
                    false
                }
            }
        }
    };
    let (mut fits_len, mut too_big) = (1_000, 600_000);
    assert!(fits(fits_len).await && !fits(too_big).await);
    while too_big - fits_len > 1 {
        let mid = (fits_len + too_big) / 2;
        if fits(mid).await {
            fits_len = mid;
        } else {
            too_big = mid;
        }
    }
    assert!(
        (350_000..=410_000).contains(&fits_len),
        "an item size limit near 400 KB, not {fits_len}"
    );
    fits_len
}

/// A path: a source table with a stream in region A, a target table in region B, and the names of
/// the lease and dead-letter tables (the replicator creates them in B, the latter only if `parks`);
/// all deleted when the test ends.
struct TestPath {
    local: LocalAws,
    cleanup: TablesCleanup,
    a: Client,
    b: Client,
    src: String,
    dst: String,
    lease_table: String,
    dead_letter_table: String,
    /// The path key, as `replicator run` computes it.
    key: String,
}

impl TestPath {
    async fn create(local: &LocalAws, parks: bool) -> TestPath {
        let cleanup = TablesCleanup::new(local);
        let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
        let (src, dst) = (unique_name("src"), unique_name("dst"));
        let (lease_table, dead_letter_table) = (unique_name("leases"), unique_name("dlq"));
        let arn = create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages))
            .await
            .expect("the source has a stream");
        cleanup.table(REGION_A, &src);
        create_table(&b, &dst, "id", None).await;
        cleanup.table(REGION_B, &dst);
        cleanup.table(REGION_B, &lease_table);
        if parks {
            cleanup.table(REGION_B, &dead_letter_table);
        }
        TestPath {
            local: local.clone(),
            cleanup,
            a,
            b,
            key: format!("{arn}>{REGION_B}/{dst}"),
            src,
            dst,
            lease_table,
            dead_letter_table,
        }
    }

    /// The flags that name this path and its dead-letter table.
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
            "--dead-letter-table",
            &self.dead_letter_table,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `replicator run --mode <mode> <path flags> <extra>`.
    fn run(&self, mode: &str, extra: &[&str]) -> Replicator {
        let mut args = self.flags();
        args.extend(
            [
                "--mode",
                mode,
                "--idle-poll",
                "200ms",
                "--lease-duration",
                "3s",
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Replicator::start(&self.local, &args)
    }

    /// `replicator dlq <args> <path flags>`.
    fn dlq(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("dlq")
            .args(args)
            .args(self.flags())
            .envs(self.local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .output()
            .expect("run replicator dlq");
        Run::from(output)
    }

    /// The dead letters of this path, as the replicator parks them.
    fn dead_letters(&self) -> DynamoDeadLetters {
        DynamoDeadLetters::new(
            self.b.clone(),
            self.dead_letter_table.clone(),
            self.key.clone(),
        )
    }

    /// The dead letters now (none while the table does not exist).
    async fn parked(&self) -> Vec<DeadLetter> {
        self.dead_letters().list().await.unwrap_or_default()
    }

    /// Parks a hand-made dead letter for the key `id` (a MODIFY with `image`, or a REMOVE without).
    async fn park(&self, seq: u128, id: AttributeValue, image: Option<Item>) -> DeadLetter {
        let letter = DeadLetter {
            shard: "shardId-handmade".to_owned(),
            change: Change {
                seq: SeqNo::from_u128(seq),
                kind: if image.is_some() {
                    EventKind::Modify
                } else {
                    EventKind::Remove
                },
                keys: [("id".to_owned(), id)].into(),
                new_image: image,
                old_image: None,
                created_at: Some(1_700_000_000.0),
                by_ttl: false,
            },
            error: "ValidationException: made by hand".to_owned(),
            code: Some("ValidationException".to_owned()),
            request_id: None,
            worker: "test".to_owned(),
            at_ms: replicator::worker::now_millis(),
            images_omitted: false,
        };
        self.dead_letters().park(&letter).await.expect("park");
        letter
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

struct Replicator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Replicator {
    fn start(local: &LocalAws, args: &[String]) -> Replicator {
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

    /// The log's JSON lines.
    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        tworegion_common::test_support::http_get(self.port, path).await
    }

    async fn ready(&self) -> Option<u16> {
        self.get("/readyz").await.map(|r| r.0)
    }

    /// Whether /readyz answers 503 because a shard is stopped.
    async fn stopped_shards(&self) -> bool {
        self.get("/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("shard(s) stopped"))
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
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a (small), big (`big_len` characters of text), c and d to the source, in that order.
async fn write_a_big_c_d(path: &TestPath, big_len: usize) {
    put_text(&path.a, &path.src, "a", "small a").await;
    put_text(&path.a, &path.src, "big", &"x".repeat(big_len)).await;
    put_text(&path.a, &path.src, "c", "small c").await;
    put_text(&path.a, &path.src, "d", "small d").await;
}

/// Waits until the target holds a, c and d, and the path has `count` dead letters.
async fn wait_for_a_c_d_and_parked(path: &TestPath, count: usize, replicator: &Replicator) {
    let settled = eventually(Duration::from_secs(60), || async {
        text_of(&path.b, &path.dst, "a").await.as_deref() == Some("small a")
            && text_of(&path.b, &path.dst, "c").await.as_deref() == Some("small c")
            && text_of(&path.b, &path.dst, "d").await.as_deref() == Some("small d")
            && path.parked().await.len() == count
    })
    .await;
    assert!(
        settled,
        "a, c and d did not reach the target with {count} dead letter(s) parked; log:\n{}",
        replicator.log()
    );
}

#[tokio::test]
async fn one_way_parks_the_oversized_record_goes_on_and_dlq_manages_it() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local, true).await;
    let big_len = largest_text(&local, &path.cleanup).await;
    write_a_big_c_d(&path, big_len).await;
    let replicator = path.run("one-way", &[]);
    wait_for_a_c_d_and_parked(&path, 1, &replicator).await;

    // The records after `big` are applied; `big` is not, and is parked with the service's error.
    assert_eq!(
        get(&path.b, &path.dst, "big").await,
        None,
        "{}",
        replicator.log()
    );
    let letters = path.parked().await;
    let big = &letters[0];
    assert_eq!(
        big.change.keys,
        HashMap::from([("id".to_owned(), s("big"))])
    );
    assert_eq!(big.change.kind, EventKind::Insert);
    assert_eq!(big.code.as_deref(), Some("ValidationException"));
    assert!(
        big.error
            .contains("Item size has exceeded the maximum allowed size"),
        "{big:?}"
    );
    assert!(
        big.images_omitted,
        "a 400 KB image does not fit beside its error"
    );
    assert_eq!(
        replicator.counter("replicator_dead_letters_total").await,
        1.0
    );
    assert_eq!(replicator.ready().await, Some(200), "the shard goes on");
    let lines = replicator.log_lines();
    let parked_line = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused a record for good; it is parked"))
        })
        .unwrap_or_else(|| panic!("no parking line; log:\n{}", replicator.log()));
    assert_eq!(parked_line["level"], "ERROR");
    let error = parked_line["error"].as_str().expect("an error field");
    assert!(
        error.starts_with("ValidationException: Item size has exceeded"),
        "{error}"
    );
    assert!(error.len() < 300, "a short error, not a dump: {error}");
    assert!(
        replicator.log().lines().all(|l| l.len() < 2_000),
        "no multi-kilobyte log line:\n{}",
        replicator.log()
    );

    // `dlq list`: one line per dead letter, and a summary; --json.
    let list = path.dlq(&["list"]);
    assert_eq!(list.code, Some(0), "{list}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("Path:              {}", path.key),
        "{list}"
    );
    assert_eq!(
        lines[1],
        format!("Dead-letter table: {REGION_B}/{}", path.dead_letter_table)
    );
    assert!(lines[2].starts_with("ID "), "{list}");
    assert!(lines[3].starts_with(&big.id()), "{list}");
    for part in [
        "\"id\"=S\"big\"",
        "INSERT",
        "ValidationException: Item size has exceeded the maximum allowed size",
        "(images omitted: too large)",
    ] {
        assert!(lines[3].contains(part), "{part}: {list}");
    }
    assert!(
        lines[3].contains("  now  ") || lines[3].contains(" ago  "),
        "when it was parked: {list}"
    );
    assert!(
        lines[4].starts_with("1 dead letter on 1 shard; 1 with images omitted"),
        "{list}"
    );
    let json = path.dlq(&["list", "--json"]);
    assert_eq!(json.code, Some(0), "{json}");
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(parsed.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(parsed[0]["id"], big.id().as_str());
    assert_eq!(parsed[0]["keys"]["id"]["S"], "big");
    assert_eq!(parsed[0]["code"], "ValidationException");
    assert_eq!(parsed[0]["images_omitted"], true);

    // Fix the source item; its next change replicates; the replay then finds the target up to date.
    put_text(&path.a, &path.src, "big", "small now").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            text_of(&path.b, &path.dst, "big").await.as_deref() == Some("small now")
        })
        .await,
        "the fixed item replicates; log:\n{}",
        replicator.log()
    );
    let replay = path.dlq(&["replay", "--all", "--mode", "one-way"]);
    assert_eq!(replay.code, Some(0), "{replay}");
    assert!(
        replay.stdout.contains(&format!(
            "{}  \"id\"=S\"big\"  superseded: the target already holds the source's current item; \
             removed from the dead-letter table.",
            big.id()
        )),
        "{replay}"
    );
    assert!(
        replay
            .stdout
            .contains("Replayed 1 of 1 (0 applied, 1 superseded); 0 remain."),
        "{replay}"
    );
    assert!(path.parked().await.is_empty());
    let list = path.dlq(&["list"]);
    assert_eq!(list.code, Some(0), "{list}");
    assert!(
        list.stdout.contains("0 dead letters: nothing is parked"),
        "{list}"
    );
    assert_eq!(path.dlq(&["list", "--json"]).stdout, "[]\n");

    // Replays that write: a stale target item is overwritten by the source's current one, and a target
    // item the source no longer holds is deleted.
    path.b
        .put_item()
        .table_name(&path.dst)
        .item("id", s("a"))
        .item("text", s("stale"))
        .send()
        .await
        .expect("put stale");
    path.b
        .put_item()
        .table_name(&path.dst)
        .item("id", s("gone"))
        .item("text", s("only in the target"))
        .send()
        .await
        .expect("put gone");
    let stale = path.park(1_000, s("a"), None).await;
    let gone = path.park(1_001, s("gone"), None).await;
    let replay = path.dlq(&["replay", "--id", &stale.id(), "--mode", "one-way"]);
    assert_eq!(replay.code, Some(0), "{replay}");
    assert!(
        replay
            .stdout
            .contains("applied: copied the source's current item"),
        "{replay}"
    );
    assert_eq!(
        text_of(&path.b, &path.dst, "a").await.as_deref(),
        Some("small a")
    );
    let replay = path.dlq(&["replay", "--all", "--mode", "one-way"]);
    assert_eq!(replay.code, Some(0), "{replay}");
    assert!(
        replay
            .stdout
            .contains("applied: deleted the target item (the source no longer holds it)"),
        "{replay}"
    );
    assert_eq!(get(&path.b, &path.dst, "gone").await, None);
    assert!(path.parked().await.is_empty(), "{gone:?}");

    // `purge`: nothing without --yes; an unknown ID lists the known ones; then the entry is gone.
    let handmade = path.park(2_000, s("c"), None).await;
    let dry = path.dlq(&["purge", "--id", &handmade.id()]);
    assert_eq!(dry.code, Some(1), "{dry}");
    assert!(dry.stdout.contains("Would delete 1 dead letter"), "{dry}");
    assert!(dry.stdout.contains(&handmade.id()), "{dry}");
    assert!(
        dry.stderr
            .contains("nothing was changed; add --yes to delete 1 dead letter"),
        "{dry}"
    );
    assert_eq!(path.parked().await.len(), 1);
    let unknown = path.dlq(&["purge", "--id", "shardId-x#1", "--yes"]);
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(
        unknown.stderr.contains(&format!(
            "there is no dead letter shardId-x#1 on this path; its dead letters are: {}",
            handmade.id()
        )),
        "{unknown}"
    );
    let purge = path.dlq(&["purge", "--id", &handmade.id(), "--yes"]);
    assert_eq!(purge.code, Some(0), "{purge}");
    assert!(purge.stdout.contains("Deleted 1 dead letter."), "{purge}");
    assert!(path.parked().await.is_empty());
    // The target was not touched by the purge.
    assert_eq!(
        text_of(&path.b, &path.dst, "c").await.as_deref(),
        Some("small c")
    );
}

#[tokio::test]
async fn lww_parks_the_record_whose_stamped_copy_is_too_large_and_replays_by_version() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local, true).await;
    let big_len = largest_text(&local, &path.cleanup).await;
    // Unstamped at the source: the copy gains rep_version and rep_origin, and no longer fits.
    write_a_big_c_d(&path, big_len).await;
    let replicator = path.run("lww", &[]);
    wait_for_a_c_d_and_parked(&path, 1, &replicator).await;
    assert_eq!(get(&path.b, &path.dst, "big").await, None);
    let copied = get(&path.b, &path.dst, "c").await.expect("c");
    assert_eq!(copied.get("rep_origin"), Some(&s(REGION_A)), "stamped");
    let big = path.parked().await.remove(0);
    assert_eq!(big.change.keys["id"], s("big"));
    assert!(
        big.error
            .contains("Item size has exceeded the maximum allowed size"),
        "{big:?}"
    );
    assert_eq!(replicator.ready().await, Some(200), "the shard goes on");
    assert_eq!(
        replicator.counter("replicator_dead_letters_total").await,
        1.0
    );

    // Hand-made entries: a newer write (applied), an older one (superseded), and one the target
    // still refuses (a key of the wrong type).
    let stamped = |id: &str, version: u64, text: &str| -> Item {
        [
            ("id".to_owned(), s(id)),
            ("text".to_owned(), s(text)),
            ("rep_version".to_owned(), n(version)),
            ("rep_origin".to_owned(), s(REGION_A)),
        ]
        .into()
    };
    let c_version = match copied.get("rep_version") {
        Some(AttributeValue::N(v)) => v.parse::<u64>().expect("a version"),
        other => panic!("c's version: {other:?}"),
    };
    let newer = path
        .park(
            1_000,
            s("c"),
            Some(stamped("c", c_version + 1_000, "newer c")),
        )
        .await;
    let older = path
        .park(1_001, s("d"), Some(stamped("d", 1_000, "older d")))
        .await;
    let mut wrong_key = stamped("e", 1_000, "e");
    wrong_key.insert("id".to_owned(), n(5));
    let refused = path.park(1_002, n(5), Some(wrong_key)).await;

    // This path never ran one-way: a one-way replay (which ignores versions) is refused.
    let wrong_mode = path.dlq(&["replay", "--all", "--mode", "one-way"]);
    assert_eq!(wrong_mode.code, Some(1), "{wrong_mode}");
    assert!(
        wrong_mode.stderr.contains("has never run in one-way mode"),
        "{wrong_mode}"
    );
    assert_eq!(path.parked().await.len(), 4, "nothing was changed");

    let replay = path.dlq(&["replay", "--all", "--mode", "lww"]);
    assert_eq!(replay.code, Some(4), "some remain: {replay}");
    let line = |id: &str| {
        replay
            .stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {replay}"))
            .to_owned()
    };
    assert!(
        line(&big.id()).contains("kept: its images were too large"),
        "{replay}"
    );
    assert!(
        line(&newer.id()).contains("applied: the record's write is applied"),
        "{replay}"
    );
    assert!(
        line(&older.id()).contains("superseded: the target already holds a newer write"),
        "{replay}"
    );
    assert!(
        line(&refused.id()).contains("kept: the target still refuses it: ValidationException"),
        "{replay}"
    );
    assert!(
        replay
            .stdout
            .contains("Replayed 2 of 4 (1 applied, 1 superseded); 2 remain."),
        "{replay}"
    );
    assert!(
        replay.stderr.contains("2 of 4 dead letters remain"),
        "{replay}"
    );
    assert_eq!(
        text_of(&path.b, &path.dst, "c").await.as_deref(),
        Some("newer c")
    );
    assert_eq!(
        text_of(&path.b, &path.dst, "d").await.as_deref(),
        Some("small d")
    );
    let mut left: Vec<String> = path.parked().await.iter().map(DeadLetter::id).collect();
    left.sort();
    let mut expected = vec![big.id(), refused.id()];
    expected.sort();
    assert_eq!(left, expected);
    let purge = path.dlq(&["purge", "--all", "--yes"]);
    assert_eq!(purge.code, Some(0), "{purge}");
    assert!(path.parked().await.is_empty());
}

#[tokio::test]
async fn stop_policy_stops_the_shard_before_the_refused_record() {
    let local = LocalAws::from_env();
    let path = TestPath::create(&local, false).await;
    let big_len = largest_text(&local, &path.cleanup).await;
    write_a_big_c_d(&path, big_len).await;
    // One write at a time, so nothing after the refused record is attempted. (With several in flight,
    // the writes of c and d start beside big's and land, uncheckpointed, before the shard stops.)
    let replicator = path.run(
        "one-way",
        &["--on-refused-record", "stop", "--shard-concurrency", "1"],
    );
    // 503 alone also means "the lease table has not been read yet" right after start: wait for the
    // stopped shard's reason.
    let stopped = eventually(Duration::from_secs(60), || async {
        replicator.stopped_shards().await
    })
    .await;
    assert!(stopped, "the shard stops; log:\n{}", replicator.log());
    assert!(
        replicator
            .log()
            .contains("A write failed for good; the shard is stopped"),
        "{}",
        replicator.log()
    );
    // Still stopped a little later, with nothing after `big` applied.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(replicator.stopped_shards().await, "still stopped");
    assert_eq!(
        text_of(&path.b, &path.dst, "a").await.as_deref(),
        Some("small a")
    );
    for id in ["big", "c", "d"] {
        assert_eq!(
            get(&path.b, &path.dst, id).await,
            None,
            "{id}; log:\n{}",
            replicator.log()
        );
    }
    assert_eq!(
        replicator.counter("replicator_records_applied_total").await,
        1.0,
        "only a"
    );
    assert_eq!(
        replicator.counter("replicator_dead_letters_total").await,
        0.0
    );
    // Nothing was parked: the dead-letter table was never created, and `dlq` says so.
    let list = path.dlq(&["list"]);
    assert_eq!(list.code, Some(1), "{list}");
    assert!(
        list.stderr.contains(&format!(
            "dead-letter table {} does not exist in {REGION_B}: nothing was parked for this path yet",
            path.dead_letter_table
        )),
        "{list}"
    );
}
