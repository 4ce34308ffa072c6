//! `verdict produce` (JSON lines → Avro with the topic's registered schema) and
//! `verdict consume` (Avro → JSON lines, offsets in kcat's vocabulary).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::str::FromStr;
use std::time::Duration;
use verdict_runtime::registry::Registry;

use serde_json::{Value as Json, json};
use verdict_runtime::avro::{check_fields, untyped};
use verdict_runtime::groups::GroupReader;
use verdict_runtime::headers::HeaderMap;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::record_limit::RecordLimits;
use verdict_runtime::serde::{AvroSerde, ValueSchema};

use crate::CliError;
use crate::records::{Scanner, describe_value};

/// What `verdict produce` read and sent.
#[derive(Debug, Default, PartialEq)]
pub struct ProduceReport {
    pub sent: usize,
    pub skipped: usize,
}

pub struct ProduceOpts {
    pub key_field: Option<String>,
    /// Records per second (0 = as fast as the broker takes them).
    pub rate: u32,
    pub headers: Vec<(String, String)>,
    pub keep_going: bool,
    /// `tenant_id` of the lines that leave it out.
    pub tenant: Option<String>,
    pub value_format: ValueFormat,
}

/// How `produce` writes each line, as Confluent's tools name it (`--value-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ValueFormat {
    /// Avro with the topic's latest registered schema, Confluent-framed.
    #[default]
    Avro,
    /// The line's JSON as it is (checked to be JSON), for topics without a schema.
    Json,
    /// The line's text as it is.
    String,
}

/// Which records `consume` reads, as Kafka's consumers name it (`isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Isolation {
    /// Only records of committed transactions (and records written outside transactions).
    #[default]
    ReadCommitted,
    /// Every record, including those of open and aborted transactions.
    ReadUncommitted,
}

impl Isolation {
    /// `kafka` reading with this isolation level.
    pub fn apply(self, kafka: &KafkaSettings) -> KafkaSettings {
        let mut kafka = kafka.clone();
        let level = match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        };
        kafka
            .properties
            .insert("isolation.level".into(), level.into());
        kafka
    }
}

/// Parses `-H key=value`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// Validates every line first (so that nothing is half-sent when line 900 is wrong), then
/// produces them. With `keep_going`, bad lines are reported and skipped instead.
pub async fn produce(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    input: impl BufRead,
    opts: &ProduceOpts,
) -> Result<ProduceReport, CliError> {
    crate::partitions_of(kafka, topic).await?;
    let registry = registry.into();
    let registry_url = registry.url().to_string();
    let serde = AvroSerde::new(registry);
    let schema = match opts.value_format {
        ValueFormat::Avro => Some(serde.latest_schema(topic).await.map_err(|e| {
            tracing::debug!(error = %e, "latest schema");
            CliError::Usage(format!(
                "topic {topic} has no schema in the registry at {registry_url} (subject \
                 {topic}-value): register one (`verdict topology apply`), or send the lines \
                 as they are with --value-format json|string"
            ))
        })?),
        ValueFormat::Json | ValueFormat::String => None,
    };
    let limit = RecordLimits::new(kafka)?.of(topic).await?;
    let mut headers = HeaderMap::default();
    for (k, v) in &opts.headers {
        headers.0.push((k.clone(), v.clone().into_bytes()));
    }
    let mut good: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    let mut report = ProduceReport::default();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| CliError::Usage(format!("line {n}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let checked = encode_line(&serde, schema.as_deref(), topic, &line, opts)
            .await
            .and_then(|(key, bytes)| {
                let size = key.as_ref().map_or(0, String::len) + bytes.len() + headers.byte_len();
                limit.check(topic, size).map_err(|e| e.to_string())?;
                Ok((key, bytes))
            });
        match checked {
            Ok(record) => good.push(record),
            Err(why) if opts.keep_going => {
                eprintln!("line {n}: {why} (skipped)");
                report.skipped += 1;
            }
            Err(why) => {
                return Err(CliError::Usage(format!(
                    "line {n}: {why}; nothing was sent (--keep-going skips bad lines)"
                )));
            }
        }
    }
    let producer = kafka.producer()?;
    let bar = indicatif::ProgressBar::new(good.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tick = (opts.rate > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut inflight = futures::stream::FuturesUnordered::new();
    for (key, bytes) in good {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let (p, h) = (producer.clone(), headers.to_kafka());
        let topic = topic.to_string();
        inflight.push(async move {
            verdict_runtime::producer::send(
                &p,
                &topic,
                key.as_deref().map(str::as_bytes),
                Some(&bytes),
                h,
            )
            .await
        });
        while inflight.len() >= 10_000 {
            finish_one(&mut inflight, &bar, &mut report).await?;
        }
    }
    while !inflight.is_empty() {
        finish_one(&mut inflight, &bar, &mut report).await?;
    }
    bar.finish_and_clear();
    Ok(report)
}

async fn finish_one<F: Future<Output = Result<(i32, i64), String>>>(
    inflight: &mut futures::stream::FuturesUnordered<F>,
    bar: &indicatif::ProgressBar,
    report: &mut ProduceReport,
) -> Result<(), CliError> {
    use futures::StreamExt;
    if let Some(r) = inflight.next().await {
        r.map_err(|e| {
            CliError::Failed(format!(
                "producing failed after {} record(s) were sent: {e}",
                report.sent
            ))
        })?;
        report.sent += 1;
        bar.inc(1);
    }
    Ok(())
}

/// One line as the record to send (key, value bytes) in the chosen format, or why not.
async fn encode_line(
    serde: &AvroSerde,
    schema: Option<&apache_avro::Schema>,
    topic: &str,
    line: &str,
    opts: &ProduceOpts,
) -> Result<(Option<String>, Vec<u8>), String> {
    if opts.value_format == ValueFormat::String {
        if opts.key_field.is_some() {
            return Err("--key-field needs JSON lines (--value-format json or avro)".into());
        }
        return Ok((None, line.as_bytes().to_vec()));
    }
    let mut value: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let bytes = match schema {
        Some(schema) => {
            fill_envelope(schema, &mut value, opts.tenant.as_deref())?;
            check_fields(schema, &value)?;
            serde
                .encode(topic, &ValueSchema::TopicLatest, untyped(&value))
                .await
                .map_err(|e| e.to_string())?
        }
        None => line.trim().as_bytes().to_vec(),
    };
    let key = match opts.key_field.as_deref() {
        None => None,
        Some(f) => Some(match &value[f] {
            Json::String(s) => s.clone(),
            Json::Null => return Err(format!("key field `{f}` is missing or null")),
            other => other.to_string(),
        }),
    };
    Ok((key, bytes))
}

/// Fills what a line leaves out of verdict's event envelope, where the schema has the field:
/// `event_id` (a new UUID), `occurred_at` (now, ms since the epoch) and `tenant_id` (from
/// `--tenant`; without it, a line that has none is refused).
fn fill_envelope(
    schema: &apache_avro::Schema,
    value: &mut Json,
    tenant: Option<&str>,
) -> Result<(), String> {
    let (apache_avro::Schema::Record(record), Json::Object(obj)) = (schema, value) else {
        return Ok(()); // check_fields names what is wrong
    };
    let has = |f: &str| record.lookup.contains_key(f);
    if has("event_id") {
        obj.entry("event_id")
            .or_insert_with(|| Json::String(uuid::Uuid::new_v4().to_string()));
    }
    if has("occurred_at") {
        obj.entry("occurred_at")
            .or_insert_with(|| Json::from(verdict_runtime::now_ms()));
    }
    if has("tenant_id") && !obj.contains_key("tenant_id") {
        let Some(tenant) = tenant else {
            return Err(
                "field `tenant_id` is missing: give it on the line or with --tenant".into(),
            );
        };
        obj.insert("tenant_id".into(), Json::String(tenant.into()));
    }
    Ok(())
}

/// Where `consume` starts and stops, in kcat's `-o` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Position {
    Beginning,
    End,
    /// The group's committed offset (the beginning without one).
    Stored,
    Offset(i64),
    /// `-N`: N records before the end of each partition.
    Tail(i64),
    /// `s@ms`: the first record at or after the time.
    StartTime(i64),
    /// `e@ms`: stop before the first record at or after the time.
    EndTime(i64),
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an offset (beginning, end, stored, N, -N, s@ms, e@ms)");
        Ok(match s {
            "beginning" => Position::Beginning,
            "end" => Position::End,
            "stored" => Position::Stored,
            _ => {
                if let Some(ms) = s.strip_prefix("s@") {
                    Position::StartTime(ms.parse().map_err(|_| bad())?)
                } else if let Some(ms) = s.strip_prefix("e@") {
                    Position::EndTime(ms.parse().map_err(|_| bad())?)
                } else if let Some(n) = s.strip_prefix('-') {
                    Position::Tail(n.parse().map_err(|_| bad())?)
                } else {
                    Position::Offset(s.parse().map_err(|_| bad())?)
                }
            }
        })
    }
}

pub struct ConsumeOpts {
    /// Start (and optionally an `e@` end), as given with `-o`.
    pub offsets: Vec<Position>,
    /// `-e`: stop at the end of each partition as it was at the start.
    pub exit_at_end: bool,
    pub group: Option<String>,
    pub count: Option<usize>,
    pub partition: Option<i32>,
}

/// Each partition's absolute start offset for `start` (pure: the offsets are given).
pub fn start_offset(
    start: Position,
    low: i64,
    high: i64,
    stored: Option<i64>,
    for_time: Option<i64>,
) -> i64 {
    let at = match start {
        Position::Beginning | Position::EndTime(_) => low,
        Position::End => high,
        Position::Stored => stored.unwrap_or(low),
        Position::Offset(o) => o,
        Position::Tail(n) => high - n,
        Position::StartTime(_) => for_time.unwrap_or(high),
    };
    at.clamp(low, high.max(low))
}

/// `verdict consume TOPIC`: prints each record as a JSON line (topic, partition, offset,
/// timestamp, key, headers, value decoded through the registry). With `--group`, commits
/// the offsets it printed (the group must have no active members); without, commits nothing.
pub async fn consume(
    kafka: &KafkaSettings,
    registry: impl Into<Registry>,
    topic: &str,
    opts: &ConsumeOpts,
) -> Result<usize, CliError> {
    let reader = GroupReader::new(kafka)?;
    let n = crate::partitions_of(kafka, topic).await?;
    let partitions: Vec<(String, i32)> = (0..n)
        .filter(|p| opts.partition.is_none_or(|want| want == *p))
        .map(|p| (topic.to_string(), p))
        .collect();
    if partitions.is_empty() {
        return Err(CliError::Usage(format!(
            "topic {topic} has no such partition (it has {n})"
        )));
    }
    let start = opts
        .offsets
        .iter()
        .copied()
        .find(|p| !matches!(p, Position::EndTime(_)))
        .unwrap_or(if opts.group.is_some() {
            Position::Stored
        } else {
            Position::Beginning
        });
    let end_time = opts.offsets.iter().find_map(|p| match p {
        Position::EndTime(ms) => Some(*ms),
        _ => None,
    });
    let marks = reader.watermarks(partitions.clone()).await?;
    let stored = match (&opts.group, start) {
        (Some(g), Position::Stored) => reader.committed(g, partitions.clone()).await?,
        (None, Position::Stored) => {
            return Err(CliError::Usage("-o stored needs --group".into()));
        }
        _ => BTreeMap::new(),
    };
    let start_times = match start {
        Position::StartTime(ms) => reader.offsets_for_time(partitions.clone(), ms).await?,
        _ => BTreeMap::new(),
    };
    let end_times = match end_time {
        Some(ms) => reader.offsets_for_time(partitions.clone(), ms).await?,
        None => BTreeMap::new(),
    };
    let ranges: BTreeMap<i32, (i64, i64)> = partitions
        .iter()
        .map(|k| {
            let (low, high) = marks.get(k).copied().unwrap_or((0, 0));
            let from = start_offset(
                start,
                low,
                high,
                stored.get(k).copied(),
                start_times.get(k).copied(),
            );
            let to = match (end_times.get(k), opts.exit_at_end) {
                (Some(e), _) => *e,
                (None, true) => high,
                (None, false) => i64::MAX,
            };
            (k.1, (from, to))
        })
        .collect();
    let follow = end_time.is_none() && !opts.exit_at_end;
    let serde = AvroSerde::new(registry);
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let mut printed = 0usize;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let limit = opts.count.unwrap_or(usize::MAX);
    // Ctrl-C or SIGTERM (how a following consume is stopped) ends the loop, and what was
    // printed is committed below, as kcat and Kafka's console consumer do on exit.
    let mut stop = std::pin::pin!(stop_signal());
    while printed < limit {
        let stall = if follow {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(30)
        };
        let got = tokio::select! {
            got = scanner.next(stall) => got,
            () = &mut stop => break,
        };
        let record = match got {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) if follow => continue,
            Err(e) => return Err(e),
        };
        let line = json!({
            "topic": topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "key": record.key.as_deref().map(String::from_utf8_lossy),
            "headers": record.headers.0.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect::<BTreeMap<_, _>>(),
            "value": describe_value(&serde, record.value.as_deref()).await,
        });
        println!("{line}");
        printed += 1;
        next.insert(record.partition, record.offset + 1);
        if let (Some(g), true) = (&opts.group, printed.is_multiple_of(1000)) {
            commit(&reader, g, topic, &next).await?;
        }
    }
    if let Some(g) = &opts.group {
        commit(&reader, g, topic, &next).await?;
    }
    Ok(printed)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn commit(
    reader: &GroupReader,
    group: &str,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<(), CliError> {
    if next.is_empty() {
        return Ok(());
    }
    reader
        .commit(
            group,
            next.iter()
                .map(|(p, o)| (topic.to_string(), *p, *o))
                .collect(),
        )
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "committing for group {group} (is another member active?): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_in_kcats_vocabulary() {
        assert_eq!("beginning".parse(), Ok(Position::Beginning));
        assert_eq!("end".parse(), Ok(Position::End));
        assert_eq!("stored".parse(), Ok(Position::Stored));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        assert_eq!("-10".parse(), Ok(Position::Tail(10)));
        assert_eq!(
            "s@1700000000000".parse(),
            Ok(Position::StartTime(1_700_000_000_000))
        );
        assert_eq!("e@5".parse(), Ok(Position::EndTime(5)));
        assert!("later".parse::<Position>().is_err());
    }

    #[test]
    fn starts_are_clamped_to_the_log() {
        assert_eq!(start_offset(Position::Tail(5), 0, 3, None, None), 0);
        assert_eq!(start_offset(Position::Tail(5), 0, 30, None, None), 25);
        assert_eq!(start_offset(Position::Offset(99), 10, 20, None, None), 20);
        assert_eq!(start_offset(Position::Stored, 10, 20, None, None), 10);
        assert_eq!(start_offset(Position::Stored, 10, 20, Some(15), None), 15);
        assert_eq!(start_offset(Position::StartTime(1), 0, 20, None, None), 20);
        assert_eq!(
            start_offset(Position::StartTime(1), 0, 20, None, Some(7)),
            7
        );
    }

    #[test]
    fn headers_are_key_equals_value() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }
}
