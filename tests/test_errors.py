"""Bad input is rejected before the first query; failing oracles are reported by query."""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import QuadraticOracle


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return float(x @ x)


BAD_INPUTS = [
    (dict(estimator=zo.CGE(), params=np.array([1.0, np.nan])), "`params` must be finite"),
    (dict(estimator=zo.CGE(), params=np.ones((2, 2))), "`params` must be 1-D"),
    (dict(estimator=zo.CGE(), params=np.arange(3)), "dtype float32 or float64"),
    (dict(estimator=zo.CGE(), params=[1.0, 2.0]), "1-D float32 or float64 array"),
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=[0, 3]), "`coordinates` must lie in [0, 3)"),
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=[-1]), "`coordinates` must lie in [0, 3)"),
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=np.array([2**64 - 1], np.uint64)),
     "got 18446744073709551615"),  # the value as given, not as cast to int64 (-1)
    (dict(estimator=zo.CGE(), params=np.float64(3.0)), "`params` must be 1-D"),  # not the advice for torch tensors
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=[1, 1]), "must not repeat indices, got 1"),
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=[0.5]), "integer index array"),
    (dict(estimator=zo.CGE(), params=np.ones(3), coordinates=np.ones(2, bool)), "mask must have shape (3,)"),
    (dict(estimator=zo.RGE(), params=np.ones(3), coordinates=[0]), "only supported by CGE"),
    (dict(estimator="cge", params=np.ones(3)), "`estimator` must be zo.CGE"),
    (dict(estimator=zo.RGE(), params=np.ones(3), rng="seed"), "`rng` must be"),
    (dict(estimator=zo.CGE(), params=np.ones(3), budget_bytes=0), "`budget_bytes`"),
    (dict(estimator=zo.RGE(), params=np.ones(3), rng=-1), "`rng` must be a non-negative int seed"),
    (dict(estimator=zo.CGE(), params=np.ones(3), executor=2), "`executor` must be None (serial) or an executor"),
    (dict(estimator=zo.CGE(), params=np.ones(3), executor="local:2"), "DaskExecutor('local:2')"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_rejected_before_any_query(kwargs, message):
    oracle = Counting()
    params = kwargs.pop("params")
    estimator = kwargs.pop("estimator")
    with pytest.raises(zo.ArgumentError) as info:
        zo.estimate_gradient(oracle, params, estimator, **kwargs)
    assert message in str(info.value)
    assert oracle.calls == 0
    assert isinstance(info.value, (zo.ZoracleError, ValueError))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: zo.CGE(mu=0), "`mu` must be a finite number > 0"),
        (lambda: zo.CGE(mu=-0.1), "got -0.1"),
        (lambda: zo.RGE(mu=float("nan")), "`mu`"),
        (lambda: zo.CGE(scheme="backward"), "`scheme` must be one of 'forward', 'central'; got 'backward'"),
        (lambda: zo.RGE(directions=0), "`directions` must be an integer >= 1"),
        (lambda: zo.RGE(directions=2.5), "`directions`"),
        (lambda: zo.RGE(distribution="uniform"), "'gaussian', 'sphere', 'rademacher'"),
    ],
)
def test_estimator_hyperparameters_validated(make, message):
    with pytest.raises(zo.ArgumentError) as info:
        make()
    assert message in str(info.value)


def test_non_callable_oracle():
    with pytest.raises(zo.ArgumentError, match="`oracle` must be callable"):
        zo.estimate_gradient(42, np.ones(3))


class NanAt:
    """NaN whenever coordinate ``bad`` is perturbed, on every capability path."""

    def __init__(self, bad, path):
        self.bad, self.path = bad, path
        self.q = QuadraticOracle(np.eye(30))

    def __call__(self, x):
        return float("nan") if self._hit(x) else self.q(x)

    def _hit(self, x):
        return x[self.bad] != 1.0

    def batch(self, X):
        return np.array([self(row) for row in X])

    def coordinate_losses(self, x, coords, step):
        return np.array([np.nan if c == self.bad else self.q(x) for c in coords])


def _only(obj, path):
    class View:
        def __call__(self, x):
            return obj(x)

    if path == "batch":
        View.batch = lambda self, X: obj.batch(X)
    if path == "coordinate":
        View.coordinate_losses = lambda self, x, c, s: obj.coordinate_losses(x, c, s)
    return View()


@pytest.mark.parametrize("path", ["call", "batch", "coordinate"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_nan_at_coordinate_17_is_named(path, scheme):
    x = np.ones(30)
    before = x.copy()
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(_only(NanAt(17, path), path), x, zo.CGE(scheme=scheme))
    err = info.value
    assert "coordinate 17" in err.query and "coordinate 17" in str(err)
    assert np.isnan(err.value)
    assert isinstance(err, RuntimeError)
    np.testing.assert_array_equal(x, before)  # the caller's params are untouched


@pytest.mark.parametrize("bad", [None, "overloaded, try later"])
@pytest.mark.parametrize("estimator", [zo.CGE(), zo.RGE(directions=40)])
def test_a_null_or_text_row_of_a_json_batch_is_named_by_its_query(bad, estimator):
    """A batched web API that sends one row's NaN as JSON null (pydantic v2 and JavaScript's
    JSON.stringify do), or an error text in its place, answers `batch` with a list: the bad row is
    named as a NaN row is (it was "coordinates 0..29 (30 queries, ...): expected real losses", the
    list's repr cut before row 25), and good rows of such a list give the plain calls' estimate."""
    w = np.linspace(1.0, 2.0, 30)
    q = lambda x: float(np.sum(w * x ** 2))  # noqa: E731

    class Json:
        def __call__(self, x):
            return q(x)

        def batch(self, X):  # what json.loads gives: a list of floats, a None or a str among them
            return [bad if i == 25 and self.fail else q(row) for i, row in enumerate(X)]

    oracle, x = Json(), np.linspace(-1.0, 1.0, 30)
    oracle.fail = True
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(oracle, x, estimator, rng=0)
    want = "coordinate 25 " if isinstance(estimator, zo.CGE) else "direction 25 "
    assert want in info.value.query and want in str(info.value), str(info.value)
    oracle.fail = False
    np.testing.assert_array_equal(zo.estimate_gradient(oracle, x, estimator, rng=0).grad,
                                  zo.estimate_gradient(q, x, estimator, rng=0).grad)


@pytest.mark.parametrize("backend", [None, "threading", "loky"])
def test_a_none_loss_is_shown_as_none_and_a_text_loss_quoted_once(backend):
    """A web API's JSON null reached the message as "oracle returned 'None'", which reads as the
    text 'None' (the repr of the repr; the text itself read "'None'" in double quotes)."""
    from zoracle.executors import JoblibExecutor

    for ret, shown in ((None, "oracle returned None at"), ("None", "oracle returned 'None' at"),
                       ("busy", "oracle returned 'busy' at")):
        with JoblibExecutor(2, backend=backend) if backend else contextlib.nullcontext() as ex:
            with pytest.raises(zo.OracleError) as info:
                zo.estimate_gradient(functools.partial(_constant, ret), np.zeros(3), zo.CGE(), executor=ex)
        assert shown in str(info.value), str(info.value)


def _constant(value, x):
    return value


def test_raising_oracle_is_wrapped_with_the_query():
    def f(x):
        if x[17] != 1.0:
            raise KeyError("simulator crashed")
        return float(x.sum())

    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(f, np.ones(30), zo.CGE())
    assert "coordinate 17" in str(info.value) and "KeyError" in str(info.value)
    assert isinstance(info.value.cause, KeyError) and info.value.__cause__ is info.value.cause


class _UnprintableError(Exception):
    """An oracle's exception whose ``__str__`` itself raises (a format string given the wrong args)."""

    def __str__(self):
        return "%s at %d" % self.args  # one arg for two placeholders: TypeError


@pytest.mark.parametrize("backend", [None, "threading"])
def test_raising_oracle_with_unprintable_error_is_still_named(backend):
    """str() of the oracle's exception raised inside OracleError's own message, so the report was
    that TypeError (serial) or a ShardFailed (threads): the query, the type and the cause were lost."""
    def f(x):
        if x[17] != 1.0:
            raise _UnprintableError("solver diverged")
        return float(x.sum())

    ex = None if backend is None else zo.executors.JoblibExecutor(2, backend=backend)
    try:
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(f, np.ones(30), zo.CGE(), executor=ex)
    finally:
        if ex is not None:
            ex.close()
    assert "coordinate 17" in str(info.value) and "_UnprintableError" in str(info.value)
    assert isinstance(info.value.cause, _UnprintableError)


def test_rge_failure_names_the_direction():
    calls = []

    def f(x):
        calls.append(1)
        return float("inf") if len(calls) == 4 else float(x.sum())

    with pytest.raises(zo.OracleError, match=r"direction 2 \(\+mu\)"):
        zo.estimate_gradient(f, np.ones(5), zo.RGE(directions=5), rng=0)


def test_snes_failure_names_the_sample():
    """SNES's samples params + sigma * z_i were named as RGE's "direction 2 (+mu)"."""
    calls = []

    def f(x):
        calls.append(1)
        return float("inf") if len(calls) == 4 else float(x.sum())

    with pytest.raises(zo.OracleError, match=r"at sample 3 \(\+sigma z\)"):  # the fourth call: SNES has no base query
        zo.estimate_gradient(f, np.ones(5), zo.SNES(population=6), rng=0)


@pytest.mark.parametrize(
    "value,fragment",
    [(np.ones(2), "expected a scalar"), ("1.0x", "finite real scalar"), (1 + 2j, "finite real scalar"),
     (True, "finite real scalar"), (None, "finite real scalar"), (float("inf"), "finite loss"),
     # text that parses as a number and 0-d booleans were taken as losses; a huge int raised OverflowError
     ("1.5", "finite real scalar"), (b"2", "finite real scalar"), (np.str_("2"), "finite real scalar"),
     (np.array("1.5"), "finite real scalar"), (np.array(True), "finite real scalar"), (10**400, "finite real scalar")],
)
def test_non_scalar_losses_rejected(value, fragment):
    with pytest.raises(zo.OracleError, match=fragment) as info:
        zo.estimate_gradient(lambda x: value, np.ones(3))
    assert "base point" in info.value.query


def test_batch_with_wrong_shape_is_reported():
    class Bad:
        def __call__(self, x):
            return 0.0

        def batch(self, X):
            return np.zeros(X.shape[0] + 1)

    with pytest.raises(zo.OracleError, match="expected 3 losses"):
        zo.estimate_gradient(Bad(), np.ones(3))


def test_oracle_error_pickles_with_its_fields():
    class Unpicklable(Exception):
        def __init__(self):
            super().__init__("no")
            self.lock = __import__("threading").Lock()

    for cause in (ValueError("boom"), Unpicklable()):
        err = zo.OracleError("coordinate 3 (step +0.005)", None, cause)
        back = pickle.loads(pickle.dumps(err))
        assert back.query == err.query and str(cause) in str(back)
    err = zo.OracleError("direction 1 (+mu)", float("nan"))
    assert pickle.loads(pickle.dumps(err)).query == "direction 1 (+mu)"


def test_oracle_error_keeps_its_detail_across_pickling():
    err = zo.OracleError("coordinate 4 (step +0.005)", float("nan"), detail="expected a finite loss")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and "expected a finite loss" in str(back)


@pytest.mark.parametrize("blocks,fragment", [
    ([slice(3, 5), slice(0, 3)], "block 0 is slice(3, 5, None), expected slice(0, stop)"),
    ([slice(0, None)], "block 0 is slice(0, None, None)"),
    ([(0, 5)], "block 0 is (0, 5)"),
    ([slice(0, 3)], "cover [0, 3), but params have 5 entries"),
])
def test_split_oracle_blocks_are_checked(blocks, fragment):
    """Unordered blocks used to be reported as "coordinate 3 lies in no block", and malformed
    ones as a raw TypeError / AttributeError."""

    oracle = QuadraticOracle(np.eye(5), np.zeros(5))
    oracle.blocks = blocks
    with pytest.raises(zo.ArgumentError) as info:
        zo.estimate_gradient(oracle, np.ones(5))
    assert fragment in str(info.value)


@pytest.mark.parametrize("n", [1.5, "2", True, 0])
def test_cluster_executors_take_integer_worker_counts(n):
    pytest.importorskip("distributed")
    pytest.importorskip("ray")
    from zoracle.executors import DaskExecutor, RayExecutor

    for cls in (DaskExecutor, RayExecutor):
        with pytest.raises(zo.ArgumentError, match="`n_workers` must be an integer >= 1"):
            cls("local", n_workers=n)


class _KeepsItsBatch:
    """A user's oracle that keeps its data in an attribute named ``batch``."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.batch = (rng.standard_normal((32, 4)), rng.integers(0, 2, 32))

    def __call__(self, w):
        X, y = self.batch
        z = X @ w
        return float(np.mean(np.logaddexp(0, z) - y * z))


class _LoaderBatch:
    """A ``batch`` method that means something else (a data loader's)."""

    def batch(self, n=32):
        return np.ones(n)

    def __call__(self, w):
        return float(np.sum((w - 1) ** 2))


def test_an_attribute_named_like_a_capability_is_not_one():
    """Protocol isinstance checks ask for the attribute only: data kept in ``self.batch`` made the
    oracle a BatchOracle, and its tuple was called ('tuple' object is not callable)."""
    oracle = _KeepsItsBatch()
    assert zo.capabilities(oracle) == zo.Capabilities()
    x = np.zeros(4)
    want = np.array([(oracle(x + 1e-6 * e) - oracle(x)) / 1e-6 for e in np.eye(4)])
    np.testing.assert_allclose(zo.estimate_gradient(oracle, x, zo.CGE(mu=1e-6)).grad, want, rtol=1e-12)
    with pytest.raises(zo.OracleError, match=r"zoracle calls _LoaderBatch.batch\(params_batch\) as the BatchOracle "
                                             r"method.*if your `batch` means something else, rename it"):
        zo.estimate_gradient(_LoaderBatch(), np.zeros(3))


@pytest.mark.parametrize("module, missing, extra", [
    ("zoracle.adapters.torch", "torch", "'.[torch]'"),
    ("zoracle.adapters.torch_models", "torch", "'.[torch]'"),
    ("zoracle.testing.strategies", "hypothesis", "'.[test]'"),
])
def test_an_adapter_without_its_package_names_the_extra(module, missing, extra):
    """The torch adapters and the hypothesis strategies failed with a bare ModuleNotFoundError, where
    the onnx and phiflow adapters name their extra."""
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"{module} needs {missing}" in out.stdout and extra in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("value", ["False", 0.0, None, "no"])
def test_flags_given_as_text_or_numbers_are_refused_not_read_as_their_truth_value(value):
    """sgd(nesterov="False") turned Nesterov on (bool("False") is True): three steps gave the
    Nesterov update, -4.0245 instead of -2.805, and its config printed nesterov=True."""
    with pytest.raises(zo.ArgumentError, match="`nesterov` must be True or False"):
        zo.sgd(0.5, momentum=0.9, nesterov=value)
    with pytest.raises(zo.ArgumentError, match="`progress` must be True or False"):
        zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, progress=value)


def test_the_adapters_flags_are_refused_as_text():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    with pytest.raises(zo.ArgumentError, match="`update_stats` must be True or False, got 'False'"):
        TorchOracle(torch.nn.Linear(2, 2).double(), torch.nn.MSELoss(), update_stats="False")
    assert TorchOracle(torch.nn.Linear(2, 2).double(), torch.nn.MSELoss(), update_stats=np.False_).update_stats is False
    # predict(train="False") ran in train mode; make_cnn(batchnorm="False") built BatchNorm layers
    from zoracle.adapters import torch_models as tm

    oracle = TorchOracle(tm.make_cnn(4), torch.nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(zo.ArgumentError, match="`train` must be True or False, got 'False'"):
        oracle.predict(oracle.initial_params(), np.zeros((2, 1, 8, 8), np.float32), train="False")
    with pytest.raises(zo.ArgumentError, match="`batchnorm` must be True or False"):
        tm.make_cnn(4, batchnorm="False")


@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_fn=lambda: 0.5), r"`eval_fn` is called as fn\(params\), which its signature \(\) cannot take"),
    (dict(eval_fn=lambda p, data: 0.5), r"`eval_fn` is called as fn\(params\).*missing a required argument"),
    (dict(callbacks=[lambda event, record, params: None, lambda rec: None]),
     r"`callbacks\[1\]` is called as fn\(event, record, params\)"),
])
def test_eval_fn_and_callbacks_that_cannot_take_trains_arguments_fail_before_any_query(kwargs, match):
    """eval_fn() taking no argument failed after a whole epoch's queries (2,040 in the report),
    a callback taking one after the first step, each with a bare TypeError."""
    calls = []
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(lambda x: calls.append(1) or float(x @ x), np.ones(3), epochs=2, progress=False, **kwargs)
    assert not calls
    # what train's calls can take passes: defaults, *args, a decorator's wrapper around a function
    # of other arguments (the wrapper is what train calls)
    import functools

    def only_params(params):
        return None

    @functools.wraps(only_params)
    def wrapper(*args):
        return only_params(args[-1])

    zo.train(lambda x: float(x @ x), np.ones(3), epochs=1, progress=False, eval_fn=lambda p, scale=1.0: 0.5,
             callbacks=[lambda *a: None, lambda e, r, p, extra=None: None, wrapper])


def test_train_callbacks_that_are_not_a_list_are_named_and_an_array_of_callables_works():
    """callbacks=5 or a 0-d array raised a bare TypeError ('int' object is not iterable), a
    NumPy array of callables a ValueError (its truth value is ambiguous), both from
    ``list(callbacks) if callbacks``."""
    seen = []

    def cb(event, record, params):
        seen.append(event)

    def run(callbacks):
        return zo.train(QuadraticOracle(np.eye(3), -np.ones(3)), np.zeros(3), steps_per_epoch=2, callbacks=callbacks, progress=False)

    for bad in (5, 0.5, np.array(5), np.float32(1.0)):
        with pytest.raises(zo.ArgumentError, match=r"`callbacks` must be a list of callables.*callbacks=\[fn"):
            run(bad)
    want = run([cb]).params
    n = len(seen)
    got = run(np.array([cb], dtype=object)).params  # a 1-d array of callables: used like the list
    np.testing.assert_array_equal(got, want)
    assert len(seen) == 2 * n > 0


def test_batches_given_as_one_pair_is_named():
    """batches=(X, y) was read as two batches, X and y: "`batch` must be a pair (x, y) of arrays
    or tensors, got ndarray", where the caller had passed a pair."""
    X, y = np.ones((20, 4)), np.zeros(20)
    with pytest.raises(zo.ArgumentError, match=r"`batches` is a tuple of two arrays of 20 rows each: one batch "
                                                r"\(X, y\).*pass \[\(X, y\)\]"):
        zo.train(lambda x: float(x @ x), np.ones(3), batches=(X, y), epochs=1, progress=False)

    class Bound:  # an oracle bound to one array a step
        def bind(self, batch):
            return lambda p: float(p @ p) + float(np.sum(batch))

    # two batches of other sizes, and three batches, are batches
    assert zo.train(Bound(), np.ones(3), batches=(np.ones(10), np.ones(6)), epochs=1, progress=False).steps == 2
    assert zo.train(Bound(), np.ones(3), batches=(np.ones(10),) * 3, epochs=1, progress=False).steps == 3


@pytest.mark.parametrize("kwargs", [dict(blocks=[slice(0, 2), slice(2, 4)]), dict(score_kinds=("conv",)),
                                    dict(mask_shuffle_interval="step")])
def test_sparse_split_settings_without_sparsity_are_refused_as_ratios_are(kwargs):
    """blocks, score_kinds and mask_shuffle_interval without `sparsity` did nothing, silently
    (ratios and ranking were already refused so)."""
    name = next(iter(kwargs))
    with pytest.raises(zo.ArgumentError, match=f"`{name}` set\\(s\\) the sparse split of CGE, which needs `sparsity`"):
        zo.train(lambda x: float(x @ x), np.ones(4), epochs=1, progress=False, **kwargs)
    zo.train(lambda x: float(x @ x), np.ones(4), epochs=1, progress=False, sparsity=0.5, ratios="uniform", **kwargs)


def test_a_bind_that_returns_none_is_named():
    """A DataOracle whose bind() bound in place and returned None got "`oracle` must be
    callable, got NoneType"."""
    class InPlace:
        def __init__(self):
            self.batch = None

        def bind(self, batch):
            self.batch = batch

        def __call__(self, x):
            return float(x @ x)

    with pytest.raises(zo.ArgumentError, match=r"InPlace.bind\(batch\) returned NoneType, not an oracle.*return self"):
        zo.train(InPlace(), np.ones(3), batches=[np.ones(2)], epochs=1, progress=False)


def test_params_shorter_than_the_oracles_parameters_are_named_so():
    """Two entries short, with sparsity: "block slice(64, 67) reaches past params of length 65"."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    o = TorchOracle(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double(),
                    torch.nn.CrossEntropyLoss(reduction="none"))
    X, y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3
    short = o.initial_params()[:-2]
    for call in (lambda: zo.train(o, short, batches=[(X, y)], epochs=1, progress=False, sparsity=0.9),
                 lambda: zo.recipes.short_budget(o, short, 5000, batches=[(X, y)])):
        with pytest.raises(zo.ArgumentError, match="`params` has 65 entries but the oracle's parameters number 67"):
            call()
    with pytest.raises(zo.ArgumentError, match="`device` 'gpu'"):
        o.to_device("gpu")


def test_cross_entropy_refuses_targets_that_are_not_class_indices():
    """Float targets [0.7, 1.6] were truncated to [0, 1] silently (nn.CrossEntropyLoss reads
    them as class probabilities)."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import cross_entropy

    out = torch.randn(2, 3)
    with pytest.raises(ValueError, match="class indices; got targets that are not whole numbers"):
        cross_entropy(out, torch.tensor([0.7, 1.6]))
    want = torch.nn.functional.cross_entropy(out, torch.tensor([0, 2]), reduction="none")
    torch.testing.assert_close(cross_entropy(out, torch.tensor([0.0, 2.0])), want)  # whole numbers in floats: fine


def test_cross_entropy_names_numpy_inputs_and_a_target_count_that_does_not_match():
    """NumPy outputs/targets raised AttributeError ('numpy.ndarray' object has no attribute
    'is_floating_point'); one target for 4 rows was broadcast into 4 wrong losses, where
    F.cross_entropy refuses the batch-size mismatch."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import cross_entropy

    out = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 2, 1, 1])
    with pytest.raises(zo.ArgumentError, match=r"`targets` must be a torch.Tensor, got ndarray.*torch.as_tensor"):
        cross_entropy(out, t.numpy())
    with pytest.raises(zo.ArgumentError, match=r"`outputs` must be a torch.Tensor, got ndarray"):
        cross_entropy(out.numpy(), t)
    with pytest.raises(zo.ArgumentError, match=r"one class index per row.*outputs \(4, 3\) and targets \(1,\)"):
        cross_entropy(out, torch.tensor([1]))
    with pytest.raises(ValueError):  # what torch itself says to the same mismatch
        torch.nn.functional.cross_entropy(out, torch.tensor([1]), reduction="none")
    want = torch.nn.functional.cross_entropy(out, t, reduction="none")
    torch.testing.assert_close(cross_entropy(out, t), want)
    torch.testing.assert_close(cross_entropy(out, t.reshape(4, 1)), want)  # a column of labels: still fine


def test_a_timeout_beyond_threadings_largest_wait_is_refused_at_construction():
    """timeout=1e10 (a "no real limit" value) was taken, then every run raised OverflowError
    ("timestamp out of range for platform time_t") in the serial and threading executors."""
    import threading

    from zoracle.executors import JoblibExecutor, SerialExecutor

    for make in (lambda t: SerialExecutor(timeout=t), lambda t: JoblibExecutor(2, backend="threading", timeout=t)):
        with pytest.raises(zo.ArgumentError, match="at most 9223372036"):
            make(1e10)
        make(float(threading.TIMEOUT_MAX))  # the largest wait itself is a limit


def test_train_results_compare_by_identity_and_minibatches_take_sparse_features():
    """a == b on two TrainResults raised NumPy's "truth value of an array is ambiguous" (so did
    `b in [a]`); Minibatches((X_csr, y), 4) raised SciPy's "sparse array length is ambiguous"."""
    import scipy.sparse as sp

    loss = lambda x: float(x @ x)
    a = zo.train(loss, np.ones(3), epochs=1, progress=False, rng=0)
    b = zo.train(loss, np.ones(3), epochs=1, progress=False, rng=1)
    assert a == a and a != b and b in [a, b] and [a, b].index(b) == 1
    X = sp.random(20, 5, density=0.3, format="csr", random_state=0)
    assert zo.Minibatches([X, X], 4).n == 20  # a list of fields as a tuple of them
    pd = pytest.importorskip("pandas")  # pandas objects without .iloc take positions
    cat = pd.Categorical(list("abcdefghij"))
    assert zo.Minibatches((cat, np.arange(10)), 5, seed=0)(0)[0][0].tolist() == list(
        cat[zo.Minibatches((cat, np.arange(10)), 5, seed=0)(0)[0][1]])

    class Increasing:  # an h5py dataset's rule: indices in increasing order only
        shape = (6, 2)

        def __len__(self):
            return 6

        def __getitem__(self, rows):
            if np.any(np.diff(rows) <= 0):
                raise TypeError("Indexing elements must be in increasing order")
            return np.zeros((len(rows), 2))

    for on in (True, np.True_):
        with pytest.raises(zo.ArgumentError, match="cannot be indexed by rows in any order.*shuffle=False"):
            zo.Minibatches((Increasing(), np.arange(6)), 2, shuffle=on)  # refused when built, not at a shuffled epoch
    assert len(zo.Minibatches((Increasing(), np.arange(6)), 2, shuffle=False)(0)) == 3
    with pytest.raises(zo.ArgumentError, match=r"`arrays` entry 0 \(coo_matrix\) cannot be indexed by rows.*\.tocsr\(\)"):
        zo.Minibatches((X.tocoo(), np.arange(20)), 4)  # refused when built, not at the first epoch
    mb = zo.Minibatches((X, np.arange(20)), 4, seed=0)
    assert len(mb) == 5 and mb.n == 20
    rows = [batch[1] for batch in mb(0)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(20)) and all(x.shape == (4, 5) for x, _ in mb(0))


def test_errors_keep_their_text_attributes_and_notes_across_pickle_and_copy():
    """An error zoracle edited after raising it (``located``'s fix, an executor's shard note and
    ``shard``) and a note the caller added: ``__reduce__`` rebuilt it from its fields alone, so a
    copy, or the error of a run in a process pool, lost them."""
    import copy

    from zoracle._executors_core import _annotate

    err = zo.OracleError("direction 0 (+mu)", float("nan"), detail="expected a finite loss").located(
        "direction 0 (+mu) of ZO-GraSP's first estimate", "; ratios='uniform' skips ZO-GraSP")
    shard = _annotate(zo.OracleError("coordinate 5 (step +0.6)", float("inf")), 6, 9, None, "thread 0")
    errors = [err, shard]
    try:
        from zoracle.adapters.onnx import QueryBudgetExceeded
    except ImportError:  # (onnxruntime not installed)
        budget = None
    else:
        budget = _annotate(QueryBudgetExceeded(5, 18, 20), 1, 2, None, "worker 1")
        errors.append(budget)
    for e in errors:
        if sys.version_info >= (3, 11):
            e.add_note("seen by the caller")
        else:  # (add_note is 3.11's; on 3.10 a note is the attribute it sets, which tracebacks ignore there)
            e.__notes__ = ["seen by the caller"]
        for back in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
            assert type(back) is type(e) and str(back) == str(e)
            assert back.__notes__ == ["seen by the caller"]
            assert getattr(back, "shard", None) == getattr(e, "shard", None)
    assert str(err).endswith("; ratios='uniform' skips ZO-GraSP") and shard.shard == 6 and "[shard 7/9" in str(shard)
    if budget is not None:  # (errors[-1] is the shard's OracleError, without `used`, when onnxruntime is missing)
        assert pickle.loads(pickle.dumps(budget)).used == budget.used


def test_oracle_error_pickles_under_tblibs_reducers():
    """Dask installs tblib's reducers, which pickle an exception's ``__cause__`` beside what its
    ``__reduce__`` gives: a cause chained in ``__init__`` did not pickle when the oracle's exception
    does not (the report ``__reduce__`` makes picklable failed to pickle at all)."""
    pytest.importorskip("tblib")
    code = (
        "import pickle, threading, zoracle as zo\n"
        "from tblib import pickling_support\n"
        "pickling_support.install()\n"
        "class Unpicklable(Exception):\n"
        "    def __init__(self):\n"
        "        super().__init__('no')\n"
        "        self.lock = threading.Lock()\n"
        "back = pickle.loads(pickle.dumps(zo.OracleError('coordinate 3 (step +0.005)', None, Unpicklable())))\n"
        "print(back.query, '|', back)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    # (the original text: the cause travels as a RuntimeError, the message keeps its own type's name)
    assert r.stdout.strip() == "coordinate 3 (step +0.005) | oracle raised at coordinate 3 (step +0.005): Unpicklable: no"


def test_an_unpicklable_unprintable_cause_still_pickles_with_its_query():
    """A process worker's report whose cause neither pickles nor prints (str() raises): the
    cause travels as text naming its type, the query is kept."""
    import pickle
    import threading

    class Bad(Exception):
        def __init__(self):
            super().__init__("no")
            self.lock = threading.Lock()  # does not pickle

        def __str__(self):
            raise TypeError("not printable")

    err = zo.OracleError("coordinate 3 (step +0.005)", None, Bad())
    back = pickle.loads(pickle.dumps(err))
    assert back.query == "coordinate 3 (step +0.005)"
    assert isinstance(back.cause, RuntimeError) and str(back.cause).startswith("Bad: <str() failed: TypeError")


def test_a_loss_class_given_as_loss_fn_is_named_before_any_query():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    for batch in [(x, y), None]:  # at construction, with or without a batch (bind would raise torch's error)
        with pytest.raises(zo.ArgumentError, match=r"`loss_fn` is the class CrossEntropyLoss, not an instance; "
                                                    r"pass CrossEntropyLoss\(reduction=\"none\"\)"):
            TorchOracle(torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss, batch)
    # an instance, and a loss function, are taken as before
    TorchOracle(torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss(reduction="none"), (x, y))


def test_a_bad_dense_block_is_named_as_dense_not_as_blocks():
    blocks = [slice(0, 3), slice(3, 6)]
    with pytest.raises(zo.ArgumentError, match=r"`dense\[0\]` must be a slice\(start, stop\).*got 7"):
        zo.random_masks(blocks, [0.5, 0.5], 0, dense=[7])
    with pytest.raises(zo.ArgumentError, match=r"`dense\[1\]` must be a slice\(start, stop\).*got 3"):
        zo.DynamicMasks(blocks, [0.5, 0.5], seed=0, dense=[slice(6, 8), 3])
    with pytest.raises(zo.ArgumentError, match=r"`blocks\[1\]` must be a slice"):  # blocks keep their own name
        zo.random_masks([slice(0, 3), 4], [0.5, 0.5], 0)
    assert zo.random_masks(blocks, [0.5, 0.5], 0, dense=[slice(6, 8)]).tolist()[-2:] == [6, 7]


@pytest.mark.parametrize("fn", [
    lambda b: zo.uniform_ratios(b, 0.5),
    lambda b: zo.random_ratios(b, 0.5, rng=0),
    lambda b: zo.smart_ratio(b, 0.5),
    lambda b: zo.keep_counts(b, [0.5]),
    lambda b: zo.layer_ratios(np.ones(6), b, 0.5),
    lambda b: zo.random_masks(b, [0.5], 0),
    lambda b: zo.DynamicMasks(b, (0.5,), seed=0),
    lambda b: zo.split_blocks(b),
])
@pytest.mark.parametrize("blocks", [None, 3, np.array(2.0)])
def test_blocks_that_are_not_a_sequence_are_named(fn, blocks):
    with pytest.raises(zo.ArgumentError, match=r"`blocks` must be a sequence of slice\(start, stop\)"):
        fn(blocks)


@pytest.mark.parametrize("batches", [lambda: [None], lambda epoch, rng: [None]])
def test_a_batches_callable_that_cannot_take_the_epoch_is_named_before_any_query(batches):
    oracle = Counting()
    with pytest.raises(zo.ArgumentError, match=r"`batches` is called as fn\(epoch\), which its signature"):
        zo.train(oracle, np.ones(3), batches=batches, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"`batches` is called as fn\(epoch\)"):
        zo.recipes.short_budget(oracle, np.ones(3), 100, batches=batches, steps_per_epoch=1)
    assert oracle.calls == 0
    assert zo.train(oracle, np.ones(3), batches=lambda epoch: [None], progress=False).steps == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_predict_on_integer_features_names_x_and_the_cast_as_bind_does(dtype):
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    torch.manual_seed(0)
    oracle = TorchOracle(torch.nn.Linear(3, 2), cross_entropy)
    p = oracle.initial_params()
    x = np.arange(6).reshape(2, 3).astype(dtype)
    with pytest.raises(zo.ArgumentError, match=r"`x` is u?int(8|64) and model\(x\) failed on it .*x\.astype\(np\.float32\)"):
        oracle.predict(p, x)
    ref = x.astype(np.float32) @ oracle.model.weight.detach().numpy().T + oracle.model.bias.detach().numpy()
    np.testing.assert_allclose(oracle.predict(p, x.astype(np.float32)), ref, rtol=1e-6)


def test_to_device_refuses_what_is_not_a_device_and_keeps_the_models_dtype():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    oracle = TorchOracle(torch.nn.Linear(3, 2), cross_entropy, (x, y))
    p = oracle.initial_params()
    before = oracle(p)
    for bad in [torch.float16, torch.float64, float("nan"), -0.5, torch.ones(2, dtype=torch.float64)]:
        with pytest.raises(zo.ArgumentError, match="`device`"):
            oracle.to_device(bad)
        assert oracle.dtype == torch.float32  # torch's model.to(dtype) was applied silently
    assert oracle.to_device("cpu").to_device(torch.device("cpu"))(p) == before
    with pytest.raises(zo.ArgumentError, match="`device` 0.5"):  # torch's TypeError, at construction too
        TorchOracle(torch.nn.Linear(3, 2), cross_entropy, (x, y), device=0.5)


def test_torch_oracle_names_params_that_are_not_numbers():
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    oracle = TorchOracle(torch.nn.Linear(3, 2), cross_entropy, (torch.randn(4, 3), torch.randint(0, 2, (4,))))
    for bad in [None, {"w": 1.0}, "abc"]:  # torch's "Could not infer dtype of NoneType"
        with pytest.raises(zo.ArgumentError, match="`params` must be a NumPy array or torch tensor"):
            oracle(bad)
        with pytest.raises(zo.ArgumentError, match="`params` must be a NumPy array or torch tensor"):
            oracle.predict(bad, np.zeros((2, 3), np.float32))
        with pytest.raises(zo.ArgumentError, match="`params_batch` must be a NumPy array or torch tensor"):
            oracle.batch(bad)
    p = oracle.initial_params()
    assert oracle(list(p)) == oracle(p)  # a list of numbers still works


def test_mu_beyond_int64_is_named_not_a_numpy_type_error():
    # np.isfinite(10**30) raised "ufunc 'isfinite' not supported for the input types"
    for make in (zo.CGE, zo.RGE, zo.SNES):
        assert make(mu=10**30).mu == 1e30  # a finite number > 0, as float(mu)
        with pytest.raises(zo.ArgumentError, match="`mu` must be a finite number > 0"):
            make(mu=10**400)  # beyond float


def test_counts_beyond_int64_are_named_before_any_query():
    """directions / population / steps_per_epoch / n0 / n / num_classes = 10**30 raised NumPy's
    ValueError ("Maximum allowed dimension exceeded"; RGE after its first query), an
    OverflowError ("cannot fit 'int' into an index-sized integer") or a TypeError from
    np.round, instead of the ArgumentError the same argument gets below its minimum."""
    from zoracle import smoothing

    calls = []

    def f(p):
        calls.append(1)
        return float(np.sum((p - 1.0) ** 2))

    def sign(z):
        calls.append(1)
        return (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)

    x = np.array([1.0])
    cases = [
        ("directions", lambda v: zo.estimate_gradient(f, np.zeros(4), zo.RGE(directions=v), rng=0)),
        ("population", lambda v: zo.estimate_gradient(f, np.zeros(4), zo.SNES(population=v), rng=0)),
        ("steps_per_epoch", lambda v: zo.train(f, np.zeros(4), steps_per_epoch=v, progress=False)),
        ("n0", lambda v: smoothing.certify(sign, x, sigma=0.5, n0=v, n=100, num_classes=2, rng=0)),
        ("num_classes", lambda v: smoothing.certify(sign, x, sigma=0.5, n0=10, n=100, num_classes=v, rng=0)),
        ("n", lambda v: smoothing.predict(sign, x, sigma=0.5, n=v, num_classes=2, rng=0)),
    ]
    for name, run in cases:
        for big in (2**63, 10**30):
            with pytest.raises(zo.ArgumentError, match=rf"`{name}` must be an integer >= \d.* at most"):
                run(big)
            assert calls == [], name
    g = zo.estimate_gradient(f, np.zeros(4), zo.RGE(directions=np.int64(3)), rng=0).grad  # in range: unchanged
    np.testing.assert_array_equal(g, zo.estimate_gradient(f, np.zeros(4), zo.RGE(directions=3), rng=0).grad)


def test_sigma_and_schedules_beyond_int64_are_named_as_mu_is():
    # the same raw errors as mu's, on the arguments beside it: np.isfinite(10**30) ("ufunc 'isfinite'
    # not supported") in smoothing's sigma; math.isfinite(10**400) (OverflowError) in lr and train's mu
    from zoracle import smoothing

    sign = lambda z: (z.reshape(len(z), -1).sum(axis=1) > 0).astype(int)  # noqa: E731
    counts = smoothing.sample_counts(sign, np.array([[1.0]]), 4, 10**30, num_classes=2, rng=0)
    assert counts.sum() == 4  # sigma = 1e30, as float(sigma)
    with pytest.raises(zo.ArgumentError, match="`sigma` must be a finite noise level"):
        smoothing.predict(sign, np.array([1.0]), sigma=10**400, n=20, num_classes=2, rng=0)
    with pytest.raises(zo.ArgumentError, match="`lr` must be a number >= 0"):
        zo.sgd(10**400)
    with pytest.raises(zo.ArgumentError, match="`mu` must be a finite number > 0"):
        zo.train(QuadraticOracle(np.eye(3)), np.zeros(3), mu=10**400, progress=False)


def test_snes_sigma_lr_momentum_and_schedule_values_beyond_int64_are_named_as_mu_is():
    # SNES(sigma_lr=Fraction(1, 10)) or 10**30 raised numpy's TypeError ("ufunc 'isfinite' not
    # supported"); momentum, eps, weight_decay or a schedule's init = 10**400 a bare OverflowError
    from fractions import Fraction

    assert zo.SNES(sigma_lr=Fraction(1, 10)).sigma_lr == 0.1 == zo.SNES(sigma_lr=0.1).sigma_lr
    assert zo.SNES(sigma_lr=10**30).sigma_lr == 1e30
    with pytest.raises(zo.ArgumentError, match="`sigma_lr` must be a finite number >= 0"):
        zo.SNES(sigma_lr=10**400)
    for make, name in ((lambda: zo.sgd(0.1, momentum=10**400), "momentum"), (lambda: zo.adam(eps=10**400), "eps"),
                       (lambda: zo.sgd(0.1, weight_decay=10**400), "weight_decay"),
                       (lambda: zo.constant_schedule(10**400), "value"), (lambda: zo.cosine_schedule(10**400, 10), "init"),
                       (lambda: zo.step_schedule(1.0, 10, gamma=10**400), "gamma")):
        with pytest.raises(zo.ArgumentError, match=f"`{name}` must be a finite number"):
            make()
    assert zo.constant_schedule(10**30)(0) == 1e30  # within float: accepted as float(value), as before


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: zo.CGE(scheme=np.array(["forward", "central"])), "`scheme` must be one of 'forward', 'central'"),
        (lambda: zo.RGE(scheme=np.array(["forward"])), "`scheme` must be one of 'forward', 'central'"),
        (lambda: zo.RGE(distribution=np.array(["gaussian", "sphere"])), "`distribution` must be one of 'gaussian', 'sphere', 'rademacher'"),
        (lambda: zo.RGE(shaping=np.array(["none", "ranks"])), "`shaping` must be one of 'none', 'ranks'"),
    ],
)
def test_estimator_choices_given_as_arrays_are_named(make, message):
    with pytest.raises(zo.ArgumentError) as info:  # was "truth value of an array ... is ambiguous"
        make()
    assert message in str(info.value)


def test_joblib_executor_refuses_absurd_worker_counts():
    from zoracle.executors import JoblibExecutor

    for bad in (10**30, 2**63, 4097):  # 10**30 was accepted and the first run hung starting workers
        with pytest.raises(zo.ArgumentError, match="`n_jobs` must be at most 4096"):
            JoblibExecutor(bad, backend="threading")
    assert JoblibExecutor(4096, backend="threading").n_jobs == 4096


@pytest.mark.parametrize("pair", ["tuple", "object"])
def test_an_init_update_pair_not_wrapped_names_zo_optimizer(pair):
    """training.md promised "pure init/update pairs"; a tuple (init, update) or an object with the
    two methods was refused with "`optimizer` must be built by zo.sgd / zo.adam / zo.sign_sgd",
    which hid the one way that works: zo.Optimizer(init, update, lr, name, config)."""
    import types
    from typing import NamedTuple

    class State(NamedTuple):
        count: int

    def init(params):
        return State(0)

    def update(grad, state, params, lr=None):   # projected SGD onto the box [0, 0.5]
        return np.clip(params - lr * grad, 0.0, 0.5), State(state.count + 1)

    given = (init, update) if pair == "tuple" else types.SimpleNamespace(init=init, update=update)
    with pytest.raises(zo.ArgumentError, match=r"zo\.Optimizer\(init, update, lr, name, config\)"):
        zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3), optimizer=given, epochs=1, progress=False)
    # what the message names works, and matches a hand-written projected forward-difference loop
    c = np.array([1.0, 0.2, 0.3])                # the first coordinate's minimum lies outside the box

    def loss(x):
        return float(((x - c) ** 2).sum())

    opt = zo.Optimizer(init, update, 0.1, "box_sgd", "box_sgd(lr=0.1, box=[0, 0.5])")
    res = zo.train(loss, np.zeros(3), optimizer=opt, estimator=zo.CGE(mu=1e-3), epochs=5, progress=False)
    x, mu = np.zeros(3), 1e-3
    for _ in range(5):
        f0 = loss(x)
        g = np.array([(loss(x + mu * e) - f0) / ((x[i] + mu) - x[i]) for i, e in enumerate(np.eye(3))])
        x = np.clip(x - 0.1 * g, 0.0, 0.5)
    np.testing.assert_allclose(res.params, x, rtol=0, atol=1e-12)
    assert res.params[0] == 0.5 and 0 < res.params[1] < 0.5


def test_a_custom_optimizer_state_needs_a_count_that_update_advances():
    """A zo.Optimizer whose NamedTuple state had no `count` field ran a step's queries, then failed
    with a bare "TypeError: int() argument must be ... not 'builtin_function_or_method'" (tuple's own
    .count method); one whose update did not advance `count` kept the optimizer's lr schedule at its
    step-0 value without a word (a cosine from 0.1 stayed 0.1 for all 10 steps)."""
    from typing import Any, NamedTuple

    calls = []

    def loss(x):
        calls.append(1)
        return float(x @ x)

    class NoCount(NamedTuple):
        v: Any

    opt = zo.Optimizer(lambda p: NoCount(np.zeros_like(p)), lambda g, s, p, lr=None: (p - lr * g, NoCount(g)),
                       0.1, "heavy_ball", "heavy_ball(lr=0.1)")
    with pytest.raises(zo.ArgumentError, match=r"NamedTuple state with an int field `count`"):
        zo.train(loss, np.ones(3), epochs=2, optimizer=opt, progress=False)
    assert calls == []  # refused before the first query

    class State(NamedTuple):
        count: int
        v: Any

    sched = zo.cosine_schedule(0.1, total_steps=10)
    frozen = zo.Optimizer(lambda p: State(0, np.zeros_like(p)), lambda g, s, p, lr=None: (p - lr * g, State(s.count, g)),
                          sched, "frozen", "frozen(cosine)")
    with pytest.raises(zo.ArgumentError, match=r"`count` is one more than the state it was given \(0 \+ 1\), got 0"):
        zo.train(loss, np.ones(3), epochs=10, optimizer=frozen, progress=False)
    # one that counts follows its schedule, as the schedule itself gives it step by step
    counting = frozen._replace(update=lambda g, s, p, lr=None: (p - lr * g, State(s.count + 1, g)))
    res = zo.train(loss, np.ones(3), epochs=10, optimizer=counting, progress=False)
    assert np.array_equal(res.history.column("lr", "step"), [sched(t) for t in range(10)])


def test_a_custom_optimizer_state_that_cannot_be_checkpointed_is_refused_before_any_query(tmp_path):
    """A zo.Optimizer whose state held None ran its first epoch's queries, then failed at the save
    ("array 'opt/best' has dtype object"); one whose None became a float after the first update
    saved checkpoints that its own resume refused ("this run expects shape () dtype object; resume
    with the same settings or delete it")."""
    from typing import Any, NamedTuple

    class State(NamedTuple):
        count: int
        best: Any

    calls = []

    def loss(x):
        calls.append(1)
        return float(((x - 1.0) ** 2).sum())

    def update(g, s, p, lr=None):
        best = float(g @ g) if s.best is None else min(s.best, float(g @ g))
        return p - lr * g, State(s.count + 1, best)

    opt = zo.Optimizer(lambda p: State(0, None), update, 0.01, "best_sgd", "best_sgd(lr=0.01)")
    ck = tmp_path / "run.npz"
    with pytest.raises(zo.ArgumentError, match=r"`optimizer` 'best_sgd': its state's field 'best' is None at init"):
        zo.train(loss, np.zeros(3), epochs=3, optimizer=opt, checkpoint=ck, progress=False)
    assert calls == [] and not ck.exists()
    # without a checkpoint it runs as before; started as a number, it checkpoints and resumes bit for bit
    zo.train(loss, np.zeros(3), epochs=3, optimizer=opt, progress=False)
    nan_start = opt._replace(init=lambda p: State(0, np.inf))
    settings = dict(epochs=6, optimizer=nan_start, rng=0, progress=False)
    zo.train(loss, np.zeros(3), checkpoint=ck, callbacks=[lambda e, r, p: e == "epoch" and r["epoch"] == 2], **settings)
    resumed = zo.train(loss, np.zeros(3), checkpoint=ck, resume=True, **settings)
    assert np.array_equal(resumed.params, zo.train(loss, np.zeros(3), **settings).params)


def test_a_custom_optimizer_states_tuple_and_number_fields_resume_as_they_were(tmp_path):
    """A zo.Optimizer state field kept as a tuple (the last three gradient norms, extended with
    `s.recent + (norm,)`) came back from the checkpoint as a NumPy array, where `+` adds instead of
    appending (and a Python float as a 0-d array): the resumed run below ended at -0.18779 where
    the uninterrupted one ends at -0.21498, without a word."""
    from typing import Any, NamedTuple

    class State(NamedTuple):
        count: int
        recent: Any  # a tuple
        scale: Any   # a Python float

    def update(g, s, p, lr=None):
        recent = (s.recent + (float(np.linalg.norm(g)),))[-3:]
        return p - lr * s.scale * g / np.mean(recent), State(s.count + 1, recent, s.scale * 0.9)

    opt = zo.Optimizer(lambda p: State(0, (1.0, 1.0, 1.0), 1.0), update, 0.1, "normed", "normed(lr=0.1)")

    def loss(x):
        return float(np.sum((x - 1.0) ** 2) + np.sum(np.sin(3 * x)))

    settings = dict(epochs=6, optimizer=opt, rng=0, progress=False)
    ck = tmp_path / "run.npz"
    zo.train(loss, np.zeros(3), checkpoint=ck, callbacks=[lambda e, r, p: e == "epoch" and r["epoch"] == 2], **settings)
    resumed = zo.train(loss, np.zeros(3), checkpoint=ck, resume=True, **settings)
    uninterrupted = zo.train(loss, np.zeros(3), **settings)
    assert np.array_equal(resumed.params, uninterrupted.params)
    assert resumed.optimizer_state == uninterrupted.optimizer_state
    assert type(resumed.optimizer_state.recent) is tuple and type(resumed.optimizer_state.scale) is float


@pytest.mark.parametrize("kind", ["dask", "dask local:N", "ray"])
def test_cluster_executors_refuse_absurd_worker_counts_as_joblib_does(kind):
    # 10**30 was accepted and passed on to LocalCluster(n_workers=...) or as many Ray actors
    pytest.importorskip("distributed" if kind.startswith("dask") else "ray")
    from zoracle.executors import DaskExecutor, RayExecutor

    make = {"dask": lambda n: DaskExecutor(n_workers=n), "dask local:N": lambda n: DaskExecutor(f"local:{n}"),
            "ray": lambda n: RayExecutor(n_workers=n)}[kind]
    for bad in (10**30, 4097):
        with pytest.raises(zo.ArgumentError, match="`n_workers` must be at most 4096"):
            make(bad)
    assert make(4096).n_workers == 4096  # (nothing started: a cluster starts at its first run)


@pytest.mark.parametrize("schedule", [zo.cosine_schedule(0.1, 10), zo.cosine_schedule(0.1, 10, warmup_steps=3),
                                      zo.step_schedule(0.1, 5), zo.constant_schedule(0.1),
                                      zo.linear_warmup(zo.constant_schedule(0.1), 4)])
def test_a_schedule_at_a_negative_step_is_named(schedule):
    # a schedule called at step -1 divided by zero (cosine and step schedules without a warm-up)
    # or ramped to 0 (with one): steps count from 0
    with pytest.raises(zo.ArgumentError, match=r"a schedule's `step` must be >= 0 .*got -1"):
        schedule(-1)
    assert schedule(0) > 0


def test_a_recipe_budget_beyond_int64_is_named():
    # short_budget(budget=10**400) raised OverflowError (integer division result too large for a float)
    calls = []
    with pytest.raises(zo.ArgumentError, match=r"`budget` must be an integer >= 1 and at most"):
        zo.recipes.short_budget(lambda x: calls.append(1) or float(x @ x), np.zeros(3), 10**400)
    assert calls == []


def test_a_custom_optimizer_state_of_arrays_of_different_lengths_is_named_before_any_query(tmp_path):
    """Per-block arrays of different lengths in a tuple field (a layer-wise method): no checkpoint
    holds them as one array; NumPy's raw ValueError ("inhomogeneous shape") came out of train."""
    from typing import Any, NamedTuple

    class Blocks(NamedTuple):
        count: int
        blocks: Any

    opt = zo.Optimizer(lambda p: Blocks(0, (np.zeros(3), np.zeros(2))),
                       lambda g, s, p, lr=None: (p - lr * g, Blocks(s.count + 1, s.blocks)), 0.05, "blocks", "blocks()")
    calls = []
    with pytest.raises(zo.ArgumentError, match=r"field 'blocks'.*numeric arrays only"):
        zo.train(lambda x: calls.append(1) or float(x @ x), np.zeros(5), epochs=1, optimizer=opt, rng=0,
                 progress=False, checkpoint=str(tmp_path / "run.npz"))
    assert not calls


def test_a_custom_optimizer_counting_in_a_0d_integer_array_trains_as_with_an_int():
    """optax's states count in a 0-d integer array (jnp.zeros([], jnp.int32)); NumPy ports keep it
    (np.zeros([], np.int32)). int() reads it, and such a run followed its schedule; the count check
    refused it before the first step."""
    from typing import Any, NamedTuple

    class Count(NamedTuple):
        count: Any

    def run(zero):
        opt = zo.Optimizer(lambda p: Count(zero), lambda g, s, p, lr=None: (p - lr * g, Count(s.count + 1)),
                           zo.cosine_schedule(0.1, 10), "plain", "plain()")
        return zo.train(lambda x: float(x @ x), np.ones(3), epochs=1, steps_per_epoch=10, optimizer=opt, rng=0,
                        progress=False)

    want, got = run(0), run(np.zeros([], np.int32))
    assert np.array_equal(got.params, want.params)
    assert [s["lr"] for s in got.history.steps] == [s["lr"] for s in want.history.steps]


def test_an_update_that_skips_its_count_later_in_a_run_warns_and_keeps_the_run():
    """An own optimizer whose update keeps `count` on some step (skipping a non-finite step, say):
    refused at the run's first update (nothing spent), but later in a run the work is kept and the
    user is told once, not refused after the queries were spent."""
    from typing import Any, NamedTuple

    class State(NamedTuple):
        count: Any

    skipped = []

    def update(g, s, p, lr=None):  # at count 3, once: count kept
        keep = s.count == 3 and not skipped
        skipped.extend([1] if keep else [])
        return p - lr * g, State(s.count + (0 if keep else 1))

    opt = zo.Optimizer(lambda p: State(0), update, 0.1, "skips", "skips()")
    with pytest.warns(UserWarning, match=r"one more than the state it was given \(3 \+ 1\), got 3.*lags the steps"):
        res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=1, steps_per_epoch=6, optimizer=opt, rng=0,
                       progress=False)
    assert res.steps == 6 and res.optimizer_state.count == 5


def test_a_custom_optimizer_state_is_checked_as_the_docs_say():
    """zo.Optimizer's contract: init returns a NamedTuple with an int `count`, each update adds
    exactly one to it. A state that is no NamedTuple (a dataclass) is refused before any query; an
    update that adds two (a schedule skipping every other step) is refused at its first step; a
    bool field resumes as a bool."""
    import dataclasses
    from typing import Any, NamedTuple

    calls = []

    def loss(x):
        calls.append(1)
        return float(x @ x)

    @dataclasses.dataclass
    class DC:
        count: int
        v: Any

    opt = zo.Optimizer(lambda p: DC(0, np.zeros_like(p)), lambda g, s, p, lr=None: (p - lr * g, DC(s.count + 1, g)),
                       0.1, "dc", "dc(lr=0.1)")
    with pytest.raises(zo.ArgumentError, match=r"NamedTuple state with an int field `count`"):
        zo.train(loss, np.ones(3), epochs=2, optimizer=opt, progress=False)
    assert calls == []

    class State(NamedTuple):
        count: int
        flag: bool

    sched = zo.cosine_schedule(0.1, total_steps=10)
    for jump in (2, -1):
        skipping = zo.Optimizer(lambda p: State(0, False),
                                lambda g, s, p, lr=None, j=jump: (p - lr * g, State(s.count + j, True)),
                                sched, "skip", "skip(cosine)")
        with pytest.raises(zo.ArgumentError, match=rf"one more than the state it was given \(0 \+ 1\), got {jump}"):
            zo.train(loss, np.ones(3), epochs=10, optimizer=skipping, progress=False)


def test_a_custom_optimizer_states_bool_field_resumes_as_a_bool(tmp_path):
    from typing import NamedTuple

    class State(NamedTuple):
        count: int
        flag: bool

    opt = zo.Optimizer(lambda p: State(0, False), lambda g, s, p, lr=None: (p - lr * g, State(s.count + 1, True)),
                       0.1, "flagged", "flagged(lr=0.1)")
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    ck = str(tmp_path / "run.npz")
    zo.train(f, np.zeros(3), epochs=2, steps_per_epoch=2, optimizer=opt, progress=False, checkpoint=ck)
    full = zo.train(f, np.zeros(3), epochs=2, steps_per_epoch=2, optimizer=opt, progress=False)
    res = zo.train(f, np.zeros(3), epochs=2, steps_per_epoch=2, optimizer=opt, progress=False, checkpoint=ck,
                   resume=True)  # already done: the state as the checkpoint holds it
    assert res.optimizer_state == full.optimizer_state == State(4, True)
    assert type(res.optimizer_state.flag) is bool


@pytest.mark.parametrize("field", ["warmup", 1 + 2j])
def test_a_custom_optimizer_state_field_of_text_or_complex_is_refused_before_any_query(tmp_path, field):
    """Not only None (dtype object): a str or complex field is no numeric array a checkpoint holds
    either; it ran the first epoch's queries and failed at the save."""
    from typing import Any, NamedTuple

    class State(NamedTuple):
        count: int
        mode: Any

    calls = []
    opt = zo.Optimizer(lambda p: State(0, field), lambda g, s, p, lr=None: (p - lr * g, State(s.count + 1, s.mode)),
                       0.1, "moded", "moded(lr=0.1)")
    with pytest.raises(zo.ArgumentError, match=r"its state's field 'mode' is .* at init: a checkpoint holds numeric"):
        zo.train(lambda x: calls.append(1) or float(x @ x), np.zeros(3), epochs=2, steps_per_epoch=2, optimizer=opt,
                 progress=False, checkpoint=str(tmp_path / "run.npz"))
    assert calls == []


def test_a_loss_undefined_in_part_of_the_space_is_pointed_at_projection():
    """A simulation that fails where a step lands (NaN for a negative damping) stopped the run
    with "expected a finite loss" and no word of what to do: the error points at docs/training.md's
    "Bounds" (project the steps), which says a constant penalty in place of the NaN traps the run."""
    from pathlib import Path

    def sim(p):  # defined only for p[0] >= 0, as an integrator that fails below
        return float("nan") if p[0] < 0 else float((p[0] + 1.0) ** 2 + p[1] ** 2)

    for est in (zo.CGE(mu=1e-3), zo.RGE(directions=4)):
        with pytest.raises(zo.OracleError, match=r"expected a finite loss.*keep the steps inside it: "
                                                 r"docs/training\.md, \"Bounds\"") as info:
            zo.train(sim, np.array([0.3, 0.2]), epochs=20, estimator=est, optimizer=zo.sgd(0.2), progress=False,
                     rng=0)
        assert info.value.value != info.value.value  # the NaN the oracle returned
    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text().split())
    assert "### Bounds, and what else `scipy.optimize.minimize` takes " in text  # the section it names
    assert "A constant finite penalty in place of the NaN does not work either" in text


def test_async_oracle_refused_before_any_query_naming_the_fix():
    """An `async def` oracle (or `batch`) returns a coroutine, not a loss: it is refused before any query,
    with an error naming the fix, and leaves no 'coroutine was never awaited' warning behind."""
    import asyncio
    import gc
    import warnings

    from zoracle.executors import JoblibExecutor
    from zoracle.testing import check_oracle

    calls = []

    async def aloss(x):
        calls.append(1)
        return float(np.sum((x - 3.0) ** 2))

    class AsyncBatch:
        def __call__(self, x):
            return float(np.sum((x - 3.0) ** 2))

        async def batch(self, X):
            calls.append(1)
            return np.sum((X - 3.0) ** 2, axis=1)

    class AsyncCall:
        async def __call__(self, x):
            calls.append(1)
            return float(np.sum((x - 3.0) ** 2))

    class AsyncBind:
        def __call__(self, x):
            return float(np.sum((x - 3.0) ** 2))

        async def bind(self, batch):
            calls.append(1)
            return self

    x = np.zeros(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for oracle in (aloss, AsyncBatch(), AsyncCall(), functools.partial(aloss)):
            runs = [lambda o=oracle: zo.estimate_gradient(o, x, zo.CGE(mu=1e-3)),
                    lambda o=oracle: zo.train(o, x, epochs=2, optimizer=zo.sgd(0.05), rng=0, progress=False),
                    lambda o=oracle: check_oracle(o, x)]
            for run in runs:
                with pytest.raises(zo.ArgumentError, match=r"async def.*asyncio\.run"):
                    run()
        with pytest.raises(zo.ArgumentError, match=r"`bind`.*async def.*asyncio\.run"):
            zo.train(AsyncBind(), x, batches=[1, 2], optimizer=zo.sgd(0.05), rng=0, progress=False)
        with JoblibExecutor(2, backend="threading") as ex:
            with pytest.raises(zo.ArgumentError, match=r"async def.*asyncio\.run"):
                zo.estimate_gradient(aloss, x, zo.CGE(mu=1e-3), executor=ex)
        # a plain wrapper that hides the coroutine function still gets the hint, at its first query
        with pytest.raises(zo.OracleError, match=r"coroutine.*asyncio\.run"):
            zo.estimate_gradient(lambda p: aloss(p), x, zo.CGE(mu=1e-3))
        gc.collect()
    assert calls == []  # no coroutine ran, no query was made
    assert not [w for w in caught if "never awaited" in str(w.message)]

    # the fix the message names gives the synchronous oracle's result bit for bit, in a running loop too
    def loss(p):
        return asyncio.run(aloss(p))

    def plain(p):
        return float(np.sum((p - 3.0) ** 2))

    want = zo.train(plain, x, epochs=3, optimizer=zo.sgd(0.05), rng=0, progress=False)

    async def main():
        return await asyncio.to_thread(zo.train, loss, x, epochs=3, optimizer=zo.sgd(0.05), rng=0, progress=False)

    got = asyncio.run(main())
    assert np.array_equal(got.params, want.params) and got.nfev == want.nfev


def test_an_async_methods_refusal_names_the_fix_for_that_method():
    """An `async def batch` (or bind, coordinate_losses, ...) was told to wrap the oracle as
    `def loss(x): return asyncio.run(aloss(x))`, a loss function: the fix for a method is a plain
    method of that name. The fix the message names runs and equals the plain oracle's estimate."""
    import asyncio
    import re

    def f(x):
        return float(np.sum((x - 1.0) ** 2))

    class Async:
        def __call__(self, x):
            return f(x)

        async def batch(self, X):
            return [f(x) for x in np.asarray(X)]

    x = np.zeros(5)
    with pytest.raises(zo.ArgumentError) as info:
        zo.estimate_gradient(Async(), x, zo.CGE(mu=1e-3))
    text = str(info.value)
    assert re.search(r"def batch\(self, \*args\): return asyncio\.run\(self\.abatch\(\*args\)\)", text), text

    class Fixed:  # as the message says: the async method renamed abatch, a plain batch calling it
        def __call__(self, x):
            return f(x)

        async def abatch(self, X):
            return [f(x) for x in np.asarray(X)]

        def batch(self, *args):
            return asyncio.run(self.abatch(*args))

    got = zo.estimate_gradient(Fixed(), x, zo.CGE(mu=1e-3)).grad
    assert np.array_equal(got, zo.estimate_gradient(f, x, zo.CGE(mu=1e-3)).grad)
