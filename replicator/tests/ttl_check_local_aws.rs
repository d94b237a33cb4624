//! The start-up check of the target table's Time to Live and of `--tombstone-ttl`, through the real
//! `replicator` binary against the local AWS: what it logs (JSON lines) for each target set-up.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{StreamViewType, TimeToLiveSpecification};
use serde_json::Value;
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

/// A source with a stream in region A, a target in region B (its TTL as the test sets it), and the
/// name of a lease table the replicator creates; all deleted when the test ends.
struct Path {
    _cleanup: TablesCleanup,
    target: Client,
    src: String,
    dst: String,
    leases: String,
}

impl Path {
    async fn create(local: &LocalAws) -> Path {
        let cleanup = TablesCleanup::new(local);
        let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
        let (src, dst, leases) = (
            unique_name("ttl-src"),
            unique_name("ttl-dst"),
            unique_name("ttl-leases"),
        );
        create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
        cleanup.table(REGION_A, &src);
        create_table(&b, &dst, "id", None).await;
        cleanup.table(REGION_B, &dst);
        cleanup.table(REGION_B, &leases);
        Path {
            _cleanup: cleanup,
            target: b,
            src,
            dst,
            leases,
        }
    }

    /// Enables the target's TTL on `attribute`, and checks that the local AWS reports it so.
    async fn enable_ttl(&self, attribute: &str) {
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(attribute)
            .build()
            .expect("TTL specification");
        self.target
            .update_time_to_live()
            .table_name(&self.dst)
            .time_to_live_specification(spec)
            .send()
            .await
            .expect("update TTL");
        let described = self
            .target
            .describe_time_to_live()
            .table_name(&self.dst)
            .send()
            .await
            .expect("describe TTL");
        let description = described.time_to_live_description().expect("a description");
        assert_eq!(description.attribute_name(), Some(attribute));
    }

    /// Runs the replicator until it has started (so every start-up check ran), stops it with SIGTERM,
    /// and returns its exit status and JSON log lines.
    async fn run(&self, local: &LocalAws, mode: &str, extra: &[&str]) -> Run {
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("ttl-replicator")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("run")
            .args(["--source-region", REGION_A, "--source-table", &self.src])
            .args(["--target-region", REGION_B, "--target-table", &self.dst])
            .args(["--mode", mode, "--lease-table", &self.leases])
            .args(["--metrics-addr", "127.0.0.1:0", "--idle-poll", "200ms"])
            .args(extra)
            .envs(local.child_env())
            .env("REPLICATOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start replicator");
        let mut running = Running { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !running.text().contains("Replicator started.") {
            let exited = running.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the replicator did not start (exit {exited:?}); log:\n{}",
                running.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kill = Command::new("kill")
            .args(["-TERM", &running.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = running.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM; log:\n{}",
                running.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = running.text();
        let lines = text
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect();
        Run {
            status,
            text,
            lines,
        }
    }
}

/// The child process and its log file; the child is killed if a test fails while it runs.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A finished run.
struct Run {
    status: ExitStatus,
    text: String,
    lines: Vec<Value>,
}

impl Run {
    /// The WARN lines whose message mentions `about`.
    fn warnings(&self, about: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["level"] == "WARN")
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(about)))
            .collect()
    }

    /// The one WARN line that mentions `about`.
    fn warning(&self, about: &str) -> &Value {
        let found = self.warnings(about);
        assert_eq!(
            found.len(),
            1,
            "expected one WARN about {about:?}; log:\n{}",
            self.text
        );
        found[0]
    }

    fn assert_clean_exit(&self) {
        assert!(
            self.status.success(),
            "exit {:?} after SIGTERM; log:\n{}",
            self.status,
            self.text
        );
    }
}

const TTL: &str = "Time to Live";

#[tokio::test]
async fn a_target_without_ttl_gets_one_warning_with_the_fix() {
    let local = LocalAws::from_env();
    let path = Path::create(&local).await;
    let run = path.run(&local, "lww", &[]).await;
    run.assert_clean_exit();
    let warning = run.warning(TTL);
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The target table's Time to Live is not enabled"),
        "{message}"
    );
    for consequence in ["never removed", "accumulate", "storage", "scan"] {
        assert!(message.contains(consequence), "{consequence}: {message}");
    }
    assert_eq!(warning["target"], "replicator::startup");
    assert_eq!(warning["table"], format!("{REGION_B}/{}", path.dst));
    assert_eq!(warning["ttl_status"], "DISABLED");
    assert_eq!(warning["expires_attribute"], "rep_expires");
    let fix = warning["fix"].as_str().unwrap_or_default();
    let command = format!(
        "aws dynamodb update-time-to-live --region {REGION_B} --table-name {} \
         --time-to-live-specification Enabled=true,AttributeName=rep_expires",
        path.dst
    );
    assert!(fix.contains(&command), "{fix}");
    assert!(
        fix.contains("ttl_attribute to \"rep_expires\""),
        "names the deployer's setting: {fix}"
    );
}

#[tokio::test]
async fn a_target_with_ttl_on_the_expires_attribute_gets_no_warning() {
    let local = LocalAws::from_env();
    let path = Path::create(&local).await;
    path.enable_ttl("rep_expires").await;
    let run = path.run(&local, "one-way", &[]).await;
    run.assert_clean_exit();
    assert!(run.warnings(TTL).is_empty(), "log:\n{}", run.text);
    assert!(
        run.warnings("--tombstone-ttl").is_empty(),
        "the defaults are long enough; log:\n{}",
        run.text
    );
    // The custom name is the one checked: the same table warns when tombstones use another attribute.
    let run = path
        .run(&local, "one-way", &["--expires-attribute", "gone_at"])
        .await;
    run.assert_clean_exit();
    let warning = run.warning(TTL);
    assert_eq!(warning["ttl_attribute"], "rep_expires");
    assert_eq!(warning["expires_attribute"], "gone_at");
}

#[tokio::test]
async fn a_target_with_ttl_on_another_attribute_gets_a_warning_naming_both() {
    let local = LocalAws::from_env();
    let path = Path::create(&local).await;
    path.enable_ttl("expires_at").await;
    let run = path.run(&local, "lww", &[]).await;
    run.assert_clean_exit();
    let warning = run.warning(TTL);
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "The target table's Time to Live is enabled on an attribute other than the expires attribute"
        ),
        "{message}"
    );
    assert_eq!(warning["table"], format!("{REGION_B}/{}", path.dst));
    assert_eq!(warning["ttl_attribute"], "expires_at");
    assert_eq!(warning["expires_attribute"], "rep_expires");
    let fix = warning["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("Enabled=false,AttributeName=expires_at"),
        "{fix}"
    );
    assert!(
        fix.contains("Enabled=true,AttributeName=rep_expires"),
        "{fix}"
    );
    assert!(fix.contains("--expires-attribute expires_at"), "{fix}");
}

#[tokio::test]
async fn a_tombstone_ttl_shorter_than_a_stalled_replay_gets_a_warning() {
    let local = LocalAws::from_env();
    let path = Path::create(&local).await;
    path.enable_ttl("rep_expires").await;
    let run = path
        .run(
            &local,
            "one-way",
            &["--tombstone-ttl", "25h", "--stall-timeout", "2h"],
        )
        .await;
    run.assert_clean_exit();
    assert!(run.warnings(TTL).is_empty(), "log:\n{}", run.text);
    let warning = run.warning("--tombstone-ttl");
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(message.contains("re-create the deleted item"), "{message}");
    assert_eq!(warning["tombstone_ttl"], "90000s");
    // 24 h + 2 x 10 s (the default lease duration) + 2 h.
    assert_eq!(warning["minimum"], "93620s");
    assert!(
        warning["fix"]
            .as_str()
            .is_some_and(|f| f.contains("at least 93620s")),
        "{warning}"
    );
}
