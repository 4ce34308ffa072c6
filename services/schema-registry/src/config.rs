//! Registry settings: defaults < `--config` file < `VERDICT__…` environment.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::settings::{SettingsError, Validate};
use verdict_runtime::tls::ServerTls;

use crate::auth::{AuthSettings, Users};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    pub http: HttpSettings,
    pub kafka: KafkaSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// `[http.tls]`: with a certificate and key the API speaks HTTPS only.
    pub tls: ServerTls,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            tls: ServerTls::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The compacted topic holding schemas and configs.
    pub topic: String,
    /// Replication factor used when the registry creates its topic; -1 (the default) takes
    /// the broker's `default.replication.factor`.
    pub replication_factor: i32,
    /// How long a request waits for the log (watermarks, produce, apply).
    pub timeout_ms: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            topic: "_schemas".into(),
            replication_factor: -1,
            timeout_ms: 10_000,
        }
    }
}

impl Validate for RegistrySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        Users::new(&self.auth)?;
        self.http.tls.load("http.tls")?;
        if self.store.topic.trim().is_empty() {
            return Err(SettingsError::Key {
                key: "store.topic".into(),
                message: "must not be empty".into(),
            });
        }
        if self.store.replication_factor != -1 && self.store.replication_factor < 1 {
            return Err(SettingsError::Key {
                key: "store.replication_factor".into(),
                message: "must be -1 (the broker's default.replication.factor) or at least 1"
                    .into(),
            });
        }
        if self.store.timeout_ms < 100 {
            return Err(SettingsError::Key {
                key: "store.timeout_ms".into(),
                message: "must be at least 100".into(),
            });
        }
        Ok(())
    }
}
