//! document-analyzer: redacts, embeds and classifies `document-uploads` into
//! routing decisions.

pub mod config;
pub mod pii;
pub mod pipeline;

use verdict_runtime::service::{Deployment, ServiceSettings, ServiceSpec};

/// The document-analyzer as the stack, the test harness and the loadtest run it: after the
/// model server, whose embeddings it uses.
pub struct Spec;

impl ServiceSpec for Spec {
    const NAME: &'static str = pipeline::SERVICE;
    const AFTER: &'static [&'static str] = &["model-server"];
    type Settings = ServiceSettings<config::DocumentSettings>;

    fn settings(d: &Deployment) -> Self::Settings {
        let mut s = Self::Settings::for_deployment(d);
        s.service.embeddings_url = d.model_server_url.clone();
        s.service.sentiment_head = d.root.join("models/sentiment/head.json");
        s.service.category_examples = d.root.join("models/categories/examples.jsonl");
        s
    }
}
