//! Text classification over embeddings by nearest anchor: a text's label probabilities are a
//! softmax over its cosine similarity to each label's anchor, scaled by a temperature. An
//! anchor is either the embedding of the label's description (zero-shot) or the normalised
//! mean embedding of the label's labelled examples (a prototype, [`Examples`]).

use std::path::Path;

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
pub fn default_classifiers() -> [ClassifierSettings; 2] {
    let c = |name: &str, labels: &[(&str, &str)]| ClassifierSettings {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(l, d)| (l.to_string(), d.to_string()))
            .collect(),
        temperature: 20.0,
    };
    [
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

    /// A prototype classifier: each label's anchor is the normalised mean of its examples'
    /// embeddings (`embedded[i]` is the embedding of `examples.texts[i]`).
    pub fn from_examples(
        name: &str,
        temperature: f32,
        examples: &Examples,
        embedded: &[Vec<f32>],
    ) -> Self {
        let anchors = examples
            .labels
            .iter()
            .map(|label| {
                let mut sum: Vec<f32> = Vec::new();
                let of_label = examples.items.iter().zip(embedded);
                for (_, v) in of_label.filter(|((l, _), _)| l == label) {
                    sum.resize(v.len(), 0.0);
                    sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
                }
                let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    sum.iter_mut().for_each(|x| *x /= norm);
                }
                sum
            })
            .collect();
        Self {
            name: name.into(),
            labels: examples.labels.clone(),
            anchors,
            temperature,
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

/// Labelled example texts, the categories they define and the file's checksum: a file of
/// JSON lines `{"label": "complaint", "text": "My order never arrived…"}`. Labels keep the
/// order of their first example.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    pub labels: Vec<String>,
    /// `(label, text)`, in the file's order.
    pub items: Vec<(String, String)>,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ExamplesError {
    pub path: String,
    pub message: String,
}

impl Examples {
    pub fn load(path: &Path) -> Result<Self, ExamplesError> {
        let err = |message: String| ExamplesError {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err(e.to_string()))?;
        Self::parse(text, crate::models::sha256_hex(&bytes)).map_err(err)
    }

    /// Parses JSON lines (blank lines are skipped); the message names the line at fault.
    fn parse(text: &str, sha256: String) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            label: String,
            text: String,
        }
        let mut labels: Vec<String> = Vec::new();
        let mut items = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = |m: String| format!("line {}: {m}", n + 1);
            let Line { label, text } = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
            if label.trim().is_empty() || text.trim().is_empty() {
                return Err(at("label and text must not be empty".into()));
            }
            if !labels.contains(&label) {
                labels.push(label.clone());
            }
            items.push((label, text));
        }
        if labels.len() < 2 {
            return Err(format!(
                "examples of at least two labels are needed, found {}",
                labels.len()
            ));
        }
        Ok(Self {
            labels,
            items,
            sha256,
        })
    }

    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(_, t)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_are_normalised_means_of_each_labels_examples() {
        let examples = Examples::parse(
            "{\"label\": \"b\", \"text\": \"x\"}\n\n{\"label\": \"a\", \"text\": \"y\"}\n{\"label\": \"b\", \"text\": \"z\"}\n",
            String::new(),
        )
        .expect("parses");
        assert_eq!(examples.labels, ["b", "a"], "first appearance order");
        let z = ZeroShot::from_examples(
            "t",
            10.0,
            &examples,
            &[vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 1.0]],
        );
        assert_eq!(z.labels(), ["b", "a"]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        for (got, want) in z.anchors.iter().zip([[h, h], [0.0, 1.0]]) {
            assert!(
                got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
                "{got:?}"
            );
        }
        assert_eq!(z.classify(&[0.0, 1.0]).label, "a");
        assert_eq!(z.classify(&[1.0, 0.0]).label, "b");
    }

    #[test]
    fn a_bad_examples_file_is_refused_naming_the_line() {
        let bad = [
            ("{\"label\": \"a\", \"text\": \"x\"}\nnot json", "line 2"),
            (
                "{\"label\": \"a\", \"text\": \" \"}",
                "line 1: label and text",
            ),
            (
                "{\"label\": \"a\", \"text\": \"x\", \"n\": 1}",
                "line 1: unknown field",
            ),
            ("{\"label\": \"a\", \"text\": \"x\"}", "at least two labels"),
        ];
        for (text, says) in bad {
            let e = Examples::parse(text, String::new()).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_shipped_examples_cover_the_document_categories() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let defaults = default_classifiers();
        let zero_shot: Vec<&String> = defaults[0].labels.iter().map(|(l, _)| l).collect();
        let load = |file: &str| Examples::load(&root.join("models/categories").join(file));
        let (train, held) = (load("examples.jsonl"), load("held_aside.jsonl"));
        let (train, held) = (train.expect("examples"), held.expect("held aside"));
        for e in [&train, &held] {
            assert_eq!(e.labels.iter().collect::<Vec<_>>(), zero_shot);
        }
        assert!(
            held.texts().all(|t| !train.texts().any(|u| u == t)),
            "no held-aside text is a training text"
        );
    }

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
