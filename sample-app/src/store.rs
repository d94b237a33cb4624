//! The table the app reads and writes: a narrow seam with the DynamoDB implementation and an in-memory
//! one for the router tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::version::{Version, VersionAttributes};

use crate::todo::{ID, Item};

/// What a conditional put expects of the stored item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No item with this id.
    Absent,
    /// The stored item has exactly this version.
    Version(Version),
}

/// A failed store call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The condition failed: someone else wrote the item in between.
    #[error("the item changed in between")]
    Conflict,
    /// The table could not be reached or answered an error.
    #[error("the table is unavailable: {0}")]
    Unavailable(String),
}

/// One page of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// Items, in table order.
    pub items: Vec<Item>,
    /// The id to continue after, if there is more.
    pub next: Option<String>,
}

/// The todo table. Items cross this seam with their key in the attribute [`ID`], whatever the table
/// calls it.
pub trait TodoStore: Send + Sync + 'static {
    /// The item with this id, consistent read.
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Item>, StoreError>> + Send;
    /// Writes `item` if the stored one matches `expect`.
    fn put(
        &self,
        item: Item,
        expect: Expect,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// At most `limit` items after the id `after`.
    fn scan(
        &self,
        limit: i32,
        after: Option<String>,
    ) -> impl Future<Output = Result<ScanPage, StoreError>> + Send;
    /// A cheap read that proves the table answers (health).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The table on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    key: String,
    attributes: VersionAttributes,
}

impl DynamoStore {
    /// The table `table` through `client`; its partition key (a String) is the attribute `key`
    /// (`--partition-key`, checked with [`crate::todo::validate_partition_key`]).
    pub fn new(
        client: Client,
        table: String,
        key: String,
        attributes: VersionAttributes,
    ) -> DynamoStore {
        DynamoStore {
            client,
            table,
            key,
            attributes,
        }
    }

    fn key_of(&self, id: &str) -> (String, AttributeValue) {
        (self.key.clone(), AttributeValue::S(id.to_owned()))
    }
}

/// The item as the table stores it: the app's [`ID`] attribute renamed to the table's key attribute.
pub fn to_table(mut item: Item, key: &str) -> Item {
    if key != ID
        && let Some(id) = item.remove(ID)
    {
        item.insert(key.to_owned(), id);
    }
    item
}

/// The item as the app reads it: the table's key attribute renamed to [`ID`] (an attribute that the
/// table happens to call `id` besides its key is replaced).
pub fn from_table(mut item: Item, key: &str) -> Item {
    if key != ID
        && let Some(id) = item.remove(key)
    {
        item.insert(ID.to_owned(), id);
    }
    item
}

fn unavailable<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(&error).to_string())
}

impl TodoStore for DynamoStore {
    async fn get(&self, id: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some([self.key_of(id)].into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item.map(|item| from_table(item, &self.key)))
    }

    async fn put(&self, item: Item, expect: Expect) -> Result<(), StoreError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_table(item, &self.key)));
        let request = match expect {
            Expect::Absent => request
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", &self.key),
            Expect::Version(v) if v.0 == 0 => request
                .condition_expression("attribute_exists(#k) AND attribute_not_exists(#v)")
                .expression_attribute_names("#k", &self.key)
                .expression_attribute_names("#v", &self.attributes.version),
            Expect::Version(v) => request
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", &self.attributes.version)
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) => {
                if error.as_service_error().and_then(|e| e.code())
                    == Some("ConditionalCheckFailedException")
                {
                    Err(StoreError::Conflict)
                } else {
                    Err(unavailable(error))
                }
            }
        }
    }

    async fn scan(&self, limit: i32, after: Option<String>) -> Result<ScanPage, StoreError> {
        let start = after.map(|id| [self.key_of(&id)].into());
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| match k.get(&self.key) {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            });
        Ok(ScanPage {
            items: out
                .items
                .unwrap_or_default()
                .into_iter()
                .map(|item| from_table(item, &self.key))
                .collect(),
            next,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some([self.key_of("health-check")].into()))
            .send()
            .await
            .map_err(unavailable)
            .map(drop)
    }
}

/// An in-memory table with the same conditions, for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    items: Mutex<BTreeMap<String, Item>>,
    attributes: VersionAttributes,
    /// When set, every call fails as unavailable.
    pub down: std::sync::atomic::AtomicBool,
    /// Conditional puts refused so far.
    pub conflicts: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "the in-memory table is down".to_owned(),
            ))
        } else {
            Ok(())
        }
    }

    /// Every stored item (tombstones included).
    pub fn all(&self) -> BTreeMap<String, Item> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl TodoStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<Item>, StoreError> {
        self.check()?;
        let item = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        // A real table answers later: let other requests run between a read and the write after it.
        tokio::task::yield_now().await;
        Ok(item)
    }

    async fn put(&self, item: Item, expect: Expect) -> Result<(), StoreError> {
        self.check()?;
        let Some(AttributeValue::S(id)) = item.get(ID).cloned() else {
            return Err(StoreError::Unavailable("item without an id".to_owned()));
        };
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let current = items.get(&id);
        let stored = current.map(|i| i.get(&self.attributes.version));
        // The same conditions as DynamoStore's expressions.
        let holds = match (expect, stored) {
            (Expect::Absent, None) => true,
            (Expect::Absent, Some(_)) => false,
            (Expect::Version(_), None) => false,
            (Expect::Version(v), Some(None)) => v.0 == 0,
            (Expect::Version(v), Some(Some(AttributeValue::N(n)))) => {
                v.0 != 0 && Version::parse(n) == Some(v)
            }
            (Expect::Version(_), Some(Some(_))) => false,
        };
        if !holds {
            self.conflicts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(StoreError::Conflict);
        }
        items.insert(id, item);
        Ok(())
    }

    async fn scan(&self, limit: i32, after: Option<String>) -> Result<ScanPage, StoreError> {
        self.check()?;
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let limit = usize::try_from(limit.max(1)).unwrap_or(1);
        let page: Vec<(&String, &Item)> = items
            .iter()
            .filter(|(id, _)| after.as_ref().is_none_or(|a| *id > a))
            .take(limit)
            .collect();
        let next = if page.len() == limit {
            page.last().map(|(id, _)| (*id).clone())
        } else {
            None
        };
        Ok(ScanPage {
            items: page.into_iter().map(|(_, i)| i.clone()).collect(),
            next,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_attribute_is_renamed_both_ways() {
        let item: Item = [
            (ID.to_owned(), AttributeValue::S("a".into())),
            ("text".to_owned(), AttributeValue::S("t".into())),
        ]
        .into();
        let stored = to_table(item.clone(), "pk");
        assert_eq!(stored.get("pk"), Some(&AttributeValue::S("a".into())));
        assert!(!stored.contains_key(ID));
        assert_eq!(from_table(stored, "pk"), item);
        assert_eq!(to_table(item.clone(), ID), item);
        assert_eq!(from_table(item.clone(), ID), item);
    }
}
