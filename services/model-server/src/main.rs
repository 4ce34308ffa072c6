//! model-server: settings → load models (embeddings, classifiers, fraud, heads) → serve
//! KServe v2 and the OpenAI-compatible API, with health and metrics, on loopback.

use std::process::ExitCode;

use model_server::config::ModelServerSettings;
use verdict_runtime::service::{self, Host};

const NAME: &str = "model-server";

#[tokio::main]
async fn main() -> ExitCode {
    let settings: ModelServerSettings = match service::load_settings(NAME) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let app = match model_server::load(&settings) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    let (embedding, sha256) = (app.embedding.name.clone(), app.embedding.sha256.clone());
    let host = match Host::start(
        NAME,
        settings.http.listen,
        &settings.telemetry,
        model_server::api::router(app),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(%embedding, %sha256, "model server ready");
    host.metrics.set_ready(true);
    host.run(async {
        service::shutdown_signal().await;
        Ok(())
    })
    .await
}
