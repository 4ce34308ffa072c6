//! The one error type of record processing. Each error carries its retry hint from where it
//! happens: whether it is retryable (retry topic or dead-letter topic) and, when the failing
//! dependency said so, how long to wait before the next attempt.

use std::time::Duration;

use crate::inference::InferenceError;

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
    /// Processing the record panicked: a bug met by this input. Retrying would panic again.
    #[error("processing panicked: {0}")]
    Panic(String),
    /// The registry failed to answer (down, 5xx, 429, refused credentials); the same record
    /// may work later.
    #[error("schema registry unavailable: {0}")]
    Registry(String),
    /// A dependency failed in a way that may pass (timeout, 5xx, overload).
    #[error("transient failure in {stage}: {reason}")]
    Transient {
        stage: String,
        reason: String,
        /// The dependency's own `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
    /// Outputs could not be written (broker refused or timed out).
    #[error("cannot write outputs: {0}")]
    Output(String),
    /// The service declines the record by policy (a tenant past its hard spend cap set to
    /// refuse): dead-lettered with the reason, to be redriven when the policy allows.
    #[error("refused: {0}")]
    Refused(String),
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
            retry_after: None,
        }
    }

    /// A model call that failed in `stage` and could not fall back: a rejected input is not
    /// retryable; anything else is, after the server's `Retry-After` if it sent one.
    pub fn inference(stage: impl Into<String>, error: &InferenceError) -> Self {
        match error {
            InferenceError::Rejected(reason) => Self::invalid(stage, reason.clone()),
            other => Self::Transient {
                stage: stage.into(),
                reason: other.to_string(),
                retry_after: other.retry_after(),
            },
        }
    }

    /// Retryable errors go to the retry topics; the rest to the dead-letter topic.
    pub fn retryable(&self) -> bool {
        match self {
            ProcessError::Decode(_)
            | ProcessError::UnknownSchema(_)
            | ProcessError::Invalid { .. }
            | ProcessError::Panic(_)
            | ProcessError::Refused(_) => false,
            ProcessError::Registry(_)
            | ProcessError::Transient { .. }
            | ProcessError::Output(_) => true,
        }
    }

    /// The earliest time worth trying again, as the failing dependency said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProcessError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Every name [`Self::class`] gives.
    pub const CLASSES: [&'static str; 8] = [
        "Decode",
        "UnknownSchema",
        "Invalid",
        "Panic",
        "Registry",
        "Transient",
        "Output",
        "Refused",
    ];

    /// A stable class name for headers and metrics labels.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessError::Decode(_) => "Decode",
            ProcessError::UnknownSchema(_) => "UnknownSchema",
            ProcessError::Invalid { .. } => "Invalid",
            ProcessError::Panic(_) => "Panic",
            ProcessError::Registry(_) => "Registry",
            ProcessError::Transient { .. } => "Transient",
            ProcessError::Output(_) => "Output",
            ProcessError::Refused(_) => "Refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_listed() {
        for e in [
            ProcessError::Decode(String::new()),
            ProcessError::UnknownSchema(String::new()),
            ProcessError::invalid("a", "b"),
            ProcessError::Panic(String::new()),
            ProcessError::Registry(String::new()),
            ProcessError::transient("a", "b"),
            ProcessError::Output(String::new()),
            ProcessError::Refused(String::new()),
        ] {
            assert!(ProcessError::CLASSES.contains(&e.class()), "{}", e.class());
        }
    }

    #[test]
    fn poison_is_not_retryable_and_outages_are() {
        assert!(!ProcessError::Decode("x".into()).retryable());
        assert!(!ProcessError::UnknownSchema("id 9".into()).retryable());
        assert!(!ProcessError::invalid("amount", "negative").retryable());
        assert!(!ProcessError::Panic("index out of bounds".into()).retryable());
        assert!(ProcessError::transient("score", "timeout").retryable());
        assert!(ProcessError::Registry("down".into()).retryable());
        assert_eq!(
            ProcessError::invalid("a", "b").to_string(),
            "invalid field `a`: b"
        );
    }

    #[test]
    fn inference_errors_keep_their_retry_after() {
        let busy = InferenceError::Http {
            status: 429,
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        let e = ProcessError::inference("embed", &busy);
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let rejected =
            ProcessError::inference("embed", &InferenceError::Rejected("too long".into()));
        assert!(!rejected.retryable());
        assert_eq!(rejected.class(), "Invalid");
    }
}
