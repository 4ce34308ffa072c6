//! Jaeger (all-in-one with in-memory storage, `scripts/jaeger.sh`) on loopback: services export
//! their spans to it over OTLP/HTTP, and a test reads the traces back from its query API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{ScriptServer, free_port_block};

/// A Jaeger of this test's own on three free loopback ports (OTLP, the query API's gRPC, the UI
/// and query API); killed by pid on drop.
pub struct Jaeger {
    server: ScriptServer,
    port: u16,
    http: reqwest::Client,
}

impl Jaeger {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With these variables set for `scripts/jaeger.sh` (`VERDICT_JAEGER_UI`, …).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let port = free_port_block(3);
        let mut server = ScriptServer::new("jaeger");
        for (key, value) in env {
            server.env(key, value);
        }
        let dir = server.dir.path().display().to_string();
        let query = format!("http://127.0.0.1:{}", port + 2);
        server
            .spawn(
                &[port.to_string(), (port + 2).to_string(), dir],
                &format!("{query}/api/services"),
                Duration::from_secs(60),
            )
            .await;
        Self {
            server,
            port,
            http: reqwest::Client::new(),
        }
    }

    /// Where services send spans (`telemetry.otlp_endpoint`).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// The UI and the query API.
    pub fn ui(&self) -> String {
        format!("http://127.0.0.1:{}", self.port + 2)
    }

    pub fn log(&self) -> String {
        self.server.log()
    }

    /// `GET path` of the UI's server: the status and the body.
    pub async fn page(&self, path: &str) -> (u16, String) {
        let reply = self
            .http
            .get(format!("{}{path}", self.ui()))
            .send()
            .await
            .expect("Jaeger answers");
        let status = reply.status().as_u16();
        (status, reply.text().await.expect("a body"))
    }

    /// The trace that has a span of `service` tagged `event_id`, once `complete` holds for it
    /// (spans of other services arrive as they export them); panics with what was seen after
    /// `timeout`.
    pub async fn trace_of(
        &self,
        service: &str,
        event_id: &str,
        timeout: Duration,
        complete: impl Fn(&Trace) -> bool,
    ) -> Trace {
        let tags = serde_json::json!({ "event_id": event_id }).to_string();
        let started = Instant::now();
        loop {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/api/traces", self.ui()),
                [
                    ("service", service),
                    ("tags", tags.as_str()),
                    ("lookback", "1h"),
                    ("limit", "20"),
                ],
            )
            .expect("a URL");
            let found = self
                .http
                .get(url)
                .send()
                .await
                .expect("Jaeger's query API")
                .json::<Value>()
                .await
                .expect("JSON from Jaeger");
            let traces: Vec<Trace> = found["data"]
                .as_array()
                .map(|a| a.iter().map(Trace::from_json).collect())
                .unwrap_or_default();
            if let Some(t) = traces.iter().find(|t| complete(t)) {
                return t.clone();
            }
            if started.elapsed() > timeout {
                let seen: Vec<String> = traces.iter().map(Trace::tree).collect();
                let services = self
                    .http
                    .get(format!("{}/api/services", self.ui()))
                    .send()
                    .await
                    .expect("Jaeger's query API")
                    .text()
                    .await
                    .unwrap_or_default();
                panic!(
                    "no complete trace of {service} with event_id={event_id} in {timeout:?}; \
                     seen:\n{}\nservices: {services}\nJaeger's log:\n{}",
                    seen.join("\n---\n"),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One span as Jaeger's query API gives it.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    pub parent: Option<String>,
    pub service: String,
    pub operation: String,
    pub start_us: i64,
    pub tags: BTreeMap<String, Value>,
}

impl Span {
    pub fn tag(&self, key: &str) -> Option<&Value> {
        self.tags.get(key)
    }
}

/// A trace's spans from every service that exported some.
#[derive(Debug, Clone)]
pub struct Trace {
    pub spans: Vec<Span>,
}

impl Trace {
    fn from_json(trace: &Value) -> Self {
        let services: BTreeMap<&str, &str> = trace["processes"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(id, proc)| (id.as_str(), proc["serviceName"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        let spans = trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Span {
                trace_id: s["traceID"].as_str().unwrap_or("").to_string(),
                id: s["spanID"].as_str().unwrap_or("").to_string(),
                parent: s["references"].as_array().and_then(|refs| {
                    refs.iter()
                        .find(|r| r["refType"] == "CHILD_OF")
                        .and_then(|r| r["spanID"].as_str().map(String::from))
                }),
                service: services
                    .get(s["processID"].as_str().unwrap_or(""))
                    .copied()
                    .unwrap_or("")
                    .to_string(),
                operation: s["operationName"].as_str().unwrap_or("").to_string(),
                start_us: s["startTime"].as_i64().unwrap_or(0),
                tags: s["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| Some((t["key"].as_str()?.to_string(), t["value"].clone())))
                    .collect(),
            })
            .collect();
        Self { spans }
    }

    /// The first span (by start) of `service` named `operation`.
    pub fn find(&self, service: &str, operation: &str) -> Option<&Span> {
        self.spans
            .iter()
            .filter(|s| s.service == service && s.operation == operation)
            .min_by_key(|s| s.start_us)
    }

    /// The spans whose parent is `span`, by start.
    pub fn children(&self, span: &Span) -> Vec<&Span> {
        let mut c: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent.as_deref() == Some(span.id.as_str()))
            .collect();
        c.sort_by_key(|s| s.start_us);
        c
    }

    /// The names of `span`'s children, by start.
    pub fn child_names(&self, span: &Span) -> Vec<&str> {
        self.children(span)
            .into_iter()
            .map(|s| s.operation.as_str())
            .collect()
    }

    /// The tree as text (service: operation, indented under its parent), for failure messages.
    pub fn tree(&self) -> String {
        fn walk(t: &Trace, s: &Span, depth: usize, out: &mut String) {
            out.push_str(&format!(
                "{}{}: {}\n",
                "  ".repeat(depth),
                s.service,
                s.operation
            ));
            for c in t.children(s) {
                walk(t, c, depth + 1, out);
            }
        }
        let ids: Vec<&str> = self.spans.iter().map(|s| s.id.as_str()).collect();
        let mut out = String::new();
        let mut roots: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent.as_deref().is_none_or(|p| !ids.contains(&p)))
            .collect();
        roots.sort_by_key(|s| s.start_us);
        for r in roots {
            walk(self, r, 0, &mut out);
        }
        out
    }
}
