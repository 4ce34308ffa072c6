//! verdict checked against Apache Kafka's own tools, run from the installed jars through
//! `verdict kafka NAME …`: `kafka-consumer-groups --describe` sees the fraud-detector's group
//! with the offsets it committed and the lag it left.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use harness::{ServiceProcess, Stack, Topology, apply_topology, deployment, kafka_tool_table, run};
use verdict_cli::records::{AvroProducer, sample_transaction};

/// One row of `kafka-consumer-groups --describe` for a topic partition.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    current: Option<i64>,
    log_end: i64,
    lag: Option<i64>,
    consumer: String,
}

/// `kafka-consumer-groups --describe --group GROUP`: its rows for `topic` by partition.
/// Kafka prints `-` for an offset or lag it does not know.
fn describe(stack: &Stack, group: &str, topic: &str) -> BTreeMap<i32, Row> {
    let number = |s: &str| s.parse::<i64>().ok();
    kafka_tool_table(
        stack,
        "consumer-groups",
        &["--describe", "--group", group],
        "GROUP",
    )
    .into_iter()
    .filter(|r| r["TOPIC"] == topic)
    .map(|r| {
        (
            r["PARTITION"].parse().expect("partition"),
            Row {
                current: number(&r["CURRENT-OFFSET"]),
                log_end: number(&r["LOG-END-OFFSET"]).expect("log-end offset"),
                lag: number(&r["LAG"]),
                consumer: r.get("CONSUMER-ID").cloned().unwrap_or_else(|| "-".into()),
            },
        )
    })
    .collect()
}

async fn produce(stack: &Stack, topology: &Topology, n: usize) -> BTreeMap<i32, i64> {
    let producer =
        AvroProducer::new(&stack.broker.kafka(), stack.registry_url()).expect("producer");
    let mut rng = rand::rng();
    let mut per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for _ in 0..n {
        let (key, value) = sample_transaction(&mut rng, "tenant-tools");
        let d = producer
            .send(&topology.topic("transactions"), &key, &value)
            .await
            .expect("produce");
        *per_partition.entry(d.partition).or_default() += 1;
    }
    per_partition
}

#[test]
fn kafka_consumer_groups_sees_the_committed_offsets_and_the_lag() {
    run(240, async {
        let stack = Stack::start().await;
        let topology = apply_topology(&stack, None).await;
        // Dynamic membership: a clean stop leaves the group at once (a static member, the
        // default, would stay listed until its session times out).
        let mut svc = ServiceProcess::spawn::<fraud_detector::Spec>(
            &deployment(&stack, &topology, None),
            |s| s.engine.group_instance_id = String::new(),
        );
        svc.wait_ready(Duration::from_secs(30)).await;
        let group = topology.group("verdict-fraud-detector");
        let input = topology.topic("transactions");

        let first = produce(&stack, &topology, 120).await;
        // Wait until the service has committed everything it read (commits are periodic).
        let start = Instant::now();
        let rows = loop {
            let rows = describe(&stack, &group, &input);
            let settled = rows.len() == 6 && rows.values().all(|r| r.lag == Some(0));
            if settled {
                break rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the group never caught up: {rows:?}\n{}",
                svc.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for (p, row) in &rows {
            let produced = first.get(p).copied().unwrap_or(0);
            assert_eq!(
                row.log_end, produced,
                "partition {p}: log end = what we produced"
            );
            assert_eq!(
                row.current,
                Some(produced),
                "partition {p}: committed to the end"
            );
            assert_ne!(
                row.consumer, "-",
                "partition {p} has an owner while the service runs"
            );
        }
        assert_eq!(svc.metric("verdict_records_in_total").await, 120.0);

        // Stopped cleanly: the commits stay where they were and new events show up as lag.
        assert_eq!(
            svc.terminate(Duration::from_secs(30)),
            Some(0),
            "{}",
            svc.log()
        );
        let second = produce(&stack, &topology, 30).await;
        let rows = describe(&stack, &group, &input);
        let lag: i64 = rows.values().map(|r| r.lag.unwrap_or(-1)).sum();
        assert_eq!(lag, 30, "{rows:?}");
        for (p, row) in &rows {
            let before = first.get(p).copied().unwrap_or(0);
            let after = before + second.get(p).copied().unwrap_or(0);
            assert_eq!(row.current, Some(before), "partition {p}");
            assert_eq!(row.log_end, after, "partition {p}");
            assert_eq!(row.lag, Some(after - before), "partition {p}");
        }
        let owners: HashSet<&str> = rows.values().map(|r| r.consumer.as_str()).collect();
        assert_eq!(owners, HashSet::from(["-"]), "no member after a clean stop");
    });
}
