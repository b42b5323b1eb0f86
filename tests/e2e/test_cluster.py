"""The platform on three test hosts (deploy/testcluster.sh through the ``cluster``
fixture): executions spread over hosts on one overlay network, images through the
cluster registry, a host cut off and healed.

The library's images (built on the machine's engine, as the other e2e tests do) are
handed once to host1's engine and pushed to the cluster registry; every other host pulls
what it runs from there. Instances are steered to hosts by labels (each host carries the
label ``host<i>``) or by their reservations (each host offers 2 cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from services.executor.engine.port import LABEL_INSTANCE
from services.executor.images import ensure_images, push
from tests.e2e.cluster import ROOT, Cluster, wait_for
from tests.e2e.conftest import SERVE_FOREVER, service, zapp
from tests.e2e.test_zapps import HOST_PORT, http_json, run_in_kernel

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ZAPPS = ROOT / "zapps"
ENDED = ("finished", "failed", "terminated", "error")
BUSYBOX = "zoe/busybox:1"
LIBRARY = ("zoe/spark:2", "zoe/spark-notebook:2", "zoe/mpi:2")
# the `zoe` command of this checkout (with PYTHONPATH set to it)
ZOE = [sys.executable, "-c", "from services.cli.main import main; main()"]


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def library(cluster: Cluster) -> tuple[str, ...]:
    """The library images the tests run, in the cluster registry (not on any host)."""
    async with aiodocker.Docker() as docker:
        failed = await ensure_images(docker, list(LIBRARY), zapps_root=ZAPPS, jobs=1, check=False)
    assert not failed, failed
    await asyncio.to_thread(_load_into_host1, cluster, LIBRARY)
    async with cluster.docker(1) as host1:
        for ref in LIBRARY:
            await push(host1, cluster.registry, ref)
        for ref in LIBRARY:
            for name in (ref, f"{cluster.registry}/{ref}"):
                with contextlib.suppress(aiodocker.DockerError):
                    await host1.images.delete(name, force=True)
    # a heavy load keeps an engine from answering a heartbeat's questions in time: the
    # tests start once every host is heard from again
    await every_host_up(cluster)
    return LIBRARY


async def every_host_up(cluster: Cluster) -> None:
    async def up() -> bool:
        nodes = await cluster.nodes()
        return all(
            nodes.get(f"host{i}", {}).get("state") == "up" for i in range(1, cluster.hosts + 1)
        )

    await wait_for(up, timeout=120, interval=0.5, what="every host up")


def _load_into_host1(cluster: Cluster, refs: tuple[str, ...]) -> None:
    """``docker save`` on the machine's engine into ``docker load`` on host1's (the
    machine's engine does not trust the cluster registry; host1's does)."""
    save = subprocess.Popen(["/usr/bin/docker", "save", *refs], stdout=subprocess.PIPE)
    load = subprocess.run(
        ["/usr/bin/docker", "-H", cluster.docker_urls[1], "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=60) == 0
    assert load.returncode == 0, load.stderr


# ---- helpers ----------------------------------------------------------------------------


async def submit(cluster: Cluster, application: dict[str, Any], name: str = "test") -> int:
    status, body = await cluster.acall(
        "POST", "/executions", {"name": name, "application": application}
    )
    assert status == 201, body
    return int(body["id"])


async def get(cluster: Cluster, eid: int) -> dict[str, Any]:
    status, body = await cluster.acall("GET", f"/executions/{eid}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def logs(cluster: Cluster, eid: int, instance: str) -> str:
    status, text = await cluster.acall("GET", f"/executions/{eid}/services/{instance}/logs")
    assert status == 200, text
    return str(text)


async def all_logs(cluster: Cluster, eid: int, lines: int = 30) -> str:
    """The end of every instance's log, to explain a failure."""
    out = []
    for s in (await get(cluster, eid))["services"]:
        status, text = await cluster.acall("GET", f"/executions/{eid}/services/{s['name']}/logs")
        tail = "\n".join(str(text).splitlines()[-lines:]) if status == 200 else f"({status})"
        out.append(f"--- {s['name']} on {s['node']} ({s['state']}, {s['reason']}):\n{tail}")
    return "\n".join(out)


async def wait_state(cluster: Cluster, eid: int, *states: str, timeout: float) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal last
        last = await get(cluster, eid)
        return last["state"] in states

    try:
        await wait_for(reached, timeout=timeout, interval=0.5, what=f"execution {eid} {states}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; last seen: {json.dumps(last)}\n{await all_logs(cluster, eid)}"
        ) from None
    return last


async def wait_finished(cluster: Cluster, eid: int, timeout: float) -> dict[str, Any]:
    ended = await wait_state(cluster, eid, *ENDED, timeout=timeout)
    assert ended["state"] == "finished", f"{json.dumps(ended)}\n{await all_logs(cluster, eid)}"
    return ended


async def wait_running(cluster: Cluster, eid: int, timeout: float) -> dict[str, Any]:
    """The execution running with every instance it asked for running."""

    async def all_up() -> bool:
        execution = await get(cluster, eid)
        if execution["state"] in ENDED:
            return True
        return execution["state"] == "running" and all(
            s["state"] == "running" for s in execution["services"]
        )

    try:
        await wait_for(all_up, timeout=timeout, interval=0.5, what=f"execution {eid} running")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await all_logs(cluster, eid)}") from None
    execution = await get(cluster, eid)
    assert execution["state"] == "running", (
        f"{json.dumps(execution)}\n{await all_logs(cluster, eid)}"
    )
    return execution


async def terminate(cluster: Cluster, eid: int) -> None:
    if (await get(cluster, eid))["state"] not in ENDED:
        await cluster.acall("POST", f"/executions/{eid}/terminate")
    await wait_state(cluster, eid, *ENDED, timeout=120)


@contextlib.asynccontextmanager
async def ended_at_exit(cluster: Cluster, *eids: int) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for eid in eids:
            await terminate(cluster, eid)


def nodes_of(execution: dict[str, Any]) -> dict[str, str]:
    """Each instance's node."""
    return {s["name"]: s["node"] for s in execution["services"]}


def endpoint(execution: dict[str, Any], instance: str, port: str) -> str:
    """``http://host:port/path/`` of a published port."""
    (inst,) = [s for s in execution["services"] if s["name"] == instance]
    published = inst["endpoints"][port]
    match = HOST_PORT.search(published)
    assert match, published
    path = published[match.end() :].split("?")[0].rstrip("/")
    return f"http://{match.group(1)}:{match.group(2)}{path}/"


def library_app(name: str) -> dict[str, Any]:
    """A ZApp description of the library, as a dict to change."""
    return json.loads((ZAPPS / name.split("/")[0] / f"{name.split('/')[-1]}.json").read_text())


def by_name(app: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in app["services"] if s["name"] == name]
    return found


def reserve(svc: dict[str, Any], cores: float) -> None:
    svc["resources"]["cores"] = {"min": cores, "max": max(cores, 1.0)}


async def network_on(cluster: Cluster, i: int, name: str) -> bool:
    async with cluster.docker(i) as engine:
        try:
            await engine.networks.get(name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise
    return True


async def containers_on(cluster: Cluster, i: int, eid: int) -> list[dict[str, Any]]:
    """Every container (running or not) of execution ``eid`` on host ``i``'s engine."""
    async with cluster.docker(i) as engine:
        found = await engine.containers.list(
            all=True,
            filters={"label": [f"zoe.deployment={cluster.deployment}", f"zoe.execution={eid}"]},
        )
        return [c._container for c in found]


@contextlib.asynccontextmanager
async def container_creates(cluster: Cluster) -> AsyncIterator[dict[int, Counter[str]]]:
    """Each host's container creates of the cluster's deployment while the block runs:
    per host, the distinct containers (ids) made under each name, from live ``docker
    events`` streams (the hosts' sockets are files: a cut host's engine still answers)."""
    created: dict[int, Counter[str]] = defaultdict(Counter)
    seen: set[str] = set()
    since = f"{time.time():.3f}"
    procs = []
    readers = []

    async def read(i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            event = json.loads(line)
            if event["Actor"]["ID"] not in seen:
                seen.add(event["Actor"]["ID"])
                created[i][event["Actor"]["Attributes"]["name"]] += 1

    for i in range(1, cluster.hosts + 1):
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/docker",
            "-H",
            cluster.docker_urls[i],
            "events",
            "--since",
            since,
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label=zoe.deployment={cluster.deployment}",
            "--format",
            "{{json .}}",
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        readers.append(asyncio.create_task(read(i, proc)))
    try:
        yield created
    finally:
        for proc in procs:
            proc.terminate()
        for proc, reader in zip(procs, readers, strict=True):
            await asyncio.wait_for(proc.wait(), timeout=10)
            await asyncio.wait_for(reader, timeout=10)


# ---- the tests ----------------------------------------------------------------------------


# the first test makes the session's cluster (waiting while another checkout's is up) and
# fills the registry: more than the project's 900 s per test
@pytest.mark.timeout(2700)
async def test_spark_pi_master_on_host1_elastic_workers_on_host2_and_host3(
    cluster: Cluster, library: tuple[str, ...]
) -> None:
    app = library_app("spark-submit")
    by_name(app, "spark-master")["labels"] = ["host1"]
    by_name(app, "spark-submit")["labels"] = ["host1"]
    worker = by_name(app, "spark-worker")
    app["services"].remove(worker)
    # one service of workers per host (labels are per service): one essential, one
    # elastic on each
    for host, name in ((2, "spark-worker"), (3, "spark-wrk")):
        w = copy.deepcopy(worker)
        w.update(name=name, labels=[f"host{host}"], essential_count=1, total_count=2)
        app["services"].append(w)
    eid = await submit(cluster, app, "spark-pi")
    async with ended_at_exit(cluster, eid):
        ended = await wait_finished(cluster, eid, timeout=600)

    placed = nodes_of(ended)
    assert placed["spark-master0"] == "host1"
    assert placed["spark-submit0"] == "host1"
    workers = [s for s in ended["services"] if s["service"] in ("spark-worker", "spark-wrk")]
    assert sorted((w["name"], w["essential"], w["node"]) for w in workers) == [
        ("spark-worker0", True, "host2"),
        ("spark-worker1", False, "host2"),
        ("spark-wrk0", True, "host3"),
        ("spark-wrk1", False, "host3"),
    ]
    assert all(w["container_id"] for w in workers), "every worker was started"
    log = await logs(cluster, eid, "spark-submit0")
    match = re.search(r"Pi is roughly (\d+\.\d+)", log)
    assert match, log[-3000:]
    assert abs(float(match.group(1)) - math.pi) < 0.05


async def test_mpi_ranks_on_three_hosts(cluster: Cluster, library: tuple[str, ...]) -> None:
    app = library_app("mpi")
    launcher = by_name(app, "mpi-launcher")
    launcher["labels"] = ["host1"]
    reserve(launcher, 0.9)
    # 1.2 cores each: two never fit one host, nor beside the launcher on host1
    reserve(by_name(app, "mpi-worker"), 1.2)
    eid = await submit(cluster, app, "mpi-pi")
    async with ended_at_exit(cluster, eid):
        ended = await wait_finished(cluster, eid, timeout=300)

    placed = nodes_of(ended)
    assert placed["mpi-launcher0"] == "host1"
    assert {placed["mpi-worker0"], placed["mpi-worker1"]} == {"host2", "host3"}
    log = await logs(cluster, eid, "mpi-launcher0")
    assert "hosts: mpi-launcher0, mpi-worker0, mpi-worker1" in log
    assert "world size 3 (3 ranks answered)" in log
    match = re.search(r"pi is approximately (\d+\.\d+), error", log)
    assert match, log
    assert abs(float(match.group(1)) - math.pi) < 1e-9


async def test_spark_notebook_on_host1_computes_on_workers_of_the_other_hosts(
    cluster: Cluster, library: tuple[str, ...]
) -> None:
    token = "cluster-test"
    app = library_app("spark")
    jupyter = by_name(app, "jupyter")
    jupyter["labels"] = ["host1"]
    jupyter["environment"] = [
        [k, token if k == "JUPYTER_TOKEN" else v] for k, v in jupyter["environment"]
    ]
    by_name(app, "spark-master")["labels"] = ["host1"]
    workers = by_name(app, "spark-worker")
    workers.update(essential_count=1, total_count=2)
    # 1.5 cores each: one per host, and none beside the notebook and master on host1
    reserve(workers, 1.5)
    eid = await submit(cluster, app, "spark-notebook")
    async with ended_at_exit(cluster, eid):
        running = await wait_running(cluster, eid, timeout=600)
        placed = nodes_of(running)
        assert placed["jupyter0"] == "host1"
        assert {placed["spark-worker0"], placed["spark-worker1"]} == {"host2", "host3"}
        master = endpoint(running, "spark-master0", "Spark master web interface")

        async def two_workers() -> bool:
            status, body = await http_json(master + "json/")
            return status == 200 and body.get("aliveworkers") == 2

        await wait_for(two_workers, timeout=300, interval=1, what="two workers on the master")
        notebook = endpoint(running, "jupyter0", "Jupyter Notebook")

        async def notebook_up() -> bool:
            return (await http_json(notebook + "api/status", token))[0] == 200

        await wait_for(notebook_up, timeout=180, interval=0.5, what="the notebook's API")
        code = (
            "print(sc.master, sc.parallelize(range(1000), 4).sum(),"
            " sorted(set(sc.parallelize(range(40), 8)"
            ".map(lambda _: __import__('socket').gethostname()).collect())))"
        )
        printed = await run_in_kernel(notebook, token, code)
        assert "spark://spark-master0:7077 499500" in printed, printed
        # the tasks ran in the workers' containers (on host2 and host3), not the notebook's
        hosts = set(re.findall(r"'([^']+)'", printed))
        assert hosts and hosts <= {"spark-worker0", "spark-worker1"}, printed


async def test_an_image_built_once_reaches_another_host_through_the_registry(
    cluster: Cluster, tmp_path: Path
) -> None:
    tag = f"{os.getpid()}{int(time.time()) % 100000}"
    ref = f"zoe/zt-regtest:{tag}"
    folder = tmp_path / "lib" / "regtest"
    (folder / "images" / "zt-regtest").mkdir(parents=True)
    (folder / "images" / "zt-regtest" / "Dockerfile").write_text(
        f'FROM {BUSYBOX}\nRUN echo "built once, tag {tag}" > /built\n'
    )
    (folder / "images" / "zt-regtest" / "TAG").write_text(tag + "\n")
    app = zapp("regtest", service("regtest", "cat /built", image=ref))
    app["services"][0]["labels"] = ["host3"]
    (folder / "regtest.json").write_text(json.dumps(app))
    # built on host1's engine (its base from the registry) and pushed, by `zoe zapp build`
    build = await asyncio.to_thread(
        subprocess.run,
        [*ZOE, "zapp", "build", "regtest"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),  # this checkout's code (the venv's is another's)
            "DOCKER_HOST": cluster.docker_urls[1],
            "ZOE_REGISTRY": cluster.registry,
            "ZOE_ZAPPS_ROOT": str(tmp_path / "lib"),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert f"{ref}: ready, in {cluster.registry}" in build.stdout
    async with cluster.docker(3) as host3:
        with pytest.raises(aiodocker.DockerError):
            await host3.images.inspect(ref)  # host3 never had it
    try:
        eid = await submit(cluster, app, "regtest")
        async with ended_at_exit(cluster, eid):
            ended = await wait_finished(cluster, eid, timeout=300)
        assert nodes_of(ended) == {"regtest0": "host3"}
        assert f"built once, tag {tag}" in await logs(cluster, eid, "regtest0")
        async with cluster.docker(1) as host1, cluster.docker(3) as host3:
            # the very image host1 built, not one made again on host3
            assert (await host3.images.inspect(ref))["Id"] == (await host1.images.inspect(ref))[
                "Id"
            ]
    finally:
        for i in (1, 3):
            async with cluster.docker(i) as engine:
                for name in (ref, f"{cluster.registry}/{ref}"):
                    with contextlib.suppress(aiodocker.DockerError):
                        await engine.images.delete(name, force=True)


async def test_the_overlay_network_is_on_every_host_while_it_runs_and_gone_after(
    cluster: Cluster,
) -> None:
    services = []
    for i in range(1, cluster.hosts + 1):
        s = service(f"part{i}", SERVE_FOREVER, monitor=i == 1)
        s["labels"] = [f"host{i}"]
        services.append(s)
    eid = await submit(cluster, zapp("overlay", *services, will_end=False), "overlay")
    network = f"{cluster.deployment}-x{eid}"
    async with ended_at_exit(cluster, eid):
        running = await wait_running(cluster, eid, timeout=300)
        assert nodes_of(running) == {f"part{i}0": f"host{i}" for i in range(1, cluster.hosts + 1)}
        for i in range(1, cluster.hosts + 1):
            assert await network_on(cluster, i, network), f"{network} not on host{i}"
            async with cluster.docker(i) as engine:
                info = await (await engine.networks.get(network)).show()
            assert info["Driver"] == "overlay"
            assert info["Labels"]["zoe.execution"] == str(eid)
            (container,) = await containers_on(cluster, i, eid)
            assert network in container["NetworkSettings"]["Networks"]

    async def gone_everywhere() -> bool:
        for i in range(1, cluster.hosts + 1):
            if await network_on(cluster, i, network):
                return False
        return True

    await wait_for(gone_everywhere, timeout=120, interval=1, what=f"{network} gone on every host")


async def test_a_cut_host_is_lost_its_elastic_work_moves_and_heal_leaves_nothing_twice(
    cluster: Cluster,
) -> None:
    await every_host_up(cluster)
    # every host holds the image, so that placement follows the reservations alone
    for i in range(1, cluster.hosts + 1):
        async with cluster.docker(i) as engine:
            await engine.images.pull(f"{cluster.registry}/{BUSYBOX}")
            await engine.images.tag(f"{cluster.registry}/{BUSYBOX}", "zoe/busybox", tag="1")
    async with container_creates(cluster) as creates:
        eid, cut = await _elastic_on_a_host_of_their_own(cluster)
        # an execution whose essential instance is on the host to cut
        doomed = service("doomed", SERVE_FOREVER)
        doomed["labels"] = [f"host{cut}"]
        bid = await submit(cluster, zapp("doomed", doomed, will_end=False), "doomed")
        async with ended_at_exit(cluster, eid, bid):
            await wait_running(cluster, bid, timeout=120)
            before = await get(cluster, eid)
            moved = sorted(s["name"] for s in before["services"] if s["node"] == f"host{cut}")
            cluster.cut(cut)
            try:

                async def lost() -> bool:
                    return (await cluster.node_state(f"host{cut}")) == "lost"

                await wait_for(
                    lost, timeout=cluster.node_timeout * 6 + 30, interval=0.5, what="host lost"
                )
                # the essential instance there ends its execution (the policy: no
                # restarts of essential instances)
                ended = await wait_state(cluster, bid, *ENDED, timeout=60)
                assert ended["state"] == "failed", ended
                assert "node-lost" in (ended["error"] or ""), ended
                # the elastic ones run again elsewhere; the execution runs on
                again = await wait_running(cluster, eid, timeout=120)
                after = {s["name"]: s for s in again["services"]}
                for name in moved:
                    assert after[name]["node"] not in (None, f"host{cut}"), after[name]
                    assert after[name]["restart_count"] >= 1
                assert after["anchor0"]["node"] == "host1"
                assert again["state"] == "running"
            finally:
                cluster.heal(cut)

            async def up() -> bool:
                return (await cluster.node_state(f"host{cut}")) == "up"

            await wait_for(up, timeout=120, interval=0.5, what=f"host{cut} up again")

            # its leftover containers (the moved instances', the doomed one's) go
            async def cleared() -> bool:
                return not await containers_on(cluster, cut, eid) and not await containers_on(
                    cluster, cut, bid
                )

            await wait_for(cleared, timeout=120, interval=1, what=f"host{cut}'s leftovers gone")
            execution = await get(cluster, eid)
            assert execution["state"] == "running"
            # one running container per instance, over all the hosts
            running: Counter[str] = Counter()
            for i in range(1, cluster.hosts + 1):
                for c in await containers_on(cluster, i, eid):
                    if c["State"] == "running":
                        running[c["Labels"][LABEL_INSTANCE]] += 1
            assert sorted(running.values()) == [1] * len(execution["services"]), running
    # no container name was ever made twice, on any host or across them
    total: Counter[str] = Counter()
    for per_host in creates.values():
        total.update(per_host)
    assert total, "no creates seen"
    assert [n for n, k in total.items() if k > 1] == [], dict(creates)


async def _elastic_on_a_host_of_their_own(cluster: Cluster) -> tuple[int, int]:
    """A long-running execution: an essential anchor with its essential worker on
    host1 (1.4 + 0.6 cores fill it) and two elastic workers packed on one other host;
    returns its id and that host."""
    anchor = service("anchor", SERVE_FOREVER, cores=1.4)
    anchor["labels"] = ["host1"]
    work = service("work", SERVE_FOREVER, monitor=False, essential=1, total=3, cores=0.6)
    for _ in range(3):
        eid = await submit(cluster, zapp("elastic", anchor, work, will_end=False), "elastic")
        running = await wait_running(cluster, eid, timeout=120)
        hosts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in running["services"]:
            hosts[s["node"]].append(s)
        for name, held in sorted(hosts.items()):
            if name != "host1" and not any(s["essential"] for s in held):
                return eid, int(name.removeprefix("host"))
        # placed otherwise (ties broken another way): try again
        await terminate(cluster, eid)
    raise AssertionError(f"no host held only elastic instances: {json.dumps(running)}")
