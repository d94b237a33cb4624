//! The table the app reads and writes: a narrow seam with the DynamoDB implementation and an in-memory
//! one for the router tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::version::{Version, VersionAttributes};

use crate::todo::Item;

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

/// The todo table.
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
    attributes: VersionAttributes,
}

impl DynamoStore {
    /// The table `table` through `client`.
    pub fn new(client: Client, table: String, attributes: VersionAttributes) -> DynamoStore {
        DynamoStore {
            client,
            table,
            attributes,
        }
    }
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
            .key("id", AttributeValue::S(id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    async fn put(&self, item: Item, expect: Expect) -> Result<(), StoreError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let request = match expect {
            Expect::Absent => request
                .condition_expression("attribute_not_exists(#id)")
                .expression_attribute_names("#id", "id"),
            Expect::Version(v) if v.0 == 0 => request
                .condition_expression("attribute_exists(#id) AND attribute_not_exists(#v)")
                .expression_attribute_names("#id", "id")
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
        let start = after.map(|id| [("id".to_owned(), AttributeValue::S(id))].into());
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out.last_evaluated_key().and_then(|k| match k.get("id") {
            Some(AttributeValue::S(id)) => Some(id.clone()),
            _ => None,
        });
        Ok(ScanPage {
            items: out.items.unwrap_or_default(),
            next,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S("health-check".to_owned()))
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
        let Some(AttributeValue::S(id)) = item.get("id").cloned() else {
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
