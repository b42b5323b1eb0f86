"""Whether this node takes a start: its own check of a command against its capacity.

The scheduler places an instance where its reservation fits, but the executor does not
take that on trust: a start whose limits exceed the node's capacity, or whose
reservation does not fit beside what the containers it runs reserved already, is refused
with the reason, before anything is made. The ledger is kept from what this executor
starts and stops, from the engine's events, and rebuilt from the containers' labels at a
reconcile (a reservation is written on its container, so a restarted executor finds it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from common import messages as m
from common.errors import ZoeError
from services.executor.engine import Container

LABEL_CORES = "zoe.reserved.nano_cpus"
LABEL_MEMORY = "zoe.reserved.memory"
NANO = 1_000_000_000


class StartRefused(ZoeError):
    """This node does not take a start (over its capacity); the message says why."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What one container reserved on the node: CPU in billionths of a core, bytes."""

    nano_cpus: int = 0
    memory: int = 0

    def labels(self) -> dict[str, str]:
        """The labels that keep the claim on its container."""
        return {LABEL_CORES: str(self.nano_cpus), LABEL_MEMORY: str(self.memory)}

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Claim:
        """The claim written on a container (none: a container made before claims)."""
        try:
            return cls(int(labels.get(LABEL_CORES, 0)), int(labels.get(LABEL_MEMORY, 0)))
        except ValueError:
            return cls()


def _cores(nano: int) -> str:
    return f"{nano / NANO:g}"


def claim_of(msg: m.StartInstance, cores: float, memory: int) -> Claim:
    """The claim of a start on a node of ``cores`` and ``memory``; raises `StartRefused`
    when its limits exceed the node's capacity (no container there could have them)."""
    capacity = round(cores * NANO)
    limit = round(msg.cores_limit * NANO)
    if limit > capacity:
        raise StartRefused(
            f"cores_limit {msg.cores_limit:g} is over this node's capacity of {cores:g} cores"
        )
    if msg.memory_limit > memory:
        raise StartRefused(
            f"memory_limit {msg.memory_limit} is over this node's capacity of {memory} bytes"
        )
    reserved_cores = msg.cores_reserved if msg.cores_reserved is not None else 0.0
    reserved_memory = msg.memory_reserved if msg.memory_reserved is not None else 0
    # a reservation is at most the limit (a smaller limit would be what the node gives)
    return Claim(min(round(reserved_cores * NANO), limit), min(reserved_memory, msg.memory_limit))


@dataclass
class Ledger:
    """What the containers this node runs (or is starting) reserved, by container name."""

    cores: float
    memory: int
    held: dict[str, Claim] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # admitted, not started yet

    def admit(self, name: str, claim: Claim) -> None:
        """Hold ``claim`` for ``name`` if it fits beside the others; else `StartRefused`.
        Synchronous (no await): two starts cannot both take the last room. A name held
        already (a redelivered start) is not counted twice."""
        others = [c for n, c in self.held.items() if n != name]
        used_cpu = sum(c.nano_cpus for c in others)
        used_memory = sum(c.memory for c in others)
        capacity = round(self.cores * NANO)
        if used_cpu + claim.nano_cpus > capacity:
            raise StartRefused(
                f"over this node's cores: {_cores(claim.nano_cpus)} asked,"
                f" {_cores(used_cpu)} of {self.cores:g} reserved by {len(others)} containers"
            )
        if used_memory + claim.memory > self.memory:
            raise StartRefused(
                f"over this node's memory: {claim.memory} bytes asked, {used_memory} of"
                f" {self.memory} reserved by {len(others)} containers"
            )
        self.held[name] = claim
        self.pending.add(name)

    def settle(self, name: str, *, running: bool) -> None:
        """A start is over: its claim stays while its container runs."""
        self.pending.discard(name)
        if not running:
            self.held.pop(name, None)

    def release(self, name: str) -> None:
        """The container ended or is gone: its reservation is free again."""
        self.pending.discard(name)
        self.held.pop(name, None)

    def sync(self, containers: Iterable[Container]) -> None:
        """Rebuild from the engine's listing: the running containers' labels, plus the
        starts in flight (not listed yet)."""
        fresh = {c.name: Claim.of(c.labels) for c in containers if c.running}
        fresh.update({n: self.held[n] for n in self.pending if n in self.held})
        self.held = fresh
