//! verdict's model server: all-MiniLM-L6-v2 embeddings (candle), zero-shot text
//! classifiers and trained heads over them, and the fraud model, over KServe v2 and the
//! OpenAI-compatible embeddings API.

pub mod api;
pub mod classifier;
pub mod config;
pub mod embedder;

use std::sync::Arc;
use std::time::Duration;

use verdict_runtime::inference::InferenceError;
use verdict_runtime::inference::batcher::MicroBatcher;
use verdict_runtime::inference::head::LinearHead;
use verdict_runtime::models::LogisticModel;

use crate::api::App;
use crate::config::ModelServerSettings;
use crate::embedder::Embedder;

/// The model server as the stack, the test harness and the loadtest run it: the embedding
/// model from the installed package, the fraud model and the sentiment head from the repo.
pub struct Spec;

impl verdict_runtime::service::ServiceSpec for Spec {
    const NAME: &'static str = "model-server";
    type Settings = ModelServerSettings;

    fn settings(d: &verdict_runtime::service::Deployment) -> Self::Settings {
        let mut s = ModelServerSettings::default();
        s.http.listen = d.http_listen;
        s.embeddings.model_dir = d.minilm_dir.clone();
        s.fraud.model_file = d.root.join("models/fraud/model.json");
        s.heads.insert(
            "sentiment".into(),
            d.root.join("models/sentiment/head.json"),
        );
        s
    }
}

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
    let heads = settings
        .heads
        .iter()
        .map(|(name, path)| {
            let head = LinearHead::load(path).map_err(|e| format!("heads.{name}: {e}"))?;
            if head.name != *name {
                return Err(format!(
                    "heads.{name}: {} holds the head `{}`",
                    path.display(),
                    head.name
                ));
            }
            if head.embedding_sha256 != embedder.info.sha256
                || head.dimensions() != embedder.info.dimensions
            {
                return Err(format!(
                    "heads.{name}: {} was trained on embeddings {} ({} dims), this server embeds with {} ({} dims)",
                    path.display(),
                    head.embedding_sha256,
                    head.dimensions(),
                    embedder.info.sha256,
                    embedder.info.dimensions
                ));
            }
            Ok(head)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fraud = LogisticModel::load(&settings.fraud.model_file).map_err(|e| e.to_string())?;
    let info = embedder.info.clone();
    let batcher = MicroBatcher::new(
        e.max_batch,
        Duration::from_millis(e.max_wait_ms),
        e.batches_in_flight,
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
        heads,
        fraud_name: settings.fraud.name.clone(),
        fraud,
        fraud_delay: std::time::Duration::from_millis(settings.fraud.delay_ms),
        limit: (settings.http.requests_per_second > 0.0).then(|| {
            verdict_runtime::inference::resilience::TokenBucket::new(
                settings.http.requests_per_second,
                settings.http.burst,
            )
        }),
    }))
}
