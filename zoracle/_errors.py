"""The small error hierarchy: every error zoracle raises on purpose is a ZoracleError."""

from __future__ import annotations

__all__ = ["ZoracleError", "OracleError", "ArgumentError"]


class ZoracleError(Exception):
    """Base class of every error the library raises on purpose."""


class ArgumentError(ZoracleError, ValueError):
    """An argument was rejected before any oracle query was made.

    The message names the argument, shows the value received and says the fix.
    """


class OracleError(ZoracleError, RuntimeError):
    """An oracle returned a non-scalar or non-finite value, or raised.

    Attributes
    ----------
    query : str
        Which query failed, e.g. ``"coordinate 17 (step +0.005)"`` or ``"direction 3 (+mu)"``.
    value : object
        The value the oracle returned (``None`` when it raised).
    cause : BaseException or None
        The exception the oracle raised, if any (also chained as ``__cause__``).
    """

    def __init__(self, query: str, value=None, cause: BaseException | None = None, detail: str = ""):
        self.query = query
        self.value = value
        self.cause = cause
        self.detail = detail
        if cause is not None:
            msg = f"oracle raised at {query}: {type(cause).__name__}: {cause}{'; ' + detail if detail else ''}"
        else:
            msg = f"oracle returned {value!r} at {query}{': ' + detail if detail else ''}"
        super().__init__(msg)

    def __reduce__(self):  # keep the fields when crossing process boundaries
        cause = self.cause
        try:  # an unpicklable cause must not hide the report
            import pickle

            pickle.dumps(cause)
        except Exception:
            cause = RuntimeError(f"{type(cause).__name__}: {cause}")
        return (self.__class__, (self.query, self.value, cause, self.detail))
