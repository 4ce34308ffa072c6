//! The fraud-detection pipeline: validate → features → score → rules → decide.
//! Each record yields a decision on `fraud-decisions`, an audit record on `audit`,
//! and, for reviews and low-confidence decisions, a copy on `review`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use verdict_runtime::audit::Audit;
use verdict_runtime::engine::{DecisionTopics, Incoming, Outgoing, Processor};
use verdict_runtime::error::ProcessError;
use verdict_runtime::metrics::{Metrics, StageTimings};
use verdict_runtime::models::{LogisticModel, ModelInput, Scored};
use verdict_runtime::now_ms;
use verdict_runtime::serde::ValueSchema;

use crate::config::{FailMode, FraudSettings};
use crate::rules::Velocity;

pub const SERVICE: &str = "fraud-detector";
const DECISION_SCHEMA: &str = include_str!("../../../schemas/fraud_decision.avsc");

/// A transaction event as the service reads it (TransactionEvent, any
/// backward-compatible version).
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub event_id: String,
    pub tenant_id: String,
    pub occurred_at: i64,
    pub account_id: String,
    pub amount: f64,
    pub currency: String,
    pub customer_age_years: Option<i64>,
    pub credit_history: Option<String>,
    pub employment_years: Option<i64>,
    pub existing_credits: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approve,
    Review,
    Decline,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approve => "APPROVE",
            Outcome::Review => "REVIEW",
            Outcome::Decline => "DECLINE",
        }
    }
}

pub struct RuleHits {
    pub over_amount_limit: bool,
    pub velocity: (usize, bool),
}

pub struct Decision {
    pub outcome: Outcome,
    pub confidence: f64,
    pub low_confidence: bool,
    pub reasons: Vec<String>,
}

pub struct FraudDetector {
    model: LogisticModel,
    velocity: Velocity,
    settings: FraudSettings,
    metrics: Arc<Metrics>,
    review_schema: ValueSchema,
    topics: DecisionTopics,
    seen: AtomicU64,
}

/// Validate: the event must describe a transaction we can score.
pub fn validate(value: &Json) -> Result<Transaction, ProcessError> {
    let tx = Transaction::deserialize(value)
        .map_err(|e| ProcessError::invalid("(record)", format!("not a TransactionEvent: {e}")))?;
    if uuid::Uuid::parse_str(&tx.event_id).is_err() {
        return Err(ProcessError::invalid("event_id", "must be a UUID"));
    }
    if tx.tenant_id.trim().is_empty() {
        return Err(ProcessError::invalid("tenant_id", "must not be empty"));
    }
    if tx.account_id.trim().is_empty() {
        return Err(ProcessError::invalid("account_id", "must not be empty"));
    }
    if !(tx.amount.is_finite() && tx.amount > 0.0 && tx.amount < 1e9) {
        return Err(ProcessError::invalid(
            "amount",
            format!("{} is not a positive amount below 1e9", tx.amount),
        ));
    }
    if tx.currency.len() != 3 || !tx.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ProcessError::invalid(
            "currency",
            format!("`{}` is not an ISO 4217 code", tx.currency),
        ));
    }
    if tx
        .customer_age_years
        .is_some_and(|a| !(14..=120).contains(&a))
    {
        return Err(ProcessError::invalid(
            "customer_age_years",
            "must be between 14 and 120",
        ));
    }
    if tx.employment_years.is_some_and(|y| !(0..=80).contains(&y))
        || tx.existing_credits.is_some_and(|c| !(0..=100).contains(&c))
    {
        return Err(ProcessError::invalid(
            "employment_years",
            "employment_years (0-80) or existing_credits (0-100) out of range",
        ));
    }
    Ok(tx)
}

/// Features: the documented mapping of transaction fields onto the model's inputs
/// (models/README.md). Values outside the training range are clamped to it.
pub fn features(tx: &Transaction) -> ModelInput {
    let mut input = ModelInput::default();
    input.numeric.insert("amount".into(), Some(tx.amount));
    input.numeric.insert(
        "customer_age_years".into(),
        tx.customer_age_years.map(|v| v as f64),
    );
    // The model saw employment tenure in buckets of 0 / 0.5 / 2.5 / 5.5 / 10 years.
    input.numeric.insert(
        "employment_years".into(),
        tx.employment_years.map(|v| (v as f64).min(10.0)),
    );
    input.numeric.insert(
        "existing_credits".into(),
        tx.existing_credits.map(|v| v as f64),
    );
    input
        .categorical
        .insert("credit_history".into(), tx.credit_history.clone());
    input
}

impl FraudDetector {
    pub fn new(
        model: LogisticModel,
        settings: FraudSettings,
        metrics: Arc<Metrics>,
        topics: DecisionTopics,
    ) -> Self {
        Self {
            topics,
            velocity: Velocity::new(settings.velocity_window_ms, settings.velocity_max),
            model,
            settings,
            metrics,
            review_schema: ValueSchema::TopicRecord {
                fullname: "dev.verdict.v1.FraudDecision".into(),
                schema: DECISION_SCHEMA.into(),
            },
            seen: AtomicU64::new(0),
        }
    }

    /// Score: the model's probability that this is a bad risk.
    fn score(
        &self,
        input: &Incoming,
        tx: &Transaction,
        features: &ModelInput,
    ) -> Result<Scored, ProcessError> {
        let injected =
            self.settings.fail_tenant.is_empty() || self.settings.fail_tenant == tx.tenant_id;
        if injected && input.attempt <= self.settings.fail_first_attempts {
            let why = format!(
                "injected failure on attempt {} (service.fail_first_attempts)",
                input.attempt
            );
            if self.settings.fail_mode == FailMode::Panic {
                panic!("{why}");
            }
            return Err(ProcessError::transient("score", why));
        }
        Ok(self.model.score(features))
    }

    /// Rules: amount limit and per-account velocity.
    fn rules(&self, tx: &Transaction) -> RuleHits {
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(10_000)
        {
            self.velocity.evict_idle(tx.occurred_at);
        }
        RuleHits {
            over_amount_limit: tx.amount > self.settings.amount_limit,
            velocity: self
                .velocity
                .observe(&tx.account_id, &tx.event_id, tx.occurred_at),
        }
    }

    /// Decide: rules first, then the score against the thresholds.
    pub fn decide(&self, tx: &Transaction, scored: &Scored, hits: &RuleHits) -> Decision {
        let s = &self.settings;
        let p = scored.probability;
        let mut reasons = Vec::new();
        if hits.over_amount_limit {
            reasons.push(format!(
                "rule: amount {:.2} {} is above the limit {:.2}",
                tx.amount, tx.currency, s.amount_limit
            ));
        }
        if hits.velocity.1 {
            reasons.push(format!(
                "rule: {} transactions of this account within {} ms (limit {})",
                hits.velocity.0, s.velocity_window_ms, s.velocity_max
            ));
        }
        let mut drivers: Vec<&(String, f64)> = scored
            .contributions
            .iter()
            .filter(|(_, c)| *c > 0.0)
            .collect();
        drivers.sort_by(|a, b| b.1.total_cmp(&a.1));
        reasons.extend(
            drivers
                .iter()
                .take(3)
                .map(|(f, c)| format!("model: {f} raises the risk (+{c:.3} log-odds)")),
        );

        let outcome = if hits.over_amount_limit || p >= s.decline_threshold {
            Outcome::Decline
        } else if p >= s.review_threshold || hits.velocity.1 {
            Outcome::Review
        } else {
            Outcome::Approve
        };
        let margin = (p - s.review_threshold)
            .abs()
            .min((p - s.decline_threshold).abs());
        let by_rule = hits.over_amount_limit;
        Decision {
            outcome,
            confidence: if by_rule {
                1.0
            } else {
                (margin / 0.5).min(1.0)
            },
            low_confidence: !by_rule && margin < s.low_confidence_margin,
            reasons,
        }
    }
}

impl Processor for FraudDetector {
    async fn process(&self, input: &Incoming) -> Result<Vec<Outgoing>, ProcessError> {
        let started = Instant::now();
        let mut t = StageTimings::new(&self.metrics);
        let tx = t.stage("validate", || validate(&input.value))?;
        let features = t.stage("features", || features(&tx));
        let scored = t.stage("score", || self.score(input, &tx, &features))?;
        let hits = t.stage("rules", || self.rules(&tx));
        let decision = t.stage("decide", || self.decide(&tx, &scored, &hits));

        let decided_at = now_ms();
        let decision_json = json!({
            "event_id": tx.event_id,
            "tenant_id": tx.tenant_id,
            "decided_at": decided_at,
            "account_id": tx.account_id,
            "outcome": decision.outcome.as_str(),
            "score": scored.probability,
            "confidence": decision.confidence,
            "reasons": decision.reasons,
            "model": { "name": self.model.name, "version": self.model.version, "provider": "in-process", "prompt_version": null },
            "stage_timings": t.to_json(),
            "degraded": false,
            "cached": false,
        });
        let audit = Audit::decision(
            SERVICE,
            &tx.event_id,
            &tx.tenant_id,
            input.value.to_string().as_bytes(),
        )
        .outcome(decision.outcome.as_str())
        .model(&self.model.name, &self.model.version)
        .latency_since(started)
        .detail("score", format!("{:.6}", scored.probability))
        .detail("model_sha256", &self.model.sha256)
        .detail(
            "source",
            format!("{}/{}@{}", input.topic, input.partition, input.offset),
        )
        .detail("attempt", input.attempt);
        let review = (decision.outcome == Outcome::Review || decision.low_confidence)
            .then_some(&self.review_schema);
        let outputs = self
            .topics
            .outputs(&tx.account_id, &decision_json, &audit, review);
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> FraudDetector {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let model = LogisticModel::load(&repo.join("models/fraud/model.json")).expect("model");
        let route = verdict_runtime::engine::Route {
            service: SERVICE.into(),
            group: "g".into(),
            input: "in".into(),
            retry: vec![],
            dead_letter_topic: "in.dlq".into(),
            outputs: [("decisions", "d"), ("audit", "a"), ("review", "r")]
                .into_iter()
                .map(|(role, topic)| (role.to_string(), topic.to_string()))
                .collect(),
        };
        let topics = DecisionTopics::from_route(&route).expect("topics");
        FraudDetector::new(
            model,
            FraudSettings::default(),
            Metrics::new("test"),
            topics,
        )
    }

    fn tx(amount: f64, history: &str) -> Json {
        json!({"event_id": "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11", "tenant_id": "t", "occurred_at": 1, "account_id": "a",
               "amount": amount, "currency": "EUR", "customer_age_years": 30, "credit_history": history,
               "employment_years": 1, "existing_credits": 1})
    }

    #[test]
    fn validation_names_the_field() {
        for (value, field) in [
            (json!({"event_id": "x"}), "(record)"),
            (tx(-5.0, "all_paid"), "amount"),
            (
                {
                    let mut v = tx(5.0, "all_paid");
                    v["event_id"] = json!("nope");
                    v
                },
                "event_id",
            ),
            (
                {
                    let mut v = tx(5.0, "all_paid");
                    v["currency"] = json!("euro");
                    v
                },
                "currency",
            ),
        ] {
            match validate(&value) {
                Err(ProcessError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn amount_limit_declines_and_risky_history_scores_higher() {
        let d = detector();
        let safe = validate(&tx(100.0, "critical_account")).expect("valid");
        let risky = validate(&tx(100.0, "no_credits")).expect("valid");
        let p_safe = d.model.score(&features(&safe)).probability;
        let p_risky = d.model.score(&features(&risky)).probability;
        assert!(p_risky > p_safe, "{p_risky} > {p_safe}");

        let big = validate(&tx(50_000.0, "critical_account")).expect("valid");
        let scored = d.model.score(&features(&big));
        let hits = d.rules(&big);
        let decision = d.decide(&big, &scored, &hits);
        assert_eq!(decision.outcome, Outcome::Decline);
        assert!(
            decision.reasons[0].starts_with("rule: amount"),
            "{:?}",
            decision.reasons
        );
        assert_eq!(decision.confidence, 1.0);
    }
}
