"""Every service's /metrics, /healthz and /readyz, scraped from the running platform."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.e2e.conftest import SERVE_FOREVER, Platform, ServiceProcess, _free_port, service, zapp

pytestmark = pytest.mark.e2e

SERVICES = ("api", "scheduler", "monitor", "executor")


def value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The sample ``name`` with (at least) ``labels`` in a scrape; the sum when several
    match, None when none does."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    ]
    return sum(found) if found else None


def promtool(text: str) -> subprocess.CompletedProcess[bytes]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: deploy/install.sh installs it"
    return subprocess.run(
        [tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )


async def wait_metric(
    platform: Platform, svc: str, name: str, labels: Mapping[str, str] | None = None
) -> float:
    """Wait until ``svc`` shows ``name`` at 1 or more (gauges read every few seconds)."""
    seen: float | None = None

    async def moved() -> bool:
        nonlocal seen
        _, text = await platform.probe(svc, "/metrics")
        seen = value(text, name, labels)
        return seen is not None and seen >= 1

    await wait_for(moved, timeout=60, interval=0.5, what=f"{svc}: {name}{labels or ''} >= 1")
    assert seen is not None
    return seen


async def test_every_service_reports_its_work_and_is_ready(platform: Platform) -> None:
    for svc in SERVICES:

        async def ready(svc: str = svc) -> bool:
            return (await platform.probe(svc, "/readyz"))[0] == 200

        await wait_for(ready, timeout=60, interval=0.2, what=f"{svc} ready")
        assert (await platform.probe(svc, "/healthz"))[0] == 200

    app = zapp("metrics", service("web", SERVE_FOREVER), will_end=False)
    execution = await platform.submit(app, name="metrics")
    await platform.wait_state(execution["id"], "running")
    status, _ = await platform.acall("POST", f"/executions/{execution['id']}/terminate")
    assert status == 202
    await platform.wait_state(execution["id"], "terminated")

    posted = {"route": "/api/v1/executions", "method": "POST", "status": "201"}
    await wait_metric(platform, "api", "zoe_http_requests_total", posted)
    one = {"route": "/api/v1/executions/{id}", "method": "GET", "status": "200"}
    await wait_metric(platform, "api", "zoe_http_requests_total", one)
    await wait_metric(platform, "scheduler", "zoe_scheduling_pass_duration_seconds_count")
    await wait_metric(platform, "scheduler", "zoe_placements_total")
    await wait_metric(platform, "scheduler", "zoe_execution_start_wait_seconds_count")
    await wait_metric(platform, "scheduler", "zoe_messages_consumed_total", {"queue": "scheduler"})
    await wait_metric(platform, "scheduler", "zoe_executions", {"state": "terminated"})
    await wait_metric(platform, "scheduler", "zoe_nodes", {"state": "up"})
    await wait_metric(platform, "scheduler", "zoe_outbox_published_total")
    await wait_metric(
        platform, "executor", "zoe_instance_start_duration_seconds_count", {"outcome": "started"}
    )
    await wait_metric(platform, "executor", "zoe_instance_stop_duration_seconds_count")
    await wait_metric(
        platform, "executor", "zoe_messages_consumed_total", {"queue": "executor.{node}"}
    )
    await wait_metric(platform, "monitor", "zoe_messages_consumed_total", {"queue": "monitor"})
    _, text = await platform.probe("monitor", "/metrics")
    assert value(text, "zoe_node_heartbeat_age_seconds", {"node": platform.node}) is not None

    for svc in SERVICES:
        status, text = await platform.probe(svc, "/metrics")
        assert status == 200
        checked = promtool(text)
        assert checked.returncode == 0, (svc, checked.stdout, checked.stderr)
        status, body = await platform.probe(svc, "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready", "missing": []})


async def test_a_standby_scheduler_is_alive_but_not_ready(platform: Platform) -> None:
    active = platform["scheduler"]
    port = _free_port()
    standby = ServiceProcess(
        "scheduler-standby-probe",
        active.module,
        {**active.env, "ZOE_METRICS_PORT": str(port)},
        active.log_path.parent,
    )
    url = f"http://127.0.0.1:{port}"
    standby.start()
    try:
        platform.probe_urls["standby"] = url

        async def answers() -> bool:
            try:
                return (await platform.probe("standby", "/healthz"))[0] == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        await wait_for(answers, timeout=60, interval=0.2, what="the standby's /healthz")
        status, body = await platform.probe("standby", "/readyz")
        assert status == 503
        assert json.loads(body)["missing"] == ["leader"]
        status, _ = await platform.probe("scheduler", "/readyz")
        assert status == 200  # the active one still leads
    finally:
        platform.probe_urls.pop("standby", None)
        await asyncio.to_thread(standby.stop)
