//! Logging and tracing shared by every binary: `tracing` to stderr, OpenTelemetry
//! spans exported over OTLP/HTTP when an endpoint is configured, and W3C trace
//! context carried in the `traceparent` record header.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::headers::HeaderMap;

/// Set once spans are exported (an OTLP endpoint is configured).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported: the engine then traces every record, not only the records
/// that carry a trace of their own (`traceparent`).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs a `tracing` subscriber that writes to stderr, filtered by `RUST_LOG`
/// (default `info`). Safe to call more than once: later calls do nothing.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for a command-line tool: warnings and errors of its own to stderr (`RUST_LOG`
/// overrides), librdkafka's log only when asked for (`RUST_LOG=librdkafka=info,rdkafka=info`):
/// the command names the failure once, in the user's terms. Colours only on a terminal.
pub fn init_cli_logging() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,librdkafka=off,rdkafka=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// How a service writes its log lines (`telemetry.log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people: time, level, the spans it is in with their fields.
    #[default]
    Text,
    /// One JSON object per line for log shippers: `timestamp`, `level`, `target`, the
    /// event's fields (`message` among them) at the top level, and the span it happened in as
    /// `span` (a record's `trace_id`, `event_id`, topic, partition and offset).
    Json,
}

/// Keeps the tracer provider alive; flushes spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Logging (in `format`) plus OpenTelemetry tracing for a service. Spans get trace ids (so
/// `traceparent` propagates) whether or not they are exported; with
/// `otlp_endpoint` set they are batched to that OTLP/HTTP endpoint.
pub fn init_tracing(
    service: &str,
    otlp_endpoint: Option<&str>,
    format: LogFormat,
) -> Result<TelemetryGuard, String> {
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service.to_string())
            .build(),
    );
    if let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        builder = builder.with_batch_exporter(exporter);
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let provider = builder.build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_string()));
    let (text, json) = match format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let installed = tracing_subscriber::registry()
        .with(filter())
        .with(text)
        .with(json)
        .with(layer)
        .try_init()
        .is_ok();
    Ok(TelemetryGuard {
        provider: installed.then_some(provider),
    })
}

impl Extractor for HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        HeaderMap::get(self, key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl Injector for HeaderMap {
    fn set(&mut self, key: &str, value: String) {
        HeaderMap::set(self, key, value);
    }
}

/// Makes `span` a child of the trace in `headers` (if any).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if headers.get(crate::headers::TRACEPARENT).is_some() {
        let cx = TraceContextPropagator::new().extract(headers);
        let _ = span.set_parent(cx);
    }
}

/// Puts `span`'s trace id on it as `trace_id` (declared by the span), so log lines in it name
/// the trace to look up.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// Writes `span`'s trace context into `headers` as `traceparent`.
pub fn inject_trace(span: &tracing::Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), headers);
}

/// A span for one stage of the work the current span traces, named by the stage (`otel.name`),
/// or none when nothing is traced: a stage's span alone would start a trace nobody follows.
pub fn stage_span(stage: &'static str) -> tracing::Span {
    if tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!("stage", otel.name = stage, stage)
}

/// Puts the id of the event being worked on (`event_id`) on the current record or request
/// span, so its trace is found by the event (Jaeger's tag search: `event_id=…`).
pub fn record_event_id(event_id: &str) {
    tracing::Span::current().record("event_id", event_id);
}

/// Marks the current span failed (`otel.status_code = ERROR`) with `why`.
pub fn record_failure(why: &dyn std::fmt::Display) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(why));
}

/// Middleware: a server span per HTTP request, named by its method and route template,
/// continuing the caller's W3C `traceparent`; what a handler sends on (a record's
/// `traceparent`) is its child. Requests get one only when spans are exported or the caller
/// sends a trace, as records do.
pub async fn trace_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let continued = request.headers().contains_key(crate::headers::TRACEPARENT);
    if !exporting() && !continued {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if continued {
        let cx = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
        let _ = span.set_parent(cx);
    }
    record_trace_id(&span);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    // As an integer attribute (tracing-opentelemetry writes unsigned values as text).
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
