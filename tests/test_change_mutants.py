"""Mutation review of the session's changes (h296): what a user sees of the changes that the
session's own tests did not pin down (each test here failed against a mutant of that code)."""

from __future__ import annotations

import os
import subprocess
import traceback
import tracemalloc

import numpy as np
import pytest

import zoracle as zo
from zoracle import _estimators, _plan
from zoracle.executors import JoblibExecutor, ShardFailed
from zoracle.testing import QuadraticOracle

from conftest import edit_checkpoint_header, split_calls

BLOCKS = [slice(0, 10), slice(10, 20), slice(20, 30)]


def test_snes_float32_sample_blocks_stay_within_the_budget(monkeypatch):
    """SNES's samples ``sigma * z`` are scaled in place: a scaled copy of the float64 block beside
    the block itself took 1.33x the budget for float32 parameters (the budget counts a float64
    block and a float32 one a row). Measured while the samples are queried (the sums after them
    draw the rows again, SNES's own kept rows aside)."""
    monkeypatch.setattr(_plan._ROWS, "default", 0)  # no rows kept: what is measured is the blocks
    monkeypatch.setattr(_estimators, "reserve_rows", lambda root, nbytes: None)
    d, rows = 20_000, 64
    budget = d * (4 + 8) * rows
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    peaks = []

    def loss(p):
        peaks.append(tracemalloc.get_traced_memory()[1])
        return float(p[0])

    tracemalloc.start()
    try:
        got = zo.estimate_gradient(loss, x, zo.SNES(mu=1e-2, population=3 * rows), rng=0, budget_bytes=budget)
    finally:
        tracemalloc.stop()
    assert got.nfev == len(peaks) == 3 * rows
    assert max(peaks) <= 1.1 * budget, (max(peaks) / budget, budget)


class PrefixFails(QuadraticOracle):
    """A split oracle whose prefix raises the user's own ValueError (not a read-only write)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.prefix_calls = 0

    def prefix(self, x, block):
        self.prefix_calls += 1
        raise ValueError("mesh file missing")


def test_a_prefix_raising_its_own_value_error_is_called_once():
    """Only NumPy's read-only refusal earns a second call with a copy: any other ValueError (a
    simulator's) is the oracle's error, raised from its one call (a second would run the program
    again and, were it transient, hide it)."""
    rng = np.random.default_rng(0)
    oracle = PrefixFails(np.eye(30), rng.standard_normal(30), blocks=BLOCKS)
    with pytest.raises(zo.OracleError, match="mesh file missing"):
        zo.estimate_gradient(oracle, np.zeros(30), zo.CGE())
    assert oracle.prefix_calls == 1


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "run.npz"
    zo.train(lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(4), epochs=1, estimator=zo.CGE(mu=1e-3),
             optimizer=zo.sgd(0.05), rng=0, progress=False, checkpoint=path)
    return path


@pytest.mark.parametrize("writer", [5, ["9.0.0"], ""])
def test_a_newer_format_with_a_writer_that_is_no_release_says_a_newer_zoracle(ckpt, writer):
    """A header edited by hand (or by another tool) with a non-text release is not named as one."""
    edit_checkpoint_header(ckpt, lambda h: h.update(version=2, zoracle_version=writer))
    with pytest.raises(zo.CheckpointError) as info:
        zo.load_checkpoint(ckpt)
    assert "written by a newer zoracle;" in str(info.value) and "upgrade zoracle" in str(info.value)


def test_save_checkpoint_stamps_its_own_release_over_the_meta(tmp_path):
    """The docstring: the header holds ``zoracle_version`` "in place of any keys of those names in
    meta": a meta copied from an older checkpoint does not pass for the release that wrote it."""
    path = zo.save_checkpoint(tmp_path / "c.npz", {"a": np.arange(3.0)},
                              {"zoracle_version": "0.0.1", "format": "x", "version": 99, "note": 1})
    _, meta = zo.load_checkpoint(path)
    assert (meta["zoracle_version"], meta["format"], meta["version"], meta["note"]) == (
        zo.__version__, "zoracle-checkpoint", 1, 1)


@pytest.mark.parametrize("kw, fix", [
    (dict(checkpoint="true"), "pass a file path such as 'run.npz'"),  # True is no setting of checkpoint
    (dict(plot="true"), "pass a file path such as 'run.png'"),
    (dict(plot="None"), "leave `plot` out (None)"),  # None turns the plot off
    (dict(plot="null"), "leave `plot` out (None)"),
])
def test_train_path_config_words_say_the_fix_that_works(tmp_path, monkeypatch, kw, fix):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2), progress=False, **kw)
    msg = str(info.value)
    assert fix in msg, msg
    assert ("leave `" in msg) == ("leave `" in fix)
    assert not list(tmp_path.iterdir())


def test_program_output_of_exactly_the_limit_is_not_marked_cut():
    from zoracle._errors import program_output

    whole = "x" * 99 + "!"
    assert program_output(subprocess.CalledProcessError(1, ["sim"], stderr=whole), limit=100) == (
        "the program's stderr ends with:\n    " + whole)
    out = program_output(subprocess.CalledProcessError(1, ["sim"], stderr="y" + whole), limit=100)
    assert out == "the program's stderr ends with:\n    ..." + whole


class Diverges(Exception):
    pass


def _raise_in_worker(x):
    if x[0] != 0.0:
        raise Diverges("the solver diverged")  # WORKER-LINE
    return float(np.sum(x ** 2))


def test_a_worker_traceback_is_the_oracles_exception_not_the_report_again():
    """The worker's traceback chained under the user's exception is that exception's own: not
    the OracleError wrapping it, whose message (the query, the cause) the report already shows."""
    with JoblibExecutor(2) as ex:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(_raise_in_worker, np.zeros(3), zo.CGE(), executor=ex)
    err = info.value
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert "WORKER-LINE" in text
    assert text.count("oracle raised at") == 1, text


class _FailsToLoad:
    """Its unpickling raises in every worker process (a model file missing there)."""

    def __init__(self):
        self.driver = os.getpid()

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() != self.driver:
            raise OSError("model file missing")  # LOAD-LINE

    def __call__(self, x):
        return float(np.sum(x ** 2))


def test_a_shard_failed_twice_shows_the_worker_traceback_once():
    """A ShardFailed's message ends with the second worker's traceback: the same text chained
    under its cause as well printed it twice."""
    with JoblibExecutor(2) as ex:
        with pytest.raises(ShardFailed) as info:
            zo.estimate_gradient(_FailsToLoad(), np.zeros(3), zo.CGE(), executor=ex)
    err = info.value
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert "worker traceback:" in str(err) and text.count("LOAD-LINE") == 1, text

def _quadratic(p):
    return float(np.sum(p ** 2))


@pytest.mark.parametrize("make, name, number", [
    (lambda: zo.recipes.short_budget(_quadratic, np.ones(2), 10, weight_decay="-1"), "weight_decay", "-1.0"),
    (lambda: zo.train(_quadratic, np.ones(2), mu="0", progress=False), "mu", "0.0"),
    (lambda: zo.adam(1e-3, b1="1"), "b1", "1.0"),
    (lambda: zo.recipes.short_budget(_quadratic, np.ones(2), 10, b1="1"), "b1", "1.0"),
    (lambda: zo.train(_quadratic, np.ones(2), estimator=zo.CGE(), sparsity="1", progress=False), "sparsity", "1.0"),
])
def test_a_config_text_hint_at_the_bound_says_it_would_be_refused(make, name, number):
    """The bounds of the hints' checks: a value allowed to be 0 is not therefore allowed below it,
    a value that must be > 0 is not allowed at 0, and an open upper bound is not allowed at it."""
    with pytest.raises(zo.ArgumentError) as info:
        make()
    msg = str(info.value)
    assert f"pass {name}=" not in msg and f"as a number, {number}, it would be refused too" in msg, msg


class _Flat:
    """A model reading its one parameter flat, whatever its shape or size."""

    @staticmethod
    def make():
        torch = pytest.importorskip("torch")
        from torch import nn

        class Flat(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(6, dtype=torch.float64))

            def forward(self, x):
                return x[:, :self.w.numel()] @ self.w.reshape(-1)

        return Flat()


def _flat_oracle():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    model = _Flat.make()
    x, y = torch.ones(2, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    return model, TorchOracle(model, lambda out, t: (out - t) ** 2, (x, y))


def test_torch_load_follows_a_parameter_reshaped_after_the_oracle_was_built():
    """The spans and strides ``_load`` works out once are made again when a parameter's shape
    changes (its ``.data`` swapped for a reshaped tensor of the same size): kept, they wrote the
    parameters with the old shape's strides."""
    torch = pytest.importorskip("torch")
    model, oracle = _flat_oracle()
    assert oracle(np.arange(6.0)) == pytest.approx(15.0 ** 2)
    model.w.data = model.w.data.reshape(3, 2)
    theta = np.arange(6.0)[::-1].copy() * 2
    assert oracle(theta) == pytest.approx(30.0 ** 2)
    assert torch.equal(model.w.detach().reshape(6), torch.as_tensor(theta))


def test_torch_load_refuses_a_parameter_resized_after_the_oracle_was_built():
    """A parameter of another size than its span of the flat vector is not loaded from the span's
    start (its first entries, silently): the slices' own view raises, as before the spans."""
    torch = pytest.importorskip("torch")
    model, oracle = _flat_oracle()
    oracle(np.arange(6.0))
    model.w.data = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        oracle(np.arange(6.0))


@pytest.mark.filterwarnings("ignore:TorchOracle.*write buffers in their train-mode forward:RuntimeWarning")
def test_a_context_that_saves_buffers_is_not_shared_between_blocks():
    """Spectral norm's power iteration writes its vectors on every train-mode forward: the
    norm_context that saves and puts them back is entered by each prefix and suffix (as split
    calls do), not once for all blocks, and coordinate_losses gives the split calls' losses bit
    for bit (one shared context moved them by 6e-12)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from zoracle.adapters.torch import TorchOracle

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(6, 8)), nn.ReLU(), nn.Linear(8, 8),
                             nn.ReLU(), nn.Linear(8, 3)).double().train()

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 6)), rng.integers(0, 3, 10)
    ce = nn.CrossEntropyLoss(reduction="none")
    oracle = TorchOracle(make(), ce, (x, y))
    theta = oracle.initial_params()
    coords = np.arange(0, oracle.size, 2)
    want = split_calls(TorchOracle(make(), ce, (x, y)), theta, coords, 1e-4)
    oracle(theta)
    for _ in range(2):
        assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)

