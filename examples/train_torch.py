"""Train a PyTorch model through its loss values only, with DeepZero's settings.

Any ``torch.nn.Module`` becomes a loss oracle with ``TorchOracle``; ``zo.train`` then runs
DeepZero's loop: ZO-GraSP layer-wise keep ratios, sparse CGE at 90% gradient sparsity over
random masks redrawn every epoch, SGD with momentum, weight decay and a cosine schedule.
The script evaluates every epoch, writes a checkpoint, stops half-way as an interrupted
job would, resumes from the checkpoint to the end, and plots the curves.

    python examples/train_torch.py                 # 20 epochs on scikit-learn digits: 92-95% test
                                                   # accuracy by CPU, 199,286 queries, 7-11 s on 2 cores
                                                   # (each machine's figures: docs/training.md)
    python examples/train_torch.py --quick         # 4 epochs (the test runs this)
    python examples/train_torch.py --out results/train_torch

Needs the ``apps`` extra (torch, scikit-learn, matplotlib): pip install -e ".[apps]".
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import zoracle as zo
from zoracle.cli import INSTALL

try:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import matplotlib  # noqa: F401  (the plot at the end: missing, refused now, not after the run)

    from zoracle.adapters.torch import TorchOracle
except ImportError as exc:  # a core-only install, or one extra alone: the extra, not a traceback
    raise SystemExit(f"python examples/train_torch.py: needs the 'apps' extra ({exc}); install it with: "
                     + INSTALL.format(extra="apps")) from None


class Net(torch.nn.Module):
    """Any module works. ``zoracle_steps()`` (optional) lists the layers in order, which lets
    the oracle reuse features: a perturbed weight re-runs only the layers after it."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.layers(x)

    def zoracle_steps(self):
        return list(self.layers)


def data(seed: int = 0):
    """scikit-learn's 1,797 digits, stratified 80/20 split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 epochs instead of 20 (the test runs this)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 20; 4 with --quick)")
    parser.add_argument("--out", default="results/train_torch", help="folder for the checkpoint and the plot")
    args = parser.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (4 if args.quick else 20)  # (0 is given, not unset)
    if epochs < 2:
        parser.error(f"--epochs must be >= 2 (the run stops half-way and resumes), got {epochs}")
    if not args.out:
        parser.error("--out must name a folder, got an empty value")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: it exists and is not a folder")
    try:
        os.makedirs(args.out, exist_ok=True)  # before any work: an unwritable folder fails here
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot create the folder ({exc.strerror or exc})")
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    if os.path.exists(checkpoint):
        os.remove(checkpoint)  # a fresh run; resuming an older one is what the second call below does

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = data()
    oracle = TorchOracle(Net(), torch.nn.CrossEntropyLoss(reduction="none"))
    batches = zo.Minibatches((x_train, y_train), batch_size=32, seed=0)
    steps = epochs * len(batches)

    def accuracy(params) -> float:
        return float((oracle.predict(params, x_test).argmax(1) == y_test).mean())

    settings: dict = dict(  # DeepZero (Chen et al., ICLR 2024), at this model's size
        batches=batches, epochs=epochs, estimator=zo.CGE(mu=5e-3), sparsity=0.9, ratios="zo_grasp",
        grasp_batch=(x_train[:250], y_train[:250]), mask_shuffle_interval=1,
        optimizer=zo.sgd(zo.cosine_schedule(0.3, total_steps=steps, warmup_steps=len(batches)),
                         momentum=0.9, weight_decay=5e-4),
        eval_fn=lambda p: {"test_acc": accuracy(p)}, checkpoint=checkpoint, rng=0, progress=False)
    half = epochs // 2

    def stop_half_way(event, record, params):  # stands in for a job that gets killed
        return event == "epoch" and record["epoch"] + 1 >= half

    t0 = time.perf_counter()
    first = zo.train(oracle, oracle.initial_params(), callbacks=[stop_half_way], **settings)
    print(f"stopped after epoch {first.epochs} of {epochs}: test accuracy {accuracy(first.params):.1%}, "
          f"{first.nfev:,} queries; checkpoint {checkpoint}")
    result = zo.train(oracle, oracle.initial_params(), resume=checkpoint, **settings)
    seconds = time.perf_counter() - t0
    print(f"resumed and finished {result.epochs} epochs: test accuracy {accuracy(result.params):.1%}, "
          f"{result.nfev:,} queries in all, {seconds:.1f} s")
    path = os.path.join(args.out, "train_torch.png")
    fig = result.plot(x="step", title="DeepZero through TorchOracle (dashed: resumed from the checkpoint)")
    for ax in fig.axes:  # the figure is plain matplotlib: mark where the run was resumed
        ax.axvline(half * len(batches) + 0.5, color="grey", ls="--", lw=1)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
