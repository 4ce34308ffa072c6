//! The fraud-detection pipeline: validate → features → rules → score → decide.
//! Rules run before the model: the velocity rule counts a transaction on its first attempt
//! (state lives with the input partition), whatever fails after it.
//! Each record yields a decision on `fraud-decisions`, an audit record on `audit`,
//! and, for reviews and low-confidence decisions, a copy on `review`.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use verdict_runtime::audit::{Audit, DecisionOutput};
use verdict_runtime::engine::{
    DecisionTopics, Incoming, Outgoing, Processor, RecordState, Route, Store,
};
use verdict_runtime::error::ProcessError;
use verdict_runtime::inference::budget::{self, Ledger};
use verdict_runtime::inference::onnx::OnnxModel;
use verdict_runtime::inference::pricing::{PriceTable, Usage};
use verdict_runtime::inference::{InferenceError, Provider as _};
use verdict_runtime::metrics::{Metrics, StageTiming, StageTimings};
use verdict_runtime::models::{LogisticModel, ModelInput, Scored};
use verdict_runtime::now_ms;
use verdict_runtime::serde::ValueSchema;
use verdict_runtime::telemetry;

use crate::config::{FailMode, FraudSettings};
use crate::remote::RemoteScorer;
use crate::rules::{AccountWindow, Velocity, VelocityHit};

pub const SERVICE: &str = "fraud-detector";
const DECISION_SCHEMA: &str = include_str!("../../../schemas/fraud_decision.avsc");

/// A transaction event as the service reads it (TransactionEvent, any
/// backward-compatible version).
#[derive(Debug, Default, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
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
    pub velocity: VelocityHit,
}

pub struct Decision {
    pub outcome: Outcome,
    pub confidence: f64,
    pub low_confidence: bool,
    pub reasons: Vec<String>,
}

/// A `FraudDecision` (schemas/fraud_decision.avsc), fields in the schema's order.
#[derive(Debug, Clone, Serialize)]
pub struct FraudDecision {
    pub event_id: String,
    pub tenant_id: String,
    pub decided_at: i64,
    pub account_id: String,
    pub outcome: Outcome,
    pub score: f64,
    pub confidence: f64,
    pub reasons: Vec<String>,
    pub model: Arc<ModelInfo>,
    pub stage_timings: Vec<StageTiming>,
    pub degraded: bool,
    pub cached: bool,
}

/// `ModelInfo`: the model that decided (the same for every decision of this process).
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub provider: &'static str,
    pub prompt_version: Option<String>,
}

pub struct FraudDetector {
    model: LogisticModel,
    model_info: Arc<ModelInfo>,
    /// The served model, when scores come from it (`service.remote_model`).
    remote: Option<(RemoteScorer, Arc<ModelInfo>)>,
    /// The ONNX model, when scores come from it in-process (`service.onnx_model`).
    onnx: Option<(OnnxModel, Arc<ModelInfo>)>,
    velocity: Velocity,
    settings: FraudSettings,
    metrics: Arc<Metrics>,
    pricing: PriceTable,
    /// Tenants' spend against their caps (`service.budgets`); `None`: no caps.
    ledger: Option<Ledger>,
    topics: DecisionTopics,
}

/// The review topic's subject for fraud decisions (`review-dev.verdict.v1.FraudDecision`).
pub fn review_schema() -> ValueSchema {
    ValueSchema::TopicRecord {
        fullname: "dev.verdict.v1.FraudDecision".into(),
        schema: DECISION_SCHEMA.into(),
    }
}

/// Validate: the event must describe a transaction we can score (it is taken out of the
/// record).
pub fn validate(input: &mut Incoming<'_, Transaction>) -> Result<Transaction, ProcessError> {
    check(std::mem::take(&mut input.value), verdict_runtime::now_ms())
}

/// How far ahead of this service's clock an event may say it happened (clocks drift; an
/// event far ahead would keep its account in the velocity window until then).
const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1000;
/// The schema's `maxLength` of the ids the service keeps in memory (tenant and account):
/// records from any client reach it, not only those the gateway checked.
const MAX_TENANT_CHARS: usize = 64;
const MAX_ACCOUNT_CHARS: usize = 128;

/// The checks of [`validate`], field by field, at `now_ms`.
pub fn check(tx: Transaction, now_ms: i64) -> Result<Transaction, ProcessError> {
    if uuid::Uuid::parse_str(&tx.event_id).is_err() {
        return Err(ProcessError::invalid("event_id", "must be a UUID"));
    }
    if tx.tenant_id.trim().is_empty() {
        return Err(ProcessError::invalid("tenant_id", "must not be empty"));
    }
    if tx.account_id.trim().is_empty() {
        return Err(ProcessError::invalid("account_id", "must not be empty"));
    }
    for (field, value, max) in [
        ("tenant_id", &tx.tenant_id, MAX_TENANT_CHARS),
        ("account_id", &tx.account_id, MAX_ACCOUNT_CHARS),
    ] {
        if value.chars().count() > max {
            return Err(ProcessError::invalid(
                field,
                format!("longer than {max} characters"),
            ));
        }
    }
    if tx.occurred_at > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(ProcessError::invalid(
            "occurred_at",
            format!(
                "{} is more than 5 minutes ahead of this service's clock ({now_ms})",
                tx.occurred_at
            ),
        ));
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

/// The model's inputs of one transaction, by the model's field names.
pub struct Features<'t> {
    numeric: [(&'static str, Option<f64>); 4],
    credit_history: Option<&'t str>,
}

/// Features: the documented mapping of transaction fields onto the model's inputs
/// (models/README.md). Values outside the training range are clamped to it.
pub fn features(tx: &Transaction) -> Features<'_> {
    Features {
        numeric: [
            ("amount", Some(tx.amount)),
            (
                "customer_age_years",
                tx.customer_age_years.map(|v| v as f64),
            ),
            // The model saw employment tenure in buckets of 0 / 0.5 / 2.5 / 5.5 / 10 years.
            (
                "employment_years",
                tx.employment_years.map(|v| (v as f64).min(10.0)),
            ),
            ("existing_credits", tx.existing_credits.map(|v| v as f64)),
        ],
        credit_history: tx.credit_history.as_deref(),
    }
}

impl Features<'_> {
    pub fn numeric(&self, field: &str) -> Option<f64> {
        self.numeric
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, v)| *v)
    }

    pub fn categorical(&self, field: &str) -> Option<&str> {
        (field == "credit_history").then_some(self.credit_history)?
    }

    /// The same inputs as a [`ModelInput`] (what the model server's clients send).
    pub fn to_input(&self) -> ModelInput {
        let mut input = ModelInput::default();
        for (field, v) in self.numeric {
            input.numeric.insert(field.into(), v);
        }
        input.categorical.insert(
            "credit_history".into(),
            self.credit_history.map(String::from),
        );
        input
    }
}

/// The probability of a bad risk from an ONNX model: its output row's last column.
fn p_bad(onnx: &OnnxModel, row: Vec<f64>) -> Result<f64, InferenceError> {
    onnx.score_rows(&[row])?
        .first()
        .and_then(|out| out.last().copied())
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| {
            InferenceError::Protocol("the output's last column is not a probability".into())
        })
}

/// The ONNX model at `file`, checked once on the training medians: it takes the evaluator's
/// raw row and answers a probability.
fn load_onnx(
    file: &std::path::Path,
    output: &str,
    model: &LogisticModel,
) -> Result<OnnxModel, String> {
    let onnx = OnnxModel::load(file, output).map_err(|e| e.to_string())?;
    let probe = model.raw_row(&ModelInput::default());
    if onnx.width() != probe.len() {
        return Err(format!(
            "the model takes rows of {} values; the fraud features are {} (models/fraud/features.py)",
            onnx.width(),
            probe.len()
        ));
    }
    p_bad(&onnx, probe).map_err(|e| format!("scoring a row of medians: {e}"))?;
    Ok(onnx)
}

impl FraudDetector {
    /// Costs the detector's model calls by `pricing` (`[pricing]`).
    pub fn priced(self, pricing: PriceTable) -> Self {
        Self { pricing, ..self }
    }

    /// Holds tenants to their spend caps (`service.budgets`) kept in `ledger`.
    pub fn budgeted(self, ledger: Option<Ledger>) -> Self {
        Self { ledger, ..self }
    }

    /// The detector of `route`'s outputs and `velocity` store.
    pub fn new(
        model: LogisticModel,
        settings: FraudSettings,
        metrics: Arc<Metrics>,
        route: &Route,
    ) -> Result<Self, String> {
        let topics = DecisionTopics::from_route(route, review_schema())?;
        let store: Store<AccountWindow> = route.store(crate::rules::STORE)?;
        let remote = match &settings.remote_model {
            Some(r) => {
                let scorer = RemoteScorer::new(r, &model, metrics.clone())
                    .map_err(|e| format!("service.remote_model: {e}"))?;
                let info = Arc::new(ModelInfo {
                    name: scorer.model.name.clone(),
                    version: scorer.model.version.clone(),
                    provider: "kserve-v2",
                    prompt_version: None,
                });
                Some((scorer, info))
            }
            None => None,
        };
        let onnx = match &settings.onnx_model {
            Some(o) => {
                let onnx = load_onnx(&o.file, &o.output, &model)
                    .map_err(|e| format!("service.onnx_model.file: {e}"))?;
                let id = onnx.model().clone();
                let info = Arc::new(ModelInfo {
                    name: id.name,
                    version: id.version,
                    provider: "onnx",
                    prompt_version: None,
                });
                Some((onnx, info))
            }
            None => None,
        };
        Ok(Self {
            remote,
            onnx,
            topics,
            velocity: Velocity::new(
                store,
                settings.velocity_window_ms,
                settings.velocity_max,
                settings.velocity_max_skew_ms,
            ),
            model_info: Arc::new(ModelInfo {
                name: model.name.clone(),
                version: model.version.clone(),
                provider: "in-process",
                prompt_version: None,
            }),
            model,
            settings,
            metrics,
            pricing: PriceTable::default(),
            ledger: None,
        })
    }

    /// Score: the model's probability that this is a bad risk.
    fn score(
        &self,
        attempt: u32,
        tx: &Transaction,
        features: &Features<'_>,
    ) -> Result<Scored<'_>, ProcessError> {
        let injected =
            self.settings.fail_tenant.is_empty() || self.settings.fail_tenant == tx.tenant_id;
        if injected && attempt <= self.settings.fail_first_attempts {
            let why =
                format!("injected failure on attempt {attempt} (service.fail_first_attempts)");
            if self.settings.fail_mode == FailMode::Panic {
                panic!("{why}");
            }
            return Err(ProcessError::transient("score", why));
        }
        Ok(self
            .model
            .score_with(|f| features.numeric(f), |f| features.categorical(f)))
    }

    /// Rules: amount limit and per-account velocity (on the record's state).
    fn rules(&self, tx: &Transaction, state: &RecordState<'_>) -> Result<RuleHits, ProcessError> {
        Ok(RuleHits {
            over_amount_limit: tx.amount > self.settings.amount_limit,
            velocity: self.velocity.observe(
                state,
                &tx.tenant_id,
                &tx.account_id,
                tx.occurred_at,
            )?,
        })
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
        if hits.velocity.over {
            reasons.push(format!(
                "rule: {} transactions of this account within {} ms (limit {})",
                hits.velocity.count, s.velocity_window_ms, s.velocity_max
            ));
        }
        reasons.extend(hits.velocity.notes.iter().cloned());
        let mut drivers: Vec<&(&str, f64)> = scored
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
        } else if p >= s.review_threshold || hits.velocity.over {
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
    type Input = Transaction;
    type Output = DecisionOutput<FraudDecision>;

    fn outputs(&self) -> Vec<verdict_runtime::engine::OutputTopic> {
        self.topics.all()
    }

    async fn process(
        &self,
        mut input: Incoming<'_, Transaction>,
    ) -> Result<Vec<Outgoing<Self::Output>>, ProcessError> {
        let started = Instant::now();
        let mut t = StageTimings::new(&self.metrics);
        telemetry::record_event_id(&input.value.event_id);
        let tx = t.try_stage("validate", || validate(&mut input))?;
        let features = t.stage("features", || features(&tx));
        let hits = t.try_stage("rules", || self.rules(&tx, input.state))?;
        let mut scored = t.try_stage("score", || self.score(input.attempt, &tx, &features))?;
        // The model that decided is the one charged: the evaluator, the ONNX model or the
        // served one (the evaluator only explains the other two).
        let mut usage = Usage::call().cpu(t.last_stage());
        let mut model = &self.model_info;
        let mut model_sha256 = &self.model.sha256;
        let mut degraded = false;
        // Past its hard spend cap a tenant is refused, or scored by the in-process evaluator
        // only: no ONNX run, no served-model call.
        let at = input.timestamp_ms.unwrap_or_else(now_ms);
        let budget = budget::admit(self.ledger.as_ref(), &tx.tenant_id, at)?;
        let over_budget = budget.over_budget;
        if let Some((onnx, info)) = self.onnx.as_ref().filter(|_| !over_budget) {
            let row = self.model.raw_row(&features.to_input());
            scored.probability = t
                .try_stage("onnx_score", || p_bad(onnx, row))
                .map_err(|e| ProcessError::inference("onnx_score", &e))?;
            usage = Usage::call().cpu(t.last_stage());
            model = info;
            model_sha256 = &onnx.sha256;
        }
        if let Some((remote, served)) = self.remote.as_ref().filter(|_| !over_budget) {
            // The served model's probability; the in-process one still explains it.
            let row = self.model.raw_row(&features.to_input());
            let answer = t
                .try_stage_async("remote_score", remote.score(row))
                .await
                .map_err(|e| ProcessError::inference("remote_score", &e))?;
            scored.probability = answer.probability;
            degraded = answer.degraded;
            if !degraded {
                model = served;
                usage = Usage::call();
            }
        }
        let cost = self
            .pricing
            .charge(&self.metrics, &tx.tenant_id, &model.name, usage);
        if let (Some(ledger), Some(cost)) = (&self.ledger, cost) {
            ledger.charge(input.state, &tx.tenant_id, at, cost)?;
        }
        let mut decision = t.stage("decide", || self.decide(&tx, &scored, &hits));
        if degraded {
            decision.reasons.push(
                "degraded: the served model did not answer; the in-process model scored".into(),
            );
        }
        let cheaper = self.onnx.is_some() || self.remote.is_some();
        if over_budget && cheaper {
            degraded = true;
            decision.reasons.push(format!(
                "degraded: budget ({}); the in-process model scored",
                budget.note.as_deref().unwrap_or("past the hard limit")
            ));
        }

        let review = decision.outcome == Outcome::Review || decision.low_confidence;
        let audit = Audit::decision(SERVICE, &tx.event_id, &tx.tenant_id, input.raw)
            .outcome(decision.outcome.as_str())
            .model(&model.name, &model.version)
            .latency_since(started)
            .usage(None, cost)
            .detail("score", format!("{:.6}", scored.probability))
            .detail("model_sha256", model_sha256)
            .detail(
                "source",
                format!("{}/{}@{}", input.topic, input.partition, input.offset),
            )
            .detail("attempt", input.attempt);
        let audit = match budget.detail() {
            Some(d) => audit.detail("budget", d),
            None => audit,
        };
        let key = tx.account_id.clone();
        let decision = FraudDecision {
            event_id: tx.event_id,
            tenant_id: tx.tenant_id,
            decided_at: now_ms(),
            account_id: tx.account_id,
            outcome: decision.outcome,
            score: scored.probability,
            confidence: decision.confidence,
            reasons: decision.reasons,
            model: model.clone(),
            stage_timings: t.stages,
            degraded,
            cached: false,
        };
        Ok(self.topics.outputs(&key, decision, audit, review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

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
            stores: verdict_runtime::engine::Stores::declared(
                [(
                    crate::rules::STORE.to_string(),
                    "g-velocity-changelog".to_string(),
                )]
                .into(),
            ),
        };
        let d = FraudDetector::new(
            model,
            FraudSettings::default(),
            Metrics::new("test"),
            &route,
        )
        .expect("detector");
        d.velocity.store().open_empty(0);
        d
    }

    fn tx(amount: f64, history: &str) -> Json {
        json!({"event_id": "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11", "tenant_id": "t", "occurred_at": 1, "account_id": "a",
               "amount": amount, "currency": "EUR", "customer_age_years": 30, "credit_history": history,
               "employment_years": 1, "existing_credits": 1})
    }

    fn valid(value: Json) -> Result<Transaction, ProcessError> {
        check(
            serde_json::from_value(value).expect("a TransactionEvent"),
            1_000,
        )
    }

    #[test]
    fn the_id_bounds_are_the_schemas() {
        let schema: Json =
            serde_json::from_str(include_str!("../../../schemas/transaction_event.avsc"))
                .expect("schema");
        let bound = |name: &str| {
            schema["fields"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["name"] == name))
                .and_then(|f| f["maxLength"].as_u64())
        };
        assert_eq!(bound("tenant_id"), Some(MAX_TENANT_CHARS as u64));
        assert_eq!(bound("account_id"), Some(MAX_ACCOUNT_CHARS as u64));
    }

    #[test]
    fn validation_names_the_field() {
        for (value, field) in [
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
            (
                {
                    let mut v = tx(5.0, "all_paid");
                    v["account_id"] = json!("a".repeat(129));
                    v
                },
                "account_id",
            ),
            (
                {
                    let mut v = tx(5.0, "all_paid");
                    v["occurred_at"] = json!(1_000 + 5 * 60 * 1000 + 1);
                    v
                },
                "occurred_at",
            ),
        ] {
            match valid(value) {
                Err(ProcessError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn amount_limit_declines_and_risky_history_scores_higher() {
        let d = detector();
        let score = |tx: &Transaction| d.score(1, tx, &features(tx)).expect("scores").probability;
        let safe = valid(tx(100.0, "critical_account")).expect("valid");
        let risky = valid(tx(100.0, "no_credits")).expect("valid");
        let (p_safe, p_risky) = (score(&safe), score(&risky));
        assert!(p_risky > p_safe, "{p_risky} > {p_safe}");
        assert_eq!(
            p_safe,
            d.model.score(&features(&safe).to_input()).probability,
            "the same as the model on a ModelInput"
        );

        let big = valid(tx(50_000.0, "critical_account")).expect("valid");
        let scored = d.score(1, &big, &features(&big)).expect("scores");
        let hits = d
            .rules(&big, &RecordState::detached(0, 0, None))
            .expect("rules");
        let decision = d.decide(&big, &scored, &hits);
        assert_eq!(decision.outcome, Outcome::Decline);
        assert!(
            decision.reasons[0].starts_with("rule: amount"),
            "{:?}",
            decision.reasons
        );
        assert_eq!(decision.confidence, 1.0);
    }

    #[test]
    fn a_decision_encodes_with_its_schema() {
        let d = detector();
        let decision = FraudDecision {
            event_id: "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11".into(),
            tenant_id: "t".into(),
            decided_at: 7,
            account_id: "a".into(),
            outcome: Outcome::Review,
            score: 0.5,
            confidence: 0.1,
            reasons: vec!["rule: x".into()],
            model: d.model_info.clone(),
            stage_timings: vec![StageTiming {
                stage: "score",
                micros: 3,
            }],
            degraded: false,
            cached: false,
        };
        let fast: serde_avro_fast::Schema = DECISION_SCHEMA.parse().expect("schema");
        let datum = serde_avro_fast::to_datum(
            &DecisionOutput::<FraudDecision>::Decision(decision),
            Vec::new(),
            &mut serde_avro_fast::ser::SerializerConfig::new(&fast),
        )
        .expect("encodes");
        let schema = apache_avro::Schema::parse_str(DECISION_SCHEMA).expect("schema");
        let json =
            verdict_runtime::avro::datum_to_json(&schema, &datum).expect("apache-avro reads it");
        assert_eq!(json["outcome"], "REVIEW");
        assert_eq!(json["model"]["provider"], "in-process");
        assert_eq!(json["stage_timings"][0]["stage"], "score");
        assert_eq!(json["reasons"][0], "rule: x");
    }
}
