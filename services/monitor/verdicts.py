"""Pure rules that turn container facts into verdicts."""

from __future__ import annotations

from common.messages import EndReason


def end_reason(*, requested_stop: bool, exit_code: int | None, oom_killed: bool) -> EndReason:
    """Why an instance stopped running.

    A stop Zoe asked for is ``stopped`` whatever the exit code (SIGTERM/SIGKILL give 143
    or 137); otherwise an OOM kill, a clean exit (code 0) or a crash.
    """
    if requested_stop:
        return "stopped"
    if oom_killed:
        return "oom"
    if exit_code == 0:
        return "exited"
    return "crashed"


def execution_outcome(exit_code: int | None) -> str:
    """An ephemeral execution ends with its monitor service: finished on 0, else failed."""
    return "finished" if exit_code == 0 else "failed"
