//! The lease loop: find shards, take and balance leases, renew them, start and stop shard tasks.
//!
//! ```text
//! every lease interval (a third of the lease duration), or when a shard ends:
//!     renew every held lease                  lost -> stop its shard task
//!     list shards (periodically, and after a shard ended) and create leases for new ones
//!     list leases; note whose counters moved (a lease unchanged for a full duration is expired)
//!     share = ceil(unfinished leases / live workers)
//!     while held < share: take a free or expired lease whose parents are finished
//!     if none and a worker holds more than the share: ask it to hand one over
//!     a held lease that another worker asked for: stop its task, then release it
//! on shutdown: stop every task (they finish in-flight writes and checkpoint), release every lease
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::target::TargetTable;
use crate::lease::{Lease, LeaseError, LeaseStore};
use crate::stream::StreamSource;
use crate::worker::{Engine, Held, ShardExit};

struct Observation {
    counter: u64,
    since: Instant,
}

struct Running {
    held: Arc<Held>,
    /// The task ended and the shard is halted: keep the lease (so no one skips the problem), renew it.
    halted: bool,
    /// Another worker asked for it: release once the task has stopped.
    handing_off: bool,
}

/// Runs the lease loop until `shutdown` is cancelled and every lease is released.
pub async fn run<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: Arc<Engine<S, T, L>>,
    shutdown: CancellationToken,
) {
    let me = engine.worker_id.clone();
    let duration = engine.tuning.lease_duration;
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut tasks: JoinSet<(String, ShardExit)> = JoinSet::new();
    let mut observed: BTreeMap<String, Observation> = BTreeMap::new();
    let (ended_tx, mut ended_rx) = mpsc::channel::<()>(16);
    let mut next_discovery = Instant::now();
    let mut first = true;
    // Hand-off requests: the one in flight, and shards whose owner declined (halted there).
    let mut requested: Option<(String, String)> = None;
    let mut declined: BTreeSet<String> = BTreeSet::new();
    // The shard IDs of the last successful listing.
    let mut listed: Option<BTreeSet<String>> = None;

    loop {
        if !first {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(engine.tuning.lease_interval()) => {}
                Some(()) = ended_rx.recv() => next_discovery = Instant::now(),
                Some(joined) = tasks.join_next() => {
                    handle_exit(&engine, &mut running, joined, &ended_tx).await;
                    continue;
                }
            }
        }
        first = false;
        while let Some(joined) = tasks.try_join_next() {
            handle_exit(&engine, &mut running, joined, &ended_tx).await;
        }

        // Renew.
        let mut renew_ok = true;
        let mut lost = Vec::new();
        for (shard, run) in &mut running {
            let expires = crate::worker::now_millis() + duration.as_millis() as u64;
            let leases = &engine.leases;
            match run
                .held
                .change(|lease| async move { leases.renew(&lease, expires).await })
                .await
            {
                Ok(lease) => {
                    if let Some(to) = lease.handoff_to.as_deref().filter(|to| *to != me) {
                        if run.halted {
                            // A halted shard stays here (nobody may read past its problem): say no, so
                            // the requester asks for another lease.
                            let expires = crate::worker::now_millis() + duration.as_millis() as u64;
                            let declined = run
                                .held
                                .change(|lease| async move {
                                    leases.decline_handoff(&lease, expires).await
                                })
                                .await;
                            if declined.is_ok() {
                                tracing::info!(shard_id = %shard, to, "Hand-off of a halted shard declined.");
                            }
                        } else if !run.handing_off {
                            tracing::info!(shard_id = %shard, to, "Handing the lease over to balance load.");
                            run.handing_off = true;
                            run.held.stop.cancel();
                        }
                    }
                }
                Err(LeaseError::Lost { .. }) => {
                    engine.metrics.lease_change("lost");
                    tracing::warn!(shard_id = %shard, "Lease lost to another worker; stopping the shard.");
                    lost.push(shard.clone());
                }
                Err(error) => {
                    renew_ok = false;
                    engine.metrics.error(error.kind());
                    tracing::warn!(shard_id = %shard, error = %error, "Lease renewal failed; retrying.");
                }
            }
        }
        for shard in lost {
            if let Some(run) = running.remove(&shard) {
                run.held.stop.cancel();
                if run.halted {
                    // Someone else holds the halted shard now; it is theirs to report.
                    engine.health.shard_resumed();
                    engine.metrics.shards_stopped.dec();
                }
            }
        }

        // Discover shards.
        if Instant::now() >= next_discovery {
            match discover(&engine).await {
                Ok(ids) => {
                    listed = Some(ids);
                    next_discovery = Instant::now() + engine.tuning.shard_sync_interval;
                }
                Err(error) => {
                    engine.metrics.error(error.kind());
                    tracing::warn!(error = %error, "Listing shards failed; retrying.");
                }
            }
        }

        // Observe, take, balance.
        let leases = match engine.leases.list().await {
            Ok(leases) => leases,
            Err(error) => {
                engine.metrics.error(error.kind());
                tracing::warn!(error = %error, "Listing leases failed; retrying.");
                continue;
            }
        };
        if renew_ok {
            engine.health.lease_synced();
        }
        let now = Instant::now();
        for lease in &leases {
            let entry = observed.entry(lease.shard.clone()).or_insert(Observation {
                counter: lease.counter,
                since: now,
            });
            if entry.counter != lease.counter {
                *entry = Observation {
                    counter: lease.counter,
                    since: now,
                };
            }
        }
        // Unchanged for a whole lease duration on this worker's clock.
        let stale = |lease: &Lease| {
            observed
                .get(&lease.shard)
                .is_some_and(|o| o.counter == lease.counter && o.since.elapsed() >= duration)
        };
        let expired = |lease: &Lease| lease.owner.is_some() && stale(lease);
        // Released for another worker that asked for it: leave it to that worker for a lease duration.
        let reserved_for_other = |lease: &Lease| {
            lease.owner.is_none()
                && lease.handoff_to.as_deref().is_some_and(|to| to != me)
                && !stale(lease)
        };
        let by_shard: BTreeMap<&str, &Lease> =
            leases.iter().map(|l| (l.shard.as_str(), l)).collect();
        // A parent is done when its lease is finished, or when it has no lease and the last shard
        // listing no longer has it (trimmed away). Before the first listing, a missing parent is not done.
        let parents_done = |lease: &Lease| {
            lease
                .parents
                .iter()
                .all(|p| match by_shard.get(p.as_str()) {
                    Some(parent) => parent.finished,
                    None => listed.as_ref().is_some_and(|ids| !ids.contains(p)),
                })
        };
        // Leases that can be worked on now: held, or whose parents are done. Children waiting for
        // their parents do not count toward a worker's share.
        let unfinished: Vec<&Lease> = leases
            .iter()
            .filter(|l| !l.finished && (l.owner.is_some() || parents_done(l)))
            .collect();
        let mut workers: BTreeSet<&str> = unfinished
            .iter()
            .filter(|l| !expired(l))
            .filter_map(|l| l.owner.as_deref())
            .collect();
        workers.insert(&me);
        let share = unfinished.len().div_ceil(workers.len());
        let mut candidates: Vec<&Lease> = unfinished
            .iter()
            .copied()
            .filter(|l| !running.contains_key(&l.shard))
            .filter(|l| l.owner.is_none() || l.owner.as_deref() == Some(me.as_str()) || expired(l))
            .filter(|l| !reserved_for_other(l))
            .filter(|l| parents_done(l))
            .collect();
        // Leases reserved for this worker first, then free ones, then expired ones.
        candidates.sort_by_key(|l| {
            (
                l.handoff_to.as_deref() != Some(me.as_str()),
                l.owner.is_some(),
                l.shard.clone(),
            )
        });
        let mut took_any = false;
        for lease in candidates {
            if running.len() >= share || shutdown.is_cancelled() {
                break;
            }
            let expires = crate::worker::now_millis() + duration.as_millis() as u64;
            match engine.leases.take(lease, &me, expires).await {
                Ok(taken) => {
                    took_any = true;
                    engine.metrics.lease_change("taken");
                    tracing::info!(shard_id = %taken.shard, previous_owner = ?lease.owner, "Lease taken.");
                    let held = Arc::new(Held::new(
                        taken.clone(),
                        shutdown.child_token(),
                        Instant::now(),
                    ));
                    running.insert(
                        taken.shard.clone(),
                        Running {
                            held: held.clone(),
                            halted: false,
                            handing_off: false,
                        },
                    );
                    let engine = engine.clone();
                    tasks.spawn(async move {
                        let exit = engine.run_shard(held).await;
                        (taken.shard, exit)
                    });
                }
                Err(LeaseError::Lost { .. }) => {} // someone else was quicker
                Err(error) => {
                    engine.metrics.error(error.kind());
                    tracing::warn!(shard_id = %lease.shard, error = %error, "Taking a lease failed.");
                }
            }
        }
        if !took_any && running.len() < share {
            // Ask the busiest worker for one lease, if it holds more than its share.
            let mut counts: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
            for lease in &unfinished {
                if let Some(owner) = lease.owner.as_deref()
                    && owner != me
                    && !expired(lease)
                {
                    counts.entry(owner).or_default().push(lease);
                }
            }
            // One request at a time: wait while a lease is on its way to this worker.
            let pending = unfinished
                .iter()
                .any(|l| l.handoff_to.as_deref() == Some(me.as_str()));
            // A request that came back cleared while the owner kept the lease was declined.
            if let Some((shard, owner)) = &requested
                && let Some(lease) = by_shard.get(shard.as_str())
            {
                if lease.owner.as_deref() == Some(owner.as_str()) && lease.handoff_to.is_none() {
                    declined.insert(shard.clone());
                }
                if lease.handoff_to.as_deref() != Some(me.as_str()) {
                    requested = None;
                }
            }
            if let Some((owner, owned)) = counts.into_iter().max_by_key(|(_, v)| v.len())
                && !pending
                && owned.len() > share
                && owned.iter().all(|l| l.handoff_to.is_none())
                && let Some(lease) = owned
                    .iter()
                    .find(|l| parents_done(l) && !declined.contains(&l.shard))
            {
                match engine.leases.request_handoff(lease, &me).await {
                    Ok(()) => {
                        requested = Some((lease.shard.clone(), owner.to_owned()));
                        engine.metrics.lease_change("handoff_requested");
                        tracing::info!(shard_id = %lease.shard, owner, "Asked for a lease to balance load.");
                    }
                    Err(error) => tracing::debug!(error = %error, "Hand-off request lost a race."),
                }
            }
        }
        engine.metrics.shards_owned.set(running.len() as i64);
    }

    // Shutdown: tasks were cancelled with the shutdown token; wait for their final checkpoints.
    tracing::info!(shards = running.len(), "Stopping shard tasks.");
    while let Some(joined) = tasks.join_next().await {
        handle_exit(&engine, &mut running, joined, &ended_tx).await;
    }
    for (shard, run) in std::mem::take(&mut running) {
        release(&engine, &shard, &run.held).await;
    }
    engine.metrics.shards_owned.set(0);
}

async fn release<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: &Engine<S, T, L>,
    shard: &str,
    held: &Held,
) {
    let lease = held.lease().await;
    match engine.leases.release(&lease).await {
        Ok(()) => {
            engine.metrics.lease_change("released");
            tracing::info!(shard_id = %shard, "Lease released.");
        }
        Err(error) => {
            engine.metrics.error(error.kind());
            tracing::warn!(shard_id = %shard, error = %error, "Releasing the lease failed; it will expire.");
        }
    }
}

async fn handle_exit<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: &Engine<S, T, L>,
    running: &mut BTreeMap<String, Running>,
    joined: Result<(String, ShardExit), tokio::task::JoinError>,
    ended: &mpsc::Sender<()>,
) {
    let (shard, exit) = match joined {
        Ok(done) => done,
        Err(error) => {
            // A panic in a shard task is a bug; its lease stays held until the process exits and then
            // expires, so the shard is retried by another worker from its checkpoint.
            tracing::error!(error = %error, "A shard task panicked.");
            engine.health.shard_stopped();
            return;
        }
    };
    match exit {
        ShardExit::Finished => {
            if let Some(run) = running.remove(&shard) {
                release(engine, &shard, &run.held).await;
            }
            let _ = ended.try_send(());
        }
        ShardExit::Stopped => {
            if let Some(run) = running.remove(&shard) {
                release(engine, &shard, &run.held).await;
            }
        }
        ShardExit::LeaseLost => {
            running.remove(&shard);
        }
        ShardExit::Halted => {
            if let Some(run) = running.get_mut(&shard) {
                run.halted = true;
            }
        }
    }
}

/// Lists the stream's shards and creates a lease for each new one, parents before children, stopping
/// at the first failure (so a child's lease never exists without its parent's). Returns the shard IDs
/// listed.
async fn discover<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: &Engine<S, T, L>,
) -> Result<BTreeSet<String>, DiscoverError> {
    let shards = engine
        .source
        .shards()
        .await
        .map_err(DiscoverError::Stream)?;
    let ids: BTreeSet<String> = shards.iter().map(|s| s.id.clone()).collect();
    let leases = engine.leases.list().await.map_err(DiscoverError::Lease)?;
    let mut known: BTreeSet<String> = leases.iter().map(|l| l.shard.clone()).collect();
    // Parents first: repeat passes over the shards whose parent has a lease (or is gone).
    let mut pending: Vec<&crate::stream::Shard> =
        shards.iter().filter(|s| !known.contains(&s.id)).collect();
    while !pending.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|s| {
            s.parent
                .as_ref()
                .is_none_or(|p| known.contains(p) || !ids.contains(p))
        });
        if ready.is_empty() {
            break; // a parent cycle cannot happen; be safe anyway
        }
        for shard in ready {
            let parents: Vec<String> = shard
                .parent
                .iter()
                .filter(|p| ids.contains(*p) || known.contains(*p))
                .cloned()
                .collect();
            match engine
                .leases
                .create(&shard.id, &parents, shard.starting.as_ref())
                .await
            {
                Ok(created) => {
                    if created {
                        tracing::info!(shard_id = %shard.id, parents = ?parents, "New shard found.");
                    }
                    known.insert(shard.id.clone());
                }
                Err(error) => return Err(DiscoverError::Lease(error)),
            }
        }
        pending = waiting;
    }
    // Finished leases of shards the stream no longer lists (trimmed away) are not needed any more:
    // their children already count a parent that is gone from both as done. Deleting them keeps the
    // lease table, which every worker reads every few seconds, from growing with every rollover.
    // (The listing from the start of this pass will do: the deletion is conditional on the lease
    // still being finished and free.)
    for lease in leases
        .iter()
        .filter(|l| l.finished && l.owner.is_none() && !ids.contains(&l.shard))
    {
        match engine.leases.delete_finished(lease).await {
            Ok(()) => {
                engine.metrics.lease_change("deleted");
                tracing::info!(shard_id = %lease.shard, "Finished lease of a trimmed shard deleted.");
            }
            Err(error) => tracing::debug!(error = %error, "Deleting a finished lease lost a race."),
        }
    }
    Ok(ids)
}

#[derive(Debug, thiserror::Error)]
enum DiscoverError {
    #[error(transparent)]
    Stream(crate::stream::StreamError),
    #[error(transparent)]
    Lease(LeaseError),
}

impl DiscoverError {
    fn kind(&self) -> &'static str {
        match self {
            DiscoverError::Stream(e) => e.kind(),
            DiscoverError::Lease(e) => e.kind(),
        }
    }
}
