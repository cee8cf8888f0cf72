"""Arrays crossing between zoracle and user code: what one side writes never reaches the other."""

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import OracleCheckError, check_oracle

D, K = 12, 6
_rng = np.random.default_rng(0)
A = _rng.standard_normal((30, D))
B = _rng.standard_normal(30)
X = _rng.standard_normal(D)


def loss(x):
    return float(np.mean((A @ x - B) ** 2))


class Residuals:
    """A SplitOracle over a least-squares loss: the features entering a block are the residual
    without the block's own contribution; ``suffix`` adds it back, in place when ``in_place``."""

    blocks = [slice(0, K), slice(K, D)]

    def __init__(self, in_place=False, wrap=lambda r: r):
        self.in_place, self.wrap = in_place, wrap

    def __call__(self, x):
        return loss(x)

    def prefix(self, x, block):
        s = self.blocks[block]
        return self.wrap(A @ x - B - A[:, s] @ x[s])

    def suffix(self, feats, x, block, coords, step):
        r = feats[0] if isinstance(feats, tuple) else feats
        s = self.blocks[block]
        if self.in_place:
            r += A[:, s] @ x[s]  # the user's "save a copy": the features are the next call's too
        else:
            r = r + A[:, s] @ x[s]
        return np.mean((r[None, :] + step * A[:, coords].T) ** 2, axis=1)


def test_suffix_reading_its_features_gives_the_plain_gradient():
    est = zo.CGE(mu=1e-4, scheme="central")
    split = zo.estimate_gradient(Residuals(), X, est)
    plain = zo.estimate_gradient(loss, X, est)
    assert np.abs(split.grad - plain.grad).max() < 1e-6 * np.abs(plain.grad).max()
    boxed = zo.estimate_gradient(Residuals(wrap=lambda r: (r,)), X, est)  # features in a tuple
    assert np.array_equal(boxed.grad, split.grad)


@pytest.mark.parametrize("wrap", [lambda r: r, lambda r: (r,)], ids=["array", "tuple"])
def test_suffix_writing_its_numpy_features_raises(wrap):
    # one block's features go to every suffix call of the block: the -mu call read the +mu call's
    # write, a central gradient off by 6e4, silently
    with pytest.raises(zo.OracleError, match="suffix's features") as info:
        zo.estimate_gradient(Residuals(in_place=True, wrap=wrap), X, zo.CGE(mu=1e-4, scheme="central"))
    assert "read-only" in str(info.value)


def test_suffix_writing_its_torch_features_raises():
    torch = pytest.importorskip("torch")

    class TorchResiduals(Residuals):
        def prefix(self, x, block):
            return torch.from_numpy(super().prefix(x, block))

        def suffix(self, feats, x, block, coords, step):
            s = self.blocks[block]
            r = feats.add_(torch.from_numpy(A[:, s] @ x[s])) if self.in_place else feats + torch.from_numpy(A[:, s] @ x[s])
            return np.mean((r.numpy()[None, :] + step * A[:, coords].T) ** 2, axis=1)

    est = zo.CGE(mu=1e-4, scheme="central")
    good = zo.estimate_gradient(TorchResiduals(), X, est)
    assert np.array_equal(good.grad, zo.estimate_gradient(Residuals(), X, est).grad)
    with pytest.raises(zo.OracleError, match="wrote into the features prefix"):
        zo.estimate_gradient(TorchResiduals(in_place=True), X, est)


def test_check_oracle_names_a_suffix_writing_its_features():
    with pytest.raises(OracleCheckError, match="read-only"):
        check_oracle(Residuals(in_place=True), X)
    check_oracle(Residuals(), X)


def test_result_ratios_are_not_the_callers_array():
    # a sweep reusing one ratios array (ratios[:] = r) rewrote every earlier result's ratios
    ratios = np.array([0.5, 0.5])
    result = zo.train(loss, X, epochs=1, steps_per_epoch=2, sparsity=0.5, ratios=ratios, blocks=Residuals.blocks,
                      optimizer=zo.sgd(0.01), progress=False)
    assert not np.shares_memory(result.ratios, ratios)
    ratios[:] = 0.9
    assert result.ratios.tolist() == [0.5, 0.5]



def test_callback_params_are_kept_as_they_were():
    # a callback may keep the params it gets (to plot them later): each stays the step's own
    seen = []
    result = zo.train(loss, X, epochs=2, steps_per_epoch=3, optimizer=zo.adam(0.05), progress=False,
                      callbacks=[lambda event, record, p: seen.append((p, p.copy()))])
    assert len(seen) == 8 and all(np.array_equal(p, c) for p, c in seen)
    assert len({p.tobytes() for p, _ in seen}) > 1  # the params moved from step to step
    assert np.array_equal(seen[-1][0], result.params) and seen[-1][0] is not result.params
