"""Local image building against the real Docker engine.

Base and demo images (`zoe/busybox:1`, `zoe/hello:1`, `zoe/debian:12`) are shared with a
running platform, so they are made when missing and never removed. Images made only for
a test carry a unique `zoe/zoetest-<hex>-*` name and are removed afterwards; every
container is labelled `zoe.test=images` and removed in a `finally`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiodocker
import pytest

from services.executor.images import (
    BASE_IMAGES,
    ImageBuildFailed,
    UnknownImage,
    build_zapp,
    ensure_image,
    image_present,
)

REPO = Path(__file__).resolve().parents[2]
ZAPPS = REPO / "zapps"
TEST_LABEL = {"zoe.test": "images"}


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker() as client:
        yield client


@pytest.fixture
def scratch_zapps(tmp_path: Path) -> Iterator[tuple[Path, Callable[[str, str], str]]]:
    """A throwaway ZApp library; `add(name, dockerfile)` defines an image, returns its ref."""
    prefix = f"zoetest-{uuid.uuid4().hex[:8]}"
    refs: list[str] = []

    def add(name: str, dockerfile: str) -> str:
        image_dir = tmp_path / "scratch" / "images" / f"{prefix}-{name}"
        image_dir.mkdir(parents=True)
        (image_dir / "Dockerfile").write_text(dockerfile.replace("PREFIX", prefix))
        (image_dir / "TAG").write_text("1\n")
        refs.append(f"zoe/{prefix}-{name}:1")
        return refs[-1]

    yield tmp_path, add
    # Children before parents, so each removal frees its layers.
    for ref in reversed(refs):
        subprocess.run(["/usr/bin/docker", "rmi", "-f", ref], capture_output=True, check=False)


async def image_id(docker: aiodocker.Docker, ref: str) -> str:
    return str((await docker.images.inspect(ref))["Id"])


async def run_to_end(
    docker: aiodocker.Docker, image: str, env: dict[str, str], cmd: list[str] | None = None
) -> tuple[int, str]:
    """Run a labelled container to its end; return its exit code and its output."""
    config: dict[str, object] = {
        "Image": image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": TEST_LABEL,
    }
    if cmd is not None:
        config["Cmd"] = cmd
    container = await docker.containers.create(config, name=f"zoetest-{uuid.uuid4().hex[:8]}")
    try:
        await container.start()
        result = await container.wait(timeout=60)
        logs = await container.log(stdout=True, stderr=True)
        return int(result["StatusCode"]), "".join(logs)
    finally:
        await container.delete(force=True)


async def test_busybox_base_is_made_once(docker: aiodocker.Docker) -> None:
    await ensure_image(docker, "zoe/busybox:1", zapps_root=ZAPPS)
    first = await image_id(docker, "zoe/busybox:1")
    # An import always makes a new image id, so an unchanged id means nothing was made.
    await ensure_image(docker, "zoe/busybox:1", zapps_root=ZAPPS)
    assert await image_id(docker, "zoe/busybox:1") == first

    code, out = await run_to_end(
        docker, "zoe/busybox:1", {}, ["sh", "-c", "echo ok; ls /bin/ls /usr/bin/env /tmp"]
    )
    assert code == 0, out
    assert out.startswith("ok")


async def test_hello_image_greets_counts_and_exits_cleanly(docker: aiodocker.Docker) -> None:
    assert await build_zapp(docker, ZAPPS / "hello") == ["zoe/hello:1"]
    assert await image_present(docker, "zoe/busybox:1")

    env = {"EXECUTION_ID": "42", "SERVICE_NAME": "hello0", "HELLO_SECONDS": "2"}
    code, out = await run_to_end(docker, "zoe/hello:1", env)

    assert code == 0, out
    assert "Hello from Zoe! execution 42, service hello0" in out
    assert "hello: 2 of 2" in out
    assert "hello: done" in out


async def test_present_image_is_not_rebuilt(
    docker: aiodocker.Docker, scratch_zapps: tuple[Path, Callable[[str, str], str]]
) -> None:
    root, add = scratch_zapps
    ref = add("skip", "FROM zoe/busybox:1\nRUN echo first > /version\n")
    await ensure_image(docker, ref, zapps_root=root)
    first = await image_id(docker, ref)

    # Were it rebuilt, the changed Dockerfile would give another image id.
    dockerfile = next(root.glob("scratch/images/*-skip/Dockerfile"))
    dockerfile.write_text("FROM zoe/busybox:1\nRUN echo second > /version\n")
    await ensure_image(docker, ref, zapps_root=root)

    assert await image_id(docker, ref) == first


async def test_from_image_is_made_first(
    docker: aiodocker.Docker, scratch_zapps: tuple[Path, Callable[[str, str], str]]
) -> None:
    root, add = scratch_zapps
    base = add("base", "FROM zoe/busybox:1\nRUN echo from-base > /base\n")
    child = add("child", 'FROM zoe/PREFIX-base:1\nCMD ["cat", "/base"]\n')

    await ensure_image(docker, child, zapps_root=root)

    assert await image_present(docker, base)
    code, out = await run_to_end(docker, child, {})
    assert (code, out.strip()) == (0, "from-base")


async def test_unknown_reference_is_a_clear_error(docker: aiodocker.Docker) -> None:
    with pytest.raises(UnknownImage, match=r"zoe/no-such-image:1: no .*Dockerfile defines it"):
        await ensure_image(docker, "zoe/no-such-image:1", zapps_root=ZAPPS)
    with pytest.raises(UnknownImage, match=r"image ubuntu:22.04: not a base image"):
        await ensure_image(docker, "ubuntu:22.04", zapps_root=ZAPPS)


async def test_unknown_from_image_names_both(
    docker: aiodocker.Docker, scratch_zapps: tuple[Path, Callable[[str, str], str]]
) -> None:
    root, add = scratch_zapps
    ref = add("orphan", "FROM zoe/PREFIX-missing:1\n")
    with pytest.raises(ImageBuildFailed, match=rf"{ref}: cannot get zoe/.*-missing:1") as info:
        await ensure_image(docker, ref, zapps_root=root)
    assert info.value.ref == ref


async def test_failed_build_names_the_step_and_tags_nothing(
    docker: aiodocker.Docker, scratch_zapps: tuple[Path, Callable[[str, str], str]]
) -> None:
    root, add = scratch_zapps
    ref = add("broken", "FROM zoe/busybox:1\nRUN echo about to fail && exit 3\n")

    with pytest.raises(ImageBuildFailed, match=r"returned a non-zero code: 3") as info:
        await ensure_image(docker, ref, zapps_root=root)

    assert info.value.ref == ref
    assert "about to fail" in str(info.value)
    assert not await image_present(docker, ref)


async def test_from_cycle_is_refused(
    docker: aiodocker.Docker, scratch_zapps: tuple[Path, Callable[[str, str], str]]
) -> None:
    root, add = scratch_zapps
    first = add("egg", "FROM zoe/PREFIX-hen:1\n")
    add("hen", "FROM zoe/PREFIX-egg:1\n")
    with pytest.raises(ImageBuildFailed, match="FROM cycle"):
        await ensure_image(docker, first, zapps_root=root)


def test_cli_present_and_build_exit_codes() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "services.executor.images", *args]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)

    built = cli("build", "--zapp", "zapps/hello")
    assert built.returncode == 0, built.stderr
    assert "zoe/hello:1: ready" in built.stdout
    assert cli("present", "zoe/hello:1").returncode == 0
    assert cli("present", "zoe/no-such-image:1").returncode == 1
    unknown = cli("build", "zoe/no-such-image:1")
    assert unknown.returncode == 1
    assert "error: image zoe/no-such-image:1:" in unknown.stderr


@pytest.mark.slow
async def test_debian_base_runs_python(docker: aiodocker.Docker) -> None:
    assert "zoe/debian:12" in BASE_IMAGES
    await ensure_image(docker, "zoe/debian:12", zapps_root=ZAPPS)  # ~40 s the first time
    code, out = await run_to_end(
        docker, "zoe/debian:12", {}, ["python3", "-c", "import sys; print(sys.version_info[:2])"]
    )
    assert (code, out.strip()) == (0, "(3, 11)")
