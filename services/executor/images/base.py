"""Base images, made from files of the host and imported as single-layer images.

- `zoe/busybox:1`: the host's static busybox (Debian's `busybox-static`) and its applet
  links;
- `zoe/debian:12`: a debootstrap of bookworm with python3-minimal (Debian's
  `debootstrap`).

A running executor never installs host packages: when a recipe's tool is missing, the
build fails saying which Debian package to install (deploy/install.sh installs them).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import structlog

from services.executor.images.docker_http import import_rootfs
from services.executor.images.errors import ImageBuildFailed
from services.executor.images.host import run_command, tar_stream

log = structlog.get_logger("services.executor.images")

DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class BaseOptions:
    """What the base recipes take from the executor's settings."""

    debian_mirror: str = DEFAULT_DEBIAN_MIRROR


def _missing(ref: str, what: str, package: str) -> ImageBuildFailed:
    return ImageBuildFailed(
        ref, f"{what}: install the Debian package {package} (deploy/install.sh does)"
    )


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


def _static_busybox(ref: str) -> Path:
    path = Path("/bin/busybox")
    if not _is_static_elf(path):
        raise _missing(ref, f"{path} is not a statically linked busybox", "busybox-static")
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


async def make_busybox(docker: aiodocker.Docker, ref: str, options: BaseOptions) -> None:
    """Import the busybox base: the host's static busybox with its applets in /bin."""
    busybox = _static_busybox(ref)
    applets = (await run_command(str(busybox), "--list-full")).decode().split()
    rootfs = await asyncio.to_thread(_busybox_rootfs, busybox, applets)
    changes = [f"ENV PATH={_DEFAULT_PATH}", 'CMD ["sh"]', "LABEL zoe.image.base=busybox"]
    await import_rootfs(docker, ref, rootfs, changes)


def _finish_debian_root(root: Path, mirror: str) -> None:
    """Point apt at bookworm with its updates, add the host's local CAs, drop caches."""
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} bookworm main\n"
        f"deb {mirror} bookworm-updates main\n"
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


async def make_debian(docker: aiodocker.Docker, ref: str, options: BaseOptions) -> None:
    """Import the Debian base: debootstrap minbase of bookworm with python3-minimal."""
    if shutil.which("debootstrap") is None:
        raise _missing(ref, "debootstrap is not on the PATH", "debootstrap")
    mirror = options.debian_mirror
    with tempfile.TemporaryDirectory(prefix="zoe-debian-") as tmp:
        root = Path(tmp) / "rootfs"
        log.info("image.debootstrap", ref=ref, mirror=mirror)
        variant = ("--variant=minbase", "--include=python3-minimal")
        await run_command("debootstrap", *variant, "bookworm", str(root), mirror)
        await asyncio.to_thread(_finish_debian_root, root, mirror)
        env = [f"ENV PATH={_DEFAULT_PATH}", "ENV LANG=C.UTF-8"]
        changes = [*env, 'CMD ["bash"]', "LABEL zoe.image.base=debian"]
        await import_rootfs(docker, ref, tar_stream(root), changes)


BaseRecipe = Callable[[aiodocker.Docker, str, BaseOptions], Awaitable[None]]
BASE_IMAGES: dict[str, BaseRecipe] = {
    "zoe/busybox:1": make_busybox,
    "zoe/debian:12": make_debian,
}
