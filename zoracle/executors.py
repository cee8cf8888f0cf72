"""Executors run the planner's tasks: serially here, across workers in the parallel ones.

An executor is a context manager with ``n_workers`` and ``run(oracle, params, tasks) ->
list of arrays`` (one result per task, in task order). It holds the oracle once per worker.
"""

from __future__ import annotations

__all__ = ["SerialExecutor"]


class SerialExecutor:
    """Runs every task in this process, in order (the default)."""

    n_workers = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self) -> None:
        pass

    def run(self, oracle, params, tasks) -> list:
        return [t.run(oracle, params) for t in tasks]
