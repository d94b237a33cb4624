//! The one place that decides what an AWS error means: retry it, take it as an answer, or give up.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What a caller should do about a failed AWS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, timeouts, dispatch failures, 5xx: retry with backoff.
    Retryable,
    /// A conditional check failed: an answer ("the target already has something newer"), not a failure.
    Conflict,
    /// Validation, access denied, missing resources: retrying will not help; an operator must act.
    Fatal,
}

/// A failed AWS call, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AwsFailure {
    /// What to do about it.
    pub class: ErrorClass,
    /// Short, low-cardinality name for metrics (`throttled`, `timeout`, `validation`, ...).
    pub kind: &'static str,
    /// The service's error code, if it gave one.
    pub code: Option<String>,
    /// What went wrong, for logs: `Code: the service's message` for a service error, the cause chain
    /// otherwise (never a dump of the raw HTTP response).
    pub message: String,
    /// The service's request ID, when it answered (for AWS support).
    pub request_id: Option<String>,
}

/// Throttling codes: the SDK's own list (`aws_runtime::retries::classifiers::THROTTLING_ERRORS`, a
/// test checks that this holds all of it) plus DynamoDB's. The direct calls make one attempt each, so
/// this table alone decides what the engine retries.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];
/// Transient codes: the SDK's (`TRANSIENT_ERRORS`, also checked) plus DynamoDB's server errors.
const TRANSIENT: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionConflictException",
];

/// Classifies an error code and HTTP status from a service response.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> (ErrorClass, &'static str) {
    match code {
        Some("ConditionalCheckFailedException") => (ErrorClass::Conflict, "conditional_check"),
        Some(c) if THROTTLING.contains(&c) => (ErrorClass::Retryable, "throttled"),
        Some(c) if TRANSIENT.contains(&c) => (ErrorClass::Retryable, "server"),
        Some("ValidationException") => (ErrorClass::Fatal, "validation"),
        Some("ResourceNotFoundException") => (ErrorClass::Fatal, "not_found"),
        Some(
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException",
        ) => (ErrorClass::Fatal, "access_denied"),
        _ => match status {
            Some(s) if s >= 500 => (ErrorClass::Retryable, "server"),
            Some(429) => (ErrorClass::Retryable, "throttled"),
            _ => (ErrorClass::Fatal, "other"),
        },
    }
}

impl AwsFailure {
    /// Classifies an error from any SDK operation.
    pub fn from_sdk<E>(error: &SdkError<E, HttpResponse>) -> AwsFailure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_dynamodb::operation::RequestId;
        let request_id = error.request_id().map(str::to_owned);
        let message = match error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("UnknownError");
                match service.err().message() {
                    Some(text) => format!("{code}: {text}"),
                    None => format!("{code} (HTTP {})", service.raw().status().as_u16()),
                }
            }
            other => DisplayErrorContext(other).to_string(),
        };
        let (class, kind) = match error {
            SdkError::TimeoutError(_) => (ErrorClass::Retryable, "timeout"),
            SdkError::DispatchFailure(_) => (ErrorClass::Retryable, "dispatch"),
            SdkError::ResponseError(_) => (ErrorClass::Retryable, "response"),
            SdkError::ConstructionFailure(_) => (ErrorClass::Fatal, "construction"),
            SdkError::ServiceError(service) => {
                let code = service.err().code().map(str::to_owned);
                let status = service.raw().status().as_u16();
                return AwsFailure::service(code, status, message, request_id);
            }
            _ => (ErrorClass::Fatal, "other"),
        };
        AwsFailure {
            class,
            kind,
            code: None,
            message,
            request_id,
        }
    }

    /// A service's error answer with its code and HTTP status, classified by [`classify_code`].
    pub fn service(
        code: Option<String>,
        status: u16,
        message: String,
        request_id: Option<String>,
    ) -> Self {
        let (class, kind) = classify_code(code.as_deref(), Some(status));
        AwsFailure {
            class,
            kind,
            code,
            message,
            request_id,
        }
    }

    /// A failure made up by an in-process model (tests, the simulator).
    pub fn synthetic(class: ErrorClass, kind: &'static str, message: impl Into<String>) -> Self {
        AwsFailure {
            class,
            kind,
            code: None,
            message: message.into(),
            request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_sdk_retries_is_retried() {
        use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
        for code in THROTTLING_ERRORS.iter().chain(TRANSIENT_ERRORS) {
            assert_eq!(
                classify_code(Some(code), Some(400)).0,
                ErrorClass::Retryable,
                "{code}"
            );
        }
        assert_eq!(
            classify_code(Some("SlowDown"), Some(503)),
            (ErrorClass::Retryable, "throttled")
        );
    }

    #[test]
    fn classifies_codes() {
        let c = |code, status| classify_code(code, status);
        assert_eq!(
            c(Some("ConditionalCheckFailedException"), Some(400)),
            (ErrorClass::Conflict, "conditional_check")
        );
        for code in THROTTLING {
            assert_eq!(
                c(Some(code), Some(400)),
                (ErrorClass::Retryable, "throttled")
            );
        }
        assert_eq!(
            c(Some("InternalServerError"), Some(500)),
            (ErrorClass::Retryable, "server")
        );
        assert_eq!(
            c(Some("ValidationException"), Some(400)),
            (ErrorClass::Fatal, "validation")
        );
        assert_eq!(
            c(Some("AccessDeniedException"), Some(400)),
            (ErrorClass::Fatal, "access_denied")
        );
        assert_eq!(
            c(Some("ResourceNotFoundException"), Some(400)),
            (ErrorClass::Fatal, "not_found")
        );
        assert_eq!(c(None, Some(503)), (ErrorClass::Retryable, "server"));
        assert_eq!(
            c(None, Some(500)),
            (ErrorClass::Retryable, "server"),
            "moto's HTML 500"
        );
        assert_eq!(c(None, Some(429)), (ErrorClass::Retryable, "throttled"));
        assert_eq!(
            c(Some("SomethingNew"), Some(400)),
            (ErrorClass::Fatal, "other")
        );
    }
}
