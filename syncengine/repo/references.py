"""References to external objects: manifest entries that name an object by URI instead of storing it.

`artifact.add_reference(uri)` logs only metadata — S3 objects (``s3://bucket/key`` or a whole
``s3://bucket/prefix/``), local files and folders (``file:///abs/path``) and HTTP(S) URLs —
and a download fetches each from its source and checks it is still what was logged.

An entry for a reference has ``ref`` = the object's URI, ``size``, ``chunks`` = (), ``extra`` =
what identifies that state of the object (see `EXTRA` below) and ``digest`` = the
*reference digest* over (URI, size, extra), so the version's content digest — the tree digest
of (path, digest) pairs — changes exactly when a reference's object or URI does
(docs/REFERENCES.md, docs/FORMAT.md "References").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import stat
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, urlsplit

import blake3 as _blake3
import msgspec

from syncengine.errors import (
    ConfigError,
    ObjectNotFound,
    ReferenceChanged,
    ReferenceNotFound,
    ReferencesNotTrusted,
    SyncEngineError,
    TooManyObjects,
)
from syncengine.hashing import backend
from syncengine.hashing.params import ChunkerParams
from syncengine.repo.manifest import RENAMED_EXTRA, ManifestEntry, ManifestError

if TYPE_CHECKING:
    import aiohttp

    from syncengine.repo.download import DownloadResult
    from syncengine.repo.repository import Repository
    from syncengine.store.base import ObjectStore
    from syncengine.store.s3 import S3Store

#: Key of the reference digest: BLAKE3 of this ASCII string (docs/FORMAT.md).
REF_KEY: Final = _blake3.blake3(b"syncengine reference digest v1").digest()
#: A folder or prefix expands to at most this many entries unless `max_objects` says otherwise
#: (W&B's default); more is an error, never a silent truncation.
DEFAULT_MAX_OBJECTS: Final = 10_000
#: Mode bits recorded for a reference (the source's own are not carried over).
REF_MODE: Final = 0o644
#: Requests at once while expanding a versioned prefix or fetching references.
CONCURRENCY: Final = 16
#: References fetched and then made durable together (one syncfs) at a time.
FETCH_BATCH: Final = 1024
#: Objects up to this size are gathered in memory and written with one worker-thread hop.
SMALL_OBJECT: Final = 1 << 20
#: `extra` keys, per scheme: s3 `etag`, `versionID` (versioned buckets; W&B's names); file `mtime_ns`,
#: `blake3` (hex file digest, with checksum); http(s) `etag`, `last_modified` (when sent).
EXTRA: Final = {
    "s3": ("etag", "versionID"),
    "file": ("mtime_ns", "blake3"),
    "http": ("etag", "last_modified"),
}
SCHEMES: Final = ("s3", "file", "http", "https")
#: Repositories whose references `get` and `verify --references` may fetch or look at without
#: being told each time: a comma-separated list of repository locations (a folder, or
#: ``s3://BUCKET[/PREFIX]``; each also covers what is below it), or ``*`` for all.
TRUST_ENV: Final = "SYNCENGINE_TRUST_REFERENCES"
#: When set, ``file://`` references are read only from below these folders (comma-separated;
#: symlinks resolved on both sides), even from a trusted repository.
FILE_ROOTS_ENV: Final = "SYNCENGINE_REFERENCE_FILE_ROOTS"
#: Query parameter names (lower case, letters and digits only) that carry a credential:
#: Azure SAS (``sig``), API keys (``key``), OAuth codes; the rest are found by `SECRET_WORDS`.
SECRET_PARAMS: Final = frozenset({"sig", "key", "auth", "authorization", "code"})
#: ... and the words that make any parameter name one (``access_token``, ``X-Amz-Signature``,
#: ``X-Amz-Security-Token``, ``X-Goog-Credential``, ``api_key``, ``client_secret``).
SECRET_WORDS: Final = (
    "token",
    "signature",
    "secret",
    "password",
    "passwd",
    "credential",
    "apikey",
    "accesskey",
)

_encode = msgspec.msgpack.Encoder(order="deterministic").encode


@dataclass(frozen=True)
class Reference:
    """A reference asked for by `Artifact.add_reference`, resolved when the version is logged."""

    uri: str
    name: str | None = None
    checksum: bool = True
    max_objects: int | None = None

    @classmethod
    def parse(
        cls,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
        allow_secret_url: bool = False,
    ) -> Reference:
        """Checks the URI's form (no I/O); raises ConfigError naming what is wrong. A URL that
        carries a credential (`secrets_in`) is refused unless ``allow_secret_url``: the URI is
        stored as given in a manifest everyone who can read the repository reads."""
        if not isinstance(uri, str) or "://" not in uri:
            raise ConfigError(
                f"reference {masked_uri(str(uri))!r} is no URI; use s3://BUCKET/KEY, file:///PATH or https://…"
            )
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise ConfigError(
                f"reference {masked_uri(uri)!r}: unsupported scheme {scheme!r} (use s3, file, http or https)"
            )
        secrets = secrets_in(uri)
        if secrets and not allow_secret_url:
            raise ConfigError(
                f"reference {masked_uri(uri)!r} carries a credential ({', '.join(secrets)}), which would be "
                "stored in the shared manifest for every reader of the repository; log a URL without "
                "it, or pass allow_secret_url=True (CLI: --allow-secret-urls) to store it anyway"
            )
        parts = urlsplit(uri)
        if scheme == "s3" and not parts.netloc:
            raise ConfigError(
                f"reference {masked_uri(uri)!r} names no bucket; write s3://BUCKET/KEY or s3://BUCKET/PREFIX/"
            )
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(
                    f"reference {masked_uri(uri)!r}: file URLs on other hosts are not supported"
                )
            if not unquote(parts.path).startswith("/"):
                raise ConfigError(
                    f"reference {masked_uri(uri)!r}: a file URL needs an absolute path (file:///…)"
                )
        if scheme in ("http", "https") and not parts.netloc:
            raise ConfigError(f"reference {masked_uri(uri)!r} names no host")
        if max_objects is not None and (not isinstance(max_objects, int) or max_objects < 1):
            raise ConfigError(f"max_objects must be a positive integer, not {max_objects!r}")
        if name is not None:
            name = name.strip("/")
            if name:
                _check_path(name, uri)
        return cls(uri, name or None, bool(checksum), max_objects)


# -- URLs that carry credentials -------------------------------------------------------------


def _http_parts(uri: str) -> tuple[str, str, str, str, str] | None:
    """(scheme, authority, path, query, fragment) of an http(s) URL, split by hand so that
    `shown` changes nothing else in it; None for other schemes (an S3 key may hold '?')."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    return scheme, authority, slash + path, query, fragment


def _secret_name(name: str) -> bool:
    plain = re.sub(r"[^a-z0-9]", "", unquote(name).lower())
    return plain in SECRET_PARAMS or any(w in plain for w in SECRET_WORDS)


def secrets_in(uri: str) -> list[str]:
    """What in an http(s) URL looks like a credential: user info (``user:pass@host``) and
    query parameters named like `SECRET_PARAMS` / `SECRET_WORDS`.

    >>> secrets_in("https://u:p@h/f?X-Amz-Signature=ab&v=2")
    ['user info', 'X-Amz-Signature']
    """
    parts = _http_parts(uri)
    if parts is None:
        return []
    found = ["user info"] if "@" in parts[1] else []
    for item in parts[3].split("&"):
        name = item.split("=", 1)[0]
        if name and _secret_name(name) and name not in found:
            found.append(name)
    return found


def masked_uri(uri: str | None) -> str:
    """The URI as printed (CLI output, error messages): the user info and every query value of
    an http(s) URL replaced by ``***`` — a name alone says what the URL is, its values may be
    credentials nobody recognised. The manifest and the API keep the URI as logged.

    >>> masked_uri("https://u:p@h/f.bin?token=abc&v=2#x")
    'https://***@h/f.bin?token=***&v=***#x'
    """
    if uri is None:
        return ""
    parts = _http_parts(uri)
    if parts is None:
        return uri
    scheme, authority, path, query, fragment = parts
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    out = f"{scheme}://{authority}{path}"
    if query:
        masked = (item.split("=", 1)[0] + "=***" if "=" in item else item for item in query.split("&"))
        out += "?" + "&".join(masked)
    if fragment:
        out += "#" + fragment
    return out


# -- trust: which repositories' references are fetched ------------------------------------


def repository_location(store: ObjectStore) -> str:
    """Where a repository is, as `SYNCENGINE_TRUST_REFERENCES` names it: the real path of a
    local one, ``s3://BUCKET/PREFIX`` of one on S3."""
    from syncengine.store.local import LocalStore
    from syncengine.store.s3 import S3Store

    if isinstance(store, LocalStore):
        return os.path.realpath(store.root)
    if isinstance(store, S3Store):
        return f"s3://{store.bucket}/{store.prefix}".rstrip("/")
    return repr(store)


def _below(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one (``*`` is every path)."""
    return any(r in ("*", path) or path.startswith(r.rstrip("/") + "/") for r in roots)


def _local_path(item: str) -> str:
    path = _file_path(item) if item.startswith("file://") else item
    return os.path.realpath(os.path.expanduser(path))


def _trusted_locations(environ: Mapping[str, str] | None) -> list[str]:
    raw = (os.environ if environ is None else environ).get(TRUST_ENV, "")
    out = []
    for given in raw.split(","):
        item = given.strip()
        if not item:
            continue
        if item == "*":
            out.append(item)
        elif item.startswith("s3://"):
            out.append(item.rstrip("/"))
        else:
            out.append(_local_path(item))
    return out


def references_trusted(
    store: ObjectStore, trust: bool | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether the references of the repository on ``store`` may be fetched: ``trust`` when
    the caller says (True or False), else whether `TRUST_ENV` names the repository, a folder
    or bucket prefix above it, or ``*``."""
    if trust is not None:
        return trust
    return _below(repository_location(store), _trusted_locations(environ))


def require_trust(store: ObjectStore, trust: bool | None, e: ManifestEntry) -> None:
    """Raises `ReferencesNotTrusted` naming ``e`` and how to opt in, unless the repository's
    references may be fetched (`references_trusted`). A reference's digest is a public
    function of its URI and metadata, so anyone who can write a repository can add one that
    makes this machine fetch any URL, or copy any local file, with the user's credentials:
    only the user can say whose repository that is acceptable for."""
    if references_trusted(store, trust):
        return
    where = repository_location(store)
    raise ReferencesNotTrusted(
        f"{e.path!r} is a reference to {masked_uri(e.ref or '')}, and references are fetched only from "
        f"a repository you trust for them (anyone who can write it chooses what they name): pass "
        f"--trust-references (API: trust_references=True), or add {where} to {TRUST_ENV}"
    )


def check_file_root(e: ManifestEntry, src: str, environ: Mapping[str, str] | None = None) -> None:
    """Raises `ReferencesNotTrusted` when `FILE_ROOTS_ENV` is set and the real path of ``src``
    (symlinks resolved) is not below one of its folders. Blocking: a worker thread's call."""
    raw = (os.environ if environ is None else environ).get(FILE_ROOTS_ENV, "")
    roots = [_local_path(r.strip()) for r in raw.split(",") if r.strip()]
    if not roots or _below(os.path.realpath(src), roots):
        return
    raise ReferencesNotTrusted(
        f"{e.path!r} is a reference to {masked_uri(e.ref)}, outside the folders {FILE_ROOTS_ENV} "
        f"allows ({', '.join(roots)})"
    )


# -- the reference digest ------------------------------------------------------------------


def covered_extra(extra: dict[str, str | int]) -> dict[str, str | int]:
    """The part of `extra` the reference digest covers: all of it, except `mtime_ns` when a
    `blake3` content digest is there (touching a checksummed file is no new version), with
    renamed keys under their first name (`versionID` as `version_id`), so a reference logged
    before the rename and after it has one digest: the same object is identical content."""
    old_name = {new: old for old, new in RENAMED_EXTRA.items()}
    covered = {old_name.get(k, k): v for k, v in extra.items()}
    if "blake3" in covered:
        covered.pop("mtime_ns", None)
    return covered


def reference_digest(uri: str, size: int, extra: dict[str, str | int]) -> bytes:
    """``BLAKE3-keyed(REF_KEY, msgpack([uri, size, covered_extra]))``, map keys sorted.

    >>> reference_digest("s3://b/k", 3, {"etag": "x"}).hex()[:16]
    '7d5e53fe5f292a85'
    """
    return _blake3.blake3(_encode([uri, size, covered_extra(extra)]), key=REF_KEY).digest()


def reference_entry(path: str, uri: str, size: int, extra: dict[str, str | int]) -> ManifestEntry:
    return ManifestEntry(path, size, REF_MODE, reference_digest(uri, size, extra), (), uri, dict(extra))


def check_entry(e: ManifestEntry) -> None:
    """A reference entry whose digest is the one its URI, size and extra give."""
    if e.ref is None:
        raise ManifestError(f"{e.path}: not a reference")
    if e.size < 0 or e.chunks:
        raise ManifestError(f"{e.path}: reference entry with a negative size or chunks")
    if reference_digest(e.ref, e.size, e.extra or {}) != e.digest:
        raise ManifestError(f"{e.path}: reference entry's digest does not match its URI and metadata")


def _check_path(path: str, uri: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
        raise ConfigError(
            f"reference {masked_uri(uri)}: {path!r} is no plain relative path (empty, '.' or '..' parts); "
            "pass name= to place it"
        )
    return path


def _join(name: str | None, rel: str) -> str:
    return f"{name}/{rel}" if name else rel


def file_uri(path: str) -> str:
    return "file://" + quote(path)


def _limit(ref: Reference) -> int:
    return ref.max_objects if ref.max_objects is not None else DEFAULT_MAX_OBJECTS


def _too_many(ref: Reference, found: int) -> TooManyObjects:
    return TooManyObjects(
        f"reference {masked_uri(ref.uri)} has {found} objects, more than max_objects={_limit(ref)}; "
        f"pass max_objects={found} (or more) to log them all"
    )


# -- resolving (at log time) ---------------------------------------------------------------


class SourceStores:
    """S3 stores for the buckets references name: the repository's settings (endpoint,
    region, credentials) when it is on S3, else the AWS environment; closed together."""

    def __init__(self, repo_store: ObjectStore | None) -> None:
        self._repo_store = repo_store
        self._stores: dict[str, S3Store] = {}
        self._http: aiohttp.ClientSession | None = None

    def s3(self, bucket: str) -> S3Store:
        from syncengine.store.s3 import S3Store

        store = self._stores.get(bucket)
        if store is None:
            if isinstance(self._repo_store, S3Store):
                store = self._repo_store.for_bucket(bucket)
            else:
                store = S3Store(bucket)
            self._stores[bucket] = store
        return store

    def http(self) -> aiohttp.ClientSession:
        import aiohttp

        from syncengine.store.retry import RetryPolicy

        if self._http is None:
            # No read may wait longer than the retry policy's stall timeout (as for S3 bodies).
            stall = RetryPolicy.from_env().stall_timeout
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=stall),
                # The object's own bytes, as logged: no transfer encoding to undo, no size to doubt.
                headers={"Accept-Encoding": "identity"},
                auto_decompress=False,
            )
        return self._http

    async def close(self) -> None:
        stores, self._stores = list(self._stores.values()), {}
        for s in stores:
            await s.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> SourceStores:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def resolve(
    refs: Sequence[Reference], repo_store: ObjectStore | None, params: ChunkerParams
) -> list[ManifestEntry]:
    """The manifest entries of `refs`, sorted by path; a path given twice is an error."""
    if not refs:
        return []
    out: list[ManifestEntry] = []
    async with SourceStores(repo_store) as sources:
        for ref in refs:
            scheme = ref.uri.split("://", 1)[0].lower()
            if scheme == "s3":
                out.extend(await _resolve_s3(ref, sources))
            elif scheme == "file":
                out.extend(await asyncio.to_thread(_resolve_file, ref, params))
            else:
                out.append(await _resolve_http(ref, sources))
    out.sort(key=lambda e: e.path.encode())
    for a, b in itertools.pairwise(out):
        if a.path == b.path:
            raise ConfigError(
                f"{a.path!r} is given twice: by reference {masked_uri(a.ref)} and by {masked_uri(b.ref)}"
            )
    return out


def _s3_parts(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _s3_extra(etag: str, version_id: str | None) -> dict[str, str | int]:
    extra: dict[str, str | int] = {"etag": etag}
    if version_id:
        extra["versionID"] = version_id
    return extra


async def _resolve_s3(ref: Reference, sources: SourceStores) -> list[ManifestEntry]:
    bucket, key = _s3_parts(ref.uri)
    store = sources.s3(bucket)
    if key and not key.endswith("/"):
        try:
            info, vid = await store.head_object(key)
        except ObjectNotFound:
            info = None
        if info is not None:
            path = _check_path(ref.name or key.rsplit("/", 1)[-1], ref.uri)
            return [reference_entry(path, _s3_uri(bucket, key), info.size, _s3_extra(info.etag, vid))]
        prefix = key + "/"  # no such object: a prefix without its trailing slash (as W&B does)
    else:
        prefix = key
    limit = _limit(ref)
    listed: list[tuple[str, int, str]] = []
    count = 0
    async for obj in store.list_objects(prefix):
        if obj.key.endswith("/"):
            continue  # a "folder" marker object, no file
        count += 1
        if count <= limit:
            listed.append((obj.key, obj.size, obj.etag))
    if count == 0:
        raise ReferenceNotFound(
            f"reference {masked_uri(ref.uri)}: no such object, and no objects under s3://{bucket}/{prefix}"
        )
    if count > limit:
        raise _too_many(ref, count)
    listed.sort(key=lambda t: t[0].encode())
    # ListObjectsV2 gives no version ids: ask HEAD for one; when the bucket keeps versions,
    # every object's HEAD gives the version (and its ETag and size, read together).
    first_key = listed[0][0]
    info, vid = await store.head_object(first_key)
    entries: list[ManifestEntry] = []

    def entry(k: str, size: int, etag: str, version: str | None) -> ManifestEntry:
        path = _check_path(_join(ref.name, k[len(prefix) :]), ref.uri)
        return reference_entry(path, _s3_uri(bucket, k), size, _s3_extra(etag, version))

    if vid is None:
        return [entry(k, s, e, None) for k, s, e in listed]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def head(k: str) -> ManifestEntry:
        async with gate:
            try:
                i, v = await store.head_object(k)
            except ObjectNotFound:
                raise ReferenceChanged(
                    f"reference {masked_uri(ref.uri)}: s3://{bucket}/{k} was deleted while listed"
                ) from None
        return entry(k, i.size, i.etag, v)

    entries.append(entry(first_key, info.size, info.etag, vid))
    entries.extend(await asyncio.gather(*(head(k) for k, _, _ in listed[1:])))
    return entries


def _file_path(uri: str) -> str:
    return unquote(urlsplit(uri).path)


def _resolve_file(ref: Reference, params: ChunkerParams) -> list[ManifestEntry]:
    path = _file_path(ref.uri)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ReferenceNotFound(f"reference {masked_uri(ref.uri)}: {path} does not exist") from None
    hasher = backend.impl.FileHasher(params)

    def extra_of(p: str, size: int, mtime_ns: int) -> dict[str, str | int]:
        extra: dict[str, str | int] = {"mtime_ns": mtime_ns}
        if ref.checksum:
            extra["blake3"] = bytes(hasher.hash_file(p, size).digest).hex()
        return extra

    if stat.S_ISREG(st.st_mode):
        name = _check_path(ref.name or os.path.basename(path), ref.uri)
        return [reference_entry(name, file_uri(path), st.st_size, extra_of(path, st.st_size, st.st_mtime_ns))]
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"reference {masked_uri(ref.uri)}: {path} is neither a file nor a folder")
    from syncengine.hashing.tree import Source, TreeHasher

    scanner = TreeHasher(params, stat_cache=None)
    found = list(scanner.scan([Source(path, ref.name or "")]))
    if len(found) > _limit(ref):
        raise _too_many(ref, len(found))
    return [
        reference_entry(e.path, file_uri(e.abspath), e.size, extra_of(e.abspath, e.size, e.mtime_ns))
        for e in found
    ]


def _http_extra(headers: Any) -> dict[str, str | int]:
    extra: dict[str, str | int] = {}
    if headers.get("ETag"):
        extra["etag"] = headers["ETag"]
    if headers.get("Last-Modified"):
        extra["last_modified"] = headers["Last-Modified"]
    return extra


async def _http_request(sources: SourceStores, method: str, uri: str, what: str) -> aiohttp.ClientResponse:
    """A response to ``method uri`` under the retry policy (`RetryPolicy.from_env`, as for S3):
    connection failures, timeouts, 429 and 5xx are retried; the caller releases the response."""
    from syncengine.store.retry import (
        Retrier,
        RetryPolicy,
        Transient,
        transient_from_exception,
        transport_errors,
    )
    from syncengine.store.retry import transient_from_status as from_status

    retrier = Retrier(RetryPolicy.from_env(), what)
    while True:
        try:
            async with retrier.attempt():
                try:
                    resp = await sources.http().request(method, uri, allow_redirects=True)
                except transport_errors() as e:
                    t = transient_from_exception(e)
                    if t is None:
                        why = str(e).replace(uri, masked_uri(uri))  # aiohttp may name the URL
                        raise SyncEngineError(f"{what} failed: {type(e).__name__}: {why}") from e
                    raise t from e
                t = from_status(resp.status, "", resp.reason or "", resp.headers.get("Retry-After"))
                if t is not None:
                    resp.release()
                    raise t
                return resp
        except Transient as t:
            await retrier.backoff(t)


async def _resolve_http(ref: Reference, sources: SourceStores) -> ManifestEntry:
    resp = await _http_request(sources, "HEAD", ref.uri, f"HEAD {masked_uri(ref.uri)}")
    try:
        if resp.status in (404, 410):
            raise ReferenceNotFound(f"reference {masked_uri(ref.uri)}: the server answered {resp.status}")
        if resp.status >= 300:
            raise SyncEngineError(
                f"reference {masked_uri(ref.uri)}: HEAD answered {resp.status} {resp.reason}"
            )
        length = resp.headers.get("Content-Length")
        extra = _http_extra(resp.headers)
    finally:
        resp.release()
    if length is None or not length.isdigit():
        raise SyncEngineError(
            f"reference {masked_uri(ref.uri)}: the server sent no Content-Length, so no size to log"
        )
    name = ref.name or unquote(urlsplit(ref.uri).path).rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ConfigError(f"reference {masked_uri(ref.uri)}: the URL has no file name; pass name=")
    return reference_entry(_check_path(name, ref.uri), ref.uri, int(length), extra)


def references_key(entries: Iterable[ManifestEntry]) -> str:
    """What the put memo's key adds for references (hex): their paths and digests."""
    h = _blake3.blake3()
    for e in entries:
        h.update(_encode([e.path, e.digest]))
    return h.hexdigest()


class Merge:
    """Puts reference entries (sorted) into the path-ordered stream of hashed files, refusing
    a reference at a file's path, or one that would be a file and a folder at once (``a``
    and ``a/b``)."""

    def __init__(self, entries: list[ManifestEntry]) -> None:
        self._entries = entries
        self._next = 0
        # Earlier paths that are byte prefixes of the latest one: its only possible ancestors.
        self._stack: list[tuple[bytes, str]] = []

    def _visit(self, path: str, what: str) -> None:
        key = path.encode()
        while self._stack and not key.startswith(self._stack[-1][0]):
            self._stack.pop()
        for p, other in self._stack:
            if key[len(p) : len(p) + 1] == b"/":
                raise ConfigError(
                    f"{p.decode()!r} ({other}) would be a file and the folder of {path!r} ({what}); "
                    "give the reference another name"
                )
        self._stack.append((key, what))

    def before(self, path: str) -> list[ManifestEntry]:
        """References whose paths sort before `path`; a reference at `path` is an error."""
        if not self._entries:
            return []
        key = path.encode()
        start = self._next
        while self._next < len(self._entries) and self._entries[self._next].path.encode() < key:
            e = self._entries[self._next]
            self._visit(e.path, f"reference {masked_uri(e.ref)}")
            self._next += 1
        if self._next < len(self._entries) and self._entries[self._next].path == path:
            other = masked_uri(self._entries[self._next].ref)
            raise ConfigError(f"{path!r} is both a file and reference {other}")
        self._visit(path, "a file")
        return self._entries[start : self._next]

    def rest(self) -> list[ManifestEntry]:
        out, self._next = self._entries[self._next :], len(self._entries)
        for e in out:
            self._visit(e.path, f"reference {masked_uri(e.ref)}")
        return out


# -- fetching (at download time) -----------------------------------------------------------


def _changed(e: ManifestEntry, what: str) -> ReferenceChanged:
    return ReferenceChanged(
        f"reference {e.path!r} ({masked_uri(e.ref)}) changed since it was logged: {what}; "
        "restore the source or log a new version"
    )


async def fetch(
    repo: Repository, entries: Sequence[ManifestEntry], root: str, result: DownloadResult
) -> None:
    """Fetches every reference entry from its source into ``root``, verified against the
    logged metadata. A changed source is `ReferenceChanged`; nothing is written at its path.

    Objects go into temp files beside their targets; per batch of `FETCH_BATCH` entries the
    temp files are made durable together (one syncfs, `syncengine.durable`), renamed over the
    targets, and the directories made durable — as the downloader does for stored files."""
    if not entries:
        return
    for e in entries:
        check_entry(e)
    async with SourceStores(repo.store) as sources:
        for i in range(0, len(entries), FETCH_BATCH):
            await _fetch_batch(repo, sources, entries[i : i + FETCH_BATCH], root, result)


async def _fetch_batch(
    repo: Repository,
    sources: SourceStores,
    entries: Sequence[ManifestEntry],
    root: str,
    result: DownloadResult,
) -> None:
    from syncengine._loop import gather_all
    from syncengine.durable import SyncBatch

    batch = await asyncio.to_thread(SyncBatch, root)  # before any write: see syncengine.durable
    gate = asyncio.Semaphore(CONCURRENCY)
    fetched: list[_TempFile] = []
    try:

        async def one(e: ManifestEntry) -> None:
            async with gate:
                tmp = await _fetch_one(repo, sources, e, root)
            if tmp is None:
                result.present += 1
            else:
                fetched.append(tmp)

        await gather_all([one(e) for e in entries])
        await asyncio.to_thread(_commit, batch, fetched)
    except BaseException:
        for t in fetched:  # renamed ones are gone already
            with contextlib.suppress(OSError):
                os.unlink(t.path)
        raise
    finally:
        batch.close()
    result.written += len(fetched)
    result.bytes_written += sum(t.size for t in fetched)


def _commit(batch: Any, fetched: list[_TempFile]) -> None:
    """Durable temp files → renames → durable directory entries."""
    batch.flush([t.path for t in fetched])
    for t in fetched:
        os.replace(t.path, t.target)
    batch.flush_dirs({os.path.dirname(t.target) for t in fetched})


async def _fetch_one(
    repo: Repository, sources: SourceStores, e: ManifestEntry, root: str
) -> _TempFile | None:
    """One reference's object in a complete, verified (closed) temp file beside its target;
    None if a checksummed file is there already with the logged content."""
    assert e.ref is not None
    scheme = e.ref.split("://", 1)[0].lower()
    if scheme == "s3":
        return await _fetch_s3(sources, e, root)
    if scheme == "file":
        return await asyncio.to_thread(_copy_file, e, root, repo.params)
    return await _fetch_http(sources, e, root)


# -- re-checking (verify --references) ---------------------------------------------------------


def check_copy(e: ManifestEntry, path: str, params: ChunkerParams) -> str | None:
    """How the file at ``path`` differs from what reference ``e`` logged, or None: its size,
    and for a checksummed file reference its content digest (S3 and HTTP references log no
    content digest: their ETag is the source's, not always an MD5, so size is all a local
    copy can be held to). Blocking: run it in a worker thread."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "not on disk"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size != e.size:
        return f"size {st.st_size}, logged {e.size}"
    digest = (e.extra or {}).get("blake3")
    if digest is not None and not _has_digest(path, e.size, str(digest), params):
        return "content differs from the logged digest"
    return None


async def recheck(
    entries: Sequence[ManifestEntry],
    repo_store: ObjectStore,
    params: ChunkerParams,
    trust: bool | None = None,
) -> list[tuple[ManifestEntry, str]]:
    """The references whose source is no longer what was logged, with what differs (the
    `ReferenceChanged` message a download would raise); no body is fetched. S3: a HEAD of
    the logged version (or the current object) — ETag, size, version; file: size and mtime,
    or with a logged digest, the source re-hashed; HTTP: a HEAD — ETag, Last-Modified, size.
    `CONCURRENCY` at a time. Only for a repository trusted for references (`require_trust`):
    a HEAD of a planted URL, or a re-hash of a planted path, is what a fetch would be, short
    of the body."""
    if entries:
        require_trust(repo_store, trust, entries[0])
    gate = asyncio.Semaphore(CONCURRENCY)
    out: list[tuple[ManifestEntry, str]] = []
    async with SourceStores(repo_store) as sources:

        async def one(e: ManifestEntry) -> None:
            async with gate:
                try:
                    await _recheck_one(sources, e, params)
                except ReferenceChanged as changed:
                    out.append((e, str(changed)))

        await asyncio.gather(*(one(e) for e in entries))
    out.sort(key=lambda t: t[0].path.encode())
    return out


async def _recheck_one(sources: SourceStores, e: ManifestEntry, params: ChunkerParams) -> None:
    check_entry(e)
    assert e.ref is not None
    extra = e.extra or {}
    scheme = e.ref.split("://", 1)[0].lower()
    if scheme == "s3":
        bucket, key = _s3_parts(e.ref)
        vid = extra.get("versionID")
        try:
            info, got_vid = await sources.s3(bucket).head_object(key, str(vid) if vid else None)
        except ObjectNotFound:
            raise _changed(
                e, f"version {vid} no longer exists" if vid else "the object no longer exists"
            ) from None
        if info.etag != extra.get("etag"):
            raise _changed(e, f"ETag {info.etag!r}, logged {extra.get('etag')!r}")
        if info.size != e.size:
            raise _changed(e, f"size {info.size}, logged {e.size}")
        if vid and got_vid != vid:
            raise _changed(e, f"version {got_vid!r}, logged {vid!r}")
    elif scheme == "file":
        src = _file_path(e.ref)
        what = await asyncio.to_thread(_file_source_changed, e, src, params)
        if what is not None:
            raise _changed(e, what)
    else:
        resp = await _http_request(sources, "HEAD", e.ref, f"HEAD {masked_uri(e.ref)}")
        try:
            if resp.status in (404, 410):
                raise _changed(e, f"the server answers {resp.status}")
            if resp.status >= 300:
                raise SyncEngineError(
                    f"reference {e.path!r} ({masked_uri(e.ref)}): HEAD answered {resp.status} {resp.reason}"
                )
            now = _http_extra(resp.headers)
            length = resp.headers.get("Content-Length")
        finally:
            resp.release()
        for k in ("etag", "last_modified"):
            if k in extra and now.get(k) != extra[k]:
                raise _changed(e, f"{k} {now.get(k)!r}, logged {extra[k]!r}")
        if length is not None and length.isdigit() and int(length) != e.size:
            raise _changed(e, f"size {length}, logged {e.size}")


def _file_source_changed(e: ManifestEntry, src: str, params: ChunkerParams) -> str | None:
    check_file_root(e, src)
    extra = e.extra or {}
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return f"{src} no longer exists"
    if st.st_size != e.size:
        return f"size {st.st_size}, logged {e.size}"
    if "blake3" in extra:
        if not _has_digest(src, e.size, str(extra["blake3"]), params, follow=True):
            return "content digest differs from the logged one"
    elif st.st_mtime_ns != extra.get("mtime_ns"):
        return f"mtime_ns {st.st_mtime_ns}, logged {extra.get('mtime_ns')}"
    return None


def _has_digest(
    target: str, size: int, digest_hex: str, params: ChunkerParams, *, follow: bool = False
) -> bool:
    """Whether `target` is a regular file of `size` bytes with that digest; a link counts as
    its target only with `follow` (a reference's source was read through its links when it
    was logged; a downloaded file must not be one)."""
    try:
        st = os.stat(target) if follow else os.lstat(target)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        return bytes(backend.impl.FileHasher(params).hash_file(target, size).digest).hex() == digest_hex
    except OSError:
        return False


class _TempFile:
    """A temp file beside a target, named like the downloader's (a killed writer's is swept
    by the next download). Blocking calls: run it in a worker thread."""

    def __init__(self, root: str, path: str) -> None:
        from syncengine.repo.download import _temp_name, _writer_tag
        from syncengine.repo.repository import safe_target

        self.target = safe_target(root, path)  # checks the path, makes the parent folders
        self.path = os.path.join(os.path.dirname(self.target), _temp_name(_writer_tag(), None))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.size = 0

    @classmethod
    def whole(cls, root: str, path: str, data: bytes) -> _TempFile:
        """A closed temp file holding ``data``: one worker-thread hop for a small object."""
        tmp = cls(root, path)
        try:
            tmp.write(data)
        except BaseException:
            tmp.discard()
            raise
        tmp.close()
        return tmp

    def restart(self) -> None:
        """Empties the file for another attempt."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def write_all(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self.write(c)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


async def _receive(
    chunks: AsyncIterator[bytes], e: ManifestEntry, root: str, tmp: _TempFile | None = None
) -> _TempFile:
    """The body of ``e``'s object in a closed temp file: a small object is gathered in memory
    and written with one thread hop, a larger one streamed (``tmp`` given: into that one).
    A body longer than the logged size is refused at the chunk that passes it, so a source
    that sends without end (a chunked body, a server that lies) costs at most the logged size
    and one chunk, in memory no more than `SMALL_OBJECT` and one chunk."""
    pending: list[bytes] = []
    held = 0
    given = tmp  # the caller's: emptied and reused by a retry, so left to the caller on errors
    try:
        async for c in chunks:
            pending.append(c)
            held += len(c)
            if held + (tmp.size if tmp is not None else 0) > e.size:
                raise _changed(e, f"more than the logged {e.size} bytes arrived")
            if held >= SMALL_OBJECT:
                if tmp is None:
                    tmp = await asyncio.to_thread(_TempFile, root, e.path)
                await asyncio.to_thread(tmp.write_all, pending)
                pending, held = [], 0
        if tmp is None:
            data = b"".join(pending)
            if len(data) != e.size:
                raise _changed(e, f"{len(data)} bytes arrived, the logged size is {e.size}")
            return await asyncio.to_thread(_TempFile.whole, root, e.path, data)
        if pending:
            await asyncio.to_thread(tmp.write_all, pending)
        if tmp.size != e.size:
            raise _changed(e, f"{tmp.size} bytes arrived, the logged size is {e.size}")
        tmp.close()
        return tmp
    except BaseException:
        if tmp is not None and tmp is not given:
            await asyncio.to_thread(tmp.discard)
        raise


async def _fetch_s3(sources: SourceStores, e: ManifestEntry, root: str) -> _TempFile:
    assert e.ref is not None and e.extra is not None
    bucket, key = _s3_parts(e.ref)
    vid = e.extra.get("versionID")
    store = sources.s3(bucket)
    try:
        reader, got_vid = await store.open_object(key, str(vid) if vid else None)
    except ObjectNotFound:
        what = f"version {vid} no longer exists" if vid else "the object no longer exists"
        raise _changed(e, what) from None
    try:
        etag = str(e.extra.get("etag", ""))
        if reader.info.etag != etag:
            raise _changed(e, f"ETag {reader.info.etag!r}, logged {etag!r}")
        if reader.info.size != e.size:
            raise _changed(e, f"size {reader.info.size}, logged {e.size}")
        if vid and got_vid != vid:
            raise _changed(e, f"version {got_vid!r} was sent, logged {vid!r}")
        return await _receive(aiter(reader), e, root)
    finally:
        reader.close()


def _open_source(e: ManifestEntry, src: str) -> int:
    """A descriptor of the regular file ``src``. Opened without blocking (a FIFO would wait
    for a writer) and held to `S_ISREG` before a byte is read: a device (``/dev/zero``),
    FIFO or socket named by a planted entry is refused. A symlink is followed, as when the
    reference was logged (its target is what the URI named then)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise _changed(e, f"{src} no longer exists") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _changed(e, f"{src} is no regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_file(e: ManifestEntry, root: str, params: ChunkerParams) -> _TempFile | None:
    from syncengine.repo.repository import safe_target

    assert e.ref is not None
    src = _file_path(e.ref)
    check_file_root(e, src)
    extra = e.extra or {}
    if "blake3" in extra and _has_digest(safe_target(root, e.path), e.size, str(extra["blake3"]), params):
        return None  # already there with the logged content
    fd = _open_source(e, src)
    try:
        st = os.fstat(fd)
        if st.st_size != e.size:
            raise _changed(e, f"size {st.st_size}, logged {e.size}")
        if "blake3" not in extra and st.st_mtime_ns != extra.get("mtime_ns"):
            raise _changed(e, f"mtime_ns {st.st_mtime_ns}, logged {extra.get('mtime_ns')}")
        tmp = _TempFile(root, e.path)
        try:
            # At most one byte more than logged is read: a file that grew is refused, not copied.
            while tmp.size <= e.size and (data := os.read(fd, min(1 << 20, e.size + 1 - tmp.size))):
                tmp.write(data)
            if tmp.size != e.size:
                got = f"{tmp.size} bytes" if tmp.size < e.size else "more bytes than that"
                raise _changed(e, f"{got} read, the logged size is {e.size}")
            tmp.close()
            if "blake3" in extra:
                got = bytes(backend.impl.FileHasher(params).hash_file(tmp.path, e.size).digest).hex()
                if got != extra["blake3"]:
                    raise _changed(e, f"content digest {got[:16]}…, logged {str(extra['blake3'])[:16]}…")
        except BaseException:
            tmp.discard()
            raise
    finally:
        os.close(fd)
    return tmp


async def _body(resp: aiohttp.ClientResponse, stall: float) -> AsyncIterator[bytes]:
    """The response body; a broken or stalled transfer is `Transient` (the GET is retried)."""
    from syncengine.store.retry import Transient, transient_from_exception, transport_errors

    while True:
        try:
            async with asyncio.timeout(stall):
                data = await resp.content.readany()
        except transport_errors() as e:
            t = transient_from_exception(e)
            raise (t or Transient(f"the body broke off ({type(e).__name__}: {e})")) from e
        if not data:
            return
        yield data


async def _fetch_http(sources: SourceStores, e: ManifestEntry, root: str) -> _TempFile:
    from syncengine.store.retry import Retrier, RetryPolicy, Transient

    assert e.ref is not None
    extra = e.extra or {}
    policy = RetryPolicy.from_env()
    retrier = Retrier(policy, f"GET {masked_uri(e.ref)}")
    tmp: _TempFile | None = None  # a large object's, kept (emptied) across attempts
    try:
        while True:
            resp = await _http_request(sources, "GET", e.ref, f"GET {masked_uri(e.ref)}")
            try:
                if resp.status in (404, 410):
                    raise _changed(e, f"the server answers {resp.status}")
                if resp.status >= 300:
                    what = f"GET answered {resp.status} {resp.reason}"
                    raise SyncEngineError(f"reference {e.path!r} ({masked_uri(e.ref)}): {what}")
                now = _http_extra(resp.headers)
                for k in ("etag", "last_modified"):
                    if k in extra and now.get(k) != extra[k]:
                        raise _changed(e, f"{k} {now.get(k)!r}, logged {extra[k]!r}")
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != e.size:
                    raise _changed(e, f"size {length}, logged {e.size}")
                if e.size > SMALL_OBJECT and tmp is None:
                    tmp = await asyncio.to_thread(_TempFile, root, e.path)
                try:
                    done = await _receive(_body(resp, policy.stall_timeout), e, root, tmp)
                    tmp = None  # handed over
                    return done
                except Transient as t:
                    failure = t
            finally:
                resp.release()
            retrier.attempts += 1  # one GET (its own request retries aside); no attempt timeout on a body
            await retrier.backoff(failure)  # raises StoreUnavailable once the policy is spent
            if tmp is not None:
                await asyncio.to_thread(tmp.restart)
    except BaseException:
        if tmp is not None:
            await asyncio.to_thread(tmp.discard)
        raise
