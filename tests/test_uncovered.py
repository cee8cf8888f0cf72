"""Paths no other test ran (found with coverage): user-facing error paths and numerical branches,
each checked against an independent expectation."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle._errors import ArgumentError, OracleError


# --------------------------------------------------------------------------- blackbox
def _nan_above_one(x):
    """x**2 per entry, NaN where an entry exceeds 1: finite at the forward's x, not at x + mu."""
    import torch

    return torch.where(x > 1.0, torch.full_like(x, float("nan")), x ** 2)


def test_blackbox_non_finite_output_in_backward_names_the_pass():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    op = blackbox(_nan_above_one, zo.CGE(mu=1e-3))
    x = torch.tensor([[0.5, 0.9999]], dtype=torch.float64, requires_grad=True)
    y = op(x)  # finite: the forward passes
    np.testing.assert_allclose(y.detach().numpy(), [[0.25, 0.9999 ** 2]])
    with pytest.raises(OracleError, match=r"non-finite values at blackbox fn, backward \(CGE\).*expected finite"):
        y.sum().backward()
    assert x.grad is None


def test_blackbox_non_finite_output_in_forward_and_empty_batch():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    op = blackbox(_nan_above_one, zo.CGE(mu=1e-3))
    with pytest.raises(OracleError, match=r"non-finite values at blackbox fn, forward, rows 0\.\.0 of 1"):
        op(torch.tensor([[2.0]], dtype=torch.float64))
    with pytest.raises(ArgumentError, match=r"leading batch dimension, got shape \(0, 3\)"):
        op(torch.zeros((0, 3)))
    with pytest.raises(ArgumentError, match=r"leading batch dimension, got shape \(\)"):
        op(torch.tensor(1.0))
    assert repr(op) == f"blackbox(_nan_above_one, {zo.CGE(mu=1e-3)})"


def test_blackbox_refuses_rank_shaping():
    pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    with pytest.raises(ArgumentError, match="rank shaping is not linear"):
        blackbox(_nan_above_one, zo.RGE(mu=1e-3, directions=4, shaping="ranks"))


# --------------------------------------------------------------------------- estimate_gradient
class _RaggedExecutor:
    """An executor of one's own whose workers reply with nested lists of unequal lengths."""

    n_workers = 1

    def run(self, oracle, params, tasks):
        return [[[1.0], [1.0, 2.0]] for _ in tasks]


def test_executor_ragged_reply_is_shown_not_called_a_shape():
    with pytest.raises(ArgumentError, match=r"executor _RaggedExecutor: .* for task 0, a result") as info:
        zo.estimate_gradient(lambda p: float(p @ p), np.zeros(3), executor=_RaggedExecutor())
    text = str(info.value)
    assert "shape list" not in text  # (it read "a result of shape list where the task's is (1, 1)")
    assert "[[1.0], [1.0, 2.0]]" in text and "(1, 1)" in text


def test_snes_state_errors_and_huge_losses_keep_a_finite_mean():
    x = np.zeros(3)

    def huge(p):  # losses near the float maximum: their sum overflows, their mean does not
        return 1.7e308 - 1e300 * float(p @ p)

    est = zo.estimate_gradient(huge, x, estimator=zo.SNES(), rng=0)
    assert np.isfinite(est.loss) and 1.69e308 < est.loss <= 1.7e308
    with pytest.raises(ArgumentError, match=r"SNES's sigma\) must have shape \(3,\), got \(2,\)"):
        zo.estimate_gradient(huge, x, estimator=zo.SNES(), state=np.ones(2))
    with pytest.raises(ArgumentError, match=r"must be finite and > 0, got 0.0 at index 1"):
        zo.estimate_gradient(huge, x, estimator=zo.SNES(), state=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ArgumentError, match=r"CGE keeps no state: drop `state`"):
        zo.estimate_gradient(huge, x, estimator=zo.CGE(), state=np.ones(3))
    with pytest.raises(ArgumentError, match=r"`params` is empty"):
        zo.estimate_gradient(huge, np.zeros(0))
    with pytest.raises(ArgumentError, match=r"`coordinates` is empty"):
        zo.estimate_gradient(huge, x, coordinates=np.array([], dtype=int))


# --------------------------------------------------------------------------- checkpoints
def _rewritten(src, dst, version, fortran=False):
    """``src``'s members written again as .npy format ``version`` (NumPy writes 2.0 for headers
    over 64 KiB), optionally in Fortran order."""
    import io
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            arr = np.load(io.BytesIO(zin.read(info)))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asfortranarray(arr) if fortran else arr, version=version)
            zout.writestr(info.filename, buf.getvalue())
    return dst


@pytest.mark.parametrize("version, fortran", [((2, 0), False), ((2, 0), True), ((1, 0), True)])
def test_checkpoint_members_of_npy_format_2_and_fortran_order_read_back(tmp_path, version, fortran):
    arrays = {"w": np.arange(5.0), "m": np.arange(6, dtype=np.int32).reshape(2, 3)}
    path = zo.save_checkpoint(tmp_path / "run.npz", arrays, {"k": 1})
    got, meta = zo.load_checkpoint(_rewritten(path, tmp_path / "v.npz", version, fortran))
    assert meta["k"] == 1 and set(got) == {"w", "m"}
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype
        np.testing.assert_array_equal(got[k], a)


def test_load_checkpoint_of_a_device_or_pipe_does_not_say_it_is_missing(tmp_path):
    import os

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        with pytest.raises(zo.CheckpointError) as info:
            zo.load_checkpoint(path)
        assert "does not exist" not in str(info.value)
        assert "not a regular file" in str(info.value)
    calls = []
    with pytest.raises(zo.CheckpointError, match=r"'/dev/null' is not a regular file"):  # (said: "does not exist")
        zo.train(lambda x: calls.append(1) or float(x @ x), np.ones(3), epochs=1, resume=os.devnull, progress=False)
    assert calls == []
    with pytest.raises(ArgumentError, match="exists and is not a regular file"):
        zo.save_checkpoint(fifo, {"w": np.zeros(1)}, {})
    with pytest.raises(ArgumentError, match="`check` must be a callable check"):
        zo.load_checkpoint(tmp_path / "x.npz", check=3)


# --------------------------------------------------------------------------- batch oracles
class _BatchReturning:
    """A batch oracle whose `batch` returns ``kind`` of losses (its plain calls are right)."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, p):
        return float(p @ p)

    def batch(self, P):
        n = len(P)
        return {"complex": lambda: (P * P).sum(1) + 0j, "bool": lambda: np.ones(n, dtype=bool),
                "ragged": lambda: [[1.0], [1.0, 2.0]] + [[0.0]] * (n - 2)}[self.kind]()


@pytest.mark.parametrize("kind, detail", [("complex", "expected real losses"), ("bool", "expected real losses"),
                                          ("ragged", "could not convert to an array")])
def test_batch_of_non_real_or_ragged_losses_is_an_oracle_error(kind, detail):
    with pytest.raises(OracleError, match=rf"at directions 0\.\.3 \(\+mu\): {detail}"):
        zo.estimate_gradient(_BatchReturning(kind), np.ones(3), zo.RGE(directions=4), rng=0)


class _NoRepr:
    def __repr__(self):
        raise RuntimeError("repr fails")


def test_an_oracle_result_whose_repr_raises_is_named_by_its_type():
    with pytest.raises(OracleError, match=r"oracle returned <_NoRepr> at the base point .*expected a finite real"):
        zo.estimate_gradient(lambda p: _NoRepr(), np.ones(2))


# --------------------------------------------------------------------------- smoothing and recipes
def test_smoothing_bad_counts_labels_and_points():
    pytest.importorskip("scipy")
    from zoracle import smoothing as sm

    with pytest.raises(ArgumentError, match=r"`n_a` and `n` must be integer counts, got 3.0 and 10"):
        sm.lower_confidence_bound(3.0, 10, 0.01)
    with pytest.raises(ArgumentError, match=r"`radii` is empty"):
        sm.certified_accuracy(np.zeros(0), np.zeros(0, dtype=bool))
    with pytest.raises(OracleError, match=r"dtype <U1 at a batch of 10 noisy inputs: the classifier must return 10"):
        sm.sample_counts(lambda z: np.array(["a"] * len(z)), np.zeros((1, 2)), 10, 0.5, num_classes=2, rng=0)
    calls = []
    with pytest.raises(ArgumentError, match=r"`x` must be finite"):
        sm.sample_counts(lambda z: calls.append(1) or np.zeros(len(z), int), np.array([[np.nan, 0.0]]), 10, 0.5,
                         num_classes=2, rng=0)
    assert calls == []


def test_short_budget_refuses_an_empty_list_of_batches():
    from zoracle.recipes import short_budget

    with pytest.raises(ArgumentError, match=r"`batches` is empty: an epoch needs at least one batch"):
        short_budget(lambda x: float(x @ x), np.zeros(40, np.float32), 1000, batches=[])


# --------------------------------------------------------------------------- train's argument checks
class _Block:
    """A block record as oracle.param_info gives them: its slice and its kind."""

    def __init__(self, s, kind):
        self.slice, self.kind = s, kind


@pytest.mark.parametrize("kw, match", [
    (dict(callbacks=[3]), r"`callbacks\[0\]` must be callable \(event, record, params\), got int"),
    (dict(eval_fn=3), r"`eval_fn` must be callable params -> float or dict, got int"),
    (dict(estimator="cge"), r"`estimator` must be zo.CGE\(...\), zo.RGE\(...\) or zo.SNES\(...\), got str"),
    (dict(resume=3), r"`resume` must be a checkpoint path, .* got 3"),
    (dict(sparsity=0.5, blocks=[_Block(slice(0, 2), "norm"), _Block(slice(2, 4), "norm")]),
     r"`sparsity` is set but no block has a kind in `score_kinds` \('conv', 'linear'\)"),
    (dict(sparsity=0.5, blocks=[slice(0, 2), slice(2, 4)], ratios=[0.5]),
     r"`ratios` must have one keep ratio per scored block \(2\), got shape \(1,\)"),
    (dict(sparsity=0.5, blocks=[slice(0, 9)]), r"block slice\(0, 9, None\) reaches past params of length 4"),
], ids=["callbacks", "eval_fn", "estimator", "resume", "no-scored-block", "ratios", "block-past-d"])
def test_train_refuses_bad_arguments_before_the_first_query(kw, match):
    calls = []
    with pytest.raises(ArgumentError, match=match):
        zo.train(lambda x: calls.append(1) or float(x @ x), np.ones(4), epochs=1, steps_per_epoch=1, rng=0,
                 progress=False, **kw)
    assert calls == []


def test_resume_refuses_keep_ratios_outside_0_1_before_the_first_query(tmp_path):
    path = str(tmp_path / "run.npz")
    f = lambda x: float(np.sum((x - 1) ** 2))  # noqa: E731
    kw = dict(epochs=1, steps_per_epoch=2, estimator=zo.CGE(), rng=0, progress=False, sparsity=0.5,
              blocks=[slice(0, 4), slice(4, 8)], ratios="uniform")
    zo.train(f, np.zeros(8), checkpoint=path, **kw)
    arrays, meta = zo.load_checkpoint(path)
    np.testing.assert_array_equal(arrays["ratios"], [0.5, 0.5])
    arrays["ratios"] = np.array([1.5, 0.25])  # an edited (or damaged) file: its header still reads as written
    zo.save_checkpoint(path, arrays, {k: v for k, v in meta.items() if k not in ("format", "version",
                                                                                 "zoracle_version")})
    calls = []
    with pytest.raises(zo.CheckpointError, match=r"keep ratios must lie in \[0, 1\], got \[1.5, 0.25\]"):
        zo.train(lambda x: calls.append(1) or f(x), np.zeros(8), resume=path, **dict(kw, epochs=2))
    assert calls == []


class _IteratorExecutor:
    n_workers = 1

    def run(self, oracle, params, tasks):
        return iter([t.run(oracle, params) for t in tasks])


def test_executor_returning_an_iterator_and_save_of_a_non_dict(tmp_path):
    with pytest.raises(ArgumentError, match=r"must return a list with one result per task, got list_iterator"):
        zo.estimate_gradient(lambda p: float(p @ p), np.zeros(3), executor=_IteratorExecutor())
    with pytest.raises(ArgumentError, match=r"`arrays` must be a dict of name \(a non-empty str\) -> array"):
        zo.save_checkpoint(tmp_path / "run.npz", [np.zeros(1)], {})
    assert not (tmp_path / "run.npz").exists()
