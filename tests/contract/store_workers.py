"""Child-process bodies for the contract suite's multi-process tests (started with `spawn`).

Each takes a picklable store factory, so the same code drives any backend. Results travel
as exit codes: the tests only need "won", "lost" or "failed".
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier, Event

from syncengine.errors import PreconditionFailed
from syncengine.store import ObjectStore

WON = 10
LOST = 11


def race_create(factory: Callable[[], ObjectStore], key: str, payload: bytes, barrier: Barrier) -> None:
    """Create-if-absent ``key``; exit WON or LOST."""

    async def main() -> bool:
        async with factory() as store:
            barrier.wait()  # all children are ready: now race (nothing else runs on this loop)
            try:
                await store.put(key, payload, if_none_match=True)
            except PreconditionFailed:
                return False
            return True

    sys.exit(WON if asyncio.run(main()) else LOST)


async def increment(store: ObjectStore, key: str, times: int) -> int:
    """Add 1 to the decimal counter in ``key``, ``times`` times, by read-modify-write with
    compare-and-swap; returns how many attempts lost and were retried."""
    retries = 0
    for _ in range(times):
        while True:
            async with store.open_read(key) as r:
                value, etag = int(await r.read()), r.info.etag
            try:
                await store.put(key, str(value + 1).encode(), if_match=etag)
                break
            except PreconditionFailed:
                retries += 1
    return retries


def cas_increments(factory: Callable[[], ObjectStore], key: str, times: int, barrier: Barrier) -> None:
    async def main() -> None:
        async with factory() as store:
            barrier.wait()
            await increment(store, key, times)

    asyncio.run(main())


class StallingBody:
    """A body that writes ``stall_after`` chunks, signals ``started``, then blocks forever."""

    def __init__(self, chunks: int, chunk_size: int, stall_after: int, started: Event) -> None:
        self.size = chunks * chunk_size
        self._chunks = chunks
        self._chunk_size = chunk_size
        self._stall_after = stall_after
        self._started = started

    def chunks(self) -> Iterator[bytes]:
        for i in range(self._chunks):
            if i == self._stall_after:
                # Resumed for chunk i: chunks 0..i-1 have been written to the store.
                self._started.set()
                threading.Event().wait()  # never set: block until SIGKILL
            yield b"n" * self._chunk_size


def slow_put(
    factory: Callable[[], ObjectStore], key: str, chunks: int, chunk_size: int, started: Event
) -> None:
    """Start a put of a large object that stalls mid-write, to be killed with SIGKILL."""

    async def main() -> None:
        async with factory() as store:
            await store.put(key, StallingBody(chunks, chunk_size, 2, started))

    asyncio.run(main())
