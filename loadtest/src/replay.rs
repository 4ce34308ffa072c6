//! `verdict-loadtest replay`: how fast the fraud-detector re-processes history after
//! `verdict replay --to-earliest`, and what the lag monitor costs (CPU, memory, poll time)
//! watching many groups. On a broker of its own, loopback only, bounded.

use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology, deployment, partitions_behind};
use verdict_cli::groups_cmd::{self, ResetSpec, Scope};
use verdict_cli::table::Output;
use verdict_runtime::groups::GroupReader;
use verdict_runtime::kafka::TopicSpec;

use crate::{cpu_seconds, encode_events, fill, peak_rss_mib, producer};

#[derive(clap::Args, Clone)]
pub struct ReplayArgs {
    /// Events to process, then replay.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Consumer groups the lag monitor watches in the cost phase.
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// Partitions of the topic those groups read.
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// How long the lag monitor's cost is measured.
    #[arg(long, default_value_t = 60)]
    monitor_seconds: u64,
}

/// Seconds until `group` has committed `topic` to its end.
async fn drained(
    kafka: &verdict_runtime::kafka::KafkaSettings,
    group: &str,
    topic: &str,
    start: Instant,
) -> f64 {
    let behind = partitions_behind(kafka, group, topic, Duration::from_secs(900)).await;
    assert!(behind.is_empty(), "{group} still behind on {behind:?}");
    start.elapsed().as_secs_f64()
}

pub async fn run(args: ReplayArgs) {
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let topology = apply_topology(&stack, None).await;
    let input = topology.topic("transactions");
    let group = topology.group("verdict-fraud-detector");
    let events = encode_events(&stack.registry_url(), &input, args.events, 2_000).await;
    fill(&producer(&kafka), &input, &events).await;
    let spawn = || {
        ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(&stack, &topology, None), |s| {
            s.engine.group_instance_id = String::new();
        })
    };

    // First pass.
    let start = Instant::now();
    let mut svc = spawn();
    let first = drained(&kafka, &group, &input, start).await;
    assert_eq!(
        svc.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        svc.log()
    );

    // Replay from the earliest offset, then the second pass.
    let plan_start = Instant::now();
    groups_cmd::replay(
        &kafka,
        &group,
        &ResetSpec::Earliest,
        &Scope::AllTopics,
        true,
        Output::Json,
    )
    .await
    .expect("replay --to-earliest --execute");
    let plan_secs = plan_start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut svc = spawn();
    svc.wait_ready(Duration::from_secs(60)).await;
    let ready = start.elapsed().as_secs_f64();
    let second = drained(&kafka, &group, &input, start).await;
    let rss = peak_rss_mib(svc.pid());
    assert_eq!(
        svc.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        svc.log()
    );
    let n = args.events as f64;

    // The lag monitor watching `groups` groups of `partitions` partitions each.
    let topic = "lag-bench";
    kafka
        .create_topics(&[TopicSpec {
            name: topic.into(),
            partitions: i32::try_from(args.partitions).unwrap_or(6),
            replication_factor: 1,
            retention_ms: None,
            cleanup_policy: "delete".into(),
        }])
        .await
        .expect("topic");
    let records = encode_events(
        &stack.registry_url(),
        &input,
        args.partitions * 1_000,
        10_000,
    )
    .await;
    fill(&producer(&kafka), topic, &records).await;
    let reader = GroupReader::new(&kafka).expect("reader");
    for g in 0..args.groups {
        let offsets = (0..args.partitions)
            .map(|p| {
                (
                    topic.to_string(),
                    i32::try_from(p).unwrap_or(0),
                    i64::try_from(g * 10).unwrap_or(0),
                )
            })
            .collect();
        reader
            .commit(&format!("bench-group-{g:03}"), offsets)
            .await
            .expect("commit");
    }
    let mut monitor =
        ServiceProcess::spawn::<lag_monitor::Spec>(&deployment(&stack, &topology, None), |s| {
            s.monitor.poll_interval_ms = 5_000;
        });
    monitor.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cpu0 = cpu_seconds(monitor.pid());
    let t0 = Instant::now();
    let mut polls = Vec::new();
    while t0.elapsed() < Duration::from_secs(args.monitor_seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        polls.push(
            monitor
                .metric("kafka_lag_monitor_poll_duration_seconds")
                .await,
        );
    }
    polls.sort_by(f64::total_cmp);
    let poll_median = polls.get(polls.len() / 2).copied().unwrap_or(f64::NAN);
    let poll_max = polls.last().copied().unwrap_or(f64::NAN);
    let cpu = (cpu_seconds(monitor.pid()) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let watched = reqwest::get(format!("http://127.0.0.1:{}/api/groups", monitor.http_port))
        .await
        .expect("api")
        .json::<serde_json::Value>()
        .await
        .expect("json")["groups"]
        .as_array()
        .map_or(0, Vec::len);
    let monitor_rss = peak_rss_mib(monitor.pid());
    assert_eq!(
        monitor.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        monitor.log()
    );

    println!("\n== verdict-loadtest replay ==");
    println!(
        "first pass:   {} events in {first:.1} s = {:.0} events/s (start-up included)",
        args.events,
        n / first
    );
    println!("replay plan + commit (--to-earliest --execute): {plan_secs:.2} s");
    println!(
        "replayed:     {} events in {second:.1} s = {:.0} events/s (start-up included); {:.0} events/s after ready ({ready:.1} s)",
        args.events,
        n / second,
        n / (second - ready).max(0.001)
    );
    println!("fraud-detector peak RSS: {rss:.0} MiB");
    println!(
        "lag monitor: {watched} groups ({} × {} partitions + the fraud group) polled every 5 s for {} s: CPU {cpu:.1} % of one core, peak RSS {monitor_rss:.0} MiB, poll duration median {:.0} ms, longest {:.0} ms",
        args.groups,
        args.partitions,
        args.monitor_seconds,
        poll_median * 1000.0,
        poll_max * 1000.0
    );
}
