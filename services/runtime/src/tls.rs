//! HTTPS for verdict's HTTP servers (the schema registry, the gateway's API): a PEM
//! certificate chain and its key, served with rustls (the `ring` provider, no process-wide
//! default), HTTP/2 and HTTP/1.1 offered by ALPN. Without both files a port speaks plain HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;

/// `[http.tls]`: the certificate a server presents.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// PEM certificates: the server's first, then any intermediates.
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key_file: Option<PathBuf>,
}

/// A loaded server certificate, ready to serve with.
#[derive(Clone)]
pub struct Acceptor(RustlsConfig);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor(rustls)")
    }
}

impl Acceptor {
    pub(crate) fn config(&self) -> RustlsConfig {
        self.0.clone()
    }
}

impl ServerTls {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Reads and checks the certificate and key; `None` when TLS is off. Errors name the key
    /// under `section` (`http.tls`).
    pub fn load(&self, section: &str) -> Result<Option<Acceptor>, SettingsError> {
        let key = |name: &str, message: String| SettingsError::Key {
            key: format!("{section}.{name}"),
            message,
        };
        let (cert_file, key_file) = match (&self.cert_file, &self.key_file) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => return Err(key("key_file", "is needed with cert_file".into())),
            (None, Some(_)) => return Err(key("cert_file", "is needed with key_file".into())),
        };
        let read = |name: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| key(name, format!("cannot read {}: {e}", path.display())))
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("cert_file", cert_file)?)
                .collect::<Result<_, _>>()
                .map_err(|e| key("cert_file", format!("{}: {e}", cert_file.display())))?;
        if certs.is_empty() {
            return Err(key(
                "cert_file",
                format!("{} holds no PEM certificate", cert_file.display()),
            ));
        }
        let private = PrivateKeyDer::from_pem_slice(&read("key_file", key_file)?).map_err(|e| {
            key(
                "key_file",
                format!(
                    "{} holds no usable PEM private key: {e}",
                    key_file.display()
                ),
            )
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| key("cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            key(
                "key_file",
                format!("does not go with {} ({e})", cert_file.display()),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Acceptor(RustlsConfig::from_config(Arc::new(config)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_files_means_plain_http_and_half_a_pair_is_refused_naming_the_key() {
        assert!(
            ServerTls::default()
                .load("http.tls")
                .expect("off")
                .is_none()
        );
        let only_cert = ServerTls {
            cert_file: Some("cert.pem".into()),
            key_file: None,
        };
        match only_cert.load("http.tls") {
            Err(SettingsError::Key { key, .. }) => assert_eq!(key, "http.tls.key_file"),
            other => panic!("expected http.tls.key_file, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_or_wrong_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let tls = |cert: &Path, key: &Path| ServerTls {
            cert_file: Some(cert.into()),
            key_file: Some(key.into()),
        };
        let missing = dir.path().join("missing.pem");
        for (settings, want) in [
            (tls(&missing, &not_pem), "http.tls.cert_file"),
            (tls(&not_pem, &not_pem), "http.tls.cert_file"),
        ] {
            match settings.load("http.tls") {
                Err(SettingsError::Key { key, message }) => {
                    assert_eq!(key, want, "{message}");
                    assert!(message.contains(".pem"), "{message}");
                }
                other => panic!("expected {want}, got {other:?}"),
            }
        }
    }
}
