//! Avro in the Confluent wire format through `schema_registry_converter`, whose
//! encoder and decoder cache schemas by subject and id.

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use dashmap::DashMap;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::Value as Json;

use crate::error::ProcessError;

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
    pub fn new(registry_url: &str) -> Self {
        Self {
            encoder: AvroEncoder::new(SrSettings::new(registry_url.to_string())),
            decoder: AvroDecoder::new(SrSettings::new(registry_url.to_string())),
            resolved: DashMap::new(),
        }
    }

    /// Decodes a Confluent-framed Avro value to JSON (logical types as their
    /// underlying JSON values, unions as the branch value).
    pub async fn decode(&self, bytes: Option<&[u8]>) -> Result<Json, ProcessError> {
        let bytes = match bytes {
            Some(b) if b.len() >= 5 && b[0] == 0 => b,
            Some(_) => {
                return Err(ProcessError::Decode(
                    "not in the Confluent wire format (magic byte 0 + schema id)".into(),
                ));
            }
            None => return Err(ProcessError::Decode("record has no value".into())),
        };
        let decoded = self
            .decoder
            .decode(Some(bytes))
            .await
            .map_err(|e| classify(e, bytes))?;
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
        let strategy = match schema {
            ValueSchema::TopicLatest => {
                SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false)
            }
            ValueSchema::TopicRecord { fullname, schema } => {
                SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                    topic.to_string(),
                    SuppliedSchema::new(
                        Some(fullname.clone()),
                        SchemaType::Avro,
                        schema.to_string(),
                    ),
                )
            }
        };
        let subject = strategy
            .get_subject()
            .map_err(|e| ProcessError::Output(e.to_string()))?;
        let parsed = match self.resolved.get(&subject) {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .encoder
                    .get_schema_and_id(&subject, strategy.clone())
                    .await
                    .map_err(|e| ProcessError::Registry(format!("schema for {subject}: {e}")))?;
                let parsed = Arc::new(s.parsed.clone());
                self.resolved.insert(subject.clone(), parsed.clone());
                parsed
            }
        };
        let value = value
            .resolve(&parsed)
            .map_err(|e| ProcessError::Output(format!("output does not fit {subject}: {e}")))?;
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(|e| ProcessError::Output(format!("encoding for {subject}: {e}")))
    }
}

fn classify(e: SRCError, bytes: &[u8]) -> ProcessError {
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let text = e.to_string();
    if e.retriable {
        ProcessError::Registry(text)
    } else if text.contains("40403") || text.contains("not found") || text.contains("404") {
        ProcessError::UnknownSchema(format!("schema id {id}: {text}"))
    } else {
        ProcessError::Decode(format!("schema id {id}: {text}"))
    }
}
