//! The replicator's in-process model of its conditional writes (`condition_holds`, which the simulator
//! and the memory target use) against its condition expressions as DynamoDB evaluates them (the
//! stand-in's evaluator), on every combination of stored and incoming stamps, well-typed or not.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use replicator::apply::target::{Condition, FENCE_ATTRIBUTE, condition_holds, expression};
use standin::expr::{Expressions, Texts};
use standin::value::Value;
use tworegion_common::version::{Version, VersionAttributes};

fn convert(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => Value::S(s.clone()),
        AttributeValue::N(n) => Value::N(n.clone()),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(b) => Value::Null(*b),
        AttributeValue::Ss(v) => Value::Ss(v.clone()),
        AttributeValue::L(v) => Value::L(v.iter().map(convert).collect()),
        AttributeValue::M(m) => Value::M(m.iter().map(|(k, v)| (k.clone(), convert(v))).collect()),
        other => panic!("not used here: {other:?}"),
    }
}

fn dynamodb_says(
    condition: &Condition,
    item: Option<&HashMap<String, AttributeValue>>,
    attributes: &VersionAttributes,
) -> bool {
    let e = expression(condition, attributes);
    let values: HashMap<String, Value> = e
        .values
        .iter()
        .map(|(k, v)| (k.clone(), convert(v)))
        .collect();
    let parsed = Expressions::parse(
        Texts {
            condition: Some(e.text),
            ..Texts::default()
        },
        &e.names,
        &values,
    )
    .expect("the replicator's expression parses");
    let item: Option<BTreeMap<String, Value>> =
        item.map(|i| i.iter().map(|(k, v)| (k.clone(), convert(v))).collect());
    parsed.condition_holds(item.as_ref()).expect("evaluates")
}

fn stored_values() -> Vec<Option<AttributeValue>> {
    let n = |s: &str| Some(AttributeValue::N(s.to_owned()));
    vec![
        None,
        n("5"),
        n("10"),
        n("11"),
        n("0"),
        n("-3"),
        n("7.5"),
        n("10.000000000000000001"),
        n("9.999999999999999999"),
        n("1700000000000000.1"),
        n("1.1e1"),
        n("-0"),
        n("10.0"),
        n("1e30"),
        n("99999999999999999999999"),
        n("18446744073709551615"),
        Some(AttributeValue::S("10".to_owned())),
        Some(AttributeValue::Bool(true)),
        Some(AttributeValue::Null(true)),
        Some(AttributeValue::L(vec![AttributeValue::N("10".to_owned())])),
    ]
}

#[test]
fn the_model_agrees_with_dynamodb_on_every_stored_stamp() {
    let attributes = VersionAttributes::default();
    let origins = [
        None,
        Some(AttributeValue::S("a".to_owned())),
        Some(AttributeValue::S("m".to_owned())),
        Some(AttributeValue::S("z".to_owned())),
        Some(AttributeValue::N("1".to_owned())),
    ];
    let mut conditions = Vec::new();
    for version in [0u64, 5, 10, 11, 1_700_000_000_000_000, u64::MAX] {
        for origin in ["a", "m", "z"] {
            conditions.push(Condition::Newer {
                version: Version(version),
                origin: origin.to_owned(),
            });
        }
        conditions.push(Condition::NotNewerThan {
            version: Version(version),
        });
        conditions.push(Condition::Fenced { fence: version });
    }
    let mut checked = 0;
    let mut disagreements = Vec::new();
    for condition in &conditions {
        let mut items: Vec<Option<HashMap<String, AttributeValue>>> = vec![None];
        for stored in stored_values() {
            for origin in &origins {
                let mut item: HashMap<String, AttributeValue> =
                    [("id".to_owned(), AttributeValue::S("k".to_owned()))].into();
                if let Some(v) = &stored {
                    item.insert(attributes.version.clone(), v.clone());
                    item.insert(FENCE_ATTRIBUTE.to_owned(), v.clone());
                }
                if let Some(o) = origin {
                    item.insert(attributes.origin.clone(), o.clone());
                }
                items.push(Some(item));
            }
        }
        for item in &items {
            let model = condition_holds(Some(condition), item.as_ref(), &attributes);
            let dynamodb = dynamodb_says(condition, item.as_ref(), &attributes);
            checked += 1;
            if model != dynamodb {
                disagreements.push(format!(
                    "{condition:?} on {item:?}: model {model}, DynamoDB {dynamodb}"
                ));
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    assert!(
        disagreements.is_empty(),
        "{} of {checked} disagree, for example:\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_string_version_no_longer_blocks_the_item() {
    // A hand edit left the version as a string: the replicated write applies and restores a number.
    let attributes = VersionAttributes::default();
    let item: HashMap<String, AttributeValue> = [
        (
            attributes.version.clone(),
            AttributeValue::S("999999".to_owned()),
        ),
        (
            attributes.origin.clone(),
            AttributeValue::S("us-east-1".to_owned()),
        ),
    ]
    .into();
    let condition = Condition::Newer {
        version: Version(5),
        origin: "us-west-2".to_owned(),
    };
    assert!(dynamodb_says(&condition, Some(&item), &attributes));
    assert!(condition_holds(Some(&condition), Some(&item), &attributes));
}
