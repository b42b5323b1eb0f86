"""Python's garbage collector in the scheduler: full collections between passes.

The scheduler keeps its whole view of the cluster in memory (services/scheduler/view.py),
some 100,000 objects the collector tracks on 1,000 nodes and ten times more on 10,000.
A full collection visits every one of them (tens of milliseconds of CPU on 1,000 nodes,
hundreds on 10,000). Left to itself, CPython runs one whenever the objects that outlived
its young generations have grown by a quarter since the last: now and then inside a
pass, whose p99 it then makes.

So `install` freezes what the process made to start and turns the automatic full
collections off (the young generations are collected as usual: they visit only the
objects made since), and the pass loop calls `after_pass`, which runs a full collection
itself: after a pass with no other pass asked for, once `IDLE` seconds have gone since
the last one, and after `LONGEST` seconds whatever the load. The view's values are immutable and hold no cycles, so
what waits for a full collection is little (cyclic garbage of the bus and the
database's drivers), and it waits at most `LONGEST` seconds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from common import metrics

IDLE = 10.0  # seconds between full collections when the scheduler has a moment
LONGEST = 120.0  # seconds a full collection waits at most, however busy the scheduler
_NEVER = 1 << 30  # a threshold the count of young collections never reaches


def install() -> None:
    """Leave full collections to `after_pass`, and put what the process made to start
    (its modules, settings) out of the collector's reach: call it once, at start."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)


class FullCollections:
    """When the pass loop runs a full collection (see the module's docstring)."""

    def __init__(
        self,
        idle: float = IDLE,
        longest: float = LONGEST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.longest = longest
        self._clock = clock
        self._last = clock()

    def due(self, busy: bool) -> bool:
        """Whether a full collection is due now: ``busy`` when another pass is asked for."""
        since = self._clock() - self._last
        return since >= self.longest or (not busy and since >= self.idle)

    def after_pass(self, busy: bool) -> float | None:
        """Run a full collection if one is due; the CPU seconds it took, or None."""
        if not self.due(busy):
            return None
        began = time.process_time()
        with metrics.FULL_COLLECTION.time():
            gc.collect()
        self._last = self._clock()
        return time.process_time() - began
