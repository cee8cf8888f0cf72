"""What an oracle may return, as users write them: each kind of value is taken at its exact value or
refused with an :class:`OracleError` that names the query, shows the value and says the fix. A
``(loss, metrics)`` tuple or a dict of them (the "loss plus metrics" pattern) is pointed to the
documented way of logging metrics beside the loss."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import zoracle as zo
from zoracle._oracle import Oracle

X0 = np.array([0.3, -0.2])
LOSS = 0.123456789012345678  # a float64 with all 53 bits used: any rounding shows
DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _plain(value):
    return Oracle(lambda p: value)


def _refused(value) -> str:
    with pytest.raises(zo.OracleError) as info:
        _plain(value)(X0, "the query point")
    msg = str(info.value)
    assert "at the query point, params [0.3, -0.2]" in msg  # which query, at which params
    return msg


@pytest.mark.parametrize("value, expected", [
    (LOSS, LOSS), (3, 3.0), (np.float64(LOSS), LOSS), (np.float32(LOSS), float(np.float32(LOSS))),
    (np.float16(LOSS), float(np.float16(LOSS))), (np.array(LOSS), LOSS), (np.array([LOSS]), LOSS),
    (Decimal(LOSS), LOSS), (Fraction(LOSS), LOSS), (np.ma.masked_array(LOSS, mask=False), LOSS),
    (np.longdouble(LOSS), LOSS), (np.int64(7), 7.0),
], ids=["float", "int", "np.float64", "np.float32", "np.float16", "0-d", "(1,)", "Decimal", "Fraction", "masked",
        "longdouble", "np.int64"])
def test_numbers_are_taken_at_their_exact_value(value, expected):
    out = _plain(value)(X0, "the query point")
    assert type(out) is float and out == expected


def test_torch_tensors_are_taken_at_their_exact_value():
    torch = pytest.importorskip("torch")
    for t in (torch.tensor(LOSS, dtype=torch.float64), torch.tensor(LOSS, dtype=torch.float64, requires_grad=True),
              torch.tensor([LOSS], dtype=torch.float64), torch.tensor(LOSS, dtype=torch.float16),
              torch.tensor(LOSS, dtype=torch.bfloat16)):
        assert _plain(t)(X0, "the query point") == t.double().item()  # float64 kept whole, float16 as it is


def test_jax_arrays_are_taken_at_their_exact_value():
    jnp = pytest.importorskip("jax.numpy")
    for a in (jnp.asarray(LOSS, dtype=jnp.float32), jnp.asarray([LOSS], dtype=jnp.float32)):
        assert _plain(a)(X0, "the query point") == float(np.float32(LOSS))  # JAX's float32, not rounded further


def test_a_tensor_on_the_meta_device_is_an_oracle_error_naming_the_fix():
    # it raised torch's RuntimeError ("Tensor.item() cannot be called on meta tensors"), naming no query
    torch = pytest.importorskip("torch")
    msg = _refused(torch.tensor(LOSS, device="meta"))
    assert "meta device holds no values" in msg and "model.to_empty(device='cpu')" in msg


@pytest.mark.parametrize("value", [(LOSS, {"acc": 0.9}), (LOSS, 0.9), [LOSS, 0.9]], ids=["(loss, dict)", "pair", "list"])
def test_a_loss_with_its_metrics_points_to_the_documented_way(value):
    msg = _refused(value)
    assert "return the loss alone" in msg and "`eval_fn`" in msg
    assert 'docs/training.md, "Metrics beside the loss"' in msg
    assert "\n### Metrics beside the loss\n" in DOCS.read_text(encoding="utf-8")  # the section it names


def test_a_dict_of_loss_and_metrics_says_which_entry_to_return():
    msg = _refused({"loss": LOSS, "acc": 0.9})
    assert "return the loss alone, a float (`out['loss']`)" in msg and "Metrics beside the loss" in msg


@pytest.mark.parametrize("value, fix", [
    (None, "does every path of it end in `return loss`?"),
    (True, "a boolean (a comparison, a success flag) is no loss"),
    (np.bool_(False), "a boolean (a comparison, a success flag) is no loss"),
    ("0.5", "parse it where the oracle reads it (`float(text)`)"),
    (b"0.5", "parse it where the oracle reads it (`float(text)`)"),
    (complex(LOSS, 0), "return its real part (`loss.real`)"),
    (np.complex128(LOSS), "return its real part (`loss.real`)"),
    ([LOSS], "return the number itself, a float (`out[0]`)"),
], ids=["None", "bool", "np.bool_", "str", "bytes", "complex", "np.complex128", "[loss]"])
def test_a_refused_value_says_the_fix(value, fix):
    msg = _refused(value)
    assert f"oracle returned {value!r} at the query point" in msg and fix in msg


def test_a_torch_boolean_is_refused_as_no_loss():
    torch = pytest.importorskip("torch")
    assert "a boolean (a comparison, a success flag) is no loss" in _refused(torch.tensor(True))


class _Batch:
    """An oracle whose ``batch`` returns ``convert(losses)``."""

    def __init__(self, convert):
        self.convert = convert

    def __call__(self, p):
        return float(np.sum(np.asarray(p) ** 2)) + LOSS

    def batch(self, rows):
        return self.convert([self(r) for r in rows])


def _batch_refused(convert, estimator=None) -> str:
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(_Batch(convert), X0, estimator=estimator or zo.CGE(mu=1e-3), rng=0)
    msg = str(info.value)
    assert msg.startswith("oracle's `batch` returned ")  # which method: an oracle may have several
    return msg


@pytest.mark.parametrize("convert", [list, tuple, np.array, lambda v: np.array(v)[:, None],
                                     lambda v: [np.float64(x) for x in v], lambda v: [Decimal(x) for x in v]],
                         ids=["list", "tuple", "(n,)", "(n, 1)", "np.float64 items", "Decimal items"])
def test_batch_losses_are_taken_exactly(convert):
    plain = zo.estimate_gradient(_Batch(convert).__call__, X0, estimator=zo.CGE(mu=1e-3))
    fast = zo.estimate_gradient(_Batch(convert), X0, estimator=zo.CGE(mu=1e-3))
    np.testing.assert_array_equal(fast.grad, plain.grad)


def test_batch_torch_losses_are_taken_exactly():
    torch = pytest.importorskip("torch")
    plain = zo.estimate_gradient(_Batch(list).__call__, X0, estimator=zo.CGE(mu=1e-3))
    fast = zo.estimate_gradient(_Batch(lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True)), X0,
                                estimator=zo.CGE(mu=1e-3))
    np.testing.assert_array_equal(fast.grad, plain.grad)


@pytest.mark.parametrize("reduce", [lambda v: np.float32(np.mean(v)), lambda v: np.float16(np.mean(v))],
                         ids=["np.float32", "np.float16"])
def test_a_batch_returning_one_reduced_loss_is_an_oracle_error(reduce):
    # a float32 / float16 scalar raised IndexError ("invalid index to scalar variable") before any check
    msg = _batch_refused(reduce)
    assert "at coordinates 0..1" in msg and "expected 2 losses, got shape ()" in msg
    assert "one number for all 2 queries" in msg and "return one loss per query" in msg


def test_a_batch_returning_a_reduced_torch_loss_is_an_oracle_error():
    torch = pytest.importorskip("torch")
    msg = _batch_refused(lambda v: torch.tensor(v, dtype=torch.float32).mean())
    assert "expected 2 losses, got shape ()" in msg and "one number for all 2 queries" in msg


@pytest.mark.parametrize("convert", [lambda v: (np.array(v), {"acc": 0.9}), lambda v: [(x, 0.9) for x in v],
                                     lambda v: {"loss": np.array(v)}, lambda v: [{"loss": x} for x in v]],
                         ids=["(losses, metrics)", "[(loss, acc), ...]", "{'loss': losses}", "[{'loss': x}, ...]"])
def test_batch_losses_with_metrics_point_to_the_documented_way(convert):
    msg = _batch_refused(convert)
    assert "alone" in msg and 'docs/training.md, "Metrics beside the loss"' in msg


@pytest.mark.parametrize("convert, fix", [
    (lambda v: (x for x in v), "return a list or an array of the 2 losses (`list(...)`), not an iterator"),
    (lambda v: map(float, v), "return a list or an array of the 2 losses (`list(...)`), not an iterator"),
    (lambda v: np.array(v)[None, :], "expected 2 losses, got shape (1, 2): return them as a (2,) array"),
    (lambda v: v[:-1], "expected 2 losses, got shape (1,): return 2 losses, one per query in their order"),
    (lambda v: [x > 0 for x in v], "a boolean (a comparison, a success flag) is no loss"),
    (lambda v: None, "does every path of it end in `return loss`?"),
], ids=["generator", "map", "(1, n)", "short", "bools", "None"])
def test_a_refused_batch_says_the_fix(convert, fix):
    assert fix in _batch_refused(convert)


def test_coordinate_losses_are_named_with_their_refusal():
    class Coordinates:
        def __call__(self, p):
            return float(p @ p)

        def coordinate_losses(self, p, coords, step):
            return np.array([self(p + step * np.eye(len(p))[i]) for i in coords]), {"acc": 1.0}

    with pytest.raises(zo.OracleError, match=re.escape("oracle's `coordinate_losses` returned (array([")) as info:
        zo.estimate_gradient(Coordinates(), X0, estimator=zo.CGE(mu=1e-3))
    assert "Metrics beside the loss" in str(info.value)
