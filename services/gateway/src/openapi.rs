//! The OpenAPI 3.1 document of `/v1`, generated from the handlers' annotations (utoipa) and
//! served at `/v1/openapi.json`; `/v1/docs` renders it (RapiDoc, vendored from npm).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The one error shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: validation_failed, unauthorized, forbidden_scope, rate_limit_exceeded,
    /// token_budget_exceeded, payload_too_large, not_found, upstream_unavailable.
    pub error: String,
    pub message: String,
    /// What to do about it.
    pub hint: String,
    /// For `unauthorized`: missing_key, unknown_key or revoked_key.
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// For limits: seconds until a retry can succeed.
    #[schema(nullable = false)]
    pub retry_after: Option<u64>,
}

/// The error answers every `/v1` operation may give, in the one error shape.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its responses are used, in the document
pub enum Errors {
    #[response(status = 400, description = "validation_failed")]
    Validation(ErrorBody),
    #[response(status = 401, description = "unauthorized")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "forbidden_scope")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "not_found")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "conflict")]
    Conflict(ErrorBody),
    #[response(status = 413, description = "payload_too_large")]
    TooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "rate_limit_exceeded, token_budget_exceeded or too_many_streams"
    )]
    Limited(ErrorBody),
    #[response(status = 503, description = "upstream_unavailable")]
    Upstream(ErrorBody),
}

/// A job: a submitted event and what became of it.
#[derive(Serialize, ToSchema)]
pub struct JobBody {
    pub job_id: String,
    /// transaction or document.
    pub kind: String,
    /// processing, in_review, complete or dead_lettered.
    pub status: String,
    pub submitted_at: Option<i64>,
    pub updated_at: i64,
    /// The decision as the pipeline wrote it (model name and version, degraded, stage timings).
    pub decision: Option<serde_json::Value>,
    /// Why it was dead-lettered.
    pub dead_letter: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub reviewed_by: Option<String>,
    #[schema(nullable = false)]
    pub review: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub webhook: Option<serde_json::Value>,
    /// True when an Idempotency-Key returned an earlier job.
    #[schema(nullable = false)]
    pub idempotent_replay: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ReviewList {
    pub reviews: Vec<JobBody>,
}

/// A person's resolution of a review.
#[derive(Serialize, ToSchema)]
pub struct ResolutionBody {
    /// APPROVE or DECLINE (transactions), AUTO_ACCEPT or REJECT (documents).
    pub outcome: String,
    pub reviewer: String,
    pub note: Option<String>,
}

/// A transaction as a client sends it; `event_id`, `tenant_id` and `occurred_at` are set by
/// the gateway. Other fields of the `transactions` schema may be given.
#[derive(Serialize, ToSchema)]
pub struct TransactionBody {
    pub account_id: String,
    pub amount: f64,
    pub currency: String,
    pub merchant_id: String,
    pub merchant_category: String,
    pub country: String,
    /// CARD_PRESENT, ONLINE, TRANSFER or ATM.
    pub channel: String,
    /// An allowed URL to POST the job to when it is decided.
    #[schema(nullable = false)]
    pub callback_url: Option<String>,
}

/// A document as a client sends it.
#[derive(Serialize, ToSchema)]
pub struct DocumentBody {
    pub document_id: String,
    pub text: String,
    #[schema(nullable = false)]
    pub filename: Option<String>,
    #[schema(nullable = false)]
    pub callback_url: Option<String>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "verdict gateway", description = "Submit events, follow jobs, resolve reviews.", version = "1"),
    paths(
        crate::api::submit_transaction,
        crate::api::submit_document,
        crate::api::get_job,
        crate::api::job_events,
        crate::api::list_reviews,
        crate::api::resolve_review,
        crate::api::health,
        crate::api::openapi_json,
    ),
    components(schemas(ErrorBody, JobBody, ReviewList, ResolutionBody, TransactionBody, DocumentBody)),
    modifiers(&Bearer),
    security(("api_key" = []))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// Each operation is grouped under its resource in the rendered docs (utoipa's default
    /// tag, the handler's module path `crate::api`, said nothing to a reader).
    #[test]
    fn every_operation_is_tagged_with_its_resource() {
        let doc = super::document();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                operations += 1;
                let tag = match path.as_str() {
                    "/v1/transactions" | "/v1/documents" => "submissions",
                    p if p.starts_with("/v1/jobs") => "jobs",
                    p if p.starts_with("/v1/reviews") => "reviews",
                    "/v1/health" => "health",
                    _ => "documentation",
                };
                assert_eq!(op["tags"], serde_json::json!([tag]), "{method} {path}");
            }
        }
        assert_eq!(operations, 8);
    }
}
