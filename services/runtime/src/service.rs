//! What every service binary shares: its settings layout, start-up (validated
//! settings, topology entry, telemetry, health/metrics port) and shutdown on
//! SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{self, EngineSettings, Processor, Route};
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;
use crate::registry::default_registry_url;
use crate::settings::{SettingsError, Validate};
use crate::topology::Topology;

/// Settings of a service: the shared sections plus its own under `[service]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings<T> {
    pub kafka: KafkaSettings,
    pub registry: RegistrySection,
    pub http: HttpSection,
    pub topology: TopologySection,
    pub engine: EngineSettings,
    pub telemetry: TelemetrySection,
    /// The service's own settings.
    pub service: T,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub url: String,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            url: default_registry_url(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySection {
    pub file: PathBuf,
    /// Entry under `[services.…]`; defaults to the binary's service name.
    pub service: Option<String>,
}

impl Default for TopologySection {
    fn default() -> Self {
        Self {
            file: PathBuf::from("topology/topology.toml"),
            service: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); empty = no export.
    pub otlp_endpoint: String,
}

impl<T: Validate> Validate for ServiceSettings<T> {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        self.engine.validate()?;
        if !self.registry.url.starts_with("http://") && !self.registry.url.starts_with("https://") {
            return Err(SettingsError::Key {
                key: "registry.url".into(),
                message: "must be an http(s) URL".into(),
            });
        }
        if !self.topology.file.is_file() {
            return Err(SettingsError::Key {
                key: "topology.file".into(),
                message: format!("{} does not exist", self.topology.file.display()),
            });
        }
        self.service.validate()
    }
}

/// A service without settings of its own.
impl Validate for () {
    fn validate(&self) -> Result<(), SettingsError> {
        Ok(())
    }
}

/// Loads settings from `--config`/`VERDICT_CONFIG` and the environment; on error
/// prints it (naming the key) and returns the exit code.
pub fn load_settings<T>(service: &str) -> Result<ServiceSettings<T>, ExitCode>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let mut args = std::env::args().skip(1);
    let mut file = std::env::var_os("VERDICT_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => file = args.next().map(PathBuf::from),
            "--help" | "-h" => {
                println!(
                    "{service} [--config FILE]\nSettings: defaults < FILE (TOML) < VERDICT__SECTION__KEY environment variables."
                );
                return Err(ExitCode::SUCCESS);
            }
            other => {
                eprintln!("{service}: unknown argument `{other}` (only --config FILE)");
                return Err(ExitCode::from(2));
            }
        }
    }
    crate::settings::load(file.as_deref()).map_err(|e| {
        eprintln!("{service}: {e}");
        ExitCode::from(2)
    })
}

/// What a processor may use from its service.
pub struct ServiceContext<'a, T> {
    pub settings: &'a ServiceSettings<T>,
    pub metrics: Arc<Metrics>,
    pub route: &'a Route,
}

/// Starts telemetry and the health/metrics port, builds the processor and runs
/// the engine until SIGTERM/SIGINT. Returns the process exit code.
pub async fn run<T, P>(
    name: &str,
    settings: ServiceSettings<T>,
    build: impl FnOnce(ServiceContext<'_, T>) -> Result<P, String>,
) -> ExitCode
where
    P: Processor,
{
    let _telemetry =
        match crate::telemetry::init_tracing(name, Some(settings.telemetry.otlp_endpoint.as_str()))
        {
            Ok(g) => g,
            Err(e) => return fail(name, &e),
        };
    let topology = match Topology::load(&settings.topology.file, None) {
        Ok(t) => t,
        Err(e) => return fail(name, &e),
    };
    let entry = settings
        .topology
        .service
        .clone()
        .unwrap_or_else(|| name.to_string());
    let Some(service) = topology.service(&entry) else {
        return fail(
            name,
            &format!(
                "topology.service: no [services.{entry}] in {}",
                settings.topology.file.display()
            ),
        );
    };
    let route = Route::from(service);
    let metrics = Metrics::new(name);
    let addr = match crate::http::serve(settings.http.listen, metrics.clone()).await {
        Ok((addr, _task)) => addr,
        Err(e) => return fail(name, &format!("http.listen {}: {e}", settings.http.listen)),
    };
    tracing::info!(%addr, "metrics and health at http://{addr}/metrics /healthz /readyz");
    let processor = match build(ServiceContext {
        settings: &settings,
        metrics: metrics.clone(),
        route: &route,
    }) {
        Ok(p) => p,
        Err(e) => return fail(name, &e),
    };
    match engine::run(
        &settings.kafka,
        &settings.registry.url,
        route,
        &settings.engine,
        processor,
        metrics,
        shutdown_signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}

fn fail(name: &str, e: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("{name}: {e}");
    ExitCode::from(1)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
