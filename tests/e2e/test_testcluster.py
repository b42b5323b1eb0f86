"""deploy/testcluster.sh itself: three hosts in one swarm, registered as nodes, a
registry they reach, `cut` and `heal`, and a `down` that leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import PG_BASE
from tests.e2e.cluster import (
    OWNER_FILE,
    REGISTRY_URL,
    ROOT,
    Cluster,
    machine_busy,
    run_script,
    up,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_every_host_is_a_node_with_its_label(cluster: Cluster) -> None:
    nodes = await cluster.nodes()
    for i in range(1, cluster.hosts + 1):
        node = nodes[f"host{i}"]
        assert node["state"] == "up"
        assert f"host{i}" in node["labels"]
    assert cluster.status().returncode == 0


async def test_the_hosts_form_one_swarm(cluster: Cluster) -> None:
    async with cluster.docker(1) as manager:
        swarm_nodes = await manager.nodes.list()
    assert len(swarm_nodes) == cluster.hosts
    assert {n["Status"]["State"] for n in swarm_nodes} == {"ready"}
    managers = [n for n in swarm_nodes if n["Spec"].get("Role") == "manager"]
    assert len(managers) == 1
    names = {f"host{i}" for i in range(1, cluster.hosts + 1)}
    assert {n["Spec"]["Labels"]["zoe.node"] for n in swarm_nodes} == names
    assert {n["Description"]["Hostname"] for n in swarm_nodes} == names
    for i in range(1, cluster.hosts + 1):
        async with cluster.docker(i) as engine:
            info = await engine.system.info()
        assert info["Swarm"]["LocalNodeState"] == "active"
        # only a manager knows the cluster
        if i == 1:
            assert info["Swarm"]["Cluster"]["ID"] == cluster.swarm_cluster_id
        assert info["Swarm"]["ControlAvailable"] is (i == 1)
        assert info["Swarm"]["NodeAddr"] == cluster.addrs[i]


async def test_the_registry_holds_the_base_images_and_a_host_pulls_them(
    cluster: Cluster,
) -> None:
    catalog = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"{REGISTRY_URL}/v2/_catalog", timeout=10).read()
    )
    for name in (b"zoe/busybox", b"zoe/debian", b"zoe/python"):
        assert name in catalog
    ref = f"{cluster.registry}/zoe/busybox:1"
    async with cluster.docker(cluster.hosts) as engine:
        # a host starts without images, but the cluster is the session's: tests before
        # this one may have pulled it here already
        if [i for i in await engine.images.list() if ref in (i.get("RepoTags") or [])]:
            await engine.images.delete(ref, force=True)
        assert not [i for i in await engine.images.list() if ref in (i.get("RepoTags") or [])]
        await engine.images.pull(ref)
        try:
            assert (await engine.images.inspect(ref))["Id"]
        finally:
            await engine.images.delete(ref, force=True)


async def test_cut_takes_a_host_off_and_heal_brings_it_back(cluster: Cluster) -> None:
    host = cluster.hosts
    assert await cluster.reachable(host)
    cluster.cut(host)
    try:
        assert not await cluster.reachable(host)
        # the executor's heartbeats no longer reach the broker: the monitor's verdict
        await wait_for(
            _state_is(cluster, f"host{host}", "lost"),
            timeout=cluster.node_timeout * 6 + 30,
            interval=0.5,
            what=f"host{host} declared lost",
        )
        assert "link=down" in cluster.status().stdout
        assert (await cluster.node_state("host1")) == "up"
    finally:
        cluster.heal(host)
    await wait_for(
        lambda: cluster.reachable(host), timeout=30, interval=0.5, what=f"host{host} reachable"
    )
    await wait_for(
        _state_is(cluster, f"host{host}", "up"),
        timeout=120,
        interval=0.5,
        what=f"host{host} up again",
    )
    await wait_for(
        lambda: cluster.status().returncode == 0, timeout=60, interval=1, what="status healthy"
    )


def _state_is(cluster: Cluster, name: str, state: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await cluster.node_state(name)) == state

    return check


def _another_checkout(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A second checkout's testcluster.sh, run there."""
    other = tmp_path / "other"
    (other / "deploy").mkdir(parents=True)
    for name in ("testcluster.sh", "lib.sh", "registry.sh"):
        shutil.copy2(ROOT / "deploy" / name, other / "deploy" / name)
    (other / ".venv").symlink_to((ROOT / ".venv").resolve())

    def there(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(other / "deploy" / "testcluster.sh"), *args],
            cwd=other,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return there


async def test_another_checkout_leaves_this_cluster_alone(cluster: Cluster, tmp_path: Path) -> None:
    """The names are the machine's: a second checkout's up is refused, and its down,
    cut, heal and reclaim touch nothing of this checkout's cluster while its run lives."""
    there = _another_checkout(tmp_path)
    refused = there("up", "1")
    assert refused.returncode != 0
    assert f"the test cluster of {ROOT} is up on this machine" in refused.stderr
    for args in (("cut", "1"), ("heal", "1")):
        proc = there(*args)
        assert proc.returncode != 0 and f"the one of {ROOT}" in proc.stderr
    proc = there("down")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "left alone" in proc.stdout
    proc = there("reclaim")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "held by a live run" in proc.stdout
    assert "no test cluster of this checkout" in there("status").stdout
    # this checkout's cluster is whole
    assert cluster.status().returncode == 0, cluster.status().stdout
    assert (await cluster.node_state("host1")) == "up"


def _leftovers() -> list[str]:
    """What of this checkout's test cluster is still on this machine (of the machine's
    parts only while no other checkout's test cluster is up here)."""
    out = []

    def lines(*cmd: str) -> list[str]:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return proc.stdout.splitlines()

    if machine_busy() is None:
        out += [f"netns {x}" for x in lines("ip", "netns", "list") if x.startswith("zt-")]
        out += [f"link {x}" for x in lines("ip", "-o", "link", "show") if ": zt-" in x]
        out += [f"rule {x}" for x in lines("iptables", "-S", "DOCKER-USER") if "zt-" in x]
        out += [f"nat {x}" for x in lines("iptables", "-t", "nat", "-S") if "zt-" in x]
        out += [f"cgroup {x}" for x in Path("/sys/fs/cgroup").glob("*/zt-host*")]
        vhosts = lines("rabbitmqctl", "-q", "list_vhosts", "name")
        out += [f"vhost {x}" for x in vhosts if x.strip() == "zt-cluster"]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(ROOT / "var" / "testcluster") in cmdline:
                out.append(f"process {proc.name}: {cmdline}")
    if (ROOT / "var" / "testcluster").exists():
        out.append("var/testcluster")
    return out


async def _databases() -> list[str]:
    conn = await asyncpg.connect(PG_BASE.rstrip("/") + "/postgres")
    try:
        rows = await conn.fetch(
            "SELECT datname AS name FROM pg_database WHERE datname = 'zt_cluster'"
            " UNION ALL SELECT rolname FROM pg_roles WHERE rolname = 'zt-cluster'"
        )
    finally:
        await conn.close()
    return [r["name"] for r in rows]


async def test_a_cluster_its_run_left_is_reclaimed_down_twice_leaves_nothing_and_up_works_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Last of the module: takes the session's cluster down and makes it again. Once the
    run holding it is gone (here: its pid taken by another process),
    another checkout's reclaim takes it down, by this checkout's own down; a down after
    that finds nothing left."""
    there = _another_checkout(tmp_path)
    # something running on a host (its container, cgroups, mounts) for `down` to remove
    ref = f"{cluster.registry}/zoe/busybox:1"
    async with cluster.docker(2) as engine:
        await engine.images.pull(ref)
        container = await engine.containers.run(
            {"Image": ref, "Cmd": ["sleep", "600"]}, name="zt-left-running"
        )
        assert (await container.show())["State"]["Running"]
    try:
        path, _, holder = OWNER_FILE.read_text().partition("\n")
        assert path == str(ROOT) and holder.split()[:2] == ["holder", str(os.getpid())]
        # this run's pid with another start time: the holder's pid now names another process
        OWNER_FILE.write_text(f"{path}\nholder {os.getpid()} 1\n")
        for i in range(2):
            proc = there("reclaim") if i == 0 else run_script("down", timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            if i == 0:
                assert "outlived the run that made it" in proc.stdout
            assert _leftovers() == []
            if machine_busy() is None:
                assert await _databases() == []
        status = run_script("status", timeout=60)
        assert status.returncode != 0
        assert "no test cluster" in status.stdout
    finally:
        # the session's cluster again, for the modules after this one
        fresh = up()
        cluster.__dict__.update(fresh.__dict__)
    assert (await cluster.node_state("host1")) == "up"
