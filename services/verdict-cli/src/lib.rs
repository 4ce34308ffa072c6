//! The `verdict` command line as a library, so tests drive the same code.

pub mod broker;
pub mod dlq;
pub mod groups_cmd;
pub mod produce_consume;
pub mod records;
pub mod services;
pub mod shadow;
pub mod stack;
pub mod table;
pub mod topology_cmd;

/// A failure of a CLI command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a file, a flag, a missing install. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (unreachable broker, registry refusal…). Exit code 1.
    #[error("{0}")]
    Failed(String),
    /// `topology apply --fail-on-drift` found drift. Exit code 3.
    #[error("{0}")]
    Drift(String),
    /// The command would be unsafe now (e.g. resetting a group with members). Exit code 4.
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Drift(_) => 3,
            CliError::Refused(_) => 4,
        }
    }
}

impl From<verdict_runtime::kafka::KafkaError> for CliError {
    fn from(e: verdict_runtime::kafka::KafkaError) -> Self {
        CliError::Failed(e.to_string())
    }
}

impl From<verdict_runtime::registry::RegistryError> for CliError {
    fn from(e: verdict_runtime::registry::RegistryError) -> Self {
        CliError::Failed(e.to_string())
    }
}
