//! `verdict-loadtest state`: how long the fraud-detector takes to restore a velocity store of
//! a million accounts from its changelog before it decides anything, next to Apache Kafka's
//! `consumer-perf-test` reading the same changelog on the same broker (the read ceiling).

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology, deployment, quick, run_command};
use verdict_cli::broker::{KafkaDist, kafka_version};

use crate::{Pending, acked, bar, enqueue, peak_rss_mib, producer};

#[derive(clap::Args, Clone)]
pub struct StateArgs {
    /// Accounts (keys) in the changelog.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Transactions each account's window holds.
    #[arg(long, default_value_t = 3)]
    events: i64,
}

pub async fn run(args: StateArgs) {
    println!(
        "verdict-loadtest state: restore of {} accounts ({} events each) into the fraud-detector's velocity store",
        args.keys, args.events
    );
    let stack = Stack::start_own().await;
    let topology = apply_topology(&stack, None).await;
    let changelog = topology.topic("verdict-fraud-detector-velocity-changelog");
    let kafka = stack.broker.kafka();

    // The changelog as the service writes it: key ["tenant","account"], value the window.
    let now = verdict_runtime::now_ms();
    let producer = producer(&kafka);
    let mut pending = Pending::new();
    let pb = bar(args.keys, "changelog");
    let mut bytes = 0u64;
    for i in 0..args.keys {
        let key = serde_json::to_vec(&("tenant-bench", format!("acct-{i:07}"))).expect("key");
        let events: Vec<(i64, i64)> = (0..args.events)
            .map(|e| (i as i64 * 10 + e, now + e * 1000))
            .collect();
        let value = serde_json::to_vec(&serde_json::json!({
            "events": events,
            "expires_at": now + 86_400_000,
        }))
        .expect("value");
        bytes += (key.len() + value.len()) as u64;
        enqueue(&producer, &mut pending, &changelog, &key, &value).await;
        if i % 10_000 == 0 {
            pb.set_position(i);
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        acked(r);
    }
    pb.finish_and_clear();
    println!(
        "changelog: {} records, {:.1} MiB of keys and values",
        args.keys,
        bytes as f64 / 1048576.0
    );

    // Baseline: Kafka's own consumer reading the whole changelog.
    let dist = KafkaDist::locate().unwrap_or_else(|e| panic!("{e}"));
    let s = |v: &str| v.to_string();
    let mut cmd: Command = dist
        .tool(
            "consumer-perf-test",
            &[
                s("--bootstrap-server"),
                stack.broker.bootstrap(),
                s("--topic"),
                changelog.clone(),
                s("--num-records"),
                args.keys.to_string(),
                s("--group"),
                s("perf-restore"),
                s("--timeout"),
                s("60000"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::task::block_in_place(|| run_command(&mut cmd, Duration::from_secs(600)));
    let perf = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "consumer-perf-test failed: {perf}");

    // verdict: a fresh fraud-detector restores every partition before its first record.
    let started = Instant::now();
    let mut svc =
        ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(&stack, &topology, None), quick);
    // Ready once its partitions are assigned, which is after their state is restored.
    svc.wait_ready(Duration::from_secs(600)).await;
    let restored = svc.metric("verdict_state_restored_records_total").await;
    let wall = started.elapsed().as_secs_f64();
    let seconds = svc.metric("verdict_state_restore_seconds_total").await;
    let keys = svc.metric("verdict_state_keys").await;
    let rss = peak_rss_mib(svc.pid());
    svc.stop_cleanly();
    assert!(
        restored >= args.keys as f64,
        "restored {restored} of {} records in 600 s",
        args.keys
    );

    println!();
    println!(
        "== restore of {} keys, Apache Kafka {} on loopback, 2 cores shared by broker and reader",
        args.keys,
        kafka_version()
    );
    println!("consumer-perf-test (the same changelog, the broker's read ceiling):");
    for line in perf.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }
    println!(
        "fraud-detector restore: {restored:.0} records in {seconds:.2} s ({:.0} records/s), {keys:.0} keys in memory, peak RSS {rss:.0} MiB; process start to restored {wall:.2} s",
        restored / seconds.max(1e-9)
    );
}
