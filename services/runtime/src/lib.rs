//! The streaming runtime that every verdict service shares.
//!
//! So far: layered configuration ([`settings`]), Kafka client settings and admin
//! helpers ([`kafka`]), the declarative topology ([`topology`]), a small
//! Confluent Schema Registry REST client ([`registry`]) and logging ([`telemetry`]).

pub mod avro;
pub mod kafka;
pub mod registry;
pub mod settings;
pub mod telemetry;
pub mod topology;
