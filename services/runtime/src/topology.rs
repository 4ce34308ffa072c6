//! The declarative topology: topics, and per service its input, outputs, consumer
//! group, retry topics, dead-letter topic and stages. One TOML file that the CLI
//! applies and the services read.
//!
//! [`Topology::parse`] validates the whole file; every error names the key path
//! and the line, and nothing is applied from a file that has any error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::kafka::TopicSpec;

pub const CLEANUP_POLICIES: &[&str] = &["delete", "compact", "compact,delete"];

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyIssue {
    pub key: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TopologyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: `{}`: {}", self.line, self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        issues: Vec<TopologyIssue>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    topics: BTreeMap<String, Spanned<RawTopic>>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default = "one")]
    partitions: Spanned<i64>,
    #[serde(default = "broker_default")]
    replication_factor: Spanned<i64>,
}

impl Default for RawDefaults {
    fn default() -> Self {
        Self {
            partitions: one(),
            replication_factor: broker_default(),
        }
    }
}

fn one() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}

/// A replication factor of -1: the broker's `default.replication.factor` (KIP-464), as Kafka
/// Streams creates its topics, so one topology serves a single node and a cluster.
fn broker_default() -> Spanned<i64> {
    Spanned::new(0..0, BROKER_DEFAULT_REPLICATION.into())
}

/// See [`broker_default`].
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    partitions: Option<Spanned<i64>>,
    replication_factor: Option<Spanned<i64>>,
    retention_ms: Option<Spanned<i64>>,
    cleanup_policy: Option<Spanned<String>>,
    /// Avro schema file (relative to the schemas dir) for `<topic>-value`.
    value_schema: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    input: Spanned<String>,
    consumer_group: Spanned<String>,
    /// Role → topic: what the service writes, under the names its code asks for.
    #[serde(default)]
    outputs: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    retry: Vec<Spanned<RawRetry>>,
    dead_letter_topic: Spanned<String>,
    stages: Spanned<Vec<String>>,
    /// Store name → its changelog topic (`<consumer_group>-<store>-changelog`, compacted, as
    /// many partitions as the input).
    #[serde(default)]
    stores: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    topic: Spanned<String>,
    delay_ms: Spanned<i64>,
}

/// A validated topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    pub spec: TopicSpec,
    /// Absolute path of the value schema, if the topic has one.
    pub value_schema: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryStep {
    pub topic: String,
    pub delay_ms: u64,
}

/// A validated service entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub input: String,
    pub consumer_group: String,
    /// Role (`decisions`, `audit`, …) → topic. A service asks for its outputs by role, so
    /// topic names live only here.
    pub outputs: BTreeMap<String, String>,
    pub retry: Vec<RetryStep>,
    pub dead_letter_topic: String,
    pub stages: Vec<String>,
    /// State store name → its changelog topic.
    pub stores: BTreeMap<String, String>,
}

/// The changelog topic of `store` of the service in consumer group `group`, as Kafka Streams
/// names them (`<application.id>-<store>-changelog`).
pub fn changelog_topic(group: &str, store: &str) -> String {
    format!("{group}-{store}-changelog")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub topics: BTreeMap<String, Topic>,
    pub services: BTreeMap<String, Service>,
}

impl Topology {
    /// Reads and validates a topology file. Schema paths resolve against
    /// `schemas_dir`, or `<file's dir>/../schemas` when `None`.
    pub fn load(path: &Path, schemas_dir: Option<&Path>) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let default_dir;
        let schemas_dir = match schemas_dir {
            Some(d) => d,
            None => {
                default_dir = path.parent().unwrap_or(Path::new(".")).join("../schemas");
                &default_dir
            }
        };
        Self::parse(&text, schemas_dir).map_err(|issues| TopologyError::Invalid {
            path: path.display().to_string(),
            issues,
        })
    }

    /// Parses and validates topology text; returns every problem found.
    pub fn parse(text: &str, schemas_dir: &Path) -> Result<Self, Vec<TopologyIssue>> {
        let lines = LineIndex::new(text);
        let raw: RawFile = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map(|s| lines.line(s.start)).unwrap_or(1);
                return Err(vec![TopologyIssue {
                    key: "(syntax)".into(),
                    line,
                    message: e.message().to_string(),
                }]);
            }
        };
        let mut v = Validator {
            lines: &lines,
            issues: Vec::new(),
        };

        let default_partitions = v.positive_i32("defaults.partitions", &raw.defaults.partitions);
        let default_rf = v.replication(
            "defaults.replication_factor",
            &raw.defaults.replication_factor,
        );

        let mut topics = BTreeMap::new();
        for (name, t) in &raw.topics {
            let key = format!("topics.{name}");
            v.topic_name(&key, name, t.span());
            let partitions = match &t.get_ref().partitions {
                Some(p) => v.positive_i32(&format!("{key}.partitions"), p),
                None => default_partitions,
            };
            let replication_factor = match &t.get_ref().replication_factor {
                Some(p) => v.replication(&format!("{key}.replication_factor"), p),
                None => default_rf,
            };
            let retention_ms = t.get_ref().retention_ms.as_ref().and_then(|r| {
                if *r.get_ref() == -1 || *r.get_ref() > 0 {
                    Some(*r.get_ref())
                } else {
                    v.push(
                        &format!("{key}.retention_ms"),
                        r.span(),
                        "must be -1 (forever) or a positive number of ms",
                    );
                    None
                }
            });
            let cleanup_policy = match &t.get_ref().cleanup_policy {
                Some(c) if CLEANUP_POLICIES.contains(&c.get_ref().as_str()) => c.get_ref().clone(),
                Some(c) => {
                    v.push(
                        &format!("{key}.cleanup_policy"),
                        c.span(),
                        &format!(
                            "`{}` is not one of {}",
                            c.get_ref(),
                            CLEANUP_POLICIES.join(", ")
                        ),
                    );
                    String::new()
                }
                None => "delete".to_string(),
            };
            let value_schema = t.get_ref().value_schema.as_ref().and_then(|s| {
                let path = schemas_dir.join(s.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) => match apache_avro::Schema::parse_str(&text) {
                        Ok(_) => Some(path),
                        Err(e) => {
                            v.push(
                                &format!("{key}.value_schema"),
                                s.span(),
                                &format!("{} is not a valid Avro schema: {e}", path.display()),
                            );
                            None
                        }
                    },
                    Err(e) => {
                        v.push(
                            &format!("{key}.value_schema"),
                            s.span(),
                            &format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            });
            topics.insert(
                name.clone(),
                Topic {
                    spec: TopicSpec {
                        name: name.clone(),
                        partitions,
                        replication_factor,
                        retention_ms,
                        cleanup_policy,
                    },
                    value_schema,
                },
            );
        }

        let mut services = BTreeMap::new();
        let mut groups: BTreeSet<String> = BTreeSet::new();
        for (name, s) in &raw.services {
            let key = format!("services.{name}");
            let s_ref = s.get_ref();
            v.known_topic(&raw, &format!("{key}.input"), &s_ref.input);
            for (role, o) in &s_ref.outputs {
                v.known_topic(&raw, &format!("{key}.outputs.{role}"), o);
                if o.get_ref() == s_ref.input.get_ref() {
                    v.push(
                        &format!("{key}.outputs.{role}"),
                        o.span(),
                        "a service must not write to its own input topic",
                    );
                }
            }
            v.known_topic(
                &raw,
                &format!("{key}.dead_letter_topic"),
                &s_ref.dead_letter_topic,
            );
            let group = s_ref.consumer_group.get_ref();
            if group.trim().is_empty() {
                v.push(
                    &format!("{key}.consumer_group"),
                    s_ref.consumer_group.span(),
                    "must not be empty",
                );
            } else if !groups.insert(group.clone()) {
                v.push(
                    &format!("{key}.consumer_group"),
                    s_ref.consumer_group.span(),
                    &format!("group `{group}` is used by another service"),
                );
            }
            let mut retry = Vec::new();
            let mut last_delay = 0;
            for (i, r) in s_ref.retry.iter().enumerate() {
                let rk = format!("{key}.retry[{i}]");
                let r = r.get_ref();
                v.known_topic(&raw, &format!("{rk}.topic"), &r.topic);
                let delay = *r.delay_ms.get_ref();
                if delay <= 0 {
                    v.push(
                        &format!("{rk}.delay_ms"),
                        r.delay_ms.span(),
                        "must be a positive number of ms",
                    );
                } else if delay < last_delay {
                    v.push(
                        &format!("{rk}.delay_ms"),
                        r.delay_ms.span(),
                        "retry delays must not decrease",
                    );
                }
                last_delay = delay;
                retry.push(RetryStep {
                    topic: r.topic.get_ref().clone(),
                    delay_ms: delay.max(0) as u64,
                });
            }
            for (store, t) in &s_ref.stores {
                let sk = format!("{key}.stores.{store}");
                v.known_topic(&raw, &sk, t);
                let want = changelog_topic(group, store);
                if t.get_ref() != &want {
                    v.push(
                        &sk,
                        t.span(),
                        &format!("the changelog topic must be named `{want}`"),
                    );
                    continue;
                }
                let Some(topic) = topics.get(t.get_ref()) else {
                    continue;
                };
                if !topic.spec.cleanup_policy.starts_with("compact") {
                    v.push(
                        &sk,
                        t.span(),
                        &format!(
                            "`{want}` must have cleanup_policy = \"compact\" or \"compact,delete\""
                        ),
                    );
                }
                // A store is scoped to an input partition: partition p of the changelog
                // holds the state of partition p of the input.
                let input_partitions = topics.get(s_ref.input.get_ref()).map(|t| t.spec.partitions);
                if input_partitions.is_some_and(|n| n != topic.spec.partitions) {
                    v.push(
                        &sk,
                        t.span(),
                        &format!(
                            "`{want}` needs the partition count of the input `{}`",
                            s_ref.input.get_ref()
                        ),
                    );
                }
            }
            if s_ref.stages.get_ref().is_empty() {
                v.push(
                    &format!("{key}.stages"),
                    s_ref.stages.span(),
                    "a service needs at least one stage",
                );
            }
            services.insert(
                name.clone(),
                Service {
                    name: name.clone(),
                    input: s_ref.input.get_ref().clone(),
                    consumer_group: group.clone(),
                    outputs: s_ref
                        .outputs
                        .iter()
                        .map(|(role, o)| (role.clone(), o.get_ref().clone()))
                        .collect(),
                    retry,
                    dead_letter_topic: s_ref.dead_letter_topic.get_ref().clone(),
                    stages: s_ref.stages.get_ref().clone(),
                    stores: s_ref
                        .stores
                        .iter()
                        .map(|(store, t)| (store.clone(), t.get_ref().clone()))
                        .collect(),
                },
            );
        }

        if v.issues.is_empty() {
            Ok(Self { topics, services })
        } else {
            Err(v.issues)
        }
    }

    /// The service entry called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
}

struct Validator<'a> {
    lines: &'a LineIndex,
    issues: Vec<TopologyIssue>,
}

impl Validator<'_> {
    fn push(&mut self, key: &str, span: std::ops::Range<usize>, message: &str) {
        self.issues.push(TopologyIssue {
            key: key.to_string(),
            line: self.lines.line(span.start),
            message: message.to_string(),
        });
    }

    fn positive_i32(&mut self, key: &str, value: &Spanned<i64>) -> i32 {
        match i32::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.push(
                    key,
                    value.span(),
                    &format!("must be between 1 and {}", i32::MAX),
                );
                1
            }
        }
    }

    /// A replication factor: -1 (the broker's default) or 1 to 32767 (Kafka's is an i16).
    fn replication(&mut self, key: &str, value: &Spanned<i64>) -> i32 {
        match i32::try_from(*value.get_ref()) {
            Ok(n) if n == BROKER_DEFAULT_REPLICATION || (1..=i32::from(i16::MAX)).contains(&n) => n,
            _ => {
                self.push(
                    key,
                    value.span(),
                    "must be -1 (the broker's default.replication.factor) or between 1 and 32767",
                );
                1
            }
        }
    }

    fn topic_name(&mut self, key: &str, name: &str, span: std::ops::Range<usize>) {
        let legal = !name.is_empty()
            && name.len() <= 249
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal {
            self.push(
                key,
                span,
                "topic names are 1-249 characters of [a-zA-Z0-9._-], not `.` or `..`",
            );
        }
    }

    fn known_topic(&mut self, raw: &RawFile, key: &str, topic: &Spanned<String>) {
        if !raw.topics.contains_key(topic.get_ref()) {
            self.push(
                key,
                topic.span(),
                &format!("topic `{}` is not declared under [topics]", topic.get_ref()),
            );
        }
    }
}

/// Byte offset → 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ok.avsc"),
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("bad.avsc"),
            r#"{"type":"record","name":"R"}"#,
        )
        .expect("write");
        dir
    }

    const GOOD: &str = r#"
[defaults]
partitions = 3

[topics.in]
value_schema = "ok.avsc"
[topics.out]
retention_ms = 1000
[topics."in.retry.1"]
[topics."in.dlq"]
partitions = 1
cleanup_policy = "compact"

[services.svc]
input = "in"
consumer_group = "g"
outputs = { decisions = "out" }
retry = [{ topic = "in.retry.1", delay_ms = 500 }]
dead_letter_topic = "in.dlq"
stages = ["a", "b"]
"#;

    #[test]
    fn parses_a_good_file() {
        let dir = schemas();
        let t = Topology::parse(GOOD, dir.path()).expect("valid");
        assert_eq!(t.topics["in"].spec.partitions, 3);
        assert_eq!(t.topics["in.dlq"].spec.partitions, 1);
        assert_eq!(t.topics["in.dlq"].spec.cleanup_policy, "compact");
        assert_eq!(t.topics["out"].spec.retention_ms, Some(1000));
        assert!(t.topics["in"].value_schema.is_some());
        let s = t.service("svc").expect("svc");
        assert_eq!(
            s.retry,
            vec![RetryStep {
                topic: "in.retry.1".into(),
                delay_ms: 500
            }]
        );
        assert_eq!(s.stages, vec!["a", "b"]);
    }

    #[test]
    fn a_store_needs_a_compacted_changelog_named_for_it_with_the_inputs_partitions() {
        let dir = schemas();
        let with = |topic: &str, store_topic: &str| {
            GOOD.replace(
                "[services.svc]",
                &format!("{topic}\n[services.svc]\nstores = {{ counts = \"{store_topic}\" }}"),
            )
        };
        let good = with(
            "[topics.\"g-counts-changelog\"]\ncleanup_policy = \"compact\"",
            "g-counts-changelog",
        );
        let t = Topology::parse(&good, dir.path()).expect("valid");
        assert_eq!(
            t.service("svc").map(|s| s.stores.clone()),
            Some(BTreeMap::from([(
                "counts".into(),
                "g-counts-changelog".into()
            )]))
        );
        assert_eq!(changelog_topic("g", "counts"), "g-counts-changelog");

        let misnamed = with(
            "[topics.elsewhere]\ncleanup_policy = \"compact\"",
            "elsewhere",
        );
        let errs = Topology::parse(&misnamed, dir.path()).expect_err("misnamed");
        assert!(
            errs.iter().any(|e| e.key == "services.svc.stores.counts"
                && e.message.contains("`g-counts-changelog`")),
            "{errs:?}"
        );

        let not_compacted = with("[topics.\"g-counts-changelog\"]", "g-counts-changelog");
        let errs = Topology::parse(&not_compacted, dir.path()).expect_err("delete policy");
        assert!(
            errs.iter().any(|e| e.message.contains("compact")),
            "{errs:?}"
        );

        let fewer = with(
            "[topics.\"g-counts-changelog\"]\ncleanup_policy = \"compact\"\npartitions = 1",
            "g-counts-changelog",
        );
        let errs = Topology::parse(&fewer, dir.path()).expect_err("partitions");
        assert!(
            errs.iter().any(|e| e.message.contains("partition count")),
            "{errs:?}"
        );
    }

    #[test]
    fn replication_defaults_to_the_brokers_and_is_checked() {
        let dir = schemas();
        let t = Topology::parse(GOOD, dir.path()).expect("valid");
        assert_eq!(
            t.topics["in"].spec.replication_factor,
            BROKER_DEFAULT_REPLICATION
        );
        let three = GOOD.replace("[topics.out]\n", "[topics.out]\nreplication_factor = 3\n");
        let t = Topology::parse(&three, dir.path()).expect("valid");
        assert_eq!(t.topics["out"].spec.replication_factor, 3);
        let zero = GOOD.replace("[topics.out]\n", "[topics.out]\nreplication_factor = 0\n");
        let issues = Topology::parse(&zero, dir.path()).expect_err("0 replicas");
        assert_eq!(issues[0].key, "topics.out.replication_factor");
        assert!(issues[0].message.contains("-1"), "{:?}", issues[0]);
    }

    #[test]
    fn every_problem_names_key_and_line() {
        let dir = schemas();
        let bad = GOOD
            .replace("partitions = 1\n", "partitions = 0\n")
            .replace("decisions = \"out\"", "decisions = \"nowhere\"")
            .replace("\"compact\"", "\"shred\"")
            .replace("ok.avsc", "bad.avsc");
        let issues = Topology::parse(&bad, dir.path()).expect_err("invalid");
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        let find = |key: &str| {
            issues
                .iter()
                .find(|i| i.key == key)
                .unwrap_or_else(|| panic!("no issue for {key}: {text:?}"))
        };
        assert_eq!(find("topics.in.dlq.partitions").line, 11);
        assert_eq!(find("topics.in.dlq.cleanup_policy").line, 12);
        assert_eq!(find("services.svc.outputs.decisions").line, 17);
        assert_eq!(find("topics.in.value_schema").line, 6);
        assert_eq!(issues.len(), 4, "{text:?}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_located() {
        let dir = schemas();
        let issues = Topology::parse(&GOOD.replace("retention_ms", "retension_ms"), dir.path())
            .expect_err("typo");
        assert_eq!(issues.len(), 1);
        assert!(
            issues[0].message.contains("retension_ms"),
            "{:?}",
            issues[0]
        );
        assert_eq!(issues[0].line, 8);
        let issues =
            Topology::parse("[topics.a]\npartitions = = 2\n", dir.path()).expect_err("syntax");
        assert_eq!(issues[0].line, 2);
    }

    #[test]
    fn shared_groups_and_decreasing_delays_are_rejected() {
        let dir = schemas();
        let text = format!(
            "{GOOD}\n[services.other]\ninput = \"out\"\nconsumer_group = \"g\"\ndead_letter_topic = \"in.dlq\"\nstages = [\"x\"]\nretry = [{{ topic = \"in.retry.1\", delay_ms = 9 }}, {{ topic = \"in.retry.1\", delay_ms = 3 }}]\n"
        );
        let issues = Topology::parse(&text, dir.path()).expect_err("invalid");
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        // Services are checked in name order, so the second user of `g` is `svc`.
        assert!(keys.contains(&"services.svc.consumer_group"), "{keys:?}");
        assert!(
            issues.iter().any(|i| i.message.contains("group `g`")),
            "{issues:?}"
        );
        assert!(
            keys.contains(&"services.other.retry[1].delay_ms"),
            "{keys:?}"
        );
    }
}
