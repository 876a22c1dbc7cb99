"""The async Python API: repositories, artifacts and versions with W&B-style semantics.

>>> import asyncio, tempfile, pathlib
>>> async def demo() -> str:
...     d = pathlib.Path(tempfile.mkdtemp()); (d / "data").mkdir(); _ = (d / "data" / "x.txt").write_text("x")
...     repo = await Repository.open(str(d / "repo"))
...     art = Artifact("mnist", type="dataset"); art.add_dir(str(d / "data"))
...     v = await repo.log_artifact(art, project="vision", aliases=["best"])
...     await repo.close()
...     return v.version
>>> asyncio.run(demo())
'v0'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import msgspec

from syncengine.errors import ConfigError
from syncengine.hashing.tree import Source
from syncengine.repo.manifest import ManifestEntry
from syncengine.repo.records import VersionRecord, check_name, parse_ref
from syncengine.repo.repository import Repository as _Core
from syncengine.store import open_store


def default_repo() -> str:
    """`$SYNCENGINE_REPO`, else `repo/` in the user data dir."""
    from syncengine.cli.repo_commands import default_repo as _default

    return _default()


class Artifact:
    """Files to log as the next version of an artifact.

    >>> art = Artifact("mnist", type="dataset", metadata={"rows": 70000})
    >>> art.add_file("README.md", name="docs/README.md")
    """

    def __init__(
        self, name: str, type: str, description: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self.name = check_name("artifact name", name)
        self.type = check_name("type", type)
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.sources: list[Source] = []

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Adds one file, stored as `name` (default: its basename)."""
        p = os.fspath(path)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: not a file")
        self.sources.append(Source(p, name or os.path.basename(p)))

    def add_dir(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Adds a folder's files, under `name/` when given (else at the top)."""
        p = os.fspath(path)
        if not os.path.isdir(p):
            raise NotADirectoryError(f"{p}: not a folder")
        self.sources.append(Source(p, (name or "").strip("/")))


class Manifest:
    """A version's file list; `entries` maps path → ManifestEntry (loaded on first use)."""

    def __init__(self, entries: dict[str, ManifestEntry]) -> None:
        self.entries = entries


class ArtifactVersion:
    """One version. Change `description`, `metadata`, `tags` or `aliases`, then `save()`."""

    def __init__(self, repo: Repository, record: VersionRecord, aliases: Sequence[str]) -> None:
        self._repo = repo
        self._record = record
        self._saved_aliases = sorted(aliases)
        self.aliases: list[str] = sorted(aliases)
        self.description: str = record.description
        self.metadata: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(record.metadata))
        self.tags: list[str] = list(record.tags)

    project = property(lambda self: self._record.project)
    type = property(lambda self: self._record.type)
    size = property(lambda self: self._record.size)
    files = property(lambda self: self._record.files)
    created = property(lambda self: self._record.created)
    digest = property(lambda self: self._record.content_digest)

    @property
    def name(self) -> str:
        return f"{self._record.project}/{self._record.name}"

    @property
    def version(self) -> str:
        return f"v{self._record.version}"

    @property
    def record(self) -> VersionRecord:
        return self._record

    def __repr__(self) -> str:
        return f"<ArtifactVersion {self.name}:{self.version} aliases={self.aliases}>"

    async def save(self) -> None:
        """Writes changed description, metadata, tags and aliases (compare-and-swap: other
        writers' concurrent changes to other fields are kept)."""
        core, r = self._repo.core, self._record
        description, metadata, tags = self.description, self.metadata, tuple(self.tags)
        self._record = await core.update_version(
            r.project,
            r.name,
            r.version,
            lambda cur: msgspec.structs.replace(cur, description=description, metadata=metadata, tags=tags),
        )
        wanted = [a for a in dict.fromkeys(self.aliases) if a != "latest"]
        add = [a for a in wanted if a not in self._saved_aliases]
        remove = [a for a in self._saved_aliases if a not in wanted and a != "latest"]
        if add or remove:
            await core.set_aliases(r.project, r.name, r.version, add=add, remove=remove)
        self._saved_aliases = sorted({*wanted, *(["latest"] if "latest" in self._saved_aliases else [])})
        self.aliases = list(self._saved_aliases)

    async def download(self, root: str | os.PathLike[str] | None = None) -> str:
        """Writes the version's files under `root` (default `./artifacts/<name>-vN`), verified;
        returns the root."""
        target = (
            os.fspath(root)
            if root is not None
            else os.path.join("artifacts", f"{self._record.name}-{self.version}")
        )
        await self._repo.core.download(self._record, target)
        return os.path.abspath(target)

    async def checkout(self, root: str | os.PathLike[str]) -> str:
        """Makes `root` exactly this version: downloads what differs, removes files it lacks."""
        await self._repo.core.download(self._record, os.fspath(root), checkout=True)
        return os.path.abspath(root)

    async def verify(self, root: str | os.PathLike[str]) -> None:
        """Raises `VerifyFailed` listing missing, extra and changed files if `root` is not
        exactly this version."""
        from syncengine.repo.download import check

        await check(self._repo.core, self._record, root)

    async def manifest(self) -> Manifest:
        reader = await self._repo.core.manifest(self._record)
        return Manifest({e.path: e async for e in reader.entries()})


class Repository:
    """A repository: a local directory (the default) or ``s3://bucket/prefix``."""

    def __init__(self, core: _Core, url: str) -> None:
        self.core = core
        self.url = url

    @classmethod
    async def open(
        cls,
        url: str | os.PathLike[str] | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> Repository:
        """Opens (creating on first use) the repository at ``url``: a directory, ``file://…``
        or ``s3://bucket/prefix`` (credentials from the standard AWS chain; ``endpoint_url``
        or ``AWS_ENDPOINT_URL`` for other S3-compatible services)."""
        target = os.fspath(url) if url is not None else default_repo()
        store = open_store(target, endpoint_url=endpoint_url, region=region)
        try:
            return cls(await _Core.open(store), target)
        except BaseException:
            await store.close()
            raise

    async def close(self) -> None:
        await self.core.store.close()

    async def __aenter__(self) -> Repository:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _version(self, record: VersionRecord) -> ArtifactVersion:
        head = await self.core.head(record.project, record.name)
        aliases = [a for a, v in head.aliases.items() if v == record.version]
        if head.latest == record.version:
            aliases.append("latest")
        return ArtifactVersion(self, record, aliases)

    async def log_artifact(
        self, artifact: Artifact, project: str, aliases: Sequence[str] = (), tags: Sequence[str] = ()
    ) -> ArtifactVersion:
        """Logs the artifact's files as its next version — or, when the content equals an
        existing version, returns that one (still applying `aliases`)."""
        if not artifact.sources:
            raise ConfigError(f"artifact {artifact.name!r} has no files: call add_file or add_dir first")
        result = await self.core.log(
            artifact.sources,
            project=project,
            name=artifact.name,
            type=artifact.type,
            aliases=aliases,
            description=artifact.description,
            metadata=artifact.metadata,
            tags=tags,
        )
        return await self._version(result.record)

    async def artifact(self, ref: str) -> ArtifactVersion:
        """`"project/name:alias"`, `":vN"`, or `"project/name"` (latest)."""
        return await self._version(await self.core.resolve(parse_ref(ref)))

    async def artifact_versions(self, name: str) -> list[ArtifactVersion]:
        ref = parse_ref(name)
        return [await self._version(r) for r in await self.core.versions(ref.project, ref.name)]

    async def artifacts(self, project: str, type: str | None = None) -> list[str]:
        out = []
        async for n in self.core.artifacts(check_name("project", project)):
            if type is None or (await self.core.head(project, n)).type == type:
                out.append(f"{project}/{n}")
        return out
