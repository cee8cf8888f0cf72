"""ZO-GraSP scores, layer-wise ratios (GraSP, Smart Ratio, uniform, random) and dynamic masks."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo
from zoracle.testing import QuadraticOracle

P = namedtuple("P", "name slice shape kind")


def _quadratic(seed, d=30):
    r = np.random.default_rng(seed)
    M = r.standard_normal((d, d))
    A = M @ M.T / d + 0.5 * np.eye(d)
    b, theta = r.standard_normal(d), r.standard_normal(d)
    return QuadraticOracle(A, b), theta, -theta * (A @ (A @ theta + b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zo_grasp_matches_exact_grasp_scores_on_a_quadratic(seed):
    oracle, theta, exact = _quadratic(seed)
    scores = zo.zo_grasp(oracle, theta, directions=20 * theta.size, rng=seed)
    assert np.corrcoef(scores, exact)[0, 1] >= 0.9


def test_common_random_numbers_beat_independent_directions():
    # probabilistic (fixed seeds): the mean over 6 quadratics separates the two by far
    crn, ind = [], []
    for seed in range(6):
        oracle, theta, exact = _quadratic(seed)
        for common, out in ((True, crn), (False, ind)):
            s = zo.zo_grasp(oracle, theta, directions=8 * theta.size, rng=seed, common_random_numbers=common)
            out.append(np.corrcoef(s, exact)[0, 1])
    assert np.mean(crn) > 0.8 and np.mean(crn) > np.mean(ind) + 0.4


def test_zo_grasp_correlations_in_the_docs():
    """docs/training.md's numbers: mean correlation with the exact scores over the six
    quadratics, with and without common random numbers, at q = 16d and 8d."""
    got = {}
    for q in (16, 8):
        for common in (True, False):
            cs = [np.corrcoef(zo.zo_grasp(o, th, directions=q * th.size, rng=seed, common_random_numbers=common),
                              ex)[0, 1] for seed in range(6) for o, th, ex in [_quadratic(seed)]]
            got[q, common] = round(float(np.mean(cs)), 2)
    assert got == {(16, True): 0.95, (16, False): 0.05, (8, True): 0.90, (8, False): 0.14}


def _reference_code_zo_grasp(f, theta, blocks, q, mu, seed):
    """DeepZero's reference ``zoo_grasp_importance_score`` from its formulas: per block, a Gaussian
    direction scaled to unit norm (+1e-8) then by mu, only the blocks perturbed; ``(f(p + pert) -
    f(p)) / mu * pert / q`` summed (the estimate carries the factor mu); two independent RGEs;
    ``-theta * (g1 - g0) / mu`` at ``theta + mu * g0``."""
    gen = np.random.default_rng(seed)

    def rge(p):
        base, out = f(p), np.zeros_like(p)
        for _ in range(q):
            pert = np.zeros_like(p)
            for b in blocks:
                r = gen.standard_normal(b.stop - b.start)
                pert[b] = r / (np.linalg.norm(r) + 1e-8) * mu
            out += pert * ((f(p + pert) - base) / mu) / q
        return out

    g0 = rge(theta)
    g1 = rge(theta + g0 * mu)
    return -theta * (g1 - g0) / mu


def test_reference_code_zo_grasp_in_the_docs():
    """docs/training.md's comparison with the reference code's ZO-GraSP: on the six quadratics,
    blocks of 5 and 25, q = 16d, sparsity 0.8 (mean correlation with the exact scores, mean keep
    ratios)."""
    from pathlib import Path

    blocks = [slice(0, 5), slice(5, 30)]
    c_ref, c_zo, r_ex, r_ref, r_zo = [], [], [], [], []
    for seed in range(6):
        o, th, ex = _quadratic(seed)
        s_ref = _reference_code_zo_grasp(o, th, blocks, 16 * th.size, 5e-3, seed)
        s_zo = zo.zo_grasp(o, th, blocks=blocks, directions=16 * th.size, rng=seed)
        c_ref.append(np.corrcoef(s_ref, ex)[0, 1])
        c_zo.append(np.corrcoef(s_zo, ex)[0, 1])
        r_ex.append(zo.layer_ratios(ex, blocks, 0.8))
        r_ref.append(zo.layer_ratios(s_ref, blocks, 0.8))
        r_zo.append(zo.layer_ratios(s_zo, blocks, 0.8))
    assert round(float(np.mean(c_ref)), 2) == -0.26 and round(float(np.mean(c_zo)), 2) == 0.95
    assert np.round(np.mean(r_ref, 0), 2).tolist() == [0.33, 0.17]
    assert np.round(np.mean(r_ex, 0), 2).tolist() == np.round(np.mean(r_zo, 0), 2).tolist() == [0.2, 0.2]
    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text().split())
    assert ("correlate -0.26 on average with the exact ones (zoracle's 0.95), and at sparsity 0.8 they keep 33% "
            "of the small block and 17% of the large one (the exact scores and zoracle's: 20% and 20%") in text


def test_zo_grasp_counts_and_blocks():
    oracle, theta, _ = _quadratic(0, d=10)
    counted = []

    def f(x):
        counted.append(1)
        return oracle(x)

    s = zo.zo_grasp(f, theta, blocks=[slice(2, 5)], directions=7, rng=0)
    assert len(counted) == 2 * (7 + 1)
    assert np.all(s[:2] == 0) and np.all(s[5:] == 0) and np.any(s[2:5] != 0)


def test_zo_grasp_binds_a_data_oracle_to_the_batch():
    class Data:
        def bind(self, batch):
            c = np.asarray(batch, dtype=float)
            return lambda x: float(((x - c) ** 2).sum())

    s = zo.zo_grasp(Data(), np.zeros(3), batch=[1.0, 2.0, 3.0], directions=60, rng=0)
    assert s.shape == (3,) and np.all(s == 0)  # theta = 0 => every GraSP score is 0
    with pytest.raises(zo.ArgumentError, match="batch"):
        zo.zo_grasp(lambda x: 0.0, np.zeros(3), batch=[1.0])


def test_layer_ratios_rankings():
    scores = np.array([-9.0, 8.0, 0.1, -0.2, 0.3, 7.0])
    blocks = [slice(0, 2), slice(2, 6)]
    # magnitude keeps |S| in {9, 8, 7}; grasp keeps the lowest signed {-9, -0.2, 0.1}
    np.testing.assert_allclose(zo.layer_ratios(scores, blocks, 0.5), [1.0, 0.25])
    np.testing.assert_allclose(zo.layer_ratios(scores, blocks, 0.5, ranking="grasp"), [0.5, 0.5])
    with pytest.raises(zo.ArgumentError, match="ranking"):
        zo.layer_ratios(scores, blocks, 0.5, ranking="random")


@given(st.lists(st.integers(1, 300), min_size=1, max_size=6), st.floats(0.0, 0.99), st.integers(0, 5))
def test_total_kept_count_is_exact(sizes, sparsity, seed):
    starts = np.cumsum([0] + sizes)
    blocks = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    n = starts[-1]
    want = round((1 - sparsity) * n)
    scores = np.random.default_rng(seed).standard_normal(n)
    for r in (zo.layer_ratios(scores, blocks, sparsity), zo.uniform_ratios(blocks, sparsity),
              zo.random_ratios(blocks, sparsity, rng=seed), zo.smart_ratio(blocks, sparsity)):
        assert np.all((r >= 0) & (r <= 1))
        assert zo.keep_counts(blocks, r).sum() == want


def test_smart_ratio_formula_with_linear_fixed_and_clipping():
    # 4 scored layers: conv(10), conv(1000), conv(1000), linear(1000); sparsity 0.5 keeps 1505
    blocks = [P("c1", slice(0, 10), (10,), "conv"), P("c2", slice(10, 1010), (1000,), "conv"),
              P("c3", slice(1010, 2010), (1000,), "conv"), P("fc", slice(2010, 3010), (1000,), "linear")]
    r = zo.smart_ratio(blocks, 0.5)
    L = 4
    w = [(L - l + 1) ** 2 + (L - l + 1) for l in (1, 2, 3)]  # 20, 12, 6
    assert r[3] == 0.3  # linear keep ratio fixed at 0.3
    # budget for convs: 1505 - 300 = 1205; c1 would get c*20 > 1 -> clipped to 1, the rest re-solved
    assert r[0] == 1.0
    c = (1205 - 10) / (w[1] * 1000 + w[2] * 1000)
    np.testing.assert_allclose(r[1:3], [c * w[1], c * w[2]], atol=1e-3)
    assert zo.keep_counts(blocks, r).sum() == 1505
    assert r[1] / r[2] == pytest.approx(2.0, rel=1e-2)


@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from(["conv", "linear"])), min_size=1, max_size=6),
       st.floats(0.0, 0.99), st.sampled_from([0.3, 0.0, 1.0, 0.05]))
def test_smart_ratio_total_is_exact_with_linear_layers(layers, sparsity, linear_keep):
    """The total used to fall short where every conv layer was kept whole (or there was none):
    sizes [20, 30] conv/linear at sparsity 0 kept 30 of 50."""
    import warnings

    sizes = [n for n, _ in layers]
    starts = np.cumsum([0] + sizes)
    blocks = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the keep ratio of the linear layers moved to fit the budget
        r = zo.smart_ratio(blocks, sparsity, kinds=[k for _, k in layers], linear_keep=linear_keep)
    assert np.all((r >= 0) & (r <= 1))
    assert zo.keep_counts(blocks, r).sum() == round((1 - sparsity) * starts[-1])


def test_smart_ratio_gives_the_conv_layers_leftover_to_the_linear_ones():
    blocks = [P("c", slice(0, 20), (20,), "conv"), P("fc", slice(20, 50), (30,), "linear")]
    with pytest.warns(UserWarning, match="raising the linear layers' keep ratio from 0.3 to 1.0000"):
        r = zo.smart_ratio(blocks, 0.0)
    assert r.tolist() == [1.0, 1.0]


def test_smart_ratio_when_linear_alone_exceeds_the_budget():
    blocks = [P("c", slice(0, 100), (100,), "conv"), P("fc", slice(100, 1100), (1000,), "linear")]
    with pytest.warns(UserWarning, match="linear"):
        r = zo.smart_ratio(blocks, 0.99)
    assert zo.keep_counts(blocks, r).sum() == 11 and r[0] == 0


def test_split_blocks_scores_weights_only():
    info = [P("conv.w", slice(0, 8), (8,), "conv"), P("conv.b", slice(8, 10), (2,), "bias"),
            P("bn.w", slice(10, 12), (2,), "norm"), P("fc.w", slice(12, 20), (8,), "linear")]
    scored, dense = zo.split_blocks(info)
    assert scored == [slice(0, 8), slice(12, 20)] and dense == [slice(8, 10), slice(10, 12)]
    scored, dense = zo.split_blocks(info, score_kinds=("conv", "linear", "norm"))
    assert slice(10, 12) in scored


# -- dynamic masks --------------------------------------------------------------------
@given(st.lists(st.integers(1, 200), min_size=1, max_size=5), st.floats(0.0, 1.0), st.integers(0, 100))
def test_masks_keep_exactly_each_layers_count(sizes, ratio, seed):
    starts = np.cumsum([0] + sizes)
    blocks = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    ratios = np.full(len(blocks), ratio)
    idx = zo.random_masks(blocks, ratios, np.random.default_rng(seed), dense=[slice(int(starts[-1]), int(starts[-1]) + 3)])
    counts = zo.keep_counts(blocks, ratios)
    for s, k in zip(blocks, counts):
        assert ((idx >= s.start) & (idx < s.stop)).sum() == k
    assert np.all(np.diff(idx) > 0) and idx[-3:].tolist() == [starts[-1], starts[-1] + 1, starts[-1] + 2]


def test_masks_same_seed_same_masks_and_redraw_at_intervals():
    blocks, ratios = [slice(0, 500), slice(500, 1500)], [0.1, 0.05]
    a = zo.DynamicMasks(blocks, ratios, seed=3, interval=2)
    b = zo.DynamicMasks(blocks, ratios, seed=3, interval=2)
    for e in range(6):
        np.testing.assert_array_equal(a.coordinates(e), b.coordinates(e))
    assert np.array_equal(a.coordinates(0), a.coordinates(1))
    assert not np.array_equal(a.coordinates(1), a.coordinates(2))
    c = zo.DynamicMasks(blocks, ratios, seed=3, interval=3)
    assert np.array_equal(c.coordinates(2), c.coordinates(0)) and not np.array_equal(c.coordinates(3), c.coordinates(0))
    assert not np.array_equal(zo.DynamicMasks(blocks, ratios, seed=4).coordinates(0), a.coordinates(0))
    with pytest.raises(zo.ArgumentError, match="mask_shuffle_interval"):
        zo.DynamicMasks(blocks, ratios, seed=0, interval=0)
    with pytest.raises(zo.ArgumentError, match="ratios"):
        zo.DynamicMasks(blocks, [0.1, 1.5], seed=0)


@pytest.mark.parametrize("kw,match", [
    (dict(blocks=[slice(0, 10), slice(5, 15)]), r"`blocks\[0\]` = slice\(0, 10\) and `blocks\[1\]` = slice\(5, 15\) overlap"),
    (dict(blocks=[slice(0, 20)], dense=[slice(3, 5)]), r"`blocks\[0\]` = slice\(0, 20\) and `dense\[0\]` = slice\(3, 5\)"),
    (dict(blocks=[slice(-3, 2)]), "0 <= start < stop and no step"),
    (dict(blocks=[slice(0, 10, 2)]), "0 <= start < stop and no step"),
    (dict(seed=None), "`seed` must be an integer"),
    (dict(seed=-1), "`seed` must be an integer >= 0"),  # it drew 2**63 - 1's masks
])
def test_dynamic_masks_refuse_overlaps_bad_slices_and_seeds_when_built(kw, match):
    """These used to build, then fail at some epochs only (an overlap), keep more than the
    exact count (a dense block inside a scored one), draw negative indices, or raise a bare
    TypeError at the first draw (seed None)."""
    args = dict(blocks=[slice(0, 10)], ratios=None, seed=0, interval=1)
    args.update(kw)
    args["ratios"] = [0.2] * len(args["blocks"])
    with pytest.raises(zo.ArgumentError, match=match):
        zo.DynamicMasks(**args)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 400)), min_size=1, max_size=8))
def test_fill_small_blocks_moves_one_survivor_into_each_empty_small_block(pairs):
    from zoracle._pruning import fill_small_blocks

    counts = np.array([min(c, s) for c, s in pairs])
    sizes = np.array([s for _, s in pairs])
    out = fill_small_blocks(counts, sizes)
    total = counts.sum()
    assert out.sum() == total and np.all(out >= 0)
    small_empty = (counts == 0) & (sizes <= total)
    assert np.all(out[~small_empty] <= counts[~small_empty])  # only donors lose, nothing else gains
    assert np.all(out[small_empty] <= 1)
    filled = small_empty & (out == 1)
    # the textbook loop: fill the empty small blocks in order while some block holds two or more
    ref = counts.copy()
    for b in np.flatnonzero(small_empty):
        donor = int(np.argmax(ref))
        if ref[donor] < 2:
            break
        ref[donor] -= 1
        ref[b] = 1
    assert out.tolist() == ref.tolist()
    if filled.sum() < small_empty.sum():  # some left empty: only because no block had two to give
        assert out.max() <= 1


def test_layer_ratios_fill_small_gives_a_collapsed_first_layer_its_coordinate():
    # the first block's scores are the smallest: the global top 5 leaves it empty
    blocks = [slice(0, 4), slice(4, 104)]
    scores = np.concatenate([np.full(4, 1e-3), np.linspace(1, 2, 100)])
    plain = zo.layer_ratios(scores, blocks, 0.95 + 1e-9)
    filled = zo.layer_ratios(scores, blocks, 0.95 + 1e-9, fill_small=True)
    assert zo.keep_counts(blocks, plain).tolist() == [0, 5]
    assert zo.keep_counts(blocks, filled).tolist() == [1, 4]
    big = [slice(0, 40), slice(40, 140)]  # a block larger than the 7 survivors stays empty
    scores = np.concatenate([np.full(40, 1e-3), np.linspace(1, 2, 100)])
    assert zo.keep_counts(big, zo.layer_ratios(scores, big, 0.95, fill_small=True)).tolist() == [0, 7]


@pytest.mark.parametrize("call", [lambda m: m.coordinates(-1), lambda m: m.coordinates(1.5),
                                  lambda m: m.coordinates("2"), lambda m: m.coordinates(0, step=-3)])
def test_dynamic_masks_refuse_epochs_and_steps_that_are_not_counts(call):
    """-1 failed inside NumPy ("expected non-negative integer"); 1.5 and "2" drew some mask."""
    masks = zo.DynamicMasks([slice(0, 10)], [0.5], seed=0)
    with pytest.raises(zo.ArgumentError, match=r"`(epoch|step)` must be an integer >= 0"):
        call(masks)
    assert np.array_equal(masks.coordinates(np.int64(2)), masks.coordinates(2))


def test_the_block_helpers_refuse_what_they_would_misread():
    # split_blocks read score_kinds="conv" as its characters (every block dense); uniform_ratios
    # took overlapping blocks, which the other ratio functions refuse; DynamicMasks took ratios that
    # keep nothing (failing at the first draw) and ratios=["a"] with a bare ValueError
    from collections import namedtuple

    P = namedtuple("P", "name slice shape kind")
    recs = [P("0.weight", slice(0, 20), (20,), "conv"), P("1.weight", slice(20, 40), (20,), "linear")]
    with pytest.raises(zo.ArgumentError, match="`score_kinds` must be a collection"):
        zo.split_blocks(recs, score_kinds="conv")
    assert zo.split_blocks(recs, score_kinds=("conv",)) == ([slice(0, 20)], [slice(20, 40)])
    with pytest.raises(zo.ArgumentError, match="overlap"):
        zo.uniform_ratios([slice(0, 10), slice(5, 15)], 0.5)
    with pytest.raises(zo.ArgumentError, match="keep no coordinate"):
        zo.DynamicMasks([slice(0, 10)], [0.0], seed=0)
    assert zo.DynamicMasks([slice(0, 10)], [0.0], seed=0, dense=[slice(10, 12)]).coordinates(0).tolist() == [10, 11]
    with pytest.raises(zo.ArgumentError, match="`ratios` must be keep ratios"):
        zo.DynamicMasks([slice(0, 10)], ["a"], seed=0)


def test_ratio_functions_refuse_what_they_would_misread():
    """Found by fuzzing: an empty ``blocks`` crashed three ratio functions with raw errors (and
    gave [] from the fourth); ``fill_small="no"`` and ``common_random_numbers="False"`` were read
    as True; ``smart_ratio`` weighted bias and norm blocks as conv layers (shifting the conv
    layers' shares: 0.25 for a bias, 0.26 and 0.125 for the convs); complex scores lost their
    imaginary part; ZO-GraSP refused a block past the parameters after spending 386 queries."""
    for call in (lambda: zo.layer_ratios(np.ones(3), [], 0.5), lambda: zo.random_ratios([], 0.5, rng=0),
                 lambda: zo.smart_ratio([], 0.5), lambda: zo.uniform_ratios([], 0.5)):
        with pytest.raises(zo.ArgumentError, match="`blocks` is empty"):
            call()
    s = np.array([5.0, 4.0, 3.5, 0.2, 0.3, 0.1])
    with pytest.raises(zo.ArgumentError, match="`fill_small` must be True or False, got 'no'"):
        zo.layer_ratios(s, [slice(0, 4), slice(4, 6)], 0.5, fill_small="no")
    assert zo.layer_ratios(s, [slice(0, 4), slice(4, 6)], 0.5, fill_small=np.bool_(True)).tolist() == [0.5, 0.5]
    with pytest.raises(zo.ArgumentError, match="`scores` must be real"):
        zo.layer_ratios(s + 1j, [slice(0, 6)], 0.5)
    with pytest.raises(zo.ArgumentError, match="got 'bias' for block 1"):
        zo.smart_ratio([slice(0, 100), slice(100, 104), slice(104, 304)], 0.8, kinds=["conv", "bias", "conv"])
    calls = []

    def loss(x):
        calls.append(1)
        return float(x @ x)

    with pytest.raises(zo.ArgumentError, match="`common_random_numbers` must be True or False"):
        zo.zo_grasp(loss, np.ones(4), common_random_numbers="False")
    with pytest.raises(zo.ArgumentError, match=r"block slice\(0, 9, None\) lies outside params of length 4"):
        zo.zo_grasp(loss, np.ones(4), blocks=[slice(0, 9)])
    with pytest.raises(zo.ArgumentError, match="`blocks` is empty"):
        zo.zo_grasp(loss, np.ones(4), blocks=[])
    assert calls == []  # every refusal before the first query


def test_smart_ratios_in_train_refuse_scored_biases():
    """``train(score_kinds=("conv", "linear", "bias"), ratios="smart")`` weighted the biases as
    conv layers without a word."""
    P = namedtuple("P", "name slice shape kind")
    blocks = [P("w", slice(0, 20), (20,), "linear"), P("b", slice(20, 24), (4,), "bias")]
    with pytest.raises(zo.ArgumentError, match="got 'bias' for block 1"):
        zo.train(lambda x: float(x @ x), np.ones(24), epochs=1, sparsity=0.5, ratios="smart", blocks=blocks,
                 score_kinds=("conv", "linear", "bias"), progress=False)


def test_blocks_given_as_a_generator_are_read_once():
    """zo_grasp read ``blocks`` twice (the check before its queries, the mask after): from a
    generator every score came back 0 after its queries; smart_ratio and split_blocks read it
    twice too ("`kinds` must name one kind per block (2), got 0")."""
    info = [P("w1", slice(0, 4), (4,), "linear"), P("b1", slice(4, 6), (2,), "bias"),
            P("w2", slice(6, 10), (4,), "linear")]
    oracle = QuadraticOracle(np.diag(np.arange(1.0, 11.0)), b=np.ones(10))
    x = np.linspace(0.5, 1.5, 10)
    want = zo.zo_grasp(oracle, x, blocks=[b for b in info if b.kind == "linear"], directions=40, rng=0)
    got = zo.zo_grasp(oracle, x, blocks=(b for b in info if b.kind == "linear"), directions=40, rng=0)
    np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(got[[0, 1, 2, 3, 6, 7, 8, 9]]) == 8 and not got[4:6].any()
    convs = [P("c1", slice(0, 40), (40,), "conv"), P("c2", slice(40, 100), (60,), "conv")]
    np.testing.assert_array_equal(zo.smart_ratio(iter(convs), 0.5), zo.smart_ratio(convs, 0.5))
    assert zo.split_blocks(iter(info)) == zo.split_blocks(info) == ([slice(0, 4), slice(6, 10)], [slice(4, 6)])


def test_mask_helpers_refuse_overlaps_and_bad_ratios_whatever_the_draw():
    """``random_masks`` with overlapping blocks returned a mask for 9 of 20 seeds and blamed
    `dense` (not passed) for the others; ratios=["x"] raised a bare ValueError from
    ``keep_counts`` and ``random_masks``; ``DynamicMasks(interval="step").period(3)`` raised
    a TypeError."""
    for seed in range(20):
        with pytest.raises(zo.ArgumentError, match=r"`blocks\[0\]` = slice\(0, 10\) and `blocks\[1\]`"):
            zo.random_masks([slice(0, 10), slice(5, 15)], [0.3, 0.3], seed)
    with pytest.raises(zo.ArgumentError, match=r"`blocks\[0\]` = slice\(0, 10\) and `dense\[0\]`"):
        zo.random_masks([slice(0, 10)], [0.3], 0, dense=[slice(8, 12)])
    for call in (lambda: zo.keep_counts([slice(0, 10)], ["x"]), lambda: zo.random_masks([slice(0, 10)], ["x"], 0)):
        with pytest.raises(zo.ArgumentError, match="`ratios` must be keep ratios"):
            call()
    with pytest.raises(zo.ArgumentError, match="per-step masks .* have no period"):
        zo.DynamicMasks([slice(0, 10)], [0.5], seed=0, interval="step").period(3)
    assert zo.DynamicMasks([slice(0, 10)], [0.5], seed=0, interval=2).period(5) == 2


def test_per_step_masks_without_step_name_the_argument_dynamicmasks_takes():
    """``DynamicMasks(interval="step").coordinates(epoch)`` without ``step`` named
    `mask_shuffle_interval` (train's argument, which DynamicMasks does not take) and gave no fix."""
    m = zo.DynamicMasks([slice(0, 10)], [0.5], seed=0, interval="step")
    with pytest.raises(zo.ArgumentError) as err:
        m.coordinates(0)
    assert "`interval=\"step\"`" in str(err.value) and "mask_shuffle_interval" not in str(err.value)
    assert "step=step" in str(err.value)
    assert m.coordinates(0, step=3).size == 5  # the fix the message names works


def test_keep_counts_keep_one_of_a_block_whose_ratio_is_above_zero():
    """A tiny keep ratio rounding to 0 would leave its layer untrained for the whole run."""
    assert zo.keep_counts([slice(0, 100), slice(100, 300)], [0.004, 0.0]).tolist() == [1, 0]


def test_zo_grasp_scores_have_the_scale_of_the_exact_ones():
    """Correlation cannot see a factor 2 (scores divided by 2 mu instead of mu passed every
    test): on f = x'Ax/2 + b'x at theta = 1, -theta * H g = -(2, 6, 12) exactly."""
    oracle = QuadraticOracle(np.diag([1.0, 2.0, 3.0]), b=np.ones(3))
    exact = np.array([-2.0, -6.0, -12.0])
    for seed in range(3):
        s = zo.zo_grasp(oracle, np.ones(3), directions=4000, rng=seed)
        np.testing.assert_allclose(s, exact, rtol=0.3)


def test_grasp_ranking_keeps_the_lowest_scores():
    """GraSP removes the weights whose removal reduces the gradient flow least, keeping the
    lowest scores; the rankings' test case gave [0.5, 0.5] for the rule and its reverse."""
    s = np.array([9.0, 8.0, -0.1, 0.2, -0.3, 7.0])
    blocks = [slice(0, 2), slice(2, 6)]
    assert zo.layer_ratios(s, blocks, 0.5, ranking="grasp").tolist() == [0.0, 0.75]
    assert zo.layer_ratios(s, blocks, 0.5, ranking="magnitude").tolist() == [1.0, 0.25]


def test_zo_grasp_names_its_own_second_point_when_the_oracle_fails_there():
    """The loss is finite at params and around them but not at ZO-GraSP's second point,
    params + mu * g: the error blamed "the base point (unperturbed params)", which reads
    as the caller's params (finite there)."""
    def loss(x):
        return float(1000 * np.sum(x ** 2)) if np.max(np.abs(x)) < 0.5 else float("inf")

    theta = np.full(4, 0.3)
    assert np.isfinite(loss(theta))
    with pytest.raises(zo.OracleError, match=r"base point \(unperturbed params\) of ZO-GraSP's second estimate, at "
                                             r"params \+ mu \* g \(a step of norm [0-9.]+ from params\).*smaller `mu`") as info, \
            pytest.warns(RuntimeWarning, match="second point params"):  # (a step 10 times |theta|: warned too)
        zo.zo_grasp(loss, theta, mu=5e-3, directions=8, rng=0)
    assert info.value.query.endswith("from params)")
    with pytest.raises(zo.OracleError, match="ZO-GraSP's second estimate"), pytest.warns(RuntimeWarning):
        zo.train(loss, theta, epochs=1, estimator=zo.CGE(), sparsity=0.5, blocks=[slice(0, 2), slice(2, 4)],
                 grasp_directions=8, optimizer=zo.sgd(1e-4), rng=0, progress=False)


@pytest.mark.parametrize("ratios", ["zo_grasp", "uniform", "smart", "random"])
def test_a_sparsity_keeping_nothing_is_refused_alike_for_every_ratio_method(ratios):
    """Only ZO-GraSP got the error naming `sparsity`; the other methods first warned that
    "only the dense blocks train" (there were none), then blamed `ratios`."""
    calls = []
    loss = lambda x: calls.append(1) or float(np.sum((x - 1) ** 2))
    with pytest.raises(zo.ArgumentError, match=r"`sparsity`=0.99 keeps round\(\(1 - sparsity\) \* 30\) = 0"):
        zo.train(loss, np.zeros(30), epochs=1, estimator=zo.CGE(), sparsity=0.99, ratios=ratios,
                 blocks=[slice(0, 10), slice(10, 30)], optimizer=zo.sgd(0.01), rng=0, progress=False)
    assert not calls


def test_layer_ratio_ties_and_small_block_fills_follow_their_documented_rules():
    """Three gaps a mutation test found: ties between blocks must break by block order, then
    position (an unstable sort passed: small arrays sort stably anyway); a block as large as all
    the survivors is filled; a donor holding one survivor gives none."""
    from zoracle._pruning import fill_small_blocks

    scores = np.zeros(300)
    scores[[5, 150, 290]] = [3.0, 2.0, 1.0]
    blocks = [slice(0, 100), slice(100, 200), slice(200, 300)]
    keep = 60  # round((1 - 0.8) * 300)
    # textbook: rank by |score| descending, ties by block order then position (= index order here)
    order = sorted(range(300), key=lambda i: -abs(scores[i]))[:keep]
    want = [sum(b.start <= i < b.stop for i in order) / 100 for b in blocks]
    np.testing.assert_allclose(zo.layer_ratios(scores, blocks, 0.8), want)
    assert fill_small_blocks([2, 0], [10, 2]).tolist() == [1, 1]
    assert fill_small_blocks([1, 0, 0], [5, 1, 1]).tolist() == [1, 0, 0]


def test_smart_ratio_follows_su_et_al_weights_over_four_unclipped_conv_layers():
    """Smart Ratio's conv weights are j^2 + j for j = L - l + 1 (Su et al. 2020). With two
    unclipped conv layers (the other tests) only the ratio of two weights is checked, and
    (j^2 - j + 2) has the same ratio 2 at j = 3, 2 as j^2 + j: four layers tell them apart."""
    blocks = [slice(0, 1000), slice(1000, 2000), slice(2000, 3000), slice(3000, 4000)]
    r = zo.smart_ratio(blocks, 0.9)  # total 400 = c * 1000 * (20 + 12 + 6 + 2): c = 0.01
    assert r.tolist() == [0.2, 0.12, 0.06, 0.02]
    # with a linear head: L = 5 layers, conv weights 30, 20, 12, 6, linear fixed at 0.3
    convs = [P(f"{i}.weight", slice(1000 * i, 1000 * (i + 1)), (1000,), "conv") for i in range(4)]
    fc = P("4.weight", slice(4000, 5000), (1000,), "linear")
    r = zo.smart_ratio(convs + [fc], 0.85)  # total 750: 300 linear, 450 = c * 1000 * 68 conv
    w = np.array([(5 - l + 1) ** 2 + (5 - l + 1) for l in range(1, 5)], dtype=float)
    np.testing.assert_allclose(r[:4], 450 / (1000 * w.sum()) * w, atol=1e-3)
    assert r[4] == 0.3 and zo.keep_counts(convs + [fc], r).sum() == 750


def test_zo_grasp_spends_the_queries_grasp_queries_counts():
    """train and short_budget budget ZO-GraSP with ``grasp_queries``: it must be the queries
    zo_grasp really spends (two forward RGEs of q directions, each with its base point)."""
    from zoracle._pruning import grasp_queries

    calls = []

    def loss(x):
        calls.append(1)
        return float(np.sum(np.asarray(x) ** 2))

    for q in (1, 3, 10):
        calls.clear()
        zo.zo_grasp(loss, np.linspace(-1.0, 1.0, 6), directions=q, rng=0)
        assert len(calls) == 2 * (q + 1) == grasp_queries(q)


def test_ratio_functions_and_masks_refuse_blocks_that_overlap_by_one_coordinate():
    """Blocks split one budget: a parameter in two blocks is counted twice. An overlap of a
    single coordinate (slice(0, 10) and slice(9, 15): an off-by-one in a hand-written layout)
    must be refused as a wide one is, by layer_ratios too."""
    blocks = [slice(0, 10), slice(9, 15)]
    scores = np.arange(15.0)
    for call in (lambda: zo.layer_ratios(scores, blocks, 0.5), lambda: zo.smart_ratio(blocks, 0.5),
                 lambda: zo.uniform_ratios(blocks, 0.5), lambda: zo.random_masks(blocks, [0.5, 0.5], 0),
                 lambda: zo.random_masks([slice(0, 10)], [0.5], 0, dense=[slice(9, 12)]),
                 lambda: zo.DynamicMasks(blocks, [0.5, 0.5], seed=0)):
        with pytest.raises(zo.ArgumentError, match="overlap"):
            call()
    with pytest.raises(zo.ArgumentError, match="overlap"):  # a wide overlap, in layer_ratios
        zo.layer_ratios(scores, [slice(0, 10), slice(5, 15)], 0.5)
    # adjacent blocks are fine: every coordinate in one block
    assert zo.layer_ratios(scores, [slice(0, 9), slice(9, 15)], 0.5).tolist() == [2 / 9, 1.0]  # the top 8 of 0..14: 7, 8 and 9..14


def test_an_empty_block_is_refused_not_a_nan_ratio():
    """slice(5, 5) has no parameter: its keep ratio would be 0 / 0."""
    for call in (lambda: zo.layer_ratios(np.ones(10), [slice(0, 5), slice(5, 5)], 0.5),
                 lambda: zo.uniform_ratios([slice(0, 5), slice(5, 5), slice(5, 10)], 0.5),
                 lambda: zo.keep_counts([slice(0, 5), slice(5, 5)], [0.5, 0.5]),
                 lambda: zo.DynamicMasks([slice(0, 5), slice(5, 5)], [0.5, 0.5], seed=0)):
        with pytest.raises(zo.ArgumentError, match=r"0 <= start < stop"):
            call()


def test_random_masks_are_sorted_with_a_dense_block_between_scored_ones():
    """The coordinates are documented as sorted flat indices; the dense blocks (a bias between
    two weight matrices) come in the middle of the scored ones."""
    blocks, dense = [slice(0, 10), slice(12, 30)], [slice(10, 12), slice(30, 32)]
    for seed in range(5):
        c = zo.random_masks(blocks, [0.5, 0.2], seed, dense=dense)
        assert c.tolist() == sorted(c.tolist()) and len(set(c.tolist())) == c.size == 5 + 4 + 4
        assert {10, 11, 30, 31} <= set(c.tolist())
        m = zo.DynamicMasks(blocks, [0.5, 0.2], seed=seed, dense=dense)
        assert np.all(np.diff(m.coordinates(0)) > 0)


def test_smart_ratio_does_not_warn_when_the_linear_layers_take_exactly_the_budget():
    """The warning says the linear layers' keep ratio is lowered: at a budget they fill exactly
    (300 of 1,100 kept, 0.3 of the 1,000 linear weights) nothing is lowered."""
    import warnings

    blocks = [P("c", slice(0, 100), (100,), "conv"), P("fc", slice(100, 1100), (1000,), "linear")]
    assert round((1 - 8 / 11) * 1100) == 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = zo.smart_ratio(blocks, 8 / 11)
    assert r.tolist() == [0.0, 0.3]


def test_zo_grasp_names_its_first_estimate_when_the_oracle_fails_there():
    """A failure in ZO-GraSP's first RGE inside a sparse `train` read "oracle returned nan at
    direction 0 (+mu)": no step, no ZO-GraSP, and directions a CGE run does not have."""
    theta = np.full(4, 0.3)
    probe = []
    zo.zo_grasp(lambda x: probe.append(np.array(x)) or float(np.sum(x ** 2)), theta, mu=5e-3, directions=8, rng=0)
    target = probe[1].tobytes()  # the query after the base point: direction 0 of the first estimate

    def loss(x):
        return float("nan") if np.asarray(x).tobytes() == target else float(np.sum(x ** 2))

    with pytest.raises(zo.OracleError, match=r"at direction 0 \(\+mu\) of ZO-GraSP's first estimate, at params") as info:
        zo.zo_grasp(loss, theta, mu=5e-3, directions=8, rng=0)
    assert info.value.query == "direction 0 (+mu) of ZO-GraSP's first estimate, at params"
    assert np.isnan(info.value.value)


def test_zo_grasp_warns_of_a_long_second_step():
    """ZO-GraSP's second point theta + mu ghat is in the loss's units: the same tanh MLP's loss times
    1000 (a sum over samples, other units) read the Hessian a step of 0.9 |theta| away and its scores
    correlated 0.68 with the exact GraSP scores (autograd), 0.87 at x1 and 0.88 at x100, with no word. The
    scores' drift is measured here against the exact ones, and the warning comes where it sets in."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n, din, h, k = 64, 6, 10, 3
    X = torch.as_tensor(rng.standard_normal((n, din)))
    y = torch.as_tensor(rng.integers(0, k, n))
    sizes = np.cumsum([0, din * h, h, h * k, k])
    b = [slice(int(sizes[i]), int(sizes[i + 1])) for i in range(4)]
    wb, idx = [b[0], b[2]], np.r_[b[0], b[2]]

    def net(p):
        return torch.nn.functional.cross_entropy(torch.tanh(X @ p[b[0]].reshape(din, h) + p[b[1]]) @ p[b[2]].reshape(h, k) + p[b[3]], y)

    x0 = rng.standard_normal(int(sizes[-1])) * 0.5
    p = torch.tensor(x0, requires_grad=True)
    g, = torch.autograd.grad(net(p), p, create_graph=True)
    hg, = torch.autograd.grad(g, p, grad_outputs=g.detach())
    exact = -(x0 * hg.detach().numpy())[idx]

    def corr(s):
        def loss(q):
            with torch.no_grad():
                return s * float(net(torch.from_numpy(np.array(q))))
        scores = zo.zo_grasp(loss, x0, blocks=wb, directions=4 * x0.size, rng=0)
        return np.corrcoef(scores[idx], exact)[0, 1]

    # docs/training.md quotes these: 0.87 unscaled (0.88 at x100, no warning: an error under the test
    # settings), 0.68 at x1000, warned
    assert round(corr(1.0), 2) == 0.87 and round(corr(100.0), 2) == 0.88
    with pytest.warns(RuntimeWarning, match=r"second point params \+ mu \* g lies [0-9.]+ from params \(0.89 of "
                                            r"\|params\|.*a mean rather than a sum.*smaller mu"):
        assert round(corr(1000.0), 2) == 0.68


def test_zo_grasp_no_long_step_warning_for_a_mean_loss_at_small_params():
    """A mean loss (order 1: logistic regression's BCE, 0.69) at params started near 0 (|theta| 0.004)
    stepped 0.0026 to its second point, 0.69 of |theta|: warned as "the Hessian is read that far away
    ... return a mean rather than a sum", though the loss is a mean and the scores are those of a
    second point 1000x nearer (mu=1e-6). The reference: exact GraSP -theta * H g by autograd."""
    torch = pytest.importorskip("torch")
    import warnings

    rng = np.random.default_rng(0)
    n, k = 200, 10
    X = np.c_[rng.standard_normal((n, k)), np.ones(n)]
    y = (X @ rng.standard_normal(k + 1) + 0.5 * rng.standard_normal(n) > 0).astype(float)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def net(w):
        return torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w, yt)

    def loss(w):
        with torch.no_grad():
            return float(net(torch.from_numpy(np.array(w))))

    theta = 1e-3 * rng.standard_normal(k + 1)
    p = torch.tensor(theta, requires_grad=True)
    g, = torch.autograd.grad(net(p), p, create_graph=True)
    hg, = torch.autograd.grad(g, p, grad_outputs=g.detach())
    exact = -theta * hg.detach().numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = zo.zo_grasp(loss, theta, directions=20 * theta.size, rng=0)
    near = zo.zo_grasp(loss, theta, directions=20 * theta.size, rng=0, mu=1e-6)
    assert not [w for w in caught if "second point" in str(w.message)], [str(w.message) for w in caught]
    # the step does the scores no harm: as near the exact ones as those of a second point 1000x nearer
    assert abs(np.corrcoef(scores, exact)[0, 1] - np.corrcoef(near, exact)[0, 1]) < 0.01


# ZO-GraSP inside a box (bounds=): Rademacher directions, points clipped into the box shrunk by mu ------------


class _Boxed:
    """A loss that raises at any point outside ``[lo, hi]`` and records every query; ``batch`` optional."""

    def __init__(self, A, b, lo, hi):
        self.A, self.b, self.lo, self.hi, self.points = A, b, lo, hi, []

    def __call__(self, x):
        x64 = np.asarray(x, dtype=np.float64)
        if not ((x64 >= self.lo) & (x64 <= self.hi)).all():
            raise RuntimeError(f"query outside the box: {x64!r}")
        self.points.append(x64.copy())
        return float(0.5 * x64 @ self.A @ x64 + self.b @ x64)


class _BoxedBatch(_Boxed):
    def batch(self, X):
        return np.array([self(x) for x in X])


@pytest.mark.filterwarnings("ignore:ZO-GraSP's second point")  # (a steep loss: its long step clips)
@given(d=st.integers(1, 6), q=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), batch=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_zo_grasp_in_bounds_never_queries_outside_the_box(d, q, seed, batch, dtype, data):
    r = np.random.default_rng(seed)
    lo = r.uniform(-2, 1, d)
    hi = lo + r.uniform(0.011, 3, d)  # (at least 2 mu wide)
    mu = 5e-3
    t = data.draw(st.sampled_from(["inside", "at lo", "at hi"]))
    theta = lo if t == "at lo" else hi if t == "at hi" else r.uniform(lo, hi)
    theta = theta.astype(dtype)
    out = (theta < lo) | (theta > hi)  # (a bound rounded out of the box in float32: the middle there)
    theta[out] = (0.5 * (lo + hi)).astype(dtype)[out]
    M = r.standard_normal((d, d))
    f = (_BoxedBatch if batch else _Boxed)(1e3 * (M @ M.T), 1e3 * r.standard_normal(d), lo, hi)  # (steep: clips)
    s = zo.zo_grasp(f, theta, mu=mu, directions=q, rng=seed, bounds=(lo, hi))
    assert len(f.points) == 2 * (q + 1) and np.isfinite(s).all()


@pytest.mark.filterwarnings("ignore:ZO-GraSP's second point")  # (a steep loss: its long step clips)
def test_zo_grasp_in_bounds_is_the_textbook_computation_from_its_own_queries():
    """Read back from the queries: the base point is params clipped into [lo + mu, hi - mu], each
    direction moves every coordinate by exactly mu (Rademacher), the second point is base + mu * ghat
    clipped into the same box, the second estimate reuses the first's directions, and the scores are
    -params * (ghat2 - ghat1) / mu, all recomputed here with the plain loop."""
    d, q, mu = 5, 7, 0.01
    lo, hi = np.full(d, -1.0), np.full(d, 1.0)
    theta = np.array([1.0, -1.0, 0.3, 0.995, -0.2])  # two on the box's faces, one within mu of one
    r = np.random.default_rng(3)
    M = r.standard_normal((d, d))
    f = _Boxed(M @ M.T, 50 * r.standard_normal(d), lo, hi)  # (a large gradient: the second point clips)
    s = zo.zo_grasp(f, theta, mu=mu, directions=q, rng=0, bounds=(-1.0, 1.0))
    P = np.array(f.points)
    x1, x2 = P[0], P[q + 1]
    np.testing.assert_array_equal(x1, np.clip(theta, -1 + mu, 1 - mu))
    U1, U2 = (P[1:q + 1] - x1) / mu, (P[q + 2:] - x2) / mu
    np.testing.assert_allclose(np.abs(U1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(U1, U2, rtol=1e-6)
    U = np.round(U1)
    loss = [f.__class__.__call__(_Boxed(f.A, f.b, lo, hi), x) for x in P]
    g1 = sum((loss[1 + j] - loss[0]) / mu * U[j] for j in range(q)) / q
    g2 = sum((loss[q + 2 + j] - loss[q + 1]) / mu * U[j] for j in range(q)) / q
    expected_x2 = np.clip(x1 + mu * g1, -1 + mu, 1 - mu)
    assert (expected_x2 != x1 + mu * g1).any()  # (the second point clipped: the step projected onto the box)
    np.testing.assert_allclose(x2, expected_x2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s, -theta * (g2 - g1) / mu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zo_grasp_in_a_box_that_never_binds_matches_exact_grasp_scores_on_a_quadratic(seed):
    oracle, theta, exact = _quadratic(seed)
    scores = zo.zo_grasp(oracle, theta, directions=20 * theta.size, rng=seed, bounds=(-1e3, 1e3))
    assert np.corrcoef(scores, exact)[0, 1] >= 0.9


def test_zo_grasp_refuses_a_box_narrower_than_two_mu_before_any_query():
    f = _Boxed(np.eye(3), np.zeros(3), np.zeros(3), np.ones(3))
    with pytest.raises(zo.ArgumentError, match=r"`bounds` is narrower than 2 \* mu = 0.01 at coordinate 1"):
        zo.zo_grasp(f, np.zeros(3), mu=5e-3, bounds=([0, 0, 0], [1, 0.008, 1]))
    with pytest.raises(zo.ArgumentError, match=r"`bounds` must be a tuple \(lo, hi\)"):
        zo.zo_grasp(f, np.zeros(3), bounds=[0.0])
    assert f.points == []


def test_zo_grasp_in_bounds_reads_the_box_as_train_does():
    """``train(bounds=...)``'s forms (None for no bound, SciPy's pairs, ``scipy.optimize.Bounds``) and refusals:
    ZO-GraSP read None as NaN and refused it as "narrower than 2 * mu", refused SciPy's pairs as no pair, called
    lo above hi "narrower than 2 * mu", and raised NumPy's ValueError at a side of another length or a string."""
    lo, hi = np.array([-1.0, -np.inf, 0.0]), np.array([np.inf, 1.0, 0.75])
    theta = np.array([0.3, -0.2, 0.75])
    A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])
    ref = zo.zo_grasp(_Boxed(A, np.ones(3), lo, hi), theta, mu=1e-2, directions=6, rng=0, bounds=(lo, hi))
    scipy_optimize = pytest.importorskip("scipy.optimize")
    for bounds in ([-1.0, None, 0.0], [None, 1.0, 0.75]), [(-1.0, None), (None, 1.0), (0.0, 0.75)], \
            scipy_optimize.Bounds(lo, hi):
        f = _Boxed(A, np.ones(3), lo, hi)
        np.testing.assert_array_equal(zo.zo_grasp(f, theta, mu=1e-2, directions=6, rng=0, bounds=bounds), ref)
        assert len(f.points) == 14
    f = _Boxed(A, np.ones(3), lo, hi)
    for bounds, match in [((1.0, -1.0), r"`bounds`: lo\[0\] = 1.0 is above hi\[0\] = -1.0"),
                          ((np.nan, 1.0), r"`bounds`: lo\[0\] is NaN; use None"),
                          ((np.zeros(2), 1.0), r"`bounds`: lo must be a number, None or an array of the params' shape"),
                          (("a", 1.0), r"`bounds`: lo\[0\] must be a number or None")]:
        with pytest.raises(zo.ArgumentError, match=match):
            zo.zo_grasp(f, theta, bounds=bounds)
    assert f.points == []


def test_zo_grasp_in_bounds_keeps_a_box_a_rounding_short_of_two_mu_that_train_keeps():
    """``hi - lo`` rounds to just below ``2 * mu`` in float64, yet the one point ``c = lo + mu`` has both
    queries ``c -+ mu`` inside ``[lo, hi]``: ``train(bounds=...)`` keeps such a box (it tests the rounded
    queries), and ZO-GraSP refused it in a sparse run of that very box ("narrower than 2 * mu", a float64
    width test beside the queries' own) before any query."""
    mu, lo, hi = 0.01, 0.10235142339002296, 0.12235142339002295
    c = lo + mu
    assert hi - lo < 2 * mu and c - mu >= lo and c + mu <= hi  # (the plain float64 arithmetic of the queries)
    d = 8
    L, H = np.full(d, -1.0), np.full(d, 1.0)
    L[1], H[1] = lo, hi
    f = _BoxedBatch(np.eye(d), np.ones(d), L, H)
    s = zo.zo_grasp(f, np.full(d, 0.11), mu=mu, directions=5, rng=0, bounds=(L, H))
    assert len(f.points) == 12 and np.isfinite(s).all()
    assert {p[1] for p in f.points} <= {c - mu, c, c + mu}  # (the one point of the shrunk box, +-mu)
    res = zo.train(_Boxed(np.eye(d), np.ones(d), L, H), np.full(d, 0.11), epochs=2, optimizer=zo.sgd(0.1),
                   estimator=zo.CGE(mu=mu, scheme="central"), bounds=(L, H), sparsity=0.5, ratios="zo_grasp",
                   blocks=[slice(0, 4), slice(4, 8)], progress=False)
    assert res.params[1] == c
