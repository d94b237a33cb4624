//! `deployer image build` through the binary: the OCI image layout it writes is valid (every digest
//! matches its blob, the config's diff ID is the uncompressed layer's), the layer holds the binary,
//! the CA bundle and a non-root user, the binary taken out of the layer runs, the same inputs give the
//! same digest, and a dynamically linked binary is refused. The static binary is a small C program
//! (`gcc -static`), so the test needs no static build of the replicator.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("image-build-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha256(bytes: &[u8]) -> String {
    let mut out = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(sha256(&bytes), digest, "the blob's name is its digest");
    bytes
}

fn build(binary: &Path, out: &Path, ca: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deployer"))
        .args(["--json", "image", "build", "--tag", "v1"])
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .arg("--ca-bundle")
        .arg(ca)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_layout_is_valid_and_its_binary_runs() {
    let dir = temp("main");
    let source = dir.join("stub.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\nint main(int c, char **v) { puts(c > 1 ? v[1] : \"none\"); return 0; }\n",
    )
    .unwrap();
    let stub = dir.join("stub");
    let gcc = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&stub)
        .arg(&source)
        .output()
        .expect("gcc (the machine's C compiler) builds the static stub");
    assert!(
        gcc.status.success(),
        "{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();

    let layout = dir.join("layout");
    let (code, stdout, stderr) = build(&stub, &layout, &ca);
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert_eq!(entry["digest"], printed["digest"]);
    let manifest_bytes = blob(&layout, entry["digest"].as_str().unwrap());
    assert_eq!(entry["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config_bytes = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest["config"]["size"], config_bytes.len());
    let layer_bytes = blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
    assert_eq!(manifest["layers"][0]["size"], layer_bytes.len());
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&layer_bytes[..])
        .read_to_end(&mut tar)
        .unwrap();
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar));
    assert_eq!(config["config"]["User"], "65532:65532", "not root");
    assert_eq!(config["config"]["Entrypoint"][0], "/replicator");
    assert_eq!(
        config["config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/replicator", "healthcheck"])
    );

    // The layer, unpacked by the system's tar: the binary runs, the CA bundle and the user are there.
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(
            layout.join("blobs/sha256").join(
                manifest["layers"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("sha256:")
                    .unwrap(),
            ),
        )
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        untar.status.success(),
        "{}",
        String::from_utf8_lossy(&untar.stderr)
    );
    let ran = Command::new(root.join("replicator"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "--version\n");
    assert_eq!(
        std::fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
        std::fs::read(&ca).unwrap()
    );
    assert!(
        std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("replicator:x:65532:65532:")
    );

    // Deterministic: a second build elsewhere gives the same digest.
    let (code, again, _) = build(&stub, &dir.join("again"), &ca);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["digest"],
        printed["digest"]
    );

    // A dynamically linked binary (the deployer itself) is refused, saying how to build a static one.
    let (code, _, stderr) = build(
        Path::new(env!("CARGO_BIN_EXE_deployer")),
        &dir.join("dynamic"),
        &ca,
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("linked dynamically") && stderr.contains("crt-static"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
