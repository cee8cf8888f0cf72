"""A user's training script, fully annotated: ``mypy --strict`` must accept it against zoracle's
shipped annotations (tests/test_packaging.py). Type-checked only, never run."""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

import zoracle as zo
from zoracle.adapters.torch import TorchOracle, cross_entropy
from zoracle.executors import DeviceExecutor, Executor, JoblibExecutor, SerialExecutor, current_device, from_args
from zoracle.smoothing import lower_confidence_bound, radius
from zoracle.testing import QuadraticOracle, check_oracle

FloatArray = npt.NDArray[np.float64]


def loss(params: FloatArray) -> float:
    return float(np.sum((params - 1.0) ** 2))


def stop_when_small(event: str, record: dict[str, Any], params: FloatArray) -> bool | None:
    if event == "epoch" and record["loss"] < 1e-3:
        return True
    return None


def log_step(event: str, record: dict[str, float], params: npt.NDArray[np.floating[Any]]) -> None:
    print(event, record.get("loss"), params.shape)


def evaluate(params: FloatArray) -> float:
    return loss(params)


def metrics(params: FloatArray) -> dict[str, float]:
    return {"loss": loss(params), "norm": float(np.linalg.norm(params))}


def lr_at(step: int) -> float:
    return 0.1 / (1 + step)


def plain_run(path: Path) -> zo.TrainResult:
    p0: FloatArray = np.zeros(10)
    report: dict[str, Any] = check_oracle(loss, p0, rng=np.random.default_rng(0))
    print(sorted(report))
    est: zo.GradientEstimate = zo.estimate_gradient(loss, p0, zo.CGE(mu=1e-3), rng=0)
    print(est.nfev, est.loss)
    opt: zo.Optimizer = zo.adam(zo.cosine_schedule(1e-2, total_steps=15), b1=0.0)
    result = zo.train(loss, p0, epochs=3, steps_per_epoch=5, optimizer=opt, eval_fn=evaluate,
                      callbacks=[stop_when_small, log_step], checkpoint=path, progress=False, rng=0,
                      max_queries=10_000, ratios=np.array([1.0]), score_kinds=["linear"])
    again = zo.train(loss, p0, epochs=3, steps_per_epoch=5, optimizer=zo.sgd(lr_at, momentum=0.9),
                     eval_fn=metrics, checkpoint=str(path), resume=True, progress=False, mu=1e-3,
                     checkpoint_every=datetime.timedelta(seconds=30), rng=np.random.default_rng(0))
    every_10 = zo.train(loss, p0, steps_per_epoch=20, optimizer=zo.sign_sgd(zo.linear_warmup(0.01, 5)),
                        checkpoint=path, checkpoint_every=10, callbacks=None, progress=False)
    verbose = path.suffix == ".log"
    quiet = zo.train(loss, p0, callbacks=False, progress=False).nfev + zo.train(
        loss, p0, callbacks=verbose and [log_step], progress=verbose).nfev  # None or False: no callback
    hist: zo.History = result.history
    losses: npt.NDArray[np.float64] = hist.column("loss")
    last: float = result.loss
    queries: int = result.nfev + again.nfev + every_10.nfev + quiet
    print(losses.mean(), last, queries, result.steps, result.epochs, result.seconds, result.stopped)
    for record in hist.epochs:
        epoch_loss: float = record["loss"]
        print(epoch_loss)
    steps: list[dict[str, Any]] = list(hist.steps)
    print(len(steps), zo.History.from_checkpoint(path) == hist)
    arrays, meta = zo.load_checkpoint(path)
    header: dict[str, Any] = meta
    print(sorted(arrays), header)
    return result


class LinearOracle:
    """A data oracle: ``bind(batch)`` gives the loss on that batch."""

    def __init__(self, x: FloatArray, y: FloatArray) -> None:
        self.x, self.y = x, y

    def __call__(self, params: FloatArray) -> float:
        return float(np.mean((self.x @ params - self.y) ** 2))

    def bind(self, batch: tuple[FloatArray, FloatArray]) -> LinearOracle:
        return LinearOracle(*batch)


def recipe_run() -> FloatArray:
    rng = np.random.default_rng(0)
    x: FloatArray = rng.normal(size=(64, 5))
    y: FloatArray = x @ np.ones(5)
    batches = zo.Minibatches((x, y), batch_size=16, seed=0)
    oracle = LinearOracle(x, y)
    p0: FloatArray = np.zeros(5)
    kw: dict[str, Any] = zo.recipes.short_budget(oracle, p0, budget=2_000, batches=batches, lr=0.05)
    result = zo.train(oracle, p0, batches=batches, rng=0, progress=False, **kw)
    final: FloatArray = result.params
    return final


def remote_run(args: argparse.Namespace) -> None:
    remote = zo.retrying(loss, tries=5, on=(ConnectionError,), backoff=0.1, max_delay=2.0, jitter=0.1)
    picky = zo.retrying(loss, on=lambda exc: "503" in str(exc))
    print(remote(np.zeros(3)), picky(np.zeros(3)))
    print(zo.train(remote, np.zeros(3), steps_per_epoch=2, progress=False).loss)
    with SerialExecutor(timeout=60.0) as serial:
        print(zo.estimate_gradient(loss, np.zeros(4), zo.RGE(directions=4), executor=serial).nfev)
    with JoblibExecutor(2) as pool:
        print(zo.train(loss, np.zeros(4), executor=pool, progress=False).nfev)
    with DeviceExecutor(["cpu", "cpu"], timeout=60.0) as devices:
        print(devices.n_workers, current_device())
    chosen = from_args(args)
    if chosen is not None:
        with chosen as executor:
            print(zo.train(loss, np.zeros(4), executor=executor, progress=False).nfev)
    mine: Executor = SerialExecutor()
    print(zo.estimate_gradient(loss, np.zeros(4), executor=mine).nfev)
    scored, dense = zo.split_blocks([slice(0, 2), slice(2, 4)])
    print(scored, dense)


def quadratic_checks() -> None:
    q = QuadraticOracle(np.eye(3), np.zeros(3))
    x: FloatArray = np.ones(3)
    g: FloatArray = q.grad(x)
    h: FloatArray = q.hessian()
    print(g, h, q.batch(np.ones((2, 3))), check_oracle(q, x))
    bound: float = lower_confidence_bound(90, 100, 0.001)
    print(bound, radius(90, 100, 0.001, 0.25))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


def torch_run(folder: Path) -> float:
    model = Net()
    oracle = TorchOracle(model, cross_entropy)
    theta = oracle.initial_params()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    step_oracle: TorchOracle = oracle.bind(batches[0])
    check_oracle(step_oracle, theta)
    first: float = step_oracle(theta)

    def accuracy(params: npt.NDArray[np.float32]) -> dict[str, float]:
        return {"acc": float((oracle.predict(params, x).argmax(1) == y.numpy()).mean())}

    result = zo.train(oracle, theta, batches=batches, epochs=2, estimator=zo.CGE(mu=5e-3), sparsity=0.5,
                      optimizer=zo.sgd(0.1, momentum=0.9, weight_decay=5e-4), eval_fn=accuracy,
                      checkpoint=folder / "torch.npz", progress=False, rng=0)
    oracle.load(result.params)
    print(result.history.column("acc", level="epoch"), oracle.unbind(), step_oracle.unbind())
    return first
