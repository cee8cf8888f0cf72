"""How the SplitOracle protocol's parts meet (h298): read-only parameter views, the seal, check_oracle."""

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import OracleCheckError, check_oracle

torch = pytest.importorskip("torch")

W = np.arange(1.0, 7.0)
BLOCKS = [slice(0, 3), slice(3, 6)]


class _Quadratic:
    """f(x) = sum(W x^2), split into two blocks; ``suffix`` perturbs a tensor made by
    torch.from_numpy(params) in place, the last perturbation left where it is (the old contract
    gave each call its own copy)."""

    blocks = BLOCKS

    def __call__(self, x):
        return float(np.sum(W * np.asarray(x) ** 2))

    def prefix(self, p, b):
        m = np.ones(6, bool)
        m[BLOCKS[b]] = False
        return np.array([np.sum(W[m] * p[m] ** 2)])

    def suffix(self, feats, p, b, coords, step):
        t = torch.from_numpy(p)
        start, blk, out = t.clone(), BLOCKS[b], []
        for c in coords:
            t.copy_(start)
            t[int(c)] += step
            out.append(float(feats[0] + np.sum(W[blk] * t.numpy()[blk] ** 2)))
        return np.array(out)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_a_write_past_the_flag_that_a_later_call_undoes_is_refused():
    # the +step call leaves its last coordinate perturbed; the -step call snapshots that and ends by
    # undoing it: the bits at the task's end were the estimate's, and the gradient came out silently
    # wrong ([-1.70, 0.10, 2.70, -0.20, 4.00, 9.00] for [1, 2.8, 5.4, 8.8, 13, 18])
    x = np.linspace(0.5, 1.5, 6)
    with pytest.raises(zo.OracleError, match="past their read-only flag"):
        zo.estimate_gradient(_Quadratic(), x, zo.CGE(mu=1e-3, scheme="central"))
    np.testing.assert_array_equal(x, np.linspace(0.5, 1.5, 6))


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_check_oracle_refuses_what_estimate_gradient_refuses():
    # check_oracle gave prefix and suffix writable copies: it passed this oracle, which the estimate refuses
    with pytest.raises(OracleCheckError, match="past their read-only flag"):
        check_oracle(_Quadratic(), np.linspace(0.5, 1.5, 6))


class _TorchFeatures(_Quadratic):
    def prefix(self, p, b):
        return torch.from_numpy(super().prefix(p, b))

    def suffix(self, feats, p, b, coords, step):
        feats.relu_()  # in place: the same values, a write all the same
        blk, out = BLOCKS[b], []
        for c in coords:
            q = np.array(p[blk])
            q[int(c) - blk.start] += step
            out.append(float(feats[0]) + float(np.sum(W[blk] * q ** 2)))
        return np.array(out)


def test_check_oracle_refuses_features_written_in_place_as_the_estimate_does():
    x = np.linspace(0.5, 1.5, 6)
    with pytest.raises(zo.OracleError, match="a tensor written in place"):
        zo.estimate_gradient(_TorchFeatures(), x, zo.CGE(mu=1e-3, scheme="central"))
    with pytest.raises(OracleCheckError, match="a tensor written in place"):
        check_oracle(_TorchFeatures(), x)


class _WritesParams(_Quadratic):
    def suffix(self, feats, p, b, coords, step):
        blk, out = BLOCKS[b], []
        for c in coords:
            p[int(c)] += step  # NumPy refuses on the read-only view: called again with a copy
            out.append(float(feats[0] + np.sum(W[blk] * p[blk] ** 2)))
            p[int(c)] -= step
        return np.array(out)


def test_check_oracle_and_the_estimate_agree_on_an_oracle_writing_into_a_copy():
    x = np.linspace(0.5, 1.5, 6)
    check_oracle(_WritesParams(), x)
    g = zo.estimate_gradient(_WritesParams(), x, zo.CGE(mu=1e-3, scheme="central"))
    np.testing.assert_allclose(g.grad, 2 * W * x, rtol=1e-6)
