//! Consumer groups as Kafka's own tools see them: state, members and their assignment,
//! and per partition the committed offset, the log-end offset, the lag in messages and the
//! lag in seconds (the age of the record at the committed offset, from its broker timestamp;
//! 0 when caught up). `verdict groups`, `verdict replay` and the lag monitor read groups
//! only through [`GroupReader`].
//!
//! Groups, states, members and assignments come from librdkafka's ListConsumerGroups and
//! DescribeConsumerGroups ([`crate::groups_admin`]), which describe classic groups (verdict's
//! default) and KIP-848 (`group.protocol=consumer`) groups alike. A group the broker does not
//! know is reported as `Dead`; with no committed offsets either it does not exist
//! ([`GroupLag::exists`]). Limits: librdkafka names the KIP-848 states Assigning, Reconciling
//! and NotReady `Unknown`; groups of other protocol types (Connect, …) are not listed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::groups_admin::{GroupDescription, describe_groups, list_groups};
use crate::kafka::{KafkaError, KafkaSettings};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One group as `kafka-consumer-groups --list --state` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: String,
    /// `consumer` (classic consumer groups and KIP-848 groups), or empty for a group that only
    /// has committed offsets.
    pub protocol_type: String,
    /// The group protocol: `Classic`, `Consumer` (KIP-848) or `Unknown` (brokers before 3.8).
    pub group_type: String,
    pub members: usize,
}

/// A member of a group and the partitions assigned to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    pub assignment: Vec<(String, i32)>,
}

/// A group's lag per partition at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupLag {
    pub group: String,
    /// librdkafka's state name; `Dead` for a group the broker does not know.
    pub state: String,
    /// `Classic`, `Consumer` (KIP-848) or `Unknown`.
    pub group_type: String,
    /// False when the broker does not know the group and it has no committed offsets
    /// (Kafka's tool: "Consumer group 'X' does not exist.").
    pub exists: bool,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionLag>,
    /// When the offsets were read (ms since the epoch).
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The committed offset; `None` when the group has committed nothing here.
    pub committed: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    /// `log_end - committed`; `None` without a commit (Kafka's tool prints `-`).
    pub lag: Option<i64>,
    /// Age in seconds of the record at the committed offset; 0 when caught up.
    pub lag_seconds: Option<f64>,
    /// The member owning the partition, if any.
    pub member_id: Option<String>,
    pub client_id: Option<String>,
    pub host: Option<String>,
}

impl GroupLag {
    pub fn total_lag(&self) -> i64 {
        self.partitions.iter().filter_map(|p| p.lag).sum()
    }

    pub fn max_lag_seconds(&self) -> f64 {
        self.partitions
            .iter()
            .filter_map(|p| p.lag_seconds)
            .fold(0.0, f64::max)
    }

    /// True when no member is in the group (offsets may be reset): no members, and a state
    /// that agrees (a group between states, e.g. a KIP-848 one librdkafka calls `Unknown`,
    /// counts as active).
    pub fn is_inactive(&self) -> bool {
        self.members.is_empty() && matches!(self.state.as_str(), "Empty" | "Dead" | "")
    }
}

/// Reads groups and their offsets. Keeps one committed-offsets client per group (librdkafka
/// fetches committed offsets for the group its handle is configured with), so a monitor
/// polling every few seconds does not create clients each time.
#[derive(Clone)]
pub struct GroupReader {
    kafka: KafkaSettings,
    meta: Arc<BaseConsumer>,
    per_group: Arc<Mutex<BTreeMap<String, Arc<BaseConsumer>>>>,
    /// Reads the records at lagging offsets (created on first use).
    reader: Arc<Mutex<Option<Arc<Mutex<BaseConsumer>>>>>,
}

impl GroupReader {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            kafka: kafka.clone(),
            meta: Arc::new(kafka.metadata_consumer()?),
            per_group: Arc::default(),
            reader: Arc::default(),
        })
    }

    /// Every consumer group the cluster knows (classic and KIP-848), sorted by name. State,
    /// type and member count come from describing the listed groups; a group gone between
    /// the two requests is `Dead` with no members.
    pub async fn list(&self) -> Result<Vec<GroupSummary>, KafkaError> {
        let meta = self.meta.clone();
        blocking(move || {
            let listed = list_groups(meta.client(), TIMEOUT)?;
            let names: Vec<String> = listed.iter().map(|l| l.group.clone()).collect();
            let described: BTreeMap<String, _> = describe_groups(meta.client(), &names, TIMEOUT)?
                .into_iter()
                .map(|d| (d.group.clone(), d))
                .collect();
            let mut out: Vec<GroupSummary> = listed
                .into_iter()
                .map(|l| {
                    let d = described.get(&l.group);
                    GroupSummary {
                        state: d.map_or(l.state, |d| d.state.clone()),
                        protocol_type: if l.simple { "" } else { "consumer" }.to_string(),
                        group_type: d.map_or(l.group_type, |d| d.group_type.clone()),
                        members: d.map_or(0, |d| d.members.len()),
                        group: l.group,
                    }
                })
                .collect();
            out.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(out)
        })
        .await
    }

    /// The group's state, members and, for every partition it owns or has committed,
    /// its offsets and lag. A group the broker does not know is reported as state `Dead`;
    /// without committed offsets it does not exist (`exists` false, no partitions).
    pub async fn describe(&self, group: &str) -> Result<GroupLag, KafkaError> {
        let mut all = self.describe_many(&[group.to_string()]).await?;
        all.pop()
            .ok_or_else(|| KafkaError::Join(format!("no description of {group}")))
    }

    /// [`Self::describe`] for many groups at once, sharing the requests that do not depend
    /// on the group: one DescribeConsumerGroups call (librdkafka asks each group's
    /// coordinator), one metadata request, one batched watermark request and one read of the
    /// records at the lagging offsets; then one committed-offsets request per group.
    pub async fn describe_many(&self, groups: &[String]) -> Result<Vec<GroupLag>, KafkaError> {
        let meta = self.meta.clone();
        let names = groups.to_vec();
        let (described, all) = blocking(move || {
            let described: BTreeMap<String, GroupDescription> =
                describe_groups(meta.client(), &names, TIMEOUT)?
                    .into_iter()
                    .map(|d| (d.group.clone(), d))
                    .collect();
            // Every partition in the cluster: a group's topics are not known otherwise
            // once it has no members.
            let md = meta.fetch_metadata(None, TIMEOUT)?;
            let mut all = Vec::new();
            for t in md.topics() {
                if t.name().starts_with("__") || t.error().is_some() {
                    continue;
                }
                for p in t.partitions() {
                    all.push((t.name().to_string(), p.id()));
                }
            }
            Ok((described, all))
        })
        .await?;

        // One OffsetFetch per group, eight at a time.
        let fetched: Vec<Result<_, KafkaError>> = futures::stream::iter(groups)
            .map(|g| {
                let all = all.clone();
                async move { Ok((g, self.committed(g, all).await?)) }
            })
            .buffered(8)
            .collect()
            .await;
        let mut per_group = Vec::with_capacity(groups.len());
        let mut keys: BTreeSet<(String, i32)> = BTreeSet::new();
        for f in fetched {
            let (g, committed) = f?;
            let d = described
                .get(g)
                .cloned()
                .unwrap_or_else(|| GroupDescription {
                    group: g.clone(),
                    state: "Dead".to_string(),
                    group_type: "Unknown".to_string(),
                    members: Vec::new(),
                    not_found: true,
                });
            keys.extend(committed.keys().cloned());
            for m in &d.members {
                keys.extend(m.assignment.iter().cloned());
            }
            per_group.push((d, committed));
        }
        let watermarks = self.watermarks(keys.into_iter().collect()).await?;
        let at_ms = crate::now_ms();
        let mut out = Vec::with_capacity(per_group.len());
        let mut behind: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        for (d, committed) in per_group {
            let lag = assemble(d, &committed, &watermarks, at_ms);
            for p in &lag.partitions {
                if let (Some(c), Some(l)) = (p.committed, p.lag)
                    && l > 0
                {
                    behind.insert((p.topic.clone(), p.partition, c));
                }
            }
            out.push(lag);
        }
        // Lag in seconds: the broker timestamp of the record at each lagging offset.
        let stamps = self.timestamps_at(behind.into_iter().collect()).await?;
        for lag in &mut out {
            for p in &mut lag.partitions {
                if let (Some(c), Some(l)) = (p.committed, p.lag)
                    && l > 0
                    && let Some(ts) = stamps.get(&(p.topic.clone(), p.partition, c))
                {
                    p.lag_seconds = Some(seconds_between(*ts, at_ms));
                }
            }
        }
        Ok(out)
    }

    /// The offsets `group` has committed on `partitions` (those without a commit are absent).
    /// Asks the group coordinator; does not join the group.
    pub async fn committed(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
        let committer = self.committer(group)?;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &partitions {
                tpl.add_partition(t, *p);
            }
            Ok(offsets_of(&committer.committed_offsets(tpl, TIMEOUT)?))
        })
        .await
    }

    /// `(log start, log end)` of each partition, in two batched ListOffsets requests.
    pub async fn watermarks(
        &self,
        partitions: Vec<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), (i64, i64)>, KafkaError> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let meta = self.meta.clone();
        blocking(move || {
            let ask = |at: Offset| -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &partitions {
                    tpl.add_partition_offset(t, *p, at)?;
                }
                Ok(offsets_of(&meta.offsets_for_times(tpl, TIMEOUT)?))
            };
            // ListOffsets: timestamp -2 is the log start, -1 the log end. A topic created a
            // moment ago may not have its leaders yet: that is retried for a few seconds.
            let deadline = Instant::now() + Duration::from_secs(10);
            let retrying = |at: Offset| loop {
                match ask(at) {
                    Err(KafkaError::Client(e))
                        if leader_moving(&e) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => break other,
                }
            };
            let starts = retrying(Offset::Beginning)?;
            let ends = retrying(Offset::End)?;
            Ok(ends
                .into_iter()
                .map(|(k, end)| {
                    let start = starts.get(&k).copied().unwrap_or(0);
                    (k, (start, end))
                })
                .collect())
        })
        .await
    }

    /// For each partition, the first offset whose timestamp is at or after `ms`, or the log
    /// end when there is none (as `--reset-offsets --to-datetime` does).
    pub async fn offsets_for_time(
        &self,
        partitions: Vec<(String, i32)>,
        ms: i64,
    ) -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
        let meta = self.meta.clone();
        let ends = self.watermarks(partitions.clone()).await?;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &partitions {
                tpl.add_partition_offset(t, *p, Offset::Offset(ms))?;
            }
            let found = meta.offsets_for_times(tpl, TIMEOUT)?;
            Ok(found
                .elements()
                .iter()
                .map(|e| {
                    let key = (e.topic().to_string(), e.partition());
                    let end = ends.get(&key).map_or(0, |w| w.1);
                    let offset = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => end,
                    };
                    (key, offset)
                })
                .collect())
        })
        .await
    }

    /// Commits `offsets` for `group` without joining it (the group must have no members).
    pub async fn commit(
        &self,
        group: &str,
        offsets: Vec<(String, i32, i64)>,
    ) -> Result<(), KafkaError> {
        let committer = self.committer(group)?;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p, o) in &offsets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
            }
            committer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
            Ok(())
        })
        .await
    }

    /// The broker timestamps of the records at the given offsets (a missing record, e.g.
    /// deleted by retention, gives the next one's), read with one assignment.
    pub async fn timestamps_at(
        &self,
        at: Vec<(String, i32, i64)>,
    ) -> Result<BTreeMap<(String, i32, i64), i64>, KafkaError> {
        if at.is_empty() {
            return Ok(BTreeMap::new());
        }
        let reader = self.timestamp_reader()?;
        blocking(move || {
            let reader = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut out = BTreeMap::new();
            for round in reading_rounds(at) {
                let mut tpl = TopicPartitionList::new();
                for ((t, p), wanted) in &round {
                    let first = wanted.first().copied().unwrap_or(0);
                    tpl.add_partition_offset(t, *p, Offset::Offset(first))?;
                }
                reader.assign(&tpl)?;
                // librdkafka keeps a partition's pause flag across assignments.
                reader.resume(&tpl)?;
                let mut open: BTreeMap<(String, i32), Vec<i64>> = round.into_iter().collect();
                let deadline = Instant::now() + Duration::from_secs(5);
                while !open.is_empty() && Instant::now() < deadline {
                    let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) else {
                        continue;
                    };
                    let key = (m.topic().to_string(), m.partition());
                    let (Some(ts), Some(wanted)) = (m.timestamp().to_millis(), open.get_mut(&key))
                    else {
                        continue;
                    };
                    // Every wanted offset this record reaches takes its timestamp.
                    while let Some(w) = wanted.first().copied().filter(|w| *w <= m.offset()) {
                        out.insert((key.0.clone(), key.1, w), ts);
                        wanted.remove(0);
                    }
                    if wanted.is_empty() {
                        open.remove(&key);
                        let mut done = TopicPartitionList::new();
                        done.add_partition(&key.0, key.1);
                        reader.pause(&done)?;
                    }
                }
            }
            reader.unassign()?;
            Ok(out)
        })
        .await
    }

    fn timestamp_reader(&self) -> Result<Arc<Mutex<BaseConsumer>>, KafkaError> {
        let mut slot = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(Mutex::new(self.kafka.reader_config().create()?));
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Drops the committed-offsets clients of groups not in `groups` (a monitor calls this
    /// after each poll, so groups that went away do not keep a client).
    pub fn retain_clients(&self, groups: &[String]) {
        self.per_group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|g, _| groups.contains(g));
    }

    fn committer(&self, group: &str) -> Result<Arc<BaseConsumer>, KafkaError> {
        let mut map = self
            .per_group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(group) {
            return Ok(c.clone());
        }
        let mut cfg = self.kafka.consumer_config(group);
        self.kafka.apply_properties(&mut cfg);
        let c: Arc<BaseConsumer> = Arc::new(cfg.create()?);
        map.insert(group.to_string(), c.clone());
        Ok(c)
    }
}

/// Plans reading the records at `at`: per partition, the wanted offsets sorted and cut into
/// runs without gaps over [`MAX_SCAN_GAP`] (each run is read forward from its first offset);
/// a round holds at most one run per partition.
fn reading_rounds(at: Vec<(String, i32, i64)>) -> Vec<Round> {
    let mut per: BTreeMap<(String, i32), BTreeSet<i64>> = BTreeMap::new();
    for (t, p, o) in at {
        per.entry((t, p)).or_default().insert(o);
    }
    let mut rounds: Vec<Round> = Vec::new();
    for (key, offsets) in per {
        let mut runs: Vec<Vec<i64>> = Vec::new();
        for o in offsets {
            match runs.last_mut() {
                Some(run) if run.last().is_some_and(|l| o - l <= MAX_SCAN_GAP) => run.push(o),
                _ => runs.push(vec![o]),
            }
        }
        for (i, run) in runs.into_iter().enumerate() {
            if rounds.len() <= i {
                rounds.push(Vec::new());
            }
            rounds[i].push((key.clone(), run));
        }
    }
    rounds
}

/// One reading round: per partition, the wanted offsets it scans for.
type Round = Vec<((String, i32), Vec<i64>)>;

/// Wanted offsets of one partition this close together are read in one forward scan.
const MAX_SCAN_GAP: i64 = 5_000;

/// Whether a group exists: the broker knows it, or it has committed offsets (a group whose
/// members all left and whose state the coordinator dropped still has its offsets).
fn group_exists(not_found: bool, committed: &BTreeMap<(String, i32), i64>) -> bool {
    !not_found || !committed.is_empty()
}

/// A group's partitions from its description, committed offsets and the watermarks (pure;
/// lag in seconds is filled in later, 0 where caught up).
fn assemble(
    d: GroupDescription,
    committed: &BTreeMap<(String, i32), i64>,
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
    at_ms: i64,
) -> GroupLag {
    let GroupDescription {
        group,
        state,
        group_type,
        members,
        not_found,
    } = d;
    let mut owners: BTreeMap<(String, i32), &Member> = BTreeMap::new();
    for m in &members {
        for tp in &m.assignment {
            owners.insert(tp.clone(), m);
        }
    }
    let keys: BTreeSet<&(String, i32)> = committed.keys().chain(owners.keys()).collect();
    let partitions = keys
        .into_iter()
        .map(|tp| {
            let (log_start, log_end) = watermarks.get(tp).copied().unwrap_or((0, 0));
            let committed = committed.get(tp).copied();
            let owner = owners.get(tp);
            PartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                committed,
                log_start,
                log_end,
                lag: committed.map(|c| (log_end - c).max(0)),
                lag_seconds: committed.filter(|c| *c >= log_end).map(|_| 0.0),
                member_id: owner.map(|m| m.member_id.clone()),
                client_id: owner.map(|m| m.client_id.clone()),
                host: owner.map(|m| m.host.clone()),
            }
        })
        .collect();
    GroupLag {
        exists: group_exists(not_found, committed),
        group,
        state,
        group_type,
        members,
        partitions,
        at_ms,
    }
}

/// Errors of a partition whose leader is being elected (a new topic, a moving leader).
fn leader_moving(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::NotLeaderForPartition | C::LeaderNotAvailable | C::UnknownTopicOrPartition)
    )
}

/// The partitions of `tpl` that have an offset (not "invalid", "end", …), by partition.
fn offsets_of(tpl: &TopicPartitionList) -> BTreeMap<(String, i32), i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))?
}

/// Seconds from `from_ms` to `to_ms`, never negative (clocks differ a little).
pub fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = (to_ms - from_ms).max(0) as f64 / 1000.0;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_from_commits_and_assignments() {
        let member = Member {
            member_id: "m-1".into(),
            client_id: "fraud".into(),
            host: "127.0.0.1".into(),
            assignment: vec![("t".into(), 0), ("t".into(), 1)],
        };
        let committed = BTreeMap::from([(("t".to_string(), 0), 7), (("u".to_string(), 0), 3)]);
        let marks = BTreeMap::from([
            (("t".to_string(), 0), (0, 10)),
            (("t".to_string(), 1), (0, 4)),
            (("u".to_string(), 0), (2, 3)),
        ]);
        let d = GroupDescription {
            group: "g".into(),
            state: "Stable".into(),
            group_type: "Consumer".into(),
            members: vec![member],
            not_found: false,
        };
        let g = assemble(d, &committed, &marks, 1);
        let row = |t: &str, p: i32| {
            g.partitions
                .iter()
                .find(|x| x.topic == t && x.partition == p)
                .expect("row")
        };
        assert_eq!(g.partitions.len(), 3);
        assert_eq!((row("t", 0).lag, row("t", 0).lag_seconds), (Some(3), None));
        assert_eq!(row("t", 0).client_id.as_deref(), Some("fraud"));
        assert_eq!((row("t", 1).committed, row("t", 1).lag), (None, None));
        assert_eq!(
            (row("u", 0).lag, row("u", 0).lag_seconds),
            (Some(0), Some(0.0))
        );
        assert_eq!(row("u", 0).member_id, None);
        assert_eq!(g.total_lag(), 3);
        assert!(g.exists && !g.is_inactive());
        assert_eq!(g.group_type, "Consumer");
    }

    #[test]
    fn a_group_exists_when_the_broker_knows_it_or_it_has_offsets() {
        let unknown = |committed: &BTreeMap<(String, i32), i64>| {
            assemble(
                GroupDescription {
                    group: "g".into(),
                    state: "Dead".into(),
                    group_type: "Classic".into(),
                    members: Vec::new(),
                    not_found: true,
                },
                committed,
                &BTreeMap::new(),
                1,
            )
        };
        let none = unknown(&BTreeMap::new());
        assert!(!none.exists && none.partitions.is_empty() && none.is_inactive());
        let with_offsets = unknown(&BTreeMap::from([(("t".to_string(), 0), 5)]));
        assert!(with_offsets.exists && with_offsets.is_inactive());
        assert!(group_exists(false, &BTreeMap::new()));
    }

    #[test]
    fn only_a_group_without_members_in_an_idle_state_is_inactive() {
        let lag = |state: &str, members: usize| GroupLag {
            group: "g".into(),
            state: state.into(),
            group_type: "Consumer".into(),
            exists: true,
            members: (0..members)
                .map(|i| Member {
                    member_id: format!("m-{i}"),
                    client_id: "c".into(),
                    host: "h".into(),
                    assignment: Vec::new(),
                })
                .collect(),
            partitions: Vec::new(),
            at_ms: 0,
        };
        assert!(lag("Empty", 0).is_inactive());
        assert!(lag("Dead", 0).is_inactive());
        assert!(lag("", 0).is_inactive());
        // KIP-848 Assigning/Reconciling come from librdkafka as Unknown.
        assert!(!lag("Unknown", 1).is_inactive());
        assert!(!lag("Unknown", 0).is_inactive());
        assert!(!lag("Stable", 2).is_inactive());
        assert!(!lag("Empty", 1).is_inactive());
    }

    #[test]
    fn close_offsets_are_read_in_one_scan_and_far_ones_in_later_rounds() {
        let at = vec![
            ("t".to_string(), 0, 10),
            ("t".to_string(), 0, 500),
            ("t".to_string(), 0, 100_000),
            ("t".to_string(), 1, 7),
            ("t".to_string(), 0, 10),
        ];
        let rounds = reading_rounds(at);
        assert_eq!(rounds.len(), 2);
        assert_eq!(
            rounds[0],
            vec![
                (("t".to_string(), 0), vec![10, 500]),
                (("t".to_string(), 1), vec![7])
            ]
        );
        assert_eq!(rounds[1], vec![(("t".to_string(), 0), vec![100_000])]);
    }

    #[test]
    fn seconds_are_never_negative() {
        assert!((seconds_between(1_000, 3_500) - 2.5).abs() < 1e-9);
        assert!(seconds_between(5_000, 3_000).abs() < f64::EPSILON);
    }
}
