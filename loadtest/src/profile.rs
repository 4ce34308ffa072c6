//! `verdict-loadtest profile`: instructions per event of the fraud-detector, counted by
//! valgrind's callgrind (stable on a noisy machine, unlike time), and the functions that
//! cost the most.
//!
//! The service drains two backlogs under callgrind, a small one and a large one, each from
//! start-up to a clean stop; the difference of the two totals over the difference of the
//! event counts is the cost of one event without start-up and shutdown. The same difference
//! per function (self cost) names where an event's instructions go. On a broker of its own,
//! loopback only, bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Launch, ServiceProcess, Stack, apply_topology};

use crate::{encode_events, fill, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct ProfileArgs {
    /// Events of the small run.
    #[arg(long, default_value_t = 2_000)]
    small: usize,
    /// Events of the large run.
    #[arg(long, default_value_t = 12_000)]
    large: usize,
    /// Another build of the fraud-detector to count instead of this one.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Functions listed, by self cost.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Where callgrind's output files are kept (a temp dir if not given).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: ProfileArgs) {
    let which = args
        .binary
        .as_ref()
        .map_or_else(|| "this build".to_string(), |b| b.display().to_string());
    println!(
        "verdict-loadtest profile: fraud-detector ({which}) under callgrind, {} and {} events",
        args.small, args.large
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = args.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out).expect("out dir");
    let stack = Stack::start_own().await;
    let small = counted(&stack, &args, args.small, &out.join("callgrind.small")).await;
    let large = counted(&stack, &args, args.large, &out.join("callgrind.large")).await;
    let per_event = (large - small) / (args.large - args.small) as f64;
    println!();
    println!("== instructions per event ({which})");
    println!(
        "small run: {:>14.0} Ir for {} events (start-up and stop included)",
        small, args.small
    );
    println!("large run: {:>14.0} Ir for {} events", large, args.large);
    println!("per event: {per_event:>14.0} Ir (difference / difference)");
    println!();
    println!(
        "top {} functions by self cost per event (large run minus small run, per event):",
        args.top
    );
    let events = (args.large - args.small) as f64;
    let small_fns = self_costs(&out.join("callgrind.small"));
    let mut per_fn: Vec<(f64, String)> = self_costs(&out.join("callgrind.large"))
        .into_iter()
        .map(|(function, ir)| {
            let before = small_fns.get(&function).copied().unwrap_or(0.0);
            ((ir - before) / events, function)
        })
        .collect();
    per_fn.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ir, function) in per_fn.into_iter().take(args.top) {
        println!("{ir:>9.0} Ir {:>5.1} %  {function}", 100.0 * ir / per_event);
    }
    println!(
        "\ncallgrind files: {} (callgrind_annotate or kcachegrind read them)",
        out.display()
    );
    if args.out.is_none() {
        println!("(in a temp dir that is removed now; pass --out DIR to keep them)");
    }
}

/// Drains `n` events under callgrind; returns the total instructions executed.
async fn counted(stack: &Stack, args: &ProfileArgs, n: usize, file: &Path) -> f64 {
    let topology = apply_topology(stack, None).await;
    let kafka = stack.broker.kafka();
    let input = topology.topic("transactions");
    let events = encode_events(&stack.registry_url(), &input, n, 2_000).await;
    fill(&producer(&kafka), &input, &events).await;
    let launch = Launch {
        binary: args.binary.clone(),
        wrapper: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", file.display()),
        ],
        portable_settings: true,
        ..Launch::default()
    };
    let mut svc = ServiceProcess::launch::<fraud_detector::Spec>(
        &harness::deployment(stack, &topology, None),
        harness::free_port(),
        &launch,
        |_| {},
    );
    svc.wait_ready(Duration::from_secs(300)).await;
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let start = Instant::now();
    wait_for_records(
        &kafka,
        &topology.topic("audit"),
        n,
        start,
        "under callgrind",
    )
    .await;
    svc.terminate(Duration::from_secs(180));
    total_instructions(file)
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
fn total_instructions(file: &Path) -> f64 {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("callgrind wrote no {}: {e}", file.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", file.display()))
}

/// Self cost (instructions) of every function, from `callgrind_annotate`.
fn self_costs(file: &Path) -> HashMap<String, f64> {
    let out = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg("--threshold=100")
        .arg(file)
        .output()
        .expect("callgrind_annotate (from valgrind)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Lines look like: "12,345,678 (12.34%)  file:function [object]".
    let mut costs = HashMap::new();
    for line in text.lines() {
        let Some((count, rest)) = line.trim_start().split_once(" (") else {
            continue;
        };
        let Some((_, function)) = rest.split_once("%)") else {
            continue;
        };
        let Ok(ir) = count.replace(',', "").parse::<f64>() else {
            continue;
        };
        let function = function.trim();
        if function != "PROGRAM TOTALS" {
            *costs.entry(function.to_string()).or_insert(0.0) += ir;
        }
    }
    costs
}
