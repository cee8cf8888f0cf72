"""Behaviours of the core math modules (_masks, _schedules, _grid, _pruning, _estimators, smoothing)
that no test pinned down: found by a mutation run over them, each test here fails on a small change to
the module (a comparison flipped, a constant moved) that the earlier tests let through, and checks the
behaviour against a computation of its own."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


def test_a_block_starting_below_zero_is_refused():
    """slice(-1, 3) is no position in the flat parameters (NumPy would read it as the last entry);
    slice(0, 3) beside it passes."""
    assert zo.keep_counts([slice(0, 3)], [1.0]).tolist() == [3]
    with pytest.raises(zo.ArgumentError, match=r"`blocks\[0\]` must be a slice\(start, stop\) with 0 <= start"):
        zo.keep_counts([slice(-1, 3)], [1.0])


@pytest.mark.parametrize("make", [lambda v: zo.constant_schedule(v),
                                  lambda v: zo.cosine_schedule(v, total_steps=10),
                                  lambda v: zo.cosine_schedule(1.0, total_steps=10, final=v),
                                  lambda v: zo.step_schedule(v, step_size=2)])
def test_schedules_refuse_a_negative_value_between_minus_one_and_zero(make):
    """A value in (-1, 0) (a sign typo, -0.5) is refused as -2 is: each schedule's values would be
    negative learning rates, found only at the first step."""
    with pytest.raises(zo.ArgumentError, match=r"must be >= 0, got -0.5|must be > 0, got -0.5"):
        make(-0.5)


@pytest.mark.parametrize("sched", [zo.constant_schedule(0.1), zo.cosine_schedule(0.1, total_steps=10),
                                   zo.step_schedule(0.1, step_size=3), zo.linear_warmup(0.1, warmup_steps=4)])
def test_schedules_refuse_step_minus_one(sched):
    """Steps count from 0: step -1 (an off-by-one in a caller's loop) is refused, not extrapolated
    (the warm-up's ramp gave 0 there, the cosine a value beside ``init``)."""
    assert sched(0) >= 0
    with pytest.raises(zo.ArgumentError, match=r"`step` must be >= 0 \(steps count from 0\), got -1"):
        sched(-1)


def test_the_narrow_float_grid_ends_at_16_significant_bits():
    """Losses of 16 significant bits (1 + 2**-15 and steps of 2**-15: no float32 computation returns
    only those by chance) lie on a grid; 17 bits (1 + 2**-16) are read as float32's own, found no
    grid. Bits counted here from the binary expansions: 1 + 2**-k has k + 1."""
    from zoracle._grid import loss_grid

    q = 2.0**-15
    found = loss_grid(1 + q, [q, -3 * q])
    assert found is not None and found[0] == q and "carry only 16 significant bits" in found[1]
    assert loss_grid(1 + q / 2, [q / 2, -3 * q / 2]) is None


def test_a_grid_is_judged_only_where_float64_resolves_800ths_of_it():
    """Whole-number differences (a count) next to a difference of 2**36 are told apart from float64
    round-off (8 units of float64 at 1 + 2**36 are 1/8192 of a step of 1); next to 2**44 they are not
    (8 units there are 1/32 of a step: more than the 1/800 the grid's reading needs), and no grid is
    claimed."""
    import math

    from zoracle._grid import loss_grid

    assert 8 * math.ulp(1 + 2.0**36) <= 1 / 800 < 8 * math.ulp(1 + 2.0**44)
    found = loss_grid(1.0, [1.0, 2.0**36])
    assert found is not None and found[0] == 1.0 and "whole numbers" in found[1]
    assert loss_grid(1.0, [1.0, 2.0**44]) is None


@pytest.mark.parametrize("ratios", [lambda b, s: zo.uniform_ratios(b, s), lambda b, s: zo.random_ratios(b, s, rng=0),
                                    lambda b, s: zo.smart_ratio(b, s),
                                    lambda b, s: zo.layer_ratios(np.arange(1.0, 10.0), b, s)])
def test_ratio_functions_refuse_a_sparsity_of_one(ratios):
    """sparsity = 1 keeps nothing (every mask empty): refused as [0, 1) says, where 0.999 passes."""
    blocks = [slice(0, 3), slice(3, 9)]
    assert np.all(np.asarray(ratios(blocks, 0.5)) >= 0)
    with pytest.raises(zo.ArgumentError, match=r"`sparsity` must be a fraction in \[0, 1\) .*got 1.0"):
        ratios(blocks, 1.0)


def test_uniform_ratios_give_the_extra_weights_by_largest_remainder_earlier_blocks_first():
    """Three blocks of 3 at sparsity 0.5: 1.5 weights each, 4 in all (round(4.5), half to even);
    largest remainder, by hand: 1 each, and the one left over to the first of the equal remainders.
    Sizes (3, 3, 5) at 0.5: 1.5, 1.5, 2.5 (5.5 -> 6): 1, 1, 2, then the two left over go to the
    three remainders of 0.5 in block order: 2, 2, 2."""
    def by_hand(sizes, keep):
        target = [keep * n for n in sizes]
        k = [int(np.floor(t)) for t in target]
        rest = round(keep * sum(sizes)) - sum(k)
        for i in sorted(range(len(sizes)), key=lambda i: -(target[i] - k[i])):  # (sorted is stable)
            if rest and k[i] < sizes[i]:
                k[i], rest = k[i] + 1, rest - 1
        return k

    for sizes in ([3, 3, 3], [3, 3, 5]):
        edges = np.cumsum([0] + sizes)
        blocks = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        counts = np.rint(zo.uniform_ratios(blocks, 0.5) * sizes).astype(int).tolist()
        assert counts == by_hand(sizes, 0.5)
    assert by_hand([3, 3, 3], 0.5) == [2, 1, 1] and by_hand([3, 3, 5], 0.5) == [2, 2, 2]


def test_rge_refuses_zero_directions():
    """q = 0 directions would divide the empty sum by 0 (a NaN estimate after one base query);
    q = 1 is the least that estimates anything."""
    assert zo.RGE(directions=1).directions == 1
    with pytest.raises(zo.ArgumentError, match=r"`directions` must be an integer >= 1 .*got 0"):
        zo.RGE(directions=0)


def test_noise_of_40_sigma_must_fit_the_points_dtype():
    """The noise check refuses a sigma whose 40-sigma draws overflow the points' float (the rule its
    docstring gives): 1e37 at float32 (4e38 > 3.4e38), where 1e36 (4e37) runs."""
    from zoracle.smoothing import sample_counts

    top = float(np.finfo(np.float32).max)
    assert 40 * 1e36 < top < 40 * 1e37
    x = np.zeros((1, 2), dtype=np.float32)
    clf = lambda z: (z[:, 0] > 0).astype(np.int64)  # noqa: E731
    assert sample_counts(clf, x, 8, 1e36, num_classes=2, rng=0).sum() == 8
    with pytest.raises(zo.ArgumentError, match=r"`sigma`=1e\+37 is beyond float32's range"):
        sample_counts(clf, x, 8, 1e37, num_classes=2, rng=0)


def test_cge_refuses_the_coordinate_equal_to_d():
    """Coordinates lie in [0, d): index d (one past the end) is named, not NumPy's IndexError."""
    f = lambda x: float(x @ x)  # noqa: E731
    x = np.array([1.0, 2.0, 3.0])
    assert zo.estimate_gradient(f, x, zo.CGE(scheme="central"), coordinates=np.array([2])).grad[2] == pytest.approx(6.0)
    with pytest.raises(zo.ArgumentError, match=r"`coordinates` must lie in \[0, 3\), got 3"):
        zo.estimate_gradient(f, x, zo.CGE(), coordinates=np.array([0, 3]))


@pytest.mark.parametrize("rows", [1, 2])  # a block of one row: every block (rows=1), or the last (5 = 2 + 2 + 1)
def test_snes_in_blocks_of_one_row_is_the_textbook_step(rows):
    """SNES sums its population's rows a block at a time (``budget_bytes``): where a block holds
    one row, that row is weighted in place, which must not reach the width sum that reads the same
    row. Checked against one SNES generation written out (Schaul et al. 2011), its samples drawn
    as zoracle documents them (one Philox stream per sample, keyed by the root seed)."""
    d, n, seed = 6, 5, 3
    x = np.linspace(-1.0, 1.0, d)
    sigma = np.linspace(0.2, 0.7, d)
    f = lambda v: float(v @ v + np.sin(3 * v).sum())  # noqa: E731
    est = zo.SNES(mu=0.3, population=n)
    g = zo.estimate_gradient(f, x, est, rng=seed, state=sigma, budget_bytes=rows * 8 * d)

    root = int(np.random.default_rng(seed).integers(2**63))
    Z = np.array([np.random.Generator(np.random.Philox(key=[root, i])).standard_normal(d) for i in range(n)])
    losses = [f(x + sigma * z) for z in Z]
    w = [max(0.0, np.log(n / 2 + 1) - np.log(k + 1)) for k in range(n)]
    util = np.zeros(n)
    for k, i in enumerate(sorted(range(n), key=lambda i: (losses[i], i))):
        util[i] = w[k] / sum(w) - 1.0 / n
    eta = 0.2 * (3 + np.log(d)) / np.sqrt(d)
    np.testing.assert_allclose(g.grad, -sigma * (util @ Z), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.state, sigma * np.exp(eta / 2 * (util @ (Z**2 - 1))), rtol=1e-12)


def test_lower_confidence_bound_refuses_one_success_more_than_trials():
    """n_a = n + 1 is no count of a binomial (a bound of it is meaningless); n_a = n is the most, its
    bound alpha ** (1 / n) by the Clopper-Pearson formula (Beta(n, 1) has the CDF p ** n)."""
    from zoracle.smoothing import lower_confidence_bound

    assert lower_confidence_bound(10, 10, 0.01) == pytest.approx(0.01 ** (1 / 10), rel=1e-12)
    with pytest.raises(zo.ArgumentError, match=r"0 <= n_a <= n .*n_a=11, n=10"):
        lower_confidence_bound(11, 10, 0.01)


@pytest.mark.parametrize("n, alpha", [(1, 0.5), (2, 0.25)])
def test_a_lower_bound_of_exactly_one_half_certifies_radius_zero(n, alpha):
    """certify abstains when pA_lower < 1/2 only: n of n samples agreeing at alpha = 0.5 ** n give
    pA_lower = alpha ** (1 / n) = 1/2 exactly (Clopper-Pearson at n_a = n), a certificate of radius
    sigma * Phi^-1(1/2) = 0, and such an n is not refused as unable to certify."""
    clf = lambda z: np.ones(len(z), dtype=np.int64)  # noqa: E731
    c = zo.smoothing.certify(clf, np.zeros(2), sigma=0.5, n0=1, n=n, alpha=alpha, num_classes=2, rng=0)
    assert alpha ** (1 / n) == 0.5
    assert (c.prediction, c.radius, c.p_lower, c.n_a, c.n) == (1, 0.0, 0.5, n, n)


def test_adams_first_step_is_lr_for_float32_gradients_whose_square_overflows():
    """Adam's first step is lr * g / |g| (m_hat = g, v_hat = g**2) whatever the gradient's size: at
    float32 gradients of 1e20 and 3e25 (squares beyond float32's range, read again in float64) too,
    beside a gradient of 1."""
    g = np.array([1e20, 1.0, -3e25], dtype=np.float32)
    opt = zo.adam(0.1)
    x = np.zeros(3, dtype=np.float32)
    with np.errstate(over="ignore"):  # (NumPy's own warning of g * g in float32)
        new, state = opt.update(g, opt.init(x), x)
    np.testing.assert_allclose(new, -0.1 * np.sign(g.astype(np.float64)), rtol=1e-6)
    assert new.dtype == np.float32 and state.count == 1


def test_train_refuses_a_smoothing_of_zero_before_it_starts():
    """mu = 0 is no finite difference (every estimate 0 / 0): ``train(mu=0.0)`` is refused as the
    argument it is, before the first query, where mu = 1e-3 trains."""
    calls = []

    def f(x):
        calls.append(1)
        return float(x @ x)

    res = zo.train(f, np.ones(2), mu=1e-3, steps_per_epoch=1, progress=False)
    assert res.nfev > 0
    calls.clear()
    with pytest.raises(zo.ArgumentError, match=r"^`mu` must be a finite number > 0 \(e\.g\. 5e-3\) or a schedule"):
        zo.train(f, np.ones(2), mu=0.0, steps_per_epoch=1, progress=False)
    assert calls == []


def test_value_bits_reads_whole_numbers_as_counts_below_2_to_the_24_only():
    """Whole numbers below 2**24 (a count) carry 0 bits; 2**24 + 2 is a float32-sized value, its
    bits counted by hand: 1 followed by 22 zeros and a 1 (2**24 down to 2**1), 24 bits."""
    from zoracle._grid import value_bits

    assert value_bits([3.0, 2.0**24 - 1]) == 0
    assert value_bits([2.0**24 + 2]) == 24
    assert value_bits([2.0**24 + 2, 3.0]) == 24


@pytest.mark.parametrize("loss, grid", [(0.13, None), (12.3, None), (0.123, 1e-3), (12.34, 1e-2)])
def test_a_flat_loss_is_read_as_rounded_only_at_2_decimals_and_3_digits(loss, grid):
    """Every difference 0 (a flat loss, or one rounded coarser than mu moves it): a base loss written
    in 2 to 8 decimals with 3 significant digits or more is read as rounded to them (0.123, 12.34);
    one or two digits (0.13: a floor such as max(loss, 0.13)) or one decimal (12.3) is not."""
    from zoracle._grid import loss_grid

    found = loss_grid(loss, [0.0, 0.0])
    if grid is None:
        assert found is None
    else:
        assert found is not None and found[0] == pytest.approx(grid, rel=1e-12)


def test_points_of_12_significant_bits_are_short_13_are_not():
    """CGE's perturbed points of at most 12 significant bits (1 + 2**-11) make a polynomial loss exact
    there; 1 + 2**-12 has 13 bits and 12 decimals (neither short), as counted from its expansion."""
    from zoracle._grid import exact_points

    assert exact_points(np.array([1 + 2.0**-11, 0.5]), 1e-3)
    assert not exact_points(np.array([1 + 2.0**-12, 0.5]), 1e-3)


def test_smart_ratio_hands_a_leftover_of_three_weights_to_the_linear_layer_with_a_warning():
    """A conv block of 10 and a linear one of 100, 43 of 110 kept: by hand, the conv layer's share
    c * 6 (w = 2**2 + 2 for the first of L = 2) clips at 1 (10 kept), the linear layer keeps 30 at
    0.3, and the 3 left over raise its ratio to 0.33, which the warning says."""
    blocks = [slice(0, 10), slice(10, 110)]
    sparsity = 1 - 43 / 110
    assert round((1 - sparsity) * 110) == 43
    with pytest.warns(UserWarning, match=r"leave 3 of the 43 kept weights; raising the linear layers' keep ratio "
                                         r"from 0.3 to 0.3300"):
        r = zo.smart_ratio(blocks, sparsity, kinds=["conv", "linear"])
    np.testing.assert_allclose(r, [1.0, 0.33], rtol=1e-12)


def test_zo_grasp_refuses_a_block_one_past_the_params_before_querying():
    """blocks=[slice(0, 4)] over 3 parameters (NumPy would cut the slice silently) is refused
    before any query; slice(0, 3) scores."""
    from zoracle.testing import QuadraticOracle

    calls = []

    def f(x):
        calls.append(1)
        return float(x @ x)

    assert zo.zo_grasp(QuadraticOracle(np.eye(3)), np.ones(3), blocks=[slice(0, 3)], directions=4, rng=0).shape == (3,)
    with pytest.raises(zo.ArgumentError, match=r"block slice\(0, 4, None\) lies outside params of length 3"):
        zo.zo_grasp(f, np.ones(3), blocks=[slice(0, 4)], directions=4, rng=0)
    assert calls == []


def test_a_seed_of_minus_one_is_refused_by_name():
    """rng=-1 (a "no seed" sentinel of other libraries) is named as the argument, not NumPy's
    "expected non-negative integer" from inside; rng=0 runs."""
    f = lambda x: float(x @ x)  # noqa: E731
    assert zo.estimate_gradient(f, np.ones(2), zo.RGE(directions=2), rng=0).nfev == 3
    with pytest.raises(zo.ArgumentError, match=r"`rng` must be a non-negative int seed.*got -1"):
        zo.estimate_gradient(f, np.ones(2), zo.RGE(directions=2), rng=-1)


def test_an_alpha_of_zero_is_refused():
    """alpha = 0 (a bound that holds with certainty) is the trivial bound 0 for every count: refused
    as outside (0, 1), where a small alpha gives Beta^-1(alpha; 5, 6) (SciPy's, checked against it)."""
    from scipy import stats

    from zoracle.smoothing import lower_confidence_bound

    assert lower_confidence_bound(5, 10, 1e-3) == pytest.approx(stats.beta.ppf(1e-3, 5, 6), rel=1e-12)
    with pytest.raises(zo.ArgumentError, match=r"`alpha` must be a probability in \(0, 1\) .*got 0.0"):
        lower_confidence_bound(5, 10, 0.0)


@pytest.mark.parametrize("k", [3, 4])
def test_the_least_n_that_can_certify_is_named_exactly(k):
    """At alpha = 2**-k the least n whose all-agreeing count certifies is k (by hand: alpha ** (1/n)
    >= 1/2 needs n >= log2(1 / alpha) = k); n = k - 1 is refused naming k, not k + 1."""
    clf = lambda z: np.ones(len(z), dtype=np.int64)  # noqa: E731
    alpha = 2.0**-k
    with pytest.raises(zo.ArgumentError, match=rf"pass n >= {k} at this alpha"):
        zo.smoothing.certify(clf, np.zeros(2), sigma=0.5, n0=1, n=k - 1, alpha=alpha, num_classes=2, rng=0)
    assert zo.smoothing.certify(clf, np.zeros(2), sigma=0.5, n0=1, n=k, alpha=alpha, num_classes=2, rng=0).prediction == 1


def test_a_label_equal_to_num_classes_is_named_as_the_classifiers():
    """Labels lie in [0, num_classes): a classifier returning 2 of 2 classes is reported as its
    output (OracleError naming the sample), not NumPy's IndexError from the count."""
    from zoracle.smoothing import sample_counts

    x = np.zeros((1, 2))
    assert sample_counts(lambda z: np.ones(len(z), dtype=np.int64), x, 4, 0.5, num_classes=2, rng=0).tolist() == [[0, 4]]
    with pytest.raises(zo.OracleError, match=r"returned 2 at noise sample 0 of point 0: labels must lie in \[0, 2\)"):
        sample_counts(lambda z: np.full(len(z), 2), x, 4, 0.5, num_classes=2, rng=0)


def test_predict_runs_where_n_of_n_agreeing_has_a_p_value_of_exactly_alpha():
    """predict abstains when the two-sided binomial p-value exceeds alpha; n of n agreeing has
    p = 2 * 0.5**n, so n = 4 at alpha = 0.125 = 2 * 0.5**4 can predict: it is not refused, and
    returns the class."""
    from scipy import stats

    assert stats.binomtest(4, 4, 0.5).pvalue == 2 * 0.5**4 == 0.125
    clf = lambda z: np.ones(len(z), dtype=np.int64)  # noqa: E731
    assert zo.smoothing.predict(clf, np.zeros(2), sigma=0.5, n=4, alpha=0.125, num_classes=2, rng=0) == 1


def test_a_budget_one_query_short_is_refused_before_the_first_query():
    """A classifier with ``remaining`` queries (as OnnxClassifier's budget) that is one short of
    the m * num samples is refused before it is called; exactly enough runs."""
    from zoracle.smoothing import sample_counts

    class Budgeted:
        def __init__(self, remaining):
            self.remaining, self.calls = remaining, 0

        def __call__(self, z):
            self.calls += 1
            return np.ones(len(z), dtype=np.int64)

    x = np.zeros((2, 3))
    assert sample_counts(Budgeted(8), x, 4, 0.5, num_classes=2, rng=0).sum() == 8
    short = Budgeted(7)
    with pytest.raises(zo.ArgumentError, match=r"this needs 8 classifier queries, but the classifier's budget has 7 left"):
        sample_counts(short, x, 4, 0.5, num_classes=2, rng=0)
    assert short.calls == 0
