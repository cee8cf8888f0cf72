"""Policy search on gymnasium's classic control through zo.train: the loss is minus a policy's mean
return over k episodes, each step's queries playing the same k seeded episodes (common random
numbers, through the oracle's ``bind``), with an evaluation on held-out episodes.

Needs gymnasium, in the ``apps`` extra: pip install -e ".[apps]" (or pip install gymnasium).
    python examples/policy_search.py          # CartPole-v1, SNES, a linear policy: a few seconds
    python examples/policy_search.py --env Pendulum-v1 --hidden 8 --estimator es --epochs 5 --workers 2
"""

import argparse

import numpy as np

import zoracle as zo
from zoracle.cli import INSTALL
from zoracle.executors import JoblibExecutor, SerialExecutor

try:
    import gymnasium as gym
except ImportError as exc:  # a core-only install: the extra, not a traceback
    raise SystemExit(f"python examples/policy_search.py: needs the 'apps' extra ({exc}); install it with: "
                     + INSTALL.format(extra="apps")) from None

_ENVS: dict = {}  # one environment a process, made at its first episode (process workers make their own)


class Policy:
    """``W2 tanh(W1 obs + b1) + b2`` (``W obs + b`` with ``hidden=0``): a push's side, or a bounded torque."""

    def __init__(self, env_id: str, hidden: int = 0, episodes: int = 3):
        env = gym.make(env_id)
        n_in, space = len(env.reset(seed=0)[0]), env.action_space
        self.discrete = not isinstance(space, gym.spaces.Box)
        self.high = float(space.high[0]) if isinstance(space, gym.spaces.Box) else 1.0
        self.env_id, self.hidden, self.episodes = env_id, hidden, episodes
        self.shapes = [(n_in, hidden), (hidden,), (hidden, 1), (1,)] if hidden else [(n_in, 1), (1,)]
        self.d = sum(int(np.prod(s)) for s in self.shapes)

    def play(self, theta: np.ndarray, seed: int) -> float:  # one episode's return; the seed fixes its start
        env = _ENVS.get(self.env_id) or _ENVS.setdefault(self.env_id, gym.make(self.env_id))
        ends = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes])
        w = [theta[a:b].reshape(s) for a, b, s in zip(ends[:-1], ends[1:], self.shapes)]
        (obs, _), total, done = env.reset(seed=int(seed)), 0.0, False
        while not done:
            h = np.tanh(obs @ w[0] + w[1]) if self.hidden else obs
            a = h @ w[-2] + w[-1]
            obs, reward, terminated, truncated, _ = env.step(int(a[0] > 0) if self.discrete else self.high * np.tanh(a))
            total, done = total + float(reward), terminated or truncated
        return total

    def mean_return(self, theta: np.ndarray, seeds) -> float:
        return float(np.mean([self.play(theta, s) for s in seeds]))

    def bind(self, step: int):  # zo.train hands each step's seed here: all its queries play the same episodes
        seeds = range(self.episodes * step, self.episodes * (step + 1))
        return lambda theta: -self.mean_return(theta, seeds)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python examples/policy_search.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--hidden", type=int, default=0, help="hidden units (0: a linear policy)")
    ap.add_argument("--estimator", choices=["snes", "es", "rge", "cge"], default="snes")
    ap.add_argument("--episodes", type=int, default=3, help="episodes a query")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)  # steps an epoch
    ap.add_argument("--workers", type=int, default=0, help="process workers (0: this process)")
    ap.add_argument("--checkpoint", default=None, help="a .npz to save to and resume from")
    args = ap.parse_args(argv)
    policy = Policy(args.env, args.hidden, args.episodes)
    estimator, optimizer = {"snes": (zo.SNES(mu=0.1, population=8), zo.sgd(1.0)),
                            "es": (zo.RGE(mu=0.1, directions=8, scheme="central", shaping="ranks"), zo.adam(0.05)),
                            "rge": (zo.RGE(mu=0.1, directions=8), zo.adam(0.05)),
                            "cge": (zo.CGE(mu=0.1), zo.adam(0.05))}[args.estimator]
    held_out = range(10**6, 10**6 + 20)  # the evaluation's episodes, played by no step
    theta0 = 0.3 * np.random.default_rng(0).standard_normal(policy.d) if args.hidden else np.zeros(policy.d)
    with JoblibExecutor(args.workers) if args.workers else SerialExecutor() as executor:
        res = zo.train(policy, theta0, batches=lambda epoch: range(args.steps * epoch, args.steps * (epoch + 1)),
                       epochs=args.epochs, estimator=estimator, optimizer=optimizer, executor=executor,
                       eval_fn=lambda p: policy.mean_return(p, held_out), checkpoint=args.checkpoint,
                       resume=args.checkpoint is not None, rng=0, progress=False)
    print(f"{args.env}, {args.estimator}, d = {policy.d}: held-out return {policy.mean_return(theta0, held_out):.1f} "
          f"-> {policy.mean_return(res.params, held_out):.1f} after {res.steps} steps, {res.nfev} queries")


if __name__ == "__main__":
    main()
