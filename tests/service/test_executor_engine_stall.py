"""An engine that stops answering, on a Docker engine of the test's own (the swarm
manager of tests/service/test_overlay_swarm.py, its process stopped with SIGSTOP and
continued with SIGCONT): a busy engine is no lost node, a stalled one is."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import aiodocker

from common import messages as m
from tests.conftest import Facts, TestEnv, wait_for
from tests.service import test_overlay_swarm as private
from tests.service.test_overlay_swarm import manager_executor

# the private engine's fixtures, and the module's skip when it cannot be made
swarm_engine, swarm_docker, facts = private.swarm_engine, private.swarm_docker, private.facts
pytestmark = private.pytestmark

INVENTORY_INTERVAL = 4.0


async def test_liveness_goes_on_while_the_engine_is_slow_and_stops_once_it_stalled(
    test_env: TestEnv, facts: Facts, swarm_engine: str, swarm_docker: aiodocker.Docker
) -> None:
    pid = int((Path(swarm_engine.removeprefix("unix://")).parent / "docker.pid").read_text())
    async with manager_executor(
        test_env,
        facts,
        swarm_docker,
        swarm_engine,
        ZOE_INVENTORY_INTERVAL=str(INVENTORY_INTERVAL),
    ) as node:

        def alive() -> list[m.NodeAlive]:
            return facts.all(m.NodeAlive, node=node)

        def silent_for(seconds: float) -> bool:
            beats = [b.sent_at for b in [*alive(), *facts.all(m.NodeHeartbeat, node=node)]]
            return bool(beats) and time.time() - max(beats) > seconds

        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_at = time.time()
            # every beat of the 0.5 s interval waits on the engine's inventory: without
            # an answer, liveness beats go out all the same
            await wait_for(
                lambda: sum(b.sent_at > stopped_at + 0.5 for b in alive()) >= 4,
                timeout=30,
                what="liveness beats while the engine does not answer",
            )
            # ... until it has not answered for the inventory interval: then none
            await wait_for(
                lambda: silent_for(2.0), timeout=30, what="no beat once the engine stalled"
            )
            assert time.time() - stopped_at > INVENTORY_INTERVAL
        finally:
            os.kill(pid, signal.SIGCONT)
        continued_at = time.time()
        # the engine back: the node's whole inventory again
        await wait_for(
            lambda: any(b.sent_at > continued_at for b in facts.all(m.NodeHeartbeat, node=node)),
            timeout=30,
            what="a full heartbeat once the engine answers again",
        )
