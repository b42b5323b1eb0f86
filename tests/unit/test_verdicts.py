"""The monitor's pure rules: one self-contained verdict per container fact."""

from __future__ import annotations

import pytest

from common import messages as m
from common.states import end_reason
from services.monitor import verdicts


@pytest.mark.parametrize(
    ("code", "oom", "reason"),
    [
        (137, True, "oom"),
        (0, True, "oom"),
        (0, False, "exited"),
        (3, False, "crashed"),
        (137, False, "crashed"),
        (None, False, "crashed"),
    ],
)
def test_end_reason(code: int | None, oom: bool, reason: str) -> None:
    assert end_reason(exit_code=code, oom_killed=oom) == reason


def test_each_fact_is_one_verdict_naming_its_container() -> None:
    exited = m.InstanceExited(
        node="n1", execution_id=1, instance_id=2, container_id="c", exit_code=0, container_name="x"
    )
    v = verdicts.exited(exited)
    assert (v.reason, v.exit_code, v.container_name, v.container_id, v.gone) == (
        "exited",
        0,
        "x",
        "c",
        False,
    )
    removed = m.InstanceRemoved(
        node="n1", execution_id=1, instance_id=2, container_name="x", exit_code=137
    )
    v = verdicts.removed(removed)
    assert (v.reason, v.exit_code, v.container_name, v.gone) == ("crashed", 137, "x", True)
    failed = m.InstanceStartFailed(
        node="n1", execution_id=1, instance_id=2, container_name="x", reason="no such image"
    )
    v = verdicts.start_failed(failed)
    assert (v.reason, v.detail, v.container_name, v.gone) == (
        "start-failed",
        "no such image",
        "x",
        True,
    )
