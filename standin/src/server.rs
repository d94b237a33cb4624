//! The HTTP face: DynamoDB's and DynamoDB Streams' JSON protocol (`X-Amz-Target`), the latency of each
//! call, and the control endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::expr::{Expressions, Texts};
use crate::store::{
    Cursor, IteratorType, KeyType, Limits, Record, Refused, Store, Table, View, now_ms, table_key,
};
use crate::value::{Item, Value};

/// How long calls take.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Round trip of a call from the same region, by region (`default` for the others).
    pub local: HashMap<String, Duration>,
    /// Round trip of a call when no region is named.
    pub default: Duration,
    /// Added to a call from another region (signed for a region other than the listener's home).
    pub cross_region: Duration,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            local: HashMap::new(),
            default: Duration::from_millis(3),
            cross_region: Duration::from_millis(65),
        }
    }
}

/// Everything the listeners share.
#[derive(Debug)]
pub struct Shared {
    /// The tables.
    pub store: Mutex<Store>,
    /// Latencies.
    pub latency: Latency,
}

impl Shared {
    /// A stand-in with these limits and latencies.
    pub fn new(limits: Limits, latency: Latency) -> Arc<Shared> {
        Arc::new(Shared {
            store: Mutex::new(Store::new(limits)),
            latency,
        })
    }

    /// The store, locked.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct Listener {
    shared: Arc<Shared>,
    home: Option<String>,
}

/// The router of one listener; `home` is the region it stands in for (calls signed for another region
/// get the cross-region latency).
pub fn router(shared: Arc<Shared>, home: Option<String>) -> Router {
    Router::new()
        .route("/", post(api))
        .route("/control/load", post(control_load))
        .route("/control/feed", post(control_feed))
        .route("/control/stats", post(control_stats))
        .route("/control/reset", post(control_reset))
        .route("/control/roll", post(control_roll))
        .with_state(Listener { shared, home })
}

/// The region in a SigV4 `Authorization` header's credential scope.
fn signed_region(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    scope.split('/').nth(2).map(str::to_owned)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
        json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{code}"), "message": message})
            .to_string(),
    )
        .into_response()
}

fn refused(r: Refused) -> Response {
    let status = if r.code == "InternalServerError" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, r.code, &r.message)
}

async fn api(State(listener): State<Listener>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(target) = headers.get("x-amz-target").and_then(|t| t.to_str().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingAction",
            "no X-Amz-Target header: this endpoint speaks the DynamoDB JSON protocol",
        );
    };
    let target = target.to_owned();
    let Some(region) = signed_region(&headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingAuthenticationToken",
            "the request is not signed (SigV4): the stand-in reads the region from the credential scope",
        );
    };
    let latency = &listener.shared.latency;
    let mut delay = latency
        .local
        .get(&region)
        .copied()
        .unwrap_or(latency.default);
    if listener.home.as_ref().is_some_and(|home| *home != region) {
        delay += latency.cross_region;
    }
    // Half of the round trip before the call takes effect, half after.
    if !delay.is_zero() {
        tokio::time::sleep(delay / 2).await;
    }
    let answer = handle(&listener.shared, &region, &target, &body);
    if !delay.is_zero() {
        tokio::time::sleep(delay - delay / 2).await;
    }
    match answer {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
            body,
        )
            .into_response(),
        Err(r) => refused(r),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        Refused::new(
            "SerializationException",
            format!("the request body is not valid: {e}"),
        )
    })
}

fn to_body(value: &impl Serialize) -> Result<Vec<u8>, Refused> {
    serde_json::to_vec(value).map_err(|e| {
        Refused::new(
            "InternalServerError",
            format!("cannot encode the answer: {e}"),
        )
    })
}

/// Dispatches one API call.
pub fn handle(
    shared: &Shared,
    region: &str,
    target: &str,
    body: &[u8],
) -> Result<Vec<u8>, Refused> {
    let (service, operation) = target.split_once('.').unwrap_or(("", target));
    let mut store = shared.lock();
    match (service, operation) {
        ("DynamoDB_20120810", "CreateTable") => create_table(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "DescribeTable") => {
            let input: TableOnly = parse(body)?;
            let table = store.table(region, &input.table_name)?;
            to_body(&json!({ "Table": describe(table) }))
        }
        ("DynamoDB_20120810", "DescribeTimeToLive") => {
            let input: TableOnly = parse(body)?;
            let table = store.table(region, &input.table_name)?;
            to_body(&match &table.ttl {
                Some(name) => {
                    json!({"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": name}})
                }
                None => json!({"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}),
            })
        }
        ("DynamoDB_20120810", "UpdateTimeToLive") => update_ttl(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "GetItem") => get_item(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "PutItem") => put_item(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "DeleteItem") => delete_item(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "UpdateItem") => update_item(&mut store, region, parse(body)?),
        ("DynamoDB_20120810", "Query") => query(&mut store, region, parse(body)?),
        ("DynamoDBStreams_20120810", "DescribeStream") => describe_stream(&mut store, parse(body)?),
        ("DynamoDBStreams_20120810", "GetShardIterator") => {
            get_shard_iterator(&mut store, parse(body)?)
        }
        ("DynamoDBStreams_20120810", "GetRecords") => get_records(&mut store, region, parse(body)?),
        _ => Err(Refused::new(
            "UnknownOperationException",
            format!(
                "the stand-in does not implement {target}; it implements CreateTable, DescribeTable, \
                 DescribeTimeToLive, UpdateTimeToLive, GetItem, PutItem, DeleteItem, UpdateItem, Query, \
                 DescribeStream, GetShardIterator and GetRecords"
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableOnly {
    table_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyElement {
    attribute_name: String,
    key_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttributeDefinition {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamSpecification {
    stream_enabled: bool,
    stream_view_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateTable {
    table_name: String,
    key_schema: Vec<KeyElement>,
    attribute_definitions: Vec<AttributeDefinition>,
    stream_specification: Option<StreamSpecification>,
}

fn create_table(store: &mut Store, region: &str, input: CreateTable) -> Result<Vec<u8>, Refused> {
    let key = table_key(region, &input.table_name);
    if store.tables.contains_key(&key) {
        return Err(Refused::new(
            "ResourceInUseException",
            format!("Table already exists: {}", input.table_name),
        ));
    }
    let typed = |role: &str| -> Result<Option<(String, KeyType)>, Refused> {
        let Some(element) = input.key_schema.iter().find(|k| k.key_type == role) else {
            return Ok(None);
        };
        let definition = input
            .attribute_definitions
            .iter()
            .find(|d| d.attribute_name == element.attribute_name)
            .ok_or_else(|| {
                Refused::new(
                    "ValidationException",
                    format!(
                        "no AttributeDefinitions entry for key attribute {}",
                        element.attribute_name
                    ),
                )
            })?;
        let kind = KeyType::parse(&definition.attribute_type).ok_or_else(|| {
            Refused::new(
                "ValidationException",
                format!(
                    "key attribute type must be S, N or B, not {}",
                    definition.attribute_type
                ),
            )
        })?;
        Ok(Some((element.attribute_name.clone(), kind)))
    };
    let hash = typed("HASH")?
        .ok_or_else(|| Refused::new("ValidationException", "the key schema has no HASH element"))?;
    let range = typed("RANGE")?;
    let view = match &input.stream_specification {
        Some(spec) if spec.stream_enabled => Some(
            spec.stream_view_type
                .as_deref()
                .and_then(View::parse)
                .ok_or_else(|| {
                    Refused::new("ValidationException", "StreamViewType must be KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES")
                })?,
        ),
        _ => None,
    };
    let table = Table::new(region, &input.table_name, hash, range, view, &store.limits);
    let description = describe(&table);
    store.tables.insert(key, table);
    to_body(&json!({ "TableDescription": description }))
}

fn describe(table: &Table) -> Json {
    let mut schema = vec![json!({"AttributeName": table.hash.0, "KeyType": "HASH"})];
    let mut definitions =
        vec![json!({"AttributeName": table.hash.0, "AttributeType": kind(table.hash.1)})];
    if let Some((name, k)) = &table.range {
        schema.push(json!({"AttributeName": name, "KeyType": "RANGE"}));
        definitions.push(json!({"AttributeName": name, "AttributeType": kind(*k)}));
    }
    let mut out = json!({
        "TableName": table.name,
        "TableStatus": "ACTIVE",
        "TableArn": format!("arn:aws:dynamodb:{}:000000000000:table/{}", table.region, table.name),
        "KeySchema": schema,
        "AttributeDefinitions": definitions,
        "ItemCount": table.len(),
        "CreationDateTime": table.created,
        "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    });
    if let Some(stream) = &table.stream {
        out["StreamSpecification"] =
            json!({"StreamEnabled": true, "StreamViewType": stream.view.name()});
        out["LatestStreamArn"] = json!(stream.arn);
        out["LatestStreamLabel"] = json!(stream.label);
    }
    out
}

fn kind(k: KeyType) -> &'static str {
    match k {
        KeyType::S => "S",
        KeyType::N => "N",
        KeyType::B => "B",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TtlSpec {
    enabled: bool,
    attribute_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateTtl {
    table_name: String,
    time_to_live_specification: TtlSpec,
}

fn update_ttl(store: &mut Store, region: &str, input: UpdateTtl) -> Result<Vec<u8>, Refused> {
    let table = store.table(region, &input.table_name)?;
    let spec = input.time_to_live_specification;
    table.ttl = spec.enabled.then(|| spec.attribute_name.clone());
    to_body(
        &json!({"TimeToLiveSpecification": {"Enabled": spec.enabled, "AttributeName": spec.attribute_name}}),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ItemRequest {
    table_name: String,
    key: Option<Item>,
    item: Option<Item>,
    condition_expression: Option<String>,
    update_expression: Option<String>,
    projection_expression: Option<String>,
    expression_attribute_names: HashMap<String, String>,
    expression_attribute_values: HashMap<String, Value>,
    return_values: Option<String>,
    conditional_operator: Option<String>,
    expected: Option<Json>,
    attribute_updates: Option<Json>,
}

impl ItemRequest {
    fn expressions(&self) -> Result<Expressions, Refused> {
        if self.expected.is_some()
            || self.attribute_updates.is_some()
            || self.conditional_operator.is_some()
        {
            return Err(Refused::new(
                "ValidationException",
                "the legacy parameters Expected, AttributeUpdates and ConditionalOperator are not supported by the stand-in; use expressions",
            ));
        }
        Ok(Expressions::parse(
            Texts {
                condition: self.condition_expression.as_deref(),
                update: self.update_expression.as_deref(),
                projection: self.projection_expression.as_deref(),
                key_condition: None,
            },
            &self.expression_attribute_names,
            &self.expression_attribute_values,
        )?)
    }

    fn key(&self) -> Result<&Item, Refused> {
        self.key
            .as_ref()
            .ok_or_else(|| Refused::new("ValidationException", "the request has no Key"))
    }
}

fn get_item(store: &mut Store, region: &str, input: ItemRequest) -> Result<Vec<u8>, Refused> {
    let expressions = input.expressions()?;
    let table = store.table(region, &input.table_name)?;
    match table.get(input.key()?)? {
        Some(item) => to_body(&json!({"Item": expressions.project(item)})),
        None => Ok(b"{}".to_vec()),
    }
}

fn returned(
    which: Option<&str>,
    old: Option<Item>,
    new: Option<Item>,
    updated: &[String],
) -> Result<Json, Refused> {
    let pick = |item: Option<Item>, only: bool| -> Json {
        match item {
            Some(item) => {
                let item: Item = if only {
                    item.into_iter()
                        .filter(|(k, _)| updated.contains(k))
                        .collect()
                } else {
                    item
                };
                json!({"Attributes": item})
            }
            None => json!({}),
        }
    };
    Ok(match which.unwrap_or("NONE") {
        "NONE" => json!({}),
        "ALL_OLD" => pick(old, false),
        "ALL_NEW" => pick(new, false),
        "UPDATED_OLD" => pick(old, true),
        "UPDATED_NEW" => pick(new, true),
        other => {
            return Err(Refused::new(
                "ValidationException",
                format!(
                    "ReturnValues must be NONE, ALL_OLD, ALL_NEW, UPDATED_OLD or UPDATED_NEW, not {other}"
                ),
            ));
        }
    })
}

fn put_item(store: &mut Store, region: &str, input: ItemRequest) -> Result<Vec<u8>, Refused> {
    put_or_delete(store, region, input, "PutItem")
}

fn delete_item(store: &mut Store, region: &str, input: ItemRequest) -> Result<Vec<u8>, Refused> {
    put_or_delete(store, region, input, "DeleteItem")
}

/// PutItem (the request's Item) or DeleteItem (its Key), refused before anything is written when its
/// ReturnValues is not one these operations take.
fn put_or_delete(
    store: &mut Store,
    region: &str,
    input: ItemRequest,
    operation: &str,
) -> Result<Vec<u8>, Refused> {
    let expressions = input.expressions()?;
    if !matches!(
        input.return_values.as_deref(),
        None | Some("NONE" | "ALL_OLD")
    ) {
        return Err(Refused::new(
            "ValidationException",
            format!("{operation}'s ReturnValues must be NONE or ALL_OLD"),
        ));
    }
    let limits = store.limits.clone();
    let table = store.table(region, &input.table_name)?;
    let written = if operation == "PutItem" {
        let item = input
            .item
            .clone()
            .ok_or_else(|| Refused::new("ValidationException", "PutItem needs an Item"))?;
        table.write(&item, true, &expressions, &limits, true, |_| {
            Ok((Some(item.clone()), Vec::new()))
        })?
    } else {
        table.write(input.key()?, false, &expressions, &limits, true, |_| {
            Ok((None, Vec::new()))
        })?
    };
    to_body(&returned(
        input.return_values.as_deref(),
        written.old,
        None,
        &[],
    )?)
}

fn update_item(store: &mut Store, region: &str, input: ItemRequest) -> Result<Vec<u8>, Refused> {
    let expressions = input.expressions()?;
    let limits = store.limits.clone();
    let table = store.table(region, &input.table_name)?;
    let key = input.key()?.clone();
    let written = table.write(&key, false, &expressions, &limits, true, |old| {
        let mut item = old.cloned().unwrap_or_else(|| key.clone());
        let updated = expressions.apply_update(&mut item)?;
        Ok((Some(item), updated))
    })?;
    to_body(&returned(
        input.return_values.as_deref(),
        written.old,
        written.new,
        &written.updated,
    )?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct QueryRequest {
    table_name: String,
    index_name: Option<String>,
    key_condition_expression: Option<String>,
    filter_expression: Option<String>,
    projection_expression: Option<String>,
    expression_attribute_names: HashMap<String, String>,
    expression_attribute_values: HashMap<String, Value>,
    exclusive_start_key: Option<Item>,
    limit: Option<usize>,
    scan_index_forward: Option<bool>,
}

fn query(store: &mut Store, region: &str, input: QueryRequest) -> Result<Vec<u8>, Refused> {
    if input.index_name.is_some() || input.filter_expression.is_some() {
        return Err(Refused::new(
            "ValidationException",
            "the stand-in's Query reads the table itself without a FilterExpression",
        ));
    }
    let expressions = Expressions::parse(
        Texts {
            key_condition: input.key_condition_expression.as_deref(),
            projection: input.projection_expression.as_deref(),
            ..Texts::default()
        },
        &input.expression_attribute_names,
        &input.expression_attribute_values,
    )?;
    let table = store.table(region, &input.table_name)?;
    let Some((name, value)) = expressions.partition_equals() else {
        return Err(Refused::new(
            "ValidationException",
            "the stand-in's Query needs a KeyConditionExpression of the form `partition = :value`",
        ));
    };
    if name != table.hash.0 {
        return Err(Refused::new(
            "ValidationException",
            format!(
                "Query condition missed key schema element: {}",
                table.hash.0
            ),
        ));
    }
    let limit = input.limit.unwrap_or(usize::MAX);
    let (items, more) = table.query(
        value,
        input.exclusive_start_key.as_ref(),
        limit,
        input.scan_index_forward.unwrap_or(true),
    )?;
    let last = if more {
        items.last().map(|i| table.key_attributes(i))
    } else {
        None
    };
    let projected: Vec<Item> = items.iter().map(|i| expressions.project(i)).collect();
    let mut out =
        json!({"Items": projected, "Count": projected.len(), "ScannedCount": projected.len()});
    if let Some(last) = last {
        out["LastEvaluatedKey"] = json!(last);
    }
    to_body(&out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    r#type: String,
    shard_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStream {
    stream_arn: String,
    limit: Option<usize>,
    exclusive_start_shard_id: Option<String>,
    shard_filter: Option<ShardFilter>,
}

fn describe_stream(store: &mut Store, input: DescribeStream) -> Result<Vec<u8>, Refused> {
    let table = store.table_of_stream(&input.stream_arn)?;
    let Some(stream) = &table.stream else {
        return Err(Refused::new(
            "ResourceNotFoundException",
            "the table has no stream",
        ));
    };
    let limit = input.limit.unwrap_or(100).clamp(1, 100);
    let start = match &input.exclusive_start_shard_id {
        Some(id) => stream.shard_index(id).map_or(0, |i| i + 1),
        None => 0,
    };
    let filter = match &input.shard_filter {
        Some(f) if f.r#type == "CHILD_SHARDS" => Some(f.shard_id.as_str()),
        Some(f) => {
            return Err(Refused::new(
                "ValidationException",
                format!("ShardFilter type must be CHILD_SHARDS, not {}", f.r#type),
            ));
        }
        None => None,
    };
    let chosen: Vec<_> = stream.shards[start.min(stream.shards.len())..]
        .iter()
        .filter(|s| filter.is_none_or(|parent| s.parent.as_deref() == Some(parent)))
        .collect();
    let page: Vec<Json> = chosen
        .iter()
        .take(limit)
        .map(|s| {
            let mut range = json!({"StartingSequenceNumber": seq_text(s.start)});
            if let Some(end) = s.end {
                range["EndingSequenceNumber"] = json!(seq_text(end));
            }
            let mut shard = json!({"ShardId": s.id, "SequenceNumberRange": range});
            if let Some(parent) = &s.parent {
                shard["ParentShardId"] = json!(parent);
            }
            shard
        })
        .collect();
    let mut description = json!({
        "StreamArn": stream.arn,
        "StreamLabel": stream.label,
        "StreamStatus": "ENABLED",
        "StreamViewType": stream.view.name(),
        "TableName": table.name,
        "CreationRequestDateTime": table.created,
        "KeySchema": [{"AttributeName": table.hash.0, "KeyType": "HASH"}],
        "Shards": page,
    });
    if chosen.len() > limit
        && let Some(last) = chosen.get(limit - 1)
    {
        description["LastEvaluatedShardId"] = json!(last.id);
    }
    to_body(&json!({ "StreamDescription": description }))
}

/// Sequence numbers as DynamoDB Streams writes them: decimal digits, fixed width.
pub fn seq_text(seq: u128) -> String {
    format!("{seq:021}")
}

fn parse_seq(text: Option<&str>) -> Result<u128, Refused> {
    text.and_then(|t| t.parse::<u128>().ok()).ok_or_else(|| {
        Refused::new(
            "ValidationException",
            "SequenceNumber must be given, as decimal digits",
        )
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIterator {
    stream_arn: String,
    shard_id: String,
    shard_iterator_type: String,
    sequence_number: Option<String>,
}

fn get_shard_iterator(store: &mut Store, input: GetShardIterator) -> Result<Vec<u8>, Refused> {
    let table = store.table_of_stream(&input.stream_arn)?;
    let key = table_key(&table.region, &table.name);
    let Some(stream) = &table.stream else {
        return Err(Refused::new(
            "ResourceNotFoundException",
            "the table has no stream",
        ));
    };
    let shard = stream.shard_index(&input.shard_id).ok_or_else(|| {
        Refused::new(
            "ResourceNotFoundException",
            format!(
                "Requested resource not found: Shard does not exist: {}",
                input.shard_id
            ),
        )
    })?;
    let at = match input.shard_iterator_type.as_str() {
        "TRIM_HORIZON" => IteratorType::TrimHorizon,
        "LATEST" => IteratorType::Latest,
        "AT_SEQUENCE_NUMBER" => IteratorType::At(parse_seq(input.sequence_number.as_deref())?),
        "AFTER_SEQUENCE_NUMBER" => {
            IteratorType::After(parse_seq(input.sequence_number.as_deref())?)
        }
        other => {
            return Err(Refused::new(
                "ValidationException",
                format!(
                    "ShardIteratorType must be TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER, not {other}"
                ),
            ));
        }
    };
    let position = stream.position(shard, &at)?;
    let cursor = Cursor {
        table: key,
        shard,
        position,
        issued_ms: now_ms(),
    };
    to_body(&json!({"ShardIterator": cursor.encode()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecords {
    shard_iterator: String,
    limit: Option<usize>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RecordBody<'a> {
    approximate_creation_date_time: u64,
    keys: &'a Item,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_image: Option<&'a Item>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_image: Option<&'a Item>,
    sequence_number: String,
    size_bytes: usize,
    stream_view_type: &'static str,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(rename = "eventID")]
    event_id: String,
    #[serde(rename = "eventName")]
    event_name: &'static str,
    #[serde(rename = "eventVersion")]
    event_version: &'static str,
    #[serde(rename = "eventSource")]
    event_source: &'static str,
    #[serde(rename = "awsRegion")]
    aws_region: &'a str,
    dynamodb: RecordBody<'a>,
}

#[derive(Serialize)]
struct RecordsOut<'a> {
    #[serde(rename = "Records")]
    records: Vec<RecordOut<'a>>,
    #[serde(rename = "NextShardIterator", skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

fn get_records(store: &mut Store, _region: &str, input: GetRecords) -> Result<Vec<u8>, Refused> {
    let limits = store.limits.clone();
    let cursor = Cursor::decode(&input.shard_iterator).ok_or_else(|| {
        Refused::new(
            "ValidationException",
            "Invalid ShardIterator: not one the stand-in handed out",
        )
    })?;
    let (region, name) = cursor.table.split_once('/').unwrap_or(("", ""));
    let table = store.table(region, name)?;
    let table_region = table.region.clone();
    let Some(stream) = &mut table.stream else {
        return Err(Refused::new(
            "ResourceNotFoundException",
            "the table has no stream",
        ));
    };
    if cursor.shard >= stream.shards.len() {
        return Err(Refused::new(
            "ValidationException",
            "Invalid ShardIterator: no such shard",
        ));
    }
    if now_ms().saturating_sub(cursor.issued_ms) > limits.iterator_lifetime.as_millis() as u64 {
        return Err(Refused::new("ExpiredIteratorException", "Iterator expired"));
    }
    let limit = input.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(Refused::new(
            "ValidationException",
            "Limit must be between 1 and 1000",
        ));
    }
    if !stream.admit_read(cursor.shard, limits.get_records_per_second) {
        table.stats.throttled_reads += 1;
        return Err(Refused::new(
            "LimitExceededException",
            "Rate exceeded for shard (the stand-in's --get-records-per-second)",
        ));
    }
    let shard = &stream.shards[cursor.shard];
    let mut taken: Vec<&Record> = Vec::new();
    let mut bytes = 0;
    for record in shard.records.iter().skip(cursor.position) {
        if taken.len() == limit || (bytes + record.size > 1024 * 1024 && !taken.is_empty()) {
            break;
        }
        bytes += record.size;
        taken.push(record);
    }
    let position = cursor.position + taken.len();
    let ended = shard.end.is_some() && position >= shard.records.len();
    let next = (!ended).then(|| {
        Cursor {
            position,
            issued_ms: now_ms(),
            ..cursor.clone()
        }
        .encode()
    });
    let view = stream.view.name();
    let out = RecordsOut {
        records: taken
            .iter()
            .map(|r| RecordOut {
                event_id: format!("{:032x}", r.seq),
                event_name: r.event,
                event_version: "1.1",
                event_source: "aws:dynamodb",
                aws_region: &table_region,
                dynamodb: RecordBody {
                    approximate_creation_date_time: r.created,
                    keys: &r.keys,
                    new_image: r.new.as_ref(),
                    old_image: r.old.as_ref(),
                    sequence_number: seq_text(r.seq),
                    size_bytes: r.size,
                    stream_view_type: view,
                },
            })
            .collect(),
        next,
    };
    let count = out.records.len() as u64;
    let body = to_body(&out)?;
    table.stats.get_records += 1;
    table.stats.records_read += count;
    Ok(body)
}

// ---- the control endpoint ----

#[derive(Deserialize)]
struct LoadRequest {
    region: String,
    table: String,
    count: u64,
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default)]
    first: u64,
}

fn default_size() -> usize {
    200
}

fn default_prefix() -> String {
    "k".to_owned()
}

fn control_error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message}).to_string(),
    )
        .into_response()
}

fn control_json(body: Bytes) -> Result<Json, String> {
    serde_json::from_slice(&body).map_err(|e| format!("the body is not JSON: {e}"))
}

fn control_parse<T: for<'a> Deserialize<'a>>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("the body is not what this endpoint takes: {e}"))
}

async fn control_load(State(listener): State<Listener>, body: Bytes) -> Response {
    let input: LoadRequest = match control_parse(&body) {
        Ok(i) => i,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    let started = std::time::Instant::now();
    let result = listener.shared.lock().load(
        &input.region,
        &input.table,
        &input.prefix,
        input.first,
        input.count,
        input.size,
    );
    match result {
        Ok(n) => axum::Json(json!({"loaded": n, "seconds": started.elapsed().as_secs_f64()}))
            .into_response(),
        Err(r) => control_error(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", r.code, r.message),
        ),
    }
}

#[derive(Deserialize)]
struct FeedRequest {
    region: String,
    table: String,
    rate: u64,
    seconds: f64,
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default = "default_prefix")]
    prefix: String,
}

async fn control_feed(State(listener): State<Listener>, body: Bytes) -> Response {
    let input: FeedRequest = match control_parse(&body) {
        Ok(i) => i,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    if input.rate == 0 || !(0.0..=86_400.0).contains(&input.seconds) {
        return control_error(
            StatusCode::BAD_REQUEST,
            "rate must be positive and seconds within 0..=86400".into(),
        );
    }
    if let Err(r) = listener.shared.lock().table(&input.region, &input.table) {
        return control_error(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", r.code, r.message),
        );
    }
    let total = (input.rate as f64 * input.seconds) as u64;
    let shared = listener.shared.clone();
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while sent < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * input.rate as f64) as u64).min(total);
            if due > sent {
                let result = shared.lock().load(
                    &input.region,
                    &input.table,
                    &input.prefix,
                    sent,
                    due - sent,
                    input.size,
                );
                if result.is_err() {
                    return;
                }
                sent = due;
            }
        }
    });
    axum::Json(json!({"feeding": total, "rate": input.rate})).into_response()
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn control_stats(State(listener): State<Listener>, body: Bytes) -> Response {
    let input = match control_json(body) {
        Ok(i) => i,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    let (Some(region), Some(name)) = (input["region"].as_str(), input["table"].as_str()) else {
        return control_error(StatusCode::BAD_REQUEST, "give region and table".into());
    };
    let mut store = listener.shared.lock();
    let table = match store.table(region, name) {
        Ok(t) => t,
        Err(r) => return control_error(StatusCode::BAD_REQUEST, r.message),
    };
    let stats = table.stats.clone();
    let items = table.len();
    let records: usize = table
        .stream
        .as_ref()
        .map_or(0, |s| s.shards.iter().map(|x| x.records.len()).sum());
    let shards = table.stream.as_ref().map_or(0, |s| s.shards.len());
    drop(store);
    let mut lag = stats.lag_ms.clone();
    lag.sort_unstable();
    axum::Json(json!({
        "items": items,
        "stream_records": records,
        "shards": shards,
        "writes": stats.writes,
        "conditional_failures": stats.conditional_failures,
        "throttled_writes": stats.throttled_writes,
        "get_records": stats.get_records,
        "throttled_reads": stats.throttled_reads,
        "records_read": stats.records_read,
        "first_write_ms": stats.first_write_ms,
        "last_write_ms": stats.last_write_ms,
        "lag_ms": {
            "count": lag.len(),
            "p50": percentile(&lag, 50.0),
            "p99": percentile(&lag, 99.0),
            "max": lag.last().copied().unwrap_or(0),
        },
    }))
    .into_response()
}

async fn control_reset(State(listener): State<Listener>, body: Bytes) -> Response {
    let input = match control_json(body) {
        Ok(i) => i,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    let (Some(region), Some(name)) = (input["region"].as_str(), input["table"].as_str()) else {
        return control_error(StatusCode::BAD_REQUEST, "give region and table".into());
    };
    match listener.shared.lock().table(region, name) {
        Ok(t) => {
            t.stats = Default::default();
            axum::Json(json!({"reset": true})).into_response()
        }
        Err(r) => control_error(StatusCode::BAD_REQUEST, r.message),
    }
}

async fn control_roll(State(listener): State<Listener>, body: Bytes) -> Response {
    let input = match control_json(body) {
        Ok(i) => i,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    let (Some(region), Some(name)) = (input["region"].as_str(), input["table"].as_str()) else {
        return control_error(StatusCode::BAD_REQUEST, "give region and table".into());
    };
    let split = input["split"].as_bool().unwrap_or(false);
    match listener.shared.lock().table(region, name) {
        Ok(t) => axum::Json(json!({"new_shards": t.roll_shards(split)})).into_response(),
        Err(r) => control_error(StatusCode::BAD_REQUEST, r.message),
    }
}
