"""Behaviours of the changes in 654ea7b..dc8160f (h280-h287) that no test pinned down (found by a
mutation run: each test here fails on a small change to the library that the earlier tests let through)."""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle import cli
from zoracle.executors import DeviceExecutor

D, K = 12, 6
_rng = np.random.default_rng(0)
A = _rng.standard_normal((30, D))
B = _rng.standard_normal(30)
X = _rng.standard_normal(D)


def _loss(x):
    return float(np.mean((A @ x - B) ** 2))


class _Boxed:
    """A SplitOracle whose features are the residual without the block's part, handed over in a
    ``box`` (a list or a dict); ``suffix`` adds the part back in place, into the shared features."""

    blocks = [slice(0, K), slice(K, D)]

    def __init__(self, box, torch=None):
        self.box, self.torch = box, torch

    def __call__(self, x):
        return _loss(x)

    def prefix(self, x, block):
        s = self.blocks[block]
        r = A @ x - B - A[:, s] @ x[s]
        if self.torch is not None:
            r = self.torch.from_numpy(r)
        return [r] if self.box == "list" else {"r": r}

    def suffix(self, feats, x, block, coords, step):
        s = self.blocks[block]
        r = feats[0] if self.box == "list" else feats["r"]
        part = A[:, s] @ x[s]
        if self.torch is not None:
            r = r.add_(self.torch.from_numpy(part)).numpy()
        else:
            r += part  # the features are every later suffix call's too
        return np.mean((r[None, :] + step * A[:, coords].T) ** 2, axis=1)


@pytest.mark.parametrize("box", ["list", "dict"])
def test_numpy_features_in_a_list_or_dict_reach_suffix_read_only(box):
    # the documented contract (SplitOracle): NumPy features alone, or in a tuple, list or dict
    with pytest.raises(zo.OracleError, match="suffix's features") as info:
        zo.estimate_gradient(_Boxed(box), X, zo.CGE(mu=1e-4, scheme="central"))
    assert "read-only" in str(info.value)


@pytest.mark.parametrize("box", ["list", "dict"])
def test_a_torch_tensor_in_a_list_or_dict_of_features_written_in_place_raises(box):
    torch = pytest.importorskip("torch")
    with pytest.raises(zo.OracleError, match="wrote into the features prefix"):
        zo.estimate_gradient(_Boxed(box, torch), X, zo.CGE(mu=1e-4, scheme="central"))


def test_cross_entropy_shows_the_first_target_that_is_not_whole():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import cross_entropy

    with pytest.raises(zo.ArgumentError, match=r"\(2 of 4, the first 0\.5:"):
        cross_entropy(torch.zeros(4, 3), torch.tensor([1.0, 0.5, 2.0, 1.25]))


def test_an_integer_count_out_of_range_gets_no_float_hint():
    # the "a float is not taken as a count" hint is for 3.0; an int 0 is refused for its value alone
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(_loss, X, steps_per_epoch=0, progress=False)
    assert str(info.value).endswith("got 0"), str(info.value)


@pytest.mark.parametrize("text, word", [("on", True), ("off", False), ("no", False)])
def test_every_flag_word_a_config_gives_is_named(text, word):
    with pytest.raises(zo.ArgumentError, match=rf"that is text, not a bool: pass progress={word}$"):
        zo.train(_loss, X, progress=text)


def test_the_tiny_mu_warning_for_a_float32_loss_is_given_once():
    # its verdict waits for the first step's loss, then is given (once), not at every step
    a = _rng.standard_normal((20, 5)).astype(np.float32)

    def loss32(x):
        return float(np.mean((a @ x - 1) ** 2))

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        zo.train(loss32, np.ones(5, np.float32), estimator=zo.CGE(mu=1e-6), optimizer=zo.sgd(1e-3), epochs=3,
                 steps_per_epoch=2, progress=False)
    tiny = [w for w in rec if "float spacings" in str(w.message)]
    assert len(tiny) == 1, [str(w.message) for w in rec]


class _Declared32:
    """An oracle that declares it computes in float32 (as TorchOracle does for a float32 model)."""

    compute_dtype = np.float32

    def __call__(self, x):
        return float(np.sum((x - np.float32(99)) ** 2, dtype=np.float32))


def test_a_declared_float32_oracle_is_judged_at_its_parameters_scale():
    # mu = 1e-4 at params of 100 is 13 float32 spacings there (the steps themselves round): warned
    # at once, at the parameters' scale, for an oracle that declares float32 (not at a loss's 1)
    with pytest.warns(UserWarning, match=r"float spacings of float32 at the parameters' scale \(max\|params\| = 100"):
        zo.train(_Declared32(), np.full(4, 100, np.float32), estimator=zo.CGE(mu=1e-4), optimizer=zo.sgd(1e-3),
                 epochs=0, progress=False)


def test_an_oracle_errors_value_of_exactly_200_characters_is_shown_whole():
    value = "x" * 198  # its repr: 200 characters, within the bound
    assert str(zo.OracleError("q", value)) == f"oracle returned {value!r} at q"


def test_adam_float32_takes_a_scalar_gradient_whose_second_moment_overflows():
    # update() takes a scalar gradient (it broadcasts); (1 - b2) g^2 beyond float32 is read in float64
    opt = zo.adam(0.1)
    p = np.zeros(3, np.float32)
    with np.errstate(over="ignore"):
        new, _ = opt.update(np.float32(1e21), opt.init(p), p)
    np.testing.assert_allclose(new, -0.1, rtol=1e-6)


@pytest.mark.parametrize("path", ["x.png", os.path.join("sub", "x.png")])
def test_a_plot_path_in_an_existing_folder_is_left_as_written(tmp_path, monkeypatch, path):
    pytest.importorskip("matplotlib")  # (--plot is refused first without it)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    args = argparse.Namespace(plot=path)
    cli.check_outputs("demo", args)
    assert args.plot == path


def test_main_leaves_a_stream_that_does_not_fail_on_characters_as_it_was(monkeypatch):
    # only a "strict" stream is changed for the command (and put back): a "replace" one stays so
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="replace", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert out.errors == "replace"


@pytest.mark.parametrize("bad, fix", [("gpu 1", "cuda:1"), ("cuda 0", "cuda:0"), ("GPU 2", "cuda:2")])
def test_a_device_name_with_a_space_is_refused_with_the_fix(bad, fix):
    with pytest.raises(zo.ArgumentError, match=rf"`devices` entry '{bad}' .* names no device: use '{fix}'"):
        DeviceExecutor([bad])


def test_certificate_labels_may_be_a_bfloat16_tensor():
    torch = pytest.importorskip("torch")
    from zoracle.smoothing import CertificateBatch

    batch = CertificateBatch(np.array([0, 1, -1]), np.array([0.5, 0.2, np.nan]), np.array([0.9, 0.8, 0.5]),
                             np.array([90, 80, 50]), 100, 300)
    labels = torch.tensor([0, 2, 1], dtype=torch.bfloat16)
    assert batch.correct(labels).tolist() == batch.correct(np.array([0, 2, 1])).tolist() == [True, False, False]


def test_references_of_other_reynolds_numbers_differ():
    pytest.importorskip("torch")
    pytest.importorskip("phi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PhiFlow's own import-time warnings
        from zoracle.adapters import phiflow as pf
    grid = pf.WakeFlow(nx=8, ny=16)
    vx, vy = np.zeros((1, 3) + grid.shapes[0]), np.zeros((1, 3) + grid.shapes[1])
    assert pf.Reference(vx, vy, np.array([100.0])) == pf.Reference(vx, vy, np.array([100.0]))
    assert pf.Reference(vx, vy, np.array([100.0])) != pf.Reference(vx, vy, np.array([200.0]))


def test_a_zipmap_onnxruntime_refuses_for_another_type_is_not_called_float64():
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper as h

    from conftest import onnx_map_type
    from zoracle.adapters.onnx import OnnxClassifier

    w = h.make_tensor("W", T.FLOAT16, [3, 2], np.arange(6.0).tolist())
    out = h.make_value_info("output_probability", h.make_sequence_type_proto(
        onnx_map_type(T.INT64, h.make_tensor_type_proto(T.FLOAT16, []))))
    graph = h.make_graph([h.make_node("MatMul", ["x", "W"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=1),
                          h.make_node("ZipMap", ["p"], ["output_probability"], domain="ai.onnx.ml",
                                      classlabels_int64s=[0, 1])],
                         "g", [h.make_tensor_value_info("x", T.FLOAT16, ["N", 3])], [out], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    with pytest.raises(zo.ArgumentError, match="is an ONNX graph that onnxruntime refuses") as info:
        OnnxClassifier(model.SerializeToString())
    assert "float64" not in str(info.value)


def test_a_warning_found_below_apps_imported_by_its_own_name_points_past_it():
    """``from apps.demo import ...`` from a clone's root runs zoracle's apps under the names apps.*:
    their frames are zoracle's, as the adapters' are, and the warning names the line calling them."""
    import zoracle.apps

    folder = os.path.realpath(list(zoracle.apps.__path__)[0])
    code = compile("def run():\n    zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, eval_every=2, "
                   "progress=False)\n", os.path.join(folder, "_helper.py"), "exec")
    space = {"__name__": "apps._helper", "zo": zo, "np": np}
    exec(code, space)  # a function of a module apps._helper, in zoracle's apps folder
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        space["run"]()
    [w] = [w for w in rec if "eval_every" in str(w.message)]
    assert w.filename == __file__, (w.filename, w.lineno)


def test_a_users_package_named_adapters_beside_zoracles_is_the_users_line():
    """Only files inside zoracle's own adapters folder are walked over: a user's package named
    ``adapters`` in a folder whose name merely begins as that folder's does is the user's."""
    import zoracle.adapters

    folder = os.path.realpath(list(zoracle.adapters.__path__)[0])
    code = compile("def run():\n    zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, eval_every=2, "
                   "progress=False)\n", os.path.join(folder + "_old", "adapters", "__init__.py"), "exec")
    space = {"__name__": "adapters", "zo": zo, "np": np}
    exec(code, space)  # (no file is written: the frame's name and path are what the walk reads)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        space["run"]()
    [w] = [w for w in rec if "eval_every" in str(w.message)]
    assert w.filename == code.co_filename, (w.filename, w.lineno)
