"""The api's submission path and its callers against the real PostgreSQL: concurrent
submissions stored together, and what an api process remembers about tokens."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common import messages as m
from common import outbox
from common.zapp import load_description
from services.api import auth, quotas, store, users
from tests.conftest import PG_BASE, TestEnv, new_user, own_database

MiB = 1024 * 1024


def _app(instances: int = 1) -> dict[str, Any]:
    return {
        "name": "grouped",
        "version": 3,
        "will_end": False,
        "size": 1,
        "services": [
            {
                "name": "worker",
                "image": "zoe/busybox:1",
                "monitor": True,
                "essential_count": instances,
                "total_count": instances,
                "startup_order": 0,
                "command": "sleep 1000",
                "environment": [],
                "ports": [],
                "volumes": [],
                "resources": {
                    "cores": {"min": 0.1, "max": 0.1},
                    "memory": {"min": 16 * MiB, "max": 16 * MiB},
                },
            }
        ],
    }


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    """A database of this module's own (no scheduler takes its submissions)."""
    async with own_database(test_env, "apistore") as p:
        yield p


def _url(env: TestEnv) -> str:
    return PG_BASE.rstrip("/") + f"/{env.database}_apistore"  # own_database's


async def _outbox(pool: asyncpg.Pool) -> list[m.Message]:
    rows = await pool.fetch("DELETE FROM outbox RETURNING id, body")
    dec = m.decoder(m.ExecutionSubmitted | m.ExecutionsSubmitted)
    return [dec.decode(r["body"]) for r in sorted(rows, key=lambda r: r["id"])]


def _announced(sent: list[m.Message]) -> list[int]:
    ids: list[int] = []
    for msg in sent:
        if isinstance(msg, m.ExecutionsSubmitted):
            ids.extend(msg.execution_ids)
        elif isinstance(msg, m.ExecutionSubmitted):
            ids.append(msg.execution_id)
    return ids


async def _submit(pool: asyncpg.Pool, env: TestEnv, instances: int, name: str = "t") -> Any:
    description = load_description(_app(instances)).description
    return await store.create_execution(
        pool, name=name, user_name="u", description=description, deployment=env.deployment
    )


async def test_concurrent_submissions_are_stored_together_and_each_answered(
    pool: asyncpg.Pool, test_env: TestEnv
) -> None:
    store.group_submissions(pool, 8)
    answers = await asyncio.gather(*(_submit(pool, test_env, 1 + i % 3) for i in range(30)))
    ids = [a["id"] for a, created in answers]
    assert all(created for _, created in answers)
    assert len(set(ids)) == 30
    for (answer, _), i in zip(answers, range(30), strict=True):
        stored = await store.get_execution(pool, answer["id"])
        assert len(answer["services"]) == 1 + i % 3
        assert [s["name"] for s in answer["services"]] == [s["name"] for s in stored["services"]]
        assert [s["id"] for s in answer["services"]] == [s["id"] for s in stored["services"]]
        assert answer["state"] == stored["state"] == "submitted"
    # each message is staged for the relay with its row's id (published from memory)
    rows = {(r["id"], r["body"]) for r in await pool.fetch("SELECT id, body FROM outbox")}
    staged = {
        (i, body)
        for batch in outbox.STAGE._by_token.values()
        if batch.ids.done() and not batch.ids.cancelled()
        for i, (_, _, body) in zip(batch.ids.result(), batch.items, strict=True)
    }
    assert rows and rows <= staged
    sent = await _outbox(pool)
    # every execution announced once, and by fewer messages than submissions
    assert sorted(_announced(sent)) == sorted(ids)
    assert len(sent) < 30
    assert any(isinstance(msg, m.ExecutionsSubmitted) for msg in sent)
    assert all(len(_announced([msg])) <= 8 for msg in sent)


async def test_a_submission_right_after_an_answer_is_stored(
    pool: asyncpg.Pool, test_env: TestEnv
) -> None:
    """The next submission may arrive in the very step in which the previous one's
    answer wakes its caller, before the group that stored it has wound up: it is stored
    (it used to wait for yet another submission to come and start the next group)."""
    store.group_submissions(pool, 8)

    async def one_after_another() -> list[tuple[dict[str, Any], bool]]:
        # one task, no step between an answer and the next submission
        return [await _submit(pool, test_env, 1, name=f"n{i}") for i in range(5)]

    answers = await asyncio.wait_for(one_after_another(), 10)
    assert all(created and a["state"] == "submitted" for a, created in answers)
    assert await pool.fetchval("SELECT count(*) FROM executions") == 5


async def test_a_submission_that_cannot_be_stored_fails_alone(
    pool: asyncpg.Pool, test_env: TestEnv
) -> None:
    store.group_submissions(pool, 64)
    results = await asyncio.gather(
        *(_submit(pool, test_env, 1, name="bad\x00" if i == 5 else "t") for i in range(12)),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(results[5], BaseException)
    good = [r[0]["id"] for r in results if not isinstance(r, BaseException)]
    assert len(good) == 11
    assert await pool.fetchval("SELECT count(*) FROM executions") == 11
    assert sorted(_announced(await _outbox(pool))) == sorted(good)


async def test_a_remembered_token_is_dropped_at_once_when_revoked_here(
    pool: asyncpg.Pool, test_env: TestEnv
) -> None:
    url = _url(test_env)
    secret = await new_user(url, "cached", "user")
    auth.remember(pool, 60.0)
    first = await auth.caller_of_token(pool, secret)
    assert first is not None and first.name == "cached"
    # read once: another process's change is seen only after the time to live ...
    await pool.execute("UPDATE users SET role = 'guest' WHERE name = 'cached'")
    assert await auth.caller_of_token(pool, secret) == first
    assert (await quotas.quota_of(pool, "cached")).executions == 0
    # ... one made through this process counts at once
    assert first.token_id is not None
    await users.revoke_token(pool, first.token_id, None)
    assert await auth.caller_of_token(pool, secret) is None


async def test_a_remembered_token_still_expires_on_time(
    pool: asyncpg.Pool, test_env: TestEnv
) -> None:
    url = _url(test_env)
    secret = await new_user(url, "expiring", "user")
    auth.remember(pool, 60.0)
    assert await auth.caller_of_token(pool, secret) is not None
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    await pool.execute(
        "UPDATE tokens SET expires_at = $1 WHERE user_name = 'expiring'",
        soon,
    )
    auth.forget(pool)  # read again once, now with its expiry
    assert await auth.caller_of_token(pool, secret) is not None
    left = (soon - datetime.datetime.now(datetime.UTC)).total_seconds()
    await asyncio.sleep(max(0.0, left) + 0.05)  # past its expiry (not a wait for news)
    assert await auth.caller_of_token(pool, secret) is None
