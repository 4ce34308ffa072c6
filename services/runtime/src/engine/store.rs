//! State stores: per-key state a stage keeps across records, as Kafka Streams' stores are.
//!
//! - **Scoped to an input partition.** The state of partition p of the input lives where p
//!   is assigned, and only records read from the input topic (first attempts) touch it.
//!   A retried record may be read by another instance (retry topics are not co-partitioned
//!   with the input), so what a later attempt needs from the state travels with the retry
//!   copy in a header ([`RecordState::remember`], [`RecordState::recall`]).
//! - **Backed by a changelog.** Every change is written to partition p of the store's
//!   compacted changelog topic (`<group>-<store>-changelog`, declared in the topology) with
//!   the record's outputs, and acknowledged before the record counts as done, so before its
//!   offset is committed. Values are JSON.
//! - **Restored before use.** When p is assigned, its state is read back from the changelog
//!   up to the end before any record of p runs ([`restore`]).
//! - **Bounded.** A value says when it stops mattering ([`StoreValue::expires_at`], in event
//!   time); every [`SWEEP_EVERY`] changes of a partition, values expired by its stream time are
//!   dropped from memory. Stream time is the highest record timestamp of the partition, and a
//!   timestamp more than [`MAX_AHEAD_MS`] ahead of this host's clock does not move it, so no
//!   single record can expire the others. The changelog forgets them by compaction and its
//!   retention (`compact,delete`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProcessError;
use crate::headers::HeaderMap;
use crate::kafka::KafkaSettings;
use crate::metrics::{Metrics, StoreLabel, StorePartitionLabel};
use crate::now_ms;

/// Changes of a partition between two sweeps of its expired values.
pub const SWEEP_EVERY: u64 = 4096;
/// A record timestamp further ahead of this host's clock does not move stream time.
pub const MAX_AHEAD_MS: i64 = 5 * 60 * 1000;
/// The prefix of the headers that carry remembered state to a record's later attempts.
pub const MEMO_HEADER_PREFIX: &str = "verdict.state.";

/// A value kept in a store.
pub trait StoreValue: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The stream time (event time, ms) after which this value no longer matters and may
    /// be dropped.
    fn expires_at(&self) -> i64;
}

/// One change to write to a changelog.
pub(crate) struct ChangelogWrite {
    pub topic: Arc<str>,
    pub partition: i32,
    pub key: Box<[u8]>,
    pub value: Vec<u8>,
}

impl ChangelogWrite {
    pub(crate) fn outbound(&self) -> super::output::Outbound<'_> {
        super::output::Outbound {
            topic: &self.topic,
            partition: Some(self.partition),
            key: Some(&self.key),
            value: Some(&self.value),
            headers: None,
        }
    }
}

/// What a record may do with state: change stores (first attempts only) and remember values
/// for its later attempts.
pub struct RecordState<'a> {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    /// The record is on the input topic, so its partition's stores are here.
    local: bool,
    headers: &'a HeaderMap,
    writes: Mutex<Vec<ChangelogWrite>>,
    /// Names and values remembered; made headers only if the record fails.
    memo: Mutex<Vec<(&'static str, String)>>,
}

impl fmt::Debug for RecordState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordState")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<'a> RecordState<'a> {
    /// The state of the record at `offset` of `partition`: `local` when it was read from the
    /// input topic (its partition's stores are here), `headers` what it carries.
    pub fn new(
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        local: bool,
        headers: &'a HeaderMap,
    ) -> Self {
        Self {
            partition,
            offset,
            timestamp_ms,
            local,
            headers,
            writes: Mutex::default(),
            memo: Mutex::default(),
        }
    }

    /// A state for a record outside the engine (tests, tools): on its input partition, no
    /// carried headers.
    pub fn detached(partition: i32, offset: i64, timestamp_ms: Option<i64>) -> Self {
        static EMPTY: HeaderMap = HeaderMap(Vec::new());
        Self::new(partition, offset, timestamp_ms, true, &EMPTY)
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's Kafka timestamp.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Keeps `value` under `name` for this record's later attempts (a header of its retry
    /// and dead-letter copies).
    pub fn remember(&self, name: &'static str, value: impl Into<String>) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.push((name, value.into()));
        }
    }

    /// Whether the record carries header `name`.
    pub(crate) fn carries(&self, name: &str) -> bool {
        self.headers.get(name).is_some()
    }

    /// What an earlier attempt of this record remembered under `name`.
    pub fn recall(&self, name: &str) -> Option<&str> {
        self.headers.get(&format!("{MEMO_HEADER_PREFIX}{name}"))
    }

    /// The changelog writes of this record so far (taken: written once).
    pub(crate) fn take_writes(&self) -> Vec<ChangelogWrite> {
        self.writes
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// The remembered values, as headers.
    pub(crate) fn memo(&self) -> Vec<(String, String)> {
        self.memo
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(name, value)| (format!("{MEMO_HEADER_PREFIX}{name}"), value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A store a processor asked for by name ([`super::Route::store`]); cheap to clone.
pub struct Store<V>(Arc<StoreInner<V>>);

impl<V> fmt::Debug for Store<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.0.name)
            .field("changelog", &self.0.changelog)
            .finish_non_exhaustive()
    }
}

impl<V> Clone for Store<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct StoreInner<V> {
    name: String,
    changelog: Arc<str>,
    partitions: DashMap<i32, Arc<Part<V>>>,
}

struct Part<V> {
    map: DashMap<Box<[u8]>, V>,
    stream_time: AtomicI64,
    changes: AtomicU64,
}

impl<V: StoreValue> Part<V> {
    fn new() -> Self {
        Self {
            map: DashMap::new(),
            stream_time: AtomicI64::new(i64::MIN),
            changes: AtomicU64::new(0),
        }
    }

    fn sweep(&self) {
        let now = self.stream_time.load(Ordering::Relaxed);
        self.map.retain(|_, v| v.expires_at() >= now);
    }
}

impl<V: StoreValue> Store<V> {
    fn new(name: &str, changelog: &str) -> Self {
        Self(Arc::new(StoreInner {
            name: name.to_string(),
            changelog: changelog.into(),
            partitions: DashMap::new(),
        }))
    }

    /// Runs `change` on the value under `key` in the record's partition (a default value if
    /// there is none) and gives back its answer. `change` says whether it changed the value;
    /// a changed value is written to the changelog with the record's outputs.
    ///
    /// `Ok(None)` for a later attempt, read from a retry topic: the state of its input
    /// partition is not here (see [`RecordState::recall`]).
    pub fn update<R>(
        &self,
        record: &RecordState<'_>,
        key: &[u8],
        change: impl FnOnce(&mut V) -> (R, bool),
    ) -> Result<Option<R>, ProcessError> {
        if !record.local {
            return Ok(None);
        }
        let part = self
            .0
            .partitions
            .get(&record.partition)
            .map(|p| p.clone())
            .ok_or_else(|| {
                ProcessError::transient(
                    "state",
                    format!(
                        "store `{}` has no state of partition {} here",
                        self.0.name, record.partition
                    ),
                )
            })?;
        if let Some(ts) = record
            .timestamp_ms
            .filter(|ts| *ts <= now_ms() + MAX_AHEAD_MS)
        {
            part.stream_time.fetch_max(ts, Ordering::Relaxed);
        }
        let (answer, value) = {
            let mut entry = part.map.entry(key.into()).or_default();
            let (answer, changed) = change(&mut entry);
            (answer, changed.then(|| serde_json::to_vec(&*entry)))
        };
        if let Some(value) = value {
            let value = value.map_err(|e| ProcessError::transient("state", e.to_string()))?;
            if let Ok(mut writes) = record.writes.lock() {
                writes.push(ChangelogWrite {
                    topic: self.0.changelog.clone(),
                    partition: record.partition,
                    key: key.into(),
                    value,
                });
            }
            if part
                .changes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SWEEP_EVERY)
            {
                part.sweep();
            }
        }
        Ok(Some(answer))
    }

    /// Keys held in memory, over the partitions here.
    pub fn key_count(&self) -> i64 {
        let n: usize = self.0.partitions.iter().map(|p| p.map.len()).sum();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// A copy of the value under `key` in `partition`, if any (tests and tools).
    pub fn get(&self, partition: i32, key: &[u8]) -> Option<V>
    where
        V: Clone,
    {
        let part = self.0.partitions.get(&partition)?;
        part.map.get(key).map(|v| v.clone())
    }

    /// The values under `key` in every partition held here, by partition.
    pub fn local(&self, key: &[u8]) -> Vec<(i32, V)>
    where
        V: Clone,
    {
        self.0
            .partitions
            .iter()
            .filter_map(|p| p.map.get(key).map(|v| (*p.key(), v.clone())))
            .collect()
    }

    /// The store's changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.0.changelog
    }

    /// Makes `partition` local and empty (tests and tools; the engine restores it).
    pub fn open_empty(&self, partition: i32) {
        self.0.partitions.insert(partition, Arc::new(Part::new()));
    }
}

/// What the engine does with a store, whatever its values.
pub(crate) trait Restorable: Send + Sync {
    fn name(&self) -> &str;
    fn changelog(&self) -> &str;
    /// Starts filling `partition` afresh (a restore); it becomes visible at [`Self::open`].
    fn begin(&self, partition: i32) -> Box<dyn Filling>;
    fn close(&self, partition: i32);
    /// Keys held in memory.
    fn keys(&self) -> i64;
}

/// A partition being restored.
pub(crate) trait Filling: Send {
    /// Applies one changelog record (`None`: a tombstone). A value that does not parse is
    /// an error naming the key.
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
    /// The restored partition, made visible.
    fn open(self: Box<Self>);
}

struct Fill<V> {
    store: Store<V>,
    partition: i32,
    part: Part<V>,
}

impl<V: StoreValue> Filling for Fill<V> {
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match value {
            None => {
                self.part.map.remove(key);
            }
            Some(bytes) => {
                let value: V = serde_json::from_slice(bytes).map_err(|e| {
                    format!(
                        "store `{}`: the changelog value of key {} does not parse: {e}",
                        self.store.0.name,
                        String::from_utf8_lossy(key)
                    )
                })?;
                // Expired values go at the first sweep, once records set the stream time.
                self.part.map.insert(key.into(), value);
            }
        }
        Ok(())
    }

    fn open(self: Box<Self>) {
        let Fill {
            store,
            partition,
            part,
        } = *self;
        store.0.partitions.insert(partition, Arc::new(part));
    }
}

impl<V: StoreValue> Restorable for Store<V> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn changelog(&self) -> &str {
        &self.0.changelog
    }

    fn begin(&self, partition: i32) -> Box<dyn Filling> {
        Box::new(Fill {
            store: self.clone(),
            partition,
            part: Part::new(),
        })
    }

    fn close(&self, partition: i32) {
        self.0.partitions.remove(&partition);
    }

    fn keys(&self) -> i64 {
        self.key_count()
    }
}

/// The stores the topology declares for a service, and those its processor opened.
#[derive(Clone, Default)]
pub struct Stores(Arc<StoresInner>);

#[derive(Default)]
struct StoresInner {
    /// Store name → changelog topic, from the topology.
    declared: BTreeMap<String, String>,
    opened: Mutex<Vec<Arc<dyn Restorable>>>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.declared.iter()).finish()
    }
}

impl Stores {
    pub fn declared(declared: BTreeMap<String, String>) -> Self {
        Self(Arc::new(StoresInner {
            declared,
            opened: Mutex::default(),
        }))
    }

    /// The store `name`, which the topology must declare; asked for once.
    pub fn open<V: StoreValue>(&self, service: &str, name: &str) -> Result<Store<V>, String> {
        let changelog = self.0.declared.get(name).ok_or_else(|| {
            format!(
                "topology: [services.{service}].stores has no `{name}` (declare it as {name} = \"{}\")",
                crate::topology::changelog_topic("<consumer_group>", name)
            )
        })?;
        let mut opened = self
            .0
            .opened
            .lock()
            .map_err(|_| "the store registry is poisoned".to_string())?;
        if opened.iter().any(|s| s.name() == name) {
            return Err(format!("store `{name}` is opened twice"));
        }
        let store = Store::<V>::new(name, changelog);
        opened.push(Arc::new(store.clone()));
        Ok(store)
    }

    pub(crate) fn opened(&self) -> Vec<Arc<dyn Restorable>> {
        self.0.opened.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// How a restore went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Restored {
    pub records: u64,
    pub seconds: f64,
}

/// Restores `partitions` of every store from its changelog, from the beginning to the end
/// it had when the restore started, before any record of them runs. Fails after
/// `deadline` (the engine stops rather than decide without its state).
pub(crate) async fn restore(
    kafka: &KafkaSettings,
    stores: &[Arc<dyn Restorable>],
    partitions: &[i32],
    deadline: Duration,
    metrics: &Metrics,
) -> Result<Vec<(String, Restored)>, String> {
    if stores.is_empty() || partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut cfg = kafka.reader_config();
    cfg.set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    kafka.apply_properties(&mut cfg);
    let consumer: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    let stores = stores.to_vec();
    let partitions = partitions.to_vec();
    let gauges: Vec<_> = stores
        .iter()
        .map(|s| {
            partitions
                .iter()
                .map(|p| {
                    metrics
                        .state_restore_remaining
                        .get_or_create(&StorePartitionLabel {
                            store: s.name().to_string(),
                            partition: *p,
                        })
                        .clone()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let results = tokio::task::spawn_blocking(move || {
        stores
            .iter()
            .zip(gauges)
            .map(|(store, gauges)| {
                restore_store(&consumer, store.as_ref(), &partitions, &gauges, deadline)
                    .map(|r| (store.name().to_string(), r))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| format!("the restore task failed: {e}"))??;
    for (name, r) in &results {
        let label = StoreLabel {
            store: name.clone(),
        };
        metrics
            .state_restored_records
            .get_or_create(&label)
            .inc_by(r.records);
        metrics
            .state_restore_seconds
            .get_or_create(&label)
            .inc_by(r.seconds);
    }
    Ok(results)
}

fn restore_store(
    consumer: &BaseConsumer,
    store: &dyn Restorable,
    partitions: &[i32],
    gauges: &[prometheus_client::metrics::gauge::Gauge],
    deadline: Duration,
) -> Result<Restored, String> {
    let started = Instant::now();
    let topic = store.changelog();
    let mut fills = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    // Broker trouble (a leader moving, a broker restarting) is waited out up to the deadline.
    let late = |what: String| {
        format!(
            "restoring store `{}` from {topic} took longer than {deadline:?}: {what}",
            store.name()
        )
    };
    for (p, gauge) in partitions.iter().zip(gauges) {
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, *p, Duration::from_secs(5)) {
                Ok(marks) => break marks,
                Err(e) if started.elapsed() < deadline => {
                    tracing::warn!(error = %e, %topic, partition = p, "changelog end not known yet; asking again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(late(format!("the end of partition {p}: {e}"))),
            }
        };
        let fill = store.begin(*p);
        if high <= low {
            fill.open();
            gauge.set(0);
            continue;
        }
        gauge.set(high - low);
        fills.insert(*p, (fill, high, gauge.clone()));
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    let mut records = 0u64;
    if !fills.is_empty() {
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        while !fills.is_empty() {
            if started.elapsed() > deadline {
                return Err(late(format!(
                    "{records} records read; partitions left: {:?}",
                    fills.keys().collect::<Vec<_>>()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    records += 1;
                    let p = m.partition();
                    let Some((fill, high, gauge)) = fills.get_mut(&p) else {
                        continue;
                    };
                    let Some(key) = m.key() else { continue };
                    fill.apply(key, m.payload())?;
                    if records.is_multiple_of(10_000) {
                        gauge.set((*high - m.offset() - 1).max(0));
                    }
                    if m.offset() + 1 >= *high {
                        finish(&mut fills, p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => finish(&mut fills, p),
                // librdkafka retries fetches itself; the deadline bounds the wait.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, %topic, "changelog read error; going on");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        consumer
            .unassign()
            .map_err(|e| format!("changelog {topic}: {e}"))?;
    }
    Ok(Restored {
        records,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn finish(
    fills: &mut BTreeMap<
        i32,
        (
            Box<dyn Filling>,
            i64,
            prometheus_client::metrics::gauge::Gauge,
        ),
    >,
    partition: i32,
) {
    if let Some((fill, _, gauge)) = fills.remove(&partition) {
        gauge.set(0);
        fill.open();
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Count {
        n: u32,
        expires_at: i64,
    }

    impl StoreValue for Count {
        fn expires_at(&self) -> i64 {
            self.expires_at
        }
    }

    fn store() -> Store<Count> {
        let stores = Stores::declared([("counts".to_string(), "g-counts-changelog".into())].into());
        assert!(
            stores
                .open::<Count>("svc", "other")
                .expect_err("undeclared")
                .contains("[services.svc].stores has no `other`")
        );
        let store = stores.open::<Count>("svc", "counts").expect("declared");
        assert!(
            stores.open::<Count>("svc", "counts").is_err(),
            "opened once"
        );
        store
    }

    fn bump(store: &Store<Count>, state: &RecordState<'_>, key: &str, expires_at: i64) -> u32 {
        store
            .update(state, key.as_bytes(), |c| {
                c.n += 1;
                c.expires_at = expires_at;
                (c.n, true)
            })
            .expect("local")
            .expect("first attempt")
    }

    #[test]
    fn changes_are_written_to_the_changelog_partition_of_the_record() {
        let store = store();
        store.open_empty(3);
        let state = RecordState::detached(3, 10, Some(now_ms()));
        assert_eq!(bump(&store, &state, "k", i64::MAX), 1);
        assert_eq!(bump(&store, &state, "k", i64::MAX), 2);
        let writes = state.take_writes();
        assert_eq!(writes.len(), 2);
        assert_eq!(
            (&*writes[1].topic, writes[1].partition, &*writes[1].key),
            ("g-counts-changelog", 3, b"k".as_slice())
        );
        assert_eq!(
            serde_json::from_slice::<Count>(&writes[1].value)
                .expect("json")
                .n,
            2
        );
        assert!(state.take_writes().is_empty(), "taken once");

        let elsewhere = RecordState::detached(4, 0, None);
        assert!(
            store.update(&elsewhere, b"k", |c| (c.n, false)).is_err(),
            "a partition that is not here is an error, not an empty state"
        );
        let headers = HeaderMap::default();
        let retry = RecordState::new(3, 0, None, false, &headers);
        assert_eq!(
            store
                .update(&retry, b"k", |c| (c.n, false))
                .expect("no error"),
            None,
            "a later attempt has no state"
        );
    }

    #[test]
    fn a_restore_replays_values_and_tombstones_and_sweeps_drop_expired_values() {
        let store = store();
        let mut fill = store.begin(0);
        let value =
            |n: u32, expires_at: i64| serde_json::to_vec(&Count { n, expires_at }).expect("json");
        fill.apply(b"a", Some(&value(1, 100))).expect("applies");
        fill.apply(b"b", Some(&value(5, i64::MAX)))
            .expect("applies");
        fill.apply(b"a", Some(&value(2, 100))).expect("applies");
        fill.apply(b"c", Some(&value(9, i64::MAX)))
            .expect("applies");
        fill.apply(b"c", None).expect("a tombstone");
        let err = fill.apply(b"d", Some(b"{")).expect_err("bad json");
        assert!(err.contains("key d"), "{err}");
        assert_eq!(store.get(0, b"a"), None, "not visible before it is open");
        fill.open();
        assert_eq!(store.get(0, b"a").map(|c| c.n), Some(2));
        assert_eq!(store.get(0, b"c"), None);
        assert_eq!(store.key_count(), 2);

        // Stream time moves with record timestamps; `a` expired at 100.
        for i in 0..SWEEP_EVERY {
            let state = RecordState::detached(0, i as i64, Some(1_000));
            bump(&store, &state, "b", i64::MAX);
        }
        assert_eq!(store.get(0, b"a"), None, "swept");
        assert!(store.get(0, b"b").is_some());
        // A timestamp far ahead of the clock does not move stream time.
        let state = RecordState::detached(0, 0, Some(now_ms() + 3_600_000));
        bump(&store, &state, "e", now_ms());
        for i in 0..SWEEP_EVERY {
            let state = RecordState::detached(0, i as i64, Some(1_000));
            bump(&store, &state, "b", i64::MAX);
        }
        assert!(store.get(0, b"e").is_some(), "not expired by one record");
    }
}
