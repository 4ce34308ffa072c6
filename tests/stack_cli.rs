//! The README's main path through the real CLI: `verdict stack up`, `topology
//! apply`, `demo`, `stack status`, `stack down`, with its own data dir and ports.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harness::{bin, free_port, free_port_block, repo_root, run_command};

struct StackGuard<'a> {
    dir: &'a Path,
}

impl Drop for StackGuard<'_> {
    fn drop(&mut self) {
        // Stops by the pids in the data dir, whatever happened in the test.
        let _ = verdict(self.dir, &["stack", "down"], &[]);
    }
}

fn verdict(dir: &Path, args: &[&str], extra: &[&str]) -> Output {
    verdict_with(dir, args, extra, &[])
}

/// [`verdict`] with these variables set.
fn verdict_with(dir: &Path, args: &[&str], extra: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin("verdict"));
    cmd.current_dir(repo_root())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("VERDICT_SCHEMA_REGISTRY_URL")
        .env("VERDICT_DATA_DIR", dir)
        .envs(env.iter().copied())
        .args(args)
        .args(extra);
    run_command(&mut cmd, Duration::from_secs(90))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stack's port flags: the first broker's, its controller's and the registry's ports as
/// given, the services on a block of free ports (they count up from the first).
/// The value given to `name` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1))
        .copied()
        .unwrap_or_else(|| panic!("{name} is given"))
}

fn stack_ports(broker: u16, controller: u16, registry: u16) -> Vec<String> {
    [
        ("--broker-port", broker),
        ("--controller-port", controller),
        ("--registry-port", registry),
        (
            "--services-port",
            free_port_block(
                u16::try_from(verdict_cli::services::SERVICES.len()).expect("a few services"),
            ),
        ),
        ("--gateway-port", free_port()),
        ("--jaeger-port", free_port()),
        // The UI's port, after the gRPC query port below it.
        ("--jaeger-ui-port", free_port_block(2) + 1),
    ]
    .into_iter()
    .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
    .collect()
}

#[test]
fn stack_up_apply_demo_status_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bp, cp, rp) = (free_port(), free_port(), free_port());
    let ports = stack_ports(bp, cp, rp);
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let guard = StackGuard { dir: dir.path() };
    let bootstrap = format!("127.0.0.1:{bp}");
    let registry = format!("http://127.0.0.1:{rp}");

    // Jaeger's web UI: a stand-in for jaeger-ui's build/ (tests/observability.rs has what Jaeger
    // does with it, and the placeholder it serves without one).
    let ui = tempfile::tempdir().expect("tempdir");
    std::fs::write(ui.path().join("index.html"), "<title>ui under test</title>").expect("index");
    let up = verdict_with(
        dir.path(),
        &["stack", "up", "--tracing"],
        &ports,
        &[("VERDICT_JAEGER_UI", ui.path())],
    );
    assert!(up.status.success(), "{}", text(&up));
    let jaeger_ui = format!("http://127.0.0.1:{}", flag(&ports, "--jaeger-ui-port"));
    assert!(text(&up).contains("jaeger: started (pid "), "{}", text(&up));
    assert!(
        text(&up).contains(&format!("), UI at {jaeger_ui};")),
        "{}",
        text(&up)
    );
    assert!(
        text(&up).contains(&format!("broker: answers metadata requests at {bootstrap}")),
        "{}",
        text(&up)
    );
    for service in [
        "fraud-detector",
        "model-server",
        "document-analyzer",
        "gateway",
    ] {
        assert!(
            text(&up).contains(&format!("{service}: ready")),
            "{}",
            text(&up)
        );
    }
    let pids: Vec<u32> = [
        "broker.pid",
        "schema-registry.pid",
        "fraud-detector.pid",
        "model-server.pid",
        "document-analyzer.pid",
        "gateway.pid",
        "jaeger.pid",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(dir.path().join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    })
    .collect();
    assert!(
        dir.path().join("broker/data/meta.properties").exists(),
        "the broker's storage is formatted in the data dir"
    );
    assert!(
        text(&up).contains(&format!(
            "broker: started Apache Kafka {}",
            verdict_cli::broker::kafka_version()
        )),
        "{}",
        text(&up)
    );

    // The gateway answers the development key printed once, as the printed request does.
    let gateway = format!("http://127.0.0.1:{}", flag(&ports, "--gateway-port"));
    assert!(
        text(&up).contains(&format!(
            "gateway: API at {gateway}/v1, its docs at {gateway}/v1/docs"
        )),
        "{}",
        text(&up)
    );
    let key = text(&up)
        .lines()
        .skip_while(|l| !l.starts_with("gateway: development key"))
        .nth(1)
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("a development key in:\n{}", text(&up)));
    assert!(key.starts_with("vk_"), "{key}");
    let keys = std::fs::read_to_string(dir.path().join("gateway-keys.toml")).expect("keys file");
    assert!(!keys.contains(&key), "only the key's hash is kept: {keys}");
    let curl = text(&up)
        .lines()
        .skip_while(|l| !l.contains("curl -s -X POST"))
        .take(2)
        .map(|l| l.trim().trim_end_matches('\\').to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let answer = run_command(
        Command::new("bash").args(["-c", &curl]),
        Duration::from_secs(30),
    );
    let job: serde_json::Value =
        serde_json::from_slice(&answer.stdout).unwrap_or_else(|_| panic!("{curl}: {answer:?}"));
    assert!(job["decision"]["outcome"].is_string(), "{curl}: {job}");
    assert!(
        text(&up).contains("  lag dashboard      http://127.0.0.1:"),
        "{}",
        text(&up)
    );
    assert!(
        text(&up).contains(&format!("  traces (Jaeger)    {jaeger_ui}\n")),
        "{}",
        text(&up)
    );

    let again = verdict(dir.path(), &["stack", "up"], &ports);
    assert!(
        text(&again).contains("gateway: already running"),
        "{}",
        text(&again)
    );
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        text(&status).matches("answering").count(),
        3,
        "broker, registry, jaeger: {}",
        text(&status)
    );

    // Another data dir on the same ports: what answers there is not its stack.
    let other = tempfile::tempdir().expect("tempdir");
    let foreign = verdict(other.path(), &["stack", "status"], &ports);
    assert_eq!(foreign.status.code(), Some(1), "{}", text(&foreign));
    assert_eq!(
        text(&foreign)
            .matches("holds the port, not started by this data dir")
            .count(),
        2 + verdict_cli::services::SERVICES.len(),
        "broker, registry and every service: {}",
        text(&foreign)
    );

    let endpoints = [
        "--bootstrap-servers",
        bootstrap.as_str(),
        "--registry-url",
        registry.as_str(),
    ];
    let apply = verdict(dir.path(), &["topology", "apply"], &endpoints);
    assert!(apply.status.success(), "{}", text(&apply));
    let demo = verdict(dir.path(), &["demo", "--count", "5"], &endpoints);
    assert!(demo.status.success(), "{}", text(&demo));
    assert!(
        text(&demo).contains("round trip: 5/5 events read back and decoded identically"),
        "{}",
        text(&demo)
    );
    // The services the demo went through sent their spans to the stack's Jaeger.
    harness::run(60, async {
        let traced = |services: &serde_json::Value| {
            ["fraud-detector", "document-analyzer"].iter().all(|s| {
                services["data"]
                    .as_array()
                    .is_some_and(|d| d.contains(&serde_json::json!(s)))
            })
        };
        let mut services = serde_json::Value::Null;
        for _ in 0..100 {
            services = reqwest::get(format!("{jaeger_ui}/api/services"))
                .await
                .expect("Jaeger answers")
                .json()
                .await
                .expect("JSON");
            if traced(&services) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the demo's services are not in Jaeger: {services}");
    });

    let down = verdict(dir.path(), &["stack", "down"], &ports);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!verdict_cli::stack::alive(pid), "pid {pid} stopped");
    }
    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(text(&status).contains("DOWN"), "{}", text(&status));
    drop(guard);
}

#[test]
fn stack_up_brokers_3_runs_a_replicated_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_port_block(6);
    let ports = stack_ports(base, base + 1, free_port());
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let too_many = verdict(dir.path(), &["stack", "up", "--brokers", "4"], &ports);
    assert_eq!(too_many.status.code(), Some(2), "{}", text(&too_many));
    assert!(
        text(&too_many).contains("--brokers 4"),
        "{}",
        text(&too_many)
    );

    let guard = StackGuard { dir: dir.path() };
    let up = verdict(dir.path(), &["stack", "up", "--brokers", "3"], &ports);
    assert!(up.status.success(), "{}", text(&up));
    let bootstrap: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + 2 * i))
        .collect();
    assert!(
        text(&up).contains(&format!(
            "broker: answers metadata requests at {} (3 of 3 brokers)",
            bootstrap.join(",")
        )),
        "{}",
        text(&up)
    );
    let pids: Vec<u32> = ["broker.pid", "broker-2.pid", "broker-3.pid"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.path().join(f))
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect();

    // Without --brokers the data dir's cluster is meant; another size is refused.
    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert!(status.status.success(), "{}", text(&status));
    for node in ["node 1 of 3", "node 2 of 3", "node 3 of 3"] {
        assert!(text(&status).contains(node), "{}", text(&status));
    }
    let other_size = verdict(dir.path(), &["stack", "up", "--brokers", "1"], &ports);
    assert_eq!(other_size.status.code(), Some(2), "{}", text(&other_size));
    assert!(
        text(&other_size).contains("holds a cluster of 3 broker(s)"),
        "{}",
        text(&other_size)
    );

    // The topology's topics take the cluster's replication: 3 replicas, 2 in sync required.
    let describe = verdict(
        dir.path(),
        &[
            "kafka",
            "topics",
            "--describe",
            "--topic",
            "transactions",
            "--bootstrap-server",
            &bootstrap[1],
        ],
        &[],
    );
    assert!(describe.status.success(), "{}", text(&describe));
    let summary = text(&describe);
    assert!(
        summary.contains("ReplicationFactor: 3") && summary.contains("min.insync.replicas=2"),
        "{summary}"
    );

    let down = verdict(dir.path(), &["stack", "down"], &ports);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!verdict_cli::stack::alive(pid), "pid {pid} stopped");
    }
    drop(guard);
}

/// `stack up` with only the broker's ports (a registry port that nothing uses).
fn broker_up(dir: &Path, env: &[(&str, &str)]) -> (Output, String, String) {
    let (bp, cp) = (free_port().to_string(), free_port().to_string());
    let mut cmd = Command::new(bin("verdict"));
    cmd.current_dir(repo_root())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("VERDICT_SCHEMA_REGISTRY_URL")
        .env("VERDICT_DATA_DIR", dir)
        .envs(env.iter().copied())
        .args([
            "stack",
            "up",
            "--broker-port",
            &bp,
            "--controller-port",
            &cp,
        ]);
    (run_command(&mut cmd, Duration::from_secs(120)), bp, cp)
}

#[test]
fn stack_up_names_what_failed() {
    // No Java.
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = StackGuard { dir: dir.path() };
    let (out, _, _) = broker_up(dir.path(), &[("JAVA_HOME", "/nonexistent-jdk")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("Apache Kafka needs Java 17 or newer"),
        "{}",
        text(&out)
    );

    // KAFKA_HOME that is not a Kafka distribution.
    let (out, _, _) = broker_up(dir.path(), &[("KAFKA_HOME", "/nonexistent-kafka")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("KAFKA_HOME is set, but /nonexistent-kafka/libs holds no"),
        "{}",
        text(&out)
    );

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let cp = free_port().to_string();
    let mut cmd = Command::new(bin("verdict"));
    cmd.current_dir(repo_root())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("VERDICT_DATA_DIR", dir.path())
        .args([
            "stack",
            "up",
            "--broker-port",
            &port,
            "--controller-port",
            &cp,
        ]);
    let out = run_command(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the broker port 127.0.0.1:{port} is not free")),
        "{}",
        text(&out)
    );
    drop(taken);

    // A broker that does not come up: its storage belongs to another node.
    let data = dir.path().join("broker/data");
    std::fs::create_dir_all(&data).expect("dir");
    std::fs::write(
        data.join("meta.properties"),
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAQ\n",
    )
    .expect("meta.properties");
    let (out, _, _) = broker_up(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let log = dir.path().join("broker.log");
    assert!(
        text(&out).contains("the broker did not come up")
            && text(&out).contains(&log.display().to_string()),
        "names the failure and the log: {}",
        text(&out)
    );
    assert!(
        !verdict(dir.path(), &["stack", "status"], &[])
            .status
            .success()
    );
    drop(guard);
}

/// `stack status` judges a part by who listens on its port, not by its pid file: a service
/// whose process lives but does not hold the port (it failed to bind: another program
/// answers there) is FOREIGN, naming that program's pid; `stack down` stops the service and
/// says it left the other program running.
#[test]
fn stack_status_trusts_the_listener_not_the_pid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port_block(4);
    // Another program answering 200 on the fraud-detector's port.
    let mut foreign = KillOnDrop(
        Command::new("python3")
            .args([
                "-c",
                "import http.server as h,sys\n\
             class H(h.BaseHTTPRequestHandler):\n \
             def do_GET(s): s.send_response(200); s.end_headers(); s.wfile.write(b'ok')\n \
             def log_message(s,*a): pass\n\
             h.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()",
                &port.to_string(),
            ])
            .spawn()
            .expect("python3"),
    );
    // The stack's fraud-detector: alive, named as the service, listening nowhere.
    let fake = dir.path().join("fraud-detector");
    std::os::unix::fs::symlink("/bin/sleep", &fake).expect("symlink");
    let mut ours = KillOnDrop(Command::new(&fake).arg("120").spawn().expect("sleep"));
    std::fs::write(
        dir.path().join("fraud-detector.pid"),
        ours.0.id().to_string(),
    )
    .expect("pid");
    let ports = stack_ports(free_port(), free_port(), free_port());
    let mut ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let services = port.to_string();
    let at = ports
        .iter()
        .position(|p| *p == "--services-port")
        .expect("flag");
    ports[at + 1] = &services;
    let answers = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(answers, "the foreign server listens");

    let status = verdict(dir.path(), &["stack", "status"], &ports);
    let line = text(&status)
        .lines()
        .find(|l| l.starts_with("fraud-detector"))
        .map(String::from)
        .unwrap_or_else(|| panic!("no fraud-detector line: {}", text(&status)));
    assert!(!status.status.success());
    assert!(
        line.contains("FOREIGN") && line.contains(&format!("pid {}", foreign.0.id())),
        "{line}"
    );

    let down = verdict(dir.path(), &["stack", "down"], &ports);
    let said = text(&down);
    assert!(
        said.contains(&format!("fraud-detector: stopped pid {}", ours.0.id())),
        "{said}"
    );
    assert!(
        said.contains(&format!("pid {} holds port {port}", foreign.0.id()))
            && said.contains("left running"),
        "{said}"
    );
    assert!(
        ours.0.try_wait().expect("wait").is_some(),
        "our process stopped"
    );
    assert!(
        foreign.0.try_wait().expect("wait").is_none(),
        "the other program still runs"
    );
}

/// A child process stopped (by its pid) when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stack_up_secure_runs_every_service_as_its_own_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bp, cp, rp) = (free_port(), free_port(), free_port());
    let ports = stack_ports(bp, cp, rp);
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let guard = StackGuard { dir: dir.path() };
    let endpoints = [
        format!("--bootstrap-servers=127.0.0.1:{bp}"),
        format!("--registry-url=https://127.0.0.1:{rp}"),
    ];
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();

    let up = verdict(dir.path(), &["stack", "up", "--secure"], &ports);
    assert!(
        text(&up).contains(&format!(
            "schema-registry: answers at https://127.0.0.1:{rp}"
        )),
        "the registry serves HTTPS: {}",
        text(&up)
    );
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        text(&up).contains("security: SASL_SSL (SCRAM-SHA-512)"),
        "{}",
        text(&up)
    );
    for service in ["fraud-detector", "document-analyzer", "lag-monitor"] {
        assert!(
            text(&up).contains(&format!("{service}: ready")),
            "{}",
            text(&up)
        );
    }
    let admin = dir.path().join("secure/admin.properties");
    let admin_flag = format!("--command-config={}", admin.display());

    // The CLI as the admin: the demo through the whole pipeline, Kafka's own tool too.
    let demo = verdict(
        dir.path(),
        &[&admin_flag, "demo", "--count", "3", "--documents", "0"],
        &endpoints,
    );
    assert!(demo.status.success(), "{}", text(&demo));
    assert!(
        text(&demo).contains("pipeline: 3/3 events decided on fraud-decisions"),
        "{}",
        text(&demo)
    );
    let groups = verdict(
        dir.path(),
        &[&admin_flag, "kafka", "consumer-groups", "--list"],
        &[&format!("--bootstrap-server=127.0.0.1:{bp}")],
    );
    assert!(
        text(&groups).contains("verdict-fraud-detector"),
        "{}",
        text(&groups)
    );
    // A user's own consumer: Confluent's Python client reads those decisions over SASL_SSL,
    // the registry over HTTPS with basic auth.
    let secret = |user: &str| {
        std::fs::read_to_string(dir.path().join(format!("secure/{user}.password")))
            .expect("password")
            .trim()
            .to_string()
    };
    let ca = dir.path().join("secure/ca.pem");
    let read = run_command(
        Command::new(harness::python())
            .arg(repo_root().join("tests/python/read_decisions.py"))
            .env("BOOTSTRAP_SERVERS", format!("127.0.0.1:{bp}"))
            .env("TOPIC", "fraud-decisions")
            .env("WANT", "3")
            .env("SASL_USERNAME", "admin")
            .env("SASL_PASSWORD", secret("admin"))
            .env("CA_LOCATION", &ca)
            .env("SCHEMA_REGISTRY_URL", format!("https://127.0.0.1:{rp}"))
            .env("BASIC_AUTH_USER_INFO", format!("admin:{}", secret("admin"))),
        Duration::from_secs(90),
    );
    assert!(read.status.success(), "{}", text(&read));
    let decisions: Vec<serde_json::Value> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        decisions.len() >= 3
            && decisions
                .iter()
                .all(|d| d["event_id"].as_str().is_some_and(|id| id.len() == 36)
                    && d["outcome"].is_string()),
        "{}",
        text(&read)
    );
    // `verdict shadow` runs its shadow service with the CLI's registry user and CA.
    let report = dir.path().join("shadow.json");
    let shadow = verdict(
        dir.path(),
        &[
            &admin_flag,
            "shadow",
            "--service",
            "fraud-detector",
            "--name",
            "secured",
            "--from-offset",
            "0",
            "--json",
            &report.display().to_string(),
        ],
        &endpoints,
    );
    assert!(shadow.status.success(), "{}", text(&shadow));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("shadow report"))
            .expect("report JSON");
    assert!(
        report["events"].as_u64().is_some_and(|n| n >= 3)
            && report["shadow_decided"] == report["events"],
        "{report}"
    );
    // The admin's settings without some of the registry's keys: the demo is refused, and
    // the CLI says which is missing.
    let properties = std::fs::read_to_string(&admin).expect("admin.properties");
    let demo_without = |prefix: &str, says: &[&str]| {
        let file = dir.path().join(format!("without-{prefix}properties"));
        let kept: Vec<&str> = properties
            .lines()
            .filter(|l| !l.starts_with(prefix))
            .collect();
        std::fs::write(&file, kept.join("\n")).expect("properties");
        let refused = verdict(
            dir.path(),
            &[
                &format!("--command-config={}", file.display()),
                "demo",
                "--count",
                "1",
                "--documents",
                "0",
            ],
            &endpoints,
        );
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(
            says.iter().all(|s| text(&refused).contains(s)),
            "without {prefix}: {}",
            text(&refused)
        );
    };
    // Not the registry's CA: its certificate is not trusted.
    demo_without(
        "schema.registry.ssl.",
        &[
            "presented a certificate this client does not trust",
            "schema.registry.ssl.ca.location",
        ],
    );
    // Not its user: the registry asks who.
    demo_without("basic.auth.", &["refused a client without credentials"]);
    // Without the settings the CLI says what is missing.
    let plain = verdict(dir.path(), &["groups", "list"], &endpoints[..1]);
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));
    assert!(
        text(&plain).contains("--command-config"),
        "{}",
        text(&plain)
    );

    // No secret in what the stack prints, and none in the services' settings files.
    let status = verdict(dir.path(), &["stack", "status"], &ports);
    assert!(status.status.success(), "{}", text(&status));
    for user in ["admin", "fraud-detector", "schema-registry", "lag-monitor"] {
        let password = std::fs::read_to_string(dir.path().join(format!("secure/{user}.password")))
            .expect("password");
        for (what, said) in [
            ("up", text(&up)),
            ("status", text(&status)),
            ("demo", text(&demo)),
        ] {
            assert!(
                !said.contains(password.trim()),
                "{user}'s password in {what}"
            );
        }
        let settings =
            std::fs::read_to_string(dir.path().join("fraud-detector.toml")).expect("settings");
        assert!(
            !settings.contains(password.trim()),
            "{user}'s password in settings"
        );
    }
    let down = verdict(dir.path(), &["stack", "down"], &ports);
    assert!(down.status.success(), "{}", text(&down));
    drop(guard);
}
