//! `/metrics` (OpenMetrics) and `/readyz` for the registry, beside its API and open like
//! `GET /` (probes and scrapers need no user): requests by method, route template and
//! status with their durations, and what the store holds. No subject or schema text in a
//! label, so the series stay bounded by the API's routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::log::SchemaLog;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route's template (`/subjects/{subject}/versions`), `unmatched` for none.
    route: String,
    /// `2xx`, `4xx`, `5xx`.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

pub struct RegistryMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    schemas: Gauge,
    subjects: Gauge,
}

/// How long `/readyz` waits for the store to catch up with its topic.
const READY_WITHIN: Duration = Duration::from_secs(2);

impl Default for RegistryMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("verdict_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
        });
        let schemas = Gauge::default();
        let subjects = Gauge::default();
        registry.register(
            "requests",
            "API requests by method, route and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request durations by method and route",
            durations.clone(),
        );
        registry.register(
            "schemas",
            "Schemas the store holds (distinct ids)",
            schemas.clone(),
        );
        registry.register("subjects", "Subjects with a live version", subjects.clone());
        Self {
            registry,
            requests,
            durations,
            schemas,
            subjects,
        }
    }
}

impl RegistryMetrics {
    fn observe(&self, method: &str, route: &str, status: StatusCode, took: Duration) {
        let class = format!("{}xx", status.as_u16() / 100);
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: class,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The metrics as OpenMetrics text, the store's gauges read now.
    async fn encode(&self, log: &SchemaLog) -> String {
        {
            let store = log.read().await;
            self.schemas
                .set(i64::try_from(store.schema_count()).unwrap_or(i64::MAX));
            self.subjects.set(
                i64::try_from(store.subjects().filter(|(_, s)| s.is_live()).count())
                    .unwrap_or(i64::MAX),
            );
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// The middleware: counts and times every request by its route's template.
pub async fn record(
    State(metrics): State<Arc<RegistryMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(&method, &route, response.status(), started.elapsed());
    response
}

/// `GET /metrics`.
pub async fn metrics(
    State((log, metrics)): State<(Arc<SchemaLog>, Arc<RegistryMetrics>)>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(&log).await,
    )
        .into_response()
}

/// `GET /readyz`: 200 once the store has caught up with its topic now (so a write would be
/// decided on the latest state), 503 saying why not. Names no address.
pub async fn readyz(State((log, _)): State<(Arc<SchemaLog>, Arc<RegistryMetrics>)>) -> Response {
    match tokio::time::timeout(READY_WITHIN, log.catch_up()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the store cannot read its topic (Kafka does not answer)\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not catch up with its topic within {READY_WITHIN:?}\n"
            ),
        )
            .into_response(),
    }
}
