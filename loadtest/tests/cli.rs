//! Bad input to the `loadtest` binary: one line saying what is wrong and how to fix it, exit 1,
//! before any load is sent (nothing listens at the URLs used, and no results directory is made).

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn loadtest(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    c.args(args).env_remove("LT_TEST_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_line_exit_1_and_no_load() {
    let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
    let out = dir.join("out");
    let out_arg = out.display().to_string();
    let base = |extra: &[&'static str]| {
        let mut v: Vec<String> = vec![
            "failover".into(),
            "--url".into(),
            "http://127.0.0.1:9/".into(),
            "--api-key-env".into(),
            "LT_TEST_KEY".into(),
            "--rate".into(),
            "10".into(),
            "--duration".into(),
            "60s".into(),
            "--fault-at".into(),
            "10s".into(),
            "--recover-at".into(),
            "30s".into(),
            "--fault".into(),
            "cmd:true".into(),
            "--out".into(),
            out_arg.clone(),
        ];
        for pair in extra.chunks(2) {
            let (flag, value) = (pair[0], pair[1]);
            match v.iter().position(|a| a == flag) {
                Some(p) => v[p + 1] = value.to_owned(),
                None => {
                    v.push(flag.to_owned());
                    v.push(value.to_owned());
                }
            }
        }
        v
    };
    let key = [("LT_TEST_KEY", "k")];
    for (extra, env, says) in [
        (vec!["--url", "http:///todos"], &key[..], "has no host"),
        (
            vec!["--url", "api.example.com"],
            &key[..],
            "http:// or https://",
        ),
        (
            vec!["--rate", "0"],
            &key[..],
            "--rate 0: give a number of requests per second above 0",
        ),
        (
            vec!["--duration", "20s"],
            &key[..],
            "ends before --recover-at",
        ),
        (
            vec!["--recover-at", "5s"],
            &key[..],
            "is not before --recover-at",
        ),
        (vec![], &[][..], "LT_TEST_KEY is not set"),
        (
            vec!["--fault", "local:meteor"],
            &key[..],
            "is not a fault: use local:outage",
        ),
        (
            vec!["--fault", "local:outage"],
            &key[..],
            "a local fault needs --local",
        ),
        (
            vec!["--write-ratio", "2"],
            &key[..],
            "give a share from 0 to 1",
        ),
        (vec!["--duration", "soon"], &key[..], "--duration"),
        (
            vec!["--lag-samples", "0.5"],
            &key[..],
            "give 0 (no lag samples) or at least 1",
        ),
        (
            vec![
                "--region-url",
                "us-east-1=http://127.0.0.1:9/",
                "--fault-region",
                "eu-west-9",
            ],
            &key[..],
            "--fault-region eu-west-9 is not one of the regions (us-east-1)",
        ),
        (
            vec![],
            &[("LT_TEST_KEY", "k\ny")][..],
            "a header cannot carry",
        ),
    ] {
        let args = base(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = loadtest(&args, env);
        assert_eq!(code, 1, "{extra:?}: exit {code}\nstderr: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{extra:?}: not one line: {stderr}"
        );
        assert!(stdout.is_empty(), "{extra:?}: {stdout}");
        assert!(
            !out.exists(),
            "{extra:?}: results were written for bad input"
        );
    }
    // `--local` without a running environment says how to start one.
    let missing = dir.join("no-env").display().to_string();
    let (code, _, stderr) = loadtest(
        &[
            "run",
            "--local",
            "--local-state-dir",
            &missing,
            "--rate",
            "1",
            "--duration",
            "1s",
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("deployer local up"), "{stderr}");
    // A results directory without results.
    let (code, _, stderr) = loadtest(&["report", &missing], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("results.json"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `loadtest bench-target` on a free loopback port, stopped on drop.
struct Target {
    child: std::process::Child,
    url: String,
}

impl Target {
    fn start() -> Target {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["bench-target", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Target { child, url }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn results(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn a_run_sends_at_the_rate_asked_and_attributes_answers_to_their_region() {
    let target = Target::start();
    let dir = std::env::temp_dir().join(format!("loadtest-run-{}", std::process::id()));
    let out = dir.display().to_string();
    let (code, stdout, stderr) = loadtest(
        &[
            "run",
            "--url",
            &target.url,
            "--api-key-env",
            "LT_TEST_KEY",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--quiet",
            "--out",
            &out,
        ],
        &[("LT_TEST_KEY", "k")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("rate_achieved") || stdout.contains("rate "),
        "{stdout}"
    );
    let r = results(&dir);
    let s = &r["summary"];
    assert_eq!(s["requests"], 600, "{s}");
    assert_eq!(s["succeeded"], 600, "{s}");
    assert_eq!(s["rate_achieved"].as_f64().unwrap(), 200.0, "{s}");
    assert_eq!(r["series"].as_array().unwrap().len(), 3);
    assert!(
        s["latency_ms_by_region"]["bench"]["p50"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert!(s["acked_writes"].as_u64().unwrap() > 100, "{s}");
    assert!(r["completed"].as_bool().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_stops_the_load_undoes_the_fault_and_writes_partial_results() {
    let target = Target::start();
    let dir = std::env::temp_dir().join(format!("loadtest-int-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flag = dir.join("fault-on");
    let out = dir.join("out");
    let inject = format!("cmd:touch {}", flag.display());
    let undo = format!("rm {}", flag.display());
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "failover",
            "--url",
            &target.url,
            "--api-key-env",
            "LT_TEST_KEY",
            "--rate",
            "50",
            "--duration",
            "60s",
            "--fault-at",
            "1s",
            "--recover-at",
            "50s",
            "--fault",
            &inject,
            "--recover-cmd",
            &undo,
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .env("LT_TEST_KEY", "k")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the fault (bounded), then interrupt as Ctrl-C does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !flag.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fault was never injected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!flag.exists(), "the fault was not undone: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let r = results(&out);
    assert_eq!(r["completed"], false);
    assert!(
        r["summary"]["requests"].as_u64().unwrap() > 10,
        "{}",
        r["summary"]
    );
    assert!(
        r["summary"]["requests"].as_u64().unwrap() < 500,
        "the load went on: {}",
        r["summary"]
    );
    assert!(
        r["faults"][0]["undone"].as_str().unwrap().contains("rm "),
        "{}",
        r["faults"]
    );
    assert!(
        std::fs::read_to_string(out.join("report.html"))
            .unwrap()
            .contains("interrupted")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
