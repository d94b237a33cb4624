//! Tables in other accounts, through the real binary against the local AWS: `replicator run` reaches the
//! source (and its stream) through `--source-role-arn` and the target through `--target-role-arn` with
//! an external ID, the lease table with the process's own credentials, and replicates; `verify` takes
//! the same flags.
//!
//! The local AWS keeps one set of tables per account and files the credentials that STS AssumeRole
//! returns under the role's account, so a table created with a role's credentials exists only for
//! callers with that account's credentials: a replicator that ignored a role flag would not find it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B, create_table, unique_name};

const SOURCE_ROLE: &str = "arn:aws:iam::111111111111:role/tworegion-source";
const TARGET_ROLE: &str = "arn:aws:iam::222222222222:role/tworegion-target";

/// `local`'s configuration for `region` with the credentials of `role` (STS AssumeRole).
async fn as_role(
    local: &LocalAws,
    region: &str,
    role: &str,
    external_id: Option<&str>,
) -> SdkConfig {
    // Loaded as the binaries load theirs (a time source and a sleep included), on the local AWS with
    // the tests' own credentials.
    let own = local.sdk_config(region);
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(local.endpoint())
        .credentials_provider(own.credentials_provider().expect("test credentials"))
        .load()
        .await;
    let mut provider = aws_config::sts::AssumeRoleProvider::builder(role)
        .session_name("tworegion-test")
        .configure(&base);
    if let Some(id) = external_id {
        provider = provider.external_id(id);
    }
    let provider = provider.build().await;
    base.into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .build()
}

async fn get(client: &Client, table: &str, id: &str) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key("id", AttributeValue::S(id.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get_item")
        .item
}

struct Running(Child);

impl Running {
    /// `replicator run --mode one-way` with `args` against the local AWS, logging JSON to `log`.
    fn start(local: &LocalAws, args: &[&str], log: std::fs::File) -> Running {
        Running(
            Command::new(env!("CARGO_BIN_EXE_replicator"))
                .args(["run", "--mode", "one-way", "--metrics-addr", "127.0.0.1:0"])
                .args(args)
                .envs(local.child_env())
                .env("REPLICATOR_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start replicator"),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tables_in_other_accounts_are_reached_through_assumed_roles() {
    let local = LocalAws::from_env();
    let source = Client::new(&as_role(&local, REGION_A, SOURCE_ROLE, None).await);
    let target = Client::new(&as_role(&local, REGION_B, TARGET_ROLE, Some("tworegion-ext")).await);
    let own_b = local.dynamodb(REGION_B);
    let (src, dst, leases) = (
        unique_name("xacct-src"),
        unique_name("xacct-dst"),
        unique_name("xacct-leases"),
    );
    create_table(&source, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&target, &dst, "id", None).await;
    // The accounts are apart: the process's own credentials do not see the target's table.
    assert!(
        own_b
            .describe_table()
            .table_name(&dst)
            .send()
            .await
            .is_err(),
        "the target table must exist only in the target role's account"
    );

    let path = [
        "--source-region",
        REGION_A,
        "--source-table",
        &src,
        "--target-region",
        REGION_B,
        "--target-table",
        &dst,
        "--lease-table",
        &leases,
        "--source-role-arn",
        SOURCE_ROLE,
        "--target-role-arn",
        TARGET_ROLE,
        "--target-external-id",
        "tworegion-ext",
    ];
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("xacct")));
    let file = std::fs::File::create(&log).expect("log file");
    let mut running = Running::start(
        &local,
        &[&path[..], &["--start-position", "trim-horizon"]].concat(),
        file,
    );
    for i in 0..10 {
        source
            .put_item()
            .table_name(&src)
            .item("id", AttributeValue::S(format!("todo-{i}")))
            .item("text", AttributeValue::S(format!("text {i}")))
            .send()
            .await
            .expect("put into the source account's table");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut copied = 0;
    while Instant::now() < deadline {
        copied = 0;
        for i in 0..10 {
            if get(&target, &dst, &format!("todo-{i}")).await.is_some() {
                copied += 1;
            }
        }
        if copied == 10 {
            break;
        }
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!(
                "the replicator exited ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    drop(running);
    assert_eq!(
        copied, 10,
        "replicated into the target account; log:\n{text}"
    );
    for (what, role) in [("source", SOURCE_ROLE), ("target", TARGET_ROLE)] {
        assert!(
            text.lines().any(|line| line
                .contains(&format!("The {what} is reached through an assumed role."))
                && line.contains(role)),
            "the log names the {what} role; log:\n{text}"
        );
    }
    // The lease table is in the process's own account.
    assert!(
        own_b
            .describe_table()
            .table_name(&leases)
            .send()
            .await
            .is_ok(),
        "the lease table is reached with the process's own credentials"
    );

    // verify takes the same flags, and without the target role it cannot find the table.
    let verify = |flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_replicator"))
            .arg("verify")
            .args(flags)
            .args(["--mode", "one-way", "--recheck-after", "0s"])
            .envs(local.child_env())
            .stdin(Stdio::null())
            .output()
            .expect("run replicator verify")
    };
    let equal = verify(&path);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&equal.stdout),
        String::from_utf8_lossy(&equal.stderr)
    );
    assert_eq!(equal.status.code(), Some(0), "{out}");
    assert!(out.contains("the source has 10 items"), "{out}");
    let without_role: Vec<&str> = path[..path.len() - 4].to_vec();
    let refused = verify(&without_role);
    let out = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains(&dst), "the error names the table: {out}");

    let _ = source.delete_table().table_name(&src).send().await;
    let _ = target.delete_table().table_name(&dst).send().await;
    let _ = own_b.delete_table().table_name(&leases).send().await;
}

/// `--lease-role-arn`: the lease table (created at start when missing) lives in the lease role's
/// account, while the source and target are the process's own; the replicator replicates and keeps
/// its leases there.
#[tokio::test]
async fn the_lease_table_is_reached_through_its_role() {
    const LEASE_ROLE: &str = "arn:aws:iam::333333333333:role/tworegion-leases";
    let local = LocalAws::from_env();
    let (own_a, own_b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let leases_account =
        Client::new(&as_role(&local, REGION_B, LEASE_ROLE, Some("lease-ext")).await);
    let (src, dst, leases) = (
        unique_name("xlease-src"),
        unique_name("xlease-dst"),
        unique_name("xlease-leases"),
    );
    create_table(&own_a, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
    create_table(&own_b, &dst, "id", None).await;
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("xlease")));
    let file = std::fs::File::create(&log).expect("log file");
    let running = Running::start(
        &local,
        &[
            "--source-region",
            REGION_A,
            "--source-table",
            &src,
            "--target-region",
            REGION_B,
            "--target-table",
            &dst,
            "--lease-table",
            &leases,
            "--lease-role-arn",
            LEASE_ROLE,
            "--lease-external-id",
            "lease-ext",
        ],
        file,
    );
    own_a
        .put_item()
        .table_name(&src)
        .item("id", AttributeValue::S("todo-1".to_owned()))
        .send()
        .await
        .expect("put");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&own_b, &dst, "todo-1").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "not replicated; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rows = leases_account
        .scan()
        .table_name(&leases)
        .consistent_read(true)
        .send()
        .await
        .expect("the lease table is in the lease role's account");
    assert!(rows.count > 0, "leases and checkpoints are kept there");
    assert!(
        own_b
            .describe_table()
            .table_name(&leases)
            .send()
            .await
            .is_err(),
        "and not in the process's own account"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines().any(
            |l| l.contains("The lease table is reached through an assumed role.")
                && l.contains(LEASE_ROLE)
        ),
        "{text}"
    );
    drop(running);
    let _ = own_a.delete_table().table_name(&src).send().await;
    let _ = own_b.delete_table().table_name(&dst).send().await;
    let _ = leases_account
        .delete_table()
        .table_name(&leases)
        .send()
        .await;
    let _ = std::fs::remove_file(&log);
}
