#!/usr/bin/env bash
# GPU check for the torch adapter (run on a CUDA machine from the repository root):
#   bash benchmarks/gpu_check.sh            # writes results under ${OUT:-results/gpu}
#
# 1. the adapter's exactness on CUDA (ResNet-20 check_oracle, float64 CGE vs autograd);
# 2. the speed benchmark on CUDA for the MLP, the CNN and ResNet-20 (batch 256, 90%
#    sparsity): ResNet-20 coordinates/s and projected minutes per CIFAR-10 epoch
#    (196 steps of sparse CGE at 27K coordinates; the reference code: about 60 min/epoch
#    on 4 V100s).
set -euo pipefail
OUT="${OUT:-results/gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt" || true
pip install -e . --no-deps --quiet 2>/dev/null || true

python - <<'PY' 2>&1 | tee "$OUT/exactness.txt"
import numpy as np, torch, zoracle as zo
from zoracle.adapters.torch import TorchOracle
from zoracle.adapters.torch_models import ResNet20
from zoracle.testing import check_oracle
torch.manual_seed(0)
dev = "cuda"
model = ResNet20().double().to(dev)
rng = np.random.default_rng(0)
x, y = rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, 8)
ce = torch.nn.CrossEntropyLoss(reduction="none")
o = TorchOracle(model, ce, (x, y))
th = o.initial_params()
print("check_oracle:", check_oracle(o, th, n_coords=8))
coords = np.sort(np.concatenate([rng.choice(np.arange(b.start, b.stop), min(100, b.stop - b.start), replace=False)
                                 for b in o.blocks]))
est = zo.estimate_gradient(o, th, zo.CGE(mu=1e-6, scheme="central"), coordinates=coords)
o.load(th)
model.zero_grad()
ce(model(torch.as_tensor(x, device=dev)), torch.as_tensor(y, device=dev)).mean().backward()
g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).cpu().numpy()
rel = np.linalg.norm(est.grad[coords] - g[coords]) / np.linalg.norm(g[coords])
print(f"ResNet-20 CUDA float64 central CGE vs autograd on {len(coords)} coords: relerr {rel:.2e}")
assert rel < 1e-6
PY

python benchmarks/cge_speed.py --device cuda --quick 2>&1 | tee "$OUT/mlp_cnn.txt"
python benchmarks/cge_speed.py --device cuda --model resnet20 --batch 256 --naive-coords 64 --json \
    > "$OUT/resnet20.json"
python benchmarks/cge_speed.py --device cuda --model resnet20 --batch 256 --naive-coords 64 2>&1 | tee "$OUT/resnet20.txt"
python - "$OUT/resnet20.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["resnet20"]
print(f"ResNet-20 on CUDA: {r['coords_per_s']:.0f} coordinates/s at batch {r['batch']}; "
      f"projected {r['epoch_minutes_at_90pct_sparsity']:.1f} min per CIFAR-10 epoch at 90% sparsity "
      f"(reference: about 60 min on 4 V100s)")
PY
