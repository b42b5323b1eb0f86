"""deploy/registry.sh: the deployment's registry starts, answers, keeps what is pushed,
and start, stop and status are idempotent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

import aiodocker
import pytest

from tests.e2e.conftest import ROOT, _free_port

pytestmark = pytest.mark.e2e


def registry(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "deploy" / "registry.sh"), *args],
        cwd=ROOT,
        # pid file, log and config in the test's folder, not var/
        env={**os.environ, "RUN_DIR": str(tmp / "run"), "LOG_DIR": str(tmp / "log")},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_start_push_pull_stop(tmp_path: Path, base_image: str) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    opts = ["--addr", addr, "--data", str(tmp_path / "data"), "--name", "zt-test-registry"]
    stopped = registry("status", *opts, tmp=tmp_path)
    assert stopped.returncode == 1 and "not running" in stopped.stdout
    try:
        for _ in range(2):  # a second start finds it running
            started = registry("start", *opts, tmp=tmp_path)
            assert started.returncode == 0, started.stdout + started.stderr
        assert "already running" in started.stdout
        status = registry("status", *opts, tmp=tmp_path)
        assert status.returncode == 0 and "answers" in status.stdout
        answer = await asyncio.to_thread(urllib.request.urlopen, f"http://{addr}/v2/", timeout=5)
        assert answer.status == 200

        # the machine's engine trusts a registry on loopback: push, forget, pull back
        ref = f"{addr}/zoe/zt-registry-{uuid.uuid4().hex[:8]}:1"
        async with aiodocker.Docker() as docker:
            await docker.images.tag(base_image, ref.rpartition(":")[0], tag="1")
            try:
                await docker.images.push(ref)
                await docker.images.delete(ref)
                await docker.images.pull(ref)
                assert (await docker.images.inspect(ref))["Id"] == (
                    await docker.images.inspect(base_image)
                )["Id"]
            finally:
                await docker.images.delete(ref, force=True)
        assert any((tmp_path / "data").rglob("repositories"))
    finally:
        for _ in range(2):  # a second stop finds nothing to stop
            stop = registry("stop", *opts, tmp=tmp_path)
            assert stop.returncode == 0, stop.stdout + stop.stderr
    assert registry("status", *opts, tmp=tmp_path).returncode == 1
    assert not (tmp_path / "run" / "zt-test-registry.pid").exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    bad = registry("start", "--addr", "nowhere", tmp=tmp_path)
    assert bad.returncode != 0 and "is not HOST:PORT" in bad.stderr
    bad = registry("start", "--colour", "red", tmp=tmp_path)
    assert bad.returncode != 0 and "unknown option --colour" in bad.stderr
