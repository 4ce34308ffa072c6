//! The document-analyzer end to end: real broker, registry, model-server (candle
//! MiniLM) and the analyzer binary.

use std::collections::HashSet;
use std::time::Duration;

use document_analyzer::config::CategorySource;
use harness::{
    Http, Record, ServiceProcess, Stack, Topology, apply_topology, deployment, free_port,
    local_deployment, quick, read_topic, run,
};
use serde_json::{Value, json};
use verdict_cli::records::AvroProducer;
use verdict_runtime::headers;
use verdict_runtime::inference::balance::EndpointSettings;
use verdict_runtime::inference::budget::{BudgetSettings, Cap, OnHard};
use verdict_runtime::inference::pricing::{Price, PriceTable};
use verdict_runtime::inference::zero_shot::{Examples, ZeroShot, default_classifiers};

/// The embedding model's price in [`analyzer`]'s settings (US dollars).
const PER_CALL: f64 = 0.001;
const PER_1K_INPUT_TOKENS: f64 = 0.5;

/// The model server on `port` (a free one if `None`), for the document pipeline.
fn model_server(port: Option<u16>) -> ServiceProcess {
    let d = local_deployment(None);
    match port {
        Some(p) => ServiceProcess::spawn_on::<model_server::Spec>(&d, p, |_| {}),
        None => ServiceProcess::spawn::<model_server::Spec>(&d, |_| {}),
    }
}

/// The document-analyzer on this test's stack, using the model server on `model_port`.
fn analyzer(stack: &Stack, topology: &Topology, model_port: u16) -> ServiceProcess {
    analyzer_with(stack, topology, model_port, |_| {})
}

type AnalyzerSettings =
    <document_analyzer::Spec as verdict_runtime::service::ServiceSpec>::Settings;

/// [`analyzer`], then `tweak`.
fn analyzer_with(
    stack: &Stack,
    topology: &Topology,
    model_port: u16,
    tweak: impl FnOnce(&mut AnalyzerSettings),
) -> ServiceProcess {
    ServiceProcess::spawn::<document_analyzer::Spec>(
        &deployment(stack, topology, Some(model_port)),
        |s| {
            quick(s);
            s.service.provider.timeout_ms = 2000;
            s.service.provider.open_ms = 1000;
            s.pricing = PriceTable::new([(
                "all-minilm-l6-v2".to_string(),
                Price {
                    per_call: PER_CALL,
                    per_1k_input_tokens: PER_1K_INPUT_TOKENS,
                    ..Price::default()
                },
            )]);
            tweak(s);
        },
    )
}

fn document(id: &str, text: &str) -> Value {
    verdict_cli::records::sample_document("tenant-docs", id, text)
}

async fn send(stack: &Stack, topology: &Topology, docs: &[Value]) -> HashSet<String> {
    let uploads = topology.topic("document-uploads");
    let producer =
        AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
    let mut ids = HashSet::new();
    for d in docs {
        producer
            .send(&uploads, d["document_id"].as_str().expect("id"), d)
            .await
            .expect("send");
        ids.insert(d["event_id"].as_str().expect("event id").to_string());
    }
    ids
}

async fn decisions(stack: &Stack, topology: &Topology, want: &HashSet<String>) -> Vec<Record> {
    let ids = want.clone();
    read_topic(
        &stack.broker.kafka(),
        &stack.registry_url(),
        &topology.topic("document-decisions"),
        Duration::from_secs(90),
        move |rs| {
            let seen: HashSet<String> = rs
                .iter()
                .filter_map(|r| r.value.as_ref()?["event_id"].as_str().map(String::from))
                .collect();
            ids.iter().all(|i| seen.contains(i))
        },
    )
    .await
    .into_iter()
    .filter(|r| {
        r.value
            .as_ref()
            .and_then(|v| v["event_id"].as_str())
            .is_some_and(|id| want.contains(id))
    })
    .collect()
}

const PII: [&str; 4] = [
    "jane.doe@example.com",
    "+49 30 1234567",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
];

#[test]
fn documents_are_redacted_classified_and_decided() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut ms = model_server(None);
        ms.wait_ready(Duration::from_secs(120)).await;
        let mut analyzer = analyzer(&stack, &topology, ms.http_port);
        analyzer.wait_ready(Duration::from_secs(30)).await;

        let invoice = "Invoice 2024-17: please pay the amount due of 1,250.00 EUR to IBAN DE89 3704 0044 0532 0130 00 within 30 days.";
        let docs = vec![
            document("doc-invoice", invoice),
            document(
                "doc-complaint",
                "This is unacceptable. My order never arrived, I am very disappointed and want a refund. Mail me at jane.doe@example.com or call +49 30 1234567.",
            ),
            document(
                "doc-card",
                "Please charge my card 4111 1111 1111 1111 for the annual subscription.",
            ),
            document(
                "doc-resume",
                "Curriculum vitae: ten years of experience as a software engineer, education in computer science, skills in Rust and Kafka.",
            ),
        ];
        let want = send(&stack, &topology, &docs).await;
        let got = decisions(&stack, &topology, &want).await;
        assert_eq!(got.len(), 4, "{}", analyzer.log());
        let by_doc = |id: &str| {
            got.iter()
                .filter_map(|r| r.value.clone())
                .find(|v| v["document_id"] == id)
                .expect("decision")
        };
        let inv = by_doc("doc-invoice");
        assert_eq!(inv["category"], "invoice", "{inv}");
        assert_eq!(inv["model"]["name"], "all-minilm-l6-v2");
        assert_eq!(inv["degraded"], false);
        assert!(["AUTO_ACCEPT", "REVIEW", "REJECT"].contains(&inv["route"].as_str().unwrap_or("")));
        assert_eq!(by_doc("doc-resume")["category"], "resume");
        assert_eq!(
            by_doc("doc-complaint")["pii_found"],
            json!(["EMAIL", "PHONE"])
        );
        assert_eq!(by_doc("doc-card")["pii_found"], json!(["CARD"]));
        // The categories are learnt from labelled examples (models/categories): the refund
        // demand is a complaint. Zero-shot descriptions called it an invoice (0.52, issue 21).
        let complaint = by_doc("doc-complaint");
        assert_eq!(complaint["category"], "complaint", "{complaint}");
        // The trained sentiment head reads it as negative and sends it to a person.
        assert_eq!(complaint["sentiment"], "negative", "{complaint}");
        assert!(complaint["sentiment_confidence"].as_f64().unwrap_or(0.0) >= 0.8);
        assert_eq!(complaint["route"], "REVIEW", "{complaint}");
        assert!(
            complaint["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .any(|r| r.as_str().is_some_and(
                    |r| r.starts_with("negative sentiment") && r.contains("sentiment@1.0.0")
                )),
            "{complaint}"
        );
        assert!(
            inv["sentiment"].is_string(),
            "every embedded document gets a sentiment"
        );
        let stages: Vec<&str> = inv["stage_timings"]
            .as_array()
            .expect("t")
            .iter()
            .filter_map(|s| s["stage"].as_str())
            .collect();
        assert_eq!(
            stages,
            ["validate", "redact", "embed", "classify", "decide"]
        );

        // The same document again: its embedding comes from the cache.
        let again = send(&stack, &topology, &[document("doc-invoice-2", invoice)]).await;
        let second = decisions(&stack, &topology, &again).await;
        assert_eq!(second[0].value.as_ref().expect("v")["cached"], true);
        // Review item 11 of the hardening issue: the cache was shared by every tenant, and
        // `cached` told another tenant that someone had sent the same text. It is per tenant.
        let mut other = document("doc-invoice-3", invoice);
        other["tenant_id"] = json!("tenant-other");
        let theirs = send(&stack, &topology, &[other]).await;
        let third = decisions(&stack, &topology, &theirs).await;
        assert_eq!(
            third[0].value.as_ref().expect("v")["cached"],
            false,
            "another tenant's first sending of the text is not a cache hit"
        );

        // What each decision cost, by the price table: a call and its tokens, nothing for a
        // cached embedding; the same on the audit record, and summed per tenant in /metrics.
        let cost = |d: &Value| {
            d["cost_usd"]
                .as_f64()
                .unwrap_or_else(|| panic!("a cost: {d}"))
        };
        let priced = |d: &Value| {
            let tokens = d["token_usage"].as_f64().expect("tokens");
            PER_CALL + tokens / 1000.0 * PER_1K_INPUT_TOKENS
        };
        let theirs = third[0].value.clone().expect("v");
        for d in got.iter().filter_map(|r| r.value.as_ref()).chain([&theirs]) {
            assert!((cost(d) - priced(d)).abs() < 1e-9, "{d}");
        }
        assert_eq!(cost(second[0].value.as_ref().expect("v")), 0.0);
        let spent_by_docs: f64 = got.iter().filter_map(|r| r.value.as_ref()).map(cost).sum();
        let model = r#"model="all-minilm-l6-v2""#;
        for (tenant, spent, calls) in [
            ("tenant-docs", spent_by_docs, 4.0),
            ("tenant-other", cost(&theirs), 1.0),
        ] {
            let labels = format!(r#"tenant="{tenant}",{model}"#);
            let metered = analyzer
                .metric_where("verdict_inference_cost_total", &labels)
                .await;
            assert!(
                (metered - spent).abs() < 1e-9,
                "{tenant}: {metered} metered, {spent} on its decisions"
            );
            assert_eq!(
                analyzer
                    .metric_where("verdict_inference_calls_total", &labels)
                    .await,
                calls,
                "{tenant}"
            );
        }
        assert!(
            analyzer
                .metric_where("verdict_model_calls_total", r#"outcome="ok""#)
                .await
                >= 1.0
        );
        let audits = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("audit"),
            Duration::from_secs(30),
            |rs| rs.len() >= 6,
        )
        .await;
        for d in got.iter().filter_map(|r| r.value.as_ref()) {
            let audit = audits
                .iter()
                .filter_map(|r| r.value.as_ref())
                .find(|a| a["event_id"] == d["event_id"])
                .unwrap_or_else(|| panic!("the audit of {d}"));
            assert_eq!(audit["cost_usd"], d["cost_usd"], "{audit}");
            assert_eq!(audit["token_usage"], d["token_usage"], "{audit}");
            assert!(
                audit["details"]["categories_from"]
                    .as_str()
                    .is_some_and(|s| s.contains("models/categories/examples.jsonl (sha256 ")),
                "the audit says what the categories were learnt from: {audit}"
            );
        }

        // No output topic carries the personal data.
        for topic in ["document-decisions", "audit", "review"] {
            let records = read_topic(
                &stack.broker.kafka(),
                &stack.registry_url(),
                &topology.topic(topic),
                Duration::from_secs(5),
                |_| false,
            )
            .await;
            for r in &records {
                let raw =
                    String::from_utf8_lossy(r.raw.as_deref().unwrap_or_default()).into_owned();
                for secret in PII {
                    assert!(!raw.contains(secret), "{topic} carries `{secret}`");
                }
            }
        }
        let dlq = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("document-uploads.dlq"),
            Duration::from_secs(2),
            |_| false,
        )
        .await;
        assert!(dlq.is_empty());
    });
}

/// Issue 21 item 3: two model servers serve the embeddings, one rate-limited as a hosted API
/// is (one request per 5 s, then 429 with `Retry-After`). The analyzer balances its calls over
/// both: the limited one's 429s move the calls to the other at once, and every document is
/// decided by the model, none degraded to rules (the chain never fell back).
#[test]
fn a_rate_limited_replica_moves_calls_to_the_other() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let d = local_deployment(None);
        let mut limited = ServiceProcess::spawn::<model_server::Spec>(&d, |s| {
            s.http.requests_per_second = 0.2;
            s.http.burst = 1.0;
        });
        let mut open = model_server(None);
        for ms in [&mut limited, &mut open] {
            ms.wait_ready(Duration::from_secs(120)).await;
        }
        let replica = format!("http://127.0.0.1:{}", open.http_port);
        let mut analyzer = analyzer_with(&stack, &topology, limited.http_port, |s| {
            s.service.embeddings_replicas = vec![EndpointSettings {
                url: replica.clone(),
                ..EndpointSettings::default()
            }];
            s.service.provider.failure_threshold = 3;
        });
        analyzer.wait_ready(Duration::from_secs(30)).await;

        // One at a time, so each is a call of its own (no micro-batch gathers them).
        let mut decided = Vec::new();
        for i in 0..12 {
            let text =
                format!("Invoice {i}: please pay the amount due of {i}00 EUR within 30 days.");
            let ids = send(
                &stack,
                &topology,
                &[document(&format!("doc-lb-{i}"), &text)],
            )
            .await;
            decided.extend(decisions(&stack, &topology, &ids).await);
        }
        assert_eq!(decided.len(), 12, "{}", analyzer.log());
        for d in decided.iter().filter_map(|r| r.value.as_ref()) {
            assert_eq!(d["degraded"], false, "decided by the model, not rules: {d}");
            assert_eq!(d["model"]["name"], "all-minilm-l6-v2", "{d}");
        }
        let limited_url = format!(r#"endpoint="http://127.0.0.1:{}""#, limited.http_port);
        let calls = |endpoint: String, outcome: &'static str| {
            let analyzer = &analyzer;
            async move {
                analyzer
                    .metric_where(
                        "verdict_model_calls_total",
                        &format!(r#"{endpoint},outcome="{outcome}""#),
                    )
                    .await
            }
        };
        let refused = calls(limited_url.clone(), "http_429").await;
        let answered = calls(format!(r#"endpoint="{replica}""#), "ok").await;
        assert!(
            refused >= 1.0,
            "the limited server refused calls: {refused}"
        );
        assert!(
            answered >= 12.0,
            "the other answered the documents' calls: {answered}"
        );
        for svc in [&mut analyzer, &mut limited, &mut open] {
            svc.stop_cleanly();
        }
    });
}

#[test]
fn model_server_outage_degrades_to_rules_and_recovers() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let port = free_port();
        let mut ms = model_server(Some(port));
        ms.wait_ready(Duration::from_secs(120)).await;
        let mut analyzer = analyzer(&stack, &topology, port);
        analyzer.wait_ready(Duration::from_secs(30)).await;
        let warm = send(
            &stack,
            &topology,
            &[document("warm", "Please pay the invoice.")],
        )
        .await;
        assert_eq!(
            decisions(&stack, &topology, &warm).await[0]
                .value
                .as_ref()
                .expect("v")["degraded"],
            false
        );

        ms.kill9();
        let docs: Vec<Value> = (0..6)
            .map(|i| {
                document(
                    &format!("down-{i}"),
                    &format!("Urgent: the portal shows error {i}, please help today."),
                )
            })
            .collect();
        let down = send(&stack, &topology, &docs).await;
        let got = decisions(&stack, &topology, &down).await;
        assert_eq!(got.len(), 6, "{}", analyzer.log());
        for r in &got {
            let v = r.value.as_ref().expect("v");
            assert_eq!(v["degraded"], true);
            assert_eq!(v["model"]["provider"], "rules");
            assert_eq!(v["route"], "REVIEW");
        }
        assert_eq!(
            analyzer.metric("verdict_dead_letters_total").await,
            0.0,
            "no dead-letter flood"
        );

        let mut ms = model_server(Some(port));
        ms.wait_ready(Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let up = send(
            &stack,
            &topology,
            &[document("up", "Please pay invoice 77 of 300 EUR.")],
        )
        .await;
        let v = decisions(&stack, &topology, &up).await[0]
            .value
            .clone()
            .expect("v");
        assert_eq!(
            v["degraded"], false,
            "half-open probe closed the circuit: {v}"
        );
        assert_eq!(v["model"]["provider"], "openai");
    });
}

/// The embeddings of `texts` from the model server at `http` (its OpenAI-compatible API, in
/// batches of 32 as the document-analyzer sends them).
async fn embeddings(http: &Http, texts: &[&str]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(32) {
        let reply = http
            .post(
                "/v1/embeddings",
                json!({"model": "all-minilm-l6-v2", "input": batch}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let data = reply.body["data"].as_array().expect("data").clone();
        for d in data {
            let v = d["embedding"].as_array().expect("embedding");
            #[allow(clippy::cast_possible_truncation)]
            out.push(
                v.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect(),
            );
        }
    }
    out
}

/// Issue 21, item 5: the document categories learnt from the shipped labelled examples
/// (models/categories/examples.jsonl, 20 texts per category, their mean embeddings the
/// prototypes), against today's zero-shot label descriptions, on 60 examples held aside
/// (models/categories/held_aside.jsonl, never used to learn). Prints both accuracies and each
/// one's misses; the prototypes must do better, and reach 85 %.
#[test]
fn categories_learnt_from_examples_beat_descriptions_on_held_aside_examples() {
    run(240, async {
        let mut ms = model_server(None);
        ms.wait_ready(Duration::from_secs(120)).await;
        let http = Http::json(format!("http://127.0.0.1:{}", ms.http_port));
        let dir = harness::repo_root().join("models/categories");
        let train = Examples::load(&dir.join("examples.jsonl")).expect("examples");
        let held = Examples::load(&dir.join("held_aside.jsonl")).expect("held aside");
        let [category, _] = default_classifiers();

        let descriptions: Vec<&str> = category.labels.iter().map(|(_, d)| d.as_str()).collect();
        let zero_shot = ZeroShot::from_anchors(&category, embeddings(&http, &descriptions).await);
        let train_texts: Vec<&str> = train.texts().collect();
        let prototypes = ZeroShot::from_examples(
            &category.name,
            category.temperature,
            &train,
            &embeddings(&http, &train_texts).await,
        );
        let held_texts: Vec<&str> = held.texts().collect();
        let held_vectors = embeddings(&http, &held_texts).await;

        println!(
            "| categories from | held-aside examples right | accuracy | misses (label → predicted) |"
        );
        println!("|---|---|---|---|");
        let mut right = Vec::new();
        for (name, classifier) in [
            ("descriptions (zero-shot)", &zero_shot),
            ("examples (prototypes)", &prototypes),
        ] {
            let mut misses = std::collections::BTreeMap::<String, usize>::new();
            for ((label, _), v) in held.items.iter().zip(&held_vectors) {
                let got = classifier.classify(v).label;
                if &got != label {
                    *misses.entry(format!("{label} → {got}")).or_default() += 1;
                }
            }
            let n = held.items.len();
            let ok = n - misses.values().sum::<usize>();
            #[allow(clippy::cast_precision_loss)]
            let accuracy = ok as f64 / n as f64;
            let misses: Vec<String> = misses.iter().map(|(k, c)| format!("{k} ×{c}")).collect();
            println!(
                "| {name} | {ok}/{n} | {:.1} % | {} |",
                accuracy * 100.0,
                misses.join(", ")
            );
            right.push(ok);
        }
        let n = held.items.len();
        assert!(
            right[1] > right[0],
            "examples beat descriptions: {right:?} of {n}"
        );
        assert!(
            right[1] * 100 >= n * 85,
            "examples reach 85 %: {} of {n}",
            right[1]
        );
        ms.stop_cleanly();
    });
}

/// Issue 21, item 5: `verdict shadow` of the document-analyzer with its categories learnt from
/// examples, over the demo's documents as production decided them with zero-shot label
/// descriptions. Production files the refund demand under invoice (the issue's example); the
/// report shows it moving to complaint.
#[test]
fn a_shadow_run_shows_what_categories_learnt_from_examples_change() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut ms = model_server(None);
        ms.wait_ready(Duration::from_secs(120)).await;
        let mut production = analyzer_with(&stack, &topology, ms.http_port, |s| {
            s.service.categories = CategorySource::Descriptions;
        });
        production.wait_ready(Duration::from_secs(30)).await;
        let docs: Vec<Value> = verdict_cli::records::SAMPLE_DOCUMENTS
            .iter()
            .enumerate()
            .map(|(i, text)| document(&format!("demo-{i}"), text))
            .collect();
        let want = send(&stack, &topology, &docs).await;
        let decided = decisions(&stack, &topology, &want).await;
        let refund = decided
            .iter()
            .filter_map(|r| r.value.as_ref())
            .find(|v| v["document_id"] == "demo-1")
            .expect("the refund demand's decision")
            .clone();
        assert_eq!(refund["category"], "invoice", "descriptions: {refund}");
        production.stop_cleanly();

        let dir = tempfile::tempdir().expect("dir");
        let (md, report) = (dir.path().join("shadow.md"), dir.path().join("shadow.json"));
        let out = harness::verdict(
            &stack,
            &[
                "shadow",
                "--service",
                "document-analyzer",
                "--name",
                &harness::unique("examples"),
                "--topology",
                &topology.to_string_lossy(),
                "--from-offset",
                "0",
                "--model-server-url",
                &format!("http://127.0.0.1:{}", ms.http_port),
                "--set",
                "service.categories=examples",
                "--report",
                &md.to_string_lossy(),
                "--json",
                &report.to_string_lossy(),
            ],
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        let md = std::fs::read_to_string(&md).expect("markdown report");
        println!("{md}");
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("json")).expect("json");
        assert_eq!(report["compared"], 4, "{report}");
        let moved = report["top_changes"]
            .as_array()
            .expect("changes")
            .iter()
            .find(|c| c["event_id"] == refund["event_id"])
            .unwrap_or_else(|| panic!("the refund demand changed: {md}"));
        let route = refund["route"].as_str().expect("route");
        assert_eq!(moved["old_outcome"], format!("{route} invoice"), "{md}");
        assert!(
            moved["new_outcome"]
                .as_str()
                .is_some_and(|o| o.ends_with(" complaint")),
            "{md}"
        );
        ms.stop_cleanly();
    });
}

/// Issue 21, item 2: a tenant crosses its spend caps mid-stream. Each document's embedding
/// costs about $0.0115 ([`analyzer`]'s price, ~21 tokens); the tenant's caps are $0.02 (soft)
/// and $0.03 (hard) a day. Documents are sent one at a time: the first two are embedded within the
/// caps, the third past the soft limit (a note on its audit record and the metric), and from
/// the fourth on the tenant's documents are decided by the keyword rules, `degraded: budget`,
/// with no model call. The spend is persisted: after a restart the tenant is still past its
/// cap. Another tenant is not touched, and a tenant set to refuse is dead-lettered instead.
#[test]
fn a_tenant_crossing_its_spend_cap_mid_stream_falls_back_and_stays_capped_across_restart() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut ms = model_server(None);
        ms.wait_ready(Duration::from_secs(120)).await;
        let budgets = BudgetSettings {
            tenants: [
                (
                    "tenant-docs".to_string(),
                    Cap {
                        soft_usd: Some(0.02),
                        hard_usd: Some(0.03),
                        on_hard: OnHard::Fallback,
                    },
                ),
                (
                    "tenant-refused".to_string(),
                    Cap {
                        hard_usd: Some(0.0),
                        on_hard: OnHard::Refuse,
                        ..Cap::default()
                    },
                ),
            ]
            .into(),
            ..BudgetSettings::default()
        };
        let start = |budgets: BudgetSettings| {
            analyzer_with(&stack, &topology, ms.http_port, move |s| {
                s.service.budgets = budgets;
            })
        };
        let mut analyzer = start(budgets.clone());
        analyzer.wait_ready(Duration::from_secs(30)).await;
        let texts = [
            "Invoice 311: 4 hours of window cleaning at 35 EUR, total 140 EUR, due in 14 days.",
            "The parcel arrived damaged and nobody answers my emails. I want my money back now.",
            "How do I change the password of my account? The settings page shows an error.",
            "Curriculum vitae: nurse with eight years of experience in paediatrics and first aid.",
            "This lease agreement between the landlord and the tenant starts on 1 March.",
        ];
        let audits_of = |ids: HashSet<String>| {
            let (kafka, url, topic) = (
                stack.broker.kafka(),
                stack.registry_url(),
                topology.topic("audit"),
            );
            async move {
                read_topic(&kafka, &url, &topic, Duration::from_secs(30), |rs| {
                    ids.iter().all(|id| {
                        rs.iter()
                            .any(|r| r.value.as_ref().is_some_and(|v| v["event_id"] == *id))
                    })
                })
                .await
            }
        };
        let mut decided = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let want = send(&stack, &topology, &[document(&format!("capped-{i}"), text)]).await;
            let got = decisions(&stack, &topology, &want).await;
            let d = got[0].value.clone().expect("decision");
            let audits = audits_of(want).await;
            let audit = audits
                .iter()
                .filter_map(|r| r.value.clone())
                .find(|a| a["event_id"] == d["event_id"])
                .expect("audit");
            decided.push((d, audit));
        }
        for (i, (d, audit)) in decided.iter().enumerate() {
            let budget = audit["details"]["budget"].as_str().unwrap_or("");
            let reasons = d["reasons"].to_string();
            match i {
                0 | 1 => {
                    assert_eq!(d["degraded"], false, "{i}: {d}");
                    assert!(d["cost_usd"].as_f64().unwrap_or(0.0) > 0.01, "{i}: {d}");
                    assert_eq!(budget, "within", "{i}: {audit}");
                }
                2 => {
                    assert_eq!(d["degraded"], false, "{i}: {d}");
                    assert!(budget.contains("past its soft limit $0.0200"), "{audit}");
                }
                _ => {
                    assert_eq!(d["degraded"], true, "{i}: {d}");
                    assert!(reasons.contains("degraded: budget"), "{i}: {d}");
                    assert!(d["cost_usd"].is_null(), "no model call, no cost: {d}");
                    assert!(budget.contains("past its hard limit $0.0300"), "{audit}");
                }
            }
        }
        assert!(
            analyzer
                .metric_where(
                    "verdict_budget_exceeded_total",
                    r#"tenant="tenant-docs",limit="hard""#
                )
                .await
                >= 2.0
        );
        assert!(
            analyzer
                .metric_where(
                    "verdict_budget_exceeded_total",
                    r#"tenant="tenant-docs",limit="soft""#
                )
                .await
                >= 1.0
        );

        // Restarted, the spend is read back from the changelog: still past the cap.
        analyzer.stop_cleanly();
        let mut analyzer = start(budgets);
        analyzer.wait_ready(Duration::from_secs(30)).await;
        let want = send(
            &stack,
            &topology,
            &[document("capped-after-restart", texts[0])],
        )
        .await;
        let d = decisions(&stack, &topology, &want).await[0]
            .value
            .clone()
            .expect("decision");
        assert_eq!(d["degraded"], true, "still capped after a restart: {d}");
        assert!(d["reasons"].to_string().contains("degraded: budget"), "{d}");

        // Other tenants: one without a cap is embedded; one set to refuse is dead-lettered.
        let mut free = document("free", texts[1]);
        free["tenant_id"] = json!("tenant-free");
        let mut refused = document("refused", texts[2]);
        refused["tenant_id"] = json!("tenant-refused");
        let want = send(&stack, &topology, &[free]).await;
        let d = decisions(&stack, &topology, &want).await[0]
            .value
            .clone()
            .expect("decision");
        assert_eq!(d["degraded"], false, "{d}");
        send(&stack, &topology, &[refused]).await;
        let dlq = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("document-uploads.dlq"),
            Duration::from_secs(30),
            |rs| !rs.is_empty(),
        )
        .await;
        assert_eq!(dlq.len(), 1, "{}", analyzer.log());
        assert_eq!(dlq[0].headers.get(headers::ERROR_CLASS), Some("Refused"));
        assert_eq!(dlq[0].headers.get(headers::ERROR_RETRYABLE), Some("false"));
        assert!(
            dlq[0]
                .headers
                .get(headers::ERROR_MESSAGE)
                .is_some_and(|m| m.contains("past its hard limit $0.0000")),
            "{:?}",
            dlq[0].headers
        );
        analyzer.stop_cleanly();
        ms.stop_cleanly();
    });
}
