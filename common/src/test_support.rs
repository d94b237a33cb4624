//! Helpers for integration tests against the local AWS (`scripts/local-aws`).
//!
//! Tests read the endpoint from `TWOREGION_TEST_ENDPOINT` (set by `scripts/test`), refuse any endpoint
//! that is not on loopback (a test must never reach a real account), name their resources uniquely so they
//! can run in parallel and in any order, and delete what they created even when they fail.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};

/// The variable that holds the local AWS endpoint for tests.
pub const ENDPOINT_VAR: &str = "TWOREGION_TEST_ENDPOINT";

/// The two regions the tests use.
pub const REGION_A: &str = "us-east-1";
/// The second region.
pub const REGION_B: &str = "us-west-2";

/// The local AWS that a test talks to.
#[derive(Debug, Clone)]
pub struct LocalAws {
    endpoint: String,
}

impl LocalAws {
    /// The endpoint from `TWOREGION_TEST_ENDPOINT`.
    ///
    /// # Panics
    /// When the variable is missing or names a host other than loopback: the test cannot run, and says
    /// how to make it run.
    pub fn from_env() -> LocalAws {
        let endpoint = std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
            panic!(
                "{ENDPOINT_VAR} is not set. Run the tests with scripts/test, or start the local AWS with \
                 `scripts/local-aws start` and export {ENDPOINT_VAR}=<the endpoint it prints>."
            )
        });
        match LocalAws::new(&endpoint) {
            Ok(local) => local,
            Err(reason) => panic!("{ENDPOINT_VAR}={endpoint:?}: {reason}"),
        }
    }

    /// A local AWS at `endpoint`, which must be `http://` on a loopback host.
    pub fn new(endpoint: &str) -> Result<LocalAws, String> {
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or("the endpoint must start with http:// (the local AWS serves plain HTTP)")?;
        let host = if let Some(v6) = rest.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            rest.split([':', '/']).next().unwrap_or_default()
        };
        let loopback = host == "localhost"
            || host == "::1"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "host {host:?} is not on loopback; tests only ever talk to a local AWS on 127.0.0.0/8"
            ));
        }
        Ok(LocalAws {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
        })
    }

    /// The endpoint URL, for example `http://127.0.0.1:39817`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// SDK configuration for `region` on the local AWS, with static test credentials.
    pub fn sdk_config(&self, region: &str) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_credential_provider())
            .build()
    }

    /// A DynamoDB client for `region`.
    pub fn dynamodb(&self, region: &str) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config(region))
    }

    /// Environment for a child process (a binary under test) so that it uses this local AWS through the
    /// standard variables, exactly as a user would point it there.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

fn aws_credential_provider() -> aws_sdk_dynamodb::config::SharedCredentialsProvider {
    aws_sdk_dynamodb::config::SharedCredentialsProvider::new(Credentials::new(
        "testing",
        "testing",
        None,
        None,
        "tworegion-tests",
    ))
}

/// A free loopback port (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` on `127.0.0.1:port` over HTTP/1.0: the status and the whole response (headers and
/// body), or `None` when nothing answers (the replicator's `/metrics`, `/healthz`, `/readyz`).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// A name no other test in this run, or in an earlier run against the same server, has used:
/// `prefix-<pid>-<counter>-<millis>`, within DynamoDB's 255-character limit.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{millis}", std::process::id())
}

/// Creates an on-demand table with a String partition key `key`, and a stream of `view` if given;
/// returns the stream's ARN.
///
/// # Panics
/// When the table cannot be created: the test cannot go on.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    key: &str,
    view: Option<StreamViewType>,
) -> Option<String> {
    let definition = AttributeDefinition::builder()
        .attribute_name(key)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute definition");
    let schema = KeySchemaElement::builder()
        .attribute_name(key)
        .key_type(KeyType::Hash)
        .build()
        .expect("key schema");
    let stream = view.map(|v| {
        StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(v)
            .build()
            .expect("stream specification")
    });
    let out = client
        .create_table()
        .table_name(name)
        .attribute_definitions(definition)
        .key_schema(schema)
        .billing_mode(BillingMode::PayPerRequest)
        .set_stream_specification(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {name}: {e:?}"));
    out.table_description()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_owned)
}

/// Tables a test created; dropping this deletes them (also when the test panics).
#[derive(Debug)]
pub struct TablesCleanup {
    local: LocalAws,
    tables: Mutex<Vec<(String, String)>>,
}

impl TablesCleanup {
    /// Nothing to clean up yet.
    pub fn new(local: &LocalAws) -> TablesCleanup {
        TablesCleanup {
            local: local.clone(),
            tables: Mutex::new(Vec::new()),
        }
    }

    /// Deletes `table` in `region` when this is dropped.
    pub fn table(&self, region: &str, table: &str) {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((region.to_owned(), table.to_owned()));
    }
}

impl Drop for TablesCleanup {
    fn drop(&mut self) {
        let tables = std::mem::take(
            self.tables
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if tables.is_empty() {
            return;
        }
        let local = self.local.clone();
        // Drop may run inside the test's runtime, which must not be blocked on: delete from a thread
        // with its own runtime and its own clients.
        let cleaner = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                eprintln!("test clean-up: could not start a runtime; tables left: {tables:?}");
                return;
            };
            runtime.block_on(async {
                for (region, table) in tables {
                    // Tables the deployer made are protected from deletion: off first (an error
                    // here means the table is gone already).
                    let _ = local
                        .dynamodb(&region)
                        .update_table()
                        .table_name(&table)
                        .deletion_protection_enabled(false)
                        .send()
                        .await;
                    let result = local
                        .dynamodb(&region)
                        .delete_table()
                        .table_name(&table)
                        .send()
                        .await;
                    if let Err(error) = result {
                        eprintln!(
                            "test clean-up: could not delete table {table} in {region}: {error:?}"
                        );
                    }
                }
            });
        });
        let _ = cleaner.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_are_accepted() {
        for ok in [
            "http://127.0.0.1:5000",
            "http://127.8.9.10:1/",
            "http://localhost:4566",
            "http://[::1]:5000",
        ] {
            assert!(LocalAws::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://dynamodb.us-east-1.amazonaws.com",
            "http://dynamodb.us-east-1.amazonaws.com",
            "http://10.0.0.1:5000",
            "http://192.168.1.2:5000",
            "127.0.0.1:5000",
        ] {
            assert!(LocalAws::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_names_differ() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
    }
}
