"""What making an image does on the host: run a command, stage the files a `CONTEXT`
names, and write or stream the tarballs sent to the engine."""

from __future__ import annotations

import asyncio
import glob
import shutil
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from services.executor.images.errors import ImageBuildFailed
from services.executor.images.refs import CONTEXT_FILE, ContextEntry

log = structlog.get_logger("services.executor.images")

_CHUNK = 1 << 20


async def run_command(*argv: str) -> bytes:
    """Run a host command to completion; raise with its output when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        text = (out or b"").decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {text}")
    return out or b""


async def stage_context(ref: str, entries: list[ContextEntry], into: Path) -> None:
    """Put what `entries` name into the folder `into`, on the host."""
    for entry in entries:
        dest = into / entry.dest
        dest.mkdir(parents=True, exist_ok=True)
        if entry.kind == "pip":
            log.info("image.staging", ref=ref, pip=" ".join(entry.args))
            pip = (sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest))
            await run_command(*pip, *entry.args)
            continue
        for pattern in entry.args:
            found = sorted(glob.glob(pattern))
            if not found:
                raise ImageBuildFailed(ref, f"{CONTEXT_FILE}: no host file matches {pattern}")
            for source in found:
                log.info("image.staging", ref=ref, copy=source)
                await asyncio.to_thread(shutil.copy2, source, dest)


def write_context(out: Path, image_dir: Path, staged: Path) -> None:
    """A plain tar of the image folder with the staged files added (they win on a clash).

    Not compressed: a large staged file is usually a compressed archive already, and the
    engine reads the tar straight from a local socket.
    """
    with tarfile.open(out, mode="w") as tar:
        tar.add(image_dir, arcname=".")
        for entry in sorted(staged.iterdir()):
            tar.add(entry, arcname=entry.name)


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file read in chunks off the event loop."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk


async def tar_stream(root: Path) -> AsyncIterator[bytes]:
    """Stream `tar -c` of a directory (numeric owners, as the engine expects)."""
    proc = await asyncio.create_subprocess_exec(
        *("tar", "--numeric-owner", "-C", str(root), "-c", "."),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(_CHUNK):
            yield chunk
    finally:
        if proc.returncode is None and not proc.stdout.at_eof():
            proc.kill()  # the upload was abandoned: do not leave tar behind
    if await proc.wait() != 0:
        stderr = await proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"tar of {root} failed: {stderr.decode(errors='replace')}")
