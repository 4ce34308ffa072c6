//! The fraud model as ONNX run by tract (`service.onnx_model`) against the hand-written
//! evaluator, in one run: first the model alone (time per event on the same feature rows,
//! one row per call as the service scores, and batches of 32), then the fraud-detector
//! draining the same backlog with each (events/s, the service's CPU per event).

use std::hint::black_box;
use std::time::{Duration, Instant};

use fraud_detector::config::OnnxModelSettings;
use harness::{ServiceProcess, Stack, apply_topology, deployment, repo_root};
use verdict_runtime::inference::onnx::OnnxModel;
use verdict_runtime::models::LogisticModel;

use crate::{cpu_seconds, encode_events, fill, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct OnnxArgs {
    /// Scorings of each model alone.
    #[arg(long, default_value_t = 200_000)]
    scorings: usize,
    /// Events of each drain.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Distinct accounts (record keys).
    #[arg(long, default_value_t = 2_000)]
    accounts: usize,
}

/// Time per scoring of `score` over `rows`, cycled `n` times.
fn per_scoring(n: usize, rows: &[Vec<f64>], mut score: impl FnMut(&[f64]) -> f64) -> Duration {
    let start = Instant::now();
    for row in rows.iter().cycle().take(n) {
        black_box(score(black_box(row)));
    }
    start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

pub async fn run(args: OnnxArgs) {
    let json = LogisticModel::load(&repo_root().join("models/fraud/model.json")).expect("model");
    let file = repo_root().join("models/fraud/model.onnx");
    let onnx = OnnxModel::load(&file, "probabilities").expect("models/fraud/model.onnx");
    // Feature rows of the sample transactions the drains send.
    let mut rng = rand::rng();
    let rows: Vec<Vec<f64>> = (0..1_000)
        .map(|_| {
            let (_, value) = verdict_cli::records::sample_transaction(&mut rng, "bench");
            json.raw_row(&json.input_from_json(&value))
        })
        .collect();
    println!(
        "verdict-loadtest onnx: {} scorings of each model alone, then {} events drained by the fraud-detector with each",
        args.scorings, args.events
    );
    let evaluator = per_scoring(args.scorings, &rows, |r| {
        json.score_row(r).unwrap_or(f64::NAN)
    });
    let single = per_scoring(args.scorings, &rows, |r| {
        onnx.score_rows(&[r.to_vec()]).map_or(f64::NAN, |o| o[0][1])
    });
    let batches: Vec<Vec<Vec<f64>>> = rows.chunks(32).map(<[Vec<f64>]>::to_vec).collect();
    let start = Instant::now();
    let mut scored = 0usize;
    for batch in batches.iter().cycle() {
        if scored >= args.scorings {
            break;
        }
        black_box(
            onnx.score_rows(black_box(batch))
                .map(|o| o.len())
                .unwrap_or(0),
        );
        scored += batch.len();
    }
    let batched = start.elapsed() / u32::try_from(scored).unwrap_or(u32::MAX).max(1);

    let mut drains = Vec::new();
    for (label, with_onnx) in [("evaluator", false), ("onnx (tract)", true)] {
        let stack = Stack::start_own().await;
        let kafka = stack.broker.kafka();
        let topology = apply_topology(&stack, None).await;
        let input = topology.topic("transactions");
        let events = encode_events(&stack.registry_url(), &input, args.events, args.accounts).await;
        fill(&producer(&kafka), &input, &events).await;
        drop(events);
        let file = file.clone();
        let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |s| {
                if with_onnx {
                    s.service.onnx_model = Some(OnnxModelSettings {
                        file,
                        output: "probabilities".into(),
                    });
                }
            },
        );
        svc.wait_ready(Duration::from_secs(60)).await;
        let cpu0 = cpu_seconds(svc.pid());
        let start = Instant::now();
        let n = i64::try_from(args.events).unwrap_or(i64::MAX);
        let decisions = topology.topic("fraud-decisions");
        wait_for_records(&kafka, &decisions, n, start, label).await;
        let secs = wait_for_records(&kafka, &topology.topic("audit"), n, start, "audit").await;
        let cpu = cpu_seconds(svc.pid()) - cpu0;
        drains.push((
            label,
            args.events as f64 / secs,
            cpu * 1e6 / args.events as f64,
        ));
        svc.stop_cleanly();
    }

    println!();
    println!("== the fraud model alone (2 cores shared; the sample transactions' feature rows)");
    println!("{:<34} {:>14}", "model", "time per event");
    let ns = |d: Duration| d.as_secs_f64() * 1e9;
    println!(
        "{:<34} {:>11.0} ns",
        "evaluator (hand-written)",
        ns(evaluator)
    );
    println!(
        "{:<34} {:>11.0} ns",
        "onnx (tract), a row per call",
        ns(single)
    );
    println!(
        "{:<34} {:>11.0} ns",
        "onnx (tract), 32 rows per call",
        ns(batched)
    );
    println!(
        "onnx / evaluator: {:.1}× a row per call (as the service scores), {:.1}× in batches of 32",
        ns(single) / ns(evaluator),
        ns(batched) / ns(evaluator)
    );
    println!();
    println!(
        "== the fraud-detector draining {} events on Apache Kafka {} (single-node KRaft, loopback)",
        args.events,
        verdict_cli::broker::kafka_version()
    );
    println!(
        "{:<18} {:>12} {:>14}",
        "scored by", "drain ev/s", "CPU µs/event"
    );
    for (label, rate, cpu) in &drains {
        println!("{label:<18} {rate:>12.0} {cpu:>14.1}");
    }
    if let [(_, base_rate, base_cpu), (_, rate, cpu)] = drains.as_slice() {
        println!(
            "onnx / evaluator: {:.2}× the drain's events/s, {:.2}× the service's CPU per event (+{:.1} µs)",
            rate / base_rate,
            cpu / base_cpu,
            cpu - base_cpu
        );
    }
}
