//! In-process models exported by the training scripts under `models/`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A logistic regression exported as JSON by `models/fraud/train.py`:
/// `p = 1 / (1 + exp(-(b + Σ cᵢ·(tᵢ(xᵢ) − μᵢ)/σᵢ + Σ c_k[value_k])))`, with a
/// missing numeric value replaced by its training median before the transform and
/// an unknown or missing category contributing nothing.
#[derive(Debug, Clone, Deserialize)]
pub struct LogisticModel {
    pub name: String,
    pub version: String,
    pub intercept: f64,
    pub numeric: Vec<NumericFeature>,
    pub categorical: Vec<CategoricalFeature>,
    /// File checksum (sha256 hex) filled in by [`LogisticModel::load`].
    #[serde(skip)]
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NumericFeature {
    pub field: String,
    pub transform: Transform,
    pub median: f64,
    pub mean: f64,
    pub std: f64,
    pub coefficient: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    Identity,
    Log1p,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CategoricalFeature {
    pub field: String,
    pub categories: BTreeMap<String, f64>,
}

/// Inputs by field name: numbers (`None` = missing) and category codes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInput {
    pub numeric: BTreeMap<String, Option<f64>>,
    pub categorical: BTreeMap<String, Option<String>>,
}

/// A score with each feature's contribution to the log-odds (by the model's field names).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'m> {
    pub probability: f64,
    pub contributions: Vec<(&'m str, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {message}")]
    Read { path: String, message: String },
    #[error("model {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

impl LogisticModel {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut model: Self = serde_json::from_slice(&bytes).map_err(|e| ModelError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if let Some(f) = model
            .numeric
            .iter()
            .find(|f| !(f.std.is_finite() && f.std > 0.0))
        {
            return Err(ModelError::Invalid {
                path: path.display().to_string(),
                message: format!("{}: std must be > 0", f.field),
            });
        }
        model.sha256 = sha256_hex(&bytes);
        Ok(model)
    }

    pub fn score(&self, input: &ModelInput) -> Scored<'_> {
        self.score_with(
            |field| input.numeric.get(field).copied().flatten(),
            |field| input.categorical.get(field).and_then(Option::as_deref),
        )
    }

    /// Scores values looked up by field name (`None` = missing), without building a
    /// [`ModelInput`]: the form for a hot path.
    pub fn score_with<'v>(
        &self,
        numeric: impl Fn(&str) -> Option<f64>,
        categorical: impl Fn(&str) -> Option<&'v str>,
    ) -> Scored<'_> {
        let mut contributions = Vec::with_capacity(self.numeric.len() + self.categorical.len());
        let mut z = self.intercept;
        for f in &self.numeric {
            let raw = numeric(&f.field)
                .filter(|v| v.is_finite())
                .unwrap_or(f.median);
            let x = match f.transform {
                Transform::Identity => raw,
                Transform::Log1p => raw.max(0.0).ln_1p(),
            };
            let c = f.coefficient * (x - f.mean) / f.std;
            z += c;
            contributions.push((f.field.as_str(), c));
        }
        for f in &self.categorical {
            let c = categorical(&f.field)
                .and_then(|v| f.categories.get(v).copied())
                .unwrap_or(0.0);
            z += c;
            contributions.push((f.field.as_str(), c));
        }
        Scored {
            probability: 1.0 / (1.0 + (-z).exp()),
            contributions,
        }
    }
}

/// Credit-history codes in the column order of `models/fraud/features.py`.
pub const CREDIT_HISTORY_COLUMNS: [&str; 5] = [
    "no_credits",
    "all_paid",
    "existing_paid",
    "delayed_previously",
    "critical_account",
];

impl LogisticModel {
    /// Inputs from a JSON object with the model's field names (null = missing).
    pub fn input_from_json(&self, value: &serde_json::Value) -> ModelInput {
        let mut input = ModelInput::default();
        for f in &self.numeric {
            input.numeric.insert(
                f.field.clone(),
                value.get(&f.field).and_then(serde_json::Value::as_f64),
            );
        }
        for f in &self.categorical {
            input.categorical.insert(
                f.field.clone(),
                value
                    .get(&f.field)
                    .and_then(|v| v.as_str().map(String::from)),
            );
        }
        input
    }

    /// The raw feature row that `models/fraud/features.py` (and so the model served
    /// by MLServer) takes: the numeric fields in model order, a missing value
    /// replaced by its training median (JSON rows carry no NaN), then credit history
    /// one-hot. The server does the transform and standardisation itself.
    pub fn raw_row(&self, input: &ModelInput) -> Vec<f64> {
        let mut row: Vec<f64> = self
            .numeric
            .iter()
            .map(|f| {
                input
                    .numeric
                    .get(&f.field)
                    .copied()
                    .flatten()
                    .filter(|v| v.is_finite())
                    .unwrap_or(f.median)
            })
            .collect();
        let history = input.categorical.get("credit_history").cloned().flatten();
        row.extend(
            CREDIT_HISTORY_COLUMNS
                .iter()
                .map(|c| f64::from(u8::from(history.as_deref() == Some(*c)))),
        );
        row
    }
}

impl LogisticModel {
    /// Scores a raw row laid out as [`LogisticModel::raw_row`] makes it (`None`
    /// when it has the wrong width). Non-finite numbers count as missing.
    pub fn score_row(&self, row: &[f64]) -> Option<f64> {
        if row.len() != self.numeric.len() + CREDIT_HISTORY_COLUMNS.len() {
            return None;
        }
        let mut input = ModelInput::default();
        for (f, v) in self.numeric.iter().zip(row) {
            input
                .numeric
                .insert(f.field.clone(), Some(*v).filter(|v| v.is_finite()));
        }
        let hot = CREDIT_HISTORY_COLUMNS
            .iter()
            .zip(&row[self.numeric.len()..])
            .find(|(_, v)| **v == 1.0)
            .map(|(c, _)| (*c).to_string());
        input.categorical.insert("credit_history".into(), hot);
        Some(self.score(&input).probability)
    }
}

/// Hex sha256 of `bytes` (lowercase).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[derive(Deserialize)]
    struct Holdout {
        rows: Vec<Row>,
    }
    #[derive(Deserialize)]
    struct Row {
        input: serde_json::Value,
        expected_p_bad: f64,
    }

    /// The Rust evaluator and scikit-learn agree on every held-out row (and on the
    /// synthetic rows with missing values and unknown categories).
    #[test]
    fn matches_the_python_model_on_held_out_rows() {
        let model = LogisticModel::load(&repo().join("models/fraud/model.json")).expect("model");
        let text =
            std::fs::read_to_string(repo().join("models/fraud/holdout.json")).expect("holdout");
        let holdout: Holdout = serde_json::from_str(&text).expect("holdout json");
        assert!(holdout.rows.len() >= 250);
        let mut worst: f64 = 0.0;
        for row in &holdout.rows {
            let p = model.score(&model.input_from_json(&row.input)).probability;
            worst = worst.max((p - row.expected_p_bad).abs());
        }
        assert!(worst < 1e-6, "max |rust - python| = {worst}");
        // The raw-row form (what KServe clients send) scores the same.
        for row in &holdout.rows {
            let input = model.input_from_json(&row.input);
            let by_row = model.score_row(&model.raw_row(&input)).expect("width");
            assert!((by_row - model.score(&input).probability).abs() < 1e-12);
        }
        assert_eq!(model.sha256.len(), 64);
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
