"""Lineage queries: which run logged a version, which runs used it, and the graph around it.

Everything is read from the records and edge markers of syncengine.repo.runs; a link in a
collection answers with its source's lineage (a link is a pointer, not a new artifact).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from syncengine.repo.links import links_of_json, ref_of, source_of
from syncengine.repo.records import VersionRecord
from syncengine.repo.repository import ArtifactNotFound
from syncengine.repo.runs import RunNotFound, RunRecord, read_run, run_versions, version_runs

if TYPE_CHECKING:
    from syncengine.repo.repository import Repository

#: Runs followed in each direction by `syncengine lineage` unless --depth says otherwise.
DEFAULT_DEPTH = 3


async def _run_or_none(repo: Repository, project: str, run_id: str) -> RunRecord | None:
    try:
        return (await read_run(repo.store, project, run_id))[0]
    except RunNotFound:
        return None


async def producer(repo: Repository, version: VersionRecord) -> RunRecord | None:
    """The run that logged ``version`` (for a link: its source): the one named in the record
    at creation; for a version created outside any run, the first run that logged identical
    content later; None if no run did."""
    source = await source_of(repo, version)
    if source.logged_by:
        project, _, run_id = source.logged_by.partition("/")
        found = await _run_or_none(repo, project, run_id)
        if found is not None:
            return found
    for project, run_id, _ in await version_runs(repo.store, source, "logged_by"):
        found = await _run_or_none(repo, project, run_id)
        if found is not None:
            return found
    return None


async def consumers(repo: Repository, version: VersionRecord) -> list[RunRecord]:
    """The runs that used ``version`` (for a link: its source), first use first."""
    source = await source_of(repo, version)
    edges = await version_runs(repo.store, source, "used_by")
    gate = asyncio.Semaphore(16)

    async def load(project: str, run_id: str) -> RunRecord | None:
        async with gate:
            return await _run_or_none(repo, project, run_id)

    runs = await asyncio.gather(*(load(p, r) for p, r, _ in edges))
    return [r for r in runs if r is not None]


async def _versions(repo: Repository, refs: list[tuple[str, str, int]]) -> list[VersionRecord]:
    async def one(p: str, n: str, v: int) -> VersionRecord | None:
        try:
            return await repo.version(p, n, v)
        except ArtifactNotFound:  # deleted since
            return None

    found = await asyncio.gather(*(one(*r) for r in refs))
    return [v for v in found if v is not None]


async def inputs(repo: Repository, run: RunRecord) -> list[VersionRecord]:
    """The versions ``run`` used (the source versions, also when used through a link)."""
    return await _versions(repo, await run_versions(repo.store, run.project, run.id, "used"))


async def outputs(repo: Repository, run: RunRecord) -> list[VersionRecord]:
    """The versions ``run`` logged (created, or logged identical content of)."""
    return await _versions(repo, await run_versions(repo.store, run.project, run.id, "logged"))


def run_json(run: RunRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"run": run.path, "state": run.state}
    if run.job_type:
        out["job_type"] = run.job_type
    if run.group:
        out["group"] = run.group
    return out


def _version_json(v: VersionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"artifact": ref_of(v), "type": v.type}
    if v.deleted:
        out["deleted"] = True
    return out


async def graph(repo: Repository, version: VersionRecord, depth: int = DEFAULT_DEPTH) -> dict[str, Any]:
    """The lineage around ``version`` as JSON-ready dicts: ``logged_by`` (the producing run,
    with the versions it ``used``, each with its own ``logged_by``…) and ``used_by`` (the
    consuming runs, with the versions they ``logged``, each with its own ``used_by``…),
    ``depth`` runs deep each way. A version or run met twice is shown once, then
    ``"seen": true``; where depth ran out, ``"more": true``."""
    source = await source_of(repo, version)
    top = _version_json(version)
    if source is not version:
        top["link_of"] = ref_of(source)
    links = await links_of_json(repo, source)
    if links:
        top["linked_as"] = links
    seen_up: set[str] = {ref_of(source)}
    seen_down: set[str] = {ref_of(source)}
    seen_runs_up: set[str] = set()
    seen_runs_down: set[str] = set()

    async def up(v: VersionRecord, d: int) -> dict[str, Any] | None:
        run = await producer(repo, v)
        if run is None:
            return None
        node = run_json(run)
        if run.path in seen_runs_up:
            node["seen"] = True
            return node
        seen_runs_up.add(run.path)
        used = await inputs(repo, run)
        if d <= 1:
            if used:
                node["more"] = True
            return node
        node["used"] = []
        for u in used:
            child = _version_json(u)
            if ref_of(u) in seen_up:
                child["seen"] = True
            else:
                seen_up.add(ref_of(u))
                child["logged_by"] = await up(u, d - 1)
            node["used"].append(child)
        return node

    async def down(v: VersionRecord, d: int) -> list[dict[str, Any]]:
        out = []
        users = await consumers(repo, v)
        fresh = [r for r in users if r.path not in seen_runs_down]
        gate = asyncio.Semaphore(16)

        async def outs(run: RunRecord) -> list[VersionRecord]:
            async with gate:
                return await outputs(repo, run)

        logged_by_run = dict(
            zip([r.path for r in fresh], await asyncio.gather(*(outs(r) for r in fresh)), strict=True)
        )
        for run in users:
            node = run_json(run)
            out.append(node)
            if run.path in seen_runs_down:
                node["seen"] = True
                continue
            seen_runs_down.add(run.path)
            logged = logged_by_run[run.path]
            if d <= 1:
                if logged:
                    node["more"] = True
                continue
            node["logged"] = []
            for o in logged:
                child = _version_json(o)
                if ref_of(o) in seen_down:
                    child["seen"] = True
                else:
                    seen_down.add(ref_of(o))
                    child["used_by"] = await down(o, d - 1)
                node["logged"].append(child)
        return out

    top["logged_by"] = await up(source, depth) if depth > 0 else None
    top["used_by"] = await down(source, depth) if depth > 0 else []
    return top
