"""The monitor's pure rules: why an instance ended, and how an execution ends."""

from __future__ import annotations

import pytest

from services.monitor.verdicts import end_reason, execution_outcome


@pytest.mark.parametrize(
    ("requested", "code", "oom", "reason"),
    [
        (True, 137, False, "stopped"),
        (True, 0, True, "stopped"),
        (False, 137, True, "oom"),
        (False, 0, False, "exited"),
        (False, 3, False, "crashed"),
        (False, 137, False, "crashed"),
        (False, None, False, "crashed"),
    ],
)
def test_end_reason(requested: bool, code: int | None, oom: bool, reason: str) -> None:
    assert end_reason(requested_stop=requested, exit_code=code, oom_killed=oom) == reason


def test_execution_outcome() -> None:
    assert execution_outcome(0) == "finished"
    assert execution_outcome(1) == "failed"
    assert execution_outcome(None) == "failed"
