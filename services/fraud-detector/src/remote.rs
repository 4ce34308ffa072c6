//! Scoring with the model served over HTTP (`[service.remote_model]`): rows are
//! micro-batched into KServe v2 calls behind a timeout, retries and a circuit breaker; when
//! the server does not answer, the in-process model does, and the decision says `degraded`.

use std::sync::Arc;
use std::time::Duration;

use verdict_runtime::inference::balance;
use verdict_runtime::inference::batcher::MicroBatcher;
use verdict_runtime::inference::chain::Chain;
use verdict_runtime::inference::kserve::KServeClient;
use verdict_runtime::inference::resilience::{Guarded, ProviderSettings};
use verdict_runtime::inference::{FnProvider, InferenceError, ModelId, Provider};
use verdict_runtime::metrics::Metrics;
use verdict_runtime::models::LogisticModel;

use crate::config::RemoteModel;

/// A remote score: the probability of a bad risk, and whether the fallback gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteScore {
    pub probability: f64,
    pub degraded: bool,
}

pub struct RemoteScorer {
    batcher: MicroBatcher<Vec<f64>, RemoteScore>,
    /// The served model as decisions name it.
    pub model: ModelId,
}

/// Rows per call, and how long a call waits for more rows.
const MAX_BATCH: usize = 32;
const MAX_WAIT: Duration = Duration::from_millis(2);

impl RemoteScorer {
    pub fn new(
        settings: &RemoteModel,
        local: &LogisticModel,
        metrics: Arc<Metrics>,
    ) -> Result<Self, InferenceError> {
        let mut endpoints: Vec<Box<dyn Provider<Vec<f64>, Vec<f64>>>> = Vec::new();
        for url in std::iter::once(&settings.url).chain(&settings.replicas) {
            endpoints.push(Box::new(KServeClient::new(
                url,
                &settings.name,
                &local.version,
                &settings.output,
            )?));
        }
        let served = balance::guarded(endpoints, &settings.provider, metrics.clone())
            .ok_or_else(|| InferenceError::Unreachable("no endpoint".into()))?;
        let model = served.model().clone();
        let fallback_model = local.clone();
        let fallback = FnProvider::new(
            ModelId::new("in-process", &local.name, &local.version),
            move |row: &Vec<f64>| {
                let p = fallback_model.score_row(row).unwrap_or(f64::NAN);
                vec![1.0 - p, p]
            },
        );
        let chain = Arc::new(Chain::new(vec![
            served,
            Guarded::new(Box::new(fallback), ProviderSettings::default()).observed(metrics),
        ]));
        let batcher = MicroBatcher::new(
            MAX_BATCH,
            MAX_WAIT,
            settings.provider.max_concurrency,
            Arc::new(move |rows: Vec<Vec<f64>>| {
                let chain = chain.clone();
                Box::pin(async move {
                    let answer = chain.infer(&rows).await?;
                    answer
                        .outputs
                        .iter()
                        .map(|out| match out.as_slice() {
                            [_, p] if p.is_finite() => Ok(RemoteScore {
                                probability: *p,
                                degraded: answer.degraded,
                            }),
                            other => Err(InferenceError::Protocol(format!(
                                "expected [p_good, p_bad], got {other:?}"
                            ))),
                        })
                        .collect()
                })
            }),
        );
        Ok(Self { batcher, model })
    }

    /// The probability of a bad risk for a raw feature row.
    pub async fn score(&self, row: Vec<f64>) -> Result<RemoteScore, InferenceError> {
        self.batcher.call(row).await
    }
}
