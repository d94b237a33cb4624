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

/// A value in DynamoDB JSON (`{"S": "x"}`, `{"M": {...}}`; binary as base64), as the AWS CLI prints it.
pub fn attribute_json(value: &AttributeValue) -> serde_json::Value {
    use serde_json::json;
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": base64(b.as_ref()) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => {
            json!({ "BS": v.iter().map(|b| base64(b.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::L(v) => json!({ "L": v.iter().map(attribute_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item_json(m) }),
        other => json!({ "unsupported": format!("{other:?}") }),
    }
}

/// An item in DynamoDB JSON, names sorted.
pub fn item_json(item: &Item) -> serde_json::Value {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    serde_json::Value::Object(
        names
            .into_iter()
            .map(|name| (name.clone(), attribute_json(&item[name])))
            .collect(),
    )
}

fn base64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
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
    fn items_in_dynamodb_json() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"f"), "Zg==");
        let inner: Item = [("b".to_owned(), AttributeValue::Bool(true))].into();
        let item: Item = [
            ("s".to_owned(), AttributeValue::S("x".into())),
            ("n".to_owned(), AttributeValue::N("1.5".into())),
            ("bin".to_owned(), AttributeValue::B(b"fo".to_vec().into())),
            ("z".to_owned(), AttributeValue::Null(true)),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            ("ns".to_owned(), AttributeValue::Ns(vec!["2".into()])),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![b"foo".to_vec().into()]),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::S("y".into())]),
            ),
            ("m".to_owned(), AttributeValue::M(inner)),
        ]
        .into();
        assert_eq!(
            item_json(&item),
            serde_json::json!({
                "s": {"S": "x"}, "n": {"N": "1.5"}, "bin": {"B": "Zm8="}, "z": {"NULL": true},
                "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["2"]}, "bs": {"BS": ["Zm9v"]},
                "l": {"L": [{"S": "y"}]}, "m": {"M": {"b": {"BOOL": true}}}
            })
        );
    }

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
