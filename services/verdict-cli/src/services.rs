//! Every service of the pipeline, declared once. The stack, the test harness, the loadtest
//! and the compose check derive from this list; each service's crate says what it needs
//! ([`ServiceSpec`]). Adding a service: its crate, its topology entry, its schemas, and one
//! line here.

use std::path::Path;

use verdict_runtime::acls::Acl;
use verdict_runtime::service::{Deployment, ServiceSpec};
use verdict_runtime::topology::Topology;

use crate::CliError;

/// A declared service: its binary (= topology entry), what must be ready before it, and its
/// settings for a deployment as a TOML config file.
pub struct Declared {
    pub name: &'static str,
    pub after: &'static [&'static str],
    config: fn(&Deployment) -> Result<String, String>,
    /// Its ACLs on a secured cluster ([`ServiceSpec::acls`]).
    pub acls: fn(&Topology, &str) -> Vec<Acl>,
}

impl Declared {
    pub const fn of<S: ServiceSpec>() -> Self {
        Self {
            name: S::NAME,
            after: S::AFTER,
            config: config_of::<S>,
            acls: S::acls,
        }
    }

    /// The service's settings for `deployment`, as its `--config` file.
    pub fn config(&self, deployment: &Deployment) -> Result<String, CliError> {
        (self.config)(deployment)
            .map_err(|e| CliError::Failed(format!("settings of {}: {e}", self.name)))
    }

    /// Writes the config file into `dir` and returns its path.
    pub fn write_config(
        &self,
        deployment: &Deployment,
        dir: &Path,
    ) -> Result<std::path::PathBuf, CliError> {
        let path = dir.join(format!("{}.toml", self.name));
        std::fs::write(&path, self.config(deployment)?)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
}

fn config_of<S: ServiceSpec>(d: &Deployment) -> Result<String, String> {
    toml::to_string(&S::settings(d)).map_err(|e| e.to_string())
}

/// The pipeline's services, in start order.
pub const SERVICES: &[Declared] = &[
    Declared::of::<fraud_detector::Spec>(),
    Declared::of::<model_server::Spec>(),
    Declared::of::<document_analyzer::Spec>(),
    Declared::of::<lag_monitor::Spec>(),
    Declared::of::<gateway::Spec>(),
];

/// Services that run beside the topology's rather than in it, whose crates derive their ACLs
/// from it: `verdict topology acls --service <name>` prints them.
pub const BESIDE_TOPOLOGY: &[Declared] = &[
    Declared::of::<lag_monitor::Spec>(),
    Declared::of::<gateway::Spec>(),
];

/// The declared service called `name`.
pub fn declared(name: &str) -> Option<&'static Declared> {
    SERVICES.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_starts_after_what_it_needs() {
        for (i, s) in SERVICES.iter().enumerate() {
            for dep in s.after {
                let pos = SERVICES.iter().position(|d| d.name == *dep);
                assert!(
                    pos.is_some_and(|p| p < i),
                    "{} needs {dep}, which must be declared before it",
                    s.name
                );
            }
        }
    }
}
