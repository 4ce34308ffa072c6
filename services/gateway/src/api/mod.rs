//! The HTTP API (`/v1`), one module per resource. [`router`] is the table of routes; the
//! caller comes from the [`Caller`](crate::auth::Caller) extractor (`extract`) and the
//! per-tenant limits from one middleware (`limit`), so handlers only check the scope,
//! validate, produce and answer. The rules live in `auth`, `limits` and `jobs`.

pub mod docs;
pub mod extract;
pub mod health;
pub mod job_routes;
pub mod limit;
pub mod reviews;
pub mod submissions;

// The handlers where `openapi` names them: the document tags each operation with that module
// path (`crate::api`), so the split leaves the document as it was.
pub use docs::{__path_openapi_json, openapi_json};
pub use health::{__path_health, health};
pub use job_routes::{__path_get_job, __path_job_events, get_job, job_events};
pub use reviews::{__path_list_reviews, __path_resolve_review, list_reviews, resolve_review};
pub use submissions::{
    __path_submit_document, __path_submit_transaction, submit_document, submit_transaction,
};

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use rdkafka::producer::FutureProducer;
use serde_json::json;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::serde::AvroSerde;

use crate::auth::Scope;
use crate::config::Gateway;
use crate::error::ApiError;
use crate::jobs::{Job, JobStore};
use crate::limits::Limiter;

/// Where one kind of submission goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: &'static str,
    pub topic: String,
    pub key_field: &'static str,
    pub scope: Scope,
    /// Where audit records of this kind's reviews go.
    pub audit: String,
    /// The service that decides it, and its consumer group (for adaptive limits and health).
    pub service: String,
    pub group: String,
}

/// Labels of the per-key usage counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KeyUsage {
    pub key: String,
    pub tenant: String,
    /// The answer's status class: 2xx, 4xx, 5xx.
    pub status: String,
}

pub struct App {
    /// `verdict_gateway_requests_total{key, tenant, status}`.
    pub usage: prometheus_client::metrics::family::Family<
        KeyUsage,
        prometheus_client::metrics::counter::Counter,
    >,
    pub settings: Gateway,
    pub kafka: KafkaSettings,
    pub registry: verdict_runtime::registry::Registry,
    pub producer: FutureProducer,
    /// What each topic takes, so a record is refused before it is sent.
    pub record_limits: verdict_runtime::record_limit::RecordLimits,
    pub serde: AvroSerde,
    pub store: Arc<JobStore>,
    pub limiter: Limiter,
    /// For the health checks of the registry.
    pub http: reqwest::Client,
    /// For webhook deliveries: public addresses only (see `webhooks`).
    pub webhook_http: reqwest::Client,
    /// Open SSE streams by tenant.
    pub streams: Arc<DashMap<String, usize>>,
    /// Job ids being submitted now (one request at a time per Idempotency-Key).
    pub sending: Arc<DashMap<String, ()>>,
    pub pipelines: Arc<crate::pipelines::Pipelines>,
    /// The last look at Kafka and the registry, for `/v1/health`.
    pub probe: tokio::sync::Mutex<Option<health::Probe>>,
    pub transactions: Route,
    pub documents: Route,
}

/// The routes of `/v1`. Limited routes need a key and take a request from the tenant's
/// bucket before the handler runs (`limit`); a submission names the pipeline it feeds,
/// whose lag shrinks batch keys' limits. The others are open and not limited.
pub fn router(app: Arc<App>) -> Router {
    let limited = |feeds: Option<&'static str>| {
        let state = limit::Limited {
            app: app.clone(),
            feeds,
        };
        from_fn_with_state(state, limit::limit)
    };
    let (transactions, documents) = (app.transactions.kind, app.documents.kind);
    Router::new()
        .route(
            "/v1/transactions",
            post(submissions::submit_transaction).route_layer(limited(Some(transactions))),
        )
        .route(
            "/v1/documents",
            post(submissions::submit_document).route_layer(limited(Some(documents))),
        )
        .route(
            "/v1/jobs/{id}",
            get(job_routes::get_job).route_layer(limited(None)),
        )
        .route(
            "/v1/jobs/{id}/events",
            get(job_routes::job_events).route_layer(limited(None)),
        )
        .route(
            "/v1/reviews",
            get(reviews::list_reviews).route_layer(limited(None)),
        )
        .route(
            "/v1/reviews/{id}",
            post(reviews::resolve_review).route_layer(limited(None)),
        )
        .route("/v1/health", get(health::health))
        .route("/v1/openapi.json", get(docs::openapi_json))
        .route("/v1/docs", get(docs::docs_page))
        .route("/v1/docs/rapidoc-min.js", get(docs::rapidoc_js))
        .fallback(|| async { ApiError::NotFound { what: "endpoint" } })
        .layer(axum::middleware::from_fn(
            verdict_runtime::telemetry::trace_requests,
        ))
        .with_state(app)
}

impl App {
    /// Refuses a record of `size` bytes (key, value, headers) that `topic` could not take with
    /// the headers of a retry or dead-letter copy: 413 with the limit.
    async fn fits(&self, topic: &str, size: usize) -> Result<(), ApiError> {
        let limit = self.record_limits.of(topic).await.map_err(|e| {
            tracing::warn!(error = %e, %topic, "reading the topic's record limit");
            ApiError::Upstream
        })?;
        limit
            .check(topic, size)
            .map_err(|e| ApiError::PayloadTooLarge {
                message: format!(
                    "the event encodes to {} bytes; the pipeline takes at most {} ({} less {} kept \
                 for the headers of a retry or dead-letter copy)",
                    e.size,
                    e.usable,
                    e.max,
                    verdict_runtime::record_limit::DEAD_LETTER_HEADROOM
                ),
            })
    }
}

/// A job as every resource answers it, with its `Location`; `replayed` when an
/// Idempotency-Key returned an earlier one.
fn job_response(job: &Job, status: StatusCode, replayed: bool) -> Response {
    let mut body = serde_json::to_value(job).unwrap_or_else(|_| json!({}));
    if replayed {
        body["idempotent_replay"] = json!(true);
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.job_id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
