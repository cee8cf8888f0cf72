#!/usr/bin/env bash
# GPU check for the torch adapter (run on a CUDA machine from the repository root):
#   bash benchmarks/gpu_check.sh            # writes results under ${OUT:-results/gpu}
#
# 1. the adapter's exactness on CUDA (ResNet-20 check_oracle, float64 CGE vs autograd; every
#    model of the torchvision / timm-style zoo, float64 train mode: central CGE vs the textbook
#    perturb / forward / restore loop with dropout off);
# 2. the speed benchmark on CUDA for the MLP, the CNN and ResNet-20 (batch 256, 90%
#    sparsity): ResNet-20 coordinates/s and projected minutes per CIFAR-10 epoch
#    (196 steps of sparse CGE at 27K coordinates; the reference code: about 60 min/epoch
#    on 4 V100s);
# 3. the torchvision-style ResNet-18 (width 8) and MobileNetV3-small, DeepZero's training
#    path (a') on ResNet-20 and the d >= 1M fallback, at batch 256 and at batch 32.
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

python - <<'PY' 2>&1 | tee "$OUT/zoo_exactness.txt"
import warnings, numpy as np, torch, zoracle as zo
from zoracle.adapters.torch import TorchOracle, cross_entropy
from zoracle.adapters.torch_models import ZOO, zoo_batch
dev, mu, worst = "cuda", 1e-4, 0.0
for name, entry in ZOO.items():
    torch.manual_seed(0)
    model = entry.build().double().to(dev).train()
    x, y = zoo_batch(name, 6, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        o = TorchOracle(model, cross_entropy, (x, y), update_stats=False)
        th = o.initial_params()
        rng = np.random.default_rng(0)
        named = dict(model.named_parameters())  # the oracle's flat order: param_info
        params = [named[i.name] for i in o.param_info]
        assert np.array_equal(th, torch.cat([p.detach().reshape(-1) for p in params]).cpu().numpy())
        starts = np.cumsum([0] + [p.numel() for p in params])
        coords = np.unique(np.concatenate([rng.integers(a, b, min(4, b - a)) for a, b in zip(starts[:-1], starts[1:])]))
        g = np.asarray(zo.estimate_gradient(o, th, zo.CGE(mu=mu, scheme="central"), coordinates=coords).grad)[coords]
    o.load(th)
    off = [m for m in model.modules() if isinstance(m, (torch.nn.modules.dropout._DropoutNd, torch.nn.MultiheadAttention))]
    for m in off:
        m.eval()
    ref = []
    xt, yt = torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev)
    buf = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        for c in coords:
            k = int(np.searchsorted(starts, c, side="right") - 1)
            flat, j = params[k].view(-1), int(c - starts[k])
            old, fs = flat[j].item(), []
            for s in (mu, -mu):
                flat[j] = old + s
                fs.append(float(cross_entropy(model(xt), yt).mean()))
            flat[j] = old
            ref.append((fs[0] - fs[1]) / (2 * mu))
    for n, b in model.named_buffers():
        b.copy_(buf[n])
    ref = np.asarray(ref)
    rel = np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-300)
    worst = max(worst, rel)
    print(f"{name:20s} d={o.size:7d} coords={len(coords):4d} blocks={len(o.blocks):3d} relerr vs textbook loop {rel:.2e}"
          + "".join(f"\n    warning: {w.message}" for w in caught))
print(f"worst relative error: {worst:.2e} ({'OK' if worst < 1e-7 else 'ABOVE 1e-7'})")
PY

python benchmarks/cge_speed.py --device cuda --quick --model mlp --model cnn 2>&1 | tee "$OUT/mlp_cnn.txt"
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

# 3. torchvision-style models, DeepZero's training path (a') and the d >= 1M fallback
for B in 256 32; do
    python benchmarks/cge_speed.py --device cuda --batch "$B" --model resnet18 --model mobilenet_v3_small \
        --model deepzero --model fallback --json > "$OUT/zoo_b$B.json" || echo "zoo benchmark (batch $B): check FAILED"
    python - "$OUT/zoo_b$B.json" <<'PY' 2>&1 | tee "$OUT/zoo_b$B.txt"
import json, sys
from zoracle.apps.bench import _table
print(_table(json.load(open(sys.argv[1]))))
PY
done
