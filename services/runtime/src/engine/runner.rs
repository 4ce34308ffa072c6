//! The loop that owns all of the engine's state, and the thread that polls the consumer.
//!
//! The polling thread only moves what librdkafka delivers (records, assignments,
//! revocations) into a channel. The loop reacts: it feeds [`State`], starts the records it
//! answers with as tasks, applies pause/resume, commits, and, on a revocation, drains the
//! partitions before it answers the waiting callback with what to commit.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::output::Output;
use super::rebalance::{EngineContext, Event};
use super::state::{Limits, Rec, Start, State, Tp};
use super::store::{self, Restorable};
use super::worker::{Outcome, Worker, panic_message};
use super::{EngineError, EngineSettings, GroupProtocol, Processor, Route};
use super::{Guarantee, progress};
use crate::guard::DeadLetterGuard;
use crate::headers::HeaderMap;
use crate::kafka::KafkaSettings;
use crate::metrics::{ErrorLabel, Metrics, OutcomeLabel, PartitionLabel, StoreLabel, TopicLabel};
use crate::registry::Registry;
use crate::serde::Codec;
use crate::service::RegistrySection;
use crate::{FastMap, now_ms};

type Consumer_ = BaseConsumer<EngineContext>;

/// A record's task: it runs in the loop's own task (no task per record), and ends with what
/// the state needs to finish it.
type RecordTask = Pin<Box<dyn Future<Output = Done> + Send>>;
type Tasks = FuturesUnordered<RecordTask>;

/// A record's end: its identity in the state, and how it ended (`None`: aborted at a revoke
/// or shutdown, so not done).
struct Done {
    tp: Tp,
    epoch: u64,
    offset: i64,
    order: Option<u64>,
    bytes: usize,
    received: Instant,
    outcome: Option<Outcome>,
}

type CommitResult = (Vec<(Tp, u64, i64)>, Result<(), String>);

/// A registry whose certificate this service does not trust never will be until an operator
/// gives `registry.ca_file`: stop at start-up saying so, rather than retry and dead-letter
/// every record. Any other failure to reach it is left to the records' retries.
async fn registry_certificate_trusted(registry: &Registry) -> Result<(), EngineError> {
    let client = crate::registry::RegistryClient::new(registry)
        .map_err(|e| EngineError::Fatal(e.to_string()))?;
    match client.subjects().await {
        Err(e) if e.is_untrusted_certificate() => Err(EngineError::Fatal(format!(
            "the schema registry at {} presented a certificate this service does not trust (registry.ca_file): {e}",
            registry.url()
        ))),
        _ => Ok(()),
    }
}

/// Runs the engine until `shutdown` resolves or a record can neither be processed nor routed.
pub async fn run<P: Processor>(
    kafka: &KafkaSettings,
    registry: &RegistrySection,
    route: Route,
    settings: &EngineSettings,
    processor: P,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EngineError> {
    // Few: batches in this channel are already fetched, so they escape pausing until the
    // state parks them (a batch is at most 512 records or 1 MiB).
    let (tx, mut events) = mpsc::channel(4);
    let consumer = Arc::new(consumer(kafka, &route, settings, tx, metrics.clone())?);
    consumer.subscribe(&route.subscriptions())?;
    tracing::info!(
        service = %route.service,
        group = %route.group,
        topics = ?route.subscriptions(),
        protocol = ?settings.group_protocol,
        ordering = ?settings.ordering,
        "consuming"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_poller(consumer.clone(), stop.clone())?;
    let endpoint = registry.endpoint();
    let worker = Arc::new(Worker {
        processor,
        codec: Codec::new(&endpoint, Duration::from_millis(registry.timeout_ms)),
        output: match settings.guarantee {
            Guarantee::AtLeastOnce => Output::new(kafka, metrics.clone())?,
            Guarantee::ExactlyOnce => {
                let id = transactional_id(&route.group, &settings.group_instance_id);
                tracing::info!(transactional_id = %id, "exactly-once: transactional producer");
                let timeout = Duration::from_millis(settings.transaction_timeout_ms);
                let (kafka, metrics) = (kafka.clone(), metrics.clone());
                tokio::task::spawn_blocking(move || {
                    Output::transactional(&kafka, &id, timeout, metrics)
                })
                .await
                .map_err(|e| EngineError::Fatal(e.to_string()))??
            }
        },
        route: route.clone(),
        metrics: metrics.clone(),
        shadow_warmup: settings.shadow_warmup,
    });
    // All at once: a registry that is down at start delays it by one registry timeout.
    let outputs = worker.processor.outputs();
    let (warmed, trusted, ()) = tokio::join!(
        futures::future::join_all(outputs.iter().map(|t| t.warm(&worker.codec))),
        registry_certificate_trusted(&endpoint),
        worker.processor.warm(),
    );
    trusted?;
    for (topic, result) in outputs.iter().zip(warmed) {
        match result {
            // Every record written there would be retried and dead-lettered until an operator
            // changes the credentials or the role: stop now, saying so.
            Err(e) if crate::serde::is_refused(&e) => {
                return Err(EngineError::Fatal(format!(
                    "the schema registry refused this service the schema of output topic {} (registry.username and its role): {e}",
                    topic.name()
                )));
            }
            Err(e) => {
                tracing::warn!(topic = topic.name(), error = %e, "output schema not fetched yet; it is at the first record written there");
            }
            Ok(()) => {}
        }
    }
    let stores = route.stores.opened();
    if !stores.is_empty() && settings.ordering == super::Ordering::None {
        return Err(EngineError::Fatal(
            "engine.ordering = \"none\" with state stores: a key's records must run in offset \
             order for its state to be deterministic (use \"key\" or \"partition\")"
                .into(),
        ));
    }
    let outcome = |label: &str| {
        metrics
            .processed
            .get_or_create(&OutcomeLabel {
                outcome: label.into(),
            })
            .clone()
    };
    let mut engine = Loop {
        state: State::new(Limits {
            per_partition: settings.max_inflight_per_partition,
            total: settings.max_inflight,
            bytes: settings.max_inflight_bytes,
        }),
        topics: route
            .subscriptions()
            .into_iter()
            .enumerate()
            .map(|(i, topic)| Topic {
                name: topic.into(),
                retry: i > 0,
                records_in: metrics
                    .records_in
                    .get_or_create(&TopicLabel {
                        topic: topic.to_string(),
                    })
                    .clone(),
            })
            .collect(),
        outcomes: [
            outcome("processed"),
            outcome("retried"),
            outcome("dead_lettered"),
            outcome("fatal"),
        ],
        ordering: settings.ordering,
        tokens: FastMap::default(),
        worker,
        consumer,
        guard: DeadLetterGuard::new(settings.guard.clone()),
        metrics: metrics.clone(),
        drain: Duration::from_millis(settings.drain_timeout_ms),
        commit_every: Duration::from_millis(settings.commit_interval_ms),
        fatal: None,
        stopping: false,
        route,
        kafka: kafka.clone(),
        stores,
        restore_timeout: Duration::from_millis(settings.restore_timeout_ms),
        exactly_once: settings.guarantee == Guarantee::ExactlyOnce,
        done_since_commit: 0,
    };
    let mut tasks = Tasks::new();
    let mut commit: Option<tokio::task::JoinHandle<CommitResult>> = None;
    let mut last_commit = Instant::now();
    let mut wake_at = engine.next_wake(last_commit, false);
    let wake = tokio::time::sleep_until(wake_at.into());
    tokio::pin!(shutdown, wake);

    let result = loop {
        if let Some(fatal) = engine.fatal.clone() {
            break Err(EngineError::Fatal(fatal));
        }
        for start in engine.state.release_due(now_ms()) {
            engine.start(&mut tasks, start, Instant::now());
        }
        engine.apply_flow();
        engine
            .metrics
            .inflight
            .set(i64::try_from(engine.state.running()).unwrap_or(i64::MAX));
        if commit.is_none() && last_commit.elapsed() >= engine.commit_every {
            engine.report_keys();
            if !engine.exactly_once {
                commit = engine.start_commit();
                last_commit = Instant::now();
            } else if engine.done_since_commit == 0 {
                last_commit = Instant::now();
            } else {
                // Nothing new starts; the transaction commits once nothing runs.
                engine.state.set_barrier();
                if engine.state.running() == 0 {
                    commit = engine.start_transaction_commit();
                    last_commit = Instant::now();
                    if commit.is_none() {
                        // Not now (see `start_transaction_commit`): work goes on.
                        for start in engine.state.lift_barrier() {
                            engine.start(&mut tasks, start, Instant::now());
                        }
                    }
                }
            }
        }
        let next = engine.next_wake(last_commit, commit.is_some());
        if next != wake_at {
            wake_at = next;
            wake.as_mut().reset(next.into());
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            done = tasks.next(), if !tasks.is_empty() => {
                if let Some(done) = done {
                    engine.on_done(&mut tasks, done);
                }
                // Everything else that is done, in one go.
                while let Some(Some(done)) = tasks.next().now_or_never() {
                    engine.on_done(&mut tasks, done);
                }
            }
            finished = async { commit.as_mut().expect("guarded").await }, if commit.is_some() => {
                commit = None;
                engine.on_commit(&mut tasks, finished);
            }
            event = events.recv() => match event {
                Some(event) => {
                    engine.on_event(&mut tasks, &mut commit, event).await;
                    while let Ok(event) = events.try_recv() {
                        engine.on_event(&mut tasks, &mut commit, event).await;
                    }
                }
                None => break Err(EngineError::Fatal("the consumer's polling thread stopped".into())),
            },
            () = &mut wake => {}
        }
    };

    // Stop taking work: running records get the drain deadline, then are aborted; what is
    // done is committed, and nothing else.
    engine.stopping = true;
    let deadline = Instant::now()
        + if result.is_ok() {
            engine.drain
        } else {
            Duration::ZERO
        };
    while !tasks.is_empty() && Instant::now() < deadline {
        tokio::select! {
            done = tasks.next() => if let Some(done) = done { engine.on_done(&mut tasks, done) },
            event = events.recv() => match event {
                Some(Event::Revoked { tps, lost, reply }) => engine.revoke(&mut tasks, &mut commit, tps, lost, reply, Duration::ZERO).await,
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    let drained = tasks.is_empty();
    engine.abort_all(&mut tasks).await;
    if let Some(pending) = commit.take() {
        engine.on_commit(&mut tasks, pending.await);
    }
    if engine.exactly_once {
        // Records aborted mid-way may have written into the transaction: then it is
        // aborted, and they are decided again after the restart.
        engine.state.set_barrier();
        if drained && engine.fatal.is_none() {
            if let Some(last) = engine.start_transaction_commit() {
                engine.on_commit(&mut tasks, last.await);
            }
        } else {
            engine.abort_transaction().await;
        }
    } else if let Some(final_commit) = engine.start_commit() {
        engine.on_commit(&mut tasks, final_commit.await);
    }
    let left = engine.state.to_commit().len();
    if left > 0 {
        tracing::warn!(
            partitions = left,
            "stopping with offsets not committed; those records will be read again"
        );
    }
    // The polling thread drops the last handle of the consumer, so its close (and any last
    // rebalance callback) runs there, not on the runtime.
    stop.store(true, Ordering::Relaxed);
    drop(events);
    let Loop { consumer, .. } = engine;
    drop(consumer);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    metrics.set_ready(false);
    tracing::info!("engine stopped");
    result
}

/// The transactional id of an instance: its group and static member id, so a restarted
/// instance fences its earlier incarnation (and aborts what it left open); a random one
/// without static membership (then a killed instance's transaction stays open until
/// `engine.transaction_timeout_ms`).
fn transactional_id(group: &str, instance: &str) -> String {
    if instance.is_empty() {
        format!("{group}-{}", uuid::Uuid::new_v4())
    } else {
        format!("{group}-{instance}")
    }
}

/// The consumer: group and commit settings from the factory, the engine's own, then the
/// user's pass-through properties.
fn consumer(
    kafka: &KafkaSettings,
    route: &Route,
    settings: &EngineSettings,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) -> Result<Consumer_, EngineError> {
    let mut config = kafka.consumer_config(&route.group);
    config
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval_ms.to_string(),
        )
        // What librdkafka prefetches is outside the engine's byte bound: keep it to a quarter
        // of the bound (1-16 MiB).
        .set(
            "queued.max.messages.kbytes",
            (settings.max_inflight_bytes / 4 / 1024)
                .clamp(1024, 16384)
                .to_string(),
        )
        // Pausing a partition drops what librdkafka prefetched for it; keep that small.
        .set("max.partition.fetch.bytes", "262144")
        // An idle fetch waits at most this long; under load fetches return with data at once.
        .set("fetch.wait.max.ms", "100")
        // librdkafka's default (1 s) stalls a partition after a full fetch queue.
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "statistics.interval.ms",
            crate::kafka_stats::STATISTICS_INTERVAL_MS,
        );
    match settings.group_protocol {
        GroupProtocol::Classic => {
            config
                .set("group.protocol", "classic")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set(
                    "session.timeout.ms",
                    settings.session_timeout_ms.to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    (settings.session_timeout_ms / 4).max(100).to_string(),
                );
        }
        // Session timeout and assignment are the broker's under KIP-848.
        GroupProtocol::Consumer => {
            config.set("group.protocol", "consumer");
        }
    }
    if !settings.group_instance_id.is_empty() {
        config.set("group.instance.id", &settings.group_instance_id);
    }
    kafka.apply_properties(&mut config);
    Ok(config.create_with_context(EngineContext::new(events, metrics))?)
}

/// The thread that polls the consumer: records, gathered into batches, and the rebalance
/// callbacks, which run inside `poll`.
fn spawn_poller(
    consumer: Arc<Consumer_>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || {
            let context = consumer.context();
            let mut timeout = Duration::from_millis(100);
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll(timeout) {
                    Some(Ok(m)) => {
                        // More may be waiting: take them without blocking, up to a batch.
                        timeout = Duration::ZERO;
                        if context.gather(m.detach()) && !context.flush() {
                            break;
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            let _ = context.flush();
                            let _ = context.events.blocking_send(Event::Fatal(format!(
                                "the Kafka client failed fatally ({code}): {reason}"
                            )));
                            break;
                        }
                        tracing::warn!(error = %e, "consumer error");
                    }
                    None => {}
                }
                timeout = Duration::from_millis(100);
                if !context.flush() {
                    break;
                }
            }
        })
        .map_err(|e| EngineError::Fatal(format!("cannot start the polling thread: {e}")))
}

/// A topic the engine reads: the input first, then its retry topics.
struct Topic {
    name: Arc<str>,
    retry: bool,
    records_in: Counter,
}

struct Loop<P> {
    state: State<OwnedMessage>,
    topics: Vec<Topic>,
    /// `verdict_records_processed_total` by outcome: processed, retried, dead-lettered, fatal.
    outcomes: [Counter; 4],
    ordering: super::Ordering,
    /// Cancels the records still running in a partition when its revoke's drain runs out.
    tokens: FastMap<Tp, CancellationToken>,
    worker: Arc<Worker<P>>,
    consumer: Arc<Consumer_>,
    guard: DeadLetterGuard,
    metrics: Arc<Metrics>,
    drain: Duration,
    commit_every: Duration,
    fatal: Option<String>,
    /// Shutting down: nothing new starts (what does not start stays uncommitted).
    stopping: bool,
    route: Route,
    kafka: KafkaSettings,
    /// The state stores the processor opened, restored when an input partition is assigned.
    stores: Vec<Arc<dyn Restorable>>,
    restore_timeout: Duration,
    /// `engine.guarantee = "exactly_once"`: commits are transactions behind a barrier.
    exactly_once: bool,
    /// Records finished since the last commit (a transaction with none is not committed).
    done_since_commit: usize,
}

impl<P: Processor> Loop<P> {
    /// Starts a record as a task of the loop; `received` is when its batch arrived.
    fn start(&mut self, tasks: &mut Tasks, start: Start<OwnedMessage>, received: Instant) {
        if self.stopping {
            return;
        }
        let Start { rec, epoch } = start;
        let Rec {
            tp,
            offset,
            order,
            bytes,
            payload,
            ..
        } = rec;
        let token = self.tokens.entry(tp.clone()).or_default().clone();
        let worker = self.worker.clone();
        let task = async move {
            let work = AssertUnwindSafe(worker.handle(&payload)).catch_unwind();
            let outcome = tokio::select! {
                biased;
                outcome = work => Some(outcome.unwrap_or_else(|panic| {
                    Outcome::Fatal(format!("a record's task failed: {}", panic_message(panic.as_ref())))
                })),
                () = token.cancelled() => None,
            };
            Done {
                tp,
                epoch,
                offset,
                order,
                bytes,
                received,
                outcome,
            }
        };
        tasks.push(Box::pin(task));
    }

    async fn on_event(
        &mut self,
        tasks: &mut Tasks,
        commit: &mut Option<tokio::task::JoinHandle<CommitResult>>,
        event: Event,
    ) {
        match event {
            Event::Records(batch) => {
                let (now, received) = (now_ms(), Instant::now());
                for msg in batch {
                    let Some(topic) = self.topics.iter().find(|t| *t.name == *msg.topic()) else {
                        continue;
                    };
                    topic.records_in.inc();
                    let not_before_ms = topic
                        .retry
                        .then(|| {
                            HeaderMap::from_kafka(msg.headers().map(|h| h.as_borrowed()))
                                .not_before_ms()
                        })
                        .flatten();
                    let rec = Rec {
                        tp: (topic.name.clone(), msg.partition()),
                        offset: msg.offset(),
                        order: self.ordering.order(msg.key()),
                        bytes: msg.payload().map_or(0, <[u8]>::len)
                            + msg.key().map_or(0, <[u8]>::len),
                        not_before_ms,
                        payload: msg,
                    };
                    if let Some(start) = self.state.receive(rec, now) {
                        self.start(tasks, start, received);
                    }
                }
            }
            Event::Assigned(tps) => {
                // The state of new input partitions first: their records queue behind this
                // in the channel, so none runs before its state is back.
                let inputs: Vec<i32> = tps
                    .iter()
                    .filter(|tp| *tp.0 == *self.route.input)
                    .map(|tp| tp.1)
                    .collect();
                self.restore(&inputs).await;
                let tps: Vec<(Tp, bool)> = tps
                    .into_iter()
                    .map(|tp| {
                        let retry = self.topics.iter().any(|t| t.retry && t.name == tp.0);
                        self.tokens.insert(tp.clone(), CancellationToken::new());
                        (tp, retry)
                    })
                    .collect();
                let assigned: Vec<Tp> = tps.iter().map(|(tp, _)| tp.clone()).collect();
                self.state.assign(tps);
                if self.exactly_once {
                    self.skip_finished(&assigned).await;
                }
                self.report_assignment();
                self.metrics.set_ready(true);
            }
            Event::Revoked { tps, lost, reply } => {
                let drain = self.drain;
                self.revoke(tasks, commit, tps, lost, reply, drain).await;
            }
            Event::Fatal(reason) => {
                self.fatal.get_or_insert(reason);
            }
        }
    }

    /// Drains revoked partitions (up to `drain`), aborts what is still running there, and
    /// answers the waiting callback with the positions to commit.
    async fn revoke(
        &mut self,
        tasks: &mut Tasks,
        commit: &mut Option<tokio::task::JoinHandle<CommitResult>>,
        tps: Vec<Tp>,
        lost: bool,
        reply: oneshot::Sender<Vec<(Tp, i64)>>,
        drain: Duration,
    ) {
        if self.exactly_once {
            return self
                .revoke_in_transaction(tasks, commit, tps, lost, reply, drain)
                .await;
        }
        self.state.revoke(&tps);
        let deadline = Instant::now() + if lost { Duration::ZERO } else { drain };
        while self.state.running_in(&tps) > 0 && Instant::now() < deadline {
            tokio::select! {
                done = tasks.next() => match done {
                    Some(done) => self.on_done(tasks, done),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        let stragglers = self.state.running_in(&tps);
        if stragglers > 0 {
            tracing::warn!(
                abandoned = stragglers,
                "records of revoked partitions not done in time: aborted; they will be read again"
            );
            for tp in &tps {
                if let Some(token) = self.tokens.get(tp) {
                    token.cancel();
                }
            }
            while self.state.running_in(&tps) > 0 {
                match tasks.next().await {
                    Some(done) => self.on_done(tasks, done),
                    None => break,
                }
            }
        }
        let positions = self.let_go(&tps);
        for (topic, partition) in tps {
            self.metrics
                .uncommitted
                .get_or_create(&PartitionLabel {
                    topic: topic.to_string(),
                    partition,
                })
                .set(0);
        }
        let _ = reply.send(if lost { Vec::new() } else { positions });
    }

    /// Revoked partitions go: their cancel tokens and their stores' state are dropped.
    /// Returns the positions to commit for them.
    fn let_go(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        for tp in tps {
            self.tokens.remove(tp);
            if *tp.0 == *self.route.input {
                for store in &self.stores {
                    store.close(tp.1);
                }
            }
        }
        let positions = self.state.finish_revoke(tps);
        self.report_assignment();
        positions
    }

    /// Exactly-once: offsets an earlier owner finished beyond its committed position (the
    /// commit's metadata) are skipped when they arrive.
    async fn skip_finished(&mut self, tps: &[Tp]) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in tps {
            tpl.add_partition(topic, *partition);
        }
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, Duration::from_secs(30))
        })
        .await;
        let committed = match committed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.fatal
                    .get_or_insert(format!("cannot read the committed offsets: {e}"));
                return;
            }
            Err(e) => {
                self.fatal.get_or_insert(e.to_string());
                return;
            }
        };
        for e in committed.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            match progress::decode(position, e.metadata()) {
                Ok(done) if done.is_empty() => {}
                Ok(done) => {
                    tracing::info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        position,
                        skipped = done.len(),
                        "offsets finished beyond the committed position are skipped"
                    );
                    self.state.skip(&(e.topic().into(), e.partition()), done);
                }
                Err(why) => {
                    tracing::warn!(topic = e.topic(), partition = e.partition(), %why, "offset metadata ignored");
                }
            }
        }
    }

    /// Exactly-once: commits the open transaction with every partition's position and the
    /// offsets finished beyond it, and begins the next one. Called behind the barrier with
    /// nothing running. `None` when the offsets do not fit the commit's metadata yet (the
    /// barrier lifts; the next commit tries again).
    fn start_transaction_commit(&mut self) -> Option<tokio::task::JoinHandle<CommitResult>> {
        let progress = self.state.progress();
        let mut tpl = TopicPartitionList::new();
        let mut positions = Vec::with_capacity(progress.len());
        for ((topic, partition), epoch, position, done) in progress {
            let Some(metadata) = progress::encode(position, &done) else {
                tracing::warn!(%topic, partition, outstanding = done.len(), "too many offsets finished beyond the position to commit now");
                return None;
            };
            let mut elem = tpl.add_partition(&topic, partition);
            if let Err(e) = elem.set_offset(Offset::Offset(position)) {
                self.fatal.get_or_insert(e.to_string());
                return None;
            }
            elem.set_metadata(metadata);
            positions.push(((topic, partition), epoch, position));
        }
        let Some(group) = self.consumer.group_metadata() else {
            self.fatal
                .get_or_insert("the consumer has no group metadata for the transaction".into());
            return None;
        };
        self.done_since_commit = 0;
        let worker = self.worker.clone();
        Some(tokio::task::spawn_blocking(move || {
            let producer = worker.output.producer();
            let timeout = Duration::from_secs(30);
            let result = (!tpl.elements().is_empty())
                .then(|| producer.send_offsets_to_transaction(&tpl, &group, timeout))
                .transpose()
                .and_then(|_| producer.commit_transaction(timeout))
                .and_then(|()| producer.begin_transaction())
                .map_err(|e| e.to_string());
            (positions, result)
        }))
    }

    fn on_transaction_commit(
        &mut self,
        tasks: &mut Tasks,
        finished: Result<CommitResult, JoinError>,
    ) {
        match finished {
            Ok((positions, Ok(()))) => {
                self.state.committed(&positions);
                self.metrics
                    .last_commit_ms
                    .store(now_ms(), Ordering::Relaxed);
                for start in self.state.lift_barrier() {
                    self.start(tasks, start, Instant::now());
                }
            }
            Ok((_, Err(e))) => {
                self.metrics.commit_failures.inc();
                // Its outputs are invisible to read_committed readers; the engine stops, and
                // the records since the last commit are decided again after the restart.
                self.fatal
                    .get_or_insert(format!("the transaction did not commit: {e}"));
            }
            Err(e) => {
                self.fatal
                    .get_or_insert(format!("the transaction's commit task failed: {e}"));
            }
        }
    }

    /// Aborts the open transaction (its outputs stay invisible to `read_committed` readers).
    async fn abort_transaction(&mut self) {
        let worker = self.worker.clone();
        let aborted = tokio::task::spawn_blocking(move || {
            worker
                .output
                .producer()
                .abort_transaction(Duration::from_secs(30))
        })
        .await;
        match aborted {
            Ok(Ok(())) => tracing::warn!("transaction aborted; its records will be decided again"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "aborting the transaction failed; the broker aborts it after engine.transaction_timeout_ms")
            }
            Err(e) => tracing::warn!(error = %e, "the abort task failed"),
        }
    }

    /// Exactly-once revocation: every running record finishes (within `drain`), then the open
    /// transaction commits with the revoked partitions' positions before they go. A record
    /// still running at the deadline, or partitions already lost, abort the transaction and
    /// stop the engine (what it wrote is invisible; the partitions' next owner decides it).
    async fn revoke_in_transaction(
        &mut self,
        tasks: &mut Tasks,
        commit: &mut Option<tokio::task::JoinHandle<CommitResult>>,
        tps: Vec<Tp>,
        lost: bool,
        reply: oneshot::Sender<Vec<(Tp, i64)>>,
        drain: Duration,
    ) {
        if let Some(pending) = commit.take() {
            self.on_commit(tasks, pending.await);
        }
        self.state.set_barrier();
        self.state.revoke(&tps);
        let deadline = Instant::now() + if lost { Duration::ZERO } else { drain };
        while self.state.running() > 0 && Instant::now() < deadline {
            tokio::select! {
                done = tasks.next() => match done {
                    Some(done) => self.on_done(tasks, done),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        if lost || self.state.running() > 0 || self.fatal.is_some() {
            self.abort_transaction().await;
            self.fatal.get_or_insert(if lost {
                "partitions were lost (the group moved on): the open transaction is aborted".into()
            } else {
                "records still running when revoked partitions had to go: the open transaction is aborted".into()
            });
        } else if let Some(pending) = self.start_transaction_commit() {
            self.on_commit(tasks, pending.await);
        } else {
            self.abort_transaction().await;
            self.fatal
                .get_or_insert("the revoked partitions' offsets could not be committed".into());
        }
        let _ = self.let_go(&tps);
        // Committed in the transaction: nothing for the callback to commit.
        let _ = reply.send(Vec::new());
    }

    /// Restores the stores' state of input `partitions`; a restore that fails or outlasts
    /// `engine.restore_timeout_ms` stops the engine (deciding without state is not an option).
    async fn restore(&mut self, partitions: &[i32]) {
        if self.stores.is_empty() || partitions.is_empty() {
            return;
        }
        match store::restore(
            &self.kafka,
            &self.stores,
            partitions,
            self.restore_timeout,
            &self.metrics,
        )
        .await
        {
            Ok(restored) => {
                for (store, r) in restored {
                    tracing::info!(%store, ?partitions, records = r.records, seconds = r.seconds, "state restored");
                }
                self.report_keys();
            }
            Err(e) => {
                tracing::error!(error = %e, "state restore failed");
                self.fatal
                    .get_or_insert(format!("state restore failed: {e}"));
            }
        }
    }

    fn report_keys(&self) {
        for store in &self.stores {
            self.metrics
                .state_keys
                .get_or_create(&StoreLabel {
                    store: store.name().to_string(),
                })
                .set(store.keys());
        }
    }

    fn on_done(&mut self, tasks: &mut Tasks, done: Done) {
        self.done_since_commit += 1;
        let Some(outcome) = done.outcome else {
            // Aborted at a revoke or shutdown: not done, so not finished in the state.
            self.state.abandon(&done.tp, done.epoch, done.bytes);
            return;
        };
        self.metrics
            .record_seconds
            .observe(done.received.elapsed().as_secs_f64());
        let i = match &outcome {
            Outcome::Processed => 0,
            Outcome::Retried => 1,
            Outcome::DeadLettered(_) => 2,
            Outcome::Fatal(_) => 3,
        };
        self.outcomes[i].inc();
        match outcome {
            Outcome::Fatal(reason) => {
                tracing::error!(
                    %reason,
                    topic = &*done.tp.0,
                    partition = done.tp.1,
                    offset = done.offset,
                    "record can be neither processed nor routed"
                );
                self.fatal.get_or_insert(reason);
                return;
            }
            Outcome::DeadLettered(class) => {
                self.metrics
                    .dead_letters
                    .get_or_create(&ErrorLabel {
                        error_class: class.into(),
                    })
                    .inc();
                self.observe_guard(true);
            }
            Outcome::Processed | Outcome::Retried => self.observe_guard(false),
        }
        if let Some(next) =
            self.state
                .finish(&done.tp, done.epoch, done.offset, done.order, done.bytes)
        {
            self.start(tasks, next, Instant::now());
        }
    }

    fn report_assignment(&self) {
        for (topic, n) in self.state.assigned_by_topic(&self.route.subscriptions()) {
            self.metrics
                .assigned_partitions
                .get_or_create(&TopicLabel { topic })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn observe_guard(&mut self, dead: bool) {
        if self.guard.record(dead) {
            tracing::error!(
                ratio = self.guard.ratio(),
                "DEAD-LETTER GUARD TRIPPED: too many records are being dead-lettered; consumption paused for the cool-down. Check the last deploy and the dead-letter topic {}",
                self.route.dead_letter_topic
            );
        }
    }

    /// Pauses and resumes what the state asks for.
    fn apply_flow(&mut self) {
        let holding = self.guard.holding();
        self.state.set_output_bytes(
            self.worker
                .output
                .unacked_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        self.metrics.guard_tripped.set(i64::from(holding));
        let flow = self.state.flow(holding);
        for (tps, pause) in [(&flow.pause, true), (&flow.resume, false)] {
            if tps.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in tps {
                tpl.add_partition(topic, *partition);
            }
            let result = if pause {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, pause, "pause/resume failed");
            }
        }
    }

    /// Starts a synchronous commit of what moved, off the runtime; its result decides what
    /// counts as committed (a failed commit is offered again next time).
    fn start_commit(&self) -> Option<tokio::task::JoinHandle<CommitResult>> {
        for (tp, n) in self.state.uncommitted() {
            self.metrics
                .uncommitted
                .get_or_create(&PartitionLabel {
                    topic: tp.0.to_string(),
                    partition: tp.1,
                })
                .set(n);
        }
        let positions = self.state.to_commit();
        if positions.is_empty() {
            return None;
        }
        let consumer = self.consumer.clone();
        Some(tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), _, pos) in &positions {
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos)) {
                    return (positions, Err(e.to_string()));
                }
            }
            let result = consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| e.to_string());
            (positions, result)
        }))
    }

    fn on_commit(&mut self, tasks: &mut Tasks, finished: Result<CommitResult, JoinError>) {
        if self.exactly_once {
            return self.on_transaction_commit(tasks, finished);
        }
        match finished {
            Ok((positions, Ok(()))) => {
                self.state.committed(&positions);
                self.metrics
                    .last_commit_ms
                    .store(now_ms(), Ordering::Relaxed);
            }
            Ok((_, Err(e))) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %e, "commit failed; will try again");
            }
            Err(e) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %e, "commit task failed; will try again");
            }
        }
    }

    /// When the loop must look again even if nothing happens: a held retry falls due, or the
    /// next commit.
    fn next_wake(&self, last_commit: Instant, committing: bool) -> Instant {
        let due = self.state.next_due().map(|t| {
            let wait = t.saturating_sub(now_ms()).max(0);
            Instant::now() + Duration::from_millis(wait.unsigned_abs())
        });
        wake_at(last_commit, self.commit_every, committing, due)
    }

    async fn abort_all(&mut self, tasks: &mut Tasks) {
        if !tasks.is_empty() {
            tracing::warn!(
                left = tasks.len(),
                "stopping with records not done; their offsets stay uncommitted"
            );
        }
        for token in self.tokens.values() {
            token.cancel();
        }
        while let Some(done) = tasks.next().await {
            self.on_done(tasks, done);
        }
    }
}

/// How far off the loop sets its own wake-up while a commit is in flight: the commit's
/// answer wakes it, so this only has to be a fixed instant (a moving one re-arms the timer on
/// every turn).
const COMMIT_IN_FLIGHT_WAKE: Duration = Duration::from_secs(3600);

/// When the loop wakes by itself: for the next commit (not while one is in flight: a commit
/// that outlasts the interval, on a slow or unreachable broker, would otherwise make the loop
/// wake at once, turn after turn, until it is answered), or for the first held retry that
/// comes due, whichever is first.
fn wake_at(
    last_commit: Instant,
    commit_every: Duration,
    committing: bool,
    retry_due: Option<Instant>,
) -> Instant {
    let commit = last_commit
        + if committing {
            COMMIT_IN_FLIGHT_WAKE
        } else {
            commit_every
        };
    retry_due.map_or(commit, |d| d.min(commit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit that takes longer than the commit interval (a slow or unreachable broker)
    /// must not make the loop wake at once, over and over, until it is answered: its answer
    /// wakes the loop. (Under callgrind the loop went round ~120 times per event.)
    #[test]
    fn a_commit_in_flight_does_not_spin_the_loop() {
        let started = Instant::now() - Duration::from_secs(1);
        let every = Duration::from_millis(200);
        assert!(
            wake_at(started, every, true, None) > Instant::now() + Duration::from_secs(60),
            "no wake for a commit while one is in flight"
        );
        assert_eq!(
            wake_at(started, every, false, None),
            started + every,
            "otherwise the next commit is due one interval after the last"
        );
        let retry = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            wake_at(started, every, true, Some(retry)),
            retry,
            "a held retry still wakes it"
        );
    }
}
