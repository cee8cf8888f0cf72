"""OnnxClassifier: agreement with the exporting framework, input checks, budgets, providers."""

from __future__ import annotations

import gc
import os
import pickle
import re
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from zoracle.adapters.onnx import OnnxClassifier, QueryBudgetExceeded, default_providers  # noqa: E402


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _export(model, path, batch=None):
    example = torch.zeros(batch or 2, 1, 8, 8)
    kwargs = {} if batch else {"dynamic_axes": {"x": {0: "batch"}, "logits": {0: "batch"}}}
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamo=False, opset_version=17, **kwargs)
    return path


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def onnx_path(torch_model, tmp_path_factory):
    return _export(torch_model, tmp_path_factory.mktemp("onnx") / "cnn.onnx")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(0, 1, size=(37, 1, 8, 8)).astype(np.float32)


def test_agrees_with_torch(torch_model, onnx_path, batch):
    clf = OnnxClassifier(onnx_path)
    got = clf(batch)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(batch)).numpy()
    assert got.shape == (37, 10)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert clf.input_name == "x" and clf.input_shape == (None, 1, 8, 8) and clf.input_dtype == np.float32
    assert clf.output_kind == "scores" and clf.num_classes == 10
    assert clf.queries == 37 and clf.calls == 1
    np.testing.assert_array_equal(clf.predict(batch), want.argmax(1))
    assert clf.queries == 74


def test_fixed_batch_axis_is_split_and_padded(torch_model, tmp_path, batch):
    clf = OnnxClassifier(_export(torch_model, tmp_path / "fixed.onnx", batch=8))
    assert clf.input_shape[0] == 8
    got = clf(batch)  # 37 samples -> 5 calls of 8, the last padded
    with torch.no_grad():
        want = torch_model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert clf.calls == 5 and clf.queries == 37
    np.testing.assert_allclose(clf(batch[:3]), want[:3], atol=1e-5, rtol=1e-5)


def test_dynamic_batch_chunked(onnx_path, batch):
    clf = OnnxClassifier(onnx_path, batch_size=10)
    np.testing.assert_allclose(clf(batch), OnnxClassifier(onnx_path)(batch), atol=1e-6)
    assert clf.calls == 4


def test_sklearn_model_via_skl2onnx():
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    X, y = X[:600], y[:600]
    model = LogisticRegression(max_iter=200).fit(X, y)
    # default conversion: labels + a ZipMap (list of dicts) probability output
    clf = OnnxClassifier(skl2onnx.to_onnx(model, X[:1]))
    np.testing.assert_allclose(clf(X[:50]), model.predict_proba(X[:50]), atol=1e-4)
    np.testing.assert_array_equal(clf.predict(X[:50]), model.predict(X[:50]))
    assert clf.num_classes == 10
    # a plain tensor probability output, and the label output chosen explicitly
    proto = skl2onnx.to_onnx(model, X[:1], options={id(model): {"zipmap": False}})
    probs = OnnxClassifier(proto)
    assert probs.output_name == "probabilities" and probs.num_classes == 10
    np.testing.assert_allclose(probs(X[:50]), model.predict_proba(X[:50]), atol=1e-4)
    labels = OnnxClassifier(proto.SerializeToString(), output="label")
    assert labels.output_kind == "labels"
    np.testing.assert_array_equal(labels(X[:50]), model.predict(X[:50]))
    np.testing.assert_array_equal(labels.predict(X[:50]), model.predict(X[:50]))
    with pytest.raises(zo.ArgumentError, match="not a model output"):
        OnnxClassifier(proto, output="nope")
    with pytest.raises(zo.ArgumentError, match=r"shape \(N, 64\).*got \(3, 8, 8\)"):
        probs(X[:3].reshape(3, 8, 8))


def test_rejects_bad_queries(onnx_path, batch):
    clf = OnnxClassifier(onnx_path)
    with pytest.raises(zo.ArgumentError, match=r"shape \(N, 1, 8, 8\).*got \(37, 1, 8, 7\).*axis 3"):
        clf(batch[..., :7])
    with pytest.raises(zo.ArgumentError, match=r"add a batch axis"):
        clf(batch[0])
    with pytest.raises(zo.ArgumentError, match=r"dtype float32, got float64.*astype"):
        clf(batch.astype(np.float64))
    bad = batch.copy()
    bad[5, 0, 2, 2] = np.nan
    with pytest.raises(zo.ArgumentError, match="sample 5 .* NaN or inf"):
        clf(bad)
    with pytest.raises(zo.ArgumentError, match="no samples"):
        clf(batch[:0])
    with pytest.raises(zo.ArgumentError, match=r"NumPy array, got torch.Tensor; convert it \(x.detach\(\).cpu\(\).numpy\(\)\)"):
        clf(torch.from_numpy(batch))
    pd = pytest.importorskip("pandas")
    with pytest.raises(zo.ArgumentError, match=r"got pandas.DataFrame; convert it \(x.to_numpy\(\)\)"):
        clf(pd.DataFrame(batch.reshape(len(batch), -1)))  # its hint was x.get(), which a DataFrame refuses
    assert clf.queries == 0 and clf.calls == 0  # nothing reached onnxruntime
    # cast=True accepts another float dtype
    cast = OnnxClassifier(onnx_path, cast=True)
    np.testing.assert_allclose(cast(batch.astype(np.float64)), clf(batch), atol=1e-6)
    huge = batch.astype(np.float64)
    huge[3, 0, 0, 0] = 1e300  # finite, but inf as float32: named as such, not as "NaN or inf"
    with pytest.raises(zo.ArgumentError, match=r"beyond the float32 range \(\|x\| up to 1e\+300\)"):
        cast(huge)


def test_rejects_bad_files(onnx_path, tmp_path):
    with pytest.raises(zo.ArgumentError, match="no such ONNX file"):
        OnnxClassifier(tmp_path / "missing.onnx")
    data = onnx_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(zo.ArgumentError, match="not a loadable ONNX model"):
        OnnxClassifier(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(zo.ArgumentError, match="not a loadable ONNX model"):
        OnnxClassifier(text)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(zo.ArgumentError, match="empty"):
        OnnxClassifier(empty)
    with pytest.raises(zo.ArgumentError, match="directory"):
        OnnxClassifier(tmp_path)
    with pytest.raises(zo.ArgumentError, match="must be a path"):
        OnnxClassifier(3.5)


def test_query_budget(onnx_path, batch):
    clf = OnnxClassifier(onnx_path, budget=50)
    clf(batch[:30])
    assert clf.remaining == 20
    with pytest.raises(QueryBudgetExceeded, match="needs 30 queries but only 20 of 50"):
        clf(batch[:30])
    assert clf.queries == 30  # the refused call did not run
    clf(batch[:20])
    assert clf.remaining == 0
    with pytest.raises(zo.ZoracleError):
        clf(batch[:1])
    clf.reset_queries()
    assert clf.queries == 0 and clf(batch[:1]).shape == (1, 10)
    with pytest.raises(zo.ArgumentError, match="budget"):
        OnnxClassifier(onnx_path, budget=-1)


def test_providers(onnx_path):
    clf = OnnxClassifier(onnx_path)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    expected = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    assert clf.providers[0] == expected == default_providers()[0]
    assert OnnxClassifier(onnx_path, providers=["CPUExecutionProvider"]).providers == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(zo.ArgumentError, match="not available.*onnx-gpu"):
            OnnxClassifier(onnx_path, providers=["CUDAExecutionProvider"])


def test_malformed_providers_are_named(onnx_path, capfd):
    """providers=5 raised a bare "TypeError: 'int' object is not iterable"; a (name,) tuple or a
    (name, "opts") pair passed the check, and onnxruntime printed "EP Error" and fell back to the CPU."""
    for bad, match in ((5, r"`providers` must be a list of execution provider names.*got int 5"),
                       ([("CPUExecutionProvider",)], r"`providers`: \('CPUExecutionProvider',\) must be a name or a "
                                                     r"\(name, options dict\) pair"),
                       ([("CPUExecutionProvider", "x")], r"must be a name or a \(name, options dict\) pair")):
        with pytest.raises(zo.ArgumentError, match=match):
            OnnxClassifier(onnx_path, providers=bad)
    assert "EP Error" not in capfd.readouterr().out
    # the reference: a (name, options) pair and a tuple of names still work
    assert OnnxClassifier(onnx_path, providers=[("CPUExecutionProvider", {})]).providers == ["CPUExecutionProvider"]
    assert OnnxClassifier(onnx_path, providers=("CPUExecutionProvider",)).providers == ["CPUExecutionProvider"]


def test_pickle_roundtrip(onnx_path, batch):
    clf = OnnxClassifier(onnx_path, budget=100)
    clf(batch[:10])
    twin = pickle.loads(pickle.dumps(clf))
    assert twin.queries == 10 and twin.budget == 100
    np.testing.assert_array_equal(twin(batch[:5]), clf(batch[:5]))
    assert twin.queries == clf.queries == 20  # copies share one counter
    assert "cnn.onnx" in repr(clf) and "queries=20/100" in repr(clf)


def test_a_pickled_copy_keeps_the_session_options_and_threads_count_every_query(onnx_path, batch):
    """A copy (what process and cluster workers run) dropped ``session_options``: its onnxruntime
    optimized the graph the original did not, and its scores differed in the last bits; the
    counter lost queries when threads charged it at once."""
    import threading

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    clf = OnnxClassifier(onnx_path, session_options=so)
    twin = pickle.loads(pickle.dumps(clf))
    got = twin.session.get_session_options()
    assert got.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert got.intra_op_num_threads == 1
    np.testing.assert_array_equal(twin(batch[:7]), clf(batch[:7]))
    fresh = OnnxClassifier(onnx_path, budget=4 * 300)

    def hammer():
        for _ in range(300):
            fresh(batch[:1])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fresh.queries == 4 * 300 and fresh.remaining == 0


def test_works_with_smoothing(onnx_path):
    from zoracle import smoothing

    clf = OnnxClassifier(onnx_path)
    x = np.full((2, 1, 8, 8), 0.5, np.float32)
    res = smoothing.certify_batch(clf, x, sigma=0.25, n0=10, n=200, batch_size=1000, rng=0)
    assert clf.queries == 2 * 210 and clf.calls == 2  # noise batched: one call per phase
    assert res.predictions.shape == (2,)


# ----------------------------------------------------------------------------- hardening (issue 11)
def _graph_model(inputs, batch):
    """A tiny ONNX model: the sum of ``inputs`` (each ``(batch, 10)`` float32), as scores."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    vi = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 10]) for name in inputs]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 10])
    node = (helper.make_node("Sum", list(inputs), ["scores"]) if len(inputs) > 1
            else helper.make_node("Identity", list(inputs), ["scores"]))
    graph = helper.make_graph([node], "g", vi, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _FailingSecondRun:
    """Wraps a session: the second ``run`` fails (a device error halfway through a call)."""

    def __init__(self, session):
        self.session, self.n = session, 0

    def run(self, *args, **kwargs):
        self.n += 1
        if self.n == 2:
            raise RuntimeError("device lost")
        return self.session.run(*args, **kwargs)


def test_budget_counts_failed_calls_and_is_shared_by_copies(torch_model, tmp_path, batch):
    clf = OnnxClassifier(_export(torch_model, tmp_path / "fixed8.onnx", batch=8), budget=100)
    clf.session = _FailingSecondRun(clf.session)
    with pytest.raises(RuntimeError, match="device lost"):
        clf(batch[:20])  # 3 calls of 8: the second fails
    assert clf.queries == 20 and clf.remaining == 80  # the failed call is counted
    shared = OnnxClassifier(_export(torch_model, tmp_path / "dyn.onnx"), budget=10)
    a, b = pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(shared))
    a(batch[:6])
    with pytest.raises(QueryBudgetExceeded, match="needs 6 queries but only 4 of 10"):
        b(batch[:6])
    assert shared.queries == a.queries == b.queries == 6
    b(batch[:4])
    with pytest.raises(QueryBudgetExceeded):
        shared(batch[:1])
    ledger = shared._ledger.path
    assert os.stat(ledger).st_mode & 0o077 == 0
    del shared
    gc.collect()
    assert not os.path.exists(ledger)  # removed with the original
    with pytest.raises(zo.ZoracleError, match="cannot reach the shared query counter"):
        a(batch[:1])  # a budgeted copy never runs without the shared count


def test_huge_fixed_batch_axis_is_rejected_at_construction():
    with pytest.raises(zo.ArgumentError, match=r"fixed batch axis of 10000000 samples.*dynamic batch axis"):
        OnnxClassifier(_graph_model(["x"], 10_000_000))
    small = OnnxClassifier(_graph_model(["x"], 4))
    assert small(np.ones((2, 10), np.float32)).shape == (2, 10) and small.queries == 2


def test_two_input_model_is_rejected_at_construction():
    model = _graph_model(["a", "b"], None)
    for kwargs in ({}, {"input": "a"}):
        with pytest.raises(zo.ArgumentError, match=r"2 inputs \['a', 'b'\].*single input"):
            OnnxClassifier(model, **kwargs)


def test_no_cuda_attempt_without_a_cuda_device(onnx_path, monkeypatch, capfd):
    """onnxruntime-gpu lists CUDA even on a machine without one: check the device instead."""
    import zoracle.adapters.onnx as zonnx

    monkeypatch.setattr(zonnx.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(zonnx, "_cuda_device_present", lambda: False, raising=False)
    capfd.readouterr()
    assert default_providers() == ["CPUExecutionProvider"]
    clf = OnnxClassifier(onnx_path)
    assert clf.providers == ["CPUExecutionProvider"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_model_saved_with_external_data_loads_by_path_from_any_directory(torch_model, onnx_path, batch, tmp_path,
                                                                           monkeypatch):
    # a large export keeps its weights in model.onnx.data beside the file: read by path, the
    # classifier must find them there (whatever the working directory) and its pickled copies
    # must carry them; a missing data file is an error that says so
    onnx = pytest.importorskip("onnx")
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save_model(onnx.load(str(onnx_path)), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (folder / "model.onnx.data").stat().st_size > 0
    monkeypatch.chdir(tmp_path)
    clf = OnnxClassifier(folder / "model.onnx")
    with torch.no_grad():
        want = torch_model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(clf(batch), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf))(batch), want, rtol=1e-5, atol=1e-5)
    (folder / "model.onnx.data").unlink()
    with pytest.raises(zo.ArgumentError, match="external data"):
        OnnxClassifier(folder / "model.onnx")


def test_external_data_over_protobufs_limit_runs_from_its_path(torch_model, onnx_path, batch, tmp_path, monkeypatch):
    """A model of 2 GiB or more can only be saved with external data, and protobuf cannot
    serialize it into bytes: it was refused ("could not be read next to it: EncodeError", the
    data file beside it). It runs from its absolute path (pickled copies carry the path); given
    as bytes or a ModelProto without its data, the error says what is missing (it said
    "corrupted"); a ModelProto too large to serialize is an ArgumentError naming the fix."""
    onnx = pytest.importorskip("onnx")
    from zoracle.adapters import onnx as zonnx

    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save_model(onnx.load(str(onnx_path)), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(batch)).numpy()
    monkeypatch.setattr(zonnx, "_PROTO_LIMIT", 1024)  # the limit, scaled down to this model
    monkeypatch.chdir(tmp_path)
    clf = OnnxClassifier("export/model.onnx")
    assert clf._model == str(folder / "model.onnx")  # onnxruntime reads the files from there
    np.testing.assert_allclose(clf(batch), want, rtol=1e-5, atol=1e-5)
    monkeypatch.chdir(folder)  # a copy, unpickled elsewhere
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf))(batch), want, rtol=1e-5, atol=1e-5)
    state = pickle.dumps(clf)
    folder.rename(tmp_path / "moved")  # a copy that cannot reach the files is told where they must be
    with pytest.raises(zo.ArgumentError, match="could not be opened from .*keep the .onnx file and its .data files"):
        pickle.loads(state)
    (tmp_path / "moved").rename(folder)
    for given in ((folder / "model.onnx").read_bytes(), onnx.load(str(folder / "model.onnx"), load_external_data=False)):
        with pytest.raises(zo.ArgumentError, match="external data files, which bytes and a ModelProto do not carry"):
            OnnxClassifier(given)

    class TooLarge:
        def SerializeToString(self):
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB: 2400000000")

    with pytest.raises(zo.ArgumentError, match="save_as_external_data=True"):
        OnnxClassifier(TooLarge())


def test_predict_refuses_nan_scores():
    """argmax stops at the first NaN: a row of NaN scores became class 0, and
    smoothing.certify(clf.predict, ...) certified a prediction made of such votes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(np.array([[1, -1, 0.5], [0, 2, 1.5]], np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["s"]), helper.make_node("Log", ["s"], ["y"])],
                              "g", [x_info], [y_info], [w])
    clf = OnnxClassifier(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert clf.predict(np.array([[1.0, 1.0]], np.float32)).tolist() == [2]  # log(1, 1, 2)
    with pytest.raises(zo.OracleError, match="sample 1 of 2: NaN scores") as info:
        clf.predict(np.array([[1.0, 1.0], [1.0, 0.0]], np.float32))  # log(1, -1, 0.5): NaN in column 1 only
    assert info.value.value[0] == 0 and np.isnan(info.value.value[1]) and info.value.value[2] == pytest.approx(np.log(0.5))


def test_an_operator_no_provider_runs_is_not_called_a_corrupted_file(tmp_path):
    # onnxruntime's CPU provider has no float64 convolution: the model is valid, and the error
    # must say what is wrong with it rather than blame the file
    class Conv64(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x).flatten(1)

    path = tmp_path / "conv64.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Conv64().double(), (torch.zeros(2, 1, 4, 4, dtype=torch.float64),), str(path),
                          input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    with pytest.raises(zo.ArgumentError, match="cannot run") as err:
        OnnxClassifier(path)
    assert "corrupted" not in str(err.value)


@pytest.mark.parametrize("newer", ["opset", "ir_version"])
def test_a_model_newer_than_this_onnxruntime_is_named_so_not_called_corrupted(newer):
    """A valid model stamped with an opset (or IR version) this onnxruntime does not run yet, as
    a newer torch exports (torch 2.13: opset 20, which onnxruntime 1.16 refuses): the error called
    it "truncated, corrupted or not ONNX?" and cut onnxruntime's reason, which follows a long C++
    signature, at 300 characters. It names the versions and the way out."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(_graph_model(["x"], "batch"))
    if newer == "opset":
        model.opset_import[0].version = 99
    else:
        model.ir_version = 99
    with pytest.raises(zo.ArgumentError) as err:
        OnnxClassifier(model.SerializeToString())
    msg = str(err.value)
    assert "corrupted" not in msg
    assert ("opset 99, newer than onnxruntime" if newer == "opset" else "IR version 99, newer than onnxruntime") in msg
    assert "upgrade onnxruntime" in msg


def test_one_column_outputs_are_labels_or_refused(tmp_path):
    """An (N, 1) output was read as class scores: predict() returned 0 for every input (the
    argmax over one column), for an integer label column as for a binary model's one logit."""

    class LabelColumn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 3)

        def forward(self, x):
            return self.fc(x.flatten(1)).argmax(1, keepdim=True)

    class OneLogit(LabelColumn):
        def forward(self, x):
            return self.fc(x.flatten(1))[:, :1]

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    labels = OnnxClassifier(_export(LabelColumn().eval(), tmp_path / "column.onnx"))
    want = ort.InferenceSession(str(tmp_path / "column.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0][:, 0]
    assert labels.output_kind == "labels" and labels.num_classes is None
    assert len(set(want.tolist())) > 1 and labels.predict(x).tolist() == want.tolist()
    assert labels(x).shape == (16,)
    with pytest.raises(zo.ArgumentError, match=r"output 'logits' has one score column .*torch.cat\(\[-z, z\], 1\)"):
        OnnxClassifier(_export(OneLogit().eval(), tmp_path / "logit.onnx"))

    class LogitAndLabel(LabelColumn):  # a one-logit score beside its label output: the label is picked
        def forward(self, x):
            z = self.fc(x.flatten(1))
            return z[:, :1], z.argmax(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(LogitAndLabel().eval(), (torch.zeros(2, 1, 8, 8),), str(tmp_path / "both.onnx"),
                          input_names=["x"], output_names=["score", "label"], dynamo=False,
                          dynamic_axes={"x": {0: "b"}, "score": {0: "b"}, "label": {0: "b"}}, opset_version=17)
    both = OnnxClassifier(tmp_path / "both.onnx")
    want = ort.InferenceSession(str(tmp_path / "both.onnx"), providers=["CPUExecutionProvider"]).run(["label"], {"x": x})[0]
    assert both.output_name == "label" and both.predict(x).tolist() == want.tolist()


def test_an_output_with_the_batch_axis_second_is_refused_not_read_transposed():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Transpose", ["z"], ["scores"], perm=[1, 0])],
        "class_major", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [3, "N"])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    direct = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert direct.shape == (3, 3)  # (classes, samples): with 3 samples it passed for (N, C) scores, transposed
    with pytest.raises(zo.ArgumentError, match=r"batch axis 'N' of input 'x' second"):
        OnnxClassifier(model)


def test_cast_given_as_text_is_refused(onnx_path):
    """OnnxClassifier(cast="False") cast inputs: bool("False") is True."""
    with pytest.raises(zo.ArgumentError, match="`cast` must be True or False, got 'False'"):
        OnnxClassifier(onnx_path, cast="False")


@pytest.mark.parametrize("options", [5, {"intra_op_num_threads": 1}, "fast"])
def test_session_options_of_another_type_are_named_not_blamed_on_the_model(onnx_path, options):
    """A dict or a number given as session_options was reported as "`model` ... is not a
    loadable ONNX model (truncated, corrupted or not ONNX?)"; the model was fine."""
    with pytest.raises(zo.ArgumentError, match="`session_options` must be an onnxruntime.SessionOptions"):
        OnnxClassifier(onnx_path, session_options=options)


def test_external_weights_without_the_onnx_package_name_it(tmp_path, monkeypatch):
    """With onnxruntime but not onnx installed, a model keeping its weights in a .data file was
    "not a loadable ONNX model (truncated, corrupted or not ONNX?)" outside its own folder."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    W = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [W])
    path = str(tmp_path / "m.onnx")
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path,
                    save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    np.testing.assert_allclose(OnnxClassifier(path)(np.ones((1, 4), np.float32)), [[18, 22, 26]])
    monkeypatch.chdir(str(tmp_path.parent))
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx not installed
    with pytest.raises(zo.ArgumentError, match="external data files, which zoracle reads in with the onnx package"):
        OnnxClassifier(path)


@pytest.mark.parametrize("words", [
    "[ONNXRuntimeError] : 1 : FAIL : Deserialize tensor W failed.GetFileLength for ./m.onnx.data "
    "failed:Invalid fd was supplied: -1",  # onnxruntime 1.16 to 1.18
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: filesystem error: cannot get "
    "file size: No such file or directory [m.onnx.data]",  # onnxruntime 1.19
], ids=["1.16", "1.19"])
def test_external_weights_without_the_onnx_package_are_named_in_older_onnxruntimes_words(tmp_path, monkeypatch,
                                                                                        words):
    """onnxruntime 1.16 and 1.19 word a missing .data file without "external data"; zoracle called that
    model "truncated, corrupted or not ONNX?" (checked against onnxruntime 1.16 and 1.19 themselves;
    this test gives any onnxruntime those messages)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph_model(["x"], "batch"))

    class Fail(Exception):
        pass

    def session(*args, **kwargs):
        raise Fail(words)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx not installed
    with pytest.raises(zo.ArgumentError, match="external data files, which zoracle reads in with the onnx package"):
        OnnxClassifier(str(path))


def test_a_float16_model_through_smoothing_is_told_to_cast(tmp_path):
    """smoothing draws float32 noise: a float16 model refused it with "use x.astype(np.float16)",
    and smoothing refused float16 points, so the two messages sent a user in a circle. The way
    out, cast=True, comes first, and the astype advice says smoothing cannot take it."""
    import warnings

    from zoracle import smoothing

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).half().eval()
    path = str(tmp_path / "f16.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 8).half(),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False, opset_version=17)
    x = np.random.default_rng(0).normal(size=8).astype(np.float32)
    with pytest.raises(zo.ArgumentError, match=r"use OnnxClassifier\(\.\.\., cast=True\), or x\.astype\(np\.float16\) "
                                               r"\(not through zoracle\.smoothing"):
        smoothing.certify(OnnxClassifier(path), x, sigma=0.25, n0=10, n=100, rng=0)
    got = smoothing.certify(OnnxClassifier(path, cast=True), x, sigma=0.25, n0=10, n=100, rng=0)
    assert got is not None


def test_a_model_without_a_batch_axis_is_refused_at_construction(tmp_path):
    """A model exported for one (3, 16, 16) image was read as a fixed batch of 3 samples of
    (16, 16): a call on one image spent 3 queries and failed with "returned shape (1, 5),
    expected (3, C)", naming no fix."""

    class OneImage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, v):
            return self.fc(self.conv(v.unsqueeze(0)).mean((2, 3)))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(OneImage().eval(), (torch.zeros(3, 16, 16),), str(tmp_path / "one.onnx"),
                          input_names=["img"], output_names=["o"], dynamo=False, opset_version=17)
    declared = ort.InferenceSession(str(tmp_path / "one.onnx"), providers=["CPUExecutionProvider"]).get_outputs()[0].shape
    assert declared == [1, 5]  # the output's first axis is not the input's (3)
    with pytest.raises(zo.ArgumentError, match=r"input 'img' of shape \(3, 16, 16\) has no batch axis.*dynamic_axes"):
        OnnxClassifier(tmp_path / "one.onnx")
    # a fixed batch axis the outputs share still loads
    assert OnnxClassifier(_graph_model(["x"], 4)).input_shape == (4, 10)


def _fixed_model_with_outputs(batch, outputs):
    """Input x of fixed shape (batch, 10); "scores" = x, declared as ``outputs["scores"]``, and a
    constant "aux" of shape ``outputs["aux"]`` (if given)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", ["x"], ["scores"])]
    outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, outputs["scores"])]
    if "aux" in outputs:
        n = outputs["aux"][0]
        nodes.append(helper.make_node("Constant", [], ["aux"], value=helper.make_tensor(
            "c", TensorProto.FLOAT, [n], [0.0] * n)))
        outs.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, outputs["aux"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 10])], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_fixed_batch_axis_that_one_output_of_two_starts_loads():
    """An auxiliary output without the batch axis (a constant of 7) beside the scores: the
    input's fixed first axis starts one output, so it is a batch axis."""
    clf = OnnxClassifier(_fixed_model_with_outputs(4, {"scores": [4, 10], "aux": [7]}), output="scores")
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    np.testing.assert_array_equal(clf(x), x)  # scores = x (Identity): the reference
    np.testing.assert_array_equal(clf(x[:3]), x[:3])  # padded to the fixed batch, the padding dropped


class _FeaturesFirst(torch.nn.Module):
    """Takes its samples along the SECOND axis: (4, N) -> (N, 3)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.t())


def test_a_batch_axis_that_is_not_first_is_refused_not_cut_along_the_features(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features_first.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_FeaturesFirst().eval(), (torch.zeros(4, 2),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {1: "batch"}, "logits": {0: "batch"}},
                          dynamo=False, opset_version=17)
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)  # 10 samples in the model's layout
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert direct.shape == (10, 3)
    # axis 0 (4 features) was taken for a fixed batch axis: 4 of the 10 rows came back, or (x.T) rows of
    # features cut into "batches" of 4, silently
    with pytest.raises(zo.ArgumentError, match=r"batch axis 'batch' at axis 1"):
        OnnxClassifier(path)


def test_an_auxiliary_output_starting_with_a_later_input_axis_does_not_refuse_the_model(tmp_path):
    """Input ("N", "T"), logits ("N", 3) and a second output laid out ("T", "N") (an RNN's states,
    sequence-first): the batch axis is the first, as the logits show; the model was refused, even
    with output="logits" named."""
    pytest.importorskip("onnx")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(1, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1), helper.make_node("MatMul", ["s", "W"], ["logits"]),
         helper.make_node("Transpose", ["x"], ["hidden"], perm=[1, 0])],
        "aux", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["T", "N"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], np.int64), "axes")])
    path = tmp_path / "aux.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    for clf in (OnnxClassifier(path), OnnxClassifier(path, output="logits")):
        assert clf.output_name == "logits"
        np.testing.assert_array_equal(clf(x), direct)
        assert clf.predict(x).tolist() == direct.argmax(1).tolist()


def test_an_output_whose_class_axis_follows_the_chunk_size_is_named_not_a_numpy_error():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # scores = x @ x.T: (n, n), declared (N, C); in chunks of batch_size its class axis changes with the chunk
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "xt"], ["scores"])],
        "gram", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "C"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    direct = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": c})[0].shape for c in (x[:3], x[3:])]
    assert direct == [(3, 3), (2, 2)]  # the reference: ragged chunks
    clf = OnnxClassifier(model, batch_size=3)
    with pytest.raises(zo.ZoracleError, match=r"returned shapes \[\(3, 3\), \(2, 2\)\] for chunks of 3 samples: its "
                                              r"trailing axes change with the batch"):
        clf(x)


def test_cuda_advice_replaces_the_cpu_onnxruntime(onnx_path):
    """The README installs `.[all]`, whose 'onnx' and 'apps' extras bring the CPU onnxruntime; the
    advice for a CUDA provider said "install onnxruntime-gpu, not next to onnxruntime: pip install
    -e '.[onnx-gpu]'", which installs it next to onnxruntime (pip keeps both: two distributions
    writing one `onnxruntime` package)."""
    from importlib import metadata

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA")
    try:
        metadata.distribution("onnxruntime")
    except metadata.PackageNotFoundError:
        pytest.skip("no CPU onnxruntime distribution here")
    cpu_extras = sorted({r.split("extra == ")[1].strip('"\' ') for r in metadata.requires("zoracle") or []
                         if r.startswith("onnxruntime") and not r.startswith("onnxruntime-gpu") and "extra ==" in r})
    assert cpu_extras, "the installed zoracle declares no extra with the CPU onnxruntime"
    with pytest.raises(zo.ArgumentError) as info:
        OnnxClassifier(onnx_path, providers=["CUDAExecutionProvider"])
    message = str(info.value)
    # following the advice leaves no CPU onnxruntime: it is uninstalled before onnxruntime-gpu comes in
    assert "pip uninstall -y onnxruntime &&" in message and "onnx-gpu" in message.split("pip uninstall -y onnxruntime")[1]


@pytest.mark.parametrize("opset", [13, 17])
def test_model_exported_in_training_mode_is_refused(opset):
    # a model left in train mode and exported with training=PRESERVE: its BatchNormalization uses each
    # call's batch statistics (onnxruntime called directly: a sample's scores change with its batch mates)
    # and its Dropout drops at random; the eval-mode export of the same model is accepted
    import io

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Dropout(0.2),
                                torch.nn.Linear(6, 3)).train()
    x = torch.randn(5, 6)

    def export(training):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=opset, training=training,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return f.getvalue()

    train_bytes = export(torch.onnx.TrainingMode.PRESERVE)
    sess = ort.InferenceSession(train_bytes, providers=["CPUExecutionProvider"])
    whole, alone = sess.run(None, {"x": x.numpy()})[0][:1], sess.run(None, {"x": x.numpy()[:1]})[0]
    assert np.abs(whole - alone).max() > 1e-2  # the exported graph couples the samples of a call
    with pytest.raises(zo.ArgumentError, match=r"training mode: BatchNormalization node .*model\.eval\(\)"):
        OnnxClassifier(train_bytes)
    clf = OnnxClassifier(export(torch.onnx.TrainingMode.EVAL))
    with torch.no_grad():
        np.testing.assert_allclose(clf(x.numpy()), model.eval()(x).numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn 1.9 deprecates SVC's probA_ (skl2onnx reads it)
@pytest.mark.parametrize("zipmap", [True, False])
def test_binary_svc_without_probabilities_never_predicts_the_other_class(zipmap):
    # skl2onnx's binary SVC(probability=False): onnxruntime writes its two score columns in the opposite
    # order of the labels (sklearn-onnx#990); predict() must not return the other class for every sample
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import SVC

    X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int)
    svc = SVC().fit(X, y)
    proto = skl2onnx.to_onnx(svc, X[:1], options={id(svc): {"zipmap": zipmap}})
    clf = OnnxClassifier(proto)
    try:
        got = clf.predict(X)
    except zo.ZoracleError as exc:
        assert "disagrees with the model's own label output" in str(exc) and "output=" in str(exc)
    else:
        np.testing.assert_array_equal(got, svc.predict(X))
    labels = OnnxClassifier(proto, output=0)  # the label output, as the message says
    np.testing.assert_array_equal(labels.predict(X), svc.predict(X))
    calibrated = SVC(probability=True, random_state=0).fit(X, y)  # Platt probabilities: no check
    proto = skl2onnx.to_onnx(calibrated, X[:1], options={id(calibrated): {"zipmap": zipmap}})
    probs = OnnxClassifier(proto)  # (their argmax may differ from the labels on a few samples)
    np.testing.assert_allclose(probs(X), calibrated.predict_proba(X), atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn 1.9 deprecates SVC's probA_ (skl2onnx reads it)
@pytest.mark.parametrize("n_classes", [2, 4])
def test_an_svc_with_string_labels_is_refused_with_advice_that_works(n_classes):
    # string class labels ("neg", "pos"): the refusal advised output='label', which OnnxClassifier then
    # refused ("neither class scores (N, C) nor labels (N,)"); it names the export that works instead
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import SVC

    X = np.random.default_rng(0).normal(size=(90, 4)).astype(np.float32)
    names = np.array(["neg", "pos", "third", "fourth"])
    y = names[np.argmax(X[:, :n_classes], axis=1)]
    svc = SVC(decision_function_shape="ovo").fit(X, y)
    proto = skl2onnx.to_onnx(svc, X[:1], options={id(svc): {"zipmap": False}})
    with pytest.raises(zo.ZoracleError) as info:
        OnnxClassifier(proto).predict(X)
    message = str(info.value)
    for advised in re.findall(r"output=('\w+')", message):  # each output it advises is one OnnxClassifier takes
        OnnxClassifier(proto, output=advised.strip("'")).predict(X)
    assert "CalibratedClassifierCV(SVC(), ensemble=False)" in message
    from sklearn.calibration import CalibratedClassifierCV

    calibrated = CalibratedClassifierCV(SVC(), ensemble=False).fit(X, y)  # the advice, followed
    proto = skl2onnx.to_onnx(calibrated, X[:1], options={id(calibrated): {"zipmap": False}})
    np.testing.assert_allclose(OnnxClassifier(proto)(X), calibrated.predict_proba(X), atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn 1.9 deprecates SVC's probA_ (skl2onnx reads it)
def test_binary_svc_first_called_on_its_boundary_is_still_checked():
    # a first call whose samples all lie on the decision boundary (tied scores, -0 and 0) checks nothing:
    # the calls after it still compare the columns with the labels, and never predict the other class
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import SVC

    X = np.array([[-2.0], [-1.0], [1.0], [2.0]], np.float32)
    svc = SVC(kernel="linear").fit(X, [0, 0, 1, 1])
    assert svc.decision_function([[0.0]])[0] == 0  # x = 0 is on the boundary
    clf = OnnxClassifier(skl2onnx.to_onnx(svc, X[:1], options={id(svc): {"zipmap": False}}))
    clf(np.zeros((2, 1), np.float32))
    x = np.array([[-1.5], [-0.5], [0.5], [1.5]], np.float32)
    try:
        got = clf.predict(x)
    except zo.ZoracleError as exc:
        assert "disagrees with the model's own label output" in str(exc)
    else:
        np.testing.assert_array_equal(got, svc.predict(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn 1.9 deprecates SVC's probA_ (skl2onnx reads it)
@pytest.mark.parametrize("n_classes", [3, 4])
def test_multiclass_one_vs_one_svc_scores_are_refused_by_name(n_classes):
    # SVC(decision_function_shape="ovo") without probabilities: onnxruntime's SVMClassifier writes the
    # n(n-1)/2 pairwise decision values as its scores (6 columns for 4 classes). The label check indexed
    # the classes with their argmax (IndexError: index 4 is out of bounds), or, for 3 classes, blamed
    # a binary SVM's swapped columns
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import SVC

    X = np.random.default_rng(0).normal(size=(90, 4)).astype(np.float32)
    y = np.argmax(X[:, :n_classes], axis=1)
    svc = SVC(decision_function_shape="ovo").fit(X, y)
    proto = skl2onnx.to_onnx(svc, X[:1], options={id(svc): {"zipmap": False}})
    with pytest.raises(zo.ZoracleError, match="one-vs-one decision values") as info:
        OnnxClassifier(proto)(X)
    assert "swapped" not in str(info.value) and "output='label'" in str(info.value)
    np.testing.assert_array_equal(OnnxClassifier(proto, output=0).predict(X), svc.predict(X))  # the named fix


def _dropout_model(case):
    # x (N, 3) -> Dropout(ratio=0.5, training_mode) -> y (N, 3), written with onnx.helper as a converter
    # other than torch's may write it: training_mode from an initializer or from a Constant node
    from onnx import TensorProto, helper, numpy_helper

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    init, nodes = [numpy_helper.from_array(np.array(0.5, np.float32), "ratio")], []
    on = np.array(case != "off", bool)
    if case == "constant":
        nodes.append(helper.make_node("Constant", [], ["on"], value=numpy_helper.from_array(on, "on")))
    else:
        init.append(numpy_helper.from_array(on, "on"))
    nodes.append(helper.make_node("Dropout", ["x", "ratio", "on"], ["y"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info], init),
                              opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("case", ["initializer", "constant"])
def test_a_dropout_in_training_mode_is_refused(case):
    # onnxruntime called directly: the dropout changes a sample's scores from one call to the next
    data = _dropout_model(case)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert not np.array_equal(sess.run(None, {"x": x})[0], sess.run(None, {"x": x})[0])
    with pytest.raises(zo.ArgumentError, match="training mode: Dropout node .* drops activations at random"):
        OnnxClassifier(data)


def test_a_dropout_whose_training_mode_is_off_is_accepted():
    # training_mode False: Dropout is the identity (onnxruntime called directly), as in an eval export
    data = _dropout_model("off")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x)
    np.testing.assert_array_equal(OnnxClassifier(data)(x), x)


def test_calls_count_the_runs_of_pickled_copies_as_queries_does(onnx_path, batch, tmp_path):
    """``calls`` stayed 0 in the original when only its pickled copies (what process and Dask
    workers run) called onnxruntime, while ``queries`` counted their samples."""
    log = tmp_path / "runs"

    class Logged:  # an independent count of the onnxruntime runs each copy makes
        def __init__(self, session):
            self.session = session

        def run(self, *args, **kwargs):
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, b"x")
            os.close(fd)
            return self.session.run(*args, **kwargs)

    clf = OnnxClassifier(onnx_path, budget=100, batch_size=4)
    clf.session = Logged(clf.session)
    clf(batch[:3])  # one run before any copy exists
    a, b = pickle.loads(pickle.dumps(clf)), pickle.loads(pickle.dumps(clf))
    a.session, b.session = Logged(a.session), Logged(b.session)
    a(batch[:10])  # 3 runs of at most 4
    b(batch[:1])
    runs = os.path.getsize(log)
    assert runs == 5
    assert clf.queries == a.queries == 14
    assert clf.calls == a.calls == b.calls == runs
    a.reset_queries()
    assert clf.calls == b.calls == 0 and clf.queries == 0




def test_construction_parses_the_model_once_for_its_checks(onnx_path, monkeypatch):
    # the training-mode check and the SVM label check parsed the whole model with onnx each (two
    # parses: +85 ms on a 50 MB model, construction 1.27x its time before); one parse serves both
    import io

    import onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(5, 6),), f, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    calls = []
    real = onnx.load_model_from_string
    monkeypatch.setattr(onnx, "load_model_from_string", lambda *a, **k: calls.append(1) or real(*a, **k))
    OnnxClassifier(onnx_path.read_bytes())  # bytes: no external-data parse either
    assert len(calls) == 1
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxClassifier(f.getvalue())(x), model(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert len(calls) == 2


def test_a_call_of_a_pickled_classifier_takes_one_ledger_transaction(onnx_path, batch):
    # queries and calls share the ledger file: counting them in two flock'ed rewrites per run made
    # each call of a pickled classifier (any process executor) about 70% slower for a small model
    from zoracle.adapters import onnx as onnx_adapter

    clf = OnnxClassifier(onnx_path, batch_size=4)
    copy = pickle.loads(pickle.dumps(clf))
    seen = []
    original = onnx_adapter._Ledger._update

    def counted(self, *args, **kwargs):
        seen.append(1)
        return original(self, *args, **kwargs)

    onnx_adapter._Ledger._update = counted
    try:
        copy(batch[:10])  # 3 runs of at most 4
    finally:
        onnx_adapter._Ledger._update = original
    assert len(seen) == 1
    assert clf.calls == copy.calls == 3 and clf.queries == copy.queries == 10


def test_a_training_mode_model_without_the_onnx_package_is_not_accepted_silently(tmp_path, monkeypatch):
    """With onnxruntime but not onnx installed (``pip install onnxruntime`` beside the core), the
    training-mode refusal read no graph and a BatchNormalization on batch statistics was accepted
    without a word: sample 0's scores then changed with the other samples of the call."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W")] + [
        numpy_helper.from_array(v(3, np.float32), n) for v, n in
        ((np.ones, "scale"), (np.zeros, "bias"), (np.zeros, "mean"), (np.ones, "var"))]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["hn", "rm", "rv"],
                          training_mode=1, name="bn"),
         helper.make_node("Softmax", ["hn"], ["p"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])], inits)
    path = str(tmp_path / "bn_train.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)]), path)
    with pytest.raises(zo.ArgumentError, match="exported in training mode"):
        OnnxClassifier(path)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    alone = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    a = alone.run(None, {"x": x})[0][0]
    b = alone.run(None, {"x": np.concatenate([x[:1], 10 * x[1:]])})[0][0]
    assert np.abs(a - b).max() > 0.1  # the reference: sample 0's scores depend on its batch
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx not installed
    with pytest.warns(RuntimeWarning, match=r"onnx package is not installed.*training-mode.*\.\[onnx\]"):
        OnnxClassifier(path)


def test_predict_refuses_the_score_rows_smoothing_refuses():
    """predict refused NaN rows only: [inf, inf] (an overflow) and [-inf, -inf] became class 0,
    which zoracle.smoothing refuses as scores, so certify(clf.predict, x) certified class 0
    from such votes while certify(clf, x) raised."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from zoracle.smoothing import certify

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    k = numpy_helper.from_array(np.array(1e30, np.float32), "k")  # float32 scores x * 1e30: 1e10 overflows
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x_info], [y_info], [k])
    clf = OnnxClassifier(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert clf.predict(np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)).tolist() == [1, 0]
    for row in ([1e10, 1e10], [-1e10, -1e10], [1e10, 1.0]):
        x = np.array([[0.0, 1.0], row], np.float32)
        assert np.isinf(clf(x)[1]).any()
        with pytest.raises(zo.OracleError, match="sample 1 of 2"):
            clf.predict(x)
        for c in (clf, clf.predict):  # the same verdict through the scores and through predict's labels
            with pytest.raises(zo.OracleError):
                certify(c, x[1], sigma=0.1, n0=10, n=100, num_classes=2, rng=0)
