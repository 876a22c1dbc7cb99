"""CLI pieces for references: `put --reference [NAME=]URI`, `--allow-secret-urls`,
`--trust-references` (get, verify) and `show --files`."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from syncengine.cli.output import echo
from syncengine.terminal_text import shown
from syncengine.units import format_size

if TYPE_CHECKING:  # the repository stack loads only when a command runs
    from syncengine.repo.records import ArtifactRef
    from syncengine.repo.references import Reference
    from syncengine.repo.repository import Repository

# NAME=URI: URIs may hold '=' themselves (query strings), so the name comes first, and a
# value is split only where what follows the first '=' starts with a scheme.
_NAMED = re.compile(r"([^=]*)=([A-Za-z][A-Za-z0-9+.-]*://.*)\Z", re.DOTALL)


def split_reference(value: str) -> tuple[str, str | None]:
    """``"NAME=URI"`` → (URI, NAME); a plain URI → (URI, None).

    >>> split_reference("imgs=s3://b/images/")
    ('s3://b/images/', 'imgs')
    >>> split_reference("https://h/f?a=b")
    ('https://h/f?a=b', None)
    """
    m = _NAMED.match(value)
    if m is None or "://" in m.group(1):
        return value, None
    return m.group(2), m.group(1) or None


#: `get` and `verify --references`: fetch (look at) this repository's references. Unset, the
#: repository must be named in SYNCENGINE_TRUST_REFERENCES (docs/REFERENCES.md "Trust").
trust_references_option = click.option(
    "--trust-references",
    is_flag=True,
    default=None,
    help="Fetch the version's references (external URLs and files) even if this repository is "
    "not in SYNCENGINE_TRUST_REFERENCES: whoever can write it chooses what they name.",
)


def reference_options(
    values: Sequence[str], *, checksum: bool, max_objects: int | None, allow_secret_urls: bool = False
) -> list[Reference]:
    if not values:
        return []
    from syncengine.errors import ConfigError
    from syncengine.repo.references import Reference

    out = []
    for v in values:
        uri, name = split_reference(v)
        try:
            out.append(Reference.parse(uri, name, checksum, max_objects, allow_secret_urls))
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--reference") from None
    return out


def show_files(
    run: Callable[[Callable[[Repository], Awaitable[Any]]], Any], ref: ArtifactRef, as_json: bool
) -> None:
    """Prints a version's entries: ``path  size`` for stored files, ``path  size  -> URI`` for
    references (with --json: one object with the entries, references' metadata included).
    A URI is printed as `masked_uri` gives it: user info and query values masked, in JSON
    too (and, as text, with `shown`'s escapes)."""
    from syncengine.repo.references import masked_uri

    async def job(repo: Repository) -> tuple[str, list[dict[str, Any]]]:
        record = await repo.resolve(ref)
        rows = []
        async for e in (await repo.manifest(record)).entries():
            row: dict[str, Any] = {"path": e.path, "size": e.size, "digest": e.digest.hex()}
            if e.ref is not None:
                row["ref"] = masked_uri(e.ref)
                row["extra"] = e.extra or {}
            rows.append(row)
        return f"{record.project}/{record.name}:v{record.version}", rows

    name, rows = run(job)
    if as_json:
        echo(json.dumps({"ref": name, "files": rows}))
        return
    for r in rows:
        echo(
            f"{shown(r['path'])}  {format_size(r['size'])}"
            + (f"  -> {shown(r['ref'])}" if "ref" in r else "")
        )
