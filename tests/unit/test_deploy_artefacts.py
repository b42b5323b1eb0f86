"""The deployment artefacts parse: the shell scripts, the compose file, the systemd units."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("script", sorted(DEPLOY.glob("*.sh")), ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_restart_script_is_executable_and_a_make_target() -> None:
    assert (DEPLOY / "restart.sh").stat().st_mode & 0o111
    assert "\nrestart:\n\tdeploy/restart.sh\n" in (ROOT / "Makefile").read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose")
def test_compose_file_is_valid() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # every image is built here, none pulled
    for service in ("rabbitmq", "postgres", "migrate", "api", "scheduler", "monitor", "executor"):
        assert f"\n  {service}:\n" in out
    assert out.count("build:") == 7


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify, with the units' /opt/zoe/.venv pointed at this venv (so
    that their ExecStart names programs that exist)."""
    venv = Path(sys.executable).parent.parent
    assert (venv / "bin" / "zoe-api").exists()
    names = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/zoe/.venv", str(venv))
        name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
        (tmp_path / unit.name).write_text(text)
        if name != unit.name:
            (tmp_path / name).symlink_to(tmp_path / unit.name)
        names.append(str(tmp_path / name))
    assert {Path(n).name for n in names} == {
        "zoe-api.service",
        "zoe-scheduler@1.service",
        "zoe-monitor.service",
        "zoe-executor.service",
    }
    result = subprocess.run(
        ["/usr/bin/systemd-analyze", "verify", *names], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "zoe-" in line]
    assert ours == [], result.stderr
