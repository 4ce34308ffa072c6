//! `verdict-loadtest slow`: a slow model without stalls. The fraud-detector scores through
//! the model-server (KServe v2) with an injected fixed latency (`fraud.delay_ms`), and drains
//! the same kind of backlog (6 partitions, `--keys` accounts) under each ordering mode:
//! one record per partition at a time (`partition`, what a plain consumer loop does), records
//! of different keys concurrently (`key`, the default), no order (`none`), and `key` again
//! under a small in-flight bound to show where that bound caps it.

use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology};
use verdict_runtime::engine::Ordering;

use crate::{encode_events, fill, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct SlowArgs {
    /// The model's fixed latency, ms.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Distinct keys (accounts) of the events.
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Events drained under `key` and `none` ordering.
    #[arg(long, default_value_t = 30_000)]
    events: usize,
    /// Events drained under `partition` ordering (it is slow by design).
    #[arg(long, default_value_t = 3_000)]
    partition_events: usize,
    /// `engine.max_inflight_per_partition` of the bounded run.
    #[arg(long, default_value_t = 16)]
    bound: usize,
}

pub async fn run(args: SlowArgs) {
    println!(
        "verdict-loadtest slow: model latency {} ms, {} keys, 6 partitions",
        args.delay_ms, args.keys
    );
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let mut model_server =
        ServiceProcess::spawn::<model_server::Spec>(&harness::local_deployment(None), |s| {
            s.fraud.delay_ms = args.delay_ms;
        });
    model_server.wait_ready(Duration::from_secs(120)).await;
    let url = format!("http://127.0.0.1:{}", model_server.http_port);

    let runs = [
        (
            "partition",
            Ordering::Partition,
            None,
            args.partition_events,
        ),
        ("key", Ordering::Key, None, args.events),
        ("none", Ordering::None, None, args.events),
        ("key", Ordering::Key, Some(args.bound), args.events),
    ];
    let mut rows = Vec::new();
    for (label, ordering, bound, n) in runs {
        let topology = apply_topology(&stack, None).await;
        let input = topology.topic("transactions");
        let events = encode_events(&stack.registry_url(), &input, n, args.keys).await;
        fill(&producer(&kafka), &input, &events).await;
        let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
            &harness::deployment(&stack, &topology, None),
            |s| {
                s.engine.ordering = ordering;
                if let Some(b) = bound {
                    s.engine.max_inflight_per_partition = b;
                }
                s.service.remote_model = Some(fraud_detector::config::RemoteModel::at(
                    url.clone(),
                    Default::default(),
                ));
            },
        );
        svc.wait_ready(Duration::from_secs(60)).await;
        let start = Instant::now();
        let count = i64::try_from(n).unwrap_or(i64::MAX);
        let what = format!("ordering {label}");
        let secs = wait_for_records(&kafka, &topology.topic("audit"), count, start, &what).await;
        let scored = svc
            .metric_where(
                "verdict_stage_duration_seconds_count",
                "stage=\"remote_score\"",
            )
            .await;
        svc.stop_cleanly();
        let bound = bound.map_or_else(
            || "in-flight bounds at their defaults".to_string(),
            |b| format!("engine.max_inflight_per_partition = {b}"),
        );
        rows.push((format!("{label} ({bound})"), n as f64 / secs, scored));
    }
    model_server.stop_cleanly();

    println!();
    println!(
        "== fraud-detector scoring through the model-server with {} ms per call (micro-batches of up to 32 rows, 32 calls in flight)",
        args.delay_ms
    );
    let sequential = rows[0].1;
    for (label, eps, scored) in &rows {
        println!(
            "ordering {label:<62} {eps:>9.0} events/s  {:>6.1}× partition-sequential  ({scored:.0} remote scores)",
            eps / sequential
        );
    }
    println!(
        "ceilings: partition = partitions / latency = {:.0}/s; a bound of B per partition = 6·B / latency = {:.0}/s",
        6.0 * 1000.0 / args.delay_ms as f64,
        6.0 * args.bound as f64 * 1000.0 / args.delay_ms as f64
    );
}
