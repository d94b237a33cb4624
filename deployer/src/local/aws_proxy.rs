//! A proxy in front of the local AWS that knows regions: it reads the region and service from each
//! request's SigV4 credential scope, fails every call signed for a region in an outage (before it
//! reaches the local AWS, and also when the region goes down while the call is on its way, so that
//! an answer can be lost after the call was applied, as in a real outage), and delays calls that
//! cross from the proxy's home region to the other by the configured round trip (half on the way
//! there, half on the way back). Global services (Route 53, IAM) are never failed or delayed,
//! except for callers inside a region in an outage: they reach nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::faults::Faults;
use super::http::{self, Upstream};

/// Services whose endpoints are global: a regional outage does not reach them here.
const GLOBAL_SERVICES: &[&str] = &["route53", "iam", "cloudfront", "organizations"];

/// One proxy: the callers in `home` (None: outside both regions, such as an operator's laptop).
pub struct AwsProxy {
    /// The callers' region.
    pub home: Option<String>,
    /// The local AWS.
    pub upstream: SocketAddr,
    /// The faults.
    pub faults: Arc<Faults>,
    /// Round trip between the regions.
    pub delay: Duration,
    /// Forwarding client.
    pub client: Upstream,
}

/// `(region, service)` from `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, ...`.
pub fn credential_scope(authorization: &str) -> Option<(String, String)> {
    let credential = authorization
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("Credential="))?;
    let mut parts = credential.split('/');
    let (_key, _date) = (parts.next()?, parts.next()?);
    let region = parts.next()?;
    let service = parts.next()?;
    Some((region.to_owned(), service.to_owned()))
}

/// `(region, service)` from a presigned URL's `X-Amz-Credential=AKID%2FDATE%2FREGION%2FSERVICE%2Faws4_request`.
pub fn presigned_scope(query: &str) -> Option<(String, String)> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("X-Amz-Credential="))?;
    let decoded = value.replace("%2F", "/").replace("%2f", "/");
    credential_scope(&format!("Credential={decoded}"))
}

impl AwsProxy {
    fn unavailable(region: &str) -> Response<Body> {
        let mut response = http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("local fault: region {region} is in an outage (deployer local fault)"),
        );
        response.headers_mut().insert(
            "x-amzn-errortype",
            hyper::header::HeaderValue::from_static("ServiceUnavailable"),
        );
        response
    }

    /// Handles one call.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        // A process inside a region in an outage reaches nothing at all.
        if let Some(home) = self.home.as_deref()
            && self.faults.is_down(home)
        {
            return Self::unavailable(home);
        }
        let scope = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(credential_scope)
            .or_else(|| req.uri().query().and_then(presigned_scope));
        let Some((region, service)) = scope else {
            return http::forward(&self.client, self.upstream, req, None)
                .await
                .unwrap_or_else(|e| http::error(StatusCode::BAD_GATEWAY, &e));
        };
        if GLOBAL_SERVICES.contains(&service.as_str()) {
            return http::forward(&self.client, self.upstream, req, None)
                .await
                .unwrap_or_else(|e| http::error(StatusCode::BAD_GATEWAY, &e));
        }
        let cross = self.home.as_deref().is_some_and(|home| home != region);
        let half = if cross {
            self.delay / 2
        } else {
            Duration::ZERO
        };
        if self.faults.is_down(&region) {
            return Self::unavailable(&region);
        }
        if !half.is_zero() {
            tokio::time::sleep(half).await;
            if self.faults.is_down(&region) {
                return Self::unavailable(&region);
            }
        }
        let response = match http::forward(&self.client, self.upstream, req, None).await {
            Ok(r) => r,
            Err(e) => return http::error(StatusCode::BAD_GATEWAY, &e),
        };
        if !half.is_zero() {
            tokio::time::sleep(half).await;
        }
        // The region went down while the answer was on its way: the caller never gets it.
        if self.faults.is_down(&region) {
            return Self::unavailable(&region);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_credential_scope() {
        let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-west-2/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(
            credential_scope(header),
            Some(("us-west-2".into(), "dynamodb".into()))
        );
        assert_eq!(credential_scope("Bearer x"), None);
        assert_eq!(
            presigned_scope(
                "Action=x&X-Amz-Credential=AK%2F20261130%2Fus-east-1%2Fdynamodb%2Faws4_request&X-Amz-Date=1"
            ),
            Some(("us-east-1".into(), "dynamodb".into()))
        );
        assert_eq!(
            credential_scope("AWS4-HMAC-SHA256 Credential=AK/2026"),
            None
        );
    }
}
