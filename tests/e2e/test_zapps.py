"""The ZApp library end to end: its images built on this host, its ZApps run by the whole
platform (the four services as processes, real RabbitMQ, PostgreSQL and Docker).

The ZApps run on a platform of their own (its own vhost, database and deployment name)
whose node offers 2 cores and 8 GiB: Spark's JVMs need more memory than the shared
test platform's node has. The images are built once, skipping those already present;
the first build on a new machine takes several minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiodocker
import aiohttp
import pytest

from services.executor.images import (
    ImageBuildFailed,
    ImageError,
    ensure_image,
    ensure_images,
    library_image_refs,
    zapp_used_images,
)
from tests.conftest import (
    AMQP_BASE,
    PG_BASE,
    TestEnv,
    _drop_database,
    _rabbitmqctl,
    _remove_containers,
    migrate,
    wait_for,
)
from tests.e2e.conftest import ROOT, Platform

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ZAPPS = ROOT / "zapps"
NODE_MEMORY = 8 << 30
ENDED = ("finished", "failed", "terminated", "error")
HOST_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]+\]):(\d+)")


class LibraryEnv(TestEnv):
    """A vhost, database and deployment of their own, beside the session's."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.vhost = f"zoe-test-{self.run_id}-zapps"
        self.database = f"zoe_test_{self.run_id}_zapps"
        self.deployment = f"zt{self.run_id}z"
        self.amqp_url = AMQP_BASE.rstrip("/") + "/" + quote(self.vhost, safe="")
        self.database_url = PG_BASE.rstrip("/") + "/" + self.database


class LibraryPlatform(Platform):
    """The platform of this module, knowing which images of the library failed to build."""

    def __init__(
        self, env: TestEnv, node: str, log_dir: Path, failed: dict[str, ImageError], **env_: str
    ) -> None:
        super().__init__(env, node, log_dir, **env_)
        self.failed_images = failed


@pytest.fixture(scope="module")
async def library_images() -> dict[str, ImageError]:
    """Every image of the library, built unless present (two builds at a time).

    Returns the failed builds by reference: a test needing one of them fails with the
    reason, the others run.
    """
    async with aiodocker.Docker() as docker:
        refs = library_image_refs(ZAPPS)
        return await ensure_images(docker, refs, zapps_root=ZAPPS, jobs=2, check=False)


def needs_images(failed: dict[str, ImageError], zapp: str) -> None:
    """Fail now, with the build's reason, if an image the ZApp runs could not be made."""
    for ref in zapp_used_images(ZAPPS / zapp):
        if ref in failed:
            pytest.fail(f"{zapp} cannot run: {failed[ref]}")


@pytest.fixture(scope="module")
async def library(
    log_dir: Path, library_images: dict[str, ImageError]
) -> AsyncIterator[LibraryPlatform]:
    """The platform the library's ZApps run on; removes all it made at the end.

    Each clean-up step runs even when an earlier one fails, in the reverse order of setup.
    """
    env = LibraryEnv()
    logs = log_dir / "zapps"
    logs.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as cleanup:
        await asyncio.to_thread(_rabbitmqctl, "add_vhost", env.vhost)
        cleanup.push_async_callback(_delete_vhost, env.vhost)
        await asyncio.to_thread(
            _rabbitmqctl, "set_permissions", "-p", env.vhost, "guest", *[".*"] * 3
        )
        await migrate(env)
        cleanup.push_async_callback(_drop_database, env.database)
        cleanup.push_async_callback(_remove_volumes, env.deployment)
        cleanup.push_async_callback(_remove_containers, env.deployment)
        platform = LibraryPlatform(
            env,
            f"{env.deployment}-n1",
            logs,
            library_images,
            ZOE_CORES="2",
            ZOE_MEMORY=str(NODE_MEMORY),
        )
        platform.start()
        cleanup.callback(platform.stop)
        await platform.wait_ready()
        yield platform


async def _delete_vhost(vhost: str) -> None:
    delete = ["rabbitmqctl", "-q", "delete_vhost", vhost]
    await asyncio.to_thread(subprocess.run, delete, capture_output=True, timeout=300)


async def _remove_volumes(deployment: str) -> None:
    """The volumes the executions made (`<deployment>-spark-events`, workspaces)."""
    async with aiodocker.Docker() as docker:
        found = await docker.volumes.list(filters={"name": [f"{deployment}-"]})
        for volume in found.get("Volumes") or []:
            if volume["Name"].startswith(f"{deployment}-"):
                await aiodocker.volumes.DockerVolume(docker, volume["Name"]).delete()


@pytest.fixture(scope="module")
def spark_apps() -> list[str]:
    """Names of the Spark applications that wrote event logs in this module's volume."""
    return []


# ---- helpers ----------------------------------------------------------------------------


async def submit_zapp(p: LibraryPlatform, zapp: str, params: dict[str, Any] | None = None) -> int:
    """Start a ZApp of the shop with `params`; return the execution id."""
    needs_images(p.failed_images, zapp)
    body = {"name": f"test-{zapp}", "zapp": zapp, "params": params or {}}
    status, execution = await p.acall("POST", "/executions", body)
    assert status == 201, execution
    return int(execution["id"])


async def log_of(p: Platform, eid: int, instance: str) -> str:
    status, text = await p.acall("GET", f"/executions/{eid}/services/{instance}/logs")
    assert status == 200, text
    return str(text)


async def all_logs(p: Platform, eid: int, lines: int = 30) -> str:
    """The end of every instance's log, to explain a failure."""
    out = []
    for s in (await p.get(eid))["services"]:
        status, text = await p.acall("GET", f"/executions/{eid}/services/{s['name']}/logs")
        tail = "\n".join(str(text).splitlines()[-lines:]) if status == 200 else f"({status})"
        out.append(f"--- {s['name']} ({s['state']}, {s['reason']}):\n{tail}")
    return "\n".join(out)


async def wait_end(p: Platform, eid: int, timeout: float) -> dict[str, Any]:
    try:
        ended = await p.wait_state(eid, *ENDED, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await all_logs(p, eid)}") from None
    assert ended["state"] == "finished", f"{json.dumps(ended)}\n{await all_logs(p, eid)}"
    return ended


async def wait_running(p: Platform, eid: int, timeout: float) -> dict[str, Any]:
    try:
        running = await p.wait_state(eid, "running", *ENDED, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await all_logs(p, eid)}") from None
    assert running["state"] == "running", f"{json.dumps(running)}\n{await all_logs(p, eid)}"
    return running


async def terminate(p: Platform, eid: int) -> None:
    await p.acall("POST", f"/executions/{eid}/terminate")
    await p.wait_state(eid, *ENDED, timeout=60)


def endpoint(execution: dict[str, Any], instance: str, port: str) -> str:
    """`http://host:port/` of a published port, whatever URL template it has."""
    (inst,) = [s for s in execution["services"] if s["name"] == instance]
    published = inst["endpoints"][port]
    match = HOST_PORT.search(published)
    assert match, published
    return f"http://{match.group(1)}:{match.group(2)}/"


async def http_json(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(10)) as r:
                text = await r.text()
                return r.status, json.loads(text) if r.status == 200 else text
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            return 0, None


async def run_in_kernel(notebook: str, token: str, code: str, timeout: float = 300) -> str:
    """Start a kernel on a Jupyter server, run `code`, return what it printed.

    Jupyter's messaging protocol over the kernel's websocket: one execute_request, then
    its stream and error messages until the kernel is idle again.
    """
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(notebook + "api/kernels", json={"name": "python3"}) as r:
            assert r.status == 201, await r.text()
            kernel = (await r.json())["id"]
        msg_id = uuid.uuid4().hex
        request = {
            "header": {
                "msg_id": msg_id,
                "session": uuid.uuid4().hex,
                "username": "test",
                "msg_type": "execute_request",
                "version": "5.3",
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
            "buffers": [],
        }
        ws_url = notebook.replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
        output: list[str] = []
        async with session.ws_connect(ws_url) as ws:
            await ws.send_json(request)
            async with asyncio.timeout(timeout):
                async for message in ws:
                    msg = json.loads(message.data)
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        output.append(content["text"])
                    elif kind == "error":
                        output.append(f"{content['ename']}: {content['evalue']}")
                    elif kind == "status" and content["execution_state"] == "idle":
                        break
        await session.delete(notebook + f"api/kernels/{kernel}")
    return "".join(output)


# ---- the library's ZApps ---------------------------------------------------------------


async def test_hello_finishes_with_its_greeting(library: LibraryPlatform) -> None:
    eid = await submit_zapp(library, "hello", {"GREETING": "Hello from the ZApp library"})
    await wait_end(library, eid, timeout=60)
    log = await log_of(library, eid, "hello0")
    assert f"Hello from the ZApp library! execution {eid}, service hello0" in log
    assert "hello: done" in log


async def test_spark_pi_on_a_master_and_two_elastic_workers(
    library: LibraryPlatform, spark_apps: list[str]
) -> None:
    eid = await submit_zapp(library, "spark-submit")  # 1 essential worker + 2 elastic
    ended = await wait_end(library, eid, timeout=600)

    workers = [s for s in ended["services"] if s["service"] == "spark-worker"]
    assert [(w["name"], w["essential"]) for w in workers] == [
        ("spark-worker0", True),
        ("spark-worker1", False),
        ("spark-worker2", False),
    ]
    assert all(w["container_id"] for w in workers), "every worker was started"
    log = await log_of(library, eid, "spark-submit0")
    match = re.search(r"Pi is roughly (\d+\.\d+)", log)
    assert match, log[-3000:]
    assert abs(float(match.group(1)) - math.pi) < 0.05
    spark_apps.append("PythonPi")  # its event log is in the spark-events volume


async def test_mpi_job_computes_pi_across_its_instances(library: LibraryPlatform) -> None:
    eid = await submit_zapp(library, "mpi")
    ended = await wait_end(library, eid, timeout=180)

    assert sorted(s["name"] for s in ended["services"]) == [
        "mpi-launcher0",
        "mpi-worker0",
        "mpi-worker1",
    ]
    log = await log_of(library, eid, "mpi-launcher0")
    assert "hosts: mpi-launcher0, mpi-worker0, mpi-worker1" in log
    assert "world size 3 (3 ranks answered)" in log
    match = re.search(r"pi is approximately (\d+\.\d+), error", log)
    assert match, log
    assert abs(float(match.group(1)) - math.pi) < 1e-9


async def test_pytorch_ddp_trains_across_two_instances(library: LibraryPlatform) -> None:
    eid = await submit_zapp(library, "pytorch-ddp", {"STEPS": 150})
    await wait_end(library, eid, timeout=240)

    log = await log_of(library, eid, "trainer0")
    first = re.search(r"step 1, loss (\d+\.\d+)", log)
    final = re.search(r"final loss (\d+\.\d+) after 150 steps, world size 2", log)
    assert first and final, log
    assert float(final.group(1)) < float(first.group(1)) / 10
    assert "train: rank 1 of 2" in await log_of(library, eid, "trainer1")


async def test_jupyter_serves_its_notebook(library: LibraryPlatform) -> None:
    eid = await submit_zapp(library, "jupyter")  # no token by default
    try:
        running = await wait_running(library, eid, timeout=120)
        url = endpoint(running, "jupyter0", "Jupyter Notebook")

        async def answers() -> bool:
            status, body = await http_json(url + "api/status")
            return status == 200 and "started" in body

        await wait_for(answers, timeout=90, interval=0.5, what="the notebook's API")
    finally:
        await terminate(library, eid)


async def test_spark_notebook_computes_on_the_cluster(library: LibraryPlatform) -> None:
    token = "zapp-test"
    eid = await submit_zapp(library, "spark", {"spark-worker": 2, "JUPYTER_TOKEN": token})
    try:
        running = await wait_running(library, eid, timeout=300)
        master = endpoint(running, "spark-master0", "Spark master web interface")

        async def two_workers() -> bool:
            status, body = await http_json(master + "json/")
            return status == 200 and body.get("aliveworkers") == 2

        await wait_for(two_workers, timeout=300, interval=1, what="two workers on the master")

        notebook = endpoint(running, "jupyter0", "Jupyter Notebook")

        async def notebook_up() -> bool:
            return (await http_json(notebook + "api/status", token))[0] == 200

        await wait_for(notebook_up, timeout=180, interval=0.5, what="the notebook's API")
        assert (await http_json(notebook + "api/status"))[0] == 403  # the token is asked for

        code = "print(sc.master, sc.parallelize(range(1000), 4).sum())"
        printed = await run_in_kernel(notebook, token, code)
        assert "spark://spark-master0:7077 499500" in printed, printed
    finally:
        await terminate(library, eid)


async def test_spark_history_lists_finished_applications(
    library: LibraryPlatform, spark_apps: list[str]
) -> None:
    eid = await submit_zapp(library, "spark-history")
    try:
        running = await wait_running(library, eid, timeout=120)
        url = endpoint(running, "spark-history0", "Spark history server")
        names: set[str] = set()

        async def listed() -> bool:
            status, body = await http_json(url + "api/v1/applications")
            if status != 200:
                return False
            names.update(app["name"] for app in body)
            return set(spark_apps) <= names

        await wait_for(listed, timeout=120, interval=1, what=f"{spark_apps} in the history")
    finally:
        await terminate(library, eid)


# ---- the image builder's staged context -------------------------------------------------


async def test_context_files_are_staged_into_the_build_only(tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("staged from the host\n")
    name = f"zoetest-{uuid.uuid4().hex[:8]}-ctx"
    image_dir = tmp_path / "lib" / "scratch" / "images" / name
    image_dir.mkdir(parents=True)
    (image_dir / "TAG").write_text("1\n")
    (image_dir / "Dockerfile").write_text(
        'FROM zoe/busybox:1\nCOPY data/payload.txt /payload.txt\nCMD ["cat", "/payload.txt"]\n'
    )
    (image_dir / "CONTEXT").write_text(f"copy data {tmp_path}/payload.*\n")
    ref = f"zoe/{name}:1"
    async with aiodocker.Docker() as docker:
        try:
            await ensure_image(docker, ref, zapps_root=tmp_path / "lib")
            container = await docker.containers.run(
                {"Image": ref, "Labels": {"zoe.test": "zapps"}}, name=name
            )
            try:
                await container.wait(timeout=60)
                assert "".join(await container.log(stdout=True)) == "staged from the host\n"
            finally:
                await container.delete(force=True)
            assert not (image_dir / "data").exists()  # the folder itself is untouched

            broken = image_dir.parent / f"{name}-broken"
            broken.mkdir()
            (broken / "TAG").write_text("1\n")
            (broken / "Dockerfile").write_text("FROM zoe/busybox:1\nCOPY data/ /data/\n")
            (broken / "CONTEXT").write_text("copy data /nonexistent/*.whl\n")
            with pytest.raises(ImageBuildFailed, match=r"no host file matches /nonexistent"):
                await ensure_image(docker, f"zoe/{name}-broken:1", zapps_root=tmp_path / "lib")
        finally:
            try:
                await docker.images.delete(ref, force=True)
            except aiodocker.DockerError:
                pass
