"""Runs and the lineage edges between runs and artifact versions, on the object store alone.

No object is shared by two runs: a run record is one object per run (created once, its
state and summary updated by compare-and-swap), and every edge is an immutable marker of
its own, written create-if-absent from both ends (docs/FORMAT.md, "Runs and lineage").
A thousand runs using one version write a thousand distinct objects and never contend.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import secrets
import string
from collections.abc import Callable
from typing import Any, Final

import msgspec

from syncengine.errors import ConfigError, ObjectNotFound, PreconditionFailed, SyncEngineError
from syncengine.repo import object_caps as caps
from syncengine.repo.records import FORMAT, VersionRecord, check_name, decode_json, json_copy
from syncengine.store.base import ObjectStore, read_capped

RUN_STATES: Final = ("running", "finished", "crashed")
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits


class RunExists(SyncEngineError, FileExistsError):
    """A new run was asked for with the id of an existing run."""


class RunNotFound(SyncEngineError, LookupError):
    """No run has this id in this project."""


class RunRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`runs/<project>/<id>`: created once (create-if-absent); state, config, summary and
    the timestamps change by compare-and-swap."""

    format: int
    project: str
    id: str
    created: str  # RFC 3339 UTC
    state: str = "running"  # running | finished | crashed
    job_type: str = ""
    group: str = ""
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    created_by: dict[str, str] = {}
    updated: str = ""  # the last start, resume or finish
    resumed: int = 0  # how many times the run was resumed
    error: str = ""  # a crashed run's exception, one line

    @property
    def path(self) -> str:
        return f"{self.project}/{self.id}"


class Edge(msgspec.Struct, frozen=True, omit_defaults=True):
    """An edge marker (both ends of one use or log): immutable, create-if-absent."""

    format: int
    time: str  # RFC 3339 UTC of the first use/log
    via: str = ""  # a use through a collection: the link version named ("reg/models:v0")


_encode = msgspec.json.Encoder(order="sorted").encode


def encode_run(record: RunRecord) -> bytes:
    """``ConfigError`` for a record larger than readers accept (config and summary: 16 MiB)."""
    return caps.writable(f"run {record.path}'s record", _encode(record), caps.RUN_RECORD)


def encode_edge(edge: Edge) -> bytes:
    return _encode(edge)


def decode_run(data: bytes, key: str = "a run record") -> RunRecord:
    out: RunRecord = decode_json(data, RunRecord, key)
    return out


def decode_edge(data: bytes, key: str = "an edge marker") -> Edge:
    out: Edge = decode_json(data, Edge, key)
    return out


# -- keys --------------------------------------------------------------------------------------


def run_key(project: str, run_id: str) -> str:
    return f"runs/{project}/{run_id}"


def _run_edges(project: str, run_id: str, kind: str) -> str:
    return f"lineage/runs/{project}/{run_id}/{kind}/"


def _version_edges(project: str, name: str, version: int, kind: str) -> str:
    return f"lineage/versions/{project}/{name}/v{version}/{kind}/"


def used_key(run_project: str, run_id: str, v: VersionRecord) -> str:
    return f"{_run_edges(run_project, run_id, 'used')}{v.project}/{v.name}/v{v.version}"


def logged_key(run_project: str, run_id: str, v: VersionRecord) -> str:
    return f"{_run_edges(run_project, run_id, 'logged')}{v.project}/{v.name}/v{v.version}"


def used_by_key(v: VersionRecord, run_project: str, run_id: str) -> str:
    return f"{_version_edges(v.project, v.name, v.version, 'used_by')}{run_project}/{run_id}"


def logged_by_key(v: VersionRecord, run_project: str, run_id: str) -> str:
    return f"{_version_edges(v.project, v.name, v.version, 'logged_by')}{run_project}/{run_id}"


def linked_as_key(source: VersionRecord, link: VersionRecord) -> str:
    prefix = _version_edges(source.project, source.name, source.version, "linked_as")
    return f"{prefix}{link.project}/{link.name}/v{link.version}"


# -- run records -------------------------------------------------------------------------------


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """8 random lowercase letters and digits (36^8 ≈ 2.8e12; a taken id is drawn again)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def check_run_id(run_id: str) -> str:
    return check_name("run id", run_id)


def json_object(kind: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``value`` as JSON stores it; a clear error if it cannot be stored."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{kind} must be a dict, not {type(value).__name__}")
    return json_copy(value, kind)


async def create_run(store: ObjectStore, record: RunRecord) -> RunRecord:
    """Writes a new run record; ``RunExists`` if the id is taken (create-if-absent)."""
    try:
        await store.put(run_key(record.project, record.id), encode_run(record), if_none_match=True)
    except PreconditionFailed:
        raise RunExists(
            f"run {record.path} already exists; pass resume=True to continue it, or choose another id"
        ) from None
    return record


async def read_run(store: ObjectStore, project: str, run_id: str) -> tuple[RunRecord, str]:
    """The run record and its ETag; ``RunNotFound`` names what to do."""
    key = run_key(project, run_id)
    try:
        async with store.open_read(key) as r:
            return decode_run(await read_capped(r, caps.RUN_RECORD), key), r.info.etag
    except ObjectNotFound:
        raise RunNotFound(
            f"project {project!r} has no run {run_id!r}; `syncengine runs {project}` lists its runs"
        ) from None


async def update_run(
    store: ObjectStore, project: str, run_id: str, change: Callable[[RunRecord], RunRecord]
) -> RunRecord:
    """Applies ``change`` to the run record by compare-and-swap, retried on conflict (two
    processes resuming one run lose neither's summary keys)."""
    while True:
        current, etag = await read_run(store, project, run_id)
        new = change(current)
        if (new.project, new.id, new.created) != (current.project, current.id, current.created):
            raise ConfigError("a run's project, id and creation time cannot change")
        if new == current:
            return current
        try:
            await store.put(run_key(project, run_id), encode_run(new), if_match=etag)
            return new
        except PreconditionFailed:
            continue


async def list_runs(store: ObjectStore, project: str) -> list[RunRecord]:
    """Every run of ``project``, oldest first."""
    prefix = f"runs/{check_name('project', project)}/"
    keys = [i.key async for i in store.list(prefix) if "/" not in i.key[len(prefix) :]]
    gate = asyncio.Semaphore(16)

    async def load(key: str) -> RunRecord | None:
        async with gate:
            try:
                return decode_run(await store.get(key, max_bytes=caps.RUN_RECORD), key)
            except ObjectNotFound:
                return None

    found = [r for r in await asyncio.gather(*(load(k) for k in keys)) if r is not None]
    return sorted(found, key=lambda r: (r.created, r.id))


# -- edges ---------------------------------------------------------------------------------------


async def _mark(store: ObjectStore, key: str, edge: Edge) -> None:
    """An existing marker already records this edge (its first time is kept)."""
    with contextlib.suppress(PreconditionFailed):
        await store.put(key, encode_edge(edge), if_none_match=True)


async def record_use(
    store: ObjectStore, run_project: str, run_id: str, version: VersionRecord, via: str = ""
) -> None:
    """Marks that the run used ``version``: the version's end first, then the run's."""
    edge = Edge(FORMAT, now(), via)
    await _mark(store, used_by_key(version, run_project, run_id), edge)
    await _mark(store, used_key(run_project, run_id, version), edge)


async def record_log(store: ObjectStore, run_project: str, run_id: str, version: VersionRecord) -> None:
    """Marks that the run logged ``version`` (created it, or logged identical content)."""
    edge = Edge(FORMAT, now())
    await _mark(store, logged_by_key(version, run_project, run_id), edge)
    await _mark(store, logged_key(run_project, run_id, version), edge)


async def _list_edges(store: ObjectStore, prefix: str, parts: int) -> list[tuple[tuple[str, ...], str]]:
    out = []
    async for info in store.list(prefix):
        rest = info.key[len(prefix) :].split("/")
        if len(rest) == parts:
            out.append((tuple(rest), info.key))
    return out


def _version_of(parts: tuple[str, ...]) -> tuple[str, str, int] | None:
    project, name, v = parts
    if not (v.startswith("v") and v[1:].isdigit()):
        return None
    return project, name, int(v[1:])


async def run_versions(
    store: ObjectStore, project: str, run_id: str, kind: str
) -> list[tuple[str, str, int]]:
    """(project, name, N) of the versions a run ``used`` or ``logged``."""
    found = await _list_edges(store, _run_edges(project, run_id, kind), 3)
    return [v for v in (_version_of(p) for p, _ in found) if v is not None]


async def version_runs(store: ObjectStore, version: VersionRecord, kind: str) -> list[tuple[str, str, Edge]]:
    """(run project, run id, edge) of the runs that used (``used_by``) or logged
    (``logged_by``) ``version``, first edge first."""
    found = await _list_edges(store, _version_edges(version.project, version.name, version.version, kind), 2)
    gate = asyncio.Semaphore(16)

    async def load(parts: tuple[str, ...], key: str) -> tuple[str, str, Edge] | None:
        async with gate:
            try:
                return parts[0], parts[1], decode_edge(await store.get(key, max_bytes=caps.EDGE), key)
            except ObjectNotFound:
                return None

    out = [e for e in await asyncio.gather(*(load(p, k) for p, k in found)) if e is not None]
    return sorted(out, key=lambda t: (t[2].time, t[0], t[1]))


async def links_of(store: ObjectStore, source: VersionRecord) -> list[tuple[str, str, int]]:
    """(project, collection, N) of the collection versions that link ``source``."""
    prefix = _version_edges(source.project, source.name, source.version, "linked_as")
    found = await _list_edges(store, prefix, 3)
    return [v for v in (_version_of(p) for p, _ in found) if v is not None]
