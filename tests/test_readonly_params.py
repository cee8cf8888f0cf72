"""An oracle's prefix / suffix now get read-only views of the parameters, not copies: one that takes
them as writable the way a C extension or ctypes does (which refuse a read-only array with a
TypeError, not NumPy's ValueError), or torch.from_numpy under warnings-as-errors, had always worked
on its own copy and must still get one, not an OracleError."""

from __future__ import annotations

import ctypes
import re
import warnings

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import QuadraticOracle

D = 30
BLOCKS = [slice(0, 10), slice(10, 20), slice(20, 30)]
COORDS = [1, 2, 12, 25, 27]


def _memoryview_write(p):
    memoryview(p)[0] = p[0]  # TypeError: cannot modify read-only memory


def _ctypes_from_buffer(p):
    (ctypes.c_double * p.size).from_buffer(p)  # TypeError: underlying buffer is not writable


def _as_ctypes(p):
    np.ctypeslib.as_ctypes(p)  # TypeError: readonly arrays unsupported


def _torch_from_numpy_warnings_as_errors(p):
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # python -W error, pytest's filterwarnings = error
        torch.from_numpy(p)  # UserWarning: The given NumPy array is not writable


TAKES = [_memoryview_write, _ctypes_from_buffer, _as_ctypes, _torch_from_numpy_warnings_as_errors]


def problem():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((D, D))
    return M @ M.T / D, rng.standard_normal(D), rng.standard_normal(D)


# (torch warns once a process: its case is the prefix's, which the estimate calls first)
@pytest.mark.parametrize("take, where", [(f, w) for f in TAKES for w in ("prefix", "suffix")
                                         if f is not _torch_from_numpy_warnings_as_errors or w == "prefix"],
                         ids=lambda v: v if isinstance(v, str) else v.__name__.strip("_"))
def test_an_oracle_taking_its_parameters_as_writable_gets_its_own_copy(take, where):
    A, b, x = problem()

    class Takes(QuadraticOracle):
        def prefix(self, p, block):
            if where == "prefix":
                take(p)
            return super().prefix(p, block)

        def suffix(self, features, p, block, coords, step):
            if where == "suffix":
                take(p)
            return super().suffix(features, p, block, coords, step)

    before = x.copy()
    got = zo.estimate_gradient(Takes(A, b, blocks=BLOCKS), x, zo.CGE(scheme="central"), coordinates=COORDS)
    want = zo.estimate_gradient(QuadraticOracle(A, b, blocks=BLOCKS), x, zo.CGE(scheme="central"), coordinates=COORDS)
    assert got.grad.tobytes() == want.grad.tobytes() and got.nfev == want.nfev
    assert np.ptp(got.grad) > 0 and x.tobytes() == before.tobytes()


def test_a_plain_call_refused_by_a_memoryview_gets_the_read_only_advice():
    """A plain call's read-only view refused by a TypeError got no advice (only NumPy's ValueError did)."""
    A, b, x = problem()
    q = QuadraticOracle(A, b)

    def oracle(p):
        _memoryview_write(p)
        return q(p)

    with pytest.raises(zo.OracleError, match="read-only so that no query can corrupt another; work on a copy"):
        zo.estimate_gradient(oracle, x, zo.CGE(), coordinates=COORDS)


def test_a_write_past_the_read_only_flag_is_not_reported_as_a_return_of_none():
    """The refusal read "oracle returned None at block 0 (prefix and suffix calls): ...": the oracle
    returned its losses; what it did was write into its parameters."""
    A, b, x = problem()

    class WritesPast(QuadraticOracle):
        def suffix(self, features, p, block, coords, step):
            p.base[int(np.asarray(coords)[0])] += 1.0  # (the memory behind the view, as torch.from_numpy writes it)
            return super().suffix(features, p, block, coords, step)

    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(WritesPast(A, b, blocks=BLOCKS), x, zo.CGE(), coordinates=COORDS)
    msg = str(info.value)
    assert "returned None" not in msg and info.value.value is None
    assert re.match(r"oracle raised at block \d \(prefix and suffix calls\): RuntimeError: the oracle's prefix or "
                    r"suffix wrote into the parameters it was given, past their read-only flag", msg), msg
