"""`syncengine gc`: TTL expiry, then mark, then (a later run, after the grace period) sweep —
docs/GC.md §3/§4a — with one owner per sweep (a renewed intent another run takes over once it
is older than the sweep timeout), and the writer rule of §4a (`guard_commit`), which a put
runs before it creates its record. Pruning of gc's own records is in `gc_records`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from syncengine.errors import ObjectNotFound, PreconditionFailed, SyncEngineError
from syncengine.repo import gc_objects as g
from syncengine.repo import object_caps as caps
from syncengine.repo.manifest import decode_manifest, decode_page
from syncengine.repo.pack import decode_index, encode_index
from syncengine.settings import env_duration
from syncengine.store.base import read_capped
from syncengine.units import format_duration, format_size

if TYPE_CHECKING:
    from syncengine.repo.gc import GcReport
    from syncengine.repo.lifecycle import Deletion
    from syncengine.repo.repository import Repository
    from syncengine.store.base import ObjectStore

DEFAULT_GRACE: Final = 24 * 3600.0


#: Deletions are issued in batches of this many keys, the intent renewed before each.
_DELETE_BATCH: Final = 1000


def min_grace() -> float:
    """The shortest grace period a collection may use; a writer commits within half of it
    after its check (§4). ``SYNCENGINE_GC_MIN_GRACE`` (a duration) lowers it for tests."""
    return env_duration("SYNCENGINE_GC_MIN_GRACE", 3600.0)


def sweep_timeout() -> float:
    """``S``: a sweep intent not renewed for this long (store clock) belongs to a sweeper that
    stopped; a later `gc` takes it over. A sweeper deletes only within ``S/2`` (its own clock)
    of its last renewal. ``SYNCENGINE_GC_SWEEP_TIMEOUT`` (a duration) changes it (default 15 min)."""
    return env_duration("SYNCENGINE_GC_SWEEP_TIMEOUT", 900.0)


class GcConflict(SyncEngineError):
    """A collection deleted (or is deleting) data this put reused: nothing was committed."""


class SweepTakenOver(SyncEngineError):
    """Another `gc` took this sweep over (this one was too slow to renew its intent)."""


@dataclass
class GcRun:
    phase: str  # "marked", "waiting", "swept", "nothing"
    mark: str | None = None
    report: GcReport | None = None
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept: int = 0  # candidates a writer's keep object protected, or alive again
    wait_seconds: float = 0.0
    aborted_uploads: int = 0
    expired: list[Deletion] = field(default_factory=list)  # versions deleted for their TTL
    kept_aliased: list[dict[str, Any]] = field(default_factory=list)  # expired, kept: aliased
    pruned: int = 0  # gc records no writer or collector can need any more (gc_records)
    took_over: bool = False  # this run finished a sweep another `gc` had left unfinished
    repacked: list[str] = field(default_factory=list)  # packs whose live blobs were copied
    repacked_bytes: int = 0  # stored bytes of the live blobs copied into new packs
    waiting_for: str = "grace"  # "grace": the mark's grace period; "sweeper": another gc

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "mark": self.mark,
            "report": self.report.to_json() if self.report else None,
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "kept": self.kept,
            "wait_seconds": self.wait_seconds,
            "aborted_uploads": self.aborted_uploads,
            "expired": [d.to_json() for d in self.expired],
            "kept_aliased": self.kept_aliased,
            "pruned": self.pruned,
            "took_over": self.took_over,
            "repacked": self.repacked,
            "repacked_bytes": self.repacked_bytes,
            "waiting_for": self.waiting_for,
        }

    def summary(self) -> str:
        if self.phase == "marked" and self.report is not None:
            return (
                f"marked {format_size(self.report.reclaimable_bytes)} reclaimable (mark {self.mark}); "
                "run `syncengine gc` again after the grace period to delete them"
            )
        if self.phase == "waiting" and self.waiting_for == "sweeper":
            return (
                f"another gc is sweeping mark {self.mark}: if it stopped, `gc` takes it over "
                f"in {format_duration(self.wait_seconds)}"
            )
        if self.phase == "waiting":
            wait = format_duration(self.wait_seconds)
            return f"mark {self.mark} is in its grace period: run `gc` again in {wait}"
        if self.phase == "swept":
            over = " (took over a sweep another gc left unfinished)" if self.took_over else ""
            return (
                f"deleted {len(self.deleted)} object(s), {format_size(self.deleted_bytes)}; repacked "
                f"{len(self.repacked)} pack(s) ({format_size(self.repacked_bytes)} live copied); "
                f"kept {self.kept}{over}"
            )
        return "nothing to collect"


async def store_now(store: ObjectStore) -> float:
    """The store's clock: the mtime of an object written now."""
    key = f"{g.CLOCK}{secrets.token_hex(8)}"
    await store.put(key, b"", if_none_match=True)
    try:
        return (await store.head(key)).mtime
    finally:
        await store.delete([key])


async def read_epoch(store: ObjectStore) -> str | None:
    """The ETag of ``gc/epoch`` (None if no sweep ever deleted anything)."""
    try:
        return (await store.head(g.EPOCH)).etag
    except ObjectNotFound:
        return None


async def collect(repo: Repository, *, grace: float = DEFAULT_GRACE) -> GcRun:
    """One `gc` run: TTL expiry (lifecycle.expire), pruning of gc records no longer needed,
    then a sweep of a mark old enough (or taking over a stopped sweep), else a mark if
    there is none."""
    from syncengine.repo.gc_records import prune
    from syncengine.repo.lifecycle import expire

    if grace < min_grace():
        raise SyncEngineError(
            f"grace period {format_duration(grace)} is below the minimum {format_duration(min_grace())} "
            "writers assume (docs/GC.md §4)"
        )
    expiry = await expire(repo)
    pruned = await prune(repo.store)
    try:
        run = await _step(repo, grace)
    except SweepTakenOver as e:
        run = GcRun("waiting", str(e), waiting_for="sweeper", wait_seconds=sweep_timeout())
    run.expired, run.kept_aliased, run.pruned = expiry.deleted, expiry.kept_aliased, pruned
    return run


async def _step(repo: Repository, grace: float) -> GcRun:
    from syncengine.repo.gc import survey

    store = repo.store
    marks = [i async for i in store.list(g.MARKS)]
    if marks:
        info = min(marks, key=lambda i: i.mtime)
        mid = info.key.rsplit("/", 1)[1]
        try:
            mark = g.decode(await store.get(info.key, max_bytes=caps.GC_OBJECT), g.Mark)
        except ObjectNotFound:  # swept meanwhile by another gc
            return GcRun("waiting", mid, waiting_for="sweeper")
        elapsed = await store_now(store) - info.mtime
        need = max(grace, mark.grace)
        if elapsed < need:
            return GcRun("waiting", mid, wait_seconds=need - elapsed)
        claim, wait = await _claim(store, mid)
        if claim is None:
            return GcRun("waiting", mid, wait_seconds=wait, waiting_for="sweeper")
        beat = asyncio.create_task(claim.heartbeat())
        try:
            return await _sweep(repo, mid, mark, claim)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, SweepTakenOver):
                await beat
    candidates: set[str] = set()
    now = await store_now(store)
    report = await survey(repo, candidates=candidates, unindexed_before=now - grace)
    aborted = await _abort_stale(repo, grace)
    if not candidates and not report.repack:
        return GcRun("nothing", report=report, aborted_uploads=aborted)
    mid = secrets.token_hex(16)
    mark = g.Mark(
        format=1,
        repository=repo.config.id,
        created=_dt.datetime.now(_dt.UTC).isoformat(),
        grace=grace,
        candidates=sorted(candidates | {_pack_key(p) for p in report.repack}),
        repack=sorted(_pack_key(p) for p in report.repack),
    )
    await store.put(f"{g.MARKS}{mid}", g.encode(mark), if_none_match=True)
    return GcRun("marked", mid, report=report, aborted_uploads=aborted)


def _pack_key(pack_hex: str) -> str:
    return f"data/{pack_hex[:2]}/{pack_hex}"


async def _abort_stale(repo: Repository, grace: float) -> int:
    from syncengine.transfer import abort_stale_uploads

    try:
        got = await abort_stale_uploads(repo.store, older_than=grace)
    except NotImplementedError:
        return 0
    return len(got)


class _Claim:
    """This run's ownership of a sweep: the intent's ETag, renewed by compare-and-swap (a
    new ``renewal`` number: new bytes, new ETag) before every deletion."""

    def __init__(self, store: ObjectStore, mid: str, body: g.Sweep, etag: str, at: float, took_over: bool):
        self.store, self.key, self.body, self.etag = store, f"{g.SWEEPS}{mid}", body, etag
        self.renewed_at, self.took_over, self.mid = at, took_over, mid
        self._lock = asyncio.Lock()  # the heartbeat and the deletions renew in turn

    async def renew(self, *, finished: bool = False) -> None:
        """Proves no other gc took the sweep over; deletions may then be issued for ``S/2``
        on this process's clock (they are issued right after, batch by batch)."""
        async with self._lock:
            at = time.monotonic()
            body = msgspec.structs.replace(
                self.body, renewal=self.body.renewal + 1, finished=finished or self.body.finished
            )
            try:
                info = await self.store.put(self.key, g.encode(body), if_match=self.etag)
            except (PreconditionFailed, ObjectNotFound):
                raise SweepTakenOver(self.mid) from None
            self.body, self.etag, self.renewed_at = body, info.etag, at

    async def heartbeat(self) -> None:
        """Renews every ``S/4`` while the sweep surveys and copies (which may take longer
        than ``S``), so that no other gc takes a running sweep over; a stalled process stops
        renewing, and its next renewal before a deletion then fails."""
        while not self.body.finished:
            await asyncio.sleep(sweep_timeout() / 4)
            await self.renew()

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), _DELETE_BATCH):
            await self.renew()
            await self.store.delete(keys[i : i + _DELETE_BATCH])


async def _claim(store: ObjectStore, mid: str) -> tuple[_Claim | None, float]:
    """Creates the sweep intent of ``mid``, or takes over one not renewed for ``S`` (store
    clock) by compare-and-swap; else (None, seconds until it may be taken over)."""
    key = f"{g.SWEEPS}{mid}"
    body = g.Sweep(mark=mid, sweeper=secrets.token_hex(8))
    at = time.monotonic()
    try:
        info = await store.put(key, g.encode(body), if_none_match=True)
        return _Claim(store, mid, body, info.etag, at, took_over=False), 0.0
    except PreconditionFailed:
        pass
    try:
        async with store.open_read(key) as r:
            etag, mtime = r.info.etag, r.info.mtime
            await read_capped(r, caps.GC_OBJECT)
    except ObjectNotFound:
        return None, 0.0
    age = await store_now(store) - mtime
    if age < sweep_timeout():
        return None, sweep_timeout() - age
    at = time.monotonic()
    try:  # the stopped sweeper's ETag: only one later gc wins, and the stopped one's next renewal fails
        info = await store.put(key, g.encode(body), if_match=etag)
    except (PreconditionFailed, ObjectNotFound):
        return None, sweep_timeout()
    return _Claim(store, mid, body, info.etag, at, took_over=True), 0.0


async def _sweep(repo: Repository, mid: str, mark: g.Mark, claim: _Claim) -> GcRun:
    from syncengine.repo.gc import survey

    store = repo.store
    run = GcRun("swept", mid, took_over=claim.took_over)
    try:  # a sweeper before us wrote its done record: its deletions are complete
        doomed = g.decode(await store.get(f"{g.DONE}{mid}", max_bytes=caps.GC_OBJECT), g.Done).deleted
    except ObjectNotFound:
        doomed = None
    if doomed is None:
        # Keep objects are listed after the intent: a writer that saw no intent wrote its keep first.
        kept: set[str] = set()
        for k in [i.key async for i in store.list(f"{g.KEEP}{mid}/")]:
            kept.update(g.decode(await store.get(k, max_bytes=caps.GC_OBJECT), g.Keep).objects)
        still: set[str] = set()
        listed: dict[str, int] = {}
        # Unindexed packs named by the mark are old enough already; a fresh survey re-checks them.
        live: set[bytes] = set()
        fresh = await survey(
            repo, candidates=still, unindexed_before=float("inf"), listed=listed, live_digests=live
        )
        doomed = []
        for key in sorted(set(mark.candidates) - kept):
            # Still garbage, or gone (a sweeper before us deleted it): the done record lists it.
            # Only packs and manifest objects, whatever a (possibly planted) mark names.
            if g.collectable(key) and (key in still or key not in listed):
                doomed.append(key)
        repack = sorted(
            k
            for k in (set(mark.repack) - kept - set(doomed)) & {_pack_key(p) for p in fresh.repack}
            if g.collectable(k)
        )
        if repack:
            from syncengine.repo.gc_repack import repack_packs

            run.repacked_bytes = await repack_packs(repo, [k.rsplit("/", 1)[1] for k in repack], live)
            run.repacked = repack
            doomed = sorted({*doomed, *repack})
        run.deleted_bytes = sum(listed.get(k, 0) for k in doomed)
        await _drop_packs(repo, claim, {k.rsplit("/", 1)[1] for k in doomed if k.startswith("data/")})
        await claim.delete([k for k in doomed if not k.startswith("data/")])
        if doomed:
            await claim.renew()  # after the last deletion: writers compare it with their open's
            await store.put(g.EPOCH, secrets.token_bytes(16))
        await claim.renew()
        with contextlib.suppress(PreconditionFailed):
            await store.put(
                f"{g.DONE}{mid}", g.encode(g.Done(format=1, mark=mid, deleted=doomed)), if_none_match=True
            )
    await claim.delete([f"{g.MARKS}{mid}"])
    # After the done record: a sweeper that takes over then finds it and redoes nothing.
    await store.delete([i.key async for i in store.list(f"{g.KEEP}{mid}/")])
    await claim.renew(finished=True)  # kept until gc_records.prune: a finished intent's mtime dates the end
    repo.forget_index()
    run.deleted, run.kept = doomed, len(mark.candidates) - len(doomed)
    return run


async def _drop_packs(repo: Repository, claim: _Claim, packs: set[str]) -> None:
    """Every index segment that names one of ``packs`` is replaced by one without its records
    (new segment written, then the old deleted), then the packs are deleted: a reader or a
    deduplicating writer never finds an index entry for a deleted pack."""
    if not packs:
        return
    store = repo.store
    old_segments: list[str] = []
    async for info in store.list("index/"):
        sid = bytes.fromhex(info.key.rsplit("/", 1)[1])
        entries = decode_index(sid, await store.get(info.key, max_bytes=caps.INDEX_SEGMENT))
        if any(e.pack.hex() in packs for e in entries):
            rest = [e for e in entries if e.pack.hex() not in packs]
            if rest:
                nsid, data = encode_index(rest)
                with contextlib.suppress(PreconditionFailed):
                    await store.put(f"index/{nsid.hex()}", data, if_none_match=True)
            old_segments.append(info.key)
    await claim.delete(old_segments)
    await claim.delete(sorted(_pack_key(p) for p in packs))


# -- the writer rule (§4) -------------------------------------------------------------------


async def _relied_on(repo: Repository, mkey: str) -> set[str]:
    """Every object the version with manifest record ``mkey`` needs: the record, its pages,
    and every pack that holds one of its blobs (per a fresh look at the index). Read now:
    anything a sweep deleted before is missing, and the put fails."""
    from syncengine.repo.gc import all_index_entries

    store = repo.store
    out = {mkey}
    blobs: set[bytes] = set()
    try:
        m = decode_manifest(await store.get(mkey, max_bytes=caps.MANIFEST_RECORD))
        stack, seen = [m.root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            h = pid.hex()
            key = f"manifests/{h[:2]}/{h}"
            out.add(key)
            page = decode_page(pid, await store.get(key, max_bytes=caps.MANIFEST_PAGE))
            stack.extend(r.page for r in page.refs)
            for e in page.entries:
                if e.ref is None:
                    blobs.update(d for _, d in e.chunks) if e.chunks else blobs.add(e.digest)
    except ObjectNotFound as e:  # a page or record this put found existing, deleted since
        raise GcConflict(
            f"garbage collection deleted data this put reused ({e}); run the put again"
        ) from None
    segments = [i.key async for i in store.list("index/")]
    packs = {i.key.rsplit("/", 1)[1]: i.key async for i in store.list("data/")}
    stored: set[bytes] = set()
    try:
        entries = await all_index_entries(repo, segments)
    except ObjectNotFound:  # a segment rewritten meanwhile: a sweep is running
        raise GcConflict("a garbage collection is sweeping; run the put again") from None
    for ie in entries:
        if ie.digest in blobs and ie.pack.hex() in packs:
            out.add(packs[ie.pack.hex()])
            stored.add(ie.digest)
    if blobs - stored:  # deduplicated against an index entry of a pack a sweep deleted
        raise GcConflict("garbage collection deleted data this put reused; run the put again")
    return out


async def _check_done(store: ObjectStore, key: str, need: set[str]) -> None:
    try:
        done = g.decode(await store.get(key, max_bytes=caps.GC_OBJECT), g.Done)
    except ObjectNotFound:  # pruned: only after every check that listed its mark timed out
        raise GcConflict("the garbage-collection check took too long; run the put again") from None
    for obj in need.intersection(done.deleted):
        try:
            await store.head(obj)  # recreated since (content-addressed): fine
        except ObjectNotFound:
            raise GcConflict(
                f"garbage collection deleted {obj}, which this put reused; run the put again"
            ) from None


async def guard_commit(repo: Repository, mkey: str) -> float:
    """The writer rule: returns the monotonic time by which the version record must exist
    (raise `GcConflict` if a collection deleted, or may delete, what this version needs)."""
    try:
        return await _guard(repo, mkey)
    except GcConflict:
        repo.forget_index()
        raise


async def _guard(repo: Repository, mkey: str) -> float:
    t_k = time.monotonic()
    store = repo.store
    marks = [i.key async for i in store.list(g.MARKS)]  # marks first, then the epoch (§4a)
    epoch = await read_epoch(store)
    deadline = t_k + min_grace() / 2
    if not marks and epoch == repo.gc_epoch:
        return deadline  # no sweep deleted anything since this repository was opened
    need = await _relied_on(repo, mkey)
    for key in marks:
        mid = key.rsplit("/", 1)[1]
        try:
            mark = g.decode(await store.get(key, max_bytes=caps.GC_OBJECT), g.Mark)
        except ObjectNotFound:  # swept meanwhile: its done record exists (written first)
            await _check_done(store, f"{g.DONE}{mid}", need)
            continue
        mine = sorted(need.intersection(mark.candidates))
        if not mine:
            continue
        keep = g.Keep(format=1, mark=mid, objects=mine)
        await store.put(f"{g.KEEP}{mid}/{secrets.token_hex(8)}", g.encode(keep), if_none_match=True)
        try:
            await store.head(f"{g.SWEEPS}{mid}")
        except ObjectNotFound:
            continue  # its sweep starts later and sees our keep object
        raise GcConflict(
            "a garbage collection is sweeping data this put reused; run the put again when `gc` ends"
        )
    if time.monotonic() > deadline:
        raise GcConflict("the garbage-collection check took too long; run the put again")
    return deadline
