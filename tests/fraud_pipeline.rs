//! The fraud-detector end to end, as a real process against a real broker and
//! registry: every event decided and audited in key order, poison to the
//! dead-letter topic, retries through the retry topic, kill -9 without loss, and
//! two instances sharing and handing over partitions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use harness::{
    Record, ServiceProcess, Stack, Topology, apply_topology, deployment, quick, read_topic,
    repo_root, run,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use verdict_cli::records::{AvroProducer, sample_transaction};
use verdict_runtime::headers;
use verdict_runtime::inference::pricing::{Price, PriceTable};

type Fraud = fraud_detector::Spec;
type FraudSettings = <Fraud as verdict_runtime::service::ServiceSpec>::Settings;

/// The fraud-detector on this test's stack, quick group settings, then `tweak`.
fn fraud(
    stack: &Stack,
    topology: &Topology,
    tweak: impl FnOnce(&mut FraudSettings),
) -> ServiceProcess {
    ServiceProcess::spawn::<Fraud>(&deployment(stack, topology, None), |s| {
        quick(s);
        tweak(s);
    })
}

/// Produces `n` transactions over `accounts` accounts; returns (account, event_id) in produce order.
async fn produce(
    stack: &Stack,
    topology: &Topology,
    n: usize,
    accounts: usize,
) -> Vec<(String, String)> {
    let transactions = topology.topic("transactions");
    let producer =
        AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
    let mut rng = rand::rng();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let (_, mut value) = sample_transaction(&mut rng, "tenant-it");
        let account = format!("acct-{}", i % accounts);
        value["account_id"] = Value::String(account.clone());
        producer
            .send(&transactions, &account, &value)
            .await
            .expect("produce");
        sent.push((account, value["event_id"].as_str().expect("id").to_string()));
    }
    sent
}

fn event_ids(records: &[Record]) -> HashSet<String> {
    records
        .iter()
        .filter_map(|r| r.value.as_ref()?["event_id"].as_str().map(String::from))
        .collect()
}

async fn decisions_for(
    stack: &Stack,
    topology: &Topology,
    want: &HashSet<String>,
    timeout: Duration,
) -> Vec<Record> {
    read_topic(
        &stack.broker.kafka(),
        &stack.registry_url(),
        &topology.topic("fraud-decisions"),
        timeout,
        |rs| {
            let got = event_ids(rs);
            want.iter().all(|id| got.contains(id))
        },
    )
    .await
}

#[test]
fn every_event_gets_a_decision_and_an_audit_in_key_order() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        // The in-process model priced by the call: every decision costs exactly that.
        const PER_CALL: f64 = 0.0001;
        let mut svc = fraud(&stack, &topology, |s| {
            s.pricing = PriceTable::new([(
                "german-credit-logreg".to_string(),
                Price {
                    per_call: PER_CALL,
                    ..Price::default()
                },
            )]);
        });
        svc.wait_ready(Duration::from_secs(30)).await;

        let sent = produce(&stack, &topology, 300, 12).await;
        let want: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        let decided = event_ids(&decisions);
        assert_eq!(
            decided.len(),
            300,
            "{} of 300 decided\n{}",
            decided.len(),
            svc.log()
        );
        assert_eq!(decisions.len(), 300, "no duplicates in a clean run");

        // Every decision names its model, has all five stage timings and a valid outcome.
        for d in &decisions {
            let v = d.value.as_ref().expect("decoded");
            assert_eq!(v["model"]["name"], "german-credit-logreg");
            assert_eq!(v["model"]["version"], "1.0.0");
            let stages: Vec<&str> = v["stage_timings"]
                .as_array()
                .expect("timings")
                .iter()
                .filter_map(|s| s["stage"].as_str())
                .collect();
            assert_eq!(stages, ["validate", "features", "rules", "score", "decide"]);
            assert!(
                ["APPROVE", "REVIEW", "DECLINE"].contains(&v["outcome"].as_str().unwrap_or(""))
            );
            let score = v["score"].as_f64().expect("score");
            assert!((0.0..=1.0).contains(&score));
            assert_eq!(
                d.key.as_deref(),
                v["account_id"].as_str(),
                "keyed by account"
            );
        }

        // Per account, decisions come out in the order the events went in.
        let mut produced: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (acct, id) in &sent {
            produced.entry(acct.as_str()).or_default().push(id.as_str());
        }
        let mut decided_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut sorted = decisions.clone();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        for d in &sorted {
            let v = d.value.as_ref().expect("decoded");
            decided_order
                .entry(v["account_id"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(v["event_id"].as_str().unwrap_or("").to_string());
        }
        for (acct, ids) in &produced {
            assert_eq!(
                decided_order
                    .get(*acct)
                    .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
                Some(ids.clone()),
                "order of {acct}"
            );
        }

        let audits = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("audit"),
            Duration::from_secs(30),
            |rs| event_ids(rs).len() >= 300,
        )
        .await;
        assert_eq!(event_ids(&audits), want, "one audit record per event");
        for a in &audits {
            let v = a.value.as_ref().expect("decoded");
            assert_eq!(v["action"], "DECISION");
            assert_eq!(
                v["input_sha256"].as_str().map(str::len),
                Some(64),
                "hash, not raw data"
            );
            assert_eq!(v["cost_usd"].as_f64(), Some(PER_CALL), "{v}");
        }
        let metered = svc
            .metric_where(
                "verdict_inference_cost_total",
                r#"tenant="tenant-it",model="german-credit-logreg""#,
            )
            .await;
        assert!((metered - 300.0 * PER_CALL).abs() < 1e-9, "{metered}");
        assert_eq!(svc.metric("verdict_records_in_total").await, 300.0);
        assert_eq!(svc.metric("verdict_dead_letters_total").await, 0.0);
        assert_eq!(
            svc.terminate(Duration::from_secs(30)),
            Some(0),
            "clean exit on SIGTERM\n{}",
            svc.log()
        );
    });
}

#[test]
fn poison_records_are_dead_lettered_and_the_partition_keeps_flowing() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |_| {});
        svc.wait_ready(Duration::from_secs(30)).await;

        let kafka = stack.broker.kafka();
        let raw: FutureProducer = kafka.producer().expect("producer");
        let avro = AvroProducer::new(&kafka, stack.registry_url()).expect("avro");
        let mut rng = rand::rng();
        let good = |rng: &mut rand::rngs::ThreadRng| {
            let (_, mut v) = sample_transaction(rng, "tenant-p");
            v["account_id"] = Value::String("acct-p".into());
            v
        };
        // Good and invalid records go through the Avro producer (key acct-p, so one
        // partition); the raw poison is written to that same partition in between.
        let mut good_ids = Vec::new();
        let mut poison: Vec<(i64, &str, Vec<u8>)> = Vec::new();
        let mut partition = None;
        for kind in [
            "good",
            "not-avro",
            "good",
            "unknown-schema",
            "good",
            "invalid-field",
            "good",
        ] {
            let raw_bytes: Vec<u8> = match kind {
                "not-avro" => b"{\"amount\": 12}".to_vec(),
                "unknown-schema" => vec![0, 0, 0, 0x27, 0x0f, 1, 2, 3],
                _ => Vec::new(),
            };
            match kind {
                "good" | "invalid-field" => {
                    let mut v = good(&mut rng);
                    if kind == "invalid-field" {
                        v["amount"] = serde_json::json!(-5.0);
                    }
                    let d = avro
                        .send(&topology.topic("transactions"), "acct-p", &v)
                        .await
                        .expect("send");
                    partition = Some(d.partition);
                    if kind == "good" {
                        good_ids.push(v["event_id"].as_str().expect("id").to_string());
                    } else {
                        poison.push((d.offset, "Invalid", Vec::new()));
                    }
                }
                _ => {
                    let p = partition.expect("a good record came first");
                    let offset = raw
                        .send(
                            FutureRecord::to(&topology.topic("transactions"))
                                .partition(p)
                                .key("acct-p")
                                .payload(&raw_bytes),
                            Duration::from_secs(10),
                        )
                        .await
                        .map(|d| d.offset)
                        .expect("send");
                    poison.push((
                        offset,
                        if kind == "not-avro" {
                            "Decode"
                        } else {
                            "UnknownSchema"
                        },
                        raw_bytes,
                    ));
                }
            }
        }
        let partition = partition.expect("partition").to_string();

        let want: HashSet<String> = good_ids.iter().cloned().collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        assert_eq!(
            event_ids(&decisions),
            want,
            "good records around the poison are decided\n{}",
            svc.log()
        );

        let dlq = read_topic(
            &kafka,
            &stack.registry_url(),
            &topology.topic("transactions.dlq"),
            Duration::from_secs(30),
            |rs| rs.len() >= 3,
        )
        .await;
        assert_eq!(dlq.len(), 3, "{dlq:?}");
        for (offset, class, bytes) in &poison {
            let r = dlq
                .iter()
                .find(|r| r.headers.get(headers::ORIGINAL_OFFSET) == Some(&offset.to_string()))
                .unwrap_or_else(|| panic!("no dead letter for offset {offset}"));
            if !bytes.is_empty() {
                assert_eq!(
                    r.raw.as_ref(),
                    Some(bytes),
                    "original value bytes untouched"
                );
            }
            assert_eq!(r.key.as_deref(), Some("acct-p"), "original key");
            assert_eq!(r.headers.get(headers::ERROR_CLASS), Some(*class));
            assert_eq!(r.headers.get(headers::ERROR_RETRYABLE), Some("false"));
            assert_eq!(
                r.headers.get(headers::ORIGINAL_TOPIC),
                Some(topology.topic("transactions").as_str())
            );
            assert_eq!(
                r.headers.get(headers::ORIGINAL_PARTITION),
                Some(partition.as_str())
            );
            assert_eq!(r.headers.get(headers::SERVICE), Some("fraud-detector"));
            assert_eq!(r.headers.get(headers::ATTEMPTS), Some("1"));
            assert!(
                r.headers.get(headers::ORIGINAL_TIMESTAMP).is_some()
                    && r.headers.get(headers::FAILED_AT).is_some()
            );
            assert!(
                !r.headers
                    .get(headers::ERROR_MESSAGE)
                    .unwrap_or("")
                    .is_empty()
            );
        }
        let invalid_msg = dlq
            .iter()
            .find(|r| r.headers.get(headers::ERROR_CLASS) == Some("Invalid"))
            .and_then(|r| r.headers.get(headers::ERROR_MESSAGE).map(String::from));
        assert!(
            invalid_msg.as_deref().unwrap_or("").contains("amount"),
            "{invalid_msg:?}"
        );
        assert_eq!(svc.metric("verdict_dead_letters_total").await, 3.0);
    });
}

#[test]
fn retryable_failures_go_through_the_retry_topic() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, Some((300, 600))).await;
        // Every record fails once, then succeeds from transactions.retry.1.
        let mut svc = fraud(&stack, &topology, |s| s.service.fail_first_attempts = 1);
        svc.wait_ready(Duration::from_secs(30)).await;
        let sent = produce(&stack, &topology, 20, 5).await;
        let want: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        assert_eq!(event_ids(&decisions), want, "{}", svc.log());
        let retried = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("transactions.retry.1"),
            Duration::from_secs(20),
            |rs| rs.len() >= 20,
        )
        .await;
        assert_eq!(retried.len(), 20);
        for r in &retried {
            assert_eq!(r.headers.get(headers::ATTEMPT), Some("2"));
            assert_eq!(r.headers.get(headers::ERROR_CLASS), Some("Transient"));
            assert!(r.headers.get(headers::NOT_BEFORE).is_some());
        }
        assert_eq!(
            svc.metric("verdict_dead_letters_total").await,
            0.0,
            "retries end as decisions, not dead letters"
        );
        drop(svc);

        // Failing more often than there are retry topics ends in the dead-letter topic.
        let mut svc = fraud(&stack, &topology, |s| {
            s.service.fail_first_attempts = 9;
            s.engine.guard.min_samples = 1000;
            s.engine.guard.window = 1000;
        });
        svc.wait_ready(Duration::from_secs(30)).await;
        let more = produce(&stack, &topology, 3, 3).await;
        let dlq = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("transactions.dlq"),
            Duration::from_secs(60),
            |rs| rs.len() >= 3,
        )
        .await;
        assert_eq!(dlq.len(), 3, "{}", svc.log());
        for r in &dlq {
            assert_eq!(r.headers.get(headers::ERROR_RETRYABLE), Some("true"));
            assert_eq!(
                r.headers.get(headers::ATTEMPTS),
                Some("3"),
                "1 try + 2 retry topics"
            );
            assert_eq!(
                r.headers.get(headers::ORIGINAL_TOPIC),
                Some(topology.topic("transactions").as_str()),
                "coordinates of the first failure"
            );
        }
        assert_eq!(more.len(), 3);
    });
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |_| {});
        svc.wait_ready(Duration::from_secs(30)).await;

        let first = produce(&stack, &topology, 400, 40).await;
        // Kill it while it is still working through the stream.
        let start = std::time::Instant::now();
        while svc.metric("verdict_records_processed_total").await < 50.0
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        svc.kill9();
        let second = produce(&stack, &topology, 200, 40).await;

        let mut svc = fraud(&stack, &topology, |_| {});
        svc.wait_ready(Duration::from_secs(30)).await;
        let want: HashSet<String> = first
            .iter()
            .chain(&second)
            .map(|(_, id)| id.clone())
            .collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(90)).await;
        let got = event_ids(&decisions);
        let lost: Vec<_> = want.difference(&got).collect();
        assert!(
            lost.is_empty(),
            "{} events lost: {:?}\n{}",
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            svc.log()
        );
        assert!(decisions.len() >= 600, "duplicates allowed, losses not");
    });
}

#[test]
fn two_instances_split_partitions_and_hand_over() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        // Both join a fresh group, so the first assignment spreads every topic's
        // partitions over both. (A member that joins later takes partitions from the
        // owner stickily: which topics it gets is the assignor's choice.)
        let mut a = fraud(&stack, &topology, |_| {});
        let mut b = fraud(&stack, &topology, |_| {});
        a.wait_ready(Duration::from_secs(30)).await;
        b.wait_ready(Duration::from_secs(30)).await;
        // Wait for the group to settle on a split.
        let start = std::time::Instant::now();
        loop {
            let (pa, pb) = (
                a.metric("verdict_assigned_partitions").await,
                b.metric("verdict_assigned_partitions").await,
            );
            if pa > 0.0 && pb > 0.0 && pa + pb == 18.0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "no split: a={pa} b={pb}\nA:\n{}\nB:\n{}",
                a.log(),
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let first = produce(&stack, &topology, 200, 50).await;
        let want: HashSet<String> = first.iter().map(|(_, id)| id.clone()).collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        assert_eq!(event_ids(&decisions).len(), 200);
        // Every record was read once, by the instance owning its partition. (Which topics'
        // partitions each instance got is the assignor's choice; an instance owning input
        // partitions read some of the records.)
        let input = format!("topic=\"{}\"", topology.topic("transactions"));
        let (ia, ib) = (
            a.metric("verdict_records_in_total").await,
            b.metric("verdict_records_in_total").await,
        );
        assert_eq!(ia + ib, 200.0, "a={ia} b={ib}");
        for (svc, read) in [(&a, ia), (&b, ib)] {
            let owns_input = svc
                .metric_where("verdict_assigned_partitions", &input)
                .await;
            assert_eq!(
                owns_input > 0.0,
                read > 0.0,
                "owns {owns_input} input partitions, read {read}"
            );
        }

        // A stops cleanly; B takes over its partitions and decides everything after.
        assert_eq!(a.terminate(Duration::from_secs(30)), Some(0), "{}", a.log());
        let second = produce(&stack, &topology, 200, 50).await;
        let want: HashSet<String> = first
            .iter()
            .chain(&second)
            .map(|(_, id)| id.clone())
            .collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(90)).await;
        let got = event_ids(&decisions);
        assert!(
            want.is_subset(&got),
            "{} missing after hand-over\n{}",
            want.difference(&got).count(),
            b.log()
        );
        // A static member (the default) keeps its partitions for the session timeout after a
        // clean stop, so that a restart takes them back without a rebalance; then B owns all.
        b.wait_metric(
            "verdict_assigned_partitions",
            "",
            |n| n >= 18.0,
            Duration::from_secs(30),
            "B owns every partition",
        )
        .await;
        let counts: HashMap<&str, usize> = decisions
            .iter()
            .filter_map(|d| d.value.as_ref()?["event_id"].as_str())
            .fold(HashMap::new(), |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            });
        assert!(
            counts.values().all(|&c| c <= 2),
            "a graceful hand-over duplicates little"
        );
    });
}

#[test]
fn dead_letter_guard_holds_a_poison_flood_and_says_so() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |s| {
            s.engine.guard.window = 20;
            s.engine.guard.min_samples = 20;
            s.engine.guard.max_dead_letter_ratio = 0.5;
            s.engine.guard.cooldown_ms = 600_000;
            s.engine.max_inflight_per_partition = 4;
            s.engine.max_inflight = 8;
        });
        svc.wait_ready(Duration::from_secs(30)).await;
        let raw: FutureProducer = stack.broker.kafka().producer().expect("producer");
        for i in 0..400 {
            raw.send(
                FutureRecord::to(&topology.topic("transactions"))
                    .key(&format!("k{i}"))
                    .payload("garbage"),
                Duration::from_secs(10),
            )
            .await
            .expect("send");
        }
        svc.wait_metric(
            "verdict_dlq_guard_tripped",
            "",
            |v| v >= 1.0,
            Duration::from_secs(30),
            "the guard tripped",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let dead = svc.metric("verdict_dead_letters_total").await;
        assert!(
            dead < 100.0,
            "the guard stopped the flood early: {dead} dead letters of 400"
        );
        let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", svc.http_port))
            .await
            .expect("readyz");
        assert_eq!(ready.status().as_u16(), 503);
        assert!(
            ready
                .text()
                .await
                .expect("body")
                .contains("dead-letter guard")
        );
        assert!(
            svc.log().contains("DEAD-LETTER GUARD TRIPPED"),
            "said loudly"
        );
    });
}

#[test]
fn trace_context_travels_from_input_to_outputs() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |_| {});
        svc.wait_ready(Duration::from_secs(30)).await;
        // Take the bytes of a real event and send them again with a traceparent.
        let sent = produce(&stack, &topology, 1, 1).await;
        let kafka = stack.broker.kafka();
        let input = read_topic(
            &kafka,
            &stack.registry_url(),
            &topology.topic("transactions"),
            Duration::from_secs(10),
            |rs| !rs.is_empty(),
        )
        .await;
        let bytes = input[0].raw.clone().expect("bytes");
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let raw: FutureProducer = kafka.producer().expect("producer");
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "traceparent",
            value: Some(traceparent.as_str()),
        });
        raw.send(
            FutureRecord::to(&topology.topic("transactions"))
                .key(&sent[0].0)
                .payload(&bytes)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("send");
        let decisions = read_topic(
            &kafka,
            &stack.registry_url(),
            &topology.topic("fraud-decisions"),
            Duration::from_secs(30),
            |rs| rs.len() >= 2,
        )
        .await;
        let traced: Vec<&str> = decisions
            .iter()
            .filter_map(|d| d.headers.get("traceparent"))
            .collect();
        // Spans are not exported here, so only the record that came with a trace is traced:
        // its decision continues that trace; the other starts none.
        assert_eq!(
            traced.len(),
            1,
            "{traced:?}: only the traced input's decision"
        );
        assert!(
            traced[0].starts_with(&format!("00-{trace_id}-"))
                && !traced[0].contains("00f067aa0ba902b7"),
            "{traced:?}: same trace, new span"
        );
    });
}

/// Issue 21 item 4: with `service.onnx_model` the fraud model exported to ONNX scores each
/// transaction in-process (tract), and the decisions name it (provider `onnx`) with the score
/// the hand-written evaluator gives the same transaction.
#[test]
fn the_onnx_model_scores_in_process_as_the_evaluator_does() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |s| {
            s.service.onnx_model = Some(fraud_detector::config::OnnxModelSettings {
                file: repo_root().join("models/fraud/model.onnx"),
                output: "probabilities".into(),
            });
        });
        svc.wait_ready(Duration::from_secs(30)).await;
        let evaluator = verdict_runtime::models::LogisticModel::load(
            &repo_root().join("models/fraud/model.json"),
        )
        .expect("model");
        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        let transactions = topology.topic("transactions");
        let mut rng = rand::rng();
        let mut expected = HashMap::new();
        for _ in 0..50 {
            let (account, value) = sample_transaction(&mut rng, "tenant-onnx");
            producer
                .send(&transactions, &account, &value)
                .await
                .expect("produce");
            // The evaluator on the features the service reads from the same event.
            let tx: fraud_detector::pipeline::Transaction =
                serde_json::from_value(value.clone()).expect("a transaction");
            let input = fraud_detector::pipeline::features(&tx).to_input();
            let p = evaluator.score(&input).probability;
            expected.insert(value["event_id"].as_str().expect("id").to_string(), p);
        }
        let want: HashSet<String> = expected.keys().cloned().collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        assert_eq!(event_ids(&decisions), want, "{}", svc.log());
        for d in &decisions {
            let v = d.value.as_ref().expect("decoded");
            assert_eq!(v["model"]["provider"], "onnx", "{v}");
            assert_eq!(v["model"]["name"], "german-credit-logreg");
            assert_eq!(v["model"]["version"], "1.0.0");
            let score = v["score"].as_f64().expect("score");
            let p = expected[v["event_id"].as_str().expect("id")];
            assert!((score - p).abs() < 1e-6, "onnx {score}, evaluator {p}");
            let stages: Vec<&str> = v["stage_timings"]
                .as_array()
                .expect("timings")
                .iter()
                .filter_map(|s| s["stage"].as_str())
                .collect();
            assert_eq!(
                stages,
                [
                    "validate",
                    "features",
                    "rules",
                    "score",
                    "onnx_score",
                    "decide"
                ]
            );
        }
        svc.stop_cleanly();
    });
}

/// Issue 21, item 2, in the fraud-detector: the ONNX model scores a tenant's transactions until
/// the tenant's spend reaches its hard cap ($0.03 a day at $0.01 a scoring); from then on the
/// in-process evaluator, the cheaper model, scores them and the decision says `degraded:
/// budget`. Transactions are sent one at a time, so the switch comes at the fourth.
#[test]
fn a_tenant_past_its_spend_cap_is_scored_by_the_cheaper_model() {
    use verdict_runtime::inference::budget::{BudgetSettings, Cap};
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut svc = fraud(&stack, &topology, |s| {
            s.service.onnx_model = Some(fraud_detector::config::OnnxModelSettings {
                file: repo_root().join("models/fraud/model.onnx"),
                output: "probabilities".into(),
            });
            s.pricing = PriceTable::new([(
                "german-credit-logreg".to_string(),
                Price {
                    per_call: 0.01,
                    ..Price::default()
                },
            )]);
            s.service.budgets = BudgetSettings {
                default: Some(Cap {
                    hard_usd: Some(0.03),
                    ..Cap::default()
                }),
                ..BudgetSettings::default()
            };
        });
        svc.wait_ready(Duration::from_secs(30)).await;
        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        let transactions = topology.topic("transactions");
        let mut rng = rand::rng();
        let mut providers = Vec::new();
        for i in 0..5 {
            let (account, value) = sample_transaction(&mut rng, "tenant-capped");
            producer
                .send(&transactions, &account, &value)
                .await
                .expect("produce");
            let id = value["event_id"].as_str().expect("id").to_string();
            let want: HashSet<String> = [id.clone()].into();
            let decided = decisions_for(&stack, &topology, &want, Duration::from_secs(30)).await;
            let v = decided
                .iter()
                .filter_map(|d| d.value.clone())
                .find(|v| v["event_id"] == id.as_str())
                .expect("its decision");
            let budget = v["reasons"].to_string().contains("degraded: budget");
            assert_eq!(v["degraded"], budget, "{i}: {v}");
            providers.push((
                v["model"]["provider"].as_str().unwrap_or("?").to_string(),
                budget,
            ));
        }
        let want: Vec<(String, bool)> = [("onnx", false); 3]
            .into_iter()
            .chain([("in-process", true); 2])
            .map(|(p, b)| (p.to_string(), b))
            .collect();
        assert_eq!(providers, want, "{}", svc.log());
        svc.stop_cleanly();
    });
}

#[test]
fn bad_settings_fail_at_start_up_naming_the_key() {
    let cases = [
        (
            ("VERDICT__ENGINE__MAX_INFLIGHT_PER_PARTITION", "0"),
            "engine.max_inflight_per_partition",
        ),
        (
            ("VERDICT__SERVICE__DECLINE_THRESHOLD", "lots"),
            "service.decline_threshold",
        ),
        (("VERDICT__SERVICE__THRESHHOLD", "0.5"), "threshhold"),
        (
            ("VERDICT__KAFKA__BOOTSTRAP_SERVERS", "no-port"),
            "kafka.bootstrap_servers",
        ),
        (
            ("VERDICT__SERVICE__MODEL_FILE", "/nonexistent/model.json"),
            "service.model_file",
        ),
        (
            (
                "VERDICT__SERVICE__ONNX_MODEL__FILE",
                "/nonexistent/model.onnx",
            ),
            "service.onnx_model.file",
        ),
    ];
    for ((key, value), named) in cases {
        let out = harness::run_command(
            std::process::Command::new(harness::bin("fraud-detector"))
                .current_dir(repo_root())
                .env(key, value),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(
            stderr.contains(named),
            "{key}={value} names `{named}`: {stderr}"
        );
    }
}

/// Issue 19: a fraud-detector signs in to a schema registry behind basic auth
/// (`registry.username` and `registry.password_file`) over HTTPS (`registry.ca_file`) and
/// decides as before. It needs the write role (it registers the `review` topic's record
/// schema on first use): as a `read` user, or with a wrong password, it stops at start-up
/// saying the registry refused it, and without the registry's CA saying the certificate is
/// not trusted, instead of retrying and dead-lettering every record that needs the schema.
#[test]
fn the_fraud_detector_signs_in_to_an_authenticated_registry_over_tls() {
    const REFUSED: &str = "the schema registry refused this service";
    const REFUSED_AS_READER: &[&str] = &[REFUSED, "it needs the write role"];
    const REFUSED_PASSWORD: &[&str] = &[REFUSED, "401 Unauthorized"];
    const UNTRUSTED: &[&str] =
        &["presented a certificate this service does not trust (registry.ca_file)"];
    run(150, async {
        const WRONG: &str = "not-the-writers-password-7f3a";
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, ca) = stack.tls_registry(&dir.path().join("tls")).await;
        let signed_in = verdict_runtime::service::Deployment {
            registry_url: registry.url(),
            registry_ca_file: Some(ca),
            ..deployment(&stack, &topology, None)
        };
        let spawn = |name: &str, password: &str, trust: bool| {
            let file = dir.path().join(format!("{name}.password"));
            std::fs::write(&file, format!("{password}\n")).expect("password file");
            let name = name.to_string();
            ServiceProcess::spawn::<Fraud>(&signed_in, move |s| {
                quick(s);
                s.registry.username = Some(name);
                s.registry.password_file = Some(file);
                if !trust {
                    s.registry.ca_file = None;
                }
            })
        };
        let as_user = |name: &str, password: &str| spawn(name, password, true);
        let password = |name: &str| {
            harness::REGISTRY_USERS
                .iter()
                .find(|(n, ..)| *n == name)
                .map(|(_, _, p)| *p)
                .expect("a registry user")
        };

        for (user, pw, trust, said) in [
            ("reader", password("reader"), true, REFUSED_AS_READER),
            ("writer", WRONG, true, REFUSED_PASSWORD),
            ("writer", password("writer"), false, UNTRUSTED),
        ] {
            let mut refused = spawn(user, pw, trust);
            let status = refused.wait_exit(Duration::from_secs(60)).await;
            assert!(
                status.is_some_and(|s| !s.success()),
                "{user} stops at start-up\n{}",
                refused.log()
            );
            let log = refused.log();
            assert!(said.iter().all(|s| log.contains(s)), "{user}: {log}");
            assert!(!log.contains(WRONG), "the password is never logged");
        }

        let mut svc = as_user("writer", password("writer"));
        svc.wait_ready(Duration::from_secs(60)).await;
        let sent = produce(&stack, &topology, 30, 7).await;
        let want: HashSet<String> = sent.into_iter().map(|(_, id)| id).collect();
        let decisions = decisions_for(&stack, &topology, &want, Duration::from_secs(60)).await;
        assert!(
            want.is_subset(&event_ids(&decisions)),
            "every event decided through the authenticated registry\n{}",
            svc.log()
        );
        drop(svc);
        registry.stop().await;
    });
}
