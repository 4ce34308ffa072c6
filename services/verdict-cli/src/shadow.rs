//! `verdict shadow`: re-runs a range of a service's input through another model version or
//! service config, into shadow topics with a shadow group, and reports what would change.
//!
//! Steps: the topology renamed into `shadow-<name>` (its own topics, retry and dead-letter
//! topics, consumer group) is applied; the selected range of the production input is copied
//! into the shadow input (key, value and headers intact, same partitions); the service binary
//! runs on the shadow topology with the overrides until its group has committed the whole
//! copy; then the shadow decisions are compared with the production decisions for the same
//! event ids. Production topics are only read (by a group-less reader that commits nothing)
//! and production groups are never touched.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value as Json;
use verdict_runtime::groups::GroupReader;
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::registry::{Registry, RegistryClient};
use verdict_runtime::serde::AvroSerde;
use verdict_runtime::service::Deployment;

use crate::CliError;
use crate::records::{RawRecord, Scanner};
use crate::services::declared;

/// Which part of the input to re-run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Offsets `[from, to)` on every partition (clamped to the log).
    Offsets { from: i64, to: Option<i64> },
    /// Records with timestamps in `[since, until)` (ms).
    Time { since: i64, until: Option<i64> },
}

pub struct ShadowOpts {
    pub service: String,
    pub name: String,
    pub topology: PathBuf,
    pub range: Range,
    /// `section.key=value` overrides of the service's settings (TOML values; bare words
    /// are strings), e.g. `service.model_file=models/fraud/model-v2.json`.
    pub overrides: Vec<(String, String)>,
    pub registry: Registry,
    pub model_server_url: String,
    /// Give up when the shadow service has not finished after this long.
    pub timeout: Duration,
    pub keep_topics: bool,
    /// How far before the range the shadow service replays events into its state only
    /// (ms; 0: it starts with empty state).
    pub warmup_ms: i64,
    pub report_md: Option<PathBuf>,
    pub report_json: Option<PathBuf>,
    pub top: usize,
}

/// The comparison a reviewer reads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowReport {
    pub service: String,
    pub name: String,
    pub input_topic: String,
    pub shadow_input_topic: String,
    pub shadow_decisions_topic: String,
    pub production_decisions_topic: String,
    pub events: usize,
    /// Events before the range replayed into the shadow service's state only, and over
    /// how long a time before it (ms).
    pub warmup_events: usize,
    pub warmup_ms: i64,
    pub shadow_decided: usize,
    /// Shadow decisions with a production decision for the same event id.
    pub compared: usize,
    pub without_production_decision: usize,
    pub changed: usize,
    /// `"OLD -> NEW"` → count (equal outcomes included).
    pub transitions: BTreeMap<String, usize>,
    pub models: BTreeMap<String, usize>,
    /// Models of the production decisions compared with: more than one means the range
    /// spans a rollout, and some changes are the rollout's.
    pub production_models: BTreeMap<String, usize>,
    /// Changes where a history-dependent rule (velocity) fired on one side only: with state
    /// seeded from the warm-up these are the change under test's only if it changes the rule;
    /// else the warm-up was too short for the window.
    pub history_dependent_changes: usize,
    pub score_shift: Option<ShiftStats>,
    pub top_changes: Vec<Change>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ShiftStats {
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// Counts of `new - old` by bucket: `<-0.2`, `-0.2..-0.05`, `-0.05..0.05`, `0.05..0.2`, `>=0.2`.
    pub buckets: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub event_id: String,
    pub old_outcome: String,
    pub new_outcome: String,
    pub old_score: Option<f64>,
    pub new_score: Option<f64>,
    pub old_reasons: Vec<String>,
    pub new_reasons: Vec<String>,
}

/// The outcome of a decision: `outcome` (fraud), or `route` and `category` (documents: a
/// document filed under another category is decided differently, even on the same route).
fn outcome(v: &Json) -> String {
    let field = |k: &str| v.get(k).and_then(Json::as_str);
    match (field("outcome"), field("route"), field("category")) {
        (Some(o), _, _) => o.to_string(),
        (None, Some(r), Some(c)) => format!("{r} {c}"),
        (None, Some(r), None) => r.to_string(),
        (None, None, _) => "?".to_string(),
    }
}

/// A decision's score: the fraud score, or a document's category confidence.
fn score(v: &Json) -> Option<f64> {
    v["score"]
        .as_f64()
        .or_else(|| v["category_confidence"].as_f64())
}

fn reasons(v: &Json) -> Vec<String> {
    v.get("reasons")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The reason a rule that depends on earlier events of the same account gives
/// (fraud-detector's velocity rule), and the service it is of.
const HISTORY_RULE: &str = "transactions of this account within";
const HISTORY_SERVICE: &str = "fraud-detector";

fn history_rule_fired(reasons: &[String]) -> bool {
    reasons.iter().any(|r| r.contains(HISTORY_RULE))
}

fn model(v: &Json) -> String {
    format!(
        "{}@{}",
        v["model"]["name"].as_str().unwrap_or("?"),
        v["model"]["version"].as_str().unwrap_or("?")
    )
}

/// Compares shadow decisions with production ones by event id (pure). The last production
/// decision of an event wins when there are several (a replayed event).
pub fn compare(shadow: &[Json], production: &[Json], top: usize) -> ShadowReport {
    let prod: HashMap<&str, &Json> = production
        .iter()
        .filter_map(|v| v["event_id"].as_str().map(|id| (id, v)))
        .collect();
    let mut r = ShadowReport {
        shadow_decided: shadow.len(),
        ..ShadowReport::default()
    };
    let mut shifts = Vec::new();
    let mut changes = Vec::new();
    for new in shadow {
        *r.models.entry(model(new)).or_default() += 1;
        let Some(old) = new["event_id"].as_str().and_then(|id| prod.get(id)) else {
            r.without_production_decision += 1;
            continue;
        };
        r.compared += 1;
        *r.production_models.entry(model(old)).or_default() += 1;
        let (o, n) = (outcome(old), outcome(new));
        *r.transitions.entry(format!("{o} -> {n}")).or_default() += 1;
        let (os, ns) = (score(old), score(new));
        if let (Some(a), Some(b)) = (os, ns) {
            shifts.push(b - a);
        }
        if o != n {
            r.changed += 1;
            let (or, nr) = (reasons(old), reasons(new));
            if history_rule_fired(&or) != history_rule_fired(&nr) {
                r.history_dependent_changes += 1;
            }
            changes.push(Change {
                event_id: new["event_id"].as_str().unwrap_or("?").to_string(),
                old_outcome: o,
                new_outcome: n,
                old_score: os,
                new_score: ns,
                old_reasons: reasons(old),
                new_reasons: reasons(new),
            });
        }
    }
    let shift_of = |c: &Change| match (c.old_score, c.new_score) {
        (Some(a), Some(b)) => (b - a).abs(),
        _ => 0.0,
    };
    changes.sort_by(|a, b| shift_of(b).total_cmp(&shift_of(a)));
    changes.truncate(top);
    r.top_changes = changes;
    r.score_shift = stats(&mut shifts);
    r
}

fn stats(shifts: &mut [f64]) -> Option<ShiftStats> {
    if shifts.is_empty() {
        return None;
    }
    shifts.sort_by(f64::total_cmp);
    let n = shifts.len();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((n - 1) as f64 * q).round() as usize;
        shifts.get(i).copied().unwrap_or(0.0)
    };
    let mut buckets = BTreeMap::new();
    for s in shifts.iter() {
        let b = match *s {
            x if x < -0.2 => "1: < -0.2",
            x if x < -0.05 => "2: -0.2 .. -0.05",
            x if x < 0.05 => "3: -0.05 .. 0.05",
            x if x < 0.2 => "4: 0.05 .. 0.2",
            _ => "5: >= 0.2",
        };
        *buckets.entry(b.to_string()).or_default() += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = shifts.iter().sum::<f64>() / n as f64;
    Some(ShiftStats {
        mean,
        min: at(0.0),
        p50: at(0.5),
        p95: at(0.95),
        max: at(1.0),
        buckets,
    })
}

impl ShadowReport {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Shadow run `{}` of {}\n\n{} events of `{}` re-run into `{}`; {} decided, {} compared with `{}` ({} without a production decision).\n\n**{} of {} decisions change.**\n\nModels in the shadow run: {}\n\n## Outcomes (production → shadow)\n\n| production → shadow | count |\n|---|---|\n",
            self.name,
            self.service,
            self.events,
            self.input_topic,
            self.shadow_input_topic,
            self.shadow_decided,
            self.compared,
            self.production_decisions_topic,
            self.without_production_decision,
            self.changed,
            self.compared,
            self.models
                .iter()
                .map(|(m, n)| format!("`{m}` ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (t, n) in &self.transitions {
            s.push_str(&format!("| {t} | {n} |\n"));
        }
        s.push_str(&self.trust());
        if let Some(st) = &self.score_shift {
            s.push_str(&format!(
                "\n## Score shift (shadow − production)\n\nmean {:+.4}, min {:+.4}, p50 {:+.4}, p95 {:+.4}, max {:+.4}\n\n| shift | count |\n|---|---|\n",
                st.mean, st.min, st.p50, st.p95, st.max
            ));
            for (b, n) in &st.buckets {
                s.push_str(&format!(
                    "| {} | {n} |\n",
                    b.split_once(": ").map_or(b.as_str(), |x| x.1)
                ));
            }
        }
        s.push_str(&format!(
            "\n## Top {} changed events\n\n| event | production | shadow | reasons (production → shadow) |\n|---|---|---|---|\n",
            self.top_changes.len()
        ));
        let score = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.3}"));
        for c in &self.top_changes {
            s.push_str(&format!(
                "| {} | {} ({}) | {} ({}) | {} → {} |\n",
                c.event_id,
                c.old_outcome,
                score(c.old_score),
                c.new_outcome,
                score(c.new_score),
                c.old_reasons.join("; "),
                c.new_reasons.join("; ")
            ));
        }
        s
    }
}

impl ShadowReport {
    /// What limits the comparison, in numbers: changes that turn on per-account history,
    /// production decisions of several models, events production never decided.
    fn trust(&self) -> String {
        let models = self
            .production_models
            .iter()
            .map(|(m, n)| format!("`{m}` ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let seeded = if self.warmup_ms > 0 {
            format!(
                "The shadow service's state was seeded by replaying the {} events of the {} s \
                 before the range into its state only (no decisions), as production's state \
                 had them",
                self.warmup_events,
                self.warmup_ms / 1000
            )
        } else {
            "The shadow service started with empty state (`--warmup PT0S`), unlike production"
                .to_string()
        };
        let history = if self.service == HISTORY_SERVICE {
            format!(
                "- {} of the {} changes turn on the velocity rule firing on one side only: the \
                 change under test's if it touches that rule, else a sign the warm-up was \
                 shorter than the rule's window; {} do not.\n",
                self.history_dependent_changes,
                self.changed,
                self.changed - self.history_dependent_changes,
            )
        } else {
            String::new()
        };
        format!(
            "\n## How far to trust this\n\n\
             - {seeded}.\n\
             {history}\
             - Production decided with {}{}.\n\
             - {} shadow decisions have no production decision to compare with.\n",
            if models.is_empty() {
                "no compared decision".to_string()
            } else {
                models
            },
            if self.production_models.len() > 1 {
                ": the range spans a rollout, and some changes are the rollout's"
            } else {
                ""
            },
            self.without_production_decision,
        )
    }
}

/// Sets `dotted.key = value` in a settings document (value parsed as TOML, else a string).
pub fn set_override(doc: &mut toml::Table, key: &str, value: &str) -> Result<(), CliError> {
    let parsed: toml::Value = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else {
        return Err(CliError::Usage(format!("--set {key}: empty key")));
    };
    let mut table = doc;
    for p in parts {
        table = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| CliError::Usage(format!("--set {key}: `{p}` is not a section")))?;
    }
    table.insert(last.to_string(), parsed);
    Ok(())
}

async fn read_decoded(
    kafka: &KafkaSettings,
    reader: &GroupReader,
    serde: &AvroSerde,
    topic: &str,
) -> Result<Vec<Json>, CliError> {
    let n = i32::try_from(kafka.partition_count(topic).await).unwrap_or(0);
    let marks = reader
        .watermarks((0..n).map(|p| (topic.to_string(), p)).collect())
        .await?;
    let ranges = marks.into_iter().map(|((_, p), w)| (p, w)).collect();
    let mut scanner = Scanner::new(kafka, topic, &ranges)?;
    let mut out = Vec::new();
    while let Some(r) = scanner.next(Duration::from_secs(30)).await? {
        if let Ok(v) = serde.decode(r.value.as_deref()).await {
            out.push(v);
        }
    }
    Ok(out)
}

/// Runs the shadow and writes the report.
pub async fn run(kafka: &KafkaSettings, opts: &ShadowOpts) -> Result<ShadowReport, CliError> {
    let spec = declared(&opts.service).ok_or_else(|| {
        CliError::Usage(format!(
            "no service called {} (see `verdict stack status`)",
            opts.service
        ))
    })?;
    if opts.name.is_empty()
        || !opts
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(CliError::Usage(
            "--name: letters, digits and '-' only".into(),
        ));
    }
    let production = crate::topology_cmd::check(&opts.topology, None)?;
    let svc = production.service(&opts.service).ok_or_else(|| {
        CliError::Usage(format!(
            "{} has no [services.{}]",
            opts.topology.display(),
            opts.service
        ))
    })?;
    let decisions = svc.outputs.get("decisions").cloned().ok_or_else(|| {
        CliError::Usage(format!("service {} has no decisions output", opts.service))
    })?;
    let ns = format!("shadow-{}", opts.name);
    let shadow_input = format!("{ns}.{}", svc.input);
    let shadow_decisions = format!("{ns}.{decisions}");
    let shadow_group = format!("{ns}.{}", svc.consumer_group);

    // The shadow topology, next to the production one (so `../schemas` resolves).
    let text = std::fs::read_to_string(&opts.topology)
        .map_err(|e| CliError::Usage(format!("{}: {e}", opts.topology.display())))?;
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e| CliError::Usage(format!("{}: {e}", opts.topology.display())))?;
    let topics = crate::topology_cmd::namespace(&mut doc, &ns);
    let dir = opts.topology.parent().unwrap_or(Path::new("."));
    let shadow_file = dir.join(format!(".{ns}.topology.toml"));
    std::fs::write(
        &shadow_file,
        toml::to_string(&doc).map_err(|e| CliError::Failed(e.to_string()))?,
    )
    .map_err(|e| CliError::Failed(format!("{}: {e}", shadow_file.display())))?;
    // The shadow service's settings are checked before any topic is created or event copied.
    let settings = match ServiceSettings::write(kafka, opts, spec, &shadow_file) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&shadow_file);
            return Err(e);
        }
    };
    let registry = RegistryClient::new(&opts.registry)?;
    let applied = crate::topology_cmd::apply(&shadow_file, None, kafka, &registry).await;
    let result = async {
        let report = applied?;
        eprintln!("shadow topology: {} topics created", report.created.len());
        let copied =
            copy_range(kafka, &svc.input, &shadow_input, opts.range, opts.warmup_ms).await?;
        eprintln!(
            "copied {} events of {} into {shadow_input}, after {} warm-up events for its state",
            copied.range, svc.input, copied.warmup
        );
        run_service(kafka, opts, spec, &settings, &shadow_group, &shadow_input).await?;
        let reader = GroupReader::new(kafka)?;
        let serde = AvroSerde::new(&opts.registry);
        let new = read_decoded(kafka, &reader, &serde, &shadow_decisions).await?;
        let old = read_decoded(kafka, &reader, &serde, &decisions).await?;
        let mut report = compare(&new, &old, opts.top);
        report.service = opts.service.clone();
        report.name = opts.name.clone();
        report.input_topic = svc.input.clone();
        report.shadow_input_topic = shadow_input.clone();
        report.shadow_decisions_topic = shadow_decisions.clone();
        report.production_decisions_topic = decisions.clone();
        report.events = copied.range;
        report.warmup_events = copied.warmup;
        report.warmup_ms = opts.warmup_ms;
        Ok::<_, CliError>(report)
    }
    .await;
    let _ = std::fs::remove_file(&shadow_file);
    if !opts.keep_topics
        && let Err(e) = kafka.delete_topics(&topics).await
    {
        eprintln!("could not delete the shadow topics {topics:?}: {e}");
    }
    let report = result?;
    let md = report.markdown();
    if let Some(p) = &opts.report_md {
        std::fs::write(p, &md).map_err(|e| CliError::Failed(format!("{}: {e}", p.display())))?;
    }
    if let Some(p) = &opts.report_json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?;
        std::fs::write(p, json).map_err(|e| CliError::Failed(format!("{}: {e}", p.display())))?;
    }
    Ok(report)
}

/// How many events a shadow copy holds: the range, and the warm-up before it.
#[derive(Debug, Clone, Copy, Default)]
struct Copied {
    range: usize,
    warmup: usize,
}

/// Copies the range of `from` into `to` (same partition, key, value, headers and
/// timestamp). Before it, per partition, the records of the `warmup_ms` before the range's
/// first record are copied marked `verdict.shadow.warmup`: the shadow service replays them
/// into its state only, so it starts from the state production had.
async fn copy_range(
    kafka: &KafkaSettings,
    from: &str,
    to: &str,
    range: Range,
    warmup_ms: i64,
) -> Result<Copied, CliError> {
    let reader = GroupReader::new(kafka)?;
    let n = i32::try_from(kafka.partition_count(from).await).unwrap_or(0);
    let parts: Vec<(String, i32)> = (0..n).map(|p| (from.to_string(), p)).collect();
    let marks = reader.watermarks(parts.clone()).await?;
    let (starts, ends) = match range {
        Range::Offsets { from: a, to: b } => (
            parts
                .iter()
                .map(|k| (k.clone(), a))
                .collect::<BTreeMap<_, _>>(),
            parts
                .iter()
                .map(|k| (k.clone(), b.unwrap_or(i64::MAX)))
                .collect::<BTreeMap<_, _>>(),
        ),
        Range::Time { since, until } => (
            reader.offsets_for_time(parts.clone(), since).await?,
            match until {
                Some(u) => reader.offsets_for_time(parts.clone(), u).await?,
                None => BTreeMap::new(),
            },
        ),
    };
    let ranges: BTreeMap<i32, (i64, i64)> = marks
        .iter()
        .map(|(k, (low, high))| {
            let start = starts.get(k).copied().unwrap_or(*low).clamp(*low, *high);
            let end = ends.get(k).copied().unwrap_or(*high).clamp(start, *high);
            (k.1, (start, end))
        })
        .collect();
    let warmups = if warmup_ms > 0 {
        warmup_ranges(kafka, &reader, from, &ranges, &marks, warmup_ms).await?
    } else {
        BTreeMap::new()
    };
    let producer = kafka.producer()?;
    Ok(Copied {
        warmup: copy_records(kafka, &producer, from, to, &warmups, true).await?,
        range: copy_records(kafka, &producer, from, to, &ranges, false).await?,
    })
}

/// Per partition, the offsets of the `warmup_ms` before the first record of its range (by
/// that record's timestamp).
async fn warmup_ranges(
    kafka: &KafkaSettings,
    reader: &GroupReader,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    marks: &BTreeMap<(String, i32), (i64, i64)>,
    warmup_ms: i64,
) -> Result<BTreeMap<i32, (i64, i64)>, CliError> {
    let firsts: BTreeMap<i32, (i64, i64)> = ranges
        .iter()
        .filter(|(_, (start, end))| start < end)
        .map(|(p, (start, _))| (*p, (*start, start + 1)))
        .collect();
    let mut scanner = Scanner::new(kafka, topic, &firsts)?;
    let mut warmups = BTreeMap::new();
    while let Some(first) = scanner.next(Duration::from_secs(30)).await? {
        let Some(ts) = first.timestamp_ms else {
            continue;
        };
        let p = first.partition;
        let since = reader
            .offsets_for_time(vec![(topic.to_string(), p)], ts.saturating_sub(warmup_ms))
            .await?;
        let low = marks.get(&(topic.to_string(), p)).map_or(0, |m| m.0);
        let from = since
            .get(&(topic.to_string(), p))
            .copied()
            .unwrap_or(low)
            .clamp(low, first.offset);
        if from < first.offset {
            warmups.insert(p, (from, first.offset));
        }
    }
    Ok(warmups)
}

/// Copies `ranges` of `from` into the same partitions of `to`, in order; `warmup` marks them
/// as warm-up. Returns how many records.
async fn copy_records(
    kafka: &KafkaSettings,
    producer: &rdkafka::producer::FutureProducer,
    from: &str,
    to: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    warmup: bool,
) -> Result<usize, CliError> {
    if ranges.is_empty() {
        return Ok(0);
    }
    let mut scanner = Scanner::new(kafka, from, ranges)?;
    let mut sends = Vec::new();
    while let Some(RawRecord {
        partition,
        key,
        value,
        mut headers,
        timestamp_ms,
        ..
    }) = scanner.next(Duration::from_secs(30)).await?
    {
        if warmup {
            headers.set(verdict_runtime::headers::SHADOW_WARMUP, "1");
        }
        let p = producer.clone();
        let to = to.to_string();
        sends.push(async move {
            let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&to)
                .partition(partition)
                .headers(headers.to_kafka());
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = value.as_deref() {
                record = record.payload(v);
            }
            p.send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| CliError::Failed(format!("copying into {to}: {e}")))
        });
    }
    let n = sends.len();
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(n)
}

/// The shadow service's settings file, written and checked (`--check-config`) before the
/// run: a bad `--set` or a model file that does not exist is refused naming the key.
struct ServiceSettings {
    work: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl ServiceSettings {
    fn write(
        kafka: &KafkaSettings,
        opts: &ShadowOpts,
        spec: &crate::services::Declared,
        topology: &Path,
    ) -> Result<Self, CliError> {
        // Models and other repository files are found from the working directory, as with
        // `verdict stack`.
        let root = std::env::current_dir().map_err(|e| CliError::Failed(e.to_string()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| CliError::Failed(format!("no free port: {e}")))?;
        let work = tempfile_dir()?;
        // The registry's user and CA as the CLI was given them, in files only this user reads.
        let private = |name: &str, bytes: &[u8]| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let path = work.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
                .map(|()| path)
                .map_err(|e| {
                    CliError::Failed(format!("cannot write {name} in {}: {e}", work.display()))
                })
        };
        let registry_user = match opts.registry.basic_auth() {
            Some((user, password)) => Some((
                user.to_string(),
                private("registry.password", password.as_bytes())?,
            )),
            None => None,
        };
        let registry_ca_file = match opts.registry.ca_pem() {
            Some(pem) => Some(private("registry-ca.pem", pem)?),
            None => None,
        };
        let deployment = Deployment {
            kafka: kafka.clone(),
            registry_url: opts.registry.url().to_string(),
            registry_user,
            registry_ca_file,
            topology: std::path::absolute(topology).map_err(|e| CliError::Failed(e.to_string()))?,
            root,
            http_listen: port,
            admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            model_server_url: opts.model_server_url.clone(),
            minilm_dir: PathBuf::new(),
        };
        let mut doc: toml::Table = spec
            .config(&deployment)?
            .parse()
            .map_err(|e| CliError::Failed(format!("settings of {}: {e}", spec.name)))?;
        // Warm-up records build state only (see `copy_range`).
        set_override(&mut doc, "engine.shadow_warmup", "true")?;
        for (k, v) in &opts.overrides {
            set_override(&mut doc, k, v)?;
        }
        let settings = Self {
            config: work.join(format!("{}.toml", spec.name)),
            log: work.join(format!("{}.log", spec.name)),
            work,
        };
        std::fs::write(
            &settings.config,
            toml::to_string(&doc).map_err(|e| CliError::Failed(e.to_string()))?,
        )
        .map_err(|e| CliError::Failed(e.to_string()))?;
        let checked = std::process::Command::new(crate::stack::sibling_binary(spec.name)?)
            .arg("--config")
            .arg(&settings.config)
            .arg("--check-config")
            .output()
            .map_err(|e| CliError::Failed(format!("cannot run {}: {e}", spec.name)))?;
        if !checked.status.success() {
            let _ = std::fs::remove_dir_all(&settings.work);
            let why = String::from_utf8_lossy(&checked.stderr);
            return Err(CliError::Usage(format!(
                "the shadow {}'s settings (with --set) are refused, nothing was created: {}",
                spec.name,
                why.trim()
            )));
        }
        Ok(settings)
    }
}

/// Runs the service on the shadow topology until its group committed the whole shadow input.
async fn run_service(
    kafka: &KafkaSettings,
    opts: &ShadowOpts,
    spec: &crate::services::Declared,
    settings: &ServiceSettings,
    group: &str,
    input: &str,
) -> Result<(), CliError> {
    let ServiceSettings { work, config, log } = settings;
    let mut cmd = std::process::Command::new(crate::stack::sibling_binary(spec.name)?);
    cmd.arg("--config").arg(config).env("RUST_LOG", "warn");
    let mut child = crate::stack::spawn_logged(cmd, log, false)?;
    let pid = child.id();
    let reader = GroupReader::new(kafka)?;
    let n = i32::try_from(kafka.partition_count(input).await).unwrap_or(0);
    let parts: Vec<(String, i32)> = (0..n).map(|p| (input.to_string(), p)).collect();
    let ends = reader.watermarks(parts.clone()).await?;
    let total: i64 = ends.values().map(|(_, h)| h).sum();
    let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0)).with_style(
        indicatif::ProgressStyle::with_template("shadow {bar:40} {pos}/{len} events {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let began = Instant::now();
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(CliError::Failed(format!(
                "{} exited with {status} during the shadow run; its log: {}",
                spec.name,
                log.display()
            )));
        }
        let done = reader.committed(group, parts.clone()).await?;
        let committed: i64 = parts
            .iter()
            .map(|k| {
                done.get(k)
                    .copied()
                    .unwrap_or(0)
                    .min(ends.get(k).map_or(0, |w| w.1))
            })
            .sum();
        bar.set_position(u64::try_from(committed).unwrap_or(0));
        if committed >= total {
            break Ok(());
        }
        if began.elapsed() > opts.timeout {
            break Err(CliError::Failed(format!(
                "the shadow {} decided {committed} of {total} events within {:?}; its log: {}",
                spec.name,
                opts.timeout,
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    crate::stack::stop_pid(pid, Duration::from_secs(30));
    let _ = child.wait();
    if outcome.is_ok() {
        let _ = std::fs::remove_dir_all(work);
    }
    outcome
}

fn tempfile_dir() -> Result<PathBuf, CliError> {
    let dir = std::env::temp_dir().join(format!("verdict-shadow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(id: &str, outcome: &str, score: f64, version: &str) -> Json {
        json!({"event_id": id, "outcome": outcome, "score": score, "reasons": [format!("r-{outcome}")],
               "model": {"name": "m", "version": version}})
    }

    #[test]
    fn a_document_filed_under_another_category_is_a_change_on_the_same_route() {
        let doc = |category: &str, confidence: f64| {
            json!({"event_id": "d", "route": "REVIEW", "category": category,
                   "category_confidence": confidence, "reasons": [],
                   "model": {"name": "all-minilm-l6-v2", "version": "1.0.0"}})
        };
        let mut r = compare(&[doc("complaint", 0.95)], &[doc("invoice", 0.52)], 10);
        r.service = "document-analyzer".into();
        assert!(!r.markdown().contains("velocity"), "no velocity rule here");
        assert_eq!(r.changed, 1);
        assert_eq!(r.transitions["REVIEW invoice -> REVIEW complaint"], 1);
        assert_eq!(r.top_changes[0].old_score, Some(0.52));
        assert!(
            r.markdown()
                .contains("| d | REVIEW invoice (0.520) | REVIEW complaint (0.950) |"),
            "{}",
            r.markdown()
        );
    }

    #[test]
    fn the_diff_counts_transitions_and_ranks_the_biggest_changes() {
        let prod = vec![
            decision("a", "APPROVE", 0.1, "1"),
            decision("b", "APPROVE", 0.3, "1"),
            decision("c", "DECLINE", 0.9, "1"),
        ];
        let shadow = vec![
            decision("a", "APPROVE", 0.15, "2"),
            decision("b", "DECLINE", 0.8, "2"),
            decision("c", "REVIEW", 0.5, "2"),
            decision("d", "APPROVE", 0.1, "2"),
        ];
        let r = compare(&shadow, &prod, 10);
        assert_eq!(
            (r.shadow_decided, r.compared, r.without_production_decision),
            (4, 3, 1)
        );
        assert_eq!(r.changed, 2);
        assert_eq!(r.transitions["APPROVE -> APPROVE"], 1);
        assert_eq!(r.transitions["APPROVE -> DECLINE"], 1);
        assert_eq!(r.transitions["DECLINE -> REVIEW"], 1);
        assert_eq!(r.models["m@2"], 4);
        assert_eq!(r.top_changes[0].event_id, "b", "largest shift first");
        assert_eq!(r.top_changes[0].old_reasons, vec!["r-APPROVE"]);
        let s = r.score_shift.clone().expect("scores");
        assert!(
            (s.max - 0.5).abs() < 1e-9 && (s.min + 0.4).abs() < 1e-9,
            "{s:?}"
        );
        assert!(r.markdown().contains("| APPROVE -> DECLINE | 1 |"));
    }

    #[test]
    fn changes_that_turn_on_per_account_history_are_counted_apart() {
        let velocity = "rule: 6 transactions of this account within 60000 ms (limit 5)";
        let mut reviewed = decision("a", "REVIEW", 0.2, "1");
        reviewed["reasons"] = json!([velocity]);
        let prod = vec![
            reviewed,
            decision("b", "APPROVE", 0.3, "1"),
            decision("c", "APPROVE", 0.3, "0.9"),
        ];
        let shadow = vec![
            decision("a", "APPROVE", 0.2, "1"),
            decision("b", "REVIEW", 0.5, "1"),
            decision("c", "APPROVE", 0.3, "1"),
        ];
        let mut r = compare(&shadow, &prod, 10);
        r.service = HISTORY_SERVICE.into();
        assert_eq!((r.changed, r.history_dependent_changes), (2, 1));
        assert_eq!(r.production_models.len(), 2);
        let md = r.markdown();
        assert!(
            md.contains("1 of the 2 changes turn on the velocity rule"),
            "{md}"
        );
        assert!(md.contains("the range spans a rollout"), "{md}");
    }

    #[test]
    fn overrides_set_typed_values_by_dotted_key() {
        let mut doc: toml::Table = "[service]\nmodel_file = \"a.json\"\n"
            .parse()
            .expect("toml");
        set_override(&mut doc, "service.model_file", "b.json").expect("set");
        set_override(&mut doc, "service.decline_threshold", "0.7").expect("set");
        set_override(&mut doc, "engine.max_inflight", "5").expect("set");
        assert_eq!(doc["service"]["model_file"].as_str(), Some("b.json"));
        assert_eq!(doc["service"]["decline_threshold"].as_float(), Some(0.7));
        assert_eq!(doc["engine"]["max_inflight"].as_integer(), Some(5));
        assert!(set_override(&mut doc, "service.model_file.x", "1").is_err());
    }
}
