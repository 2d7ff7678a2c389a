"""Keeping expensive work away from blob and manifest requests.

Pulls are many small filesystem operations; a catalog listing walks every repository
directory and a password check is ~100 ms of bcrypt. On one shared thread pool, a burst of
listings or wrong passwords queued ahead of every pull (a blob HEAD waited 22 s behind 40
listings of 20k repositories). So each kind of work has its own bounded executor
(`Pools`); a catalog listing is computed once and shared by concurrent and later requests
until it expires or a manifest write changes it (`CatalogCache`); and bcrypt work is
limited per client address (`PerKeyLimit`), so one client's wrong passwords queue behind
each other instead of in front of everyone else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

CATALOG_TTL = 5.0
"""Seconds a catalog listing is reused; writes through this process invalidate it sooner."""


class Pools:
    """Bounded executors per kind of work: storage I/O, directory walks, password hashing."""

    def __init__(self, io_workers: int = 32, walk_workers: int = 2, auth_workers: int = 2) -> None:
        self.io = ThreadPoolExecutor(io_workers, thread_name_prefix="dockyard-io")
        """Blob, manifest, tag and upload I/O: what pulls and pushes wait on."""
        self.walks = ThreadPoolExecutor(walk_workers, thread_name_prefix="dockyard-walk")
        """Walks over every repository (the catalog) and garbage collection."""
        self.auth = ThreadPoolExecutor(auth_workers, thread_name_prefix="dockyard-bcrypt")
        """bcrypt verification of credentials not in the cache."""

    def shutdown(self) -> None:
        for executor in (self.io, self.walks, self.auth):
            executor.shutdown(wait=False, cancel_futures=True)


class CatalogCache:
    """The sorted repository list, computed by one walk at a time and reused for `ttl` seconds.

    Concurrent requests share the walk in progress (single flight). `invalidate` (a manifest
    was pushed or deleted here) makes the next request walk again, so a client sees its own
    push at once; a walk that started before the invalidation is not reused afterwards.
    """

    def __init__(self, walk: Callable[[], list[str]], executor: ThreadPoolExecutor, on_walk: Callable[[], None],
                 ttl: float = CATALOG_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.walk = walk
        self.executor = executor
        self.on_walk = on_walk
        self.ttl = ttl
        self.clock = clock
        self._generation = 0
        self._value: list[str] | None = None
        self._value_generation = -1
        self._expires = 0.0
        self._pending: asyncio.Future[list[str]] | None = None
        self._pending_generation = -1

    def invalidate(self) -> None:
        self._generation += 1

    async def get(self) -> list[str]:
        if self._value is not None and self._value_generation == self._generation and self.clock() < self._expires:
            return self._value
        if self._pending is None or self._pending.done() or self._pending_generation != self._generation:
            self._pending_generation = self._generation
            self._pending = asyncio.ensure_future(self._compute(self._generation))
        # shielded: a client that disconnects must not cancel the walk the others wait for
        return await asyncio.shield(self._pending)

    async def _compute(self, generation: int) -> list[str]:
        value = await asyncio.get_running_loop().run_in_executor(self.executor, self.walk)
        self.on_walk()
        if generation == self._generation:
            self._value, self._value_generation, self._expires = value, generation, self.clock() + self.ttl
        return value


class PerKeyLimit:
    """At most `limit` holders per key (a client address); the others wait their turn.

    Entries exist only while someone holds or waits, so the table cannot grow without bound.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.get(key, (asyncio.Semaphore(self.limit), 0))
        self._slots[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[key]
            if users == 1:
                del self._slots[key]
            else:
                self._slots[key] = (semaphore, users - 1)
