//! The consumer engine.
//!
//! - A consumer group with cooperative-sticky assignment reads the service's input
//!   topic and its retry topics.
//! - Records of a partition are processed concurrently; records with the same key
//!   run one after another, in offset order (key-ordered parallelism).
//! - In-flight records are bounded per partition and per service: a partition over
//!   its bound is paused, and resumed when it has drained to half.
//! - A partition's offset is committed only up to its first record that is not
//!   fully done; done means every output was acknowledged by the broker, or the
//!   record was acknowledged on a retry or dead-letter topic.
//! - On revoke and on shutdown, no new work is taken; in-flight records get a
//!   deadline to finish; what is done is committed and nothing else.
//! - Retryable failures go to the next retry topic with a not-before time (the
//!   retry partition waits, no other does); exhausted retries and non-retryable
//!   failures go to the dead-letter topic with the original bytes and error headers.
//! - The dead-letter guard pauses consumption when dead letters dominate.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use futures::FutureExt;
use futures::future::{Shared, join_all};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

use crate::error::ProcessError;
use crate::guard::{DeadLetterGuard, GuardSettings};
use crate::headers::{self, HeaderMap};
use crate::kafka::{KafkaError, KafkaSettings};
use crate::metrics::{ErrorLabel, Metrics, OutcomeLabel, PartitionLabel, TopicLabel};
use crate::serde::{AvroSerde, ValueSchema};
use crate::topology::{RetryStep, Service};
use crate::{now_ms, telemetry};

/// A decoded input record.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<String>,
    /// The value as JSON (decoded with its writer schema).
    pub value: Json,
    pub headers: HeaderMap,
    /// 1 for a fresh record, n for its n-th attempt.
    pub attempt: u32,
}

/// An output record; the engine encodes it with the topic's schema.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<String>,
    pub value: Avro,
    pub schema: ValueSchema,
}

/// What a service does with one record.
pub trait Processor: Send + Sync + 'static {
    fn process(
        &self,
        input: &Incoming,
    ) -> impl Future<Output = Result<Vec<Outgoing>, ProcessError>> + Send;
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// In-flight records per partition before it is paused.
    pub max_inflight_per_partition: usize,
    /// In-flight records per service before every partition is paused.
    pub max_inflight: usize,
    /// How long revoke and shutdown wait for in-flight records.
    pub drain_timeout_ms: u64,
    /// How often done offsets are committed.
    pub commit_interval_ms: u64,
    /// Consumer group session timeout.
    pub session_timeout_ms: u32,
    pub guard: GuardSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_inflight_per_partition: 1000,
            max_inflight: 8000,
            drain_timeout_ms: 10_000,
            commit_interval_ms: 200,
            session_timeout_ms: 10_000,
            guard: GuardSettings::default(),
        }
    }
}

impl EngineSettings {
    pub fn validate(&self) -> Result<(), crate::settings::SettingsError> {
        let bad = |key: &str, message: &str| {
            Err(crate::settings::SettingsError::Key {
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
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return bad("session_timeout_ms", "must be between 1000 and 300000");
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

type Tp = (String, i32);
type Chain = Shared<oneshot::Receiver<()>>;

#[derive(Default)]
struct PartitionTrack {
    epoch: u64,
    pending: BTreeSet<i64>,
    /// One past the highest dispatched offset (-1: nothing yet).
    next: i64,
    committed: i64,
    chains: HashMap<String, (u64, Chain)>,
    paused: bool,
}

impl PartitionTrack {
    fn position(&self) -> Option<i64> {
        if self.next < 0 {
            return None;
        }
        Some(self.pending.first().copied().unwrap_or(self.next))
    }
}

#[derive(Default)]
struct Tracker {
    parts: HashMap<Tp, PartitionTrack>,
    total: usize,
    seq: u64,
    epochs: u64,
    fatal: Option<String>,
}

struct Ticket {
    epoch: u64,
    seq: u64,
    prev: Option<Chain>,
    done: oneshot::Sender<()>,
}

impl Tracker {
    fn assign(&mut self, tps: impl IntoIterator<Item = Tp>) {
        for tp in tps {
            self.epochs += 1;
            let epoch = self.epochs;
            self.parts.entry(tp).or_insert_with(|| PartitionTrack {
                epoch,
                next: -1,
                committed: -1,
                ..Default::default()
            });
        }
    }

    fn dispatch(&mut self, tp: &Tp, offset: i64, key: Option<&str>) -> Option<Ticket> {
        let part = self.parts.get_mut(tp)?;
        if !part.pending.insert(offset) {
            return None;
        }
        part.next = part.next.max(offset + 1);
        self.total += 1;
        self.seq += 1;
        let (done, rx) = oneshot::channel();
        let chain = rx.shared();
        let prev = key.and_then(|k| {
            part.chains
                .insert(k.to_string(), (self.seq, chain))
                .map(|(_, c)| c)
        });
        Some(Ticket {
            epoch: part.epoch,
            seq: self.seq,
            prev,
            done,
        })
    }

    fn complete(&mut self, tp: &Tp, epoch: u64, offset: i64, key: Option<&str>, seq: u64) {
        let Some(part) = self.parts.get_mut(tp).filter(|p| p.epoch == epoch) else {
            return;
        };
        if part.pending.remove(&offset) {
            self.total -= 1;
        }
        if let Some(k) = key
            && part.chains.get(k).is_some_and(|(s, _)| *s == seq)
        {
            part.chains.remove(k);
        }
    }

    fn pending_in(&self, tps: &[Tp]) -> usize {
        tps.iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.pending.len())
            .sum()
    }

    /// Positions to commit (only those that moved).
    fn to_commit(&self, only: Option<&[Tp]>) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, p)| {
                p.position()
                    .filter(|&pos| pos > p.committed)
                    .map(|pos| (tp.clone(), pos))
            })
            .collect()
    }

    fn mark_committed(&mut self, positions: &[(Tp, i64)]) {
        for (tp, pos) in positions {
            if let Some(p) = self.parts.get_mut(tp) {
                p.committed = p.committed.max(*pos);
            }
        }
    }

    fn revoke(&mut self, tps: &[Tp]) {
        for tp in tps {
            if let Some(p) = self.parts.remove(tp) {
                self.total -= p.pending.len();
            }
        }
    }
}

fn tpl_of(positions: &[(Tp, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), pos) in positions {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos))?;
    }
    Ok(tpl)
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rebalance handling: drain revoked partitions, commit what is done, let go.
pub struct EngineContext {
    tracker: Arc<Mutex<Tracker>>,
    drain: Duration,
    metrics: Arc<Metrics>,
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let deadline = Instant::now() + self.drain;
        let wait = || loop {
            let busy = lock(&self.tracker).pending_in(&tps);
            if busy == 0 || Instant::now() >= deadline {
                return busy;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let abandoned = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        let positions = lock(&self.tracker).to_commit(Some(&tps));
        if !positions.is_empty() {
            match tpl_of(&positions).and_then(|t| consumer.commit(&t, CommitMode::Sync)) {
                Ok(()) => tracing::info!(
                    partitions = tps.len(),
                    "committed done offsets of revoked partitions"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "commit on revoke failed; records will be redelivered")
                }
            }
        }
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "in-flight records of revoked partitions not done in time; they will be redelivered"
            );
        }
        lock(&self.tracker).revoke(&tps);
        self.metrics
            .assigned_partitions
            .set(lock(&self.tracker).parts.len() as i64);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let tps: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            tracing::info!(partitions = ?tps, "assigned");
            let mut t = lock(&self.tracker);
            t.assign(tps);
            self.metrics.assigned_partitions.set(t.parts.len() as i64);
            self.metrics.set_ready(true);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; will retry with the next commit");
        }
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
    pub outputs: std::collections::BTreeMap<String, String>,
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
        }
    }
}

impl Route {
    /// The topic the topology gives this service for `role`; an error naming the key otherwise.
    pub fn output(&self, role: &str) -> Result<String, String> {
        self.outputs.get(role).cloned().ok_or_else(|| {
            format!(
                "topology: [services.{}].outputs has no `{role}` (it lists: {})",
                self.service,
                self.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// The topics a decision service writes, by role: `decisions`, `audit` and `review`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionTopics {
    pub decisions: String,
    pub audit: String,
    pub review: String,
}

impl DecisionTopics {
    pub fn from_route(route: &Route) -> Result<Self, String> {
        Ok(Self {
            decisions: route.output("decisions")?,
            audit: route.output("audit")?,
            review: route.output("review")?,
        })
    }
}

enum Outcome {
    Processed,
    Retried,
    DeadLettered(&'static str),
    Fatal(String),
}

struct Worker<P> {
    processor: P,
    serde: AvroSerde,
    producer: FutureProducer,
    route: Route,
    metrics: Arc<Metrics>,
    tracker: Arc<Mutex<Tracker>>,
    wake: Notify,
    guard: Mutex<DeadLetterGuard>,
}

/// Runs the engine until `shutdown` resolves or a record can neither be processed
/// nor routed.
pub async fn run<P: Processor>(
    kafka: &KafkaSettings,
    registry_url: &str,
    route: Route,
    settings: &EngineSettings,
    processor: P,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EngineError> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let drain = Duration::from_millis(settings.drain_timeout_ms);
    let context = EngineContext {
        tracker: tracker.clone(),
        drain,
        metrics: metrics.clone(),
    };
    let mut config = kafka.client_config();
    config
        .set("group.id", &route.group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 4).max(100).to_string(),
        )
        .set("queued.max.messages.kbytes", "16384")
        // Pausing a partition drops what librdkafka prefetched for it; keep that small.
        .set("max.partition.fetch.bytes", "262144")
        // An idle fetch waits at most this long; under load fetches return with data at once.
        .set("fetch.wait.max.ms", "100")
        // librdkafka's default (1 s) stalls a partition after a full fetch queue.
        .set("fetch.queue.backoff.ms", "10");
    kafka.apply_properties(&mut config);
    let consumer: StreamConsumer<EngineContext> = config.create_with_context(context)?;
    let mut topics = vec![route.input.as_str()];
    topics.extend(route.retry.iter().map(|r| r.topic.as_str()));
    consumer.subscribe(&topics)?;
    tracing::info!(service = %route.service, group = %route.group, ?topics, "consuming");

    let worker = Arc::new(Worker {
        processor,
        serde: AvroSerde::new(registry_url),
        producer: crate::producer::create(kafka)?,
        guard: Mutex::new(DeadLetterGuard::new(settings.guard.clone())),
        route,
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        wake: Notify::new(),
    });

    let commit_every = Duration::from_millis(settings.commit_interval_ms);
    let mut last_commit = Instant::now();
    tokio::pin!(shutdown);
    let result = loop {
        if let Some(fatal) = lock(&tracker).fatal.clone() {
            break Err(EngineError::Fatal(fatal));
        }
        let holding = worker
            .guard
            .lock()
            .map(|mut g| g.holding())
            .unwrap_or(false);
        metrics.guard_tripped.set(i64::from(holding));
        apply_backpressure(&consumer, &tracker, settings, holding);
        if last_commit.elapsed() >= commit_every {
            commit(&consumer, &tracker, &metrics, CommitMode::Async);
            last_commit = Instant::now();
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            () = worker.wake.notified() => {}
            () = tokio::time::sleep(commit_every) => {}
            msg = consumer.recv() => match msg {
                Ok(m) => dispatch(&worker, m.detach()),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };

    // Stop taking work; give in-flight records the drain deadline; commit what is done.
    let deadline = Instant::now() + drain;
    while lock(&tracker).total > 0 && Instant::now() < deadline && lock(&tracker).fatal.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = lock(&tracker).total;
    if left > 0 {
        tracing::warn!(
            left,
            "shutting down with records not done; their offsets stay uncommitted"
        );
    }
    commit(&consumer, &tracker, &metrics, CommitMode::Sync);
    consumer.unsubscribe();
    metrics.set_ready(false);
    tracing::info!("engine stopped");
    result
}

fn apply_backpressure(
    consumer: &StreamConsumer<EngineContext>,
    tracker: &Mutex<Tracker>,
    settings: &EngineSettings,
    holding: bool,
) {
    let mut t = lock(tracker);
    let total = t.total;
    let global_over = total >= settings.max_inflight;
    let global_low = total <= settings.max_inflight / 2;
    let mut pause = TopicPartitionList::new();
    let mut resume = TopicPartitionList::new();
    for ((topic, partition), p) in &mut t.parts {
        let n = p.pending.len();
        let over = holding || global_over || n >= settings.max_inflight_per_partition;
        let drained = !holding && global_low && n <= settings.max_inflight_per_partition / 2;
        if over && !p.paused {
            p.paused = true;
            let _ = pause.add_partition(topic, *partition);
        } else if p.paused && drained {
            p.paused = false;
            let _ = resume.add_partition(topic, *partition);
        }
    }
    drop(t);
    if pause.count() > 0
        && let Err(e) = consumer.pause(&pause)
    {
        tracing::warn!(error = %e, "pause failed");
    }
    if resume.count() > 0
        && let Err(e) = consumer.resume(&resume)
    {
        tracing::warn!(error = %e, "resume failed");
    }
}

fn commit(
    consumer: &StreamConsumer<EngineContext>,
    tracker: &Mutex<Tracker>,
    metrics: &Metrics,
    mode: CommitMode,
) {
    let (positions, lag): (Vec<(Tp, i64)>, Vec<_>) = {
        let t = lock(tracker);
        let lag = t
            .parts
            .iter()
            .filter_map(|(tp, p)| p.position().map(|pos| (tp.clone(), p.next - pos)))
            .collect::<Vec<(Tp, i64)>>();
        (t.to_commit(None), lag)
    };
    for ((topic, partition), n) in lag {
        metrics
            .uncommitted
            .get_or_create(&PartitionLabel { topic, partition })
            .set(n);
    }
    if positions.is_empty() {
        return;
    }
    match tpl_of(&positions).and_then(|tpl| consumer.commit(&tpl, mode)) {
        Ok(()) => {
            lock(tracker).mark_committed(&positions);
            metrics
                .last_commit_ms
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "commit failed; will retry"),
    }
}

fn dispatch<P: Processor>(worker: &Arc<Worker<P>>, msg: OwnedMessage) {
    let tp = (msg.topic().to_string(), msg.partition());
    let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
    worker
        .metrics
        .records_in
        .get_or_create(&TopicLabel {
            topic: tp.0.clone(),
        })
        .inc();
    let Some(ticket) = lock(&worker.tracker).dispatch(&tp, msg.offset(), key.as_deref()) else {
        return; // partition no longer ours, or a duplicate delivery
    };
    worker.metrics.inflight.inc();
    let worker = worker.clone();
    tokio::spawn(async move {
        let Ticket {
            epoch,
            seq,
            prev,
            done,
        } = ticket;
        if let Some(prev) = prev {
            let _ = prev.await;
        }
        let started = Instant::now();
        let outcome = worker.handle(&msg, key.as_deref()).await;
        let _ = done.send(());
        worker.finish(
            &tp,
            epoch,
            msg.offset(),
            key.as_deref(),
            seq,
            outcome,
            started,
        );
    });
}

impl<P: Processor> Worker<P> {
    async fn handle(&self, msg: &OwnedMessage, key: Option<&str>) -> Outcome {
        let headers = HeaderMap::from_kafka(msg.headers().map(|h| h.as_borrowed()));
        let attempt = headers.attempt();
        let span = tracing::info_span!(
            "record",
            service = %self.route.service,
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            key = key.unwrap_or(""),
            attempt
        );
        telemetry::continue_trace(&span, &headers);
        async {
            if msg.topic() != self.route.input
                && let Some(not_before) = headers.not_before_ms()
            {
                let wait = not_before - now_ms();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
                }
            }
            let result = match self.serde.decode(msg.payload()).await {
                Ok(value) => {
                    let incoming = Incoming {
                        topic: msg.topic().to_string(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                        timestamp_ms: msg.timestamp().to_millis(),
                        key: key.map(String::from),
                        value,
                        headers: headers.clone(),
                        attempt,
                    };
                    match self.processor.process(&incoming).await {
                        Ok(outputs) => self.write(outputs, &tracing::Span::current()).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => Outcome::Processed,
                Err(e) => self.route_failure(msg, headers, attempt, e).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn write(
        &self,
        outputs: Vec<Outgoing>,
        span: &tracing::Span,
    ) -> Result<(), ProcessError> {
        let mut trace = HeaderMap::default();
        telemetry::inject_trace(span, &mut trace);
        let mut encoded = Vec::with_capacity(outputs.len());
        for out in outputs {
            let bytes = self
                .serde
                .encode(&out.topic, &out.schema, out.value)
                .await?;
            encoded.push((out.topic, out.key, bytes));
        }
        let sends = encoded.iter().map(|(topic, key, bytes)| {
            crate::producer::send(
                &self.producer,
                topic,
                key.as_deref().map(str::as_bytes),
                Some(bytes),
                trace.to_kafka(),
            )
        });
        for (result, (topic, _, _)) in join_all(sends).await.into_iter().zip(&encoded) {
            result.map_err(ProcessError::Output)?;
            self.metrics
                .records_out
                .get_or_create(&TopicLabel {
                    topic: topic.clone(),
                })
                .inc();
        }
        Ok(())
    }

    async fn route_failure(
        &self,
        msg: &OwnedMessage,
        mut headers: HeaderMap,
        attempt: u32,
        error: ProcessError,
    ) -> Outcome {
        headers.set_if_absent(headers::ORIGINAL_TOPIC, msg.topic());
        headers.set_if_absent(headers::ORIGINAL_PARTITION, msg.partition().to_string());
        headers.set_if_absent(headers::ORIGINAL_OFFSET, msg.offset().to_string());
        headers.set_if_absent(
            headers::ORIGINAL_TIMESTAMP,
            msg.timestamp().to_millis().unwrap_or(-1).to_string(),
        );
        headers.set(headers::ERROR_CLASS, error.class());
        headers.set(headers::ERROR_MESSAGE, error.to_string());
        headers.set(headers::ERROR_RETRYABLE, error.retryable().to_string());
        headers.set(headers::SERVICE, self.route.service.clone());
        headers.set(headers::FAILED_AT, now_ms().to_string());

        let step = usize::try_from(attempt)
            .ok()
            .and_then(|a| self.route.retry.get(a.saturating_sub(1)));
        let (topic, outcome) = match step.filter(|_| error.retryable()) {
            Some(step) => {
                headers.set(headers::ATTEMPT, (attempt + 1).to_string());
                let delay = i64::try_from(step.delay_ms).unwrap_or(i64::MAX);
                headers.set(
                    headers::NOT_BEFORE,
                    now_ms().saturating_add(delay).to_string(),
                );
                tracing::info!(error = %error, retry_topic = %step.topic, "retrying later");
                (step.topic.as_str(), Outcome::Retried)
            }
            None => {
                headers.set(headers::ATTEMPTS, attempt.to_string());
                tracing::warn!(error = %error, dlq = %self.route.dead_letter_topic, "dead-lettering record");
                (
                    self.route.dead_letter_topic.as_str(),
                    Outcome::DeadLettered(error.class()),
                )
            }
        };
        match crate::producer::send(
            &self.producer,
            topic,
            msg.key(),
            msg.payload(),
            headers.to_kafka(),
        )
        .await
        {
            Ok(_) => outcome,
            Err(e) => Outcome::Fatal(format!("cannot route a failed record to {topic}: {e}")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        tp: &Tp,
        epoch: u64,
        offset: i64,
        key: Option<&str>,
        seq: u64,
        outcome: Outcome,
        started: Instant,
    ) {
        self.metrics.inflight.dec();
        self.metrics
            .record_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Outcome::Processed => "processed",
            Outcome::Retried => "retried",
            Outcome::DeadLettered(_) => "dead_lettered",
            Outcome::Fatal(_) => "fatal",
        };
        self.metrics
            .processed
            .get_or_create(&OutcomeLabel {
                outcome: label.into(),
            })
            .inc();
        match outcome {
            Outcome::Fatal(reason) => {
                tracing::error!(%reason, offset, "record can be neither processed nor routed");
                lock(&self.tracker).fatal.get_or_insert(reason);
            }
            other => {
                let dead = matches!(other, Outcome::DeadLettered(_));
                if let Outcome::DeadLettered(class) = other {
                    self.metrics
                        .dead_letters
                        .get_or_create(&ErrorLabel {
                            error_class: class.into(),
                        })
                        .inc();
                }
                let tripped = self
                    .guard
                    .lock()
                    .map(|mut g| (g.record(dead), g.ratio()))
                    .unwrap_or((false, 0.0));
                if tripped.0 {
                    tracing::error!(
                        ratio = tripped.1,
                        "DEAD-LETTER GUARD TRIPPED: too many records are being dead-lettered; consumption paused for the cool-down. Check the last deploy and the dead-letter topic {}",
                        self.route.dead_letter_topic
                    );
                }
                lock(&self.tracker).complete(tp, epoch, offset, key, seq);
            }
        }
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        ("t".to_string(), 0)
    }

    #[test]
    fn commits_stop_at_the_first_unfinished_offset() {
        let mut t = Tracker::default();
        t.assign([tp()]);
        let tickets: Vec<Ticket> = (10..15)
            .map(|o| t.dispatch(&tp(), o, None).expect("ticket"))
            .collect();
        assert_eq!(t.to_commit(None), vec![(tp(), 10)]);
        // 11, 12 and 14 finish; 10 and 13 do not.
        for (o, ticket) in [(11, &tickets[1]), (12, &tickets[2]), (14, &tickets[4])] {
            t.complete(&tp(), ticket.epoch, o, None, ticket.seq);
        }
        assert_eq!(t.to_commit(None), vec![(tp(), 10)], "10 is still in flight");
        t.complete(&tp(), tickets[0].epoch, 10, None, tickets[0].seq);
        assert_eq!(t.to_commit(None), vec![(tp(), 13)], "stops before 13");
        t.complete(&tp(), tickets[3].epoch, 13, None, tickets[3].seq);
        assert_eq!(t.to_commit(None), vec![(tp(), 15)]);
        t.mark_committed(&[(tp(), 15)]);
        assert!(t.to_commit(None).is_empty());
        assert_eq!(t.total, 0);
    }

    #[test]
    fn same_key_records_chain_and_others_do_not() {
        let mut t = Tracker::default();
        t.assign([tp()]);
        let a1 = t.dispatch(&tp(), 0, Some("a")).expect("a1");
        let b1 = t.dispatch(&tp(), 1, Some("b")).expect("b1");
        let a2 = t.dispatch(&tp(), 2, Some("a")).expect("a2");
        assert!(a1.prev.is_none() && b1.prev.is_none());
        assert!(a2.prev.is_some(), "a2 waits for a1");
    }

    #[test]
    fn stale_completions_after_reassignment_are_ignored() {
        let mut t = Tracker::default();
        t.assign([tp()]);
        let old = t.dispatch(&tp(), 5, None).expect("old");
        t.revoke(&[tp()]);
        t.assign([tp()]);
        let new = t.dispatch(&tp(), 5, None).expect("redelivered");
        t.complete(&tp(), old.epoch, 5, None, old.seq);
        assert_eq!(t.total, 1, "the redelivered record is still in flight");
        t.complete(&tp(), new.epoch, 5, None, new.seq);
        assert_eq!(t.total, 0);
        assert!(
            t.dispatch(&("u".into(), 0), 1, None).is_none(),
            "unassigned partitions are not dispatched"
        );
    }
}
