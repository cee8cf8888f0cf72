"""A float16 ONNX model fed float64 inputs through ``cast=True`` inside a zeroth-order estimate: steps
over mu of a few float16 spacings are rounded to float16's grid (a float16 CNN's central CGE was 18% off
its float32 export's at mu = 5e-3), which the adapter says once; wider steps and ordinary calls pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402

_X0 = np.random.default_rng(0).uniform(0.5, 1, (2, 4))  # float64: cast=True rounds it to float16


def _half_model():
    w = (np.arange(12).reshape(4, 3) / 10).astype(np.float16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["scores"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT16, ["N", 3])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _loss(scores):  # softplus: the float16 scores' grid does not survive into the loss (as cross-entropy's)
    return float(np.log1p(np.exp(scores.astype(np.float64))).sum())


def _estimate(clf, estimator):
    return zo.estimate_gradient(lambda v: _loss(clf(v.reshape(_X0.shape))), _X0.ravel(), estimator, rng=0)


@pytest.mark.parametrize("estimator", [zo.CGE(mu=5e-3, scheme="central"), zo.RGE(mu=5e-3, directions=4)],
                         ids=["CGE", "RGE"])
def test_steps_of_a_few_float16_spacings_are_warned_about(estimator):
    clf = OnnxClassifier(_half_model(), cast=True)
    with pytest.warns(RuntimeWarning, match=r"computes in float16 \(input 'x'\), .* times float16's spacing "
                                            r"[0-9.e-]+ at those values.*raise mu to [0-9.e-]+ or more, or export the "
                                            r"model in float32") as record:
        _estimate(clf, estimator)
    assert len(record) == 1  # said once, by the adapter alone (zoracle's check of the losses sees no grid)
    # the estimate is as coarse as said: off the exact gradient by more than its mu alone explains
    w = np.arange(12).reshape(4, 3) / 10
    exact = ((1 / (1 + np.exp(-_X0 @ w))) @ w.T).ravel()
    if isinstance(estimator, zo.CGE):
        assert np.linalg.norm(_estimate(clf, estimator).grad - exact) > 0.02 * np.linalg.norm(exact)


def test_wide_steps_and_ordinary_calls_are_not_warned_about():
    clf = OnnxClassifier(_half_model(), cast=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _estimate(clf, zo.CGE(mu=5e-2, scheme="central"))  # 100 spacings and more
        rng = np.random.default_rng(1)
        for _ in range(3):  # other samples, and the same samples again
            x = rng.uniform(0, 1, (5, 4))
            clf(x)
            clf(x)
        clf(_X0.astype(np.float16))  # no cast: the caller rounded
        clf(_X0.astype(np.float16) + np.float16(2 ** -10))


def test_a_copy_does_not_carry_the_last_input():
    """A pickled copy (process executors) starts without the previous call's input."""
    import pickle

    clf = OnnxClassifier(_half_model(), cast=True)
    clf(_X0)
    assert isinstance(clf._last_cast, np.ndarray)
    assert "_last_cast" not in pickle.loads(pickle.dumps(clf)).__dict__
