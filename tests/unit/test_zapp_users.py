"""Who the library's images run as: the unprivileged user zoe (uid 1000), unless a
service of a description says `run_as_root`; and the description's side of it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from common.zapp import load_description, load_shop
from services.executor.engine.translate import ZAPP_USER
from services.executor.images import BASE_IMAGES, find_image_dir
from tests.unit.test_zapp_validate import errors, minimal

REPO = Path(__file__).resolve().parents[2]
ZAPPS = REPO / "zapps"
UNPRIVILEGED = {"zoe", "1000", "1000:1000"}
_FROM = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_USER = re.compile(r"^USER\s+(\S+)", re.IGNORECASE)


def final_stage(dockerfile: str) -> tuple[str, list[str]]:
    """The `FROM` image of a Dockerfile's last stage and that stage's lines."""
    lines = [line.strip() for line in dockerfile.splitlines()]
    starts = [i for i, line in enumerate(lines) if _FROM.match(line)]
    match = _FROM.match(lines[starts[-1]])
    assert match is not None
    return match.group(1), lines[starts[-1] + 1 :]


def image_user(ref: str) -> str:
    """The user an image of the library runs as: its last `USER`, else its base's."""
    if ref in BASE_IMAGES:
        return "root"  # imported root filesystems declare no user
    base, stage = final_stage((find_image_dir(ref, ZAPPS) / "Dockerfile").read_text())
    users = [m.group(1) for line in stage if (m := _USER.match(line))]
    return users[-1] if users else image_user(base)


def test_the_zapp_user_is_the_one_the_images_make() -> None:
    assert ZAPP_USER == "1000:1000"
    for image in ("base/images/python", "mpi/images/mpi"):
        text = (ZAPPS / image / "Dockerfile").read_text()
        assert "useradd --uid 1000 --user-group --create-home --shell /bin/bash zoe" in text
    hello = (ZAPPS / "hello/images/hello/Dockerfile").read_text()
    assert "zoe:x:1000:1000:zoe:/home/zoe:/bin/sh" in hello


def test_every_image_a_zapp_runs_runs_as_the_unprivileged_user() -> None:
    for entry in load_shop(ZAPPS):
        for service in entry.description.services:
            if not service.run_as_root:
                user = image_user(service.image)
                assert user in UNPRIVILEGED, f"{entry.id}: {service.image} runs as {user}"


def test_no_zapp_of_the_library_needs_root() -> None:
    assert not any(entry.description.needs_root for entry in load_shop(ZAPPS))


def test_a_workspace_mount_point_belongs_to_the_unprivileged_user() -> None:
    # Docker gives a new named volume the owner of the folder it is mounted on.
    for image in ("base/images/python", "mpi/images/mpi"):
        text = (ZAPPS / image / "Dockerfile").read_text()
        assert "install -d -o zoe -g zoe /mnt/workspace" in text
    spark = (ZAPPS / "spark/images/spark/Dockerfile").read_text()
    assert "install -d -o zoe -g zoe /spark-events" in spark


def test_the_deployment_images_run_unprivileged() -> None:
    for name, user in (("postgres", "postgres"), ("rabbitmq", "rabbitmq"), ("zoe", "zoe")):
        _, stage = final_stage((REPO / "deploy/images" / name / "Dockerfile").read_text())
        assert [m.group(1) for line in stage if (m := _USER.match(line))][-1] == user


# the description -------------------------------------------------------------------------------


def test_run_as_root_is_false_unless_a_service_says_so() -> None:
    plain = load_description(minimal()).description
    assert not plain.services[0].run_as_root and not plain.needs_root
    data = minimal()
    second = {**copy.deepcopy(data["services"][0]), "name": "sshd", "monitor": False}
    data["services"].append({**second, "run_as_root": True})
    loaded = load_description(data).description
    assert [s.run_as_root for s in loaded.services] == [False, True]
    assert loaded.needs_root
    data["services"][1]["run_as_root"] = False
    assert not load_description(data).description.needs_root


def test_run_as_root_round_trips_and_is_omitted_when_false() -> None:
    import msgspec

    data = minimal()
    data["services"][0]["run_as_root"] = True
    description = load_description(data).description
    again = load_description(json.loads(msgspec.json.encode(description)))
    assert again.description == description and again.warnings == []
    plain = msgspec.json.encode(load_description(minimal()).description)
    assert b"run_as_root" not in plain


@pytest.mark.parametrize("value", ["yes", 1, None, []])
def test_run_as_root_must_be_a_boolean(value: object) -> None:
    data = minimal()
    data["services"][0]["run_as_root"] = value
    assert errors(data) == [("services[0].run_as_root", "must be a boolean")]


def test_expanded_instances_carry_run_as_root() -> None:
    from common.zapp import expand

    data = minimal()
    data["services"][0]["run_as_root"] = True
    description = load_description(data).description
    names = {"execution_id": 1, "execution_name": "e", "user_name": "u", "deployment": "d"}
    assert [spec.run_as_root for spec in expand(description, **names)] == [True]
    plain = load_description(minimal()).description
    assert [spec.run_as_root for spec in expand(plain, **names)] == [False]
