"""`Draft`: a new version made from a logged one (async API; `version.new_draft()`).

>>> import asyncio, tempfile, pathlib
>>> from syncengine.aio import Artifact, Repository
>>> async def demo() -> list[str]:
...     d = pathlib.Path(tempfile.mkdtemp()); (d / "data").mkdir()
...     _ = (d / "data" / "a.txt").write_text("a"); _ = (d / "b.txt").write_text("b")
...     repo = await Repository.open(str(d / "repo"))
...     art = Artifact("mnist", type="dataset"); art.add_dir(str(d / "data"))
...     v0 = await repo.log_artifact(art, project="vision")
...     draft = v0.new_draft(); draft.add_file(str(d / "b.txt"), name="extra/b.txt")
...     await draft.remove("a.txt")
...     v1 = await repo.log_artifact(draft, aliases=["best"])
...     files = sorted((await v1.manifest()).entries)
...     await repo.close()
...     return [v1.version, *files]
>>> asyncio.run(demo())
['v1', 'extra/b.txt']
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from syncengine.errors import ConfigError
from syncengine.repo.draft import DraftChanges, log_draft
from syncengine.repo.records import VersionRecord, json_copy

if TYPE_CHECKING:
    from syncengine.aio import ArtifactVersion, Repository


class Draft:
    """The next version of an artifact: a logged version (the base) plus changes.

    `add_file` / `add_dir` stage local files (adding a path the draft holds replaces it);
    `await remove(path)` drops a file, or a folder with everything under it, from the base
    and from what was staged before. `description` and `metadata` start as the base's and can
    be changed; the type is the artifact's. `await save()` (or `repo.log_artifact(draft)`)
    hashes and uploads only the staged files and logs base + changes as the artifact's next
    version — relative to the base, even if newer versions were logged since (as W&B does);
    content identical to an existing version gives that version."""

    def __init__(self, repo: Repository, base: VersionRecord) -> None:

        self._repo = repo
        self._changes = DraftChanges(base)
        self._description = base.description
        self._metadata: dict[str, Any] = json_copy(base.metadata)

    @property
    def base(self) -> VersionRecord:
        return self._changes.base

    @property
    def name(self) -> str:
        return f"{self.base.project}/{self.base.name}"

    project = property(lambda self: self.base.project)
    type = property(lambda self: self.base.type)
    base_version = property(lambda self: f"v{self.base.version}")

    @property
    def description(self) -> str:
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"description must be a string, not {type(value).__name__}")
        self._description = value or ""

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"metadata must be a dict, not {type(value).__name__}")
        self._metadata = value

    def __repr__(self) -> str:
        c = self._changes
        staged = f"{len(c.additions)} added, {len(c.removals)} removed"
        return f"<Draft {self.name} from {self.base_version}: {staged}>"

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Stages one file as `name` (default: its basename), replacing a file of that name."""
        self._changes.add_file(os.fspath(path), name)

    def add_dir(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Stages a folder's files under `name/` (default: at the top), replacing files of the
        same paths; the folder is read when the draft is saved."""
        self._changes.add_dir(os.fspath(path), name)

    async def remove(self, path: str) -> None:
        """Drops the file `path`, or the folder `path` with everything under it; `NotInDraft`
        if the draft holds neither."""
        await self._changes.remove(self._repo.core, path)

    async def save(
        self,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_upload: Callable[[int, int], None] | None = None,
        ttl: _dt.timedelta | None = None,
        _logged_by: str = "",  # a Run's log_artifact: "project/run-id"
    ) -> ArtifactVersion:
        """Logs the draft as the artifact's next version and returns it; ``ttl`` goes into
        the new version's record (an existing identical version gets it by compare-and-swap)."""
        import msgspec

        from syncengine.repo.lifecycle import ttl_seconds

        ttl_s = ttl_seconds(ttl)
        result = await log_draft(
            self._repo.core,
            self._changes,
            description=self._description,
            metadata=json_copy(self._metadata),
            aliases=aliases,
            tags=tags,
            on_progress=on_progress,
            on_upload=on_upload,
            logged_by=_logged_by,
            ttl_seconds=ttl_s,
        )
        record = result.record
        if ttl_s is not None and record.ttl_seconds != ttl_s:
            set_ttl = lambda v: msgspec.structs.replace(v, ttl_seconds=ttl_s)  # noqa: E731
            core = self._repo.core
            record = await core.update_version(record.project, record.name, record.version, set_ttl)
        return await self._repo._version(record)
