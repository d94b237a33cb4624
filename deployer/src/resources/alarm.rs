//! CloudWatch alarms on the replicator's metrics, in the region where it runs.
//!
//! The SDK crate is pinned to its last release that speaks CloudWatch's AWS Query protocol (1.99):
//! later ones speak only Smithy RPC v2 CBOR, which the local AWS (moto 5.2) cannot read. CloudWatch
//! serves both, so the requests AWS sees differ only in their encoding.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{
    AlarmType, ComparisonOperator, Dimension, MetricAlarm, Statistic, Tag,
};
use serde_json::{Value, json};

use super::{DeployError, Scope, int, pairs, strings, tag_pairs, text};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// Every metric alarm in `region` whose name starts with `prefix` (the deployment's replicator
/// alarms: wanted ones and ones no longer wanted), in the desired form with its `arn`; whether each
/// is ours is read from its tags.
pub async fn observe(
    client: &Client,
    region: &str,
    prefix: &str,
) -> Result<Vec<Resource>, DeployError> {
    let id = format!("Alarm/{region}/{prefix}*");
    let mut alarms = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .describe_alarms()
            .alarm_name_prefix(prefix)
            .alarm_types(AlarmType::MetricAlarm)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| DeployError::aws("cloudwatch:DescribeAlarms", &id, &e))?;
        alarms.extend(out.metric_alarms().iter().cloned());
        match out.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => break,
        }
    }
    let mut found = Vec::new();
    for alarm in alarms {
        let Some(name) = alarm.alarm_name().map(str::to_owned) else {
            continue;
        };
        let arn = alarm.alarm_arn().unwrap_or_default().to_owned();
        let listed = match client
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
        {
            Ok(listed) => listed,
            // Deleted between the two calls: it no longer exists.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                continue;
            }
            Err(e) => {
                return Err(DeployError::aws(
                    "cloudwatch:ListTagsForResource",
                    &format!("Alarm/{region}/{name}"),
                    &e,
                ));
            }
        };
        let tags: BTreeMap<String, String> = listed
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        let mut props = observed_props(&alarm);
        props["tags"] = Scope::managed_tags(&tags);
        props["arn"] = json!(arn);
        found.push(Resource::from_props(
            Kind::Alarm,
            Some(region.to_owned()),
            name,
            props,
        ));
    }
    Ok(found)
}

/// An alarm's managed properties as `desired` writes them. Its OK actions are its alarm actions
/// (the deployer sets both to the same topics); a difference shows as a change of `actions`.
fn observed_props(alarm: &MetricAlarm) -> Value {
    let dimensions: serde_json::Map<String, Value> = alarm
        .dimensions()
        .iter()
        .filter_map(|d| Some((d.name()?.to_owned(), json!(d.value()?))))
        .collect();
    let sorted = |list: &[String]| {
        let mut list = list.to_vec();
        list.sort();
        list
    };
    let (alarm_actions, ok_actions) = (sorted(alarm.alarm_actions()), sorted(alarm.ok_actions()));
    let actions = if ok_actions == alarm_actions {
        json!(alarm_actions)
    } else {
        json!({ "alarm": alarm_actions, "ok": ok_actions })
    };
    json!({
        "namespace": alarm.namespace(),
        "metric": alarm.metric_name(),
        "dimensions": dimensions,
        "statistic": alarm.statistic().map(|s| s.as_str()),
        "period": alarm.period(),
        "evaluation_periods": alarm.evaluation_periods(),
        "datapoints_to_alarm": alarm.datapoints_to_alarm(),
        "threshold": alarm.threshold(),
        "comparison": alarm.comparison_operator().map(|c| c.as_str()),
        "treat_missing_data": alarm.treat_missing_data(),
        "actions": actions,
        "description": alarm.alarm_description(),
    })
}

fn tags(props: &BTreeMap<String, Value>) -> Vec<Tag> {
    tag_pairs(props)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// PutMetricAlarm with every managed property of `want` (it creates the alarm or replaces its
/// settings); tags only when `with_tags` (CloudWatch applies them on creation only).
async fn put(
    client: &Client,
    name: &str,
    want: &Resource,
    with_tags: bool,
) -> Result<(), DeployError> {
    let id = format!(
        "Alarm/{}/{name}",
        want.region.as_deref().unwrap_or_default()
    );
    let p = &want.props;
    let dimensions: Vec<Dimension> = pairs(p, "dimensions")
        .into_iter()
        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
        .collect();
    let actions = strings(p, "actions");
    client
        .put_metric_alarm()
        .alarm_name(name)
        .set_alarm_description(text(p, "description").map(str::to_owned))
        .set_namespace(text(p, "namespace").map(str::to_owned))
        .set_metric_name(text(p, "metric").map(str::to_owned))
        .set_dimensions(Some(dimensions))
        .set_statistic(text(p, "statistic").map(Statistic::from))
        .set_period(int(p, "period"))
        .set_evaluation_periods(int(p, "evaluation_periods"))
        .set_datapoints_to_alarm(int(p, "datapoints_to_alarm"))
        .set_threshold(p.get("threshold").and_then(Value::as_f64))
        .set_comparison_operator(text(p, "comparison").map(ComparisonOperator::from))
        .set_treat_missing_data(text(p, "treat_missing_data").map(str::to_owned))
        .actions_enabled(true)
        .set_alarm_actions(Some(actions.clone()))
        .set_ok_actions(Some(actions))
        .set_tags(with_tags.then(|| tags(p)))
        .send()
        .await
        .map_err(|e| DeployError::aws("cloudwatch:PutMetricAlarm", &id, &e))?;
    Ok(())
}

/// Applies one planned change to the alarm.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let name = &change.name;
    let id = format!(
        "Alarm/{}/{name}",
        change.region.as_deref().unwrap_or_default()
    );
    match (&change.action, desired) {
        (Action::Create, Some(want)) => put(client, name, want, true).await,
        (Action::Update { changes } | Action::Replace { changes }, Some(want)) => {
            if changes.iter().any(|c| c.field != "tags") {
                put(client, name, want, false).await?;
            }
            if changes.iter().any(|c| c.field == "tags") {
                client
                    .tag_resource()
                    .resource_arn(super::observed_str(observed, "arn"))
                    .set_tags(Some(tags(&want.props)))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("cloudwatch:TagResource", &id, &e))?;
            }
            Ok(())
        }
        (Action::Delete, _) => {
            client
                .delete_alarms()
                .alarm_names(name)
                .send()
                .await
                .map_err(|e| DeployError::aws("cloudwatch:DeleteAlarms", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}
