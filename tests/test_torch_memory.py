"""TorchOracle: a CGE's memory stays near its budget plus one forward (measured in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import gc, numpy as np, torch
    torch.set_num_threads(1)
    import zoracle as zo
    from zoracle.adapters.torch import TorchOracle
    from torch import nn

    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key):
                return int(line.split()[1]) / 1024

    def reset():
        gc.collect()
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # VmHWM := VmRSS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 16 * 16, 10))
    x, y = torch.randn(64, 3, 64, 64), torch.randint(0, 10, (64,))
    r = status('VmRSS'); reset()
    with torch.no_grad():
        model(x)
    forward = status('VmHWM') - r
    oracle = TorchOracle(model, nn.CrossEntropyLoss(), (x, y))  # 16 MiB budget (CPU default)
    p = oracle.initial_params(); oracle(p)
    r = status('VmRSS'); reset()
    zo.estimate_gradient(oracle, p, zo.CGE(mu=5e-3), coordinates=np.arange(448))  # conv1: one per chunk
    print(forward, status('VmHWM') - r)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.slow
def test_cge_peak_memory_stays_near_budget_plus_forward():
    # 448 one-coordinate chunks, each returning its losses: kept as small tensors across the
    # chunks, they sat between the chunks' freed (varying-size) activations and glibc's heap grew
    # by about a chunk's work per chunk: 700-1160 MiB for a 40 MiB forward and a 16 MiB budget
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=env)
    assert run.returncode == 0, run.stderr
    forward, peak = map(float, run.stdout.split()[-2:])
    # the kept activations (about 3 forwards), the 16 MiB budget and allocator slack
    assert peak < 4 * forward + 16 + 160, (forward, peak)
