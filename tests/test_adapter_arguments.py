"""The adapters' arguments refused with an error naming them (an ArgumentError, also a
ValueError), and PhiFlow's ``Reference`` comparable with ``==``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import zoracle as zo

torch = pytest.importorskip("torch")


def test_cross_entropy_names_its_targets_and_shows_one():
    """A plain ValueError named neither the argument nor a value."""
    from zoracle.adapters.torch import cross_entropy

    with pytest.raises(zo.ArgumentError, match=r"`targets` must be class indices; .*\(1 of 2, the first 0\.5"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0.5, 1.0]))


def _phiflow():
    pytest.importorskip("phi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PhiFlow's own import-time warnings
        from zoracle.adapters import phiflow as pf
    return pf


def _reference(pf, grid, value=0.0):
    return pf.Reference(np.full((1, 3) + grid.shapes[0], value), np.full((1, 3) + grid.shapes[1], value),
                        np.array([100.0]))


def test_references_compare_by_their_arrays():
    """The dataclass's == compared the arrays' elementwise results as truth values: a ValueError
    ("truth value of an array ... is ambiguous") for two equal References of their own arrays."""
    pf = _phiflow()
    grid = pf.WakeFlow(nx=8, ny=16)
    a, b = _reference(pf, grid), _reference(pf, grid)
    assert a == b and not (a != b)
    assert a != _reference(pf, grid, 1.0) and a != a.select([0, 0])  # other values; another run count
    assert a != pf.Reference(a.vx, a.vy, a.re, path="elsewhere.npz")
    assert a.__eq__("a") is NotImplemented and a != "a"
    with pytest.raises(TypeError, match="unhashable"):  # as its arrays (a hash of the fields raised on them)
        hash(a)


@pytest.mark.parametrize("net, hint", [
    (lambda v: v, "a function is not one: wrap it in an nn.Module"),
    ({"w": 0}, r"net\.load_state_dict"),
    (None, r"got NoneType$"),
])
def test_solver_in_the_loop_refuses_a_net_that_is_not_a_module(net, hint):
    """An AttributeError ('function' object has no attribute 'named_parameters') named neither `net` nor the fix."""
    pf = _phiflow()
    grid = pf.WakeFlow(nx=8, ny=16)
    with pytest.raises(zo.ArgumentError, match=r"`net` must be a torch\.nn\.Module .*" + hint):
        pf.SolverInTheLoop(grid, net, _reference(pf, grid), unroll=1)
