//! OpenAI-compatible embeddings over HTTP (`POST /v1/embeddings`). The API key,
//! if any, is sent as a bearer token and never logged.

use serde::Deserialize;
use serde_json::json;

use super::{BoxFuture, InferenceError, ModelId, Provider, http_error};
use crate::settings::Secret;

pub struct OpenAiEmbeddings {
    base: String,
    model: ModelId,
    api_key: Secret,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbeddings {
    /// `base` like `http://127.0.0.1:8090` (the `/v1/embeddings` path is appended).
    pub fn new(
        base: &str,
        model: &str,
        version: &str,
        api_key: Secret,
    ) -> Result<Self, InferenceError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| InferenceError::Unreachable(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            model: ModelId::new("openai", model, version),
            api_key,
            http,
        })
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut req = self
            .http
            .post(format!("{}/v1/embeddings", self.base))
            .json(&json!({"model": self.model.name, "input": texts}));
        if !self.api_key.is_empty() {
            req = req.bearer_auth(self.api_key.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| InferenceError::Unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http_error(resp).await);
        }
        let mut parsed: Response = resp
            .json()
            .await
            .map_err(|e| InferenceError::Protocol(e.to_string()))?;
        parsed.data.sort_by_key(|d| d.index);
        Ok(parsed.data.into_iter().map(|d| d.embedding).collect())
    }
}

impl Provider<String, Vec<f32>> for OpenAiEmbeddings {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn infer<'a>(
        &'a self,
        batch: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, InferenceError>> {
        Box::pin(self.embed(batch))
    }
}
