"""The optimizers and schedules against references written here: each optimizer's steps over
several iterations against its textbook loop and against ``torch.optim`` fed the same gradients
and learning rates (float64), every schedule against its formula at every step of a run and past
its end, a run stopped anywhere and resumed from its checkpoint against the run never stopped
(bit for bit), and the sparse case DeepZero trains with: a gradient that is exactly 0 outside the
mask, which moves no weight that was never estimated, and moves the others only through the
optimizer's memory (momentum, Adam's first moment) and weight decay, as docs/training.md says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle._optim import scaled
from zoracle._schedules import as_schedule

torch = pytest.importorskip("torch")

# ---------------------------------------------------------------------------------------------
# schedules: the formulas, written out here


def _formula(kind: str, a: dict, t: int) -> float:
    """The value at step ``t`` of the schedule ``kind`` with settings ``a``, from its definition."""
    if kind in ("float", "constant"):
        return a["value"]
    if kind == "step":  # a linear ramp to init over w steps, then init * gamma^(decays so far)
        w = a["warmup_steps"]
        if t < w:
            return a["init"] * (t + 1) / w
        return a["init"] * a["gamma"] ** ((t - w) // a["step_size"])
    if kind == "cosine":  # ramp, then half a cosine from init down to final at T, final after
        w, T, lo, hi = a["warmup_steps"], a["total_steps"], a["final"], a["init"]
        if t >= T:
            return lo
        if t < w:
            return hi * (t + 1) / w
        return lo + (hi - lo) * (1 + math.cos(math.pi * (t - w) / (T - w))) / 2
    if kind == "warmup":  # ramp to the inner schedule's value at w, then the inner schedule
        w = a["warmup_steps"]
        inner = a["inner"]
        return _formula(*inner, w) * (t + 1) / w if t < w else _formula(*inner, t)
    raise AssertionError(kind)


def _build(kind: str, a: dict):
    if kind == "float":
        return a["value"]
    if kind == "constant":
        return zo.constant_schedule(a["value"])
    if kind == "step":
        return zo.step_schedule(a["init"], step_size=a["step_size"], gamma=a["gamma"], warmup_steps=a["warmup_steps"])
    if kind == "cosine":
        return zo.cosine_schedule(a["init"], total_steps=a["total_steps"], warmup_steps=a["warmup_steps"],
                                  final=a["final"])
    return zo.linear_warmup(_build(*a["inner"]), warmup_steps=a["warmup_steps"])


@st.composite
def _plain(draw):
    kind = draw(st.sampled_from(["float", "constant", "step", "cosine"]))
    init = draw(st.floats(1e-4, 2.0))
    if kind in ("float", "constant"):
        return kind, {"value": draw(st.sampled_from([0.0, init]))}
    if kind == "step":
        return kind, {"init": init, "step_size": draw(st.integers(1, 6)), "gamma": draw(st.floats(0.05, 1.5)),
                      "warmup_steps": draw(st.integers(0, 5))}
    total = draw(st.integers(1, 25))
    warm = draw(st.integers(0, total - 1)) if total > 1 else draw(st.integers(0, 4))  # (T = 1 takes any warm-up)
    return kind, {"init": init, "total_steps": total, "warmup_steps": warm,
                  "final": draw(st.sampled_from([0.0, init / 10, init]))}


@st.composite
def schedules(draw):
    """(kind, settings): a float, each schedule factory, and linear_warmup around any of them."""
    if draw(st.integers(0, 4)) == 0:
        return "warmup", {"inner": draw(_plain()), "warmup_steps": draw(st.integers(0, 6))}
    return draw(_plain())


def _end(kind: str, a: dict) -> int:
    """The last step at which the schedule changes shape (total_steps, a warm-up's end)."""
    if kind == "warmup":
        return max(a["warmup_steps"], _end(*a["inner"]))
    return max(a.get("total_steps", 0), a.get("warmup_steps", 0) + 2 * a.get("step_size", 0))


@given(spec=schedules())
def test_every_schedule_is_its_formula_at_every_step_and_past_its_end(spec):
    kind, a = spec
    s = as_schedule(_build(kind, a))
    end = _end(kind, a)
    # every step of the run, its boundaries (step 0, the warm-up's last and first after, the last
    # step, total_steps itself) among them, then far past the end
    for t in [*range(end + 3), 10**4, 10**9]:
        try:
            want = _formula(kind, a, t)
        except OverflowError:  # a step schedule growing (gamma > 1) beyond the floats: it says so
            with pytest.raises(OverflowError):
                s(t)
            continue
        got = s(t)
        assert isinstance(got, float), (t, got)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (kind, a, t)
    if kind == "cosine":  # the end is exactly final, and so is every step after it
        assert s(a["total_steps"]) == a["final"] and s(10**9) == a["final"]
    with pytest.raises(zo.ArgumentError, match="`step` must be >= 0"):
        s(-1)


@given(init=st.floats(1e-3, 2.0), size=st.integers(1, 5), gamma=st.floats(0.05, 0.99), total=st.integers(1, 20),
       final=st.floats(0, 1))
@settings(max_examples=20)
def test_step_and_cosine_schedules_are_torchs_step_lr_and_cosine_annealing(init, size, gamma, total, final):
    """Without warm-up, ``step_schedule`` is torch's StepLR and ``cosine_schedule`` its
    CosineAnnealingLR (``eta_min`` = final), at every step of a run of T steps and at T."""
    final = final * init
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    for sched, make in [(zo.step_schedule(init, step_size=size, gamma=gamma),
                         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=size, gamma=gamma)),
                        (zo.cosine_schedule(init, total_steps=total, final=final),
                         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=final))]:
        opt = torch.optim.SGD([w], lr=init)
        ref = make(opt)
        for t in range(total + 1):
            assert sched(t) == pytest.approx(ref.get_last_lr()[0], rel=1e-9, abs=1e-15), (sched, t)
            opt.step()
            ref.step()


# ---------------------------------------------------------------------------------------------
# optimizers: textbook loops and torch.optim


def _textbook(name: str, cfg: dict, p0, grads, lrs, scale=None):
    """The optimizer's iterations written out from its definition, in float64."""
    p = np.array(p0, dtype=np.float64)
    v, m, s2 = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.array(g, dtype=np.float64)
        before = p.copy()
        if name == "sgd":  # L2 decay in the gradient; heavy ball v = mu v + g; Nesterov looks ahead
            g = g + cfg["weight_decay"] * p
            if cfg["momentum"]:
                v = cfg["momentum"] * v + g
                g = g + cfg["momentum"] * v if cfg["nesterov"] else v
            p = p - lr * g
        elif name == "adam":  # Kingma & Ba with bias correction; AdamW's decay, scaled by the step's lr
            b1, b2 = cfg["b1"], cfg["b2"]
            m = b1 * m + (1 - b1) * g
            s2 = b2 * s2 + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1**t), s2 / (1 - b2**t)
            p = p - lr * (m_hat / (np.sqrt(v_hat) + cfg["eps"]) + cfg["weight_decay"] * p)
        else:  # sign-SGD, the decay inside the sign
            p = p - lr * np.sign(g + cfg["weight_decay"] * p)
        if scale is not None:
            p = before + (p - before) * scale
    return p


def _torch(name: str, cfg: dict, p0, grads, lrs):
    """torch.optim's same optimizer, float64, the step's learning rate set before each step."""
    w = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    if name == "sgd":
        opt = torch.optim.SGD([w], lr=1.0, momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                              weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.AdamW([w], lr=1.0, betas=(cfg["b1"], cfg["b2"]), eps=cfg["eps"],
                                weight_decay=cfg["weight_decay"])
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return w.detach().numpy()


def _make(name: str, cfg: dict, lr):
    if name == "sgd":
        return zo.sgd(lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    if name == "adam":
        return zo.adam(lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    return zo.sign_sgd(lr, weight_decay=cfg["weight_decay"])


@st.composite
def optimizers(draw):
    name = draw(st.sampled_from(["sgd", "adam", "sign_sgd"]))
    cfg = {"weight_decay": draw(st.sampled_from([0.0, 5e-4, 0.1, 0.7]))}
    if name == "sgd":
        cfg["momentum"] = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        cfg["nesterov"] = cfg["momentum"] > 0 and draw(st.booleans())
    elif name == "adam":
        cfg.update(b1=draw(st.sampled_from([0.0, 0.5, 0.9])), b2=draw(st.sampled_from([0.5, 0.99, 0.999])),
                   eps=draw(st.sampled_from([1e-8, 1e-3, 0.5])))
    return name, cfg


_grads = st.integers(1, 6).flatmap(lambda d: st.tuples(
    st.lists(st.floats(-3, 3), min_size=d, max_size=d),
    st.lists(st.lists(st.floats(-5, 5) | st.just(0.0), min_size=d, max_size=d), min_size=1, max_size=8)))


@given(opt=optimizers(), problem=_grads, spec=schedules(), how=st.sampled_from(["own", "override"]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_every_optimizer_is_its_textbook_loop_and_torchs_over_many_steps(opt, problem, spec, how, dtype):
    """Each step's learning rate comes from the optimizer's own schedule (read at the state's
    count), or from ``update(..., lr=)`` as train's ``schedule=`` passes it; the references get
    the formula's values."""
    name, cfg = opt
    p0, grads = problem
    lrs = [_formula(*spec, t) for t in range(len(grads))]
    o = _make(name, cfg, _build(*spec) if how == "own" else 123.0)
    p = np.asarray(p0, dtype)
    s = o.init(p)
    for t, g in enumerate(grads):
        p, s = o.update(np.asarray(g, dtype), s, p, **({"lr": lrs[t]} if how == "override" else {}))
        assert p.dtype == dtype and s.count == t + 1
    want = _textbook(name, cfg, p0, grads, lrs)
    if dtype == np.float32:  # rounded to float32 each step: within a few float32 roundings a step
        np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-4 * max(1.0, max(lrs)) * len(grads))
        return
    np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-13)
    if name != "sign_sgd":  # (torch has no sign-SGD)
        np.testing.assert_allclose(p, _torch(name, cfg, p0, grads, lrs), rtol=1e-12, atol=1e-13)


@given(opt=optimizers(), problem=_grads, data=st.data())
def test_a_scaled_optimizer_moves_each_coordinate_by_its_multiple_of_the_textbook_step(opt, problem, data):
    """``scaled`` (the short-budget recipe's per-layer steps) rescales each coordinate's move and
    leaves the inner state to advance as the optimizer's own."""
    name, cfg = opt
    p0, grads = problem
    scale = np.array(data.draw(st.lists(st.floats(0, 3), min_size=len(p0), max_size=len(p0))))
    o = scaled(_make(name, cfg, 0.05), scale, "test")
    p = np.array(p0)
    s = o.init(p)
    for g in grads:
        p, s = o.update(np.array(g), s, p)
    np.testing.assert_allclose(p, _textbook(name, cfg, p0, grads, [0.05] * len(grads), scale), rtol=1e-12,
                               atol=1e-13)


# ---------------------------------------------------------------------------------------------
# a run stopped and resumed


@st.composite
def _runs(draw):
    name, cfg = draw(optimizers())
    total = draw(st.integers(2, 8))
    lr = draw(st.sampled_from([
        0.05, zo.step_schedule(0.08, step_size=2, gamma=0.5, warmup_steps=1),
        zo.cosine_schedule(0.08, total_steps=total, warmup_steps=1, final=0.01),
        zo.linear_warmup(zo.cosine_schedule(0.06, total_steps=total), warmup_steps=2)]))
    own = draw(st.booleans())  # the optimizer's own schedule, or train's `schedule=`
    return name, cfg, total, lr, own, draw(st.integers(1, total - 1)), draw(st.sampled_from([np.float64, np.float32]))


@given(run=_runs())
@settings(max_examples=20)
def test_a_run_stopped_at_any_step_resumes_its_schedule_and_optimizer_state_bit_for_bit(tmp_path_factory, run):
    name, cfg, total, lr, own, stop_at, dtype = run
    w = np.linspace(0.5, 2.0, 5)

    def loss(x):
        return float((w * (x - 0.7) ** 2).sum() + 0.1 * np.sin(3 * x).sum())

    x0 = np.linspace(-1, 1, 5).astype(dtype)
    kw = dict(epochs=total, estimator=zo.CGE(mu=1e-3), rng=0, progress=False,
              optimizer=_make(name, cfg, lr if own else 0.5), schedule=None if own else lr)
    ref = zo.train(loss, x0, **kw)
    path = tmp_path_factory.mktemp("resume") / "run.npz"
    seen = []

    def stop(event, record, params):  # a callback returning True stops the run after that step
        if event == "step":
            seen.append(record)
            return len(seen) == stop_at

    first = zo.train(loss, x0, checkpoint=path, callbacks=[stop], **kw)
    assert first.steps == stop_at and first.optimizer_state.count == stop_at
    got = zo.train(loss, x0, checkpoint=path, resume=True, **kw)
    assert got.params.tobytes() == ref.params.tobytes() and got.params.dtype == dtype
    assert got.optimizer_state.count == ref.optimizer_state.count == total
    for a, b in zip(got.optimizer_state[1:], ref.optimizer_state[1:]):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # the schedule picked up where it stopped: every step's lr is the formula's
    assert [r["lr"] for r in got.history.steps] == [r["lr"] for r in ref.history.steps]
    sched = lr if callable(lr) else zo.constant_schedule(lr)
    assert [r["lr"] for r in ref.history.steps] == pytest.approx([sched(t) for t in range(total)], rel=1e-15)


# ---------------------------------------------------------------------------------------------
# the sparse case: exact zeros outside the mask


@given(opt=optimizers(), problem=_grads, data=st.data())
def test_a_weight_never_estimated_moves_only_by_weight_decay(opt, problem, data):
    """With a fixed mask (a ZO-GraSP mask kept for the whole run) every weight outside it gets
    an exact 0 each step: without weight decay it stays as it was, bit for bit (sgd, momentum,
    Nesterov, Adam at any b1, sign-SGD); with it, it follows the decay alone: sgd's (coupled,
    through its velocity), Adam's (decoupled, ``p <- p - lr wd p``) or sign-SGD's (``lr`` a step)."""
    name, cfg = opt
    p0, grads = problem
    d = len(p0)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=d, max_size=d)))
    grads = [np.where(keep, g, 0.0) for g in grads]
    o = _make(name, cfg, 0.05)
    p = np.array(p0)
    s = o.init(p)
    for g in grads:
        p, s = o.update(g, s, p)
    out = ~keep
    if not cfg["weight_decay"]:
        assert p[out].tobytes() == np.array(p0)[out].tobytes()
        return
    alone = _textbook(name, cfg, np.array(p0)[out], [np.zeros(out.sum())] * len(grads), [0.05] * len(grads))
    np.testing.assert_allclose(p[out], alone, rtol=1e-12, atol=1e-13)
    if name == "adam":  # decoupled: the weight shrinks by (1 - lr wd) a step, whatever Adam's moments hold
        np.testing.assert_allclose(p[out], np.array(p0)[out] * (1 - 0.05 * cfg["weight_decay"]) ** len(grads),
                                   rtol=1e-12, atol=1e-300)


@given(b1=st.sampled_from([0.0, 0.5, 0.9]), momentum=st.sampled_from([0.0, 0.5, 0.9]), before=st.integers(1, 6),
       after=st.integers(1, 30), g=st.floats(0.1, 5) | st.floats(-5, -0.1))
def test_a_weight_the_next_mask_drops_moves_only_through_the_optimizers_memory(b1, momentum, before, after, g):
    """A weight estimated ``before`` steps and then left out by a reshuffled mask: Adam without
    momentum (``b1 = 0``) and sgd without momentum leave it where it is, bit for bit; with
    ``b1 > 0`` Adam's moments carry it on, each step shorter than the last, and sgd's velocity
    carries it ``lr * v * momentum / (1 - momentum)`` further in all (the textbook loops)."""
    for name, cfg, memory in [("adam", {"b1": b1, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0}, b1),
                              ("sgd", {"momentum": momentum, "nesterov": False, "weight_decay": 0.0}, momentum)]:
        o = _make(name, cfg, 0.05)
        p = np.array([0.3])
        s = o.init(p)
        for _ in range(before):
            p, s = o.update(np.array([g]), s, p)
        at_drop = p.copy()
        moves = []
        for _ in range(after):
            new, s = o.update(np.zeros(1), s, p)
            moves.append(float(p[0] - new[0]))
            p = new
        want = _textbook(name, cfg, [0.3], [[g]] * before + [[0.0]] * after, [0.05] * (before + after))
        np.testing.assert_allclose(p, want, rtol=1e-12)
        if not memory:
            assert p.tobytes() == at_drop.tobytes()
            continue
        # it keeps moving the way the gradient pushed it, each step shorter than the one before
        assert all(np.sign(m) == np.sign(g) for m in moves), moves
        assert all(abs(b) < abs(a) for a, b in zip(moves, moves[1:])), moves
        if name == "sgd":
            v = s.momentum[0] / momentum**after  # the velocity at the drop
            total = 0.05 * v * momentum * (1 - momentum**after) / (1 - momentum)
            assert float(at_drop[0] - p[0]) == pytest.approx(total, rel=1e-9)


def test_train_with_a_zo_grasp_mask_leaves_the_weights_it_never_estimates_where_they_were():
    """The DeepZero case end to end: ZO-GraSP's mask kept for the run (``mask_shuffle_interval``
    beyond it), sgd with momentum and Adam without weight decay: the weights outside the mask are
    bit for bit the initial ones; weight decay moves them (Adam's by ``(1 - lr wd)`` a step)."""
    d = 16
    w = np.linspace(0.5, 2.0, d)

    def loss(x):
        return float((w * (x - 0.7) ** 2).sum() + 0.1 * (x[:8] * x[8:]).sum())

    x0 = np.linspace(-1, 1, d)
    kw = dict(epochs=2, steps_per_epoch=3, sparsity=0.5, ratios="zo_grasp", blocks=[slice(0, 8), slice(8, 16)],
              grasp_directions=4, mask_shuffle_interval=10, rng=0, progress=False)
    for opt in (zo.sgd(0.05, momentum=0.9, nesterov=True), zo.adam(0.05), zo.adam(0.05, weight_decay=0.2)):
        res = zo.train(loss, x0, optimizer=opt, **kw)
        out = np.ones(d, bool)
        out[res.coordinates] = False
        assert 0 < out.sum() < d and np.all(res.params[~out] != x0[~out])
        if opt.weight_decay:
            np.testing.assert_allclose(res.params[out], x0[out] * (1 - 0.05 * 0.2) ** 6, rtol=1e-12)
        else:
            assert res.params[out].tobytes() == x0[out].tobytes()


def _drift_after_drop(opt, before: int):
    """A weight given the gradient 1 for ``before`` steps, then 0 (a mask that drops it): how many
    of its last estimated steps it moves on in all, and after how many steps its move is under 1%
    of that last one."""
    p = np.zeros(1)
    s = opt.init(p)
    for _ in range(before):
        new, s = opt.update(np.ones(1), s, p)
        last, p = float(p[0] - new[0]), new
    at, moves = float(p[0]), []
    for _ in range(300):
        new, s = opt.update(np.zeros(1), s, p)
        moves.append(float(p[0] - new[0]))
        p = new
    return (at - float(p[0])) / last, next(k for k, m in enumerate(moves, 1) if m < 0.01 * last)


def test_how_far_a_dropped_weight_moves_on_is_what_the_training_page_says():
    """docs/training.md said Adam carried a weight a sparse step did not estimate "for a few
    steps", and said nothing of sgd's momentum or of weight decay. At b1 = 0.9 (and sgd's
    momentum 0.9) the weight moves on for about 45 steps, about 9 of its last steps in all; b1 = 0
    (the short-budget recipe's) stops it at once; weight decay moves every weight."""
    for opt in (zo.adam(0.01), zo.sgd(0.01, momentum=0.9)):
        for before in (5, 50, 500):
            total, steps = _drift_after_drop(opt, before)
            assert 8 <= total <= 10 and 40 <= steps <= 50, (opt, before, total, steps)
    assert _drift_after_drop(zo.adam(0.01, b1=0.0), 5)[0] == 0.0
    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8").split())
    assert "for about 45 steps (until a step is under 1% of its last estimated one), about 9 of its last steps in all" \
        in text
    assert "`zo.sgd`'s velocity (`momentum > 0`) carries it the same way" in text
    assert "moves every weight, estimated or not" in text
