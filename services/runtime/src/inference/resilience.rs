//! Per-provider protection: timeout, retries with exponential backoff and full
//! jitter (at least `Retry-After`), a circuit breaker (closed → open → half-open
//! with one probe), a concurrency limit and a token-bucket rate limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{BoxFuture, InferenceError, ModelId, Provider};
use crate::metrics::Metrics;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub timeout_ms: u64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    pub open_ms: u64,
    /// Calls in flight at once.
    pub max_concurrency: usize,
    /// Token bucket: sustained items per second and burst (0 = unlimited).
    pub rate_per_sec: f64,
    pub burst: f64,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            max_retries: 2,
            backoff_base_ms: 50,
            backoff_max_ms: 2_000,
            failure_threshold: 5,
            open_ms: 5_000,
            max_concurrency: 32,
            rate_per_sec: 0.0,
            burst: 0.0,
        }
    }
}

/// Exponential backoff with full jitter, never shorter than `Retry-After`.
pub fn backoff(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(attempt)).min(max);
    let jittered = ceiling.mul_f64(rand::random::<f64>());
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Circuit {
    state: CircuitState,
    failures: u32,
    open_until: Instant,
    probe_in_flight: bool,
}

pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Circuit>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Circuit {
                state: CircuitState::Closed,
                failures: 0,
                open_until: Instant::now(),
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// Would [`allow`](Self::allow) let a call through now (without taking the probe)?
    pub fn could_allow(&self) -> bool {
        let c = self.lock();
        match c.state {
            CircuitState::Closed => true,
            CircuitState::Open => Instant::now() >= c.open_until,
            CircuitState::HalfOpen => !c.probe_in_flight,
        }
    }

    /// May a call go through? An open circuit turns half-open after `open_for`
    /// and lets exactly one probe through.
    pub fn allow(&self) -> bool {
        let mut c = self.lock();
        match c.state {
            CircuitState::Closed => true,
            CircuitState::Open if Instant::now() >= c.open_until => {
                c.state = CircuitState::HalfOpen;
                c.probe_in_flight = true;
                true
            }
            CircuitState::Open => false,
            CircuitState::HalfOpen if !c.probe_in_flight => {
                c.probe_in_flight = true;
                true
            }
            CircuitState::HalfOpen => false,
        }
    }

    pub fn on_success(&self) {
        let mut c = self.lock();
        c.state = CircuitState::Closed;
        c.failures = 0;
        c.probe_in_flight = false;
    }

    pub fn on_failure(&self) {
        let mut c = self.lock();
        c.failures += 1;
        if c.state == CircuitState::HalfOpen || c.failures >= self.threshold {
            c.state = CircuitState::Open;
            c.open_until = Instant::now() + self.open_for;
            c.probe_in_flight = false;
        }
    }

    /// A call that was let through ended without telling success or failure
    /// (input rejected): free the probe slot.
    pub fn on_neutral(&self) {
        self.lock().probe_in_flight = false;
    }
}

/// Token bucket: `rate` tokens per second, up to `burst`.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The bucket, refilled until now.
    fn refilled(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
        s.1 = now;
        s
    }

    /// Takes `n` tokens if there are as many now; otherwise takes none and says how long
    /// until there would be (what a server answers a client over its limit with).
    pub fn try_take(&self, n: f64) -> Result<(), Duration> {
        let mut s = self.refilled();
        if s.0 >= n {
            s.0 -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - s.0) / self.rate))
        }
    }

    /// How long to wait before `n` tokens are available (and takes them).
    fn reserve(&self, n: f64) -> Duration {
        let mut s = self.refilled();
        s.0 -= n;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }

    pub async fn acquire(&self, n: usize) {
        let wait = self.reserve(n as f64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A provider behind its own timeout, retries, breaker, concurrency limit and rate limit.
pub struct Guarded<I, O> {
    inner: Box<dyn Provider<I, O>>,
    settings: ProviderSettings,
    pub breaker: CircuitBreaker,
    slots: Semaphore,
    bucket: Option<TokenBucket>,
    /// Where each call is counted and timed (`verdict_model_calls_total`, …).
    metrics: Option<Arc<Metrics>>,
}

impl<I: Sync, O: Send> Guarded<I, O> {
    pub fn new(inner: Box<dyn Provider<I, O>>, settings: ProviderSettings) -> Self {
        Self {
            breaker: CircuitBreaker::new(
                settings.failure_threshold,
                Duration::from_millis(settings.open_ms),
            ),
            slots: Semaphore::new(settings.max_concurrency.max(1)),
            bucket: (settings.rate_per_sec > 0.0)
                .then(|| TokenBucket::new(settings.rate_per_sec, settings.burst)),
            inner,
            settings,
            metrics: None,
        }
    }

    /// Counts and times every call (each retry too) in `metrics`, by model and outcome.
    pub fn observed(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    pub fn model(&self) -> &ModelId {
        self.inner.model()
    }

    pub async fn call(&self, batch: &[I]) -> Result<Vec<O>, InferenceError> {
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let mut attempt = 0;
        loop {
            if !self.breaker.allow() {
                return Err(InferenceError::CircuitOpen(self.model().to_string()));
            }
            let result = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|e| InferenceError::Unreachable(e.to_string()))?;
                if let Some(bucket) = &self.bucket {
                    bucket.acquire(batch.len()).await;
                }
                let started = Instant::now();
                let result = match tokio::time::timeout(timeout, self.inner.infer(batch)).await {
                    Ok(r) => r,
                    Err(_) => Err(InferenceError::Timeout(timeout)),
                };
                if let Some(m) = &self.metrics {
                    let outcome = result.as_ref().map_or_else(InferenceError::class, |_| "ok");
                    m.observe_model_call(
                        &self.model().name,
                        self.inner.endpoint(),
                        outcome,
                        started.elapsed(),
                    );
                }
                result
            };
            let error = match result {
                Ok(out) if out.len() == batch.len() => {
                    self.breaker.on_success();
                    return Ok(out);
                }
                Ok(out) => InferenceError::Protocol(format!(
                    "{} outputs for {} inputs",
                    out.len(),
                    batch.len()
                )),
                Err(e) => e,
            };
            if error.is_provider_failure() {
                self.breaker.on_failure();
            } else {
                self.breaker.on_neutral();
            }
            // A server that asks for a longer pause than our longest backoff is not waited
            // for: the error goes up now, so the chain can fall back instead of stalling.
            let max_wait = Duration::from_millis(self.settings.backoff_max_ms);
            if !error.retryable()
                || attempt >= self.settings.max_retries
                || self.breaker.state() == CircuitState::Open
                || error.retry_after().is_some_and(|d| d > max_wait)
            {
                return Err(error);
            }
            let wait = backoff(
                attempt,
                Duration::from_millis(self.settings.backoff_base_ms),
                max_wait,
                error.retry_after(),
            );
            tracing::debug!(model = %self.model(), attempt, ?wait, error = %error, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Lets a guarded provider be used where a plain one is expected.
impl<I: Sync + Send, O: Send> Provider<I, O> for Guarded<I, O> {
    fn model(&self) -> &ModelId {
        self.inner.model()
    }
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    fn infer<'a>(&'a self, batch: &'a [I]) -> BoxFuture<'a, Result<Vec<O>, InferenceError>> {
        Box::pin(self.call(batch))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails with `error` for the first `fail` calls, then doubles its inputs.
    struct Flaky {
        model: ModelId,
        fail: u32,
        error: InferenceError,
        calls: Arc<AtomicU32>,
    }

    impl Provider<u32, u32> for Flaky {
        fn model(&self) -> &ModelId {
            &self.model
        }
        fn infer<'a>(
            &'a self,
            batch: &'a [u32],
        ) -> BoxFuture<'a, Result<Vec<u32>, InferenceError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let out = if n < self.fail {
                Err(self.error.clone())
            } else {
                Ok(batch.iter().map(|x| x * 2).collect())
            };
            Box::pin(async move { out })
        }
    }

    fn flaky(fail: u32, error: InferenceError) -> (Box<Flaky>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        (
            Box::new(Flaky {
                model: ModelId::new("test", "m", "1"),
                fail,
                error,
                calls: calls.clone(),
            }),
            calls,
        )
    }

    fn settings() -> ProviderSettings {
        ProviderSettings {
            backoff_base_ms: 10,
            backoff_max_ms: 100,
            open_ms: 1_000,
            ..ProviderSettings::default()
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_retry_after() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for attempt in 0..10 {
            let b = backoff(attempt, base, max, None);
            assert!(
                b <= (base * 2u32.pow(attempt.min(4))).min(max),
                "{attempt}: {b:?}"
            );
        }
        assert!(backoff(0, base, max, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_succeeds() {
        let (p, calls) = flaky(
            2,
            InferenceError::Http {
                status: 503,
                message: "busy".into(),
                retry_after: None,
            },
        );
        let metrics = Metrics::new("test");
        let g = Guarded::new(p, settings()).observed(metrics.clone());
        assert_eq!(g.call(&[1, 2]).await, Ok(vec![2, 4]));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let text = metrics.encode();
        for line in [
            r#"verdict_model_calls_total{service="test",model="m",endpoint="in-process",outcome="http_5xx"} 2"#,
            r#"verdict_model_calls_total{service="test",model="m",endpoint="in-process",outcome="ok"} 1"#,
            r#"verdict_model_call_duration_seconds_count{service="test",model="m",endpoint="in-process"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let (p, _) = flaky(
            1,
            InferenceError::Http {
                status: 429,
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        let g = Guarded::new(
            p,
            ProviderSettings {
                backoff_max_ms: 5_000,
                ..settings()
            },
        );
        let start = Instant::now();
        assert!(g.call(&[1]).await.is_ok());
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "waited {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_longest_backoff_is_not_waited_for() {
        let (p, calls) = flaky(
            1,
            InferenceError::Http {
                status: 503,
                message: "maintenance".into(),
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        let g = Guarded::new(p, settings());
        let start = Instant::now();
        assert!(matches!(
            g.call(&[1]).await,
            Err(InferenceError::Http { status: 503, .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_input_is_not_retried_and_does_not_trip_the_breaker() {
        let (p, calls) = flaky(10, InferenceError::Rejected("bad".into()));
        let g = Guarded::new(p, settings());
        assert!(matches!(
            g.call(&[1]).await,
            Err(InferenceError::Rejected(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(g.breaker.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_opens_fails_fast_then_half_open_probe_closes_it() {
        let (p, calls) = flaky(5, InferenceError::Unreachable("down".into()));
        let g = Guarded::new(
            p,
            ProviderSettings {
                max_retries: 0,
                failure_threshold: 3,
                ..settings()
            },
        );
        for _ in 0..3 {
            assert!(matches!(
                g.call(&[1]).await,
                Err(InferenceError::Unreachable(_))
            ));
        }
        assert_eq!(g.breaker.state(), CircuitState::Open);
        assert!(
            matches!(g.call(&[1]).await, Err(InferenceError::CircuitOpen(_))),
            "fails fast"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no call while open");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        // Half-open probe fails (call 4) → open again.
        assert!(g.call(&[1]).await.is_err());
        assert_eq!(g.breaker.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(g.call(&[1]).await.is_err(), "call 5 still fails");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(
            g.call(&[1]).await,
            Ok(vec![2]),
            "the provider recovered: probe succeeds"
        );
        assert_eq!(g.breaker.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_spaces_calls() {
        let bucket = TokenBucket::new(10.0, 1.0);
        let start = Instant::now();
        for _ in 0..6 {
            bucket.acquire(1).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(490) && took <= Duration::from_millis(600),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_as_failures() {
        struct Slow(ModelId);
        impl Provider<u32, u32> for Slow {
            fn model(&self) -> &ModelId {
                &self.0
            }
            fn infer<'a>(
                &'a self,
                _b: &'a [u32],
            ) -> BoxFuture<'a, Result<Vec<u32>, InferenceError>> {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(vec![])
                })
            }
        }
        let g = Guarded::new(
            Box::new(Slow(ModelId::new("t", "slow", "1"))),
            ProviderSettings {
                timeout_ms: 100,
                max_retries: 1,
                ..settings()
            },
        );
        assert_eq!(
            g.call(&[1]).await,
            Err(InferenceError::Timeout(Duration::from_millis(100)))
        );
    }
}
