"""A PostgreSQL server of a test's own, made with Debian's binaries, that the test may
stop and restart without disturbing anything else on the machine."""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """``initdb`` in a temporary folder, a server on a free loopback port, trust auth.

    Run as the ``postgres`` user (the server refuses root). ``stop`` and ``start`` may
    be called at will; ``remove`` stops it and deletes its data."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries (Debian package postgresql)")
        self.bin = Path(found[-1]).parent
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="zoe-pg-"))
        self.data = self.base / "data"
        shutil.chown(self.base, "postgres", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/"

    def _as_postgres(self, *argv: str) -> None:
        cmd = " ".join(f"'{a}'" for a in argv)
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", cmd],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        """Create the cluster and start the server."""
        self._as_postgres(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        self.start()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base}"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop the server at once (open connections are cut, as in a crash or failover)."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.base, ignore_errors=True)
