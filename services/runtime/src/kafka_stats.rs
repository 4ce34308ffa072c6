//! librdkafka's own statistics (emitted every `statistics.interval.ms`) as Prometheus
//! metrics of the engine's clients: round trips and request queues per broker, the client's
//! message queue, and the consumer's fetch queue and fetch lag per assigned partition. Series are
//! bounded by the brokers and the partitions assigned now (the consumer's are replaced at each
//! report, so a partition that moved away leaves none behind).

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::statistics::{Statistics, Window};

use crate::metrics::PartitionLabel;

/// What librdkafka's statistics are taken as defaults by the engine's clients (the user's
/// `kafka.properties` can change or, with 0, stop them).
pub const STATISTICS_INTERVAL_MS: &str = "15000";

/// Which of the engine's clients reported.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    Consumer,
    Producer,
}

impl Client {
    fn as_str(self) -> &'static str {
        match self {
            Client::Consumer => "consumer",
            Client::Producer => "producer",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    pub client: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabel {
    pub client: Cow<'static, str>,
    /// The broker's node id.
    pub broker: String,
}

type Seconds = Gauge<f64, AtomicU64>;

#[derive(Default)]
pub struct KafkaStats {
    rtt_avg: Family<BrokerLabel, Seconds>,
    rtt_p99: Family<BrokerLabel, Seconds>,
    outbuf: Family<BrokerLabel, Gauge>,
    waitresp: Family<BrokerLabel, Gauge>,
    queue_messages: Family<ClientLabel, Gauge>,
    queue_bytes: Family<ClientLabel, Gauge>,
    fetch_lag: Family<PartitionLabel, Gauge>,
    fetch_queue: Family<PartitionLabel, Gauge>,
}

impl KafkaStats {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "kafka_broker_rtt_seconds",
            "Average round trip of requests to each broker in the last statistics interval (librdkafka), by client",
            self.rtt_avg.clone(),
        );
        r.register(
            "kafka_broker_rtt_p99_seconds",
            "99th percentile round trip of requests to each broker in the last statistics interval (librdkafka), by client",
            self.rtt_p99.clone(),
        );
        r.register(
            "kafka_broker_outbuf_requests",
            "Requests waiting to be sent to each broker (librdkafka), by client",
            self.outbuf.clone(),
        );
        r.register(
            "kafka_broker_waitresp_requests",
            "Requests sent to each broker and waiting for its answer (librdkafka), by client",
            self.waitresp.clone(),
        );
        r.register(
            "kafka_client_queue_messages",
            "Messages in the client's queues (the producer's not yet acknowledged), by client",
            self.queue_messages.clone(),
        );
        r.register(
            "kafka_client_queue_bytes",
            "Bytes of the messages in the client's queues, by client",
            self.queue_bytes.clone(),
        );
        r.register(
            "kafka_consumer_fetch_lag_records",
            "Records between the consumer's fetch position and the partition's high watermark, as librdkafka last saw them, by assigned partition",
            self.fetch_lag.clone(),
        );
        r.register(
            "kafka_consumer_fetch_queue_records",
            "Records fetched and waiting in librdkafka for the engine, by assigned partition",
            self.fetch_queue.clone(),
        );
    }

    /// Takes one report of `client`.
    pub fn observe(&self, client: Client, s: &Statistics) {
        let name = Cow::Borrowed(client.as_str());
        for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = BrokerLabel {
                client: name.clone(),
                broker: b.nodeid.to_string(),
            };
            let seconds = |w: &Window, v: i64| (w.cnt > 0).then(|| v as f64 / 1e6);
            if let Some(rtt) = &b.rtt {
                if let Some(avg) = seconds(rtt, rtt.avg) {
                    self.rtt_avg.get_or_create(&label).set(avg);
                }
                if let Some(p99) = seconds(rtt, rtt.p99) {
                    self.rtt_p99.get_or_create(&label).set(p99);
                }
            }
            self.outbuf.get_or_create(&label).set(b.outbuf_cnt);
            self.waitresp.get_or_create(&label).set(b.waitresp_cnt);
        }
        let label = ClientLabel { client: name };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_messages
            .get_or_create(&label)
            .set(count(s.msg_cnt));
        self.queue_bytes
            .get_or_create(&label)
            .set(count(s.msg_size));
        if let Client::Consumer = client {
            self.fetch_lag.clear();
            self.fetch_queue.clear();
            let assigned = s.topics.values().flat_map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired)
                    .map(move |p| (t, p))
            });
            for (t, p) in assigned {
                let label = PartitionLabel {
                    topic: t.topic.clone(),
                    partition: p.partition,
                };
                // Both known once the partition was fetched from (-1 before).
                if p.hi_offset >= 0 && p.next_offset >= 0 {
                    self.fetch_lag
                        .get_or_create(&label)
                        .set((p.hi_offset - p.next_offset).max(0));
                }
                self.fetch_queue.get_or_create(&label).set(p.fetchq_cnt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer's report as librdkafka writes it, cut to what is read here.
    fn report() -> Statistics {
        let json = serde_json::json!({
            "name": "rdkafka#consumer-1", "client_id": "rdkafka", "type": "consumer",
            "ts": 1, "time": 1, "age": 1, "replyq": 0, "msg_cnt": 3, "msg_size": 300,
            "msg_max": 100000, "msg_size_max": 1000000, "tx": 1, "tx_bytes": 1, "rx": 1,
            "rx_bytes": 1, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0, "rxmsg_bytes": 0,
            "simple_cnt": 0, "metadata_cache_cnt": 1,
            "brokers": {
                "127.0.0.1:9092/1": broker(1, 2500),
                "127.0.0.1:9092/bootstrap": broker(-1, 0),
            },
            "topics": {
                "transactions": {
                    "topic": "transactions", "age": 1, "metadata_age": 1,
                    "batchsize": window(0, 0), "batchcnt": window(0, 0),
                    "partitions": {
                        "0": partition(0, true, 58),
                        "1": partition(1, false, 93),
                        "-1": partition(-1, false, -1),
                    }
                }
            }
        });
        serde_json::from_value(json).expect("librdkafka's statistics")
    }

    fn window(cnt: i64, avg: i64) -> serde_json::Value {
        serde_json::json!({"min": avg, "max": avg, "avg": avg, "sum": avg * cnt, "cnt": cnt,
            "stddev": 0, "hdrsize": 0, "p50": avg, "p75": avg, "p90": avg, "p95": avg,
            "p99": avg * 2, "p99_99": avg * 2, "outofrange": 0})
    }

    fn broker(id: i32, rtt_us: i64) -> serde_json::Value {
        serde_json::json!({"name": "127.0.0.1:9092", "nodeid": id, "nodename": "127.0.0.1:9092",
            "source": "learned", "state": "UP", "stateage": 1, "outbuf_cnt": 2,
            "outbuf_msg_cnt": 0, "waitresp_cnt": 1, "waitresp_msg_cnt": 0, "tx": 1,
            "txbytes": 1, "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0, "rx": 1,
            "rxbytes": 1, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0, "rxidle": 0,
            "req": {}, "zbuf_grow": 0, "buf_grow": 0, "rtt": window(i64::from(id > 0), rtt_us),
            "toppars": {}})
    }

    fn partition(p: i32, desired: bool, next: i64) -> serde_json::Value {
        serde_json::json!({"partition": p, "broker": 1, "leader": 1, "desired": desired,
            "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
            "xmit_msgq_bytes": 0, "fetchq_cnt": 5, "fetchq_size": 500, "fetch_state": "active",
            "query_offset": 0, "next_offset": next, "app_offset": 0, "stored_offset": 0,
            "committed_offset": 0, "eof_offset": 0, "lo_offset": 0, "hi_offset": 100,
            "ls_offset": 100, "consumer_lag": -1, "consumer_lag_stored": -1, "txmsgs": 0,
            "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0,
            "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0})
    }

    #[test]
    fn a_report_becomes_one_series_per_broker_and_assigned_partition() {
        let stats = KafkaStats::default();
        let mut r = Registry::default();
        stats.register(&mut r);
        stats.observe(Client::Consumer, &report());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        for line in [
            r#"kafka_broker_rtt_seconds{client="consumer",broker="1"} 0.0025"#,
            r#"kafka_broker_rtt_p99_seconds{client="consumer",broker="1"} 0.005"#,
            r#"kafka_broker_outbuf_requests{client="consumer",broker="1"} 2"#,
            r#"kafka_client_queue_messages{client="consumer"} 3"#,
            r#"kafka_consumer_fetch_lag_records{topic="transactions",partition="0"} 42"#,
            r#"kafka_consumer_fetch_queue_records{topic="transactions",partition="0"} 5"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // The bootstrap broker (no node id yet), partitions not assigned here, and
        // librdkafka's internal partition -1 make no series.
        assert!(!text.contains(r#"broker="-1""#), "{text}");
        assert!(!text.contains(r#"partition="1""#), "{text}");
        assert!(!text.contains(r#"partition="-1""#), "{text}");
    }
}
