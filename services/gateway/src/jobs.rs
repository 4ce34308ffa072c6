//! Jobs, as every gateway instance sees them: each instance reads the input, decision,
//! review and dead-letter topics itself into a bounded, time-limited store, so any instance
//! answers for any job without shared memory or a database.

use std::collections::BTreeMap;
use std::sync::Arc;
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
}

impl Status {
    /// No further change is expected (an `in_review` job still waits for its reviewer).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Complete | Status::DeadLettered)
    }
}

/// The jobs this instance knows, bounded by count and age.
pub struct JobStore {
    jobs: DashMap<String, Job>,
    /// When the last decision of each kind was read.
    last_decision: DashMap<String, i64>,
    changed: Notify,
    capacity: usize,
    ttl_ms: i64,
}

impl JobStore {
    pub fn new(capacity: usize, ttl_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            jobs: DashMap::new(),
            last_decision: DashMap::new(),
            changed: Notify::new(),
            capacity,
            ttl_ms,
        })
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs.get(id).map(|j| j.clone())
    }

    /// Records the webhook delivery state of a job.
    pub fn set_webhook(&self, id: &str, state: Json) {
        if let Some(mut j) = self.jobs.get_mut(id) {
            j.webhook = Some(state);
        }
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
        drop(job);
        self.evict(now_ms);
        self.changed.notify_waiters();
    }

    fn evict(&self, now_ms: i64) {
        if self.jobs.len() <= self.capacity {
            return;
        }
        self.jobs
            .retain(|_, j| now_ms - j.updated_at <= self.ttl_ms);
        while self.jobs.len() > self.capacity {
            let oldest = self
                .jobs
                .iter()
                .min_by_key(|j| j.updated_at)
                .map(|j| j.key().clone());
            match oldest {
                Some(k) => {
                    self.jobs.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Waits until the job changes after `seen` (its number of history entries) or `timeout`
    /// passes; returns it as known then.
    pub async fn changed_after(&self, id: &str, seen: usize, timeout: Duration) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let job = self.get(id);
            if job.as_ref().is_none_or(|j| j.history.len() > seen) {
                return job;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.get(id);
            }
        }
    }

    /// Waits until the job is no longer `processing` or `timeout` passes; returns it as known.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let job = self.get(id);
            if job.as_ref().is_some_and(|j| j.status != Status::Processing) {
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

/// Reads `topics` from `lookback_ms` ago onwards into `store`, until the process ends.
pub async fn follow(
    kafka: &KafkaSettings,
    registry_url: &str,
    topics: Vec<Followed>,
    lookback_ms: i64,
    store: Arc<JobStore>,
) -> Result<(), String> {
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
    let starts: BTreeMap<(String, i32), i64> = reader
        .offsets_for_time(partitions.clone(), since)
        .await
        .map_err(|e| e.to_string())?;
    let consumer: StreamConsumer = kafka.reader_config().create().map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &partitions {
        let at = starts.get(&(t.clone(), *p)).copied().unwrap_or(0);
        tpl.add_partition_offset(t, *p, Offset::Offset(at))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let serde = AvroSerde::new(registry_url);
    let by_topic: BTreeMap<String, Followed> =
        topics.into_iter().map(|f| (f.topic.clone(), f)).collect();
    loop {
        let m = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the job topics");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
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
        let s = JobStore::new(10, 60_000);
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
        let s = JobStore::new(10, 60_000);
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
    fn the_store_keeps_at_most_its_capacity_newest_first() {
        let s = JobStore::new(2, 1_000_000);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.apply(
                Role::Input,
                "t",
                &json!({"event_id": id}),
                None,
                i64::try_from(i).expect("small"),
            );
        }
        assert_eq!(s.len(), 2);
        assert!(s.get("a").is_none() && s.get("c").is_some());
    }

    #[test]
    fn a_resolution_completes_a_review_and_stays() {
        let s = JobStore::new(10, 60_000);
        let review = json!({"event_id": "r", "tenant_id": "t", "outcome": "REVIEW"});
        s.apply(Role::Decisions, "transaction", &review, None, 1);
        assert_eq!(s.reviews("t", true).len(), 1);
        let resolution = json!({"event_id": "r", "tenant_id": "t", "outcome": "APPROVE", "reviewer": "ana", "note": null, "resolved_at": 5});
        s.apply(Role::Resolution, "transaction", &resolution, None, 2);
        s.apply(Role::Review, "transaction", &review, None, 3);
        let j = s.get("r").expect("job");
        assert_eq!(j.status, Status::Complete);
        assert_eq!(j.reviewed_by.as_deref(), Some("ana"));
        assert!(s.reviews("t", true).is_empty());
        assert_eq!(s.reviews("t", false).len(), 1);
        assert!(s.reviews("other", false).is_empty());
    }

    #[tokio::test]
    async fn waiting_returns_when_the_decision_arrives_or_at_the_timeout() {
        let s = JobStore::new(10, 60_000);
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
