//! Webhooks in the Standard Webhooks convention: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the tenant's
//! secret (`whsec_<base64 key>`), retried with exponential backoff and full jitter. Callback
//! URLs must be under a prefix of the tenant's allow-list and lead to public addresses, when
//! submitted and when called (a name can be made to resolve elsewhere later), so the gateway
//! never calls arbitrary or internal addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::Sha256;

use crate::jobs::JobStore;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Callback URLs must start with one of these (e.g. `https://hooks.example.com/`);
    /// empty = no callbacks accepted.
    pub allowed_prefixes: Vec<String>,
    /// A tenant's own list, used instead of `allowed_prefixes` for that tenant.
    pub tenant_prefixes: BTreeMap<String, Vec<String>>,
    /// Let callbacks reach loopback, private and link-local addresses (local development
    /// only: a name on the list could otherwise be pointed at 127.0.0.1 or 169.254.169.254).
    pub allow_private_addresses: bool,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            tenant_prefixes: BTreeMap::new(),
            allow_private_addresses: false,
            max_attempts: 6,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
            timeout_ms: 5_000,
        }
    }
}

/// Checks a callback URL against an allow-list: same scheme, host and port as an entry, and a
/// path under its path (`https://hooks.example.com` does not admit
/// `https://hooks.example.com.evil.net/`).
pub fn check_url(url: &str, allowed: &[String]) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("callback_url `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("callback_url `{url}` must be http or https"));
    }
    let admits = |prefix: &String| {
        reqwest::Url::parse(prefix).is_ok_and(|p| {
            p.scheme() == parsed.scheme()
                && p.host() == parsed.host()
                && p.port_or_known_default() == parsed.port_or_known_default()
                && parsed.path().starts_with(p.path())
        })
    };
    if !allowed.iter().any(admits) {
        return Err(format!(
            "callback_url `{url}` is not on the tenant's allow-list \
             (gateway.webhooks.tenant_prefixes, else allowed_prefixes)"
        ));
    }
    Ok(parsed)
}

impl WebhookSettings {
    /// The prefixes `tenant`'s callbacks may use.
    pub fn allowed_for(&self, tenant: &str) -> &[String] {
        self.tenant_prefixes
            .get(tenant)
            .unwrap_or(&self.allowed_prefixes)
    }

    /// The client deliveries go through: it connects only to public addresses, so a name on
    /// the allow-list that resolves (or is made to resolve) elsewhere is not called.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let builder = reqwest::Client::builder()
            // Never follow redirects: a callback may only reach an allowed URL.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(self.timeout_ms));
        let builder = if self.allow_private_addresses {
            builder
        } else {
            builder.dns_resolver(std::sync::Arc::new(PublicOnly))
        };
        builder.build().map_err(|e| e.to_string())
    }
}

/// Whether a callback may reach `ip`: not loopback, private (RFC 1918, unique local),
/// link-local (the cloud metadata address 169.254.169.254 among them), shared (100.64/10),
/// unspecified, broadcast or multicast.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// Where a callback URL's host leads now: every address must be public (unless allowed).
pub async fn check_destination(url: &reqwest::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let host = url.host_str().unwrap_or_default();
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    let addrs: Vec<IpAddr> = match literal {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("callback_url: {host} does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    match addrs.iter().find(|ip| !is_public(**ip)) {
        Some(ip) => Err(format!(
            "callback_url `{url}` leads to {ip}, which is not a public address"
        )),
        None if addrs.is_empty() => Err(format!("callback_url `{url}` has no address")),
        None => Ok(()),
    }
}

/// Resolves callback hosts to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn key_of(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(b64)
        .map_err(|_| "the webhook secret is not whsec_<base64>".to_string())
}

/// `v1,<base64 signature>` of `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)?).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Whether `header` (space-separated `v1,<sig>` entries) holds a valid signature.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &str, header: &str) -> bool {
    let Ok(key) = key_of(secret) else {
        return false;
    };
    header.split_whitespace().any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        mac.verify_slice(&sig).is_ok()
    })
}

/// Full-jitter exponential backoff: a random wait up to `base · 2^attempt`, capped.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64, unit: f64) -> Duration {
    let ceiling = base_ms.saturating_mul(1_u64 << attempt.min(20)).min(max_ms);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let ms = (ceiling as f64 * unit.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(ms.max(base_ms.min(ceiling)))
}

/// Waits for the job to leave `processing`, then POSTs it to `url` until the receiver
/// answers 2xx or the attempts run out; every attempt is recorded on the job.
pub async fn deliver(
    store: std::sync::Arc<JobStore>,
    settings: WebhookSettings,
    client: reqwest::Client,
    secret: String,
    job_id: String,
    url: String,
    wait_for: Duration,
) {
    let Some(job) = store.wait(&job_id, wait_for).await else {
        return;
    };
    let event = match job.status {
        crate::jobs::Status::Processing => return,
        crate::jobs::Status::Complete => "job.completed",
        crate::jobs::Status::InReview => "job.in_review",
        crate::jobs::Status::DeadLettered => "job.dead_lettered",
    };
    let msg_id = format!("msg_{job_id}_{event}");
    let body =
        json!({"type": event, "timestamp": verdict_runtime::now_ms(), "data": job}).to_string();
    let mut attempts: Vec<Json> = Vec::new();
    for attempt in 0..settings.max_attempts {
        let ts = verdict_runtime::now_ms() / 1000;
        let signature = match sign(&secret, &msg_id, ts, &body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %job.tenant, "cannot sign a webhook");
                attempts.push(json!({"at": verdict_runtime::now_ms(), "error": "no valid webhook secret for the tenant"}));
                store.set_webhook(
                    &job_id,
                    json!({"url": url, "delivered": false, "attempts": attempts}),
                );
                return;
            }
        };
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .timeout(Duration::from_millis(settings.timeout_ms))
            .body(body.clone())
            .send()
            .await;
        let (ok, outcome) = match sent {
            Ok(r) => (
                r.status().is_success(),
                json!({"status": r.status().as_u16()}),
            ),
            Err(e) => (
                false,
                json!({"error": if e.is_timeout() { "timeout" } else { "connection failed" }}),
            ),
        };
        let mut entry = json!({"at": verdict_runtime::now_ms()});
        if let (Some(e), Some(o)) = (entry.as_object_mut(), outcome.as_object()) {
            e.extend(o.clone());
        }
        attempts.push(entry);
        store.set_webhook(
            &job_id,
            json!({"url": url, "delivered": ok, "attempts": attempts}),
        );
        if ok || attempt + 1 == settings.max_attempts {
            return;
        }
        let wait = backoff(
            attempt,
            settings.backoff_base_ms,
            settings.backoff_max_ms,
            rand::random::<f64>(),
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let sig = sign(SECRET, "msg_1", 1_700_000_000, "{\"a\":1}").expect("sign");
        assert!(sig.starts_with("v1,"));
        assert!(verify(SECRET, "msg_1", 1_700_000_000, "{\"a\":1}", &sig));
        assert!(
            !verify(SECRET, "msg_1", 1_700_000_000, "{\"a\":2}", &sig),
            "body changed"
        );
        assert!(
            !verify(SECRET, "msg_1", 1_700_000_001, "{\"a\":1}", &sig),
            "timestamp changed"
        );
        assert!(
            !verify("whsec_b3RoZXI=", "msg_1", 1_700_000_000, "{\"a\":1}", &sig),
            "other secret"
        );
        assert!(verify(
            SECRET,
            "msg_1",
            1_700_000_000,
            "{\"a\":1}",
            &format!("v1,bm9wZQ== {sig}")
        ));
    }

    #[test]
    fn only_allowed_http_urls_are_called_back() {
        let allowed = vec!["https://hooks.example.com/".to_string()];
        assert!(check_url("https://hooks.example.com/verdict", &allowed).is_ok());
        assert!(check_url("http://169.254.169.254/latest", &allowed).is_err());
        assert!(check_url("https://hooks.example.com.evil.net/", &allowed).is_err());
        assert!(check_url("file:///etc/passwd", &allowed).is_err());
        assert!(check_url("https://hooks.example.com/x", &[]).is_err());
    }

    #[test]
    fn only_public_addresses_are_callback_targets() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        assert_eq!(backoff(0, 500, 60_000, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 500, 60_000, 1.0), Duration::from_millis(4_000));
        assert_eq!(backoff(30, 500, 60_000, 1.0), Duration::from_millis(60_000));
        assert_eq!(
            backoff(3, 500, 60_000, 0.0),
            Duration::from_millis(500),
            "never below base"
        );
        assert!(backoff(3, 500, 60_000, 0.5) == Duration::from_millis(2_000));
    }
}
