//! `verdict dlq list|show|redrive`: dead letters grouped by error class and service, one
//! shown with all its headers, and redrive back to the topic each was first read from.
//!
//! A redrive remembers each dead letter it sent, not how far a selection got: the topology
//! gives every dead-letter topic a compacted ledger, `<topic>.redriven`, with one record per
//! letter sent back (key `partition@offset`). A run reads the ledger, scans the dead-letter
//! topic to its end as it was at the start, sends the selected letters not in the ledger with
//! key, value and headers intact plus `verdict.redrive.count`, waits for the broker's
//! acknowledgements, and only then writes them to the ledger. Whatever the selections, a
//! letter goes back once; a run stopped between its sends and its ledger write sends those
//! letters again (at least once).
//!
//! A dead letter's origin header is only what its producer wrote: a record goes back only to
//! a topic the topology says the service behind the dead-letter topic reads (its input and
//! retry topics). One pointing anywhere else is refused, counted by where it pointed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use verdict_runtime::registry::Registry;

use serde::Serialize;
use verdict_runtime::groups::GroupReader;
use verdict_runtime::headers::{self, HeaderMap};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::topology::Topology;

use crate::CliError;
use crate::records::{RawRecord, Scanner};
use crate::table::{Output, Table};

/// The header counting how often a record was redriven.
pub const REDRIVE_COUNT: &str = "verdict.redrive.count";

const STALL: Duration = Duration::from_secs(30);

/// The engine's name of an error class given in any case (`invalid` → `Invalid`); a name
/// that is none of them is refused with the list, rather than matching nothing.
pub fn error_class(name: &str) -> Result<String, CliError> {
    verdict_runtime::error::ProcessError::CLASSES
        .iter()
        .find(|c| c.eq_ignore_ascii_case(name))
        .map(|c| (*c).to_string())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--class `{name}` is no error class; the services write: {}",
                verdict_runtime::error::ProcessError::CLASSES.join(", ")
            ))
        })
}

/// Which dead letters a redrive sends (every condition given must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selection {
    /// Error classes (`verdict.errors.exception.class.name`); empty = any.
    pub classes: Vec<String>,
    pub service: Option<String>,
    /// Failed at or after / before (ms since the epoch).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub partition: Option<i32>,
    /// Offsets in the dead-letter topic, inclusive.
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
}

impl Selection {
    pub fn matches(&self, r: &RawRecord) -> bool {
        let class = r.headers.get(headers::ERROR_CLASS).unwrap_or("");
        let at = failed_at(r);
        (self.classes.is_empty() || self.classes.iter().any(|c| c == class))
            && self
                .service
                .as_deref()
                .is_none_or(|s| r.headers.get(headers::SERVICE) == Some(s))
            && self.since_ms.is_none_or(|t| at.is_some_and(|a| a >= t))
            && self.until_ms.is_none_or(|t| at.is_some_and(|a| a < t))
            && self.partition.is_none_or(|p| r.partition == p)
            && self.from_offset.is_none_or(|o| r.offset >= o)
            && self.to_offset.is_none_or(|o| r.offset <= o)
    }
}

/// The ledger of what was redriven from `dead_letter_topic` (declared in the topology).
pub fn ledger_topic(dead_letter_topic: &str) -> String {
    format!("{dead_letter_topic}.redriven")
}

/// A ledger key: the dead letter's place in its topic.
fn ledger_key(partition: i32, offset: i64) -> String {
    format!("{partition}@{offset}")
}

fn parse_ledger_key(key: &[u8]) -> Option<(i32, i64)> {
    let (p, o) = std::str::from_utf8(key).ok()?.split_once('@')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// The dead letters the ledger says were sent back.
async fn read_ledger(
    reader: &GroupReader,
    kafka: &KafkaSettings,
    ledger: &str,
) -> Result<BTreeSet<(i32, i64)>, CliError> {
    crate::partitions_of(kafka, ledger)
        .await
        .map_err(|e| match e {
            CliError::Usage(_) => CliError::Usage(format!(
                "the redrive ledger {ledger} does not exist: `verdict topology apply` creates it"
            )),
            other => other,
        })?;
    let ranges = ranges(reader, kafka, ledger, &BTreeMap::new()).await?;
    let mut scanner = Scanner::new(kafka, ledger, &ranges)?;
    let mut sent = BTreeSet::new();
    while let Some(r) = scanner.next(STALL).await? {
        if let Some(k) = r.key.as_deref().and_then(parse_ledger_key) {
            sent.insert(k);
        }
    }
    Ok(sent)
}

/// When the record failed: its `verdict.errors.failed.at` header, else its timestamp.
fn failed_at(r: &RawRecord) -> Option<i64> {
    r.headers
        .get(headers::FAILED_AT)
        .and_then(|s| s.parse().ok())
        .or(r.timestamp_ms)
}

/// One line of `dlq list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCount {
    pub class: String,
    pub service: String,
    pub original_topic: String,
    pub count: usize,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Groups dead letters by (class, service, original topic), with counts and time range.
pub fn summarize(records: &[RawRecord]) -> Vec<ClassCount> {
    let mut by: BTreeMap<(String, String, String), ClassCount> = BTreeMap::new();
    for r in records {
        let get = |k: &str| r.headers.get(k).unwrap_or("-").to_string();
        let key = (
            get(headers::ERROR_CLASS),
            get(headers::SERVICE),
            get(headers::ORIGINAL_TOPIC),
        );
        let at = failed_at(r);
        let e = by.entry(key.clone()).or_insert_with(|| ClassCount {
            class: key.0,
            service: key.1,
            original_topic: key.2,
            count: 0,
            first_ms: at,
            last_ms: at,
        });
        e.count += 1;
        e.first_ms = match (e.first_ms, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        e.last_ms = e.last_ms.max(at);
    }
    by.into_values().collect()
}

/// The redriven copy of a dead letter: same key, value and headers, redrive count + 1.
pub fn redriven_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    let n: u32 = h
        .get(REDRIVE_COUNT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    out.set(REDRIVE_COUNT, (n + 1).to_string());
    out
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(|m| jiff::Timestamp::from_millisecond(m).ok())
        .map_or_else(
            || "-".into(),
            |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
}

/// Each partition's `(start, end)`: from `from` (or the log start) to the log end now.
async fn ranges(
    reader: &GroupReader,
    kafka: &KafkaSettings,
    topic: &str,
    from: &BTreeMap<(String, i32), i64>,
) -> Result<BTreeMap<i32, (i64, i64)>, CliError> {
    let n = crate::partitions_of(kafka, topic).await?;
    let parts: Vec<(String, i32)> = (0..n).map(|p| (topic.to_string(), p)).collect();
    let marks = reader.watermarks(parts).await?;
    Ok(marks
        .into_iter()
        .map(|((t, p), (low, high))| {
            let start = from.get(&(t, p)).copied().unwrap_or(low).max(low);
            (p, (start, high))
        })
        .collect())
}

async fn read_all(
    kafka: &KafkaSettings,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
) -> Result<Vec<RawRecord>, CliError> {
    let mut scanner = Scanner::new(kafka, topic, ranges)?;
    let mut out = Vec::new();
    while let Some(r) = scanner.next(STALL).await? {
        out.push(r);
    }
    Ok(out)
}

/// `verdict dlq list TOPIC`.
pub async fn list(
    kafka: &KafkaSettings,
    topic: &str,
    selection: &Selection,
    output: Output,
) -> Result<(), CliError> {
    let reader = GroupReader::new(kafka)?;
    let ranges = ranges(&reader, kafka, topic, &BTreeMap::new()).await?;
    let mut records = read_all(kafka, topic, &ranges).await?;
    records.retain(|r| selection.matches(r));
    let rows = summarize(&records);
    let mut t = Table::new([
        "CLASS",
        "SERVICE",
        "ORIGINAL-TOPIC",
        "COUNT",
        "FIRST",
        "LAST",
    ]);
    for r in &rows {
        t.row([
            r.class.clone(),
            r.service.clone(),
            r.original_topic.clone(),
            r.count.to_string(),
            time(r.first_ms),
            time(r.last_ms),
        ]);
    }
    output.print(&t, &rows)?;
    if output == Output::Table {
        println!("{} dead letter(s) in {topic}", records.len());
    }
    Ok(())
}

/// `verdict dlq show TOPIC --partition P --offset O`: the record, all its headers, and its
/// value decoded through the registry when it is Confluent-framed Avro.
pub async fn show(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), CliError> {
    let partitions = crate::partitions_of(kafka, topic).await?;
    if !(0..partitions).contains(&partition) {
        return Err(CliError::Usage(format!(
            "{topic} has no partition {partition} (it has {partitions})"
        )));
    }
    // Asked for an offset outside the log, a consumer starts where its reset policy says:
    // refuse it here, naming what the partition holds (as kcat's "offset out of range").
    let marks = GroupReader::new(kafka)?
        .watermarks(vec![(topic.to_string(), partition)])
        .await?;
    let (low, high) = marks
        .get(&(topic.to_string(), partition))
        .copied()
        .unwrap_or((0, 0));
    if !(low..high).contains(&offset) {
        let holds = if low < high {
            format!("holds offsets {low} to {}", high - 1)
        } else {
            format!("is empty (next offset {high})")
        };
        return Err(CliError::Usage(format!(
            "{topic} partition {partition} has no offset {offset}: it {holds}"
        )));
    }
    let ranges = BTreeMap::from([(partition, (offset, offset + 1))]);
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let Some(r) = scanner.next(Duration::from_secs(10)).await.ok().flatten() else {
        return Err(CliError::Usage(format!(
            "{topic} has no record at partition {partition} offset {offset}"
        )));
    };
    let serde = verdict_runtime::serde::AvroSerde::new(registry);
    let value = crate::records::describe_value(&serde, r.value.as_deref()).await;
    let shown = serde_json::json!({
        "topic": topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": time(r.timestamp_ms),
        "key": r.key.as_deref().map(String::from_utf8_lossy),
        "headers": r.headers.0.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect::<BTreeMap<_, _>>(),
        "value": value,
    });
    crate::table::print_json(&shown)
}

/// Where the dead letters of one dead-letter topic may go back to: what the services that
/// write it read.
#[derive(Debug, Clone, PartialEq)]
pub struct Origins {
    pub services: Vec<String>,
    topics: BTreeSet<String>,
}

impl Origins {
    pub fn of(topology: &Topology, dead_letter_topic: &str) -> Result<Self, CliError> {
        let writers: Vec<_> = topology
            .services
            .values()
            .filter(|s| s.dead_letter_topic == dead_letter_topic)
            .collect();
        if writers.is_empty() {
            let known: BTreeSet<&str> = topology
                .services
                .values()
                .map(|s| s.dead_letter_topic.as_str())
                .collect();
            return Err(CliError::Usage(format!(
                "{dead_letter_topic} is no service's dead-letter topic in the topology \
                 (--topology); these are: {}",
                known.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Self {
            services: writers.iter().map(|s| s.name.clone()).collect(),
            topics: writers
                .iter()
                .flat_map(|s| std::iter::once(&s.input).chain(s.retry.iter().map(|r| &r.topic)))
                .cloned()
                .collect(),
        })
    }

    fn admit(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }
}

/// What a redrive run did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct RedriveReport {
    /// Where the letters sent back are remembered.
    pub ledger: String,
    pub scanned: usize,
    pub redriven: usize,
    pub not_selected: usize,
    /// Selected, but sent back by an earlier run (in the ledger).
    pub redriven_before: usize,
    /// Selected, but without a `verdict.errors.topic` header to send them back to.
    pub no_origin: usize,
    /// Selected, but pointing at a topic the service does not read: where they pointed.
    pub refused: BTreeMap<String, usize>,
    pub by_class: BTreeMap<String, usize>,
}

/// `verdict dlq redrive TOPIC …`.
pub async fn redrive(
    kafka: &KafkaSettings,
    topic: &str,
    origins: &Origins,
    selection: &Selection,
    dry_run: bool,
) -> Result<RedriveReport, CliError> {
    let reader = GroupReader::new(kafka)?;
    let ledger = ledger_topic(topic);
    let before = read_ledger(&reader, kafka, &ledger).await?;
    let ranges = ranges(&reader, kafka, topic, &BTreeMap::new()).await?;
    let producer = if dry_run {
        None
    } else {
        Some(kafka.producer()?)
    };
    let mut report = RedriveReport {
        ledger: ledger.clone(),
        ..RedriveReport::default()
    };
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let mut sends = Vec::new();
    while let Some(r) = scanner.next(STALL).await? {
        report.scanned += 1;
        if !selection.matches(&r) {
            report.not_selected += 1;
            continue;
        }
        if before.contains(&(r.partition, r.offset)) {
            report.redriven_before += 1;
            continue;
        }
        let Some(origin) = r.headers.get(headers::ORIGINAL_TOPIC).map(String::from) else {
            report.no_origin += 1;
            continue;
        };
        if !origins.admit(&origin) {
            *report.refused.entry(origin).or_default() += 1;
            continue;
        }
        report.redriven += 1;
        *report
            .by_class
            .entry(
                r.headers
                    .get(headers::ERROR_CLASS)
                    .unwrap_or("-")
                    .to_string(),
            )
            .or_default() += 1;
        if let Some(p) = &producer {
            let p = p.clone();
            sends.push(async move {
                verdict_runtime::producer::send(
                    &p,
                    &origin,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    redriven_headers(&r.headers).to_kafka(),
                )
                .await
                .map(|_| (r.partition, r.offset, origin))
            });
        }
    }
    let Some(producer) = producer else {
        return Ok(report);
    };
    let mut sent = Vec::with_capacity(sends.len());
    for result in futures::future::join_all(sends).await {
        sent.push(result.map_err(|e| {
            CliError::Failed(format!(
                "redrive stopped, nothing remembered (a new run sends the selection again): {e}"
            ))
        })?);
    }
    let at = verdict_runtime::now_ms();
    let remembered = sent.into_iter().map(|(p, o, to)| {
        let value = serde_json::json!({"redriven_at": at, "to": to}).to_string();
        let producer = producer.clone();
        let ledger = ledger.clone();
        async move {
            verdict_runtime::producer::send(
                &producer,
                &ledger,
                Some(ledger_key(p, o).as_bytes()),
                Some(value.as_bytes()),
                rdkafka::message::OwnedHeaders::new(),
            )
            .await
        }
    });
    for result in futures::future::join_all(remembered).await {
        result.map_err(|e| {
            CliError::Failed(format!(
                "the letters were sent back, but not all written to {ledger}: a new run sends \
                 those again: {e}"
            ))
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(partition: i32, offset: i64, class: &str, at: i64) -> RawRecord {
        let mut h = HeaderMap::default();
        h.set(headers::ERROR_CLASS, class);
        h.set(headers::SERVICE, "fraud-detector");
        h.set(headers::ORIGINAL_TOPIC, "transactions");
        h.set(headers::FAILED_AT, at.to_string());
        RawRecord {
            partition,
            offset,
            timestamp_ms: Some(at),
            key: Some(b"k".to_vec()),
            value: Some(vec![0, 0, 0, 0, 1]),
            headers: h,
        }
    }

    #[test]
    fn dead_letters_group_by_class_with_their_time_range() {
        let rs = [
            dead(0, 0, "Panic", 30),
            dead(1, 0, "Decode", 10),
            dead(0, 1, "Panic", 20),
        ];
        let rows = summarize(&rs);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[1].class.as_str(),
                rows[1].count,
                rows[1].first_ms,
                rows[1].last_ms
            ),
            ("Panic", 2, Some(20), Some(30))
        );
    }

    #[test]
    fn selections_combine_every_condition() {
        let r = dead(2, 7, "Panic", 100);
        assert!(Selection::default().matches(&r));
        let by_class = Selection {
            classes: vec!["Decode".into()],
            ..Selection::default()
        };
        assert!(!by_class.matches(&r));
        let in_time = Selection {
            since_ms: Some(100),
            until_ms: Some(101),
            partition: Some(2),
            from_offset: Some(7),
            to_offset: Some(7),
            ..Selection::default()
        };
        assert!(in_time.matches(&r));
        let later = Selection {
            since_ms: Some(101),
            ..Selection::default()
        };
        assert!(!later.matches(&r));
    }

    #[test]
    fn redriving_counts_and_keeps_every_other_header() {
        let mut h = HeaderMap::default();
        h.0.push(("binary".into(), vec![0xff, 0x00]));
        let once = redriven_headers(&h);
        assert_eq!(once.get(REDRIVE_COUNT), Some("1"));
        assert_eq!(redriven_headers(&once).get(REDRIVE_COUNT), Some("2"));
        assert!(once.0.contains(&("binary".into(), vec![0xff, 0x00])));
    }

    #[test]
    fn dead_letters_go_back_only_to_what_their_service_reads() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology/topology.toml");
        let topology = Topology::load(&file, None).expect("the repository's topology");
        let origins = Origins::of(&topology, "transactions.dlq").expect("a dead-letter topic");
        assert_eq!(origins.services, ["fraud-detector"]);
        for t in [
            "transactions",
            "transactions.retry.1",
            "transactions.retry.2",
        ] {
            assert!(origins.admit(t), "{t}");
        }
        for t in [
            "review-resolutions",
            "_schemas",
            "document-uploads",
            "fraud-decisions",
        ] {
            assert!(!origins.admit(t), "{t}");
        }
        let err = Origins::of(&topology, "audit").expect_err("not a dead-letter topic");
        assert!(
            err.to_string()
                .contains("document-uploads.dlq, transactions.dlq"),
            "{err}"
        );
    }

    #[test]
    fn ledger_keys_round_trip_and_garbage_is_none() {
        assert_eq!(
            parse_ledger_key(ledger_key(3, 42).as_bytes()),
            Some((3, 42))
        );
        assert_eq!(parse_ledger_key(b"3@x"), None);
        assert_eq!(parse_ledger_key(&[0xff, b'@', b'1']), None);
    }
}
