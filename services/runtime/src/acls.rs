//! The ACLs a service needs, derived from the topology: what it reads, writes and commits,
//! and nothing else (least privilege). Kafka's own words: resource types TOPIC, GROUP,
//! TRANSACTIONAL_ID; operations READ, WRITE, DESCRIBE_CONFIGS (READ and WRITE imply DESCRIBE).

use std::fmt;

use serde::Serialize;

use crate::topology::{Service, Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatternType {
    Literal,
    Prefixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    Read,
    Write,
    Create,
    Describe,
    DescribeConfigs,
}

impl Operation {
    /// As `kafka-acls --operation` takes it.
    pub fn tool_name(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Describe => "Describe",
            Operation::DescribeConfigs => "DescribeConfigs",
        }
    }
}

/// One ALLOW rule: `principal` may do `operation` on the resource, from any host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Acl {
    pub principal: String,
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    pub resource: String,
    pub operation: Operation,
    /// Why the service needs it.
    pub why: &'static str,
}

/// The `kafka-acls` arguments that add `acls`: one command per principal, resource type,
/// pattern and operation, naming all its resources (the tool adds every combination).
pub fn tool_commands(acls: &[Acl]) -> Vec<Vec<String>> {
    let mut groups: std::collections::BTreeMap<_, Vec<&str>> = std::collections::BTreeMap::new();
    for a in acls {
        groups
            .entry((&a.principal, a.resource_type, a.pattern_type, a.operation))
            .or_default()
            .push(&a.resource);
    }
    groups
        .into_iter()
        .map(
            |((principal, resource_type, pattern_type, operation), resources)| {
                let flag = match resource_type {
                    ResourceType::Topic => "--topic",
                    ResourceType::Group => "--group",
                    ResourceType::TransactionalId => "--transactional-id",
                };
                let mut args: Vec<String> = [
                    "--add",
                    "--allow-principal",
                    principal,
                    "--operation",
                    operation.tool_name(),
                ]
                .map(String::from)
                .to_vec();
                for r in resources {
                    args.extend([flag.to_string(), r.to_string()]);
                }
                if pattern_type == PatternType::Prefixed {
                    args.extend([
                        "--resource-pattern-type".to_string(),
                        "prefixed".to_string(),
                    ]);
                }
                args
            },
        )
        .collect()
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {:?}:{}{} ({})",
            self.principal,
            self.operation,
            self.resource_type,
            self.resource,
            if self.pattern_type == PatternType::Prefixed {
                "*"
            } else {
                ""
            },
            self.why
        )
    }
}

/// The ACLs of `service` running as `principal` (`User:name`): READ on its input, retry
/// topics and changelogs, and on its group (joins and commits); WRITE on its outputs, retry
/// and dead-letter topics and changelogs, and DESCRIBE_CONFIGS there (each record is checked
/// against the topic's `max.message.bytes`); with `exactly_once`, WRITE on its transactional
/// ids (`<group>-…`, prefixed). Sorted, without duplicates.
pub fn service_acls(service: &Service, principal: &str, exactly_once: bool) -> Vec<Acl> {
    let topic = |name: &str, operation, why| Acl {
        principal: principal.to_string(),
        resource_type: ResourceType::Topic,
        pattern_type: PatternType::Literal,
        resource: name.to_string(),
        operation,
        why,
    };
    let mut acls = vec![topic(&service.input, Operation::Read, "its input")];
    for step in &service.retry {
        acls.push(topic(&step.topic, Operation::Read, "retries it runs"));
    }
    for changelog in service.stores.values() {
        acls.push(topic(
            changelog,
            Operation::Read,
            "state restored on assignment",
        ));
    }
    let written = service
        .outputs
        .values()
        .map(|t| (t, "an output"))
        .chain(
            service
                .retry
                .iter()
                .map(|s| (&s.topic, "failures to retry")),
        )
        .chain(std::iter::once((
            &service.dead_letter_topic,
            "dead letters",
        )))
        .chain(service.stores.values().map(|t| (t, "state changes")));
    for (name, why) in written {
        acls.push(topic(name, Operation::Write, why));
        acls.push(topic(
            name,
            Operation::DescribeConfigs,
            "its max.message.bytes bounds a record",
        ));
    }
    acls.push(Acl {
        principal: principal.to_string(),
        resource_type: ResourceType::Group,
        pattern_type: PatternType::Literal,
        resource: service.consumer_group.clone(),
        operation: Operation::Read,
        why: "joins and commits its consumer group",
    });
    if !service.stores.is_empty() {
        // The state restore reads its changelogs in a throwaway group of its own
        // (`KafkaSettings::reader_config`), which it never joins or commits.
        acls.push(reader_groups(principal));
    }
    if exactly_once {
        acls.push(Acl {
            principal: principal.to_string(),
            resource_type: ResourceType::TransactionalId,
            pattern_type: PatternType::Prefixed,
            resource: format!("{}-", service.consumer_group),
            operation: Operation::Write,
            why: "its transactions (engine.guarantee = \"exactly_once\")",
        });
    }
    acls.sort();
    acls.dedup_by(|a, b| {
        (a.resource_type, &a.resource, a.operation) == (b.resource_type, &b.resource, b.operation)
    });
    acls
}

/// One ALLOW rule on a literal resource name (`*` is Kafka's wildcard).
pub fn allow(
    principal: &str,
    resource_type: ResourceType,
    resource: &str,
    operation: Operation,
    why: &'static str,
) -> Acl {
    Acl {
        principal: principal.to_string(),
        resource_type,
        pattern_type: PatternType::Literal,
        resource: resource.to_string(),
        operation,
        why,
    }
}

/// The prefix of the throwaway groups of readers that assign partitions themselves
/// ([`crate::kafka::KafkaSettings::reader_config`]): librdkafka asks for their coordinator.
pub const READER_GROUP_PREFIX: &str = "verdict-reader-";

/// The reader groups' rule: READ on groups named `verdict-reader-…` (prefixed).
pub fn reader_groups(principal: &str) -> Acl {
    Acl {
        pattern_type: PatternType::Prefixed,
        ..allow(
            principal,
            ResourceType::Group,
            READER_GROUP_PREFIX,
            Operation::Read,
            "its readers' throwaway groups (no commits)",
        )
    }
}

/// The schema registry's: its compacted topic (created at start when missing, read to its
/// end, written) and its reader's group.
pub fn registry_acls(topic: &str, principal: &str) -> Vec<Acl> {
    let mut acls: Vec<Acl> = [
        (Operation::Create, "created at start when missing"),
        (Operation::Read, "schemas read at start and followed"),
        (Operation::Write, "schemas registered"),
        (
            Operation::DescribeConfigs,
            "its max.message.bytes bounds a record",
        ),
    ]
    .into_iter()
    .map(|(op, why)| allow(principal, ResourceType::Topic, topic, op, why))
    .collect();
    acls.push(reader_groups(principal));
    acls
}

/// A lag monitor's: it describes every group and topic (lag of any group) and reads the
/// records at a group's committed offsets of the topology's inputs and retry topics (their
/// timestamps give lag in seconds).
pub fn monitor_acls(topology: &Topology, principal: &str) -> Vec<Acl> {
    let mut acls = vec![
        allow(
            principal,
            ResourceType::Group,
            "*",
            Operation::Describe,
            "lag of every group",
        ),
        allow(
            principal,
            ResourceType::Topic,
            "*",
            Operation::Describe,
            "offsets of every topic",
        ),
        reader_groups(principal),
    ];
    for service in topology.services.values() {
        for topic in std::iter::once(&service.input).chain(service.retry.iter().map(|r| &r.topic)) {
            acls.push(allow(
                principal,
                ResourceType::Topic,
                topic,
                Operation::Read,
                "record timestamps give lag in seconds",
            ));
        }
    }
    acls.sort();
    acls.dedup();
    acls
}

/// An ACL as the cluster holds it (DescribeAcls), in the terms of [`Acl`] where it can be.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Binding {
    pub principal: String,
    pub host: String,
    /// `None`: a resource type verdict does not use (CLUSTER…).
    pub resource_type: Option<ResourceType>,
    pub pattern_type: PatternType,
    pub resource: String,
    /// `None`: ALL operations; other operations verdict does not use are left out.
    pub operation: Option<Operation>,
    pub allow: bool,
}

impl Binding {
    /// Whether it applies to `acl`'s principal, resource and operation from any host.
    fn covers(&self, acl: &Acl) -> bool {
        let resource = match self.pattern_type {
            PatternType::Literal => self.resource == "*" || self.resource == acl.resource,
            PatternType::Prefixed => acl.resource.starts_with(&self.resource),
        };
        self.principal == acl.principal
            && self.host == "*"
            && self.resource_type == Some(acl.resource_type)
            && self.operation.is_none_or(|op| op == acl.operation)
            && resource
    }
}

/// How the cluster's ACLs differ from what the services need.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Drift {
    /// Needed and not allowed (or denied).
    pub missing: Vec<Acl>,
    /// Allowed to one of these principals without being needed.
    pub extra: Vec<Binding>,
}

/// What `existing` lacks of `needed`, and what it grants their principals beyond it.
pub fn drift(needed: &[Acl], existing: &[Binding]) -> Drift {
    let missing = needed
        .iter()
        .filter(|a| {
            let allowed = existing.iter().any(|b| b.allow && b.covers(a));
            let denied = existing.iter().any(|b| !b.allow && b.covers(a));
            !allowed || denied
        })
        .cloned()
        .collect();
    let principals: std::collections::BTreeSet<&str> =
        needed.iter().map(|a| a.principal.as_str()).collect();
    let extra = existing
        .iter()
        .filter(|b| b.allow && principals.contains(b.principal.as_str()))
        .filter(|b| !needed.iter().any(|a| b == &&exact(a)))
        .cloned()
        .collect();
    Drift { missing, extra }
}

/// The binding that grants exactly `acl`.
fn exact(acl: &Acl) -> Binding {
    Binding {
        principal: acl.principal.clone(),
        host: "*".to_string(),
        resource_type: Some(acl.resource_type),
        pattern_type: acl.pattern_type,
        resource: acl.resource.clone(),
        operation: Some(acl.operation),
        allow: true,
    }
}

/// Every declared service's ACLs, each running as `User:<service name>` unless `principal`
/// says otherwise.
pub fn topology_acls(
    topology: &Topology,
    principal: impl Fn(&str) -> String,
    exactly_once: bool,
) -> Vec<Acl> {
    topology
        .services
        .values()
        .flat_map(|s| service_acls(s, &principal(&s.name), exactly_once))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let text = r#"
[defaults]
partitions = 2
[topics.in]
[topics.out]
[topics."in.retry.1"]
[topics."in.dlq"]
[topics."g-velocity-changelog"]
cleanup_policy = "compact"
[services.scorer]
input = "in"
consumer_group = "g"
outputs = { decisions = "out" }
retry = [{ topic = "in.retry.1", delay_ms = 100 }]
dead_letter_topic = "in.dlq"
stores = { velocity = "g-velocity-changelog" }
stages = ["score"]
"#;
        Topology::parse(text, std::path::Path::new(".")).expect("topology")
    }

    fn has(acls: &[Acl], rt: ResourceType, name: &str, op: Operation) -> bool {
        acls.iter()
            .any(|a| a.resource_type == rt && a.resource == name && a.operation == op)
    }

    #[test]
    fn a_service_gets_what_it_reads_writes_and_commits_and_nothing_else() {
        let t = topology();
        let acls = service_acls(t.service("scorer").expect("scorer"), "User:scorer", false);
        use Operation::*;
        use ResourceType::*;
        assert!(has(&acls, Topic, "in", Read));
        assert!(!has(&acls, Topic, "in", Write), "never writes its input");
        assert!(has(&acls, Topic, "in.retry.1", Read));
        assert!(has(&acls, Topic, "in.retry.1", Write));
        assert!(has(&acls, Topic, "out", Write));
        assert!(!has(&acls, Topic, "out", Read), "never reads its output");
        assert!(has(&acls, Topic, "in.dlq", Write));
        assert!(
            !has(&acls, Topic, "in.dlq", Read),
            "cannot read dead letters"
        );
        assert!(has(&acls, Topic, "g-velocity-changelog", Read));
        assert!(has(&acls, Topic, "g-velocity-changelog", Write));
        assert!(has(&acls, Group, "g", Read));
        assert!(!acls.iter().any(|a| a.resource_type == TransactionalId));
        assert!(acls.iter().all(|a| a.principal == "User:scorer"));
        assert_eq!(
            acls.len(),
            1 + 1 + 1 + 4 * 2 + 1 + 1,
            "with the restore's reader groups"
        );
    }

    #[test]
    fn exactly_once_adds_its_own_transactional_ids_only() {
        let t = topology();
        let acls = service_acls(t.service("scorer").expect("scorer"), "User:s", true);
        let tx: Vec<&Acl> = acls
            .iter()
            .filter(|a| a.resource_type == ResourceType::TransactionalId)
            .collect();
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].resource, "g-");
        assert_eq!(tx[0].pattern_type, PatternType::Prefixed);
    }

    #[test]
    fn drift_is_what_is_missing_denied_or_granted_beyond_need() {
        let t = topology();
        let needed = service_acls(t.service("scorer").expect("scorer"), "User:s", false);
        let mut existing: Vec<Binding> = needed.iter().map(exact).collect();
        assert_eq!(drift(&needed, &existing), Drift::default());
        // One taken away, one denied, one granted beyond need.
        let write_out = existing
            .iter()
            .position(|b| b.resource == "out" && b.operation == Some(Operation::Write))
            .expect("write out");
        existing.remove(write_out);
        existing.push(Binding {
            allow: false,
            ..exact(&needed[0])
        });
        let extra = Binding {
            resource: "in.dlq".into(),
            operation: Some(Operation::Read),
            ..exact(&needed[0])
        };
        existing.push(extra.clone());
        let d = drift(&needed, &existing);
        let missing: Vec<(&str, Operation)> = d
            .missing
            .iter()
            .map(|a| (a.resource.as_str(), a.operation))
            .collect();
        assert_eq!(
            missing,
            vec![
                (needed[0].resource.as_str(), needed[0].operation),
                ("out", Operation::Write)
            ]
        );
        assert_eq!(d.extra, vec![extra]);
        // A wildcard or a prefix covers, ALL covers every operation.
        let broad = vec![Binding {
            resource: "*".into(),
            operation: None,
            resource_type: Some(ResourceType::Topic),
            ..exact(&needed[0])
        }];
        assert!(
            drift(&needed, &broad)
                .missing
                .iter()
                .all(|a| a.resource_type != ResourceType::Topic)
        );
    }

    #[test]
    fn commands_name_every_resource_of_one_operation_once() {
        let t = topology();
        let acls = service_acls(t.service("scorer").expect("scorer"), "User:s", true);
        let commands: Vec<String> = tool_commands(&acls).iter().map(|c| c.join(" ")).collect();
        assert_eq!(commands.len(), 6, "{commands:#?}");
        assert!(commands.contains(
            &"--add --allow-principal User:s --operation Read --topic g-velocity-changelog --topic in --topic in.retry.1"
                .to_string()
        ), "{commands:#?}");
        assert!(commands.contains(
            &"--add --allow-principal User:s --operation Write --transactional-id g- --resource-pattern-type prefixed"
                .to_string()
        ), "{commands:#?}");
    }
}
