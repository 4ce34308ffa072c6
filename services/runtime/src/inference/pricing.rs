//! What inference costs: a price per model (`[pricing."<model>"]`: per call, per 1,000 input
//! and output tokens, per CPU-second for a model run in-process), the usage of one record's
//! model calls, and its cost. Pure arithmetic; [`PriceTable::charge`] also counts it in the
//! service's metrics by tenant and model.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::settings::SettingsError;

/// A model's price, in US dollars. Every part is optional (0): a hosted LLM is priced by
/// tokens, a served model by the call, a local one by the CPU it takes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub per_call: f64,
    pub per_1k_input_tokens: f64,
    pub per_1k_output_tokens: f64,
    pub per_cpu_second: f64,
}

impl Price {
    pub fn cost(&self, usage: &Usage) -> f64 {
        self.per_call * usage.calls as f64
            + self.per_1k_input_tokens * usage.input_tokens as f64 / 1000.0
            + self.per_1k_output_tokens * usage.output_tokens as f64 / 1000.0
            + self.per_cpu_second * usage.cpu.as_secs_f64()
    }

    fn parts(&self) -> [(&'static str, f64); 4] {
        [
            ("per_call", self.per_call),
            ("per_1k_input_tokens", self.per_1k_input_tokens),
            ("per_1k_output_tokens", self.per_1k_output_tokens),
            ("per_cpu_second", self.per_cpu_second),
        ]
    }
}

/// What one record's calls of one model used. A cached answer is no call: `Usage::default()`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// CPU time of a model run in-process.
    pub cpu: Duration,
}

impl Usage {
    /// One call of the model.
    pub fn call() -> Self {
        Self {
            calls: 1,
            ..Self::default()
        }
    }

    pub fn tokens(self, input: u64, output: u64) -> Self {
        Self {
            input_tokens: input,
            output_tokens: output,
            ..self
        }
    }

    pub fn cpu(self, cpu: Duration) -> Self {
        Self { cpu, ..self }
    }
}

/// Prices by model name. A model not listed has no known cost (decisions and audit records
/// say `cost_usd: null`), though its calls and tokens are still counted.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct PriceTable(BTreeMap<String, Price>);

impl PriceTable {
    pub fn new(prices: impl IntoIterator<Item = (String, Price)>) -> Self {
        Self(prices.into_iter().collect())
    }

    /// The cost of `usage` of the model named `model`, if it has a price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.0.get(model).map(|p| p.cost(usage))
    }

    /// The cost of one record's use of the model named `model` for `tenant`, counted in
    /// `metrics` (`verdict_inference_calls_total`, `_tokens_total`, `_cost_total`).
    pub fn charge(
        &self,
        metrics: &Metrics,
        tenant: &str,
        model: &str,
        usage: Usage,
    ) -> Option<f64> {
        let cost = self.cost(model, &usage);
        metrics.record_inference(tenant, model, &usage, cost);
        cost
    }

    /// Every price a finite amount of at least 0, or the error names its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (model, price) in &self.0 {
            if let Some((part, value)) = price
                .parts()
                .into_iter()
                .find(|(_, v)| !v.is_finite() || *v < 0.0)
            {
                return Err(SettingsError::Key {
                    key: format!("pricing.{model}.{part}"),
                    message: format!("{value}: must be an amount of US dollars, 0 or more"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cost_adds_every_priced_part() {
        let price = Price {
            per_call: 0.001,
            per_1k_input_tokens: 0.5,
            per_1k_output_tokens: 1.5,
            per_cpu_second: 0.02,
        };
        let usage = Usage::call()
            .tokens(200, 40)
            .cpu(Duration::from_millis(250));
        let want = 0.001 + 0.1 + 0.06 + 0.005;
        assert!((price.cost(&usage) - want).abs() < 1e-12);
        assert_eq!(price.cost(&Usage::default()), 0.0);
    }

    #[test]
    fn a_model_without_a_price_has_no_cost() {
        let table = PriceTable::new([(
            "minilm".to_string(),
            Price {
                per_1k_input_tokens: 0.02,
                ..Price::default()
            },
        )]);
        let usage = Usage::call().tokens(500, 0);
        assert_eq!(table.cost("minilm", &usage), Some(0.01));
        assert_eq!(table.cost("rules", &usage), None);
    }

    #[test]
    fn a_negative_or_infinite_price_names_its_key() {
        for bad in [-0.1, f64::INFINITY, f64::NAN] {
            let table = PriceTable::new([(
                "gpt".to_string(),
                Price {
                    per_1k_output_tokens: bad,
                    ..Price::default()
                },
            )]);
            let err = table.validate().expect_err("refused").to_string();
            assert!(err.contains("pricing.gpt.per_1k_output_tokens"), "{err}");
        }
        assert!(PriceTable::default().validate().is_ok());
    }

    #[test]
    fn charging_counts_calls_tokens_and_cost_by_tenant_and_model() {
        let metrics = Metrics::new("test");
        let table = PriceTable::new([(
            "minilm".to_string(),
            Price {
                per_1k_input_tokens: 0.02,
                ..Price::default()
            },
        )]);
        for _ in 0..3 {
            table.charge(&metrics, "acme", "minilm", Usage::call().tokens(500, 0));
        }
        let text = metrics.encode();
        for line in [
            r#"verdict_inference_calls_total{service="test",tenant="acme",model="minilm"} 3"#,
            r#"verdict_inference_tokens_total{service="test",tenant="acme",model="minilm",direction="input"} 1500"#,
            r#"verdict_inference_cost_total{service="test",tenant="acme",model="minilm"} 0.03"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
