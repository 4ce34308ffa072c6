//! `verdict`: local stack, topology, and records on the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::collections::HashSet;

use std::os::unix::process::CommandExt;
use verdict_cli::broker::{self, BrokerConfig, KafkaDist};
use verdict_cli::records::{AvroProducer, Record, read_back, read_topic, sample_transaction};
use verdict_cli::stack::StackOpts;
use verdict_cli::{CliError, topology_cmd};
use verdict_runtime::kafka::{KafkaSettings, default_bootstrap};
use verdict_runtime::registry::RegistryClient;
use verdict_runtime::telemetry;

#[derive(Parser)]
#[command(
    name = "verdict",
    version,
    about = "verdict: AI decision pipeline on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "VERDICT_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
}

#[derive(clap::Args, Clone)]
struct TopologyFile {
    /// The topology file.
    #[arg(long, default_value = "topology/topology.toml")]
    file: PathBuf,
    /// Directory of the .avsc files (default: ../schemas next to the file).
    #[arg(long)]
    schemas: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The local stack: Apache Kafka (single-node KRaft), schema registry and the services.
    Stack {
        #[command(subcommand)]
        action: StackAction,
        /// Where pid files, logs and the broker's data live.
        #[arg(
            long,
            env = "VERDICT_DATA_DIR",
            default_value = ".verdict",
            global = true
        )]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 9092, global = true)]
        broker_port: u16,
        /// The broker's KRaft controller listener.
        #[arg(long, default_value_t = 9093, global = true)]
        controller_port: u16,
        #[arg(long, default_value_t = 8081, global = true)]
        registry_port: u16,
        /// Health/metrics port of the first service (fraud-detector); others follow.
        #[arg(long, default_value_t = 9464, global = true)]
        services_port: u16,
        /// The topology `up` applies before starting the services.
        #[arg(long, default_value = "topology/topology.toml", global = true)]
        topology: PathBuf,
    },
    /// Run one of Apache Kafka's command-line tools from the installed jars, e.g.
    /// `verdict kafka consumer-groups --describe --group fraud-detector`.
    /// `--bootstrap-server` defaults to KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092.
    Kafka {
        /// topics, consumer-groups, console-consumer, console-producer, producer-perf-test,
        /// consumer-perf-test, get-offsets, delete-records, metadata-quorum, configs, storage
        tool: String,
        /// The tool's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A throwaway broker for a test run: stops and removes itself when PID exits.
    #[command(hide = true)]
    TestBroker {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        controller_port: u16,
        #[arg(long, default_value_t = 1024)]
        heap_mb: u32,
        /// Run as long as this process lives.
        #[arg(long)]
        exit_with: u32,
    },
    /// Validate or apply the topology file.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Produce sample transactions and read them back through the registry.
    Demo {
        #[command(flatten)]
        endpoints: Endpoints,
        /// How many events.
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = "transactions")]
        topic: String,
        /// Where to look for the decisions ("" = only the round trip).
        #[arg(long, default_value = "fraud-decisions")]
        decisions_topic: String,
        /// Sample documents to send through the document-analyzer afterwards (0 = none).
        #[arg(long, default_value_t = 4)]
        documents: usize,
    },
}

#[derive(Subcommand)]
enum StackAction {
    /// Start what is not running and wait until it answers.
    Up,
    /// Stop what `up` started (by pid).
    Down,
    /// Tell what runs where.
    Status,
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Validate the file; errors name the key and line.
    Check {
        #[command(flatten)]
        file: TopologyFile,
    },
    /// Create missing topics, report drift, register schemas. Idempotent.
    Apply {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        endpoints: Endpoints,
        /// Exit with status 3 when an existing topic differs from the file.
        #[arg(long)]
        fail_on_drift: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Stack {
            action,
            data_dir,
            broker_port,
            controller_port,
            registry_port,
            services_port,
            topology,
        } => {
            let stack = StackOpts {
                data_dir,
                broker_port,
                controller_port,
                registry_port,
                services_port,
                topology,
            };
            match action {
                StackAction::Up => stack.up().await,
                StackAction::Down => stack.down(),
                StackAction::Status => stack.status().await,
            }
        }
        Command::Kafka { tool, mut args } => {
            let dist = KafkaDist::locate()?;
            if tool != "storage" && !args.iter().any(|a| a.starts_with("--bootstrap-server")) {
                args.extend(["--bootstrap-server".to_string(), default_bootstrap()]);
            }
            let err = dist.tool(&tool, &args)?.exec();
            Err(CliError::Failed(format!("cannot run Java: {err}")))
        }
        Command::TestBroker {
            dir,
            port,
            controller_port,
            heap_mb,
            exit_with,
        } => {
            let cfg = BrokerConfig {
                dir,
                port,
                controller_port,
                heap_mb,
            };
            broker::run_while_alive(&cfg, exit_with).await
        }
        Command::Topology {
            action: TopologyAction::Check { file },
        } => {
            let t = topology_cmd::check(&file.file, file.schemas.as_deref())?;
            println!(
                "{}: ok ({} topics, {} services)",
                file.file.display(),
                t.topics.len(),
                t.services.len()
            );
            Ok(())
        }
        Command::Topology {
            action:
                TopologyAction::Apply {
                    file,
                    endpoints,
                    fail_on_drift,
                },
        } => {
            let kafka = KafkaSettings::with_bootstrap(endpoints.bootstrap_servers);
            let registry = RegistryClient::new(endpoints.registry_url)?;
            let report =
                topology_cmd::apply(&file.file, file.schemas.as_deref(), &kafka, &registry).await?;
            report.print();
            if fail_on_drift && !report.drift.is_empty() {
                return Err(CliError::Drift(format!(
                    "{} topic setting(s) differ from the file",
                    report.drift.len()
                )));
            }
            Ok(())
        }
        Command::Demo {
            endpoints,
            count,
            topic,
            decisions_topic,
            documents,
        } => demo(endpoints, count, &topic, &decisions_topic, documents).await,
    }
}

/// Produces `count` sample transactions, reads them back and checks they match,
/// then shows the pipeline's decision for each.
async fn demo(
    endpoints: Endpoints,
    count: usize,
    topic: &str,
    decisions_topic: &str,
    documents: usize,
) -> Result<(), CliError> {
    let kafka = KafkaSettings::with_bootstrap(endpoints.bootstrap_servers);
    let producer = AvroProducer::new(&kafka, &endpoints.registry_url)?;
    let mut rng = rand::rng();
    let mut sent = Vec::with_capacity(count);
    for _ in 0..count {
        let (key, value) = sample_transaction(&mut rng, "tenant-demo");
        sent.push(producer.send(topic, &key, &value).await?);
    }
    println!("produced {} events to {topic}", sent.len());
    let positions: Vec<(i32, i64)> = sent.iter().map(|d| (d.partition, d.offset)).collect();
    let got = read_back(
        &kafka,
        &endpoints.registry_url,
        topic,
        &positions,
        Duration::from_secs(30),
    )
    .await?;
    let mut matched = 0;
    for d in &got {
        let same = sent
            .iter()
            .any(|s| s.partition == d.partition && s.offset == d.offset && s.value == d.value);
        matched += usize::from(same);
        println!(
            "{topic}/{}@{} key={} event_id={} amount={} {} {}",
            d.partition,
            d.offset,
            d.key,
            d.value["event_id"].as_str().unwrap_or("?"),
            d.value["amount"],
            d.value["currency"].as_str().unwrap_or("?"),
            if same { "ok" } else { "MISMATCH" }
        );
    }
    if matched != count {
        return Err(CliError::Failed(format!(
            "round trip: only {matched}/{count} events came back identical"
        )));
    }
    println!("round trip: {matched}/{count} events read back and decoded identically");
    if decisions_topic.is_empty() {
        return Ok(());
    }
    show_decisions(
        &kafka,
        &endpoints.registry_url,
        decisions_topic,
        &sent,
        |v| {
            format!(
                "{:<7} score={:.3} {}@{} {}",
                v["outcome"].as_str().unwrap_or("?"),
                v["score"].as_f64().unwrap_or(f64::NAN),
                v["model"]["name"].as_str().unwrap_or("?"),
                v["model"]["version"].as_str().unwrap_or("?"),
                v["reasons"].get(0).and_then(|r| r.as_str()).unwrap_or("")
            )
        },
    )
    .await?;
    if documents == 0 {
        return Ok(());
    }

    // Documents through the document-analyzer.
    let mut sent_docs = Vec::with_capacity(documents);
    for (i, text) in SAMPLE_DOCUMENTS.iter().cycle().take(documents).enumerate() {
        let doc = serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(), "tenant_id": "tenant-demo",
            "occurred_at": verdict_runtime::now_ms(), "document_id": format!("demo-doc-{i}"),
            "content_type": "text/plain", "filename": null, "text": text, "source": "verdict demo",
            "size_bytes": text.len(), "language": "en",
        });
        sent_docs.push(
            producer
                .send("document-uploads", &format!("demo-doc-{i}"), &doc)
                .await?,
        );
    }
    println!("produced {documents} documents to document-uploads");
    show_decisions(
        &kafka,
        &endpoints.registry_url,
        "document-decisions",
        &sent_docs,
        |v| {
            format!(
                "{:<11} {} ({:.2}) {} {} pii={} {}: {}",
                v["route"].as_str().unwrap_or("?"),
                v["category"].as_str().unwrap_or("?"),
                v["category_confidence"].as_f64().unwrap_or(f64::NAN),
                v["urgency"].as_str().unwrap_or("?"),
                v["sentiment"].as_str().unwrap_or("-"),
                v["pii_found"],
                v["model"]["name"].as_str().unwrap_or("?"),
                v["redacted_text"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(70)
                    .collect::<String>()
            )
        },
    )
    .await
}

const SAMPLE_DOCUMENTS: [&str; 4] = [
    "Invoice 2024-17: please pay the amount due of 1,250.00 EUR to IBAN DE89 3704 0044 0532 0130 00 within 30 days.",
    "This is unacceptable! My order never arrived and I want a refund. Reach me at jane.doe@example.com or +49 30 1234567.",
    "Hello, the login page shows an error since this morning and I cannot access my account. Can you help?",
    "Curriculum vitae: ten years of experience as a data engineer, education in mathematics, skills in Rust and SQL.",
];

/// Waits for the pipeline's decision on each sent event and prints it.
async fn show_decisions(
    kafka: &KafkaSettings,
    registry_url: &str,
    topic: &str,
    sent: &[verdict_cli::records::Delivered],
    describe: impl Fn(&serde_json::Value) -> String,
) -> Result<(), CliError> {
    let ids: HashSet<String> = sent
        .iter()
        .filter_map(|d| d.value["event_id"].as_str().map(String::from))
        .collect();
    let event_id = |r: &Record| {
        r.value
            .as_ref()
            .and_then(|v| v["event_id"].as_str().map(String::from))
    };
    let decisions = read_topic(kafka, registry_url, topic, Duration::from_secs(60), |rs| {
        let seen: HashSet<String> = rs.iter().filter_map(event_id).collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    let mut shown = HashSet::new();
    for d in &decisions {
        let Some(v) = d
            .value
            .as_ref()
            .filter(|_| event_id(d).is_some_and(|id| ids.contains(&id)))
        else {
            continue;
        };
        if !shown.insert(v["event_id"].as_str().unwrap_or("").to_string()) {
            continue;
        }
        let occurred = sent
            .iter()
            .find(|s| s.value["event_id"] == v["event_id"])
            .and_then(|s| s.value["occurred_at"].as_i64());
        let took = match (occurred, v["decided_at"].as_i64()) {
            (Some(o), Some(d)) => format!("{:>5} ms", d - o),
            _ => String::new(),
        };
        println!(
            "decision {} {took} {}",
            v["event_id"].as_str().unwrap_or("?"),
            describe(v)
        );
    }
    if shown.len() == ids.len() {
        println!(
            "pipeline: {}/{} events decided on {topic}",
            shown.len(),
            ids.len()
        );
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "pipeline: only {}/{} events decided on {topic} within 60 s (are the services running? `verdict stack status`)",
            shown.len(),
            ids.len()
        )))
    }
}
