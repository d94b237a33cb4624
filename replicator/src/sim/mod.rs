//! Deterministic simulation: the real replicator engine (lease loop, shard tasks, write plans,
//! retries) runs against an in-process model of two regions' tables, streams and lease tables, on a
//! single-threaded runtime with a paused clock, with every random choice drawn from one seeded
//! generator. The same seed always gives the same run, so a failing seed replays exactly.
//!
//! # Layout
//! - `config`: what a run contains and which faults are on; settings are drawn per seed.
//! - `world`: tables, streams (shards, splits, trimming, iterators), history, and the checks made
//!   while the system runs (checkpoint coverage, one writer per key).
//! - `seams`: `StreamSource`, `TargetTable` and `LeaseStore` on the world, with latency and faults.
//! - `run`: one seed: workload, chaos (splits, trims, crashes, stalls, outages), healing,
//!   quiescence, and the final properties.
//!
//! See docs/simulation.md for what the model covers and what it does not.

pub mod config;
pub mod rng;
pub mod run;
pub mod seams;
pub mod world;

pub use config::Switches;
pub use run::{Sabotage, SeedResult, run_seed};
