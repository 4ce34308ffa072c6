//! The HTTP API (`/v1`): submit transactions and documents, read jobs, health. Handlers are
//! thin: authenticate, limit, validate, produce, answer; the rules live in `auth`, `limits`
//! and `jobs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap as HttpHeaders, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use futures::StreamExt;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use verdict_runtime::avro::{check_fields, untyped};
use verdict_runtime::headers::HeaderMap;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::serde::{AvroSerde, ValueSchema};

use crate::auth::{Caller, Scope, authenticate, presented_key};
use crate::config::Gateway;
use crate::error::ApiError;
use crate::jobs::{Job, JobStore, Role, Status};
use crate::limits::{Limiter, Verdict};

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
    pub registry_url: String,
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
    pub probe: tokio::sync::Mutex<Option<Probe>>,
    pub transactions: Route,
    pub documents: Route,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/transactions", post(submit_transaction))
        .route("/v1/documents", post(submit_document))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/docs", get(docs_page))
        .route("/v1/docs/rapidoc-min.js", get(rapidoc_js))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/reviews", get(list_reviews))
        .route("/v1/reviews/{id}", post(resolve_review))
        .route("/v1/health", get(health))
        .fallback(|| async { ApiError::NotFound { what: "endpoint" } })
        .with_state(app)
}

#[derive(Debug, Default, Deserialize)]
pub struct SubmitQuery {
    /// `2s`, `1500ms` or seconds: answer with the decision if it arrives in time.
    wait: Option<String>,
}

/// Parses `2s`, `1500ms`, `2` (seconds).
pub fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    let bad = || ApiError::Validation {
        message: format!("wait `{s}` is not a duration (e.g. 2s or 1500ms)"),
    };
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad());
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(bad)
}

/// A job id claimed by the request submitting it, released when the request ends.
struct Claim {
    sending: Arc<DashMap<String, ()>>,
    id: String,
}

impl Claim {
    /// `None` when another request holds it.
    fn take(sending: &Arc<DashMap<String, ()>>, id: &str) -> Option<Self> {
        match sending.entry(id.to_string()) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(v) => {
                v.insert(());
                Some(Self {
                    sending: sending.clone(),
                    id: id.to_string(),
                })
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.sending.remove(&self.id);
    }
}

/// One open SSE stream of a tenant, counted while it lives.
struct StreamPermit {
    streams: Arc<DashMap<String, usize>>,
    tenant: String,
}

impl StreamPermit {
    fn take(
        streams: &Arc<DashMap<String, usize>>,
        tenant: &str,
        max: usize,
    ) -> Result<Self, ApiError> {
        let mut open = streams.entry(tenant.to_string()).or_default();
        if *open >= max {
            return Err(ApiError::TooManyStreams { max });
        }
        *open += 1;
        Ok(Self {
            streams: streams.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(mut open) = self.streams.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
        }
        self.streams.remove_if(&self.tenant, |_, open| *open == 0);
    }
}

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
        let registry = matches!(
            self.http.get(format!("{}/subjects", self.registry_url)).send().await,
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

    /// Authenticates the request and counts it against its tenant's limit; `feeds` (the job
    /// kind a submission feeds) shrinks a `batch` key's limits while that pipeline lags, and
    /// says so.
    fn admit(
        &self,
        headers: &HttpHeaders,
        feeds: Option<&str>,
    ) -> Result<(Caller, Verdict, Option<String>), ApiError> {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let caller = authenticate(
            &self.settings.keys,
            presented_key(h(header::AUTHORIZATION.as_str()), h("x-api-key")),
        )?;
        let limits = self
            .settings
            .tenants
            .get(&caller.tenant)
            .copied()
            .unwrap_or(self.settings.default_limits);
        let a = &self.settings.adaptive;
        let lagging = feeds
            .and_then(|kind| self.pipelines.lag(kind))
            .filter(|l| l.lag_seconds > a.lag_threshold_seconds);
        let (limits, note) = match (lagging, caller.tier) {
            (Some(l), crate::config::Tier::Batch) => (
                crate::limits::scaled(limits, a.batch_factor),
                Some(format!(
                    "reduced to {:.0}% while {} lags {:.1} s (> {:.0} s); interactive keys keep their limits",
                    a.batch_factor * 100.0,
                    l.service,
                    l.lag_seconds,
                    a.lag_threshold_seconds
                )),
            ),
            _ => (limits, None),
        };
        // Batch keys have a bucket of their own, so shrinking theirs never takes from the
        // tenant's interactive keys.
        let bucket = match caller.tier {
            crate::config::Tier::Interactive => caller.tenant.clone(),
            crate::config::Tier::Batch => format!("{}/batch", caller.tenant),
        };
        let verdict = self
            .limiter
            .check(&bucket, limits, verdict_runtime::now_ms());
        Ok((caller, verdict, note))
    }
}

fn with_limits(mut resp: Response, v: &Verdict, adaptive: Option<&str>) -> Response {
    let h = resp.headers_mut();
    if let Some(note) = adaptive
        && let Ok(val) = HeaderValue::from_str(note)
    {
        h.insert("x-ratelimit-adaptive", val);
    }
    for (name, value) in [
        ("x-ratelimit-limit", v.limit.to_string()),
        ("x-ratelimit-remaining", v.remaining.to_string()),
        ("x-ratelimit-reset", v.reset_secs.to_string()),
    ] {
        if let Ok(val) = HeaderValue::from_str(&value) {
            h.insert(name, val);
        }
    }
    if v.warning {
        h.insert(
            "x-ratelimit-warning",
            HeaderValue::from_static("80% of the request allowance is used"),
        );
    }
    resp
}

/// Runs `f` for an admitted caller and puts the limit headers on whatever it answers.
async fn admitted<F, Fut>(
    app: &App,
    headers: &HttpHeaders,
    scope: Scope,
    feeds: Option<&str>,
    f: F,
) -> Response
where
    F: FnOnce(Caller) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let (caller, verdict, adaptive) = match app.admit(headers, feeds) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (caller_key, caller_tenant) = (caller.key_id.clone(), caller.tenant.clone());
    let result = if verdict.allowed {
        match caller.require(scope) {
            Ok(()) => f(caller).await,
            Err(e) => Err(e),
        }
    } else {
        Err(ApiError::RateLimited {
            retry_after_secs: verdict.retry_after_secs,
        })
    };
    let resp = result.unwrap_or_else(IntoResponse::into_response);
    app.usage
        .get_or_create(&KeyUsage {
            key: caller_key,
            tenant: caller_tenant,
            status: format!("{}xx", resp.status().as_u16() / 100),
        })
        .inc();
    with_limits(resp, &verdict, adaptive.as_deref())
}

#[utoipa::path(
    post,
    path = "/v1/transactions",
    request_body = crate::openapi::TransactionBody,
    params(
        ("wait" = Option<String>, Query, description = "Answer with the decision if it comes within this time (e.g. 2s, 1500ms; at most 30 s)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job instead of sending again"),
        ("X-Timeout" = Option<String>, Header, description = "Give up waiting after this time and answer with what is known"),
    ),
    responses(
        (status = 200, description = "Decided within the wait", body = crate::openapi::JobBody),
        (status = 202, description = "Accepted; follow Location", body = crate::openapi::JobBody),
        crate::openapi::Errors,
    )
)]
pub async fn submit_transaction(
    State(app): State<Arc<App>>,
    Query(q): Query<SubmitQuery>,
    headers: HttpHeaders,
    body: Body,
) -> Response {
    let route = app.transactions.clone();
    submit_to(&app, route, q, headers, body).await
}

#[utoipa::path(
    post,
    path = "/v1/documents",
    request_body = crate::openapi::DocumentBody,
    params(
        ("wait" = Option<String>, Query, description = "Answer with the decision if it comes within this time"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job instead of sending again"),
        ("X-Timeout" = Option<String>, Header, description = "Give up waiting after this time"),
        ("X-Max-Tokens" = Option<String>, Header, description = "Refuse the document if its estimated tokens exceed this"),
    ),
    responses(
        (status = 200, description = "Decided within the wait", body = crate::openapi::JobBody),
        (status = 202, description = "Accepted; follow Location", body = crate::openapi::JobBody),
        crate::openapi::Errors,
    )
)]
pub async fn submit_document(
    State(app): State<Arc<App>>,
    Query(q): Query<SubmitQuery>,
    headers: HttpHeaders,
    body: Body,
) -> Response {
    let route = app.documents.clone();
    submit_to(&app, route, q, headers, body).await
}

async fn submit_to(
    app: &App,
    route: Route,
    q: SubmitQuery,
    headers: HttpHeaders,
    body: Body,
) -> Response {
    admitted(app, &headers, route.scope, Some(route.kind), |caller| {
        submit(app, route, caller, q, &headers, body)
    })
    .await
}

/// A job id from the tenant and its Idempotency-Key: the same on every instance.
pub fn idempotent_id(tenant: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("verdict-idempotency\n{tenant}\n{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

async fn submit(
    app: &App,
    route: Route,
    caller: Caller,
    q: SubmitQuery,
    headers: &HttpHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut wait = match &q.wait {
        Some(w) => parse_wait(w)?.min(Duration::from_millis(app.settings.max_wait_ms)),
        None => Duration::ZERO,
    };
    if let Some(t) = header("x-timeout") {
        wait = wait.min(parse_wait(t)?);
    }
    let bytes = axum::body::to_bytes(body, app.settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            message: format!(
                "the request body is larger than {} bytes",
                app.settings.max_body_bytes
            ),
        })?;
    let mut event: Json = serde_json::from_slice(&bytes).map_err(|e| ApiError::Validation {
        message: format!("the body is not JSON: {e}"),
    })?;
    let Some(obj) = event.as_object_mut() else {
        return Err(ApiError::Validation {
            message: "the body must be a JSON object".into(),
        });
    };
    let job_id = match header("idempotency-key") {
        Some(k) => idempotent_id(&caller.tenant, k),
        None => uuid::Uuid::new_v4().to_string(),
    };
    // One request at a time per key on this instance: the others get its job once it is
    // known, or 409 while it is being sent.
    let claim = Claim::take(&app.sending, &job_id);
    if let Some(existing) = app.store.get(&job_id)
        && existing.tenant == caller.tenant
    {
        return Ok(job_response(&existing, StatusCode::OK, true));
    }
    let _claim = claim.ok_or_else(|| ApiError::Conflict {
        message: "a request with this Idempotency-Key is being sent now; send it again for its job"
            .into(),
    })?;
    let callback = match obj.remove("callback_url") {
        None | Some(Json::Null) => None,
        Some(Json::String(url)) => {
            let hooks = &app.settings.webhooks;
            let parsed = crate::webhooks::check_url(&url, hooks.allowed_for(&caller.tenant))
                .map_err(|message| ApiError::Validation { message })?;
            crate::webhooks::check_destination(&parsed, hooks.allow_private_addresses)
                .await
                .map_err(|message| ApiError::Validation { message })?;
            let secret = app
                .settings
                .webhook_secrets
                .get(&caller.tenant)
                .map(|s| s.expose().to_string())
                .ok_or_else(|| ApiError::Validation {
                    message: "callback_url: no webhook secret is configured for this tenant".into(),
                })?;
            Some((url, secret))
        }
        Some(_) => {
            return Err(ApiError::Validation {
                message: "callback_url must be a string".into(),
            });
        }
    };
    obj.insert("event_id".into(), json!(job_id));
    obj.insert("tenant_id".into(), json!(caller.tenant));
    obj.entry("occurred_at")
        .or_insert_with(|| json!(verdict_runtime::now_ms()));
    let token_estimate = if route.kind == "document" {
        let text = obj.get("text").and_then(Json::as_str).unwrap_or("");
        let (bytes, chars) = (text.len(), text.chars().count());
        obj.entry("size_bytes").or_insert_with(|| json!(bytes));
        obj.entry("content_type")
            .or_insert_with(|| json!("text/plain"));
        obj.entry("source").or_insert_with(|| json!("gateway"));
        // About four characters per token, as the document-analyzer estimates.
        let estimate = chars.div_ceil(4);
        if let Some(max) = header("x-max-tokens") {
            let max: usize = max.parse().map_err(|_| ApiError::Validation {
                message: format!("X-Max-Tokens `{max}` is not a number"),
            })?;
            if estimate > max {
                return Err(ApiError::PayloadTooLarge {
                    message: format!(
                        "the document is about {estimate} tokens, more than X-Max-Tokens {max}"
                    ),
                });
            }
        }
        Some(estimate)
    } else {
        None
    };
    let schema = app.serde.latest_schema(&route.topic).await.map_err(|e| {
        tracing::warn!(error = %e, topic = %route.topic, "no schema");
        ApiError::Upstream
    })?;
    check_fields(&schema, &event).map_err(|message| ApiError::Validation { message })?;
    // The token budget is spent only by documents that will be sent.
    if let Some(estimate) = token_estimate {
        let budget = app
            .settings
            .token_budgets
            .get(&caller.tenant)
            .copied()
            .unwrap_or(app.settings.default_token_budget);
        let bucket = crate::config::TenantLimits {
            requests_per_minute: (budget.tokens_per_hour / 60).max(1),
            burst: budget.tokens_per_hour,
        };
        if estimate > budget.tokens_per_hour as usize {
            return Err(ApiError::PayloadTooLarge {
                message: format!(
                    "the document is about {estimate} tokens, more than the tenant's whole budget of {} per hour",
                    budget.tokens_per_hour
                ),
            });
        }
        let spent = app.limiter.take(
            &format!("tokens:{}", caller.tenant),
            bucket,
            u32::try_from(estimate).unwrap_or(u32::MAX),
            verdict_runtime::now_ms(),
        );
        if !spent.allowed {
            return Err(ApiError::TokenBudget {
                message: format!(
                    "the document is about {estimate} tokens; {} of the tenant's {} tokens per hour are left",
                    spent.remaining, budget.tokens_per_hour
                ),
                retry_after_secs: spent.retry_after_secs,
            });
        }
    }
    let key = event[route.key_field]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| job_id.clone());
    let value = app
        .serde
        .encode(&route.topic, &ValueSchema::TopicLatest, untyped(&event))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "encoding a submission");
            ApiError::Upstream
        })?;
    let mut h = HeaderMap::default();
    verdict_runtime::telemetry::inject_trace(&tracing::Span::current(), &mut h);
    app.fits(&route.topic, key.len() + value.len() + h.byte_len())
        .await?;
    verdict_runtime::producer::send(
        &app.producer,
        &route.topic,
        Some(key.as_bytes()),
        Some(&value),
        h.to_kafka(),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "producing a submission");
        ApiError::Upstream
    })?;
    app.store.apply(
        Role::Input,
        route.kind,
        &event,
        None,
        verdict_runtime::now_ms(),
    );
    if let Some((url, secret)) = callback {
        tokio::spawn(crate::webhooks::deliver(
            app.store.clone(),
            app.settings.webhooks.clone(),
            app.webhook_http.clone(),
            secret,
            job_id.clone(),
            url,
            Duration::from_millis(app.settings.job_ttl_ms),
        ));
    }
    let job = if wait.is_zero() {
        app.store.get(&job_id)
    } else {
        app.store.wait(&job_id, wait).await
    };
    let job = job.ok_or(ApiError::Upstream)?;
    let status = if job.status == Status::Processing {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(job_response(&job, status, false))
}

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

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    params(("id" = String, Path, description = "The job id (the event_id)")),
    responses(
        (status = 200, description = "The job", body = crate::openapi::JobBody),
        crate::openapi::Errors,
    )
)]
pub async fn get_job(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HttpHeaders,
) -> Response {
    let store = app.store.clone();
    admitted(&app, &headers, Scope::JobsRead, None, |caller| async move {
        match store.get(&id) {
            Some(job) if job.tenant == caller.tenant => {
                Ok(job_response(&job, StatusCode::OK, false))
            }
            _ => Err(ApiError::NotFound { what: "job" }),
        }
    })
    .await
}

/// The SSE events of a job: one `status` event per status it went through (`id` = its
/// number), then a `final` event once it is complete or dead-lettered; comments as heartbeats
/// while nothing happens. `Last-Event-ID` resumes after that event.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    params(
        ("id" = String, Path, description = "The job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `status` events, heartbeats, a `final` event", content_type = "text/event-stream", body = String),
        crate::openapi::Errors,
    )
)]
pub async fn job_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HttpHeaders,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let last_seen: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let store = app.store.clone();
    let heartbeat = Duration::from_millis(app.settings.sse_heartbeat_ms);
    let app2 = app.clone();
    admitted(&app, &headers, Scope::JobsRead, None, |caller| async move {
        let app = app2;
        let job = store
            .get(&id)
            .filter(|j| j.tenant == caller.tenant)
            .ok_or(ApiError::NotFound { what: "job" })?;
        // Held by the stream: its place is freed when the stream ends or the client goes.
        let permit = StreamPermit::take(
            &app.streams,
            &caller.tenant,
            app.settings.max_streams_per_tenant,
        )?;
        // State: how many status events were sent, and whether the stream is over.
        let init = (
            (store, permit),
            id,
            usize::try_from(last_seen)
                .unwrap_or(usize::MAX)
                .min(job.history.len()),
            false,
        );
        let stream =
            futures::stream::unfold(init, move |((store, permit), id, sent, done)| async move {
                if done {
                    return None;
                }
                let now = store.get(&id)?;
                let job = if now.history.len() > sent || now.status.is_final() {
                    now
                } else {
                    store
                        .changed_after(&id, sent, Duration::from_secs(3600))
                        .await?
                };
                let mut events = Vec::new();
                for (seq, status, at) in job.history.iter().skip(sent) {
                    let data = json!({"job_id": job.job_id, "status": status, "at": at});
                    events.push(
                        Event::default()
                            .id(seq.to_string())
                            .event("status")
                            .data(data.to_string()),
                    );
                }
                let finished = job.status.is_final();
                let final_seq = job.history.len() as u64 + 1;
                if finished && final_seq > last_seen {
                    let body = serde_json::to_string(&job).unwrap_or_default();
                    events.push(
                        Event::default()
                            .id(final_seq.to_string())
                            .event("final")
                            .data(body),
                    );
                }
                let sent = job.history.len();
                Some((
                    futures::stream::iter(
                        events.into_iter().map(Ok::<_, std::convert::Infallible>),
                    ),
                    ((store, permit), id, sent, finished),
                ))
            })
            .flatten();
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
            .into_response())
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct ReviewQuery {
    /// `open` (default: waiting for a person) or `resolved`.
    status: Option<String>,
}

/// `GET /v1/reviews?status=open|resolved`: the tenant's jobs that wait for (or got) a person's
/// decision.
#[utoipa::path(
    get,
    path = "/v1/reviews",
    params(("status" = Option<String>, Query, description = "open (default) or resolved")),
    responses(
        (status = 200, description = "The tenant's reviews", body = crate::openapi::ReviewList),
        crate::openapi::Errors,
    )
)]
pub async fn list_reviews(
    State(app): State<Arc<App>>,
    Query(q): Query<ReviewQuery>,
    headers: HttpHeaders,
) -> Response {
    let store = app.store.clone();
    admitted(&app, &headers, Scope::JobsRead, None, |caller| async move {
        let open = match q.status.as_deref().unwrap_or("open") {
            "open" => true,
            "resolved" => false,
            other => {
                return Err(ApiError::Validation {
                    message: format!("status `{other}`: expected open or resolved"),
                });
            }
        };
        let reviews = store.reviews(&caller.tenant, open);
        Ok(axum::Json(json!({"reviews": reviews})).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct Resolution {
    outcome: String,
    reviewer: String,
    note: Option<String>,
}

/// The outcomes a reviewer may give for a kind of job.
pub fn review_outcomes(kind: &str) -> &'static [&'static str] {
    match kind {
        "document" => &["AUTO_ACCEPT", "REJECT"],
        _ => &["APPROVE", "DECLINE"],
    }
}

/// `POST /v1/reviews/{event_id}` `{outcome, reviewer, note}`: writes a `review-resolutions`
/// record and an audit record; the job becomes `complete` with `reviewed_by`.
#[utoipa::path(
    post,
    path = "/v1/reviews/{id}",
    params(("id" = String, Path, description = "The job id (event_id) in review")),
    request_body = crate::openapi::ResolutionBody,
    responses(
        (status = 200, description = "Resolved: the job, complete with reviewed_by", body = crate::openapi::JobBody),
        crate::openapi::Errors,
    )
)]
pub async fn resolve_review(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HttpHeaders,
    body: Body,
) -> Response {
    let app2 = app.clone();
    admitted(
        &app,
        &headers,
        Scope::ReviewsWrite,
        None,
        |caller| async move {
            let app = app2;
            let bytes = axum::body::to_bytes(body, app.settings.max_body_bytes)
                .await
                .map_err(|_| ApiError::PayloadTooLarge {
                    message: "the request body is too large".into(),
                })?;
            let r: Resolution =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::Validation {
                    message: format!("expected {{\"outcome\", \"reviewer\", \"note\"}}: {e}"),
                })?;
            let job = app
                .store
                .get(&id)
                .filter(|j| j.tenant == caller.tenant)
                .ok_or(ApiError::NotFound { what: "job" })?;
            if let (Some(by), Some(review)) = (&job.reviewed_by, &job.review) {
                return Err(ApiError::Conflict {
                    message: format!(
                        "job {id} was already resolved by {by} ({})",
                        review["outcome"].as_str().unwrap_or("?")
                    ),
                });
            }
            if job.status != Status::InReview {
                return Err(ApiError::Validation {
                    message: format!(
                        "job {id} is not waiting for a review (it is {:?})",
                        job.status
                    ),
                });
            }
            let allowed = review_outcomes(&job.kind);
            if !allowed.contains(&r.outcome.as_str()) {
                return Err(ApiError::Validation {
                    message: format!(
                        "outcome `{}`: expected one of {}",
                        r.outcome,
                        allowed.join(", ")
                    ),
                });
            }
            if r.reviewer.trim().is_empty() {
                return Err(ApiError::Validation {
                    message: "reviewer must name who resolves the review".into(),
                });
            }
            let decision = job.decision.clone().unwrap_or(Json::Null);
            let pipeline_outcome = decision
                .get("outcome")
                .or_else(|| decision.get("route"))
                .and_then(Json::as_str)
                .unwrap_or("REVIEW")
                .to_string();
            let resolution = json!({
                "event_id": id,
                "tenant_id": caller.tenant,
                "resolved_at": verdict_runtime::now_ms(),
                "kind": job.kind,
                "pipeline_outcome": pipeline_outcome,
                "outcome": r.outcome,
                "reviewer": r.reviewer,
                "note": r.note,
                "api_key_id": caller.key_id,
            });
            let route = if job.kind == "document" {
                &app.documents
            } else {
                &app.transactions
            };
            let audit = verdict_runtime::audit::Audit::human_review(
                "gateway",
                &id,
                &caller.tenant,
                decision.to_string().as_bytes(),
                &r.reviewer,
            )
            .outcome(&r.outcome)
            .detail("pipeline_outcome", &pipeline_outcome)
            .detail("api_key_id", &caller.key_id);
            // Both encoded and checked before either is sent.
            let mut records = Vec::with_capacity(2);
            for (topic, value) in [
                (app.settings.resolutions_topic.clone(), resolution.clone()),
                (route.audit.clone(), audit.to_json()),
            ] {
                let bytes = app
                    .serde
                    .encode(&topic, &ValueSchema::TopicLatest, untyped(&value))
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, %topic, "encoding a review record");
                        ApiError::Upstream
                    })?;
                app.fits(&topic, id.len() + bytes.len()).await?;
                records.push((topic, bytes));
            }
            // The resolution first. Another person (on this instance or another) may resolve
            // the same review at the same moment: the first resolution on the topic (keyed by
            // the job, so in one partition's order) is the one every instance keeps, so the
            // answer waits until this instance has read which one that is.
            let mut records = records.into_iter();
            for (topic, bytes) in records.by_ref().take(1) {
                send_review_record(&app, &topic, &id, &bytes).await?;
            }
            let kept = app
                .store
                .reviewed(&id, Duration::from_secs(10))
                .await
                .ok_or(ApiError::Upstream)?;
            let ours = kept.reviewed_by.as_deref() == Some(r.reviewer.as_str())
                && kept.review.as_ref().is_some_and(|k| {
                    k["outcome"] == resolution["outcome"]
                        && k["resolved_at"] == resolution["resolved_at"]
                });
            if !ours {
                return Err(ApiError::Conflict {
                    message: format!(
                        "job {id} was resolved by {} ({}) first",
                        kept.reviewed_by.as_deref().unwrap_or("?"),
                        kept.review
                            .as_ref()
                            .and_then(|k| k["outcome"].as_str())
                            .unwrap_or("?")
                    ),
                });
            }
            // Then the audit of the resolution that counts.
            for (topic, bytes) in records {
                send_review_record(&app, &topic, &id, &bytes).await?;
            }
            Ok(job_response(&kept, StatusCode::OK, false))
        },
    )
    .await
}

async fn send_review_record(
    app: &App,
    topic: &str,
    id: &str,
    bytes: &[u8],
) -> Result<(), ApiError> {
    verdict_runtime::producer::send(
        &app.producer,
        topic,
        Some(id.as_bytes()),
        Some(bytes),
        HeaderMap::default().to_kafka(),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        tracing::warn!(error = %e, "producing a review record");
        ApiError::Upstream
    })
}

/// `GET /v1/health`: the gateway, Kafka, the registry and each pipeline (lag in messages and
/// seconds, members, age of the last decision) as `ok`, `degraded` or `down`. Without a valid
/// key (any scope) only the overall status; Kafka and the registry are asked at most once per
/// [`PROBE_EVERY`] however many ask.
#[utoipa::path(
    get,
    path = "/v1/health",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "ok or degraded, per dependency with a key", body = serde_json::Value),
        (status = 503, description = "down: Kafka does not answer", body = serde_json::Value),
    )
)]
pub async fn health(State(app): State<Arc<App>>, headers: HttpHeaders) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let detailed = authenticate(
        &app.settings.keys,
        presented_key(h(header::AUTHORIZATION.as_str()), h("x-api-key")),
    )
    .is_ok();
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

/// `GET /v1/openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn openapi_json() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

/// `GET /v1/docs`: the document rendered by RapiDoc (served from the binary, no network).
async fn docs_page() -> Response {
    axum::response::Html(DOCS_PAGE).into_response()
}

/// `GET /v1/docs/rapidoc-min.js`.
async fn rapidoc_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        RAPIDOC_JS,
    )
        .into_response()
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>verdict gateway API</title>
<script type="module" src="/v1/docs/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/v1/openapi.json" render-style="read" allow-try="true" load-fonts="false"
 show-header="false" heading-text="verdict gateway"></rapi-doc></body></html>"#;

const RAPIDOC_JS: &str = include_str!("../assets/rapidoc-min.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_in_seconds_or_milliseconds() {
        assert_eq!(parse_wait("2s").expect("2s"), Duration::from_secs(2));
        assert_eq!(
            parse_wait("1500ms").expect("ms"),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_wait("0.5").expect("0.5"), Duration::from_millis(500));
        assert_eq!(
            parse_wait("soon").expect_err("bad").code(),
            "validation_failed"
        );
        assert!(parse_wait("-1s").is_err());
    }

    #[test]
    fn idempotency_keys_give_the_same_job_id_per_tenant() {
        let a = idempotent_id("t1", "order-42");
        assert_eq!(a, idempotent_id("t1", "order-42"));
        assert_ne!(a, idempotent_id("t2", "order-42"));
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }
}
