//! `GET /v1/health`: the gateway, Kafka, the registry and each pipeline, open to anyone; the
//! details only to a caller with a valid key.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::App;
use crate::auth::Caller;
use crate::error::ApiError;

/// Whether Kafka and the registry answered, and when that was asked.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    kafka: bool,
    registry: bool,
    at: tokio::time::Instant,
}

/// How long a look at Kafka and the registry stands for `/v1/health`.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

impl App {
    /// Kafka and the registry as last seen, asked again when older than [`PROBE_EVERY`];
    /// concurrent callers wait for the one asking.
    async fn probe(&self) -> Probe {
        let mut last = self.probe.lock().await;
        if let Some(p) = *last
            && p.at.elapsed() < PROBE_EVERY
        {
            return p;
        }
        let kafka = self
            .kafka
            .wait_until_reachable(Duration::from_secs(2))
            .await
            .is_ok();
        let subjects = self.http.get(format!("{}/subjects", self.registry.url()));
        let registry = matches!(
            self.registry.sign(subjects).send().await,
            Ok(r) if r.status().is_success()
        );
        let p = Probe {
            kafka,
            registry,
            at: tokio::time::Instant::now(),
        };
        *last = Some(p);
        p
    }
}

/// `GET /v1/health`: the gateway, Kafka, the registry and each pipeline (lag in messages and
/// seconds, members, age of the last decision) as `ok`, `degraded` or `down`. Without a valid
/// key (any scope) only the overall status; Kafka and the registry are asked at most once
/// every 2 seconds however many ask.
#[utoipa::path(
    get,
    tag = "health",
    path = "/v1/health",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "ok or degraded, per dependency with a key", body = serde_json::Value),
        (status = 503, description = "down: Kafka does not answer", body = serde_json::Value),
    )
)]
pub async fn health(State(app): State<Arc<App>>, caller: Result<Caller, ApiError>) -> Response {
    let detailed = caller.is_ok();
    let Probe {
        kafka: kafka_ok,
        registry: registry_ok,
        ..
    } = app.probe().await;
    let state = |ok: bool| if ok { "ok" } else { "down" };
    let now = verdict_runtime::now_ms();
    let threshold = app.settings.adaptive.lag_threshold_seconds;
    let mut worst = match (kafka_ok, registry_ok) {
        (true, true) => 0,
        (true, false) => 1,
        _ => 2,
    };
    let mut pipelines = serde_json::Map::new();
    for route in [&app.transactions, &app.documents] {
        let lag = app.pipelines.lag(route.kind);
        let status = match &lag {
            None => "unknown",
            Some(l) if l.members == 0 && l.lag > 0 => "down",
            Some(l) if l.lag_seconds > threshold => "degraded",
            Some(_) => "ok",
        };
        if matches!(status, "down" | "degraded") {
            worst = worst.max(1);
        }
        pipelines.insert(
            route.service.clone(),
            json!({
                "status": status,
                "group": route.group,
                "lag": lag.as_ref().map(|l| l.lag),
                "lag_seconds": lag.as_ref().map(|l| l.lag_seconds),
                "members": lag.as_ref().map(|l| l.members),
                "last_decision_age_seconds": app.store.last_decision(route.kind)
                    .map(|t| verdict_runtime::groups::seconds_between(t, now)),
            }),
        );
    }
    let status = ["ok", "degraded", "down"][worst];
    let code = if kafka_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !detailed {
        return (code, axum::Json(json!({ "status": status }))).into_response();
    }
    (
        code,
        axum::Json(json!({
            "status": status,
            "services": {
                "gateway": {"status": "ok", "jobs_known": app.store.len()},
                "kafka": {"status": state(kafka_ok)},
                "registry": {"status": state(registry_ok)},
                "pipelines": pipelines,
            }
        })),
    )
        .into_response()
}
