//! The per-service HTTP port: `/metrics`, `/healthz` (the process serves), `/readyz` (the
//! workload says it is ready, the dead-letter guard is not tripped, and every required
//! dependency answers), plus whatever routes the service itself serves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::tls::Acceptor;

/// How long `/readyz` waits for a dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Something a service needs to be of use, checked on every `/readyz` with a GET.
#[derive(Clone, Debug)]
struct Dependency {
    name: String,
    url: String,
    /// Who the GET signs in as (a schema registry behind basic auth).
    registry: Option<crate::registry::Registry>,
    /// The client asking: one that trusts the dependency's CA.
    client: reqwest::Client,
    /// Unready without it; otherwise it only shows as `degraded`.
    required: bool,
}

/// What `/readyz` reports.
pub struct Health {
    metrics: Arc<Metrics>,
    dependencies: Mutex<Vec<Dependency>>,
    client: reqwest::Client,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            dependencies: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .build()
                .unwrap_or_default(),
        })
    }

    /// Adds a dependency: `/readyz` GETs `url` and wants a 2xx. Without a `required` one the
    /// service is not ready; without another one it is ready but says it is degraded.
    pub fn depends_on(&self, name: &str, url: &str, required: bool) {
        self.add(Dependency {
            name: name.into(),
            url: url.into(),
            registry: None,
            client: self.client.clone(),
            required,
        });
    }

    /// Adds the schema registry as a dependency: `GET /subjects` signed in as the service's
    /// registry user, so a registry that refuses it makes the service unready too.
    pub fn depends_on_registry(&self, registry: &crate::registry::Registry, required: bool) {
        self.add(Dependency {
            name: "schema registry".into(),
            url: format!("{}/subjects", registry.url()),
            registry: Some(registry.clone()),
            client: registry
                .client(PROBE_TIMEOUT)
                .unwrap_or_else(|_| self.client.clone()),
            required,
        });
    }

    fn add(&self, dependency: Dependency) {
        if let Ok(mut deps) = self.dependencies.lock() {
            deps.push(dependency);
        }
    }

    async fn readiness(&self) -> (bool, String) {
        let mut ready = true;
        let mut lines = Vec::new();
        if self.metrics.guard_tripped.get() != 0 {
            ready = false;
            lines.push("dead-letter guard tripped".to_string());
        } else if !self.metrics.is_ready() {
            ready = false;
            lines.push("not started yet (no partitions assigned, or still loading)".to_string());
        }
        let deps = self
            .dependencies
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        for dep in deps {
            let request = dep.client.get(&dep.url);
            let request = match &dep.registry {
                Some(registry) => registry.sign(request),
                None => request,
            };
            let fault = match request.send().await {
                Ok(r) if r.status().is_success() => continue,
                Ok(r) => format!("answers {}", r.status()),
                Err(_) => "does not answer".to_string(),
            };
            ready &= !dep.required;
            lines.push(format!(
                "{}: {} {fault}{}",
                dep.name,
                dep.url,
                if dep.required { "" } else { " (degraded)" }
            ));
        }
        let body = if lines.is_empty() {
            "ready\n".to_string()
        } else {
            format!(
                "{}: {}\n",
                if ready { "ready" } else { "not ready" },
                lines.join("; ")
            )
        };
        (ready, body)
    }
}

/// Serves the health and metrics routes plus `routes` on `addr` until `shutdown` resolves
/// (requests in flight then finish).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    routes: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let metrics = health.metrics.clone();
    let app = routes
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || async move {
                let (ready, body) = health.readiness().await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, body).into_response()
            }),
        );
    serve_routes(addr, app, None, shutdown).await
}

/// Serves `routes` alone on `addr` (over TLS with `tls`) until `shutdown` resolves
/// (requests in flight then finish): an API kept apart from the health and metrics routes.
pub async fn serve_routes(
    addr: SocketAddr,
    routes: Router,
    tls: Option<Acceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = serve_on(listener, routes, tls, shutdown).await {
            tracing::error!(error = %e, %bound, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}

/// How long a server over TLS waits for connections to close once told to stop.
const TLS_DRAIN: Duration = Duration::from_secs(10);

/// Serves `routes` on a bound `listener`, over TLS with `tls` (HTTP/2 or HTTP/1.1, as the
/// client offers) and plain HTTP without, until `shutdown` resolves; requests in flight
/// then finish.
pub async fn serve_on(
    listener: TcpListener,
    routes: Router,
    tls: Option<Acceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, routes)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    let stop = tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(TLS_DRAIN));
    });
    let served = axum_server::Server::<SocketAddr>::from_listener(listener)
        .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls.config()))
        .handle(handle)
        .serve(routes.into_make_service())
        .await;
    stop.abort();
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::secret::Secret;

    /// A registry stand-in that answers `/subjects` only to `reader:pw`.
    async fn registry() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("in a test");
        let addr = listener.local_addr().expect("in a test");
        let app = Router::new().route(
            "/subjects",
            get(|headers: axum::http::HeaderMap| async move {
                use base64::Engine as _;
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("reader:pw")
                );
                if headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some(want.as_str())
                {
                    (StatusCode::OK, "[]")
                } else {
                    (StatusCode::UNAUTHORIZED, "{}")
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn readiness_asks_the_registry_as_the_services_user() {
        let url = registry().await;
        let ready_as = |password: &str| {
            let metrics = Metrics::new("test");
            metrics.set_ready(true);
            let health = Health::new(metrics);
            health.depends_on_registry(
                &Registry::new(&url).with_basic_auth("reader", Secret::new(password)),
                true,
            );
            async move { health.readiness().await }
        };
        assert_eq!(ready_as("pw").await, (true, "ready\n".to_string()));
        let (ready, body) = ready_as("wrong").await;
        assert!(!ready);
        assert_eq!(
            body,
            format!("not ready: schema registry: {url}/subjects answers 401 Unauthorized\n")
        );
    }
}
