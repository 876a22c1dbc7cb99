"""`syncengine gc --dry-run`: what garbage collection would reclaim (nothing is deleted yet).

Live data is what some non-deleted version uses: its manifest record, the manifest pages
reachable from it, and every blob its entries name. Everything else in ``data/``,
``manifests/`` and ``index/`` is garbage once no writer can still come to use it — the
two-phase sweep with a grace period that makes that safe is laid out in docs/GC.md; this
module computes the report both phases start from.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from syncengine.errors import ObjectNotFound, SyncEngineError
from syncengine.repo import object_caps as caps
from syncengine.repo.gc_objects import collectable
from syncengine.repo.lifecycle import expires_at
from syncengine.repo.manifest import decode_manifest, decode_page
from syncengine.repo.pack import IndexEntry
from syncengine.repo.records import LATEST, VersionRecord, decode_head, decode_version
from syncengine.repo.repository import Repository, _cached_segment, _remember_segment, _segment_cache_dir

#: A pack whose live blobs are less than this share of its bytes is worth repacking.
REPACK_BELOW: Final = 0.5
_PARALLEL: Final = 16


@dataclass
class GcReport:
    """Counts and bytes of what is live and what a collection would reclaim."""

    versions: int = 0  # live
    deleted_versions: int = 0
    packs: int = 0
    pack_bytes: int = 0
    live_blobs: int = 0
    live_bytes: int = 0  # stored bytes of the blob copies live versions use
    dead_blobs: int = 0  # indexed blobs no live version uses
    dead_bytes: int = 0
    dead_packs: int = 0  # packs with no live blob: deleted whole
    dead_pack_bytes: int = 0
    repack: list[str] = field(default_factory=list)  # packs under REPACK_BELOW live share
    repack_bytes: int = 0  # their dead bytes
    repack_copy_bytes: int = 0  # their live bytes: what a sweep copies into new packs
    unindexed_packs: int = 0  # no index segment names them: a crashed put, or one still running
    unindexed_bytes: int = 0
    manifest_objects: int = 0
    dead_manifest_objects: int = 0
    dead_manifest_bytes: int = 0
    expired: list[str] = field(default_factory=list)  # live versions past their TTL, no alias
    expired_aliased: list[str] = field(default_factory=list)  # past their TTL, kept for an alias
    problems: list[str] = field(default_factory=list)  # live blobs no index names (`check`)

    @property
    def reclaimable_bytes(self) -> int:
        """Whole dead packs, dead bytes of the packs worth repacking, dead manifest objects,
        and unindexed packs (after the grace period)."""
        return self.dead_pack_bytes + self.repack_bytes + self.dead_manifest_bytes + self.unindexed_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reclaimable_bytes": self.reclaimable_bytes}


async def _records(repo: Repository) -> list[VersionRecord]:
    keys: list[str] = []
    async for info in repo.store.list("artifacts/"):
        parts = info.key.split("/")
        if len(parts) == 5 and parts[3] == "versions":
            keys.append(info.key)
    gate = asyncio.Semaphore(_PARALLEL)

    async def load(key: str) -> VersionRecord:
        async with gate:
            return decode_version(await repo.store.get(key, max_bytes=caps.VERSION_RECORD), key)

    return list(await asyncio.gather(*(load(k) for k in keys)))


async def _aliased(repo: Repository, records: list[VersionRecord]) -> set[tuple[str, str, int]]:
    out: set[tuple[str, str, int]] = set()
    for project, name in sorted({(r.project, r.name) for r in records}):
        key = f"artifacts/{project}/{name}/head"
        try:
            head = decode_head(await repo.store.get(key, max_bytes=caps.HEAD), key)
        except SyncEngineError:
            continue
        out.update((project, name, v) for a, v in head.aliases.items() if a != LATEST)  # as cleanup
    return out


async def survey(
    repo: Repository,
    *,
    now: _dt.datetime | None = None,
    candidates: set[str] | None = None,
    unindexed_before: float | None = None,
    listed: dict[str, int] | None = None,
    live_digests: set[bytes] | None = None,
    drop_expired: bool = False,
) -> GcReport:
    """Marks what live versions use and measures the rest (reads only; see the module doc).

    ``candidates`` (if given) receives the keys a collection may delete: dead packs, dead
    manifest objects, and unindexed packs whose store mtime is before ``unindexed_before``
    (none without it: a put may still be writing them). ``listed`` receives key → size of
    every pack and manifest object listed, ``live_digests`` the digests of every live blob.
    ``drop_expired`` counts expired versions without aliases as deleted (what `gc` reclaims
    after its TTL expiry; for `gc --dry-run`)."""
    when = now or _dt.datetime.now(_dt.UTC)
    report = GcReport()
    # What exists is listed before the versions are read: an object a writer adds later is
    # never counted as garbage here (and never a candidate of the real collector, GC.md).
    data_listing = [i async for i in repo.store.list("data/")]
    packs = {i.key.rsplit("/", 1)[1]: i.size for i in data_listing}
    pack_keys = {i.key.rsplit("/", 1)[1]: i for i in data_listing}
    segments = [i.key async for i in repo.store.list("index/")]
    manifest_objects = {i.key: i.size async for i in repo.store.list("manifests/")}
    if listed is not None:
        listed.update({i.key: i.size for i in data_listing})
        listed.update(manifest_objects)
    records = await _records(repo)
    # Contributions of distributed writers not finished yet (docs/DISTRIBUTED.md) are roots
    # too: their manifests and blobs become a version only at finish.
    pending_roots = await _unfinished_contributions(repo)
    live = [r for r in records if not r.deleted]
    report.versions, report.deleted_versions = len(live), len(records) - len(live)
    aliased = await _aliased(repo, live)
    expired: set[tuple[str, str, int]] = set()
    for r in live:
        ends = expires_at(r)
        if ends is not None and ends <= when:
            ref = f"{r.project}/{r.name}:v{r.version}"
            if (r.project, r.name, r.version) in aliased:
                report.expired_aliased.append(ref)
            else:
                report.expired.append(ref)
                expired.add((r.project, r.name, r.version))
    if drop_expired and expired:
        live = [r for r in live if (r.project, r.name, r.version) not in expired]
        report.versions -= len(expired)
        report.deleted_versions += len(expired)

    live_objects: set[str] = set()
    blobs: set[bytes] = set()
    seen_pages: set[bytes] = set()
    for manifest_key in [r.manifest for r in live] + pending_roots:
        live_objects.add(manifest_key)
        m = decode_manifest(await repo.store.get(manifest_key, max_bytes=caps.MANIFEST_RECORD))
        stack = [m.root]
        while stack:
            pid = stack.pop()
            if pid in seen_pages:
                continue  # a subtree another version shares: walked once
            seen_pages.add(pid)
            h = pid.hex()
            key = f"manifests/{h[:2]}/{h}"
            live_objects.add(key)
            page = decode_page(pid, await repo.store.get(key, max_bytes=caps.MANIFEST_PAGE))
            stack.extend(ref.page for ref in page.refs)
            for e in page.entries:
                if e.ref is not None:
                    continue  # an external object: no blob stored
                if e.chunks:
                    blobs.update(d for _, d in e.chunks)
                else:
                    blobs.add(e.digest)

    entries = await all_index_entries(repo, segments)
    indexed_packs: dict[str, list[IndexEntry]] = {}
    found: set[bytes] = set()
    for ie in entries:
        indexed_packs.setdefault(ie.pack.hex(), []).append(ie)
    report.packs, report.pack_bytes = len(packs), sum(packs.values())
    for pack, size in packs.items():
        held = indexed_packs.get(pack)
        if held is None:
            report.unindexed_packs += 1
            report.unindexed_bytes += size
            old = unindexed_before is not None and pack_keys[pack].mtime < unindexed_before
            if candidates is not None and old and collectable(pack_keys[pack].key):
                candidates.add(pack_keys[pack].key)
            continue
        live_bytes = 0
        for ie in held:
            if ie.digest in blobs:
                found.add(ie.digest)
                report.live_blobs += 1
                live_bytes += ie.stored
            else:
                report.dead_blobs += 1
                report.dead_bytes += ie.stored
        report.live_bytes += live_bytes
        if live_bytes == 0:
            report.dead_packs += 1
            report.dead_pack_bytes += size
            if candidates is not None and collectable(pack_keys[pack].key):
                candidates.add(pack_keys[pack].key)
        elif live_bytes < REPACK_BELOW * size:
            report.repack.append(pack)
            report.repack_bytes += size - live_bytes
            report.repack_copy_bytes += live_bytes
    if live_digests is not None:
        live_digests.update(blobs)
    for digest in blobs - found:
        report.problems.append(f"blob {digest.hex()} of a live version is in no pack that exists")
    report.manifest_objects = len(manifest_objects)
    for key, size in manifest_objects.items():
        if key not in live_objects:
            report.dead_manifest_objects += 1
            report.dead_manifest_bytes += size
            if candidates is not None and collectable(key):
                candidates.add(key)
    return report


async def all_index_entries(repo: Repository, segments: list[str]) -> list[IndexEntry]:
    """Every record of every segment (a blob indexed in two packs appears twice)."""
    cache = _segment_cache_dir(repo.config.id)
    gate = asyncio.Semaphore(_PARALLEL)

    async def load(key: str) -> list[IndexEntry]:
        sid = bytes.fromhex(key.rsplit("/", 1)[1])
        got = await asyncio.to_thread(_cached_segment, cache, sid)
        if got is not None:
            return got
        async with gate:
            data = await repo.store.get(key, max_bytes=caps.INDEX_SEGMENT)
        return await asyncio.to_thread(_remember_segment, cache, sid, data)

    return [e for seg in await asyncio.gather(*(load(k) for k in segments)) for e in seg]


async def _unfinished_contributions(repo: Repository) -> list[str]:
    """Manifest keys of the part records under ``distributed/`` whose distributed id has no
    ``finished`` marker: an upsert's data is live until its finish has made it a version."""
    from syncengine.repo.distributed import PartRecord, _decode

    keys = [i.key async for i in repo.store.list("distributed/")]
    finished = {k[: -len("finished")] for k in keys if k.endswith("/finished")}
    out: list[str] = []
    for k in keys:
        base, sep, _ = k.rpartition("/parts/")
        if not sep or f"{base}/" in finished:
            continue
        try:
            part = _decode(await repo.store.get(k, max_bytes=caps.DISTRIBUTED_RECORD), PartRecord, k)
        except ObjectNotFound:
            continue
        out.append(part.manifest)
    return out
