//! Start-up checks: refuse to run, with a message that says what to fix, rather than fail later.
//!
//! Some findings do not stop the replicator because correctness does not depend on them (the target's
//! Time to Live, a short `--tombstone-ttl`): they are logged as warnings and returned in [`Checked`].

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{KeyType, StreamViewType, TableDescription, TimeToLiveStatus};

use crate::config::{Config, Mode, Tuning};
use crate::error::AwsFailure;

/// What start-up found wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A table does not exist.
    #[error(
        "{role} table {table} does not exist in {region}; create it or fix --{role}-table / --{role}-region"
    )]
    NoTable {
        /// `source` or `target`.
        role: &'static str,
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// The source has no enabled stream.
    #[error(
        "source table {table} in {region} has no enabled stream; enable one with NEW_AND_OLD_IMAGES, e.g. \
         aws dynamodb update-table --region {region} --table-name {table} \
         --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES"
    )]
    NoStream {
        /// The table.
        table: String,
        /// The region.
        region: String,
    },
    /// The stream's view type cannot carry what the mode needs.
    #[error("source table {table}'s stream is {view}: {why}")]
    WrongView {
        /// The table.
        table: String,
        /// The view type.
        view: String,
        /// Why it does not work and what to do.
        why: String,
    },
    /// The stream exists but is not enabled.
    #[error("the stream {arn} is {status}, not ENABLED; re-enable the table's stream")]
    StreamNotEnabled {
        /// The stream.
        arn: String,
        /// Its status.
        status: String,
    },
    /// Source and target keys differ.
    #[error(
        "key schemas differ: source {source_table} has {source_keys}, target {target_table} has {target_keys}; {difference}"
    )]
    KeyMismatch {
        /// Source table.
        source_table: String,
        /// Source key schema, readable.
        source_keys: String,
        /// Target table.
        target_table: String,
        /// Target key schema, readable.
        target_keys: String,
        /// The first difference.
        difference: String,
    },
    /// An AWS call failed.
    #[error("{what}: {source}")]
    Aws {
        /// What was being checked.
        what: String,
        /// The failure.
        source: AwsFailure,
    },
}

/// What the checks learned.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The source stream's ARN.
    pub stream_arn: String,
    /// The key attribute names.
    pub key_names: Vec<String>,
    /// The target table's Time to Live, which removes the tombstones the replicator writes or copies.
    pub target_ttl: TargetTtl,
    /// One-way mode: `--tombstone-ttl` is below [`tombstone_ttl_floor`], so a stale worker's replay
    /// could re-create an item whose tombstone has expired (logged as a warning).
    pub tombstone_ttl_too_short: bool,
}

/// What start-up found about the target table's Time to Live. Tombstones land in the target in both
/// modes (lww copies the application's, one-way turns every delete into one), and only TTL on the
/// `--expires-attribute` removes them. Anything but [`TargetTtl::Enabled`] is logged as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetTtl {
    /// TTL is enabled (or being enabled) on the expires attribute: tombstones are removed.
    Enabled,
    /// TTL is off (or being turned off): tombstones are never removed.
    Disabled {
        /// `DISABLED`, `DISABLING`, or empty when DynamoDB gave no status.
        status: String,
    },
    /// TTL is on another attribute: tombstones are never removed.
    OtherAttribute {
        /// The attribute the table's TTL uses.
        attribute: String,
    },
    /// Not checked: DescribeTimeToLive was denied.
    Unchecked,
}

impl TargetTtl {
    /// Whether tombstones may stay in the target forever (or nobody could tell).
    pub fn is_problem(&self) -> bool {
        !matches!(self, TargetTtl::Enabled)
    }

    /// Short, low-cardinality name for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetTtl::Enabled => "enabled",
            TargetTtl::Disabled { .. } => "disabled",
            TargetTtl::OtherAttribute { .. } => "other_attribute",
            TargetTtl::Unchecked => "unchecked",
        }
    }
}

/// How long DynamoDB Streams keeps records.
pub const STREAM_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The shortest `--tombstone-ttl` that outlives every replay: the stream's retention plus the time a
/// stalled worker may lag before its lease is taken over and its task is replaced (two lease durations
/// plus the stall timeout).
pub fn tombstone_ttl_floor(tuning: &Tuning) -> Duration {
    STREAM_RETENTION + tuning.lease_duration * 2 + tuning.stall_timeout
}

/// Reads a DescribeTimeToLive answer: `status` and `attribute` of its description, `expires` the
/// attribute tombstones carry their expiry in.
pub fn assess_ttl(
    status: Option<&TimeToLiveStatus>,
    attribute: Option<&str>,
    expires: &str,
) -> TargetTtl {
    match (status, attribute) {
        (Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling), Some(a)) if a == expires => {
            TargetTtl::Enabled
        }
        (Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling), Some(a)) => {
            TargetTtl::OtherAttribute {
                attribute: a.to_owned(),
            }
        }
        (status, _) => TargetTtl::Disabled {
            status: status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        },
    }
}

fn enable_command(config: &Config) -> String {
    format!(
        "aws dynamodb update-time-to-live --region {} --table-name {} \
         --time-to-live-specification Enabled=true,AttributeName={}",
        config.target.region, config.target.table, config.attributes.expires
    )
}

/// Logs what a finding means and how to fix it.
fn warn_ttl(config: &Config, finding: &TargetTtl) {
    let expires = &config.attributes.expires;
    match finding {
        TargetTtl::Enabled => {}
        TargetTtl::Disabled { status } => tracing::warn!(
            table = %config.target,
            ttl_status = %status,
            expires_attribute = %expires,
            fix = %format!(
                "{}; or, with the deployer, set the table's ttl_attribute to \"{expires}\"",
                enable_command(config)
            ),
            "The target table's Time to Live is not enabled, so the tombstones that deletes leave there \
             are never removed: they accumulate, cost storage, and every scan reads them. Replication \
             stays correct; enable TTL on the expires attribute."
        ),
        TargetTtl::OtherAttribute { attribute } => tracing::warn!(
            table = %config.target,
            ttl_attribute = %attribute,
            expires_attribute = %expires,
            fix = %format!(
                "a table has one TTL attribute: disable TTL on \"{attribute}\" (aws dynamodb \
                 update-time-to-live --region {region} --table-name {table} --time-to-live-specification \
                 Enabled=false,AttributeName={attribute}), then run {enable} (or, with the deployer, set \
                 the table's ttl_attribute to \"{expires}\"); or, if every writer's tombstones carry their \
                 expiry in \"{attribute}\", pass --expires-attribute {attribute}",
                region = config.target.region,
                table = config.target.table,
                enable = enable_command(config),
            ),
            "The target table's Time to Live is enabled on an attribute other than the expires attribute, \
             so the tombstones that deletes leave there are never removed: they accumulate, cost storage, \
             and every scan reads them. Replication stays correct; move TTL to the expires attribute."
        ),
        TargetTtl::Unchecked => {}
    }
}

/// Asks DynamoDB for the target's Time to Live and warns about what is wrong with it.
async fn check_target_ttl(
    config: &Config,
    target: &aws_sdk_dynamodb::Client,
) -> Result<TargetTtl, StartupError> {
    let answer = target
        .describe_time_to_live()
        .table_name(&config.target.table)
        .send()
        .await;
    let finding = match answer {
        Ok(out) => {
            let description = out.time_to_live_description();
            assess_ttl(
                description.and_then(|d| d.time_to_live_status()),
                description.and_then(|d| d.attribute_name()),
                &config.attributes.expires,
            )
        }
        Err(error) => ttl_failure(config, AwsFailure::from_sdk(&error))?,
    };
    warn_ttl(config, &finding);
    Ok(finding)
}

/// A failed DescribeTimeToLive: a missing permission skips the check (with a warning), anything else
/// fails start-up like the other checks.
fn ttl_failure(config: &Config, failure: AwsFailure) -> Result<TargetTtl, StartupError> {
    match (failure.code.as_deref(), failure.kind) {
        (Some("AccessDeniedException"), _) => {
            tracing::warn!(
                table = %config.target,
                permission = "dynamodb:DescribeTimeToLive",
                error = %failure,
                "Skipped the check of the target table's Time to Live: this role may not call \
                 dynamodb:DescribeTimeToLive on it. Grant that permission to have tombstone clean-up \
                 checked at start-up."
            );
            Ok(TargetTtl::Unchecked)
        }
        (_, "not_found") => Err(StartupError::NoTable {
            role: "target",
            table: config.target.table.clone(),
            region: config.target.region.clone(),
        }),
        _ => Err(StartupError::Aws {
            what: format!(
                "describing the Time to Live of target table {} in {}",
                config.target.table, config.target.region
            ),
            source: failure,
        }),
    }
}

/// One-way mode: warns when a delete's tombstone may expire before every replay of the delete's
/// predecessors is over. Returns whether it warned.
fn check_tombstone_ttl(config: &Config) -> bool {
    let floor = tombstone_ttl_floor(&config.tuning);
    let short = config.mode == Mode::OneWay && config.tuning.tombstone_ttl < floor;
    if short {
        tracing::warn!(
            tombstone_ttl = ?config.tuning.tombstone_ttl,
            minimum = ?floor,
            stream_retention = ?STREAM_RETENTION,
            lease_duration = ?config.tuning.lease_duration,
            stall_timeout = ?config.tuning.stall_timeout,
            fix = %format!("raise --tombstone-ttl to at least {}s (the default is 2d)", floor.as_secs()),
            "--tombstone-ttl is shorter than the stream's retention plus twice the lease duration plus \
             the stall timeout: a worker that resumes from an old checkpoint can replay a write whose \
             later delete's tombstone has already expired, and re-create the deleted item."
        );
    }
    short
}

/// `(name, HASH|RANGE, S|N|B)` for each key attribute, hash first.
pub fn key_schema(table: &TableDescription) -> Vec<(String, String, String)> {
    let types: HashMap<&str, &str> = table
        .attribute_definitions()
        .iter()
        .map(|a| (a.attribute_name(), a.attribute_type().as_str()))
        .collect();
    let mut keys: Vec<(String, String, String)> = table
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
                types
                    .get(k.attribute_name())
                    .copied()
                    .unwrap_or("?")
                    .to_owned(),
            )
        })
        .collect();
    keys.sort_by_key(|k| k.1 != KeyType::Hash.as_str());
    keys
}

fn readable(keys: &[(String, String, String)]) -> String {
    keys.iter()
        .map(|(n, k, t)| format!("{n} ({t}, {k})"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Compares key schemas; `Err` names the first difference.
pub fn compare_keys(
    source: &[(String, String, String)],
    target: &[(String, String, String)],
) -> Result<(), String> {
    for role in ["HASH", "RANGE"] {
        let s = source.iter().find(|k| k.1 == role);
        let t = target.iter().find(|k| k.1 == role);
        match (s, t) {
            (None, None) => {}
            (Some(s), None) => {
                return Err(format!(
                    "the target has no {role} key (the source's is {})",
                    s.0
                ));
            }
            (None, Some(t)) => {
                return Err(format!(
                    "the target has a {role} key {} that the source lacks",
                    t.0
                ));
            }
            (Some(s), Some(t)) if s.0 != t.0 => {
                return Err(format!(
                    "the {role} key is named {} in the source and {} in the target",
                    s.0, t.0
                ));
            }
            (Some(s), Some(t)) if s.2 != t.2 => {
                return Err(format!(
                    "the {role} key {} is of type {} in the source and {} in the target",
                    s.0, s.2, t.2
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn describe(
    client: &aws_sdk_dynamodb::Client,
    role: &'static str,
    region: &str,
    table: &str,
) -> Result<TableDescription, StartupError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => out.table.ok_or_else(|| StartupError::NoTable {
            role,
            table: table.to_owned(),
            region: region.to_owned(),
        }),
        Err(error) => {
            let failure = AwsFailure::from_sdk(&error);
            if failure.kind == "not_found" {
                Err(StartupError::NoTable {
                    role,
                    table: table.to_owned(),
                    region: region.to_owned(),
                })
            } else {
                Err(StartupError::Aws {
                    what: format!("describing {role} table {table} in {region}"),
                    source: failure,
                })
            }
        }
    }
}

/// Checks the source stream and the target table.
pub async fn check(
    config: &Config,
    source: &aws_sdk_dynamodb::Client,
    streams: &aws_sdk_dynamodbstreams::Client,
    target: &aws_sdk_dynamodb::Client,
) -> Result<Checked, StartupError> {
    let src = describe(
        source,
        "source",
        &config.source.region,
        &config.source.table,
    )
    .await?;
    let spec = src.stream_specification();
    let arn = match (spec.map(|s| s.stream_enabled()), src.latest_stream_arn()) {
        (Some(true), Some(arn)) => arn.to_owned(),
        _ => {
            return Err(StartupError::NoStream {
                table: config.source.table.clone(),
                region: config.source.region.clone(),
            });
        }
    };
    let view = spec.and_then(|s| s.stream_view_type()).cloned();
    let view_name = view
        .as_ref()
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let wrong = |why: &str| StartupError::WrongView {
        table: config.source.table.clone(),
        view: view_name.clone(),
        why: why.to_owned(),
    };
    match (view, config.mode) {
        (Some(StreamViewType::NewAndOldImages), _) => {}
        (Some(StreamViewType::NewImage), Mode::OneWay) => {}
        (Some(StreamViewType::KeysOnly), _) => {
            return Err(wrong(
                "KEYS_ONLY records carry no item contents, so there is nothing to copy; switch the stream \
                 to NEW_AND_OLD_IMAGES (disable it, then enable it with that view type)",
            ));
        }
        (Some(StreamViewType::NewImage), Mode::Lww) => {
            return Err(wrong(
                "lww mode needs old images to apply hard deletes by version; use NEW_AND_OLD_IMAGES",
            ));
        }
        _ => return Err(wrong("it lacks new images; use NEW_AND_OLD_IMAGES")),
    }
    let stream = streams
        .describe_stream()
        .stream_arn(&arn)
        .limit(1)
        .send()
        .await
        .map_err(|e| StartupError::Aws {
            what: format!("describing stream {arn}"),
            source: AwsFailure::from_sdk(&e),
        })?;
    let status = stream
        .stream_description()
        .and_then(|d| d.stream_status())
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    if status != "ENABLED" && status != "ENABLING" {
        return Err(StartupError::StreamNotEnabled { arn, status });
    }
    let tgt = describe(
        target,
        "target",
        &config.target.region,
        &config.target.table,
    )
    .await?;
    let (source_keys, target_keys) = (key_schema(&src), key_schema(&tgt));
    compare_keys(&source_keys, &target_keys).map_err(|difference| StartupError::KeyMismatch {
        source_table: config.source.to_string(),
        source_keys: readable(&source_keys),
        target_table: config.target.to_string(),
        target_keys: readable(&target_keys),
        difference,
    })?;
    let target_ttl = check_target_ttl(config, target).await?;
    Ok(Checked {
        stream_arn: arn,
        key_names: source_keys.into_iter().map(|k| k.0).collect(),
        target_ttl,
        tombstone_ttl_too_short: check_tombstone_ttl(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str, role: &str, t: &str) -> (String, String, String) {
        (n.into(), role.into(), t.into())
    }

    #[test]
    fn key_differences_are_named() {
        let src = vec![k("id", "HASH", "S")];
        assert!(compare_keys(&src, &[k("id", "HASH", "S")]).is_ok());
        assert_eq!(
            compare_keys(&src, &[k("id", "HASH", "N")]).unwrap_err(),
            "the HASH key id is of type S in the source and N in the target"
        );
        assert_eq!(
            compare_keys(&src, &[k("pk", "HASH", "S")]).unwrap_err(),
            "the HASH key is named id in the source and pk in the target"
        );
        assert_eq!(
            compare_keys(&src, &[k("id", "HASH", "S"), k("sk", "RANGE", "S")]).unwrap_err(),
            "the target has a RANGE key sk that the source lacks"
        );
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: crate::config::RunArgs,
    }

    fn config(extra: &[&str]) -> Config {
        let mut argv = vec!["replicator"];
        argv.extend_from_slice(&crate::config::TEST_PATH_FLAGS);
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("flags parse")
            .run
            .into_config("w1".into())
            .expect("valid flags")
    }

    #[test]
    fn ttl_is_fine_only_when_on_the_expires_attribute() {
        use TimeToLiveStatus::*;
        let assess = |status: Option<TimeToLiveStatus>, attribute: Option<&str>| {
            assess_ttl(status.as_ref(), attribute, "rep_expires")
        };
        assert_eq!(
            assess(Some(Enabled), Some("rep_expires")),
            TargetTtl::Enabled
        );
        assert_eq!(
            assess(Some(Enabling), Some("rep_expires")),
            TargetTtl::Enabled
        );
        assert_eq!(
            assess(Some(Enabled), Some("ttl")),
            TargetTtl::OtherAttribute {
                attribute: "ttl".into()
            }
        );
        assert_eq!(
            assess(Some(Disabling), Some("rep_expires")),
            TargetTtl::Disabled {
                status: "DISABLING".into()
            }
        );
        assert_eq!(
            assess(Some(Disabled), None),
            TargetTtl::Disabled {
                status: "DISABLED".into()
            }
        );
        assert_eq!(
            assess(None, None),
            TargetTtl::Disabled { status: "".into() }
        );
        assert_eq!(
            assess(Some(Enabled), None),
            TargetTtl::Disabled {
                status: "ENABLED".into()
            },
            "enabled on no attribute removes nothing"
        );
        assert!(!TargetTtl::Enabled.is_problem());
        assert!(TargetTtl::Unchecked.is_problem());
    }

    #[test]
    fn a_denied_ttl_check_is_skipped_and_other_failures_stop_start_up() {
        let c = config(&["--mode", "lww"]);
        let failure = |code: &str, class, kind| {
            let mut failure = AwsFailure::synthetic(class, kind, format!("{code}: nope"));
            failure.code = Some(code.to_owned());
            failure
        };
        use crate::error::ErrorClass::*;
        assert_eq!(
            ttl_failure(&c, failure("AccessDeniedException", Fatal, "access_denied")).unwrap(),
            TargetTtl::Unchecked
        );
        let err =
            ttl_failure(&c, failure("ThrottlingException", Retryable, "throttled")).unwrap_err();
        assert!(matches!(err, StartupError::Aws { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "describing the Time to Live of target table todos in us-west-2: ThrottlingException: nope"
        );
        let err =
            ttl_failure(&c, failure("ResourceNotFoundException", Fatal, "not_found")).unwrap_err();
        assert!(
            matches!(err, StartupError::NoTable { role: "target", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn tombstone_ttl_must_outlast_retention_and_a_stalled_worker() {
        let defaults = config(&["--mode", "one-way"]);
        assert_eq!(
            tombstone_ttl_floor(&defaults.tuning),
            Duration::from_secs(24 * 3600 + 2 * 10 + 180)
        );
        assert!(!check_tombstone_ttl(&defaults));
        let short = ["--tombstone-ttl", "25h", "--stall-timeout", "2h"];
        assert!(check_tombstone_ttl(&config(
            &[&["--mode", "one-way"], &short[..]].concat()
        )));
        let near = |stall: &'static str| {
            config(&[
                "--mode",
                "one-way",
                "--lease-duration",
                "600s",
                "--tombstone-ttl",
                "25h",
                "--stall-timeout",
                stall,
            ])
        };
        assert!(
            !check_tombstone_ttl(&near("39m")),
            "24 h + 2 x 10 m + 39 m < 25 h"
        );
        assert!(check_tombstone_ttl(&near("41m")));
        assert!(
            !check_tombstone_ttl(&config(&[&["--mode", "lww"], &short[..]].concat())),
            "lww tombstones are the application's; the flag does not set them"
        );
    }
}
