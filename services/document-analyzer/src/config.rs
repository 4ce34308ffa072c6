//! The document-analyzer's own settings (`[service]`, `VERDICT__SERVICE__…`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verdict_runtime::inference::balance::EndpointSettings;
use verdict_runtime::inference::budget::BudgetSettings;
use verdict_runtime::inference::resilience::ProviderSettings;
use verdict_runtime::inference::zero_shot::Examples;
use verdict_runtime::settings::{Secret, SettingsError, Validate};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentSettings {
    /// OpenAI-compatible embeddings endpoint (the model-server).
    pub embeddings_url: String,
    pub embeddings_model: String,
    /// Bearer token for the embeddings API; never logged.
    pub api_key: Secret,
    /// More endpoints serving the same model (replicas, regions, or the same URL with another
    /// API key): with any, calls are balanced across them and `embeddings_url` by least
    /// outstanding requests, each endpoint behind its own breaker and limits.
    pub embeddings_replicas: Vec<EndpointSettings>,
    pub provider: ProviderSettings,
    /// Embedding requests (batches of up to 32 documents) in flight at once: more documents
    /// wait and join the next batch, which is how the model server works best.
    pub embed_batches_in_flight: usize,
    /// Documents larger than this are rejected (bytes of text).
    pub max_bytes: usize,
    /// Documents whose token estimate (chars / 4) exceeds this are rejected.
    pub max_tokens: usize,
    /// Tokens the embedding model reads; longer documents are embedded truncated.
    pub model_context_tokens: usize,
    /// Category confidence below which a document goes to review.
    pub review_below: f64,
    pub cache_ttl_ms: u64,
    pub cache_capacity: usize,
    /// Sentiment head trained offline over the same embeddings (`models/sentiment/head.json`),
    /// evaluated in-process on the embedding of each document.
    pub sentiment_head: PathBuf,
    /// Documents the head calls negative with at least this probability go to review.
    pub review_negative_above: f64,
    /// Where the document categories come from: `examples` (prototypes of the labelled texts
    /// in `category_examples`) or `descriptions` (zero-shot, one sentence per category).
    pub categories: CategorySource,
    /// Labelled examples, one JSON object per line: `{"label": "complaint", "text": "…"}`.
    /// Its labels are the categories; a few dozen texts per label are enough.
    pub category_examples: PathBuf,
    /// Spend caps per tenant over a window, on the embedding calls' cost (`[pricing]`).
    pub budgets: BudgetSettings,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CategorySource {
    Examples,
    Descriptions,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        Self {
            embeddings_url: "http://127.0.0.1:8090".into(),
            embeddings_model: "all-minilm-l6-v2".into(),
            api_key: Secret::default(),
            embeddings_replicas: Vec::new(),
            provider: ProviderSettings {
                timeout_ms: 5_000,
                max_retries: 1,
                failure_threshold: 3,
                open_ms: 5_000,
                ..ProviderSettings::default()
            },
            embed_batches_in_flight: 2,
            max_bytes: 200_000,
            max_tokens: 50_000,
            model_context_tokens: 256,
            review_below: 0.5,
            cache_ttl_ms: 600_000,
            cache_capacity: 10_000,
            sentiment_head: PathBuf::from("models/sentiment/head.json"),
            review_negative_above: 0.8,
            categories: CategorySource::Examples,
            category_examples: PathBuf::from("models/categories/examples.jsonl"),
            budgets: BudgetSettings::default(),
        }
    }
}

impl Validate for DocumentSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, message: &str| {
            Err(SettingsError::Key {
                key: format!("service.{key}"),
                message: message.into(),
            })
        };
        if self.embed_batches_in_flight == 0 {
            return bad("embed_batches_in_flight", "must be at least 1");
        }
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !http(&self.embeddings_url) {
            return bad("embeddings_url", "must be an http(s) URL");
        }
        if let Some(i) = self.embeddings_replicas.iter().position(|r| !http(&r.url)) {
            return bad(
                &format!("embeddings_replicas[{i}].url"),
                "must be an http(s) URL",
            );
        }
        if self.max_bytes == 0 || self.max_tokens == 0 {
            return bad("max_bytes", "max_bytes and max_tokens must be positive");
        }
        if !(0.0..=1.0).contains(&self.review_below) {
            return bad("review_below", "must lie in [0, 1]");
        }
        if !(0.5..=1.0).contains(&self.review_negative_above) {
            return bad("review_negative_above", "must lie in [0.5, 1]");
        }
        if self.categories == CategorySource::Examples
            && let Err(e) = Examples::load(&self.category_examples)
        {
            return bad("category_examples", &e.to_string());
        }
        if let Err((key, message)) = self.budgets.check() {
            return bad(&format!("budgets.{key}"), &message);
        }
        if !self.sentiment_head.is_file() {
            return bad(
                "sentiment_head",
                &format!("{} does not exist", self.sentiment_head.display()),
            );
        }
        Ok(())
    }
}
