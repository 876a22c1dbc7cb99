"""The objects of a collection under ``gc/`` (docs/GC.md, bytes in docs/FORMAT.md): marks,
sweep intents, keep objects and done records. JSON, one object each."""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")

MARKS: str = "gc/marks/"
SWEEPS: str = "gc/sweeps/"
KEEP: str = "gc/keep/"
DONE: str = "gc/done/"
CLOCK: str = "gc/clock/"


class Mark(msgspec.Struct, frozen=True, kw_only=True):
    """Phase 1: what a collection may delete once ``grace`` seconds have passed."""

    format: int
    repository: str
    created: str
    grace: float
    candidates: list[str]  # object keys: packs, manifest objects


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


def encode(obj: Mark | Keep | Done) -> bytes:
    return msgspec.json.encode(obj)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)
