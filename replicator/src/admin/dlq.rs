//! `replicator dlq list | replay | purge`: the dead letters of one path (records the target refused for
//! good, parked by `replicator run` under `--on-refused-record dead-letter`), shown, applied again or
//! deleted, so nobody edits the dead-letter table by hand.
//!
//! - `list` reads every dead letter of the path and prints one line per entry and a summary, or a JSON
//!   array.
//! - `replay` applies each selected entry with the replicator's rules and deletes it once it is applied
//!   or superseded; an entry the target still refuses stays, with its new error.
//!   - lww: the record's own write (stamped, conditional on the version, as the engine plans it); a
//!     failed condition means a newer write already won (superseded).
//!   - one-way: the target mirrors the source, and the record may be older than what the source holds
//!     now, so the source's current item is copied (or the target item deleted, if the source has none
//!     left), conditional on the target item being unchanged since it was read; a failed condition
//!     means the replicator wrote the key meanwhile (superseded).
//! - `purge` deletes entries (their changes never reach the target unless the item changes again).
//!
//! Changes that lose data print what they would do and do nothing without `--yes`.

use std::collections::BTreeSet;
use std::io::Write;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::version::VersionAttributes;

use super::leases::relative;
use super::{AdminError, PathArgs, PathSpec, bad, path_key, shard_list, table_name};
use crate::apply::plan::PlanContext;
use crate::apply::target::{AwsTarget, FENCE_ATTRIBUTE, Outcome, TargetTable, outcome};
use crate::config::AttributeArgs;
use crate::config::{ConfigError, Mode, TableRef};
use crate::dead_letter::dynamo::DynamoDeadLetters;
use crate::dead_letter::{DeadLetter, refused_for_good};
use crate::error::AwsFailure;
use crate::item::{Item, attribute_json, key_string};
use crate::lease::dynamo::{FENCE_ROW, PATH, SHARD};
use crate::stream::EventKind;

/// `replicator dlq ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Show every dead letter of the path: ID, key, kind, when, worker, request ID, error.
    List(ListArgs),
    /// Apply dead letters again with the replicator's rules; delete those applied or superseded.
    Replay(ReplayArgs),
    /// Delete dead letters without applying them.
    Purge(PurgeArgs),
}

impl DlqCommand {
    /// The flags that name the path and its dead-letter table.
    pub fn table(&self) -> &TableArgs {
        match self {
            DlqCommand::List(args) => &args.table,
            DlqCommand::Replay(args) => &args.table,
            DlqCommand::Purge(args) => &args.table,
        }
    }

    /// Validates the flags; errors name the flag, as `replicator run`'s do.
    pub fn validate(&self) -> Result<DlqSpec, ConfigError> {
        let mut spec = self.table().validate()?;
        if let DlqCommand::Replay(args) = self {
            spec.attributes = args.attributes.validate()?;
        }
        Ok(spec)
    }
}

/// The path flags of `replicator run` and its dead-letter table.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    #[command(flatten)]
    pub path: PathArgs,
    /// Table (in the lease table's region) where `replicator run` parks refused records.
    #[arg(
        long,
        env = "REPLICATOR_DEAD_LETTER_TABLE",
        default_value = "tworegion-replicator-dead-letters"
    )]
    pub dead_letter_table: String,
}

/// A validated [`TableArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqSpec {
    /// The path.
    pub path: PathSpec,
    /// The dead-letter table (in the lease table's region, as `run` puts it).
    pub dead_letters: TableRef,
    /// The convention's attribute names (`replay`; the defaults otherwise).
    pub attributes: VersionAttributes,
}

impl TableArgs {
    /// Validates the flags; errors name the flag, as `replicator run`'s do.
    pub fn validate(&self) -> Result<DlqSpec, ConfigError> {
        let path = self.path.validate()?;
        let table = table_name("dead-letter-table", &self.dead_letter_table)?;
        if table == path.lease.table {
            return Err(bad(
                "dead-letter-table",
                format!(
                    "{table:?} is the lease table; the dead letters are in a table of their own (the \
                     --dead-letter-table that `replicator run` uses)"
                ),
            ));
        }
        Ok(DlqSpec {
            dead_letters: TableRef {
                region: path.lease.region.clone(),
                table,
            },
            path,
            attributes: VersionAttributes::default(),
        })
    }
}

/// Which dead letters a command acts on: `--id` (repeatable) or `--all`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// A dead letter's ID (`<shard>#<sequence number>`, as `replicator dlq list` shows it); repeatable.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every dead letter of the path.
    #[arg(long)]
    pub all: bool,
}

/// `replicator dlq list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Print a JSON array (one object per dead letter) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replicator dlq replay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub table: TableArgs,
    #[command(flatten)]
    pub selection: Selection,
    /// The mode `replicator run` uses on this path: one-way copies the source's current item, lww
    /// applies the record's own write if it is still the newest.
    #[arg(long, env = "REPLICATOR_MODE", value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub attributes: AttributeArgs,
}

/// `replicator dlq purge` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub table: TableArgs,
    #[command(flatten)]
    pub selection: Selection,
    /// Really delete; without it the command only shows what would be deleted.
    #[arg(long)]
    pub yes: bool,
}

/// Why a `dlq` command failed. Every message says what is wrong and how to go on.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Finding the path, a DynamoDB call, a missing `--yes`, the output.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The dead-letter table does not exist.
    #[error(
        "dead-letter table {table} does not exist in {region}: nothing was parked for this path yet \
         (`replicator run` creates the table when it parks the first record); if records were parked, \
         fix --dead-letter-table / --lease-region (the table is in the lease table's region, the target \
         region unless `replicator run` was given --lease-region)"
    )]
    NoTable {
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// No dead letter has this ID on the path.
    #[error("there is no dead letter {id} on this path; {}", known_ids(.known))]
    UnknownId {
        /// The ID asked for.
        id: String,
        /// The IDs the path has.
        known: Vec<String>,
    },
    /// `--mode one-way` on a path that never ran one-way.
    #[error(
        "path {path} has never run in one-way mode (lease table {lease_table} holds no fencing token for \
         it), so --mode one-way is not its mode; nothing was changed. A one-way replay copies the source's \
         item over the target's whatever its version, which on an lww path can undo a newer write made in \
         the target region: replay with --mode lww, the mode `replicator run` uses (or fix --lease-table / \
         --lease-region if they are not the ones `run` uses)"
    )]
    NotOneWay {
        /// The path key.
        path: String,
        /// The lease table.
        lease_table: TableRef,
    },
    /// A replay left entries in the table.
    #[error(
        "{remaining} of {total} dead letters remain in the dead-letter table (each line above says why); \
         fix the cause and replay them again, or delete them with `replicator dlq purge`"
    )]
    Remaining {
        /// Entries left.
        remaining: usize,
        /// Entries replayed.
        total: usize,
    },
}

fn known_ids(known: &[String]) -> String {
    if known.is_empty() {
        "the path has no dead letters at all".to_owned()
    } else {
        format!(
            "its dead letters are: {} (`replicator dlq list` shows them)",
            shard_list(known)
        )
    }
}

impl From<std::io::Error> for DlqError {
    fn from(error: std::io::Error) -> DlqError {
        DlqError::Admin(AdminError::Output(error))
    }
}

impl DlqError {
    /// Short, low-cardinality name (for metrics and tests).
    pub fn kind(&self) -> &'static str {
        match self {
            DlqError::Admin(error) => error.kind(),
            DlqError::NoTable { .. } => "no_dead_letter_table",
            DlqError::UnknownId { .. } => "unknown_id",
            DlqError::NotOneWay { .. } => "not_one_way",
            DlqError::Remaining { .. } => "remaining",
        }
    }

    /// The process exit code: 4 when a replay left entries, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DlqError::Remaining { .. } => 4,
            _ => 1,
        }
    }
}

/// The clients a `dlq` command needs: the source's region (the path key; one-way replays read the
/// source item), the target's (replays) and the lease table's (the dead-letter table).
#[derive(Debug, Clone)]
pub struct Clients {
    /// The source table's region.
    pub source: Client,
    /// The target table's region. Replay writes are conditional: give it one attempt per call, so a
    /// write that landed but whose answer was lost is not retried into its own failed condition.
    pub target: Client,
    /// The lease table's region: the dead-letter table, and the lease table (whether the path ran
    /// one-way).
    pub dead_letters: Client,
}

/// The dead letters of one path, with the table's name for messages.
struct Letters {
    store: DynamoDeadLetters,
    table: TableRef,
    path: String,
}

impl Letters {
    fn failed(&self, what: &str, failure: AwsFailure) -> DlqError {
        if failure.kind == "not_found" {
            DlqError::NoTable {
                table: self.table.table.clone(),
                region: self.table.region.clone(),
            }
        } else {
            DlqError::Admin(AdminError::Aws {
                what: format!("{what} in dead-letter table {}", self.table),
                source: failure,
            })
        }
    }

    async fn all(&self) -> Result<Vec<DeadLetter>, DlqError> {
        self.store
            .list()
            .await
            .map_err(|f| self.failed("reading dead letters", f))
    }

    /// The selected dead letters, oldest position first within a shard; an unknown ID is an error
    /// that lists the known ones.
    async fn select(&self, selection: &Selection) -> Result<Vec<DeadLetter>, DlqError> {
        if selection.all {
            return self.all().await;
        }
        let mut letters = Vec::new();
        let mut seen = BTreeSet::new();
        for id in &selection.ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let found = self
                .store
                .get(id)
                .await
                .map_err(|f| self.failed("reading a dead letter", f))?;
            match found {
                Some(letter) => letters.push(letter),
                None => {
                    let known = self
                        .store
                        .ids()
                        .await
                        .map_err(|f| self.failed("listing dead letters", f))?;
                    return Err(DlqError::UnknownId {
                        id: id.clone(),
                        known,
                    });
                }
            }
        }
        letters.sort_by(|a, b| (&a.shard, &a.change.seq).cmp(&(&b.shard, &b.change.seq)));
        Ok(letters)
    }

    async fn delete(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        self.store
            .delete(letter)
            .await
            .map_err(|f| self.failed(&format!("deleting dead letter {}", letter.id()), f))
    }
}

/// Runs `command` on the path of `spec`. Everything users see goes to `out`; errors say what is wrong
/// and how to go on.
pub async fn run(
    command: &DlqCommand,
    spec: &DlqSpec,
    clients: &Clients,
    out: &mut dyn Write,
) -> Result<(), DlqError> {
    let path = path_key(&clients.source, &spec.path).await?;
    let letters = Letters {
        store: DynamoDeadLetters::new(
            clients.dead_letters.clone(),
            spec.dead_letters.table.clone(),
            path.clone(),
        ),
        table: spec.dead_letters.clone(),
        path,
    };
    match command {
        DlqCommand::List(args) => list(&letters, args.json, out).await,
        DlqCommand::Replay(args) => {
            if args.mode == Mode::OneWay {
                check_one_way(&clients.dead_letters, &spec.path.lease, &letters.path).await?;
            }
            let attributes = spec.attributes.clone();
            let replay = Replay {
                spec,
                clients,
                mode: args.mode,
                plan: PlanContext::new(
                    Mode::Lww,
                    spec.path.source.region.clone(),
                    spec.path.target.region.clone(),
                    attributes.clone(),
                ),
                target: AwsTarget::new(
                    clients.target.clone(),
                    spec.path.target.table.clone(),
                    attributes.clone(),
                ),
                attributes,
            };
            replay.run(&letters, &args.selection, out).await
        }
        DlqCommand::Purge(args) => purge(&letters, &args.selection, args.yes, out).await,
    }
}

/// A path that ran in one-way mode has a fencing-token row in the lease table (the workers draw a
/// token before every take); an lww path never has one. A missing lease table tells nothing.
async fn check_one_way(client: &Client, lease: &TableRef, path: &str) -> Result<(), DlqError> {
    let out = client
        .get_item()
        .table_name(&lease.table)
        .key(PATH, AttributeValue::S(path.to_owned()))
        .key(SHARD, AttributeValue::S(FENCE_ROW.to_owned()))
        .consistent_read(true)
        .send()
        .await;
    match out {
        Ok(out) if out.item.is_some() => Ok(()),
        Ok(_) => Err(DlqError::NotOneWay {
            path: path.to_owned(),
            lease_table: lease.clone(),
        }),
        Err(error) => {
            let failure = AwsFailure::from_sdk(&error);
            if failure.kind == "not_found" {
                Ok(())
            } else {
                Err(DlqError::Admin(AdminError::Aws {
                    what: format!("reading the fencing-token row in lease table {lease}"),
                    source: failure,
                }))
            }
        }
    }
}

async fn list(letters: &Letters, json: bool, out: &mut dyn Write) -> Result<(), DlqError> {
    let all = letters.all().await?;
    let now = crate::worker::now_millis();
    if json {
        write_json(&all, now, out)?;
        return Ok(());
    }
    writeln!(out, "Path:              {}", letters.path)?;
    writeln!(out, "Dead-letter table: {}", letters.table)?;
    if all.is_empty() {
        writeln!(out, "0 dead letters: nothing is parked for this path.")?;
        return Ok(());
    }
    write_table(&all, now, out)?;
    writeln!(out, "{}", summary(&all))?;
    Ok(())
}

async fn purge(
    letters: &Letters,
    selection: &Selection,
    yes: bool,
    out: &mut dyn Write,
) -> Result<(), DlqError> {
    let selected = letters.select(selection).await?;
    if selected.is_empty() {
        writeln!(
            out,
            "0 dead letters on path {}: nothing to delete.",
            letters.path
        )?;
        return Ok(());
    }
    let count = plural(selected.len(), "dead letter", "dead letters");
    writeln!(
        out,
        "{} {count} of path {} from {}:",
        if yes { "Deleting" } else { "Would delete" },
        letters.path,
        letters.table
    )?;
    for letter in &selected {
        writeln!(
            out,
            "  {}  {}  {}  {}",
            letter.id(),
            key_string(&letter.change.keys),
            kind_label(letter.change.kind),
            error_text(letter)
        )?;
    }
    writeln!(
        out,
        "Their changes are never applied to the target: the target keeps its older item until the source \
         item changes again (`replicator dlq replay` applies them instead)."
    )?;
    if !yes {
        return Err(AdminError::NotConfirmed {
            action: format!("delete {count}"),
        }
        .into());
    }
    for letter in &selected {
        letters.delete(letter).await?;
        tracing::warn!(id = %letter.id(), path = %letters.path, key = %key_string(&letter.change.keys), "Dead letter purged by an operator.");
    }
    writeln!(out, "Deleted {count}.")?;
    Ok(())
}

/// How replaying one dead letter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The target now holds the write (deleted from the table).
    Applied(String),
    /// Nothing needed writing: a newer write won, or the target already holds it (deleted from the
    /// table).
    Superseded(String),
    /// Not applied: the entry stays, for this reason.
    Kept(String),
}

struct Replay<'a> {
    spec: &'a DlqSpec,
    clients: &'a Clients,
    mode: Mode,
    plan: PlanContext,
    target: AwsTarget,
    attributes: VersionAttributes,
}

impl Replay<'_> {
    async fn run(
        &self,
        letters: &Letters,
        selection: &Selection,
        out: &mut dyn Write,
    ) -> Result<(), DlqError> {
        let selected = letters.select(selection).await?;
        if selected.is_empty() {
            writeln!(
                out,
                "0 dead letters on path {}: nothing to replay.",
                letters.path
            )?;
            return Ok(());
        }
        let mode = self.mode.label();
        writeln!(
            out,
            "Replaying {} of path {} ({mode}, target {}):",
            plural(selected.len(), "dead letter", "dead letters"),
            letters.path,
            self.spec.path.target
        )?;
        let (mut applied, mut superseded, mut kept) = (0, 0, 0);
        for letter in &selected {
            let replayed = match self.mode {
                Mode::Lww => replay_lww(letter, &self.plan, &self.target).await,
                Mode::OneWay => self.replay_one_way(letter).await,
            }
            .map_err(|source| AdminError::Aws {
                what: format!(
                    "replaying dead letter {} (it stays in the table; repeat the command once the cause \
                     is fixed)",
                    letter.id()
                ),
                source,
            })?;
            let head = format!("{}  {}", letter.id(), key_string(&letter.change.keys));
            match &replayed {
                Replayed::Applied(what) | Replayed::Superseded(what) => {
                    letters.delete(letter).await?;
                    let word = if matches!(replayed, Replayed::Applied(_)) {
                        applied += 1;
                        "applied"
                    } else {
                        superseded += 1;
                        "superseded"
                    };
                    tracing::info!(id = %letter.id(), path = %letters.path, key = %key_string(&letter.change.keys), outcome = word, "Dead letter replayed by an operator.");
                    writeln!(
                        out,
                        "{head}  {word}: {what}; removed from the dead-letter table."
                    )?;
                }
                Replayed::Kept(why) => {
                    kept += 1;
                    writeln!(out, "{head}  kept: {why}")?;
                }
            }
        }
        let total = selected.len();
        writeln!(
            out,
            "Replayed {} of {total} ({applied} applied, {superseded} superseded); {kept} {}.",
            applied + superseded,
            if kept == 1 { "remains" } else { "remain" }
        )?;
        if kept > 0 {
            return Err(DlqError::Remaining {
                remaining: kept,
                total,
            });
        }
        Ok(())
    }

    /// One-way: the source's current item copied ([`copy_one_way`]).
    async fn replay_one_way(&self, letter: &DeadLetter) -> Result<Replayed, AwsFailure> {
        copy_one_way(
            (&self.clients.source, &self.spec.path.source.table),
            (&self.clients.target, &self.spec.path.target.table),
            &letter.change.keys,
            &self.attributes,
        )
        .await
    }
}

/// One-way: copies the source's current item at `keys` into the target (or deletes the target's, if
/// the source has none), conditional on the target item being unchanged since it was read. The source
/// is read again after the write: if it changed in between, the replicator may already have applied
/// that change before the copy landed over it, so the copy is made again. `source` and `target` are a
/// client and a table; the target's client should make one attempt per call.
pub async fn copy_one_way(
    (source, source_table): (&Client, &str),
    (target, target_table): (&Client, &str),
    keys: &Item,
    attributes: &VersionAttributes,
) -> Result<Replayed, AwsFailure> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        // The target first: a replicator write after this read fails the copy's condition.
        let seen = get(target, target_table, keys).await?;
        let current = get(source, source_table, keys).await?;
        let (result, what) = match copy_step(keys, seen.as_ref(), current.as_ref(), attributes) {
            CopyStep::Nothing => {
                return Ok(Replayed::Superseded(
                    if current.is_some() {
                        "the target already holds the source's current item"
                    } else {
                        "neither table holds the item any more"
                    }
                    .to_owned(),
                ));
            }
            CopyStep::Put { item, seen_fence } => {
                let condition = unchanged_since(seen_fence.as_ref());
                let request = target
                    .put_item()
                    .table_name(target_table)
                    .set_item(Some(item))
                    .condition_expression(condition.text)
                    .set_expression_attribute_names(Some(condition.names))
                    .set_expression_attribute_values(condition.values);
                (
                    outcome(request.send().await),
                    "copied the source's current item",
                )
            }
            CopyStep::Delete { key, seen_fence } => {
                let condition = unchanged_since(seen_fence.as_ref());
                let request = target
                    .delete_item()
                    .table_name(target_table)
                    .set_key(Some(key))
                    .condition_expression(condition.text)
                    .set_expression_attribute_names(Some(condition.names))
                    .set_expression_attribute_values(condition.values);
                (
                    outcome(request.send().await),
                    "deleted the target item (the source no longer holds it)",
                )
            }
        };
        match result {
            Ok(Outcome::Applied) => {}
            Ok(Outcome::Conflict) => {
                return Ok(Replayed::Superseded(
                    "the replicator wrote the key meanwhile".to_owned(),
                ));
            }
            Err(failure) if refused_for_good(&failure) => {
                return Ok(Replayed::Kept(still_refused(&failure)));
            }
            Err(failure) => return Err(failure),
        }
        let after = get(source, source_table, keys).await?;
        if after == current {
            return Ok(Replayed::Applied(what.to_owned()));
        }
    }
    Ok(Replayed::Kept(format!(
        "the source item changed during each of {ATTEMPTS} copies; run the command again when it is \
         quieter"
    )))
}

/// lww: the record's own write, planned as the engine plans it and conditional on the version, so a
/// newer write that already won is left alone (superseded).
pub async fn replay_lww<T: TargetTable>(
    letter: &DeadLetter,
    plan: &PlanContext,
    target: &T,
) -> Result<Replayed, AwsFailure> {
    if letter.images_omitted {
        return Ok(Replayed::Kept(format!(
            "its images were too large to keep beside the error, and lww mode replays the record's own \
             image; fix the source item (for example make it smaller) so that its next change \
             replicates, then delete this entry with `replicator dlq purge --id {} --yes`",
            letter.id()
        )));
    }
    let planned = plan.plan_all(std::slice::from_ref(&letter.change));
    if let Some((_, error)) = planned.refused.first() {
        return Ok(Replayed::Kept(format!(
            "it still cannot be applied: {}; fix the source item so that its next change replicates, \
             then delete this entry with `replicator dlq purge --id {} --yes`",
            error.problem,
            letter.id()
        )));
    }
    if let Some((_, reason)) = planned.skipped.first() {
        return Ok(Replayed::Superseded(format!(
            "the replicator's rules need no write for it ({})",
            reason.label()
        )));
    }
    let mut last = None;
    for write in planned
        .writes
        .iter()
        .flat_map(|p| p.before.iter().chain(std::iter::once(&p.write)))
    {
        match target.write(write).await {
            Ok(outcome) => last = Some(outcome),
            Err(failure) if refused_for_good(&failure) => {
                return Ok(Replayed::Kept(still_refused(&failure)));
            }
            Err(failure) => return Err(failure),
        }
    }
    Ok(match last {
        Some(Outcome::Applied) => Replayed::Applied("the record's write is applied".to_owned()),
        Some(Outcome::Conflict) => {
            Replayed::Superseded("the target already holds a newer write".to_owned())
        }
        None => Replayed::Superseded("the replicator's rules need no write for it".to_owned()),
    })
}

fn still_refused(failure: &AwsFailure) -> String {
    let text = one_line(&failure.message);
    match &failure.request_id {
        Some(id) => format!("the target still refuses it: {text} (request ID {id})"),
        None => format!("the target still refuses it: {text}"),
    }
}

/// The item at `keys` in `table` (consistent read).
pub(crate) async fn get(
    client: &Client,
    table: &str,
    keys: &Item,
) -> Result<Option<Item>, AwsFailure> {
    client
        .get_item()
        .table_name(table)
        .set_key(Some(keys.clone()))
        .consistent_read(true)
        .send()
        .await
        .map(|out| out.item)
        .map_err(|e| AwsFailure::from_sdk(&e))
}

/// What a one-way replay writes, from the target item as read and the source's current item.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyStep {
    /// The target already mirrors the source (the same item, or no live item in either).
    Nothing,
    /// Put the source's item (without a fencing token, so the replicator's next write of the key,
    /// by any owner, replaces it).
    Put {
        /// The item.
        item: Item,
        /// The target item's fencing token as read (`None`: it had none, or there was no item).
        seen_fence: Option<AttributeValue>,
    },
    /// Delete the target's item.
    Delete {
        /// The key.
        key: Item,
        /// The target item's fencing token as read.
        seen_fence: Option<AttributeValue>,
    },
}

/// The one-way replay step for `keys`: `seen` is the target item as read, `current` the source's.
pub fn copy_step(
    keys: &Item,
    seen: Option<&Item>,
    current: Option<&Item>,
    attributes: &VersionAttributes,
) -> CopyStep {
    let seen_fence = seen.and_then(|item| item.get(FENCE_ATTRIBUTE)).cloned();
    let without_fence = |item: &Item| {
        let mut item = item.clone();
        item.remove(FENCE_ATTRIBUTE);
        item
    };
    let live_target = seen.filter(|item| {
        !matches!(
            item.get(&attributes.deleted),
            Some(AttributeValue::Bool(true))
        )
    });
    match current {
        Some(source) => {
            let item = without_fence(source);
            if live_target.map(without_fence).as_ref() == Some(&item) {
                CopyStep::Nothing
            } else {
                CopyStep::Put { item, seen_fence }
            }
        }
        // A tombstone is what the replicator leaves for a deleted item: keep it.
        None if live_target.is_none() => CopyStep::Nothing,
        None => CopyStep::Delete {
            key: keys.clone(),
            seen_fence,
        },
    }
}

/// A condition as DynamoDB takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unchanged {
    /// The condition expression.
    pub text: &'static str,
    /// `#f` to the fencing attribute.
    pub names: std::collections::HashMap<String, String>,
    /// `:seen`, when the item had a token.
    pub values: Option<std::collections::HashMap<String, AttributeValue>>,
}

/// "The target item was not written by the replicator since it was read": its fencing token is still
/// the one seen, or still absent.
pub fn unchanged_since(seen_fence: Option<&AttributeValue>) -> Unchanged {
    let names = [("#f".to_owned(), FENCE_ATTRIBUTE.to_owned())].into();
    match seen_fence {
        None => Unchanged {
            text: "attribute_not_exists(#f)",
            names,
            values: None,
        },
        Some(token) => Unchanged {
            text: "#f = :seen",
            names,
            values: Some([(":seen".to_owned(), token.clone())].into()),
        },
    }
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

fn kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Insert => "INSERT",
        EventKind::Modify => "MODIFY",
        EventKind::Remove => "REMOVE",
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The error as `Code: message` (the worker stores service errors that way already).
pub fn error_text(letter: &DeadLetter) -> String {
    let error = one_line(&letter.error);
    match &letter.code {
        Some(code) if !error.starts_with(code.as_str()) => format!("{code}: {error}"),
        _ => error,
    }
}

/// The dead letters as a table with a header row; columns as wide as their widest cell, the error
/// last.
pub fn write_table(
    letters: &[DeadLetter],
    now_ms: u64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    const HEADER: [&str; 7] = [
        "ID",
        "KEY",
        "KIND",
        "PARKED",
        "WORKER",
        "REQUEST_ID",
        "ERROR",
    ];
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            let mut error = error_text(l);
            if l.images_omitted {
                error.push_str(" (images omitted: too large)");
            }
            [
                l.id(),
                key_string(&l.change.keys),
                kind_label(l.change.kind).to_owned(),
                relative(l.at_ms, now_ms),
                if l.worker.is_empty() {
                    "-".to_owned()
                } else {
                    l.worker.clone()
                },
                l.request_id.clone().unwrap_or_else(|| "-".to_owned()),
                error,
            ]
        })
        .collect();
    super::write_columns(&HEADER, &rows, out)
}

/// `3 dead letters on 2 shards; 1 with images omitted (too large to keep); oldest parked 5m ago`.
pub fn summary(letters: &[DeadLetter]) -> String {
    let shards: BTreeSet<&str> = letters.iter().map(|l| l.shard.as_str()).collect();
    let mut text = format!(
        "{} on {}",
        plural(letters.len(), "dead letter", "dead letters"),
        plural(shards.len(), "shard", "shards")
    );
    let omitted = letters.iter().filter(|l| l.images_omitted).count();
    if omitted > 0 {
        text.push_str(&format!(
            "; {omitted} with images omitted (too large to keep)"
        ));
    }
    text.push_str("; `replicator dlq replay` applies them, `replicator dlq purge` deletes them.");
    text
}

/// One dead letter as a JSON object: `id`, `shard`, `seq`, `kind`, `key` (as in logs), `keys`
/// (DynamoDB JSON), `by_ttl`, `created_at` (epoch seconds), `parked_ms` (epoch milliseconds),
/// `parked` (relative to now), `worker`, `code`, `error`, `request_id`, `images_omitted`; absent
/// values are `null`. The images are not included.
pub fn json_object(letter: &DeadLetter, now_ms: u64) -> serde_json::Value {
    let keys: serde_json::Map<String, serde_json::Value> = letter
        .change
        .keys
        .iter()
        .map(|(name, value)| (name.clone(), attribute_json(value)))
        .collect();
    serde_json::json!({
        "id": letter.id(),
        "shard": letter.shard,
        "seq": letter.change.seq.as_str(),
        "kind": kind_label(letter.change.kind),
        "key": key_string(&letter.change.keys),
        "keys": keys,
        "by_ttl": letter.change.by_ttl,
        "created_at": letter.change.created_at,
        "parked_ms": letter.at_ms,
        "parked": relative(letter.at_ms, now_ms),
        "worker": letter.worker,
        "code": letter.code,
        "error": letter.error,
        "request_id": letter.request_id,
        "images_omitted": letter.images_omitted,
    })
}

/// The dead letters as a JSON array, one object per line (see [`json_object`]).
pub fn write_json(letters: &[DeadLetter], now_ms: u64, out: &mut dyn Write) -> std::io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "[]");
    }
    writeln!(out, "[")?;
    for (i, letter) in letters.iter().enumerate() {
        let separator = if i + 1 == letters.len() { "" } else { "," };
        writeln!(out, "  {}{separator}", json_object(letter, now_ms))?;
    }
    writeln!(out, "]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::target::MemoryTarget;
    use crate::stream::{Change, SeqNo};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: DlqCommand,
    }

    const PATH_FLAGS: [&str; 8] = crate::config::TEST_PATH_FLAGS;

    fn parse(args: &[&str]) -> Result<DlqCommand, clap::Error> {
        let argv = std::iter::once("replicator")
            .chain(args.iter().copied())
            .chain(PATH_FLAGS);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn n(v: u64) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }

    fn letter(id: &str, image: Option<Item>) -> DeadLetter {
        DeadLetter {
            shard: "shardId-1".into(),
            change: Change {
                seq: SeqNo::from_u128(100_000_000_000_000_000_123),
                kind: EventKind::Modify,
                keys: [("id".to_owned(), s(id))].into(),
                new_image: image,
                old_image: None,
                created_at: Some(1_700_000_000.0),
                by_ttl: false,
            },
            error: "ValidationException: Item size has exceeded the maximum allowed size".into(),
            code: Some("ValidationException".into()),
            request_id: Some("REQ1".into()),
            worker: "w1".into(),
            at_ms: 1_000_000_000 - 120_000,
            images_omitted: false,
        }
    }

    #[test]
    fn flags_default_to_run_and_need_one_selection() {
        let command = parse(&["list"]).expect("parses");
        let spec = command.table().validate().expect("valid");
        assert_eq!(
            spec.dead_letters.to_string(),
            "us-west-2/tworegion-replicator-dead-letters"
        );
        let command = parse(&["list", "--lease-region", "eu-west-1"]).expect("parses");
        let spec = command.table().validate().expect("valid");
        assert_eq!(spec.dead_letters.region, "eu-west-1");

        let err = parse(&["purge"]).expect_err("a selection is required");
        assert!(err.to_string().contains("--id"), "{err}");
        parse(&["purge", "--id", "a", "--all"]).expect_err("--id and --all exclude each other");
        let DlqCommand::Purge(purge) = parse(&["purge", "--id", "a", "--id", "b"]).expect("parses")
        else {
            panic!("purge")
        };
        assert_eq!(purge.selection.ids, ["a", "b"]);
        assert!(!purge.yes);
        parse(&["replay", "--all"]).expect_err("--mode is required");
        let DlqCommand::Replay(replay) =
            parse(&["replay", "--all", "--mode", "one-way"]).expect("parses")
        else {
            panic!("replay")
        };
        assert_eq!(replay.mode, Mode::OneWay);
        assert_eq!(
            replay.attributes.validate().expect("valid"),
            VersionAttributes::default()
        );
        let DlqCommand::Replay(replay) = parse(&[
            "replay",
            "--all",
            "--mode",
            "lww",
            "--origin-attribute",
            "rep_version",
        ])
        .expect("parses") else {
            panic!("replay")
        };
        let err = replay.attributes.validate().expect_err("duplicate names");
        assert_eq!(err.flag, "origin-attribute");
    }

    #[test]
    fn the_dead_letter_table_is_not_the_lease_table() {
        let command = parse(&[
            "list",
            "--dead-letter-table",
            "shared",
            "--lease-table",
            "shared",
        ])
        .expect("parses");
        let err = command.table().validate().expect_err("same table");
        assert_eq!(err.flag, "dead-letter-table");
        let command = parse(&["list", "--dead-letter-table", "x"]).expect("parses");
        assert_eq!(
            command.table().validate().expect_err("bad name").flag,
            "dead-letter-table"
        );
    }

    #[test]
    fn errors_say_how_to_go_on() {
        let text = DlqError::NoTable {
            table: "t".into(),
            region: "us-west-2".into(),
        }
        .to_string();
        assert!(
            text.contains("nothing was parked for this path yet"),
            "{text}"
        );
        let text = DlqError::UnknownId {
            id: "x".into(),
            known: vec!["a#1".into(), "b#2".into()],
        }
        .to_string();
        assert!(text.contains("its dead letters are: a#1, b#2"), "{text}");
        let text = DlqError::UnknownId {
            id: "x".into(),
            known: vec![],
        }
        .to_string();
        assert!(text.contains("no dead letters at all"), "{text}");
        let text = DlqError::NotOneWay {
            path: "arn:a>us-west-2/t".into(),
            lease_table: TableRef {
                region: "us-west-2".into(),
                table: "leases".into(),
            },
        }
        .to_string();
        assert!(
            text.contains("has never run in one-way mode (lease table us-west-2/leases"),
            "{text}"
        );
        assert!(text.contains("replay with --mode lww"), "{text}");
        let remaining = DlqError::Remaining {
            remaining: 1,
            total: 3,
        };
        assert_eq!(remaining.exit_code(), 4);
        assert!(
            remaining
                .to_string()
                .starts_with("1 of 3 dead letters remain")
        );
    }

    #[test]
    fn table_json_and_summary() {
        let now = 1_000_000_000;
        let mut big = letter("big", None);
        big.images_omitted = true;
        let mut unplannable = letter("v", None);
        unplannable.shard = "shardId-2".into();
        unplannable.error = "rep_version is \"x\", not a non-negative integer".into();
        unplannable.code = None;
        unplannable.request_id = None;
        let mut out = Vec::new();
        write_table(&[big.clone(), unplannable.clone()], now, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "ID",
                "KEY",
                "KIND",
                "PARKED",
                "WORKER",
                "REQUEST_ID",
                "ERROR"
            ]
        );
        assert!(
            lines[1]
                .starts_with("shardId-1#100000000000000000123  \"id\"=S\"big\"  MODIFY  2m ago"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                "w1      REQ1        ValidationException: Item size has exceeded the maximum allowed size \
                 (images omitted: too large)"
            ),
            "{text}"
        );
        assert!(lines[2].contains("  -           rep_version is"), "{text}");
        assert_eq!(lines[0].find("ERROR"), lines[1].find("Validation"));
        assert_eq!(
            summary(&[big.clone(), unplannable.clone()]),
            "2 dead letters on 2 shards; 1 with images omitted (too large to keep); `replicator dlq \
             replay` applies them, `replicator dlq purge` deletes them."
        );

        let mut out = Vec::new();
        write_json(&[big, unplannable], now, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed[0]["id"], "shardId-1#100000000000000000123");
        assert_eq!(parsed[0]["keys"]["id"]["S"], "big");
        assert_eq!(parsed[0]["images_omitted"], true);
        assert_eq!(parsed[0]["parked"], "2m ago");
        assert_eq!(parsed[0]["request_id"], "REQ1");
        assert_eq!(parsed[1]["code"], serde_json::Value::Null);
        assert_eq!(text.lines().count(), 4, "one object per line: {text}");
        let mut empty = Vec::new();
        write_json(&[], now, &mut empty).expect("write");
        assert_eq!(empty, b"[]\n");
    }

    #[test]
    fn error_text_adds_a_missing_code() {
        let mut l = letter("k", None);
        l.error = "Item too big".into();
        assert_eq!(error_text(&l), "ValidationException: Item too big");
        l.error = "ValidationException: line\nbreak".into();
        assert_eq!(error_text(&l), "ValidationException: line break");
    }

    #[test]
    fn one_way_copy_steps() {
        let attributes = VersionAttributes::default();
        let keys: Item = [("id".to_owned(), s("k"))].into();
        let source: Item = [("id".to_owned(), s("k")), ("text".to_owned(), s("new"))].into();
        let mut mirrored = source.clone();
        mirrored.insert(FENCE_ATTRIBUTE.to_owned(), n(7));
        let mut older = mirrored.clone();
        older.insert("text".to_owned(), s("old"));
        let mut tombstone = keys.clone();
        tombstone.insert("rep_deleted".to_owned(), AttributeValue::Bool(true));
        tombstone.insert(FENCE_ATTRIBUTE.to_owned(), n(7));

        // The target already mirrors the source (its token aside): nothing to write.
        assert_eq!(
            copy_step(&keys, Some(&mirrored), Some(&source), &attributes),
            CopyStep::Nothing
        );
        // An older copy: the source's item, without a token, if the target's token is still 7.
        assert_eq!(
            copy_step(&keys, Some(&older), Some(&source), &attributes),
            CopyStep::Put {
                item: source.clone(),
                seen_fence: Some(n(7))
            }
        );
        let mut source_with_token = source.clone();
        source_with_token.insert(FENCE_ATTRIBUTE.to_owned(), n(3));
        assert_eq!(
            copy_step(&keys, None, Some(&source_with_token), &attributes),
            CopyStep::Put {
                item: source.clone(),
                seen_fence: None
            }
        );
        assert_eq!(
            copy_step(&keys, Some(&tombstone), Some(&source), &attributes),
            CopyStep::Put {
                item: source.clone(),
                seen_fence: Some(n(7))
            }
        );
        // Gone from the source: delete a live target item, keep a tombstone.
        assert_eq!(
            copy_step(&keys, Some(&older), None, &attributes),
            CopyStep::Delete {
                key: keys.clone(),
                seen_fence: Some(n(7))
            }
        );
        assert_eq!(
            copy_step(&keys, Some(&tombstone), None, &attributes),
            CopyStep::Nothing
        );
        assert_eq!(copy_step(&keys, None, None, &attributes), CopyStep::Nothing);

        let c = unchanged_since(None);
        assert_eq!(c.text, "attribute_not_exists(#f)");
        assert_eq!(c.values, None);
        let c = unchanged_since(Some(&n(7)));
        assert_eq!(c.text, "#f = :seen");
        assert_eq!(c.names["#f"], FENCE_ATTRIBUTE);
        assert_eq!(c.values.expect("a value")[":seen"], n(7));
    }

    #[tokio::test]
    async fn lww_replays_apply_lose_to_newer_writes_or_stay() {
        let attributes = VersionAttributes::default();
        let plan = PlanContext::new(Mode::Lww, "us-east-1", "us-west-2", attributes.clone());
        let target = MemoryTarget::new(&["id"], attributes.clone());
        let image = |id: &str, version: u64| -> Item {
            [
                ("id".to_owned(), s(id)),
                ("rep_version".to_owned(), n(version)),
                ("rep_origin".to_owned(), s("us-east-1")),
            ]
            .into()
        };

        let fresh = letter("a", Some(image("a", 5_000)));
        assert!(matches!(
            replay_lww(&fresh, &plan, &target).await,
            Ok(Replayed::Applied(_))
        ));
        assert_eq!(
            target.items()[&key_string(&fresh.change.keys)]["rep_version"],
            n(5_000)
        );
        // The same again, now older than what the target holds: superseded.
        let old = letter("a", Some(image("a", 4_000)));
        assert!(matches!(
            replay_lww(&old, &plan, &target).await,
            Ok(Replayed::Superseded(_))
        ));
        assert_eq!(
            target.items()[&key_string(&fresh.change.keys)]["rep_version"],
            n(5_000)
        );
        // Without its image it cannot be replayed in lww mode.
        let mut omitted = letter("b", None);
        omitted.images_omitted = true;
        let Ok(Replayed::Kept(why)) = replay_lww(&omitted, &plan, &target).await else {
            panic!("kept")
        };
        assert!(why.contains("fix the source item"), "{why}");
        // A version that is not a number is still refused by the plan.
        let mut bad = image("c", 1);
        bad.insert("rep_version".to_owned(), s("x"));
        let Ok(Replayed::Kept(why)) = replay_lww(&letter("c", Some(bad)), &plan, &target).await
        else {
            panic!("kept")
        };
        assert!(why.contains("not a number"), "{why}");
        // An echo of the target region needs no write.
        let mut echo = image("d", 1);
        echo.insert("rep_origin".to_owned(), s("us-west-2"));
        assert!(matches!(
            replay_lww(&letter("d", Some(echo)), &plan, &target).await,
            Ok(Replayed::Superseded(_))
        ));
        assert_eq!(target.items().len(), 1);
    }
}
