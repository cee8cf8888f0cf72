"""Logistic regression on scikit-learn's breast-cancer data, trained from loss values only.

The model is a plain NumPy function ``params -> float`` (no framework, no gradients):
zoracle estimates the gradient with coordinate-wise finite differences (central CGE,
2 x 31 + 1 queries per step) and runs SGD with momentum.

Run: ``python examples/logreg_breast_cancer.py`` (about a second).

Needs scikit-learn, from the ``apps`` extra: pip install -e ".[apps]".
"""

from __future__ import annotations

import numpy as np

import zoracle as zo
from zoracle.cli import INSTALL

try:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # a core-only install, or one extra alone: the extra, not a traceback
    raise SystemExit(f"python examples/logreg_breast_cancer.py: needs the 'apps' extra ({exc}); install it with: "
                     + INSTALL.format(extra="apps")) from None


def load(seed: int = 0):
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0) + 1e-12
    return (Xtr - mean) / std, (Xte - mean) / std, ytr.astype(float), yte.astype(float)


def make_loss(X, y, l2: float = 1e-3):
    """Mean logistic loss of ``sigmoid(X w + b)``; ``params = [w, b]``."""

    def loss(params):
        z = X @ params[:-1] + params[-1]
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * params[:-1] @ params[:-1])

    return loss


def accuracy(params, X, y) -> float:
    return float(np.mean(((X @ params[:-1] + params[-1]) > 0) == (y > 0.5)))


def main(epochs: int = 150, seed: int = 0, progress: bool = False) -> dict:
    Xtr, Xte, ytr, yte = load(seed)
    result = zo.train(
        make_loss(Xtr, ytr),
        np.zeros(Xtr.shape[1] + 1),
        epochs=epochs,
        estimator=zo.CGE(mu=1e-4, scheme="central"),
        optimizer=zo.sgd(zo.cosine_schedule(0.5, total_steps=epochs), momentum=0.9),
        eval_fn=lambda p: {"test_acc": accuracy(p, Xte, yte)},
        eval_every=25,
        rng=seed,
        progress=progress,
    )
    return {"train_acc": accuracy(result.params, Xtr, ytr), "test_acc": accuracy(result.params, Xte, yte),
            "queries": result.nfev, "loss": make_loss(Xtr, ytr)(result.params)}  # at the final params


if __name__ == "__main__":
    out = main(progress=True)
    print(f"train accuracy {out['train_acc']:.3f}, test accuracy {out['test_acc']:.3f}, "
          f"{out['queries']} loss queries, final loss {out['loss']:.4f}")
