//! verdict-schema-registry: settings → `_schemas` log replay → REST API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use verdict_runtime::{settings, telemetry};
use verdict_schema_registry::{RegistrySettings, SchemaLog, Users, bind, serve};

/// Confluent-compatible schema registry (Avro) backed by a compacted Kafka topic.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML settings file; `VERDICT__SECTION__KEY` environment variables override it.
    #[arg(long, env = "VERDICT_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let args = Args::parse();
    let settings: RegistrySettings = match settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let users = match Users::new(&settings.auth) {
        Ok(users) => Arc::new(users),
        Err(e) => return fail(&e),
    };
    let tls = match settings.http.tls.load("http.tls") {
        Ok(tls) => tls,
        Err(e) => return fail(&e),
    };
    let listener = match bind(settings.http.listen).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let log = match SchemaLog::open(&settings.kafka, &settings.store).await {
        Ok(log) => Arc::new(log),
        Err(e) => return fail(&e),
    };
    tracing::info!(
        listen = %settings.http.listen,
        tls = tls.is_some(),
        topic = %settings.store.topic,
        users = users.len(),
        "schema registry ready{}",
        if users.is_empty() { " (open: no [auth] users)" } else { " (basic auth)" }
    );
    match serve(
        listener,
        tls,
        log,
        users,
        verdict_runtime::service::shutdown_signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("verdict-schema-registry: {e}");
    ExitCode::from(2)
}
