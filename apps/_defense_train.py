"""Models and training loops behind ``zoracle defense`` (denoised smoothing on digits).

The classifier ``f`` is trained white-box once, exported to ONNX, and from then on only the
ONNX file answers queries (:class:`~zoracle.adapters.onnx.OnnxClassifier`). A denoiser ``D``
in front of it is trained so that ``f(D(x + delta))`` agrees with ``f(x)`` (the stability
loss), after optional white-box MSE pre-training of ``D`` (the denoiser is ours):

* ``deepzero``: sparse CGE directly on ``D``'s parameters, every loss value a black-box
  query (:class:`~zoracle.adapters.torch.TorchOracle` + :func:`zoracle.train`);
* ``hybrid`` (ZO-AE-DS style): a ZO estimate of the loss gradient with respect to the black
  box's *input* (CGE over its 64 pixels), chained through ``D`` by autograd
  (:func:`~zoracle.adapters.torch.blackbox`);
* ``fo``: first-order training through the white-box torch classifier (the upper bound).

The two ZO rows spend the same number of black-box loss evaluations per gradient estimate.
"""

from __future__ import annotations

import inspect
import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import zoracle as zo
from zoracle.adapters.torch import Step, TorchOracle, blackbox, fork

__all__ = [
    "BlackBoxLoss", "Denoiser", "DigitsClassifier", "NoisyBatches", "TrainLog", "deepzero_sparsity",
    "export_onnx", "load_digits_split", "pretrain_mse", "train_classifier", "train_deepzero", "train_fo",
    "train_hybrid",
]


def load_digits_split(seed: int, test_size: int = 360):
    """scikit-learn digits scaled to [0, 1], shape (N, 1, 8, 8) float32, split at random."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    perm = np.random.default_rng(seed).permutation(len(X))
    test, train = perm[:test_size], perm[test_size:]
    return X[train], y[train].astype(np.int64), X[test], y[test].astype(np.int64)


class DigitsClassifier(nn.Module):
    """Small CNN for 8x8 digits (the model that becomes the black box)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _join(state):
    return (state[0] + state[1],) + tuple(state[2:])


class Denoiser(nn.Module):
    """Residual conv denoiser ``D(x) = x + h(x)``, starting at the identity (zero last layer).

    ``zoracle_steps`` exposes the split (fork, conv, ReLU, conv, ReLU, conv, join) so that
    :class:`~zoracle.adapters.torch.TorchOracle` reuses features between perturbations.
    """

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 1, 3, padding=1)
        self.relu = nn.ReLU()
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    def zoracle_steps(self) -> list:
        return [fork, self.conv1, self.relu, self.conv2, self.relu, self.conv3, Step(fn=_join, name="residual")]

    def forward(self, x):
        return x + self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))


@dataclass(frozen=True)
class TrainLog:
    """One denoiser training run: steps, black-box queries (samples), wall time, losses."""

    steps: int
    queries: int
    seconds: float
    losses: tuple
    queries_per_estimate: float = 0.0


def train_classifier(X, y, *, epochs: int, seed: int, batch: int = 64, lr: float = 3e-3) -> DigitsClassifier:
    """Train the (later black-box) classifier on clean digits with Adam."""
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def export_onnx(model: nn.Module, path) -> None:
    """Export with a dynamic batch axis (TorchScript exporter: no onnxscript needed), at opset 17:
    every onnxruntime the apps extra allows (>= 1.16, which runs opsets up to 19) loads it, whatever
    opset the installed torch would stamp by default (torch 2.13: 20). Written by Python, not by torch's
    C++ side, which refused a path that is not UTF-8 (a folder named in latin-1 bytes: ``--out`` failed
    after the classifier's training with a TypeError that printed its weights)."""
    # `dynamo` came in torch 2.5 (its default True from 2.9); before it the TorchScript exporter was the only one
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    data = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), data, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, **legacy)
    with open(path, "wb") as fh:
        fh.write(data.getvalue())


class NoisyBatches:
    """Replayable noisy minibatches: ``epoch -> [(x + delta, f(x)), ...]``.

    Rows and noise come from ``default_rng((seed, epoch))``, so every method sees the same
    batches and noise, and a resumed :func:`zoracle.train` run replays them; all
    perturbations of one step share that step's noise.
    """

    def __init__(self, X, targets, *, sigma: float, batch: int, steps_per_epoch: int, seed: int):
        self.X, self.targets, self.sigma = X, targets, float(sigma)
        self.batch, self.steps_per_epoch, self.seed = int(batch), int(steps_per_epoch), int(seed)

    def __call__(self, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, int(epoch)])
        out = []
        for _ in range(self.steps_per_epoch):
            idx = rng.choice(len(self.X), size=min(self.batch, len(self.X)), replace=False)
            x = self.X[idx]
            noisy = x + np.float32(self.sigma) * rng.standard_normal(x.shape, dtype=np.float32)
            out.append((noisy, self.targets[idx]))
        return out

    def steps(self, total: int):
        """The first ``total`` batches, epoch after epoch."""
        epoch = 0
        while total > 0:
            for b in self(epoch)[:total]:
                yield b
            total -= self.steps_per_epoch
            epoch += 1


def pretrain_mse(denoiser: Denoiser, X, *, sigma: float, steps: int, batch: int, seed: int, lr: float = 3e-3):
    """White-box MSE pre-training ``E||D(x + delta) - x||^2`` (no black-box queries)."""
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    rng = np.random.default_rng([seed, 99])
    for _ in range(steps):
        x = X[rng.choice(len(X), size=min(batch, len(X)), replace=False)]
        noisy = x + np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32)
        opt.zero_grad()
        F.mse_loss(denoiser(torch.from_numpy(noisy)), torch.from_numpy(x)).backward()
        opt.step()
    return denoiser


class BlackBoxLoss:
    """Per-sample cross-entropy through the ONNX black box: ``(k, 1, 8, 8), (k,) -> (k,)``.

    Only queries: the images go to onnxruntime as NumPy and the losses come back as a
    tensor without a graph (so autograd cannot see through it).
    """

    def __init__(self, blackbox):
        self.blackbox = blackbox

    def __call__(self, images, targets):
        x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        logits = self.blackbox(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)
        t = targets.detach().cpu().numpy() if hasattr(targets, "detach") else np.asarray(targets)
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return torch.from_numpy((lse - logits[np.arange(len(t)), t]).astype(np.float32))


def deepzero_sparsity(oracle: TorchOracle, queries: int) -> float:
    """Gradient sparsity that makes a sparse-CGE estimate cost ``queries`` loss evaluations.

    Conv / linear weights are sparsified, biases get dense CGE, plus one base query.
    """
    scored = sum(i.slice.stop - i.slice.start for i in oracle.param_info if i.kind in ("conv", "linear"))
    dense = oracle.size - scored
    keep = queries - 1 - dense
    if keep < 1:
        raise zo.ArgumentError(
            f"`queries` per estimate must be at least {dense + 2} (dense biases + 1 weight + base), got {queries}"
        )
    if keep > scored:  # a dense estimate is the most one can cost: the rows would not spend the same
        raise zo.ArgumentError(f"`queries` per estimate must be at most {oracle.size + 1} (every one of the "
                               f"{oracle.size} parameters + base), got {queries}")
    return 1.0 - keep / scored


def train_deepzero(denoiser: Denoiser, bb, X, targets, *, sigma: float, steps: int, batch: int, queries: int,
                   lr: float, seed: int, mu: float = 5e-3, momentum: float = 0.9, ratios: str = "zo_grasp",
                   steps_per_mask: int = 10, optimizer: str = "adam") -> TrainLog:
    """DeepZero: sparse CGE on the denoiser's parameters, the loss through the black box.

    :class:`~zoracle.adapters.torch.TorchOracle` evaluates all perturbations of a step as one
    batch (feature reuse through the denoiser's split) and its per-sample loss sends them to
    the ONNX model in one call; :func:`zoracle.train` runs DeepZero's loop (ZO-GraSP keep
    ratios, a fresh random mask every ``steps_per_mask`` steps) with ``zo.adam(lr)`` (the
    optimizer of the other rows) or ``optimizer="sgd"`` (SGD with ``momentum``, the
    reference recipe). The sparsity is set so one estimate costs ``queries`` loss
    evaluations on a minibatch.
    """
    oracle = TorchOracle(denoiser, BlackBoxLoss(bb))
    sparsity = deepzero_sparsity(oracle, queries)
    if steps == 0:  # nothing to train: no ZO-GraSP queries either
        return TrainLog(0, 0, 0.0, (), 0.0)
    batches = NoisyBatches(X, targets, sigma=sigma, batch=batch, steps_per_epoch=steps_per_mask, seed=seed)
    q0 = bb.queries
    opt = zo.adam(lr) if optimizer == "adam" else zo.sgd(lr, momentum=momentum)
    res = zo.train(oracle, oracle.initial_params(), batches=batches, epochs=-(-steps // steps_per_mask),
                   estimator=zo.CGE(mu=mu), optimizer=opt, sparsity=sparsity,
                   ratios=ratios, mask_shuffle_interval=1, rng=seed, progress=False,
                   # the same number of steps as the other rows, when it is not a whole number of masks
                   callbacks=[lambda event, rec, p: event == "step" and rec["step"] + 1 >= steps])
    oracle.load(res.params)
    per_step = res.history.column("nfev")
    return TrainLog(res.steps, bb.queries - q0, res.seconds, tuple(res.history.column("loss")),
                    float(np.median(per_step)) if per_step.size else 0.0)


def train_hybrid(denoiser: Denoiser, bb, X, targets, *, sigma: float, steps: int, batch: int, lr: float,
                 seed: int, mu: float = 5e-3, queries: int = 65) -> TrainLog:
    """ZO-AE-DS style: a ZO estimate w.r.t. the black box's input, chained into autograd.

    With ``queries == 65`` (the 64 pixels plus the base point), ``blackbox(loss, CGE)``
    differences every input pixel, all samples of the minibatch perturbed together and
    their losses kept apart; any other budget uses RGE with ``queries - 1`` directions per
    sample. The surrogate ``sum(z * stopgrad(g))`` carries the estimate through the
    white-box denoiser; Adam updates it.
    """
    n_in = int(np.prod(X.shape[1:]))
    est = zo.CGE(mu=mu) if queries - 1 == n_in else zo.RGE(mu=mu, directions=queries - 1, distribution="sphere")
    op = blackbox(BlackBoxLoss(bb), est, rng=seed, max_rows=1 << 20)
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    batches = NoisyBatches(X, targets, sigma=sigma, batch=batch, steps_per_epoch=10, seed=seed)
    start, q0, losses = time.perf_counter(), bb.queries, []
    for noisy, t in batches.steps(steps):
        opt.zero_grad()
        value = op(denoiser(torch.from_numpy(noisy)), torch.from_numpy(t)).mean()
        value.backward()
        opt.step()
        losses.append(value.item())
    per_estimate = (bb.queries - q0) / max(1, steps) / min(batch, len(X))  # a batch is at most the data
    return TrainLog(steps, bb.queries - q0, time.perf_counter() - start, tuple(losses), per_estimate)


def train_fo(denoiser: Denoiser, classifier: nn.Module, X, targets, *, sigma: float, steps: int, batch: int,
             lr: float, seed: int) -> TrainLog:
    """First-order denoised smoothing with white-box access to the torch classifier."""
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    for p in classifier.parameters():
        p.requires_grad_(False)
    batches = NoisyBatches(X, targets, sigma=sigma, batch=batch, steps_per_epoch=10, seed=seed)
    start, losses = time.perf_counter(), []
    for noisy, t in batches.steps(steps):
        opt.zero_grad()
        value = F.cross_entropy(classifier(denoiser(torch.from_numpy(noisy))), torch.from_numpy(t))
        value.backward()
        opt.step()
        losses.append(value.item())
    return TrainLog(steps, 0, time.perf_counter() - start, tuple(losses), 0.0)
