"""Making images: the FROM graph of a ZApp image built base first, one build per
reference.

Every step checks first whether the image is already there, so a repeated call costs one
inspect per image. Base images come from their recipes (services/executor/images/base.py);
ZApp images from their Dockerfiles (services/executor/images/refs.py finds them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import aiohttp
import structlog
from aiodocker.exceptions import DockerError

from services.executor.images import registry
from services.executor.images.base import BASE_IMAGES, DEFAULT_DEBIAN_MIRROR, BaseOptions
from services.executor.images.docker_http import build_dockerfile, image_present
from services.executor.images.errors import ImageBuildFailed, ImageError, UnknownImage
from services.executor.images.refs import (
    dockerfile_dependencies,
    find_image_dir,
    library_image_refs,
    zapp_image_refs,
    zapp_used_images,
)

log = structlog.get_logger("services.executor.images")


async def ensure_image(
    docker: aiodocker.Docker,
    ref: str,
    *,
    zapps_root: Path,
    debian_mirror: str = DEFAULT_DEBIAN_MIRROR,
    registry: str = "",
) -> None:
    """Make sure the engine holds `ref`, making it (and what it is built FROM) if needed.

    With a ``registry`` (host:port), a missing image is pulled from there first, and
    one built here is pushed there (services/executor/images/registry.py).

    Raises UnknownImage when nothing defines `ref`, ImageBuildFailed when making it fails.
    Two callers racing on the same missing image both build it; the last tag wins and
    both get a working image, so callers that start many containers may want to
    serialise calls per reference (within one call of `ensure_images` that is done).
    """
    builds = _Builds(
        Path(zapps_root), asyncio.Semaphore(1), BaseOptions(debian_mirror), registry=registry
    )
    await _ensure(docker, ref, builds, chain=())


async def ensure_images(
    docker: aiodocker.Docker,
    refs: Iterable[str],
    *,
    zapps_root: Path,
    jobs: int = 2,
    check: bool = True,
    debian_mirror: str = DEFAULT_DEBIAN_MIRROR,
    registry: str = "",
) -> dict[str, ImageError]:
    """`ensure_image` for many references, building up to `jobs` images at once.

    An image that several of them are built FROM is made once. Every reference is tried,
    whatever happens to the others. Returns the failures by reference; with `check` (the
    default) the first one is raised instead, the others logged.
    """
    builds = _Builds(
        Path(zapps_root),
        asyncio.Semaphore(max(1, jobs)),
        BaseOptions(debian_mirror),
        registry=registry,
    )
    wanted = list(dict.fromkeys(refs))
    results = await asyncio.gather(
        *(_ensure(docker, ref, builds, chain=()) for ref in wanted), return_exceptions=True
    )
    failures: dict[str, ImageError] = {}
    for ref, result in zip(wanted, results, strict=True):
        if isinstance(result, ImageError):
            failures[ref] = result
        elif isinstance(result, BaseException):  # a bug, or a cancellation: not a build error
            raise result
    if check and failures:
        first, *others = failures.values()
        for other in others:
            log.error("image.failed", error=str(other))
        raise first
    return failures


@dataclass
class _Builds:
    """What the builds of one call share: one build per reference, `slots` at once."""

    zapps_root: Path
    slots: asyncio.Semaphore
    options: BaseOptions
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    registry: str = ""  # pulled from before a build, pushed to after one


async def _ensure(
    docker: aiodocker.Docker, ref: str, builds: _Builds, chain: tuple[str, ...]
) -> None:
    if ref in chain:
        raise ImageBuildFailed(ref, f"FROM cycle: {' -> '.join((*chain, ref))}")
    # Locks are taken along a FROM chain, child before parent; the chain has no cycle
    # (refused above), so two builds never wait on each other.
    async with builds.locks.setdefault(ref, asyncio.Lock()):
        if await image_present(docker, ref):
            log.debug("image.present", ref=ref)
            return
        if builds.registry and await registry.pull(docker, builds.registry, ref):
            return
        await _make(docker, ref, builds, chain)
        if builds.registry:
            try:
                await registry.push(docker, builds.registry, ref)
            except ImageError as e:  # the image is here: only the other hosts miss it
                log.warning("image.push_failed", ref=ref, reason=str(e))


async def _make(
    docker: aiodocker.Docker, ref: str, builds: _Builds, chain: tuple[str, ...]
) -> None:
    """Build `ref` here: a base from its recipe, a ZApp image from its Dockerfile."""
    if ref in BASE_IMAGES:
        log.info("image.making_base", ref=ref)
        try:
            async with builds.slots:
                await BASE_IMAGES[ref](docker, ref, builds.options)
        except (RuntimeError, OSError, DockerError, aiohttp.ClientError) as e:
            raise ImageBuildFailed(ref, str(e)) from e
        log.info("image.made", ref=ref)
        return

    image_dir = find_image_dir(ref, builds.zapps_root)
    try:
        deps = dockerfile_dependencies((image_dir / "Dockerfile").read_text())
    except ValueError as e:
        raise ImageBuildFailed(ref, f"{image_dir / 'Dockerfile'}: {e}") from e
    for dep in deps:
        try:
            await _ensure(docker, dep, builds, (*chain, ref))
        except UnknownImage as e:
            # Nothing pulls from outside: a FROM image is present, in the deployment's
            # registry, or made here.
            raise ImageBuildFailed(ref, f"cannot get {dep} it is built from: {e}") from e
    log.info("image.building", ref=ref, source=str(image_dir))
    started = asyncio.get_running_loop().time()
    try:
        async with builds.slots:
            await build_dockerfile(docker, ref, image_dir)
    except DockerError as e:
        raise ImageBuildFailed(ref, f"build failed: {e.message}") from e
    except (RuntimeError, OSError) as e:  # staging its CONTEXT on the host failed
        raise ImageBuildFailed(ref, str(e)) from e
    seconds = round(asyncio.get_running_loop().time() - started, 1)
    log.info("image.built", ref=ref, seconds=seconds)


async def build_zapp(
    docker: aiodocker.Docker,
    zapp_dir: Path,
    *,
    jobs: int = 1,
    debian_mirror: str = DEFAULT_DEBIAN_MIRROR,
    registry: str = "",
) -> list[str]:
    """Make every image a ZApp folder defines or runs (and their bases); return them.

    With a ``registry``, an image it holds is pulled rather than built, and one built
    is pushed there.

    Images of other ZApps are found beside it, in `zapp_dir`'s parent. The references
    are those the folder defines (name order), then those only its descriptions name.
    """
    zapp_dir = Path(zapp_dir)
    if not zapp_dir.is_dir():
        raise UnknownImage(str(zapp_dir), "no such ZApp folder")
    refs = list(dict.fromkeys([*zapp_image_refs(zapp_dir), *zapp_used_images(zapp_dir)]))
    await ensure_images(
        docker,
        refs,
        zapps_root=zapp_dir.parent,
        jobs=jobs,
        debian_mirror=debian_mirror,
        registry=registry,
    )
    return refs


async def build_library(
    docker: aiodocker.Docker,
    zapps_root: Path,
    *,
    jobs: int = 2,
    debian_mirror: str = DEFAULT_DEBIAN_MIRROR,
) -> list[str]:
    """Make every image of every ZApp folder under `zapps_root`; return the references."""
    refs = library_image_refs(zapps_root)
    await ensure_images(
        docker, refs, zapps_root=Path(zapps_root), jobs=jobs, debian_mirror=debian_mirror
    )
    return refs
