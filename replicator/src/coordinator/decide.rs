//! The lease loop's decisions as pure functions: a snapshot of the lease table and of this worker's
//! shard tasks in, actions out. `mod.rs` performs the actions (the AWS calls, spawning and stopping
//! tasks); tests drive these functions alone.
//!
//! Rules that keep a shard in one pair of hands:
//! - A shard is taken only when no task of this worker for it is alive: neither running nor told to
//!   stop and not yet ended (`busy`). A lease lost to an ambiguous renewal (applied, answer lost)
//!   still names this worker; it is taken again only after the old task has ended.
//! - A task's exit is acted on only if its generation is the one the loop holds for the shard; an
//!   older task's exit never releases or forgets a newer task's lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::Lease;
use crate::worker::ShardExit;

/// When this worker last saw each lease's counter change (its own monotonic clock).
#[derive(Debug, Default, Clone)]
pub struct Observations {
    seen: BTreeMap<String, (u64, Instant)>,
}

impl Observations {
    /// Notes the counters of a fresh listing.
    pub fn update(&mut self, leases: &[Lease], now: Instant) {
        for lease in leases {
            let entry = self
                .seen
                .entry(lease.shard.clone())
                .or_insert((lease.counter, now));
            if entry.0 != lease.counter {
                *entry = (lease.counter, now);
            }
        }
    }

    /// The counter has not moved for a whole lease duration on this worker's clock.
    pub fn stale(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        self.seen.get(&lease.shard).is_some_and(|(counter, since)| {
            *counter == lease.counter && now.saturating_duration_since(*since) >= duration
        })
    }
}

/// Hand-off requests this worker made: the one in flight, and shards whose owner declined.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requests {
    /// `(shard, owner)` asked for and not yet answered.
    pub pending: Option<(String, String)>,
    /// Shards whose owner said no (halted there): not asked for again.
    pub declined: BTreeSet<String>,
}

/// What the lease loop knows at one pass.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// This worker.
    pub me: &'a str,
    /// The lease table, as just listed.
    pub leases: &'a [Lease],
    /// Counter observations (updated with `leases` before deciding).
    pub observations: &'a Observations,
    /// Now, on this worker's monotonic clock.
    pub now: Instant,
    /// The lease duration.
    pub duration: Duration,
    /// The shard IDs of the last successful shard listing, if any.
    pub listed: Option<&'a BTreeSet<String>>,
    /// Shards with a task of this worker that counts toward its share (running or halted).
    pub held: &'a BTreeSet<String>,
    /// Shards whose task was told to stop after the lease was lost and has not ended yet.
    pub draining: &'a BTreeSet<String>,
}

impl Snapshot<'_> {
    fn stale(&self, lease: &Lease) -> bool {
        self.observations.stale(lease, self.now, self.duration)
    }

    /// Owned by someone whose counter has not moved for a whole lease duration.
    pub fn expired(&self, lease: &Lease) -> bool {
        lease.owner.is_some() && self.stale(lease)
    }

    /// Released for another worker that asked for it: left to that worker for a lease duration.
    fn reserved_for_other(&self, lease: &Lease) -> bool {
        lease.owner.is_none()
            && lease.handoff_to.as_deref().is_some_and(|to| to != self.me)
            && !self.stale(lease)
    }

    /// A parent is done when its lease is finished, or when it has no lease and the last shard listing
    /// no longer has it (trimmed away). Before the first listing, a missing parent is not done.
    pub fn parents_done(&self, lease: &Lease) -> bool {
        lease
            .parents
            .iter()
            .all(|p| match self.leases.iter().find(|l| &l.shard == p) {
                Some(parent) => parent.finished,
                None => self.listed.is_some_and(|ids| !ids.contains(p)),
            })
    }

    /// Leases that can be worked on now: held by someone, or whose parents are done. Children waiting
    /// for their parents do not count toward anyone's share.
    fn unfinished(&self) -> Vec<&Lease> {
        self.leases
            .iter()
            .filter(|l| !l.finished && (l.owner.is_some() || self.parents_done(l)))
            .collect()
    }

    /// This worker's fair share: unfinished leases over live workers (this one included).
    pub fn share(&self) -> usize {
        let unfinished = self.unfinished();
        let mut workers: BTreeSet<&str> = unfinished
            .iter()
            .filter(|l| !self.expired(l))
            .filter_map(|l| l.owner.as_deref())
            .collect();
        workers.insert(self.me);
        unfinished.len().div_ceil(workers.len())
    }

    /// Leases to try to take, best first (reserved for this worker, then free, then expired), while
    /// this worker holds fewer than its share. Never a shard with a live task of this worker.
    pub fn to_take(&self) -> Vec<Lease> {
        let mut candidates: Vec<&Lease> = self
            .unfinished()
            .into_iter()
            .filter(|l| !self.held.contains(&l.shard) && !self.draining.contains(&l.shard))
            .filter(|l| l.owner.is_none() || l.owner.as_deref() == Some(self.me) || self.expired(l))
            .filter(|l| !self.reserved_for_other(l))
            .filter(|l| self.parents_done(l))
            .collect();
        candidates.sort_by_key(|l| {
            (
                l.handoff_to.as_deref() != Some(self.me),
                l.owner.is_some(),
                l.shard.clone(),
            )
        });
        let room = self.share().saturating_sub(self.held.len());
        if room == 0 {
            return Vec::new();
        }
        candidates.into_iter().cloned().collect()
    }

    /// After a pass that took nothing while below the share: the lease to ask the busiest worker for
    /// (`(lease, owner)`), if it holds more than the share. One request at a time; a request that came
    /// back cleared while the owner kept the lease was declined and is not repeated.
    pub fn handoff(&self, requests: &mut Requests) -> Option<(Lease, String)> {
        let share = self.share();
        if self.held.len() >= share {
            return None;
        }
        let unfinished = self.unfinished();
        let mut counts: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
        for lease in &unfinished {
            if let Some(owner) = lease.owner.as_deref()
                && owner != self.me
                && !self.expired(lease)
            {
                counts.entry(owner).or_default().push(lease);
            }
        }
        let pending = unfinished
            .iter()
            .any(|l| l.handoff_to.as_deref() == Some(self.me));
        if let Some((shard, owner)) = requests.pending.clone()
            && let Some(lease) = self.leases.iter().find(|l| l.shard == shard)
        {
            if lease.owner.as_deref() == Some(owner.as_str()) && lease.handoff_to.is_none() {
                requests.declined.insert(shard.clone());
            }
            if lease.handoff_to.as_deref() != Some(self.me) {
                requests.pending = None;
            }
        }
        let (owner, owned) = counts.into_iter().max_by_key(|(_, v)| v.len())?;
        if pending || owned.len() <= share || owned.iter().any(|l| l.handoff_to.is_some()) {
            return None;
        }
        let lease = owned
            .iter()
            .find(|l| self.parents_done(l) && !requests.declined.contains(&l.shard))?;
        Some(((*lease).clone(), owner.to_owned()))
    }
}

/// What to do after a held lease was renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRenewal {
    /// Nothing.
    Keep,
    /// Another worker asked for a halted shard: say no (nobody may read past its problem).
    Decline,
    /// Another worker asked for it: stop the task, then release the lease when it has ended.
    HandOver,
}

/// Decides what a renewed lease asks for.
pub fn after_renewal(renewed: &Lease, me: &str, halted: bool, handing_off: bool) -> AfterRenewal {
    match renewed.handoff_to.as_deref() {
        Some(to) if to != me && halted => AfterRenewal::Decline,
        Some(to) if to != me && !handing_off => AfterRenewal::HandOver,
        _ => AfterRenewal::Keep,
    }
}

/// What to do when a shard task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// The task is not the shard's current one (it was told to stop after its lease was lost):
    /// forget it; its lease is not this worker's to release.
    Stale,
    /// Release the lease (finished, stopped or handed over); `discover` when children may be ready.
    Release {
        /// The shard ended: list shards now so its children start at once.
        discover: bool,
    },
    /// The lease is gone: forget the shard.
    Forget,
    /// Keep the lease and renew it, so nobody reads past the problem, until an operator acts.
    Halt,
}

/// Decides what a task's exit means. `current` is the generation the loop holds for the shard, if any.
pub fn after_exit(current: Option<u64>, generation: u64, exit: &ShardExit) -> AfterExit {
    if current != Some(generation) {
        return AfterExit::Stale;
    }
    match exit {
        ShardExit::Finished => AfterExit::Release { discover: true },
        ShardExit::Stopped => AfterExit::Release { discover: false },
        ShardExit::LeaseLost => AfterExit::Forget,
        ShardExit::Halted => AfterExit::Halt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            shard: shard.to_owned(),
            owner: owner.map(str::to_owned),
            counter,
            checkpoint: None,
            parents: Vec::new(),
            starting: None,
            started: false,
            finished: false,
            handoff_to: None,
            expires_ms: 0,
        }
    }

    const D: Duration = Duration::from_secs(10);

    fn shards(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_lease_still_named_after_this_worker_is_not_retaken_while_its_old_task_runs() {
        // An ambiguous renewal: DynamoDB applied it, the answer was lost, the retry failed its
        // condition and the task was told to stop. The row still names this worker.
        let now = Instant::now();
        let leases = vec![lease("s1", Some("me"), 5)];
        let mut obs = Observations::default();
        obs.update(&leases, now);
        let none = BTreeSet::new();
        let draining = shards(&["s1"]);
        let snap = Snapshot {
            me: "me",
            leases: &leases,
            observations: &obs,
            now,
            duration: D,
            listed: None,
            held: &none,
            draining: &draining,
        };
        assert!(snap.to_take().is_empty(), "not while the old task runs");
        let after = Snapshot {
            draining: &none,
            ..snap
        };
        assert_eq!(
            after.to_take().iter().map(|l| &l.shard).collect::<Vec<_>>(),
            ["s1"],
            "taken again once the old task has ended"
        );
    }

    #[test]
    fn an_exit_of_an_older_task_never_touches_the_current_one() {
        for exit in [
            ShardExit::Finished,
            ShardExit::Stopped,
            ShardExit::LeaseLost,
            ShardExit::Halted,
        ] {
            assert_eq!(after_exit(Some(2), 1, &exit), AfterExit::Stale, "{exit:?}");
            assert_eq!(after_exit(None, 1, &exit), AfterExit::Stale, "{exit:?}");
        }
        assert_eq!(
            after_exit(Some(2), 2, &ShardExit::Stopped),
            AfterExit::Release { discover: false }
        );
        assert_eq!(
            after_exit(Some(2), 2, &ShardExit::Finished),
            AfterExit::Release { discover: true }
        );
        assert_eq!(
            after_exit(Some(2), 2, &ShardExit::LeaseLost),
            AfterExit::Forget
        );
        assert_eq!(after_exit(Some(2), 2, &ShardExit::Halted), AfterExit::Halt);
    }

    fn snapshot<'a>(
        leases: &'a [Lease],
        observations: &'a Observations,
        now: Instant,
        listed: Option<&'a BTreeSet<String>>,
        held: &'a BTreeSet<String>,
    ) -> Snapshot<'a> {
        Snapshot {
            me: "me",
            leases,
            observations,
            now,
            duration: D,
            listed,
            held,
            draining: held,
        }
    }

    fn names(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.shard.as_str()).collect()
    }

    #[test]
    fn share_take_order_and_expiry() {
        let t0 = Instant::now();
        let mut leases = vec![
            lease("a", None, 1),
            lease("b", Some("other"), 3),
            lease("c", Some("dead"), 7),
            lease("d", Some("other"), 2),
        ];
        let mut obs = Observations::default();
        obs.update(&leases, t0);
        let none = BTreeSet::new();
        // 4 leases, workers other, dead, me: share 2. Nothing is expired yet.
        let snap = snapshot(&leases, &obs, t0 + D / 2, None, &none);
        assert_eq!(snap.share(), 2);
        assert_eq!(names(&snap.to_take()), ["a"]);
        // A full duration later without "dead"'s counter moving (and "other" renewing).
        leases[1].counter += 3;
        leases[3].counter += 3;
        obs.update(&leases, t0 + D / 2);
        let later = snapshot(&leases, &obs, t0 + D, None, &none);
        assert!(later.expired(&leases[2]) && !later.expired(&leases[1]));
        assert_eq!(later.share(), 2, "4 leases over me and other");
        assert_eq!(names(&later.to_take()), ["a", "c"], "free before expired");
        // Holding its share, a worker takes nothing more.
        let two: BTreeSet<String> = shards(&["x", "y"]);
        let full = Snapshot {
            held: &two,
            draining: &none,
            ..later
        };
        assert!(full.to_take().is_empty());
    }

    #[test]
    fn children_wait_for_their_parents() {
        let now = Instant::now();
        let mut child = lease("child", None, 0);
        child.parents = vec!["parent".to_owned()];
        let mut leases = vec![lease("parent", Some("other"), 1), child];
        let mut obs = Observations::default();
        obs.update(&leases, now);
        let none = BTreeSet::new();
        let listed = shards(&["parent", "child"]);
        assert!(
            snapshot(&leases, &obs, now, Some(&listed), &none)
                .to_take()
                .is_empty()
        );
        leases[0].finished = true;
        leases[0].owner = None;
        assert_eq!(
            names(&snapshot(&leases, &obs, now, Some(&listed), &none).to_take()),
            ["child"]
        );
        // A parent gone from both the lease table and the listing (trimmed away) is done too; before
        // any listing it is not.
        let orphan = vec![leases[1].clone()];
        let empty = BTreeSet::new();
        assert_eq!(
            snapshot(&orphan, &obs, now, Some(&empty), &none)
                .to_take()
                .len(),
            1
        );
        assert!(
            snapshot(&orphan, &obs, now, None, &none)
                .to_take()
                .is_empty()
        );
    }

    #[test]
    fn handoff_asks_the_busiest_worker_once_and_remembers_a_refusal() {
        let now = Instant::now();
        let mut leases = vec![
            lease("a", Some("busy"), 1),
            lease("b", Some("busy"), 1),
            lease("c", Some("busy"), 1),
        ];
        let mut obs = Observations::default();
        obs.update(&leases, now);
        let none = BTreeSet::new();
        let mut requests = Requests::default();
        let (asked, owner) = snapshot(&leases, &obs, now, None, &none)
            .handoff(&mut requests)
            .expect("a request");
        assert_eq!((asked.shard.as_str(), owner.as_str()), ("a", "busy"));
        requests.pending = Some(("a".to_owned(), "busy".to_owned()));
        // While the request is pending (handoff_to names me), no second one.
        leases[0].handoff_to = Some("me".to_owned());
        assert!(
            snapshot(&leases, &obs, now, None, &none)
                .handoff(&mut requests)
                .is_none()
        );
        // The owner cleared it and kept the lease: declined; the next request names another shard.
        leases[0].handoff_to = None;
        let (next, _) = snapshot(&leases, &obs, now, None, &none)
            .handoff(&mut requests)
            .expect("another request");
        assert!(requests.declined.contains("a"));
        assert!(requests.pending.is_none());
        assert_eq!(next.shard, "b");
    }

    #[test]
    fn renewals_hand_over_or_decline() {
        let mut l = lease("s", Some("me"), 1);
        assert_eq!(after_renewal(&l, "me", false, false), AfterRenewal::Keep);
        l.handoff_to = Some("other".to_owned());
        assert_eq!(
            after_renewal(&l, "me", false, false),
            AfterRenewal::HandOver
        );
        assert_eq!(after_renewal(&l, "me", false, true), AfterRenewal::Keep);
        assert_eq!(after_renewal(&l, "me", true, false), AfterRenewal::Decline);
    }
}
