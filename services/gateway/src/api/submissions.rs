//! `POST /v1/transactions` and `POST /v1/documents`: a submission becomes a job. Its id comes
//! from the Idempotency-Key when there is one, so a retry gets the same job; the event is
//! checked against the topic's schema and size and sent; the answer waits for the decision
//! as long as `wait` allows.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap as HttpHeaders, StatusCode};
use axum::response::Response;
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tracing::Instrument as _;
use verdict_runtime::avro::{check_fields, untyped};
use verdict_runtime::headers::HeaderMap;
use verdict_runtime::serde::ValueSchema;
use verdict_runtime::telemetry;

use super::extract::Query;
use super::{App, Route, job_response};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::jobs::{Role, Status};

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

#[utoipa::path(
    post,
    tag = "submissions",
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
    caller: Caller,
    Query(q): Query<SubmitQuery>,
    headers: HttpHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    submit(&app, &app.transactions, caller, q, &headers, body).await
}

#[utoipa::path(
    post,
    tag = "submissions",
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
    caller: Caller,
    Query(q): Query<SubmitQuery>,
    headers: HttpHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    submit(&app, &app.documents, caller, q, &headers, body).await
}

/// A job id from the tenant and its Idempotency-Key: the same on every instance.
pub fn idempotent_id(tenant: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("verdict-idempotency\n{tenant}\n{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// Checks one submission of `route`'s kind, sends it and answers with its job.
async fn submit(
    app: &App,
    route: &Route,
    caller: Caller,
    q: SubmitQuery,
    headers: &HttpHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(route.scope)?;
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
    telemetry::record_event_id(&job_id);
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
        spend_tokens(app, &caller.tenant, estimate)?;
    }
    let key = event[route.key_field]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| job_id.clone());
    let value = app
        .serde
        .encode(&route.topic, &ValueSchema::TopicLatest, untyped(&event))
        .instrument(telemetry::stage_span("encode"))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "encoding a submission");
            ApiError::Upstream
        })?;
    // The record continues the request's trace from its `produce` span.
    let produce = telemetry::stage_span("produce");
    let mut h = HeaderMap::default();
    telemetry::inject_trace(&produce, &mut h);
    app.fits(&route.topic, key.len() + value.len() + h.byte_len())
        .await?;
    verdict_runtime::producer::send(
        &app.producer,
        &route.topic,
        Some(key.as_bytes()),
        Some(&value),
        h.to_kafka(),
    )
    .instrument(produce)
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

/// Takes a document's estimated tokens from its tenant's hourly budget: 413 past the whole
/// budget, 429 with Retry-After while too little of it is left. The request limit's headers
/// come from the `limit` middleware; this one needs the document, so it is here.
fn spend_tokens(app: &App, tenant: &str, estimate: usize) -> Result<(), ApiError> {
    let budget = app
        .settings
        .token_budgets
        .get(tenant)
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
        &format!("tokens:{tenant}"),
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
    Ok(())
}

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
