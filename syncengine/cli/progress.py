"""A rich progress line on stderr when it is a terminal; nothing when piped."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from syncengine.units import format_size

if TYPE_CHECKING:
    from syncengine.hashing.tree import Source


def plural(n: int, noun: str, nouns: str = "") -> str:
    """``1 file``, ``2 files``: a count and its noun as output says it (``nouns`` for an
    irregular plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {nouns or noun + 's'}"


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
        self._total_files: int | None = None
        self._counted = False  # the count-ahead walk finished: the totals are final
        self._stop = threading.Event()

    def count_ahead(
        self,
        sources: Sequence[Source],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        include_vcs: bool = False,
    ) -> None:
        """Walks ``sources`` (stat only, the scan's own rules) in a background thread to find
        the totals, as rclone's checkers do, so the line gets a bar and an ETA: the totals
        grow while the walk runs and are final when it ends. Only for a terminal."""

        def walk() -> None:
            from syncengine.scan import scan

            files = nbytes = 0
            last = time.perf_counter()
            try:
                for src in sources:
                    it = scan(src.root, prefix=src.prefix, include=include, exclude=exclude,
                              on_warning=lambda _w: None, include_vcs=include_vcs)  # fmt: skip
                    for e in it:
                        if self._stop.is_set():
                            return
                        files += 1
                        nbytes += e.size
                        now = time.perf_counter()
                        if now - last > 0.2:
                            last = now
                            self._set_total(files, nbytes, final=False)
            except (OSError, ValueError):
                return  # the put itself reports it; the line just has no totals
            self._set_total(files, nbytes, final=True)

        threading.Thread(target=walk, name="syncengine-count", daemon=True).start()

    def _set_total(self, files: int, nbytes: int, *, final: bool) -> None:
        with self._lock:
            self._total_files, self._counted = files, final
        self._prog.update(self._task, total=max(nbytes, self._bytes, 1))
        self._draw(force=final)

    def stop(self) -> None:
        self._stop.set()

    def __call__(self, files: int, nbytes: int) -> None:
        self._files, self._bytes = files, nbytes
        self._draw()

    def upload(self, sent: int, in_flight: int) -> None:
        self._sent, self._in_flight = sent, in_flight
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            if now - self._last < 0.2 and not force:
                return
            self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = format_size(self._bytes / elapsed) + "/s"
        sent = ""
        if self._sent:
            sent = (
                f" | sent {format_size(self._sent)} ({format_size(self._sent / elapsed)}/s), "
                f"{self._in_flight} in flight"
            )
        of = ""
        if self._total_files is not None:
            of = f"/{self._total_files}" + ("" if self._counted else "+")
        self._prog.update(
            self._task,
            # A large file's bytes count once it is hashed whole; what was sent of it shows
            # the progress before that (sent bytes are new bytes, at most the total).
            completed=max(self._bytes, self._sent),
            files=f"{self._files}{of}",
            size=format_size(self._bytes),
            rate=rate,
            sent=sent,
            refresh=True,
        )


@contextmanager
def progress_bar(
    enabled: bool,
    verb: str = "hashing",
    *,
    total_files: int | None = None,
    total_bytes: int | None = None,
    count: tuple[Sequence[Source], Sequence[str], Sequence[str], bool] | None = None,
) -> Iterator[Bar | None]:
    """A rich progress line on stderr when it is a terminal; nothing when piped. With
    ``total_bytes``, or ``count`` (sources, include, exclude, include_vcs: the totals found by a walk
    ahead, `Bar.count_ahead`), it has a bar and an ETA."""
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
    if total_bytes is not None or count is not None:
        columns += (BarColumn(), TimeRemainingColumn())
    columns += (TimeElapsedColumn(),)
    # No refresh thread: it would compete with the hashing threads for the GIL.
    with Progress(*columns, console=Console(stderr=True), transient=True, auto_refresh=False) as prog:
        task = prog.add_task(verb, total=total_bytes, files=0, size="0 B", rate="", sent="")
        bar = Bar(prog, task)
        if count is not None:
            bar.count_ahead(*count)
        try:
            yield bar
        finally:
            bar.stop()
