//! Prometheus metrics of a service, in the OpenMetrics text format at `/metrics`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
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
pub struct ModelOutcomeLabel {
    pub model: String,
    pub endpoint: String,
    /// `ok`, or the error's class (`timeout`, `http_429`, `circuit_open`, …).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
    /// A server's base URL (from settings, so bounded), or `in-process`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantModelLabel {
    pub tenant: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLimitLabel {
    pub tenant: String,
    /// `soft` or `hard`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantTokensLabel {
    pub tenant: String,
    pub model: String,
    /// `input` (prompt) or `output` (completion).
    pub direction: &'static str,
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

/// The tenants named in metric labels; the rest are counted as [`OTHER_TENANTS`].
pub const DEFAULT_TENANT_LABELS: usize = 100;
/// The `tenant` label of every tenant past the first `telemetry.tenant_labels`.
pub const OTHER_TENANTS: &str = "_other";

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
    pub stage_errors: Family<StageLabel, Counter>,
    pub model_calls: Family<ModelOutcomeLabel, Counter>,
    pub model_call_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub inference_calls: Family<TenantModelLabel, Counter>,
    pub inference_tokens: Family<TenantTokensLabel, Counter>,
    pub inference_cost: Family<TenantModelLabel, Counter<f64, AtomicU64>>,
    pub budget_exceeded: Family<TenantLimitLabel, Counter>,
    /// Tenants given their own label so far, and how many may be.
    tenants: Mutex<HashSet<String>>,
    tenant_labels: AtomicUsize,
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
            stage_errors: Family::default(),
            model_calls: Family::default(),
            model_call_seconds: Family::new_with_constructor(stage_histogram),
            inference_calls: Family::default(),
            inference_tokens: Family::default(),
            inference_cost: Family::default(),
            budget_exceeded: Family::default(),
            tenants: Mutex::new(HashSet::new()),
            tenant_labels: AtomicUsize::new(DEFAULT_TENANT_LABELS),
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
                "stage_errors",
                "Stages that ended in an error, by stage (a model stage's error may still be decided by a fallback)",
                m.stage_errors.clone(),
            );
            r.register(
                "model_calls",
                "Calls of a model (each retry is a call), by model, endpoint and outcome (ok or the error's class)",
                m.model_calls.clone(),
            );
            r.register(
                "model_call_duration_seconds",
                "Time of one call of a model, answered or not, by model and endpoint",
                m.model_call_seconds.clone(),
            );
            r.register(
                "inference_calls",
                "Model calls made for records, by tenant and model (a cached answer is no call)",
                m.inference_calls.clone(),
            );
            r.register(
                "inference_tokens",
                "Tokens sent to (input) and generated by (output) models for records, by tenant and model",
                m.inference_tokens.clone(),
            );
            r.register(
                "inference_cost",
                "Estimated cost of model calls in US dollars from the [pricing] table, by tenant and model",
                m.inference_cost.clone(),
            );
            r.register(
                "budget_exceeded",
                "Records of a tenant past its soft or hard spend limit ([service.budgets])",
                m.budget_exceeded.clone(),
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

    /// A stage that ended in an error.
    pub fn stage_failed(&self, stage: &'static str) {
        self.stage_errors
            .get_or_create(&StageLabel {
                stage: std::borrow::Cow::Borrowed(stage),
            })
            .inc();
    }

    /// One call of `model` at `endpoint`: how it ended (`ok` or an error class) and how long
    /// it took.
    pub fn observe_model_call(
        &self,
        model: &str,
        endpoint: &str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.model_calls
            .get_or_create(&ModelOutcomeLabel {
                model: model.to_string(),
                endpoint: endpoint.to_string(),
                outcome,
            })
            .inc();
        self.model_call_seconds
            .get_or_create(&ModelLabel {
                model: model.to_string(),
                endpoint: endpoint.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// At most `n` tenants get a label of their own (`telemetry.tenant_labels`).
    pub fn limit_tenant_labels(&self, n: usize) {
        self.tenant_labels.store(n, Ordering::Relaxed);
    }

    /// The `tenant` label of `tenant`: its name while fewer than the limit are named,
    /// [`OTHER_TENANTS`] after, so a stream of tenant ids cannot grow the series without bound.
    pub fn tenant_label(&self, tenant: &str) -> String {
        let Ok(mut named) = self.tenants.lock() else {
            return OTHER_TENANTS.to_string();
        };
        if named.contains(tenant) {
            return tenant.to_string();
        }
        if named.len() < self.tenant_labels.load(Ordering::Relaxed) {
            named.insert(tenant.to_string());
            return tenant.to_string();
        }
        OTHER_TENANTS.to_string()
    }

    /// One record's use of `model` for `tenant`, and its cost when the model has a price.
    pub fn record_inference(
        &self,
        tenant: &str,
        model: &str,
        usage: &crate::inference::pricing::Usage,
        cost: Option<f64>,
    ) {
        let tenant = self.tenant_label(tenant);
        let label = TenantModelLabel {
            tenant,
            model: model.to_string(),
        };
        self.inference_calls
            .get_or_create(&label)
            .inc_by(usage.calls);
        for (direction, tokens) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if tokens > 0 {
                self.inference_tokens
                    .get_or_create(&TenantTokensLabel {
                        tenant: label.tenant.clone(),
                        model: label.model.clone(),
                        direction,
                    })
                    .inc_by(tokens);
            }
        }
        if let Some(cost) = cost {
            self.inference_cost.get_or_create(&label).inc_by(cost);
        }
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

    /// Runs a synchronous stage that may fail; a failure is counted in `stage_errors_total`.
    pub fn try_stage<T, E>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let out = self.stage(name, f);
        if out.is_err() {
            self.metrics.stage_failed(name);
        }
        out
    }

    /// Runs an asynchronous stage that may fail; a failure is counted in `stage_errors_total`.
    pub async fn try_stage_async<T, E>(
        &mut self,
        name: &'static str,
        stage: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let out = self.stage_async(name, stage).await;
        if out.is_err() {
            self.metrics.stage_failed(name);
        }
        out
    }

    /// How long the last stage took.
    pub fn last_stage(&self) -> Duration {
        self.stages
            .last()
            .map_or(Duration::ZERO, |s| Duration::from_micros(s.micros))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_limit_share_one_label() {
        let m = Metrics::new("test");
        m.limit_tenant_labels(2);
        assert_eq!(m.tenant_label("a"), "a");
        assert_eq!(m.tenant_label("b"), "b");
        assert_eq!(m.tenant_label("c"), OTHER_TENANTS);
        assert_eq!(m.tenant_label("a"), "a", "a named tenant keeps its label");
    }

    #[test]
    fn failed_stages_are_counted_by_stage() {
        let m = Metrics::new("test");
        let mut t = StageTimings::new(&m);
        let _ = t.try_stage("validate", || Ok::<_, ()>(1));
        let _ = t.try_stage("rules", || Err::<(), _>("no store"));
        let _ = t.try_stage("rules", || Err::<(), _>("no store"));
        let text = m.encode();
        assert!(
            text.lines()
                .any(|l| l == r#"verdict_stage_errors_total{service="test",stage="rules"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"verdict_stage_errors_total{service="test",stage="validate"}"#));
        assert_eq!(t.stages.len(), 3, "failed stages are timed too");
    }
}
