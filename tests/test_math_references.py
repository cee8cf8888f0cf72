"""Property tests of the math against references written independently of zoracle: torch.optim
in float64, textbook loops, closed forms, scipy (brentq, betaincinv, the binomial tail) and the
Philox directions drawn here by hand. Each test runs in well under 2 s on the ci profile."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special, stats
from scipy.optimize import brentq

import zoracle as zo
import zoracle._estimators as est_module
from zoracle._estimators import centered_ranks, nes_utilities
from zoracle._masks import keep_counts, random_masks
from zoracle._pruning import layer_ratios, smart_ratio
from zoracle.smoothing import certified_accuracy, certify_batch, lower_confidence_bound

_grad_rows = st.integers(1, 7).flatmap(
    lambda d: st.lists(st.lists(st.floats(-5, 5), min_size=d, max_size=d), min_size=2, max_size=5))


def _torch_run(torch_opt, rows):
    torch = pytest.importorskip("torch")
    p = torch.tensor(rows[0], dtype=torch.float64, requires_grad=True)
    opt = torch_opt([p])
    for g in rows[1:]:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().numpy()


def _zo_run(opt, rows, dtype):
    p = np.asarray(rows[0], dtype)
    s = opt.init(p)
    for g in rows[1:]:
        p, s = opt.update(np.asarray(g, dtype), s, p)
    assert p.dtype == dtype and s.count == len(rows) - 1
    return p


@given(rows=_grad_rows, lr=st.floats(1e-3, 1.0), momentum=st.sampled_from([0.0, 0.5, 0.9]), nesterov=st.booleans(),
       wd=st.sampled_from([0.0, 1e-2, 0.5]), dtype=st.sampled_from([np.float64, np.float32]))
def test_sgd_is_torchs_sgd(rows, lr, momentum, nesterov, wd, dtype):
    torch = pytest.importorskip("torch")
    nesterov = nesterov and momentum > 0
    got = _zo_run(zo.sgd(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd), rows, dtype)
    want = _torch_run(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd), rows)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@given(rows=_grad_rows, lr=st.floats(1e-3, 1.0), b1=st.sampled_from([0.0, 0.9]), b2=st.sampled_from([0.5, 0.999]),
       eps=st.sampled_from([1e-8, 1e-3]), wd=st.sampled_from([0.0, 1e-2, 0.5]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_adam_is_torchs_adamw(rows, lr, b1, b2, eps, wd, dtype):
    torch = pytest.importorskip("torch")
    got = _zo_run(zo.adam(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd), rows, dtype)
    want = _torch_run(lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), rows)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@given(init=st.floats(1e-6, 10), total=st.integers(1, 300), wfrac=st.floats(0, 0.99), final=st.floats(0, 1),
       t=st.integers(0, 400))
def test_cosine_schedule_is_its_formula(init, total, wfrac, final, t):
    w = int(wfrac * total) if total > 1 else 0
    if t >= total:
        want = final
    elif t < w:
        want = init * (t + 1) / w
    else:
        want = final + 0.5 * (init - final) * (1 + math.cos(math.pi * (t - w) / (total - w)))
    got = zo.cosine_schedule(init, total_steps=total, warmup_steps=w, final=final)(t)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


@given(init=st.floats(1e-6, 10), size=st.integers(1, 50), gamma=st.floats(0.01, 2), w=st.integers(0, 20),
       t=st.integers(0, 200))
def test_step_schedule_is_its_formula(init, size, gamma, w, t):
    want = init * (t + 1) / w if t < w else init * gamma ** ((t - w) // size)
    assert zo.step_schedule(init, step_size=size, gamma=gamma, warmup_steps=w)(t) == pytest.approx(want, rel=1e-12)


@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6), data=st.data())
def test_keep_counts_round_each_ratio_and_masks_draw_them(sizes, data):
    ratios = data.draw(st.lists(st.floats(0, 1), min_size=len(sizes), max_size=len(sizes)))
    edges = np.cumsum([0] + sizes)
    blocks = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    counts = keep_counts(blocks, ratios)
    assert counts.tolist() == [min(n, max(int(r > 0), int(np.rint(r * n)))) for r, n in zip(ratios, sizes)]
    assume(counts.sum() > 0)
    c = random_masks(blocks, ratios, data.draw(st.integers(0, 1000)))
    assert np.all(np.diff(c) > 0)
    assert [int(((c >= b.start) & (c < b.stop)).sum()) for b in blocks] == counts.tolist()


@given(scores=st.lists(st.floats(-100, 100), min_size=1, max_size=60), data=st.data(),
       ranking=st.sampled_from(["magnitude", "grasp"]))
def test_layer_ratios_are_a_global_ranking_read_back_per_block(scores, data, ranking):
    s = np.array(scores)
    n = s.size
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else []
    edges = [0, *cuts, n]
    blocks = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
    sparsity = data.draw(st.floats(0, 0.99))
    kept = sorted(((-abs(v) if ranking == "magnitude" else v), i) for i, v in enumerate(s))[:round((1 - sparsity) * n)]
    want = [sum(1 for _, i in kept if b.start <= i < b.stop) for b in blocks]
    got = layer_ratios(s, blocks, sparsity, ranking=ranking) * np.diff(edges)
    np.testing.assert_allclose(got, want, atol=1e-9)


@given(layers=st.lists(st.tuples(st.integers(1, 400), st.sampled_from(["conv", "linear"])), min_size=1, max_size=6),
       sparsity=st.floats(0.0, 0.99), linear_keep=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_smart_ratio_is_its_clipped_closed_form(layers, sparsity, linear_keep):
    sizes = np.array([n for n, _ in layers])
    lin = np.array([k == "linear" for _, k in layers])
    edges = np.cumsum([0, *sizes])
    blocks = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = smart_ratio(blocks, sparsity, kinds=[k for _, k in layers], linear_keep=linear_keep)
    assume(not caught)  # (the documented re-balancing branches warn)
    L, total = len(sizes), int(round((1 - sparsity) * sizes.sum()))
    w = np.array([(L - l + 1) ** 2 + (L - l + 1) for l in range(1, L + 1)], dtype=float)
    rest = total - linear_keep * sizes[lin].sum()
    target = np.where(lin, linear_keep * sizes, 0.0)
    conv = ~lin
    if conv.any() and rest > 0:  # the one c with sum_l min(1, c w_l) n_l = the conv layers' budget
        c = brentq(lambda c: np.sum(np.minimum(1, c * w[conv]) * sizes[conv]) - rest, 0, 1e12, xtol=1e-15)
        target[conv] = np.minimum(1, c * w[conv]) * sizes[conv]
    counts = r * sizes
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-9)
    assert int(np.rint(counts).sum()) == total
    assert np.all(np.abs(counts - target) < 1 + 1e-6)


@given(v=st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=30))
def test_centered_ranks_and_nes_utilities_are_their_textbook_loops(v):
    n = len(v)
    ranks = [(sum(y < x for y in v) + (sum(y == x for y in v) - 1) / 2) / (n - 1) - 0.5 for x in v] if n > 1 else [0.0] * n
    np.testing.assert_allclose(centered_ranks(np.array(v)), ranks, atol=1e-12)
    assume(n >= 2)
    w = [max(0.0, math.log(n / 2 + 1) - math.log(k)) for k in range(1, n + 1)]
    want = np.empty(n)
    for k, i in enumerate(sorted(range(n), key=lambda i: (v[i], i))):
        want[i] = w[k] / sum(w) - 1 / n
    np.testing.assert_allclose(nes_utilities(np.array(v)), want, atol=1e-12)


@given(n=st.integers(1, 10**9), data=st.data(), alpha=st.sampled_from([1e-10, 1e-6, 1e-3, 0.05, 0.5, 0.9]))
def test_lower_confidence_bound_has_tail_alpha(n, data, alpha):
    n_a = data.draw(st.integers(0, n))
    p = lower_confidence_bound(n_a, n, alpha)
    if n_a == 0:
        assert p == 0.0
        return
    assert p == pytest.approx(special.betaincinv(n_a, n - n_a + 1, alpha), rel=1e-9)
    if 0 < p < 1:  # Clopper-Pearson: P[Binomial(n, p) >= n_a] = alpha at the bound
        assert stats.binom.sf(n_a - 1, n, p) == pytest.approx(alpha, rel=1e-5)


@given(radii=st.lists(st.one_of(st.floats(-1, 2), st.just(math.nan)), min_size=1, max_size=20), data=st.data(),
       grid=st.lists(st.floats(0, 2), min_size=1, max_size=4))
def test_certified_accuracy_is_its_count(radii, data, grid):
    correct = data.draw(st.lists(st.booleans(), min_size=len(radii), max_size=len(radii)))
    want = [sum(c and r == r and r >= g for r, c in zip(radii, correct)) / len(radii) for g in grid]
    np.testing.assert_allclose(certified_accuracy(radii, correct, grid), want)


@given(m=st.integers(1, 4), dim=st.integers(1, 5), n0=st.integers(1, 30), n=st.integers(20, 300),
       batch_size=st.integers(1, 500), seed=st.integers(0, 2**32), sigma=st.floats(0.05, 3),
       dtype=st.sampled_from([np.float64, np.float32]), data=st.data())
def test_certify_batch_is_cohens_certify_written_out(m, dim, n0, n, batch_size, seed, sigma, dtype, data):
    alpha = 0.2
    w = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=dim, max_size=dim)))
    x = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=m * dim, max_size=m * dim)), dtype).reshape(m, dim)

    def classifier(z):
        return (z.reshape(len(z), -1) @ w + 0.1 > 0).astype(np.int64)

    cb = certify_batch(classifier, x, sigma=sigma, n0=n0, n=n, alpha=alpha, num_classes=2, batch_size=batch_size,
                       rng=seed)
    gen = np.random.default_rng(seed)

    def counts(k):  # every point's k samples in one draw, in point order
        labels = classifier(np.repeat(x, k, axis=0) + gen.standard_normal((m * k, dim), dtype=dtype) * dtype(sigma))
        labels = labels.reshape(m, k)
        return np.stack([(labels == 0).sum(1), (labels == 1).sum(1)], axis=1)

    top = counts(n0).argmax(1)
    c1 = counts(n)
    for i in range(m):
        n_a = int(c1[i, top[i]])
        p = special.betaincinv(n_a, n - n_a + 1, alpha) if n_a else 0.0
        assert cb.n_a[i] == n_a and cb.p_lower[i] == pytest.approx(p, rel=1e-9)
        if p >= 0.5:
            assert cb.predictions[i] == top[i] and cb.radii[i] == pytest.approx(sigma * stats.norm.ppf(p), rel=1e-9)
        else:
            assert cb.predictions[i] == zo.smoothing.ABSTAIN and math.isnan(cb.radii[i])
    assert cb.queries == m * (n0 + n)


class _Batch:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        return self.f(x)

    def batch(self, X):
        return np.array([self.f(r) for r in X])


_SPECIAL = [0.0, -0.0, 1e-310, 1e-40, 0.5, 1.0, -2.0, 4096.0, 1e7, 3e8, -1e15, 1e30, 1e37]


@given(x=st.integers(1, 9).flatmap(lambda d: st.lists(st.one_of(st.floats(-1e3, 1e3), st.sampled_from(_SPECIAL)),
                                                      min_size=d, max_size=d)),
       dtype=st.sampled_from([np.float64, np.float32]), scheme=st.sampled_from(["forward", "central"]),
       mu=st.sampled_from([1e-320, 1e-8, 5e-3, 1e-3, 3.0, 1e36]), batch=st.booleans(), data=st.data())
@settings(max_examples=100)
def test_cge_is_the_difference_quotient_over_the_step_taken(x, dtype, scheme, mu, batch, data):
    """Extreme scales, subnormal steps, float32: the textbook quotient over ``(x + mu) - x``, or a
    refusal exactly where that step is 0 (``approx_fprime``'s convention)."""
    # (the coarse-loss warning, an error here, is given once per oracle code: each example its own, or the
    # replay of one that warned passes and reads as flaky)
    est_module._COARSE_WARNED.clear()
    x = np.asarray(x, dtype)
    d = x.size
    c = np.asarray(data.draw(st.lists(st.floats(-2, 2), min_size=d, max_size=d)))

    def f(z):
        z = np.asarray(z, np.float64)
        return float(c @ z + 1e-3 * z.sum() ** 2)

    m = dtype(mu)
    try:
        est = zo.estimate_gradient(_Batch(f) if batch else f, x, zo.CGE(mu=mu, scheme=scheme))
    except zo.ArgumentError:
        assert np.any((x + m) - x == 0) or (scheme == "central" and np.any(x - (x - m) == 0)) \
            or not np.all(np.isfinite(x + m))
        return
    want = np.empty(d)
    for i in range(d):
        up, down = x.copy(), x.copy()
        up[i] = x[i] + m
        if scheme == "central":
            down[i] = x[i] - m
        want[i] = (f(up) - f(down)) / (float(up[i]) - float(down[i]))
    assert est.grad.dtype == dtype and est.loss == f(x)
    assert est.nfev == (d + 1 if scheme == "forward" else 2 * d + 1)
    np.testing.assert_allclose(est.grad, want.astype(dtype), rtol=1e-6 if dtype == np.float32 else 1e-12)


@given(x=st.integers(1, 8).flatmap(lambda d: st.lists(st.floats(-3, 3), min_size=d, max_size=d)),
       seed=st.integers(0, 2**32), common=st.booleans())
def test_zo_grasp_is_the_difference_of_two_rges_over_mu(x, seed, common):
    x = np.asarray(x)
    c = np.linspace(-1, 1, x.size)

    def f(z):
        return float(c @ z ** 3)

    mu, q = 5e-3, 5
    got = zo.zo_grasp(f, x, mu=mu, directions=q, rng=seed, common_random_numbers=common)
    gen = np.random.default_rng(seed)
    s1 = int(gen.integers(2**63))
    s2 = s1 if common else int(gen.integers(2**63))
    root1, root2 = (int(np.random.default_rng(s).integers(2**63)) for s in (s1, s2))

    def rge(p, root):  # forward Gaussian RGE, each direction from Philox keyed (root, i)
        g = np.zeros(p.size)
        for i in range(q):
            u = np.random.Generator(np.random.Philox(key=[root, i])).standard_normal(p.size)
            g += (f(p + mu * u) - f(p)) / mu * u
        return g / q

    g1 = rge(x, root1)
    g2 = rge(x + mu * g1, root2)
    np.testing.assert_allclose(got, -x * (g2 - g1) / mu, rtol=1e-9, atol=1e-9)


@given(d=st.integers(1, 6), epochs=st.integers(1, 3), per_epoch=st.integers(1, 4),
       scheme=st.sampled_from(["forward", "central"]), opt=st.sampled_from(["sgd", "adam", "sign_sgd"]),
       lr_schedule=st.booleans(), mu_schedule=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]))
@settings(max_examples=30)
def test_train_is_the_loop_of_estimates_and_updates(d, epochs, per_epoch, scheme, opt, lr_schedule, mu_schedule, dtype):
    c = np.linspace(-1, 2, d)

    def f(z):
        z = np.asarray(z, np.float64)
        return float(c @ z ** 2 + z.sum() ** 3 / 10)

    x0 = np.linspace(0.3, 1.1, d).astype(dtype)
    make = {"sgd": lambda: zo.sgd(0.05, momentum=0.5, nesterov=True, weight_decay=0.01),
            "adam": lambda: zo.adam(0.05, weight_decay=0.1), "sign_sgd": lambda: zo.sign_sgd(0.01)}[opt]
    steps = epochs * per_epoch
    lr = zo.cosine_schedule(0.05, total_steps=steps, warmup_steps=min(1, steps - 1)) if lr_schedule else None
    mu = zo.step_schedule(0.01, step_size=2, gamma=0.5) if mu_schedule else None
    res = zo.train(f, x0, epochs=epochs, steps_per_epoch=per_epoch, estimator=zo.CGE(mu=0.02, scheme=scheme),
                   optimizer=make(), schedule=lr, mu=mu, progress=False, rng=0)
    o = make()
    p, s = x0.copy(), o.init(x0)
    for t in range(steps):
        g = zo.estimate_gradient(f, p, zo.CGE(mu=mu(t) if mu_schedule else 0.02, scheme=scheme)).grad
        p, s = o.update(g, s, p, lr=lr(t) if lr_schedule else None)
    np.testing.assert_array_equal(res.params, p)
    assert res.nfev == steps * (d + 1 if scheme == "forward" else 2 * d + 1)
