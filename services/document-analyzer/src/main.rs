//! document-analyzer
//!
//! document-uploads (+ retry topics)
//!   → validate (size, token budget) → redact (e-mail, phone, card, IBAN)
//!   → embed (model-server, OpenAI API; cached, coalesced, micro-batched, circuit-broken;
//!     skipped for a tenant past its hard spend cap, or the record refused)
//!   → classify (zero-shot category and urgency; keyword rules when degraded) → decide
//!   → document-decisions, audit, review
//!   failures → document-uploads.retry.N / document-uploads.dlq

use std::process::ExitCode;

use document_analyzer::pipeline::{DocumentAnalyzer, SERVICE};
use verdict_runtime::engine::DecisionTopics;
use verdict_runtime::inference::budget::Ledger;
use verdict_runtime::service::{self, ServiceSpec};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings =
        match service::load_settings::<<document_analyzer::Spec as ServiceSpec>::Settings>(SERVICE)
        {
            Ok(s) => s,
            Err(code) => return code,
        };
    service::run(SERVICE, settings, |ctx| {
        let topics =
            DecisionTopics::from_route(ctx.route, document_analyzer::pipeline::review_schema())?;
        // Without the model server it still decides (by rules, degraded): not required.
        let url = ctx.settings.service.embeddings_url.trim_end_matches('/');
        ctx.health
            .depends_on("model server", &format!("{url}/readyz"), false);
        let ledger = Ledger::open(
            &ctx.settings.service.budgets,
            ctx.route,
            &ctx.settings.kafka,
            ctx.metrics.clone(),
        )?;
        Ok(
            DocumentAnalyzer::new(ctx.settings.service.clone(), ctx.metrics, topics)?
                .priced(ctx.settings.pricing.clone())
                .budgeted(ledger),
        )
    })
    .await
}
