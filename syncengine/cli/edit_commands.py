"""`alias add|rm`, `tag add|rm`, `edit`: the mutable fields of a version, each removal with
--dry-run and a line saying what changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click
import msgspec

from syncengine.cli.output import echo
from syncengine.cli.params import duration
from syncengine.cli.repo_commands import (
    MetadataError,
    _record_json,
    _ref,
    _run,
    json_object,
    json_option,
    json_value,
    repo_option,
)
from syncengine.errors import SyncEngineError
from syncengine.repo.records import VersionRecord, parse_ref
from syncengine.terminal_text import shown
from syncengine.units import format_duration

if TYPE_CHECKING:
    from syncengine.repo.repository import Repository


class AliasNotHeld(SyncEngineError, LookupError):
    """`alias rm` named an alias the version does not hold."""


class TagNotHeld(SyncEngineError, LookupError):
    """`tag rm` named a tag the version does not have."""


def register(cli: click.Group) -> None:
    @cli.group("alias")
    def alias() -> None:
        """Move or remove aliases of versions."""

    def change_aliases(
        ref: str,
        names: tuple[str, ...],
        repo_url: str | None,
        as_json: bool,
        *,
        add: bool,
        dry_run: bool = False,
    ) -> None:
        from syncengine.errors import did_you_mean
        from syncengine.repo.records import check_alias

        r = parse_ref(ref)
        if r.version is None:
            raise click.BadParameter("name the version as PROJECT/NAME:vN", param_hint="REF")
        version = r.version
        checked = [check_alias(a) for a in dict.fromkeys(names)]  # bad names before any work

        async def job(repo: Repository) -> list[str]:
            await repo.resolve(r)  # an unknown artifact or version: the error suggests the closest
            if add:
                head = await repo.set_aliases(r.project, r.name, version, add=checked)
                return head.aliases_of(version)
            head = await repo.head(r.project, r.name)
            held = head.aliases_of(version)
            for a in checked:
                if head.aliases.get(a) != version:
                    where = f" (it names v{head.aliases[a]})" if a in head.aliases else ""
                    raise AliasNotHeld(
                        f"{r} holds no alias {a!r}{where}{did_you_mean(a, held)} "
                        f"(its aliases: {', '.join(sorted(held)) or 'none'}); nothing was removed"
                    )
            if dry_run:
                return [a for a in held if a not in checked]
            head = await repo.set_aliases(r.project, r.name, version, remove=checked)
            return head.aliases_of(version)

        now = _run(repo_url, job)
        if as_json:
            echo(
                json.dumps(
                    {
                        "ref": f"{r.project}/{r.name}:v{version}",
                        "action": "add" if add else "remove",
                        "names": list(names),
                        "aliases": now,  # the version's aliases after the change
                        "dry_run": dry_run,
                    }
                )
            )
            return
        if add:
            echo(f"{', '.join(checked)} -> {r}")
            return
        verb = "would remove" if dry_run else "removed"
        echo(f"{verb} {', '.join(checked)} from {r}; its aliases now: {', '.join(now) or 'none'}")

    @alias.command("add")
    @click.argument("ref")
    @click.argument("names", nargs=-1, required=True)
    @repo_option
    @json_option
    def alias_add(ref: str, names: tuple[str, ...], repo_url: str | None, as_json: bool) -> None:
        """Point alias NAMES at PROJECT/NAME:vN (moving them from other versions)."""
        change_aliases(ref, names, repo_url, as_json, add=True)

    @alias.command("rm")
    @click.argument("ref")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
    @repo_option
    @json_option
    def alias_rm(
        ref: str, names: tuple[str, ...], dry_run: bool, repo_url: str | None, as_json: bool
    ) -> None:
        """Remove alias NAMES from PROJECT/NAME:vN (each must name that version)."""
        change_aliases(ref, names, repo_url, as_json, add=False, dry_run=dry_run)

    @cli.group("tag")
    def tag() -> None:
        """Add or remove tags of a version."""

    def change_tags(
        ref: str,
        names: tuple[str, ...],
        repo_url: str | None,
        as_json: bool,
        *,
        add: bool,
        dry_run: bool = False,
    ) -> None:
        from syncengine.errors import did_you_mean
        from syncengine.repo.records import check_tag

        r = parse_ref(ref)
        checked = [check_tag(t) for t in dict.fromkeys(names)]

        async def job(repo: Repository) -> VersionRecord:
            record = await repo.resolve(r)
            if not add:
                for t in checked:
                    if t not in record.tags:
                        raise TagNotHeld(
                            f"{_ref(record)} has no tag {t!r}{did_you_mean(t, record.tags)} "
                            f"(its tags: {', '.join(record.tags) or 'none'}); nothing was removed"
                        )

            def change(v: VersionRecord) -> VersionRecord:
                tags = [t for t in v.tags if add or t not in checked]
                tags += [t for t in checked if add and t not in tags]
                return msgspec.structs.replace(v, tags=tuple(tags))

            if dry_run:
                return change(record)
            return await repo.update_version(r.project, r.name, record.version, change)

        record = _run(repo_url, job)
        if as_json:
            echo(json.dumps({**_record_json(record), "dry_run": dry_run}))  # the record after
            return
        if add:
            echo(f"{_ref(record)} tags: {', '.join(record.tags) or '(none)'}")
            return
        verb = "would remove" if dry_run else "removed"
        left = ", ".join(record.tags) or "(none)"
        echo(
            f"{verb} {'tag' if len(checked) == 1 else 'tags'} {', '.join(checked)} "
            f"from {_ref(record)}; tags: {left}"
        )

    @tag.command("add")
    @click.argument("ref")
    @click.argument("names", nargs=-1, required=True)
    @repo_option
    @json_option
    def tag_add(ref: str, names: tuple[str, ...], repo_url: str | None, as_json: bool) -> None:
        """Add tags NAMES to PROJECT/NAME[:ALIAS|:vN]."""
        change_tags(ref, names, repo_url, as_json, add=True)

    @tag.command("rm")
    @click.argument("ref")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
    @repo_option
    @json_option
    def tag_rm(ref: str, names: tuple[str, ...], dry_run: bool, repo_url: str | None, as_json: bool) -> None:
        """Remove tags NAMES from PROJECT/NAME[:ALIAS|:vN] (each must be one of its tags)."""
        change_tags(ref, names, repo_url, as_json, add=False, dry_run=dry_run)

    @cli.command("edit")
    @click.argument("ref")
    @click.option("-d", "--description", default=None, help="New description.")
    @click.option("-m", "--metadata", default=None, help="JSON object replacing the metadata.")
    @click.option("--set", "set_items", multiple=True, metavar="KEY=JSON", help="Set one metadata key.")
    @click.option("--unset", "unset_keys", multiple=True, metavar="KEY", help="Remove one metadata key.")
    @click.option("--ttl", default=None, metavar="30d|none", help="Time to live from creation (none: keep).")
    @click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
    @repo_option
    @json_option
    def edit(
        ref: str,
        description: str | None,
        metadata: str | None,
        set_items: tuple[str, ...],
        unset_keys: tuple[str, ...],
        ttl: str | None,
        dry_run: bool,
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Change the description or metadata of PROJECT/NAME[:ALIAS|:vN] (compare-and-swap:
        concurrent edits of other keys are kept)."""
        r = parse_ref(ref)
        replace = json_object(metadata, "-m") if metadata is not None else None
        updates: dict[str, Any] = {}
        for item in set_items:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise MetadataError(f"--set {item!r}: expected KEY=JSON")
            updates[k] = json_value(v, f"--set {k}", bare_word_ok=True)
        ttl_s: int | None = None
        if ttl is not None and ttl.strip().lower() != "none":
            ttl_s = max(1, int(duration(ttl, "--ttl")))
        if description is None and replace is None and not updates and not unset_keys and ttl is None:
            raise click.UsageError("nothing to change: give -d, -m, --set, --unset or --ttl")

        async def job(repo: Repository) -> tuple[VersionRecord, VersionRecord]:
            record = await repo.resolve(r)

            def change(v: VersionRecord) -> VersionRecord:
                meta = dict(replace if replace is not None else v.metadata)
                meta.update(updates)
                for k in unset_keys:
                    meta.pop(k, None)
                desc = description if description is not None else v.description
                ttl_now = v.ttl_seconds if ttl is None else ttl_s
                return msgspec.structs.replace(v, description=desc, metadata=meta, ttl_seconds=ttl_now)

            if dry_run:
                return record, change(record)
            before: list[VersionRecord] = []

            def noted(v: VersionRecord) -> VersionRecord:
                before[:] = [v]  # the record this (last) attempt changed
                return change(v)

            after = await repo.update_version(r.project, r.name, record.version, noted)
            return (before[0] if before else after), after

        was, now = _run(repo_url, job)
        changes = _record_changes(was, now)
        if as_json:
            echo(json.dumps({**_record_json(now), "dry_run": dry_run, "changes": changes}))
            return
        verb = "would update" if dry_run else "updated"
        echo(f"{verb} {_ref(now)}: {'; '.join(changes) if changes else 'nothing changed'}")


def _record_changes(old: VersionRecord, new: VersionRecord) -> list[str]:
    """What `edit` changed, one phrase each: description, metadata keys, TTL."""
    out: list[str] = []
    if old.description != new.description:
        out.append(f"description {old.description!r} -> {new.description!r}")
    for k in sorted(set(old.metadata) | set(new.metadata)):
        if k not in new.metadata:
            out.append(f"metadata {shown(k)} removed")
        elif k not in old.metadata:
            out.append(f"metadata {shown(k)} = {json.dumps(new.metadata[k])}")
        elif json.dumps(old.metadata[k]) != json.dumps(new.metadata[k]):
            out.append(f"metadata {shown(k)} {json.dumps(old.metadata[k])} -> {json.dumps(new.metadata[k])}")
    if old.ttl_seconds != new.ttl_seconds:
        out.append(f"ttl {_ttl_text(old.ttl_seconds)} -> {_ttl_text(new.ttl_seconds)}")
    return out


def _ttl_text(seconds: int | None) -> str:
    return "none" if seconds is None else format_duration(seconds)
