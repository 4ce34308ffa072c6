//! The one error shape every endpoint answers with: a stable `error` code per kind, a
//! message that says what happened, and a `hint` that says what to do. Never an internal
//! message, path or stack: those go to the log.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { message: String },
    #[error("{message}")]
    Unauthorized {
        reason: &'static str,
        message: String,
    },
    #[error("this key may not {needed}")]
    ForbiddenScope { needed: String },
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("{message}")]
    TokenBudget {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    #[error("this tenant already has {max} open event streams")]
    TooManyStreams { max: usize },
    #[error("no such {what}")]
    NotFound { what: &'static str },
    /// The resource changed under the request (a review resolved by someone else first).
    #[error("{message}")]
    Conflict { message: String },
    /// A dependency (Kafka, the registry) did not answer; the details are logged.
    #[error("a dependency is unavailable")]
    Upstream,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::ForbiddenScope { .. } => "forbidden_scope",
            ApiError::RateLimited { .. } => "rate_limit_exceeded",
            ApiError::TokenBudget { .. } => "token_budget_exceeded",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManyStreams { .. } => "too_many_streams",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Upstream => "upstream_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::ForbiddenScope { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. }
            | ApiError::TokenBudget { .. }
            | ApiError::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Upstream => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn hint(&self) -> String {
        match self {
            ApiError::Validation { .. } => "fix the named field and send the request again".into(),
            ApiError::Unauthorized { .. } => {
                "send a valid key as `Authorization: Bearer <key>`".into()
            }
            ApiError::ForbiddenScope { needed } => {
                format!("use a key with the `{needed}` scope")
            }
            ApiError::RateLimited { retry_after_secs } => {
                format!("wait {retry_after_secs} s (Retry-After) before the next request")
            }
            ApiError::TokenBudget {
                retry_after_secs, ..
            } => format!("wait {retry_after_secs} s (Retry-After) or send smaller documents"),
            ApiError::PayloadTooLarge { .. } => "send a smaller request".into(),
            ApiError::TooManyStreams { .. } => {
                "close a stream you no longer read, or poll GET /v1/jobs/{id}".into()
            }
            ApiError::NotFound { .. } => "check the id; jobs are kept for a limited time".into(),
            ApiError::Conflict { .. } => "read the job again: it has changed".into(),
            ApiError::Upstream => "retry later with the same Idempotency-Key".into(),
        }
    }
}

/// A query string axum could not read (`api::extract::Query`).
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Validation {
            message: r.body_text(),
        }
    }
}

/// A path parameter axum could not read (`api::extract::Path`). A handler reading a parameter
/// its route lacks is a bug of ours: logged, and still answered in the one shape.
impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        if r.status().is_server_error() {
            tracing::error!(rejection = %r.body_text(), "a handler reads a path parameter its route lacks");
        }
        ApiError::Validation {
            message: r.body_text(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "error": self.code(),
            "message": self.to_string(),
            "hint": self.hint(),
        });
        if let ApiError::Unauthorized { reason, .. } = &self {
            body["reason"] = json!(reason);
        }
        let retry = match &self {
            ApiError::RateLimited { retry_after_secs }
            | ApiError::TokenBudget {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(r) = retry {
            body["retry_after"] = json!(r);
        }
        let mut resp = (self.status(), Json(body)).into_response();
        if let Some(r) = retry
            && let Ok(v) = HeaderValue::from_str(&r.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
