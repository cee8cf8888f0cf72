"""What a training step through an ONNX black box spends besides the model: the input checks of
``OnnxClassifier`` on every query, and the onnxruntime calls per gradient estimate.

Profiled on a 64-input MLP and a small CNN exported with ``torch.onnx.export(..., dynamo=False)``
(one thread): the finiteness check reduced each sample's row separately (``all(axis=1)`` over 4096
rows of 64 values took about 10 times one pass over the elements, and was 45% of a 4096-row call of
the MLP), and the expected input shape was formatted for an error message on every query (about 2 us
of a 10 us single-sample call: a plain-call CGE estimate makes one call per coordinate)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import zoracle as zo

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from zoracle.adapters.onnx import OnnxClassifier  # noqa: E402
from zoracle.adapters.torch import blackbox  # noqa: E402


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10)).eval()
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17)
    return path


class _Watched(np.ndarray):
    """An array that records the ``axis`` of every ``all`` reduction made on it or on arrays made from it."""

    axes: list = []

    def all(self, *args, **kwargs):
        _Watched.axes.append(kwargs.get("axis", args[0] if args else None))
        return super().all(*args, **kwargs)


def test_a_finite_query_is_checked_in_one_pass_not_row_by_row(mlp):
    """The check reduced np.isfinite(x) row by row (all(axis=1)), then the rows: the row reduction
    is needed only to name the first non-finite sample, after one pass found one."""
    clf = OnnxClassifier(mlp)
    x = np.random.default_rng(0).uniform(0, 1, (256, 1, 8, 8)).astype(np.float32)
    _Watched.axes = []
    got = clf(x.view(_Watched))
    assert _Watched.axes == [None]  # one reduction over every element
    np.testing.assert_array_equal(got, clf(x))
    bad = x.copy()
    bad[[7, 9], 0, 3, 4] = [np.inf, np.nan]
    with pytest.raises(zo.ArgumentError, match=r"`x` must be finite; sample 7 \(of 256\) holds NaN or inf "
                                               r"\(2 such samples\)"):
        clf(bad)
    assert clf.queries == 512  # the refused call reached nothing


def test_a_valid_query_does_not_format_the_shape_its_errors_name(mlp, monkeypatch):
    """The expected shape, "(N, 1, 8, 8)", was formatted at every call for the two messages that
    name it: about 2 us of a 10 us one-sample call."""
    clf = OnnxClassifier(mlp)
    module = sys.modules[OnnxClassifier.__module__]
    formatted = []
    real = module._shape_str
    monkeypatch.setattr(module, "_shape_str", lambda shape: formatted.append(shape) or real(shape))
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)
    for _ in range(3):
        clf(x)
    assert formatted == []
    with pytest.raises(zo.ArgumentError, match=r"must have shape \(N, 1, 8, 8\) \(N = batch\), got \(1, 1, 8, 7\) "
                                               r"\(axis 3 is 7, expected 8\)"):
        clf(x[..., :7])
    with pytest.raises(zo.ArgumentError, match=r"must have shape \(N, 1, 8, 8\) \(N = batch\), got \(1, 8, 8\); "
                                               r"add a batch axis"):
        clf(x[0])


@pytest.mark.parametrize("estimator", [zo.CGE(mu=5e-3), zo.CGE(mu=5e-3, scheme="central"),
                                       zo.RGE(mu=5e-3, directions=16, distribution="sphere"),
                                       zo.RGE(mu=5e-3, directions=16, distribution="sphere", scheme="central")],
                         ids=["CGE", "CGE-central", "RGE", "RGE-central"])
def test_a_blackbox_step_runs_one_onnxruntime_call_a_pass(mlp, estimator):
    """The hybrid step (the loss's gradient w.r.t. the black box's input): the forward is one
    session.run, the backward one for all its perturbations of all samples, whatever the scheme.
    A central backward ran its +mu and its -mu copies as two calls (a simulator as ``fn``: its
    fixed cost twice); one call now, with the same estimate bit for bit (rows are independent)."""
    clf = OnnxClassifier(mlp)

    def loss(images, targets):  # per-sample cross-entropy through the ONNX model, as zoracle defense's
        logits = clf(np.ascontiguousarray(images.numpy(), dtype=np.float32)).astype(np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return lse - logits[np.arange(len(targets)), targets.numpy()]

    op = blackbox(loss, estimator, rng=0, max_rows=1 << 20)
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (32, 1, 8, 8)).astype(np.float32)).requires_grad_()
    op(x, torch.arange(32) % 10).mean().backward()
    perturbed = 64 * len(estimator.steps) if isinstance(estimator, zo.CGE) else 16 * len(estimator.steps)
    assert clf.calls == 2 and clf.queries == 32 * (1 + perturbed)


def test_a_central_cge_pass_is_split_by_sign_where_one_call_would_make_more_calls(monkeypatch):
    """Both signs in one call halve the coordinates a pass holds (the same copies at once): with room
    for 3 copies of the batch that is 1 coordinate a pass, 192 calls where a sign at a time makes 128;
    the signs stay apart there. The gradient is the same bits either way."""
    from zoracle.adapters import _torch_blackbox as bb

    rows = []

    def fn(z):
        rows.append(z.shape[0])
        return (z.reshape(z.shape[0], -1) ** 3).sum(1)

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    blackbox(fn, zo.CGE(mu=1e-5, scheme="central"))(x).sum().backward()
    fused = x.grad.clone()
    assert rows[1:] == [2 * 2 * 192]
    for copies, calls in ((3, 2 * 64), (4, 96)):  # 4 copies: 2 coordinates a pass, both signs: 96 calls
        monkeypatch.setattr(bb, "COPY_BYTES", copies * 2 * 192 * 8)
        rows.clear()
        x.grad = None
        blackbox(fn, zo.CGE(mu=1e-5, scheme="central"))(x).sum().backward()
        assert len(rows[1:]) == calls and max(rows[1:]) == 2 * copies and sum(rows[1:]) == 2 * 2 * 192
        torch.testing.assert_close(x.grad, fused, rtol=0, atol=0)
    torch.testing.assert_close(fused, 3 * x.detach() ** 2, rtol=0, atol=1e-8)
