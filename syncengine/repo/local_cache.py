"""`syncengine cache info|cleanup` and `repo.cache`: the machine's file cache as a user sees it.

The cache itself (bounded, least recently used first, last use kept in its SQLite table) is
`syncengine.repo.file_cache`. Cleaning up only unlinks cache entries: a download in progress
copied (or cloned, or linked) what it took before the unlink, and POSIX keeps an open file's
data, so it finishes; a checkout that placed files as hard links keeps its own names for
those inodes, so its files stay whole (both tested, docs/DELETION.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Final

from syncengine.errors import ConfigError
from syncengine.repo.file_cache import FileCache, default_file_cache_dir, default_max_bytes
from syncengine.units import UnitError, parse_size

#: Opening a FileCache evicts down to its bound; these tools pass one that never does.
_NO_BOUND: Final = 1 << 62


@dataclass
class CacheInfo:
    location: str
    files: int
    bytes: int
    bound: int  # $SYNCENGINE_FILE_CACHE_SIZE, else the default (20 GiB)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CacheCleanup:
    target: int
    files_removed: int
    bytes_freed: int
    files: int  # left
    bytes: int  # left
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cache_info(path: str | None = None) -> CacheInfo:
    """Size, files, bound and location of the file cache (the machine's unless ``path``)."""
    bound = default_max_bytes()
    with FileCache(path, max_bytes=_NO_BOUND) as c:
        return CacheInfo(str(c.dir), len(c), c.total_bytes(), bound)


def cache_cleanup(target: str | int, *, dry_run: bool = False, path: str | None = None) -> CacheCleanup:
    """Deletes least recently used cache files until at most ``target`` remain: bytes, or
    text like ``"1GB"`` or ``"500MiB"`` (README.md, "Units"; ``ConfigError`` otherwise)."""
    try:
        limit = parse_size(target)
    except UnitError as e:
        raise ConfigError(f"cache cleanup: {e}") from None
    with FileCache(path, max_bytes=_NO_BOUND) as c:
        before_files, before = len(c), c.total_bytes()
        if dry_run:
            total, n = before, 0
            for _, size in c.eviction_order():
                if total <= limit:
                    break
                total -= size
                n += 1
            return CacheCleanup(limit, n, before - total, before_files - n, total, dry_run=True)
        n = c.evict(limit)
        after_files, after = len(c), c.total_bytes()
    return CacheCleanup(limit, n, max(0, before - after), after_files, after)


class LocalCache:
    """``repo.cache`` in the async API: the machine's file cache.

    >>> import asyncio
    >>> isinstance(asyncio.run(LocalCache().info()).bytes, int)
    True
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    @property
    def location(self) -> str:
        return str(self.path or default_file_cache_dir())

    async def info(self) -> CacheInfo:
        return await asyncio.to_thread(cache_info, self.path)

    async def cleanup(self, target: str | int, *, dry_run: bool = False) -> CacheCleanup:
        """Deletes least recently used files until at most ``target`` (``"1GB"``) remain."""
        return await asyncio.to_thread(cache_cleanup, target, dry_run=dry_run, path=self.path)
