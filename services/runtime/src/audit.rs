//! Audit records (`schemas/audit_event.avsc`): who or what decided, when, on which model, at
//! what cost, with a SHA-256 of the input instead of the input itself. One builder for every
//! service, and the outputs of a decision: the decision, its audit record, and a copy for
//! review when it needs a person.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value as Json, json};

use crate::avro::untyped;
use crate::engine::{DecisionTopics, Outgoing};
use crate::models::sha256_hex;
use crate::now_ms;
use crate::serde::ValueSchema;

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
    details: BTreeMap<String, String>,
    /// Who acted, when not this process (a person resolving a review).
    actor: Option<String>,
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

    pub fn detail(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_string(), value.to_string());
        self
    }

    /// The record, stamped now, by this process.
    pub fn to_json(&self) -> Json {
        let (model_name, model_version) = self
            .model
            .as_ref()
            .map_or((None, None), |(n, v)| (Some(n), Some(v)));
        json!({
            "audit_id": uuid::Uuid::new_v4().to_string(),
            "event_id": self.event_id,
            "tenant_id": self.tenant_id,
            "occurred_at": now_ms(),
            "service": self.service,
            "action": self.action,
            "actor": self
                .actor
                .clone()
                .unwrap_or_else(|| format!("{}/{}", self.service, std::process::id())),
            "input_sha256": self.input_sha256,
            "outcome": self.outcome,
            "model_name": model_name,
            "model_version": model_version,
            "latency_micros": self.latency_micros,
            "token_usage": self.token_usage,
            "cost_usd": self.cost_usd,
            "details": self.details,
        })
    }
}

impl DecisionTopics {
    /// A decision's outputs, keyed by `key`: the decision, its audit record, and, when it
    /// needs a person, the decision again on the review topic (under `review_schema`, since
    /// that topic carries several record types).
    pub fn outputs(
        &self,
        key: &str,
        decision: &Json,
        audit: &Audit,
        review: Option<&ValueSchema>,
    ) -> Vec<Outgoing> {
        let key = Some(key.to_string());
        let mut out = vec![
            Outgoing {
                topic: self.decisions.clone(),
                key: key.clone(),
                value: untyped(decision),
                schema: ValueSchema::TopicLatest,
            },
            Outgoing {
                topic: self.audit.clone(),
                key: key.clone(),
                value: untyped(&audit.to_json()),
                schema: ValueSchema::TopicLatest,
            },
        ];
        if let Some(schema) = review {
            out.push(Outgoing {
                topic: self.review.clone(),
                key,
                value: untyped(decision),
                schema: schema.clone(),
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
        untyped(&a).resolve(&schema).expect("fits audit_event.avsc");
    }
}
