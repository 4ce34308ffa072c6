//! Toxiproxy (Shopify's TCP proxy for fault injection, `scripts/toxiproxy.sh`) in front of the
//! broker, the registry or a model server: its HTTP API creates proxies and adds "toxics"
//! (latency, bandwidth, reset peer, timeouts, slicing) to the connections through them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{ScriptServer, free_port};

/// A Toxiproxy server of this test's own on a free loopback port; killed by pid on drop.
pub struct Toxiproxy {
    _server: ScriptServer,
    api: String,
    http: reqwest::Client,
}

/// Which way through a proxy a toxic acts: `Downstream` is what the upstream server sends
/// back to the client, `Upstream` what the client sends.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

impl Toxiproxy {
    pub async fn start() -> Self {
        let mut server = ScriptServer::new("toxiproxy");
        let port = free_port();
        let api = format!("http://127.0.0.1:{port}");
        server
            .spawn(
                &[port.to_string()],
                &format!("{api}/version"),
                Duration::from_secs(30),
            )
            .await;
        Self {
            _server: server,
            api,
            http: reqwest::Client::new(),
        }
    }

    /// A proxy listening on 127.0.0.1:`listen` that forwards to `upstream` (host:port).
    pub async fn proxy(&self, name: &str, listen: u16, upstream: &str) -> Proxy {
        let listen = format!("127.0.0.1:{listen}");
        let proxy = Proxy {
            url: format!("{}/proxies/{name}", self.api),
            http: self.http.clone(),
            listen: listen.clone(),
        };
        proxy
            .call(
                reqwest::Method::POST,
                &format!("{}/proxies", self.api),
                json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true}),
            )
            .await;
        proxy
    }
}

/// One proxy of a [`Toxiproxy`].
pub struct Proxy {
    url: String,
    http: reqwest::Client,
    /// host:port clients connect to.
    pub listen: String,
}

impl Proxy {
    /// `http://` + [`Self::listen`], for HTTP servers behind the proxy.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Adds toxic `name` of `kind` (`latency`, `bandwidth`, `slow_close`, `timeout`,
    /// `reset_peer`, `slicer`, `limit_data`) with its attributes, on every connection.
    pub async fn add(&self, name: &str, kind: &str, stream: Stream, attributes: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("{}/toxics", self.url),
            json!({
                "name": name,
                "type": kind,
                "stream": stream.name(),
                "toxicity": 1.0,
                "attributes": attributes,
            }),
        )
        .await;
    }

    pub async fn remove(&self, name: &str) {
        let url = format!("{}/toxics/{name}", self.url);
        let r = self.http.delete(&url).send().await.expect("toxiproxy API");
        assert!(r.status().is_success(), "DELETE {url}: {}", r.status());
    }

    /// Disabled, the proxy closes every connection and refuses new ones (the server is gone,
    /// as far as its clients can tell); enabled again, it accepts them.
    pub async fn set_enabled(&self, enabled: bool) {
        self.call(
            reqwest::Method::POST,
            &self.url,
            json!({ "enabled": enabled }),
        )
        .await;
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Value) {
        let r = self
            .http
            .request(method.clone(), url)
            .json(&body)
            .send()
            .await
            .expect("toxiproxy API");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{method} {url} {body}: {status} {text}"
        );
    }
}
