"""Arguments given the way users slip, refused before any query with the call that works:

- an estimator or optimizer as the class or factory not called, its name as text, torch's optimizer class
  (``got type`` alone left the user to see that ``zo.CGE`` wanted ``()``);
- a torch training loop's names (``data``, ``batch_size``, ``steps``, ``loss_fn``, ``device``, ...) given to
  ``zo.train`` or ``zo.AskTell`` (``see help(zo.train)``, or a nearest name that misled: ``save_every`` ->
  ``eval_every``)."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from test_errors import Counting as _Counting  # (a quadratic that counts its calls)


def _train_refusal(**kw):
    f = _Counting()
    with pytest.raises(zo.ArgumentError) as err:
        zo.train(f, np.ones(3), epochs=1, progress=False, **kw)
    assert f.calls == 0, "refused after querying"
    return str(err.value)


@pytest.mark.parametrize("given, fix", [
    (zo.CGE, "(the class zo.CGE itself: pass an instance, estimator=zo.CGE())"),
    (zo.RGE, "(the class zo.RGE itself: pass an instance, estimator=zo.RGE())"),
    (zo.SNES, "(the class zo.SNES itself: pass an instance, estimator=zo.SNES())"),
    ("CGE", "('CGE' is text: pass estimator=zo.CGE())"),
    (" rge", "(' rge' is text: pass estimator=zo.RGE())"),
    (1e-3, "(a number here is scipy approx_fprime's epsilon: pass estimator=zo.CGE(mu=0.001))"),
])
def test_an_estimator_slip_names_the_call(given, fix):
    said = _train_refusal(estimator=given)
    assert said.startswith("`estimator` must be zo.CGE(...)") and said.endswith(fix), said
    with pytest.raises(zo.ArgumentError) as err:
        zo.estimate_gradient(_Counting(), np.ones(3), given)
    assert str(err.value).endswith(fix), err.value
    with pytest.raises(zo.ArgumentError) as err:
        zo.AskTell(np.ones(3), estimator=given)
    assert str(err.value).endswith(fix), err.value


@pytest.mark.parametrize("given, fix", [
    (zo.sgd, "(the function zo.sgd itself: call it with a learning rate, optimizer=zo.sgd(0.1))"),
    (zo.adam, "(the function zo.adam itself: call it with a learning rate, optimizer=zo.adam(1e-3))"),
    (zo.sign_sgd, "(the function zo.sign_sgd itself: call it with a learning rate, optimizer=zo.sign_sgd(0.01))"),
    ("Adam", "('Adam' is text: pass optimizer=zo.adam(1e-3))"),
    ("sign-sgd", "('sign-sgd' is text: pass optimizer=zo.sign_sgd(0.01))"),
])
def test_an_optimizer_slip_names_the_call(given, fix):
    said = _train_refusal(optimizer=given)
    assert said.startswith("`optimizer` must be built by zo.sgd") and said.endswith(fix), said


def test_torch_optimizer_class_names_zoracles_own():
    torch = pytest.importorskip("torch")
    said = _train_refusal(optimizer=torch.optim.Adam)
    assert said.endswith("got type (torch's Adam updates a module's tensors from their .grad; zoracle updates the "
                         "flat params itself: pass zoracle's own, e.g. optimizer=zo.adam(1e-3) or "
                         "zo.sgd(0.1, momentum=0.9))"), said


def test_lookalikes_get_no_hint():
    """A user's own class named CGE, a function named adam from elsewhere, other text: the plain refusal,
    no fix that would be wrong."""
    class CGE:
        pass

    def adam(params):
        return params

    assert _train_refusal(estimator=CGE).endswith("got type")
    assert _train_refusal(estimator="cge-ish").endswith("got str")
    assert _train_refusal(optimizer=adam).endswith("got function")
    assert _train_refusal(optimizer="rmsprop").endswith("got str")
    assert _train_refusal(optimizer=dict).endswith("got type")


# ---- a torch training loop's (or Keras fit's) names given to train and AskTell


@pytest.mark.parametrize("name, fix", [
    ("data", "the minibatches are `batches`"), ("train_loader", "the minibatches are `batches`"),
    ("batch_size", "batches=zo.Minibatches((x, y), batch_size, seed=0)"),
    ("steps", "the steps are `epochs`"), ("n_iter", "the steps are `epochs`"),
    ("iterations", "the steps are `epochs`"),  # (the nearest name was `ratios`)
    ("momentum", "optimizer=zo.sgd(lr, momentum=0.9"), ("weight_decay", "optimizer=zo.sgd(lr, momentum=0.9"),
    ("loss_fn", "oracle=TorchOracle(model, loss_fn, device=...)"), ("device", "TorchOracle(model, loss_fn, device"),
    ("val_data", "evaluation is `eval_fn`"),
    ("save_every", "every `checkpoint_every` steps"),  # (the nearest name was `eval_every`)
])
def test_a_torch_loops_name_points_at_trains(name, fix):
    said = _train_refusal(**{name: 1})
    assert said.startswith(f"`train` has no argument `{name}`: ") and fix in said, said


@pytest.mark.parametrize("name, fix", [
    ("data", "the minibatches are `batches`: a list of batches (x, y), a callable epoch -> batches, or "
             "zo.Minibatches((x, y), batch_size, seed=0); AskTell.batch names the batch of the last ask's points"),
    ("model", "AskTell takes no model or loss: ask() returns the points, you evaluate them"),
    ("loss_fn", "AskTell takes no model or loss"),
    ("steps", "the steps are `epochs`"),
])
def test_asktell_names_its_own_way(name, fix):
    with pytest.raises(zo.ArgumentError) as err:
        zo.AskTell(np.ones(3), **{name: 1})
    assert str(err.value).startswith(f"`AskTell` has no argument `{name}`: ") and fix in str(err.value), err.value


def test_asktell_hints_name_only_what_it_takes():
    """Every `name` an AskTell hint points at is one AskTell takes (train's hints are checked so in
    tests/test_scipy_port.py), and no hint hides a name it takes."""
    import inspect
    import re

    from zoracle._foreign_args import ASK_TELL_HINTS

    takes = set(inspect.signature(zo.AskTell).parameters)
    assert not takes & set(ASK_TELL_HINTS)
    named = {n for text in ASK_TELL_HINTS.values() for n in re.findall(r"`([a-z_]+)`", text)}
    assert named - {"mu"} <= takes, named - takes


# ---- numbers as a config file or a percentage gives them


@pytest.mark.parametrize("given, end", [
    (90, "got 90; a percentage? 90% is sparsity=0.9"),
    (95.0, "got 95.0; a percentage? 95.0% is sparsity=0.95"),
    (1.5, "got 1.5"), (100, "got 100"), (-5, "got -5"),
])
def test_a_sparsity_as_a_percentage_names_the_fraction(given, end):
    assert _train_refusal(sparsity=given).endswith(end)
    with pytest.raises(zo.ArgumentError) as err:
        zo.uniform_ratios([slice(0, 3), slice(3, 5)], given)  # (ZO-GraSP's layer ratios check it so too)
    assert str(err.value).endswith(end), err.value


@pytest.mark.parametrize("given, end", [
    ("0", "got str; that is text (as a config file or a command line gives it), not a number: pass rng=0"),
    (3.0, "got float; a float is not taken as a count: pass rng=3"),
    ("-1", "got str"), ("seed", "got str"),
])
def test_a_seed_as_text_names_the_int(given, end):
    assert _train_refusal(rng=given).endswith(end)


# ---- a torch model where an oracle goes, and TorchOracle's arguments


def test_a_torch_model_given_as_the_oracle_names_torchoracle():
    """zo.train(model, ...) called the model on the flat NumPy params and reported only torch's TypeError."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    for call in (lambda: zo.train(model, np.zeros(15), epochs=1, progress=False),
                 lambda: zo.estimate_gradient(model, np.zeros(15))):
        with pytest.raises(zo.OracleError) as err:
            call()
        said = str(err.value)
        assert "TypeError: linear(): argument 'input'" in said, said
        assert said.endswith("the oracle is a torch module (Sequential), called with the flat NumPy params as its "
                             "input: a model maps inputs to outputs, an oracle params to a loss; wrap the model and "
                             "its loss, oracle = TorchOracle(model, loss_fn) from zoracle.adapters.torch, start from "
                             "oracle.initial_params(), and give it the data as zo.train's `batches` or by "
                             "oracle.bind((x, y)) (docs/pytorch.md)"), said


def test_a_torch_module_written_as_an_oracle_runs_and_its_own_errors_get_no_hint():
    torch = pytest.importorskip("torch")

    class Loss(torch.nn.Module):  # a module that takes the params: an oracle like any other
        def forward(self, p):
            return float((p ** 2).sum())

    class Fails(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, p):
            raise ValueError("solver diverged")

    class Typo(torch.nn.Module):  # written to take the params (no weights of its own), with a bug of its own
        def forward(self, p):
            return float(p.sum() + "1")

    assert zo.train(Loss(), np.ones(3), epochs=2, progress=False).params[0] < 1
    with pytest.raises(zo.OracleError) as err:
        zo.train(Fails(), np.ones(3), epochs=1, progress=False)
    assert str(err.value).endswith("ValueError: solver diverged"), err.value
    with pytest.raises(zo.OracleError) as err:
        zo.train(Typo(), np.ones(3), epochs=1, progress=False)
    assert "TypeError" in str(err.value) and "torch module" not in str(err.value), err.value


def test_torchoracle_names_a_class_not_built_and_arguments_swapped():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    model, loss = torch.nn.Linear(4, 3), torch.nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(zo.ArgumentError, match=r"^`model` must be a torch.nn.Module, got the class Linear, not an "
                                               r"instance: build it first, Linear\(...\)$"):
        TorchOracle(torch.nn.Linear, loss)
    with pytest.raises(zo.ArgumentError, match=r"^`model` must be a torch.nn.Module, got function$"):
        TorchOracle(lambda x: x, loss)
    with pytest.raises(zo.ArgumentError, match=r"^`model` must be a torch.nn.Module, got type$"):  # (no module)
        TorchOracle(dict, loss)
    with pytest.raises(zo.ArgumentError, match=r"has no trainable parameters \(requires_grad=True\): nothing to "
                                               r"estimate; `loss_fn` \(Linear\) has them: the two swapped\? "
                                               r"TorchOracle\(model, loss_fn\)$"):
        TorchOracle(loss, model)
    with pytest.raises(zo.ArgumentError, match=r"nothing to estimate$"):  # (no swap to name)
        TorchOracle(torch.nn.ReLU(), loss)


# ---- executors


@pytest.mark.parametrize("given, end", [
    (4, "got int; for 4 worker processes, pass executor=zoracle.executors.JoblibExecutor(4)"),
    ("JoblibExecutor", "got type (the class JoblibExecutor itself: build it, executor=JoblibExecutor(...))"),
    ("pool", "got ThreadPoolExecutor; zoracle runs its queries on its own executors, which split them into shards: "
             "for threads pass executor=zoracle.executors.JoblibExecutor(2, backend='threading'), for processes "
             "zoracle.executors.JoblibExecutor(2)"),
    (dict, "got type (the class dict itself)"), (0, "got int"), (True, "got bool"),
])
def test_an_executor_slip_names_the_executor(given, end):
    """``executor=JoblibExecutor`` (not built) failed with ``int() argument must be ... not 'property'``;
    a worker count and a concurrent.futures pool got only ``got int`` / ``got ThreadPoolExecutor``."""
    from concurrent.futures import ThreadPoolExecutor

    from zoracle.executors import JoblibExecutor

    given = {"JoblibExecutor": JoblibExecutor, "pool": ThreadPoolExecutor(1)}.get(given, given) \
        if isinstance(given, str) else given
    said = _train_refusal(executor=given, sparsity=0.5)  # (ZO-GraSP's queries would be the first)
    assert said.startswith("`executor` must be None (serial) or an executor from zoracle.executors") and \
        said.endswith(end), said
    with pytest.raises(zo.ArgumentError) as err:
        zo.estimate_gradient(_Counting(), np.ones(3), executor=given)
    assert str(err.value).endswith(end), err.value
    if isinstance(given, ThreadPoolExecutor):
        given.shutdown()


def test_blackbox_names_the_estimator_call_but_never_snes():
    """``blackbox`` takes CGE and RGE only: the class not built and its name as text get the call, SNES (which
    it refuses) the plain refusal."""
    pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    def refusal(estimator):
        with pytest.raises(zo.ArgumentError) as err:
            blackbox(lambda x: x, estimator=estimator)
        return str(err.value)

    assert refusal(zo.RGE).endswith("got type (the class zo.RGE itself: pass an instance, estimator=zo.RGE())")
    assert refusal("cge").endswith("got str ('cge' is text: pass estimator=zo.CGE())")
    assert refusal(zo.SNES).endswith("got type") and refusal(" SNES").endswith("got str")
    assert refusal(zo.SNES()).endswith("got SNES")


# ---- a plain function that takes the batch, given batches


def _fit(p, batch):
    x, y = batch
    return float(np.mean((x @ p - y) ** 2))


def _fit_xy(p, x, y):
    return float(np.mean((x @ p - y) ** 2))


@pytest.mark.parametrize("oracle, end", [
    (_fit, "; _fit takes the batch after the params: give train an object whose bind(batch) returns the step's "
           "loss, e.g. `class Data: bind = lambda self, batch: lambda params: _fit(params, batch)` and "
           "zo.train(Data(), params, batches=...) (docs/concepts.md, DataOracle)"),
    (_fit_xy, "e.g. `class Data: bind = lambda self, batch: lambda params: _fit_xy(params, *batch)`"),
    (lambda p, b: 0.0, "; the oracle takes the batch after the params: give train an object whose bind(batch) returns "
                       "the step's loss, e.g. with f the oracle, `class Data: bind = lambda self, batch: lambda "
                       "params: f(params, batch)`"),
    (lambda p: 0.0, "wrap the model in a DataOracle (e.g. zoracle.adapters.torch.TorchOracle)"),
])
def test_a_function_that_takes_the_batch_is_shown_its_data_oracle(oracle, end):
    """A plain ``loss(params, batch)`` given ``batches`` was told to wrap "the model" in a DataOracle, with a
    torch adapter for its example; the refusal now writes the one-line DataOracle for it, and that line runs."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal(20)
    with pytest.raises(zo.ArgumentError) as err:
        zo.train(oracle, np.zeros(3), epochs=1, progress=False, batches=[(x, y)])
    said = str(err.value)
    assert said.startswith("`batches` were given but the oracle (function) has no `bind(batch)`; drop `batches` ")
    assert end in said and said.endswith("(at bind(batch) of training step 0, epoch 0, batch 0)"), said
    if oracle is _fit or oracle is _fit_xy:  # the line as written, run on the same batches
        code = said.split("`")[-2]
        space = {oracle.__name__: oracle}
        exec(code, space)  # noqa: S102  (the message's own code)
        res = zo.train(space["Data"](), np.zeros(3), epochs=3, progress=False, batches=[(x, y)],
                       optimizer=zo.sgd(0.05), rng=0)
        assert res.steps == 3 and _fit(res.params, (x, y)) < _fit(np.zeros(3), (x, y))
