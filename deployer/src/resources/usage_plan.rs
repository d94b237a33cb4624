//! The usage plan of the stage in each region (throttling, quota, the API stage it covers, tags) and
//! the API key's membership in it.
//!
//! API Gateway refuses to delete a plan that still covers API stages, so a deletion first removes
//! them from the plan.

use std::collections::BTreeMap;

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{
    ApiStage, Op, PatchOperation, QuotaPeriodType, QuotaSettings, ThrottleSettings, UsagePlan,
};
use serde_json::{Value, json};

use super::rest_api::{one_or_all, resource, retag, tagging_arn};
use super::{DeployError, Scope, observed_str, tag_pairs};
use crate::desired::{Kind, Resource};
use crate::plan::{Action, Change};

/// All usage plans in the region.
async fn list_plans(client: &Client, region: &str) -> Result<Vec<UsagePlan>, DeployError> {
    super::apigateway_pages(|position| async move {
        let page = client
            .get_usage_plans()
            .limit(500)
            .set_position(position)
            .send()
            .await
            .map_err(|e| {
                DeployError::aws(
                    "apigateway:GET (GetUsagePlans)",
                    &format!("usage plans in {region}"),
                    &e,
                )
            })?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await
}

fn tags_of(plan: &UsagePlan) -> BTreeMap<String, String> {
    plan.tags()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// One plan in the desired form.
fn read(region: &str, plan: &UsagePlan) -> Resource {
    let stages = plan.api_stages();
    let quota = plan.quota().map_or(
        Value::Null,
        |q| json!({ "limit": q.limit(), "period": q.period().map(QuotaPeriodType::as_str) }),
    );
    let props = json!({
        "stage": one_or_all(stages.iter().map(|s| json!(s.stage())).collect()),
        "api": one_or_all(stages.iter().map(|s| json!(s.api_id())).collect()),
        "rate_limit": plan.throttle().map(ThrottleSettings::rate_limit),
        "burst_limit": plan.throttle().map(ThrottleSettings::burst_limit),
        "quota": quota,
        "tags": Scope::managed_tags(&tags_of(plan)),
        "id": plan.id(),
    });
    resource(
        Kind::UsagePlan,
        region,
        plan.name().unwrap_or_default(),
        props,
    )
}

/// The usage plans of this app and stage in `region`: those named in `wanted` (adopted even without
/// tags) and any other plan tagged with the scope (to be deleted). Props as desired (`api` is the
/// REST API's ID) plus `id`. Of several plans with one name, the one tagged with the scope is taken.
pub async fn observe(
    client: &Client,
    region: &str,
    scope: &Scope,
    wanted: &[String],
) -> Result<Vec<Resource>, DeployError> {
    let mut chosen: BTreeMap<String, (bool, UsagePlan)> = BTreeMap::new();
    for plan in list_plans(client, region).await? {
        let name = plan.name().unwrap_or_default().to_owned();
        let owned = scope.owns(&tags_of(&plan));
        if !owned && !wanted.contains(&name) {
            continue;
        }
        if chosen.get(&name).is_none_or(|(had, _)| owned && !had) {
            chosen.insert(name, (owned, plan));
        }
    }
    Ok(chosen
        .values()
        .map(|(_, plan)| read(region, plan))
        .collect())
}

/// The membership named `name` (`{app}-{stage}-plan-key`): the observed API key
/// `{app}-{stage}-key` (among `keys`) in the observed usage plan `{app}-{stage}-plan` (among
/// `plans`), if both exist and the key is in the plan. Props: `plan` (the plan's ID) and `key` (the
/// key's ID). Other keys in the plan are not the deployer's and are never returned.
pub async fn observe_key(
    client: &Client,
    region: &str,
    name: &str,
    plans: &[Resource],
    keys: &[Resource],
) -> Result<Option<Resource>, DeployError> {
    let id = format!("UsagePlanKey/{region}/{name}");
    let plan_name = name.strip_suffix("-key").unwrap_or(name);
    let key_name = format!(
        "{}-key",
        plan_name.strip_suffix("-plan").unwrap_or(plan_name)
    );
    let find = |list: &[Resource], kind: Kind, wanted: &str| {
        list.iter()
            .find(|r| r.kind == kind && r.name == wanted)
            .map(|r| observed_str(Some(r), "id").to_owned())
            .filter(|id| !id.is_empty())
    };
    let (Some(plan_id), Some(key_id)) = (
        find(plans, Kind::UsagePlan, plan_name),
        find(keys, Kind::ApiKey, &key_name),
    ) else {
        return Ok(None);
    };
    let (plan, id) = (&plan_id, &id);
    let members = super::apigateway_pages(|position| async move {
        let page = client
            .get_usage_plan_keys()
            .usage_plan_id(plan)
            .limit(500)
            .set_position(position)
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:GET (GetUsagePlanKeys)", id, &e))?;
        Ok((page.items().to_vec(), page.position().map(str::to_owned)))
    })
    .await?;
    Ok(members
        .iter()
        .any(|k| k.id() == Some(key_id.as_str()))
        .then(|| {
            resource(
                Kind::UsagePlanKey,
                region,
                name,
                json!({ "plan": plan_id, "key": key_id }),
            )
        }))
}

fn text<'a>(props: &'a BTreeMap<String, Value>, field: &str) -> &'a str {
    props.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The desired `apiId:stage`, refusing while the REST API does not exist yet.
fn api_stage(want: &Resource, id: &str) -> Result<(String, String), DeployError> {
    let api = text(&want.props, "api");
    let stage = text(&want.props, "stage");
    if api.is_empty() || api.starts_with("ref:") || stage.is_empty() {
        return Err(DeployError::refused(
            "apigateway:POST (CreateUsagePlan)",
            id,
            "the REST API does not exist yet",
        ));
    }
    Ok((api.to_owned(), stage.to_owned()))
}

fn patch(op: Op, path: &str, value: Option<String>) -> PatchOperation {
    PatchOperation::builder()
        .op(op)
        .path(path)
        .set_value(value)
        .build()
}

/// The plan's current API stages as `apiId:stage`.
async fn current_stages(
    client: &Client,
    plan_id: &str,
    id: &str,
) -> Result<Vec<String>, DeployError> {
    let plan = client
        .get_usage_plan()
        .usage_plan_id(plan_id)
        .send()
        .await
        .map_err(|e| DeployError::aws("apigateway:GET (GetUsagePlan)", id, &e))?;
    Ok(plan
        .api_stages()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s.api_id().unwrap_or_default(),
                s.stage().unwrap_or_default()
            )
        })
        .collect())
}

/// The patch operations that make the plan's `field` what `want` says: a setting the observed plan
/// lacks is added, one it has is replaced, one no longer wanted is removed.
fn settings_patch(
    field: &str,
    want: &Resource,
    observed: Option<&Resource>,
) -> Vec<PatchOperation> {
    let had = |f: &str| {
        observed
            .and_then(|o| o.props.get(f))
            .is_some_and(|v| !v.is_null())
    };
    let op = |f: &str| if had(f) { Op::Replace } else { Op::Add };
    let p = &want.props;
    match field {
        "rate_limit" => match p.get("rate_limit").and_then(Value::as_f64) {
            Some(rate) => vec![patch(
                op("rate_limit"),
                "/throttle/rateLimit",
                Some(rate.to_string()),
            )],
            None => vec![patch(Op::Remove, "/throttle", None)],
        },
        "burst_limit" => match p.get("burst_limit").and_then(Value::as_i64) {
            Some(burst) => vec![patch(
                op("burst_limit"),
                "/throttle/burstLimit",
                Some(burst.to_string()),
            )],
            None => vec![patch(Op::Remove, "/throttle", None)],
        },
        "quota" => match p.get("quota").filter(|q| !q.is_null()) {
            Some(quota) => {
                let mut ops = vec![patch(
                    op("quota"),
                    "/quota/limit",
                    Some(quota["limit"].as_i64().unwrap_or_default().to_string()),
                )];
                if let Some(period) = quota["period"].as_str() {
                    ops.push(patch(op("quota"), "/quota/period", Some(period.to_owned())));
                }
                ops
            }
            None => vec![patch(Op::Remove, "/quota", None)],
        },
        _ => Vec::new(),
    }
}

/// Applies one planned change to a usage plan. `desired` has its references resolved (`api` is the
/// REST API's ID); `observed` carries the plan's `id`.
pub async fn apply(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("UsagePlan/{region}/{}", change.name);
    let plan_id = observed_str(observed, "id");
    match (&change.action, desired) {
        (Action::Create, Some(want)) => {
            let (api, stage) = api_stage(want, &id)?;
            let p = &want.props;
            let throttle = match (
                p.get("rate_limit").and_then(Value::as_f64),
                p.get("burst_limit")
                    .and_then(Value::as_i64)
                    .and_then(|b| i32::try_from(b).ok()),
            ) {
                (None, None) => None,
                (rate, burst) => Some(
                    ThrottleSettings::builder()
                        .set_rate_limit(rate)
                        .set_burst_limit(burst)
                        .build(),
                ),
            };
            let quota = p.get("quota").filter(|q| !q.is_null()).map(|q| {
                QuotaSettings::builder()
                    .set_limit(q["limit"].as_i64().and_then(|l| i32::try_from(l).ok()))
                    .set_period(q["period"].as_str().map(QuotaPeriodType::from))
                    .build()
            });
            client
                .create_usage_plan()
                .name(&want.name)
                .api_stages(ApiStage::builder().api_id(api).stage(stage).build())
                .set_throttle(throttle)
                .set_quota(quota)
                .set_tags(Some(tag_pairs(p).into_iter().collect()))
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:POST (CreateUsagePlan)", &id, &e))?;
            Ok(())
        }
        (Action::Update { changes }, Some(want)) => {
            if plan_id.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            let mut ops = Vec::new();
            let mut stages_changed = false;
            let mut tags_changed = false;
            for c in changes {
                match c.field.as_str() {
                    "api" | "stage" => stages_changed = true,
                    "tags" => tags_changed = true,
                    field @ ("rate_limit" | "burst_limit" | "quota") => {
                        ops.extend(settings_patch(field, want, observed));
                    }
                    other => {
                        return Err(DeployError::refused(
                            "apigateway:PATCH (UpdateUsagePlan)",
                            &id,
                            format!("{other} is not a setting of a usage plan"),
                        ));
                    }
                }
            }
            if stages_changed {
                let (api, stage) = api_stage(want, &id)?;
                let wanted = format!("{api}:{stage}");
                let current = current_stages(client, plan_id, &id).await?;
                for other in current.iter().filter(|s| **s != wanted) {
                    ops.push(patch(Op::Remove, "/apiStages", Some(other.clone())));
                }
                if !current.contains(&wanted) {
                    ops.push(patch(Op::Add, "/apiStages", Some(wanted)));
                }
            }
            if !ops.is_empty() {
                client
                    .update_usage_plan()
                    .usage_plan_id(plan_id)
                    .set_patch_operations(Some(ops))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("apigateway:PATCH (UpdateUsagePlan)", &id, &e))?;
            }
            if tags_changed {
                let arn = tagging_arn(region, &format!("/usageplans/{plan_id}"));
                retag(client, &arn, want, observed, &id).await?;
            }
            Ok(())
        }
        (Action::Delete, _) => {
            if plan_id.is_empty() {
                return Err(DeployError::unplanned(&id));
            }
            let ops: Vec<PatchOperation> = current_stages(client, plan_id, &id)
                .await?
                .into_iter()
                .map(|s| patch(Op::Remove, "/apiStages", Some(s)))
                .collect();
            if !ops.is_empty() {
                client
                    .update_usage_plan()
                    .usage_plan_id(plan_id)
                    .set_patch_operations(Some(ops))
                    .send()
                    .await
                    .map_err(|e| DeployError::aws("apigateway:PATCH (UpdateUsagePlan)", &id, &e))?;
            }
            client
                .delete_usage_plan()
                .usage_plan_id(plan_id)
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteUsagePlan)", &id, &e))?;
            Ok(())
        }
        _ => Err(DeployError::unplanned(&id)),
    }
}

/// Applies one planned change to the key's membership in the plan. A membership cannot change in
/// place: an update removes the old one and adds the new one.
pub async fn apply_key(
    client: &Client,
    change: &Change,
    desired: Option<&Resource>,
    observed: Option<&Resource>,
) -> Result<(), DeployError> {
    let region = change.region.as_deref().unwrap_or_default();
    let id = format!("UsagePlanKey/{region}/{}", change.name);
    let remove = || async {
        let (plan, key) = (
            observed_str(observed, "plan"),
            observed_str(observed, "key"),
        );
        if plan.is_empty() || key.is_empty() {
            return Err(DeployError::unplanned(&id));
        }
        client
            .delete_usage_plan_key()
            .usage_plan_id(plan)
            .key_id(key)
            .send()
            .await
            .map_err(|e| DeployError::aws("apigateway:DELETE (DeleteUsagePlanKey)", &id, &e))?;
        Ok(())
    };
    let add = |want: &Resource| {
        let plan = text(&want.props, "plan").to_owned();
        let key = text(&want.props, "key").to_owned();
        let id = id.clone();
        async move {
            if [&plan, &key]
                .iter()
                .any(|v| v.is_empty() || v.starts_with("ref:"))
            {
                return Err(DeployError::refused(
                    "apigateway:POST (CreateUsagePlanKey)",
                    &id,
                    "the usage plan or the API key does not exist yet",
                ));
            }
            client
                .create_usage_plan_key()
                .usage_plan_id(plan)
                .key_id(key)
                .key_type("API_KEY")
                .send()
                .await
                .map_err(|e| DeployError::aws("apigateway:POST (CreateUsagePlanKey)", &id, &e))?;
            Ok(())
        }
    };
    match (&change.action, desired) {
        (Action::Create, Some(want)) => add(want).await,
        (Action::Update { .. } | Action::Replace { .. }, Some(want)) => {
            remove().await?;
            add(want).await
        }
        (Action::Delete, _) => remove().await,
        _ => Err(DeployError::unplanned(&id)),
    }
}
