//! Zero-shot text classification over embeddings: each label has a description
//! whose embedding is its anchor; a text's label probabilities are a softmax over
//! its cosine similarity to the anchors, scaled by a temperature.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSettings {
    pub name: String,
    /// `(label, description)` pairs.
    pub labels: Vec<(String, String)>,
    /// Softmax scale for cosine similarities.
    pub temperature: f32,
}

/// The zero-shot document classifiers verdict ships: category and urgency (sentiment is a
/// trained head, `inference::head`).
pub fn default_classifiers() -> Vec<ClassifierSettings> {
    let c = |name: &str, labels: &[(&str, &str)]| ClassifierSettings {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(l, d)| (l.to_string(), d.to_string()))
            .collect(),
        temperature: 20.0,
    };
    vec![
        c(
            "document-category",
            &[
                (
                    "invoice",
                    "An invoice or bill requesting payment for goods or services, with amounts due.",
                ),
                (
                    "contract",
                    "A legal contract or agreement with terms, parties and signatures.",
                ),
                (
                    "complaint",
                    "A customer complaint expressing dissatisfaction with a product or service.",
                ),
                (
                    "support_request",
                    "A customer asking for help or support with a technical problem.",
                ),
                (
                    "resume",
                    "A resume or CV describing a person's work experience, education and skills.",
                ),
                (
                    "spam",
                    "Unsolicited advertising, promotions or spam messages.",
                ),
            ],
        ),
        c(
            "urgency",
            &[
                (
                    "urgent",
                    "An urgent, time-critical request that needs immediate attention today.",
                ),
                (
                    "routine",
                    "A routine, non-urgent message that can be handled in the normal course of business.",
                ),
            ],
        ),
    ]
}

pub struct ZeroShot {
    pub name: String,
    labels: Vec<String>,
    anchors: Vec<Vec<f32>>,
    temperature: f32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Classified {
    pub label: String,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
}

/// Cosine similarity of two L2-normalised vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl ZeroShot {
    /// `anchors[i]` is the embedding of label i's description.
    pub fn from_anchors(settings: &ClassifierSettings, anchors: Vec<Vec<f32>>) -> Self {
        Self {
            name: settings.name.clone(),
            labels: settings.labels.iter().map(|(l, _)| l.clone()).collect(),
            anchors,
            temperature: settings.temperature,
        }
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn classify(&self, embedding: &[f32]) -> Classified {
        let scores: Vec<f32> = self
            .anchors
            .iter()
            .map(|a| cosine(a, embedding) * self.temperature)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let probabilities: Vec<f32> = exp.iter().map(|e| e / sum).collect();
        let (best, confidence) = probabilities
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        Classified {
            label: self.labels[best].clone(),
            confidence,
            probabilities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_anchor_wins_with_a_proper_distribution() {
        let settings = ClassifierSettings {
            name: "t".into(),
            labels: vec![("a".into(), "".into()), ("b".into(), "".into())],
            temperature: 10.0,
        };
        let z = ZeroShot::from_anchors(&settings, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let c = z.classify(&[0.8, 0.6]);
        assert_eq!(c.label, "a");
        assert!((c.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(c.confidence > 0.8);
    }
}
