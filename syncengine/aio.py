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

import datetime as _dt
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from syncengine.aio_draft import Draft
from syncengine.errors import ConfigError
from syncengine.hashing.tree import Source
from syncengine.repo.manifest import ManifestEntry
from syncengine.repo.records import VersionRecord, check_name, json_copy, parse_ref
from syncengine.repo.references import Reference
from syncengine.repo.repository import Repository as _Core
from syncengine.store import open_store

if TYPE_CHECKING:
    from syncengine.aio_runs import Run
    from syncengine.repo.lifecycle import Cleanup, Deletion
    from syncengine.repo.local_cache import LocalCache


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
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: _dt.timedelta | None = None,
    ) -> None:
        from syncengine.repo.lifecycle import ttl_seconds

        ttl_seconds(ttl)  # a bad TTL fails here, not after the upload
        self.ttl = ttl  # time to live from creation: `cleanup` deletes the version after it
        self.name = check_name("artifact name", name)
        self.type = check_name("type", type)
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.sources: list[Source] = []
        self.references: list[Reference] = []

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

    def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
        *,
        allow_secret_url: bool = False,
    ) -> None:
        """Adds an external object by URI; only its metadata is logged, and a download
        fetches it from the source and checks it is unchanged (docs/REFERENCES.md).

        ``s3://bucket/key`` (size, ETag, VersionId), ``s3://bucket/prefix/`` (every object
        under it), ``file:///abs/path`` (a file or folder: size, mtime and, with ``checksum``,
        the content digest), ``https://…`` (size, ETag, Last-Modified). ``name`` is the entry's
        path (for a prefix or folder: the folder its objects go under). A prefix or folder
        with more than ``max_objects`` objects (default 10,000) is an error. The source is
        read when the version is logged. A URL carrying a credential (``user:pass@``,
        ``?token=``, a presigned query) is a ``ConfigError`` unless ``allow_secret_url``: the
        URI is stored verbatim in the manifest every reader of the repository sees.

        >>> art = Artifact("raw", type="dataset")
        >>> art.add_reference("s3://my-bucket/images/", name="images")
        """
        self.references.append(Reference.parse(uri, name, checksum, max_objects, allow_secret_url))


class Manifest:
    """A version's file list; `entries` maps path → ManifestEntry (loaded on first use)."""

    def __init__(self, entries: dict[str, ManifestEntry]) -> None:
        self.entries = entries


def _same_json(a: Any, b: Any) -> bool:
    return a is b or msgspec.json.encode(a) == msgspec.json.encode(b)  # 1, 1.0 and True differ


class ArtifactVersion:
    """One version. Change `description`, `metadata`, `tags` or `aliases`, then `save()`.

    `save()` writes only what this object changed since it was read (or last saved): the
    metadata keys set or deleted (`metadata["k"] = v`, `del metadata["k"]`; assigning
    `metadata = {...}` replaces the whole dict), the tags added or removed, the description
    if assigned, the aliases added or removed. Those changes are applied to the version's
    current record and head by compare-and-swap, so concurrent saves by other objects or
    processes of other keys, tags and aliases are all kept."""

    def __init__(self, repo: Repository, record: VersionRecord, aliases: Sequence[str]) -> None:
        self._repo = repo
        self._record = record  # what this object last read: save() writes its changes to it
        self._saved_aliases = sorted(aliases)
        self.aliases: list[str] = sorted(aliases)
        self._description: str = record.description
        self._description_set = False
        self._metadata: dict[str, Any] = json_copy(record.metadata)
        self._metadata_replaced = False
        self.tags: list[str] = list(record.tags)
        self._ttl_set = False
        self._ttl: _dt.timedelta | None = _ttl_of(record)

    @property
    def ttl(self) -> _dt.timedelta | None:
        """Time to live, counted from the version's creation; `cleanup` deletes the version
        once it has passed (unless it holds aliases). Assign a timedelta or None, then save()."""
        return self._ttl

    @ttl.setter
    def ttl(self, value: _dt.timedelta | None) -> None:
        from syncengine.repo.lifecycle import ttl_seconds

        seconds = ttl_seconds(value)
        self._ttl = None if seconds is None else _dt.timedelta(seconds=seconds)
        self._ttl_set = True

    def _not_deleted(self) -> None:
        if self._record.deleted:
            from syncengine.repo.repository import VersionDeleted

            raise VersionDeleted(f"{self.name}:{self.version} was deleted")

    async def delete(self, delete_aliases: bool = False, *, dry_run: bool = False) -> Deletion:
        """Deletes this version (a tombstone; data goes when no version uses it, docs/GC.md).
        A version holding aliases other than `latest` raises `AliasedVersion` unless
        `delete_aliases`; `latest` moves to the newest remaining version. See docs/DELETION.md."""
        from syncengine.repo.lifecycle import delete_version

        r = self._record
        done = await delete_version(
            self._repo.core, r.project, r.name, r.version, delete_aliases=delete_aliases, dry_run=dry_run
        )
        if not dry_run:
            self._record = msgspec.structs.replace(r, deleted=True)
            self.aliases = self._saved_aliases = []
        return done

    @property
    def description(self) -> str:
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"description must be a string, not {type(value).__name__}")
        self._description, self._description_set = value or "", True

    @property
    def metadata(self) -> dict[str, Any]:
        """Set or delete keys to change only those; assign a dict to replace the whole."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        if value is self._metadata:  # `v.metadata |= {...}` changed keys in place
            return
        if not isinstance(value, dict):
            raise ConfigError(f"metadata must be a dict, not {type(value).__name__}")
        self._metadata, self._metadata_replaced = dict(value), True

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
        """Writes what this object changed — metadata keys set or deleted (or the whole dict
        after `metadata = {...}`), tags added or removed, the description if assigned, aliases
        added or removed — into the version's current record and head by compare-and-swap
        (retried on conflict), so concurrent changes by other writers are kept. Afterwards the
        object shows the stored state, other writers' changes included."""
        from syncengine.repo.records import check_alias

        core, r = self._repo.core, self._record
        wanted = list(dict.fromkeys(self.aliases))  # `latest` too: users may move or remove it
        add = [check_alias(a) for a in wanted if a not in self._saved_aliases]  # fail before writing
        remove = [a for a in self._saved_aliases if a not in wanted]
        mine = json_copy(self._metadata)
        replace = mine if self._metadata_replaced else None
        set_keys = {k: v for k, v in mine.items() if k not in r.metadata or not _same_json(v, r.metadata[k])}
        deleted = {k for k in r.metadata if k not in mine}
        tags = list(dict.fromkeys(self.tags))
        add_tags = [t for t in tags if t not in r.tags]
        removed_tags = {t for t in r.tags if t not in tags}
        description = self._description if self._description_set else None
        ttl_set, ttl = self._ttl_set, (None if self._ttl is None else int(self._ttl.total_seconds()))

        def change(cur: VersionRecord) -> VersionRecord:  # run on each compare-and-swap attempt
            if replace is not None:
                metadata = dict(replace)
            else:
                metadata = {k: v for k, v in cur.metadata.items() if k not in deleted}
                metadata.update(set_keys)
            kept = [t for t in cur.tags if t not in removed_tags]
            return msgspec.structs.replace(
                cur,
                description=cur.description if description is None else description,
                metadata=metadata,
                tags=(*kept, *(t for t in add_tags if t not in kept)),
                ttl_seconds=ttl if ttl_set else cur.ttl_seconds,
            )

        new = await core.update_version(r.project, r.name, r.version, change)
        self._record = new
        self._metadata.clear()
        self._metadata.update(json_copy(new.metadata))
        self._metadata_replaced = False
        self._description, self._description_set = new.description, False
        self._ttl, self._ttl_set = _ttl_of(new), False
        if isinstance(self.tags, list):
            self.tags[:] = new.tags
        else:
            self.tags = list(new.tags)
        if add or remove:
            head = await core.set_aliases(r.project, r.name, r.version, add=add, remove=remove)
            self._saved_aliases = sorted(a for a, n in head.aliases.items() if n == r.version)
        self.aliases = list(self._saved_aliases)

    async def download(
        self,
        root: str | os.PathLike[str] | None = None,
        path_prefix: str | None = None,
        skip_cache: bool = False,
        *,
        link: str | None = None,
        cache_size: int | None = None,
        fsync: bool = True,
        trust_references: bool | None = None,
    ) -> str:
        """Writes the version's files under `root` (default `./artifacts/<name>-vN` in the
        current directory), verified; returns the root's absolute path. Files already right
        are not fetched again and nothing else in `root` is deleted.

        `path_prefix`: only the entries whose path starts with it, as in W&B (`"train"` selects
        `train.csv` and `train/…`; `"train/"` only `train/…`). Files come from and go into the
        machine's file cache unless `skip_cache`; `link` is how cached files are placed:
        `"reflink"` (default: a copy-on-write clone, else a copy), `"copy"`, or `"hardlink"`
        (read-only files that share the cache's inode); `cache_size` bounds the cache in bytes
        (default `$SYNCENGINE_FILE_CACHE_SIZE`, else 20 GiB). `fsync=False` returns without
        waiting for the disk: safe against a killed process, not against a power loss, and the files
        do not go into the file cache. See docs/DOWNLOAD.md.

        References (external objects) are fetched only from a repository trusted for them:
        `trust_references=True`, or (None) ``SYNCENGINE_TRUST_REFERENCES`` naming it; else
        `ReferencesNotTrusted` (docs/REFERENCES.md "Trust")."""
        from syncengine.repo.download import default_root

        self._not_deleted()
        target = os.fspath(root) if root is not None else default_root(self._record)
        await self._repo.core.download(
            self._record,
            target,
            path_prefix=path_prefix,
            skip_cache=skip_cache,
            link=link,
            cache_size=cache_size,
            fsync=fsync,
            trust_references=trust_references,
        )
        return os.path.abspath(target)

    async def checkout(
        self,
        root: str | os.PathLike[str],
        *,
        skip_cache: bool = False,
        link: str | None = None,
        cache_size: int | None = None,
        trust_references: bool | None = None,
    ) -> str:
        """Makes `root` exactly this version: downloads what differs, removes files it lacks
        (the cache and reference options as for `download`)."""
        self._not_deleted()
        await self._repo.core.download(
            self._record,
            os.fspath(root),
            checkout=True,
            skip_cache=skip_cache,
            link=link,
            cache_size=cache_size,
            trust_references=trust_references,
        )
        return os.path.abspath(root)

    async def verify(
        self, root: str | os.PathLike[str], references: bool = False, *, trust_references: bool | None = None
    ) -> None:
        """Raises `VerifyFailed` listing missing, extra and changed files if `root` is not
        exactly this version. References are checked only with ``references``: their copies
        under `root` and their sources, which only a repository trusted for references may
        make this machine look at (``trust_references`` as for `download`; docs/REFERENCES.md)."""
        from syncengine.repo.download import check

        await check(
            self._repo.core, self._record, root, references=references, trust_references=trust_references
        )

    def new_draft(self) -> Draft:
        """A draft of the artifact's next version, starting from this one (see `Draft`)."""
        return Draft(self._repo, self._record)

    async def manifest(self) -> Manifest:
        reader = await self._repo.core.manifest(self._record)
        return Manifest({e.path: e async for e in reader.entries()})

    # Lineage and collections (syncengine/aio_runs.py, docs/LINEAGE.md).

    @property
    def linked_from(self) -> str | None:
        """For a version of a collection: the source version it links (``project/name:vN``)."""
        return self._record.linked_from or None

    async def logged_by(self) -> Run | None:
        """The run that logged this version (for a link: its source), or None."""
        from syncengine import aio_runs

        return await aio_runs.logged_by(self)

    async def used_by(self) -> list[Run]:
        """The runs that used this version (for a link: its source), first use first."""
        from syncengine import aio_runs

        return await aio_runs.used_by(self)

    async def link(self, target: str, aliases: Sequence[str] = ()) -> ArtifactVersion:
        """Links this version into the collection ``target`` (``PROJECT/COLLECTION``) as its
        next vN, pointing ``aliases`` at it; no data is copied."""
        from syncengine import aio_runs

        return await aio_runs.link(self, target, aliases)

    async def unlink(self) -> None:
        """Removes this link from its collection; its source version is untouched."""
        from syncengine import aio_runs

        await aio_runs.unlink(self)


def _ttl_of(record: VersionRecord) -> _dt.timedelta | None:
    return None if record.ttl_seconds is None else _dt.timedelta(seconds=record.ttl_seconds)


class Repository:
    """A repository: a local directory (the default) or ``s3://bucket/prefix``."""

    def __init__(self, core: _Core, url: str, *, reopen: tuple[str | None, str | None] | None = None) -> None:
        self._core = core
        self.url = url
        self._pid = os.getpid()
        self._reopen = reopen  # (endpoint_url, region) when `open()` made the store from `url`
        self._left_to_parent: list[_Core] = []

    @property
    def core(self) -> _Core:
        """The repository core. In a fork()ed child (multiprocessing's "fork", DataLoader
        workers) the parent's store is unusable — its threads and connections stay in the
        parent — so a repository from `open()` goes on with a store of its own."""
        if self._pid != os.getpid() and self._reopen is not None:
            endpoint_url, region = self._reopen
            self._left_to_parent.append(self._core)  # not closed: what it holds is the parent's
            store = open_store(self.url, endpoint_url=endpoint_url, region=region)
            self._core = _Core(store, self._core.config)
            self._pid = os.getpid()
        return self._core

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
            return cls(await _Core.open(store), target, reopen=(endpoint_url, region))
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
        return ArtifactVersion(self, record, [a for a, v in head.aliases.items() if v == record.version])

    async def log_artifact(
        self,
        artifact: Artifact | Draft,
        project: str | None = None,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        ttl: _dt.timedelta | None = None,
        *,
        _logged_by: str = "",  # a Run's log_artifact: "project/run-id"
    ) -> ArtifactVersion:
        """Logs the artifact's files as its next version — or, when the content equals an
        existing version, returns that one (still applying `aliases`). A `Draft` logs its
        base plus its changes (its project is the base's). `ttl` (or the artifact's) is in
        the record of a version this call creates, and set on an existing one it finds
        (docs/DELETION.md)."""
        from syncengine.repo.lifecycle import ttl_seconds

        if isinstance(artifact, Draft):
            if project is not None and project != artifact.project:
                raise ConfigError(f"the draft belongs to project {artifact.project!r}, not {project!r}")
            return await artifact.save(aliases, tags, ttl=ttl, _logged_by=_logged_by)
        if project is None:
            raise ConfigError("log_artifact needs the project to log the artifact into")
        ttl_s = ttl_seconds(ttl if ttl is not None else artifact.ttl)
        if not artifact.sources and not artifact.references:
            raise ConfigError(
                f"artifact {artifact.name!r} has no files: call add_file, add_dir or add_reference first"
            )
        result = await self.core.log(
            artifact.sources,
            project=project,
            name=artifact.name,
            type=artifact.type,
            aliases=aliases,
            description=artifact.description,
            metadata=artifact.metadata,
            tags=tags,
            logged_by=_logged_by,
            references=artifact.references,
            ttl_seconds=ttl_s,  # in the new version's record as it is created
        )
        record = result.record
        if ttl_s is not None and record.ttl_seconds != ttl_s:  # an existing version: a CAS
            set_ttl = lambda v: msgspec.structs.replace(v, ttl_seconds=ttl_s)  # noqa: E731
            record = await self.core.update_version(record.project, record.name, record.version, set_ttl)
        return await self._version(record)

    async def cleanup(self, name: str, keep_last: int = 1, *, dry_run: bool = False) -> Cleanup:
        """Deletes the versions of `"project/name"` that hold no alias (besides `latest`) and
        are not among the newest `keep_last` or are past their TTL; expired versions that
        hold aliases are kept and listed (`kept_aliased`). `dry_run`: report only."""
        from syncengine.repo.lifecycle import cleanup

        ref = parse_ref(name)
        if ref.version is not None or ref.alias is not None:
            raise ConfigError(f"cleanup takes 'project/name', not a version ({name!r})")
        return await cleanup(self.core, ref.project, ref.name, keep_last=keep_last, dry_run=dry_run)

    async def gc(self, *, grace: float = 24 * 3600.0, dry_run: bool = False) -> Any:
        """One garbage-collection step (docs/GC.md): a `GcReport` with `dry_run` (expired
        versions without aliases counted as deleted, as `gc` deletes them first); else a
        `GcRun` — TTL expiry, then a mark is written, or a mark older than `grace` seconds
        is swept."""
        from syncengine.repo.gc import survey
        from syncengine.repo.gc_sweep import collect

        if dry_run:
            return await survey(self.core, drop_expired=True)
        return await collect(self.core, grace=grace)

    @property
    def cache(self) -> LocalCache:
        """This machine's file cache (shared by every repository): `info()`, `cleanup("1GB")`."""
        from syncengine.repo.local_cache import LocalCache

        return LocalCache()

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

    # Runs (syncengine/aio_runs.py, docs/LINEAGE.md).

    def run(
        self,
        project: str,
        job_type: str = "",
        group: str | None = None,
        id: str | None = None,
        resume: bool = False,
        config: dict[str, Any] | None = None,
    ) -> Run:
        """A run to use as ``async with repo.run(project="p", job_type="train") as run:``; a
        new id is drawn unless ``id``; ``resume=True`` continues the existing run ``id``."""
        from syncengine.aio_runs import Run

        return Run(self, project, job_type, group, id, resume, config)

    async def runs(self, project: str, group: str | None = None) -> list[Run]:
        """The runs of ``project`` (of ``group`` only, when given), oldest first."""
        from syncengine import aio_runs

        return await aio_runs.runs(self, project, group)
