//! A small client for the Confluent Schema Registry REST API: the admin calls the
//! CLI needs (register, compatibility check). Record serialisation goes through
//! `schema_registry_converter`, which keeps its own cache.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::secret::Secret;

pub const REGISTRY_URL_ENV: &str = "VERDICT_SCHEMA_REGISTRY_URL";
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081";
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// How long one registry call may take (`registry.timeout_ms` for a service's records).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Registry URL from `VERDICT_SCHEMA_REGISTRY_URL`, else the local default.
pub fn default_registry_url() -> String {
    std::env::var(REGISTRY_URL_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_REGISTRY_URL.to_string())
}

/// Where a schema registry answers and how to sign in to it: HTTP basic auth, what
/// Confluent's clients take as `basic.auth.user.info`, and for `https` the CA its
/// certificate is checked against when not the system's (`ssl.ca.location`). `Debug` never
/// shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Registry {
    url: String,
    basic_auth: Option<(String, Secret)>,
    /// PEM certificates trusted besides the system's.
    ca_pem: Option<Arc<[u8]>>,
}

impl Registry {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_string(),
            basic_auth: None,
            ca_pem: None,
        }
    }

    /// Trusts the CA certificates in the PEM file `path` (besides the system's).
    pub fn with_ca_file(self, path: &std::path::Path) -> Result<Self, RegistryError> {
        let pem = std::fs::read(path).map_err(|e| {
            RegistryError::Settings(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => Ok(Self {
                ca_pem: Some(pem.into()),
                ..self
            }),
            Ok(_) => Err(RegistryError::Settings(format!(
                "the CA file {} holds no PEM certificate",
                path.display()
            ))),
            Err(e) => Err(RegistryError::Settings(format!(
                "the CA file {}: {e}",
                path.display()
            ))),
        }
    }

    /// The CA certificates (PEM) trusted besides the system's, if any.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// An HTTP client builder for this registry: its CA trusted. Every client that talks to
    /// the registry starts here.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        let certs = self
            .ca_pem
            .as_deref()
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok())
            .unwrap_or_default();
        certs
            .into_iter()
            .fold(builder, reqwest::ClientBuilder::add_root_certificate)
    }

    /// An HTTP client for this registry whose every call is bounded by `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, RegistryError> {
        self.client_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Settings(format!("an HTTP client: {e}")))
    }

    /// Signs every request in as `user`.
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.basic_auth = Some((user.into(), password));
        self
    }

    /// Signs in with Confluent's `basic.auth.user.info` (`user:password`).
    pub fn with_user_info(self, user_info: &str) -> Result<Self, RegistryError> {
        match user_info.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(self.with_basic_auth(user, Secret::new(password)))
            }
            _ => Err(RegistryError::Settings(
                "basic.auth.user.info must be user:password".into(),
            )),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The user and password requests are signed in with, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.expose()))
    }

    /// `request` signed in as this registry's user.
    pub fn sign(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.basic_auth() {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("user", &self.basic_auth.as_ref().map(|(user, _)| user))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl From<&str> for Registry {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for Registry {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&String> for Registry {
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl From<&Registry> for Registry {
    fn from(registry: &Registry) -> Self {
        registry.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("schema registry answered {status} (error_code {code}): {message}")]
    Api {
        status: u16,
        code: i64,
        message: String,
    },
    #[error("schema registry sent an unexpected answer: {0}")]
    Protocol(String),
    #[error("schema registry client settings: {0}")]
    Settings(String),
}

/// `e` and its causes, outermost first: what a TLS failure says is in a cause
/// ("certificate verify failed").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

impl RegistryError {
    /// The registry's certificate was not trusted (an unknown or expired CA, another host).
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self, Self::Unreachable { message, .. } if message.contains("certificate"))
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error_code: i64,
    message: String,
}

#[derive(Clone, Debug)]
pub struct RegistryClient {
    registry: Registry,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(registry: impl Into<Registry>) -> Result<Self, RegistryError> {
        let registry = registry.into();
        let http = registry.client(DEFAULT_TIMEOUT)?;
        Ok(Self { registry, http })
    }

    pub fn url(&self) -> &str {
        self.registry.url()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{}", self.registry.url(), path);
        let mut req = self
            .registry
            .sign(self.http.request(method, &url))
            .header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            req = req
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| RegistryError::Unreachable {
            url: self.registry.url().to_string(),
            message: with_causes(&e),
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| RegistryError::Protocol(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| RegistryError::Protocol(format!("{e}: {text}")));
        }
        match serde_json::from_str::<ApiErrorBody>(&text) {
            Ok(b) => Err(RegistryError::Api {
                status: status.as_u16(),
                code: b.error_code,
                message: b.message,
            }),
            Err(_) => Err(RegistryError::Api {
                status: status.as_u16(),
                code: -1,
                message: text,
            }),
        }
    }

    /// `GET /subjects`.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let v = self.call(reqwest::Method::GET, "/subjects", None).await?;
        serde_json::from_value(v).map_err(|e| RegistryError::Protocol(e.to_string()))
    }

    /// Registers an Avro schema under `subject`; returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode(subject));
        let v = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "schema": schema })),
            )
            .await?;
        v.get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Protocol(format!("no id in {v}")))
    }

    /// Checks `schema` against the subject's latest version under the subject's
    /// compatibility level. Returns the reasons it is incompatible (empty when it
    /// is compatible or the subject does not exist yet).
    pub async fn incompatibilities(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let path = format!(
            "/compatibility/subjects/{}/versions/latest?verbose=true",
            encode(subject)
        );
        match self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "schema": schema })),
            )
            .await
        {
            Ok(v) => {
                if v.get("is_compatible").and_then(serde_json::Value::as_bool) == Some(true) {
                    return Ok(Vec::new());
                }
                let reasons = v
                    .get("messages")
                    .and_then(|m| serde_json::from_value::<Vec<String>>(m.clone()).ok())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| vec!["incompatible".to_string()]);
                Ok(reasons)
            }
            Err(RegistryError::Api {
                code: 40401 | 40402,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Percent-encodes a subject for a URL path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_signs_in_and_is_never_shown() {
        let r = Registry::new("http://127.0.0.1:8081/")
            .with_user_info("reader:pa:ss")
            .expect("in a test");
        assert_eq!(r.url(), "http://127.0.0.1:8081");
        assert_eq!(r.basic_auth(), Some(("reader", "pa:ss")));
        assert!(!format!("{r:?}").contains("pa:ss"), "{r:?}");
        assert!(Registry::new("http://x").with_user_info("nocolon").is_err());
        assert!(Registry::new("http://x").with_user_info(":pw").is_err());
    }

    #[test]
    fn subjects_are_path_encoded() {
        assert_eq!(super::encode("transactions-value"), "transactions-value");
        assert_eq!(super::encode("a/b c"), "a%2Fb%20c");
    }
}
