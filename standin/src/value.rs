//! DynamoDB attribute values as the JSON protocol carries them, and how DynamoDB compares them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use tworegion_common::number::{compare_numbers, is_number};

/// One attribute value (`{"S": "..."}`, `{"N": "12"}`, ...). Binary values stay base64 text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// String.
    S(String),
    /// Number, as decimal text.
    N(String),
    /// Binary, base64.
    B(String),
    /// Boolean.
    #[serde(rename = "BOOL")]
    Bool(bool),
    /// Null.
    #[serde(rename = "NULL")]
    Null(bool),
    /// String set.
    #[serde(rename = "SS")]
    Ss(Vec<String>),
    /// Number set.
    #[serde(rename = "NS")]
    Ns(Vec<String>),
    /// Binary set.
    #[serde(rename = "BS")]
    Bs(Vec<String>),
    /// List.
    L(Vec<Value>),
    /// Map.
    M(BTreeMap<String, Value>),
}

/// An item: attribute name to value.
pub type Item = BTreeMap<String, Value>;

impl Value {
    /// The type descriptor (`S`, `N`, ...), as DynamoDB names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::S(_) => "S",
            Value::N(_) => "N",
            Value::B(_) => "B",
            Value::Bool(_) => "BOOL",
            Value::Null(_) => "NULL",
            Value::Ss(_) => "SS",
            Value::Ns(_) => "NS",
            Value::Bs(_) => "BS",
            Value::L(_) => "L",
            Value::M(_) => "M",
        }
    }

    /// The value's size as DynamoDB counts it, approximately (strings and binaries by length, numbers
    /// by about half their digits, containers by their elements plus a few bytes).
    pub fn size(&self) -> usize {
        match self {
            Value::S(s) | Value::B(s) => s.len(),
            Value::N(n) => n.len().div_ceil(2) + 1,
            Value::Bool(_) | Value::Null(_) => 1,
            Value::Ss(v) | Value::Bs(v) => v.iter().map(String::len).sum(),
            Value::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
            Value::L(v) => 3 + v.iter().map(|x| 1 + x.size()).sum::<usize>(),
            Value::M(m) => 3 + m.iter().map(|(k, x)| 1 + k.len() + x.size()).sum::<usize>(),
        }
    }
}

/// An item's size (names plus values), the unit of capacity and of the 1 MB page limit.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size()).sum()
}

/// Orders two values as DynamoDB's comparison operators do: only values of the same scalar type
/// (S, N, B) are ordered; anything else is `None`, which makes `<`, `<=`, `>`, `>=` false.
pub fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::S(x), Value::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::N(x), Value::N(y)) => compare_numbers(x, y),
        (Value::B(x), Value::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Equality as DynamoDB's `=`: numbers by value, sets regardless of order, everything else exactly.
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::N(x), Value::N(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Ss(x), Value::Ss(y)) | (Value::Bs(x), Value::Bs(y)) => {
            let (mut x, mut y) = (x.clone(), y.clone());
            x.sort();
            y.sort();
            x == y
        }
        (Value::Ns(x), Value::Ns(y)) => {
            x.len() == y.len()
                && x.iter().all(|n| {
                    y.iter()
                        .any(|m| compare_numbers(n, m) == Some(Ordering::Equal))
                })
        }
        (Value::L(x), Value::L(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::M(x), Value::M(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Adds (or subtracts) two integer numbers exactly. The stand-in's arithmetic covers integers within
/// 128 bits (the counters the replicator keeps); anything else is `None`.
pub fn add_numbers(a: &str, b: &str, subtract: bool) -> Option<String> {
    let (x, y) = (
        a.trim().parse::<i128>().ok()?,
        b.trim().parse::<i128>().ok()?,
    );
    let sum = if subtract {
        x.checked_sub(y)?
    } else {
        x.checked_add(y)?
    };
    Some(sum.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        let less = [
            ("-10", "-9"),
            ("-1", "0"),
            ("0", "0.5"),
            ("9", "10"),
            ("1.5", "1.55"),
            ("99", "1e3"),
            ("1000000000000000000000001", "1000000000000000000000002"),
        ];
        for (a, b) in less {
            assert_eq!(compare_numbers(a, b), Some(Ordering::Less), "{a} < {b}");
            assert_eq!(compare_numbers(b, a), Some(Ordering::Greater), "{b} > {a}");
        }
        for (a, b) in [("0", "-0"), ("1.50", "1.5"), ("007", "7"), ("1e2", "100")] {
            assert_eq!(compare_numbers(a, b), Some(Ordering::Equal), "{a} = {b}");
        }
        assert_eq!(compare_numbers("x", "1"), None);
        assert_eq!(compare_numbers("", "1"), None);
    }

    #[test]
    fn only_same_scalar_types_are_ordered() {
        assert_eq!(
            order(&Value::S("a".into()), &Value::S("b".into())),
            Some(Ordering::Less)
        );
        assert_eq!(order(&Value::S("1".into()), &Value::N("1".into())), None);
        assert_eq!(order(&Value::Bool(true), &Value::Bool(true)), None);
        assert!(equal(&Value::N("1.0".into()), &Value::N("1".into())));
        assert!(!equal(&Value::S("1".into()), &Value::N("1".into())));
        assert!(equal(
            &Value::Ss(vec!["a".into(), "b".into()]),
            &Value::Ss(vec!["b".into(), "a".into()])
        ));
    }

    #[test]
    fn values_use_the_wire_names() {
        let item: Item = serde_json::from_str(
            r#"{"a":{"S":"x"},"b":{"N":"1"},"c":{"BOOL":true},"d":{"NULL":true},"e":{"L":[{"SS":["p"]}]},"f":{"M":{"g":{"NS":["2"]}}}}"#,
        )
        .expect("parses");
        let back = serde_json::to_string(&item).expect("serializes");
        assert_eq!(
            back,
            r#"{"a":{"S":"x"},"b":{"N":"1"},"c":{"BOOL":true},"d":{"NULL":true},"e":{"L":[{"SS":["p"]}]},"f":{"M":{"g":{"NS":["2"]}}}}"#
        );
        assert_eq!(add_numbers("41", "1", false).as_deref(), Some("42"));
        assert_eq!(add_numbers("1", "3", true).as_deref(), Some("-2"));
        assert_eq!(add_numbers("1.5", "1", false), None);
    }
}
