//! The document pipeline: validate → redact → embed → classify → decide.
//! Each document yields a decision on `document-decisions` (redacted text only),
//! an audit record on `audit` (input hash, never raw PII), and a copy on `review`
//! when a person should look at it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use verdict_runtime::audit::{Audit, DecisionOutput};
use verdict_runtime::engine::{DecisionTopics, Incoming, Outgoing, Processor};
use verdict_runtime::error::ProcessError;
use verdict_runtime::inference::balance;
use verdict_runtime::inference::batcher::MicroBatcher;
use verdict_runtime::inference::budget::{self, Ledger};
use verdict_runtime::inference::cache::{Coalescer, ResponseCache, cache_key};
use verdict_runtime::inference::chain::Chain;
use verdict_runtime::inference::head::LinearHead;
use verdict_runtime::inference::openai::OpenAiEmbeddings;
use verdict_runtime::inference::pricing::{PriceTable, Usage};
use verdict_runtime::inference::zero_shot::{
    ClassifierSettings, Examples, ZeroShot, default_classifiers,
};
use verdict_runtime::inference::{InferenceError, ModelId, Provider};
use verdict_runtime::metrics::{Metrics, StageTiming, StageTimings};
use verdict_runtime::now_ms;
use verdict_runtime::serde::ValueSchema;
use verdict_runtime::telemetry;

use crate::config::{CategorySource, DocumentSettings};
use crate::pii::{Redacted, redact};

pub const SERVICE: &str = "document-analyzer";
const DECISION_SCHEMA: &str = include_str!("../../../schemas/document_decision.avsc");

/// A document event as the service reads it (DocumentUploadedEvent, any
/// backward-compatible version).
#[derive(Debug, Default, Deserialize)]
pub struct Document {
    pub event_id: String,
    pub tenant_id: String,
    pub document_id: String,
    pub text: String,
}

/// A `DocumentDecision` (schemas/document_decision.avsc), fields in the schema's order.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentDecision {
    pub event_id: String,
    pub tenant_id: String,
    pub decided_at: i64,
    pub document_id: String,
    pub route: &'static str,
    pub category: String,
    pub category_confidence: f64,
    pub urgency: String,
    pub reasons: Vec<String>,
    pub pii_found: Vec<String>,
    pub redacted_text: String,
    pub model: ModelInfo,
    pub stage_timings: Vec<StageTiming>,
    pub degraded: bool,
    pub cached: bool,
    pub token_usage: Option<i64>,
    pub cost_usd: Option<f64>,
    pub sentiment: Option<String>,
    pub sentiment_confidence: Option<f64>,
}

/// `ModelInfo` of a document decision.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub provider: String,
    pub prompt_version: Option<String>,
}

/// The review topic's subject for document decisions.
pub fn review_schema() -> ValueSchema {
    ValueSchema::TopicRecord {
        fullname: "dev.verdict.v1.DocumentDecision".into(),
        schema: DECISION_SCHEMA.into(),
    }
}

/// Validate and normalise: non-empty, within the size limit and the token budget.
pub fn validate(
    mut doc: Document,
    s: &DocumentSettings,
) -> Result<(Document, usize), ProcessError> {
    if uuid::Uuid::parse_str(&doc.event_id).is_err() {
        return Err(ProcessError::invalid("event_id", "must be a UUID"));
    }
    if doc.tenant_id.trim().is_empty() || doc.document_id.trim().is_empty() {
        return Err(ProcessError::invalid(
            "document_id",
            "tenant_id and document_id must not be empty",
        ));
    }
    doc.text = doc.text.split_whitespace().collect::<Vec<_>>().join(" ");
    if doc.text.is_empty() {
        return Err(ProcessError::invalid("text", "the document is empty"));
    }
    if doc.text.len() > s.max_bytes {
        return Err(ProcessError::invalid(
            "text",
            format!(
                "{} bytes is over the {}-byte limit",
                doc.text.len(),
                s.max_bytes
            ),
        ));
    }
    let tokens = doc.text.chars().count().div_ceil(4);
    if tokens > s.max_tokens {
        return Err(ProcessError::invalid(
            "text",
            format!("~{tokens} tokens is over the {}-token limit", s.max_tokens),
        ));
    }
    Ok((doc, tokens))
}

/// Keyword rules: the fallback classifier when no embedding model answers.
pub fn rules_classify(text: &str) -> (String, f64, String) {
    const CATEGORIES: &[(&str, &[&str])] = &[
        (
            "invoice",
            &["invoice", "payment", "amount due", "bill", "pay "],
        ),
        (
            "contract",
            &["contract", "agreement", "terms", "hereby", "parties"],
        ),
        (
            "complaint",
            &[
                "complaint",
                "unacceptable",
                "disappointed",
                "refund",
                "angry",
            ],
        ),
        (
            "support_request",
            &["help", "error", "not working", "problem", "cannot"],
        ),
        (
            "resume",
            &["experience", "education", "skills", "curriculum"],
        ),
        (
            "spam",
            &["winner", "free offer", "click here", "limited time"],
        ),
    ];
    let lower = text.to_lowercase();
    let (category, hits) = CATEGORIES
        .iter()
        .map(|(c, words)| (*c, words.iter().filter(|w| lower.contains(*w)).count()))
        .max_by_key(|(_, n)| *n)
        .unwrap_or(("unknown", 0));
    let urgent = ["urgent", "asap", "immediately", "today", "deadline"]
        .iter()
        .any(|w| lower.contains(w));
    let category = if hits == 0 { "unknown" } else { category };
    (
        category.to_string(),
        if hits == 0 { 0.0 } else { 0.5 },
        if urgent { "urgent" } else { "routine" }.to_string(),
    )
}

pub struct DocumentAnalyzer {
    settings: DocumentSettings,
    metrics: Arc<Metrics>,
    model: ModelId,
    batcher: Arc<MicroBatcher<String, Vec<f32>>>,
    cache: ResponseCache<Vec<f32>>,
    coalescer: Coalescer<Vec<f32>>,
    /// Category and urgency classifiers; anchors embedded on first use.
    classifiers: OnceCell<(ZeroShot, ZeroShot)>,
    /// The labelled examples the categories are learnt from (`service.categories =
    /// "examples"`); `None`: zero-shot label descriptions.
    examples: Option<Examples>,
    /// Sentiment: a head trained offline, evaluated in-process on the embedding.
    sentiment: LinearHead,
    topics: DecisionTopics,
    pricing: PriceTable,
    /// Tenants' spend against their caps (`service.budgets`); `None`: no caps.
    ledger: Option<Ledger>,
}

impl DocumentAnalyzer {
    pub fn new(
        settings: DocumentSettings,
        metrics: Arc<Metrics>,
        topics: DecisionTopics,
    ) -> Result<Self, String> {
        let client = OpenAiEmbeddings::new(
            &settings.embeddings_url,
            &settings.embeddings_model,
            "1.0.0",
            settings.api_key.clone(),
        )
        .map_err(|e| e.to_string())?;
        let model = client.model().clone();
        let sentiment = LinearHead::load(&settings.sentiment_head)
            .map_err(|e| format!("service.sentiment_head: {e}"))?;
        if sentiment.embedding_model != settings.embeddings_model {
            return Err(format!(
                "service.sentiment_head: the head was trained on {} embeddings, service.embeddings_model is {}",
                sentiment.embedding_model, settings.embeddings_model
            ));
        }
        let examples = match settings.categories {
            CategorySource::Examples => Some(
                Examples::load(&settings.category_examples)
                    .map_err(|e| format!("service.category_examples: {e}"))?,
            ),
            CategorySource::Descriptions => None,
        };
        let mut endpoints: Vec<Box<dyn Provider<String, Vec<f32>>>> = vec![Box::new(client)];
        for (i, replica) in settings.embeddings_replicas.iter().enumerate() {
            let client = OpenAiEmbeddings::new(
                &replica.url,
                &settings.embeddings_model,
                "1.0.0",
                replica.api_key.clone(),
            )
            .map_err(|e| format!("service.embeddings_replicas[{i}]: {e}"))?;
            endpoints.push(Box::new(client));
        }
        let embeddings = balance::guarded(endpoints, &settings.provider, metrics.clone())
            .ok_or("service.embeddings_url: no endpoint")?;
        let chain = Arc::new(Chain::new(vec![embeddings]));
        let batcher = Arc::new(MicroBatcher::new(
            32,
            Duration::from_millis(5),
            settings.embed_batches_in_flight,
            Arc::new(move |texts: Vec<String>| {
                let chain = chain.clone();
                Box::pin(async move { chain.infer(&texts).await.map(|a| a.outputs) })
            }),
        ));
        Ok(Self {
            cache: ResponseCache::new(
                Duration::from_millis(settings.cache_ttl_ms),
                settings.cache_capacity,
            ),
            settings,
            metrics,
            model,
            batcher,
            coalescer: Coalescer::default(),
            classifiers: OnceCell::new(),
            examples,
            sentiment,
            topics,
            pricing: PriceTable::default(),
            ledger: None,
        })
    }

    /// Costs the embedding calls by `pricing` (`[pricing]`).
    pub fn priced(self, pricing: PriceTable) -> Self {
        Self { pricing, ..self }
    }

    /// Holds tenants to their spend caps (`service.budgets`) kept in `ledger`.
    pub fn budgeted(self, ledger: Option<Ledger>) -> Self {
        Self { ledger, ..self }
    }

    /// The embedding of `text` for `tenant` (cached and coalesced per tenant: a hit, or a
    /// shared call, would tell one tenant what another sent), and whether it was cached.
    async fn embed(&self, tenant: &str, text: &str) -> Result<(Vec<f32>, bool), InferenceError> {
        let key = format!("{tenant}\0{}", cache_key(&self.model, text.as_bytes()));
        if let Some(v) = self.cache.get(&key) {
            return Ok((v, true));
        }
        let batcher = self.batcher.clone();
        let owned = text.to_string();
        let v = self
            .coalescer
            .run(&key, move || {
                Box::pin(async move { batcher.call(owned).await })
            })
            .await?;
        self.cache.put(key, v.clone());
        Ok((v, false))
    }

    /// The category and urgency classifiers, their anchors embedded on first use: category
    /// prototypes from the labelled examples (`service.categories = "examples"`) or
    /// zero-shot label descriptions; urgency always from descriptions.
    async fn classifiers(&self) -> Result<&(ZeroShot, ZeroShot), InferenceError> {
        self.classifiers
            .get_or_try_init(|| async {
                let [category, urgency] = default_classifiers();
                let category = match &self.examples {
                    Some(examples) => {
                        let embedded = self.embed_shared(examples.texts()).await?;
                        ZeroShot::from_examples(
                            &category.name,
                            category.temperature,
                            examples,
                            &embedded,
                        )
                    }
                    None => self.described(&category).await?,
                };
                Ok((category, self.described(&urgency).await?))
            })
            .await
    }

    /// What the categories are learnt from, for the audit record: the examples file and its
    /// checksum, or the zero-shot descriptions.
    fn categories_from(&self) -> String {
        match &self.examples {
            Some(e) => format!(
                "examples {} (sha256 {})",
                self.settings.category_examples.display(),
                e.sha256
            ),
            None => "descriptions".into(),
        }
    }

    /// A zero-shot classifier over the embeddings of its label descriptions.
    async fn described(&self, settings: &ClassifierSettings) -> Result<ZeroShot, InferenceError> {
        let descriptions = settings.labels.iter().map(|(_, d)| d.as_str());
        let anchors = self.embed_shared(descriptions).await?;
        Ok(ZeroShot::from_anchors(settings, anchors))
    }

    /// Embeddings of texts that are no tenant's (anchors): one shared scope, a few texts per
    /// call, one call after another. Sent at once, the 120 category examples went as full
    /// batches of 32, two at a time, each about 1.8 s on 2 cores (1.3 s alone): past the 2 s
    /// call timeout whenever anything else shared the cores. Eight take about 0.4 s.
    async fn embed_shared(
        &self,
        texts: impl Iterator<Item = &str>,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let texts: Vec<&str> = texts.collect();
        let mut embedded = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(ANCHORS_PER_CALL) {
            let calls = chunk
                .iter()
                .map(|t| async move { self.embed("", t).await.map(|(v, _)| v) });
            embedded.extend(futures::future::try_join_all(calls).await?);
        }
        Ok(embedded)
    }
}

/// Anchor texts per embedding call (see `embed_shared`).
const ANCHORS_PER_CALL: usize = 8;

/// Tries to embed the classifiers' anchors before the first record; what was embedded stays
/// cached, so each try resumes where the last stopped.
const WARM_TRIES: u32 = 3;

impl Processor for DocumentAnalyzer {
    type Input = Document;
    type Output = DecisionOutput<DocumentDecision>;

    fn outputs(&self) -> Vec<verdict_runtime::engine::OutputTopic> {
        self.topics.all()
    }

    /// The classifiers' anchors, embedded before the first document so that it does not wait
    /// for them. A model server that is not there yet leaves them to the first document that
    /// finds it (decided by rules until then).
    async fn warm(&self) {
        for attempt in 1..=WARM_TRIES {
            match self.classifiers().await {
                Ok(_) => {
                    tracing::info!(categories = %self.categories_from(), "classifiers ready");
                    return;
                }
                Err(error) if attempt < WARM_TRIES => {
                    tracing::info!(attempt, %error, "classifiers not ready yet; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "classifiers not ready: the first documents that reach the model embed them");
                }
            }
        }
    }

    async fn process(
        &self,
        mut input: Incoming<'_, Document>,
    ) -> Result<Vec<Outgoing<Self::Output>>, ProcessError> {
        let started = Instant::now();
        let mut t = StageTimings::new(&self.metrics);
        let document = std::mem::take(&mut input.value);
        telemetry::record_event_id(&document.event_id);
        let (mut doc, tokens) = t.try_stage("validate", || validate(document, &self.settings))?;
        let Redacted {
            text: redacted,
            kinds: pii,
            count: pii_count,
        } = t.stage("redact", || redact(&doc.text));
        // Only the redacted text goes on; a large document is not held twice while it waits
        // for its embedding.
        drop(std::mem::take(&mut doc.text));

        // The tenant's spend so far in the window of the record's time: past its hard cap the
        // record is refused (dead-lettered) or decided without a model call.
        let at = input.timestamp_ms.unwrap_or_else(now_ms);
        let budget = budget::admit(self.ledger.as_ref(), &doc.tenant_id, at)?;
        let embedded = if budget.over_budget {
            None
        } else {
            Some(
                t.try_stage_async("embed", async {
                    match self.embed(&doc.tenant_id, &redacted).await {
                        Ok(e) => match self.classifiers().await {
                            Ok(c) => Ok((e, c)),
                            Err(err) => Err(err),
                        },
                        Err(err) => Err(err),
                    }
                })
                .await,
            )
        };

        let embedded_tokens = tokens.min(self.settings.model_context_tokens);
        // A cached embedding is no call: it costs nothing.
        let cost = embedded
            .as_ref()
            .and_then(|e| e.as_ref().ok())
            .and_then(|((_, cached), _)| {
                let usage = if *cached {
                    Usage::default()
                } else {
                    Usage::call().tokens(embedded_tokens as u64, 0)
                };
                self.pricing
                    .charge(&self.metrics, &doc.tenant_id, &self.model.name, usage)
            });
        if let (Some(ledger), Some(cost)) = (&self.ledger, cost) {
            ledger.charge(input.state, &doc.tenant_id, at, cost)?;
        }
        let mut reasons = Vec::new();
        if tokens > self.settings.model_context_tokens {
            reasons.push(format!(
                "~{tokens} tokens: only the first {} were embedded",
                self.settings.model_context_tokens
            ));
        }
        let (category, confidence, urgency, sentiment, degraded, cached, model) =
            t.stage("classify", || match &embedded {
                Some(Ok(((vector, cached), (category, urgency)))) => {
                    let c = category.classify(vector);
                    let u = urgency.classify(vector);
                    (
                        c.label,
                        f64::from(c.confidence),
                        u.label,
                        self.sentiment.classify(vector),
                        false,
                        *cached,
                        self.model.clone(),
                    )
                }
                Some(Err(_)) | None => {
                    reasons.push(match &embedded {
                        Some(Err(err)) => format!(
                            "degraded: embedding model unavailable ({err}); keyword rules classified"
                        ),
                        _ => format!(
                            "degraded: budget ({}); keyword rules classified",
                            budget.note.as_deref().unwrap_or("past the hard limit")
                        ),
                    });
                    let (c, conf, u) = rules_classify(&redacted);
                    (
                        c,
                        conf,
                        u,
                        None,
                        true,
                        false,
                        ModelId::new("rules", "document-keywords", "1"),
                    )
                }
            });
        let negative = sentiment.as_ref().is_some_and(|s| {
            s.label == "negative" && f64::from(s.confidence) >= self.settings.review_negative_above
        });
        let route = t.stage("decide", || {
            if category == "spam" && confidence >= 0.6 {
                reasons.push(format!("spam ({confidence:.2})"));
                "REJECT"
            } else if degraded
                || confidence < self.settings.review_below
                || urgency == "urgent"
                || negative
            {
                if confidence < self.settings.review_below {
                    reasons.push(format!(
                        "low confidence in category {category} ({confidence:.2})"
                    ));
                }
                if urgency == "urgent" {
                    reasons.push("urgent".into());
                }
                if let Some(s) = sentiment.as_ref().filter(|_| negative) {
                    reasons.push(format!(
                        "negative sentiment ({:.2}, {}@{})",
                        s.confidence, self.sentiment.name, self.sentiment.version
                    ));
                }
                "REVIEW"
            } else {
                reasons.push(format!("category {category} ({confidence:.2})"));
                "AUTO_ACCEPT"
            }
        });
        if pii_count > 0 {
            reasons.push(format!(
                "{pii_count} PII item(s) redacted: {}",
                pii.join(", ")
            ));
        }

        let audit = Audit::decision(SERVICE, &doc.event_id, &doc.tenant_id, input.raw)
            .outcome(route)
            .model(&model.name, &model.version)
            .latency_since(started)
            .usage(i64::try_from(embedded_tokens).ok(), cost)
            .detail("category", &category)
            .detail("categories_from", self.categories_from())
            .detail("pii_kinds", pii.join(","))
            .detail("degraded", degraded)
            .detail("cached", cached);
        let audit = match budget.detail() {
            Some(d) => audit.detail("budget", d),
            None => audit,
        };
        let decision = DocumentDecision {
            event_id: doc.event_id,
            tenant_id: doc.tenant_id,
            decided_at: now_ms(),
            document_id: doc.document_id,
            route,
            category,
            category_confidence: confidence,
            urgency,
            reasons,
            pii_found: pii,
            redacted_text: redacted,
            model: ModelInfo {
                name: model.name,
                version: model.version,
                provider: model.provider,
                prompt_version: None,
            },
            stage_timings: t.stages,
            degraded,
            cached,
            token_usage: i64::try_from(embedded_tokens).ok(),
            cost_usd: cost,
            sentiment: sentiment.as_ref().map(|s| s.label.clone()),
            sentiment_confidence: sentiment.as_ref().map(|s| f64::from(s.confidence)),
        };
        let key = decision.document_id.clone();
        Ok(self
            .topics
            .outputs(&key, decision, audit, route == "REVIEW"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_empty_and_oversize_documents() {
        let s = DocumentSettings {
            max_bytes: 100,
            ..DocumentSettings::default()
        };
        let doc = |text: &str| Document {
            event_id: "6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11".into(),
            tenant_id: "t".into(),
            document_id: "d".into(),
            text: text.into(),
        };
        assert!(
            matches!(validate(doc("   \n "), &s), Err(ProcessError::Invalid { field, .. }) if field == "text")
        );
        assert!(
            matches!(validate(doc(&"x".repeat(101)), &s), Err(ProcessError::Invalid { reason, .. }) if reason.contains("limit"))
        );
        let (d, tokens) = validate(doc("  two   words "), &s).expect("valid");
        assert_eq!((d.text.as_str(), tokens), ("two words", 3));
    }

    #[test]
    fn rules_fallback_classifies_by_keywords() {
        assert_eq!(
            rules_classify("Please pay the invoice today"),
            ("invoice".into(), 0.5, "urgent".into())
        );
        assert_eq!(rules_classify("lorem ipsum").0, "unknown");
    }
}
