//! Compatibility levels and checks, on apache-avro's schema resolution rules.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    /// Checks `new` against the subject's live versions (oldest first) and returns
    /// why it is incompatible; empty means compatible. Non-transitive levels look at
    /// the latest version only.
    pub fn check(self, new: &Schema, existing: &[(u32, &Schema)]) -> Vec<String> {
        if self == Level::None {
            return Vec::new();
        }
        let against: &[(u32, &Schema)] = if self.transitive() {
            existing
        } else {
            existing.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        let mut reasons = Vec::new();
        for (version, old) in against {
            if self.backward()
                && let Some(why) = can_read(old, new)
            {
                reasons.push(format!(
                    "BACKWARD: the new schema cannot read data written with version {version}: {why}"
                ));
            }
            if self.forward()
                && let Some(why) = can_read(new, old)
            {
                reasons.push(format!(
                    "FORWARD: version {version} cannot read data written with the new schema: {why}"
                ));
            }
        }
        reasons
    }
}

/// `None` when a reader with `reader` can always decode data written with `writer`.
fn can_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(
            "resolution can fail for some values (enum symbols or union branches of the writer are missing in the reader)"
                .to_string(),
        ),
        Err(e) => Some(e.to_string()),
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("schema")
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(
            "full_transitive".parse::<Level>(),
            Ok(Level::FullTransitive)
        );
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }

    #[test]
    fn backward_allows_added_optional_field_but_not_required_one() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let opt = schema(
            r#"{"name":"a","type":"string"},{"name":"b","type":["null","int"],"default":null}"#,
        );
        let req = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(Level::Backward.check(&opt, &[(1, &v1)]).is_empty());
        assert!(!Level::Backward.check(&req, &[(1, &v1)]).is_empty());
        // FORWARD: old readers ignore the new field, so a required addition is fine.
        assert!(Level::Forward.check(&req, &[(1, &v1)]).is_empty());
        assert!(!Level::Full.check(&req, &[(1, &v1)]).is_empty());
        assert!(Level::None.check(&req, &[(1, &v1)]).is_empty());
    }

    #[test]
    fn transitive_levels_look_at_every_version() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        // v3 drops b's default: readable from v2 data, not from v1 data.
        let v3 = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let history = [(1, &v1), (2, &v2)];
        assert!(Level::Backward.check(&v3, &history).is_empty());
        let reasons = Level::BackwardTransitive.check(&v3, &history);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("version 1"), "{reasons:?}");
    }
}
