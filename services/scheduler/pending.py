"""Storing why queued executions wait (`pending_reason`, `schedulable`): only changes.

A pass says why every execution it did not start waits; most reasons are the same pass
after pass, so the view remembers what each row holds and writes only what changed, in
one statement for the whole pass. A reason whose cause is unchanged and only its detail
(the room left, how many wait ahead) moved is written again at most every `REFRESH`
seconds: the cause is what matters, and a busy cluster changes the room at every pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.scheduler.core import Reason

REFRESH = 30.0


@dataclass(frozen=True, slots=True)
class Stored:
    """What an execution's row says: the reason's words (None: none) and whether it is
    schedulable; the reason they were made from, when known (not after a takeover), and
    the monotonic time they were written (-inf: read, not written)."""

    text: str | None
    schedulable: bool
    reason: Reason | None = None
    at: float = float("-inf")


_NONE = Stored(None, True)


class PendingReasons:
    """What the rows hold, and the statement that brings them up to date."""

    def __init__(self) -> None:
        self.stored: dict[int, Stored] = {}

    def load(self, rows: list[asyncpg.Record]) -> None:
        """Learn what the rows hold for executions not seen yet (after a takeover)."""
        stored = self.stored
        for r in rows:
            if r["id"] not in stored:
                stored[r["id"]] = Stored(r["pending_reason"], r["schedulable"])

    def changes(self, reasons: dict[int, Reason], now: float) -> list[tuple[int, str | None, bool]]:
        """The rows to write: (id, reason or None, schedulable); remembers them as
        written. An execution with no reason this pass (it runs, or it is no longer
        active) loses the one its row holds. Reasons are compared as values: words are
        made only for the rows written (and once after a takeover). The work is the
        waiting executions' and those whose row holds a reason, not every active one's."""
        out: list[tuple[int, str | None, bool]] = []
        stored = self.stored
        keep: dict[int, Stored] = {}  # only rows that hold a reason or are unschedulable
        for ex_id, reason in reasons.items():
            old = stored.get(ex_id, _NONE)
            if old.reason is not None:
                if old.reason == reason:
                    keep[ex_id] = old
                    continue
                if (
                    old.reason.cause == reason.cause
                    and old.reason.schedulable == reason.schedulable
                    and now - old.at < REFRESH
                ):
                    keep[ex_id] = old  # only the detail moved, and it was written recently
                    continue
            text = str(reason)
            if old.reason is None and text == old.text and reason.schedulable == old.schedulable:
                keep[ex_id] = Stored(text, reason.schedulable, reason, old.at)
                continue
            keep[ex_id] = Stored(text, reason.schedulable, reason, now)
            out.append((ex_id, text, reason.schedulable))
        for ex_id, old in stored.items():
            if ex_id not in keep and (old.text is not None or not old.schedulable):
                out.append((ex_id, None, True))
        self.stored = keep
        return out

    def forget(self) -> None:
        """Forget everything (a write failed: the rows are read again next pass)."""
        self.stored = {}


async def write(pool: asyncpg.Pool, rows: list[tuple[int, str | None, bool]]) -> None:
    """Store the changed reasons; rows locked in id order, as the handlers lock them."""
    if not rows:
        return
    rows = sorted(rows)
    ids = [r[0] for r in rows]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM executions WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
            ids,
        )
        await conn.execute(
            "UPDATE executions e SET pending_reason = r.reason, schedulable = r.ok"
            " FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS r(id, reason, ok)"
            " WHERE e.id = r.id",
            ids,
            [r[1] for r in rows],
            [r[2] for r in rows],
        )
