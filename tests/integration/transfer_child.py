"""Child process of test_transfer_kill: one journaled `upload()` of a file, logging every part sent.

    python -m tests.integration.transfer_child SPEC.pickle

SPEC is a pickled `ChildSpec`. Each `upload_part` call is appended to ``spec.log`` (``part N``,
flushed, before the part is sent), each `create_multipart` as ``create``; a completed upload
prints the object's size and ETag as JSON on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncengine.store import FileSlice, ObjectStore
from syncengine.store.base import Body
from syncengine.transfer import TransferLimits, UploadJournal, upload


@dataclass(frozen=True)
class ChildSpec:
    store_factory: Callable[[], ObjectStore]  # picklable: rebuilt in the child
    store_id: str  # the journal's name for the store
    source: str
    key: str
    part_size: int
    journal: str
    log: str
    delay: float = 0.0  # seconds each part waits before it is sent (so the parent can kill mid-way)
    max_requests: int = 4


class LoggingStore:
    """Delegates to the real store; logs create_multipart and upload_part calls to a file."""

    def __init__(self, inner: ObjectStore, log: str, delay: float) -> None:
        self._inner = inner
        self._fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _log(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())  # O_APPEND: one write, one line, survives kill -9

    async def create_multipart(self, key: str) -> str:
        self._log("create")
        return await self._inner.create_multipart(key)

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        if self._delay:
            await asyncio.sleep(self._delay)
        self._log(f"part {part_number}")
        return await self._inner.upload_part(key, upload_id, part_number, body)


async def main(spec: ChildSpec) -> None:
    size = os.path.getsize(spec.source)
    async with spec.store_factory() as inner, UploadJournal(spec.store_id, spec.journal) as journal:
        store = LoggingStore(inner, spec.log, spec.delay)
        info = await upload(
            store,
            spec.key,
            FileSlice(spec.source, 0, size),
            journal=journal,
            threshold=spec.part_size,
            part_size=spec.part_size,
            limits=TransferLimits(max_requests=spec.max_requests, max_inflight=256 << 20),
        )
    print(json.dumps({"size": info.size, "etag": info.etag}))


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        asyncio.run(main(pickle.load(f)))
