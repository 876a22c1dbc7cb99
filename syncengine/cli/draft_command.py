"""`syncengine draft`: log a new version as an existing one plus added, replaced and removed files."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import click

from syncengine.cli.output import echo
from syncengine.cli.progress import plural, progress_bar
from syncengine.cli.repo_commands import (
    MetadataError,
    _record_json,
    _run,
    json_object,
    json_option,
    json_value,
    repo_location,
    repo_option,
)
from syncengine.repo.records import parse_ref
from syncengine.units import format_duration, format_size

if TYPE_CHECKING:
    from syncengine.repo.repository import PutResult, Repository


def split_add(text: str) -> tuple[str, str | None]:
    """``PATH`` or ``PATH=NAME``: the first ``=`` whose left side exists locally splits them
    (so a path that itself contains ``=`` still works)."""
    if os.path.lexists(text):
        return text, None
    at = text.find("=")
    while at != -1:
        if at > 0 and os.path.lexists(text[:at]):
            return text[:at], text[at + 1 :] or None
        at = text.find("=", at + 1)
    raise click.BadParameter(f"{text!r}: no such file or folder (give PATH or PATH=NAME)", param_hint="--add")


def register(cli: click.Group) -> None:
    @cli.command("draft")
    @click.argument("base")
    @click.option(
        "--add", "adds", multiple=True, metavar="PATH[=NAME]", help="Add a file or folder (repeatable)."
    )
    @click.option(
        "--remove", "removes", multiple=True, metavar="NAME", help="Remove a file or folder (repeatable)."
    )
    @click.option("-a", "--alias", "aliases", multiple=True, help="Alias for the new version (repeatable).")
    @click.option("-d", "--description", default=None, help="Description [the base's].")
    @click.option("-m", "--metadata", default=None, help="JSON object replacing the metadata [the base's].")
    @click.option("--set", "set_items", multiple=True, metavar="KEY=JSON", help="Set one metadata key.")
    @click.option("--unset", "unset_keys", multiple=True, metavar="KEY", help="Remove one metadata key.")
    @click.option("--tag", "tags", multiple=True, help="Tag for the new version (repeatable).")
    @repo_option
    @json_option
    def draft(
        base: str,
        adds: tuple[str, ...],
        removes: tuple[str, ...],
        aliases: tuple[str, ...],
        description: str | None,
        metadata: str | None,
        set_items: tuple[str, ...],
        unset_keys: tuple[str, ...],
        tags: tuple[str, ...],
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Log the next version of BASE's artifact as BASE (PROJECT/NAME[:ALIAS|:vN]) with
        --remove NAME (a file, or a folder and all under it) and then --add PATH[=NAME]
        applied: a file is stored as NAME [its basename], a folder's files under NAME/ [at
        the top]; an added path replaces the base's. Only the added files are read and
        uploaded. Type, description and metadata are the base's unless given."""
        if not adds and not removes:
            raise click.UsageError("nothing to change: give --add PATH[=NAME] or --remove NAME")
        ref = parse_ref(base)
        staged = [split_add(a) for a in adds]  # usage errors before any work
        replace = json_object(metadata, "-m") if metadata is not None else None
        updates: dict[str, Any] = {}
        for item in set_items:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise MetadataError(f"--set {item!r}: expected KEY=JSON")
            updates[k] = json_value(v, f"--set {k}", bare_word_ok=True)
        start = time.perf_counter()

        async def job(repo: Repository) -> tuple[PutResult, int, dict[str, int]]:
            from syncengine.repo.draft import DraftChanges, log_draft

            record = await repo.resolve(ref)
            changes = DraftChanges(record)
            for gone in removes:
                await changes.remove(repo, gone)
            for path, name in staged:
                if os.path.isdir(path):
                    changes.add_dir(path, name)
                else:
                    changes.add_file(path, name)
            meta = dict(replace if replace is not None else record.metadata)
            meta.update(updates)
            for k in unset_keys:
                meta.pop(k, None)
            with progress_bar(not as_json, "logging") as progress:
                result = await log_draft(
                    repo,
                    changes,
                    description=description if description is not None else record.description,
                    metadata=meta,
                    aliases=aliases,
                    tags=tags,
                    on_progress=progress,
                    on_upload=progress.upload if progress is not None else None,
                )
            # What the version holds differently from its base: an --add of a path the base
            # has replaces that file (or keeps it, same content), it adds nothing.
            moved = {"added": 0, "replaced": 0, "removed": 0}
            for c in await repo.diff(record, result.record):
                moved["added" if c.old is None else "removed" if c.new is None else "replaced"] += 1
            return result, record.version, moved

        result, base_version, moved = _run(repo_url, job)
        seconds = time.perf_counter() - start
        for w in result.warnings:
            echo(f"warning: {w}", err=True)
        r = result.record
        if as_json:
            out = {
                **_record_json(r),
                "base": f"{r.project}/{r.name}:v{base_version}",
                "created_now": result.created,
                "seconds": round(seconds, 6),
                "files_added": result.files,
                **moved,
                "new_blobs": result.new_blobs,
                "new_bytes": result.new_bytes,
                "packs": result.packs,
                "repo": repo_location(repo_url),
            }
            echo(json.dumps(out))
            return
        what = "logged" if result.created else "unchanged, same content as"
        echo(
            f"{what} {r.project}/{r.name}:v{r.version} from v{base_version} ({moved['added']} added, "
            f"{moved['replaced']} replaced, {moved['removed']} removed; {plural(r.files, 'file')}, "
            f"{format_size(r.size)}; {format_size(result.new_bytes)} new in "
            f"{plural(result.packs, 'pack')}, {format_duration(seconds)})"
        )
