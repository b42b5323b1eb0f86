"""A PostgreSQL server of a test's or a benchmark's own, made with Debian's binaries,
that may be stopped and restarted without disturbing anything else on the machine; and
a streaming standby of it, that may be promoted when the primary is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """The directory of Debian's PostgreSQL server binaries (the newest version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts)
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL server of a test's or a benchmark's own: a data directory in
    ``base``, a free port on 127.0.0.1, trust authentication, run as the ``postgres``
    user (the server refuses root).

    For what stops or restarts PostgreSQL: the machine's server is shared, and must
    never be stopped. ``remove`` stops this one and deletes its directory.

    ``settings`` are server settings (``-c name=value``) of this server alone: they are
    not copied to a standby made of it (``standby``), so that, say,
    ``synchronous_standby_names`` stays the primary's. ``initdb --auth=trust`` already
    lets 127.0.0.1 connect for replication, and ``wal_level`` is ``replica`` by default.
    """

    def __init__(self, base: Path, settings: dict[str, str] | None = None) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.base = base
        self.data = self.base / "data"
        self.settings = {"wal_level": "replica", **(settings or {})}
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/"
        self.address = f"127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        # the server refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", str(self.bin / args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.decode(errors='replace')}")

    def _pg_ctl(self, *args: str, timeout: float = 120) -> None:
        self._run("pg_ctl", "-D", str(self.data), *args, timeout=timeout)

    def start(self, timeout: float = 120) -> None:
        """Make the cluster (the first time) and start the server; waits until it answers."""
        if not (self.data / "PG_VERSION").exists():
            self.base.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.base, "postgres", "postgres")
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c max_connections=200"
        )
        for name, value in self.settings.items():
            options += f" -c {name}='{value}'"
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(timeout)),
            "-l",
            str(self.base / "server.log"),
            "-o",
            options,
            timeout=timeout + 10,
        )

    def stop_server(self, timeout: float = 120, mode: str = "fast") -> None:
        """Stop the server; its data stays for ``start``. "fast": connections are cut,
        transactions rolled back; "immediate": every server process quits at once, as
        in a crash (a start recovers from the WAL)."""
        self._pg_ctl("stop", "-m", mode, "-w", "-t", str(int(timeout)), timeout=timeout + 10)

    def standby(self, base: Path, settings: dict[str, str] | None = None) -> PrivatePostgres:
        """A streaming standby of this (running) server, in ``base``, not started yet:
        ``pg_basebackup -R`` copies the data directory and writes ``standby.signal`` and
        ``primary_conninfo`` (its ``application_name`` is the standby's directory name)."""
        other = PrivatePostgres(base, settings)
        base.mkdir(parents=True, exist_ok=True)
        shutil.chown(base, "postgres", "postgres")
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres application_name={base.name}"
        self._run(
            "pg_basebackup",
            "-d",
            conninfo,
            "-D",
            str(other.data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        return other

    def wait_streaming(self, standby: PrivatePostgres, timeout: float = 60) -> None:
        """Wait until ``standby`` streams from this server, and when this server commits
        synchronously, until it is the synchronous standby (commits wait for it)."""
        name = standby.base.name.replace("'", "''")
        wanted = "sync" if self.settings.get("synchronous_standby_names") else "async"
        sql = (
            "SELECT state || ' ' || sync_state FROM pg_stat_replication"
            f" WHERE application_name = '{name}'"
        )
        deadline = time.monotonic() + timeout
        while (seen := self.query(sql)) not in (f"streaming {wanted}", "streaming sync"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} does not stream from {self.address}: {seen!r}")
            time.sleep(0.1)

    def promote(self, timeout: float = 120) -> None:
        """Make this standby a primary (``pg_ctl promote``); returns once it accepts writes."""
        self._pg_ctl("promote", "-w", "-t", str(int(timeout)), timeout=timeout + 10)

    def query(self, sql: str) -> str:
        """One value, as ``psql`` prints it, of ``sql`` run in the database postgres."""
        cmd = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-U", "postgres", "-d", "postgres", "-XAtc", sql]
        done = subprocess.run(cmd, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def restart(self, down_for: float = 0.0, timeout: float = 120) -> None:
        """Stop the server, stay down for ``down_for`` seconds, start it again."""
        self.stop_server(timeout)
        time.sleep(down_for)
        self.start(timeout)

    def pids(self) -> list[int]:
        """The server's processes: the postmaster and its children."""
        try:
            main = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        out = [main]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == main:
                        out.append(int(entry.name))
        return out

    def remove(self) -> None:
        """Stop the server at once (its data is thrown away) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", timeout=40)
        finally:
            for pid in self.pids():  # what a failed stop left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.base, ignore_errors=True)
