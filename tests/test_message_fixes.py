"""Messages whose text said something untrue or gave a fix that does not work (a review of the
session's new messages against what the code does)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import QuadraticOracle

D = 12
BLOCKS = [slice(0, 6), slice(6, 12)]


def _quadratic():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((D, D))
    return M @ M.T / D, rng.standard_normal(D), rng.standard_normal(D)


def test_a_write_past_the_read_only_flag_is_not_reported_as_a_returned_value():
    """The split task's refusal read "oracle returned None at block 0 (prefix and suffix calls)":
    the oracle returned no None; its suffix wrote into the parameters through torch.from_numpy.
    The fix the message gives (work on a copy: torch.tensor(params)) then estimates as the plain
    calls do."""
    torch = pytest.importorskip("torch")
    A, b, x = _quadratic()

    class Torchy(QuadraticOracle):
        def __init__(self, *args, copy=False, **kw):
            super().__init__(*args, **kw)
            self.copy = copy

        def suffix(self, features, params, block, coords, step):
            with warnings.catch_warnings():  # torch warns that the array is not writable, and shares it
                warnings.simplefilter("ignore", UserWarning)
                t = torch.tensor(params) if self.copy else torch.from_numpy(params)
            t[torch.as_tensor(np.asarray(coords))] += step  # perturbed in place, never put back
            return super().suffix(features, params, block, coords, step)

    coords = [1, 7, 10]
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(Torchy(A, b, blocks=BLOCKS), x, zo.CGE(), coordinates=coords)
    text = str(info.value)
    assert "oracle returned" not in text and "None" not in text, text
    assert text.startswith("oracle raised at block ") and "past their read-only flag" in text, text
    assert "work on a copy (params.copy(), torch.tensor(params))" in text

    fixed = zo.estimate_gradient(Torchy(A, b, blocks=BLOCKS, copy=True), x, zo.CGE(), coordinates=coords)
    plain = zo.estimate_gradient(QuadraticOracle(A, b), x, zo.CGE(), coordinates=coords)
    assert np.allclose(fixed.grad, plain.grad, rtol=1e-9, atol=1e-12)


def _loss(x):
    return float(np.sum((x - 1.0) ** 2))


def test_a_newer_checkpoint_asks_for_the_upgrade_this_install_takes(tmp_path):
    """zoracle is installed from its clone (pip install -e, README and getting-started): the
    advice 'pip install --upgrade zoracle' asked the package index for it, leaving the clone's
    install as it was, so the checkpoint stayed unreadable."""
    path = tmp_path / "run.npz"
    kw = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False)
    zo.train(_loss, np.zeros(3), epochs=1, checkpoint=path, **kw)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["__meta__"].tobytes())
    header.update(version=2, zoracle_version="9.0.0")
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(zo.CheckpointError, match="upgrade zoracle") as info:
        zo.load_checkpoint(path)
    text = str(info.value)
    assert "pip install --upgrade zoracle" not in text, text
    assert "git pull in the zoracle clone, then pip install -e ." in text, text


def _q(x):
    return float(np.sum(x ** 2))


HUGE = 10**5000  # beyond the 4300 digits Python writes: repr() raises ValueError


@pytest.mark.parametrize("call", [
    lambda: zo.train(_q, np.zeros(2), epochs=HUGE, progress=False),
    lambda: zo.CGE(mu=HUGE),
    lambda: zo.sgd(HUGE),
    lambda: zo.adam(1e-3, b1=HUGE),
    lambda: zo.sgd(0.1, momentum=0.9, nesterov=HUGE),
    lambda: zo.train(_q, np.zeros(2), estimator=zo.CGE(), sparsity=HUGE, blocks=[slice(0, 1), slice(1, 2)],
                     progress=False),
], ids=["epochs", "mu", "lr", "b1", "nesterov", "sparsity"])
def test_an_int_too_long_to_write_is_refused_by_name(call):
    """The refusal wrote the value with repr(): for an int of over 4300 digits that raised
    "ValueError: Exceeds the limit (4300 digits) for integer string conversion", naming no argument."""
    with pytest.raises(zo.ArgumentError, match=r"got <int of about 5001 digits>"):
        call()


def test_a_long_int_count_is_shown_cut():
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(_q, np.zeros(2), max_queries=10**400, progress=False)
    text = str(info.value)
    assert text.startswith("`max_queries` must be an integer >= 1") and len(text) < 300, text


# --- concepts.md: "NumPy features (an array, or arrays in a tuple, list or dict) come read-only" ---

_rng = np.random.default_rng(1)
_A, _B, _X = _rng.standard_normal((8, 6)), _rng.standard_normal(8), _rng.standard_normal(6)
Feats = __import__("collections").namedtuple("Feats", "r")


def _ls(x):
    return float(np.mean((_A @ x - _B) ** 2))


class _Residuals:
    """A split least-squares oracle whose features are ``box(residual)``; ``in_place``: its
    suffix adds the block's contribution back into them, as the docs warn against."""

    blocks = [slice(0, 3), slice(3, 6)]

    def __init__(self, box, unbox, in_place):
        self.box, self.unbox, self.in_place = box, unbox, in_place

    def __call__(self, x):
        return _ls(x)

    def prefix(self, x, block):
        s = self.blocks[block]
        return self.box(_A @ x - _B - _A[:, s] @ x[s])

    def suffix(self, feats, x, block, coords, step):
        r, s = self.unbox(feats), self.blocks[block]
        if self.in_place:
            r += _A[:, s] @ x[s]
        else:
            r = r + _A[:, s] @ x[s]  # the fix the message gives: out of place
        return np.mean((r[None, :] + step * _A[:, coords].T) ** 2, axis=1)


class _Rows(list):
    pass


BOXES = {
    "namedtuple": (lambda r: Feats(r), lambda f: f.r),
    "OrderedDict": (lambda r: __import__("collections").OrderedDict(r=r), lambda f: f["r"]),
    "list subclass": (lambda r: _Rows([r]), lambda f: f[0]),
}


@pytest.mark.parametrize("kind", sorted(BOXES))
def test_numpy_features_in_a_namedtuple_or_other_subclass_come_read_only(kind):
    """A namedtuple is a tuple, an OrderedDict a dict: their arrays reached suffix writable, and
    a suffix writing into them gave a central gradient off by 31,000, without a word."""
    box, unbox = BOXES[kind]
    est = zo.CGE(mu=1e-4, scheme="central")
    with pytest.raises(zo.OracleError, match="suffix's features"):
        zo.estimate_gradient(_Residuals(box, unbox, in_place=True), _X, est)
    got = zo.estimate_gradient(_Residuals(box, unbox, in_place=False), _X, est).grad
    want = zo.estimate_gradient(_ls, _X, est).grad
    assert np.abs(got - want).max() < 1e-6 * np.abs(want).max()


def test_a_torch_tensor_in_a_namedtuple_written_in_place_raises():
    torch = pytest.importorskip("torch")
    box, unbox = (lambda r: Feats(torch.from_numpy(r)), lambda f: f.r)

    class Torchy(_Residuals):
        def suffix(self, feats, x, block, coords, step):
            s = self.blocks[block]
            r = unbox(feats)
            r.add_(torch.from_numpy(_A[:, s] @ x[s]))
            return np.mean((r.numpy()[None, :] + step * _A[:, coords].T) ** 2, axis=1)

    with pytest.raises(zo.OracleError, match="a tensor written in place"):
        zo.estimate_gradient(Torchy(box, unbox, True), _X, zo.CGE(mu=1e-4, scheme="central"))
