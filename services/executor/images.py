"""Local image building: no registry is ever contacted.

Two kinds of image exist on a Zoe host:

- **Base images**, made from files of the host: `zoe/busybox:1` (the static busybox and
  its applet links) and `zoe/debian:12` (a debootstrap of bookworm with python3-minimal).
  Each is a root file system imported as a single-layer image.
- **ZApp images**: `zapps/<zapp>/images/<name>/Dockerfile` builds `zoe/<name>:<tag>`,
  the tag read from the `TAG` file beside it. Its `FROM` image (a base or another ZApp
  image) is made first. An optional `CONTEXT` file beside them lists files to stage into
  the build context from the host (a large wheel that lies on the host's disk, say), so
  they need not live in the repository: see `read_context_file`.

Every step checks first whether the image is already there, so a repeated call costs one
inspect per image. A failed build leaves no tag: the engine tags only a finished build,
and an import tags in the same request that creates the image.

CLI: `python -m services.executor.images build REF... | build --zapp DIR | build --all |
present REF`.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import structlog
from aiodocker.exceptions import DockerError
from yarl import URL

from common.errors import ZoeError

log = structlog.get_logger(__name__)

ZAPP_REPO_PREFIX = "zoe/"
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_MIRROR = os.environ.get("ZOE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CONTEXT_FILE = "CONTEXT"
_CHUNK = 1 << 20


class ImageError(ZoeError):
    """An image cannot be made; `ref` names it and `reason` says why."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"image {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class UnknownImage(ImageError):
    """Neither a base image nor a ZApp Dockerfile defines this reference."""


class ImageBuildFailed(ImageError):
    """The recipe exists but building or importing it failed; nothing was tagged."""


# --------------------------------------------------------------------------- references


def split_ref(ref: str) -> tuple[str, str]:
    """`repo:tag` -> (repo, tag); a missing tag means `latest` (a port is not a tag)."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _read_tag(image_dir: Path) -> str:
    tag_file = image_dir / "TAG"
    ref = f"{ZAPP_REPO_PREFIX}{image_dir.name}"
    if not tag_file.is_file():
        raise ImageError(ref, f"{tag_file} is missing (it holds the image tag, e.g. 1)")
    tag = tag_file.read_text().strip()
    if not _TAG_RE.fullmatch(tag):
        raise ImageError(ref, f"{tag_file} holds {tag!r}, not a valid tag")
    return tag


def zapp_image_refs(zapp_dir: Path | str) -> list[str]:
    """The references of the images a ZApp folder defines, in name order."""
    refs = []
    for dockerfile in sorted(Path(zapp_dir).glob("images/*/Dockerfile")):
        image_dir = dockerfile.parent
        if not _NAME_RE.fullmatch(image_dir.name):
            raise ImageError(
                f"{ZAPP_REPO_PREFIX}{image_dir.name}",
                f"folder name {image_dir} must be lower-case letters, digits and . _ -",
            )
        refs.append(f"{ZAPP_REPO_PREFIX}{image_dir.name}:{_read_tag(image_dir)}")
    return refs


def find_image_dir(ref: str, zapps_root: Path) -> Path:
    """The folder `zapps_root/<zapp>/images/<name>/` whose Dockerfile builds `ref`."""
    repo, tag = split_ref(ref)
    name = repo.removeprefix(ZAPP_REPO_PREFIX)
    if not repo.startswith(ZAPP_REPO_PREFIX) or not _NAME_RE.fullmatch(name):
        raise UnknownImage(ref, f"not a base image and not a ZApp image ({ZAPP_REPO_PREFIX}NAME)")
    candidates = sorted(p.parent for p in zapps_root.glob(f"*/images/{name}/Dockerfile"))
    if not candidates:
        raise UnknownImage(ref, f"no {zapps_root}/*/images/{name}/Dockerfile defines it")
    found = [d for d in candidates if _read_tag(d) == tag]
    if not found:
        have = ", ".join(f"{d} (tag {_read_tag(d)})" for d in candidates)
        raise UnknownImage(ref, f"tag {tag} is not defined; found {have}")
    if len(found) > 1:
        raise UnknownImage(ref, f"defined twice: {', '.join(map(str, found))}")
    return found[0]


def dockerfile_dependencies(text: str) -> list[str]:
    """Images a Dockerfile needs: every `FROM` and `COPY --from=` that is not a stage.

    Line continuations are joined; `scratch`, stage names and stage numbers are skipped.
    A reference built from `ARG`s cannot be resolved here and is refused.
    """
    deps: list[str] = []
    stages: set[str] = set()
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            if not args:
                continue
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2].lower())
            deps.append(args[0])
        elif instruction == "COPY":
            deps += [w.split("=", 1)[1] for w in words[1:] if w.startswith("--from=")]
    result = []
    for dep in deps:
        if dep.lower() in stages or dep.isdigit() or dep == "scratch" or dep in result:
            continue
        if "$" in dep:
            raise ValueError(f"image {dep!r} uses a build argument; name it literally")
        result.append(dep)
    return result


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One line of a `CONTEXT` file: what to stage into the folder `dest` of the context."""

    kind: str  # "pip" or "copy"
    dest: str
    args: tuple[str, ...]


def read_context_file(image_dir: Path) -> list[ContextEntry]:
    """The staging entries of `image_dir/CONTEXT`; none when there is no such file.

    One entry a line; `#` starts a comment. `DEST` is a folder inside the build context:

    - `pip DEST REQUIREMENT [PIP-OPTION...]`: `pip download --no-deps` on the host, so the
      host's pip configuration applies (its find-links and indexes), e.g.
      `pip wheels torch==2.13.0+cpu` takes the CPU wheel that lies on the host's disk;
    - `copy DEST PATH...`: host files (absolute paths or glob patterns, each must match).

    Staged files exist only in the context sent to the engine, never in the repository;
    a Dockerfile uses them with `COPY DEST/... ...`. Raises `ImageError` for a bad line.
    """
    path = image_dir / CONTEXT_FILE
    if not path.is_file():
        return []
    ref = f"{ZAPP_REPO_PREFIX}{image_dir.name}"
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}, line {number}"
        if words[0] not in ("pip", "copy") or len(words) < 3:
            raise ImageError(ref, f"{where}: expected 'pip DEST REQUIREMENT' or 'copy DEST PATH'")
        dest = words[1].strip("/") or "."
        if words[1].startswith("/") or ".." in Path(dest).parts:
            raise ImageError(ref, f"{where}: DEST must be a folder inside the build context")
        if words[0] == "copy" and not all(Path(w).is_absolute() for w in words[2:]):
            raise ImageError(ref, f"{where}: copy takes absolute host paths")
        entries.append(ContextEntry(words[0], dest, tuple(words[2:])))
    return entries


async def _stage(ref: str, entries: list[ContextEntry], into: Path) -> None:
    """Put what `entries` name into the folder `into`, on the host."""
    for entry in entries:
        dest = into / entry.dest
        dest.mkdir(parents=True, exist_ok=True)
        if entry.kind == "pip":
            log.info("image.staging", ref=ref, pip=" ".join(entry.args))
            pip = (sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest))
            await _run(*pip, *entry.args)
            continue
        for pattern in entry.args:
            found = sorted(glob.glob(pattern))
            if not found:
                raise ImageBuildFailed(ref, f"{CONTEXT_FILE}: no host file matches {pattern}")
            for source in found:
                log.info("image.staging", ref=ref, copy=source)
                await asyncio.to_thread(shutil.copy2, source, dest)


# --------------------------------------------------------------------------- engine calls


async def image_present(docker: aiodocker.Docker, ref: str) -> bool:
    """Whether the engine holds an image tagged `ref`."""
    try:
        await docker.images.inspect(ref)
    except DockerError as e:
        if e.status == 404:
            return False
        raise
    return True


async def _post_stream(
    docker: aiodocker.Docker,
    path: str,
    query: list[tuple[str, str]],
    data: Any,
    content_type: str,
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """POST a body to a streaming endpoint (`build`, `images/create`) and read its lines.

    The query goes in the URL, because `images/create` takes `changes` more than once
    and aiodocker's parameters are a plain dict. aiodocker has no call for an import
    from a tarball (its `import_image` is `docker load`), hence the raw request.
    `on_line` sees each line as it arrives (a build's progress).
    """
    url = URL(path).with_query(query)
    async with docker._query(
        url, "POST", data=data, headers={"Content-Type": content_type}, timeout=None
    ) as response:
        lines = []
        async for raw in response.content:
            if raw.strip():
                lines.append(json.loads(raw))
                if on_line is not None:
                    on_line(lines[-1])
    return lines


def _stream_error(lines: list[dict[str, Any]]) -> str | None:
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail") or {}
            return str(detail.get("message") or line.get("error") or "unknown error")
    return None


async def _import_rootfs(
    docker: aiodocker.Docker, ref: str, data: Any, changes: Iterable[str]
) -> None:
    """Import a root file system tarball as the single-layer image `ref`."""
    repo, tag = split_ref(ref)
    query = [("fromSrc", "-"), ("repo", repo), ("tag", tag)]
    query += [("changes", c) for c in changes]
    lines = await _post_stream(docker, "images/create", query, data, "application/x-tar")
    error = _stream_error(lines)
    if error:
        raise ImageBuildFailed(ref, f"import failed: {error}")


async def _build_dockerfile(docker: aiodocker.Docker, ref: str, image_dir: Path) -> None:
    """Build `image_dir` (its Dockerfile, files and staged `CONTEXT`) and tag it `ref`."""
    entries = read_context_file(image_dir)
    with tempfile.TemporaryDirectory(prefix="zoe-build-") as tmp:
        staged = Path(tmp) / "staged"
        staged.mkdir()
        await _stage(ref, entries, staged)
        context = Path(tmp) / "context.tar"
        await asyncio.to_thread(_write_context, context, image_dir, staged)
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

        lines = await _post_stream(
            docker, "build", query, _file_chunks(context), "application/x-tar", progress
        )
    error = _stream_error(lines)
    if error:
        output = "".join(line.get("stream", "") for line in lines).strip().splitlines()
        tail = "\n".join(output[-15:])
        raise ImageBuildFailed(ref, f"build failed: {error}" + (f"\n{tail}" if tail else ""))


def _write_context(out: Path, image_dir: Path, staged: Path) -> None:
    """A plain tar of the image folder with the staged files added (they win on a clash).

    Not compressed: a large staged file is usually a compressed archive already, and the
    engine reads the tar straight from a local socket.
    """
    with tarfile.open(out, mode="w") as tar:
        tar.add(image_dir, arcname=".")
        for entry in sorted(staged.iterdir()):
            tar.add(entry, arcname=entry.name)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk


# --------------------------------------------------------------------------- base images


async def _run(*argv: str) -> bytes:
    """Run a host command to completion; raise with its output when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        text = (out or b"").decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {text}")
    return out or b""


async def _apt_install(package: str) -> None:
    """Install a Debian package, refreshing the package lists only if the first try fails."""
    log.info("image.apt_install", package=package)
    env_cmd = ("env", "DEBIAN_FRONTEND=noninteractive")
    install = (*env_cmd, "apt-get", "install", "-y", "-q", "--no-install-recommends", package)
    try:
        await _run(*install)
    except RuntimeError:
        await _run("apt-get", "update", "-q")
        await _run(*install)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # only 64-bit ELF is expected here
        return False
    endian = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    pt_interp = 3
    types = (struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return pt_interp not in types


async def _static_busybox() -> Path:
    path = Path("/bin/busybox")
    if not _is_static_elf(path):
        await _apt_install("busybox-static")
    if not _is_static_elf(path):
        raise RuntimeError(f"{path} is not a statically linked busybox")
    return path


_ROOT_DIRS = "bin dev etc home proc root sbin sys usr usr/bin usr/local usr/local/bin usr/sbin var"
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def _busybox_rootfs(busybox: Path, applets: list[str]) -> bytes:
    """A tarball of a tiny root: /bin/busybox, an applet link per name, /etc, /tmp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in _ROOT_DIRS.split():
            add(d, tarfile.DIRTYPE, 0o700 if d == "root" else 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        links = {f"bin/{Path(a).name}" for a in applets} | set(applets)
        for link in sorted(links - {"bin/busybox"}):
            add(link, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, _PASSWD)
        add("etc/group", tarfile.REGTYPE, 0o644, _GROUP)
    return buf.getvalue()


async def make_busybox(docker: aiodocker.Docker, ref: str) -> None:
    """Import the busybox base: the host's static busybox with its applets in /bin."""
    busybox = await _static_busybox()
    applets = (await _run(str(busybox), "--list-full")).decode().split()
    rootfs = await asyncio.to_thread(_busybox_rootfs, busybox, applets)
    changes = [f"ENV PATH={_DEFAULT_PATH}", 'CMD ["sh"]', "LABEL zoe.image.base=busybox"]
    await _import_rootfs(docker, ref, rootfs, changes)


async def _tar_stream(root: Path) -> AsyncIterator[bytes]:
    """Stream `tar -c` of a directory (numeric owners, as the engine expects)."""
    proc = await asyncio.create_subprocess_exec(
        *("tar", "--numeric-owner", "-C", str(root), "-c", "."),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(1 << 20):
            yield chunk
    finally:
        if proc.returncode is None and not proc.stdout.at_eof():
            proc.kill()  # the upload was abandoned: do not leave tar behind
    if await proc.wait() != 0:
        stderr = await proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"tar of {root} failed: {stderr.decode(errors='replace')}")


def _finish_debian_root(root: Path) -> None:
    """Point apt at bookworm with its updates, add the host's local CAs, drop caches."""
    (root / "etc/apt/sources.list").write_text(
        f"deb {DEBIAN_MIRROR} bookworm main\n"
        f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n"
    )
    # A site whose HTTPS goes through its own CA lists it here; a Dockerfile that installs
    # ca-certificates then trusts it too (update-ca-certificates reads this folder).
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, root / local_cas.relative_to("/"), dirs_exist_ok=True)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


async def make_debian(docker: aiodocker.Docker, ref: str) -> None:
    """Import the Debian base: debootstrap minbase of bookworm with python3-minimal."""
    if shutil.which("debootstrap") is None:
        await _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="zoe-debian-") as tmp:
        root = Path(tmp) / "rootfs"
        log.info("image.debootstrap", ref=ref, mirror=DEBIAN_MIRROR)
        variant = ("--variant=minbase", "--include=python3-minimal")
        await _run("debootstrap", *variant, "bookworm", str(root), DEBIAN_MIRROR)
        await asyncio.to_thread(_finish_debian_root, root)
        env = [f"ENV PATH={_DEFAULT_PATH}", "ENV LANG=C.UTF-8"]
        changes = [*env, 'CMD ["bash"]', "LABEL zoe.image.base=debian"]
        await _import_rootfs(docker, ref, _tar_stream(root), changes)


BaseRecipe = Callable[[aiodocker.Docker, str], Awaitable[None]]
BASE_IMAGES: dict[str, BaseRecipe] = {
    "zoe/busybox:1": make_busybox,
    "zoe/debian:12": make_debian,
}


# --------------------------------------------------------------------------- public API


async def ensure_image(docker: aiodocker.Docker, ref: str, *, zapps_root: Path) -> None:
    """Make sure the engine holds `ref`, making it (and what it is built FROM) if needed.

    Raises UnknownImage when nothing defines `ref`, ImageBuildFailed when making it fails.
    Two callers racing on the same missing image both build it; the last tag wins and
    both get a working image, so callers that start many containers may want to
    serialise calls per reference (within one call of `ensure_images` that is done).
    """
    await _ensure(docker, ref, _Builds(Path(zapps_root), asyncio.Semaphore(1)), chain=())


async def ensure_images(
    docker: aiodocker.Docker,
    refs: Iterable[str],
    *,
    zapps_root: Path,
    jobs: int = 2,
    check: bool = True,
) -> dict[str, ImageError]:
    """`ensure_image` for many references, building up to `jobs` images at once.

    An image that several of them are built FROM is made once. Every reference is tried,
    whatever happens to the others. Returns the failures by reference; with `check` (the
    default) the first one is raised instead, the others logged.
    """
    builds = _Builds(Path(zapps_root), asyncio.Semaphore(max(1, jobs)))
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
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)


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
        if ref in BASE_IMAGES:
            log.info("image.making_base", ref=ref)
            try:
                async with builds.slots:
                    await BASE_IMAGES[ref](docker, ref)
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
                # Nothing pulls from a registry: a FROM image must be present or made here.
                raise ImageBuildFailed(ref, f"cannot get {dep} it is built from: {e}") from e
        log.info("image.building", ref=ref, source=str(image_dir))
        started = asyncio.get_running_loop().time()
        try:
            async with builds.slots:
                await _build_dockerfile(docker, ref, image_dir)
        except DockerError as e:
            raise ImageBuildFailed(ref, f"build failed: {e.message}") from e
        except (RuntimeError, OSError) as e:  # staging its CONTEXT on the host failed
            raise ImageBuildFailed(ref, str(e)) from e
        seconds = round(asyncio.get_running_loop().time() - started, 1)
        log.info("image.built", ref=ref, seconds=seconds)


def zapp_used_images(zapp_dir: Path | str) -> list[str]:
    """The images the descriptions of a ZApp folder's manifest run, in order of use.

    A ZApp may run images that another folder of the library defines (one Spark image
    for every Spark ZApp). A folder without `manifest.json` uses none. Raises
    `ImageError` when the manifest or a description it names cannot be read as JSON.
    """
    zapp_dir = Path(zapp_dir)
    manifest = zapp_dir / "manifest.json"
    if not manifest.is_file():
        return []
    used: list[str] = []
    try:
        files = [z["description"] for z in json.loads(manifest.read_text())["zapps"]]
        for name in files:
            description = json.loads((zapp_dir / name).read_text())
            used += [s["image"] for s in description["services"] if isinstance(s, dict)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageError(str(zapp_dir), f"cannot read the images its ZApps use: {e!r}") from e
    return [ref for ref in dict.fromkeys(used) if isinstance(ref, str)]


async def build_zapp(docker: aiodocker.Docker, zapp_dir: Path, *, jobs: int = 1) -> list[str]:
    """Make every image a ZApp folder defines or runs (and their bases); return them.

    Images of other ZApps are found beside it, in `zapp_dir`'s parent. The references
    are those the folder defines (name order), then those only its descriptions name.
    """
    zapp_dir = Path(zapp_dir)
    if not zapp_dir.is_dir():
        raise UnknownImage(str(zapp_dir), "no such ZApp folder")
    refs = list(dict.fromkeys([*zapp_image_refs(zapp_dir), *zapp_used_images(zapp_dir)]))
    await ensure_images(docker, refs, zapps_root=zapp_dir.parent, jobs=jobs)
    return refs


def library_image_refs(zapps_root: Path | str) -> list[str]:
    """Every image the ZApp folders under `zapps_root` define or run, without repeats."""
    refs: list[str] = []
    for folder in sorted(p for p in Path(zapps_root).iterdir() if p.is_dir()):
        if not folder.name.startswith("."):
            refs += [*zapp_image_refs(folder), *zapp_used_images(folder)]
    return list(dict.fromkeys(refs))


async def build_library(docker: aiodocker.Docker, zapps_root: Path, *, jobs: int = 2) -> list[str]:
    """Make every image of every ZApp folder under `zapps_root`; return the references."""
    refs = library_image_refs(zapps_root)
    await ensure_images(docker, refs, zapps_root=Path(zapps_root), jobs=jobs)
    return refs


# --------------------------------------------------------------------------- CLI


async def _cli(args: argparse.Namespace) -> int:
    async with aiodocker.Docker() as docker:
        if args.command == "present":
            present = await image_present(docker, args.ref)
            print(f"{args.ref}: {'present' if present else 'absent'}")
            return 0 if present else 1
        if args.all:
            for ref in await build_library(docker, Path(args.zapps_root), jobs=args.jobs):
                print(f"{ref}: ready")
        for zapp in args.zapp:
            for ref in await build_zapp(docker, Path(zapp), jobs=args.jobs):
                print(f"{ref}: ready")
        if args.refs:
            await ensure_images(docker, args.refs, zapps_root=Path(args.zapps_root), jobs=args.jobs)
            for ref in args.refs:
                print(f"{ref}: ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`build REF...`, `build --zapp DIR`, `build --all`, or `present REF` (exit 0 or 1)."""
    parser = argparse.ArgumentParser(prog="python -m services.executor.images")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="make images unless already present")
    build.add_argument("refs", nargs="*", metavar="REF", help="e.g. zoe/busybox:1, zoe/hello:1")
    build.add_argument(
        "--zapp",
        action="append",
        default=[],
        metavar="DIR",
        help="make every image the ZApp folder DIR defines",
    )
    build.add_argument(
        "--all", action="store_true", help="make every image of every ZApp in --zapps-root"
    )
    build.add_argument(
        "--jobs", type=int, default=2, metavar="N", help="build up to N images at once (2)"
    )
    build.add_argument(
        "--zapps-root",
        default=os.environ.get("ZOE_ZAPPS_ROOT", "zapps"),
        help="where to look for ZApp Dockerfiles (default: $ZOE_ZAPPS_ROOT or zapps)",
    )
    present = sub.add_parser("present", help="exit 0 if REF is present, 1 if not")
    present.add_argument("ref", metavar="REF")
    args = parser.parse_args(argv)
    if args.command == "build" and not (args.refs or args.zapp or args.all):
        parser.error("build needs REF, --zapp DIR or --all")
    if not structlog.is_configured():
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        )
    try:
        return asyncio.run(_cli(args))
    except (ZoeError, DockerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
