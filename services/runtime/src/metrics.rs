//! Prometheus metrics of a service, in the OpenMetrics text format at `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Borrowed for a look-up, so observing a stage allocates nothing.
    pub stage: std::borrow::Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorePartitionLabel {
    pub store: String,
    pub partition: i32,
}

fn stage_histogram() -> Histogram {
    // 50 µs … ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Every metric the runtime records, plus readiness flags.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Metrics under names other tools define (e.g. kafka-lag-exporter's), without the
    /// `verdict_` prefix and service label.
    external: Mutex<Registry>,
    pub records_in: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub processed: Family<OutcomeLabel, Counter>,
    pub dead_letters: Family<ErrorLabel, Counter>,
    pub dead_letter_stubs: Counter,
    pub stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub record_seconds: Histogram,
    pub inflight: Gauge,
    pub uncommitted: Family<PartitionLabel, Gauge>,
    pub commit_failures: Counter,
    pub guard_tripped: Gauge,
    pub assigned_partitions: Family<TopicLabel, Gauge>,
    pub state_restored_records: Family<StoreLabel, Counter>,
    pub state_restore_seconds: Family<StoreLabel, Counter<f64, AtomicU64>>,
    pub state_restore_remaining: Family<StorePartitionLabel, Gauge>,
    pub state_keys: Family<StoreLabel, Gauge>,
    /// librdkafka's statistics of the engine's clients.
    pub kafka: crate::kafka_stats::KafkaStats,
    ready: AtomicBool,
    pub last_commit_ms: AtomicI64,
}

impl Metrics {
    pub fn new(service: &str) -> Arc<Self> {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix_and_labels(
                "verdict",
                [(
                    std::borrow::Cow::Borrowed("service"),
                    std::borrow::Cow::Owned(service.to_string()),
                )]
                .into_iter(),
            )),
            external: Mutex::new(Registry::default()),
            records_in: Family::default(),
            records_out: Family::default(),
            processed: Family::default(),
            dead_letters: Family::default(),
            dead_letter_stubs: Counter::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            record_seconds: stage_histogram(),
            inflight: Gauge::default(),
            uncommitted: Family::default(),
            commit_failures: Counter::default(),
            guard_tripped: Gauge::default(),
            assigned_partitions: Family::default(),
            state_restored_records: Family::default(),
            state_restore_seconds: Family::default(),
            state_restore_remaining: Family::default(),
            state_keys: Family::default(),
            kafka: crate::kafka_stats::KafkaStats::default(),
            ready: AtomicBool::new(false),
            last_commit_ms: AtomicI64::new(0),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "records_in",
                "Records consumed, by topic",
                m.records_in.clone(),
            );
            r.register(
                "records_out",
                "Records produced, by topic",
                m.records_out.clone(),
            );
            r.register(
                "records_processed",
                "Records finished, by outcome (processed, retried, dead_lettered)",
                m.processed.clone(),
            );
            r.register(
                "dead_letters",
                "Records sent to the dead-letter topic, by error class",
                m.dead_letters.clone(),
            );
            r.register(
                "dead_letter_stubs",
                "Dead letters written as a stub (coordinates, size, hash, reason): the record's copy did not fit the topic",
                m.dead_letter_stubs.clone(),
            );
            r.register(
                "stage_duration_seconds",
                "Time spent in each pipeline stage",
                m.stage_seconds.clone(),
            );
            r.register(
                "record_duration_seconds",
                "Consume to outputs acknowledged, per record",
                m.record_seconds.clone(),
            );
            r.register(
                "inflight_records",
                "Records being processed",
                m.inflight.clone(),
            );
            r.register(
                "uncommitted_records",
                "Consumed records whose offsets are not committed yet, by partition",
                m.uncommitted.clone(),
            );
            r.register(
                "commit_failures",
                "Offset commits the broker did not confirm (their offsets are offered again)",
                m.commit_failures.clone(),
            );
            r.register(
                "dlq_guard_tripped",
                "1 while the dead-letter guard holds consumption",
                m.guard_tripped.clone(),
            );
            r.register(
                "assigned_partitions",
                "Partitions assigned to this instance",
                m.assigned_partitions.clone(),
            );
            r.register(
                "state_restored_records",
                "Changelog records read back into a state store, by store",
                m.state_restored_records.clone(),
            );
            r.register(
                "state_restore_seconds",
                "Time spent restoring state stores from their changelogs, by store",
                m.state_restore_seconds.clone(),
            );
            r.register(
                "state_restore_remaining_records",
                "Changelog records still to read by a restore in progress (its lag), by store and partition",
                m.state_restore_remaining.clone(),
            );
            r.register(
                "state_keys",
                "Keys a state store holds in memory, by store",
                m.state_keys.clone(),
            );
            m.kafka.register(&mut r);
        }
        Arc::new(m)
    }

    pub fn observe_stage(&self, stage: &'static str, elapsed: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabel {
                stage: std::borrow::Cow::Borrowed(stage),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.guard_tripped.get() == 0
    }

    /// Registers metrics under their own names (no prefix, no service label), for names
    /// that other tools define.
    pub fn register_external(&self, register: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.external.lock() {
            register(&mut r);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = text::encode_registry(&mut out, &r);
        }
        if let Ok(r) = self.external.lock() {
            let _ = text::encode_registry(&mut out, &r);
        }
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// One stage's time as the decision schemas carry it (`StageTiming`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StageTiming {
    pub stage: &'static str,
    pub micros: u64,
}

/// Per-stage wall-clock timings of one record, back to back (one clock read per stage):
/// kept for the decision (`stage_timings`) and observed in `stage_duration_seconds`. When the
/// record is traced, each stage also gets a `stage` span.
pub struct StageTimings<'a> {
    metrics: &'a Metrics,
    last: std::time::Instant,
    pub stages: Vec<StageTiming>,
}

impl<'a> StageTimings<'a> {
    pub fn new(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            last: std::time::Instant::now(),
            stages: Vec::with_capacity(6),
        }
    }

    /// Runs a synchronous stage, timed from the end of the one before.
    pub fn stage<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let out = crate::telemetry::stage_span(name).in_scope(f);
        self.done(name);
        out
    }

    /// Runs an asynchronous stage (a model call), timed from the end of the one before.
    pub async fn stage_async<T>(
        &mut self,
        name: &'static str,
        stage: impl std::future::Future<Output = T>,
    ) -> T {
        use tracing::Instrument as _;
        let out = stage.instrument(crate::telemetry::stage_span(name)).await;
        self.done(name);
        out
    }

    /// Ends stage `name` now; the next one is timed from here.
    fn done(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.last);
        self.last = now;
        self.metrics.observe_stage(name, elapsed);
        self.stages.push(StageTiming {
            stage: name,
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        });
    }
}
