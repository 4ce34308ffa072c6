//! fraud-detector
//!
//! transactions (+ retry topics)
//!   → validate → features → rules (amount, velocity on its state store) → score (credit-risk
//!     model; the in-process evaluator for a tenant past its hard spend cap) → decide
//!   → fraud-decisions, audit, review (reviews and low-confidence decisions)
//!   failures → transactions.retry.N / transactions.dlq

use std::process::ExitCode;

use fraud_detector::pipeline::{FraudDetector, SERVICE};
use verdict_runtime::inference::budget::Ledger;
use verdict_runtime::models::LogisticModel;
use verdict_runtime::service::{self, ServiceSpec};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings =
        match service::load_settings::<<fraud_detector::Spec as ServiceSpec>::Settings>(SERVICE) {
            Ok(s) => s,
            Err(code) => return code,
        };
    service::run(SERVICE, settings, |ctx| {
        let model = LogisticModel::load(&ctx.settings.service.model_file).map_err(|e| e.to_string())?;
        tracing::info!(model = %model.name, version = %model.version, sha256 = %model.sha256, "model loaded");
        let ledger = Ledger::open(
            &ctx.settings.service.budgets,
            ctx.route,
            &ctx.settings.kafka,
            ctx.metrics.clone(),
        )?;
        Ok(FraudDetector::new(model, ctx.settings.service.clone(), ctx.metrics, ctx.route)?
            .priced(ctx.settings.pricing.clone())
            .budgeted(ledger))
    })
    .await
}
