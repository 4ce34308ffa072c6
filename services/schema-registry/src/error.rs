//! API errors with Confluent Schema Registry's status and `error_code` values.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::json_response;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{0}' Version {1} was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", reasons.join(", "))]
    Incompatible {
        subject: String,
        reasons: Vec<String>,
    },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
    )]
    InvalidCompatibilityLevel(String),
    #[error("Malformed JSON in request body: {0}")]
    MalformedJson(String),
    #[error("Unprocessable entity: {0}")]
    Unprocessable(String),
    #[error("HTTP 404 Not Found")]
    NoRoute,
    /// The store failed; the detail is logged, never sent.
    #[error("Error in the backend data store")]
    Store(String),
    #[error("Operation timed out")]
    Timeout,
    /// No credentials, or wrong ones (`[auth]`).
    #[error("Unauthorized")]
    Unauthorized,
    #[error("User {user} is denied this operation: it needs the {} role", needs.as_str())]
    Forbidden {
        user: String,
        needs: crate::auth::Role,
    },
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        use ApiError::*;
        match self {
            SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
            VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
            SubjectLevelNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
            NoRoute => (StatusCode::NOT_FOUND, 404),
            Incompatible { .. } => (StatusCode::CONFLICT, 409),
            InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            MalformedJson(_) => (StatusCode::BAD_REQUEST, 400),
            Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
            Timeout => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
            Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            Forbidden { .. } => (StatusCode::FORBIDDEN, 40301),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Store(detail) = &self {
            tracing::error!(%detail, "schema store error");
        }
        let mut response = json_response(
            status,
            json!({ "error_code": code, "message": self.to_string() }),
        );
        if let ApiError::Unauthorized = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"verdict-schema-registry\""),
            );
        }
        response
    }
}
