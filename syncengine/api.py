"""The synchronous facade over `syncengine.aio`: the same API without `await`.

Calls run on one background event loop thread, so the facade works from plain scripts, from
threads, and from code already inside a running event loop (a notebook) without deadlock.
A fork()ed child (multiprocessing's "fork" start method, PyTorch DataLoader workers) starts
its own loop thread, and repositories opened in the parent reopen their store there.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); (d / "data").mkdir(); _ = (d / "data" / "x.txt").write_text("x")
>>> repo = Repository.open(str(d / "repo"))
>>> art = Artifact("mnist", type="dataset"); art.add_dir(str(d / "data"))
>>> repo.log_artifact(art, project="vision").version
'v0'
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from syncengine import aio
from syncengine._loop import new_event_loop
from syncengine.aio import Artifact, Manifest
from syncengine.aio_draft import Draft as _AsyncDraft

if TYPE_CHECKING:
    from syncengine.api_runs import Run

if TYPE_CHECKING:
    from syncengine.repo.lifecycle import Cleanup, Deletion
    from syncengine.repo.local_cache import CacheCleanup, CacheInfo

T = TypeVar("T")
__all__ = ["Artifact", "ArtifactVersion", "Draft", "Manifest", "Repository"]


class _Loop:
    """One event loop on a daemon thread, shared by every facade object.

    A fork()ed child (multiprocessing's "fork" start method, DataLoader workers) inherits the
    loop object but not its thread: the child drops it (at-fork hook, and a pid check for
    forks that skip the hooks) and starts its own loop thread on first use."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None
    _orphans: tuple[asyncio.AbstractEventLoop, ...] = ()  # the parent's loops, never finalised here

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T]) -> T:
        with cls._lock:
            if cls._loop is not None and cls._pid != os.getpid():
                cls._orphans += (cls._loop,)
                cls._loop = None
            if cls._loop is None:
                loop = new_event_loop()
                threading.Thread(target=loop.run_forever, name="syncengine-loop", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            loop = cls._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    @classmethod
    def _after_fork_in_child(cls) -> None:
        cls._lock = threading.Lock()  # another thread of the parent may have held it
        if cls._loop is not None:
            cls._orphans += (cls._loop,)
            cls._loop = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Loop._after_fork_in_child)


class ArtifactVersion:
    """A logged version; see `syncengine.aio.ArtifactVersion`."""

    def __init__(self, inner: aio.ArtifactVersion) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_inner":
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return repr(self._inner)

    def save(self) -> None:
        _Loop.run(self._inner.save())

    def delete(self, delete_aliases: bool = False, *, dry_run: bool = False) -> Deletion:
        """See `syncengine.aio.ArtifactVersion.delete`."""
        return _Loop.run(self._inner.delete(delete_aliases, dry_run=dry_run))

    def download(
        self,
        root: str | os.PathLike[str] | None = None,
        path_prefix: str | None = None,
        skip_cache: bool = False,
        *,
        link: str | None = None,
        cache_size: int | None = None,
        fsync: bool = True,
        trust_references: bool | None = None,
    ) -> str:
        """See `syncengine.aio.ArtifactVersion.download` (default root `./artifacts/<name>-vN`)."""
        return _Loop.run(
            self._inner.download(
                root,
                path_prefix,
                skip_cache,
                link=link,
                cache_size=cache_size,
                fsync=fsync,
                trust_references=trust_references,
            )
        )

    def checkout(
        self,
        root: str | os.PathLike[str],
        *,
        skip_cache: bool = False,
        link: str | None = None,
        cache_size: int | None = None,
        trust_references: bool | None = None,
    ) -> str:
        return _Loop.run(
            self._inner.checkout(
                root,
                skip_cache=skip_cache,
                link=link,
                cache_size=cache_size,
                trust_references=trust_references,
            )
        )

    def verify(
        self, root: str | os.PathLike[str], references: bool = False, *, trust_references: bool | None = None
    ) -> None:
        _Loop.run(self._inner.verify(root, references, trust_references=trust_references))

    @property
    def manifest(self) -> Manifest:
        return _Loop.run(self._inner.manifest())

    # Lineage and collections (syncengine/api_runs.py, docs/LINEAGE.md).

    def logged_by(self) -> Run | None:
        from syncengine.api_runs import wrap_run

        return wrap_run(_Loop.run(self._inner.logged_by()))

    def used_by(self) -> list[Run]:
        from syncengine.api_runs import Run

        return [Run(r) for r in _Loop.run(self._inner.used_by())]

    def link(self, target: str, aliases: Sequence[str] = ()) -> ArtifactVersion:
        return ArtifactVersion(_Loop.run(self._inner.link(target, aliases)))

    def unlink(self) -> None:
        _Loop.run(self._inner.unlink())

    def new_draft(self) -> Draft:
        """A draft of the next version, starting from this one; see `syncengine.aio.Draft`."""
        return Draft(self._inner.new_draft())


class Draft:
    """The next version as this one plus changes; see `syncengine.aio.Draft`.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "data").mkdir(); _ = (d / "data" / "x.txt").write_text("x")
    >>> repo = Repository.open(str(d / "repo"))
    >>> art = Artifact("mnist", type="dataset"); art.add_dir(str(d / "data"))
    >>> draft = repo.log_artifact(art, project="vision").new_draft()
    >>> _ = (d / "y.txt").write_text("y"); draft.add_file(str(d / "y.txt")); draft.remove("x.txt")
    >>> v1 = draft.save(); (v1.version, sorted(v1.manifest.entries))
    ('v1', ['y.txt'])
    """

    def __init__(self, inner: _AsyncDraft) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return repr(self._inner)

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self._inner.add_file(path, name)

    def add_dir(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self._inner.add_dir(path, name)

    def remove(self, path: str) -> None:
        _Loop.run(self._inner.remove(path))

    def save(
        self, aliases: Sequence[str] = (), tags: Sequence[str] = (), ttl: _dt.timedelta | None = None
    ) -> ArtifactVersion:
        return ArtifactVersion(_Loop.run(self._inner.save(aliases, tags, ttl=ttl)))


class Repository:
    """A repository; `Repository.open(path)` (default location when no path)."""

    def __init__(self, inner: aio.Repository) -> None:
        self._inner = inner

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> Repository:
        """A directory, ``file://…`` or ``s3://bucket/prefix`` (see `syncengine.aio.Repository.open`)."""
        return cls(_Loop.run(aio.Repository.open(url, endpoint_url=endpoint_url, region=region)))

    def close(self) -> None:
        _Loop.run(self._inner.close())

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_artifact(
        self,
        artifact: Artifact | Draft,
        project: str | None = None,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        ttl: _dt.timedelta | None = None,
    ) -> ArtifactVersion:
        inner = artifact._inner if isinstance(artifact, Draft) else artifact
        return ArtifactVersion(_Loop.run(self._inner.log_artifact(inner, project, aliases, tags, ttl)))

    def cleanup(self, name: str, keep_last: int = 1, *, dry_run: bool = False) -> Cleanup:
        """See `syncengine.aio.Repository.cleanup`."""
        return _Loop.run(self._inner.cleanup(name, keep_last, dry_run=dry_run))

    def gc(self, *, grace: float = 24 * 3600.0, dry_run: bool = False) -> Any:
        """See `syncengine.aio.Repository.gc`."""
        return _Loop.run(self._inner.gc(grace=grace, dry_run=dry_run))

    @property
    def cache(self) -> LocalCache:
        """This machine's file cache: `info()`, `cleanup("1GB")`."""
        return LocalCache()

    def artifact(self, ref: str) -> ArtifactVersion:
        return ArtifactVersion(_Loop.run(self._inner.artifact(ref)))

    def artifact_versions(self, name: str) -> list[ArtifactVersion]:
        return [ArtifactVersion(v) for v in _Loop.run(self._inner.artifact_versions(name))]

    def artifacts(self, project: str, type: str | None = None) -> list[str]:
        return _Loop.run(self._inner.artifacts(project, type))

    # Runs (syncengine/api_runs.py, docs/LINEAGE.md).

    def run(
        self,
        project: str,
        job_type: str = "",
        group: str | None = None,
        id: str | None = None,
        resume: bool = False,
        config: dict[str, Any] | None = None,
    ) -> Run:
        """``with repo.run(project="p", job_type="train") as run:`` (see `syncengine.aio_runs.Run`)."""
        from syncengine.api_runs import Run

        return Run(self._inner.run(project, job_type, group, id, resume, config))

    def runs(self, project: str, group: str | None = None) -> list[Run]:
        from syncengine.api_runs import Run

        return [Run(r) for r in _Loop.run(self._inner.runs(project, group))]


class LocalCache:
    """The machine's file cache (see `syncengine.repo.local_cache`)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def info(self) -> CacheInfo:
        from syncengine.repo.local_cache import cache_info

        return cache_info(self.path)

    def cleanup(self, target: str | int, *, dry_run: bool = False) -> CacheCleanup:
        """Deletes least recently used files until at most `target` (``"1GB"``) remain."""
        from syncengine.repo.local_cache import cache_cleanup

        return cache_cleanup(target, dry_run=dry_run, path=self.path)
