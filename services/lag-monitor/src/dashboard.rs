//! The dashboard: one page (no external assets) that polls `/api/groups` and shows every
//! group with its status colour, lag per partition in messages and seconds, a chart of the
//! last minutes, the consumption rate and the time to clear at that rate.

use axum::Json;
use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::monitor::{Monitor, Snapshot};

pub fn router(monitor: Monitor) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/api/groups",
            get(move || {
                let m = monitor.clone();
                async move { Json::<Snapshot>(m.snapshot()) }
            }),
        )
}

const PAGE: &str = include_str!("dashboard.html");
