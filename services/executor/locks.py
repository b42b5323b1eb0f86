"""Small concurrency helpers of the executor: a lock per key, a bounded set of ids."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    """An ``asyncio.Lock`` per key (a container or network name).

    A lock exists only while someone holds or waits for it, so a long-running executor
    does not keep one per container it ever saw.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class RecentIds:
    """The last ``size`` ids added, for "did I do this myself?" checks."""

    def __init__(self, size: int = 4096) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._size = size

    def add(self, item: str) -> None:
        if item in self._ids:
            return
        self._order.append(item)
        self._ids.add(item)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())

    def __contains__(self, item: object) -> bool:
        return item in self._ids
