//! A provider chain: primary → secondary → … → rules. The first provider that
//! answers wins; an answer from anything but the first is `degraded`.

use super::resilience::Guarded;
use super::{InferenceError, ModelId};

pub struct Chain<I, O> {
    providers: Vec<Guarded<I, O>>,
}

/// Outputs plus who produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<O> {
    pub outputs: Vec<O>,
    pub model: ModelId,
    pub degraded: bool,
    /// Why earlier providers did not answer.
    pub fallbacks: Vec<String>,
}

impl<I: Sync, O: Send> Chain<I, O> {
    pub fn new(providers: Vec<Guarded<I, O>>) -> Self {
        assert!(!providers.is_empty(), "a chain needs at least one provider");
        Self { providers }
    }

    pub fn providers(&self) -> &[Guarded<I, O>] {
        &self.providers
    }

    pub async fn infer(&self, batch: &[I]) -> Result<Answer<O>, InferenceError> {
        let mut fallbacks = Vec::new();
        let mut last = None;
        for (i, p) in self.providers.iter().enumerate() {
            match p.call(batch).await {
                Ok(outputs) => {
                    if i > 0 {
                        tracing::warn!(answered = %p.model(), ?fallbacks, "degraded: a fallback provider answered");
                    }
                    return Ok(Answer {
                        outputs,
                        model: p.model().clone(),
                        degraded: i > 0,
                        fallbacks,
                    });
                }
                Err(e) => {
                    fallbacks.push(format!("{}: {e}", p.model()));
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| InferenceError::Unreachable("no provider".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::resilience::ProviderSettings;
    use crate::inference::{BoxFuture, FnProvider, Provider};

    struct Down(ModelId);
    impl Provider<f64, f64> for Down {
        fn model(&self) -> &ModelId {
            &self.0
        }
        fn infer<'a>(&'a self, _b: &'a [f64]) -> BoxFuture<'a, Result<Vec<f64>, InferenceError>> {
            Box::pin(async { Err(InferenceError::Unreachable("connection refused".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn falls_back_and_says_so() {
        let fast = ProviderSettings {
            max_retries: 0,
            ..ProviderSettings::default()
        };
        let chain = Chain::new(vec![
            Guarded::new(
                Box::new(Down(ModelId::new("kserve", "fraud", "1"))),
                fast.clone(),
            ),
            Guarded::new(
                Box::new(FnProvider::new(
                    ModelId::new("rules", "amount", "1"),
                    |x: &f64| if *x > 100.0 { 0.9 } else { 0.1 },
                )),
                fast,
            ),
        ]);
        let a = chain.infer(&[50.0, 500.0]).await.expect("rules answer");
        assert_eq!(a.outputs, vec![0.1, 0.9]);
        assert!(a.degraded);
        assert_eq!(a.model.provider, "rules");
        assert!(a.fallbacks[0].contains("connection refused"));
    }
}
