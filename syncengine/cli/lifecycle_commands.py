"""`delete`, `cleanup`, `cache info|cleanup`, `gc`: the commands that remove things, each with
--dry-run and a line per thing removed (docs/DELETION.md, docs/GC.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from syncengine.cli.output import echo
from syncengine.cli.params import DURATION, SIZE
from syncengine.cli.progress import plural
from syncengine.cli.repo_commands import _run, artifact_name, json_option, repo_option
from syncengine.repo.records import parse_ref
from syncengine.units import format_size

if TYPE_CHECKING:
    from syncengine.repo.gc import GcReport
    from syncengine.repo.lifecycle import Cleanup, Deletion
    from syncengine.repo.repository import Repository

_dry_run = click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")


def _echo_expiry(deleted: Iterable[Deletion], kept_aliased: Iterable[dict[str, Any]], kept: str) -> None:
    """What cleanup or gc's TTL expiry did: a line per deletion, then per aliased version
    kept past its TTL (``kept``: "kept", or "would keep" for a dry run)."""
    for d in deleted:
        echo(_deletion_line(d))
    for k in kept_aliased:
        echo(f"{kept} {k['ref']}: expired {k['expired']} but holds alias(es) {', '.join(k['aliases'])}")


def _deletion_line(d: Deletion) -> str:
    verb = "would delete" if d.dry_run else "deleted"
    if d.already_deleted:
        return f"{d.ref} was already deleted" + ("" if d.dry_run else " (head updated)")
    extra = f", aliases {', '.join(d.aliases)} removed" if d.aliases and not d.dry_run else ""
    if d.aliases and d.dry_run:
        extra = f", with aliases {', '.join(d.aliases)}"
    why = "" if d.reason == "requested" else f" [{d.reason}]"
    return f"{verb} {d.ref} ({plural(d.files, 'file')}, {format_size(d.size)}{extra}){why}"


def register_lifecycle(cli: click.Group) -> None:
    @cli.command("delete")
    @click.argument("ref")
    @click.option("--delete-aliases", is_flag=True, help="Also remove the version's aliases.")
    @_dry_run
    @repo_option
    @json_option
    def delete(ref: str, delete_aliases: bool, dry_run: bool, repo_url: str | None, as_json: bool) -> None:
        """Delete PROJECT/NAME:vN (refused while it holds aliases other than latest, unless
        --delete-aliases). Its data is reclaimed by `gc` once no version uses it."""
        r = parse_ref(ref)
        if r.version is None:
            raise click.BadParameter("name the version as PROJECT/NAME:vN", param_hint="REF")
        version = r.version

        async def job(repo: Repository) -> Deletion:
            from syncengine.repo.lifecycle import delete_version

            return await delete_version(
                repo, r.project, r.name, version, delete_aliases=delete_aliases, dry_run=dry_run
            )

        d = _run(repo_url, job)
        if as_json:
            echo(json.dumps(d.to_json()))
        else:
            echo(_deletion_line(d))

    @cli.command("cleanup")
    @click.argument("name")
    @click.option(
        "--keep-last",
        type=click.IntRange(min=0),
        default=1,
        show_default=True,
        help="Keep the newest N versions (TTL-expired ones still go).",
    )
    @_dry_run
    @repo_option
    @json_option
    def cleanup(name: str, keep_last: int, dry_run: bool, repo_url: str | None, as_json: bool) -> None:
        """Delete the versions of PROJECT/NAME that hold no alias (besides latest) and are
        older than the newest --keep-last or past their TTL."""
        r = artifact_name(name, "NAME")

        async def job(repo: Repository) -> Cleanup:
            from syncengine.repo.lifecycle import cleanup as run_cleanup

            return await run_cleanup(repo, r.project, r.name, keep_last=keep_last, dry_run=dry_run)

        result = _run(repo_url, job)
        if as_json:
            echo(json.dumps(result.to_json()))
            return
        _echo_expiry(result.deleted, result.kept_aliased, "kept")
        verb = "would delete" if dry_run else "deleted"
        echo(
            f"{verb} {plural(len(result.deleted), 'version')} of {r.full_name} "
            f"({format_size(result.bytes)} of files)"
        )

    @cli.group("cache")
    def cache() -> None:
        """This machine's file cache (shared by every download)."""

    @cache.command("info")
    @json_option
    def cache_info(as_json: bool) -> None:
        """Size, files, bound and location of the file cache."""
        from syncengine.repo.local_cache import cache_info as info

        i = info()
        if as_json:
            echo(json.dumps(i.to_json()))
            return
        echo(
            f"{i.location}: {plural(i.files, 'file')}, {format_size(i.bytes)} of {format_size(i.bound)} "
            "(SYNCENGINE_FILE_CACHE_SIZE sets the bound)"
        )

    @cache.command("cleanup")
    @click.argument("target", type=SIZE, default="0")
    @_dry_run
    @json_option
    def cache_cleanup(target: int, dry_run: bool, as_json: bool) -> None:
        """Delete least recently used cache files until at most TARGET remain (1GB, 500MB;
        0, the default, empties it). Downloads in progress and hard-linked checkouts are safe."""
        from syncengine.repo.local_cache import cache_cleanup as clean

        c = clean(target, dry_run=dry_run)
        if as_json:
            echo(json.dumps(c.to_json()))
            return
        verb = "would remove" if dry_run else "removed"
        echo(
            f"{verb} {plural(c.files_removed, 'file')} ({format_size(c.bytes_freed)}); "
            f"{plural(c.files, 'file')}, {format_size(c.bytes)} {'would remain' if dry_run else 'remain'}"
        )

    @cli.command("gc")
    @_dry_run
    @repo_option
    @json_option
    @click.option(
        "--grace",
        type=DURATION,
        default="24h",
        show_default=True,
        help="Grace period between mark and sweep.",
    )
    def gc(dry_run: bool, repo_url: str | None, as_json: bool, grace: float) -> None:
        """Delete versions past their TTL (not aliased ones), then reclaim packs and manifest
        objects no live version uses, in two runs: the first marks candidates, a run after
        the grace period deletes those still dead and repacks packs under half live
        (docs/GC.md). --dry-run only reports."""
        if not dry_run:

            async def run(repo: Repository) -> Any:
                from syncengine.repo.gc_sweep import collect

                return await collect(repo, grace=grace)

            g = _run(repo_url, run)
            if as_json:
                echo(json.dumps(g.to_json()))
                return
            _echo_expiry(g.expired, g.kept_aliased, "kept")
            for key in g.repacked:
                echo(f"repacked {key}")
            if g.pruned:
                echo(f"pruned {g.pruned} record(s) of finished collections under gc/")
            echo(g.summary())
            return

        async def job(repo: Repository) -> tuple[GcReport, Cleanup]:
            from syncengine.repo.gc import survey
            from syncengine.repo.lifecycle import expire

            return await survey(repo, drop_expired=True), await expire(repo, dry_run=True)

        r, expiry = _run(repo_url, job)
        if as_json:
            echo(json.dumps({**r.to_json(), "expiry": expiry.to_json()}))
            return
        _echo_expiry(expiry.deleted, expiry.kept_aliased, "would keep")
        echo(f"{r.versions} live version(s), {r.deleted_versions} deleted")
        echo(
            f"{r.packs} pack(s), {format_size(r.pack_bytes)}: {format_size(r.live_bytes)} live in "
            f"{r.live_blobs} blob(s), {format_size(r.dead_bytes)} in {r.dead_blobs} blob(s) "
            "no live version uses"
        )
        echo(f"would delete {r.dead_packs} pack(s) with no live blob ({format_size(r.dead_pack_bytes)})")
        echo(
            f"would repack {len(r.repack)} pack(s) under half live: copy {format_size(r.repack_copy_bytes)} "
            f"live, reclaim {format_size(r.repack_bytes)}"
        )
        if r.unindexed_packs:
            echo(
                f"{r.unindexed_packs} pack(s) no index names ({format_size(r.unindexed_bytes)}): "
                "left by interrupted puts, or a put still running; collected after the grace period"
            )
        echo(
            f"would delete {r.dead_manifest_objects} manifest object(s) "
            f"({format_size(r.dead_manifest_bytes)})"
        )
        for p in r.problems:
            echo(f"problem: {p}", err=True)
        echo(f"reclaimable: {format_size(r.reclaimable_bytes)} (dry run: nothing deleted)")
