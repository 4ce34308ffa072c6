//! The `_schemas` topic: a single-partition compacted log that holds the registry's
//! state. Every instance tails it and applies each record to its [`Store`]; writes
//! go through the log too, so an instance's reads reflect its own writes and, a
//! moment later, everyone else's.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Mutex, RwLock, RwLockReadGuard, watch};
use tokio::task::JoinHandle;
use verdict_runtime::kafka::{KafkaError, KafkaSettings, TopicSpec};

use crate::config::StoreSettings;
use crate::error::ApiError;
use crate::store::{Record, Store};

/// What a write decided: the answer, and the records that make it durable.
pub struct Plan<T> {
    pub records: Vec<Record>,
    pub answer: T,
}

impl<T> Plan<T> {
    pub fn done(answer: T) -> Self {
        Self {
            records: Vec::new(),
            answer,
        }
    }
}

pub struct SchemaLog {
    topic: String,
    timeout: Duration,
    store: Arc<RwLock<Store>>,
    producer: FutureProducer,
    watermarks: Arc<BaseConsumer>,
    /// Offset of the next record the tailer will apply.
    position: watch::Receiver<i64>,
    write_lock: Mutex<()>,
    tailer: JoinHandle<()>,
}

impl Drop for SchemaLog {
    fn drop(&mut self) {
        self.tailer.abort();
    }
}

impl SchemaLog {
    /// Creates the topic if needed, starts tailing it and returns once the store
    /// has replayed everything that was in the log at start-up.
    pub async fn open(kafka: &KafkaSettings, settings: &StoreSettings) -> Result<Self, KafkaError> {
        kafka
            .wait_until_reachable(Duration::from_millis(settings.timeout_ms))
            .await?;
        kafka
            .create_topics(&[TopicSpec {
                name: settings.topic.clone(),
                partitions: 1,
                replication_factor: settings.replication_factor,
                retention_ms: Some(-1),
                cleanup_policy: "compact".into(),
            }])
            .await?;

        // Registry writes wait for nothing: one record at a time, no linger.
        let producer: FutureProducer = kafka.producer_config().set("linger.ms", "0").create()?;
        let consumer: StreamConsumer = kafka.reader_config().create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&settings.topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;

        let store = Arc::new(RwLock::new(Store::default()));
        let (tx, rx) = watch::channel(0_i64);
        let tailer = tokio::spawn(tail(consumer, store.clone(), tx));
        let log = Self {
            topic: settings.topic.clone(),
            timeout: Duration::from_millis(settings.timeout_ms),
            store,
            producer,
            watermarks: Arc::new(kafka.metadata_consumer()?),
            position: rx,
            write_lock: Mutex::new(()),
            tailer,
        };
        // Replay: the registry is not ready until it has read the whole log. A topic created
        // a moment ago may answer with a transient error (no leader yet): try again.
        let started = std::time::Instant::now();
        loop {
            match log.catch_up().await {
                Ok(()) => break,
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    tracing::warn!(error = %e, "still replaying {}", log.topic);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(KafkaError::Join(format!(
                        "cannot replay {}: {e}",
                        log.topic
                    )));
                }
            }
        }
        Ok(log)
    }

    pub async fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().await
    }

    /// Waits until the store has applied everything in the log right now, so that
    /// decisions are made on the latest state (read-your-writes across instances).
    pub async fn catch_up(&self) -> Result<(), ApiError> {
        let consumer = self.watermarks.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let (_, high) =
            tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, 0, timeout))
                .await
                .map_err(|e| ApiError::Store(e.to_string()))?
                .map_err(|e| ApiError::Store(format!("fetching watermarks: {e}")))?;
        self.wait_for(high).await
    }

    async fn wait_for(&self, offset: i64) -> Result<(), ApiError> {
        let mut rx = self.position.clone();
        tokio::time::timeout(self.timeout, rx.wait_for(|&p| p >= offset))
            .await
            .map_err(|_| ApiError::Timeout)?
            .map_err(|_| ApiError::Store("the _schemas tailer stopped".into()))?;
        Ok(())
    }

    /// Runs a write: under this instance's write lock, catch up with the log, let
    /// `plan` decide on the current state, append its records and wait until they
    /// are applied. If another instance's record won a race (same id or subject
    /// version), plan again on the new state.
    pub async fn write<T>(
        &self,
        plan: impl Fn(&Store) -> Result<Plan<T>, ApiError>,
    ) -> Result<T, ApiError> {
        let _guard = self.write_lock.lock().await;
        for _ in 0..5 {
            self.catch_up().await?;
            let Plan { records, answer } = plan(&*self.store.read().await)?;
            let mut last = None;
            for record in &records {
                last = Some(self.append(record).await?);
            }
            let Some(last) = last else { return Ok(answer) };
            self.wait_for(last + 1).await?;
            let store = self.store.read().await;
            if records.iter().all(|r| store.reflects(r)) {
                return Ok(answer);
            }
            tracing::info!("lost a write race on {}; planning again", self.topic);
        }
        Err(ApiError::Store(
            "too many concurrent writers; try again".into(),
        ))
    }

    async fn append(&self, record: &Record) -> Result<i64, ApiError> {
        let (key, value) = record.encode();
        let mut rec = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic)
            .key(&key)
            .partition(0);
        if let Some(v) = value.as_ref() {
            rec = rec.payload(v);
        }
        match self.producer.send(rec, self.timeout).await {
            Ok(delivery) => Ok(delivery.offset),
            Err((e, _)) => Err(ApiError::Store(format!("writing to {}: {e}", self.topic))),
        }
    }
}

async fn tail(consumer: StreamConsumer, store: Arc<RwLock<Store>>, position: watch::Sender<i64>) {
    loop {
        match consumer.recv().await {
            Ok(msg) => {
                let offset = msg.offset();
                match Record::decode(msg.key().unwrap_or_default(), msg.payload()) {
                    Ok(Some(record)) => {
                        if !store.write().await.apply(record) {
                            tracing::debug!(offset, "ignored a conflicting _schemas record");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(offset, error = %e, "skipping _schemas record"),
                }
                position.send_replace(offset + 1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading _schemas");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
