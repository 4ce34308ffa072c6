//! `verdict topology check|apply|acls`.
//!
//! `apply` validates the whole file and checks every schema against the registry
//! before it changes anything; then it creates missing topics and registers schemas.
//! Existing topics that differ from the file are reported as drift, never altered.

use std::path::Path;
use std::time::Duration;

use verdict_runtime::acls::{Acl, service_acls, tool_commands};
use verdict_runtime::kafka::KafkaSettings;
use verdict_runtime::registry::RegistryClient;
use verdict_runtime::topology::Topology;

use crate::CliError;
use crate::services::BESIDE_TOPOLOGY;

/// What `apply` did.
#[derive(Debug, Default, PartialEq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<String>,
    /// `(subject, schema id)` for every registered value schema.
    pub schemas: Vec<(String, u32)>,
}

/// The least-privilege ACLs of the `services` named (every topology service when none is;
/// the lag monitor and the gateway only when named), each running as `User:<service>` unless
/// `principals` maps it to another principal.
pub fn acls(
    topology: &Topology,
    services: &[String],
    principals: &[(String, String)],
    exactly_once: bool,
) -> Result<Vec<Acl>, CliError> {
    let beside = |name: &str| BESIDE_TOPOLOGY.iter().find(|d| d.name == name);
    for name in services.iter().chain(principals.iter().map(|(s, _)| s)) {
        if topology.service(name).is_none() && beside(name).is_none() {
            return Err(CliError::Usage(format!(
                "no service `{name}` in the topology; it has {}, and beside it {}",
                topology
                    .services
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                BESIDE_TOPOLOGY
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let principal = |name: &str| {
        principals
            .iter()
            .find(|(s, _)| s == name)
            .map_or_else(|| format!("User:{name}"), |(_, p)| p.clone())
    };
    let in_topology = topology
        .services
        .values()
        .filter(|s| services.is_empty() || services.contains(&s.name))
        .flat_map(|s| service_acls(s, &principal(&s.name), exactly_once));
    let beside_it = services
        .iter()
        .filter_map(|name| beside(name))
        .flat_map(|d| (d.acls)(topology, &principal(d.name)));
    Ok(in_topology.chain(beside_it).collect())
}

/// Adds `acls` with Kafka's own `kafka-acls` (one run per command of [`tool_commands`]);
/// `connection` is its `--bootstrap-server` and, for a secured cluster, `--command-config`.
pub fn apply_acls(acls: &[Acl], connection: &[String]) -> Result<(), CliError> {
    let dist = crate::broker::KafkaDist::locate()?;
    for args in tool_commands(acls) {
        let args: Vec<String> = connection.iter().cloned().chain(args).collect();
        let out = dist
            .tool("acls", &args)?
            .output()
            .map_err(|e| CliError::Failed(format!("cannot run Java: {e}")))?;
        if !out.status.success() {
            return Err(CliError::Failed(format!(
                "kafka-acls {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

/// Compares `acls` with the cluster's: prints what is missing (or denied) and what their
/// principals are granted beyond them, and fails with drift (exit 3) on any difference.
pub async fn check_acls(kafka: &KafkaSettings, acls: &[Acl]) -> Result<(), CliError> {
    let existing = verdict_runtime::authorization::describe_acls(kafka).await?;
    let drift = verdict_runtime::acls::drift(acls, &existing);
    for a in &drift.missing {
        println!("MISSING {a}");
    }
    for b in &drift.extra {
        println!(
            "EXTRA   {} {} {}:{}{} (not needed)",
            b.principal,
            b.operation.map_or("All", |o| o.tool_name()),
            b.resource_type
                .map_or("?".to_string(), |t| format!("{t:?}")),
            b.resource,
            if b.pattern_type == verdict_runtime::acls::PatternType::Prefixed {
                "*"
            } else {
                ""
            },
        );
    }
    if drift.missing.is_empty() && drift.extra.is_empty() {
        println!(
            "ACLs: the cluster grants the {} needed, nothing more",
            acls.len()
        );
        Ok(())
    } else {
        Err(CliError::Drift(format!(
            "ACLs differ: {} missing, {} extra",
            drift.missing.len(),
            drift.extra.len()
        )))
    }
}

pub fn check(file: &Path, schemas: Option<&Path>) -> Result<Topology, CliError> {
    Topology::load(file, schemas).map_err(|e| CliError::Usage(e.to_string()))
}

pub async fn apply(
    file: &Path,
    schemas: Option<&Path>,
    kafka: &KafkaSettings,
    registry: &RegistryClient,
) -> Result<ApplyReport, CliError> {
    let topology = check(file, schemas)?;

    // Everything that can refuse is asked before anything changes.
    kafka.wait_until_reachable(Duration::from_secs(10)).await?;
    let existing = kafka.topic_partitions().await?;
    let mut subjects = Vec::new();
    for (name, topic) in &topology.topics {
        let Some(path) = &topic.value_schema else {
            continue;
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let subject = format!("{name}-value");
        let reasons = registry.incompatibilities(&subject, &text).await?;
        if !reasons.is_empty() {
            return Err(CliError::Failed(format!(
                "{} is not compatible with the registered {subject}; nothing was applied:\n  {}",
                path.display(),
                reasons.join("\n  ")
            )));
        }
        subjects.push((subject, text));
    }

    let mut report = ApplyReport::default();
    let mut to_create = Vec::new();
    for (name, topic) in &topology.topics {
        let Some(&partitions) = existing.get(name) else {
            to_create.push(topic.spec.clone());
            continue;
        };
        let before = report.drift.len();
        if i32::try_from(partitions).ok() != Some(topic.spec.partitions) {
            report.drift.push(format!(
                "{name}: partitions declared {}, actual {partitions}",
                topic.spec.partitions
            ));
        }
        match kafka.topic_configs(name).await {
            Ok(Some(actual)) => {
                for (key, want) in topic.spec.configs() {
                    match actual.get(&key) {
                        Some(have) if *have == want => {}
                        Some(have) => report
                            .drift
                            .push(format!("{name}: {key} declared {want}, actual {have}")),
                        None => report.drift.push(format!(
                            "{name}: {key} declared {want}, broker reports none"
                        )),
                    }
                }
            }
            Ok(None) | Err(_) => {
                tracing::warn!(topic = %name, "broker did not describe topic configs; only partitions compared")
            }
        }
        if report.drift.len() == before {
            report.unchanged.push(name.clone());
        }
    }

    kafka.create_topics(&to_create).await?;
    report.created = to_create.into_iter().map(|t| t.name).collect();
    for (subject, text) in subjects {
        let id = registry.register(&subject, &text).await?;
        report.schemas.push((subject, id));
    }
    Ok(report)
}

impl ApplyReport {
    pub fn print(&self) {
        for t in &self.created {
            println!("created   {t}");
        }
        for t in &self.unchanged {
            println!("unchanged {t}");
        }
        for d in &self.drift {
            println!("DRIFT     {d} (left as is)");
        }
        for (subject, id) in &self.schemas {
            println!("schema    {subject} -> id {id}");
        }
        println!(
            "topology: {} created, {} unchanged, {} drift, {} schemas registered",
            self.created.len(),
            self.unchanged.len(),
            self.drift.len(),
            self.schemas.len()
        );
    }
}

/// Renames every topic and consumer group of a topology document into the namespace `ns`
/// (`transactions` → `ns.transactions`); returns the new topic names. Tests run in a
/// namespace of their own, `verdict shadow` in a shadow one, so production names stay
/// untouched.
pub fn namespace(doc: &mut toml::Table, ns: &str) -> Vec<String> {
    use toml::Value;
    let rename = |v: &mut Value| {
        if let Value::String(s) = v {
            *s = format!("{ns}.{s}");
        }
    };
    let mut names = Vec::new();
    if let Some(Value::Table(topics)) = doc.get_mut("topics") {
        *topics = std::mem::take(topics)
            .into_iter()
            .map(|(name, t)| {
                let name = format!("{ns}.{name}");
                names.push(name.clone());
                (name, t)
            })
            .collect();
    }
    if let Some(Value::Table(services)) = doc.get_mut("services") {
        for svc in services.iter_mut().filter_map(|(_, v)| v.as_table_mut()) {
            for key in ["input", "consumer_group", "dead_letter_topic"] {
                svc.get_mut(key).map(rename);
            }
            for table in ["outputs", "stores"] {
                if let Some(Value::Table(t)) = svc.get_mut(table) {
                    t.iter_mut().for_each(|(_, v)| rename(v));
                }
            }
            if let Some(Value::Array(steps)) = svc.get_mut("retry") {
                for step in steps.iter_mut().filter_map(Value::as_table_mut) {
                    step.get_mut("topic").map(rename);
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use verdict_runtime::acls::{Operation, ResourceType};

    fn topology() -> Topology {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology/topology.toml");
        Topology::load(&file, None).expect("the repository's topology")
    }

    #[test]
    fn the_gateway_and_the_lag_monitor_get_theirs_only_when_named() {
        let t = topology();
        let all = acls(&t, &[], &[], false).expect("every topology service");
        assert!(all.iter().all(|a| a.principal != "User:gateway"));
        let gw = acls(
            &t,
            &["gateway".into()],
            &[("gateway".into(), "User:front".into())],
            false,
        )
        .expect("the gateway's");
        let has = |rt, name: &str, op| {
            gw.iter().any(|a| {
                a.principal == "User:front"
                    && a.resource_type == rt
                    && a.resource == name
                    && a.operation == op
            })
        };
        assert!(has(ResourceType::Topic, "transactions", Operation::Write));
        assert!(has(
            ResourceType::Topic,
            "review-resolutions",
            Operation::Write
        ));
        assert!(has(ResourceType::Topic, "fraud-decisions", Operation::Read));
        assert!(!has(
            ResourceType::Topic,
            "fraud-decisions",
            Operation::Write
        ));
        assert!(has(
            ResourceType::Group,
            "verdict-fraud-detector",
            Operation::Describe
        ));
        assert!(!has(
            ResourceType::Group,
            "verdict-fraud-detector",
            Operation::Read
        ));
        let monitor = acls(&t, &["lag-monitor".into()], &[], false).expect("the monitor's");
        assert!(
            monitor
                .iter()
                .any(|a| a.resource == "*" && a.operation == Operation::Describe)
        );
        match acls(&t, &["nobody".into()], &[], false) {
            Err(CliError::Usage(m)) => assert!(m.contains("gateway"), "{m}"),
            other => panic!("expected a usage error, got {other:?}"),
        }
    }
}
