//! The API's errors: a status, a stable code, a message, and when a retry
//! may pass. Every library error a handler meets maps to one here; `500
//! internal` is kept for the daemon's own faults.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paddock::agent::{ClientError, ErrorCode};
use paddock::{PoolError, VmError};

use crate::wire::{ErrorBody, ErrorEnvelope};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What happened.
    pub message: String,
    /// When a retry may pass.
    pub retry_after: Option<Duration>,
    /// The policy rule that denied the request.
    pub rule: Option<&'static str>,
}

impl ApiError {
    /// An error without a retry time.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rule: None,
        }
    }

    /// `400 bad_request`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `404` with `code`.
    #[must_use]
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// `409 lease_ended`, saying why.
    #[must_use]
    pub fn lease_ended(why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "lease_ended",
            format!("The lease ended: {why}"),
        )
    }

    /// `429 rate_limited`.
    #[must_use]
    pub fn rate_limited(limit: &str, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{limit}: retry in {} ms", retry_after.as_millis()),
            )
        }
    }

    /// `500 internal`.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            retry_after_ms: self
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            rule: self.rule.map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = ErrorEnvelope { error: self.body() };
        (self.status, axum::Json(envelope)).into_response()
    }
}

/// An error with its whole chain of causes, on one line.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> Self {
        let message = chain(&err);
        match err {
            PoolError::RateLimited { limit, retry_after } => Self::rate_limited(limit, retry_after),
            PoolError::AcquireTimeout { .. } | PoolError::Unavailable { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            PoolError::Closed => Self::new(StatusCode::CONFLICT, "draining", message),
            PoolError::Config(_) => Self::bad_request(message),
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(err: ClientError) -> Self {
        let message = chain(&err);
        match &err {
            ClientError::InvalidRequest(_) => Self::bad_request(message),
            ClientError::Denied(denial) => Self {
                rule: Some(denial.rule.as_str()),
                ..Self::new(StatusCode::FORBIDDEN, "policy_denied", message)
            },
            ClientError::Refused {
                limit: "lease_ended",
                ..
            } => Self::lease_ended("ended by an operator or an anomaly rule"),
            ClientError::Refused {
                limit,
                retry_after: Some(retry_after),
            } => Self::rate_limited(limit, *retry_after),
            ClientError::Refused {
                retry_after: None, ..
            } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message),
            ClientError::Agent {
                code: ErrorCode::NotFound,
                ..
            } => Self::not_found("not_found", message),
            ClientError::Agent {
                code: ErrorCode::InvalidArgument,
                ..
            } => Self::bad_request(message),
            ClientError::Agent {
                code: ErrorCode::UnsafePath,
                ..
            } => Self::new(StatusCode::BAD_REQUEST, "unsafe_path", message),
            ClientError::Agent {
                code: ErrorCode::TooLarge,
                ..
            }
            | ClientError::Tree(paddock::agent::TreeError::TooLarge { .. }) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            ClientError::Timeout { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            ClientError::LocalIo { .. } => Self::internal(message),
            ClientError::Unsupported { .. } => {
                Self::new(StatusCode::NOT_IMPLEMENTED, "unsupported", message)
            }
            _ => Self::new(StatusCode::BAD_GATEWAY, "agent_error", message),
        }
    }
}

impl From<VmError> for ApiError {
    fn from(err: VmError) -> Self {
        let message = chain(&err);
        match err {
            VmError::CommandFailed { .. } => Self::bad_request(message),
            VmError::RebuildUnfinished { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            VmError::Image(_) => Self::bad_request(message),
            _ => Self::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_retry_time_in_milliseconds() {
        let err = ApiError::from(PoolError::RateLimited {
            limit: "tenant_acquires",
            retry_after: Duration::from_millis(180),
        });
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        let body = err.body();
        assert_eq!(body.code, "rate_limited");
        assert_eq!(body.retry_after_ms, Some(180));
        let json = serde_json::to_value(ErrorEnvelope { error: body }).expect("json");
        assert_eq!(json["error"]["code"], "rate_limited");
    }

    #[test]
    fn agent_errors_keep_their_meaning() {
        let missing = ApiError::from(ClientError::Agent {
            code: ErrorCode::NotFound,
            message: "no such file".into(),
        });
        assert_eq!(
            (missing.status, missing.code),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let ended = ApiError::from(ClientError::Refused {
            limit: "lease_ended",
            retry_after: None,
        });
        assert_eq!(
            (ended.status, ended.code),
            (StatusCode::CONFLICT, "lease_ended")
        );
        let lost = ApiError::from(ClientError::ConnectionLost { source: None });
        assert_eq!(
            (lost.status, lost.code),
            (StatusCode::BAD_GATEWAY, "agent_error")
        );
        assert_eq!(
            ApiError::from(PoolError::Closed).code,
            "draining",
            "a closed pool is draining"
        );
    }

    #[test]
    fn a_policy_denial_is_forbidden_and_names_its_rule() {
        let denied = ApiError::from(ClientError::Denied(paddock::policy::Denial {
            policy: "read-only".into(),
            rule: paddock::policy::Rule::ExecProgram,
            detail: "program \"rm\" is not in [\"ls\"]".into(),
        }));
        assert_eq!(
            (denied.status, denied.code),
            (StatusCode::FORBIDDEN, "policy_denied")
        );
        let json = serde_json::to_value(ErrorEnvelope {
            error: denied.body(),
        })
        .expect("json");
        assert_eq!(json["error"]["rule"], "exec.program");
        let message = json["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains("read-only") && message.contains("\"rm\""),
            "{message}"
        );
        assert_eq!(json["error"].get("retry_after_ms"), None);
    }
}
