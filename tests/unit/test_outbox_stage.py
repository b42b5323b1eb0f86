"""The outbox's stage: what a process wrote, kept in memory until its commit is told."""

from __future__ import annotations

import os

import pytest

from common import outbox

ITEM = ("zoe.events", "state.executions", b"{}")


async def test_a_settled_batch_is_claimed_once_with_its_ids_in_order() -> None:
    stage = outbox._Stage()
    token = stage.add([ITEM, ITEM])
    stage.settle(token, [12, 11])
    batch = stage.claim(token)
    assert batch is not None and batch.ids.result() == [11, 12]
    stage.release(token)
    assert stage.claim(token) is None  # (another relay of the process: the table's way)
    assert len(stage) == 0


async def test_a_statement_that_stored_other_than_its_items_drops_its_batch() -> None:
    stage = outbox._Stage()
    none, short = stage.add([ITEM]), stage.add([ITEM, ITEM])
    stage.settle(none, None)  # (no row came back: nothing stored)
    stage.settle(short, [5])
    assert stage.claim(none) is None and stage.claim(short) is None


async def test_a_claimed_batch_dropped_by_its_writer_is_cancelled_for_the_relay() -> None:
    stage = outbox._Stage()
    token = stage.add([ITEM])
    batch = stage.claim(token)  # notified before the writer had the statement's answer
    assert batch is not None
    stage.discard(token)  # (a relay's look at the table: a claimed batch is not its)
    assert not batch.ids.done()
    stage.drop(token)  # ... the writer's statement failed
    assert batch.ids.cancelled()
    stage.settle(token, [1])  # (too late: nothing happens)
    assert batch.ids.cancelled()


async def test_rows_taken_from_the_table_drop_their_batch_and_those_not_settled() -> None:
    stage = outbox._Stage()
    taken, other, unsettled = stage.add([ITEM]), stage.add([ITEM]), stage.add([ITEM])
    stage.settle(taken, [1])
    stage.settle(other, [2])
    stage.forget({1})
    assert stage.claim(taken) is None and stage.claim(unsettled) is None
    assert stage.claim(other) is not None


async def test_the_stage_holds_a_bounded_size_of_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox, "STAGE_BYTES", 3 * len(ITEM[2]))
    stage = outbox._Stage()
    kept = stage.add([ITEM, ITEM])
    assert stage.add([ITEM, ITEM]) == ""  # full: this batch goes by the table
    assert stage.add([ITEM]) != ""
    assert stage.claim(kept) is not None
    assert stage.add([ITEM, ITEM]) != ""  # room again


async def test_batches_never_told_committed_are_dropped_after_a_while() -> None:
    now = [1000.0]
    stage = outbox._Stage(clock=lambda: now[0])
    old = stage.add([ITEM])  # rolled back, say: no commit will be told
    now[0] += outbox.STAGE_AGE + 1
    young = stage.add([ITEM])
    assert stage.claim(old) is None and stage.claim(young) is not None


def test_a_forked_process_writes_under_a_channel_and_stage_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: tell what it has, and go
        try:
            os.write(write, f"{outbox.CHANNEL} {id(outbox.STAGE)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        told = os.read(read, 200).decode().split()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert told[0] != outbox.CHANNEL and told[0].startswith("zoe_outbox_")
    assert told[1] != str(id(outbox.STAGE))
