"""The checkpoint watch daemon: logs each finished checkpoint of a folder as a version (docs/WATCH.md).

Three tasks on one event loop: file events (watchfiles) mark entries to look at; a scheduler
tick settles candidates (a stat signature unchanged for ``settle`` seconds, or a completion
marker) and moves them to the journal's ``ready`` queue, with a full rescan every ``rescan``
seconds in case events were lost; one uploader logs the queue through `Repository.log` (or
a draft, ``mode="files"``), re-checking the signature before hashing, while hashing (the put
path's own per-file checks) and after the upload, right before the version record is
written (``before_commit``). Whatever changed is retried once it is stable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import math
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import blake3 as _blake3

from syncengine import aio
from syncengine.errors import ConfigError, FileChangedError, HashingFailed, SyncEngineError
from syncengine.hashing.tree import Source
from syncengine.repo.records import parse_ref
from syncengine.repo.repository import ArtifactNotFound, PutResult, Repository, TypeMismatch
from syncengine.units import format_duration, format_size
from syncengine.watch.journal import JournalRow, WatchJournal
from syncengine.watch.markers import (
    Signature,
    completion_marker,
    is_checkpoint_name,
    natural_key,
    read_metrics,
    signature,
)

T = TypeVar("T")

#: Longest wait between retries of a checkpoint whose upload failed (store unreachable …).
MAX_BACKOFF: Final = 60.0


class CheckpointChanged(SyncEngineError):
    """A checkpoint's files changed while it was being logged; it is retried once stable."""


@dataclass
class WatchEvent:
    """One thing the watcher did: ``event`` (``start``, ``seen``, ``ready``, ``waiting``,
    ``uploading``, ``logged``, ``changed``, ``skipped``, ``vanished``, ``deleted``, ``best``,
    ``error``, ``interrupted``, ``stopped`` …), the checkpoint it concerns, and details
    (``version``, ``bytes``, ``new_bytes``, ``seconds`` …)."""

    event: str
    checkpoint: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    time: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time, "event": self.event}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        out.update(self.fields)
        return out

    def to_text(self) -> str:
        """The line for a person: sizes and times in units (``bytes='10.40 KiB'``,
        ``seconds=2.35s``); `to_json` keeps the numbers."""
        parts = [self.time, self.event]
        if self.checkpoint is not None:
            parts.append(f"checkpoint={self.checkpoint}")
        for k, v in self.fields.items():
            text = str(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if k in _SIZE_FIELDS:
                    text = format_size(v)
                elif k in _DURATION_FIELDS:
                    text = format_duration(v)
            parts.append(f"{k}={text!r}" if (" " in text or not text) else f"{k}={text}")
        return " ".join(parts)


#: Fields of events that are bytes, or seconds (`WatchEvent.to_text` shows them in units).
_SIZE_FIELDS: Final = frozenset({"bytes", "new_bytes"})
_DURATION_FIELDS: Final = frozenset({"seconds", "delay", "settle", "retry_in"})


@dataclass
class _Candidate:
    sig: Signature
    since: float  # monotonic time the signature was first seen as it is
    trust_marker: bool = True  # False after a failed attempt: settle time only


class Watcher:
    """Watches ``directory`` and logs each finished checkpoint (a file or sub-folder matching
    ``pattern``) into the artifact ``"project/name"`` of the repository ``repo`` (a path or
    ``s3://…``; default as for `Repository.open`; or an open `syncengine.aio.Repository`,
    used with `arun` on its event loop and left open). See docs/WATCH.md.

    ``run()`` blocks until `stop()` (from any thread) or, with ``handle_signals``, SIGTERM /
    SIGINT; ``await arun()`` is the same on a running event loop.

    >>> import tempfile, threading, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "ckpt").mkdir()
    >>> _ = (d / "ckpt" / "step1").mkdir(), (d / "ckpt" / "step1" / "model.bin").write_bytes(b"w")
    >>> _ = (d / "ckpt" / "step1.done").write_text("")
    >>> def stop_when_logged(e):
    ...     if e.event == "logged":
    ...         w.stop()
    >>> w = Watcher(d / "ckpt", "proj/model", repo=d / "repo", settle=60, on_event=stop_when_logged,
    ...             journal_path=d / "watch.sqlite")
    >>> w.run()
    >>> [e.fields["version"] for e in w.events if e.event == "logged"]
    ['v0']
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        artifact: str,
        type: str = "model",
        *,
        repo: str | os.PathLike[str] | aio.Repository | None = None,
        endpoint_url: str | None = None,
        settle: float = 30.0,
        pattern: str = "*",
        mode: str = "versions",
        keep_last: int | None = None,
        alias_best: str | None = None,
        best_mode: str = "min",
        skip_intermediate: bool = False,
        rescan: float = 60.0,
        stop_timeout: float = 30.0,
        force_polling: bool = False,
        on_event: Callable[[WatchEvent], None] | None = None,
        journal_path: str | os.PathLike[str] | None = None,
        keep_events: int = 1000,
    ) -> None:
        ref = parse_ref(artifact)
        if ref.version is not None or ref.alias is not None:
            raise ConfigError(f"watch logs into 'project/name', not a version ({artifact!r})")
        if mode not in ("versions", "files"):
            raise ConfigError(f"mode must be 'versions' or 'files', not {mode!r}")
        if best_mode not in ("min", "max"):
            raise ConfigError(f"best_mode must be 'min' or 'max', not {best_mode!r}")
        if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 1):
            raise ConfigError(f"keep_last must be at least 1, not {keep_last!r}")
        if not (settle >= 0 and rescan > 0 and stop_timeout >= 0):
            raise ConfigError("settle and stop_timeout must be ≥ 0 seconds, rescan > 0")
        self.directory = os.path.abspath(os.fspath(directory))
        self.project, self.name, self.type = ref.project, ref.name, type
        self._repository = repo if isinstance(repo, aio.Repository) else None
        self.repo = repo.url if isinstance(repo, aio.Repository) else (os.fspath(repo) if repo else None)
        self.endpoint_url = endpoint_url
        self.settle, self.pattern, self.mode = float(settle), pattern, mode
        self.keep_last, self.alias_best, self.best_mode = keep_last, alias_best, best_mode
        self.skip_intermediate = skip_intermediate
        self.rescan, self.stop_timeout, self.force_polling = float(rescan), float(stop_timeout), force_polling
        self.on_event = on_event
        self.journal_path = Path(journal_path) if journal_path is not None else None
        self.events: list[WatchEvent] = []  # the newest `keep_events`
        self._keep_events = keep_events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requests = 0
        self._lock = threading.Lock()
        self._core: Repository | None = None
        self._journal: WatchJournal | None = None
        self._rows: dict[str, JournalRow] = {}
        self._cands: dict[str, _Candidate] = {}
        self._dirty: set[str] = set()
        self._tick = asyncio.Event()
        self._work = asyncio.Event()
        self._busy: str | None = None
        self._upload_task: asyncio.Task[None] | None = None
        self._backoff = 1.0

    # -- control ------------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = False) -> None:
        """Watches until `stop()`; returns after the current upload finished or was journaled."""
        from syncengine._loop import run

        run(self.arun(handle_signals=handle_signals))

    def stop(self) -> None:
        """Asks the watcher to stop (thread-safe). The upload in progress gets ``stop_timeout``
        seconds to finish; after that — or at a second `stop()` — it is interrupted and stays
        journaled, to be resumed by the next run."""
        with self._lock:
            self._stop_requests += 1
            loop = self._loop
        if loop is None:
            return  # not running yet: arun sees _stop_requests
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._request_stop()
        else:
            loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        assert self._stop is not None
        if self._stop.is_set() and self._upload_task is not None and self._busy is not None:
            self._upload_task.cancel()  # a second request: stop now
        self._stop.set()
        self._tick.set()
        self._work.set()

    def _emit(self, event: str, checkpoint: str | None = None, **fields: Any) -> None:
        e = WatchEvent(event, checkpoint, fields)
        self.events.append(e)
        if len(self.events) > self._keep_events:
            del self.events[: len(self.events) - self._keep_events]
        if self.on_event is not None:
            self.on_event(e)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- the run ------------------------------------------------------------------------------

    async def arun(self, *, handle_signals: bool = False) -> None:
        """`run` on the running event loop."""
        from syncengine.store import open_store

        if not os.path.isdir(self.directory):
            raise ConfigError(
                f"{self.directory}: no such folder to watch (create it, or start the watch later)"
            )
        loop = asyncio.get_running_loop()
        self._tick, self._work, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        with self._lock:
            self._loop = loop
            if self._stop_requests:
                self._stop.set()
        url = self.repo if self.repo is not None else aio.default_repo()
        store = None if self._repository is not None else open_store(url, endpoint_url=self.endpoint_url)
        signals: list[signal.Signals] = []
        try:
            if self._repository is not None:
                self._core = self._repository.core
            else:
                assert store is not None
                self._core = await Repository.open(store)
            watch_id = _blake3.blake3(
                "\0".join(
                    [
                        self._core.config.id,
                        os.path.realpath(self.directory),
                        self.project,
                        self.name,
                        self.mode,
                    ]
                ).encode()
            ).hexdigest()[:32]
            self._journal = await self._io(WatchJournal, watch_id, self.journal_path)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(
                        NotImplementedError, RuntimeError, ValueError
                    ):  # not main thread
                        loop.add_signal_handler(sig, self.stop)
                        signals.append(sig)
            await self._main(url)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._journal is not None:
                await self._io(self._journal.close)
                self._journal = None
            if store is not None:
                await store.close()
            with self._lock:
                self._loop = None

    async def _main(self, url: str) -> None:
        assert self._journal is not None and self._stop is not None and self._core is not None
        try:  # a wrong type would fail every upload: say so now, once
            head = await self._core.head(self.project, self.name)
        except ArtifactNotFound:
            head = None
        if head is not None and head.type != self.type:
            raise TypeMismatch(
                f"artifact {self.project}/{self.name} has type {head.type!r}, not {self.type!r}"
            )
        self._rows = await self._io(self._journal.rows)
        resumed = sorted((n for n, r in self._rows.items() if r.state == "uploading"), key=natural_key)
        self._emit(
            "start",
            directory=self.directory,
            artifact=f"{self.project}/{self.name}",
            repo=url,
            settle=self.settle,
            mode=self.mode,
            journal=str(self._journal.path),
        )
        for name in resumed:
            self._emit("resume", name, detail="its upload was interrupted; logging it again")
        events = asyncio.ensure_future(self._events())
        self._upload_task = asyncio.ensure_future(self._uploader())
        try:
            await self._scheduler()
        finally:
            self._stop.set()
            self._work.set()
            await asyncio.wait([self._upload_task], timeout=self.stop_timeout)
            if not self._upload_task.done():
                self._upload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upload_task
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            waiting = sum(1 for r in self._rows.values() if r.state in ("ready", "uploading"))
            self._emit("stopped", waiting=waiting)

    # -- finding and settling checkpoints -----------------------------------------------------

    async def _events(self) -> None:
        """File events mark the top-level entries they touch (and wake the scheduler)."""
        assert self._stop is not None
        try:
            from watchfiles import awatch

            debounce = int(max(50, min(1600, self.settle * 500)))
            async for changes in awatch(
                self.directory,
                stop_event=self._stop,
                watch_filter=None,
                recursive=True,
                debounce=debounce,
                force_polling=self.force_polling or None,
            ):
                for _, path in changes:
                    rel = os.path.relpath(path, self.directory)
                    top = rel.split(os.sep, 1)[0]
                    if top not in (".", ".."):
                        self._dirty.add(top)
                self._tick.set()
        except Exception as e:  # no inotify, too many watches …: the rescans still find everything
            self._emit(
                "error",
                detail=f"file events unavailable, rescanning every {format_duration(self.rescan)}: {e}",
            )

    async def _scheduler(self) -> None:
        assert self._stop is not None
        tick = max(0.02, min(self.settle / 4, 1.0))
        last_rescan = -math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_rescan >= self.rescan:
                last_rescan = now
                names = set(await self._io(self._list)) | set(self._rows) | set(self._cands)
                self._dirty.clear()
            else:
                names, self._dirty = self._dirty, set()
                names |= {n for n, c in self._cands.items() if now >= c.since + self.settle or c.trust_marker}
            for name in sorted(names, key=natural_key):
                if self._stop.is_set():
                    break
                if is_checkpoint_name(name, self.pattern) or name in self._rows or name in self._cands:
                    await self._examine(name)
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), tick)

    def _list(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.directory) if is_checkpoint_name(n, self.pattern)]
        except FileNotFoundError:
            return []

    def _look(self, name: str, markers: bool) -> tuple[Signature | None, str | None]:
        path = os.path.join(self.directory, name)
        sig = signature(path) if is_checkpoint_name(name, self.pattern) else None
        marker = completion_marker(self.directory, name) if markers and sig is not None else None
        return sig, marker

    async def _set(self, name: str, state: str, sig: bytes, version: int | None = None) -> JournalRow:
        assert self._journal is not None
        row = await self._io(self._journal.set, name, state, sig, version)
        self._rows[name] = row
        return row

    async def _forget(self, name: str) -> None:
        assert self._journal is not None
        await self._io(self._journal.delete, name)
        self._rows.pop(name, None)

    async def _examine(self, name: str) -> None:
        row = self._rows.get(name)
        cand = self._cands.get(name)
        want_marker = cand is None or cand.trust_marker
        sig, marker = await self._io(self._look, name, want_marker)
        now = time.monotonic()
        if sig is None:  # gone, or (still) an empty folder
            self._cands.pop(name, None)
            if row is not None and row.state in ("seen", "ready"):
                await self._forget(name)
                self._emit("vanished", name)
            return
        if row is not None and row.state == "uploading":
            return  # the uploader checks it
        if row is not None and row.state == "ready":
            if row.signature != sig.digest:
                self._cands[name] = _Candidate(sig, now, trust_marker=False)
                await self._set(name, "seen", sig.digest)
                self._emit("changed", name, detail="changed while waiting to be logged")
            return
        if row is not None and row.state in ("logged", "skipped"):
            if row.signature == sig.digest:
                return
            if cand is None:
                self._emit("rewritten", name, previous=row.state)
        if cand is None or cand.sig != sig:
            if cand is None:
                await self._set(name, "seen", sig.digest)
                self._emit("seen", name, bytes=sig.bytes, files=len(sig.files))
            cand = self._cands[name] = _Candidate(sig, now, cand.trust_marker if cand else True)
            settled = False
        else:
            settled = now - cand.since >= self.settle
        if marker is not None and cand.trust_marker:
            why = f"marker {marker}"
        elif settled:
            why = f"unchanged for {format_duration(self.settle)}"
        else:
            return
        del self._cands[name]
        await self._set(name, "ready", sig.digest)
        self._emit("ready", name, by=why, bytes=sig.bytes, files=len(sig.files))
        if self._busy is not None:
            waiting = sum(1 for r in self._rows.values() if r.state == "ready")
            self._emit("waiting", name, waiting=waiting, uploading=self._busy)
        self._work.set()

    # -- logging ------------------------------------------------------------------------------

    async def _uploader(self) -> None:
        assert self._journal is not None and self._stop is not None
        while not self._stop.is_set():
            self._work.clear()  # before the look: a checkpoint made ready meanwhile sets it again
            rows = await self._io(self._journal.waiting)
            if not rows:
                await self._work.wait()
                continue
            row = rows[0]
            if self.skip_intermediate and row.state == "ready":
                ready = [r for r in rows if r.state == "ready"]
                row = max(ready, key=lambda r: (r.seq, natural_key(r.name)))
                for r in ready:
                    if r is not row:
                        await self._set(r.name, "skipped", r.signature)
                        self._emit("skipped", r.name, newer=row.name)
            self._busy = row.name
            try:
                await self._upload(row)
            finally:
                self._busy = None

    async def _upload(self, row: JournalRow) -> None:
        assert self._core is not None and self._stop is not None
        name, path = row.name, os.path.join(self.directory, row.name)
        snap = await self._io(signature, path)
        if snap is None:
            await self._forget(name)
            self._cands.pop(name, None)
            self._emit("vanished", name)
            return
        if snap.digest != row.signature:
            await self._retry_later(name, snap, "changed since it settled")
            return
        ready_at = row.updated
        await self._set(name, "uploading", snap.digest)
        metrics, step = await self._io(read_metrics, self.directory, name)
        self._emit("uploading", name, bytes=snap.bytes, files=len(snap.files))
        started = time.monotonic()

        async def unchanged() -> None:  # after the upload, before the version record
            now = await self._io(signature, path)
            if now is None or now != snap:
                raise CheckpointChanged(f"{name}: its files changed while it was being logged")

        try:
            result = await self._log(name, path, metrics, step, unchanged)
        except asyncio.CancelledError:
            self._emit(
                "interrupted", name, detail="journaled; the next run logs it again, resuming its packs"
            )
            raise
        except (CheckpointChanged, FileChangedError, HashingFailed, FileNotFoundError) as e:
            await self._retry_later(name, snap, str(e))
            return
        except (SyncEngineError, OSError) as e:
            await self._set(name, "ready", snap.digest)
            self._emit("error", name, detail=str(e), retry_in=round(self._backoff, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._backoff)
            self._backoff = min(MAX_BACKOFF, self._backoff * 2)
            return
        self._backoff = 1.0
        record = result.record
        await self._set(name, "logged", snap.digest, record.version)
        fields: dict[str, Any] = {
            "version": f"v{record.version}",
            "created": result.created,
            "files": record.files,
            "bytes": record.size,
            "new_bytes": result.new_bytes,
            "seconds": round(time.monotonic() - started, 3),
            "delay": round(max(0.0, time.time() - ready_at), 3),
        }
        if not result.created and record.metadata.get("watch.checkpoint") not in (None, name):
            fields["same_content_as"] = record.metadata.get("watch.checkpoint")
        self._emit("logged", name, **fields)
        await self._after(name, record.version, metrics)

    async def _retry_later(self, name: str, snap: Signature, why: str) -> None:
        """Back to ``seen``: logged once it is unchanged for the settle time (markers are not
        trusted for it this time: the files moved after the marker said they were done)."""
        await self._set(name, "seen", snap.digest)
        self._cands[name] = _Candidate(snap, time.monotonic(), trust_marker=False)
        self._dirty.add(name)
        self._emit("changed", name, detail=why)

    async def _log(
        self,
        name: str,
        path: str,
        metrics: dict[str, Any],
        step: int | None,
        check: Callable[[], Awaitable[None]],
    ) -> PutResult:
        assert self._core is not None
        core = self._core
        metadata: dict[str, Any] = {"watch.checkpoint": name}
        if step is not None:
            metadata["step"] = step
        if metrics:
            metadata["metrics"] = metrics
        is_dir = os.path.isdir(path)
        if self.mode == "versions":
            source = Source(path, "") if is_dir else Source(path, name)
            return await core.log(
                [source], project=self.project, name=self.name, type=self.type, metadata=metadata,
                before_commit=check,
            )  # fmt: skip
        return await self._log_into_growing_version(name, path, is_dir, metadata, check)

    async def _log_into_growing_version(
        self,
        name: str,
        path: str,
        is_dir: bool,
        metadata: dict[str, Any],
        check: Callable[[], Awaitable[None]],
    ) -> PutResult:
        """``mode="files"``: the newest version plus this checkpoint under ``NAME/`` (a draft:
        only its files are hashed, the rest of the manifest is the base's)."""
        from syncengine.repo.draft import DraftChanges, NotInDraft, log_draft

        assert self._core is not None
        core = self._core
        try:
            head = await core.head(self.project, self.name)
        except ArtifactNotFound:
            head = None
        if head is None or head.latest is None:
            metadata["watch.checkpoints"] = [name]
            return await core.log(
                [Source(path, name)], project=self.project, name=self.name, type=self.type,
                metadata=metadata, before_commit=check,
            )  # fmt: skip
        base = await core.version(self.project, self.name, head.latest)
        changes = DraftChanges(base)
        before = base.metadata.get("watch.checkpoints")
        listed = [n for n in before if isinstance(n, str)] if isinstance(before, list) else []
        if name in listed:  # rewritten: replace the whole folder, not only the files it still has
            listed.remove(name)
            with contextlib.suppress(NotInDraft):
                await changes.remove(core, name)
        if is_dir:
            changes.add_dir(path, name)
        else:
            changes.add_file(path, name)
        listed.append(name)
        while self.keep_last is not None and len(listed) > self.keep_last:
            with contextlib.suppress(NotInDraft):
                await changes.remove(core, listed.pop(0))
        kept = {k: v for k, v in base.metadata.items() if k not in ("metrics", "step")}
        return await log_draft(
            core,
            changes,
            description=base.description,
            metadata={**kept, **metadata, "watch.checkpoints": listed},
            before_commit=check,
        )

    async def _after(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        """``keep_last`` and ``alias_best`` after a version was logged; their failures are
        reported and do not stop the watch (the next checkpoint tries again)."""
        from syncengine.repo.lifecycle import cleanup

        assert self._core is not None
        core = self._core
        if self.alias_best is not None:
            try:
                await self._move_best(name, version, metrics)
            except (SyncEngineError, OSError) as e:
                self._emit("error", name, detail=f"alias best: {e}")
        if self.keep_last is not None:
            try:
                keep = 1 if self.mode == "files" else self.keep_last
                done = await cleanup(core, self.project, self.name, keep_last=keep)
            except (SyncEngineError, OSError) as e:
                self._emit("error", name, detail=f"keep-last: {e}")
            else:
                for d in done.deleted:
                    self._emit("deleted", None, version=f"v{d.version}", reason=d.reason, bytes=d.size)

    async def _move_best(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        assert self._core is not None and self.alias_best is not None
        core, key = self._core, self.alias_best
        value = metrics.get(key)
        if not _is_number(value):
            self._emit("no-metric", name, key=key, detail="no numeric value: alias best not moved")
            return
        head = await core.head(self.project, self.name)
        current = head.aliases.get("best")
        if current == version:
            return
        previous: Any = None
        if current is not None:
            try:
                other = await core.version(self.project, self.name, current)
                found = other.metadata.get("metrics")
                previous = found.get(key) if isinstance(found, dict) else None
            except ArtifactNotFound:
                previous = None
            if _is_number(previous) and not (
                value < previous if self.best_mode == "min" else value > previous
            ):
                return
        await core.set_aliases(self.project, self.name, version, add=["best"])
        self._emit("best", name, version=f"v{version}", key=key, value=value, previous=previous)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
