//! The registry with clients nobody here wrote: `schema_registry_converter` (Rust)
//! and Confluent's Python client, plus Avro records through the real broker.

use std::process::Command;
use std::time::Duration;

use harness::{Http, Stack, repo_root, run, run_command, unique};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use verdict_cli::records::{AvroProducer, read_back, sample_transaction};

fn transaction_schema() -> String {
    std::fs::read_to_string(repo_root().join("schemas/transaction_event.avsc"))
        .expect("schema file")
}

#[test]
fn schema_registry_converter_round_trip() {
    run(90, async {
        let stack = Stack::start().await;
        let topic = unique("tx");
        let text = transaction_schema();
        let schema = apache_avro::Schema::parse_str(&text).expect("parse");
        let supplied = SuppliedSchema::new(
            Some("dev.verdict.v1.TransactionEvent".into()),
            SchemaType::Avro,
            text.clone(),
        );
        // The converter registers the schema itself (TopicNameStrategyWithSchema).
        let encoder = AvroEncoder::new(SrSettings::new(stack.registry_url()));
        let strategy =
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.clone(), false, supplied);
        let (_, json) = sample_transaction(&mut rand::rng(), "tenant-a");
        let value = verdict_runtime::avro::from_json(&json, &schema).expect("fits schema");
        let bytes = encoder
            .encode_value(value.clone(), &strategy)
            .await
            .expect("encode");

        let latest = Http::new(stack.registry_url())
            .get(&format!("/subjects/{topic}-value/versions/latest"))
            .await;
        let id = latest.body["id"].as_u64().expect("registered");
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(
            u64::from(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])),
            id
        );

        // A fresh decoder has no cache: it fetches the schema by id over HTTP.
        let decoded = AvroDecoder::new(SrSettings::new(stack.registry_url()))
            .decode(Some(&bytes))
            .await
            .expect("decode");
        assert_eq!(decoded.value, value);
        assert_eq!(
            decoded.name.map(|n| n.fullname(None)),
            Some("dev.verdict.v1.TransactionEvent".to_string())
        );
    });
}

#[test]
fn avro_records_through_the_broker() {
    run(90, async {
        let stack = Stack::start().await;
        let topic = unique("transactions");
        let kafka = stack.broker.kafka();
        kafka
            .create_topics(&[verdict_runtime::kafka::TopicSpec {
                name: topic.clone(),
                partitions: 3,
                replication_factor: 1,
                retention_ms: None,
                cleanup_policy: "delete".into(),
            }])
            .await
            .expect("topic");
        let http = Http::new(stack.registry_url());
        let reg = http
            .post(
                &format!("/subjects/{topic}-value/versions"),
                serde_json::json!({"schema": transaction_schema()}),
            )
            .await;
        assert_eq!(reg.status, 200);

        let producer = AvroProducer::new(&kafka, stack.registry_url()).expect("producer");
        let mut rng = rand::rng();
        let mut sent = Vec::new();
        for _ in 0..20 {
            let (key, value) = sample_transaction(&mut rng, "tenant-b");
            sent.push(producer.send(&topic, &key, &value).await.expect("send"));
        }
        let positions: Vec<(i32, i64)> = sent.iter().map(|d| (d.partition, d.offset)).collect();
        let got = read_back(
            &kafka,
            &stack.registry_url(),
            &topic,
            &positions,
            Duration::from_secs(30),
        )
        .await
        .expect("read");
        sent.sort_by_key(|d| (d.partition, d.offset));
        assert_eq!(got.len(), sent.len(), "every record comes back");
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(
                g, s,
                "record at {}@{} comes back with its key and value",
                s.partition, s.offset
            );
        }
        let partitions: std::collections::BTreeSet<i32> = got.iter().map(|d| d.partition).collect();
        assert!(
            partitions.len() > 1,
            "keys spread over partitions: {partitions:?}"
        );

        // A value that does not fit the schema is refused before anything is sent.
        let err = producer
            .send(&topic, "k", &serde_json::json!({"amount": "lots"}))
            .await
            .expect_err("bad value");
        assert!(err.to_string().contains("does not fit"), "{err}");
    });
}

#[test]
fn confluent_python_client_round_trip() {
    run(120, async {
        let stack = Stack::start().await;
        python_round_trip(stack.registry_url(), &[]).await;
    });
}

/// Issue 19: Confluent's Python client, trusting the registry's CA (`ssl.ca.location`) over
/// HTTPS, signs in with `basic.auth.user.info` (as the admin: the script sets compatibility
/// levels); without credentials it is refused (401), as the read-only user it reads but may
/// not register (403).
#[test]
fn confluent_python_client_signs_in_to_an_authenticated_registry_over_tls() {
    run(120, async {
        let stack = Stack::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, ca) = stack.tls_registry(&dir.path().join("tls")).await;
        let user_info = |name: &str| {
            harness::REGISTRY_USERS
                .iter()
                .find(|(n, ..)| *n == name)
                .map(|(n, _, p)| format!("{n}:{p}"))
                .expect("a registry user")
        };
        let out = python_round_trip(
            registry.url(),
            &[
                ("BASIC_AUTH_USER_INFO", user_info("admin")),
                ("READ_ONLY_USER_INFO", user_info("reader")),
                ("SCHEMA_REGISTRY_CA", ca.display().to_string()),
            ],
        )
        .await;
        assert!(
            out.contains("a client without credentials is HTTP 401")
                && out.contains("registering as the read-only user is HTTP 403"),
            "{out}"
        );
        registry.stop().await;
    });
}

/// Runs tests/python/sr_client_roundtrip.py against `url` with `env`; its stdout.
async fn python_round_trip(url: String, env: &[(&str, String)]) -> String {
    let python = harness::python();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        run_command(
            Command::new(python)
                .arg(repo_root().join("tests/python/sr_client_roundtrip.py"))
                .env("SCHEMA_REGISTRY_URL", url)
                .env("SUBJECT_PREFIX", unique("py"))
                .envs(env),
            Duration::from_secs(90),
        )
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("python client round trip: OK"), "{stdout}");
    stdout
}
