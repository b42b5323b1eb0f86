"""The executor's own check of a start against its node's capacity (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from common import messages as m
from services.executor.admission import Claim, Ledger, StartRefused, claim_of
from services.executor.engine import Container

GIB = 1 << 30


def start(**fields: Any) -> m.StartInstance:
    base: dict[str, Any] = dict(
        execution_id=1,
        instance_id=1,
        instance="main",
        container_name="c",
        network="n",
        image="zoe/busybox:1",
        cores_limit=1.0,
        memory_limit=GIB,
    )
    return m.StartInstance(**(base | fields))


def test_limits_over_the_nodes_capacity_are_refused_with_the_limit_named() -> None:
    with pytest.raises(StartRefused, match="cores_limit 3 is over this node's capacity of 2"):
        claim_of(start(cores_limit=3), 2.0, 4 * GIB)
    with pytest.raises(StartRefused, match=f"memory_limit {8 * GIB} is over"):
        claim_of(start(memory_limit=8 * GIB), 2.0, 4 * GIB)
    assert claim_of(start(cores_limit=2), 2.0, 4 * GIB) == Claim(0, 0)  # nothing reserved


def test_a_claim_is_the_reservation_never_above_the_limit() -> None:
    assert claim_of(start(cores_reserved=0.5, memory_reserved=GIB // 2), 2.0, 4 * GIB) == Claim(
        500_000_000, GIB // 2
    )
    assert claim_of(start(cores_limit=0.5, cores_reserved=1.5), 2.0, 4 * GIB).nano_cpus == (
        500_000_000
    )


def test_the_ledger_refuses_what_does_not_fit_and_counts_a_redelivery_once() -> None:
    ledger = Ledger(cores=1.0, memory=GIB)
    ledger.admit("a", Claim(750_000_000, GIB // 2))
    ledger.admit("a", Claim(750_000_000, GIB // 2))  # the same start again
    with pytest.raises(StartRefused, match=r"0\.5 asked, 0\.75 of 1 reserved by 1 containers"):
        ledger.admit("b", Claim(500_000_000, 0))
    with pytest.raises(StartRefused, match="over this node's memory"):
        ledger.admit("b", Claim(0, GIB))
    ledger.settle("a", running=True)
    ledger.release("a")
    ledger.admit("b", Claim(500_000_000, GIB))
    ledger.settle("b", running=False)  # it failed: nothing stays held
    assert ledger.held == {}


def test_the_ledger_is_rebuilt_from_the_running_containers_labels() -> None:
    ledger = Ledger(cores=2.0, memory=GIB)
    ledger.admit("starting", Claim(100, 1))  # in flight: not listed yet
    running = Container("1", "run", "running", Claim(200, 2).labels())
    ended = Container("2", "ended", "exited", Claim(300, 3).labels())
    old = Container("3", "old", "running", {})  # made before claims were written
    ledger.sync([running, ended, old])
    assert ledger.held == {"run": Claim(200, 2), "old": Claim(), "starting": Claim(100, 1)}
