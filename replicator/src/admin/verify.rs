//! `replicator verify [--repair] [--json]`: do both tables of a path hold the same items?
//!
//! 1. Both tables are read with a parallel segmented Scan (`--segments` each). The source's live items
//!    are kept as key and digest (SHA-256 of the item's canonical form without the ignored
//!    attributes): memory grows with the source's item count (a few hundred bytes an item with short
//!    keys), not with item sizes. The target's items are checked against them as they arrive.
//! 2. Tombstones (`--deleted-attribute` = true) count as absent in both tables: a reader that follows
//!    the convention sees none of them, and each region's TTL removes them on its own schedule.
//! 3. The replicator's fencing token ([`FENCE_ATTRIBUTE`]) and every `--ignore-attribute` are left
//!    out of the comparison. Numbers compare as numbers (`1.50` equals `1.5`), sets as sets.
//! 4. Every difference the scans find is read again in both tables with consistent reads after
//!    `--recheck-after`, up to `--rechecks` times: one that is equal in any of those reads was a write
//!    still in flight and is not reported.
//! 5. `--repair` writes the winner of each difference left, by the mode's rule, conditionally:
//!    - one-way: the source's current item is copied into the target (a target item the source does
//!      not hold is deleted), on the condition that the target item is unchanged since it was read, and
//!      copied again if the source changed meanwhile (as `dlq replay` does);
//!    - lww: the item with the higher version (then the higher origin, as the replicator orders
//!      writes) is put into the other table on the replicator's own condition (the stored version is
//!      not higher), so a newer write that arrives meanwhile wins. Two items with the same version
//!      and origin but different data cannot be ordered and are left, with what to do.
//!
//!    Each repaired key is read again afterwards; what still differs is reported.
//!
//! Exit 0 when the tables are equal (after any repair), 4 when differences remain.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tworegion_common::duration::parse_duration;
use tworegion_common::version::{VersionAttributes, compare_writes};

use super::dlq::{Replayed, copy_one_way, get};
use super::{AdminError, PathArgs, PathSpec, bad};
use crate::apply::target::{FENCE_ATTRIBUTE, Outcome, put_lww, stamp};
use crate::config::within;
use crate::config::{AttributeArgs, ConfigError, Mode, TableRef};
use crate::dead_letter::refused_for_good;
use crate::error::{AwsFailure, ErrorClass};
use crate::item::{Item, item_json, key_string, project_key};

/// The exit code when differences remain.
pub const DIFFERENCES_EXIT: u8 = 4;

/// `replicator verify` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The source and target tables (the lease table flags are accepted and not used).
    #[command(flatten)]
    pub path: PathArgs,
    /// The path's mode: which item wins a repair (one-way: the source's; lww: the higher version).
    #[arg(long, env = "REPLICATOR_MODE", value_enum)]
    pub mode: Mode,
    /// The convention's attribute names.
    #[command(flatten)]
    pub attributes: AttributeArgs,
    /// Write the winner of every difference left, conditionally, and say what changed.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// An attribute left out of the comparison (repeat the flag for several). The replicator's
    /// fencing token (rep_fence) always is.
    #[arg(long = "ignore-attribute", value_name = "NAME")]
    pub ignore_attributes: Vec<String>,
    /// Parallel Scan segments per table (1 to 1,000).
    #[arg(long, default_value_t = 4)]
    pub segments: u32,
    /// The pause before a difference is read again: longer than the replication lag, so writes in
    /// flight have landed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub recheck_after: Duration,
    /// How many times a difference is read again (1 to 100); it is reported only if it differs in
    /// every one of them.
    #[arg(long, default_value_t = 3)]
    pub rechecks: u32,
}

/// Validated [`VerifyArgs`].
#[derive(Debug, Clone)]
pub struct VerifySpec {
    /// The tables.
    pub path: PathSpec,
    /// The rule a repair follows.
    pub mode: Mode,
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// Left out of the comparison (the fencing token included).
    pub ignored: BTreeSet<String>,
    /// See [`VerifyArgs`].
    pub segments: u32,
    /// See [`VerifyArgs`].
    pub recheck_after: Duration,
    /// See [`VerifyArgs`].
    pub rechecks: u32,
    /// See [`VerifyArgs`].
    pub repair: bool,
    /// See [`VerifyArgs`].
    pub json: bool,
}

impl VerifySpec {
    /// The comparison rules of this run.
    pub fn rules(&self) -> Rules {
        Rules {
            deleted: self.attributes.deleted.clone(),
            ignored: self.ignored.clone(),
        }
    }
}

impl VerifyArgs {
    /// Validates the flags; errors name the flag.
    pub fn validate(&self) -> Result<VerifySpec, ConfigError> {
        let path = self.path.validate()?;
        let attributes = self.attributes.validate()?;
        within("segments", self.segments, 1, 1000)?;
        within("rechecks", self.rechecks, 1, 100)?;
        let mut ignored = BTreeSet::from([FENCE_ATTRIBUTE.to_owned()]);
        for name in &self.ignore_attributes {
            if name.is_empty() || name.len() > 255 {
                return Err(bad(
                    "ignore-attribute",
                    "an attribute name must have 1 to 255 characters",
                ));
            }
            ignored.insert(name.clone());
        }
        Ok(VerifySpec {
            path,
            mode: self.mode,
            attributes,
            ignored,
            segments: self.segments,
            recheck_after: self.recheck_after,
            rechecks: self.rechecks,
            repair: self.repair,
            json: self.json,
        })
    }
}

/// The clients: reads retry as the SDK does; repair writes are conditional on what was read, so
/// their clients make one attempt per call (a write that landed but whose answer was lost is not
/// retried into its own failed condition; the re-read after the repair shows what holds).
#[derive(Debug, Clone)]
pub struct Clients {
    /// Reads of the source table.
    pub source: Client,
    /// Reads of the target table.
    pub target: Client,
    /// Repair writes to the source table (lww).
    pub source_writes: Client,
    /// Repair writes to the target table.
    pub target_writes: Client,
}

/// Why `verify` did not end with equal tables.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The tables differ.
    #[error(
        "{remaining} {} between the tables; {}",
        if *remaining == 1 { "difference remains" } else { "differences remain" },
        if *repaired {
            "the report says why each was left (run again when writes have settled, or fix it by hand)"
        } else {
            "run again with --repair to write the winners"
        }
    )]
    Differences {
        /// How many.
        remaining: usize,
        /// Whether `--repair` ran.
        repaired: bool,
    },
    /// `--repair` met a failure that retrying will not fix (the report is printed first).
    #[error(
        "--repair stopped: {0}; the report lists what was repaired before it (check the credentials' \
         permissions and the tables, then run it again)"
    )]
    RepairStopped(String),
    /// The tables have different keys.
    #[error(
        "the tables have different keys (source {source_table}: {source_keys:?}, target {target_table}: \
         {target_keys:?}); a path's tables must have the same key schema: check --source-table and \
         --target-table"
    )]
    KeySchemas {
        /// The source table.
        source_table: String,
        /// Its key attributes.
        source_keys: Vec<String>,
        /// The target table.
        target_table: String,
        /// Its key attributes.
        target_keys: Vec<String>,
    },
    /// A scanned item lacks a key attribute (not possible on DynamoDB).
    #[error("an item of {table} lacks a key attribute ({keys:?})")]
    NoKey {
        /// The table.
        table: String,
        /// The key attributes.
        keys: Vec<String>,
    },
    /// The tables cannot be read or written.
    #[error("{0}")]
    Admin(#[from] AdminError),
}

impl VerifyError {
    /// The process's exit code: [`DIFFERENCES_EXIT`] for differences, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Differences { .. } => DIFFERENCES_EXIT,
            _ => 1,
        }
    }
}

impl From<std::io::Error> for VerifyError {
    fn from(error: std::io::Error) -> Self {
        VerifyError::Admin(AdminError::Output(error))
    }
}

/// How the two tables differ at one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A live item in the source, none in the target.
    Missing,
    /// A live item in the target, none in the source.
    Extra,
    /// Live items in both, with different data.
    Different,
}

impl Kind {
    /// The word in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Different => "different",
        }
    }
}

/// One difference, with both items as last read (tombstones included).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// How they differ.
    pub kind: Kind,
    /// The key.
    pub keys: Item,
    /// The source's item.
    pub source: Option<Item>,
    /// The target's item.
    pub target: Option<Item>,
}

/// The comparison rules of one run.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The tombstone flag.
    pub deleted: String,
    /// Left out of the comparison.
    pub ignored: BTreeSet<String>,
}

impl Rules {
    /// `item` unless it is a tombstone.
    pub fn live<'a>(&self, item: Option<&'a Item>) -> Option<&'a Item> {
        item.filter(|i| !matches!(i.get(&self.deleted), Some(AttributeValue::Bool(true))))
    }

    /// The item's digest: SHA-256 of its canonical form without the ignored attributes.
    pub fn digest(&self, item: &Item) -> [u8; 32] {
        let mut bytes = Vec::with_capacity(256);
        self.canonical(item, &mut bytes);
        Sha256::digest(&bytes).into()
    }

    fn canonical(&self, item: &Item, out: &mut Vec<u8>) {
        let mut names: Vec<&String> = item
            .keys()
            .filter(|name| !self.ignored.contains(*name))
            .collect();
        names.sort();
        put_len(out, names.len());
        for name in names {
            put_bytes(out, name.as_bytes());
            canonical_value(&item[name], out);
        }
    }

    /// How the tables differ at a key whose items are `source` and `target`, or `None` if they agree.
    pub fn compare(&self, source: Option<&Item>, target: Option<&Item>) -> Option<Kind> {
        match (self.live(source), self.live(target)) {
            (None, None) => None,
            (Some(_), None) => Some(Kind::Missing),
            (None, Some(_)) => Some(Kind::Extra),
            (Some(s), Some(t)) => (self.digest(s) != self.digest(t)).then_some(Kind::Different),
        }
    }

    /// The attributes whose values differ between two live items (names sorted).
    pub fn differing(&self, source: &Item, target: &Item) -> Vec<String> {
        let names: BTreeSet<&String> = source
            .keys()
            .chain(target.keys())
            .filter(|name| !self.ignored.contains(*name))
            .collect();
        names
            .into_iter()
            .filter(|name| {
                let value = |item: &Item| {
                    item.get(*name).map(|v| {
                        let mut out = Vec::new();
                        canonical_value(v, &mut out);
                        out
                    })
                };
                value(source) != value(target)
            })
            .cloned()
            .collect()
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A value's canonical bytes: tagged and length-prefixed (two different values never give the same
/// bytes), numbers in canonical form, sets sorted.
fn canonical_value(value: &AttributeValue, out: &mut Vec<u8>) {
    let sorted = |items: Vec<Vec<u8>>, out: &mut Vec<u8>| {
        let set: BTreeSet<Vec<u8>> = items.into_iter().collect();
        put_len(out, set.len());
        for item in set {
            put_bytes(out, &item);
        }
    };
    match value {
        AttributeValue::S(s) => {
            out.push(b's');
            put_bytes(out, s.as_bytes());
        }
        AttributeValue::N(n) => {
            out.push(b'n');
            put_bytes(out, canonical_number(n).as_bytes());
        }
        AttributeValue::B(b) => {
            out.push(b'b');
            put_bytes(out, b.as_ref());
        }
        AttributeValue::Bool(b) => out.extend_from_slice(if *b { b"T" } else { b"F" }),
        AttributeValue::Null(_) => out.push(b'z'),
        AttributeValue::Ss(v) => {
            out.push(b'S');
            sorted(v.iter().map(|s| s.as_bytes().to_vec()).collect(), out);
        }
        AttributeValue::Ns(v) => {
            out.push(b'N');
            sorted(
                v.iter().map(|n| canonical_number(n).into_bytes()).collect(),
                out,
            );
        }
        AttributeValue::Bs(v) => {
            out.push(b'B');
            sorted(v.iter().map(|b| b.as_ref().to_vec()).collect(), out);
        }
        AttributeValue::L(v) => {
            out.push(b'l');
            put_len(out, v.len());
            for item in v {
                canonical_value(item, out);
            }
        }
        AttributeValue::M(m) => {
            out.push(b'm');
            let mut names: Vec<&String> = m.keys().collect();
            names.sort();
            put_len(out, names.len());
            for name in names {
                put_bytes(out, name.as_bytes());
                canonical_value(&m[name], out);
            }
        }
        other => {
            out.push(b'?');
            put_bytes(out, format!("{other:?}").as_bytes());
        }
    }
}

/// A DynamoDB number in one form per value: sign, digits without leading or trailing zeros, and the
/// exponent of the first digit (`1.50`, `15e-1` and `0.15E1` all give `1.5e0`; zero gives `0`). Text
/// that is not a number (DynamoDB never returns one) is kept as it is.
pub fn canonical_number(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => match rest[at + 1..].parse::<i64>() {
            Ok(e) => (&rest[..at], e),
            Err(_) => return text.to_owned(),
        },
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return text.to_owned();
    }
    let digits: String = whole.chars().chain(fraction.chars()).collect();
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return "0".to_owned();
    }
    // The first significant digit's power of ten.
    let power = whole.len() as i64 - 1 - leading as i64 + exponent;
    let sign = if negative { "-" } else { "" };
    let (first, tail) = significant.split_at(1);
    if tail.is_empty() {
        format!("{sign}{first}e{power}")
    } else {
        format!("{sign}{first}.{tail}e{power}")
    }
}

/// One table's scan counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Items read, tombstones included.
    pub items: u64,
    /// Tombstones among them.
    pub tombstones: u64,
}

/// What a repair did at one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// `applied`, `superseded`, `kept` or `failed` (the write failed: the error).
    pub outcome: &'static str,
    /// What was written, or why nothing was.
    pub what: String,
}

/// What a run found (and did).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The source's scan.
    pub source: Scanned,
    /// The target's scan.
    pub target: Scanned,
    /// Differences the scans found, before the rechecks.
    pub candidates: usize,
    /// Differences that held through every recheck, with the repair of each (under `--repair`).
    pub differences: Vec<(Difference, Option<Repair>)>,
    /// Differences left at the end (after the repair's re-read).
    pub remaining: usize,
    /// The failure that stopped `--repair` (one retrying will not fix), if one did.
    pub repair_stopped: Option<String>,
}

/// Runs `verify` with `spec` and writes the report to `out`.
pub async fn run(
    spec: &VerifySpec,
    clients: &Clients,
    out: &mut dyn Write,
) -> Result<(), VerifyError> {
    let report = verify(spec, clients).await?;
    if spec.json {
        let text = serde_json::to_string_pretty(&report_json(spec, &report))
            .map_err(std::io::Error::other)?;
        writeln!(out, "{text}")?;
    } else {
        write_text(spec, &report, out)?;
    }
    if let Some(failure) = report.repair_stopped {
        return Err(VerifyError::RepairStopped(failure));
    }
    if report.remaining > 0 {
        return Err(VerifyError::Differences {
            remaining: report.remaining,
            repaired: spec.repair,
        });
    }
    Ok(())
}

/// Compares the tables of `spec` (and repairs them under `--repair`).
pub async fn verify(spec: &VerifySpec, clients: &Clients) -> Result<Report, VerifyError> {
    let keys = matching_keys(&clients.source, &clients.target, &spec.path).await?;
    let (source_keys, target_keys) = (&keys, &keys);
    let rules = spec.rules();
    let mut report = Report::default();
    tracing::info!(source = %spec.path.source, target = %spec.path.target, segments = spec.segments, "Scanning the source.");
    // The source's live items: key string to (key, digest).
    let mut index: HashMap<String, (Item, [u8; 32])> = HashMap::new();
    scan(&clients.source, &spec.path.source, spec.segments, |item| {
        report.source.items += 1;
        if rules.live(Some(&item)).is_none() {
            report.source.tombstones += 1;
            return Ok(());
        }
        let keys = keys_of(&item, source_keys, &spec.path.source)?;
        let digest = rules.digest(&item);
        index.insert(key_string(&keys), (keys, digest));
        Ok(())
    })
    .await?;
    tracing::info!(items = report.source.items, "Scanning the target.");
    let mut candidates: Vec<Item> = Vec::new();
    scan(&clients.target, &spec.path.target, spec.segments, |item| {
        report.target.items += 1;
        if rules.live(Some(&item)).is_none() {
            report.target.tombstones += 1;
            return Ok(());
        }
        let keys = keys_of(&item, target_keys, &spec.path.target)?;
        match index.remove(&key_string(&keys)) {
            Some((_, digest)) if digest == rules.digest(&item) => {}
            _ => candidates.push(keys),
        }
        Ok(())
    })
    .await?;
    // Source items the target did not have.
    candidates.extend(index.into_values().map(|(keys, _)| keys));
    report.candidates = candidates.len();
    let mut differences = Vec::new();
    for round in 1..=spec.rechecks {
        if candidates.is_empty() {
            break;
        }
        tracing::info!(round, differences = candidates.len(), after = ?spec.recheck_after, "Reading the differences again.");
        tokio::time::sleep(spec.recheck_after).await;
        differences = recheck(clients, spec, &rules, candidates).await?;
        candidates = differences.iter().map(|d| d.keys.clone()).collect();
    }
    if spec.repair {
        for difference in differences {
            if report.repair_stopped.is_some() {
                report.differences.push((
                    difference,
                    Some(Repair {
                        outcome: "not attempted",
                        what: "the repair stopped at an earlier failure".to_owned(),
                    }),
                ));
                continue;
            }
            // A write that fails for a while (throttled, a lost connection: repair writes get one
            // attempt, as they are conditional on what was read) is reported with the others and
            // the key stays a difference (the re-read below finds it): one failure does not lose
            // the report of the rest. A failure that retrying will not fix (access denied, a
            // missing table) stops the repair: the report still says what was done before it.
            let repair = match repair(spec, clients, &difference).await {
                Ok(repair) => repair,
                Err(error) => {
                    let transient = matches!(&error, AdminError::Aws { source, .. } if source.class == ErrorClass::Retryable);
                    tracing::warn!(key = %key_string(&difference.keys), error = %error, transient, "A repair write failed; the key stays a difference.");
                    if !transient {
                        report.repair_stopped = Some(error.to_string());
                    }
                    Repair {
                        outcome: "failed",
                        what: error.to_string(),
                    }
                }
            };
            report.differences.push((difference, Some(repair)));
        }
        let keys: Vec<Item> = report
            .differences
            .iter()
            .map(|(d, _)| d.keys.clone())
            .collect();
        report.remaining = recheck(clients, spec, &rules, keys).await?.len();
    } else {
        report.remaining = differences.len();
        report.differences = differences.into_iter().map(|d| (d, None)).collect();
    }
    Ok(report)
}

/// The key attribute names both tables of `path` have (sorted), or why they cannot be compared.
pub(super) async fn matching_keys(
    source: &Client,
    target: &Client,
    path: &PathSpec,
) -> Result<Vec<String>, VerifyError> {
    let source_keys = key_names(source, &path.source, true).await?;
    let target_keys = key_names(target, &path.target, false).await?;
    if source_keys != target_keys {
        return Err(VerifyError::KeySchemas {
            source_table: path.source.to_string(),
            source_keys,
            target_table: path.target.to_string(),
            target_keys,
        });
    }
    Ok(source_keys
        .into_iter()
        .map(|k| k.split(' ').next().unwrap_or_default().to_owned())
        .collect())
}

/// The key attributes of `table` from DescribeTable, each as `name (HASH S)` (sorted), so that
/// names, roles and types are compared.
async fn key_names(
    client: &Client,
    table: &TableRef,
    source: bool,
) -> Result<Vec<String>, AdminError> {
    let described = client
        .describe_table()
        .table_name(&table.table)
        .send()
        .await;
    let described = match described {
        Ok(described) => described,
        Err(error) => {
            let failure = AwsFailure::from_sdk(&error);
            return Err(if failure.kind == "not_found" && source {
                AdminError::NoSourceTable {
                    table: table.table.clone(),
                    region: table.region.clone(),
                }
            } else {
                AdminError::Aws {
                    what: format!(
                        "describing table {table} (check --{}-table and --{}-region)",
                        if source { "source" } else { "target" },
                        if source { "source" } else { "target" }
                    ),
                    source: failure,
                }
            });
        }
    };
    let description = described.table;
    let types: HashMap<String, String> = description
        .as_ref()
        .and_then(|t| t.attribute_definitions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.attribute_name, d.attribute_type.as_str().to_owned()))
        .collect();
    let mut names: Vec<String> = description
        .and_then(|t| t.key_schema)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| matches!(k.key_type, KeyType::Hash | KeyType::Range))
        .map(|k| {
            let kind = types.get(&k.attribute_name).map_or("?", String::as_str);
            format!("{} ({} {kind})", k.attribute_name, k.key_type.as_str())
        })
        .collect();
    names.sort();
    Ok(names)
}

fn keys_of(item: &Item, names: &[String], table: &TableRef) -> Result<Item, VerifyError> {
    project_key(item, names).ok_or_else(|| VerifyError::NoKey {
        table: table.to_string(),
        keys: names.to_vec(),
    })
}

/// Reads every item of `table` with `segments` parallel Scan segments and hands each to `each`.
async fn scan(
    client: &Client,
    table: &TableRef,
    segments: u32,
    mut each: impl FnMut(Item) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    let (pages, mut received) = tokio::sync::mpsc::channel::<Result<Vec<Item>, AwsFailure>>(
        usize::try_from(segments).unwrap_or(1).max(2),
    );
    for segment in 0..segments {
        let client = client.clone();
        let name = table.table.clone();
        let pages = pages.clone();
        tokio::spawn(async move {
            let mut start: Option<Item> = None;
            loop {
                let page = client
                    .scan()
                    .table_name(&name)
                    .segment(i32::try_from(segment).unwrap_or(0))
                    .total_segments(i32::try_from(segments).unwrap_or(1))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| AwsFailure::from_sdk(&e));
                match page {
                    Ok(page) => {
                        start = page.last_evaluated_key.filter(|k| !k.is_empty());
                        if pages
                            .send(Ok(page.items.unwrap_or_default()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if start.is_none() {
                            return;
                        }
                    }
                    Err(failure) => {
                        let _ = pages.send(Err(failure)).await;
                        return;
                    }
                }
            }
        });
    }
    drop(pages);
    while let Some(page) = received.recv().await {
        let items = page.map_err(|source| AdminError::Aws {
            what: format!("scanning {table}"),
            source,
        })?;
        for item in items {
            each(item)?;
        }
    }
    Ok(())
}

/// Reads each key in both tables (consistent reads) and returns the keys that still differ.
async fn recheck(
    clients: &Clients,
    spec: &VerifySpec,
    rules: &Rules,
    keys: Vec<Item>,
) -> Result<Vec<Difference>, AdminError> {
    let read = |keys: Item| async move {
        let (source, target) = tokio::join!(
            get(&clients.source, &spec.path.source.table, &keys),
            get(&clients.target, &spec.path.target.table, &keys)
        );
        let source = source.map_err(|source| AdminError::Aws {
            what: format!("reading {} from {}", key_string(&keys), spec.path.source),
            source,
        })?;
        let target = target.map_err(|source| AdminError::Aws {
            what: format!("reading {} from {}", key_string(&keys), spec.path.target),
            source,
        })?;
        Ok::<_, AdminError>(rules.compare(source.as_ref(), target.as_ref()).map(|kind| {
            Difference {
                kind,
                keys,
                source,
                target,
            }
        }))
    };
    let mut found: Vec<Difference> = Vec::new();
    let mut reads = futures::stream::iter(keys).map(read).buffer_unordered(16);
    while let Some(result) = reads.next().await {
        if let Some(difference) = result? {
            found.push(difference);
        }
    }
    found.sort_by_cached_key(|d| key_string(&d.keys));
    Ok(found)
}

/// The version and origin an item carries (`None`: no valid version).
/// Which side wins a lww difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Winner {
    /// The source's item, to be put into the target.
    Source,
    /// The target's item, to be put into the source.
    Target,
    /// Neither can be chosen by the rule; why.
    Undecided(String),
}

/// lww: the side whose item the replicator's rule keeps. A missing item loses to any item (a hard
/// delete, outside the convention, is not seen); items are ordered by version, then origin (an item
/// without one has its table's region, as the replicator reads it); an item without a valid version
/// loses to one with (which of the two was written last is not known; the rule picks the one that
/// can be ordered).
pub fn lww_winner(
    (source, source_region): (Option<&Item>, &str),
    (target, target_region): (Option<&Item>, &str),
    attributes: &VersionAttributes,
) -> Winner {
    let stamps = (
        source.map(|i| stamp(i, attributes, source_region)),
        target.map(|i| stamp(i, attributes, target_region)),
    );
    match stamps {
        (Some(_), None) => Winner::Source,
        (None, Some(_)) => Winner::Target,
        (None, None) => Winner::Undecided("neither table holds the item".to_owned()),
        (Some(Some(s)), Some(Some(t))) => {
            match compare_writes((s.0, s.1.as_str()), (t.0, t.1.as_str())) {
                std::cmp::Ordering::Greater => Winner::Source,
                std::cmp::Ordering::Less => Winner::Target,
                std::cmp::Ordering::Equal => Winner::Undecided(format!(
                    "both items carry version {} from {:?} with different data, so the rule cannot \
                     order them; write the right data again through the application (which stamps \
                     a new version) and it replicates",
                    s.0, s.1
                )),
            }
        }
        (Some(Some(_)), Some(None)) => Winner::Source,
        (Some(None), Some(Some(_))) => Winner::Target,
        (Some(None), Some(None)) => Winner::Undecided(format!(
            "neither item has a valid {} (a number), so the rule cannot order them; write the right \
             data again through the application (which stamps a version) and it replicates",
            attributes.version
        )),
    }
}

/// Repairs one difference by the mode's rule.
async fn repair(
    spec: &VerifySpec,
    clients: &Clients,
    difference: &Difference,
) -> Result<Repair, AdminError> {
    let failed = |table: &TableRef| {
        let what = format!("repairing {} in {table}", key_string(&difference.keys));
        move |source| AdminError::Aws { what, source }
    };
    let replayed = match spec.mode {
        Mode::OneWay => copy_one_way(
            (&clients.source, &spec.path.source.table),
            (&clients.target_writes, &spec.path.target.table),
            &difference.keys,
            &spec.attributes,
        )
        .await
        .map_err(failed(&spec.path.target))?,
        Mode::Lww => {
            let winner = lww_winner(
                (difference.source.as_ref(), &spec.path.source.region),
                (difference.target.as_ref(), &spec.path.target.region),
                &spec.attributes,
            );
            let (item, region, client, table, into) = match winner {
                Winner::Source => (
                    difference.source.as_ref(),
                    &spec.path.source.region,
                    &clients.target_writes,
                    &spec.path.target,
                    "the source's item put into the target",
                ),
                Winner::Target => (
                    difference.target.as_ref(),
                    &spec.path.target.region,
                    &clients.source_writes,
                    &spec.path.source,
                    "the target's item put into the source",
                ),
                Winner::Undecided(why) => {
                    return Ok(Repair {
                        outcome: "kept",
                        what: why,
                    });
                }
            };
            let Some(item) = item else {
                return Ok(Repair {
                    outcome: "kept",
                    what: "the winning item was not read".to_owned(),
                });
            };
            let key_name = difference.keys.keys().next().map_or("", String::as_str);
            match put_lww(
                client,
                &table.table,
                key_name,
                item,
                &spec.attributes,
                region,
            )
            .await
            {
                Ok(Outcome::Applied) => Replayed::Applied(into.to_owned()),
                Ok(Outcome::Conflict) => Replayed::Superseded(format!(
                    "{table} now holds a newer write of the key, which wins"
                )),
                Err(failure) if refused_for_good(&failure) => {
                    Replayed::Kept(format!("{table} refuses the item: {}", failure.message))
                }
                Err(failure) => return Err(failed(table)(failure)),
            }
        }
    };
    Ok(match replayed {
        Replayed::Applied(what) => Repair {
            outcome: "applied",
            what,
        },
        Replayed::Superseded(what) => Repair {
            outcome: "superseded",
            what,
        },
        Replayed::Kept(what) => Repair {
            outcome: "kept",
            what,
        },
    })
}

fn counts(report: &Report) -> (usize, usize, usize) {
    let count = |kind| {
        report
            .differences
            .iter()
            .filter(|(d, _)| d.kind == kind)
            .count()
    };
    (
        count(Kind::Missing),
        count(Kind::Extra),
        count(Kind::Different),
    )
}

fn detail(spec: &VerifySpec, difference: &Difference) -> String {
    let rules = spec.rules();
    match (
        difference.kind,
        rules.live(difference.source.as_ref()),
        rules.live(difference.target.as_ref()),
    ) {
        (Kind::Different, Some(s), Some(t)) => {
            format!("attributes differ: {}", rules.differing(s, t).join(", "))
        }
        (Kind::Missing, _, _) => format!(
            "in the source, {} in the target",
            if difference.target.is_some() {
                "a tombstone"
            } else {
                "not"
            }
        ),
        (Kind::Extra, _, _) => format!(
            "in the target, {} in the source",
            if difference.source.is_some() {
                "a tombstone"
            } else {
                "not"
            }
        ),
        _ => String::new(),
    }
}

/// The report for people.
pub fn write_text(spec: &VerifySpec, report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "Verified {} against {} ({}): the source has {} items ({} tombstones), the target {} ({} \
         tombstones).",
        spec.path.source,
        spec.path.target,
        spec.mode.label(),
        report.source.items,
        report.source.tombstones,
        report.target.items,
        report.target.tombstones
    )?;
    if report.candidates > report.differences.len() {
        writeln!(
            out,
            "{} of {} differences the scans found were equal when read again (writes in flight).",
            report.candidates - report.differences.len(),
            report.candidates
        )?;
    }
    for (difference, repair) in &report.differences {
        write!(
            out,
            "{:<9}  {}  ({})",
            difference.kind.label(),
            key_string(&difference.keys),
            detail(spec, difference)
        )?;
        match repair {
            Some(repair) => writeln!(out, "  repair {}: {}", repair.outcome, repair.what)?,
            None => writeln!(out)?,
        }
    }
    let (missing, extra, different) = counts(report);
    if report.differences.is_empty() {
        writeln!(out, "The tables are equal.")?;
    } else {
        writeln!(
            out,
            "{missing} missing, {extra} extra, {different} different{}.",
            if spec.repair {
                format!("; {} remain after the repair", report.remaining)
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// The report as JSON: `source`, `target` (`table`, `items`, `tombstones`), `mode`, `candidates`,
/// `missing`, `extra`, `different`, `remaining` and `differences` (each `kind`, `key`, `keys`,
/// `attributes` (those that differ), `source` and `target` items in DynamoDB JSON or null, and
/// `repair` (`outcome`, `what`) or null).
pub fn report_json(spec: &VerifySpec, report: &Report) -> serde_json::Value {
    use serde_json::json;
    let rules = spec.rules();
    let (missing, extra, different) = counts(report);
    let differences: Vec<serde_json::Value> = report
        .differences
        .iter()
        .map(|(d, repair)| {
            let attributes = match (rules.live(d.source.as_ref()), rules.live(d.target.as_ref())) {
                (Some(s), Some(t)) => rules.differing(s, t),
                _ => Vec::new(),
            };
            json!({
                "kind": d.kind.label(),
                "key": key_string(&d.keys),
                "keys": item_json(&d.keys),
                "attributes": attributes,
                "source": d.source.as_ref().map(item_json),
                "target": d.target.as_ref().map(item_json),
                "repair": repair.as_ref().map(|r| json!({"outcome": r.outcome, "what": r.what})),
            })
        })
        .collect();
    json!({
        "mode": spec.mode.label(),
        "source": {"table": spec.path.source.to_string(), "items": report.source.items, "tombstones": report.source.tombstones},
        "target": {"table": spec.path.target.to_string(), "items": report.target.items, "tombstones": report.target.tombstones},
        "candidates": report.candidates,
        "missing": missing,
        "extra": extra,
        "different": different,
        "remaining": report.remaining,
        "repair_stopped": report.repair_stopped,
        "differences": differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.to_owned())
    }
    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }
    fn rules(ignored: &[&str]) -> Rules {
        let mut set = BTreeSet::from([FENCE_ATTRIBUTE.to_owned()]);
        set.extend(ignored.iter().map(|s| (*s).to_owned()));
        Rules {
            deleted: "rep_deleted".to_owned(),
            ignored: set,
        }
    }

    #[test]
    fn numbers_have_one_form() {
        for (a, b) in [
            ("1.50", "1.5"),
            ("15e-1", "1.5"),
            ("0.15E1", "1.5"),
            ("+7", "7"),
            ("007", "7.0"),
            ("100", "1e2"),
            ("-0.001", "-1e-3"),
            ("0", "-0.000"),
        ] {
            assert_eq!(canonical_number(a), canonical_number(b), "{a} = {b}");
        }
        for (a, b) in [("1", "-1"), ("10", "1"), ("1.5", "1.05"), ("1e2", "1e3")] {
            assert_ne!(canonical_number(a), canonical_number(b), "{a} != {b}");
        }
        assert_eq!(canonical_number("12.50"), "1.25e1");
        assert_eq!(canonical_number("0"), "0");
        assert_eq!(canonical_number("abc"), "abc");
    }

    #[test]
    fn comparison_ignores_order_tombstones_fences_and_named_attributes() {
        let r = rules(&["updated_at"]);
        let a = item(&[
            ("id", s("k")),
            ("tags", AttributeValue::Ss(vec!["x".into(), "y".into()])),
            ("n", n("1.50")),
            (FENCE_ATTRIBUTE, n("3")),
            ("updated_at", s("monday")),
        ]);
        let b = item(&[
            ("id", s("k")),
            ("tags", AttributeValue::Ss(vec!["y".into(), "x".into()])),
            ("n", n("1.5")),
            ("updated_at", s("tuesday")),
        ]);
        assert_eq!(r.compare(Some(&a), Some(&b)), None);
        let c = item(&[
            ("id", s("k")),
            ("tags", AttributeValue::Ss(vec!["x".into()])),
            ("n", n("1.5")),
        ]);
        assert_eq!(r.compare(Some(&a), Some(&c)), Some(Kind::Different));
        assert_eq!(r.differing(&a, &c), vec!["tags".to_owned()]);
        let tombstone = item(&[("id", s("k")), ("rep_deleted", AttributeValue::Bool(true))]);
        assert_eq!(r.compare(Some(&tombstone), None), None);
        assert_eq!(r.compare(None, Some(&tombstone)), None);
        assert_eq!(r.compare(Some(&a), Some(&tombstone)), Some(Kind::Missing));
        assert_eq!(r.compare(Some(&tombstone), Some(&b)), Some(Kind::Extra));
        assert_eq!(r.compare(None, None), None);
        // Lists keep their order; an attribute's absence differs from any value; types matter.
        let l1 = item(&[("l", AttributeValue::L(vec![s("a"), s("b")]))]);
        let l2 = item(&[("l", AttributeValue::L(vec![s("b"), s("a")]))]);
        assert_eq!(r.compare(Some(&l1), Some(&l2)), Some(Kind::Different));
        let absent = item(&[("id", s("k"))]);
        let null = item(&[("id", s("k")), ("x", AttributeValue::Null(true))]);
        assert_eq!(r.compare(Some(&absent), Some(&null)), Some(Kind::Different));
        let as_number = item(&[("id", s("k")), ("x", n("1"))]);
        let as_string = item(&[("id", s("k")), ("x", s("1"))]);
        assert_eq!(
            r.compare(Some(&as_number), Some(&as_string)),
            Some(Kind::Different)
        );
        // Names and values cannot run into each other.
        let ab = item(&[("a", s("bc"))]);
        let abc = item(&[("ab", s("c"))]);
        assert_ne!(r.digest(&ab), r.digest(&abc));
    }

    #[test]
    fn lww_winners_follow_the_replicators_order() {
        let attributes = VersionAttributes::default();
        let a = &attributes;
        let lww_winner = |s: Option<&Item>, t: Option<&Item>, a: &VersionAttributes| {
            super::lww_winner((s, "us-east-1"), (t, "us-west-2"), a)
        };
        let v = |version: &str, origin: &str| {
            item(&[
                ("id", s("k")),
                ("rep_version", n(version)),
                ("rep_origin", s(origin)),
            ])
        };
        assert_eq!(
            lww_winner(Some(&v("5", "a")), Some(&v("4", "z")), a),
            Winner::Source
        );
        assert_eq!(
            lww_winner(Some(&v("5", "a")), Some(&v("6", "a")), a),
            Winner::Target
        );
        assert_eq!(
            lww_winner(Some(&v("5", "b")), Some(&v("5", "a")), a),
            Winner::Source
        );
        assert!(matches!(
            lww_winner(Some(&v("5", "a")), Some(&v("5", "a")), a),
            Winner::Undecided(_)
        ));
        assert_eq!(lww_winner(Some(&v("1", "a")), None, a), Winner::Source);
        assert_eq!(lww_winner(None, Some(&v("1", "a")), a), Winner::Target);
        let unstamped = item(&[("id", s("k"))]);
        assert_eq!(
            lww_winner(Some(&unstamped), Some(&v("1", "a")), a),
            Winner::Target
        );
        assert_eq!(lww_winner(Some(&unstamped), None, a), Winner::Source);
        assert!(matches!(
            lww_winner(Some(&unstamped), Some(&unstamped), a),
            Winner::Undecided(_)
        ));
        // An item without an origin has its table's region (the source is us-east-1 here).
        let no_origin = item(&[("id", s("k")), ("rep_version", n("5"))]);
        assert!(matches!(
            lww_winner(Some(&no_origin), Some(&v("5", "us-east-1")), a),
            Winner::Undecided(_)
        ));
        assert_eq!(
            lww_winner(Some(&no_origin), Some(&v("5", "us-west-2")), a),
            Winner::Target
        );
        assert_eq!(lww_winner(Some(&v("5", "us-west-2")), Some(&no_origin), a), Winner::Undecided(
            "both items carry version 5 from \"us-west-2\" with different data, so the rule cannot order them; write the right data again through the application (which stamps a new version) and it replicates".to_owned()
        ));
        // A newer tombstone wins over an older live item.
        let mut tombstone = v("9", "b");
        tombstone.insert("rep_deleted".to_owned(), AttributeValue::Bool(true));
        assert_eq!(
            lww_winner(Some(&v("5", "a")), Some(&tombstone), a),
            Winner::Target
        );
    }

    #[test]
    fn flags_are_checked() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: VerifyArgs,
        }
        let mut base = vec!["verify"];
        base.extend_from_slice(&crate::config::TEST_PATH_FLAGS);
        base.extend_from_slice(&["--mode", "lww"]);
        let parse = |extra: &[&str]| {
            let all: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(all).expect("parses").args.validate()
        };
        let spec = parse(&["--ignore-attribute", "updated_at"]).expect("valid");
        assert!(spec.ignored.contains("updated_at") && spec.ignored.contains(FENCE_ATTRIBUTE));
        assert_eq!((spec.segments, spec.rechecks), (4, 3));
        assert_eq!(parse(&["--segments", "0"]).unwrap_err().flag, "segments");
        assert_eq!(parse(&["--rechecks", "0"]).unwrap_err().flag, "rechecks");
        assert_eq!(
            parse(&["--ignore-attribute", ""]).unwrap_err().flag,
            "ignore-attribute"
        );
    }
}
