//! The dead-letter table on DynamoDB: partition key `path` (as in the lease table: source stream ARN +
//! `>` + target region/table), sort key `id` (`<shard>#<sequence number>`). Created (on-demand billing)
//! the first time a record is parked. A row holds the record (kind, keys, images, creation time, TTL
//! flag), the error (code, message, request ID), the worker and the time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{DeadLetter, DeadLetterSink};
use crate::error::{AwsFailure, ErrorClass};
use crate::lease::dynamo::{LeaseTableError, PATH, ensure_keyed_table, query_path};
use crate::stream::{Change, EventKind, SeqNo};

/// The dead-letter table's sort key.
pub const ID: &str = "id";

/// The dead letters of one path.
#[derive(Debug)]
pub struct DynamoDeadLetters {
    client: Client,
    table: String,
    path: String,
    ensured: AtomicBool,
}

impl DynamoDeadLetters {
    /// Dead letters of `path` in `table` (created when the first record is parked).
    pub fn new(client: Client, table: String, path: String) -> DynamoDeadLetters {
        DynamoDeadLetters {
            client,
            table,
            path,
            ensured: AtomicBool::new(false),
        }
    }

    async fn ensure(&self) -> Result<(), AwsFailure> {
        if self.ensured.load(Ordering::SeqCst) {
            return Ok(());
        }
        ensure_keyed_table(&self.client, &self.table, ID)
            .await
            .map_err(|e| {
                // A table with another key schema, or a refusal (access denied), stops the shard; a
                // table still being created, throttling or a timeout is retried.
                let class = match &e {
                    LeaseTableError::WrongSchema { .. } => ErrorClass::Fatal,
                    LeaseTableError::Aws { source, .. } => source.class,
                    LeaseTableError::NotActive { .. } => ErrorClass::Retryable,
                };
                AwsFailure::synthetic(class, "dead_letter_table", e.to_string())
            })?;
        self.ensured.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn put(&self, row: HashMap<String, AttributeValue>) -> Result<(), AwsFailure> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(row))
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsFailure::from_sdk(&e))
    }

    /// Every dead letter of the path, oldest position first within a shard.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, AwsFailure> {
        let rows = query_path(&self.client, &self.table, &self.path).await?;
        let mut letters: Vec<DeadLetter> = rows.iter().filter_map(decode).collect();
        letters.sort_by(|a, b| (&a.shard, &a.change.seq).cmp(&(&b.shard, &b.change.seq)));
        Ok(letters)
    }

    /// The dead letter with sort key `id` (`<shard>#<sequence number>`), if the path has it
    /// (consistent read).
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, AwsFailure> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PATH, AttributeValue::S(self.path.clone()))
            .key(ID, AttributeValue::S(id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsFailure::from_sdk(&e))?;
        Ok(out.item().and_then(decode))
    }

    /// The IDs of every dead letter of the path, sorted (keys only: cheap even when rows hold
    /// images).
    pub async fn ids(&self) -> Result<Vec<String>, AwsFailure> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#p = :p")
                .projection_expression("#i")
                .expression_attribute_names("#p", PATH)
                .expression_attribute_names("#i", ID)
                .expression_attribute_values(":p", AttributeValue::S(self.path.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AwsFailure::from_sdk(&e))?;
            ids.extend(out.items().iter().filter_map(|row| match row.get(ID) {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            }));
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Deletes one dead letter.
    pub async fn delete(&self, letter: &DeadLetter) -> Result<(), AwsFailure> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PATH, AttributeValue::S(self.path.clone()))
            .key(ID, AttributeValue::S(letter.id()))
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsFailure::from_sdk(&e))
    }
}

impl DeadLetterSink for DynamoDeadLetters {
    fn park<'a>(
        &'a self,
        letter: &'a DeadLetter,
    ) -> Pin<Box<dyn Future<Output = Result<(), AwsFailure>> + Send + 'a>> {
        Box::pin(async move {
            self.ensure().await?;
            match self.put(encode(&self.path, letter, true)).await {
                // The row has the 400 KB limit of every item: a record refused for its size does not
                // fit beside its error either. Keep its key and position.
                Err(failure) if failure.kind == "validation" => {
                    self.put(encode(&self.path, letter, false)).await
                }
                other => other,
            }
        })
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Insert => "INSERT",
        EventKind::Modify => "MODIFY",
        EventKind::Remove => "REMOVE",
    }
}

/// The row of `letter`; without its images unless `images`.
pub fn encode(path: &str, letter: &DeadLetter, images: bool) -> HashMap<String, AttributeValue> {
    let change = &letter.change;
    let mut row: HashMap<String, AttributeValue> = [
        (PATH.to_owned(), s(path)),
        (ID.to_owned(), s(letter.id())),
        ("shard".to_owned(), s(&letter.shard)),
        ("seq".to_owned(), s(change.seq.as_str())),
        ("kind".to_owned(), s(kind_name(change.kind))),
        ("keys".to_owned(), AttributeValue::M(change.keys.clone())),
        ("by_ttl".to_owned(), AttributeValue::Bool(change.by_ttl)),
        ("error".to_owned(), s(&letter.error)),
        ("worker".to_owned(), s(&letter.worker)),
        ("at".to_owned(), AttributeValue::N(letter.at_ms.to_string())),
        (
            "images_omitted".to_owned(),
            AttributeValue::Bool(letter.images_omitted || !images),
        ),
    ]
    .into();
    if let Some(created) = change.created_at {
        row.insert(
            "created_at".to_owned(),
            AttributeValue::N(created.to_string()),
        );
    }
    if let Some(code) = &letter.code {
        row.insert("code".to_owned(), s(code));
    }
    if let Some(id) = &letter.request_id {
        row.insert("request_id".to_owned(), s(id));
    }
    if images && !letter.images_omitted {
        if let Some(image) = &change.new_image {
            row.insert("new_image".to_owned(), AttributeValue::M(image.clone()));
        }
        if let Some(image) = &change.old_image {
            row.insert("old_image".to_owned(), AttributeValue::M(image.clone()));
        }
    }
    row
}

/// A dead letter from its row (`None` when the row is not one).
pub fn decode(row: &HashMap<String, AttributeValue>) -> Option<DeadLetter> {
    let text = |name: &str| match row.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let map = |name: &str| match row.get(name) {
        Some(AttributeValue::M(m)) => Some(m.clone()),
        _ => None,
    };
    let kind = match text("kind")?.as_str() {
        "INSERT" => EventKind::Insert,
        "MODIFY" => EventKind::Modify,
        "REMOVE" => EventKind::Remove,
        _ => return None,
    };
    Some(DeadLetter {
        shard: text("shard")?,
        change: Change {
            seq: SeqNo::parse(&text("seq")?)?,
            kind,
            keys: map("keys")?,
            new_image: map("new_image"),
            old_image: map("old_image"),
            created_at: match row.get("created_at") {
                Some(AttributeValue::N(v)) => v.parse().ok(),
                _ => None,
            },
            by_ttl: matches!(row.get("by_ttl"), Some(AttributeValue::Bool(true))),
        },
        error: text("error").unwrap_or_default(),
        code: text("code"),
        request_id: text("request_id"),
        worker: text("worker").unwrap_or_default(),
        at_ms: match row.get("at") {
            Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
            _ => 0,
        },
        images_omitted: matches!(row.get("images_omitted"), Some(AttributeValue::Bool(true))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_and_without_images() {
        let image: crate::item::Item =
            [("id".to_owned(), s("k")), ("text".to_owned(), s("big"))].into();
        let letter = DeadLetter {
            shard: "shardId-1".into(),
            change: Change {
                seq: SeqNo::from_u128(100_000_000_000_000_000_123),
                kind: EventKind::Modify,
                keys: [("id".to_owned(), s("k"))].into(),
                new_image: Some(image.clone()),
                old_image: Some(image),
                created_at: Some(1_700_000_000.0),
                by_ttl: false,
            },
            error: "ValidationException: Item size has exceeded the maximum allowed size".into(),
            code: Some("ValidationException".into()),
            request_id: Some("REQ1".into()),
            worker: "w1".into(),
            at_ms: 1_700_000_000_123,
            images_omitted: false,
        };
        assert_eq!(decode(&encode("p", &letter, true)), Some(letter.clone()));
        let small = decode(&encode("p", &letter, false)).expect("decodes");
        assert!(small.images_omitted && small.change.new_image.is_none());
        assert_eq!(small.id(), "shardId-1#100000000000000000123");
    }
}
