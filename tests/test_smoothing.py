"""Randomized smoothing: statistics against independent SciPy computations, certify/predict.

Probabilistic tests fix their seeds; tolerances are several binomial standard deviations.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import zoracle as zo
from zoracle import smoothing as sm


def threshold(z):
    """Base classifier on 1-D inputs: class 1 iff the (single) coordinate is > 0."""
    return (z.reshape(len(z), -1)[:, 0] > 0).astype(np.int64)


class Counting:
    """Wraps a classifier and records the size of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.sizes = []

    def __call__(self, z):
        self.sizes.append(len(z))
        return self.fn(z)


@pytest.mark.parametrize("n_a,n", [(1, 1), (0, 10), (5, 10), (99, 100), (100, 100), (731, 1000), (100000, 100000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_matches_exact_binomial_interval(n_a, n, alpha):
    # independent: scipy's exact (Clopper-Pearson) two-sided interval at 1 - 2 alpha has the
    # one-sided alpha lower bound as its lower end
    expected = stats.binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert sm.lower_confidence_bound(n_a, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_lower_bound_vectorized_and_closed_form():
    n_a = np.array([0, 3, 10])
    got = sm.lower_confidence_bound(n_a, np.array([10, 10, 10]), 0.01)
    assert got[0] == 0.0
    assert got[2] == pytest.approx(0.01 ** (1 / 10))  # all agree: Beta(n, 1) quantile is alpha^(1/n)
    assert got[1] == pytest.approx(stats.beta.ppf(0.01, 3, 8))


@pytest.mark.parametrize("a", [0.1, 0.2, 0.4, -0.3])
def test_certify_matches_independent_computation(a):
    sigma, n0, n, alpha = 0.5, 1000, 4000, 0.001
    cert = sm.certify(threshold, np.array([a]), sigma=sigma, n0=n0, n=n, alpha=alpha, num_classes=2, rng=7)
    true_class = int(a > 0)
    p_true = stats.norm.cdf(abs(a) / sigma)  # known probability of the true class
    # n_a counts the class the n0 selection samples chose; with |a| >= 0.1 that is the true class
    assert cert.n == n
    assert abs(cert.n_a / n - p_true) < 5 * np.sqrt(p_true * (1 - p_true) / n)
    bound = stats.beta.ppf(alpha, cert.n_a, n - cert.n_a + 1)
    assert cert.p_lower == pytest.approx(bound, rel=1e-12)
    if bound < 0.5:
        assert cert.abstained and np.isnan(cert.radius)
    else:
        assert cert.prediction == true_class
        assert cert.radius == pytest.approx(sigma * stats.norm.ppf(bound), rel=1e-12)
        # the exact radius of this smoothed classifier is |a|; the certificate is a lower bound
        assert abs(a) - 0.15 < cert.radius <= abs(a) + 0.02


def test_certify_abstains_exactly_below_one_half():
    # x = 0: class probabilities are exactly 1/2 each, so the bound is below 1/2
    cert = sm.certify(threshold, np.array([0.0]), sigma=1.0, n0=10, n=500, num_classes=2, rng=0)
    assert cert.abstained and cert.prediction == sm.ABSTAIN
    assert cert.p_lower < 0.5 and np.isnan(cert.radius)
    # boundary: the abstain rule is `bound < 0.5` (a bound of exactly 1/2 certifies radius 0)
    n = 1000
    for n_a in range(480, 620):
        b = stats.beta.ppf(0.001, n_a, n - n_a + 1)
        assert (sm.radius(n_a, n, 0.001, 0.3) < 0) == (b < 0.5)


@given(n=st.integers(1, 5000), data=st.data(), alpha=st.sampled_from([1e-3, 1e-2, 0.05]),
       sigma=st.floats(0.01, 2.0))
def test_radius_monotone_in_agreeing_samples(n, data, alpha, sigma):
    n_a = data.draw(st.integers(0, n - 1))
    assert sm.radius(n_a + 1, n, alpha, sigma) >= sm.radius(n_a, n, alpha, sigma)


@given(n_a=st.integers(1, 3000), alpha=st.sampled_from([1e-3, 1e-2]))
def test_radius_equals_formula(n_a, alpha):
    n = n_a + 17
    expected = 0.25 * stats.norm.ppf(stats.beta.ppf(alpha, n_a, n - n_a + 1))
    assert sm.radius(n_a, n, alpha, 0.25) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_noise_is_batched_across_points():
    clf = Counting(threshold)
    x = np.array([[2.0], [-2.0], [3.0]])
    res = sm.certify_batch(clf, x, sigma=0.1, n0=50, n=1000, num_classes=2, batch_size=1024, rng=1)
    # 3 * 50 selection samples in one call, 3 * 1000 estimation samples in 3 calls
    assert clf.sizes == [150, 1024, 1024, 952]
    assert res.predictions.tolist() == [1, 0, 1]
    assert res.n_a.tolist() == [1000, 1000, 1000]  # samples were attributed to their own point
    assert res.queries == 3 * 1050
    assert res.abstain_rate == 0.0
    assert res.certified_accuracy([1, 0, 0], [0.0]).tolist() == [2 / 3]


def test_scores_output_and_seed_reproducibility():
    def scores(z):
        v = z.reshape(len(z), -1)[:, 0]
        return np.stack([-v, v], axis=1)

    a = sm.certify(scores, np.array([0.3]), sigma=0.5, n0=20, n=300, num_classes=2, rng=3)
    b = sm.certify(threshold, np.array([0.3]), sigma=0.5, n0=20, n=300, num_classes=2, rng=3)
    assert a == b


def test_sample_counts_sum_and_dtype():
    counts = sm.sample_counts(threshold, np.zeros((2, 1), np.float32), 333, 1.0, num_classes=3, batch_size=100, rng=0)
    assert counts.shape == (2, 3) and counts.sum(axis=1).tolist() == [333, 333]
    assert counts[:, 2].tolist() == [0, 0]


def test_predict():
    assert sm.predict(threshold, np.array([1.0]), sigma=0.5, n=400, num_classes=2, rng=0) == 1
    assert sm.predict(threshold, np.array([-1.0]), sigma=0.5, n=400, num_classes=2, rng=0) == 0
    assert sm.predict(threshold, np.array([0.0]), sigma=0.5, n=400, alpha=1e-6, num_classes=2, rng=0) == sm.ABSTAIN


def test_num_classes_from_attribute():
    class Clf:
        num_classes = 2

        def __call__(self, z):
            return threshold(z)

    assert sm.certify(Clf(), np.array([1.0]), sigma=0.2, n0=5, n=50, rng=0).prediction == 1
    with pytest.raises(zo.ArgumentError, match="num_classes"):
        sm.certify(threshold, np.array([1.0]), sigma=0.2, n0=5, n=50)


def test_certified_accuracy():
    acc = sm.certified_accuracy([0.3, np.nan, 0.8, 0.1], [True, False, True, True], [0.0, 0.25, 0.5, 1.0])
    assert acc.tolist() == [0.75, 0.5, 0.25, 0.0]
    with pytest.raises(zo.ArgumentError, match="boolean"):
        sm.certified_accuracy([0.1], [1])
    with pytest.raises(zo.ArgumentError, match="same length"):
        sm.certified_accuracy([0.1, 0.2], [True])


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": 0.5, "alpha": 1.5}, "alpha"),
    ({"sigma": 0.5, "n": 0}, "`n`"), ({"sigma": 0.5, "n0": 0}, "n0"), ({"sigma": 0.5, "batch_size": 0}, "batch_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(zo.ArgumentError, match=match):
        sm.certify(threshold, np.array([1.0]), num_classes=2, **kwargs)


def test_bad_classifier_output():
    with pytest.raises(zo.OracleError, match="integer labels"):
        sm.certify(lambda z: np.zeros(3), np.array([1.0]), sigma=0.1, n0=5, n=10, num_classes=2)
    with pytest.raises(zo.OracleError, match="labels must lie"):
        sm.certify(lambda z: np.full(len(z), 5), np.array([1.0]), sigma=0.1, n0=5, n=10, num_classes=2)
    with pytest.raises(zo.ArgumentError, match="counts"):
        sm.lower_confidence_bound(5, 3, 0.01)


def test_inputs_that_used_to_escape_as_numpy_errors_or_broadcast():
    """One label for three points broadcast to all of them (a wrong accuracy, no error); float16
    and 0-d points and mismatched count arrays ended in raw NumPy errors."""
    cb = sm.certify_batch(threshold, np.array([[1.0], [-1.0], [2.0]]), sigma=0.1, n0=5, n=20, num_classes=2, rng=0)
    with pytest.raises(zo.ArgumentError, match=r"one label per point \(3\), got 1"):
        cb.certified_accuracy([1])
    assert cb.correct([1, 0, 1]).tolist() == [True, True, True]
    with pytest.raises(zo.ArgumentError, match="dtype float32 or float64.*got float16"):
        sm.certify(threshold, np.array([1.0], np.float16), sigma=0.1, n0=5, n=5, num_classes=2)
    with pytest.raises(zo.ArgumentError, match="at least one point along axis 0"):
        sm.sample_counts(threshold, np.float64(1.0), 5, 0.1, num_classes=2)
    with pytest.raises(zo.ArgumentError, match="same shape"):
        sm.lower_confidence_bound([1, 2], [3, 4, 5], 0.1)


def test_a_flat_x_is_refused_as_ambiguous_before_any_query():
    """One 64-pixel point given as a flat array ran as 64 scalar points (64 certificates, 7,040
    queries) when the classifier flattened its input."""
    clf = Counting(lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int))
    for f in (lambda x: sm.certify_batch(clf, x, sigma=0.1, n0=5, n=20, num_classes=2, rng=0),
              lambda x: sm.sample_counts(clf, x, 5, 0.1, num_classes=2)):
        with pytest.raises(zo.ArgumentError, match=r"`x` of shape \(64,\) is ambiguous.*pass x\[None\] for one point"):
            f(np.full(64, 0.1))
    assert clf.sizes == []
    assert sm.certify(clf, np.full(64, 0.1), sigma=0.1, n0=5, n=20, num_classes=2, rng=0).prediction == 1


def test_a_sigma_beyond_the_dtype_and_a_point_without_features_are_refused():
    """sigma=1e39 on float32 points fed the classifier inf and NaN (overflow warnings only) and still
    returned a certificate; certify(np.zeros(0)) certified a point with no features."""
    clf = Counting(lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int))
    with pytest.raises(zo.ArgumentError, match=r"`sigma`=1e\+39 is beyond float32's range"):
        sm.certify_batch(clf, np.zeros((1, 3), np.float32), sigma=1e39, n0=5, n=20, num_classes=2, rng=0)
    with pytest.raises(zo.ArgumentError, match=r"points with at least one feature, got shape \(1, 0\)"):
        sm.certify(clf, np.zeros(0), sigma=0.1, n0=5, n=20, num_classes=2, rng=0)
    assert clf.sizes == []
    wide = sm.certify_batch(clf, np.zeros((1, 3)), sigma=1e39, n0=5, n=20, num_classes=2, rng=0)[0]
    assert wide.n == 20 and 0 <= wide.n_a <= 20 and 0 < wide.p_lower < 1  # float64 points take that sigma


class Declared(Counting):
    """A classifier that declares what an OnnxClassifier does: classes, input shape, budget left."""

    def __init__(self, fn, num_classes=None, input_shape=None, remaining=None, input_name="x"):
        super().__init__(fn)
        self.num_classes, self.input_shape, self.remaining = num_classes, input_shape, remaining
        self.input_name = input_name


def test_an_abstaining_certificate_equals_its_copy():
    """Its radius is NaN: the generated ``==`` made it unequal to its pickled copy, and ``cb[i] != cb[i]``."""
    import copy
    import pickle

    threshold = lambda x: (np.asarray(x)[:, 0] > 0).astype(int)  # noqa: E731
    cb = sm.certify_batch(threshold, np.array([[1.0], [0.0]]), sigma=0.5, n0=20, n=200, num_classes=2, rng=0)
    for i in range(len(cb)):
        c = cb[i]
        for same in (cb[i], pickle.loads(pickle.dumps(c)), copy.deepcopy(c)):
            assert same == c and hash(same) == hash(c)
    assert cb[1].abstained and np.isnan(cb[1].radius)
    assert cb[0] != cb[1] and cb[1] != sm.Certificate(sm.ABSTAIN, float("nan"), cb[1].p_lower, cb[1].n_a + 1, cb[1].n)
    assert len({cb[1], pickle.loads(pickle.dumps(cb[1]))}) == 1


def test_what_the_classifier_declares_is_checked_before_any_query():
    """A num_classes contradicting the classifier's, a budget too small for both phases, and a
    point with a batch axis each spent up to a batch of queries (10,000 by default) first, and
    named the noise batch (100, 1, 1, 8, 8) rather than the point (1, 1, 8, 8)."""
    scores = Declared(lambda z: np.zeros((len(z), 10), np.float32), num_classes=10, input_shape=(None, 1, 8, 8))
    x = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(zo.ArgumentError, match=r"`num_classes`=2, but the classifier has 10 classes .*num_classes=10"):
        sm.certify(scores, x, sigma=0.1, n0=5, n=5, num_classes=2)
    with pytest.raises(zo.ArgumentError, match=r"`num_classes`=2, but the classifier has 10"):
        sm.predict(scores, x, sigma=0.1, n=11, num_classes=2)
    for call in (lambda: sm.certify(scores, x[None], sigma=0.1, n0=5, n=5),
                 lambda: sm.certify_batch(scores, x, sigma=0.1, n0=5, n=5),
                 lambda: sm.predict(scores, x.ravel(), sigma=0.1, n=11)):
        with pytest.raises(zo.ArgumentError, match=r"takes points of shape \(1, 8, 8\) .*got points of shape \((1, 1, 8, 8|8, 8|64,)\)"):
            call()
    budget = Declared(threshold, remaining=1_000)
    with pytest.raises(zo.ArgumentError, match=r"needs 1,100 classifier queries, but the classifier's budget has 1,000"):
        sm.certify(budget, np.array([1.0]), sigma=0.1, n0=100, n=1_000, num_classes=2)  # n0 alone would fit
    with pytest.raises(zo.ArgumentError, match="needs 2,000"):
        sm.predict(budget, np.array([1.0]), sigma=0.1, n=2_000, num_classes=2)
    assert scores.sizes == budget.sizes == []
    assert sm.certify(budget, np.array([1.0]), sigma=0.1, n0=100, n=900, num_classes=2, rng=0).prediction == 1
    assert sm.certify(scores, x, sigma=0.1, n0=5, n=10, rng=0).n_a == 10  # the declared shape and classes fit


def test_log_probabilities_of_minus_infinity_are_scores():
    """log_softmax of a confident model gives -inf: certify refused it as 'not finite' where
    OnnxClassifier.predict takes the argmax; a NaN row, or one with no score above -inf, has
    no highest class and is still refused."""

    def logprob(z):
        out = np.full((len(z), 3), -np.inf)
        out[:, 2] = 0.0
        out[z.reshape(len(z), -1)[:, 0] < -0.5, 1] = 1.0
        return out

    c = sm.certify(logprob, np.array([1.0]), sigma=0.5, n0=50, n=2000, num_classes=3, rng=0)
    p = 1 - stats.norm.cdf(-1.5 / 0.5)  # class 2 unless the noisy point falls below -0.5
    assert c.prediction == 2 and abs(c.n_a / 2000 - p) < 4 * np.sqrt(p * (1 - p) / 2000)
    for bad in (np.nan, -np.inf, np.inf):  # (+inf: an overflow, whose ties vote for the first class)
        with pytest.raises(zo.OracleError, match="noise sample 0 of point 0.*must not be NaN or \\+inf and must have one"):
            sm.certify(lambda z, bad=bad: np.where(np.arange(3) >= 1, bad, -np.inf) * np.ones((len(z), 1)),
                       np.array([1.0]), sigma=0.1, n0=5, n=10, num_classes=3)


def test_an_input_shape_of_another_convention_is_not_read():
    """A classifier's own `input_shape` of (C, H, W), with no batch axis, was read as
    OnnxClassifier's (N, H, W): its points were refused. Only an input declared as
    OnnxClassifier declares it (with `input_name`) is checked."""
    sign = lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)  # noqa: E731
    clf = Declared(sign, input_shape=(3, 8, 8), input_name=None)
    assert sm.predict(clf, np.full((3, 8, 8), 0.1), sigma=0.1, n=50, num_classes=2, rng=0) == 1
    with pytest.raises(zo.ArgumentError, match=r"takes points of shape \(3, 8, 8\)"):
        sm.predict(Declared(sign, input_shape=(None, 3, 8, 8)), np.full((1, 3, 8, 8), 0.1), sigma=0.1, n=50,
                   num_classes=2, rng=0)


def test_certify_picks_its_class_on_the_selection_samples_only():
    """Cohen's guarantee needs the top class chosen on the n0 samples and counted on n fresh
    ones: a classifier answering 1 for the first 100 samples and 0 after must abstain (n_a = 0);
    choosing on the estimation samples certified class 0, silently."""
    calls = []

    def drifting(z):
        start = sum(calls)
        calls.append(len(z))
        return (np.arange(start, start + len(z)) < 100).astype(np.int64)

    c = sm.certify(drifting, np.array([0.0]), sigma=0.5, n0=100, n=1000, num_classes=2, rng=0)
    assert c.prediction == sm.ABSTAIN and c.n_a == 0


def test_predict_uses_the_two_sided_test_at_its_boundary():
    """A one-sided test passed every test (they were far from the boundary). A classifier cycling
    through a fixed pattern gives exactly 549 against 451 of 1,000: the two-sided p is 0.00214,
    above alpha = 0.0015, so PREDICT abstains; the one-sided p (0.00107) would return class 0."""
    pattern = np.array([0] * 549 + [1] * 451)

    def cyclic(z):
        return pattern[np.arange(len(z)) % 1000]

    two = stats.binomtest(549, 1000, 0.5).pvalue
    assert stats.binomtest(549, 1000, 0.5, alternative="greater").pvalue < 0.0015 < two
    got = sm.predict(cyclic, np.array([0.0]), sigma=0.5, n=1000, alpha=0.0015, num_classes=2, batch_size=1000, rng=0)
    assert got == sm.ABSTAIN
    assert sm.predict(cyclic, np.array([0.0]), sigma=0.5, n=1000, alpha=0.003, num_classes=2, batch_size=1000,
                      rng=0) == 0


def test_predict_tests_the_top_two_counts_only():
    """PREDICT's binomial test is n_A out of n_A + n_B; out of n it abstained wherever a third
    class takes samples (every test had two classes, where the two agree)."""
    pattern = np.array([0] * 5 + [1] * 3 + [2] * 2)
    clf = lambda z: pattern[np.arange(len(z)) % 10]  # noqa: E731 (counts 500 / 300 / 200)
    assert stats.binomtest(500, 800, 0.5).pvalue < 0.001 < stats.binomtest(500, 1000, 0.5).pvalue
    assert sm.predict(clf, np.array([0.0]), sigma=0.5, n=1000, num_classes=3, batch_size=1000, rng=0) == 0


def test_certified_accuracy_counts_radii_equal_to_the_threshold():
    np.testing.assert_array_equal(sm.certified_accuracy([0.0, 0.5], [True, True], [0.0, 0.5]), [1.0, 0.5])


def test_a_classifier_failure_names_the_points_of_its_batch_and_a_bad_label_its_sample():
    """A classifier that raised propagated as a bare RuntimeError, and out-of-range labels
    were reported for "a batch of 200 noisy inputs", where NaN scores named their sample."""
    X = np.stack([np.full(4, v) for v in (1.0, 2.0, -3.0, 4.0)])

    def raises(xb):
        if (xb.reshape(len(xb), -1).mean(1) < -1).any():
            raise RuntimeError("simulator crashed")
        return (xb.reshape(len(xb), -1).sum(1) > 0).astype(int)

    def bad_label(xb):
        return np.where(xb.reshape(len(xb), -1).mean(1) < -1, 9, 1)

    with pytest.raises(zo.OracleError, match=r"oracle raised at a batch of 200 noisy inputs \(points 0-3\): "
                                             r"RuntimeError: simulator crashed") as info:
        zo.smoothing.certify_batch(raises, X, sigma=0.25, n0=50, n=500, num_classes=2, rng=0)
    assert isinstance(info.value.cause, RuntimeError)
    with pytest.raises(zo.OracleError, match=r"oracle returned 9 at noise sample 0 of point 2: labels must lie in "
                                             r"\[0, 2\)"):
        zo.smoothing.certify_batch(bad_label, X, sigma=0.25, n0=50, n=500, num_classes=2, rng=0)

    class Spent(zo.ZoracleError):  # a classifier's own report (an ONNX query budget spent): as it is
        pass

    calls = []

    def budgeted(xb):
        calls.append(1)
        if len(calls) > 1:
            raise Spent("budget spent")
        return (xb.reshape(len(xb), -1).sum(1) > 0).astype(int)

    with pytest.raises(Spent, match="budget spent"):
        zo.smoothing.certify_batch(budgeted, X, sigma=0.25, n0=50, n=500, num_classes=2, rng=0, batch_size=100)


def test_zo_smoothing_after_import_zoracle_as_zo_and_batch_slices_and_big_endian_points():
    """docs/defense.md calls zo.smoothing.radius(...), which raised AttributeError after
    `import zoracle as zo`; a CertificateBatch slice raised an unrelated TypeError (and it had
    no len); big-endian float32 points were "not float32"."""
    import subprocess
    import sys

    code = ("import zoracle as zo, sys; before = 'zoracle.smoothing' in sys.modules; "
            "print(zo.smoothing.radius(300, 300, 0.001, 0.25), not before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert abs(float(out[0]) - 0.49994) < 1e-5 and out[1] == "True"  # imported on first use
    X = np.stack([np.full(4, v) for v in (1.0, 2.0, -3.0)])
    clf = lambda xb: (xb.reshape(len(xb), -1).sum(1) > 0).astype(int)  # noqa: E731
    batch = zo.smoothing.certify_batch(clf, X, sigma=0.25, n0=20, n=100, num_classes=2, rng=0)
    assert len(batch) == 3 and batch.queries == 3 * 120
    part = batch[1:]
    assert isinstance(part, zo.smoothing.CertificateBatch) and len(part) == 2 and part.queries == 240
    assert part[0] == batch[1] and batch[[2, 0]].predictions.tolist() == [batch[2].prediction, batch[0].prediction]
    assert isinstance(batch[np.array(2)], zo.smoothing.Certificate)  # a 0-d index: one point
    for bad in (True, np.array([[0, 1], [1, 2]])):
        with pytest.raises(zo.ArgumentError, match="indexed by an int, a slice, or a 1-D index or boolean array"):
            batch[bad]
    with pytest.raises(zo.ArgumentError, match="boolean index did not match"):  # NumPy's reason, kept
        batch[np.array([True, False])]
    assert {"smoothing", "testing", "executors"} <= set(dir(zo))  # tab completion before first use
    assert "annotations" not in dir(zo)  # (`from __future__ import annotations` was listed)
    big = zo.smoothing.certify_batch(clf, X.astype(">f4"), sigma=0.25, n0=20, n=100, num_classes=2, rng=0)
    small = zo.smoothing.certify_batch(clf, X.astype("<f4"), sigma=0.25, n0=20, n=100, num_classes=2, rng=0)
    np.testing.assert_array_equal(big.radii, small.radii)


def test_certify_draws_fresh_estimation_samples_when_n_equals_n0():
    """n0 == n is a natural setting (n0=n=1000 for a quick look): the n estimation samples must
    still be fresh draws, not the n0 selection samples counted again (Cohen et al.'s guarantee),
    and the classifier must see the m * (n0 + n) queries the batch reports."""
    calls = []

    def drifting(z):  # class 1 for the first 100 noisy inputs, class 0 after
        start = sum(calls)
        calls.append(len(z))
        return (np.arange(start, start + len(z)) < 100).astype(np.int64)

    c = sm.certify(drifting, np.array([0.0]), sigma=0.5, n0=100, n=100, num_classes=2, rng=0)
    assert sum(calls) == 200  # n0 + n inputs classified
    assert c.prediction == sm.ABSTAIN and c.n_a == 0  # class 1 chosen on the first 100, counted on the next 100
    calls.clear()
    b = sm.certify_batch(threshold, np.array([[1.0], [-1.0], [3.0]]), sigma=0.5, n0=50, n=50, num_classes=2, rng=1)
    assert b.queries == 3 * 100
    counting = Counting(threshold)
    sm.certify_batch(counting, np.array([[1.0], [-1.0], [3.0]]), sigma=0.5, n0=50, n=50, num_classes=2, rng=1)
    assert sum(counting.sizes) == b.queries


def test_predict_abstains_on_a_close_race_when_a_third_class_gets_no_sample():
    """n_B is the runner-up's count, not the smallest one: with counts 520 / 480 / 0 of 1,000
    the test of 520 out of 1,000 (p = 0.21) must abstain; 520 out of 520 + 0 would not."""
    pattern = np.array([0] * 52 + [1] * 48)
    clf = lambda z: pattern[np.arange(len(z)) % 100]  # noqa: E731 (counts 520 / 480 / 0)
    assert stats.binomtest(520, 1000, 0.5).pvalue > 0.001
    assert sm.predict(clf, np.array([0.0]), sigma=0.5, n=1000, num_classes=3, batch_size=1000, rng=0) == sm.ABSTAIN
    # the same race ranked the other way round (class 2 ahead of 1): still an abstention
    pattern = np.array([0] * 52 + [2] * 48)
    assert sm.predict(clf, np.array([0.0]), sigma=0.5, n=1000, num_classes=3, batch_size=1000, rng=0) == sm.ABSTAIN


def test_integer_label_columns_and_integer_points_certify_as_labels_and_float32_points():
    """A (k, 1) integer label column (an ONNX ArgMax with keepdims=1) is read as k labels, and
    integer points (uint8 images) are noised as float32: both certify exactly as the plain
    (k,) labels on float32 points do, with the same rng."""
    x = np.array([[3, 1], [0, 2]], dtype=np.uint8)
    column = lambda z: threshold(z)[:, None]  # noqa: E731
    want = sm.certify_batch(threshold, x.astype(np.float32), sigma=0.5, n0=20, n=200, num_classes=2, rng=3)
    for clf, pts in ((column, x.astype(np.float32)), (threshold, x), (column, x)):
        got = sm.certify_batch(clf, pts, sigma=0.5, n0=20, n=200, num_classes=2, rng=3)
        np.testing.assert_array_equal(got.n_a, want.n_a)
        np.testing.assert_array_equal(got.predictions, want.predictions)


@pytest.mark.parametrize("alpha,least", [(0.001, 10), (0.05, 5), (0.01, 7)])
def test_an_n_too_small_to_certify_at_alpha_is_refused_before_any_query(alpha, least):
    """With n_A = n the one-sided Clopper-Pearson bound is alpha ** (1/n), below 1/2 for
    n < log2(1 / alpha): every point abstained, after m (n0 + n) queries."""
    assert least == int(np.ceil(np.log2(1 / alpha)))  # independent: alpha ** (1/n) >= 1/2 iff n >= log2(1/alpha)
    assert stats.beta.ppf(alpha, least - 1, 1) < 0.5 <= stats.beta.ppf(alpha, least, 1)
    clf = Counting(lambda z: np.ones(len(z), np.int64))  # every sample agrees: the best count there is
    for call in (lambda: sm.certify(clf, np.array([1.0]), sigma=0.1, n0=100, n=least - 1, alpha=alpha, num_classes=2),
                 lambda: sm.certify_batch(clf, np.ones((5, 1)), sigma=0.1, n0=100, n=least - 1, alpha=alpha,
                                          num_classes=2)):
        with pytest.raises(zo.ArgumentError, match=rf"`n`={least - 1} cannot certify at `alpha`={alpha:g}.*n >= {least}\b"):
            call()
    assert clf.sizes == []  # nothing spent
    res = sm.certify_batch(clf, np.ones((5, 1)), sigma=0.1, n0=100, n=least, alpha=alpha, num_classes=2, rng=0)
    assert (res.predictions == 1).all() and (res.radii >= 0).all()  # the smallest n certifies



@pytest.mark.parametrize("alpha, least", [(0.001, 11), (0.05, 6)])
def test_predict_refuses_an_n_that_cannot_reject_one_half_before_any_query(alpha, least):
    """PREDICT's two-sided test of n of n agreeing samples has p = 2 ** (1 - n): with n = 10 at
    alpha = 0.001 (p = 0.00195) a perfectly consistent classifier was abstained on, after its
    queries. Refused before any, naming the smallest n."""
    from scipy import stats

    from zoracle.smoothing import ABSTAIN, predict

    assert 2.0 ** (1 - least) <= alpha < 2.0 ** (2 - least)  # the closed form of the smallest n
    calls = []

    def always_one(z):
        calls.append(len(z))
        return np.ones(len(z), dtype=int)

    with pytest.raises(zo.ArgumentError, match=rf"`n`={least - 1} cannot predict .* pass n >= {least}"):
        predict(always_one, np.zeros(3), sigma=0.5, n=least - 1, alpha=alpha, num_classes=2, rng=0)
    assert calls == []
    assert predict(always_one, np.zeros(3), sigma=0.5, n=least, alpha=alpha, num_classes=2, rng=0) == 1 != ABSTAIN
    assert stats.binomtest(least, least, 0.5).pvalue <= alpha


def test_sample_counts_checks_the_declared_num_classes_before_any_query():
    """docs/defense.md: a num_classes contradicting the classifier's is refused with nothing
    spent; sample_counts (unlike certify and predict) queried a first batch, then refused the
    scores' width (or, for labels, returned counts with classes the classifier lacks)."""
    scores = Declared(lambda z: np.zeros((len(z), 10), np.float32), num_classes=10, input_shape=(None, 1, 8, 8))
    labels = Declared(lambda z: np.arange(len(z)) % 10, num_classes=10)
    x = np.zeros((1, 1, 8, 8), np.float32)
    for clf, wrong in ((scores, 2), (labels, 12)):
        with pytest.raises(zo.ArgumentError, match=rf"`num_classes`={wrong}, but the classifier has 10"):
            sm.sample_counts(clf, x, 20, 0.1, num_classes=wrong)
        assert clf.sizes == []
    assert sm.sample_counts(labels, x, 20, 0.1, num_classes=10, rng=0).tolist() == [[2] * 10]


def test_a_contradicted_num_classes_is_refused_with_advice_that_works():
    """The refusal advised "pass num_classes=10, or leave it out"; sample_counts requires
    num_classes (leaving it out is a TypeError), so it must advise only what works there, while
    certify and predict, which default to classifier.num_classes, run without it."""
    labels = Declared(lambda z: np.arange(len(z)) % 10, num_classes=10)
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(zo.ArgumentError, match="pass num_classes=10") as info:
        sm.sample_counts(labels, x, 20, 0.1, num_classes=12)
    if "leave it out" in str(info.value):
        sm.sample_counts(labels, x, 20, 0.1, rng=0)  # the advice, followed
    with pytest.raises(zo.ArgumentError, match="pass num_classes=10, or leave it out"):
        sm.predict(labels, x[0], sigma=0.1, n=100, num_classes=12)
    assert sm.predict(labels, x[0], sigma=0.1, n=100, rng=0) == sm.ABSTAIN  # left out: it runs




def test_bfloat16_torch_scores_are_scores():
    """A torch model run in bfloat16 (autocast, .to(torch.bfloat16)) returns bfloat16 logits,
    which tensor.numpy() refuses: certify raised a bare TypeError (unsupported ScalarType
    BFloat16) after its first query. Their argmax is float32's: the same certificate."""
    torch = pytest.importorskip("torch")

    def scores(z, dtype):
        z = torch.as_tensor(z.reshape(len(z), -1)[:, :1], dtype=torch.float64)
        return torch.cat([-z, z, torch.full_like(z, -0.5)], dim=1).to(dtype)

    kw = dict(sigma=0.5, n0=20, n=300, num_classes=3, rng=3)
    a = sm.certify(lambda z: scores(z, torch.bfloat16), np.array([0.3]), **kw)
    b = sm.certify(lambda z: scores(z, torch.float32), np.array([0.3]), **kw)
    assert (a.prediction, a.n_a) == (b.prediction, b.n_a) and a.prediction == 1

def test_bfloat16_scores_certify_as_their_float32_values():
    """A classifier run in bfloat16 (torch autocast, or JAX's ml_dtypes) returns bfloat16 logits:
    torch's ended in a raw TypeError ('Got unsupported ScalarType BFloat16') and ml_dtypes' were
    refused as not float. bfloat16 is exact in float32, so the certificate must be the float32 one."""
    torch = pytest.importorskip("torch")
    w = torch.tensor([[1.0, -1.0], [0.5, -0.5]])

    def f32(z):
        return (torch.as_tensor(z, dtype=torch.float32) @ w).to(torch.bfloat16).float()  # bf16 values, f32 dtype

    kw = dict(sigma=0.25, n0=50, n=500, alpha=0.001, num_classes=2, rng=0)
    ref = sm.certify(f32, np.array([1.0, 0.5]), **kw)
    assert ref.prediction == 0 and ref.n_a == 500
    assert sm.certify(lambda z: f32(z).to(torch.bfloat16), np.array([1.0, 0.5]), **kw) == ref
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert sm.certify(lambda z: f32(z).numpy().astype(ml_dtypes.bfloat16), np.array([1.0, 0.5]), **kw) == ref



def test_a_certificate_batch_equals_its_copy_and_reloaded_self():
    """The generated ``==`` compared the arrays elementwise and raised NumPy's ValueError."""
    import copy
    import pickle

    threshold = lambda x: (np.asarray(x)[:, 0] > 0).astype(int)  # noqa: E731
    cb = sm.certify_batch(threshold, np.array([[1.0], [0.0], [-2.0]]), sigma=0.5, n0=20, n=200, num_classes=2, rng=0)
    assert np.isnan(cb.radii).any()  # an abstention: NaN radius, equal to itself in a copy
    for same in (pickle.loads(pickle.dumps(cb)), copy.deepcopy(cb), cb[:]):
        assert same == cb and not (same != cb)
    assert cb[:2] != cb and cb != cb[[0, 1, 1]]
