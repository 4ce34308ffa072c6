//! verdict-loadtest: benchmarks that print their figures next to a baseline measured in the
//! same run on the same machine (the broker's own ceiling, an earlier build, peers). Each
//! subcommand starts what it needs on loopback and stops by itself.

use std::time::{Duration, Instant};

use clap::Parser;

mod chaos;
mod documents;
mod fraud;
mod gateway;
mod history;
mod kafka_perf;
mod memory;
mod onnx;
mod peers;
mod profile;
mod replay;
mod security;
mod slow;
mod state;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use harness::ServiceProcess;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use verdict_cli::records::sample_event;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::serde::ValueSchema;

#[derive(Parser)]
#[command(about = "verdict benchmarks (loopback only, bounded)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// The fraud pipeline against the broker's pass-through ceiling, then latency at a fixed load.
    Fraud(fraud::Args),
    /// Embeddings: model-server batch-1 vs batched, standalone vs the document pipeline, cache hits.
    Documents(documents::DocArgs),
    /// Apache Kafka's own producer-perf-test and consumer-perf-test on a broker of its own.
    Kafka(kafka_perf::PerfArgs),
    /// Resident memory of a large backlog and of large documents against the byte bound.
    Memory(memory::MemoryArgs),
    /// A slow model (fixed latency) under each ordering mode: key-ordered parallelism against
    /// partition-sequential and unordered.
    Slow(slow::SlowArgs),
    /// verdict against batched and naive Python confluent-kafka loops doing the same work.
    Peers(peers::PeersArgs),
    /// Instructions per event of the fraud-detector under callgrind, and its costliest functions.
    Profile(profile::ProfileArgs),
    /// The chaos suite's long forms: lost, duplicated, stray, longest decision gap, stuck.
    Chaos(chaos::ChaosArgs),
    /// Re-processing rate after `verdict replay --to-earliest`, and the lag monitor's cost.
    Replay(replay::ReplayArgs),
    /// Submit → decision through the HTTP gateway against producing straight to Kafka.
    Gateway(gateway::GatewayArgs),
    /// A gateway started on a million records of history: time to ready, new jobs answered,
    /// memory, CPU and SIGTERM, against an earlier build.
    History(history::HistoryArgs),
    /// Restore of the fraud-detector's velocity store (1M accounts) from its changelog,
    /// against Kafka's consumer-perf-test on the same changelog.
    State(state::StateArgs),
    /// The fraud pipeline on a plaintext broker against a secured one (SASL_SSL, ACLs): drain
    /// and latency in one run.
    Security(security::SecurityArgs),
    /// The fraud model as ONNX (tract) against the hand-written evaluator: the model alone,
    /// then the fraud-detector's drain with each.
    Onnx(onnx::OnnxArgs),
}

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

pub(crate) fn producer(kafka: &KafkaSettings) -> FutureProducer {
    kafka.producer().expect("producer")
}

pub(crate) type Pending = FuturesUnordered<DeliveryFuture>;

/// Enqueues one record (waiting on earlier deliveries while the queue is full).
pub(crate) async fn enqueue(
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

pub(crate) fn acked(
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

/// Typed encoding of sample events for `topic` (the engine's encoder; the load generator
/// must not be the bottleneck of what it measures).
pub(crate) struct EventEncoder(verdict_runtime::serde::Writer);

impl EventEncoder {
    pub(crate) async fn new(registry: &str, topic: &str) -> Self {
        let codec = verdict_runtime::serde::Codec::new(
            registry,
            verdict_runtime::registry::DEFAULT_TIMEOUT,
        );
        Self(
            codec
                .writer(topic, &ValueSchema::TopicLatest)
                .await
                .expect("the input topic's schema"),
        )
    }

    /// One sample transaction of account `acct-{account}`, stamped now:
    /// (key, Confluent-framed Avro, event_id, occurred_at ms).
    pub(crate) fn event(
        &self,
        rng: &mut impl rand::Rng,
        account: usize,
    ) -> (String, Vec<u8>, String, i64) {
        let mut event = sample_event(rng, "tenant-load");
        event.account_id = format!("acct-{account}");
        let bytes = self.0.encode(&event).expect("encode");
        (event.account_id, bytes, event.event_id, event.occurred_at)
    }
}

/// Pre-encoded events: (key, Confluent-framed Avro, event_id).
pub(crate) async fn encode_events(
    registry: &str,
    topic: &str,
    n: usize,
    accounts: usize,
) -> Vec<(String, Vec<u8>, String)> {
    let encoder = EventEncoder::new(registry, topic).await;
    let mut rng = rand::rng();
    let pb = bar(n as u64, "encoding");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (key, bytes, id, _) = encoder.event(&mut rng, i % accounts);
        out.push((key, bytes, id));
        pb.inc(1);
    }
    pb.finish();
    out
}

/// Produces every event to `topic` as fast as the producer takes them; returns events/s.
pub(crate) async fn fill(
    producer: &FutureProducer,
    topic: &str,
    events: &[(String, Vec<u8>, String)],
) -> f64 {
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

/// CPU seconds (user + system) a process has used, from /proc.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
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
        Bench::Fraud(args) => fraud::run(args).await,
        Bench::Documents(args) => documents::run(args).await,
        Bench::Kafka(args) => kafka_perf::run(args).await,
        Bench::Chaos(args) => chaos::run(args).await,
        Bench::Profile(args) => profile::run(args).await,
        Bench::Peers(args) => peers::run(args).await,
        Bench::Slow(args) => slow::run(args).await,
        Bench::Memory(args) => memory::run(args).await,
        Bench::Replay(args) => replay::run(args).await,
        Bench::Gateway(args) => gateway::run(args).await,
        Bench::History(args) => history::run(args).await,
        Bench::State(args) => state::run(args).await,
        Bench::Security(args) => security::run(args).await,
        Bench::Onnx(args) => onnx::run(args).await,
    }
}
