//! model-server: settings → load models (embeddings, classifiers, fraud) → serve
//! KServe v2 and OpenAI-compatible HTTP on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use model_server::config::ModelServerSettings;
use verdict_runtime::{service, settings, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let config = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("VERDICT_CONFIG").map(PathBuf::from));
    let settings: ModelServerSettings = match settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("model-server: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match model_server::load(&settings) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("model-server: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.http.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("model-server: http.listen {}: {e}", settings.http.listen);
            return ExitCode::from(1);
        }
    };
    tracing::info!(listen = %settings.http.listen, embedding = %app.embedding.name, sha256 = %app.embedding.sha256, "model server ready");
    match axum::serve(listener, model_server::api::router(app))
        .with_graceful_shutdown(service::shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("model-server: {e}");
            ExitCode::from(1)
        }
    }
}
