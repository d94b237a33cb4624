//! AWS Signature Version 4 for the direct writer's one request shape: a JSON `POST /` with the
//! headers `content-type`, `host`, `x-amz-date`, `x-amz-target` (and `x-amz-security-token` with
//! temporary credentials), all signed.
//!
//! The general signer (`aws_sigv4::http_request::sign`) was 15% of the replicator's CPU per record: it
//! derives the signing key (four HMACs) and builds the canonical request through general-purpose
//! formatting on every call. Here the key is derived once per day and credentials (with the SDK's own
//! `generate_signing_key`), the canonical request is written straight into one buffer, and the
//! signature is the SDK's own `calculate_signature`. The tests check that the `Authorization` header
//! is byte for byte the one `aws_sigv4` computes for the same request, with and without a session
//! token, over many times, hosts, targets and bodies.
//!
//! The canonical request, as AWS documents it ("Create a canonical request for Signature Version 4"):
//! method, canonical URI (`/`), canonical query (empty), the canonical headers (lowercase names,
//! sorted, `name:trimmed value`), the signed header names, and the hex SHA-256 of the payload.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use sha2::{Digest, Sha256};

/// `content-type` of DynamoDB's JSON protocol.
pub(crate) const JSON_1_0: &str = "application/x-amz-json-1.0";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The signing key of one day, for one set of credentials, region and service.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    key: Mutex<Option<(u64, [u8; 32])>>,
}

impl KeyCache {
    fn key(
        &self,
        secret: &str,
        now: SystemTime,
        day: u64,
        region: &str,
        service: &str,
    ) -> [u8; 32] {
        let mut cached = self.key.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((cached_day, key)) if *cached_day == day => *key,
            _ => {
                let derived =
                    aws_sigv4::sign::v4::generate_signing_key(secret, now, region, service);
                // HMAC-SHA256 output: always 32 bytes.
                let mut key = [0u8; 32];
                key.copy_from_slice(derived.as_ref());
                *cached = Some((day, key));
                key
            }
        }
    }
}

/// The headers that sign a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    /// `x-amz-date`: `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: String,
    /// `authorization`.
    pub authorization: String,
}

/// What identifies the request to sign.
pub(crate) struct Request<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// The `host` header as sent (with the port when it is not the scheme's default).
    pub host: &'a str,
    /// `x-amz-target`, for example `DynamoDB_20120810.PutItem`.
    pub target: &'a str,
    pub body: &'a [u8],
}

/// Signs `request` at `now` with `credentials` (whose key of the day `keys` caches). The caller sends
/// `x-amz-security-token` with the credentials' session token, if any.
pub(crate) fn sign(
    request: &Request<'_>,
    credentials: &Credentials,
    keys: &KeyCache,
    now: SystemTime,
) -> Signature {
    let seconds = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = seconds / 86_400;
    let amz_date = tworegion_common::time::basic_utc(seconds);
    let date = &amz_date[..8];
    let token = credentials.session_token();
    let signed_headers = if token.is_some() {
        "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
    } else {
        "content-type;host;x-amz-date;x-amz-target"
    };

    let mut canonical = String::with_capacity(512);
    canonical.push_str("POST\n/\n\ncontent-type:");
    canonical.push_str(JSON_1_0);
    canonical.push_str("\nhost:");
    canonical.push_str(request.host.trim());
    canonical.push_str("\nx-amz-date:");
    canonical.push_str(&amz_date);
    if let Some(token) = token {
        canonical.push_str("\nx-amz-security-token:");
        canonical.push_str(token.trim());
    }
    canonical.push_str("\nx-amz-target:");
    canonical.push_str(request.target.trim());
    canonical.push_str("\n\n");
    canonical.push_str(signed_headers);
    canonical.push('\n');
    push_hex(&mut canonical, &Sha256::digest(request.body));

    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);
    let mut string_to_sign = String::with_capacity(160);
    string_to_sign.push_str(ALGORITHM);
    string_to_sign.push('\n');
    string_to_sign.push_str(&amz_date);
    string_to_sign.push('\n');
    string_to_sign.push_str(&scope);
    string_to_sign.push('\n');
    push_hex(&mut string_to_sign, &Sha256::digest(canonical.as_bytes()));

    let key = keys.key(
        credentials.secret_access_key(),
        now,
        day,
        request.region,
        request.service,
    );
    let signature = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id()
    );
    Signature {
        amz_date,
        authorization,
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    use aws_smithy_runtime_api::client::identity::Identity;

    use super::*;

    /// The `x-amz-date` and `authorization` that the SDK's general signer gives the same request.
    fn reference(request: &Request<'_>, credentials: &Credentials, now: SystemTime) -> Signature {
        let identity: Identity = credentials.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(request.region)
            .name(request.service)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let uri = format!("https://{}/", request.host);
        let headers = [
            ("host", request.host),
            ("content-type", JSON_1_0),
            ("x-amz-target", request.target),
        ];
        let signable = SignableRequest::new(
            "POST",
            &uri,
            headers.into_iter(),
            SignableBody::Bytes(request.body),
        )
        .unwrap();
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .unwrap()
            .into_parts();
        let mut http = http::Request::builder()
            .method("POST")
            .uri(&uri)
            .body(())
            .unwrap();
        instructions.apply_to_request_http1x(&mut http);
        let header = |name: &str| http.headers()[name].to_str().unwrap().to_owned();
        if let Some(token) = credentials.session_token() {
            assert_eq!(header("x-amz-security-token"), token);
        }
        Signature {
            amz_date: header("x-amz-date"),
            authorization: header("authorization"),
        }
    }

    #[test]
    fn signs_exactly_as_the_sdks_signer_does() {
        let permanent = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let temporary = Credentials::new(
            "ASIAEXAMPLE",
            "secret/with+symbols",
            Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ==".to_owned()),
            None,
            "test",
        );
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let hosts = [
            "dynamodb.eu-west-1.amazonaws.com",
            "127.0.0.1:8000",
            "localhost:4566",
        ];
        let targets = ["DynamoDB_20120810.PutItem", "DynamoDB_20120810.DeleteItem"];
        let regions = ["eu-west-1", "us-east-1", "ap-southeast-4"];
        for round in 0..300 {
            // From 1970 to about 2100, and the seconds around midnight where the day's key changes.
            let seconds = match round % 3 {
                0 => next() % 4_102_444_800,
                1 => (next() % 47_000) * 86_400 + 86_399,
                _ => (next() % 47_000) * 86_400,
            };
            let now = UNIX_EPOCH + Duration::from_secs(seconds);
            let body: Vec<u8> = (0..next() % 300).map(|_| (next() % 256) as u8).collect();
            let credentials = if round % 2 == 0 {
                &permanent
            } else {
                &temporary
            };
            let request = Request {
                region: regions[round % 3],
                service: "dynamodb",
                host: hosts[round % hosts.len()],
                target: targets[round % 2],
                body: &body,
            };
            // A cache per round (the region changes with the round; a cache belongs to one region).
            let keys = KeyCache::default();
            let ours = sign(&request, credentials, &keys, now);
            assert_eq!(ours, reference(&request, credentials, now), "round {round}");
            // The cached key gives the same signature a second later on the same day.
            if seconds % 86_400 != 86_399 {
                let later = now + Duration::from_secs(1);
                assert_eq!(
                    sign(&request, credentials, &keys, later),
                    reference(&request, credentials, later),
                    "round {round}, cached key"
                );
            }
        }
    }

    #[test]
    fn a_cached_key_is_not_used_on_another_day() {
        let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
        let request = Request {
            region: "eu-west-1",
            service: "dynamodb",
            host: "h",
            target: "DynamoDB_20120810.PutItem",
            body: b"{}",
        };
        let keys = KeyCache::default();
        let before_midnight = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 - 1);
        let after_midnight = before_midnight + Duration::from_secs(1);
        sign(&request, &credentials, &keys, before_midnight);
        assert_eq!(
            sign(&request, &credentials, &keys, after_midnight),
            reference(&request, &credentials, after_midnight)
        );
    }
}
