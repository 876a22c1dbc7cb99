"""Names, references and the small records of artifacts: version records and the artifact head.

Validation lives here so every entry point (API, CLI, records read back from storage) applies
the same rules and says the same thing when a name is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from syncengine.errors import ConfigError
from syncengine.hashing.params import GEAR_SEED, ChunkerParams
from syncengine.repo import object_caps as caps
from syncengine.repo.pack import CorruptData

FORMAT: Final = 1
#: Bytes of blobs per pack (a repository's config may say otherwise).
PACK_TARGET: Final = 32 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION = re.compile(r"v(0|[1-9][0-9]{0,9})")
#: How deep metadata, configs and summaries may nest (lists and objects), on write and read:
#: deeper JSON makes msgspec's decoder raise RecursionError near 1,000 levels, and no
#: real metadata comes close.
MAX_DEPTH: Final = 100
#: The key of a content-addressed object as its writers name it: kind/first two hex digits/BLAKE3 hex.
_OBJECT_KEY = re.compile(r"(data|manifests)/([0-9a-f]{2})/\2[0-9a-f]{62}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
#: The alias each newly logged version gets (as in W&B); users may pass, move or remove it
#: like any other (docs/FORMAT.md "Artifact head").
LATEST: Final = "latest"


class InvalidName(ConfigError):
    """A project, artifact, type, alias or tag name breaks the naming rules."""


def check_name(kind: str, value: str) -> str:
    """Projects, artifact names and types: letters, digits, `.`, `_`, `-`; 1-128 characters,
    starting with a letter or digit."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_alias(alias: str) -> str:
    """Aliases name one version at a time: no `/` or `:`, and not `vN` (which names versions).
    `latest` is an alias too: given to each new version, and movable or removable by users."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-128 letters, digits, '.', '_' or '-' (no '/' or ':'), "
            "starting with a letter or digit"
        )
    if re.fullmatch(r"v[0-9]+", alias):
        raise InvalidName(f"invalid alias {alias!r}: names of the form vN are the versions themselves")
    return alias


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidName(f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return tag


def object_key_kind(key: str) -> str | None:
    """``data`` or ``manifests`` for the key of a pack or manifest object named as writers name
    them, else None (what a record may point at, and all a gc sweep may delete)."""
    m = _OBJECT_KEY.fullmatch(key)
    return m[1] if m else None


def json_depth(value: object) -> int:
    """How many lists and objects nest in a decoded JSON value (iterative: any depth)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list | tuple):
            deepest = max(deepest, d + 1)
            stack.extend((x, d + 1) for x in v)
    return deepest


def json_copy(value: dict[str, Any], kind: str = "metadata") -> dict[str, Any]:
    """A deep copy of `value` as JSON stores it (the one rule for metadata, configs and
    summaries); ``ConfigError`` if it is not JSON or nests deeper than ``MAX_DEPTH``."""
    if json_depth(value) > MAX_DEPTH:
        raise ConfigError(f"{kind} nests deeper than {MAX_DEPTH} levels")
    try:
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as e:
        raise ConfigError(f"{kind} must be JSON-serialisable: {e}") from e
    return out


def decode_json(data: bytes, kind: type[Any], key: str) -> Any:
    """`data` as a record of type `kind`, or ``CorruptData`` naming `key`: bytes that are not
    such a record, or JSON nested deeper than ``MAX_DEPTH`` (never a RecursionError)."""
    try:
        out = msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise CorruptData(f"{key} is damaged and cannot be read ({e}); run `syncengine check`") from None
    except RecursionError:
        out = None
    if out is None or json_depth(msgspec.to_builtins(out)) > MAX_DEPTH + 2:  # + the record's own
        raise CorruptData(f"{key} nests deeper than {MAX_DEPTH} levels; run `syncengine check`")
    return out


class ArtifactRef(msgspec.Struct, frozen=True):
    """`project/name`, optionally `:alias` or `:vN`."""

    project: str
    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.project}/{self.name}"

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.full_name}:v{self.version}"
        return f"{self.full_name}:{self.alias}" if self.alias else self.full_name


def parse_ref(text: str, *, default_project: str | None = None) -> ArtifactRef:
    """Parses `project/name[:alias|:vN]` (or `name[...]` with a default project).

    >>> parse_ref("vision/mnist:v3").version
    3
    >>> parse_ref("vision/mnist:best").alias
    'best'
    """
    head, sep, selector = text.partition(":")
    if sep and not selector:
        raise InvalidName(f"invalid reference {text!r}: nothing after ':' (use name:alias or name:vN)")
    parts = head.split("/")
    if len(parts) == 1 and default_project is not None:
        parts = [default_project, parts[0]]
    if len(parts) != 2:
        raise InvalidName(f"invalid reference {text!r}: expected PROJECT/NAME[:ALIAS|:vN]")
    project, name = check_name("project", parts[0]), check_name("artifact name", parts[1])
    if not sep:
        return ArtifactRef(project, name)
    if _VERSION.fullmatch(selector):
        return ArtifactRef(project, name, version=int(selector[1:]))
    return ArtifactRef(project, name, alias=check_alias(selector))


class RepoConfig(msgspec.Struct, frozen=True):
    """The repository's `config` object (docs/FORMAT.md)."""

    format: int
    id: str
    hash: str
    chunker: dict[str, int]
    pack_target: int = PACK_TARGET

    @property
    def params(self) -> ChunkerParams:
        c = self.chunker
        if c.get("seed", GEAR_SEED) != GEAR_SEED:
            raise ConfigError("this repository uses a gear seed this version of syncengine does not know")
        return ChunkerParams(c["min"], c["avg"], c["max"])


class VersionRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`artifacts/<project>/<name>/versions/v<N>`: created once (create-if-absent); the
    mutable fields are updated by compare-and-swap on the object's ETag."""

    format: int
    project: str
    name: str
    version: int
    type: str
    manifest: str  # key of the manifest record
    content_digest: str  # hex, TreeDigest of (path, digest)
    files: int
    size: int
    created: str  # RFC 3339 UTC
    created_by: dict[str, str] = {}
    description: str = ""
    metadata: dict[str, object] = {}
    tags: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    deleted: bool = False
    # Set at creation, never changed (docs/LINEAGE.md): the run that created this version
    # ("project/run-id"), and for a version of a collection, the version it links to
    # ("project/name:vN"; the record shares that version's manifest).
    logged_by: str = ""
    linked_from: str = ""


class ArtifactHead(msgspec.Struct, frozen=True, omit_defaults=True):
    """`artifacts/<project>/<name>/head`: type, newest version, aliases, and content digests of
    the versions (so identical content finds its version); updated by compare-and-swap."""

    format: int
    project: str
    name: str
    type: str
    latest: int | None = None
    aliases: dict[str, int] = {}
    digests: dict[str, int] = {}
    #: The highest version number ever created, kept only while it is above ``latest`` (the
    #: newest versions were deleted): new versions are numbered above it (docs/DELETION.md).
    highest: int | None = None
    #: True in heads written since the alias `latest` is an ordinary one: ``aliases`` says
    #: which version holds it, and none may. Absent in older heads, where `latest` named
    #: version ``latest`` implicitly; `decode_head` gives those the alias.
    latest_in_aliases: bool = False

    def aliases_of(self, version: int) -> list[str]:
        """The aliases naming ``version``, sorted (what every command shows as a version's
        aliases). `latest` is among them only where it is held: a head read through
        `decode_head` holds it as an alias (older heads are given it on the newest version)."""
        return sorted(a for a, v in self.aliases.items() if v == version)


_encode = msgspec.json.Encoder(order="sorted").encode


def encode_record(record: VersionRecord | ArtifactHead) -> bytes:
    """Records are JSON (sorted keys): small, and readable with any tool. ``ConfigError`` for
    one larger than readers accept (``object_caps``): a version's metadata over 1 MiB, a
    record over 4 MiB, a head over 64 MiB."""
    where = f"{record.project}/{record.name}"
    if isinstance(record, ArtifactHead):
        return caps.writable(f"the head of {where}", _encode(record), caps.HEAD)
    caps.writable(f"the metadata of {where}:v{record.version}", _encode(record.metadata), caps.METADATA)
    return caps.writable(f"the record of {where}:v{record.version}", _encode(record), caps.VERSION_RECORD)


def _check_stored_names(
    key: str, project: str, name: str, type: str, tags: Iterable[str] = (), aliases: Iterable[str] = ()
) -> None:
    """The names a record read from `key` holds pass the rules a writer's pass (else
    ``CorruptData`` naming the key): a stored name reaches paths and terminals."""
    try:
        check_name("project", project)
        check_name("artifact name", name)
        check_name("type", type)
        for t in tags:
            check_tag(t)
        for a in aliases:
            check_alias(a)
    except InvalidName as e:
        raise CorruptData(f"{key}: {e}") from None


def decode_version(data: bytes, key: str = "a version record") -> VersionRecord:
    """Raises ``CorruptData`` naming ``key`` when the stored bytes are not a valid record: not
    a record, names that no writer accepts, a manifest pointer that is no manifest object,
    or (read from an ``artifacts/`` key) a record of another version than the key names."""
    r: VersionRecord = decode_json(data, VersionRecord, key)
    _check_stored_names(key, r.project, r.name, r.type, tags=r.tags)
    if not 0 <= r.version < 10**10:
        raise CorruptData(f"{key}: version {r.version} is out of range")
    if object_key_kind(r.manifest) != "manifests" or not _HEX_DIGEST.fullmatch(r.content_digest):
        raise CorruptData(f"{key}: its manifest pointer or content digest is malformed")
    if key.startswith("artifacts/") and key != version_key(r.project, r.name, r.version):
        raise CorruptData(f"{key} holds the record of {r.project}/{r.name}:v{r.version}, not its own")
    return r


def decode_head(data: bytes, key: str = "an artifact head") -> ArtifactHead:
    """Raises ``CorruptData`` naming ``key`` when the stored bytes are not a valid head. A head
    written before `latest` was an ordinary alias reads with it in ``aliases`` (on version
    ``latest``, where it was implied), so every reader sees one form."""
    head: ArtifactHead = decode_json(data, ArtifactHead, key)
    _check_stored_names(key, head.project, head.name, head.type, aliases=head.aliases)
    if key.startswith("artifacts/") and key != head_key(head.project, head.name):
        raise CorruptData(f"{key} holds the head of {head.project}/{head.name}, not its own")
    if head.latest_in_aliases:
        return head
    implied = {LATEST: head.latest} if head.latest is not None else {}
    return msgspec.structs.replace(head, aliases={**head.aliases, **implied}, latest_in_aliases=True)


def version_key(project: str, name: str, version: int) -> str:
    return f"artifacts/{project}/{name}/versions/v{version}"


def head_key(project: str, name: str) -> str:
    return f"artifacts/{project}/{name}/head"
