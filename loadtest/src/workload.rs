//! What the load is made of: the sample app's real API, and the ledger of what it acknowledged.
//!
//! Each request is a write with probability `write_ratio` (create 50%, update 35%, delete 15% of
//! writes) and otherwise a read (get one 80%, list 20%). Updates and deletes go to todos this run
//! created, never to one with a write already in flight, so every key's writes are ordered and its
//! last acknowledged write is its expected state. A write that may have been applied without an
//! answer (a timeout, a 5xx, a connection that broke after sending) makes its key *uncertain*:
//! it is used no more and left out of every check (counted as `uncertain_keys`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `POST /todos`.
    Create,
    /// `GET /todos/{id}`.
    Read(String),
    /// `PUT /todos/{id}`.
    Update(String),
    /// `DELETE /todos/{id}`.
    Delete(String),
    /// `GET /todos?limit=20`.
    List,
}

impl Op {
    /// Method, path and body.
    pub fn request(&self, n: u64) -> (Method, String, Option<Bytes>) {
        match self {
            Op::Create => (
                Method::POST,
                "/todos".to_owned(),
                Some(Bytes::from(format!(
                    "{{\"text\":\"loadtest {n}\",\"checked\":false}}"
                ))),
            ),
            Op::Read(id) => (Method::GET, format!("/todos/{id}"), None),
            Op::Update(id) => (
                Method::PUT,
                format!("/todos/{id}"),
                Some(Bytes::from(format!(
                    "{{\"text\":\"loadtest {n}\",\"checked\":{}}}",
                    n.is_multiple_of(2)
                ))),
            ),
            Op::Delete(id) => (Method::DELETE, format!("/todos/{id}"), None),
            Op::List => (Method::GET, "/todos?limit=20".to_owned(), None),
        }
    }

    /// Whether it changes data.
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Create | Op::Update(_) | Op::Delete(_))
    }

    /// The name used in the results.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Read(_) => "read",
            Op::Update(_) => "update",
            Op::Delete(_) => "delete",
            Op::List => "list",
        }
    }
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The todo.
    pub id: String,
    /// `put` (create or update) or `delete`.
    pub kind: AckKind,
    /// The version the app stamped (its `ETag`); None for deletes (204 carries none).
    pub version: Option<u64>,
    /// The region that acknowledged it.
    pub region: String,
    /// Seconds from the start of the run.
    pub at: f64,
}

/// What a write left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckKind {
    /// The item exists with the version.
    Put,
    /// The item is gone.
    Delete,
}

struct Keys {
    ready: Vec<String>,
    busy: HashSet<String>,
    uncertain: HashSet<String>,
    acks: Vec<Ack>,
    rng: u64,
}

/// The workload's state: the todos it may touch and what was acknowledged.
pub struct Workload {
    write_ratio: f64,
    keys: Mutex<Keys>,
}

/// splitmix64: a small, fast generator (the mix needs no cryptographic quality).
fn next(state: &mut u64) -> u64 {
    tworegion_common::mix::splitmix64(state)
}

fn unit(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}

impl Workload {
    /// A workload with this share of writes, its choices drawn from `seed`.
    pub fn new(write_ratio: f64, seed: u64) -> Workload {
        Workload {
            write_ratio,
            keys: Mutex::new(Keys {
                ready: Vec::new(),
                busy: HashSet::new(),
                uncertain: HashSet::new(),
                acks: Vec::new(),
                rng: seed,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next request; an update or delete takes its key until `done`.
    pub fn next_op(&self) -> Op {
        let mut k = self.lock();
        let k = &mut *k;
        let write = unit(&mut k.rng) < self.write_ratio;
        let pick = unit(&mut k.rng);
        let have = !k.ready.is_empty();
        if write {
            if pick < 0.5 || !have {
                return Op::Create;
            }
            let i = (next(&mut k.rng) % k.ready.len() as u64) as usize;
            let id = k.ready.swap_remove(i);
            k.busy.insert(id.clone());
            if pick < 0.85 {
                Op::Update(id)
            } else {
                Op::Delete(id)
            }
        } else if pick < 0.8 && have {
            let i = (next(&mut k.rng) % k.ready.len() as u64) as usize;
            Op::Read(k.ready[i].clone())
        } else {
            Op::List
        }
    }

    /// Records how a write ended: `acked` with the id, version and region when it succeeded;
    /// `maybe_applied` when it failed in a way that may have changed the item.
    pub fn done(&self, op: &Op, outcome: WriteOutcome) {
        if !op.is_write() {
            return;
        }
        let mut k = self.lock();
        let key = match op {
            Op::Update(id) | Op::Delete(id) => Some(id.clone()),
            _ => None,
        };
        if let Some(id) = &key {
            k.busy.remove(id);
        }
        match outcome {
            WriteOutcome::Acked {
                id,
                version,
                region,
                at,
            } => {
                let kind = if matches!(op, Op::Delete(_)) {
                    AckKind::Delete
                } else {
                    k.ready.push(id.clone());
                    AckKind::Put
                };
                k.acks.push(Ack {
                    id,
                    kind,
                    version,
                    region,
                    at,
                });
            }
            WriteOutcome::NotApplied => {
                if let Some(id) = key {
                    k.ready.push(id);
                }
            }
            WriteOutcome::MaybeApplied => {
                if let Some(id) = key {
                    k.uncertain.insert(id);
                }
            }
        }
    }

    /// Every acknowledged write, in the order acknowledged.
    pub fn acks(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    /// Keys left out of the checks.
    pub fn uncertain(&self) -> HashSet<String> {
        self.lock().uncertain.clone()
    }

    /// Keys with a write in flight now.
    pub fn busy(&self) -> HashSet<String> {
        self.lock().busy.clone()
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Acknowledged (2xx).
    Acked {
        /// The todo.
        id: String,
        /// Its `ETag` version.
        version: Option<u64>,
        /// The region that answered.
        region: String,
        /// Seconds from the start.
        at: f64,
    },
    /// Refused or never sent (4xx, connection refused).
    NotApplied,
    /// No answer, a 5xx or a connection broken after sending.
    MaybeApplied,
}

/// Each key's last acknowledged write (writes to a key never overlap, so that is its expected
/// state), without the uncertain keys.
pub fn expected(acks: &[Ack], uncertain: &HashSet<String>) -> HashMap<String, Ack> {
    let mut out = HashMap::new();
    for a in acks {
        if !uncertain.contains(&a.id) {
            out.insert(a.id.clone(), a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(w: &Workload, op: &Op, id: &str, v: u64) {
        w.done(
            op,
            WriteOutcome::Acked {
                id: id.to_owned(),
                version: Some(v),
                region: "r".into(),
                at: v as f64,
            },
        );
    }

    #[test]
    fn writes_to_a_key_never_overlap_and_uncertain_keys_are_left_out() {
        let w = Workload::new(1.0, 7);
        // Nothing exists yet: every write is a create.
        assert_eq!(w.next_op(), Op::Create);
        ack(&w, &Op::Create, "a", 1);
        // Only key "a" exists: the next writes to it take it; while taken, writes create.
        let mut taken = None;
        for _ in 0..50 {
            match w.next_op() {
                Op::Update(id) | Op::Delete(id) => {
                    assert!(taken.is_none(), "two writes in flight on {id}");
                    taken = Some(Op::Update(id));
                }
                Op::Create => {}
                other => panic!("a read with write ratio 1: {other:?}"),
            }
        }
        let op = taken.expect("the key was taken");
        w.done(&op, WriteOutcome::MaybeApplied);
        assert!(w.uncertain().contains("a"));
        for _ in 0..50 {
            assert_eq!(
                w.next_op(),
                Op::Create,
                "an uncertain key is not used again"
            );
        }
        let e = expected(&w.acks(), &w.uncertain());
        assert!(e.is_empty());
    }

    #[test]
    fn the_mix_follows_the_write_ratio() {
        let w = Workload::new(0.25, 1);
        ack(&w, &Op::Create, "a", 1);
        let mut writes = 0;
        for _ in 0..10_000 {
            let op = w.next_op();
            if op.is_write() {
                writes += 1;
                w.done(&op, WriteOutcome::NotApplied);
            }
        }
        assert!((2_300..2_700).contains(&writes), "{writes} writes of 10000");
    }
}
