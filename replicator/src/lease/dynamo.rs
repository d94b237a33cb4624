//! The lease table on DynamoDB: partition key `path` (the source stream ARN and the target table),
//! sort key `shard`.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};

use super::{Lease, LeaseError, LeaseStore};
use crate::error::{AwsFailure, ErrorClass};
use crate::stream::SeqNo;

/// The lease table's partition key: the path (source stream ARN + `>` + target region/table).
pub const PATH: &str = "path";
/// The lease table's sort key: the shard ID.
pub const SHARD: &str = "shard";

/// The lease table of one path, on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoLeases {
    client: Client,
    table: String,
    path: String,
}

impl DynamoLeases {
    /// Leases of `path` in `table`.
    pub fn new(client: Client, table: String, path: String) -> DynamoLeases {
        DynamoLeases {
            client,
            table,
            path,
        }
    }
}

/// A problem with the lease table (or the dead-letter table) found when making sure it exists.
#[derive(Debug, thiserror::Error)]
pub enum LeaseTableError {
    /// The table exists with another key schema.
    #[error(
        "table {table} exists but its key schema is not (path: S HASH, {range}: S RANGE); name another table"
    )]
    WrongSchema {
        /// The table.
        table: String,
        /// The sort key it should have.
        range: String,
    },
    /// Creating or describing failed.
    #[error("lease table {table}: {source}")]
    Aws {
        /// The table.
        table: String,
        /// What failed.
        source: AwsFailure,
    },
    /// The table did not become active in time.
    #[error("lease table {table} did not become ACTIVE within 60 s")]
    NotActive {
        /// The table.
        table: String,
    },
}

/// Makes sure the lease table exists with the right key schema, creating it (on-demand) if missing.
pub async fn ensure_table(client: &Client, table: &str) -> Result<(), LeaseTableError> {
    ensure_keyed_table(client, table, SHARD).await
}

/// Makes sure `table` exists with the key schema (`path`: S HASH, `range`: S RANGE), creating it
/// (on-demand billing) if missing.
pub async fn ensure_keyed_table(
    client: &Client,
    table: &str,
    range: &str,
) -> Result<(), LeaseTableError> {
    let aws = |source: AwsFailure| LeaseTableError::Aws {
        table: table.to_owned(),
        source,
    };
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let schema: Vec<(String, KeyType)> = out
                .table()
                .map(|t| t.key_schema())
                .unwrap_or_default()
                .iter()
                .map(|k| (k.attribute_name().to_owned(), k.key_type().clone()))
                .collect();
            let expected = vec![
                (PATH.to_owned(), KeyType::Hash),
                (range.to_owned(), KeyType::Range),
            ];
            if schema != expected {
                return Err(LeaseTableError::WrongSchema {
                    table: table.to_owned(),
                    range: range.to_owned(),
                });
            }
        }
        Err(error) => {
            let failure = AwsFailure::from_sdk(&error);
            if failure.kind != "not_found" {
                return Err(aws(failure));
            }
            tracing::info!(table, "Creating the table (on-demand billing).");
            let attr = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
            };
            let key = |name: &str, kind| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
            };
            let built = (|| {
                Ok::<_, aws_sdk_dynamodb::error::BuildError>((
                    vec![attr(PATH)?, attr(range)?],
                    vec![key(PATH, KeyType::Hash)?, key(range, KeyType::Range)?],
                ))
            })()
            .map_err(|e| {
                aws(AwsFailure::synthetic(
                    ErrorClass::Fatal,
                    "construction",
                    e.to_string(),
                ))
            })?;
            let created = client
                .create_table()
                .table_name(table)
                .set_attribute_definitions(Some(built.0))
                .set_key_schema(Some(built.1))
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            if let Err(error) = created {
                let failure = AwsFailure::from_sdk(&error);
                // Another worker created it at the same moment: fine.
                if failure.code.as_deref() != Some("ResourceInUseException") {
                    return Err(aws(failure));
                }
            }
        }
    }
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| aws(AwsFailure::from_sdk(&e)))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(LeaseTableError::NotActive {
        table: table.to_owned(),
    })
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Every row of `path` in `table` (the lease table or the dead-letter table), with a consistent read,
/// all pages.
pub async fn query_path(
    client: &Client,
    table: &str,
    path: &str,
) -> Result<Vec<HashMap<String, AttributeValue>>, AwsFailure> {
    let mut rows = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", PATH)
            .expression_attribute_values(":p", s(path))
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| AwsFailure::from_sdk(&e))?;
        rows.extend(out.items().iter().cloned());
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(rows),
        }
    }
}

/// The sort key of the path's fencing-token row (not a shard: shard IDs never start with `#`).
pub const FENCE_ROW: &str = "#fence";

/// A lease row as stored (`None` when it is not a lease row, like the fencing-token row).
pub fn decode(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    if matches!(item.get(SHARD), Some(AttributeValue::S(shard)) if shard.starts_with('#')) {
        return None;
    }
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
        _ => None,
    };
    Some(Lease {
        shard: text(SHARD)?,
        owner: text("owner"),
        counter: number("counter").unwrap_or(0),
        checkpoint: text("checkpoint").and_then(|c| SeqNo::parse(&c)),
        parents: match item.get("parents") {
            Some(AttributeValue::L(list)) => list
                .iter()
                .filter_map(|v| match v {
                    AttributeValue::S(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        finished: matches!(item.get("finished"), Some(AttributeValue::Bool(true))),
        starting: text("starting").and_then(|c| SeqNo::parse(&c)),
        started: matches!(item.get("started"), Some(AttributeValue::Bool(true))),
        handoff_to: text("handoff_to"),
        expires_ms: number("expires").unwrap_or(0),
    })
}

impl DynamoLeases {
    fn key(&self, shard: &str) -> HashMap<String, AttributeValue> {
        [
            (PATH.to_owned(), s(&self.path)),
            (SHARD.to_owned(), s(shard)),
        ]
        .into()
    }

    /// One conditional UpdateItem; a failed condition is `Lost`.
    async fn update(
        &self,
        lease: &Lease,
        update: &str,
        condition: &str,
        mut values: HashMap<String, AttributeValue>,
    ) -> Result<Lease, LeaseError> {
        values.insert(":one".to_owned(), n(1));
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&lease.shard)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_used(&[update, condition])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(out) => out.attributes().and_then(decode).ok_or_else(|| {
                LeaseError::Aws(AwsFailure::synthetic(
                    ErrorClass::Fatal,
                    "lease_row",
                    format!("lease row for shard {} is malformed", lease.shard),
                ))
            }),
            Err(error) => Err(lost_or_failed(&error, lease)),
        }
    }

    fn held_values(held: &Lease) -> HashMap<String, AttributeValue> {
        [
            (
                ":me".to_owned(),
                s(held.owner.as_deref().unwrap_or_default()),
            ),
            (":c".to_owned(), n(held.counter)),
        ]
        .into()
    }
}

/// A failed lease write: a failed condition means someone else changed the lease (`Lost`).
fn lost_or_failed<E>(
    error: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    lease: &Lease,
) -> LeaseError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = AwsFailure::from_sdk(error);
    if failure.class == ErrorClass::Conflict {
        LeaseError::Lost {
            shard: lease.shard.clone(),
            counter: lease.counter,
        }
    } else {
        LeaseError::Aws(failure)
    }
}

/// Placeholders for the lease attributes (several are DynamoDB reserved words); only those an expression
/// uses may be sent.
pub fn names_used(expressions: &[&str]) -> HashMap<String, String> {
    const NAMES: &[(&str, &str)] = &[
        ("#c", "counter"),
        ("#o", "owner"),
        ("#e", "expires"),
        ("#k", "checkpoint"),
        ("#f", "finished"),
        ("#h", "handoff_to"),
        ("#st", "started"),
        ("#sg", "starting"),
    ];
    NAMES
        .iter()
        .filter(|(placeholder, _)| expressions.iter().any(|e| e.contains(placeholder)))
        .map(|(p, name)| ((*p).to_owned(), (*name).to_owned()))
        .collect()
}

const HELD: &str = "#o = :me AND #c = :c";

impl LeaseStore for DynamoLeases {
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let rows = query_path(&self.client, &self.table, &self.path).await?;
        Ok(rows.iter().filter_map(decode).collect())
    }

    async fn create(
        &self,
        shard: &str,
        parents: &[String],
        starting: Option<&SeqNo>,
        finished: bool,
    ) -> Result<bool, LeaseError> {
        let mut item = self.key(shard);
        if let Some(seq) = starting {
            item.insert("starting".to_owned(), s(seq.as_str()));
        }
        item.insert("counter".to_owned(), n(0));
        item.insert("finished".to_owned(), AttributeValue::Bool(finished));
        item.insert(
            "parents".to_owned(),
            AttributeValue::L(parents.iter().map(|p| s(p)).collect()),
        );
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#s)")
            .expression_attribute_names("#s", SHARD)
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(error) => {
                let failure = AwsFailure::from_sdk(&error);
                if failure.class == ErrorClass::Conflict {
                    Ok(false)
                } else {
                    Err(LeaseError::Aws(failure))
                }
            }
        }
    }

    async fn take(
        &self,
        observed: &Lease,
        worker: &str,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        let values = [
            (":w".to_owned(), s(worker)),
            (":c".to_owned(), n(observed.counter)),
            (":e".to_owned(), n(expires_ms)),
        ]
        .into();
        self.update(
            observed,
            "SET #o = :w, #e = :e, #c = #c + :one REMOVE #h",
            "#c = :c",
            values,
        )
        .await
    }

    async fn renew(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        let mut values = Self::held_values(held);
        values.insert(":e".to_owned(), n(expires_ms));
        self.update(held, "SET #e = :e, #c = #c + :one", HELD, values)
            .await
    }

    async fn checkpoint(
        &self,
        held: &Lease,
        seq: Option<&SeqNo>,
        finished: bool,
        expires_ms: u64,
    ) -> Result<Lease, LeaseError> {
        let mut values = Self::held_values(held);
        values.insert(":e".to_owned(), n(expires_ms));
        values.insert(":f".to_owned(), AttributeValue::Bool(finished));
        values.insert(":t".to_owned(), AttributeValue::Bool(true));
        let update = match seq {
            Some(seq) => {
                values.insert(":s".to_owned(), s(seq.as_str()));
                "SET #k = :s, #f = :f, #st = :t, #e = :e, #c = #c + :one"
            }
            None => "SET #f = :f, #st = :t, #e = :e, #c = #c + :one",
        };
        self.update(held, update, HELD, values).await
    }

    async fn release(&self, held: &Lease) -> Result<(), LeaseError> {
        self.update(
            held,
            "SET #c = #c + :one REMOVE #o",
            HELD,
            Self::held_values(held),
        )
        .await
        .map(drop)
    }

    async fn decline_handoff(&self, held: &Lease, expires_ms: u64) -> Result<Lease, LeaseError> {
        let mut values = Self::held_values(held);
        values.insert(":e".to_owned(), n(expires_ms));
        self.update(held, "SET #e = :e, #c = #c + :one REMOVE #h", HELD, values)
            .await
    }

    async fn delete_finished(&self, observed: &Lease) -> Result<(), LeaseError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&observed.shard)))
            .condition_expression("#f = :t AND attribute_not_exists(#o)")
            .set_expression_attribute_names(Some(names_used(&["#f", "#o"])))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(error) => Err(lost_or_failed(&error, observed)),
        }
    }

    async fn next_fence(&self) -> Result<u64, LeaseError> {
        // The counter starts from the wall clock in milliseconds, not from 1: the path (and so this
        // row) is new whenever the stream is re-enabled or the lease table changes, while the target
        // still holds tokens of the old counter. Takes are far rarer than one a millisecond, so the
        // old counter never ran ahead of the clock. Not conditional: a retried call whose first
        // attempt was applied only skips a number.
        let start = crate::worker::now_millis();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(FENCE_ROW)))
            .update_expression("SET #n = if_not_exists(#n, :start) + :one")
            .expression_attribute_names("#n", "fence")
            .expression_attribute_values(":start", n(start))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| LeaseError::Aws(AwsFailure::from_sdk(&e)))?;
        match out.attributes().and_then(|a| a.get("fence")) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
                LeaseError::Aws(AwsFailure::synthetic(
                    ErrorClass::Fatal,
                    "lease_row",
                    format!("the fencing-token row holds {v:?}, not a number"),
                ))
            }),
            _ => Err(LeaseError::Aws(AwsFailure::synthetic(
                ErrorClass::Fatal,
                "lease_row",
                "the fencing-token update returned no number",
            ))),
        }
    }

    async fn request_handoff(&self, observed: &Lease, worker: &str) -> Result<(), LeaseError> {
        let values = [
            (
                ":me".to_owned(),
                s(observed.owner.as_deref().unwrap_or_default()),
            ),
            (":w".to_owned(), s(worker)),
        ]
        .into();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&observed.shard)))
            .update_expression("SET #h = :w")
            .condition_expression("#o = :me")
            .set_expression_attribute_names(Some(names_used(&["SET #h = :w", "#o = :me"])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(error) => Err(lost_or_failed(&error, observed)),
        }
    }
}
