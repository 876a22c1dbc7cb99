"""`syncengine gc`: mark, then (a later run, after the grace period) sweep — docs/GC.md §3 —
and the writer rule of §4 (`guard_commit`), which a put runs before it creates its record."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from syncengine.errors import ObjectNotFound, PreconditionFailed, SyncEngineError
from syncengine.repo import gc_objects as g
from syncengine.repo.manifest import decode_manifest, decode_page
from syncengine.repo.pack import decode_index, encode_index

if TYPE_CHECKING:
    from syncengine.repo.gc import GcReport
    from syncengine.repo.repository import Repository
    from syncengine.store.base import ObjectStore

DEFAULT_GRACE: Final = 24 * 3600.0


def min_grace() -> float:
    """The shortest grace period a collection may use; a writer commits within half of it
    after its check (§4). ``SYNCENGINE_GC_MIN_GRACE`` (seconds) lowers it for tests."""
    return float(os.environ.get("SYNCENGINE_GC_MIN_GRACE", "3600"))


class GcConflict(SyncEngineError):
    """A collection deleted (or is deleting) data this put reused: nothing was committed."""


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
        }

    def summary(self) -> str:
        if self.phase == "marked" and self.report is not None:
            return (
                f"marked {self.report.reclaimable_bytes} reclaimable bytes (mark {self.mark}); "
                "run `syncengine gc` again after the grace period to delete them"
            )
        if self.phase == "waiting":
            return f"mark {self.mark} is in its grace period: run `gc` again in {self.wait_seconds:.0f}s"
        if self.phase == "swept":
            return f"deleted {len(self.deleted)} object(s), {self.deleted_bytes} bytes; kept {self.kept}"
        return "nothing to collect"


async def _store_now(store: ObjectStore) -> float:
    """The store's clock: the mtime of an object written now."""
    key = f"{g.CLOCK}{secrets.token_hex(8)}"
    await store.put(key, b"", if_none_match=True)
    try:
        return (await store.head(key)).mtime
    finally:
        await store.delete([key])


async def collect(repo: Repository, *, grace: float = DEFAULT_GRACE) -> GcRun:
    """One `gc` run: sweep a mark old enough, else write a mark if there is none."""
    from syncengine.repo.gc import survey

    if grace < min_grace():
        raise SyncEngineError(
            f"grace period {grace:g}s is below the minimum {min_grace():g}s writers assume (docs/GC.md §4)"
        )
    store = repo.store
    marks = [i async for i in store.list(g.MARKS)]
    if marks:
        info = min(marks, key=lambda i: i.mtime)
        mid = info.key.rsplit("/", 1)[1]
        mark = g.decode(await store.get(info.key), g.Mark)
        elapsed = await _store_now(store) - info.mtime
        need = max(grace, mark.grace)
        if elapsed < need:
            return GcRun("waiting", mid, wait_seconds=need - elapsed)
        return await _sweep(repo, mid, mark)
    candidates: set[str] = set()
    now = await _store_now(store)
    report = await survey(repo, candidates=candidates, unindexed_before=now - grace)
    aborted = await _abort_stale(repo, grace)
    if not candidates:
        return GcRun("nothing", report=report, aborted_uploads=aborted)
    mid = secrets.token_hex(16)
    mark = g.Mark(
        format=1,
        repository=repo.config.id,
        created=_dt.datetime.now(_dt.UTC).isoformat(),
        grace=grace,
        candidates=sorted(candidates),
    )
    await store.put(f"{g.MARKS}{mid}", g.encode(mark), if_none_match=True)
    return GcRun("marked", mid, report=report, aborted_uploads=aborted)


async def _abort_stale(repo: Repository, grace: float) -> int:
    from syncengine.transfer import abort_stale_uploads

    try:
        got = await abort_stale_uploads(repo.store, older_than=grace)
    except NotImplementedError:
        return 0
    return len(got)


async def _sweep(repo: Repository, mid: str, mark: g.Mark) -> GcRun:
    from syncengine.repo.gc import survey

    store = repo.store
    try:  # one sweeper per mark
        await store.put(f"{g.SWEEPS}{mid}", b"{}", if_none_match=True)
    except PreconditionFailed:
        return GcRun("waiting", mid)
    # Keep objects are listed after the intent: a writer that saw no intent wrote its keep first.
    keep_keys = [i.key async for i in store.list(f"{g.KEEP}{mid}/")]
    kept: set[str] = set()
    for k in keep_keys:
        kept.update(g.decode(await store.get(k), g.Keep).objects)
    still: set[str] = set()
    # Unindexed packs named by the mark are old enough already; a fresh survey re-checks them.
    await survey(repo, candidates=still, unindexed_before=float("inf"))
    doomed = sorted((set(mark.candidates) & still) - kept)
    sizes: dict[str, int] = {}
    for key in doomed:
        try:
            sizes[key] = (await store.head(key)).size
        except ObjectNotFound:
            sizes[key] = 0
    doomed_packs = {k.rsplit("/", 1)[1] for k in doomed if k.startswith("data/")}
    # Segments that name a doomed pack are rewritten without it before the pack goes: a reader
    # or a deduplicating writer never finds an index entry for a deleted pack.
    old_segments: list[str] = []
    async for info in store.list("index/"):
        sid = bytes.fromhex(info.key.rsplit("/", 1)[1])
        entries = decode_index(sid, await store.get(info.key))
        if any(e.pack.hex() in doomed_packs for e in entries):
            rest = [e for e in entries if e.pack.hex() not in doomed_packs]
            if rest:
                nsid, data = encode_index(rest)
                with contextlib.suppress(PreconditionFailed):
                    await store.put(f"index/{nsid.hex()}", data, if_none_match=True)
            old_segments.append(info.key)
    if old_segments:
        await store.delete(old_segments)
    if doomed:
        await store.delete([k for k in doomed if k.startswith("data/")])
        await store.delete([k for k in doomed if not k.startswith("data/")])
    done = g.Done(format=1, mark=mid, deleted=doomed)
    await store.put(f"{g.DONE}{mid}", g.encode(done), if_none_match=True)
    await store.delete([f"{g.MARKS}{mid}"])
    # The intent stays: a writer that finds no intent knows the sweep has not started (§4a).
    await store.delete(keep_keys)
    repo._index, repo._segments = None, set()
    return GcRun(
        "swept",
        mid,
        deleted=doomed,
        deleted_bytes=sum(sizes.values()),
        kept=len(mark.candidates) - len(doomed),
    )


# -- the writer rule (§4) -------------------------------------------------------------------


async def _relied_on(repo: Repository, mkey: str) -> set[str]:
    """Every object the version with manifest record ``mkey`` needs: the record, its pages,
    and every pack that holds one of its blobs (per a fresh look at the index)."""
    from syncengine.repo.gc import _all_index_entries

    store = repo.store
    out = {mkey}
    blobs: set[bytes] = set()
    m = decode_manifest(await store.get(mkey))
    stack, seen = [m.root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        h = pid.hex()
        key = f"manifests/{h[:2]}/{h}"
        out.add(key)
        page = decode_page(pid, await store.get(key))
        stack.extend(r.page for r in page.refs)
        for e in page.entries:
            if e.ref is None:
                blobs.update(d for _, d in e.chunks) if e.chunks else blobs.add(e.digest)
    segments = [i.key async for i in store.list("index/")]
    packs = {i.key.rsplit("/", 1)[1]: i.key async for i in store.list("data/")}
    stored: set[bytes] = set()
    for ie in await _all_index_entries(repo, segments):
        if ie.digest in blobs and ie.pack.hex() in packs:
            out.add(packs[ie.pack.hex()])
            stored.add(ie.digest)
    if blobs - stored:  # deduplicated against an index entry of a pack a sweep deleted
        raise GcConflict("garbage collection deleted data this put reused; run the put again")
    return out


async def _check_done(store: ObjectStore, key: str, need: set[str]) -> None:
    done = g.decode(await store.get(key), g.Done)
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
        repo._index, repo._segments = None, set()
        raise


async def _guard(repo: Repository, mkey: str) -> float:
    t_k = time.monotonic()
    store = repo.store
    marks = [i.key async for i in store.list(g.MARKS)]  # marks first, then done (§4)
    dones = [i.key async for i in store.list(g.DONE)]
    deadline = t_k + min_grace() / 2
    if not marks and not dones:
        return deadline
    need = await _relied_on(repo, mkey)
    for key in dones:
        await _check_done(store, key, need)
    for key in marks:
        mid = key.rsplit("/", 1)[1]
        try:
            mark = g.decode(await store.get(key), g.Mark)
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


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise SyncEngineError(
            f"grace period {text!r} is not a duration: use e.g. 90s, 30m, 24h, 7d"
        ) from None
