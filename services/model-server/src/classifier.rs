//! Zero-shot classifiers of the model server: label anchors embedded with the
//! server's own embedding model (the classification math lives in the runtime).

pub use verdict_runtime::inference::zero_shot::{
    Classified, ClassifierSettings, ZeroShot, default_classifiers,
};

use crate::embedder::{EmbedError, Embedder};

/// Builds a classifier by embedding its label descriptions.
pub fn build(settings: &ClassifierSettings, embedder: &Embedder) -> Result<ZeroShot, EmbedError> {
    let descriptions: Vec<String> = settings.labels.iter().map(|(_, d)| d.clone()).collect();
    Ok(ZeroShot::from_anchors(
        settings,
        embedder.embed(&descriptions)?.vectors,
    ))
}
