"""CGE, RGE, ZO-GraSP and sparse training against references written here, independently of
zoracle: torch autograd (gradients, Hessian diagonals, Hessian-vector products), the closed
form of a smoothed cubic, and the parameters a run moves step by step (REFERENCE.md, sections
1-3). Hypothesis runs the repo's deterministic profile; each test takes a few seconds."""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo

try:  # the autograd references; the RGE and training tests run without torch
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (autograd is the reference)")

# ------------------------------------------------------------------------------- (1) CGE
# f(x) = sum_i a_i sin(w_i x_i) + s tanh(c . x): smooth, with derivatives bounded in closed form
# (|tanh''| <= 4 / (3 sqrt 3), |tanh'''| <= 2), so the truncation errors of the difference
# quotients have a bound that needs no sampling: forward mu / 2 sup|f_ii|, central mu^2 / 6 sup|f_iii|.
_TANH2, _TANH3 = 4 / (3 * math.sqrt(3)), 2.0


def _smooth(a, w, s, c):
    a, w, c = (torch.as_tensor(v, dtype=torch.float64) for v in (a, w, c))

    def f(x):
        return (a * torch.sin(w * x)).sum() + s * torch.tanh(c @ x)

    return f


def _numpy_oracle(f):
    def loss(x):
        with torch.no_grad():
            return float(f(torch.from_numpy(np.array(x, dtype=np.float64))))

    return loss


_vec = st.floats(-2, 2)


@given(d=st.integers(1, 8), data=st.data(), scheme=st.sampled_from(["forward", "central"]),
       mu=st.sampled_from([1e-3, 1e-2, 5e-2, 0.2]), pick=st.sampled_from(["dense", "indices", "mask", "dynamic"]))
@settings(max_examples=60)
@needs_torch
def test_cge_is_autograds_gradient_within_its_truncation_bound(d, data, scheme, mu, pick):
    """Dense and sparse CGE (an index array, a boolean mask, a DynamicMasks draw) against torch
    autograd in float64: within ``mu / 2 sup|f_ii|`` (forward) or ``mu^2 / 6 sup|f_iii|``
    (central) plus round-off on the coordinates asked for, exact 0 elsewhere, ``n + 1`` or
    ``2n + 1`` queries. Forward CGE is also ``g + mu / 2 diag(H)`` (autograd's Hessian) to
    ``mu^2 / 6 sup|f_iii|``: its bias is the forward quotient's own, not just below a bound."""
    draw = lambda s: np.asarray(data.draw(st.lists(s, min_size=d, max_size=d)))  # noqa: E731
    a, w, c, x = draw(_vec), draw(st.floats(0.1, 3)), draw(_vec), draw(st.floats(-3, 3))
    s = data.draw(st.floats(-2, 2))
    f = _smooth(a, w, s, c)
    if pick == "dense":
        coords = None
        idx = np.arange(d)
    elif pick == "dynamic":
        cut = data.draw(st.integers(0, d - 1))
        blocks = [slice(0, cut + 1)] + ([slice(cut + 1, d)] if cut + 1 < d else [])
        ratios = [data.draw(st.sampled_from([0.0, 0.5, 1.0])) for _ in blocks]
        if not any(ratios):
            ratios[0] = 0.5
        coords = zo.DynamicMasks(blocks, ratios, seed=data.draw(st.integers(0, 99)), interval=1).coordinates(0)
        idx = coords
    else:
        idx = np.array(sorted(data.draw(st.sets(st.integers(0, d - 1), min_size=1, max_size=d))))
        coords = idx
        if pick == "mask":
            coords = np.zeros(d, dtype=bool)
            coords[idx] = True
    est = zo.estimate_gradient(_numpy_oracle(f), x, zo.CGE(mu=mu, scheme=scheme), coordinates=coords)

    xt = torch.tensor(x, requires_grad=True)
    g = torch.autograd.grad(f(xt), xt)[0].numpy()
    hdiag = np.diag(torch.autograd.functional.hessian(f, torch.from_numpy(x)).numpy())
    sup2 = np.abs(a) * w ** 2 + abs(s) * c ** 2 * _TANH2
    sup3 = np.abs(a) * w ** 3 + abs(s) * np.abs(c) ** 3 * _TANH3
    scale = np.abs(a).sum() + abs(s) + 1.0
    roundoff = (4 * d + 8) * np.finfo(np.float64).eps * scale / mu
    step = mu * (1 + 1e-9)  # the representable step (x + mu) - x, |x| <= 3
    n = len(idx)
    assert est.nfev == (n + 1 if scheme == "forward" else 2 * n + 1)
    assert est.loss == _numpy_oracle(f)(x)
    err = est.grad[idx] - g[idx]
    if scheme == "forward":
        assert np.all(np.abs(err) <= step / 2 * sup2[idx] + roundoff), (err, step / 2 * sup2[idx])
        assert np.all(np.abs(err - mu / 2 * hdiag[idx]) <= step ** 2 / 6 * sup3[idx] + roundoff)
    else:
        assert np.all(np.abs(err) <= step ** 2 / 6 * sup3[idx] + roundoff), (err, step ** 2 / 6 * sup3[idx])
    rest = np.setdiff1d(np.arange(d), idx)
    assert np.all(est.grad[rest] == 0.0)


# ------------------------------------------------------------------------------- (2) RGE
class _Cubic:
    """``l(x) = sum_i c_i x_i^3 + b . x`` with a vectorized ``batch`` (RGE's many directions at once)."""

    def __init__(self, c, b):
        self.c, self.b = c, b

    def batch(self, X):
        X = np.asarray(X, dtype=np.float64)
        return (X ** 3) @ self.c + X @ self.b

    def __call__(self, x):
        return float(self.batch(np.asarray(x)[None])[0])


@given(d=st.integers(1, 6), data=st.data(), scheme=st.sampled_from(["forward", "central"]),
       distribution=st.sampled_from(["gaussian", "sphere", "rademacher"]), mu=st.sampled_from([1e-2, 0.3, 1.0]),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30)
@pytest.mark.slow
def test_rge_over_many_directions_is_the_smoothed_gradient_with_its_scaling(d, data, scheme, distribution, mu, seed):
    """Probabilistic (hypothesis's derandomized draws fix the seeds): RGE with q = 8,000
    directions against the gradient of the smoothed cubic, in closed form. Gaussian
    directions, scale 1/q: ``E l(x + mu u)``, gradient ``b + 3 c (x^2 + mu^2)``. Directions on
    the unit sphere, scale d/q: the ball-smoothed ``E_{|v| <= 1} l(x + mu v)``, gradient
    ``b + 3 c (x^2 + mu^2 / (d + 2))``. Rademacher directions (+-1 entries), scale 1/q:
    ``E l(x + mu u)`` over them, gradient ``b + 3 c (x^2 + mu^2 / 3)`` (``u_i^4 = 1`` where a
    Gaussian's fourth moment is 3). Forward and central alike (both are unbiased for the
    smoothed gradient). Within 6 standard errors, measured on directions drawn here."""
    draw = lambda s: np.asarray(data.draw(st.lists(s, min_size=d, max_size=d)))  # noqa: E731
    c, b, x = draw(st.floats(-1, 1)), draw(st.floats(-2, 2)), draw(st.floats(-2, 2))
    oracle = _Cubic(c, b)
    q = 8_000
    est = zo.estimate_gradient(oracle, x, zo.RGE(mu=mu, directions=q, distribution=distribution, scheme=scheme),
                               rng=seed)
    # phi E u_i^4 / 3: over N(0, I), the unit sphere (as E u_i^2 over the unit ball), +-1 entries
    second = {"gaussian": 1.0, "sphere": 1.0 / (d + 2), "rademacher": 1.0 / 3}[distribution]
    want = b + 3 * c * (x ** 2 + mu ** 2 * second)
    # the spread of one direction's term, on directions of the same law drawn here
    U = np.random.default_rng(seed ^ 0x5EED).standard_normal((q, d))
    if distribution == "rademacher":
        U = np.sign(U)
    phi = 1.0
    if distribution == "sphere":
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        phi = d
    if scheme == "forward":
        coef = (oracle.batch(x + mu * U) - oracle(x)) / mu
    else:
        coef = (oracle.batch(x + mu * U) - oracle.batch(x - mu * U)) / (2 * mu)
    terms = phi * coef[:, None] * U
    se = terms.std(axis=0, ddof=1) / math.sqrt(q)
    assert est.nfev == (q + 1 if scheme == "forward" else 2 * q + 1)
    assert np.all(np.abs(est.grad - want) <= 6 * se + 1e-9), (est.grad, want, se)


# ------------------------------------------------------------------------------ (3) ZO-GraSP
def _tiny_mlp(seed, din, hidden, k, n=16):
    """A tanh MLP with a cross-entropy mean loss on fixed random data, written for a batch of
    flat parameter vectors ``(m, d) -> (m,)``; its weight blocks; an initial ``theta``."""
    r = np.random.default_rng(seed)
    X = torch.as_tensor(r.standard_normal((n, din)))
    y = torch.as_tensor(r.integers(0, k, n))
    edges = np.cumsum([0, din * hidden, hidden, hidden * k, k])
    b = [slice(int(edges[i]), int(edges[i + 1])) for i in range(4)]

    def net(P):
        W1, b1 = P[:, b[0]].reshape(-1, din, hidden), P[:, b[1]][:, None, :]
        W2, b2 = P[:, b[2]].reshape(-1, hidden, k), P[:, b[3]][:, None, :]
        Z = torch.tanh(X @ W1 + b1) @ W2 + b2
        ce = torch.nn.functional.cross_entropy(Z.reshape(-1, k), y.repeat(P.shape[0]), reduction="none")
        return ce.reshape(P.shape[0], n).mean(1)

    return net, r.standard_normal(int(edges[-1])) * 0.8, b


class _Net:
    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        with torch.no_grad():
            return float(self.net(torch.from_numpy(np.array(x, dtype=np.float64))[None])[0])

    def batch(self, X):
        with torch.no_grad():
            return self.net(torch.from_numpy(np.array(X, dtype=np.float64))).numpy()


@given(seed=st.integers(0, 2**32 - 1), din=st.integers(2, 4), hidden=st.integers(2, 5), k=st.integers(2, 3),
       with_blocks=st.booleans(), sparsity=st.sampled_from([0.5, 0.8, 0.9]),
       ranking=st.sampled_from(["magnitude", "grasp"]))
@settings(max_examples=15)
@needs_torch
@pytest.mark.slow
def test_zo_grasp_is_autograds_grasp_score_on_tiny_nets(seed, din, hidden, k, with_blocks, sparsity, ranking):
    """ZO-GraSP against GraSP's ``-theta * (H g)`` with ``H g`` a Hessian-vector product by
    torch autograd (double backward), on tiny tanh MLPs in float64: with q = 100 d common
    directions its error is of order sqrt(d / q) times ``|theta|_inf |H| |g|``, its slope
    against the exact scores near 1 and its correlation high; a sign flip, a factor 2 or d, or
    independent directions fail one of these. Scored ``blocks`` (the weights) keep exactly
    those scores, and 0 elsewhere. The keep ratios of a global pruning of the weights (REFERENCE.md: "prune globally
    by score, then keep each layer's fraction") are the exact scores' up to the coordinates
    whose rank the estimate's error ``e`` can move: a weight whose exact key clears the K-th
    largest by more than ``2 e`` is kept, one below it by more than ``2 e`` is pruned."""
    net, theta, b = _tiny_mlp(seed, din, hidden, k)
    p = torch.tensor(theta, requires_grad=True)
    g = torch.autograd.grad(net(p[None])[0], p, create_graph=True)[0]
    hg = torch.autograd.grad(g, p, grad_outputs=g.detach())[0].numpy()
    exact = -theta * hg
    d = theta.size
    kw = dict(mu=1e-3, directions=100 * d, rng=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mean loss of order 1: no warning of a long second step
        got = zo.zo_grasp(_Net(net), theta, **kw)
        if with_blocks:
            weights = zo.zo_grasp(_Net(net), theta, blocks=[b[0], b[2]], **kw)
    # with P = U U^T / q, ZO-GraSP is -theta * P H P g up to O(mu); |P - I| is of order sqrt(d / q)
    H = torch.autograd.functional.hessian(lambda z: net(z[None])[0], torch.from_numpy(theta)).numpy()
    bound = 3 * math.sqrt(1 / 100) * np.abs(theta).max() * np.linalg.norm(H, 2) * np.linalg.norm(g.detach().numpy())
    assert np.linalg.norm(got - exact) <= bound
    slope = got @ exact / (exact @ exact)  # 1 up to the noise (0.88-1.21 over 100 nets); 0.5 for a factor 2
    assert 0.6 < slope < 1.4, slope
    assert np.corrcoef(got, exact)[0, 1] > 0.9  # (at least 0.975 over those 100 nets)
    if with_blocks:
        idx = np.r_[b[0], b[2]]
        assert weights[idx].tobytes() == got[idx].tobytes()
        assert np.all(weights[np.r_[b[1], b[3]]] == 0.0)
    layers = [b[0], b[2]]
    ratios = zo.layer_ratios(got, layers, sparsity, ranking=ranking)
    # the key that keeps the largest: |S| ("magnitude", the reference code's) or -S (GraSP's: remove the highest S)
    key = (lambda v: np.abs(v)) if ranking == "magnitude" else (lambda v: -v)
    idx = np.r_[b[0], b[2]]
    e = np.max(np.abs(got[idx] - exact[idx]))
    n_kept = round((1 - sparsity) * idx.size)
    kth = np.sort(key(exact[idx]))[::-1][n_kept - 1]
    for s, r in zip(layers, ratios):
        v = key(exact[s])
        kept = r * (s.stop - s.start)
        assert np.sum(v > kth + 2 * e) <= round(kept) <= np.sum(v >= kth - 2 * e), (s, r, kth, e)
    assert round(float(ratios @ [s.stop - s.start for s in layers])) == n_kept


# --------------------------------------------------------------------------- (4) masks in train
_P = namedtuple("P", "name slice shape kind")


class _Spy:
    """A plain oracle that records every query it gets."""

    def __init__(self, target, weights):
        self.target, self.weights, self.queries = target, weights, []

    def __call__(self, x):
        self.queries.append(np.array(x, copy=True))
        z = np.asarray(x, dtype=np.float64)
        return float(self.weights @ (z - self.target) ** 2 + 0.01 * np.sum(z) ** 2)


@given(sizes=st.lists(st.integers(2, 9), min_size=1, max_size=3), bias=st.booleans(),
       ratios=st.sampled_from(["uniform", "random", "smart", "zo_grasp"]), interval=st.sampled_from([1, 2, "step"]),
       sparsity=st.sampled_from([0.5, 0.75, 0.9]), optimizer=st.sampled_from(["sgd", "momentum", "adam"]),
       seed=st.integers(0, 2**16))
@settings(max_examples=40)
def test_sparse_training_moves_exactly_the_masked_coordinates(sizes, bias, ratios, interval, sparsity, optimizer, seed):
    """Sparse CGE in ``train``: each step's mask is read off its own queries (the coordinates a
    query moves away from the step's base point). Plain SGD changes exactly those coordinates,
    each by ``-lr`` times its forward quotient; with momentum or Adam a coordinate that no mask
    has held yet never moves. Biases (dense blocks) are in every mask; every scored block keeps
    its count of ``res.ratios`` in every mask, and the mask is ``DynamicMasks``' draw for the step's
    epoch period (or the step, ``interval="step"``)."""
    blocks, at = [], 0
    for i, n in enumerate(sizes):
        blocks.append(_P(f"w{i}", slice(at, at + n), (n,), "linear"))
        at += n
        if bias:
            blocks.append(_P(f"b{i}", slice(at, at + 1), (1,), "bias"))
            at += 1
    d = at
    r = np.random.default_rng(seed)
    oracle = _Spy(r.uniform(3, 5, d) * r.choice([-1, 1], d), r.uniform(0.5, 2, d))
    x0 = r.uniform(-1, 1, d)
    scored = [blk.slice for blk in blocks if blk.kind == "linear"]
    n_scored = sum(s.stop - s.start for s in scored)
    if round((1 - sparsity) * n_scored) == 0 and not bias:
        sparsity = 0.5
    lr = 1e-3
    opt = {"sgd": zo.sgd(lr), "momentum": zo.sgd(lr, momentum=0.9), "adam": zo.adam(lr)}[optimizer]
    after = []  # params after each step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (smart_ratio's budget notes; zero-keep warnings)
        res = zo.train(oracle, x0, epochs=3, steps_per_epoch=2, estimator=zo.CGE(mu=1e-4), optimizer=opt,
                       sparsity=sparsity, ratios=ratios, blocks=blocks, mask_shuffle_interval=interval,
                       rng=seed, progress=False, **({"grasp_directions": 8} if ratios == "zo_grasp" else {}),
                       callbacks=[lambda ev, rec, p: after.append(np.array(p, copy=True)) if ev == "step" else None])
    steps = res.history.steps
    assert len(steps) == len(after) == 6
    queries = oracle.queries[len(oracle.queries) - sum(s["nfev"] for s in steps):]  # (ZO-GraSP's first)
    counts = zo.keep_counts(scored, res.ratios)
    dense = [blk.slice for blk in blocks if blk.kind == "bias"]
    root = int(np.random.default_rng(seed).integers(2**63))  # train's root of its random choices for rng=seed
    masks = zo.DynamicMasks(scored, res.ratios, seed=root, interval=interval, dense=dense)
    before, ever = x0, np.zeros(d, dtype=bool)
    for t, rec in enumerate(steps):
        mine, queries = queries[:rec["nfev"]], queries[rec["nfev"]:]
        base = mine[0]
        np.testing.assert_array_equal(base, before)
        mask = np.zeros(d, dtype=bool)
        for z in mine[1:]:
            moved = np.flatnonzero(z != base)
            assert moved.size == 1  # one coordinate a query
            mask[moved[0]] = True
        assert mask.sum() == len(mine) - 1
        for s in dense:
            assert mask[s].all()
        for s, k in zip(scored, counts):
            assert mask[s].sum() == k
        drawn = masks.coordinates(rec["epoch"], step=rec["step"] if interval == "step" else None)
        np.testing.assert_array_equal(np.flatnonzero(mask), drawn)  # DynamicMasks' draw for the step's period
        ever |= mask
        delta = after[t] - before
        if optimizer == "sgd":
            f0 = oracle(base)
            oracle.queries.pop()
            want = np.zeros(d)
            for z in mine[1:]:
                i = int(np.flatnonzero(z != base)[0])
                want[i] = -lr * (oracle(z) - f0) / (z[i] - base[i])
                oracle.queries.pop()
            np.testing.assert_array_equal(delta != 0, mask)
            np.testing.assert_allclose(delta, want, rtol=1e-9, atol=0)
        else:
            assert np.all(delta[~ever] == 0.0)
            assert np.all(delta[mask] != 0.0)
        before = after[t]
    np.testing.assert_array_equal(res.params, before)
