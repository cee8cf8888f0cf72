"""TorchOracle and what a user does to the model around it: state a forward keeps outside its
buffers (a hook's running average), the model converted to another dtype after the build, a
parametrization registered after the build (the names ``param_info`` gives)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle import ArgumentError  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=dtype), torch.randint(0, 2, (8,), generator=g)


def test_a_hook_keeping_a_running_average_is_named_at_the_first_bind():
    """A forward hook whose closure keeps a running average of its output: two plain calls in a
    row at the first bind agree (the average of one repeated output stays put), but every query
    at other parameters moves it, and plain calls drifted with no warning."""
    net = _mlp()
    avg = {}

    def centre(mod, inp, out):
        m = out.detach().mean(0)
        avg["v"] = m if "v" not in avg else 0.9 * avg["v"] + 0.1 * m
        return out - avg["v"]

    net[0].register_forward_hook(centre)
    with pytest.warns(RuntimeWarning, match="not repeatable") as seen:
        oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), _batch())
    text = " ".join(str(w.message) for w in seen)
    assert "keeps state between calls" in text and "centre() on '0'" in text
    assert "register_buffer" in text and "eval mode" in text and "remove the hook" in text
    theta = oracle.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once: the later calls do not check again
        first, second = oracle(theta), oracle(theta)
    assert first != second  # the drift the warning names


def test_a_module_attribute_updated_and_read_by_its_forward_is_named():
    class Centred(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.running = None  # a plain attribute, not a buffer

        def forward(self, x):
            h = self.fc(x)
            m = h.detach().mean(0)
            self.running = m if self.running is None else 0.9 * self.running + 0.1 * m
            return h - self.running

    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="not repeatable") as seen:
        oracle = TorchOracle(Centred(), nn.CrossEntropyLoss(reduction="none"), _batch())
    text = " ".join(str(w.message) for w in seen)
    assert "'Centred.running'" in text and "register_buffer" in text
    theta = oracle.initial_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the attribute it writes does not start a check at every call
        oracle(theta)
        oracle(theta)


def test_state_that_does_not_change_the_output_is_not_named():
    """A call counter and a hook keeping the last output for display are outputs, not state the
    loss reads: no warning (pytest turns zoracle's warnings into errors)."""
    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.body(x)

    model = Counted()
    shown = {}
    model.body[0].register_forward_hook(lambda mod, inp, out: shown.__setitem__("last", out.detach()))
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"), _batch())
    theta = oracle.initial_params()
    assert oracle(theta) == oracle(theta)
    assert oracle.blocks  # the split stays


@pytest.mark.parametrize("convert", ["half", "bfloat16"])
def test_a_model_made_half_after_the_build_is_refused_naming_the_conversion(convert):
    net = _mlp()
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), _batch())
    theta = oracle.initial_params()
    getattr(net, convert)()
    for query in (lambda: oracle(theta), lambda: oracle.bind(_batch()), lambda: oracle.initial_params(),
                  lambda: oracle.load(theta)):
        with pytest.raises(ArgumentError, match=r"built on torch.float32 ones \(model.half\(\).*model.float\(\)") as e:
            query()
        assert "half precision" in str(e.value) and "`dtype`" not in str(e.value)  # no argument the user never passed


def test_a_float64_model_made_float32_after_the_build_is_refused_naming_the_conversion():
    net = _mlp(torch.float64)
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), _batch(torch.float64))
    theta = oracle.initial_params()
    net.float()
    with pytest.raises(ArgumentError, match=r"'0.weight'.* are torch.float32 now, but the TorchOracle was built on "
                                            r"torch.float64 ones.*model.double\(\)"):
        oracle(theta)
    with pytest.raises(ArgumentError, match="model.double"):
        oracle.batch(theta[None])
    net.double()  # converted back: the oracle runs again
    assert np.isfinite(oracle(theta))


class _Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).T


def test_param_info_follows_a_parametrization_registered_after_the_build():
    """The names map an estimate back to the model's parameters (docs/training.md sets each
    ``.grad`` by ``model.get_parameter(info.name)``): after a parametrization the weight's tensor
    is ``0.parametrizations.weight.original``, and ``0.weight`` a computed tensor, no Parameter."""
    x, y = _batch(torch.float64)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), (x, y))
    held = [net[0].weight, net[0].bias, net[2].weight, net[2].bias]
    parametrize.register_parametrization(net[0], "weight", _Symmetric())
    names = [i.name for i in oracle.param_info]
    assert names == oracle.parameter_names
    assert names[0] == "0.parametrizations.weight.original"
    assert [net.get_parameter(n) for n in names] == held  # the flat vector's tensors, by the names given

    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-6, scheme="central"))
    g = torch.from_numpy(est.grad)
    # the estimate is autograd's gradient with respect to the tensor so named
    oracle.load(theta)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    want = net[0].parametrizations.weight.original.grad.clone()
    assert torch.allclose(g[oracle.param_info[0].slice].view(3, 3), want, rtol=1e-5, atol=1e-8)
    # the docs' loop: the estimate's slices into each parameter's .grad, by name, and a torch.optim step
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.zero_grad()
    for info in oracle.param_info:
        p = net.get_parameter(info.name)
        p.grad = g[info.slice].view(info.shape).to(p)
    before = net[0].parametrizations.weight.original.detach().clone()
    opt.step()
    assert torch.allclose(net[0].parametrizations.weight.original, before - 0.1 * want, rtol=1e-5, atol=1e-8)


def test_one_layer_converted_after_the_build_is_refused_at_the_next_bind():
    net = _mlp()
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), _batch())
    net[2].double()
    with pytest.raises(ArgumentError, match=r"parameters '2.weight', '2.bias' are torch.float64 now.*model.float\(\)"):
        oracle.bind(_batch())


def test_the_attribute_is_named_whatever_id_its_new_value_gets():
    """The check compared a plain attribute's tensor by id: the value a forward replaced was freed,
    and its id was the new value's about one build in twenty (the attribute left unnamed, the
    warning saying "a closure, ..."). The values are held through the comparison now."""
    class Centred(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.running = None  # a plain attribute, replaced (not written) by each forward

        def forward(self, x):
            h = self.fc(x)
            m = h.detach().mean(0)
            self.running = m if self.running is None else 0.9 * self.running + 0.1 * m
            return h - self.running

    for seed in range(60):
        torch.manual_seed(seed)
        with pytest.warns(RuntimeWarning, match="not repeatable") as seen:
            TorchOracle(Centred(), nn.CrossEntropyLoss(reduction="none"), _batch())
        assert "'Centred.running'" in " ".join(str(w.message) for w in seen), (seed, [str(w.message) for w in seen])
