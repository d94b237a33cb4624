//! The plan: a pure function from what should exist and what exists (both only resources of this
//! app and stage) to the changes that make them equal, in dependency order.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

use crate::desired::{Kind, Resource};

/// One property that differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldChange {
    /// The property.
    pub field: String,
    /// What exists (`null` when missing).
    pub from: Value,
    /// What should be.
    pub to: Value,
}

/// What to do with one resource.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// It does not exist yet.
    Create,
    /// It exists and differs in properties that can change in place.
    Update {
        /// The differences.
        changes: Vec<FieldChange>,
    },
    /// It exists and differs in a property that cannot change in place.
    Replace {
        /// The differences.
        changes: Vec<FieldChange>,
    },
    /// It exists, is ours, and is no longer wanted.
    Delete,
    /// It holds data and is no longer wanted, but was adopted (or `down --keep-data`): untag it
    /// and leave it, with its data. The plan never makes this; the engine's data policy does.
    Release,
}

/// One change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// Kind of resource.
    pub kind: Kind,
    /// Its region (`None`: global).
    pub region: Option<String>,
    /// Its name.
    pub name: String,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
}

/// All changes, in the order to apply them: creations and updates in dependency order, then
/// deletions in reverse dependency order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The changes.
    pub changes: Vec<Change>,
}

impl Plan {
    /// True when nothing needs doing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

type Key = (Kind, Option<String>, String);

fn key(r: &Resource) -> Key {
    (r.kind, r.region.clone(), r.name.clone())
}

/// Compares desired with observed. Only the properties the deployer manages (those in `desired`)
/// are compared; what AWS adds besides is ignored.
pub fn plan(desired: &[Resource], observed: &[Resource]) -> Plan {
    let observed: BTreeMap<Key, &Resource> = observed.iter().map(|r| (key(r), r)).collect();
    let wanted: BTreeMap<Key, &Resource> = desired.iter().map(|r| (key(r), r)).collect();
    let mut changes: Vec<Change> = Vec::new();
    for (k, want) in &wanted {
        let action = match observed.get(k) {
            None => Some(Action::Create),
            Some(have) => {
                let diffs: Vec<FieldChange> = want
                    .props
                    .iter()
                    .filter(|(field, value)| {
                        have.props.get(*field).unwrap_or(&Value::Null) != *value
                    })
                    .map(|(field, value)| FieldChange {
                        field: field.clone(),
                        from: have.props.get(field).cloned().unwrap_or(Value::Null),
                        to: value.clone(),
                    })
                    .collect();
                if diffs.is_empty() {
                    None
                } else if diffs
                    .iter()
                    .any(|d| want.kind.immutable().contains(&d.field.as_str()))
                {
                    Some(Action::Replace { changes: diffs })
                } else {
                    Some(Action::Update { changes: diffs })
                }
            }
        };
        if let Some(action) = action {
            changes.push(Change {
                kind: k.0,
                region: k.1.clone(),
                name: k.2.clone(),
                action,
            });
        }
    }
    // BTreeMap order is dependency order (Kind's order) for creations and updates.
    let mut deletions: Vec<Change> = observed
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .map(|k| Change {
            kind: k.0,
            region: k.1.clone(),
            name: k.2.clone(),
            action: Action::Delete,
        })
        .collect();
    deletions.reverse();
    changes.extend(deletions);
    Plan { changes }
}

/// Writes the plan for people (`json` false) or machines.
pub fn render(plan: &Plan, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, plan)?;
        return writeln!(out);
    }
    if plan.is_empty() {
        return writeln!(out, "No changes: everything is as the config says.");
    }
    for change in &plan.changes {
        let place = change.region.as_deref().unwrap_or("global");
        let (sign, verb) = match &change.action {
            Action::Create => ("+", "create"),
            Action::Update { .. } => ("~", "update"),
            Action::Replace { .. } => ("!", "replace"),
            Action::Delete => ("-", "delete"),
            Action::Release => ("~", "release (untag, keep the data of)"),
        };
        writeln!(
            out,
            "{sign} {verb} {:?} {} in {place}",
            change.kind, change.name
        )?;
        if loses_data(change) {
            writeln!(
                out,
                "    !! DATA LOSS: this deletes the table and every item in it; `up`/`down` refuse \
                 it without --allow-data-loss"
            )?;
        }
        if let Action::Update { changes } | Action::Replace { changes } = &change.action {
            for c in changes {
                writeln!(out, "    {}: {} -> {}", c.field, c.from, c.to)?;
            }
        }
    }
    let count = |f: fn(&Action) -> bool| plan.changes.iter().filter(|c| f(&c.action)).count();
    writeln!(
        out,
        "Plan: {} to create, {} to update, {} to replace, {} to delete.",
        count(|a| matches!(a, Action::Create)),
        count(|a| matches!(a, Action::Update { .. })),
        count(|a| matches!(a, Action::Replace { .. })),
        count(|a| matches!(a, Action::Delete)),
    )?;
    let released = count(|a| matches!(a, Action::Release));
    if released > 0 {
        writeln!(out, "{released} to release (untagged, data kept).")?;
    }
    Ok(())
}

/// Whether applying `change` destroys data: deleting or replacing a table.
pub fn loses_data(change: &Change) -> bool {
    change.kind == Kind::Table && matches!(change.action, Action::Delete | Action::Replace { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(kind: Kind, region: &str, name: &str, props: Value) -> Resource {
        Resource {
            kind,
            region: Some(region.to_owned()),
            name: name.to_owned(),
            props: props.as_object().unwrap().clone().into_iter().collect(),
        }
    }

    fn world() -> Vec<Resource> {
        vec![
            r(
                Kind::Table,
                "us-east-1",
                "todos",
                json!({"stream": "NEW_AND_OLD_IMAGES", "partition_key": {"name": "id"}}),
            ),
            r(
                Kind::LambdaFunction,
                "us-east-1",
                "todos-dev-api",
                json!({"memory_mb": 256}),
            ),
            r(
                Kind::HealthCheck,
                "us-east-1",
                "hc",
                json!({"failure_threshold": 3, "request_interval": 30}),
            ),
            r(
                Kind::DnsRecord,
                "global",
                "api/PRIMARY",
                json!({"routing": "PRIMARY"}),
            ),
        ]
    }

    #[test]
    fn equal_states_plan_nothing_and_extra_observed_properties_are_ignored() {
        let desired = world();
        let mut observed = world();
        observed[1]
            .props
            .insert("last_modified".into(), json!("2026-11-29"));
        let plan = plan(&desired, &observed);
        assert!(plan.is_empty(), "{plan:?}");
        let mut out = Vec::new();
        render(&plan, false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "No changes: everything is as the config says.\n"
        );
    }

    #[test]
    fn one_changed_setting_is_exactly_one_update_of_that_field() {
        let mut desired = world();
        desired[2]
            .props
            .insert("failure_threshold".into(), json!(5));
        let plan = plan(&desired, &world());
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(
            plan.changes[0].action,
            Action::Update {
                changes: vec![FieldChange {
                    field: "failure_threshold".into(),
                    from: json!(3),
                    to: json!(5)
                }]
            }
        );
        let mut out = Vec::new();
        render(&plan, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("~ update HealthCheck hc in us-east-1\n    failure_threshold: 3 -> 5\n"),
            "{text}"
        );
        assert!(text.ends_with("Plan: 0 to create, 1 to update, 0 to replace, 0 to delete.\n"));
    }

    #[test]
    fn immutable_fields_replace_missing_resources_create_and_unwanted_ones_delete() {
        let mut desired = world();
        desired[2]
            .props
            .insert("request_interval".into(), json!(10));
        desired.remove(3);
        let mut observed = world();
        observed.remove(0);
        let plan = plan(&desired, &observed);
        let summary: Vec<(Kind, &str)> = plan
            .changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    match c.action {
                        Action::Create => "create",
                        Action::Update { .. } => "update",
                        Action::Replace { .. } => "replace",
                        Action::Delete => "delete",
                        Action::Release => "release",
                    },
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Kind::Table, "create"),
                (Kind::HealthCheck, "replace"),
                (Kind::DnsRecord, "delete")
            ]
        );
    }

    #[test]
    fn creations_follow_dependencies_and_deletions_run_backwards() {
        let desired = world();
        let plan_up = plan(&desired, &[]);
        let kinds: Vec<Kind> = plan_up.changes.iter().map(|c| c.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted, "dependencies first");
        let plan_down = plan(&[], &desired);
        let kinds: Vec<Kind> = plan_down.changes.iter().map(|c| c.kind).collect();
        sorted.reverse();
        assert_eq!(kinds, sorted, "dependents first");
        let mut out = Vec::new();
        render(&plan_down, true, &mut out).unwrap();
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["changes"][0]["action"], "delete");
        assert_eq!(json["changes"][0]["kind"], "DnsRecord");
    }
}
