"""The allocator policy zoracle sets (``zo.reuse_freed_memory``), measured on the study's runs.

The same training runs of ``benchmarks/peers.py`` (seed 0, the settings tuned at 30,000
queries) under glibc's default policy (``ZORACLE_MALLOC=system``) and under zoracle's, in
alternating child processes, since the policy belongs to a process and cannot be undone.
Each run reports its training seconds, the minor page faults and the kernel (system) CPU
time it took; the table gives the median over rounds, each method's speed-up, and the demo
recipe's lead over every other method under each policy::

    python benchmarks/allocator.py --data digits --rounds 3 --out allocator.json
    python benchmarks/allocator.py --report allocator.json    # the markdown table again

``--width`` runs another of the study's sizes (160 on digits, 128 on MNIST-1D: d of about 12-13k).
``--policies zoracle`` runs zoracle's policy alone (each round one child process, every method in
it): the methods' times side by side in rounds, when a change of the library rather than of the
policy is measured::

    python benchmarks/allocator.py --data digits --methods deepzero,zoracle-es,snes,pgpe --policies zoracle --rounds 3

``--roots A,B`` runs each round one child process per zoracle checkout (its ``zoracle/``,
``adapters/`` and ``apps/``, as ``step_time.py --root`` imports them; ``.`` is this one) under
zoracle's policy: a change of the library, timed in whole runs, side by side with the code
before it::

    git worktree add /tmp/old cf939ab
    python benchmarks/allocator.py --data digits --methods deepzero,snes --roots /tmp/old,. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POLICIES = ("system", "zoracle")  # ZORACLE_MALLOC=system: glibc's default; unset: zoracle's
WIDTHS = {"digits": 0, "mnist1d": 16}  # the study's smallest size (d of about 2k)


def child(data: str, methods: list, budget: int, width: int | None = None, root: str | None = None) -> list:
    """Each method once in this process: ``[{method, seconds, queries, faults, sys_s, test_acc, reuse,
    zoracle}]``; ``root``: the zoracle checkout to import (None: the installed one)."""
    import torch

    sys.path.insert(0, HERE)
    import step_time

    zo = step_time.import_zoracle(root)
    import peers

    torch.set_num_threads(1)
    reuse = zo.reuse_freed_memory()  # what zo.train would do at its start, decided here once
    d = peers.load_data(data, 0)
    runs = peers._merged([os.path.join(HERE, "peers_results", f"{data}.json")])
    rows = []
    width = WIDTHS[data] if width is None else width
    for method in methods:
        setting = peers.timing_setting(runs, data, width, method, 30_000)
        bench = peers.Bench(d, data, width, 0, budget)
        before = resource.getrusage(resource.RUSAGE_SELF)
        r = peers.run_one(bench, method, setting)
        after = resource.getrusage(resource.RUSAGE_SELF)
        rows.append({"method": method, "setting": setting, "seconds": r["seconds"], "queries": r["queries"],
                     "faults": after.ru_minflt - before.ru_minflt, "sys_s": after.ru_stime - before.ru_stime,
                     "test_acc": r["test_acc"], "reuse": reuse, "d": r["d"],
                     "zoracle": os.path.dirname(zo.__file__)})
    return rows


def run(data: str, methods: list, budget: int, rounds: int, log=print, width: int | None = None,
        policies: tuple = POLICIES, roots: tuple | None = None) -> dict:
    """Alternating child processes, ``rounds`` per policy (system first in each round); with
    ``roots``, one child per checkout each round, under zoracle's policy."""
    width = WIDTHS[data] if width is None else width
    out = {"data": data, "budget": budget, "methods": methods, "rounds": rounds, "width": width, "runs": [],
           "policies": list(policies)}
    if roots:
        out["roots"] = list(roots)
    children = [(policy, None) for policy in policies] if not roots else [("zoracle", root) for root in roots]
    for r in range(rounds):
        for policy, root in children:
            env = {k: v for k, v in os.environ.items() if k != "ZORACLE_MALLOC"}
            if policy == "system":
                env["ZORACLE_MALLOC"] = "system"
            t = time.perf_counter()
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--data", data, "--methods",
                                ",".join(methods), "--budget", str(budget), "--width", str(width)]
                               + (["--root", root] if root else []), env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"the {policy} child{f' of {root}' if root else ''} failed:\n{p.stderr[-3000:]}")
            rows = json.loads(p.stdout.strip().splitlines()[-1])
            for row in rows:
                row.update(policy=policy, round=r)
                if root:
                    row["root"] = root
                log(f"round {r} {root or policy:7s} {row['method']:12s} {row['seconds']:7.2f} s  faults "
                    f"{row['faults']:>9,}  sys {row['sys_s']:5.2f} s")
            out["runs"] += rows
            log(f"  (child {time.perf_counter() - t:.0f} s)")
    out["load_after"] = os.getloadavg()[0]
    return out


def _roots_table(result: dict) -> str:
    """Markdown for a ``--roots`` run: each method's median and range per checkout, the first
    checkout's time over each other's (median and range of the rounds' ratios), and the demo
    recipe's lead under each."""
    runs, methods, roots = result["runs"], result["methods"], result["roots"]

    def secs(m, root):
        return [x["seconds"] for x in sorted(runs, key=lambda x: x["round"]) if x["method"] == m and x["root"] == root]

    head = "| method | " + " | ".join(f"`{r}`: test %, train s (range)" for r in roots) + " | " + \
        " | ".join(f"`{roots[0]}` / `{r}`" for r in roots[1:]) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(roots) - 1)]
    for m in methods:
        cells = []
        for root in roots:
            acc = sorted({round(100 * x["test_acc"], 2) for x in runs if x["method"] == m and x["root"] == root})
            t = secs(m, root)
            cells.append(f"{' / '.join(f'{a:.1f}' for a in acc)}, {statistics.median(t):.2f} "
                         f"({min(t):.2f}-{max(t):.2f})")
        for root in roots[1:]:
            q = [a / b for a, b in zip(secs(m, roots[0]), secs(m, root))]
            cells.append(f"{statistics.median(q):.2f}x ({min(q):.2f}-{max(q):.2f}x)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    demo = "deepzero"
    if demo in methods and len(methods) > 1:
        lines += ["", "| other method | " + " | ".join(f"its time / the demo recipe's, `{r}`" for r in roots) + " |",
                  "|---|" + "---|" * len(roots)]
        for m in methods:
            if m != demo:
                cells = []
                for root in roots:
                    q = [a / b for a, b in zip(secs(m, root), secs(demo, root))]
                    cells.append(f"{statistics.median(q):.1f}x ({min(q):.1f}-{max(q):.1f}x)")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{result['data']}, {result['budget']:,} queries a run, {result['rounds']} rounds, "
                                f"one child per checkout a round, zoracle's policy; medians and ranges over the rounds.")


def table(result: dict) -> str:
    """Markdown: per method, the median over rounds under each policy, and the demo recipe's lead."""
    runs, methods = result["runs"], result["methods"]
    policies = tuple(result.get("policies", POLICIES))

    def med(method, policy, key):
        return statistics.median(x[key] for x in runs if x["method"] == method and x["policy"] == policy)

    if result.get("roots"):
        return _roots_table(result)
    if policies != POLICIES:
        return _one_policy_table(result, policies[0], med)

    lines = ["| method | test % | train s, glibc default | train s, zoracle's | speed-up | faults, default | "
             "faults, zoracle's | system s, default | system s, zoracle's |", "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        acc = {round(100 * x["test_acc"], 2) for x in runs if x["method"] == m}
        lines.append(f"| {m} | {' / '.join(f'{a:.1f}' for a in sorted(acc))} | {med(m, 'system', 'seconds'):.2f} | "
                     f"{med(m, 'zoracle', 'seconds'):.2f} | {med(m, 'system', 'seconds') / med(m, 'zoracle', 'seconds'):.2f}x | "
                     f"{med(m, 'system', 'faults'):,.0f} | {med(m, 'zoracle', 'faults'):,.0f} | "
                     f"{med(m, 'system', 'sys_s'):.2f} | {med(m, 'zoracle', 'sys_s'):.2f} |")
    demo = "deepzero"
    if demo in methods and len(methods) > 1:
        lines += ["", "| other method | its time / the demo recipe's, glibc default | the same, zoracle's policy |",
                  "|---|---|---|"]
        for m in methods:
            if m != demo:
                lead = [med(m, p, "seconds") / med(demo, p, "seconds") for p in POLICIES]
                lines.append(f"| {m} | {lead[0]:.1f}x | {lead[1]:.1f}x |")
    reuse = {p: {x["reuse"] for x in runs if x["policy"] == p} for p in POLICIES}
    size = f", d = {runs[0]['d']:,}" if result.get("width", WIDTHS[result["data"]]) != WIDTHS[result["data"]] else ""
    return "\n".join(lines) + (f"\n\n{result['data']}{size}, {result['budget']:,} queries a run, {result['rounds']} rounds "
                                f"(medians); the policy was in force: default {sorted(reuse['system'])}, "
                                f"zoracle's {sorted(reuse['zoracle'])}.")


def _one_policy_table(result: dict, policy: str, med) -> str:
    """Markdown for a run under one policy: each method's median and range over rounds, and the
    other methods' time over the demo recipe's, median and range of the rounds' ratios."""
    runs, methods = result["runs"], result["methods"]
    name = {"zoracle": "zoracle's policy", "system": "glibc's default"}[policy]

    def secs(m):
        return [x["seconds"] for x in runs if x["method"] == m and x["policy"] == policy]

    lines = ["| method | test % | train s, median | range | faults | system s |", "|---|---|---|---|---|---|"]
    for m in methods:
        acc = {round(100 * x["test_acc"], 2) for x in runs if x["method"] == m}
        lines.append(f"| {m} | {' / '.join(f'{a:.1f}' for a in sorted(acc))} | {med(m, policy, 'seconds'):.2f} | "
                     f"{min(secs(m)):.2f}-{max(secs(m)):.2f} | {med(m, policy, 'faults'):,.0f} | "
                     f"{med(m, policy, 'sys_s'):.2f} |")
    demo = "deepzero"
    if demo in methods and len(methods) > 1:
        lines += ["", "| other method | its time / the demo recipe's, median of the rounds | range |", "|---|---|---|"]
        for m in methods:
            if m != demo:
                ratios = [a / b for a, b in zip(secs(m), secs(demo))]
                lines.append(f"| {m} | {statistics.median(ratios):.1f}x | {min(ratios):.1f}-{max(ratios):.1f}x |")
    reuse = sorted({x["reuse"] for x in runs})
    size = f", d = {runs[0]['d']:,}" if result.get("width", WIDTHS[result["data"]]) != WIDTHS[result["data"]] else ""
    return "\n".join(lines) + (f"\n\n{result['data']}{size}, {result['budget']:,} queries a run, {result['rounds']} "
                                f"rounds, {name} alone (in force: {reuse}); each round's ratios are of the same "
                                "child process's runs.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=tuple(WIDTHS), default="digits")
    p.add_argument("--methods", default="deepzero,zoracle-es,snes",
                   help="comma-separated methods of benchmarks/peers.py (default: the demo recipe and its two "
                   "closest peers at this size)")
    p.add_argument("--budget", type=int, default=150_000, help="queries a run (default 150,000, the issue's)")
    p.add_argument("--width", type=int, default=None, help="the study's model width (default: its smallest size, "
                   "d of about 2k: 0 on digits, 16 on MNIST-1D; 160 and 128 give d of about 12-13k)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each policy once a round (default 3)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of system, zoracle (default "
                   "both, alternating; one: that policy alone)")
    p.add_argument("--out", default=None, metavar="JSON", help="also save the result here")
    p.add_argument("--report", default=None, metavar="JSON", help="only print the table of a saved result")
    p.add_argument("--roots", default=None, help="comma-separated zoracle checkouts ('.' is this one): each round "
                   "one child per checkout, under zoracle's policy, side by side")
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)  # a child's checkout
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.out is not None and not a.child:  # before the rounds, not after them
        from zoracle.cli import _writable

        why = _writable(a.out, "file")
        if why:
            p.error(f"--out {a.out}: cannot write there ({why})")
    if a.report:
        if not os.path.isfile(a.report):
            p.error(f"--report: no such results file: {a.report}")
        with open(a.report) as f:
            print(table(json.load(f)))
        return 0
    methods = [m for m in a.methods.split(",") if m]
    if a.child:
        print(json.dumps(child(a.data, methods, a.budget, a.width, a.root)))
        return 0
    sys.path.insert(0, HERE)
    import peers

    unknown = [m for m in methods if m not in peers.RUNNERS]
    if unknown or not methods:
        p.error(f"--methods must name methods of benchmarks/peers.py ({', '.join(peers.RUNNERS)}), got {a.methods!r}")
    if a.rounds < 1 or a.budget < 1:
        p.error("--rounds and --budget must be at least 1")
    if a.width is not None and a.width < 0:
        p.error(f"--width must be 0 or more, got {a.width}")
    policies = tuple(x for x in a.policies.split(",") if x)
    if not policies or any(x not in POLICIES for x in policies) or len(set(policies)) != len(policies):
        p.error(f"--policies must name system and/or zoracle once each, got {a.policies!r}")
    policies = tuple(x for x in POLICIES if x in policies)
    roots = None
    if a.roots is not None:
        roots = tuple(os.path.abspath(os.path.join(HERE, "..")) if r == "." else os.path.abspath(r)
                      for r in a.roots.split(",") if r)
        if len(roots) < 2 or len(set(roots)) != len(roots):
            p.error(f"--roots must name two or more different checkouts, got {a.roots!r}")
        missing = [r for r in roots if not os.path.isfile(os.path.join(r, "zoracle", "__init__.py"))]
        if missing:
            p.error(f"--roots: {missing[0]!r} is not a zoracle checkout (no zoracle/__init__.py)")
        policies = ("zoracle",)
    result = run(a.data, methods, a.budget, a.rounds, log=lambda m: print(m, file=sys.stderr, flush=True),
                 width=a.width, policies=policies, roots=roots)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
