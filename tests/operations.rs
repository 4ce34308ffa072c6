//! Operations against the real broker: `verdict groups` and `verdict replay` checked against
//! Kafka's own `kafka-consumer-groups`, and replay / dead-letter redrive checked by what the
//! fraud-detector decides afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use harness::{
    ServiceProcess, Stack, Topology, apply_topology, committed, deployment, kafka_tool_table, run,
    verdict, wait_committed_to_end,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use verdict_cli::records::{AvroProducer, read_topic, sample_transaction};
use verdict_runtime::headers::{self, HeaderMap};

const GROUP: &str = "verdict-fraud-detector";

/// What every test here starts with: the stack, this test's topology, and the names of the
/// fraud-detector's group and input in it.
struct Ops {
    stack: Stack,
    topology: Topology,
    group: String,
    input: String,
    kafka: verdict_runtime::kafka::KafkaSettings,
}

impl Ops {
    async fn start() -> Self {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        Self {
            group: topology.group(GROUP),
            input: topology.topic("transactions"),
            kafka: stack.broker.kafka(),
            stack,
            topology,
        }
    }

    /// A ready fraud-detector (see [`fraud`]).
    async fn fraud(&self, fail_tenant: &str) -> ServiceProcess {
        let mut svc = fraud(&self.stack, &self.topology, fail_tenant);
        svc.wait_ready(Duration::from_secs(30)).await;
        svc
    }

    async fn produce(&self, n: usize, tenant: &str) -> Vec<String> {
        produce(&self.stack, &self.topology, n, tenant).await
    }

    async fn wait_committed(&self) {
        wait_committed_to_end(
            &self.kafka,
            &self.group,
            &self.input,
            Duration::from_secs(120),
        )
        .await;
    }
}

/// A fraud-detector with dynamic membership, so that a clean stop empties the group at once.
fn fraud(stack: &Stack, topology: &Topology, fail_tenant: &str) -> ServiceProcess {
    ServiceProcess::spawn::<fraud_detector::Spec>(&deployment(stack, topology, None), |s| {
        s.engine.group_instance_id = String::new();
        if !fail_tenant.is_empty() {
            s.service.fail_first_attempts = 1_000;
            s.service.fail_tenant = fail_tenant.into();
            s.service.fail_mode = fraud_detector::config::FailMode::Panic;
        }
    })
}

/// Produces `n` transactions of `tenant`; returns their event ids.
async fn produce(stack: &Stack, topology: &Topology, n: usize, tenant: &str) -> Vec<String> {
    let producer =
        AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
    let mut rng = rand::rng();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (key, value) = sample_transaction(&mut rng, tenant);
        producer
            .send(&topology.topic("transactions"), &key, &value)
            .await
            .expect("produce");
        ids.push(value["event_id"].as_str().expect("id").to_string());
    }
    ids
}

/// How many decisions each event id has on the decisions topic, once `enough` holds.
async fn decisions(
    stack: &Stack,
    topology: &Topology,
    enough: impl Fn(&HashMap<String, usize>) -> bool,
) -> HashMap<String, usize> {
    let count = |rs: &[verdict_cli::records::Record]| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for r in rs {
            if let Some(id) = r.value.as_ref().and_then(|v| v["event_id"].as_str()) {
                *m.entry(id.to_string()).or_default() += 1;
            }
        }
        m
    };
    let records = read_topic(
        &stack.broker.kafka(),
        &stack.registry_url(),
        &topology.topic("fraud-decisions"),
        Duration::from_secs(60),
        |rs| enough(&count(rs)),
    )
    .await;
    count(&records)
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "verdict failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The timestamp of the record at each `(partition, offset)` of `topic`, read directly.
async fn timestamps(stack: &Stack, topic: &str, at: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
    let reader: BaseConsumer = stack
        .broker
        .kafka()
        .reader_config()
        .create()
        .expect("reader");
    let mut out = BTreeMap::new();
    for (p, o) in at {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o))
            .expect("tpl");
        reader.assign(&tpl).expect("assign");
        for _ in 0..50 {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                assert_eq!(m.offset(), *o, "the record at the committed offset");
                out.insert(*p, m.timestamp().to_millis().expect("timestamp"));
                break;
            }
        }
    }
    out
}

/// `groups describe` shows what Kafka's tool shows and lag in seconds computed from the
/// record at the committed offset; `replay --to-datetime` plans what Kafka's `--dry-run`
/// plans, changes nothing without `--execute`, is refused while the group has a member, and
/// once executed makes the fraud-detector decide again exactly the events at or after that
/// time.
#[test]
fn replay_to_datetime_reprocesses_exactly_the_records_since_then() {
    run(300, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            group,
            input,
            kafka,
        } = &ops;
        let mut svc = ops.fraud("").await;

        let before = ops.produce(60, "tenant-before").await;
        ops.wait_committed().await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let since_ms = verdict_runtime::now_ms();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let after = ops.produce(40, "tenant-after").await;
        ops.wait_committed().await;
        let since = jiff::Timestamp::from_millisecond(since_ms)
            .expect("time")
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();

        // An active group is refused, and the refusal names the member.
        let refused = verdict(
            stack,
            &[
                "replay",
                group,
                "--to-datetime",
                &since,
                "--all-topics",
                "--execute",
            ],
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(4), "{stderr}");
        assert!(
            stderr.contains("active member") && stderr.contains(GROUP),
            "names the member: {stderr}"
        );

        svc.stop_cleanly();
        harness::wait_empty_group(kafka, group).await;

        // Stopped: new events are lag, in messages and in seconds.
        let late = ops.produce(25, "tenant-late").await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let d = json_of(&verdict(
            stack,
            &["groups", "describe", group, "--output", "json"],
        ));
        let kafka_rows = kafka_tool_table(
            stack,
            "consumer-groups",
            &["--describe", "--group", group],
            "GROUP",
        );
        let ours: Vec<&Value> = d["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter(|p| p["topic"] == input.as_str())
            .collect();
        let theirs: Vec<_> = kafka_rows.iter().filter(|r| r["TOPIC"] == *input).collect();
        assert_eq!(ours.len(), 6, "{d}");
        assert_eq!(theirs.len(), 6, "{kafka_rows:?}");
        for r in &theirs {
            let p: i64 = r["PARTITION"].parse().expect("partition");
            let o = ours
                .iter()
                .find(|o| o["partition"] == p)
                .expect("same partitions");
            assert_eq!(o["committed"].to_string(), r["CURRENT-OFFSET"], "p{p}");
            assert_eq!(o["log_end"].to_string(), r["LOG-END-OFFSET"], "p{p}");
            assert_eq!(o["lag"].to_string(), r["LAG"], "p{p}");
        }
        let total: i64 = ours.iter().map(|o| o["lag"].as_i64().expect("lag")).sum();
        assert_eq!(total, 25);
        let lagging: BTreeMap<i32, i64> = ours
            .iter()
            .filter(|o| o["lag"].as_i64() > Some(0))
            .map(|o| {
                (
                    i32::try_from(o["partition"].as_i64().expect("p")).expect("p"),
                    o["committed"].as_i64().expect("committed"),
                )
            })
            .collect();
        let stamps = timestamps(stack, input, &lagging).await;
        let at_ms = d["at_ms"].as_i64().expect("at_ms");
        for o in &ours {
            let p = i32::try_from(o["partition"].as_i64().expect("p")).expect("p");
            let secs = o["lag_seconds"].as_f64().expect("lag seconds");
            match stamps.get(&p) {
                #[allow(clippy::cast_precision_loss)]
                Some(ts) => {
                    let expected = (at_ms - ts) as f64 / 1000.0;
                    assert!(
                        (secs - expected).abs() < 0.002,
                        "p{p}: {secs} vs {expected}"
                    );
                    assert!(secs >= 1.0, "p{p}: the late events are over a second old");
                }
                None => assert!(secs.abs() < f64::EPSILON, "p{p} caught up: 0 s"),
            }
        }

        // The plan equals Kafka's own dry run, and changes nothing.
        let offsets_before = committed(kafka, group, input).await;
        let plan = json_of(&verdict(
            stack,
            &[
                "replay",
                group,
                "--to-datetime",
                &since,
                "--topic",
                input,
                "--output",
                "json",
            ],
        ));
        let kafka_plan = kafka_tool_table(
            stack,
            "consumer-groups",
            &[
                "--reset-offsets",
                "--group",
                group,
                "--topic",
                input,
                "--to-datetime",
                &since,
                "--dry-run",
            ],
            "GROUP",
        );
        let ours: BTreeMap<i64, i64> = plan
            .as_array()
            .expect("plan")
            .iter()
            .map(|r| {
                (
                    r["partition"].as_i64().expect("p"),
                    r["new"].as_i64().expect("new"),
                )
            })
            .collect();
        let theirs: BTreeMap<i64, i64> = kafka_plan
            .iter()
            .map(|r| {
                (
                    r["PARTITION"].parse().expect("p"),
                    r["NEW-OFFSET"].parse().expect("new"),
                )
            })
            .collect();
        assert_eq!(
            ours, theirs,
            "verdict's plan = kafka-consumer-groups --dry-run"
        );
        let reprocess: i64 = plan
            .as_array()
            .expect("plan")
            .iter()
            .map(|r| r["reprocess"].as_i64().expect("reprocess"))
            .sum();
        assert_eq!(
            reprocess, 40,
            "the 40 events since then (the late 25 are unread)"
        );
        assert_eq!(committed(kafka, group, input).await, offsets_before);

        // Executed: the service decides the 40 again (and the 25 late ones once), not the 60.
        let out = verdict(
            stack,
            &[
                "replay",
                group,
                "--to-datetime",
                &since,
                "--all-topics",
                "--execute",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let moved = committed(kafka, group, input).await;
        let moved_sum: i64 = moved.values().sum();
        let before_sum: i64 = offsets_before.values().sum();
        assert_eq!(
            before_sum - moved_sum,
            40,
            "{offsets_before:?} -> {moved:?}"
        );

        let mut svc = ops.fraud("").await;
        ops.wait_committed().await;
        let got = decisions(stack, topology, |m| {
            after.iter().all(|id| m.get(id) == Some(&2)) && late.iter().all(|id| m.contains_key(id))
        })
        .await;
        for id in &before {
            assert_eq!(got.get(id), Some(&1), "decided once before the time: {id}");
        }
        for id in &after {
            assert_eq!(got.get(id), Some(&2), "re-decided after the replay: {id}");
        }
        for id in &late {
            assert_eq!(got.get(id), Some(&1), "late events decided once: {id}");
        }
        svc.stop_cleanly();
    });
}

/// Records that dead-lettered while a stage was failing become decisions after `dlq redrive`
/// (once the stage works); the counts match; a second redrive of the same selection sends
/// nothing new. `dlq list` groups them by class and service.
#[test]
fn redriven_dead_letters_become_decisions_once() {
    run(300, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            input,
            kafka,
            ..
        } = &ops;
        let dlq = topology.topic("transactions.dlq");
        let topology_file = topology.display().to_string();
        let mut svc = ops.fraud("tenant-broken").await;
        let good = ops.produce(20, "tenant-ok").await;
        let broken = ops.produce(12, "tenant-broken").await;
        ops.wait_committed().await;
        svc.stop_cleanly();

        let list = json_of(&verdict(stack, &["dlq", "list", &dlq, "--output", "json"]));
        let rows = list.as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{list}");
        assert_eq!(rows[0]["class"], "Panic");
        assert_eq!(rows[0]["service"], "fraud-detector");
        assert_eq!(rows[0]["count"], 12);

        // The stage works again.
        let mut svc = ops.fraud("").await;

        let dry = verdict(
            stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--class",
                "Panic",
                "--dry-run",
                "--topology",
                &topology_file,
            ],
        );
        assert!(
            dry.status.success(),
            "{}",
            String::from_utf8_lossy(&dry.stderr)
        );
        assert!(
            String::from_utf8_lossy(&dry.stdout).contains("would redrive 12"),
            "{}",
            String::from_utf8_lossy(&dry.stdout)
        );
        let redrive = [
            "dlq",
            "redrive",
            &dlq,
            "--class",
            "Panic",
            "--topology",
            &topology_file,
        ];
        let first = verdict(stack, &redrive);
        let stdout = String::from_utf8_lossy(&first.stdout);
        assert!(
            first.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&first.stderr)
        );
        assert!(stdout.contains("redrove 12"), "{stdout}");

        let got = decisions(stack, topology, |m| {
            broken.iter().chain(&good).all(|id| m.contains_key(id))
        })
        .await;
        for id in broken.iter().chain(&good) {
            assert_eq!(
                got.get(id),
                Some(&1),
                "decided exactly once: {id}\n{}",
                svc.log()
            );
        }
        let second = verdict(stack, &redrive);
        let stdout = String::from_utf8_lossy(&second.stdout);
        assert!(second.status.success(), "{stdout}");
        assert!(stdout.contains("redrove 0"), "nothing new: {stdout}");

        // The redriven records carry their original key and a redrive count.
        let redriven: Vec<_> = read_topic(
            kafka,
            &stack.registry_url(),
            input,
            Duration::from_secs(30),
            |rs| {
                rs.iter()
                    .filter(|r| r.headers.get("verdict.redrive.count").is_some())
                    .count()
                    >= 12
            },
        )
        .await
        .into_iter()
        .filter(|r| r.headers.get("verdict.redrive.count").is_some())
        .collect();
        assert_eq!(redriven.len(), 12);
        let ids: HashSet<String> = redriven
            .iter()
            .filter_map(|r| r.value.as_ref()?["event_id"].as_str().map(String::from))
            .collect();
        assert_eq!(ids, broken.iter().cloned().collect::<HashSet<_>>());
        for r in &redriven {
            assert_eq!(r.headers.get("verdict.redrive.count"), Some("1"));
            assert_eq!(
                r.key.as_deref(),
                r.value.as_ref().and_then(|v| v["account_id"].as_str()),
                "the original key"
            );
        }
        svc.stop_cleanly();
    });
}

/// `produce` refused the file (exit 2) naming each of `says`, and sent nothing to `topic`.
async fn assert_refused_unsent(
    stack: &Stack,
    topic: &str,
    refused: &std::process::Output,
    says: &[&str],
) {
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        says.iter().all(|s| stderr.contains(s)) && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    let ends = harness::end_offsets(&stack.broker.kafka(), topic).await;
    assert_eq!(ends.values().sum::<i64>(), 0, "nothing half-sent");
}

/// Size discipline (hardening issue): `produce` refuses a line whose record would not leave
/// its topic room for a dead-letter copy's headers, naming the line and the limit, and sends
/// nothing (or, with `--keep-going`, the others).
#[test]
fn produce_refuses_a_record_too_large_for_its_topic() {
    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("document-uploads");
        let doc = |id: &str, chars: usize| {
            verdict_cli::records::sample_document("tenant-cli", id, &"x".repeat(chars)).to_string()
        };
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("docs.jsonl");
        std::fs::write(&file, [doc("small", 100), doc("big", 995_000)].join("\n")).expect("write");
        let file = file.to_string_lossy().to_string();
        let refused = verdict(&stack, &["produce", &topic, "-f", &file]);
        assert_refused_unsent(
            &stack,
            &topic,
            &refused,
            &["line 2", "takes at most 991808 (1000000 less 8192"],
        )
        .await;
        let sent = verdict(&stack, &["produce", &topic, "-f", &file, "--keep-going"]);
        let stderr = String::from_utf8_lossy(&sent.stderr);
        assert!(sent.status.success(), "{stderr}");
        let ends = harness::end_offsets(&stack.broker.kafka(), &topic).await;
        assert_eq!(ends.values().sum::<i64>(), 1, "the small one: {stderr}");
    });
}

/// `produce` validates every line before sending any (the error names the line and field),
/// `--keep-going` sends the good ones; `consume` reads them back decoded, with kcat's offsets,
/// and with `--group` continues where it stopped.
#[test]
fn produce_validates_first_and_consume_reads_back_with_kcat_offsets() {
    run(180, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let topic = topology.topic("transactions");
        let mut rng = rand::rng();
        let mut lines: Vec<String> = (0..5)
            .map(|_| sample_transaction(&mut rng, "tenant-cli").1.to_string())
            .collect();
        let mut bad = sample_transaction(&mut rng, "tenant-cli").1;
        bad["amount"] = Value::String("lots".into());
        lines.insert(2, bad.to_string());
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, lines.join("\n")).expect("write");
        let file = file.to_string_lossy().to_string();

        let refused = verdict(
            &stack,
            &["produce", &topic, "-f", &file, "-k", "account_id"],
        );
        assert_refused_unsent(&stack, &topic, &refused, &["line 3", "field `amount`"]).await;

        let sent = verdict(
            &stack,
            &[
                "produce",
                &topic,
                "-f",
                &file,
                "-k",
                "account_id",
                "-H",
                "origin=cli",
                "--keep-going",
            ],
        );
        let stderr = String::from_utf8_lossy(&sent.stderr);
        assert!(sent.status.success(), "{stderr}");
        assert!(
            stderr.contains("produced 5 record(s)") && stderr.contains("skipped 1"),
            "{stderr}"
        );

        let read = |args: &[&str]| -> Vec<Value> {
            let mut all = vec!["consume", topic.as_str()];
            all.extend(args);
            let out = verdict(&stack, &all);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect()
        };
        let all = read(&["-o", "beginning", "-e"]);
        assert_eq!(all.len(), 5);
        for r in &all {
            assert_eq!(r["headers"]["origin"], "cli");
            assert_eq!(r["key"], r["value"]["account_id"], "key from --key-field");
            assert_eq!(
                r["value"]["tenant_id"], "tenant-cli",
                "decoded through the registry"
            );
        }
        assert_eq!(read(&["-o", "end", "-e"]).len(), 0);
        assert_eq!(read(&["-o", "-1", "-e"]).len(), ends_with_records(&all));
        assert_eq!(read(&["-o", "beginning", "-c", "2"]).len(), 2);
        let now = verdict_runtime::now_ms().to_string();
        assert_eq!(read(&["-o", &format!("s@{now}"), "-e"]).len(), 0);
        assert_eq!(
            read(&["-o", "beginning", "-o", &format!("e@{now}")]).len(),
            5
        );

        // A group continues where it stopped.
        let group = topology.group("cli-reader");
        assert_eq!(read(&["-G", &group, "-c", "3"]).len(), 3);
        assert_eq!(read(&["-G", &group, "-o", "stored", "-e"]).len(), 2);
        assert_eq!(read(&["-G", &group, "-e"]).len(), 0);
    });
}

/// How many partitions hold at least one of `records` (`-o -1` reads one from each).
fn ends_with_records(records: &[Value]) -> usize {
    records
        .iter()
        .map(|r| r["partition"].as_i64())
        .collect::<HashSet<_>>()
        .len()
}

/// The lag monitor's numbers equal an independent computation from watermarks and committed
/// offsets, it exports kafka-lag-exporter's metrics, and a stopped consumer turns the group to
/// STOP (or STALL) while a recovering one brings it back to OK.
#[test]
fn the_lag_monitor_sees_a_stopped_group_and_its_recovery() {
    run(300, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            group,
            input,
            kafka,
        } = &ops;
        let mut svc = ops.fraud("").await;
        let mut monitor =
            ServiceProcess::spawn::<lag_monitor::Spec>(&deployment(stack, topology, None), |s| {
                s.monitor.groups = vec![group.clone()];
                s.monitor.poll_interval_ms = 500;
                s.monitor.window = 4;
            });
        monitor.wait_ready(Duration::from_secs(30)).await;
        let api = harness::Http::json(format!("http://127.0.0.1:{}", monitor.http_port));
        let status = |snapshot: &Value| -> String {
            snapshot["groups"][0]["status"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        };
        let wait_for = |want: &'static [&'static str]| {
            let api = &api;
            async move {
                for _ in 0..120 {
                    let s = api.get("/api/groups").await.body;
                    if want.contains(&status(&s).as_str()) {
                        return s;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                panic!(
                    "the group never became {want:?}: {}",
                    api.get("/api/groups").await.body
                );
            }
        };

        ops.produce(60, "tenant-lag").await;
        ops.wait_committed().await;
        let ok = wait_for(&["OK"]).await;
        assert_eq!(ok["groups"][0]["group"], group.as_str());

        svc.stop_cleanly();
        ops.produce(30, "tenant-lag").await;
        let stopped = wait_for(&["STOP", "STALL"]).await;
        let g = &stopped["groups"][0];
        assert_eq!(g["total_lag"], 30, "{g}");
        // Independently: log-end minus committed, per partition.
        let ends = harness::end_offsets(kafka, input).await;
        let done = committed(kafka, group, input).await;
        for p in g["partitions"].as_array().expect("partitions") {
            let part = i32::try_from(p["partition"].as_i64().expect("p")).expect("p");
            let expected = ends[&part] - done.get(&part).copied().unwrap_or(0);
            assert_eq!(p["lag"].as_i64(), Some(expected), "p{part}: {p}");
            if expected > 0 {
                assert!(p["lag_seconds"].as_f64() > Some(0.0), "p{part}: {p}");
            }
        }
        let lag_metric = monitor
            .metric_where(
                "kafka_consumergroup_group_sum_lag",
                &format!("group=\"{group}\""),
            )
            .await;
        assert!((lag_metric - 30.0).abs() < f64::EPSILON, "{lag_metric}");
        let status_metric = monitor
            .metric_where(
                "kafka_consumergroup_group_status",
                &format!("group=\"{group}\""),
            )
            .await;
        assert!(
            status_metric >= 3.0,
            "STALL (3) or STOP (4): {status_metric}"
        );

        let mut svc = ops.fraud("").await;
        let recovered = wait_for(&["OK"]).await;
        assert_eq!(recovered["groups"][0]["total_lag"], 0, "{recovered}");
        let page = api.get("/").await;
        assert_eq!(page.status, 200);
        svc.stop_cleanly();
        monitor.stop_cleanly();
    });
}

/// `verdict shadow` re-runs 1,000 events through another model version into shadow topics:
/// its diff's counts equal the decisions actually written to the shadow and production
/// topics, and production offsets and topics are unchanged.
#[test]
fn shadow_runs_another_model_version_and_reports_the_diff() {
    run(400, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            group,
            input,
            kafka,
        } = &ops;
        let decisions_topic = topology.topic("fraud-decisions");
        let mut svc = ops.fraud("").await;
        ops.produce(1_000, "tenant-shadow").await;
        ops.wait_committed().await;
        svc.stop_cleanly();
        let offsets_before = committed(kafka, group, input).await;
        let decisions_end = harness::end_offsets(kafka, &decisions_topic).await;

        // Model v2: the same model with a higher intercept (more transactions look risky).
        let dir = tempfile::tempdir().expect("dir");
        let mut model: Value = serde_json::from_str(
            &std::fs::read_to_string(harness::repo_root().join("models/fraud/model.json"))
                .expect("model"),
        )
        .expect("model JSON");
        model["version"] = Value::String("2.0.0-shadow".into());
        model["intercept"] = Value::from(model["intercept"].as_f64().expect("intercept") + 1.5);
        let v2 = dir.path().join("model-v2.json");
        std::fs::write(&v2, model.to_string()).expect("write model");
        let (report_md, report_json) =
            (dir.path().join("shadow.md"), dir.path().join("shadow.json"));
        let name = harness::unique("t");
        let topology_file = topology.to_string_lossy().to_string();
        let out = verdict(
            stack,
            &[
                "shadow",
                "--service",
                "fraud-detector",
                "--name",
                &name,
                "--topology",
                &topology_file,
                "--from-offset",
                "0",
                "--set",
                &format!("service.model_file={}", v2.display()),
                "--keep-topics",
                "--report",
                &report_md.to_string_lossy(),
                "--json",
                &report_json.to_string_lossy(),
            ],
        );
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_json).expect("json report"))
                .expect("report JSON");
        assert_eq!(report["events"], 1_000, "{report}");
        assert_eq!(report["shadow_decided"], 1_000, "{report}");
        assert_eq!(report["compared"], 1_000, "{report}");
        assert_eq!(
            report["models"]["german-credit-logreg@2.0.0-shadow"], 1_000,
            "{report}"
        );

        // Independently: the decisions on both topics, by event id.
        let read = |topic: String| {
            let kafka = kafka.clone();
            let url = stack.registry_url();
            async move {
                let records = read_topic(&kafka, &url, &topic, Duration::from_secs(60), |rs| {
                    rs.len() >= 1_000
                })
                .await;
                records
                    .into_iter()
                    .filter_map(|r| r.value)
                    .map(|v| (v["event_id"].as_str().expect("id").to_string(), v))
                    .collect::<HashMap<String, Value>>()
            }
        };
        let shadow = read(format!("shadow-{name}.{decisions_topic}")).await;
        let production = read(decisions_topic.clone()).await;
        assert_eq!(shadow.len(), 1_000);
        let mut transitions: BTreeMap<String, i64> = BTreeMap::new();
        let mut changed = 0;
        for (id, new) in &shadow {
            let old = &production[id];
            assert_eq!(old["model"]["version"], "1.0.0");
            let (o, n) = (
                old["outcome"].as_str().expect("o"),
                new["outcome"].as_str().expect("n"),
            );
            *transitions.entry(format!("{o} -> {n}")).or_default() += 1;
            changed += i64::from(o != n);
        }
        let reported: BTreeMap<String, i64> = report["transitions"]
            .as_object()
            .expect("transitions")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().expect("count")))
            .collect();
        assert_eq!(reported, transitions);
        assert_eq!(report["changed"], changed);
        assert!(
            changed > 0,
            "a higher intercept changes some outcomes: {report}"
        );
        let md = std::fs::read_to_string(&report_md).expect("markdown report");
        assert!(
            md.contains("## Outcomes")
                && md.contains(&format!("**{changed} of 1000 decisions change.**")),
            "{md}"
        );

        // Production untouched.
        assert_eq!(committed(kafka, group, input).await, offsets_before);
        assert_eq!(
            harness::end_offsets(kafka, &decisions_topic).await,
            decisions_end
        );
        let shadow_topics: Vec<String> = kafka
            .topic_partitions()
            .await
            .expect("topics")
            .into_keys()
            .filter(|t| t.starts_with(&format!("shadow-{name}.")))
            .collect();
        assert!(!shadow_topics.is_empty());
        kafka
            .delete_topics(&shadow_topics)
            .await
            .expect("delete shadow topics");
    });
}

/// The dashboard in a real headless browser: it shows the group OK, then lagging once the
/// consumer stops, with no console errors; screenshots go to target/test-output/.
#[test]
fn the_dashboard_shows_a_group_turning_from_ok_to_lagging() {
    run(300, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            group,
            ..
        } = &ops;
        let mut svc = ops.fraud("").await;
        let mut monitor =
            ServiceProcess::spawn::<lag_monitor::Spec>(&deployment(stack, topology, None), |s| {
                s.monitor.groups = vec![group.clone()];
                s.monitor.poll_interval_ms = 500;
                s.monitor.window = 4;
            });
        monitor.wait_ready(Duration::from_secs(30)).await;
        let url = format!("http://127.0.0.1:{}/", monitor.http_port);
        let out_dir = harness::repo_root().join("target/test-output");
        std::fs::create_dir_all(&out_dir).expect("output dir");
        let shows = |dom: &str, status: &str| {
            dom.contains(&format!("data-group=\"{group}\" data-status=\"{status}\""))
        };
        let wait_page = |want: &'static [&'static str]| {
            let url = url.clone();
            let shows = &shows;
            async move {
                for _ in 0..40 {
                    let (dom, console) =
                        tokio::task::block_in_place(|| harness::chromium(&url, None));
                    assert!(console.is_empty(), "console messages: {console:?}");
                    if let Some(s) = want.iter().find(|s| shows(&dom, s)) {
                        return *s;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                panic!("the page never showed {want:?}");
            }
        };

        ops.produce(40, "tenant-dash").await;
        ops.wait_committed().await;
        wait_page(&["OK"]).await;
        tokio::task::block_in_place(|| {
            harness::chromium(&url, Some(&out_dir.join("dashboard-ok.png")))
        });

        svc.stop_cleanly();
        ops.produce(30, "tenant-dash").await;
        let lagging = wait_page(&["STOP", "STALL", "WARNING"]).await;
        let shot = out_dir.join("dashboard-lagging.png");
        let (_, console) = tokio::task::block_in_place(|| harness::chromium(&url, Some(&shot)));
        assert!(console.is_empty(), "console messages: {console:?}");
        let png = std::fs::read(&shot).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real screenshot"
        );
        eprintln!(
            "dashboard showed {lagging}; screenshots in {}",
            out_dir.display()
        );
        monitor.stop_cleanly();
    });
}

/// Review item 5 of the hardening issue: a dead letter's origin header is whatever its
/// producer wrote, and redrive sent each record wherever it pointed (`_schemas`,
/// `review-resolutions`). Redrive sends only to the topics the topology says the service
/// behind the dead-letter topic reads, and names what it refused.
#[test]
fn redrive_sends_only_to_topics_the_service_reads() {
    run(180, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            input,
            kafka,
            ..
        } = &ops;
        let dlq = topology.topic("transactions.dlq");
        let resolutions = topology.topic("review-resolutions");
        let producer: FutureProducer = kafka.producer_config().create().expect("producer");
        for (key, origin) in [
            ("fine", input.as_str()),
            ("forged-1", resolutions.as_str()),
            ("forged-2", "_schemas"),
        ] {
            let mut h = HeaderMap::default();
            h.set(headers::ORIGINAL_TOPIC, origin);
            h.set(headers::ERROR_CLASS, "Panic");
            h.set(headers::SERVICE, "fraud-detector");
            producer
                .send(
                    FutureRecord::to(&dlq)
                        .key(key)
                        .payload("value")
                        .headers(h.to_kafka()),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
        let before = (
            harness::end_offsets(kafka, &resolutions).await,
            harness::end_offsets(kafka, "_schemas").await,
        );
        let out = verdict(
            stack,
            &[
                "dlq",
                "redrive",
                &dlq,
                "--topology",
                &topology.display().to_string(),
            ],
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        assert!(said.contains("redrove 1 of 3"), "{said}");
        assert!(
            said.contains("refused 2") && said.contains(&resolutions) && said.contains("_schemas"),
            "names what it refused and where they pointed: {said}"
        );
        assert_eq!(
            (
                harness::end_offsets(kafka, &resolutions).await,
                harness::end_offsets(kafka, "_schemas").await,
            ),
            before,
            "nothing written where the forged headers pointed"
        );
        let sent = harness::end_offsets(kafka, input).await;
        assert_eq!(
            sent.values().sum::<i64>(),
            1,
            "the one true dead letter went back"
        );
    });
}

/// Review item 14 of the hardening issue: the lag monitor said OK (lag 0) for partitions a
/// group never committed, and OK for a group with no members and a backlog until its window
/// filled. A group with lag and no member is STOP at its first poll; a member that never
/// commits has the whole partition as lag (verdict's services start at the earliest offset)
/// and turns STALL.
#[test]
fn the_lag_monitor_judges_groups_without_members_or_commits() {
    run(240, async {
        let ops = Ops::start().await;
        let Ops {
            stack,
            topology,
            input,
            kafka,
            ..
        } = &ops;
        ops.produce(30, "tenant-lag").await;
        let total: i64 = harness::end_offsets(kafka, input).await.values().sum();
        assert_eq!(total, 30);
        // A group that read nothing and left: offset 0 committed everywhere, no member.
        let empty = format!("{input}.empty-group");
        let partitions = i32::try_from(kafka.partition_count(input).await).expect("count");
        verdict_runtime::groups::GroupReader::new(kafka)
            .expect("reader")
            .commit(
                &empty,
                (0..partitions).map(|p| (input.clone(), p, 0)).collect(),
            )
            .await
            .expect("commit");
        // A member that owns every partition and never commits.
        let stuck = format!("{input}.stuck-group");
        let member: BaseConsumer = kafka
            .consumer_config(&stuck)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        member.subscribe(&[input.as_str()]).expect("subscribe");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let holder = tokio::task::spawn_blocking({
            let done = done.clone();
            move || {
                let until = std::time::Instant::now() + Duration::from_secs(120);
                while !done.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < until
                {
                    // Polls to stay in the group; reads on, never commits.
                    let _ = member.poll(Duration::from_millis(200));
                }
            }
        });
        let mut monitor =
            ServiceProcess::spawn::<lag_monitor::Spec>(&deployment(stack, topology, None), |s| {
                s.monitor.groups = vec![empty.clone(), stuck.clone()];
                s.monitor.poll_interval_ms = 500;
                s.monitor.window = 4;
            });
        monitor.wait_ready(Duration::from_secs(30)).await;
        let api = harness::Http::json(format!("http://127.0.0.1:{}", monitor.http_port));
        let group = |snapshot: &Value, name: &str| -> Option<Value> {
            snapshot["groups"]
                .as_array()?
                .iter()
                .find(|g| g["group"] == name)
                .cloned()
        };
        // The first snapshot that has the group without members already says STOP.
        let first = loop {
            let s = api.get("/api/groups").await.body;
            if let Some(g) = group(&s, &empty) {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(first["members"], 0, "{first}");
        assert_eq!(first["total_lag"], 30, "{first}");
        assert_eq!(first["status"], "STOP", "at the first poll: {first}");

        let mut seen = Value::Null;
        for _ in 0..120 {
            let s = api.get("/api/groups").await.body;
            if let Some(g) = group(&s, &stuck) {
                if g["members"] == 1 && g["status"] == "STALL" {
                    seen = g;
                    break;
                }
                seen = g;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(seen["status"], "STALL", "{seen}");
        assert_eq!(
            seen["total_lag"], 30,
            "every record is ahead of a member that never committed: {seen}"
        );
        let metric = monitor
            .metric_where(
                "kafka_consumergroup_group_sum_lag",
                &format!("group=\"{stuck}\""),
            )
            .await;
        assert!((metric - 30.0).abs() < f64::EPSILON, "{metric}");
        monitor.stop_cleanly();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        holder.await.expect("the member leaves");
    });
}
