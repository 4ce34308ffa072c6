#!/usr/bin/env python3
"""Rebuild the fitted scikit-learn pipeline from model.json and save it with joblib.

    python models/fraud/export_sklearn.py OUT.joblib [MODEL_JSON]

No retraining: the LogisticRegression gets coef_/intercept_/classes_ straight from
model.json, and a FunctionTransformer(features.preprocess) does the imputation,
log1p and standardisation with the constants from model.json. The pipeline takes the
raw 9-column float matrix described in features.py (NaN = missing) and its
predict_proba(X)[:, 1] is p_bad.

The pickle refers to `features.preprocess` by module name, so whoever loads the
joblib (e.g. MLServer with mlserver-sklearn) must be able to `import features`.
This script therefore copies features.py next to OUT.joblib; put that directory on
the server's PYTHONPATH. Run this script with the scikit-learn version the server
uses so the pickle matches it.
"""

import json
import os
import shutil
import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import features as F  # noqa: E402


def build(model):
    numeric, cat = F.model_blocks(model)
    kw = {
        "median": [f["median"] for f in numeric],
        "mean": [f["mean"] for f in numeric],
        "std": [f["std"] for f in numeric],
        "transforms": tuple(f["transform"] for f in numeric),
    }
    pre = FunctionTransformer(F.preprocess, kw_args=kw, validate=False)
    clf = LogisticRegression(C=model["hyperparameters"]["C"], solver="lbfgs")
    clf.coef_ = np.array([[f["coefficient"] for f in numeric] + [cat["categories"][c] for c in F.CREDIT_HISTORY_CODES]])
    clf.intercept_ = np.array([model["intercept"]])
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = F.N_COLUMNS
    clf.n_iter_ = np.array([0], dtype=np.int32)
    # Fitting the stateless FunctionTransformer on a dummy row only records n_features_in_;
    # the classifier is never refitted.
    pre.fit(np.zeros((1, F.N_COLUMNS)))
    return Pipeline([("features", pre), ("logreg", clf)])


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    src = sys.argv[2] if len(sys.argv) == 3 else os.path.join(HERE, "model.json")
    with open(src) as f:
        model = json.load(f)
    pipe = build(model)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    joblib.dump(pipe, out)
    dst = os.path.join(os.path.dirname(os.path.abspath(out)), "features.py")
    if not (os.path.exists(dst) and os.path.samefile(dst, os.path.join(HERE, "features.py"))):
        shutil.copyfile(os.path.join(HERE, "features.py"), dst)
    print(f"wrote {out} ({model['name']} {model['version']}) and {dst}")


if __name__ == "__main__":
    main()
