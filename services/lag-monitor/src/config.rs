//! lag-monitor settings: defaults < `--config` file < `VERDICT__…` environment.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::service::TelemetrySection;
use verdict_runtime::settings::{SettingsError, Validate};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LagMonitorSettings {
    pub kafka: KafkaSettings,
    pub http: Http,
    pub telemetry: TelemetrySection,
    pub monitor: Monitor,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Dashboard, `/api/groups`, `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Groups to watch; empty = every group except verdict's own tools' (`verdict-reader-*`,
    /// `verdict-redrive-*`, `verdict-metadata`).
    pub groups: Vec<String>,
    pub poll_interval_ms: u64,
    /// Samples per partition that Burrow's evaluation looks at.
    pub window: usize,
    /// A lagging partition whose offset has not moved for this long is STOP.
    pub stop_after_ms: i64,
    /// How much history the dashboard's chart keeps.
    pub history_seconds: u64,
    /// The `cluster_name` label of the metrics.
    pub cluster_name: String,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
        }
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            poll_interval_ms: 5_000,
            window: 10,
            stop_after_ms: 60_000,
            history_seconds: 600,
            cluster_name: "local".into(),
        }
    }
}

impl Validate for LagMonitorSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        let m = &self.monitor;
        let bad = |key: &str, message: &str| {
            Err(SettingsError::Key {
                key: format!("monitor.{key}"),
                message: message.into(),
            })
        };
        if !(100..=600_000).contains(&m.poll_interval_ms) {
            return bad("poll_interval_ms", "must be between 100 and 600000");
        }
        if !(2..=1_000).contains(&m.window) {
            return bad("window", "must be between 2 and 1000 samples");
        }
        if m.stop_after_ms < 1_000 {
            return bad("stop_after_ms", "must be at least 1000");
        }
        if m.history_seconds == 0 || m.history_seconds > 86_400 {
            return bad("history_seconds", "must be between 1 and 86400");
        }
        Ok(())
    }
}
