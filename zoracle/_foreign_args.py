"""Arguments that :func:`zoracle.train` and :func:`zoracle.estimate_gradient` do not take, refused
with zoracle's way to say the same thing.

A script ported from ``scipy.optimize.minimize`` (or ``approx_fprime``, Nevergrad, Optuna) passes
``args=``, ``callback=``, ``constraints=``, ``options={...}``; Python's own TypeError said only
"unexpected keyword argument", so ``callback=`` beside ``callbacks=`` left the reader guessing.
"""

from __future__ import annotations

import difflib
import inspect

from ._errors import ArgumentError

_ARGS = ("zoracle calls the oracle with the parameters alone: bind the extra arguments into it, "
         "`lambda x: fun(x, *args)` (functools.partial(fun, a=...) for keyword ones)")
_GRADIENT = ("zoracle estimates the gradient from loss queries (the `estimator`): drop it (with an exact "
             "gradient at hand, a gradient method such as scipy's serves better)")
_STEP = "the difference step is the estimator's `mu`: estimator=zo.CGE(mu=...)"

#: the estimators' own arguments, given to train or estimate_gradient (the nearest name either takes misled:
#: `directions` pointed at ZO-GraSP's `grasp_directions`, `scheme` at the learning rate's `schedule`)
ESTIMATOR_HINTS = {
    "scheme": 'the difference scheme belongs to the estimator: estimator=zo.CGE(scheme="central") (or zo.RGE(...))',
    "directions": "the number of directions belongs to the estimator: estimator=zo.RGE(directions=...)",
    "distribution": ('the directions\' distribution belongs to the estimator: estimator=zo.RGE(distribution=...), '
                     '"gaussian" (its default), "sphere" or "rademacher"'),
    "shaping": 'fitness shaping belongs to the estimator: estimator=zo.RGE(shaping="ranks")',
    "population": "the population belongs to the estimator: estimator=zo.SNES(population=...)",
    "sigma_lr": "SNES's width learning rate belongs to the estimator: estimator=zo.SNES(sigma_lr=...)",
}
ESTIMATOR_HINTS |= dict.fromkeys(("q", "n_directions", "num_directions"), ESTIMATOR_HINTS["directions"])

#: names other optimizers take, and what train takes instead
TRAIN_HINTS = ESTIMATOR_HINTS | {
    "fun": "the loss function is the first argument, `oracle`",
    "x0": "the starting point is the second argument, `params` (a 1-D float array)",
    "args": _ARGS,
    "callback": ("pass callbacks=[fn], fn(event, record, params): `params` is scipy's xk (intermediate_result.x), "
                 "record['loss'] the step's loss; raise StopIteration or return True to stop"),
    "method": ("choose the update with optimizer= (zo.sgd(lr), zo.adam(lr), zo.sign_sgd(lr)) and the gradient "
               "estimate with estimator= (zo.CGE(), zo.RGE(...), zo.SNES(...))"),
    "jac": _GRADIENT, "hess": _GRADIENT, "hessp": _GRADIENT,
    "constraints": ("train keeps a box only, bounds=(lo, hi) (or scipy's list of (lo, hi) pairs): for other "
                    "constraints project the parameters in the optimizer's update, or reparameterize inside the "
                    "oracle (docs/training.md, 'Bounds, and what else scipy.optimize.minimize takes')"),
    "tol": ("train has no convergence test: it runs `epochs` (one step an epoch for a plain function) or until "
            "`max_queries`; stop earlier from a callback"),
    "options": ("train takes no options dict: maxiter is `epochs` (one step an epoch for a plain function), "
                "maxfev is `max_queries`, eps is the estimator's `mu` (estimator=zo.CGE(mu=...)), disp is `progress`"),
    "maxiter": "the steps are `epochs` (one step an epoch for a plain function; steps_per_epoch with `batches`)",
    "budget": "a query budget is `max_queries` (give `epochs` enough for it to stop the run)",
    "eps": _STEP, "epsilon": _STEP,
    "disp": "`progress` shows the run", "verbose": "`progress` shows the run",
    "seed": "the seed is `rng`", "random_state": "the seed is `rng`",
    "workers": "parallel queries take executor=zoracle.executors.JoblibExecutor(n_jobs)",
    "lr": "the learning rate belongs to the optimizer: optimizer=zo.sgd(lr) or zo.adam(lr)",
}
#: names a torch training loop (or Keras' fit) uses, and what train takes instead
_DATA = ("the minibatches are `batches`: a list of batches (x, y), a callable epoch -> batches, or "
         "zo.Minibatches((x, y), batch_size, seed=0)")
_DATA_NAMES = ("data", "dataset", "loader", "dataloader", "train_loader", "train_data")
TRAIN_HINTS |= dict.fromkeys(_DATA_NAMES, _DATA + "; the oracle is given each one bound (oracle.bind(batch), TorchOracle's)")
TRAIN_HINTS["batch_size"] = "the batch size is that of the `batches`: batches=zo.Minibatches((x, y), batch_size, seed=0)"
TRAIN_HINTS |= dict.fromkeys(("steps", "num_steps", "n_steps", "n_iter", "iterations", "max_steps"), (
    "the steps are `epochs` (one step an epoch for a plain function; steps_per_epoch with `batches`), or stop "
    "by queries with `max_queries`"))
TRAIN_HINTS |= dict.fromkeys(("momentum", "weight_decay", "nesterov", "betas"), (
    "momentum and weight decay belong to the optimizer: optimizer=zo.sgd(lr, momentum=0.9, weight_decay=5e-4) "
    "or zo.adam(lr, b1=0.9, b2=0.999, weight_decay=...)"))
_MODEL_NAMES = ("loss_fn", "criterion", "model", "device")
TRAIN_HINTS |= dict.fromkeys(_MODEL_NAMES, (
    "the model, its loss and its device make the oracle: oracle=TorchOracle(model, loss_fn, device=...) from "
    "zoracle.adapters.torch"))
TRAIN_HINTS |= dict.fromkeys(("val_data", "validation_data", "val_loader", "eval_data", "test_data"), (
    "evaluation is `eval_fn`: a function params -> float or dict, run every `eval_every` epochs"))
TRAIN_HINTS |= dict.fromkeys(("save_every", "checkpoint_interval"), (
    "checkpoints are saved every `checkpoint_every` steps or time (\"10min\"), to `checkpoint`"))
TRAIN_HINTS |= dict.fromkeys(("maxfev", "maxfun", "n_trials"), TRAIN_HINTS["budget"])
TRAIN_HINTS |= dict.fromkeys(("learning_rate",), TRAIN_HINTS["lr"])
TRAIN_HINTS |= dict.fromkeys(("n_jobs", "num_workers"), TRAIN_HINTS["workers"])

#: scipy.optimize.approx_fprime's names, and what estimate_gradient takes instead
GRADIENT_HINTS = {
    "f": TRAIN_HINTS["fun"], "fun": TRAIN_HINTS["fun"],
    "xk": "the point is the second argument, `params` (a 1-D float array)", "x0": TRAIN_HINTS["x0"],
    "epsilon": _STEP, "eps": _STEP, "args": _ARGS,
} | ESTIMATOR_HINTS | {
    "mu": _STEP, "abs_step": _STEP,
    **{k: TRAIN_HINTS[k] for k in ("seed", "random_state", "workers", "n_jobs", "num_workers")},
    "bounds": ("estimate_gradient queries params + mu (forward) or +- mu (central) wherever params are: keep "
               "them that far inside the box, or train with zo.train(..., bounds=(lo, hi)), which keeps every "
               "query inside it"),
}


def refuse_foreign(fn, oracle, params, extra: tuple, unknown: dict, hints: dict) -> None:
    """Raise an :class:`ArgumentError` (a TypeError too, as Python's own was) for positional
    arguments past ``fn``'s, keywords it does not take, the function or the point left out (given as
    SciPy's ``fun=``, ``x0=``: see :func:`seal_signature`), or the two given in ``approx_fprime``'s
    order ``(xk, f)``, naming what ``fn`` takes instead.

    ``fn`` gathers them in ``*extra`` and ``**unknown`` (typed ``NoReturn``, so that a type checker
    still refuses them) rather than through a wrapper: a wrapper's frame would shift every warning's
    fixed ``stacklevel`` off the caller's line."""
    if not (extra or unknown or oracle is REQUIRED or params is REQUIRED
            or (callable(params) and not callable(oracle))):  # (every call: no signature read)
        return
    sig = inspect.signature(fn)  # (the public one, without *extra and **unknown: see visible_signature)
    by_position = [n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    missing = [n for n, value in zip(by_position, (oracle, params)) if value is REQUIRED]
    if extra or unknown or missing:
        raise ForeignArgument(_refusal(fn.__name__, by_position, frozenset(sig.parameters),
                                       len(by_position) + len(extra), unknown, hints, missing))
    if callable(params) and not callable(oracle) and not hasattr(oracle, "bind"):
        raise ForeignArgument(
            f"`{fn.__name__}` takes the function first and the point second, ({', '.join(by_position[:2])}); "
            f"got a {type(oracle).__name__} first and a callable second (scipy approx_fprime's order, "
            f"(xk, f)): swap them, {fn.__name__}(f, xk)")


def visible_signature(fn) -> inspect.Signature:
    """``fn``'s signature without its ``*extra`` and ``**unknown`` catch-alls (for help(), inspect, IDEs)."""
    sig = inspect.signature(fn)
    return sig.replace(parameters=[p for p in sig.parameters.values()
                                   if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])


class _Required:
    """The runtime default of ``oracle`` and ``params`` (see :func:`seal_signature`)."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()


def seal_signature(fn) -> None:
    """Give ``fn`` its visible signature (help(), inspect, IDEs), then, at run time only, the default
    ``REQUIRED`` for ``oracle`` and ``params``, so that ``train(fun=f, x0=x)`` (SciPy's names) reaches
    :func:`refuse_foreign` rather than Python's "missing 2 required positional arguments". The
    annotations and the signature keep both required, so a type checker still refuses ``train()``."""
    fn.__signature__ = visible_signature(fn)
    fn.__defaults__ = (REQUIRED, REQUIRED, *(fn.__defaults__ or ()))


class ForeignArgument(ArgumentError, TypeError):
    """An argument the function does not take (Python raised a plain TypeError for it)."""


def _refusal(name, by_position, names, n_args, kwargs, hints, missing=()) -> str:
    parts = []
    if missing:
        parts.append(f"`{name}` is missing {' and '.join(f'`{n}`' for n in missing)}: pass the function and the "
                     f"point first, by position: {name}({', '.join(by_position[:2])}, ...)")
    if n_args > len(by_position):
        extra = "; scipy's `args=(...)`: " + _ARGS if "args" in hints else ""
        parts.append(f"`{name}` takes {len(by_position)} arguments by position ({', '.join(by_position)}), got "
                     f"{n_args}: pass the others by keyword (see help(zo.{name})){extra}")
    for key in sorted(set(kwargs) - names):
        hint = hints.get(key)
        if hint is None:
            near = difflib.get_close_matches(key, sorted(names), n=1)
            hint = (f"the nearest name it takes is `{near[0]}`" if near
                    else f"see help(zo.{name}) for the arguments it takes")
        parts.append(f"`{name}` has no argument `{key}`: {hint}")
    return "; ".join(parts)


_RUN_THEM = ("the points are yours to run: evaluate ask()'s rows in parallel (pool.map(f, X) keeps their order; "
             "results as they complete go in as tell({row: loss}))")
_NO_ORACLE = ("AskTell takes no loss function: ask() returns the points, you evaluate them and tell() their "
              "losses (with a function at hand, zo.train(f, params, ...) is the same run)")
#: what zoracle.AskTell takes instead of train's oracle and executor (and of other libraries' names)
ASK_TELL_HINTS = {k: v for k, v in TRAIN_HINTS.items() if k != "args"} | dict.fromkeys(("oracle", "fun", "f"),
                                                                                      _NO_ORACLE) | {
    "x0": "the starting point is the first argument, `params`",
} | dict.fromkeys(("executor", "workers", "n_jobs", "num_workers"), _RUN_THEM) | dict.fromkeys(
    _DATA_NAMES, _DATA + "; AskTell.batch names the batch of the last ask's points") | dict.fromkeys(
    _MODEL_NAMES, "AskTell takes no model or loss: ask() returns the points, you evaluate them (your model, its loss, "
                  "on its device) and tell() their losses")


def refuse_ask_tell_foreign(init, params, extra: tuple, unknown: dict) -> None:
    """:func:`refuse_foreign` for ``zoracle.AskTell(params, ...)``: train's ``oracle`` and ``executor`` (and
    a loss function given first, train's way) named with what AskTell does instead."""
    function = callable(params) and not hasattr(params, "__array__")
    if not (extra or unknown or function):
        return
    if function:
        raise ForeignArgument(f"`AskTell` got a {type(params).__name__} as `params`: {_NO_ORACLE}; pass the "
                              "initial parameters alone, AskTell(params, ...)")
    names = frozenset(visible_signature(init).parameters) - {"self"}
    raise ForeignArgument(_refusal("AskTell", ["params"], names, 1 + len(extra), unknown, ASK_TELL_HINTS))
