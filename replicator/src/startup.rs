//! Start-up checks: refuse to run, with a message that says what to fix, rather than fail later.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{KeyType, StreamViewType, TableDescription};

use crate::config::{Config, Mode};
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
    Ok(Checked {
        stream_arn: arn,
        key_names: source_keys.into_iter().map(|k| k.0).collect(),
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
}
