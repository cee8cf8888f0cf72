"""What a split task's seal reads (h300): after its first suffix call, the block it works on (where
under half the parameters), not all d parameters, a second whole read per task."""

import numpy as np
import pytest

import zoracle as zo
import zoracle._plan as plan

D, N_BLOCKS = 4000, 10
EDGES = np.linspace(0, D, N_BLOCKS + 1).astype(int)
BLOCKS = [slice(int(a), int(b)) for a, b in zip(EDGES[:-1], EDGES[1:])]


class _Sum:
    """f(x) = sum(x^2) in ten blocks; a correct oracle (it reads its parameters only)."""

    blocks = BLOCKS

    def __call__(self, x):
        return float(np.sum(np.asarray(x) ** 2))

    def prefix(self, p, b):
        m = np.ones(D, bool)
        m[BLOCKS[b]] = False
        return np.array([np.sum(p[m] ** 2)])

    def suffix(self, feats, p, b, coords, step):
        v = p[np.asarray(coords)]
        return feats[0] + np.sum(p[BLOCKS[b]] ** 2) + (v + step) ** 2 - v ** 2


def test_a_sparse_central_estimate_reads_all_parameters_once_per_task(monkeypatch):
    # two coordinates in each of ten blocks: ten tasks of two suffix calls (one per step). The check
    # after the first call sealed all 4000 parameters again in each (20 whole reads, not 10): at
    # d = 1e7 with 100 blocks, 0.31 s -> 0.53 s for the estimate
    sizes = []
    real = plan.seal

    def counted(a):
        sizes.append(np.asarray(a).size)
        return real(a)

    monkeypatch.setattr(plan, "seal", counted)
    x = np.linspace(-1.0, 1.0, D)
    coords = np.concatenate([[b.start, b.start + 1] for b in BLOCKS]).astype(np.int64)
    g = zo.estimate_gradient(_Sum(), x, zo.CGE(mu=1e-3, scheme="central"), coordinates=coords)
    np.testing.assert_allclose(g.grad[coords], 2 * x[coords], rtol=1e-6)
    assert sizes.count(D) == N_BLOCKS, sizes
    assert sizes.count(D // N_BLOCKS) == 2 * N_BLOCKS, sizes  # the block's, before the prefix and after a call


class _LeavesItsLastStep(_Sum):
    """Perturbs a tensor made by torch.from_numpy(params) in place and leaves the last step there:
    the -step call snapshots it and undoes it at its end, the bits at the task's end the estimate's."""

    def suffix(self, feats, p, b, coords, step):
        torch = pytest.importorskip("torch")
        t = torch.from_numpy(p)
        start, out = t.clone(), []
        for c in coords:
            t.copy_(start)
            t[int(c)] += step
            out.append(float(feats[0] + np.sum(t.numpy()[BLOCKS[b]] ** 2)))
        return np.array(out)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_a_write_a_later_call_undoes_is_still_refused_where_the_block_alone_is_checked():
    pytest.importorskip("torch")
    x = np.linspace(-1.0, 1.0, D)
    with pytest.raises(zo.OracleError, match="past their read-only flag"):
        zo.estimate_gradient(_LeavesItsLastStep(), x, zo.CGE(mu=1e-3, scheme="central"),
                             coordinates=np.array([5, 9, 700], np.int64))
    np.testing.assert_array_equal(x, np.linspace(-1.0, 1.0, D))
