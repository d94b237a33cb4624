//! The local two-region environment (`deployer local up`) as the load test finds it: its state
//! file (`<state dir>/state.json`) names the public URL, the DNS server, the control API and each
//! region's endpoint; the API key comes from the control API (`/status?show_api_key=true`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;

use crate::client;

/// The parts of the environment's status the load test uses.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalEnv {
    /// The public URL (through the DNS server).
    pub url: String,
    /// The DNS server.
    pub dns: String,
    /// The control API.
    pub control: String,
    /// The API key (only from the control API, asked for).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The region DNS answers with now.
    pub serving: Option<String>,
    /// Per region.
    pub regions: BTreeMap<String, LocalRegion>,
    /// The replicators (two: lww; one: one-way).
    pub replicators: Vec<LocalReplicator>,
}

/// A region of the environment.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalRegion {
    /// Its API, reached directly (not through DNS).
    pub endpoint: String,
}

/// A replicator of the environment.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalReplicator {
    /// Where it reads.
    pub source_region: String,
    /// Where it writes.
    pub target_region: String,
}

impl LocalEnv {
    /// The control API's address.
    pub fn control_addr(&self) -> Result<SocketAddr, String> {
        self.control
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("the local environment's control address {:?}", self.control))
    }

    /// `lww` when replicators run both ways, `one-way` otherwise.
    pub fn mode(&self) -> &'static str {
        let both = self.replicators.iter().any(|a| {
            self.replicators
                .iter()
                .any(|b| a.source_region == b.target_region && a.target_region == b.source_region)
        });
        if both { "lww" } else { "one-way" }
    }
}

/// Reads the state file in `dir` and asks the control API for the live status with the API key.
pub async fn find(dir: &Path) -> Result<LocalEnv, String> {
    let file = dir.join("state.json");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "no local environment at {} ({e}): start one with `deployer local up --detach` \
             (scripts/demo --detach) or give --local-state-dir",
            file.display()
        )
    })?;
    let stored: LocalEnv = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a local environment's state file: {e}",
            file.display()
        )
    })?;
    let control = stored.control_addr()?;
    let (status, body) = client::call(
        control,
        Method::GET,
        "/status?show_api_key=true",
        None,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| {
        format!(
            "the local environment in {} does not answer ({e}); is it running? \
             (`deployer local status`; an environment started with --detach logs to {})",
            dir.display(),
            dir.join("local.log").display()
        )
    })?;
    if status != 200 {
        return Err(format!(
            "the local environment's control API answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the local environment's status: {e}"))
}
