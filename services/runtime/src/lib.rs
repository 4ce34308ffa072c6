//! The streaming runtime that every verdict service shares: layered configuration
//! ([`settings`]), Kafka clients ([`kafka`], [`producer`]), Avro serde ([`serde`]),
//! the consumer engine ([`engine`]) with its error model ([`error`]), retry and
//! dead-letter headers ([`headers`]), the dead-letter guard ([`guard`]), metrics
//! and health ([`metrics`], [`http`]), tracing ([`telemetry`]), the declarative
//! topology ([`topology`]) and a registry admin client ([`registry`]).

pub mod acls;
mod admin_ffi;
pub mod audit;
pub mod authorization;
pub mod avro;
pub mod engine;
pub mod error;
pub mod groups;
pub mod groups_admin;
pub mod guard;
pub mod headers;
pub mod http;
pub mod inference;
pub mod kafka;
pub mod kafka_stats;
pub mod metrics;
pub mod models;
pub mod producer;
pub mod record_limit;
pub mod registry;
pub mod secret;
pub mod serde;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod topology;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A hash map with a fast hasher, for per-record lookups on the engine's hot path.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A 64-bit hash of `bytes` (fixed seed, so equal everywhere in the process): record keys
/// reduced to what orders them.
pub fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(bytes)
}
