//! `GET /v1/reviews` and `POST /v1/reviews/{id}`: the jobs waiting for a person, and a person's
//! resolution of one, written to `review-resolutions` and the audit topic. The first
//! resolution on the topic counts on every instance.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use verdict_runtime::avro::untyped;
use verdict_runtime::headers::HeaderMap;
use verdict_runtime::serde::ValueSchema;

use super::extract::{Path, Query};
use super::{App, job_response};
use crate::auth::{Caller, Scope};
use crate::error::ApiError;
use crate::jobs::Status;

#[derive(Debug, Default, Deserialize)]
pub struct ReviewQuery {
    /// `open` (default: waiting for a person) or `resolved`.
    status: Option<String>,
}

/// `GET /v1/reviews?status=open|resolved`: the tenant's jobs that wait for (or got) a person's
/// decision.
#[utoipa::path(
    get,
    tag = "reviews",
    path = "/v1/reviews",
    params(("status" = Option<String>, Query, description = "open (default) or resolved")),
    responses(
        (status = 200, description = "The tenant's reviews", body = crate::openapi::ReviewList),
        crate::openapi::Errors,
    )
)]
pub async fn list_reviews(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<ReviewQuery>,
) -> Result<Response, ApiError> {
    caller.require(Scope::JobsRead)?;
    let open = match q.status.as_deref().unwrap_or("open") {
        "open" => true,
        "resolved" => false,
        other => {
            return Err(ApiError::Validation {
                message: format!("status `{other}`: expected open or resolved"),
            });
        }
    };
    let reviews = app.store.reviews(&caller.tenant, open);
    Ok(axum::Json(json!({"reviews": reviews})).into_response())
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
    tag = "reviews",
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
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::ReviewsWrite)?;
    let bytes = axum::body::to_bytes(body, app.settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            message: "the request body is too large".into(),
        })?;
    let r: Resolution = serde_json::from_slice(&bytes).map_err(|e| ApiError::Validation {
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
            k["outcome"] == resolution["outcome"] && k["resolved_at"] == resolution["resolved_at"]
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
