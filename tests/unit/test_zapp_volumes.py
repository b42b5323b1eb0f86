"""Named volumes of a description: the ZApp's own, or the starting user's own workspace;
never another user's workspace nor a volume Zoe keeps for itself."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from common.zapp import expand, load_description, specs
from services.executor import facts
from tests.unit.test_zapp_validate import errors, minimal

WORKSPACE_RULE = (
    "must not start with 'workspace-': those are users' workspaces; name the volume"
    " 'workspace' to mount the workspace of the user who starts the execution"
)


def volume(name: str, path: str = "/data", read_only: bool = False) -> dict[str, object]:
    return {"name": name, "path": path, "read_only": read_only}


def names(user: str) -> dict[str, object]:
    return {"execution_id": 5, "execution_name": "e", "user_name": user, "deployment": "zoe"}


def test_another_users_workspace_is_refused_with_its_path() -> None:
    data = minimal(volumes=[volume("data"), volume("workspace-bob", "/steal")])
    assert errors(data) == [("services[0].volumes[1].name", WORKSPACE_RULE)]


def test_a_network_claim_is_refused() -> None:
    data = minimal(volumes=[volume("12.network")])
    assert errors(data) == [
        (
            "services[0].volumes[0].name",
            "must not end with '.network': Zoe names its own volumes so",
        )
    ]


def test_the_zapps_own_volumes_are_kept_as_they_are() -> None:
    data = minimal(volumes=[volume("spark-events", "/spark-events", True), volume("work_space")])
    description = load_description(data).description
    [spec] = expand(description, **names("alice"))  # type: ignore[arg-type]
    assert [(v.name, v.path, v.read_only) for v in spec.volumes] == [
        ("spark-events", "/spark-events", True),
        ("work_space", "/data", False),
    ]


def test_workspace_is_the_workspace_of_whoever_starts_the_execution() -> None:
    description = load_description(minimal(volumes=[volume("workspace", "/home/zoe/work")]))
    for user in ("alice", "bob"):
        [spec] = expand(description.description, **names(user))  # type: ignore[arg-type]
        assert [(v.name, v.path) for v in spec.volumes] == [(f"workspace-{user}", "/home/zoe/work")]
    # the description itself keeps the name: it is stored once, started by anyone
    assert b'"name":"workspace"' in msgspec.json.encode(description.description)


@given(st.text(min_size=1, max_size=40))
def test_the_workspace_is_the_one_the_executor_mounts(user: str) -> None:
    # the scheduler prefixes each volume with the deployment; the executor mounts the
    # same volume at /mnt/workspace by itself
    assert f"zoe-{specs.workspace_volume(user)}" == facts.workspace_volume("zoe", user)


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_two_users_never_share_a_workspace(one: str, other: str) -> None:
    if one != other:
        assert specs.workspace_volume(one) != specs.workspace_volume(other)
