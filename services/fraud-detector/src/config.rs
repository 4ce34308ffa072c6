//! The fraud-detector's own settings (`[service]` section, `VERDICT__SERVICE__…`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
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
    /// Fault injection for tests and drills: the score stage fails (retryably) on
    /// the first N attempts of every record. 0 in production.
    pub fail_first_attempts: u32,
    /// With fault injection, fail only records of this tenant (empty: every record).
    pub fail_tenant: String,
    /// How an injected failure fails: `transient` (a retryable error) or `panic`.
    pub fail_mode: FailMode,
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
            fail_first_attempts: 0,
            fail_tenant: String::new(),
            fail_mode: FailMode::Transient,
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
        if self.velocity_max == 0 || self.velocity_window_ms == 0 {
            return bad(
                "velocity_max",
                "velocity_max and velocity_window_ms must be positive".into(),
            );
        }
        Ok(())
    }
}
