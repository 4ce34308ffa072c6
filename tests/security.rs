//! verdict on a secured Apache Kafka: SASL_SSL (SCRAM-SHA-512) with a CA of the test's own,
//! ACLs enforced by the StandardAuthorizer and nothing allowed without one — the broker
//! `verdict stack up --secure` runs. Each service runs as its own principal with exactly the
//! ACLs `verdict topology acls` derives from the topology.

use std::time::Duration;

use harness::{
    Record, ServiceProcess, Stack, apply_topology, deployment, grant_acls, quick, read_topic, run,
    verdict, verdict_command,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use verdict_cli::records::{AvroProducer, sample_transaction};
use verdict_runtime::kafka::KafkaSettings;

type Fraud = fraud_detector::Spec;

fn event_id(r: &Record) -> Option<&str> {
    r.value.as_ref()?.get("event_id")?.as_str()
}

/// What `kafka` gets when it reads partition 0 of `topic` from the start: a record, or
/// TOPIC_AUTHORIZATION_FAILED. (The reader's throwaway group is refused too, which does not
/// stop it reading: that error is passed over.)
fn first_read(kafka: &KafkaSettings, topic: &str) -> Result<(), RDKafkaErrorCode> {
    let consumer: BaseConsumer = kafka.reader_config().create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => return Ok(()),
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::GroupAuthorizationFailed,
            ))) => {}
            Some(Err(KafkaError::MessageConsumption(code))) => return Err(code),
            Some(Err(e)) => panic!("unexpected error: {e}"),
            None => {}
        }
    }
    panic!("neither a record nor a refusal from {topic} within 20 s");
}

/// What the cluster's metadata says of `topic` to `kafka`: known, or the topic's error
/// (TOPIC_AUTHORIZATION_FAILED without DESCRIBE, which READ and WRITE imply).
fn described(kafka: &KafkaSettings, topic: &str) -> Result<(), RDKafkaErrorCode> {
    let consumer = kafka.metadata_consumer().expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .expect("metadata");
    match md.topics().first().and_then(|t| t.error()) {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

#[test]
fn the_fraud_detector_decides_on_sasl_ssl_with_only_the_acls_the_topology_gives_it() {
    run(300, async {
        let stack = Stack::start_own_secure(&["fraud-detector", "intruder"]).await;
        let topology = apply_topology(&stack, None).await;
        let secrets = stack.broker.secrets().clone();
        // The ACLs as derived, added with Kafka's own kafka-acls by the admin: exactly those.
        grant_acls(&stack, &topology, "fraud-detector");
        let out = check_acls(&stack, &topology);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut svc = ServiceProcess::spawn::<Fraud>(&deployment(&stack, &topology, None), |s| {
            quick(s);
            s.kafka.security = secrets.security("fraud-detector");
        });
        svc.wait_ready(Duration::from_secs(60)).await;

        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        let (key, value) = sample_transaction(&mut rand::rng(), "acme");
        let id = value["event_id"].as_str().expect("id").to_string();
        producer
            .send(&topology.topic("transactions"), &key, &value)
            .await
            .expect("produce as admin");
        let decisions = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("fraud-decisions"),
            Duration::from_secs(90),
            |rs| rs.iter().any(|r| event_id(r) == Some(&id)),
        )
        .await;
        assert!(
            decisions.iter().any(|r| event_id(r) == Some(&id)),
            "decided on SASL_SSL as User:fraud-detector\n{}",
            svc.log()
        );

        // Another principal sees none of it: not the decisions, not the dead letters (not
        // even that they exist), not the group's offsets.
        let intruder = stack.broker.kafka_as("intruder");
        for topic in ["fraud-decisions", "transactions.dlq"] {
            assert_eq!(
                described(&intruder, &topology.topic(topic)),
                Err(RDKafkaErrorCode::TopicAuthorizationFailed),
                "{topic}"
            );
        }
        let props = tempfile::NamedTempFile::new().expect("file");
        std::fs::write(
            props.path(),
            secrets.java_properties("intruder").expect("props"),
        )
        .expect("write");
        let group = topology.group("verdict-fraud-detector");
        let out = harness::run_command(
            &mut verdict_command(
                &stack.broker.bootstrap(),
                &stack.registry_url(),
                &[
                    "--command-config",
                    &props.path().display().to_string(),
                    "groups",
                    "describe",
                    &group,
                ],
            ),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the intruder described {group}");
        assert!(stderr.contains("GroupAuthorizationFailed"), "{stderr}");
        // The service itself may not read what it only writes.
        let own = stack.broker.kafka_as("fraud-detector");
        assert_eq!(
            first_read(&own, &topology.topic("transactions.dlq")),
            Err(RDKafkaErrorCode::TopicAuthorizationFailed)
        );
        // Nothing it does on its own is refused (a reader in a group it may not describe was).
        let log = svc.log();
        assert!(!log.contains("AuthorizationFailed"), "{log}");
        svc.stop_cleanly();
    });
}

#[test]
fn a_service_missing_one_acl_fails_at_start_up_naming_the_topic_and_the_operation() {
    run(240, async {
        let stack = Stack::start_own_secure(&["fraud-detector"]).await;
        let topology = apply_topology(&stack, None).await;
        let secrets = stack.broker.secrets().clone();
        grant_acls(&stack, &topology, "fraud-detector");
        // One WRITE taken away: the audit topic.
        let audit = topology.topic("audit");
        let out = verdict(
            &stack,
            &[
                "kafka",
                "acls",
                "--remove",
                "--force",
                "--allow-principal",
                "User:fraud-detector",
                "--operation",
                "Write",
                "--topic",
                &audit,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // And one granted beyond need: reading its own dead letters.
        let dlq = topology.topic("transactions.dlq");
        let out = verdict(
            &stack,
            &[
                "kafka",
                "acls",
                "--add",
                "--allow-principal",
                "User:fraud-detector",
                "--operation",
                "Read",
                "--topic",
                &dlq,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `--check` sees both, and says it with exit status 3.
        let out = check_acls(&stack, &topology);
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains(&format!("MISSING User:fraud-detector Write Topic:{audit}")),
            "{said}"
        );
        assert!(
            said.contains(&format!("EXTRA   User:fraud-detector Read Topic:{dlq}")),
            "{said}"
        );

        let mut svc = ServiceProcess::spawn::<Fraud>(&deployment(&stack, &topology, None), |s| {
            quick(s);
            s.kafka.security = secrets.security("fraud-detector");
        });
        let status = svc.wait_exit(Duration::from_secs(60)).await;
        let log = svc.log();
        assert!(
            status.is_some_and(|s| !s.success()),
            "a service without WRITE on {audit} must stop at start-up, not run: {status:?}\n{log}"
        );
        assert!(
            log.contains(&format!("WRITE on topic {audit}")),
            "the log names the topic and the operation\n{log}"
        );
    });
}

/// `verdict topology acls --service fraud-detector --check` as the admin.
fn check_acls(stack: &Stack, topology: &harness::Topology) -> std::process::Output {
    let file = topology.display().to_string();
    verdict(
        stack,
        &[
            "topology",
            "acls",
            "--file",
            &file,
            "--service",
            "fraud-detector",
            "--check",
        ],
    )
}

/// `verdict groups list` with these client properties (none: a plaintext client).
fn groups_list(stack: &Stack, properties: Option<&str>) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().expect("file");
    let mut args = vec!["groups", "list"];
    let path = file.path().display().to_string();
    if let Some(p) = properties {
        std::fs::write(file.path(), p).expect("write");
        args.splice(0..0, ["--command-config", path.as_str()]);
    }
    let mut cmd = verdict_command(&stack.broker.bootstrap(), &stack.registry_url(), &args);
    let out = harness::run_command(&mut cmd, Duration::from_secs(60));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_password_an_unknown_ca_and_a_plaintext_client_are_told_what_is_wrong() {
    run(240, async {
        let stack = Stack::start_own_secure(&["fraud-detector"]).await;
        let secrets = stack.broker.secrets().clone();
        let good = secrets.java_properties("fraud-detector").expect("props");
        assert!(
            groups_list(&stack, Some(&good)).0,
            "the right settings work"
        );

        let password = secrets.password("fraud-detector").expect("password");
        let (ok, stderr) = groups_list(&stack, Some(&good.replace(&password, "not-it")));
        assert!(!ok);
        assert!(
            stderr.contains("refused the credentials") && stderr.contains("SCRAM-SHA-512"),
            "{stderr}"
        );
        assert!(!stderr.contains(&password), "no secret printed: {stderr}");

        // The system's CAs do not know this cluster's.
        let unknown_ca: String = good
            .lines()
            .filter(|l| !l.starts_with("ssl.truststore"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (ok, stderr) = groups_list(&stack, Some(&unknown_ca));
        assert!(!ok);
        assert!(
            stderr.contains("TLS") && stderr.contains("certificate verify failed"),
            "{stderr}"
        );

        let (ok, stderr) = groups_list(&stack, None);
        assert!(!ok);
        assert!(
            stderr.contains("security.protocol") && stderr.contains("--command-config"),
            "{stderr}"
        );
    });
}

/// The gateway on the secured cluster as `User:gateway`, with exactly the ACLs its crate
/// derives from the topology (`verdict topology acls --service gateway`): a submission is
/// produced, decided by the fraud-detector (as `User:fraud-detector`) and read back into the
/// job store, and `/v1/health` reads the pipeline's group, all without a refusal.
#[test]
fn the_gateway_serves_on_sasl_ssl_with_only_the_acls_derived_for_it() {
    use gateway::auth::{Scope, key_hash};
    use gateway::config::{ApiKey, Tier};
    const KEY: &str = "secured-gateway-key";
    run(300, async {
        let stack = Stack::start_own_secure(&["fraud-detector", "gateway"]).await;
        let topology = apply_topology(&stack, None).await;
        let secrets = stack.broker.secrets().clone();
        grant_acls(&stack, &topology, "fraud-detector");
        let resolutions = topology.topic("review-resolutions");
        let parsed =
            verdict_runtime::topology::Topology::load(&topology, None).expect("the topology");
        let acls = gateway::acls(&parsed, &resolutions, "User:gateway").expect("its ACLs");
        for args in verdict_runtime::acls::tool_commands(&acls) {
            let mut call = vec!["kafka", "acls"];
            call.extend(args.iter().map(String::as_str));
            let out = verdict(&stack, &call);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut fraud = ServiceProcess::spawn::<Fraud>(&deployment(&stack, &topology, None), |s| {
            quick(s);
            s.kafka.security = secrets.security("fraud-detector");
        });
        fraud.wait_ready(Duration::from_secs(60)).await;
        let mut gw =
            ServiceProcess::spawn::<gateway::Spec>(&deployment(&stack, &topology, None), |s| {
                s.kafka.security = secrets.security("gateway");
                s.gateway.resolutions_topic = resolutions.clone();
                s.gateway.adaptive.poll_interval_ms = 500;
                s.gateway.keys = vec![ApiKey {
                    id: "a".into(),
                    sha256: key_hash(KEY),
                    tenant: "acme".into(),
                    scopes: vec![Scope::TransactionsWrite, Scope::JobsRead],
                    revoked: false,
                    tier: Tier::Interactive,
                }];
            });
        gw.wait_ready(Duration::from_secs(60)).await;

        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", gw.http_port);
        let (_, mut tx) = sample_transaction(&mut rand::rng(), "ignored");
        let tx = tx.as_object_mut().expect("object");
        tx.remove("event_id");
        tx.remove("tenant_id");
        let decided = http
            .post(format!("{base}/v1/transactions?wait=20s"))
            .bearer_auth(KEY)
            .json(&tx)
            .send()
            .await
            .expect("submit");
        let status = decided.status();
        let job: serde_json::Value = decided.json().await.expect("job");
        assert_eq!(status, 200, "decided within the wait: {job}\n{}", gw.log());
        assert!(job["decision"]["outcome"].is_string(), "{job}");

        // The pipeline's lag comes from its group, which the gateway may describe.
        let mut health = serde_json::Value::Null;
        for _ in 0..40 {
            health = http
                .get(format!("{base}/v1/health"))
                .bearer_auth(KEY)
                .send()
                .await
                .expect("health")
                .json()
                .await
                .expect("JSON");
            if health["services"]["pipelines"]["fraud-detector"]["members"].as_u64() == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(health["services"]["kafka"]["status"], "ok", "{health}");
        assert_eq!(
            health["services"]["pipelines"]["fraud-detector"]["members"], 1,
            "{health}"
        );
        for (name, log) in [("gateway", gw.log()), ("fraud-detector", fraud.log())] {
            assert!(!log.contains("AuthorizationFailed"), "{name}: {log}");
        }
    });
}
