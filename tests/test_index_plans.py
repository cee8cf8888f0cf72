"""The index work a sparse CGE step through TorchOracle repeats while its mask stays the same (the
coordinates' blocks and positions, each chunk's channels and patch rows) is kept per coordinate set
on the oracle's core: a new mask, a batch of another shape (other chunks), another split or another
model gets its own plans, and the losses stay those of the uncached computation bit for bit."""

import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters import _torch_walk  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

CE = nn.CrossEntropyLoss(reduction="none")


def _net(seed: int = 0, width: int = 6) -> nn.Sequential:
    """The demo CNN's shape, small (conv, conv, linear blocks)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, width, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 5)).double()


def _net1d(seed: int = 0) -> nn.Sequential:
    """MNIST-1D's shape, small (conv1d, conv1d, linear, linear blocks)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool1d(2), nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 5)).double()


def _batch(n: int = 12, shape=(1, 8, 8), seed: int = 5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape), rng.integers(0, 5, n)


def _uncached(oracle, theta, coords, step=1e-4):
    """``coordinate_losses`` with the kept plans dropped before the call: every index made again."""
    oracle._core.__dict__.pop("index_plans", None)
    return oracle.coordinate_losses(theta, coords, step)


def _masks(oracle, n: int, seeds) -> list:
    """Sorted coordinate sets of ``n`` each (the planner's order), one a seed, all different."""
    out = [np.sort(np.random.default_rng(s).choice(oracle.size, n, replace=False)) for s in seeds]
    assert len({m.tobytes() for m in out}) == len(out)
    return out


def _theta(oracle):
    return oracle.initial_params() + 0.05 * np.random.default_rng(1).standard_normal(oracle.size)


@pytest.mark.parametrize("make,shape", [(_net, (1, 8, 8)), (_net1d, (1, 16))], ids=["conv2d", "conv1d"])
def test_a_new_mask_gets_its_own_plans(make, shape):
    """Masks of the same size, one after the other and back again: each call's losses are those
    computed with no plan kept (a plan looked up by anything less than the coordinates themselves
    would give the second mask the first one's channels and positions)."""
    x, y = _batch(shape=shape)
    oracle = TorchOracle(make(), CE, (x, y))
    theta = _theta(oracle)
    masks = _masks(oracle, 40, (2, 3, 4))
    want = [_uncached(TorchOracle(make(), CE, (x, y)), theta, m) for m in masks]
    assert all(np.ptp(w) > 0 for w in want)
    for m, w in zip(masks + masks, want + want):
        assert np.array_equal(oracle.coordinate_losses(theta, m, 1e-4), w)
    assert len(oracle._core.index_plans[3]) > 0  # kept, and read on the second pass


def test_a_coordinate_array_written_in_place_since_is_not_read():
    """The plan keeps its own copy of the coordinates: an array written in place after the call that
    made the plan (a buffer of coordinates reused for the next mask) does not change what a later
    call with the first coordinates reads (``torch.as_tensor`` would have shared the buffer: the
    steps then came from the second mask's parameters, a change below the losses' rounding here,
    so the kept indices are compared with the coordinates they were made for)."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    theta = _theta(oracle)
    first, second = _masks(oracle, 40, (8, 9))
    want = _uncached(TorchOracle(_net(), CE, (x, y)), theta, first)
    buf = first.copy()
    assert np.array_equal(oracle.coordinate_losses(theta, buf, 1e-4), want)
    buf[:] = second  # the caller's buffer, reused
    kept = {k: v for k, v in oracle._core.index_plans[3].items() if k[0] == "coords"}
    assert len(kept) == 1
    for (_, dtype, data), (c_t, _) in kept.items():
        assert np.array_equal(c_t.numpy(), np.frombuffer(data, dtype)) and np.array_equal(c_t.numpy(), first)
    assert np.array_equal(oracle.coordinate_losses(theta, first.copy(), 1e-4), want)


def test_the_plans_follow_the_mask_through_estimate_gradient():
    """A training loop's shape: a bound copy a step, the mask redrawn on some steps; the gradients
    equal those of an oracle that keeps no plan (emptied before every estimate)."""
    x, y = _batch(24)
    oracle, plain = TorchOracle(_net(), CE), TorchOracle(_net(), CE)
    theta = _theta(oracle)
    masks = _masks(oracle, 30, (5, 6))
    for step in range(6):
        rows = slice(12 * (step % 2), 12 * (step % 2) + 12)
        mask = masks[step // 3]
        got = zo.estimate_gradient(oracle.bind((x[rows], y[rows])), theta, zo.CGE(mu=1e-4), coordinates=mask)
        plain._core.__dict__.pop("index_plans", None)
        want = zo.estimate_gradient(plain.bind((x[rows], y[rows])), theta, zo.CGE(mu=1e-4), coordinates=mask)
        assert np.array_equal(got.grad, want.grad) and got.loss == want.loss
        theta = theta - 0.1 * got.grad


def test_a_batch_of_another_shape_cuts_other_chunks():
    """Under a small memory budget a block's coordinates run in chunks whose size follows the batch:
    rebound to a batch of another size, the same mask makes other chunks, each with its own plan
    (a chunk's plan looked up by its block and place alone would be another chunk's)."""
    budget = 200 * 2**10
    big, small = _batch(24), _batch(5, seed=6)
    oracle = TorchOracle(_net(), CE, budget_bytes=budget)
    theta = _theta(oracle)
    coords = _masks(oracle, 60, (7,))[0]
    sizes = []
    for x, y in (big, small, big):
        bound = oracle.bind((x, y))
        bound(theta)
        sizes.append(bound._chunk(0, bound.prefix(theta, 0)))
        want = _uncached(TorchOracle(_net(), CE, (x, y), budget_bytes=budget), theta, coords)
        assert np.array_equal(bound.coordinate_losses(theta, coords, 1e-4), want)
    first = int(np.sum(coords < oracle.blocks[0].stop))
    assert sizes[0] < sizes[1] and sizes[0] < first  # several chunks in the first block, other ones on the second batch


def test_another_model_or_split_keeps_plans_of_its_own():
    """Two oracles on models of other layer widths, and two splits of one model, queried in turn with
    the same coordinates: each keeps its own plans (plans kept by the coordinates alone would give one
    the other's channels), and each answers as with no plan kept."""
    x, y = _batch()
    a, b = TorchOracle(_net(0, width=6), CE, (x, y)), TorchOracle(_net(1, width=3), CE, (x, y))
    model = _net(2)
    c, d = TorchOracle(model, CE, (x, y)), TorchOracle(model, CE, (x, y), blocks=[model[:3], model[3:]])
    assert len(c.blocks) != len(d.blocks)
    for one, other, make in ((a, b, lambda: TorchOracle(_net(1, width=3), CE, (x, y))),
                             (c, d, _two_blocks(model, (x, y)))):
        coords = np.arange(0, min(one.size, other.size), 5)
        theta_one, theta_other = _theta(one), _theta(other)
        one.coordinate_losses(theta_one, coords, 1e-4)
        got = other.coordinate_losses(theta_other, coords, 1e-4)
        assert np.array_equal(got, _uncached(make(), theta_other, coords))


def _two_blocks(model, batch):
    """An oracle of its own on a copy of ``model`` split in two blocks."""
    def make():
        m = copy.deepcopy(model)
        return TorchOracle(m, CE, batch, blocks=[m[:3], m[3:]])
    return make


def test_a_changed_split_or_device_makes_the_plans_again():
    """The plans are made again when the split or step chain they index is replaced, or the device
    changes (a fresh table then; the same one while they stay), and answer as with no plan kept."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    theta = _theta(oracle)
    coords = np.arange(0, oracle.size, 7)
    want = _uncached(TorchOracle(_net(), CE, (x, y)), theta, coords)
    core = oracle._core
    assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
    held = core.index_plans
    assert held[3] and held[4] >= 2 * len(coords)  # the coordinates' plan, the chunks' (and the first check's)
    assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
    assert core.index_plans is held
    assert _torch_walk.kept_plan(core, torch.device("meta"), ("other",), 1, lambda: "made") == "made"
    assert core.index_plans is not held and list(core.index_plans[3]) == [("other",)]  # another device
    blocks, chain = core.blocks, core.chain
    try:
        for change in ("blocks", "chain"):
            assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
            held = core.index_plans
            if change == "blocks":
                core.blocks = list(blocks)  # a split made again
            else:
                core.chain = copy.copy(chain)  # a step chain made again
            assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
            assert core.index_plans is not held and core.index_plans[4] == 2 * len(coords)
    finally:
        core.blocks, core.chain = blocks, chain


def test_fresh_masks_every_step_keep_the_plans_bounded(monkeypatch):
    """A fresh mask every step (``deepzero-kas``'s recipe) makes new plans every step: they are
    emptied once they pass a number of plans or of coordinates, and the losses stay as uncached."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    theta = _theta(oracle)
    for limit, most in (("_PLAN_SETS", 2), ("_PLANS", 6), ("_PLAN_COORDS", 150)):
        with monkeypatch.context() as m:
            m.setattr(_torch_walk, limit, most)
            for mask in _masks(oracle, 30, range(10, 16)):
                want = _uncached(TorchOracle(_net(), CE, (x, y)), theta, mask)
                assert np.array_equal(oracle.coordinate_losses(theta, mask, 1e-4), want)
                held = oracle._core.index_plans
                assert (held[5], len(held[3]), held[4])[("_PLAN_SETS", "_PLANS", "_PLAN_COORDS").index(limit)] <= most
                assert held[4] == sum(len(np.frombuffer(k[-1], k[-2])) for k in held[3])
                assert held[5] == sum(k[0] == "coords" for k in held[3])


def test_a_retired_split_and_a_pickled_copy_answer_as_uncached():
    """A hook registered since the split's check (a model change the oracle watches) retires the split:
    full forwards answer, as with no plan kept. A pickled copy leaves the plans behind (index tensors
    of this process's device) and makes its own."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    theta = _theta(oracle)
    coords = np.arange(1, oracle.size, 6)
    oracle.coordinate_losses(theta, coords, 1e-4)
    copy_ = pickle.loads(pickle.dumps(oracle))
    assert "index_plans" not in copy_._core.__dict__
    assert np.array_equal(copy_.coordinate_losses(theta, coords, 1e-4), oracle.coordinate_losses(theta, coords, 1e-4))
    oracle.model[3].register_forward_hook(lambda m, i, o: o * 1.5)
    with pytest.warns(RuntimeWarning):
        got = oracle.coordinate_losses(theta, coords, 1e-4)
    plain = TorchOracle(_net(), CE, (x, y))
    plain.model[3].register_forward_hook(lambda m, i, o: o * 1.5)
    with pytest.warns(RuntimeWarning):
        want = plain.coordinate_losses(theta, coords, 1e-4)
    assert np.array_equal(got, want)
