//! What the tworegion binaries share, and nothing else.
//!
//! # Layout
//! - [`aws`]: an [`aws_config::SdkConfig`] for one region, from the default credential chain and profiles,
//!   honouring `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` (so the local AWS needs no special code
//!   path), plus region-name validation.
//! - [`duration`]: durations as written in flags and config files (`500ms`, `10s`, `2m`).
//! - [`telemetry`]: `tracing` set-up; human output on a terminal, JSON lines otherwise (ECS, Lambda).
//! - [`shutdown`]: SIGTERM and SIGINT cancel one [`tokio_util::sync::CancellationToken`]; a second signal
//!   resolves a future that the binary's `main` turns into an immediate exit.
//! - [`version`]: the last-writer-wins item convention (`rep_version` hybrid logical clock, `rep_origin`,
//!   tombstones) shared by the replicator and the sample app.
//! - `test_support` (feature `test-support`): what integration tests need to use the local AWS.
//!
//! # Invariants
//! - Library code never reads argv; the environment is read only where the AWS SDK's standard
//!   configuration (credentials, endpoints) is the documented contract.
//! - Nothing here exits the process.

pub mod aws;
pub mod duration;
pub mod mix;
pub mod number;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod version;

#[cfg(feature = "test-support")]
pub mod test_support;
