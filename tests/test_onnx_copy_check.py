"""The check that an OnnxClassifier's pickled copies compute what it computes (session options whose
``add_initializer`` weights a copy cannot rebuild), on models with a string output, a NaN score on
the probe input, and one output that draws noise beside one that does not."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import zoracle as zo

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402

_X = np.random.default_rng(1).uniform(0, 1, (3, 4)).astype(np.float32)


def _model(nodes, outputs, initializers=()):
    """x (N, 4) -> scores = x @ W (N, 3), W in the model, and the ``nodes`` writing ``outputs``."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["xw"])] + nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(*o) for o in outputs],
                              [numpy_helper.from_array(w, "W"), *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _zero_weights():
    """Options whose added initializer replaces W with zeros (a copy keeps the model's W), and the
    OrtValue, which must outlive every session built with them (onnxruntime keeps no reference)."""
    weights = ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 3), np.float32))
    options = ort.SessionOptions()
    options.add_initializer("W", weights)
    return options, weights


def _threads():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return options


def _pickles_and_agrees(clf):
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy(_X), clf(_X))


def test_a_string_output_beside_the_scores_is_left_out_of_the_comparison():
    """skl2onnx-style string labels next to the scores: the check compares the numeric outputs only
    (converting 'cat' to a float raised ValueError out of pickle.dumps)."""
    model = _model([helper.make_node("Identity", ["xw"], ["scores"]),
                    helper.make_node("ArgMax", ["xw"], ["idx"], axis=1, keepdims=0),
                    helper.make_node("Gather", ["names", "idx"], ["label"], axis=0)],
                   [("scores", TensorProto.FLOAT, ["N", 3]), ("label", TensorProto.STRING, ["N"])],
                   [helper.make_tensor("names", TensorProto.STRING, [3], [b"cat", b"dog", b"owl"])])
    options, weights = _zero_weights()
    clf = OnnxClassifier(model, session_options=options)
    assert clf.output_name == "scores"
    with pytest.raises(zo.ArgumentError, match=r"gave output 'scores' up to [0-9.]+ apart on a probe input"):
        pickle.dumps(clf)
    _pickles_and_agrees(OnnxClassifier(model, session_options=_threads()))
    del weights


def test_a_score_that_is_nan_on_the_probe_does_not_make_the_model_look_noisy():
    """A NaN score on the probe input is the same NaN on every run: the model is still judged, and
    its added initializer refused (taken for noise, it pickled without it)."""
    bias = numpy_helper.from_array(np.array([np.nan, 0, 0], np.float32), "b")
    model = _model([helper.make_node("Add", ["xw", "b"], ["scores"])], [("scores", TensorProto.FLOAT, ["N", 3])],
                   [bias])
    options, weights = _zero_weights()
    clf = OnnxClassifier(model, session_options=options)
    assert np.isnan(clf(_X)[:, 0]).all()
    with pytest.raises(zo.ArgumentError, match=r"gave output 'scores' up to [0-9.]+ apart on a probe input"):
        pickle.dumps(clf)
    _pickles_and_agrees(OnnxClassifier(model, session_options=_threads()))
    del weights


def test_an_output_that_draws_noise_leaves_the_other_outputs_judged():
    """Scores next to an output that draws noise: the scores are still compared (the whole model
    went unjudged, and its copies computed without the added initializer), the noise is not (a
    copy's noise differs from the original's on every run)."""
    model = _model([helper.make_node("Identity", ["xw"], ["scores"]),
                    helper.make_node("RandomNormalLike", ["x"], ["noise"])],
                   [("scores", TensorProto.FLOAT, ["N", 3]), ("noise", TensorProto.FLOAT, ["N", 4])])
    options, weights = _zero_weights()
    clf = OnnxClassifier(model, output="scores", session_options=options)
    with pytest.raises(zo.ArgumentError, match=r"gave output 'scores' up to [0-9.]+ apart on a probe input"):
        pickle.dumps(clf)
    for output in ("scores", "noise"):
        clf = OnnxClassifier(model, output=output, session_options=_threads())
        clf(_X)  # (each new session draws the same noise first: the original draws on from there)
        copy = pickle.loads(pickle.dumps(clf))
        if output == "scores":
            np.testing.assert_array_equal(copy(_X), clf(_X))
    del weights
