//! The streaming runtime that every verdict service shares: layered configuration
//! ([`settings`]), Kafka clients ([`kafka`], [`producer`]), Avro serde ([`serde`]),
//! the consumer engine ([`engine`]) with its error model ([`error`]), retry and
//! dead-letter headers ([`headers`]), the dead-letter guard ([`guard`]), metrics
//! and health ([`metrics`], [`http`]), tracing ([`telemetry`]), the declarative
//! topology ([`topology`]) and a registry admin client ([`registry`]).

pub mod avro;
pub mod engine;
pub mod error;
pub mod guard;
pub mod headers;
pub mod http;
pub mod inference;
pub mod kafka;
pub mod metrics;
pub mod models;
pub mod producer;
pub mod registry;
pub mod serde;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod topology;
