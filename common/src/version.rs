//! The item-version convention that last-writer-wins replication relies on, shared by the replicator
//! and the sample app.
//!
//! Every write in active-active mode carries:
//! - `rep_version` (Number): a hybrid logical clock, Unix milliseconds x 1000 + a logical counter
//!   (0..999). It stays below 2^53, so it is exact in every SDK's number type.
//! - `rep_origin` (String): the region that accepted the write.
//! - deletes are tombstones: `rep_deleted = true` and a TTL attribute `rep_expires` (epoch seconds).
//!
//! A write wins over another if its `(version, origin)` pair is greater: higher version, or the same
//! version and a greater origin (a deterministic tie-break both regions agree on).

use std::cmp::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The names of the convention's attributes. The defaults are `rep_version`, `rep_origin`,
/// `rep_deleted` and `rep_expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionAttributes {
    /// Number: the hybrid-logical-clock version.
    pub version: String,
    /// String: the region that accepted the write.
    pub origin: String,
    /// Boolean: true on a tombstone.
    pub deleted: String,
    /// Number: the tombstone's expiry in epoch seconds (the table's TTL attribute).
    pub expires: String,
}

impl Default for VersionAttributes {
    fn default() -> Self {
        VersionAttributes {
            version: "rep_version".to_owned(),
            origin: "rep_origin".to_owned(),
            deleted: "rep_deleted".to_owned(),
            expires: "rep_expires".to_owned(),
        }
    }
}

/// A hybrid-logical-clock version: Unix milliseconds x 1000 + a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl Version {
    /// Logical steps per millisecond.
    pub const PER_MILLI: u64 = 1000;

    /// The version for wall-clock time `millis` with counter 0.
    pub fn from_millis(millis: u64) -> Version {
        Version(millis.saturating_mul(Self::PER_MILLI))
    }

    /// The wall-clock milliseconds this version stands for (exact: the replication-lag figure uses it).
    pub fn millis(self) -> u64 {
        self.0 / Self::PER_MILLI
    }

    /// Parses the decimal text of a DynamoDB Number; `None` when it is not a non-negative integer.
    pub fn parse(text: &str) -> Option<Version> {
        text.trim().parse::<u64>().ok().map(Version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Orders two writes by the last-writer-wins rule: version first, then origin.
pub fn compare_writes(a: (Version, &str), b: (Version, &str)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// Versions stay below 2^53, so that they are exact in every SDK's number type.
pub const MAX_VERSION: u64 = 1 << 53;

/// How far ahead of this process's clock a stored version may be for [`HybridClock::after`] to write
/// above it. Beyond that the stored version is taken as corrupt (or its region's clock as broken)
/// rather than adopted, which would drag every later version of both regions along with it.
pub const MAX_AHEAD_MILLIS: u64 = 10 * 60 * 1000;

/// A stored version that a writer must not build on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stored version {seen} is {} (this clock reads {wall_millis} ms); fix the item or the writer's clock",
    if seen.0 >= MAX_VERSION { "not below 2^53".to_owned() } else { format!("{} ms ahead of this region's clock", seen.millis().saturating_sub(*wall_millis)) }
)]
pub struct ImplausibleVersion {
    /// The stored version.
    pub seen: Version,
    /// This clock's wall time, ms.
    pub wall_millis: u64,
}

/// A hybrid logical clock: monotonic inside the process even if the system clock steps back, and
/// ahead of every version it has observed.
#[derive(Debug)]
pub struct HybridClock {
    last: Mutex<u64>,
    wall_millis: fn() -> u64,
}

impl Default for HybridClock {
    fn default() -> Self {
        HybridClock::new(system_millis)
    }
}

/// Milliseconds since the Unix epoch from the system clock (0 if it is before 1970).
pub fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl HybridClock {
    /// A clock reading wall time from `wall_millis` (tests pass a fake).
    pub fn new(wall_millis: fn() -> u64) -> HybridClock {
        HybridClock {
            last: Mutex::new(0),
            wall_millis,
        }
    }

    /// The next version: the wall clock's if it is ahead, otherwise one step after the last one.
    pub fn now(&self) -> Version {
        let wall = Version::from_millis((self.wall_millis)()).0;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = wall.max(last.saturating_add(1));
        Version(*last)
    }

    /// The next version that is also above `seen` (a version read from storage), so that an update
    /// always wins over what it replaces even when another region's clock runs ahead.
    ///
    /// A `seen` at or above [`MAX_VERSION`], or more than [`MAX_AHEAD_MILLIS`] ahead of this clock, is
    /// refused instead of adopted.
    pub fn after(&self, seen: Version) -> Result<Version, ImplausibleVersion> {
        let wall_millis = (self.wall_millis)();
        if seen.0 >= MAX_VERSION || seen.millis() > wall_millis.saturating_add(MAX_AHEAD_MILLIS) {
            return Err(ImplausibleVersion { seen, wall_millis });
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(seen.0);
        drop(last);
        Ok(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

    static FAKE_NOW: AtomicU64 = AtomicU64::new(1_000);

    fn fake() -> u64 {
        FAKE_NOW.load(AtomicOrdering::SeqCst)
    }

    #[test]
    fn clock_is_monotonic_when_the_wall_clock_steps_back() {
        let clock = HybridClock::new(fake);
        FAKE_NOW.store(1_000, AtomicOrdering::SeqCst);
        let a = clock.now();
        assert_eq!(a, Version(1_000_000));
        let b = clock.now();
        assert_eq!(b, Version(1_000_001), "same millisecond: the counter moves");
        FAKE_NOW.store(900, AtomicOrdering::SeqCst); // the system clock steps back
        let c = clock.now();
        assert!(c > b, "{c} > {b}");
        FAKE_NOW.store(2_000, AtomicOrdering::SeqCst);
        assert_eq!(clock.now(), Version(2_000_000));
        // Ahead of an observed version from a region whose clock runs fast.
        let d = clock.after(Version(5_000_123)).unwrap();
        assert_eq!(d, Version(5_000_124));
        assert_eq!(d.millis(), 5_000);
        // Corrupt or far-future versions are refused, not adopted.
        assert!(clock.after(Version(u64::MAX)).is_err());
        assert!(clock.after(Version(MAX_VERSION)).is_err());
        let far = Version::from_millis(2_000 + MAX_AHEAD_MILLIS + 1);
        let err = clock.after(far).unwrap_err().to_string();
        assert!(err.contains("ms ahead"), "{err}");
        assert_eq!(clock.now(), Version(5_000_125), "nothing was adopted");
    }

    #[test]
    fn writes_order_by_version_then_origin() {
        let v = Version;
        assert_eq!(compare_writes((v(2), "a"), (v(1), "z")), Ordering::Greater);
        assert_eq!(
            compare_writes((v(1), "us-west-2"), (v(1), "us-east-1")),
            Ordering::Greater
        );
        assert_eq!(compare_writes((v(1), "x"), (v(1), "x")), Ordering::Equal);
        assert_eq!(
            Version::parse("1700000000000123"),
            Some(Version(1_700_000_000_000_123))
        );
        assert_eq!(Version::parse("-1"), None);
        assert_eq!(Version::parse("1.5"), None);
    }
}
