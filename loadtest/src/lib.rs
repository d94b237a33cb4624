//! The load test: open-loop load through the failover domain name, a scripted regional fault, and
//! what users felt (RTO, RPO, fail-back, replication lag), written as `results.json` and a
//! self-contained `report.html`. Definitions of every figure: docs/loadtest.md.
//!
//! # Layout
//! - `run`: `loadtest run` and `loadtest failover` (the phases, the fault script, the figures).
//! - `schedule`: open-loop arrivals (each request at its due time, latency from that time).
//! - `client`: HTTP/1.1 keep-alive connections to the current DNS answer, TLS for https.
//! - `dns`: the URL's host resolved as a well-behaved client does (TTL honoured, changes recorded).
//! - `workload`: the sample app's API as requests, and the ledger of acknowledged writes.
//! - `verify`: each region read directly (replication lag, loss after failover and fail-back).
//! - `faults`: local, AWS and command faults, injected and undone.
//! - `local`: the local two-region environment found from its state file.
//! - `measure`: the failover figures as pure arithmetic, each defined in its docs.
//! - `stats`: HDR histograms and the per-second series; recorders merge exactly.
//! - `results`: the versioned results document (`results.schema.json`).
//! - `report`: report.html and the summary table; `merge`: several agents as one document.
//! - `bench`: a minimal HTTP endpoint for measuring the generator itself.

pub mod bench;
pub mod client;
pub mod dns;
pub mod faults;
pub mod local;
pub mod measure;
pub mod merge;
pub mod report;
pub mod results;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod verify;
pub mod workload;
