//! verdict's inference layer against a model server nobody here wrote: MLServer
//! (PyPI `mlserver` + `mlserver-sklearn`) serving the fraud model over KServe v2.

use std::process::Command;
use std::time::Duration;

use harness::{Http, ScriptServer, free_port, repo_root, run};
use verdict_runtime::inference::chain::Chain;
use verdict_runtime::inference::kserve::KServeClient;
use verdict_runtime::inference::resilience::{CircuitState, Guarded, ProviderSettings};
use verdict_runtime::inference::{FnProvider, ModelId, Provider};
use verdict_runtime::models::LogisticModel;

/// `scripts/mlserver.sh` on two free loopback ports; killed by pid on drop.
struct MlServer {
    server: ScriptServer,
    http: u16,
    grpc: u16,
}

impl MlServer {
    async fn start() -> Self {
        let mut s = Self {
            server: ScriptServer::new("mlserver"),
            http: free_port(),
            grpc: free_port(),
        };
        s.spawn().await;
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    async fn spawn(&mut self) {
        let args = [
            self.server.dir.path().join("fraud").display().to_string(),
            self.http.to_string(),
            self.grpc.to_string(),
        ];
        let health = format!("{}/v2/health/ready", self.url());
        self.server
            .spawn(&args, &health, Duration::from_secs(60))
            .await;
    }

    fn kill(&mut self) {
        self.server.kill();
    }
}

fn model() -> LogisticModel {
    LogisticModel::load(&repo_root().join("models/fraud/model.json")).expect("model")
}

fn holdout_inputs(model: &LogisticModel) -> Vec<verdict_runtime::models::ModelInput> {
    let text =
        std::fs::read_to_string(repo_root().join("models/fraud/holdout.json")).expect("holdout");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    doc["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| model.input_from_json(&r["input"]))
        .collect()
}

#[test]
fn kserve_client_gets_the_in_process_scores_from_mlserver() {
    run(120, async {
        let server = MlServer::start().await;
        let model = model();
        let client =
            KServeClient::new(&server.url(), "fraud", "1.0.0", "predict_proba").expect("client");
        assert!(client.ready().await);
        let inputs = holdout_inputs(&model);
        let rows: Vec<Vec<f64>> = inputs.iter().map(|i| model.raw_row(i)).collect();
        let served = client.infer(&rows).await.expect("infer");
        assert_eq!(served.len(), rows.len());
        let worst = inputs
            .iter()
            .zip(&served)
            .map(|(input, out)| (model.score(input).probability - out[1]).abs())
            .fold(0.0_f64, f64::max);
        assert!(
            worst < 1e-9,
            "max |in-process - MLServer| = {worst} over {} rows",
            rows.len()
        );
    });
}

#[test]
fn chain_falls_back_when_the_server_dies_and_recovers_through_the_half_open_probe() {
    run(180, async {
        let mut server = MlServer::start().await;
        let model = model();
        let settings = ProviderSettings {
            timeout_ms: 1_000,
            max_retries: 0,
            failure_threshold: 3,
            open_ms: 1_500,
            ..ProviderSettings::default()
        };
        let kserve =
            KServeClient::new(&server.url(), "fraud", "1.0.0", "predict_proba").expect("client");
        // Rules: decline-level risk above the amount limit, neutral otherwise.
        let rules = FnProvider::new(
            ModelId::new("rules", "amount-limit", "1"),
            |row: &Vec<f64>| {
                if row[0] > 10_000.0 {
                    vec![0.0, 1.0]
                } else {
                    vec![0.5, 0.5]
                }
            },
        );
        let chain = Chain::new(vec![
            Guarded::new(Box::new(kserve), settings.clone()),
            Guarded::new(Box::new(rules), settings),
        ]);
        let row = model.raw_row(&holdout_inputs(&model)[0]);

        let a = chain
            .infer(std::slice::from_ref(&row))
            .await
            .expect("answer");
        assert!(!a.degraded);
        assert_eq!(a.model, ModelId::new("kserve", "fraud", "1.0.0"));

        server.kill();
        for i in 0..6 {
            let a = chain
                .infer(std::slice::from_ref(&row))
                .await
                .expect("fallback answers");
            assert!(a.degraded, "call {i} is degraded");
            assert_eq!(a.model.provider, "rules");
        }
        assert_eq!(
            chain.providers()[0].breaker.state(),
            CircuitState::Open,
            "opened within 3 failures"
        );
        let open = chain
            .infer(std::slice::from_ref(&row))
            .await
            .expect("answer");
        assert!(
            open.fallbacks[0].contains("circuit open"),
            "fails fast while open: {:?}",
            open.fallbacks
        );

        server.spawn().await;
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        let a = chain
            .infer(std::slice::from_ref(&row))
            .await
            .expect("answer");
        assert!(
            !a.degraded,
            "the half-open probe reached the restarted server: {:?}",
            a.fallbacks
        );
        assert_eq!(chain.providers()[0].breaker.state(), CircuitState::Closed);
        assert!(
            (a.outputs[0][1] - model.score(&holdout_inputs(&model)[0]).probability).abs() < 1e-9
        );
    });
}

async fn model_server() -> harness::ServiceProcess {
    let mut ms = harness::ServiceProcess::spawn::<model_server::Spec>(
        &harness::local_deployment(None),
        |_| {},
    );
    ms.wait_ready(Duration::from_secs(120)).await;
    ms
}

#[test]
fn embeddings_match_an_independent_numpy_reference() {
    run(240, async {
        let ms = model_server().await;
        let long = "The quarterly report covers revenue, costs, staffing and the outlook for the next year. ".repeat(20);
        let sentences = vec![
            "Please pay invoice 2024-17 of 1,250.00 EUR by Friday.".to_string(),
            "My order never arrived and nobody answers the phone!".to_string(),
            "hello".to_string(),
            "Der Vertrag beginnt am 1. März und läuft zwölf Monate.".to_string(),
            long,
        ];
        let url = format!("http://127.0.0.1:{}", ms.http_port);
        let http = Http::json(&url);
        let reply = http
            .post(
                "/v1/embeddings",
                serde_json::json!({"model": "all-minilm-l6-v2", "input": sentences}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let resp = reply.body;
        let ours: Vec<Vec<f64>> = resp["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                d["embedding"]
                    .as_array()
                    .expect("vector")
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            })
            .collect();
        assert_eq!(ours.len(), 5);
        assert!(ours.iter().all(|v| v.len() == 384));

        let input = serde_json::json!({"sentences": sentences, "max_length": 256}).to_string();
        let reference = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(repo_root().join(".venv/bin/python"))
                .arg(repo_root().join("tests/python/embed_reference.py"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("python");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("output");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("reference json")
        })
        .await
        .expect("join");
        let theirs: Vec<Vec<f64>> = reference["embeddings"]
            .as_array()
            .expect("embeddings")
            .iter()
            .map(|v| {
                v.as_array()
                    .expect("vector")
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            })
            .collect();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0_f64, f64::max);
            assert!(worst < 1e-4, "sentence {i}: max |candle - numpy| = {worst}");
        }
        let tokens: u64 = reference["token_counts"]
            .as_array()
            .expect("counts")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .sum();
        assert_eq!(
            resp["usage"]["prompt_tokens"].as_u64(),
            Some(tokens),
            "same tokenization, truncated at 256 not 128"
        );

        // The same model over KServe v2 gives the same vectors.
        let v2 = http
            .post(
                "/v2/models/all-minilm-l6-v2/infer",
                serde_json::json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentences[0]]}]}),
            )
            .await
            .body;
        let first: Vec<f64> = v2["outputs"][0]["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        assert_eq!(v2["outputs"][0]["shape"], serde_json::json!([1, 384]));
        assert!(
            first
                .iter()
                .zip(&ours[0])
                .all(|(x, y)| (x - y).abs() < 1e-5)
        );
    });
}

#[test]
fn sentiment_head_reproduces_scikit_learn_on_held_out_snippets() {
    run(240, async {
        let ms = model_server().await;
        let url = format!("http://127.0.0.1:{}", ms.http_port);
        let holdout: serde_json::Value = serde_json::from_slice(
            &std::fs::read(repo_root().join("models/sentiment/holdout.json")).expect("holdout"),
        )
        .expect("json");
        let rows = holdout["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 100);
        let texts: Vec<&str> = rows.iter().filter_map(|r| r["text"].as_str()).collect();
        let http = Http::json(&url);
        let reply = http
            .post(
                "/v2/models/sentiment/infer",
                serde_json::json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let resp = reply.body;
        assert_eq!(resp["model_version"], "1.0.0");
        let labels = resp["outputs"][0]["data"].as_array().expect("labels");
        let probs: Vec<f64> = resp["outputs"][1]["data"]
            .as_array()
            .expect("probabilities")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        assert_eq!(probs.len(), 200, "[negative, positive] per text");
        let mut agree = 0;
        for (i, row) in rows.iter().enumerate() {
            let sklearn = row["p_positive"].as_f64().expect("p");
            let served = probs[2 * i + 1];
            assert!(
                (served - sklearn).abs() < 1e-3,
                "row {i}: served {served} vs scikit-learn {sklearn}"
            );
            assert!((probs[2 * i] + served - 1.0).abs() < 1e-6);
            let expected = if sklearn >= 0.5 {
                "positive"
            } else {
                "negative"
            };
            assert_eq!(labels[i], expected, "row {i}");
            agree += usize::from(row["label"] == labels[i]);
        }
        // The head is a real classifier, not a constant: on these 100 held-out snippets it
        // agrees with the human label about as often as on the whole test split (76 %).
        assert!(
            (65..=90).contains(&agree),
            "{agree}/100 agree with the labels"
        );

        let meta = http.get("/v2/models/sentiment").await.body;
        let head = std::fs::read(repo_root().join("models/sentiment/head.json")).expect("head");
        assert_eq!(meta["platform"], "verdict-logistic-head");
        assert_eq!(
            meta["parameters"]["sha256"].as_str(),
            Some(verdict_runtime::models::sha256_hex(&head).as_str())
        );
        assert_eq!(
            meta["parameters"]["labels"],
            serde_json::json!(["negative", "positive"])
        );
    });
}

#[test]
fn model_server_serves_the_fraud_model_and_names_bad_requests() {
    run(240, async {
        let ms = model_server().await;
        let url = format!("http://127.0.0.1:{}", ms.http_port);
        let model = model();
        let client = KServeClient::new(&url, "fraud", "1.0.0", "predict_proba").expect("client");
        assert!(client.ready().await);
        let inputs = holdout_inputs(&model);
        let rows: Vec<Vec<f64>> = inputs.iter().map(|i| model.raw_row(i)).collect();
        let served = client.infer(&rows).await.expect("infer");
        for (input, out) in inputs.iter().zip(&served) {
            assert!((model.score(input).probability - out[1]).abs() < 1e-12);
        }
        let http = Http::json(&url);
        let meta = http.get("/v2/models/fraud").await.body;
        assert_eq!(
            meta["parameters"]["sha256"].as_str(),
            Some(model.sha256.as_str()),
            "metadata carries the file checksum"
        );
        let cases = [
            (
                "/v1/embeddings",
                serde_json::json!({"model": "gpt-4", "input": "x"}),
                404,
                "does not exist",
            ),
            (
                "/v1/embeddings",
                serde_json::json!({"model": "all-minilm-l6-v2", "input": []}),
                400,
                "non-empty",
            ),
            (
                "/v2/models/fraud/infer",
                serde_json::json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}),
                400,
                "9 columns",
            ),
            (
                "/v2/models/nope/infer",
                serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}),
                404,
                "not found",
            ),
            (
                "/v2/models/all-minilm-l6-v2/infer",
                serde_json::json!({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}),
                400,
                "does not match",
            ),
        ];
        for (path, body, status, needle) in cases {
            let r = http.post(path, body.clone()).await;
            assert_eq!(r.status, status, "{path} {body}");
            let text = r.body.to_string();
            assert!(text.contains(needle), "{path}: {text}");
        }
    });
}

/// The fraud-detector scoring through the model as MLServer serves it (`service.remote_model`):
/// decisions name the served model and carry its score, which equals the in-process model's;
/// with the server gone, the in-process model scores and the decisions say `degraded`.
#[test]
fn the_fraud_detector_scores_through_mlserver_and_falls_back() {
    use harness::{Stack, apply_topology, read_topic};
    use verdict_cli::records::{AvroProducer, sample_transaction};
    run(300, async {
        let mut mlserver = MlServer::start().await;
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let url = mlserver.url();
        let mut svc = harness::remote_scored_fraud_detector(
            &stack,
            &topology,
            url,
            ProviderSettings {
                timeout_ms: 500,
                max_retries: 0,
                ..ProviderSettings::default()
            },
        )
        .await;
        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        let mut rng = rand::rng();
        let input = topology.topic("transactions");
        let mut send = async |n: usize| {
            for _ in 0..n {
                let (account, v) = sample_transaction(&mut rng, "remote");
                producer.send(&input, &account, &v).await.expect("produce");
            }
        };
        let read = async |n: usize| {
            read_topic(
                &stack.broker.kafka(),
                &stack.registry_url(),
                &topology.topic("fraud-decisions"),
                Duration::from_secs(60),
                |rs| rs.len() >= n,
            )
            .await
        };
        send(10).await;
        let served = read(10).await;
        for d in &served {
            let v = d.value.as_ref().expect("decoded");
            assert_eq!(v["model"]["provider"], "kserve-v2", "{v}");
            assert_eq!(v["degraded"], false);
        }
        mlserver.kill();
        send(5).await;
        let all = read(15).await;
        let fallback: Vec<&serde_json::Value> = all
            .iter()
            .filter_map(|d| d.value.as_ref())
            .filter(|v| v["degraded"] == true)
            .collect();
        assert_eq!(fallback.len(), 5, "the 5 sent after the server went away");
        for v in fallback {
            assert_eq!(v["model"]["provider"], "in-process", "{v}");
            let reasons = v["reasons"].to_string();
            assert!(reasons.contains("degraded"), "{reasons}");
        }
        svc.stop_cleanly();
    });
}

/// Issue 21 item 4: models/fraud/model.onnx is what models/fraud/export_onnx.py (the onnx
/// package's checker included) writes from model.json today, byte for byte; a change to the
/// model that forgot the ONNX file fails here.
#[test]
fn the_committed_onnx_model_is_the_export_of_model_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("model.onnx");
    let run = harness::run_command(
        Command::new(repo_root().join(".venv/bin/python"))
            .arg(repo_root().join("models/fraud/export_onnx.py"))
            .arg(&out),
        Duration::from_secs(60),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let exported = std::fs::read(&out).expect("exported");
    let committed = std::fs::read(repo_root().join("models/fraud/model.onnx")).expect("committed");
    assert!(
        exported == committed,
        "models/fraud/model.onnx differs from a fresh export: run .venv/bin/python models/fraud/export_onnx.py models/fraud/model.onnx"
    );
}
