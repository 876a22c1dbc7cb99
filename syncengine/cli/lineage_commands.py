"""`lineage`, `runs`, `link`, `unlink`: runs, the graph between runs and versions, and collections."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from syncengine.cli.output import echo
from syncengine.cli.repo_commands import _record_json, _ref, _run, json_option, repo_option
from syncengine.repo.records import VersionRecord, check_name, parse_ref
from syncengine.terminal_text import shown

if TYPE_CHECKING:
    from rich.tree import Tree

    from syncengine.repo.repository import Repository


def _run_label(node: dict[str, Any]) -> str:
    facts = [node[k] for k in ("job_type",) if k in node]
    if "group" in node:
        facts.append(f"group {node['group']}")
    facts.append(node["state"])
    return f"run {node['run']} [{', '.join(facts)}]"


def _version_label(node: dict[str, Any]) -> str:
    label = f"{node['artifact']} ({node['type']}"
    if node.get("deleted"):
        label += ", deleted"
    return label + ")"


def _suffix(node: dict[str, Any]) -> str:
    if node.get("seen"):
        return " (shown above)"
    if node.get("more"):
        return " (more: raise --depth)"
    return ""


def _add(tree: Tree, label: str) -> Tree:
    from rich.text import Text

    # Text: run and artifact names are never read as markup; shown: nor as terminal controls
    return tree.add(Text(shown(label)))


def _up(tree: Tree, run: dict[str, Any]) -> None:
    branch = _add(tree, f"logged by {_run_label(run)}{_suffix(run)}")
    for v in run.get("used", []):
        child = _add(branch, f"used {_version_label(v)}{_suffix(v)}")
        if v.get("logged_by"):
            _up(child, v["logged_by"])


def _down(tree: Tree, runs: list[dict[str, Any]]) -> None:
    for run in runs:
        branch = _add(tree, f"used by {_run_label(run)}{_suffix(run)}")
        for v in run.get("logged", []):
            child = _add(branch, f"logged {_version_label(v)}{_suffix(v)}")
            _down(child, v.get("used_by", []))


def render_tree(graph: dict[str, Any]) -> Tree:
    from rich.text import Text
    from rich.tree import Tree

    title = _version_label(graph)
    if "link_of" in graph:
        title += f" -> link of {graph['link_of']} (its lineage below)"
    root = Tree(Text(shown(title)))
    if graph.get("linked_as"):
        root.add(Text(shown(f"linked as {', '.join(graph['linked_as'])}")))
    up = root.add(Text("upstream"))
    if graph.get("logged_by"):
        _up(up, graph["logged_by"])
    else:
        up.add(Text("(logged outside any run)"))
    down = root.add(Text("downstream"))
    if graph.get("used_by"):
        _down(down, graph["used_by"])
    else:
        down.add(Text("(no run used it)"))
    return root


def register(cli: click.Group) -> None:
    @cli.command("lineage")
    @click.argument("ref")
    @click.option(
        "--depth", type=click.IntRange(0, 100), default=3, show_default=True, help="Runs to follow each way."
    )
    @repo_option
    @json_option
    def lineage_cmd(ref: str, depth: int, repo_url: str | None, as_json: bool) -> None:
        """Upstream (the run that logged REF, its inputs, recursively) and downstream (runs that
        used REF, what they logged, recursively) of PROJECT/NAME[:vN|:ALIAS]."""
        from syncengine.repo.lineage import graph

        parsed = parse_ref(ref)

        async def job(repo: Repository) -> dict[str, Any]:
            return await graph(repo, await repo.resolve(parsed), depth)

        result = _run(repo_url, job)
        if as_json:
            echo(json.dumps(result))
            return
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(render_tree(result))

    @cli.command("runs")
    @click.argument("project")
    @click.option("--group", default=None, help="Only the runs of this group.")
    @repo_option
    @json_option
    def runs_cmd(project: str, group: str | None, repo_url: str | None, as_json: bool) -> None:
        """The runs of PROJECT, oldest first: id, job type, group, state, config, summary."""
        import msgspec

        from syncengine.repo.runs import list_runs

        check_name("project", project)

        async def job(repo: Repository) -> tuple[list[Any], str]:
            from syncengine.errors import did_you_mean

            runs = await list_runs(repo.store, project)
            found = [r for r in runs if group is None or r.group == group]
            hint = ""
            if not runs:
                projects = await repo.projects()
                if project not in projects:  # no runs and no artifacts: no such project, as in `ls`
                    raise await repo.no_project(project, projects)
            elif not found and group is not None:
                hint = did_you_mean(group, sorted({r.group for r in runs if r.group}))
            return found, hint

        found, hint = _run(repo_url, job)
        if as_json:
            echo(json.dumps([msgspec.to_builtins(r) for r in found]))
            return
        if not found:
            echo(f"project {project!r} has no runs" + (f" in group {group!r}" if group else "") + hint)
        for r in found:
            extra = f" group={r.group}" if r.group else ""
            summary = f" summary={json.dumps(r.summary)}" if r.summary else ""
            row = f"{r.path}  {r.job_type or '-'}  {r.state}  {r.created}{extra}{summary}"
            echo(shown(row))

    @cli.command("link")
    @click.argument("source")
    @click.argument("collection")
    @click.option("-a", "--alias", "aliases", multiple=True, help="Alias for the link (repeatable).")
    @repo_option
    @json_option
    def link_cmd(
        source: str, collection: str, aliases: tuple[str, ...], repo_url: str | None, as_json: bool
    ) -> None:
        """Link SOURCE (PROJECT/NAME:vN|:ALIAS) into COLLECTION (PROJECT/COLLECTION) without
        copying data: it becomes the collection's next vN (or the one already linking it)."""
        from syncengine.repo.links import link, parse_collection

        project, name = parse_collection(collection)
        src = parse_ref(source)

        async def job(repo: Repository) -> tuple[VersionRecord, bool]:
            return await link(repo, await repo.resolve(src), project, name, aliases)

        record, created = _run(repo_url, job)
        if as_json:
            echo(json.dumps({**_record_json(record), "created": created}))
        else:
            verb = "linked" if created else "already linked"
            echo(f"{verb}: {_ref(record)} -> {shown(record.linked_from or _ref(record))}")

    @cli.command("unlink")
    @click.argument("ref")
    @click.option("--dry-run", is_flag=True, help="Say what would be unlinked; change nothing.")
    @repo_option
    @json_option
    def unlink_cmd(ref: str, dry_run: bool, repo_url: str | None, as_json: bool) -> None:
        """Remove the link PROJECT/COLLECTION:vN (or :ALIAS) from its collection, with the
        aliases naming it; the source version stays."""
        from syncengine.repo.links import unlink

        parsed = parse_ref(ref)

        async def job(repo: Repository) -> tuple[VersionRecord, list[str]]:
            record = await repo.resolve(parsed)
            head = await repo.head(record.project, record.name)
            # `latest` is not reported: it moves to the newest version left, as a deletion's does
            aliases = sorted(a for a, v in head.aliases.items() if v == record.version and a != "latest")
            return await unlink(repo, record, dry_run=dry_run), aliases

        record, aliases = _run(repo_url, job)
        if as_json:
            echo(json.dumps({**_record_json(record), "dry_run": dry_run, "aliases_removed": aliases}))
            return
        verb = "would unlink" if dry_run else "unlinked"
        dropped = f", alias(es) {', '.join(aliases)} removed with it" if aliases else ""
        echo(f"{verb} {_ref(record)}{dropped} (its source {shown(record.linked_from)} is kept)")

    from syncengine.cli.distributed_commands import register as register_distributed

    register_distributed(cli)  # distributed writers: runs that upsert parts of one version
