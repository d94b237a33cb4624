//! `replicator run --config FILE` against the local AWS: one process runs three paths (both directions
//! of one table in lww mode, and a second table one-way), all of them converge, and `/metrics` reports
//! each path's metrics under its `path` label in one exposition. A path that fails its start-up checks
//! stops the process before anything runs, naming the path.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, free_port, http_get, unique_name,
};
use tworegion_common::version::{HybridClock, Version};

type Items = BTreeMap<String, BTreeMap<String, AttributeValue>>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

async fn scan(client: &Client, table: &str) -> Items {
    let out = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan");
    assert!(out.last_evaluated_key.is_none(), "one page is enough here");
    out.items()
        .iter()
        .map(|item| {
            let AttributeValue::S(id) = &item["id"] else {
                panic!("id is a string")
            };
            (id.clone(), item.clone().into_iter().collect())
        })
        .collect()
}

/// Stamps and writes `id` in `region` unless that region already holds a newer version (the sample
/// app's rule). Returns the version written, if it was.
async fn stamped_put(
    client: &Client,
    table: &str,
    region: &str,
    clock: &HybridClock,
    id: &str,
) -> Option<Version> {
    let version = clock.now();
    client
        .put_item()
        .table_name(table)
        .item("id", s(id))
        .item("rep_version", AttributeValue::N(version.to_string()))
        .item("rep_origin", s(region))
        .item("text", s(&format!("from {region}")))
        .condition_expression("attribute_not_exists(rep_version) OR rep_version < :v")
        .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
        .send()
        .await
        .ok()
        .map(|_| version)
}

fn path_table(source: (&str, &str), target: (&str, &str), mode: &str) -> String {
    format!(
        "[[path]]\nsource-region = \"{}\"\nsource-table = \"{}\"\ntarget-region = \"{}\"\n\
         target-table = \"{}\"\nmode = \"{mode}\"\n\n",
        source.0, source.1, target.0, target.1
    )
}

fn write_config(text: &str) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("paths")));
    std::fs::write(&file, text).expect("write the config");
    file
}

#[tokio::test]
async fn one_process_runs_three_paths_with_per_path_metrics() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let (todos, users, copy, leases) = (
        unique_name("todos"),
        unique_name("users"),
        unique_name("users-copy"),
        unique_name("leases"),
    );
    for (client, region) in [(&a, REGION_A), (&b, REGION_B)] {
        create_table(client, &todos, "id", Some(StreamViewType::NewAndOldImages)).await;
        cleanup.table(region, &todos);
        cleanup.table(region, &leases);
    }
    create_table(&a, &users, "id", Some(StreamViewType::NewAndOldImages)).await;
    cleanup.table(REGION_A, &users);
    create_table(&b, &copy, "id", None).await;
    cleanup.table(REGION_B, &copy);

    let port = free_port();
    let config = write_config(&format!(
        "lease-table = \"{leases}\"\nmetrics-addr = \"127.0.0.1:{port}\"\nworker-id = \"paths-test\"\n\
         idle-poll = \"200ms\"\n\n{}{}{}",
        path_table((REGION_A, &todos), (REGION_B, &todos), "lww"),
        path_table((REGION_B, &todos), (REGION_A, &todos), "lww"),
        path_table((REGION_A, &users), (REGION_B, &copy), "one-way"),
    ));
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("paths")));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_replicator"))
        .args(["run", "--config", &config.display().to_string()])
        .envs(local.child_env())
        .env("REPLICATOR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("start replicator");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Writers in both regions of `todos` (k5..k9 written in both), and on `users` in A only.
    let (clock_a, clock_b) = (HybridClock::default(), HybridClock::default());
    let mut written: BTreeMap<String, (Version, &str)> = BTreeMap::new();
    for (client, region, clock, keys) in [
        (&a, REGION_A, &clock_a, 0..10),
        (&b, REGION_B, &clock_b, 5..15),
    ] {
        for k in keys {
            let id = format!("k{k}");
            if let Some(v) = stamped_put(client, &todos, region, clock, &id).await {
                let best = written.entry(id).or_insert((v, region));
                if (v, region) > *best {
                    *best = (v, region);
                }
            }
        }
    }
    for i in 0..12 {
        a.put_item()
            .table_name(&users)
            .item("id", s(&format!("u{i}")))
            .item("name", s(&format!("user {i}")))
            .send()
            .await
            .expect("put");
    }
    a.delete_item()
        .table_name(&users)
        .key("id", s("u3"))
        .send()
        .await
        .expect("delete");

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ta, tb) = (scan(&a, &todos).await, scan(&b, &todos).await);
        let winners: BTreeMap<String, (Version, String)> = ta
            .iter()
            .filter_map(|(id, item)| {
                let AttributeValue::N(v) = item.get("rep_version")? else {
                    return None;
                };
                let AttributeValue::S(o) = item.get("rep_origin")? else {
                    return None;
                };
                Some((id.clone(), (Version::parse(v)?, o.clone())))
            })
            .collect();
        let expected: BTreeMap<String, (Version, String)> = written
            .iter()
            .map(|(id, (v, o))| (id.clone(), (*v, (*o).to_owned())))
            .collect();
        let live_copy: Items = scan(&b, &copy)
            .await
            .into_iter()
            .filter(|(_, item)| item.get("rep_deleted") != Some(&AttributeValue::Bool(true)))
            .map(|(id, mut item)| {
                item.remove(replicator::apply::target::FENCE_ATTRIBUTE);
                (id, item)
            })
            .collect();
        if ta == tb && winners == expected && live_copy == scan(&a, &users).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paths did not converge within 90 s:\ntodos in A: {}, in B: {}, winners right: {}; \
             users copy right: {}\nlog:\n{}",
            ta.len(),
            tb.len(),
            winners == expected,
            live_copy == scan(&a, &users).await,
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // One exposition: each family declared once, every path's samples under its label.
    let (status, body) = http_get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    let text = &body[body.find("\r\n\r\n").expect("headers") + 4..];
    for header in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert_eq!(
            text.lines().filter(|l| l == &header).count(),
            1,
            "{header} declared twice:\n{text}"
        );
    }
    let applied = |source: &str, target: &str| -> f64 {
        let prefix = format!("replicator_records_applied_total{{path=\"{source} > {target}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    assert!(
        applied(
            &format!("{REGION_A}/{todos}"),
            &format!("{REGION_B}/{todos}")
        ) >= 5.0
    );
    assert!(
        applied(
            &format!("{REGION_B}/{todos}"),
            &format!("{REGION_A}/{todos}")
        ) >= 5.0
    );
    assert_eq!(
        applied(
            &format!("{REGION_A}/{users}"),
            &format!("{REGION_B}/{copy}")
        ),
        13.0,
        "12 puts and a delete"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("replicator_records_read_total ")),
        "every sample carries its path:\n{text}"
    );
    let ready = http_get(port, "/readyz").await.expect("/readyz answers");
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(read_log().matches("Replicator started.").count(), 3);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "stops cleanly: {exit}\n{}", read_log());
    // Every path released its leases on the way out (each path's lease table is in its target's
    // region: both regions hold rows).
    for client in [&a, &b] {
        let rows = client
            .scan()
            .table_name(&leases)
            .consistent_read(true)
            .send()
            .await
            .expect("scan leases");
        assert!(rows.count > 0, "the lease table has rows");
        for row in rows.items() {
            assert!(
                !matches!(row.get("owner"), Some(AttributeValue::S(o)) if o == "paths-test"),
                "a lease still held after the stop: {row:?}"
            );
        }
    }
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn a_path_that_fails_its_checks_stops_the_process_before_any_starts() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let (a, b) = (local.dynamodb(REGION_A), local.dynamodb(REGION_B));
    let (src, dst, leases) = (
        unique_name("ok-src"),
        unique_name("ok-dst"),
        unique_name("leases"),
    );
    create_table(&a, &src, "id", Some(StreamViewType::NewAndOldImages)).await;
    cleanup.table(REGION_A, &src);
    create_table(&b, &dst, "id", None).await;
    cleanup.table(REGION_B, &dst);
    cleanup.table(REGION_B, &leases);
    let missing = unique_name("no-such-table");
    let config = write_config(&format!(
        "lease-table = \"{leases}\"\nmetrics-addr = \"127.0.0.1:0\"\n\n{}{}",
        path_table((REGION_A, &src), (REGION_B, &dst), "one-way"),
        path_table((REGION_A, &missing), (REGION_B, &dst), "one-way"),
    ));
    let out = tokio::task::spawn_blocking({
        let (config, env) = (config.clone(), local.child_env());
        move || {
            Command::new(env!("CARGO_BIN_EXE_replicator"))
                .args(["run", "--config", &config.display().to_string()])
                .envs(env)
                .env("REPLICATOR_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .output()
                .expect("run replicator")
        }
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let named = format!("error: path {REGION_A}/{missing} > {REGION_B}/{dst}: ");
    assert!(stderr.contains(&named), "{named:?} not in:\n{stderr}");
    assert!(
        !stderr.contains("Replicator started."),
        "no path starts when one fails its checks:\n{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}

/// What clap's environment variables would do to a file: nothing. A `REPLICATOR_*` variable or a
/// flag beside `--config` is refused, said with where it came from (no local AWS needed).
#[test]
fn the_file_and_the_flags_or_their_variables_do_not_mix() {
    let config = write_config(&path_table((REGION_A, "todos"), (REGION_B, "todos"), "lww"));
    let file = config.display().to_string();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_replicator"))
            .args(args)
            .env_remove("REPLICATOR_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run replicator");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(
        &["run", "--config", &file],
        &[("REPLICATOR_MODE", "one-way")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "REPLICATOR_MODE is set, but with --config every setting comes from the file"
        ),
        "{stderr}"
    );
    let (code, stderr) = run(
        &["run", "--source-region", REGION_A],
        &[("REPLICATOR_CONFIG", &file)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("REPLICATOR_CONFIG is set, so `run` takes its paths from that file and not from --source-region"),
        "{stderr}"
    );
    let (code, stderr) = run(&["run", "--config", &file, "--batch-size", "5"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--batch-size cannot be given with --config"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}
