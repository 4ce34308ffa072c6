//! Avro in the Confluent wire format.
//!
//! - [`Codec`]: the engine's hot path. Values go straight between bytes and typed structs
//!   (`serde_avro_fast`); writer schemas come from the registry by id and are kept, output
//!   schemas by subject, fetched on first use. Nothing failed is kept: a schema registered
//!   after a miss is found by the next record that needs it.
//! - [`AvroSerde`]: JSON-shaped values for tools (CLI, gateway, tests) through
//!   `schema_registry_converter`, whose encoder and decoder cache schemas by subject and id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use dashmap::DashMap;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, get_schema_by_subject,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::Value as Json;

use crate::error::ProcessError;
use crate::registry::{DEFAULT_TIMEOUT, Registry};

/// The converter's settings for `registry` (signed in as its user, its CA trusted), every
/// call bounded by `timeout`. `SrSettings::new` sets none: a registry that accepts a
/// connection and never answers held a record, and with it its partition's commits, for good
/// (tests/faults.rs). Building the HTTP client fails only where `reqwest::Client::new`
/// panics (no TLS backend).
fn converter_settings(registry: &Registry, timeout: Duration) -> SrSettings {
    let mut builder = SrSettings::new_builder(registry.url().to_string());
    if let Some((user, password)) = registry.basic_auth() {
        builder.set_basic_authorization(user, Some(password));
    }
    builder
        .set_timeout(timeout)
        .build_with(registry.client_builder())
        .expect("an HTTP client for the schema registry (a TLS backend is available)")
}

/// How an output record's schema is found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueSchema {
    /// The latest `<topic>-value` (registered by `verdict topology apply`).
    TopicLatest,
    /// `<topic>-<record fullname>` with this schema text, registered on first use
    /// (for topics such as `review` that carry several record types).
    TopicRecord { fullname: String, schema: Arc<str> },
}

pub struct AvroSerde {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// Parsed writer schemas of output subjects, for resolving values before encoding.
    resolved: DashMap<String, Arc<apache_avro::Schema>>,
}

impl AvroSerde {
    /// Registry calls bounded by [`DEFAULT_TIMEOUT`].
    pub fn new(registry: impl Into<Registry>) -> Self {
        Self::with_timeout(registry, DEFAULT_TIMEOUT)
    }

    /// Registry calls bounded by `timeout` (a service's `registry.timeout_ms`).
    pub fn with_timeout(registry: impl Into<Registry>, timeout: Duration) -> Self {
        let registry = registry.into();
        Self {
            encoder: AvroEncoder::new(converter_settings(&registry, timeout)),
            decoder: AvroDecoder::new(converter_settings(&registry, timeout)),
            resolved: DashMap::new(),
        }
    }

    /// Decodes a Confluent-framed Avro value to JSON (logical types as their
    /// underlying JSON values, unions as the branch value).
    pub async fn decode(&self, bytes: Option<&[u8]>) -> Result<Json, ProcessError> {
        let Some(bytes) = bytes else {
            return Err(ProcessError::Decode("record has no value".into()));
        };
        let Some(id) = schema_id(bytes) else {
            return Err(ProcessError::Decode(
                "not in the Confluent wire format (magic byte 0 + schema id)".into(),
            ));
        };
        let decoded = match self.decoder.decode(Some(bytes)).await {
            Ok(d) => d,
            Err(e) => {
                let error = classify(&e, &format!("schema id {id}"), ProcessError::Decode);
                if !matches!(error, ProcessError::UnknownSchema(_)) {
                    // The converter caches failed lookups; only an unknown id may stay cached.
                    self.decoder.remove_errors_from_cache();
                }
                return Err(error);
            }
        };
        Json::try_from(decoded.value).map_err(|e| ProcessError::Decode(e.to_string()))
    }

    /// Encodes `value` for `topic`: resolves it against the subject's schema, then
    /// frames it with the schema id.
    pub async fn encode(
        &self,
        topic: &str,
        schema: &ValueSchema,
        value: Avro,
    ) -> Result<Vec<u8>, ProcessError> {
        let strategy = strategy(topic, schema);
        let subject = strategy
            .get_subject()
            .map_err(|e| ProcessError::Output(e.to_string()))?;
        let parsed = self.schema_of(&subject, &strategy).await?;
        let value = value
            .resolve(&parsed)
            .map_err(|e| ProcessError::Output(format!("output does not fit {subject}: {e}")))?;
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(|e| {
                self.encoder.remove_errors_from_cache();
                classify(&e, &format!("encoding for {subject}"), ProcessError::Output)
            })
    }
}

impl AvroSerde {
    /// The latest schema of `<topic>-value` (what [`ValueSchema::TopicLatest`] encodes with).
    pub async fn latest_schema(
        &self,
        topic: &str,
    ) -> Result<Arc<apache_avro::Schema>, ProcessError> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        let subject = strategy
            .get_subject()
            .map_err(|e| ProcessError::Output(e.to_string()))?;
        self.schema_of(&subject, &strategy).await
    }

    async fn schema_of(
        &self,
        subject: &str,
        strategy: &SubjectNameStrategy,
    ) -> Result<Arc<apache_avro::Schema>, ProcessError> {
        if let Some(s) = self.resolved.get(subject) {
            return Ok(s.clone());
        }
        let s = match self
            .encoder
            .get_schema_and_id(subject, strategy.clone())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.encoder.remove_errors_from_cache();
                return Err(ProcessError::Registry(format!("schema for {subject}: {e}")));
            }
        };
        let parsed = Arc::new(s.parsed.clone());
        self.resolved.insert(subject.to_string(), parsed.clone());
        Ok(parsed)
    }
}

/// The schema id of a Confluent-framed value: magic byte 0, then 4 bytes big-endian, then
/// at least nothing; `None` for anything else.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// What a failure of the converter means. A registry answer of "not found" (404) is an
/// unknown schema and not worth retrying. Any other trouble reaching the registry (5xx, 429,
/// 401/403, a refused connection) is retryable. Everything else is about the bytes or the
/// value, for which `otherwise` says what it is.
fn classify(e: &SRCError, what: &str, otherwise: fn(String) -> ProcessError) -> ProcessError {
    let text = format!("{what}: {e}");
    let http = e
        .error
        .starts_with("HTTP request to schema registry failed")
        || e.error.starts_with("http call to schema registry failed");
    if http && e.error.contains("status 404") {
        ProcessError::UnknownSchema(text)
    } else if http || e.retriable {
        ProcessError::Registry(text)
    } else {
        otherwise(text)
    }
}

/// Whether `e` is the registry refusing this client: its credentials (401) or its role (403).
/// A record meeting it is retried (an operator may fix them), but a service meeting it at
/// start-up stops.
pub fn is_refused(e: &ProcessError) -> bool {
    matches!(e, ProcessError::Registry(text) if text.contains("status 401") || text.contains("status 403"))
}

/// How long a schema id the registry said it does not know is answered from memory before
/// the registry is asked again (bounds the lookups a flood of such records makes).
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(5);

/// Typed Avro in the Confluent wire format, for the engine's records.
pub struct Codec {
    registry: SrSettings,
    /// Writer schemas by id (what the records read were written with).
    readers: DashMap<u32, Arc<serde_avro_fast::Schema>>,
    /// Ids the registry said it does not know, and when it said so.
    unknown: DashMap<u32, Instant>,
}

/// An output subject's schema and id: encodes values into the wire format.
pub struct Writer {
    subject: String,
    header: [u8; 5],
    schema: serde_avro_fast::Schema,
}

impl Codec {
    /// A codec whose registry calls each give up after `timeout` (a retryable error).
    pub fn new(registry: impl Into<Registry>, timeout: Duration) -> Self {
        Self {
            registry: converter_settings(&registry.into(), timeout),
            readers: DashMap::new(),
            unknown: DashMap::new(),
        }
    }

    /// Decodes a Confluent-framed Avro value into `T` (fields by name, so any writer schema
    /// that carries `T`'s fields decodes; missing optional fields are `None`).
    pub async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        bytes: Option<&[u8]>,
    ) -> Result<T, ProcessError> {
        let Some(bytes) = bytes else {
            return Err(ProcessError::Decode("record has no value".into()));
        };
        let (Some(id), Some(datum)) = (schema_id(bytes), bytes.get(5..)) else {
            return Err(ProcessError::Decode(
                "not in the Confluent wire format (magic byte 0 + schema id)".into(),
            ));
        };
        let schema = match self.readers.get(&id) {
            Some(s) => s.clone(),
            // Boxed: the registry call is large, and every record's task would carry its
            // space although almost none make it.
            None => Box::pin(self.reader(id)).await?,
        };
        serde_avro_fast::from_datum_slice(datum, &schema)
            .map_err(|e| ProcessError::Decode(format!("schema id {id}: {e}")))
    }

    async fn reader(&self, id: u32) -> Result<Arc<serde_avro_fast::Schema>, ProcessError> {
        let what = format!("schema id {id}");
        if self
            .unknown
            .get(&id)
            .is_some_and(|at| at.elapsed() < UNKNOWN_ID_TTL)
        {
            return Err(ProcessError::UnknownSchema(format!(
                "{what}: the registry does not know it"
            )));
        }
        let registered = get_schema_by_id(id, &self.registry).await.map_err(|e| {
            let error = classify(&e, &what, ProcessError::Decode);
            if matches!(error, ProcessError::UnknownSchema(_)) {
                self.unknown.insert(id, Instant::now());
            }
            error
        })?;
        self.unknown.remove(&id);
        let schema: serde_avro_fast::Schema = registered.schema.parse().map_err(|e| {
            ProcessError::Decode(format!("{what} is not a usable Avro schema: {e}"))
        })?;
        let schema = Arc::new(schema);
        self.readers.insert(id, schema.clone());
        Ok(schema)
    }

    /// The writer of `topic`'s values: the latest `<topic>-value`, or the record schema
    /// registered under `<topic>-<fullname>`.
    pub async fn writer(&self, topic: &str, schema: &ValueSchema) -> Result<Writer, ProcessError> {
        let strategy = strategy(topic, schema);
        let subject = strategy
            .get_subject()
            .map_err(|e| ProcessError::Output(e.to_string()))?;
        let registered = get_schema_by_subject(&self.registry, &strategy)
            .await
            .map_err(|e| classify(&e, &format!("schema for {subject}"), ProcessError::Output))?;
        let parsed = registered.schema.parse().map_err(|e| {
            ProcessError::Output(format!("{subject} is not a usable Avro schema: {e}"))
        })?;
        let mut header = [0; 5];
        let [_, id @ ..] = &mut header;
        *id = registered.id.to_be_bytes();
        Ok(Writer {
            subject,
            header,
            schema: parsed,
        })
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [_, id @ ..] = self.header;
        f.debug_struct("Writer")
            .field("subject", &self.subject)
            .field("id", &u32::from_be_bytes(id))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// `value` in the wire format: magic byte, schema id, Avro datum.
    pub fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, ProcessError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.schema);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        serde_avro_fast::to_datum(value, out, &mut config)
            .map_err(|e| ProcessError::Output(format!("output does not fit {}: {e}", self.subject)))
    }
}

fn strategy(topic: &str, schema: &ValueSchema) -> SubjectNameStrategy {
    match schema {
        ValueSchema::TopicLatest => {
            SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false)
        }
        ValueSchema::TopicRecord { fullname, schema } => {
            SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                topic.to_string(),
                SuppliedSchema::new(Some(fullname.clone()), SchemaType::Avro, schema.to_string()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_ids_are_read_without_slicing() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[0, 0, 0, 0, 7]), Some(7));
        assert_eq!(schema_id(&[0, 0, 0]), None, "too short");
        assert_eq!(schema_id(&[1, 0, 0, 0, 7]), None, "no magic byte");
        assert_eq!(schema_id(b""), None);
    }

    #[test]
    fn only_not_found_is_an_unknown_schema() {
        let not_found = SRCError::new(
            "HTTP request to schema registry failed with status 404 Not Found",
            None,
            false,
        );
        assert!(matches!(
            classify(&not_found, "schema id 9", ProcessError::Decode),
            ProcessError::UnknownSchema(_)
        ));
        for status in [
            "500 Internal Server Error",
            "504 Gateway Timeout",
            "429 Too Many Requests",
            "401 Unauthorized",
        ] {
            let e = SRCError::new(
                &format!("HTTP request to schema registry failed with status {status}"),
                None,
                false,
            );
            let classified = classify(&e, "schema id 9", ProcessError::Decode);
            assert!(classified.retryable(), "{status}: {classified:?}");
            assert_eq!(classified.class(), "Registry");
            assert_eq!(
                is_refused(&classified),
                status.starts_with("401"),
                "{status}"
            );
        }
        let forbidden = SRCError::new(
            "HTTP request to schema registry failed with status 403 Forbidden",
            None,
            false,
        );
        assert!(is_refused(&classify(&forbidden, "x", ProcessError::Decode)));
        let refused = SRCError::new("http call to schema registry failed", None, true);
        assert_eq!(
            classify(&refused, "x", ProcessError::Decode).class(),
            "Registry"
        );
        let garbage = SRCError::new("Could not transform bytes using schema", None, false);
        assert_eq!(
            classify(&garbage, "schema id 9", ProcessError::Decode).class(),
            "Decode",
            "bytes that do not decode are poison, not an outage"
        );
    }
}
