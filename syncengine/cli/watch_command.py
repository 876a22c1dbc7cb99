"""`syncengine watch`: the checkpoint watch daemon in the foreground, one log line per event."""

from __future__ import annotations

import json
import sys

import click

from syncengine.cli.params import DURATION
from syncengine.cli.repo_commands import repo_location, repo_option


def register(cli: click.Group) -> None:
    @cli.command("watch")
    @click.argument("directory", type=click.Path(file_okay=False))
    @click.option(
        "-n", "--name", "artifact", required=True, metavar="PROJECT/NAME", help="Artifact to log into."
    )
    @click.option("-t", "--type", "type_", default="model", show_default=True, help="Artifact type.")
    @click.option(
        "--settle",
        type=DURATION,
        default="30s",
        show_default=True,
        help="Quiet time that makes a checkpoint final.",
    )
    @click.option(
        "--pattern", default="*", show_default=True, help="Glob of the top-level names that are checkpoints."
    )
    @click.option(
        "--mode",
        type=click.Choice(["versions", "files"]),
        default="versions",
        show_default=True,
        help="A version per checkpoint, or one growing file set (a draft per checkpoint).",
    )
    @click.option(
        "--keep-last", type=click.IntRange(1), default=None, help="Delete older unaliased versions."
    )
    @click.option(
        "--alias-best", metavar="METRIC", default=None, help="Point alias 'best' at the best value of METRIC."
    )
    @click.option("--best-mode", type=click.Choice(["min", "max"]), default="min", show_default=True)
    @click.option("--skip-intermediate", is_flag=True, help="When several wait, log only the newest.")
    @click.option("--rescan", type=DURATION, default="60s", show_default=True, help="Full rescan interval.")
    @click.option(
        "--stop-timeout",
        type=DURATION,
        default="30s",
        show_default=True,
        help="On SIGTERM/SIGINT, how long the current upload may take to finish.",
    )
    @click.option("--force-polling", is_flag=True, help="Poll instead of inotify (network file systems).")
    @click.option("--log-json", is_flag=True, help="One JSON object per line.")
    @repo_option
    def watch(
        directory: str,
        artifact: str,
        type_: str,
        settle: float,
        pattern: str,
        mode: str,
        keep_last: int | None,
        alias_best: str | None,
        best_mode: str,
        skip_intermediate: bool,
        rescan: float,
        stop_timeout: float,
        force_polling: bool,
        log_json: bool,
        repo_url: str | None,
    ) -> None:
        """Log each finished checkpoint in DIRECTORY as a version of PROJECT/NAME (docs/WATCH.md).

        A checkpoint is a top-level file or folder matching --pattern; it is logged once it
        has not changed for --settle, or at once when its completion marker appears. Runs
        until SIGTERM or SIGINT, then exits 0."""
        from syncengine.watch import Watcher, WatchEvent

        url = repo_location(repo_url)
        endpoint = click.get_current_context().find_root().meta.get("endpoint_url")

        def log(e: WatchEvent) -> None:
            line = json.dumps(e.to_json()) if log_json else e.to_text()
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        watcher = Watcher(
            directory,
            artifact,
            type_,
            repo=url,
            endpoint_url=endpoint,
            settle=settle,
            pattern=pattern,
            mode=mode,
            keep_last=keep_last,
            alias_best=alias_best,
            best_mode=best_mode,
            skip_intermediate=skip_intermediate,
            rescan=rescan,
            stop_timeout=stop_timeout,
            force_polling=force_polling,
            on_event=log,
            keep_events=0,
        )
        watcher.run(handle_signals=True)
