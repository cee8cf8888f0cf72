"""DeviceExecutor refuses device names no backend reads as one device, before any worker starts."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import DeviceExecutor


@pytest.mark.parametrize("bad, fix", [
    ("gpu", "cuda:0"), ("GPU0", "cuda:0"), ("gpu3", "cuda:3"), ("cuda0", "cuda:0"), ("cuda:-1", "cuda:0"),
    ("cuda:x", "cuda:0"), ("CUDA:1", "cuda:1"), ("cuda:01", "cuda:1"), (" cuda:0", "cuda:0"), (-1, "cuda:0"),
    (np.int64(-2), "cuda:0"),
])
def test_a_mistaken_device_name_is_refused_at_construction_with_the_fix(bad, fix):
    """DeviceExecutor(["gpu"]) started its workers and failed only in each worker's
    oracle.to_device() during the first run (torch's "Expected one of cpu, cuda, ...", retried
    once): seconds later, after the run's first shards were spent."""
    with pytest.raises(zo.ArgumentError, match=rf"`devices` entry .* names no device: use '{fix}' "
                                               rf"\(or the index {fix[5:]}\)"):
        DeviceExecutor(["cpu", bad])


@pytest.mark.parametrize("good", [
    "cuda", "cuda:0", "cuda:12", "cpu", "cpu:1", "mps", "xla:0", "gpu:0", "GPU:0", "/device:GPU:1", "node-a", 0, 7,
])
def test_names_some_backend_may_read_still_pass(good):
    """Device names stay the oracle's to judge (its to_device): only the CUDA-like mistakes above
    are refused; TensorFlow's "GPU:0", torch's "cpu:1", "xla:0" or a user's own names pass."""
    assert DeviceExecutor([good]).devices == [good]  # not started: nothing to close
