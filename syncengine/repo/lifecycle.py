"""Deleting versions: tombstones by compare-and-swap, `cleanup` by count and TTL (docs/DELETION.md).

A deletion is two conditional writes, in this order:

1. the version record gets ``deleted: true`` (compare-and-swap on its ETag) — the commit
   point: from then on the version is not resolvable, listed, changed or matched as identical
   content, and its number is never handed out again (the record keeps it taken);
2. the artifact head drops the version's aliases and content digest; the newest version
   (``latest`` in the head) becomes the newest remaining one, and so does the alias `latest`
   if the deleted version held it (compare-and-swap, retried), with ``highest`` remembering
   the number that was newest so new versions are numbered above it.

Step 2 is idempotent: deleting a deleted version (or any later deletion of the artifact)
finishes it after a crash between the two. No data is removed here; the garbage collector
reclaims what no live version uses (docs/GC.md).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import msgspec

from syncengine.errors import ConfigError, PreconditionFailed, SyncEngineError
from syncengine.repo import object_caps as caps
from syncengine.repo.records import (
    LATEST,
    ArtifactHead,
    VersionRecord,
    decode_version,
    encode_record,
    version_key,
)
from syncengine.repo.repository import ArtifactNotFound, Repository
from syncengine.store.base import read_capped

#: Tombstones written at once by `cleanup`.
PARALLEL_DELETES: Final = 16


class AliasedVersion(SyncEngineError, ValueError):
    """A version that holds aliases (other than the managed `latest`) is not deleted unless
    asked to remove them too."""


@dataclass
class Deletion:
    """One version deleted (or that would be, with ``dry_run``)."""

    ref: str  # project/name:vN
    version: int
    files: int
    size: int
    aliases: list[str]  # aliases removed with it
    reason: str = "requested"  # or "expired" (TTL), "keep-last"
    dry_run: bool = False
    already_deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Cleanup:
    """What `cleanup` deleted, and the expired versions it kept because they hold aliases."""

    deleted: list[Deletion] = field(default_factory=list)
    kept_aliased: list[dict[str, Any]] = field(default_factory=list)  # {ref, aliases, expired}
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        """Bytes of the deleted versions' files (shared data stays until no version uses it)."""
        return sum(d.size for d in self.deleted)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [d.to_json() for d in self.deleted],
            "kept_aliased": self.kept_aliased,
            "bytes": self.bytes,
        }


def _ref(project: str, name: str, number: int) -> str:
    return f"{project}/{name}:v{number}"


def created_at(record: VersionRecord) -> _dt.datetime:
    return _dt.datetime.fromisoformat(record.created)


def expires_at(record: VersionRecord) -> _dt.datetime | None:
    """When the version's TTL runs out (creation time + TTL), or None without a TTL."""
    if record.ttl_seconds is None:
        return None
    return created_at(record) + _dt.timedelta(seconds=record.ttl_seconds)


def ttl_seconds(ttl: _dt.timedelta | int | float | None) -> int | None:
    """A TTL as stored: whole seconds, at least 1; None for no TTL."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (_dt.timedelta, int, float)):
        raise ConfigError(f"ttl must be a datetime.timedelta (or seconds), not {type(ttl).__name__}")
    seconds = ttl.total_seconds() if isinstance(ttl, _dt.timedelta) else float(ttl)
    if not seconds >= 1:
        raise ConfigError(f"ttl must be at least one second, not {seconds!r} s (None removes it)")
    return int(seconds)


async def _tombstone(repo: Repository, project: str, name: str, number: int) -> None:
    """Sets ``deleted`` on the version record by compare-and-swap (retried on conflict)."""
    key = version_key(project, name, number)
    while True:
        async with repo.store.open_read(key) as r:
            current, etag = decode_version(await read_capped(r, caps.VERSION_RECORD), key), r.info.etag
        if current.deleted:
            return
        try:
            await repo.store.put(
                key, encode_record(msgspec.structs.replace(current, deleted=True)), if_match=etag
            )
            return
        except PreconditionFailed:
            continue


async def _is_deleted(repo: Repository, project: str, name: str, number: int) -> bool:
    try:
        return (await repo.version(project, name, number, include_deleted=True)).deleted
    except SyncEngineError:
        return True  # no record at all: nothing to point at


async def _newest_remaining(
    repo: Repository, project: str, name: str, below: int, gone: set[int]
) -> int | None:
    """The highest version number ≤ ``below`` that is neither in ``gone`` nor deleted."""
    prefix = f"artifacts/{project}/{name}/versions/v"
    numbers = sorted(
        (n for n in [int(i.key[len(prefix) :]) async for i in repo.store.list(prefix)] if n <= below),
        reverse=True,
    )
    for n in numbers:
        if n not in gone and not await _is_deleted(repo, project, name, n):
            return n
    return None


async def forget(repo: Repository, project: str, name: str, numbers: Iterable[int]) -> list[tuple[int, str]]:
    """Step 2 of a deletion: the head drops aliases and digests of the deleted ``numbers``
    and ``latest`` moves to the newest version that is not deleted — the alias `latest` too,
    when a deleted version held it (one a user removed is not given back; one a user moved
    to a version that stays, stays) — by compare-and-swap, retried. Returns the (version,
    alias) pairs removed (`latest` is moved, not reported).

    After its write it checks that the version ``latest`` now names was not deleted
    meanwhile (that deletion's own head update may have come before this one), else goes
    again: ``latest`` never stays on a deleted version."""
    gone = set(numbers)
    while True:
        head, etag = await repo._read_head(project, name)
        if head is None:
            return []
        latest = head.latest
        if latest is not None and (latest in gone or await _is_deleted(repo, project, name, latest)):
            latest = await _newest_remaining(repo, project, name, latest - 1, gone)
        highest = head.highest
        if latest != head.latest and head.latest is not None:
            highest = max(head.latest, -1 if highest is None else highest)
        if highest is not None and latest is not None and highest <= latest:
            highest = None
        holder = head.aliases.get(LATEST)
        moves = holder is not None and (holder in gone or (holder == head.latest and latest != head.latest))
        removed = [(v, a) for a, v in head.aliases.items() if v in gone and not (a == LATEST and moves)]
        aliases = {a: v for a, v in head.aliases.items() if v not in gone}
        if moves:
            aliases.pop(LATEST, None)
            if latest is not None:
                aliases[LATEST] = latest
        new = msgspec.structs.replace(
            head,
            latest=latest,
            aliases=aliases,
            digests={d: v for d, v in head.digests.items() if v not in gone},
            highest=highest,
        )
        if new != head and not await repo._write_head(new, etag):
            continue
        if latest is None or not await _is_deleted(repo, project, name, latest):
            return sorted(removed)


def _held(head: ArtifactHead, number: int) -> list[str]:
    """The aliases that protect version ``number`` from deletion: all but `latest`, which a
    deletion moves to the newest remaining version (docs/DELETION.md)."""
    return sorted(a for a, v in head.aliases.items() if v == number and a != LATEST)


async def delete_version(
    repo: Repository,
    project: str,
    name: str,
    number: int,
    *,
    delete_aliases: bool = False,
    dry_run: bool = False,
) -> Deletion:
    """Deletes ``project/name:vN`` (see the module docstring). A version holding aliases
    other than `latest` raises `AliasedVersion` unless ``delete_aliases``; `latest` moves to
    the newest remaining version. Deleting a deleted version finishes its head update and
    reports ``already_deleted``. ``dry_run`` checks and reports, writing nothing."""
    head = await repo.head(project, name)  # an unknown artifact: the error suggests the closest
    try:
        record = await repo.version(project, name, number, include_deleted=True)
    except ArtifactNotFound as e:
        newest = "it has no versions" if head.latest is None else f"the newest is v{head.latest}"
        raise ArtifactNotFound(f"{e} ({newest})") from None
    held = _held(head, number)
    ref = _ref(project, name, number)
    out = Deletion(ref, number, record.files, record.size, held, dry_run=dry_run)
    if record.deleted:
        out.already_deleted = True
        if not dry_run:
            out.aliases = [a for _, a in await forget(repo, project, name, [number])]
        return out
    if held and not delete_aliases:
        raise AliasedVersion(
            f"{ref} has alias(es) {', '.join(held)}: remove them first (syncengine alias rm {ref} "
            f"{' '.join(held)}) or delete them with it (delete_aliases=True, --delete-aliases)"
        )
    if dry_run:
        return out
    await _tombstone(repo, project, name, number)
    removed = await forget(repo, project, name, [number])
    # An alias another writer set after the check above goes with the version: reported.
    out.aliases = sorted({*held, *(a for _, a in removed)})
    return out


async def cleanup(
    repo: Repository,
    project: str,
    name: str,
    *,
    keep_last: int = 1,
    dry_run: bool = False,
    now: _dt.datetime | None = None,
) -> Cleanup:
    """Deletes the versions of ``project/name`` that hold no alias (`latest` aside) and are
    either not among the newest ``keep_last`` or past their TTL. Aliased versions are never
    deleted here; those past their TTL are listed in ``kept_aliased`` (remove the aliases and
    the next cleanup deletes them). ``dry_run`` reports without writing."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ConfigError(f"keep_last must be a whole number ≥ 0, not {keep_last!r}")
    when = now or _dt.datetime.now(_dt.UTC)
    records = await repo.versions(project, name)
    head = await repo.head(project, name)
    newest = {r.version for r in records[max(0, len(records) - keep_last) :]} if keep_last else set()
    result = Cleanup(dry_run=dry_run)
    doomed: list[Deletion] = []
    for r in records:
        ends = expires_at(r)
        expired = ends is not None and ends <= when
        held = _held(head, r.version)
        if held:
            if expired:
                assert ends is not None
                result.kept_aliased.append(
                    {"ref": _ref(project, name, r.version), "aliases": held, "expired": ends.isoformat()}
                )
            continue
        if expired or r.version not in newest:
            reason = "expired" if expired else "keep-last"
            doomed.append(
                Deletion(_ref(project, name, r.version), r.version, r.files, r.size, [], reason, dry_run)
            )
    if not dry_run and doomed:
        gate = asyncio.Semaphore(PARALLEL_DELETES)

        async def tomb(n: int) -> None:
            async with gate:
                await _tombstone(repo, project, name, n)

        await asyncio.gather(*(tomb(d.version) for d in doomed))
        removed = await forget(repo, project, name, [d.version for d in doomed])
        by_version: dict[int, list[str]] = {}
        for v, a in removed:  # set by another writer after the listing above: reported
            by_version.setdefault(v, []).append(a)
        for d in doomed:
            d.aliases = by_version.get(d.version, [])
    result.deleted = doomed
    return result


async def expire(repo: Repository, *, dry_run: bool = False, now: _dt.datetime | None = None) -> Cleanup:
    """TTL expiry across the repository, as `gc` runs it first: for every artifact, `cleanup`
    with no count limit, so exactly the rule above — expired versions without aliases are
    deleted, expired aliased ones are kept and listed in ``kept_aliased``."""
    when = now or _dt.datetime.now(_dt.UTC)
    result = Cleanup(dry_run=dry_run)
    for project in await repo.projects():
        for name in [n async for n in repo.artifacts(project)]:  # listed before any write
            one = await cleanup(repo, project, name, keep_last=_EVERY_VERSION, dry_run=dry_run, now=when)
            result.deleted.extend(one.deleted)
            result.kept_aliased.extend(one.kept_aliased)
    return result


#: ``keep_last`` that keeps every version by count: only the TTL rule deletes.
_EVERY_VERSION: Final = 2**62
