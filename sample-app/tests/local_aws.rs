//! The real `sample-app` binary as a local server against the local AWS.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use tworegion_common::test_support::{
    LocalAws, REGION_A, REGION_B, TablesCleanup, create_table, unique_name,
};

const KEY: &str = "local-test-api-key-0123456789";

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body_text = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    let body = serde_json::from_str(&body_text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn start(local: &LocalAws, table: &str, maintenance_file: &std::path::Path) -> Server {
    let file = maintenance_file.to_string_lossy();
    start_with(local, REGION_A, table, &["--maintenance-file", &file]).await
}

/// The binary as a local server in `region` on `table`, with more flags in `extra`.
async fn start_with(local: &LocalAws, region: &str, table: &str, extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_sample-app"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--region",
            region,
            "--table",
            table,
        ])
        .args(["--api-key", KEY, "--log-format", "json"])
        .args(extra)
        .envs(local.child_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sample-app");
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sample-app did not listen on {port}");
}

#[tokio::test]
async fn todo_api_against_the_local_aws() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_A);
    let table = unique_name("todos");
    create_table(&client, &table, "id", None).await;
    cleanup.table(REGION_A, &table);
    let switch = std::env::temp_dir().join(unique_name("maintenance"));
    let server = start(&local, &table, &switch).await;
    let key = [("x-api-key", KEY)];
    let p = server.port;

    // Health: no key needed; 200, then 503 under the maintenance switch, then 200 again.
    let health = http(p, "GET", "/todos/health", None, &[]).await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["table"], table.as_str());
    std::fs::write(&switch, "").unwrap();
    let drill = http(p, "GET", "/todos/health", None, &[]).await;
    assert_eq!(drill.status, 503);
    assert_eq!(drill.body["status"], "maintenance");
    std::fs::remove_file(&switch).unwrap();
    assert_eq!(http(p, "GET", "/todos/health", None, &[]).await.status, 200);

    // 403 without the key, as API Gateway answers.
    let forbidden = http(p, "GET", "/todos", None, &[]).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.body["message"], "Forbidden");
    assert_eq!(forbidden.header("x-tworegion-region"), Some(REGION_A));

    // Create, read, update (versions increase), list with pagination, delete.
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = http(
            p,
            "POST",
            "/todos",
            Some(&format!(r#"{{"text":"item {i}"}}"#)),
            &key,
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        assert_eq!(created.header("x-tworegion-region"), Some(REGION_A));
        ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let id = &ids[0];
    let read = http(p, "GET", &format!("/todos/{id}"), None, &key).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["text"], "item 0");
    let v1: u64 = read
        .header("etag")
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let updated = http(
        p,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"item 0 done","checked":true}"#),
        &key,
    )
    .await;
    assert_eq!(updated.status, 200);
    let v2: u64 = updated
        .header("etag")
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    assert!(v2 > v1, "versions increase: {v1} -> {v2}");
    // The stored item carries the convention's stamps.
    let stored = stored_item(&client, &table, "id", id).await;
    assert_eq!(stored["rep_version"], AttributeValue::N(v2.to_string()));
    assert_eq!(stored["rep_origin"], AttributeValue::S(REGION_A.to_owned()));

    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(list_all(p, &key, 2).await, expected);

    let deleted = http(p, "DELETE", &format!("/todos/{id}"), None, &key).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        http(p, "GET", &format!("/todos/{id}"), None, &key)
            .await
            .status,
        404
    );
    let tomb = stored_item(&client, &table, "id", id).await;
    assert_eq!(
        tomb["rep_deleted"],
        AttributeValue::Bool(true),
        "a tombstone is kept"
    );
    let AttributeValue::N(v3) = &tomb["rep_version"] else {
        panic!("version")
    };
    assert!(v3.parse::<u64>().unwrap() > v2);
    assert!(tomb.contains_key("rep_expires"));
    let all = http(p, "GET", "/todos?limit=100", None, &key).await;
    assert!(
        !all.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "the tombstone is hidden"
    );
}

#[tokio::test]
async fn health_is_503_when_the_table_cannot_be_read() {
    let local = LocalAws::from_env();
    let switch = std::env::temp_dir().join(unique_name("maintenance"));
    let server = start(&local, &unique_name("missing-table"), &switch).await;
    let health = http(server.port, "GET", "/todos/health", None, &[]).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body["status"], "unavailable");
    let list = http(server.port, "GET", "/todos", None, &[("x-api-key", KEY)]).await;
    assert_eq!(
        list.status, 503,
        "no 500 when the table is missing: {:?}",
        list.body
    );
}

/// Every todo's id, read page by page (`limit` per page, at most 10 pages).
async fn list_all(p: u16, key: &[(&str, &str)], limit: usize) -> Vec<String> {
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let uri = match &next {
            Some(n) => format!("/todos?limit={limit}&next={n}"),
            None => format!("/todos?limit={limit}"),
        };
        let page = http(p, "GET", &uri, None, key).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        listed.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        next = page.body["next"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    listed.sort();
    listed
}

/// The stored item whose key attribute `key_name` is `id`.
async fn stored_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key_name: &str,
    id: &str,
) -> std::collections::HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key(key_name, AttributeValue::S(id.to_owned()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap()
}

fn etag(a: &Answer) -> u64 {
    a.header("etag").unwrap().trim_matches('"').parse().unwrap()
}

#[tokio::test]
async fn the_key_attribute_is_named_by_configuration() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let client = local.dynamodb(REGION_A);
    let table = unique_name("todos-pk");
    create_table(&client, &table, "pk", None).await;
    cleanup.table(REGION_A, &table);
    let server = start_with(&local, REGION_A, &table, &["--partition-key", "pk"]).await;
    let key = [("x-api-key", KEY)];
    let p = server.port;

    // Health reads the table by its key.
    let health = http(p, "GET", "/todos/health", None, &[]).await;
    assert_eq!(health.status, 200, "{:?}", health.body);

    // Creates, with and without Idempotency-Key (conditional on the key attribute).
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = http(
            p,
            "POST",
            "/todos",
            Some(&format!(r#"{{"text":"item {i}"}}"#)),
            &key,
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let headers = [("x-api-key", KEY), ("idempotency-key", "pk-create-1")];
    let keyed = http(p, "POST", "/todos", Some(r#"{"text":"keyed"}"#), &headers).await;
    assert_eq!(keyed.status, 201, "{:?}", keyed.body);
    let again = http(p, "POST", "/todos", Some(r#"{"text":"keyed"}"#), &headers).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body, keyed.body);
    ids.push(keyed.body["id"].as_str().unwrap().to_owned());

    // The stored item has the key under the configured name, and no `id` attribute.
    let id = &ids[0];
    let stored = stored_item(&client, &table, "pk", id).await;
    assert!(!stored.contains_key("id"), "{stored:?}");
    assert_eq!(stored["text"], AttributeValue::S("item 0".into()));

    // Reads, PATCH, PUT, conditional on the version, through the configured key.
    let read = http(p, "GET", &format!("/todos/{id}"), None, &key).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], id.as_str(), "the API still calls it id");
    let tag = format!("\"{}\"", etag(&read));
    let patched = http(
        p,
        "PATCH",
        &format!("/todos/{id}"),
        Some(r#"{"checked":true}"#),
        &[("x-api-key", KEY), ("if-match", &tag)],
    )
    .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["text"], "item 0");
    let stale = http(
        p,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"x"}"#),
        &[("x-api-key", KEY), ("if-match", &tag)],
    )
    .await;
    assert_eq!(stale.status, 412);
    let put = http(
        p,
        "PUT",
        &format!("/todos/{id}"),
        Some(r#"{"text":"replaced"}"#),
        &key,
    )
    .await;
    assert_eq!(put.status, 200);
    assert_eq!(put.body["checked"], false);

    // Paging: the scan's start and last keys use the configured name.
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(list_all(p, &key, 1).await, expected);

    // Delete writes the tombstone under the configured key.
    assert_eq!(
        http(p, "DELETE", &format!("/todos/{id}"), None, &key)
            .await
            .status,
        204
    );
    let tomb = stored_item(&client, &table, "pk", id).await;
    assert_eq!(tomb["rep_deleted"], AttributeValue::Bool(true));
    assert!(!tomb.contains_key("id"));
}

#[tokio::test]
async fn an_idempotent_create_is_found_in_the_other_region_once_replicated() {
    let local = LocalAws::from_env();
    let cleanup = TablesCleanup::new(&local);
    let table = unique_name("todos-idem");
    let east = local.dynamodb(REGION_A);
    let west = local.dynamodb(REGION_B);
    create_table(&east, &table, "id", None).await;
    cleanup.table(REGION_A, &table);
    create_table(&west, &table, "id", None).await;
    cleanup.table(REGION_B, &table);
    let a = start_with(&local, REGION_A, &table, &[]).await;
    let b = start_with(&local, REGION_B, &table, &[]).await;
    let headers = [("x-api-key", KEY), ("idempotency-key", "order-7-create")];
    let body = Some(r#"{"text":"ship order 7","checked":false}"#);

    let first = http(a.port, "POST", "/todos", body, &headers).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    // The retry in the same region: the conditional create fails, the todo is answered.
    let same = http(a.port, "POST", "/todos", body, &headers).await;
    assert_eq!(same.status, 200, "{:?}", same.body);
    assert_eq!(same.body, first.body);
    assert_eq!(same.header("idempotent-replayed"), Some("true"));

    // Replicate the whole item, as the replicator does, then retry in the other region.
    let item = east
        .get_item()
        .table_name(&table)
        .key("id", AttributeValue::S(id.clone()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(item.contains_key("idempotencyKey"), "{item:?}");
    west.put_item()
        .table_name(&table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    let retry = http(b.port, "POST", "/todos", body, &headers).await;
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(
        retry.body, first.body,
        "the same todo from the other region"
    );
    assert_eq!(retry.header("x-tworegion-region"), Some(REGION_B));
    assert_eq!(etag(&retry), etag(&first));
    let misuse = http(
        b.port,
        "POST",
        "/todos",
        Some(r#"{"text":"ship order 8"}"#),
        &headers,
    )
    .await;
    assert_eq!(misuse.status, 422, "{:?}", misuse.body);
    let count = west.scan().table_name(&table).send().await.unwrap().count;
    assert_eq!(count, 1, "no duplicate in the other region");
}
