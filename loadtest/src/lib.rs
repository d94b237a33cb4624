//! The load test's library: what the `loadtest` binary will measure with.
//!
//! # Layout
//! - `measure`: the failover figures (RTO, detection, loss of acknowledged writes) computed from a
//!   run's per-second series and acknowledged writes, each defined in its docs.
//! - `schedule`: open-loop arrivals (each request at its due time, latency from that time).
//! - `stats`: HDR histograms (overall, per region, per second) and the per-second series of
//!   outcomes by cause and region; recorders of several agents merge exactly.
//!
//! The commands (`run`, `failover`, `report`, `merge`) arrive with the load-test issue; until then
//! the binary only describes itself.

pub mod measure;
pub mod schedule;
pub mod stats;
