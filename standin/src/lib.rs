//! A stand-in for DynamoDB and DynamoDB Streams, fast enough never to be the bottleneck of the
//! replicator's benchmark: the JSON protocol subset the replicator and its lease table use, in memory,
//! with each call's latency, the other region's distance, shards that roll over and split, and the
//! services' throttling. See `standin --help` and docs/BENCHMARKS.md.

pub mod expr;
pub mod server;
pub mod store;
pub mod value;
