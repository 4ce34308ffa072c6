//! KServe v2 / Open Inference Protocol client over HTTP:
//! `POST /v2/models/{name}[/versions/{v}]/infer`, `GET …/ready`, metadata.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{BoxFuture, InferenceError, ModelId, Provider, http_error};

/// A tabular model behind KServe v2: rows of FP64 features in, one output row per input.
pub struct KServeClient {
    base: String,
    model: ModelId,
    input_name: String,
    output_name: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct InferResponse {
    outputs: Vec<Tensor>,
}

#[derive(Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl KServeClient {
    /// `base` like `http://127.0.0.1:8080`; `output_name` the tensor to ask for
    /// (MLServer's sklearn runtime: `predict_proba`).
    pub fn new(
        base: &str,
        name: &str,
        version: &str,
        output_name: &str,
    ) -> Result<Self, InferenceError> {
        let http = super::http_client()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            model: ModelId::new("kserve", name, version),
            input_name: "input-0".into(),
            output_name: output_name.into(),
            http,
        })
    }

    fn model_url(&self) -> String {
        format!("{}/v2/models/{}", self.base, self.model.name)
    }

    /// `GET /v2/models/{name}/ready`.
    pub async fn ready(&self) -> bool {
        matches!(self.http.get(format!("{}/ready", self.model_url())).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
    }

    async fn infer_rows(&self, rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, InferenceError> {
        let width = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != width) {
            return Err(InferenceError::Rejected("rows of different widths".into()));
        }
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(InferenceError::Rejected(
                "features must be finite (JSON has no NaN)".into(),
            ));
        }
        let body = json!({
            "inputs": [{ "name": self.input_name, "shape": [rows.len(), width], "datatype": "FP64", "data": rows.concat() }],
            "outputs": [{ "name": self.output_name }],
        });
        let resp = self
            .http
            .post(format!("{}/infer", self.model_url()))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    InferenceError::Timeout(Duration::ZERO)
                } else {
                    InferenceError::Unreachable(e.to_string())
                }
            })?;
        if !resp.status().is_success() {
            return Err(http_error(resp).await);
        }
        let parsed: InferResponse = resp
            .json()
            .await
            .map_err(|e| InferenceError::Protocol(e.to_string()))?;
        let tensor = parsed
            .outputs
            .into_iter()
            .find(|t| t.name == self.output_name)
            .ok_or_else(|| InferenceError::Protocol(format!("no output `{}`", self.output_name)))?;
        let cols = match tensor.shape.as_slice() {
            [n, c] if *n == rows.len() => *c,
            [n] if *n == rows.len() => 1,
            other => {
                return Err(InferenceError::Protocol(format!(
                    "output shape {other:?} for {} rows",
                    rows.len()
                )));
            }
        };
        if tensor.data.len() != rows.len() * cols {
            return Err(InferenceError::Protocol(
                "output data does not match its shape".into(),
            ));
        }
        Ok(tensor.data.chunks(cols).map(<[f64]>::to_vec).collect())
    }
}

impl Provider<Vec<f64>, Vec<f64>> for KServeClient {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn endpoint(&self) -> &str {
        &self.base
    }
    fn infer<'a>(
        &'a self,
        batch: &'a [Vec<f64>],
    ) -> BoxFuture<'a, Result<Vec<Vec<f64>>, InferenceError>> {
        Box::pin(self.infer_rows(batch))
    }
}
