//! Consumer groups as Kafka's own tools see them: state, members and their assignment,
//! and per partition the committed offset, the log-end offset, the lag in messages and the
//! lag in seconds (the age of the record at the committed offset, from its broker timestamp;
//! 0 when caught up). `verdict groups`, `verdict replay` and the lag monitor read groups
//! only through [`GroupReader`].
//!
//! Limits: the group listing and member assignments come from ListGroups/DescribeGroups,
//! which describe classic groups (verdict's default); a KIP-848 (`group.protocol=consumer`)
//! group shows its state and committed offsets but no members.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{KafkaError, KafkaSettings};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One group as `kafka-consumer-groups --list --state` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
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
    pub state: String,
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

    /// True when no member is in the group (offsets may be reset).
    pub fn is_inactive(&self) -> bool {
        matches!(self.state.as_str(), "Empty" | "Dead" | "")
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

    /// Every group the cluster knows, sorted by name.
    pub async fn list(&self) -> Result<Vec<GroupSummary>, KafkaError> {
        let meta = self.meta.clone();
        blocking(move || {
            let list = meta.fetch_group_list(None, TIMEOUT)?;
            let mut out: Vec<GroupSummary> = list
                .groups()
                .iter()
                .map(|g| GroupSummary {
                    group: g.name().to_string(),
                    state: g.state().to_string(),
                    protocol_type: g.protocol_type().to_string(),
                    members: g.members().len(),
                })
                .collect();
            out.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(out)
        })
        .await
    }

    /// The group's state, members and, for every partition it owns or has committed,
    /// its offsets and lag. A group that does not exist is reported as state `Dead`
    /// with no partitions (as Kafka's tool does).
    pub async fn describe(&self, group: &str) -> Result<GroupLag, KafkaError> {
        let mut all = self.describe_many(&[group.to_string()]).await?;
        all.pop()
            .ok_or_else(|| KafkaError::Join(format!("no description of {group}")))
    }

    /// [`Self::describe`] for many groups at once, sharing the requests that do not depend
    /// on the group: one group listing, one metadata request, one batched watermark request
    /// and one read of the records at the lagging offsets; then one committed-offsets
    /// request per group.
    pub async fn describe_many(&self, groups: &[String]) -> Result<Vec<GroupLag>, KafkaError> {
        let meta = self.meta.clone();
        let (described, all) = blocking(move || {
            let list = meta.fetch_group_list(None, TIMEOUT)?;
            let described: BTreeMap<String, (String, Vec<Member>)> = list
                .groups()
                .iter()
                .map(|g| {
                    let members = g
                        .members()
                        .iter()
                        .map(|m| Member {
                            member_id: m.id().to_string(),
                            client_id: m.client_id().to_string(),
                            host: m.client_host().trim_start_matches('/').to_string(),
                            assignment: m
                                .assignment()
                                .and_then(parse_assignment)
                                .unwrap_or_default(),
                        })
                        .collect::<Vec<_>>();
                    (g.name().to_string(), (g.state().to_string(), members))
                })
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
            let (state, members) = described
                .get(g)
                .cloned()
                .unwrap_or_else(|| ("Dead".to_string(), Vec::new()));
            keys.extend(committed.keys().cloned());
            for m in &members {
                keys.extend(m.assignment.iter().cloned());
            }
            per_group.push((g, state, members, committed));
        }
        let watermarks = self.watermarks(keys.into_iter().collect()).await?;
        let at_ms = crate::now_ms();
        let mut out = Vec::with_capacity(per_group.len());
        let mut behind: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        for (group, state, members, committed) in per_group {
            let lag = assemble(group, state, members, &committed, &watermarks, at_ms);
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

/// A group's partitions from its committed offsets, its members' assignments and the
/// watermarks (pure; lag in seconds is filled in later, 0 where caught up).
fn assemble(
    group: &str,
    state: String,
    members: Vec<Member>,
    committed: &BTreeMap<(String, i32), i64>,
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
    at_ms: i64,
) -> GroupLag {
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
        group: group.to_string(),
        state,
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

/// Decodes a classic consumer-protocol assignment (`ConsumerProtocolAssignment`, any
/// version): int16 version, then an array of (topic string, int32 partitions), then user
/// data. `None` when the bytes are not one.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let partitions = r.i32()?;
        for _ in 0..partitions.max(0) {
            out.push((topic.clone(), r.i32()?));
        }
    }
    out.sort();
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        let b: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(i16::from_be_bytes(b))
    }

    fn i32(&mut self) -> Option<i32> {
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(i32::from_be_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend(i32::try_from(topics.len()).expect("ok").to_be_bytes());
        for (t, ps) in topics {
            b.extend(i16::try_from(t.len()).expect("ok").to_be_bytes());
            b.extend(t.as_bytes());
            b.extend(i32::try_from(ps.len()).expect("ok").to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1_i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn assignments_decode_whatever_the_version() {
        let bytes = assignment(3, &[("transactions", &[2, 0]), ("x", &[5])]);
        assert_eq!(
            parse_assignment(&bytes),
            Some(vec![
                ("transactions".to_string(), 0),
                ("transactions".to_string(), 2),
                ("x".to_string(), 5)
            ])
        );
        assert_eq!(parse_assignment(&assignment(0, &[])), Some(vec![]));
    }

    #[test]
    fn truncated_or_garbage_assignments_are_none_not_a_panic() {
        let bytes = assignment(1, &[("transactions", &[1, 2, 3])]);
        for cut in 0..bytes.len() - 4 {
            assert_eq!(parse_assignment(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
    }

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
        let g = assemble("g", "Stable".into(), vec![member], &committed, &marks, 1);
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
