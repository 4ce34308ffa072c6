//! gateway: settings → routes from the topology → follow the job topics → serve `/v1`.

use std::process::ExitCode;

use gateway::config::GatewaySettings;
use verdict_runtime::service::{self, Host};

const NAME: &str = "gateway";

#[tokio::main]
async fn main() -> ExitCode {
    let settings: GatewaySettings = match service::load_settings(NAME) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (app, followed) = match gateway::build(&settings) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    if settings.gateway.keys.iter().all(|k| k.revoked) {
        tracing::warn!("no active API keys: every request will be refused (gateway.keys)");
    }
    // The API on its port, the metrics (every tenant and key) and health on another.
    let mut host = match Host::start(
        NAME,
        settings.http.admin_listen,
        &settings.telemetry,
        axum::Router::new(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    // Checked at start-up (settings validation): only an unreadable file since then fails.
    let tls = match settings.http.tls.load("http.tls") {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = host
        .serve_api(
            "http.listen",
            settings.http.listen,
            tls,
            gateway::api::router(app.clone()),
        )
        .await
    {
        eprintln!("{NAME}: {e}");
        return ExitCode::from(1);
    }
    let usage = app.usage.clone();
    host.metrics.register_external(|r| {
        r.register(
            "verdict_gateway_requests",
            "Admitted requests by API key id, tenant and status class",
            usage,
        );
    });
    host.health.depends_on_registry(&app.registry, true);
    let lookback = i64::try_from(settings.gateway.job_ttl_ms).unwrap_or(i64::MAX);
    let watched = [&app.transactions, &app.documents]
        .iter()
        .map(|r| gateway::pipelines::Watched {
            kind: r.kind.to_string(),
            service: r.service.clone(),
            group: r.group.clone(),
            input: r.topic.clone(),
        })
        .collect();
    let watch = app.pipelines.clone().watch(
        settings.kafka.clone(),
        watched,
        std::time::Duration::from_millis(settings.gateway.adaptive.poll_interval_ms),
    );
    // Ready once the store has caught up with the history it reads: before that a job
    // decided a moment ago could be reported unknown, an Idempotency-Key not recognised.
    let metrics = host.metrics.clone();
    let follow = gateway::jobs::follow(
        &settings.kafka,
        &settings.registry,
        followed,
        lookback,
        settings.gateway.catch_up_records,
        app.store.clone(),
        move |c| {
            tracing::info!(
                records = c.records,
                seconds = c.took.as_secs_f64(),
                "caught up with the job topics"
            );
            metrics.set_ready(true);
        },
    );
    host.run(async {
        tokio::select! {
            () = service::shutdown_signal() => Ok(()),
            r = follow => r,
            r = watch => r,
        }
    })
    .await
}
