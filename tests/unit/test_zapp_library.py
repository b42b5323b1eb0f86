"""The ZApp library in zapps/: every entry loads, its images are defined, its README says
what kind of application it is, and its default reservations fit a small node."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from common.zapp import ShopEntry, load_shop
from services.executor.images import (
    BASE_IMAGES,
    ImageError,
    dockerfile_dependencies,
    find_image_dir,
    library_image_refs,
    read_context_file,
    zapp_image_refs,
    zapp_used_images,
)

ZAPPS = Path(__file__).resolve().parents[2] / "zapps"
KIND = re.compile(r"\*\*Kind\*\*: (long-running|ephemeral), (elastic|non-elastic)\.")
GiB = 1 << 30

# What a ZApp of the library must fit with its default parameters: its essential
# instances on one node of 2 cores (this project's machines), all of them on 8 GiB.
NODE_CORES = 2.0
ESSENTIAL_MEMORY = 4 * GiB
ALL_MEMORY = 8 * GiB


@pytest.fixture(scope="module")
def shop() -> list[ShopEntry]:
    return load_shop(ZAPPS)  # raises InvalidZApp listing every problem


def zapp_folders() -> list[Path]:
    return sorted(p for p in ZAPPS.iterdir() if (p / "manifest.json").is_file())


def test_every_folder_with_a_manifest_is_in_the_shop(shop: list[ShopEntry]) -> None:
    assert sorted(e.id for e in shop) == [p.name for p in zapp_folders()]
    expected = {"hello", "jupyter", "spark", "spark-submit", "spark-history", "mpi", "pytorch-ddp"}
    assert expected <= {e.id for e in shop}


def test_a_folder_without_a_manifest_only_holds_images() -> None:
    for folder in ZAPPS.iterdir():
        if folder.is_dir() and not (folder / "manifest.json").is_file():
            assert zapp_image_refs(folder), f"{folder} is neither a ZApp nor a set of images"
            assert (folder / "README.md").is_file()
            assert not list(folder.glob("*.json"))


@pytest.mark.parametrize("folder", zapp_folders(), ids=lambda p: p.name)
def test_files_of_a_zapp(folder: Path, shop: list[ShopEntry]) -> None:
    entry = next(e for e in shop if e.id == folder.name)
    assert entry.readable_descr.startswith("# ")
    assert entry.logo is not None
    # a small PNG: signature, then the IHDR chunk with width and height
    assert entry.logo[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", entry.logo[16:24])
    assert (width, height) == (128, 128)
    assert len(entry.logo) < 32 * 1024
    assert entry.warnings == []


@pytest.mark.parametrize("folder", zapp_folders(), ids=lambda p: p.name)
def test_readme_states_the_kind_the_description_has(folder: Path, shop: list[ShopEntry]) -> None:
    entry = next(e for e in shop if e.id == folder.name)
    readme = entry.readable_descr
    if entry.id == "hello":  # the demo, older than this rule, says it in its own words
        assert "**Ephemeral**" in readme and "**Non-elastic**" in readme
        return
    match = KIND.search(readme)
    assert match, f"{folder.name}/README.md lacks a line '**Kind**: <lifetime>, <elasticity>.'"
    lifetime, elasticity = match.groups()
    description = entry.description
    assert lifetime == ("ephemeral" if description.will_end else "long-running")
    elastic = any(s.total_count > s.essential_count for s in description.services)
    assert elasticity == ("elastic" if elastic else "non-elastic")
    assert "## Run it" in readme and "## Endpoints" in readme


def test_every_image_the_library_runs_is_built_by_it(shop: list[ShopEntry]) -> None:
    for entry in shop:
        for service in entry.description.services:
            ref = service.image
            assert ref.startswith("zoe/"), f"{entry.id}: {ref} would come from a registry"
            image_dir = find_image_dir(ref, ZAPPS)
            assert (image_dir / "Dockerfile").is_file() and (image_dir / "TAG").is_file()


def test_every_image_is_built_from_local_images_only() -> None:
    refs = library_image_refs(ZAPPS)
    pending = list(refs)
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen or ref in BASE_IMAGES:
            continue
        seen.add(ref)
        image_dir = find_image_dir(ref, ZAPPS)  # raises for a reference nothing defines
        pending += dockerfile_dependencies((image_dir / "Dockerfile").read_text())
    assert {"zoe/spark:2", "zoe/jupyter:2", "zoe/mpi:2", "zoe/pytorch:2"} <= seen


def test_shared_images_are_defined_once_and_used_by_several_zapps() -> None:
    users = {
        folder.name: zapp_used_images(folder)
        for folder in zapp_folders()
        if "zoe/spark:2" in zapp_used_images(folder)
    }
    assert set(users) == {"spark", "spark-submit", "spark-history"}
    assert "zoe/spark:2" in zapp_image_refs(ZAPPS / "spark")
    assert zapp_image_refs(ZAPPS / "spark-submit") == []  # it runs the spark ZApp's image


def test_every_image_of_the_library_is_used() -> None:
    defined = {
        ref for folder in ZAPPS.iterdir() if folder.is_dir() for ref in zapp_image_refs(folder)
    }
    run = {ref for folder in zapp_folders() for ref in zapp_used_images(folder)}
    built_from = {
        dep
        for ref in defined
        for dep in dockerfile_dependencies((find_image_dir(ref, ZAPPS) / "Dockerfile").read_text())
    }
    assert defined <= run | built_from, f"unused images: {sorted(defined - run - built_from)}"


@pytest.mark.parametrize("folder", zapp_folders(), ids=lambda p: p.name)
def test_default_reservations_fit_a_small_node(folder: Path, shop: list[ShopEntry]) -> None:
    description = next(e for e in shop if e.id == folder.name).description
    essential_cores = essential_memory = 0.0
    all_memory = 0
    for s in description.services:
        cores = s.resources.cores.min or 0.1
        memory = s.resources.memory.min or 256 * 1024 * 1024
        essential_cores += cores * s.essential_count
        essential_memory += memory * s.essential_count
        all_memory += memory * s.total_count
    assert essential_cores <= NODE_CORES
    assert essential_memory <= ESSENTIAL_MEMORY
    assert all_memory <= ALL_MEMORY


def test_rigid_jobs_have_only_essential_instances(shop: list[ShopEntry]) -> None:
    for entry in shop:
        if entry.id in ("mpi", "pytorch-ddp"):
            services = entry.description.services
            assert all(s.essential_count == s.total_count for s in services)
            assert not [p for p in entry.parameters if p.kind == "service_count"]


def test_pytorch_world_size_matches_its_instances(shop: list[ShopEntry]) -> None:
    (trainer,) = next(e for e in shop if e.id == "pytorch-ddp").description.services
    env = dict(trainer.environment)
    assert env["WORLD_SIZE"] == str(trainer.total_count)
    assert env["MASTER_ADDR"] == "{dns_name#trainer0}"


def test_the_torch_wheel_is_staged_from_the_host_not_kept_in_git() -> None:
    image_dir = ZAPPS / "pytorch-ddp" / "images" / "pytorch"
    (entry,) = read_context_file(image_dir)
    assert (entry.kind, entry.dest) == ("pip", "wheels")
    assert entry.args[0] == "torch==2.13.0+cpu"
    assert not list(image_dir.rglob("*.whl"))


# ---- the CONTEXT file format ------------------------------------------------------------


def test_context_file_lines(tmp_path: Path) -> None:
    (tmp_path / "CONTEXT").write_text(
        "# comment\n\npip wheels torch==2.13.0+cpu --only-binary=:all:  # trailing\n"
        "copy data/ /srv/a.bin /srv/*.txt\n"
    )
    pip, copy = read_context_file(tmp_path)
    assert (pip.kind, pip.dest, pip.args) == (
        "pip",
        "wheels",
        ("torch==2.13.0+cpu", "--only-binary=:all:"),
    )
    assert (copy.kind, copy.dest, copy.args) == ("copy", "data", ("/srv/a.bin", "/srv/*.txt"))
    assert read_context_file(tmp_path / "absent") == []


@pytest.mark.parametrize(
    "line",
    ["fetch wheels x", "pip wheels", "pip /abs x", "copy ../up /srv/x", "copy data relative/path"],
)
def test_bad_context_lines_are_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / "CONTEXT").write_text(line + "\n")
    with pytest.raises(ImageError, match="CONTEXT, line 1"):
        read_context_file(tmp_path)
