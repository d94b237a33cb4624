//! The deployer: reconciles both regions and the failover DNS from one config file, the way a
//! controller does: observe, diff, apply.
//!
//! # Layout
//! - `config`: the config file, parsed with unknown fields rejected, validated into a `Deployment`.
//! - `desired`: the resources a deployment needs, per region and global, as plain data.
//! - `plan`: a pure function from (desired, observed) to the changes, in dependency order.
//! - `resources`: per resource kind, observe what exists and apply one change.
//! - `engine`: observe everything, resolve references, plan, apply change by change until the plan
//!   is empty; `status`, `failover`, `down`.
//! - `rollout`: region-by-region `up`: the order, the health and smoke check, the rollback.
//! - `names`: the names the deployer gives, and their parsing back (one module owns the scheme).
//! - `local`: the local two-region environment (`deployer local`), on loopback.
//! - `cli`: the command line and its output.
//!
//! # Invariants
//! - `plan` is a pure function of desired and observed state.
//! - Only resources tagged with this app and stage are ever changed or deleted.

pub mod cli;
pub mod config;
pub mod desired;
pub mod engine;
pub mod image;
pub mod local;
pub mod names;
pub mod plan;
pub mod resources;
pub mod rollout;
