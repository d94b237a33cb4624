//! What a simulated run contains: sizes, time compression and the faults in force. Each seed draws its
//! own settings within realistic ranges (../shared/research/aws-facts.md, compressed in time); each
//! fault can be switched off.

use std::time::Duration;

use super::rng::Rng;
use crate::config::Mode;

/// Real durations are divided by this: 24 h of retention become 240 s, 15 min of iterator life 2.5 s,
/// the routine 4-hour shard rollover 40 s.
pub const TIME_COMPRESSION: u32 = 360;

/// Faults that can be switched off from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// Shard splits and rollovers.
    pub splits: bool,
    /// Trimming after the (compressed) 24-hour retention, and outages longer than it.
    pub trim: bool,
    /// Iterator expiry after (compressed) 15 minutes.
    pub expiry: bool,
    /// Read and write throttling, transient 5xx, ambiguous failures.
    pub errors: bool,
    /// Worker crashes and restarts.
    pub crashes: bool,
    /// Stalled workers whose leases expire and are taken.
    pub stalls: bool,
    /// Clock skew between the regions.
    pub skew: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            splits: true,
            trim: true,
            expiry: true,
            errors: true,
            crashes: true,
            stalls: true,
            skew: true,
        }
    }
}

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One-way or lww.
    pub mode: Mode,
    /// Open shards per stream at the start.
    pub initial_shards: usize,
    /// Mean time between shard splits or rollovers per region; `None` = never.
    pub split_every: Option<Duration>,
    /// Stream retention (24 h compressed).
    pub retention: Duration,
    /// Iterator lifetime (15 min compressed); `None` = never expire.
    pub iterator_ttl: Option<Duration>,
    /// GetRecords limits.
    pub records_limit: usize,
    /// GetRecords byte limit.
    pub bytes_limit: usize,
    /// DescribeStream page size.
    pub describe_page: usize,
    /// Probability a read call is throttled (LimitExceededException).
    pub read_throttle: f64,
    /// Probability a write is throttled (ProvisionedThroughputExceededException).
    pub write_throttle: f64,
    /// Probability of a transient 5xx before the call takes effect.
    pub server_error: f64,
    /// Probability of a 5xx after a write took effect (the caller cannot tell).
    pub ambiguous_error: f64,
    /// Latency of a call inside a region, milliseconds (uniform), plus rare spikes.
    pub local_latency: (u64, u64),
    /// Latency of a call to the other region (about 65 ms), milliseconds.
    pub cross_latency: (u64, u64),
    /// Region B's clock minus region A's, milliseconds.
    pub skew_ms: i64,
    /// Replicator workers per path.
    pub workers_per_path: usize,
    /// Mean time between worker crashes; `None` = no crashes.
    pub crash_every: Option<Duration>,
    /// Mean time between worker stalls; `None` = none.
    pub stall_every: Option<Duration>,
    /// A stall freezes the whole worker, its writes in flight included (they land when it ends), not
    /// only its lease calls. One-way mode only: lww hard deletes leave nothing that could fence a
    /// frozen put (docs/replicator.md, "Stale owners").
    pub freeze_writes: bool,
    /// Probability that a workload put or update writes an item the target refuses for good (a
    /// "poison" record: it must be parked as a dead letter, and the records after it applied).
    pub poison: f64,
    /// Whether all workers of path A-to-B go down for longer than the retention (a gap must be reported).
    pub outage: bool,
    /// Hot keys the writers use.
    pub keys: u64,
    /// How long the writers write.
    pub write_for: Duration,
    /// Pause between one writer's writes, milliseconds.
    pub write_gap: (u64, u64),
    /// The engine's checkpoint pacing (`--checkpoint-interval`): 0 (every page) to 3 s.
    pub checkpoint_interval: Duration,
    /// The engine's bound on buffered records (`--max-buffered-records`).
    pub max_buffered_records: usize,
}

impl SimConfig {
    /// Draws the settings of a run from the seed's generator.
    pub fn draw(mode: Mode, switches: Switches, rng: &mut Rng) -> SimConfig {
        let c = TIME_COMPRESSION;
        SimConfig {
            mode,
            initial_shards: 1 + rng.below(3) as usize,
            split_every: switches
                .splits
                .then(|| Duration::from_secs(4 * 3600) / c / (1 + rng.below(4) as u32)),
            retention: Duration::from_secs(24 * 3600) / c,
            iterator_ttl: switches.expiry.then(|| Duration::from_secs(15 * 60) / c),
            records_limit: 1000,
            bytes_limit: 1024 * 1024,
            describe_page: 100,
            read_throttle: if switches.errors {
                0.02 * rng.below(4) as f64
            } else {
                0.0
            },
            write_throttle: if switches.errors {
                0.02 * rng.below(4) as f64
            } else {
                0.0
            },
            server_error: if switches.errors {
                0.01 * rng.below(3) as f64
            } else {
                0.0
            },
            ambiguous_error: if switches.errors {
                0.01 * rng.below(2) as f64
            } else {
                0.0
            },
            local_latency: (2, 10),
            cross_latency: (60, 90),
            skew_ms: if switches.skew {
                rng.below(4001) as i64 - 2000
            } else {
                0
            },
            workers_per_path: 1 + rng.below(3) as usize,
            crash_every: (switches.crashes && rng.chance(0.7))
                .then(|| Duration::from_millis(3000 + rng.below(12_000))),
            stall_every: (switches.stalls && rng.chance(0.5))
                .then(|| Duration::from_millis(5000 + rng.below(15_000))),
            outage: switches.trim && rng.chance(0.05),
            freeze_writes: mode == Mode::OneWay,
            poison: if switches.errors && rng.chance(0.3) {
                0.02
            } else {
                0.0
            },
            keys: 3 + rng.below(10),
            write_for: Duration::from_secs(20 + rng.below(20)),
            write_gap: (20, 200 + rng.below(400)),
            // The engine's pacing and buffering, so seeds cover every-page checkpoints and tiny pages too.
            checkpoint_interval: Duration::from_millis([0, 200, 1000, 3000][rng.below(4) as usize]),
            max_buffered_records: [50, 400, 4000][rng.below(3) as usize],
        }
    }
}
