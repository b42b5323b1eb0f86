"""RabbitMQ nodes of a test's or a benchmark's own, started with Debian's package: one
node (`PrivateBroker`) or a cluster of several (`PrivateCluster`), each with its own node
name, ports and data directory, so that they may be killed and restarted without
disturbing the machine's own broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.private_postgres import free_port


def pids_with_env(entry: str) -> list[int]:
    """Processes whose environment holds ``entry`` ("NAME=value")."""
    out = []
    wanted = entry.encode()
    for path in Path("/proc").iterdir():
        if path.name.isdigit():
            with contextlib.suppress(OSError):
                if wanted in (path / "environ").read_bytes().split(b"\0"):
                    out.append(int(path.name))
    return out


class PrivateBroker:
    """A RabbitMQ node of its own: its own node name, AMQP and distribution ports and
    data directory (under ``/tmp``: the server runs as the ``rabbitmq`` user). Nodes on
    this machine share the ``rabbitmq`` user's Erlang cookie, so they may be clustered.

    Thousands of quorum queues (one per hollow node) weigh on a broker: a shared one
    would slow every other user of this machine, and deleting them one by one (as a
    vhost deletion does) takes minutes. A private node is stopped and its directory
    deleted at the end instead.
    """

    def __init__(self, name: str) -> None:
        self.node = f"{name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = Path(f"/tmp/zoe-rabbitmq-{name}")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
        )
        return env

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl -n <this node> args``; returns its output, raises on failure."""
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stderr}")
        return done.stdout

    def start(self, timeout: float = 120) -> None:
        """Start the node (its data directory is kept from a former run); waits until it
        has booted."""
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True, timeout=60)
        deadline = time.monotonic() + timeout
        while True:  # until the node answers at all, await_startup fails at once
            done = subprocess.run(
                ["rabbitmqctl", "-q", "-n", self.node, "await_startup", "--timeout", "30"],
                capture_output=True,
                timeout=60,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.node} did not start: {done.stderr!r}")
            time.sleep(0.5)

    def restart(self, down_for: float = 0.0, timeout: float = 120) -> None:
        """Stop the node gracefully (its queues and messages are kept), stay down for
        ``down_for`` seconds, start it again."""
        self.ctl("shutdown", timeout=timeout)
        time.sleep(down_for)
        self.start(timeout)

    def pids(self) -> list[int]:
        """The node's processes (the Erlang VM and its helpers)."""
        return pids_with_env(f"RABBITMQ_NODENAME={self.node}")

    def kill(self) -> None:
        """SIGKILL the node's processes (its data directory stays: it may start again)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def keep_logs(self, dest: Path) -> None:
        """Copy the node's own logs to ``dest/<node name>`` (before `stop` deletes them)."""
        with contextlib.suppress(OSError):
            shutil.copytree(self.base / "log", dest / self.node, dirs_exist_ok=True)

    def stop(self) -> None:
        """Kill the node (its data is thrown away: a graceful stop of a thousand quorum
        queues takes minutes) and delete its directory."""
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateCluster:
    """``size`` private RabbitMQ nodes clustered together: the first is started, the
    others started and joined to it. ``url`` lists every node's host and port in the one
    URL form ZOE_AMQP_URL accepts (common/brokers.py)."""

    def __init__(self, name: str, size: int = 3) -> None:
        self.nodes = [PrivateBroker(f"{name}{chr(ord('a') + i)}") for i in range(size)]
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.url = f"amqp://guest:guest@{hosts}/"

    def start(self, timeout: float = 180) -> None:
        first, *others = self.nodes
        first.start(timeout)
        for node in others:
            node.start(timeout)
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        first.ctl("await_online_nodes", str(len(self.nodes)), "--timeout", str(int(timeout)))

    def running(self, via: PrivateBroker) -> set[str]:
        """The nodes ``via`` says are running in its cluster."""
        import json

        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def stop(self, keep_logs: Path | None = None) -> None:
        """Kill every node; with ``keep_logs``, their logs are copied there first."""
        for node in self.nodes:
            if keep_logs is not None:
                node.keep_logs(keep_logs)
            node.stop()
