"""zoracle quickstart: train through a black box that only returns loss values.

The "model" is a plain Python function ``params -> float``; nothing is differentiated.
Run: ``python examples/quickstart.py`` (under a second of CPU time).
"""

import numpy as np

import zoracle as zo

# a black box: least squares of a hidden linear map (think: a simulator you cannot differentiate)
rng = np.random.default_rng(0)
A, target = rng.standard_normal((50, 20)), rng.standard_normal(50)


def loss(params):
    return float(np.mean((A @ params - target) ** 2))


theta = np.zeros(20)

# 1. one gradient estimate from loss values: coordinate-wise (CGE, d + 1 queries) ...
est = zo.estimate_gradient(loss, theta, zo.CGE(mu=1e-4))
exact = 2 * A.T @ (A @ theta - target) / len(target)
print(f"CGE: {est.nfev} queries, relative error {np.linalg.norm(est.grad - exact) / np.linalg.norm(exact):.1e}")

# ... or randomized (RGE, q + 1 queries, noisier)
est = zo.estimate_gradient(loss, theta, zo.RGE(mu=1e-4, directions=20), rng=0)
print(f"RGE: {est.nfev} queries, cosine to the gradient {est.grad @ exact / np.linalg.norm(est.grad) / np.linalg.norm(exact):.2f}")

# 2. training: SGD with momentum on sparse CGE (50% of coordinates per step, redrawn every epoch)
result = zo.train(loss, theta, epochs=100, estimator=zo.CGE(mu=1e-4), sparsity=0.5, ratios="uniform",
                  mask_shuffle_interval=1, optimizer=zo.sgd(0.05, momentum=0.9), rng=0, progress=False)
best = np.linalg.lstsq(A, target, rcond=None)[0]
print(f"trained: loss {loss(result.params):.4f} (optimum {loss(best):.4f}) with {result.nfev} queries")
