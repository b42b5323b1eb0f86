"""The ZApp shop through the API and the zoe CLI, on the running platform."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import urllib.request

import aiodocker
import pytest

from services.executor.images import ensure_image
from tests.e2e.conftest import ROOT, Platform

pytestmark = pytest.mark.e2e


def zoe(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        ZOE_URL=platform.url.removesuffix("/api/v1"),
        ZOE_ZAPPS_ROOT=str(ROOT / "zapps"),
        ZOE_TOKEN=platform.env.admin_token,
    )
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def test_shop_lists_shows_renders_and_validates(platform: Platform) -> None:
    status, zapps = await platform.acall("GET", "/zapps")
    assert status == 200
    hello = next(z for z in zapps if z["id"] == "hello")
    assert hello["category"] == "Demo" and hello["will_end"] is True
    status, detail = await platform.acall("GET", "/zapps/hello")
    assert status == 200
    assert "hello" in detail["readme"].lower()
    assert base64.b64decode(detail["logo"]).startswith(b"\x89PNG")
    assert detail["description"]["services"][0]["image"] == "zoe/hello:1"

    status, rendered = await platform.acall(
        "POST", "/zapps/hello/render", {"params": {"GREETING": "Bonjour"}}
    )
    assert status == 200
    env = dict(rendered["description"]["services"][0]["environment"])
    assert env["GREETING"] == "Bonjour"
    status, err = await platform.acall("POST", "/zapps/hello/render", {"params": {"NOPE": "1"}})
    assert status == 422 and any("NOPE" in e["path"] for e in err["errors"])
    status, err = await platform.acall("GET", "/zapps/does-not-exist")
    assert status == 404

    status, ok = await platform.acall("POST", "/zapps/validate", detail["description"])
    assert status == 200 and ok["valid"] and ok["instances"] == 1
    bad = dict(detail["description"], size=-1, services=[])
    status, err = await platform.acall("POST", "/zapps/validate", bad)
    assert status == 422
    assert {e["path"] for e in err["errors"]} >= {"size", "services"}


async def test_submit_from_the_shop_with_parameters(platform: Platform) -> None:
    async with aiodocker.Docker() as docker:
        await ensure_image(docker, "zoe/hello:1", zapps_root=ROOT / "zapps")
    status, err = await platform.acall(
        "POST", "/executions", {"name": "x", "zapp": "nope", "params": {}}
    )
    assert status == 400 and err["errors"][0]["path"] == "zapp"
    status, err = await platform.acall(
        "POST", "/executions", {"name": "x", "zapp": "hello", "params": {"GREETING": 5, "X": "1"}}
    )
    assert status in (400, 422)
    assert any("X" in e["path"] for e in err["errors"])

    done = await asyncio.to_thread(
        zoe,
        platform,
        "submit",
        "--zapp",
        "hello",
        "--param",
        "GREETING=Salut from the shop",
        "--wait",
        "end",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    execution = json.loads(done.stdout)
    assert execution["state"] == "finished"
    logs = await asyncio.to_thread(zoe, platform, "logs", str(execution["id"]), "hello0")
    assert "Salut from the shop" in logs.stdout


async def test_cli_lists_shows_and_validates(
    platform: Platform, tmp_path: os.PathLike[str]
) -> None:
    ls = await asyncio.to_thread(zoe, platform, "zapp", "ls")
    assert ls.returncode == 0 and "hello" in ls.stdout
    show = await asyncio.to_thread(zoe, platform, "zapp", "show", "hello")
    assert show.returncode == 0 and "GREETING" in show.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"name": "x", "version": 3, "will_end": True, "size": 1, "services": []})
    )
    check = await asyncio.to_thread(
        zoe, platform, "zapp", "validate", str(ROOT / "zapps/hello/hello.json"), str(bad)
    )
    assert check.returncode == 1
    assert "hello.json: valid" in check.stdout
    assert "name:" in check.stdout and "services:" in check.stdout
    missing = await asyncio.to_thread(zoe, platform, "get", "987654321")
    assert missing.returncode == 1 and "987654321" in missing.stderr


async def test_web_interface_is_served(platform: Platform) -> None:
    base = platform.url.removesuffix("/api/v1")

    def fetch(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return resp.status, resp.read().decode()

    status, page = await asyncio.to_thread(fetch, "/")
    assert status == 200 and "<title>Zoe</title>" in page
    status, script = await asyncio.to_thread(fetch, "/ui/app.js")
    assert status == 200 and "/api/v1" in script
