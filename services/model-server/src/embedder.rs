//! all-MiniLM-L6-v2 sentence embeddings with candle: BERT forward pass, mean
//! pooling over the attention mask, L2 normalisation (the model's
//! sentence-transformers modules: Transformer → Pooling(mean) → Normalize).
//!
//! The shipped `tokenizer.json` pads and truncates every input to 128 tokens; we
//! pad to the longest input of the batch instead and truncate at `max_length`
//! (default 256, the model's `max_seq_length`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot load model from {dir}: {message}")]
    Load { dir: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Model identity served in metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub platform: String,
    /// sha256 of the weights file.
    pub sha256: String,
    pub dimensions: usize,
    pub max_length: usize,
}

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pub info: ModelInfo,
}

pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per input after truncation (incl. [CLS]/[SEP]).
    pub tokens: Vec<usize>,
}

impl Embedder {
    pub fn load(dir: &Path, name: &str, max_length: usize) -> Result<Self, EmbedError> {
        let err = |message: String| EmbedError::Load {
            dir: dir.display().to_string(),
            message,
        };
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .map_err(|e| err(format!("config.json: {e}")))?,
        )
        .map_err(|e| err(format!("config.json: {e}")))?;
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        let sha256 = verdict_runtime::models::sha256_hex(&weights);
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        let model = BertModel::load(vb, &config).map_err(|e| err(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        let max_length = max_length.min(config.max_position_embeddings);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| err(format!("truncation: {e}")))?;
        Ok(Self {
            model,
            tokenizer,
            info: ModelInfo {
                name: name.to_string(),
                version: "1.0.0".to_string(),
                platform: "candle".to_string(),
                sha256,
                dimensions: config.hidden_size,
                max_length,
            },
        })
    }

    /// Embeds a batch of texts; one L2-normalised vector per text.
    pub fn embed(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        if texts.is_empty() {
            return Ok(Embedded {
                vectors: Vec::new(),
                tokens: Vec::new(),
            });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings
                .iter()
                .flat_map(|e| f(e).iter().copied())
                .collect()
        };
        let device = &self.model.device;
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, width), device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, width), device)?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (rows, width), device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens, then L2 normalise.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let normalised = mean.broadcast_div(&norm)?;
        let tokens = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
            .collect();
        Ok(Embedded {
            vectors: normalised.to_vec2::<f32>()?,
            tokens,
        })
    }

    /// Token count of one text (for context-size checks), without padding.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        let mut t = self.tokenizer.clone();
        t.with_truncation(None)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        t.with_padding(None);
        Ok(t.encode(text, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?
            .len())
    }
}
