"""Keep freed heap memory for the next step instead of handing it back to the kernel (glibc).

A zeroth-order step allocates and frees the same few megabytes of temporaries every time:
perturbed activations, patches, the loss rows. glibc's default policy returns the free
top of the heap to the kernel once it passes a threshold (``M_TRIM_THRESHOLD``, which
follows the largest block freed, a few MiB here), so the next step takes page faults on
the same bytes (``benchmarks/allocator.py`` measures it: every method of the study's runs
at d of about 2k took 1.15-1.47x less time without them). Raising the trim threshold to
128 MiB and the size above which blocks are mapped on their own (``M_MMAP_THRESHOLD``) to
32 MiB keeps those pages. Results do not change: only where the bytes come from does.

The setting is the process's (glibc has one policy per process, and no way to read it
back). :func:`reuse_freed_memory` applies it once; ``zo.train``, ``zo.estimate_gradient``
and ``JoblibExecutor``'s worker processes call it. It does nothing where

- the C library is not glibc (macOS, Windows, musl);
- the process started with an allocator policy of its own: ``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, a ``GLIBC_TUNABLES``
  naming ``glibc.malloc``, or another allocator in ``LD_PRELOAD`` (jemalloc, tcmalloc,
  mimalloc);
- ``ZORACLE_MALLOC=system`` is set (keep glibc's default policy; ``zoracle`` or unset: this
  policy; any other value keeps glibc's default, with a warning naming the two).

The cost: up to 128 MiB of freed memory stays with the process, and blocks under 32 MiB are
served from the heap, so the resident size can stay near its peak after a run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

from ._errors import logging_kept_out, user_stacklevel, warn

log = logging.getLogger("zoracle")

TRIM_BYTES = 128 << 20  # M_TRIM_THRESHOLD: free bytes at the heap's top kept before trimming
MMAP_BYTES = 32 << 20  # M_MMAP_THRESHOLD: blocks this large or larger are mapped on their own (glibc's maximum)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_GLIBC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_CHOICES = ("", "zoracle", "system")  # ZORACLE_MALLOC, lower-cased: unset or zoracle's policy, or glibc's

_outcome: list = []  # [(applied, reason)] once decided: the decision holds for the process


def _startup_environ():
    """The environment this process started with (Linux: ``/proc/self/environ``), which is what
    glibc read its ``MALLOC_*_`` settings from; None where it cannot be read. Libraries may
    change ``os.environ`` later for the processes they spawn (Dask's nanny sets
    ``MALLOC_TRIM_THRESHOLD_`` in its own process), which does not change this process's policy."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def plan(environ=None, libc: str | None = None) -> tuple:
    """``(apply, reason)``: whether :func:`reuse_freed_memory` would change the allocator
    policy in a process with these environment variables and C library, and why not where it
    would not. By default, this process's: ``ZORACLE_MALLOC`` from ``os.environ`` (it may be set
    from Python), the allocator settings from the environment the process started with."""
    if environ is None:
        choice_env, env = os.environ, _startup_environ()
        env = dict(os.environ) if env is None else env
    else:
        choice_env = env = environ
    libc = platform.libc_ver()[0] if libc is None else libc
    choice = choice_env.get("ZORACLE_MALLOC", "").strip().lower()
    if choice == "system":
        return False, "ZORACLE_MALLOC=system"
    if choice not in _CHOICES:
        return False, (f"ZORACLE_MALLOC={choice_env['ZORACLE_MALLOC']!r} is neither 'system' (glibc's default "
                       f"policy) nor 'zoracle' (keep freed memory): glibc's default kept; set ZORACLE_MALLOC=system "
                       "or ZORACLE_MALLOC=zoracle, or unset it")
    if libc != "glibc":
        return False, f"the C library is not glibc ({libc or 'unknown'})"
    chosen = [k for k in _GLIBC_ENV if k in env]
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES (glibc.malloc)")
    if chosen:
        return False, f"the process started with its own policy ({', '.join(chosen)})"
    preload = env.get("LD_PRELOAD", "")
    other = [a for a in _OTHER_ALLOCATORS if a in preload]
    if other:
        return False, f"LD_PRELOAD holds another allocator ({other[0]})"
    return True, "glibc, no policy set"


def reuse_freed_memory() -> bool:
    """Keep freed heap memory for reuse instead of returning it to the kernel (glibc), once
    per process.

    ``zo.train``, ``zo.estimate_gradient`` and the workers of ``JoblibExecutor`` call it, so
    most users never need to. Call it yourself in processes zoracle does not start that run
    oracle queries (Dask or Ray workers). It raises glibc's ``M_TRIM_THRESHOLD`` to 128 MiB
    and ``M_MMAP_THRESHOLD`` to 32 MiB with ``mallopt``: a step's temporaries, freed and
    allocated again every step, then stay mapped instead of costing page faults each time.
    Results are unchanged; the process may keep up to 128 MiB more memory after a peak.

    It does nothing, and returns False, where the C library is not glibc, where the process
    started with a policy of its own (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, ``GLIBC_TUNABLES`` naming ``glibc.malloc``,
    jemalloc, tcmalloc or mimalloc in ``LD_PRELOAD``), or where ``ZORACLE_MALLOC=system`` is
    set, the way to keep glibc's default. The setting belongs to the process and cannot be
    read back or undone, so the first call decides and later calls return its outcome.

    Returns
    -------
    bool
        True when the process runs with this policy from zoracle.

    Examples
    --------
    >>> import zoracle as zo
    >>> zo.reuse_freed_memory() in (True, False)
    True
    """
    if _outcome:
        return _outcome[0][0]
    apply, reason = plan()
    if os.environ.get("ZORACLE_MALLOC", "").strip().lower() not in _CHOICES:
        warn(reason, stacklevel=user_stacklevel())
    if apply:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            # mallopt returns 1 on success; the mmap threshold first, so that a refused trim
            # threshold cannot leave glibc mapping every block over its 128 KiB default
            apply = mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) == 1
            reason = "set" if apply else "mallopt refused the thresholds"
        except (OSError, AttributeError) as exc:
            apply, reason = False, f"mallopt unavailable ({exc})"
    _outcome.append((apply, reason))
    with logging_kept_out():
        log.debug("zoracle: keep freed heap memory for reuse: %s (%s)", "yes" if apply else "no", reason,
                  stacklevel=user_stacklevel())
    return apply
