"""Advice for a loss that cannot be seeded (hardware in the loop).

check_oracle's determinism failure said only "check it with its noise fixed, e.g. bound to a seed",
which a hardware reading cannot do; and a diverged run's error led with "lower the learning rate"
even where its own note had found the loss noisy or drifting, which a lower rate only delays.
"""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.testing import OracleCheckError, check_oracle

from test_hardware_drift import D, Warming, f  # (the quadratic and the sensor warming up)


def _advice(text):
    """What a divergence error advises: after its first "; ", up to the note that follows."""
    assert text.startswith("training diverged at step ")
    advice = text.split("; ", 1)[1]
    return advice.split(". The loss ", 1)[0]


def test_check_oracle_tells_a_hardware_reading_what_to_do():
    rng = np.random.default_rng(0)

    def reading(x):
        return float(x @ x + 0.01 * rng.standard_normal())

    with pytest.raises(OracleCheckError, match="determinism: two calls") as err:
        check_oracle(reading, np.ones(5))
    text = str(err.value)
    assert "e.g. bound to a seed" in text  # the seeded case's advice is kept
    assert "A reading that cannot be seeded (hardware) fails this check whatever you do" in text
    assert "average repeated readings inside the oracle" in text
    assert "raise mu towards 2 * sqrt(noise / curvature)" in text
    assert "(docs/training.md, 'Noisy black boxes')" in text
    assert "if the reading drifts with time, averaging readings does not remove it: read a fixed reference " \
           "point beside each query" in text


def test_a_run_diverged_by_noise_leads_with_the_noise_fix():
    """The noiseless run at this lr converges: the noise is the cause, so its fix comes first."""
    rng = np.random.default_rng(0)

    def noisy(x):
        return float(np.sum(x ** 4) + 0.05 * rng.standard_normal())

    with pytest.raises(zo.ArgumentError, match="training diverged at step") as err:
        zo.train(noisy, np.full(20, 0.1), epochs=1, steps_per_epoch=200, estimator=zo.CGE(mu=5e-3),
                 optimizer=zo.sgd(0.05), rng=0, progress=False)
    text = str(err.value)
    advice = _advice(text)
    assert advice.startswith("fix the loss's noise (a seed per step, averaged readings or a larger mu: below), "
                             "or lower the learning rate (lr was 0.05)"), advice
    assert "The loss is not deterministic" in text
    # the note's own advice for a reading that cannot be seeded is the hardware one
    assert "where it cannot be fixed (a hardware reading), average repeated readings inside the oracle" in text


def test_a_run_diverged_by_drift_leads_with_the_drift_fix():
    with pytest.raises(zo.ArgumentError, match="training diverged at step") as err:
        zo.train(Warming(0.01), np.zeros(D), epochs=1, steps_per_epoch=200, optimizer=zo.sgd(1.5), rng=0,
                 progress=False)
    text = str(err.value)
    advice = _advice(text)
    assert advice.startswith("remove the loss's drift (a reference reading beside each query, or a larger mu: "
                             "below), or lower the learning rate"), advice
    assert "The loss drifts with time" in text


def test_a_deterministic_diverged_run_still_leads_with_the_learning_rate():
    with pytest.raises(zo.ArgumentError, match="training diverged at step") as err:
        zo.train(f, np.zeros(D), epochs=1, steps_per_epoch=200, optimizer=zo.sgd(1.5), rng=0, progress=False)
    assert _advice(str(err.value)).startswith("lower the learning rate"), str(err.value)
