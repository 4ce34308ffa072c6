//! `verdict keys new`: a gateway API key minted here and shown once, with the settings lines
//! that admit it. The gateway keeps only the key's SHA-256, so the key cannot be shown again.

use base64::Engine as _;
use gateway::auth::{Scope, key_hash};
use gateway::config::{ApiKey, Tier};
use rand::TryRngCore as _;
use serde::Serialize;

use crate::CliError;

/// What minting gave: the key (shown once) and its `[[gateway.keys]]` entry.
pub struct Minted {
    pub key: String,
    pub entry: ApiKey,
}

/// A new key for `tenant`: `vk_` and 32 bytes from the operating system's random source
/// (base64url). `id` names it in logs and metrics; by default the tenant and the start of
/// its hash.
pub fn mint(
    tenant: &str,
    scopes: Vec<Scope>,
    id: Option<String>,
    tier: Tier,
) -> Result<Minted, CliError> {
    if tenant.trim().is_empty() {
        return Err(CliError::Usage("--tenant must not be empty".into()));
    }
    if scopes.is_empty() {
        return Err(CliError::Usage(format!(
            "--scopes needs at least one of {}",
            Scope::ALL.map(Scope::as_str).join(", ")
        )));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CliError::Failed(format!("no randomness from the operating system: {e}")))?;
    let key = format!(
        "vk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let sha256 = key_hash(&key);
    let id = id.unwrap_or_else(|| format!("{tenant}-{}", &sha256[..8]));
    Ok(Minted {
        key,
        entry: ApiKey {
            id,
            sha256,
            tenant: tenant.to_string(),
            scopes,
            revoked: false,
            tier,
        },
    })
}

impl Minted {
    /// The `[[gateway.keys]]` table to add to the gateway's settings.
    pub fn settings(&self) -> Result<String, CliError> {
        #[derive(Serialize)]
        struct Keys<'a> {
            keys: [&'a ApiKey; 1],
        }
        #[derive(Serialize)]
        struct Settings<'a> {
            gateway: Keys<'a>,
        }
        toml::to_string(&Settings {
            gateway: Keys {
                keys: [&self.entry],
            },
        })
        .map_err(|e| CliError::Failed(format!("the settings lines: {e}")))
    }
}

/// `--scopes transactions:write,jobs:read`.
pub fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::ALL
        .into_iter()
        .find(|scope| scope.as_str() == s.trim())
        .ok_or_else(|| {
            format!(
                "unknown scope {s}: one of {}",
                Scope::ALL.map(Scope::as_str).join(", ")
            )
        })
}

/// `--tier interactive|batch`.
pub fn parse_tier(s: &str) -> Result<Tier, String> {
    match s {
        "interactive" => Ok(Tier::Interactive),
        "batch" => Ok(Tier::Batch),
        _ => Err(format!("unknown tier {s}: interactive or batch")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_is_random_and_its_entry_holds_only_its_hash() {
        let a = mint("acme", vec![Scope::JobsRead], None, Tier::Interactive).expect("minted");
        let b = mint("acme", vec![Scope::JobsRead], None, Tier::Interactive).expect("minted");
        assert_ne!(a.key, b.key);
        assert!(
            a.key.starts_with("vk_") && a.key.len() == 3 + 43,
            "{}",
            a.key
        );
        let settings = a.settings().expect("settings");
        assert!(!settings.contains(&a.key), "{settings}");
        let parsed: gateway::config::GatewaySettings =
            toml::from_str(&settings).expect("the gateway reads them");
        assert_eq!(parsed.gateway.keys, vec![a.entry.clone()]);
        assert_eq!(parsed.gateway.keys[0].sha256, key_hash(&a.key));
        assert!(parsed.gateway.keys[0].id.starts_with("acme-"));
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag() {
        assert!(parse_scope("jobs:write").is_err_and(|e| e.contains("jobs:read")));
        assert_eq!(parse_scope("reviews:write"), Ok(Scope::ReviewsWrite));
        assert!(parse_tier("gold").is_err());
        assert!(matches!(
            mint("acme", vec![], None, Tier::Batch),
            Err(CliError::Usage(m)) if m.contains("--scopes")
        ));
        assert!(matches!(
            mint(" ", vec![Scope::JobsRead], None, Tier::Batch),
            Err(CliError::Usage(m)) if m.contains("--tenant")
        ));
    }
}
