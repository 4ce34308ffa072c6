//! `verdict-loadtest peers`: verdict's fraud-detector against what a user would write instead,
//! on the same broker and the same pre-filled events: a batched and a naive Python
//! confluent-kafka loop doing the same per-event work (`loadtest/peers/fraud_loop.py`: decode
//! through the registry, the same model and rules, decision + audit (+ review) Avro-encoded
//! through the registry, commit after the outputs are acknowledged). Each program drains its
//! own copy of the events alone; events/s and CPU per event, and verdict's ratio to each.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Launch, ServiceProcess, Stack, Topology, apply_topology, repo_root};

use crate::{cpu_seconds, encode_events, fill, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct PeersArgs {
    /// Events verdict and the batched loop each drain.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events the naive loop drains (it commits each one, so it is slow).
    #[arg(long, default_value_t = 3_000)]
    naive_events: usize,
    /// Events per batch of the batched loop (consume, produce, flush, commit).
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

struct Row {
    program: String,
    events: usize,
    events_per_s: f64,
    cpu_us_per_event: f64,
}

pub async fn run(args: PeersArgs) {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/install.sh --tests (the Confluent client)",
        python.display()
    );
    println!(
        "verdict-loadtest peers: {} events for verdict and the batched loop, {} for the naive loop",
        args.events, args.naive_events
    );
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let registry = stack.registry_url();
    let verdict = apply_topology(&stack, None).await;
    let batched = apply_topology(&stack, None).await;
    let naive = apply_topology(&stack, None).await;
    let events = encode_events(
        &registry,
        &verdict.topic("transactions"),
        args.events,
        2_000,
    )
    .await;
    let out = producer(&kafka);
    fill(&out, &verdict.topic("transactions"), &events).await;
    fill(&out, &batched.topic("transactions"), &events).await;
    fill(
        &out,
        &naive.topic("transactions"),
        &events[..args.naive_events],
    )
    .await;
    drop(events);

    let mut rows = Vec::new();
    // verdict, with its defaults.
    let mut svc = ServiceProcess::launch::<fraud_detector::Spec>(
        &harness::deployment(&stack, &verdict, None),
        harness::free_port(),
        &Launch::default(),
        |_| {},
    );
    svc.wait_ready(Duration::from_secs(60)).await;
    let cpu0 = cpu_seconds(svc.pid());
    let start = Instant::now();
    let n = i64::try_from(args.events).unwrap_or(i64::MAX);
    let secs = wait_for_records(&kafka, &verdict.topic("audit"), n, start, "verdict").await;
    rows.push(Row {
        program: "verdict fraud-detector".into(),
        events: args.events,
        events_per_s: args.events as f64 / secs,
        cpu_us_per_event: (cpu_seconds(svc.pid()) - cpu0) * 1e6 / args.events as f64,
    });
    svc.stop_cleanly();

    for (mode, topology, count) in [
        ("batched", &batched, args.events),
        ("naive", &naive, args.naive_events),
    ] {
        rows.push(python_loop(&python, &stack, topology, mode, count, args.batch).await);
    }

    println!();
    println!(
        "== the same per-event work, one program after another on one broker (Apache Kafka {}, 2 cores shared)",
        verdict_cli::broker::kafka_version()
    );
    println!(
        "{:<40} {:>9} {:>12} {:>14}",
        "program", "events", "events/s", "CPU µs/event"
    );
    for r in &rows {
        println!(
            "{:<40} {:>9} {:>12.0} {:>14.1}",
            r.program, r.events, r.events_per_s, r.cpu_us_per_event
        );
    }
    let v = &rows[0];
    for peer in &rows[1..] {
        println!(
            "verdict / {}: {:.1}× the events/s, {:.1}× less CPU per event",
            peer.program,
            v.events_per_s / peer.events_per_s,
            peer.cpu_us_per_event / v.cpu_us_per_event
        );
    }
}

/// Runs `fraud_loop.py --mode MODE` until it has processed `count` events.
async fn python_loop(
    python: &std::path::Path,
    stack: &Stack,
    topology: &Topology,
    mode: &str,
    count: usize,
    batch: usize,
) -> Row {
    let mut child = Command::new(python)
        .arg(repo_root().join("loadtest/peers/fraud_loop.py"))
        .args(["--mode", mode, "--bootstrap"])
        .arg(stack.broker.bootstrap())
        .arg("--registry")
        .arg(stack.registry_url())
        .arg("--group")
        .arg(topology.group(&format!("python-{mode}")))
        .arg("--input")
        .arg(topology.topic("transactions"))
        .arg("--decisions")
        .arg(topology.topic("fraud-decisions"))
        .arg("--audit")
        .arg(topology.topic("audit"))
        .arg("--review")
        .arg(topology.topic("review"))
        .arg("--count")
        .arg(count.to_string())
        .arg("--batch")
        .arg(batch.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("DONE ").map(str::to_string))
    });
    let done = tokio::time::timeout(Duration::from_secs(900), reader)
        .await
        .unwrap_or_else(|_| panic!("the python {mode} loop did not finish in 900 s"))
        .expect("reader");
    let status = child.wait().expect("wait");
    let figures: Vec<f64> = done
        .unwrap_or_else(|| panic!("python {mode} loop ended without DONE ({status})"))
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [_, secs, cpu] = figures[..] else {
        panic!("python {mode} loop: DONE line is not `events seconds cpu`: {figures:?}");
    };
    // From having partitions to the last commit, like verdict's figure.
    Row {
        program: format!("Python confluent-kafka loop, {mode}"),
        events: count,
        events_per_s: count as f64 / secs,
        cpu_us_per_event: cpu * 1e6 / count as f64,
    }
}
