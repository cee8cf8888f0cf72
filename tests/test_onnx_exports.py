"""OnnxClassifier on models exported the ways users export them: several outputs, session options
that a pickled copy cannot rebuild, a loss exported inside the graph. Reference: onnxruntime called
directly."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import zoracle as zo

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from test_adapter_onnx import TinyCNN as _Net  # noqa: E402  (the adapter tests' small CNN)

from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402


class _FeaturesAndLogits(torch.nn.Module):
    """Returns (features (N, 256), logits (N, 10)), as a model exported for embeddings and scores."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        h = torch.relu(self.net.conv(x)).flatten(1)
        return h, self.net.fc(h)


def _export(model, path, inputs, input_names, output_names, batch_axes=True):
    axes = {n: {0: "batch"} for n in input_names + output_names} if batch_axes else None
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, size=(5, 1, 8, 8)).astype(np.float32)


def test_several_score_like_outputs_are_refused_until_one_is_named(net, x, tmp_path):
    """A model exported with outputs (features (N, 256), logits (N, 10)) was read through its
    first output: 256 'class scores' that were features, and predict gave feature indices."""
    path = _export(_FeaturesAndLogits(net), tmp_path / "two.onnx", (torch.zeros(2, 1, 8, 8),), ["x"],
                   ["features", "logits"])
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    with pytest.raises(zo.ArgumentError, match=r"2 outputs that could be class scores: 'features' \(N, 256\), "
                                               r"'logits' \(N, 10\); choose one with `output=`"):
        OnnxClassifier(path)
    for output in ("logits", 1):
        clf = OnnxClassifier(path, output=output)
        assert clf.num_classes == 10
        np.testing.assert_array_equal(clf(x), direct)


def test_session_options_a_copy_cannot_rebuild_are_refused_when_pickled(net, x, tmp_path):
    """Weights replaced through session_options.add_initializer: the classifier computed with them,
    its pickled copies (process and cluster executors) with the model's own weights, scores 3.06
    apart in silence (SessionOptions do not pickle, and nothing reads back an added initializer)."""
    path = _export(net, tmp_path / "net.onnx", (torch.zeros(2, 1, 8, 8),), ["x"], ["logits"])
    values = np.full(10, 3.0, np.float32)
    bias = ort.OrtValue.ortvalue_from_numpy(values)  # (onnxruntime reads both while the session lives)
    options = ort.SessionOptions()
    options.add_initializer("fc.bias", bias)
    direct = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    clf = OnnxClassifier(path, session_options=options)
    np.testing.assert_array_equal(clf(x), direct)
    with pytest.raises(zo.ArgumentError, match=r"`session_options` change what the model computes in a way its "
                                               r"pickled copies cannot rebuild.*add_initializer"):
        pickle.dumps(clf)
    np.testing.assert_array_equal(clf(x), direct)  # the original still runs
    # options a copy rebuilds (threads, optimization level) pickle as before, and the copy agrees
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    clf = OnnxClassifier(path, session_options=options)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy(x), clf(x))
    assert copy._session_options.intra_op_num_threads == 1
    # a model that draws noise (a smoothed classifier) answers otherwise on every run: not judged, it pickles
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("RandomNormalLike", ["x"], ["noise"]),
                               helper.make_node("Add", ["x", "noise"], ["scores"])], "noisy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])])
    noisy = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    noisy.ir_version = 8
    clf = OnnxClassifier(noisy, session_options=options)
    assert clf(np.zeros((2, 3), np.float32)).std() > 0  # a call moves its generator on from a new session's
    assert pickle.loads(pickle.dumps(clf))(np.zeros((2, 3), np.float32)).shape == (2, 3)


class _WithLoss(torch.nn.Module):
    """The classifier with its cross-entropy exported inside the graph: inputs (x, y), output the loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        return torch.nn.functional.cross_entropy(self.net(x), y, reduction="none")


class _BakedLoss(_WithLoss):
    """The same with the labels folded in as a constant: input x, output the loss per sample."""

    def __init__(self, net, labels):
        super().__init__(net)
        self.register_buffer("labels", labels)

    def forward(self, x):
        return super().forward(x, self.labels)


def test_a_loss_exported_inside_the_model_is_named_with_the_fix(net, tmp_path):
    """A model exported with its loss, inputs (x, labels): the refusal advised folding the labels in
    as constants (which fixes them for every query); with the labels folded in, the loss output was
    called neither scores nor labels without saying what to export instead."""
    path = _export(_WithLoss(net), tmp_path / "loss.onnx", (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)),
                   ["x", "y"], ["loss"])
    assert [i.type for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()] == [
        "tensor(float)", "tensor(int64)"]
    with pytest.raises(zo.ArgumentError, match=r"input 'y' \(int64, \(N,\)\) looks like the labels of a loss computed "
                                               r"inside the model: export the model without its loss"):
        OnnxClassifier(path)
    baked = _export(_BakedLoss(net, torch.arange(2)), tmp_path / "baked.onnx", (torch.zeros(2, 1, 8, 8),), ["x"],
                    ["loss"], batch_axes=False)
    with pytest.raises(zo.ArgumentError, match=r"output 'loss' \(tensor\(float\), shape \[2\]\) is neither class "
                                               r"scores nor labels.*if it is a loss computed inside the model, "
                                               r"export the model without its loss"):
        OnnxClassifier(baked)


def test_a_model_quantized_per_call_is_refused_unless_each_call_holds_one_sample(net, tmp_path):
    """onnxruntime.quantization.quantize_dynamic quantizes activations with the range of the whole call
    (DynamicQuantizeLinear): a sample's scores moved up to 0.027 with its batch mates (the argmax of 4 of
    64 samples), and a CGE estimate through zoracle.adapters.torch.blackbox, whose calls hold many
    samples' rows, was 78% of its norm away from the same estimate made one sample per call."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source = _export(net, tmp_path / "net.onnx", (torch.zeros(2, 1, 8, 8),), ["x"], ["logits"])
    path = tmp_path / "int8.onnx"
    # uint8 weights: onnxruntime 1.18.1 (the [onnx] extra's floor) has no ConvInteger for int8 weights
    quantization.quantize_dynamic(str(source), str(path), weight_type=quantization.QuantType.QUInt8)
    x = np.random.default_rng(0).uniform(0, 1, size=(16, 1, 8, 8)).astype(np.float32)
    x[1] *= 20  # one bright sample sets the range of the call
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    alone = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    assert np.abs(session.run(None, {"x": x})[0] - alone).max() > 1e-3  # the reference: calls mix samples
    for batch_size in (None, 4):
        with pytest.raises(zo.ArgumentError, match=r"quantizes its activations per call \(DynamicQuantizeLinear node "
                                                   r".*pass batch_size=1 .*or quantize it with quantize_static"):
            OnnxClassifier(path, batch_size=batch_size)
    clf = OnnxClassifier(path, batch_size=1)
    np.testing.assert_array_equal(clf(x), alone)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf))(x[:3]), alone[:3])
    fixed = _export(net, tmp_path / "fixed.onnx", (torch.zeros(4, 1, 8, 8),), ["x"], ["logits"], batch_axes=False)
    quantization.quantize_dynamic(str(fixed), str(tmp_path / "fixed8.onnx"), weight_type=quantization.QuantType.QUInt8)
    with pytest.raises(zo.ArgumentError, match=r"and on the padding of its fixed batch of 4: re-export the model with "
                                               r"a dynamic batch axis and pass batch_size=1"):
        OnnxClassifier(tmp_path / "fixed8.onnx", batch_size=1)


def test_an_input_declared_without_a_shape_is_not_called_a_scalar():
    """onnx.helper.make_tensor_value_info("x", FLOAT, None) declares no shape; onnxruntime shows it as []
    and the refusal said "input 'x' is a scalar" of an input that takes (N, 4). Declared as the message
    says, the model runs and agrees with onnxruntime called directly."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    direct = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with pytest.raises(zo.ArgumentError, match=r"input 'x' declares no shape \(its rank is unknown\).*"
                                               r"model.graph.input\[0\].CopyFrom\(onnx.helper.make_tensor_value_info"):
        OnnxClassifier(model)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]))
    np.testing.assert_array_equal(OnnxClassifier(model)(x), direct)
