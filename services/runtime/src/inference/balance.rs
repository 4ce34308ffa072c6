//! Several endpoints of one model (replicas, regions, API keys of one provider) used as one
//! provider. Each endpoint is behind its own guard (timeout, breaker, concurrency and rate
//! limits); a call goes to the endpoint with the fewest outstanding requests among those that
//! can take it. An endpoint that answers 429 rests for its `Retry-After` (one that fails
//! otherwise, for a backoff) and the call moves on to another at once, so one endpoint's rate
//! limit neither stalls the calls nor opens the other endpoints' breakers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::resilience::{Guarded, ProviderSettings, backoff};
use super::{BoxFuture, InferenceError, ModelId, Provider};
use crate::metrics::Metrics;

/// One more endpoint of a model: its URL and, for a hosted API, its own key.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    pub url: String,
    /// Bearer token for this endpoint; never logged.
    #[serde(skip_serializing_if = "crate::settings::Secret::is_empty")]
    pub api_key: crate::settings::Secret,
}

/// One guarded provider of a model's `endpoints`: guarded alone when there is one, balanced
/// across them when there are several; every endpoint's calls counted in `metrics`. `None`
/// without endpoints.
pub fn guarded<I: Sync + Send + 'static, O: Send + 'static>(
    mut endpoints: Vec<Box<dyn Provider<I, O>>>,
    settings: &ProviderSettings,
    metrics: Arc<Metrics>,
) -> Option<Guarded<I, O>> {
    if endpoints.len() == 1 {
        let only = endpoints.pop()?;
        return Some(Guarded::new(only, settings.clone()).observed(metrics));
    }
    let balanced = Balanced::new(endpoints, settings, Some(metrics))?;
    // The endpoints guard themselves; the outer guard only bounds the whole call.
    let attempts = u64::from(balanced.attempts);
    let outer = ProviderSettings {
        timeout_ms: (settings.timeout_ms + settings.backoff_max_ms).saturating_mul(attempts),
        max_retries: 0,
        failure_threshold: u32::MAX,
        max_concurrency: usize::MAX >> 3,
        rate_per_sec: 0.0,
        ..settings.clone()
    };
    Some(Guarded::new(Box::new(balanced), outer))
}

struct Endpoint<I, O> {
    guarded: Guarded<I, O>,
    outstanding: AtomicUsize,
    resting_until: Mutex<Option<Instant>>,
}

impl<I, O> Endpoint<I, O> {
    fn resting_until(&self) -> Option<Instant> {
        *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rest(&self, until: Instant) {
        let mut r = self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *r = Some(r.map_or(until, |u| u.max(until)));
    }
}

/// Counts a call as outstanding on its endpoint until it ends (or is dropped).
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoints of one model, balanced by least outstanding requests.
pub struct Balanced<I, O> {
    model: ModelId,
    endpoints: Vec<Endpoint<I, O>>,
    /// Attempts per call: every endpoint once, plus the settings' retries.
    attempts: u32,
    backoff_base: Duration,
    /// The longest a call waits for a resting endpoint; past it the call fails (and a chain
    /// falls back).
    backoff_max: Duration,
    /// Where ties start, so idle endpoints share the calls.
    next: AtomicUsize,
}

/// Why no endpoint can take a call now.
enum Busy {
    /// Every endpoint rests; the first is free again at this time.
    Resting(Instant),
    /// Every endpoint's breaker is open.
    Open,
}

impl<I: Sync + Send, O: Send> Balanced<I, O> {
    /// `endpoints` (at least one), each guarded by `settings` except that a failed call is not
    /// retried on the same endpoint: the balancer moves it to another. `None` without endpoints.
    pub fn new(
        endpoints: Vec<Box<dyn Provider<I, O>>>,
        settings: &ProviderSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Option<Self> {
        let model = endpoints.first()?.model().clone();
        let one_try = ProviderSettings {
            max_retries: 0,
            ..settings.clone()
        };
        let attempts = u32::try_from(endpoints.len())
            .unwrap_or(u32::MAX)
            .saturating_add(settings.max_retries);
        Some(Self {
            model,
            endpoints: endpoints
                .into_iter()
                .map(|p| {
                    let guarded = Guarded::new(p, one_try.clone());
                    Endpoint {
                        guarded: match &metrics {
                            Some(m) => guarded.observed(m.clone()),
                            None => guarded,
                        },
                        outstanding: AtomicUsize::new(0),
                        resting_until: Mutex::new(None),
                    }
                })
                .collect(),
            attempts,
            backoff_base: Duration::from_millis(settings.backoff_base_ms),
            backoff_max: Duration::from_millis(settings.backoff_max_ms),
            next: AtomicUsize::new(0),
        })
    }

    /// The endpoint to call now: not resting, breaker not open, fewest outstanding requests.
    fn pick(&self, now: Instant) -> Result<&Endpoint<I, O>, Busy> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<&Endpoint<I, O>> = None;
        let mut free_at: Option<Instant> = None;
        for i in 0..n {
            let ep = &self.endpoints[(start + i) % n];
            if !ep.guarded.breaker.could_allow() {
                continue;
            }
            if let Some(until) = ep.resting_until().filter(|u| *u > now) {
                free_at = Some(free_at.map_or(until, |f| f.min(until)));
                continue;
            }
            let load = ep.outstanding.load(Ordering::Relaxed);
            if best.is_none_or(|b| load < b.outstanding.load(Ordering::Relaxed)) {
                best = Some(ep);
            }
        }
        best.ok_or(free_at.map_or(Busy::Open, Busy::Resting))
    }

    pub async fn call(&self, batch: &[I]) -> Result<Vec<O>, InferenceError> {
        let mut last = None;
        for attempt in 0..self.attempts {
            let now = Instant::now();
            let ep = match self.pick(now) {
                Ok(ep) => ep,
                Err(Busy::Resting(until)) if until - now <= self.backoff_max => {
                    tokio::time::sleep_until(until).await;
                    match self.pick(Instant::now()) {
                        Ok(ep) => ep,
                        Err(_) => continue,
                    }
                }
                Err(_) => break,
            };
            let result = {
                let _counted = Outstanding::new(&ep.outstanding);
                ep.guarded.call(batch).await
            };
            let error = match result {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            // Input the model refuses is refused by every endpoint; an endpoint that fails
            // (or whose breaker just opened) is left for another.
            let elsewhere = error.retryable()
                || error.is_provider_failure()
                || matches!(error, InferenceError::CircuitOpen(_));
            if !elsewhere {
                return Err(error);
            }
            let rest = backoff(
                attempt,
                self.backoff_base,
                self.backoff_max,
                error.retry_after(),
            );
            tracing::debug!(model = %self.model, attempt, ?rest, error = %error, "endpoint rests; the call moves on");
            ep.rest(Instant::now() + rest);
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| InferenceError::CircuitOpen(self.model.to_string())))
    }
}

impl<I: Sync + Send, O: Send> Provider<I, O> for Balanced<I, O> {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn endpoint(&self) -> &str {
        "balanced"
    }
    fn infer<'a>(&'a self, batch: &'a [I]) -> BoxFuture<'a, Result<Vec<O>, InferenceError>> {
        Box::pin(self.call(batch))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// Answers after `delay`, or with 429 and `Retry-After: 1` while `limited`.
    struct Server {
        model: ModelId,
        name: &'static str,
        limited: bool,
        delay: Duration,
        calls: Arc<AtomicU32>,
    }

    impl Provider<u32, u32> for Server {
        fn model(&self) -> &ModelId {
            &self.model
        }
        fn endpoint(&self) -> &str {
            self.name
        }
        fn infer<'a>(
            &'a self,
            batch: &'a [u32],
        ) -> BoxFuture<'a, Result<Vec<u32>, InferenceError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                if self.limited {
                    return Err(InferenceError::Http {
                        status: 429,
                        message: "rate limited".into(),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                Ok(batch.to_vec())
            })
        }
    }

    fn server(name: &'static str, limited: bool, delay_ms: u64) -> (Server, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        (
            Server {
                model: ModelId::new("test", "m", "1"),
                name,
                limited,
                delay: Duration::from_millis(delay_ms),
                calls: calls.clone(),
            },
            calls,
        )
    }

    fn balanced(servers: Vec<Server>) -> Arc<Balanced<u32, u32>> {
        let endpoints = servers
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn Provider<u32, u32>>)
            .collect();
        Arc::new(Balanced::new(endpoints, &ProviderSettings::default(), None).expect("endpoints"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_endpoint_rests_and_the_others_answer() {
        let (limited, limited_calls) = server("a", true, 0);
        let (healthy, healthy_calls) = server("b", false, 0);
        let b = balanced(vec![limited, healthy]);
        for i in 0..20 {
            assert_eq!(b.call(&[i]).await, Ok(vec![i]), "call {i}");
        }
        assert_eq!(healthy_calls.load(Ordering::SeqCst), 20);
        // Tried once, then resting for its Retry-After while the calls went on.
        assert_eq!(limited_calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            b.endpoints[0].guarded.breaker.state(),
            super::super::resilience::CircuitState::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_go_to_the_endpoint_with_fewest_outstanding() {
        let (slow, slow_calls) = server("slow", false, 500);
        let (fast, fast_calls) = server("fast", false, 5);
        let b = balanced(vec![slow, fast]);
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10 * i)).await;
                    b.call(&[1]).await
                })
            })
            .collect();
        for c in calls {
            assert!(c.await.expect("joined").is_ok());
        }
        let (slow, fast) = (
            slow_calls.load(Ordering::SeqCst),
            fast_calls.load(Ordering::SeqCst),
        );
        assert_eq!(slow + fast, 40);
        assert!(fast > 3 * slow, "fast {fast}, slow {slow}");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_endpoint_is_limited_the_call_fails_with_the_limit() {
        let (a, _) = server("a", true, 0);
        let (b, _) = server("b", true, 0);
        let b = balanced(vec![a, b]);
        let err = b.call(&[1]).await.expect_err("limited everywhere");
        assert!(
            matches!(err, InferenceError::Http { status: 429, .. }),
            "{err}"
        );
    }
}
