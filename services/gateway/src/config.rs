//! gateway settings: defaults < `--config` file < `VERDICT__…` environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::service::{RegistrySection, TelemetrySection, TopologySection};
use verdict_runtime::settings::{SettingsError, Validate};
use verdict_runtime::tls::ServerTls;

use crate::auth::Scope;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    pub kafka: KafkaSettings,
    pub registry: RegistrySection,
    pub http: Http,
    pub topology: TopologySection,
    pub telemetry: TelemetrySection,
    pub gateway: Gateway,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// The API (`/v1/...`) and nothing else.
    pub listen: SocketAddr,
    /// `/metrics` (every tenant and key id, by volume), `/healthz`, `/readyz` (it names the
    /// dependencies' addresses): for the operators' network, never the API clients'.
    pub admin_listen: SocketAddr,
    /// `[http.tls]`: with a certificate and key the API (`listen`) speaks HTTPS only.
    pub tls: ServerTls,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9471)),
            tls: ServerTls::default(),
        }
    }
}

/// An API key as stored: its SHA-256 (hex), never the key itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (never the key).
    pub id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub revoked: bool,
    /// `interactive` keys keep their limits when a pipeline lags; `batch` keys are slowed.
    #[serde(default)]
    pub tier: Tier,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Interactive,
    Batch,
}

/// Shrinking lower-priority limits while a pipeline lags.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptive {
    /// Lag (seconds, as the lag monitor computes it) of the service a request feeds above
    /// which `batch` keys get `batch_factor` of their limits.
    pub lag_threshold_seconds: f64,
    pub batch_factor: f64,
    /// How often the pipelines' lag is read.
    pub poll_interval_ms: u64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            lag_threshold_seconds: 30.0,
            batch_factor: 0.1,
            poll_interval_ms: 5_000,
        }
    }
}

/// A tenant's request limit: a token bucket of `burst` requests refilled at
/// `requests_per_minute`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    pub requests_per_minute: u32,
    pub burst: u32,
}

/// A tenant's token budget for documents: `tokens_per_hour`, spent by each document's
/// estimated tokens (characters / 4).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenBudget {
    pub tokens_per_hour: u32,
}

impl Default for TokenBudget {
    fn default() -> Self {
        Self {
            tokens_per_hour: 2_000_000,
        }
    }
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            burst: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    pub keys: Vec<ApiKey>,
    /// Limits by tenant; tenants not listed get `default_limits`.
    pub tenants: BTreeMap<String, TenantLimits>,
    pub default_limits: TenantLimits,
    /// Token budgets by tenant; tenants not listed get `default_token_budget`.
    pub token_budgets: BTreeMap<String, TokenBudget>,
    pub default_token_budget: TokenBudget,
    pub adaptive: Adaptive,
    /// The longest `?wait=` a request may ask for.
    pub max_wait_ms: u64,
    /// How long jobs are remembered (and how far back a starting instance reads).
    pub job_ttl_ms: u64,
    /// The job store's memory: past it the least recently changed jobs go first.
    pub job_store_bytes: usize,
    /// At most this many records of history (within `job_ttl_ms`) a starting instance reads,
    /// shared evenly by the partitions it follows, before it says it is ready: the newest.
    pub catch_up_records: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Heartbeat comments on an SSE stream while nothing happens.
    pub sse_heartbeat_ms: u64,
    /// Open SSE streams a tenant may hold at once (each holds a connection and a waiter).
    pub max_streams_per_tenant: usize,
    pub webhooks: crate::webhooks::WebhookSettings,
    /// Where resolved reviews go (`POST /v1/reviews/{id}`); must be in the topology.
    pub resolutions_topic: String,
    /// Each tenant's webhook signing secret, `whsec_<base64>` (never printed).
    pub webhook_secrets: BTreeMap<String, verdict_runtime::settings::Secret>,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            tenants: BTreeMap::new(),
            default_limits: TenantLimits::default(),
            token_budgets: BTreeMap::new(),
            default_token_budget: TokenBudget::default(),
            adaptive: Adaptive::default(),
            max_wait_ms: 30_000,
            job_ttl_ms: 3_600_000,
            job_store_bytes: 64 << 20,
            catch_up_records: 100_000,
            max_body_bytes: 1_000_000,
            sse_heartbeat_ms: 15_000,
            max_streams_per_tenant: 32,
            webhooks: crate::webhooks::WebhookSettings::default(),
            resolutions_topic: "review-resolutions".into(),
            webhook_secrets: BTreeMap::new(),
        }
    }
}

impl Validate for GatewaySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        self.kafka.validate()?;
        self.registry.validate()?;
        self.http.tls.load("http.tls")?;
        let bad = |key: String, message: String| Err(SettingsError::Key { key, message });
        if self.http.admin_listen == self.http.listen && self.http.listen.port() != 0 {
            return bad(
                "http.admin_listen".into(),
                format!(
                    "must differ from http.listen ({}): the metrics name every tenant and key",
                    self.http.listen
                ),
            );
        }
        let g = &self.gateway;
        let mut active: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, k) in g.keys.iter().enumerate() {
            let key = format!("gateway.keys[{i}]");
            if k.sha256.len() != 64
                || !k
                    .sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return bad(
                    format!("{key}.sha256"),
                    "must be 64 lower-case hex digits (sha256sum of the key)".into(),
                );
            }
            if k.tenant.trim().is_empty() {
                return bad(format!("{key}.tenant"), "must name a tenant".into());
            }
            if !k.revoked {
                let n = active.entry(&k.tenant).or_default();
                *n += 1;
                if *n > 2 {
                    return bad(
                        format!("{key}.revoked"),
                        format!(
                            "tenant {} already has two active keys (rotate: add the new one, revoke the old one)",
                            k.tenant
                        ),
                    );
                }
            }
        }
        for (t, l) in g
            .tenants
            .iter()
            .map(|(t, l)| (format!("gateway.tenants.{t}"), l))
            .chain(std::iter::once((
                "gateway.default_limits".to_string(),
                &g.default_limits,
            )))
        {
            if l.requests_per_minute == 0 || l.burst == 0 {
                return bad(t, "requests_per_minute and burst must be at least 1".into());
            }
        }
        if !(1..=300_000).contains(&g.max_wait_ms) {
            return bad(
                "gateway.max_wait_ms".into(),
                "must be between 1 and 300000".into(),
            );
        }
        for (i, prefix) in g.webhooks.allowed_prefixes.iter().enumerate() {
            let ok = prefix.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && rest.contains('/')
            });
            if !ok {
                return bad(
                    format!("gateway.webhooks.allowed_prefixes[{i}]"),
                    "must be an http(s) URL prefix with a path, e.g. https://hooks.example.com/"
                        .into(),
                );
            }
        }
        for (tenant, secret) in &g.webhook_secrets {
            if crate::webhooks::sign(secret.expose(), "check", 0, "").is_err() {
                return bad(
                    format!("gateway.webhook_secrets.{tenant}"),
                    "must be whsec_<base64 key>".into(),
                );
            }
        }
        if !(g.adaptive.batch_factor > 0.0 && g.adaptive.batch_factor <= 1.0) {
            return bad(
                "gateway.adaptive.batch_factor".into(),
                "must be in (0, 1]".into(),
            );
        }
        if g.adaptive.poll_interval_ms < 100 {
            return bad(
                "gateway.adaptive.poll_interval_ms".into(),
                "must be at least 100".into(),
            );
        }
        if g.token_budgets
            .values()
            .chain([&g.default_token_budget])
            .any(|b| b.tokens_per_hour == 0)
        {
            return bad(
                "gateway.token_budgets".into(),
                "tokens_per_hour must be at least 1".into(),
            );
        }
        if g.job_store_bytes < 1 << 20 {
            return bad(
                "gateway.job_store_bytes".into(),
                "must be at least 1 MiB (1048576)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_must_not_be_the_api_port() {
        let mut s = GatewaySettings::default();
        assert!(s.validate().is_ok(), "the defaults are apart");
        s.http.admin_listen = s.http.listen;
        match s.validate() {
            Err(SettingsError::Key { key, .. }) => assert_eq!(key, "http.admin_listen"),
            other => panic!("expected http.admin_listen to be refused, got {other:?}"),
        }
    }
}
