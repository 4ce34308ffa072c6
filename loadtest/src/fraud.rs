//! `verdict-loadtest fraud`: the fraud pipeline against the broker's own ceiling and against
//! an earlier build, in one run on one broker.
//!
//! 1. Starts an Apache Kafka broker of its own (single-node KRaft, temp dir, free loopback
//!    ports, as the tests do), a schema registry and the topology (once per build measured).
//! 2. Pre-fills `--events` transactions into each build's `transactions` and into `ceiling-in`.
//! 3. Ceiling: a plain rdkafka loop (consume one, produce two, no work) drains `ceiling-in`.
//! 4. Drain: each build of the fraud-detector (`--baseline` first, then this one) drains its
//!    backlog alone: events/s, and CPU per event (the service's CPU seconds ÷ events).
//! 5. Latency: for each `--rates` entry, `--warmup` seconds then `--seconds` of events at that
//!    offered load into the caught-up pipeline; `occurred_at` → the decision's timestamp, and
//!    send → decision read by a consumer, p50/p95/p99/max.
//! 6. Peak RSS of the fraud-detector.
//!
//! Everything targets 127.0.0.1 and stops by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::StreamExt;
use harness::{Launch, ServiceProcess, Stack, Topology, apply_topology};
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use verdict_runtime::kafka::{KafkaSettings, TopicSpec};

use crate::{
    EventEncoder, Pending, acked, bar, bucket_quantile, cpu_seconds, encode_events, enqueue, fill,
    peak_rss_mib, producer, record_buckets, wait_for_records,
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Events for the throughput phases (ceiling and each build's drain).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Offered loads of the latency phases, events/s.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    rates: Vec<u64>,
    /// Length of each latency phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Warm-up before each latency phase, at its rate, not reported.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Distinct accounts (record keys).
    #[arg(long, default_value_t = 2_000)]
    accounts: usize,
    /// Also drain with this many instances of this build in one group (scale-out); 1: no.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// An earlier build of the fraud-detector to drain the same backlog first
    /// (`bash loadtest/baseline.sh REV` builds one).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Record a CPU profile of this build's drain with `perf record -e cpu-clock -g` into
    /// this file (read it with `perf report -i FILE`).
    #[arg(long)]
    perf_out: Option<PathBuf>,
    /// A librdkafka property for this build's clients (`kafka.properties`), kcat-style
    /// `-X key=value`; repeatable (e.g. `-X linger.ms=10 -X compression.type=lz4`).
    #[arg(short = 'X', value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// This build with `engine.guarantee = "exactly_once"` (with `--baseline
    /// target/release/fraud-detector`, at-least-once against exactly-once in one run).
    #[arg(long)]
    exactly_once: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

const CEILING_IN: &str = "ceiling-in";
const CEILING_OUT: [&str; 2] = ["ceiling-out-a", "ceiling-out-b"];

/// One build's drain of the pre-filled backlog.
struct Drain {
    label: String,
    events_per_s: f64,
    cpu_us_per_event: f64,
    peak_rss_mib: f64,
    /// Records each instance processed.
    shares: Vec<f64>,
}

pub async fn run(args: Args) {
    println!(
        "verdict-loadtest fraud: {} events per throughput phase; latency at {:?} events/s for {} s after {} s of warm-up; {} accounts",
        args.events, args.rates, args.seconds, args.warmup, args.accounts
    );
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let topics: Vec<TopicSpec> = std::iter::once(CEILING_IN)
        .chain(CEILING_OUT)
        .map(|name| TopicSpec {
            name: name.into(),
            partitions: 6,
            replication_factor: 1,
            retention_ms: None,
            cleanup_policy: "delete".into(),
        })
        .collect();
    kafka.create_topics(&topics).await.expect("ceiling topics");

    // One topology (and backlog) per build, so each drains the same events from the start.
    let mut builds: Vec<(String, Launch, Topology, usize)> = Vec::new();
    if let Some(binary) = &args.baseline {
        let label = format!(
            "baseline {}",
            binary
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        );
        let launch = Launch {
            binary: Some(binary.clone()),
            portable_settings: true,
            // Settings newer than state stores' build.
            without: vec![
                "service.velocity_max_skew_ms",
                "engine.restore_timeout_ms",
                "engine.shadow_warmup",
            ],
            ..Launch::default()
        };
        let topology = apply_topology(&stack, None).await;
        // A build of an earlier revision (`baseline.sh` names it fraud-detector-REV) may
        // predate state stores; this tree's own binary does not.
        if binary.file_name().is_some_and(|n| n != "fraud-detector") {
            without_stores(&topology);
        }
        builds.push((label, launch, topology, 1));
    }
    let this = Launch {
        // The engine section too, when it carries the guarantee.
        portable_settings: !args.exactly_once,
        ..Launch::default()
    };
    let label = if args.exactly_once {
        "this build, exactly-once".to_string()
    } else if args.property.is_empty() {
        "this build".to_string()
    } else {
        let props: Vec<String> = args
            .property
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("this build, {}", props.join(" "))
    };
    builds.push((
        label.clone(),
        this.clone(),
        apply_topology(&stack, None).await,
        1,
    ));
    if args.instances > 1 {
        builds.push((
            format!("{label}, {} instances", args.instances),
            this,
            apply_topology(&stack, None).await,
            args.instances,
        ));
    }

    let events = encode_events(
        &stack.registry_url(),
        &builds[0].2.topic("transactions"),
        args.events,
        args.accounts,
    )
    .await;
    let producer = producer(&kafka);
    let mut fill_rate = 0.0;
    for (_, _, topology, _) in &builds {
        fill_rate = fill(&producer, &topology.topic("transactions"), &events).await;
    }
    fill(&producer, CEILING_IN, &events).await;
    drop(events);

    let ceiling_eps = ceiling(&kafka, args.events).await;

    let mut drains = Vec::new();
    let mut current = None;
    for (label, launch, topology, instances) in builds {
        let this = launch.binary.is_none();
        let mut svcs: Vec<ServiceProcess> = (0..instances)
            .map(|_| {
                ServiceProcess::launch::<fraud_detector::Spec>(
                    &harness::deployment(&stack, &topology, None),
                    harness::free_port(),
                    &launch,
                    |s| {
                        if this {
                            s.kafka.properties.extend(args.property.iter().cloned());
                            if args.exactly_once {
                                s.engine.guarantee =
                                    verdict_runtime::engine::Guarantee::ExactlyOnce;
                            }
                        }
                    },
                )
            })
            .collect();
        svcs[0].wait_ready(Duration::from_secs(60)).await;
        let perf = args
            .perf_out
            .as_ref()
            .filter(|_| this && instances == 1)
            .map(|out| perf_record(svcs[0].pid(), out));
        let cpu_of =
            |svcs: &[ServiceProcess]| svcs.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>();
        let cpu0 = cpu_of(&svcs);
        let start = Instant::now();
        let n = i64::try_from(args.events).unwrap_or(i64::MAX);
        wait_for_records(&kafka, &topology.topic("fraud-decisions"), n, start, &label).await;
        let secs = wait_for_records(&kafka, &topology.topic("audit"), n, start, "audit").await;
        let cpu = cpu_of(&svcs) - cpu0;
        if let Some(perf) = perf {
            stop_perf(perf);
        }
        let mut shares = Vec::new();
        for svc in &svcs {
            shares.push(svc.metric("verdict_records_processed_total").await);
        }
        drains.push(Drain {
            label,
            events_per_s: args.events as f64 / secs,
            cpu_us_per_event: cpu * 1e6 / args.events as f64,
            peak_rss_mib: svcs
                .iter()
                .map(|s| peak_rss_mib(s.pid()))
                .fold(0.0, f64::max),
            shares,
        });
        if this && instances == 1 && current.is_none() {
            current = svcs.pop().map(|svc| (svc, topology));
        } else {
            svcs.iter_mut().for_each(ServiceProcess::stop_cleanly);
        }
    }
    let (mut svc, topology) = current.expect("this build ran");

    let mut latencies = Vec::new();
    for &rate in &args.rates {
        let before = record_buckets(&svc).await;
        let lat = latency(
            &kafka,
            &stack.registry_url(),
            (
                &topology.topic("transactions"),
                &topology.topic("fraud-decisions"),
            ),
            Load {
                rate,
                warmup: Duration::from_secs(args.warmup),
                measure: Duration::from_secs(args.seconds),
                accounts: args.accounts,
            },
        )
        .await;
        let after = record_buckets(&svc).await;
        let in_service = (
            bucket_quantile(&before, &after, 0.50),
            bucket_quantile(&before, &after, 0.99),
        );
        latencies.push((lat, in_service));
    }
    let rss = peak_rss_mib(svc.pid());
    let processed = svc.metric("verdict_records_processed_total").await;
    let dead = svc.metric("verdict_dead_letters_total").await;
    svc.stop_cleanly();

    println!();
    println!(
        "== verdict fraud pipeline benchmark (Apache Kafka {} single-node KRaft, loopback, 2 cores shared by broker, service and load generator)",
        verdict_cli::broker::kafka_version()
    );
    println!("producer fill rate                              {fill_rate:>10.0} events/s");
    println!("broker ceiling (consume 1, produce 2, no work)  {ceiling_eps:>10.0} events/s");
    println!(
        "{:<34} {:>12} {:>10} {:>14} {:>10}",
        "drain of the backlog", "events/s", "% ceiling", "CPU µs/event", "peak RSS"
    );
    for d in &drains {
        println!(
            "{:<34} {:>12.0} {:>9.1}% {:>14.1} {:>6.0} MiB",
            d.label,
            d.events_per_s,
            100.0 * d.events_per_s / ceiling_eps,
            d.cpu_us_per_event,
            d.peak_rss_mib
        );
    }
    let one = drains
        .iter()
        .find(|d| d.shares.len() == 1 && d.label.starts_with("this build"));
    if let (Some(base), Some(this)) = (drains.first().filter(|_| args.baseline.is_some()), one) {
        println!(
            "this build / baseline: {:.2}× the events/s, {:.2}× less CPU per event",
            this.events_per_s / base.events_per_s,
            base.cpu_us_per_event / this.cpu_us_per_event
        );
    }
    if let (Some(one), Some(many)) = (one, drains.iter().find(|d| d.shares.len() > 1)) {
        let total: f64 = many.shares.iter().sum();
        let shares: Vec<String> = many
            .shares
            .iter()
            .map(|s| format!("{:.0} %", 100.0 * s / total.max(1.0)))
            .collect();
        println!(
            "scale-out: {} instances give {:.2}× one instance's events/s (records per instance: {})",
            many.shares.len(),
            many.events_per_s / one.events_per_s,
            shares.join(" / ")
        );
    }
    println!("latency after {} s of warm-up at each rate:", args.warmup);
    for (l, (service_p50, service_p99)) in &latencies {
        println!(
            "  offered {:>6.0}/s ({}/{} decided): occurred_at→decision timestamp p50 {} p95 {} p99 {} max {} ms | send→decision read p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms | in the service (consumed→outputs acked, bucket bounds) p50 ≤{service_p50:.1} p99 ≤{service_p99:.1} ms",
            l.offered,
            l.decided,
            l.sent,
            l.event_time.value_at_quantile(0.50),
            l.event_time.value_at_quantile(0.95),
            l.event_time.value_at_quantile(0.99),
            l.event_time.max(),
            ms(&l.read, 0.50),
            ms(&l.read, 0.95),
            ms(&l.read, 0.99),
            ms(&l.read, 1.0),
        );
    }
    println!("fraud-detector peak RSS after the latency phases {rss:>8.1} MiB");
    println!("records processed {processed:.0}, dead letters {dead:.0}");
}

/// `perf record` of process `pid` until [`stop_perf`].
fn perf_record(pid: u32, out: &std::path::Path) -> std::process::Child {
    std::process::Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "--call-graph",
            "dwarf,16384",
            "-F",
            "999",
            "-q",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf)")
}

fn stop_perf(mut perf: std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(perf.id()).unwrap_or(i32::MAX));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = perf.wait();
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The broker's pass-through ceiling: consume one, produce two, commit; no work.
async fn ceiling(kafka: &KafkaSettings, n: usize) -> f64 {
    let consumer: StreamConsumer = kafka
        .consumer_config("ceiling")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("consumer");
    consumer.subscribe(&[CEILING_IN]).expect("subscribe");
    let producer = producer(kafka);
    let pb = bar(n as u64, "ceiling (no work)");
    let mut pending = Pending::new();
    let mut consumed = 0;
    let mut start = None;
    let mut last_commit = Instant::now();
    while consumed < n {
        let m = consumer.recv().await.expect("recv");
        start.get_or_insert_with(Instant::now);
        consumed += 1;
        for topic in CEILING_OUT {
            enqueue(
                &producer,
                &mut pending,
                topic,
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
            )
            .await;
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            acked(r);
        }
        if last_commit.elapsed() > Duration::from_millis(200) {
            let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async);
            last_commit = Instant::now();
        }
        pb.inc(1);
    }
    while let Some(r) = pending.next().await {
        acked(r);
    }
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    pb.finish();
    n as f64 / start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64())
}

/// What the latency reader needs of a decision.
#[derive(serde::Deserialize)]
struct DecisionOf {
    event_id: String,
}

/// The shape of a latency phase.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub rate: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub accounts: usize,
}

pub(crate) struct Latency {
    pub offered: f64,
    pub decided: usize,
    pub sent: usize,
    /// Event `occurred_at` (stamped when sent) → the decision record's timestamp, ms.
    pub event_time: Histogram<u64>,
    /// Send → the decision read by a consumer of the decisions topic, µs.
    pub read: Histogram<u64>,
}

/// Fixed offered load into `input`: events are encoded as they are sent, with `occurred_at`
/// = now; the decisions are read off `decisions` as they come. Events of the warm-up are not
/// counted.
pub(crate) async fn latency(
    kafka: &KafkaSettings,
    registry: &str,
    (input, decisions): (&str, &str),
    load: Load,
) -> Latency {
    // event id → (sent, occurred_at ms); only measured events are in it.
    let sent_at: Arc<DashMap<String, (Instant, i64)>> = Arc::new(DashMap::new());
    let partitions = kafka
        .topic_partitions()
        .await
        .expect("md")
        .get(decisions)
        .copied()
        .unwrap_or(6);
    let consumer: StreamConsumer = kafka
        .reader_config()
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .set("fetch.queue.backoff.ms", "5")
        .set("fetch.error.backoff.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(decisions, p, Offset::End)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let measured = usize::try_from(load.rate * load.measure.as_secs()).unwrap_or(usize::MAX);
    let reader = {
        let sent_at = sent_at.clone();
        let codec = verdict_runtime::serde::Codec::new(
            registry,
            verdict_runtime::registry::DEFAULT_TIMEOUT,
        );
        tokio::spawn(async move {
            let new = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist");
            let (mut event_time, mut read) = (new(), new());
            let mut decided = 0;
            let deadline = Instant::now() + Duration::from_secs(180);
            while decided < measured && Instant::now() < deadline {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
                else {
                    continue;
                };
                let now = Instant::now();
                let Ok(DecisionOf { event_id }) = codec.decode(m.payload()).await else {
                    continue;
                };
                let Some((_, (sent, occurred_at))) = sent_at.remove(&event_id) else {
                    continue;
                };
                let micros = now.duration_since(sent).as_micros();
                let _ = read.record(u64::try_from(micros).unwrap_or(u64::MAX));
                if let Some(ts) = m.timestamp().to_millis() {
                    let _ = event_time.record(u64::try_from(ts - occurred_at).unwrap_or(0));
                }
                decided += 1;
            }
            (event_time, read, decided)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // the reader is positioned at the end

    // An event producer tuned for latency: each event leaves when it is produced.
    let producer: rdkafka::producer::FutureProducer = kafka
        .producer_config()
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let encoder = EventEncoder::new(registry, input).await;
    let total = measured + usize::try_from(load.rate * load.warmup.as_secs()).unwrap_or(0);
    let pb = bar(total as u64, &format!("offered {}/s", load.rate));
    let tick = Duration::from_millis(5);
    let per_tick = load.rate as f64 * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Pending::new();
    let mut sent = 0;
    let mut measuring_since = None;
    let mut n = 0;
    let mut rng = rand::rng();
    while n < total {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 && n < total {
            let warm = n < total - measured;
            let (key, bytes, id, occurred_at) = encoder.event(&mut rng, n % load.accounts);
            if !warm {
                measuring_since.get_or_insert_with(Instant::now);
                sent_at.insert(id, (Instant::now(), occurred_at));
                sent += 1;
            }
            enqueue(&producer, &mut pending, input, key.as_bytes(), &bytes).await;
            owed -= 1.0;
            n += 1;
            pb.inc(1);
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            acked(r);
        }
    }
    let offered = sent as f64 / measuring_since.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    while let Some(r) = pending.next().await {
        acked(r);
    }
    pb.finish();
    let (event_time, read, decided) = reader.await.expect("reader");
    Latency {
        offered,
        decided,
        sent,
        event_time,
        read,
    }
}

/// Takes the `stores` of every service out of `topology`'s file: builds from before state
/// stores refuse the key (their velocity is in memory; the changelog topic stays, unused).
fn without_stores(topology: &Topology) {
    let text = std::fs::read_to_string(&**topology).expect("topology");
    let mut doc: toml::Table = text.parse().expect("topology is TOML");
    if let Some(toml::Value::Table(services)) = doc.get_mut("services") {
        for svc in services.iter_mut().filter_map(|(_, v)| v.as_table_mut()) {
            svc.remove("stores");
        }
    }
    std::fs::write(&**topology, toml::to_string(&doc).expect("TOML")).expect("write topology");
}
