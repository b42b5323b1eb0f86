"""How the executor tells an OOM kill the engine heard of late from a crash, without an
engine: `EngineNotices` and `loops.killed_for_memory`."""

from __future__ import annotations

import asyncio

from services.executor.engine.port import Container
from services.executor.locks import EngineNotices
from services.executor.loops import killed_for_memory


def dead(exit_code: int, *, oom_killed: bool = False) -> Container:
    return Container("c1", "zoe-7-main", "exited", {}, exit_code, oom_killed)


async def test_an_oom_heard_before_or_during_the_wait_counts() -> None:
    notices = EngineNotices()
    notices.oom("c0")
    assert await notices.oom_within("c0", 0)
    waiting = asyncio.create_task(notices.oom_within("c1", 30))
    await asyncio.sleep(0)
    assert not waiting.done()
    notices.oom("c1")
    assert await asyncio.wait_for(waiting, 5)


async def test_no_oom_within_the_wait_is_none() -> None:
    notices = EngineNotices()
    assert not await notices.oom_within("c1", 0.05)
    assert not await notices.oom_within("c1", 0)
    notices.oom("c2")  # another container's
    assert not await notices.oom_within("c1", 0.05)


async def test_only_a_sigkill_nobody_sent_waits_for_a_late_oom() -> None:
    notices = EngineNotices()
    notices.oom("c1")
    assert await killed_for_memory(notices, 30, dead(137))
    assert not await killed_for_memory(notices, 30, dead(1))  # not a SIGKILL
    assert not await killed_for_memory(notices, 30, dead(137, oom_killed=True))  # said so

    signalled = EngineNotices()
    signalled.signalled("c1")  # a docker kill: answered at once, no wait
    assert not await asyncio.wait_for(killed_for_memory(signalled, 30, dead(137)), 5)

    silent = EngineNotices()
    assert not await killed_for_memory(silent, 0.05, dead(137))  # a crash, after the wait
