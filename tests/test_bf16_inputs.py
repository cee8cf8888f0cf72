"""torch.bfloat16 tensors (NumPy has no such dtype) given to layer_ratios, SNES's state and
certified_accuracy: read exactly (every bfloat16 is a float64), as float32 tensors are."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.smoothing import certified_accuracy

torch = pytest.importorskip("torch")


def _bf16(values):
    return torch.tensor(values, dtype=torch.bfloat16)


def test_layer_ratios_reads_bfloat16_scores_as_their_float32_copy():
    s = _bf16([5.0, 4.0, 0.1, 0.2, 0.3, 3.0])  # (raised TypeError: Got unsupported ScalarType BFloat16)
    blocks = [slice(0, 2), slice(2, 6)]
    assert zo.layer_ratios(s, blocks, 0.5).tolist() == zo.layer_ratios(s.float(), blocks, 0.5).tolist() == [1.0, 0.25]


def test_snes_takes_a_bfloat16_sigma_as_its_float64_values():
    sigma = _bf16([5e-3, 2e-3, 1e-2, 4e-3])
    f = lambda p: float(np.sum(p**2))  # noqa: E731
    got = zo.estimate_gradient(f, np.ones(4), zo.SNES(), rng=0, state=sigma)
    want = zo.estimate_gradient(f, np.ones(4), zo.SNES(), rng=0, state=sigma.double().numpy())
    assert got == want


def test_certified_accuracy_reads_bfloat16_radii_and_grid():
    radii, correct = [0.25, float("nan"), 0.75, 0.125], [True, False, True, False]
    want = certified_accuracy(radii, correct, [0.0, 0.5]).tolist()
    assert want == [0.5, 0.25]
    assert certified_accuracy(_bf16(radii), torch.tensor(correct), _bf16([0.0, 0.5])).tolist() == want


def test_certified_accuracy_names_a_bfloat16_correct_by_its_dtype():
    with pytest.raises(zo.ArgumentError, match=r"`correct` must be a boolean array, got dtype torch\.bfloat16; "
                                               r"use preds == labels"):
        certified_accuracy([0.3, 0.1], _bf16([1.0, 0.0]))
