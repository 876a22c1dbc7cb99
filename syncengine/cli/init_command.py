"""`syncengine init`: create a repository, or check one that exists, so that no other tool is
needed first (a folder and its config; for S3 the access, the config and, with
``--create-bucket``, the bucket itself)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from syncengine.cli.output import echo
from syncengine.cli.repo_commands import json_option, repo_location, repo_option
from syncengine.repo.object_caps import CONFIG


def register(cli: click.Group) -> None:
    @cli.command("init")
    @click.argument("repo", required=False)
    @click.option(
        "--create-bucket",
        is_flag=True,
        help="For s3://BUCKET/PREFIX: create the bucket if it does not exist (in the AWS region).",
    )
    @repo_option
    @json_option
    def init(repo: str | None, create_bucket: bool, repo_url: str | None, as_json: bool) -> None:
        """Create the repository REPO (a folder, or s3://BUCKET/PREFIX) [--repo], or check the
        one there: it can be read and its config is one this syncengine reads. Running it
        again changes nothing."""
        if repo is not None and repo_url is not None and repo != repo_url:
            raise click.UsageError(f"two repositories given: REPO {repo!r} and --repo {repo_url!r}")
        url = repo_location(repo or repo_url)
        report = _init(url, create_bucket)
        if as_json:
            echo(json.dumps(report))
            return
        if report["bucket_created"]:
            echo(f"created bucket {report['bucket']!r} (region {report['region']})")
        state = "created" if report["created"] else "checked"
        c = report["chunker"]
        echo(
            f"{state} repository {url} (id {report['id']}, format {report['format']}, "
            f"chunks {c['min']}–{c['max']} bytes, average {c['avg']})"
        )


def _init(url: str, create_bucket: bool) -> dict[str, Any]:
    from syncengine.errors import BucketNotFound, ObjectNotFound
    from syncengine.repo.repository import Repository
    from syncengine.store import local_path, open_store

    root = local_path(url)
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        raise click.BadParameter(f"{root} is a file, not a folder", param_hint="REPO")
    if root is None and not url.startswith("s3://"):
        open_store(url)  # raises the usual error for an unsupported scheme
    if create_bucket and root is not None:
        raise click.UsageError("--create-bucket is for s3:// repositories")
    endpoint = click.get_current_context().find_root().meta.get("endpoint_url")

    async def go() -> dict[str, Any]:
        async with open_store(url, endpoint_url=endpoint) as store:
            bucket_created: bool | None = None
            try:
                # reading it first checks access (and the bucket)
                await store.get("config", max_bytes=CONFIG)
                existed = True
            except BucketNotFound:
                if not create_bucket:
                    raise
                from syncengine.store.s3 import S3Store

                assert isinstance(store, S3Store)
                bucket_created = await store.create_bucket()
                existed = False
            except ObjectNotFound:
                existed = False
            if root is not None:
                os.makedirs(root, exist_ok=True)
            repo = await Repository.open(store, create=True)
            cfg = repo.config
            out: dict[str, Any] = {
                "repo": url,
                "created": not existed,
                "id": cfg.id,
                "format": cfg.format,
                "hash": cfg.hash,
                "chunker": {k: v for k, v in cfg.chunker.items() if k in ("min", "avg", "max")},
            }
            out["bucket_created"] = bool(bucket_created)
            if root is None:
                from syncengine.store.s3 import S3Store

                assert isinstance(store, S3Store)
                out.update(bucket=store.bucket, region=store.region, endpoint=store.endpoint)
            return out

    from syncengine._loop import run

    return run(go())
