//! API keys: looked up by their SHA-256, each with a tenant and scopes (pure).

use serde::{Deserialize, Serialize};

use crate::config::ApiKey;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Scope {
    #[serde(rename = "transactions:write")]
    TransactionsWrite,
    #[serde(rename = "documents:write")]
    DocumentsWrite,
    #[serde(rename = "jobs:read")]
    JobsRead,
    #[serde(rename = "reviews:write")]
    ReviewsWrite,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::TransactionsWrite,
        Scope::DocumentsWrite,
        Scope::JobsRead,
        Scope::ReviewsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TransactionsWrite => "transactions:write",
            Scope::DocumentsWrite => "documents:write",
            Scope::JobsRead => "jobs:read",
            Scope::ReviewsWrite => "reviews:write",
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    pub key_id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub tier: crate::config::Tier,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::ForbiddenScope {
                needed: scope.as_str().into(),
            })
        }
    }
}

/// Lower-case hex SHA-256 of a key, as stored in the settings.
pub fn key_hash(key: &str) -> String {
    verdict_runtime::models::sha256_hex(key.as_bytes())
}

/// The caller of a request from its `Authorization: Bearer <key>` (or `X-API-Key`) header.
pub fn authenticate(keys: &[ApiKey], presented: Option<&str>) -> Result<Caller, ApiError> {
    let Some(key) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
        return Err(ApiError::Unauthorized {
            reason: "missing_key",
            message: "no API key was sent".into(),
        });
    };
    let hash = key_hash(key);
    let Some(entry) = keys.iter().find(|k| k.sha256 == hash) else {
        return Err(ApiError::Unauthorized {
            reason: "unknown_key",
            message: "the API key is not valid".into(),
        });
    };
    if entry.revoked {
        return Err(ApiError::Unauthorized {
            reason: "revoked_key",
            message: "the API key was revoked; use the tenant's current key".into(),
        });
    }
    Ok(Caller {
        key_id: entry.id.clone(),
        tenant: entry.tenant.clone(),
        scopes: entry.scopes.clone(),
        tier: entry.tier,
    })
}

/// The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .or(x_api_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ApiKey> {
        vec![
            ApiKey {
                id: "a-old".into(),
                sha256: key_hash("old-secret"),
                tenant: "a".into(),
                scopes: vec![Scope::JobsRead],
                revoked: true,
                tier: crate::config::Tier::Interactive,
            },
            ApiKey {
                id: "a-new".into(),
                sha256: key_hash("new-secret"),
                tenant: "a".into(),
                scopes: vec![Scope::JobsRead, Scope::TransactionsWrite],
                revoked: false,
                tier: crate::config::Tier::Interactive,
            },
        ]
    }

    fn reason(e: ApiError) -> &'static str {
        match e {
            ApiError::Unauthorized { reason, .. } => reason,
            _ => "other",
        }
    }

    #[test]
    fn missing_unknown_and_revoked_keys_are_told_apart() {
        let k = keys();
        assert_eq!(
            reason(authenticate(&k, None).expect_err("missing")),
            "missing_key"
        );
        assert_eq!(
            reason(authenticate(&k, Some("nope")).expect_err("unknown")),
            "unknown_key"
        );
        assert_eq!(
            reason(authenticate(&k, Some("old-secret")).expect_err("revoked")),
            "revoked_key"
        );
        let c = authenticate(&k, Some("new-secret")).expect("valid");
        assert_eq!((c.tenant.as_str(), c.key_id.as_str()), ("a", "a-new"));
        assert!(c.require(Scope::TransactionsWrite).is_ok());
        assert_eq!(
            c.require(Scope::ReviewsWrite).expect_err("scope").code(),
            "forbidden_scope"
        );
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        assert_eq!(presented_key(Some("Bearer k1"), None), Some("k1"));
        assert_eq!(presented_key(None, Some("k2")), Some("k2"));
        assert_eq!(presented_key(Some("Basic x"), None), None);
        assert_eq!(key_hash("abc").len(), 64);
    }
}
