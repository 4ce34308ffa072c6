//! Who may use the registry: HTTP basic auth against the users of `[auth]`, each with a role
//! (`read` < `write` < `admin`). Without users the API is open, as before. A request without
//! valid credentials is 401 (with `WWW-Authenticate`), one whose user's role is too low 403,
//! both in the API's error format. `GET /`, which says nothing but that the registry is up,
//! stays open to anyone (liveness probes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use verdict_runtime::secret::{Secret, password};
use verdict_runtime::settings::SettingsError;

use crate::error::ApiError;

/// What a user may do; each role may do what the ones below it may.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read schemas, subjects and configs; look schemas up and test their compatibility.
    Read,
    /// Also register and delete schemas.
    Write,
    /// Also change compatibility configs and the mode.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// `[auth]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Who may sign in (`[[auth.users]]`); none leaves the API open to anyone who reaches it.
    pub users: Vec<UserSettings>,
}

/// One `[[auth.users]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub name: String,
    pub role: Role,
    /// The password written here; prefer `password_file` or `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (surrounding whitespace is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// The users a running registry signs in: names to the SHA-256 of their password (as the
/// gateway keeps its API keys) and role.
#[derive(Default)]
pub struct Users(HashMap<String, (String, Role)>);

impl Users {
    /// Reads every user's password, naming the key at fault.
    pub fn new(settings: &AuthSettings) -> Result<Self, SettingsError> {
        let mut users = HashMap::new();
        for (i, u) in settings.users.iter().enumerate() {
            let key = |k: &str, message: String| SettingsError::Key {
                key: format!("auth.users[{i}].{k}"),
                message,
            };
            if u.name.trim().is_empty() || u.name.contains(':') {
                return Err(key("name", "must be a user name without ':'".into()));
            }
            let secret = password(
                u.password.as_ref(),
                u.password_file.as_deref(),
                u.password_env.as_deref(),
                "a registry user",
            )
            .map_err(|(k, message)| key(k, message))?;
            if secret.is_empty() {
                return Err(key("password", "must not be empty".into()));
            }
            if users
                .insert(u.name.clone(), (digest(&secret), u.role))
                .is_some()
            {
                return Err(key("name", format!("{} is listed twice", u.name)));
            }
        }
        Ok(Self(users))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No users: the API is open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The user `Authorization: Basic …` names and its role, when its password is right.
    fn sign_in(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        let encoded = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (name, given) = decoded.split_once(':')?;
        let (expected, role) = self.0.get(name)?;
        (digest(given) == *expected).then(|| (name.to_string(), *role))
    }
}

fn digest(password: &str) -> String {
    verdict_runtime::models::sha256_hex(password.as_bytes())
}

/// The role a request needs; `None` for the liveness probe, open to anyone.
pub fn needed(method: &Method, path: &str) -> Option<Role> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match (method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => return None,
        (&Method::GET | &Method::HEAD, _) => Role::Read,
        (_, ["config", ..] | ["mode", ..]) => Role::Admin,
        // Looking a schema up and testing compatibility write nothing.
        (&Method::POST, ["subjects", _] | ["compatibility", ..]) => Role::Read,
        _ => Role::Write,
    })
}

/// The middleware: lets a request through when its user may make it.
pub async fn authorize(State(users): State<Arc<Users>>, request: Request, next: Next) -> Response {
    let needs = match needed(request.method(), request.uri().path()) {
        Some(role) if !users.is_empty() => role,
        _ => return next.run(request).await,
    };
    match users.sign_in(request.headers()) {
        None => ApiError::Unauthorized.into_response(),
        Some((user, role)) if role < needs => ApiError::Forbidden { user, needs }.into_response(),
        Some(_) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::new(&AuthSettings {
            users: vec![
                UserSettings {
                    name: "reader".into(),
                    role: Role::Read,
                    password: Some(Secret::new("r-pw")),
                    password_file: None,
                    password_env: None,
                },
                UserSettings {
                    name: "admin".into(),
                    role: Role::Admin,
                    password: Some(Secret::new("a:pw")),
                    password_file: None,
                    password_env: None,
                },
            ],
        })
        .expect("in a test")
    }

    fn basic(user_info: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_info)
        );
        h.insert(header::AUTHORIZATION, value.parse().expect("in a test"));
        h
    }

    #[test]
    fn only_a_right_password_signs_in() {
        let users = users();
        assert_eq!(
            users.sign_in(&basic("reader:r-pw")),
            Some(("reader".into(), Role::Read))
        );
        // The password may hold a colon; the name may not.
        assert_eq!(
            users.sign_in(&basic("admin:a:pw")),
            Some(("admin".into(), Role::Admin))
        );
        assert_eq!(users.sign_in(&basic("reader:wrong")), None);
        assert_eq!(users.sign_in(&basic("nobody:r-pw")), None);
        assert_eq!(users.sign_in(&basic("reader")), None);
        assert_eq!(users.sign_in(&HeaderMap::new()), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            "Bearer x".parse().expect("in a test"),
        );
        assert_eq!(users.sign_in(&bearer), None);
    }

    #[test]
    fn requests_need_the_role_of_what_they_change() {
        let post = &Method::POST;
        assert_eq!(needed(&Method::GET, "/"), None);
        assert_eq!(needed(&Method::GET, "/subjects"), Some(Role::Read));
        assert_eq!(needed(&Method::GET, "/config"), Some(Role::Read));
        assert_eq!(needed(post, "/subjects/t-value"), Some(Role::Read));
        assert_eq!(
            needed(post, "/compatibility/subjects/t-value/versions/latest"),
            Some(Role::Read)
        );
        assert_eq!(
            needed(post, "/subjects/t-value/versions"),
            Some(Role::Write)
        );
        assert_eq!(
            needed(&Method::DELETE, "/subjects/t-value"),
            Some(Role::Write)
        );
        assert_eq!(needed(post, "/"), Some(Role::Write));
        assert_eq!(needed(&Method::PUT, "/config/t-value"), Some(Role::Admin));
        assert_eq!(needed(&Method::DELETE, "/config"), Some(Role::Admin));
        assert_eq!(needed(&Method::PUT, "/mode"), Some(Role::Admin));
    }

    #[test]
    fn bad_users_are_refused_naming_the_key() {
        let user = |name: &str, password: Option<&str>| UserSettings {
            name: name.into(),
            role: Role::Read,
            password: password.map(Secret::new),
            password_file: None,
            password_env: None,
        };
        let err = |users: Vec<UserSettings>| {
            Users::new(&AuthSettings { users })
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(vec![user("a:b", Some("x"))]).contains("auth.users[0].name"));
        assert!(err(vec![user("a", None)]).contains("auth.users[0].password_file"));
        assert!(err(vec![user("a", Some(""))]).contains("auth.users[0].password"));
        let twice = err(vec![user("a", Some("x")), user("a", Some("y"))]);
        assert!(twice.contains("auth.users[1].name"), "{twice}");
        assert!(
            Users::new(&AuthSettings::default())
                .expect("in a test")
                .is_empty()
        );
    }
}
