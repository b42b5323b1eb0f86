"""A hollow node: an `Engine` that starts no container, for scale benchmarks only.

Like Kubernetes' kubemark "hollow nodes", a hollow executor is the real executor (the
same handlers, loops, queue, heartbeats and facts) over an engine that keeps its
containers in memory: ``create_and_start`` returns a running container at once,
``stop_and_remove`` removes it, and `HollowEngine.kill` plays a container's death
through the event stream as Docker would. It proves nothing about containers; it lets
one machine play a cluster of many nodes so the scheduler, monitor, api, bus and
database can be measured at scale.

Selected with ``ZOE_ENGINE=hollow`` (one node, ``python -m services.executor``), never
by default. A thousand Python processes do not fit on a small machine, so
``python -m services.executor.hollow --nodes 1000`` runs a thousand hollow executors in
ONE process, sharing a few AMQP connections (services/executor/hollow_cluster.py: on
each, one command queue for its nodes, and one confirming publisher channel), and
sending their heartbeats together.

Two hooks for soak runs, both off by default: ``--journal FILE`` appends every start,
exit and removal to FILE and replays it when the process starts, so a hollow process
killed and started again finds its containers as they were (as Docker keeps its
containers when an executor dies), and a benchmark can count how often each container
name was started; ``--play-commands`` makes a container whose command is ``sleep N``
(or ``sleep N; exit C``) exit by itself after N seconds with code 0 (or C), as an
ephemeral ZApp's monitor service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from services.executor.engine import (
    Container,
    ContainerEvent,
    ContainerExists,
    ContainerSpec,
    EngineError,
    LogChunk,
    Removed,
    Stats,
)

log = structlog.get_logger("executor.hollow")

# Images a hollow node says it has (the base images of the ZApps in zapps/).
HOLLOW_IMAGES = ("zoe/busybox:1", "zoe/hello:1", "zoe/debian:12")
_EVENT_HISTORY = 1000  # events kept for a stream that starts in the past (``since``)
_ports = itertools.count(20000)
# What ``--play-commands`` plays: ``sleep N`` or ``sleep N; exit C``.
_PLAYED = re.compile(r"^\s*sleep\s+(\d+(?:\.\d+)?)\s*(?:;\s*exit\s+(\d+)\s*)?$")


def played_exit(command: str | None) -> tuple[float, int] | None:
    """(seconds, exit code) of a command ``--play-commands`` plays; None otherwise."""
    match = _PLAYED.match(command or "")
    if match is None:
        return None
    return float(match.group(1)), int(match.group(2) or 0)


@dataclass
class _Hollow:
    """One fake container."""

    id: str
    name: str
    labels: dict[str, str]
    state: str  # running | exited
    host_ports: dict[str, int]
    memory: int
    started: float
    log: list[str] = field(default_factory=list)
    exit_code: int | None = None
    oom_killed: bool = False
    exit_at: float | None = None  # wall-clock time a played command exits
    exit_with: int = 0

    def view(self) -> Container:
        return Container(
            id=self.id,
            name=self.name,
            state=self.state,
            labels=dict(self.labels),
            exit_code=self.exit_code if self.state != "running" else None,
            oom_killed=self.oom_killed,
            host_ports=dict(self.host_ports),
        )


class HollowJournal:
    """What the hollow engines of one process started, exited and removed: one JSON
    object a line, appended (line-buffered: a SIGKILL loses nothing already written).

    ``replay`` reads it back: each node's containers as they were when the process
    died. A benchmark reads the same file to count starts per container name.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", buffering=1)

    def write(self, op: str, node: str, **fields: Any) -> None:
        """Append one record (``op``: boot, start, exit or remove)."""
        record = {"op": op, "node": node, "t": time.time(), **fields}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def replay(path: Path) -> dict[str, list[dict[str, Any]]]:
        """The containers each node had (their start records, with ``exited`` set from
        a later exit record), in start order."""
        nodes: dict[str, dict[str, dict[str, Any]]] = {}
        if not path.exists():
            return {}
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if rec.get("op") not in ("start", "exit", "remove"):
                continue
            containers = nodes.setdefault(rec["node"], {})
            if rec["op"] == "start":
                containers[rec["name"]] = rec
            elif rec["op"] == "exit" and rec["name"] in containers:
                containers[rec["name"]]["exited"] = [rec["code"], rec.get("oom", False)]
            elif rec["op"] == "remove":
                containers.pop(rec["name"], None)
        return {node: list(c.values()) for node, c in nodes.items()}


class HollowEngine:
    """`Engine` that keeps fake containers in memory (one node's worth).

    ``journal``: where starts, exits and removals are recorded (see `HollowJournal`);
    ``play_commands``: containers whose command is ``sleep N`` exit after N seconds.
    """

    def __init__(
        self,
        *,
        node: str,
        images: tuple[str, ...] = HOLLOW_IMAGES,
        journal: HollowJournal | None = None,
        play_commands: bool = False,
    ) -> None:
        self._node = node
        self._images = images
        self._containers: dict[str, _Hollow] = {}  # by name
        self._history: deque[ContainerEvent] = deque(maxlen=_EVENT_HISTORY)
        self._subscribers: set[asyncio.Queue[ContainerEvent]] = set()
        self._journal = journal
        self._play = play_commands
        self._timers: dict[str, asyncio.TimerHandle] = {}  # played exits, by name

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Take back the containers of a journal replay (a killed process's), without
        events: the executor's reconcile reports them as they are. A played exit that
        fell while the process was down has happened."""
        now = time.time()
        for rec in records:
            c = _Hollow(
                id=rec["id"],
                name=rec["name"],
                labels=dict(rec["labels"]),
                state="running",
                host_ports=dict(rec["ports"]),
                memory=rec["memory"],
                started=time.monotonic(),
                exit_at=rec.get("exit_at"),
                exit_with=rec.get("exit_with", 0),
            )
            if rec.get("exited") is not None:
                code, oom = rec["exited"]
                c.state, c.exit_code, c.oom_killed = "exited", code, bool(oom)
            elif c.exit_at is not None and c.exit_at <= now:
                c.state, c.exit_code = "exited", c.exit_with
                self._record("exit", c)
            c.log.append(f"hollow: {c.name} restored on {self._node}\n")
            self._containers[c.name] = c
            self._arm(c)

    # ---- what a benchmark or a test plays -------------------------------------------------

    def kill(
        self,
        name: str,
        *,
        exit_code: int = 137,
        oom_killed: bool = False,
        oom_told_after: float | None = None,
        by_engine: bool = False,
    ) -> None:
        """The container dies by itself (a crash, an OOM kill): a ``die`` event follows.

        ``oom_told_after``: an OOM kill the engine hears of only this many seconds after
        the death, as Docker may (the container is marked OOM-killed then, and an ``oom``
        event comes). ``by_engine``: the engine killed it with SIGKILL (``docker kill``):
        a ``kill`` event comes first."""
        c = self._get(name)
        if c.state != "running":
            return
        self._disarm(name)  # a played exit still to come: it died before
        if by_engine:
            self._emit("kill", c, signal="9")
        c.state, c.exit_code, c.oom_killed = "exited", exit_code, oom_killed
        c.log.append(f"hollow: {name} died with exit code {exit_code}\n")
        self._record("exit", c)
        self._emit("die", c)
        if oom_told_after is not None:
            loop = asyncio.get_running_loop()
            self._timers[name] = loop.call_later(oom_told_after, self._late_oom, c)

    def remove_behind_back(self, name: str) -> None:
        """Someone else removes the container: a ``destroy`` event follows."""
        c = self._get(name)
        del self._containers[name]
        self._disarm(name)
        self._record("remove", c)
        self._emit("destroy", c)

    def print(self, name: str, text: str) -> None:
        """The container prints ``text`` (for log tests)."""
        self._get(name).log.append(text)

    @property
    def running(self) -> list[str]:
        """Names of the fake containers that run."""
        return [c.name for c in self._containers.values() if c.state == "running"]

    # ---- Engine ---------------------------------------------------------------------------

    async def image_tags(self, prefix: str) -> list[str]:
        """The images a hollow node claims."""
        return [tag for tag in self._images if tag.startswith(prefix)]

    async def inspect(self, name_or_id: str) -> Container | None:
        """The fake container, by name or id."""
        c = self._find(name_or_id)
        return c.view() if c is not None else None

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """A running fake container at once; a name in use is refused, as Docker does."""
        if spec.name in self._containers:
            raise ContainerExists(f'Conflict. The container name "/{spec.name}" is already in use')
        c = _Hollow(
            id=uuid.uuid4().hex + uuid.uuid4().hex,
            name=spec.name,
            labels=dict(spec.labels),
            state="running",
            host_ports={p.key: next(_ports) for p in spec.ports},
            memory=spec.memory,
            started=time.monotonic(),
        )
        played = played_exit(spec.command) if self._play else None
        if played is not None:
            c.exit_at, c.exit_with = time.time() + played[0], played[1]
        c.log.append(f"hollow: {spec.name} started on {self._node}\n")
        self._containers[spec.name] = c
        self._record("start", c)
        self._arm(c)
        return c.view()

    async def start(self, name: str) -> Container:
        """Hollow containers are never left created: they already run, or ended."""
        c = self._get(name)
        return c.view()

    async def stop_and_remove(self, name: str, *, timeout: float, log_bytes: int) -> Removed | None:
        """Remove the fake container; a running one ends with 0, as after a clean SIGTERM."""
        c = self._containers.pop(name, None)
        if c is None:
            return None
        self._disarm(name)
        if c.state == "running":
            c.state, c.exit_code = "exited", 0
            self._emit("die", c)
        self._record("remove", c)
        self._emit("destroy", c)
        text = "".join(c.log).encode()[-log_bytes:].decode(errors="ignore")
        return Removed(c.id, c.exit_code, c.oom_killed, text)

    async def logs(self, name: str, *, tail: int | None, max_bytes: int) -> str | None:
        """What the fake container printed."""
        c = self._containers.get(name)
        if c is None:
            return None
        lines = c.log[-tail:] if tail else ([] if tail == 0 else c.log)
        return "".join(lines).encode()[-max_bytes:].decode(errors="ignore")

    async def follow_logs(
        self, name: str, *, cursor: str, tail: int | None, max_bytes: int
    ) -> LogChunk | None:
        """The entries after ``cursor`` (here: how many entries were returned so far)."""
        c = self._containers.get(name)
        if c is None:
            return None
        start = int(cursor) if cursor else max(0, len(c.log) - (tail or len(c.log)))
        end = len(c.log)
        return LogChunk("".join(c.log[start:end]), str(end), c.state == "running")

    async def stats(self, name_or_id: str) -> Stats | None:
        """Made-up counters: 1 % of a core since the start, a quarter of the limit used."""
        c = self._find(name_or_id)
        if c is None:
            return None
        elapsed_ns = int((time.monotonic() - c.started) * 1e9)
        return Stats(
            cpu_ns=elapsed_ns // 100,
            system_ns=elapsed_ns,
            online_cpus=1,
            memory_bytes=c.memory // 4 if c.memory else 1 << 20,
        )

    async def list_managed(self) -> list[Container]:
        """Every fake container of this node."""
        return [c.view() for c in self._containers.values()]

    async def events(self, *, since: float) -> AsyncGenerator[ContainerEvent, None]:
        """Deaths and removals, replayed from ``since`` out of a short history."""
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()
        for past in self._history:
            if past.time >= since:
                queue.put_nowait(past)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Hollow nodes have no networks."""
        return True

    def spare_networks(self) -> contextlib.nullcontext[None]:
        """Hollow nodes have no networks: nothing to keep."""
        return contextlib.nullcontext()

    async def adopt_networks(self) -> None:
        """Hollow nodes have no networks."""

    # ---- internals ------------------------------------------------------------------------

    def _record(self, op: str, c: _Hollow) -> None:
        if self._journal is None:
            return
        if op == "start":
            self._journal.write(
                op,
                self._node,
                name=c.name,
                id=c.id,
                labels=c.labels,
                ports=c.host_ports,
                memory=c.memory,
                exit_at=c.exit_at,
                exit_with=c.exit_with,
            )
        elif op == "exit":
            self._journal.write(
                op, self._node, name=c.name, id=c.id, code=c.exit_code, oom=c.oom_killed
            )
        else:
            self._journal.write(op, self._node, name=c.name, id=c.id)

    def _arm(self, c: _Hollow) -> None:
        """Schedule a played command's exit."""
        if c.exit_at is None or c.state != "running":
            return
        delay = max(0.0, c.exit_at - time.time())
        loop = asyncio.get_running_loop()
        self._timers[c.name] = loop.call_later(delay, self._played_exit, c.name, c.id)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _late_oom(self, c: _Hollow) -> None:
        self._timers.pop(c.name, None)
        c.oom_killed = True
        self._emit("oom", c)

    def _played_exit(self, name: str, container_id: str) -> None:
        self._timers.pop(name, None)
        c = self._containers.get(name)
        if c is not None and c.id == container_id and c.state == "running":
            self.kill(name, exit_code=c.exit_with)

    def _find(self, name_or_id: str) -> _Hollow | None:
        c = self._containers.get(name_or_id)
        if c is not None:
            return c
        return next((c for c in self._containers.values() if c.id == name_or_id), None)

    def _get(self, name: str) -> _Hollow:
        c = self._find(name)
        if c is None:
            raise EngineError(f"No such container: {name}")
        return c

    def _emit(self, action: str, c: _Hollow, *, signal: str | None = None) -> None:
        event = ContainerEvent(
            action=action,
            container_id=c.id,
            name=c.name,
            labels=dict(c.labels),
            time=time.time(),
            exit_code=c.exit_code,
            signal=signal,
        )
        self._history.append(event)
        for queue in self._subscribers:
            queue.put_nowait(event)


if __name__ == "__main__":  # python -m services.executor.hollow --nodes N
    from services.executor.hollow_cluster import main

    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
