//! lag-monitor: polls consumer groups, judges each partition as Burrow does, exports
//! kafka-lag-exporter's metrics and serves a dashboard.

pub mod config;
pub mod dashboard;
pub mod evaluate;
pub mod monitor;

/// How the stack, the tests and the loadtest run the lag monitor.
pub struct Spec;

impl verdict_runtime::service::ServiceSpec for Spec {
    const NAME: &'static str = "lag-monitor";
    type Settings = config::LagMonitorSettings;

    fn settings(d: &verdict_runtime::service::Deployment) -> Self::Settings {
        config::LagMonitorSettings {
            kafka: d.kafka.clone(),
            http: config::Http {
                listen: d.http_listen,
            },
            ..config::LagMonitorSettings::default()
        }
    }

    fn acls(
        topology: &verdict_runtime::topology::Topology,
        principal: &str,
    ) -> Vec<verdict_runtime::acls::Acl> {
        verdict_runtime::acls::monitor_acls(topology, principal)
    }
}
