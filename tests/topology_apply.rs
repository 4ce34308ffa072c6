//! `verdict topology apply` against a real broker and registry: creates, is
//! idempotent, reports drift without changing it, applies nothing when a schema is
//! incompatible, and fails clearly on bad input.

use std::process::Command;
use std::time::Duration;

use harness::{Http, Stack, bin, free_port, repo_root, run, run_command};
use verdict_cli::topology_cmd;
use verdict_runtime::kafka::TopicSpec;
use verdict_runtime::registry::RegistryClient;
use verdict_runtime::topology::Topology;

fn topology_file() -> std::path::PathBuf {
    repo_root().join("topology/topology.toml")
}

/// The names of this test's namespaced topology.
fn names(t: &harness::Topology, topics: &[&str]) -> Vec<String> {
    topics.iter().map(|name| t.topic(name)).collect()
}

#[test]
fn apply_creates_registers_and_is_idempotent() {
    run(120, async {
        let stack = Stack::start().await;
        let file = harness::Topology::new(&stack, None);
        let kafka = stack.broker.kafka();
        let registry = RegistryClient::new(stack.registry_url()).expect("client");
        let declared = Topology::load(&file, None).expect("valid topology");

        let first = topology_cmd::apply(&file, None, &kafka, &registry)
            .await
            .expect("apply");
        assert_eq!(first.created.len(), declared.topics.len(), "{first:?}");
        assert!(first.drift.is_empty(), "{first:?}");
        let with_schema = declared
            .topics
            .values()
            .filter(|t| t.value_schema.is_some())
            .count();
        assert_eq!(first.schemas.len(), with_schema);

        let actual = kafka.topic_partitions().await.expect("metadata");
        for (name, topic) in &declared.topics {
            assert_eq!(
                actual.get(name).copied(),
                Some(topic.spec.partitions as usize),
                "{name}"
            );
        }
        let subjects = registry.subjects().await.expect("subjects");
        let subject = format!("{}-value", file.topic("transactions"));
        assert!(subjects.contains(&subject), "{subjects:?}");

        let second = topology_cmd::apply(&file, None, &kafka, &registry)
            .await
            .expect("apply again");
        assert!(second.created.is_empty(), "{second:?}");
        assert!(second.drift.is_empty(), "{second:?}");
        assert_eq!(second.unchanged.len(), declared.topics.len());
        assert_eq!(second.schemas, first.schemas, "same subjects, same ids");
        let versions = Http::new(stack.registry_url())
            .get(&format!("/subjects/{subject}/versions"))
            .await;
        assert_eq!(
            versions.body,
            serde_json::json!([1]),
            "no new versions on re-apply"
        );
    });
}

#[test]
fn drift_is_reported_and_left_alone() {
    run(120, async {
        let stack = Stack::start().await;
        let file = harness::Topology::new(&stack, None);
        let [transactions, audit, decisions] =
            <[String; 3]>::try_from(names(&file, &["transactions", "audit", "fraud-decisions"]))
                .expect("three");
        let kafka = stack.broker.kafka();
        kafka
            .create_topics(&[
                TopicSpec {
                    name: transactions.clone(),
                    partitions: 2,
                    replication_factor: 1,
                    retention_ms: None,
                    cleanup_policy: "delete".into(),
                },
                TopicSpec {
                    name: audit.clone(),
                    partitions: 6,
                    replication_factor: 1,
                    retention_ms: Some(1000),
                    cleanup_policy: "compact".into(),
                },
            ])
            .await
            .expect("pre-existing topic");
        let registry = RegistryClient::new(stack.registry_url()).expect("client");
        let report = topology_cmd::apply(&file, None, &kafka, &registry)
            .await
            .expect("apply");
        assert!(
            report
                .drift
                .iter()
                .any(|d| *d == format!("{transactions}: partitions declared 6, actual 2")),
            "{:?}",
            report.drift
        );
        assert!(
            report
                .drift
                .iter()
                .any(|d| *d == format!("{audit}: retention.ms declared -1, actual 1000")),
            "{:?}",
            report.drift
        );
        assert!(
            report
                .drift
                .iter()
                .any(|d| *d == format!("{audit}: cleanup.policy declared delete, actual compact")),
            "{:?}",
            report.drift
        );
        assert!(!report.created.contains(&transactions));
        assert!(
            report.created.contains(&decisions),
            "missing topics are still created"
        );
        assert_eq!(
            kafka
                .topic_partitions()
                .await
                .expect("md")
                .get(&transactions),
            Some(&2),
            "not changed"
        );

        // The CLI exits 3 with --fail-on-drift.
        let out = tokio::task::spawn_blocking({
            let (b, r) = (stack.broker.bootstrap(), stack.registry_url());
            let file_path = file.to_path_buf();
            move || {
                run_command(
                    Command::new(bin("verdict"))
                        .args([
                            "topology",
                            "apply",
                            "--fail-on-drift",
                            "--bootstrap-servers",
                            &b,
                            "--registry-url",
                            &r,
                        ])
                        .arg("--file")
                        .arg(&*file_path),
                    Duration::from_secs(60),
                )
            }
        })
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
            "DRIFT     {transactions}: partitions declared 6, actual 2"
        )));
    });
}

#[test]
fn incompatible_schema_applies_nothing() {
    run(120, async {
        let stack = Stack::start().await;
        let file = harness::Topology::new(&stack, None);
        let (transactions, audit) = (file.topic("transactions"), file.topic("audit"));
        let subject = format!("{transactions}-value");
        let http = Http::new(stack.registry_url());
        // An older, unrelated transactions-value that the file's schema cannot read.
        let old = r#"{"type":"record","name":"TransactionEvent","namespace":"dev.verdict.v1","fields":[{"name":"legacy","type":"string"}]}"#;
        assert_eq!(
            http.post(
                &format!("/subjects/{subject}/versions"),
                serde_json::json!({"schema": old})
            )
            .await
            .status,
            200
        );

        let kafka = stack.broker.kafka();
        let registry = RegistryClient::new(stack.registry_url()).expect("client");
        let err = topology_cmd::apply(&file, None, &kafka, &registry)
            .await
            .expect_err("incompatible");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "transaction_event.avsc is not compatible with the registered {subject}"
            )),
            "{text}"
        );
        assert!(text.contains("nothing was applied"), "{text}");
        let topics = kafka.topic_partitions().await.expect("md");
        assert!(
            !topics.contains_key(&transactions) && !topics.contains_key(&audit),
            "no topic created: {topics:?}"
        );
        assert_eq!(
            http.get("/subjects").await.body,
            serde_json::json!([subject]),
            "nothing registered"
        );
    });
}

#[test]
fn bad_file_and_unreachable_broker_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("topology.toml");
    std::fs::write(
        &bad,
        "[topics.in]\npartitions = 0\n\n[services.s]\ninput = \"in\"\nconsumer_group = \"g\"\ndead_letter_topic = \"missing\"\nstages = [\"a\"]\n",
    )
    .expect("write");
    let out = run_command(
        Command::new(bin("verdict"))
            .args(["topology", "check", "--file"])
            .arg(&bad)
            .arg("--schemas")
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2: `topics.in.partitions`: must be between 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 7: `services.s.dead_letter_topic`: topic `missing` is not declared"),
        "{stderr}"
    );

    let ok = run_command(
        Command::new(bin("verdict"))
            .args(["topology", "check", "--file"])
            .arg(topology_file()),
        Duration::from_secs(30),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let port = free_port();
    let out = run_command(
        Command::new(bin("verdict"))
            .args([
                "topology",
                "apply",
                "--bootstrap-servers",
                &format!("127.0.0.1:{port}"),
                "--registry-url",
                "http://127.0.0.1:9",
            ])
            .arg("--file")
            .arg(topology_file()),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Kafka at 127.0.0.1:{port}")),
        "{stderr}"
    );
}
