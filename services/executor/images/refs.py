"""ZApp image references and where their recipes are: no engine, no network.

A ZApp image is defined by `zapps/<zapp>/images/<name>/Dockerfile`, which builds
`zoe/<name>:<tag>`, the tag read from the `TAG` file beside it. An optional `CONTEXT`
file beside them lists files to stage into the build context from the host (a large
wheel that lies on the host's disk, say), so they need not live in the repository: see
`read_context_file`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from services.executor.images.errors import ImageError, UnknownImage

ZAPP_REPO_PREFIX = "zoe/"
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
CONTEXT_FILE = "CONTEXT"


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


def library_image_refs(zapps_root: Path | str) -> list[str]:
    """Every image the ZApp folders under `zapps_root` define or run, without repeats."""
    refs: list[str] = []
    for folder in sorted(p for p in Path(zapps_root).iterdir() if p.is_dir()):
        if not folder.name.startswith("."):
            refs += [*zapp_image_refs(folder), *zapp_used_images(folder)]
    return list(dict.fromkeys(refs))
