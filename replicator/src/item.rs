//! Items as the target table's SDK sees them, and the key of an item as a comparable value.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// An item: attribute name to value, in the DynamoDB SDK's types.
pub type Item = HashMap<String, AttributeValue>;

/// The key of an item as a canonical string (names sorted, names and values quoted and typed, so two
/// different keys never give the same string), for grouping changes per key and for log messages, for
/// example `"pk"=S"user#1","sk"=N"7"`. Never used as a metric label.
pub fn key_string(keys: &Item) -> String {
    use std::fmt::Write as _;
    let mut names: Vec<&String> = keys.keys().collect();
    names.sort();
    let mut out = String::with_capacity(64);
    // Writing to a String cannot fail.
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name:?}=");
        let _ = match &keys[name] {
            AttributeValue::S(s) => write!(out, "S{s:?}"),
            AttributeValue::N(n) => write!(out, "N{n:?}"),
            AttributeValue::B(b) => {
                out.push_str("B\"");
                for byte in b.as_ref() {
                    let _ = write!(out, "{byte:02x}");
                }
                out.push('"');
                Ok(())
            }
            other => write!(out, "{other:?}"),
        };
    }
    out
}

/// The attributes of `image` named in `key_names`, or `None` if one is missing.
pub fn project_key(image: &Item, key_names: &[String]) -> Option<Item> {
    key_names
        .iter()
        .map(|name| image.get(name).map(|v| (name.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_strings_are_canonical_and_typed() {
        let a: Item = [
            ("pk".to_owned(), AttributeValue::S("x".into())),
            ("sk".to_owned(), AttributeValue::N("1".into())),
        ]
        .into();
        let b: Item = [
            ("sk".to_owned(), AttributeValue::N("1".into())),
            ("pk".to_owned(), AttributeValue::S("x".into())),
        ]
        .into();
        assert_eq!(key_string(&a), key_string(&b));
        assert_eq!(key_string(&a), r#""pk"=S"x","sk"=N"1""#);
        let c: Item = [("pk".to_owned(), AttributeValue::N("x".into()))].into();
        let d: Item = [("pk".to_owned(), AttributeValue::S("x".into()))].into();
        assert_ne!(key_string(&c), key_string(&d));
        // Values that contain the separators cannot make two keys look alike.
        let e: Item = [
            ("pk".to_owned(), AttributeValue::S("a,\"sk\"=S\"b".into())),
            ("sk".to_owned(), AttributeValue::S("c".into())),
        ]
        .into();
        let f: Item = [
            ("pk".to_owned(), AttributeValue::S("a".into())),
            ("sk".to_owned(), AttributeValue::S("b\",\"sk\"=S\"c".into())),
        ]
        .into();
        assert_ne!(key_string(&e), key_string(&f));
    }
}
