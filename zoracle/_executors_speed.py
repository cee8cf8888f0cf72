"""How fast each worker is against the others, learnt from the shards it ran (private).

:func:`~zoracle._executors_core.schedule` hands shards to idle workers; a worker much slower than
the rest (another job on its core, a slower node) would make every step wait for the one shard it
took. :class:`WorkerSpeeds` keeps each worker's seconds per unit of estimated cost, relative to
its run's fastest worker's, so that the next run lets a slow worker take a shard only where it should
finish it before the others would finish everything left (:meth:`WorkerSpeeds.largest`).
Which worker runs a shard never changes its result (results go back in shard order).
"""

from __future__ import annotations

import math

#: a worker is held back only when it is this many times slower than its run's fastest
#: (the cost of a shard is an estimate: a worker that drew the costlier shards is not "slow")
SLOW_FACTOR = 1.5
#: a worker that ran nothing in a run (held back) comes this much closer to the fastest per
#: run, so that it gets a shard again now and then and is measured anew (its other job ended)
RECOVER = 0.9
#: one worker's shards of one kind this many times apart in seconds per estimated cost: the
#: oracle's cost varies by point (a simulator slower for some parameters), not the workers' speed
SPREAD = 3.0
#: runs within which a second run whose times spread shows the oracle's cost varies by point
RECUR = 10


class WorkerSpeeds:
    """Each worker's slowness (seconds per unit of cost over its run's fastest worker's; 1.0 = fastest),
    by worker name, learnt over runs (an exponential average)."""

    def __init__(self):
        self._slow: dict = {}  # worker name -> slowness
        self.varies, self.runs = False, 0  # varies: the oracle's cost was seen to vary by point (learn)
        self.spread = None  # the last run whose shards' times spread (SPREAD), counted as ``runs``

    def slowness(self, name) -> float:
        return self._slow.get(name, 1.0)

    def largest(self, w, others, remaining: float, name) -> float:
        """The costliest shard worker ``w`` should take: any (``inf``) unless it is slow and slower
        than every one of ``others`` (the other live workers), else one it finishes no later than
        they would finish all the ``remaining`` cost (waiting and in flight, counted whole)."""
        mine = self.slowness(name(w))
        theirs = [self.slowness(name(x)) for x in others]
        if mine < SLOW_FACTOR or not theirs or mine <= min(theirs):
            return math.inf
        return remaining / sum(1.0 / s for s in theirs) / mine

    @staticmethod
    def note(done: dict, name, kind, seconds: float, cost: float) -> None:
        """Add a shard of task kind ``kind`` that worker ``name`` ran to ``done`` (one run's record:
        name -> [seconds, cost, {kind: (lowest, highest) seconds per cost}])."""
        mine = done.setdefault(name, [0.0, 0.0, {}])
        mine[0], mine[1] = mine[0] + seconds, mine[1] + cost
        if seconds > 0 and cost > 0:
            rate = seconds / cost
            lo, hi = mine[2].get(kind, (rate, rate))
            mine[2][kind] = (min(lo, rate), max(hi, rate))

    def learn(self, done: dict, live) -> None:
        """Learn from one run: ``done`` as :meth:`note` filled it; ``live``: the names of the run's
        workers. Where one worker's shards of one kind took seconds per cost this far apart
        (:data:`SPREAD`), the oracle's cost varies by point: a worker that drew the costly shards
        would seem slow: the speeds are forgotten, and where another run within :data:`RECUR` spreads too,
        no worker is held back any more (by this executor). One run's spread is no proof: a shard the
        OS kept waiting (another job on the core, a straggler's very cause) or a new oracle's first call
        (its warm-up) spread a run, which turned the holding back off for good."""
        self.runs += 1  # (a first run's first calls may be slow everywhere: imports, warm-up)
        if self.runs > 1 and any(hi > SPREAD * lo for _, _, kinds in done.values() for lo, hi in kinds.values()):
            self.varies = self.varies or (self.spread is not None and self.runs - self.spread <= RECUR)
            self.spread = self.runs
        if self.varies or self.spread == self.runs:
            self._slow.clear()
            return
        for name in [k for k in self._slow if k not in live]:  # a replaced worker's name goes with it
            del self._slow[name]
        for name in live:
            if name not in done and name in self._slow:
                self._slow[name] = 1.0 + (self._slow[name] - 1.0) * RECOVER
        rates = {name: s / c for name, (s, c, _) in done.items() if s > 0 and c > 0}
        if len(rates) < 2:
            return  # one worker ran everything: nothing to compare it with
        fastest = min(rates.values())
        for name, rate in rates.items():
            old = self._slow.get(name)
            self._slow[name] = rate / fastest if old is None else 0.5 * (old + rate / fastest)
