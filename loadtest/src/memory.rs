//! `verdict-loadtest memory`: what a service's memory is bounded by. The fraud-detector drains
//! a backlog of `--events` transactions with its default bounds; the document-analyzer drains
//! documents of `--doc-kb` KB under two settings of `engine.max_inflight_bytes`. Each reports
//! its resident memory when ready (idle, the fixed overhead) and at its peak.

use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology};
use verdict_cli::records::{AvroProducer, sample_document};

use crate::{encode_events, fill, peak_rss_mib, producer, wait_for_records};

#[derive(clap::Args, Clone)]
pub struct MemoryArgs {
    /// Transactions in the fraud-detector's backlog.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Size of each document's text, KB.
    #[arg(long, default_value_t = 195)]
    doc_kb: usize,
    /// Documents in the document-analyzer's backlog (per setting).
    #[arg(long, default_value_t = 300)]
    docs: usize,
    /// `engine.max_inflight_bytes` settings for the documents, MiB.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    bounds_mib: Vec<usize>,
}

/// Resident memory now, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

pub async fn run(args: MemoryArgs) {
    println!(
        "verdict-loadtest memory: {} transactions; {} documents of {} KB under max_inflight_bytes {:?} MiB",
        args.events, args.docs, args.doc_kb, args.bounds_mib
    );
    let stack = Stack::start_own().await;
    let kafka = stack.broker.kafka();
    let mut rows = Vec::new();

    // The fraud-detector on a large backlog, default bounds (256 MiB, 8,000 records).
    let topology = apply_topology(&stack, None).await;
    let input = topology.topic("transactions");
    let out = producer(&kafka);
    for chunk in 0..args.events.div_ceil(100_000) {
        let n = 100_000.min(args.events - chunk * 100_000);
        let events = encode_events(&stack.registry_url(), &input, n, 100_000).await;
        fill(&out, &input, &events).await;
    }
    let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
        &harness::deployment(&stack, &topology, None),
        |_| {},
    );
    svc.wait_ready(Duration::from_secs(60)).await;
    let idle = rss_mib(svc.pid());
    let start = Instant::now();
    let n = i64::try_from(args.events).unwrap_or(i64::MAX);
    let secs = wait_for_records(&kafka, &topology.topic("audit"), n, start, "fraud backlog").await;
    rows.push(format!(
        "fraud-detector, {} transactions, defaults (256 MiB, 8,000 records in flight): drained in {secs:.1} s ({:.0}/s); RSS when ready {idle:.0} MiB, peak {:.0} MiB",
        args.events,
        args.events as f64 / secs,
        peak_rss_mib(svc.pid())
    ));
    svc.stop_cleanly();
    drop(topology);

    // The document-analyzer on large documents, under each byte bound.
    let mut model_server =
        ServiceProcess::spawn::<model_server::Spec>(&harness::local_deployment(None), |_| {});
    model_server.wait_ready(Duration::from_secs(120)).await;
    let text: String = "The quarterly report covers revenue, costs and the outlook. "
        .repeat(args.doc_kb * 1024 / 60);
    for bound in &args.bounds_mib {
        let topology = apply_topology(&stack, None).await;
        let uploads = topology.topic("document-uploads");
        let docs = AvroProducer::new(&kafka, stack.registry_url()).expect("producer");
        for i in 0..args.docs {
            let id = format!("big-{i}");
            let doc = sample_document("memory", &id, &format!("{i} {text}"));
            docs.send(&uploads, &id, &doc).await.expect("send");
        }
        let mut analyzer = ServiceProcess::spawn::<document_analyzer::Spec>(
            &harness::deployment(&stack, &topology, Some(model_server.http_port)),
            |s| s.engine.max_inflight_bytes = bound << 20,
        );
        analyzer.wait_ready(Duration::from_secs(60)).await;
        let idle = rss_mib(analyzer.pid());
        let start = Instant::now();
        let n = i64::try_from(args.docs).unwrap_or(i64::MAX);
        let secs = wait_for_records(
            &kafka,
            &topology.topic("document-decisions"),
            n,
            start,
            "documents",
        )
        .await;
        let peak = peak_rss_mib(analyzer.pid());
        rows.push(format!(
            "document-analyzer, {} documents of {} KB, max_inflight_bytes {bound} MiB: drained in {secs:.1} s; RSS when ready {idle:.0} MiB, peak {peak:.0} MiB = ready + {:.0} MiB",
            args.docs,
            args.doc_kb,
            peak - idle
        ));
        analyzer.stop_cleanly();
    }
    model_server.stop_cleanly();

    println!();
    println!("== resident memory under load (Apache Kafka broker of its own, loopback)");
    for r in rows {
        println!("{r}");
    }
}
