//! The per-tenant request limit, as the one middleware of the limited routes: it takes one
//! request from the caller's bucket before the handler runs, counts the answer per key, and
//! puts the `X-RateLimit-*` headers on every answer, the handler's refusals included. Token
//! budgets need the document, so `submissions` spends them; this sets their headers too.

use std::sync::Arc;

use axum::extract::{FromRef, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{App, KeyUsage};
use crate::auth::Caller;
use crate::config::Tier;
use crate::error::ApiError;
use crate::limits::Verdict;

/// The middleware's state: the app, and the job kind a route's submissions feed (its
/// pipeline's lag shrinks a `batch` key's limits).
#[derive(Clone)]
pub struct Limited {
    pub app: Arc<App>,
    pub feeds: Option<&'static str>,
}

impl FromRef<Limited> for Arc<App> {
    fn from_ref(limited: &Limited) -> Self {
        limited.app.clone()
    }
}

/// Refuses a caller without a valid key (401, no limit headers: there is no tenant to tell
/// of) or past its limit (429 with Retry-After); otherwise hands the caller to the handler.
pub async fn limit(
    State(limited): State<Limited>,
    caller: Caller,
    mut req: Request,
    next: Next,
) -> Response {
    let app = &limited.app;
    let (verdict, adaptive) = admit(app, &caller, limited.feeds);
    let mut usage = KeyUsage {
        key: caller.key_id.clone(),
        tenant: caller.tenant.clone(),
        status: String::new(),
    };
    let resp = if verdict.allowed {
        req.extensions_mut().insert(caller);
        next.run(req).await
    } else {
        ApiError::RateLimited {
            retry_after_secs: verdict.retry_after_secs,
        }
        .into_response()
    };
    usage.status = format!("{}xx", resp.status().as_u16() / 100);
    app.usage.get_or_create(&usage).inc();
    with_limits(resp, &verdict, adaptive.as_deref())
}

/// Counts the request against the caller's bucket; while the pipeline `feeds` names lags, a
/// `batch` key's limits shrink, and the note says so.
fn admit(app: &App, caller: &Caller, feeds: Option<&str>) -> (Verdict, Option<String>) {
    let limits = app
        .settings
        .tenants
        .get(&caller.tenant)
        .copied()
        .unwrap_or(app.settings.default_limits);
    let a = &app.settings.adaptive;
    let lagging = feeds
        .and_then(|kind| app.pipelines.lag(kind))
        .filter(|l| l.lag_seconds > a.lag_threshold_seconds);
    let (limits, note) = match (lagging, caller.tier) {
        (Some(l), Tier::Batch) => (
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
        Tier::Interactive => caller.tenant.clone(),
        Tier::Batch => format!("{}/batch", caller.tenant),
    };
    let verdict = app
        .limiter
        .check(&bucket, limits, verdict_runtime::now_ms());
    (verdict, note)
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
