//! What an operator sees. Traces end to end in a real Jaeger: a transaction and a document
//! submitted through the gateway are followed from the HTTP request through Kafka to their
//! decisions, with a span per stage, read back from Jaeger's query API; a dead-lettered one is
//! marked failed, and the service's JSON log line about it names the same trace and event.
//! Metrics: every one the README and the services' Grafana dashboard name is exported.

use std::collections::BTreeSet;
use std::time::Duration;

use gateway::auth::{Scope, key_hash};
use gateway::config::{ApiKey, Tier};
use harness::jaeger::{Jaeger, Span, Trace};
use harness::{
    ServiceProcess, Stack, Topology, apply_topology, deployment, local_deployment, quick, run,
};
use serde_json::{Value, json};
use verdict_cli::records::sample_transaction;
use verdict_runtime::inference::budget::Cap;
use verdict_runtime::inference::pricing::{Price, PriceTable};
use verdict_runtime::service::Deployment;
use verdict_runtime::telemetry::LogFormat;

const KEY: &str = "key-traced";

/// The gateway of this test's topology, admitting [`KEY`], sending spans to `otlp` (if any).
fn gateway(d: &Deployment, topology: &Topology, otlp: &str) -> ServiceProcess {
    ServiceProcess::spawn::<gateway::Spec>(d, |s| {
        s.gateway.keys = vec![ApiKey {
            id: "traced".into(),
            sha256: key_hash(KEY),
            tenant: "tenant-traced".into(),
            scopes: vec![
                Scope::TransactionsWrite,
                Scope::DocumentsWrite,
                Scope::JobsRead,
            ],
            revoked: false,
            tier: Tier::Interactive,
        }];
        s.gateway.resolutions_topic = topology.topic("review-resolutions");
        s.telemetry.otlp_endpoint = otlp.to_string();
    })
}

/// `POST path` with the key: the answer's status and job.
async fn submit(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.expect("a JSON job"))
}

/// `POST path?wait=30s` with the key; the job's id once it is decided.
async fn submit_and_wait(port: u16, path: &str, body: Value) -> String {
    let (status, job) = submit(port, &format!("{path}?wait=30s"), &body).await;
    assert_eq!(status, 200, "{job}");
    // Decided: complete, or waiting for a person's review.
    assert!(job["decision"].is_object(), "{job}");
    job["job_id"].as_str().expect("a job id").to_string()
}

/// A transaction as a client sends it (the gateway sets its event id and tenant).
fn transaction() -> Value {
    let (_, mut tx) = sample_transaction(&mut rand::rng(), "ignored");
    let obj = tx.as_object_mut().expect("an object");
    obj.remove("event_id");
    obj.remove("tenant_id");
    tx
}

/// Checks one submission's trace: the gateway's request span (answered `status`, tagged with
/// the event id) →
/// its `produce` → the service's `process <topic>` span (tagged with the same id) → one span
/// per stage, in order. Returns the service's span.
fn assert_followed<'t>(
    trace: &'t Trace,
    route: &str,
    status: u16,
    service: &str,
    topic: &str,
    stages: &[&str],
) -> &'t Span {
    let tree = trace.tree();
    let request = trace
        .find("gateway", &format!("POST {route}"))
        .unwrap_or_else(|| panic!("no gateway span for POST {route}:\n{tree}"));
    assert_eq!(
        request.parent, None,
        "the request starts the trace:\n{tree}"
    );
    assert_eq!(
        request.tag("http.response.status_code"),
        Some(&json!(status)),
        "{tree}"
    );
    assert_eq!(
        trace.child_names(request),
        ["encode", "produce"],
        "the gateway's stages:\n{tree}"
    );
    let produce = trace.children(request)[1];
    let record = trace
        .children(produce)
        .into_iter()
        .find(|s| s.service == service)
        .unwrap_or_else(|| panic!("{service} continues the gateway's produce span:\n{tree}"));
    assert_eq!(record.operation, format!("process {topic}"), "{tree}");
    assert_eq!(
        record.tag("event_id"),
        request.tag("event_id"),
        "the same event on both sides of Kafka:\n{tree}"
    );
    assert_eq!(record.tag("attempt"), Some(&json!(1)), "{tree}");
    assert_eq!(
        trace.child_names(record),
        stages,
        "{service}'s stages:\n{tree}"
    );
    record
}

#[test]
fn a_submission_is_traced_from_the_request_through_kafka_to_its_decision() {
    run(300, async {
        let jaeger = Jaeger::start().await;
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let otlp = jaeger.otlp_endpoint();
        let mut models =
            ServiceProcess::spawn::<model_server::Spec>(&local_deployment(None), |_| {});
        models.wait_ready(Duration::from_secs(60)).await;
        let d = deployment(&stack, &topology, Some(models.http_port));
        let mut gw = gateway(&d, &topology, &otlp);
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(&d, |s| {
            quick(s);
            s.telemetry.otlp_endpoint = otlp.clone();
            s.telemetry.log_format = LogFormat::Json;
        });
        let mut docs = ServiceProcess::spawn::<document_analyzer::Spec>(&d, |s| {
            quick(s);
            s.telemetry.otlp_endpoint = otlp.clone();
        });
        for svc in [&mut gw, &mut fraud, &mut docs] {
            svc.wait_ready(Duration::from_secs(60)).await;
        }

        let tx_job = submit_and_wait(gw.http_port, "/v1/transactions", transaction()).await;
        // An hour ahead of the service's clock: the fraud-detector dead-letters it.
        let mut late = transaction();
        late["occurred_at"] = json!(verdict_runtime::now_ms() + 3_600_000);
        let (status, job) = submit(gw.http_port, "/v1/transactions", &late).await;
        assert_eq!(status, 202, "{job}");
        let late_job = job["job_id"].as_str().expect("a job id").to_string();
        let doc =
            json!({"document_id": "traced-1", "text": "Invoice 2041: 3 licences, due in 30 days."});
        let doc_job = submit_and_wait(gw.http_port, "/v1/documents", doc).await;

        let within = Duration::from_secs(60);
        let has = |service: &'static str| {
            move |t: &Trace| {
                t.spans
                    .iter()
                    .any(|s| s.service == service && s.operation == "produce")
            }
        };
        let trace = jaeger
            .trace_of("gateway", &tx_job, within, has("fraud-detector"))
            .await;
        let transactions = topology.topic("transactions");
        assert_followed(
            &trace,
            "/v1/transactions",
            200,
            "fraud-detector",
            &transactions,
            &[
                "decode", "validate", "features", "rules", "score", "decide", "produce",
            ],
        );
        let trace = jaeger
            .trace_of("gateway", &doc_job, within, has("document-analyzer"))
            .await;
        assert_followed(
            &trace,
            "/v1/documents",
            200,
            "document-analyzer",
            &topology.topic("document-uploads"),
            &[
                "decode", "validate", "redact", "embed", "classify", "decide", "produce",
            ],
        );
        // The dead-lettered one: its attempt failed in `validate`, and is marked so.
        let trace = jaeger
            .trace_of("gateway", &late_job, within, |t| {
                t.spans
                    .iter()
                    .any(|s| s.service == "fraud-detector" && s.operation == "validate")
            })
            .await;
        let record = assert_followed(
            &trace,
            "/v1/transactions",
            202,
            "fraud-detector",
            &transactions,
            &["decode", "validate"],
        );
        let tree = trace.tree();
        assert_eq!(
            record.tag("error"),
            Some(&json!(true)),
            "{tree}\n{record:?}"
        );
        assert!(
            record
                .tag("otel.status_description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.contains("occurred_at")),
            "the reason on the failed span: {record:?}"
        );
        // Its log line, in JSON, names the record, the trace and the event.
        let log = fraud.log();
        let line: Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "dead-lettering record")
            .unwrap_or_else(|| panic!("a JSON line about the dead letter in:\n{log}"));
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["topic"], json!(transactions), "{line}");
        assert!(
            line["offset"].is_i64() && line["partition"].is_i64(),
            "{line}"
        );
        assert_eq!(line["span"]["event_id"], json!(late_job), "{line}");
        let trace_id = trace.spans[0].trace_id.as_str();
        assert_eq!(line["span"]["trace_id"], json!(trace_id), "{line}");

        for svc in [&mut gw, &mut fraud, &mut docs, &mut models] {
            svc.stop_cleanly();
        }
    });
}

/// Jaeger's web UI is jaeger-ui's built assets, which the `go install`ed binary lacks.
/// scripts/jaeger.sh serves the ones it is given, with Jaeger's own settings written into their
/// index.html, and the UI's routes (a trace's page) lead to it; a directory without them stops
/// it at start naming the variable; with none, Jaeger's placeholder page says so, in the words
/// `verdict stack up` looks for.
#[test]
fn jaeger_serves_the_web_ui_it_is_given_and_says_when_it_has_none() {
    run(120, async {
        // A stand-in for jaeger-ui's build/: an index.html with the line Jaeger fills in, and a
        // static file.
        let assets = tempfile::tempdir().expect("tempdir");
        let index =
            "<title>ui under test</title><script>JAEGER_VERSION = DEFAULT_VERSION;</script>";
        let script = "console.log('ui under test');";
        std::fs::write(assets.path().join("index.html"), index).expect("index.html");
        std::fs::create_dir(assets.path().join("static")).expect("static/");
        std::fs::write(assets.path().join("static/app.js"), script).expect("app.js");
        let path = assets.path().display().to_string();
        let jaeger = Jaeger::start_with(&[("VERDICT_JAEGER_UI", &path)]).await;
        let (status, page) = jaeger.page("/").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("<title>ui under test</title>"), "{page}");
        assert!(
            page.contains("JAEGER_VERSION = {") && !page.contains("DEFAULT_VERSION"),
            "Jaeger's version written in: {page}"
        );
        assert_eq!(jaeger.page("/static/app.js").await, (200, script.into()));
        let (status, page) = jaeger.page("/trace/4bf92f3577b34da6a3ce929d0e0e4736").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("<title>ui under test</title>"), "{page}");
        assert!(
            jaeger
                .log()
                .contains(&format!("jaeger.sh: web UI from {path}")),
            "{}",
            jaeger.log()
        );
        drop(jaeger);

        let empty = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = std::process::Command::new("bash")
            .arg(harness::repo_root().join("scripts/jaeger.sh"))
            .args(["1", "3"])
            .arg(dir.path())
            .env("VERDICT_JAEGER_UI", empty.path())
            .output()
            .expect("run scripts/jaeger.sh");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("VERDICT_JAEGER_UI=") && stderr.contains("no index.html"),
            "{stderr}"
        );

        let jaeger = Jaeger::start_with(&[("VERDICT_JAEGER_UI", "none")]).await;
        let (status, page) = jaeger.page("/").await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains(verdict_cli::stack::JAEGER_WITHOUT_UI),
            "the placeholder `verdict stack up` recognises: {page}"
        );
    });
}

/// The metric names in `text` (`verdict_…`, not part of a longer word such as a topic name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("verdict_") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

/// Whether an exposition declares `name`: a counter's `_total`, a histogram's `_bucket`,
/// `_sum` and `_count` are samples of the family its `# TYPE` line names.
fn declares(exposition: &str, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    exposition.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .is_some_and(|t| t.split(' ').next() == Some(family))
    })
}

#[test]
fn every_metric_the_readme_and_the_dashboard_name_is_exported() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let mut models =
            ServiceProcess::spawn::<model_server::Spec>(&local_deployment(None), |_| {});
        models.wait_ready(Duration::from_secs(60)).await;
        let d = deployment(&stack, &topology, Some(models.http_port));
        let mut fraud = ServiceProcess::spawn::<fraud_detector::Spec>(&d, |s| {
            quick(s);
            // librdkafka's statistics every second rather than every 15.
            s.kafka
                .properties
                .insert("statistics.interval.ms".into(), "1000".into());
        });
        // The model calls and their cost are the document-analyzer's (a priced model); every
        // tenant is past a soft spend limit of $0, which only counts and notes it.
        let mut docs = ServiceProcess::spawn::<document_analyzer::Spec>(&d, |s| {
            quick(s);
            s.service.budgets.default = Some(Cap {
                soft_usd: Some(0.0),
                ..Cap::default()
            });
            s.pricing = PriceTable::new([(
                "all-minilm-l6-v2".to_string(),
                Price {
                    per_1k_input_tokens: 0.02,
                    ..Price::default()
                },
            )]);
        });
        let mut gw = gateway(&d, &topology, "");
        for svc in [&mut gw, &mut fraud, &mut docs] {
            svc.wait_ready(Duration::from_secs(60)).await;
        }
        submit_and_wait(gw.http_port, "/v1/transactions", transaction()).await;
        let doc = json!({"document_id": "metered-1", "text": "Invoice 2041: 3 licences, due in 30 days."});
        submit_and_wait(gw.http_port, "/v1/documents", doc).await;
        let mut late = transaction();
        late["occurred_at"] = json!(verdict_runtime::now_ms() + 3_600_000);
        assert_eq!(submit(gw.http_port, "/v1/transactions", &late).await.0, 202);
        fraud
            .wait_metric(
                "verdict_kafka_broker_rtt_seconds",
                "",
                |v| v > 0.0,
                Duration::from_secs(30),
                "librdkafka's statistics",
            )
            .await;
        fraud
            .wait_metric(
                "verdict_dead_letters_total",
                "",
                |v| v >= 1.0,
                Duration::from_secs(30),
                "the late transaction's dead letter",
            )
            .await;

        let read = |url: String| async move {
            reqwest::get(url)
                .await
                .expect("/metrics answers")
                .text()
                .await
                .expect("text")
        };
        let exposition = [
            read(format!("http://127.0.0.1:{}/metrics", fraud.admin_port)).await,
            read(format!("http://127.0.0.1:{}/metrics", docs.admin_port)).await,
            read(format!("http://127.0.0.1:{}/metrics", gw.admin_port)).await,
            read(format!("{}/metrics", stack.registry_url())).await,
        ]
        .concat();
        let readme =
            std::fs::read_to_string(harness::repo_root().join("README.md")).expect("the README");
        let dashboard = std::fs::read_to_string(
            harness::repo_root().join("services/runtime/grafana/services.json"),
        )
        .expect("the dashboard");
        let dash: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
        assert_eq!(dash["uid"], "verdict-services");
        let named: BTreeSet<String> = metric_names(&readme)
            .into_iter()
            .chain(metric_names(&dashboard))
            .collect();
        let missing: Vec<&String> = named.iter().filter(|n| !declares(&exposition, n)).collect();
        assert!(
            missing.is_empty(),
            "named but not exported: {missing:?}\n{exposition}"
        );
        assert!(named.len() >= 25, "{named:?}");
        // The librdkafka ones carry numbers, not only their declaration.
        for name in [
            "verdict_kafka_broker_rtt_seconds",
            "verdict_kafka_client_queue_messages",
            "verdict_kafka_consumer_fetch_lag_records",
            "verdict_model_calls_total",
            "verdict_inference_cost_total",
        ] {
            assert!(
                exposition
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))),
                "{name} has samples:\n{exposition}"
            );
        }
        for svc in [&mut gw, &mut fraud, &mut docs, &mut models] {
            svc.stop_cleanly();
        }
    });
}
