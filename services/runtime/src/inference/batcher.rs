//! Micro-batching: single calls are gathered into batches of at most `max_batch`,
//! waiting at most `max_wait` for a batch to fill, with at most `in_flight` batches running:
//! while they run, calls queue, and the next batch takes what queued (it fills under load
//! instead of many small batches running at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, InferenceError};

type Job<I, O> = (I, oneshot::Sender<Result<O, InferenceError>>);
type BatchFn<I, O> =
    Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, Result<Vec<O>, InferenceError>> + Send + Sync>;

pub struct MicroBatcher<I, O> {
    tx: mpsc::Sender<Job<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> MicroBatcher<I, O> {
    pub fn new(max_batch: usize, max_wait: Duration, in_flight: usize, run: BatchFn<I, O>) -> Self {
        let in_flight = in_flight.max(1);
        let (tx, mut rx) = mpsc::channel::<Job<I, O>>(max_batch.max(1) * (in_flight + 1) * 2);
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut jobs = vec![first];
                let deadline = tokio::time::Instant::now() + max_wait;
                while jobs.len() < max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => jobs.push(job),
                        _ => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<_>) = jobs.into_iter().unzip();
                let run = run.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match run(inputs).await {
                        Ok(outputs) if outputs.len() == replies.len() => {
                            for (reply, out) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Ok(outputs) => {
                            let e = InferenceError::Protocol(format!(
                                "{} outputs for {} inputs",
                                outputs.len(),
                                replies.len()
                            ));
                            replies
                                .into_iter()
                                .for_each(|r| drop(r.send(Err(e.clone()))));
                        }
                        Err(e) => replies
                            .into_iter()
                            .for_each(|r| drop(r.send(Err(e.clone())))),
                    }
                });
            }
        });
        Self { tx }
    }

    pub async fn call(&self, input: I) -> Result<O, InferenceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((input, reply))
            .await
            .map_err(|_| InferenceError::Unreachable("batcher stopped".into()))?;
        rx.await
            .map_err(|_| InferenceError::Unreachable("batcher dropped the call".into()))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn gathers_concurrent_calls_into_batches() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(MicroBatcher::new(
            8,
            Duration::from_millis(20),
            4,
            Arc::new(move |batch: Vec<u32>| {
                seen.lock().expect("lock").push(batch.len());
                Box::pin(async move { Ok(batch.into_iter().map(|x| x + 1).collect()) })
            }),
        ));
        let mut tasks = Vec::new();
        for i in 0..20u32 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move { (i, b.call(i).await) }));
        }
        for t in tasks {
            let (i, r) = t.await.expect("task");
            assert_eq!(r, Ok(i + 1), "each caller gets its own answer");
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(
            sizes.iter().all(|&s| s <= 8) && sizes.len() < 20,
            "batched: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn calls_queue_while_the_batches_in_flight_run_and_fill_the_next() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(MicroBatcher::new(
            8,
            Duration::from_millis(1),
            1,
            Arc::new(move |batch: Vec<u32>| {
                seen.lock().expect("lock").push(batch.len());
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(batch)
                })
            }),
        ));
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest: Vec<_> = (1..9u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        assert_eq!(first.await.expect("task"), Ok(0));
        for (i, t) in (1..9u32).zip(rest) {
            assert_eq!(t.await.expect("task"), Ok(i));
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(
            sizes,
            vec![1, 8],
            "the 8 calls made while the first batch ran go out as one batch"
        );
    }
}
