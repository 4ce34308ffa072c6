//! Audit records (`schemas/audit_event.avsc`): who or what decided, when, on which model, at
//! what cost, with a SHA-256 of the input instead of the input itself. One builder for every
//! service, and the outputs of a decision: the decision, its audit record, and a copy for
//! review when it needs a person.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value as Json;

use crate::engine::{DecisionTopics, Outgoing};
use crate::models::sha256_hex;
use crate::now_ms;

/// An audit record under construction.
#[derive(Debug, Clone)]
pub struct Audit {
    service: String,
    action: &'static str,
    event_id: String,
    tenant_id: String,
    input_sha256: String,
    outcome: Option<String>,
    model: Option<(String, String)>,
    latency_micros: Option<u64>,
    token_usage: Option<i64>,
    cost_usd: Option<f64>,
    details: BTreeMap<&'static str, String>,
    /// Who acted, when not this process (a person resolving a review).
    actor: Option<String>,
}

/// An `AuditEvent` (schemas/audit_event.avsc), fields in the schema's order.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub audit_id: String,
    pub event_id: String,
    pub tenant_id: String,
    pub occurred_at: i64,
    pub service: String,
    pub action: &'static str,
    pub actor: String,
    pub input_sha256: String,
    pub outcome: Option<String>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub latency_micros: Option<u64>,
    pub token_usage: Option<i64>,
    pub cost_usd: Option<f64>,
    pub details: BTreeMap<&'static str, String>,
}

impl Audit {
    /// The audit of a decision on `input` (hashed, never kept) by `service`.
    pub fn decision(service: &str, event_id: &str, tenant_id: &str, input: &[u8]) -> Self {
        Self {
            service: service.to_string(),
            action: "DECISION",
            event_id: event_id.to_string(),
            tenant_id: tenant_id.to_string(),
            input_sha256: sha256_hex(input),
            outcome: None,
            model: None,
            latency_micros: None,
            token_usage: None,
            cost_usd: None,
            details: BTreeMap::new(),
            actor: None,
        }
    }

    /// The audit of a person's resolution of a review, made through `service`.
    pub fn human_review(
        service: &str,
        event_id: &str,
        tenant_id: &str,
        input: &[u8],
        reviewer: &str,
    ) -> Self {
        Self {
            action: "HUMAN_REVIEW",
            actor: Some(reviewer.to_string()),
            ..Self::decision(service, event_id, tenant_id, input)
        }
    }

    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = Some(outcome.to_string());
        self
    }

    pub fn model(mut self, name: &str, version: &str) -> Self {
        self.model = Some((name.to_string(), version.to_string()));
        self
    }

    /// Time from `started` until now.
    pub fn latency_since(mut self, started: Instant) -> Self {
        self.latency_micros =
            Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        self
    }

    pub fn usage(mut self, tokens: Option<i64>, cost_usd: Option<f64>) -> Self {
        self.token_usage = tokens;
        self.cost_usd = cost_usd;
        self
    }

    pub fn detail(mut self, key: &'static str, value: impl ToString) -> Self {
        self.details.insert(key, value.to_string());
        self
    }

    /// The record, stamped now, by this process (`actor`: the service instance, unless a
    /// person acted).
    pub fn record(self) -> AuditEvent {
        let (model_name, model_version) =
            self.model.map_or((None, None), |(n, v)| (Some(n), Some(v)));
        AuditEvent {
            audit_id: uuid::Uuid::new_v4().to_string(),
            event_id: self.event_id,
            tenant_id: self.tenant_id,
            occurred_at: now_ms(),
            actor: self.actor.unwrap_or_else(|| instance(&self.service)),
            service: self.service,
            action: self.action,
            input_sha256: self.input_sha256,
            outcome: self.outcome,
            model_name,
            model_version,
            latency_micros: self.latency_micros,
            token_usage: self.token_usage,
            cost_usd: self.cost_usd,
            details: self.details,
        }
    }

    /// The record as JSON (for tools that encode through the registry's JSON path).
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self.clone().record()).unwrap_or(Json::Null)
    }
}

/// This process as an actor: `<service>/<pid>` (the pid read once: it is a system call).
fn instance(service: &str) -> String {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    format!("{service}/{}", PID.get_or_init(std::process::id))
}

/// What a decision service writes: the decision (also to `review` when it needs a person)
/// and its audit record.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(
    clippy::large_enum_variant,
    reason = "decisions are as large as audit records; a box would cost an allocation per record"
)]
pub enum DecisionOutput<D> {
    Decision(D),
    Audit(AuditEvent),
}

impl DecisionTopics {
    /// A decision's outputs, keyed by `key`: the decision, its audit record, and, when it
    /// needs a person, the decision again on the review topic.
    pub fn outputs<D: Clone>(
        &self,
        key: &str,
        decision: D,
        audit: Audit,
        review: bool,
    ) -> Vec<Outgoing<DecisionOutput<D>>> {
        let key = Some(key.to_string());
        let mut out = Vec::with_capacity(3);
        let copy = review.then(|| decision.clone());
        out.push(Outgoing {
            topic: self.decisions.clone(),
            key: key.clone(),
            value: DecisionOutput::Decision(decision),
        });
        out.push(Outgoing {
            topic: self.audit.clone(),
            key: key.clone(),
            value: DecisionOutput::Audit(audit.record()),
        });
        if let Some(decision) = copy {
            out.push(Outgoing {
                topic: self.review.clone(),
                key,
                value: DecisionOutput::Decision(decision),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_record_hashes_the_input_and_fits_the_schema() {
        let a = Audit::decision(
            "svc",
            "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11",
            "t",
            b"secret input",
        )
        .outcome("APPROVE")
        .model("m", "1.0.0")
        .detail("attempt", 2)
        .to_json();
        assert_eq!(a["input_sha256"].as_str().map(str::len), Some(64));
        assert!(!a.to_string().contains("secret input"));
        assert_eq!(a["details"]["attempt"], "2");
        assert_eq!(a["token_usage"], Json::Null);
        let schema =
            apache_avro::Schema::parse_str(include_str!("../../../schemas/audit_event.avsc"))
                .expect("schema");
        crate::avro::untyped(&a)
            .resolve(&schema)
            .expect("fits audit_event.avsc");
    }

    #[test]
    fn the_typed_record_encodes_as_apache_avro_reads_it() {
        let text = include_str!("../../../schemas/audit_event.avsc");
        let fast: serde_avro_fast::Schema = text.parse().expect("schema");
        let record = Audit::decision("svc", "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11", "t", b"x")
            .outcome("REVIEW")
            .detail("source", "in/0@7")
            .record();
        let datum = serde_avro_fast::to_datum(
            &record,
            Vec::new(),
            &mut serde_avro_fast::ser::SerializerConfig::new(&fast),
        )
        .expect("encodes");
        let schema = apache_avro::Schema::parse_str(text).expect("schema");
        let json = crate::avro::datum_to_json(&schema, &datum).expect("apache-avro reads it");
        assert_eq!(json["action"], "DECISION");
        assert_eq!(json["outcome"], "REVIEW");
        assert_eq!(json["details"]["source"], "in/0@7");
        assert_eq!(json["event_id"], "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11");
    }
}
