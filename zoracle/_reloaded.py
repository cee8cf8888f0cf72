"""Worker processes keep the modules they imported: an oracle's module reloaded in the driver
(``importlib.reload``, Jupyter's ``%autoreload``) is stale in them, and they would compute with
its old code, silently."""

from __future__ import annotations

import sys

from ._errors import ZoracleError


def check_not_reloaded(seen: dict, oracle, pickler=None) -> None:
    """Raise where the module of ``oracle`` (its class's, or a function's own) was reloaded here
    since an oracle from it was first sent to the workers. ``seen`` maps a module's name to its
    ``__spec__`` at that first send (``importlib.reload`` gives the module a new one); the caller
    empties it when its workers start anew. ``__main__`` travels by value: never stale; so does a
    module registered with ``pickler.register_pickle_by_value`` (``pickler``: the cloudpickle the
    executor sends with), cloudpickle's own remedy for a module edited while workers run."""
    names = {getattr(oracle, "__module__", None), type(oracle).__module__}
    listed = getattr(pickler, "list_registry_pickle_by_value", None)
    by_value = set(listed()) if callable(listed) else set()
    for name in sorted(n for n in names if isinstance(n, str) and n not in ("__main__", "builtins")):
        parts = name.split(".")  # (a package registered covers its submodules)
        if any(".".join(parts[:i]) in by_value for i in range(1, len(parts) + 1)):
            continue
        spec = getattr(sys.modules.get(name), "__spec__", None)
        if spec is None:
            continue
        first = seen.setdefault(name, spec)
        if first is not spec:
            what = getattr(oracle, "__qualname__", None) or type(oracle).__qualname__
            raise ZoracleError(
                f"module {name!r} of the oracle {what} was reloaded in this process (importlib.reload) after the "
                "executor's worker processes imported it; they keep the code they imported first and would compute "
                "with the old code: close the executor (its workers start anew on the next run) or open a new one")
