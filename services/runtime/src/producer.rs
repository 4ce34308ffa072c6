//! The output producer: idempotent, acks=all, compressed; a record's outputs are
//! awaited (acknowledged by the broker) before its offset may be committed.

use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::{KafkaError, KafkaSettings};

pub fn create(kafka: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("delivery.timeout.ms", "30000");
    kafka.apply_properties(&mut config);
    Ok(config.create()?)
}

/// Sends one record and waits for the broker's acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<(i32, i64), String> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| format!("{topic}: {e}"))
}
