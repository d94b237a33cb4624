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
//! a lost lease's task is told to stop; the shard is not taken again until that task has ended
//! a task's exit counts only if its generation is the shard's current one
//! on shutdown: stop every task (they finish in-flight writes and checkpoint), release every lease
//! ```

pub mod decide;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::decide::{AfterExit, AfterRenewal, Observations, Requests, Snapshot};
use crate::apply::target::TargetTable;
use crate::config::{Mode, StartPosition};
use crate::lease::{LeaseError, LeaseStore};
use crate::stream::StreamSource;
use crate::worker::{Engine, Held, ShardExit};

/// A shard task of this worker, as the lease loop sees it.
struct Running {
    held: Arc<Held>,
    /// Which task this is: exits of older tasks of the same shard are told apart by it.
    generation: u64,
    /// The task ended and the shard is halted: keep the lease (so no one skips the problem), renew it.
    halted: bool,
    /// Another worker asked for it: release once the task has stopped.
    handing_off: bool,
}

/// The loop's own bookkeeping of its shard tasks.
#[derive(Default)]
struct Tasks {
    /// Shards this worker holds, with their current task.
    running: BTreeMap<String, Running>,
    /// Shards whose lease was lost while their task still runs: task generation, told to stop. The
    /// shard is not taken again until that task has ended.
    draining: BTreeMap<String, u64>,
    next_generation: u64,
}

type Joined = Result<(String, u64, ShardExit), tokio::task::JoinError>;

/// Runs the lease loop until `shutdown` is cancelled and every lease is released.
pub async fn run<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: Arc<Engine<S, T, L>>,
    shutdown: CancellationToken,
) {
    let me = engine.worker_id.clone();
    let duration = engine.tuning.lease_duration;
    let mut state = Tasks::default();
    let mut tasks: JoinSet<(String, u64, ShardExit)> = JoinSet::new();
    // Which shard and generation each task is, for a task that panicked (its result is lost).
    let mut task_ids: BTreeMap<tokio::task::Id, (String, u64)> = BTreeMap::new();
    let mut observations = Observations::default();
    let (ended_tx, mut ended_rx) = mpsc::channel::<()>(16);
    let mut next_discovery = Instant::now();
    let mut first = true;
    let mut requests = Requests::default();
    // The shard IDs of the last successful listing.
    let mut listed: Option<BTreeSet<String>> = None;

    loop {
        if !first {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(engine.tuning.lease_interval()) => {}
                Some(()) = ended_rx.recv() => next_discovery = Instant::now(),
                Some(joined) = tasks.join_next_with_id() => {
                    let joined = identify(&engine, joined, &mut task_ids);
                    handle_exit(&engine, &mut state, joined, &ended_tx).await;
                    continue;
                }
            }
        }
        first = false;
        while let Some(joined) = tasks.try_join_next_with_id() {
            let joined = identify(&engine, joined, &mut task_ids);
            handle_exit(&engine, &mut state, joined, &ended_tx).await;
        }

        // Renew.
        let mut renew_ok = true;
        let mut lost = Vec::new();
        // All at once: one slow renewal must not hold back the others past their validity.
        let renewals = futures::future::join_all(state.running.iter().map(|(shard, run)| {
            let held = run.held.clone();
            let leases = &engine.leases;
            let expires = crate::worker::now_millis() + duration.as_millis() as u64;
            async move {
                let renewed = held
                    .change(|lease| async move { leases.renew(&lease, expires).await })
                    .await;
                (shard.clone(), renewed)
            }
        }))
        .await;
        for (shard, renewed) in renewals {
            let Some(run) = state.running.get_mut(&shard) else {
                continue;
            };
            let leases = &engine.leases;
            match renewed {
                Ok(lease) => {
                    match decide::after_renewal(&lease, &me, run.halted, run.handing_off) {
                        AfterRenewal::Keep => {}
                        AfterRenewal::Decline => {
                            let to = lease.handoff_to.clone().unwrap_or_default();
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
                        }
                        AfterRenewal::HandOver => {
                            let to = lease.handoff_to.clone().unwrap_or_default();
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
            if let Some(run) = state.running.remove(&shard) {
                run.held.stop.cancel();
                if run.halted {
                    // The task has ended already. Someone else holds the halted shard now; it is
                    // theirs to report.
                    engine.health.shard_resumed();
                    engine.metrics.shards_stopped.dec();
                } else {
                    // Its task may still be finishing a write: the shard is not taken again (even
                    // if the lease row still names this worker) until the task has ended.
                    state.draining.insert(shard, run.generation);
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
        observations.update(&leases, Instant::now());
        let held: BTreeSet<String> = state.running.keys().cloned().collect();
        let draining: BTreeSet<String> = state.draining.keys().cloned().collect();
        let snapshot = Snapshot {
            me: &me,
            leases: &leases,
            observations: &observations,
            now: Instant::now(),
            duration,
            listed: listed.as_ref(),
            held: &held,
            draining: &draining,
        };
        let share = snapshot.share();
        let candidates = snapshot.to_take();
        let mut took_any = false;
        for lease in candidates {
            if state.running.len() >= share || shutdown.is_cancelled() {
                break;
            }
            // One-way writes are fenced: draw the token after observing the lease and before taking
            // it, so every later owner of this shard (or of its children) holds a higher one.
            let fence = if engine.plan.mode == Mode::OneWay {
                match engine.leases.next_fence().await {
                    Ok(fence) => fence,
                    Err(error) => {
                        engine.metrics.error(error.kind());
                        tracing::warn!(shard_id = %lease.shard, error = %error, "Drawing a fencing token failed; the take waits for the next pass.");
                        break;
                    }
                }
            } else {
                0
            };
            let expires = crate::worker::now_millis() + duration.as_millis() as u64;
            // The lease is valid from when the take was sent, not from when its answer arrived: a
            // slow answer must not stretch this worker's belief past what other workers observe.
            let sent = Instant::now();
            match engine.leases.take(&lease, &me, expires).await {
                Ok(taken) => {
                    took_any = true;
                    engine.metrics.lease_change("taken");
                    tracing::info!(shard_id = %taken.shard, previous_owner = ?lease.owner, "Lease taken.");
                    let held_lease = Arc::new(
                        Held::new(taken.clone(), shutdown.child_token(), sent).with_fence(fence),
                    );
                    state.next_generation += 1;
                    let generation = state.next_generation;
                    state.running.insert(
                        taken.shard.clone(),
                        Running {
                            held: held_lease.clone(),
                            generation,
                            halted: false,
                            handing_off: false,
                        },
                    );
                    let engine = engine.clone();
                    let shard = taken.shard.clone();
                    let handle = tasks.spawn(async move {
                        let exit = engine.run_shard(held_lease).await;
                        (taken.shard, generation, exit)
                    });
                    task_ids.insert(handle.id(), (shard, generation));
                }
                Err(LeaseError::Lost { .. }) => {} // someone else was quicker
                Err(error) => {
                    engine.metrics.error(error.kind());
                    tracing::warn!(shard_id = %lease.shard, error = %error, "Taking a lease failed.");
                }
            }
        }
        if !took_any && let Some((lease, owner)) = snapshot.handoff(&mut requests) {
            match engine.leases.request_handoff(&lease, &me).await {
                Ok(()) => {
                    requests.pending = Some((lease.shard.clone(), owner.clone()));
                    engine.metrics.lease_change("handoff_requested");
                    tracing::info!(shard_id = %lease.shard, owner, "Asked for a lease to balance load.");
                }
                Err(error) => tracing::debug!(error = %error, "Hand-off request lost a race."),
            }
        }
        engine.metrics.shards_owned.set(state.running.len() as i64);
        engine.health.publish(&engine.metrics);
    }

    // Shutdown: tasks were cancelled with the shutdown token; wait for their final checkpoints.
    tracing::info!(shards = state.running.len(), "Stopping shard tasks.");
    while let Some(joined) = tasks.join_next_with_id().await {
        let joined = identify(&engine, joined, &mut task_ids);
        handle_exit(&engine, &mut state, joined, &ended_tx).await;
    }
    for (shard, run) in std::mem::take(&mut state.running) {
        release(&engine, &shard, &run.held).await;
    }
    engine.metrics.shards_owned.set(0);
}

/// A joined task with its shard and generation (also for a task that panicked).
fn identify<S: StreamSource, T: TargetTable, L: LeaseStore>(
    engine: &Engine<S, T, L>,
    joined: Result<(tokio::task::Id, (String, u64, ShardExit)), tokio::task::JoinError>,
    ids: &mut BTreeMap<tokio::task::Id, (String, u64)>,
) -> Joined {
    match joined {
        Ok((id, done)) => {
            ids.remove(&id);
            Ok(done)
        }
        Err(error) => {
            if let Some((shard, generation)) = ids.remove(&error.id()) {
                // A panic is a bug in this process: halt the shard loudly (the lease stays here and is
                // renewed, so nobody reads past the record that caused it) instead of losing track.
                tracing::error!(shard_id = %shard, error = %error, "A shard task panicked; the shard is stopped.");
                engine.metrics.shards_stopped.inc();
                engine.health.shard_stopped();
                return Ok((shard, generation, ShardExit::Halted));
            }
            Err(error)
        }
    }
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
    state: &mut Tasks,
    joined: Joined,
    ended: &mpsc::Sender<()>,
) {
    let (shard, generation, exit) = match joined {
        Ok(done) => done,
        Err(error) => {
            // Every task is spawned with its id recorded, so this cannot name a shard: count it as a
            // stopped shard so readiness fails and the ERROR is seen.
            tracing::error!(error = %error, "A shard task of unknown shard failed.");
            engine.metrics.shards_stopped.inc();
            engine.health.shard_stopped();
            return;
        }
    };
    if state.draining.get(&shard) == Some(&generation) {
        state.draining.remove(&shard);
    }
    let current = state.running.get(&shard).map(|r| r.generation);
    match decide::after_exit(current, generation, &exit) {
        AfterExit::Stale => {
            if exit == ShardExit::Halted {
                // The old task halted after its lease was lost: the new owner meets the same problem
                // and reports it; this worker no longer counts the shard as stopped.
                engine.health.shard_resumed();
                engine.metrics.shards_stopped.dec();
            }
        }
        AfterExit::Release { discover } => {
            if let Some(run) = state.running.remove(&shard) {
                release(engine, &shard, &run.held).await;
            }
            if discover {
                let _ = ended.try_send(());
            }
        }
        AfterExit::Forget => {
            state.running.remove(&shard);
        }
        AfterExit::Halt => {
            if let Some(run) = state.running.get_mut(&shard) {
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
    // The lease table first, then the stream: shards only ever leave the listing, and a finished lease
    // is deleted only after a listing lacked its shard, so no lease missing from this (older) read can
    // belong to a shard that the (newer) listing still shows. The other order re-creates, from a stale
    // listing, the lease of a shard that another worker just deleted as finished and trimmed away.
    let leases = engine.leases.list().await.map_err(DiscoverError::Lease)?;
    let shards = engine
        .source
        .shards()
        .await
        .map_err(DiscoverError::Stream)?;
    let ids: BTreeSet<String> = shards.iter().map(|s| s.id.clone()).collect();
    let mut known: BTreeSet<String> = leases.iter().map(|l| l.shard.clone()).collect();
    // Once some worker has begun reading a shard of the path (a lease marked started), replication has
    // begun: a new shard's parent is kept even when it has neither a lease nor a place in the listing
    // any more (trimmed away, for example after an outage longer than the retention), so the shard is
    // read as a child, from its first record, and a trim there is a reported gap. Before that (the
    // path's first discovery, also when it was interrupted half-way or another worker is creating the
    // same leases at the same moment) such a shard is a root that starts at --start-position: its
    // parent was never part of the replication.
    let began = leases.iter().any(|l| l.started);
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
            // `--start-position latest` on the path's first discovery means the newest records of the
            // shards open now: closed shards are marked finished unread, and open shards are roots that
            // start at LATEST (not children that would replay their whole lineage from the first
            // record, up to 24 hours back).
            let latest = !began && engine.start_position == StartPosition::Latest;
            let finished = latest && shard.ending.is_some();
            let parents: Vec<String> = shard
                .parent
                .iter()
                .filter(|p| !latest && (began || ids.contains(*p) || known.contains(*p)))
                .cloned()
                .collect();
            match engine
                .leases
                .create(&shard.id, &parents, shard.starting.as_ref(), finished)
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
