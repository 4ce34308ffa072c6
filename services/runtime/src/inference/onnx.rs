//! ONNX models scored in-process by tract, a pure-Rust runtime (nothing downloaded or linked
//! natively at build time). A model takes one row of floats per input (`[N, width]`, float or
//! double) and answers a row per input from the output named in the settings: the fraud model
//! exported by `models/fraud/export_onnx.py`, or a user's own classifier exported by skl2onnx
//! (`options={"zipmap": False}`), onnxmltools (XGBoost, LightGBM) or `torch.onnx`.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid as _;

use super::{BoxFuture, InferenceError, ModelId, Provider};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a model tract can run: {message}")]
    Model { path: String, message: String },
}

/// A loaded ONNX model, optimised once, run for every batch.
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    input: DatumType,
    width: usize,
    model: ModelId,
    /// SHA-256 of the file, as decisions' audit details name a model file.
    pub sha256: String,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("model", &self.model)
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads `path` answering from its output `output`. The model is named by its metadata
    /// (`name`, `version`, as the exporters write them), else by the file's stem and the first
    /// 12 hex digits of its SHA-256.
    pub fn load(path: &Path, output: &str) -> Result<Self, OnnxError> {
        let shown = path.display().to_string();
        let bad = |message: String| OnnxError::Model {
            path: shown.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Read {
            path: shown.clone(),
            source,
        })?;
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| bad(format!("{e:#}")))?;
        let meta = |key: &str| {
            proto
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.clone())
        };
        let sha256 = crate::models::sha256_hex(&bytes);
        let name = meta("name").unwrap_or_else(|| {
            path.file_stem()
                .map_or("onnx".into(), |s| s.to_string_lossy().into_owned())
        });
        let version = meta("version").unwrap_or_else(|| sha256.chars().take(12).collect());
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| bad(format!("{e:#}")))?;
        let outputs: Vec<String> = model
            .output_outlets()
            .map_err(|e| bad(format!("{e:#}")))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let Some(at) = outputs.iter().position(|o| o == output) else {
            return Err(bad(format!("no output {output:?}; it has {outputs:?}")));
        };
        let wanted = model.output_outlets().map_err(|e| bad(format!("{e:#}")))?[at];
        model
            .select_output_outlets(&[wanted])
            .map_err(|e| bad(format!("{e:#}")))?;
        let fact = model.input_fact(0).map_err(|e| bad(format!("{e:#}")))?;
        let input = fact
            .datum_type
            .concretize()
            .filter(|t| *t == f32::datum_type() || *t == f64::datum_type())
            .ok_or_else(|| bad("its first input is not a float or double tensor".into()))?;
        let width = fact
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.as_i64())
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| bad("its first input is not [N, width] with a fixed width".into()))?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| bad(format!("{e:#}")))?;
        Ok(Self {
            plan,
            input,
            width,
            model: ModelId::new("onnx", &name, &version),
            sha256,
        })
    }

    /// Floats per input row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// One output row per input row.
    pub fn score_rows(&self, rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, InferenceError> {
        let protocol = |e: TractError| InferenceError::Protocol(format!("{e:#}"));
        if let Some(row) = rows.iter().find(|r| r.len() != self.width) {
            return Err(InferenceError::Rejected(format!(
                "a row of {} values for a model of {} inputs",
                row.len(),
                self.width
            )));
        }
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let tensor = tract_ndarray::Array2::from_shape_vec((rows.len(), self.width), flat)
            .map_err(|e| InferenceError::Protocol(e.to_string()))?
            .into_tensor()
            .cast_to_dt(self.input)
            .map_err(protocol)?
            .into_owned();
        let out = self.plan.run(tvec!(tensor.into())).map_err(protocol)?;
        let out = out
            .first()
            .ok_or_else(|| InferenceError::Protocol("no output".into()))?
            .cast_to::<f64>()
            .map_err(protocol)?;
        let view = out.to_plain_array_view::<f64>().map_err(protocol)?;
        let per_row = if rows.is_empty() {
            0
        } else {
            view.len() / rows.len()
        };
        if per_row == 0 || per_row * rows.len() != view.len() {
            return Err(InferenceError::Protocol(format!(
                "{} output values for {} rows",
                view.len(),
                rows.len()
            )));
        }
        let values: Vec<f64> = view.iter().copied().collect();
        Ok(values.chunks(per_row).map(<[f64]>::to_vec).collect())
    }
}

impl Provider<Vec<f64>, Vec<f64>> for OnnxModel {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn infer<'a>(
        &'a self,
        batch: &'a [Vec<f64>],
    ) -> BoxFuture<'a, Result<Vec<Vec<f64>>, InferenceError>> {
        let out = self.score_rows(batch);
        Box::pin(async move { out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::LogisticModel;

    fn repo() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[derive(serde::Deserialize)]
    struct Holdout {
        rows: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        input: serde_json::Value,
        expected_p_bad: f64,
    }

    /// Issue 21 item 4: the exported model scores every held-out row (and the synthetic ones
    /// with missing values and unknown categories) as scikit-learn and the hand-written
    /// evaluator do, in one batch and row by row.
    #[test]
    fn the_exported_fraud_model_scores_the_holdout_as_the_evaluator_does() {
        let json = LogisticModel::load(&repo().join("models/fraud/model.json")).expect("model");
        let onnx = OnnxModel::load(&repo().join("models/fraud/model.onnx"), "probabilities")
            .expect("onnx");
        assert_eq!(
            onnx.model(),
            &ModelId::new("onnx", "german-credit-logreg", "1.0.0")
        );
        let text =
            std::fs::read_to_string(repo().join("models/fraud/holdout.json")).expect("holdout");
        let holdout: Holdout = serde_json::from_str(&text).expect("holdout json");
        assert!(holdout.rows.len() >= 250);
        let rows: Vec<Vec<f64>> = holdout
            .rows
            .iter()
            .map(|r| json.raw_row(&json.input_from_json(&r.input)))
            .collect();
        let batch = onnx.score_rows(&rows).expect("scored");
        let mut worst: f64 = 0.0;
        for ((row, out), expected) in rows.iter().zip(&batch).zip(&holdout.rows) {
            let [p_good, p_bad] = out.as_slice() else {
                panic!("[p_good, p_bad], got {out:?}");
            };
            assert!((p_good + p_bad - 1.0).abs() < 1e-12);
            let evaluator = json.score_row(row).expect("width");
            worst = worst
                .max((p_bad - evaluator).abs())
                .max((p_bad - expected.expected_p_bad).abs());
            let alone = onnx.score_rows(std::slice::from_ref(row)).expect("one row");
            assert_eq!(alone[0], *out, "a row scores the same alone as in a batch");
        }
        assert!(worst < 1e-6, "max |onnx - evaluator or sklearn| = {worst}");
    }

    #[test]
    fn a_wrong_output_or_row_width_is_named() {
        let path = repo().join("models/fraud/model.onnx");
        let err = OnnxModel::load(&path, "predict_proba").expect_err("no such output");
        assert!(err.to_string().contains("probabilities"), "{err}");
        let onnx = OnnxModel::load(&path, "p_bad").expect("onnx");
        assert_eq!(onnx.width(), 9);
        let err = onnx.score_rows(&[vec![1.0; 3]]).expect_err("short row");
        assert!(matches!(err, InferenceError::Rejected(_)), "{err}");
        let err = OnnxModel::load(&repo().join("models/fraud/model.json"), "p_bad")
            .expect_err("not ONNX");
        assert!(err.to_string().contains("model.json"), "{err}");
    }
}
