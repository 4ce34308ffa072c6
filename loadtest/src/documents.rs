//! `verdict-loadtest documents`: the embedding model and the document pipeline.
//!
//! 1. model-server alone: batch-1 request latency, then batched throughput
//!    (`--batch` texts per request, 2 requests in flight) in texts/s;
//! 2. the document pipeline (broker, registry, document-analyzer using the same
//!    model-server) on the same number of distinct documents → documents/s, and
//!    that as a share of the standalone throughput;
//! 3. the same documents again: every embedding is a cache hit → documents/s and
//!    the speedup over the uncached run.

use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, apply_topology};
use hdrhistogram::Histogram;
use serde_json::json;
use verdict_cli::records::{AvroProducer, sample_document};

#[derive(clap::Args, Clone)]
pub struct DocArgs {
    /// Distinct documents (and texts for the standalone run).
    #[arg(long, default_value_t = 600)]
    docs: usize,
    /// Texts per request in the batched standalone run.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Sequential single-text requests for the batch-1 latency.
    #[arg(long, default_value_t = 100)]
    single: usize,
}

fn text(i: usize) -> String {
    const T: [&str; 4] = [
        "Invoice {i}: please pay the amount due of {a} EUR within 30 days, reference {r}.",
        "Ticket {i}: the portal shows error {a} since this morning and I cannot log in, please help (ref {r}).",
        "Complaint {i}: order {a} arrived broken, this is unacceptable and I want a refund of {r} EUR.",
        "Contract {i}: the parties agree to the terms of service for {a} months starting on day {r}.",
    ];
    T[i % 4]
        .replace("{i}", &i.to_string())
        .replace("{a}", &(i * 37 % 1000).to_string())
        .replace("{r}", &(i * 7919 % 100_000).to_string())
}

async fn embed(client: &reqwest::Client, url: &str, texts: Vec<String>) {
    let r = client
        .post(format!("{url}/v1/embeddings"))
        .json(&json!({"model": "all-minilm-l6-v2", "input": texts}))
        .send()
        .await
        .expect("request");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
}

pub async fn run(args: DocArgs) {
    println!(
        "verdict-loadtest documents: {} documents, batches of {}, {} single requests",
        args.docs, args.batch, args.single
    );
    let mut ms =
        ServiceProcess::spawn::<model_server::Spec>(&harness::local_deployment(None), |_| {});
    ms.wait_ready(Duration::from_secs(120)).await;
    let url = format!("http://127.0.0.1:{}", ms.http_port);
    let client = reqwest::Client::new();
    embed(&client, &url, vec!["warm up".into()]).await;

    // 1a. batch-1 latency.
    let mut single = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let pb = crate::bar(args.single as u64, "batch-1 requests");
    let start = Instant::now();
    for i in 0..args.single {
        let t = Instant::now();
        embed(&client, &url, vec![text(1_000_000 + i)]).await;
        let _ = single.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        pb.inc(1);
    }
    pb.finish();
    let single_rate = args.single as f64 / start.elapsed().as_secs_f64();

    // 1b. batched throughput, 2 requests in flight.
    let texts: Vec<String> = (0..args.docs).map(text).collect();
    let pb = crate::bar(args.docs as u64, "batched requests");
    let start = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    for chunk in texts.chunks(args.batch) {
        inflight.push(embed(&client, &url, chunk.to_vec()));
        if inflight.len() >= 2 {
            futures::StreamExt::next(&mut inflight).await;
            pb.inc(args.batch as u64);
        }
    }
    while futures::StreamExt::next(&mut inflight).await.is_some() {}
    pb.finish();
    let batched_rate = args.docs as f64 / start.elapsed().as_secs_f64();

    // 2. the document pipeline on the same texts (new ids, distinct text per document).
    let stack = Stack::start_own().await;
    let topology = apply_topology(&stack, None).await;
    let (uploads, decisions) = (
        topology.topic("document-uploads"),
        topology.topic("document-decisions"),
    );
    let mut analyzer = ServiceProcess::spawn::<document_analyzer::Spec>(
        &harness::deployment(&stack, &topology, Some(ms.http_port)),
        harness::quick,
    );
    analyzer.wait_ready(Duration::from_secs(60)).await;
    let kafka = stack.broker.kafka();
    let producer = AvroProducer::new(&kafka, stack.registry_url()).expect("producer");
    // Documents are sent 128 at a time, so the producer is not what is measured.
    let send_all = |round: usize, texts: Vec<String>| {
        let (producer, uploads) = (&producer, &uploads);
        async move {
            use futures::StreamExt;
            futures::stream::iter(texts.into_iter().enumerate())
                .for_each_concurrent(128, |(i, t)| async move {
                    let id = format!("d{round}-{i}");
                    let doc = sample_document("bench", &id, &t);
                    producer.send(uploads, &id, &doc).await.expect("send");
                })
                .await;
        }
    };
    // Warm the analyzer's label anchors before timing.
    send_all(0, texts.clone()).await;
    let n0 = i64::try_from(args.docs).unwrap_or(i64::MAX);
    crate::wait_for_records(&kafka, &decisions, n0, Instant::now(), "warm-up (uncached)").await;
    // Round 1: new, distinct texts (no cache hits).
    let fresh: Vec<String> = texts.iter().map(|t| format!("{t} Batch two.")).collect();
    let cpu = |pid: u32| crate::cpu_seconds(pid);
    let (analyzer_cpu0, model_cpu0) = (cpu(analyzer.pid()), cpu(ms.pid()));
    let start = Instant::now();
    send_all(1, fresh).await;
    let uncached_secs =
        crate::wait_for_records(&kafka, &decisions, 2 * n0, start, "pipeline (uncached)").await;
    let per_doc = |used: f64| used * 1000.0 / args.docs as f64;
    let (analyzer_ms, model_ms) = (
        per_doc(cpu(analyzer.pid()) - analyzer_cpu0),
        per_doc(cpu(ms.pid()) - model_cpu0),
    );
    // Round 2: the round-0 texts again: every embedding is a cache hit.
    let start = Instant::now();
    send_all(2, texts.clone()).await;
    let cached_secs =
        crate::wait_for_records(&kafka, &decisions, 3 * n0, start, "pipeline (cache hits)").await;
    let hits = analyzer.metric("verdict_records_processed_total").await;
    let decided = harness::read_topic(
        &kafka,
        &stack.registry_url(),
        &decisions,
        Duration::from_secs(30),
        |rs| rs.len() >= 3 * args.docs,
    )
    .await;
    let flag = |name: &str| {
        decided
            .iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v[name] == true))
            .count()
    };
    let (degraded, cached_flags) = (flag("degraded"), flag("cached"));
    let rss = crate::peak_rss_mib(ms.pid());
    let _ = analyzer.terminate(Duration::from_secs(30));

    let uncached = args.docs as f64 / uncached_secs;
    let cached = args.docs as f64 / cached_secs;
    let ms_ = |q: f64| single.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!(
        "== verdict embeddings and document pipeline (all-MiniLM-L6-v2 on candle, 2 cores shared)"
    );
    println!(
        "model-server batch-1: p50 {:.1} ms  p99 {:.1} ms  ({single_rate:.0} texts/s)",
        ms_(0.5),
        ms_(0.99)
    );
    println!(
        "model-server batched ({} per request, 2 in flight): {batched_rate:.0} texts/s = {:.1} ms/text",
        args.batch,
        1000.0 / batched_rate
    );
    println!(
        "document pipeline (distinct documents): {uncached:.0} documents/s = {:.1} % of standalone batched",
        100.0 * uncached / batched_rate
    );
    println!(
        "  CPU per document in the pipeline: model-server {model_ms:.1} ms, document-analyzer {analyzer_ms:.1} ms (the broker and the producer share the same 2 cores)"
    );
    println!(
        "document pipeline (repeated documents, cache hits): {cached:.0} documents/s = {:.1}x the uncached rate",
        cached / uncached
    );
    println!("model-server peak RSS {rss:.0} MiB; analyzer processed {hits:.0} records");
    println!(
        "decisions: {} in all, {degraded} degraded (rules, the model did not answer), {cached_flags} from the cache",
        decided.len()
    );
}
