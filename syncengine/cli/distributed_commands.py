"""`syncengine distributed upsert|finish|status`: distributed writers from shell scripts on many machines."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from syncengine.cli.output import echo
from syncengine.cli.progress import plural, progress_bar
from syncengine.cli.reference_commands import reference_options
from syncengine.cli.repo_commands import (
    _record_json,
    _ref,
    _run,
    artifact_name,
    json_object,
    json_option,
    repo_option,
)
from syncengine.hashing.tree import sources_for
from syncengine.repo.records import check_name
from syncengine.terminal_text import shown
from syncengine.units import format_size

if TYPE_CHECKING:
    from syncengine.aio_runs import Run
    from syncengine.repo.repository import Repository

T = TypeVar("T")


async def _in_run(
    core: Repository,
    url: str,
    project: str,
    run_id: str | None,
    job_type: str,
    work: Callable[[Run | None], Awaitable[T]],
) -> T:
    """`work` inside the run `project/run_id` (created, or resumed when it exists, and ended
    as finished or crashed), or outside any run without a run id."""
    if run_id is None:
        return await work(None)
    from syncengine.aio import Repository as AioRepository
    from syncengine.repo.runs import RunExists

    repo = AioRepository(core, url)
    run = repo.run(project, job_type=job_type, id=run_id)
    try:
        await run.start()
    except RunExists:
        run = repo.run(project, id=run_id, resume=True)
        await run.start()
    try:
        out = await work(run)
    except BaseException as e:
        await run.finish(e)
        raise
    await run.finish()
    return out


_distributed_id = click.option(
    "--distributed-id",
    "-D",
    "distributed_id",
    required=True,
    help="The id every writer of this artifact shares (W&B's distributed_id), e.g. a job id.",
)
_run_id = click.option(
    "--run-id",
    default=None,
    help="Record this as the run PROJECT/RUN_ID (created, or resumed if it exists) [no run].",
)


def register(cli: click.Group) -> None:
    @cli.group("distributed")
    def distributed() -> None:
        """Many writers, one version (docs/DISTRIBUTED.md): each machine runs `upsert` with
        its files, then one `finish` commits a single version holding every file."""

    @distributed.command("upsert")
    @click.argument("name")
    @click.argument("paths", nargs=-1, type=click.Path(exists=True))
    @click.option("-t", "--type", "type_", required=True, help="Artifact type, e.g. dataset or model.")
    @_distributed_id
    @_run_id
    @click.option(
        "--reference",
        "references",
        multiple=True,
        metavar="[NAME=]URI",
        help="Upsert an external object by reference (s3://, file:///, https://) (repeatable).",
    )
    @repo_option
    @json_option
    def upsert(
        name: str,
        paths: tuple[str, ...],
        type_: str,
        distributed_id: str,
        run_id: str | None,
        references: tuple[str, ...],
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Upload PATHS as this writer's part of PROJECT/NAME under --distributed-id; no
        version exists until `finish`. Upserting after the finish is an error."""
        ref = artifact_name(name, "NAME")
        check_name("type", type_)
        check_name("distributed id", distributed_id)
        if not paths and not references:
            raise click.UsageError("give PATHS to upsert, or --reference URI")
        refs = reference_options(references, checksum=True, max_objects=None)
        sources = sources_for(list(paths)) if paths else []
        url = _url(repo_url)

        async def job(core: Repository) -> Any:
            from syncengine.repo import distributed as dist

            async def work(run: Run | None) -> Any:
                with progress_bar(not as_json, "upserting", count=(sources, (), (), False)) as progress:
                    return await dist.upsert(
                        core,
                        sources,
                        refs,
                        project=ref.project,
                        name=ref.name,
                        type=type_,
                        distributed_id=distributed_id,
                        run=run.path if run is not None else "",
                        on_progress=progress,
                        on_upload=progress.upload if progress is not None else None,
                    )

            return await _in_run(core, url, ref.project, run_id, "upsert", work)

        part = _run(repo_url, job)
        if as_json:
            echo(json.dumps(msgspec.to_builtins(part)))
            return
        by = f" by run {part.run}" if part.run else ""
        echo(
            f"upserted {plural(part.files, 'file')} ({format_size(part.size)}) into {ref} "
            f"(distributed id {distributed_id}) as part {part.writer}{by}; no version yet: "
            f"`syncengine distributed finish {ref} -t {type_} -D {distributed_id}` commits every part"
        )

    @distributed.command("finish")
    @click.argument("name")
    @click.argument("paths", nargs=-1, type=click.Path(exists=True))
    @click.option("-t", "--type", "type_", required=True, help="Artifact type (every part must have it).")
    @_distributed_id
    @_run_id
    @click.option(
        "--reference",
        "references",
        multiple=True,
        metavar="[NAME=]URI",
        help="Also include an external object by reference, as upsert does (repeatable).",
    )
    @click.option("-a", "--alias", "aliases", multiple=True, help="Alias for the version (repeatable).")
    @click.option("-d", "--description", default=None)
    @click.option("-m", "--metadata", default=None, help="JSON object of metadata.")
    @click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
    @repo_option
    @json_option
    def finish(
        name: str,
        paths: tuple[str, ...],
        type_: str,
        distributed_id: str,
        run_id: str | None,
        references: tuple[str, ...],
        aliases: tuple[str, ...],
        description: str | None,
        metadata: str | None,
        tags: tuple[str, ...],
        repo_url: str | None,
        as_json: bool,
    ) -> None:
        """Commit every part upserted into PROJECT/NAME under --distributed-id as one version
        (run it once, after every upsert returned). PATHS (and --reference) are this step's
        own files: upserted as one more part first, so the version holds them too. Finishing
        again prints the same version; the same path upserted with different content is an
        error naming both writers."""
        ref = artifact_name(name, "NAME")
        check_name("type", type_)
        check_name("distributed id", distributed_id)
        meta = json_object(metadata, "-m") if metadata is not None else None
        refs = reference_options(references, checksum=True, max_objects=None)
        sources = sources_for(list(paths)) if paths else []
        url = _url(repo_url)

        async def job(core: Repository) -> tuple[Any, bool, int, bool]:
            from syncengine.repo import distributed as dist
            from syncengine.repo.runs import record_log

            async def work(run: Run | None) -> tuple[Any, bool, int, bool]:
                before = await dist.read_finished(core, ref.project, ref.name, distributed_id)
                with progress_bar(
                    not as_json and bool(sources), "finishing", count=(sources, (), (), False)
                ) as progress:
                    record, created = await dist.finish(
                        core,
                        project=ref.project,
                        name=ref.name,
                        type=type_,
                        distributed_id=distributed_id,
                        run=run.path if run is not None else "",
                        aliases=aliases,
                        tags=tags,
                        description=description,
                        metadata=meta,
                        sources=sources,
                        references=refs,
                        on_progress=progress,
                        on_upload=progress.upload if progress is not None else None,
                    )
                if run is not None:
                    assert run.id is not None
                    await record_log(core.store, run.project, run.id, record)
                done = await dist.read_finished(core, ref.project, ref.name, distributed_id)
                return record, created, len(done.parts) if done is not None else 0, before is not None

            return await _in_run(core, url, ref.project, run_id, "finish", work)

        record, created, n_parts, again = _run(repo_url, job)
        if as_json:
            out = {
                **_record_json(record),
                "created_now": created,
                "parts": n_parts,
                "already_finished": again,
            }
            echo(json.dumps(out))
            return
        what = "already finished as" if again else "finished" if created else "finished as the identical"
        echo(
            f"{what} {_ref(record)} from {plural(n_parts, 'part')} of distributed id {distributed_id} "
            f"({plural(record.files, 'file')}, {format_size(record.size)}); "
            "upserts into it are refused from now on"
        )

    @distributed.command("status")
    @click.argument("name")
    @_distributed_id
    @repo_option
    @json_option
    def status(name: str, distributed_id: str, repo_url: str | None, as_json: bool) -> None:
        """The parts upserted into PROJECT/NAME under --distributed-id, and whether it is open,
        sealed (a finish began: run finish again) or finished (and as which version)."""
        ref = artifact_name(name, "NAME")
        check_name("distributed id", distributed_id)

        async def job(core: Repository) -> Any:
            from syncengine.repo import distributed as dist

            return await dist.status(core, ref.project, ref.name, distributed_id)

        s = _run(repo_url, job)
        if as_json:
            echo(json.dumps(msgspec.to_builtins(s)))
            return
        state = s.state + (f" as {ref}:v{s.finished.version}" if s.finished is not None else "")
        echo(f"{ref} distributed id {distributed_id}: {state}, {plural(len(s.parts), 'part')}")
        for p in s.parts:
            who = ", ".join(x for x in (f"run {p.run}" if p.run else "", p.created_by.get("host", "")) if x)
            by = f" ({who})" if who else ""
            echo(shown(f"  {p.writer}: {plural(p.files, 'file')}, {format_size(p.size)}{by}"))


def _url(repo_url: str | None) -> str:
    from syncengine.cli.repo_commands import repo_location

    return repo_location(repo_url)
