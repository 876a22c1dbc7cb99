"""Drafts: the next version of an artifact as a logged version plus files added and paths removed.

Only the added files are hashed and uploaded, through `Repository._log` (the same packing,
journaling and commit order as a put); the manifest is the base's page tree patched with the
changes (syncengine.repo.manifest_patch), so one changed file writes a couple of pages
whatever the version's size. The operations apply in the order they were made: adding a path
again replaces it, and `remove` drops what was staged before it as well as the base's files.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, NamedTuple

from syncengine.errors import ConfigError, SyncEngineError
from syncengine.hashing.stat_cache import StatCache
from syncengine.hashing.tree import Source, TreeHasher
from syncengine.repo.manifest import Manifest, ManifestEntry, ManifestReader
from syncengine.repo.manifest_patch import FileFolderConflict, covered, patch_manifest
from syncengine.repo.put_journal import PutJournal
from syncengine.repo.records import FORMAT, VersionRecord, check_alias, check_tag
from syncengine.repo.references import Merge
from syncengine.repo.repository import PutResult, Repository, TypeMismatch
from syncengine.scan import ScanEntry, _normalize_prefix, scan


class NotInDraft(SyncEngineError, LookupError):
    """`remove` named a path that neither the base version nor the draft's additions hold."""


class DraftPathConflict(SyncEngineError, ValueError):
    """A draft would make one path both a file and a folder (e.g. it adds a file `a` while
    the base has `a/b.txt`); raised at save, before anything is committed."""


class _Addition(NamedTuple):
    seq: int
    root: str  # local file or folder
    target: str  # manifest path of the file, or folder prefix ("" = the top)
    is_dir: bool


def check_path(name: str, what: str = "path") -> str:
    """A manifest path as given by a user: relative, '/'-separated, no '.', '..' or empty parts
    (a trailing '/' is dropped)."""
    try:
        out = _normalize_prefix(name)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"invalid {what} {name!r}: use a relative path such as 'data/train.csv'") from e
    if not out:
        raise ConfigError(f"invalid {what} {name!r}: use a relative path such as 'data/train.csv'")
    return out


class DraftChanges:
    """What a draft stages on top of its base, in order (each operation has a sequence number)."""

    def __init__(self, base: VersionRecord) -> None:
        self.base = base
        self._seq = 0
        self.additions: list[_Addition] = []
        self.removals: dict[str, int] = {}  # path or folder → sequence number of its remove
        self._reader: ManifestReader | None = None

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def add_file(self, path: str, name: str | None) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not a file")
        target = check_path(name if name is not None else os.path.basename(os.path.abspath(path)), "name")
        self.additions.append(_Addition(self._next(), path, target, False))

    def add_dir(self, path: str, name: str | None) -> None:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path}: not a folder")
        target = check_path(name, "name") if name not in (None, "", "/") else ""
        self.additions.append(_Addition(self._next(), path, target, True))

    async def remove(self, core: Repository, path: str) -> None:
        """Removes the file `path`, or everything under the folder `path/`, from the draft;
        `NotInDraft` if it holds neither (nothing is changed then)."""
        target = check_path(path)
        if not (self._staged(target) or await self._in_base(core, target)):
            raise NotInDraft(
                f"the draft of {self.base.project}/{self.base.name} (from v{self.base.version}) has no "
                f"file or folder {target!r}; nothing to remove"
            )
        self.removals[target] = self._next()

    def _staged(self, target: str) -> bool:
        for a in self.additions:
            later = {t for t, s in self.removals.items() if s > a.seq}
            if not a.is_dir:
                if covered(a.target, {target}) and not covered(a.target, later):
                    return True
            elif a.target == target or a.target.startswith(target + "/"):
                if not covered(a.target, later):  # (a folder removed inside it leaves the rest)
                    return True
            elif not a.target or target.startswith(a.target + "/"):
                rel = target[len(a.target) + 1 :] if a.target else target
                if os.path.lexists(os.path.join(a.root, *rel.split("/"))) and not covered(target, later):
                    return True
        return False

    async def _in_base(self, core: Repository, target: str) -> bool:
        if self._reader is None:
            self._reader = _cached(await core.manifest(self.base))
        removed = self.removals.keys()
        entry = await self._reader.get(target)
        if entry is not None and not covered(target, removed):
            return True
        async for e in self._reader.entries(prefix=target + "/"):
            if not covered(e.path, removed):
                return True
        return False

    def sources(self) -> list[Source]:
        return [Source(a.root, a.target) for a in self.additions]

    def scan(self, hasher: TreeHasher) -> Iterator[ScanEntry]:
        """The files the additions bring, in path order; for a path staged twice the later
        addition wins, and a path removed after it was staged is left out."""
        walks = []
        for a in self.additions:
            later = {t for t, s in self.removals.items() if s > a.seq}
            found = scan(
                a.root,
                prefix=a.target,
                include=hasher.include,
                exclude=hasher.exclude,
                follow_symlinks=hasher.follow_symlinks,
                on_warning=hasher.stats.warnings.append,
                include_vcs=hasher.include_vcs,
            )
            walks.append(_keyed(found, -a.seq, later))
        last: bytes | None = None
        for key, _, e in heapq.merge(*walks, key=lambda t: (t[0], t[1])):
            if key != last:
                last = key
                yield e


def _cached(reader: ManifestReader, pages: int = 256) -> ManifestReader:
    """The reader with its last `pages` pages kept: many `remove` calls look up the same root
    and interior pages (each look-up reads one page per level)."""
    kept: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
    load = reader._load

    async def cached_load(pid: bytes) -> bytes:
        data = kept.get(pid)
        if data is None:
            data = kept[pid] = await load(pid)
            if len(kept) > pages:
                kept.popitem(last=False)
        else:
            kept.move_to_end(pid)
        return data

    return ManifestReader(reader.manifest, cached_load)


def _keyed(
    found: Iterator[ScanEntry], order: int, removed: set[str]
) -> Iterator[tuple[bytes, int, ScanEntry]]:
    for e in found:
        if not (removed and covered(e.path, removed)):
            yield e.path.encode(), order, e


class _DraftHasher(TreeHasher):
    """A TreeHasher whose input is a draft's additions (overlapping ones resolved)."""

    def __init__(self, changes: DraftChanges, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes = changes

    def scan(self, sources: Sequence[Source]) -> Iterator[ScanEntry]:
        return self._changes.scan(self)


class _PatchedManifest:
    """A ManifestSink: the hashed additions collected, then merged into the base's tree."""

    def __init__(self, reader: ManifestReader, removals: set[str], base: VersionRecord) -> None:
        self._reader = reader
        self._removals = removals
        self._base = base
        self._entries: list[ManifestEntry] = []

    def add(self, entry: ManifestEntry) -> list[tuple[bytes, bytes]]:
        self._entries.append(entry)
        return []

    async def finish(self) -> tuple[list[tuple[bytes, bytes]], Manifest]:
        try:
            return await patch_manifest(self._reader, self._entries, self._removals)
        except FileFolderConflict as e:
            b = self._base
            raise DraftPathConflict(
                f"the draft of {b.project}/{b.name} (from v{b.version}) was not logged: {e}"
                f"; remove {e.file!r} in the draft first, or add under another name"
            ) from None


async def log_draft(
    core: Repository,
    changes: DraftChanges,
    *,
    description: str,
    metadata: dict[str, Any],
    aliases: Sequence[str] = (),
    tags: Sequence[str] = (),
    threads: int | None = None,
    stat_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    on_upload: Callable[[int, int], None] | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
    logged_by: str = "",
    ttl_seconds: int | None = None,
) -> PutResult:
    """Logs base + changes as the next version of the base's artifact (or finds the version
    with identical content). Newer versions logged since the base do not matter: the new
    version is the base plus these changes. ``logged_by`` ("project/run-id") and
    ``ttl_seconds`` go into a version this call creates."""
    base = changes.base
    aliases = [check_alias(a) for a in dict.fromkeys(aliases)]
    tags = [check_tag(t) for t in dict.fromkeys(tags)]
    head = await core.head(base.project, base.name)
    if head.type != base.type:
        raise TypeMismatch(f"artifact {base.project}/{base.name} has type {head.type!r}, not {base.type!r}")
    loop = asyncio.get_running_loop()
    reader = await core.manifest(base)
    index = await core.index()
    cache = StatCache(None, core.params.label) if stat_cache else None
    hasher = _DraftHasher(changes, core.params, threads=threads, stat_cache=cache, on_progress=on_progress)
    result = PutResult(VersionRecord(FORMAT, base.project, base.name, -1, base.type, "", "", 0, 0, ""), False)
    journal = await loop.run_in_executor(None, PutJournal, core.config.id)
    try:
        return await core._log(
            result, aliases, description, metadata, tags, changes.sources(), index, cache, hasher,
            journal, None, b"", on_upload, Merge([]), logged_by=logged_by,
            sink=_PatchedManifest(reader, set(changes.removals), base), ttl_seconds=ttl_seconds,
            before_commit=before_commit,
        )  # fmt: skip
    finally:
        await loop.run_in_executor(None, journal.close)
