"""Train through a black box you cannot call: an instrument program, driven with ``zo.AskTell``.

The loss comes from an external program (a stand-in for a lab device's driver: started once per
batch of points, it reads them as JSON lines on stdin and writes their measured losses, with a
little noise, in the order its channels finish). Nothing here can call it, so the loop turns
around: ``ask()`` a step's points, send them to the instrument, ``tell()`` their losses by row.
The instrument takes each knob from -1.5 to 2.0 and refuses any other setting: ``bounds=`` keeps
every point asked inside that range (the best setting of one knob is at its top). Each step is saved to a checkpoint: a stopped run (Ctrl-C, ``--stop-after``) goes on where it
stopped when the script runs again.

    python examples/ask_tell.py --stop-after 20   # 20 steps, then stops as the lab closes
    python examples/ask_tell.py                   # resumes at step 20 from ./ask_tell.npz, finishes

The second prints (an uninterrupted run's numbers: the noise is seeded by the step)::

    resumed from ask_tell.npz at step 20 (100 queries)
    step 30: loss 0.0009, 150 queries
    step 40: loss 0.0008, 200 queries
    final loss 0.0004 (start 8.1726) after 40 steps, 200 queries (20 steps measured by this run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

import zoracle as zo

# The instrument, a program of its own (its source, run with `python -c`): it knows the device's
# best settings, which the trainer never sees.
INSTRUMENT = r"""
import json, random, sys
best = [0.8, -1.2, 0.5, 2.0, -0.3, 1.1, -0.7, 0.4]
noise = random.Random(int(sys.argv[1]))
out = []
for line in sys.stdin:
    q = json.loads(line)
    if not all(-1.5 <= x <= 2.0 for x in q["x"]):  # each knob's range: the device refuses any other setting
        sys.exit(f"instrument: setting out of range [-1.5, 2.0], row {q['row']}: {q['x']}")
    err = sum((i + 1) / 4 * (x - b) ** 2 for i, (x, b) in enumerate(zip(q["x"], best)))
    out.append({"row": q["row"], "loss": err + noise.gauss(0.0, 1e-4)})
noise.shuffle(out)  # its channels finish in any order
print("\n".join(map(json.dumps, out)))
"""


def measure(X: np.ndarray, step: int) -> dict:
    """One run of the instrument on the rows of ``X``: ``{row: loss}``, in the order they came back."""
    lines = "".join(json.dumps({"row": j, "x": x.tolist()}) + "\n" for j, x in enumerate(X))
    run = subprocess.run([sys.executable, "-c", INSTRUMENT, str(step)], input=lines, capture_output=True,
                         text=True)
    if run.returncode:
        raise RuntimeError(run.stderr.strip())  # the instrument's own message (a setting it refused)
    return {r["row"]: r["loss"] for r in map(json.loads, run.stdout.splitlines())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python examples/ask_tell.py", description=__doc__.split("\n")[0])
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps (run again to resume)")
    args = parser.parse_args(argv)
    # Sparse CGE, not RGE: CGE moves one knob by mu a point, so the noise enters each coordinate once
    # (as noise / mu), where RGE's random directions add their own variance on top. sparsity=0.5 moves
    # a new half of the 8 knobs each step (5 points, not 9); ratios="uniform" skips ZO-GraSP, whose
    # scoring would spend 386 measurements before the first step.
    # bounds: the knobs' range in the instrument's manual, -1.5 to 2.0, which it refuses to leave (without
    # them, the momentum's overshoot of the fourth knob's best setting, 2.0 at the top of its range, asks
    # it for 2.12 at step 5). Every point asked stays inside: the params are kept in [-1.5, 2.0 - mu].
    opt = zo.AskTell(np.zeros(8), epochs=100, max_queries=200,  # the lab's budget: 40 steps of 5 points
                     estimator=zo.CGE(mu=1e-2), sparsity=0.5, ratios="uniform", mask_shuffle_interval=1,
                     optimizer=zo.sgd(0.2, momentum=0.5), bounds=(-1.5, 2.0), checkpoint="ask_tell.npz",
                     resume=True, rng=0, progress=False)  # resume: from the checkpoint, where there is one
    first = len(opt.history.steps)
    if first:
        print(f"resumed from ask_tell.npz at step {first} ({opt.history.steps[-1]['total_nfev']} queries)")
    while not opt.done:
        step = len(opt.history.steps)
        if args.stop_after is not None and step - first >= args.stop_after:
            opt.close()  # (each tell saved its step already)
            print(f"stopped after step {step}: run the script again to resume")
            return
        opt.tell(measure(opt.ask(), step))  # by row: the instrument returns them out of order
        if (step + 1) % 10 == 0:
            rec = opt.history.steps[-1]
            print(f"step {step + 1}: loss {rec['loss']:.4f}, {rec['total_nfev']} queries")
    res = opt.result
    final = measure(res.params[None], res.steps)[0]  # one more measurement, of the trained settings
    print(f"final loss {final:.4f} (start {res.history.steps[0]['loss']:.4f}) after {res.steps} steps, "
          f"{res.nfev} queries ({res.steps - first} steps measured by this run)")


if __name__ == "__main__":
    main()
