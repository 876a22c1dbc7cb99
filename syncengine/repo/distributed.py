"""Distributed writers: many processes upsert files into one artifact, then one finish commits a version.

Each `upsert` hashes and uploads its files as a put does (packs, then an index segment, then
manifest pages and record) but commits no version: it records its contribution as an
immutable part object of its own (`distributed/<project>/<name>/<id>/parts/<writer>`,
create-if-absent under a name nobody else uses), so no two writers ever write one object.
`finish` seals the artifact, lists the parts, merges their manifests (the same path with the
same digest from two writers is kept once; different content is `DistributedConflict`),
commits one version the usual way and writes the `finished` marker (create-if-absent) naming
the version and the parts in it. docs/DISTRIBUTED.md has the argument for why this needs no
lock; docs/FORMAT.md the objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec

from syncengine.errors import ObjectNotFound, PreconditionFailed, SyncEngineError, did_you_mean
from syncengine.hashing.stat_cache import StatCache
from syncengine.hashing.tree import Source, TreeHasher
from syncengine.repo import object_caps as caps
from syncengine.repo.manifest import (
    ManifestBuilder,
    ManifestEntry,
    ManifestReader,
    decode_manifest,
)
from syncengine.repo.pack import CorruptData
from syncengine.repo.put_journal import PutJournal
from syncengine.repo.records import FORMAT, VersionRecord, check_alias, check_name, check_tag, json_copy
from syncengine.repo.references import Merge, Reference
from syncengine.repo.references import resolve as resolve_references
from syncengine.repo.repository import (
    PutResult,
    Repository,
    TypeMismatch,
    _created_by,
    _creation_fields,
    _ImmutableWrites,
    _obj_key,
    _put_manifest_record,
)

#: Part records read at once while finishing.
READ_PARTS = 16


class ArtifactFinished(SyncEngineError, ValueError):
    """An upsert into a distributed artifact that was already finished (its version is immutable)."""


class DistributedConflict(SyncEngineError, ValueError):
    """Two writers of one distributed artifact upserted the same path with different content."""


class NothingToFinish(SyncEngineError, LookupError):
    """`finish_artifact` found no upserted part for the distributed id."""


class PartRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`distributed/<project>/<name>/<id>/parts/<writer>`: one upsert's contribution."""

    format: int
    project: str
    name: str
    distributed_id: str
    writer: str  # the object's own name: unique per upsert call
    type: str
    manifest: str  # key of the manifest record of the upserted entries
    content_digest: str  # hex, of the upserted entries alone
    files: int
    size: int
    created: str  # RFC 3339 UTC
    created_by: dict[str, str] = {}
    run: str = ""  # "project/run-id" of the upserting run
    index_segment: str = ""  # key of the index segment the upsert wrote ("": no new blobs)


class SealRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`…/<id>/sealed`: a finish has begun; written before the parts are listed."""

    format: int
    created: str
    run: str = ""


class FinishedRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`…/<id>/finished`: the version the parts became (create-if-absent: the first finish wins)."""

    format: int
    project: str
    name: str
    distributed_id: str
    version: int
    content_digest: str
    parts: tuple[str, ...]  # writers whose files the version holds, sorted
    created: str
    run: str = ""


_encode = msgspec.json.Encoder(order="sorted").encode


def encode(record: PartRecord | SealRecord | FinishedRecord) -> bytes:
    """JSON with sorted keys, defaults omitted (like every record)."""
    return _encode(record)


def _decode(data: bytes, kind: type[Any], key: str) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CorruptData(f"{key}: not a valid {kind.__name__} ({e})") from e
    except RecursionError:
        raise CorruptData(f"{key}: not a valid {kind.__name__} (nested too deeply)") from None


def base_key(project: str, name: str, distributed_id: str) -> str:
    return f"distributed/{project}/{name}/{distributed_id}/"


def part_key(project: str, name: str, distributed_id: str, writer: str) -> str:
    return f"{base_key(project, name, distributed_id)}parts/{writer}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check(project: str, name: str, distributed_id: str) -> None:
    check_name("project", project)
    check_name("artifact name", name)
    check_name("distributed id", distributed_id)


async def read_finished(
    repo: Repository, project: str, name: str, distributed_id: str
) -> FinishedRecord | None:
    key = base_key(project, name, distributed_id) + "finished"
    try:
        return _decode(await repo.store.get(key, max_bytes=caps.DISTRIBUTED_RECORD), FinishedRecord, key)  # type: ignore[no-any-return]
    except ObjectNotFound:
        return None


async def _sealed(repo: Repository, project: str, name: str, distributed_id: str) -> bool:
    try:
        await repo.store.head(base_key(project, name, distributed_id) + "sealed")
    except ObjectNotFound:
        return False
    return True


def _finished_error(project: str, name: str, distributed_id: str, version: int | None) -> ArtifactFinished:
    done = f"was finished as v{version}" if version is not None else "is being finished"
    return ArtifactFinished(
        f"distributed artifact {project}/{name} (distributed id {distributed_id!r}) {done}: its "
        "version is immutable; upsert into a new distributed id, or log a new version"
    )


async def upsert(
    repo: Repository,
    sources: Sequence[Source],
    references: Sequence[Reference] = (),
    *,
    project: str,
    name: str,
    type: str,
    distributed_id: str,
    run: str = "",
    threads: int | None = None,
    stat_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    on_upload: Callable[[int, int], None] | None = None,
) -> PartRecord:
    """Stores `sources` (and `references`) in the repository and records them as one part of
    the distributed artifact; no version is committed (`finish` does that). Raises
    `ArtifactFinished` if the artifact was finished before this part could be included."""
    _check(project, name, distributed_id)
    check_name("type", type)
    finished = await read_finished(repo, project, name, distributed_id)
    if finished is not None or await _sealed(repo, project, name, distributed_id):
        raise _finished_error(project, name, distributed_id, finished.version if finished else None)
    staged = await _stage(
        repo, sources, references, project, name, type, threads, stat_cache, on_progress, on_upload
    )
    return await _write_part(repo, staged, project, name, distributed_id, type, run)


async def _stage(
    repo: Repository,
    sources: Sequence[Source],
    references: Sequence[Reference],
    project: str,
    name: str,
    type: str,
    threads: int | None,
    stat_cache: bool,
    on_progress: Callable[[int, int], None] | None,
    on_upload: Callable[[int, int], None] | None,
) -> PutResult:
    """Hashes and uploads the files as a put does (packs, index segment, manifest pages and
    record), committing nothing; the result's record names the manifest."""
    head, _ = await repo._read_head(project, name)
    if head is not None and head.type != type:
        raise TypeMismatch(f"artifact {project}/{name} has type {head.type!r}, not {type!r}")
    loop = asyncio.get_running_loop()
    refs = await resolve_references(references, repo.store, repo.params)
    index = await repo.index()
    cache = StatCache(None, repo.params.label) if stat_cache else None
    hasher = TreeHasher(repo.params, threads=threads, stat_cache=cache, on_progress=on_progress)
    result = PutResult(VersionRecord(FORMAT, project, name, -1, type, "", "", 0, 0, ""), False)
    journal = await loop.run_in_executor(None, PutJournal, repo.config.id)
    try:
        return await repo._log(
            result, [], None, None, [], sources, index, cache, hasher, journal, None, b"", on_upload,
            Merge(refs), commit=False,
        )  # fmt: skip
    finally:
        await loop.run_in_executor(None, journal.close)


async def _write_part(
    repo: Repository, staged: PutResult, project: str, name: str, distributed_id: str, type: str, run: str
) -> PartRecord:
    run_id = run.rsplit("/", 1)[-1] if run else "w"
    writer = f"{run_id}.{uuid.uuid4().hex[:16]}"
    rec = staged.record
    part = PartRecord(
        FORMAT, project, name, distributed_id, writer, type, rec.manifest, rec.content_digest,
        rec.files, rec.size, _now(), _created_by(), run, staged.segment,
    )  # fmt: skip
    # The name is this call's alone: a 412 can only be an earlier attempt of this very write.
    with contextlib.suppress(PreconditionFailed):
        await repo.store.put(
            part_key(project, name, distributed_id, writer), encode(part), if_none_match=True
        )
    # A finish seals before it lists the parts: no seal now means any finish lists this part.
    if await _sealed(repo, project, name, distributed_id):
        finished = await read_finished(repo, project, name, distributed_id)
        if finished is None or writer not in finished.parts:
            raise _finished_error(project, name, distributed_id, finished.version if finished else None)
    return part


async def _finisher_part(
    repo: Repository,
    sources: Sequence[Source],
    references: Sequence[Reference],
    project: str,
    name: str,
    type: str,
    distributed_id: str,
    run: str,
    on_progress: Callable[[int, int], None] | None,
    on_upload: Callable[[int, int], None] | None,
) -> set[str]:
    """The finishing call's own files as a part (W&B's ``finish_artifact`` keeps the files
    added to the artifact it is given); returns the writers that hold them. A finish that is
    retried after a crash (the id already sealed or finished) finds the part its first attempt
    wrote by content instead of adding one; files that no part holds in a sealed id are
    ``ArtifactFinished``, never silently left out."""
    staged = await _stage(repo, sources, references, project, name, type, None, True, on_progress, on_upload)
    finished = await read_finished(repo, project, name, distributed_id)
    if finished is None and not await _sealed(repo, project, name, distributed_id):
        return {(await _write_part(repo, staged, project, name, distributed_id, type, run)).writer}
    digest = staged.record.content_digest
    same = {p.writer for p in await parts(repo, project, name, distributed_id) if p.content_digest == digest}
    if not same or (finished is not None and not same & set(finished.parts)):
        raise _finished_error(project, name, distributed_id, finished.version if finished else None)
    return same


async def parts(repo: Repository, project: str, name: str, distributed_id: str) -> list[PartRecord]:
    """Every part upserted so far, sorted by writer."""
    _check(project, name, distributed_id)
    prefix = base_key(project, name, distributed_id) + "parts/"
    keys = sorted([info.key async for info in repo.store.list(prefix)])
    gate = asyncio.Semaphore(READ_PARTS)

    async def read(key: str) -> PartRecord:
        async with gate:
            return _decode(await repo.store.get(key, max_bytes=caps.DISTRIBUTED_RECORD), PartRecord, key)  # type: ignore[no-any-return]

    return list(await asyncio.gather(*(read(k) for k in keys)))


async def distributed_ids(repo: Repository, project: str, name: str) -> list[str]:
    """The distributed ids that parts of ``project/name`` were upserted under (one listing)."""
    prefix = f"distributed/{project}/{name}/"
    ids = {info.key[len(prefix) :].split("/", 1)[0] async for info in repo.store.list(prefix)}
    return sorted(ids)


async def _merged(repo: Repository, found: list[PartRecord]) -> AsyncIterator[ManifestEntry]:
    """The parts' entries in path order, each path once; `DistributedConflict` for a path two
    parts hold with different content."""
    import heapq

    async def reader(part: PartRecord) -> ManifestReader:
        m = decode_manifest(await repo.store.get(part.manifest, max_bytes=caps.MANIFEST_RECORD))
        return ManifestReader(
            m, lambda pid: repo.store.get(_obj_key("manifests", pid), max_bytes=caps.MANIFEST_PAGE)
        )

    streams = [(await reader(p)).entries() for p in found]
    heap: list[tuple[bytes, int, ManifestEntry]] = []

    async def advance(i: int) -> None:
        with contextlib.suppress(StopAsyncIteration):
            e = await anext(streams[i])
            heapq.heappush(heap, (e.path.encode(), i, e))

    await asyncio.gather(*(advance(i) for i in range(len(streams))))
    last: tuple[bytes, int, ManifestEntry] | None = None
    while heap:
        key, i, entry = heapq.heappop(heap)
        await advance(i)
        if last is not None and last[0] == key:
            if last[2].digest != entry.digest or last[2].ref != entry.ref:
                a, b = found[last[1]], found[i]
                raise DistributedConflict(
                    f"path {entry.path!r} was upserted with different content by writer {a.writer}"
                    f"{_by(a)} and writer {b.writer}{_by(b)}; upsert each path from one writer "
                    "(or with identical content), then finish again"
                )
            continue  # the same file from two writers: kept once
        last = (key, i, entry)
        yield entry


def _by(part: PartRecord) -> str:
    host = part.created_by.get("host", "")
    who = [f"run {part.run}"] if part.run else []
    if host:
        who.append(f"host {host}")
    return f" ({', '.join(who)})" if who else ""


async def _nothing_to_finish(
    repo: Repository, project: str, name: str, distributed_id: str
) -> NothingToFinish:
    known = [i for i in await distributed_ids(repo, project, name) if i != distributed_id]
    hint = did_you_mean(distributed_id, known) if known else ""
    return NothingToFinish(
        f"distributed artifact {project}/{name} has no upserted files under distributed id "
        f"{distributed_id!r}{hint}: call upsert_artifact from the writers first"
    )


async def finish(
    repo: Repository,
    *,
    project: str,
    name: str,
    type: str,
    distributed_id: str,
    run: str = "",
    aliases: Sequence[str] = (),
    tags: Sequence[str] = (),
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    sources: Sequence[Source] = (),
    references: Sequence[Reference] = (),
    on_progress: Callable[[int, int], None] | None = None,
    on_upload: Callable[[int, int], None] | None = None,
) -> tuple[VersionRecord, bool]:
    """Commits the parts as one version (identical content: the existing version) and marks
    the distributed artifact finished. A finished artifact returns its version again.
    `sources` and `references` are the finishing writer's own files: upserted as one more
    part first, so the version holds them too. Returns (record, created)."""
    _check(project, name, distributed_id)
    check_name("type", type)
    aliases = [check_alias(a) for a in dict.fromkeys(aliases)]
    tags = [check_tag(t) for t in dict.fromkeys(tags)]
    if metadata is not None:
        metadata = json_copy(metadata)
    if sources or references:
        own = await _finisher_part(
            repo, sources, references, project, name, type, distributed_id, run, on_progress, on_upload
        )
        record, created = await finish(
            repo, project=project, name=name, type=type, distributed_id=distributed_id, run=run,
            aliases=aliases, tags=tags, description=description, metadata=metadata,
        )  # fmt: skip
        done = await read_finished(repo, project, name, distributed_id)
        if done is None or not own & set(done.parts):  # a racing finish listed parts before ours
            raise _finished_error(project, name, distributed_id, done.version if done else None)
        return record, created
    base = base_key(project, name, distributed_id)
    done = await read_finished(repo, project, name, distributed_id)
    if done is not None:
        return await _finished_version(repo, done, type), False
    # Parts are looked for before sealing too: a mistyped id is refused without sealing it
    # (a sealed id takes no more upserts), and after, for the parts that count.
    if not await _sealed(repo, project, name, distributed_id) and not await parts(
        repo, project, name, distributed_id
    ):
        raise await _nothing_to_finish(repo, project, name, distributed_id)
    with contextlib.suppress(PreconditionFailed):  # an earlier (maybe crashed) finish sealed it
        await repo.store.put(base + "sealed", encode(SealRecord(FORMAT, _now(), run)), if_none_match=True)
    found = await parts(repo, project, name, distributed_id)
    if not found:
        raise await _nothing_to_finish(repo, project, name, distributed_id)
    for p in found:
        if p.type != type:
            raise TypeMismatch(
                f"writer {p.writer}{_by(p)} upserted {project}/{name} as type {p.type!r}, not {type!r}"
            )
    builder = ManifestBuilder()
    page_writes = _ImmutableWrites(repo.store)  # as a put writes its pages
    try:
        async for entry in _merged(repo, found):
            for pid, data in builder.add(entry):
                await page_writes.put(_obj_key("manifests", pid), data)
        pages, manifest = builder.finish()
        for pid, data in pages:
            await page_writes.put(_obj_key("manifests", pid), data)
        await page_writes.wait()
    except BaseException:
        await page_writes.abandon()
        raise
    mkey = await _put_manifest_record(repo.store, manifest)
    committed = await repo._commit(
        project,
        name,
        type,
        manifest.content_digest.hex(),
        manifest,
        mkey,
        aliases,
        description or "",
        metadata or {},
        tuple(tags),
        fields=_creation_fields(run, None),
    )
    assert committed is not None
    record, created = committed
    marker = FinishedRecord(
        FORMAT, project, name, distributed_id, record.version, record.content_digest,
        tuple(p.writer for p in found), _now(), run,
    )  # fmt: skip
    try:
        await repo.store.put(base + "finished", encode(marker), if_none_match=True)
    except PreconditionFailed:  # a concurrent finish won (or an earlier attempt of this write)
        done = await read_finished(repo, project, name, distributed_id)
        assert done is not None
        if done.version != record.version:
            return await _finished_version(repo, done, type), False
    return record, created


async def _finished_version(repo: Repository, done: FinishedRecord, type: str) -> VersionRecord:
    record = await repo.version(done.project, done.name, done.version)
    if record.type != type:
        raise TypeMismatch(f"artifact {done.project}/{done.name} has type {record.type!r}, not {type!r}")
    return record


class DistributedStatus(msgspec.Struct, frozen=True):
    """Where a distributed artifact stands: ``open`` (taking upserts), ``sealed`` (a finish
    began and did not complete: run finish again) or ``finished`` (``finished`` names the
    version)."""

    state: str
    parts: list[PartRecord]
    finished: FinishedRecord | None = None


async def status(repo: Repository, project: str, name: str, distributed_id: str) -> DistributedStatus:
    """The parts upserted so far and whether a finish sealed or finished the artifact."""
    found = await parts(repo, project, name, distributed_id)
    done = await read_finished(repo, project, name, distributed_id)
    if done is not None:
        return DistributedStatus("finished", found, done)
    sealed = await _sealed(repo, project, name, distributed_id)
    return DistributedStatus("sealed" if sealed else "open", found)
