//! A secured local cluster's secrets: a certificate authority and the brokers' certificate
//! (made with `openssl` on first use), one SCRAM-SHA-512 user per service plus `admin` (the
//! brokers' super user, for the CLI and the brokers themselves), and the client settings of
//! each. Everything lives in one directory (mode 0700, files 0600) and is made once: a
//! cluster formatted with these users keeps them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use verdict_runtime::kafka::{Protocol, SaslMechanism, Security};

use crate::CliError;

/// The brokers' super user, used by the CLI and by the brokers among themselves.
pub const ADMIN: &str = "admin";

#[derive(Clone, Debug)]
pub struct Secrets {
    pub dir: PathBuf,
    /// The users besides `admin`.
    pub users: Vec<String>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what}: {e}"))
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    fs::write(path, text).map_err(|e| failed(&format!("cannot write {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| failed(&format!("cannot restrict {}", path.display()), e))
}

fn openssl(args: &[&str], dir: &Path) -> Result<(), CliError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            failed(
                "cannot run openssl (install it: apt-get install openssl)",
                e,
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Secrets {
    /// The secrets in `dir`, made where missing: the CA, the brokers' certificate (for
    /// `localhost` and `127.0.0.1`), a random password per user and `admin.properties`.
    pub fn ensure(dir: &Path, users: &[&str]) -> Result<Self, CliError> {
        fs::create_dir_all(dir)
            .map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed(&format!("cannot restrict {}", dir.display()), e))?;
        let dir = std::path::absolute(dir).map_err(|e| failed("data dir", e))?;
        let secrets = Self {
            dir,
            users: users.iter().map(|u| (*u).to_string()).collect(),
        };
        secrets.ensure_certificates()?;
        for user in std::iter::once(ADMIN).chain(users.iter().copied()) {
            let file = secrets.password_file(user);
            if !file.is_file() {
                write_private(&file, &uuid::Uuid::new_v4().simple().to_string())?;
            }
        }
        write_private(
            &secrets.admin_properties(),
            &secrets.java_properties(ADMIN)?,
        )?;
        Ok(secrets)
    }

    fn ensure_certificates(&self) -> Result<(), CliError> {
        if self.keystore().is_file() && self.ca_file().is_file() {
            return Ok(());
        }
        let d = &self.dir;
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=verdict local CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            d,
        )?;
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "broker.key",
                "-out",
                "broker.csr",
            ],
            d,
        )?;
        write_private(
            &d.join("broker.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "broker.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "825",
                "-extfile",
                "broker.ext",
                "-out",
                "broker.crt",
            ],
            d,
        )?;
        // Kafka's PEM keystore: the (PKCS#8, unencrypted) key, then the chain.
        let read = |name: &str| {
            fs::read_to_string(d.join(name)).map_err(|e| failed(&format!("cannot read {name}"), e))
        };
        let keystore = format!(
            "{}{}{}",
            read("broker.key")?,
            read("broker.crt")?,
            read("ca.pem")?
        );
        write_private(&self.keystore(), &keystore)?;
        for name in ["ca.key", "broker.key"] {
            fs::set_permissions(d.join(name), fs::Permissions::from_mode(0o600))
                .map_err(|e| failed(name, e))?;
        }
        Ok(())
    }

    /// The CA certificate clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate the brokers and the schema registry present (for `localhost` and
    /// `127.0.0.1`, signed by the CA).
    pub fn server_certificate(&self) -> PathBuf {
        self.dir.join("broker.crt")
    }

    /// Its private key (PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("broker.key")
    }

    /// The brokers' PEM keystore (key and certificate chain).
    pub fn keystore(&self) -> PathBuf {
        self.dir.join("broker-keystore.pem")
    }

    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.password"))
    }

    pub fn password(&self, user: &str) -> Result<String, CliError> {
        let file = self.password_file(user);
        fs::read_to_string(&file)
            .map(|p| p.trim().to_string())
            .map_err(|e| failed(&format!("cannot read {}", file.display()), e))
    }

    /// The admin's client properties, for `verdict --command-config` and Kafka's tools.
    pub fn admin_properties(&self) -> PathBuf {
        self.dir.join("admin.properties")
    }

    /// A Java client properties file for `user` (the format of the Kafka tools'
    /// `--command-config`, which `verdict` reads too), with the schema registry's
    /// `basic.auth.user.info` as Confluent's serializers take it (the same user and password)
    /// and its CA as `schema.registry.ssl.ca.location`.
    pub fn java_properties(&self, user: &str) -> Result<String, CliError> {
        let password = self.password(user)?;
        Ok(format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\nssl.truststore.type=PEM\nssl.truststore.location={ca}\nbasic.auth.credentials.source=USER_INFO\nbasic.auth.user.info={user}:{password}\nschema.registry.ssl.ca.location={ca}\n",
            ca = self.ca_file().display()
        ))
    }

    /// The schema registry's `[auth]` for the stack: the admin with the admin role, every
    /// other user with the write role (a service registers the schemas of records it writes
    /// under record names on first use), each with its password file.
    pub fn registry_auth(&self) -> String {
        std::iter::once((ADMIN, "admin"))
            .chain(self.users.iter().map(|u| (u.as_str(), "write")))
            .map(|(user, role)| {
                format!(
                    "[[auth.users]]\nname = \"{user}\"\nrole = \"{role}\"\npassword_file = {}\n",
                    toml::Value::String(self.password_file(user).display().to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `[kafka.security]` for `user`: SCRAM-SHA-512 over TLS, the password from its file.
    pub fn security(&self, user: &str) -> Security {
        Security {
            protocol: Protocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            username: Some(user.to_string()),
            password_file: Some(self.password_file(user)),
            ca_file: Some(self.ca_file()),
            ..Security::default()
        }
    }

    /// `kafka-storage format` arguments that create every user's SCRAM credentials.
    pub fn scram_format_args(&self) -> Result<Vec<String>, CliError> {
        let mut args = Vec::new();
        for user in std::iter::once(ADMIN).chain(self.users.iter().map(String::as_str)) {
            args.push("--add-scram".to_string());
            args.push(format!(
                "SCRAM-SHA-512=[name={user},password={}]",
                self.password(user)?
            ));
        }
        Ok(args)
    }

    /// The brokers' listener settings: SASL_SSL (SCRAM-SHA-512) for clients and between
    /// brokers, SASL PLAIN for the controllers (KRaft controllers cannot use SCRAM: the
    /// credentials live in the metadata they serve), ACLs enforced with nothing allowed
    /// without one, `admin` the super user.
    pub fn server_properties(&self, port: u16, controller_port: u16) -> Result<String, CliError> {
        let pw = self.password(ADMIN)?;
        Ok(format!(
            "listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{ADMIN}\" password=\"{pw}\";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{ADMIN}\" password=\"{pw}\" user_{ADMIN}=\"{pw}\";
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN}
",
            keystore = self.keystore().display(),
            ca = self.ca_file().display(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_and_kept_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Secrets::ensure(&dir.path().join("secure"), &["fraud-detector"]).expect("made");
        let pw = s.password("fraud-detector").expect("password");
        assert_eq!(pw.len(), 32);
        let again = Secrets::ensure(&s.dir, &["fraud-detector"]).expect("kept");
        assert_eq!(again.password("fraud-detector").expect("password"), pw);
        let mode = fs::metadata(s.password_file("fraud-detector"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let keystore = fs::read_to_string(s.keystore()).expect("keystore");
        assert!(
            keystore.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 first"
        );
        assert_eq!(keystore.matches("BEGIN CERTIFICATE").count(), 2);
        let args = s.scram_format_args().expect("args");
        assert_eq!(args.len(), 4);
        assert!(args[3].contains("name=fraud-detector,"));
        let props = s.server_properties(1, 2).expect("props");
        assert!(props.contains("allow.everyone.if.no.acl.found=false\n"));
        assert!(props.contains("listeners=SASL_SSL://127.0.0.1:1,CONTROLLER://127.0.0.1:2\n"));
    }
}
