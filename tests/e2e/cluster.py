"""The test cluster fixture: ``deploy/testcluster.sh up 3`` for the session, ``down`` after.

Three test hosts host1..host3 (network namespaces with a dockerd each, one swarm, an
executor each whose node is named and labelled ``host<i>``), a registry on
198.18.0.1:5055 and the control plane on loopback (docs/operations.md, "A test cluster
on one machine"). Always made fresh (a cluster left over by a killed run is taken down
first) and always taken down at the end, even when a test fails.

Tests get a :class:`Cluster`: the api's URL and an admin token, an aiodocker client per
host, ``cut``/``heal``, the script's ``status``, and :func:`wait_for`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "testcluster.sh"
ENV_FILE = ROOT / "var" / "testcluster" / "env"
HOSTS = 3
# The monitor declares a silent node lost after this many seconds (ZOE_NODE_TIMEOUT).
NODE_TIMEOUT = 5.0
REGISTRY_URL = "http://198.18.0.1:5055"
# The checkout whose test cluster is up on this machine (one at a time: fixed names).
OWNER_FILE = Path("/run/zoe-testcluster.owner")
# How long a session waits for another checkout's test cluster to go away.
MACHINE_WAIT = 1800.0

__all__ = ["Cluster", "cluster", "wait_for"]


def run_script(*args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    """``deploy/testcluster.sh ARGS`` with ``env`` added; its output, whatever its status."""
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_env(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``NAME=value`` lines ``up`` wrote."""
    out = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


class Cluster:
    """A running test cluster, as ``up`` described it in var/testcluster/env."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.hosts = int(env["ZOE_TESTCLUSTER_HOSTS"])
        self.url = env["ZOE_URL"].rstrip("/") + "/api/v1"
        self.token = Path(env["ZOE_TOKEN_FILE"]).read_text().strip()
        self.registry = env["ZOE_REGISTRY"]
        self.deployment = env["ZOE_DEPLOYMENT"]
        self.swarm_cluster_id = env["ZOE_SWARM_CLUSTER_ID"]
        self.docker_urls = {i: env[f"ZOE_TESTCLUSTER_DOCKER_{i}"] for i in range(1, self.hosts + 1)}
        self.addrs = {i: env[f"ZOE_TESTCLUSTER_ADDR_{i}"] for i in range(1, self.hosts + 1)}
        self.node_timeout = NODE_TIMEOUT

    # ---- the script ---------------------------------------------------------------------

    def cut(self, i: int) -> None:
        """Take host ``i`` off the network (its link down)."""
        _check(run_script("cut", str(i), timeout=60))

    def heal(self, i: int) -> None:
        """Put host ``i`` back (its link up)."""
        _check(run_script("heal", str(i), timeout=60))

    def status(self) -> subprocess.CompletedProcess[str]:
        """``testcluster.sh status`` (exit 0: every host healthy)."""
        return run_script("status", timeout=120)

    # ---- the api ------------------------------------------------------------------------

    def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """One request as the cluster's admin (or as ``token``'s user)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    async def acall(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await asyncio.to_thread(self.call, method, path, body, **kw)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node the api knows, by name."""
        status, body = await self.acall("GET", "/nodes")
        assert status == 200, body
        return {n["name"]: n for n in body}

    async def node_state(self, name: str) -> str | None:
        return (await self.nodes()).get(name, {}).get("state")

    # ---- the hosts ----------------------------------------------------------------------

    @asynccontextmanager
    async def docker(self, i: int) -> AsyncIterator[aiodocker.Docker]:
        """An aiodocker client of host ``i``'s engine."""
        client = aiodocker.Docker(url=self.docker_urls[i])
        try:
            yield client
        finally:
            await client.close()

    async def reachable(self, i: int, port: int = 9103, timeout: float = 1.0) -> bool:
        """True when host ``i`` accepts a TCP connection on ``port`` (its executor's
        probes by default) from the root namespace."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.addrs[i], port), timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        await writer.wait_closed()
        return True


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, proc.args))} exited {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )


def machine_owner() -> str | None:
    """The checkout whose test cluster is up on this machine, if any."""
    try:
        return OWNER_FILE.read_text().partition("\n")[0].strip() or None
    except OSError:
        return None


def machine_busy() -> str | None:
    """Whose test cluster is up on this machine when it is not this checkout's: its
    owner, or "another checkout" when the bridge is there without one (an older
    testcluster.sh recorded none)."""
    owner = machine_owner()
    if owner is not None:
        return None if owner == str(ROOT) else owner
    bridge = subprocess.run(["ip", "link", "show", "zt-br0"], capture_output=True, check=False)
    ours = (ROOT / "var" / "testcluster" / "hosts").exists()
    return "another checkout" if bridge.returncode == 0 and not ours else None


def _wait_for_the_machine(timeout: float = MACHINE_WAIT) -> None:
    """Wait while another checkout's test cluster is up here (its run takes it down); one
    that outlived its run is taken down at once."""
    deadline = time.monotonic() + timeout
    while (owner := machine_busy()) is not None:
        _check(run_script("reclaim", timeout=300))
        if machine_busy() is None:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the test cluster of {owner} was still up after {timeout:g}s")
        time.sleep(5)


def up(hosts: int = HOSTS) -> Cluster:
    """A fresh cluster of ``hosts`` hosts (one left over is taken down first)."""
    _check(run_script("down", timeout=300))
    _wait_for_the_machine()
    proc = run_script(
        "up",
        str(hosts),
        ZOE_NODE_TIMEOUT=str(NODE_TIMEOUT),
        ZOE_HEARTBEAT_INTERVAL="1",
        ZOE_TESTCLUSTER_HOLDER=str(os.getpid()),  # the cluster is this run's while it lives
    )
    _check(proc)
    return Cluster(read_env())


def down() -> None:
    _check(run_script("down", timeout=300))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's test cluster of three hosts; taken down at the end whatever happens."""
    try:
        yield up()
    finally:
        down()
