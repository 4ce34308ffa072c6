//! verdict's model server: all-MiniLM-L6-v2 embeddings (candle), zero-shot text
//! classifiers over them, and the fraud model, over KServe v2 and the
//! OpenAI-compatible embeddings API.

pub mod api;
pub mod classifier;
pub mod config;
pub mod embedder;

use std::sync::Arc;
use std::time::Duration;

use verdict_runtime::inference::InferenceError;
use verdict_runtime::inference::batcher::MicroBatcher;
use verdict_runtime::models::LogisticModel;

use crate::api::App;
use crate::config::ModelServerSettings;
use crate::embedder::Embedder;

/// Loads every model (weights, tokenizer, label anchors) and builds the app.
pub fn load(settings: &ModelServerSettings) -> Result<Arc<App>, String> {
    let e = &settings.embeddings;
    let embedder =
        Arc::new(Embedder::load(&e.model_dir, &e.name, e.max_length).map_err(|e| e.to_string())?);
    let classifiers = settings
        .classifiers
        .iter()
        .map(|c| classifier::build(c, &embedder))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let fraud = LogisticModel::load(&settings.fraud.model_file).map_err(|e| e.to_string())?;
    let info = embedder.info.clone();
    let batcher = MicroBatcher::new(
        e.max_batch,
        Duration::from_millis(e.max_wait_ms),
        Arc::new(move |texts: Vec<String>| {
            let embedder = embedder.clone();
            Box::pin(async move {
                let out = tokio::task::spawn_blocking(move || embedder.embed(&texts))
                    .await
                    .map_err(|e| InferenceError::Unreachable(e.to_string()))?
                    .map_err(|e| InferenceError::Protocol(e.to_string()))?;
                Ok(out.vectors.into_iter().zip(out.tokens).collect())
            })
        }),
    );
    Ok(Arc::new(App {
        embedding: info,
        batcher,
        classifiers,
        fraud_name: settings.fraud.name.clone(),
        fraud,
    }))
}
