"""Container logs: the tail of a log, and the cursors that let a reader follow one.

A cursor is "<timestamp> <count>": the engine's RFC 3339 timestamp of the last entry
returned, and how many entries carrying exactly that timestamp were returned. The next
read asks the engine for entries since that timestamp (inclusive) and skips those.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

# Lines read when a caller wants "the whole tail": the bytes limit is applied after.
MAX_LOG_LINES = 10_000


async def log_tail(container: Any, *, tail: int | None, max_bytes: int) -> str:
    """The last ``tail`` lines (None: the whole tail) of stdout and stderr, at most
    ``max_bytes`` of them (the last ones)."""
    lines = await container.log(
        stdout=True, stderr=True, tail=tail if tail is not None else MAX_LOG_LINES
    )
    data = "".join(lines).encode()
    if len(data) > max_bytes:
        data = data[-max_bytes:]
    return data.decode(errors="ignore")


async def log_after(
    container: Any, *, cursor: str, tail: int | None, max_bytes: int
) -> tuple[str, str]:
    """What the container printed after ``cursor`` ("": its tail), and the next cursor;
    read with the engine's timestamps (see `after_cursor`)."""
    params: dict[str, Any] = {"timestamps": True}
    if cursor:
        params["since"] = cursor_since(cursor)
    else:
        params["tail"] = tail if tail is not None else MAX_LOG_LINES
    entries = await container.log(stdout=True, stderr=True, **params)
    return after_cursor(entries, cursor, max_bytes, keep_end=not cursor)


def cursor_since(cursor: str) -> str:
    """Docker's ``since`` ("seconds.nanoseconds") for the timestamp of a cursor."""
    stamp = cursor.split(" ", 1)[0]
    return unix_nanos(stamp)


def unix_nanos(stamp: str) -> str:
    """An RFC 3339 UTC timestamp with up to nanoseconds, as "seconds.nanoseconds"."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return f"{seconds}.{(fraction + '000000000')[:9]}"


def after_cursor(
    entries: list[str], cursor: str, max_bytes: int, *, keep_end: bool
) -> tuple[str, str]:
    """The text of timestamped log entries that come after ``cursor``, and the new cursor.

    At most ``max_bytes`` are returned: the first ones when following (the rest comes
    with the next read), the last ones for an opening tail (``keep_end``).
    """
    last, _, seen_text = cursor.partition(" ")
    seen = int(seen_text) if seen_text else 0
    kept: list[tuple[str, str]] = []
    for entry in entries:
        stamp, _, text = entry.partition(" ")
        if seen and stamp == last:
            seen -= 1  # returned by an earlier read
            continue
        kept.append((stamp, text))
    # whole entries only, and at least one, so that every read makes progress
    order = range(len(kept) - 1, -1, -1) if keep_end else range(len(kept))
    size = taken = 0
    for i in order:
        size += len(kept[i][1].encode())
        if taken and size > max_bytes:
            break
        taken += 1
    kept = kept[len(kept) - taken :] if keep_end else kept[:taken]
    if not kept:
        return "", cursor
    stamp = kept[-1][0]
    same = sum(1 for s, _ in kept if s == stamp)
    if stamp == last:
        same += int(seen_text or 0)
    return "".join(t for _, t in kept), f"{stamp} {same}"
