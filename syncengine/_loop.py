"""The event loop syncengine runs its own work on: uvloop when installed, else asyncio's.

``SYNCENGINE_NO_UVLOOP=1`` forces asyncio's loop (to compare, or to work around a problem).
Code that already runs inside someone else's loop (a notebook) is not affected: the sync
facade runs on its own loop thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if not os.environ.get("SYNCENGINE_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


async def gather_all(aws: Sequence[Awaitable[Any]]) -> None:
    """Runs ``aws`` concurrently; on the first error cancels the rest, waits for them and
    raises that error itself (not an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
