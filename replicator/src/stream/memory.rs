//! An in-process stream: several shards, splits, trimming and iterator expiry, which the local AWS
//! cannot show. Tests drive it directly.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Change, EventKind, Page, SeqNo, Shard, StartAt, StreamError, StreamSource};
use crate::item::Item;

#[derive(Debug)]
struct ShardState {
    id: String,
    parent: Option<String>,
    /// The first sequence number this shard can hold.
    starting: u128,
    /// Records with their sequence numbers; entries before `trimmed` are gone.
    records: Vec<Change>,
    trimmed: usize,
    closed: bool,
    /// Gone from DescribeStream (closed and trimmed away, 24 hours after it closed).
    gone: bool,
}

#[derive(Debug, Clone)]
struct Cursor {
    shard: usize,
    position: usize,
    expired: bool,
}

#[derive(Debug, Default)]
struct State {
    shards: Vec<ShardState>,
    next_seq: u128,
    cursors: HashMap<String, Cursor>,
    next_cursor: u64,
    reads: usize,
    hang: bool,
}

/// Sequence numbers start here, so they have 21 digits as on AWS.
const BASE: u128 = 100_000_000_000_000_000_000;

/// The in-process stream.
#[derive(Debug, Default)]
pub struct MemoryStream {
    state: Mutex<State>,
}

impl MemoryStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a shard (with an optional parent).
    pub fn open_shard(&self, id: &str, parent: Option<&str>) {
        let mut state = self.lock();
        let starting = BASE + state.next_seq + 1;
        state.shards.push(ShardState {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
            starting,
            records: Vec::new(),
            trimmed: 0,
            closed: false,
            gone: false,
        });
    }

    /// Closes `parent` and opens `children` split from it.
    pub fn split(&self, parent: &str, children: &[&str]) {
        {
            let mut state = self.lock();
            if let Some(s) = state.shards.iter_mut().find(|s| s.id == parent) {
                s.closed = true;
            }
        }
        for child in children {
            self.open_shard(child, Some(parent));
        }
    }

    /// Appends a change to `shard`; returns its sequence number.
    pub fn append(
        &self,
        shard: &str,
        kind: EventKind,
        keys: Item,
        new_image: Option<Item>,
        old_image: Option<Item>,
    ) -> SeqNo {
        let mut state = self.lock();
        state.next_seq += 1;
        let seq = SeqNo::from_u128(BASE + state.next_seq);
        let shard = state
            .shards
            .iter_mut()
            .find(|s| s.id == shard && !s.closed)
            .unwrap_or_else(|| panic!("append to unknown or closed shard {shard}"));
        shard.records.push(Change {
            seq: seq.clone(),
            kind,
            keys,
            new_image,
            old_image,
            created_at: Some(1_700_000_000.0),
            by_ttl: false,
        });
        seq
    }

    /// Drops the oldest `count` records of `shard` (the 24-hour retention, compressed).
    pub fn trim(&self, shard: &str, count: usize) {
        let mut state = self.lock();
        if let Some(s) = state.shards.iter_mut().find(|s| s.id == shard) {
            s.trimmed = (s.trimmed + count).min(s.records.len());
        }
    }

    /// Drops a closed shard from the listing, with all its records (as DynamoDB does 24 hours after the
    /// shard closed): GetShardIterator on it then fails as trimmed.
    pub fn unlist(&self, shard: &str) {
        let mut state = self.lock();
        if let Some(s) = state.shards.iter_mut().find(|s| s.id == shard) {
            s.gone = true;
            s.trimmed = s.records.len();
        }
    }

    /// Makes every iterator handed out so far expire (the 15-minute limit, compressed).
    pub fn expire_iterators(&self) {
        for cursor in self.lock().cursors.values_mut() {
            cursor.expired = true;
        }
    }

    /// While on, GetRecords calls hang (a connection that never answers) until it is switched off.
    pub fn hang_reads(&self, on: bool) {
        self.lock().hang = on;
    }

    /// GetRecords calls served so far.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }
}

impl StreamSource for MemoryStream {
    async fn shards(&self) -> Result<Vec<Shard>, StreamError> {
        Ok(self
            .lock()
            .shards
            .iter()
            .filter(|s| !s.gone)
            .map(|s| Shard {
                id: s.id.clone(),
                parent: s.parent.clone(),
                starting: Some(SeqNo::from_u128(s.starting)),
                ending: if s.closed {
                    Some(
                        s.records
                            .last()
                            .map(|r| r.seq.clone())
                            .unwrap_or_else(|| SeqNo::from_u128(0)),
                    )
                } else {
                    None
                },
            })
            .collect())
    }

    async fn children(&self, parent: &str) -> Result<Vec<Shard>, StreamError> {
        Ok(self
            .shards()
            .await?
            .into_iter()
            .filter(|s| s.parent.as_deref() == Some(parent))
            .collect())
    }

    async fn iterator(&self, shard: &str, at: &StartAt) -> Result<String, StreamError> {
        let mut state = self.lock();
        let index = state
            .shards
            .iter()
            .position(|s| s.id == shard && !s.gone)
            .ok_or_else(|| StreamError::Trimmed(format!("no shard {shard}")))?;
        let s = &state.shards[index];
        let position = match at {
            StartAt::TrimHorizon => s.trimmed,
            StartAt::Latest => s.records.len(),
            StartAt::After(seq) => {
                let after = s
                    .records
                    .iter()
                    .position(|r| &r.seq > seq)
                    .unwrap_or(s.records.len());
                if after < s.trimmed {
                    return Err(StreamError::Trimmed(format!(
                        "shard {shard}: records after {seq} were trimmed"
                    )));
                }
                after
            }
            StartAt::At(seq) => {
                let at = s
                    .records
                    .iter()
                    .position(|r| &r.seq >= seq)
                    .unwrap_or(s.records.len());
                if at < s.trimmed {
                    return Err(StreamError::Trimmed(format!(
                        "shard {shard}: records from {seq} were trimmed"
                    )));
                }
                at
            }
        };
        state.next_cursor += 1;
        let name = format!("it-{}", state.next_cursor);
        state.cursors.insert(
            name.clone(),
            Cursor {
                shard: index,
                position,
                expired: false,
            },
        );
        Ok(name)
    }

    async fn read(&self, iterator: &str, limit: i32) -> Result<Page, StreamError> {
        while self.lock().hang {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut state = self.lock();
        state.reads += 1;
        let cursor = state
            .cursors
            .get(iterator)
            .cloned()
            .ok_or(StreamError::ExpiredIterator)?;
        if cursor.expired {
            return Err(StreamError::ExpiredIterator);
        }
        let shard = &state.shards[cursor.shard];
        if cursor.position < shard.trimmed {
            return Err(StreamError::Trimmed(format!(
                "shard {}: position {} is behind the trim horizon",
                shard.id, cursor.position
            )));
        }
        let limit = usize::try_from(limit.max(1)).unwrap_or(1);
        let end = (cursor.position + limit).min(shard.records.len());
        let changes = shard.records[cursor.position..end].to_vec();
        let finished = shard.closed && end == shard.records.len();
        let next = if finished {
            None
        } else {
            state.next_cursor += 1;
            let name = format!("it-{}", state.next_cursor);
            state.cursors.insert(
                name.clone(),
                Cursor {
                    shard: cursor.shard,
                    position: end,
                    expired: false,
                },
            );
            Some(name)
        };
        Ok(Page { changes, next })
    }
}
