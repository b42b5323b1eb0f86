"""The scheduler's garbage collection (services/scheduler/collector.py): no automatic
full collection, and the pass loop's own when one is due."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from services.scheduler.collector import FullCollections
from services.scheduler.view import label_set

# In a process of its own: `install` changes the whole process's collector.
_PROGRAM = textwrap.dedent(
    """
    import gc, json, weakref
    from services.scheduler import collector

    if INSTALL:
        collector.install()
    runs = []
    gc.callbacks.append(lambda phase, info: phase == "stop" and runs.append(info["generation"]))

    class Node:
        pass

    kept, held, probes = [], [], []
    for n in range(200_000):  # long-lived objects (a view), and cycles that live a while
        kept.append(Node())
        a, b = Node(), Node()
        a.other, b.other = b, a
        held.append(a)
        if n % 1000 == 0:
            probes.append(weakref.ref(a))
    del held, a, b  # the cycles, old by now, die
    for n in range(200_000):  # and the process goes on
        kept.append(Node())
    before = sum(p() is not None for p in probes)
    full = collector.FullCollections(idle=0.0)
    spent = full.after_pass(busy=False)
    print(json.dumps({
        "young": sum(g < 2 for g in runs[:-1]),
        "full_before": sum(g == 2 for g in runs[:-1]),
        "last": runs[-1],
        "cycles_alive_before": before,
        "cycles_alive_after": sum(p() is not None for p in probes),
        "spent": spent,
    }))
    """
)


def _run(install: bool) -> dict[str, int]:
    program = f"INSTALL = {install}\n{_PROGRAM}"
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def test_full_collections_wait_for_the_pass_loop() -> None:
    assert _run(install=False)["full_before"] > 0  # CPython left to itself runs some
    figures = _run(install=True)
    assert figures["young"] > 0  # the young generations still run on their own
    assert figures["full_before"] == 0
    # cycles that outlived the young collections wait for the full one, which frees them
    assert figures["cycles_alive_before"] > 0
    assert figures["last"] == 2 and figures["cycles_alive_after"] == 0
    assert figures["spent"] > 0


def test_a_full_collection_is_due_when_idle_or_after_the_longest_wait() -> None:
    now = [100.0]
    full = FullCollections(idle=10.0, longest=120.0, clock=lambda: now[0])
    assert not full.due(busy=False)  # just made: the last one counts from now
    now[0] += 9.9
    assert not full.due(busy=False)
    now[0] += 0.1
    assert full.due(busy=False)
    assert not full.due(busy=True)  # another pass waits: not yet
    now[0] += 110.0
    assert full.due(busy=True)  # however busy, not longer than `longest`
    assert full.after_pass(busy=True) is not None
    assert not full.due(busy=False)  # counts from the one just run
    assert full.after_pass(busy=False) is None


def test_alike_labels_are_one_object() -> None:
    a = label_set(["gpu", "ssd"])
    assert a == frozenset({"gpu", "ssd"})
    assert label_set(["gpu", "ssd"]) is a
    assert label_set([]) is label_set([])
    assert label_set(["ssd"]) != a
