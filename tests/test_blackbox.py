"""blackbox: a black-box function as a torch op with a per-sample ZO vector-Jacobian product."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import blackbox  # noqa: E402

A = np.random.default_rng(0).standard_normal((6, 3))


def analytic_np(x):
    """Per-sample ``sin(x) @ A`` computed in NumPy: torch cannot differentiate through it."""
    return np.sin(x.detach().numpy()) @ A


def true_vjp(x, v):
    return (v @ A.T) * np.cos(x)


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_cge_backward_matches_true_vjp(scheme):
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 3, dtype=torch.float64)
    op = blackbox(analytic_np, zo.CGE(mu=1e-6, scheme=scheme))
    y = op(x)
    np.testing.assert_allclose(y.detach().numpy(), analytic_np(x))
    (y * v).sum().backward()
    want = true_vjp(x.detach().numpy(), v.numpy())
    assert cosine(x.grad.numpy(), want) >= 0.99
    tol = 1e-8 if scheme == "central" else 1e-5
    np.testing.assert_allclose(x.grad.numpy(), want, atol=tol)
    # forward (5 rows) + one perturbed copy per coordinate (central: two)
    assert op.nfev == 5 + 6 * 5 * (2 if scheme == "central" else 1)


def test_rge_backward_is_seeded_and_points_the_right_way():
    xs = torch.randn(4, 6, dtype=torch.float64)
    v = torch.randn(4, 3, dtype=torch.float64)
    want = true_vjp(xs.numpy(), v.numpy())
    grads = []
    for _ in range(2):
        x = xs.clone().requires_grad_(True)
        op = blackbox(analytic_np, zo.RGE(mu=1e-4, directions=400, distribution="sphere"), rng=3)
        (op(x) * v).sum().backward()
        grads.append(x.grad.numpy().copy())
    np.testing.assert_array_equal(grads[0], grads[1])  # same seed, same directions
    # per sample, with q = 400 directions in 6 dims the estimate is close (probabilistic, seeded)
    for n in range(4):
        assert cosine(grads[0][n], want[n]) > 0.9


@pytest.mark.parametrize("distribution", ["sphere", "gaussian", "rademacher"])
def test_rge_backward_has_the_gradients_size_not_only_its_direction(distribution):
    """Halving RGE's scale (``D / q`` to ``D / 2q``) passed every test: they checked the direction
    (cosine) and that training goes down. On a linear black box RGE is unbiased: over many
    directions the estimate's projection on autograd's exact VJP is its squared norm."""
    Al = np.random.default_rng(5).standard_normal((6, 3))
    xs = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, dtype=torch.float64)
    op = blackbox(lambda x: x.detach().numpy() @ Al, zo.RGE(mu=1e-3, directions=20_000, distribution=distribution,
                                                           scheme="central"), rng=0)
    (op(xs) * v).sum().backward()
    want = v.numpy() @ Al.T  # exact: torch autograd of x @ Al
    xt = xs.detach().clone().requires_grad_(True)
    ((xt @ torch.from_numpy(Al)) * v).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-12)
    for n in range(2):
        ratio = float(xs.grad.numpy()[n] @ want[n] / (want[n] @ want[n]))
        assert 0.95 < ratio < 1.05, ratio


def test_context_rows_follow_their_samples():
    # fn(x, labels): a per-sample loss selecting a column by label, context repeated per perturbation
    def loss(x, labels):
        z = analytic_np(x)
        lab = np.asarray(labels)
        return z[np.arange(len(lab)), lab]

    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    op = blackbox(loss, zo.CGE(mu=1e-6, scheme="central"), max_rows=10)  # forces several fn calls
    op(x, labels).sum().backward()
    onehot = np.eye(3)[labels.numpy()]
    np.testing.assert_allclose(x.grad.numpy(), true_vjp(x.detach().numpy(), onehot), atol=1e-8)


@pytest.mark.slow
def test_train_white_box_model_in_front_of_black_box():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    target = rng.standard_normal((1, 4))

    def black_box_loss(z):  # e.g. a simulator: returns a NumPy per-sample loss
        return ((z.detach().numpy() - target) ** 2).sum(1)

    op = blackbox(black_box_loss, zo.RGE(mu=1e-3, directions=20), rng=0)
    model = torch.nn.Linear(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = op(model(x)).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_errors():
    with pytest.raises(zo.ArgumentError, match="fn"):
        blackbox(3)
    with pytest.raises(zo.ArgumentError, match="estimator"):
        blackbox(analytic_np, estimator="cge")
    with pytest.raises(zo.ArgumentError, match="max_rows"):
        blackbox(analytic_np, max_rows=0)
    op = blackbox(lambda x: np.zeros(len(x) + 1))
    with pytest.raises(zo.OracleError, match="rows"):
        op(torch.randn(3, 2))
    with pytest.raises(zo.ArgumentError, match="rows"):
        blackbox(analytic_np)(torch.randn(3, 6), torch.zeros(2))
    with pytest.raises(zo.ArgumentError, match="floating"):
        blackbox(analytic_np)(torch.zeros(3, 6, dtype=torch.long))


def test_a_step_that_does_not_register_is_refused_before_the_forward():
    """CGE(mu=1e-4) at float32 values of 1e4 rounds to no step: the backward divided 0 by 0
    and returned NaN without a word; float16 inputs gave NaN everywhere."""
    calls = []
    op = blackbox(lambda x: calls.append(1) or (x ** 2).sum(1), zo.CGE(mu=1e-4, scheme="central"))
    x = torch.tensor([[1e4, 1.0]], requires_grad=True)
    with pytest.raises(zo.ArgumentError, match=r"CGE\(mu=0.0001\) is not a representable step"):
        op(x)
    with pytest.raises(zo.ArgumentError, match="float32 or float64.*got torch.float16; use x.float()"):
        op(torch.tensor([[1.0, -2.0]], dtype=torch.float16, requires_grad=True))
    assert calls == []
    with torch.no_grad():  # no backward to come: no step to check
        assert op(x).item() == pytest.approx(1e8 + 1)


def test_rows_per_call_context_kind_and_the_callers_input():
    """max_rows was exceeded when the batch had more rows (10 rows a call for max_rows=4); a
    NumPy context reached fn as NumPy in the forward and as a tensor in the backward; an fn
    that wrote into its input changed the caller's tensor."""
    sizes, kinds = [], []

    def fn(x, w):
        sizes.append(len(x))
        kinds.append(type(w).__name__)
        a = x.numpy()
        out = (a ** 2).sum(1) * w
        a -= 1.0  # writes into what it was given
        return out

    w = np.arange(1.0, 11.0)
    x = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    op = blackbox(fn, zo.CGE(mu=1e-6, scheme="central"), max_rows=4)
    op(x, w).sum().backward()
    assert max(sizes) <= 4 and sum(sizes) == 10 * (1 + 2 * 2)
    assert set(kinds) == {"ndarray"}
    assert torch.equal(x.detach(), before)
    np.testing.assert_allclose(x.grad.numpy(), 2 * before.numpy() * w[:, None], rtol=1e-6)


def test_fn_returning_text_or_complex_is_an_oracle_error_naming_the_pass():
    for bad in (lambda x: np.array(["a"] * len(x)), lambda x: np.ones(len(x)) * 1j, lambda x: None):
        with pytest.raises(zo.OracleError, match="blackbox fn, forward, rows 0..2 of 3"):
            blackbox(bad)(torch.randn(3, 2))


def test_an_fn_reusing_one_output_buffer_and_other_fn_mistakes():
    """The op kept a view of the array fn returned: an fn writing every call into one buffer
    changed the outputs of earlier chunks (max_rows) and the forward's saved output (a gradient
    of -1.3e7 for 2.0); a NaN input was reported as an overflowing mu; an output shape that
    changed between chunks or passes failed inside torch."""
    buf = np.empty(64)

    def fn(x):
        out = buf[:len(x)]
        out[:] = (x.numpy() ** 2).sum(1)
        return out

    x = torch.arange(8.0, dtype=torch.float64).reshape(4, 2)
    want = (x ** 2).sum(1)
    assert torch.equal(blackbox(fn, max_rows=2)(x), want) and torch.equal(blackbox(fn)(x), want)
    x1 = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    op = blackbox(fn, zo.CGE(mu=1e-6))
    y1 = op(x1)
    op(torch.tensor([[3.0, 3.0]], dtype=torch.float64))  # a second forward before y1's backward
    y1.sum().backward()
    np.testing.assert_allclose(x1.grad.numpy(), [[2.0, 4.0]], rtol=1e-5)
    with pytest.raises(zo.ArgumentError, match="holds NaN or inf"):
        blackbox(fn)(torch.tensor([[float("nan"), 1.0]], requires_grad=True))
    with pytest.raises(zo.ArgumentError, match="got a tensor of torch.int64"):
        blackbox(fn)(torch.ones(2, 2, dtype=torch.int64))
    calls = []

    def shifty(x):
        calls.append(1)
        return torch.ones(len(x), 3 if len(calls) == 1 else 2, dtype=x.dtype)

    with pytest.raises(zo.OracleError, match="expected each sample's output to have shape \\(3,\\)"):
        blackbox(shifty, max_rows=2)(torch.ones(4, 2))


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_float32_input_keeps_fn_float64_outputs_for_the_differences(scheme):
    # fn computes in float64 a loss with a large offset: rounding its outputs to x's float32
    # before differencing lost most of the step's signal (4% off, silently); the gradient must
    # match the core's estimate of the same function (which keeps losses in float64)
    rng = np.random.default_rng(0)
    x32 = torch.tensor(rng.uniform(0.4, 1.0, size=(3, 4)), dtype=torch.float32, requires_grad=True)

    def fn(x):
        return (x.double() ** 2).sum(1).numpy() + 1e4

    est = zo.CGE(mu=5e-3, scheme=scheme)
    op = blackbox(fn, est)
    y = op(x32)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x32.grad.dtype == torch.float32
    for n in range(3):
        ref = zo.estimate_gradient(lambda p: float((p.astype(np.float64) ** 2).sum() + 1e4),
                                   x32.detach().numpy()[n], est).grad
        np.testing.assert_allclose(x32.grad.numpy()[n], ref, rtol=1e-6)


def test_a_context_tensor_that_requires_grad_is_refused():
    # a context is not differentiated: one that requires grad (a trainable module's output)
    # would silently get no gradient
    x = torch.randn(4, 3, requires_grad=True)
    scale = torch.nn.Linear(1, 1)(torch.ones(4, 1))
    op = blackbox(lambda x, s: (x * s).sum(1), zo.CGE(mu=1e-3))
    with pytest.raises(zo.ArgumentError, match="context argument 0 requires grad"):
        op(x, scale)
    op(x, scale.detach()).sum().backward()  # detached: fine
    with torch.no_grad():
        op(x, scale)  # no gradient wanted: fine


@pytest.mark.parametrize("rows", [1, 2])
def test_a_numpy_context_is_writable_in_the_backward_whatever_the_rows(rows):
    # one row: the repeated context was a read-only broadcast view, so an fn that writes into it
    # worked with two rows and failed with one
    writable = []

    def fn(x, c):
        writable.append(c.flags.writeable)
        c[:] = c * 1.0
        return (x ** 2).sum(1).detach().numpy() * c[:, 0]

    x = torch.randn(rows, 3, dtype=torch.float64, requires_grad=True)
    blackbox(fn, zo.CGE(mu=1e-4))(x, np.ones((rows, 1))).sum().backward()
    assert writable and all(writable)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_an_in_place_op_on_the_output_leaves_the_backward_its_own_copy(dtype, scheme):
    """In float64 the op returned the very tensor it saved for the backward: ``y.mul_(2)`` made
    every backward fail ("modified by an inplace operation"), float32 worked."""
    op = blackbox(lambda z: torch.sin(z), zo.CGE(mu=1e-4, scheme=scheme))
    x = torch.randn(2, 3, dtype=dtype, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = op(x)
    y.mul_(2)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * torch.cos(x.detach()), rtol=0, atol=2e-3 if dtype == torch.float32 else 2e-4)


def test_cge_holds_a_bounded_number_of_perturbed_copies(monkeypatch):
    """CGE perturbed max_rows // N coordinates a pass, each a copy of the whole batch: one
    3 x 224 x 224 image at the default max_rows asked for 39 GB. The passes are now bounded by
    COPY_BYTES too, and the gradient does not depend on the pass size."""
    from zoracle.adapters import _torch_blackbox as bb

    rows = []

    def fn(z):
        rows.append(z.shape[0])
        return (z.reshape(z.shape[0], -1) ** 2).sum(1)

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    blackbox(fn, zo.CGE(mu=1e-5, scheme="central"))(x).sum().backward()
    whole = x.grad.clone()
    assert rows[1:] == [2 * 2 * 192]  # every coordinate in one pass: 192 perturbed copies a sign, one fn call
    monkeypatch.setattr(bb, "COPY_BYTES", 10 * 2 * 192 * 8)  # ten copies of the batch
    rows.clear()
    x.grad = None
    blackbox(fn, zo.CGE(mu=1e-5, scheme="central"))(x).sum().backward()
    assert max(rows[1:]) == 2 * 10 and sum(rows[1:]) == 2 * 2 * 192
    torch.testing.assert_close(x.grad, whole, rtol=0, atol=0)
    torch.testing.assert_close(whole, 2 * x.detach(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("estimator", [zo.CGE(mu=1e-4, scheme="central"), zo.RGE(directions=8)])
def test_a_context_array_keeps_its_backend_in_the_backward(xp, estimator):
    """A CuPy context passed the forward and failed the backward: its rows were repeated with
    np.asarray, which CuPy refuses (a raw TypeError, not an OracleError)."""
    def fn(x, w):
        return (x ** 2).sum(1) * torch.as_tensor(w.get() if hasattr(w, "get") else w)

    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    blackbox(fn, estimator, rng=0)(x, xp.asarray([1.0, 2.0])).sum().backward()
    want = 2 * x.detach() * torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    if isinstance(estimator, zo.CGE):
        torch.testing.assert_close(x.grad, want, rtol=0, atol=1e-7)
    else:
        assert cosine(x.grad.numpy(), want.numpy()) > 0.5


def test_samples_with_no_entries_get_an_empty_gradient():
    """A (N, 0) input raised a bare ZeroDivisionError in backward (a pass size divided by 0)."""
    calls = []
    x = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
    blackbox(lambda X: calls.append(1) or X.sum(1).numpy(), zo.CGE(1e-5))(x).sum().backward()
    assert x.grad.shape == (3, 0) and len(calls) == 1  # the forward only
