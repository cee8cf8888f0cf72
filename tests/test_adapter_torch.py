"""TorchOracle: feature-reuse CGE against torch autograd, BatchNorm semantics, layout, errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import Step, TorchOracle, cross_entropy, fork  # noqa: E402
from zoracle.adapters.torch_models import DigitsCNN, ResNet20, make_cnn, make_mlp  # noqa: E402
from zoracle.testing import check_oracle  # noqa: E402

CE = nn.CrossEntropyLoss(reduction="none")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(shape, n, seed=0, dtype=np.float64, classes=10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(dtype), rng.integers(0, classes, n)


def autograd(model, x, y):
    model.zero_grad()
    loss = CE(model(torch.as_tensor(x)), torch.as_tensor(y)).mean()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]).numpy()


def relerr(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


# ---------------------------------------------------------------------------- gradients
def test_mlp_central_cge_matches_autograd_all_coordinates():
    torch.manual_seed(0)
    model = make_mlp(in_features=16, hidden=16, depth=4).double()
    x, y = data((16,), 12)
    oracle = TorchOracle(model, CE, (x, y))
    theta = oracle.initial_params()
    assert len(oracle.blocks) == 5
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-5, scheme="central"))
    assert est.nfev == 2 * theta.size + 1
    assert relerr(est.grad, autograd(model, x, y)) < 1e-6
    check_oracle(oracle, theta)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnn_batchnorm_central_cge_matches_autograd(mode):
    torch.manual_seed(1)
    model = DigitsCNN(width=4).double()
    x, y = data((1, 8, 8), 10, seed=1)
    model.train()
    model(torch.as_tensor(x))  # give eval mode non-trivial running statistics
    getattr(model, mode)()
    before = buffers(model)
    oracle = TorchOracle(model, CE, (x, y), update_stats=False)
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    check_oracle(oracle, theta)
    after = buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "oracle queries moved running stats"
    oracle.load(theta)  # queries leave the last queried parameters in the shared module
    assert relerr(est.grad, autograd(model, x, y)) < 1e-6


@pytest.mark.parametrize("make", [lambda: DigitsCNN(width=4), lambda: make_cnn(4), lambda: make_cnn(4, batchnorm=False)],
                         ids=["DigitsCNN", "make_cnn", "make_cnn-no-batchnorm"])
def test_the_zoo_cnns_spend_no_queries_on_a_bias_batchnorm_cancels(make):
    """A convolution's bias right before a BatchNorm in train mode is cancelled by its mean subtraction:
    its coordinates were queries spent for nothing, and train named 0.bias and 3.bias as estimates that
    stay 0. The zoo's CNNs leave that bias out (torchvision's bias=False); without BatchNorm it stays."""
    torch.manual_seed(0)
    model = make()
    layers = list(model)
    for conv, nxt in zip(layers, layers[1:]):
        if isinstance(conv, nn.Conv2d):
            assert (conv.bias is None) == isinstance(nxt, nn.BatchNorm2d), (conv, nxt)
    oracle = TorchOracle(model, CE)
    x, y = data((1, 8, 8), 48, seed=0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train. the gradient estimates of")
        zo.train(oracle, oracle.initial_params(), batches=zo.Minibatches((x, y), batch_size=16, seed=0), epochs=1,
                 estimator=zo.CGE(mu=5e-3), optimizer=zo.sgd(0.1), rng=0, progress=False)


def test_cnn_float32_forward_cosine():
    torch.manual_seed(2)
    model = make_cnn(channels=8)
    x, y = data((1, 8, 8), 32, seed=2, dtype=np.float32)
    oracle = TorchOracle(model, cross_entropy, (x, y))
    theta = oracle.initial_params()
    assert theta.dtype == np.float32
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=5e-3))
    assert est.grad.dtype == np.float32
    assert cosine(est.grad.astype(np.float64), autograd(model, x, y).astype(np.float64)) >= 0.99


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_benchmark_cnn_split_equals_full_forwards(mode):
    # eval mode: no layer mixes samples, so unchanged (perturbation, sample) pairs are skipped
    torch.manual_seed(3)
    model = make_cnn(channels=4).double()
    x, y = data((1, 8, 8), 6, seed=3)
    model.train()
    model(torch.as_tensor(x))
    getattr(model, mode)()
    oracle = TorchOracle(model, CE, (x, y), update_stats=False)
    theta = oracle.initial_params()
    check_oracle(oracle, theta, n_coords=16)
    full = TorchOracle(model, CE, (x, y), blocks="none", update_stats=False)
    coords = np.arange(theta.size)
    np.testing.assert_allclose(oracle.coordinate_losses(theta, coords, 1e-2), full.coordinate_losses(theta, coords, 1e-2),
                               rtol=1e-12, atol=1e-12)


def _spread_coords(oracle, rng, total):
    """Coordinates in every block, more where the suffix is cheap (late blocks)."""
    flops = np.asarray(oracle.suffix_flops(), dtype=np.float64)
    w = 1.0 / np.maximum(flops, 0.05 * flops.max())
    sizes = np.array([b.stop - b.start for b in oracle.blocks])
    counts = np.minimum(sizes, np.maximum(8, np.round(total * w / w.sum()).astype(int)))
    while counts.sum() < total:  # top up the cheapest blocks that still have room
        room = np.flatnonzero(counts < sizes)
        j = room[np.argmax(w[room])]
        counts[j] = min(sizes[j], counts[j] + (total - counts.sum()))
    parts = [rng.choice(np.arange(b.start, b.stop), size=int(c), replace=False)
             for b, c in zip(oracle.blocks, counts)]
    return np.sort(np.concatenate(parts))


@pytest.mark.slow
def test_resnet20_split_check_oracle_and_autograd():
    torch.manual_seed(4)
    model = ResNet20().double()
    assert 265_000 < sum(p.numel() for p in model.parameters()) < 275_000
    # 16x16 images, not CIFAR's 32x32: the same network (it pools globally before the head) and
    # the same checks at a quarter of the convolution work (this test took 30 s of the default run)
    x, y = data((3, 16, 16), 2, seed=4)
    oracle = TorchOracle(model, CE, (x, y))
    assert len(oracle.blocks) == 39  # every conv and BatchNorm, plus the head (reference: 12)
    theta = oracle.initial_params()
    check_oracle(oracle, theta, n_coords=4, rng=1)
    # central differences against autograd, coordinate by coordinate: 400 put 8 or more in each of
    # the 39 blocks (a block's suffix returning its losses out of order fails it, as with 2,000)
    coords = _spread_coords(oracle, np.random.default_rng(0), 400)
    assert len(coords) >= 400
    owner = np.searchsorted([b.start for b in oracle.blocks], coords, side="right") - 1
    assert set(owner.tolist()) == set(range(39))
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"), coordinates=coords)
    g = autograd(model, x, y)
    assert relerr(est.grad[coords], g[coords]) < 1e-6
    assert np.all(np.delete(est.grad, coords) == 0)


def test_resnet20_forward_equals_plain_blocks():
    torch.manual_seed(5)
    model = ResNet20(width=4).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = x
    ref = torch.relu(model.bn1(model.conv1(ref)))
    for blk in model.layers:
        ref = nn.Module.__call__(blk, ref)  # BasicBlock.forward, written without the chain
    ref = model.linear(ref.mean(dim=(2, 3)))
    assert torch.allclose(model(x), ref)


# ---------------------------------------------------------------------------- BatchNorm stats
def test_running_stats_updated_only_by_plain_calls():
    torch.manual_seed(6)
    model = DigitsCNN(width=4).double().train()
    x, y = data((1, 8, 8), 8, seed=6)
    oracle = TorchOracle(model, CE, (x, y))
    theta = oracle.initial_params()
    before = buffers(model)
    feats = oracle.prefix(theta, 2)
    oracle.suffix(feats, theta, 2, np.arange(oracle.blocks[2].start, oracle.blocks[2].start + 5), 1e-3)
    oracle.coordinate_losses(theta, np.array([0, 5, 100]), 1e-3)
    oracle.batch(np.stack([theta, theta]))
    assert all(torch.equal(before[k], buffers(model)[k]) for k in before)
    l1 = oracle(theta)
    moved = buffers(model)
    assert not torch.equal(before["1.running_mean"], moved["1.running_mean"])
    assert oracle(theta) == l1  # train-mode loss does not depend on running stats
    model.eval()
    frozen = buffers(model)
    oracle(theta)
    assert all(torch.equal(frozen[k], buffers(model)[k]) for k in frozen)


def test_batched_suffix_uses_per_perturbation_batch_statistics():
    # a BatchNorm after the perturbed layer must normalize each perturbation separately
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 6), nn.BatchNorm1d(6),
                          nn.ReLU(), nn.Linear(6, 3)).double().train()
    x, y = data((5,), 9, seed=7, classes=3)
    oracle = TorchOracle(model, CE, (x, y))
    theta = oracle.initial_params()
    coords = np.arange(theta.size)
    got = oracle.coordinate_losses(theta, coords, 0.3)
    want = []
    for i in coords:
        t = theta.copy()
        t[i] += 0.3
        want.append(oracle(t))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- other layer paths
@pytest.mark.parametrize("mode,unfold", [("train", True), ("eval", True), ("train", False)])
def test_conv_variants_and_dense_paths(mode, unfold, monkeypatch):
    if not unfold:  # large inputs gather shifted channels from the padded input instead of patches
        from zoracle.adapters import _torch_chain

        monkeypatch.setattr(_torch_chain, "_UNFOLD_BYTES", 0)
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), nn.BatchNorm2d(4), nn.GELU(),
        nn.Conv2d(4, 3, 3, padding="same", bias=False), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(3 * 16, 5),
    ).double()
    x, y = data((2, 8, 8), 4, seed=8, classes=5)
    getattr(model, mode)()
    oracle = TorchOracle(model, CE, (x, y))
    theta = oracle.initial_params()
    check_oracle(oracle, theta, n_coords=24)
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    assert relerr(est.grad, autograd(model, x, y)) < 1e-6



@settings(max_examples=60)
@given(b=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 3), kw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       ph=st.integers(0, 2), pw=st.integers(0, 2), sh=st.integers(1, 3), sw=st.integers(1, 3),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]), seed=st.integers(0, 2**16))
def test_unfold_equals_torch_unfold(b, c, h, w, kh, kw, dh, dw, ph, pw, sh, sw, layout, seed):
    """The closed forms' ``unfold`` (a strided copy or a gather, by the window's shape) gives
    ``F.unfold``'s values and layout bit for bit, whatever the input's memory layout; with
    ``positions_first`` its transpose, contiguous."""
    from torch.nn import functional as F

    from zoracle.adapters._torch_chain import unfold

    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # no output position: F.unfold refuses too
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h + 1, w + 2, generator=g, dtype=torch.float64)
    x = x[:, :, 1:, 2:] if layout == "strided" else x[:, :, :h, :w].contiguous()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    got = unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    assert got.shape == ref.shape and ref.is_contiguous() and got.is_contiguous()
    assert torch.equal(got, ref)
    rows = unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw), positions_first=True)
    assert rows.is_contiguous() and torch.equal(rows, ref.transpose(1, 2))


@pytest.mark.parametrize("w,sw", [(20, 1), (40, 1), (40, 2)])
def test_unfold_long_rows(w, sw):
    """Wide windows take the strided copy (stride 1, at least 16 output columns), the rest the
    gather: both give ``F.unfold`` bit for bit."""
    from torch.nn import functional as F

    from zoracle.adapters._torch_chain import unfold

    x = torch.randn(2, 3, 5, w, generator=torch.Generator().manual_seed(w + sw))
    ref = F.unfold(x, (3, 3), padding=(1, 1), stride=(1, sw))
    assert torch.equal(unfold(x, (3, 3), padding=(1, 1), stride=(1, sw)), ref)
    assert torch.equal(unfold(x, (3, 3), padding=(1, 1), stride=(1, sw), positions_first=True), ref.transpose(1, 2))


@settings(max_examples=40)
@given(vals=st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-45, float("inf"), float("-inf"), float("nan")]),
                     min_size=12, max_size=12))
def test_nonzero_rows_is_any_nonzero(vals):
    """The sparse-rows test of which (perturbation, sample) rows changed is ``(D != 0).any``
    per row: NaN, infinities and subnormals count as changed, +0 and -0 do not."""
    from zoracle.adapters._torch_tensors import _nonzero_rows

    D = torch.tensor(vals, dtype=torch.float32).view(2, 3, 2, 1)
    assert torch.equal(_nonzero_rows(D, 6), (D != 0).reshape(6, -1).any(dim=-1))
    assert torch.equal(_nonzero_rows(D[:, :, :0], 6), torch.zeros(6, dtype=torch.bool))

class _Tokens(nn.Module):
    """A non-Sequential model: graph capture splits it (3-D Linear, LayerNorm, flatten, Linear)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.norm(self.lin(x)).flatten(1))


class _Branchy(_Tokens):
    """Data-dependent control flow: torch.fx cannot trace it, so the oracle runs full forwards."""

    def forward(self, x):
        h = self.norm(self.lin(x))
        h = torch.stack([row for row in h.unbind(1)], 1)  # iterating a traced value stops torch.fx
        return self.head(h.flatten(1))


def test_fallback_and_generic_layers_warn_once_and_stay_exact():
    torch.manual_seed(9)
    model = _Branchy().double()
    x, y = data((3, 4), 5, seed=9, classes=3)
    oracle = TorchOracle(model, CE, (x, y))
    assert oracle.blocks == []
    theta = oracle.initial_params()
    with pytest.warns(RuntimeWarning, match="cannot trace.*full forward"):
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    assert relerr(est.grad, autograd(model, x, y)) < 1e-6
    # the same layers captured as a graph: 3-D Linear (dense path), LayerNorm (generic loop)
    plain = _Tokens().double()
    plain.load_state_dict(model.state_dict())
    split = TorchOracle(plain, CE, (x, y))
    assert split.block_names == ["lin", "norm", "head"]
    check_oracle(split, theta)
    est2 = zo.estimate_gradient(split, theta, zo.CGE(mu=1e-6, scheme="central"))
    np.testing.assert_allclose(est2.grad, est.grad, rtol=1e-7, atol=1e-9)
    # and declared as steps
    declared = TorchOracle(plain, CE, (x, y), blocks=[plain.lin, plain.norm, nn.Flatten(), plain.head])
    np.testing.assert_allclose(zo.estimate_gradient(declared, theta, zo.CGE(mu=1e-6, scheme="central")).grad,
                               est.grad, rtol=1e-7, atol=1e-9)


def test_declared_steps_with_fork():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def zoracle_steps(self):
            return [fork, self.a, nn.Tanh(), self.b, Step(fn=lambda s: (s[0] + s[1],), name="join"), self.head]

        def forward(self, x):
            return self.head(self.b(torch.tanh(self.a(x))) + x)

    torch.manual_seed(10)
    model = Res().double()
    x, y = data((3,), 7, seed=10, classes=2)
    oracle = TorchOracle(model, CE, (x, y))
    assert oracle.block_names == ["a", "b", "head"]
    theta = oracle.initial_params()
    check_oracle(oracle, theta)
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    assert relerr(est.grad, autograd(model, x, y)) < 1e-6


# ---------------------------------------------------------------------------- layout and API
def test_reparametrized_conv_and_linear_weights_are_scored_as_their_layers():
    """weight_norm / spectral_norm (torch.nn.utils.parametrizations, and the deprecated hook-based
    ones) keep a Conv's or Linear's weight as ``parametrizations.weight.original1`` (the direction,
    the weight's shape), ``.original`` or ``weight_v`` / ``weight_orig``: all were kind "other", so
    sparse training left those layers dense, and a model whose every layer is weight-normed was
    refused with "no block has a kind in `score_kinds` ('conv', 'linear')". The tensors with the
    layer weight's shape are now its kind; weight_norm's magnitude and a LoRA's factors stay "other"."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    class LoRA(nn.Module):
        def __init__(self):
            super().__init__()
            self.A, self.B = nn.Parameter(torch.randn(2, 8)), nn.Parameter(torch.zeros(4, 2))

        def forward(self, W):
            return W + self.B @ self.A

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        old = nn.utils.weight_norm(nn.Conv2d(4, 4, 3, padding=1))
    model = nn.Sequential(weight_norm(nn.Conv2d(2, 4, 3, padding=1)), nn.ReLU(),
                          spectral_norm(nn.ConvTranspose2d(4, 4, 3, padding=1, groups=2)), nn.ReLU(), old, nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), weight_norm(nn.Linear(4, 8)), nn.Tanh(),
                          nn.Linear(8, 4)).double().eval()
    parametrize.register_parametrization(model[10], "weight", LoRA().double())
    model[10].parametrizations.weight.original.requires_grad_(False)
    oracle = TorchOracle(model, CE)
    kinds = {i.name: i.kind for i in oracle.param_info}
    assert kinds == {
        "0.parametrizations.weight.original0": "other", "0.parametrizations.weight.original1": "conv",
        "0.bias": "bias", "2.parametrizations.weight.original": "conv", "2.bias": "bias",
        "4.weight_g": "other", "4.weight_v": "conv", "4.bias": "bias",
        "8.parametrizations.weight.original0": "other", "8.parametrizations.weight.original1": "linear",
        "8.bias": "bias", "10.parametrizations.weight.0.A": "other", "10.parametrizations.weight.0.B": "other",
        "10.bias": "bias"}, kinds
    shapes = {i.name: i.shape for i in oracle.param_info}
    assert shapes["2.parametrizations.weight.original"] == tuple(model[2].weight.shape)
    x, y = data((2, 6, 6), 8, seed=0, classes=4)
    with warnings.catch_warnings():  # the hook-based weight_norm: full forwards, and torch's vmap fallback
        warnings.simplefilter("ignore")
        res = zo.train(oracle, oracle.initial_params(), batches=[(x, y)], epochs=1, sparsity=0.5,
                       ratios="uniform", mu=1e-4, optimizer=zo.sgd(0.01), rng=0, progress=False)
    assert res.steps == 1


def test_weight_norm_magnitude_of_a_one_input_linear_stays_other():
    """weight_norm(nn.Linear(1, 4)) (a PINN's first layer on a scalar input): the magnitude
    ``original0`` has shape (4, 1), the weight's own shape, and was scored as "linear" like the
    direction ``original1``; the hook-based weight_norm's ``weight_g`` of the same layer is "other",
    as is weight_norm's magnitude of every other layer."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(1, 4)), nn.Tanh(), weight_norm(nn.Conv1d(1, 3, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        old = nn.Sequential(nn.utils.weight_norm(nn.Linear(1, 4)))
    kinds = {i.name: i.kind for i in TorchOracle(model, CE).param_info}
    assert kinds["0.parametrizations.weight.original0"] == "other", kinds
    assert kinds["0.parametrizations.weight.original1"] == "linear", kinds
    assert kinds["2.parametrizations.weight.original0"] == "other", kinds
    assert kinds["2.parametrizations.weight.original1"] == "conv", kinds
    assert {i.name: i.kind for i in TorchOracle(old, CE).param_info}["0.weight_g"] == "other"


def test_layout_load_bind_predict():
    torch.manual_seed(11)
    model = DigitsCNN(width=4).double()
    model[1].weight.requires_grad_(False)  # frozen parameters stay out of the flat vector
    oracle = TorchOracle(model, CE)
    names = oracle.parameter_names
    assert "1.weight" not in names and names[0] == "0.weight"
    info = {i.name: i for i in oracle.param_info}
    assert info["0.weight"].kind == "conv" and info["8.weight"].kind == "linear"
    assert info["8.bias"].kind == "bias" and info["4.weight"].kind == "norm"
    assert "0.bias" not in info and "3.bias" not in info  # (no bias before a BatchNorm, which cancels it)
    assert sum(i.slice.stop - i.slice.start for i in oracle.param_info) == oracle.size
    theta = oracle.initial_params()
    assert theta.shape == (oracle.size,) and theta.dtype == np.float64
    with pytest.raises(zo.ArgumentError, match="bind"):
        oracle(theta)
    x, y = data((1, 8, 8), 6, seed=11)
    bound = oracle.bind((torch.as_tensor(x), torch.as_tensor(y)))
    assert bound.model is model
    new = theta + 0.01
    bound.load(new)
    np.testing.assert_array_equal(oracle.initial_params(), new)
    model.train()
    out = bound.predict(new, x, batch_size=4)
    assert out.shape == (6, 10) and model.training
    model.eval()
    np.testing.assert_allclose(out, model(torch.as_tensor(x)).detach().numpy(), rtol=1e-12)
    assert isinstance(bound.max_queries_per_call, int) and bound.max_queries_per_call >= 1
    costs = bound.block_costs
    assert len(costs) == len(bound.blocks) and max(costs) == 1.0 and min(costs) > 0
    with pytest.raises(zo.ArgumentError, match="length"):
        bound(theta[:-1])


def test_blackbox_loss_fn_and_errors():
    torch.manual_seed(12)
    model = make_mlp(in_features=4, hidden=5, depth=2, num_classes=3).double()
    x, y = data((4,), 6, seed=12, classes=3)

    calls = []

    def numpy_loss(out, target):  # a black box: leaves torch, returns an array
        calls.append(out.shape[0])
        o, t = out.numpy(), target.numpy()
        o = o - o.max(1, keepdims=True)
        return np.log(np.exp(o).sum(1)) - o[np.arange(len(t)), t]

    bb = TorchOracle(model, numpy_loss, (x, y))
    ref = TorchOracle(model, CE, (x, y))
    theta = bb.initial_params()
    coords = np.arange(theta.size)
    np.testing.assert_allclose(bb.coordinate_losses(theta, coords, 1e-3), ref.coordinate_losses(theta, coords, 1e-3),
                               rtol=1e-12)
    assert max(calls) > x.shape[0]  # batched: one call on k * B samples
    scalar = TorchOracle(model, nn.CrossEntropyLoss(), (x, y))  # mean-reduced: one call per perturbation
    np.testing.assert_allclose(scalar.coordinate_losses(theta, coords, 1e-3), ref.coordinate_losses(theta, coords, 1e-3),
                               rtol=1e-12)
    assert scalar(theta) == pytest.approx(ref(theta), rel=1e-14)
    with pytest.raises(zo.ArgumentError, match="per-sample losses"):
        TorchOracle(model, lambda o, t: o, (x, y))
    with pytest.raises(zo.ArgumentError, match="nn.Module"):
        TorchOracle(lambda z: z, CE)
    with pytest.raises(zo.ArgumentError, match="blocks"):
        TorchOracle(model, CE, blocks="auto")
    with pytest.raises(zo.ArgumentError, match="dtype"):
        TorchOracle(model, CE, dtype="int8")
    with pytest.raises(zo.ArgumentError, match="pair"):
        ref.bind(x)
    with pytest.raises(zo.ArgumentError, match="coords"):
        ref.coordinate_losses(theta, [theta.size], 1e-3)
    with pytest.raises(zo.ArgumentError, match="block"):
        ref.suffix(ref.prefix(theta, 0), theta, 0, [theta.size - 1], 1e-3)


def test_dtype_argument_and_float32_params_into_float64_model():
    torch.manual_seed(13)
    model = make_mlp(in_features=3, hidden=4, depth=1, num_classes=2)
    x, y = data((3,), 5, seed=13, dtype=np.float32, classes=2)
    oracle = TorchOracle(model, CE, (x, y), dtype="float64")
    assert oracle.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64
    theta = oracle.initial_params()
    assert np.isfinite(oracle(theta.astype(np.float32)))


def test_cross_entropy_helper_matches_torch():
    logits = torch.randn(50, 7, dtype=torch.float64) * 3
    logits[3] -= 500  # a row far below the batch maximum takes the exact per-row path
    t = torch.randint(0, 7, (50,))
    torch.testing.assert_close(cross_entropy(logits, t), CE(logits, t))


@pytest.mark.slow
def test_unbind_state_arrays_and_resume_keep_batchnorm_statistics(tmp_path):
    import zoracle as zo
    from zoracle.executors import DeviceExecutor

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    base = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    bound = base.bind((x[:8], y[:8]))
    parent, batch = bound.unbind()
    assert parent is base and np.array_equal(batch[0], x[:8]) and np.array_equal(batch[1], y[:8])
    assert base.unbind() is None and bound.bind((x[8:16], y[8:16])).unbind()[0] is base

    # a DeviceExecutor ships the parent once and moves it with to_device; same estimate as serial
    theta = base.initial_params()
    ref = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-5, scheme="central"))
    state = base.state_arrays()
    with DeviceExecutor(["cpu", "cpu"]) as ex, \
            pytest.warns(RuntimeWarning, match="BatchNorm running statistics in train mode.*runs on a worker"):
        got = zo.estimate_gradient(bound, theta, zo.CGE(mu=1e-5, scheme="central"), executor=ex)
    np.testing.assert_allclose(got.grad, ref.grad, rtol=1e-10, atol=1e-12)

    # running statistics round-trip and are checked by name and shape
    base.load_state_arrays({k: v + 1 for k, v in state.items()})
    assert np.allclose(base.state_arrays()["1.running_mean"], state["1.running_mean"] + 1)
    with pytest.raises(zo.ArgumentError, match="missing"):
        base.load_state_arrays({})

    # train with a checkpoint, resume from it: the buffers come back with the params
    def run(**kw):
        torch.manual_seed(0)  # (bias=False before the BatchNorm, whose mean subtraction cancels a bias: its
        # estimates are 0 up to rounding, exactly 0 on some CPUs, where train warns of a dead block)
        model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
        o = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"))
        res = zo.train(o, o.initial_params(), batches=zo.Minibatches((x, y), 8, seed=0), estimator=zo.CGE(mu=1e-4),
                       optimizer=zo.sgd(0.05), rng=0, progress=False, **kw)
        return res, o.state_arrays()

    full, stats_full = run(epochs=2)
    run(epochs=1, checkpoint=str(tmp_path / "c.npz"))
    resumed, stats_resumed = run(epochs=2, checkpoint=str(tmp_path / "c.npz"), resume=True)
    np.testing.assert_array_equal(resumed.params, full.params)
    for k in stats_full:
        np.testing.assert_array_equal(stats_resumed[k], stats_full[k])


def test_prefix_reuses_the_base_call_per_sample_losses():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    calls = []

    def counted(out, y):
        calls.append(out.shape[0])
        return nn.functional.cross_entropy(out, y, reduction="none")

    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((16, 5)), rng.integers(0, 3, 16))
    oracle = TorchOracle(net, counted, batch)
    theta = oracle.initial_params()
    fresh = TorchOracle(net, counted, batch)
    want = [fresh.suffix(fresh.prefix(theta, b), theta, b, np.arange(blk.start, blk.stop), 1e-3)
            for b, blk in enumerate(fresh.blocks)]
    n_fresh = len(calls)
    calls.clear()
    oracle(theta)
    assert calls == [16]
    feats = [oracle.prefix(theta, b) for b in range(len(oracle.blocks))]
    assert calls == [16]  # no further black-box rows for the base point
    got = [oracle.suffix(f, theta, b, np.arange(blk.start, blk.stop), 1e-3)
           for b, (f, blk) in enumerate(zip(feats, oracle.blocks))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    before = len(calls)
    oracle.prefix(theta + 0.01, 0)  # other params: the cache does not apply
    assert calls[before:] == [16]
    assert n_fresh > len(oracle.blocks)  # without a base call, each prefix asks loss_fn once more



def test_plain_call_runs_the_chain_only_when_it_is_the_forward():
    """A plain Sequential's call runs its steps one by one and keeps the states for the prefixes
    (one forward a step saved); a hook on a container, a swapped module or a BatchNorm make it
    call ``model(x)`` itself. Either way the loss is the plain forward's, bit for bit."""
    from zoracle.adapters._torch_chain import chain_is_forward

    torch.manual_seed(2)
    inner = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True))
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), inner, nn.Linear(8, 3)).double()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    oracle = TorchOracle(net, CE, (x, y))
    theta = oracle.initial_params()
    steps = oracle._core.chain.steps

    def plain(model):
        with torch.no_grad():
            return float(CE(model(torch.as_tensor(x)), torch.as_tensor(y)).mean())

    assert chain_is_forward(net, steps)
    oracle._state_cache = None
    assert oracle(theta) == plain(net)
    assert oracle._state_cache is not None and len(oracle._state_cache[1]) == len(steps) + 1
    states = oracle._state_cache[1]
    assert oracle._states(theta) is states  # the prefixes read them: no second forward
    np.testing.assert_array_equal(states[-1][0].numpy(), net(torch.as_tensor(x)).detach().numpy())

    big = TorchOracle(net, CE, (x, y), budget_bytes=1024)  # states beyond the budget are not kept
    assert big(theta) == plain(net) and big._state_cache is None

    seen = []
    handle = inner.register_forward_hook(lambda m, i, o: seen.append(1))
    assert not chain_is_forward(net, steps)  # the container's hook runs only in model(x)
    oracle(theta)  # a hook registered since the split was checked: the call checks it again first
    seen.clear()
    oracle._state_cache = None
    oracle(theta)
    assert seen == [1] and oracle._state_cache is None
    handle.remove()
    assert chain_is_forward(net, steps)

    inner.forward = lambda h: h  # a forward set on the instance: model(x) runs it, the chain would not
    assert not chain_is_forward(net, steps)
    with pytest.warns(RuntimeWarning, match="a forward set on it"):  # the split is checked again, and retired
        assert oracle(theta) == plain(net)
    del inner.forward
    assert chain_is_forward(net, steps)

    old = net[3]
    net[3] = nn.Linear(8, 3).double()  # swapped after the oracle was built
    assert not chain_is_forward(net, steps)
    # its parameters are not in the flat vector: theta would not reach them (it computed the loss of
    # the new module's own weights, whatever theta said)
    with pytest.raises(zo.ArgumentError, match="parameters the oracle's flat vector does not hold"):
        oracle(theta)
    net[3] = old
    class Scaled(nn.Sequential):  # a subclass with its own forward, as users write them
        def forward(self, h):
            return 2 * super().forward(h)

    sub = Scaled(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double()
    sub_oracle = TorchOracle(sub, CE, (x, y))
    assert not chain_is_forward(sub, sub_oracle._core.chain.steps)
    assert sub_oracle(sub_oracle.initial_params()) == plain(sub)
    bn = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double()
    assert not chain_is_forward(bn, TorchOracle(bn, CE, (x, y))._core.chain.steps)
    assert not chain_is_forward(nn.Linear(5, 3), [])

def test_dropout_mode_is_skipped_only_when_nothing_can_reach_functional_dropout(monkeypatch):
    """The no-dropout torch function mode costs per-op dispatch: skipped for stock layers and a
    stock loss, kept (and effective) when a custom loss or a custom module could call F.dropout."""
    import torch.nn.functional as F
    from torch import nn

    import zoracle.adapters._torch_chain as tc
    from zoracle.adapters.torch import TorchOracle

    entered = []
    orig = tc._NoDropout.__enter__
    monkeypatch.setattr(tc._NoDropout, "__enter__", lambda self: entered.append(1) or orig(self))
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    stock = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(5, 3))
    o = TorchOracle(stock, nn.CrossEntropyLoss(reduction="none"), batch=(x, y))
    theta = o.initial_params()
    o(theta)  # the first bind's self-check
    entered.clear()
    a = zo.estimate_gradient(o, theta, zo.CGE(scheme="central"))
    assert not entered  # stock layers + stock loss: no mode
    b = zo.estimate_gradient(o, theta, zo.CGE(scheme="central"))
    np.testing.assert_array_equal(a.grad, b.grad)

    def noisy(out, t):  # a custom loss that calls functional dropout: the mode must stay on
        return F.cross_entropy(F.dropout(out, 0.5, training=True), t, reduction="none")

    o2 = TorchOracle(stock, noisy, batch=(x, y))
    c = zo.estimate_gradient(o2, theta, zo.CGE(scheme="central"))
    assert entered
    d = zo.estimate_gradient(o2, theta, zo.CGE(scheme="central"))
    np.testing.assert_array_equal(c.grad, d.grad)
    np.testing.assert_allclose(c.grad, a.grad, rtol=1e-5, atol=1e-7)  # dropout off: the same loss


def test_dropout_mode_stays_on_for_custom_forwards_and_hooks():
    import torch.nn.functional as F
    from torch import nn

    from zoracle.adapters._torch_chain import _needs_dropout_mode
    from zoracle.adapters.torch_models import DigitsCNN

    class Named(nn.Sequential):  # the common idiom: only __init__, Sequential's forward
        pass

    class Noisy(nn.Sequential):
        def forward(self, x):
            return F.dropout(super().forward(x), 0.5, training=True)

    layers = [nn.Linear(4, 3), nn.ReLU()]
    assert not _needs_dropout_mode(nn.Sequential(*layers))
    assert not _needs_dropout_mode(Named(*layers)) and not _needs_dropout_mode(DigitsCNN())
    assert _needs_dropout_mode(Noisy(*layers))
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    h = m[0].register_forward_hook(lambda mod, i, o: F.dropout(o, 0.5, training=True))
    assert _needs_dropout_mode(m)
    h.remove()
    assert not _needs_dropout_mode(m)
    # and the mode is effective: a hooked dropout is the identity inside the oracle
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    net = Noisy(nn.Linear(4, 3))
    o = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), batch=(x, y))
    theta = o.initial_params()
    assert o(theta) == o(theta)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(nn.Sequential.forward(net, x), y))
    assert o(theta) == pytest.approx(want, rel=1e-6)


@settings(max_examples=40)
@given(k=st.integers(1, 5), b=st.integers(1, 3), c=st.integers(1, 4), o=st.integers(1, 5), hw=st.integers(3, 9),
       ks=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
       layout=st.sampled_from(["nhwc", "nchw"]), seed=st.integers(0, 2**16))
def test_absorb_is_the_convolution_of_the_changed_input(k, b, c, o, hw, ks, stride, pad, dil, layout, seed):
    """A Conv2d absorbing ``k`` one-channel changes (one batched product in channels-last
    rows, or the patch matmul) gives, for every change, the convolution of the input with that
    channel replaced, computed by ``F.conv2d`` itself (float64: equal to rounding)."""
    from torch.nn import functional as F

    from zoracle.adapters import _torch_chain as C
    from zoracle.adapters import _torch_channels as CH

    if hw + 2 * pad < dil * (ks - 1) + 1:
        return  # no output position
    g = torch.Generator().manual_seed(seed)
    m = nn.Conv2d(c, o, ks, stride=stride, padding=pad, dilation=dil, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
    x = torch.randn(b, c, hw, hw, generator=g, dtype=torch.float64)
    ch = torch.randint(0, c, (k,), generator=g)
    col = torch.randn(k, b, hw, hw, generator=g, dtype=torch.float64)
    m.weight.requires_grad_(False)
    base_out = F.conv2d(x, m.weight, None, stride, pad, dil)
    CH.LAYOUT.nhwc = False
    if layout == "nhwc":  # as TorchOracle.suffix runs it: channels-last rows; float32 only there
        m, x, col, base_out = m.float(), x.float(), col.float(), base_out.float()
        base_out = base_out.contiguous(memory_format=torch.channels_last)
        CH.LAYOUT.nhwc = True
    try:
        with torch.no_grad():  # as the oracle runs it
            got = CH.absorb(C.Step(m), col, ch, x, base_out)
    finally:
        CH.LAYOUT.nhwc = False
    for r in range(k):
        xr = x.clone()
        xr[:, ch[r]] = col[r]
        ref = F.conv2d(xr, m.weight, None, stride, pad, dil)
        tol = 1e-5 if layout == "nhwc" else 1e-11
        assert torch.allclose(got[r], ref, rtol=tol, atol=tol), (r, (got[r] - ref).abs().max())


def test_unfold_index_cache_stays_within_its_bytes(monkeypatch):
    """The gather indices are cached per window geometry up to ``_UNFOLD_INDEX_BYTES``: past
    it the cache empties, and an index larger than the whole budget is used but not kept."""
    from torch.nn import functional as F

    from zoracle.adapters import _torch_chain as C

    monkeypatch.setattr(C, "_UNFOLD_INDEX", {})
    monkeypatch.setattr(C, "_UNFOLD_INDEX_BYTES", 9 * 16 * 8 * 3)  # three 3x3 windows over 4x4 positions
    for c in (1, 2, 3, 1, 4):
        x = torch.randn(2, c, 8, 8)
        assert torch.equal(C.unfold(x, 3, padding=1, stride=2), F.unfold(x, 3, padding=1, stride=2))
        held = sum(i.numel() * i.element_size() for i in C._UNFOLD_INDEX.values())
        assert held <= C._UNFOLD_INDEX_BYTES
    assert len(C._UNFOLD_INDEX) == 0  # c = 4 alone is over the budget: used, not kept
    x = torch.randn(2, 1, 8, 8)
    C.unfold(x, 3, padding=1, stride=2)
    assert len(C._UNFOLD_INDEX) == 1


@settings(max_examples=60)
@given(k=st.integers(1, 4), b=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), ks=st.integers(1, 3),
       stride=st.integers(1, 3), pad=st.integers(0, 1), ceil=st.booleans(), cip=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_channel_step_pools_equal_the_modules_bit_for_bit(k, b, h, w, ks, stride, pad, ceil, cip, dtype, seed):
    """A changed channel ``(k, B, H, W)`` / ``(k, B, L)`` through a pool (run channels-last on
    the CPU) gives exactly the module's own values on the same tensor, and the pooled rows are
    those of pooling each perturbed input whole; so do the dense suffix's ``(N, C, ...)`` rows."""
    from zoracle.adapters import _torch_chain as C
    from zoracle.adapters import _torch_channels as CH

    if pad > ks // 2:
        return  # torch rejects padding over half the window
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-4, 4, (k, b, 1, 1), generator=g).to(dtype)
    col = torch.randn(k, b, h, w, generator=g, dtype=dtype) * scale
    from zoracle.adapters._torch_layout import run_owned

    for m, x in ((nn.AvgPool2d(ks, stride, pad, ceil, cip), col), (nn.AvgPool1d(ks, stride, pad, ceil, cip), col[:, :, 0]),
                 (nn.MaxPool2d(ks, stride, pad, ceil_mode=ceil), col)):
        if x.shape[-1] + 2 * pad < ks or (x.dim() == 4 and x.shape[-2] + 2 * pad < ks):
            continue  # no output position
        with torch.no_grad():
            got = CH.channel_step(C.Step(m), x, torch.zeros(k, dtype=torch.long), True)
            assert got.is_contiguous()
            assert torch.equal(got, m(x))  # the NCHW kernel on the same (k, B, ...) planes
            whole = m(x.reshape((k * b, 1) + tuple(x.shape[2:]))).reshape(got.shape)
            assert torch.equal(got, whole)
            # the dense suffix pools (N, C, ...) rows the same way
            dense = run_owned([C.Step(m)], (x.clone(),), 0)[0]
            assert dense.is_contiguous() and torch.equal(dense, m(x))


def test_split_roles_consecutive_positions_are_slices():
    """Positions of one parameter that follow each other come back as a slice, scattered ones
    as an index tensor; both select the same coordinates, so the perturbed channels agree."""
    from zoracle.adapters import _torch_chain as C
    from zoracle.adapters import _torch_channels as CH

    conv = nn.Conv2d(2, 3, 3, padding=1)
    bp = C.BlockParams([conv.weight, conv.bias], ["weight", "bias"], np.array([0, 54, 57]))
    local = np.array([1, 5, 53, 54, 56])
    parts = list(C._split_roles(bp, local, torch.device("cpu")))
    assert [(r, p) for r, p, _ in parts] == [("weight", slice(0, 3)), ("bias", slice(3, 5))]
    assert [i.tolist() for _, _, i in parts] == [[1, 5, 53], [0, 2]]
    mixed = np.array([54, 1, 56, 5])  # unsorted: the weight's positions are 1 and 3
    parts = list(C._split_roles(bp, mixed, torch.device("cpu")))
    assert torch.equal(parts[0][1], torch.tensor([1, 3])) and torch.equal(parts[1][1], torch.tensor([0, 2]))
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        out = conv(x)
        cache = C.prepare_cache("conv2d", conv, x, out)
        h = torch.full((4,), 1e-2)
        ch_a, col_a = CH.perturbed_channels("conv2d", conv, x, out, cache, bp, mixed, h)
        order = np.argsort(mixed)
        ch_b, col_b = CH.perturbed_channels("conv2d", conv, x, out, cache, bp, mixed[order], h[order])
    assert torch.equal(ch_a[order], ch_b) and torch.equal(col_a[order], col_b)
    for r, li in enumerate(mixed.tolist()):  # each against the convolution with that weight changed
        c2 = nn.Conv2d(2, 3, 3, padding=1)
        c2.load_state_dict(conv.state_dict())
        with torch.no_grad():
            flat = torch.cat([c2.weight.view(-1), c2.bias])
            flat[li] += h[r]
            c2.weight.copy_(flat[:54].view_as(c2.weight))
            c2.bias.copy_(flat[54:])
            assert torch.allclose(col_a[r], c2(x)[:, int(ch_a[r])], atol=1e-6)


# ---------------------------------------------------------------------------- class-major loss
@settings(max_examples=60)
@given(st.integers(1, 300), st.integers(2, 15), st.sampled_from(["float32", "float64"]), st.floats(0.1, 30.0),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_class_major_loss_is_the_row_loss_and_each_row_alone(n, c, dtype, scale, weighted, seed):
    """The stock cross-entropy in the class-major layout: the same per-sample losses as the
    row layout up to the last bits (torch's two kernels), and each row's loss the same bits
    whichever other rows share the call (what lets the suffix keep base losses)."""
    from zoracle.adapters._torch_layout import class_major, class_major_loss

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    z = (torch.randn(n, c, generator=g) * scale).to(dt)
    y = torch.randint(0, c, (n,), generator=g)
    loss = nn.CrossEntropyLoss(weight=torch.rand(c, generator=g).to(dt) + 0.5 if weighted else None,
                               reduction="none", ignore_index=1)
    assert class_major(loss)
    got = class_major_loss(loss, z, y)
    want = loss(z, y)
    eps = torch.finfo(dt).eps
    assert got.shape == (n,) and got.dtype == dt
    assert torch.allclose(got, want, rtol=8 * eps, atol=8 * eps * float(want.abs().max() + 1))
    assert torch.equal(got[y == 1], torch.zeros(int((y == 1).sum()), dtype=dt))  # ignored rows, as the module
    a = int(torch.randint(0, n, (1,), generator=g))
    b = int(torch.randint(a + 1, n + 1, (1,), generator=g))
    assert torch.equal(class_major_loss(loss, z[a:b], y[a:b]), got[a:b])
    assert torch.equal(class_major_loss(loss, z[a:b].clone(), y[a:b].clone()), got[a:b])


def test_class_major_loss_applies_only_where_it_is_the_same_loss():
    from zoracle.adapters._torch_layout import class_major, class_major_loss

    class Mine(nn.CrossEntropyLoss):  # a subclass may compute anything in its forward
        pass

    assert class_major(nn.CrossEntropyLoss(reduction="none"))
    assert not class_major(nn.CrossEntropyLoss())  # mean: the oracle's scalar convention
    assert not class_major(nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1))
    assert not class_major(Mine(reduction="none"))
    assert not class_major(nn.functional.cross_entropy) and not class_major(cross_entropy)
    ce = nn.CrossEntropyLoss(reduction="none")
    z, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert class_major_loss(ce, z, y) is not None
    assert class_major_loss(ce, torch.randn(8, 16), y) is None  # 16 classes: the row kernel is the faster
    assert class_major_loss(ce, torch.randn(8, 1), torch.zeros(8, dtype=torch.long)) is None
    assert class_major_loss(ce, z, torch.softmax(z, 1)) is None  # probability targets
    assert class_major_loss(ce, z.half(), y) is None
    assert class_major_loss(ce, z.view(8, 10, 1), y.view(8, 1)) is None
    assert class_major_loss(ce, z, y[:4]) is None  # a mismatch: the module raises its own error
    assert class_major_loss(ce, z, y.to(torch.uint8)) is None  # the row kernel takes uint8 targets, not this one
    x, yb = data((1, 8, 8), 6)  # and so does the oracle
    oracle = TorchOracle(_TorchvisionStyleNet().double(), ce, (x, torch.as_tensor(yb, dtype=torch.uint8)))
    theta = oracle.initial_params()
    with torch.no_grad():
        want = float(ce(oracle.model(torch.as_tensor(x)), torch.as_tensor(yb)).mean())
    assert oracle(theta) == pytest.approx(want)


def _ce_spy(monkeypatch):
    """Records the input shape of every ``F.cross_entropy`` that ``nn.CrossEntropyLoss`` makes."""
    seen = []
    real = nn.functional.cross_entropy

    def spy(inp, target, *a, **k):
        seen.append(tuple(inp.shape))
        return real(inp, target, *a, **k)

    monkeypatch.setattr(torch.nn.modules.loss.F, "cross_entropy", spy)
    return seen


class _TorchvisionStyleNet(nn.Module):
    """Written as torchvision writes its nets: in-place ReLUs, a residual add and the pooling in
    ``forward()``, not an ``nn.Sequential``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = x + self.relu(self.conv2(x))
        return self.fc(nn.functional.avg_pool2d(x, 2).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_major_loss_in_the_oracle_equals_the_textbook_loop(dtype, monkeypatch):
    """CGE through TorchOracle with the stock per-sample cross-entropy on 10 classes runs the
    loss class-major, and equals the textbook loop over plain ``loss(model(x), y).mean()``."""
    torch.manual_seed(0)
    net = _TorchvisionStyleNet().to(dtype)
    x, y = data((1, 8, 8), 24, seed=3)
    loss = nn.CrossEntropyLoss(reduction="none")
    seen = _ce_spy(monkeypatch)
    oracle = TorchOracle(net, loss, (x, y), dtype=dtype)
    theta = oracle.initial_params()
    mu = 1e-2 if dtype == torch.float32 else 1e-6
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=mu))
    assert any(len(s) == 3 and s[1] == 10 for s in seen)  # the class-major layout ran
    seen.clear()
    # the textbook loop: the plain module and loss, one query at a time
    xt, yt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(y)
    flat = torch.as_tensor(theta)

    def plain(v):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(v, net.parameters())
            return float(loss(net(xt), yt).mean())

    f0 = plain(flat)
    want = np.empty(theta.size)
    for i in range(theta.size):
        v = flat.clone()
        v[i] += mu
        want[i] = (plain(v) - f0) / float(v[i] - flat[i])
    assert all(len(s) == 2 for s in seen)  # the plain loop itself ran the row layout
    eps = float(torch.finfo(dtype).eps)
    assert np.abs(est.grad - want).max() <= 16 * eps * max(1.0, f0) / mu
    assert abs(est.loss - f0) <= 4 * eps * f0


def test_subclassed_loss_keeps_the_row_layout(monkeypatch):
    class Mine(nn.CrossEntropyLoss):
        def forward(self, out, y):
            assert out.dim() == 2  # written for (rows, classes)
            return super().forward(out, y) * 2.0

    torch.manual_seed(0)
    seen = _ce_spy(monkeypatch)
    x, y = data((1, 8, 8), 6)
    oracle = TorchOracle(_TorchvisionStyleNet().double(), Mine(reduction="none"), (x, y))
    zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=1e-6))
    assert seen and all(len(s) == 2 for s in seen)


def _tv_resnet():
    from zoracle.adapters.torch_models import TVResNet

    return TVResNet(layers=(1, 1, 1, 1), width=2, in_channels=1)


@pytest.mark.parametrize("make,mode", [(_TorchvisionStyleNet, "train"), (_tv_resnet, "train"), (_tv_resnet, "eval"),
                                       (lambda: make_cnn(4), "train")])
@pytest.mark.parametrize("budget", [None, 64 * 2**10])
def test_serial_cge_is_one_coordinate_call_equal_to_the_split_calls(make, mode, budget):
    """A serial CGE through TorchOracle is one ``coordinate_losses`` call, which runs each block's
    prefix and suffix calls (in ``max_queries_per_call`` chunks) itself: the same losses bit for
    bit, on torchvision-style nets (in-place ReLUs, residual adds in ``forward()``, BatchNorm with
    batch statistics), with a budget small enough to split every block into several chunks;
    running statistics untouched. Sharded runs keep a prefix and suffix per block."""
    from zoracle._oracle import Oracle
    from zoracle._plan import plan_cge

    torch.manual_seed(0)
    net = make().double().train(mode == "train")
    x, y = data((1, 8, 8), 12, seed=5)
    oracle = TorchOracle(net, CE, (x, y), budget_bytes=budget)
    theta = oracle.initial_params() + 0.05 * np.random.default_rng(1).standard_normal(oracle.size)
    coords = np.sort(np.random.default_rng(2).choice(oracle.size, min(oracle.size, 300), replace=False))
    if budget is not None:
        assert oracle.max_queries_per_call < max(np.diff([b.start for b in oracle.blocks] + [oracle.size]))
    serial = plan_cge(Oracle(oracle), coords, (1e-4,), oracle.size, 8, 2**28, 1)
    assert [(t.mode, t.size) for t in serial] == [("coordinate", coords.size)]
    assert {t.mode for t in plan_cge(Oracle(oracle), coords, (1e-4,), oracle.size, 8, 2**28, 2)} == {"split"}
    # a fresh oracle: no plain call before, so each prefix computes the base rows itself
    stats = buffers(net)
    got = TorchOracle(net, CE, (x, y), budget_bytes=budget).coordinate_losses(theta, coords, 1e-4)
    after = buffers(net)  # only plain calls update running statistics
    assert stats.keys() == after.keys() and all(np.array_equal(stats[k], after[k]) for k in stats)
    f0 = oracle(theta)
    call = oracle.max_queries_per_call
    starts = np.array([b.start for b in oracle.blocks])
    owner = np.searchsorted(starts, coords, side="right") - 1
    want = np.concatenate([oracle.suffix(oracle.prefix(theta, b), theta, b, cb[lo:lo + call], 1e-4)
                           for b in np.unique(owner) for cb in [coords[owner == b]]
                           for lo in range(0, cb.size, call)])
    assert np.array_equal(got, want) and np.isfinite(got).all() and np.ptp(got - f0) > 0
    assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)  # after a plain call too
    # the estimate: the fused plan against the split plan (an oracle told not to fuse)
    fused = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4), coordinates=coords)
    unfused = type("Unfused", (TorchOracle,), {"fused_coordinate_losses": False})(net, CE, (x, y), budget_bytes=budget)
    assert {t.mode for t in plan_cge(Oracle(unfused), coords, (1e-4,), oracle.size, 8, 2**28, 1)} == {"split"}
    split = zo.estimate_gradient(unfused, theta, zo.CGE(mu=1e-4), coordinates=coords)
    assert np.array_equal(fused.grad, split.grad) and fused.loss == split.loss and fused.nfev == split.nfev


def test_only_a_declared_fused_oracle_gets_one_coordinate_task():
    """A split oracle that also has ``coordinate_losses`` but does not set
    ``fused_coordinate_losses = True`` keeps its prefix and suffix per block."""
    from zoracle._oracle import Oracle
    from zoracle._plan import plan_cge

    class Split:
        blocks = [slice(0, 3), slice(3, 6)]

        def __init__(self, flag):
            if flag is not None:
                self.fused_coordinate_losses = flag

        def __call__(self, x):
            return float(np.sum(x ** 2))

        def coordinate_losses(self, x, coords, step):
            return np.array([self(x + step * np.eye(6)[i]) for i in coords])

        def prefix(self, x, block):
            return None

        def suffix(self, feats, x, block, coords, step):
            return self.coordinate_losses(x, coords, step)

    for flag, mode in ((None, "split"), (1, "split"), ("yes", "split"), (True, "coordinate")):
        tasks = plan_cge(Oracle(Split(flag)), np.arange(6), (1e-3,), 6, 8, 2**20, 1)
        assert {t.mode for t in tasks} == {mode}


def test_a_subclass_with_its_own_suffix_keeps_the_split_calls():
    """A TorchOracle subclass that overrides ``suffix`` (to log, say) is not fused: the planner
    sends its own ``prefix`` and ``suffix``, as it wrote them."""
    seen = []

    class Logged(TorchOracle):
        def suffix(self, features, params, block, coords, step):
            seen.append(block)
            return super().suffix(features, params, block, coords, step)

    torch.manual_seed(0)
    x, y = data((1, 8, 8), 6)
    plain = TorchOracle(_TorchvisionStyleNet().double(), CE, (x, y))
    logged = Logged(plain.model, CE, (x, y))
    assert plain.fused_coordinate_losses is True and logged.fused_coordinate_losses is False
    theta = plain.initial_params()
    a = zo.estimate_gradient(plain, theta, zo.CGE(mu=1e-6))
    b = zo.estimate_gradient(logged, theta, zo.CGE(mu=1e-6))
    assert sorted(set(seen)) == list(range(len(plain.blocks))) and np.array_equal(a.grad, b.grad)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_model_returning_several_heads_gets_an_error_naming_the_fix(as_dict):
    """A forward returning a tuple or dict of heads failed deep inside with
    ``AttributeError: 'tuple' object has no attribute 'shape'``."""

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.h1, self.h2 = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.f(x))
            return {"main": self.h1(h), "aux": self.h2(h)} if as_dict else (self.h1(h), self.h2(h))

    def loss_fn(out, t):
        main, aux = (out["main"], out["aux"]) if as_dict else out
        return nn.functional.cross_entropy(main, t, reduction="none") + 0.3 * nn.functional.cross_entropy(aux, t, reduction="none")

    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    kind = "dict" if as_dict else "tuple"
    # refused at the bind: bound, the oracle's first query of coordinate_losses or batch failed
    # inside the full forwards with AttributeError: 'tuple' object has no attribute 'numel'
    with pytest.raises(zo.ArgumentError, match=f"`model` returned a {kind}, not one tensor.*Wrap the model"):
        TorchOracle(TwoHeads(), loss_fn).bind((x, y))
    with pytest.raises(zo.ArgumentError, match=f"`model` returned a {kind}, not one tensor.*Wrap the model"):
        TorchOracle(TwoHeads(), loss_fn, (x, y))


def test_float64_params_on_a_float32_model_are_estimated_with_the_steps_the_model_takes():
    """The model rounds float64 params to float32: a step of mu checked in float64 was no step at
    all in float32 below its spacing (mu = 1e-9: a zero gradient, silently; forward differences:
    rounding noise over mu). The estimate is now made at the rounded params, with float32 steps."""
    torch.manual_seed(0)
    oracle = TorchOracle(nn.Linear(4, 3), nn.CrossEntropyLoss(reduction="none"),
                         (torch.randn(5, 4), torch.randint(0, 3, (5,))))
    p32 = oracle.initial_params()
    assert oracle.compute_dtype == np.float32 and p32.dtype == np.float32
    for mu in (1e-3, 1e-6):
        est = zo.estimate_gradient(oracle, p32.astype(np.float64), zo.CGE(mu=mu, scheme="central"))
        want = zo.estimate_gradient(oracle, p32, zo.CGE(mu=mu, scheme="central"))
        assert est.grad.dtype == np.float64 and np.array_equal(est.grad, want.grad.astype(np.float64))
    with pytest.raises(zo.ArgumentError, match="rounds to a zero step in float32"):
        zo.estimate_gradient(oracle, p32.astype(np.float64), zo.CGE(mu=1e-9))


def test_a_blackbox_op_refuses_a_second_derivative():
    """With create_graph=True its backward gave a gradient without a graph: a second derivative
    through it came out as if the black box were linear (6x instead of 12x on x**3 twice)."""
    from zoracle.adapters.torch import blackbox

    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64, requires_grad=True)
    op = blackbox(lambda a: (a ** 3).sum(1), zo.CGE(mu=1e-5, scheme="central"))
    with pytest.raises(zo.ArgumentError, match="first derivatives only .* create_graph=True"):
        torch.autograd.grad(op(x).sum() + (x ** 3).sum(), x, create_graph=True)
    g, = torch.autograd.grad(op(x).sum(), x)  # once is fine
    np.testing.assert_allclose(g.numpy(), 3 * x.detach().numpy() ** 2, rtol=1e-6)


def test_predict_checks_its_arguments_and_never_makes_a_chunk_of_one_in_train_mode():
    """batch_size 0, -1 and 2.5 and an empty x failed in range() or torch.cat; train=True with 10
    samples in chunks of 3 failed on the last chunk of one ("Expected more than 1 value per channel")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"))
    theta, x = oracle.initial_params(), np.random.default_rng(0).standard_normal((10, 3))
    for bad in (0, -1, 2.5):
        with pytest.raises(zo.ArgumentError, match="`batch_size` must be an integer >= 1"):
            oracle.predict(theta, x, batch_size=bad)
    with pytest.raises(zo.ArgumentError, match="`x` must hold at least one sample"):
        oracle.predict(theta, x[:0])
    out = oracle.predict(theta, x, batch_size=3, train=True)
    with torch.no_grad():  # chunks 3, 3, 4: the last sample joins the chunk before
        want = torch.cat([model.train()(torch.as_tensor(x[a:b])) for a, b in ((0, 3), (3, 6), (6, 10))])
    model.eval()
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-12)


def test_refused_calls_leave_the_model_as_it_was():
    """A state whose last buffer had the wrong shape was refused after the earlier buffers were
    written; a constructor refusing budget_bytes (or a model without trainable parameters) had
    converted the model to the dtype asked for already; device="xyz" raised torch's error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.BatchNorm1d(2))
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"))
    state = {k: np.full(v.shape, 7.0) for k, v in oracle.state_arrays().items()}
    state["3.running_var"] = np.ones(5)
    with pytest.raises(zo.ArgumentError, match=r"buffer '3.running_var' has shape \(5,\), expected \(2,\)"):
        oracle.load_state_arrays(state)
    assert torch.equal(model[1].running_mean, torch.zeros(4))
    with pytest.raises(zo.ArgumentError, match="`budget_bytes`"):
        TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), dtype=torch.float64, budget_bytes=0)
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(zo.ArgumentError, match="no trainable parameters"):
        TorchOracle(frozen, nn.CrossEntropyLoss(reduction="none"), dtype=torch.float64)
    with pytest.raises(zo.ArgumentError, match="`device` 'xyz'"):
        TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), device="xyz")
    assert model[0].weight.dtype == frozen.weight.dtype == torch.float32


def test_read_only_params_are_taken_without_a_warning():
    """estimate_gradient and check_oracle hand plain calls read-only arrays: torch.from_numpy
    warned that writing to such a tensor is undefined behaviour."""
    oracle = TorchOracle(nn.Linear(3, 2), nn.CrossEntropyLoss(reduction="none"), (np.zeros((4, 3)), np.array([0, 1, 0, 1])))
    p = oracle.initial_params()
    want = oracle(p)
    p.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert oracle(p) == want


@pytest.mark.parametrize("what", ["torch x", "torch y", "numpy x"])
def test_a_bound_batch_written_in_place_retires_the_cached_activations(what):
    # bind keeps the caller's tensors (and shared NumPy memory): after x.mul_(0.5) the next CGE at
    # the same params mixed a fresh base loss with perturbed losses of the old batch (642,000x off)
    class Net(torch.nn.Module):  # its own forward: captured with torch.fx
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    if what == "numpy x":
        x = x.numpy()
    oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"))
    p = oracle.initial_params()
    bound = oracle.bind((x, y))
    coords = np.arange(0, oracle.size, 11)
    cge = zo.CGE(mu=1e-6)
    zo.estimate_gradient(bound, p, cge, coordinates=coords)
    before = torch.as_tensor(x).clone()
    if what == "torch y":
        y.copy_((y + 1) % 5)
    else:
        x *= 0.5
    got = zo.estimate_gradient(bound, p, cge, coordinates=coords)
    # a torch batch is used in place (its writes are seen); a NumPy batch is copied at bind
    # (no version counter sees a write into NumPy memory): the oracle keeps the values it was given
    xs = before if what == "numpy x" else torch.as_tensor(x)
    ref = zo.estimate_gradient(lambda q: _plain_loss(model, q, xs, y), p, cge, coordinates=coords)
    np.testing.assert_allclose(got.grad[coords], ref.grad[coords], rtol=1e-6, atol=1e-9)


def _plain_loss(model, q, x, y):
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(torch.as_tensor(np.array(q)), m.parameters())
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(m(x), y))


@pytest.mark.parametrize("what", ["dict value", "list element", "config dataclass", "namespace", "tuple of tensors"])
def test_settings_read_from_containers_and_config_objects_are_watched(what):
    # torch.fx bakes what a forward reads of self.opts["scale"], self.masks[0] or self.cfg.temperature
    # into the captured graph: changed after the split was checked, the gradient was 2e5-1e6x off,
    # silently. A change must retire or recheck the split (a warning is fine), never go unseen.
    import dataclasses
    import types

    @dataclasses.dataclass
    class Cfg:
        temperature: float = 1.0
        act: object = torch.relu  # an entry that is not a setting: the rest is still watched

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 5)
            self.opts = {"scale": 1.0}
            self.masks = [torch.ones(4, dtype=torch.float64)]
            self.tup = (torch.ones(4, dtype=torch.float64),)
            self.cfg = Cfg()
            self.ns = types.SimpleNamespace(shift=0.0)

        def forward(self, x):
            h = torch.relu(self.conv(x)) * self.masks[0].view(1, -1, 1, 1) * self.tup[0].view(1, -1, 1, 1)
            h = h * self.opts["scale"] + self.ns.shift
            return self.fc(h.mean((2, 3))) / self.cfg.temperature

    change = {
        "dict value": lambda m: m.opts.__setitem__("scale", 3.0),
        "list element": lambda m: m.masks.__setitem__(0, torch.zeros(4, dtype=torch.float64)),
        "config dataclass": lambda m: setattr(m.cfg, "temperature", 0.25),
        "namespace": lambda m: setattr(m.ns, "shift", 0.5),
        "tuple of tensors": lambda m: setattr(m, "tup", (torch.full((4,), 2.0, dtype=torch.float64),)),
    }[what]
    torch.manual_seed(0)
    _changed_after_a_query_matches_the_plain_model(Net().double().eval(), change)


def test_a_batch_made_in_inference_mode_can_be_queried():
    # features precomputed under torch.inference_mode() (a frozen backbone): they have no version
    # counter, and keying the caches on it raised at the first plain call
    torch.manual_seed(0)
    oracle = TorchOracle(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
                         nn.CrossEntropyLoss(reduction="none"))
    with torch.inference_mode():
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    bound, p = oracle.bind((x, y)), oracle.initial_params()
    est = zo.estimate_gradient(bound, p, zo.CGE(mu=1e-3), coordinates=np.arange(20))
    plain = zo.estimate_gradient(lambda q: bound.reference_loss(q), p, zo.CGE(mu=1e-3), coordinates=np.arange(20))
    np.testing.assert_allclose(est.grad, plain.grad, atol=2e-3)
    zo.estimate_gradient(bound, p, zo.RGE(mu=1e-3, directions=4), rng=0)


def test_an_rnn_costs_no_extra_split_check_and_a_local_enum_attribute_runs_on_threads():
    # an RNN's _flat_weights (a list of its own Parameters) was watched as a setting: one
    # needless recheck; a model attribute of a class defined in a function made the executor key
    # unpicklable, an error on thread executors, which pickle nothing
    import enum

    import zoracle.adapters._torch_watch as watch

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(4, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = Head()
    before = watch._modes(model)
    bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind(
        (torch.randn(16, 5, 4), torch.randint(0, 3, (16,))))
    p = bound.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zo.estimate_gradient(bound, p, zo.RGE(mu=1e-3, directions=8), rng=0)
    assert watch._modes(model) == before and len(bound._core.checked_modes) == 1

    class Act(str, enum.Enum):
        RELU = "relu"

    class WithEnum(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.act = nn.Linear(4, 8), nn.Linear(8, 3), Act.RELU

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x)) if self.act == Act.RELU else self.l1(x))

    bound = TorchOracle(WithEnum(), nn.CrossEntropyLoss(reduction="none")).bind(
        (torch.randn(16, 4), torch.randint(0, 3, (16,))))
    p = bound.initial_params()
    from zoracle.executors import ThreadPool

    with ThreadPool(2) as threads:
        got = zo.estimate_gradient(bound, p, zo.CGE(mu=1e-3), executor=threads)
    np.testing.assert_array_equal(got.grad, zo.estimate_gradient(bound, p, zo.CGE(mu=1e-3)).grad)


@pytest.mark.parametrize("what", ["function attribute", "plain object", "dict filled later", "counter beside setting"])
def test_a_setting_the_split_does_not_watch_is_caught_at_the_next_base_point(what):
    # the captured graph baked what these read; a change went unseen (4e3-9e3x off, silently). The
    # captured graph's output at each estimate's base point is now compared with model(x)'s there
    class Plain:
        scale = 1.0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)
            self.act, self.cfg, self.opts, self.stats = torch.relu, Plain(), {}, {"calls": 0, "scale": 1.0}

        def forward(self, x):
            self.stats["calls"] += 1  # written by every forward: the whole dict is unwatched
            h = self.act(self.conv(x)) * self.cfg.scale * self.opts.get("scale", 1.0) * self.stats["scale"]
            return self.fc(h.mean((2, 3)))

    change = {"function attribute": lambda m: setattr(m, "act", torch.tanh),
              "plain object": lambda m: setattr(m.cfg, "scale", 3.0),
              "dict filled later": lambda m: m.opts.__setitem__("scale", 3.0),
              "counter beside setting": lambda m: m.stats.__setitem__("scale", 3.0)}[what]
    torch.manual_seed(0)
    _changed_after_a_query_matches_the_plain_model(Net().double().eval(), change)


def test_forward_side_values_keep_the_split_and_its_checks_quiet():
    # a value kept for display became a step that "mixed samples" (feature reuse off); a value
    # logged every third call was never unwatched (a self-check at almost every estimate); a
    # watched attribute later set to an array crashed the key's hashing
    import zoracle.adapters._torch_exact as exact

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)
            self.k, self.logged, self.last, self.weights = 0, 0.0, None, None

        def forward(self, x):
            h = torch.tanh(self.l1(x))
            self.last = h.detach().abs().mean()  # kept for display
            self.k += 1
            if self.k % 3 == 0:
                self.logged = float(self.k)  # logged every third call
            return self.l2(h)

    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind((x, y))
        assert [s.name for s in bound._core.chain.steps] == ["l1", "tanh", "l2"] and len(bound.blocks) == 2
        p = bound.initial_params()
        checks = []
        real = exact._self_check
        exact._self_check = lambda *a, **k: checks.append(1) or real(*a, **k)
        try:
            for i in range(12):
                zo.estimate_gradient(bound, p + 1e-3 * i, zo.CGE(mu=1e-4))
        finally:
            exact._self_check = real
        assert len(checks) <= 1
    model.weights = np.array([1.0, 2.0, 3.0])  # an attribute the forward does not read, now unhashable
    got = zo.estimate_gradient(bound, p, zo.CGE(mu=1e-6))
    ref = zo.estimate_gradient(lambda q: _plain_loss(model, q, x, y), p, zo.CGE(mu=1e-6))
    np.testing.assert_allclose(got.grad, ref.grad, rtol=1e-5, atol=1e-8)


def test_a_mean_loss_batch_refilled_where_no_version_counter_sees_it_is_seen():
    # x refilled through a NumPy view of the bound tensor: the plain call saw it, but with a mean
    # loss its chain states were not kept, and the perturbations used the old activations (200x off)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    bound = TorchOracle(model, lambda out, t: nn.functional.cross_entropy(out, t)).bind((x, y))
    p = bound.initial_params()
    zo.estimate_gradient(bound, p, zo.CGE(mu=1e-6))
    x.numpy()[:] = np.random.default_rng(1).standard_normal((6, 4))
    got = zo.estimate_gradient(bound, p, zo.CGE(mu=1e-6))
    ref = zo.estimate_gradient(lambda q: _plain_loss(model, q, x, y), p, zo.CGE(mu=1e-6))
    np.testing.assert_allclose(got.grad, ref.grad, rtol=1e-5, atol=1e-8)


def _changed_after_a_query_matches_the_plain_model(model, change):
    """CGE through TorchOracle after ``change(model)`` (made once an estimate has run) equals the
    plain model's forward differences (float64; a warning, a recheck or a retired split is fine)."""
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind((x, y))
    p = bound.initial_params()
    coords = np.arange(0, bound.size, 9)
    cge = zo.CGE(mu=1e-6)
    zo.estimate_gradient(bound, p, cge, coordinates=coords)
    change(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = zo.estimate_gradient(bound, p + 0.01, cge, coordinates=coords)
    ref = zo.estimate_gradient(lambda q: _plain_loss(model, q, x, y), p + 0.01, cge, coordinates=coords)
    np.testing.assert_allclose(got.grad[coords], ref.grad[coords], rtol=1e-5, atol=1e-8)


def test_the_base_point_comparison_keeps_watching_and_stays_quiet_on_correct_splits():
    # the first bind's self-check puts buffers back by copy_ (a new version): a large buffer the
    # forward converts (baked by value) was then unwatched, and a later change went unseen on the
    # prefix / suffix path. Masked -inf logits (-inf - -inf is NaN) and an output change the loss
    # ignores made the base-point comparison recheck the split at every estimate.
    import zoracle.adapters._torch_exact as exact
    import zoracle.adapters._torch_watch as watch

    class Baked(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
            self.register_buffer("big", torch.ones(300))

        def forward(self, x):
            return self.fc(torch.relu(self.c1(x)).mean((2, 3)) * float(self.big.mean()))

    torch.manual_seed(0)
    model = Baked().double().eval()
    x, y = torch.randn(16, 3, 6, 6, dtype=torch.float64), torch.randint(0, 5, (16,))
    bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind((x, y))
    assert ("buffer", "big") in watch._PLAIN_NAMES[model][1]  # still watched after the first bind's check
    p = bound.initial_params()
    with torch.no_grad():
        model.big.mul_(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(zo.ArgumentError, match="no blocks"):  # seen: rechecked and retired, not used stale
            bound.prefix(p, 0)

    class Masked(nn.Module):
        def __init__(self, shift=0.0):
            super().__init__()
            self.c1, self.fc, self.shift = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), [shift]
            self.register_buffer("allowed", torch.tensor([True] * 7 + [False] * 3))

        def forward(self, x):
            out = self.fc(torch.relu(self.c1(x)).mean((2, 3))) + self.shift[0]
            return out.masked_fill(~self.allowed, float("-inf"))

    for change in (None, lambda m: m.shift.__setitem__(0, 2.0)):  # a logit shift cross-entropy ignores
        torch.manual_seed(0)
        model = Masked()
        bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind(
            (torch.randn(32, 3, 8, 8), torch.randint(0, 7, (32,))))
        p = bound.initial_params()
        if change:
            change(model)
        checks, real = [], exact._self_check
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("zoracle.adapters.torch._self_check", lambda *a, **k: checks.append(1) or real(*a, **k))
            for _ in range(4):
                zo.estimate_gradient(bound, p, zo.CGE(mu=1e-3), coordinates=np.arange(0, bound.size, 5))
        assert checks == [] and bound._core.blocks


def test_a_prefix_after_an_unwatched_change_stops_loudly_then_full_forwards_are_right():
    # a sharded estimate's prefix made no base-point comparison: after a plain object's field
    # changed it built on the stale graph (4e5x off with threads, silently). Where the base point's
    # output is there (a thread executor's shards share it when the base task ran first), the
    # prefix compares, and a split that fails its check stops the estimate loudly
    class Plain:
        scale = 1.0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc, self.cfg = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), \
                nn.Linear(8, 5), Plain()

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)) * self.cfg.scale)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().double().eval()
    x, y = torch.randn(16, 3, 6, 6, dtype=torch.float64), torch.randint(0, 5, (16,))
    bound = TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).bind((x, y))
    p = bound.initial_params()
    bound.prefix(p, 0)
    model.cfg.scale = 3.0
    bound(p)  # the base point of the next estimate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(zo.ArgumentError, match="stops here"):
            bound.prefix(p, 0)
        with pytest.raises(zo.ArgumentError, match="no blocks .*stops here"):
            bound.prefix(p, 1)  # the other shards: the same reason
        got = zo.estimate_gradient(bound, p, zo.CGE(mu=1e-6))  # planned anew: full forwards
    ref = zo.estimate_gradient(lambda q: _plain_loss(model, q, x, y), p, zo.CGE(mu=1e-6))
    np.testing.assert_allclose(got.grad, ref.grad, rtol=1e-5, atol=1e-8)


def test_a_float32_model_on_cpu_with_bfloat16_matmuls_is_warned_about():
    """torch.set_float32_matmul_precision("medium") makes oneDNN run float32 matmuls in bfloat16
    on a CPU with bfloat16 units (AVX512-BF16, AMX): the oracle's batched forwards (large
    matmuls) rounded, its base forward (small) not, and CGE at mu = 5e-3 was off by 0.036 on a
    largest gradient of 0.12 (autograd in float64), silently. The CPU warns now, as CUDA's TF32."""
    from zoracle.adapters._torch_guards import _tf32_note
    before = torch.get_float32_matmul_precision()
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    data = (np.zeros((5, 4), np.float32), np.array([0, 1, 1, 0, 1]))
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.warns(RuntimeWarning, match=r'bfloat16.*set_float32_matmul_precision\("highest"\)'):
            TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), data)
        assert _tf32_note(torch.device("cpu", 0)) and not _tf32_note(torch.device("meta"))
        TorchOracle(net.double(), nn.CrossEntropyLoss(reduction="none"), data)  # float64: no warning
        torch.set_float32_matmul_precision("highest")
        assert _tf32_note(torch.device("cpu")) == ""
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_float32_model_with_a_half_precision_layer_is_refused():
    """The constructor refuses a float16 or bfloat16 model, but read the dtype of the first
    parameter only: a float32 body with a ``.half()`` head was accepted, its CGE estimates off by
    0.017 (autograd in float64; largest gradient 0.17) and its split retired for a dtype clash
    ("Index put requires the source and destination dtypes match")."""
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(10, 16), nn.Linear(16, 4).half()

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)).half()).float()

    data = (np.zeros((8, 10), np.float32), np.arange(8) % 4)
    with warnings.catch_warnings(), pytest.raises(zo.ArgumentError, match=r"'b.weight'.*float16.*dtype=torch.float32"):
        warnings.simplefilter("ignore")  # the retired split's warning, before the fix
        TorchOracle(Mixed(), nn.CrossEntropyLoss(reduction="none"), data)


def test_a_float32_model_on_cuda_in_tf32_is_warned_about():
    """torch runs float32 convolutions on CUDA in TF32 by default (cudnn.conv.fp32_precision
    "tf32"): inputs and weights rounded to 10 bits put about 1% into a finite difference at
    mu = 5e-3, and the closed-form paths (exact steps) disagree with full forwards. A float32
    TorchOracle on CUDA names the settings to change; the CPU never runs TF32. (Checked here
    on the settings; the warning itself needs a GPU.)"""
    from zoracle.adapters._torch_guards import _tf32_note

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    try:
        conv.fp32_precision = "tf32"
        assert _tf32_note(torch.device("cpu")) == ""
        note = _tf32_note(torch.device("cuda", 1))
        assert "cuda:1 runs in TF32" in note and 'set torch.backends.cudnn.conv.fp32_precision = "ieee"' in note
        conv.fp32_precision = "ieee"
        assert _tf32_note(torch.device("cuda")) == ""  # matmul's default: not TF32
    finally:
        conv.fp32_precision = before


def test_after_train_the_model_holds_the_trained_parameters():
    """The module held the last perturbed point an estimate queried: model(x) after training,
    and torch.save(model.state_dict()), gave neither the start nor the result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32), np.arange(64) % 3
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"))
    result = zo.train(oracle, oracle.initial_params(), batches=zo.Minibatches((x, y), 16, seed=0), epochs=2,
                      estimator=zo.CGE(5e-3), optimizer=zo.sgd(0.5), rng=0, progress=False)
    held = dict(model.named_parameters())
    flat = np.concatenate([held[n].detach().reshape(-1).numpy() for n in oracle.parameter_names])
    np.testing.assert_array_equal(flat, result.params)


def test_batches_torch_cannot_take_are_named_with_their_fix():
    """A SciPy sparse x failed with "sparse array length is ambiguous" (Minibatches takes sparse
    matrices); a (x, y, w) batch was "got ndarray"/"got tuple"; a last batch of one meeting
    BatchNorm in train mode gave torch's error, naming no fix."""
    sparse = pytest.importorskip("scipy.sparse")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    x, y = np.random.default_rng(0).standard_normal((9, 5)).astype(np.float32), np.arange(9) % 3
    with pytest.raises(zo.ArgumentError, match=r"x is a SciPy sparse csr_matrix.*x\.toarray\(\)"):
        TorchOracle(model, loss, (sparse.csr_matrix(x), y))
    with pytest.raises(zo.ArgumentError, match=r"got a tuple of 3 \(TorchOracle takes no third field"):
        TorchOracle(model, loss, (x, y, np.ones(9)))
    with pytest.raises(zo.ArgumentError, match=r"tuple of 3 arrays of 9 rows each: one batch \(X, y, \.\.\.\)"):
        zo.train(TorchOracle(model, loss), np.zeros(91, np.float32), batches=(x, y, np.ones(9)), progress=False)
    oracle = TorchOracle(model.train(), loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the executor-free train-mode notes
        with pytest.raises(zo.OracleError, match=r"batch of 1 sample\(s\) met BatchNorm in train mode.*drop_last=True"):
            zo.train(oracle, oracle.initial_params(), batches=zo.Minibatches((x, y), 4, seed=0), epochs=1,
                     estimator=zo.CGE(mu=1e-3), progress=False)


def test_a_pandas_frame_of_mixed_dtypes_binds_in_float64_not_rounded_to_float32():
    """np.asarray of a DataFrame of float and bool columns (pd.get_dummies) or of nullable
    Float64 columns is an object array; it went through torch.as_tensor(list), which makes
    Python floats float32: a float64 model trained on features rounded to float32."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.normal(40, 10, 16) + 0.123456789, "income": rng.normal(5e4, 1e4, 16),
                          "city": rng.choice(["a", "b"], 16)})
    xdf = pd.get_dummies(frame, columns=["city"])  # float64, float64, bool, bool
    x = xdf.to_numpy(dtype=np.float64)
    y = rng.integers(0, 2, 16)
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    oracle = TorchOracle(model, CE)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    z = x @ w.T + b
    m = z.max(1)
    ref = float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(16), y]))  # float64, by hand
    for given in (xdf, xdf.astype("Float64"), x.astype(object)):
        bound = oracle.bind((given, y))
        np.testing.assert_array_equal(bound._x.numpy(), x)
        assert abs(float(bound(oracle.initial_params())) - ref) <= 1e-12 * abs(ref)
        np.testing.assert_allclose(oracle.predict(oracle.initial_params(), given), z, rtol=1e-14, atol=0)
    yobj = (rng.normal(size=(16, 1)) * 1e4 + 0.123456789).astype(object)  # regression targets, object dtype
    reg = TorchOracle(nn.Linear(4, 1).double(), nn.MSELoss(reduction="none"), (x, yobj))
    assert reg._y.dtype == torch.float64
    np.testing.assert_array_equal(reg._y.numpy(), yobj.astype(np.float64))


def test_batches_of_strings_or_structured_arrays_are_named_with_their_fix():
    """String labels (a pandas categorical of strings, as fetch_openml returns) failed in
    to_torch with torch's "too many dimensions 'str'", a NumPy structured array with "can't
    convert np.ndarray of type numpy.void": neither named the batch's field nor the fix."""
    pd = pytest.importorskip("pandas")
    x, y = data((4,), 6, classes=3)
    names = np.array(["cat", "dog", "eel"])[y]
    oracle = TorchOracle(nn.Linear(4, 3).double(), CE)
    for labels in (names, names.astype(object), pd.Series(pd.Categorical(names)), names.tolist()):
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s y holds strings \('(cat|dog|eel)', \.\.\.\).*class "
                                                   r"indices.*return_inverse"):
            oracle.bind((x, labels))
    rec = np.zeros(6, dtype=[("a", "f8"), ("b", "f8"), ("c", "f8"), ("d", "f8")])
    for i, f in enumerate("abcd"):
        rec[f] = x[:, i]
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s x is a NumPy structured array \(fields a, b, c, d\).*"
                                               r"structured_to_unstructured"):
        oracle.bind((rec, y))
    from numpy.lib import recfunctions  # the fix named works, and gives the plain array's loss
    fixed = oracle.bind((recfunctions.structured_to_unstructured(rec), np.unique(names, return_inverse=True)[1]))
    assert float(fixed(oracle.initial_params())) == float(oracle.bind((x, y))(oracle.initial_params()))


def test_predict_converts_x_as_bind_does():
    """bind(batch) names its x when torch cannot hold it (a structured array, a big-endian array as
    np.load of a FITS or big-endian .npy file gives); predict(params, x) converted x with a bare
    to_torch: torch's own ValueError or TypeError, naming no argument."""
    x, y = data((4,), 6, classes=3)
    oracle = TorchOracle(nn.Linear(4, 3).double(), CE)
    p = oracle.initial_params()
    np.testing.assert_array_equal(oracle.predict(p, x), oracle.predict(p, np.asfortranarray(x)))
    rec = np.zeros(6, dtype=[("a", "f8"), ("b", "f8"), ("c", "f8"), ("d", "f8")])
    big = x.astype(">f8")
    for bad, match in ((rec, r"`x` is a NumPy structured array \(fields a, b, c, d\).*structured_to_unstructured"),
                       (big, r"`x` \(ndarray of dtype >f8\) cannot be made a tensor.*byte order")):
        with pytest.raises(zo.ArgumentError, match=match):
            oracle.predict(p, bad)
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s x"):  # bind's own message, as before
            oracle.bind((bad, y))


def test_dict_batches_and_lists_of_samples_are_named_with_their_fix():
    """A HuggingFace-style dict batch got "`batch` must be a pair (x, y) of arrays or tensors,
    got dict", naming no fix; a list of (x, y) samples got the hint for a third field, "takes no
    third field such as sample weights: fold them into the loss's targets"."""
    x, y = data((4,), 6, classes=3)
    oracle = TorchOracle(nn.Linear(4, 3).double(), CE)
    with pytest.raises(zo.ArgumentError, match=r"got dict with keys \['pixel_values', 'labels'\]: pass the pair "
                                               r"\(batch\['pixel_values'\], batch\['labels'\]\)"):
        oracle.bind({"pixel_values": x, "labels": y})
    samples = [(x[i], y[i]) for i in range(6)]
    with pytest.raises(zo.ArgumentError, match=r"got a list of 6: a list of samples, not of fields") as err:
        oracle.bind(samples)
    assert "third field" not in str(err.value)
    with pytest.raises(zo.ArgumentError, match=r"got a list of 6: a list of samples"):
        oracle.bind([{"x": x[i], "y": y[i]} for i in range(6)])
    with pytest.raises(zo.ArgumentError, match=r"got a tuple of 3 \(TorchOracle takes no third field"):
        oracle.bind((x, y, np.ones(6)))
    # the fixes named give the loss of the plain pair, and that loss is cross-entropy by hand
    p = oracle.initial_params()
    w, b = p[:12].reshape(3, 4), p[12:]
    z = x @ w.T + b
    m = z.max(1)
    ref = float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(6), y]))
    for pair in ((x, y), (np.stack([s[0] for s in samples]), np.array([s[1] for s in samples]))):
        assert abs(float(oracle.bind(pair)(p)) - ref) <= 1e-12


@pytest.mark.parametrize("given,seen", [("aligned tensor", True), ("slice buf[1:7]", True),
                                        ("float32 tensor", False), ("numpy", False)])
def test_a_write_into_a_bound_batch_is_seen_as_pytorch_md_says(given, seen):
    """pytorch.md said a slice `buf[1:7]` is copied at bind and "the bound oracle keeps the values
    it was given"; since the aligned copy is made again after a write (7e85823) a slice's writes
    are seen, as an aligned tensor's are. Pinned against the loss by hand, before and after."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    oracle = TorchOracle(model, nn.MSELoss(reduction="none"))
    p = oracle.initial_params()
    w, b = p[:4], p[4]
    buf, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    x = {"aligned tensor": buf, "slice buf[1:7]": buf[1:7], "float32 tensor": buf.float(), "numpy": buf.numpy()}[given]
    x64 = torch.as_tensor(x).double().numpy().copy()
    yy = y[:len(x64)]
    bound = oracle.bind((x, yy))

    def by_hand(xs):
        return float(np.mean((xs @ w + b - yy.numpy()[:, 0]) ** 2))

    assert abs(float(bound(p)) - by_hand(x64)) <= 1e-12
    if given == "numpy":
        x *= 2.0
    else:
        x.mul_(2.0)
    assert abs(float(bound(p)) - by_hand(2 * x64 if seen else x64)) <= 1e-12


def test_integer_features_and_int32_labels_are_named_with_their_fix():
    """uint8 pixels as x met the float model with torch's "mat1 and mat2 must have the same
    dtype, but got Byte and Float"; int32 labels (NumPy 1.x's default int on Windows) or a pandas
    categorical's int8 codes with "expected target dtype to be Long or Byte, but got Int" from
    inside the loss capture: neither named the batch's field or the fix."""
    x, y = data((4,), 6, classes=3)
    pixels = (np.abs(x) * 50).astype(np.uint8)
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s x is uint8 and model\(x\) failed on it .*"
                                               r"x\.astype\(np\.float32\)"):
        TorchOracle(nn.Linear(4, 3), CE).bind((pixels, y))
    for codes in (y.astype(np.int32), y.astype(np.int8)):
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is int(32|8) and loss_fn\(outputs, y\) failed on it "
                                                   r".*y\.astype\(np\.int64\)"):
            TorchOracle(nn.Linear(4, 3).double(), CE).bind((x, codes))
    # the fixes named: the loss is cross-entropy by hand
    oracle = TorchOracle(nn.Linear(4, 3).double(), CE)
    p = oracle.initial_params()
    xs = pixels.astype(np.float64)
    z = xs @ p[:12].reshape(3, 4).T + p[12:]
    m = z.max(1)
    ref = float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(6), y]))
    got = float(oracle.bind((pixels.astype(np.float32), y.astype(np.int32).astype(np.int64)))(p))
    assert abs(got - ref) <= 1e-12 * abs(ref)


@pytest.mark.parametrize("first", ["conv", "conv_nobias", "batchnorm"])
def test_uint8_images_for_a_cnn_are_named_with_their_fix(first):
    """uint8 pixels bound to a CNN met torch's own "Input type (unsigned char) and bias type
    (float) should be the same" (or "expected scalar type Byte but found Float", or "batch_norm"
    not implemented for 'Byte'): the integer-batch error looked for the word "dtype" only."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, 6)
    head = {"conv": lambda: nn.Conv2d(1, 2, 3), "conv_nobias": lambda: nn.Conv2d(1, 2, 3, bias=False),
            "batchnorm": lambda: nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3))}[first]
    torch.manual_seed(0)
    model = nn.Sequential(head(), nn.Flatten(), nn.Linear(72, 3)).double().eval()
    ce = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s x is uint8 and model\(x\) failed on it .*"
                                               r"x\.astype\(np\.float32\)"):
        TorchOracle(model, ce).bind((pixels, y))
    # the fix named: the loss torch computes on the float pixels
    oracle = TorchOracle(model, ce)
    got = float(oracle.bind((pixels.astype(np.float32), y))(oracle.initial_params()))
    with torch.no_grad():
        ref = float(ce(model(torch.as_tensor(pixels, dtype=torch.float64)), torch.as_tensor(y)).mean())
    assert abs(got - ref) <= 1e-12 * abs(ref)
    emb = nn.Sequential(nn.Embedding(10, 2), nn.Flatten(), nn.Linear(8, 3))  # token ids: torch's word stays
    with pytest.raises(RuntimeError, match="indices"):
        TorchOracle(emb, ce).bind((rng.integers(0, 10, (6, 4)).astype(np.uint8), y))


def test_targets_of_another_dtype_than_a_bce_loss_takes_are_named_with_their_fix():
    """BCELoss takes targets in the outputs' dtype: float64 0/1 labels (NumPy's default, and an
    object-dtype pandas column, which bound as float32 before it bound as float64) met a float32
    model with torch's bare "Found dtype Double but expected Float"; int32 labels were told "pass
    y.astype(np.int64)", which fails again ("Found dtype Long but expected Float")."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = (np.arange(6) % 2)[:, None]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())  # float32
    bce = nn.BCELoss(reduction="none")
    for labels in (y.astype(np.float64), y.astype(np.int32), y.astype(np.int64), pd.DataFrame(y).astype(object)):
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is (float64|int32|int64) and loss_fn\(outputs, y\) "
                                                   r"failed on it .*outputs' dtype, float32; pass y\.astype\(np\.float32\)"):
            TorchOracle(model, bce).bind((x, labels))
    with pytest.raises(zo.ArgumentError, match=r"y\.astype\(np\.float64\)"):  # a float64 model
        TorchOracle(copy.deepcopy(model).double(), bce).bind((x, y.astype(np.float32)))
    oracle = TorchOracle(model, bce)  # the fix named: binary cross-entropy by hand
    p = oracle.initial_params().astype(np.float64)
    s = 1 / (1 + np.exp(-(x.astype(np.float64) @ p[:4] + p[4])))
    ref = float(np.mean(-(y[:, 0] * np.log(s) + (1 - y[:, 0]) * np.log(1 - s))))
    got = float(oracle.bind((x, y.astype(np.float32)))(oracle.initial_params()))
    assert abs(got - ref) <= 1e-6 * abs(ref)


def test_an_integer_batchs_error_that_is_no_dtype_clash_is_torchs_own():
    """Token ids (int64 x) into a model with a shape bug: torch's own RuntimeError stays, not
    the integer-batch advice (pass float features), which would not fix it."""
    ids = np.random.default_rng(0).integers(0, 10, (6, 4))
    y = np.arange(6) % 3
    wrong = nn.Sequential(nn.Embedding(10, 2), nn.Flatten(), nn.Linear(7, 3)).double()  # 8 features, not 7
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        TorchOracle(wrong, CE).bind((ids, y))
    assert not isinstance(err.value, zo.ArgumentError)


def test_int64_targets_a_loss_refuses_are_not_told_to_become_int64():
    """int64 0/1 targets for BCELoss, which takes them in the outputs' dtype: whatever is raised
    must not advise `y.astype(np.int64)`, which they already are."""
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = (np.arange(6) % 2).reshape(6, 1).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()).double()
    with pytest.raises((RuntimeError, zo.ArgumentError)) as err:
        TorchOracle(model, nn.BCELoss(reduction="none")).bind((x, y))
    assert "y.astype(np.int64)" not in str(err.value)


def test_integer_targets_for_bce_with_logits_are_told_the_outputs_dtype():
    """BCEWithLogitsLoss casts its result to the targets' dtype: int32 (or uint8) 0/1 labels met
    torch's "result type Float can't be cast to the desired output type Int" and were told "pass
    y.astype(np.int64)", which fails again ("... output type Long", then torch's bare word)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = (np.arange(6) % 2)[:, None]
    torch.manual_seed(0)
    model = nn.Linear(4, 1)  # float32
    bce = nn.BCEWithLogitsLoss(reduction="none")
    for labels in (y.astype(np.int32), y.astype(np.uint8), y.astype(np.int64)):
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is (int32|uint8|int64) and loss_fn\(outputs, y\) "
                                                   r"failed on it .*outputs' dtype, float32; pass y\.astype\(np\.float32\)"):
            TorchOracle(model, bce).bind((x, labels))
    oracle = TorchOracle(model, bce)  # the fix named: binary cross-entropy on logits by hand
    p = oracle.initial_params().astype(np.float64)
    z = x.astype(np.float64) @ p[:4] + p[4]
    ref = float(np.mean(np.logaddexp(0, z) - y[:, 0] * z))
    got = float(oracle.bind((x, y.astype(np.float32)))(oracle.initial_params()))
    assert abs(got - ref) <= 1e-6 * abs(ref)


def test_token_ids_are_not_told_to_become_floats_for_another_dtype_clash():
    """int64 token ids into an embedding model whose float64 buffer meets float32 weights (a
    positional table built from NumPy): torch's "mat1 and mat2 must have the same dtype, but got
    Double and Float" names no dtype of x, yet was turned into "pass float features, e.g.
    x.astype(np.float32)", which breaks the embedding (and the model stays wrong)."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.register_buffer("pe", torch.as_tensor(np.zeros((5, 4))))  # float64
            self.head = nn.Linear(4, 3)

        def forward(self, ids):
            return self.head((self.emb(ids) + self.pe).mean(1))

    ids = np.random.default_rng(0).integers(0, 10, (6, 5))
    y = np.arange(6) % 3
    with pytest.raises(RuntimeError, match="same dtype, but got Double and Float") as err:
        TorchOracle(Tokens(), CE).bind((ids, y))
    assert "x.astype(np.float32)" not in str(err.value)
    with pytest.raises(zo.ArgumentError, match=r"x is int64 .*but got Long and Double.*x\.astype\(np\.float32\)"):
        TorchOracle(nn.Linear(5, 3).double(), CE).bind((ids, y))  # int64 features into a linear model: still named


def test_a_torch_batchs_dtype_fix_is_named_in_torch_words():
    """A batch held as torch tensors (int32 labels, uint8 pixels, int64 0/1 labels for BCE) was told
    "pass y.astype(np.int64)" / "x.astype(np.float32)": a tensor has no astype (AttributeError).
    The torch form named runs, and gives the loss computed by hand."""
    x, y = data((4,), 6, classes=3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is int32 .*y\.long\(\)"):
        TorchOracle(nn.Linear(4, 3).double(), CE).bind((xt, yt.int()))
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s x is uint8 .*x\.float\(\)"):
        TorchOracle(nn.Linear(4, 3).double(), CE).bind(((xt.abs() * 50).to(torch.uint8), yt))
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is int64 .*y\.to\(torch\.float32\)"):
        TorchOracle(nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()), nn.BCELoss(reduction="none")).bind(
            (xt.float(), (yt[:, None] % 2)))
    with pytest.raises(AttributeError):
        yt.int().astype(np.int64)  # the NumPy form named before
    oracle = TorchOracle(nn.Linear(4, 3).double(), CE)  # the torch fix named: cross-entropy by hand
    p = oracle.initial_params()
    z = x.astype(np.float64) @ p[:12].reshape(3, 4).T + p[12:]
    m = z.max(1)
    ref = float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(6), y]))
    got = float(oracle.bind((xt, yt.int().long()))(p))
    assert abs(got - ref) <= 1e-12 * abs(ref)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bool_targets_for_bce_with_logits_are_told_the_outputs_dtype(dtype):
    """Boolean 0/1 labels (``y > 0``, a bool column) into BCEWithLogitsLoss met torch's "Subtraction, the
    `-` operator, with two bool tensors is not supported. Use the `^` or `logical_xor()` operator
    instead" (no fix for the labels), where int32 labels were told the outputs' dtype. The fix named
    gives binary cross-entropy on logits computed by hand."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    y = (np.arange(6) % 2 == 1)[:, None]
    torch.manual_seed(0)
    model = nn.Linear(4, 1).to(dtype)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    want = str(dtype).replace("torch.", "")
    with pytest.raises(zo.ArgumentError, match=rf"`batch`'s y is bool and loss_fn\(outputs, y\) failed on it .*"
                                               rf"outputs' dtype, {want}; pass y\.astype\(np\.{want}\)"):
        TorchOracle(model, bce).bind((x, y))
    oracle = TorchOracle(model, bce)
    p = oracle.initial_params().astype(np.float64)
    z = x @ p[:4] + p[4]
    ref = float(np.mean(np.logaddexp(0, z) - y[:, 0] * z))
    got = float(oracle.bind((x, y.astype(want)))(oracle.initial_params()))
    assert abs(got - ref) <= (1e-6 if dtype == torch.float32 else 1e-12) * abs(ref)


def test_one_oracle_shared_by_two_runs_in_threads_keeps_its_split_and_results():
    # a sweep that gives one TorchOracle to two zo.train runs at once (ThreadPoolExecutor): the
    # split checks (first bind, ensure_split) ran outside the model's lock while the other run's
    # queries held the model in their own state (its parameters loaded, swapped in by vmap), so
    # a check failed ("a parameter was frozen or unfrozen"), retired the split for both runs, or
    # raised inside the other thread's query; 4 of 8 such trials went wrong
    import threading

    torch.manual_seed(0)
    m0 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                       nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    rs = np.random.RandomState(0)
    X = torch.from_numpy(rs.randn(24, 1, 8, 8).astype(np.float32))
    Y = torch.from_numpy(rs.randint(0, 3, 24))
    theta0 = TorchOracle(copy.deepcopy(m0), cross_entropy).initial_params()

    def run(oracle, lr, seed):
        return zo.train(oracle, theta0, batches=zo.Minibatches((X, Y), batch_size=8, seed=seed), epochs=3,
                        estimator=zo.RGE(mu=5e-3, directions=4), optimizer=zo.sgd(lr, momentum=0.9), rng=seed,
                        progress=False).params

    jobs = [(0.05, 1), (0.2, 2)]
    alone = [run(TorchOracle(copy.deepcopy(m0), cross_entropy), *job) for job in jobs]
    for _ in range(6):
        shared = TorchOracle(copy.deepcopy(m0), cross_entropy)
        out, errors = [None, None], []

        def work(i, shared=shared, out=out, errors=errors):
            try:
                out[i] = run(shared, *jobs[i])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a retired split warns from the worker threads
            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        assert not errors, errors[0]
        assert shared.bind((X[:8], Y[:8])).blocks, "the split was retired"
        for got, want in zip(out, alone):
            np.testing.assert_array_equal(got, want)


def test_numpy_scalar_loss_fn_on_a_batch_of_one():
    """A black-box ``loss_fn`` returning one mean loss as a Python or NumPy scalar is the
    documented "one scalar" form at any batch size: on a first minibatch of one sample it was
    read as one per-sample loss (``to_torch`` made the 0-d scalar 1-d) and every batched query
    then failed with "must return per-sample losses of shape (2,) ... got shape (1,)"."""
    from zoracle.adapters.torch import to_torch

    assert to_torch(np.float64(0.5)).shape == () and to_torch(np.array(2.0)).shape == ()
    torch.manual_seed(3)
    model = make_mlp(in_features=4, hidden=5, depth=2, num_classes=3).double()
    x, y = data((4,), 3, seed=3, classes=3)

    def mean_loss(out, target):  # a black box: NumPy in, one mean loss out
        o, t = out.numpy(), np.asarray(target)
        o = o - o.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(o).sum(1)) - o[np.arange(len(t)), t]))

    for make in (float, np.float64, np.array):
        bb = TorchOracle(model, lambda o, t: make(mean_loss(o, t)), (x[:1], y[:1]))
        ref = TorchOracle(model, nn.CrossEntropyLoss(), (x[:1], y[:1]))  # the same loss as a 0-d tensor
        theta = ref.initial_params()
        coords = np.arange(theta.size)
        np.testing.assert_allclose(bb.coordinate_losses(theta, coords, 1e-3),
                                   ref.coordinate_losses(theta, coords, 1e-3), rtol=1e-12)
        assert bb(theta) == pytest.approx(ref(theta), rel=1e-14)


def test_to_torch_takes_the_dtypes_torchoracle_takes():
    """``to_torch(x, dtype=np.float32)`` (or ``"float32"``, as ``TorchOracle(dtype=)`` takes) failed
    with torch's "to() received an invalid combination of arguments"."""
    from zoracle.adapters.torch import to_torch

    x = np.arange(3.0)
    for dtype, want in [(np.float32, torch.float32), ("float32", torch.float32), (np.dtype("f8"), torch.float64),
                        (torch.float32, torch.float32)]:
        t = to_torch(x, dtype=dtype)
        assert t.dtype == want and t.tolist() == [0.0, 1.0, 2.0]
    assert to_torch(np.arange(3), dtype=np.float32).dtype == torch.int64  # class labels keep theirs
    with pytest.raises(zo.ArgumentError, match="float32 or float64"):
        to_torch(x, dtype=torch.float16)


def test_class_labels_as_a_column_are_told_to_ravel():
    """Labels as a (N, 1) column (df[["label"]].to_numpy()) met torch's bare "0D or 1D target tensor
    expected, multi-target not supported", in TorchOracle(batch=) and at train's first bind."""
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.arange(6) % 3
    model = nn.Sequential(nn.Linear(4, 3)).double()
    for loss in (nn.CrossEntropyLoss(reduction="none"), nn.NLLLoss(reduction="none")):
        with pytest.raises(zo.ArgumentError, match=r"`batch`'s y has shape \(6, 1\) .*multi-target not supported.*"
                                                   r"one label per sample, shape \(6,\): pass y.ravel\(\)"):
            TorchOracle(model, loss, (x, y[:, None]))
    # the reference: the raveled labels give torch's own per-sample losses
    got = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), (x, y[:, None].ravel()))(
        TorchOracle(model, nn.CrossEntropyLoss(reduction="none")).initial_params())
    with torch.no_grad():
        want = nn.functional.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).item()
    assert got == pytest.approx(want, rel=1e-12)




def test_a_later_bind_of_another_kind_of_batch_gets_the_first_binds_advice():
    """The dtype and label-shape advice ran at the first bind only: an oracle first bound to good
    labels, then (zo.train's oracle.bind(batch), a validation loader) to a (N, 1) label column,
    int32 labels, uint8 pixels or int 0/1 targets for BCE met torch's bare "0D or 1D target tensor
    expected, multi-target not supported" (or "expected target dtype to be Long") at its first
    query. A batch of a kind bound before is not checked again (no loss call)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)), np.arange(6) % 3
    model = nn.Linear(4, 3).double()
    calls = []

    def ce(out, t):
        calls.append(out.shape[0])
        return nn.functional.cross_entropy(out, t, reduction="none")

    oracle = TorchOracle(model, ce)
    p = oracle.initial_params()
    oracle.bind((x, y))(p)
    for bad, advice in (((x, y[:, None]), r"`batch`'s y has shape \(6, 1\) .*pass y.ravel\(\)"),
                        ((x, torch.as_tensor(y)[:, None]), r"y has shape \(6, 1\) .*y.squeeze\(1\)"),
                        ((x, y.astype(np.int32)), r"`batch`'s y is int32 .*y\.astype\(np\.int64\)"),
                        (((np.abs(x) * 50).astype(np.uint8), y), r"`batch`'s x is uint8 .*x\.astype\(np\.float32\)")):
        with pytest.raises(zo.ArgumentError, match=advice):
            oracle.bind(bad)(p)
    bce = TorchOracle(nn.Linear(4, 1).double(), nn.BCEWithLogitsLoss(reduction="none"))
    bce.bind((x, (y[:, None] > 0).astype(np.float64)))(bce.initial_params())
    with pytest.raises(zo.ArgumentError, match=r"`batch`'s y is int64 .*outputs' dtype, float64"):
        bce.bind((x, (y[:, None] > 0).astype(np.int64)))
    # the fixes named give torch's own loss, by hand in float64; a batch of a kind bound before
    # (a last short batch) is not probed again
    with torch.no_grad():
        want = nn.functional.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).item()
    for fixed in (y[:, None].ravel(), y.astype(np.int32).astype(np.int64)):
        assert oracle.bind((x, fixed))(p) == pytest.approx(want, rel=1e-12)
    before = len(calls)
    oracle.bind((x[:5], y[:5]))
    assert len(calls) == before


def test_labels_of_two_columns_are_not_told_to_ravel():
    """Only a single (N, 1) column is one label per sample: (N, 2) integer targets raveled would be
    2N labels for N samples, so torch's own error stands, with no y.ravel() advice."""
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.stack([np.arange(6) % 3] * 2, axis=1)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    with pytest.raises(RuntimeError, match="multi-target not supported") as info:
        TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    assert "ravel" not in str(info.value)


@pytest.mark.parametrize("kind", [int, bool])
def test_integer_params_batch_gives_the_losses_of_the_same_float_weights(kind):
    """batch() kept an integer params_batch as int64: vmap failed on it (and was turned off for
    the oracle), and the loop's losses were written into an int64 tensor: 1.0 for ln 3 = 1.0986.
    A plain call of the same rows cast them to the model's floats and was right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    o = TorchOracle(model, cross_entropy).bind((x, y))
    P = np.zeros((2, o.size), dtype=int)
    P[1, -3:] = [1, 0, 2]
    P = P.astype(kind)
    m64 = copy.deepcopy(model).double()  # the reference: the same weights in float64, torch directly

    def ref(p):
        torch.nn.utils.vector_to_parameters(torch.tensor(p, dtype=torch.float64), m64.parameters())
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m64(x.double()), y).item()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "vmap failed" warning
        got = o.batch(P)
    np.testing.assert_allclose(got, [ref(p) for p in P], rtol=1e-6)
    assert o._core.vmap_ok


def test_params_as_a_python_list_or_tuple_are_taken_by_every_method():
    """A plain call takes a list; a tuple raised AttributeError ('tuple' object has no attribute
    'copy'), and coordinate_losses after a list call raised one in the cache check ('list' object
    has no attribute 'shape')."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    o = TorchOracle(model, cross_entropy).bind((x, y))
    th = o.initial_params()
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model(x), y).item()  # torch directly, at the initial weights
    c = np.array([0, 30])
    want = o.coordinate_losses(th, c, 0.01)
    assert o(th.tolist()) == pytest.approx(ref, rel=1e-6) and o(tuple(th.tolist())) == pytest.approx(ref, rel=1e-6)
    np.testing.assert_array_equal(o.coordinate_losses(th.tolist(), c, 0.01), want)
    np.testing.assert_array_equal(o.coordinate_losses(tuple(th.tolist()), c, 0.01), want)


def test_integer_params_batch_of_a_float64_model_is_computed_in_float64():
    """Integer params rows are cast to the model's own float: a float64 model's batch losses equal
    those of torch called directly in float64 (the reference) to float64 precision, not float32's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    o = TorchOracle(model, cross_entropy).bind((x, y))
    P = np.zeros((3, o.size), dtype=int)
    P[1, :7] = [1, -1, 2, 0, 1, 3, -2]
    P[2, -3:] = [1, 0, 2]
    m64 = copy.deepcopy(model)

    def ref(p):
        torch.nn.utils.vector_to_parameters(torch.tensor(p, dtype=torch.float64), m64.parameters())
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m64(x), y).item()

    got = o.batch(P)
    assert np.asarray(got).dtype == np.float64
    np.testing.assert_allclose(got, [ref(p) for p in P], rtol=1e-13)
    np.testing.assert_allclose([o(p) for p in P], [ref(p) for p in P], rtol=1e-13)
