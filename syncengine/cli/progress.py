"""A rich progress line on stderr when it is a terminal; nothing when piped."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


class Bar:
    """Called as ``bar(files, bytes)`` for the main count; ``bar.upload(sent, in_flight)``
    adds what went to the store. Redraws at most 5 times a second, from any thread."""

    def __init__(self, prog: Any, task: Any) -> None:
        self._prog = prog
        self._task = task
        self._start = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()
        self._files = 0
        self._bytes = 0
        self._sent = 0
        self._in_flight = 0

    def __call__(self, files: int, nbytes: int) -> None:
        self._files, self._bytes = files, nbytes
        self._draw()

    def upload(self, sent: int, in_flight: int) -> None:
        self._sent, self._in_flight = sent, in_flight
        self._draw()

    def _draw(self) -> None:
        now = time.perf_counter()
        with self._lock:
            if now - self._last < 0.2:
                return
            self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = human_bytes(self._bytes / elapsed) + "/s"
        sent = ""
        if self._sent:
            sent = (
                f" | sent {human_bytes(self._sent)} ({human_bytes(self._sent / elapsed)}/s), "
                f"{self._in_flight} in flight"
            )
        self._prog.update(
            self._task,
            completed=self._bytes,
            files=self._files,
            size=human_bytes(self._bytes),
            rate=rate,
            sent=sent,
            refresh=True,
        )


@contextmanager
def progress_bar(
    enabled: bool, verb: str = "hashing", *, total_files: int | None = None, total_bytes: int | None = None
) -> Iterator[Bar | None]:
    """A rich progress line on stderr when it is a terminal; nothing when piped. With
    ``total_bytes`` it has a bar and an ETA."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    of = f"/{total_files}" if total_files is not None else ""
    columns: tuple[ProgressColumn, ...] = (
        SpinnerColumn(),
        TextColumn(
            verb
            + " {task.fields[files]}"
            + of
            + " files, {task.fields[size]}, {task.fields[rate]}{task.fields[sent]}"
        ),
    )
    if total_bytes is not None:
        columns += (BarColumn(), TimeRemainingColumn())
    columns += (TimeElapsedColumn(),)
    # No refresh thread: it would compete with the hashing threads for the GIL.
    with Progress(*columns, console=Console(stderr=True), transient=True, auto_refresh=False) as prog:
        task = prog.add_task(verb, total=total_bytes, files=0, size="0 B", rate="", sent="")
        yield Bar(prog, task)
