//! `verdict-loadtest kafka`: Apache Kafka's own `producer-perf-test` and `consumer-perf-test`
//! on a broker of its own, as context for the ceiling the fraud benchmark measures: what the
//! broker takes on this machine with no verdict code in the path.

use std::process::Command;
use std::time::Duration;

use harness::{TestBroker, run_command};
use verdict_cli::broker::{KafkaDist, kafka_version};
use verdict_runtime::kafka::TopicSpec;

#[derive(clap::Args, Clone)]
pub struct PerfArgs {
    /// Records to produce and then consume.
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// Record size in bytes (a TransactionEvent in Avro is about 200 bytes).
    #[arg(long, default_value_t = 200)]
    record_size: u64,
    /// Partitions of the test topic (the pipeline's topics have 6).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

/// Runs one of Kafka's tools to completion and returns what it printed on stdout.
fn tool(dist: &KafkaDist, name: &str, args: &[String]) -> String {
    let mut cmd: Command = dist.tool(name, args).unwrap_or_else(|e| panic!("{e}"));
    let out = run_command(&mut cmd, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub async fn run(args: PerfArgs) {
    println!(
        "verdict-loadtest kafka: Apache Kafka {} producer-perf-test and consumer-perf-test, {} records of {} bytes, {} partitions",
        kafka_version(),
        args.records,
        args.record_size,
        args.partitions
    );
    let broker = TestBroker::own().await;
    let dist = KafkaDist::locate().unwrap_or_else(|e| panic!("{e}"));
    let topic = "perf";
    broker
        .kafka()
        .create_topics(&[TopicSpec {
            name: topic.into(),
            partitions: args.partitions,
            replication_factor: 1,
            retention_ms: None,
            cleanup_policy: "delete".into(),
        }])
        .await
        .expect("perf topic");
    let bootstrap = broker.bootstrap();
    let s = |v: &str| v.to_string();
    let produced = tokio::task::block_in_place(|| {
        tool(
            &dist,
            "producer-perf-test",
            &[
                s("--topic"),
                s(topic),
                s("--num-records"),
                args.records.to_string(),
                s("--record-size"),
                args.record_size.to_string(),
                s("--throughput"),
                s("-1"),
                s("--producer-props"),
                format!("bootstrap.servers={bootstrap}"),
                // What verdict's producer uses: idempotent, acks=all, uncompressed, linger 1 ms.
                s("acks=all"),
                s("enable.idempotence=true"),
                s("linger.ms=1"),
            ],
        )
    });
    let consumed = tokio::task::block_in_place(|| {
        tool(
            &dist,
            "consumer-perf-test",
            &[
                s("--bootstrap-server"),
                bootstrap.clone(),
                s("--topic"),
                s(topic),
                s("--num-records"),
                args.records.to_string(),
                s("--group"),
                s("perf-consumer"),
                s("--timeout"),
                s("60000"),
            ],
        )
    });
    println!();
    println!(
        "== Apache Kafka {} on this machine (loopback, 2 cores shared by broker and tool)",
        kafka_version()
    );
    println!("producer-perf-test (acks=all, idempotent, linger 1 ms):");
    if let Some(last) = produced.lines().rev().find(|l| l.contains("records sent")) {
        println!("  {last}");
    }
    println!("consumer-perf-test:");
    for line in consumed.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }
}
