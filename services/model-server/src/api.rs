//! HTTP APIs: KServe v2 / Open Inference Protocol for every model, and the
//! OpenAI-compatible `/v1/embeddings` and `/v1/models` for the embedding model.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use verdict_runtime::inference::InferenceError;
use verdict_runtime::inference::batcher::MicroBatcher;
use verdict_runtime::inference::head::LinearHead;
use verdict_runtime::inference::resilience::TokenBucket;
use verdict_runtime::models::LogisticModel;

use crate::classifier::{Classified, ZeroShot};
use crate::embedder::ModelInfo;

pub struct App {
    pub embedding: ModelInfo,
    pub batcher: MicroBatcher<String, (Vec<f32>, usize)>,
    pub classifiers: Vec<ZeroShot>,
    pub heads: Vec<LinearHead>,
    pub fraud_name: String,
    pub fraud: LogisticModel,
    /// Injected latency of every fraud inference (`fraud.delay_ms`).
    pub fraud_delay: std::time::Duration,
    /// The inference routes' rate limit (`http.requests_per_second`).
    pub limit: Option<TokenBucket>,
}

type AppState = State<Arc<App>>;

/// A text classifier over the server's embeddings: zero-shot or a trained head.
#[derive(Clone, Copy)]
enum TextClassifier<'a> {
    ZeroShot(&'a ZeroShot),
    Head(&'a LinearHead),
}

impl TextClassifier<'_> {
    fn labels(&self) -> &[String] {
        match self {
            Self::ZeroShot(z) => z.labels(),
            Self::Head(h) => &h.labels,
        }
    }

    fn version(&self) -> &str {
        match self {
            Self::ZeroShot(_) => "1.0.0",
            Self::Head(h) => &h.version,
        }
    }

    /// `None` only if a head meets vectors of another size (checked at load).
    fn classify(&self, embedding: &[f32]) -> Option<Classified> {
        match self {
            Self::ZeroShot(z) => Some(z.classify(embedding)),
            Self::Head(h) => h.classify(embedding),
        }
    }

    fn metadata(&self, e: &ModelInfo) -> Value {
        let (name, platform) = match self {
            Self::ZeroShot(z) => (&z.name, "zero-shot-embedding"),
            Self::Head(h) => (&h.name, "verdict-logistic-head"),
        };
        let mut parameters = json!({"labels": self.labels(), "embedding_model": e.name, "embedding_sha256": e.sha256});
        if let Self::Head(h) = self {
            parameters["sha256"] = json!(h.sha256);
            parameters["trained_on"] = json!(h.embedding_model);
        }
        json!({
            "name": name, "versions": [self.version()], "platform": platform,
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, self.labels().len()]}],
            "parameters": parameters,
        })
    }
}

pub fn router(app: Arc<App>) -> Router {
    let inference = Router::new()
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v1/embeddings", post(openai_embeddings))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            rate_limit,
        ));
    Router::new()
        .route("/v2", get(|| async { Json(json!({"name": "verdict-model-server", "version": env!("CARGO_PKG_VERSION"), "extensions": []})) }))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v1/models", get(openai_models))
        .merge(inference)
        .with_state(app)
}

/// Past `http.requests_per_second`: 429 with `Retry-After` (whole seconds, at least 1), as a
/// hosted API answers.
async fn rate_limit(
    State(app): AppState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match app.limit.as_ref().map(|l| l.try_take(1.0)) {
        Some(Err(wait)) => {
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "too many requests: slow down",
            );
            let seconds = wait.as_secs_f64().ceil().max(1.0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds as u64),
            );
            response
        }
        _ => next.run(request).await,
    }
}

/// KServe-style error: `{"error": "..."}`.
fn kserve_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// OpenAI-style error.
fn openai_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": { "message": message.into(), "type": kind, "code": status.as_u16() } }))).into_response()
}

fn inference_status(e: &InferenceError) -> StatusCode {
    match e {
        InferenceError::Rejected(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl App {
    fn model_names(&self) -> Vec<String> {
        let mut names = vec![self.embedding.name.clone(), self.fraud_name.clone()];
        names.extend(self.classifiers.iter().map(|c| c.name.clone()));
        names.extend(self.heads.iter().map(|h| h.name.clone()));
        names
    }

    fn text_classifier(&self, name: &str) -> Option<TextClassifier<'_>> {
        self.classifiers
            .iter()
            .find(|c| c.name == name)
            .map(TextClassifier::ZeroShot)
            .or_else(|| {
                self.heads
                    .iter()
                    .find(|h| h.name == name)
                    .map(TextClassifier::Head)
            })
    }

    /// Embeds texts through the micro-batcher (concurrent requests share batches).
    pub async fn embed(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<(Vec<f32>, usize)>, InferenceError> {
        futures::future::join_all(texts.into_iter().map(|t| self.batcher.call(t)))
            .await
            .into_iter()
            .collect()
    }
}

async fn metadata(State(app): AppState, Path(name): Path<String>) -> Response {
    let e = &app.embedding;
    if name == e.name {
        return Json(json!({
            "name": e.name, "versions": [e.version], "platform": e.platform,
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, e.dimensions]}],
            "parameters": {"sha256": e.sha256, "max_length": e.max_length, "pooling": "mean", "normalized": true},
        }))
        .into_response();
    }
    if name == app.fraud_name {
        return Json(json!({
            "name": app.fraud_name, "versions": [app.fraud.version], "platform": "verdict-logistic",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, app.fraud.numeric.len() + verdict_runtime::models::CREDIT_HISTORY_COLUMNS.len()]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}],
            "parameters": {"sha256": app.fraud.sha256, "model": app.fraud.name},
        }))
        .into_response();
    }
    if let Some(c) = app.text_classifier(&name) {
        return Json(c.metadata(e)).into_response();
    }
    kserve_error(
        StatusCode::NOT_FOUND,
        format!(
            "model {name} not found; served: {}",
            app.model_names().join(", ")
        ),
    )
}

async fn model_ready(State(app): AppState, Path(name): Path<String>) -> StatusCode {
    if app.model_names().contains(&name) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct InferRequest {
    inputs: Vec<TensorIn>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct TensorIn {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Value,
}

fn texts_of(t: &TensorIn) -> Result<Vec<String>, String> {
    if t.datatype != "BYTES" {
        return Err(format!(
            "input {} must be BYTES (text), got {}",
            t.name, t.datatype
        ));
    }
    let items = t
        .data
        .as_array()
        .ok_or("data must be an array of strings")?;
    let texts: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(String::from)).collect();
    let texts = texts.ok_or("data must be an array of strings")?;
    if t.shape.iter().product::<usize>() != texts.len() {
        return Err(format!(
            "shape {:?} does not match {} strings",
            t.shape,
            texts.len()
        ));
    }
    Ok(texts)
}

fn rows_of(t: &TensorIn) -> Result<Vec<Vec<f64>>, String> {
    let [n, k] = t.shape.as_slice() else {
        return Err(format!("input {} must have shape [n, k]", t.name));
    };
    let flat: Vec<f64> = match &t.data {
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect(),
        _ => return Err("data must be an array of numbers".into()),
    };
    if flat.len() != n * k {
        return Err(format!(
            "shape {:?} does not match {} values",
            t.shape,
            flat.len()
        ));
    }
    Ok(flat.chunks(*k).map(<[f64]>::to_vec).collect())
}

async fn infer(
    State(app): AppState,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return kserve_error(
                StatusCode::BAD_REQUEST,
                format!("invalid inference request: {e}"),
            );
        }
    };
    let Some(input) = req.inputs.first() else {
        return kserve_error(StatusCode::BAD_REQUEST, "no inputs");
    };
    let id = req.id.clone().unwrap_or_default();
    if name == app.fraud_name {
        if !app.fraud_delay.is_zero() {
            tokio::time::sleep(app.fraud_delay).await;
        }
        let rows = match rows_of(input) {
            Ok(r) => r,
            Err(e) => return kserve_error(StatusCode::BAD_REQUEST, e),
        };
        let mut data = Vec::with_capacity(rows.len() * 2);
        for row in &rows {
            let Some(p) = app.fraud.score_row(row) else {
                return kserve_error(
                    StatusCode::BAD_REQUEST,
                    format!("rows must have {} columns", app.fraud.numeric.len() + 5),
                );
            };
            data.extend([1.0 - p, p]);
        }
        return Json(json!({"model_name": name, "model_version": app.fraud.version, "id": id,
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [rows.len(), 2], "data": data}]}))
        .into_response();
    }
    let classifier = app.text_classifier(&name);
    if name != app.embedding.name && classifier.is_none() {
        return kserve_error(StatusCode::NOT_FOUND, format!("model {name} not found"));
    }
    let texts = match texts_of(input) {
        Ok(t) => t,
        Err(e) => return kserve_error(StatusCode::BAD_REQUEST, e),
    };
    let n = texts.len();
    let embedded = match app.embed(texts).await {
        Ok(v) => v,
        Err(e) => return kserve_error(inference_status(&e), e.to_string()),
    };
    match classifier {
        None => {
            let dims = app.embedding.dimensions;
            let data: Vec<f32> = embedded
                .iter()
                .flat_map(|(v, _)| v.iter().copied())
                .collect();
            let tokens: usize = embedded.iter().map(|(_, t)| t).sum();
            Json(json!({"model_name": name, "model_version": app.embedding.version, "id": id, "parameters": {"tokens": tokens},
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [n, dims], "data": data}]}))
            .into_response()
        }
        Some(c) => {
            let Some(results) = embedded
                .iter()
                .map(|(v, _)| c.classify(v))
                .collect::<Option<Vec<_>>>()
            else {
                return kserve_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "classifier does not fit the embedding model",
                );
            };
            let labels: Vec<&str> = results.iter().map(|r| r.label.as_str()).collect();
            let probs: Vec<f32> = results
                .iter()
                .flat_map(|r| r.probabilities.iter().copied())
                .collect();
            Json(json!({"model_name": name, "model_version": c.version(), "id": id, "parameters": {"labels": c.labels()},
                "outputs": [
                    {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels},
                    {"name": "probabilities", "datatype": "FP32", "shape": [n, c.labels().len()], "data": probs},
                ]}))
            .into_response()
        }
    }
}

async fn openai_models(State(app): AppState) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": app.embedding.name, "object": "model", "owned_by": "verdict"}]}),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    input: EmbeddingInput,
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn openai_embeddings(State(app): AppState, body: axum::body::Bytes) -> Response {
    let req: EmbeddingRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("invalid request: {e}"),
            );
        }
    };
    if req.model != app.embedding.name {
        return openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{}` does not exist; this server has `{}`",
                req.model, app.embedding.name
            ),
        );
    }
    if req.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "only encoding_format \"float\" is supported",
        );
    }
    let texts = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "input must be a non-empty string or a non-empty array of non-empty strings",
        );
    }
    match app.embed(texts).await {
        Ok(embedded) => {
            let tokens: usize = embedded.iter().map(|(_, t)| t).sum();
            let data: Vec<Value> = embedded
                .into_iter()
                .enumerate()
                .map(|(i, (v, _))| json!({"object": "embedding", "index": i, "embedding": v}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": app.embedding.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response()
        }
        Err(e) => openai_error(inference_status(&e), "server_error", e.to_string()),
    }
}
