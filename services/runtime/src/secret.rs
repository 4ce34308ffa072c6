//! Passwords in settings: written inline ([`Secret`], never shown by `Debug`), or better read
//! from a file or an environment variable when they are needed ([`password`]). Used by
//! `[kafka.security]` and by the schema registry's users and clients.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A secret written inline in the settings: kept as given, never shown by `Debug`.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The password from exactly one of its three sources (`password`, `password_file`, whose
/// surrounding whitespace is ignored, and `password_env`), or the key at fault and what is
/// wrong with it. `missing` says what needs one when none is set.
pub fn password(
    inline: Option<&Secret>,
    file: Option<&Path>,
    env: Option<&str>,
    missing: &str,
) -> Result<String, (&'static str, String)> {
    match (inline, file, env) {
        (Some(p), None, None) => Ok(p.expose().to_string()),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                (
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (None, None, Some(var)) => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ("password_env", format!("the variable {var} is not set"))),
        (None, None, None) => Err((
            "password_file",
            format!("{missing} needs a password: password_file, password_env or password"),
        )),
        _ => Err((
            "password",
            "set only one of password, password_file and password_env".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_source_names_the_key_at_fault() {
        let inline = Secret::new("s3cret");
        assert_eq!(format!("{inline:?}"), "\"***\"");
        assert_eq!(
            password(Some(&inline), None, None, "SASL"),
            Ok("s3cret".into())
        );
        let dir = tempfile::tempdir().expect("in a test");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").expect("in a test");
        assert_eq!(
            password(None, Some(&file), None, "SASL"),
            Ok("from-file".into())
        );
        assert_eq!(
            password(Some(&inline), Some(&file), None, "SASL")
                .expect_err("refused")
                .0,
            "password"
        );
        let none = password(None, None, None, "A registry user").expect_err("refused");
        assert_eq!(none.0, "password_file");
        assert!(
            none.1.starts_with("A registry user needs a password"),
            "{none:?}"
        );
        let missing = dir.path().join("absent");
        assert_eq!(
            password(None, Some(&missing), None, "SASL")
                .expect_err("refused")
                .0,
            "password_file"
        );
        assert_eq!(
            password(None, None, Some("VERDICT_TEST_UNSET_PASSWORD_VAR"), "SASL")
                .expect_err("refused")
                .0,
            "password_env"
        );
    }
}
