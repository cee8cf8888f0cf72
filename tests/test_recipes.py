"""zoracle.recipes.short_budget: train settings for about one query per weight or less."""

from __future__ import annotations

import warnings
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo

P = namedtuple("P", "name slice shape kind")
BLOCKS = [P("W", slice(0, 30), (3, 10), "linear"), P("b", slice(30, 33), (3,), "bias"),
          P("g", slice(33, 35), (2,), "norm")]  # a kind the recipe does not sample: estimated densely


class Softmax:
    """Softmax regression with two extra (norm-like) scalars; a NumPy DataOracle."""

    param_info = BLOCKS

    @staticmethod
    def loss(w, X, y):
        z = (X @ w[:30].reshape(3, 10).T + w[30:33]) * (1 + w[33]) + w[34]
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))

    def bind(self, batch):
        X, y = batch
        return lambda w: self.loss(w, X, y)


def _data():
    r = np.random.default_rng(0)
    X = r.standard_normal((200, 10))
    y = (X @ r.standard_normal((10, 3))).argmax(1)
    return X, y


def test_short_budget_spends_whole_steps_within_the_budget_and_learns():
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)  # 5 steps an epoch
    p0 = np.zeros(35)
    kw = zo.recipes.short_budget(Softmax(), p0, 200, batches=batches, coordinates=8, grasp_directions=8, lr=0.1)
    grasp, per_step = 2 * 9, 8 + 2 + 1  # ZO-GraSP; 8 sampled weights + 2 dense scalars + the base point
    steps = (200 - grasp) // per_step
    assert (kw["max_queries"], kw["epochs"], kw["mask_shuffle_interval"]) == (grasp + steps * per_step, 4, "step")
    assert kw["sparsity"] == pytest.approx(1 - 8 / 33) and "b1=0.0" in kw["optimizer"].config
    with pytest.warns(RuntimeWarning, match="keeps no coordinates of b: its values are all zero"):
        res = zo.train(Softmax(), p0, batches=batches, rng=0, progress=False, **kw)  # zero scores from zero weights
    assert (res.nfev, res.steps, res.stopped) == (grasp + steps * per_step, steps, True)
    assert res.history.column("nfev").tolist() == [per_step] * steps
    lrs = res.history.column("lr").tolist()
    assert lrs[:5] == sorted(lrs[:5]) and max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.01
    assert Softmax.loss(res.params, X, y) < 0.9 * Softmax.loss(p0, X, y)


def test_short_budget_options_pass_through():
    kw = zo.recipes.short_budget(None, np.zeros(500), 2_000, steps_per_epoch=7, coordinates=20, b1=0.9, lr=0.3,
                                 mu=1e-2, weight_decay=0.0)
    assert kw["steps_per_epoch"] == 7 and kw["estimator"].mu == 1e-2 and "ratios" in kw
    assert "b1=0.9" in kw["optimizer"].config and "weight_decay=0.0" in kw["optimizer"].config
    assert kw["max_queries"] == (2_000 // 21) * 21  # one block: uniform ratios, no ZO-GraSP queries


@pytest.mark.parametrize("args, kwargs, match", [
    ((None, np.zeros(100), 50), {"steps_per_epoch": 1}, r"`budget` is 50.*budget >= 102"),
    ((Softmax(), np.zeros(35), 1_000), {"steps_per_epoch": 1, "coordinates": 40}, r"`coordinates` is 40.*33"),
    ((Softmax(), np.zeros(35), 1_000), {"batches": lambda epoch: []}, "steps_per_epoch"),
    ((None, np.zeros(100), 1_000), {"steps_per_epoch": 1, "lr": 0.0}, "`lr`"),
    ((None, np.zeros(100), 1_000), {"steps_per_epoch": 1, "b1": 1.0}, "`b1`"),
    ((None, np.zeros(100), 0), {"steps_per_epoch": 1}, "`budget`"),
    ((None, np.zeros(10), 1_000), {"blocks": [P("g", slice(0, 10), (10,), "norm")], "steps_per_epoch": 1},
     "no block has a kind"),
])
def test_short_budget_bad_input_names_the_argument(args, kwargs, match):
    with pytest.raises(zo.ArgumentError, match=match):
        zo.recipes.short_budget(*args, **kwargs)


LAYERS = [P("0.weight", slice(0, 4), (2, 2), "conv"), P("0.bias", slice(4, 6), (2,), "bias"),
          P("3.weight", slice(6, 12), (2, 3), "linear"), P("3.bias", slice(12, 14), (2,), "bias"),
          P("bn.weight", slice(14, 16), (2,), "norm"), P("5.weight", slice(16, 18), (1, 2), "linear")]
P0 = np.array([4, -4, 4, -4, 9, 9, 1, -1, 1, -1, 1, -1, 9, 9, 1, 1, 0.25, -0.25], dtype=np.float32)


def test_layer_scales_are_each_layers_weight_rms_over_the_reference():
    rms = {"0": 4.0, "3": 1.0, "5": 0.25}  # from the weights only: biases (9) and the norm (1) do not count
    layer = ["0"] * 6 + ["3"] * 8 + [None] * 2 + ["5"] * 2
    want = np.array([1.0 if m is None else (rms[m] / 4.0) ** 0.5 for m in layer])
    np.testing.assert_allclose(zo.recipes.layer_scales(LAYERS, P0), want)
    np.testing.assert_allclose(zo.recipes.layer_scales(LAYERS, P0, power=1.0), want ** 2)
    # relative to the layer with the most weights (3.weight, 6 of them): the first layer's step grows
    np.testing.assert_allclose(zo.recipes.layer_scales(LAYERS, P0, ref="widest"),
                               [1.0 if m is None else (rms[m] / 1.0) ** 0.5 for m in layer])
    last = zo.recipes.layer_scales(LAYERS, P0, layers="last")
    np.testing.assert_allclose(last, [1.0] * 16 + [0.25, 0.25])


@pytest.mark.parametrize("blocks, params, kwargs, match", [
    ([slice(0, 18)], P0, {}, "named blocks"),
    ([P("g", slice(0, 18), (18,), "norm")], P0, {}, "conv or linear"),
    (LAYERS, np.where(np.arange(18) < 4, 0.0, P0), {}, "'0' has all-zero weights"),
    (LAYERS, P0, {"ref": "mean"}, "`ref`"),
    (LAYERS, P0, {"layers": "first"}, "`layers`"),
])
def test_layer_scales_bad_input_names_the_fix(blocks, params, kwargs, match):
    with pytest.raises(zo.ArgumentError, match=match):
        zo.recipes.layer_scales(blocks, params, **kwargs)


def test_short_budget_layer_steps_scale_each_step_and_name_it_in_the_config():
    base = zo.recipes.short_budget(None, P0, 2_000, steps_per_epoch=5, blocks=LAYERS, coordinates=4)["optimizer"]
    off = zo.recipes.short_budget(None, P0, 2_000, steps_per_epoch=5, blocks=LAYERS, coordinates=4, layer_steps=0.0)
    assert off["optimizer"].config == base.config  # 0: the plain recipe
    kw = zo.recipes.short_budget(None, P0, 2_000, steps_per_epoch=5, blocks=LAYERS, coordinates=4, layer_steps=0.5)
    opt = kw["optimizer"]
    assert opt.config == base.config + " * layer_steps(0.5, [1, 0.5, 1, 0.25])"
    scale = zo.recipes.layer_scales(LAYERS, P0, power=0.5)
    rng = np.random.default_rng(1)
    p, s, sb = P0.copy(), opt.init(P0), base.init(P0)
    for _ in range(6):  # through the warm-up and past it
        g = rng.standard_normal(18).astype(np.float32)
        new, s = opt.update(g, s, p)
        ref, sb = base.update(g, sb, p)
        assert new.dtype == np.float32
        np.testing.assert_allclose(new - p, (ref - p) * scale, rtol=1e-5, atol=4e-6)  # float32 at |p| <= 9
        p = new
    with pytest.raises(zo.ArgumentError, match="layer_steps"):
        zo.recipes.short_budget(None, P0, 2_000, steps_per_epoch=5, blocks=LAYERS, layer_steps=-1.0)


def test_fill_small_blocks_fills_zo_grasps_empty_small_blocks_and_nothing_else():
    from zoracle._pruning import fill_small_blocks

    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    p0 = np.random.default_rng(1).standard_normal(35) * 0.1
    sizes = np.array([30, 3])
    runs = {}
    for fill in (False, True):
        kw = zo.recipes.short_budget(Softmax(), p0, 300, batches=batches, coordinates=3, grasp_directions=8,
                                     fill_small_blocks=fill)
        assert kw.get("fill_small_blocks", False) is fill  # only set when asked: the default kwargs are unchanged
        runs[fill] = zo.train(Softmax(), p0, batches=batches, rng=2, progress=False, **kw)
    plain = np.rint(runs[False].ratios * sizes).astype(int)
    filled = np.rint(runs[True].ratios * sizes).astype(int)
    assert plain.sum() == filled.sum() == 3
    assert filled.tolist() == fill_small_blocks(plain, sizes).tolist()  # same scores (same rng), then filled
    assert plain.tolist() == [3, 0] and filled.tolist() == [2, 1]  # ZO-GraSP gave all 3 to W; the 3 biases get one
    with pytest.raises(zo.ArgumentError, match="fill_small_blocks"):
        zo.train(Softmax(), p0, batches=batches, sparsity=0.5, ratios="uniform", fill_small_blocks=True, progress=False)
    with pytest.raises(zo.ArgumentError, match="`fill_small_blocks=True` set how ZO-GraSP computes"):  # explicit ratios too
        zo.train(Softmax(), p0, batches=batches, sparsity=0.5, ratios=np.array([0.5, 0.5]), fill_small_blocks=True,
                 progress=False)
    with pytest.raises(zo.ArgumentError, match="fill_small_blocks.*needs `sparsity`"):
        zo.train(Softmax(), p0, batches=batches, fill_small_blocks=True, progress=False)
    for bad in (1, "yes"):
        with pytest.raises(zo.ArgumentError, match="fill_small_blocks"):
            zo.recipes.short_budget(Softmax(), p0, 300, batches=batches, fill_small_blocks=bad)
        with pytest.raises(zo.ArgumentError, match="fill_small_blocks"):
            zo.train(Softmax(), p0, batches=batches, sparsity=0.5, fill_small_blocks=bad, progress=False)


def test_short_budget_fills_small_blocks_by_default_from_its_step_line(monkeypatch):
    from zoracle._pruning import grasp_queries
    from zoracle.recipes import FILL_FROM_STEPS

    # the Softmax problem: d = 35, a 30-weight block and a 3-bias block sampled (2 norm scalars dense)
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    p0 = np.random.default_rng(1).standard_normal(35) * 0.1
    per_step, grasp = 3 + 2 + 1, grasp_queries(1)
    line = grasp + FILL_FROM_STEPS * per_step  # the smallest budget with FILL_FROM_STEPS whole steps

    def recipe(budget, **kw):
        return zo.recipes.short_budget(Softmax(), p0, budget, batches=batches, coordinates=3, grasp_directions=1, **kw)
    assert recipe(line)["max_queries"] == line  # exactly FILL_FROM_STEPS steps after ZO-GraSP
    assert "fill_small_blocks" not in recipe(line - 1) and recipe(line)["fill_small_blocks"] is True
    for fill in (False, True):  # an explicit choice wins on either side of the line
        for budget in (line - 1, line):
            assert recipe(budget, fill_small_blocks=fill).get("fill_small_blocks", False) is fill
    # the default run is the filled run, query for query (the line moved down to keep the run short)
    monkeypatch.setattr(zo.recipes, "FILL_FROM_STEPS", 40)
    runs = [zo.train(Softmax(), p0, batches=batches, rng=2, progress=False,
                     **zo.recipes.short_budget(Softmax(), p0, 300, batches=batches, coordinates=3, grasp_directions=8,
                                               **extra)) for extra in ({}, {"fill_small_blocks": True})]
    assert np.array_equal(runs[0].params, runs[1].params) and np.array_equal(runs[0].ratios, runs[1].ratios)
    # one sampled block: no split to fill, and no fill asked of train
    assert "fill_small_blocks" not in zo.recipes.short_budget(None, np.zeros(100), 500_000, steps_per_epoch=10)
    with pytest.raises(zo.ArgumentError, match="True, False or None"):
        recipe(300, fill_small_blocks=0)


def test_the_default_learning_rate_falls_as_one_over_the_root_of_the_queries_per_sampled_weight():
    from zoracle.recipes import LR_MAX, LR_MIN, LR_SCALE, default_lr

    def init(budget, d=1_000, **kw):  # the schedule's peak, read back from the optimizer built
        opt = zo.recipes.short_budget(None, np.zeros(d), budget, steps_per_epoch=10, **kw)["optimizer"]
        return float(opt.config.split("init=")[1].split(",")[0])
    assert (LR_MAX, LR_MIN, LR_SCALE) == (0.1, 0.03, 0.085)
    # the formula, written out: 0.1 up to (0.85)^2 = 0.7225 queries a weight, then 0.085 / sqrt(q) down to 0.03,
    # reached at (0.085 / 0.03)^2 = 8.03
    for budget, want in ((500, 0.1), (722, 0.1), (723, 0.09997), (2_000, 0.0601), (5_000, 0.03801),
                         (8_000, 0.03005), (8_100, 0.03), (16_000, 0.03), (79_000, 0.03)):
        assert init(budget) == default_lr(budget, 1_000) == want
    # the study's points (docs/peers.md), each model's every weight sampled
    assert [default_lr(b, d) for b, d in ((30_000, 121_258), (150_000, 121_258), (150_000, 109_658),
                                          (26_516, 13_258), (59_661, 13_258), (30_000, 1_898), (150_000, 1_898))] \
        == [0.1, 0.07642, 0.07268, 0.0601, 0.04007, 0.03, 0.03]
    # the count is of the weights the recipe samples: a block it does not sample (a norm layer's, dense) leaves it
    from collections import namedtuple
    block = namedtuple("block", "name slice shape kind")
    blocks = [block("0.weight", slice(0, 600), (600,), "linear"), block("1.weight", slice(600, 1000), (400,), "norm")]
    assert init(2_400, blocks=blocks) == default_lr(2_400, 600) == 0.0425  # 4 queries a sampled weight, not 2.4
    for lr in (0.1, 0.03, 0.5):  # an explicit rate wins
        assert init(2_000, lr=lr) == init(50_000, lr=lr) == lr
    with pytest.raises(zo.ArgumentError, match="`lr`"):
        init(2_000, lr=-1.0)


@settings(deadline=None)
@given(st.integers(1, 10**7), st.integers(1, 10**6), st.integers(1, 10**7))
def test_the_default_learning_rate_never_rises_with_the_budget_and_stays_in_its_range(b1, d, b2):
    from zoracle.recipes import default_lr

    lo, hi = sorted((b1, b2))
    assert 0.03 <= default_lr(hi, d) <= default_lr(lo, d) <= 0.1


def test_default_coordinates_widen_from_forty_queries_per_weight():
    from zoracle.recipes import COORDINATES, WIDE_COORDINATES, WIDE_FROM, default_coordinates

    assert (COORDINATES, WIDE_COORDINATES, WIDE_FROM) == (50, 100, 40)
    sampled = 2_000
    assert default_coordinates(WIDE_FROM * sampled - 1, sampled) == 50
    assert default_coordinates(WIDE_FROM * sampled, sampled) == 100
    assert default_coordinates(10 ** 7, 30) == 30  # never more than the weights there are
    # short_budget takes it when `coordinates` is left out, and an explicit count wins
    d = 1_000
    for budget, k in ((39_999, 50), (40_000, 100)):
        kw = zo.recipes.short_budget(None, np.zeros(d), budget, steps_per_epoch=10)
        assert kw["sparsity"] == pytest.approx(1 - k / d)
        steps = (kw["max_queries"]) // (k + 1)  # one block, no ZO-GraSP: whole steps of k weights and the base point
        assert kw["max_queries"] == steps * (k + 1) and budget - kw["max_queries"] <= k
    kw = zo.recipes.short_budget(None, np.zeros(d), 40_000, steps_per_epoch=10, coordinates=50)
    assert kw["sparsity"] == pytest.approx(0.95)
    small = zo.recipes.short_budget(None, np.zeros(30), 5_000, steps_per_epoch=10)  # 30 weights: all of them
    assert small["sparsity"] == 0.0
    with pytest.raises(zo.ArgumentError, match="`coordinates` must be an integer >= 1"):
        zo.recipes.short_budget(None, np.zeros(d), 5_000, steps_per_epoch=10, coordinates=0)


@pytest.mark.parametrize("call,match", [
    (lambda: zo.recipes.short_budget(None, np.full(1000, 0.1), 5000, steps_per_epoch=0), "`steps_per_epoch` must be"),
    (lambda: zo.recipes.short_budget(None, np.full(1000, 0.1), 5000, steps_per_epoch=2.5), "`steps_per_epoch` must be"),
    (lambda: zo.recipes.default_lr(0, 100), "`budget` must be an integer >= 1"),
    (lambda: zo.recipes.default_lr(float("nan"), 100), "`budget` must be an integer >= 1"),
    (lambda: zo.recipes.default_coordinates(100, -3), "`sampled` must be an integer >= 1"),
    (lambda: zo.recipes.default_coordinates(100, 0), "`sampled` must be an integer >= 1"),
])
def test_recipe_helpers_name_a_bad_argument(call, match):
    """steps_per_epoch=0 used to be accepted (and refused later by train), -5 blamed `batches`;
    the rate and coordinate rules divided by zero, took a log of a negative, or returned -3."""
    with pytest.raises(zo.ArgumentError, match=match):
        call()


def test_default_lr_reaches_its_floor_where_its_docstring_says():
    assert zo.recipes.default_lr(800, 100) > 0.03 and zo.recipes.default_lr(803, 100) == 0.03


class _NoLayout(Softmax):
    param_info = None


def test_short_budget_with_blocks_runs_the_split_it_planned():
    """The plan used ``blocks`` and the returned arguments did not hold them: without the oracle's
    own layout train split one block (no ZO-GraSP, the norm scalars sampled, the schedule sized
    for other steps)."""
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    p0 = np.zeros(35)
    kw = zo.recipes.short_budget(_NoLayout(), p0, 400, batches=batches, coordinates=8, grasp_directions=8,
                                 blocks=iter(BLOCKS), lr=0.1)  # a generator: the resolved list travels
    assert list(kw["blocks"]) == BLOCKS
    grasp, per_step = 2 * 9, 8 + 2 + 1
    with pytest.warns(RuntimeWarning, match="keeps no coordinates of b"):  # the names come from `blocks`
        res = zo.train(_NoLayout(), p0, batches=batches, rng=0, progress=False, **kw)
    assert res.nfev == kw["max_queries"] == grasp + (400 - grasp) // per_step * per_step
    assert res.history.column("nfev").tolist() == [per_step] * res.steps


def test_no_zo_grasp_when_every_weight_is_sampled():
    """With every scored weight on the mask, ZO-GraSP's ratios are all 1 whatever it measures: its
    386 queries (19% of this budget) were spent anyway."""
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    kw = zo.recipes.short_budget(Softmax(), np.zeros(35), 2_000, batches=batches, coordinates=33)
    assert kw["sparsity"] == 0.0
    res = zo.train(Softmax(), np.zeros(35), batches=batches, rng=0, progress=False, **kw)
    per_step = 33 + 2 + 1
    assert res.nfev == kw["max_queries"] == 2_000 // per_step * per_step and res.steps == 2_000 // per_step
    assert res.ratios.tolist() == [1.0, 1.0]


def test_a_plan_the_run_cannot_follow_is_refused_or_warned_about():
    """A callable giving 3 batches an epoch with steps_per_epoch=10 was planned as 4 epochs of
    10 steps (1,989 queries): the run took 12 steps, 612 queries, its cosine never decaying, with
    no word. With epochs longer than the run, the one epoch of warm-up was the whole run (195 of
    196 steps at the peak rate)."""
    X, y = _data()
    three = zo.Minibatches((X[:120], y[:120]), 40, seed=0)
    with pytest.raises(zo.ArgumentError, match=r"`batches\(0\)` gives 3 batches, fewer than `steps_per_epoch`=10"):
        zo.recipes.short_budget(Softmax(), np.zeros(35), 2_000, batches=lambda e: three(e), steps_per_epoch=10)
    kw = zo.recipes.short_budget(Softmax(), np.zeros(35), 2_000, batches=lambda e: three(e), steps_per_epoch=3)
    assert kw["max_queries"] <= 2_000
    with pytest.warns(UserWarning, match="one epoch of warm-up is .* of the run's .* steps"):
        zo.recipes.short_budget(None, np.zeros(100), 2_000, steps_per_epoch=500)


def test_layer_scales_checks_params_against_the_blocks_and_power():
    """params shorter than the blocks gave "layer '2' has all-zero weights" (the mean of an empty
    slice); power=nan gave NaN multipliers and power=-1 multipliers above 1, where the
    docstring promises at most 1."""
    from collections import namedtuple

    P = namedtuple("P", "name slice shape kind")
    info = [P("0.weight", slice(0, 2), (2,), "linear"), P("0.bias", slice(2, 3), (1,), "bias"),
            P("1.weight", slice(3, 5), (2,), "linear")]
    p = np.array([2.0, -2.0, 0.1, 0.5, 0.5])
    with pytest.raises(zo.ArgumentError, match="`params` has 4 entries but the blocks lay out 5"):
        zo.recipes.layer_scales(info, p[:4])
    # parameters after the blocks are a layout train takes (estimated densely): they keep 1
    assert zo.recipes.layer_scales(info, np.concatenate([p, [7.0]])).tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 1.0]
    for power in (float("nan"), -1.0, float("inf"), True):
        with pytest.raises(zo.ArgumentError, match="`power` must be a finite number >= 0"):
            zo.recipes.layer_scales(info, p, power=power)
    with pytest.raises(zo.ArgumentError, match="`blocks` must be records"):
        zo.recipes.layer_scales(None, p)
    assert zo.recipes.layer_scales(info, p, power=0).tolist() == [1.0] * 5


def test_the_zero_block_warning_does_not_suggest_the_fill_it_already_has():
    """A zero-initialized bias of 8 weights, 6 coordinates a step, fill_small_blocks=True: the
    warning still said "pass fill_small_blocks=True"."""
    P = namedtuple("P", "name slice shape kind")
    blocks = [P("0.weight", slice(0, 80), (80,), "linear"), P("0.bias", slice(80, 88), (8,), "bias"),
              P("1.weight", slice(88, 128), (40,), "linear"), P("1.bias", slice(128, 133), (5,), "bias")]
    rng = np.random.default_rng(0)
    A, p0 = rng.normal(size=133), rng.normal(size=133) * 0.3
    p0[80:88] = 0
    loss = lambda x: float(np.sum((x - A) ** 2 * np.linspace(0.1, 3, 133)))
    kw = zo.recipes.short_budget(loss, p0, 3000, blocks=blocks, steps_per_epoch=10, coordinates=6,
                                 fill_small_blocks=True)
    with pytest.warns(RuntimeWarning, match="ZO-GraSP keeps no coordinates of 0.bias") as record:
        zo.train(loss, p0, rng=0, progress=False, **kw)
    text = " ".join(str(w.message) for w in record)
    assert "pass fill_small_blocks=True" not in text and "fills only empty blocks up to the kept count" in text


def test_short_budget_takes_an_endless_generator_with_steps_per_epoch():
    """train takes an endless generator `epoch -> batches` with steps_per_epoch (it draws that many);
    the recipe's check of `batches(0)` drained it whole: it never returned (memory growing)."""
    X, y = _data()
    drawn = []

    def endless(epoch):
        r = np.random.default_rng([0, epoch])
        n = 0
        while True:
            n += 1
            drawn.append(n)
            if n > 1000:  # far past any epoch: the original recipe never stopped drawing
                raise AssertionError("batches(epoch) drained past 1000 batches")
            idx = r.choice(len(X), 20, replace=False)
            yield X[idx], y[idx]

    kw = zo.recipes.short_budget(Softmax(), np.zeros(35), 200, batches=endless, steps_per_epoch=5, coordinates=8,
                                 grasp_directions=8, lr=0.1)
    assert kw["steps_per_epoch"] == 5 and max(drawn) <= 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = zo.train(Softmax(), np.zeros(35), batches=endless, rng=0, progress=False, **kw)
    assert res.nfev == kw["max_queries"] and res.history.column("nfev").tolist() == [11] * res.steps


def test_layer_scales_use_the_root_mean_square_of_weights_of_mixed_magnitude():
    """The other tests have weights of one magnitude a layer, where the RMS equals the mean
    |w|: here the RMS (sqrt(mean(w**2)), numpy below) and mean |w| differ."""
    Q = namedtuple("Q", "name slice shape kind read")
    blocks = [P("0.weight", slice(0, 4), (4,), "linear"), P("0.bias", slice(4, 5), (1,), "bias"),
              P("1.weight", slice(5, 9), (4,), "linear")]
    p = np.array([3.0, -4.0, 0.0, 1.0, 7.0, 1.0, -1.0, 1.0, -1.0])
    rms0 = np.sqrt(np.mean(p[0:4] ** 2))  # sqrt(6.5) = 2.55, where mean |w| = 2
    got = zo.recipes.layer_scales(blocks, p, power=1.0)
    np.testing.assert_allclose(got, [1.0] * 5 + [1.0 / rms0] * 4)
    # a layer the forward does not read (read=False) keeps 1 and is not the reference
    more = [Q(b.name, b.slice, b.shape, b.kind, True) for b in blocks] + [Q("2.weight", slice(9, 11), (2,), "linear", False)]
    got = zo.recipes.layer_scales(more, np.concatenate([p, [50.0, -50.0]]), power=1.0)
    np.testing.assert_allclose(got, [1.0] * 5 + [1.0 / rms0] * 4 + [1.0, 1.0])


def test_short_budget_refuses_a_budget_of_a_single_step():
    """The recipe needs two steps (a warm-up and a decay): a budget one query short of the
    second step is refused, one of exactly two steps is taken."""
    per_step = 20 + 1  # 20 weights a step and the base point (one block: no ZO-GraSP)
    with pytest.raises(zo.ArgumentError, match=f"pass budget >= {2 * per_step} for two steps"):
        zo.recipes.short_budget(None, np.zeros(500), 2 * per_step - 1, steps_per_epoch=1, coordinates=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = zo.recipes.short_budget(None, np.zeros(500), 2 * per_step, steps_per_epoch=1, coordinates=20)
    assert kw["max_queries"] == 2 * per_step


def test_a_batches_callable_returning_no_sequence_is_named_as_train_names_it():
    """The recipe drew ``batches(0)`` itself: a callable returning a number raised a raw
    "'int' object is not iterable" where train names the argument and the fix."""
    with pytest.raises(zo.ArgumentError, match=r"`batches` is a callable epoch -> batches, but for epoch 0 it returned "
                                               r"int, not a sequence of batches"):
        zo.recipes.short_budget(Softmax(), np.zeros(35), 2_000, batches=lambda epoch: 5, steps_per_epoch=5)
    with pytest.raises(zo.ArgumentError, match=r"for epoch 0 it returned int, not a sequence"):  # train's words
        zo.train(Softmax(), np.zeros(35), batches=lambda epoch: 5, steps_per_epoch=5, progress=False)


@pytest.mark.parametrize("steps, per_epoch", [(15, 500), (19, 500), (29, 27), (21, 19), (9, 500), (10, 500), (40, 32)])
def test_the_warm_up_warning_fires_under_a_tenth_of_the_run_left_to_decay(steps, per_epoch):
    """training.md: the schedule is "warned about where it leaves under a tenth of the run to decay
    in". ``steps // 10`` floored the tenth: 15 steps with 14 of warm-up (the last step at the peak
    rate, 6.7% of the run to decay) and 29 with 27 (6.9%) were not warned about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kw = zo.recipes.short_budget(None, np.zeros(100), 51 * steps, steps_per_epoch=per_epoch)
    sched = kw["optimizer"].lr
    assert sched.total_steps == steps
    left = sched.total_steps - sched.warmup_steps
    warned = any("hardly decays" in str(w.message) for w in caught)
    assert warned == (left / steps < 0.1)


def test_module_docstring_states_the_demos_mask_interval_and_lr():
    """The module docstring calls ``zoracle demo`` the paper's recipe: it names where the demo's
    defaults differ from the paper's (masks every 5 epochs, lr 0.1)."""
    import argparse

    from apps.demo import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    d = parser.parse_args([])
    every = "every epoch" if d.mask_interval == 1 else f"every {d.mask_interval} epochs"
    doc = " ".join(zo.recipes.__doc__.split())
    assert f"masks redrawn {every} and peak lr {d.lr}" in doc
    assert "masks redrawn every 5 epochs" in doc


class BoxedSoftmax(Softmax):
    """``Softmax`` that raises on a query outside ``[lo, hi]``, as hardware would; counts its queries."""

    def __init__(self, lo, hi):
        self.lo, self.hi, self.queries = lo, hi, 0

    def bind(self, batch):
        X, y = batch

        def f(w):
            if not ((w >= self.lo) & (w <= self.hi)).all():
                raise RuntimeError(f"setting out of range: {w!r}")
            self.queries += 1
            return self.loss(w, X, y)
        return f


def test_short_budget_with_bounds_keeps_zo_grasp_and_trains_inside_the_box():
    """With ``bounds`` the plan is the one without (ZO-GraSP's split and all) plus the box, and train runs
    ZO-GraSP inside it (Rademacher directions): every query in the box, ZO-GraSP's 2 * 193 among them."""
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    p0 = np.full(35, 0.01)
    free = zo.recipes.short_budget(Softmax(), p0, 600, batches=batches, coordinates=8, lr=0.1)
    kw = zo.recipes.short_budget(Softmax(), p0, 600, batches=batches, coordinates=8, lr=0.1, bounds=(-0.5, 0.5))
    assert kw.pop("bounds") == (-0.5, 0.5) and kw["ratios"] == "zo_grasp"
    assert {k: v for k, v in kw.items() if k != "optimizer"} == {k: v for k, v in free.items() if k != "optimizer"}
    assert kw["optimizer"].config == free["optimizer"].config
    per_step = 8 + 2 + 1  # 8 sampled weights, the 2 dense scalars, the base point
    assert kw["max_queries"] == 2 * 193 + (600 - 2 * 193) // per_step * per_step
    hw = BoxedSoftmax(-0.5, 0.5)
    res = zo.train(hw, p0, batches=batches, rng=0, progress=False, bounds=(-0.5, 0.5), **kw)  # (outside raises)
    assert res.nfev == hw.queries == kw["max_queries"] and res.history.column("nfev").tolist() == [per_step] * res.steps
    assert Softmax.loss(res.params, X, y) < 0.9 * Softmax.loss(p0, X, y)


def test_short_budget_with_bounds_where_zo_grasp_makes_no_query_is_the_recipe_with_bounds():
    """Every weight sampled (sparsity 0) or one scored block: ZO-GraSP makes no query, so the box
    changes nothing but ``bounds`` itself."""
    X, y = _data()
    batches = zo.Minibatches((X, y), 40, seed=0)
    for args, opts in (((Softmax(), np.zeros(35), 900), dict(batches=batches, coordinates=33)),
                       ((None, np.zeros(50), 3_000), {})):
        free = zo.recipes.short_budget(*args, **opts)
        kw = zo.recipes.short_budget(*args, bounds=(-1.0, 1.0), **opts)
        assert kw.pop("bounds") == (-1.0, 1.0) and kw["ratios"] == "zo_grasp" and kw["sparsity"] == 0.0
        assert {k: v for k, v in kw.items() if k != "optimizer"} == {k: v for k, v in free.items() if k != "optimizer"}
        assert kw["optimizer"].config == free["optimizer"].config


@pytest.mark.parametrize("kwargs, match", [
    (dict(bounds=(1.0, 0.0)), r"`bounds`: lo\[0\] = 1.0 is above hi\[0\] = 0.0"),
    (dict(bounds=(0.0, [1.0, 1.0])), r"`bounds`: hi must be .* shape \(35,\)"),
])
def test_short_budget_with_bounds_refuses_a_bad_box(kwargs, match):
    kwargs = dict(dict(bounds=(-1.0, 1.0), batches=zo.Minibatches(_data(), 40, seed=0), coordinates=8), **kwargs)
    with pytest.raises(zo.ArgumentError, match=match):
        zo.recipes.short_budget(Softmax(), np.zeros(35), 900, **kwargs)
