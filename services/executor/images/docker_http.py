"""The Docker calls that make images, as raw HTTP where aiodocker falls short: an import
of a root file system tarball, and a build streamed from a context on disk.

A failed build leaves no tag: the engine tags only a finished build, and an import tags
in the same request that creates the image.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiodocker
import structlog
from aiodocker.exceptions import DockerError
from yarl import URL

from services.executor.images.errors import ImageBuildFailed
from services.executor.images.host import file_chunks, stage_context, write_context
from services.executor.images.refs import read_context_file, split_ref

log = structlog.get_logger("services.executor.images")


async def image_present(docker: aiodocker.Docker, ref: str) -> bool:
    """Whether the engine holds an image tagged `ref`."""
    try:
        await docker.images.inspect(ref)
    except DockerError as e:
        if e.status == 404:
            return False
        raise
    return True


async def post_stream(
    docker: aiodocker.Docker,
    path: str,
    query: list[tuple[str, str]],
    data: Any,
    content_type: str,
    on_line: Callable[[dict[str, Any]], None] | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """POST a body to a streaming endpoint (`build`, `images/create`) and read its lines.

    The query goes in the URL, because `images/create` takes `changes` more than once
    and aiodocker's parameters are a plain dict. aiodocker has no call for an import
    from a tarball (its `import_image` is `docker load`), hence the raw request.
    `on_line` sees each line as it arrives (a build's progress).
    """
    url = URL(path).with_query(query)
    async with docker._query(
        url,
        "POST",
        data=data,
        headers={"Content-Type": content_type, **(headers or {})},
        timeout=None,
    ) as response:
        lines = []
        async for raw in response.content:
            if raw.strip():
                lines.append(json.loads(raw))
                if on_line is not None:
                    on_line(lines[-1])
    return lines


def stream_error(lines: list[dict[str, Any]]) -> str | None:
    """The first error a streaming endpoint reported in its lines; None if none."""
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail") or {}
            return str(detail.get("message") or line.get("error") or "unknown error")
    return None


async def import_rootfs(
    docker: aiodocker.Docker, ref: str, data: Any, changes: Iterable[str]
) -> None:
    """Import a root file system tarball as the single-layer image `ref`."""
    repo, tag = split_ref(ref)
    query = [("fromSrc", "-"), ("repo", repo), ("tag", tag)]
    query += [("changes", c) for c in changes]
    lines = await post_stream(docker, "images/create", query, data, "application/x-tar")
    error = stream_error(lines)
    if error:
        raise ImageBuildFailed(ref, f"import failed: {error}")


async def build_dockerfile(docker: aiodocker.Docker, ref: str, image_dir: Path) -> None:
    """Build `image_dir` (its Dockerfile, files and staged `CONTEXT`) and tag it `ref`."""
    entries = read_context_file(image_dir)
    with tempfile.TemporaryDirectory(prefix="zoe-build-") as tmp:
        staged = Path(tmp) / "staged"
        staged.mkdir()
        await stage_context(ref, entries, staged)
        context = Path(tmp) / "context.tar"
        await asyncio.to_thread(write_context, context, image_dir, staged)
        query = [
            ("t", ref),
            ("rm", "1"),
            ("forcerm", "1"),  # no intermediate container is left behind, even on failure
            ("pull", "0"),
            # RUN steps reach package mirrors the way the host does (its resolver and hosts).
            ("networkmode", "host"),
            ("labels", json.dumps({"zoe.image.source": str(image_dir)})),
        ]

        def progress(line: dict[str, Any]) -> None:
            text = str(line.get("stream", ""))
            if text.startswith("Step "):
                log.info("image.step", ref=ref, step=text.strip()[:160])

        lines = await post_stream(
            docker, "build", query, file_chunks(context), "application/x-tar", progress
        )
    error = stream_error(lines)
    if error:
        output = "".join(line.get("stream", "") for line in lines).strip().splitlines()
        tail = "\n".join(output[-15:])
        raise ImageBuildFailed(ref, f"build failed: {error}" + (f"\n{tail}" if tail else ""))
