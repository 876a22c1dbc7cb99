"""A repository on any ObjectStore: log versions (scan → hash → delta → pack → commit) and read them back.

Commit order makes a crash harmless: packs, then the index segment naming their blobs, then
manifest pages and record, then the version record (create-if-absent), then the artifact
head (compare-and-swap). Every object a version names exists before the version does.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as _dt
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar, cast

import blake3 as _blake3
import msgspec

from syncengine import transfer
from syncengine.errors import (
    ConfigError,
    FileChangedError,
    HashingFailed,
    ObjectNotFound,
    PreconditionFailed,
    SyncEngineError,
    did_you_mean,
)
from syncengine.hashing.params import GEAR_SEED, ChunkerParams
from syncengine.hashing.stat_cache import StatCache, default_cache_dir
from syncengine.hashing.tree import HashedFile, Source, TreeHasher
from syncengine.repo import object_caps as caps
from syncengine.repo.blob_index import BlobIndex
from syncengine.repo.ingest import Ingest, IngestAborted
from syncengine.repo.manifest import (
    Change,
    Manifest,
    ManifestBuilder,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    UnsafePath,
    check_entry,
    check_path,
    decode_manifest,
    encode_manifest,
)
from syncengine.repo.manifest import diff as diff_manifests
from syncengine.repo.pack import (
    BlobLocation,
    CorruptData,
    IndexEntry,
    PackWriter,
    blob_digest,
    decode_index,
    encode_index,
    index_entries,
    read_blob,
)
from syncengine.repo.put_journal import PutJournal
from syncengine.repo.put_memo import Fingerprint, Memo, PutMemo, memo_key, walk_key
from syncengine.repo.records import (
    FORMAT,
    LATEST,
    ArtifactHead,
    ArtifactRef,
    RepoConfig,
    VersionRecord,
    check_alias,
    check_name,
    check_tag,
    decode_head,
    decode_version,
    encode_record,
    head_key,
    json_copy,
    version_key,
)
from syncengine.repo.references import Merge, Reference, references_key
from syncengine.repo.references import resolve as resolve_references
from syncengine.scan import SymlinkPolicy
from syncengine.store.base import HashedParts, ObjectStore, read_capped

#: New blobs are read and packed in batches of about this many bytes per worker-thread hop.
READ_BATCH: Final = 8 << 20
#: Hashed files handed from the hashing thread to the event loop at a time (at most).
FEED_FILES: Final = 512


#: Seconds an interrupted put (Ctrl-C: its task cancelled) lets its pack uploads in flight
#: finish, so that those the store answers in time are journaled and adopted by the re-run;
#: later ones are abandoned (the store may keep a pack nobody refers to: garbage for gc).
INTERRUPT_GRACE: Final = 3.0


class ManifestSink(Protocol):
    """Where `_log` sends the entries it hashed, in path order: `add` returns pages to store
    now, `finish` the remaining pages and the manifest (a full build, or a draft's patch of
    its base: syncengine.repo.draft)."""

    def add(self, entry: ManifestEntry) -> list[tuple[bytes, bytes]]: ...

    async def finish(self) -> tuple[list[tuple[bytes, bytes]], Manifest]: ...


class _FullManifest:
    """The manifest of exactly the entries hashed."""

    def __init__(self) -> None:
        self._builder = ManifestBuilder()

    def add(self, entry: ManifestEntry) -> list[tuple[bytes, bytes]]:
        return self._builder.add(entry)

    async def finish(self) -> tuple[list[tuple[bytes, bytes]], Manifest]:
        return self._builder.finish()


class ArtifactNotFound(SyncEngineError, LookupError):
    """No such project/artifact/version/alias; the message says what exists instead."""


class VersionDeleted(ArtifactNotFound):
    """The version was deleted (a tombstone): it is no longer resolvable, listed or changed."""


class TypeMismatch(SyncEngineError, ValueError):
    """An artifact was logged with a type other than the one it has."""


@dataclass
class PutResult:
    record: VersionRecord
    created: bool  # False: identical content already existed as this version
    files: int = 0
    bytes: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    packs: int = 0
    warnings: list[str] = field(default_factory=list)
    segment: str = ""  # key of the index segment this put wrote ("" if it added no blobs)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_config(raw: bytes) -> RepoConfig:
    try:
        config = msgspec.json.decode(raw, type=RepoConfig)
    except msgspec.DecodeError as e:
        raise ConfigError(
            f"the repository config is unreadable ({e}); is this a syncengine repository?"
        ) from e
    if config.format != FORMAT:
        raise ConfigError(
            f"repository format {config.format} is not supported (this syncengine reads {FORMAT})"
        )
    return config


def _obj_key(kind: str, digest: bytes) -> str:
    h = digest.hex()
    return f"{kind}/{h[:2]}/{h}"


async def _put_immutable(store: ObjectStore, key: str, data: bytes) -> None:
    """Content-addressed objects: an existing object with this name already has these bytes."""
    with contextlib.suppress(PreconditionFailed):
        await store.put(key, data, if_none_match=True)


async def _put_manifest_record(store: ObjectStore, manifest: Manifest) -> str:
    """Stores the manifest record (its pages must be stored already); returns its key."""
    mdata = encode_manifest(manifest)
    mkey = _obj_key("manifests", _blake3.blake3(mdata).digest())
    await _put_immutable(store, mkey, mdata)
    return mkey


class _ImmutableWrites:
    """Content-addressed writes (manifest pages) sent in the background, at most ``width``
    at once (``put`` waits for a free slot: bounded memory), so a put does not wait one
    round trip per page; ``wait`` before anything that refers to them is written."""

    def __init__(self, store: ObjectStore, width: int = 16) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(width)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def put(self, key: str, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        task = asyncio.ensure_future(self._one(key, data))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _one(self, key: str, data: bytes) -> None:
        try:
            await _put_immutable(self._store, key, data)
        finally:
            self._slots.release()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def wait(self) -> None:
        """Until every write sent is stored; raises the first failure."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._error is not None:
            raise self._error

    async def abandon(self) -> None:
        """Cancels the writes still running and waits for them (an error path)."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))


class Repository:
    """A syncengine repository in an object store (async core; see `syncengine.api`)."""

    def __init__(self, store: ObjectStore, config: RepoConfig) -> None:
        self.store = store
        self.config = config
        self.params = config.params
        self._index: BlobIndex | None = None
        self._segments: set[str] = set()
        #: ETag of ``gc/epoch`` when the repository was opened (None: no sweep ever ran; "":
        #: unknown). A commit whose epoch is unchanged and that sees no mark skips the full
        #: garbage-collection check: no sweep deleted anything since (docs/GC.md §4a).
        self.gc_epoch: str | None = ""

    @classmethod
    async def open(
        cls, store: ObjectStore, *, create: bool = True, params: ChunkerParams | None = None
    ) -> Repository:
        """Opens the repository in `store`, creating its config on first use."""
        try:
            raw = await store.get("config", max_bytes=caps.CONFIG)
        except ObjectNotFound:
            if not create:
                raise
            probe = getattr(store, "check_conditional_writes", None)
            if probe is not None:  # a new repository on a remote server: refs need conditional writes
                await probe()
            p = params or ChunkerParams()
            cfg = RepoConfig(
                FORMAT,
                uuid.uuid4().hex,
                "blake3",
                {"min": p.min_size, "avg": p.avg_size, "max": p.max_size, "seed": GEAR_SEED},
            )
            with contextlib.suppress(PreconditionFailed):  # another writer created it first
                await store.put("config", msgspec.json.encode(cfg), if_none_match=True)
            raw = await store.get("config", max_bytes=caps.CONFIG)
        repo = cls(store, _decode_config(raw))
        from syncengine.repo.gc_sweep import read_epoch  # the writer rule's baseline, GC.md §4a

        repo.gc_epoch = await read_epoch(store)
        return repo

    @staticmethod
    async def stored_params(store: ObjectStore) -> ChunkerParams | None:
        """The chunker parameters of the repository in `store` (what its puts chunk with), or
        None when there is no repository there yet; unlike `open`, creates nothing."""
        try:
            raw = await store.get("config", max_bytes=caps.CONFIG)
        except ObjectNotFound:
            return None
        return _decode_config(raw).params

    # -- the blob index -------------------------------------------------------------------

    async def index(self) -> BlobIndex:
        """digest → location of every blob, from all index segments (loaded once, then
        refreshed with segments written since). When a segment loaded before has disappeared
        (`gc` rewrote it, repacking or deleting packs), the index is rebuilt from the
        segments that exist (from the local segment cache): no record of a pack `gc` deleted
        survives a refresh. A caller holding the old index keeps it; call again for the new.
        Each segment is checked and added on a worker thread as it arrives (the first
        location of a digest stays); no Python object is built per record."""
        for _ in range(8):  # a segment `gc` deletes between our listing and our read: list again
            listed = [info.key async for info in self.store.list("index/")]
            if self._index is None or not self._segments.issubset(listed):
                self._index, self._segments = BlobIndex(), set()
            index = self._index
            new = [key for key in listed if key not in self._segments]
            if not new:
                return index
            gate = asyncio.Semaphore(16)
            loaded = await asyncio.gather(*(self._load_segment(k, index, gate) for k in new))
            for key, found in loaded:
                if found:
                    self._segments.add(key)
            if all(found for _, found in loaded):
                return index
        raise SyncEngineError("index segments kept disappearing while loading them; try again")

    async def _load_segment(self, key: str, index: BlobIndex, gate: asyncio.Semaphore) -> tuple[str, bool]:
        """Adds a segment's records to `index` (local segment cache, else the store); False
        if it is gone."""
        cache = _segment_cache_dir(self.config.id)
        sid = bytes.fromhex(key.rsplit("/", 1)[1])
        added = await asyncio.to_thread(_load_cached_segment, cache, sid, index.add_segment)
        if added is None:
            async with gate:
                try:
                    data = await self.store.get(key, max_bytes=caps.INDEX_SEGMENT)
                except ObjectNotFound:
                    return key, False
            await asyncio.to_thread(_load_new_segment, cache, sid, data, index.add_segment)
        return key, True

    def forget_index(self) -> None:
        """Drops the in-memory index: the next `index()` loads every segment that exists."""
        self._index, self._segments = None, set()

    # -- logging a version ----------------------------------------------------------------

    async def log(
        self,
        sources: Sequence[Source],
        *,
        project: str,
        name: str,
        type: str,
        aliases: Sequence[str] = (),
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        include_vcs: bool = False,
        follow_symlinks: SymlinkPolicy = "within",
        stat_cache: bool = True,
        threads: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_upload: Callable[[int, int], None] | None = None,
        logged_by: str = "",
        references: Sequence[Reference] = (),
        before_commit: Callable[[], Awaitable[None]] | None = None,
        ttl_seconds: int | None = None,
    ) -> PutResult:
        """Hashes `sources`, stores what the repository lacks, and records a version
        (or returns the existing version with identical content). ``on_progress(files,
        bytes)`` follows the hashing, ``on_upload(bytes_sent, packs_in_flight)`` the uploads;
        ``logged_by`` ("project/run-id") and ``ttl_seconds`` go into a version this call
        creates, in the record's one create-if-absent write.
        `references` (syncengine.repo.references) become entries holding only metadata.
        Version-control folders (`.git` …) are left out unless ``include_vcs``; symlinks are
        followed only where they lead to something inside their source folder unless
        ``follow_symlinks`` (True: all; False: none; docs/SCANNING.md). ``before_commit()``
        runs once everything is stored, right before the version record is written: if it
        raises, no version is recorded (the uploaded packs are indexed, so a retry sends
        nothing again). The watch daemon re-checks its files' stat there."""
        check_name("project", project)
        check_name("artifact name", name)
        check_name("type", type)
        aliases = [check_alias(a) for a in dict.fromkeys(aliases)]
        tags = [check_tag(t) for t in dict.fromkeys(tags)]
        if metadata is not None:
            metadata = json_copy(metadata)
        head, _ = await self._read_head(project, name)
        if head is not None and head.type != type:
            raise TypeMismatch(f"artifact {project}/{name} has type {head.type!r}, not {type!r}")
        loop = asyncio.get_running_loop()
        result = PutResult(VersionRecord(FORMAT, project, name, -1, type, "", "", 0, 0, ""), False)
        refs = await resolve_references(references, self.store, self.params)

        memo: PutMemo | None = None
        key = b""
        if stat_cache:
            walk = walk_key(sources, include, exclude, include_vcs, follow_symlinks)
            extra_key = [references_key(refs)] if refs else []  # same references: same key
            key = memo_key(self.config.id, project, name, type, [*walk, self.params.label, *extra_key])
            memo = await loop.run_in_executor(None, PutMemo)
        walk_options: dict[str, Any] = {
            "include": include,
            "exclude": exclude,
            "include_vcs": include_vcs,
            "follow_symlinks": follow_symlinks,
        }
        try:
            if memo is not None and head is not None:
                scanner = TreeHasher(self.params, **walk_options)
                recalled = await loop.run_in_executor(None, _recall, memo, key, scanner, sources)
                if recalled is not None and head.digests.get(recalled.content_digest) == recalled.version:
                    if before_commit is not None:
                        await before_commit()
                    committed = await self._commit(
                        project, name, type, recalled.content_digest, None, "", aliases, "", {}, ()
                    )
                    if committed is not None:
                        result.record, result.created = committed
                        result.files, result.bytes = result.record.files, result.record.size
                        result.warnings = [w.message for w in scanner.stats.warnings]
                        return result
            index = await self.index()
            cache = StatCache(None, self.params.label) if stat_cache else None
            hasher = TreeHasher(
                self.params, threads=threads, stat_cache=cache, on_progress=on_progress, **walk_options
            )
            journal = await loop.run_in_executor(None, PutJournal, self.config.id)
            try:
                return await self._log(
                    result, aliases, description, metadata, tags, sources, index, cache, hasher,
                    journal, memo, key, on_upload, Merge(refs), logged_by=logged_by,
                    before_commit=before_commit,
                    ttl_seconds=ttl_seconds,
                )  # fmt: skip
            finally:
                await loop.run_in_executor(None, journal.close)
        finally:
            if memo is not None:
                await loop.run_in_executor(None, memo.close)

    async def _adopt(self, journal: PutJournal, index: BlobIndex) -> tuple[list[bytes], list[IndexEntry]]:
        """Packs a killed put of this machine uploaded but never indexed (see put_journal):
        those still in the store join the index. Returns every pack the journal held (to
        forget once this put's segment is written) and the entries of those adopted."""
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(None, journal.pending)
        if not pending:
            return [], []
        gate = asyncio.Semaphore(16)

        async def exists(pack: bytes, entries: list[IndexEntry]) -> bool:
            if all(e.digest in index for e in entries):
                return False  # indexed since (by this put's segment or another writer's)
            end = max(e.offset + e.stored for e in entries)
            async with gate:
                try:
                    info = await self.store.head(_obj_key("data", pack))
                except ObjectNotFound:
                    return False
            return info.size >= end

        found = await asyncio.gather(*(exists(p, es) for p, es in pending))
        adopted = [e for (_, es), ok in zip(pending, found, strict=True) if ok for e in es]
        for e in adopted:
            index.setdefault(e.digest, e)
        return [p for p, _ in pending], adopted

    async def _log(
        self,
        result: PutResult,
        aliases: list[str],
        description: str | None,
        metadata: dict[str, Any] | None,
        tags: list[str],
        sources: Sequence[Source],
        index: BlobIndex,
        cache: StatCache | None,
        hasher: TreeHasher,
        journal: PutJournal,
        memo: PutMemo | None,
        key: bytes,
        on_upload: Callable[[int, int], None] | None,
        refs: Merge,
        logged_by: str = "",
        sink: ManifestSink | None = None,
        commit: bool = True,
        before_commit: Callable[[], Awaitable[None]] | None = None,
        ttl_seconds: int | None = None,
    ) -> PutResult:
        """The full put: hash, pack and upload what the repository lacks, commit.

        Files the stat cache does not know are read once: the hashing threads pack the new
        blobs from the bytes they hashed (syncengine.repo.ingest). Files it knows whose blobs
        this repository lacks (the cache is per machine, not per repository) are read again
        here and every blob is checked against its digest before it is packed."""
        project, name, type = result.record.project, result.record.name, result.record.type
        fingerprint = Fingerprint()
        journaled, adopted = await self._adopt(journal, index)
        builder = sink or _FullManifest()
        writer = PackWriter()  # blobs of stat-cache hits the repository lacks
        new_entries: list[IndexEntry] = adopted
        # One future per pack shipped (from hashing threads too); appended before the thread
        # that ships goes on, so once hashing is over every upload is in this list.
        uploads: list[concurrent.futures.Future[None]] = []
        running: set[asyncio.Task[Any]] = set()  # the upload tasks that have started
        in_flight = 0
        failed: list[BaseException] = []  # uploads that failed, whenever they finished
        sent = 0  # pack bytes sent so far (progress)
        packs_in_flight = max(1, transfer.put_buffer() // self.config.pack_target)
        loop = asyncio.get_running_loop()
        hashed_ns = time.time_ns()

        async def upload(
            pid: bytes, data: HashedParts, locs: list[BlobLocation], release: Callable[[], None]
        ) -> None:
            nonlocal sent, in_flight
            done = 0
            task = asyncio.current_task()
            assert task is not None
            running.add(task)

            def progress(n: int) -> None:
                nonlocal done, sent
                sent += n - done
                done = n
                if on_upload is not None:
                    on_upload(sent, in_flight)

            in_flight += 1
            try:
                entries = index_entries(pid, locs)
                # Journaled *before* it is written: a process killed at any moment after the
                # store has the pack (even before it learns so) leaves a row, and the next put
                # adopts the pack if a HEAD finds it whole (else drops the row).
                await loop.run_in_executor(None, journal.record, pid, entries)
                # Through the transfer layer: the process-wide request and byte limits, and
                # multipart for a pack above the threshold (docs/TRANSFER.md).
                with contextlib.suppress(PreconditionFailed):  # already there: same bytes
                    await transfer.upload(
                        self.store, _obj_key("data", pid), data, if_none_match=True, on_progress=progress
                    )
                new_entries.extend(entries)
                journaled.append(pid)
                result.packs += 1
            except Exception as e:
                failed.append(e)
                ingest.abort()  # the hashing threads stop packing
                raise
            finally:
                in_flight -= 1
                running.discard(task)
                release()  # its buffers and slot (the thread that shipped it had taken one)

        def ship(
            pid: bytes, data: HashedParts, locs: list[BlobLocation], release: Callable[[], None]
        ) -> None:
            """From any thread but the loop's: a finished pack goes to the loop for upload."""
            uploads.append(asyncio.run_coroutine_threadsafe(upload(pid, data, locs, release), loop))

        async def wait_uploads(grace: float | None = None) -> None:
            """Until every upload shipped so far is over; their failures are in ``failed``.
            Being cancelled here does not cancel them (``asyncio.wait``). With ``grace``
            (the put was interrupted), uploads still running after ``grace`` seconds are
            cancelled: one answered by then is journaled, and the re-run adopts it."""
            futures = [asyncio.wrap_future(f) for f in uploads]
            if not futures:
                return
            if grace is None:
                await asyncio.wait(futures)
                return
            await asyncio.wait(futures, timeout=grace)
            late = [t for t in running if not t.done()]
            for f in uploads:
                f.cancel()  # not started yet: never starts
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)

        ingest = Ingest(self.params, hasher.impl, index, self.config.pack_target, packs_in_flight, ship)
        hasher.pack_while_reading(ingest.file_hasher)

        async def flush_pack() -> None:
            nonlocal writer
            if not len(writer):
                return
            full, writer = writer, PackWriter()
            await loop.run_in_executor(None, ingest.ship, full)

        Reads = list[tuple[str, list[tuple[bytes, int, int]]]]
        pending: Reads = []
        pending_bytes = 0

        def read_and_pack(pw: PackWriter, jobs: Reads) -> None:
            """Reads blobs of files the stat cache vouched for, checks each against its digest
            (the file may have changed since it was hashed) and packs it — in a worker thread,
            many small files per thread hop."""
            for path, wanted in jobs:
                with open(path, "rb", buffering=0) as f:
                    for digest, offset, length in wanted:
                        if not ingest.claim(digest):
                            continue
                        f.seek(offset)
                        data = f.read(length)
                        if len(data) != length or blob_digest(data) != digest:
                            raise FileChangedError(path, "content differs from when it was hashed")
                        pw.add(digest, data)
                        ingest.counted(length)

        async def drain_reads() -> None:
            nonlocal pending, pending_bytes
            if pending:
                if len(writer) and writer.size + pending_bytes > self.config.pack_target:
                    await flush_pack()  # packs stay near the target, never leftover + a full batch
                jobs, pending, pending_bytes = pending, [], 0
                await loop.run_in_executor(None, read_and_pack, writer, jobs)
                if writer.size >= self.config.pack_target:
                    await flush_pack()

        # The hash stream runs in a thread of its own and comes to the loop in batches, the
        # next batch hashing while this one is handled: the loop stays free for uploads.
        feed = _HashFeed(hasher, sources, self.config.pack_target)
        page_writes = _ImmutableWrites(self.store)
        try:
            try:
                async for hashed in feed:
                    if failed:
                        raise failed[0]
                    d, scanned = hashed.digest, hashed.entry
                    fingerprint.add(scanned)
                    chunks = tuple((c.length, c.digest) for c in d.chunks)
                    entry = ManifestEntry(scanned.path, d.size, scanned.mode & 0o777, d.digest, chunks)
                    for ref in refs.before(entry.path):  # references sorting before this file
                        for pid, data in builder.add(ref):
                            await page_writes.put(_obj_key("manifests", pid), data)
                    for pid, data in builder.add(entry):
                        await page_writes.put(_obj_key("manifests", pid), data)
                    result.files += 1
                    result.bytes += d.size
                    if hashed.packed:
                        continue  # its new blobs are packed already
                    blobs = (
                        [(c.digest, c.offset, c.length) for c in d.chunks]
                        if d.chunks
                        else [(d.digest, 0, d.size)]
                    )
                    wanted = [b for b in blobs if b[0] not in index and b[0] not in ingest.queued]
                    # Read a large file's missing chunks a pack's worth at a time: memory stays
                    # bounded by the pack size and the packs in flight, whatever the file size.
                    start = 0
                    while start < len(wanted):
                        end, budget = start + 1, self.config.pack_target - wanted[start][2]
                        while end < len(wanted) and budget > 0:
                            budget -= wanted[end][2]
                            end += 1
                        group, start = wanted[start:end], end
                        group_bytes = sum(b[2] for b in group)
                        if pending and pending_bytes + group_bytes > self.config.pack_target:
                            await drain_reads()  # one read batch never outgrows a pack
                        pending.append((scanned.abspath, group))
                        pending_bytes += group_bytes
                        if pending_bytes >= READ_BATCH:
                            await drain_reads()
            except BaseException:
                ingest.abort()  # hashing threads stop instead of packing on
                raise
            finally:
                await feed.close()
                if cache is not None:
                    cache.close()
            if hasher.stats.errors:
                raise HashingFailed(hasher.stats.errors)
            result.warnings = [w.message for w in hasher.stats.warnings]
            await drain_reads()
            # The last, partly filled packs of the hashing threads and of the reads above,
            # merged: a small put writes one pack, not one per thread.
            rest, writer = writer, PackWriter()
            for w in ingest.leftovers(rest):
                await loop.run_in_executor(None, ingest.ship, w)
            await wait_uploads()
            if failed:
                raise failed[0]
        except BaseException as e:
            ingest.abort()
            await page_writes.abandon()
            # Pack writes in flight finish (and are journaled) before the error; on an
            # interrupt (Ctrl-C) they get INTERRUPT_GRACE seconds, then are abandoned.
            await wait_uploads(INTERRUPT_GRACE if isinstance(e, asyncio.CancelledError) else None)
            if isinstance(e, IngestAborted) and failed:
                raise failed[0] from None  # the upload failure that stopped the hashing threads
            raise
        result.new_blobs, result.new_bytes = ingest.new_blobs, ingest.new_bytes
        if new_entries:
            sid, seg = encode_index(new_entries)
            await _put_immutable(self.store, f"index/{sid.hex()}", seg)
            await loop.run_in_executor(None, _remember_segment, _segment_cache_dir(self.config.id), sid, seg)
            for ie in new_entries:
                index.setdefault(ie.digest, ie)
            self._segments.add(f"index/{sid.hex()}")
            result.segment = f"index/{sid.hex()}"
        await loop.run_in_executor(None, journal.forget, journaled)
        try:
            for ref in refs.rest():
                for pid, data in builder.add(ref):
                    await page_writes.put(_obj_key("manifests", pid), data)
            pages, manifest = await builder.finish()
            for pid, data in pages:
                await page_writes.put(_obj_key("manifests", pid), data)
            await page_writes.wait()  # every page is stored before the record that names them
        except BaseException:
            await page_writes.abandon()
            raise
        mkey = await _put_manifest_record(self.store, manifest)
        if not commit:  # a distributed writer's part (syncengine.repo.distributed): no version
            result.record = msgspec.structs.replace(
                result.record,
                manifest=mkey,
                content_digest=manifest.content_digest.hex(),
                files=manifest.entries,
                size=manifest.size,
            )
            return result
        if before_commit is not None:
            await before_commit()
        committed = await self._commit(
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
            fields=_creation_fields(logged_by, ttl_seconds),
        )
        assert committed is not None
        result.record, result.created = committed
        if memo is not None and not result.warnings:
            rec = result.record
            m = Memo(
                fingerprint.digest(),
                fingerprint.files,
                b"".join(fingerprint.checkpoints),
                hashed_ns,
                rec.content_digest,
                rec.version,
                rec.size,
            )
            await loop.run_in_executor(None, memo.put, key, m)
        return result

    async def _read_head(self, project: str, name: str) -> tuple[ArtifactHead | None, str | None]:
        try:
            async with self.store.open_read(head_key(project, name)) as r:
                return decode_head(await read_capped(r, caps.HEAD), head_key(project, name)), r.info.etag
        except ObjectNotFound:
            return None, None

    async def _write_head(self, head: ArtifactHead, etag: str | None) -> bool:
        try:
            if etag is None:
                await self.store.put(
                    head_key(head.project, head.name), encode_record(head), if_none_match=True
                )
            else:
                await self.store.put(head_key(head.project, head.name), encode_record(head), if_match=etag)
        except PreconditionFailed:
            return False
        return True

    async def _commit(
        self,
        project: str,
        name: str,
        type: str,
        digest: str,
        manifest: Manifest | None,
        mkey: str,
        aliases: list[str],
        description: str,
        metadata: dict[str, Any],
        tags: tuple[str, ...],
        fields: dict[str, Any] | None = None,
    ) -> tuple[VersionRecord, bool] | None:
        """Records the version with content ``digest`` (or finds it) and moves the head.
        Without ``manifest`` only an existing version can be found: None if there is none."""
        created = False
        number: int | None = None
        record: VersionRecord | None = None
        # Versions met while looking for a free number; a crashed writer may have created them
        # without reaching the head, so the head learns their digests now.
        found: dict[str, int] = {}
        gc_deadline: float | None = None
        while True:
            head, etag = await self._read_head(project, name)
            if head is not None and head.type != type:
                raise TypeMismatch(f"artifact {project}/{name} has type {head.type!r}, not {type!r}")
            if head is None:
                head = ArtifactHead(FORMAT, project, name, type, latest_in_aliases=True)
            existing = head.digests.get(digest)
            if record is None and existing is not None:
                old = await self.version(project, name, existing, include_deleted=True)
                if not old.deleted:  # a deleted version never matches: the content gets a new one
                    number, record = existing, old
            if record is None:
                if manifest is None:
                    return None
                # Numbers of deleted versions are never reused (`highest`, docs/DELETION.md).
                number = 1 + max([-1, *(n for n in (head.latest, head.highest) if n is not None)])
                while True:  # the number is taken once its record exists: first come, first served
                    candidate = VersionRecord(
                        FORMAT,
                        project,
                        name,
                        number,
                        type,
                        mkey,
                        digest,
                        manifest.entries,
                        manifest.size,
                        _now(),
                        _created_by(),
                        description,
                        metadata,
                        tags,
                    )
                    if fields:  # creation-time fields (logged_by, linked_from)
                        candidate = msgspec.structs.replace(candidate, **fields)
                    if gc_deadline is None or time.monotonic() > gc_deadline:
                        from syncengine.repo.gc_sweep import guard_commit  # the writer rule, GC.md §4

                        gc_deadline = await guard_commit(self, mkey)
                    try:
                        await self.store.put(
                            version_key(project, name, number), encode_record(candidate), if_none_match=True
                        )
                        record, created = candidate, True
                        break
                    except PreconditionFailed:
                        taken = await self.version(project, name, number, include_deleted=True)
                        if not taken.deleted:
                            found.setdefault(taken.content_digest, number)
                            if taken.content_digest == digest and taken.type == type:
                                record = taken  # left by a writer that crashed before its head update
                                break
                        number += 1
            assert record is not None and number is not None
            new_aliases = {a: v for a, v in head.aliases.items() if a not in aliases}
            latest = max(number, *found.values(), head.latest if head.latest is not None else -1)
            if latest != head.latest:  # a new newest version: `latest` goes to it (as in W&B)
                new_aliases[LATEST] = latest
            new_aliases.update({a: number for a in aliases})
            digests = {**found, **head.digests, digest: number}
            highest = head.highest if head.highest is not None and head.highest > latest else None
            new_head = msgspec.structs.replace(
                head, latest=latest, aliases=new_aliases, digests=digests, highest=highest
            )
            if new_head == head or await self._write_head(new_head, etag):
                return record, created
            if not created:
                record = None  # found, not made: look again, it may have been deleted meanwhile

    # -- reading --------------------------------------------------------------------------

    async def version(
        self, project: str, name: str, number: int, *, include_deleted: bool = False
    ) -> VersionRecord:
        """The record of `vN`; a deleted one raises `VersionDeleted` unless `include_deleted`."""
        try:
            key = version_key(project, name, number)
            record = decode_version(await self.store.get(key, max_bytes=caps.VERSION_RECORD), key)
        except ObjectNotFound:
            raise ArtifactNotFound(f"{project}/{name} has no version v{number}") from None
        if record.deleted and not include_deleted:
            raise VersionDeleted(f"{project}/{name}:v{number} was deleted")
        return record

    async def head(self, project: str, name: str) -> ArtifactHead:
        head, _ = await self._read_head(project, name)
        if head is None:
            names = [n async for n in self.artifacts(project)]
            if not names:
                raise await self.no_project(project)
            hint = f"{did_you_mean(name, names)} (it has: {', '.join(names[:10])})"
            raise ArtifactNotFound(f"project {project!r} has no artifact {name!r}{hint}")
        return head

    async def artifacts(self, project: str) -> AsyncIterator[str]:
        prefix = f"artifacts/{project}/"
        async for info in self.store.list(prefix):
            rest = info.key[len(prefix) :]
            if rest.endswith("/head") and rest.count("/") == 1:
                yield rest[: -len("/head")]

    async def resolve(self, ref: ArtifactRef) -> VersionRecord:
        """The version a reference names: `:vN`, `:alias`, or (no selector) `:latest`. When no
        version holds `latest` (a user removed it) that is `ArtifactNotFound`, as in W&B,
        naming the newest version."""
        head = await self.head(ref.project, ref.name)
        if ref.version is not None:
            try:
                return await self.version(ref.project, ref.name, ref.version)
            except VersionDeleted:
                raise
            except ArtifactNotFound as e:
                newest = "it has no versions" if head.latest is None else f"the newest is v{head.latest}"
                raise ArtifactNotFound(f"{e} ({newest})") from None
        alias = ref.alias or LATEST
        if alias == LATEST and alias not in head.aliases:
            if head.latest is None:
                raise ArtifactNotFound(f"{ref.full_name} has no versions")
            newest = f"{ref.full_name}:v{head.latest}"
            raise ArtifactNotFound(
                f"no version of {ref.full_name} holds the alias 'latest' (it was removed; the newest "
                f"is {newest}): name a version, or give it back (`syncengine alias add {newest} latest`)"
            )
        if alias not in head.aliases:
            known = ", ".join(sorted(head.aliases)) or "none"
            hint = did_you_mean(alias, list(head.aliases))
            raise ArtifactNotFound(f"{ref.full_name} has no alias {alias!r}{hint} (aliases: {known})")
        return await self._named(ref, head.aliases[alias])

    async def _named(self, ref: ArtifactRef, number: int) -> VersionRecord:
        """The version the head names for `ref`; a tombstone there means a deletion is running
        or was interrupted before its head update (docs/DELETION.md)."""
        try:
            return await self.version(ref.project, ref.name, number)
        except VersionDeleted:
            raise VersionDeleted(
                f"{ref} names v{number}, which was deleted; unless a deletion is running, "
                f"`syncengine delete {ref.full_name}:v{number}` finishes the interrupted one"
            ) from None

    async def versions(self, project: str, name: str) -> list[VersionRecord]:
        await self.head(project, name)  # an unknown artifact raises, naming the ones that exist
        out = []
        prefix = f"artifacts/{project}/{name}/versions/v"
        numbers = sorted([int(i.key[len(prefix) :]) async for i in self.store.list(prefix)])
        for n in numbers:
            record = await self.version(project, name, n, include_deleted=True)
            if not record.deleted:
                out.append(record)
        return out

    async def update_head(
        self, project: str, name: str, change: Callable[[ArtifactHead], ArtifactHead]
    ) -> ArtifactHead:
        """Applies `change` to the artifact head by compare-and-swap, retrying on conflict,
        so concurrent alias moves on any machine lose no update."""
        while True:
            head, etag = await self._read_head(project, name)
            if head is None:
                raise ArtifactNotFound(f"project {project!r} has no artifact {name!r}")
            new = change(head)
            if new == head or await self._write_head(new, etag):
                return new

    async def set_aliases(
        self, project: str, name: str, version: int, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> ArtifactHead:
        """Points aliases in `add` at `version` (moving them from other versions atomically)
        and drops aliases in `remove` that point at it."""
        add = [check_alias(a) for a in add]
        remove = [check_alias(a) for a in remove]
        await self.version(project, name, version)  # must exist

        def change(head: ArtifactHead) -> ArtifactHead:
            aliases = {a: v for a, v in head.aliases.items() if not (a in remove and v == version)}
            aliases.update({a: version for a in add})
            return msgspec.structs.replace(head, aliases=aliases)

        head = await self.update_head(project, name, change)
        if add and (await self.version(project, name, version, include_deleted=True)).deleted:
            # Deleted while the aliases moved: a deletion's head update may have come first,
            # so take them off again (docs/DELETION.md).
            def undo(h: ArtifactHead) -> ArtifactHead:
                kept = {a: v for a, v in h.aliases.items() if v != version}
                return msgspec.structs.replace(h, aliases=kept)

            await self.update_head(project, name, undo)
            raise VersionDeleted(f"{project}/{name}:v{version} was deleted; its aliases were not set")
        return head

    async def update_version(
        self, project: str, name: str, version: int, change: Callable[[VersionRecord], VersionRecord]
    ) -> VersionRecord:
        """Applies `change` (description, metadata, tags, TTL) to a version record by
        compare-and-swap; the immutable fields cannot change."""
        key = version_key(project, name, version)
        while True:
            try:
                async with self.store.open_read(key) as r:
                    current, etag = (
                        decode_version(await read_capped(r, caps.VERSION_RECORD), key),
                        r.info.etag,
                    )
            except ObjectNotFound:
                raise ArtifactNotFound(f"{project}/{name} has no version v{version}") from None
            if current.deleted:
                raise VersionDeleted(f"{project}/{name}:v{version} was deleted; it cannot be changed")
            new = change(current)
            frozen = (
                "project",
                "name",
                "version",
                "type",
                "manifest",
                "content_digest",
                "files",
                "size",
                "created",
                "logged_by",
                "linked_from",
            )
            if any(getattr(new, f) != getattr(current, f) for f in frozen):
                raise ConfigError("only description, metadata, tags and ttl of a version can change")
            if new.metadata != current.metadata:
                try:
                    msgspec.json.encode(new.metadata)
                except (TypeError, msgspec.EncodeError) as e:
                    raise ConfigError(f"metadata must be JSON-serialisable: {e}") from e
            for t in new.tags:
                check_tag(t)
            if new == current:
                return current
            try:
                await self.store.put(key, encode_record(new), if_match=etag)
                return new
            except PreconditionFailed:
                continue

    async def check(self, read_data: bool = False) -> list[str]:
        """Problems found in the repository, one line each (empty: healthy). Every version's
        manifest pages must load and match their names, every blob they name must be in the
        index and its pack present; with `read_data`, every blob is read and its BLAKE3 checked."""
        problems: list[str] = []
        index = await self.index()
        packs: dict[str, int] = {}
        async for info in self.store.list("data/"):
            packs[info.key.rsplit("/", 1)[1]] = info.size
        needed: dict[bytes, str] = {}
        async for info in self.store.list("artifacts/"):
            parts = info.key.split("/")
            if len(parts) != 5 or parts[3] != "versions":
                continue
            try:
                record = decode_version(
                    await self.store.get(info.key, max_bytes=caps.VERSION_RECORD), info.key
                )
                if record.deleted:  # its data may be collected already
                    continue
                reader = await self.manifest(record)
                async for entry in reader.entries():
                    check_path(entry.path)  # the rules get applies: check approves what get accepts
                    if entry.ref is not None:
                        continue  # a reference stores no blob
                    check_entry(entry)
                    blobs = [d for _, d in entry.chunks] if entry.chunks else [entry.digest]
                    for d in blobs:
                        needed.setdefault(d, f"{record.project}/{record.name}:v{record.version} {entry.path}")
            except (SyncEngineError, msgspec.DecodeError) as e:
                problems.append(f"{info.key}: {e}")
        for digest, where in needed.items():
            loc = index.get(digest)
            if loc is None:
                problems.append(f"{where}: blob {digest.hex()} is in no index segment")
            elif loc.pack.hex() not in packs:
                problems.append(f"{where}: pack {loc.pack.hex()} holding blob {digest.hex()} is missing")
            elif loc.offset + loc.stored > packs[loc.pack.hex()]:
                problems.append(f"{where}: pack {loc.pack.hex()} is shorter than blob {digest.hex()} needs")
        if read_data:
            for digest, where in needed.items():
                loc = index.get(digest)
                if loc is None or loc.pack.hex() not in packs:
                    continue
                try:
                    span = (loc.offset, loc.offset + loc.stored)
                    data = await self.store.get(_obj_key("data", loc.pack), span)
                    read_blob(loc.pack, data, loc, self.params.max_size)
                except CorruptData as e:
                    problems.append(f"{where}: {e}")
        return problems

    async def diff(self, a: VersionRecord, b: VersionRecord) -> list[Change]:
        """What changed from version `a` to version `b` (reads only pages they do not share)."""
        return await diff_manifests(await self.manifest(a), await self.manifest(b))

    async def no_project(self, project: str, projects: list[str] | None = None) -> ArtifactNotFound:
        """The error for a project with no artifact: its runs if it has some, else the
        projects there are (``projects``, if the caller listed them already)."""
        async for _ in self.store.list(f"runs/{project}/"):
            return ArtifactNotFound(f"project {project!r} has runs but no artifacts yet")
        if projects is None:
            projects = await self.projects()
        known = f"; projects: {', '.join(projects[:10])}" if projects else "; the repository has no artifacts"
        return ArtifactNotFound(f"no project {project!r}{did_you_mean(project, projects)}{known}")

    async def projects(self) -> list[str]:
        out: list[str] = []
        async for info in self.store.list("artifacts/"):
            p = info.key.split("/")[1]
            if not out or out[-1] != p:
                out.append(p)
        return out

    async def manifest(self, record: VersionRecord) -> ManifestReader:
        """The version's manifest, bound to its record: the object must hash to the name the
        record gives it, and state the record's content digest; its pages are bound by their
        names and, walked whole, to that digest (`ManifestReader.entries`)."""
        data = await self.store.get(record.manifest, max_bytes=caps.MANIFEST_RECORD)
        if _obj_key("manifests", _blake3.blake3(data).digest()) != record.manifest:
            raise ManifestError(f"{record.manifest} does not match its name (corrupted or replaced)")
        m = decode_manifest(data)
        if m.content_digest.hex() != record.content_digest:
            raise ManifestError(
                f"{record.project}/{record.name}:v{record.version}: its record and its manifest "
                "state different content digests"
            )
        return ManifestReader(
            m, lambda pid: self.store.get(_obj_key("manifests", pid), max_bytes=caps.MANIFEST_PAGE)
        )

    async def download(
        self,
        record: VersionRecord,
        root: str,
        *,
        path_prefix: str | None = None,
        checkout: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
        skip_cache: bool = False,
        link: str | None = None,
        cache_size: int | None = None,
        fsync: bool = True,
        trust_references: bool | None = None,
    ) -> int:
        """Writes the version's files under `root` (verified; temp + fsync + rename); files
        already there with the right content are left alone; `checkout` also removes files
        the version does not have. Returns files written (syncengine.repo.download).

        Files come from and go into the machine's file cache (docs/DOWNLOAD.md) unless
        `skip_cache`; `link` is how cached files become targets (`"reflink"` by default,
        `"copy"`, or `"hardlink"`: read-only files sharing the cache's inode); `cache_size`
        bounds the cache in bytes (default `$SYNCENGINE_FILE_CACHE_SIZE`, else 20 GiB).
        `fsync=False` does not wait for the disk (safe against a killed process, not against
        a power loss; nothing goes into the file cache). References are fetched only from a
        repository trusted for them (`trust_references`, else ``SYNCENGINE_TRUST_REFERENCES``;
        docs/REFERENCES.md "Trust")."""
        from syncengine.repo.download import download  # imports this module
        from syncengine.repo.file_cache import link_mode, open_default

        link_mode(link)  # a bad value is an error even when the cache is skipped
        cache = None if skip_cache else await asyncio.to_thread(open_default, link=link, max_bytes=cache_size)
        try:
            result = await download(
                self,
                record,
                root,
                path_prefix=path_prefix,
                mode="checkout" if checkout else "download",
                cache=cache,
                on_progress=on_progress,
                fsync=fsync,
                trust_references=trust_references,
            )
        finally:
            if cache is not None:
                await asyncio.to_thread(cache.close)
        return result.written


class _HashFeed:
    """``TreeHasher.hash`` off the event loop: a single feeder thread pulls results in
    batches (up to :data:`FEED_FILES` files or about ``batch_bytes`` of content), one batch
    ahead of the consumer; the hasher's own pool keeps hashing meanwhile."""

    def __init__(self, hasher: TreeHasher, sources: Sequence[Source], batch_bytes: int) -> None:
        self._gen = cast(Generator[HashedFile, None, None], hasher.hash(list(sources)))
        self._batch_bytes = batch_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncengine-feed")
        self._next: asyncio.Future[list[HashedFile]] | None = None
        self._batch: collections.deque[HashedFile] = collections.deque()
        self._done = False

    def _pull(self) -> list[HashedFile]:
        out: list[HashedFile] = []
        size = 0
        for h in self._gen:
            out.append(h)
            size += h.digest.size
            if len(out) >= FEED_FILES or size >= self._batch_bytes:
                return out
        self._done = True
        return out

    def _start(self) -> asyncio.Future[list[HashedFile]]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self._pull)

    def __aiter__(self) -> _HashFeed:
        return self

    async def __anext__(self) -> HashedFile:
        while not self._batch:
            if self._next is None:
                if self._done:
                    raise StopAsyncIteration
                self._next = self._start()
            batch = await self._next
            self._next = None if self._done else self._start()
            self._batch = collections.deque(batch)
        return self._batch.popleft()

    async def close(self) -> None:
        """Stops the stream (waiting for a batch being pulled) and its hashing threads."""
        pending, self._next = self._next, None
        if pending is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(self._pool, self._gen.close))
        self._pool.shutdown(wait=False)


def _creation_fields(logged_by: str, ttl_seconds: int | None) -> dict[str, Any] | None:
    """Fields a new version record gets at creation: its producer run and its TTL (so a
    crash after the commit cannot leave the version without its TTL)."""
    fields: dict[str, Any] = {}
    if logged_by:
        fields["logged_by"] = logged_by
    if ttl_seconds is not None:
        fields["ttl_seconds"] = ttl_seconds
    return fields or None


def _created_by() -> dict[str, str]:
    import getpass  # only when a version is created

    try:
        user = getpass.getuser()
    except Exception:  # no user name on some containers
        user = ""
    return {"host": socket.gethostname(), "user": user}


def safe_target(root: str, path: str) -> str:
    """The file path for a manifest entry, refusing anything that could land outside root.
    Every check runs before any directory is created."""
    parts = check_path(path)
    base = os.path.realpath(root)
    cur = base
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            real = os.path.realpath(cur)
            if real != base and not real.startswith(base + os.sep):
                raise UnsafePath(
                    f"manifest path {path!r} would leave {root} through the symlink {cur}; refused"
                )
    target = os.path.join(base, *parts)
    if os.path.islink(target):
        raise UnsafePath(f"{target} is a symlink; refusing to write through it")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return target


def _recall(memo: PutMemo, key: bytes, scanner: TreeHasher, sources: Sequence[Source]) -> Memo | None:
    """The remembered put if a stat-only walk of ``sources`` shows the same, trusted files."""
    m = memo.get(key)
    if m is None:
        return None
    return m if PutMemo.matches(m, scanner.scan(list(sources))) else None


# Index segments are immutable and named by their BLAKE3: a local copy, checked against its
# name when read, saves a GET per segment on every later put (a cache: deleting it loses
# nothing).


def _segment_cache_dir(repo_id: str) -> str:
    return os.path.join(default_cache_dir(), "index-segments", repo_id)


_Loaded = TypeVar("_Loaded")


# Every record of a segment, duplicates included (gc's survey needs them all).
def _cached_segment(cache: str, sid: bytes) -> list[IndexEntry] | None:
    return _load_cached_segment(cache, sid, decode_index)


def _remember_segment(cache: str, sid: bytes, data: bytes) -> list[IndexEntry]:
    return _load_new_segment(cache, sid, data, decode_index)


def _load_cached_segment(cache: str, sid: bytes, load: Callable[[bytes, bytes], _Loaded]) -> _Loaded | None:
    """``load(sid, bytes)`` of the cached copy of segment `sid` (`decode_index`, or a
    `BlobIndex.add_segment`); None if there is none or it is damaged (then it is dropped)."""
    try:
        with open(os.path.join(cache, sid.hex()), "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return load(sid, data)
    except CorruptData:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(cache, sid.hex()))
        return None


def _load_new_segment(
    cache: str, sid: bytes, data: bytes, load: Callable[[bytes, bytes], _Loaded]
) -> _Loaded:
    """``load(sid, data)`` of a segment just fetched or written, then cached."""
    entries = load(sid, data)  # raises CorruptData for a damaged segment
    with contextlib.suppress(OSError):  # a cache that cannot be written is no error
        os.makedirs(cache, exist_ok=True)
        tmp = os.path.join(cache, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(cache, sid.hex()))
    return entries
