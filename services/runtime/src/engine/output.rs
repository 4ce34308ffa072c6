//! The engine's producer: every output, retry and dead-letter copy of a record is sent with
//! one shared acknowledgement counter as its delivery opaque. librdkafka's delivery reports
//! (on the producer's polling thread) count it down; the record's task is woken once, when
//! the last of its records is acknowledged, instead of once per record through a future each.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::{KafkaError as ClientError, KafkaSettings};
use crate::metrics::Metrics;

/// A record the producer refused or the broker did not acknowledge.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{topic}: {error}")]
pub(crate) struct SendError {
    pub topic: String,
    error: KafkaError,
}

impl SendError {
    /// The record is larger than the producer's `message.max.bytes` or the topic's
    /// `max.message.bytes`: sending it again can never work.
    pub(crate) fn too_large(&self) -> bool {
        matches!(
            self.error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
        )
    }
}

/// The records of one attempt still to be acknowledged, and the first failure.
#[derive(Default)]
pub(crate) struct Acks {
    left: AtomicUsize,
    failed: OnceLock<SendError>,
    waker: AtomicWaker,
}

impl Acks {
    fn done(&self, error: Option<SendError>) {
        if let Some(e) = error {
            let _ = self.failed.set(e);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }
}

/// Resolves when every record sent under an [`Acks`] is acknowledged (or failed).
pub(crate) struct AllAcked(Arc<Acks>);

impl Future for AllAcked {
    type Output = Result<(), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let acks = &self.0;
        if acks.left.load(Ordering::Acquire) > 0 {
            acks.waker.register(cx.waker());
            if acks.left.load(Ordering::Acquire) > 0 {
                return Poll::Pending;
            }
        }
        Poll::Ready(acks.failed.get().map_or(Ok(()), |e| Err(e.clone())))
    }
}

/// The producer's context: acknowledgements to their records, statistics to the metrics.
pub(crate) struct Delivery {
    metrics: Arc<Metrics>,
}

impl ClientContext for Delivery {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics
            .kafka
            .observe(crate::kafka_stats::Client::Producer, &statistics);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        acks.done(result.as_ref().err().map(|(error, m)| SendError {
            topic: m.topic().to_string(),
            error: error.clone(),
        }));
    }
}

/// One record to send: topic, partition (the partitioner's choice if none), key, value and
/// headers.
pub(crate) struct Outbound<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Option<OwnedHeaders>,
}

pub(crate) struct Output {
    producer: ThreadedProducer<Delivery>,
    /// Bytes handed to the producer and not yet acknowledged (the engine's byte bound
    /// counts them with the records' own).
    pub(crate) unacked_bytes: Arc<AtomicUsize>,
}

/// Resolves when every record of one [`Output::send_all`] is acknowledged; its bytes stop
/// counting then.
pub(crate) struct Pending {
    acked: AllAcked,
    bytes: usize,
    unacked: Arc<AtomicUsize>,
}

impl Pending {
    pub(crate) async fn acked(self) -> Result<(), SendError> {
        let Self {
            acked,
            bytes,
            unacked,
        } = self;
        let result = acked.await;
        unacked.fetch_sub(bytes, Ordering::Relaxed);
        result
    }
}

impl Output {
    pub(crate) fn new(kafka: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let mut cfg = kafka.producer_config();
        cfg.set(
            "statistics.interval.ms",
            crate::kafka_stats::STATISTICS_INTERVAL_MS,
        );
        kafka.apply_properties(&mut cfg);
        Ok(Self {
            producer: cfg.create_with_context(Delivery { metrics })?,
            unacked_bytes: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A transactional producer (`transactional.id`): its earlier incarnations are fenced and
    /// their open transaction aborted, and a first transaction is begun.
    pub(crate) fn transactional(
        kafka: &KafkaSettings,
        id: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClientError> {
        let mut cfg = kafka.producer_config();
        let timeout_ms = timeout.as_millis().to_string();
        // librdkafka wants a delivery to time out no later than its transaction.
        cfg.set("transactional.id", id)
            .set("transaction.timeout.ms", &timeout_ms)
            .set("delivery.timeout.ms", &timeout_ms)
            .set(
                "statistics.interval.ms",
                crate::kafka_stats::STATISTICS_INTERVAL_MS,
            );
        kafka.apply_properties(&mut cfg);
        let producer: ThreadedProducer<Delivery> = cfg.create_with_context(Delivery { metrics })?;
        producer.init_transactions(Duration::from_secs(30))?;
        producer.begin_transaction()?;
        Ok(Self {
            producer,
            unacked_bytes: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The producer, for its transactions.
    pub(crate) fn producer(&self) -> &ThreadedProducer<Delivery> {
        &self.producer
    }

    /// Sends every record and waits until the broker acknowledged them all; the first
    /// failure (a refusal at send or a failed delivery) names the topic.
    pub(crate) async fn write_all(
        &self,
        records: impl ExactSizeIterator<Item = Outbound<'_>>,
    ) -> Result<(), SendError> {
        self.send_all(records).await?.acked().await
    }

    /// Hands every record to the producer (which copies them, so the caller may drop its
    /// buffers at once); the answer resolves when the broker acknowledged them all.
    pub(crate) async fn send_all(
        &self,
        records: impl ExactSizeIterator<Item = Outbound<'_>>,
    ) -> Result<Pending, SendError> {
        let acks = Arc::new(Acks::default());
        acks.left.store(records.len(), Ordering::Release);
        let mut unsent = records.len();
        let mut bytes = 0;
        for send in records {
            bytes += send.value.map_or(0, <[u8]>::len) + send.key.map_or(0, <[u8]>::len);
            let topic = send.topic;
            let mut record = BaseRecord::with_opaque_to(topic, acks.clone());
            if let Some(p) = send.partition {
                record = record.partition(p);
            }
            if let Some(k) = send.key {
                record = record.key(k);
            }
            if let Some(v) = send.value {
                record = record.payload(v);
            }
            if let Some(h) = send.headers {
                record = record.headers(h);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        Box::pin(tokio::time::sleep(Duration::from_millis(1))).await;
                    }
                    Err((error, _)) => {
                        // This one and the rest will never be reported; count them as done.
                        let error = SendError {
                            topic: topic.to_string(),
                            error,
                        };
                        for _ in 0..unsent {
                            acks.done(Some(error.clone()));
                        }
                        return Err(error);
                    }
                }
            }
            unsent -= 1;
        }
        self.unacked_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(Pending {
            acked: AllAcked(acks),
            bytes,
            unacked: self.unacked_bytes.clone(),
        })
    }
}
