//! `[kafka.security]`: how every Kafka client of a binary proves who it is (SASL) and checks
//! whom it talks to (TLS). The one client factory ([`super::KafkaSettings::client_config`])
//! applies it last, over everything else. The CLI reads the same settings from a Kafka tools'
//! `--command-config` properties file ([`Security::from_java_properties`]).
//!
//! Secrets are read from a file or an environment variable when a client is made; the
//! settings hold their source, and a password written inline is never shown by `Debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;
use crate::settings::SettingsError;

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Protocol::Plaintext,
            Protocol::Ssl,
            Protocol::SaslPlaintext,
            Protocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// `sasl.mechanism`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 client credentials (OIDC): `username` is the client id, the password its
    /// secret, fetched from `oauth_token_endpoint`.
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OauthBearer,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// `[kafka.security]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    pub protocol: Protocol,
    /// Required with SASL_PLAINTEXT and SASL_SSL.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user (the OAuth client id with OAUTHBEARER).
    pub username: Option<String>,
    /// The password written here; prefer `password_file` or `password_env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (surrounding whitespace is ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM file of the certificate authorities that signed the brokers' certificates (default:
    /// the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (unencrypted).
    pub key_file: Option<PathBuf>,
    /// Check that a broker's certificate names the host connected to (`https`). Turn off only
    /// for certificates without the broker's name.
    pub endpoint_identification: bool,
    /// OAUTHBEARER: the token endpoint of the identity provider.
    pub oauth_token_endpoint: Option<String>,
    /// OAUTHBEARER: the scope asked for.
    pub oauth_scope: Option<String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            protocol: Protocol::Plaintext,
            sasl_mechanism: None,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            endpoint_identification: true,
            oauth_token_endpoint: None,
            oauth_scope: None,
        }
    }
}

/// librdkafka properties that `[kafka.security]` owns once it is used.
fn is_security_property(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("sasl.") || key.starts_with("ssl.")
}

fn key_error(key: &str, message: impl Into<String>) -> SettingsError {
    SettingsError::Key {
        key: format!("kafka.security.{key}"),
        message: message.into(),
    }
}

fn readable_file(key: &str, path: &Path) -> Result<(), SettingsError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| key_error(key, format!("cannot read {}: {e}", path.display())))
}

impl Security {
    /// Whether anything differs from plain, unauthenticated connections.
    pub fn is_configured(&self) -> bool {
        *self != Self::default()
    }

    /// Checks the settings and that their files and variables can be read, naming the key.
    /// `properties` are the pass-through ones, which may not also set what this sets.
    pub fn validate(&self, properties: &BTreeMap<String, String>) -> Result<(), SettingsError> {
        if !self.is_configured() {
            return Ok(());
        }
        if let Some(key) = properties.keys().find(|k| is_security_property(k)) {
            return Err(SettingsError::Key {
                key: format!("kafka.properties.{key}"),
                message: "cannot be set with [kafka.security]: set it there".into(),
            });
        }
        let sasl_only = [
            ("sasl_mechanism", self.sasl_mechanism.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
        ];
        if !self.protocol.sasl()
            && let Some((key, _)) = sasl_only.iter().find(|(_, set)| *set)
        {
            return Err(key_error(
                key,
                format!(
                    "is used only with SASL_PLAINTEXT or SASL_SSL (protocol is {})",
                    self.protocol.as_str()
                ),
            ));
        }
        let tls_only = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        for (key, path) in tls_only {
            if let Some(path) = path {
                if !self.protocol.tls() {
                    return Err(key_error(
                        key,
                        format!(
                            "is used only with SSL or SASL_SSL (protocol is {})",
                            self.protocol.as_str()
                        ),
                    ));
                }
                readable_file(key, path)?;
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let missing = if self.cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            return Err(key_error(
                missing,
                "a client certificate needs both cert_file and key_file",
            ));
        }
        if self.protocol.sasl() {
            let mechanism = self.sasl_mechanism.ok_or_else(|| {
                key_error(
                    "sasl_mechanism",
                    "is required with SASL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
                )
            })?;
            if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(key_error("username", "is required with SASL"));
            }
            self.password_value()
                .map_err(|(key, message)| key_error(key, message))?;
            let oauth = mechanism == SaslMechanism::OauthBearer;
            if oauth && self.oauth_token_endpoint.is_none() {
                return Err(key_error(
                    "oauth_token_endpoint",
                    "is required with OAUTHBEARER",
                ));
            }
            if !oauth && (self.oauth_token_endpoint.is_some() || self.oauth_scope.is_some()) {
                return Err(key_error(
                    "oauth_token_endpoint",
                    "is used only with OAUTHBEARER",
                ));
            }
        }
        Ok(())
    }

    /// The password from exactly one of its three sources, or the key and what is wrong.
    fn password_value(&self) -> Result<String, (&'static str, String)> {
        crate::secret::password(
            self.password.as_ref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            "SASL",
        )
    }

    /// Sets the librdkafka properties of these settings on `cfg` (nothing when unconfigured,
    /// so pass-through properties keep working as before).
    pub fn apply(&self, cfg: &mut ClientConfig) {
        if !self.is_configured() {
            return;
        }
        cfg.set("security.protocol", self.protocol.as_str());
        if self.protocol.tls() {
            let algorithm = if self.endpoint_identification {
                "https"
            } else {
                "none"
            };
            cfg.set("ssl.endpoint.identification.algorithm", algorithm);
            let files = [
                ("ssl.ca.location", &self.ca_file),
                ("ssl.certificate.location", &self.cert_file),
                ("ssl.key.location", &self.key_file),
            ];
            for (name, path) in files {
                if let Some(path) = path {
                    cfg.set(name, path.display().to_string());
                }
            }
        }
        let Some(mechanism) = self.sasl_mechanism.filter(|_| self.protocol.sasl()) else {
            return;
        };
        // Checked at start-up; a file removed since then fails authentication, said here.
        let password = self.password_value().unwrap_or_else(|(key, message)| {
            tracing::error!(key = %format!("kafka.security.{key}"), "{message}");
            String::new()
        });
        let username = self.username.clone().unwrap_or_default();
        cfg.set("sasl.mechanism", mechanism.as_str());
        if mechanism == SaslMechanism::OauthBearer {
            cfg.set("sasl.oauthbearer.method", "oidc")
                .set("sasl.oauthbearer.client.id", username)
                .set("sasl.oauthbearer.client.secret", password)
                .set(
                    "sasl.oauthbearer.token.endpoint.url",
                    self.oauth_token_endpoint.clone().unwrap_or_default(),
                );
            if let Some(scope) = &self.oauth_scope {
                cfg.set("sasl.oauthbearer.scope", scope);
            }
        } else {
            cfg.set("sasl.username", username)
                .set("sasl.password", password);
        }
    }

    /// Reads a Kafka tools' client properties file (`--command-config`, read with [`parse_java_properties`]): the Java clients'
    /// names (`sasl.jaas.config`, a PEM `ssl.truststore.location`) and librdkafka's
    /// (`sasl.username`, `ssl.ca.location`) alike. What is not about security is handed back
    /// as pass-through properties.
    pub fn from_java_properties(
        props: &BTreeMap<String, String>,
    ) -> Result<(Security, BTreeMap<String, String>), String> {
        let mut s = Security::default();
        let mut rest = BTreeMap::new();
        // A store is PEM when its type says so, or, without a type (Java's default is JKS),
        // when its file is named like PEM.
        let pem = |location_key: &str| {
            let type_key = location_key.replace(".location", ".type");
            match props.get(&type_key) {
                Some(t) => t.eq_ignore_ascii_case("PEM"),
                None => props
                    .get(location_key)
                    .is_some_and(|l| [".pem", ".crt", ".cer"].iter().any(|ext| l.ends_with(ext))),
            }
        };
        for (key, value) in props {
            match key.as_str() {
                "security.protocol" => {
                    s.protocol = Protocol::parse(value)
                        .ok_or_else(|| format!("security.protocol: unknown protocol `{value}`"))?;
                }
                "sasl.mechanism" | "sasl.mechanisms" => {
                    s.sasl_mechanism = Some(
                        SaslMechanism::parse(value)
                            .ok_or_else(|| format!("{key}: unsupported mechanism `{value}`"))?,
                    );
                }
                "sasl.jaas.config" => {
                    s.username = jaas_option(value, "username").or(s.username.take());
                    if let Some(p) = jaas_option(value, "password") {
                        s.password = Some(Secret::new(p));
                    }
                }
                "sasl.username" => s.username = Some(value.clone()),
                "sasl.password" => s.password = Some(Secret::new(value.clone())),
                "ssl.ca.location" => s.ca_file = Some(PathBuf::from(value)),
                "ssl.truststore.location" if pem(key) => {
                    s.ca_file = Some(PathBuf::from(value));
                }
                "ssl.truststore.location" | "ssl.keystore.location" if !pem(key) => {
                    return Err(format!(
                        "{key}: librdkafka reads PEM files only; export it (`keytool -exportcert -rfc` for a truststore) and set {}.type=PEM",
                        key.trim_end_matches(".location")
                    ));
                }
                "ssl.keystore.location" => {
                    // A PEM keystore holds the key and its certificate chain in one file.
                    s.cert_file = Some(PathBuf::from(value));
                    s.key_file = Some(PathBuf::from(value));
                }
                "ssl.certificate.location" => s.cert_file = Some(PathBuf::from(value)),
                "ssl.key.location" => s.key_file = Some(PathBuf::from(value)),
                "ssl.endpoint.identification.algorithm" => {
                    s.endpoint_identification = !value.trim().is_empty() && value != "none";
                }
                "sasl.oauthbearer.token.endpoint.url" => {
                    s.oauth_token_endpoint = Some(value.clone());
                }
                "sasl.oauthbearer.scope" => s.oauth_scope = Some(value.clone()),
                "sasl.oauthbearer.client.id" => s.username = Some(value.clone()),
                "sasl.oauthbearer.client.secret" => s.password = Some(Secret::new(value.clone())),
                // Java-only settings with nothing to say to librdkafka.
                "ssl.truststore.type"
                | "ssl.keystore.type"
                | "ssl.truststore.password"
                | "ssl.keystore.password"
                | "ssl.key.password"
                | "sasl.login.callback.handler.class"
                | "sasl.oauthbearer.method" => {}
                _ => {
                    rest.insert(key.clone(), value.clone());
                }
            }
        }
        Ok((s, rest))
    }
}

/// `key=value` lines of a Java properties file (`#`/`!` comments, `:` separators and
/// backslash line continuations; the escapes the Kafka tools' files use).
pub fn parse_java_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if logical.is_empty() && (line.starts_with('#') || line.starts_with('!')) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            continue;
        }
        logical.push_str(line);
        let entry = std::mem::take(&mut logical);
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let split = entry.find(['=', ':']).unwrap_or(entry.len());
        let (key, value) = entry.split_at(split);
        let value = value.get(1..).unwrap_or("").trim();
        out.insert(key.trim().to_string(), value.to_string());
    }
    out
}

/// `name="value"` from a JAAS login module line (`… required username="u" password="p";`).
fn jaas_option(jaas: &str, name: &str) -> Option<String> {
    let pattern = format!("{name}=\"");
    jaas.match_indices(&pattern).find_map(|(at, _)| {
        let starts_word = jaas
            .get(..at)
            .is_some_and(|before| before.chars().next_back().is_none_or(char::is_whitespace));
        let value = jaas.get(at + pattern.len()..)?;
        starts_word.then(|| value.split('"').next().unwrap_or_default().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram() -> Security {
        Security {
            protocol: Protocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            username: Some("fraud".into()),
            password: Some(Secret::new("s3cret")),
            ..Security::default()
        }
    }

    fn get(cfg: &ClientConfig, key: &str) -> Option<String> {
        cfg.get(key).map(str::to_string)
    }

    #[test]
    fn unconfigured_security_sets_nothing() {
        let mut cfg = ClientConfig::new();
        Security::default().apply(&mut cfg);
        assert_eq!(cfg.config_map().len(), 0);
        assert!(Security::default().validate(&BTreeMap::new()).is_ok());
    }

    #[test]
    fn scram_over_tls_becomes_librdkafka_properties() {
        let mut cfg = ClientConfig::new();
        scram().apply(&mut cfg);
        assert_eq!(get(&cfg, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(
            get(&cfg, "sasl.mechanism").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(get(&cfg, "sasl.username").as_deref(), Some("fraud"));
        assert_eq!(get(&cfg, "sasl.password").as_deref(), Some("s3cret"));
        assert_eq!(
            get(&cfg, "ssl.endpoint.identification.algorithm").as_deref(),
            Some("https")
        );
    }

    #[test]
    fn a_password_is_never_in_debug_output() {
        let s = scram();
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn a_password_comes_from_a_file_or_a_variable() {
        let dir = std::env::temp_dir().join(format!("verdict-sec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").expect("write");
        let s = Security {
            password: None,
            password_file: Some(file.clone()),
            ..scram()
        };
        assert!(s.validate(&BTreeMap::new()).is_ok());
        let mut cfg = ClientConfig::new();
        s.apply(&mut cfg);
        assert_eq!(get(&cfg, "sasl.password").as_deref(), Some("from-file"));
        let missing = Security {
            password_file: Some(dir.join("nope")),
            ..s.clone()
        };
        let err = missing.validate(&BTreeMap::new()).expect_err("unreadable");
        assert!(
            err.to_string().contains("kafka.security.password_file"),
            "{err}"
        );
        let env = Security {
            password: None,
            password_env: Some("VERDICT_TEST_SURELY_UNSET_PASSWORD".into()),
            ..scram()
        };
        let err = env.validate(&BTreeMap::new()).expect_err("unset");
        assert!(
            err.to_string().contains("kafka.security.password_env"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn mistakes_are_refused_naming_the_key() {
        let cases: Vec<(Security, &str)> = vec![
            (
                Security {
                    sasl_mechanism: None,
                    ..scram()
                },
                "kafka.security.sasl_mechanism",
            ),
            (
                Security {
                    username: None,
                    ..scram()
                },
                "kafka.security.username",
            ),
            (
                Security {
                    password: None,
                    ..scram()
                },
                "kafka.security.password_file",
            ),
            (
                Security {
                    password_env: Some("X".into()),
                    ..scram()
                },
                "kafka.security.password",
            ),
            (
                Security {
                    protocol: Protocol::Ssl,
                    ..scram()
                },
                "kafka.security.sasl_mechanism",
            ),
            (
                Security {
                    protocol: Protocol::SaslPlaintext,
                    ca_file: Some("/etc/hostname".into()),
                    ..scram()
                },
                "kafka.security.ca_file",
            ),
            (
                Security {
                    cert_file: Some("/etc/hostname".into()),
                    ..scram()
                },
                "kafka.security.key_file",
            ),
        ];
        for (s, key) in cases {
            let err = s.validate(&BTreeMap::new()).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let mut props = BTreeMap::new();
        props.insert("sasl.username".to_string(), "x".to_string());
        let err = scram().validate(&props).expect_err("both");
        assert!(
            err.to_string().contains("kafka.properties.sasl.username"),
            "{err}"
        );
    }

    #[test]
    fn a_java_client_properties_file_is_read() {
        let text = r#"
# written for kafka-topics --command-config
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
    username="admin" password="admin-secret";
ssl.truststore.type=PEM
ssl.truststore.location=/data/ca.pem
ssl.endpoint.identification.algorithm=
client.id=tools
"#;
        let (s, rest) =
            Security::from_java_properties(&parse_java_properties(text)).expect("parsed");
        assert_eq!(s.protocol, Protocol::SaslSsl);
        assert_eq!(s.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(s.username.as_deref(), Some("admin"));
        assert_eq!(
            s.password.as_ref().map(Secret::expose),
            Some("admin-secret")
        );
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/data/ca.pem")));
        assert!(!s.endpoint_identification);
        assert_eq!(rest.get("client.id").map(String::as_str), Some("tools"));
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn a_jks_truststore_is_refused_with_the_way_out() {
        let text = "security.protocol=SSL\nssl.truststore.location=/x.jks\n";
        let err = Security::from_java_properties(&parse_java_properties(text)).expect_err("jks");
        assert!(err.contains("PEM"), "{err}");
    }
}
