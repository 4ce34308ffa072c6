//! fraud-detector: turns `transactions` into fraud decisions with a credit-risk
//! model trained offline (models/fraud) and rules.

pub mod config;
pub mod pipeline;
pub mod remote;
pub mod rules;

use verdict_runtime::service::{Deployment, ServiceSettings, ServiceSpec};

/// The fraud-detector as the stack, the test harness and the loadtest run it.
pub struct Spec;

impl ServiceSpec for Spec {
    const NAME: &'static str = pipeline::SERVICE;
    type Settings = ServiceSettings<config::FraudSettings>;

    fn settings(d: &Deployment) -> Self::Settings {
        let mut s = Self::Settings::for_deployment(d);
        s.service.model_file = d.root.join("models/fraud/model.json");
        s
    }
}
