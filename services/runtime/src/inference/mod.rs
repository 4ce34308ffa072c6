//! Inference: one trait for "run this model on this batch", HTTP adapters, and the
//! machinery every call goes through: a provider chain (primary → secondary →
//! rules), each provider behind its own timeout, retries (exponential backoff with
//! jitter, honouring `Retry-After`), circuit breaker, concurrency limit and token
//! bucket; micro-batching, a response cache and coalescing of identical calls.

pub mod balance;
pub mod batcher;
pub mod budget;
pub mod cache;
pub mod chain;
pub mod head;
pub mod kserve;
pub mod onnx;
pub mod openai;
pub mod pricing;
pub mod resilience;
pub mod zero_shot;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which model answered: recorded on every decision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelId {
    /// Adapter kind: `kserve`, `openai`, `in-process`, `rules`.
    pub provider: String,
    pub name: String,
    pub version: String,
}

impl ModelId {
    pub fn new(provider: &str, name: &str, version: &str) -> Self {
        Self {
            provider: provider.into(),
            name: name.into(),
            version: version.into(),
        }
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}@{}", self.provider, self.name, self.version)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferenceError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("circuit open for {0}")]
    CircuitOpen(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("input rejected: {0}")]
    Rejected(String),
}

impl InferenceError {
    /// Worth trying the same provider again.
    pub fn retryable(&self) -> bool {
        match self {
            InferenceError::Timeout(_) | InferenceError::Unreachable(_) => true,
            InferenceError::Http { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            InferenceError::CircuitOpen(_)
            | InferenceError::Protocol(_)
            | InferenceError::Rejected(_) => false,
        }
    }

    /// Counts against the provider's circuit breaker (the provider misbehaves,
    /// not the input).
    pub fn is_provider_failure(&self) -> bool {
        match self {
            InferenceError::Timeout(_)
            | InferenceError::Unreachable(_)
            | InferenceError::Protocol(_) => true,
            InferenceError::Http { status, .. } => *status == 429 || *status >= 500,
            InferenceError::CircuitOpen(_) | InferenceError::Rejected(_) => false,
        }
    }

    /// A bounded name for metrics: `timeout`, `http_429`, `http_4xx`, `http_5xx`,
    /// `unreachable`, `circuit_open`, `protocol` or `rejected`.
    pub fn class(&self) -> &'static str {
        match self {
            InferenceError::Timeout(_) => "timeout",
            InferenceError::Http { status: 429, .. } => "http_429",
            InferenceError::Http { status, .. } if *status >= 500 => "http_5xx",
            InferenceError::Http { .. } => "http_4xx",
            InferenceError::Unreachable(_) => "unreachable",
            InferenceError::CircuitOpen(_) => "circuit_open",
            InferenceError::Protocol(_) => "protocol",
            InferenceError::Rejected(_) => "rejected",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InferenceError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Runs a model on a batch of inputs; one output per input, in order.
pub trait Provider<I, O>: Send + Sync {
    fn model(&self) -> &ModelId;
    /// Where it runs, as metrics label it: a server's base URL, or `in-process`.
    fn endpoint(&self) -> &str {
        "in-process"
    }
    fn infer<'a>(&'a self, batch: &'a [I]) -> BoxFuture<'a, Result<Vec<O>, InferenceError>>;
}

/// A provider from a plain function: in-process models and rules.
pub struct FnProvider<F> {
    model: ModelId,
    f: F,
}

impl<F> FnProvider<F> {
    pub fn new(model: ModelId, f: F) -> Self {
        Self { model, f }
    }
}

impl<I: Sync, O: Send + 'static, F> Provider<I, O> for FnProvider<F>
where
    F: Fn(&I) -> O + Send + Sync,
{
    fn model(&self) -> &ModelId {
        &self.model
    }

    fn infer<'a>(&'a self, batch: &'a [I]) -> BoxFuture<'a, Result<Vec<O>, InferenceError>> {
        let out = batch.iter().map(&self.f).collect();
        Box::pin(async move { Ok(out) })
    }
}

/// The HTTP client every model-server adapter uses (connection reuse, at most 16 idle
/// connections per host).
pub(crate) fn http_client() -> Result<reqwest::Client, InferenceError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .map_err(|e| InferenceError::Unreachable(e.to_string()))
}

/// Parses an HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3);
/// a date in the past means "now".
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let value = value?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The error for a non-2xx model-server answer: client errors other than 408/429
/// reject the input (not retried); the rest are retryable, with `Retry-After`.
pub async fn http_error(resp: reqwest::Response) -> InferenceError {
    let status = resp.status();
    let retry_after = parse_retry_after(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let message: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    if status.is_client_error() && ![408, 429].contains(&status.as_u16()) {
        InferenceError::Rejected(format!("HTTP {status}: {message}"))
    } else {
        InferenceError::Http {
            status: status.as_u16(),
            message,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        let in_a_minute =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        let d = parse_retry_after(Some(&in_a_minute)).expect("date");
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
