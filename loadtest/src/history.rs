//! `verdict-loadtest history`: a gateway started on a cluster with history. One million
//! transactions of the last hour on the input topic (decided before: the fraud-detector's
//! group is at the end), then each build of the gateway (`--baseline` first, then this one)
//! is started on it: how long until `/readyz`, whether new jobs are answered with their
//! decision (`?wait=10s`) and how fast, its memory and CPU, and how long SIGTERM takes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{Launch, ServiceProcess, Stack, apply_topology, deployment};
use verdict_cli::records::sample_transaction;

use crate::gateway::{KEY, bench_settings};
use crate::{cpu_seconds, peak_rss_mib};

#[derive(clap::Args, Clone)]
pub struct HistoryArgs {
    /// Transactions of history on the input topic.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// An earlier build of the gateway, started first on the same history
    /// (`bash loadtest/baseline.sh REV gateway` builds one).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// New jobs submitted (one after another, `?wait=10s`) once the gateway is ready.
    #[arg(long, default_value_t = 20)]
    jobs: usize,
}

/// What one build did on the history.
struct Run {
    build: String,
    ready_after: Option<Duration>,
    answered: usize,
    waits_ms: Vec<f64>,
    rss_mib: f64,
    cpu_s: f64,
    stop_after: Option<Duration>,
}

pub async fn run(args: HistoryArgs) {
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let topology = apply_topology(&stack, None).await;
    let input = topology.topic("transactions");
    let began = Instant::now();
    harness::write_history(&stack, &input, args.records).await;
    eprintln!(
        "wrote {} transactions of history in {:.1} s",
        args.records,
        began.elapsed().as_secs_f64()
    );
    // Decided before: the fraud-detector starts at the end.
    harness::commit_at_end(&kafka, &topology.group("verdict-fraud-detector"), &input).await;
    let mut fraud =
        ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(&stack, &topology, None), |_| {});
    fraud.wait_ready(Duration::from_secs(60)).await;

    let mut runs = Vec::new();
    let builds = args
        .baseline
        .iter()
        .map(|b| (format!("baseline {}", b.display()), Some(b.clone())))
        .chain([("this build".to_string(), None)]);
    for (build, binary) in builds {
        // What an earlier gateway does not know; it keeps its own defaults for them (this
        // build is given all its settings).
        let without = match binary {
            Some(_) => vec![
                "gateway.job_store_bytes",
                "gateway.catch_up_records",
                "http.admin_listen",
            ],
            None => Vec::new(),
        };
        let launch = Launch {
            binary,
            without,
            ..Launch::default()
        };
        let mut gw = ServiceProcess::launch::<gateway::Spec>(
            &deployment(&stack, &topology, None),
            harness::free_port(),
            &launch,
            |s| bench_settings(s, &topology),
        );
        runs.push(measure(build, &mut gw, args.jobs).await);
    }
    fraud.stop_cleanly();

    println!(
        "\n== verdict-loadtest history: a gateway started on {} transactions of history ==",
        args.records
    );
    println!(
        "{:<14} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "build", "ready", "answered", "wait p50", "wait max", "peak RSS", "CPU", "SIGTERM"
    );
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    for r in &runs {
        let mut w = r.waits_ms.clone();
        w.sort_by(f64::total_cmp);
        let p50 = w
            .get(w.len() / 2)
            .map_or("-".into(), |v| format!("{v:.0} ms"));
        let max = w.last().map_or("-".into(), |v| format!("{v:.0} ms"));
        println!(
            "{:<14} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
            r.build.split(' ').next().unwrap_or(""),
            secs(r.ready_after),
            format!("{}/{}", r.answered, args.jobs),
            p50,
            max,
            format!("{:.0} MiB", r.rss_mib),
            format!("{:.1} s", r.cpu_s),
            secs(r.stop_after),
        );
    }
    for r in &runs {
        println!("{}: {}", r.build.split(' ').next().unwrap_or(""), r.build);
    }
}

async fn measure(build: String, gw: &mut ServiceProcess, jobs: usize) -> Run {
    let pid = gw.pid();
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{}", gw.http_port);
    let http = reqwest::Client::new();
    let mut ready_after = None;
    while started.elapsed() < Duration::from_secs(300) {
        let ok = http
            .get(format!("http://127.0.0.1:{}/readyz", gw.admin_port))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            ready_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rng = rand::rng();
    let (mut answered, mut waits_ms) = (0, Vec::new());
    for _ in 0..jobs {
        let (_, mut v) = sample_transaction(&mut rng, "ignored");
        if let Some(o) = v.as_object_mut() {
            o.remove("event_id");
            o.remove("tenant_id");
        }
        let t0 = Instant::now();
        let r = http
            .post(format!("{url}/v1/transactions?wait=10s"))
            .bearer_auth(KEY)
            .json(&v)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 200) {
            answered += 1;
            waits_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (rss_mib, cpu_s) = (peak_rss_mib(pid), cpu_seconds(pid));
    let t0 = Instant::now();
    let stop_after = gw
        .sigterm_within(Duration::from_secs(30))
        .filter(std::process::ExitStatus::success)
        .map(|_| t0.elapsed());
    Run {
        build,
        ready_after,
        answered,
        waits_ms,
        rss_mib,
        cpu_s,
        stop_after,
    }
}
