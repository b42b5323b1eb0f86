"""The api's authenticated proxy to interactive services, in a real browser: a Jupyter
notebook opened from its execution's page, a cell run over the kernel's WebSocket."""

from __future__ import annotations

import re
from typing import Any

import aiodocker
import pytest

from services.executor.images import ensure_image
from tests.conftest import wait_for
from tests.e2e.conftest import ROOT, Platform
from tests.e2e.test_web import browser, new_page, password_of, screenshot

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the fixture, used by name

# Run in the page the proxy served: start a kernel, execute one cell over its WebSocket
# (Jupyter's messaging protocol), return what it printed. Every URL is relative to the
# notebook's base, so every request goes through the proxy.
RUN_CELL = """async (code) => {
  const base = location.pathname.replace(/(tree|lab|notebooks)(\\/.*)?$/, "");
  const r = await fetch(base + "api/kernels", {method: "POST", body: JSON.stringify({name: "python3"}),
    headers: {"Content-Type": "application/json"}});
  if (r.status !== 201) return "kernel: HTTP " + r.status + " " + await r.text();
  const kernel = (await r.json()).id;
  const ws = new WebSocket(`ws://${location.host}${base}api/kernels/${kernel}/channels`);
  const msgId = crypto.randomUUID();
  const out = [];
  return await new Promise((resolve) => {
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: msgId, session: crypto.randomUUID(), username: "web", msg_type: "execute_request",
        version: "5.3", date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: "shell", buffers: [],
      content: {code, silent: false, store_history: true, user_expressions: {}, allow_stdin: false, stop_on_error: true}}));
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if ((msg.parent_header || {}).msg_id !== msgId) return;
      if (msg.msg_type === "stream") out.push(msg.content.text);
      if (msg.msg_type === "error") out.push(msg.content.ename + ": " + msg.content.evalue);
      if (msg.msg_type === "status" && msg.content.execution_state === "idle") { ws.close(); resolve(out.join("")); }
    };
    ws.onerror = () => resolve("websocket error");
  });
}"""


async def test_jupyter_through_the_proxy(browser: Any, platform: Platform) -> None:
    from playwright.async_api import expect

    async with aiodocker.Docker() as docker:
        await ensure_image(docker, "zoe/jupyter:2", zapps_root=ROOT / "zapps")
    token = "proxied-secret"
    alice = await platform.new_user("webalice", "user", password_of("webalice"))
    status, execution = await platform.acall(
        "POST",
        "/executions",
        {
            "name": "web-jupyter",
            "zapp": "jupyter",
            "params": {"JUPYTER_TOKEN": token},
            # within the test node's 1 GiB (a limit above a node's capacity is refused)
            "resources": {"jupyter": {"memory": {"min": 512 << 20, "max": 1 << 30}}},
        },
        token=alice,
    )
    assert status == 201, execution
    eid = execution["id"]
    page = await new_page(browser, platform, "webalice", "user")
    try:
        await page.goto(f"/executions/{eid}")
        await expect(page.locator("h1 .state")).to_have_text("running", timeout=180_000)
        link = page.locator("a[data-endpoint='Jupyter Notebook']")
        await expect(link).to_have_attribute("href", f"/proxy/{eid}/jupyter0/8888/")

        # the notebook's own token is never typed: the proxy sends it
        async with page.context.expect_page() as opened:
            await link.click()
        notebook = await opened.value
        base = f"/proxy/{eid}/jupyter0/8888/"

        async def answers() -> bool:  # the container runs before its server listens
            return bool((await notebook.request.get(base + "api/status")).ok)

        await wait_for(answers, timeout=120, interval=0.5, what="the notebook, proxied")
        await notebook.reload()
        await expect(notebook).to_have_url(re.compile(rf"/proxy/{eid}/jupyter0/8888/"))
        await expect(notebook.locator("body")).not_to_contain_text("Token", timeout=120_000)
        printed = await notebook.evaluate(RUN_CELL, "print(6 * 7, 'through the proxy')")
        assert printed.strip() == "42 through the proxy", printed
        await screenshot(notebook, "jupyter-through-proxy")
        # back on the execution's page, the notebook's use charted meanwhile
        await expect(page.locator("tr[data-instance=jupyter0] .chart svg")).to_have_count(1)
        await screenshot(page, "execution-jupyter")

        # someone else's execution and one that does not exist look the same: 403
        other = await new_page(browser, platform, "webbob", "user")
        for path in (base, base + "api/status", "/proxy/999999999/jupyter0/8888/"):
            response = await other.request.get(path)
            assert response.status == 403, (path, response.status)
            assert await response.json() == {"error": "forbidden", "errors": []}
        await other.context.close()
        response = await page.request.get(f"/proxy/{eid}/nobody0/8888/")
        assert response.status == 403

        await platform.acall("POST", f"/executions/{eid}/terminate", token=alice)
        await expect(page.locator("h1 .state")).to_have_text("terminated")
        await expect(link).to_have_count(0)  # the ended execution's link is gone
        response = await page.request.get(f"/proxy/{eid}/jupyter0/8888/api/status")
        assert response.status == 404
    finally:
        await platform.acall("POST", f"/executions/{eid}/terminate")
        await page.context.close()
