"""The `syncengine` command: argv in, one-line errors and JSON or rich output out."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import click

from syncengine._version import __version__
from syncengine.cli.draft_command import register as register_draft_command
from syncengine.cli.init_command import register as register_init_command
from syncengine.cli.lifecycle_commands import register_lifecycle
from syncengine.cli.lineage_commands import register as register_lineage_commands
from syncengine.cli.output import echo
from syncengine.cli.params import SIZE, size
from syncengine.cli.progress import plural, progress_bar
from syncengine.cli.repo_commands import register as register_repo_commands
from syncengine.cli.repo_commands import register_more as register_more_repo_commands
from syncengine.cli.repo_commands import repo_location, repo_option, run_on_store
from syncengine.cli.watch_command import register as register_watch_command
from syncengine.errors import SyncEngineError
from syncengine.hashing import backend
from syncengine.hashing.digests import TreeDigest
from syncengine.hashing.params import DEFAULT_PARAMS, ChunkerParams
from syncengine.hashing.stat_cache import StatCache
from syncengine.hashing.tree import TreeHasher, TreeStats, sources_for
from syncengine.repo.records import InvalidName
from syncengine.scan import ScanWarning
from syncengine.units import format_duration, format_size


def implementation_label() -> str:
    if backend.IMPLEMENTATION == "native":
        return f"native core, BLAKE3 {backend.impl.blake3_impl()}"
    return "pure-Python reference"


def params_for(avg: int) -> ChunkerParams:
    """Chunker parameters around an average size: min = avg/4, max = 4*avg."""
    return ChunkerParams(avg // 4, avg, avg * 4)


def fail(message: str) -> NoReturn:
    echo(f"error: {message}", err=True)
    sys.exit(1)


def report_problems(stats: TreeStats) -> None:
    for w in stats.warnings:
        echo(f"warning: {w.message}", err=True)
    for path, msg in stats.errors:
        echo(f"error: {path}: {msg}", err=True)


def _warning_json(w: ScanWarning) -> dict[str, str]:
    return {"kind": w.kind.name.lower(), "path": w.path, "message": w.message}


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidName as e:  # a name or reference given on the command line: a usage error
            echo(f"error: {e}", err=True)
            sys.exit(2)
        except SyncEngineError as e:
            fail(str(e))
        except KeyboardInterrupt:
            # asyncio cancelled the work: a put let its pack uploads in flight finish and
            # journaled them; a get removed its temp files and kept the verified files.
            echo(
                "interrupted: nothing half-written was committed; run the same command again to "
                "continue (uploaded packs are journaled, downloaded files kept)",
                err=True,
            )
            sys.exit(130)
        except OSError as e:
            if e.errno == errno.EPIPE:  # the reader went away (`| head`): stop quietly, as Unix tools do
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(141)
            fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors, --help, ctx.exit(): click reports them with their own exit codes
        except Exception as e:  # a bug: one line, the traceback only when asked for
            if _debug():
                import traceback

                traceback.print_exc()
                fail(f"internal error: {_one_line(e)} (please report it with the traceback above)")
            fail(f"internal error: {_one_line(e)} (please report; SYNCENGINE_DEBUG=1 shows the traceback)")


def _debug() -> bool:
    """SYNCENGINE_DEBUG set (and not 0): internal errors show their traceback."""
    return os.environ.get("SYNCENGINE_DEBUG", "").strip() not in ("", "0")


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message=f"syncengine %(version)s ({implementation_label()})")
def cli() -> None:
    """Version directories of files in storage you own, and move them fast."""


_tree_options = [
    click.option("--include", multiple=True, help="Only files matching this glob (repeatable)."),
    click.option("--exclude", multiple=True, help="Leave out paths matching this glob (repeatable)."),
    click.option("--no-follow-symlinks", is_flag=True, help="Skip every symlink."),
    click.option(
        "--follow-symlinks",
        is_flag=True,
        help="Also follow symlinks that lead out of PATHS (skipped with a warning by default, as put does).",
    ),
    click.option(
        "--include-vcs", is_flag=True, help="Also read version-control folders (.git, .hg, .svn …)."
    ),
    click.option("--threads", type=click.IntRange(1, 256), default=None, help="Hashing threads [cores]."),
    click.option("--no-stat-cache", is_flag=True, help="Read every file even if unchanged."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
]


def tree_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_tree_options):
        f = opt(f)
    return f


def run_tree(
    paths: Sequence[str],
    params: ChunkerParams,
    opts: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> tuple[TreeHasher, Iterator[Any]]:
    cache = None if opts["no_stat_cache"] else StatCache(None, params.label)
    hasher = TreeHasher(
        params,
        threads=opts["threads"],
        stat_cache=cache,
        include=opts["include"],
        exclude=opts["exclude"],
        follow_symlinks=False
        if opts["no_follow_symlinks"]
        else True
        if opts["follow_symlinks"]
        else "within",
        include_vcs=opts["include_vcs"],
        on_progress=progress,
    )

    def results() -> Iterator[Any]:
        try:
            yield from hasher.hash(sources_for(paths))
        finally:
            if cache is not None:
                cache.close()

    return hasher, results()


@cli.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--avg-chunk-size", type=SIZE, default="1MiB", show_default=True, help="Average chunk size.")
@tree_options
def hash_cmd(paths: tuple[str, ...], avg_chunk_size: int, as_json: bool, **opts: Any) -> None:
    """Hash files and directories: files, bytes, tree digest, throughput."""
    params = params_for(avg_chunk_size)
    start = time.perf_counter()
    with progress_bar(not as_json) as progress:
        hasher, results = run_tree(paths, params, opts, progress)
        tree = TreeDigest()
        for h in results:
            tree.add(h.entry.path, h.digest.digest)
    seconds = time.perf_counter() - start
    st = hasher.stats
    if as_json:
        out = {
            "implementation": backend.IMPLEMENTATION,
            "files": st.files,
            "bytes": st.bytes,
            "tree_digest": tree.hexdigest(),
            "seconds": round(seconds, 6),
            "bytes_per_second": round(st.bytes / seconds, 1) if seconds > 0 else 0.0,
            "stat_cache": {"hits": st.cache_hits, "misses": st.cache_misses},
            "bytes_read": st.bytes_read,
            "chunker": params.label,
            "skipped": [_warning_json(w) for w in st.warnings],
            "errors": [{"path": p, "message": m} for p, m in st.errors],
        }
        echo(json.dumps(out))
        for path, msg in st.errors:
            echo(f"error: {path}: {msg}", err=True)
    else:
        report_problems(st)
        rate = format_size(st.bytes / seconds) + "/s" if seconds > 0 else "-"
        echo(
            f"{plural(st.files, 'file')}, {format_size(st.bytes)}, {format_duration(seconds)} ({rate}); "
            f"{st.cache_hits} unchanged, {format_size(st.bytes_read)} read"
        )
        echo(f"tree digest {tree.hexdigest()}")
    if st.errors:
        sys.exit(1)


def _repository_params(repo_url: str | None) -> tuple[ChunkerParams, str, str]:
    """The chunker parameters a put into the repository chunks with, whose they are
    (``repository`` or ``new repository``: the defaults, when there is no repository yet,
    which is not created), and the repository's location."""
    from syncengine.repo.repository import Repository

    found = run_on_store(repo_url, Repository.stored_params)
    url = repo_location(repo_url)
    return (DEFAULT_PARAMS, "new repository", url) if found is None else (found, "repository", url)


@cli.command("dedup-report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--chunk-sizes",
    default=None,
    help="Average chunk sizes to compare instead (comma-separated, e.g. 256KiB,1MiB,4MiB; "
    "each with min avg/4, max 4*avg) [the repository's chunker].",
)
@repo_option
@tree_options
def dedup_report(
    paths: tuple[str, ...], chunk_sizes: str | None, repo_url: str | None, as_json: bool, **opts: Any
) -> None:
    """How much whole-file and chunk dedup would save across PATHS (e.g. checkpoint folders).

    Chunks as `put` into the repository would (its chunker parameters; a new repository's
    when there is none yet), or with each of --chunk-sizes. Inputs are taken in the order
    given; `per_input` shows what each adds beyond the ones before.
    """
    report: dict[str, Any] = {"inputs": list(paths), "settings": []}
    if chunk_sizes is None:
        repo_params, source, url = _repository_params(repo_url)
        chunkers = [repo_params]
        report.update(chunker_source=source, repo=url)
    else:
        chunkers = [params_for(size(s, "--chunk-sizes")) for s in chunk_sizes.split(",") if s.strip()]
        if not chunkers:
            raise click.BadParameter("give at least one chunk size", param_hint="--chunk-sizes")
        report.update(chunker_source="chunk-sizes", repo=None)
    problems = TreeStats()
    with progress_bar(not as_json) as progress:
        for params in chunkers:
            avg = params.avg_size
            files_seen: set[bytes] = set()
            blobs_seen: set[bytes] = set()
            setting: dict[str, Any] = {
                "chunker": params.label,
                "min_chunk_size": params.min_size,
                "avg_chunk_size": avg,
                "max_chunk_size": params.max_size,
                "per_input": [],
            }
            total = file_unique = chunk_unique = files = blobs = 0
            for path in paths:
                hasher, results = run_tree([path], params, opts, progress)
                in_total = in_new = 0
                for h in results:
                    d = h.digest
                    files += 1
                    in_total += d.size
                    if d.digest not in files_seen:
                        files_seen.add(d.digest)
                        file_unique += d.size
                    for digest, length in (
                        ((c.digest, c.length) for c in d.chunks) if d.chunks else ((d.digest, d.size),)
                    ):
                        blobs += 1
                        if digest not in blobs_seen:
                            blobs_seen.add(digest)
                            chunk_unique += length
                            in_new += length
                total += in_total
                setting["per_input"].append({"path": path, "bytes": in_total, "new_bytes": in_new})
                if params is chunkers[0]:
                    problems.warnings += hasher.stats.warnings
                    problems.errors += hasher.stats.errors
            setting.update(
                files=files, blobs=blobs, unique_blobs=len(blobs_seen), chunk_unique_bytes=chunk_unique
            )
            report["settings"].append(setting)
            report.update(total_bytes=total, file_unique_bytes=file_unique)
    if as_json:
        echo(json.dumps(report))
    else:
        report_problems(problems)
        total = report["total_bytes"]

        def pct(n: int) -> str:
            return f"{100 * (1 - n / total):.1f}% saved" if total else "-"

        echo(f"{plural(len(paths), 'input')}, {format_size(total)} in all")
        if report["chunker_source"] == "repository":
            echo(f"  chunker {chunkers[0].label}: the repository's ({report['repo']})")
        elif report["chunker_source"] == "new repository":
            echo(f"  chunker {chunkers[0].label}: a new repository's (none at {report['repo']} yet)")
        echo(
            f"  whole-file dedup: {format_size(report['file_unique_bytes'])} unique "
            f"({pct(report['file_unique_bytes'])})"
        )
        for s in report["settings"]:
            echo(
                f"  chunks ~{format_size(s['avg_chunk_size'])}: "
                f"{format_size(s['chunk_unique_bytes'])} unique ({pct(s['chunk_unique_bytes'])}), "
                f"{plural(s['unique_blobs'], 'blob')}"
            )
        first = report["settings"][0]
        echo(f"  added by each input (chunks ~{format_size(first['avg_chunk_size'])}):")
        for row in first["per_input"]:
            echo(f"    {row['path']}: {format_size(row['new_bytes'])} new of {format_size(row['bytes'])}")
    if problems.errors:
        sys.exit(1)


register_init_command(cli)
register_repo_commands(cli)
register_more_repo_commands(cli)
register_lineage_commands(cli)
register_draft_command(cli)
register_lifecycle(cli)
register_watch_command(cli)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `syncengine` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli.main(args=list(argv) if argv is not None else None, prog_name="syncengine")
