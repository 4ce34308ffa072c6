//! The fraud pipeline on a plaintext broker against the same on a secured one (SASL_SSL with
//! SCRAM-SHA-512, ACLs enforced; `verdict stack up --secure`'s broker), in one run: the drain
//! of a backlog (events/s, CPU per event) and latency at a fixed offered load. The service
//! runs as its own principal with the ACLs `verdict topology acls` derives; the load generator
//! and the readers connect as the admin, over the same TLS listener.

use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology, deployment, grant_acls};

use crate::fraud::{Latency, Load, latency};
use crate::{cpu_seconds, encode_events, fill, peak_rss_mib, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct SecurityArgs {
    /// Events of each drain.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Offered load of each latency phase, events/s.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Length of each latency phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Warm-up before each latency phase, not reported.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Distinct accounts (record keys).
    #[arg(long, default_value_t = 2_000)]
    accounts: usize,
}

struct Row {
    label: &'static str,
    events_per_s: f64,
    cpu_us_per_event: f64,
    rss_mib: f64,
    latency: Latency,
}

const SERVICE: &str = "fraud-detector";

pub async fn run(args: SecurityArgs) {
    println!(
        "verdict-loadtest security: {} events per drain, then {} events/s for {} s after {} s of warm-up, on PLAINTEXT and on SASL_SSL",
        args.events, args.rate, args.seconds, args.warmup
    );
    let mut rows = Vec::new();
    for (label, secure) in [("PLAINTEXT", false), ("SASL_SSL + ACLs", true)] {
        let stack = if secure {
            Stack::start_own_secure(&[SERVICE]).await
        } else {
            Stack::start_own().await
        };
        let kafka = stack.broker.kafka();
        let topology = apply_topology(&stack, None).await;
        if secure {
            grant_acls(&stack, &topology, SERVICE);
        }
        let input = topology.topic("transactions");
        let decisions = topology.topic("fraud-decisions");
        let events = encode_events(&stack.registry_url(), &input, args.events, args.accounts).await;
        fill(&producer(&kafka), &input, &events).await;
        drop(events);

        let service_kafka = stack.broker.kafka_as(SERVICE);
        let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |s| s.kafka = service_kafka,
        );
        svc.wait_ready(Duration::from_secs(60)).await;
        let cpu0 = cpu_seconds(svc.pid());
        let start = Instant::now();
        let n = i64::try_from(args.events).unwrap_or(i64::MAX);
        wait_for_records(&kafka, &decisions, n, start, label).await;
        let secs = wait_for_records(&kafka, &topology.topic("audit"), n, start, "audit").await;
        let cpu = cpu_seconds(svc.pid()) - cpu0;
        let latency = latency(
            &kafka,
            &stack.registry_url(),
            (&input, &decisions),
            Load {
                rate: args.rate,
                warmup: Duration::from_secs(args.warmup),
                measure: Duration::from_secs(args.seconds),
                accounts: args.accounts,
            },
        )
        .await;
        rows.push(Row {
            label,
            events_per_s: args.events as f64 / secs,
            cpu_us_per_event: cpu * 1e6 / args.events as f64,
            rss_mib: peak_rss_mib(svc.pid()),
            latency,
        });
        svc.stop_cleanly();
    }

    println!();
    println!(
        "== the fraud pipeline, plaintext against SASL_SSL (SCRAM-SHA-512 over TLS, ACLs) on Apache Kafka {} (single-node KRaft, loopback, 2 cores shared)",
        verdict_cli::broker::kafka_version()
    );
    println!(
        "{:<18} {:>10} {:>14} {:>10} {:>34}",
        "listener", "drain ev/s", "CPU µs/event", "peak RSS", "send→decision read p50 / p99 / max"
    );
    for r in &rows {
        let ms = |q: f64| r.latency.read.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<18} {:>10.0} {:>14.1} {:>6.0} MiB {:>14.1} / {:.1} / {:.1} ms ({}/{} decided at {:.0}/s)",
            r.label,
            r.events_per_s,
            r.cpu_us_per_event,
            r.rss_mib,
            ms(0.50),
            ms(0.99),
            ms(1.0),
            r.latency.decided,
            r.latency.sent,
            r.latency.offered,
        );
    }
    if let [plain, secure] = rows.as_slice() {
        println!(
            "SASL_SSL / PLAINTEXT: {:.2}× the drain's events/s, {:.2}× its CPU per event, p99 {:.1} ms against {:.1} ms",
            secure.events_per_s / plain.events_per_s,
            secure.cpu_us_per_event / plain.cpu_us_per_event,
            secure.latency.read.value_at_quantile(0.99) as f64 / 1000.0,
            plain.latency.read.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
}
