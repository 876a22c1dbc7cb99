"""Pruning `gc`'s own records under ``gc/`` once no writer or collector can need them
(docs/GC.md §4a, "Pruning"): finished sweeps' intents, done records and keep objects, stray
keep objects and clock probes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncengine.errors import ObjectNotFound
from syncengine.repo import gc_objects as g
from syncengine.repo import object_caps as caps
from syncengine.repo.gc_sweep import min_grace, store_now, sweep_timeout

if TYPE_CHECKING:
    from syncengine.store.base import ObjectStore


async def prune(store: ObjectStore) -> int:
    """Deletes what is provably no longer needed; returns how many objects.

    With ``MIN`` = `min_grace` and ``S`` = `sweep_timeout`, on the store's clock:

    - a *finished* intent at least ``MIN`` old: its done record, its keep objects, then the
      intent (its mark was deleted before it was marked finished, so every writer check
      that listed the mark has ended — a check takes less than ``MIN/2``);
    - an unfinished intent whose mark is gone and whose done record exists, at least
      ``S + MIN`` old: a sweeper stopped between deleting its mark and finishing (it deleted
      the mark within ``S/2`` of its last renewal, the intent's mtime) — the same three;
    - keep objects of a mark that has neither a mark nor an intent, at least ``MIN`` old
      (a writer writes one only within ``MIN/2`` of reading the mark);
    - clock probes (``gc/clock/``) at least ``MIN`` old: left by a killed `gc`.
    """
    marks = {i.key.rsplit("/", 1)[1] async for i in store.list(g.MARKS)}
    intents = [i async for i in store.list(g.SWEEPS)]
    dones = {i.key.rsplit("/", 1)[1] async for i in store.list(g.DONE)}
    keeps = [i async for i in store.list(g.KEEP)]
    clocks = [i async for i in store.list(g.CLOCK)]
    if not intents and not keeps and not clocks:
        return 0
    now = await store_now(store)
    least, stopped = min_grace(), sweep_timeout() + min_grace()
    swept: set[str] = set()
    for info in intents:
        mid = info.key.rsplit("/", 1)[1]
        if mid in marks:
            continue
        age = now - info.mtime
        if age < least:
            continue
        try:
            finished = g.decode_intent(await store.get(info.key, max_bytes=caps.GC_OBJECT)).finished
        except ObjectNotFound:  # another gc pruned it meanwhile
            continue
        if finished or (mid in dones and age >= stopped):
            swept.add(mid)
    has_intent = {i.key.rsplit("/", 1)[1] for i in intents}
    gone: list[str] = [f"{g.DONE}{mid}" for mid in sorted(swept & dones)]
    for info in keeps:
        mid = info.key[len(g.KEEP) :].split("/", 1)[0]
        if mid in swept or (mid not in marks and mid not in has_intent and now - info.mtime >= least):
            gone.append(info.key)
    gone += [i.key for i in clocks if now - i.mtime >= least]
    # The intents last: a prune interrupted before them is done again by the next one.
    if gone:
        await store.delete(gone)
    if swept:
        await store.delete([f"{g.SWEEPS}{mid}" for mid in sorted(swept)])
    return len(gone) + len(swept)
