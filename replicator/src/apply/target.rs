//! The target table seam.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use tworegion_common::version::{Version, VersionAttributes};

use crate::error::{AwsFailure, ErrorClass};
use crate::item::{Item, key_string};

/// The condition under which a write applies (last-writer-wins); `None` on a write means always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Put only if the target item is absent, or has a lower version, or the same version and a lower
    /// or equal origin (equal: a replay of the same write, or the same-second fallback version of a
    /// later change from the same region, which must win).
    Newer {
        /// The incoming version.
        version: Version,
        /// The incoming origin.
        origin: String,
    },
    /// Delete only if the target's version is not newer than this one.
    NotNewerThan {
        /// The removed item's version.
        version: Version,
    },
    /// One-way: write only if the target item was not written by a later lease owner (its fencing
    /// token, [`FENCE_ATTRIBUTE`], is absent or not higher than this one).
    Fenced {
        /// The writer's fencing token.
        fence: u64,
    },
}

/// The attribute that carries, on every one-way copy, the fencing token of the lease owner that wrote
/// it (bookkeeping of the replicator, like the lease table; `verify` ignores it).
pub const FENCE_ATTRIBUTE: &str = "rep_fence";

/// One write to the target.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Put a whole item.
    Put {
        /// The item.
        item: Item,
        /// When it applies.
        condition: Option<Condition>,
    },
    /// Delete by key.
    Delete {
        /// The key.
        key: Item,
        /// When it applies.
        condition: Option<Condition>,
    },
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target changed (or already equalled the write).
    Applied,
    /// The condition failed: the target holds something newer. An answer, not an error.
    Conflict,
}

/// The table changes are written to.
pub trait TargetTable: Send + Sync + 'static {
    /// Performs one write.
    fn write(&self, write: &Write) -> impl Future<Output = Result<Outcome, AwsFailure>> + Send;
}

/// The target on DynamoDB.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    client: Client,
    table: String,
    attributes: VersionAttributes,
}

impl AwsTarget {
    /// Writes to `table` through `client`, with the convention's attribute names.
    pub fn new(client: Client, table: String, attributes: VersionAttributes) -> AwsTarget {
        AwsTarget {
            client,
            table,
            attributes,
        }
    }
}

/// The expression of [`Condition::Newer`]: names `#v` (version), `#o` (origin); values `:v`, `:o`, `:n`
/// (the type name `N`).
pub const NEWER_TEXT: &str = "attribute_not_exists(#v) OR NOT attribute_type(#v, :n) OR #v < :v \
                              OR (#v = :v AND #o <= :o)";
/// The expression of [`Condition::NotNewerThan`]: name `#v`; values `:v`, `:n`.
pub const NOT_NEWER_TEXT: &str =
    "attribute_not_exists(#v) OR NOT attribute_type(#v, :n) OR #v <= :v";
/// The expression of [`Condition::Fenced`]: name `#f` ([`FENCE_ATTRIBUTE`]); values `:f`, `:n`.
pub const FENCED_TEXT: &str = "attribute_not_exists(#f) OR NOT attribute_type(#f, :n) OR #f <= :f";

/// A condition as a DynamoDB expression with its names and values.
pub struct Expression {
    /// The condition expression.
    pub text: &'static str,
    /// `#v`, `#o` to attribute names.
    pub names: HashMap<String, String>,
    /// `:v`, `:o` to values.
    pub values: HashMap<String, AttributeValue>,
}

/// Renders a condition with the configured attribute names. One conditional write: never read-then-write.
///
/// A stored version (or fencing token) that is not a number, for example after a hand edit, counts as
/// absent (`NOT attribute_type(#v, :n)`): the replicated write wins and puts a valid stamp back. Without
/// that clause DynamoDB would compare across types as false, refuse every later write to the item, and
/// the replicator would read each refusal as "the target is newer". A stored number is compared as
/// DynamoDB compares numbers, also when it is negative, a decimal or beyond 64 bits.
pub fn expression(condition: &Condition, attributes: &VersionAttributes) -> Expression {
    let number_type = (":n".to_owned(), AttributeValue::S("N".to_owned()));
    match condition {
        Condition::Newer { version, origin } => Expression {
            text: NEWER_TEXT,
            names: [
                ("#v".to_owned(), attributes.version.clone()),
                ("#o".to_owned(), attributes.origin.clone()),
            ]
            .into(),
            values: [
                (":v".to_owned(), AttributeValue::N(version.to_string())),
                (":o".to_owned(), AttributeValue::S(origin.clone())),
                number_type,
            ]
            .into(),
        },
        Condition::NotNewerThan { version } => Expression {
            text: NOT_NEWER_TEXT,
            names: [("#v".to_owned(), attributes.version.clone())].into(),
            values: [
                (":v".to_owned(), AttributeValue::N(version.to_string())),
                number_type,
            ]
            .into(),
        },
        Condition::Fenced { fence } => Expression {
            text: FENCED_TEXT,
            names: [("#f".to_owned(), FENCE_ATTRIBUTE.to_owned())].into(),
            values: [
                (":f".to_owned(), AttributeValue::N(fence.to_string())),
                number_type,
            ]
            .into(),
        },
    }
}

/// A conditional write's result: applied, refused by its condition, or a failure.
pub(crate) fn outcome<T, E>(
    result: Result<
        T,
        aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
) -> Result<Outcome, AwsFailure>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(Outcome::Applied),
        Err(error) => refused(AwsFailure::from_sdk(&error)),
    }
}

/// A write the service refused: its condition failing is an answer ([`Outcome::Conflict`]), anything
/// else a failure.
pub(crate) fn refused(failure: AwsFailure) -> Result<Outcome, AwsFailure> {
    if failure.class == ErrorClass::Conflict {
        Ok(Outcome::Conflict)
    } else {
        Err(failure)
    }
}

impl TargetTable for AwsTarget {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        match write {
            Write::Put { item, condition } => {
                let mut request = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item.clone()));
                if let Some(condition) = condition {
                    let e = expression(condition, &self.attributes);
                    request = request
                        .condition_expression(e.text)
                        .set_expression_attribute_names(Some(e.names))
                        .set_expression_attribute_values(Some(e.values));
                }
                outcome(request.send().await)
            }
            Write::Delete { key, condition } => {
                let mut request = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()));
                if let Some(condition) = condition {
                    let e = expression(condition, &self.attributes);
                    request = request
                        .condition_expression(e.text)
                        .set_expression_attribute_names(Some(e.names))
                        .set_expression_attribute_values(Some(e.values));
                }
                outcome(request.send().await)
            }
        }
    }
}

/// An in-memory target with the same conditional semantics, for tests.
#[derive(Debug)]
pub struct MemoryTarget {
    key_names: Vec<String>,
    attributes: VersionAttributes,
    items: Mutex<HashMap<String, Item>>,
    writes: Mutex<usize>,
}

impl MemoryTarget {
    /// An empty table with these key attribute names.
    pub fn new(key_names: &[&str], attributes: VersionAttributes) -> MemoryTarget {
        MemoryTarget {
            key_names: key_names.iter().map(|s| (*s).to_owned()).collect(),
            attributes,
            items: Mutex::new(HashMap::new()),
            writes: Mutex::new(0),
        }
    }

    /// The items, by key string.
    pub fn items(&self) -> HashMap<String, Item> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The items as a reader that follows the convention sees them (see [`live`]).
    pub fn live_items(&self) -> HashMap<String, Item> {
        live(self.items(), &self.attributes)
    }

    /// Writes attempted so far.
    pub fn writes(&self) -> usize {
        *self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Puts `item` into `table` on the replicator's lww condition (the stored item is not newer; an item
/// without an origin has `region`'s); an item without a version goes in only where the key
/// (`key_name`, one of its attributes) holds no item.
pub async fn put_lww(
    client: &Client,
    table: &str,
    key_name: &str,
    item: &Item,
    attributes: &VersionAttributes,
    region: &str,
) -> Result<Outcome, AwsFailure> {
    match stamp(item, attributes, region) {
        Some((version, origin)) => {
            AwsTarget::new(client.clone(), table.to_owned(), attributes.clone())
                .write(&Write::Put {
                    item: item.clone(),
                    condition: Some(Condition::Newer { version, origin }),
                })
                .await
        }
        None => put_if_absent(client, table, key_name, item).await,
    }
}

/// Puts `item` into `table` only where its key holds no item (`key_name` is one of the table's key
/// attributes, which every item has): applied, or a conflict.
pub async fn put_if_absent(
    client: &Client,
    table: &str,
    key_name: &str,
    item: &Item,
) -> Result<Outcome, AwsFailure> {
    outcome(
        client
            .put_item()
            .table_name(table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", key_name)
            .send()
            .await,
    )
}

/// The `(version, origin)` of an item, an absent origin read as `region` (the table's region, as the
/// replicator reads a write without one).
pub fn stamp(
    item: &Item,
    attributes: &VersionAttributes,
    region: &str,
) -> Option<(Version, String)> {
    stored_version(item, attributes)
        .map(|(version, origin)| (version, origin.unwrap_or_else(|| region.to_owned())))
}

/// The `(version, origin)` stamped on a stored item, if it has a version.
pub fn stored_version(
    item: &Item,
    attributes: &VersionAttributes,
) -> Option<(Version, Option<String>)> {
    let version = match item.get(&attributes.version)? {
        AttributeValue::N(n) => Version::parse(n)?,
        _ => return None,
    };
    let origin = match item.get(&attributes.origin) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    Some((version, origin))
}

/// `items` as a reader that follows the convention sees them: tombstones (the deleted flag set, whether
/// a writer or a one-way delete left them) are absent, and the replicator's fencing token is left out.
pub fn live<K: Eq + std::hash::Hash>(
    items: HashMap<K, Item>,
    attributes: &VersionAttributes,
) -> HashMap<K, Item> {
    items
        .into_iter()
        .filter_map(|(key, mut item)| {
            item.remove(FENCE_ATTRIBUTE);
            let tombstone = matches!(
                item.get(&attributes.deleted),
                Some(AttributeValue::Bool(true))
            );
            (!tombstone).then_some((key, item))
        })
        .collect()
}

/// How a stored number compares with `value`, exactly as DynamoDB compares numbers (any sign, decimal
/// or exponent); `None` for text that is not a number.
fn stored_vs(stored: &str, value: u64) -> Option<std::cmp::Ordering> {
    tworegion_common::number::compare_numbers(stored, &value.to_string())
}

/// Whether a write's condition holds against the stored item, exactly as DynamoDB evaluates the
/// expressions from [`expression`]: an absent or non-number version (or fence) lets the write apply; a
/// number is compared by value. In-process models use it.
pub fn condition_holds(
    condition: Option<&Condition>,
    current: Option<&Item>,
    attributes: &VersionAttributes,
) -> bool {
    use std::cmp::Ordering;
    let Some(condition) = condition else {
        return true;
    };
    let number = |name: &str| match current.and_then(|item| item.get(name)) {
        Some(AttributeValue::N(n)) => Some(n.as_str()),
        _ => None, // absent, or another type: `NOT attribute_type(#v, :n)` holds
    };
    match condition {
        Condition::Fenced { fence } => number(FENCE_ATTRIBUTE)
            .is_none_or(|stored| stored_vs(stored, *fence).is_some_and(Ordering::is_le)),
        Condition::NotNewerThan { version } => number(&attributes.version)
            .is_none_or(|stored| stored_vs(stored, version.0).is_some_and(Ordering::is_le)),
        Condition::Newer { version, origin } => match number(&attributes.version) {
            None => true,
            Some(stored) => match stored_vs(stored, version.0) {
                Some(Ordering::Less) => true,
                Some(Ordering::Equal) => matches!(
                    current.and_then(|item| item.get(&attributes.origin)),
                    Some(AttributeValue::S(stored_origin)) if stored_origin.as_bytes() <= origin.as_bytes()
                ),
                _ => false,
            },
        },
    }
}

impl TargetTable for MemoryTarget {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        *self.writes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        match write {
            Write::Put { item, condition } => {
                let key = crate::item::project_key(item, &self.key_names).ok_or_else(|| {
                    AwsFailure::synthetic(
                        ErrorClass::Fatal,
                        "validation",
                        "item lacks a key attribute",
                    )
                })?;
                let key = key_string(&key);
                if !condition_holds(condition.as_ref(), items.get(&key), &self.attributes) {
                    return Ok(Outcome::Conflict);
                }
                items.insert(key, item.clone());
            }
            Write::Delete { key, condition } => {
                let key = key_string(key);
                if !condition_holds(condition.as_ref(), items.get(&key), &self.attributes) {
                    return Ok(Outcome::Conflict);
                }
                items.remove(&key);
            }
        }
        Ok(Outcome::Applied)
    }
}
