//! The consumer engine: reads a service's input topic and its retry topics in a consumer
//! group, runs the service's [`Processor`] on every record, writes its outputs, and commits
//! an offset only once everything before it is done.
//!
//! One module per job:
//! - [`state`]: the pure state of the partitions (offsets, key order, held retries,
//!   backpressure, epochs), unit-tested without a broker;
//! - [`routing`]: where a failed record goes and the headers it carries (pure);
//! - [`worker`]: one record's I/O: decode, process, write outputs, route a failure;
//! - [`rebalance`]: the librdkafka callbacks, which only hand partitions to the loop and wait;
//! - [`runner`]: the loop that owns all state, and the thread that polls the consumer.
//!
//! Guarantees (see the README's "Processing guarantees"): at least once; key-ordered
//! parallelism within a partition; in-flight records and bytes bounded; a panicking record
//! is dead-lettered as `Panic`; retry records wait by pausing their partition, not by
//! holding in-flight slots; on revoke and shutdown nothing new starts, running records get
//! the drain deadline, stragglers are aborted, and what is done is committed; a failed
//! commit is offered again until the broker confirms it.

mod output;
pub mod progress;
mod rebalance;
pub mod routing;
mod runner;
pub mod state;
pub mod store;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ProcessError;
use crate::guard::GuardSettings;
use crate::kafka::KafkaError;
use crate::serde::{Codec, ValueSchema, Writer};
use crate::settings::SettingsError;
use crate::topology::{RetryStep, Service};

pub use runner::run;
pub use store::{RecordState, Store, StoreValue, Stores};

/// An input record, its value decoded into the processor's type.
#[derive(Debug)]
pub struct Incoming<'a, T> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The key as text (keys are UTF-8; other bytes are replaced).
    pub key: Option<&'a str>,
    pub value: T,
    /// The value's bytes as they arrived (Confluent-framed Avro), e.g. to hash for the audit.
    pub raw: &'a [u8],
    /// 1 for a record from the input topic, n for its n-th attempt from a retry topic.
    pub attempt: u32,
    /// The record's access to state stores, and what its earlier attempts remembered.
    pub state: &'a RecordState<'a>,
}

/// A topic the topology lets this service write, and the schema its values are written
/// with. Only [`Route::output`] makes one, so a service can write nowhere else, and asking for
/// an output the topology does not list fails at start-up. The schema is fetched from the
/// registry when the first record is written (and again after a failed fetch).
#[derive(Debug, Clone)]
pub struct OutputTopic(Arc<OutputSlot>);

#[derive(Debug)]
struct OutputSlot {
    name: String,
    schema: ValueSchema,
    writer: tokio::sync::OnceCell<Writer>,
    /// `verdict_records_out_total` of this topic, looked up once.
    records_out: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl PartialEq for OutputTopic {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name && self.0.schema == other.0.schema
    }
}

impl Eq for OutputTopic {}

impl OutputTopic {
    fn new(name: &str, schema: ValueSchema) -> Self {
        Self(Arc::new(OutputSlot {
            name: name.to_string(),
            schema,
            writer: tokio::sync::OnceCell::new(),
            records_out: std::sync::OnceLock::new(),
        }))
    }

    pub(crate) fn records_out(
        &self,
        metrics: &crate::metrics::Metrics,
    ) -> &prometheus_client::metrics::counter::Counter {
        self.0.records_out.get_or_init(|| {
            metrics
                .records_out
                .get_or_create(&crate::metrics::TopicLabel {
                    topic: self.0.name.clone(),
                })
                .clone()
        })
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The same topic written with `schema` (a topic such as `review` carries several record
    /// types, each under its own `<topic>-<record>` subject).
    pub fn with_schema(&self, schema: ValueSchema) -> Self {
        Self::new(&self.0.name, schema)
    }

    /// This topic's writer, its schema fetched from the registry the first time.
    async fn writer(&self, codec: &Codec) -> Result<&Writer, ProcessError> {
        self.0
            .writer
            .get_or_try_init(|| codec.writer(&self.0.name, &self.0.schema))
            .await
    }

    /// Fetches this topic's writer schema now, if not yet fetched.
    pub(crate) async fn warm(&self, codec: &Codec) -> Result<(), ProcessError> {
        self.writer(codec).await.map(|_| ())
    }

    /// `value` encoded for this topic.
    pub(crate) async fn encode<T: Serialize>(
        &self,
        codec: &Codec,
        value: &T,
    ) -> Result<Vec<u8>, ProcessError> {
        if let Some(writer) = self.0.writer.get() {
            return writer.encode(value);
        }
        // Boxed: only the first record of a topic waits for the registry.
        Box::pin(self.writer(codec)).await?.encode(value)
    }
}

/// An output record; the engine encodes it with its topic's schema.
#[derive(Debug, Clone)]
pub struct Outgoing<T> {
    pub topic: OutputTopic,
    pub key: Option<String>,
    pub value: T,
}

/// What a service does with one record.
pub trait Processor: Send + Sync + 'static {
    /// The input's value, decoded straight from its Avro bytes by field name.
    type Input: DeserializeOwned + Send + Sync;
    /// The values written (an enum with `#[serde(untagged)]` when they differ by topic).
    type Output: Serialize + Send + Sync;

    fn process(
        &self,
        input: Incoming<'_, Self::Input>,
    ) -> impl Future<Output = Result<Vec<Outgoing<Self::Output>>, ProcessError>> + Send;

    /// The topics this processor may write. The engine fetches their schemas before the
    /// first record, so a registry that fails later stops no record of a known schema (an
    /// output written for the first time then would wait for it).
    fn outputs(&self) -> Vec<OutputTopic> {
        Vec::new()
    }

    /// What the processor prepares once, before the engine hands it the first record (with
    /// the outputs' schemas), so that its first records do not pay for it. A failure is the
    /// processor's to log and to try again later: the engine starts either way.
    fn warm(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Where a service reads and writes, from the topology.
#[derive(Clone, Debug)]
pub struct Route {
    pub service: String,
    pub group: String,
    pub input: String,
    pub retry: Vec<RetryStep>,
    pub dead_letter_topic: String,
    /// Role → topic, from the topology.
    pub outputs: BTreeMap<String, String>,
    /// The state stores the topology declares for the service.
    pub stores: Stores,
}

impl From<&Service> for Route {
    fn from(s: &Service) -> Self {
        Self {
            service: s.name.clone(),
            group: s.consumer_group.clone(),
            input: s.input.clone(),
            retry: s.retry.clone(),
            dead_letter_topic: s.dead_letter_topic.clone(),
            outputs: s.outputs.clone(),
            stores: Stores::declared(s.stores.clone()),
        }
    }
}

impl Route {
    /// The output the topology gives this service for `role`; an error naming the key
    /// otherwise.
    pub fn output(&self, role: &str) -> Result<OutputTopic, String> {
        self.outputs
            .get(role)
            .map(|t| OutputTopic::new(t, ValueSchema::TopicLatest))
            .ok_or_else(|| {
                format!(
                    "topology: [services.{}].outputs has no `{role}` (it lists: {})",
                    self.service,
                    self.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// The state store `name` the topology declares for this service (restored by the
    /// engine when a partition is assigned); asked for once, at start-up.
    pub fn store<V: StoreValue>(&self, name: &str) -> Result<Store<V>, String> {
        self.stores.open(&self.service, name)
    }

    /// Every topic the engine subscribes to: the input, then the retry topics.
    pub fn subscriptions(&self) -> Vec<&str> {
        std::iter::once(self.input.as_str())
            .chain(self.retry.iter().map(|r| r.topic.as_str()))
            .collect()
    }
}

/// The topics a decision service writes, by role: `decisions`, `audit` and `review`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionTopics {
    pub decisions: OutputTopic,
    pub audit: OutputTopic,
    pub review: OutputTopic,
}

impl DecisionTopics {
    /// Every topic, for [`Processor::outputs`].
    pub fn all(&self) -> Vec<OutputTopic> {
        vec![
            self.decisions.clone(),
            self.audit.clone(),
            self.review.clone(),
        ]
    }

    /// The topology's outputs of `route`; the review topic carries the decision under
    /// `review` (a `<topic>-<record>` subject, since that topic holds several record types).
    pub fn from_route(route: &Route, review: ValueSchema) -> Result<Self, String> {
        Ok(Self {
            decisions: route.output("decisions")?,
            audit: route.output("audit")?,
            review: route.output("review")?.with_schema(review),
        })
    }
}

/// What keeps records of a partition in order while others of it run concurrently.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Records with the same key run one after another, in offset order; records with other
    /// keys run concurrently (key-ordered parallelism). Keyless records run concurrently.
    #[default]
    Key,
    /// One record of a partition at a time, in offset order (what a plain consumer loop does).
    Partition,
    /// No order: every record starts when it arrives, within the in-flight bounds.
    None,
}

impl Ordering {
    /// What orders a record with `key` (see [`state::Rec::order`]).
    pub(crate) fn order(self, key: Option<&[u8]>) -> Option<u64> {
        match self {
            Ordering::Key => key.map(crate::hash_of),
            Ordering::Partition => Some(0),
            Ordering::None => None,
        }
    }
}

/// What a record's outputs and its offset commit promise.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs are acknowledged before the offset is committed: after a crash a record may
    /// be decided again (its outputs written twice).
    #[default]
    AtLeastOnce,
    /// Outputs (decisions, audit, review, retry and dead-letter copies), state changes and
    /// offsets are committed in one Kafka transaction: a `read_committed` reader sees each
    /// record's outputs exactly once.
    ExactlyOnce,
}

/// The consumer group protocol.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup) with cooperative-sticky assignment.
    Classic,
    /// Kafka 4's consumer group protocol (KIP-848): the broker assigns, incrementally.
    Consumer,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Which records of a partition wait for which (`key`, `partition` or `none`).
    pub ordering: Ordering,
    /// Records running per partition before it is paused.
    pub max_inflight_per_partition: usize,
    /// Records running in all before every partition is paused.
    pub max_inflight: usize,
    /// Bytes of received records not yet done before every partition is paused.
    pub max_inflight_bytes: usize,
    /// How long revoke and shutdown wait for running records before aborting them.
    pub drain_timeout_ms: u64,
    /// How often done offsets are committed.
    pub commit_interval_ms: u64,
    /// How long restoring the state of newly assigned partitions may take before the engine
    /// stops (records of every partition wait while a restore runs).
    pub restore_timeout_ms: u64,
    /// `at_least_once` or `exactly_once` (Kafka transactions; see [`Guarantee`]).
    pub guarantee: Guarantee,
    /// Exactly-once: how long the broker keeps a transaction of a process that died open
    /// before it aborts it (until then `read_committed` readers wait at it). A restarted
    /// instance with the same static id aborts it at once.
    pub transaction_timeout_ms: u64,
    /// Set by `verdict shadow` only: a first-attempt record with the `verdict.shadow.warmup`
    /// header updates state and writes nothing else, so a shadow run starts from the state
    /// production had. Never in production: such a record would get no decision.
    pub shadow_warmup: bool,
    /// Consumer group session timeout (classic protocol; the broker decides for `consumer`).
    pub session_timeout_ms: u32,
    /// librdkafka's `max.poll.interval.ms`; the drain must fit well inside it.
    pub max_poll_interval_ms: u32,
    pub group_protocol: GroupProtocol,
    /// Static membership (`group.instance.id`): a restarted instance with the same id takes
    /// its partitions back without a group-wide rebalance. `auto`: the service's name, the
    /// host's name and its HTTP port (two instances on one host never share a port, and a
    /// restart in place keeps it). Empty: dynamic membership.
    pub group_instance_id: String,
    pub guard: GuardSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            ordering: Ordering::Key,
            max_inflight_per_partition: 1000,
            max_inflight: 8000,
            max_inflight_bytes: 256 << 20,
            drain_timeout_ms: 10_000,
            commit_interval_ms: 200,
            restore_timeout_ms: 300_000,
            shadow_warmup: false,
            guarantee: Guarantee::AtLeastOnce,
            transaction_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            // Measured with the chaos suite (README): classic + static membership gave the
            // shortest decision gap when instances are killed and restarted; KIP-848 with
            // static membership left partitions stuck (librdkafka 2.12, Kafka 4.4).
            group_protocol: GroupProtocol::Classic,
            group_instance_id: "auto".into(),
            guard: GuardSettings::default(),
        }
    }
}

impl EngineSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, message: &str| {
            Err(SettingsError::Key {
                key: format!("engine.{key}"),
                message: message.into(),
            })
        };
        if self.max_inflight_per_partition == 0 {
            return bad("max_inflight_per_partition", "must be at least 1");
        }
        if self.max_inflight < self.max_inflight_per_partition {
            return bad(
                "max_inflight",
                "must be at least max_inflight_per_partition",
            );
        }
        if self.max_inflight_bytes < 1 << 20 {
            return bad("max_inflight_bytes", "must be at least 1048576 (1 MiB)");
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return bad("session_timeout_ms", "must be between 1000 and 300000");
        }
        if self.drain_timeout_ms.saturating_mul(2) > u64::from(self.max_poll_interval_ms) {
            return bad(
                "drain_timeout_ms",
                "must be at most half of engine.max_poll_interval_ms: a revoke drains inside the poll interval",
            );
        }
        if self.commit_interval_ms == 0 {
            return bad("commit_interval_ms", "must be at least 1");
        }
        if self.restore_timeout_ms < 1_000 {
            return bad("restore_timeout_ms", "must be at least 1000");
        }
        if self.guarantee == Guarantee::ExactlyOnce
            && self.transaction_timeout_ms
                < self
                    .commit_interval_ms
                    .saturating_add(self.drain_timeout_ms)
        {
            return bad(
                "transaction_timeout_ms",
                "must be at least engine.commit_interval_ms + engine.drain_timeout_ms: a transaction stays open that long",
            );
        }
        if self.group_protocol == GroupProtocol::Consumer && !self.group_instance_id.is_empty() {
            return bad(
                "group_protocol",
                "`consumer` (KIP-848) with static membership (engine.group_instance_id): an \
                 instance restarted within its session timeout is refused by the broker \
                 (UNRELEASED_INSTANCE_ID), which librdkafka 2.12 treats as fatal, so after a \
                 kill -9 and restart its partitions can stay assigned to no one for good \
                 (reproduced without verdict: loadtest/repro/kip848-static): set \
                 engine.group_instance_id = \"\" to use `consumer`, or keep `classic`",
            );
        }
        if !(self.guard.max_dead_letter_ratio > 0.0 && self.guard.max_dead_letter_ratio <= 1.0) {
            return bad("guard.max_dead_letter_ratio", "must be in (0, 1]");
        }
        if self.guard.min_samples == 0 || self.guard.window < self.guard.min_samples {
            return bad(
                "guard.window",
                "must be at least guard.min_samples, which must be at least 1",
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// A record could be neither processed nor routed; its offset stays uncommitted.
    #[error("stopping: {0}")]
    Fatal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_only_from_the_topology() {
        let route = Route {
            service: "svc".into(),
            group: "g".into(),
            input: "in".into(),
            retry: vec![],
            dead_letter_topic: "in.dlq".into(),
            outputs: BTreeMap::from([("decisions".to_string(), "out".to_string())]),
            stores: Stores::default(),
        };
        assert_eq!(
            route.output("decisions").map(|t| t.name().to_string()),
            Ok("out".into())
        );
        let err =
            DecisionTopics::from_route(&route, ValueSchema::TopicLatest).expect_err("no audit");
        assert!(
            err.contains("[services.svc].outputs has no `audit`"),
            "{err}"
        );
    }

    #[test]
    fn the_drain_must_fit_in_the_poll_interval() {
        let s = EngineSettings {
            drain_timeout_ms: 200_000,
            ..EngineSettings::default()
        };
        let err = s.validate().expect_err("too long");
        assert!(err.to_string().contains("engine.drain_timeout_ms"), "{err}");
        assert!(EngineSettings::default().validate().is_ok());
    }

    #[test]
    fn an_exactly_once_transaction_must_outlast_a_commit_interval_and_a_drain() {
        let s = EngineSettings {
            guarantee: Guarantee::ExactlyOnce,
            transaction_timeout_ms: 5_000,
            ..EngineSettings::default()
        };
        let err = s
            .validate()
            .expect_err("shorter than the drain")
            .to_string();
        assert!(err.contains("engine.transaction_timeout_ms"), "{err}");
        let ok = EngineSettings {
            guarantee: Guarantee::ExactlyOnce,
            ..EngineSettings::default()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn kip_848_with_static_membership_is_refused_with_the_reason() {
        let s = EngineSettings {
            group_protocol: GroupProtocol::Consumer,
            ..EngineSettings::default()
        };
        let err = s.validate().expect_err("static ids by default").to_string();
        assert!(
            err.contains("engine.group_protocol") && err.contains("group_instance_id = \"\""),
            "{err}"
        );
        let dynamic = EngineSettings {
            group_instance_id: String::new(),
            ..s
        };
        assert!(dynamic.validate().is_ok());
    }
}
