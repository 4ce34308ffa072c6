//! The one error type of record processing. Each error says whether it is
//! retryable: that decides retry topic or dead-letter topic.

/// Why a record could not be processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// The bytes are not Avro in the Confluent wire format, or do not decode.
    #[error("cannot decode record: {0}")]
    Decode(String),
    /// The record names a schema id the registry does not know.
    #[error("unknown schema: {0}")]
    UnknownSchema(String),
    /// A field holds a value the service cannot accept.
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    /// The registry could not be reached; the same record may work later.
    #[error("schema registry unavailable: {0}")]
    Registry(String),
    /// A dependency failed in a way that may pass (timeout, 5xx, overload).
    #[error("transient failure in {stage}: {reason}")]
    Transient { stage: String, reason: String },
    /// Outputs could not be written (broker refused or timed out).
    #[error("cannot write outputs: {0}")]
    Output(String),
}

impl ProcessError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn transient(stage: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Transient {
            stage: stage.into(),
            reason: reason.into(),
        }
    }

    /// Retryable errors go to the retry topics; the rest to the dead-letter topic.
    pub fn retryable(&self) -> bool {
        match self {
            ProcessError::Decode(_)
            | ProcessError::UnknownSchema(_)
            | ProcessError::Invalid { .. } => false,
            ProcessError::Registry(_)
            | ProcessError::Transient { .. }
            | ProcessError::Output(_) => true,
        }
    }

    /// A stable class name for headers and metrics labels.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessError::Decode(_) => "Decode",
            ProcessError::UnknownSchema(_) => "UnknownSchema",
            ProcessError::Invalid { .. } => "Invalid",
            ProcessError::Registry(_) => "Registry",
            ProcessError::Transient { .. } => "Transient",
            ProcessError::Output(_) => "Output",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_is_not_retryable_and_outages_are() {
        assert!(!ProcessError::Decode("x".into()).retryable());
        assert!(!ProcessError::UnknownSchema("id 9".into()).retryable());
        assert!(!ProcessError::invalid("amount", "negative").retryable());
        assert!(ProcessError::transient("score", "timeout").retryable());
        assert!(ProcessError::Registry("down".into()).retryable());
        assert_eq!(
            ProcessError::invalid("a", "b").to_string(),
            "invalid field `a`: b"
        );
    }
}
