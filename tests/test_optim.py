"""Optimizers and schedules: pure init/update pairs, reference formulas, schedule shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo


def _run(opt, grads, p0):
    p, s = p0.copy(), opt.init(p0)
    for g in grads:
        p, s = opt.update(g, s, p)
    return p, s


def test_sgd_momentum_nesterov_weight_decay_match_torch_convention():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    for nesterov in (False, True):
        lr, m, wd = 0.1, 0.9, 5e-4
        p, v = p0.copy(), np.zeros(5)
        for g in grads:  # PyTorch's SGD update written out
            g = g + wd * p
            v = m * v + g
            p = p - lr * (g + m * v if nesterov else v)
        got, state = _run(zo.sgd(lr, momentum=m, nesterov=nesterov, weight_decay=wd), grads, p0)
        np.testing.assert_allclose(got, p, rtol=1e-12)
        assert state.count == 6 and isinstance(state, zo.SGDState)


def test_update_is_pure():
    opt = zo.sgd(0.1, momentum=0.9)
    p = np.ones(3)
    s = opt.init(p)
    g = np.full(3, 2.0)
    p2, s2 = opt.update(g, s, p)
    assert p.tolist() == [1.0, 1.0, 1.0] and s.count == 0 and not s.momentum.any()
    p3, _ = opt.update(g, s, p)
    np.testing.assert_array_equal(p2, p3)


def test_adam_matches_reference_formula():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(5)]
    p, m, v = p0.copy(), np.zeros(4), np.zeros(4)
    for t, g in enumerate(grads, 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    got, state = _run(zo.adam(0.01), grads, p0)
    np.testing.assert_allclose(got, p, rtol=1e-12)
    assert isinstance(state, zo.AdamState) and state.count == 5


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=8))
def test_sign_sgd_moves_by_lr_against_the_sign(g):
    g = np.array(g)
    p, _ = zo.sign_sgd(0.25).update(g, zo.sign_sgd(0.25).init(np.zeros_like(g)), np.zeros_like(g))
    np.testing.assert_array_equal(p, -0.25 * np.sign(g))


def test_float32_params_stay_float32():
    p = np.ones(3, dtype=np.float32)
    for opt in (zo.sgd(0.1, momentum=0.9, weight_decay=1e-3), zo.adam(0.1), zo.sign_sgd(0.1)):
        new, _ = opt.update(np.ones(3, dtype=np.float32), opt.init(p), p)
        assert new.dtype == np.float32


def test_lr_schedule_and_override():
    sched = zo.step_schedule(1.0, step_size=1, gamma=0.5)
    opt = zo.sgd(sched)
    p, s = np.zeros(1), opt.init(np.zeros(1))
    steps = []
    for _ in range(3):
        new, s = opt.update(np.ones(1), s, p)
        steps.append(float(p[0] - new[0]))
        p = new
    assert steps == [1.0, 0.5, 0.25]
    new, _ = opt.update(np.ones(1), s, p, lr=0.125)
    assert float(p[0] - new[0]) == 0.125


def test_cosine_schedule_shape():
    s = zo.cosine_schedule(0.1, total_steps=110, warmup_steps=10)
    warm = [s(t) for t in range(10)]
    assert np.all(np.diff(warm) > 0) and math.isclose(warm[-1], 0.1)
    decay = [s(t) for t in range(10, 111)]
    assert np.all(np.diff(decay) <= 1e-15) and math.isclose(s(60), 0.05) and s(110) == 0.0


def test_linear_warmup_wraps_a_schedule():
    inner = zo.cosine_schedule(1.0, total_steps=100)
    s = zo.linear_warmup(inner, warmup_steps=5)
    assert math.isclose(s(4), inner(5)) and s(0) == pytest.approx(inner(5) / 5) and s(50) == inner(50)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: zo.sgd(-1.0), "lr"),
        (lambda: zo.sgd(0.1, momentum=1.0), "momentum"),
        (lambda: zo.sgd(0.1, nesterov=True), "nesterov"),
        (lambda: zo.adam(0.1, b2=1.5), "b2"),
        (lambda: zo.adam(0.1, eps=0.0), "`eps` must be > 0"),  # sparse CGE's zeros stepped by 0/0 = NaN
        (lambda: zo.sign_sgd("fast"), "lr"),
        (lambda: zo.cosine_schedule(0.1, total_steps=10, warmup_steps=10), "warmup_steps"),
        (lambda: zo.step_schedule(0.1, step_size=0), "step_size"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make, match):
    with pytest.raises(zo.ArgumentError, match=match):
        make()


@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10), st.floats(0, 2)), min_size=1, max_size=8))
def test_scaled_moves_each_coordinate_by_its_multiple_of_the_inner_step(rows):
    from zoracle._optim import scaled

    g, p, scale = (np.array(c) for c in zip(*rows))
    inner = zo.adam(0.1, b1=0.0, weight_decay=0.01)
    opt = scaled(inner, scale, "test")
    new, state = opt.update(g, opt.init(p), p)
    ref, ref_state = inner.update(g, inner.init(p), p)
    np.testing.assert_allclose(new - p, (ref - p) * scale, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(state.nu, ref_state.nu)  # the inner state advances as without the scale
    assert opt.config == inner.config + " * test" and opt.name == inner.name


@pytest.mark.parametrize("make", [lambda: zo.sgd(0.1, momentum=0.9), lambda: zo.adam(0.1), lambda: zo.sign_sgd(0.1)])
def test_update_used_directly_refuses_what_it_would_get_wrong(make):
    # integer params never moved (lr cast to int: 0), a (d, 1) gradient broadcast (d,) params to
    # (d, d), and a state built for another size broadcast: all silently
    opt = make()
    with pytest.raises(zo.ArgumentError, match="must be a 1-D floating-point array, got int64"):
        opt.init(np.array([1, 2, 3]))
    p = np.array([1.0, 2.0, 3.0])
    state = opt.init(p)
    with pytest.raises(zo.ArgumentError, match="must be a 1-D floating-point array"):
        opt.update(np.ones(3), state, np.array([1, 2, 3]))
    with pytest.raises(zo.ArgumentError, match=r"`grad` .* has shape \(3, 1\), `params` \(3,\)"):
        opt.update(np.ones((3, 1)), state, p)
    if state._asdict().keys() - {"count"}:
        with pytest.raises(zo.ArgumentError, match="was built for params of shape \\(1,\\)"):
            opt.update(np.ones(3), opt.init(np.zeros(1)), p)
    other = (zo.adam(0.1) if opt.name != "adam" else zo.sgd(0.1)).init(p)
    with pytest.raises(zo.ArgumentError, match="`state` passed to .* must be the"):
        opt.update(np.ones(3), other, p)
    new, _ = opt.update(np.ones(3), state, p)  # the right call still steps
    assert new.shape == (3,) and (new < p).all()
    assert opt.update(1.0, state, p)[0].shape == (3,)  # a scalar gradient broadcasts, as before
    assert opt.update(np.ones(3, np.float32), opt.init(p.astype(np.float32)), p.astype(np.float32))[0].dtype == np.float32


def test_adamw_decay_matches_the_closed_form_and_torch():
    """A flipped decoupled decay (``d - wd * params``) passed every test: the Adam reference
    test had no decay. The first step has size lr (m_hat / sqrt(v_hat) = sign(g)) plus
    lr * wd * params; torch's AdamW, several steps, is the independent reference."""
    opt = zo.adam(0.1, weight_decay=0.1)
    p = np.array([2.0, -3.0])
    new, _ = opt.update(np.array([1.0, 1.0]), opt.init(p), p)
    np.testing.assert_allclose(new, [2.0 - 0.1 * (1 + 0.1 * 2.0), -3.0 - 0.1 * (1 - 0.1 * 3.0)], rtol=1e-7)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    theta = rng.normal(size=5)
    w = torch.nn.Parameter(torch.tensor(theta))
    # torch's AdamW multiplies by (1 - lr * wd) before the Adam step: the same update
    ref = torch.optim.AdamW([w], lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.3)
    opt = zo.adam(0.05, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.3)
    state, p = opt.init(theta), theta.copy()
    for _ in range(6):
        g = rng.normal(size=5)
        w.grad = torch.tensor(g)
        ref.step()
        p, state = opt.update(g, state, p)
    np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adam_with_a_schedule_and_cosine_with_a_floor_match_torch():
    """Two gaps a mutation test found: adam's schedule read one step late, and cosine_schedule
    without its ``final`` term (0.1 off at every step), passed every test. torch.optim.Adam with
    LambdaLR, and CosineAnnealingLR with eta_min, are the references."""
    torch = pytest.importorskip("torch")
    sched = zo.step_schedule(1.0, step_size=1, gamma=0.5)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=3)
    w = torch.nn.Parameter(torch.tensor(theta))
    ref = torch.optim.Adam([w], lr=1.0, betas=(0.9, 0.999), eps=1e-8)
    lam = torch.optim.lr_scheduler.LambdaLR(ref, lambda t: sched(t))
    opt = zo.adam(sched, b1=0.9, b2=0.999, eps=1e-8)
    state, p = opt.init(theta), theta.copy()
    for _ in range(4):
        g = rng.normal(size=3)
        w.grad = torch.tensor(g)
        ref.step()
        lam.step()
        p, state = opt.update(g, state, p)
    np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-12, atol=1e-14)
    cos = zo.cosine_schedule(1.0, total_steps=10, final=0.1)
    w = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([w], lr=1.0)
    ann = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=10, eta_min=0.1)
    for t in range(11):
        assert cos(t) == pytest.approx(ann.get_last_lr()[0], rel=1e-12, abs=1e-15), t
        sgd.step()
        ann.step()


def test_sgd_without_momentum_keeps_its_momentum_state_zero():
    """``SGDState.momentum`` is documented as zeros when momentum == 0 (a checkpoint stores it)."""
    opt = zo.sgd(0.1)
    p = np.array([1.0, -2.0, 3.0])
    new, state = opt.update(np.array([1.0, -2.0, 3.0]), opt.init(p), p)
    np.testing.assert_allclose(new, 0.9 * p)
    assert not np.any(state.momentum)


def test_sgd_without_momentum_holds_and_checkpoints_no_velocity_and_resumes_an_older_checkpoint(tmp_path):
    """sgd(lr) held a d-sized array of zeros as its velocity, and each checkpoint stored it (at d =
    1e6: 8 MB more in memory, a 16 MB file for 8 MB of parameters). It holds an empty one now, with
    the same steps bit for bit; a checkpoint saved before (d zeros) still resumes, to the same run."""
    f = lambda x: float(np.sum((x - 1.0) ** 2) + np.sin(3 * x).sum())  # noqa: E731
    opt = zo.sgd(0.05, weight_decay=1e-3)
    p, g = np.linspace(-1.0, 1.0, 9), np.cos(np.arange(9.0))
    new, state = opt.update(g, opt.init(p), p)
    assert state.momentum.size == 0 and state.momentum.dtype == p.dtype and state.count == 1
    assert new.tobytes() == (p - np.float64(0.05) * (g + 1e-3 * p)).tobytes()
    kw = dict(estimator=zo.RGE(directions=3), optimizer=opt, steps_per_epoch=3, rng=0, progress=False)
    full = zo.train(f, p, epochs=4, **kw)
    ckpt = tmp_path / "run.npz"
    zo.train(f, p, epochs=2, checkpoint=ckpt, **kw)
    arrays, meta = zo.load_checkpoint(ckpt)
    assert arrays["opt/momentum"].shape == (0,)
    for k in ("format", "version"):
        meta.pop(k)
    arrays["opt/momentum"] = np.zeros(9)  # as sgd saved it before
    zo.save_checkpoint(ckpt, arrays, meta)
    resumed = zo.train(f, p, epochs=4, checkpoint=ckpt, resume=True, **kw)
    assert resumed.params.tobytes() == full.params.tobytes() and resumed.optimizer_state.momentum.size == 0
    arrays, meta = zo.load_checkpoint(ckpt)
    for k in ("format", "version"):
        meta.pop(k)
    arrays["opt/momentum"] = np.full(9, 0.5)  # a velocity sgd without momentum never had
    zo.save_checkpoint(ckpt, arrays, meta)
    with pytest.raises(zo.CheckpointError, match="'opt/momentum'"):
        zo.train(f, p, epochs=5, checkpoint=ckpt, resume=True, **kw)


def test_sgd_with_momentum_takes_the_state_of_sgd_without_it():
    """A momentum warm-up (plain sgd's steps first, then heavy-ball's, one state from sgd's init)
    ran as the textbook loop while sgd without momentum kept d zeros; its empty velocity was then
    refused ("built for params of shape (0,): call sgd's init"). An empty velocity is zeros."""
    plain, heavy = zo.sgd(0.1), zo.sgd(0.1, momentum=0.9, nesterov=False)
    p = np.linspace(-1.0, 1.0, 5)
    state = plain.init(p)
    x, v = p.copy(), np.zeros(5)  # the textbook loop
    for t in range(6):
        g = np.cos(3.0 * p + t)
        p, state = (plain if t < 2 else heavy).update(g, state, p)
        if t < 2:
            x = x - 0.1 * g
        else:
            v = 0.9 * v + g
            x = x - 0.1 * v
    np.testing.assert_allclose(p, x, rtol=1e-15, atol=1e-15)
    assert state.count == 6 and state.momentum.shape == (5,)
    _, s2 = zo.sgd(0.1, momentum=0.9, nesterov=True).update(np.ones(5), plain.init(p), p)
    np.testing.assert_array_equal(s2.momentum, np.ones(5))  # Nesterov's too


def test_step_schedule_counts_its_decays_from_the_end_of_the_warm_up():
    s = zo.step_schedule(1.0, step_size=2, gamma=0.5, warmup_steps=3)
    assert [s(t) for t in range(8)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_a_schedule_fingerprint_covers_the_whole_run():
    """Fingerprints holding only the first steps would let a resume with a schedule that changes
    later pass unnoticed."""
    from zoracle._schedules import fingerprint

    got = fingerprint(lambda t: 0.1 if t < 150 else 0.01, "lr", 1000)
    assert got["steps"] == [0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500]
    assert got["values"][-2:] == [0.01, 0.01]


def _stop_after(epoch):
    """A callback ending the run after ``epoch`` (a checkpoint to resume is then on disk)."""
    return lambda event, record, params: event == "epoch" and record["epoch"] == epoch


def _decay_a(t):
    return 0.05 / (1 + t)


def _decay_b(t):  # the same function, as another process would hold it (another address)
    return 0.05 / (1 + t)


@pytest.mark.parametrize("first, second", [
    (zo.linear_warmup(_decay_a, 2), zo.linear_warmup(_decay_b, 2)),
    (zo.cosine_schedule(1, total_steps=20), zo.cosine_schedule(1.0, total_steps=20)),
    (zo.cosine_schedule(np.sqrt(0.01), total_steps=np.int64(20)), zo.cosine_schedule(0.1, total_steps=20)),
    (zo.linear_warmup(np.float64(0.2), 3), zo.linear_warmup(0.2, 3)),
])
def test_a_run_resumes_with_an_equal_schedule_written_otherwise(tmp_path, first, second):
    """The checkpoint recorded a dataclass schedule by its repr: a function inside one
    (linear_warmup(decay, 2)) showed its address, so no other process could resume, and
    cosine_schedule(1, ...) was refused against cosine_schedule(1.0, ...)."""
    loss = lambda x: float(((x - 3) ** 2).sum())
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=6, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=ck)
    zo.train(loss, np.zeros(3), schedule=first, callbacks=[_stop_after(2)], **kw)
    resumed = zo.train(loss, np.zeros(3), schedule=second, resume=True, **kw)
    whole = zo.train(loss, np.zeros(3), schedule=first, epochs=6, optimizer=zo.sgd(0.1), rng=0, progress=False)
    np.testing.assert_array_equal(resumed.params, whole.params)
    assert "0x" not in zo._schedules.describe_schedule(first)


def test_a_schedule_changed_between_its_fingerprint_steps_is_refused_on_resume(tmp_path):
    """A lambda's cut-off moved from step 30 to 48 agrees with the fingerprints (steps 20 and
    50); resumed at step 40, the run was neither schedule's. Every step already run is
    compared with the lr its history recorded."""
    loss = lambda x: float(((x - 3) ** 2).sum())
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=60, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=ck)
    zo.train(loss, np.zeros(3), schedule=lambda t: 0.05 if t < 30 else 0.005, callbacks=[_stop_after(39)], **kw)
    with pytest.raises(zo.CheckpointError, match="its step 30 ran with lr 0.005, this run's schedule gives 0.05"):
        zo.train(loss, np.zeros(3), schedule=lambda t: 0.05 if t < 48 else 0.005, resume=True, **kw)
    # the same schedule (another lambda) resumes, and a mu schedule is compared alike
    zo.train(loss, np.zeros(3), schedule=lambda t: 0.05 if t < 30 else 0.005, resume=True, **kw)
    ck2 = str(tmp_path / "mu.npz")
    kw2 = dict(kw, checkpoint=ck2, estimator=zo.RGE(directions=4))
    zo.train(loss, np.zeros(3), mu=lambda t: 1e-3 if t < 30 else 1e-4, callbacks=[_stop_after(39)], **kw2)
    with pytest.raises(zo.CheckpointError, match="its step 30 ran with mu 0.0001"):
        zo.train(loss, np.zeros(3), mu=lambda t: 1e-3 if t < 48 else 1e-4, resume=True, **kw2)


def test_a_users_dataclass_schedule_is_described_as_its_repr_was():
    """A tuple field was written [3, 6], where checkpoints before field-by-field descriptions
    hold its repr (3, 6): such a checkpoint no longer resumed."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class MultiStep:
        init: float
        milestones: tuple
        gamma: float = 0.1

        def __call__(self, t):
            return self.init * self.gamma ** sum(t >= m for m in self.milestones)

    for sched in (MultiStep(0.05, (3, 6)), MultiStep(0.05, (3,))):
        assert zo._schedules.describe_schedule(sched) == repr(sched)
    # ours store their numbers as floats: linear_warmup(1, 3) is linear_warmup(1.0, 3)
    assert isinstance(zo.linear_warmup(1, 3).schedule, float)
    assert zo._schedules.describe_schedule(zo.linear_warmup(1, 3)) == zo._schedules.describe_schedule(
        zo.linear_warmup(1.0, 3))


def test_a_schedule_returning_a_fraction_resumes(tmp_path):
    """The history check compared the raw Fraction(1, 10) with the 0.1 the run recorded."""
    from fractions import Fraction

    loss = lambda x: float(((x - 3) ** 2).sum())
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=ck, schedule=lambda t: Fraction(1, 10))
    zo.train(loss, np.zeros(3), callbacks=[_stop_after(1)], **kw)
    assert zo.train(loss, np.zeros(3), resume=True, **kw).steps == 4


@pytest.mark.parametrize("make", [zo.adam, zo.sgd, zo.sign_sgd])
def test_the_optimizers_refuse_float16_params(make):
    """Adam on float16 params gave NaN for every unmeasured coordinate (eps 1e-8 rounds to 0
    in float16: 0 / 0), where train refuses float16 with a clear error."""
    opt = make(0.01)
    with pytest.raises(zo.ArgumentError, match="float16.*float32 or float64"):
        opt.init(np.ones(3, np.float16))
    state = opt.init(np.ones(3, np.float32))
    with pytest.raises(zo.ArgumentError, match="float16"):
        opt.update(np.array([0.5, 0.0, -0.5]), state, np.ones(3, np.float16))


@pytest.mark.parametrize("make", [lambda: zo.sgd(0.1), lambda: zo.sgd(0.1, momentum=0.9), lambda: zo.adam(0.1),
                                  lambda: zo.sign_sgd(0.1)])
def test_update_refuses_a_gradient_it_cannot_step_with(make):
    # a torch tensor or a list failed inside the arithmetic with NumPy's TypeError (or passed, for some
    # optimizers only); a NaN or infinite entry came back as a NaN parameter, and Adam's moments stayed NaN
    torch = pytest.importorskip("torch")
    opt = make()
    p = np.array([1.0, 2.0, 3.0])
    state = opt.init(p)
    for g, match in [(torch.ones(3), "`grad` passed to .* must be an array like `params` .*torch.Tensor"),
                     ([1.0, 1.0, 1.0], "`grad` passed to .* must be an array like `params` .*builtins.list"),
                     (np.array([1.0, np.nan, 1.0]), "`grad` passed to .* must be (finite|free of NaN .*), got nan at index 1"),
                     (np.array([np.inf, 1.0, 1.0]), "`grad` passed to .* must be finite, got inf at index 0")]:
        if opt.name == "sign_sgd" and "got inf" in match:
            continue  # an infinite entry has a sign: sign_sgd steps with it (test_sign_sgd_steps_with_an_infinite_...)
        with pytest.raises(zo.ArgumentError, match=match):
            opt.update(g, state, p)
    # what it accepts still steps as the reference: params - lr * g for a first sgd / sign step
    new, _ = opt.update(np.array([1, -2, 3]), state, p)  # an integer gradient is a gradient
    if opt.name != "adam":
        np.testing.assert_allclose(new, p - 0.1 * (np.sign([1, -2, 3]) if opt.name == "sign_sgd" else np.array([1, -2, 3])))
    assert np.isfinite(opt.update(np.float64(1.0), state, p)[0]).all()  # a scalar broadcasts


def test_cosine_schedule_is_final_after_a_one_step_run_with_a_longer_warm_up():
    """total_steps=1 allows any warm-up; the docstring: ``final`` after ``total_steps``, a
    warm-up longer than the run included."""
    s = zo.cosine_schedule(0.1, total_steps=1, warmup_steps=3, final=0.01)
    assert s(0) == pytest.approx(0.1 / 3)  # the warm-up's first step
    assert [s(t) for t in (1, 2, 5)] == [0.01, 0.01, 0.01]
    s = zo.cosine_schedule(0.1, total_steps=1, warmup_steps=1)
    assert s(0) == pytest.approx(0.1) and s(1) == 0.0


def test_a_learning_rate_of_zero_is_a_constant_schedule_that_leaves_params_alone():
    """``lr`` takes any number >= 0 (as_schedule's own message): 0 freezes the parameters."""
    from zoracle._schedules import as_schedule

    assert as_schedule(0.0)(7) == 0.0 and as_schedule(0)(0) == 0.0
    p0 = np.array([1.0, -2.0, 3.0])
    grads = [np.array([0.5, 0.5, -1.0])] * 3
    for opt in (zo.sgd(0.0, momentum=0.9), zo.adam(0.0), zo.sgd(0)):
        p, _ = _run(opt, grads, p0)
        np.testing.assert_array_equal(p, p0)
    with pytest.raises(zo.ArgumentError, match="`lr` must be a number >= 0"):
        as_schedule(-0.1)


def test_a_schedule_of_unknown_run_length_is_still_checked_and_recorded_at_step_0():
    """``fingerprint``'s docstring: with the run's length unknown only the first step is sure to
    be reached; it is recorded (and checked, before the first query) there."""
    from zoracle._schedules import fingerprint

    assert fingerprint(zo.cosine_schedule(0.1, total_steps=10), "lr", None) == {"steps": [0], "values": [0.1]}
    with pytest.raises(zo.ArgumentError, match="at step 0"):
        fingerprint(lambda t: -1.0, "lr", None)


def test_update_takes_a_python_float_and_refuses_bools_complex_and_names_the_first_non_finite():
    opt = zo.sgd(0.1)
    p = np.array([1.0, 2.0, 3.0])
    state = opt.init(p)
    np.testing.assert_allclose(opt.update(0.5, state, p)[0], p - 0.1 * 0.5)  # a Python float broadcasts
    with pytest.raises(zo.ArgumentError, match="must be an array like `params`.*builtins.bool"):
        opt.update(True, state, p)
    with pytest.raises(zo.ArgumentError, match="must hold real numbers, got dtype complex128"):
        opt.update(np.ones(3, complex), state, p)
    with pytest.raises(zo.ArgumentError, match="must be finite, got nan at index 1"):  # the first, not the last
        opt.update(np.array([1.0, np.nan, np.inf]), state, p)


def test_sign_sgd_steps_with_an_infinite_gradient_entry_and_refuses_nan():
    """sign_sgd uses only the gradient's signs ("robust to the scale of a noisy ZO estimate"): an entry
    that overflowed to +-inf has a sign and steps by lr, as the documented rule
    params - lr * sign(grad + weight_decay * params) gives; NaN has no sign and is still refused."""
    p = np.array([0.5, -1.0, 2.0], np.float32)
    g = np.array([np.inf, -2.0, -np.inf], np.float32)
    for wd in (0.0, 0.1):
        opt = zo.sign_sgd(0.1, weight_decay=wd)
        new, state = opt.update(g, opt.init(p), p)
        ref = p - np.float32(0.1) * np.sign(g + np.float32(wd) * p)
        np.testing.assert_array_equal(new, ref)
        assert new.dtype == np.float32 and state.count == 1
    with pytest.raises(zo.ArgumentError, match=r"must be free of NaN \(it has no sign\), got nan at index 1"):
        zo.sign_sgd(0.1).update(np.array([np.inf, np.nan, 1.0]), zo.sign_sgd(0.1).init(np.zeros(3)), np.zeros(3))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_update_holds_few_temporaries_and_matches_the_formula_bit_for_bit(weight_decay):
    # a pure update must allocate the new m, v and params; one temporary more is enough. Named
    # mhat, vhat and sqrt(vhat) held 7 d-sized arrays at the peak (534 MB at d = 1e7)
    import tracemalloc

    d = 400_000  # above NumPy's temporary-elision size (256 KiB)
    rng = np.random.default_rng(3)
    p, g = rng.standard_normal(d), rng.standard_normal(d)
    opt = zo.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=weight_decay)
    state = opt.update(rng.standard_normal(d), opt.init(p), p)[1]
    tracemalloc.start()
    new, s = opt.update(g, state, p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5.5 * p.nbytes, peak / p.nbytes  # 4.0 now, 7.0 before
    # the textbook formula, written out with the same operations
    m = 0.8 * state.mu + (1 - 0.8) * g
    v = 0.99 * state.nu + (1 - 0.99) * g * g
    mhat, vhat = m / (1 - 0.8**2), v / (1 - 0.99**2)
    step = mhat / (np.sqrt(vhat) + 1e-6) + (weight_decay * p if weight_decay else 0)
    assert new.tobytes() == (p - 0.01 * step).tobytes() and s.mu.tobytes() == m.tobytes()
    assert s.nu.tobytes() == v.tobytes()


@pytest.mark.parametrize("make, arrays", [
    (lambda: zo.sgd(0.1), 1),
    (lambda: zo.sgd(0.1, weight_decay=5e-4), 1),
    (lambda: zo.sgd(0.1, momentum=0.9), 2),
    (lambda: zo.sgd(0.1, momentum=0.9, weight_decay=5e-4), 2),
    (lambda: zo.sgd(0.1, momentum=0.9, nesterov=True), 2),
    (lambda: zo.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4), 3),  # g, v and g + 0.9 v
    (lambda: zo.sign_sgd(0.01), 1),
    (lambda: zo.sign_sgd(0.01, weight_decay=5e-4), 1),
])
def test_sgd_and_sign_sgd_updates_hold_only_their_results_and_match_the_formula_bit_for_bit(make, arrays):
    """The new params (and sgd's new velocity) are all an update needs at its peak: ``params - lr *
    d`` held the product and the difference (2 d-sized arrays for sgd(0.1), 4 with momentum and weight
    decay, 5 with Nesterov's too, 3 for sign_sgd with weight decay). The results stay bit for bit the textbook's."""
    import tracemalloc

    d = 400_000  # above NumPy's temporary-elision size (256 KiB)
    rng = np.random.default_rng(4)
    p, g = rng.standard_normal(d), rng.standard_normal(d)
    p[:1000], g[1000:2000] = 0.0, -0.0  # signed zeros come out as the textbook's too
    opt = make()
    state = opt.update(rng.standard_normal(d), opt.init(p), p)[1]
    p0, g0 = p.copy(), g.copy()
    tracemalloc.start()
    new, s = opt.update(g, state, p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < (arrays + 0.5) * p.nbytes, peak / p.nbytes
    assert p.tobytes() == p0.tobytes() and g.tobytes() == g0.tobytes()  # the update is pure
    cfg = repr(opt)
    wd = 5e-4 if "weight_decay=0.0005" in cfg else 0.0
    gg = g + wd * p if wd else g
    if opt.name == "sign_sgd":
        want = p - np.float64(0.01) * np.sign(gg)
    else:
        m = 0.9 if "momentum=0.9" in cfg else 0.0
        v = m * state.momentum + gg if m else state.momentum
        step = (gg + m * v if "nesterov=True" in cfg else v) if m else gg
        want = p - np.float64(0.1) * step
        assert s.momentum.tobytes() == v.tobytes()
    assert new.tobytes() == want.tobytes()


def test_an_optimizer_repr_is_its_settings():
    """``zo.sgd(0.1, momentum=0.9)`` echoed in a REPL showed ``init`` and ``update`` as
    ``<function sgd.<locals>.init at 0x7f...>`` (an address, different in every run); its repr
    is now the call that builds it, so it evaluates back to the same settings."""
    for opt in (zo.sgd(0.1, momentum=0.9), zo.adam(zo.cosine_schedule(1e-3, 100), b1=0.5), zo.sign_sgd(0.01)):
        text = repr(opt)
        assert "0x" not in text and "<" not in text and text == opt.config
        assert eval(text, vars(zo)).config == opt.config
    assert repr(zo.sgd(0.1)) == repr(zo.sgd(0.1))


def test_an_own_optimizer_with_a_config_that_is_no_text_has_a_repr():
    """``zo.Optimizer(init, update, lr, name, config)`` with ``config=None`` or a dict trains fine,
    but its repr returned ``config`` itself: ``TypeError: __repr__ returned non-string``
    (printing it, a debugger's variables view, an f-string with ``!r``)."""
    for cfg in (None, {"lr": 0.1}, ""):
        opt = zo.Optimizer(lambda p: None, lambda g, s, p, lr=None: (p, s), 0.1, "mine", cfg)
        text = repr(opt)
        assert isinstance(text, str) and "mine" in text and repr(cfg) in text


def test_the_optimizer_docstring_says_what_train_does_with_a_count_that_stops_adding_one():
    """``Optimizer``'s docstring said train "refuses ... an update that does not add one" to
    ``count``: only the first update is refused; one at a later step is warned about and the run
    goes on with the lr of the stuck count (test_errors.py tests both)."""
    base = zo.sgd(zo.step_schedule(0.1, 2, 0.5))

    def update(g, s, p, lr=None):  # count stuck at 3 from the fourth update on
        new, s2 = base.update(g, s, p, lr=lr)
        return new, (s2 if s.count < 3 else s2._replace(count=s.count))

    opt = zo.Optimizer(base.init, update, base.lr, "stuck", "stuck()")
    with pytest.warns(UserWarning, match="lags the steps"):
        res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=8, optimizer=opt, rng=0, progress=False)
    assert res.steps == 8 and res.history.column("lr", "step").tolist() == [0.1, 0.1] + [0.05] * 6
    doc = " ".join(zo.Optimizer.__doc__.split())
    assert "a first ``update`` that does not add one to it; a later one is warned about" in doc


def test_optimizers_pickle_and_a_reloaded_one_continues_bit_for_bit():
    """sgd, adam and sign_sgd returned closures, which pickle cannot save: pickle.dump, joblib.dump
    and a spawn worker's arguments (a recipe's kwargs) failed with "Can't pickle local object"."""
    import copy
    import pickle

    from zoracle._optim import scaled

    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(8)]
    for opt in (zo.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), zo.sgd(0.05),
                zo.adam(zo.linear_warmup(zo.cosine_schedule(0.01, 8), 2), b1=0.0, weight_decay=1e-4),
                zo.sign_sgd(0.01, weight_decay=1e-3),
                scaled(zo.adam(0.01), np.linspace(0.5, 2.0, 6), "ramp")):  # (recipes' layer_steps)
        p_ref, s_ref = _run(opt, grads, p0)  # the original, eight steps
        p, s = _run(opt, grads[:3], p0)  # three steps, then the optimizer and its state saved and reloaded
        back, s = pickle.loads(pickle.dumps((opt, s)))
        assert repr(back) == repr(opt) and back.lr == opt.lr and back.name == opt.name
        for g in grads[3:]:
            p, s = back.update(g, s, p)
        assert np.array_equal(p, p_ref) and s.count == s_ref.count
        assert np.array_equal(copy.deepcopy(opt).update(grads[0], opt.init(p0), p0)[0],
                              opt.update(grads[0], opt.init(p0), p0)[0])
    kw = zo.recipes.short_budget(lambda x: float(x @ x), np.zeros(20), 400)
    assert repr(pickle.loads(pickle.dumps(kw))["optimizer"]) == repr(kw["optimizer"])
    # changed after it was made: not rebuilt from the call that made it (which would undo the change)
    for changed in (zo.sgd(0.1)._replace(lr=0.5), zo.sgd(0.1)._replace(init=zo.adam(0.1).init)):
        with pytest.raises(Exception, match="local object"):
            pickle.dumps(changed)


def test_a_copy_of_an_optimizer_equals_it():
    """copy.copy and copy.deepcopy of zoracle's optimizers gave a rebuilt optimizer (new closures,
    != the original) once __reduce__ rebuilt them for pickle; a NamedTuple's copy shares its functions."""
    import copy

    from zoracle._optim import scaled

    for opt in (zo.sgd(0.1, momentum=0.9), zo.adam(1e-3), zo.sign_sgd(0.01),
                scaled(scaled(zo.adam(0.01), 0.5, "half"), 2.0, "double")):
        for made in (copy.copy(opt), copy.deepcopy(opt), copy.deepcopy([opt])[0]):
            assert made == opt and made.update is opt.update and made.init is opt.init
            assert type(made) is type(opt)




class _Named(zo.Optimizer):
    """A user's subclass of Optimizer (module level: pickle finds it by name)."""

    def describe(self) -> str:
        return f"named {self.name}"


def test_a_pickled_subclass_of_optimizer_keeps_its_class():
    """An Optimizer subclass built from sgd's fields came back from pickle as a plain Optimizer
    (rebuilt as the sgd call that made its update), its methods gone."""
    import pickle

    mine = _Named(*zo.sgd(0.1, momentum=0.9))
    back = pickle.loads(pickle.dumps(mine))
    assert type(back) is _Named and back.describe() == "named sgd" and repr(back) == repr(mine)
    p, g = np.arange(3.0), np.array([1.0, -2.0, 0.5])
    assert np.array_equal(back.update(g, back.init(p), p)[0], mine.update(g, mine.init(p), p)[0])
