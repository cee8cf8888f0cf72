"""A model exported with a fixed batch of 1 (torch.onnx.export without dynamic_axes, from one example)
runs one onnxruntime call per sample: the same scores, at many times the time of one call with a dynamic
batch axis (a small CNN, one thread: 30 times for 256 samples), and nothing said so. Said once now, naming
the fix."""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 7


def _model(batch, quantized=False):
    """x (batch, 4) @ W -> scores (batch, 3); ``quantized``: x quantized per call first, as
    onnxruntime.quantization.quantize_dynamic writes it."""
    nodes, first = [], "x"
    if quantized:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xq"])]
        first = "xq"
    nodes.append(helper.make_node("MatMul", [first, "W"], ["scores"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])],
                          [numpy_helper.from_array(W, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


X = np.random.default_rng(0).uniform(-1, 1, (9, 4)).astype(np.float32)


def _said(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn()
    return out, [(str(w.message), os.path.abspath(w.filename), w.lineno) for w in got]


def test_a_fixed_batch_of_one_is_said_once_at_the_first_call_of_several_samples():
    fixed = _model(1)
    clf, dynamic = OnnxClassifier(fixed), OnnxClassifier(_model("N"))
    out, said = _said(lambda: clf(X[:1]))  # one sample: one call either way, nothing to say
    assert said == []
    out, said = _said(lambda: clf(X))
    line = inspect.currentframe().f_lineno - 1
    assert [s[0] for s in said] == [
        f"OnnxClassifier: `model` {len(fixed)} bytes declares a fixed batch of 1 on input 'x', so a call of N "
        "samples runs N onnxruntime calls, one per sample: the same results, at many times the time of one call; "
        "re-export the model with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}, "
        "'scores': {0: 'batch'}}))"]
    assert said[0][1:] == (os.path.abspath(__file__), line)  # the user's line
    np.testing.assert_array_equal(out, dynamic(X))  # the results are unchanged
    np.testing.assert_allclose(out, X.astype(np.float64) @ W, rtol=1e-5)
    assert clf.calls == 1 + 9 and dynamic.calls == 1
    assert _said(lambda: clf(X))[1] == []  # once


@pytest.mark.parametrize("batch, quantized", [("N", False), (4, False), (1, True)])
def test_nothing_is_said_where_a_dynamic_axis_would_not_help(batch, quantized):
    """A dynamic axis, a fixed batch of several samples (padded chunks), and a model that quantizes
    its input per call (one sample a call, whatever its axis: a dynamic one needs batch_size=1)."""
    clf = OnnxClassifier(_model(batch, quantized))
    assert _said(lambda: clf(X))[1] == []
