"""How the command line shows why an execution waits."""

from __future__ import annotations

import pytest

from services.cli.sched import pending_line, print_pending


def test_the_reason_is_shown_once_per_change(capsys: pytest.CaptureFixture[str]) -> None:
    waiting = {"id": 7, "pending_reason": "unschedulable: no node has 64 cores"}
    assert pending_line(waiting) == "waiting: unschedulable: no node has 64 cores"
    assert pending_line({"id": 7, "pending_reason": None}) is None
    last = print_pending(waiting, None)
    print_pending(waiting, last)  # unchanged: not printed again
    assert capsys.readouterr().err == (
        "execution 7: waiting: unschedulable: no node has 64 cores\n"
    )
