#!/usr/bin/env python3
"""Check model.json, holdout.json and the exported sklearn pipeline agree.

    python models/fraud/verify.py

1. evaluates the model.json formula in plain Python (as the Rust service does) on every
   holdout.json row;
2. exports the sklearn pipeline with export_sklearn.py into a temp dir, loads the joblib
   in a fresh interpreter that only has that dir on sys.path, and compares
   predict_proba on the raw 9-column matrix;
3. recomputes the held-out AUC from the labels.
All probabilities must match expected_p_bad within holdout.json's tolerance (1e-9).
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import features as F  # noqa: E402
from train import formula_p  # noqa: E402

LOAD_AND_PREDICT = r"""
import json, sys, joblib, numpy as np
pipe = joblib.load(sys.argv[1])
X = np.array(json.load(sys.stdin), dtype=float)
json.dump([float(p) for p in pipe.predict_proba(X)[:, 1]], sys.stdout)
"""


def main():
    with open(os.path.join(HERE, "model.json")) as f:
        model = json.load(f)
    with open(os.path.join(HERE, "holdout.json")) as f:
        hold = json.load(f)
    rows, tol = hold["rows"], hold["tolerance"]
    expected = [r["expected_p_bad"] for r in rows]

    d_formula = max(abs(formula_p(model, r["input"]) - e) for r, e in zip(rows, expected))

    X = [F.raw_row(**r["input"]) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "serve", "model.joblib")
        subprocess.run([sys.executable, os.path.join(HERE, "export_sklearn.py"), out], check=True)
        env = dict(os.environ, PYTHONPATH=os.path.dirname(out))
        res = subprocess.run(
            [sys.executable, "-W", "error", "-c", LOAD_AND_PREDICT, out],
            input=json.dumps(X), capture_output=True, text=True, check=True, env=env, cwd=tmp,
        )
        got = json.loads(res.stdout)
    d_pipe = max(abs(g - e) for g, e in zip(got, expected))

    held = [(r["label"], r["expected_p_bad"]) for r in rows if r["source"] == "holdout"]
    pos = [p for l, p in held if l == 1]
    neg = [p for l, p in held if l == 0]
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))

    n_syn = sum(r["source"] == "synthetic" for r in rows)
    print(f"{len(rows)} rows ({len(held)} holdout, {n_syn} synthetic)")
    print(f"max |formula - expected|  = {d_formula:.3g}")
    print(f"max |pipeline - expected| = {d_pipe:.3g}")
    print(f"holdout AUC = {auc:.6f} (model.json says {model['metrics']['auc_test']:.6f})")
    ok = d_formula <= tol and d_pipe <= tol and abs(auc - model["metrics"]["auc_test"]) < 1e-12
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
