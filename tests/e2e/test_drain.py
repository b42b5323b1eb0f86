"""Draining a node through the API and the command line, on the real platform."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from tests.conftest import wait_for
from tests.e2e.conftest import ROOT, SERVE_FOREVER, Platform, service, zapp


def _zoe(p: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ZOE_URL=p.url.removesuffix("/api/v1"), ZOE_TOKEN=p.env.admin_token)
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _instances(p: Platform, execution_id: int) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in (await p.get(execution_id))["services"]}


async def test_drain_moves_elastic_work_keeps_essential_and_ends_it_past_the_deadline(
    platform: Platform,
) -> None:
    p = platform
    plain = await p.new_user("plain-user", "user")
    status, body = await p.acall("POST", f"/nodes/{p.node}/drain", {}, token=plain)
    assert status == 403 and "change-config" in body["error"]
    status, _ = await p.acall("POST", f"/nodes/{p.node}/drain", {}, token=None)
    assert status == 401
    status, body = await p.acall("POST", "/nodes/no-such-node/drain", {})
    assert status == 404 and body["error"] == "node no-such-node does not exist"
    status, body = await p.acall("POST", f"/nodes/{p.node}/drain", {"deadline": -1})
    assert status == 400 and body["errors"][0]["path"] == "deadline"
    status, body = await p.acall("POST", f"/nodes/{p.node}/drain", {"deadline": 1, "x": 1})
    assert status == 400 and body["errors"][0]["path"] == "x"

    app = zapp("drain", service("wrk", SERVE_FOREVER, essential=1, total=2), will_end=False)
    first = (await p.submit(app))["id"]
    await p.wait_state(first, "running")

    async def elastic_in(*states: str) -> bool:
        return (await _instances(p, first))["wrk1"]["state"] in states

    await wait_for(lambda: elastic_in("running"), timeout=60, what="the elastic instance runs")
    try:
        done = await asyncio.to_thread(_zoe, p, "node", "drain", p.node)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"node {p.node}: draining"
        await p.wait_node(p.node, "drained")
        listing = await asyncio.to_thread(_zoe, p, "nodes")
        assert f"{p.node[:20]:<20} drained" in listing.stdout
        # the elastic instance leaves (no other node to go to: it waits), the essential stays
        await wait_for(lambda: elastic_in("created"), timeout=60, what="the elastic one moved")
        assert (await _instances(p, first))["wrk0"]["state"] == "running"
        second = (await p.submit(zapp("later", service("other", SERVE_FOREVER))))["id"]

        async def waits_with_reason() -> bool:
            got = await p.get(second)
            return got["state"] == "queued" and bool(got["pending_reason"])

        await wait_for(waits_with_reason, timeout=30, what="the new one waits, saying why")
        assert (await p.get(second))["pending_reason"] == "unschedulable: no node is available"
        shown = await asyncio.to_thread(_zoe, p, "get", str(second))
        assert "waiting: unschedulable: no node is available" in shown.stdout

        undone = await asyncio.to_thread(_zoe, p, "node", "undrain", p.node)
        assert undone.returncode == 0, undone.stderr
        await p.wait_node(p.node, "up")
        await p.wait_state(second, "running")
        await wait_for(lambda: elastic_in("running"), timeout=60, what="the elastic one is back")
        assert (await p.get(second))["pending_reason"] is None

        status, body = await p.acall("POST", f"/nodes/{p.node}/drain", {"deadline": 0})
        assert status == 202 and body == {"name": p.node, "draining": True, "deadline": 0.0}
        ended = await p.wait_state(first, "failed", timeout=60)
        assert "node-lost" in (ended["error"] or "") or any(
            s["reason"] == "node-lost" for s in ended["services"]
        )
        await p.wait_state(second, "failed", timeout=60)
    finally:
        await p.acall("POST", f"/nodes/{p.node}/undrain", {})
        await p.wait_node(p.node, "up")
