//! Response cache (key = model + version + input hash; TTL; bounded capacity;
//! hit/miss counters) and coalescing of identical in-flight calls.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::FutureExt;
use futures::future::Shared;
use tokio::time::Instant;

use super::{BoxFuture, InferenceError, ModelId};

/// The cache key of one input for one model version.
pub fn cache_key(model: &ModelId, input_bytes: &[u8]) -> String {
    format!(
        "{}:{}@{}:{}",
        model.provider,
        model.name,
        model.version,
        crate::models::sha256_hex(input_bytes)
    )
}

pub struct ResponseCache<O> {
    ttl: Duration,
    capacity: usize,
    entries: DashMap<String, (Instant, O)>,
    order: Mutex<VecDeque<String>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl<O: Clone> ResponseCache<O> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &str) -> Option<O> {
        let found = self
            .entries
            .get(key)
            .filter(|e| e.0.elapsed() < self.ttl)
            .map(|e| e.1.clone());
        match found {
            Some(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Inserts, evicting the oldest entries beyond capacity.
    pub fn put(&self, key: String, value: O) {
        let mut order = self
            .order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self
            .entries
            .insert(key.clone(), (Instant::now(), value))
            .is_none()
        {
            order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

type SharedCall<O> = Shared<BoxFuture<'static, Result<O, InferenceError>>>;

/// Identical concurrent calls (same key) share one backend call.
pub struct Coalescer<O: Clone> {
    in_flight: DashMap<String, SharedCall<O>>,
}

impl<O: Clone + Send + Sync + 'static> Default for Coalescer<O> {
    fn default() -> Self {
        Self {
            in_flight: DashMap::new(),
        }
    }
}

impl<O: Clone + Send + Sync + 'static> Coalescer<O> {
    /// Runs `call` unless a call with `key` is already in flight; then waits for that one.
    pub async fn run(
        &self,
        key: &str,
        call: impl FnOnce() -> BoxFuture<'static, Result<O, InferenceError>>,
    ) -> Result<O, InferenceError> {
        let shared = self
            .in_flight
            .entry(key.to_string())
            .or_insert_with(|| call().shared())
            .clone();
        let result = shared.await;
        self.in_flight.remove(key);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ttl_capacity_and_counters() {
        let c = ResponseCache::new(Duration::from_secs(10), 2);
        c.put("a".into(), 1);
        c.put("b".into(), 2);
        c.put("c".into(), 3);
        assert_eq!(c.len(), 2, "capacity bound");
        assert_eq!(c.get("a"), None, "oldest evicted");
        assert_eq!(c.get("c"), Some(3));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get("c"), None, "expired");
        assert_eq!(
            (
                c.hits.load(Ordering::Relaxed),
                c.misses.load(Ordering::Relaxed)
            ),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn hundred_identical_calls_make_one_backend_call() {
        let co: Arc<Coalescer<u32>> = Arc::new(Coalescer::default());
        let backend = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (co, backend) = (co.clone(), backend.clone());
            tasks.push(tokio::spawn(async move {
                co.run("same", || {
                    Box::pin(async move {
                        backend.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(7)
                    })
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(7));
        }
        assert_eq!(backend.load(Ordering::SeqCst), 1);
    }
}
