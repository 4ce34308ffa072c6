//! Registry state, rebuilt by applying the records of the `_schemas` topic in order.
//!
//! The store does no I/O. Every instance applies the same log with the same rules
//! ("the first record that claims an id or a subject version wins"), so all
//! instances agree, and a writer knows its record won by looking at the store
//! after its record was applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::Level;
use crate::error::ApiError;

/// A schema with its identity key.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// The text as first registered; what the API returns.
    pub text: String,
    pub schema: Arc<Schema>,
    /// Identity: Avro Parsing Canonical Form plus the attributes it drops but that
    /// change how data resolves, is validated or is documented (defaults, logical types,
    /// aliases, precision/scale, docs, verdict's `maxLength`). Two schemas are "the same"
    /// when these are equal.
    pub identity: String,
}

impl ParsedSchema {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let schema = Schema::parse_str(text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        let raw: Value =
            serde_json::from_str(text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        let mut extra = Vec::new();
        collect_resolution_attributes(&raw, &mut extra);
        let identity = format!("{}|{}", schema.canonical_form(), Value::Array(extra));
        Ok(Self {
            text: text.to_string(),
            schema: Arc::new(schema),
            identity,
        })
    }
}

fn collect_resolution_attributes(v: &Value, out: &mut Vec<Value>) {
    const KEPT: &[&str] = &[
        "default",
        "logicalType",
        "aliases",
        "precision",
        "scale",
        "doc",
        "order",
        "maxLength",
    ];
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                if KEPT.contains(&k.as_str()) {
                    out.push(Value::Array(vec![Value::String(k.clone()), val.clone()]));
                } else {
                    collect_resolution_attributes(val, out);
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_resolution_attributes(i, out)),
        _ => {}
    }
}

/// One record of the `_schemas` topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A subject version; `deleted` marks a soft delete of that version.
    Schema {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
        deleted: bool,
    },
    /// Permanent delete of one subject version.
    SchemaTombstone { subject: String, version: u32 },
    /// Compatibility level of a subject (`None` = global); `level: None` removes it.
    Config {
        subject: Option<String>,
        level: Option<Level>,
    },
    /// Soft delete of every version of a subject up to `version`.
    DeleteSubject { subject: String, version: u32 },
    /// Removes a DeleteSubject marker (after permanent deletion of the subject).
    DeleteSubjectTombstone { subject: String },
}

#[derive(Serialize, Deserialize)]
struct Key {
    keytype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    magic: u8,
}

#[derive(Serialize, Deserialize)]
struct SchemaValue {
    subject: String,
    version: u32,
    id: u32,
    schema: String,
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigValue {
    compatibility_level: Level,
}

#[derive(Serialize, Deserialize)]
struct DeleteSubjectValue {
    subject: String,
    version: u32,
}

/// A record whose bytes could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("undecodable _schemas record: {0}")]
pub struct DecodeError(String);

impl Record {
    /// Key and value bytes (value `None` = tombstone), in the style of Confluent's
    /// `_schemas` topic.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let (key, value) = match self {
            Record::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => (
                Key {
                    keytype: "SCHEMA".into(),
                    subject: Some(subject.clone()),
                    version: Some(*version),
                    magic: 1,
                },
                serde_json::to_vec(&SchemaValue {
                    subject: subject.clone(),
                    version: *version,
                    id: *id,
                    schema: schema.clone(),
                    deleted: *deleted,
                })
                .ok(),
            ),
            Record::SchemaTombstone { subject, version } => (
                Key {
                    keytype: "SCHEMA".into(),
                    subject: Some(subject.clone()),
                    version: Some(*version),
                    magic: 1,
                },
                None,
            ),
            Record::Config { subject, level } => (
                Key {
                    keytype: "CONFIG".into(),
                    subject: subject.clone(),
                    version: None,
                    magic: 0,
                },
                level.and_then(|l| {
                    serde_json::to_vec(&ConfigValue {
                        compatibility_level: l,
                    })
                    .ok()
                }),
            ),
            Record::DeleteSubject { subject, version } => (
                Key {
                    keytype: "DELETE_SUBJECT".into(),
                    subject: Some(subject.clone()),
                    version: None,
                    magic: 0,
                },
                serde_json::to_vec(&DeleteSubjectValue {
                    subject: subject.clone(),
                    version: *version,
                })
                .ok(),
            ),
            Record::DeleteSubjectTombstone { subject } => (
                Key {
                    keytype: "DELETE_SUBJECT".into(),
                    subject: Some(subject.clone()),
                    version: None,
                    magic: 0,
                },
                None,
            ),
        };
        (serde_json::to_vec(&key).unwrap_or_default(), value)
    }

    /// Decodes a record; `Ok(None)` for key types this registry does not use (NOOP, MODE…).
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Record>, DecodeError> {
        let key: Key = serde_json::from_slice(key).map_err(|e| DecodeError(e.to_string()))?;
        let bad = |e: serde_json::Error| DecodeError(e.to_string());
        let subject = || {
            key.subject
                .clone()
                .ok_or_else(|| DecodeError("key without subject".into()))
        };
        Ok(Some(match (key.keytype.as_str(), value) {
            ("SCHEMA", Some(v)) => {
                let v: SchemaValue = serde_json::from_slice(v).map_err(bad)?;
                Record::Schema {
                    subject: v.subject,
                    version: v.version,
                    id: v.id,
                    schema: v.schema,
                    deleted: v.deleted,
                }
            }
            ("SCHEMA", None) => Record::SchemaTombstone {
                subject: subject()?,
                version: key
                    .version
                    .ok_or_else(|| DecodeError("SCHEMA key without version".into()))?,
            },
            ("CONFIG", v) => Record::Config {
                subject: key.subject.clone(),
                level: match v {
                    Some(v) => Some(
                        serde_json::from_slice::<ConfigValue>(v)
                            .map_err(bad)?
                            .compatibility_level,
                    ),
                    None => None,
                },
            },
            ("DELETE_SUBJECT", Some(v)) => {
                let v: DeleteSubjectValue = serde_json::from_slice(v).map_err(bad)?;
                Record::DeleteSubject {
                    subject: v.subject,
                    version: v.version,
                }
            }
            ("DELETE_SUBJECT", None) => Record::DeleteSubjectTombstone {
                subject: subject()?,
            },
            _ => return Ok(None),
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Default, Clone)]
pub struct SubjectEntry {
    versions: BTreeMap<u32, VersionEntry>,
    deleted_up_to: u32,
}

impl SubjectEntry {
    /// Versions with their deleted flag resolved, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = (u32, VersionEntry)> + '_ {
        self.versions.iter().map(|(&v, &e)| {
            (
                v,
                VersionEntry {
                    id: e.id,
                    deleted: e.deleted || v <= self.deleted_up_to,
                },
            )
        })
    }

    pub fn live(&self) -> impl Iterator<Item = (u32, VersionEntry)> + '_ {
        self.versions().filter(|(_, e)| !e.deleted)
    }

    pub fn get(&self, version: u32) -> Option<VersionEntry> {
        self.versions().find(|(v, _)| *v == version).map(|(_, e)| e)
    }

    pub fn is_live(&self) -> bool {
        self.live().next().is_some()
    }

    pub fn next_version(&self) -> u32 {
        self.versions
            .keys()
            .next_back()
            .map_or(1, |v| v + 1)
            .max(self.deleted_up_to + 1)
    }
}

#[derive(Debug, Default)]
pub struct Store {
    schemas: BTreeMap<u32, ParsedSchema>,
    ids: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectEntry>,
    global: Option<Level>,
    subject_levels: HashMap<String, Level>,
    max_id: u32,
}

impl Store {
    /// Applies one record; returns whether it took effect (a record that conflicts
    /// with an earlier one is ignored, on every instance alike).
    pub fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => {
                let Ok(parsed) = ParsedSchema::parse(&schema) else {
                    return false;
                };
                if self
                    .schemas
                    .get(&id)
                    .is_some_and(|s| s.identity != parsed.identity)
                    || self
                        .ids
                        .get(&parsed.identity)
                        .is_some_and(|&other| other != id)
                {
                    return false;
                }
                let entry = self.subjects.entry(subject).or_default();
                if entry.versions.get(&version).is_some_and(|e| e.id != id) {
                    return false;
                }
                entry.versions.insert(version, VersionEntry { id, deleted });
                self.ids.insert(parsed.identity.clone(), id);
                // The text first registered under an id stays the one served.
                self.schemas.entry(id).or_insert(parsed);
                self.max_id = self.max_id.max(id);
                true
            }
            Record::SchemaTombstone { subject, version } => {
                let Some(entry) = self.subjects.get_mut(&subject) else {
                    return true;
                };
                if let Some(removed) = entry.versions.remove(&version) {
                    if entry.versions.is_empty() && entry.deleted_up_to == 0 {
                        self.subjects.remove(&subject);
                    }
                    self.forget_if_unused(removed.id);
                }
                true
            }
            Record::Config {
                subject: None,
                level,
            } => {
                self.global = level;
                true
            }
            Record::Config {
                subject: Some(s),
                level,
            } => {
                match level {
                    Some(l) => self.subject_levels.insert(s, l),
                    None => self.subject_levels.remove(&s),
                };
                true
            }
            Record::DeleteSubject { subject, version } => {
                let entry = self.subjects.entry(subject).or_default();
                entry.deleted_up_to = entry.deleted_up_to.max(version);
                true
            }
            Record::DeleteSubjectTombstone { subject } => {
                if let Some(entry) = self.subjects.get_mut(&subject) {
                    entry.deleted_up_to = 0;
                    if entry.versions.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
                true
            }
        }
    }

    fn forget_if_unused(&mut self, id: u32) {
        let used = self
            .subjects
            .values()
            .any(|s| s.versions.values().any(|e| e.id == id));
        if !used && let Some(s) = self.schemas.remove(&id) {
            self.ids.remove(&s.identity);
        }
    }

    /// Whether `record` is reflected in the store (it was applied, not overruled).
    pub fn reflects(&self, record: &Record) -> bool {
        match record {
            Record::Schema {
                subject,
                version,
                id,
                ..
            } => self
                .subjects
                .get(subject)
                .and_then(|s| s.versions.get(version))
                .is_some_and(|e| e.id == *id),
            _ => true,
        }
    }

    pub fn schema(&self, id: u32) -> Option<&ParsedSchema> {
        self.schemas.get(&id)
    }

    pub fn id_of(&self, parsed: &ParsedSchema) -> Option<u32> {
        self.ids.get(&parsed.identity).copied()
    }

    pub fn next_id(&self) -> u32 {
        self.max_id + 1
    }

    pub fn subject(&self, name: &str) -> Option<&SubjectEntry> {
        self.subjects.get(name)
    }

    /// How many schemas (distinct ids) it holds.
    pub fn schema_count(&self) -> usize {
        self.schemas.len()
    }

    pub fn subjects(&self) -> impl Iterator<Item = (&String, &SubjectEntry)> {
        self.subjects.iter()
    }

    pub fn global_level(&self) -> Level {
        self.global.unwrap_or_default()
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subject_levels.get(subject).copied()
    }

    pub fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// `(subject, version)` pairs that use schema `id`.
    pub fn usages(&self, id: u32, include_deleted: bool) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions()
                    .filter(|(_, e)| e.id == id && (include_deleted || !e.deleted))
                    .map(move |(v, _)| (name.clone(), v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
    const A_SPACED: &str =
        r#"{ "type" : "record", "name":"A", "fields" : [ {"type":"int", "name":"x"} ] }"#;
    const A_DEFAULT: &str =
        r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int","default":1}]}"#;

    fn schema(subject: &str, version: u32, id: u32, text: &str) -> Record {
        Record::Schema {
            subject: subject.into(),
            version,
            id,
            schema: text.into(),
            deleted: false,
        }
    }

    #[test]
    fn records_round_trip_through_bytes() {
        let records = [
            schema("s", 1, 1, A),
            Record::SchemaTombstone {
                subject: "s".into(),
                version: 1,
            },
            Record::Config {
                subject: None,
                level: Some(Level::Full),
            },
            Record::Config {
                subject: Some("s".into()),
                level: None,
            },
            Record::DeleteSubject {
                subject: "s".into(),
                version: 3,
            },
            Record::DeleteSubjectTombstone {
                subject: "s".into(),
            },
        ];
        for r in records {
            let (k, v) = r.encode();
            assert_eq!(Record::decode(&k, v.as_deref()).expect("decode"), Some(r));
        }
        assert_eq!(
            Record::decode(br#"{"keytype":"NOOP","magic":0}"#, None).expect("noop"),
            None
        );
        assert!(Record::decode(b"not json", None).is_err());
    }

    #[test]
    fn identity_ignores_layout_but_not_defaults() {
        let a = ParsedSchema::parse(A).expect("a");
        assert_eq!(
            a.identity,
            ParsedSchema::parse(A_SPACED).expect("spaced").identity
        );
        assert_ne!(
            a.identity,
            ParsedSchema::parse(A_DEFAULT).expect("default").identity
        );
    }

    #[test]
    fn first_claim_wins_on_conflicts() {
        let mut s = Store::default();
        assert!(s.apply(schema("s", 1, 1, A)));
        // Another instance raced: same version, other id → ignored.
        assert!(!s.apply(schema("s", 1, 2, A_DEFAULT)));
        // Same id, other schema → ignored.
        assert!(!s.apply(schema("t", 1, 1, A_DEFAULT)));
        assert!(s.reflects(&schema("s", 1, 1, A)));
        assert!(!s.reflects(&schema("s", 1, 2, A_DEFAULT)));
        assert_eq!(s.next_id(), 2);
    }

    #[test]
    fn soft_and_permanent_deletes() {
        let mut s = Store::default();
        s.apply(schema("s", 1, 1, A));
        s.apply(schema("s", 2, 2, A_DEFAULT));
        s.apply(Record::DeleteSubject {
            subject: "s".into(),
            version: 2,
        });
        let subject = s.subject("s").expect("kept while soft deleted");
        assert!(!subject.is_live());
        assert_eq!(subject.next_version(), 3);
        s.apply(Record::SchemaTombstone {
            subject: "s".into(),
            version: 1,
        });
        s.apply(Record::SchemaTombstone {
            subject: "s".into(),
            version: 2,
        });
        s.apply(Record::DeleteSubjectTombstone {
            subject: "s".into(),
        });
        assert!(s.subject("s").is_none());
        assert!(s.schema(1).is_none(), "unused schema is forgotten");
    }
}
