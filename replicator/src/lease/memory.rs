//! An in-memory lease table with the DynamoDB implementation's conditional semantics, for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Lease, LeaseError, LeaseStore};
use crate::stream::SeqNo;

/// The in-memory lease table of one path.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    rows: Mutex<BTreeMap<String, Lease>>,
    fence: std::sync::atomic::AtomicU64,
}

impl MemoryLeases {
    fn update(
        &self,
        shard: &str,
        check: impl FnOnce(&Lease) -> bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, LeaseError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let row = rows.get_mut(shard);
        match row {
            Some(row) if check(row) => {
                change(row);
                row.counter += 1;
                Ok(row.clone())
            }
            Some(row) => Err(LeaseError::Lost {
                shard: shard.to_owned(),
                counter: row.counter,
            }),
            None => Err(LeaseError::Lost {
                shard: shard.to_owned(),
                counter: 0,
            }),
        }
    }

    /// Every lease row, without an await (the simulator's checks).
    pub fn rows(&self) -> Vec<Lease> {
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A lease row, for assertions.
    pub fn get(&self, shard: &str) -> Option<Lease> {
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(shard)
            .cloned()
    }
}

fn held_by(row: &Lease, held: &Lease) -> bool {
    row.owner.is_some() && row.owner == held.owner && row.counter == held.counter
}

impl LeaseStore for MemoryLeases {
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        Ok(self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn create(
        &self,
        shard: &str,
        parents: &[String],
        starting: Option<&SeqNo>,
        finished: bool,
    ) -> Result<bool, LeaseError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if rows.contains_key(shard) {
            return Ok(false);
        }
        rows.insert(
            shard.to_owned(),
            Lease {
                shard: shard.to_owned(),
                owner: None,
                counter: 0,
                checkpoint: None,
                parents: parents.to_vec(),
                starting: starting.cloned(),
                started: false,
                finished,
                handoff_to: None,
                expires_ms: 0,
            },
        );
        Ok(true)
    }

    async fn take(
        &self,
        observed: &Lease,
        worker: &str,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        self.update(
            &observed.shard,
            |row| row.counter == observed.counter,
            |row| {
                row.owner = Some(worker.to_owned());
                row.handoff_to = None;
                row.expires_ms = expires_ms;
            },
        )
    }

    async fn renew(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        self.update(
            &held.shard,
            |row| held_by(row, held),
            |row| row.expires_ms = expires_ms,
        )
    }

    async fn checkpoint(
        &self,
        held: &Lease,
        seq: Option<&SeqNo>,
        finished: bool,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        self.update(
            &held.shard,
            |row| held_by(row, held),
            |row| {
                if let Some(seq) = seq {
                    row.checkpoint = Some(seq.clone());
                }
                row.finished = finished;
                row.started = true;
                row.expires_ms = expires_ms;
            },
        )
    }

    async fn release(&self, held: &Lease) -> Result<(), LeaseError> {
        self.update(
            &held.shard,
            |row| held_by(row, held),
            |row| {
                // handoff_to stays: the lease is reserved for the worker that asked for it.
                row.owner = None;
            },
        )
        .map(drop)
    }

    async fn decline_handoff(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        self.update(
            &held.shard,
            |row| held_by(row, held),
            |row| {
                row.handoff_to = None;
                row.expires_ms = expires_ms;
            },
        )
    }

    async fn delete_finished(&self, observed: &Lease) -> Result<(), LeaseError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        match rows.get(&observed.shard) {
            Some(row) if row.finished && row.owner.is_none() => {
                rows.remove(&observed.shard);
                Ok(())
            }
            None => Ok(()),
            Some(row) => Err(LeaseError::Lost {
                shard: observed.shard.clone(),
                counter: row.counter,
            }),
        }
    }

    async fn next_fence(&self) -> Result<u64, LeaseError> {
        Ok(self.fence.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
    }

    async fn request_handoff(&self, observed: &Lease, worker: &str) -> Result<(), LeaseError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        match rows.get_mut(&observed.shard) {
            Some(row) if row.owner.is_some() && row.owner == observed.owner => {
                row.handoff_to = Some(worker.to_owned());
                Ok(())
            }
            _ => Err(LeaseError::Lost {
                shard: observed.shard.clone(),
                counter: observed.counter,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_that_lost_its_lease_cannot_move_the_checkpoint() {
        let store = MemoryLeases::default();
        assert!(store.create("s1", &[], None, false).await.unwrap());
        assert!(
            !store.create("s1", &[], None, false).await.unwrap(),
            "create is idempotent"
        );
        let free = store.get("s1").unwrap();
        let a = store.take(&free, "a", 1).await.unwrap();
        // b takes it over (say a's lease expired); a's later checkpoint is fenced off.
        let b = store.take(&a, "b", 2).await.unwrap();
        let seq = SeqNo::parse("42").unwrap();
        assert!(matches!(
            store.checkpoint(&a, Some(&seq), false, 3).await,
            Err(LeaseError::Lost { .. })
        ));
        assert!(matches!(
            store.renew(&a, 3).await,
            Err(LeaseError::Lost { .. })
        ));
        assert!(matches!(
            store.release(&a).await,
            Err(LeaseError::Lost { .. })
        ));
        assert_eq!(store.get("s1").unwrap().checkpoint, None);
        let b = store.checkpoint(&b, Some(&seq), false, 3).await.unwrap();
        assert_eq!(b.checkpoint, Some(seq));
        // A stale observation cannot take the lease either.
        assert!(matches!(
            store.take(&free, "c", 4).await,
            Err(LeaseError::Lost { .. })
        ));
        store.release(&b).await.unwrap();
        assert_eq!(store.get("s1").unwrap().owner, None);
    }
}
