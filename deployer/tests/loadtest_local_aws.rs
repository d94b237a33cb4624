//! `loadtest failover` against the local two-region environment, with the real binaries on loopback
//! (the `loadtest` binary is found beside the deployer's, as `scripts/test` builds every binary):
//!
//! - lww, `local:outage` of the primary: `rto_seconds` is reported and below interval x threshold +
//!   TTL + 10 s (and `--max-rto` with that bound exits 0), writes the primary acknowledged just before
//!   the outage are missing from the survivor (`missing_after_failover` > 0, with a 2 s cross-region
//!   delay stranding them), and after recovery nothing acknowledged is missing from the primary
//!   (`missing_after_failback` = 0, also as a `--max-missing-after-failback 0` gate);
//! - `aws:lambda-concurrency-zero` through the SDK against the tests' local AWS: reserved
//!   concurrency 0 at the fault, removed again at recovery;
//! - one-way, the same outage: the figures are reported (writes the secondary acknowledged during
//!   the failover are not replicated back in one-way mode, and the report says so);
//! - `aws:invert-health-check` through the SDK against the one-way environment's local AWS: Route
//!   53's health check is inverted at the fault and restored at recovery, and DNS moves (an AWS fault
//!   naming a health check that does not exist is refused before any load);
//! - both results validate against `loadtest/results.schema.json` (the project's Python jsonschema)
//!   and report.html is a self-contained page (no scripts, no external fetches) with its charts;
//!   `loadtest report` renders the same page again and `loadtest merge` of two runs adds up.
//!
//! Both environments run at once (the lww one on the tests' local AWS, the one-way one starting its
//! own), so the test takes about as long as one.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::{Workspace, edit};
use serde_json::Value;
use tworegion_common::test_support::{LocalAws, REGION_A};

const INTERVAL: f64 = 10.0;
const THRESHOLD: f64 = 1.0;
const TTL: f64 = 5.0;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let deployer = PathBuf::from(env!("CARGO_BIN_EXE_deployer"));
    let path = deployer.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build every binary first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    unset: &[&str],
) -> (i32, String, String) {
    let mut c = Command::new(program);
    c.args(args);
    for k in ["DEPLOYER_CONFIG", "DEPLOYER_LOCAL_STATE"]
        .iter()
        .chain(unset)
    {
        c.env_remove(k);
    }
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

/// An environment (stopped on drop).
struct Env {
    w: Workspace,
    state: PathBuf,
    status: Value,
}

impl Env {
    fn up(mode: &str, own_aws: bool) -> Env {
        let w = Workspace::new();
        let mut text = w.text();
        text = edit(&text, "interval = ", &format!("interval = {INTERVAL}"));
        text = edit(
            &text,
            "failure_threshold = ",
            &format!("failure_threshold = {THRESHOLD}"),
        );
        text = edit(
            &text,
            "record_style = ",
            &format!("record_style = \"cname\"\nttl = {TTL}"),
        );
        text = edit(&text, "mode = \"lww\"", &format!("mode = \"{mode}\""));
        // Long enough that writes acknowledged just before the outage are still on their way.
        text.push_str("\n[local]\ncross_region_delay = \"2s\"\n");
        w.write(&text);
        let state = w.dir.join("state");
        let (env, unset) = cli_support::local_up_env(own_aws);
        let config = w.config.display().to_string();
        let state_arg = state.display().to_string();
        let (code, stdout, stderr) = run(
            &bin("deployer"),
            &[
                "--config",
                &config,
                "--json",
                "local",
                "--state-dir",
                &state_arg,
                "up",
                "--detach",
            ],
            &env,
            &unset,
        );
        assert_eq!(
            code, 0,
            "{mode}: local up\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        Env {
            status: serde_json::from_str(&stdout).unwrap(),
            w,
            state,
        }
    }

    /// `deployer --config C --json local --state-dir S <args>`: (exit code, stdout, stderr).
    fn local(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.w.config.display().to_string();
        let state = self.state.display().to_string();
        let mut all = vec![
            "--config",
            &config,
            "--json",
            "local",
            "--state-dir",
            &state,
        ];
        all.extend_from_slice(args);
        run(&bin("deployer"), &all, &[], &[])
    }

    /// The ID of the region's endpoint health check (the child of the switch its DNS record uses)
    /// from the live status (the checkers may not have reported yet when `up` returns: asked again
    /// for up to 30 s).
    fn health_check_id(&self, region: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (code, stdout, stderr) = self.local(&["status"]);
            assert_eq!(code, 0, "local status: {stderr}");
            let status: Value = serde_json::from_str(&stdout).unwrap();
            if let Some(id) = status["regions"][region]["endpoint_check"]["id"].as_str() {
                return id.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no health check for {region} in the status after 30 s: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    fn loadtest(&self, out: &Path, extra: &[&str], env: &[(&str, String)]) -> (i32, Value, String) {
        self.loadtest_timed(out, ("50s", "8s", "28s"), extra, env)
    }

    /// `loadtest failover` with (duration, fault at, recover at).
    fn loadtest_timed(
        &self,
        out: &Path,
        (duration, fault_at, recover_at): (&str, &str, &str),
        extra: &[&str],
        env: &[(&str, String)],
    ) -> (i32, Value, String) {
        let state = self.state.display().to_string();
        let out_arg = out.display().to_string();
        let mut args = vec![
            "failover",
            "--local",
            "--local-state-dir",
            &state,
            "--rate",
            "20",
            "--duration",
            duration,
            "--fault-at",
            fault_at,
            "--recover-at",
            recover_at,
            "--out",
            &out_arg,
            "--quiet",
            // Two environments, each with its own local AWS, share two cores: at the default 5 a
            // second, the lag samples' reads (each polls the other region until it holds the
            // write) were the largest share of the local AWS's calls and slowed the apps they
            // measure.
            "--lag-samples",
            "2",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run(&bin("loadtest"), &args, env, &[]);
        let file = out.join("results.json");
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    file.display()
                )
            }))
            .unwrap();
        (
            code,
            results,
            format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed assertion leaves no state folder to read afterwards: show why the environment
        // may have stopped (the supervisor's log names the part that exited and its last lines).
        if std::thread::panicking() {
            let log = self.state.join("local.log");
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- the last lines of {} ---\n{}",
                log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let config = self.w.config.display().to_string();
        let state = self.state.display().to_string();
        let _ = run(
            &bin("deployer"),
            &["--config", &config, "local", "--state-dir", &state, "down"],
            &[],
            &[],
        );
    }
}

/// Validates `results.json` against the schema with the project's Python (jsonschema comes with
/// moto[server] in .venv).
fn validate(out: &Path) {
    let python = root().join(".venv/bin/python");
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1]));d=json.load(open(sys.argv[2]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        errs=[f'{list(e.path)}: {e.message}' for e in jsonschema.Draft202012Validator(s).iter_errors(d)]\n\
        print('\\n'.join(errs));sys.exit(1 if errs else 0)\n";
    let schema = root().join("loadtest/results.schema.json");
    let out_file = out.join("results.json");
    let (code, stdout, stderr) = run(
        &python,
        &[
            "-c",
            script,
            &schema.display().to_string(),
            &out_file.display().to_string(),
        ],
        &[],
        &[],
    );
    assert_eq!(
        code, 0,
        "results.json does not follow its schema:\n{stdout}{stderr}"
    );
}

/// Checks report.html: a whole page that fetches nothing, with its three charts and the fault marked.
fn check_report(out: &Path) {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for forbidden in ["<script", "<link", "src=", "@import", "url("] {
        assert!(
            !html.contains(forbidden),
            "report.html contains {forbidden:?}"
        );
    }
    assert_eq!(html.matches("<svg").count(), 3, "three charts");
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert!(
        html.matches("fault local:outage").count() >= 3,
        "the fault on every chart"
    );
    assert!(html.contains("recovery"));
    // Well-formed enough for a strict parser: Python's HTML parser sees balanced tags.
    let python = root().join(".venv/bin/python");
    let script = "import sys\nfrom html.parser import HTMLParser\n\
        void={'meta','br','img','input','hr','line','circle','polyline','i'}\n\
        class P(HTMLParser):\n  def __init__(s):\n    super().__init__();s.stack=[];s.bad=[]\n  \
        def handle_starttag(s,t,a):\n    (t in void) or s.stack.append(t)\n  \
        def handle_startendtag(s,t,a):\n    pass\n  \
        def handle_endtag(s,t):\n    if t in void: return\n    \
        (s.stack and s.stack[-1]==t and s.stack.pop()) or s.bad.append(t)\n\
        p=P();p.feed(open(sys.argv[1]).read());\n\
        sys.exit(0 if not p.stack and not p.bad else print(p.stack,p.bad) or 1)\n";
    let (code, stdout, stderr) = run(
        &python,
        &["-c", script, &out.join("report.html").display().to_string()],
        &[],
        &[],
    );
    assert_eq!(code, 0, "report.html is not balanced:\n{stdout}{stderr}");
}

fn num(v: &Value, key: &str) -> f64 {
    v["summary"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("summary.{key} is not a number: {}", v["summary"]))
}

#[test]
fn failover_under_load_measures_rto_loss_and_failback_in_both_modes() {
    let bound = INTERVAL * THRESHOLD + TTL + 10.0;
    let lww = std::thread::spawn(move || {
        let env = Env::up("lww", false);
        // An AWS fault naming a health check that does not exist is refused before any load.
        let state = env.state.display().to_string();
        let aws = env.status["local_aws"].as_str().unwrap().to_owned();
        let (code, stdout, stderr) = run(
            &bin("loadtest"),
            &[
                "failover",
                "--local",
                "--local-state-dir",
                &state,
                "--rate",
                "5",
                "--duration",
                "50s",
                "--fault-at",
                "8s",
                "--recover-at",
                "28s",
                "--fault",
                "aws:invert-health-check",
                "--health-check-id",
                "no-such-check",
                "--aws-endpoint-url",
                &aws,
                "--quiet",
            ],
            &LocalAws::from_env().child_env(),
            &[],
        );
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            stderr.contains("--health-check-id no-such-check"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let out = env.w.dir.join("lww");
        let max_rto = bound.to_string();
        let (code, r, log) = env.loadtest(
            &out,
            &[
                "--fault",
                "local:outage",
                "--catch-up",
                "40s",
                "--max-rto",
                &max_rto,
                "--max-missing-after-failback",
                "0",
            ],
            &[],
        );
        assert_eq!(code, 0, "lww: {log}\n{}", r["summary"]);
        let rto = num(&r, "rto_seconds");
        assert!(
            rto <= bound,
            "rto {rto} s above {bound} s: {}",
            r["summary"]
        );
        assert!(num(&r, "detected_seconds") <= rto + 1.0, "{}", r["summary"]);
        assert!(
            num(&r, "missing_after_failover") > 0.0,
            "nothing stranded: {}",
            r["summary"]
        );
        assert!(num(&r, "rpo_seconds") > 0.0, "{}", r["summary"]);
        assert_eq!(num(&r, "missing_after_failback"), 0.0, "{}", r["summary"]);
        assert!(num(&r, "checked_after_failback") > 50.0, "{}", r["summary"]);
        assert_eq!(r["summary"]["failed_region"], REGION_A);
        assert!(
            r["summary"]["failed"]["connect"].as_u64().unwrap() > 0,
            "the outage refused connections"
        );
        assert!(
            r["summary"]["replication_lag_ms"]["samples"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(num(&r, "failback_seconds") <= bound, "{}", r["summary"]);
        assert_eq!(r["faults"][0]["kind"], "local:outage");
        assert!(
            r["faults"][0]["undone_at"].as_f64().is_some(),
            "the fault was undone"
        );
        assert!(
            r["dns_changes"].as_array().unwrap().len() >= 2,
            "DNS moved and came back"
        );
        validate(&out);
        check_report(&out);
        // `report` renders the same page again; `merge` of a run with itself doubles the counts.
        let before = std::fs::read_to_string(out.join("report.html")).unwrap();
        let out_s = out.display().to_string();
        let (code, _, stderr) = run(&bin("loadtest"), &["report", &out_s], &[], &[]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            std::fs::read_to_string(out.join("report.html")).unwrap(),
            before
        );
        let merged = env.w.dir.join("merged");
        let merged_s = merged.display().to_string();
        let (code, _, stderr) = run(
            &bin("loadtest"),
            &["merge", &out_s, &out_s, "--out", &merged_s],
            &[],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(merged.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(
            m["summary"]["requests"].as_u64(),
            r["summary"]["requests"].as_u64().map(|n| n * 2)
        );
        assert_eq!(m["agents"], 2);
        validate(&merged);

        // aws:lambda-concurrency-zero through the SDK against the tests' local AWS: the primary's
        // function gets reserved concurrency 0 at the fault, and loses it again at recovery (the
        // local environment runs the app as a process, so this one moves no traffic).
        let function = format!("{}-local-api", env.w.app);
        let endpoint = env.status["local_aws"].as_str().unwrap().to_owned();
        let out = env.w.dir.join("lambda");
        let (code, r, log) = env.loadtest_timed(
            &out,
            ("6s", "1s", "3s"),
            &[
                "--fault",
                "aws:lambda-concurrency-zero",
                "--function",
                &function,
                "--fault-region",
                REGION_A,
                "--aws-endpoint-url",
                &endpoint,
                "--catch-up",
                "1s",
            ],
            &LocalAws::from_env().child_env(),
        );
        assert_eq!(code, 0, "lambda fault: {log}");
        let changed = r["faults"][0]["changed"].as_str().unwrap();
        assert!(
            changed.contains("reserved concurrency none -> 0"),
            "{changed}"
        );
        let undone = r["faults"][0]["undone"].as_str().unwrap();
        assert!(
            undone.contains("reserved concurrency removed again"),
            "{undone}"
        );
    });
    let one_way = std::thread::spawn(move || {
        let env = Env::up("one-way", true);
        let out = env.w.dir.join("one-way");
        let (code, r, log) =
            env.loadtest(&out, &["--fault", "local:outage", "--catch-up", "10s"], &[]);
        assert_eq!(code, 0, "one-way: {log}");
        assert_eq!(r["settings"]["mode"], "one-way");
        let rto = num(&r, "rto_seconds");
        assert!(
            rto <= bound,
            "rto {rto} s above {bound} s: {}",
            r["summary"]
        );
        assert!(
            num(&r, "missing_after_failover") > 0.0,
            "nothing stranded: {}",
            r["summary"]
        );
        // Reported; in one-way mode the secondary's writes during the failover stay there.
        num(&r, "missing_after_failback");
        num(&r, "stale_after_failback");
        validate(&out);
        check_report(&out);

        // An AWS fault through the SDK, against the environment's local AWS: the primary's Route 53
        // health check is inverted at the fault (the checkers then read it unhealthy and DNS
        // moves) and restored at recovery.
        let check_id = env.health_check_id(REGION_A);
        let aws = env.status["local_aws"].as_str().unwrap().to_owned();
        let creds = vec![
            ("AWS_ACCESS_KEY_ID", "local".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
        ];
        let out = env.w.dir.join("aws");
        let (code, r, log) = env.loadtest_timed(
            &out,
            ("40s", "5s", "25s"),
            &[
                "--fault",
                "aws:invert-health-check",
                "--health-check-id",
                &check_id,
                "--aws-endpoint-url",
                &aws,
                "--catch-up",
                "5s",
            ],
            &creds,
        );
        assert_eq!(code, 0, "aws fault: {log}");
        let changed = r["faults"][0]["changed"].as_str().unwrap();
        assert!(changed.contains("inverted false -> true"), "{changed}");
        assert!(
            r["faults"][0]["undone"]
                .as_str()
                .unwrap()
                .contains("inverted back to false"),
            "{}",
            r["faults"]
        );
        assert!(num(&r, "dns_moved_seconds") <= bound, "{}", r["summary"]);
        validate(&out);
    });
    let a = lww.join();
    let b = one_way.join();
    if let Err(e) = a {
        std::panic::resume_unwind(e);
    }
    if let Err(e) = b {
        std::panic::resume_unwind(e);
    }
}
