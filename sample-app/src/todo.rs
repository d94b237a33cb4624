//! A todo as the API shows it, as DynamoDB stores it, and validation of what clients send.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use tworegion_common::version::{Version, VersionAttributes};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Longest `text`, in characters.
pub const MAX_TEXT: usize = 1000;

/// Longest id.
pub const MAX_ID: usize = 64;

/// The id attribute of an [`Item`] as the app builds and reads it. The table's own key attribute may have
/// another name (`--partition-key`); [`crate::store::DynamoStore`] renames it on the way in and out.
pub const ID: &str = "id";

/// The one id no todo can have: `GET /todos/health` is the health route.
pub const RESERVED_ID: &str = "health";

/// Attribute (String): the `Idempotency-Key` of the `POST` that created the todo.
pub const IDEMPOTENCY_KEY: &str = "idempotencyKey";

/// Attribute (String): SHA-256 (hex) of that request's todo, to tell a retry from a reuse of the key.
pub const IDEMPOTENCY_REQUEST: &str = "idempotencyRequestSha256";

/// Every attribute a todo item may have besides the version convention's.
pub const TODO_ATTRIBUTES: &[&str] = &[
    ID,
    "text",
    "checked",
    "createdAt",
    "updatedAt",
    IDEMPOTENCY_KEY,
    IDEMPOTENCY_REQUEST,
];

/// A todo as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Todo {
    /// Identifier (a UUID for todos created through the API).
    pub id: String,
    /// What to do.
    pub text: String,
    /// Done or not.
    pub checked: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// Checks `text`: a non-empty string (after trimming) of at most [`MAX_TEXT`] characters.
pub fn validate_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text: must not be empty".to_owned());
    }
    let n = text.chars().count();
    if n > MAX_TEXT {
        return Err(format!(
            "text: {n} characters is more than the {MAX_TEXT} allowed"
        ));
    }
    Ok(())
}

/// Checks an id: 1 to [`MAX_ID`] characters of `A-Z a-z 0-9 -`, and not [`RESERVED_ID`].
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(format!(
            "id: {:?} is not a todo id (1 to {MAX_ID} characters: letters, digits, '-')",
            id.chars().take(80).collect::<String>()
        ));
    }
    if id == RESERVED_ID {
        return Err(format!(
            "id: {RESERVED_ID:?} is not a todo id (/todos/{RESERVED_ID} is the health route)"
        ));
    }
    Ok(())
}

/// Checks the name of the table's key attribute (`--partition-key`): 1 to 255 bytes, as DynamoDB
/// allows, and none of the other attributes a todo item has.
pub fn validate_partition_key(name: &str, attrs: &VersionAttributes) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "must have 1 to 255 bytes (it has {}), as DynamoDB attribute names do",
            name.len()
        ));
    }
    let taken = TODO_ATTRIBUTES
        .iter()
        .skip(1)
        .copied()
        .chain([
            attrs.version.as_str(),
            attrs.origin.as_str(),
            attrs.deleted.as_str(),
            attrs.expires.as_str(),
        ])
        .any(|a| a == name);
    if taken {
        return Err(format!(
            "{name:?} is an attribute the app writes itself; name the table's key attribute, for example id or pk"
        ));
    }
    Ok(())
}

/// An RFC 3339 UTC timestamp for Unix milliseconds.
pub use tworegion_common::time::rfc3339;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// How a todo created with an `Idempotency-Key` remembers that request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedWith {
    /// The key, as the client sent it (without the quotes of the structured-field form).
    pub key: String,
    /// SHA-256 (hex) of the todo the request asked for.
    pub request: String,
}

/// What a stored item says.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The todo.
    pub todo: Todo,
    /// Its version (0 if it was written without one).
    pub version: Version,
    /// A tombstone: deleted.
    pub deleted: bool,
    /// The `Idempotency-Key` request that created it, if any (kept by every later update).
    pub created_with: Option<CreatedWith>,
}

/// Reads a stored item. A tombstone needs only its id; a todo needs `text` (a string); `checked` is a
/// boolean (or absent: false); timestamps are RFC 3339 strings or epoch milliseconds (older items).
/// An item that is not a todo is an error naming the field, so that it is never written back damaged.
pub fn from_item(item: &Item, attrs: &VersionAttributes) -> Result<Stored, String> {
    let id = match item.get(ID) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => return Err("id: missing or not a string".to_owned()),
    };
    let version = match item.get(&attrs.version) {
        None => Version(0),
        Some(AttributeValue::N(n)) => Version::parse(n)
            .ok_or_else(|| format!("{}: {n:?} is not a whole number", attrs.version))?,
        Some(_) => return Err(format!("{}: not a number", attrs.version)),
    };
    let deleted = matches!(item.get(&attrs.deleted), Some(AttributeValue::Bool(true)));
    if deleted {
        return Ok(Stored {
            todo: Todo {
                id,
                text: String::new(),
                checked: false,
                created_at: String::new(),
                updated_at: String::new(),
            },
            version,
            deleted,
            created_with: None,
        });
    }
    let text = match item.get("text") {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => return Err("text: missing or not a string".to_owned()),
    };
    let checked = match item.get("checked") {
        None => false,
        Some(AttributeValue::Bool(b)) => *b,
        Some(_) => return Err("checked: not a boolean".to_owned()),
    };
    let time = |name: &str| match item.get(name) {
        None => Ok(String::new()),
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        Some(AttributeValue::N(n)) => n
            .parse::<u64>()
            .map(rfc3339)
            .map_err(|_| format!("{name}: {n:?} is not epoch milliseconds")),
        Some(_) => Err(format!("{name}: not a timestamp")),
    };
    let string = |name: &str| match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(format!("{name}: not a string")),
    };
    let created_with = match (string(IDEMPOTENCY_KEY)?, string(IDEMPOTENCY_REQUEST)?) {
        (None, None) => None,
        (Some(key), Some(request)) => Some(CreatedWith { key, request }),
        (Some(_), None) => return Err(format!("{IDEMPOTENCY_REQUEST}: missing")),
        (None, Some(_)) => return Err(format!("{IDEMPOTENCY_KEY}: missing")),
    };
    Ok(Stored {
        todo: Todo {
            id,
            text,
            checked,
            created_at: time("createdAt")?,
            updated_at: time("updatedAt")?,
        },
        version,
        deleted,
        created_with,
    })
}

/// The item for a todo at `version`, written in `region`; `created_with` is the `Idempotency-Key`
/// request that created it, which every later write keeps.
pub fn to_item(
    todo: &Todo,
    created_with: Option<&CreatedWith>,
    version: Version,
    region: &str,
    attrs: &VersionAttributes,
) -> Item {
    let mut item: Item = [
        (ID.to_owned(), s(&todo.id)),
        ("text".to_owned(), s(&todo.text)),
        ("checked".to_owned(), AttributeValue::Bool(todo.checked)),
        ("createdAt".to_owned(), s(&todo.created_at)),
        ("updatedAt".to_owned(), s(&todo.updated_at)),
        (
            attrs.version.clone(),
            AttributeValue::N(version.to_string()),
        ),
        (attrs.origin.clone(), s(region)),
    ]
    .into();
    if let Some(c) = created_with {
        item.insert(IDEMPOTENCY_KEY.to_owned(), s(&c.key));
        item.insert(IDEMPOTENCY_REQUEST.to_owned(), s(&c.request));
    }
    item
}

/// The tombstone that replaces a deleted todo: its key, the convention's stamps, and an expiry.
pub fn tombstone(
    id: &str,
    version: Version,
    region: &str,
    expires_epoch_secs: u64,
    attrs: &VersionAttributes,
) -> Item {
    [
        (ID.to_owned(), s(id)),
        (
            attrs.version.clone(),
            AttributeValue::N(version.to_string()),
        ),
        (attrs.origin.clone(), s(region)),
        (attrs.deleted.clone(), AttributeValue::Bool(true)),
        (
            attrs.expires.clone(),
            AttributeValue::N(expires_epoch_secs.to_string()),
        ),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_text_are_validated_with_the_field_named() {
        assert!(validate_id("0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        for bad in ["", "a b", "../x", "é", &"x".repeat(65), "health"] {
            assert!(validate_id(bad).unwrap_err().starts_with("id: "), "{bad}");
        }
        assert!(validate_id("healthy").is_ok());
        assert!(validate_text("buy milk").is_ok());
        assert_eq!(validate_text("  ").unwrap_err(), "text: must not be empty");
        assert!(
            validate_text(&"x".repeat(1001))
                .unwrap_err()
                .starts_with("text: 1001 characters")
        );
    }

    #[test]
    fn items_round_trip() {
        let attrs = VersionAttributes::default();
        let todo = Todo {
            id: "a".into(),
            text: "t".into(),
            checked: true,
            created_at: rfc3339(1),
            updated_at: rfc3339(2),
        };
        let item = to_item(&todo, None, Version(5), "us-east-1", &attrs);
        let back = from_item(&item, &attrs).unwrap();
        assert_eq!(back.todo, todo);
        assert_eq!(back.version, Version(5));
        assert!(!back.deleted);
        assert_eq!(back.created_with, None);
        // The Idempotency-Key request that created a todo is kept with it.
        let created_with = CreatedWith {
            key: "k".into(),
            request: "ab".into(),
        };
        let keyed = to_item(&todo, Some(&created_with), Version(5), "us-east-1", &attrs);
        assert_eq!(
            from_item(&keyed, &attrs).unwrap().created_with,
            Some(created_with)
        );
        let mut half = keyed;
        half.remove(IDEMPOTENCY_REQUEST);
        assert_eq!(
            from_item(&half, &attrs).unwrap_err(),
            "idempotencyRequestSha256: missing"
        );
        let gone = from_item(&tombstone("a", Version(6), "us-east-1", 9, &attrs), &attrs).unwrap();
        assert!(gone.deleted);
        // Older items: numeric timestamps are read; damaged ones are errors naming the field.
        let mut legacy = item.clone();
        legacy.insert("createdAt".into(), AttributeValue::N("951782400123".into()));
        assert_eq!(
            from_item(&legacy, &attrs).unwrap().todo.created_at,
            "2000-02-29T00:00:00.123Z"
        );
        let mut bad = item.clone();
        bad.insert("rep_version".into(), AttributeValue::N("1.5".into()));
        assert_eq!(
            from_item(&bad, &attrs).unwrap_err(),
            "rep_version: \"1.5\" is not a whole number"
        );
        let mut bad = item.clone();
        bad.insert("text".into(), AttributeValue::N("5".into()));
        assert_eq!(
            from_item(&bad, &attrs).unwrap_err(),
            "text: missing or not a string"
        );
        let mut bad = item;
        bad.insert("checked".into(), AttributeValue::S("yes".into()));
        assert_eq!(
            from_item(&bad, &attrs).unwrap_err(),
            "checked: not a boolean"
        );
    }

    #[test]
    fn the_key_attribute_may_not_be_one_the_app_writes() {
        let attrs = VersionAttributes::default();
        for ok in ["id", "pk", "todoId", "PK"] {
            assert_eq!(validate_partition_key(ok, &attrs), Ok(()), "{ok}");
        }
        for taken in [
            "text",
            "createdAt",
            "rep_version",
            "rep_expires",
            IDEMPOTENCY_KEY,
        ] {
            let error = validate_partition_key(taken, &attrs).unwrap_err();
            assert!(error.contains("an attribute the app writes"), "{error}");
        }
        assert!(validate_partition_key("", &attrs).is_err());
        assert!(validate_partition_key(&"k".repeat(256), &attrs).is_err());
    }
}
