//! The binary must run on AWS Lambda's provided.al2023 runtime: no glibc symbol newer than 2.34.
//! (scripts/package-lambda runs the same check on the release build it packages.)

#[test]
fn the_binary_needs_no_glibc_newer_than_lambdas() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-glibc");
    let output = std::process::Command::new("bash")
        .args([script, env!("CARGO_BIN_EXE_sample-app"), "2.34"])
        .output()
        .expect("run scripts/check-glibc");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("needs at most GLIBC_"), "{text}");
}

#[test]
fn the_check_rejects_a_newer_glibc() {
    // The same binary against a made-up older limit must fail: the check can fail.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-glibc");
    let output = std::process::Command::new("bash")
        .args([script, env!("CARGO_BIN_EXE_sample-app"), "2.2"])
        .output()
        .expect("run scripts/check-glibc");
    assert!(!output.status.success());
}
