//! Kafka client settings and the admin operations the CLI and services share.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::settings::{SettingsError, Validate};

mod security;
pub use security::{Protocol, SaslMechanism, Secret, Security, parse_java_properties};

/// Environment variable that points every verdict tool at another cluster.
pub const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// `bootstrap.servers` from `KAFKA_BOOTSTRAP_SERVERS`, else the local default.
pub fn default_bootstrap() -> String {
    std::env::var(BOOTSTRAP_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach Kafka at {bootstrap} within {waited:?}: {last}")]
    Unreachable {
        bootstrap: String,
        waited: Duration,
        last: String,
    },
    #[error("Kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: String },
    #[error("deleting topic {topic}: {code}")]
    DeleteTopic { topic: String, code: String },
    #[error("background task failed: {0}")]
    Join(String),
    /// A consumer-group admin request (ListConsumerGroups, DescribeConsumerGroups) failed.
    #[error("{request}: {message} ({code:?})")]
    GroupAdmin {
        request: &'static str,
        code: RDKafkaErrorCode,
        message: String,
    },
    /// The description of one group failed (librdkafka's error for that group).
    #[error("describing consumer group {group}: {message} ({code:?})")]
    DescribeGroup {
        group: String,
        code: RDKafkaErrorCode,
        message: String,
    },
}

/// Connection settings shared by every Kafka client of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma separated host:port.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, passed through.
    pub properties: BTreeMap<String, String>,
    /// TLS and SASL, applied to every client after the properties.
    pub security: Security,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: default_bootstrap(),
            properties: BTreeMap::new(),
            security: Security::default(),
        }
    }
}

/// librdkafka properties the runtime relies on, which `kafka.properties` may not change,
/// with the reason given when someone tries.
pub const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "the engine commits an offset only once the record's outputs are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "the engine commits an offset only once the record's outputs are acknowledged",
    ),
    ("group.id", "the consumer group comes from the topology"),
    ("group.protocol", "set engine.group_protocol instead"),
    ("group.instance.id", "set engine.group_instance_id instead"),
    (
        "partition.assignment.strategy",
        "the engine drains revoked partitions incrementally (cooperative-sticky)",
    ),
    ("enable.idempotence", "outputs are written idempotently"),
    (
        "acks",
        "outputs count as written only when all in-sync replicas have them",
    ),
];

impl Validate for KafkaSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        for (name, why) in RESERVED_PROPERTIES {
            if self.properties.contains_key(*name) {
                return Err(SettingsError::Key {
                    key: format!("kafka.properties.{name}"),
                    message: format!("cannot be set: {why}"),
                });
            }
        }
        if self.bootstrap_servers.trim().is_empty() {
            return Err(SettingsError::Key {
                key: "kafka.bootstrap_servers".into(),
                message: "must name at least one host:port".into(),
            });
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(SettingsError::Key {
                    key: "kafka.bootstrap_servers".into(),
                    message: format!("`{server}` is not host:port"),
                });
            }
        }
        self.security.validate(&self.properties)
    }
}

impl KafkaSettings {
    pub fn with_bootstrap(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap.into(),
            properties: BTreeMap::new(),
            security: Security::default(),
        }
    }

    /// A client config with the bootstrap servers, the pass-through properties and the
    /// security settings set.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka doubles its reconnect wait up to 10 s; after a few connection resets that
        // outlasts a consumer's session timeout, so the member was evicted and its partitions
        // read again (500 duplicates and a 13 s gap in the chaos run). Kafka's Java clients
        // cap it at 1 s.
        cfg.set("reconnect.backoff.max.ms", "1000");
        cfg.set_log_level(RDKafkaLogLevel::Warning);
        self.apply_properties(&mut cfg);
        cfg
    }

    /// The base of every group consumer: its group, and commits left to the caller (the
    /// engine commits what is done; tools commit nothing or what they read). Callers add
    /// their own settings and then [`Self::apply_properties`].
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        cfg
    }

    /// The producer every output goes through: idempotent, `acks=all`, batches sent after at
    /// most 1 ms (`linger.ms`: raise it to trade latency for fewer, larger requests; under load
    /// batches fill while earlier requests are in flight anyway), uncompressed as Kafka's own
    /// producer (`compression.type = "lz4"` or `"zstd"` where the network, not the CPU, is
    /// short); the user's properties last. Callers may change it before `create`.
    pub fn producer_config(&self) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("batch.num.messages", "10000")
            .set("delivery.timeout.ms", "30000");
        self.apply_properties(&mut cfg);
        cfg
    }

    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        Ok(self.producer_config().create()?)
    }

    /// A consumer that reads without a group of its own to speak of: a throwaway group id
    /// `verdict-reader-<uuid>` (librdkafka's consumer needs one; on a secured cluster it asks
    /// for the group's coordinator, which needs DESCRIBE on the group), no commits, short fetch waits, records of committed transactions only (librdkafka's
    /// default, said here; `isolation.level` in the properties changes it). For tools, tests
    /// and the registry's tailer, which assign partitions themselves.
    pub fn reader_config(&self) -> ClientConfig {
        let mut cfg = self.consumer_config(&format!("verdict-reader-{}", uuid::Uuid::new_v4()));
        cfg.set("fetch.wait.max.ms", "50")
            .set("isolation.level", "read_committed");
        self.apply_properties(&mut cfg);
        cfg
    }

    /// Re-applies the pass-through properties and then the security settings over `cfg`, so
    /// that what the user configured wins over the defaults a component sets.
    pub fn apply_properties(&self, cfg: &mut ClientConfig) {
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        self.security.apply(cfg);
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        Ok(self.client_config().create()?)
    }

    /// A consumer without a group, for metadata and watermark queries. No `group.id`: with
    /// one, librdkafka looks up that group's coordinator as soon as the client exists, which
    /// a secured cluster refuses a principal without DESCRIBE on the group (an error logged
    /// every second, for a group nothing uses).
    pub fn metadata_consumer(&self) -> Result<BaseConsumer, KafkaError> {
        let mut cfg = self.client_config();
        cfg.set("enable.auto.commit", "false");
        Ok(cfg.create()?)
    }

    /// A metadata consumer that keeps librdkafka's last error, to say why a cluster did not
    /// answer.
    fn diagnosed_consumer(&self) -> Result<(BaseConsumer<Diagnosis>, Diagnosis), KafkaError> {
        let mut cfg = self.client_config();
        cfg.set("enable.auto.commit", "false");
        let diagnosis = Diagnosis::default();
        Ok((cfg.create_with_context(diagnosis.clone())?, diagnosis))
    }

    /// Waits until the cluster answers a metadata request, or fails after `timeout`
    /// naming the address and the last error.
    pub async fn wait_until_reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.wait_for_brokers(1, timeout).await
    }

    /// Waits until the cluster's metadata lists at least `brokers` brokers (all nodes of a
    /// cluster registered, so topics of its replication factor can be created).
    pub async fn wait_for_brokers(
        &self,
        brokers: usize,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let start = Instant::now();
        let bootstrap = self.bootstrap_servers.clone();
        // Wait for a listening socket first: librdkafka logs every refused connection.
        loop {
            let mut last = String::new();
            for server in bootstrap.split(',').map(str::trim) {
                match tokio::net::TcpStream::connect(server).await {
                    Ok(_) => last.clear(),
                    Err(e) => last = format!("{server}: {e}"),
                }
                if last.is_empty() {
                    break;
                }
            }
            if last.is_empty() {
                break;
            }
            if start.elapsed() >= timeout {
                return Err(KafkaError::Unreachable {
                    bootstrap,
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (consumer, diagnosis) = self.diagnosed_consumer()?;
        tokio::task::spawn_blocking(move || {
            loop {
                let last = match consumer.fetch_metadata(None, Duration::from_millis(1000)) {
                    Ok(md) if md.brokers().len() >= brokers.max(1) => return Ok(()),
                    Ok(md) => format!("{} of {brokers} brokers in metadata", md.brokers().len()),
                    Err(e) => diagnosis.after(&consumer, &e),
                };
                if start.elapsed() >= timeout || diagnosis.is_final() {
                    return Err(KafkaError::Unreachable {
                        bootstrap,
                        waited: timeout,
                        last,
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))?
    }

    /// Partition counts of the named topics that exist (missing ones are absent).
    /// A cluster that does not answer is [`KafkaError::Unreachable`], with librdkafka's last
    /// word on why (refused credentials, a failed TLS handshake, a plaintext client at a TLS
    /// listener).
    pub async fn topic_partitions(&self) -> Result<BTreeMap<String, usize>, KafkaError> {
        const WAIT: Duration = Duration::from_secs(10);
        let (consumer, diagnosis) = self.diagnosed_consumer()?;
        let bootstrap = self.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let md = loop {
                match consumer.fetch_metadata(None, Duration::from_secs(1)) {
                    Ok(md) => break md,
                    Err(e) => {
                        let last = diagnosis.after(&consumer, &e);
                        if start.elapsed() >= WAIT || diagnosis.is_final() {
                            return Err(KafkaError::Unreachable {
                                bootstrap,
                                waited: start.elapsed(),
                                last,
                            });
                        }
                    }
                }
            };
            Ok(md
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| (t.name().to_string(), t.partitions().len()))
                .collect())
        })
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))?
    }

    /// How many partitions `topic` has (0 when it does not exist or the broker does not say).
    pub async fn partition_count(&self, topic: &str) -> usize {
        self.topic_partitions()
            .await
            .ok()
            .and_then(|t| t.get(topic).copied())
            .unwrap_or(0)
    }

    /// Configuration entries of a topic as the broker reports them; `None` when the
    /// broker does not answer DescribeConfigs for topics.
    pub async fn topic_configs(
        &self,
        topic: &str,
    ) -> Result<Option<BTreeMap<String, String>>, KafkaError> {
        let admin = self.admin()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
            .await?;
        match results.into_iter().next() {
            Some(Ok(resource)) => Ok(Some(
                resource
                    .entries
                    .into_iter()
                    .filter_map(|e| e.value.map(|v| (e.name, v)))
                    .collect(),
            )),
            _ => Ok(None),
        }
    }

    /// Creates topics; a topic that already exists is not an error.
    pub async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), KafkaError> {
        if topics.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let configs: Vec<Vec<(String, String)>> = topics.iter().map(TopicSpec::configs).collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&configs)
            .map(|(t, cfg)| {
                cfg.iter().fold(
                    NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication_factor),
                    ),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::CreateTopic {
                        topic,
                        code: code.to_string(),
                    });
                }
            }
        }
        // The broker answering metadata may learn of a new topic a moment after the
        // controller made it: wait (bounded) so that what comes next finds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let known = self.topic_partitions().await?;
            if topics.iter().all(|t| known.contains_key(&t.name)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                tracing::warn!("new topics are not yet in the brokers' metadata after 10 s");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl KafkaSettings {
    /// Deletes topics; a topic that does not exist is not an error.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        if topics.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        for result in admin.delete_topics(&names, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::DeleteTopic {
                        topic,
                        code: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// librdkafka's last word on a failed broker connection, which says why a cluster did not
/// answer better than the request that timed out.
#[derive(Clone, Default)]
struct Diagnosis(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Diagnosis {
    fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|l| l.clone())
    }

    /// What to say after `consumer`'s request failed with `error`: librdkafka's last word
    /// on its connections (its logs arrive with a poll, made here), else the error.
    fn after(
        &self,
        consumer: &BaseConsumer<Diagnosis>,
        error: &rdkafka::error::KafkaError,
    ) -> String {
        // A poll serves one queued event (a log line among them); this client's queue holds
        // a few per failed connection.
        for _ in 0..32 {
            let _ = consumer.poll(Duration::ZERO);
        }
        self.last().unwrap_or_else(|| error.to_string())
    }

    /// The cluster refused this client's credentials or its TLS handshake: waiting longer
    /// does not help.
    fn is_final(&self) -> bool {
        self.last().is_some_and(|l| {
            l.contains("SASL authentication error") || l.contains("SSL handshake failed")
        })
    }
}

impl rdkafka::ClientContext for Diagnosis {
    // librdkafka says why a broker connection failed in a log line of facility FAIL.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, log_message, "librdkafka");
        if (level as i32) <= (RDKafkaLogLevel::Error as i32)
            && fac == "FAIL"
            && let Ok(mut last) = self.0.lock()
        {
            // Without librdkafka's thread name: `[thrd:…]: `.
            let message = log_message
                .strip_prefix("[thrd:")
                .and_then(|m| m.split_once("]: "))
                .map_or(log_message, |(_, m)| m);
            *last = Some(message.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Diagnosis {}

/// What a topic should look like.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: Option<i64>,
    pub cleanup_policy: String,
}

impl TopicSpec {
    /// The topic-level configs we set and compare (`cleanup.policy`, `retention.ms`).
    pub fn configs(&self) -> Vec<(String, String)> {
        let mut out = vec![("cleanup.policy".to_string(), self.cleanup_policy.clone())];
        if let Some(ms) = self.retention_ms {
            out.push(("retention.ms".to_string(), ms.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_validation_names_the_key() {
        let ok = KafkaSettings::with_bootstrap("127.0.0.1:9092,localhost:9093");
        assert!(ok.validate().is_ok());
        let bad = KafkaSettings::with_bootstrap("localhost");
        let err = bad.validate().expect_err("no port");
        assert!(err.to_string().contains("kafka.bootstrap_servers"), "{err}");
    }

    #[test]
    fn properties_the_engine_relies_on_are_refused_by_name() {
        let mut s = KafkaSettings::with_bootstrap("127.0.0.1:9092");
        s.properties
            .insert("enable.auto.commit".into(), "true".into());
        let err = s.validate().expect_err("reserved");
        assert!(
            err.to_string()
                .contains("kafka.properties.enable.auto.commit"),
            "{err}"
        );
        let mut ok = KafkaSettings::with_bootstrap("127.0.0.1:9092");
        ok.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn topic_configs_include_retention_only_when_set() {
        let mut t = TopicSpec {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            retention_ms: None,
            cleanup_policy: "compact".into(),
        };
        assert_eq!(
            t.configs(),
            vec![("cleanup.policy".to_string(), "compact".to_string())]
        );
        t.retention_ms = Some(5);
        assert_eq!(t.configs().len(), 2);
    }
}
