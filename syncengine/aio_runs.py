"""Runs in the async API: a training or evaluation job whose inputs and outputs are recorded.

>>> import asyncio, tempfile, pathlib
>>> from syncengine.aio import Artifact, Repository
>>> async def demo() -> list[str]:
...     d = pathlib.Path(tempfile.mkdtemp()); (d / "w.bin").write_bytes(b"w")
...     async with await Repository.open(str(d / "repo")) as repo:
...         async with repo.run(project="vision", job_type="train", config={"lr": 0.1}) as run:
...             art = Artifact("model", type="model"); art.add_file(str(d / "w.bin"))
...             v = await run.log_artifact(art, aliases=["best"])
...         producer = await v.logged_by()
...         return [producer.id == run.id, producer.state]
>>> asyncio.run(demo())
[True, 'finished']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from syncengine.errors import ConfigError
from syncengine.repo import lineage, links
from syncengine.repo.records import FORMAT, check_name, parse_ref
from syncengine.repo.runs import (
    RUN_STATES,
    RunExists,
    RunRecord,
    check_run_id,
    create_run,
    json_object,
    new_run_id,
    now,
    read_run,
    record_log,
    record_use,
    update_run,
)

if TYPE_CHECKING:
    from syncengine.aio import Artifact, ArtifactVersion, Repository
    from syncengine.aio_draft import Draft


class Run:
    """One run of a job (``async with repo.run(project=..., job_type=...) as run:``).

    ``config`` (given at the start) and ``summary`` (set keys while the run goes on, e.g. the
    final accuracy) are JSON objects stored in the run's record; the record's ``state`` is
    ``running`` until the ``with`` block ends, then ``finished``, or ``crashed`` when it ends
    with an exception. A run read back (``version.logged_by()``, ``repo.runs()``) shows its
    stored state; only a started run can use or log artifacts."""

    def __init__(
        self,
        repo: Repository,
        project: str,
        job_type: str = "",
        group: str | None = None,
        id: str | None = None,
        resume: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._repo = repo
        self.project = check_name("project", project)
        self.job_type = check_name("job type", job_type) if job_type else ""
        self.group = check_name("group", group) if group else ""
        self.id = check_run_id(id) if id is not None else None
        self._resume = resume
        if resume and id is None:
            raise ConfigError("resume=True needs id= of the run to continue")
        self.config: dict[str, Any] = json_object("config", config)
        self.summary: dict[str, Any] = {}
        self._record: RunRecord | None = None
        self._active = False

    @classmethod
    def _read_back(cls, repo: Repository, record: RunRecord) -> Run:
        run = cls(repo, record.project, record.job_type, record.group or None, record.id)
        run.config, run.summary, run._record = dict(record.config), dict(record.summary), record
        return run

    @property
    def record(self) -> RunRecord | None:
        """The stored record as last read or written (None before the run starts)."""
        return self._record

    @property
    def state(self) -> str:
        return self._record.state if self._record is not None else "new"

    @property
    def path(self) -> str:
        """``project/id``: how lineage names the run."""
        return f"{self.project}/{self.id}"

    def __repr__(self) -> str:
        return f"<Run {self.path} job_type={self.job_type!r} state={self.state}>"

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> Run:
        """Creates the run's record (or, with ``resume=True``, marks the existing run running
        again, merging ``config``). ``RunExists``/``RunNotFound`` say what to do instead."""
        if self._active:
            raise ConfigError(f"run {self.path} is already started")
        store = self._repo.core.store
        if self._resume:
            assert self.id is not None
            config = dict(self.config)

            def resume(r: RunRecord) -> RunRecord:
                return msgspec.structs.replace(
                    r,
                    state="running",
                    updated=now(),
                    resumed=r.resumed + 1,
                    config={**r.config, **config},
                    error="",
                )

            self._record = await update_run(store, self.project, self.id, resume)  # or RunNotFound
            self.job_type = self.job_type or self._record.job_type
            self.group = self.group or self._record.group
        else:
            from syncengine.repo.repository import _created_by

            for attempt in range(8):
                run_id = self.id if self.id is not None else new_run_id()
                record = RunRecord(
                    FORMAT,
                    self.project,
                    run_id,
                    now(),
                    "running",
                    self.job_type,
                    self.group,
                    self.config,
                    {},
                    _created_by(),
                )
                try:
                    self._record = await create_run(store, record)
                    self.id = run_id
                    break
                except RunExists:
                    if self.id is not None or attempt == 7:
                        raise
        assert self._record is not None
        self.config = dict(self._record.config)
        self.summary = dict(self._record.summary)
        self._active = True
        return self

    async def finish(self, error: BaseException | None = None) -> None:
        """Records the end: ``finished``, or ``crashed`` with ``error``'s one-line message;
        the summary keys set on this object are merged into the stored summary."""
        if not self._active:
            return
        self._active = False
        await self._save("crashed" if error is not None else "finished", error)

    async def save(self) -> None:
        """Writes ``summary`` and ``config`` now (merged key by key into the stored record)."""
        self._check_active()
        await self._save(None, None)

    async def _save(self, state: str | None, error: BaseException | None) -> None:
        assert self.id is not None
        summary = json_object("summary", self.summary)
        config = json_object("config", self.config)
        message = " ".join(f"{type(error).__name__}: {error}".split()) if error is not None else ""

        def change(r: RunRecord) -> RunRecord:
            return msgspec.structs.replace(
                r,
                state=state or r.state,
                updated=now() if state else r.updated,
                summary={**r.summary, **summary},
                config={**r.config, **config},
                error=message[:1000] if state else r.error,
            )

        assert state is None or state in RUN_STATES
        self._record = await update_run(self._repo.core.store, self.project, self.id, change)

    async def __aenter__(self) -> Run:
        return await self.start()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.finish(exc)

    def _check_active(self) -> None:
        if not self._active:
            raise ConfigError(
                f"run {self.path if self.id else '(not started)'} is not running: use it inside "
                "`with repo.run(...) as run:` (or resume it by id)"
            )

    # -- inputs and outputs -----------------------------------------------------------------------

    async def use_artifact(self, ref: str, type: str | None = None) -> ArtifactVersion:
        """The version ``ref`` names (``name:alias``, ``name:vN`` in the run's project, or
        ``project/name[:…]``), recorded as an input of this run. Using a link of a collection
        records the use on its source version. ``type``, when given, must match."""
        self._check_active()
        assert self.id is not None
        version = await self._repo.artifact(_in_project(ref, self.project))
        if type is not None and version.type != type:
            raise ConfigError(f"{version.name}:{version.version} has type {version.type!r}, not {type!r}")
        record = version.record
        source = await links.source_of(self._repo.core, record)
        via = links.ref_of(record) if source is not record else ""
        await record_use(self._repo.core.store, self.project, self.id, source, via)
        return version

    async def log_artifact(
        self,
        artifact: Artifact | Draft,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> ArtifactVersion:
        """Logs ``artifact`` (into the run's project unless ``project``; a ``Draft`` into its
        base's project) with this run as its producer; identical content returns the existing
        version (its producer unchanged, this run still lists it in ``logged_artifacts()``)."""
        from syncengine.aio_draft import Draft

        self._check_active()
        assert self.id is not None
        default = artifact.project if isinstance(artifact, Draft) else self.project
        version = await self._repo.log_artifact(
            artifact, project or default, aliases, tags, _logged_by=self.path
        )
        await record_log(self._repo.core.store, self.project, self.id, version.record)
        return version

    async def upsert_artifact(
        self, artifact: Artifact, distributed_id: str | None = None, project: str | None = None
    ) -> None:
        """Uploads ``artifact``'s files as this writer's part of a distributed artifact
        (docs/DISTRIBUTED.md): any number of runs, processes and machines upsert into one
        ``distributed_id`` (default: the run's group), then one ``finish_artifact`` commits a
        single version holding every file. No version exists until then."""
        from syncengine.repo import distributed

        self._check_active()
        if not artifact.sources and not artifact.references:
            raise ConfigError(
                f"artifact {artifact.name!r} has no files: call add_file, add_dir or add_reference first"
            )
        await distributed.upsert(
            self._repo.core,
            artifact.sources,
            artifact.references,
            project=project or self.project,
            name=artifact.name,
            type=artifact.type,
            distributed_id=self._distributed_id(distributed_id),
            run=self.path,
        )

    async def finish_artifact(
        self,
        artifact: Artifact,
        distributed_id: str | None = None,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> ArtifactVersion:
        """Commits every part upserted into ``distributed_id`` (default: the run's group) as one
        version of ``artifact`` (its description and metadata, this run as its producer) and
        returns it; the same path upserted with different content is ``DistributedConflict``.
        Files added to ``artifact`` itself are upserted as this run's part first, so the
        version holds them too (as in W&B). Finishing again returns the same version;
        upserting after it is ``ArtifactFinished``."""
        from syncengine.repo import distributed

        self._check_active()
        assert self.id is not None
        record, _ = await distributed.finish(
            self._repo.core,
            project=project or self.project,
            name=artifact.name,
            type=artifact.type,
            distributed_id=self._distributed_id(distributed_id),
            run=self.path,
            aliases=aliases,
            tags=tags,
            description=artifact.description,
            metadata=artifact.metadata,
            sources=artifact.sources,
            references=artifact.references,
        )
        await record_log(self._repo.core.store, self.project, self.id, record)
        return await self._repo._version(record)

    def _distributed_id(self, distributed_id: str | None) -> str:
        if distributed_id:
            return check_name("distributed id", distributed_id)
        if not self.group:
            raise ConfigError(
                f"run {self.path} has no group: pass distributed_id= (the same in every writer), "
                "or start the runs with group="
            )
        return self.group

    async def used_artifacts(self) -> list[ArtifactVersion]:
        return [await self._repo._version(v) for v in await lineage.inputs(self._repo.core, self._stored())]

    async def logged_artifacts(self) -> list[ArtifactVersion]:
        return [await self._repo._version(v) for v in await lineage.outputs(self._repo.core, self._stored())]

    def _stored(self) -> RunRecord:
        if self._record is None:
            raise ConfigError("this run has not started: it has no artifacts yet")
        return self._record


def _in_project(ref: str, project: str) -> str:
    r = parse_ref(ref, default_project=project)
    return str(r)


# -- what ArtifactVersion and Repository delegate to --------------------------------------------


async def logged_by(version: ArtifactVersion) -> Run | None:
    repo = version._repo
    record = await lineage.producer(repo.core, version.record)
    return None if record is None else Run._read_back(repo, record)


async def used_by(version: ArtifactVersion) -> list[Run]:
    repo = version._repo
    return [Run._read_back(repo, r) for r in await lineage.consumers(repo.core, version.record)]


async def link(version: ArtifactVersion, target: str, aliases: Sequence[str] = ()) -> ArtifactVersion:
    repo = version._repo
    project, name = links.parse_collection(target)
    record, _ = await links.link(repo.core, version.record, project, name, aliases)
    return await repo._version(record)


async def unlink(version: ArtifactVersion) -> None:
    await links.unlink(version._repo.core, version.record)


async def runs(repo: Repository, project: str, group: str | None = None) -> list[Run]:
    from syncengine.repo.runs import list_runs

    found = await list_runs(repo.core.store, project)
    return [Run._read_back(repo, r) for r in found if group is None or r.group == group]


async def run_by_id(repo: Repository, project: str, run_id: str) -> Run:
    record, _ = await read_run(repo.core.store, check_name("project", project), check_run_id(run_id))
    return Run._read_back(repo, record)
