//! The router in process, against the in-memory table: every route, status code and error body.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sample_app::store::MemoryStore;
use sample_app::{App, Maintenance, OPENAPI, REGION_HEADER, ROUTES, router};
use serde_json::{Value, json};
use tower::ServiceExt;
use tworegion_common::version::{HybridClock, VersionAttributes};

const KEY: &str = "0123456789abcdefghijKEY";

fn app(api_key: Option<&str>) -> Arc<App<MemoryStore>> {
    Arc::new(App {
        store: MemoryStore::default(),
        region: "us-west-2".into(),
        table: "todos".into(),
        clock: HybridClock::default(),
        attributes: VersionAttributes::default(),
        tombstone_retention: Duration::from_secs(7 * 86_400),
        api_key: api_key.map(str::to_owned),
        maintenance: Maintenance {
            flag: AtomicBool::new(false),
            file: None,
        },
        health_timeout: Duration::from_secs(1),
    })
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(
    app: &Arc<App<MemoryStore>>,
    method: &str,
    uri: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", KEY);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let request = request
        .body(
            body.map(|b| Body::from(b.to_owned()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let response = router(app.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    assert_eq!(
        headers.get(REGION_HEADER).unwrap(),
        "us-west-2",
        "{method} {uri}: region header"
    );
    Answer {
        status,
        headers,
        body,
    }
}

fn message(a: &Answer) -> String {
    a.body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn create_read_update_delete_with_versions() {
    let app = app(Some(KEY));
    let created = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &[]).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["text"], "buy milk");
    assert_eq!(created.body["checked"], false);
    assert_eq!(
        created.headers.get(header::LOCATION).unwrap(),
        &format!("/todos/{id}")
    );
    let etag1 = created
        .headers
        .get(header::ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let read = call(&app, "GET", &format!("/todos/{id}"), None, &[]).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);

    let updated = call(
        &app,
        "PATCH",
        &format!("/todos/{id}"),
        Some(r#"{"checked":true}"#),
        &[("if-match", &etag1)],
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["checked"], true);
    assert_eq!(updated.body["text"], "buy milk");
    let etag2 = updated
        .headers
        .get(header::ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let v = |e: &str| e.trim_matches('"').parse::<u64>().unwrap();
    assert!(
        v(&etag2) > v(&etag1),
        "versions increase: {etag1} -> {etag2}"
    );

    // A stale If-Match is refused; the todo is unchanged.
    let stale = call(
        &app,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"x"}"#),
        &[("if-match", &etag1)],
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        message(&stale).starts_with("If-Match:"),
        "{}",
        message(&stale)
    );

    // The stored item carries the convention's stamps.
    let stored = app.store.all()[&id].clone();
    assert_eq!(
        stored["rep_origin"],
        aws_sdk_dynamodb::types::AttributeValue::S("us-west-2".into())
    );

    let deleted = call(&app, "DELETE", &format!("/todos/{id}"), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    // A tombstone stays, hidden from reads, lists and updates.
    let tomb = app.store.all()[&id].clone();
    assert_eq!(
        tomb["rep_deleted"],
        aws_sdk_dynamodb::types::AttributeValue::Bool(true)
    );
    assert!(tomb.contains_key("rep_expires"));
    assert_eq!(
        call(&app, "GET", &format!("/todos/{id}"), None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for method in ["PUT", "PATCH"] {
        assert_eq!(
            call(
                &app,
                method,
                &format!("/todos/{id}"),
                Some(r#"{"text":"x","checked":false}"#),
                &[]
            )
            .await
            .status,
            StatusCode::NOT_FOUND,
            "{method} on a deleted todo"
        );
    }
    assert_eq!(
        call(&app, "DELETE", &format!("/todos/{id}"), None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let list = call(&app, "GET", "/todos", None, &[]).await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_are_not_lost() {
    let app = app(Some(KEY));
    let id = call(&app, "POST", "/todos", Some(r#"{"text":"0"}"#), &[])
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let body = if i == 7 {
                r#"{"checked":true}"#.to_owned()
            } else {
                format!(r#"{{"text":"{i}"}}"#)
            };
            let a = call(&app, "PATCH", &format!("/todos/{id}"), Some(&body), &[]).await;
            (
                a.status,
                a.headers
                    .get(header::ETAG)
                    .map(|e| e.to_str().unwrap().to_owned()),
            )
        }));
    }
    let mut etags = Vec::new();
    for t in tasks {
        let (status, etag) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        etags.push(etag.unwrap());
    }
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 20, "every update wrote its own version");
    assert!(
        app.store.conflicts.load(Ordering::SeqCst) > 0,
        "the updates really raced and were retried"
    );
    let todo = call(&app, "GET", &format!("/todos/{id}"), None, &[]).await;
    assert_eq!(todo.body["checked"], true, "no update was lost");
}

#[tokio::test]
async fn if_match_is_strong_and_takes_lists_and_star() {
    let app = app(Some(KEY));
    let created = call(&app, "POST", "/todos", Some(r#"{"text":"a"}"#), &[]).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let etag = created
        .headers
        .get(header::ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let weak = format!("W/{etag}");
    let a = call(
        &app,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"b"}"#),
        &[("if-match", &weak)],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::PRECONDITION_FAILED,
        "a weak tag never matches"
    );
    let list = format!("\"1\", {etag}");
    let a = call(
        &app,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"c"}"#),
        &[("if-match", &list)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "one of a list matches");
    let a = call(
        &app,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"d"}"#),
        &[("if-match", "*")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn damaged_stored_items_are_reported_not_rewritten() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use sample_app::store::{Expect, TodoStore};
    let app = app(Some(KEY));
    let mut item = std::collections::HashMap::new();
    item.insert("id".to_owned(), AttributeValue::S("bad-1".into()));
    item.insert("text".to_owned(), AttributeValue::S("x".into()));
    item.insert("rep_version".to_owned(), AttributeValue::N("1.5".into()));
    app.store.put(item.clone(), Expect::Absent).await.unwrap();
    let a = call(
        &app,
        "PATCH",
        "/todos/bad-1",
        Some(r#"{"checked":true}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(message(&a).contains("rep_version"), "{}", message(&a));
    assert_eq!(app.store.all()["bad-1"], item, "left as it was");
    // A version that cannot be one (2^53 or more) is a damaged item too.
    item.insert("id".to_owned(), AttributeValue::S("bad-2".into()));
    item.insert(
        "rep_version".to_owned(),
        AttributeValue::N("9007199254740992".into()),
    );
    app.store.put(item, Expect::Absent).await.unwrap();
    let a = call(&app, "DELETE", "/todos/bad-2", None, &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{:?}", a.body);
    assert!(message(&a).contains("not below 2^53"), "{}", message(&a));
    // The list leaves damaged items out instead of failing.
    let list = call(&app, "GET", "/todos", None, &[]).await;
    assert_eq!(list.status, StatusCode::OK);
}

#[tokio::test]
async fn list_pages_with_limit_and_next() {
    let app = app(Some(KEY));
    for i in 0..7 {
        assert_eq!(
            call(
                &app,
                "POST",
                "/todos",
                Some(&format!(r#"{{"text":"t{i}"}}"#)),
                &[]
            )
            .await
            .status,
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let uri = match &next {
            Some(n) => format!("/todos?limit=3&next={n}"),
            None => "/todos?limit=3".to_owned(),
        };
        let page = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|t| t["text"].as_str().unwrap().to_owned()));
        next = page.body["next"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field() {
    let app = app(Some(KEY));
    let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
        (
            "POST",
            "/todos",
            Some(r#"{}"#),
            StatusCode::BAD_REQUEST,
            "text: required",
        ),
        (
            "POST",
            "/todos",
            Some(r#"{"text":""}"#),
            StatusCode::BAD_REQUEST,
            "text: must not be empty",
        ),
        (
            "POST",
            "/todos",
            Some(r#"{"text":5}"#),
            StatusCode::BAD_REQUEST,
            "text: must be a string",
        ),
        (
            "POST",
            "/todos",
            Some(r#"{"text":"a","checked":"yes"}"#),
            StatusCode::BAD_REQUEST,
            "checked: must be true or false",
        ),
        (
            "POST",
            "/todos",
            Some(r#"{"text":"a","owner":"me"}"#),
            StatusCode::BAD_REQUEST,
            "owner: unknown field",
        ),
        (
            "POST",
            "/todos",
            Some(r#"[1,2]"#),
            StatusCode::BAD_REQUEST,
            "body: must be a JSON object",
        ),
        (
            "POST",
            "/todos",
            Some(r#"{"text":"#),
            StatusCode::BAD_REQUEST,
            "body: not valid JSON",
        ),
        (
            "GET",
            "/todos?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "limit: must be a whole number from 1 to 100",
        ),
        (
            "GET",
            "/todos?limit=abc",
            None,
            StatusCode::BAD_REQUEST,
            "limit:",
        ),
        (
            "GET",
            "/todos?next=../../etc",
            None,
            StatusCode::BAD_REQUEST,
            "next:",
        ),
        (
            "GET",
            "/todos?sort=asc",
            None,
            StatusCode::BAD_REQUEST,
            "sort: unknown query parameter",
        ),
        (
            "GET",
            "/todos/bad%20id",
            None,
            StatusCode::BAD_REQUEST,
            "id:",
        ),
        (
            "GET",
            "/todos/nope",
            None,
            StatusCode::NOT_FOUND,
            "todo nope not found",
        ),
        (
            "PATCH",
            "/todos/nope",
            Some(r#"{}"#),
            StatusCode::BAD_REQUEST,
            "body: give text, checked, or both",
        ),
        (
            "PUT",
            "/todos/nope",
            Some(r#"{"checked":true}"#),
            StatusCode::BAD_REQUEST,
            "text: required (PUT replaces the whole todo",
        ),
        (
            "PUT",
            "/todos/nope",
            Some(r#"{"text":"a"}"#),
            StatusCode::NOT_FOUND,
            "todo nope not found",
        ),
        (
            "PATCH",
            "/todos/nope",
            Some(r#"{"checked":true}"#),
            StatusCode::NOT_FOUND,
            "todo nope not found",
        ),
        (
            "GET",
            "/todos?next=6E6F7065",
            None,
            StatusCode::BAD_REQUEST,
            "next: expected the token of a previous page (lowercase hex",
        ),
        (
            "PUT",
            "/todos/x",
            Some(r#"{"text":"a"}"#),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "GET",
            "/elsewhere",
            None,
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            "PATCH",
            "/todos",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
    ];
    for (method, uri, body, status, text) in cases {
        if *uri == "/todos/x" {
            // If-Match that is not an ETag.
            let a = call(&app, method, uri, *body, &[("if-match", "yesterday")]).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST);
            assert!(message(&a).starts_with("If-Match:"));
            continue;
        }
        let a = call(&app, method, uri, *body, &[]).await;
        assert_eq!(a.status, *status, "{method} {uri}: {:?}", a.body);
        assert!(
            message(&a).contains(text),
            "{method} {uri}: {:?} lacks {text:?}",
            a.body
        );
    }
    // Too long a text, too large a body, and a body that is not JSON.
    let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(1001));
    let a = call(&app, "POST", "/todos", Some(&long), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(message(&a).starts_with("text: 1001 characters"));
    let huge = format!(r#"{{"text":"{}"}}"#, "x".repeat(20_000));
    let a = call(&app, "POST", "/todos", Some(&huge), &[]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message(&a).starts_with("body: larger than"));
    let request = Request::builder()
        .method("POST")
        .uri("/todos")
        .header("x-api-key", KEY)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("buy milk"))
        .unwrap();
    let response = router(app.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn api_key_is_required_everywhere_but_health() {
    let app = app(Some(KEY));
    for (method, uri) in [
        ("GET", "/todos"),
        ("POST", "/todos"),
        ("GET", "/todos/abc"),
        ("GET", "/openapi.json"),
    ] {
        for key in [None, Some("wrong-key-wrong-key-wrong"), Some("")] {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(k) = key {
                request = request.header("x-api-key", k);
            }
            let response = router(app.clone())
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{method} {uri} with {key:?}"
            );
            assert_eq!(response.headers().get(REGION_HEADER).unwrap(), "us-west-2");
            let body: Value = serde_json::from_slice(
                &axum::body::to_bytes(response.into_body(), 1024)
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(body, json!({"message": "Forbidden"}));
        }
    }
    let health = Request::builder()
        .uri("/todos/health")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        router(app).oneshot(health).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn health_reports_the_table_and_the_maintenance_switch() {
    let app = app(Some(KEY));
    let ok = call(&app, "GET", "/todos/health", None, &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.body,
        json!({"region": "us-west-2", "table": "todos", "status": "ok"})
    );
    app.store.down.store(true, Ordering::SeqCst);
    let down = call(&app, "GET", "/todos/health", None, &[]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.body["status"], "unavailable");
    // With the table down, the API answers 503, not 500.
    assert_eq!(
        call(&app, "GET", "/todos", None, &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    app.store.down.store(false, Ordering::SeqCst);
    app.maintenance.flag.store(true, Ordering::SeqCst);
    let drill = call(&app, "GET", "/todos/health", None, &[]).await;
    assert_eq!(drill.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(drill.body["status"], "maintenance");
    // The file switch.
    let file = std::env::temp_dir().join(format!("maintenance-{}", std::process::id()));
    let app2 = Arc::new(App {
        maintenance: Maintenance {
            flag: AtomicBool::new(false),
            file: Some(file.clone()),
        },
        ..Arc::try_unwrap(self::app(Some(KEY))).unwrap()
    });
    assert_eq!(
        call(&app2, "GET", "/todos/health", None, &[]).await.status,
        StatusCode::OK
    );
    std::fs::write(&file, "").unwrap();
    assert_eq!(
        call(&app2, "GET", "/todos/health", None, &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        call(&app2, "GET", "/todos/health", None, &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.push((path.clone(), method.to_owned()));
            }
        }
    }
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| ((*p).to_owned(), (*m).to_owned())))
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed, "openapi.json and ROUTES differ");
    // Every listed route is served by the router (not the 404/405 fallbacks), and others are not.
    let app = app(Some(KEY));
    for (path, method) in &routed {
        let uri = path.replace("{id}", "some-id");
        let a = call(&app, &method.to_uppercase(), &uri, Some("{}"), &[]).await;
        assert!(
            a.status != StatusCode::METHOD_NOT_ALLOWED
                && message(&a) != "no such route; see /openapi.json",
            "{method} {path} is documented but not routed: {:?}",
            a.body
        );
    }
    for (path, method) in [
        ("/todos", "DELETE"),
        ("/todos/some-id", "POST"),
        ("/todos/health", "POST"),
    ] {
        let a = call(&app, method, path, None, &[]).await;
        assert_eq!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is routed but not documented"
        );
    }
    let served = call(&app, "GET", "/openapi.json", None, &[]).await;
    assert_eq!(served.body, doc);
}

fn app_in(region: &str) -> Arc<App<MemoryStore>> {
    Arc::new(App {
        region: region.into(),
        ..Arc::try_unwrap(app(Some(KEY))).unwrap()
    })
}

/// `call` for an app in another region than us-west-2 (the region header differs).
async fn call_in(
    app: &Arc<App<MemoryStore>>,
    method: &str,
    uri: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", KEY);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let request = request
        .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default())
        .unwrap();
    let response = router(app.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn etag_of(a: &Answer) -> String {
    a.headers
        .get(header::ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_retried_create_with_the_same_idempotency_key_returns_the_same_todo() {
    let app = app(Some(KEY));
    let key = [("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")];
    let first = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = first.body["id"].as_str().unwrap().to_owned();

    // The retry, also with the default spelled out and the key in the draft's quoted form.
    for (body, key) in [
        (
            r#"{"text":"buy milk"}"#,
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
        ),
        (
            r#"{"checked":false,"text":"buy milk"}"#,
            "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
        ),
    ] {
        let retry = call(
            &app,
            "POST",
            "/todos",
            Some(body),
            &[("idempotency-key", key)],
        )
        .await;
        assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
        assert_eq!(retry.body, first.body, "the same todo, not a new one");
        assert_eq!(etag_of(&retry), etag_of(&first));
        assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
        assert_eq!(
            retry.headers.get(header::LOCATION).unwrap(),
            &format!("/todos/{id}")
        );
    }
    assert_eq!(app.store.all().len(), 1, "one todo in the table");

    // The same key with another body is refused, naming the header.
    let other = call(
        &app,
        "POST",
        "/todos",
        Some(r#"{"text":"buy milk","checked":true}"#),
        &key,
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message(&other).starts_with("Idempotency-Key: this key already created todo"),
        "{}",
        message(&other)
    );

    // A late retry after a change answers the todo as it is now.
    let changed = call(
        &app,
        "PATCH",
        &format!("/todos/{id}"),
        Some(r#"{"checked":true}"#),
        &[],
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    let late = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &key).await;
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.body, changed.body);
    // Updates keep what the create remembered: a PUT, then a retry still finds it.
    let put = call(
        &app,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"buy oat milk"}"#),
        &[],
    )
    .await;
    assert_eq!(put.status, StatusCode::OK);
    let late = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &key).await;
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.body["text"], "buy oat milk");

    // Without a key, every create is a new todo; another key is another todo.
    let plain = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &[]).await;
    assert_eq!(plain.status, StatusCode::CREATED);
    assert_ne!(plain.body["id"], first.body["id"]);
    let another = call(
        &app,
        "POST",
        "/todos",
        Some(r#"{"text":"buy milk"}"#),
        &[("idempotency-key", "another-key")],
    )
    .await;
    assert_eq!(another.status, StatusCode::CREATED);
    assert_ne!(another.body["id"], first.body["id"]);
    assert_eq!(app.store.all().len(), 3);

    // Once the todo is deleted, a retry does not bring it back.
    let deleted = call(&app, "DELETE", &format!("/todos/{id}"), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let after = call(&app, "POST", "/todos", Some(r#"{"text":"buy milk"}"#), &key).await;
    assert_eq!(after.status, StatusCode::CONFLICT);
    assert!(
        message(&after).contains("has been deleted"),
        "{}",
        message(&after)
    );
    assert_eq!(
        call(&app, "GET", &format!("/todos/{id}"), None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn idempotency_keys_are_validated() {
    let app = app(Some(KEY));
    for bad in ["", "a b", "a,b", "\"open", &"k".repeat(256)] {
        let a = call(
            &app,
            "POST",
            "/todos",
            Some(r#"{"text":"a"}"#),
            &[("idempotency-key", bad)],
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            message(&a).starts_with("Idempotency-Key: must be 1 to 255 characters"),
            "{bad:?}: {}",
            message(&a)
        );
    }
    let twice = call(
        &app,
        "POST",
        "/todos",
        Some(r#"{"text":"a"}"#),
        &[("idempotency-key", "a"), ("idempotency-key", "a")],
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert_eq!(message(&twice), "Idempotency-Key: give the header once");
    assert!(app.store.all().is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_key_make_one_todo() {
    let app = app(Some(KEY));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &app,
                "POST",
                "/todos",
                Some(r#"{"text":"once"}"#),
                &[("idempotency-key", "one-key")],
            )
            .await
        }));
    }
    let mut created = 0;
    let mut ids = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}: {:?}", a.body),
        }
        ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1, "exactly one create wrote");
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.store.all().len(), 1);
}

#[tokio::test]
async fn a_retry_in_the_other_region_finds_the_replicated_create() {
    use sample_app::store::{Expect, TodoStore};
    let east = app_in("us-east-1");
    let west = app_in("us-west-2");
    let key = [("idempotency-key", "failover-retry-1")];
    let body = Some(r#"{"text":"pay rent","checked":true}"#);
    let first = call_in(&east, "POST", "/todos", body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let id = first.body["id"].as_str().unwrap().to_owned();
    // The replicator copies the whole item, the attributes that remember the key included.
    let item = east.store.all()[&id].clone();
    assert!(item.contains_key("idempotencyKey"));
    assert!(item.contains_key("idempotencyRequestSha256"));
    west.store.put(item, Expect::Absent).await.unwrap();

    let retry = call_in(&west, "POST", "/todos", body, &key).await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.headers.get(REGION_HEADER).unwrap(), "us-west-2");
    assert_eq!(
        west.store.all().len(),
        1,
        "no second todo in the other region"
    );
    let misuse = call_in(&west, "POST", "/todos", Some(r#"{"text":"x"}"#), &key).await;
    assert_eq!(misuse.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Before replication the other region cannot tell (documented): it creates, under the same id, so
    // that replication makes the two one todo.
    let early = call_in(
        &west,
        "POST",
        "/todos",
        body,
        &[("idempotency-key", "not-yet-replicated")],
    )
    .await;
    let late = call_in(
        &east,
        "POST",
        "/todos",
        body,
        &[("idempotency-key", "not-yet-replicated")],
    )
    .await;
    assert_eq!(early.status, StatusCode::CREATED);
    assert_eq!(late.status, StatusCode::CREATED);
    assert_eq!(early.body["id"], late.body["id"]);
}

#[tokio::test]
async fn put_replaces_the_todo_and_patch_merges() {
    let app = app(Some(KEY));
    let created = call(
        &app,
        "POST",
        "/todos",
        Some(r#"{"text":"a","checked":true}"#),
        &[],
    )
    .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let uri = format!("/todos/{id}");

    // PUT without checked: checked goes back to its default.
    let put = call(&app, "PUT", &uri, Some(r#"{"text":"b"}"#), &[]).await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    assert_eq!(put.body["text"], "b");
    assert_eq!(
        put.body["checked"], false,
        "PUT replaces: not sent is default"
    );
    assert_eq!(put.body["createdAt"], created.body["createdAt"], "kept");
    // PUT without the required text is refused, and changes nothing.
    let partial = call(&app, "PUT", &uri, Some(r#"{"checked":true}"#), &[]).await;
    assert_eq!(partial.status, StatusCode::BAD_REQUEST);
    assert!(
        message(&partial).starts_with("text: required"),
        "{}",
        message(&partial)
    );
    // PATCH merges: text stays.
    let patched = call(&app, "PATCH", &uri, Some(r#"{"checked":true}"#), &[]).await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["text"], "b");
    assert_eq!(patched.body["checked"], true);
    let patched = call(&app, "PATCH", &uri, Some(r#"{"text":"c"}"#), &[]).await;
    assert_eq!(patched.body["text"], "c");
    assert_eq!(patched.body["checked"], true);
    assert_eq!(call(&app, "GET", &uri, None, &[]).await.body, patched.body);
    // Both honour If-Match: a stale ETag is a 412 and leaves the todo as it is.
    let stale = etag_of(&put);
    for (method, body) in [("PUT", r#"{"text":"d"}"#), ("PATCH", r#"{"text":"d"}"#)] {
        let a = call(&app, method, &uri, Some(body), &[("if-match", &stale)]).await;
        assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{method}");
    }
    let current = etag_of(&patched);
    let a = call(
        &app,
        "PUT",
        &uri,
        Some(r#"{"text":"d"}"#),
        &[("if-match", &current)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["checked"], false);
    // Unknown fields and wrong types are refused on both.
    for method in ["PUT", "PATCH"] {
        let a = call(&app, method, &uri, Some(r#"{"text":"e","id":"x"}"#), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method}");
        assert!(message(&a).starts_with("id: unknown field"), "{method}");
    }
}

#[tokio::test]
async fn a_version_ahead_of_the_clock_is_a_503_with_retry_after() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use sample_app::store::{Expect, TodoStore};
    use tworegion_common::version::{MAX_AHEAD_MILLIS, Version, system_millis};
    let app = app(Some(KEY));
    // Written by a region whose clock runs 11 minutes ahead: more than a version may lead.
    let ahead = Version::from_millis(system_millis() + MAX_AHEAD_MILLIS + 60_000);
    let mut item = std::collections::HashMap::new();
    item.insert("id".to_owned(), AttributeValue::S("ahead-1".into()));
    item.insert("text".to_owned(), AttributeValue::S("x".into()));
    item.insert(
        "rep_version".to_owned(),
        AttributeValue::N(ahead.to_string()),
    );
    app.store.put(item.clone(), Expect::Absent).await.unwrap();
    for (method, body) in [
        ("PATCH", Some(r#"{"checked":true}"#)),
        ("PUT", Some(r#"{"text":"y"}"#)),
        ("DELETE", None),
    ] {
        let a = call(&app, method, "/todos/ahead-1", body, &[]).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method}: {:?}",
            a.body
        );
        let retry: u64 = a
            .headers
            .get(header::RETRY_AFTER)
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((55..=61).contains(&retry), "{method}: Retry-After {retry}");
        assert!(
            message(&a).contains("ahead of this server's clock"),
            "{method}: {}",
            message(&a)
        );
        assert!(message(&a).contains("The request is fine"));
    }
    assert_eq!(app.store.all()["ahead-1"], item, "left as it was");
    // Reading it is fine.
    assert_eq!(
        call(&app, "GET", "/todos/ahead-1", None, &[]).await.status,
        StatusCode::OK
    );
    // An unreachable table is a 503 with Retry-After too.
    app.store.down.store(true, Ordering::SeqCst);
    let down = call(&app, "GET", "/todos", None, &[]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers.get(header::RETRY_AFTER).unwrap(), "1");
}

#[tokio::test]
async fn paging_tokens_are_lowercase_hex_and_405_lists_the_methods() {
    let app = app(Some(KEY));
    // Any well-formed token is a position to continue after, also one this server did not give.
    for token in ["ff", "7a7a7a", "00"] {
        let a = call(&app, "GET", &format!("/todos?next={token}"), None, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{token}");
    }
    // 405 says which methods the route has (RFC 9110).
    let a = call(&app, "POST", "/todos/some-id", Some("{}"), &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = a.headers.get(header::ALLOW).unwrap().to_str().unwrap();
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    // The id of the health route is no todo id.
    let a = call(&app, "PATCH", "/todos/health", Some(r#"{"text":"x"}"#), &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}
