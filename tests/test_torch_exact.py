"""TorchOracle is exact or refuses: models written the torchvision / timm way (in-place
activations, residual adds in forward(), attention dropout, BN+activation subclasses,
shared modules, tied weights) give the textbook perturb / forward / restore gradient."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import zoracle as zo  # noqa: E402
import zoracle.testing  # noqa: E402,F401
from zoracle.adapters import torch_models as tm  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from zoracle.testing import check_oracle  # noqa: E402

CE_ROWS = nn.CrossEntropyLoss(reduction="none")
MU = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dropout_off(model):
    """Dropout off in a train-mode model, the way a user would do it by hand."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            saved.append((m, "p", m.p))
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            saved.append((m, "dropout", m.dropout))
            m.dropout = 0.0
    return saved


def _restore(saved):
    for m, attr, v in saved:
        setattr(m, attr, v)


def model_loss(model, x, y, loss_fn):
    """The model's own loss with dropout off (a plain forward, nothing patched)."""
    saved = _dropout_off(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            out = model(torch.as_tensor(x))
            v = loss_fn(out, torch.as_tensor(y))
            return float(v.mean())
    finally:
        model.load_state_dict(state)
        _restore(saved)


def textbook(model, x, y, loss_fn, theta, coords, mu):
    """Central differences by the textbook loop: perturb in place, full forward, restore."""
    params = [p for p in model.parameters() if p.requires_grad]
    starts = np.cumsum([0] + [p.numel() for p in params])
    with torch.no_grad():
        flat = torch.as_tensor(theta)
        for p, a, b in zip(params, starts[:-1], starts[1:]):
            p.copy_(flat[a:b].view_as(p))
    g = np.empty(len(coords))
    for r, i in enumerate(coords):
        t = int(np.searchsorted(starts, i, side="right") - 1)
        view = params[t].data.view(-1)
        j = int(i - starts[t])
        old = view[j].clone()
        vals = []
        for s in (mu, -mu):
            view[j] = old + s
            vals.append(model_loss(model, x, y, loss_fn))
            view[j] = old
        hp = float((old + mu) - old)
        hm = float((old - mu) - old)
        g[r] = (vals[0] - vals[1]) / (hp - hm)
    return g


def spread_coords(model, per_tensor=3, seed=0):
    """A few coordinates in every trainable parameter tensor (first, last, random)."""
    rng = np.random.default_rng(seed)
    out, off = [], 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        pick = {0, n - 1} | set(rng.integers(0, n, max(0, per_tensor - 2)).tolist())
        out += [off + j for j in sorted(pick)]
        off += n
    return np.array(sorted(set(out)))


def flat_order_theta(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).numpy().copy()


def check_exact(model, x, y, loss_fn, *, expect_warning=None, blocks=None):
    """CGE of the oracle on spread coordinates equals the textbook loop; loss equals the model's."""
    coords = spread_coords(model)
    theta_model = flat_order_theta(model)
    want = textbook(model, x, y, loss_fn, theta_model, coords, MU)
    kw = {} if blocks is None else {"blocks": blocks}
    if expect_warning:
        with pytest.warns(RuntimeWarning, match=expect_warning):
            oracle = TorchOracle(model, loss_fn, (x, y), update_stats=False, **kw)
            theta = oracle.initial_params()
            est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"),
                                       coordinates=_to_oracle(oracle, model, coords))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            oracle = TorchOracle(model, loss_fn, (x, y), update_stats=False, **kw)
            theta = oracle.initial_params()
            est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"),
                                       coordinates=_to_oracle(oracle, model, coords))
    got = est.grad[_to_oracle(oracle, model, coords)]
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert err < 1e-7, (err, got[:5], want[:5])
    assert abs(oracle(theta) - model_loss(model, x, y, loss_fn)) <= 1e-12 * max(1.0, abs(oracle(theta)))
    again = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"),
                                 coordinates=_to_oracle(oracle, model, coords))
    assert np.array_equal(est.grad, again.grad)
    return oracle


def _to_oracle(oracle, model, coords):
    """Map flat indices in ``model.parameters()`` order to the oracle's flat order."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    starts = np.cumsum([0] + [p.numel() for p in params])
    where = {i.name: i.slice.start for i in oracle.param_info}
    out = []
    for i in coords:
        t = int(np.searchsorted(starts, i, side="right") - 1)
        out.append(where[names[id(params[t])]] + int(i - starts[t]))
    return np.array(out)


def zoo(name, n=6, seed=0):
    torch.manual_seed(seed)
    model = tm.ZOO[name].build().double().train()
    x, y = tm.zoo_batch(name, n, seed=seed + 1)
    return model, x, y


def test_issue_repro_inplace_relu_after_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    oracle = check_exact(model, x, y, CE_ROWS)
    assert len(oracle.blocks) == 2


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.Hardtanh,
                                 nn.Mish])
def test_inplace_activations_after_conv_and_bn(act):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), act(inplace=True), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                          act(inplace=True), nn.Flatten(), nn.Linear(16, 3)).double().train()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 3, 5)
    check_exact(model, x, y, CE_ROWS)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=SLOW), pytest.param("mobilenet_v3_small", marks=SLOW),
                                  "conv1d_groupnorm", "text", "bn_act", "shared_tied", "shared_sequential", "vit"])
def test_zoo_models_equal_the_textbook_loop(name):
    model, x, y = zoo(name)
    check_exact(model, x, y, CE_ROWS)


def test_torchvision_style_blocks_equal_the_textbook_loop():
    """Fast version of the ResNet-18 / MobileNetV3 cases: one residual block each, as written there."""
    torch.manual_seed(7)
    model = nn.Sequential(tm.ConvBNAct(3, 8, 3, 2, act=nn.Hardswish), tm.InvertedResidual(8, 3, 16, 8, True, nn.ReLU, 1),
                          tm.TVBasicBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).double()
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((5, 3, 8, 8)), rng.integers(0, 4, 5)
    oracle = check_exact(model, x, y, CE_ROWS)
    assert "1.block.2.fc1" in oracle.block_names and "2.conv2" in oracle.block_names  # SE block, residual block


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=SLOW), "vit", "text", "bn_act"])
def test_mean_reduced_loss_fn(name):
    model, x, y = zoo(name, seed=2)
    check_exact(model, x, y, nn.CrossEntropyLoss())


def test_mean_reduced_mse():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    check_exact(model, x, y, nn.MSELoss())


def test_functional_attention_dropout_is_identity():
    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
            h = F.dropout(h, 0.3, training=self.training)
            return self.head(h.mean(1))

    torch.manual_seed(4)
    model = SDPA().double().train()
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 3, 4)), rng.integers(0, 3, 5)
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    assert oracle(theta) == oracle(theta)
    with torch.no_grad():
        out = model.head(F.scaled_dot_product_attention(*model.qkv(torch.as_tensor(x)).chunk(3, -1)).mean(1))
    assert abs(oracle(theta) - float(CE_ROWS(out, torch.as_tensor(y)).mean())) < 1e-12
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"))
    assert np.array_equal(est.grad, zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central")).grad)


def test_check_oracle_compares_against_the_unpatched_model():
    model, x, y = zoo("bn_act")
    oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    assert oracle.reference_loss(theta) == pytest.approx(model_loss(model, x, y, CE_ROWS), rel=1e-14)
    report = check_oracle(oracle, theta)
    assert report["reference"] < 1e-12
    # an oracle whose every path agrees with itself but not with the plain model is caught
    twin = BNActLike()
    twin.load_state_dict(model.state_dict(), strict=False)
    wrong = TorchOracle(twin.double().train(), CE_ROWS, (x, y), update_stats=False)
    wrong.reference_loss = oracle.reference_loss
    with pytest.raises(zo.testing.OracleCheckError, match="reference"):
        check_oracle(wrong, theta)


class BNActLike(tm.BNActNet):
    """BNActNet with stock BatchNorm2d (the activations of BatchNormAct2d lost): a different function."""

    def __init__(self):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(16)


class _BatchCentered(nn.Module):
    """Subtracts the minibatch mean: mixes samples in a way the oracle cannot batch."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.fc2(h - h.mean(0, keepdim=True))


class _MutatingLinear(nn.Linear):
    """A Linear subclass whose own forward scales its input in place (a leaf run as written)."""

    def forward(self, x):
        x.mul_(0.5)
        return super().forward(x)


def test_self_check_refuses_a_split_that_mixes_perturbations():
    torch.manual_seed(5)
    model = _BatchCentered().double()
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    oracle = check_exact(model, x, y, CE_ROWS, expect_warning=r"step .* mixes samples.*full forward")
    assert oracle.blocks == []


def test_self_check_refuses_a_leaf_that_writes_into_its_input():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), _MutatingLinear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    check_exact(model, x, y, CE_ROWS, expect_warning="full forward")


def test_torchvision_resnet_blocks_list_its_layers():
    model, x, y = zoo("resnet18", n=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
    names = oracle.block_names
    assert len(names) == 41  # 20 convolutions, 20 BatchNorms, fc
    assert names[:2] == ["conv1", "bn1"] and names[-1] == "fc"
    assert "layer2.0.downsample.0" in names and "layer4.1.bn2" in names
    assert oracle.param_info[0].name == "conv1.weight"


@pytest.mark.parametrize("name", ["bn_act", "text", "shared_tied", "shared_sequential"])
@pytest.mark.parametrize("loss_fn", [CE_ROWS, nn.CrossEntropyLoss()], ids=["rows", "mean"])
def test_full_forward_fallback_equals_the_textbook_loop(name, loss_fn):
    model, x, y = zoo(name, n=5, seed=3)
    oracle = check_exact(model, x, y, loss_fn, blocks="none")
    assert oracle.blocks == []
    # the vectorized forwards leave the module its own parameters (a Linear listed twice included)
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_full_forwards_vmap_a_downsample_weight_before_an_in_place_residual_add():
    """torchvision's ``out += identity``, with only the downsample's weight perturbed, adds a
    batched tensor into an unbatched one: vmap refused, and every full forward of the oracle's
    life ran one at a time, with a warning. The input is batched too then (a view)."""
    model, x, y = zoo("resnet18", n=4, seed=1)
    oracle = TorchOracle(model, CE_ROWS, (x, y), blocks="none")
    theta = oracle.initial_params()
    at = next(i.slice for i in oracle.param_info if i.name == "layer2.0.downsample.0.weight")
    coords = np.r_[0:6, at.start:at.start + 12]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = oracle.coordinate_losses(theta, coords, 1e-3)
    assert oracle._core.vmap_ok
    want = [oracle.reference_loss(theta + 1e-3 * (np.arange(theta.size) == i)) for i in coords]
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", sorted(tm.ZOO))
def test_batch_equals_the_plain_model_on_every_zoo_model(name):
    """``batch`` (vmapped full forwards) at points that move every weight equals the unpatched
    model's loss at each: tied weights included, where a perturbed shared weight must reach every
    module that uses it (``functional_call(..., tie_weights=False)`` reached only the first)."""
    model, x, y = zoo(name, n=4, seed=2)
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    rows = theta + 0.05 * np.random.default_rng(0).standard_normal((3, theta.size))
    got = oracle.batch(rows)
    want = [oracle.reference_loss(r) for r in rows]
    assert np.allclose(got, want, rtol=1e-10, atol=1e-12), (got, want)
    # the model keeps its own parameters (no batched tensor left behind in a module used twice)
    assert all(type(p) is nn.Parameter for p in model.parameters()) and np.array_equal(oracle.batch(rows), got)
    if name == "shared_tied":  # the tied weight alone: fc2's and fc_tied's both move
        at = next(i.slice.start for i in oracle.param_info if i.name == "fc2.weight")
        moved = theta.copy()
        moved[at] += 0.5
        assert oracle.batch(moved[None])[0] == pytest.approx(oracle.reference_loss(moved), rel=1e-12)
        assert oracle.batch(moved[None])[0] != pytest.approx(oracle(theta), rel=1e-6)


class _SqueezeHead(nn.Module):
    """A head that squeezes its features (``fc(pool(x).squeeze())``, a common CNN idiom): right for
    any batch of two or more samples, and a batch of one loses its batch dimension."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act(self.fc1(x)).unsqueeze(-1).squeeze())


def test_a_perturbation_that_changes_one_sample_runs_as_a_batch_of_two():
    """The sparse suffix runs only the samples a perturbation changed; when that is one sample, a
    model that squeezes its features would see a batch of one and return a vector for it: the
    suffix runs it with a copy of itself, so the losses stay the plain model's."""
    torch.manual_seed(0)
    model = _SqueezeHead().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    x[[0, 1, 3], 0] = 0.0  # only sample 2 sees input feature 0: fc1.weight[0, 0] changes one sample
    y = torch.randint(0, 3, (4,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    assert oracle.block_names == ["fc1", "fc"]
    coords = [0, 1, 5, 13, 16]  # weight [0, 0] (one sample changes), others (every sample), fc1's bias, fc
    want = []
    for i in coords:
        moved = theta.copy()
        moved[i] += 0.5
        want.append(oracle.reference_loss(moved))
    assert np.allclose(oracle.coordinate_losses(theta, coords, 0.5), want, rtol=1e-12, atol=0)
    assert np.allclose(oracle.suffix(oracle.prefix(theta, 0), theta, 0, [0], 0.5), want[:1], rtol=1e-12, atol=0)


def test_captured_oracle_pickles_for_worker_processes():
    import pickle

    model, x, y = zoo("shared_tied", n=4)
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    twin = pickle.loads(pickle.dumps(oracle))
    coords = np.arange(0, theta.size, 7)
    assert twin.block_names == oracle.block_names
    assert np.array_equal(twin.coordinate_losses(theta, coords, 1e-3), oracle.coordinate_losses(theta, coords, 1e-3))


class _AliasedHead(nn.Module):
    """A head "tied" to the embedding by wrapping its weight in a second Parameter: two Parameters,
    one memory (``flat``: the two carved from one buffer without overlap, which is no tie)."""

    def __init__(self, flat=False):
        super().__init__()
        self.emb, self.mix, self.head = nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11, bias=False)
        if flat:
            buf = torch.randn(2 * 66)
            self.emb.weight, self.head.weight = nn.Parameter(buf[:66].view(11, 6)), nn.Parameter(buf[66:].view(11, 6))
        else:
            self.head.weight = nn.Parameter(self.emb.weight)

    def forward(self, x):
        h = self.emb(x)
        return self.head(torch.tanh(self.mix(h)) + h).mean(1)


def test_two_parameters_sharing_memory_are_refused():
    """``head.weight = nn.Parameter(emb.weight)`` (or weight_norm registered on a tied head) makes two
    Parameters over one memory: both went into the flat vector, a load wrote the head's copy over the
    embedding's, and the estimates perturbed each by name: the embedding's entries got CGE partials of
    -0.33 where the oracle's own loss does not move with them at all (a plain call at
    ``theta + mu * e_i``: 0), with no warning. Refused, naming both; a true tie and parameters carved
    from one buffer without overlap are kept."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    x, y = torch.randint(0, 11, (8, 5)), torch.randint(0, 11, (8,))
    with pytest.raises(zo.ArgumentError, match="'emb.weight' and 'head.weight' are two Parameters sharing memory"):
        TorchOracle(_AliasedHead(), CE_ROWS, (x, y))
    tied = _AliasedHead()
    tied.head.weight = tied.emb.weight  # the tie as one Parameter
    weight_norm(tied.head)  # its direction, original1, is a new Parameter over the embedding's memory
    with pytest.raises(zo.ArgumentError, match="head.parametrizations.weight.original1.* sharing memory"):
        TorchOracle(tied, CE_ROWS, (x, y))
    tied = _AliasedHead()
    tied.head.weight = tied.emb.weight
    oracle = TorchOracle(tied, CE_ROWS, (x, y))
    assert oracle.parameter_names == ["emb.weight", "mix.weight", "mix.bias"]
    oracle = TorchOracle(_AliasedHead(flat=True), CE_ROWS, (x, y))
    theta = oracle.initial_params()
    assert theta.size == 2 * 66 + 42
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6))
    own = []
    for c in (0, 70):  # an embedding entry and a head entry: the oracle's own plain calls
        t = theta.copy()
        t[c] += 1e-6
        own.append((oracle(t) - oracle(theta)) / ((theta[c] + theta.dtype.type(1e-6)) - theta[c]))  # float32 on NumPy 1.x too
    np.testing.assert_allclose(est.grad[[0, 70]], own, rtol=1e-6, atol=1e-9)


class _TwoBranch(nn.Module):
    """Two parallel branches joined by a concatenation: a perturbation in one branch leaves
    the other's activations unchanged."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(4, 6), nn.Linear(6, 5)
        self.b1, self.b2 = nn.Linear(4, 6), nn.Linear(6, 5)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        a = self.a2(self.act(self.a1(x)))
        b = self.b2(self.act(self.b1(x)))
        return self.head(torch.cat([a, b], dim=1))


def test_parameters_over_disjoint_columns_of_one_matrix_are_kept():
    """Three Parameters cut from one fused (4, 6) matrix by columns (``nn.Parameter(w[:, 0:2])``, ...)
    share a storage and their spans interleave, but no element: they were refused as "two Parameters
    sharing memory". Kept, with CGE partials equal to autograd's in float64."""
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            w = torch.randn(4, 6, dtype=torch.float64)
            self.a, self.b, self.c = (nn.Parameter(w[:, i:i + 2]) for i in (0, 2, 4))

        def forward(self, x):
            return torch.cat([x @ self.a, x @ self.b, x @ self.c], dim=1)

    torch.manual_seed(0)
    model = Fused()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 6, (8,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    g = zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=1e-6, scheme="central")).grad
    CE_ROWS(model(x), y).mean().backward()
    ref = torch.cat([model.a.grad.flatten(), model.b.grad.flatten(), model.c.grad.flatten()]).numpy()
    np.testing.assert_allclose(g, ref, atol=1e-8)
    model.b = nn.Parameter(model.a[:, 1:])  # one column shared with a: still refused
    with pytest.raises(zo.ArgumentError, match="'a' and 'b' are two Parameters sharing memory"):
        TorchOracle(model, CE_ROWS, (x, y))



def test_suffix_runs_only_the_steps_downstream_of_the_block():
    torch.manual_seed(8)
    model = _TwoBranch().double()
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    oracle = check_exact(model, x, y, CE_ROWS)
    assert oracle.block_names == ["a1", "a2", "b1", "b2", "head"]
    calls = []
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n in ("b1", "b2", "a2")]
    try:
        theta = oracle.initial_params()
        feats = oracle.prefix(theta, 0)
        calls.clear()
        oracle.suffix(feats, theta, 0, np.arange(oracle.blocks[0].start, oracle.blocks[0].stop), 1e-3)
    finally:
        for h in hooks:
            h.remove()
    assert "b1" not in calls and "b2" not in calls  # the other branch comes from the cache


class _TokensNorm(nn.Module):
    """Embedding, a LayerNorm over two trailing dimensions, GroupNorm, head: closed forms for each."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4, padding_idx=0)
        self.ln = nn.LayerNorm((5, 4))
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(20, 3)

    def forward(self, tokens):
        h = self.ln(self.emb(tokens))                     # (N, 5, 4)
        h = self.gn(h.transpose(1, 2)).transpose(1, 2)    # channels = embedding dims
        return self.head(torch.tanh(h).flatten(1))


def test_closed_forms_for_embedding_layernorm_groupnorm():
    torch.manual_seed(9)
    model = _TokensNorm().double()
    rng = np.random.default_rng(9)
    x, y = rng.integers(0, 7, (6, 5)), rng.integers(0, 3, 6)
    oracle = check_exact(model, x, y, CE_ROWS)
    kinds = dict(zip(oracle.block_names, oracle._core.kinds))
    assert kinds == {"emb": "emb", "ln": "ln", "gn": "bn", "head": "linear"}


@pytest.mark.parametrize("train,unfold", [(True, True), (False, True), (True, False)])
def test_conv1d_closed_forms_are_exact(train, unfold, monkeypatch):
    # Conv1d runs the Conv2d closed forms as a height-1 conv: strides, dilation, groups,
    # reflect / "same" padding, BatchNorm1d, 1-D pools, a conv absorbing the next one's
    # one-channel delta, and Flatten -> Linear; eval mode runs only the changed samples
    if not unfold:  # large inputs gather shifted channels from the padded input instead of patches
        from zoracle.adapters import _torch_chain

        monkeypatch.setattr(_torch_chain, "_UNFOLD_BYTES", 0)
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=2, padding_mode="reflect"), nn.ReLU(inplace=True),
        nn.Conv1d(4, 4, 3, padding=2, dilation=2, groups=2), nn.BatchNorm1d(4), nn.GELU(),
        nn.Conv1d(4, 6, 3, padding="same", bias=False), nn.AvgPool1d(2), nn.Sigmoid(),
        nn.Conv1d(6, 5, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(5, 3)).double().train(train)
    if not train:
        model[3].running_mean.uniform_(-0.5, 0.5)
        model[3].running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((5, 2, 16)), rng.integers(0, 3, 5)
    oracle = check_exact(model, x, y, CE_ROWS)
    assert oracle._core.kinds == ["conv1d", "conv1d", "bn", "conv1d", "conv1d", "linear"]
    theta = oracle.initial_params()
    walks = [oracle.prefix(theta, b).walk for b in range(len(oracle.blocks))]
    # the grouped conv cannot absorb a one-channel delta: block 0 materializes it
    assert [w[1] for w in walks[:5]] == ["", "layer", "layer", "layer", "flatten"]


@pytest.mark.parametrize("mode", ["circular", "replicate"])
def test_conv1d_padding_modes_in_the_absorbing_conv_are_exact(mode):
    # the one-channel delta of conv 0 is absorbed by a strided, dilated conv that pads by
    # wrapping / repeating: the padding must apply to the delta as it does to the input
    torch.manual_seed(12)
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1, padding_mode=mode), nn.Tanh(),
        nn.Conv1d(4, 5, 5, stride=2, dilation=2, padding=4, padding_mode=mode), nn.AdaptiveAvgPool1d(3),
        nn.Flatten(), nn.Linear(15, 3)).double()
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((4, 3, 20)), rng.integers(0, 3, 4)
    oracle = check_exact(model, x, y, CE_ROWS)
    theta = oracle.initial_params()
    assert [oracle.prefix(theta, b).walk[1] for b in range(2)] == ["layer", "flatten"]


def _textbook_conv2d(x, w, b, stride, padding, dilation, groups):
    """Conv2d as its definition: every output position sums its taps over the zero-padded input."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x, w = x.numpy(), w.numpy()
    out = np.zeros((N, O, Ho, Wo))
    for o in range(O):
        g = o // (O // groups)
        for i, j, c, p, q in np.ndindex(Ho, Wo, Cg, kh, kw):
            r, s = i * sh + p * dh - ph, j * sw + q * dw - pw
            if 0 <= r < H and 0 <= s < W:
                out[:, o, i, j] += x[:, g * Cg + c, r, s] * w[o, c, p, q]
        if b is not None:
            out[:, o] += b[o].item()
    return torch.from_numpy(out)


@st.composite
def _small_map_convs(draw):
    """A Conv2d and an input whose map is at most a little larger than the kernel's reach."""
    c = draw(st.sampled_from([1, 2, 3, 4]))
    groups = draw(st.sampled_from([1, c] + ([2] if c % 2 == 0 else [])))
    out = groups * draw(st.sampled_from([1, 2])) if groups > 1 and draw(st.booleans()) else (
        c if groups == c else groups * draw(st.integers(1, 3)))
    k = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3, 5])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    hw = (draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([1, 2, 3])))
    return (c, out, k, stride, pad, dil, groups, draw(st.booleans()), hw, draw(st.booleans()), draw(st.integers(0, 99)))


@settings(max_examples=60)
@given(_small_map_convs())
def test_a_conv_on_a_map_smaller_than_its_kernel_equals_f_conv2d_and_its_definition(case):
    # the suffix's Conv2d on small maps (cropped_conv): the taps that read only zero padding at every
    # output position dropped (one weight a channel for a depthwise conv left one tap); the same
    # values as torch's conv and the textbook sum, or refused (None) where nothing is dropped
    from zoracle.adapters._torch_channels import cropped_conv

    c, out, k, stride, pad, dil, groups, bias, (h, w), nhwc, seed = case
    torch.manual_seed(seed)
    m = nn.Conv2d(c, out, k, stride, pad, dil, groups, bias=bias).double()
    m.requires_grad_(False)
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        want = F.conv2d(x, m.weight, m.bias, stride, pad, dil, groups)
    except RuntimeError:  # no output position (kernel reach past the padded map)
        assert cropped_conv(m, x) is None
        return
    got = cropped_conv(m, x)
    if got is None:
        return
    assert got.shape == want.shape
    tol = 1e-12 * max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol
    ref = _textbook_conv2d(x, m.weight, m.bias, stride, pad, dil, groups)
    assert float((got - ref).abs().max()) <= tol


def test_cropped_conv_covers_the_last_stages_and_refuses_what_is_not_a_stock_conv():
    from zoracle.adapters._torch_channels import cropped_conv

    torch.manual_seed(0)
    dw = nn.Conv2d(6, 6, 5, 1, 2, groups=6, bias=False).double()  # MobileNet's 1x1 maps: one tap, a product
    x1 = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    assert torch.equal(cropped_conv(dw, x1), x1 * dw.weight[:, 0, 2, 2].view(1, 6, 1, 1))
    for m, x in [(dw, x1), (nn.Conv2d(6, 6, 5, 2, 2, groups=6).double(), torch.randn(3, 6, 2, 2).double()),
                 (nn.Conv2d(6, 4, 3, 1, 1).double(), x1),  # strided 5x5 on 2x2, ResNet's 3x3 on 1x1
                 (nn.Conv2d(6, 6, 5, 1, 4, 2, groups=6).double(), x1),  # dilated: the middle tap, no padding left
                 (nn.Conv2d(6, 3, 3, 1, (2, 1), (2, 1)).double(), torch.randn(3, 6, 1, 2).double())]:
        got = cropped_conv(m, x)
        assert got is not None and torch.allclose(got, m(x), rtol=0, atol=1e-13)
    assert cropped_conv(dw, torch.randn(3, 6, 5, 5, dtype=torch.float64)) is None  # every tap reads the map

    class OwnForward(nn.Conv2d):  # a subclass with its own forward: its own computation runs
        def forward(self, x):
            return super().forward(x) * 2

    def same(m):
        return m

    cases = [OwnForward(6, 6, 5, 1, 2, groups=6).double(),
             nn.Conv2d(6, 6, 5, 1, 2, groups=6, padding_mode="reflect").double(),
             nn.Conv2d(6, 6, 5, 1, "same", groups=6).double()]
    hooked = nn.Conv2d(6, 6, 5, 1, 2, groups=6).double()
    hooked.register_forward_hook(lambda mod, inp, out: out + 1)
    patched = nn.Conv2d(6, 6, 5, 1, 2, groups=6).double()
    patched.forward = lambda x: x
    inf = nn.Conv2d(6, 6, 5, 1, 2, groups=6).double()
    with torch.no_grad():
        inf.weight[0, 0, 0, 0] = float("inf")  # a tap on the padding: the im2col product's 0 * inf
    for m in cases + [hooked, patched, inf]:
        assert cropped_conv(m, x1) is None, m


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 2), (3, 3)])
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_train_mode_batchnorm_per_perturbation_equals_a_batchnorm_per_group(hw, nhwc, affine, monkeypatch):
    # the suffix's train-mode BatchNorm: each of g row groups (one perturbation's batch) with its own
    # statistics; on maps of up to 4 positions one kernel over the groups side by side, on larger ones
    # a kernel per group: both equal F.batch_norm on each group and the definition
    from zoracle.adapters import _torch_chain
    from zoracle.adapters._torch_chain import _grouped_bn

    side = []
    real = _torch_chain._regrouped_bn
    monkeypatch.setattr(_torch_chain, "_regrouped_bn", lambda *a: side.append(1) or real(*a))
    torch.manual_seed(3)
    g, r, c = 5, 4, 3
    x = torch.randn(g * r, c, *hw, dtype=torch.float64) * 2 + 1
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = (torch.randn(c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)) if affine else (None, None)
    got = _grouped_bn(x, g, w, b, 1e-5)
    assert bool(side) == (hw[0] * hw[1] <= 4)
    assert got.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    want = torch.cat([F.batch_norm(part, None, None, w, b, True, 0.0, 1e-5) for part in x.chunk(g)])
    assert torch.allclose(got, want, rtol=0, atol=1e-13)
    parts = x.view(g, r, c, -1)
    mean = parts.mean((1, 3), keepdim=True)
    var = ((parts - mean) ** 2).mean((1, 3), keepdim=True)
    ref = (parts - mean) / torch.sqrt(var + 1e-5)
    if affine:
        ref = ref * w.view(1, 1, c, 1) + b.view(1, 1, c, 1)
    assert torch.allclose(got, ref.view_as(x), rtol=0, atol=1e-12)


def test_cropped_conv_reads_the_geometry_the_plain_call_reads():
    # a conv changed after construction, as users change them: `m.stride = 2` (F.conv2d takes a number
    # for a pair; the fast path unpacked it, TypeError), and a weight replaced by a larger or smaller
    # one (kernel_size and out_channels keep their old values; F.conv2d reads the weight's shape)
    from zoracle.adapters._torch_channels import cropped_conv

    torch.manual_seed(0)
    x1 = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    cases = []
    for attr, value, pad in [("stride", 2, 1), ("padding", 1, 0), ("dilation", 2, 2), ("kernel_size", 3, 1)]:
        m = nn.Conv2d(6, 6, 3, 1, pad, groups=6).double()
        setattr(m, attr, value)
        cases.append((m, x1))
    twice = nn.Conv2d(6, 6, 3, 1, 1, groups=6).double()  # a depthwise multiplier of 2 in place of 1
    twice.weight = nn.Parameter(torch.randn(12, 1, 3, 3, dtype=torch.float64))
    twice.bias = nn.Parameter(torch.randn(12, dtype=torch.float64))
    wider = nn.Conv2d(6, 4, 1, 1, 1).double()  # a 3x3 weight in a module built 1x1
    wider.weight = nn.Parameter(torch.randn(4, 6, 3, 3, dtype=torch.float64))
    cases += [(twice, x1), (wider, x1)]
    for m, x in cases:
        got = cropped_conv(m, x)
        assert got is not None, m
        assert torch.allclose(got, m(x), rtol=0, atol=1e-13), m
    narrower = nn.Conv2d(6, 6, 3, 1, 1, groups=6).double()  # a 1x1 weight under kernel_size 3: no tap to drop
    narrower.weight = nn.Parameter(torch.randn(6, 1, 1, 1, dtype=torch.float64))
    assert cropped_conv(narrower, x1) is None
    assert cropped_conv(nn.Conv2d(5, 6, 3, 1, 1).double(), x1) is None  # the plain call's error


@pytest.mark.parametrize("c", [1, 2, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 4])
def test_train_mode_batchnorm_per_perturbation_has_the_bits_of_f_batch_norm_per_group(c, dtype, threads):
    # the suffix's BatchNorm per perturbation against the plain call's kernel, bit for bit, which
    # forward differences against the plain base loss need: side by side, one channel of 2-4
    # positions came out 1-2 ulps off, and so did the groups of no more positions than threads
    from zoracle.adapters._torch_chain import _grouped_bn

    torch.manual_seed(4)
    g = 7
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for r, hw in [(3, (1, 1)), (3, (1, 2)), (3, (2, 2)), (1, (1, 4)), (2, (1, 1)), (4, (1, 1)), (2, (1, 2))]:
            for nhwc in [False, True]:
                x = torch.randn(g * r, c, *hw, dtype=dtype) * 3 + 2
                if nhwc:
                    x = x.contiguous(memory_format=torch.channels_last)
                w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
                want = torch.cat([F.batch_norm(part, None, None, w, b, True, 0.0, 1e-5) for part in x.chunk(g)])
                assert torch.equal(_grouped_bn(x, g, w, b, 1e-5), want), (r, hw, nhwc)
    finally:
        torch.set_num_threads(before)


def _mobilenet_tail():
    # MobileNetV3's last stages on 2x2 and 1x1 maps: a 5x5 depthwise conv of stride 2 (2x2 -> 1x1,
    # four live taps), then one on 1x1 (one tap), SE with its own forward, ``result += x``
    return nn.Sequential(tm.ConvBNAct(3, 8, 3, 2, act=nn.Hardswish),  # 4x4 -> 2x2
                         tm.InvertedResidual(8, 5, 16, 8, True, nn.Hardswish, 2),
                         tm.InvertedResidual(8, 5, 16, 8, True, nn.Hardswish, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _resnet_tail():
    # ResNet-18's last block on 1x1 maps: 3x3 convs of one live tap, ``out += identity``
    return nn.Sequential(tm.ConvBNAct(3, 8, 3, 4), tm.TVBasicBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


@pytest.mark.parametrize("make", [_mobilenet_tail, _resnet_tail])
def test_small_maps_in_torchvision_blocks_equal_the_textbook_loop(make, monkeypatch):
    # written as torchvision writes them (in-place activations): the suffix's convolutions drop
    # the taps on padding, and CGE equals the textbook loop
    from zoracle.adapters import _torch_layout

    calls = []
    real = _torch_layout.cropped_conv
    monkeypatch.setattr(_torch_layout, "cropped_conv", lambda m, x: calls.append(real(m, x) is not None) or real(m, x))
    torch.manual_seed(5)
    model = make().double()
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 3, 4, 4)), rng.integers(0, 4, 4)
    check_exact(model, x, y, CE_ROWS)
    assert any(calls)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.slow
def test_resnet20_walk_through_joins_and_forks_is_exact(train):
    # a perturbed conv2 / bn2 changes one channel through the declared join (relu of the
    # residual sum) and the next fork, up to the next block's conv1 (train: dense suffix;
    # eval: only the changed samples run)
    torch.manual_seed(7)
    model = tm.ResNet20(width=4).double().train(train)
    if not train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 3, 16, 16))
    y = rng.integers(0, 10, 3)
    oracle = check_exact(model, x, y, CE_ROWS)
    walks = [oracle.prefix(oracle.initial_params(), b).walk for b in range(len(oracle.blocks))]
    assert sum(w is not None and w[5][2] is not None for w in walks) >= 8  # conv2/bn2 of 8 blocks fork


def test_float32_cnn_flattening_with_view_keeps_feature_reuse():
    # float32 CPU suffixes may run channels-last; a captured ``x.view(B, -1)`` after a conv
    # must not see that layout (it would fail and retire the split)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            x = self.c2(torch.relu(self.bn(self.c1(x))))
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    model = Net().float()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
        theta = oracle.initial_params()
        coords = np.arange(0, theta.size, 37)
        got = oracle.coordinate_losses(theta, coords, 1e-2)
    assert oracle.block_names == ["c1", "bn", "c2", "fc"]
    want = []
    for c in coords:
        t = theta.copy()
        t[c] += np.float32(1e-2)
        want.append(oracle(t))
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_the_first_binds_own_loss_calls_are_one_minibatch_and_a_few_two_sample_rows():
    """The loss calls that are not queries (docs/pytorch.md): counted by the rows the loss receives."""
    rows = []

    def loss(out, target):
        rows.append(out.shape[0])
        return ((out - target) ** 2).flatten(1).mean(1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    oracle = TorchOracle(model, loss)
    x = torch.randn(64, 1, 8, 8).numpy()
    batches = zo.Minibatches((x, x.copy()), 32, seed=0)

    def run():
        rows.clear()
        r = zo.train(oracle, oracle.initial_params(), batches=batches, epochs=1, estimator=zo.CGE(mu=5e-3),
                     sparsity=0.5, optimizer=zo.adam(1e-3), rng=0, progress=False)
        return sum(rows) - 32 * r.nfev  # rows beyond the queries' minibatches

    extra = run()
    # the first minibatch once (the loss convention) and its two halves (the coupling check), then
    # the split's self-check and the first vectorized batch's check (ZO-GraSP's), on two samples
    checks = extra - 32 - 32
    assert 0 < checks <= 2 * 4 * (len(oracle.param_info) + 1) and checks % 2 == 0  # two-sample rows
    assert run() == 0  # once per oracle: a second run on it has no extra loss calls


# ---- the model's state moves under the oracle: its modes, its buffers (found by fuzzing against
# reference_loss)

def _bn_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(),
                      nn.Linear(8, 3)).double()
    with torch.no_grad():
        m[3].running_mean.normal_()
        m[3].running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return m, x, torch.tensor([0, 1, 2, 0, 1, 2])


def _against_reference(oracle, theta, coords, step):
    got = oracle.coordinate_losses(theta, coords, step)
    want = []
    for i in coords:
        moved = theta.copy()
        moved[i] += step
        want.append(oracle.reference_loss(moved))
    assert np.allclose(got, want, rtol=1e-12, atol=1e-14), (got, want)


@pytest.mark.parametrize("change", ["eval", "buffers", "one_bn_eval"])
def test_cached_activations_and_base_losses_follow_the_models_modes_and_buffers(change):
    """The activations and per-sample base losses cached at ``params`` are the model's in the
    state it had then: a switch to eval, new running statistics (``load_state_arrays``) or one
    BatchNorm frozen (``bn.eval()`` under a model in train mode, the fine-tuning idiom) makes
    them stale, and the next queries compute them again."""
    m, x, y = _bn_mlp()
    m.train(change != "buffers")
    oracle = TorchOracle(m, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    oracle(theta)
    oracle.coordinate_losses(theta, [0, 37], 0.5)  # both caches filled at theta
    if change == "eval":
        m.eval()
    elif change == "buffers":
        state = oracle.state_arrays()
        state["3.running_mean"] = np.linspace(-1, 1, 8)
        oracle.load_state_arrays(state)
    else:
        m[3].eval()
    _against_reference(oracle, theta, [0, 37, 50, 90, 110, 150], 0.5)
    assert oracle(theta) == pytest.approx(oracle.reference_loss(theta), rel=1e-12)


class _FunctionalBN(nn.Module):
    """Batch normalization written out in ``forward`` with ``training=self.training``: the captured
    graph holds the mode the model had when it was traced."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)
        self.register_buffer("rm", torch.randn(8))
        self.register_buffer("rv", torch.rand(8) + 0.5)

    def forward(self, x):
        h = F.batch_norm(self.fc1(x), self.rm, self.rv, None, None, self.training, 0.1, 1e-5)
        return self.fc2(torch.tanh(h))


def test_a_mode_the_split_was_not_checked_in_is_checked_before_the_split_serves_it():
    """Traced in eval mode and then trained: the split is checked again in the new mode, and the
    captured eval-mode branch is refused with a warning instead of answering for train mode."""
    torch.manual_seed(0)
    model = _FunctionalBN().double().eval()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, CE_ROWS, (x[:3], y[:3]), update_stats=False)
    assert oracle.blocks  # exact in the mode it was captured and checked in
    model.train()
    bound = oracle.bind((x, y))
    theta = bound.initial_params()
    with pytest.warns(RuntimeWarning, match="mode"):
        _against_reference(bound, theta, [0, 5, 44, 60], 0.5)
    assert bound.blocks == [] and oracle.blocks == []
    # back in eval mode the full forwards stay exact
    model.eval()
    _against_reference(bound, theta, [0, 5, 44, 60], 0.5)


def test_a_mode_change_the_split_survives_keeps_the_fast_path():
    """A stock model whose modules read their mode at run time passes the check in every mode."""
    m, x, y = _bn_mlp()
    m.train()
    oracle = TorchOracle(m, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in (False, True, False):
            m.train(mode)
            _against_reference(oracle, theta, [0, 37, 90, 150], 0.5)
    assert oracle.blocks


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_run_without_their_dropout_between_layers(cell):
    """``nn.LSTM(..., num_layers=2, dropout=0.5)`` drops out inside its kernel in train mode: the
    oracle and the reference both run it with that dropout off, so every query is deterministic."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(4, 6, num_layers=2, dropout=0.5, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = Net().double().train()
    x, y = torch.randn(5, 7, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a recurrent layer may not split: full forwards, said once
        oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    assert oracle(theta) == oracle(theta) == oracle.reference_loss(theta) == oracle.reference_loss(theta)
    assert model.rnn.dropout == 0.5 and model.training  # restored after every query
    _against_reference(oracle, theta, [0, 1, theta.size - 1], 0.25)
    oracle.load(theta)
    off = copy.deepcopy(model)
    off.rnn.dropout = 0.0
    with torch.no_grad():
        assert oracle(theta) == pytest.approx(float(CE_ROWS(off(x), y).mean()), rel=1e-12)


def test_suffix_of_no_coordinates_and_boolean_coordinates():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    oracle = TorchOracle(m, CE_ROWS, (torch.randn(3, 4), torch.tensor([0, 1, 2])))
    theta = oracle.initial_params()
    for empty in ([], np.array([], dtype=np.int64)):
        assert oracle.suffix(oracle.prefix(theta, 0), theta, 0, empty, 0.1).shape == (0,)
        assert oracle.coordinate_losses(theta, empty, 0.1).shape == (0,)
    mask = np.zeros(theta.size, dtype=bool)
    mask[[7, 20]] = True
    with pytest.raises(zo.ArgumentError, match=r"`coords`.*boolean.*flatnonzero"):
        oracle.coordinate_losses(theta, mask, 0.1)
    with pytest.raises(zo.ArgumentError, match=r"`coords`.*boolean.*flatnonzero"):
        oracle.suffix(oracle.prefix(theta, 0), theta, 0, mask[:20], 0.1)


class _ReadsAfterInPlace(nn.Module):
    """``out = conv(relu_(x)) + x``: the in-place ReLU overwrote ``x`` before the residual add."""

    def __init__(self):
        super().__init__()
        self.stem, self.relu = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True)
        self.conv, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(48, 4)

    def forward(self, x):
        x = self.stem(x)
        out = self.conv(self.relu(x)) + x
        return self.fc(torch.flatten(out, 1))


def test_a_forward_that_reads_what_an_in_place_activation_overwrote_is_named():
    """The oracle runs in-place activations out of place; where that changes ``model(x)`` (the
    split refused, and its full forwards too), a warning says so and names the fix, rather than
    answering for another model in silence."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 2, 4, 4, dtype=torch.float64), torch.randint(0, 4, (4,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(_ReadsAfterInPlace().double(), CE_ROWS, (x, y))
        oracle.coordinate_losses(oracle.initial_params(), [0, 1], 1e-3)
    said = [str(w.message) for w in rec if w.category is RuntimeWarning]
    # the losses differ (said when the model is checked), and the split is refused at capture,
    # naming the module (said when a perturbation first runs)
    assert len(said) == 2 and re.search("in-place activation overwrote.*inplace=False", said[0]), said
    assert re.search(r"runs module 'relu' \(ReLU, inplace=True\) on a tensor that is read again after it.*set "
                     r"inplace=False.*no feature reuse", said[1]), said
    assert oracle.blocks == []
    fixed = _ReadsAfterInPlace().double()
    fixed.relu.inplace = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(fixed, CE_ROWS, (x, y))
    assert oracle.blocks


@pytest.mark.parametrize("kind", ["instancenorm", "spectral_norm"])
def test_queries_leave_the_buffers_a_module_writes_in_train_mode_as_they_were(kind):
    """``InstanceNorm2d(track_running_stats=True)`` and spectral norm's power iteration write
    their buffers in train mode: perturbation queries (and plain calls with ``update_stats=False``)
    leave them as they found them, so a later eval-mode loss is the one before the estimate."""
    torch.manual_seed(0)
    if kind == "instancenorm":
        mid = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
        conv = nn.Conv2d(2, 3, 3, padding=1)
    else:
        mid = nn.Identity()
        conv = torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 3, 3, padding=1))
    model = nn.Sequential(conv, mid, nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).double()
    x, y = torch.randn(4, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a parametrized layer may not split: full forwards, said once
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert before
    model.eval()
    eval_before = oracle(theta)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # vmap refuses these layers: one forward a row, said once
        zo.estimate_gradient(oracle, theta, zo.CGE(mu=0.5), coordinates=np.arange(0, theta.size, 3))
        oracle.batch(theta[None] + 0.1)
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    model.eval()
    assert oracle(theta) == eval_before


def _float32_reference_gap(oracle, theta, coords, step=1e-3):
    want = []
    for i in coords:
        moved = theta.copy()
        moved[i] += step
        want.append(oracle.reference_loss(moved))
    return float(np.abs(oracle.coordinate_losses(theta, coords, step) - np.array(want)).max())


class _BranchOnMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        out = self.fc2(torch.relu(self.fc1(x)))
        if not self.training:
            out = out / 2
        return out


def _changes():
    def swap(m):
        m.act = nn.Tanh()

    def hook(m):
        m.fc1.register_forward_hook(lambda mod, i, out: out * 2)

    def pre_hook(m):
        m.fc1.register_forward_pre_hook(lambda mod, i: (i[0] * 2,))

    def frozen(m):
        with torch.no_grad():
            m.c.weight.mul_(1.5)  # as load_state_dict writes a frozen backbone

    return {"eval after capture in train": lambda m: m.eval(), "module swapped": swap, "forward hook": hook,
            "forward pre-hook": pre_hook, "frozen weight written": frozen}


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.fc1, self.act, self.fc2 = nn.Conv2d(3, 4, 3), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.c(x)).flatten(1)
        out = self.fc2(self.act(self.fc1(h)))
        return out if self.training else out / 2


@pytest.mark.parametrize("change", list(_changes()))
def test_a_model_changed_after_the_split_was_checked_is_checked_again_in_float32(change):
    """In float32 a failed check was cleared by a float64 copy captured anew, from the changed
    model (a branch on self.training after eval(): gradient 382x off); a hook registered, or a
    module swapped in, after the check was never checked (120-280x); a frozen weight written in
    place left the cached activations stale (206x). All silent."""
    torch.manual_seed(1)
    model = _Small().train()
    if change == "frozen weight written":
        model.c.weight.requires_grad_(False)
    x, y = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    coords = np.arange(theta.size)
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3), coordinates=coords)  # caches at theta
    _changes()[change](model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gap = _float32_reference_gap(oracle, theta, coords)
    assert gap < 1e-5, gap
    if change != "frozen weight written":  # the split itself is rechecked, and refused, naming the change
        assert any("since the split was checked" in str(m.message) for m in w), [str(m.message) for m in w]


def test_a_declared_sample_coupled_step_keeps_its_flag_half_models_and_predict_modes():
    """``Step(fn, rowwise=False)`` lost the flag (the sparse path ran it on a subset of rows:
    46x off); float16 was accepted and its self-check passed anything; predict() set every
    module's mode to the model's, unfreezing a BatchNorm frozen in eval mode; the plain call
    updated running statistics of a BatchNorm whose track_running_stats was switched off."""
    from zoracle.adapters.torch import Step

    class Declared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)

        def zoracle_steps(self):
            return [self.fc1, Step(fn=lambda s: s[0] - s[0].mean(0, keepdim=True), name="center", rowwise=False),
                    self.fc2]

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(h - h.mean(0, keepdim=True))

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the coupled step may be refused: either way, exact
        oracle = TorchOracle(Declared(), CE_ROWS, (x, y))
    assert [st.rowwise for st in oracle._core.steps if st.name == "center"] in ([False], [])
    theta = oracle.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _float32_reference_gap(oracle, theta, np.arange(theta.size)) < 1e-5
    for dtype in ("float16", torch.bfloat16):
        with pytest.raises(zo.ArgumentError, match="`dtype` must be float32 or float64"):
            TorchOracle(nn.Linear(3, 2), CE_ROWS, dtype=dtype)
    with pytest.raises(zo.ArgumentError, match="parameters are torch.float16"):
        TorchOracle(nn.Linear(3, 2).half(), CE_ROWS)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    model[1].eval()  # frozen for fine-tuning
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    oracle.predict(oracle.initial_params(), x.numpy())
    assert model.training and not model[1].training
    model[1].train()
    model[1].track_running_stats = False  # torch then neither reads nor writes them in train mode
    before = model[1].running_mean.clone()
    oracle(oracle.initial_params())
    assert torch.equal(model[1].running_mean, before) and int(model[1].num_batches_tracked) == 0


def test_a_pickled_copy_keeps_its_checked_split_without_checking_again():
    """The check's key names modules by id; a copy (a worker's) has other ids, translated on the way."""
    import pickle

    from zoracle.adapters._torch_exact import ensure_split

    torch.manual_seed(0)
    oracle = TorchOracle(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), CE_ROWS,
                         (torch.randn(5, 4), torch.randint(0, 3, (5,))))
    twin = pickle.loads(pickle.dumps(oracle))
    assert twin.block_names == oracle.block_names and not ensure_split(twin)
    twin.model[0].register_forward_hook(lambda mod, i, out: out * 2.0)
    with pytest.warns(RuntimeWarning, match="a forward hook was registered"):
        assert ensure_split(twin)
    assert twin.blocks == [] and oracle.blocks != []


def test_one_output_regression_rows_resume_false_and_a_parameter_unfrozen_later():
    """``MSELoss(reduction="none")`` on one output gives (N, 1) losses: refused, pointing to
    CrossEntropyLoss; ``resume=False`` failed in os.fspath; a layer unfrozen after the oracle was
    built was silently left out of training."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    oracle = TorchOracle(model, nn.MSELoss(reduction="none"), (x, y))
    theta = oracle.initial_params()
    with torch.no_grad():
        want = float(((model(x) - y) ** 2).mean())
    assert oracle(theta) == pytest.approx(want, rel=1e-6)
    assert _float32_reference_gap(oracle, theta, np.arange(theta.size)) < 1e-6
    with pytest.raises(zo.ArgumentError, match=r"got shape \(8, 2\); reduce each sample's row"):
        TorchOracle(nn.Linear(3, 2), nn.MSELoss(reduction="none"), (x, torch.randn(8, 2)))
    # (8, 1) outputs against (8,) targets broadcast to (8, 8): the advice was .mean(1), which averages
    # every (output, target) pair and trains toward the mean (a helper's MSE 0.970 against 0.489)
    with pytest.raises(zo.ArgumentError, match=r"got shape \(8, 8\); the model's \(8, 1\) outputs met \(8,\) "
                                               r"targets.*y\.reshape\(-1, 1\).*out\.squeeze\(-1\)"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own, on the broadcast
        TorchOracle(nn.Linear(3, 1), nn.MSELoss(reduction="none"), (x, y[:, 0]))
    with pytest.raises(zo.ArgumentError, match=r"the model's \(8,\) outputs met \(8, 1\) targets.*y\.reshape\(-1\)"), \
            warnings.catch_warnings():  # the mirror: a model ending in squeeze(-1), (B, 1) targets
        warnings.simplefilter("ignore", UserWarning)
        TorchOracle(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), nn.MSELoss(reduction="none"), (x, y))
    with pytest.raises(zo.ArgumentError, match=r"got shape \(8, 4, 4\); .*flatten\(1\)\.mean\(1\)"):
        TorchOracle(nn.Conv2d(3, 2, 1), nn.CrossEntropyLoss(reduction="none"),
                    (torch.randn(8, 3, 4, 4), torch.randint(0, 2, (8, 4, 4))))
    # a loss squeezing its rows gives () for a batch of one: that sample's loss
    squeezing = TorchOracle(model, lambda out, t: ((out - t) ** 2).squeeze(), (x, y))
    one = squeezing.bind((x[:1], y[:1]))
    with torch.no_grad():
        assert one(theta) == pytest.approx(float(((model(x[:1]) - y[:1]) ** 2).sum()), rel=1e-6)
    res = zo.train(oracle, theta, epochs=1, progress=False, resume=False)
    assert res.steps == 1
    model[0].requires_grad_(False)
    frozen = TorchOracle(model, nn.MSELoss(reduction="none"), (x, y))
    p = frozen.initial_params()
    assert p.size == 7
    model[0].requires_grad_(True)
    with pytest.raises(zo.ArgumentError, match="a parameter unfrozen with requires_grad_"):
        frozen(p)


def test_review_findings_float64_params_check_empty_checkpoint_derived_buffers_and_dtype_names(tmp_path):
    """check_oracle failed a correct float32 model given float64 params (float64 tolerances for float32
    rounding); train refused a checkpoint path holding an empty file (tempfile.mkstemp's); a model
    with a complex non-persistent buffer (a RoPE table) could not be checkpointed; dtype="double"
    was refused as half precision; a global forward hook (FlopCounterMode's) checked the split
    again inside the counting tool."""
    import os
    import tempfile

    from torch.utils.flop_counter import FlopCounterMode

    from zoracle.adapters._torch_exact import ensure_split

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    check_oracle(oracle, oracle.initial_params().astype(np.float64), step=1e-3)
    with FlopCounterMode(display=False):
        assert not ensure_split(oracle)
    assert TorchOracle(nn.Linear(2, 2), CE_ROWS, dtype="double").dtype == torch.float64

    class Rope(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.register_buffer("freqs", torch.polar(torch.ones(4), torch.arange(4.0)), persistent=False)

        def forward(self, h):
            return self.lin(h * self.freqs.real)

    rope = TorchOracle(Rope(), CE_ROWS)
    assert "freqs" not in rope.state_arrays()
    fd, path = tempfile.mkstemp(suffix=".npz", dir=tmp_path)
    os.close(fd)
    xs, ys = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), np.arange(8) % 3
    res = zo.train(rope, rope.initial_params(), batches=[(xs, ys)], epochs=2, checkpoint=path, progress=False)
    again = zo.train(rope, rope.initial_params(), batches=[(xs, ys)], epochs=3, checkpoint=path, resume=True,
                     progress=False)
    assert res.steps == 2 and again.steps == 3


def test_a_loss_reading_parameters_through_an_alias_is_refused():
    """A penalty on ``model.state_dict()``'s tensors (detached, sharing the weights' memory) was
    accepted: plain calls saw it move, batch() and coordinate_losses saw other values (3 paths,
    3 gradients). A forward whose output is a view of a parameter is not such a read."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    sd = model.state_dict()

    def penalized(out, t):
        return CE_ROWS(out, t) + sd["0.weight"].pow(2).sum()

    with pytest.raises(zo.ArgumentError, match="such as model.state_dict"):
        TorchOracle(model, penalized, (x, y))

    class Constant(nn.Module):  # predicts its bias whatever the input: the output is a view of it
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64))

        def forward(self, h):
            return self.bias.expand(h.shape[0], 3)

    class WithCenters(nn.Module):  # a tuple whose second item is a view of a parameter
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3).double()
            self.centers = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))

        def forward(self, h):
            return self.fc(h), self.centers.t()

    with pytest.raises(zo.ArgumentError, match="returned a tuple, not one tensor"):  # the accurate refusal
        tupled = TorchOracle(WithCenters(), lambda out, t: CE_ROWS(out[0], t) + 0 * out[1].sum(), (x, y))
        tupled(tupled.initial_params())
    oracle = TorchOracle(Constant(), CE_ROWS, (x, y))
    theta = oracle.initial_params()
    with pytest.warns(RuntimeWarning, match="does not depend on its input"):
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    probs = torch.softmax(torch.tensor(theta), 0).numpy()
    want = probs - np.bincount(y.numpy(), minlength=3) / 8
    np.testing.assert_allclose(est.grad, want, atol=1e-8)


def test_a_loss_reading_parameters_a_batch_dropped_and_an_attribute_changed_after_the_check():
    """A loss_fn adding weight decay saw the parameters unperturbed (CGE +0.05 for -0.008, silent);
    out.squeeze() on a batch of one failed with IndexError deep inside; an attribute the forward
    reads (a temperature) changed after the check left the captured constant in place (-44.9 for
    -0.27, silent)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))

    def decayed(out, t):
        return CE_ROWS(out, t) + 1e-3 * sum(p.pow(2).sum() for p in model.parameters())

    with pytest.raises(zo.ArgumentError, match="`loss_fn` reads the model's trainable parameters"):
        TorchOracle(model, decayed, (x, y))

    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, h):
            return self.fc(h).squeeze()

    with warnings.catch_warnings(), pytest.raises(zo.ArgumentError, match=r"returned \(3,\) for a batch of 1"):
        warnings.simplefilter("ignore")  # (a capture that fails on the squeezed batch may say so first)
        TorchOracle(Squeezed(), CE_ROWS, (x[:1], y[:1]))
    # a later batch of one (a last minibatch): checked there too (it blamed `loss_fn`, or failed
    # with IndexError in the loss, for what the forward's squeeze did)
    later = TorchOracle(Squeezed(), CE_ROWS, (x, y))
    with warnings.catch_warnings(), pytest.raises(zo.OracleError, match=r"returned \(3,\) for a batch of 1.*squeeze"):
        warnings.simplefilter("ignore")
        zo.estimate_gradient(later.bind((x[:1], y[:1])), later.initial_params(), zo.CGE(mu=1e-3))

    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.temp = nn.Linear(6, 8), nn.Linear(8, 3), 1.0

        def forward(self, h):
            return self.l2(torch.relu(self.l1(h))) / self.temp

    tempered = Tempered()
    oracle = TorchOracle(tempered, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    oracle.coordinate_losses(theta, [0], 1e-3)
    tempered.temp = 0.3  # annealed
    with pytest.warns(RuntimeWarning, match="a module's attribute changed"):
        gap = _float32_reference_gap(oracle, theta, np.arange(theta.size))
    assert gap < 1e-5, gap


@pytest.mark.parametrize("kind", ["contrastive", "centered", "ranking"])
def test_per_sample_losses_coupled_across_the_batch_are_evaluated_per_perturbation(kind):
    """An InfoNCE loss with in-batch negatives, a loss on batch-centred logits and a pairwise
    ranking loss, each returned per sample, were run on the k * B stacked rows of k perturbations:
    errors of 3-80 in the loss (and 4-82 through batch()), silently or after a fallback that was
    wrong too. They are found at the first bind and evaluated a perturbation group at a time."""
    import torch.nn.functional as F

    def contrastive(out, t):
        z = F.normalize(out, dim=1)
        return F.cross_entropy(z @ z.T / 0.5, torch.arange(len(out)), reduction="none")

    def centered(out, t):
        return F.cross_entropy(out - out.mean(0, keepdim=True), t, reduction="none")

    def ranking(out, t):
        s = out[:, 0]
        better = (t[:, None] > t[None, :]).to(s.dtype)
        return (F.softplus(s[None, :] - s[:, None]) * better).sum(1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    oracle = TorchOracle(model, {"contrastive": contrastive, "centered": centered, "ranking": ranking}[kind], (x, y))
    assert oracle._core.group_rows
    theta = oracle.initial_params()
    coords = np.arange(theta.size)
    _against_reference(oracle, theta, coords, 1e-3)
    P = np.repeat(theta[None], 6, 0)
    P[np.arange(6), coords[:6]] += 1e-3
    want = [oracle.reference_loss(p) for p in P]
    np.testing.assert_allclose(oracle.batch(P), want, rtol=1e-12, atol=1e-14)
    assert not TorchOracle(model, CE_ROWS, (x, y))._core.group_rows  # a per-sample loss stays one call


@pytest.mark.parametrize("kind", ["centered", "penalty"])
def test_a_coupled_per_sample_loss_first_bound_to_one_sample_is_still_found(kind):
    """The coupling check compares the halves of the first bound batch: a first bind of one
    sample (a smoke test, batch_size=1) had none, so a loss coupling the rows ran the k
    perturbations' rows in one call, there and at every later bind of a real minibatch: estimates
    off by 0.29 (of gradients up to 0.76), with a warning that blamed the captured graph. Until a
    bind of two samples or more can check, each perturbation group gets its own call; a loss that
    does not couple the rows is found then and runs a group in one call again."""

    def centered(out, t):
        return F.cross_entropy(out - out.mean(0, keepdim=True), t, reduction="none")

    def penalty(out, t):  # a per-sample loss plus a penalty on the batch's mean logit
        return F.cross_entropy(out, t, reduction="none") + (out.mean(0) ** 2).sum()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    loss = {"centered": centered, "penalty": penalty}[kind]
    oracle = TorchOracle(model, loss)
    theta = oracle.initial_params()
    coords = np.arange(theta.size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = oracle.bind((x[:1], y[:1]))  # the first bind: one sample
        _against_reference(one, theta, coords, 1e-3)
        bound = oracle.bind((x, y))
        _against_reference(bound, theta, coords, 1e-3)
    P = np.repeat(theta[None], 6, 0)
    P[np.arange(6), coords[:6]] += 1e-3
    np.testing.assert_allclose(bound.batch(P), [bound.reference_loss(p) for p in P], rtol=1e-12, atol=1e-14)
    plain = TorchOracle(model, CE_ROWS)  # not coupled: one call a group again after a bind of 8
    plain.bind((x[:1], y[:1]))
    bound = plain.bind((x, y))
    assert not bound._core.group_rows and not bound._core.scalar_loss
    _against_reference(bound, theta, coords, 1e-3)


def test_a_two_view_loss_that_cannot_run_on_half_the_batch_is_coupled():
    """A SimCLR-style loss (rows i and i + B/2 are two views of one sample) on B = 6: the coupling
    check's call on three rows raised the loss's own error (view(2, -1, C)), and the oracle could
    not be bound. A loss that fails on half the batch is coupled: one call a perturbation group."""
    import torch.nn.functional as F

    def two_view(out, t):
        z1, z2 = out.view(2, -1, out.shape[1])
        s = F.cosine_similarity(z1, z2, dim=1)
        return torch.cat([1 - s, 1 - s])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x, y = torch.randn(6, 6, dtype=torch.float64), torch.zeros(6, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match=r"loss_fn raised on half of the batch \(RuntimeError: shape"):
        oracle = TorchOracle(model, two_view, (x, y))
    assert oracle._core.group_rows
    theta = oracle.initial_params()
    _against_reference(oracle, theta, np.arange(theta.size), 1e-3)


@pytest.mark.parametrize("reduction", ["rows", "mean"])
def test_a_loss_with_weights_captured_for_the_whole_batch_runs_as_documented(reduction):
    """docs/pytorch.md: a loss that raises on half the batch ("weights captured for the whole
    batch") runs one call per perturbation group, with a warning, as a mean loss does. The
    repeatability check then called it on two samples, and its RuntimeError escaped the first
    query."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    w = torch.rand(8, dtype=torch.float64)

    def weighted(out, t):
        rows = CE_ROWS(out, t) * w  # (8,) weights: any other number of rows raises
        return rows if reduction == "rows" else rows.mean()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, weighted, (x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    if reduction == "rows":
        assert any("loss_fn raised on half of the batch" in str(c.message) for c in caught)
    oracle.load(theta)
    model.zero_grad()
    weighted(model(x), y).mean().backward()
    exact = torch.cat([p.grad.flatten() for p in model.parameters()]).numpy()
    np.testing.assert_allclose(est.grad, exact, atol=1e-8)


@pytest.mark.parametrize("name", ["vit", "resnet18", "mobilenet_v3_small"])
def test_the_zoo_keeps_its_split_under_the_sample_mixing_check(name):
    """The check that a step does not mix samples runs each step on the probe's samples and on each
    alone; timm-style attention moves the batch dimension (`permute(2, 0, 3, 1, 4)`), which a
    first version took for mixing, and the ViT lost its split."""
    model, x, y = zoo(name, n=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "There is a performance drop")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
    assert len(oracle.blocks) > 3


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_hook_style_reparametrization_falls_back_naming_the_hook_and_the_parametrization_that_splits(kind):
    """The old ``torch.nn.utils.weight_norm`` / ``spectral_norm`` recompute the weight in a forward
    pre-hook: the split failed on it, and the warning quoted torch's "INDICES element is out of DATA
    bounds". The fallback's estimate is the textbook one; the parametrization named in the warning
    keeps the split and gives the same estimate."""
    torch.manual_seed(0)

    def build(old):
        lin = nn.Linear(4, 6)
        wrap = getattr(torch.nn.utils if old else torch.nn.utils.parametrizations, kind)
        torch.manual_seed(1)
        return nn.Sequential(wrap(lin), nn.ReLU(), nn.Linear(6, 3)).double().eval()

    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        old = TorchOracle(build(True), CE_ROWS, (x, y))
        theta = old.initial_params()
        est = zo.estimate_gradient(old, theta, zo.CGE(mu=1e-6)).grad
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert f"forward pre-hook (torch.nn.utils.{kind}, deprecated)" in said, said
    assert f"torch.nn.utils.parametrizations.{kind} keeps feature reuse" in said and "INDICES" not in said
    want = np.array([(old(theta + 1e-6 * e) - old(theta)) / 1e-6 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-9)
    if kind == "weight_norm":  # parametrized spectral norm keeps its own power-iteration vector
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            new = TorchOracle(build(False), CE_ROWS, (x, y))
            assert new.blocks
            theta = new.initial_params()
            est = zo.estimate_gradient(new, theta, zo.CGE(mu=1e-6)).grad
        want = np.array([(new(theta + 1e-6 * e) - new(theta)) / 1e-6 for e in np.eye(theta.size)])
        np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-9)


def _estimate_saying(model, x, y, mu=1e-6):
    """``(oracle, theta, CGE estimate, the RuntimeWarnings' text)`` of a fresh oracle on ``model``."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=mu)).grad
    return oracle, theta, est, " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)


def test_torch_prune_falls_back_naming_the_pruning_hook():
    """``torch.nn.utils.prune`` rebuilds ``weight`` from ``weight_orig * weight_mask`` in a forward
    pre-hook: the fallback's warning quoted torch's "INDICES element is out of DATA bounds". It
    names the pruning and the fix now; the estimate is the textbook one (a masked weight's 0)."""
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    prune.l1_unstructured(model[0], "weight", 0.5)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    oracle, theta, est, said = _estimate_saying(model, x, y)
    assert "module '0' recomputes 'weight' in a forward pre-hook (torch.nn.utils.prune" in said, said
    assert "prune.remove" in said and "INDICES" not in said
    want = np.array([(oracle(theta + 1e-6 * e) - oracle(theta)) / 1e-6 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-9)


class _SequenceFirst(nn.Module):
    """A (batch, sequence, features) input transposed for a sequence-first attention layer, as
    pre-``batch_first`` code writes it."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        z = x if self.batch_first else x.transpose(0, 1)
        z, _ = self.attn(z, z, z)
        return self.head(z.mean(1 if self.batch_first else 0))


def test_a_sequence_first_layer_falls_back_naming_it_and_batch_first_keeps_the_split():
    """A forward that moves the batch to dim 1 for ``nn.MultiheadAttention(batch_first=False)``
    cannot be split by rows; the warning quoted only torch's shape error ("Expected input
    batch_size (2) to match target batch_size (4)"). It names the layer and the fix now; the
    fallback's estimate is the textbook one, and with ``batch_first=True`` the split stays."""
    x, y = torch.randn(6, 5, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    for batch_first in (False, True):
        torch.manual_seed(0)
        model = _SequenceFirst(batch_first).double().eval()
        oracle, theta, est, said = _estimate_saying(model, x, y)
        if batch_first:
            assert oracle.blocks and not said, said
        else:
            assert "'attn' take(s) the batch along dim 1 (batch_first=False)" in said, said
            assert "build them with batch_first=True" in said and not oracle.blocks
        np.testing.assert_allclose(est, _textbook(oracle, theta), rtol=1e-6, atol=1e-9)

def _textbook(oracle, theta, step=1e-6):
    base = oracle(theta)
    return np.array([(oracle(theta + step * e) - base) / step for e in np.eye(theta.size)])


def _by_name(ref, oracle, x, y):
    """The mean row loss of ``ref`` (a copy of the oracle's model) at flat parameters ``th``, each
    parameter placed by its name in ``oracle.param_info`` (the mean taken in float64)."""
    def loss(th):
        p = {i.name: torch.from_numpy(th[i.slice].reshape(i.shape)) for i in oracle.param_info}
        with torch.no_grad():
            return float(CE_ROWS(torch.func.functional_call(ref, p, (x,)), y).double().mean())
    return loss


def _float32_differences(loss, theta, mu=5e-3, rows=slice(None)):
    """Forward differences of ``loss`` over float32 steps ``mu`` along the coordinates ``rows``."""
    base = loss(theta)
    return [(loss(theta + np.float32(mu) * e) - base) / mu for e in np.eye(theta.size, dtype=np.float32)[rows]]


class _Attributes(nn.Module):
    """A forward reading a buffer-only expression, plain attributes of several kinds and an
    unregistered tensor, and writing counters and a tensor of its own."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 6), nn.Linear(6, 3)
        self.register_buffer("temp", torch.tensor(1.0))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.scale, self.scales, self.extra = np.float64(1.0), (1.0,), None
        self.mask = torch.ones(6)
        self.n, self.last = 0, None

    def forward(self, x):
        self.calls += 1
        self.n += 1
        h = torch.tanh(self.a(x)) * self.scales[0] * self.scale * self.mask
        self.last = h.detach()
        if self.extra is not None:
            h = h + self.extra
        return self.c(h) / self.temp.clamp(min=0.1)


@pytest.mark.parametrize("change", ["buffer mul_", "load_state_arrays", "numpy scalar", "tuple", "None to float",
                                    "tensor reassigned", "tensor mul_"])
def test_what_a_forward_reads_besides_parameters_is_followed_when_it_changes(change):
    """Each change used to leave the split on the old value (gradient errors of 20-4,000, no
    warning): fx computed ``temp.clamp(min=0.1)`` once and baked it in; numpy scalars, tuples,
    attributes that were None and unregistered tensors were not watched. And a forward counting
    its calls in ``self.n`` made the construction recurse into its own check (it failed with
    "this TorchOracle has no blocks")."""
    torch.manual_seed(0)
    model = _Attributes().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the split is kept, checked once, without a warning
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        assert oracle.blocks
        theta = oracle.initial_params()
        np.testing.assert_allclose(zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad, _textbook(oracle, theta),
                                   rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        {"buffer mul_": lambda: model.temp.mul_(0.5),
         "load_state_arrays": lambda: oracle.load_state_arrays({"temp": np.array(0.5), "calls": np.array(0)}),
         "numpy scalar": lambda: setattr(model, "scale", np.float64(3.0)),
         "tuple": lambda: setattr(model, "scales", (3.0,)),
         "None to float": lambda: setattr(model, "extra", 0.5),
         "tensor reassigned": lambda: setattr(model, "mask", torch.tensor([1.0, 0, 1, 0, 1, 0])),
         "tensor mul_": lambda: model.mask.mul_(torch.tensor([1.0, 0, 1, 0, 1, 0]))}[change]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a plain attribute changed: said once
        got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    np.testing.assert_allclose(got, _textbook(oracle, theta), rtol=1e-5, atol=1e-8)


def test_building_the_oracle_leaves_what_the_forward_writes_as_it_was():
    """The capture traced ``self.calls += 1``: it ran on the real buffer (the constructor counted
    a call), and with buffers traced as graph nodes it would store a Proxy there."""
    model = _Attributes()
    TorchOracle(model, CE_ROWS)
    assert torch.is_tensor(model.calls) and int(model.calls) == 0 and model.n == 0 and model.last is None


class _Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4).t())  # (4, 6), not contiguous
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(x @ self.w))


@pytest.mark.parametrize("kind", ["transposed", "channels_last"])
def test_parameters_without_a_flat_view_split_and_fall_back_exactly(kind):
    """A weight made from a transpose, or a model moved to channels-last (torch's own idiom), has
    no ``.view(-1)``: the split was refused ("view size is not compatible ...") and the fallback
    failed on one coordinate a tensor (OracleError)."""
    torch.manual_seed(0)
    if kind == "transposed":
        model, x = _Transposed().double(), torch.randn(8, 4, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).double()
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    assert not all(p.is_contiguous() for p in model.parameters())
    y = torch.randint(0, 3, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        assert oracle.blocks
        theta = oracle.initial_params()
        np.testing.assert_allclose(zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad,
                                   _textbook(oracle, theta), rtol=1e-5, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from zoracle.adapters._torch_exact import full_coordinate_losses
        one = [0, theta.size - 1]  # one coordinate a tensor: the in-place loop, not vmap
        want = [oracle(theta + 1e-3 * np.eye(theta.size)[i]) for i in one]
        np.testing.assert_allclose(full_coordinate_losses(oracle, theta, np.array(one), 1e-3), want, rtol=1e-12)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, z):
        return self.fc(x + z)


@pytest.mark.parametrize("inputs", ["tuple", "list", "dict"])
def test_several_model_inputs_are_refused_naming_batch(inputs):
    """They failed in NumPy ("setting an array element with a sequence") or torch ("Could not
    infer dtype of dict"); inputs of one shape were stacked into one tensor silently."""
    x, z, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 3, (6,))
    xs = {"tuple": (x, z), "list": [x, z], "dict": {"x": x, "z": z}}[inputs]
    with pytest.raises(zo.ArgumentError, match=f"`batch`'s x is a {inputs}: TorchOracle feeds the model one input"):
        TorchOracle(_TwoInputs(), CE_ROWS, (xs, y))
    oracle = TorchOracle(nn.Linear(2, 3), CE_ROWS, ([[0.0, 1.0], [1.0, 0.0]], [0, 2]))  # nested lists of numbers
    assert np.isfinite(oracle(oracle.initial_params()))
    rows = [np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([1.0, 1.0])]  # one array a sample: stacked
    assert np.isfinite(TorchOracle(nn.Linear(2, 3), CE_ROWS, (rows, [0, 2, 1]))(oracle.initial_params()))


def test_models_without_values_are_refused_when_built():
    """A model on the meta device failed at bind ("Tensor.item() cannot be called on meta
    tensors") and a lazy module with torch's UninitializedParameter error."""
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(zo.ArgumentError, match=r"`model`'s '0.weight' is on the meta device .* model.to_empty"):
        TorchOracle(meta, CE_ROWS)
    with pytest.raises(zo.ArgumentError, match=r"lazy modules not yet initialized \('0.weight'\): run one forward"):
        TorchOracle(nn.Sequential(nn.LazyLinear(3)), CE_ROWS)
    lazy = nn.Sequential(nn.LazyLinear(3))
    lazy(torch.randn(2, 4))
    assert TorchOracle(lazy, CE_ROWS).size == 15


class _BranchOnBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 6), nn.Linear(6, 3)
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("on", torch.tensor(True))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.a(x)) * float(self.scale)
        if self.on:
            h = h + 1
        return self.c(h)


def test_a_forward_branching_on_a_buffer_keeps_its_split_and_follows_the_buffer():
    """With buffers traced as graph nodes, ``if self.on:`` and ``float(self.scale)`` could not be
    traced and the split was lost; traced with the values, a change of the buffer must check the
    split again (and a counter the forward writes must not, at every call)."""
    torch.manual_seed(0)
    model = _BranchOnBuffer().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    checks = []
    import zoracle.adapters._torch_exact as exact

    real = exact._check_split
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact, "_check_split", lambda *a, **k: checks.append(1) or real(*a, **k))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            oracle = TorchOracle(model, CE_ROWS, (x, y))
            assert oracle.blocks
            theta = oracle.initial_params()
            for _ in range(3):
                np.testing.assert_allclose(zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad,
                                           _textbook(oracle, theta), rtol=1e-5, atol=1e-8)
        assert len(checks) == 1
        with torch.no_grad():
            model.scale.fill_(3.0)
        with pytest.warns(RuntimeWarning, match="attribute changed"):
            got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    np.testing.assert_allclose(got, _textbook(oracle, theta), rtol=1e-5, atol=1e-8)


def test_attributes_without_a_version_or_a_hash_do_not_break_the_key():
    """A tensor made under ``torch.inference_mode()`` has no version counter, and a structured
    NumPy scalar no hash: the oracle raised at every call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.inference_mode():
        model[0].frozen = torch.ones(3)
    model[2].record = np.zeros((), dtype=[("a", "f8"), ("b", "i4")])[()]
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    assert oracle.blocks and np.isfinite(zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE()).grad).all()


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 6), nn.Linear(6, 3)
        self.n = 0

    def forward(self, x):
        self.n += 1
        return self.c(torch.relu(self.a(x)))


def test_a_copy_of_the_oracle_keeps_what_it_watches():
    """A copy (a worker's) watched again the attributes the forward writes, and checked its split
    again at its first query."""
    import pickle

    import zoracle.adapters._torch_exact as exact

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    oracle = TorchOracle(_Counting(), CE_ROWS, (x, y))
    theta = oracle.initial_params()
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3))
    checks = []
    real = exact._check_split
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact, "_check_split", lambda *a, **k: checks.append(1) or real(*a, **k))
        for copied in (pickle.loads(pickle.dumps(oracle)), copy.deepcopy(oracle)):
            got = zo.estimate_gradient(copied, theta, zo.CGE(mu=1e-3)).grad
            np.testing.assert_array_equal(got, zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3)).grad)
    assert checks == []


def test_perturbations_leave_a_batchnorm_subclass_running_statistics_as_they_were():
    """torch's batch-norm kernel writes the running statistics in place without counting a
    version, and the buffers were put back only when their version had moved: every
    perturbation query of the zoo's timm-style BatchNormAct2d (train mode) moved them, and
    eval-mode predictions with them (1.7e-3)."""
    from zoracle.adapters.torch_models import BNActNet, zoo_batch

    torch.manual_seed(0)
    net = BNActNet().train()
    x, y = zoo_batch("bn_act", 8)
    oracle = TorchOracle(net, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    before = {n: b.clone() for n, b in net.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        oracle.coordinate_losses(theta, np.arange(0, oracle.size, 7), 1e-3)
        oracle.batch(np.stack([theta, theta + 1e-3]))
        oracle(theta)  # update_stats=False: a plain call leaves them too
        oracle.predict(theta, x, train=True)
    assert all(torch.equal(b, before[n]) for n, b in net.named_buffers())


@pytest.mark.parametrize("coords", [[0.9, 2.5], ["1"], [[0, 1], [2, 3]]])
def test_coordinates_that_are_not_integer_indices_are_refused(coords):
    """0.9 and 2.5 gave the losses of coordinates 0 and 2; strings and 2-D arrays were taken too."""
    torch.manual_seed(0)
    oracle = TorchOracle(nn.Sequential(nn.Linear(4, 3)), CE_ROWS, (torch.randn(4, 4), torch.randint(0, 3, (4,))))
    with pytest.raises(zo.ArgumentError, match="`coords` must be a 1-D sequence of integer indices"):
        oracle.coordinate_losses(oracle.initial_params(), coords, 1e-3)
    assert oracle.coordinate_losses(oracle.initial_params(), [], 1e-3).shape == (0,)


def test_blocks_naming_modules_outside_the_model_are_refused():
    """A module of another model (or of a copy) in ``blocks`` failed with a KeyError holding an
    object id."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(zo.ArgumentError, match=r"`blocks` item 2 \(Linear\) holds trainable parameters that are not"):
        TorchOracle(net, CE_ROWS, blocks=[net[0], net[1], nn.Linear(8, 8), net[2]])
    with pytest.raises(zo.ArgumentError, match=r"`blocks` item 0 \(Linear\) holds trainable parameters"):
        TorchOracle(net, CE_ROWS, blocks=list(copy.deepcopy(net)))
    assert TorchOracle(net, CE_ROWS, blocks=[net[0], nn.ReLU(), net[2]]).size == 67  # a parameter-free step built inline
    # a wrapper of the model's own layers holds the model's parameters: a legitimate step
    wrapped = TorchOracle(net, CE_ROWS, (torch.randn(4, 4), torch.randint(0, 3, (4,))),
                          blocks=[nn.Sequential(net[0], net[1]), net[2]])
    assert len(wrapped.blocks) == 2


class _NanBuffer(nn.Module):
    """A train-mode module with a buffer holding NaN, which its forward does not write."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 6), nn.Linear(6, 3)
        self.norm = nn.InstanceNorm1d(6, track_running_stats=True)
        self.norm.running_mean[0] = float("nan")

    def forward(self, x):
        return self.c(torch.relu(self.a(x)))


def test_a_buffer_holding_nan_is_not_put_back_at_every_query():
    """Saved buffers are compared by value to see whether a forward wrote them: NaN != NaN made a
    buffer holding NaN look written, its copy bumped the version, and the cached activations were
    computed again at every call."""
    torch.manual_seed(0)
    model = _NanBuffer().train()
    oracle = TorchOracle(model, CE_ROWS, (torch.randn(8, 4), torch.randint(0, 3, (8,))), update_stats=False)
    theta = oracle.initial_params()
    zo.estimate_gradient(oracle, theta, zo.CGE())
    version = model.norm.running_mean._version
    for _ in range(3):
        zo.estimate_gradient(oracle, theta, zo.CGE())
    assert model.norm.running_mean._version == version


@pytest.mark.parametrize("largest", ["first half", "second half"])
def test_a_loss_coupled_through_a_statistic_of_one_half_is_found(largest):
    # rows / out.abs().max(): with the batch's largest output in the first half, that half's losses
    # alone equal its losses in the batch, so the half-batch check passed it as per-sample: the
    # perturbations' rows then shared one max, and 54 of 58 partials were wrong (up to 12.7 off)
    def loss(out, y):
        return ((out - y) ** 2).sum(1) / out.abs().max()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    with torch.no_grad():
        order = np.argsort(-model(torch.as_tensor(x)).abs().amax(1).numpy())
    if largest == "second half":
        order = order[::-1]
    x, y = x[order].copy(), y[order].copy()
    plain = copy.deepcopy(model)
    bound = TorchOracle(model, loss).bind((x, y))
    p = bound.initial_params()

    def reference(q):
        torch.nn.utils.vector_to_parameters(torch.as_tensor(np.array(q)), plain.parameters())
        with torch.no_grad():
            return float(loss(plain(torch.as_tensor(x)), torch.as_tensor(y)).mean())

    cge = zo.CGE(mu=1e-4)
    got = zo.estimate_gradient(bound, p, cge).grad
    np.testing.assert_allclose(got, zo.estimate_gradient(reference, p, cge).grad, atol=1e-8)


class _RunningScaleLinear(nn.Linear):
    """A layer whose train-mode forward updates a buffer and then reads it (the pattern of
    spectral norm's power iteration, or of a running weight scale)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.scale.mul_(0.9).add_(0.1 * self.weight.norm())
        return F.linear(x, self.weight / self.scale, self.bias)


@pytest.mark.parametrize("layer", ["running_scale", "spectral_norm"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_forward_that_writes_and_reads_a_buffer_gives_every_query_the_same_buffers(layer, scheme):
    """The base point's plain call updated the buffers (one training forward) and returned the loss
    of the buffers before the update, while the perturbations started from those after it; central
    differences mixed the two through the cached activations. The gradients were off by 7.6
    (running scale) and 1.8 (spectral norm) where the largest partial is 0.28 and 0.23, with no
    warning. A plain call now keeps such an update only where the forward does not read it (its loss
    from the updated buffers is the same); else it puts the buffers back, says so once, and every
    query starts from them: the textbook loop from the model as the estimate leaves it."""
    torch.manual_seed(0)
    first = (_RunningScaleLinear(6, 6) if layer == "running_scale"
             else torch.nn.utils.parametrizations.spectral_norm(nn.Linear(6, 6)))
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(6, 3)).double().train()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    oracle = TorchOracle(model, CE_ROWS).bind((x, y))
    theta = oracle.initial_params()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme=scheme))
    said = " ".join(str(w.message) for w in rec)
    if layer == "running_scale":  # read, always: its output scales with the buffer
        assert "write buffers in their train-mode forward and then read them" in said, said
    assert oracle.blocks  # the split was kept
    loss = _buffers_put_back(copy.deepcopy(model), oracle, x, y)
    eye = np.eye(theta.size)
    if scheme == "central":
        want = np.array([(loss(theta + 1e-6 * e) - loss(theta - 1e-6 * e)) / 2e-6 for e in eye])
    else:
        base = loss(theta)
        want = np.array([(loss(theta + 1e-6 * e) - base) / 1e-6 for e in eye])
    np.testing.assert_allclose(est.grad, want, rtol=1e-5, atol=1e-8)
    assert est.loss == pytest.approx(loss(theta), rel=1e-12)


def _buffers_put_back(ref, oracle, x, y):
    """The textbook loop's loss on ``ref`` (a copy of the model), every forward's buffer writes put
    back after it, the parameters set in ``oracle``'s order; with ``oracle=None``, a function of the
    oracle giving that loss (a copy taken before the oracle first ran the model)."""
    kept = {k: b.clone() for k, b in ref.named_buffers()}

    def bind(oracle):
        params = dict(ref.named_parameters())
        flat = [params[n] for n in oracle.parameter_names]

        def loss(v):
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(torch.as_tensor(v), flat)
                out = float(CE_ROWS(ref(x), y).mean())
                for k, b in ref.named_buffers():
                    b.copy_(kept[k])
            return out

        return loss

    return bind if oracle is None else bind(oracle)


class _RunningScale(nn.Module):
    """A running weight scale the forward writes and then reads, traced into by the capture (whose
    in-place ``mul_`` retires the split: full forwards)."""

    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.scale.mul_(0.5).add_(0.5 * self.fc.weight.abs().mean())
        return self.fc(x) / self.scale


@pytest.mark.parametrize("blocks", [None, "none"])
def test_full_forwards_give_every_vectorized_tensor_the_buffers_the_query_found(blocks):
    """Full forwards vectorize one parameter tensor at a time; the first time for each tensor an
    in-place forward checks the vectorized one (``_reaches``). A layer after it whose train-mode
    forward writes a buffer and reads it (a running scale) left that write to the next tensor's
    vectorized forward: the first layer's bias partials came out -317 and -475 (the split retired,
    blocks="none") where the textbook loop gives none above 0.05, with no warning. Each vectorized
    chunk now starts from the buffers the query found."""
    torch.manual_seed(0)
    scaled = _RunningScale(5) if blocks is None else _RunningScaleLinear(5, 5)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), scaled, nn.Tanh(), nn.Linear(5, 3)).double().train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 4, dtype=torch.float64, generator=g), torch.randint(0, 3, (7,), generator=g)
    loss = _buffers_put_back(copy.deepcopy(model), oracle=None, x=x, y=y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*write buffers in their train-mode forward")
        warnings.filterwarnings("ignore", message="TorchOracle: torch.func.vmap failed")
        warnings.filterwarnings("ignore", message=".*writes into a tensor in place")  # the split, retired
        oracle = TorchOracle(model, CE_ROWS, (x, y), blocks=blocks)
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="forward"))
    assert not oracle.blocks  # full forwards
    loss = loss(oracle)
    base = loss(theta)
    want = np.array([(loss(theta + 1e-6 * e) - base) / 1e-6 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est.grad, want, rtol=1e-5, atol=1e-8)


class _RunningVarNorm(nn.Module):
    """An EvoNorm-style norm: train mode normalizes by the batch variance and updates a running
    variance, which only eval mode reads."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        if self.training:
            var = x.var(0, unbiased=False)
            with torch.no_grad():
                self.running_var.mul_(0.9).add_(0.1 * var)
        else:
            var = self.running_var
        return x / (var + 1e-5).sqrt()


def test_a_buffer_the_forward_writes_without_reading_it_follows_training():
    """Putting back every such buffer froze running statistics that only eval mode reads (an
    EvoNorm-style running variance, a QAT observer's statistics in eval), silently."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), _RunningVarNorm(5), nn.Linear(5, 3)).double().train()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")  # a batch statistic: full forwards, one at a time (vmap), said
        oracle = TorchOracle(model, CE_ROWS)
        res = zo.train(oracle, oracle.initial_params(), batches=[(x, y)] * 3, epochs=1, rng=0, progress=False)
    assert not any("write buffers" in str(w.message) for w in rec)
    assert res.steps == 3 and not torch.allclose(model[1].running_var, torch.ones(5, dtype=torch.float64))


class _MaxNormBag(nn.Module):
    """Token ids -> mean of ``nn.Embedding(max_norm=1)`` rows -> linear: the embedding renormalizes
    the rows it looks up, in place, in every forward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 4, max_norm=1.0)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.emb(tokens).mean(1)))


@pytest.mark.parametrize("blocks, budget", [(None, None), ("none", None), (None, 1024)])
def test_an_embedding_with_max_norm_gives_the_textbook_estimate_in_every_full_forward_path(blocks, budget):
    """The fallback's forwards started from rows an earlier forward had renormalized: the vmapped path
    ran the in-place renorm on its batched copies (8e-3 off, max |partial| 0.044, and silently with
    blocks="none"), the one-at-a-time loop (a small budget) kept the rows from forward to forward
    and from its size probe (31.5 off, max |partial| 5e-3). Every perturbation now starts from the
    queried parameters, as the textbook loop does."""
    torch.manual_seed(1)
    tokens, y = torch.randint(0, 9, (8, 6)), torch.randint(0, 3, (8,))
    torch.manual_seed(0)
    model = _MaxNormBag().double()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the split is refused, naming the write (tested elsewhere)
        oracle = TorchOracle(model, CE_ROWS, blocks=blocks, budget_bytes=budget)
        theta = oracle.initial_params()  # rows of norm about 2, before a forward renormalizes them
        oracle = oracle.bind((tokens, y))
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-5, scheme="central")).grad
    params = dict(ref.named_parameters())
    flat = [params[n] for n in oracle.parameter_names]

    def loss(v):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.as_tensor(v), flat)
            return float(CE_ROWS(ref(tokens), y).mean())

    want = np.array([(loss(theta + 1e-5 * e) - loss(theta - 1e-5 * e)) / 2e-5 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-7, atol=1e-10)


def test_a_probe_whose_loss_is_nan_does_not_retire_the_split():
    """The split is checked on two samples; where their loss was NaN in both the graph and model(x)
    (a mean loss whose first two targets are ignored, a NaN in the first sample), NaN != NaN retired
    the split for good, warning "gives loss nan but model(x) gives nan": every later estimate ran
    full forwards, also on clean batches. The check takes the first pair with a finite loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    y[:2] = -100  # ignored by a mean cross-entropy: the first pair's loss is 0 / 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, nn.CrossEntropyLoss())
        theta = oracle.initial_params()
        bound = oracle.bind((x, y))
        est = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-6)).grad
        assert len(bound.blocks) == 2
        np.testing.assert_allclose(est, _textbook(bound, theta), rtol=1e-6, atol=1e-9)
        bad = x.clone()
        bad[0, 0] = float("nan")
        dirty = oracle.bind((bad, y.clamp(min=0)))
        with pytest.raises(zo.OracleError, match="returned nan at the base point"):
            zo.estimate_gradient(dirty, theta, zo.CGE(mu=1e-6))
        clean = oracle.bind((x, y.clamp(min=0)))
        assert len(clean.blocks) == 2
        np.testing.assert_allclose(zo.estimate_gradient(clean, theta, zo.CGE(mu=1e-6)).grad,
                                   _textbook(clean, theta), rtol=1e-6, atol=1e-9)


def test_training_an_unbound_oracle_without_batches_names_batches():
    """short_budget's settings passed to train without `batches`: the error named TorchOracle's
    batch= and bind, not train's own `batches`."""
    model = nn.Sequential(nn.Linear(3, 2))
    oracle = TorchOracle(model, CE_ROWS)
    with pytest.raises(zo.OracleError, match=r"no minibatch: pass batches= to zo.train"):
        zo.train(oracle, oracle.initial_params(), epochs=1, progress=False)


class _PreHooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)
        self.b.register_forward_pre_hook(lambda m, args: (args[0] ** 2,))

    def forward(self, x):
        return self.b(self.a(x))


def test_a_hook_there_at_the_capture_is_named_when_the_split_is_refused():
    """A hook registered after the capture is named; one registered before it was not: the warning
    gave only the two losses. The estimate is the textbook one either way."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(_PreHooked().double(), CE_ROWS).bind((x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert "'b' run(s) forward hooks, which the split's closed forms do not run" in said, said
    np.testing.assert_allclose(est, _textbook(oracle, theta), rtol=1e-6, atol=1e-9)


class _ScaledInput(nn.Module):
    """A pre-hook scaling a Linear's input (an input-scaling or fake-quantization hook)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.b.register_forward_pre_hook(lambda m, args: (args[0] * 2,))

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_hook_the_self_check_cannot_see_still_retires_the_split():
    """The self-check moves a block's first and last coordinate on two samples: where the input
    channel 0 of ``b`` is 0 on both (a ReLU), a pre-hook doubling that input changed none of its
    losses, the split passed, and the closed form for ``b.weight`` (which does not run the hook)
    gave half the difference on 34 of its 64 coordinates, with no warning."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10, dtype=torch.float64), torch.randint(0, 4, (6,))
    torch.manual_seed(0)
    model = _ScaledInput().double()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS).bind((x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3)).grad
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert "'b' run(s) forward hooks" in said, said

    loss = _by_name(ref, oracle, x, y)  # textbook: one parameter at a time on a copy, by name
    base = loss(theta)
    want = np.array([(loss(theta + 1e-3 * e) - base) / 1e-3 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-9)


def test_an_observing_hook_keeps_the_split():
    """A hook that only looks (returns None, writes nothing) changes nothing the split computes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS).bind((x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    assert oracle.blocks and seen
    np.testing.assert_allclose(est, _textbook(oracle, theta), rtol=1e-6, atol=1e-9)


def test_a_hook_the_model_cannot_run_without_is_no_crash():
    """An LSTM in a Sequential with a forward hook picking its last step (the Linear after it takes
    that tensor, not the LSTM's tuple): the split runs the LSTM through its hooks; the hook check's
    model(x) without any hook raised TypeError out of TorchOracle(...) (it built and estimated before)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True)
    lstm.register_forward_hook(lambda m, i, o: o[0][:, -1])
    model = nn.Sequential(lstm, nn.Linear(6, 3)).double()
    ref = copy.deepcopy(model)
    x, y = torch.randn(8, 5, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    oracle = TorchOracle(model, CE_ROWS).bind((x, y))
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    loss = _by_name(ref, oracle, x, y)  # textbook: one parameter at a time on a copy, by name
    base = loss(theta)
    want = np.array([(loss(theta + 1e-6 * e) - base) / 1e-6 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-8)


class _Guarded(nn.Module):
    """A module with its own forward (a Python check): no closed form, vmap cannot batch it."""

    def forward(self, x):
        if float(x.abs().max()) > 1e30:
            raise RuntimeError("blown up")
        return torch.tanh(x)


@pytest.mark.slow
def test_threads_sharing_the_oracle_take_turns_through_whole_queries():
    """A query loaded the parameters under the model's lock and ran its forward under it again: between
    the two, another thread's batch loop could load its rows, and the plain call returned the loss at
    that row (33 of 3,000 calls wrong)."""
    import sys
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), _Guarded(), nn.Linear(64, 4)).double()
    x, y = torch.randn(64, 32, dtype=torch.float64), torch.randint(0, 4, (64,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's fallback to a loop, said once
        oracle = TorchOracle(model, nn.CrossEntropyLoss()).bind((x, y))
        theta = oracle.initial_params()
        base = oracle(theta)
        rows = theta + np.random.default_rng(0).standard_normal((8, theta.size))
        oracle.batch(rows)
    stop, wrong = threading.Event(), []

    def batches():
        while not stop.is_set():
            oracle.batch(rows)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    worker = threading.Thread(target=batches)
    worker.start()
    try:
        for _ in range(1500):
            value = oracle(theta)
            if value != base:
                wrong.append(value)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert wrong == []


class _Flaky(nn.Module):
    """Raises on an input it cannot take (a bad batch), else the identity."""

    def forward(self, x):
        if bool((x.abs() > 1e6).any()):
            raise RuntimeError("bad batch")
        return x


def test_an_error_in_a_vmapped_forward_leaves_vmap_on():
    """Any error in a batched query's forward was taken for an op vmap cannot batch: vmap went off
    for the oracle's life, and every later batch ran the slow loop (and differed from a fresh
    oracle's by round-off). The loop now tells: an error it raises too is the forward's own."""
    torch.manual_seed(0)
    model = nn.Sequential(_Flaky(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    oracle = TorchOracle(model, CE_ROWS)
    good = oracle.bind((x, y))
    theta = oracle.initial_params()
    rows = theta + 0.01 * np.random.default_rng(0).standard_normal((5, theta.size))
    want = good.batch(rows)
    bad = oracle.bind((x * 1e7, y))
    with pytest.raises(RuntimeError, match="bad batch"):
        bad.batch(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(good.batch(rows), want)
    assert oracle._core.vmap_ok


def test_an_empty_parameter_has_no_coordinates():
    """A zero-size parameter (a placeholder, an empty prompt) made an empty block, and the first
    bind's self-check asked for coordinate 21 of block [21, 21): the oracle could not be built."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))

    class EmptyParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 3).double()
            self.empty = nn.Parameter(torch.empty(0, dtype=torch.float64))

        def forward(self, h):
            return self.lin(h) + self.empty.sum()

    model = EmptyParam()
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    assert oracle.parameter_names == ["lin.weight", "lin.bias"]
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    model.zero_grad()
    CE_ROWS(model(x), y).mean().backward()
    want = torch.cat([model.lin.weight.grad.reshape(-1), model.lin.bias.grad]).numpy()
    np.testing.assert_allclose(est.grad, want, atol=1e-8)
    np.testing.assert_allclose(oracle.batch(np.stack([theta, theta + 1e-3])), [oracle(theta), oracle(theta + 1e-3)],
                               rtol=1e-12)
    model.eval()  # a mode change checks the parameters again: the empty one is not a new one
    np.testing.assert_allclose(zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central")).grad, want,
                               atol=1e-8)


class _GaussianNoise(nn.Module):
    """A noise layer in train mode (a regularizer; timm's DropPath draws with ``bernoulli_`` alike)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        if self.training:
            h = h + 0.1 * torch.randn_like(h)
        return self.fc2(h)


@pytest.mark.parametrize("blocks", [None, "none"])
def test_a_random_forward_is_named_as_such(blocks):
    """A forward drawing its own noise gave CGE estimates thousands of times the gradient, and
    the one warning blamed a step that mixes samples (or vmap)."""
    torch.manual_seed(0)
    model = _GaussianNoise().double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    with pytest.warns(RuntimeWarning, match="model\\(x\\) is not repeatable") as seen:
        TorchOracle(model, CE_ROWS, (x, y), blocks=blocks)
    assert not any("mixes samples" in str(w.message) for w in seen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in eval mode the forward is deterministic: no warning
        TorchOracle(model.eval(), CE_ROWS, (x, y), blocks=blocks)


class _BatchDropPath(nn.Module):
    """Stochastic depth drawn once per call for the whole batch: two calls often agree."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        if self.training and bool(torch.rand(()) < 0.2):
            h = torch.zeros_like(h)
        return self.fc2(h + x)


class _ReorderedSum(nn.Module):
    """Sums in another order every other call (as GPU atomics do): round-off, not noise."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        s = x.sum(1, keepdim=True) if self.calls % 2 else x.flip(1).sum(1, keepdim=True)
        return self.fc(x) + s


def test_repeatability_counts_random_draws_and_forgives_round_off():
    # a draw once a call matched in both forwards 68% of the time; a bitwise comparison took
    # reordered sums for noise and turned feature reuse off
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for seed in range(5):
        torch.manual_seed(seed)
        with pytest.warns(RuntimeWarning, match="not repeatable"):
            TorchOracle(_BatchDropPath(), CE_ROWS, (x, y))
    model = _ReorderedSum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
    assert oracle.blocks

    class LayerDropZero(nn.Module):  # HF encoders in train mode: a draw per layer that cannot drop it
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.fc2 = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)

        def forward(self, x):
            h = self.bn(self.fc1(x))
            if self.training and bool(torch.rand(()) < 0.0):
                h = torch.zeros_like(h)
            return self.fc2(h)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BatchNorm in train mode: the seeds' runs compare two samples with two
        oracle = TorchOracle(LayerDropZero(), CE_ROWS, (x, y))
    assert oracle.blocks


class _HoldsAWeight(nn.Module):
    """A head that reads another layer's weight through a plain list, or a detached view kept as
    a plain attribute (behind a branch on the data, which torch.fx cannot trace)."""

    def __init__(self, how="list"):
        super().__init__()
        self.spare = nn.Linear(4, 3)
        self.fc = nn.Linear(4, 3)
        self.refs = [self.spare.weight]
        self.view = self.spare.weight.detach()
        self.how = how

    def forward(self, x):
        if self.how == "list":
            return self.fc(x) + x @ self.refs[0].T
        if x.sum() > -1e9:  # data-dependent: no split
            return self.fc(x) + x @ self.view.T
        return self.fc(x)


@pytest.mark.parametrize("blocks, how, dtype", [(None, "list", torch.float64), ("none", "list", torch.float64),
                                                (None, "view", torch.float64), ("none", "list", torch.float32),
                                                (None, "view", torch.float32)])
def test_a_parameter_held_in_a_plain_list_is_perturbed_where_the_forward_reads_it(blocks, how, dtype):
    """Vectorized full forwards swap parameters in by name: the list's copy (or the detached
    view) kept the unperturbed weight, and its partials came out 0 (0.09 off autograd). The check
    moves whole tensors: a one-coordinate check was below float32's tolerance."""
    torch.manual_seed(0)
    model = _HoldsAWeight(how).to(dtype)
    model.view = model.spare.weight.detach()  # of the converted weight
    x, y = torch.randn(8, 4, dtype=dtype), torch.randint(0, 3, (8,))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    with warnings.catch_warnings(record=True) as seen:  # with the split: its retirement is warned about too
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS, (x, y), blocks=blocks)
        theta = oracle.initial_params()
        coords = np.arange(theta.size)
        got = oracle.coordinate_losses(theta, coords, 1e-3)
    assert any("reads 'spare.weight'" in str(w.message) or "reads parameter 'spare.weight' through a copy"
               in str(w.message) for w in seen)
    want = [oracle.reference_loss(theta + np.asarray(1e-3 * (np.arange(theta.size) == i), theta.dtype)) for i in coords]
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    at = next(i.slice for i in oracle.param_info if i.name == "spare.weight")
    assert np.abs(got[at] - oracle.reference_loss(theta)).max() > 1e-5  # the list's weight moves the loss
    rows = theta + 0.01 * np.random.default_rng(0).standard_normal((3, theta.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch's own check of the vectorized forwards warns once, if it runs
        got = oracle.batch(rows.astype(theta.dtype))
    np.testing.assert_allclose(got, [oracle.reference_loss(r) for r in rows.astype(theta.dtype)], rtol=0, atol=tol)


def test_a_random_loss_is_named_and_an_integer_loss_refused():
    """A loss drawing its own noise (a Monte Carlo term) was only seen as a loss mismatch of the
    split; integer losses failed in a mean ("could not infer output dtype")."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def noisy(out, target):
        return CE_ROWS(out + 0.1 * torch.randn_like(out), target)

    for blocks in (None, "none"):
        with pytest.warns(RuntimeWarning, match=r"loss_fn\(model\(x\), y\) is not repeatable"):
            TorchOracle(model, noisy, (x, y), blocks=blocks)
    with pytest.raises(zo.ArgumentError, match="`loss_fn` returned int64 losses; finite differences need float"):
        TorchOracle(model, lambda out, target: (out.argmax(1) != target).long(), (x, y))


class _OptionalArguments(nn.Module):
    """``forward(x, mask=None, ...)``, the attention / feature-extractor idiom: fx traced the
    defaulted parameters as inputs, so the model looked like a two-input one and lost feature
    reuse ("forward takes 2 inputs; the oracle feeds one"), or a branch on the flag failed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x, mask=None, return_features: bool = False, *, scale: float = 1.0):
        h = torch.relu(self.conv(x))
        if mask is not None:
            h = h * mask
        if return_features:
            return h
        return self.fc(h.flatten(1)) * scale


class _Causal(nn.Module):
    def __init__(self, buffer):
        super().__init__()
        self.fc, self.buffer = nn.Linear(4, 4), buffer
        self.register_buffer("tri", torch.ones(16, 16).tril())

    def forward(self, x):
        T = x.size(1)
        mask = self.tri[:T, :T] if self.buffer else torch.ones(T, T, dtype=x.dtype).tril()
        return (mask @ self.fc(x)).mean(1)


def test_a_forward_with_defaulted_arguments_keeps_its_split():
    torch.manual_seed(0)
    model = _OptionalArguments().double()
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    oracle = check_exact(model, x, y, F.cross_entropy)  # no warning: the split, equal to the textbook loop
    assert len(oracle.blocks) == 2


def test_a_factory_call_on_an_input_size_is_named_with_the_fix():
    """fx's own message ("ones() takes 1 positional argument but 2 were given") said nothing of
    the cause; the buffer it suggests keeps the split."""
    torch.manual_seed(0)
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    check_exact(_Causal(buffer=False).double(), x, y, F.mse_loss,
                expect_warning=r"cannot trace _Causal \(TypeError: .*\); a size read from the input is a proxy .*"
                               r"as a buffer of the largest size and slice it \(self.mask\[:T, :T\]\)")
    assert len(check_exact(_Causal(buffer=True).double(), x, y, F.mse_loss).blocks) == 1


def _flat_by_memory(s):  # not layout free: flattens the raw memory order
    t = s[0]
    return (t.as_strided((t.shape[0], t[0].numel()), (t[0].numel(), 1)),)


_flat_by_memory.layout_free = True


class _WronglyLayoutFree(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.r, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Linear(100, 3)

    def zoracle_steps(self):
        return [self.c0, self.r, tm.Step(fn=_flat_by_memory), self.fc]

    def forward(self, x):
        return self.fc(_flat_by_memory((self.r(self.c0(x)),))[0])


def test_a_step_wrongly_declared_layout_free_retires_the_split():
    """Its float32 self-check failed (channels-last), and the float64 recheck, which never runs
    channels-last, cleared it: gradients 1.2x off, silently."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))
    model = _WronglyLayoutFree()
    with pytest.warns(RuntimeWarning, match=r"a step declared layout_free \(step2\) gives other results on "
                                            r"channels-last activations"):
        oracle = TorchOracle(model, F.cross_entropy, (x, y))
    theta = oracle.initial_params()
    plain = TorchOracle(model, F.cross_entropy, (x, y), blocks="none")
    np.testing.assert_array_equal(zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-2)).grad,
                                  zo.estimate_gradient(plain, theta, zo.CGE(mu=1e-2)).grad)


def test_a_step_given_a_function_where_its_module_goes_is_named():
    """docs/pytorch.md wrote Step(fn, channel_fn=...): the function landed in `module` and the
    capture failed with "'function' object has no attribute 'named_parameters'"."""

    class Declares(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def zoracle_steps(self):
            return [tm.Step(torch.relu), self.fc]

        def forward(self, x):
            return self.fc(torch.relu(x))

    with pytest.raises(zo.ArgumentError, match=r"Step's first field is `module` .*Step\(fn=\.\.\., \.\.\.\)"):
        TorchOracle(Declares(), F.cross_entropy)


class _InnerChannelWrong(nn.Module):
    """A declared join whose channel_fn doubles the skip for channel 1 only."""

    def __init__(self, C=4):
        super().__init__()
        self.c0, self.r = nn.Conv2d(2, C, 3, padding=1, bias=False), nn.ReLU()
        self.c1, self.fc = nn.Conv2d(C, C, 3, padding=1, bias=False), nn.Linear(C, 3)

    @staticmethod
    def pool(s):
        return (F.adaptive_avg_pool2d(s[0], 1).flatten(1),) + tuple(s[1:])

    def join(self, s):
        return (F.relu(s[0] + s[1]),)

    def join_channel(self, col, ch, s):
        skip = s[1].index_select(1, ch).transpose(0, 1)
        return F.relu(col + skip * (1 + (ch == 1).to(col.dtype)).view(-1, 1, 1, 1))

    def zoracle_steps(self):
        return [self.c0, self.r, tm.fork, self.c1, tm.Step(fn=self.join, channel_fn=self.join_channel),
                tm.Step(fn=self.pool), self.fc]

    def forward(self, x):
        h = self.r(self.c0(x))
        return self.fc(self.pool((F.relu(self.c1(h) + h),))[0])


def test_check_oracle_catches_a_channel_fn_wrong_for_an_inner_channel_only():
    """The first-bind self-check moves each block's first and last coordinate and passes this
    split (documented in pytorch.md); check_oracle, which samples inside every block, does not."""
    torch.manual_seed(1)
    model = _InnerChannelWrong().double()
    torch.manual_seed(0)
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    oracle = TorchOracle(model, F.cross_entropy, (x, y))
    with pytest.raises(zo.testing.OracleCheckError, match="prefix\\+suffix|coordinate_losses"):
        check_oracle(oracle, oracle.initial_params(), n_coords=16)


class _TrainingTemperature(nn.Module):
    """A logit temperature applied in training only: a branch on self.training."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        out = self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))
        if self.training:
            out = out / 1.006
        return out


def _plain_losses(oracle, theta, coords, step):
    """The textbook reference: one plain call (model(x)) per perturbed point."""
    return np.array([oracle(theta + step * np.eye(theta.size, dtype=theta.dtype)[i]) for i in coords])


def test_a_float32_split_captured_in_eval_mode_is_retired_when_training_takes_the_other_branch():
    """In float32 the check after the mode change passed (the stale branch's loss was off by
    less than float32's tolerance) and the gradient came out 15% off with 11 of 122 signs
    flipped; float64 retired it. A float64 capture of the model as it is now decides."""
    torch.manual_seed(0)
    model = _TrainingTemperature().eval()
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    assert oracle.blocks
    theta = oracle.initial_params()
    model.train()
    coords, step = np.arange(0, oracle.size, 7), np.float32(0.05)
    with pytest.warns(RuntimeWarning, match="train/eval modes changed: a capture of the model as it is now gives "
                                            "another graph"):
        got = oracle.coordinate_losses(theta, coords, step)
    assert not oracle.blocks
    np.testing.assert_allclose(got, _plain_losses(oracle, theta, coords, step), rtol=1e-6)


def test_a_layer_whose_forward_is_patched_on_the_instance_runs_its_own_forward():
    """fc1.forward replaced by F.linear(x, 1.5 * W, b): the closed form for nn.Linear ignored it,
    and in float32 the self-check passed it (fc1's gradient 33% off); it is a generic step now."""
    import types

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    model[0].forward = types.MethodType(lambda self, x: F.linear(x, 1.5 * self.weight, self.bias), model[0])
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    coords, step = np.arange(0, oracle.size, 3), np.float32(0.05)
    np.testing.assert_allclose(oracle.coordinate_losses(theta, coords, step),
                               _plain_losses(oracle, theta, coords, step), rtol=1e-6)


def test_suffix_refuses_features_from_other_params_or_another_batch():
    """suffix(prefix(thA, b), thB, b, ...) gave a loss at neither point (7.15 against 104.6 and
    1.61), and features from another bound batch were taken as this one's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    a = oracle.initial_params()
    b = a + 0.5
    feats = oracle.prefix(a, 1)
    lo = oracle.blocks[1].start
    with pytest.raises(zo.ArgumentError, match="`features` come from prefix at other `params`"):
        oracle.suffix(feats, b, 1, [lo], 1e-3)
    other = oracle.bind((torch.randn(8, 6, dtype=torch.float64), y))
    with pytest.raises(zo.ArgumentError, match="`features` were computed on another bound batch"):
        other.suffix(feats, a, 1, [lo], 1e-3)
    np.testing.assert_allclose(oracle.suffix(feats, a.copy(), 1, [lo], 1e-3),  # equal params, another array: fine
                               _plain_losses(oracle, a, [lo], 1e-3), rtol=1e-12)
    feats = oracle.prefix(a, 1)
    a += 0.5  # the same array written in place after prefix (float64 on the CPU shares its memory)
    with pytest.raises(zo.ArgumentError, match="`features` come from prefix at other `params`"):
        oracle.suffix(feats, a, 1, [lo], 1e-3)


def test_a_float32_loss_keeps_the_split_through_a_mode_change():
    """The recheck after a mode change retired the split of a model whose loss casts to
    float32 (out.float()): the float64 copy's own check failed by that round-off (1.0643194
    against 1.0643194), and every later step paid full forwards (3x the time)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    oracle = TorchOracle(model, lambda out, t: F.cross_entropy(out.float(), t, reduction="none"), (x, y))
    theta = oracle.initial_params()
    model.eval()
    coords, step = np.arange(0, oracle.size, 5), np.float32(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = oracle.coordinate_losses(theta, coords, step)
    assert oracle.blocks
    np.testing.assert_allclose(got, _plain_losses(oracle, theta, coords, step), rtol=1e-6)


class _FunctionalDropout(nn.Module):
    """A functional op reading self.training (p=0: a no-op): after a mode change the capture
    differs only in that constant."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        h = F.dropout(F.relu(self.c1(x)), p=0.0, training=self.training)
        return self.fc(h.mean((2, 3)))


def test_the_recheck_after_a_mode_change_keeps_splits_it_has_no_reason_to_retire():
    """The float64 recapture after a mode change compares the graphs' operations, not their
    constants (a functional dropout's training flag), and a model deepcopy refuses (it holds a
    lock) keeps its split: the recapture gives no verdict, not a failure."""
    import threading

    torch.manual_seed(0)
    dropout = _FunctionalDropout().eval()
    locked = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    locked.lock = threading.Lock()
    for model, x, y in ((dropout, torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))),
                        (locked, torch.randn(32, 4), torch.randint(0, 3, (32,)))):
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        model.train(not model.training)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            oracle.coordinate_losses(theta, np.arange(0, oracle.size, 5), np.float32(0.05))
        assert oracle.blocks


def test_a_batch_in_odd_strides_gives_the_bits_its_contiguous_copy_gives():
    """images[:, None] fancy-indexed (as Minibatches takes rows) keeps stride 4 on its size-1
    channel axis; a worker's unpickled copy has the standard strides, and a convolution picks its
    kernel by them: serial and process executors differed by an ulp of the loss over mu (4.8e-5
    on three partials, 7.3e-4 on the params after 12 steps)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (200, 8, 8)).astype(np.float32)
    x = images[:, None][rng.permutation(200)[:50]]
    assert x.strides[1] == 4  # the odd layout
    y = torch.as_tensor(rng.integers(0, 10, 50))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))
    oracle = TorchOracle(net, CE_ROWS)
    theta = oracle.initial_params()
    odd = zo.estimate_gradient(oracle.bind((x, y)), theta, zo.CGE(mu=5e-3))
    plain = zo.estimate_gradient(oracle.bind((x.copy(), y)), theta, zo.CGE(mu=5e-3))
    np.testing.assert_array_equal(odd.grad, plain.grad)


# ---------------------------------------------------------------- gaps a mutation test found
# (each test passes on the code and fails on its mutant: a wrong column step in unfold's strided
# copy for anisotropic dilation, a buffer reset by version only, the skip branch's changed rows
# dropped from the sparse path, a chunk not starting from the buffers the query found; and the
# BatchNorm3d and 2-D-pool-on-3-D closed forms, whose mutants lost the split in silence)


@pytest.mark.parametrize("conv", ["1d", "2d"])
def test_a_dilated_conv_on_long_rows_equals_the_textbook_loop(conv):
    # stride 1 and >= 16 output columns: unfold takes its strided copy; a dilation that differs
    # between height and width (every dilated Conv1d is a (1, d) Conv2d) must step columns by dw.
    # The head is Linear: no absorbing conv, and the self-check's first and last coordinates
    # (tap (0, 0), a bias) do not read a dilated column
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    if conv == "1d":
        model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 40, 3)).double()
        x = rng.standard_normal((4, 2, 40))
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=(1, 2), dilation=(1, 2)), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 5 * 20, 3)).double()
        x = rng.standard_normal((4, 2, 5, 20))
    check_exact(model, x, rng.integers(0, 3, 4), CE_ROWS)


def test_unfold_long_rows_with_anisotropic_dilation():
    from zoracle.adapters._torch_chain import unfold
    x = torch.randn(2, 3, 5, 40, generator=torch.Generator().manual_seed(0))
    for dil in ((1, 2), (2, 1)):
        ref = F.unfold(x, (3, 3), dilation=dil, padding=(2, 2))
        assert torch.equal(unfold(x, (3, 3), dilation=dil, padding=(2, 2)), ref)


class _ScaledBN(nn.BatchNorm1d):  # reads the running statistics its own (native) kernel just wrote
    def forward(self, x):
        return super().forward(x) * (1.0 + self.running_var.mean())


def test_a_batchnorm_subclass_reading_what_its_kernel_wrote_equals_the_textbook_loop():
    # torch's batch-norm kernel writes a subclass's running statistics without a version bump:
    # every full forward must start from the values the query found (compared by value)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), _ScaledBN(6), nn.ReLU(), nn.Linear(6, 4)).double().train()
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 4, (10,))
    snap = copy.deepcopy(model)

    def black_box(th):
        m = copy.deepcopy(snap)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.tensor(th), list(m.parameters()))
            return float(CE_ROWS(m(x), y).mean())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the split is refused (pair check): full forwards, said once
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
        theta = oracle.initial_params()
        got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3)).grad
    want = zo.estimate_gradient(black_box, theta, zo.CGE(mu=1e-3)).grad
    assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max()


def test_a_batchnorm3d_keeps_its_closed_form_and_equals_the_textbook_loop():
    # 5-D activations: BatchNorm3d's affine runs perturbed_outputs' "bn" branch (no channel walk)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for train in (False, True):
        model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 3 * 4 * 4, 3)).double().train(train)
        if not train:
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
        check_exact(model, rng.standard_normal((4, 2, 3, 4, 4)), rng.integers(0, 3, 4), CE_ROWS)


def test_a_2d_pool_on_a_3d_activation_keeps_the_split():
    # a 2-D pool on (B, C, L) pools each sample's (C, L) plane: not channel-local
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 10, 3)).double()
    check_exact(model, rng.standard_normal((4, 2, 20)), rng.integers(0, 3, 4), CE_ROWS)


def _textbook_grad(model, x, y, theta, mu=1e-3):
    snap = copy.deepcopy(model)

    def black_box(th):
        m = copy.deepcopy(snap)  # every query from the same buffers
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.tensor(th), list(m.parameters()))
            return float(CE_ROWS(m(x), y).mean())
    return zo.estimate_gradient(black_box, theta, zo.CGE(mu=mu)).grad


def test_a_declared_fork_then_relu_before_the_absorbing_layer_keeps_rows_the_skip_changed():
    # the skip branch carries the change where the branch's ReLU cuts it: those rows changed
    from zoracle.adapters.torch import Step, fork

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc0, self.act, self.fc1, self.head = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 5)

        def join(self, state):
            return (state[0] + state[1],) + tuple(state[2:])

        def zoracle_steps(self):
            return [self.fc0, fork, self.act, self.fc1, Step(fn=self.join, name="join"), self.head]

        def forward(self, x):
            h = self.fc0(x)
            return self.head(self.fc1(self.act(h)) + h)

    torch.manual_seed(0)
    model = Res().double()
    with torch.no_grad():  # units 0 and 7 (the self-check's coordinates) always on, the rest mostly cut
        model.fc0.bias[1:7] -= 1.0
        model.fc0.bias[0] += 3.0
        model.fc0.bias[7] += 3.0
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 5, (16,))
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    assert oracle.block_names == ["fc0", "fc1", "head"]
    got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3)).grad
    want = _textbook_grad(model, x, y, theta)
    assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max()


@pytest.mark.slow
def test_every_chunk_starts_from_the_buffers_the_query_found():
    # train-mode spectral norm downstream of the perturbed blocks writes its vectors at every
    # forward; a small budget splits each block's coordinates into several chunks
    from torch.nn.utils.parametrizations import spectral_norm
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), spectral_norm(nn.Linear(16, 16)), nn.ReLU(),
                          nn.Linear(16, 5)).double().train()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 5, (32,))
    snap = copy.deepcopy(model)
    with pytest.warns(RuntimeWarning, match="write buffers in their train-mode forward"):
        oracle = TorchOracle(model, CE_ROWS, (x, y), budget_bytes=20000)
        theta = oracle.initial_params()
        got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3)).grad
    assert oracle.blocks and oracle.max_queries_per_call < 16
    want = _textbook_grad(snap, x, y, theta)
    assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max()


def test_a_monte_carlo_loss_is_not_blamed_on_a_parameter_copy():
    """A loss drawing its own noise: the check that vectorized full forwards reach each parameter
    compared two losses with two draws of that noise, and warned that the forward "reads parameter
    '0.weight' through a copy" of a plain nn.Sequential (turning vectorized forwards off)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def noisy(out, target):
        return CE_ROWS(out + 0.1 * torch.randn_like(out), target)

    with pytest.warns(RuntimeWarning, match=r"loss_fn\(model\(x\), y\) is not repeatable"):
        oracle = TorchOracle(model, noisy, (x, y))
    theta = oracle.initial_params()
    rows = theta + 0.01 * np.random.default_rng(0).standard_normal((3, theta.size))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        oracle.batch(rows)
    assert not [str(w.message) for w in seen if "through a copy" in str(w.message)]
    assert oracle._core.vmap_ok is not False


class _Autocast(nn.Module):
    """A forward running its first layer under ``torch.autocast`` (mixed precision)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 8), nn.Linear(8, 4)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.relu(self.a(x))
        return self.b(h.float())


class _Autocast64(_Autocast):
    """Mixed-precision code run in float64: autocast casts no float64 op, so the block changes nothing."""

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.tanh(self.a(x))
        return self.b(h)


@pytest.mark.parametrize("ambient", [False, True])
def test_autocast_changes_nothing_in_a_float64_model_and_keeps_the_split(ambient):
    """A float64 model whose forward enters torch.autocast (or queried inside the caller's): its ops
    stay float64 there, yet the capture was refused (full forwards, 3x slower) with a warning that
    model(x) runs in half precision, and an ambient autocast was warned about."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10, dtype=torch.float64), torch.randint(0, 4, (6,))
    model = _Autocast64().double()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        assert model(x).dtype == torch.float64
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ambient):
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS).bind((x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6)).grad
    assert oracle.blocks
    loss = _by_name(ref, oracle, x, y)  # textbook: one parameter at a time on a copy, by name
    base = loss(theta)
    want = np.array([(loss(theta + 1e-6 * e) - base) / 1e-6 for e in np.eye(theta.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-8)


def test_autocast_in_the_forward_is_refused_not_dropped():
    """fx does not record ``with torch.autocast``: the captured steps ran in float32, model(x) in
    bfloat16, a difference the float32 self-check let pass on two samples. Forward differences then
    took model(x)'s base loss and the graph's perturbed ones: every coordinate was off by their
    difference over mu (0.037 on b.bias, whose largest gradient is 0.11)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10), torch.randint(0, 4, (6,))
    model = _Autocast()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert "torch.autocast" in said, said

    loss = _by_name(ref, oracle, x, y)  # textbook: the model as written, one coordinate at a time, by name
    head = slice(oracle.param_info[2].slice.start, theta.size)  # b: smooth in its own parameters
    want = _float32_differences(loss, theta, rows=head)
    np.testing.assert_allclose(est[head], want, atol=1e-4)


@pytest.mark.parametrize("blocks", [None, "none"])
def test_queries_inside_an_ambient_autocast_run_the_model_in_its_dtype_with_a_warning(blocks):
    """Mixed-precision code calls zo.estimate_gradient inside ``with torch.autocast("cpu",
    dtype=torch.bfloat16)``. The oracle's forwards ran in bfloat16 (a finite difference mostly
    rounding, which the constructor refuses for a half model), and autocast's cache of the cast
    weights hid parameters perturbed in place: full forwards returned the base loss, every
    coordinate 0 (244 of 244), and zo.train did not move. Reference: the model in float32 by
    hand, one coordinate at a time through functional_call on a copy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    ref = copy.deepcopy(net)
    oracle = TorchOracle(net, CE_ROWS, (x, y), blocks=blocks)
    theta = oracle.initial_params()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad

    loss = _by_name(ref, oracle, x, y)  # textbook: the model as written, one coordinate at a time, by name
    want = _float32_differences(loss, theta)
    np.testing.assert_allclose(est, want, atol=1e-4)
    assert any("torch.autocast" in str(w.message) for w in rec), [str(w.message) for w in rec]


@pytest.mark.parametrize("blocks", [None, "none"])
def test_torch_before_2_4_is_autocast_enabled_without_a_device_argument(monkeypatch, blocks):
    """pyproject declared torch>=2.1 (2.2 now), but ``torch.is_autocast_enabled(device_type)`` came in torch 2.4
    (before it the function took no argument and answered for CUDA only, the CPU's being
    ``torch.is_autocast_cpu_enabled()``): every TorchOracle query and fx trace raised TypeError
    there. With torch 2.1-2.3's function in place, the oracle builds, estimates, and still turns
    off an ambient CPU autocast. Reference: the model in float32 by hand, one coordinate at a time."""
    import zoracle.adapters._torch_graph as graph_module
    import zoracle.adapters.torch as torch_module

    native = torch.is_autocast_enabled

    class Torch23:  # torch as the adapters see it (torch's own autocast keeps its API)
        @staticmethod
        def is_autocast_enabled():  # torch 2.1-2.3: no device argument, CUDA's state
            return native("cuda")

        @staticmethod
        def is_autocast_cpu_enabled():  # deprecated from 2.4 on; warned nothing before it
            return native("cpu")

        def __getattr__(self, name):
            return getattr(torch, name)

    for module in (torch_module, graph_module):
        monkeypatch.setattr(module, "torch", Torch23())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    ref = copy.deepcopy(net)
    oracle = TorchOracle(net, CE_ROWS, (x, y), blocks=blocks)
    theta = oracle.initial_params()
    loss = _by_name(ref, oracle, x, y)  # textbook: the model as written, one coordinate at a time, by name
    want = _float32_differences(loss, theta)
    np.testing.assert_allclose(zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad, want, atol=1e-4)
    with pytest.warns(RuntimeWarning, match="queried inside torch.autocast"), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad
    np.testing.assert_allclose(est, want, atol=1e-4)


def test_a_forward_entering_autocast_is_refused_when_built_inside_an_ambient_autocast():
    """Built inside the caller's torch.autocast, the forward's own autocast block left the state
    fx's check reads as it found it (enabled), so fx's capture was kept; only the self-check,
    crashing under the caller's autocast, refused it, for a reason that did not say why
    ("the captured split failed (RuntimeError: Index put requires the source and destination
    dtypes match ...)"). Reference: the model as written, by hand, one coordinate at a time."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10), torch.randint(0, 4, (6,))
    model = _Autocast()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert "forward enters torch.autocast" in said, said

    loss = _by_name(ref, oracle, x, y)  # textbook: the model as written, one coordinate at a time, by name
    head = slice(oracle.param_info[2].slice.start, theta.size)
    want = _float32_differences(loss, theta, rows=head)
    np.testing.assert_allclose(est[head], want, atol=1e-4)


def test_a_forward_entering_autocast_estimates_inside_a_disabled_autocast_block():
    """Training loops switch mixed precision with ``torch.autocast(..., enabled=use_amp)``; with
    use_amp=False that block turns autocast off, but keeps autocast's nesting above 0, so the
    forward's own autocast block kept the weights it cast on leaving: a.weight, perturbed in place
    by the full forwards, was read stale and every a.* coordinate came out 0 (88 of 88, largest
    gradient 0.21). Reference: the model as written, by hand, one coordinate at a time."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10), torch.randint(0, 4, (6,))
    model = _Autocast()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refused split's warning
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3)).grad

    loss = _by_name(ref, oracle, x, y)  # textbook: the model as written, one coordinate at a time, by name
    want = _float32_differences(loss, theta)
    np.testing.assert_allclose(est, want, atol=1e-4)


def test_a_drawing_forward_with_weights_captured_for_the_whole_batch_warns_instead_of_crashing():
    """docs/pytorch.md: a forward that draws from torch's generator and may give the same output
    twice (batch-wise stochastic depth) is tried under other seeds, and warned about as not
    repeatable. That check ran the model on two samples: a forward with weights captured for the
    whole batch (which otherwise runs, its split retired) crashed the first query with torch's
    size error, as the loss's two-sample check did before 5b0d2f5. Reference: the first query's
    loss is one of the two the forward can give, cross-entropy of fc(x) * w or of zeros, by hand."""
    B = 8

    class Coupled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("w", torch.linspace(0.5, 1.5, B, dtype=torch.float64)[:, None])

        def forward(self, x):
            h = self.fc(x) * self.w  # (B, 1) weights: any other number of rows raises
            return h if bool(torch.rand(()) < 0.5) else torch.zeros_like(h)

    for seed in range(6):  # some draw the same twice: the seed check runs (others differ at once)
        torch.manual_seed(seed)
        model = Coupled().double()
        x, y = torch.randn(B, 3, dtype=torch.float64), torch.randint(0, 2, (B,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            oracle = TorchOracle(model, CE_ROWS, (x, y))
            theta = oracle.initial_params()
            got = oracle(theta)
        assert any("model(x) is not repeatable" in str(c.message) for c in caught)
        W, b = theta[:6].reshape(2, 3), theta[6:]
        z = (x.numpy() @ W.T + b) * np.linspace(0.5, 1.5, B)[:, None]
        m = z.max(1)
        kept = float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(B), y.numpy()]))
        assert min(abs(got - kept), abs(got - np.log(2))) <= 1e-12


def test_a_hook_that_changes_nothing_at_a_zero_head_still_retires_the_split():
    """With a zero-initialised head, ``b``'s pre-hook changes no loss at the initial parameters
    (the unmoved check) and no loss the self-check sees: only the check with all parameters moved
    retires the split. Kept, the closed form for ``b.weight`` (which does not run the hook) is
    wrong as soon as the head has moved (a training step later)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 10, dtype=torch.float64), torch.randint(0, 4, (6,))
    torch.manual_seed(0)
    model = _ScaledInput().double()
    with torch.no_grad():
        model.c.weight.zero_()
    ref = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        oracle = TorchOracle(model, CE_ROWS).bind((x, y))
        theta = oracle.initial_params()
        zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3))
    said = " ".join(str(w.message) for w in rec if w.category is RuntimeWarning)
    assert "'b' run(s) forward hooks" in said, said

    loss = _by_name(ref, oracle, x, y)  # textbook: one parameter at a time on a copy, by name
    head = [i for i in oracle.param_info if i.name == "c.weight"][0].slice
    moved = theta.copy()  # the head after some training
    moved[head] = np.random.default_rng(1).normal(size=head.stop - head.start) * 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = zo.estimate_gradient(oracle, moved, zo.CGE(mu=1e-3)).grad
    base = loss(moved)
    want = np.array([(loss(moved + 1e-3 * e) - base) / 1e-3 for e in np.eye(moved.size)])
    np.testing.assert_allclose(est, want, rtol=1e-6, atol=1e-9)


def test_the_aliasing_check_finds_a_shared_element_as_a_set_intersection_does():
    """`_refuse_aliased` marks one parameter's element addresses in a table and looks the other's up
    (np.intersect1d sorted both: minutes before refusing a tied 50,000 x 768 embedding). Checked
    against Python's set intersection of the addresses on strided views of one buffer, stride 0
    (expanded) and overlapping windows included."""
    from adapters._torch_guards import _addresses, _share_an_element

    rng = np.random.default_rng(0)
    base = torch.zeros(4096, dtype=torch.float64)
    for _ in range(400):
        views = []
        for _ in range(2):
            ndim = int(rng.integers(1, 4))
            shape = tuple(int(n) for n in rng.integers(1, 6, ndim))
            stride = tuple(int(s) for s in rng.integers(0, 9, ndim))
            span = sum((n - 1) * s for n, s in zip(shape, stride))
            views.append(base.as_strided(shape, stride, int(rng.integers(0, 4096 - span))))
        a, b = views
        want = bool(set(_addresses(a).tolist()) & set(_addresses(b).tolist()))
        assert _share_an_element(a, b) == want == _share_an_element(b, a), (a.shape, a.stride(), b.shape, b.stride())


def test_a_parameter_frozen_after_the_oracle_was_built_is_refused_not_trained():
    """A layer frozen with requires_grad_(False) after the oracle was built stayed in its flat
    vector: estimates perturbed it and zo.train kept moving it (0.128 after 3 epochs), while the
    frozen layer of a model built frozen stays fixed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    zo.train(oracle, oracle.initial_params(), epochs=1, estimator=zo.CGE(mu=1e-4), optimizer=zo.sgd(0.5),
             progress=False)
    model[0].requires_grad_(False)
    before = model[0].weight.detach().clone()
    with pytest.raises(zo.ArgumentError, match=r"'0\.weight', '0\.bias' were frozen.*build a new TorchOracle"):
        zo.train(oracle, oracle.initial_params(), epochs=3, estimator=zo.CGE(mu=1e-4), optimizer=zo.sgd(0.5),
                 progress=False)
    assert torch.equal(model[0].weight, before)
    # a new oracle leaves the frozen layer out, and training leaves it where it is
    fresh = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    assert fresh.parameter_names == ["2.weight", "2.bias"]
    zo.train(fresh, fresh.initial_params(), epochs=3, estimator=zo.CGE(mu=1e-4), optimizer=zo.sgd(0.5),
             progress=False)
    assert torch.equal(model[0].weight, before)




def test_pruning_after_the_oracle_was_built_retires_the_split():
    """``torch.nn.utils.prune`` applied after the oracle was built (dense steps, then prune and
    fine-tune): the hook check ran model(x) without hooks on the weight the pruning pre-hook had just
    written, and the self-check's first and last coordinates were kept by the mask, so the split kept
    its closed forms, which ignore weight_mask: pruned entries got gradients up to 0.073 (autograd:
    0), the norm 0.835 against 0.756, and no warning."""
    import torch.nn.utils.prune as prune

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3),
                             nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).double()

    def pruned(m):
        torch.manual_seed(1)
        prune.l1_unstructured(m[3], "weight", amount=0.5)
        prune.random_unstructured(m[6], "weight", amount=0.3)
        return m

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    model = build()
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    pruned(model)
    with pytest.warns(RuntimeWarning, match="torch.nn.utils.prune"):
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    ref = pruned(build())
    params = dict(ref.named_parameters())
    CE_ROWS(ref(x), y).mean().backward()
    want = np.concatenate([params[n if n in params else n + "_orig"].grad.reshape(-1).numpy()
                           for n in oracle.parameter_names])
    np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)


def test_a_masking_pre_hook_registered_after_the_oracle_was_built_retires_the_split():
    """A hand-written reparametrization (the weight moved to ``weight_raw``, a pre-hook writing
    ``mod.weight = mod.weight_raw * mod.mask``) registered after the oracle was built: the hook check
    ran model(x) without hooks after the hooked call had written the moved weight, so the split kept
    closed forms that ignore the mask (0.053 off against a largest partial of 0.114, no warning)."""
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def masked(m):
        lin = m[2]
        lin.register_parameter("weight_raw", lin._parameters.pop("weight"))
        mask = torch.ones(6, 6, dtype=torch.float64)
        mask[1::2, ::3] = 0
        mask[0, 0] = mask[-1, -1] = 1
        lin.register_buffer("mask", mask)

        def hook(mod, inp):
            mod.weight = mod.weight_raw * mod.mask

        lin.register_forward_pre_hook(hook)
        return m

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    model = build()
    oracle = TorchOracle(model, CE_ROWS, (x, y))
    theta = oracle.initial_params()
    zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    masked(model)
    with pytest.warns(RuntimeWarning, match="forward hooks"):
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    ref = masked(build())
    params = dict(ref.named_parameters())
    CE_ROWS(ref(x), y).mean().backward()
    want = np.concatenate([params["2.weight_raw" if n == "2.weight" else n].grad.reshape(-1).numpy()
                           for n in oracle.parameter_names])
    np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)




@pytest.mark.parametrize("body, head", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_a_model_mixing_float32_and_float64_parameters_is_refused(body, head):
    """Trainable parameters of two float dtypes were accepted, the flat vector taking the first one's:
    a float64 head behind a float32 body had its weights rounded to float32 by the oracle's loads
    (moved 2.3e-9), and a float32 head behind a float64 body retired the split with a false
    "captured graph gives loss ... but model(x) gives ..." warning. dtype= converts the model."""
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 5).to(body), nn.Linear(5, 3).to(head)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x.to(self.body.weight.dtype))).to(self.head.weight.dtype))

    torch.manual_seed(0)
    model = Mixed()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    with pytest.raises(zo.ArgumentError, match=r"mix torch\.float\d+ \('body\.weight'.*'head\.weight', 'head\.bias'.*"
                                               r"dtype=torch\.float64"):
        TorchOracle(model, CE_ROWS, (x, y))
    oracle = TorchOracle(model, CE_ROWS, (x, y), dtype=torch.float64)
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    model.zero_grad()
    CE_ROWS(model(x), y).mean().backward()
    want = np.concatenate([p.grad.reshape(-1).numpy() for p in (model.body.weight, model.body.bias,
                                                                  model.head.weight, model.head.bias)])
    np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)


class _Symmetric(nn.Module):
    def forward(self, X):
        return (X + X.T) / 2


class _SymmetricHidden(nn.Module):
    """A hidden layer with a registered parametrization; ``cache_inside`` wraps the forward's own
    uses in ``parametrize.cached()``, as torch's docs suggest for a weight read several times."""

    def __init__(self, cache_inside=False):
        super().__init__()
        self.a, self.b, self.cache_inside = nn.Linear(4, 4), nn.Linear(4, 3), cache_inside
        torch.nn.utils.parametrize.register_parametrization(self.a, "weight", _Symmetric())

    def forward(self, x):
        if not self.cache_inside:
            return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))
        with torch.nn.utils.parametrize.cached():
            return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))


def test_queries_inside_parametrize_cached_are_refused():
    """``torch.nn.utils.parametrize.cached()`` keeps a parametrized weight as first computed: a
    TorchOracle queried inside it perturbed and loaded the original with no effect on any forward,
    its CGE entries all 0 (0.258 off autograd's on this model) and plain calls at moved originals
    the stale loss. Refused; a forward that uses cached() inside itself stays exact."""
    P = torch.nn.utils.parametrize
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    for cache_inside in (False, True):
        model = _SymmetricHidden(cache_inside).double()
        oracle = TorchOracle(model, CE_ROWS, (x, y))
        theta = oracle.initial_params()
        model.zero_grad()
        CE_ROWS(model(x), y).mean().backward()
        want = np.concatenate([model.get_parameter(i.name).grad.reshape(-1).numpy() for i in oracle.param_info])
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
        np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)
        with P.cached():
            with pytest.raises(zo.ArgumentError, match=r"inside torch\.nn\.utils\.parametrize\.cached\(\)"):
                oracle(theta)
            with pytest.raises(zo.OracleError, match=r"inside torch\.nn\.utils\.parametrize\.cached\(\)"):
                zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
            with pytest.raises(zo.ArgumentError, match=r"parametrize\.cached\(\)"):
                oracle.predict(theta, x)
            with pytest.raises(zo.ArgumentError, match=r"parametrize\.cached\(\)"):
                TorchOracle(_SymmetricHidden(cache_inside).double(), CE_ROWS, (x, y))
            plain = TorchOracle(nn.Sequential(nn.Linear(4, 3)).double(), CE_ROWS, (x, y))  # nothing parametrized
            assert np.isfinite(plain(plain.initial_params()))
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))  # outside again
        np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)




class _ComplexWeight(nn.Module):
    """A complex linear map (a Fourier-layer style weight); ``split=True`` holds it as a real
    ``(..., 2)`` Parameter made complex in forward, as the refusal advises."""

    def __init__(self, split=False):
        super().__init__()
        w = torch.randn(4, 4, dtype=torch.complex128) * 0.5
        self.w = nn.Parameter(torch.view_as_real(w).clone() if split else w)
        self.split, self.out = split, nn.Linear(4, 3).double()

    def forward(self, x):
        w = torch.view_as_complex(self.w) if self.split else self.w
        return self.out((x.to(w.dtype) @ w).abs())


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64])
def test_complex_parameters_are_refused_before_dtype_converts_them(dtype):
    """A complex Parameter was refused as "half precision ... pass dtype=torch.float32"; following
    that advice, dtype= cast it to real, dropping its imaginary part (torch's UserWarning only), and
    the oracle ran another model (loss 1.049 against the model's 0.865)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    model = _ComplexWeight()
    before = model.w.detach().clone()
    with pytest.raises(zo.ArgumentError, match=r"parameters 'w' are complex \(torch\.complex128\).*torch\.complex"):
        TorchOracle(model, CE_ROWS, (x, y), dtype=dtype)
    assert model.w.dtype == torch.complex128 and torch.equal(model.w.detach(), before)
    split = _ComplexWeight(split=True)  # the workaround: exact against autograd
    oracle = TorchOracle(split, CE_ROWS, (x, y), dtype=torch.float64)
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    split.zero_grad()
    CE_ROWS(split(x), y).mean().backward()
    want = np.concatenate([split.get_parameter(i.name).grad.reshape(-1).numpy() for i in oracle.param_info])
    np.testing.assert_allclose(est.grad, want, rtol=0, atol=1e-8)




class _SharedAcrossDepth(nn.Module):
    """One weight applied at every depth, listed once per use in an ``nn.ParameterList``."""

    def __init__(self, depth=3):
        super().__init__()
        w = nn.Parameter(torch.randn(5, 5) * 0.3)
        self.ws, self.out = nn.ParameterList([w] * depth), nn.Linear(5, 3)

    def forward(self, x):
        for w in self.ws:
            x = torch.tanh(x @ w)
        return self.out(x)


def test_a_parameter_listed_twice_in_a_parameter_list_keeps_vectorized_full_forwards():
    """``named_parameters(recurse=False)`` names such a weight once ('ws.0'): functional_call left
    'ws.1' and 'ws.2' unperturbed, so the reach check warned that the forward reads 'ws.0' "through a
    copy" and every batched query ran one forward at a time (4x slower on a 16-wide model)."""
    torch.manual_seed(0)
    model = _SharedAcrossDepth().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y), blocks="none")
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
        P = theta + 1e-2 * np.random.default_rng(0).standard_normal((4, theta.size))
        got = oracle.batch(P)
    want = []
    for p in P:
        oracle.load(p)
        with torch.no_grad():
            want.append(float(CE_ROWS(model(x), y).mean()))
    np.testing.assert_allclose(got, want, rtol=1e-13)
    oracle.load(theta)
    model.zero_grad()
    CE_ROWS(model(x), y).mean().backward()
    grad = np.concatenate([model.get_parameter(i.name).grad.reshape(-1).numpy() for i in oracle.param_info])
    np.testing.assert_allclose(est.grad, grad, rtol=0, atol=1e-8)


@pytest.mark.parametrize("estimator", [zo.RGE(directions=20), zo.SNES(population=6)])
def test_a_model_failing_under_rge_is_an_oracle_error_named_by_its_step(estimator):
    """RGE and SNES size their batched calls with TorchOracle's max_queries_per_call, which runs the
    model on the bound batch: a batch the model fails on (a feature column missing) escaped as the
    bare RuntimeError, with no step, where CGE's base point reports an OracleError naming it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    X = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    batches = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 16, 8)] + [(X[32:, :2], y[32:])]
    oracle = TorchOracle(model, CE_ROWS)
    steps = []
    with pytest.raises(zo.OracleError, match=r"max_queries_per_call .* of training step 2 \(epoch 0, batch 2\): "
                                             r"RuntimeError: mat1 and mat2 shapes cannot be multiplied") as info:
        zo.train(oracle, oracle.initial_params(), batches=batches, estimator=estimator, progress=False, rng=0,
                 callbacks=[lambda e, r, p: steps.append(r["step"]) if e == "step" else None])
    assert isinstance(info.value.cause, RuntimeError) and steps == [0, 1]
    # the reference: CGE on the same batches, an OracleError at the step's base point
    with pytest.raises(zo.OracleError, match=r"base point \(unperturbed params\) of training step 2"):
        zo.train(oracle, oracle.initial_params(), batches=batches, estimator=zo.CGE(), progress=False, rng=0)
    with pytest.raises(zo.OracleError, match=r"RuntimeError: mat1 and mat2"):
        zo.zo_grasp(oracle, oracle.initial_params(), blocks=oracle.param_info, batch=batches[-1], directions=4)




class _DFTFeatures(nn.Module):
    """A fixed complex buffer (a DFT matrix) ahead of a real head: nothing complex is trained."""

    def __init__(self, n=8):
        super().__init__()
        k = torch.arange(n, dtype=torch.float64)
        self.register_buffer("F", torch.exp(-2j * torch.pi * k[:, None] * k[None, :] / n))
        self.head = nn.Linear(n, 3)

    def forward(self, x):
        return self.head((x.to(self.F.dtype) @ self.F).abs().to(x.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_converts_no_complex_buffer_to_real(dtype):
    """dtype= converted the model with model.to(dtype=...), which casts a complex buffer to real,
    dropping its imaginary part (torch's UserWarning only): the oracle ran another model (loss 1.660
    against the model's 2.122 on this one). It converts floating tensors only, as model.double() does."""
    torch.manual_seed(0)
    model = _DFTFeatures()
    ref = copy.deepcopy(model)
    ref = ref.double() if dtype == torch.float64 else ref.float()  # the reference: floating tensors converted
    assert ref.F.dtype == torch.complex128
    x, y = torch.randn(16, 8, dtype=dtype), torch.randint(0, 3, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch's "Casting complex values to real" included
        oracle = TorchOracle(model, CE_ROWS, (x, y), dtype=dtype)
        got = oracle(oracle.initial_params())
    assert model.F.dtype == torch.complex128 and model.head.weight.dtype == dtype
    with torch.no_grad():
        want = float(CE_ROWS(ref(x), y).mean())
    assert got == pytest.approx(want, rel=1e-6)


class _ComplexPhase(nn.Module):
    """A 1-D complex Parameter (a per-feature phase), trainable or frozen."""

    def __init__(self, frozen=False):
        super().__init__()
        self.lin, self.out = nn.Linear(4, 4).double(), nn.Linear(4, 3).double()
        self.phase = nn.Parameter(torch.randn(4, dtype=torch.complex128), requires_grad=not frozen)

    def forward(self, x):
        return self.out((self.lin(x).to(self.phase.dtype) * self.phase).abs())


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_a_frozen_complex_parameter_is_kept_and_a_trainable_1d_one_refused(dtype):
    """Only trainable complex parameters are refused (a 1-D one too): a frozen one is no part of
    the flat vector, and stays complex whatever dtype= asks (a cast to a real dtype dropped its
    imaginary part: loss 1.268 for the model's 1.192)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    with pytest.raises(zo.ArgumentError, match=r"parameters 'phase' are complex"):
        TorchOracle(_ComplexPhase(), CE_ROWS, (x, y), dtype=dtype)
    frozen = _ComplexPhase(frozen=True)
    with torch.no_grad():
        want = CE_ROWS(frozen(x), y).mean().item()  # the reference: the model's own loss
    oracle = TorchOracle(frozen, CE_ROWS, (x, y), dtype=dtype)
    assert oracle(oracle.initial_params()) == pytest.approx(want, rel=1e-12)
    assert frozen.phase.dtype == torch.complex128
