"""Applications behind the ``zoracle`` command line (demo, bench, defense, sol, plot).

They use frameworks freely; the core never imports them. Imported as ``zoracle.apps.<name>``.
"""


def percent(x: float) -> str:
    """``0.95 -> '95%'``, ``0.9999 -> '99.99%'`` (``:.0%`` printed 100% gradient sparsity)."""
    text = f"{100 * x:.6g}"
    if x < 1 and float(text) >= 100:
        text = f"{100 * x:.15g}"
    return text + "%"
