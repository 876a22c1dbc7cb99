"""Repacking for `gc`'s sweep (docs/GC.md §3, §5): the live blobs of packs under half live are
copied into new packs with the ordinary pack writer, and one new index segment names them —
all before the sweep rewrites the old segments and deletes the old packs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from syncengine import transfer
from syncengine.errors import PreconditionFailed
from syncengine.repo import object_caps as caps
from syncengine.repo.pack import IndexEntry, PackWriter, encode_index, index_entries, read_blob, zstd_bound

if TYPE_CHECKING:
    from syncengine.repo.repository import Repository


def _pack_key(pack_hex: str) -> str:
    return f"data/{pack_hex[:2]}/{pack_hex}"


async def repack_packs(repo: Repository, packs: list[str], live: set[bytes]) -> int:
    """Copies the blobs of ``packs`` (hex ids) that are in ``live`` and held by no other
    existing pack into new packs (content-addressed, create-if-absent), then writes one index
    segment for them. Deletes nothing. Returns the stored bytes copied.

    Deterministic: the same packs and blobs give the same new packs and segment, so a sweep
    taken over after a crash writes the same objects again (or finds them there)."""
    from syncengine.repo.gc import all_index_entries

    store = repo.store
    going = set(packs)
    existing = {i.key.rsplit("/", 1)[1] async for i in store.list("data/")}
    entries = await all_index_entries(repo, [i.key async for i in store.list("index/")])
    elsewhere = {e.digest for e in entries if e.pack.hex() not in going and e.pack.hex() in existing}
    wanted: dict[str, list[IndexEntry]] = {}
    taken: set[bytes] = set()
    for e in sorted(entries, key=lambda x: (x.pack, x.offset)):
        if e.pack.hex() in going and e.digest in live and e.digest not in elsewhere and e.digest not in taken:
            taken.add(e.digest)
            wanted.setdefault(e.pack.hex(), []).append(e)
    new_entries: list[IndexEntry] = []
    copied = 0
    writer = PackWriter()

    async def flush() -> None:
        nonlocal writer
        if not len(writer):
            return
        pid, body, locs = writer.finish_parts()
        writer = PackWriter()
        with contextlib.suppress(PreconditionFailed):  # written before (a sweep taken over)
            await transfer.upload(store, _pack_key(pid.hex()), body, if_none_match=True)
        new_entries.extend(index_entries(pid, locs))

    most = caps.pack_cap(repo.config.pack_target, zstd_bound(repo.params.max_size))
    for pack in sorted(wanted):
        data = await store.get(_pack_key(pack), max_bytes=most)
        for e in wanted[pack]:
            raw = read_blob(e.pack, data[e.offset : e.offset + e.stored], e, repo.params.max_size)  # verified
            writer.add(e.digest, raw)
            copied += e.stored
            if writer.size >= repo.config.pack_target:
                await flush()
    await flush()
    if new_entries:
        sid, seg = encode_index(new_entries)
        with contextlib.suppress(PreconditionFailed):
            await store.put(f"index/{sid.hex()}", seg, if_none_match=True)
    return copied
