//! verdict-loadtest: the fraud pipeline measured against the broker's own ceiling,
//! in one run on one machine.
//!
//! 1. Starts an Apache Kafka broker of its own (single-node KRaft, temp dir, free loopback
//!    ports, as the tests do), a schema registry and the topology.
//! 2. Pre-fills `--events` transactions into `transactions` and into `ceiling-in`.
//! 3. Ceiling: a plain rdkafka loop (consume one, produce two, no work) drains
//!    `ceiling-in` → events/s.
//! 4. Throughput: the fraud-detector (release build) drains `transactions` →
//!    events/s, and that as a share of the ceiling.
//! 5. Latency: `--rate` events/s for `--seconds` into the caught-up pipeline;
//!    event → decision latency p50/p95/p99/max, measured when the decision is read.
//! 6. Peak RSS of the fraud-detector.
//!
//! Everything targets 127.0.0.1 and stops by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

mod chaos;
mod documents;
mod gateway;
mod kafka_perf;
mod replay;
use dashmap::DashMap;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use harness::{ServiceProcess, Stack, apply_topology};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use verdict_cli::records::sample_transaction;
use verdict_runtime::avro::untyped;
use verdict_runtime::kafka::{KafkaSettings, TopicSpec};
use verdict_runtime::serde::{AvroSerde, ValueSchema};

#[derive(Parser)]
#[command(about = "verdict benchmarks (loopback only, bounded)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// The fraud pipeline against the broker's pass-through ceiling, then latency at a fixed load.
    Fraud(Args),
    /// Embeddings: model-server batch-1 vs batched, standalone vs the document pipeline, cache hits.
    Documents(documents::DocArgs),
    /// Apache Kafka's own producer-perf-test and consumer-perf-test on a broker of its own.
    Kafka(kafka_perf::PerfArgs),
    /// The chaos suite's long forms: lost, duplicated, stray, longest decision gap, stuck.
    Chaos(chaos::ChaosArgs),
    /// Re-processing rate after `verdict replay --to-earliest`, and the lag monitor's cost.
    Replay(replay::ReplayArgs),
    /// Submit → decision through the HTTP gateway against producing straight to Kafka.
    Gateway(gateway::GatewayArgs),
}

#[derive(clap::Args, Clone)]
struct Args {
    /// Events for the throughput phases (ceiling and pipeline).
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Offered load of the latency phase, events/s.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Distinct accounts (record keys).
    #[arg(long, default_value_t = 2_000)]
    accounts: usize,
}

const CEILING_IN: &str = "ceiling-in";
const CEILING_OUT: [&str; 2] = ["ceiling-out-a", "ceiling-out-b"];

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn producer(kafka: &KafkaSettings) -> FutureProducer {
    kafka.producer().expect("producer")
}

type Pending = FuturesUnordered<DeliveryFuture>;

/// Enqueues one record (waiting on earlier deliveries while the queue is full).
async fn enqueue(
    producer: &FutureProducer,
    pending: &mut Pending,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
            Ok(delivery) => {
                pending.push(delivery);
                return;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                match pending.next().await {
                    Some(r) => acked(r),
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            Err((e, _)) => panic!("produce to {topic}: {e}"),
        }
    }
}

fn acked(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) {
    match r {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => panic!("delivery failed: {e}"),
        Err(_) => panic!("delivery canceled"),
    }
}

/// Pre-encoded events: (key, Confluent-framed Avro, event_id).
async fn encode_events(
    serde: &AvroSerde,
    topic: &str,
    n: usize,
    accounts: usize,
) -> Vec<(String, Vec<u8>, String)> {
    let mut rng = rand::rng();
    let pb = bar(n as u64, "encoding");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (_, mut v) = sample_transaction(&mut rng, "tenant-load");
        let key = format!("acct-{}", i % accounts);
        v["account_id"] = serde_json::Value::String(key.clone());
        let id = v["event_id"].as_str().unwrap_or_default().to_string();
        let bytes = serde
            .encode(topic, &ValueSchema::TopicLatest, untyped(&v))
            .await
            .expect("encode");
        out.push((key, bytes, id));
        pb.inc(1);
    }
    pb.finish();
    out
}

/// Produces every event to `topic` as fast as the producer takes them; returns events/s.
async fn fill(producer: &FutureProducer, topic: &str, events: &[(String, Vec<u8>, String)]) -> f64 {
    let pb = bar(events.len() as u64, &format!("fill {topic}"));
    let start = Instant::now();
    let mut pending = Pending::new();
    for (key, bytes, _) in events {
        enqueue(producer, &mut pending, topic, key.as_bytes(), bytes).await;
        pb.inc(1);
    }
    while let Some(r) = pending.next().await {
        acked(r);
    }
    pb.finish();
    events.len() as f64 / start.elapsed().as_secs_f64()
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

/// Sum of the high watermarks of a topic's partitions.
fn records_in(meta: &rdkafka::consumer::BaseConsumer, topic: &str, partitions: usize) -> i64 {
    (0..partitions as i32)
        .filter_map(|p| meta.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())
        .map(|(_, high)| high)
        .sum()
}

/// Waits until `topic` holds `n` records; returns seconds from `start`.
pub(crate) async fn wait_for_records(
    kafka: &KafkaSettings,
    topic: &str,
    n: i64,
    start: Instant,
    what: &str,
) -> f64 {
    let meta = kafka.metadata_consumer().expect("meta");
    let partitions = kafka.partition_count(topic).await;
    let pb = bar(n as u64, what);
    loop {
        let have = tokio::task::block_in_place(|| records_in(&meta, topic, partitions));
        pb.set_position(have.max(0) as u64);
        if have >= n {
            pb.finish();
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{topic} stuck at {have}/{n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Latency {
    offered: f64,
    decided: usize,
    sent: usize,
    hist: Histogram<u64>,
}

/// Fixed offered load into `input`; event → decision latency read off `decisions`.
async fn latency(
    kafka: &KafkaSettings,
    registry: &str,
    (input, decisions): (&str, &str),
    events: Vec<(String, Vec<u8>, String)>,
    rate: u64,
) -> Latency {
    let sent_at: Arc<DashMap<String, Instant>> = Arc::new(DashMap::new());
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
    let total = events.len();
    let reader = {
        let sent_at = sent_at.clone();
        let serde = AvroSerde::new(registry);
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist");
            let mut decided = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while decided < total && Instant::now() < deadline {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
                else {
                    continue;
                };
                let now = Instant::now();
                let Ok(v) = serde.decode(m.payload()).await else {
                    continue;
                };
                let Some(sent) = v["event_id"].as_str().and_then(|id| sent_at.remove(id)) else {
                    continue;
                };
                let _ = hist.record(
                    u64::try_from(now.duration_since(sent.1).as_micros()).unwrap_or(u64::MAX),
                );
                decided += 1;
            }
            (hist, decided)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // the reader is positioned at the end

    let producer = producer(kafka);
    let pb = bar(total as u64, &format!("offered {rate}/s"));
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Pending::new();
    let start = Instant::now();
    let mut iter = events.into_iter();
    let mut sent = 0;
    'outer: loop {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            let Some((key, bytes, id)) = iter.next() else {
                break 'outer;
            };
            sent_at.insert(id, Instant::now());
            enqueue(&producer, &mut pending, input, key.as_bytes(), &bytes).await;
            owed -= 1.0;
            sent += 1;
            pb.inc(1);
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            acked(r);
        }
    }
    let offered = sent as f64 / start.elapsed().as_secs_f64();
    while let Some(r) = pending.next().await {
        acked(r);
    }
    pb.finish();
    let (hist, decided) = reader.await.expect("reader");
    Latency {
        offered,
        decided,
        sent,
        hist,
    }
}

/// Cumulative buckets (upper bound s, count) of the service's per-record histogram
/// (consumed → outputs acknowledged).
pub(crate) async fn record_buckets(svc: &ServiceProcess) -> Vec<(f64, f64)> {
    let url = format!("http://127.0.0.1:{}/metrics", svc.http_port);
    let Ok(resp) = reqwest_get(&url).await else {
        return Vec::new();
    };
    resp.lines()
        .filter(|l| l.starts_with("verdict_record_duration_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

async fn reqwest_get(url: &str) -> Result<String, String> {
    reqwest::get(url)
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}

/// Quantile (upper bucket bound, ms) of the difference between two snapshots.
pub(crate) fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, m)| *m),
            )
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    diff.iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    harness::set_service_log("warn");
    match Cli::parse().bench {
        Bench::Fraud(args) => fraud(args).await,
        Bench::Documents(args) => documents::run(args).await,
        Bench::Kafka(args) => kafka_perf::run(args).await,
        Bench::Chaos(args) => chaos::run(args).await,
        Bench::Replay(args) => replay::run(args).await,
        Bench::Gateway(args) => gateway::run(args).await,
    }
}

async fn fraud(args: Args) {
    println!(
        "verdict-loadtest: {} events per throughput phase, {} events/s for {} s, {} accounts",
        args.events, args.rate, args.seconds, args.accounts
    );
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let topology = apply_topology(&stack, None).await;
    let (input, decisions, audit) = (
        topology.topic("transactions"),
        topology.topic("fraud-decisions"),
        topology.topic("audit"),
    );
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

    let serde = AvroSerde::new(&stack.registry_url());
    let events = encode_events(&serde, &input, args.events, args.accounts).await;
    let producer = producer(&kafka);
    let fill_rate = fill(&producer, &input, &events).await;
    fill(&producer, CEILING_IN, &events).await;

    let ceiling_eps = ceiling(&kafka, args.events).await;

    let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
        &harness::deployment(&stack, &topology, None),
        harness::quick,
    );
    svc.wait_ready(Duration::from_secs(60)).await;
    let start = Instant::now();
    let n = i64::try_from(args.events).unwrap_or(i64::MAX);
    wait_for_records(&kafka, &decisions, n, start, "fraud-detector").await;
    let secs = wait_for_records(&kafka, &audit, n, start, "audit records").await;
    let verdict_eps = args.events as f64 / secs;

    let latency_events = encode_events(
        &serde,
        &input,
        usize::try_from(args.rate * args.seconds).unwrap_or(usize::MAX),
        args.accounts,
    )
    .await;
    let before = record_buckets(&svc).await;
    let lat = latency(
        &kafka,
        &stack.registry_url(),
        (&input, &decisions),
        latency_events,
        args.rate,
    )
    .await;
    let after = record_buckets(&svc).await;
    let rss = peak_rss_mib(svc.pid());
    let outcomes: HashMap<&str, f64> = [
        (
            "processed",
            svc.metric("verdict_records_processed_total").await,
        ),
        (
            "dead letters",
            svc.metric("verdict_dead_letters_total").await,
        ),
    ]
    .into_iter()
    .collect();
    let _ = svc.terminate(Duration::from_secs(30));

    let ms = |q: f64| lat.hist.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!(
        "== verdict fraud pipeline benchmark (Apache Kafka {} single-node KRaft, loopback, 2 cores shared by broker, service and load generator)",
        verdict_cli::broker::kafka_version()
    );
    println!("producer fill rate                 {fill_rate:>10.0} events/s");
    println!("broker ceiling (consume 1, produce 2, no work) {ceiling_eps:>10.0} events/s");
    println!("verdict fraud-detector (3 outputs/event)       {verdict_eps:>10.0} events/s");
    println!(
        "verdict / ceiling                  {:>10.1} %",
        100.0 * verdict_eps / ceiling_eps
    );
    println!(
        "latency at {:.0} events/s offered: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({}/{} decided)",
        lat.offered,
        ms(0.50),
        ms(0.95),
        ms(0.99),
        lat.hist.max() as f64 / 1000.0,
        lat.decided,
        lat.sent
    );
    println!(
        "  of which in the service (consumed -> outputs acked, bucket upper bounds): p50 <= {:.1} ms  p99 <= {:.1} ms",
        bucket_quantile(&before, &after, 0.50),
        bucket_quantile(&before, &after, 0.99)
    );
    println!("fraud-detector peak RSS            {rss:>10.1} MiB");
    println!(
        "records processed {:.0}, dead letters {:.0}",
        outcomes["processed"], outcomes["dead letters"]
    );
}
