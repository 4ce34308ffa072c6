//! Producing and reading Avro records in the Confluent wire format, with the schemas of the
//! registry (`<topic>-value`), through the runtime's one Avro serde and client factory.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use verdict_runtime::registry::Registry;

use rand::Rng;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use verdict_runtime::avro::untyped;
use verdict_runtime::error::ProcessError;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::serde::{AvroSerde, ValueSchema};

use crate::CliError;

/// A record as produced: where it landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub value: Json,
}

pub struct AvroProducer {
    producer: FutureProducer,
    serde: AvroSerde,
}

impl AvroProducer {
    pub fn new(kafka: &KafkaSettings, registry: impl Into<Registry>) -> Result<Self, CliError> {
        Ok(Self {
            producer: kafka.producer()?,
            serde: AvroSerde::new(registry),
        })
    }

    /// Encodes a JSON object with the latest `<topic>-value` schema and produces it.
    pub async fn send(&self, topic: &str, key: &str, value: &Json) -> Result<Delivered, CliError> {
        let bytes = self
            .serde
            .encode(topic, &ValueSchema::TopicLatest, untyped(value))
            .await
            .map_err(|e| match e {
                ProcessError::Output(why) => CliError::Usage(why),
                other => CliError::Failed(other.to_string()),
            })?;
        let (partition, offset) = verdict_runtime::producer::send(
            &self.producer,
            topic,
            Some(key.as_bytes()),
            Some(&bytes),
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .map_err(|e| CliError::Failed(format!("producing to {e}")))?;
        Ok(Delivered {
            key: key.to_string(),
            partition,
            offset,
            value: value.clone(),
        })
    }
}

/// Reads the records at the given `(partition, offset)`s back and decodes them: only the
/// range between them in each partition is read, however much the topic holds.
pub async fn read_back(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    wanted: &[(i32, i64)],
    timeout: Duration,
) -> Result<Vec<Delivered>, CliError> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (p, o) in wanted {
        let r = ranges.entry(*p).or_insert((*o, *o + 1));
        *r = (r.0.min(*o), r.1.max(*o + 1));
    }
    let wanted: HashSet<(i32, i64)> = wanted.iter().copied().collect();
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let serde = AvroSerde::new(registry);
    let mut out = Vec::with_capacity(wanted.len());
    while let Some(r) = scanner.next(timeout).await? {
        if !wanted.contains(&(r.partition, r.offset)) {
            continue;
        }
        let value = serde.decode(r.value.as_deref()).await.map_err(|e| {
            CliError::Failed(format!(
                "{topic}/{}@{} does not decode through the registry: {e}",
                r.partition, r.offset
            ))
        })?;
        out.push(Delivered {
            key: r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            partition: r.partition,
            offset: r.offset,
            value,
        });
    }
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// The end (next offset) of every partition of `topic` now: where a reader of what comes
/// next starts.
pub async fn ends(kafka: &KafkaSettings, topic: &str) -> Result<BTreeMap<i32, i64>, CliError> {
    let n = crate::partitions_of(kafka, topic).await?;
    let marks = verdict_runtime::groups::GroupReader::new(kafka)?
        .watermarks((0..n).map(|p| (topic.to_string(), p)).collect())
        .await?;
    Ok(marks
        .into_iter()
        .map(|((_, p), (_, end))| (p, end))
        .collect())
}

/// Reads `topic` from the offsets `from` on, decoding each record and offering it to `keep`
/// until `keep` says it has all it needs (returns true) or `timeout` passes; returns whether
/// it had.
pub async fn read_from(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    timeout: Duration,
    mut keep: impl FnMut(Record) -> bool,
) -> Result<bool, CliError> {
    let ranges = from.iter().map(|(p, o)| (*p, (*o, i64::MAX))).collect();
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let serde = AvroSerde::new(registry);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(r)) = scanner.next(left).await else {
            return Ok(false);
        };
        let value = match r.value.as_deref() {
            Some(bytes) if verdict_runtime::serde::schema_id(bytes).is_some() => {
                serde.decode(Some(bytes)).await.ok()
            }
            _ => None,
        };
        let record = Record {
            partition: r.partition,
            offset: r.offset,
            key: r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            raw: r.value,
            value,
            headers: r.headers,
        };
        if keep(record) {
            return Ok(true);
        }
    }
}

/// True when every field of `sent` has the same value in `got`: a record read back with a
/// newer compatible schema has more fields (their defaults), and is still the one sent.
pub fn same_fields(sent: &Json, got: &Json) -> bool {
    match (sent, got) {
        (Json::Object(s), Json::Object(g)) => s.iter().all(|(k, v)| g.get(k) == Some(v)),
        _ => sent == got,
    }
}

/// A `TransactionEvent` (schemas/transaction_event.avsc), fields in the schema's order: what
/// the demo, the tests and the load generator send.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransactionEvent {
    pub event_id: String,
    pub tenant_id: String,
    pub occurred_at: i64,
    pub account_id: String,
    pub amount: f64,
    pub currency: &'static str,
    pub merchant_id: String,
    pub merchant_category: &'static str,
    pub country: &'static str,
    pub channel: &'static str,
    pub customer_age_years: Option<i32>,
    pub account_age_months: Option<i32>,
    pub credit_history: Option<&'static str>,
    pub employment_years: Option<i32>,
    pub existing_credits: Option<i32>,
}

/// A plausible card transaction for the demo, the tests and the load generator, stamped now.
pub fn sample_event(rng: &mut impl Rng, tenant: &str) -> TransactionEvent {
    const CHANNELS: [&str; 4] = ["CARD_PRESENT", "ONLINE", "TRANSFER", "ATM"];
    const COUNTRIES: [&str; 5] = ["DE", "NL", "FR", "US", "GB"];
    const MCC: [&str; 5] = ["5411", "5812", "5999", "4829", "6011"];
    const HISTORY: [&str; 5] = [
        "no_credits",
        "all_paid",
        "existing_paid",
        "delayed_previously",
        "critical_account",
    ];
    TransactionEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: verdict_runtime::now_ms(),
        account_id: format!("acct-{:04}", rng.random_range(0..200)),
        amount: (rng.random_range(1.0_f64..2_500.0) * 100.0).round() / 100.0,
        currency: "EUR",
        merchant_id: format!("m-{:03}", rng.random_range(0..50)),
        merchant_category: MCC[rng.random_range(0..MCC.len())],
        country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
        channel: CHANNELS[rng.random_range(0..CHANNELS.len())],
        customer_age_years: Some(rng.random_range(19..75)),
        account_age_months: Some(rng.random_range(1..120)),
        credit_history: Some(HISTORY[rng.random_range(0..HISTORY.len())]),
        employment_years: Some(rng.random_range(0..30)),
        existing_credits: Some(rng.random_range(1..4)),
    }
}

/// [`sample_event`] as JSON, with its account (the record key).
pub fn sample_transaction(rng: &mut impl Rng, tenant: &str) -> (String, Json) {
    let event = sample_event(rng, tenant);
    let value = serde_json::to_value(&event).unwrap_or_default();
    (event.account_id, value)
}

/// The documents `verdict demo` sends (a shadow test replays them too).
pub const SAMPLE_DOCUMENTS: [&str; 4] = [
    "Invoice 2024-17: please pay the amount due of 1,250.00 EUR to IBAN DE89 3704 0044 0532 0130 00 within 30 days.",
    "This is unacceptable! My order never arrived and I want a refund. Reach me at jane.doe@example.com or +49 30 1234567.",
    "Hello, the login page shows an error since this morning and I cannot access my account. Can you help?",
    "Curriculum vitae: ten years of experience as a data engineer, education in mathematics, skills in Rust and SQL.",
];

/// A plain-text document upload of `tenant` (schemas/document_uploaded_event.avsc), stamped
/// now, for the tests and the load generator; its key is `document_id`.
pub fn sample_document(tenant: &str, document_id: &str, text: &str) -> Json {
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(), "tenant_id": tenant,
        "occurred_at": verdict_runtime::now_ms(), "document_id": document_id,
        "content_type": "text/plain", "filename": null, "text": text, "source": "verdict",
        "size_bytes": text.len(), "language": null,
    })
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub raw: Option<Vec<u8>>,
    /// The value decoded through the registry, when it is Confluent-framed Avro.
    pub value: Option<Json>,
    pub headers: verdict_runtime::headers::HeaderMap,
}

/// Reads `topic` from the beginning (every partition) until `done(records)` or `timeout`.
pub async fn read_topic(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    use rdkafka::consumer::StreamConsumer;
    let partitions = kafka.partition_count(topic).await.max(1);
    let consumer: Result<StreamConsumer, _> = kafka.reader_config().create();
    let Ok(consumer) = consumer else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..i32::try_from(partitions).unwrap_or(1) {
        if tpl
            .add_partition_offset(topic, p, Offset::Beginning)
            .is_err()
        {
            return Vec::new();
        }
    }
    if consumer.assign(&tpl).is_err() {
        return Vec::new();
    }
    let serde = AvroSerde::new(registry);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let Ok(next) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let Ok(m) = next else { continue };
        let raw = m.payload().map(<[u8]>::to_vec);
        let value = match raw.as_deref() {
            Some(bytes) if verdict_runtime::serde::schema_id(bytes).is_some() => {
                serde.decode(Some(bytes)).await.ok()
            }
            _ => None,
        };
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            raw,
            value,
            headers: verdict_runtime::headers::HeaderMap::from_kafka(m.headers()),
        });
    }
    out
}

/// A record as read, bytes untouched.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: verdict_runtime::headers::HeaderMap,
}

/// Reads a bounded range of a topic: each partition from its start offset up to (not
/// including) its end offset, then stops. Starts and ends are absolute offsets, so a range
/// is known to be finished without waiting for a timeout.
pub struct Scanner {
    consumer: rdkafka::consumer::StreamConsumer,
    /// Partitions still being read and where they stop.
    open: std::collections::BTreeMap<i32, i64>,
}

impl Scanner {
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        ranges: &std::collections::BTreeMap<i32, (i64, i64)>,
    ) -> Result<Self, CliError> {
        let consumer: rdkafka::consumer::StreamConsumer = kafka
            .reader_config()
            .create()
            .map_err(|e| CliError::Failed(format!("Kafka client: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        let mut open = std::collections::BTreeMap::new();
        for (p, (start, end)) in ranges {
            if start < end {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*start))
                    .map_err(|e| CliError::Failed(e.to_string()))?;
                open.insert(*p, *end);
            }
        }
        if !open.is_empty() {
            consumer
                .assign(&tpl)
                .map_err(|e| CliError::Failed(e.to_string()))?;
        }
        Ok(Self { consumer, open })
    }

    /// The next record in range; `None` once every partition reached its end. Fails after
    /// `stall` without any record while some remain.
    pub async fn next(&mut self, stall: Duration) -> Result<Option<RawRecord>, CliError> {
        loop {
            if self.open.is_empty() {
                return Ok(None);
            }
            let Ok(next) = tokio::time::timeout(stall, self.consumer.recv()).await else {
                // Control records (transaction markers) are never delivered: a partition
                // whose position passed its end is done even without a last record.
                if let Ok(positions) = self.consumer.position() {
                    for e in positions.elements() {
                        if let (Offset::Offset(at), Some(end)) =
                            (e.offset(), self.open.get(&e.partition()))
                            && at >= *end
                        {
                            self.open.remove(&e.partition());
                        }
                    }
                }
                if self.open.is_empty() {
                    return Ok(None);
                }
                return Err(CliError::Failed(format!(
                    "no record for {stall:?} while partitions {:?} have more to read",
                    self.open.keys().collect::<Vec<_>>()
                )));
            };
            let m = next.map_err(|e| CliError::Failed(format!("reading: {e}")))?;
            let p = m.partition();
            let Some(end) = self.open.get(&p).copied() else {
                continue;
            };
            if m.offset() + 1 >= end {
                self.open.remove(&p);
            }
            if m.offset() >= end {
                continue;
            }
            return Ok(Some(RawRecord {
                partition: p,
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: verdict_runtime::headers::HeaderMap::from_kafka(m.headers()),
            }));
        }
    }
}

/// A value for display: decoded through the registry when it is Confluent-framed Avro (any
/// schema id), else its UTF-8 text, else `{"base64": …}`; null when there is none. A framed
/// value that does not decode shows why next to its bytes.
pub async fn describe_value(serde: &AvroSerde, bytes: Option<&[u8]>) -> Json {
    use base64::Engine;
    let Some(bytes) = bytes else {
        return Json::Null;
    };
    let b64 = || base64::engine::general_purpose::STANDARD.encode(bytes);
    if verdict_runtime::serde::schema_id(bytes).is_some() {
        return match serde.decode(Some(bytes)).await {
            Ok(v) => v,
            Err(e) => json!({"undecodable": e.to_string(), "base64": b64()}),
        };
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => json!({"base64": b64()}),
    }
}
