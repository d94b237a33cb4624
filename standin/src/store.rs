//! The tables, their streams and their limits, in memory. Everything here is synchronous and fast; the
//! server adds latency and the wire format around it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::expr::{Expressions, Invalid};
use crate::value::{Item, Value, compare_numbers, is_number, item_size};

/// A refused request: the DynamoDB error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// For example `ConditionalCheckFailedException`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

impl Refused {
    /// A refusal.
    pub fn new(code: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Refused {
        Refused::new("ValidationException", message)
    }
}

impl From<Invalid> for Refused {
    fn from(invalid: Invalid) -> Refused {
        Refused::validation(invalid.0)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Limits that apply to every table.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Shards a new stream starts with.
    pub shards: usize,
    /// GetRecords calls per second per shard (DynamoDB Streams allows 5); 0: unlimited.
    pub get_records_per_second: u32,
    /// Write capacity units per second per partition (DynamoDB allows 1,000); 0: unlimited.
    pub partition_write_units: u32,
    /// Partitions per table, for the write limit.
    pub partitions: usize,
    /// How long a shard iterator stays valid (DynamoDB: 15 minutes).
    pub iterator_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            shards: 1,
            get_records_per_second: 5,
            partition_write_units: 0,
            partitions: 4,
            iterator_lifetime: Duration::from_secs(15 * 60),
        }
    }
}

/// The key type of a key attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// String.
    S,
    /// Number.
    N,
    /// Binary.
    B,
}

impl KeyType {
    fn name(self) -> &'static str {
        match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        }
    }

    /// Parses `S`, `N` or `B`.
    pub fn parse(text: &str) -> Option<KeyType> {
        match text {
            "S" => Some(KeyType::S),
            "N" => Some(KeyType::N),
            "B" => Some(KeyType::B),
            _ => None,
        }
    }
}

/// A sort key value, ordered as DynamoDB orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SortKey {
    None,
    Text(String),
    Number(String),
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (SortKey::Number(a), SortKey::Number(b)) => {
                compare_numbers(a, b).unwrap_or(std::cmp::Ordering::Equal)
            }
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::None, SortKey::None) => std::cmp::Ordering::Equal,
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl SortKey {
    fn rank(&self) -> u8 {
        match self {
            SortKey::None => 0,
            SortKey::Text(_) => 1,
            SortKey::Number(_) => 2,
        }
    }
}

/// A stream's view type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Keys only.
    KeysOnly,
    /// The new image.
    NewImage,
    /// The old image.
    OldImage,
    /// Both.
    NewAndOldImages,
}

impl View {
    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<View> {
        match text {
            "KEYS_ONLY" => Some(View::KeysOnly),
            "NEW_IMAGE" => Some(View::NewImage),
            "OLD_IMAGE" => Some(View::OldImage),
            "NEW_AND_OLD_IMAGES" => Some(View::NewAndOldImages),
            _ => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            View::KeysOnly => "KEYS_ONLY",
            View::NewImage => "NEW_IMAGE",
            View::OldImage => "OLD_IMAGE",
            View::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }
}

/// One stream record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number.
    pub seq: u128,
    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub event: &'static str,
    /// The key attributes.
    pub keys: Item,
    /// The item after the change (per the view type).
    pub new: Option<Item>,
    /// The item before the change (per the view type).
    pub old: Option<Item>,
    /// When the change happened, epoch seconds (whole seconds, as DynamoDB gives them).
    pub created: u64,
    /// The record's size (keys and images).
    pub size: usize,
}

/// One shard of a stream: a hash range of partition keys for a span of time.
#[derive(Debug)]
pub struct Shard {
    /// Shard ID.
    pub id: String,
    /// The shard it continues, if any.
    pub parent: Option<String>,
    /// The partition-key hashes it holds, inclusive.
    pub range: (u64, u64),
    /// The first sequence number it could hold.
    pub start: u128,
    /// The last sequence number, once closed.
    pub end: Option<u128>,
    /// Its records, in order.
    pub records: Vec<Record>,
    /// When GetRecords was last called on it (for the per-shard rate limit).
    calls: VecDeque<Instant>,
}

/// A table's stream.
#[derive(Debug)]
pub struct Stream {
    /// Its ARN.
    pub arn: String,
    /// Its label.
    pub label: String,
    /// Its view type.
    pub view: View,
    /// Every shard ever (none is trimmed: the stand-in keeps all records).
    pub shards: Vec<Shard>,
    next_seq: u128,
}

/// Counters and the lag record of a table (control endpoint).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Writes applied (put, update, delete that found its condition true).
    pub writes: u64,
    /// Writes refused by their condition.
    pub conditional_failures: u64,
    /// Writes refused for capacity.
    pub throttled_writes: u64,
    /// GetRecords calls.
    pub get_records: u64,
    /// GetRecords calls refused for the rate limit.
    pub throttled_reads: u64,
    /// Records returned by GetRecords.
    pub records_read: u64,
    /// For every applied write of an item carrying `bench_ms`: milliseconds from then to the write.
    pub lag_ms: Vec<u32>,
    /// When the first and the last such write happened (epoch ms).
    pub first_write_ms: u64,
    /// See `first_write_ms`.
    pub last_write_ms: u64,
}

/// The attribute that the control endpoint's records carry: when the record was created (epoch ms).
/// A write of an item carrying it records its lag.
pub const BENCH_MS: &str = "bench_ms";

/// A table.
#[derive(Debug)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// Partition key name and type.
    pub hash: (String, KeyType),
    /// Sort key name and type.
    pub range: Option<(String, KeyType)>,
    items: BTreeMap<String, BTreeMap<SortKey, Item>>,
    count: usize,
    /// Its stream.
    pub stream: Option<Stream>,
    /// The Time to Live attribute, when enabled.
    pub ttl: Option<String>,
    /// Creation time (epoch seconds).
    pub created: u64,
    buckets: Vec<(f64, Instant)>,
    /// Counters.
    pub stats: Stats,
}

/// FNV-1a, mixed: the partition a key belongs to, and the stream shard.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's high bits barely move for short, similar keys; shards split the hash space by range, so
    // mix them in (the splitmix64 finalizer).
    tworegion_common::mix::mix64(h)
}

fn key_text(value: &Value) -> String {
    match value {
        Value::S(s) => format!("S{s}"),
        Value::N(n) => format!("N{n}"),
        Value::B(b) => format!("B{b}"),
        other => format!("?{other:?}"),
    }
}

/// What a write did: the old item (if any) and the new (if any).
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Before.
    pub old: Option<Item>,
    /// After.
    pub new: Option<Item>,
    /// The attributes an update set.
    pub updated: Vec<String>,
}

impl Table {
    /// A new table.
    pub fn new(
        region: &str,
        name: &str,
        hash: (String, KeyType),
        range: Option<(String, KeyType)>,
        stream: Option<View>,
        limits: &Limits,
    ) -> Table {
        let created_ms = now_ms();
        let mut table = Table {
            name: name.to_owned(),
            region: region.to_owned(),
            hash,
            range,
            items: BTreeMap::new(),
            count: 0,
            stream: None,
            ttl: None,
            created: created_ms / 1000,
            buckets: vec![
                (f64::from(limits.partition_write_units), Instant::now());
                limits.partitions.max(1)
            ],
            stats: Stats::default(),
        };
        if let Some(view) = stream {
            table.enable_stream(view, limits.shards.max(1));
        }
        table
    }

    /// Turns the stream on with `shards` shards splitting the hash space evenly.
    pub fn enable_stream(&mut self, view: View, shards: usize) {
        let label = format!("{}", now_ms());
        let arn = format!(
            "arn:aws:dynamodb:{}:000000000000:table/{}/stream/{}",
            self.region, self.name, label
        );
        let width = u64::MAX / shards as u64;
        let list = (0..shards)
            .map(|i| {
                let lo = width * i as u64;
                let hi = if i + 1 == shards {
                    u64::MAX
                } else {
                    lo + width - 1
                };
                Shard {
                    id: shard_id(i),
                    parent: None,
                    range: (lo, hi),
                    start: 1,
                    end: None,
                    records: Vec::new(),
                    calls: VecDeque::new(),
                }
            })
            .collect();
        self.stream = Some(Stream {
            arn,
            label,
            view,
            shards: list,
            next_seq: 1,
        });
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Key schema check; returns the partition text and the sort key.
    fn key_of(&self, item: &Item, whole_item: bool) -> Result<(String, SortKey), Refused> {
        let part = |name: &str, kind: KeyType| -> Result<&Value, Refused> {
            let value = item.get(name).ok_or_else(|| {
                Refused::validation(format!(
                    "One of the required keys was not given a value: {name}"
                ))
            })?;
            let ok = match (kind, value) {
                (KeyType::S, Value::S(s)) => !s.is_empty(),
                (KeyType::N, Value::N(n)) => is_number(n),
                (KeyType::B, Value::B(b)) => !b.is_empty(),
                _ => false,
            };
            if !ok {
                return Err(Refused::validation(format!(
                    "One or more parameter values were invalid: Type mismatch for key {name} expected: {} actual: {}",
                    kind.name(),
                    value.type_name()
                )));
            }
            Ok(value)
        };
        let h = part(&self.hash.0, self.hash.1)?;
        let sort = match &self.range {
            Some((name, kind)) => match part(name, *kind)? {
                Value::N(n) => SortKey::Number(n.clone()),
                other => SortKey::Text(key_text(other)),
            },
            None => SortKey::None,
        };
        if !whole_item {
            let expected = 1 + usize::from(self.range.is_some());
            if item.len() != expected {
                return Err(Refused::validation(
                    "The provided key element does not match the schema",
                ));
            }
        }
        Ok((key_text(h), sort))
    }

    fn keys_of(&self, item: &Item) -> Item {
        item.iter()
            .filter(|(k, _)| {
                **k == self.hash.0 || self.range.as_ref().is_some_and(|(r, _)| r == *k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Reads an item by key.
    pub fn get(&self, key: &Item) -> Result<Option<&Item>, Refused> {
        let (h, s) = self.key_of(key, false)?;
        Ok(self.items.get(&h).and_then(|p| p.get(&s)))
    }

    /// Takes `units` of write capacity from the key's partition; false when there is not enough.
    fn consume(&mut self, partition_text: &str, units: f64, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let index = (hash(partition_text.as_bytes()) % self.buckets.len() as u64) as usize;
        let (tokens, at) = &mut self.buckets[index];
        let now = Instant::now();
        let limit = f64::from(limit);
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * limit).min(limit);
        *at = now;
        if *tokens >= units {
            *tokens -= units;
            true
        } else {
            false
        }
    }

    /// One conditional write: `change` turns the stored item (or `None`) into the new one (or `None`
    /// to delete) after `expressions`' condition held.
    pub fn write(
        &mut self,
        key_source: &Item,
        whole_item: bool,
        expressions: &Expressions,
        limits: &Limits,
        measured: bool,
        change: impl FnOnce(Option<&Item>) -> Result<(Option<Item>, Vec<String>), Refused>,
    ) -> Result<Written, Refused> {
        let (h, s) = self.key_of(key_source, whole_item)?;
        let old = self.items.get(&h).and_then(|p| p.get(&s)).cloned();
        let size = old.as_ref().map_or(0, item_size).max(item_size(key_source));
        let units = size.div_ceil(1024).max(1) as f64;
        if !self.consume(&h, units, limits.partition_write_units) {
            self.stats.throttled_writes += 1;
            return Err(Refused::new(
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded (the stand-in's --partition-write-units)",
            ));
        }
        if !expressions.condition_holds(old.as_ref())? {
            self.stats.conditional_failures += 1;
            return Err(Refused::new(
                "ConditionalCheckFailedException",
                "The conditional request failed",
            ));
        }
        let (new, updated) = change(old.as_ref())?;
        if let Some(item) = &new {
            if item_size(item) > 400 * 1024 {
                return Err(Refused::validation(
                    "Item size has exceeded the maximum allowed size",
                ));
            }
            let (nh, ns) = self.key_of(item, true)?;
            if nh != h || ns != s {
                return Err(Refused::validation(
                    "Cannot update attribute: this attribute is part of the key",
                ));
            }
        }
        if measured {
            self.stats.writes += 1;
        }
        if let Some(Value::N(created)) = new
            .as_ref()
            .or(old.as_ref())
            .and_then(|i| i.get(BENCH_MS))
            .filter(|_| measured)
            && let Ok(created) = created.parse::<u64>()
        {
            {
                let now = now_ms();
                let lag = now.saturating_sub(created);
                self.stats
                    .lag_ms
                    .push(u32::try_from(lag).unwrap_or(u32::MAX));
                if self.stats.first_write_ms == 0 {
                    self.stats.first_write_ms = now;
                }
                self.stats.last_write_ms = now;
            }
        }
        if new == old {
            // DynamoDB writes no stream record for a write that changes nothing.
            return Ok(Written { old, new, updated });
        }
        let partition = self.items.entry(h.clone()).or_default();
        match &new {
            Some(item) => {
                if partition.insert(s, item.clone()).is_none() {
                    self.count += 1;
                }
            }
            None => {
                if partition.remove(&s).is_some() {
                    self.count -= 1;
                }
                if partition.is_empty() {
                    self.items.remove(&h);
                }
            }
        }
        self.record(&h, old.clone(), new.clone());
        Ok(Written { old, new, updated })
    }

    /// Appends the stream record of a change, in the shard that holds the key's hash.
    fn record(&mut self, partition_text: &str, old: Option<Item>, new: Option<Item>) {
        let keys = match new.as_ref().or(old.as_ref()) {
            Some(item) => self.keys_of(item),
            None => return,
        };
        let Some(stream) = &mut self.stream else {
            return;
        };
        let event = match (&old, &new) {
            (None, Some(_)) => "INSERT",
            (Some(_), Some(_)) => "MODIFY",
            _ => "REMOVE",
        };
        let (new, old) = match stream.view {
            View::KeysOnly => (None, None),
            View::NewImage => (new, None),
            View::OldImage => (None, old),
            View::NewAndOldImages => (new, old),
        };
        let size = item_size(&keys)
            + new.as_ref().map_or(0, item_size)
            + old.as_ref().map_or(0, item_size);
        let h = hash(partition_text.as_bytes());
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let shard = stream
            .shards
            .iter_mut()
            .find(|s| s.end.is_none() && s.range.0 <= h && h <= s.range.1);
        if let Some(shard) = shard {
            shard.records.push(Record {
                seq,
                event,
                keys,
                new,
                old,
                created: now_ms() / 1000,
                size,
            });
        }
    }

    /// Items of one partition in sort-key order, from after `start` (a sort key), at most `limit`.
    pub fn query(
        &self,
        partition: &Value,
        start: Option<&Item>,
        limit: usize,
        forward: bool,
    ) -> Result<(Vec<&Item>, bool), Refused> {
        let h = key_text(partition);
        let Some(rows) = self.items.get(&h) else {
            return Ok((Vec::new(), false));
        };
        let after = match start {
            Some(key) => Some(self.key_of(key, false)?.1),
            None => None,
        };
        let mut out: Vec<&Item> = Vec::new();
        let iter: Box<dyn Iterator<Item = (&SortKey, &Item)>> = if forward {
            Box::new(rows.iter())
        } else {
            Box::new(rows.iter().rev())
        };
        for (sort, item) in iter {
            if let Some(after) = &after {
                let past = if forward { sort > after } else { sort < after };
                if !past {
                    continue;
                }
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(item);
        }
        Ok((out, false))
    }

    /// The key attributes of an item.
    pub fn key_attributes(&self, item: &Item) -> Item {
        self.keys_of(item)
    }

    /// Closes every open shard; each is continued by one child (a rollover) or two children splitting
    /// its hash range (a split).
    pub fn roll_shards(&mut self, split: bool) -> usize {
        let Some(stream) = &mut self.stream else {
            return 0;
        };
        let last = stream.next_seq;
        let open: Vec<usize> = (0..stream.shards.len())
            .filter(|i| stream.shards[*i].end.is_none())
            .collect();
        let mut created = 0;
        for index in open {
            let (id, (lo, hi)) = {
                let shard = &mut stream.shards[index];
                shard.end = Some(
                    shard
                        .records
                        .last()
                        .map_or(last.saturating_sub(1), |r| r.seq),
                );
                (shard.id.clone(), shard.range)
            };
            let ranges = if split && hi > lo {
                let mid = lo + (hi - lo) / 2;
                vec![(lo, mid), (mid + 1, hi)]
            } else {
                vec![(lo, hi)]
            };
            for range in ranges {
                let n = stream.shards.len();
                stream.shards.push(Shard {
                    id: shard_id(n),
                    parent: Some(id.clone()),
                    range,
                    start: last,
                    end: None,
                    records: Vec::new(),
                    calls: VecDeque::new(),
                });
                created += 1;
            }
        }
        created
    }
}

fn shard_id(n: usize) -> String {
    format!(
        "shardId-{:020}-{:08x}",
        1_700_000_000_000u64 + n as u64,
        hash(&n.to_le_bytes()) as u32
    )
}

/// Where a shard iterator points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The table (`region/name`).
    pub table: String,
    /// The shard's index in the stream.
    pub shard: usize,
    /// The index of the next record.
    pub position: usize,
    /// When it was handed out (epoch ms).
    pub issued_ms: u64,
}

impl Cursor {
    /// The iterator text.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.shard, self.position, self.issued_ms, self.table
        )
    }

    /// Parses an iterator text.
    pub fn decode(text: &str) -> Option<Cursor> {
        let mut parts = text.splitn(4, '|');
        Some(Cursor {
            shard: parts.next()?.parse().ok()?,
            position: parts.next()?.parse().ok()?,
            issued_ms: parts.next()?.parse().ok()?,
            table: parts.next()?.to_owned(),
        })
    }
}

/// How an iterator is positioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorType {
    /// The oldest record.
    TrimHorizon,
    /// After the newest.
    Latest,
    /// At a sequence number.
    At(u128),
    /// After a sequence number.
    After(u128),
}

impl Stream {
    /// The shard's index by ID.
    pub fn shard_index(&self, id: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.id == id)
    }

    /// An iterator's position in a shard.
    pub fn position(&self, shard: usize, at: &IteratorType) -> Result<usize, Refused> {
        let s = &self.shards[shard];
        let out_of_range = |seq: u128| {
            Refused::validation(format!(
                "Invalid SequenceNumber {seq} for shard {}: it is not in the shard's range",
                s.id
            ))
        };
        Ok(match at {
            IteratorType::TrimHorizon => 0,
            IteratorType::Latest => s.records.len(),
            IteratorType::At(seq) | IteratorType::After(seq) => {
                if *seq < s.start || s.end.is_some_and(|e| *seq > e) {
                    return Err(out_of_range(*seq));
                }
                let index = s.records.partition_point(|r| r.seq < *seq);
                let exact = s.records.get(index).is_some_and(|r| r.seq == *seq);
                match at {
                    IteratorType::After(_) if exact => index + 1,
                    _ => index,
                }
            }
        })
    }

    /// Counts a GetRecords call on a shard against the rate limit; false when over it.
    pub fn admit_read(&mut self, shard: usize, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let calls = &mut self.shards[shard].calls;
        let now = Instant::now();
        while calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            calls.pop_front();
        }
        if calls.len() >= per_second as usize {
            return false;
        }
        calls.push_back(now);
        true
    }
}

/// Every table, keyed `region/name`.
#[derive(Debug, Default)]
pub struct Store {
    /// The tables.
    pub tables: HashMap<String, Table>,
    /// The limits.
    pub limits: Limits,
}

/// The key of a table in the store.
pub fn table_key(region: &str, name: &str) -> String {
    format!("{region}/{name}")
}

impl Store {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Store {
        Store {
            tables: HashMap::new(),
            limits,
        }
    }

    /// A table, or `ResourceNotFoundException`.
    pub fn table(&mut self, region: &str, name: &str) -> Result<&mut Table, Refused> {
        self.tables
            .get_mut(&table_key(region, name))
            .ok_or_else(|| {
                Refused::new(
                    "ResourceNotFoundException",
                    format!("Requested resource not found: Table: {name} not found in {region}"),
                )
            })
    }

    /// The table whose stream has this ARN.
    pub fn table_of_stream(&mut self, arn: &str) -> Result<&mut Table, Refused> {
        self.tables
            .values_mut()
            .find(|t| t.stream.as_ref().is_some_and(|s| s.arn == arn))
            .ok_or_else(|| {
                Refused::new(
                    "ResourceNotFoundException",
                    format!("Requested resource not found: Stream: {arn} not found"),
                )
            })
    }

    /// Appends `count` new items of about `size` bytes to the table (and so to its stream), keys
    /// `prefix-0`, `prefix-1`, ...; each carries `bench_ms`, a version stamp (`rep_version`,
    /// `rep_origin`: the table's region) and a `payload`. Returns how many were added.
    pub fn load(
        &mut self,
        region: &str,
        name: &str,
        prefix: &str,
        first: u64,
        count: u64,
        size: usize,
    ) -> Result<u64, Refused> {
        let limits = self.limits.clone();
        let table = self.table(region, name)?;
        if table.range.is_some() || table.hash.1 != KeyType::S {
            return Err(Refused::validation(
                "the control endpoint loads tables with a string partition key and no sort key only",
            ));
        }
        let key_name = table.hash.0.clone();
        let payload = "x".repeat(size.saturating_sub(60).max(1));
        let now = now_ms();
        let unlimited = Limits {
            partition_write_units: 0,
            ..limits
        };
        for i in first..first + count {
            let item: Item = [
                (key_name.clone(), Value::S(format!("{prefix}-{i}"))),
                (BENCH_MS.to_owned(), Value::N(now.to_string())),
                (
                    "rep_version".to_owned(),
                    Value::N((now * 1000 + i % 1000).to_string()),
                ),
                ("rep_origin".to_owned(), Value::S(region.to_owned())),
                ("payload".to_owned(), Value::S(payload.clone())),
            ]
            .into();
            let key = item.clone();
            // The source's own writes are not the replication being measured.
            table.write(
                &key,
                true,
                &Expressions::default(),
                &unlimited,
                false,
                |_| Ok((Some(item), Vec::new())),
            )?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(shards: usize) -> Table {
        Table::new(
            "r",
            "t",
            ("id".into(), KeyType::S),
            None,
            Some(View::NewAndOldImages),
            &Limits {
                shards,
                ..Limits::default()
            },
        )
    }

    fn put(t: &mut Table, id: &str, v: &str) -> Result<Written, Refused> {
        let item: Item = [
            ("id".into(), Value::S(id.into())),
            ("v".into(), Value::S(v.into())),
        ]
        .into();
        let key = item.clone();
        t.write(
            &key,
            true,
            &Expressions::default(),
            &Limits::default(),
            true,
            |_| Ok((Some(item), Vec::new())),
        )
    }

    #[test]
    fn writes_make_records_in_the_keys_shard_in_order() {
        let mut t = table(4);
        for i in 0..200 {
            put(&mut t, &format!("k{}", i % 20), &i.to_string()).expect("writes");
        }
        let stream = t.stream.as_ref().expect("stream");
        let total: usize = stream.shards.iter().map(|s| s.records.len()).sum();
        assert_eq!(total, 200);
        assert!(
            stream.shards.iter().all(|s| !s.records.is_empty()),
            "hash spreads keys"
        );
        for shard in &stream.shards {
            assert!(shard.records.windows(2).all(|w| w[0].seq < w[1].seq));
        }
        // One key lives in one shard.
        let holders = stream
            .shards
            .iter()
            .filter(|s| {
                s.records
                    .iter()
                    .any(|r| r.keys.get("id") == Some(&Value::S("k3".into())))
            })
            .count();
        assert_eq!(holders, 1);
        assert_eq!(t.len(), 20);
        // An identical put changes nothing and writes no record.
        put(&mut t, "k19", "199").expect("writes");
        let total: usize = t
            .stream
            .as_ref()
            .expect("stream")
            .shards
            .iter()
            .map(|s| s.records.len())
            .sum();
        assert_eq!(total, 200);
    }

    #[test]
    fn a_split_continues_each_key_in_a_child_of_its_shard() {
        let mut t = table(2);
        for i in 0..50 {
            put(&mut t, &format!("k{i}"), "a").expect("writes");
        }
        assert_eq!(t.roll_shards(true), 4);
        for i in 0..50 {
            put(&mut t, &format!("k{i}"), "b").expect("writes");
        }
        let stream = t.stream.as_ref().expect("stream");
        for i in 0..50 {
            let key = Value::S(format!("k{i}"));
            let find = |children: bool| {
                stream
                    .shards
                    .iter()
                    .find(|s| {
                        s.parent.is_some() == children
                            && s.records.iter().any(|r| r.keys.get("id") == Some(&key))
                    })
                    .expect("a shard holds the key")
            };
            let (parent, child) = (find(false), find(true));
            assert_eq!(child.parent.as_deref(), Some(parent.id.as_str()));
            assert!(parent.end.is_some_and(|e| e < child.records[0].seq));
        }
    }

    #[test]
    fn iterators_and_read_limits() {
        let mut t = table(1);
        for i in 0..10 {
            put(&mut t, &format!("k{i}"), "a").expect("writes");
        }
        let stream = t.stream.as_mut().expect("stream");
        let seq3 = stream.shards[0].records[3].seq;
        assert_eq!(stream.position(0, &IteratorType::At(seq3)), Ok(3));
        assert_eq!(stream.position(0, &IteratorType::After(seq3)), Ok(4));
        assert_eq!(stream.position(0, &IteratorType::Latest), Ok(10));
        assert!(stream.position(0, &IteratorType::After(0)).is_err());
        let admitted = (0..8).filter(|_| stream.admit_read(0, 5)).count();
        assert_eq!(admitted, 5);
        let cursor = Cursor {
            table: "r/t|x".into(),
            shard: 2,
            position: 7,
            issued_ms: 9,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn partition_write_capacity_throttles() {
        let mut t = Table::new(
            "r",
            "t",
            ("id".into(), KeyType::S),
            None,
            None,
            &Limits {
                partitions: 1,
                partition_write_units: 10,
                ..Limits::default()
            },
        );
        let limits = Limits {
            partitions: 1,
            partition_write_units: 10,
            ..Limits::default()
        };
        let refused = (0..30)
            .filter(|i| {
                let item: Item = [("id".into(), Value::S(format!("k{i}")))].into();
                let key = item.clone();
                t.write(&key, true, &Expressions::default(), &limits, true, |_| {
                    Ok((Some(item), Vec::new()))
                })
                .is_err()
            })
            .count();
        assert!(
            (15..=20).contains(&refused),
            "{refused} of 30 refused at 10 units/s"
        );
        assert_eq!(t.stats.throttled_writes, refused as u64);
    }
}
