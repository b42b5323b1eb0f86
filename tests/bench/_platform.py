"""What the end-to-end benchmarks share: a platform of their own, and how to read it.

A benchmark gets its own RabbitMQ vhost (or RabbitMQ node: `PrivateBroker`), PostgreSQL
database (or PostgreSQL server: `PrivatePostgres`) and deployment name (as a test
session does), so it never touches a running ``make up`` platform; all three are removed
at the end, with the containers, networks and volumes of the deployment. The services
run as separate processes, their logs under ``var/bench/logs/<run>/``; ``profile_dir``
runs each under ``py-spy record`` (raw folded stacks, one file each).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiodocker
import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import db  # noqa: E402
from tests.private_postgres import PrivatePostgres, free_port  # noqa: E402
from tests.private_rabbitmq import PrivateBroker, pids_with_env  # noqa: E402

AMQP_BASE = os.environ.get("ZOE_BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672/")
PG_BASE = os.environ.get("ZOE_BENCH_PG_BASE", "postgresql://postgres@127.0.0.1:5432/")
PY_SPY = os.environ.get("PY_SPY", shutil.which("py-spy") or "/tmp/tools/bin/py-spy")


def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout)


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if fragment in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    out.append(int(entry.name))
    return out


@dataclass
class Proc:
    """One service process (possibly under py-spy)."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )

    @property
    def pid(self) -> int:
        """The Python process's pid (py-spy's child when profiled)."""
        assert self.popen is not None
        if self.args[0] != PY_SPY:
            return self.popen.pid
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            return int(children.read_text().split()[0])
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)  # the service itself; py-spy then writes
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class BenchPlatform:
    """A vhost, a database, a deployment, and the service processes running on them."""

    label: str
    profile_dir: Path | None = None
    private_broker: bool = False
    private_postgres: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vhost = f"zoe-bench-{self.run_id}"
        self.database = f"zoe_bench_{self.run_id}"
        self.deployment = f"zb{self.run_id}"
        self.broker = PrivateBroker(f"zoebench{self.run_id}") if self.private_broker else None
        if self.broker is not None:
            self.amqp_url = self.broker.url
        else:
            self.amqp_url = AMQP_BASE.rstrip("/") + "/" + quote(self.vhost, safe="")
        self.postgres = (
            PrivatePostgres(ROOT / "var" / "bench" / f"postgres-{self.run_id}")
            if self.private_postgres
            else None
        )
        self.pg_base = self.postgres.url if self.postgres is not None else PG_BASE
        self.database_url = self.pg_base.rstrip("/") + "/" + self.database
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        self.admin_token = ""  # set by `create`
        self.log_dir = ROOT / "var" / "bench" / "logs" / f"{self.label}-{self.run_id}"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # ---- set up and tear down ------------------------------------------------------------

    async def create(self) -> None:
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.start)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.start)
        else:
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        await db.migrate(self.database_url)
        from services.api.bootstrap import ensure_user

        conn = await asyncpg.connect(self.database_url)
        try:
            self.admin_token = await ensure_user(conn, "admin", "admin")
        finally:
            await conn.close()

    @property
    def headers(self) -> dict[str, str]:
        """What each HTTP request of the benchmark sends: the admin's token."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def destroy(self) -> None:
        """Stop the services, remove what the deployment made; never raises (a failure
        here must not hide the benchmark's own error), it says what it left behind."""
        for proc in self.procs.values():
            proc.stop()
        steps: list[tuple[str, Any]] = [
            ("docker objects", lambda: remove_deployment(self.deployment)),
            ("broker", self._remove_broker),
            ("database", self._drop_database),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                print(f"bench: could not remove the {what}: {exc!r}", file=sys.stderr)

    async def _remove_broker(self) -> None:
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        else:
            await asyncio.to_thread(rabbitmqctl, "delete_vhost", self.vhost)

    async def _drop_database(self) -> None:
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.remove)  # the whole server goes
            return
        conn = await asyncpg.connect(PG_BASE.rstrip("/") + "/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    def env(self, **extra: str) -> dict[str, str]:
        out = dict(os.environ)
        out.update(
            ZOE_AMQP_URL=self.amqp_url,
            ZOE_DATABASE_URL=self.database_url,
            ZOE_DEPLOYMENT=self.deployment,
            ZOE_LOG_JSON="true",
            ZOE_HTTP_PORT=str(self.port),
            ZOE_ZAPPS_ROOT=str(ROOT / "zapps"),
            # no metrics port (the defaults would collide with a `make up` platform's
            # and between the benchmark's own executors); the api serves its own anyway
            ZOE_METRICS_PORT="0",
        )
        out.update(extra)
        return out

    def spawn(self, name: str, module_args: list[str], **env: str) -> Proc:
        """Start ``python -m <module_args>`` as service ``name``."""
        args = [sys.executable, "-m", *module_args]
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            out = self.profile_dir / f"{name}.folded"
            args = [PY_SPY, "record", "--format", "raw", "-r", "97", "-o", str(out), "--", *args]
        proc = Proc(name, args, self.env(**env), self.log_dir / f"{name}.log")
        proc.start()
        self.procs[name] = proc
        return proc

    def start_core(self, env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """api, scheduler and monitor; ``env`` adds variables per service."""
        env = env or {}
        for name in ("api", "scheduler", "monitor"):
            self.spawn(name, [f"services.{name}"], **env.get(name, {}))

    # ---- HTTP -----------------------------------------------------------------------------

    async def wait_api(self, session: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.api}/health") as r:
                    if r.status == 200:
                        return
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the api did not answer")
            await asyncio.sleep(0.2)

    async def wait_nodes(
        self, pool: asyncpg.Pool, count: int, timeout: float = 300, marks: list[int] | None = None
    ) -> float:
        """Wait until ``count`` nodes are up; returns how long it took. ``marks``, when
        given, receives how many were up at each 10 s mark."""
        started = time.monotonic()
        while (up := await pool.fetchval("SELECT count(*) FROM nodes WHERE state = 'up'")) < count:
            if marks is not None and time.monotonic() - started >= 10 * (len(marks) + 1):
                marks.append(up)
            self.check_alive()
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"fewer than {count} nodes registered")
            await asyncio.sleep(0.5)
        return time.monotonic() - started

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if not proc.alive():
                tail = proc.log_path.read_text()[-3000:] if proc.log_path.exists() else ""
                raise RuntimeError(f"{proc.name} exited:\n{tail}")

    # ---- CPU accounting ----------------------------------------------------------------------

    def cpu_snapshot(self, pg_pids: list[int]) -> dict[str, float]:
        """CPU seconds so far of each service, the broker, and this database's backends."""
        out = {name: cpu_seconds(p.pid) for name, p in self.procs.items()}
        if self.broker is not None:
            brokers = pids_with_env(f"RABBITMQ_NODENAME={self.broker.node}")
        else:
            brokers = pids_named("beam.smp")  # every node of the machine: approximate
        out["rabbitmq"] = sum(cpu_seconds(pid) for pid in brokers)
        out["postgres"] = sum(cpu_seconds(pid) for pid in pg_pids)
        out["bench-client"] = cpu_seconds(os.getpid())
        return out

    async def pg_backends(self, pool: asyncpg.Pool) -> list[int]:
        rows = await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        return [r["pid"] for r in rows]


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def remove_deployment(deployment: str) -> None:
    """Remove every container, network and volume labelled with ``deployment``."""
    label = f"zoe.deployment={deployment}"
    async with aiodocker.Docker() as docker:
        for c in await docker.containers.list(all=True, filters={"label": [label]}):
            await c.delete(force=True)
        for n in await docker.networks.list(filters={"label": [label]}):
            with contextlib.suppress(aiodocker.DockerError):
                await aiodocker.networks.DockerNetwork(docker, n["Id"]).delete()
        volumes = await docker.volumes.list(filters={"label": label})
        for v in volumes.get("Volumes") or []:
            with contextlib.suppress(aiodocker.DockerError):
                await aiodocker.volumes.DockerVolume(docker, v["Name"]).delete()


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def busybox_service(
    name: str,
    *,
    command: str,
    monitor: bool,
    essential: int,
    total: int,
    min_cores: float,
    min_memory: int,
) -> dict[str, Any]:
    """A service of ``zoe/busybox:1`` that publishes one HTTP port, for the benchmarks'
    ZApps (at most half a core and 64 MiB)."""
    return {
        "name": name,
        "image": "zoe/busybox:1",
        "monitor": monitor,
        "essential_count": essential,
        "total_count": total,
        "startup_order": 0,
        "command": command,
        "environment": [],
        "ports": [
            {
                "name": "http",
                "port_number": 8080,
                "protocol": "tcp",
                "url_template": "http://{ip_port}/",
            }
        ],
        "volumes": [],
        "resources": {
            "cores": {"min": min_cores, "max": 0.5},
            "memory": {"min": min_memory, "max": 64 << 20},
        },
    }
