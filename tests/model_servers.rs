//! verdict's inference layer against a model server nobody here wrote: MLServer
//! (PyPI `mlserver` + `mlserver-sklearn`) serving the fraud model over KServe v2.

use std::process::{Child, Command};
use std::time::Duration;

use harness::{free_port, repo_root, run};
use verdict_cli::stack::spawn_logged;
use verdict_runtime::inference::chain::Chain;
use verdict_runtime::inference::kserve::KServeClient;
use verdict_runtime::inference::resilience::{CircuitState, Guarded, ProviderSettings};
use verdict_runtime::inference::{FnProvider, ModelId, Provider};
use verdict_runtime::models::LogisticModel;

/// `scripts/mlserver.sh` on two free loopback ports; killed by pid on drop.
struct MlServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    http: u16,
    grpc: u16,
}

impl MlServer {
    async fn start() -> Self {
        let mut s = Self {
            child: None,
            dir: tempfile::tempdir().expect("dir"),
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
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/mlserver.sh"))
            .arg(self.dir.path().join("fraud"))
            .arg(self.http.to_string())
            .arg(self.grpc.to_string());
        let child = spawn_logged(cmd, &self.dir.path().join("mlserver.log"), false)
            .expect("start mlserver");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = client
                .get(format!("{}/v2/health/ready", self.url()))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mlserver exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "mlserver not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mlserver.log")).unwrap_or_default()
    }

    /// SIGKILL by pid: the server vanishes mid-stream.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.kill();
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
