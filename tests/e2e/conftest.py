"""End-to-end fixtures: the four services as separate processes on the real parts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiodocker
import asyncpg
import pytest

from common.states import EXECUTION_FINAL
from tests.conftest import (
    TestEnv,
    _rabbitmqctl,
    _remove_containers,
    dead_letters,
    migrate,
    new_user,
    wait_for,
)
from tests.e2e.cluster import cluster

ROOT = Path(__file__).resolve().parents[2]

# dead_letters: from tests.conftest, for the e2e tests that import it here; cluster: the
# test cluster fixture (deploy/testcluster.sh up 3), for every e2e test that asks for it
__all__ = ["cluster", "dead_letters"]
BASE_IMAGE = "zoe/busybox:1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One service running as its own process, its log in var/test-logs/."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log, cwd=ROOT
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


ADMIN: Any = object()  # `Platform.call`'s default: the request is the session admin's


class Platform:
    """api, scheduler, monitor and one executor of one test session, plus an HTTP client."""

    def __init__(self, env: TestEnv, node: str, log_dir: Path, **executor_env: str) -> None:
        self.env = env
        self.node = node
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/v1"
        common = {"ZOE_HTTP_PORT": str(self.port), "ZOE_ZAPPS_ROOT": str(ROOT / "zapps")}
        # each service's /metrics, /healthz and /readyz: the api's on its HTTP port
        self.probe_urls = {"api": f"http://127.0.0.1:{self.port}"}
        for name in ("scheduler", "monitor", "executor"):
            self.probe_urls[name] = f"http://127.0.0.1:{_free_port()}"

        def port(name: str) -> str:
            return self.probe_urls[name].rpartition(":")[2]

        self.services = {
            "api": ServiceProcess("api", "services.api", env.env(**common), log_dir),
            "scheduler": ServiceProcess(
                "scheduler",
                "services.scheduler",
                # a sweep a second: runtime limits are enforced within a second
                env.env(**common, ZOE_METRICS_PORT=port("scheduler"), ZOE_SWEEP_INTERVAL="1"),
                log_dir,
            ),
            "monitor": ServiceProcess(
                "monitor",
                "services.monitor",
                env.env(**common, ZOE_USAGE_STORE_INTERVAL="1", ZOE_METRICS_PORT=port("monitor")),
                log_dir,
            ),
            "executor": ServiceProcess(
                "executor",
                "services.executor",
                env.env(
                    **common,
                    ZOE_METRICS_PORT=port("executor"),
                    ZOE_NODE_NAME=node,
                    ZOE_HEARTBEAT_INTERVAL="0.5",
                    ZOE_USAGE_INTERVAL="1",
                    ZOE_STOP_TIMEOUT="2",
                    # an OOM kill Docker hears of late is waited for longer than by
                    # default: a loaded test machine may tell it more than a second late
                    ZOE_OOM_GRACE="5",
                    **executor_env,
                ),
                log_dir,
            ),
        }

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self) -> None:
        for s in self.services.values():
            s.start()

    def stop(self) -> None:
        for s in self.services.values():
            s.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Started and ready within, stopped after."""
        self.start()
        try:
            await self.wait_ready()
            yield self
        finally:
            self.stop()

    # ---- HTTP -------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        token: str | None = ADMIN,
    ) -> tuple[int, Any]:
        """One request as the session's admin, or as ``token``'s user (None: nobody)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        token = self.env.admin_token if token is ADMIN else token
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            status = exc.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    async def acall(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        token: str | None = ADMIN,
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self.call, method, path, body, headers, token=token)

    async def new_user(self, name: str, role: str = "user", password: str | None = None) -> str:
        """A user of this session's platform (created if new); returns a token of theirs."""
        return await new_user(self.env.database_url, name, role, password)

    async def submit(self, application: dict[str, Any], name: str = "test") -> dict[str, Any]:
        status, body = await self.acall(
            "POST", "/executions", {"name": name, "application": application}
        )
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def get(self, execution_id: int) -> dict[str, Any]:
        status, body = await self.acall("GET", f"/executions/{execution_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_state(
        self, execution_id: int, *states: str, timeout: float = 60
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal last
            last = await self.get(execution_id)
            return last["state"] in states

        try:
            await wait_for(
                reached, timeout=timeout, interval=0.1, what=f"execution {execution_id} in {states}"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {json.dumps(last)}") from None
        return last

    async def probe(self, name: str, path: str) -> tuple[int, str]:
        """GET ``path`` (``/metrics``, ``/healthz``, ``/readyz``) of service ``name``."""

        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(self.probe_urls[name] + path, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        return await asyncio.to_thread(get)

    async def wait_ready(self) -> None:
        async def up() -> bool:
            try:
                status, _ = await self.acall("GET", "/health")
            except (urllib.error.URLError, ConnectionError, OSError):
                return False
            return status == 200

        await wait_for(up, timeout=60, interval=0.2, what="api health")
        await self.wait_node(self.node)

    async def wait_node(self, name: str, state: str = "up") -> None:
        """Wait until the scheduler knows the node (its executor consumes its queue)."""

        async def known() -> bool:
            _, nodes = await self.acall("GET", "/nodes")
            return any(n["name"] == name and n["state"] == state for n in nodes)

        await wait_for(known, timeout=60, interval=0.2, what=f"node {name} {state}")


def service(
    name: str,
    command: str | None,
    *,
    monitor: bool = True,
    essential: int = 1,
    total: int = 1,
    cores: float = 0.2,
    memory: int = 32 * 1024 * 1024,
    order: int = 0,
    image: str = BASE_IMAGE,
) -> dict[str, Any]:
    """One service of a test ZApp on the busybox base image."""
    return {
        "name": name,
        "image": image,
        "monitor": monitor,
        "essential_count": essential,
        "total_count": total,
        "startup_order": order,
        "command": command,
        "environment": [],
        "ports": [],
        "volumes": [],
        "resources": {
            "cores": {"min": cores, "max": cores},
            "memory": {"min": memory, "max": memory},
        },
    }


def zapp(name: str, *services: dict[str, Any], will_end: bool = True) -> dict[str, Any]:
    return {"name": name, "version": 3, "will_end": will_end, "size": 1, "services": list(services)}


# A container that ends promptly on SIGTERM (sh as PID 1 ignores it without a trap).
SERVE_FOREVER = "trap 'exit 0' TERM; while :; do sleep 1; done"


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = (yield).get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


@pytest.fixture(autouse=True)
async def _leftovers_ended(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After a failed test on the session's platform, the executions it submitted that did
    not end are terminated: what a failure leaves running must not take the room (or the
    names) the next tests count on, turning one failure into many."""
    if "platform" not in request.fixturenames:
        yield
        return
    platform: Platform = request.getfixturevalue("platform")  # session-wide: set up already
    began = datetime.datetime.now(datetime.UTC)  # the database's clock is this machine's
    yield
    if not request.node.stash.get(_FAILED, False):
        return
    conn = await asyncpg.connect(platform.env.database_url)
    try:
        left = await conn.fetch(
            "SELECT id FROM executions WHERE submitted_at >= $1 AND NOT state = ANY($2::text[])",
            began,
            sorted(EXECUTION_FINAL),
        )
    finally:
        await conn.close()
    for row in left:
        await platform.acall("POST", f"/executions/{row['id']}/terminate")
    for row in left:
        with contextlib.suppress(AssertionError):  # reported by the failed test already
            await platform.wait_state(row["id"], *sorted(EXECUTION_FINAL), timeout=60)


@pytest.fixture(scope="session")
async def base_image() -> str:
    from services.executor.images import ensure_image

    async with aiodocker.Docker() as docker:
        await ensure_image(docker, BASE_IMAGE, zapps_root=ROOT / "zapps")
    return BASE_IMAGE


@pytest.fixture(scope="session")
def log_dir(test_env: TestEnv) -> Path:
    path = ROOT / "var" / "test-logs" / test_env.run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
async def platform(test_env: TestEnv, base_image: str, log_dir: Path) -> AsyncIterator[Platform]:
    """The whole platform; its executor's node offers 2 cores and 1 GiB."""
    async with _started(test_env, log_dir) as p:
        yield p


@asynccontextmanager
async def _started(env: TestEnv, log_dir: Path) -> AsyncIterator[Platform]:
    """A platform of ``env`` whose node offers 2 cores and 1 GiB, ready; stopped after."""
    p = Platform(env, f"{env.deployment}-n1", log_dir, ZOE_CORES="2", ZOE_MEMORY=str(1 << 30))
    async with p.running():
        yield p


async def containers_of(docker: aiodocker.Docker, env: TestEnv, execution_id: int) -> list[Any]:
    """Every container (running or not) of one execution of this test session."""
    return await docker.containers.list(
        all=True,
        filters={"label": [f"zoe.deployment={env.deployment}", f"zoe.execution={execution_id}"]},
    )


@asynccontextmanager
async def platform_on(
    test_env: TestEnv, suffix: str, database_url: str, log_dir: Path
) -> AsyncIterator[Platform]:
    """A whole platform of its own on ``database_url`` (a private PostgreSQL server),
    with a vhost and a deployment name of its own; stopped and cleaned up afterwards."""
    env = TestEnv()
    env.vhost = f"{test_env.vhost}-{suffix}"
    env.deployment = f"{test_env.deployment}{suffix}"
    env.amqp_url = test_env.amqp_url.rsplit("/", 1)[0] + "/" + env.vhost
    env.database_url = database_url
    _rabbitmqctl("add_vhost", env.vhost)
    _rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    await migrate(env)
    logs = log_dir / suffix
    logs.mkdir(exist_ok=True)
    try:
        async with _started(env, logs) as p:
            yield p
    finally:
        await _remove_containers(env.deployment)
        with contextlib.suppress(RuntimeError):
            _rabbitmqctl("delete_vhost", env.vhost, attempts=2)


@asynccontextmanager
async def container_creates(env: TestEnv) -> AsyncIterator[Counter[str]]:
    """How many times each container of this session is created while the block runs,
    from a live ``docker events`` stream (the engine keeps only the last 256 events, too
    few to ask afterwards on a busy host). A name counts the distinct containers (ids)
    made under it: the engine may send an event made while the stream starts twice, once
    replayed and once live."""
    created: Counter[str] = Counter()
    seen: set[str] = set()
    # from the block's start: the stream replays what came before it listened
    since = f"{time.time():.3f}"
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/docker",
        "events",
        "--since",
        since,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        f"label=zoe.deployment={env.deployment}",
        "--format",
        "{{json .}}",
        stdout=asyncio.subprocess.PIPE,
    )

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            event = json.loads(line)
            if event["Actor"]["ID"] not in seen:
                seen.add(event["Actor"]["ID"])
                created[event["Actor"]["Attributes"]["name"]] += 1

    reader = asyncio.create_task(read())
    try:
        yield created
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
        await asyncio.wait_for(reader, timeout=10)
