//! Jobs, as every gateway instance sees them: each instance reads the input, decision,
//! review and dead-letter topics itself into a bounded, time-limited store, so any instance
//! answers for any job without shared memory or a database.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value as Json;
use tokio::sync::Notify;
use verdict_runtime::groups::GroupReader;
use verdict_runtime::headers::{self, HeaderMap};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::serde::AvroSerde;
use verdict_runtime::service::RegistrySection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Processing,
    InReview,
    Complete,
    DeadLettered,
}

/// What a topic means for the jobs on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Input,
    Decisions,
    Review,
    DeadLetters,
    /// A person's resolution of a review (`review-resolutions`).
    Resolution,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job_id: String,
    #[serde(skip)]
    pub tenant: String,
    pub kind: String,
    pub status: Status,
    pub submitted_at: Option<i64>,
    pub updated_at: i64,
    pub decision: Option<Json>,
    pub dead_letter: Option<Json>,
    /// Who resolved the review, when a person did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// The resolution: outcome, note, when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<Json>,
    /// Webhook delivery (on the instance that accepted the job): URL, attempts, delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Json>,
    /// Every status the job went through, numbered from 1 (the SSE event ids).
    #[serde(skip)]
    pub history: Vec<(u64, Status, i64)>,
    /// The store's number of its last change, and the bytes it was counted as then.
    #[serde(skip)]
    change: u64,
    #[serde(skip)]
    bytes: usize,
}

impl Status {
    /// No further change is expected (an `in_review` job still waits for its reviewer).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Complete | Status::DeadLettered)
    }
}

/// The jobs this instance knows, bounded by bytes and age.
///
/// Every change is queued in order; the front of the queue is the least recently changed
/// job (or a change since superseded, skipped when reached). Eviction pops the front while
/// the store is over its bytes or the front is older than the TTL: O(1) a change, however
/// many jobs there are. (A cache crate's admission and background eviction would not keep
/// the newest jobs exactly, nor run on the record times the tests give.)
pub struct JobStore {
    jobs: DashMap<String, Job>,
    /// (job id, change number, when) of every change, oldest first.
    changes: Mutex<VecDeque<(String, u64, i64)>>,
    next_change: AtomicU64,
    bytes: AtomicUsize,
    /// Jobs someone waits on (`?wait`, SSE, a webhook): woken only by their own changes.
    waiters: DashMap<String, Arc<Notify>>,
    /// When the last decision of each kind was read.
    last_decision: DashMap<String, i64>,
    max_bytes: usize,
    ttl_ms: i64,
}

/// Bytes a job is counted as beyond its JSON: the map entry, the queue entry, the struct.
const JOB_OVERHEAD: usize = 384;

/// About how much memory a JSON value holds.
fn json_bytes(v: &Json) -> usize {
    24 + match v {
        Json::String(s) => s.len(),
        Json::Array(a) => a.iter().map(json_bytes).sum(),
        Json::Object(o) => o.iter().map(|(k, v)| 24 + k.len() + json_bytes(v)).sum(),
        Json::Null | Json::Bool(_) | Json::Number(_) => 0,
    }
}

impl Job {
    fn weight(&self) -> usize {
        let json = [
            &self.decision,
            &self.dead_letter,
            &self.review,
            &self.webhook,
        ]
        .into_iter()
        .flatten()
        .map(json_bytes)
        .sum::<usize>();
        JOB_OVERHEAD
            + 2 * self.job_id.len()
            + self.tenant.len()
            + self.kind.len()
            + self.reviewed_by.as_ref().map_or(0, String::len)
            + json
            + self.history.len() * std::mem::size_of::<(u64, Status, i64)>()
    }
}

/// A waiter's interest in one job; the job's entry goes when its last waiter does.
struct Waiting<'a> {
    store: &'a JobStore,
    id: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // The map's copy and this one: nobody else waits.
        self.store
            .waiters
            .remove_if(self.id, |_, n| Arc::strong_count(n) <= 2);
    }
}

impl JobStore {
    pub fn new(max_bytes: usize, ttl_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            jobs: DashMap::new(),
            changes: Mutex::new(VecDeque::new()),
            next_change: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            waiters: DashMap::new(),
            last_decision: DashMap::new(),
            max_bytes,
            ttl_ms,
        })
    }

    /// The bytes the jobs are counted as.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn waiting<'a>(&'a self, id: &'a str) -> Waiting<'a> {
        let notify = self
            .waiters
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Waiting {
            store: self,
            id,
            notify,
        }
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs.get(id).map(|j| j.clone())
    }

    /// Records the webhook delivery state of a job.
    pub fn set_webhook(&self, id: &str, state: Json) {
        let Some(mut j) = self.jobs.get_mut(id) else {
            return;
        };
        j.webhook = Some(state);
        let now = j.updated_at;
        let change = self.touch(&mut j);
        drop(j);
        self.queue(id, change, now);
    }

    /// The tenant's jobs with a review: open (`in_review`) or resolved.
    pub fn reviews(&self, tenant: &str, open: bool) -> Vec<Job> {
        let mut out: Vec<Job> = self
            .jobs
            .iter()
            .filter(|j| j.tenant == tenant)
            .filter(|j| {
                if open {
                    j.status == Status::InReview
                } else {
                    j.reviewed_by.is_some()
                }
            })
            .map(|j| j.clone())
            .collect();
        out.sort_by_key(|j| j.updated_at);
        out
    }

    /// When a decision of `kind` was last read (ms).
    pub fn last_decision(&self, kind: &str) -> Option<i64> {
        self.last_decision.get(kind).map(|t| *t)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Applies what a record on a topic of `role` says about its event (pure state change;
    /// a job never goes back from a final state to `processing`).
    pub fn apply(
        &self,
        role: Role,
        kind: &str,
        value: &Json,
        dead_letter: Option<Json>,
        now_ms: i64,
    ) {
        let Some(id) = value["event_id"].as_str() else {
            return;
        };
        let tenant = value["tenant_id"].as_str().unwrap_or_default().to_string();
        if role == Role::Decisions {
            self.last_decision.insert(kind.to_string(), now_ms);
        }
        let status = match role {
            Role::Input => Status::Processing,
            Role::Review => Status::InReview,
            Role::DeadLetters => Status::DeadLettered,
            Role::Resolution => Status::Complete,
            Role::Decisions => {
                let outcome = value
                    .get("outcome")
                    .or_else(|| value.get("route"))
                    .and_then(Json::as_str);
                if outcome == Some("REVIEW") {
                    Status::InReview
                } else {
                    Status::Complete
                }
            }
        };
        let mut job = self.jobs.entry(id.to_string()).or_insert_with(|| Job {
            job_id: id.to_string(),
            tenant: tenant.clone(),
            kind: kind.to_string(),
            status: Status::Processing,
            submitted_at: None,
            updated_at: now_ms,
            decision: None,
            dead_letter: None,
            reviewed_by: None,
            review: None,
            webhook: None,
            history: Vec::new(),
            change: 0,
            bytes: 0,
        });
        match role {
            Role::Input => {
                job.submitted_at = value["occurred_at"].as_i64().or(Some(now_ms));
            }
            Role::Decisions | Role::Review => {
                if job.decision.is_none() || role == Role::Decisions {
                    job.decision = Some(value.clone());
                }
                // A resolved review stays resolved when the decision is read again.
                if job.reviewed_by.is_none()
                    && (job.status != Status::Complete || role == Role::Decisions)
                {
                    job.status = status;
                }
            }
            // The first resolution of a review counts; a later one (two people at once) is
            // ignored, the same way on every instance.
            Role::Resolution if job.reviewed_by.is_some() => {}
            Role::Resolution => {
                job.status = status;
                job.reviewed_by = value["reviewer"].as_str().map(String::from);
                job.review = Some(serde_json::json!({
                    "outcome": value["outcome"],
                    "note": value["note"],
                    "resolved_at": value["resolved_at"],
                }));
            }
            Role::DeadLetters => {
                job.status = status;
                job.dead_letter = dead_letter;
            }
        }
        job.updated_at = now_ms;
        if job.history.last().map(|h| h.1) != Some(job.status) {
            let seq = job.history.len() as u64 + 1;
            let status = job.status;
            job.history.push((seq, status, now_ms));
        }
        let change = self.touch(&mut job);
        drop(job);
        self.queue(id, change, now_ms);
        self.evict(now_ms);
        if let Some(n) = self.waiters.get(id) {
            n.notify_waiters();
        }
    }

    /// Counts a changed job's bytes again and numbers the change. The change is queued by
    /// [`Self::queue`] once the job's entry is released: eviction takes the queue's lock and
    /// then entries', so nothing may take them the other way round.
    fn touch(&self, job: &mut Job) -> u64 {
        let bytes = job.weight();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.bytes.fetch_sub(job.bytes, Ordering::Relaxed);
        job.bytes = bytes;
        job.change = self.next_change.fetch_add(1, Ordering::Relaxed) + 1;
        job.change
    }

    fn queue(&self, id: &str, change: u64, now_ms: i64) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((id.to_string(), change, now_ms));
    }

    /// Drops the least recently changed jobs while over the bytes, and every job unchanged
    /// for the TTL.
    fn evict(&self, now_ms: i64) {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((id, change, at)) = changes.front() {
            if self.bytes() <= self.max_bytes && now_ms - at <= self.ttl_ms {
                break;
            }
            // Only if this is still the job's last change (else a later one is queued).
            if let Some((_, job)) = self.jobs.remove_if(id, |_, j| j.change == *change) {
                self.bytes.fetch_sub(job.bytes, Ordering::Relaxed);
            }
            changes.pop_front();
        }
    }

    /// Waits until the job changes after `seen` (its number of history entries) or `timeout`
    /// passes; returns it as known then.
    pub async fn changed_after(&self, id: &str, seen: usize, timeout: Duration) -> Option<Job> {
        self.wait_for(id, timeout, |j| j.history.len() > seen).await
    }

    /// Waits until the job's review is resolved (by whichever resolution came first) or
    /// `timeout` passes; returns it as known.
    pub async fn reviewed(&self, id: &str, timeout: Duration) -> Option<Job> {
        self.wait_for(id, timeout, |j| j.review.is_some())
            .await
            .filter(|j| j.review.is_some())
    }

    /// Waits until the job is no longer `processing` or `timeout` passes; returns it as known.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<Job> {
        self.wait_for(id, timeout, |j| j.status != Status::Processing)
            .await
    }

    /// Waits, woken only by this job's changes, until `done` holds for it, it is unknown, or
    /// `timeout` passes.
    async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Job) -> bool,
    ) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        let waiting = self.waiting(id);
        loop {
            let changed = waiting.notify.notified();
            let job = self.get(id);
            if job.as_ref().is_none_or(&done) {
                return job;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.get(id);
            }
        }
    }
}

/// A topic the store follows, with its role and the kind of job on it.
#[derive(Debug, Clone)]
pub struct Followed {
    pub topic: String,
    pub role: Role,
    pub kind: String,
}

/// How a starting instance caught up with the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Records between where it started and where the partitions ended at the start.
    pub records: i64,
    pub took: Duration,
}

/// Where to start reading each partition: `lookback` ago, but no further back than its
/// share of `catch_up` records from its end (the newest), nor before its start.
fn starts(
    by_time: &BTreeMap<(String, i32), i64>,
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
    catch_up: usize,
) -> BTreeMap<(String, i32), i64> {
    let share = i64::try_from(catch_up / watermarks.len().max(1))
        .unwrap_or(i64::MAX)
        .max(1);
    watermarks
        .iter()
        .map(|(tp, &(low, high))| {
            let since = by_time.get(tp).copied().unwrap_or(low);
            (tp.clone(), since.max(high - share).max(low).min(high))
        })
        .collect()
}

/// Reads `topics` into `store` until the process ends: from `lookback_ms` ago, but at most
/// `catch_up` records of history (see [`starts`]); then on. `caught_up` is called once every
/// partition has been read to where it ended at the start: until then the instance would
/// not know jobs it should.
pub async fn follow(
    kafka: &KafkaSettings,
    registry: &RegistrySection,
    topics: Vec<Followed>,
    lookback_ms: i64,
    catch_up: usize,
    store: Arc<JobStore>,
    caught_up: impl FnOnce(CatchUp),
) -> Result<(), String> {
    let began = std::time::Instant::now();
    let reader = GroupReader::new(kafka).map_err(|e| e.to_string())?;
    let mut partitions = Vec::new();
    for f in &topics {
        let n = i32::try_from(kafka.partition_count(&f.topic).await).unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "topic {} does not exist (apply the topology)",
                f.topic
            ));
        }
        partitions.extend((0..n).map(|p| (f.topic.clone(), p)));
    }
    let since = verdict_runtime::now_ms() - lookback_ms;
    let by_time = reader
        .offsets_for_time(partitions.clone(), since)
        .await
        .map_err(|e| e.to_string())?;
    let watermarks = reader
        .watermarks(partitions)
        .await
        .map_err(|e| e.to_string())?;
    let starts = starts(&by_time, &watermarks, catch_up);
    // Partition → where it ended at the start, while not read that far.
    let mut behind: BTreeMap<(String, i32), i64> = starts
        .iter()
        .filter_map(|(tp, &at)| {
            let end = watermarks.get(tp).map_or(at, |w| w.1);
            (at < end).then(|| (tp.clone(), end))
        })
        .collect();
    let records = behind.iter().map(|(tp, end)| end - starts[tp]).sum();
    let consumer: StreamConsumer = kafka.reader_config().create().map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for ((t, p), at) in &starts {
        tpl.add_partition_offset(t, *p, Offset::Offset(*at))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let serde = AvroSerde::with_timeout(
        registry.endpoint(),
        std::time::Duration::from_millis(registry.timeout_ms),
    );
    let by_topic: BTreeMap<String, Followed> =
        topics.into_iter().map(|f| (f.topic.clone(), f)).collect();
    let mut caught_up = Some(caught_up);
    let mut done = |behind: &BTreeMap<(String, i32), i64>| {
        if behind.is_empty()
            && let Some(tell) = caught_up.take()
        {
            tell(CatchUp {
                records,
                took: began.elapsed(),
            });
        }
    };
    done(&behind);
    // Control records (transaction markers) have no message: positions tell those apart.
    let mut positions = tokio::time::interval(Duration::from_millis(250));
    loop {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = positions.tick(), if !behind.is_empty() => {
                if let Ok(at) = consumer.position() {
                    for e in at.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let tp = (e.topic().to_string(), e.partition());
                            if behind.get(&tp).is_some_and(|end| o >= *end) {
                                behind.remove(&tp);
                            }
                        }
                    }
                    done(&behind);
                }
                continue;
            }
        };
        // Lets the rest of the process (requests, a shutdown) run while history pours in.
        tokio::task::coop::consume_budget().await;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the job topics");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let tp = (m.topic().to_string(), m.partition());
        if behind.get(&tp).is_some_and(|end| m.offset() + 1 >= *end) {
            behind.remove(&tp);
            done(&behind);
        }
        let Some(f) = by_topic.get(m.topic()) else {
            continue;
        };
        // Dead letters keep the input's bytes; anything that does not decode is skipped.
        let Ok(value) = serde.decode(m.payload()).await else {
            continue;
        };
        let dead_letter = (f.role == Role::DeadLetters).then(|| {
            let h = HeaderMap::from_kafka(m.headers());
            serde_json::json!({
                "error_class": h.get(headers::ERROR_CLASS),
                "service": h.get(headers::SERVICE),
                "retryable": h.get(headers::ERROR_RETRYABLE) == Some("true"),
            })
        });
        store.apply(
            f.role,
            &f.kind,
            &value,
            dead_letter,
            verdict_runtime::now_ms(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_moves_forward_and_never_back() {
        let s = JobStore::new(usize::MAX, 60_000);
        let input = json!({"event_id": "e1", "tenant_id": "t", "occurred_at": 5});
        s.apply(Role::Input, "transaction", &input, None, 10);
        assert_eq!(s.get("e1").expect("job").status, Status::Processing);
        let decision = json!({"event_id": "e1", "tenant_id": "t", "outcome": "APPROVE"});
        s.apply(Role::Decisions, "transaction", &decision, None, 20);
        // A late copy of the input (a replay) does not undo the decision.
        s.apply(Role::Input, "transaction", &input, None, 30);
        let j = s.get("e1").expect("job");
        assert_eq!(j.status, Status::Complete);
        assert_eq!(j.decision.expect("decision")["outcome"], "APPROVE");
        assert_eq!(j.submitted_at, Some(5));
        let seen: Vec<(u64, Status)> = j.history.iter().map(|h| (h.0, h.1)).collect();
        assert_eq!(seen, vec![(1, Status::Processing), (2, Status::Complete)]);
    }

    #[test]
    fn review_and_dead_letters_have_their_status() {
        let s = JobStore::new(usize::MAX, 60_000);
        s.apply(
            Role::Decisions,
            "transaction",
            &json!({"event_id": "r", "outcome": "REVIEW"}),
            None,
            1,
        );
        s.apply(
            Role::Review,
            "transaction",
            &json!({"event_id": "r", "outcome": "REVIEW"}),
            None,
            2,
        );
        assert_eq!(s.get("r").expect("job").status, Status::InReview);
        s.apply(
            Role::DeadLetters,
            "transaction",
            &json!({"event_id": "d"}),
            Some(json!({"error_class": "Decode"})),
            3,
        );
        let d = s.get("d").expect("job");
        assert_eq!(d.status, Status::DeadLettered);
        assert_eq!(d.dead_letter.expect("why")["error_class"], "Decode");
    }

    #[test]
    fn the_store_keeps_its_bytes_least_recently_changed_out_first() {
        let one = {
            let s = JobStore::new(usize::MAX, i64::MAX);
            s.apply(Role::Input, "t", &json!({"event_id": "a"}), None, 0);
            s.bytes()
        };
        // Room for two jobs of this size.
        let s = JobStore::new(2 * one + one / 2, i64::MAX);
        s.apply(Role::Input, "t", &json!({"event_id": "a"}), None, 0);
        s.apply(Role::Input, "t", &json!({"event_id": "b"}), None, 1);
        // `a` changes again: now `b` is the least recently changed.
        s.apply(Role::Input, "t", &json!({"event_id": "a"}), None, 2);
        s.apply(Role::Input, "t", &json!({"event_id": "c"}), None, 3);
        assert!(s.get("b").is_none(), "b went first");
        assert!(s.get("a").is_some() && s.get("c").is_some());
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 2 * one);
        // A large decision counts: it pushes out both others.
        let big = json!({"event_id": "d", "outcome": "APPROVE", "reasons": "x".repeat(2 * one)});
        s.apply(Role::Decisions, "t", &big, None, 4);
        assert_eq!(s.len(), 0, "d alone is over the bytes too");
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn changes_and_evictions_from_many_threads_never_deadlock() {
        // Over its bytes all the time: every change evicts while others change jobs.
        let s = JobStore::new(8 * 1024, i64::MAX);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let id = format!("j{}", (i * 7 + t) % 50);
                        s.apply(Role::Input, "t", &json!({"event_id": id}), None, i);
                        s.set_webhook(&id, json!({"attempts": i}));
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for t in threads {
            while !t.is_finished() {
                assert!(std::time::Instant::now() < deadline, "deadlocked");
                std::thread::sleep(Duration::from_millis(10));
            }
            t.join().expect("thread");
        }
        assert!(s.bytes() <= 8 * 1024);
    }

    #[test]
    fn jobs_unchanged_for_the_ttl_go() {
        let s = JobStore::new(usize::MAX, 100);
        s.apply(Role::Input, "t", &json!({"event_id": "old"}), None, 0);
        s.apply(Role::Input, "t", &json!({"event_id": "new"}), None, 150);
        assert!(s.get("old").is_none() && s.get("new").is_some());
    }

    #[test]
    fn catch_up_reads_the_newest_share_of_each_partition_within_the_lookback() {
        let tp = |p| ("t".to_string(), p);
        let watermarks = BTreeMap::from([
            (tp(0), (0, 1_000_000)),
            (tp(1), (0, 10)),
            (tp(2), (500, 600)),
            (tp(3), (0, 0)),
        ]);
        // The lookback reaches back to 999,990 on partition 0, to the start elsewhere.
        let by_time = BTreeMap::from([(tp(0), 999_990), (tp(1), 0)]);
        let s = starts(&by_time, &watermarks, 400);
        assert_eq!(s[&tp(0)], 999_990, "the lookback is nearer than the share");
        assert_eq!(s[&tp(1)], 0);
        assert_eq!(s[&tp(2)], 500, "never before the log start");
        assert_eq!(s[&tp(3)], 0);
        let s = starts(&BTreeMap::new(), &watermarks, 400);
        assert_eq!(s[&tp(0)], 1_000_000 - 100, "a quarter of 400 each");
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_waiters_of_its_job() {
        let s = JobStore::new(usize::MAX, 60_000);
        s.apply(Role::Input, "t", &json!({"event_id": "w"}), None, 0);
        s.apply(Role::Input, "t", &json!({"event_id": "other"}), None, 0);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait("w", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.waiters.len(), 1);
        s.apply(
            Role::Decisions,
            "t",
            &json!({"event_id": "other", "outcome": "APPROVE"}),
            None,
            1,
        );
        s.apply(
            Role::Decisions,
            "t",
            &json!({"event_id": "w", "outcome": "APPROVE"}),
            None,
            2,
        );
        let done = waiter.await.expect("join").expect("job");
        assert_eq!(done.status, Status::Complete);
        assert!(
            s.waiters.is_empty(),
            "the last waiter took its entry with it"
        );
    }

    #[test]
    fn a_resolution_completes_a_review_and_stays() {
        let s = JobStore::new(usize::MAX, 60_000);
        let review = json!({"event_id": "r", "tenant_id": "t", "outcome": "REVIEW"});
        s.apply(Role::Decisions, "transaction", &review, None, 1);
        assert_eq!(s.reviews("t", true).len(), 1);
        let resolution = json!({"event_id": "r", "tenant_id": "t", "outcome": "APPROVE", "reviewer": "ana", "note": null, "resolved_at": 5});
        s.apply(Role::Resolution, "transaction", &resolution, None, 2);
        let later = json!({"event_id": "r", "tenant_id": "t", "outcome": "DECLINE", "reviewer": "bo", "note": null, "resolved_at": 6});
        s.apply(Role::Resolution, "transaction", &later, None, 3);
        s.apply(Role::Review, "transaction", &review, None, 4);
        let j = s.get("r").expect("job");
        assert_eq!(j.status, Status::Complete);
        assert_eq!(
            j.reviewed_by.as_deref(),
            Some("ana"),
            "the first resolution counts"
        );
        assert_eq!(j.review.expect("review")["outcome"], "APPROVE");
        assert!(s.reviews("t", true).is_empty());
        assert_eq!(s.reviews("t", false).len(), 1);
        assert!(s.reviews("other", false).is_empty());
    }

    #[tokio::test]
    async fn waiting_returns_when_the_decision_arrives_or_at_the_timeout() {
        let s = JobStore::new(usize::MAX, 60_000);
        s.apply(Role::Input, "t", &json!({"event_id": "w"}), None, 0);
        let waited = s.wait("w", Duration::from_millis(50)).await.expect("job");
        assert_eq!(waited.status, Status::Processing);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait("w", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.apply(
            Role::Decisions,
            "t",
            &json!({"event_id": "w", "outcome": "DECLINE"}),
            None,
            1,
        );
        let done = waiter.await.expect("join").expect("job");
        assert_eq!(done.status, Status::Complete);
    }
}
