//! The Lambda entry point fed with real API Gateway REST proxy events (JSON fixtures), the way
//! `lambda_http` hands them to the router.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::http::StatusCode;
use sample_app::store::MemoryStore;
use sample_app::{App, Maintenance, REGION_HEADER, router, strip_stage};
use serde_json::{Value, json};
use tower::ServiceExt;
use tworegion_common::version::{HybridClock, VersionAttributes};

fn app() -> Arc<App<MemoryStore>> {
    Arc::new(App {
        store: MemoryStore::default(),
        region: "us-east-1".into(),
        table: "todos".into(),
        clock: HybridClock::default(),
        attributes: VersionAttributes::default(),
        tombstone_retention: Duration::from_secs(86_400),
        // On Lambda, API Gateway checks the key.
        api_key: None,
        maintenance: Maintenance {
            flag: AtomicBool::new(false),
            file: None,
        },
        health_timeout: Duration::from_secs(1),
    })
}

async fn invoke(app: &Arc<App<MemoryStore>>, fixture: &str) -> (StatusCode, Value) {
    invoke_as(app, fixture, "prod").await
}

async fn invoke_as(app: &Arc<App<MemoryStore>>, fixture: &str, stage: &str) -> (StatusCode, Value) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).unwrap();
    event["requestContext"]["stage"] = Value::String(stage.to_owned());
    let request = lambda_http::request::from_str(&event.to_string())
        .expect("an API Gateway REST proxy event");
    assert!(
        request.uri().path().starts_with(&format!("/{stage}/")),
        "lambda_http adds the stage: {}",
        request.uri()
    );
    let response = router(app.clone())
        .oneshot(strip_stage(request))
        .await
        .expect("infallible");
    assert_eq!(response.headers().get(REGION_HEADER).unwrap(), "us-east-1");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn api_gateway_events_reach_the_routes() {
    let app = app();
    let (status, body) = invoke(&app, "apigw_rest_health.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"region": "us-east-1", "table": "todos", "status": "ok"})
    );

    let (status, created) = invoke(&app, "apigw_rest_create.json").await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["text"], "buy milk");

    let (status, bad) = invoke(&app, "apigw_rest_create_unknown_field.json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad["message"],
        "owner: unknown field; a todo has text and checked"
    );

    let (status, page) = invoke(&app, "apigw_rest_list.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"][0]["id"], created["id"]);

    // A stage named like a route must not eat the route.
    let (status, body) = invoke_as(&app, "apigw_rest_health.json", "todos").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = invoke_as(&app, "apigw_rest_list.json", "todos").await;
    assert_eq!(status, StatusCode::OK);

    let (status, missing) = invoke(&app, "apigw_rest_get_missing.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing["message"],
        "todo 0f8fad5b-d9cb-469f-a165-70867728950e not found"
    );
}
