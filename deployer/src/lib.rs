//! The deployer: reconciles both regions and the failover DNS from one config file, the way a
//! controller does: observe, diff, apply.
//!
//! # Layout
//! - `config`: the config file, parsed with unknown fields rejected, validated into a `Deployment`.
//! - `desired`: the resources a deployment needs, per region and global, as plain data.
//! - `plan`: a pure function from (desired, observed) to the changes, in dependency order.
//!
//! Status: the config, the desired state and the plan exist and are tested; the AWS side (observe and
//! apply per resource kind) and the `plan | up | status | failover | down` commands come next, and
//! until they work end to end the binary only prints its help.
//!
//! # Invariants
//! - `plan` is a pure function of desired and observed state.
//! - Only resources tagged with this app and stage are ever changed or deleted.

pub mod config;
pub mod desired;
pub mod plan;
pub mod resources;
