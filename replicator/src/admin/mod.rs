//! Operator commands: look at and change the lease table safely, so nobody edits lease rows by hand.
//!
//! - `leases`: `replicator leases list | release | reset-checkpoint`.
//! - `backfill`: `replicator backfill`: copy a live table into the other region beside `run`.
//! - `verify`: `replicator verify [--repair]`: compare both tables of a path, write the winners.
//!
//! Every command names its path with the same flags (and `REPLICATOR_*` variables) as
//! `replicator run`, and finds the path key exactly as `run` does: the source table's latest stream
//! ARN, `>`, the target's `region/table`. Every change is conditional on the lease counter the
//! command observed, so it never overwrites a change it did not see, and it bumps the counter, so the
//! current owner's next renewal fails and it stops the shard (the lease fencing).

pub mod backfill;
pub mod dlq;
pub mod leases;
pub mod verify;

use aws_sdk_dynamodb::Client;

use crate::error::AwsFailure;

pub use crate::config::{PathArgs, PathSpec};
pub(crate) use crate::config::{bad, table_name};

/// Why an operator command failed. Every message says what is wrong and how to go on.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The source table does not exist.
    #[error(
        "source table {table} does not exist in {region}; fix --source-table / --source-region (they must be \
         the ones `replicator run` uses)"
    )]
    NoSourceTable {
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// The source table has no stream, so no path (and no lease) can exist for it.
    #[error(
        "source table {table} in {region} has no stream, so it has no replication path and no leases; check \
         --source-table / --source-region, or enable the stream (aws dynamodb update-table --region {region} \
         --table-name {table} --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES)"
    )]
    NoStream {
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// The lease table does not exist.
    #[error(
        "lease table {table} does not exist in {region}; fix --lease-table / --lease-region (the lease table \
         lives in the target region unless `replicator run` was given --lease-region)"
    )]
    NoLeaseTable {
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// The path has no leases at all.
    #[error(
        "the lease table has no leases for path {path}; {}",
        no_leases_hint(.other_paths)
    )]
    NoLeases {
        /// The path key.
        path: String,
        /// Paths the lease table does hold leases for (at most a few).
        other_paths: Vec<String>,
    },
    /// The path has no lease for this shard.
    #[error(
        "there is no lease for shard {shard} on this path; the shards with leases are: {} \
         (`replicator leases list` shows them with their state)",
        shard_list(.known)
    )]
    UnknownShard {
        /// The shard asked for.
        shard: String,
        /// The shards that have leases.
        known: Vec<String>,
    },
    /// `--to` names a sequence number before the shard's first one: it belongs to another shard.
    #[error(
        "sequence number {seq} is before shard {shard}'s first sequence number {starting}, so it is not a \
         record of this shard; take the sequence number from this shard's checkpoint or from the gap error \
         that named it"
    )]
    NotInShard {
        /// The shard.
        shard: String,
        /// The sequence number given.
        seq: String,
        /// The shard's first sequence number.
        starting: String,
    },
    /// A change that needs `--yes` was asked for without it; nothing was changed.
    #[error("nothing was changed; add --yes to {action}")]
    NotConfirmed {
        /// What `--yes` would do, e.g. "release the lease on shard X".
        action: String,
    },
    /// The lease changed between reading it and writing it; nothing was changed.
    #[error(
        "the lease on shard {shard} changed while this command ran (counter {observed}, now {now}); nothing \
         was changed; look at it again with `replicator leases list` and repeat the command if it still \
         applies"
    )]
    Moved {
        /// The shard.
        shard: String,
        /// The counter this command observed.
        observed: u64,
        /// What the lease looks like now, readable.
        now: String,
    },
    /// A DynamoDB call failed.
    #[error("{what}: {source}")]
    Aws {
        /// What was being done.
        what: String,
        /// The failure.
        source: AwsFailure,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The shard IDs, at most 20 of them (a path can have hundreds).
fn shard_list(known: &[String]) -> String {
    const MAX: usize = 20;
    if known.len() <= MAX {
        known.join(", ")
    } else {
        format!("{} and {} more", known[..MAX].join(", "), known.len() - MAX)
    }
}

fn no_leases_hint(other_paths: &[String]) -> String {
    let check = "check that the flags are the ones `replicator run` uses (re-enabling a table's stream gives it \
                 a new stream ARN, and so a new path)";
    if other_paths.is_empty() {
        format!("{check}; the lease table holds no leases at all")
    } else {
        format!(
            "{check}; the lease table holds leases for: {}",
            other_paths.join(", ")
        )
    }
}

impl AdminError {
    /// Short, low-cardinality name (for metrics and tests).
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::NoSourceTable { .. } => "no_source_table",
            AdminError::NoStream { .. } => "no_stream",
            AdminError::NoLeaseTable { .. } => "no_lease_table",
            AdminError::NoLeases { .. } => "no_leases",
            AdminError::UnknownShard { .. } => "unknown_shard",
            AdminError::NotInShard { .. } => "not_in_shard",
            AdminError::NotConfirmed { .. } => "not_confirmed",
            AdminError::Moved { .. } => "moved",
            AdminError::Aws { source, .. } => source.kind,
            AdminError::Output(_) => "output",
        }
    }
}

/// The path key of `spec`, found as `replicator run` finds it: the source table's latest stream ARN,
/// `>`, the target's `region/table`. A stream that was disabled still names the path its leases
/// belong to.
pub async fn path_key(source: &Client, spec: &PathSpec) -> Result<String, AdminError> {
    let described = source
        .describe_table()
        .table_name(&spec.source.table)
        .send()
        .await;
    let table = match described {
        Ok(out) => out.table,
        Err(error) => {
            let failure = AwsFailure::from_sdk(&error);
            if failure.kind == "not_found" {
                None
            } else {
                return Err(AdminError::Aws {
                    what: format!("describing source table {}", spec.source),
                    source: failure,
                });
            }
        }
    };
    let Some(table) = table else {
        return Err(AdminError::NoSourceTable {
            table: spec.source.table.clone(),
            region: spec.source.region.clone(),
        });
    };
    match table.latest_stream_arn() {
        Some(arn) if !arn.is_empty() => Ok(format!("{arn}>{}", spec.target)),
        _ => Err(AdminError::NoStream {
            table: spec.source.table.clone(),
            region: spec.source.region.clone(),
        }),
    }
}

/// A header row and rows as columns as wide as their widest cell, two spaces apart; the last column is
/// not padded.
pub fn write_columns<const N: usize>(
    header: &[&str; N],
    rows: &[[String; N]],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{text}")
    };
    line(*header)?;
    for row in rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        path: PathArgs,
    }

    /// The flags of a valid path, with `changes` (flag, value) replacing or adding some.
    fn parse(changes: &[(&str, &str)]) -> Result<PathSpec, ConfigError> {
        let mut flags = vec![
            ("--source-region", "us-east-1"),
            ("--source-table", "todos"),
            ("--target-region", "us-west-2"),
            ("--target-table", "todos"),
        ];
        for (flag, value) in changes {
            flags.retain(|(f, _)| f != flag);
            flags.push((flag, value));
        }
        let argv = std::iter::once("replicator").chain(flags.iter().flat_map(|(f, v)| [*f, *v]));
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .path
            .validate()
    }

    #[test]
    fn defaults_match_run() {
        let spec = parse(&[]).expect("valid");
        assert_eq!(spec.lease.region, "us-west-2");
        assert_eq!(spec.lease.table, "tworegion-replicator-leases");
        assert_eq!(spec.target.to_string(), "us-west-2/todos");
        let spec = parse(&[("--lease-region", "eu-west-1")]).expect("valid");
        assert_eq!(spec.lease.region, "eu-west-1");
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&str, &str, &str)] = &[
            ("--lease-region", "mars", "lease-region"),
            ("--lease-table", "x", "lease-table"),
            ("--source-region", "east", "source-region"),
            ("--target-table", "a b", "target-table"),
            ("--target-region", "us-east-1", "target-table"),
        ];
        for (flag, value, named) in cases {
            let err = parse(&[(flag, value)]).expect_err("invalid");
            assert_eq!(err.flag, *named, "{flag} {value}: {err}");
            assert!(err.to_string().starts_with(&format!("--{named}: ")));
        }
    }

    #[test]
    fn unknown_shard_lists_at_most_twenty() {
        let known: Vec<String> = (0..25).map(|i| format!("s{i}")).collect();
        let text = AdminError::UnknownShard {
            shard: "x".into(),
            known,
        }
        .to_string();
        assert!(text.contains("are: s0, s1, "), "{text}");
        assert!(text.contains(", s19 and 5 more ("), "{text}");
        assert!(!text.contains("s20"), "{text}");
    }

    #[test]
    fn no_leases_names_other_paths() {
        let err = AdminError::NoLeases {
            path: "arn:a>us-west-2/t".into(),
            other_paths: vec!["arn:b>us-west-2/t".into()],
        };
        let text = err.to_string();
        assert!(text.contains("arn:a>us-west-2/t"), "{text}");
        assert!(
            text.contains("holds leases for: arn:b>us-west-2/t"),
            "{text}"
        );
    }
}
