//! The monitor: polls the groups, keeps a window of samples per partition and a short
//! history per group, judges them ([`crate::evaluate`]), and publishes the result as
//! kafka-lag-exporter's metrics and as the dashboard's JSON.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use verdict_runtime::groups::{GroupLag, GroupReader};
use verdict_runtime::metrics::Metrics;

use crate::config::{self, LagMonitorSettings};
use crate::evaluate::{Owner, Sample, Status, evaluate};

type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

// kafka-lag-exporter's names (gauges; the exposition adds nothing to them).
pub const OFFSET: &str = "kafka_consumergroup_group_offset";
pub const LAG: &str = "kafka_consumergroup_group_lag";
pub const LAG_SECONDS: &str = "kafka_consumergroup_group_lag_seconds";
pub const MAX_LAG: &str = "kafka_consumergroup_group_max_lag";
pub const MAX_LAG_SECONDS: &str = "kafka_consumergroup_group_max_lag_seconds";
pub const SUM_LAG: &str = "kafka_consumergroup_group_sum_lag";
pub const TOPIC_SUM_LAG: &str = "kafka_consumergroup_group_topic_sum_lag";
pub const STATUS: &str = "kafka_consumergroup_group_status";
pub const POLL_SECONDS: &str = "kafka_lag_monitor_poll_duration_seconds";
/// Every metric the monitor exports.
pub const METRICS: [&str; 9] = [
    OFFSET,
    LAG,
    LAG_SECONDS,
    MAX_LAG,
    MAX_LAG_SECONDS,
    SUM_LAG,
    TOPIC_SUM_LAG,
    STATUS,
    POLL_SECONDS,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    cluster_name: String,
    group: String,
    topic: String,
    partition: String,
    member_host: String,
    consumer_id: String,
    client_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    cluster_name: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    cluster_name: String,
    group: String,
    topic: String,
}

/// kafka-lag-exporter's metric names, plus a status gauge.
#[derive(Default)]
struct LagMetrics {
    offset: Family<PartitionLabels, Gauge>,
    lag: Family<PartitionLabels, Gauge>,
    lag_seconds: Family<PartitionLabels, F64Gauge>,
    max_lag: Family<GroupLabels, Gauge>,
    max_lag_seconds: Family<GroupLabels, F64Gauge>,
    sum_lag: Family<GroupLabels, Gauge>,
    topic_sum_lag: Family<TopicLabels, Gauge>,
    status: Family<GroupLabels, Gauge>,
    poll_seconds: F64Gauge,
}

/// One partition on the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    /// `None` when the group never committed here.
    pub committed: Option<i64>,
    pub log_end: i64,
    /// From the committed offset, or from the log start when the group never committed.
    pub lag: i64,
    pub lag_seconds: Option<f64>,
    pub status: Status,
    pub client_id: Option<String>,
}

/// One point of a group's history.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub at_ms: i64,
    pub lag: i64,
    pub lag_seconds: f64,
    committed_sum: i64,
    end_sum: i64,
}

/// One group on the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: usize,
    /// The worst partition's status.
    pub status: Status,
    pub total_lag: i64,
    pub max_lag_seconds: f64,
    /// Records per second committed / produced over the last minute.
    pub consume_rate: f64,
    pub produce_rate: f64,
    /// At the current rates; `None` when the lag is not shrinking.
    pub time_to_clear_seconds: Option<f64>,
    pub partitions: Vec<PartitionView>,
    pub history: Vec<Point>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub at_ms: i64,
    pub groups: Vec<GroupView>,
    /// The last poll's error, if it failed.
    pub error: Option<String>,
}

#[derive(Default)]
struct Track {
    window: VecDeque<Sample>,
    last_committed: Option<i64>,
    last_move_ms: i64,
}

#[derive(Default)]
struct State {
    tracks: BTreeMap<(String, String, i32), Track>,
    history: BTreeMap<String, VecDeque<Point>>,
    snapshot: Snapshot,
}

#[derive(Clone)]
pub struct Monitor {
    settings: config::Monitor,
    reader: GroupReader,
    state: Arc<Mutex<State>>,
    metrics: Arc<LagMetrics>,
}

impl Monitor {
    pub fn new(settings: &LagMonitorSettings) -> Result<Self, String> {
        Ok(Self {
            settings: settings.monitor.clone(),
            reader: GroupReader::new(&settings.kafka).map_err(|e| e.to_string())?,
            state: Arc::default(),
            metrics: Arc::default(),
        })
    }

    pub fn register_metrics(&self, metrics: &Metrics) {
        let m = self.metrics.clone();
        metrics.register_external(|r| {
            r.register(OFFSET, "Last committed offset of a partition", m.offset.clone());
            r.register(LAG, "Lag in messages of a partition (log-end offset - committed offset)", m.lag.clone());
            r.register(LAG_SECONDS, "Lag in seconds of a partition: age of the record at the committed offset (0 when caught up)", m.lag_seconds.clone());
            r.register(MAX_LAG, "Largest lag in messages of a group's partitions", m.max_lag.clone());
            r.register(MAX_LAG_SECONDS, "Largest lag in seconds of a group's partitions", m.max_lag_seconds.clone());
            r.register(SUM_LAG, "Sum of a group's lag in messages", m.sum_lag.clone());
            r.register(TOPIC_SUM_LAG, "Sum of a group's lag in messages on a topic", m.topic_sum_lag.clone());
            r.register(STATUS, "Burrow status of the group's worst partition: 0 OK, 1 WARNING, 2 REWIND, 3 STALL, 4 STOP", m.status.clone());
            r.register(POLL_SECONDS, "How long the last poll of every group took", m.poll_seconds.clone());
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    /// Polls until `stop` resolves.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), String> {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.poll_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    /// One poll of every watched group.
    pub async fn poll(&self) {
        let began = std::time::Instant::now();
        match self.read().await {
            Ok(lags) => self.update(&lags),
            Err(e) => {
                tracing::warn!(error = %e, "polling the consumer groups failed");
                self.lock().snapshot.error = Some(e);
            }
        }
        self.metrics.poll_seconds.set(began.elapsed().as_secs_f64());
    }

    async fn read(&self) -> Result<Vec<GroupLag>, String> {
        let names: Vec<String> = if self.settings.groups.is_empty() {
            self.reader
                .list()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|g| g.group)
                .filter(|g| !is_tool_group(g))
                .collect()
        } else {
            self.settings.groups.clone()
        };
        let described = self
            .reader
            .describe_many(&names)
            .await
            .map_err(|e| e.to_string());
        self.reader.retain_clients(&names);
        described
    }

    fn update(&self, lags: &[GroupLag]) {
        let mut state = self.lock();
        let state = &mut *state;
        let window = self.settings.window;
        let keep_ms = i64::try_from(self.settings.history_seconds * 1000).unwrap_or(i64::MAX);
        let m = &self.metrics;
        for f in [&m.offset, &m.lag] {
            f.clear();
        }
        m.lag_seconds.clear();
        for f in [&m.max_lag, &m.sum_lag, &m.status] {
            f.clear();
        }
        m.max_lag_seconds.clear();
        m.topic_sum_lag.clear();
        let cluster = self.settings.cluster_name.clone();
        let mut views = Vec::with_capacity(lags.len());
        let mut seen = std::collections::BTreeSet::new();
        for g in lags {
            let mut partitions = Vec::with_capacity(g.partitions.len());
            let mut topic_sums: BTreeMap<&str, i64> = BTreeMap::new();
            let mut committed_sum = 0;
            for p in &g.partitions {
                let key = (g.group.clone(), p.topic.clone(), p.partition);
                seen.insert(key.clone());
                // Never committed: verdict's services start at the earliest offset, so all
                // the partition holds is still ahead of the group.
                let (committed, lag) = match (p.committed, p.lag) {
                    (Some(c), Some(l)) => (c, l),
                    _ => (p.log_start, (p.log_end - p.log_start).max(0)),
                };
                let t = state.tracks.entry(key).or_default();
                if t.last_committed != Some(committed) {
                    t.last_committed = Some(committed);
                    t.last_move_ms = g.at_ms;
                }
                t.window.push_back(Sample {
                    at_ms: g.at_ms,
                    committed,
                    lag,
                });
                while t.window.len() > window {
                    t.window.pop_front();
                }
                let samples: Vec<Sample> = t.window.iter().copied().collect();
                let owner = match (&p.member_id, g.members.is_empty()) {
                    (Some(_), _) => Owner::Member,
                    (None, false) => Owner::Nobody,
                    (None, true) => Owner::NoMembers,
                };
                let status = evaluate(
                    &samples,
                    owner,
                    t.last_move_ms,
                    g.at_ms,
                    self.settings.stop_after_ms,
                );
                let labels = PartitionLabels {
                    cluster_name: cluster.clone(),
                    group: g.group.clone(),
                    topic: p.topic.clone(),
                    partition: p.partition.to_string(),
                    member_host: p.host.clone().unwrap_or_default(),
                    consumer_id: p.member_id.clone().unwrap_or_default(),
                    client_id: p.client_id.clone().unwrap_or_default(),
                };
                if let Some(c) = p.committed {
                    m.offset.get_or_create(&labels).set(c);
                }
                m.lag.get_or_create(&labels).set(lag);
                *topic_sums.entry(&p.topic).or_default() += lag;
                if let Some(s) = p.lag_seconds {
                    m.lag_seconds.get_or_create(&labels).set(s);
                }
                partitions.push(PartitionView {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed: p.committed,
                    log_end: p.log_end,
                    lag,
                    lag_seconds: p.lag_seconds,
                    status,
                    client_id: p.client_id.clone(),
                });
                committed_sum += committed;
            }
            let status = partitions
                .iter()
                .map(|p| p.status)
                .max()
                .unwrap_or(Status::Ok);
            let total_lag = partitions.iter().map(|p| p.lag).sum();
            let glabels = GroupLabels {
                cluster_name: cluster.clone(),
                group: g.group.clone(),
            };
            m.max_lag
                .get_or_create(&glabels)
                .set(partitions.iter().map(|p| p.lag).max().unwrap_or(0));
            m.max_lag_seconds
                .get_or_create(&glabels)
                .set(g.max_lag_seconds());
            m.sum_lag.get_or_create(&glabels).set(total_lag);
            m.status.get_or_create(&glabels).set(status as i64);
            for (topic, sum) in topic_sums {
                m.topic_sum_lag
                    .get_or_create(&TopicLabels {
                        cluster_name: cluster.clone(),
                        group: g.group.clone(),
                        topic: topic.to_string(),
                    })
                    .set(sum);
            }
            let history = state.history.entry(g.group.clone()).or_default();
            history.push_back(Point {
                at_ms: g.at_ms,
                lag: total_lag,
                lag_seconds: g.max_lag_seconds(),
                committed_sum,
                end_sum: g.partitions.iter().map(|p| p.log_end).sum(),
            });
            while history.front().is_some_and(|p| g.at_ms - p.at_ms > keep_ms) {
                history.pop_front();
            }
            let (consume_rate, produce_rate) = rates(history, 60_000);
            views.push(GroupView {
                group: g.group.clone(),
                state: g.state.clone(),
                members: g.members.len(),
                status,
                total_lag,
                max_lag_seconds: g.max_lag_seconds(),
                consume_rate,
                produce_rate,
                time_to_clear_seconds: time_to_clear(total_lag, consume_rate, produce_rate),
                partitions,
                history: history.iter().copied().collect(),
            });
        }
        state.tracks.retain(|k, _| seen.contains(k));
        let groups: std::collections::BTreeSet<&String> = lags.iter().map(|g| &g.group).collect();
        state.history.retain(|g, _| groups.contains(g));
        state.snapshot = Snapshot {
            at_ms: verdict_runtime::now_ms(),
            groups: views,
            error: None,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Groups verdict's own tools create, which the monitor leaves out unless asked.
fn is_tool_group(g: &str) -> bool {
    g.starts_with("verdict-reader-") || g.starts_with("verdict-redrive-") || g == "verdict-metadata"
}

/// Records per second committed and produced between the newest point and the oldest one
/// within `span_ms` of it.
fn rates(history: &VecDeque<Point>, span_ms: i64) -> (f64, f64) {
    let Some(last) = history.back() else {
        return (0.0, 0.0);
    };
    let Some(first) = history.iter().find(|p| last.at_ms - p.at_ms <= span_ms) else {
        return (0.0, 0.0);
    };
    let dt = (last.at_ms - first.at_ms) as f64 / 1000.0;
    if dt <= 0.0 {
        return (0.0, 0.0);
    }
    (
        (last.committed_sum - first.committed_sum).max(0) as f64 / dt,
        (last.end_sum - first.end_sum).max(0) as f64 / dt,
    )
}

/// Seconds until the lag is gone at these rates; `None` when it is not shrinking.
fn time_to_clear(lag: i64, consume: f64, produce: f64) -> Option<f64> {
    if lag <= 0 {
        return Some(0.0);
    }
    let net = consume - produce;
    (net > 0.0).then(|| lag as f64 / net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64, committed_sum: i64, end_sum: i64) -> Point {
        Point {
            at_ms,
            lag: end_sum - committed_sum,
            lag_seconds: 0.0,
            committed_sum,
            end_sum,
        }
    }

    #[test]
    fn rates_use_the_last_minute() {
        let h: VecDeque<Point> = [
            point(0, 0, 0),
            point(50_000, 100, 1000),
            point(60_000, 300, 1100),
            point(70_000, 500, 1200),
        ]
        .into();
        let (consume, produce) = rates(&h, 60_000);
        assert!((consume - 20.0).abs() < 1e-9, "{consume}");
        assert!((produce - 10.0).abs() < 1e-9, "{produce}");
    }

    #[test]
    fn time_to_clear_only_when_the_lag_shrinks() {
        assert_eq!(time_to_clear(0, 0.0, 10.0), Some(0.0));
        assert_eq!(time_to_clear(100, 30.0, 10.0), Some(5.0));
        assert_eq!(time_to_clear(100, 10.0, 10.0), None);
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_the_monitor_exports() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../grafana/consumer-lag.json")).expect("JSON");
        assert_eq!(dash["uid"], "verdict-consumer-lag");
        let mut used = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                let names: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("kafka_"))
                    .collect();
                assert!(!names.is_empty(), "{expr}");
                for n in names {
                    assert!(METRICS.contains(&n), "{n} is not exported");
                    used += 1;
                }
            }
        }
        assert!(used >= 7);
    }

    #[test]
    fn tool_groups_are_left_out() {
        assert!(is_tool_group("verdict-reader-1234"));
        assert!(is_tool_group("verdict-redrive-abcdef"));
        assert!(!is_tool_group("verdict-fraud-detector"));
    }
}
