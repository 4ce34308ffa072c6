//! `verdict-loadtest gateway`: submit → decision through the HTTP gateway (`?wait=`) against
//! producing straight to Kafka, at the same offered load, in one run on a broker of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::auth::{Scope, key_hash};
use gateway::config::{ApiKey, GatewaySettings, TenantLimits, Tier};
use harness::{ServiceProcess, Stack, Topology, apply_topology, deployment};
use hdrhistogram::Histogram;
use verdict_cli::records::sample_transaction;

use crate::bar;
use crate::fraud::{Load, latency};

#[derive(clap::Args, Clone)]
pub struct GatewayArgs {
    /// Offered load of both phases, requests (events) per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Length of each phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// The benchmarks' API key (all it needs, no limits to speak of).
pub(crate) const KEY: &str = "bench-key";

/// A gateway for a benchmark: [`KEY`] for one tenant with limits far above any load, and the
/// topology's resolutions topic.
pub(crate) fn bench_settings(s: &mut GatewaySettings, topology: &Topology) {
    s.gateway.keys = vec![ApiKey {
        id: "bench".into(),
        sha256: key_hash(KEY),
        tenant: "tenant-bench".into(),
        scopes: vec![Scope::TransactionsWrite, Scope::JobsRead],
        revoked: false,
        tier: Tier::Interactive,
    }];
    s.gateway.default_limits = TenantLimits {
        requests_per_minute: 10_000_000,
        burst: 1_000_000,
    };
    s.gateway.resolutions_topic = topology.topic("review-resolutions");
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(args: GatewayArgs) {
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let topology = apply_topology(&stack, None).await;
    let (input, decisions) = (
        topology.topic("transactions"),
        topology.topic("fraud-decisions"),
    );
    let mut fraud =
        ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(&stack, &topology, None), |_| {});
    let mut gw =
        ServiceProcess::spawn::<gateway::Spec>(&deployment(&stack, &topology, None), |s| {
            bench_settings(s, &topology);
        });
    fraud.wait_ready(Duration::from_secs(60)).await;
    gw.wait_ready(Duration::from_secs(60)).await;
    let n = usize::try_from(args.rate * args.seconds).unwrap_or(usize::MAX);

    // Straight to Kafka, after a warm-up of the JVM broker and the services (not reported:
    // the first phase would pay for it).
    let direct = latency(
        &kafka,
        &stack.registry_url(),
        (&input, &decisions),
        Load {
            rate: args.rate,
            warmup: Duration::from_secs(5),
            measure: Duration::from_secs(args.seconds),
            accounts: 2_000,
        },
    )
    .await;

    // Through the gateway, waiting for the decision in the request.
    let mut rng = rand::rng();
    let bodies: Vec<String> = (0..n)
        .map(|_| {
            let (_, mut v) = sample_transaction(&mut rng, "ignored");
            if let Some(o) = v.as_object_mut() {
                o.remove("event_id");
                o.remove("tenant_id");
            }
            v.to_string()
        })
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/v1/transactions?wait=10s", gw.http_port);
    let pb = bar(n as u64, &format!("gateway {}/s", args.rate));
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist"),
    ));
    let decided = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n);
    let mut bodies = bodies.into_iter();
    let start = Instant::now();
    'outer: loop {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            let Some(body) = bodies.next() else {
                break 'outer;
            };
            owed -= 1.0;
            let (client, url, hist, decided, failed, pb) = (
                client.clone(),
                url.clone(),
                hist.clone(),
                decided.clone(),
                failed.clone(),
                pb.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let took = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => {
                        let _ = hist.lock().map(|mut h| h.record(took));
                        decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                pb.inc(1);
            }));
        }
    }
    let offered = n as f64 / start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    pb.finish();
    let h = hist.lock().map(|h| h.clone()).expect("hist");
    let gw_decided = decided.load(std::sync::atomic::Ordering::Relaxed);
    let gw_failed = failed.load(std::sync::atomic::Ordering::Relaxed);

    println!(
        "\n== verdict-loadtest gateway: {} events/s for {} s each ==",
        args.rate, args.seconds
    );
    // Both phases offer the same load; each decides a share of it (the throughput) with a
    // latency distribution.
    let direct_share = direct.decided as f64 / direct.sent.max(1) as f64;
    let gw_share = gw_decided as f64 / n.max(1) as f64;
    println!(
        "straight to Kafka: offered {:.0}/s, decided {}/{} ({:.1} %) = {:.0}/s; submit→decision p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        direct.offered,
        direct.decided,
        direct.sent,
        direct_share * 100.0,
        direct.offered * direct_share,
        ms(&direct.read, 0.5),
        ms(&direct.read, 0.95),
        ms(&direct.read, 0.99),
        ms(&direct.read, 1.0)
    );
    println!(
        "through the gateway (?wait=10s): offered {offered:.0}/s, decided in the request {gw_decided}/{n} ({:.1} %) = {:.0}/s ({gw_failed} not); p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        gw_share * 100.0,
        offered * gw_share,
        ms(&h, 0.5),
        ms(&h, 0.95),
        ms(&h, 0.99),
        ms(&h, 1.0)
    );
    println!(
        "gateway overhead: throughput {:.1} % of straight-to-Kafka's, p50 {:+.1} ms, p99 {:+.1} ms",
        (offered * gw_share) / (direct.offered * direct_share) * 100.0,
        ms(&h, 0.5) - ms(&direct.read, 0.5),
        ms(&h, 0.99) - ms(&direct.read, 0.99)
    );
    fraud.stop_cleanly();
    gw.stop_cleanly();
}
