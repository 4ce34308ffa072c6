//! A schema registry that speaks the Confluent Schema Registry REST API for Avro
//! and keeps its state in a compacted Kafka topic (`_schemas`).

pub mod api;
pub mod auth;
pub mod compat;
pub mod config;
pub mod error;
pub mod log;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use verdict_runtime::tls::Acceptor;

pub use auth::Users;
pub use config::RegistrySettings;
pub use log::SchemaLog;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Kafka(#[from] verdict_runtime::kafka::KafkaError),
    #[error(transparent)]
    Settings(#[from] verdict_runtime::settings::SettingsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the HTTP listener (before replay, so a busy port fails fast).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serves the API on `listener` (over TLS with `tls`), to `users` (anyone when there are
/// none), until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Acceptor>,
    log: Arc<SchemaLog>,
    users: Arc<Users>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    verdict_runtime::http::serve_on(listener, app(log, users), tls, shutdown).await
}

/// The API (behind `users`' basic auth when there are any) with `/metrics` and `/readyz`
/// beside it (open, as `GET /` is), every request counted and timed by its route.
pub fn app(log: Arc<SchemaLog>, users: Arc<Users>) -> axum::Router {
    use axum::routing::get;
    let measured = Arc::new(metrics::RegistryMetrics::default());
    let probes = axum::Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(metrics::readyz))
        .with_state((log.clone(), measured.clone()));
    api::router(log, users)
        .merge(probes)
        .layer(axum::middleware::from_fn_with_state(
            measured,
            metrics::record,
        ))
}

/// A registry running in this process (used by tests and embedders).
pub struct RunningRegistry {
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningRegistry {
    /// Opens the log, replays it and serves on `settings.http.listen`
    /// (port 0 picks a free port).
    pub async fn start(settings: &RegistrySettings) -> Result<Self, StartError> {
        let listener = bind(settings.http.listen).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.http.listen,
            source,
        })?;
        let users = Arc::new(Users::new(&settings.auth)?);
        let tls = settings.http.tls.load("http.tls")?;
        let log = Arc::new(SchemaLog::open(&settings.kafka, &settings.store).await?);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls, log, users, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            tls: settings.http.tls.enabled(),
            stop: Some(tx),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `https://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}
