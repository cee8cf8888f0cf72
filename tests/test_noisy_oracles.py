"""Black boxes that answer differently at the same params: a noisy reading, a drift, noise shared
by the queries of one batch call. The first estimate through a fast path asks the plain call twice
at one point where the fast path disagrees with it; two answers that differ by more than the
estimate can bear are noise, which the run now names with its size over mu and the fixes (it was
kept silently: a run that ended at 98 of a start of 125, where a deterministic one ends near 0).
Round-off of a declared float32 computation and deterministic oracles give no warning."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo

D = 40
A = np.linspace(0.5, 2.0, D)


def loss(x) -> float:
    return float(0.5 * np.sum(A * (np.asarray(x, dtype=np.float64) - 1.0) ** 2))


class Reading:
    """A noisy read-out (hardware): fresh noise at every call, ``repeats`` readings averaged;
    its ``batch`` shares one noise draw among the queries of the call (a read-out per batch)."""

    def __init__(self, sigma, repeats=1, seed=1):
        self.sigma, self.repeats, self.rng = sigma, repeats, np.random.default_rng(seed)

    def _noise(self):
        return self.sigma * float(self.rng.standard_normal(self.repeats).mean())

    def __call__(self, x):
        return loss(x) + self._noise()

    def batch(self, X):
        return np.array([loss(r) for r in X]) + self._noise()


class Drifting(Reading):
    """A reading that drifts with every call (a sensor warming up): no random numbers."""

    def __init__(self, rate):
        self.rate, self.calls = rate, 0

    def _noise(self):
        self.calls += 1
        return self.rate * self.calls


class Seeded:
    """The reading with its noise fixed per step: ``bind(seed)`` (common random numbers)."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, x):
        return loss(x) + self.sigma * np.random.default_rng().standard_normal()

    def bind(self, seed):
        return _Step(self.sigma, seed)


class _Step:
    def __init__(self, sigma, seed):
        self.noise = sigma * np.random.default_rng(seed).standard_normal()

    def __call__(self, x):
        return loss(x) + self.noise

    def batch(self, X):
        return np.array([loss(r) for r in X]) + self.noise


class Float32Sums:
    """Deterministic up to float32 round-off that changes call to call (a GPU's atomic sums), its
    params float64: declared so, it is not noise."""

    compute_dtype = np.float32

    def __init__(self):
        self.rng = np.random.default_rng(3)

    def __call__(self, x):
        v = loss(x)
        return float(np.float32(v * (1 + 4e-8 * self.rng.standard_normal())))

    def batch(self, X):
        return np.array([loss(r) for r in X], dtype=np.float32).astype(np.float64)


def _train(oracle, mu=5e-3, steps=60, **kw):
    return zo.train(oracle, np.zeros(D), epochs=1, steps_per_epoch=steps, estimator=zo.CGE(mu=mu),
                    optimizer=zo.sgd(0.2), rng=0, progress=False, **kw)


@pytest.mark.parametrize("oracle", [Reading(1e-2), Drifting(1e-3)], ids=["noise", "drift"])
def test_a_noisy_plain_call_is_named_with_its_size_over_mu_and_the_fixes(oracle):
    with pytest.warns(RuntimeWarning, match="its plain call is not deterministic") as rec:
        res = _train(oracle)
    text = str(rec[0].message)
    assert type(oracle).__name__ in text and "mu = 0.005" in text
    assert "bind(seed)" in text and "Noisy black boxes" in text and "average repeated readings" in text
    assert "2 queries, counted in nfev" in text
    assert res.nfev == 60 * (D + 1) + 2  # the two plain calls the check made anyway, no more
    assert len([w for w in rec if "not deterministic" in str(w.message)]) == 1  # once a run


def test_rge_through_a_batch_names_the_noise_too():
    with pytest.warns(RuntimeWarning, match="its plain call is not deterministic"):
        res = zo.train(Reading(1e-2), np.zeros(D), epochs=1, steps_per_epoch=20, estimator=zo.RGE(directions=4),
                       optimizer=zo.sgd(0.01), rng=0, progress=False)
    assert res.nfev == 20 * 5 + 2


def test_the_warnings_advice_trains_where_the_noise_stalled_the_run():
    """Each fix the warning names, on the reading with noise 1e-2 at mu = 5e-3 (loss 12.5 at the start)."""
    with pytest.warns(RuntimeWarning, match="not deterministic"):
        stalled = loss(_train(Reading(1e-2)).params)
    with pytest.warns(RuntimeWarning, match="not deterministic"):
        wider = loss(_train(Reading(1e-2), mu=0.2).params)  # 2 * sqrt(noise / curvature 1)
    with pytest.warns(RuntimeWarning, match="not deterministic"):
        averaged = loss(_train(Reading(1e-2, repeats=64)).params)
    seeded = loss(zo.train(Seeded(1e-2), np.zeros(D), batches=list(range(60)), estimator=zo.CGE(mu=5e-3),
                           optimizer=zo.sgd(0.2), rng=0, progress=False).params)  # no warning: deterministic per step
    assert stalled > 1.0
    assert wider < 0.1 * stalled and averaged < 0.1 * stalled and seeded < 1e-3


def test_no_warning_for_deterministic_oracles_and_declared_float32_round_off():
    # (the suite turns warnings into errors: any warning fails these runs)
    exact = Reading(0.0)
    assert _train(exact).nfev == 60 * (D + 1) + 1
    res = _train(Float32Sums())
    assert loss(res.params) < 1e-3


class JitterOffset:
    """A plain call that jitters by 1e-10 (round-off a thread pool reorders) and a ``batch`` off by a
    constant 1e-3: 0.2 in every partial derivative at mu = 5e-3."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __call__(self, x):
        return loss(x) + 1e-10 * self.rng.standard_normal()

    def batch(self, X):
        return np.array([loss(r) for r in X]) + 1e-3


def test_a_jitter_below_what_the_estimate_feels_does_not_hide_a_wrong_fast_path():
    """The two plain calls differed by 1e-10, which passed for noise: the offset batch was kept
    silently and the run ended at x = 0.81 (the optimum is 1); now it is refused as without jitter."""
    with pytest.warns(RuntimeWarning, match="its `batch` disagrees with its plain call"):
        res = _train(JitterOffset(), steps=120)
    assert np.abs(res.params - 1.0).max() < 0.01


def test_a_torch_forward_with_its_noise_fixed_per_call_is_not_told_to_set_vmap_flags():
    """The not-repeatable warning's fix, random numbers fixed per call (a generator seeded in the
    forward), makes vmap fail on the random op: the warning passed on torch's advice to give vmap a
    randomness flag, which the user cannot set (the oracle calls vmap). It now names the cause."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    class Seeded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            g = torch.Generator(device=h.device).manual_seed(0)
            return self.l2(h + 0.1 * torch.randn(h.shape, generator=g))

    torch.manual_seed(0)
    oracle = TorchOracle(Seeded(), torch.nn.CrossEntropyLoss(reduction="none"))
    p = oracle.initial_params()
    with pytest.warns(RuntimeWarning) as rec:
        bound = oracle.bind((torch.randn(8, 4), torch.randint(0, 2, (8,))))
        g = zo.estimate_gradient(bound, p, zo.CGE()).grad
    told = [str(w.message) for w in rec if "vmap failed" in str(w.message)]
    assert told and all("draws random numbers" in t and "randomness flag" not in t for t in told)
    assert not any("not repeatable" in str(w.message) for w in rec)  # fixed per call: repeatable
    x = p.copy()
    x[3] += 5e-3
    assert g[3] == pytest.approx((bound(x) - bound(p)) / 5e-3, rel=1e-4, abs=1e-4)


def test_a_run_diverged_by_additive_noise_names_the_noise():
    """Noise of 0.05 added to sum(x^4) kicked a run out (the noiseless run at this lr converges): at
    the diverged params (1e22) the loss is 1e88 and the noise drowns in its rounding, so the error
    said only to lower the learning rate. The run's first params show the noise."""
    rng = np.random.default_rng(0)

    def noisy(x):
        return float(np.sum(x ** 4) + 0.05 * rng.standard_normal())

    def run(f):
        return zo.train(f, np.full(20, 0.1), epochs=1, steps_per_epoch=200, estimator=zo.CGE(mu=5e-3),
                        optimizer=zo.sgd(0.05), rng=0, progress=False)

    assert np.abs(run(lambda x: float(np.sum(x ** 4))).params).max() < 0.1  # the lr is not the cause
    with pytest.raises(zo.ArgumentError, match="training diverged") as err:
        run(noisy)
    assert "The loss is not deterministic: two calls at the same params (the run's first) gave" in str(err.value)
