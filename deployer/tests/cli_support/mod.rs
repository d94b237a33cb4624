//! Running the deployer binary against the local AWS with deployer/examples/local.toml, its names made
//! unique for the test and its artifact a small zip. Shared by the binary's end-to-end tests.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tworegion_common::test_support::{LocalAws, unique_name};

/// The example config, as shipped.
pub const EXAMPLE: &str = include_str!("../../examples/local.toml");

/// The environment for `deployer local up`: the tests' local AWS, or (`own_aws`) no endpoint, so
/// that `local up` starts the project's moto itself. Returns (variables to set, variables to unset).
pub fn local_up_env(own_aws: bool) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    if own_aws {
        (
            vec![
                ("AWS_ACCESS_KEY_ID", "local".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
            ],
            vec!["AWS_ENDPOINT_URL"],
        )
    } else {
        (LocalAws::from_env().child_env(), vec![])
    }
}

/// One finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON (`--json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `deployer --config CONFIG ARGS` against the local AWS, with extra environment `env`.
pub fn deployer(local: &LocalAws, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployer"));
    command.arg("--config").arg(config).args(args);
    command.env_remove("DEPLOYER_CONFIG");
    for (k, v) in local.child_env() {
        command.env(k, v);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run the deployer");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Fails with the run's output unless it exited with `code`.
pub fn expect(run: &Run, code: i32, what: &str) {
    assert_eq!(
        run.code, code,
        "{what}: exit {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
}

/// `down --yes --allow-data-loss`, which must succeed: a test's clean-up.
// Not every test binary that includes this module needs it.
#[allow(dead_code)]
pub fn down(local: &LocalAws, config: &Path) {
    expect(
        &deployer(local, config, &["down", "--yes", "--allow-data-loss"], &[]),
        0,
        "down",
    );
}

/// `text` with the line that starts with `start` replaced; the line must exist.
pub fn edit(text: &str, start: &str, line: &str) -> String {
    assert!(
        text.lines().any(|l| l.starts_with(start)),
        "the config has no line starting with {start:?}"
    );
    text.lines()
        .map(|l| if l.starts_with(start) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A temporary directory with the config (`tworegion.toml`) and the artifact (`lambda.zip`).
pub struct Workspace {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub app: String,
}

impl Workspace {
    /// A workspace with the example written, its app named uniquely.
    pub fn new() -> Workspace {
        // `w-<pid>-<counter>-<millis>`: the counter keeps tests started in one millisecond apart.
        // Short: the app is part of IAM role names (at most 64 characters).
        let n = unique_name("w");
        let parts: Vec<&str> = n.split('-').collect();
        let app = format!("e{}x{}", parts[2], &parts[3][parts[3].len() - 6..]);
        let dir = std::env::temp_dir().join(unique_name("deployer-cli"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // An empty zip archive: the local AWS stores the code without running it.
        let mut zip = vec![0x50, 0x4b, 0x05, 0x06];
        zip.extend([0u8; 18]);
        std::fs::write(dir.join("lambda.zip"), zip).expect("artifact");
        let config = dir.join("tworegion.toml");
        let w = Workspace { dir, config, app };
        w.write(&w.text());
        w
    }

    /// The example with this workspace's names and artifact.
    pub fn text(&self) -> String {
        let app = &self.app;
        let mut text = edit(EXAMPLE, "app = ", &format!("app = \"{app}\""));
        text = edit(
            &text,
            "domain_name = ",
            &format!("domain_name = \"api.{app}.test\""),
        );
        text = edit(
            &text,
            "hosted_zone = ",
            &format!("hosted_zone = \"{app}.test\""),
        );
        text = edit(
            &text,
            "name = \"todos-local\"",
            &format!("name = \"{app}-todos\""),
        );
        edit(&text, "artifact = ", "artifact = \"lambda.zip\"")
    }

    /// Writes `text` as the config.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.config, text).expect("config");
    }

    /// Writes this workspace's example with each `(line start, replacement)` applied.
    pub fn write_with(&self, edits: &[(&str, String)]) {
        let text = edits
            .iter()
            .fold(self.text(), |text, (start, line)| edit(&text, start, line));
        self.write(&text);
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
