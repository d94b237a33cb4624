//! Applying changes to the target table.
//!
//! - `plan`: from a batch of changes to writes: skip rules, the last change per key, conditions.
//! - `direct`: the target's writes signed and sent without the SDK's per-request machinery.
//! - `sigv4`: request signing for `direct`.
//! - `target`: the [`target::TargetTable`] seam, its DynamoDB implementation and an in-memory one.
//! - `watermark`: the highest sequence number below which every record has been applied.
//! - `retry`: jittered exponential backoff for retryable failures.

pub mod direct;
pub mod plan;
pub mod retry;
mod sigv4;
pub mod target;
pub mod watermark;
