//! lag-monitor: settings → serve (dashboard, API, metrics) → poll groups until stopped.

use std::process::ExitCode;

use lag_monitor::config::LagMonitorSettings;
use lag_monitor::monitor::Monitor;
use verdict_runtime::service::{self, Host};

const NAME: &str = "lag-monitor";

#[tokio::main]
async fn main() -> ExitCode {
    let settings: LagMonitorSettings = match service::load_settings(NAME) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let monitor = match Monitor::new(&settings) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    let routes = lag_monitor::dashboard::router(monitor.clone());
    let host = match Host::start(NAME, settings.http.listen, &settings.telemetry, routes).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(1);
        }
    };
    monitor.register_metrics(&host.metrics);
    host.metrics.set_ready(true);
    host.run(monitor.run(service::shutdown_signal())).await
}
