//! The `verdict` command line as a library, so tests drive the same code.

pub mod broker;
pub mod dlq;
pub mod groups_cmd;
pub mod keys;
pub mod produce_consume;
pub mod records;
pub mod secure;
pub mod services;
pub mod shadow;
pub mod stack;
pub mod table;
pub mod topology_cmd;

/// A failure of a CLI command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a file, a flag, a missing install. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (unreachable broker, registry refusal…). Exit code 1.
    #[error("{0}")]
    Failed(String),
    /// `topology apply --fail-on-drift` found drift. Exit code 3.
    #[error("{0}")]
    Drift(String),
    /// The command would be unsafe now (e.g. resetting a group with members). Exit code 4.
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Drift(_) => 3,
            CliError::Refused(_) => 4,
        }
    }
}

impl From<verdict_runtime::kafka::KafkaError> for CliError {
    fn from(e: verdict_runtime::kafka::KafkaError) -> Self {
        CliError::Failed(e.to_string())
    }
}

impl From<verdict_runtime::registry::RegistryError> for CliError {
    fn from(e: verdict_runtime::registry::RegistryError) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// How many partitions `topic` has: an unreachable broker is named as such (exit 1), a topic
/// the cluster does not know as no such topic (exit 2). The two look alike in metadata that
/// never arrived.
pub async fn partitions_of(
    kafka: &verdict_runtime::kafka::KafkaSettings,
    topic: &str,
) -> Result<i32, CliError> {
    let topics = kafka
        .topic_partitions()
        .await
        .map_err(|e| unreachable_kafka(kafka, &e))?;
    match topics.get(topic) {
        Some(n) => Ok(i32::try_from(*n).unwrap_or(i32::MAX)),
        None => Err(CliError::Usage(format!(
            "topic {topic} does not exist (`verdict kafka topics --list` shows the topics)"
        ))),
    }
}

/// The broker did not answer: said in the user's terms, with what to do. Refused
/// credentials, a failed TLS handshake and a client whose protocol the listener does not speak
/// are told apart from a broker that is down; the client's own words at debug level.
pub fn unreachable_kafka(
    kafka: &verdict_runtime::kafka::KafkaSettings,
    error: &verdict_runtime::kafka::KafkaError,
) -> CliError {
    tracing::debug!(%error, "metadata");
    let at = &kafka.bootstrap_servers;
    let last = match error {
        verdict_runtime::kafka::KafkaError::Unreachable { last, .. } => last.as_str(),
        _ => "",
    };
    let security = &kafka.security;
    CliError::Failed(if last.contains("SASL authentication error") {
        format!(
            "Kafka at {at} refused the credentials of {} ({}): {last}",
            security.username.as_deref().unwrap_or("?"),
            security.sasl_mechanism.map_or("SASL", |m| m.as_str()),
        )
    } else if last.contains("SSL handshake failed") {
        format!(
            "TLS with Kafka at {at} failed: {last} (the CA: ssl.truststore.location or ssl.ca.location in --command-config)"
        )
    } else if last.contains("security.protocol") {
        format!(
            "Kafka at {at} does not speak {} with this client: {last}. A secured cluster needs its client settings: --command-config FILE or -X security.protocol=…",
            security.protocol.as_str()
        )
    } else if answers_tcp(at) {
        // librdkafka gives no reason when a TLS listener drops a plaintext client's request.
        format!(
            "Kafka at {at} accepts connections but does not answer this {} client: is it a TLS or SASL listener? A secured cluster needs its client settings: --command-config FILE or -X security.protocol=…",
            security.protocol.as_str()
        )
    } else {
        format!("cannot reach Kafka at {at}: is the broker running? (`verdict stack status`)")
    })
}

/// Whether any of the bootstrap servers accepts a TCP connection within a second.
fn answers_tcp(bootstrap: &str) -> bool {
    use std::net::ToSocketAddrs;
    bootstrap
        .split(',')
        .filter_map(|s| s.trim().to_socket_addrs().ok())
        .flatten()
        .any(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok()
        })
}

/// What every Kafka client of a command is given besides its bootstrap servers: the Kafka
/// tools' `--command-config` file and kcat's `-X key=value` (which win over the file).
/// Confluent's schema registry client keys in them sign in to the registry.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The file, kept to hand to Kafka's own tools (`verdict kafka …`).
    pub command_config: Option<std::path::PathBuf>,
    pub security: verdict_runtime::kafka::Security,
    pub properties: std::collections::BTreeMap<String, String>,
    /// `basic.auth.user.info` (`user:password`) for the schema registry.
    pub registry_user_info: Option<verdict_runtime::secret::Secret>,
    /// `schema.registry.ssl.ca.location`: the CA an `https` registry's certificate is
    /// checked against, besides the system's.
    pub registry_ca: Option<std::path::PathBuf>,
}

/// The schema registry client's keys, as Confluent's serializers take them (with or without
/// the `schema.registry.` prefix): not Kafka client properties.
const REGISTRY_USER_INFO: &str = "basic.auth.user.info";
const REGISTRY_CREDENTIALS_SOURCE: &str = "basic.auth.credentials.source";
/// Only with the prefix: unprefixed, `ssl.ca.location` is the Kafka client's own.
const REGISTRY_CA_LOCATION: &str = "schema.registry.ssl.ca.location";

/// Takes the registry's credentials out of client properties: `basic.auth.user.info` when
/// the credentials source is `USER_INFO` (Confluent's default once user info is given).
fn take_registry_user_info(
    props: &mut std::collections::BTreeMap<String, String>,
) -> Result<Option<verdict_runtime::secret::Secret>, CliError> {
    // Both spellings leave the Kafka properties; the prefixed one wins.
    let mut take = |key: &str| {
        let prefixed = props.remove(&format!("schema.registry.{key}"));
        prefixed.or(props.remove(key))
    };
    let user_info = take(REGISTRY_USER_INFO);
    match take(REGISTRY_CREDENTIALS_SOURCE) {
        Some(source) if !source.trim().eq_ignore_ascii_case("USER_INFO") => {
            Err(CliError::Usage(format!(
                "client properties (--command-config, -X): {REGISTRY_CREDENTIALS_SOURCE}={source} is not supported; use USER_INFO with {REGISTRY_USER_INFO}=user:password"
            )))
        }
        _ => Ok(user_info.map(verdict_runtime::secret::Secret::new)),
    }
}

impl ClientOptions {
    pub fn load(
        command_config: Option<&std::path::Path>,
        overrides: &[(String, String)],
    ) -> Result<Self, CliError> {
        let mut props = match command_config {
            Some(path) => verdict_runtime::kafka::parse_java_properties(
                &std::fs::read_to_string(path).map_err(|e| {
                    CliError::Usage(format!("--command-config {}: {e}", path.display()))
                })?,
            ),
            None => Default::default(),
        };
        props.extend(overrides.iter().cloned());
        let registry_user_info = take_registry_user_info(&mut props)?;
        let registry_ca = props
            .remove(REGISTRY_CA_LOCATION)
            .map(std::path::PathBuf::from);
        let (security, properties) = verdict_runtime::kafka::Security::from_java_properties(&props)
            .map_err(|e| {
                CliError::Usage(format!("client properties (--command-config, -X): {e}"))
            })?;
        let options = Self {
            command_config: command_config.map(std::path::Path::to_path_buf),
            security,
            properties,
            registry_user_info,
            registry_ca,
        };
        options.registry(verdict_runtime::registry::DEFAULT_REGISTRY_URL)?;
        use verdict_runtime::settings::Validate;
        options
            .settings(verdict_runtime::kafka::DEFAULT_BOOTSTRAP)
            .validate()
            .map_err(|e| {
                CliError::Usage(format!("client properties (--command-config, -X): {e}"))
            })?;
        Ok(options)
    }

    /// The schema registry at `url`, signed in with these options' user info, trusting
    /// their CA.
    pub fn registry(&self, url: &str) -> Result<verdict_runtime::registry::Registry, CliError> {
        let usage = |e: verdict_runtime::registry::RegistryError| {
            CliError::Usage(format!("client properties (--command-config, -X): {e}"))
        };
        let mut registry = verdict_runtime::registry::Registry::new(url);
        if let Some(ca) = &self.registry_ca {
            registry = registry.with_ca_file(ca).map_err(usage)?;
        }
        match &self.registry_user_info {
            Some(info) => registry.with_user_info(info.expose()).map_err(usage),
            None => Ok(registry),
        }
    }

    /// Settings for the cluster at `bootstrap` with these options.
    pub fn settings(&self, bootstrap: impl Into<String>) -> verdict_runtime::kafka::KafkaSettings {
        verdict_runtime::kafka::KafkaSettings {
            properties: self.properties.clone(),
            security: self.security.clone(),
            ..verdict_runtime::kafka::KafkaSettings::with_bootstrap(bootstrap)
        }
    }
}

/// `kafka`, once the broker has answered: a command against a broker that is down stops
/// here, naming its address, before any client logs or waits.
pub async fn reach_kafka(
    kafka: verdict_runtime::kafka::KafkaSettings,
) -> Result<verdict_runtime::kafka::KafkaSettings, CliError> {
    kafka
        .topic_partitions()
        .await
        .map_err(|e| unreachable_kafka(&kafka, &e))?;
    Ok(kafka)
}

/// Checks the schema registry answers (its subject list, signed in), naming it when it does
/// not and saying when it refused the credentials.
pub async fn reach_registry(
    registry: &verdict_runtime::registry::Registry,
) -> Result<(), CliError> {
    use verdict_runtime::registry::RegistryError;
    let url = registry.url();
    let client = verdict_runtime::registry::RegistryClient::new(registry)?;
    client.subjects().await.map_err(|e| {
        tracing::debug!(error = %e, "registry");
        CliError::Failed(match e {
            RegistryError::Api { status: 401, .. } => format!(
                "the schema registry at {url} refused {}: give its user in the client properties (--command-config FILE or -X basic.auth.user.info=user:password)",
                match registry.basic_auth() {
                    Some((user, _)) => format!("the credentials of {user}"),
                    None => "a client without credentials".into(),
                }
            ),
            RegistryError::Api { status: 403, message, .. } => {
                format!("the schema registry at {url} refused this: {message}")
            }
            e if e.is_untrusted_certificate() => format!(
                "the schema registry at {url} presented a certificate this client does not trust: give its CA in the client properties (-X {REGISTRY_CA_LOCATION}=FILE): {e}"
            ),
            _ => format!(
                "cannot reach the schema registry at {url}: is it running? (`verdict stack status`)"
            ),
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn registry_keys_leave_the_kafka_properties() {
        let mut p = props(&[
            ("schema.registry.basic.auth.user.info", "admin:a:b"),
            ("basic.auth.user.info", "other:x"),
            ("basic.auth.credentials.source", "USER_INFO"),
            ("linger.ms", "5"),
        ]);
        let info = take_registry_user_info(&mut p).expect("user info");
        assert_eq!(info.as_ref().map(|s| s.expose()), Some("admin:a:b"));
        assert_eq!(p, props(&[("linger.ms", "5")]));
        let mut url = props(&[("basic.auth.credentials.source", "URL")]);
        assert!(take_registry_user_info(&mut url).is_err());
        let options = ClientOptions {
            registry_user_info: info,
            ..ClientOptions::default()
        };
        let registry = options.registry("http://127.0.0.1:8081").expect("registry");
        assert_eq!(registry.basic_auth(), Some(("admin", "a:b")));
        assert!(!format!("{options:?}").contains("a:b"), "{options:?}");
    }
}
