//! Classification heads trained offline over sentence embeddings
//! (`models/sentiment/train.py`): a binary logistic regression exported as JSON.
//! `p(labels[1]) = σ(w·x + b)` on the L2-normalised embedding `x`.

use std::path::Path;

use serde::Deserialize;

use super::zero_shot::Classified;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("{path}: {message}")]
    Load { path: String, message: String },
}

#[derive(Clone, Debug, Deserialize)]
pub struct LinearHead {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    /// Name of the embedding model the head was trained on.
    pub embedding_model: String,
    /// Checksum of that model's weights; a head must not be used over other vectors.
    pub embedding_sha256: String,
    weights: Vec<f64>,
    bias: f64,
    #[serde(skip)]
    pub sha256: String,
}

impl LinearHead {
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let err = |message: String| HeadError::Load {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let mut head: Self = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if head.labels.len() != 2 {
            return Err(err(format!(
                "a logistic head has two labels, not {}",
                head.labels.len()
            )));
        }
        if head.weights.is_empty() || head.weights.iter().any(|w| !w.is_finite()) {
            return Err(err("weights must be a non-empty list of numbers".into()));
        }
        head.sha256 = crate::models::sha256_hex(&bytes);
        Ok(head)
    }

    pub fn dimensions(&self) -> usize {
        self.weights.len()
    }

    /// `None` when the embedding has the wrong number of dimensions.
    pub fn classify(&self, embedding: &[f32]) -> Option<Classified> {
        if embedding.len() != self.weights.len() {
            return None;
        }
        let z: f64 = self
            .weights
            .iter()
            .zip(embedding)
            .map(|(w, x)| w * f64::from(*x))
            .sum::<f64>()
            + self.bias;
        let p = 1.0 / (1.0 + (-z).exp());
        let probabilities = vec![(1.0 - p) as f32, p as f32];
        let best = usize::from(p >= 0.5);
        Some(Classified {
            label: self.labels[best].clone(),
            confidence: probabilities[best],
            probabilities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(json: &str) -> Result<LinearHead, HeadError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(format!(
            "{}.json",
            crate::models::sha256_hex(json.as_bytes())
        ));
        std::fs::write(&path, json).expect("write head");
        LinearHead::load(&path)
    }

    #[test]
    fn sigmoid_of_the_affine_score_picks_the_label() {
        let h = head(r#"{"name":"s","version":"1","labels":["negative","positive"],"embedding_model":"m","embedding_sha256":"x","weights":[2.0,-1.0],"bias":0.5}"#)
            .expect("valid head");
        let c = h.classify(&[1.0, 0.0]).expect("2 dims");
        let p = 1.0 / (1.0 + (-2.5f64).exp());
        assert_eq!(c.label, "positive");
        assert!((f64::from(c.probabilities[1]) - p).abs() < 1e-6);
        assert_eq!(h.classify(&[0.0, 1.0]).expect("2 dims").label, "negative");
        assert!(h.classify(&[1.0]).is_none(), "wrong dimensions");
        assert_eq!(h.sha256.len(), 64);
    }

    #[test]
    fn malformed_heads_are_refused_with_the_reason() {
        let three = head(
            r#"{"name":"s","version":"1","labels":["a","b","c"],"embedding_model":"m","embedding_sha256":"x","weights":[1.0],"bias":0}"#,
        );
        assert!(
            matches!(three, Err(HeadError::Load { message, .. }) if message.contains("two labels"))
        );
        let empty = head(
            r#"{"name":"s","version":"1","labels":["a","b"],"embedding_model":"m","embedding_sha256":"x","weights":[],"bias":0}"#,
        );
        assert!(
            matches!(empty, Err(HeadError::Load { message, .. }) if message.contains("weights"))
        );
    }
}
