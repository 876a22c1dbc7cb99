"""Collections: a version linked into a second, curated artifact (a registry) without copying data.

A link is an ordinary version record of the collection — its own vN there, its own aliases —
whose ``manifest`` is the source version's manifest and whose ``linked_from`` names the
source. Downloads, diffs and GC treat it as any version: the blobs it names are the source's,
so they stay live while either is live, and unlinking one never touches the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from syncengine.errors import ConfigError, ObjectNotFound, PreconditionFailed, SyncEngineError
from syncengine.repo import object_caps as caps
from syncengine.repo.manifest import decode_manifest
from syncengine.repo.records import LATEST, ArtifactHead, VersionRecord, check_alias, check_name, parse_ref
from syncengine.repo.runs import Edge, encode_edge, linked_as_key, links_of, now

if TYPE_CHECKING:
    from syncengine.repo.repository import Repository


class NotALink(ConfigError):
    """`unlink` was asked of a version that is not a link in a collection."""


def ref_of(v: VersionRecord) -> str:
    return f"{v.project}/{v.name}:v{v.version}"


async def source_of(repo: Repository, version: VersionRecord) -> VersionRecord:
    """The version a link points at (a version that is not a link is its own source)."""
    if not version.linked_from:
        return version
    ref = parse_ref(version.linked_from)
    assert ref.version is not None
    return await repo.version(ref.project, ref.name, ref.version)


def parse_collection(text: str) -> tuple[str, str]:
    """`PROJECT/COLLECTION` (no version or alias)."""
    ref = parse_ref(text)
    if ref.version is not None or ref.alias is not None:
        raise ConfigError(f"link target {text!r} names a version: give PROJECT/COLLECTION only")
    return ref.project, ref.name


async def link(
    repo: Repository, version: VersionRecord, project: str, name: str, aliases: Sequence[str] = ()
) -> tuple[VersionRecord, bool]:
    """Links ``version`` (or, for a link, its source) into ``project/name`` and points
    ``aliases`` at the link. Linking content the collection already holds returns that
    version (aliases still applied). Returns (the link's record, whether it was created)."""
    check_name("project", project)
    check_name("artifact name", name)
    wanted = [check_alias(a) for a in dict.fromkeys(aliases)]
    source = await source_of(repo, version)
    if source.deleted:
        raise ConfigError(f"{ref_of(source)} is deleted and cannot be linked")
    if (source.project, source.name) == (project, name):
        raise ConfigError(f"{ref_of(source)} is already in {project}/{name}; link it into another collection")
    manifest = decode_manifest(await repo.store.get(source.manifest, max_bytes=caps.MANIFEST_RECORD))
    committed = await repo._commit(
        project,
        name,
        source.type,
        source.content_digest,
        manifest,
        source.manifest,
        wanted,
        source.description,
        dict(source.metadata),
        (),
        fields={"linked_from": ref_of(source)},
    )
    assert committed is not None
    record, created = committed
    if record.linked_from:  # (identical content already in the collection may be a plain version)
        with contextlib.suppress(PreconditionFailed):  # marked before (linking again is idempotent)
            await repo.store.put(
                linked_as_key(await source_of(repo, record), record),
                encode_edge(Edge(1, now())),
                if_none_match=True,
            )
    return record, created


async def unlink(repo: Repository, version: VersionRecord, *, dry_run: bool = False) -> VersionRecord:
    """Removes a link from its collection: the link's record is marked deleted (it keeps its
    number, which is never reused), its aliases are dropped, ``latest`` moves to the newest
    live version below it. The source version and its data are untouched. ``dry_run``
    checks that ``version`` is a link and writes nothing."""
    if not version.linked_from:
        raise NotALink(
            f"{ref_of(version)} is not a link into a collection; only links can be unlinked "
            "(`syncengine delete` deletes a version)"
        )
    if dry_run:
        return version
    project, name, number = version.project, version.name, version.version
    new = await repo.update_version(project, name, number, lambda r: msgspec.structs.replace(r, deleted=True))
    below = [v for v in await repo.versions(project, name) if v.version < number and not v.deleted]
    fallback = below[-1].version if below else None

    def change(head: ArtifactHead) -> ArtifactHead:
        aliases = {a: n for a, n in head.aliases.items() if n != number}
        if head.aliases.get(LATEST) == number and fallback is not None:
            aliases[LATEST] = fallback  # the alias goes where a deletion would move it
        digests = {d: n for d, n in head.digests.items() if n != number}
        latest = fallback if head.latest == number else head.latest
        return msgspec.structs.replace(head, aliases=aliases, digests=digests, latest=latest)

    await repo.update_head(project, name, change)
    with contextlib.suppress(ObjectNotFound, LookupError):  # the source may be deleted since
        source = await source_of(repo, version)
        await repo.store.delete([linked_as_key(source, version)])
    return new


async def links_of_json(repo: Repository, source: VersionRecord) -> list[str]:
    """`project/collection:vN` of the live links to ``source``."""
    out = []
    for project, name, number in await links_of(repo.store, source):
        with contextlib.suppress(SyncEngineError):  # a link whose record is gone is no link
            v = await repo.version(project, name, number)
            if not v.deleted and v.linked_from == ref_of(source):
                out.append(ref_of(v))
    return out
