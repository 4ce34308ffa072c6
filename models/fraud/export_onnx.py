#!/usr/bin/env python3
"""Export the fraud model to ONNX, to be scored in-process by tract (`service.onnx_model`).

    python models/fraud/export_onnx.py OUT.onnx [MODEL_JSON]

The same model as export_sklearn.py's pipeline, with nothing refitted: its raw input is the
9-column float64 matrix of features.py (NaN = missing), and the graph does what
features.preprocess and LogisticRegression.predict_proba do, in standard ONNX operators
(opset 17): impute the median, log1p, standardise, the linear score and the logistic.
skl2onnx cannot convert that pipeline (its preprocessing is a FunctionTransformer), so the
graph is written here from model.json's constants with the onnx package's helpers.

Outputs: `probabilities` [N, 2] (p_good, p_bad, as predict_proba) and `p_bad` [N, 1].
The model's name and version are in the ONNX metadata (`name`, `version`).
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import features as F  # noqa: E402


def const(name, values, dtype=np.float64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def build(model):
    numeric, cat = F.model_blocks(model)
    n_cat = len(F.CREDIT_HISTORY_CODES)
    fill = [f["median"] for f in numeric] + [0.0] * n_cat
    log1p = [f["transform"] == "log1p" for f in numeric] + [False] * n_cat
    if any(f["transform"] not in ("log1p", "identity") for f in numeric):
        raise ValueError("only log1p and identity transforms are exported")
    mean = [f["mean"] for f in numeric] + [0.0] * n_cat
    std = [f["std"] for f in numeric] + [1.0] * n_cat
    coef = [[f["coefficient"]] for f in numeric] + [[cat["categories"][c]] for c in F.CREDIT_HISTORY_CODES]

    nodes = [
        # NaN is the one value not equal to itself (tract's IsNaN is typed as its input).
        helper.make_node("Equal", ["raw", "raw"], ["present"]),
        helper.make_node("Where", ["present", "raw", "fill"], ["imputed"]),
        helper.make_node("Add", ["imputed", "one"], ["plus_one"]),
        helper.make_node("Log", ["plus_one"], ["logged"]),
        helper.make_node("Where", ["log1p_mask", "logged", "imputed"], ["transformed"]),
        helper.make_node("Sub", ["transformed", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["standardised"]),
        helper.make_node("MatMul", ["standardised", "coef"], ["linear"]),
        helper.make_node("Add", ["linear", "intercept"], ["logit"]),
        helper.make_node("Neg", ["logit"], ["neg_logit"]),
        helper.make_node("Exp", ["neg_logit"], ["exp_neg"]),
        helper.make_node("Add", ["exp_neg", "one_scalar"], ["denominator"]),
        helper.make_node("Reciprocal", ["denominator"], ["p_bad"]),
        helper.make_node("Sub", ["one_scalar", "p_bad"], ["p_good"]),
        helper.make_node("Concat", ["p_good", "p_bad"], ["probabilities"], axis=1),
    ]
    initializers = [
        const("fill", fill),
        const("one", [1.0] * F.N_COLUMNS),
        const("log1p_mask", log1p, dtype=np.bool_),
        const("mean", mean),
        const("std", std),
        const("coef", coef),
        const("intercept", [model["intercept"]]),
        const("one_scalar", [1.0]),
    ]
    graph = helper.make_graph(
        nodes,
        model["name"],
        [helper.make_tensor_value_info("raw", TensorProto.DOUBLE, ["N", F.N_COLUMNS])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, ["N", 2]),
            helper.make_tensor_value_info("p_bad", TensorProto.DOUBLE, ["N", 1]),
        ],
        initializers,
    )
    out = helper.make_model(
        graph,
        producer_name="verdict models/fraud/export_onnx.py",
        opset_imports=[helper.make_opsetid("", 17)],
    )
    out.ir_version = 8
    helper.set_model_props(out, {"name": model["name"], "version": model["version"]})
    onnx.checker.check_model(out, full_check=True)
    return out


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    dst = sys.argv[1]
    src = sys.argv[2] if len(sys.argv) == 3 else os.path.join(HERE, "model.json")
    with open(src) as f:
        model = json.load(f)
    onnx.save(build(model), dst)
    print(f"wrote {dst} ({model['name']} {model['version']})")


if __name__ == "__main__":
    main()
