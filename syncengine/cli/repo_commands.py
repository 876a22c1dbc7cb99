"""`put`, `get`, `versions`, `show`, `ls`: the artifact commands over a repository."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

import click
import msgspec

from syncengine.cli.output import echo
from syncengine.cli.params import DURATION
from syncengine.cli.progress import plural, progress_bar
from syncengine.cli.reference_commands import reference_options, trust_references_option
from syncengine.cli.suspect_folders import suspect_folders
from syncengine.errors import SyncEngineError
from syncengine.hashing.tree import sources_for
from syncengine.repo.records import ArtifactHead, ArtifactRef, VersionRecord, check_name, parse_ref
from syncengine.store import local_path, read_local_object
from syncengine.terminal_text import shown
from syncengine.units import format_duration, format_size

if TYPE_CHECKING:  # the repository stack (asyncio, stores) loads only when a command runs
    from syncengine.repo.manifest import Change
    from syncengine.repo.repository import PutResult, Repository
    from syncengine.scan import SymlinkPolicy
    from syncengine.store import ObjectStore

T = TypeVar("T")


def default_repo() -> str:
    """`$SYNCENGINE_REPO`, else a repository in the user's data dir."""
    env = os.environ.get("SYNCENGINE_REPO")
    if env:
        return env
    import platformdirs  # ~10 ms to import: only when the default is used

    return str(Path(platformdirs.user_data_dir("syncengine")) / "repo")


def repo_location(repo_url: str | None) -> str:
    """The repository a command uses: `--repo` / `$SYNCENGINE_REPO` when given, else the default,
    which is then named once on stderr (stdout and --json output stay clean)."""
    if repo_url:
        return repo_url
    url = default_repo()
    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else {}
    if not meta.get("syncengine.default_repo_shown"):
        meta["syncengine.default_repo_shown"] = True
        echo(f"repository: {url} (the default; --repo or SYNCENGINE_REPO selects another)", err=True)
    return url


def _run(repo_url: str | None, job: Callable[[Repository], Awaitable[T]]) -> T:
    from syncengine.repo.repository import Repository

    async def opened(store: ObjectStore) -> T:
        return await job(await Repository.open(store))

    return run_on_store(repo_url, opened)


def run_on_store(repo_url: str | None, job: Callable[[ObjectStore], Awaitable[T]]) -> T:
    """``job(store)`` on the repository's store, opened (not the repository: nothing is created)."""
    url = repo_location(repo_url)

    from syncengine.store import open_store

    endpoint = click.get_current_context().find_root().meta.get("endpoint_url")

    async def go() -> T:
        async with open_store(url, endpoint_url=endpoint) as store:
            return await job(store)

    from syncengine._loop import run

    return run(go())


class _Unchanged(NamedTuple):
    """What `put` reports when `recall_unchanged` found the version without the repository stack."""

    record: VersionRecord
    warnings: list[str]
    created: bool = False
    new_blobs: int = 0
    new_bytes: int = 0
    packs: int = 0


def _recall_unchanged(repo_url: str | None, paths: tuple[str, ...], **kw: Any) -> _Unchanged | None:
    """A no-change put, answered without an event loop (and so without importing asyncio,
    the stores or the upload path: most of a no-change put's start-up) for a local
    repository, and for S3 where `s3_quick.quick_reader` resolves what `S3Store` would;
    None when `Repository.log` must run (see `recall_unchanged`)."""
    url = repo_location(repo_url)
    root = local_path(url)
    read: Callable[[str, int], bytes | None]
    close: Callable[[], None] = lambda: None  # noqa: E731
    if root is not None:
        read = lambda key, cap: read_local_object(root, key, cap)  # noqa: E731
    else:
        from syncengine.store.s3_quick import quick_reader

        endpoint = click.get_current_context().find_root().meta.get("endpoint_url")
        try:
            reader = quick_reader(url, endpoint)
        except SyncEngineError:
            return None  # a bad setting: the full path reports it
        if reader is None:
            return None
        read, close = reader, reader.close
    try:
        sources = sources_for(list(paths))
    except SyncEngineError:
        close()
        return None  # the put reports it, in its usual order
    from syncengine.repo.put_memo import recall_unchanged

    try:
        found = recall_unchanged(read, sources, **kw)
    finally:
        close()
    return None if found is None else _Unchanged(*found)


def _endpoint_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    ctx.find_root().meta["endpoint_url"] = value
    return value


_repo = click.option(
    "--repo",
    "repo_url",
    default=None,
    envvar="SYNCENGINE_REPO",
    help="Repository: a directory or s3://BUCKET/PREFIX [a folder in the user data dir, named on stderr].",
)
_endpoint = click.option(
    "--endpoint-url",
    default=None,
    # No envvar: the store reads AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL and the AWS profile in
    # botocore's order (store/aws_env.py); an option fed from one of them would beat the others.
    expose_value=False,
    callback=_endpoint_callback,
    help="S3-compatible endpoint for s3:// repositories [AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, "
    "or the AWS profile's endpoint_url].",
)


def repo_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--repo and --endpoint-url."""
    return _repo(_endpoint(f))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _record_json(r: VersionRecord) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(r)
    out["ref"] = _ref(r)
    return out


def _ref(r: VersionRecord) -> str:
    return f"{r.project}/{r.name}:v{r.version}"


def folder_option(root: str | None) -> None:
    """--root naming a file is a usage error, said as such before any work."""
    if root is not None and os.path.lexists(root) and not os.path.isdir(root):
        raise click.BadParameter(f"{root} is a file, not a folder", param_hint="--root")


def artifact_name(text: str, hint: str, selector_help: str = "") -> ArtifactRef:
    """PROJECT/NAME given on the command line, without :ALIAS or :vN; anything else is a
    usage error (exit status 2) saying what the option takes."""
    head, sep, _ = text.partition(":")
    if head.count("/") != 1:
        raise click.BadParameter(f"expected PROJECT/NAME (e.g. vision/mnist), not {text!r}", param_hint=hint)
    if sep:
        raise click.BadParameter(f"give PROJECT/NAME without :alias or :vN{selector_help}", param_hint=hint)
    return parse_ref(text)  # a bad character: InvalidName, also a usage error (cli.main._Group)


def register(cli: click.Group) -> None:
    @cli.command("put")
    @click.argument("paths", nargs=-1, type=click.Path(exists=True))
    @click.option("-n", "--name", "full_name", required=True, help="PROJECT/NAME of the artifact.")
    @click.option("-t", "--type", "type_", required=True, help="Artifact type, e.g. dataset or model.")
    @click.option("-a", "--alias", "aliases", multiple=True, help="Alias for this version (repeatable).")
    @click.option("-d", "--description", default=None)
    @click.option("-m", "--metadata", default=None, help="JSON object of metadata.")
    @click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
    @click.option(
        "--ttl",
        type=DURATION,
        default=None,
        metavar="30d",
        help="Time to live from creation (docs/DELETION.md).",
    )
    @click.option(
        "--include", multiple=True, metavar="GLOB", help="Only files matching this glob (repeatable)."
    )
    @click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out files and folders matching this glob, e.g. 'build/' (repeatable).",
    )
    @click.option(
        "--include-vcs",
        is_flag=True,
        help="Also log version-control folders (.git, .hg, .svn …), left out by default.",
    )
    @click.option(
        "--follow-symlinks",
        is_flag=True,
        help="Also follow symlinks that lead out of PATHS (by default they are skipped with a warning).",
    )
    @click.option(
        "--reference",
        "references",
        multiple=True,
        metavar="[NAME=]URI",
        help="Log an external object by reference (s3://, file:///, https://), stored as NAME (repeatable).",
    )
    @click.option("--no-checksum", is_flag=True, help="file:// references: size and mtime only, no digest.")
    @click.option("--max-objects", type=click.IntRange(min=1), default=None, help="Per reference [10000].")
    @click.option(
        "--allow-secret-urls",
        is_flag=True,
        help="Log reference URLs that carry a credential (user:pass@, ?token=, presigned) as given.",
    )
    @repo_option
    @json_option
    def put(
        paths: tuple[str, ...],
        full_name: str,
        type_: str,
        aliases: tuple[str, ...],
        description: str | None,
        metadata: str | None,
        tags: tuple[str, ...],
        ttl: float | None,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        include_vcs: bool,
        follow_symlinks: bool,
        references: tuple[str, ...],
        no_checksum: bool,
        max_objects: int | None,
        allow_secret_urls: bool,
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Log PATHS as the next version of PROJECT/NAME (or find the identical existing one)."""
        ttl_s = None if ttl is None else max(1, int(ttl))
        ref = artifact_name(full_name, "-n", " (use -a to set aliases)")
        if not paths and not references:
            raise click.UsageError("give PATHS to log, or --reference URI")
        refs = reference_options(
            references, checksum=not no_checksum, max_objects=max_objects, allow_secret_urls=allow_secret_urls
        )
        meta = json_object(metadata, "-m") if metadata is not None else None
        start = time.perf_counter()
        policy: SymlinkPolicy = True if follow_symlinks else "within"
        result: PutResult | _Unchanged | None = None
        if not refs:  # references must be looked at each time: the shortcut cannot see them
            result = _recall_unchanged(
                repo_url,
                paths,
                project=ref.project,
                name=ref.name,
                type=type_,
                aliases=aliases,
                tags=tags,
                include=include,
                exclude=exclude,
                include_vcs=include_vcs,
                follow_symlinks=policy,
            )
        if result is None:
            sources = sources_for(list(paths)) if paths else []
            count = (sources, include, exclude, include_vcs)
            with progress_bar(not as_json, "logging", count=count) as progress:
                result = _run(
                    repo_url,
                    lambda repo: repo.log(
                        sources,
                        project=ref.project,
                        name=ref.name,
                        type=type_,
                        aliases=aliases,
                        description=description,
                        metadata=meta,
                        tags=tags,
                        include=include,
                        exclude=exclude,
                        include_vcs=include_vcs,
                        follow_symlinks=policy,
                        on_progress=progress,
                        on_upload=progress.upload if progress is not None else None,
                        references=refs,
                        ttl_seconds=ttl_s,  # in the record of a version this put creates
                    ),
                )
        r = result.record
        if ttl_s is not None and r.ttl_seconds != ttl_s:  # an existing version: compare-and-swap
            v = r.version
            set_ttl = lambda rec: msgspec.structs.replace(rec, ttl_seconds=ttl_s)  # noqa: E731
            r = _run(repo_url, lambda repo: repo.update_version(ref.project, ref.name, v, set_ttl))
        seconds = time.perf_counter() - start
        for w in [*result.warnings, *suspect_folders(paths, include, exclude)]:
            echo(f"warning: {w}", err=True)  # scan warnings hold paths already shown
        if as_json:
            echo(
                json.dumps(
                    {
                        **_record_json(r),
                        "created_now": result.created,
                        "seconds": round(seconds, 6),
                        "new_blobs": result.new_blobs,
                        "new_bytes": result.new_bytes,
                        "packs": result.packs,
                        "repo": repo_location(repo_url),
                    }
                )
            )
            return
        what = "logged" if result.created else "unchanged, same content as"
        echo(
            f"{what} {r.project}/{r.name}:v{r.version} ({plural(r.files, 'file')}, {format_size(r.size)}; "
            f"{format_size(result.new_bytes)} new in {plural(result.packs, 'pack')}, "
            f"{format_duration(seconds)})"
        )
        echo(f"repository: {repo_location(repo_url)}")

    @cli.command("get")
    @click.argument("ref")
    @click.option("--root", default=None, help="Where to write the files [./artifacts/<name>-v<N>].")
    @click.option(
        "--prefix",
        "path_prefix",
        default=None,
        help="Only files whose path starts with this (`train`: train.csv and train/…; `train/`: train/…).",
    )
    @click.option("--checkout", is_flag=True, help="Also delete files under --root that the version lacks.")
    @click.option("--skip-cache", is_flag=True, help="Neither use nor fill the machine's file cache.")
    @click.option(
        "--link",
        type=click.Choice(["reflink", "copy", "hardlink"]),
        default=None,
        help="How files from the file cache are placed [reflink]; hardlink: read-only, shared inode.",
    )
    @click.option(
        "--no-fsync",
        is_flag=True,
        help="Don't wait for the disk: faster; safe if killed, not on power loss; no file cache.",
    )
    @click.option(
        "--dry-run",
        is_flag=True,
        help="List the files that would be written (and, with --checkout, deleted); touch nothing.",
    )
    @trust_references_option
    @repo_option
    @json_option
    def get(
        ref: str,
        root: str | None,
        path_prefix: str | None,
        checkout: bool,
        skip_cache: bool,
        link: str | None,
        no_fsync: bool,
        dry_run: bool,
        trust_references: bool | None,
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Download PROJECT/NAME[:ALIAS|:vN] (verified) into --root; files already right stay.

        Without --root the files go to ./artifacts/<name>-v<N> (as in the Python API); the
        folder written is printed. SYNCENGINE_FILE_CACHE_SIZE bounds the file cache."""
        parsed = parse_ref(ref)
        folder_option(root)
        if dry_run:
            _get_dry_run(repo_url, parsed, root, path_prefix, checkout, as_json)
            return

        async def job(repo: Repository) -> tuple[VersionRecord, str, int]:
            from syncengine.repo.download import default_root

            record = await repo.resolve(parsed)
            target = root if root is not None else default_root(record)
            whole = path_prefix is None  # the totals are known: a bar with an ETA
            with progress_bar(
                not as_json,
                "getting",
                total_files=record.files if whole else None,
                total_bytes=record.size if whole else None,
            ) as progress:
                n = await repo.download(
                    record,
                    target,
                    path_prefix=path_prefix,
                    checkout=checkout,
                    on_progress=progress,
                    skip_cache=skip_cache,
                    link=link,
                    fsync=not no_fsync,
                    trust_references=trust_references,
                )
            return record, target, n

        record, target, n = _run(repo_url, job)
        if as_json:
            echo(json.dumps({**_record_json(record), "root": os.path.abspath(target), "written": n}))
        else:
            echo(f"{_ref(record)} -> {os.path.abspath(target)} ({plural(n, 'file')})")

    @cli.command("versions")
    @click.argument("name")
    @repo_option
    @json_option
    def versions(name: str, repo_url: str | None, as_json: bool) -> None:
        """The versions of PROJECT/NAME with their aliases."""
        ref = parse_ref(name)

        async def job(repo: Repository) -> tuple[list[VersionRecord], ArtifactHead]:
            head = await repo.head(ref.project, ref.name)
            return await repo.versions(ref.project, ref.name), head

        records, head = _run(repo_url, job)
        if as_json:
            rows = [{**_record_json(r), "aliases": head.aliases_of(r.version)} for r in records]
            echo(json.dumps(rows))
            return
        for r in records:
            names = head.aliases_of(r.version)
            size = f"{plural(r.files, 'file')}  {format_size(r.size)}"
            echo(f"v{r.version}  {shown(r.created)}  {size}  {' '.join(names)}")

    @cli.command("verify")
    @click.argument("ref")
    @click.option(
        "--root", default=None, help="The folder to compare with the version [./artifacts/<name>-v<N>]."
    )
    @click.option(
        "--references",
        "check_references",
        is_flag=True,
        help="Also check reference entries: on disk with their logged size (and digest), and "
        "each source still as logged (a HEAD or stat each).",
    )
    @trust_references_option
    @repo_option
    @json_option
    def verify(
        ref: str,
        root: str | None,
        check_references: bool,
        trust_references: bool | None,
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Exit 0 if --root holds exactly the version, else list missing/extra/changed files
        (and exit 1). Reference entries are skipped unless --references. Without --root, the
        folder `get` writes by default."""
        from syncengine.repo.download import Difference, default_root
        from syncengine.repo.download import verify as verify_root

        parsed = parse_ref(ref)
        folder_option(root)

        async def job(repo: Repository) -> tuple[VersionRecord, str, list[Difference]]:
            record = await repo.resolve(parsed)
            target = root if root is not None else default_root(record)
            diffs = await verify_root(
                repo, record, target, references=check_references, trust_references=trust_references
            )
            return record, target, diffs

        record, root, differences = _run(repo_url, job)
        if as_json:
            echo(
                json.dumps(
                    {
                        "ref": _ref(record),
                        "root": os.path.abspath(root),
                        "ok": not differences,
                        "differences": [d._asdict() for d in differences],
                    }
                )
            )
            if differences:
                sys.exit(1)
            return
        for d in differences:
            echo(str(d))
        if differences:
            echo(plural(len(differences), "difference"), err=True)
            sys.exit(1)
        echo(f"{root} matches {ref}")

    @cli.command("show")
    @click.argument("ref")
    @click.option("--files", is_flag=True, help="List the version's files (references: -> URI) instead.")
    @repo_option
    @json_option
    def show(ref: str, files: bool, repo_url: str | None, as_json: bool) -> None:
        """One version's record as JSON (indented; one line with --json); --files: its files."""
        if files:
            from syncengine.cli.reference_commands import show_files

            show_files(lambda job: _run(repo_url, job), parse_ref(ref), as_json)
            return
        parsed = parse_ref(ref)

        async def job(repo: Repository) -> dict[str, Any]:
            record = await repo.resolve(parsed)
            head = await repo.head(record.project, record.name)
            return {**_record_json(record), "aliases": head.aliases_of(record.version)}

        echo(json.dumps(_run(repo_url, job), indent=None if as_json else 1))


def register_more(cli: click.Group) -> None:
    @cli.command("ls")
    @click.argument("project", required=False)
    @repo_option
    @json_option
    def ls(project: str | None, repo_url: str | None, as_json: bool) -> None:
        """Projects, or the artifacts of PROJECT with type and newest version."""

        async def job(repo: Repository) -> Any:
            projects = await repo.projects()
            if project is None:
                return projects
            if project not in projects:
                raise await repo.no_project(check_name("project", project), projects)
            out = []
            async for name in repo.artifacts(check_name("project", project)):
                head = await repo.head(project, name)
                out.append(
                    {
                        "name": f"{project}/{name}",
                        "type": head.type,
                        "latest": head.aliases.get("latest"),  # what NAME:latest resolves to
                        "aliases": head.aliases,
                    }
                )
            return out

        rows = _run(repo_url, job)
        if as_json:
            echo(json.dumps(rows))
        elif project is None:
            for p in rows:
                echo(shown(p))
        else:
            for r in rows:
                latest = f"v{r['latest']}" if r["latest"] is not None else "-"
                others = " ".join(sorted(a for a in r["aliases"] if a != "latest"))
                echo(f"{shown(r['name'])}  {shown(r['type'])}  latest={latest}  {shown(others)}")

    @cli.command("diff")
    @click.argument("a")
    @click.argument("b")
    @repo_option
    @json_option
    def diff_cmd(a: str, b: str, repo_url: str | None, as_json: bool) -> None:
        """Files added (+), removed (-) and changed (M) from version A to version B."""

        async def job(repo: Repository) -> list[Change]:
            ra, rb = await repo.resolve(parse_ref(a)), await repo.resolve(parse_ref(b))
            return await repo.diff(ra, rb)

        changes = _run(repo_url, job)
        if as_json:
            echo(
                json.dumps(
                    [
                        {
                            "path": c.path,
                            "change": _kind(c),
                            "old_size": c.old.size if c.old else None,
                            "new_size": c.new.size if c.new else None,
                        }
                        for c in changes
                    ]
                )
            )
            return
        for c in changes:
            echo(f"{_SIGN[_kind(c)]} {shown(c.path)}")

    from syncengine.cli.edit_commands import register as register_edit_commands

    register_edit_commands(cli)  # alias, tag, edit

    @cli.command("abort-uploads")
    @click.option(
        "--older-than",
        type=DURATION,
        default="24h",
        show_default=True,
        help="Only uploads started before this (30m, 24h, 7d).",
    )
    @click.option("--dry-run", is_flag=True, help="List them; abort nothing.")
    @repo_option
    @json_option
    def abort_uploads(older_than: float, dry_run: bool, repo_url: str | None, as_json: bool) -> None:
        """Abort multipart uploads left behind by interrupted transfers (after a grace period)."""

        async def job(repo: Repository) -> list[Any]:
            from syncengine.transfer import abort_stale_uploads

            return await abort_stale_uploads(repo.store, older_than=older_than, dry_run=dry_run)

        found = _run(repo_url, job)
        if as_json:
            echo(
                json.dumps(
                    {
                        "dry_run": dry_run,
                        "uploads": [
                            {"key": u.key, "upload_id": u.upload_id, "initiated": u.initiated} for u in found
                        ],
                    }
                )
            )
            return
        verb = "would abort" if dry_run else "aborted"
        for u in found:
            started = _ago(u.initiated)
            echo(f"{verb} {shown(u.key)} (upload {shown(u.upload_id[:16])}…, started {started} ago)")
        echo(f"{verb} {plural(len(found), 'upload')} older than {format_duration(older_than)}")

    @cli.command("check")
    @click.option("--read-data", is_flag=True, help="Also read every blob and verify its BLAKE3.")
    @repo_option
    @json_option
    def check(read_data: bool, repo_url: str | None, as_json: bool) -> None:
        """Verify the repository: every version's manifest and blobs reachable (and intact)."""
        problems = _run(repo_url, lambda repo: repo.check(read_data=read_data))
        if as_json:
            echo(json.dumps({"ok": not problems, "problems": problems}))
        else:
            for p in problems:
                echo(f"problem: {shown(p)}", err=True)
            echo("repository ok" if not problems else f"{plural(len(problems), 'problem')} found")
        if problems:
            sys.exit(1)


def _get_dry_run(
    repo_url: str | None, ref: Any, root: str | None, path_prefix: str | None, checkout: bool, as_json: bool
) -> None:
    """`get --dry-run`: what a download would write into the root (files missing or not
    the version's, and references, which are fetched every time) and what `--checkout`
    would delete (files the version lacks)."""
    from syncengine.repo.download import default_root, selects
    from syncengine.repo.download import verify as verify_root

    prefix = (path_prefix or "").lstrip("/")

    async def job(repo: Repository) -> tuple[VersionRecord, str, list[Any], list[str]]:
        record = await repo.resolve(ref)
        target = root if root is not None else default_root(record)
        reader = await repo.manifest(record)
        fresh = not os.path.isdir(target)  # nothing there yet: every file would be written
        listed = [
            e.path
            async for e in reader.entries(prefix)
            if selects(e.path, path_prefix) and (fresh or e.ref is not None)
        ]
        differences = [] if fresh else await verify_root(repo, record, target, path_prefix=path_prefix)
        return record, target, differences, listed

    record, target, differences, listed = _run(repo_url, job)
    write = sorted({*(d.path for d in differences if d.kind != "extra"), *listed}, key=str.encode)
    delete = [d.path for d in differences if d.kind == "extra"] if checkout else []
    if as_json:
        out = {**_record_json(record), "root": os.path.abspath(target), "dry_run": True}
        echo(json.dumps({**out, "would_write": write, "would_delete": delete}))
        return
    for p in write:
        echo(f"would write {shown(p)}")
    for p in delete:
        echo(f"would delete {shown(p)}")
    tail = f", delete {len(delete)}" if checkout else ""
    echo(f"{_ref(record)} -> {os.path.abspath(target)}: would write {plural(len(write), 'file')}{tail}")


def _ago(ts: float) -> str:
    return format_duration(max(0.0, time.time() - ts))


class MetadataError(click.UsageError):
    """Metadata that cannot be stored as given: a usage error (exit status 2) shown as one
    `error: …` line."""

    def show(self, file: IO[Any] | None = None) -> None:
        echo(f"error: {self.format_message()}", file=file, err=file is None)


class _NotFinite(ValueError):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: Python reads inf, which JSON cannot store
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> NoReturn:  # NaN, Infinity, -Infinity: not JSON
    raise _NotFinite(text)


def json_value(text: str, hint: str, *, bare_word_ok: bool = False) -> Any:
    """`text` as JSON (strict: only finite numbers); with `bare_word_ok`, text that is not
    JSON at all is that string (`--set split=train`)."""
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except _NotFinite as e:
        raise MetadataError(
            f"{hint}: {e} is not a finite number (JSON has no Infinity or NaN; quote it for a string)"
        ) from None
    except json.JSONDecodeError as e:
        if bare_word_ok:
            return text
        raise MetadataError(f"{hint}: not JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise MetadataError(f"{hint}: not usable as metadata: {' '.join(str(e).split())}") from None


def json_object(text: str, hint: str) -> dict[str, Any]:
    value = json_value(text, hint)
    if not isinstance(value, dict):
        raise MetadataError(f"{hint}: metadata must be a JSON object ({{...}}), not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return "a number"


_SIGN = {"added": "+", "removed": "-", "modified": "M"}


def _kind(c: Change) -> str:
    return "added" if c.old is None else "removed" if c.new is None else "modified"
