//! The binary's configuration errors, before it reaches any AWS.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sample-app"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--region",
            "us-east-1",
            "--table",
            "todos",
            "--api-key",
            "cli-test-api-key-0123456789",
        ])
        .args(extra)
        .env_remove("SAMPLE_APP_PARTITION_KEY")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_partition_key_name_is_checked() {
    let (ok, stderr) = run(&["--partition-key", "text"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "--partition-key: \"text\" is an attribute the app writes itself; name the table's key attribute"
        ),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--partition-key", ""]);
    assert!(!ok);
    assert!(
        stderr.contains("--partition-key: must have 1 to 255 bytes"),
        "{stderr}"
    );
}
