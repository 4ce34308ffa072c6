//! A small client for the Confluent Schema Registry REST API: the admin calls the
//! CLI needs (register, compatibility check). Record serialisation goes through
//! `schema_registry_converter`, which keeps its own cache.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

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
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error_code: i64,
    message: String,
}

#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(base: impl Into<String>) -> Result<Self, RegistryError> {
        let base = base.into().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|e| RegistryError::Protocol(e.to_string()))?;
        Ok(Self { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            req = req
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| RegistryError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
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
    #[test]
    fn subjects_are_path_encoded() {
        assert_eq!(super::encode("transactions-value"), "transactions-value");
        assert_eq!(super::encode("a/b c"), "a%2Fb%20c");
    }
}
