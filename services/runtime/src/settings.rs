//! Layered configuration: defaults < file < environment (`VERDICT__SECTION__KEY`).
//!
//! Every service describes its configuration as a `serde` struct with
//! `#[serde(deny_unknown_fields)]` and `Default` values; [`load`] layers the
//! optional file and the environment over it and reports any bad or unknown key
//! by its full dotted path, so a typo fails at start-up instead of being ignored.

use std::fmt;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `VERDICT__HTTP__LISTEN=127.0.0.1:9000`.
pub const ENV_PREFIX: &str = "VERDICT";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("configuration: {0}")]
    Other(String),
}

/// A configuration type that can check itself after loading (ranges, addresses,
/// combinations of keys). Errors name the key they are about.
pub trait Validate {
    fn validate(&self) -> Result<(), SettingsError>;
}

/// Loads `T`: its `Default` value, overlaid by `file` (TOML) when given, overlaid by
/// `VERDICT__…` environment variables, then validated.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    load_from_env(file, std::env::vars())
}

/// Same as [`load`] with an explicit environment, for tests.
pub fn load_from_env<T, I>(file: Option<&Path>, env: I) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let defaults = toml::to_string(&T::default())
        .map_err(|e| SettingsError::Other(format!("cannot serialise defaults: {e}")))?;
    let mut builder = Config::builder().add_source(File::from_str(&defaults, FileFormat::Toml));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(SettingsError::File {
                path: path.display().to_string(),
                message: "no such file".into(),
            });
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    let env_map = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect::<std::collections::HashMap<_, _>>();
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_map)),
    );
    let cfg = builder.build().map_err(|e| match file {
        Some(p) => SettingsError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        },
        None => SettingsError::Other(e.to_string()),
    })?;
    let value: T = serde_path_to_error::deserialize(cfg).map_err(|e| {
        let key = e.path().to_string();
        SettingsError::Key {
            key,
            message: e.into_inner().to_string(),
        }
    })?;
    value.validate()?;
    Ok(value)
}

/// A secret string (password, API key): usable, never printed.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        http: Http,
        password: Secret,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Http {
        listen: String,
        workers: u16,
    }
    impl Default for Http {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                workers: 2,
            }
        }
    }
    impl Validate for Demo {
        fn validate(&self) -> Result<(), SettingsError> {
            if self.http.workers == 0 {
                return Err(SettingsError::Key {
                    key: "http.workers".into(),
                    message: "must be at least 1".into(),
                });
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:2\"\nworkers = 3\n").expect("write");
        let d: Demo = load_from_env(None, env(&[])).expect("defaults");
        assert_eq!(d, Demo::default());
        let f: Demo = load_from_env(Some(&path), env(&[])).expect("file");
        assert_eq!(f.http.listen, "127.0.0.1:2");
        assert_eq!(f.http.workers, 3);
        let e: Demo = load_from_env(
            Some(&path),
            env(&[("VERDICT__HTTP__WORKERS", "7"), ("OTHER", "x")]),
        )
        .expect("env");
        assert_eq!(e.http.workers, 7);
        assert_eq!(e.http.listen, "127.0.0.1:2");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_from_env::<Demo, _>(None, env(&[("VERDICT__HTTP__LISTN", "x")]))
            .expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("listn"), "{text}");
    }

    #[test]
    fn bad_value_and_validation_name_the_key() {
        let err = load_from_env::<Demo, _>(None, env(&[("VERDICT__HTTP__WORKERS", "many")]))
            .expect_err("bad");
        assert!(err.to_string().contains("http.workers"), "{err}");
        let err = load_from_env::<Demo, _>(None, env(&[("VERDICT__HTTP__WORKERS", "0")]))
            .expect_err("zero");
        assert!(err.to_string().contains("http.workers"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let d = Demo {
            password: Secret::new("hunter2"),
            ..Demo::default()
        };
        assert!(!format!("{d:?}").contains("hunter2"));
    }
}
