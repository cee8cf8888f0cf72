"""The run-end warning (zoracle._diagnose.ended_above) on short runs: its end is a median of the last
steps' losses, which one reading that spikes does not move; a run of 10 to 14 steps took the median
of its last 2, a mean, which one spike at its last step moved 50 times (h461)."""

from __future__ import annotations

import numpy as np
import pytest

from zoracle._diagnose import ended_above


def history(losses):
    return [{"step": i, "loss": float(v)} for i, v in enumerate(losses)]


@pytest.mark.parametrize("n", range(10, 25))
def test_one_spike_at_the_last_step_of_a_short_run_is_no_end_far_above(n):
    losses = 12.5 * 0.9 ** np.arange(n)  # a healthy run, falling
    losses[-1] *= 100.0  # its last reading a glitch
    assert ended_above(history(losses), 0) is None


@pytest.mark.parametrize("n", range(10, 25))
def test_a_short_run_that_ended_far_above_still_warns(n):
    losses = np.full(n, 1.0)
    losses[-3:] = 50.0  # its last 3 steps thrown far
    found = ended_above(history(losses), 0)
    assert found is not None and found[:2] == (1.0, 50.0)
