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

/// Logging plus OpenTelemetry tracing for a service. Spans get trace ids (so
/// `traceparent` propagates) whether or not they are exported; with
/// `otlp_endpoint` set they are batched to that OTLP/HTTP endpoint.
pub fn init_tracing(service: &str, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, String> {
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
    let installed = tracing_subscriber::registry()
        .with(filter())
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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

/// Writes `span`'s trace context into `headers` as `traceparent`.
pub fn inject_trace(span: &tracing::Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), headers);
}
