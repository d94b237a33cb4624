//! The target table's writes sent directly: each conditional `PutItem` or `DeleteItem` is one JSON
//! request, signed with the SDK's own SigV4 signer (`aws-sigv4`), with credentials from the SDK's own
//! provider chain, to the endpoint the SDK's own resolver names, over a pooled hyper connection.
//!
//! Why: a profile of the replicator showed the SDK's per-request machinery (its orchestrator, config
//! bag, interceptors, retry classifiers, endpoint resolution per call) costing more CPU per record than
//! the HTTP exchange itself, and one conditional write per record is nearly all the replicator does
//! (docs/BENCHMARKS.md). Everything else (reads, leases, start-up checks, dead letters, the operator's
//! tools) still goes through the SDK clients; `--write-client sdk` sends the writes through them too.
//!
//! What is the same as the SDK's writer: the request (operation, JSON body, condition expressions from
//! [`expression`]), the signature (the same crate signs it), the credential chain (the SDK's provider,
//! refreshed before expiry), the endpoint (the SDK's resolver with the same region, FIPS, dual-stack and
//! `AWS_ENDPOINT_URL[_DYNAMODB]` inputs), TLS (rustls with aws-lc-rs and the platform's roots), one
//! attempt per call with a deadline, and the error classification ([`classify_code`]). What differs: no
//! SDK retries (the writer never used them: one attempt each, the engine retries), no clock-skew
//! correction (a skewed clock gets `InvalidSignatureException`, which is fatal and names itself), and
//! the regional endpoint is used rather than the account-based one (`{account}.ddb.{region}...`), which
//! DynamoDB serves equally.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tworegion_common::version::VersionAttributes;

use super::sigv4::{self, JSON_1_0, KeyCache};
use super::target::{
    AwsTarget, Condition, FENCE_ATTRIBUTE, FENCED_TEXT, NEWER_TEXT, NOT_NEWER_TEXT, Outcome,
    TargetTable, Write, refused,
};
use crate::error::{AwsFailure, ErrorClass};
use crate::item::Item;

/// Credentials are refreshed when they have less than this left (the SDK's identity cache refreshes
/// within a similar margin), so no request is signed with credentials about to expire in flight.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiry (static keys, some `credential_process` tools) are loaded again after
/// this, as the SDK's identity cache does, so keys rotated in a profile are picked up.
const NO_EXPIRY_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// After a refresh that failed, or that returned credentials already inside the margin, the provider
/// is asked again at most this often (the current credentials are used meanwhile while still valid).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait for the credential provider (instance metadata, the ECS endpoint, STS).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read: DynamoDB's answers to these writes are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Idle pooled connections are closed after this (DynamoDB closes idle connections itself after a
/// while; a connection it closed is reopened by the pool).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The time allowed to open a connection (including TLS), within the attempt's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How the direct writer reaches one table.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// The target's region (also the signing region).
    pub region: String,
    /// The endpoint, as the SDK resolves it (see [`resolve_endpoint`]).
    pub endpoint: String,
    /// The table.
    pub table: String,
    /// The convention's attribute names.
    pub attributes: VersionAttributes,
    /// The deadline of one attempt (sending, the answer, and reading it).
    pub attempt_timeout: Duration,
}

/// The endpoint the SDK's DynamoDB client would call for `sdk`: its own resolver, fed what
/// `aws_sdk_dynamodb::config::Builder::from(sdk)` feeds it (an endpoint URL given in code, else
/// `AWS_ENDPOINT_URL_DYNAMODB` or the profile's service setting, else `AWS_ENDPOINT_URL`; region; FIPS;
/// dual-stack).
pub async fn resolve_endpoint(sdk: &aws_config::SdkConfig) -> Result<String, String> {
    use aws_types::service_config::ServiceConfigKey;
    let region = sdk
        .region()
        .map(|r| r.as_ref().to_owned())
        .ok_or("no region is configured for the target")?;
    let url = if sdk.get_origin("endpoint_url").is_client_config() {
        sdk.endpoint_url().map(str::to_owned)
    } else {
        sdk.service_config()
            .and_then(|conf| {
                conf.load_config(
                    ServiceConfigKey::builder()
                        .service_id("DynamoDB")
                        .env("AWS_ENDPOINT_URL")
                        .profile("endpoint_url")
                        .build()
                        .ok()?,
                )
            })
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
    };
    let params = Params::builder()
        .region(region)
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
        .set_endpoint(url)
        .build()
        .map_err(|e| format!("cannot build the endpoint parameters: {e}"))?;
    let endpoint = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| format!("cannot resolve the DynamoDB endpoint: {e}"))?;
    Ok(endpoint.url().to_owned())
}

/// Credentials from the SDK's provider, kept until shortly before they expire.
///
/// One caller refreshes at a time, within [`CREDENTIALS_TIMEOUT`]; while valid credentials remain,
/// nobody waits for a refresh and a failed refresh is only logged (and tried again after
/// [`MIN_REFRESH_INTERVAL`]). Without valid credentials a failed load is a retryable failure, and
/// callers in the following [`MIN_REFRESH_INTERVAL`] get that failure at once instead of each asking
/// the provider again.
struct CredentialCache {
    provider: SharedCredentialsProvider,
    state: RwLock<CacheState>,
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct CacheState {
    current: Option<Arc<Cached>>,
    /// When a refresh last failed, and why.
    failed: Option<(Instant, String)>,
}

/// One set of credentials and its signing keys.
struct Cached {
    credentials: Credentials,
    keys: KeyCache,
    fetched: Instant,
    /// Set when DynamoDB refused these credentials: load again before the next request.
    refused: std::sync::atomic::AtomicBool,
}

impl Cached {
    fn valid(&self, now: SystemTime) -> bool {
        !self.refused.load(std::sync::atomic::Ordering::Relaxed)
            && self.credentials.expiry().is_none_or(|expiry| expiry > now)
    }

    fn due(&self, now: SystemTime) -> bool {
        match self.credentials.expiry() {
            None => self.fetched.elapsed() >= NO_EXPIRY_LIFETIME,
            Some(expiry) => {
                expiry.duration_since(now).unwrap_or_default() <= REFRESH_BEFORE_EXPIRY
                    && self.fetched.elapsed() >= MIN_REFRESH_INTERVAL
            }
        }
    }
}

impl CredentialCache {
    fn new(provider: SharedCredentialsProvider) -> CredentialCache {
        CredentialCache {
            provider,
            state: RwLock::new(CacheState::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The current credentials if they are valid (and whether a refresh is due), or the recent
    /// failure to load any.
    fn peek(&self) -> (Option<Arc<Cached>>, bool, Option<String>) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let recent_failure = state
            .failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MIN_REFRESH_INTERVAL)
            .map(|(_, why)| why.clone());
        match &state.current {
            Some(cached) if cached.valid(now) => (
                Some(cached.clone()),
                cached.due(now) && recent_failure.is_none(),
                recent_failure,
            ),
            _ => (None, recent_failure.is_none(), recent_failure),
        }
    }

    async fn get(&self) -> Result<Arc<Cached>, AwsFailure> {
        let unavailable = |why: &str| {
            AwsFailure::synthetic(
                ErrorClass::Retryable,
                "credentials",
                format!("cannot load credentials for the target: {why}"),
            )
        };
        let (current, due, failure) = self.peek();
        match (current, due) {
            (Some(cached), false) => return Ok(cached),
            // Valid but due: one caller refreshes, the others go on with these.
            (Some(cached), true) => match self.refresh.try_lock() {
                Ok(_one_refresh) => return Ok(self.load().await.unwrap_or(cached)),
                Err(_) => return Ok(cached),
            },
            (None, false) => return Err(unavailable(failure.as_deref().unwrap_or("unknown"))),
            (None, true) => {}
        }
        let _one_refresh = self.refresh.lock().await;
        // Someone else may have loaded them (or failed to) while this caller waited.
        match self.peek() {
            (Some(cached), _, _) => return Ok(cached),
            (None, false, failure) => {
                return Err(unavailable(failure.as_deref().unwrap_or("unknown")));
            }
            (None, true, _) => {}
        }
        match self.load().await {
            Some(cached) => Ok(cached),
            None => {
                let (_, _, failure) = self.peek();
                Err(unavailable(failure.as_deref().unwrap_or("unknown")))
            }
        }
    }

    /// Asks the provider (the caller holds `refresh`); `None` when it failed, with the failure kept.
    async fn load(&self) -> Option<Arc<Cached>> {
        let loaded =
            tokio::time::timeout(CREDENTIALS_TIMEOUT, self.provider.provide_credentials()).await;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(Ok(credentials)) => {
                let cached = Arc::new(Cached {
                    credentials,
                    keys: KeyCache::default(),
                    fetched: Instant::now(),
                    refused: std::sync::atomic::AtomicBool::new(false),
                });
                state.current = Some(cached.clone());
                state.failed = None;
                Some(cached)
            }
            Ok(Err(error)) => {
                let why = aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string();
                tracing::warn!(error = %why, "Could not refresh the target's credentials.");
                state.failed = Some((Instant::now(), why));
                None
            }
            Err(_) => {
                let why = format!(
                    "the credential provider did not answer within {CREDENTIALS_TIMEOUT:?}"
                );
                tracing::warn!(error = %why, "Could not refresh the target's credentials.");
                state.failed = Some((Instant::now(), why));
                None
            }
        }
    }
}

/// The target on DynamoDB, written directly (see the module's documentation).
pub struct DirectTarget {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: http::Uri,
    /// The URI as the signer reads it.
    uri_text: String,
    host: HeaderValue,
    credentials: CredentialCache,
    /// The table name as a JSON string, quotes included.
    table_json: String,
    config: DirectConfig,
}

impl std::fmt::Debug for DirectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectTarget")
            .field("endpoint", &self.uri_text)
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}

impl DirectTarget {
    /// A writer for `config.table`, with credentials from `provider`.
    pub fn new(
        config: DirectConfig,
        provider: SharedCredentialsProvider,
    ) -> Result<DirectTarget, String> {
        let uri: http::Uri = config.endpoint.parse().map_err(|e| {
            format!(
                "the DynamoDB endpoint {:?} is not a URL: {e}",
                config.endpoint
            )
        })?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the DynamoDB endpoint {:?} has no host", config.endpoint))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!(
                "the DynamoDB endpoint {:?} must start with https:// (or http:// for a local one)",
                config.endpoint
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "the DynamoDB endpoint {:?} must not have a path or query",
                config.endpoint
            ));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("the endpoint's host is not a valid header: {e}"))?;
        let uri_text = format!("{}://{}/", uri.scheme_str().unwrap_or("https"), authority);
        let uri: http::Uri = uri_text
            .parse()
            .map_err(|e| format!("the endpoint {uri_text:?} is not a URL: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot load the platform's CA certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        let table_json =
            serde_json::to_string(&config.table).map_err(|e| format!("table name: {e}"))?;
        Ok(DirectTarget {
            http,
            uri,
            uri_text,
            host,
            credentials: CredentialCache::new(provider),
            table_json,
            config,
        })
    }

    /// The JSON body of `write` and its `X-Amz-Target`.
    fn body(&self, write: &Write) -> Result<(Vec<u8>, &'static str), AwsFailure> {
        let (operation, field, item, condition) = match write {
            Write::Put { item, condition } => {
                ("DynamoDB_20120810.PutItem", "Item", item, condition)
            }
            Write::Delete { key, condition } => {
                ("DynamoDB_20120810.DeleteItem", "Key", key, condition)
            }
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"TableName\":");
        out.extend_from_slice(self.table_json.as_bytes());
        out.extend_from_slice(b",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        write_item(&mut out, item)?;
        if let Some(condition) = condition {
            self.write_condition(&mut out, condition);
        }
        out.push(b'}');
        Ok((out, operation))
    }

    /// The condition's expression, names and values, as [`super::target::expression`] gives them to
    /// the SDK (a test checks that they agree).
    fn write_condition(&self, out: &mut Vec<u8>, condition: &Condition) {
        use std::io::Write as _;
        let attributes = &self.config.attributes;
        out.extend_from_slice(b",\"ConditionExpression\":");
        let text = match condition {
            Condition::Newer { .. } => NEWER_TEXT,
            Condition::NotNewerThan { .. } => NOT_NEWER_TEXT,
            Condition::Fenced { .. } => FENCED_TEXT,
        };
        write_str(out, text);
        out.extend_from_slice(b",\"ExpressionAttributeNames\":{");
        match condition {
            Condition::Newer { .. } => {
                out.extend_from_slice(b"\"#v\":");
                write_str(out, &attributes.version);
                out.extend_from_slice(b",\"#o\":");
                write_str(out, &attributes.origin);
            }
            Condition::NotNewerThan { .. } => {
                out.extend_from_slice(b"\"#v\":");
                write_str(out, &attributes.version);
            }
            Condition::Fenced { .. } => {
                out.extend_from_slice(b"\"#f\":");
                write_str(out, FENCE_ATTRIBUTE);
            }
        }
        out.extend_from_slice(b"},\"ExpressionAttributeValues\":{\":n\":{\"S\":\"N\"},");
        // Writing to a Vec cannot fail.
        let (name, number) = match condition {
            Condition::Newer { version, .. } | Condition::NotNewerThan { version } => {
                (":v", version.0)
            }
            Condition::Fenced { fence } => (":f", *fence),
        };
        let _ = write!(out, "\"{name}\":{{\"N\":\"{number}\"}}");
        if let Condition::Newer { origin, .. } = condition {
            out.extend_from_slice(b",\":o\":{\"S\":");
            write_str(out, origin);
            out.push(b'}');
        }
        out.push(b'}');
    }

    async fn send(&self, body: Vec<u8>, operation: &'static str) -> Result<Outcome, AwsFailure> {
        // Within the attempt's deadline too, so a write never goes out long after the lease check
        // that preceded it.
        let cached = tokio::time::timeout(self.config.attempt_timeout, self.credentials.get())
            .await
            .map_err(|_| {
                AwsFailure::synthetic(
                    ErrorClass::Retryable,
                    "credentials",
                    format!(
                        "no credentials for the target within {:?}",
                        self.config.attempt_timeout
                    ),
                )
            })??;
        let signature = sigv4::sign(
            &sigv4::Request {
                region: &self.config.region,
                service: "dynamodb",
                host: self.host.to_str().unwrap_or_default(),
                target: operation,
                body: &body,
            },
            &cached.credentials,
            &cached.keys,
            SystemTime::now(),
        );
        let header = |value: &str| {
            HeaderValue::from_str(value)
                .map_err(|e| construction(format!("a signing header is not valid: {e}")))
        };
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(JSON_1_0))
            .header("x-amz-target", HeaderValue::from_static(operation))
            .header("x-amz-date", header(&signature.amz_date)?)
            .header(AUTHORIZATION, header(&signature.authorization)?);
        if let Some(token) = cached.credentials.session_token() {
            request = request.header("x-amz-security-token", header(token)?);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| construction(format!("request: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                AwsFailure::synthetic(
                    ErrorClass::Retryable,
                    "dispatch",
                    format!(
                        "the write was not answered: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    ),
                )
            })?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    AwsFailure::synthetic(
                        ErrorClass::Retryable,
                        "response",
                        format!(
                            "the write's answer was cut off or over {MAX_ANSWER_BYTES} bytes: {e}"
                        ),
                    )
                })?;
            Ok::<_, AwsFailure>((parts, body.to_bytes()))
        };
        let (parts, body) = tokio::time::timeout(self.config.attempt_timeout, exchange)
            .await
            .map_err(|_| {
                AwsFailure::synthetic(
                    ErrorClass::Retryable,
                    "timeout",
                    format!(
                        "the write was not answered within {:?}",
                        self.config.attempt_timeout
                    ),
                )
            })??;
        if parts.status.is_success() {
            // DynamoDB answers a write with a JSON object (`{}` here). Anything else is not DynamoDB
            // (a wrong endpoint, a proxy's page): never take it as applied.
            return match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::Object(_)) => Ok(Outcome::Applied),
                _ => Err(AwsFailure::synthetic(
                    ErrorClass::Retryable,
                    "response",
                    format!(
                        "HTTP {} from {} with an answer that is not DynamoDB's JSON: is the \
                         endpoint a DynamoDB endpoint?",
                        parts.status.as_u16(),
                        self.uri_text
                    ),
                )),
            };
        }
        let failure = service_failure(parts.status.as_u16(), &parts.headers, &body);
        if failure.kind == "access_denied"
            && matches!(
                failure.code.as_deref(),
                Some(
                    "ExpiredTokenException"
                        | "UnrecognizedClientException"
                        | "InvalidSignatureException"
                )
            )
        {
            // Load the credentials again before the next attempt (rotated keys, a revoked session).
            cached
                .refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        refused(failure)
    }
}

impl TargetTable for DirectTarget {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        let (body, operation) = self.body(write)?;
        self.send(body, operation).await
    }
}

/// The target writer `replicator run` uses, as `--write-client` chose.
#[derive(Debug)]
pub enum Writer {
    /// Through the SDK's client.
    Sdk(AwsTarget),
    /// Directly.
    Direct(Box<DirectTarget>),
}

impl TargetTable for Writer {
    async fn write(&self, write: &Write) -> Result<Outcome, AwsFailure> {
        match self {
            Writer::Sdk(target) => target.write(write).await,
            Writer::Direct(target) => target.write(write).await,
        }
    }
}

fn construction(message: String) -> AwsFailure {
    AwsFailure::synthetic(ErrorClass::Fatal, "construction", message)
}

/// A DynamoDB error answer, classified as the SDK's errors are ([`classify_code`]): the code is the
/// part of `__type` after `#` (`com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException`).
pub(crate) fn service_failure(status: u16, headers: &http::HeaderMap, body: &[u8]) -> AwsFailure {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    // As the SDK's awsJson1_0 errors: the `x-amzn-errortype` header, else the body's `code`, else
    // `__type`; cut at the first `:` (a URL may follow) and after the last `#` (a namespace may
    // precede).
    let code = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| field("code"))
        .or_else(|| field("__type"))
        .map(|raw| {
            let before_colon = raw.split(':').next().unwrap_or_default();
            match before_colon.rsplit_once('#') {
                Some((_, code)) => code.to_owned(),
                None => before_colon.to_owned(),
            }
        })
        .filter(|code| !code.is_empty());
    let text = field("message")
        .or_else(|| field("Message"))
        .or_else(|| field("errorMessage"));
    let message = match (&code, text) {
        (Some(code), Some(text)) => format!("{code}: {text}"),
        (Some(code), None) => format!("{code} (HTTP {status})"),
        (None, _) => format!("HTTP {status} without a DynamoDB error code"),
    };
    let request_id = headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    AwsFailure::service(code, status, message, request_id)
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// An item (or a key, or expression values) in DynamoDB's JSON: `{"name":{"S":"..."},...}`.
fn write_item(out: &mut Vec<u8>, item: &Item) -> Result<(), AwsFailure> {
    out.push(b'{');
    for (i, (name, value)) in item.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_value(out, value)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_strings<'a>(out: &mut Vec<u8>, tag: &[u8], items: impl Iterator<Item = &'a str>) {
    out.extend_from_slice(tag);
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, item);
    }
    out.extend_from_slice(b"]}");
}

fn write_value(out: &mut Vec<u8>, value: &AttributeValue) -> Result<(), AwsFailure> {
    use aws_smithy_types::base64::encode;
    match value {
        AttributeValue::S(s) => {
            out.extend_from_slice(b"{\"S\":");
            write_str(out, s);
            out.push(b'}');
        }
        AttributeValue::N(n) => {
            out.extend_from_slice(b"{\"N\":");
            write_str(out, n);
            out.push(b'}');
        }
        AttributeValue::B(b) => {
            out.extend_from_slice(b"{\"B\":\"");
            out.extend_from_slice(encode(b.as_ref()).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        AttributeValue::Bool(b) => {
            out.extend_from_slice(if *b {
                b"{\"BOOL\":true}"
            } else {
                b"{\"BOOL\":false}"
            });
        }
        AttributeValue::Null(b) => {
            out.extend_from_slice(if *b {
                b"{\"NULL\":true}"
            } else {
                b"{\"NULL\":false}"
            });
        }
        AttributeValue::M(m) => {
            out.extend_from_slice(b"{\"M\":");
            write_item(out, m)?;
            out.push(b'}');
        }
        AttributeValue::L(l) => {
            out.extend_from_slice(b"{\"L\":[");
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v)?;
            }
            out.extend_from_slice(b"]}");
        }
        AttributeValue::Ss(v) => write_strings(out, b"{\"SS\":[", v.iter().map(String::as_str)),
        AttributeValue::Ns(v) => write_strings(out, b"{\"NS\":[", v.iter().map(String::as_str)),
        AttributeValue::Bs(v) => {
            let encoded: Vec<String> = v.iter().map(|b| encode(b.as_ref())).collect();
            write_strings(out, b"{\"BS\":[", encoded.iter().map(String::as_str));
        }
        other => {
            return Err(construction(format!(
                "an attribute value of a type this replicator does not know: {other:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::target::expression;
    use aws_sdk_dynamodb::primitives::Blob;
    use tworegion_common::version::Version;

    fn target() -> DirectTarget {
        target_at("http://127.0.0.1:9".into(), "to\"dos")
    }

    #[test]
    fn every_attribute_type_is_written_as_dynamodb_json() {
        let item: Item = [
            ("s".to_owned(), AttributeValue::S("a\"b\\c\n".into())),
            ("n".to_owned(), AttributeValue::N("-1.5E3".into())),
            (
                "b".to_owned(),
                AttributeValue::B(Blob::new(vec![0, 255, 1])),
            ),
            ("t".to_owned(), AttributeValue::Bool(true)),
            ("f".to_owned(), AttributeValue::Bool(false)),
            ("z".to_owned(), AttributeValue::Null(true)),
            (
                "m".to_owned(),
                AttributeValue::M([("x".to_owned(), AttributeValue::N("1".into()))].into()),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![
                    AttributeValue::S("q".into()),
                    AttributeValue::L(vec![]),
                ]),
            ),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["1".into(), "2.5".into()]),
            ),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(b"hi".to_vec()), Blob::new(vec![])]),
            ),
        ]
        .into();
        let mut out = Vec::new();
        write_item(&mut out, &item).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "s": {"S": "a\"b\\c\n"},
                "n": {"N": "-1.5E3"},
                "b": {"B": "AP8B"},
                "t": {"BOOL": true},
                "f": {"BOOL": false},
                "z": {"NULL": true},
                "m": {"M": {"x": {"N": "1"}}},
                "l": {"L": [{"S": "q"}, {"L": []}]},
                "ss": {"SS": ["a", "b"]},
                "ns": {"NS": ["1", "2.5"]},
                "bs": {"BS": ["aGk=", ""]},
            })
        );
    }

    /// `body`'s condition parts as JSON, beside what the SDK writer sends for the same condition.
    fn condition_json(condition: &Condition) -> (serde_json::Value, serde_json::Value) {
        let target = target();
        let item: Item = [("pk".to_owned(), AttributeValue::S("k".into()))].into();
        let (body, operation) = target
            .body(&Write::Put {
                item,
                condition: Some(condition.clone()),
            })
            .unwrap();
        assert_eq!(operation, "DynamoDB_20120810.PutItem");
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["TableName"], "to\"dos");
        assert_eq!(parsed["Item"], serde_json::json!({"pk": {"S": "k"}}));
        let ours = serde_json::json!({
            "text": parsed["ConditionExpression"],
            "names": parsed["ExpressionAttributeNames"],
            "values": parsed["ExpressionAttributeValues"],
        });
        let e = expression(condition, &VersionAttributes::default());
        let mut values = serde_json::Map::new();
        for (name, value) in &e.values {
            let mut out = Vec::new();
            write_value(&mut out, value).unwrap();
            values.insert(name.clone(), serde_json::from_slice(&out).unwrap());
        }
        let sdk = serde_json::json!({"text": e.text, "names": e.names, "values": values});
        (ours, sdk)
    }

    #[test]
    fn conditions_are_the_ones_the_sdk_writer_sends() {
        for condition in [
            Condition::Newer {
                version: Version(42),
                origin: "eu-\"west-1".into(),
            },
            Condition::Newer {
                version: Version(u64::MAX),
                origin: String::new(),
            },
            Condition::NotNewerThan {
                version: Version(7),
            },
            Condition::Fenced {
                fence: 1_796_640_989_381,
            },
        ] {
            let (ours, sdk) = condition_json(&condition);
            assert_eq!(ours, sdk, "{condition:?}");
        }
    }

    #[test]
    fn an_unconditional_delete_carries_the_table_and_key_only() {
        let item: Item = [("pk".to_owned(), AttributeValue::S("k".into()))].into();
        let (body, operation) = target()
            .body(&Write::Delete {
                key: item,
                condition: None,
            })
            .unwrap();
        assert_eq!(operation, "DynamoDB_20120810.DeleteItem");
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"TableName": "to\"dos", "Key": {"pk": {"S": "k"}}})
        );
    }

    #[test]
    fn error_answers_are_classified_like_the_sdks() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-amzn-requestid", HeaderValue::from_static("RID"));
        let conflict = service_failure(
            400,
            &headers,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#,
        );
        assert_eq!(conflict.class, ErrorClass::Conflict);
        assert_eq!(
            conflict.code.as_deref(),
            Some("ConditionalCheckFailedException")
        );
        assert_eq!(conflict.request_id.as_deref(), Some("RID"));
        let throttled = service_failure(
            400,
            &headers,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#,
        );
        assert_eq!(
            (throttled.class, throttled.kind),
            (ErrorClass::Retryable, "throttled")
        );
        assert_eq!(
            throttled.message,
            "ProvisionedThroughputExceededException: slow down"
        );
        let denied = service_failure(
            400,
            &headers,
            br#"{"__type":"com.amazon.coral.service#AccessDeniedException","Message":"no"}"#,
        );
        assert_eq!(
            (denied.class, denied.kind),
            (ErrorClass::Fatal, "access_denied")
        );
        let mut typed = http::HeaderMap::new();
        typed.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ThrottlingException:http://internal.amazon.com/coral/"),
        );
        let from_header = service_failure(400, &typed, b"{}");
        assert_eq!(from_header.code.as_deref(), Some("ThrottlingException"));
        assert_eq!(from_header.class, ErrorClass::Retryable);
        let with_url = service_failure(
            400,
            &headers,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException:http://x/","message":"gone"}"#,
        );
        assert_eq!(with_url.code.as_deref(), Some("ResourceNotFoundException"));
        let html = service_failure(503, &headers, b"<html>busy</html>");
        assert_eq!((html.class, html.kind), (ErrorClass::Retryable, "server"));
        assert_eq!(html.message, "HTTP 503 without a DynamoDB error code");
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused_with_the_reason() {
        let provider = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKID", "SECRET", None, None, "test",
        ));
        for (endpoint, says) in [
            ("not a url", "is not a URL"),
            ("ftp://host", "must start with https://"),
            ("https://host/path", "must not have a path"),
        ] {
            let error = DirectTarget::new(
                DirectConfig {
                    region: "eu-west-1".into(),
                    endpoint: endpoint.into(),
                    table: "t".into(),
                    attributes: VersionAttributes::default(),
                    attempt_timeout: Duration::from_secs(1),
                },
                provider.clone(),
            )
            .unwrap_err();
            assert!(error.contains(says), "{endpoint}: {error}");
        }
    }

    /// A credential provider that counts its calls and answers as told.
    #[derive(Debug, Default)]
    struct Provider {
        calls: std::sync::atomic::AtomicUsize,
        /// 0: static credentials; 1: expiring in `expires_in`; 2: fail; 3: never answer.
        behaviour: std::sync::atomic::AtomicUsize,
        expires_in: Duration,
    }

    impl ProvideCredentials for Provider {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            use std::sync::atomic::Ordering::SeqCst;
            let call = self.calls.fetch_add(1, SeqCst) + 1;
            let behaviour = self.behaviour.load(SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                let key = format!("AKID{call}");
                match behaviour {
                    0 => Ok(Credentials::new(key, "SECRET", None, None, "test")),
                    1 => Ok(Credentials::new(
                        key,
                        "SECRET",
                        Some("TOKEN".into()),
                        Some(SystemTime::now() + self.expires_in),
                        "test",
                    )),
                    2 => Err(
                        aws_credential_types::provider::error::CredentialsError::not_loaded(
                            "no credentials here",
                        ),
                    ),
                    _ => std::future::pending().await,
                }
            })
        }
    }

    fn cache(provider: &Arc<Provider>) -> CredentialCache {
        CredentialCache::new(SharedCredentialsProvider::new(ProviderRef(
            provider.clone(),
        )))
    }

    #[derive(Debug)]
    struct ProviderRef(Arc<Provider>);

    impl ProvideCredentials for ProviderRef {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0.provide_credentials()
        }
    }

    fn calls(provider: &Provider) -> usize {
        provider.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn static_credentials_are_loaded_once_then_again_after_fifteen_minutes() {
        let provider = Arc::new(Provider::default());
        let cache = cache(&provider);
        for _ in 0..100 {
            cache.get().await.unwrap();
        }
        assert_eq!(calls(&provider), 1);
        tokio::time::advance(NO_EXPIRY_LIFETIME).await;
        let fresh = cache.get().await.unwrap();
        assert_eq!(calls(&provider), 2);
        assert_eq!(fresh.credentials.access_key_id(), "AKID2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_is_a_retryable_failure_and_is_not_asked_by_every_caller() {
        let provider = Arc::new(Provider::default());
        provider
            .behaviour
            .store(2, std::sync::atomic::Ordering::SeqCst);
        let cache = cache(&provider);
        for _ in 0..10 {
            let failure = cache.get().await.err().unwrap();
            assert_eq!(
                (failure.class, failure.kind),
                (ErrorClass::Retryable, "credentials")
            );
            assert!(
                failure.message.contains("no credentials here"),
                "{}",
                failure.message
            );
        }
        assert_eq!(calls(&provider), 1, "asked once within the interval");
        tokio::time::advance(MIN_REFRESH_INTERVAL).await;
        provider
            .behaviour
            .store(0, std::sync::atomic::Ordering::SeqCst);
        cache.get().await.unwrap();
        assert_eq!(calls(&provider), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_never_answers_is_given_up_on() {
        let provider = Arc::new(Provider::default());
        provider
            .behaviour
            .store(3, std::sync::atomic::Ordering::SeqCst);
        let failure = cache(&provider).get().await.err().unwrap();
        assert_eq!(failure.class, ErrorClass::Retryable);
        assert!(
            failure.message.contains("did not answer"),
            "{}",
            failure.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiring_credentials_are_refreshed_and_kept_while_a_refresh_fails() {
        let provider = Arc::new(Provider {
            expires_in: Duration::from_secs(60),
            ..Provider::default()
        });
        provider
            .behaviour
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let cache = cache(&provider);
        let first = cache.get().await.unwrap();
        assert_eq!(first.credentials.session_token(), Some("TOKEN"));
        // Inside the 5-minute margin from the start, but asked again only after the interval.
        cache.get().await.unwrap();
        assert_eq!(calls(&provider), 1);
        tokio::time::advance(MIN_REFRESH_INTERVAL).await;
        provider
            .behaviour
            .store(2, std::sync::atomic::Ordering::SeqCst);
        let kept = cache.get().await.unwrap();
        assert_eq!(calls(&provider), 2, "the refresh was tried");
        assert_eq!(
            kept.credentials.access_key_id(),
            "AKID1",
            "and the valid ones kept"
        );
        cache.get().await.unwrap();
        assert_eq!(calls(&provider), 2, "not asked again right after a failure");
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_that_dynamodb_refused_are_loaded_again() {
        let provider = Arc::new(Provider::default());
        let cache = cache(&provider);
        let first = cache.get().await.unwrap();
        first
            .refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let second = cache.get().await.unwrap();
        assert_eq!(calls(&provider), 2);
        assert_eq!(second.credentials.access_key_id(), "AKID2");
    }

    /// Answers the first request on a loopback port with `answer`, then closes.
    fn answer_once(answer: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = vec![0u8; 65_536];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        endpoint
    }

    /// A writer for `table` at `endpoint`, with fixed credentials.
    fn target_at(endpoint: String, table: &str) -> DirectTarget {
        DirectTarget::new(
            DirectConfig {
                region: "eu-west-1".into(),
                endpoint,
                table: table.into(),
                attributes: VersionAttributes::default(),
                attempt_timeout: Duration::from_secs(5),
            },
            SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                "AKID", "SECRET", None, None, "test",
            )),
        )
        .unwrap()
    }

    async fn answer_to_a_delete(answer: &'static str) -> Result<Outcome, AwsFailure> {
        target_at(answer_once(answer), "t")
            .write(&Write::Delete {
                key: [("pk".to_owned(), AttributeValue::S("k".into()))].into(),
                condition: None,
            })
            .await
    }

    #[tokio::test]
    async fn answers_are_applied_conflicts_or_failures_and_never_a_guess() {
        assert_eq!(
            answer_to_a_delete("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap(),
            Outcome::Applied
        );
        let conflict = "HTTP/1.1 400 Bad Request\r\ncontent-length: 77\r\n\r\n\
            {\"__type\":\"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException\"}";
        assert_eq!(
            answer_to_a_delete(conflict).await.unwrap(),
            Outcome::Conflict
        );
        // A 200 that is not DynamoDB's JSON (a wrong endpoint, a proxy's page) is not applied.
        let not_dynamodb =
            answer_to_a_delete("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n<html>hi</html>")
                .await
                .unwrap_err();
        assert_eq!(
            (not_dynamodb.class, not_dynamodb.kind),
            (ErrorClass::Retryable, "response")
        );
        assert!(not_dynamodb.message.contains("not DynamoDB's JSON"));
        // An answer cut off before its declared length.
        let cut = answer_to_a_delete("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}")
            .await
            .unwrap_err();
        assert_eq!((cut.class, cut.kind), (ErrorClass::Retryable, "response"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_dispatch_failure() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let failure = target()
            .write(&Write::Delete {
                key: [("pk".to_owned(), AttributeValue::S("k".into()))].into(),
                condition: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (failure.class, failure.kind),
            (ErrorClass::Retryable, "dispatch")
        );
    }
}
