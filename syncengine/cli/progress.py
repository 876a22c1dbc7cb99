"""A rich progress line on stderr when it is a terminal; nothing when piped."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


@contextmanager
def progress_bar(
    enabled: bool, verb: str = "hashing", *, total_files: int | None = None, total_bytes: int | None = None
) -> Iterator[Callable[[int, int], None] | None]:
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
        TextColumn(verb + " {task.fields[files]}" + of + " files, {task.fields[size]}, {task.fields[rate]}"),
    )
    if total_bytes is not None:
        columns += (BarColumn(), TimeRemainingColumn())
    columns += (TimeElapsedColumn(),)
    # No refresh thread: it would compete with the hashing threads for the GIL. The callback
    # redraws at most 5 times a second.
    with Progress(*columns, console=Console(stderr=True), transient=True, auto_refresh=False) as prog:
        task = prog.add_task("hash", total=total_bytes, files=0, size="0 B", rate="")
        start = time.perf_counter()
        last = start

        def update(files: int, nbytes: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < 0.2:
                return
            last = now
            rate = human_bytes(nbytes / max(now - start, 1e-9)) + "/s"
            prog.update(
                task, completed=nbytes, files=files, size=human_bytes(nbytes), rate=rate, refresh=True
            )

        yield update
