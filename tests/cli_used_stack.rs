//! The operations CLI as a user meets it on a stack that has been used: history on the
//! topics, groups that do not exist, offsets past the end, processes stopped with a signal.
//! Each test here began as a report of a command that did something other than the README
//! says (issue 17).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{
    Stack, apply_topology, committed, end_offsets, repo_root, run, verdict, write_history,
};
use serde_json::Value;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts `verdict ARGS` exits with `code` and says each of `says`.
fn assert_exit(stack: &Stack, args: &[&str], code: i32, says: &[&str]) -> String {
    let out = verdict(stack, args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(code), "verdict {args:?}: {all}");
    for s in says {
        assert!(all.contains(s), "verdict {args:?} should say {s:?}: {all}");
    }
    all
}

/// `consume -G` following a topic is stopped the only way it can be, with a signal; what it
/// printed is committed then (as kcat and Kafka's console consumer do), so the same group
/// continues after it. Before: nothing was committed unless 1,000 records went by.
#[test]
fn consume_stopped_by_a_signal_commits_what_it_printed() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        write_history(&stack, &topic, 40).await;
        let ends = end_offsets(&stack.broker.kafka(), &topic).await;
        for (i, signal) in ["TERM", "INT"].into_iter().enumerate() {
            let group = topology.group(&format!("reader-{i}"));
            let mut child = harness::verdict_command(
                &stack.broker.bootstrap(),
                &stack.registry_url(),
                &["consume", &topic, "-G", &group],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn verdict consume");
            let stdout = child.stdout.take().expect("stdout");
            let printed = tokio::task::spawn_blocking(move || {
                BufReader::new(stdout)
                    .lines()
                    .take(40)
                    .map_while(Result::ok)
                    .count()
            })
            .await
            .expect("reader");
            assert_eq!(printed, 40, "consume printed the history");
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let started = Instant::now();
            let exit = loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "consume did not stop on SIG{signal}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(exit.success(), "SIG{signal}: {exit:?}");
            let with_records: std::collections::BTreeMap<i32, i64> = ends
                .iter()
                .filter(|(_, e)| **e > 0)
                .map(|(p, e)| (*p, *e))
                .collect();
            assert_eq!(
                committed(&stack.broker.kafka(), &group, &topic).await,
                with_records,
                "SIG{signal}: the group committed what was printed"
            );
            let again = verdict(&stack, &["consume", &topic, "-G", &group, "-e"]);
            assert!(again.status.success(), "{}", text(&again));
            assert_eq!(
                again.stdout.len(),
                0,
                "the group continues where it stopped"
            );
        }
    });
}

/// `dlq show` of an offset the partition does not hold is refused (exit 2), naming what the
/// partition holds. Before: it showed the record at offset 0 and exited 0.
#[test]
fn dlq_show_refuses_an_offset_the_partition_does_not_hold() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        write_history(&stack, &topic, 10).await;
        let ends = end_offsets(&stack.broker.kafka(), &topic).await;
        let (p, end) = ends
            .iter()
            .find(|(_, e)| **e > 0)
            .expect("a partition with records");
        let (p, end) = (p.to_string(), end.to_string());
        assert_exit(
            &stack,
            &["dlq", "show", &topic, "-p", &p, "-o", "42"],
            2,
            &[
                "offset 42",
                &format!("holds offsets 0 to {}", end.parse::<i64>().unwrap_or(0) - 1),
            ],
        );
        assert_exit(
            &stack,
            &["dlq", "show", &topic, "-p", "99", "-o", "0"],
            2,
            &["no partition 99"],
        );
        let shown = verdict(&stack, &["dlq", "show", &topic, "-p", &p, "-o", "0"]);
        assert!(shown.status.success(), "{}", text(&shown));
        let v: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
        assert_eq!(v["offset"], 0);
    });
}

/// A group name that does not exist is an error (as `kafka-consumer-groups` says "does not
/// exist"), not a healthy-looking "Dead, 0 members, lag 0" table.
#[test]
fn groups_describe_of_a_group_that_does_not_exist_says_so() {
    run(120, async {
        let stack = Stack::start().await;
        assert_exit(
            &stack,
            &["groups", "describe", "fraud-detector"],
            2,
            &["group fraud-detector does not exist", "verdict groups list"],
        );
        assert_exit(
            &stack,
            &["replay", "fraud-detector", "--to-earliest", "--all-topics"],
            2,
            &["group fraud-detector does not exist"],
        );
    });
}

/// `verdict kafka` puts `--bootstrap-server` where every tool takes it, before a
/// subcommand (metadata-quorum), and runs `configs` (its class moved in Kafka 4).
#[test]
fn kafka_tools_run_as_the_readme_shows() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        let out = assert_exit(
            &stack,
            &["kafka", "metadata-quorum", "describe", "--status"],
            0,
            &["LeaderId"],
        );
        assert!(!out.contains("Exception"), "{out}");
        assert_exit(
            &stack,
            &[
                "kafka",
                "configs",
                "--describe",
                "--entity-type",
                "topics",
                "--entity-name",
                &topic,
            ],
            0,
            &["cleanup.policy"],
        );
    });
}

/// `produce` fills what a line leaves out of the envelope: `event_id` (a new UUID),
/// `occurred_at` (now) and `tenant_id` (`--tenant`); a topic that does not exist is named as
/// such, not as a registry failure.
#[test]
fn produce_fills_the_envelope_and_names_a_missing_topic() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tx.jsonl");
        std::fs::write(
            &file,
            r#"{"account_id":"acct-1","amount":12.5,"currency":"EUR","merchant_id":"m-1","merchant_category":"5411","country":"DE","channel":"ONLINE"}"#,
        )
        .expect("write");
        let file = file.to_string_lossy().to_string();
        assert_exit(
            &stack,
            &["produce", &topic, "-f", &file],
            2,
            &["line 1", "tenant_id", "--tenant"],
        );
        let before = verdict_runtime::now_ms();
        assert_exit(
            &stack,
            &[
                "produce",
                &topic,
                "-f",
                &file,
                "--tenant",
                "tenant-cli",
                "-k",
                "account_id",
            ],
            0,
            &["produced 1 record(s)"],
        );
        let out = verdict(&stack, &["consume", &topic, "-e"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(v["value"]["tenant_id"], "tenant-cli");
        assert!(
            uuid::Uuid::parse_str(v["value"]["event_id"].as_str().unwrap_or("")).is_ok(),
            "{v}"
        );
        let at = v["value"]["occurred_at"].as_i64().unwrap_or(0);
        assert!(at >= before && at <= verdict_runtime::now_ms(), "{v}");
        assert_eq!(v["key"], "acct-1");

        let typo = format!("{topic}s");
        assert_exit(
            &stack,
            &["produce", &typo, "-f", &file, "--tenant", "t"],
            2,
            &[&format!("topic {typo} does not exist")],
        );

        // Each bad line is named with its field, in the user's terms.
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, BAD_LINES).expect("write");
        let said = assert_exit(
            &stack,
            &[
                "produce",
                &topic,
                "-f",
                &bad.to_string_lossy(),
                "--tenant",
                "t",
                "--keep-going",
            ],
            0,
            &[
                "line 1: field `amount`",
                "line 2: field `channel`",
                "line 3: field `customer_age_years`",
                "line 4: field `extra`",
                "line 5: not JSON",
                "produced 0 record(s)",
            ],
        );
        for internal in ["Value::", "Schema::", "Record(", "Union(", "SRCError"] {
            assert!(!said.contains(internal), "{internal} in: {said}");
        }

        // A topic without a registered schema takes the lines as they are when asked to.
        let plain = topology.topic("plain");
        assert_exit(
            &stack,
            &[
                "kafka",
                "topics",
                "--create",
                "--topic",
                &plain,
                "--partitions",
                "1",
            ],
            0,
            &[],
        );
        assert_exit(
            &stack,
            &["produce", &plain, "-f", &file],
            2,
            &["no schema", "--value-format json"],
        );
        assert_exit(
            &stack,
            &[
                "produce",
                &plain,
                "-f",
                &file,
                "--value-format",
                "json",
                "-k",
                "account_id",
            ],
            0,
            &["produced 1 record(s)"],
        );
        let out = verdict(&stack, &["consume", &plain, "-e"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(v["key"], "acct-1");
        let sent: Value =
            serde_json::from_str(v["value"].as_str().expect("the line as text")).expect("JSON");
        assert_eq!(sent["amount"], 12.5);
    });
}

/// `dlq redrive --class` takes the classes the engine writes in any case, and refuses a name
/// that is none of them instead of matching nothing.
#[test]
fn redrive_classes_are_checked() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let dlq = topology.topic("transactions.dlq");
        let topo = topology.to_string_lossy().to_string();
        assert_exit(
            &stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--class",
                "invalid",
                "--dry-run",
                "--topology",
                &topo,
            ],
            0,
            &["would redrive 0"],
        );
        assert_exit(
            &stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--class",
                "Bogus",
                "--dry-run",
                "--topology",
                &topo,
            ],
            2,
            &["Bogus", "Decode", "Panic"],
        );
        assert_exit(
            &stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--since",
                "yesterday",
                "--dry-run",
                "--topology",
                &topo,
            ],
            2,
            &["--since"],
        );
    });
}

/// `verdict demo` on a used stack (history on its input and decisions topics) reads only the
/// records it produced and the decisions after them: it finishes in seconds, not minutes.
#[test]
fn demo_on_a_used_stack_reads_only_its_own_events() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let input = topology.topic("transactions");
        let decisions = topology.topic("fraud-decisions");
        write_history(&stack, &input, 200_000).await;
        harness::write_history_as(&stack, &input, &decisions, 200_000).await;
        // A compatible change of the input's schema (a field with a default): the demo's
        // events come back with it and are still the events it sent.
        let subject = format!("{input}-value");
        let mut schema: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("schemas/transaction_event.avsc"))
                .expect("schema"),
        )
        .expect("avsc is JSON");
        schema["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "note", "type": ["null", "string"], "default": null}));
        let registered = harness::Http::json(stack.registry_url())
            .post(
                &format!("/subjects/{subject}/versions"),
                serde_json::json!({"schema": schema.to_string()}),
            )
            .await;
        assert_eq!(registered.status, 200, "{}", registered.body);
        harness::commit_at_end(
            &stack.broker.kafka(),
            &topology.group("verdict-fraud-detector"),
            &input,
        )
        .await;
        let mut fraud = harness::ServiceProcess::spawn::<fraud_detector::Spec>(
            &harness::deployment(&stack, &topology, None),
            |_| {},
        );
        fraud.wait_ready(Duration::from_secs(60)).await;
        let started = Instant::now();
        let out = verdict(
            &stack,
            &[
                "demo",
                "--topic",
                &input,
                "--decisions-topic",
                &decisions,
                "--documents",
                "0",
            ],
        );
        let took = started.elapsed();
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("round trip: 10/10"), "{all}");
        assert!(all.contains("pipeline: 10/10 events decided"), "{all}");
        assert!(took < Duration::from_secs(60), "demo took {took:?}: {all}");
    });
}

/// Runs `verdict ARGS` against a broker and a registry given by address; returns exit code
/// and stderr.
fn verdict_at(bootstrap: &str, registry: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = harness::run_command(
        harness::verdict_command(bootstrap, registry, args).env_remove("RUST_LOG"),
        Duration::from_secs(60),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With the broker or the registry out of reach, every command says which one and where, in
/// a line or two (exit 1), instead of "topic does not exist", librdkafka's log, or base64.
#[test]
fn an_unreachable_broker_or_registry_is_named() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        write_history(&stack, &topic, 3).await;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tx.jsonl");
        let (_, tx) = verdict_cli::records::sample_transaction(&mut rand::rng(), "t");
        std::fs::write(&file, tx.to_string()).expect("write");
        let file = file.to_string_lossy().to_string();
        let nobody = format!("127.0.0.1:{}", harness::free_port());
        let registry = stack.registry_url();
        let commands: [&[&str]; 4] = [
            &["consume", &topic, "-e"],
            &["produce", &topic, "-f", &file],
            &["dlq", "list", &topic],
            &["groups", "list"],
        ];
        for args in commands {
            let (code, stderr) = verdict_at(&nobody, &registry, args);
            assert_eq!(code, Some(1), "{args:?} with the broker down: {stderr}");
            assert!(
                stderr.contains(&format!("cannot reach Kafka at {nobody}")),
                "{args:?}: {stderr}"
            );
            assert!(stderr.lines().count() <= 2, "{args:?}: {stderr}");
            assert!(!stderr.contains('\u{1b}'), "no terminal colours: {stderr}");
        }
        let no_registry = format!("http://{nobody}");
        let commands: [&[&str]; 2] = [
            &["consume", &topic, "-e"],
            &["produce", &topic, "-f", &file],
        ];
        for args in commands {
            let (code, stderr) = verdict_at(&stack.broker.bootstrap(), &no_registry, args);
            assert_eq!(code, Some(1), "{args:?} with the registry down: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "cannot reach the schema registry at {no_registry}"
                )),
                "{args:?}: {stderr}"
            );
            assert!(stderr.lines().count() <= 2, "{args:?}: {stderr}");
        }
    });
}

/// `verdict shadow` checks the shadow service's settings before it creates a topic or copies
/// an event: a model file that does not exist (the README's old example) or an unknown key is
/// refused at once, naming the key. Before: 13 topics were created and the whole range copied
/// first, and the reason was left in a temporary log.
#[test]
fn shadow_refuses_bad_settings_before_touching_the_cluster() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topo = topology.to_string_lossy().to_string();
        let input = topology.topic("transactions");
        write_history(&stack, &input, 100).await;
        let cases: [(&str, &[&str]); 2] = [
            (
                "service.model_file=models/fraud/model-v2.json",
                &["service.model_file", "model-v2.json does not exist"],
            ),
            ("service.no_such_key=1", &["no_such_key"]),
        ];
        for (set, says) in cases {
            assert_exit(
                &stack,
                &[
                    "shadow",
                    "--service",
                    "fraud-detector",
                    "--name",
                    "bad",
                    "--topology",
                    &topo,
                    "--from-offset",
                    "0",
                    "--keep-topics",
                    "--set",
                    set,
                ],
                2,
                says,
            );
            let topics = stack
                .broker
                .kafka()
                .topic_partitions()
                .await
                .expect("topics");
            let created: Vec<&String> = topics
                .keys()
                .filter(|t| t.starts_with("shadow-bad."))
                .collect();
            assert!(created.is_empty(), "{set}: created {created:?}");
        }
    });
}

/// A group on the KIP-848 protocol (`group.protocol=consumer`) with a live member is
/// described with its member and assignment, listed with its type, and `replay --execute`
/// on it is refused (exit 4). Before: it showed as Dead with 0 members and the reset went
/// to the broker, which rejected it (exit 1).
#[test]
fn a_kip848_group_is_described_with_its_members_and_not_reset_under_them() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        write_history(&stack, &topic, 100).await;
        let group = topology.group("kip848-reader");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let member = {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", stack.broker.bootstrap())
                .set("group.id", &group)
                .set("group.protocol", "consumer")
                .set("client.id", "kip848-member")
                .create()
                .expect("consumer");
            consumer.subscribe(&[topic.as_str()]).expect("subscribe");
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
            })
        };
        // The member joins and is assigned every partition.
        let started = Instant::now();
        let described = loop {
            let out = verdict(&stack, &["groups", "describe", &group, "--output", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let assigned = v["members"][0]["assignment"].as_array().map_or(0, Vec::len);
            if assigned > 0 {
                break v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no member with an assignment: {}",
                text(&out)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(described["group_type"], "Consumer", "{described}");
        assert_eq!(described["state"], "Stable", "{described}");
        assert_eq!(described["members"][0]["client_id"], "kip848-member");
        let listed = verdict(&stack, &["groups", "list"]);
        let line = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find(|l| l.starts_with(&group))
            .map(String::from)
            .unwrap_or_default();
        assert!(
            line.contains("Consumer") && line.contains("Stable"),
            "{line}"
        );
        assert_exit(
            &stack,
            &[
                "replay",
                &group,
                "--to-earliest",
                "--topic",
                &topic,
                "--execute",
            ],
            4,
            &["active member", "kip848-member"],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        member.join().expect("member");
    });
}

/// A dead letter goes back once, whatever selections ask for it: widening a selection after
/// a narrower one sends only what the narrower one did not. Before: progress was kept per
/// selection, so the wider run sent the Panic letters again, each still tagged
/// `verdict.redrive.count=1`.
#[test]
fn a_dead_letter_is_redriven_once_whatever_the_selection() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use verdict_runtime::headers::{self, HeaderMap};
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let kafka = stack.broker.kafka();
        let input = topology.topic("transactions");
        let dlq = topology.topic("transactions.dlq");
        let topo = topology.to_string_lossy().to_string();
        let producer: FutureProducer = kafka.producer_config().create().expect("producer");
        for (i, class) in ["Panic", "Panic", "Panic", "Decode", "Decode"]
            .iter()
            .enumerate()
        {
            let mut h = HeaderMap::default();
            h.set(headers::ORIGINAL_TOPIC, &input);
            h.set(headers::ERROR_CLASS, *class);
            h.set(headers::SERVICE, "fraud-detector");
            producer
                .send(
                    FutureRecord::to(&dlq)
                        .key(&format!("letter-{i}"))
                        .payload("value")
                        .headers(h.to_kafka()),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
        let redrive = |extra: &[&str]| {
            let mut args = vec!["dlq", "redrive", dlq.as_str(), "--topology", topo.as_str()];
            args.extend(extra);
            assert_exit(&stack, &args, 0, &[])
        };
        assert!(redrive(&["--class", "Panic"]).contains("redrove 3 of 5"));
        let wider = redrive(&[]);
        assert!(wider.contains("redrove 2 of 5"), "{wider}");
        assert!(wider.contains("3 redriven before"), "{wider}");
        assert!(redrive(&[]).contains("redrove 0 of 5"));
        assert_exit(
            &stack,
            &["dlq", "list", &dlq, "--class", "decode"],
            0,
            &["Decode", "2 dead letter(s)"],
        );
        let json = verdict(
            &stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--topology",
                &topo,
                "--dry-run",
                "--output",
                "json",
            ],
        );
        let report: Value = serde_json::from_slice(&json.stdout).expect("a JSON report");
        assert_eq!(
            (
                report["redriven"].as_u64(),
                report["redriven_before"].as_u64()
            ),
            (Some(0), Some(5))
        );

        let out = verdict(&stack, &["consume", &input, "-e"]);
        let sent: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        let mut keys: Vec<&str> = sent.iter().filter_map(|r| r["key"].as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["letter-0", "letter-1", "letter-2", "letter-3", "letter-4"]
        );
        for r in &sent {
            assert_eq!(r["headers"]["verdict.redrive.count"], "1", "{r}");
        }
    });
}

/// Lines a user gets wrong: a number as a string, a value outside an enum, a wrong type in
/// an optional field, a field the schema does not have, a cut-off line.
const BAD_LINES: &str = r#"{"account_id":"acct-1","amount":"12","currency":"EUR","merchant_id":"m-7","merchant_category":"5411","country":"DE","channel":"ONLINE"}
{"account_id":"acct-1","amount":12,"currency":"EUR","merchant_id":"m-7","merchant_category":"5411","country":"DE","channel":"BOAT"}
{"account_id":"acct-1","amount":12,"currency":"EUR","merchant_id":"m-7","merchant_category":"5411","country":"DE","channel":"ONLINE","customer_age_years":"old"}
{"account_id":"acct-1","amount":12,"currency":"EUR","merchant_id":"m-7","merchant_category":"5411","country":"DE","channel":"ONLINE","extra":1}
{"account_id":"acct-1","amount":12,"currency":"EUR"
"#;
