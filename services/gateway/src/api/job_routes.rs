//! `GET /v1/jobs/{id}` and its SSE events: a job as the job store knows it, to its tenant only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap as HttpHeaders, StatusCode};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use futures::StreamExt;
use serde_json::json;

use super::extract::Path;
use super::{App, job_response};
use crate::auth::{Caller, Scope};
use crate::error::ApiError;

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

#[utoipa::path(
    get,
    tag = "jobs",
    path = "/v1/jobs/{id}",
    params(("id" = String, Path, description = "The job id (the event_id)")),
    responses(
        (status = 200, description = "The job", body = crate::openapi::JobBody),
        crate::openapi::Errors,
    )
)]
pub async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::JobsRead)?;
    match app.store.get(&id) {
        Some(job) if job.tenant == caller.tenant => Ok(job_response(&job, StatusCode::OK, false)),
        _ => Err(ApiError::NotFound { what: "job" }),
    }
}

/// The SSE events of a job: one `status` event per status it went through (`id` = its
/// number), then a `final` event once it is complete or dead-lettered; comments as heartbeats
/// while nothing happens. `Last-Event-ID` resumes after that event.
#[utoipa::path(
    get,
    tag = "jobs",
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
    caller: Caller,
    Path(id): Path<String>,
    headers: HttpHeaders,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    caller.require(Scope::JobsRead)?;
    let last_seen: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let store = app.store.clone();
    let heartbeat = Duration::from_millis(app.settings.sse_heartbeat_ms);
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
                futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>)),
                ((store, permit), id, sent, finished),
            ))
        })
        .flatten();
    // A proxy in front (nginx honours `X-Accel-Buffering`) passes each event on at once;
    // axum's `Sse` already says `Cache-Control: no-cache`.
    let unbuffered = [(
        axum::http::HeaderName::from_static("x-accel-buffering"),
        "no",
    )];
    Ok((
        unbuffered,
        Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")),
    )
        .into_response())
}
