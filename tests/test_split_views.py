"""A SplitOracle's prefix and suffix calls get read-only views of the parameters, not a copy of
all d of them per call, and still cannot corrupt the estimate (no timing)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor
from zoracle.testing import QuadraticOracle

D = 30
BLOCKS = [slice(0, 10), slice(10, 20), slice(20, 30)]


def problem():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((D, D))
    return QuadraticOracle(M @ M.T / D, rng.standard_normal(D), blocks=BLOCKS), rng.standard_normal(D)


class Seen(QuadraticOracle):
    """Records the parameter arrays its prefix and suffix calls were given."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen = []

    def prefix(self, x, block):
        self.seen.append(x)
        return super().prefix(x, block)

    def suffix(self, features, x, block, coords, step):
        self.seen.append(x)
        return super().suffix(features, x, block, coords, step)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_prefix_and_suffix_share_one_read_only_array(scheme):
    """Each prefix and suffix call got its own copy of all d parameters: at d = 1e7 with two
    coordinates in each of 50 blocks, 101 copies of 76 MiB, most of the estimate's time."""
    q, x = problem()
    oracle = Seen(q.A, q.b, blocks=BLOCKS)
    coords = np.array([1, 2, 12, 25, 27])
    got = zo.estimate_gradient(oracle, x, zo.CGE(scheme=scheme), coordinates=coords)
    want = zo.estimate_gradient(q, x, zo.CGE(scheme=scheme), coordinates=coords)
    assert got.grad.tobytes() == want.grad.tobytes() and got.nfev == want.nfev
    assert len(oracle.seen) == 3 * (1 + len(zo.CGE(scheme=scheme).steps))  # a prefix and a suffix per step a block
    assert not any(a.flags.writeable for a in oracle.seen)
    assert all(np.shares_memory(a, oracle.seen[0]) for a in oracle.seen)  # one array, never copied
    assert all(np.array_equal(a, x) for a in oracle.seen)


class CallsOnly:
    """Plain calls of ``q``: the losses a split oracle's suffix must reproduce."""

    def __init__(self, q):
        self.q = q

    def __call__(self, x):
        return self.q(x)


class PerturbsInPlace(QuadraticOracle):
    """A suffix that perturbs its parameters in place and puts them back (as its own copy allowed)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = 0

    def suffix(self, features, x, block, coords, step):
        self.calls += 1
        out = []
        for i in np.asarray(coords):
            old = x[i]
            x[i] = x[i] + step
            out.append(self(x))
            x[i] = old
        return np.array(out)


def test_an_oracle_writing_into_its_parameters_gets_its_own_copy_and_corrupts_nothing():
    q, x = problem()
    oracle = PerturbsInPlace(q.A, q.b, blocks=BLOCKS)
    before = x.copy()
    got = zo.estimate_gradient(oracle, x, zo.CGE(scheme="central"), coordinates=[1, 2, 12, 25, 27])
    want = zo.estimate_gradient(CallsOnly(q), x, zo.CGE(scheme="central"), coordinates=[1, 2, 12, 25, 27])
    assert got.grad.tobytes() == want.grad.tobytes() and got.nfev == want.nfev == 11
    assert oracle.calls == 3 * 2 + 1  # the first suffix raised on its read-only view, and ran again on a copy
    assert x.tobytes() == before.tobytes()


class WritesPastTheFlag(QuadraticOracle):
    """Writes into the memory behind its read-only view (as torch.from_numpy lets it) and leaves it so."""

    def suffix(self, features, x, block, coords, step):
        target = x.base if x.base is not None else x  # a view's base: the array it shares
        target[int(np.asarray(coords)[0])] += 1.0
        return super().suffix(features, x, block, coords, step)


@pytest.mark.parametrize("threads", [False, True])
def test_a_write_past_the_read_only_flag_fails_the_estimate(threads):
    """Every later query of the estimate would read the write (a wrong gradient, silently)."""
    q, x = problem()
    before = x.copy()
    oracle = WritesPastTheFlag(q.A, q.b, blocks=BLOCKS)
    with pytest.raises(zo.OracleError, match="wrote into the parameters it was given, past their read-only flag"):
        if threads:
            with JoblibExecutor(2, backend="threading") as ex:
                zo.estimate_gradient(oracle, x, zo.CGE(), coordinates=[1, 12, 25], executor=ex)
        else:
            zo.estimate_gradient(oracle, x, zo.CGE(), coordinates=[1, 12, 25])
    assert x.tobytes() == before.tobytes()  # the caller's parameters never reach the oracle


def test_a_torch_oracle_writing_through_from_numpy_fails_the_estimate():
    torch = pytest.importorskip("torch")
    q, x = problem()

    class Torchy(QuadraticOracle):
        def suffix(self, features, params, block, coords, step):
            with warnings.catch_warnings():  # torch warns that the array is not writable, and shares it
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(params)
            t[torch.as_tensor(np.asarray(coords))] += step  # perturbed in place, never put back
            return super().suffix(features, params, block, coords, step)

    with pytest.raises(zo.OracleError, match=r"block \d \(prefix and suffix calls\).*past their read-only flag"):
        zo.estimate_gradient(Torchy(q.A, q.b, blocks=BLOCKS), x, zo.CGE(), coordinates=[1, 12, 25])
