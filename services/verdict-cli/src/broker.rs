//! Apache Kafka for the local stack, the tests and the benchmarks: its jars (resolved from Maven
//! Central by `scripts/install.sh`, or an unpacked distribution in `KAFKA_HOME`), KRaft brokers
//! on loopback (one node, or a cluster of combined broker-controllers), and Kafka's own
//! command-line tools run from the same jars.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use base64::Engine;

use verdict_runtime::kafka::KafkaSettings;

use crate::CliError;
use crate::secure::Secrets;
use crate::stack::spawn_logged;

/// `scripts/kafka/pom.xml`: the one place the Kafka version is written down.
const POM: &str = include_str!("../../../scripts/kafka/pom.xml");
const BROKER_LOG4J: &str = include_str!("../../../scripts/kafka/log4j2-broker.properties");
const TOOLS_LOG4J: &str = include_str!("../../../scripts/kafka/log4j2-tools.properties");

/// The unpacked distribution to use instead of the installed jars.
pub const KAFKA_HOME_ENV: &str = "KAFKA_HOME";

/// The Apache Kafka version verdict installs, runs and is tested with (from the pom).
pub fn kafka_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        POM.split_once("<kafka.version>")
            .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
            .map(|(v, _)| v.trim().to_string())
            .unwrap_or_default()
    })
}

/// Kafka's command-line tools, by the name of the script in a Kafka distribution
/// (`kafka-topics.sh` → `topics`), and their main classes (kafka-tools 4.x).
pub const TOOLS: &[(&str, &str)] = &[
    ("topics", "org.apache.kafka.tools.TopicCommand"),
    (
        "consumer-groups",
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    ),
    (
        "console-consumer",
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
    ),
    ("console-producer", "org.apache.kafka.tools.ConsoleProducer"),
    (
        "producer-perf-test",
        "org.apache.kafka.tools.ProducerPerformance",
    ),
    (
        "consumer-perf-test",
        "org.apache.kafka.tools.ConsumerPerformance",
    ),
    ("get-offsets", "org.apache.kafka.tools.GetOffsetShell"),
    (
        "delete-records",
        "org.apache.kafka.tools.DeleteRecordsCommand",
    ),
    (
        "metadata-quorum",
        "org.apache.kafka.tools.MetadataQuorumCommand",
    ),
    ("configs", "org.apache.kafka.tools.ConfigCommand"),
    ("acls", "org.apache.kafka.tools.AclCommand"),
    ("storage", "kafka.tools.StorageTool"),
];

/// The jars of one Apache Kafka version and the Java that runs them.
#[derive(Clone, Debug)]
pub struct KafkaDist {
    /// The directory holding the jars (`<dist>/libs`).
    pub libs: PathBuf,
    java: PathBuf,
}

impl KafkaDist {
    /// `$KAFKA_HOME/libs` when set, else `~/.local/share/verdict/kafka-<version>/libs` as
    /// `scripts/install.sh` leaves it; and a Java 17 or newer. The errors say what to do.
    pub fn locate() -> Result<Self, CliError> {
        let libs = match std::env::var_os(KAFKA_HOME_ENV).filter(|v| !v.is_empty()) {
            Some(home) => {
                let libs = PathBuf::from(home).join("libs");
                if !has_kafka_jar(&libs) {
                    return Err(CliError::Usage(format!(
                        "{KAFKA_HOME_ENV} is set, but {} holds no kafka_2.13-*.jar: point it at an unpacked Apache Kafka distribution, or unset it",
                        libs.display()
                    )));
                }
                libs
            }
            None => {
                let libs = installed_dir().join("libs");
                if !libs.join(".complete").is_file() {
                    return Err(CliError::Usage(format!(
                        "Apache Kafka {} is not installed in {}: run `bash scripts/install.sh` (it resolves the jars from Maven Central), or set {KAFKA_HOME_ENV}",
                        kafka_version(),
                        libs.display()
                    )));
                }
                libs
            }
        };
        Ok(Self {
            libs,
            java: java()?,
        })
    }

    /// `java … -cp <libs>/* MAIN` with a bounded heap and the given log4j2 config.
    pub fn java(&self, main: &str, heap_mb: u32, log4j: &Path) -> Command {
        let mut cmd = Command::new(&self.java);
        cmd.arg(format!("-Xmx{heap_mb}m"))
            .arg(format!("-Xms{}m", heap_mb.min(256)))
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg(main);
        cmd
    }

    /// One of Kafka's command-line tools ([`TOOLS`]) with `args`; it logs warnings to stderr only.
    pub fn tool(&self, name: &str, args: &[String]) -> Result<Command, CliError> {
        let Some((_, class)) = TOOLS.iter().find(|(n, _)| *n == name) else {
            return Err(CliError::Usage(format!(
                "no Kafka tool `{name}`; known: {}",
                TOOLS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )));
        };
        let log4j = write_once(
            &std::env::temp_dir().join(format!(
                "verdict-kafka-tools-{}.properties",
                kafka_version()
            )),
            TOOLS_LOG4J,
        )?;
        let mut cmd = self.java(class, 512, &log4j);
        cmd.args(args);
        Ok(cmd)
    }
}

/// The flag a Kafka tool takes its client properties file with.
pub fn client_config_flag(tool: &str) -> &'static str {
    match tool {
        "console-consumer" | "consumer-perf-test" => "--consumer.config",
        "console-producer" | "producer-perf-test" => "--producer.config",
        _ => "--command-config",
    }
}

/// Where `scripts/install.sh` puts the jars of [`kafka_version`].
pub fn installed_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/verdict")
        .join(format!("kafka-{}", kafka_version()))
}

fn has_kafka_jar(libs: &Path) -> bool {
    fs::read_dir(libs).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kafka_2.13-") && name.ends_with(".jar")
        })
    })
}

/// `$JAVA_HOME/bin/java` or `java` on the PATH, checked to be Java 17 or newer.
fn java() -> Result<PathBuf, CliError> {
    let java = std::env::var_os("JAVA_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from("java"),
            |h| PathBuf::from(h).join("bin/java"),
        );
    let out = Command::new(&java).arg("-version").output().map_err(|e| {
        CliError::Usage(format!(
            "no Java found ({}: {e}): Apache Kafka needs Java 17 or newer; `bash scripts/install.sh` installs it",
            java.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let major = java_major(&text);
    if major.is_some_and(|m| m >= 17) {
        Ok(java)
    } else {
        Err(CliError::Usage(format!(
            "Apache Kafka needs Java 17 or newer; `{} -version` says: {}",
            java.display(),
            text.lines().next().unwrap_or("nothing")
        )))
    }
}

/// The major version in `java -version`'s first line (`openjdk version "17.0.15"` → 17,
/// `java version "1.8.0_402"` → 8).
fn java_major(version_output: &str) -> Option<u32> {
    let quoted = version_output.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '_', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// Writes `text` to `path` unless it already holds exactly that (atomically, so concurrent
/// writers never leave a half-written file). Returns the path.
fn write_once(path: &Path, text: &str) -> Result<PathBuf, CliError> {
    if fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(path.to_path_buf());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}

/// A KRaft node (combined broker and controller) on 127.0.0.1, its data, config and log4j2
/// config in `dir`: alone ([`Self::single`]) or one of a cluster ([`Self::cluster`]).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub dir: PathBuf,
    pub port: u16,
    pub controller_port: u16,
    pub heap_mb: u32,
    /// A second client listener for clients that reach the broker through a proxy.
    pub external: Option<ExternalListener>,
    /// This node's id in the quorum.
    pub node_id: u32,
    /// Every node of the cluster, this one included, as (node id, controller port): the
    /// static controller quorum.
    pub voters: Vec<(u32, u16)>,
    /// The cluster id storage is formatted with (all nodes of a cluster share it).
    pub cluster_id: String,
    /// TLS, SASL/SCRAM and ACLs instead of plaintext ([`Self::secured`]).
    pub secure: Option<Secured>,
}

/// What a secured node adds: its listeners' settings and the users to format storage with.
#[derive(Clone, Debug)]
pub struct Secured {
    pub secrets: Secrets,
    listeners: String,
    scram_args: Vec<String>,
}

/// Where one node of a cluster lives: its directory, client port and controller port.
#[derive(Clone, Debug)]
pub struct NodePlace {
    pub dir: PathBuf,
    pub port: u16,
    pub controller_port: u16,
}

/// A client listener (`EXTERNAL`) on `port` whose metadata sends clients to
/// `advertised_port`, where a proxy forwards to `port`: every connection a client makes,
/// including those to the partition leaders, then passes the proxy (fault injection in
/// tests/faults.rs), while the broker's own traffic stays on `PLAINTEXT`.
#[derive(Clone, Copy, Debug)]
pub struct ExternalListener {
    pub port: u16,
    pub advertised_port: u16,
}

impl BrokerConfig {
    /// A single-node cluster: node 1, the only voter.
    pub fn single(dir: PathBuf, port: u16, controller_port: u16, heap_mb: u32) -> Self {
        Self::cluster(
            &[NodePlace {
                dir,
                port,
                controller_port,
            }],
            heap_mb,
        )
        .remove(0)
    }

    /// The nodes of a cluster, ids 1, 2, … in the order given; every node is a voter. The
    /// cluster id is the one a node's storage was formatted with, if any was, else a new one.
    pub fn cluster(places: &[NodePlace], heap_mb: u32) -> Vec<Self> {
        let voters: Vec<(u32, u16)> = (1..)
            .zip(places.iter().map(|p| p.controller_port))
            .collect();
        let cluster_id = places
            .iter()
            .find_map(|p| formatted_cluster_id(&p.dir.join("data")))
            .unwrap_or_else(new_cluster_id);
        (1..)
            .zip(places)
            .map(|(node_id, p)| Self {
                dir: p.dir.clone(),
                port: p.port,
                controller_port: p.controller_port,
                heap_mb,
                external: None,
                node_id,
                voters: voters.clone(),
                cluster_id: cluster_id.clone(),
                secure: None,
            })
            .collect()
    }

    /// The replication factor of internal topics and the broker's default for new topics:
    /// the cluster's size, at most 3.
    pub fn replication_factor(&self) -> usize {
        self.voters.len().clamp(1, 3)
    }

    /// `min.insync.replicas` for the replication factor: 2 of 3, else 1, so one node can be
    /// lost without refusing writes and no acknowledged write lives on one node only.
    pub fn min_insync_replicas(&self) -> usize {
        self.replication_factor().saturating_sub(1).max(1)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// This node with TLS and SASL/SCRAM on its listeners and ACLs enforced (see
    /// [`Secrets::server_properties`]).
    pub fn secured(mut self, secrets: &Secrets) -> Result<Self, CliError> {
        self.secure = Some(Secured {
            listeners: secrets.server_properties(self.port, self.controller_port)?,
            scram_args: secrets.scram_format_args()?,
            secrets: secrets.clone(),
        });
        Ok(self)
    }

    /// Client settings for this node: its admin's when it is secured.
    pub fn admin_settings(&self) -> KafkaSettings {
        let mut kafka = KafkaSettings::with_bootstrap(self.bootstrap());
        if let Some(s) = &self.secure {
            kafka.security = s.secrets.security(crate::secure::ADMIN);
        }
        kafka
    }

    /// The directory as an absolute path: the broker runs with another working directory.
    fn abs_dir(&self) -> PathBuf {
        std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone())
    }

    fn properties_file(&self) -> PathBuf {
        self.abs_dir().join("server.properties")
    }

    fn log_dir(&self) -> PathBuf {
        self.abs_dir().join("data")
    }

    /// `server.properties` for one node: loopback listeners, the static quorum, internal and
    /// default replication from the cluster's size, no initial rebalance delay, small
    /// cleaner buffer for a small heap.
    pub fn server_properties(&self) -> String {
        let listeners = match (&self.secure, self.external) {
            (Some(secured), _) => secured.listeners.clone(),
            (None, external) => {
                let (listener, advertised, protocol) = match external {
                    Some(e) => (
                        format!(",EXTERNAL://127.0.0.1:{}", e.port),
                        format!(",EXTERNAL://127.0.0.1:{}", e.advertised_port),
                        ",EXTERNAL:PLAINTEXT",
                    ),
                    None => Default::default(),
                };
                format!(
                    "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}{listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}{advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocol}
",
                    controller = self.controller_port,
                    port = self.port,
                )
            }
        };
        format!(
            "# Written by verdict on every start; edit the code (services/verdict-cli/src/broker.rs), not this file.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
{listeners}log.dirs={logs}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={min_isr}
auto.create.topics.enable=false
file.delete.delay.ms=1000
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=6000
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=1000
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.threads=1
num.network.threads=2
num.io.threads=4
",
            node_id = self.node_id,
            voters = self
                .voters
                .iter()
                .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(","),
            rf = self.replication_factor(),
            min_isr = self.min_insync_replicas(),
            logs = self.log_dir().display(),
        )
    }

    /// Fails naming the port when a listener port is taken by something else.
    pub fn check_ports(&self) -> Result<(), CliError> {
        let external = self.external.map(|e| ("external listener", e.port));
        let ports = [("broker", self.port), ("controller", self.controller_port)];
        for (what, port) in ports.into_iter().chain(external) {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                return Err(CliError::Usage(format!(
                    "the {what} port 127.0.0.1:{port} is not free ({e}): another broker or program holds it; stop it, or choose another port"
                )));
            }
        }
        Ok(())
    }

    /// Writes the configs and formats the storage once (`kafka.tools.StorageTool format`);
    /// a formatted directory is left as it is.
    pub fn prepare(&self, dist: &KafkaDist) -> Result<(), CliError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", self.dir.display())))?;
        write_once(&self.properties_file(), &self.server_properties())?;
        if self.secure.is_some() {
            // It holds the admin's password.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(self.properties_file(), fs::Permissions::from_mode(0o600))
                .map_err(|e| CliError::Failed(format!("cannot restrict server.properties: {e}")))?;
        }
        write_once(&self.log4j_file(), BROKER_LOG4J)?;
        if self.log_dir().join("meta.properties").is_file() {
            return Ok(());
        }
        let out = dist
            .java("kafka.tools.StorageTool", 256, &self.log4j_file())
            .args(["format", "-t", &self.cluster_id, "-c"])
            .arg(self.properties_file())
            .args(self.secure.iter().flat_map(|s| s.scram_args.iter()))
            .output()
            .map_err(|e| CliError::Failed(format!("cannot run Java: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CliError::Failed(format!(
                "formatting the broker's storage in {} failed: {}{}",
                self.log_dir().display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    fn log4j_file(&self) -> PathBuf {
        self.abs_dir().join("log4j2.properties")
    }

    /// The broker's command line (`kafka.Kafka server.properties`); run [`Self::prepare`] first.
    pub fn command(&self, dist: &KafkaDist) -> Command {
        let mut cmd = dist.java("kafka.Kafka", self.heap_mb, &self.log4j_file());
        cmd.arg(self.properties_file()).current_dir(self.abs_dir());
        cmd
    }

    /// Checks the ports, prepares the directory and starts the broker with its output
    /// appended to `log` (see [`spawn_logged`]). Wait for it with `stack::wait_for_broker`.
    pub fn spawn(&self, dist: &KafkaDist, log: &Path, detached: bool) -> Result<Child, CliError> {
        self.check_ports()?;
        self.prepare(dist)?;
        spawn_logged(self.command(dist), log, detached)
    }
}

/// Runs a throwaway broker in the foreground for as long as the process `parent` lives (a test
/// runner), then stops it (SIGTERM, SIGKILL after 20 s) and removes its directory. SIGTERM or
/// Ctrl-C stop it the same way. The test harness starts one per test run with this.
pub async fn run_while_alive(cfg: &BrokerConfig, parent: u32) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let dist = KafkaDist::locate()?;
    let log = cfg.dir.join("broker.log");
    let mut child = cfg.spawn(&dist, &log, false)?;
    let pid = child.id();
    let mut term = signal(SignalKind::terminate()).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tick.tick() => {
                if !crate::stack::alive(parent) {
                    break Ok(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(CliError::Failed(format!(
                        "the broker exited with {status}; see {}",
                        log.display()
                    )));
                }
            }
        }
    };
    crate::stack::stop_pid(pid, std::time::Duration::from_secs(20));
    let _ = child.wait();
    if outcome.is_ok() {
        let _ = fs::remove_dir_all(&cfg.dir);
    }
    outcome
}

/// The `cluster.id` a node's storage in `log_dir` was formatted with, if it was.
fn formatted_cluster_id(log_dir: &Path) -> Option<String> {
    let meta = fs::read_to_string(log_dir.join("meta.properties")).ok()?;
    meta.lines()
        .find_map(|l| l.strip_prefix("cluster.id="))
        .map(|id| id.trim().to_string())
}

/// A new cluster id: 16 random bytes, base64url without padding (Kafka's `Uuid`).
/// A new cluster id as Kafka's `Uuid.randomUuid` makes one: base64url of a random UUID, drawn
/// again when it starts with '-' (which `kafka-storage format -t` would read as a flag).
fn new_cluster_id() -> String {
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_never_read_as_a_flag() {
        // One base64url id in 64 starts with '-', which kafka-storage's argument parser takes
        // for an option (Kafka's own Uuid.randomUuid draws again then).
        for _ in 0..10_000 {
            let id = new_cluster_id();
            assert!(!id.starts_with('-'), "{id}");
            assert_eq!(id.len(), 22);
        }
    }

    #[test]
    fn version_comes_from_the_pom() {
        assert!(kafka_version().starts_with("4."), "{}", kafka_version());
    }

    #[test]
    fn java_versions() {
        assert_eq!(
            java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"),
            Some(17)
        );
        assert_eq!(java_major("java version \"1.8.0_402\""), Some(8));
        assert_eq!(java_major("openjdk version \"25\" 2025-09-16"), Some(25));
        assert_eq!(java_major("no java here"), None);
    }

    #[test]
    fn cluster_ids_are_kafka_uuids() {
        let id = new_cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn properties_bind_loopback_only() {
        let cfg = BrokerConfig::single(PathBuf::from("/tmp/x"), 19092, 19093, 512);
        let p = cfg.server_properties();
        assert!(p.contains("listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093\n"));
        assert!(p.contains("advertised.listeners=PLAINTEXT://127.0.0.1:19092\n"));
        assert!(p.contains("node.id=1\ncontroller.quorum.voters=1@127.0.0.1:19093\n"));
        assert!(p.contains("group.initial.rebalance.delay.ms=0"));
        assert!(p.contains("log.dirs=/tmp/x/data"));
        assert!(p.contains("default.replication.factor=1\nmin.insync.replicas=1\n"));
        assert!(p.contains("offsets.topic.replication.factor=1\n"));
    }

    #[test]
    fn a_cluster_shares_its_quorum_and_replicates_three_ways() {
        let places: Vec<NodePlace> = (0..3)
            .map(|i| NodePlace {
                dir: PathBuf::from(format!("/tmp/c/broker-{i}")),
                port: 19092 + 2 * i,
                controller_port: 19093 + 2 * i,
            })
            .collect();
        let nodes = BrokerConfig::cluster(&places, 512);
        assert_eq!(nodes.len(), 3);
        let voters =
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097\n";
        for (i, node) in nodes.iter().enumerate() {
            let p = node.server_properties();
            assert!(p.contains(&format!("node.id={}\n", i + 1)), "{p}");
            assert!(p.contains(voters), "{p}");
            assert!(p.contains(&format!(
                "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}\n",
                19092 + 2 * i,
                19093 + 2 * i
            )));
            assert!(p.contains("default.replication.factor=3\nmin.insync.replicas=2\n"));
            assert!(p.contains("offsets.topic.replication.factor=3\n"));
            assert!(p.contains("transaction.state.log.min.isr=2\n"));
            assert_eq!(node.cluster_id, nodes[0].cluster_id);
        }
        // Two nodes: losing one must not refuse writes.
        let two = BrokerConfig::cluster(&places[..2], 512);
        assert_eq!(
            (two[0].replication_factor(), two[0].min_insync_replicas()),
            (2, 1)
        );
    }

    #[test]
    fn a_formatted_node_keeps_its_cluster_id() {
        let dir = std::env::temp_dir().join(format!("verdict-cluster-id-{}", uuid::Uuid::new_v4()));
        let data = dir.join("broker-2/data");
        fs::create_dir_all(&data).expect("mkdir");
        fs::write(
            data.join("meta.properties"),
            "#\nnode.id=2\nversion=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\n",
        )
        .expect("meta");
        let places: Vec<NodePlace> = (1..=3)
            .map(|i| NodePlace {
                dir: dir.join(format!("broker-{i}")),
                port: 1,
                controller_port: 2,
            })
            .collect();
        let nodes = BrokerConfig::cluster(&places, 512);
        let _ = fs::remove_dir_all(&dir);
        assert!(
            nodes
                .iter()
                .all(|n| n.cluster_id == "AAAAAAAAAAAAAAAAAAAAAA")
        );
    }

    #[test]
    fn an_external_listener_advertises_the_proxy_in_front_of_it() {
        let cfg = BrokerConfig {
            external: Some(ExternalListener {
                port: 19094,
                advertised_port: 19095,
            }),
            ..BrokerConfig::single(PathBuf::from("/tmp/x"), 19092, 19093, 512)
        };
        let p = cfg.server_properties();
        assert!(p.contains(
            "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,EXTERNAL://127.0.0.1:19094\n"
        ));
        assert!(p.contains(
            "advertised.listeners=PLAINTEXT://127.0.0.1:19092,EXTERNAL://127.0.0.1:19095\n"
        ));
        assert!(p.contains("inter.broker.listener.name=PLAINTEXT\n"));
        assert!(p.contains(
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT\n"
        ));
    }

    #[test]
    fn a_relative_data_dir_becomes_absolute_paths() {
        // `verdict stack up` defaults to the relative `.verdict`; the broker must find its
        // files whatever its working directory.
        let cfg = BrokerConfig::single(PathBuf::from(".verdict/broker"), 19092, 19093, 512);
        let dist = KafkaDist {
            libs: PathBuf::from("/opt/kafka/libs"),
            java: PathBuf::from("java"),
        };
        let cwd = std::env::current_dir().expect("cwd");
        let cmd = cfg.command(&dist);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let props = args.last().expect("properties file");
        assert_eq!(
            PathBuf::from(props),
            cwd.join(".verdict/broker/server.properties")
        );
        assert!(
            args.iter().any(|a| *a
                == format!(
                    "-Dlog4j2.configurationFile={}",
                    cwd.join(".verdict/broker/log4j2.properties").display()
                )),
            "{args:?}"
        );
        assert!(
            cfg.server_properties().contains(&format!(
                "log.dirs={}",
                cwd.join(".verdict/broker/data").display()
            )),
            "{}",
            cfg.server_properties()
        );
    }

    #[test]
    fn unknown_tools_are_named() {
        let dist = KafkaDist {
            libs: PathBuf::from("/nonexistent"),
            java: PathBuf::from("java"),
        };
        let err = dist.tool("nope", &[]).expect_err("unknown");
        assert!(err.to_string().contains("consumer-groups"), "{err}");
    }
}
