"""A ZApp container as the real engine runs it: confined, unprivileged, bounded.

An execution is started through the platform (api, scheduler, executor), then its
container is inspected and a process inside it tries to gain privileges through a
setuid-root program.
"""

from __future__ import annotations

import aiodocker
import pytest

from services.executor.images import ensure_image
from tests.conftest import TestEnv
from tests.e2e.conftest import ROOT, SERVE_FOREVER, Platform, containers_of, service, zapp

pytestmark = pytest.mark.e2e

DEBIAN = "zoe/debian:12"  # has python3: the setuid program below is a copy of it
MIB = 1 << 20


async def exec_in(container: aiodocker.containers.DockerContainer, user: str, cmd: str) -> str:
    """What ``sh -c cmd`` run as ``user`` in the container prints (stdout and stderr)."""
    run = await container.exec(["sh", "-c", cmd], user=user, stdout=True, stderr=True)
    out: list[bytes] = []
    async with run.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            out.append(message.data)
    info = await run.inspect()
    text = b"".join(out).decode()
    assert info["ExitCode"] == 0, text
    return text


async def test_a_zapp_container_is_confined_and_cannot_gain_privileges(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    await ensure_image(docker, DEBIAN, zapps_root=ROOT / "zapps")
    app = zapp(
        "confined",
        service("main", SERVE_FOREVER, image=DEBIAN, cores=0.25, memory=96 * MIB),
        will_end=False,
    )
    execution = await platform.submit(app, name="confined")
    eid = execution["id"]
    try:
        await platform.wait_state(eid, "running")
        (container,) = await containers_of(docker, test_env, eid)
        info = await container.show()
        host, config = info["HostConfig"], info["Config"]

        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["Privileged"] is False
        assert host["PidsLimit"] == 2048
        assert host["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-file": "3", "max-size": "10m"},
        }
        assert config["User"] == "1000:1000"
        assert (host["Memory"], host["MemorySwap"]) == (96 * MIB, 96 * MIB)
        assert host["NanoCpus"] == 250_000_000

        # what the kernel says of the ZApp's own process (PID 1)
        status = await exec_in(container, "1000:1000", "cat /proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == ["1000"] * 4
        assert fields["NoNewPrivs"].strip() == "1"
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[caps], 16) == 0, caps

        # a setuid-root program inside (as an image could ship one) gives nothing
        await exec_in(container, "0:0", "cp /usr/bin/python3 /tmp/rootpy && chmod 4755 /tmp/rootpy")
        listed = await exec_in(container, "1000:1000", "ls -l /tmp/rootpy")
        assert listed.startswith("-rwsr-xr-x 1 root root")
        euid = await exec_in(
            container, "1000:1000", "/tmp/rootpy -c 'import os; print(os.geteuid())'"
        )
        assert euid.strip() == "1000"

        # and the pids limit holds: threads past it are refused
        threads = await exec_in(
            container,
            "1000:1000",
            "python3 -c '"
            "import threading, time\n"
            "threading.stack_size(65536)\n"
            "n = 0\n"
            "try:\n"
            "    for _ in range(4000):\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "        n += 1\n"
            "except RuntimeError:\n"
            "    pass\n"
            "print(n)'",
        )
        assert 1000 < int(threads) < 2048
    finally:
        status, body = await platform.acall("POST", f"/executions/{eid}/terminate")
        assert status == 202, body
        await platform.wait_state(eid, "terminated", timeout=60)


async def test_only_a_role_that_may_runs_a_zapp_as_root(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    rooted = service("main", SERVE_FOREVER, cores=0.1) | {"run_as_root": True}
    body = {"name": "rooted", "application": zapp("rooted", rooted, will_end=False)}
    user = await platform.new_user("rootless")
    status, refused = await platform.acall("POST", "/executions", body, token=user)
    assert status == 403, refused
    assert refused["errors"][0]["path"] == "services[0].run_as_root"

    status, execution = await platform.acall("POST", "/executions", body)  # the admin
    assert status == 201, execution
    eid = execution["id"]
    try:
        await platform.wait_state(eid, "running")
        (container,) = await containers_of(docker, test_env, eid)
        info = await container.show()
        assert info["Config"]["User"] == "0:0"
        assert "ALL" not in info["HostConfig"]["CapDrop"]
        assert "NET_RAW" in info["HostConfig"]["CapDrop"]
        assert info["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
    finally:
        await platform.acall("POST", f"/executions/{eid}/terminate")
        await platform.wait_state(eid, "terminated")
