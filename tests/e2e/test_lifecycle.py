"""End to end: the four services as processes, real RabbitMQ, PostgreSQL and Docker."""

from __future__ import annotations

from typing import Any

import aiodocker
import pytest

from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import SERVE_FOREVER, Platform, containers_of, service, zapp

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


async def test_long_running_zapp_runs_with_limits_and_terminates(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    app = zapp(
        "notebook",
        service("server", SERVE_FOREVER, cores=0.5, memory=48 * MiB),
        will_end=False,
    )
    app["services"][0]["resources"]["cores"]["max"] = 1
    app["services"][0]["resources"]["memory"]["max"] = 64 * MiB
    execution = await platform.submit(app)
    eid = execution["id"]
    running = await platform.wait_state(eid, "running")
    (inst,) = running["services"]
    assert inst["state"] == "running" and inst["node"] == platform.node
    (container,) = await containers_of(docker, test_env, eid)
    info = await container.show()
    assert info["State"]["Running"]
    assert info["Id"] == inst["container_id"]
    assert info["HostConfig"]["Memory"] == 64 * MiB
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
    # a network of the execution's own (a spare made ahead), where it has its name
    (network,) = info["NetworkSettings"]["Networks"].values()
    assert "server0" in network["Aliases"]
    # its CPU and memory use, sampled by the executor and stored by the monitor
    usage = await wait_for(
        lambda: _usage(platform, eid), timeout=30, what="the container's usage shown"
    )
    assert 0 < usage["memory_bytes"] <= 64 * MiB and usage["cpu_percent"] >= 0

    status, _ = await platform.acall("POST", f"/executions/{eid}/terminate")
    assert status == 202
    ended = await platform.wait_state(eid, "terminated", "failed", "finished")
    assert ended["state"] == "terminated"
    assert ended["services"][0]["state"] == "stopped"
    assert await containers_of(docker, test_env, eid) == []
    status, _ = await platform.acall("POST", f"/executions/{eid}/terminate")
    assert status == 409


@pytest.mark.parametrize(("code", "state"), [(0, "finished"), (3, "failed")])
async def test_ephemeral_zapp_ends_by_itself(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, code: int, state: str
) -> None:
    app = zapp(
        "batch",
        service("job", f"echo working; sleep 1; exit {code}"),
        service("helper", SERVE_FOREVER, monitor=False),
    )
    eid = (await platform.submit(app))["id"]
    ended = await platform.wait_state(eid, "finished", "failed", "terminated")
    assert ended["state"] == state
    assert ended["exit_code"] == code
    job = next(s for s in ended["services"] if s["name"] == "job0")
    assert job["exit_code"] == code
    assert job["reason"] == ("exited" if code == 0 else "crashed")
    helper = next(s for s in ended["services"] if s["name"] == "helper0")
    assert helper["state"] == "stopped"
    assert await containers_of(docker, test_env, eid) == []
    status, log = await platform.acall("GET", f"/executions/{eid}/services/job0/logs")
    assert status == 200 and "working" in log


async def test_zapp_larger_than_free_capacity_waits_queued(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    big = zapp("big", service("server", SERVE_FOREVER, cores=1.5), will_end=False)
    first = (await platform.submit(big, name="first"))["id"]
    await platform.wait_state(first, "running")
    second = (await platform.submit(big, name="second"))["id"]
    await platform.wait_state(second, "queued")
    assert (await platform.get(second))["state"] == "queued"
    assert await containers_of(docker, test_env, second) == []

    await platform.acall("POST", f"/executions/{first}/terminate")
    await platform.wait_state(first, "terminated")
    await platform.wait_state(second, "running")
    await platform.acall("POST", f"/executions/{second}/terminate")
    await platform.wait_state(second, "terminated")


async def test_bad_requests_are_refused_and_nothing_is_stored(platform: Platform) -> None:
    status, before = await platform.acall("GET", "/executions?limit=10000")
    assert status == 200
    bad_app = zapp("x", service("no", None))  # name too short, service name too short
    bad_app["services"][0]["essential_count"] = 5
    cases = [
        ({"name": "x"}, "application"),
        ({"name": "", "application": zapp("okay", service("svc", "true"))}, "name"),
        ({"name": "n", "application": bad_app}, "application.services[0]"),
        ({"name": "n", "application": "nope"}, "application"),
        ({"name": "n", "application": zapp("okay", service("svc", "true")), "extra": 1}, "extra"),
    ]
    for body, path in cases:
        status, err = await platform.acall("POST", "/executions", body)
        assert status in (400, 422), (body, err)
        assert any(e["path"].startswith(path) for e in err["errors"]), (path, err)
    status, err = await platform.acall("GET", "/executions/999999999")
    assert status == 404 and "999999999" in err["error"]
    status, err = await platform.acall("GET", "/executions/abc")
    assert status == 404
    status, after = await platform.acall("GET", "/executions?limit=10000")
    assert [e["id"] for e in after] == [e["id"] for e in before]


async def test_scheduler_killed_between_submit_and_start_runs_once(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    platform["scheduler"].kill()
    app = zapp("once", service("server", SERVE_FOREVER, essential=1, total=2), will_end=False)
    eid = (await platform.submit(app))["id"]
    assert (await platform.get(eid))["state"] == "submitted"
    platform["scheduler"].start()
    running = await platform.wait_state(eid, "running")
    await wait_for(lambda: _all_running(platform, eid), timeout=30, what="both instances running")
    # kill it again while running and restart: nothing is started twice
    platform["scheduler"].kill()
    platform["scheduler"].start()
    await platform.wait_state(eid, "running")
    containers = await containers_of(docker, test_env, eid)
    names = sorted(c["Names"][0] for c in containers)
    assert len(names) == 2, names
    assert len({(await c.show())["Config"]["Labels"]["zoe.instance"] for c in containers}) == 2
    assert {s["name"] for s in running["services"]} == {"server0", "server1"}
    await platform.acall("POST", f"/executions/{eid}/terminate")
    await platform.wait_state(eid, "terminated")


async def _all_running(platform: Platform, eid: int) -> bool:
    execution = await platform.get(eid)
    return all(s["state"] == "running" for s in execution["services"])


async def _usage(platform: Platform, eid: int) -> dict[str, Any] | None:
    status, execution = await platform.acall("GET", f"/executions/{eid}")
    assert status == 200
    usage: dict[str, Any] | None = execution["services"][0]["usage"]
    return usage
