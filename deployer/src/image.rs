//! The replicator's container image, built without a container engine: one gzip'd tar layer (the
//! static binary as `/replicator`, CA certificates, a non-root user), an image config and an OCI
//! manifest, as an OCI image layout on disk (`deployer image build`).
//!
//! The build is deterministic: with the same deployer build, the same binary and CA bundle give the
//! same bytes and so the same digest (file times are 0, owners numeric, entries in a fixed order, the
//! gzip header without a time or name), so the manifest's digest identifies the image: pushing it
//! again is a no-op.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The user the container runs as (distroless's `nonroot`).
pub const USER_ID: u32 = 65_532;
/// Where the CA bundle goes (rustls-native-certs finds it there, and `SSL_CERT_FILE` names it).
pub const CA_PATH: &str = "etc/ssl/certs/ca-certificates.crt";
/// The CA bundle the build machine has, copied into the image by default.
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The OCI media types used.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Why an image cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ImageError(pub String);

/// A built image: its blobs and the manifest's digest.
#[derive(Debug, Clone)]
pub struct Image {
    /// The gzip'd tar layer.
    pub layer: Vec<u8>,
    /// The sha256 of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    /// The image config (JSON).
    pub config: Vec<u8>,
    /// The manifest (JSON).
    pub manifest: Vec<u8>,
    /// `amd64` or `arm64`, from the binary.
    pub architecture: &'static str,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::from("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Image {
    /// The manifest's digest: the image's identity.
    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Every blob as (digest, bytes): layer, config, manifest.
    pub fn blobs(&self) -> [(String, &[u8]); 3] {
        [
            (digest(&self.layer), &self.layer),
            (digest(&self.config), &self.config),
            (self.digest(), &self.manifest),
        ]
    }
}

/// The architecture of an ELF executable that needs no dynamic loader (no `PT_INTERP`), or why it
/// cannot be the image's only program.
pub fn static_executable(binary: &[u8]) -> Result<&'static str, ImageError> {
    let u16_at = |at: usize| {
        binary
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        binary
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        binary.get(at..at + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if binary.get(..4) != Some(b"\x7fELF".as_slice())
        || binary.get(4) != Some(&2)
        || binary.get(5) != Some(&1)
    {
        return Err(ImageError(
            "not a 64-bit little-endian ELF executable (build the replicator for Linux: \
             x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu)"
                .to_owned(),
        ));
    }
    // ET_EXEC, or ET_DYN for a static PIE (a shared library has PT_DYNAMIC but no PT_INTERP
    // either; it is told apart by having no entry point).
    let executable = match (u16_at(0x10), u64_at(0x18)) {
        (Some(2), _) => true,
        (Some(3), Some(entry)) => entry != 0,
        _ => false,
    };
    if !executable {
        return Err(ImageError(
            "an ELF file that is not an executable (a library or an object file?)".to_owned(),
        ));
    }
    let (architecture, target) = match u16_at(0x12) {
        Some(0x3e) => ("amd64", "x86_64-unknown-linux-gnu"),
        Some(0xb7) => ("arm64", "aarch64-unknown-linux-gnu"),
        other => {
            return Err(ImageError(format!(
                "an ELF executable for machine {other:?}, neither x86-64 nor aarch64 (what Fargate runs)"
            )));
        }
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(ImageError("a truncated ELF header".to_owned()));
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        match u32_at(at) {
            None => return Err(ImageError("truncated ELF program headers".to_owned())),
            Some(3) => {
                return Err(ImageError(format!(
                    "linked dynamically (it needs a loader and shared libraries, and the image \
                     holds only the binary): build it static, e.g. RUSTFLAGS='-C \
                     target-feature=+crt-static' cargo build --release --target {target} -p \
                     replicator"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(architecture)
}

/// One ustar header (numeric owner, time 0) for `name` of `size` bytes.
fn tar_header(name: &str, mode: u32, size: u64, directory: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = if directory { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// The layer's tar: directories and files in this order, every name relative to `/`.
fn layer_tar(binary: &[u8], ca_bundle: &[u8]) -> Vec<u8> {
    let passwd = format!(
        "root:x:0:0:root:/:/sbin/nologin\nreplicator:x:{USER_ID}:{USER_ID}:replicator:/:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nreplicator:x:{USER_ID}:\n");
    let entries: [(&str, u32, Option<&[u8]>); 8] = [
        ("etc/", 0o755, None),
        ("etc/group", 0o644, Some(group.as_bytes())),
        ("etc/passwd", 0o644, Some(passwd.as_bytes())),
        ("etc/ssl/", 0o755, None),
        ("etc/ssl/certs/", 0o755, None),
        (CA_PATH, 0o644, Some(ca_bundle)),
        ("replicator", 0o755, Some(binary)),
        ("tmp/", 0o1777, None),
    ];
    let mut tar = Vec::with_capacity(binary.len() + ca_bundle.len() + 16 * 512);
    for (name, mode, contents) in entries {
        let size = contents.map_or(0, <[u8]>::len);
        tar.extend_from_slice(&tar_header(name, mode, size as u64, contents.is_none()));
        if let Some(bytes) = contents {
            tar.extend_from_slice(bytes);
            tar.resize(tar.len().next_multiple_of(512), 0);
        }
    }
    tar.resize(tar.len() + 1024, 0);
    tar
}

/// Builds the image of `binary` (a static Linux executable) with `ca_bundle` as its CA certificates.
pub fn build(binary: &[u8], ca_bundle: &[u8]) -> Result<Image, ImageError> {
    use std::io::Write;
    let architecture = static_executable(binary)?;
    if ca_bundle.is_empty() {
        return Err(ImageError(
            "the CA bundle is empty: the replicator needs it to verify AWS's TLS certificates"
                .to_owned(),
        ));
    }
    let tar = layer_tar(binary, ca_bundle);
    let diff_id = digest(&tar);
    let mut gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)
        .and_then(|()| gz.try_finish())
        .map_err(|e| ImageError(format!("compressing the layer: {e}")))?;
    let layer = gz
        .finish()
        .map_err(|e| ImageError(format!("compressing the layer: {e}")))?;
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": {
            "User": format!("{USER_ID}:{USER_ID}"),
            "Entrypoint": ["/replicator"],
            "Cmd": ["run"],
            "Env": [format!("SSL_CERT_FILE=/{CA_PATH}")],
            "WorkingDir": "/",
            // Docker's health check (ECS uses the task definition's, which the deployer sets to
            // the same command).
            "Healthcheck": {
                "Test": ["CMD", "/replicator", "healthcheck"],
                "Interval": 30_000_000_000_u64,
                "Timeout": 5_000_000_000_u64,
                "Retries": 3,
            },
            "Labels": { "org.opencontainers.image.title": "tworegion-replicator" },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "deployer image build" }],
    }))
    .map_err(|e| ImageError(e.to_string()))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": digest(&layer), "size": layer.len() }],
    }))
    .map_err(|e| ImageError(e.to_string()))?;
    Ok(Image {
        layer,
        diff_id,
        config,
        manifest,
        architecture,
    })
}

/// Writes `image` as an OCI image layout in `dir` (`oci-layout`, `index.json` naming it `tag`,
/// `blobs/sha256/<hex>`), which tools such as skopeo, crane and oras push.
pub fn write_layout(image: &Image, dir: &Path, tag: &str) -> std::io::Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    for (digest, bytes) in image.blobs() {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index: Value = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": image.digest(),
            "size": image.manifest.len(),
            "platform": { "architecture": image.architecture, "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header for `machine` with one program header of `kind`.
    fn elf(machine: u16, kind: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x40 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10..0x12].copy_from_slice(&3u16.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&0x1000u64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[0x40..0x44].copy_from_slice(&kind.to_le_bytes());
        b
    }

    #[test]
    fn only_static_linux_executables_are_taken() {
        assert_eq!(static_executable(&elf(0x3e, 1)), Ok("amd64"));
        assert_eq!(static_executable(&elf(0xb7, 1)), Ok("arm64"));
        let dynamic = static_executable(&elf(0x3e, 3)).unwrap_err().0;
        assert!(
            dynamic.contains("linked dynamically") && dynamic.contains("crt-static"),
            "{dynamic}"
        );
        assert!(
            static_executable(&elf(0x28, 1))
                .unwrap_err()
                .0
                .contains("neither x86-64")
        );
        assert!(
            static_executable(b"#!/bin/sh\n")
                .unwrap_err()
                .0
                .contains("not a 64-bit")
        );
        let mut library = elf(0x3e, 1);
        library[0x18..0x20].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            static_executable(&library)
                .unwrap_err()
                .0
                .contains("not an executable")
        );
        assert!(
            static_executable(&elf(0xb7, 3))
                .unwrap_err()
                .0
                .contains("aarch64-unknown-linux-gnu")
        );
        let mut truncated = elf(0x3e, 1);
        truncated.truncate(0x41);
        assert!(
            static_executable(&truncated)
                .unwrap_err()
                .0
                .contains("truncated")
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_the_blobs_match_it() {
        let binary = elf(0x3e, 1);
        let a = build(&binary, b"CA").unwrap();
        let b = build(&binary, b"CA").unwrap();
        assert_eq!(a.digest(), b.digest(), "deterministic");
        assert_ne!(a.digest(), build(&binary, b"CA2").unwrap().digest());
        let manifest: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(manifest["config"]["digest"], digest(&a.config));
        assert_eq!(manifest["config"]["size"], a.config.len());
        assert_eq!(manifest["layers"][0]["digest"], digest(&a.layer));
        assert_eq!(manifest["layers"][0]["size"], a.layer.len());
        let config: Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], a.diff_id);
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["architecture"], "amd64");
        assert!(build(&binary, b"").is_err());
        assert!(build(&elf(0x3e, 3), b"CA").is_err());
    }

    #[test]
    fn tar_headers_carry_a_valid_checksum() {
        let h = tar_header("replicator", 0o755, 1234, false);
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&h[124..135], b"00000002322");
    }
}
