//! `replicator leases list | release | reset-checkpoint`: the lease rows of one path, read and changed
//! the way the workers change them.
//!
//! - `list` reads every lease of the path (consistent, paginated Query) and prints one line per lease
//!   and a summary, or a JSON array.
//! - `release` frees a held lease: `REMOVE owner ADD counter 1`, if the counter is still the one read.
//! - `reset-checkpoint` moves a shard back to the trim horizon (the way to resume a shard halted by a
//!   trimmed gap) or to a sequence number, and frees it, with the same condition.
//!
//! Changes print what they would do and do nothing without `--yes`. Bumping the counter is what makes
//! them safe while workers run: the owner's next renewal or checkpoint fails its condition, so it
//! stops the shard before anyone else reads it from the new position.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::{AdminError, PathArgs, PathSpec, path_key};
use crate::config::TableRef;
use crate::error::{AwsFailure, ErrorClass};
use crate::lease::Lease;
use crate::lease::dynamo::{PATH, SHARD, decode, names_used, query_path};
use crate::stream::SeqNo;

/// `replicator leases ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LeasesCommand {
    /// Show every lease of the path: owner, counter, checkpoint, start marks, parents, expiry.
    List(ListArgs),
    /// Free a held lease, so that its owner stops the shard and any worker may take it.
    Release(ReleaseArgs),
    /// Move a shard's checkpoint to the trim horizon or to a sequence number, and free its lease.
    ResetCheckpoint(ResetArgs),
}

impl LeasesCommand {
    /// The path flags of the command.
    pub fn path(&self) -> &PathArgs {
        match self {
            LeasesCommand::List(args) => &args.path,
            LeasesCommand::Release(args) => &args.path,
            LeasesCommand::ResetCheckpoint(args) => &args.path,
        }
    }
}

/// `replicator leases list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub path: PathArgs,
    /// Print a JSON array (one object per lease) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replicator leases release` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub path: PathArgs,
    /// The shard ID, as `replicator leases list` shows it.
    #[arg(long)]
    pub shard: String,
    /// Really change the lease; without it the command only shows what would change.
    #[arg(long)]
    pub yes: bool,
}

/// `replicator leases reset-checkpoint` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub path: PathArgs,
    /// The shard ID, as `replicator leases list` shows it.
    #[arg(long)]
    pub shard: String,
    /// `trim-horizon` (read the shard again from the oldest record still in the stream) or a sequence
    /// number (continue just after it; records in between are skipped or applied again).
    #[arg(long, value_name = "trim-horizon|SEQUENCE_NUMBER", value_parser = ResetTo::parse)]
    pub to: ResetTo,
    /// Really change the lease; without it the command only shows what would change.
    #[arg(long)]
    pub yes: bool,
}

/// Where `reset-checkpoint` moves a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    /// No checkpoint and no start marks: the shard is read from the oldest record still in the stream.
    TrimHorizon,
    /// The checkpoint becomes this sequence number: reading continues just after it.
    Seq(SeqNo),
}

impl ResetTo {
    /// Parses `trim-horizon` or a decimal sequence number.
    pub fn parse(text: &str) -> Result<ResetTo, String> {
        if text.eq_ignore_ascii_case("trim-horizon") {
            return Ok(ResetTo::TrimHorizon);
        }
        SeqNo::parse(text).map(ResetTo::Seq).ok_or_else(|| {
            format!(
                "{text:?} is neither trim-horizon nor a sequence number (a stream sequence number is \
                 decimal digits, like the CHECKPOINT column of `replicator leases list`)"
            )
        })
    }
}

impl std::fmt::Display for ResetTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetTo::TrimHorizon => f.write_str("trim-horizon"),
            ResetTo::Seq(seq) => write!(f, "sequence number {seq}"),
        }
    }
}

/// Runs `command` on the path `spec`: `source` reaches the source table's region, `leases` the lease
/// table's. Everything users see goes to `out`; errors say what is wrong and how to go on.
pub async fn run(
    command: &LeasesCommand,
    spec: &PathSpec,
    source: &Client,
    leases: &Client,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let path = path_key(source, spec).await?;
    let table = PathLeases::new(leases.clone(), spec.lease.clone(), path);
    match command {
        LeasesCommand::List(args) => list(&table, args.json, out).await,
        LeasesCommand::Release(args) => release(&table, &args.shard, args.yes, out).await,
        LeasesCommand::ResetCheckpoint(args) => {
            reset_checkpoint(&table, &args.shard, &args.to, args.yes, out).await
        }
    }
}

/// The leases of one path in the lease table.
#[derive(Debug, Clone)]
pub struct PathLeases {
    client: Client,
    table: TableRef,
    path: String,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl PathLeases {
    /// The leases of `path` in `table`.
    pub fn new(client: Client, table: TableRef, path: String) -> PathLeases {
        PathLeases {
            client,
            table,
            path,
        }
    }

    /// The path key.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn failed(&self, what: &str, failure: AwsFailure) -> AdminError {
        if failure.kind == "not_found" {
            AdminError::NoLeaseTable {
                table: self.table.table.clone(),
                region: self.table.region.clone(),
            }
        } else {
            AdminError::Aws {
                what: format!("{what} in lease table {}", self.table),
                source: failure,
            }
        }
    }

    /// Every lease of the path, by shard ID (consistent read, all pages).
    pub async fn load(&self) -> Result<Vec<Lease>, AdminError> {
        let rows = query_path(&self.client, &self.table.table, &self.path)
            .await
            .map_err(|e| self.failed("reading leases", e))?;
        let mut leases: Vec<Lease> = rows.iter().filter_map(decode).collect();
        leases.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(leases)
    }

    /// A few paths that do have leases in the table (to help when this one has none).
    async fn other_paths(&self) -> Result<Vec<String>, AdminError> {
        const MAX: usize = 5;
        let mut paths = BTreeSet::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table.table)
                .projection_expression("#p")
                .expression_attribute_names("#p", PATH)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.failed("listing paths", AwsFailure::from_sdk(&e)))?;
            for item in out.items() {
                if let Some(AttributeValue::S(path)) = item.get(PATH) {
                    paths.insert(path.clone());
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() && paths.len() < MAX => start = Some(key),
                _ => break,
            }
        }
        Ok(paths.into_iter().take(MAX).collect())
    }

    /// The lease of `shard`, or an error that lists the shards there are.
    async fn find(&self, shard: &str) -> Result<(Lease, Vec<Lease>), AdminError> {
        let leases = self.load().await?;
        if leases.is_empty() {
            let other_paths = match self.other_paths().await {
                Ok(paths) => paths,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot list the lease table's paths.");
                    Vec::new()
                }
            };
            return Err(AdminError::NoLeases {
                path: self.path.clone(),
                other_paths,
            });
        }
        match leases.iter().find(|l| l.shard == shard) {
            Some(lease) => Ok((lease.clone(), leases)),
            None => Err(AdminError::UnknownShard {
                shard: shard.to_owned(),
                known: leases.into_iter().map(|l| l.shard).collect(),
            }),
        }
    }

    /// One UpdateItem on `observed`'s row, conditional on its counter; a failed condition is `Moved`.
    async fn change(
        &self,
        observed: &Lease,
        update: &str,
        mut values: HashMap<String, AttributeValue>,
    ) -> Result<Lease, AdminError> {
        const CONDITION: &str = "#c = :c";
        values.insert(":c".to_owned(), n(observed.counter));
        values.insert(":one".to_owned(), n(1));
        let out = self
            .client
            .update_item()
            .table_name(&self.table.table)
            .key(PATH, s(&self.path))
            .key(SHARD, s(&observed.shard))
            .update_expression(update)
            .condition_expression(CONDITION)
            .set_expression_attribute_names(Some(names_used(&[update, CONDITION])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(out) => out
                .attributes()
                .and_then(decode)
                .ok_or_else(|| AdminError::Aws {
                    what: format!("changing the lease on shard {}", observed.shard),
                    source: AwsFailure::synthetic(
                        ErrorClass::Fatal,
                        "lease_row",
                        "the changed lease row cannot be read back as a lease",
                    ),
                }),
            Err(error) => {
                let failure = AwsFailure::from_sdk(&error);
                if failure.class != ErrorClass::Conflict {
                    return Err(self.failed("changing the lease", failure));
                }
                let now = match self.load().await {
                    Ok(leases) => match leases.iter().find(|l| l.shard == observed.shard) {
                        Some(lease) => describe(lease, crate::worker::now_millis()),
                        None => "the lease row is gone".to_owned(),
                    },
                    Err(error) => format!("cannot be read: {error}"),
                };
                Err(AdminError::Moved {
                    shard: observed.shard.clone(),
                    observed: observed.counter,
                    now,
                })
            }
        }
    }
}

/// `leases list`: one line per lease and a summary (or a JSON array) on `out`.
pub async fn list(table: &PathLeases, json: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let leases = table.load().await?;
    let now = crate::worker::now_millis();
    if json {
        write_json(&leases, now, out)?;
        return Ok(());
    }
    writeln!(out, "Path:        {}", table.path)?;
    writeln!(out, "Lease table: {}", table.table)?;
    if leases.is_empty() {
        writeln!(out, "0 leases.")?;
        let hint = match table.other_paths().await {
            Ok(paths) if paths.is_empty() => {
                "The lease table holds no leases at all: no worker of any path has started yet."
                    .to_owned()
            }
            Ok(paths) => format!(
                "Check that the flags are the ones `replicator run` uses; the lease table holds leases for: {}",
                paths.join(", ")
            ),
            Err(error) => format!("(Cannot list the lease table's other paths: {error}.)"),
        };
        writeln!(out, "{hint}")?;
        return Ok(());
    }
    write_table(&leases, now, out)?;
    writeln!(out, "{}", summary(&leases))?;
    Ok(())
}

/// `leases release`: frees the lease of `shard` if it is held (with `yes`; otherwise shows what would
/// change and returns [`AdminError::NotConfirmed`]).
pub async fn release(
    table: &PathLeases,
    shard: &str,
    yes: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (lease, _) = table.find(shard).await?;
    let now = crate::worker::now_millis();
    let Some(owner) = lease.owner.clone() else {
        writeln!(
            out,
            "The lease on shard {shard} is already free ({}); nothing to change.",
            describe(&lease, now).trim_start_matches("free, ")
        )?;
        return Ok(());
    };
    writeln!(out, "Shard {shard} on path {}:", table.path)?;
    writeln!(out, "  now:   {}", describe(&lease, now))?;
    writeln!(
        out,
        "  after: free, counter {} (only if the counter is still {})",
        lease.counter + 1,
        lease.counter
    )?;
    writeln!(
        out,
        "{owner}'s next renewal or checkpoint fails, so it stops the shard (within a third of the lease \
         duration); a worker with room then takes the lease and continues after the checkpoint (records \
         after it are applied again, which is safe)."
    )?;
    if !yes {
        return Err(AdminError::NotConfirmed {
            action: format!("release the lease on shard {shard}"),
        });
    }
    let changed = table
        .change(&lease, "REMOVE #o ADD #c :one", HashMap::new())
        .await?;
    tracing::info!(shard_id = %shard, path = %table.path, owner = %owner, counter = changed.counter, "Lease released by an operator.");
    writeln!(
        out,
        "Released the lease on shard {shard}: free, counter {}.",
        changed.counter
    )?;
    Ok(())
}

/// `leases reset-checkpoint`: moves the checkpoint of `shard` to `to` and frees its lease (with `yes`;
/// otherwise shows what would change and returns [`AdminError::NotConfirmed`]).
pub async fn reset_checkpoint(
    table: &PathLeases,
    shard: &str,
    to: &ResetTo,
    yes: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (lease, all) = table.find(shard).await?;
    if let (ResetTo::Seq(seq), Some(starting)) = (to, &lease.starting)
        && seq < starting
    {
        return Err(AdminError::NotInShard {
            shard: shard.to_owned(),
            seq: seq.to_string(),
            starting: starting.to_string(),
        });
    }
    let now = crate::worker::now_millis();
    let next = lease.counter + 1;
    writeln!(out, "Shard {shard} on path {}:", table.path)?;
    writeln!(out, "  now:   {}", describe(&lease, now))?;
    let current = lease
        .checkpoint
        .as_ref()
        .map_or_else(|| "none".to_owned(), SeqNo::to_string);
    match to {
        ResetTo::TrimHorizon => {
            writeln!(
                out,
                "  after: no checkpoint (was {current}), not started, no starting sequence number, not \
                 finished, free, no hand-off request, counter {next} (only if the counter is still {})",
                lease.counter
            )?;
            let replayed = match &lease.checkpoint {
                Some(seq) => format!(
                    "records up to {seq} that the stream still holds are applied again (safe: every write \
                     can be replayed)"
                ),
                None => "records read before are applied again (safe: every write can be replayed)"
                    .to_owned(),
            };
            writeln!(
                out,
                "Effect: the shard is read again from the oldest record still in the stream; {replayed}. \
                 Records already trimmed from the stream are not recovered: repair the target for those \
                 separately."
            )?;
            if lease.parents.is_empty() {
                writeln!(
                    out,
                    "Note: a root shard without start marks starts at the workers' --start-position; they \
                     must run with trim-horizon (the default), or the shard starts at its newest records \
                     instead."
                )?;
            }
        }
        ResetTo::Seq(seq) => {
            writeln!(
                out,
                "  after: checkpoint {seq} (was {current}), not finished, free, counter {next} (only if the \
                 counter is still {})",
                lease.counter
            )?;
            let effect = match &lease.checkpoint {
                None => format!(
                    "the shard has no checkpoint yet: its records up to and including {seq} are SKIPPED \
                     (never applied to the target)"
                ),
                Some(old) if seq > old => format!(
                    "records after {old} up to and including {seq} are SKIPPED (never applied to the target)"
                ),
                Some(old) if seq < old => format!(
                    "records after {seq} up to and including {old} are applied again (safe: every write can \
                     be replayed)"
                ),
                Some(_) => "the checkpoint does not move; only the lease is freed".to_owned(),
            };
            writeln!(
                out,
                "Effect: {effect}. Reading continues just after {seq}; the sequence number must be one \
                 of this shard's."
            )?;
        }
    }
    if lease.finished {
        let children: Vec<&str> = all
            .iter()
            .filter(|l| l.parents.iter().any(|p| p == shard))
            .map(|l| l.shard.as_str())
            .collect();
        writeln!(
            out,
            "Warning: the shard was finished and is read again. {} may already have applied newer \
             changes to the same items; re-applying older records over them can leave older data in the \
             target (one-way mode) until those items change again.",
            if children.is_empty() {
                "Its child shards".to_owned()
            } else {
                format!("Its child shards ({})", children.join(", "))
            }
        )?;
    }
    match &lease.owner {
        Some(owner) => writeln!(
            out,
            "{owner} loses the lease: its next renewal or checkpoint fails and it stops the shard; a \
             worker with room then takes the lease and starts at the new position."
        )?,
        None => writeln!(
            out,
            "The lease is free: a worker with room takes it and starts at the new position."
        )?,
    }
    if !yes {
        return Err(AdminError::NotConfirmed {
            action: format!("reset the checkpoint of shard {shard} to {to}"),
        });
    }
    let mut values = HashMap::new();
    values.insert(":no".to_owned(), AttributeValue::Bool(false));
    let update = match to {
        ResetTo::TrimHorizon => "SET #f = :no REMOVE #k, #st, #sg, #o, #h ADD #c :one",
        ResetTo::Seq(seq) => {
            values.insert(":k".to_owned(), s(seq.as_str()));
            "SET #k = :k, #f = :no REMOVE #o ADD #c :one"
        }
    };
    let changed = table.change(&lease, update, values).await?;
    tracing::warn!(shard_id = %shard, path = %table.path, from = %current, to = %to, counter = changed.counter, "Checkpoint reset by an operator.");
    let checkpoint = match &changed.checkpoint {
        Some(seq) => format!("checkpoint {seq}"),
        None => "no checkpoint (trim horizon)".to_owned(),
    };
    writeln!(
        out,
        "Reset shard {shard}: {checkpoint}, free, counter {}.",
        changed.counter
    )?;
    Ok(())
}

/// A lease's state in one line: `held by w1, counter 4, checkpoint 123, started, expires in 4s`.
pub fn describe(lease: &Lease, now_ms: u64) -> String {
    let mut parts = vec![
        match &lease.owner {
            Some(owner) => format!("held by {owner}"),
            None => "free".to_owned(),
        },
        format!("counter {}", lease.counter),
        match &lease.checkpoint {
            Some(seq) => format!("checkpoint {seq}"),
            None => "no checkpoint".to_owned(),
        },
    ];
    if lease.started {
        parts.push("started".to_owned());
    }
    if lease.finished {
        parts.push("finished".to_owned());
    }
    if let Some(worker) = &lease.handoff_to {
        parts.push(format!("hand-off requested by {worker}"));
    }
    if lease.owner.is_some() {
        parts.push(format!("expires {}", relative(lease.expires_ms, now_ms)));
    }
    parts.join(", ")
}

/// `expires_ms` relative to `now_ms`: `in 4s`, `3s ago`, `5m ago`, `now`; `-` when never set.
pub fn relative(expires_ms: u64, now_ms: u64) -> String {
    if expires_ms == 0 {
        return "-".to_owned();
    }
    let (ahead, millis) = if expires_ms >= now_ms {
        (true, expires_ms - now_ms)
    } else {
        (false, now_ms - expires_ms)
    };
    let secs = millis / 1000;
    let span = match secs {
        0 => return "now".to_owned(),
        1..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// The leases as a table with a header row; columns as wide as their widest cell.
pub fn write_table(leases: &[Lease], now_ms: u64, out: &mut dyn Write) -> std::io::Result<()> {
    const HEADER: [&str; 9] = [
        "SHARD",
        "OWNER",
        "COUNTER",
        "CHECKPOINT",
        "STARTED",
        "FINISHED",
        "PARENTS",
        "HANDOFF_TO",
        "EXPIRES",
    ];
    let rows: Vec<[String; 9]> = leases
        .iter()
        .map(|l| {
            [
                l.shard.clone(),
                l.owner.clone().unwrap_or_else(|| "free".to_owned()),
                l.counter.to_string(),
                l.checkpoint
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), SeqNo::to_string),
                yes_no(l.started).to_owned(),
                yes_no(l.finished).to_owned(),
                if l.parents.is_empty() {
                    "-".to_owned()
                } else {
                    l.parents.join(",")
                },
                or_dash(l.handoff_to.as_deref()).to_owned(),
                relative(l.expires_ms, now_ms),
            ]
        })
        .collect();
    super::write_columns(&HEADER, &rows, out)
}

/// `3 leases; held by w1 (2), w2 (1); 0 free; 1 finished`.
pub fn summary(leases: &[Lease]) -> String {
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in leases.iter().filter_map(|l| l.owner.as_deref()) {
        *holders.entry(owner).or_default() += 1;
    }
    let held = if holders.is_empty() {
        "held by nobody".to_owned()
    } else {
        format!(
            "held by {}",
            holders
                .iter()
                .map(|(owner, count)| format!("{owner} ({count})"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let free = leases.iter().filter(|l| l.owner.is_none()).count();
    let finished = leases.iter().filter(|l| l.finished).count();
    let noun = if leases.len() == 1 { "lease" } else { "leases" };
    format!(
        "{} {noun}; {held}; {free} free; {finished} finished",
        leases.len()
    )
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn json_option(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_owned(), json_string)
}

/// The leases as a JSON array, one object per line: `shard`, `owner`, `counter`, `checkpoint`,
/// `starting`, `started`, `finished`, `parents`, `handoff_to`, `expires_ms` (epoch milliseconds) and
/// `expires` (relative to now); absent values are `null`.
pub fn write_json(leases: &[Lease], now_ms: u64, out: &mut dyn Write) -> std::io::Result<()> {
    if leases.is_empty() {
        return writeln!(out, "[]");
    }
    writeln!(out, "[")?;
    for (i, l) in leases.iter().enumerate() {
        let parents: Vec<String> = l.parents.iter().map(|p| json_string(p)).collect();
        let (expires_ms, expires) = if l.expires_ms == 0 {
            ("null".to_owned(), "null".to_owned())
        } else {
            (
                l.expires_ms.to_string(),
                json_string(&relative(l.expires_ms, now_ms)),
            )
        };
        writeln!(
            out,
            "  {{\"shard\":{},\"owner\":{},\"counter\":{},\"checkpoint\":{},\"starting\":{},\"started\":{},\
             \"finished\":{},\"parents\":[{}],\"handoff_to\":{},\"expires_ms\":{expires_ms},\"expires\":{expires}}}{}",
            json_string(&l.shard),
            json_option(l.owner.as_deref()),
            l.counter,
            json_option(l.checkpoint.as_ref().map(SeqNo::as_str)),
            json_option(l.starting.as_ref().map(SeqNo::as_str)),
            l.started,
            l.finished,
            parents.join(","),
            json_option(l.handoff_to.as_deref()),
            if i + 1 == leases.len() { "" } else { "," },
        )?;
    }
    writeln!(out, "]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        Lease {
            shard: shard.to_owned(),
            owner: owner.map(str::to_owned),
            counter: 7,
            checkpoint: SeqNo::parse("000123"),
            parents: Vec::new(),
            starting: SeqNo::parse("100"),
            started: true,
            finished: false,
            handoff_to: None,
            expires_ms: 0,
        }
    }

    #[test]
    fn relative_times() {
        let now = 1_000_000_000;
        assert_eq!(relative(0, now), "-");
        assert_eq!(relative(now + 4_200, now), "in 4s");
        assert_eq!(relative(now - 3_000, now), "3s ago");
        assert_eq!(relative(now + 400, now), "now");
        assert_eq!(relative(now - 300_000, now), "5m ago");
        assert_eq!(relative(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(relative(now - 3 * 86_400_000, now), "3d ago");
    }

    #[test]
    fn reset_to_parses_trim_horizon_and_sequence_numbers_only() {
        assert_eq!(ResetTo::parse("trim-horizon"), Ok(ResetTo::TrimHorizon));
        assert_eq!(
            ResetTo::parse("4950000000000000000012345"),
            Ok(ResetTo::Seq(
                SeqNo::parse("4950000000000000000012345").expect("digits")
            ))
        );
        for bad in ["latest", "", "12a", "-5", "TRIM_HORIZON"] {
            let err = ResetTo::parse(bad).expect_err(bad);
            assert!(
                err.contains("neither trim-horizon nor a sequence number"),
                "{err}"
            );
        }
    }

    #[test]
    fn table_and_summary() {
        let now = 1_000_000_000;
        let mut held = lease("shard-a", Some("w1"));
        held.expires_ms = now + 4_000;
        let mut free = lease("shard-b", None);
        free.parents = vec!["shard-a".into()];
        free.checkpoint = None;
        free.finished = true;
        let mut out = Vec::new();
        write_table(&[held.clone(), free.clone()], now, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let cells = |line: &str| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(lines[1]),
            [
                "shard-a", "w1", "7", "123", "yes", "no", "-", "-", "in", "4s"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "shard-b", "free", "7", "-", "yes", "yes", "shard-a", "-", "-"
            ]
        );
        assert_eq!(
            lines[0].find("OWNER"),
            lines[1].find("w1"),
            "columns line up"
        );
        assert_eq!(
            summary(&[held, free]),
            "2 leases; held by w1 (1); 1 free; 1 finished"
        );
        assert_eq!(summary(&[]), "0 leases; held by nobody; 0 free; 0 finished");
    }

    #[test]
    fn json_escapes_and_nulls() {
        let mut odd = lease("sh\"ard\\1", Some("w\n1"));
        odd.parents = vec!["p1".into(), "p2".into()];
        let mut out = Vec::new();
        write_json(&[odd, lease("b", None)], 5, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("[\n  {\"shard\":\"sh\\\"ard\\\\1\",\"owner\":\"w\\n1\",\"counter\":7,\"checkpoint\":\"123\""), "{text}");
        assert!(text.contains("\"parents\":[\"p1\",\"p2\"]"), "{text}");
        assert!(text.contains("\"owner\":null"), "{text}");
        assert!(
            text.contains("\"expires_ms\":null,\"expires\":null}\n]"),
            "{text}"
        );
        let mut empty = Vec::new();
        write_json(&[], 5, &mut empty).expect("write");
        assert_eq!(empty, b"[]\n");
    }

    #[test]
    fn describe_says_who_holds_it() {
        let mut held = lease("s", Some("w1"));
        held.expires_ms = 10_000;
        assert_eq!(
            describe(&held, 13_000),
            "held by w1, counter 7, checkpoint 123, started, expires 3s ago"
        );
        let mut free = lease("s", None);
        free.handoff_to = Some("w2".into());
        free.checkpoint = None;
        assert_eq!(
            describe(&free, 0),
            "free, counter 7, no checkpoint, started, hand-off requested by w2"
        );
    }
}
