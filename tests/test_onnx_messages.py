"""OnnxClassifier's refusals of models it cannot read name the input or output and the fix."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

from conftest import onnx_map_type  # noqa: E402
from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), ml=False) -> bytes:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [h.make_opsetid("", 17)] + ([h.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    model = h.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)  # valid ONNX: the refusals below are onnxruntime's or zoracle's
    return model.SerializeToString()


def _softmax_of(x_type, out_nodes, outputs, ml=False):
    w = h.make_tensor("W", x_type, [3, 2], np.arange(6.0).tolist())
    return _model([h.make_node("MatMul", ["x", "W"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=1)]
                  + out_nodes, [h.make_tensor_value_info("x", x_type, ["N", 3])], outputs, [w], ml=ml)


def _zipmap_of(x_type, value_type):
    out = h.make_value_info("output_probability", h.make_sequence_type_proto(
        onnx_map_type(T.INT64, h.make_tensor_type_proto(value_type, []))))
    return _softmax_of(x_type, [h.make_node("ZipMap", ["p"], ["output_probability"], domain="ai.onnx.ml",
                                            classlabels_int64s=[0, 1])], [out], ml=True)


def test_weights_exported_as_inputs_name_export_params():
    """torch.onnx.export(..., export_params=False) makes the weights graph inputs: the refusal said
    "fold the others in as constants", not which export option did it."""
    model = _model([h.make_node("MatMul", ["x", "fc.weight"], ["mm"]), h.make_node("Add", ["mm", "fc.bias"], ["z"])],
                   [h.make_tensor_value_info("x", T.FLOAT, ["batch", 3]),
                    h.make_tensor_value_info("fc.weight", T.FLOAT, [3, 2]),
                    h.make_tensor_value_info("fc.bias", T.FLOAT, [2])],
                   [h.make_tensor_value_info("z", T.FLOAT, ["batch", 2])])
    with pytest.raises(zo.ArgumentError, match=r"has 3 inputs \['x', 'fc.weight', 'fc.bias'\] to feed; OnnxClassifier "
                                               r"feeds exactly one \(the samples\).*export_params=False\): re-export "
                                               r"with export_params=True"):
        OnnxClassifier(model)


def test_a_float64_zipmap_is_named_not_called_corrupted():
    """skl2onnx's default conversion of a classifier fitted on float64 ends in a ZipMap over
    float64 probabilities, which onnxruntime refuses: zoracle called the model "not a loadable ONNX
    model (truncated, corrupted or not ONNX?)"."""
    with pytest.raises(zo.ArgumentError) as info:
        OnnxClassifier(_zipmap_of(T.DOUBLE, T.DOUBLE))
    message = str(info.value)
    assert "corrupted" not in message, message
    assert "ends in a ZipMap of float64 probabilities, which onnxruntime cannot run" in message
    assert "options={id(clf): {'zipmap': False}}" in message
    # the float32 ZipMap it supports, and the probabilities tensor the advice leads to, are read
    x = np.ones((2, 3))
    probs = OnnxClassifier(_zipmap_of(T.FLOAT, T.FLOAT))(x.astype(np.float32))
    tensor = OnnxClassifier(_softmax_of(T.DOUBLE, [], [h.make_tensor_value_info("p", T.DOUBLE, ["N", 2])]))(x)
    np.testing.assert_allclose(probs, tensor, rtol=1e-6)


def test_another_graph_onnxruntime_refuses_is_not_called_corrupted():
    c = h.make_tensor("c", T.DOUBLE, [2], [1.0, 2.0])  # Add(float, double): a type error in the graph
    bad = _model([h.make_node("Add", ["x", "c"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, ["N", 2])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["N", 2])], [c])
    with pytest.raises(zo.ArgumentError, match=r"is an ONNX graph that onnxruntime refuses \(onnx.checker.check_model"
                                               r"\(model, full_check=True\) names the node\)") as info:
        OnnxClassifier(bad)
    assert "corrupted" not in str(info.value)


def test_an_output_of_another_kind_says_what_is_read():
    """A sequence output was "neither class scores (N, C) nor labels (N,); choose another with
    `output=`" with no other output to choose, and "shape []" for a sequence."""
    seq = h.make_value_info("seq", h.make_sequence_type_proto(h.make_tensor_type_proto(T.DOUBLE, ["N", 2])))
    only = _softmax_of(T.DOUBLE, [h.make_node("SequenceConstruct", ["p"], ["seq"])], [seq])
    with pytest.raises(zo.ArgumentError, match=r"output 'seq' \(seq\(tensor\(double\)\)\) is neither class scores nor "
                                               r"labels: OnnxClassifier reads a float tensor of scores \(N, C\), "
                                               r"integer labels \(N,\) or a ZipMap's .*; the model has no other "
                                               r"output: re-export it with one of these"):
        OnnxClassifier(only)
    both = _softmax_of(T.DOUBLE, [h.make_node("SequenceConstruct", ["p"], ["seq"])],
                       [seq, h.make_tensor_value_info("p", T.DOUBLE, ["N", 2])])
    with pytest.raises(zo.ArgumentError, match=r"choose another output with `output=` \(others: \['p'\]\)"):
        OnnxClassifier(both, output="seq")
    assert OnnxClassifier(both, output="p")(np.ones((1, 3))).shape == (1, 2)
