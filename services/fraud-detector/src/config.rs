//! The fraud-detector's own settings (`[service]` section, `VERDICT__SERVICE__…`).

use std::path::PathBuf;
use verdict_runtime::inference::budget::BudgetSettings;

use serde::{Deserialize, Serialize};
use verdict_runtime::inference::resilience::ProviderSettings;
use verdict_runtime::settings::{SettingsError, Validate};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FraudSettings {
    /// The exported model (see models/README.md).
    pub model_file: PathBuf,
    /// Score at or above which a transaction is declined.
    pub decline_threshold: f64,
    /// Score at or above which a transaction goes to review.
    pub review_threshold: f64,
    /// Decisions whose score lies this close to a threshold also go to `review`.
    pub low_confidence_margin: f64,
    /// Amounts above this are declined whatever the score (major currency units).
    pub amount_limit: f64,
    /// Per-account velocity: more than `velocity_max` transactions within
    /// `velocity_window_ms` sends the transaction to review.
    pub velocity_window_ms: u64,
    pub velocity_max: usize,
    /// How far a transaction's `occurred_at` may lie from its record's Kafka timestamp
    /// before velocity counts it at the nearest allowed time (the decision says so). Keep it
    /// well under the window: a client can move its transactions by this much.
    pub velocity_max_skew_ms: u64,
    /// Fault injection for tests and drills: the score stage fails (retryably) on
    /// the first N attempts of every record. 0 in production.
    pub fail_first_attempts: u32,
    /// With fault injection, fail only records of this tenant (empty: every record).
    pub fail_tenant: String,
    /// How an injected failure fails: `transient` (a retryable error) or `panic`.
    pub fail_mode: FailMode,
    /// Score with the model served over HTTP (KServe v2 / Open Inference Protocol: the
    /// model-server, MLServer, KServe) instead of in-process; the in-process model answers,
    /// marked `degraded`, when the server does not.
    pub remote_model: Option<RemoteModel>,
    /// Score with an ONNX model in-process (tract) instead of `model_file`'s evaluator, which
    /// still reads the features and explains the score. The model's input is the raw row of
    /// models/fraud/features.py (9 columns, NaN = missing); the last column of `output` is the
    /// probability of a bad risk.
    pub onnx_model: Option<OnnxModelSettings>,
    /// Spend caps per tenant over a window, on the deciding model's cost (`[pricing]`): past
    /// the hard cap the in-process evaluator decides instead of the ONNX or served model
    /// (`fallback`), or the record is refused.
    pub budgets: BudgetSettings,
}

/// An ONNX scoring model (`[service.onnx_model]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnnxModelSettings {
    /// The model file, e.g. `models/fraud/model.onnx` (models/fraud/export_onnx.py).
    pub file: PathBuf,
    /// The output with a row per input; its last column is the probability of a bad risk.
    #[serde(default = "default_onnx_output")]
    pub output: String,
}

fn default_onnx_output() -> String {
    "probabilities".into()
}

/// A scoring model behind KServe v2 (`[service.remote_model]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteModel {
    /// Base URL, e.g. `http://127.0.0.1:9470`.
    pub url: String,
    /// The served model's name (`/v2/models/{name}/infer`).
    #[serde(default = "default_remote_name")]
    pub name: String,
    /// The output tensor with `[p_good, p_bad]` per row.
    #[serde(default = "default_remote_output")]
    pub output: String,
    /// Timeout, retries, circuit breaker and concurrency of the calls.
    #[serde(default)]
    pub provider: ProviderSettings,
    /// More base URLs serving the same model: with any, calls are balanced across them and
    /// `url` by least outstanding requests, each behind its own breaker and limits.
    #[serde(default)]
    pub replicas: Vec<String>,
}

impl RemoteModel {
    /// The model at `url` under its default name and output (`fraud`, `predict_proba`, as
    /// the model-server and MLServer serve it).
    pub fn at(url: impl Into<String>, provider: ProviderSettings) -> Self {
        Self {
            url: url.into(),
            name: default_remote_name(),
            output: default_remote_output(),
            provider,
            replicas: Vec::new(),
        }
    }
}

fn default_remote_name() -> String {
    "fraud".into()
}

fn default_remote_output() -> String {
    "predict_proba".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Transient,
    Panic,
}

impl Default for FraudSettings {
    fn default() -> Self {
        Self {
            model_file: PathBuf::from("models/fraud/model.json"),
            decline_threshold: 0.6,
            review_threshold: 0.4,
            low_confidence_margin: 0.02,
            amount_limit: 10_000.0,
            velocity_window_ms: 60_000,
            velocity_max: 5,
            velocity_max_skew_ms: 30_000,
            fail_first_attempts: 0,
            fail_tenant: String::new(),
            fail_mode: FailMode::Transient,
            remote_model: None,
            onnx_model: None,
            budgets: BudgetSettings::default(),
        }
    }
}

impl Validate for FraudSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, message: String| {
            Err(SettingsError::Key {
                key: format!("service.{key}"),
                message,
            })
        };
        if let Err((key, message)) = self.budgets.check() {
            return bad(&format!("budgets.{key}"), message);
        }
        if !self.model_file.is_file() {
            return bad(
                "model_file",
                format!("{} does not exist", self.model_file.display()),
            );
        }
        if !(0.0..=1.0).contains(&self.review_threshold)
            || !(0.0..=1.0).contains(&self.decline_threshold)
        {
            return bad("decline_threshold", "thresholds must lie in [0, 1]".into());
        }
        if self.review_threshold > self.decline_threshold {
            return bad(
                "review_threshold",
                "must not exceed service.decline_threshold".into(),
            );
        }
        if !(self.amount_limit.is_finite() && self.amount_limit > 0.0) {
            return bad("amount_limit", "must be a positive number".into());
        }
        if let Some(remote) = &self.remote_model {
            let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
            if !http(&remote.url) {
                return bad("remote_model.url", "must be an http(s) URL".into());
            }
            if let Some(i) = remote.replicas.iter().position(|u| !http(u)) {
                return bad(
                    &format!("remote_model.replicas[{i}]"),
                    "must be an http(s) URL".into(),
                );
            }
        }
        if let Some(onnx) = &self.onnx_model {
            if self.remote_model.is_some() {
                return bad(
                    "onnx_model",
                    "score with either remote_model or onnx_model, not both".into(),
                );
            }
            if !onnx.file.is_file() {
                return bad(
                    "onnx_model.file",
                    format!("{} does not exist", onnx.file.display()),
                );
            }
        }
        if self.velocity_max == 0 || self.velocity_window_ms == 0 {
            return bad(
                "velocity_max",
                "velocity_max and velocity_window_ms must be positive".into(),
            );
        }
        Ok(())
    }
}
