//! The config the deployer's integration tests start from; each test changes only what it is about.

use deployer::config::{ConfigFile, Deployment};
use deployer::desired::{Kind, Resolved, Resource, desired, resolve};
use tworegion_common::test_support::{REGION_A, REGION_B};

/// A valid config (defaults written out), with `{app}` for the app's name and the test regions.
const BASE: &str = r#"
app = "{app}"
stage = "test"
primary_region = "{region_a}"
secondary_region = "{region_b}"
[dns]
domain_name = "api.example.com"
hosted_zone = "example.com"
[certificates]
[table]
name = "todos"
partition_key = { name = "id", type = "S" }
[api_key]
generate = true
[health_check]
interval = 30
failure_threshold = 3
[lambda]
artifact = "x.zip"
memory_mb = 256
[replicator]
mode = "lww"
image = "img"
cpu = 256
memory = 512
"#;

/// The base config for `app` with whole lines replaced: `(line, replacement)`. A line that is not in
/// the base fails the test, so an edit can never silently miss.
pub fn deployment(app: &str, edits: &[(&str, String)]) -> Deployment {
    let mut text = BASE
        .replace("{app}", app)
        .replace("{region_a}", REGION_A)
        .replace("{region_b}", REGION_B);
    for (line, replacement) in edits {
        let before = text.clone();
        text = text
            .lines()
            .map(|l| if l == *line { replacement.as_str() } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(before, text, "the base config has no line {line:?}");
    }
    ConfigFile::parse(&text)
        .and_then(|f| f.validate(&|_| None))
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The desired resources of `kind` (in `region` if given) for `d`, with the references in `resolved`
/// filled in.
// Not every test binary that includes this module needs it.
#[allow(dead_code)]
pub fn wanted(
    d: &Deployment,
    artifact_sha256: &str,
    kind: Kind,
    region: Option<&str>,
    resolved: &Resolved,
) -> Vec<Resource> {
    let all: Vec<Resource> = desired(d, artifact_sha256)
        .into_iter()
        .filter(|r| r.kind == kind && region.is_none_or(|want| r.region.as_deref() == Some(want)))
        .collect();
    resolve(&all, resolved)
}

/// A role Lambda can assume, made outside the deployer; returns its ARN.
// Not every test binary that includes this module needs it.
#[allow(dead_code)]
pub async fn lambda_role(iam: &aws_sdk_iam::Client, name: &str) -> String {
    let document = deployer::resources::role::trust_policy("lambda.amazonaws.com").to_string();
    iam.create_role()
        .role_name(name)
        .assume_role_policy_document(document)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create role {name}: {e}"))
        .role
        .map(|r| r.arn().to_owned())
        .unwrap_or_else(|| panic!("create role {name}: no role in the answer"))
}
