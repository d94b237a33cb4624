//! The sample application: a todo REST API, one axum router served by AWS Lambda (behind API Gateway)
//! or by a local HTTP server. Every write carries the last-writer-wins stamps the replicator relies on.
//!
//! # Layout
//! - `todo`: the todo model, its DynamoDB item form (with `rep_version`, `rep_origin`, tombstones, and
//!   the `Idempotency-Key` request that created it), validation of ids, text and the key attribute's
//!   name.
//! - `idempotency`: the `Idempotency-Key` header, the todo id a key stands for, the request hash.
//! - `store`: the [`store::TodoStore`] seam: DynamoDB (with the table's key attribute named by
//!   configuration, `id` by default), and in memory for tests.
//! - `api` (this file): the router, its middleware (region header, API key for the local server), the
//!   handlers, and the JSON error type.
//!
//! # Invariants
//! - Every write is conditional on what was read (absent, or the stored version) and carries a version
//!   from the process's hybrid logical clock that is above the stored one: updates are never lost
//!   inside a region and always win over what they replace. `PUT` replaces the whole todo and `PATCH`
//!   merges fields into it; both write this way, and with `If-Match` only over the versions named.
//! - A create with an `Idempotency-Key` writes the todo whose id is derived from the key, only if no
//!   item has that id: a retry (in either region, once the first create has been replicated there)
//!   finds it and answers it with 200 instead of creating a second one; the same key with another body
//!   is a 422. Only the todos table is used.
//! - A stored version this process's clock cannot write above (more than
//!   [`tworegion_common::version::MAX_AHEAD_MILLIS`] ahead of it) is a server-side condition: 503 with
//!   `Retry-After`, never adopted, never blamed on the client.
//! - Deletes write tombstones; reads and lists never show them.
//! - No input produces a 500 or a panic: bad requests get a 4xx naming the field, an unreachable table
//!   a 503 with `Retry-After`. `openapi.json` lists every status each operation can answer.

pub mod idempotency;
pub mod store;
pub mod todo;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tworegion_common::version::{
    HybridClock, ImplausibleVersion, MAX_AHEAD_MILLIS, MAX_VERSION, Version, VersionAttributes,
    system_millis,
};

use crate::store::{Expect, StoreError, TodoStore};
use crate::todo::{
    CreatedWith, Todo, from_item, rfc3339, to_item, tombstone, validate_id, validate_text,
};

/// The header that names the region that served a response.
pub const REGION_HEADER: &str = "x-tworegion-region";

/// Largest request body, bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// The response header that marks the answer to a retried create (`Idempotency-Key`).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// `Retry-After` of a 503 because the table could not be reached, seconds.
pub const RETRY_UNAVAILABLE_SECS: u64 = 1;

/// Longest `Retry-After` of a 503 because a stored version is ahead of this process's clock, seconds.
pub const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// Every route and its methods; the OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/todos", &["get", "post"]),
    ("/todos/{id}", &["get", "put", "patch", "delete"]),
    ("/todos/health", &["get"]),
    ("/openapi.json", &["get"]),
];

/// The OpenAPI 3 document, kept in the repository beside the crate.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The maintenance switch: health answers 503 on purpose (failover drills).
#[derive(Debug, Default)]
pub struct Maintenance {
    /// On from the start (`--maintenance` / `SAMPLE_APP_MAINTENANCE=true`).
    pub flag: AtomicBool,
    /// On while this file exists (`--maintenance-file`), checked on every health call.
    pub file: Option<PathBuf>,
}

impl Maintenance {
    /// Whether the switch is on.
    pub fn on(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.file.as_ref().is_some_and(|f| f.exists())
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct App<S> {
    /// The table.
    pub store: S,
    /// The region this app serves (the `rep_origin` of its writes).
    pub region: String,
    /// The table's name, for health answers.
    pub table: String,
    /// Version source.
    pub clock: HybridClock,
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// How long tombstones live before TTL removes them.
    pub tombstone_retention: Duration,
    /// The key the local server requires in `x-api-key`; `None` on Lambda (API Gateway checks it).
    pub api_key: Option<String>,
    /// The maintenance switch.
    pub maintenance: Maintenance,
    /// Longest wait for the table in a health check.
    pub health_timeout: Duration,
}

/// An error answer: a status and a JSON `{"message": ...}` that says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
    /// `Retry-After`, seconds (503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("todo {id} not found"))
    }

    /// A stored item that is not a todo: it is reported, never written back.
    fn damaged(id: &str, problem: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("todo {id}: the stored item is damaged ({problem}); repair it in the table"),
        )
    }

    /// The answer when the clock refuses to write above a stored version: a damaged item if the
    /// version cannot be one (2^53 or more), otherwise a 503 until this process's clock has caught up
    /// enough, with `Retry-After` (at most [`MAX_RETRY_AFTER_SECS`]).
    fn unwritable_version(id: &str, attribute: &str, error: &ImplausibleVersion) -> ApiError {
        if error.seen.0 >= MAX_VERSION {
            return ApiError::damaged(
                id,
                &format!("{attribute}: {} is not below 2^53", error.seen),
            );
        }
        let ahead_ms = error.seen.millis().saturating_sub(error.wall_millis);
        let wait_ms = ahead_ms.saturating_sub(MAX_AHEAD_MILLIS);
        let retry = wait_ms.div_ceil(1000).clamp(1, MAX_RETRY_AFTER_SECS);
        tracing::error!(
            todo = id,
            version = %error.seen,
            ahead_ms,
            "A stored version is ahead of this region's clock; the todo cannot be changed until the clock catches up. Check both regions' clocks and the item."
        );
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "todo {id}: its stored version {} is {} s ahead of this server's clock, more than the {} s a \
                 version may lead, so the server cannot yet write a version above it; retry after {retry} s. \
                 The request is fine: a region's clock, or the stored item, is wrong",
                error.seen,
                ahead_ms / 1000,
                MAX_AHEAD_MILLIS / 1000,
            ),
            retry_after: Some(retry),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                "the todo changed while it was being written; read it again and retry",
            ),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "The table is unavailable.");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the table is unavailable; try again shortly".to_owned(),
                    retry_after: Some(RETRY_UNAVAILABLE_SECS),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "message": self.message }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON object body: checks the content type and size, and parses it.
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl<St: Send + Sync> FromRequest<St> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "body: send a JSON object with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body: larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad(format!("body: {}", rejection.body_text()))
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::bad("body: must be a JSON object")),
            Err(error) => Err(ApiError::bad(format!("body: not valid JSON ({error})"))),
        }
    }
}

/// The fields of a todo body; unknown fields and wrong types are errors that name the field.
struct Fields {
    text: Option<String>,
    checked: Option<bool>,
}

fn fields(body: serde_json::Map<String, Value>) -> Result<Fields, ApiError> {
    let mut fields = Fields {
        text: None,
        checked: None,
    };
    for (name, value) in body {
        match (name.as_str(), value) {
            ("text", Value::String(text)) => {
                validate_text(&text).map_err(ApiError::bad)?;
                fields.text = Some(text);
            }
            ("text", _) => return Err(ApiError::bad("text: must be a string")),
            ("checked", Value::Bool(b)) => fields.checked = Some(b),
            ("checked", _) => return Err(ApiError::bad("checked: must be true or false")),
            (other, _) => {
                return Err(ApiError::bad(format!(
                    "{}: unknown field; a todo has text and checked",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(fields)
}

fn etag(version: Version) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// What `If-Match` allows: any version (`*`), or one of a list of strong ETags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pinned {
    Any,
    OneOf(Vec<Version>),
}

/// Digits in a strong ETag: a version is below 2^53, so it has at most 16.
const MAX_ETAG_DIGITS: usize = 16;

/// `If-Match` (RFC 9110 13.1.1), `None` if absent: `*`, or a comma-separated list of entity tags,
/// each either strong, `"<version>"` as the ETag header gives it (1 to 16 digits), or weak, `W/"..."`
/// (any visible ASCII but `"` inside, commas included), which is accepted and never matches (If-Match
/// compares strongly). Empty list elements are ignored, as RFC 9110 5.6.1 asks; several `If-Match`
/// fields are one list. Anything else is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<Pinned>, ApiError> {
    let bad = || {
        ApiError::bad(
            "If-Match: expected * or ETags as the ETag header gives them, for example \"1764000000000000\" \
             (quoted, 1 to 16 digits), separated by commas",
        )
    };
    let fields = headers
        .get_all(header::IF_MATCH)
        .iter()
        .map(|v| v.to_str().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if fields.is_empty() {
        return Ok(None);
    }
    parse_if_match(&fields.join(", ")).map(Some).ok_or_else(bad)
}

/// The value of `If-Match`; `None` if it is neither `*` nor a list of entity tags.
fn parse_if_match(value: &str) -> Option<Pinned> {
    if value.trim_matches([' ', '\t']) == "*" {
        return Some(Pinned::Any);
    }
    let b = value.as_bytes();
    let skip = |i: &mut usize, also_commas: bool| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || (also_commas && b[*i] == b',')) {
            *i += 1;
        }
    };
    let mut versions = Vec::new();
    let mut i = 0;
    loop {
        // White space, separators and empty elements before the next tag.
        skip(&mut i, true);
        if i == b.len() {
            return Some(Pinned::OneOf(versions));
        }
        let weak = b[i..].starts_with(b"W/");
        if weak {
            i += 2;
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len = b.get(start..)?.iter().position(|&c| c == b'"')?;
        let opaque = &b[start..start + len];
        // etagc: any visible ASCII but the double quote.
        if !opaque
            .iter()
            .all(|&c| c == b'!' || (b'#'..=b'~').contains(&c))
        {
            return None;
        }
        if !weak {
            if !(1..=MAX_ETAG_DIGITS).contains(&opaque.len())
                || !opaque.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            versions.push(Version::parse(std::str::from_utf8(opaque).ok()?)?);
        }
        i = start + len + 1;
        // After a tag: white space, then a comma or the end.
        skip(&mut i, false);
        if i < b.len() && b[i] != b',' {
            return None;
        }
    }
}

fn todo_response(status: StatusCode, todo: &Todo, version: Version) -> Response {
    let mut response = (status, axum::Json(todo)).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    response
}

fn with_location(mut response: Response, id: &str) -> Response {
    if let Ok(location) = HeaderValue::from_str(&format!("/todos/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// How many times a create is tried when its conditional put fails and the item is then not there (a
/// tombstone's TTL expired in between).
const CREATE_ATTEMPTS: usize = 3;

async fn create<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let key = idempotency::from_headers(&headers).map_err(ApiError::bad)?;
    let fields = fields(body)?;
    let text = fields.text.ok_or_else(|| ApiError::bad("text: required"))?;
    let checked = fields.checked.unwrap_or(false);
    let created_with = key.map(|key| CreatedWith {
        request: idempotency::request_hash(&text, checked),
        key,
    });
    let id = match &created_with {
        Some(c) => idempotency::todo_id(&c.key),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let now = rfc3339(system_millis());
    let todo = Todo {
        id,
        text,
        checked,
        created_at: now.clone(),
        updated_at: now,
    };
    for _ in 0..CREATE_ATTEMPTS {
        let version = app.clock.now();
        let item = to_item(
            &todo,
            created_with.as_ref(),
            version,
            &app.region,
            &app.attributes,
        );
        match app.store.put(item.clone(), Expect::Absent).await {
            Ok(()) => {
                let response = todo_response(StatusCode::CREATED, &todo, version);
                return Ok(with_location(response, &todo.id));
            }
            Err(StoreError::Conflict) => {}
            Err(other) => return Err(other.into()),
        }
        let Some(found) = app.store.get(&todo.id).await? else {
            continue;
        };
        if found == item {
            // A retried put whose first attempt was applied: the item is ours. (Comparing versions alone
            // is not enough: another process may create the same id in the same millisecond.)
            let response = todo_response(StatusCode::CREATED, &todo, version);
            return Ok(with_location(response, &todo.id));
        }
        let stored = from_item(&found, &app.attributes)
            .map_err(|problem| ApiError::damaged(&todo.id, &problem))?;
        let Some(ours) = &created_with else {
            return Err(StoreError::Conflict.into());
        };
        return match &stored.created_with {
            _ if stored.deleted => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "Idempotency-Key: the todo this key created ({}) has been deleted; send a new key to create another todo",
                    todo.id
                ),
            )),
            Some(theirs) if theirs == ours => {
                let mut response = todo_response(StatusCode::OK, &stored.todo, stored.version);
                response.headers_mut().insert(
                    HeaderName::from_static(REPLAYED_HEADER),
                    HeaderValue::from_static("true"),
                );
                Ok(with_location(response, &todo.id))
            }
            Some(theirs) if theirs.key == ours.key => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "Idempotency-Key: this key already created todo {} from another body (text or checked differ); \
                     retry with the same body, or send a new key to create another todo",
                    todo.id
                ),
            )),
            _ => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "Idempotency-Key: todo {} exists and was not created with this key; send a new key",
                    todo.id
                ),
            )),
        };
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the todo changed while it was being written; retry",
    ))
}

async fn read<S: TodoStore>(app: &App<S>, id: &str) -> Result<crate::todo::Stored, ApiError> {
    validate_id(id).map_err(ApiError::bad)?;
    let Some(item) = app.store.get(id).await? else {
        return Err(ApiError::not_found(id));
    };
    match from_item(&item, &app.attributes) {
        Ok(stored) if !stored.deleted => Ok(stored),
        Ok(_) => Err(ApiError::not_found(id)),
        Err(problem) => Err(ApiError::damaged(id, &problem)),
    }
}

/// The `{id}` of the path; a malformed one (for example invalid UTF-8) is a JSON 400 naming `id`.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|rejection| ApiError::bad(format!("id: {}", rejection.body_text())))?;
    validate_id(&id).map_err(ApiError::bad)?;
    Ok(id)
}

async fn get_one<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    let stored = read(&app, &id).await?;
    Ok(todo_response(StatusCode::OK, &stored.todo, stored.version))
}

/// Applies a change to the stored todo and writes it conditionally on the version read; retried when
/// another writer got in between, unless the client pinned versions with `If-Match`.
async fn change<S: TodoStore>(
    app: &App<S>,
    id: &str,
    headers: &HeaderMap,
    mut write: impl FnMut(&crate::todo::Stored, Version) -> crate::todo::Item,
) -> Result<(crate::todo::Stored, Version, crate::todo::Item), ApiError> {
    let pinned = if_match(headers)?;
    for attempt in 0..20u64 {
        if attempt > 0 {
            // Another writer won the race: pause 1 to 16 ms (random, so racers spread out), read again.
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 16) + 1;
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let stored = read(app, id).await?;
        if let Some(Pinned::OneOf(allowed)) = &pinned
            && !allowed.contains(&stored.version)
        {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("If-Match: the todo is at version \"{}\"", stored.version),
            ));
        }
        let version = app
            .clock
            .after(stored.version)
            .map_err(|e| ApiError::unwritable_version(id, &app.attributes.version, &e))?;
        let item = write(&stored, version);
        match app
            .store
            .put(item.clone(), Expect::Version(stored.version))
            .await
        {
            Ok(()) => return Ok((stored, version, item)),
            Err(StoreError::Conflict) if !matches!(pinned, Some(Pinned::OneOf(_))) => continue,
            Err(StoreError::Conflict) => {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "If-Match: the todo changed in between; read it again",
                ));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the todo kept changing while it was being written; retry",
    ))
}

/// `PUT`: the body is the whole todo (`text` required, `checked` false if left out); `createdAt` is
/// kept.
async fn replace<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    let fields = fields(body)?;
    let text = fields.text.ok_or_else(|| {
        ApiError::bad("text: required (PUT replaces the whole todo; PATCH changes some fields)")
    })?;
    let checked = fields.checked.unwrap_or(false);
    write(&app, &id, &headers, |todo| {
        todo.text.clone_from(&text);
        todo.checked = checked;
    })
    .await
}

/// `PATCH`: the fields given replace the stored ones, the others stay.
async fn patch<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    let fields = fields(body)?;
    if fields.text.is_none() && fields.checked.is_none() {
        return Err(ApiError::bad("body: give text, checked, or both"));
    }
    write(&app, &id, &headers, |todo| {
        if let Some(text) = &fields.text {
            todo.text.clone_from(text);
        }
        if let Some(checked) = fields.checked {
            todo.checked = checked;
        }
    })
    .await
}

/// Writes the stored todo after `edit` (through [`change`]), with a new `updatedAt`, keeping what the
/// client does not set: `createdAt` and the `Idempotency-Key` request that created it.
async fn write<S: TodoStore>(
    app: &App<S>,
    id: &str,
    headers: &HeaderMap,
    edit: impl Fn(&mut Todo),
) -> Result<Response, ApiError> {
    let now = rfc3339(system_millis());
    let (_, version, item) = change(app, id, headers, |stored, version| {
        let mut todo = stored.todo.clone();
        edit(&mut todo);
        if todo.created_at.is_empty() {
            todo.created_at = now.clone();
        }
        todo.updated_at = now.clone();
        to_item(
            &todo,
            stored.created_with.as_ref(),
            version,
            &app.region,
            &app.attributes,
        )
    })
    .await?;
    let todo = from_item(&item, &app.attributes)
        .map(|s| s.todo)
        .map_err(|problem| ApiError::damaged(id, &problem))?;
    Ok(todo_response(StatusCode::OK, &todo, version))
}

async fn delete<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    let expires = (system_millis() / 1000).saturating_add(app.tombstone_retention.as_secs());
    let region = app.region.clone();
    change(&app, &id, &headers, |stored, version| {
        tombstone(&stored.todo.id, version, &region, expires, &app.attributes)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut limit = 20i32;
    let mut next = None;
    for pair in query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| ApiError::bad("limit: must be a whole number from 1 to 100"))?;
            }
            "next" => {
                next = Some(decode_token(value).ok_or_else(|| {
                    ApiError::bad(format!(
                        "next: expected the token of a previous page (lowercase hex, 2 to {MAX_TOKEN} characters)"
                    ))
                })?);
            }
            other => {
                return Err(ApiError::bad(format!(
                    "{}: unknown query parameter; use limit and next",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    let page = app.store.scan(limit, next).await?;
    let items: Vec<Todo> = page
        .items
        .iter()
        .filter_map(|i| match from_item(i, &app.attributes) {
            Ok(stored) => Some(stored),
            Err(problem) => {
                tracing::warn!(error = %problem, "A damaged item is left out of the list.");
                None
            }
        })
        .filter(|s| !s.deleted)
        .map(|s| s.todo)
        .collect();
    let next = page.next.as_deref().map(encode_token);
    Ok(axum::Json(json!({ "items": items, "next": next })).into_response())
}

/// Longest paging token: the hex of DynamoDB's longest partition key (2048 bytes).
const MAX_TOKEN: usize = 4096;

/// The paging token: the last key, its UTF-8 bytes in lowercase hex (opaque to clients; any key survives
/// the round trip).
fn encode_token(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A token is an even number (2 to [`MAX_TOKEN`]) of lowercase hex digits; each such token is accepted
/// as the position to continue after. Tokens this server gave are UTF-8; in a made-up one, bytes that
/// are not are read as U+FFFD, which is a position all the same.
fn decode_token(token: &str) -> Option<String> {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if token.is_empty() || !token.len().is_multiple_of(2) || token.len() > MAX_TOKEN {
        return None;
    }
    let bytes: Option<Vec<u8>> = token
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(hex(pair[0])? << 4 | hex(pair[1])?))
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

async fn health<S: TodoStore>(State(app): State<Arc<App<S>>>) -> Response {
    let body = |status: &str, message: Option<String>| {
        let mut v = json!({ "region": app.region, "table": app.table, "status": status });
        if let Some(m) = message {
            v["message"] = Value::String(m);
        }
        axum::Json(v)
    };
    if app.maintenance.on() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            body(
                "maintenance",
                Some("the maintenance switch is on".to_owned()),
            ),
        )
            .into_response();
    }
    match tokio::time::timeout(app.health_timeout, app.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, body("ok", None)).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "Health check: the table is unavailable.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                body("unavailable", Some("the table cannot be read".to_owned())),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            body(
                "unavailable",
                Some(format!(
                    "the table did not answer within {:?}",
                    app.health_timeout
                )),
            ),
        )
            .into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route; see /openapi.json",
    )
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

async fn require_api_key<S: TodoStore>(
    State(app): State<Arc<App<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &app.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/todos/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, expected.as_bytes()) {
        next.run(request).await
    } else {
        // The same answer API Gateway gives.
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden").into_response()
    }
}

/// On Lambda: `lambda_http` puts the API Gateway stage in front of the request path (`/prod/todos`),
/// also for requests through a custom domain. The router serves `/todos`, so the request is given the
/// path of the event itself (API Gateway's `path`, without the stage) and its query string.
pub fn strip_stage(mut request: lambda_http::Request) -> lambda_http::Request {
    use lambda_http::RequestExt;
    let raw = request.raw_http_path().to_owned();
    if raw.is_empty() {
        return request;
    }
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{raw}?{q}"),
        None => raw,
    };
    if let Ok(uri) = path_and_query.parse() {
        *request.uri_mut() = uri;
    }
    request
}

/// The router, with the region header on every response and, for the local server, the API key check.
pub fn router<S: TodoStore>(app: Arc<App<S>>) -> Router {
    let region =
        HeaderValue::from_str(&app.region).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    Router::new()
        .route("/todos", get(list::<S>).post(create::<S>))
        .route("/todos/health", get(health::<S>))
        .route(
            "/todos/{id}",
            get(get_one::<S>)
                .put(replace::<S>)
                .patch(patch::<S>)
                .delete(delete::<S>),
        )
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            require_api_key::<S>,
        ))
        .layer(middleware::map_response(move |mut response: Response| {
            let region = region.clone();
            async move {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(REGION_HEADER), region);
                response
            }
        }))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn if_match_follows_rfc_9110_and_the_etag_format() {
        let one_of = |v: &[u64]| {
            Ok(Some(Pinned::OneOf(
                v.iter().copied().map(Version).collect(),
            )))
        };
        assert_eq!(if_match(&headers(&[])), Ok(None));
        assert_eq!(if_match(&headers(&["*"])), Ok(Some(Pinned::Any)));
        assert_eq!(if_match(&headers(&[" * "])), Ok(Some(Pinned::Any)));
        assert_eq!(if_match(&headers(&["\"17\""])), one_of(&[17]));
        assert_eq!(
            if_match(&headers(&["W/\"x\", \t\"1\" ,\"9007199254740991\""])),
            one_of(&[1, 9_007_199_254_740_991])
        );
        assert_eq!(if_match(&headers(&["\"1\"", "\"2\""])), one_of(&[1, 2]));
        // Empty elements are ignored; a list of none matches nothing.
        assert_eq!(if_match(&headers(&["\"1\",,"])), one_of(&[1]));
        assert_eq!(if_match(&headers(&[""])), one_of(&[]));
        assert_eq!(if_match(&headers(&["W/\"\""])), one_of(&[]));
        // A comma inside a weak tag is part of it (etagc), not a separator.
        assert_eq!(
            if_match(&headers(&["W/\".n,0P<4w4,&6\",  \"5\""])),
            one_of(&[5])
        );
        for bad in [
            "17",
            "\"\"",
            "\"a\"",
            "\"12345678901234567\"",
            "\"1",
            "W/1",
            "W/\"a\"b\"",
            "*, \"1\"",
            "\"1\" \"2\"",
            "\"+1\"",
            "yesterday",
        ] {
            let error = if_match(&headers(&[bad])).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(error.message.starts_with("If-Match:"), "{bad}");
        }
    }

    #[test]
    fn tokens_are_lowercase_hex_and_round_trip() {
        for id in ["0f8fad5b-d9cb-469f-a165-70867728950e", "é x/y", "a"] {
            assert_eq!(decode_token(&encode_token(id)).as_deref(), Some(id));
        }
        assert_eq!(decode_token("ff").as_deref(), Some("\u{fffd}"));
        assert!(decode_token(&"61".repeat(MAX_TOKEN / 2)).is_some());
        for bad in ["", "6", "6G", "6A", "%61", &"61".repeat(MAX_TOKEN / 2 + 1)] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_ahead_of_the_clock_are_a_503_with_retry_after() {
        let wall_millis = 1_000_000;
        let ahead = |ms: u64| ImplausibleVersion {
            seen: Version::from_millis(wall_millis + ms),
            wall_millis,
        };
        let e = ApiError::unwritable_version("a", "rep_version", &ahead(MAX_AHEAD_MILLIS + 1_500));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(2));
        assert!(
            e.message.contains("ahead of this server's clock"),
            "{}",
            e.message
        );
        let e = ApiError::unwritable_version("a", "rep_version", &ahead(MAX_AHEAD_MILLIS + 1));
        assert_eq!(e.retry_after, Some(1));
        let e = ApiError::unwritable_version("a", "rep_version", &ahead(365 * 86_400_000));
        assert_eq!(e.retry_after, Some(MAX_RETRY_AFTER_SECS));
        let e = ApiError::unwritable_version(
            "a",
            "rep_version",
            &ImplausibleVersion {
                seen: Version(MAX_VERSION),
                wall_millis,
            },
        );
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.retry_after, None);
        assert!(
            e.message
                .contains("rep_version: 9007199254740992 is not below 2^53")
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
