//! From a batch of stream changes to the writes that reproduce them on the target.
//!
//! Per batch: decide each change (write or skip, by mode), then squash each key's writes into the
//! shortest chain that leaves the target exactly as applying every change in order would. Unconditional
//! writes (one-way) squash to the last one. Conditional writes (lww) squash only where that is provably
//! the same (see [`squash`]); otherwise the key's chain keeps several writes, applied one after the
//! other. A chain "covers" every record of its key in the batch: they all count as applied once its
//! last write is done.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::version::{Version, VersionAttributes};

use super::target::{Condition, Write};
use crate::config::Mode;
use crate::item::{Item, key_string};
use crate::stream::{Change, EventKind};

/// Why a change needs no write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// lww: the item's origin is the target region: the replicator wrote it here (an echo); loop
    /// prevention.
    ReplicatedIn,
    /// lww: the old and new images are identical (a write that changed nothing; AWS emits no record
    /// for it, the local AWS does).
    NoOp,
    /// lww: a deletion by DynamoDB's TTL process; each region expires its own tombstones.
    TtlDelete,
}

impl SkipReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::ReplicatedIn => "replicated_in",
            SkipReason::NoOp => "no_op",
            SkipReason::TtlDelete => "ttl_delete",
        }
    }
}

/// A change that cannot be turned into a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq} for key {key}: {problem}")]
pub struct PlanError {
    /// The record's sequence number.
    pub seq: String,
    /// The item's key.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// What the plan needs to know besides the changes.
#[derive(Debug, Clone)]
pub struct PlanContext {
    /// One-way or lww.
    pub mode: Mode,
    /// The source table's region: the origin of local writes.
    pub source_region: String,
    /// The target table's region: an item whose origin is this region was written by the replicator
    /// (an echo).
    pub target_region: String,
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// Origins that are neither region, already warned about (once per origin per process).
    pub warned_origins: Arc<Mutex<BTreeSet<String>>>,
    /// The first tombstone's retention was checked (lww: the writers choose it).
    pub tombstone_checked: Arc<std::sync::atomic::AtomicBool>,
    /// lww: the last version this process made up for a key (a fallback or a fresh version), so two
    /// made-up versions of one key never collide (see [`PlanContext::made_up`]).
    pub made_up_versions: Arc<Mutex<HashMap<String, Version>>>,
}

/// One key's writes and the batch positions they cover.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWrite {
    /// The item's key, for logs.
    pub key: String,
    /// Writes to apply, in order, before `write` (empty unless squashing would change the outcome).
    pub before: Vec<Write>,
    /// The (last) write.
    pub write: Write,
    /// Indexes into the batch of every record this write settles.
    pub covers: Vec<usize>,
    /// The version's wall-clock milliseconds (lww), for the exact lag figure.
    pub version_millis: Option<u64>,
}

/// The writes for a batch, and what needs none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Writes, one per key, in the order of each key's last change.
    pub writes: Vec<PlannedWrite>,
    /// Records that need no write, with the reason.
    pub skipped: Vec<(usize, SkipReason)>,
    /// lww: records without a version, given the documented fallback.
    pub unversioned: usize,
    /// lww: records whose data changed while their stamp did not (a writer that does not stamp),
    /// replicated with a fresh version.
    pub restamped: usize,
    /// Records that cannot be turned into a write (a version that is not a number, no image), with why.
    pub refused: Vec<(usize, PlanError)>,
}

enum Decision {
    Write(Write, Option<u64>),
    Skip(SkipReason),
}

/// The shortest tombstone retention that a replay cannot outlast: the stream's 24 hours plus an hour.
pub const TOMBSTONE_RETENTION_MIN: std::time::Duration = std::time::Duration::from_secs(25 * 3600);

/// The fallback version of a record without one: its ApproximateCreationDateTime in milliseconds,
/// counter 0, and the source region as origin.
pub fn fallback_version(change: &Change) -> Version {
    let millis = change.created_at.map(|s| (s * 1000.0) as u64).unwrap_or(0);
    Version::from_millis(millis)
}

impl PlanContext {
    /// The context of a path from `source_region` to `target_region`.
    pub fn new(
        mode: Mode,
        source_region: impl Into<String>,
        target_region: impl Into<String>,
        attributes: VersionAttributes,
    ) -> PlanContext {
        PlanContext {
            mode,
            source_region: source_region.into(),
            target_region: target_region.into(),
            attributes,
            warned_origins: Arc::default(),
            tombstone_checked: Arc::default(),
            made_up_versions: Arc::default(),
        }
    }

    /// A version made up for `key` (a fallback, or a fresh version for a writer that does not stamp):
    /// at least `candidate`, and above any this process made up for the key before. Two changes of one
    /// key in the same second would otherwise get the same `(version, origin)`: the second lands over
    /// the first by the equal-stamp rule, and the other direction then sees an item whose data changed
    /// under an unchanged stamp, which is how a writer that does not stamp looks.
    fn made_up(&self, key: &str, candidate: Version) -> Version {
        /// Made-up versions older than this behind the newest are forgotten when the map is large.
        const KEEP_MILLIS: u64 = 60_000;
        const LARGE: usize = 100_000;
        let mut made = self
            .made_up_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let version = match made.get(key) {
            Some(last) => candidate.max(Version(last.0 + 1)),
            None => candidate,
        };
        made.insert(key.to_owned(), version);
        if made.len() > LARGE {
            let horizon = version.millis().saturating_sub(KEEP_MILLIS);
            made.retain(|_, v| v.millis() >= horizon);
        }
        version
    }

    /// lww: the writers choose how long tombstones live (`--expires-attribute` minus the version's time).
    /// The first tombstone seen is checked once: shorter than the stream's 24 hours plus an hour of lag,
    /// a replay from an old checkpoint could re-create a deleted item after its tombstone expired.
    fn check_tombstone(&self, item: &Item, version: Version) {
        use std::sync::atomic::Ordering;
        let a = &self.attributes;
        if !matches!(item.get(&a.deleted), Some(AttributeValue::Bool(true))) {
            return;
        }
        let Some(AttributeValue::N(expires)) = item.get(&a.expires) else {
            return;
        };
        let Ok(expires) = expires.parse::<u64>() else {
            return;
        };
        if self.tombstone_checked.swap(true, Ordering::SeqCst) {
            return;
        }
        let retention = expires.saturating_sub(version.millis() / 1000);
        if retention < TOMBSTONE_RETENTION_MIN.as_secs() {
            tracing::warn!(
                retention_seconds = retention, minimum_seconds = TOMBSTONE_RETENTION_MIN.as_secs(),
                expires_attribute = %a.expires,
                "Tombstones live shorter than the stream's 24 hours plus an hour of replication lag: a replay from an old checkpoint could bring a deleted item back after its tombstone expired. Give tombstones a longer TTL (the sample app's --tombstone-ttl)."
            );
        }
    }

    fn error(&self, change: &Change, problem: impl Into<String>) -> PlanError {
        PlanError {
            seq: change.seq.to_string(),
            key: key_string(&change.keys),
            problem: problem.into(),
        }
    }

    /// An origin that is neither region of the path (a typo, a third region): replicated as it is,
    /// and logged once per origin.
    fn warn_unknown_origin(&self, change: &Change, origin: &str) {
        let mut warned = self
            .warned_origins
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if warned.insert(origin.to_owned()) {
            tracing::warn!(
                origin, source_region = %self.source_region, target_region = %self.target_region,
                key = %key_string(&change.keys), seq = %change.seq,
                "An item's origin is neither region of this path; it is replicated as written. Check the writer's region name."
            );
        }
    }

    /// The `(version, origin)` of an image, or `None` when it has no version. A version that is not a
    /// non-negative integer, or an origin that is not a string, is an error.
    fn stamp(
        &self,
        change: &Change,
        image: &Item,
    ) -> Result<Option<(Version, Option<String>)>, PlanError> {
        let a = &self.attributes;
        let origin = match image.get(&a.origin) {
            None => None,
            Some(AttributeValue::S(s)) => Some(s.clone()),
            Some(other) => {
                return Err(self.error(change, format!("{} is {other:?}, not a string", a.origin)));
            }
        };
        match image.get(&a.version) {
            None => Ok(None),
            Some(AttributeValue::N(n)) => match Version::parse(n) {
                Some(v) => Ok(Some((v, origin))),
                None => Err(self.error(
                    change,
                    format!("{} is {n:?}, not a non-negative integer", a.version),
                )),
            },
            Some(other) => {
                Err(self.error(change, format!("{} is {other:?}, not a number", a.version)))
            }
        }
    }

    fn decide(&self, change: &Change, plan: &mut Plan) -> Result<Decision, PlanError> {
        match (self.mode, change.kind) {
            (Mode::OneWay, EventKind::Insert | EventKind::Modify) => {
                let item = change.new_image.clone().ok_or_else(|| {
                    self.error(
                        change,
                        "no new image: the stream must be NEW_IMAGE or NEW_AND_OLD_IMAGES",
                    )
                })?;
                Ok(Decision::Write(
                    Write::Put {
                        item,
                        condition: None,
                    },
                    None,
                ))
            }
            (Mode::OneWay, EventKind::Remove) => Ok(Decision::Write(
                Write::Delete {
                    key: change.keys.clone(),
                    condition: None,
                },
                None,
            )),
            (Mode::Lww, EventKind::Insert | EventKind::Modify) => {
                let mut item = change.new_image.clone().ok_or_else(|| {
                    self.error(
                        change,
                        "no new image: lww mode needs a NEW_AND_OLD_IMAGES stream",
                    )
                })?;
                if change.old_image.as_ref() == Some(&item) {
                    return Ok(Decision::Skip(SkipReason::NoOp));
                }
                let stamp = self.stamp(change, &item)?;
                let old_stamp = match change.old_image.as_ref() {
                    Some(old) => self.stamp(change, old)?,
                    None => None,
                };
                let (version, origin) = match stamp {
                    // The data changed but the stamp did not: a writer that does not know the
                    // convention (a plain UpdateItem, a console edit) changed an item, perhaps one that
                    // arrived by replication and carries the other region's origin. It is a local
                    // write: a fresh version from the record's creation time, above the one it
                    // replaces, with the source region as origin.
                    Some((version, _)) if old_stamp == stamp => {
                        plan.restamped += 1;
                        let fresh = fallback_version(change).max(Version(version.0 + 1));
                        let fresh = self.made_up(&key_string(&change.keys), fresh);
                        (fresh, self.source_region.clone())
                    }
                    Some((_, Some(origin))) if origin == self.target_region => {
                        return Ok(Decision::Skip(SkipReason::ReplicatedIn));
                    }
                    Some((version, Some(origin))) => {
                        if origin != self.source_region {
                            self.warn_unknown_origin(change, &origin);
                        }
                        (version, origin)
                    }
                    Some((version, None)) => (version, self.source_region.clone()),
                    None => {
                        plan.unversioned += 1;
                        let version =
                            self.made_up(&key_string(&change.keys), fallback_version(change));
                        (version, self.source_region.clone())
                    }
                };
                self.check_tombstone(&item, version);
                // Stamp what the fallback assumed, so the copy is not replicated back as a local write.
                item.insert(
                    self.attributes.version.clone(),
                    AttributeValue::N(version.to_string()),
                );
                item.insert(
                    self.attributes.origin.clone(),
                    AttributeValue::S(origin.clone()),
                );
                Ok(Decision::Write(
                    Write::Put {
                        item,
                        condition: Some(Condition::Newer { version, origin }),
                    },
                    Some(version.millis()),
                ))
            }
            (Mode::Lww, EventKind::Remove) => {
                if change.by_ttl {
                    return Ok(Decision::Skip(SkipReason::TtlDelete));
                }
                // A hard delete: applied whatever the deleted version's origin, unless the target holds
                // something newer. Its echo finds nothing to delete and emits no record, so it ends there.
                let version = match change.old_image.as_ref() {
                    Some(old) => match self.stamp(change, old)? {
                        Some((v, _)) => v,
                        None => {
                            plan.unversioned += 1;
                            fallback_version(change)
                        }
                    },
                    None => {
                        plan.unversioned += 1;
                        fallback_version(change)
                    }
                };
                Ok(Decision::Write(
                    Write::Delete {
                        key: change.keys.clone(),
                        condition: Some(Condition::NotNewerThan { version }),
                    },
                    Some(version.millis()),
                ))
            }
        }
    }

    /// Plans a batch. An error names the first record that cannot be applied.
    pub fn plan(&self, changes: &[Change]) -> Result<Plan, PlanError> {
        let mut plan = self.plan_all(changes);
        if plan.refused.is_empty() {
            Ok(plan)
        } else {
            Err(plan.refused.swap_remove(0).1)
        }
    }

    /// Plans a batch, setting aside (in `refused`) the records that cannot be turned into writes.
    pub fn plan_all(&self, changes: &[Change]) -> Plan {
        let mut plan = Plan::default();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (index, change) in changes.iter().enumerate() {
            let decision = match self.decide(change, &mut plan) {
                Ok(decision) => decision,
                Err(error) => {
                    plan.refused.push((index, error));
                    continue;
                }
            };
            match decision {
                Decision::Skip(reason) => plan.skipped.push((index, reason)),
                Decision::Write(write, version_millis) => {
                    let key = key_string(&change.keys);
                    match by_key.get(&key) {
                        Some(&slot) => {
                            let earlier = &mut plan.writes[slot];
                            let previous = std::mem::replace(&mut earlier.write, write);
                            earlier.before.push(previous);
                            // Fold the chain from its end while two neighbours squash into one.
                            while let Some(last) = earlier.before.last() {
                                match squash(last, &earlier.write) {
                                    Some(one) => {
                                        earlier.before.pop();
                                        earlier.write = one;
                                    }
                                    None => break,
                                }
                            }
                            earlier.covers.push(index);
                            earlier.version_millis = earlier.version_millis.max(version_millis);
                        }
                        None => {
                            by_key.insert(key.clone(), plan.writes.len());
                            plan.writes.push(PlannedWrite {
                                key,
                                before: Vec::new(),
                                write,
                                covers: vec![index],
                                version_millis,
                            });
                        }
                    }
                }
            }
        }
        plan
    }
}

/// A one-way write fenced by the lease owner's token: a put carries the token and applies only over an
/// item written with the same or a lower one; a delete becomes a tombstone (the key, the deleted flag,
/// the expiry `expires_epoch_secs` for the table's TTL, and the token) under the same condition, so a
/// stale owner's put of an older image cannot bring a deleted item back.
pub fn fenced(
    write: &Write,
    fence: u64,
    attributes: &VersionAttributes,
    expires_epoch_secs: u64,
) -> Write {
    let token = (
        super::target::FENCE_ATTRIBUTE.to_owned(),
        AttributeValue::N(fence.to_string()),
    );
    let condition = Some(Condition::Fenced { fence });
    match write {
        Write::Put { item, .. } => {
            let mut item = item.clone();
            item.insert(token.0, token.1);
            Write::Put { item, condition }
        }
        Write::Delete { key, .. } => {
            let mut item = key.clone();
            item.insert(attributes.deleted.clone(), AttributeValue::Bool(true));
            item.insert(
                attributes.expires.clone(),
                AttributeValue::N(expires_epoch_secs.to_string()),
            );
            item.insert(token.0, token.1);
            Write::Put { item, condition }
        }
    }
}

/// The one write that leaves the target as `first` followed by `second` would (same key), if there is
/// one. With last-writer-wins conditions (`t` is the target's version, `p` a put's, `d` a delete's):
/// - `second` unconditional: `second` (whatever `first` did is overwritten or deleted);
/// - put `p`, then delete `<= d` with `d >= p`: the delete (it removes `p` if `p` landed, else
///   whatever newer `t <= d` was there, and nothing when `t > d`); with `d < p` the put alone;
/// - delete `<= a`, then delete `<= b`: delete `<= max(a, b)`;
/// - delete `<= d`, then put `p` with `p > d`: the put (absent or `t <= d` both end as `p`);
///   with `p <= d` there is none: `t` with `p <= t <= d` is deleted, then `p` lands, so both stay.
/// - put `p1`, then put `p2`: the higher of the two by `(version, origin)` (a put lands when the
///   target's `(version, origin)` is not higher than its own).
pub fn squash(first: &Write, second: &Write) -> Option<Write> {
    use Condition::{Newer, NotNewerThan};
    let condition = |w: &Write| match w {
        Write::Put { condition, .. } | Write::Delete { condition, .. } => condition.clone(),
    };
    match (first, condition(first), second, condition(second)) {
        (_, _, _, None) => Some(second.clone()),
        (
            Write::Put { .. },
            Some(Newer { version: p, .. }),
            Write::Delete { .. },
            Some(NotNewerThan { version: d }),
        ) => Some(if d >= p {
            second.clone()
        } else {
            first.clone()
        }),
        (
            Write::Delete { .. },
            Some(NotNewerThan { version: a }),
            Write::Delete { key, .. },
            Some(NotNewerThan { version: b }),
        ) => Some(Write::Delete {
            key: key.clone(),
            condition: Some(NotNewerThan { version: a.max(b) }),
        }),
        (
            Write::Delete { .. },
            Some(NotNewerThan { version: d }),
            Write::Put { .. },
            Some(Newer { version: p, .. }),
        ) if p > d => Some(second.clone()),
        (
            Write::Put { .. },
            Some(Newer {
                version: v1,
                origin: o1,
            }),
            Write::Put { .. },
            Some(Newer {
                version: v2,
                origin: o2,
            }),
        ) => Some(
            if tworegion_common::version::compare_writes((v2, o2.as_str()), (v1, o1.as_str()))
                .is_ge()
            {
                second.clone()
            } else {
                first.clone()
            },
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SeqNo;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }
    fn n(v: u64) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }
    fn key(id: &str) -> Item {
        [("id".to_owned(), s(id))].into()
    }
    fn item(id: &str, version: Option<u64>, origin: Option<&str>) -> Item {
        let mut i = key(id);
        i.insert("text".into(), s("t"));
        if let Some(v) = version {
            i.insert("rep_version".into(), n(v));
        }
        if let Some(o) = origin {
            i.insert("rep_origin".into(), s(o));
        }
        i
    }
    fn change(seq: u64, kind: EventKind, id: &str, new: Option<Item>, old: Option<Item>) -> Change {
        Change {
            seq: SeqNo::parse(&seq.to_string()).unwrap(),
            kind,
            keys: key(id),
            new_image: new,
            old_image: old,
            created_at: Some(1_700_000_000.0),
            by_ttl: false,
        }
    }
    fn ctx(mode: Mode) -> PlanContext {
        PlanContext::new(mode, "us-east-1", "us-west-2", VersionAttributes::default())
    }

    #[test]
    fn one_way_keeps_the_last_change_per_key_and_covers_all_its_records() {
        let batch = vec![
            change(1, EventKind::Insert, "a", Some(item("a", None, None)), None),
            change(2, EventKind::Insert, "b", Some(item("b", None, None)), None),
            change(
                3,
                EventKind::Modify,
                "a",
                Some(item("a", Some(1), None)),
                None,
            ),
            change(4, EventKind::Remove, "b", None, Some(item("b", None, None))),
        ];
        let plan = ctx(Mode::OneWay).plan(&batch).unwrap();
        assert_eq!(plan.writes.len(), 2);
        assert_eq!(plan.writes[0].covers, vec![0, 2]);
        assert_eq!(
            plan.writes[0].write,
            Write::Put {
                item: item("a", Some(1), None),
                condition: None
            }
        );
        assert_eq!(plan.writes[1].covers, vec![1, 3]);
        assert_eq!(
            plan.writes[1].write,
            Write::Delete {
                key: key("b"),
                condition: None
            }
        );
    }

    #[test]
    fn lww_skips_replicated_in_and_ttl_records_and_conditions_the_rest() {
        let mut ttl = change(
            3,
            EventKind::Remove,
            "c",
            None,
            Some(item("c", Some(5), Some("us-east-1"))),
        );
        ttl.by_ttl = true;
        let batch = vec![
            change(
                1,
                EventKind::Insert,
                "a",
                Some(item("a", Some(10), Some("us-east-1"))),
                None,
            ),
            change(
                2,
                EventKind::Insert,
                "b",
                Some(item("b", Some(11), Some("us-west-2"))),
                None,
            ),
            ttl,
            change(
                4,
                EventKind::Remove,
                "d",
                None,
                Some(item("d", Some(7), Some("us-west-2"))),
            ),
        ];
        let plan = ctx(Mode::Lww).plan(&batch).unwrap();
        assert_eq!(
            plan.skipped,
            vec![(1, SkipReason::ReplicatedIn), (2, SkipReason::TtlDelete)]
        );
        assert_eq!(plan.writes.len(), 2);
        assert_eq!(
            plan.writes[0].write,
            Write::Put {
                item: item("a", Some(10), Some("us-east-1")),
                condition: Some(Condition::Newer {
                    version: Version(10),
                    origin: "us-east-1".into()
                })
            }
        );
        // A hard delete is applied whatever the deleted version's origin, unless the target is newer.
        assert_eq!(
            plan.writes[1].write,
            Write::Delete {
                key: key("d"),
                condition: Some(Condition::NotNewerThan {
                    version: Version(7)
                })
            }
        );
        assert_eq!(plan.unversioned, 0);
    }

    #[test]
    fn lww_fallback_for_unversioned_records_is_stamped_and_counted() {
        let batch = vec![change(
            1,
            EventKind::Insert,
            "a",
            Some(item("a", None, None)),
            None,
        )];
        let plan = ctx(Mode::Lww).plan(&batch).unwrap();
        assert_eq!(plan.unversioned, 1);
        let expected_version = Version::from_millis(1_700_000_000_000);
        let mut stamped = item("a", Some(expected_version.0), Some("us-east-1"));
        stamped.insert("text".into(), s("t"));
        assert_eq!(
            plan.writes[0].write,
            Write::Put {
                item: stamped,
                condition: Some(Condition::Newer {
                    version: expected_version,
                    origin: "us-east-1".into()
                })
            }
        );
    }

    #[test]
    fn bad_versions_are_errors_naming_record_key_and_problem() {
        let mut bad = item("a", None, Some("us-east-1"));
        bad.insert("rep_version".into(), s("seven"));
        let err = ctx(Mode::Lww)
            .plan(&[change(9, EventKind::Insert, "a", Some(bad), None)])
            .unwrap_err();
        assert_eq!(err.seq, "9");
        assert_eq!(err.key, r#""id"=S"a""#);
        assert!(err.problem.contains("rep_version"), "{err}");
        let err = ctx(Mode::OneWay)
            .plan(&[change(1, EventKind::Modify, "a", None, None)])
            .unwrap_err();
        assert!(err.problem.contains("no new image"));
    }
    fn apply(target: Option<Item>, write: &Write) -> Option<Item> {
        let attrs = VersionAttributes::default();
        match write {
            Write::Put { item, condition } => {
                if super::super::target::condition_holds(
                    condition.as_ref(),
                    target.as_ref(),
                    &attrs,
                ) {
                    Some(item.clone())
                } else {
                    target
                }
            }
            Write::Delete { condition, .. } => {
                if super::super::target::condition_holds(
                    condition.as_ref(),
                    target.as_ref(),
                    &attrs,
                ) {
                    None
                } else {
                    target
                }
            }
        }
    }

    fn lww_put(version: u64, origin: &str) -> Write {
        Write::Put {
            item: item("a", Some(version), Some(origin)),
            condition: Some(Condition::Newer {
                version: Version(version),
                origin: origin.to_owned(),
            }),
        }
    }

    fn lww_delete(version: u64) -> Write {
        Write::Delete {
            key: key("a"),
            condition: Some(Condition::NotNewerThan {
                version: Version(version),
            }),
        }
    }

    #[test]
    fn a_hard_delete_is_not_lost_behind_the_echo_of_an_older_delete() {
        // lww seed 5002721: in one batch of us-west-2's stream, a local update v20 and its hard delete,
        // then a replicated-in put v10 from us-east-1 (skipped) and the echo of its removal. Keeping
        // only the last write (delete <= 10) loses the local delete against a target holding v15.
        let ctx = PlanContext::new(
            Mode::Lww,
            "us-west-2",
            "us-east-1",
            VersionAttributes::default(),
        );
        let west = |v| item("a", Some(v), Some("us-west-2"));
        let east = |v| item("a", Some(v), Some("us-east-1"));
        let batch = vec![
            change(1, EventKind::Modify, "a", Some(west(20)), Some(west(15))),
            change(2, EventKind::Remove, "a", None, Some(west(20))),
            change(3, EventKind::Insert, "a", Some(east(10)), None),
            change(4, EventKind::Remove, "a", None, Some(east(10))),
        ];
        let plan = ctx.plan(&batch).unwrap();
        assert_eq!(plan.writes.len(), 1);
        let chain = &plan.writes[0];
        assert_eq!(chain.covers, vec![0, 1, 3]);
        let mut target = Some(west(15));
        for write in chain.before.iter().chain([&chain.write]) {
            target = apply(target, write);
        }
        assert_eq!(target, None, "the local hard delete reaches the target");
    }

    #[test]
    fn squashed_chains_leave_the_target_as_applying_every_write_in_order() {
        let mut rng = crate::sim::rng::Rng::new(20_261_130);
        let origins = ["us-east-1", "us-west-2"];
        let pick = |rng: &mut crate::sim::rng::Rng| {
            let version = 1 + rng.below(6);
            if rng.chance(0.5) {
                lww_put(version, origins[rng.below(2) as usize])
            } else {
                lww_delete(version)
            }
        };
        for case in 0..20_000 {
            let writes: Vec<Write> = (0..1 + rng.below(6)).map(|_| pick(&mut rng)).collect();
            let start = match rng.below(3) {
                0 => None,
                _ => Some(item(
                    "a",
                    Some(1 + rng.below(6)),
                    Some(origins[rng.below(2) as usize]),
                )),
            };
            let mut sequential = start.clone();
            for write in &writes {
                sequential = apply(sequential, write);
            }
            let mut chain: Vec<Write> = Vec::new();
            for write in &writes {
                chain.push(write.clone());
                while chain.len() >= 2 {
                    let n = chain.len();
                    match squash(&chain[n - 2], &chain[n - 1]) {
                        Some(one) => {
                            chain.truncate(n - 2);
                            chain.push(one);
                        }
                        None => break,
                    }
                }
            }
            let mut squashed = start.clone();
            for write in &chain {
                squashed = apply(squashed, write);
            }
            assert_eq!(
                squashed, sequential,
                "case {case}: start {start:?}, writes {writes:?}, chain {chain:?}"
            );
        }
    }
    fn text(mut i: Item, t: &str) -> Item {
        i.insert("text".into(), s(t));
        i
    }

    #[test]
    fn lww_an_unstamped_edit_of_a_replicated_in_item_is_a_local_write_with_a_fresh_version() {
        // A plain UpdateItem in us-east-1 on an item that arrived from us-west-2: the stamp stays
        // (v10, us-west-2), the data changes. Before, it was skipped as "replicated in", forever.
        let old = text(item("a", Some(10), Some("us-west-2")), "before");
        let new = text(item("a", Some(10), Some("us-west-2")), "after");
        let plan = ctx(Mode::Lww)
            .plan(&[change(1, EventKind::Modify, "a", Some(new), Some(old))])
            .unwrap();
        assert!(plan.skipped.is_empty(), "{plan:?}");
        assert_eq!(plan.restamped, 1);
        let fresh = Version::from_millis(1_700_000_000_000);
        assert_eq!(
            plan.writes[0].write,
            Write::Put {
                item: text(item("a", Some(fresh.0), Some("us-east-1")), "after"),
                condition: Some(Condition::Newer {
                    version: fresh,
                    origin: "us-east-1".into()
                })
            }
        );
        // The fresh version is above the one it replaces even when that one is in the future.
        let future = 1_700_000_000_000_000 + 5_000;
        let old = text(item("a", Some(future), Some("us-east-1")), "x");
        let new = text(item("a", Some(future), Some("us-east-1")), "y");
        let plan = ctx(Mode::Lww)
            .plan(&[change(2, EventKind::Modify, "a", Some(new), Some(old))])
            .unwrap();
        assert_eq!(plan.writes[0].version_millis, Some((future + 1) / 1000));
        match &plan.writes[0].write {
            Write::Put {
                condition: Some(Condition::Newer { version, .. }),
                ..
            } => assert_eq!(*version, Version(future + 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lww_echoes_and_no_ops_are_skipped_unknown_origins_replicated() {
        let echo_old = text(item("a", Some(5), Some("us-east-1")), "x");
        let echo_new = text(item("a", Some(9), Some("us-west-2")), "y");
        let same = text(item("b", Some(5), Some("us-east-1")), "x");
        let typo = text(item("c", Some(7), Some("us-east1")), "z");
        let plan = ctx(Mode::Lww)
            .plan(&[
                change(1, EventKind::Modify, "a", Some(echo_new), Some(echo_old)),
                change(2, EventKind::Modify, "b", Some(same.clone()), Some(same)),
                change(3, EventKind::Insert, "c", Some(typo.clone()), None),
            ])
            .unwrap();
        assert_eq!(
            plan.skipped,
            vec![(0, SkipReason::ReplicatedIn), (1, SkipReason::NoOp)]
        );
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(
            plan.writes[0].write,
            Write::Put {
                item: typo,
                condition: Some(Condition::Newer {
                    version: Version(7),
                    origin: "us-east1".into()
                })
            }
        );
        assert!(ctx(Mode::Lww).warned_origins.lock().unwrap().is_empty());
    }
    #[test]
    fn lww_checks_the_first_tombstone_it_sees_once() {
        use std::sync::atomic::Ordering;
        let ctx = ctx(Mode::Lww);
        let live = item("a", Some(5_000), Some("us-east-1"));
        ctx.plan(&[change(1, EventKind::Insert, "a", Some(live), None)])
            .unwrap();
        assert!(
            !ctx.tombstone_checked.load(Ordering::SeqCst),
            "not a tombstone"
        );
        let mut tomb = item(
            "b",
            Some(Version::from_millis(1_700_000_000_000).0),
            Some("us-east-1"),
        );
        tomb.insert("rep_deleted".into(), AttributeValue::Bool(true));
        tomb.insert("rep_expires".into(), n(1_700_000_000 + 3600));
        ctx.plan(&[change(2, EventKind::Insert, "b", Some(tomb), None)])
            .unwrap();
        assert!(ctx.tombstone_checked.load(Ordering::SeqCst));
    }
    #[test]
    fn made_up_versions_of_one_key_never_collide_across_batches() {
        // Two unstamped writes of one key in the same second, read in two batches: the same fallback
        // before, so the second copy landed by the equal-stamp rule and looked, in the other
        // direction, like an unstamped edit of the target's own item.
        let ctx = ctx(Mode::Lww);
        let version_of = |plan: &Plan| match &plan.writes[0].write {
            Write::Put {
                condition: Some(Condition::Newer { version, .. }),
                ..
            } => *version,
            other => panic!("{other:?}"),
        };
        let first = ctx
            .plan(&[change(
                1,
                EventKind::Insert,
                "a",
                Some(item("a", None, None)),
                None,
            )])
            .unwrap();
        let mut second_image = item("a", None, None);
        second_image.insert("text".into(), s("changed"));
        let second = ctx
            .plan(&[change(
                2,
                EventKind::Modify,
                "a",
                Some(second_image),
                Some(item("a", None, None)),
            )])
            .unwrap();
        assert!(version_of(&second) > version_of(&first));
        assert_eq!(version_of(&first), Version::from_millis(1_700_000_000_000));
    }
}
