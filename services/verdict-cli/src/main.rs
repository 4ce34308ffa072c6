//! `verdict`: local stack, topology, and records on the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::collections::HashSet;

use std::os::unix::process::CommandExt;
use verdict_cli::broker::{self, BrokerConfig, KafkaDist};
use verdict_cli::dlq;
use verdict_cli::groups_cmd::{self, ResetSpec, Scope, TopicSelection};
use verdict_cli::produce_consume::{self, Position};
use verdict_cli::records::{self, AvroProducer, read_back, sample_transaction};
use verdict_cli::shadow;
use verdict_cli::stack::StackOpts;
use verdict_cli::table::Output;
use verdict_cli::{CliError, ClientOptions, topology_cmd};
use verdict_runtime::kafka::{KafkaSettings, default_bootstrap};
use verdict_runtime::registry::{Registry, RegistryClient};
use verdict_runtime::telemetry;

#[derive(Parser)]
#[command(
    name = "verdict",
    version,
    about = "verdict: AI decision pipeline on Kafka",
    after_help = "Exit codes: 0 done, 1 failed, 2 bad input (named), 3 drift (topology apply --fail-on-drift), 4 refused as unsafe now (replay --execute on an active group)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientArgs,
}

/// How the command's Kafka clients connect, for a secured cluster (TLS, SASL).
#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// A client properties file, as Kafka's tools take it (`security.protocol`,
    /// `sasl.mechanism`, `sasl.jaas.config`, a PEM `ssl.truststore.location`, or librdkafka's
    /// names). `verdict stack up --secure` writes one for its admin.
    #[arg(
        long,
        env = "VERDICT_COMMAND_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    command_config: Option<PathBuf>,
    /// A client property, as kcat takes it (`-X security.protocol=SASL_SSL`); repeatable, wins
    /// over --command-config.
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE", value_parser = produce_consume::parse_key_value)]
    property: Vec<(String, String)>,
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

impl Endpoints {
    /// The broker's settings, once the broker and the registry have both answered.
    async fn reach(&self, client: &ClientOptions) -> Result<KafkaSettings, CliError> {
        let kafka =
            verdict_cli::reach_kafka(client.settings(self.bootstrap_servers.clone())).await?;
        verdict_cli::reach_registry(&self.registry(client)?).await?;
        Ok(kafka)
    }

    /// The registry, signed in as the client properties' `basic.auth.user.info`.
    fn registry(&self, client: &ClientOptions) -> Result<Registry, CliError> {
        client.registry(&self.registry_url)
    }
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
    /// The local stack: Apache Kafka (KRaft, one node or a cluster), schema registry and the
    /// services.
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
        /// The first broker's client port; further brokers count up by two (9094, 9096).
        #[arg(long, default_value_t = 9092, global = true)]
        broker_port: u16,
        /// The first broker's KRaft controller listener; further ones count up by two.
        #[arg(long, default_value_t = 9093, global = true)]
        controller_port: u16,
        /// How many brokers (1 to 3): a cluster of 3 replicates topics three ways with
        /// min.insync.replicas=2. Default: as many as the data dir holds, else 1.
        #[arg(long, global = true)]
        brokers: Option<usize>,
        #[arg(long, default_value_t = 8081, global = true)]
        registry_port: u16,
        /// Health/metrics port of the first service (fraud-detector); others follow.
        #[arg(long, default_value_t = 9464, global = true)]
        services_port: u16,
        /// The gateway's API; its health and metrics are on its services port.
        #[arg(long, default_value_t = 8088, global = true)]
        gateway_port: u16,
        /// Jaeger's OTLP/HTTP port (`up --tracing`): services send their spans there.
        #[arg(long, default_value_t = 4318, global = true)]
        jaeger_port: u16,
        /// Jaeger's UI and query API (`up --tracing`); its gRPC query port is the one below.
        #[arg(long, default_value_t = 16686, global = true)]
        jaeger_ui_port: u16,
        /// The topology `up` applies before starting the services.
        #[arg(long, default_value = "topology/topology.toml", global = true)]
        topology: PathBuf,
    },
    /// Run one of Apache Kafka's command-line tools from the installed jars, e.g.
    /// `verdict kafka consumer-groups --describe --group verdict-fraud-detector`.
    /// `--bootstrap-server` defaults to KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092.
    /// `verdict kafka TOOL --help` is the tool's own help; this one is `verdict help kafka`.
    #[command(disable_help_flag = true)]
    Kafka {
        /// topics, consumer-groups, console-consumer, console-producer, producer-perf-test,
        /// consumer-perf-test, get-offsets, delete-records, metadata-quorum, configs, storage
        tool: String,
        /// The tool's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The gateway's API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
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
    /// Consumer groups: state, members, committed offsets and lag (messages and seconds).
    Groups {
        #[command(subcommand)]
        action: GroupsAction,
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092",
            global = true
        )]
        bootstrap_servers: String,
        #[arg(long, value_enum, default_value = "table", global = true)]
        output: Output,
    },
    /// Move a stopped group's offsets, as `kafka-consumer-groups --reset-offsets` does: prints
    /// the plan and changes nothing unless --execute.
    Replay {
        group: String,
        #[command(flatten)]
        spec: ResetArgs,
        /// Every topic the group has committed offsets for.
        #[arg(long, conflicts_with = "topic")]
        all_topics: bool,
        /// A topic, or `topic:0,2` for some of its partitions (repeatable).
        #[arg(long)]
        topic: Vec<TopicSelection>,
        /// Commit the plan (refused while the group has members).
        #[arg(long)]
        execute: bool,
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092"
        )]
        bootstrap_servers: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// JSON lines (a file or stdin) → Avro records with the topic's registered schema.
    Produce {
        topic: String,
        /// The JSON lines file (default: stdin).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// The field whose value is the record key.
        #[arg(long, short)]
        key_field: Option<String>,
        /// Records per second (default: as fast as the broker takes them).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// A header on every record, key=value (repeatable).
        #[arg(short = 'H', long = "header", value_parser = produce_consume::parse_key_value)]
        headers: Vec<(String, String)>,
        /// Skip lines that do not fit the schema (reported) instead of sending nothing.
        #[arg(long)]
        keep_going: bool,
        /// `tenant_id` of lines that leave it out. A line without `event_id` gets a new
        /// UUID, one without `occurred_at` the time it is read (ms since the epoch).
        #[arg(long)]
        tenant: Option<String>,
        /// avro: with the topic's registered schema (the line's fields checked first); json or
        /// string: the line as it is, for topics without a schema.
        #[arg(long, value_enum, default_value = "avro")]
        value_format: produce_consume::ValueFormat,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Records → JSON lines, values decoded through the registry; offsets as kcat's `-o`.
    Consume {
        topic: String,
        /// beginning | end | stored | N | -N (from the end) | s@ms; add `-o e@ms` to stop at a time.
        #[arg(short = 'o', long = "offset", allow_hyphen_values = true)]
        offsets: Vec<Position>,
        /// Exit at the end of each partition (as it was at the start) instead of waiting.
        #[arg(short = 'e', long)]
        exit: bool,
        /// Commit what was printed for this group (which must have no active members).
        #[arg(short = 'G', long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(short = 'c', long)]
        count: Option<usize>,
        #[arg(short = 'p', long)]
        partition: Option<i32>,
        /// Records of committed transactions only (the default), or every record.
        #[arg(long, value_enum, default_value = "read_committed")]
        isolation: produce_consume::Isolation,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Dead-letter topics: list by error class, show one, redrive to the original topic.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        endpoints: Endpoints,
        #[arg(long, value_enum, default_value = "table", global = true)]
        output: Output,
    },
    /// Re-run a range of a service's input through another model version or config into
    /// shadow topics (own group; production untouched) and report what would change.
    Shadow {
        /// The service to shadow, e.g. fraud-detector.
        #[arg(long)]
        service: String,
        /// Names the shadow topics and group (`shadow-<name>.…`).
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "topology/topology.toml")]
        topology: PathBuf,
        /// First offset of every partition to re-run.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        from_offset: Option<i64>,
        /// Stop before this offset on every partition.
        #[arg(long, requires = "from_offset")]
        to_offset: Option<i64>,
        /// Records at or after this time (YYYY-MM-DDTHH:mm:SS.sss[Z]).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, requires = "since")]
        until: Option<String>,
        /// A setting of the shadow service, e.g. `service.model_file=models/fraud/v2.json` (repeatable).
        #[arg(long = "set", value_parser = produce_consume::parse_key_value)]
        overrides: Vec<(String, String)>,
        #[arg(long, default_value = "http://127.0.0.1:9465")]
        model_server_url: String,
        /// How far before the range the shadow service replays events into its state only,
        /// so it starts from production's state (ISO-8601; `PT0S`: start empty).
        #[arg(long, default_value = "PT10M")]
        warmup: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Keep the shadow topics (default: deleted after the report).
        #[arg(long)]
        keep_topics: bool,
        /// Write the markdown report here (it is printed too).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// How many changed events the report lists.
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[command(flatten)]
        endpoints: Endpoints,
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
enum DlqAction {
    /// Dead letters grouped by error class, service and original topic, with time range.
    List {
        topic: String,
        #[command(flatten)]
        select: SelectionArgs,
    },
    /// One dead letter with all its headers and its decoded value.
    Show {
        topic: String,
        #[arg(long, short)]
        partition: i32,
        #[arg(long, short)]
        offset: i64,
    },
    /// Re-publish selected dead letters to their original topic (key, value, headers intact,
    /// plus verdict.redrive.count). Each letter goes back once, whatever the selections: the
    /// topic's ledger (`TOPIC.redriven`) remembers what was sent.
    Redrive {
        topic: String,
        #[command(flatten)]
        select: SelectionArgs,
        /// Count what would be sent; send and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// The topology that says which service writes TOPIC and what it reads: a dead
        /// letter goes back only to one of those topics.
        #[arg(long, default_value = "topology/topology.toml")]
        topology: PathBuf,
    },
}

/// Which dead letters `dlq list` counts and `dlq redrive` sends (every condition given holds).
#[derive(clap::Args)]
struct SelectionArgs {
    /// Only this error class (repeatable, any case): Decode, UnknownSchema, Invalid, Panic,
    /// Registry, Transient, Output, Refused.
    #[arg(long)]
    class: Vec<String>,
    #[arg(long)]
    service: Option<String>,
    /// Failed at or after this time (YYYY-MM-DDTHH:mm:SS.sss[Z]).
    #[arg(long)]
    since: Option<String>,
    /// Failed before this time.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, short)]
    partition: Option<i32>,
    #[arg(long)]
    from_offset: Option<i64>,
    /// Inclusive.
    #[arg(long)]
    to_offset: Option<i64>,
}

impl SelectionArgs {
    fn selection(self) -> Result<dlq::Selection, CliError> {
        let time = |flag: &str, t: Option<String>| {
            t.map(|t| groups_cmd::parse_datetime(flag, &t)).transpose()
        };
        Ok(dlq::Selection {
            classes: self
                .class
                .iter()
                .map(|c| dlq::error_class(c))
                .collect::<Result<_, _>>()?,
            service: self.service,
            since_ms: time("--since", self.since)?,
            until_ms: time("--until", self.until)?,
            partition: self.partition,
            from_offset: self.from_offset,
            to_offset: self.to_offset,
        })
    }
}

#[derive(Subcommand)]
enum GroupsAction {
    /// Every group with its state and member count.
    List,
    /// One group: state, members, and per partition the committed offset, log-end offset,
    /// lag in messages and in seconds (age of the record at the committed offset).
    Describe { group: String },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ResetArgs {
    /// The earliest offset still in the log.
    #[arg(long)]
    to_earliest: bool,
    /// The log end (skip everything not yet read).
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_offset: Option<i64>,
    /// Move by N (negative: back).
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// The first record at or after YYYY-MM-DDTHH:mm:SS.sss[Z|+hh:mm] (local time without a zone).
    #[arg(long)]
    to_datetime: Option<String>,
    /// The first record at or after now minus an ISO 8601 duration (PnDTnHnMnS).
    #[arg(long)]
    by_duration: Option<String>,
}

impl ResetArgs {
    fn spec(&self) -> Result<ResetSpec, CliError> {
        Ok(if self.to_earliest {
            ResetSpec::Earliest
        } else if self.to_latest {
            ResetSpec::Latest
        } else if let Some(o) = self.to_offset {
            ResetSpec::ToOffset(o)
        } else if let Some(n) = self.shift_by {
            ResetSpec::ShiftBy(n)
        } else if let Some(d) = &self.to_datetime {
            ResetSpec::ToDatetime(groups_cmd::parse_datetime("--to-datetime", d)?)
        } else if let Some(d) = &self.by_duration {
            ResetSpec::ByDuration(groups_cmd::parse_duration(d)?)
        } else {
            return Err(CliError::Usage("say where to: --to-earliest, --to-latest, --to-offset, --shift-by, --to-datetime or --by-duration".into()));
        })
    }
}

#[derive(Subcommand)]
enum StackAction {
    /// Start what is not running and wait until it answers.
    Up {
        /// A secured cluster: SASL_SSL (SCRAM-SHA-512) with certificates made in the data
        /// dir, ACLs enforced, each service its own principal with the ACLs the topology
        /// gives it, `admin` for the CLI. A data dir made so stays so.
        #[arg(long)]
        secure: bool,
        /// Also start Jaeger (when installed: `scripts/install.sh --tests`) on loopback and
        /// have every service export its spans there; prints the UI's address.
        #[arg(long)]
        tracing: bool,
    },
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
    /// The ACLs each service needs and nothing more (READ on its input, retry topics,
    /// changelogs and group; WRITE on its outputs, retry and dead-letter topics), printed as
    /// `kafka-acls` commands; --apply adds them with Kafka's own tool.
    Acls {
        #[command(flatten)]
        file: TopologyFile,
        /// Only this service (repeatable; default: every topology service). `lag-monitor` and
        /// `gateway`, which run beside the topology, only when named.
        #[arg(long)]
        service: Vec<String>,
        /// The principal a service runs as, `service=User:name` (repeatable; default
        /// `User:<service>`).
        #[arg(long, value_parser = produce_consume::parse_key_value)]
        principal: Vec<(String, String)>,
        /// The services run with engine.guarantee = "exactly_once": add their transactional ids.
        #[arg(long)]
        exactly_once: bool,
        /// Add them to the cluster (with the admin's --command-config on a secured one).
        #[arg(long, conflicts_with = "check")]
        apply: bool,
        /// Compare them with the cluster's ACLs: what is missing or denied, and what these
        /// principals are granted beyond them; exit 3 on any difference.
        #[arg(long)]
        check: bool,
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092"
        )]
        bootstrap_servers: String,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Mint a key: prints it once, and the `[[gateway.keys]]` lines (its SHA-256, never the
    /// key) to add to the gateway's settings.
    New {
        /// The tenant its requests are for.
        #[arg(long)]
        tenant: String,
        /// What it may do, comma-separated: transactions:write, documents:write, jobs:read,
        /// reviews:write.
        #[arg(long, value_delimiter = ',', value_parser = verdict_cli::keys::parse_scope, required = true)]
        scopes: Vec<gateway::auth::Scope>,
        /// Its name in logs and metrics (default: the tenant and the start of its hash).
        #[arg(long)]
        id: Option<String>,
        /// `batch` keys are slowed while the pipeline they feed lags; `interactive` are not.
        #[arg(long, default_value = "interactive", value_parser = verdict_cli::keys::parse_tier)]
        tier: gateway::config::Tier,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_cli_logging();
    let cli = Cli::parse();
    let outcome =
        match ClientOptions::load(cli.client.command_config.as_deref(), &cli.client.property) {
            Ok(client) => run(cli.command, &client).await,
            Err(e) => Err(e),
        };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verdict: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command, client: &ClientOptions) -> Result<(), CliError> {
    match command {
        Command::Stack {
            action,
            data_dir,
            broker_port,
            controller_port,
            brokers,
            registry_port,
            services_port,
            gateway_port,
            jaeger_port,
            jaeger_ui_port,
            topology,
        } => {
            let (secure, tracing) = match action {
                StackAction::Up { secure, tracing } => (secure, tracing),
                _ => (false, false),
            };
            let stack = StackOpts {
                data_dir,
                broker_port,
                controller_port,
                brokers,
                registry_port,
                services_port,
                gateway_port,
                jaeger_port,
                jaeger_ui_port,
                topology,
                secure,
                tracing,
            };
            match action {
                StackAction::Up { .. } => stack.up().await,
                StackAction::Down => stack.down(),
                StackAction::Status => stack.status().await,
            }
        }
        Command::Kafka { tool, mut args } => {
            let dist = KafkaDist::locate()?;
            // First: every tool takes it there, and metadata-quorum only before its
            // subcommand.
            if tool != "storage" && !args.iter().any(|a| a.starts_with("--bootstrap-server")) {
                args.splice(
                    0..0,
                    ["--bootstrap-server".to_string(), default_bootstrap()],
                );
            }
            if let Some(file) = &client.command_config {
                let flag = broker::client_config_flag(&tool);
                if !args.iter().any(|a| a.starts_with(flag)) {
                    args.extend([flag.to_string(), file.display().to_string()]);
                }
            }
            let err = dist.tool(&tool, &args)?.exec();
            Err(CliError::Failed(format!("cannot run Java: {err}")))
        }
        Command::Keys {
            action:
                KeysAction::New {
                    tenant,
                    scopes,
                    id,
                    tier,
                },
        } => {
            let minted = verdict_cli::keys::mint(&tenant, scopes, id, tier)?;
            println!(
                "API key of tenant {tenant} (id {}); shown this once, keep it secret:\n\n  {}\n",
                minted.entry.id, minted.key
            );
            println!(
                "Add to the gateway's settings (they hold its SHA-256, never the key):\n\n{}",
                minted.settings()?
            );
            println!(
                "Then: curl -s http://127.0.0.1:8088/v1/health -H \"Authorization: Bearer {}\"",
                minted.key
            );
            Ok(())
        }
        Command::TestBroker {
            dir,
            port,
            controller_port,
            heap_mb,
            exit_with,
        } => {
            let cfg = BrokerConfig::single(dir, port, controller_port, heap_mb);
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
            let kafka = endpoints.reach(client).await?;
            let registry = RegistryClient::new(endpoints.registry(client)?)?;
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
        Command::Topology {
            action:
                TopologyAction::Acls {
                    file,
                    service,
                    principal,
                    exactly_once,
                    apply,
                    check,
                    bootstrap_servers,
                },
        } => {
            let topology = topology_cmd::check(&file.file, file.schemas.as_deref())?;
            let acls = topology_cmd::acls(&topology, &service, &principal, exactly_once)?;
            if check {
                let kafka = verdict_cli::reach_kafka(client.settings(bootstrap_servers)).await?;
                return topology_cmd::check_acls(&kafka, &acls).await;
            }
            let mut connection = vec!["--bootstrap-server".to_string(), bootstrap_servers];
            if let Some(f) = &client.command_config {
                connection.extend(["--command-config".to_string(), f.display().to_string()]);
            }
            if apply {
                topology_cmd::apply_acls(&acls, &connection)?;
                println!("added {} ACL(s) with kafka-acls", acls.len());
                return Ok(());
            }
            for a in &acls {
                println!("# {a}");
            }
            for args in verdict_runtime::acls::tool_commands(&acls) {
                println!("kafka-acls {} {}", connection.join(" "), args.join(" "));
            }
            Ok(())
        }
        Command::Groups {
            action,
            bootstrap_servers,
            output,
        } => {
            let kafka = verdict_cli::reach_kafka(client.settings(bootstrap_servers)).await?;
            match action {
                GroupsAction::List => groups_cmd::list(&kafka, output).await,
                GroupsAction::Describe { group } => {
                    groups_cmd::describe(&kafka, &group, output).await
                }
            }
        }
        Command::Replay {
            group,
            spec,
            all_topics,
            topic,
            execute,
            bootstrap_servers,
            output,
        } => {
            let scope = match (all_topics, topic.is_empty()) {
                (true, _) => Scope::AllTopics,
                (false, false) => Scope::Topics(topic),
                (false, true) => {
                    return Err(CliError::Usage(
                        "say which partitions: --all-topics or --topic t[:p,…]".into(),
                    ));
                }
            };
            let kafka = verdict_cli::reach_kafka(client.settings(bootstrap_servers)).await?;
            groups_cmd::replay(&kafka, &group, &spec.spec()?, &scope, execute, output).await
        }
        Command::Produce {
            topic,
            file,
            key_field,
            rate,
            headers,
            keep_going,
            tenant,
            value_format,
            endpoints,
        } => {
            // Lines sent as they are need no registry.
            let kafka = match value_format {
                produce_consume::ValueFormat::Avro => endpoints.reach(client).await?,
                _ => {
                    verdict_cli::reach_kafka(client.settings(endpoints.bootstrap_servers.clone()))
                        .await?
                }
            };
            let opts = produce_consume::ProduceOpts {
                key_field,
                rate,
                headers,
                keep_going,
                tenant,
                value_format,
            };
            let input: Box<dyn std::io::BufRead> = match file {
                Some(f) => Box::new(std::io::BufReader::new(std::fs::File::open(&f).map_err(
                    |e| CliError::Usage(format!("cannot read {}: {e}", f.display())),
                )?)),
                None => Box::new(std::io::stdin().lock()),
            };
            let report =
                produce_consume::produce(&kafka, endpoints.registry(client)?, &topic, input, &opts)
                    .await?;
            eprintln!(
                "produced {} record(s) to {topic}, skipped {}",
                report.sent, report.skipped
            );
            Ok(())
        }
        Command::Consume {
            topic,
            offsets,
            exit,
            group,
            count,
            partition,
            isolation,
            endpoints,
        } => {
            let kafka = isolation.apply(&endpoints.reach(client).await?);
            let opts = produce_consume::ConsumeOpts {
                offsets,
                exit_at_end: exit,
                group,
                count,
                partition,
            };
            let n = produce_consume::consume(&kafka, endpoints.registry(client)?, &topic, &opts)
                .await?;
            eprintln!("consumed {n} record(s) from {topic}");
            Ok(())
        }
        Command::Dlq {
            action,
            endpoints,
            output,
        } => {
            let kafka =
                verdict_cli::reach_kafka(client.settings(endpoints.bootstrap_servers.clone()))
                    .await?;
            match action {
                DlqAction::List { topic, select } => {
                    dlq::list(&kafka, &topic, &select.selection()?, output).await
                }
                DlqAction::Show {
                    topic,
                    partition,
                    offset,
                } => {
                    let registry = endpoints.registry(client)?;
                    verdict_cli::reach_registry(&registry).await?;
                    dlq::show(&kafka, registry, &topic, partition, offset).await
                }
                DlqAction::Redrive {
                    topic,
                    select,
                    dry_run,
                    topology,
                } => {
                    let origins = dlq::Origins::of(&topology_cmd::check(&topology, None)?, &topic)?;
                    let selection = select.selection()?;
                    let r = dlq::redrive(&kafka, &topic, &origins, &selection, dry_run).await?;
                    if output == Output::Json {
                        return verdict_cli::table::print_json(&r);
                    }
                    let verb = if dry_run { "would redrive" } else { "redrove" };
                    println!(
                        "{verb} {} of {} dead letter(s) scanned ({} not selected, {} redriven before, {} without an original topic) by class {:?}; remembered in {}",
                        r.redriven,
                        r.scanned,
                        r.not_selected,
                        r.redriven_before,
                        r.no_origin,
                        r.by_class,
                        r.ledger
                    );
                    if !r.refused.is_empty() {
                        println!(
                            "refused {} whose original topic is not one {} reads, by where they pointed: {:?}",
                            r.refused.values().sum::<usize>(),
                            origins.services.join(" or "),
                            r.refused
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Shadow {
            service,
            name,
            topology,
            from_offset,
            to_offset,
            since,
            until,
            overrides,
            model_server_url,
            timeout,
            warmup,
            keep_topics,
            report,
            json,
            top,
            endpoints,
        } => {
            let warmup_ms = groups_cmd::parse_duration(&warmup)?;
            let range = match (from_offset, since) {
                (Some(from), _) => shadow::Range::Offsets {
                    from,
                    to: to_offset,
                },
                (None, Some(s)) => shadow::Range::Time {
                    since: groups_cmd::parse_datetime("--since", &s)?,
                    until: until
                        .as_deref()
                        .map(|t| groups_cmd::parse_datetime("--until", t))
                        .transpose()?,
                },
                (None, None) => {
                    return Err(CliError::Usage(
                        "say which events: --from-offset N [--to-offset M] or --since T [--until T]"
                            .into(),
                    ));
                }
            };
            let kafka = endpoints.reach(client).await?;
            let opts = shadow::ShadowOpts {
                service,
                name,
                topology,
                range,
                overrides,
                registry: endpoints.registry(client)?,
                model_server_url,
                timeout: Duration::from_secs(timeout),
                keep_topics,
                warmup_ms,
                report_md: report,
                report_json: json,
                top,
            };
            let report = shadow::run(&kafka, &opts).await?;
            print!("{}", report.markdown());
            Ok(())
        }
        Command::Demo {
            endpoints,
            count,
            topic,
            decisions_topic,
            documents,
        } => {
            demo(
                endpoints,
                client,
                count,
                &topic,
                &decisions_topic,
                documents,
            )
            .await
        }
    }
}

/// Produces `count` sample transactions, reads them back and checks they match,
/// then shows the pipeline's decision for each.
async fn demo(
    endpoints: Endpoints,
    client: &ClientOptions,
    count: usize,
    topic: &str,
    decisions_topic: &str,
    documents: usize,
) -> Result<(), CliError> {
    let kafka = endpoints.reach(client).await?;
    let registry = endpoints.registry(client)?;
    let producer = AvroProducer::new(&kafka, &registry)?;
    // Decisions are read from where their topics end now: a used stack's history is not
    // read again.
    let decisions_from = match decisions_topic {
        "" => None,
        t => Some(records::ends(&kafka, t).await?),
    };
    let documents_from = match documents {
        0 => None,
        _ => Some(records::ends(&kafka, DOCUMENT_DECISIONS).await?),
    };
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
        &registry,
        topic,
        &positions,
        Duration::from_secs(30),
    )
    .await?;
    let mut matched = 0;
    for d in &got {
        let same = sent.iter().any(|s| {
            s.partition == d.partition
                && s.offset == d.offset
                && records::same_fields(&s.value, &d.value)
        });
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
    let Some(decisions_from) = decisions_from else {
        return Ok(());
    };
    show_decisions(
        &kafka,
        &registry,
        decisions_topic,
        &decisions_from,
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
    let Some(documents_from) = documents_from else {
        return Ok(());
    };

    // Documents through the document-analyzer.
    let mut sent_docs = Vec::with_capacity(documents);
    for (i, text) in records::SAMPLE_DOCUMENTS
        .iter()
        .cycle()
        .take(documents)
        .enumerate()
    {
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
        &registry,
        DOCUMENT_DECISIONS,
        &documents_from,
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

const DOCUMENT_DECISIONS: &str = "document-decisions";

/// Waits for the pipeline's decision on each sent event (reading `topic` from `from`) and
/// prints it.
async fn show_decisions(
    kafka: &KafkaSettings,
    registry: &Registry,
    topic: &str,
    from: &std::collections::BTreeMap<i32, i64>,
    sent: &[verdict_cli::records::Delivered],
    describe: impl Fn(&serde_json::Value) -> String,
) -> Result<(), CliError> {
    let ids: HashSet<String> = sent
        .iter()
        .filter_map(|d| d.value["event_id"].as_str().map(String::from))
        .collect();
    let mut shown = HashSet::new();
    records::read_from(kafka, registry, topic, from, Duration::from_secs(60), |d| {
        let Some(v) = d.value.as_ref() else {
            return false;
        };
        let Some(id) = v["event_id"].as_str().filter(|id| ids.contains(*id)) else {
            return false;
        };
        if !shown.insert(id.to_string()) {
            return false;
        }
        let occurred = sent
            .iter()
            .find(|s| s.value["event_id"] == v["event_id"])
            .and_then(|s| s.value["occurred_at"].as_i64());
        let took = match (occurred, v["decided_at"].as_i64()) {
            (Some(o), Some(d)) => format!("{:>5} ms", d - o),
            _ => String::new(),
        };
        println!("decision {id} {took} {}", describe(v));
        shown.len() == ids.len()
    })
    .await?;
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
