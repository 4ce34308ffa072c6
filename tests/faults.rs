//! Faults injected by a real proxy (Toxiproxy, `scripts/toxiproxy.sh`) between the
//! fraud-detector and its dependencies over HTTP: a schema registry that hangs and a model
//! server that trickles its answers or restarts behind connections held open. (Faults between
//! a service and the broker are chaos runs: tests/chaos.rs.)

use std::time::Duration;

use harness::toxiproxy::{Proxy, Stream, Toxiproxy};
use harness::{
    Http, ServiceProcess, Stack, apply_topology, deployment, free_port, local_deployment,
    partitions_behind, quick, read_topic, run,
};
use serde_json::{Value, json};
use verdict_cli::records::{AvroProducer, Record, sample_transaction};
use verdict_runtime::inference::resilience::ProviderSettings;
use verdict_runtime::service::Deployment;

/// The decided event ids among `records`.
fn event_ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.value.as_ref()?["event_id"].as_str().map(String::from))
        .collect()
}

/// How long a decision spent in `stage` (its `stage_timings`).
fn stage_ms(decision: &Value, stage: &str) -> Option<f64> {
    decision["stage_timings"]
        .as_array()?
        .iter()
        .find(|t| t["stage"] == stage)
        .and_then(|t| t["micros"].as_f64())
        .map(|us| us / 1000.0)
}

/// The remote model's call timeout in the model-server fault tests.
const REMOTE_TIMEOUT_MS: u64 = 500;

/// A model server's port behind a Toxiproxy proxy, and a fraud-detector on the run's broker
/// that scores through the proxy: one call of at most [`REMOTE_TIMEOUT_MS`], no retries, the
/// circuit open for 3 s after 3 failures, the in-process model as its fallback.
struct RemoteScoring {
    model: Proxy,
    svc: ServiceProcess,
    producer: AvroProducer,
    input: String,
    decisions: String,
    _topology: harness::Topology,
    stack: Stack,
    _toxiproxy: Toxiproxy,
}

impl RemoteScoring {
    async fn through_proxy_to(model_port: u16) -> Self {
        let toxiproxy = Toxiproxy::start().await;
        let model = toxiproxy
            .proxy("model", free_port(), &format!("127.0.0.1:{model_port}"))
            .await;
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let svc = harness::remote_scored_fraud_detector(
            &stack,
            &topology,
            model.http_url(),
            ProviderSettings {
                timeout_ms: REMOTE_TIMEOUT_MS,
                max_retries: 0,
                failure_threshold: 3,
                open_ms: 3_000,
                ..ProviderSettings::default()
            },
        )
        .await;
        Self {
            model,
            svc,
            producer: AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("p"),
            input: topology.topic("transactions"),
            decisions: topology.topic("fraud-decisions"),
            _topology: topology,
            stack,
            _toxiproxy: toxiproxy,
        }
    }

    /// Once the circuit's open time is over, the probe gets through and the server scores
    /// (nearly) everything again.
    async fn assert_scored_again(&self) {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let after = self.decide(10, Duration::from_millis(200)).await;
        assert_eq!(after.len(), 10);
        let served = after.iter().filter(|v| v["degraded"] == false).count();
        assert!(
            served >= 8,
            "the probe closed the circuit and the server scores again: {after:?}"
        );
    }

    /// Sends `n` transactions, `gap` apart, and returns their decisions.
    async fn decide(&self, n: usize, gap: Duration) -> Vec<Value> {
        let ids = send_transactions(&self.producer, &self.input, n, gap).await;
        decisions_of(&self.stack, &self.decisions, &ids).await
    }
}

/// Sends `n` transactions to `input`, `gap` apart; returns their event ids.
async fn send_transactions(
    producer: &AvroProducer,
    input: &str,
    n: usize,
    gap: Duration,
) -> Vec<String> {
    let mut rng = rand::rng();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (account, v) = sample_transaction(&mut rng, "tenant-faults");
        producer.send(input, &account, &v).await.expect("send");
        ids.push(v["event_id"].as_str().expect("id").to_string());
        tokio::time::sleep(gap).await;
    }
    ids
}

/// The decisions of `ids` on `decisions`, waiting up to a minute for all of them.
async fn decisions_of(stack: &Stack, decisions: &str, ids: &[String]) -> Vec<Value> {
    let records = read_topic(
        &stack.broker.kafka(),
        &stack.registry_url(),
        decisions,
        Duration::from_secs(60),
        |rs| {
            let got = event_ids(rs);
            ids.iter().all(|id| got.contains(id))
        },
    )
    .await;
    records
        .into_iter()
        .filter_map(|r| r.value)
        .filter(|v| {
            v["event_id"]
                .as_str()
                .is_some_and(|id| ids.iter().any(|i| i == id))
        })
        .collect()
}

/// A registry that stops answering (requests swallowed, connections held open) while records
/// written with a schema the service has not seen yet arrive: the lookup gives up after
/// `registry.timeout_ms` and the record goes to the retry topic, so the partition's commits
/// reach its end while the registry still hangs and records of known schemas keep being
/// decided; once the registry answers again the retried records are decided. Nothing is
/// dead-lettered. (The converter's client had no timeout: the partition stayed held for good.)
#[test]
fn a_hanging_registry_holds_no_partition_and_loses_nothing() {
    run(300, async {
        let toxiproxy = Toxiproxy::start().await;
        let stack = Stack::start().await;
        // Retries wait 8 s: the first retry comes after the registry is back.
        let topology = apply_topology(&stack, Some((8_000, 8_000))).await;
        let upstream = stack.registry_url();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
        let registry = toxiproxy.proxy("registry", free_port(), upstream).await;
        let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
            &Deployment {
                registry_url: registry.http_url(),
                registry_user: None,
                registry_ca_file: None,
                ..deployment(&stack, &topology, None)
            },
            |s| {
                quick(s);
                s.registry.timeout_ms = 3_000;
                // Only velocity sends to review (an account's second transaction): none of
                // the records decided before the fault needs the review topic's schema, one
                // decided during it does.
                s.service.review_threshold = 0.99;
                s.service.decline_threshold = 1.0;
                s.service.low_confidence_margin = 0.0;
                s.service.velocity_max = 1;
            },
        );
        svc.wait_ready(Duration::from_secs(60)).await;
        let input = topology.topic("transactions");
        let decisions = topology.topic("fraud-decisions");
        let read = async |n: usize, secs: u64| {
            read_topic(
                &stack.broker.kafka(),
                &stack.registry_url(),
                &decisions,
                Duration::from_secs(secs),
                |rs| rs.len() >= n,
            )
            .await
        };
        let known = AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("p");
        let mut rng = rand::rng();
        for i in 0..5 {
            let (_, mut v) = sample_transaction(&mut rng, "tenant-faults");
            v["account_id"] = json!(format!("before-{i}"));
            known
                .send(&input, &format!("before-{i}"), &v)
                .await
                .expect("send");
        }
        assert_eq!(read(5, 60).await.len(), 5, "decided before the fault");

        // A second version of the input's schema, which the service has not read yet.
        let subject = format!("{input}-value");
        let http = Http::new(stack.registry_url());
        let latest = http
            .get(&format!("/subjects/{subject}/versions/latest"))
            .await;
        let mut schema: Value =
            serde_json::from_str(latest.body["schema"].as_str().expect("schema")).expect("json");
        schema["fields"]
            .as_array_mut()
            .expect("fields")
            .push(json!({"name": "faults_note", "type": ["null", "string"], "default": null}));
        let v2 = http
            .post(
                &format!("/subjects/{subject}/versions"),
                json!({"schema": schema.to_string()}),
            )
            .await;
        assert_eq!(v2.status, 200, "{:?}", v2.body);

        registry
            .add("hang", "timeout", Stream::Upstream, json!({"timeout": 0}))
            .await;
        let hang_began = std::time::Instant::now();
        let newer = AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("p");
        // Accounts of their own: a record waits for the earlier ones of its account.
        let mut new_ids = Vec::new();
        for i in 0..5 {
            let (_, mut v) = sample_transaction(&mut rng, "tenant-faults");
            v["account_id"] = json!(format!("unseen-{i}"));
            newer
                .send(&input, &format!("unseen-{i}"), &v)
                .await
                .expect("send");
            new_ids.push(v["event_id"].as_str().expect("id").to_string());
            let (_, mut v) = sample_transaction(&mut rng, "tenant-faults");
            v["account_id"] = json!(format!("known-{i}"));
            known
                .send(&input, &format!("known-{i}"), &v)
                .await
                .expect("send");
        }
        // known-0's second transaction: REVIEW by velocity, a copy on the review topic.
        let (_, mut v) = sample_transaction(&mut rng, "tenant-faults");
        v["account_id"] = json!("known-0");
        known.send(&input, "known-0", &v).await.expect("send");
        let during = read(11, 30).await;
        assert!(
            during
                .iter()
                .any(|r| r.value.as_ref().is_some_and(|v| v["outcome"] == "REVIEW")),
            "a review among them"
        );
        assert_eq!(
            during.len(),
            11,
            "records of the known schema are decided while the registry hangs; the service's log:\n{}",
            svc.log()
        );
        assert!(
            !event_ids(&during).iter().any(|id| new_ids.contains(id)),
            "nothing of the unseen schema could be decided yet"
        );
        let behind = partitions_behind(
            &stack.broker.kafka(),
            &topology.group("verdict-fraud-detector"),
            &input,
            Duration::from_secs(45),
        )
        .await;
        assert!(
            behind.is_empty(),
            "input partitions {behind:?} still held after {:?} of a hanging registry",
            hang_began.elapsed()
        );
        let held_for = hang_began.elapsed();
        assert!(
            held_for < Duration::from_secs(15),
            "held {held_for:?}, bounded by registry.timeout_ms (3 s)"
        );

        registry.remove("hang").await;
        let all = read(16, 120).await;
        let decided = event_ids(&all);
        for id in &new_ids {
            assert!(
                decided.contains(id),
                "{id} decided after the registry came back"
            );
        }
        let dlq = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("transactions.dlq"),
            Duration::from_secs(2),
            |rs| !rs.is_empty(),
        )
        .await;
        assert!(
            dlq.is_empty(),
            "nothing dead-lettered: {} records",
            dlq.len()
        );
        println!("input committed to its end {held_for:?} into the registry's hang");
        svc.stop_cleanly();
    });
}

/// A model server that trickles its answers (one byte every 50 ms: a KServe answer takes
/// seconds): the call's timeout fires, the decisions fall back to the in-process model and say
/// `degraded`, the circuit opens (later calls fail fast instead of waiting out the timeout),
/// and once the server answers normally again the half-open probe closes it.
#[test]
fn a_trickling_model_server_times_out_opens_the_breaker_and_recovers() {
    run(300, async {
        let mut ms = ServiceProcess::spawn::<model_server::Spec>(&local_deployment(None), |_| {});
        ms.wait_ready(Duration::from_secs(120)).await;
        let mut run = RemoteScoring::through_proxy_to(ms.http_port).await;
        let before = run.decide(5, Duration::ZERO).await;
        assert_eq!(before.len(), 5);
        assert!(before.iter().all(|v| v["degraded"] == false), "{before:?}");

        run.model
            .add(
                "trickle",
                "slicer",
                Stream::Downstream,
                json!({"average_size": 1, "size_variation": 0, "delay": 50_000}),
            )
            .await;
        let during = run.decide(20, Duration::from_millis(100)).await;
        assert_eq!(during.len(), 20);
        for v in &during {
            assert_eq!(v["degraded"], true, "{v}");
            assert_eq!(v["model"]["provider"], "in-process", "{v}");
        }
        let waits: Vec<f64> = during
            .iter()
            .filter_map(|v| stage_ms(v, "remote_score"))
            .collect();
        let timeout = REMOTE_TIMEOUT_MS as f64;
        let timed_out = waits.iter().filter(|ms| **ms >= 0.9 * timeout).count();
        let fast = waits.iter().filter(|ms| **ms < 100.0).count();
        println!("remote_score during the trickle (ms): {waits:?}");
        assert!(
            timed_out >= 1,
            "the first calls waited out the timeout: {waits:?}"
        );
        assert!(
            waits.iter().all(|ms| *ms < 3.0 * timeout),
            "no call waited for the trickle: {waits:?}"
        );
        assert!(
            fast >= 10,
            "with the circuit open the fallback answers at once: {waits:?}"
        );

        run.model.remove("trickle").await;
        run.assert_scored_again().await;
        run.svc.stop_cleanly();
    });
}

/// A model server killed and started again while the proxy keeps the fraud-detector's pooled
/// connections looking open for 5 s after the server's side closed (Toxiproxy `slow_close`):
/// calls on those half-dead connections end at the call timeout, decided degraded, none stuck;
/// once the server is back and the circuit's probe gets through, it scores them again.
#[test]
fn a_model_server_restart_behind_a_slow_close_degrades_and_recovers() {
    run(300, async {
        let port = free_port();
        let start_model_server = || {
            ServiceProcess::spawn_on::<model_server::Spec>(&local_deployment(None), port, |_| {})
        };
        let mut ms = start_model_server();
        ms.wait_ready(Duration::from_secs(120)).await;
        let mut run = RemoteScoring::through_proxy_to(port).await;
        let before = run.decide(5, Duration::from_millis(100)).await;
        assert!(before.iter().all(|v| v["degraded"] == false), "{before:?}");

        run.model
            .add(
                "slow-close",
                "slow_close",
                Stream::Downstream,
                json!({"delay": 5_000}),
            )
            .await;
        ms.kill9();
        let during = run.decide(10, Duration::from_millis(100)).await;
        assert_eq!(during.len(), 10);
        let waits: Vec<f64> = during
            .iter()
            .filter_map(|v| stage_ms(v, "remote_score"))
            .collect();
        println!("remote_score while the server is gone (ms): {waits:?}");
        for v in &during {
            assert_eq!(v["degraded"], true, "{v}");
        }
        assert!(
            waits.iter().all(|ms| *ms < 3.0 * REMOTE_TIMEOUT_MS as f64),
            "no call waited for the held-open connection: {waits:?}"
        );

        let mut ms = start_model_server();
        ms.wait_ready(Duration::from_secs(120)).await;
        run.assert_scored_again().await;
        run.svc.stop_cleanly();
        ms.stop_cleanly();
    });
}
