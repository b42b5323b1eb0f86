"""Small concurrency helpers of the executor: a lock per key, bounded sets of ids."""

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


class EngineNotices:
    """What the engine said of containers besides their deaths, by container id: that
    it signalled one (a ``kill`` event: a stop, a ``docker kill``), that the kernel killed
    one for want of memory (an ``oom`` event, which may come after the death)."""

    def __init__(self, size: int = 4096) -> None:
        self._signalled = RecentIds(size)
        self._oom = RecentIds(size)
        self._waiting: dict[str, asyncio.Event] = {}

    def signalled(self, container_id: str) -> None:
        self._signalled.add(container_id)

    def oom(self, container_id: str) -> None:
        self._oom.add(container_id)
        if (waiting := self._waiting.get(container_id)) is not None:
            waiting.set()

    def was_signalled(self, container_id: str) -> bool:
        return container_id in self._signalled

    async def oom_within(self, container_id: str, timeout: float) -> bool:
        """Whether an ``oom`` came for the container, or comes within ``timeout``."""
        if container_id in self._oom or timeout <= 0:
            return container_id in self._oom
        waiting = self._waiting.setdefault(container_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await waiting.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting.pop(container_id, None)
        return container_id in self._oom
