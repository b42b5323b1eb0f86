"""Pure rules that turn container facts into verdicts: one self-contained verdict per
fact, which the scheduler (the only writer of instance state) acts on."""

from __future__ import annotations

from common import messages as m
from common.states import end_reason


def exited(fact: m.InstanceExited) -> m.InstanceEnded:
    """A container stopped running: how it ended (its container still exists)."""
    return _ended(fact, container_id=fact.container_id, gone=False)


def removed(fact: m.InstanceRemoved) -> m.InstanceEnded:
    """A container is gone: it ended (if it had not yet) and no longer exists. Removed
    behind Zoe's back while it ran, it counts as a crash."""
    return _ended(fact, container_id="", gone=True)


def _ended(
    fact: m.InstanceExited | m.InstanceRemoved, *, container_id: str, gone: bool
) -> m.InstanceEnded:
    return m.InstanceEnded(
        execution_id=fact.execution_id,
        instance_id=fact.instance_id,
        reason=end_reason(exit_code=fact.exit_code, oom_killed=fact.oom_killed),
        exit_code=fact.exit_code,
        container_name=fact.container_name,
        container_id=container_id,
        gone=gone,
    )


def start_failed(fact: m.InstanceStartFailed) -> m.InstanceEnded:
    """A container could not be created or started: the engine's reason goes along."""
    return m.InstanceEnded(
        execution_id=fact.execution_id,
        instance_id=fact.instance_id,
        reason="start-failed",
        detail=fact.reason,
        container_name=fact.container_name,
        gone=True,
    )
