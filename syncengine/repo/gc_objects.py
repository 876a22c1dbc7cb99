"""The objects of a collection under ``gc/`` (docs/GC.md, bytes in docs/FORMAT.md): marks,
sweep intents, keep objects, done records and the sweep epoch. JSON, one object each."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from syncengine.repo import object_caps as caps
from syncengine.repo.records import object_key_kind

T = TypeVar("T")

MARKS: str = "gc/marks/"
SWEEPS: str = "gc/sweeps/"
KEEP: str = "gc/keep/"
DONE: str = "gc/done/"
CLOCK: str = "gc/clock/"
#: Rewritten (random bytes) by every sweep after its last deletion: a writer whose epoch is
#: unchanged since it opened the repository knows no sweep deleted anything meanwhile (§4a).
EPOCH: str = "gc/epoch"


def collectable(key: str) -> bool:
    """Whether a sweep may ever delete `key`: only packs and manifest objects named as their
    writers name them; a mark naming anything else (``config``, heads, version records:
    anyone who can write ``gc/marks/`` can plant one) is not obeyed for it."""
    return object_key_kind(key) is not None


class Mark(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Phase 1: what a collection may delete once ``grace`` seconds have passed. ``repack``
    (a subset of ``candidates``, omitted when empty) are packs under half live: the sweep
    copies their live blobs into new packs before deleting them."""

    format: int
    repository: str
    created: str
    grace: float
    candidates: list[str]  # object keys: packs, manifest objects
    repack: list[str] = []


class Sweep(msgspec.Struct, frozen=True, kw_only=True):
    """A sweep intent: ``sweeper`` owns the sweep of ``mark`` while it renews the intent
    (a compare-and-swap that bumps ``renewal``) at least every ``S/2`` on its own clock;
    ``finished`` once its mark is deleted. ``{}`` (the first format) reads as unfinished."""

    format: int = 1
    mark: str = ""
    sweeper: str = ""
    renewal: int = 0
    finished: bool = False


class Keep(msgspec.Struct, frozen=True, kw_only=True):
    """A writer relies on these candidates of ``mark``: its sweep must not delete them."""

    format: int
    mark: str
    objects: list[str]


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """A finished sweep and every object it deleted (writers with an old index check it)."""

    format: int
    mark: str
    deleted: list[str]


def encode(obj: Mark | Sweep | Keep | Done) -> bytes:
    """``ConfigError`` for an object larger than readers accept (256 MiB: ~3 million keys)."""
    return caps.writable(f"gc object {type(obj).__name__}", msgspec.json.encode(obj), caps.GC_OBJECT)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)


def decode_intent(data: bytes) -> Sweep:
    """A sweep intent; one that does not decode reads as unfinished, of an unknown owner."""
    try:
        return decode(data, Sweep)
    except msgspec.DecodeError:
        return Sweep()
