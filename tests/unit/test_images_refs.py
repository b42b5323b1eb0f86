"""Image references, ZApp image folders and Dockerfile dependencies: no engine needed."""

from pathlib import Path

import pytest

from services.executor.images import (
    ImageError,
    UnknownImage,
    dockerfile_dependencies,
    find_image_dir,
    split_ref,
    zapp_image_refs,
)

REPO = Path(__file__).resolve().parents[2]


def make_image(root: Path, zapp: str, name: str, tag: str | None, dockerfile: str) -> Path:
    image_dir = root / zapp / "images" / name
    image_dir.mkdir(parents=True)
    (image_dir / "Dockerfile").write_text(dockerfile)
    if tag is not None:
        (image_dir / "TAG").write_text(f"{tag}\n")
    return image_dir


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("zoe/hello:1", ("zoe/hello", "1")),
        ("zoe/hello", ("zoe/hello", "latest")),
        ("localhost:5000/x", ("localhost:5000/x", "latest")),
        ("localhost:5000/x:2", ("localhost:5000/x", "2")),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_hello_zapp_defines_its_image() -> None:
    assert zapp_image_refs(REPO / "zapps" / "hello") == ["zoe/hello:1"]


def test_refs_follow_folder_names_and_tags(tmp_path: Path) -> None:
    make_image(tmp_path, "z", "spark-master", "2", "FROM zoe/spark-base:2\n")
    make_image(tmp_path, "z", "spark-base", "2", "FROM zoe/debian:12\n")
    assert zapp_image_refs(tmp_path / "z") == ["zoe/spark-base:2", "zoe/spark-master:2"]


def test_missing_tag_file_is_named(tmp_path: Path) -> None:
    make_image(tmp_path, "z", "untagged", None, "FROM zoe/busybox:1\n")
    with pytest.raises(ImageError, match=r"zoe/untagged: .*TAG is missing"):
        zapp_image_refs(tmp_path / "z")


def test_find_image_dir(tmp_path: Path) -> None:
    wanted = make_image(tmp_path, "a", "tool", "3", "FROM zoe/busybox:1\n")
    assert find_image_dir("zoe/tool:3", tmp_path) == wanted
    with pytest.raises(UnknownImage, match=r"zoe/tool:4: tag 4 is not defined"):
        find_image_dir("zoe/tool:4", tmp_path)
    with pytest.raises(UnknownImage, match=r"zoe/other:1: no .*images/other/Dockerfile"):
        find_image_dir("zoe/other:1", tmp_path)
    with pytest.raises(UnknownImage, match=r"debian:12: not a base image"):
        find_image_dir("debian:12", tmp_path)


def test_an_image_defined_twice_is_refused(tmp_path: Path) -> None:
    make_image(tmp_path, "a", "tool", "1", "FROM zoe/busybox:1\n")
    make_image(tmp_path, "b", "tool", "1", "FROM zoe/busybox:1\n")
    with pytest.raises(UnknownImage, match="defined twice"):
        find_image_dir("zoe/tool:1", tmp_path)


def test_dockerfile_dependencies_skip_stages_and_scratch() -> None:
    text = """\
# syntax is the classic builder's
FROM --platform=linux/amd64 zoe/debian:12 AS build
RUN make \\
    all
FROM scratch
FROM zoe/busybox:1
COPY --from=build /out /out
COPY --from=zoe/tools:1 /bin/x /bin/x
COPY --from=0 /a /a
"""
    assert dockerfile_dependencies(text) == ["zoe/debian:12", "zoe/busybox:1", "zoe/tools:1"]


def test_dockerfile_dependency_from_a_build_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="build argument"):
        dockerfile_dependencies("ARG BASE=zoe/busybox:1\nFROM $BASE\n")
