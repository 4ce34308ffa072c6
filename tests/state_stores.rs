//! State stores against the real broker: the fraud-detector's velocity rule keeps its
//! per-account windows in a store backed by a changelog topic, so a restart, a kill -9 or a
//! partition moving to another instance does not give an account a fresh window; accounts are
//! per tenant; and a replay decides every transaction as the first run did.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use harness::{
    Record, ServiceProcess, Stack, Topology, apply_topology, deployment, quick, read_topic, run,
    verdict, wait_empty_group,
};
use serde_json::Value;
use verdict_cli::records::{AvroProducer, sample_transaction};

type Fraud = fraud_detector::Spec;
type FraudSettings = <Fraud as verdict_runtime::service::ServiceSpec>::Settings;

/// The velocity limit of these tests: an account's 6th transaction within the minute is
/// over it.
const MAX: usize = 5;
const RULE: &str = "transactions of this account within";

fn fraud(stack: &Stack, topology: &Topology) -> ServiceProcess {
    ServiceProcess::spawn::<Fraud>(&deployment(stack, topology, None), |s| {
        quick(s);
        s.service.velocity_max = MAX;
        s.service.velocity_window_ms = 600_000;
    })
}

/// A stack with the topology applied, a producer, and a fraud-detector ready.
async fn started() -> (Stack, Topology, AvroProducer, ServiceProcess) {
    let stack = Stack::start().await;
    let topology = apply_topology(&stack, None).await;
    let producer =
        AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
    let mut svc = fraud(&stack, &topology);
    svc.wait_ready(Duration::from_secs(30)).await;
    (stack, topology, producer, svc)
}

/// Sends one transaction of `tenant`'s `account` (keyed by the account); returns its id.
async fn send(producer: &AvroProducer, topology: &Topology, tenant: &str, account: &str) -> String {
    let (_, mut value) = sample_transaction(&mut rand::rng(), tenant);
    value["account_id"] = Value::String(account.into());
    // Small and ordinary: only the velocity rule can send it to review.
    value["amount"] = Value::from(25.0);
    producer
        .send(&topology.topic("transactions"), account, &value)
        .await
        .expect("produce");
    value["event_id"].as_str().expect("id").to_string()
}

/// The decisions of `ids` (waits until each has one), by event id; the first of each.
async fn decided(stack: &Stack, topology: &Topology, ids: &[String]) -> BTreeMap<String, Record> {
    let want: HashSet<&String> = ids.iter().collect();
    let records = read_topic(
        &stack.broker.kafka(),
        &stack.registry_url(),
        &topology.topic("fraud-decisions"),
        Duration::from_secs(90),
        |rs| {
            let got: HashSet<&str> = rs.iter().filter_map(event_id).collect();
            want.iter().all(|id| got.contains(id.as_str()))
        },
    )
    .await;
    let mut by_id = BTreeMap::new();
    for r in records {
        if let Some(id) = event_id(&r).map(String::from)
            && want.contains(&id)
        {
            by_id.entry(id).or_insert(r);
        }
    }
    assert_eq!(by_id.len(), ids.len(), "every transaction decided");
    by_id
}

fn event_id(r: &Record) -> Option<&str> {
    r.value.as_ref()?["event_id"].as_str()
}

fn reasons(r: &Record) -> String {
    r.value
        .as_ref()
        .map(|v| v["reasons"].to_string())
        .unwrap_or_default()
}

fn outcome(r: &Record) -> String {
    r.value
        .as_ref()
        .map(|v| v["outcome"].to_string())
        .unwrap_or_default()
}

/// The 6th transaction of an account is over the limit however the instance deciding its
/// first five went away: stopped and restarted, killed and restarted, or its partitions moved
/// to another instance. Tenant b's account of the same id is another account.
#[test]
fn an_accounts_sixth_transaction_is_reviewed_across_restart_kill_and_rebalance() {
    run(420, async {
        let (stack, topology, producer, mut svc) = started().await;

        let accounts = ["restarted", "killed", "moved"];
        let mut first_five = Vec::new();
        for account in accounts {
            for _ in 0..MAX {
                first_five.push(send(&producer, &topology, "tenant-a", account).await);
            }
        }
        let before = decided(&stack, &topology, &first_five).await;
        for (id, r) in &before {
            assert!(
                !reasons(r).contains(RULE),
                "{id} is within the limit: {}",
                reasons(r)
            );
        }

        let sixth = |account: &'static str| {
            let (producer, topology) = (&producer, &topology);
            async move { send(producer, topology, "tenant-a", account).await }
        };
        let mut verdicts = Vec::new();

        // Stopped (SIGTERM) and started again.
        svc.stop_cleanly();
        let mut svc = fraud(&stack, &topology);
        svc.wait_ready(Duration::from_secs(30)).await;
        verdicts.push(("restarted", sixth("restarted").await));
        decided(&stack, &topology, &[verdicts[0].1.clone()]).await;

        // Killed and started again.
        svc.kill9();
        let mut svc = fraud(&stack, &topology);
        svc.wait_ready(Duration::from_secs(30)).await;
        verdicts.push(("killed", sixth("killed").await));
        decided(&stack, &topology, &[verdicts[1].1.clone()]).await;

        // Another instance joins, and this one leaves: every partition moves to it.
        let mut other = fraud(&stack, &topology);
        other.wait_ready(Duration::from_secs(30)).await;
        svc.stop_cleanly();
        verdicts.push(("moved", sixth("moved").await));

        // The same account id under another tenant: its first transaction.
        let tenant_b = send(&producer, &topology, "tenant-b", "restarted").await;

        let ids: Vec<String> = verdicts.iter().map(|(_, id)| id.clone()).collect();
        let after = decided(&stack, &topology, &ids).await;
        for (how, id) in &verdicts {
            let r = &after[id];
            assert!(
                reasons(r).contains(&format!("rule: {} {RULE}", MAX + 1)),
                "the 6th transaction of the {how} instance's account is over the limit: {} {}\n{}",
                outcome(r),
                reasons(r),
                other.log()
            );
            assert!(outcome(r).contains("REVIEW") || outcome(r).contains("DECLINE"));
        }
        let b = decided(&stack, &topology, std::slice::from_ref(&tenant_b)).await;
        assert!(
            !reasons(&b[&tenant_b]).contains(RULE),
            "tenant b's account counts apart from tenant a's: {}",
            reasons(&b[&tenant_b])
        );
        let restored = other.metric("verdict_state_restored_records_total").await;
        assert!(
            restored >= 16.0,
            "the other instance restored the windows: {restored}"
        );
    });
}

/// `verdict replay --to-earliest` of a stopped fraud-detector decides every transaction again
/// with the outcome and reasons of the first run.
#[test]
fn a_replay_decides_every_transaction_as_the_first_run_did() {
    run(300, async {
        let (stack, topology, producer, mut svc) = started().await;
        let mut ids = Vec::new();
        for i in 0..120 {
            let account = format!("acct-{}", i % 12);
            ids.push(send(&producer, &topology, "tenant-r", &account).await);
        }
        let first = decided(&stack, &topology, &ids).await;
        let over = first.values().filter(|r| reasons(r).contains(RULE)).count();
        assert_eq!(
            over,
            120 - 12 * MAX,
            "each account's transactions past the 5th"
        );

        svc.stop_cleanly();
        let group = topology.group("verdict-fraud-detector");
        wait_empty_group(&stack.broker.kafka(), &group).await;
        let out = verdict(
            &stack,
            &[
                "replay",
                &group,
                "--to-earliest",
                "--all-topics",
                "--execute",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut svc = fraud(&stack, &topology);
        svc.wait_ready(Duration::from_secs(30)).await;

        // Every transaction decided twice now: the second decision as the first.
        let want: HashSet<&String> = ids.iter().collect();
        let records = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("fraud-decisions"),
            Duration::from_secs(90),
            |rs| {
                rs.iter()
                    .filter(|r| event_id(r).is_some_and(|id| want.contains(&id.to_string())))
                    .count()
                    >= 2 * ids.len()
            },
        )
        .await;
        let mut runs: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        for r in &records {
            if let Some(id) = event_id(r) {
                runs.entry(id).or_default().push((outcome(r), reasons(r)));
            }
        }
        for id in &ids {
            let got = &runs[id.as_str()];
            assert!(got.len() >= 2, "{id} decided again: {got:?}\n{}", svc.log());
            assert!(
                got.iter().all(|d| d == &got[0]),
                "{id} decided differently on replay: {got:?}"
            );
        }
    });
}

/// `verdict shadow` of the production settings on a range that starts mid-stream changes no
/// decision: the shadow service replays the events before the range into its state first, so
/// an account's transactions past the 5th are over the limit there as in production.
#[test]
fn a_shadow_run_of_unchanged_settings_mid_stream_changes_nothing() {
    run(400, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        // The shipped settings, as the shadow run uses them.
        let mut svc = ServiceProcess::spawn::<Fraud>(&deployment(&stack, &topology, None), quick);
        svc.wait_ready(Duration::from_secs(30)).await;
        let mut ids = Vec::new();
        for i in 0..240 {
            let account = format!("acct-{}", i % 12);
            ids.push(send(&producer, &topology, "tenant-s", &account).await);
        }
        let decisions = decided(&stack, &topology, &ids).await;
        svc.stop_cleanly();
        let reviewed = decisions
            .values()
            .filter(|r| reasons(r).contains(RULE))
            .count();
        assert_eq!(
            reviewed,
            240 - 12 * MAX,
            "each account's transactions past the 5th"
        );

        let dir = tempfile::tempdir().expect("dir");
        let json = dir.path().join("shadow.json");
        let name = harness::unique("same");
        let out = verdict(
            &stack,
            &[
                "shadow",
                "--service",
                "fraud-detector",
                "--name",
                &name,
                "--topology",
                &topology.to_string_lossy(),
                "--from-offset",
                "15",
                "--json",
                &json.to_string_lossy(),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
        assert!(report["warmup_events"].as_u64() > Some(0), "{report}");
        assert!(stdout.contains("seeded by replaying"), "{stdout}");
        let in_range = report["compared"].as_u64().unwrap_or(0);
        assert_eq!(Some(in_range), report["events"].as_u64(), "{report}");
        assert!(in_range > 100, "a range with history before it: {report}");
        let over = report["transitions"]["REVIEW -> REVIEW"]
            .as_u64()
            .unwrap_or(0)
            + report["transitions"]["DECLINE -> DECLINE"]
                .as_u64()
                .unwrap_or(0);
        assert!(over > 0, "velocity fires in the range: {report}");
        assert_eq!(report["changed"], 0, "{stdout}");
    });
}

/// Under `engine.guarantee = "exactly_once"`, what an instance wrote in a transaction it did
/// not commit (killed between producing and committing) is never seen by a `read_committed`
/// reader; restarted with the same static id, it fences the killed incarnation, whose
/// transaction is aborted, and decides every transaction exactly once.
#[test]
fn a_transaction_killed_before_its_commit_leaves_nothing_visible() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let producer =
            AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
        let exactly_once = |commit_every_ms: u64| {
            move |s: &mut FraudSettings| {
                quick(s);
                s.engine.guarantee = verdict_runtime::engine::Guarantee::ExactlyOnce;
                s.engine.group_instance_id = "eos-abort".into();
                s.engine.commit_interval_ms = commit_every_ms;
                s.engine.transaction_timeout_ms = 120_000;
            }
        };
        let deployment = deployment(&stack, &topology, None);
        // A commit a minute: the transaction is still open when it is killed.
        let mut svc = ServiceProcess::spawn::<Fraud>(&deployment, exactly_once(60_000));
        svc.wait_ready(Duration::from_secs(30)).await;
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(send(&producer, &topology, "tenant-x", &format!("acct-{}", i % 8)).await);
        }
        svc.wait_metric(
            "verdict_records_processed_total",
            "",
            |n| n >= 40.0,
            Duration::from_secs(60),
            "all 40 decided in the open transaction",
        )
        .await;
        let decisions = topology.topic("fraud-decisions");
        let mut uncommitted = stack.broker.kafka();
        uncommitted
            .properties
            .insert("isolation.level".into(), "read_uncommitted".into());
        let written = read_topic(
            &uncommitted,
            &stack.registry_url(),
            &decisions,
            Duration::from_secs(30),
            |rs| rs.len() >= 40,
        )
        .await;
        assert_eq!(written.len(), 40, "written, in the open transaction");
        svc.kill9();

        let visible = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &decisions,
            Duration::from_secs(5),
            |_| false,
        )
        .await;
        assert!(
            visible.is_empty(),
            "{} decisions of an uncommitted transaction seen",
            visible.len()
        );

        let mut svc = ServiceProcess::spawn::<Fraud>(&deployment, exactly_once(200));
        svc.wait_ready(Duration::from_secs(30)).await;
        for topic in ["fraud-decisions", "audit"] {
            let records = read_topic(
                &stack.broker.kafka(),
                &stack.registry_url(),
                &topology.topic(topic),
                Duration::from_secs(60),
                |rs| rs.len() >= 40,
            )
            .await;
            // A little longer: a duplicate would come after.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = read_topic(
                &stack.broker.kafka(),
                &stack.registry_url(),
                &topology.topic(topic),
                Duration::from_secs(3),
                |_| false,
            )
            .await;
            let got: Vec<&str> = again.iter().filter_map(event_id).collect();
            let unique: HashSet<&str> = got.iter().copied().collect();
            assert_eq!(
                records.len().max(got.len()),
                40,
                "{topic}: once each\n{}",
                svc.log()
            );
            assert_eq!(unique.len(), 40, "{topic}: every transaction");
        }
    });
}

/// Exactly-once while partitions move: a second instance joins mid-stream (the first commits
/// its transaction before it lets partitions go), then the first stops. Every transaction
/// is decided exactly once.
#[test]
fn exactly_once_holds_while_partitions_move() {
    run(300, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let exactly_once = |id: &'static str| {
            move |s: &mut FraudSettings| {
                quick(s);
                s.engine.guarantee = verdict_runtime::engine::Guarantee::ExactlyOnce;
                s.engine.group_instance_id = id.into();
            }
        };
        let deployment = deployment(&stack, &topology, None);
        let mut a = ServiceProcess::spawn::<Fraud>(&deployment, exactly_once("eos-a"));
        a.wait_ready(Duration::from_secs(30)).await;
        let (kafka, registry, input) = (
            stack.broker.kafka(),
            stack.registry_url(),
            topology.topic("transactions"),
        );
        let feed = tokio::spawn(async move {
            harness::chaos::feed_transactions(
                &kafka, &registry, &input, 3_000, 300, 100, None, None,
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut b = ServiceProcess::spawn::<Fraud>(&deployment, exactly_once("eos-b"));
        b.wait_ready(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.stop_cleanly();
        let sent = feed.await.expect("feed");
        let ids: Vec<String> = sent.iter().map(|s| s.event_id.clone()).collect();
        decided(&stack, &topology, &ids).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = read_topic(
            &stack.broker.kafka(),
            &stack.registry_url(),
            &topology.topic("fraud-decisions"),
            Duration::from_secs(5),
            |_| false,
        )
        .await;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &all {
            if let Some(id) = event_id(r) {
                *counts.entry(id).or_default() += 1;
            }
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert_eq!(counts.len(), ids.len(), "every transaction decided");
        assert!(
            twice.is_empty(),
            "decided more than once: {:?}\n{}",
            &twice[..twice.len().min(5)],
            b.log()
        );
    });
}

/// Issue 21, item 2: a tenant's spend spans every input partition, and another instance may
/// hold some of them. The spend ledger follows the whole `spend` changelog: a change written
/// to a partition this instance does not hold (as the instance holding it writes it) counts in
/// the tenant's spend here, a newer change of that partition replaces it, and a tombstone
/// clears it.
#[test]
fn the_spend_ledger_sums_partitions_other_instances_hold_from_the_changelog() {
    use rdkafka::producer::FutureRecord;
    use verdict_runtime::engine::{RecordState, Stores};
    use verdict_runtime::inference::budget::{BudgetSettings, Cap, Ledger, STORE, Spent, Window};

    run(120, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        let changelog = topology.topic("verdict-document-analyzer-spend-changelog");
        let stores = Stores::declared([(STORE.to_string(), changelog.clone())].into());
        let store = stores
            .open::<Spent>("document-analyzer", STORE)
            .expect("store");
        store.open_empty(0);
        let settings = BudgetSettings {
            default: Some(Cap {
                hard_usd: Some(1.0),
                ..Cap::default()
            }),
            ..BudgetSettings::default()
        };
        let metrics = verdict_runtime::metrics::Metrics::new("test");
        let ledger = Ledger::new(settings, store, metrics);
        ledger.follow(&stack.broker.kafka()).expect("follows");

        let now = verdict_runtime::now_ms();
        let (start, end) = Window::Day.bounds(now);
        ledger
            .charge(&RecordState::detached(0, 0, Some(now)), "acme", now, 0.25)
            .expect("charged here");
        let producer = stack.broker.kafka().producer().expect("producer");
        let write = |partition: i32, usd: Option<f64>| {
            let value = usd.map(|usd| {
                serde_json::to_vec(&Spent {
                    window_start_ms: start,
                    window_end_ms: end,
                    usd,
                })
                .expect("json")
            });
            let (producer, topic) = (producer.clone(), changelog.clone());
            async move {
                let mut record = FutureRecord::<[u8], Vec<u8>>::to(&topic)
                    .partition(partition)
                    .key(b"acme".as_slice());
                if let Some(v) = &value {
                    record = record.payload(v);
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("written");
            }
        };
        let until = |want: f64| {
            let ledger = &ledger;
            async move {
                let began = std::time::Instant::now();
                loop {
                    let spent = ledger.spent("acme", now);
                    if (spent - want).abs() < 1e-9 {
                        return;
                    }
                    assert!(
                        began.elapsed() < Duration::from_secs(20),
                        "spent {spent}, want {want}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        write(1, Some(0.5)).await;
        until(0.75).await;
        write(1, Some(0.875)).await;
        until(1.125).await;
        assert!(
            matches!(
                ledger.standing("acme", now),
                verdict_runtime::inference::budget::Standing::Hard { .. }
            ),
            "past the cap over both partitions, though $0.25 of it is here"
        );
        write(1, None).await;
        until(0.25).await;
    });
}
