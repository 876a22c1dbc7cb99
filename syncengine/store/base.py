"""The `ObjectStore` contract: an async key → bytes store with conditional writes and multipart.

Every storage backend (a local directory, S3-compatible services, test doubles, the retry
wrapper) implements this one protocol, and one contract suite (tests/contract) checks each
of them. docs/STORE.md is the prose version of this module.

Keys are `/`-separated relative strings, checked by :func:`validate_key` before any I/O:

>>> validate_key("packs/ab/abcdef")
'packs/ab/abcdef'
>>> validate_key("../etc/passwd")
Traceback (most recent call last):
...
syncengine.errors.InvalidKey: invalid object key '../etc/passwd': '.' and '..' parts are not allowed
"""

from __future__ import annotations

import builtins
import os
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Protocol, Self, TypeAlias, runtime_checkable

import msgspec

from syncengine.errors import ConfigError, InvalidKey, LinkInRepository, ObjectTooLarge

__all__ = [
    "RESERVED_PREFIX",
    "Body",
    "BodySource",
    "FileSlice",
    "HashedParts",
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "PartInfo",
    "StoreCapabilities",
    "UploadInfo",
    "body_size",
    "check_range",
    "check_size",
    "is_valid_part",
    "read_capped",
    "validate_key",
    "validate_prefix",
]

#: Key parts starting with this are reserved for store internals (temp files, locks).
RESERVED_PREFIX: Final = ".se-"
#: S3's limit on the UTF-8 length of a key; enforced everywhere so keys stay portable.
MAX_KEY_BYTES: Final = 1024
#: Most filesystems' limit on one path component (NAME_MAX).
MAX_PART_BYTES: Final = 255


class ObjectInfo(msgspec.Struct, frozen=True):
    """What a store knows about one object.

    ``etag`` is opaque: compare it for equality (and pass it to ``put(if_match=)``), never
    parse it. ``mtime`` is POSIX seconds of the last write.
    """

    key: str
    size: int
    etag: str
    mtime: float


class PartInfo(msgspec.Struct, frozen=True):
    """One uploaded part of a multipart upload."""

    part_number: int
    etag: str
    size: int


class UploadInfo(msgspec.Struct, frozen=True):
    """One multipart upload in progress (created, neither completed nor aborted)."""

    key: str
    upload_id: str
    initiated: float


class StoreCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a store guarantees; callers read this instead of guessing from the store's type."""

    #: ``put(if_none_match=True)`` is an atomic create-if-absent.
    conditional_put: bool
    #: ``put(if_match=etag)`` is an atomic compare-and-swap.
    conditional_cas: bool
    #: Conditional writes are atomic against writers on *other machines* too (S3: yes;
    #: a local directory: only against processes of the same host).
    conditional_across_hosts: bool
    #: ``get``/``open_read`` with a range read only that range.
    ranged_get: bool
    #: Largest body ``put`` accepts; bigger objects go through multipart.
    max_put_size: int
    #: The multipart methods work.
    multipart: bool
    #: Every part but the last must be at least this large at ``complete_multipart``.
    min_part_size: int
    #: No part may be larger than this.
    max_part_size: int
    #: Part numbers run from 1 to ``max_parts``.
    max_parts: int
    #: A key may also be a prefix of other keys (``a`` and ``a/b`` at once). False for
    #: a directory-backed store, where ``a`` cannot be a file and a directory.
    key_prefix_overlap: bool
    #: Longest key, in UTF-8 bytes.
    max_key_bytes: int = MAX_KEY_BYTES
    #: ``open_read`` hands over the body piece by piece as it arrives (S3: from the socket),
    #: so a reader that consumes the pieces at once never holds the whole range; False where
    #: one ``get`` is the cheap way (a local directory: one read, and ``open_read`` looks
    #: up the ETag first).
    streamed_reads: bool = False


#: S3's size limits for puts and multipart uploads. LocalStore enforces them too, so a
#: transfer plan that works locally works on S3.
S3_SIZE_LIMITS: Final = {
    "max_put_size": 5 << 30,
    "multipart": True,
    "min_part_size": 5 << 20,
    "max_part_size": 5 << 30,
    "max_parts": 10_000,
}


@runtime_checkable
class BodySource(Protocol):
    """A request body that can be read again from its start (so a failed write can be retried).

    ``chunks()`` is called in a worker thread, may block, and starts from the beginning
    on every call. It must yield exactly ``size`` bytes in total, else the write fails with
    :class:`~syncengine.errors.BodySizeMismatch` and nothing is written.
    """

    @property
    def size(self) -> int: ...

    def chunks(self) -> Iterator[bytes | bytearray | memoryview]: ...


class FileSlice(msgspec.Struct, frozen=True):
    """``length`` bytes of a local file from ``offset``: a body that is read when it is sent.

    >>> FileSlice("/data/shard-0001.bin", offset=0, length=1 << 20).size
    1048576
    """

    path: str
    offset: int
    length: int
    chunk_size: int = 8 << 20

    @property
    def size(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes]:
        left = self.length
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            while left > 0:
                b = f.read(min(self.chunk_size, left))
                if not b:
                    return  # file shrank: the writer reports the size mismatch
                left -= len(b)
                yield b


class HashedParts:
    """An in-memory body made of parts, whose BLAKE3 digest its producer already computed
    (a pack: its id is that digest). Writing it needs no joined copy: LocalStore writes the
    parts one after the other and takes ``blake3`` as the ETag instead of hashing the bytes
    again; S3Store checksums and sends the parts as they are; a multipart upload, which cuts
    parts from one buffer, calls :meth:`join`. The producer vouches for the digest.

    >>> from blake3 import blake3
    >>> body = HashedParts([b"ab", b"c"], blake3(b"abc").digest())
    >>> body.size, body.join()
    (3, b'abc')
    """

    __slots__ = ("blake3", "parts", "size")

    def __init__(self, parts: Sequence[bytes | bytearray | memoryview], blake3: bytes) -> None:
        self.parts = [memoryview(p).cast("B") for p in parts]
        self.size = sum(p.nbytes for p in self.parts)
        self.blake3 = blake3

    def chunks(self) -> Iterator[memoryview]:
        return iter(self.parts)

    def join(self) -> bytes:
        return b"".join(self.parts)


#: What ``put`` and ``upload_part`` accept.
Body: TypeAlias = bytes | bytearray | memoryview | BodySource


class ObjectReader(Protocol):
    """An open object being read: ``info`` describes the version being read, whole.

    Iterating yields the (ranged) content in chunks; ``read()`` returns the rest at once;
    ``readinto(buf)`` fills ``buf`` with the next bytes, all of it unless the content ends
    first, and returns how many (0 at the end); use one of the three per reader. The
    version is pinned: a concurrent overwrite does not change what this reader returns.
    """

    @property
    def info(self) -> ObjectInfo: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def readinto(self, buf: memoryview) -> int: ...


class ObjectStore(Protocol):
    """An async object store: the only way syncengine touches storage.

    Errors (all from :mod:`syncengine.errors`): a missing object raises ``ObjectNotFound``
    (a ``FileNotFoundError``), a lost conditional write ``PreconditionFailed`` (nothing was
    written), a malformed key ``InvalidKey`` (a ``ValueError``, raised before any I/O), a
    used-after-close store ``StoreClosed``.

    >>> async def example(store: ObjectStore) -> bytes:
    ...     async with store:
    ...         await store.put("refs/main", b"v1", if_none_match=True)
    ...         return await store.get("refs/main", range=(0, 1))
    """

    capabilities: StoreCapabilities

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        """The object's bytes, or those in ``[start, end)`` of ``range``.

        A range reaching past the end returns what exists (``b""`` when it starts at or
        after the end). ``start > end`` or negative bounds raise ``ConfigError``. With
        ``max_bytes``, more bytes than that to return raise ``ObjectTooLarge`` before any
        is read (the size is the file's, or the answer's ``Content-Length``, and no byte
        past it is ever read): what every read of a repository object passes.
        """
        ...

    def open_read(
        self, key: str, range: tuple[int, int] | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open the object for a chunked read; ``reader.info`` carries its ETag.

        This is how a read-modify-write learns the ETag *of the bytes it read*::

            async with store.open_read(key) as r:
                data, etag = await r.read(), r.info.etag
            await store.put(key, change(data), if_match=etag)
        """
        ...

    async def head(self, key: str) -> ObjectInfo:
        """Size, ETag and mtime of the object; ``ObjectNotFound`` if absent."""
        ...

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        """Write the whole object atomically: readers see the old version or the new one.

        ``if_none_match=True`` writes only if no object exists (``If-None-Match: *``);
        ``if_match=etag`` only if the current object's ETag is ``etag`` (a missing object
        fails too). A lost condition raises ``PreconditionFailed`` and writes nothing.
        Both at once raise ``ConfigError``.
        """
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix, not a
        directory: ``"packs/a"`` matches ``packs/ab/…`` and ``packs/a1``), in ascending
        order of the keys' UTF-8 bytes, fetched page by page as the caller iterates.
        Objects written or deleted during the listing may or may not appear.
        """
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; keys that do not exist are fine. All keys are validated first."""
        ...

    async def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; returns its upload id."""
        ...

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        """Store part ``part_number`` (1-based); returns its ETag. Uploading a number again
        replaces that part."""
        ...

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Assemble ``parts`` ((part_number, etag), ascending) into the object, atomically and
        with ``put``'s conditions. A part that was not uploaded with that ETag, parts out of
        order, or a non-last part below ``min_part_size`` raise ``InvalidPart``. On
        ``PreconditionFailed`` the upload stays open: abort it (or retry).
        """
        ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts. Aborting an unknown upload raises ``UploadNotFound``."""
        ...

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """The parts uploaded so far, ascending by part number (a resumed upload starts here)."""
        ...

    async def list_multipart_uploads(self, prefix: str = "") -> builtins.list[UploadInfo]:
        """Uploads in progress whose key starts with ``prefix``, sorted by (key, initiated)."""
        ...

    async def close(self) -> None:
        """Release the store's resources; later calls raise ``StoreClosed``. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _check_part(key: object, part: str) -> None:
    if not part:
        raise InvalidKey(key, "empty parts ('//', a leading or trailing '/') are not allowed")
    if part in {".", ".."}:
        raise InvalidKey(key, "'.' and '..' parts are not allowed")
    if part.startswith(RESERVED_PREFIX):
        raise InvalidKey(key, f"parts starting with {RESERVED_PREFIX!r} are reserved for store internals")
    if len(part.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidKey(key, f"a part is longer than {MAX_PART_BYTES} UTF-8 bytes")


def _check_chars(key: object, s: str) -> None:
    if "\\" in s:
        raise InvalidKey(key, "backslashes are not allowed (use '/')")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise InvalidKey(key, "control characters (including NUL) are not allowed")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(key, "not valid UTF-8 (lone surrogate)") from None


def is_valid_part(name: str) -> bool:
    """Whether ``name`` may be one ``/``-separated part of a key (used to filter listings)."""
    try:
        _check_chars(name, name)
        _check_part(name, name)
    except InvalidKey:
        return False
    return "/" not in name


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``InvalidKey``.

    Rules: a non-empty ``str`` of at most 1024 UTF-8 bytes; ``/``-separated parts, none
    empty (no leading, trailing or doubled ``/``), none ``.`` or ``..``, none longer than 255
    bytes or starting with ``.se-``; no backslash, NUL or other control character.
    """
    if not isinstance(key, str):
        raise InvalidKey(key, f"keys are str, not {type(key).__name__}")
    if not key:
        raise InvalidKey(key, "the key is empty")
    _check_chars(key, key)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} UTF-8 bytes")
    for part in key.split("/"):
        _check_part(key, part)
    return key


def validate_prefix(prefix: str) -> tuple[str, str]:
    """Check a list prefix; return (its complete parts joined by ``/``, the trailing partial part).

    ``""`` lists everything. The parts before the last ``/`` follow the key rules; the
    last (partial) part is any text without ``/``, backslash or control characters.

    >>> validate_prefix("packs/ab")
    ('packs', 'ab')
    >>> validate_prefix("packs/")
    ('packs', '')
    """
    if not isinstance(prefix, str):
        raise InvalidKey(prefix, f"prefixes are str, not {type(prefix).__name__}")
    _check_chars(prefix, prefix)
    if len(prefix.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(prefix, f"longer than {MAX_KEY_BYTES} UTF-8 bytes")
    head, sep, partial = prefix.rpartition("/")
    if sep:
        for part in head.split("/"):
            _check_part(prefix, part)
    return head, partial


def body_size(body: Body) -> int:
    """The byte length of a request body (``TypeError`` for anything that is not a ``Body``)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return memoryview(body).nbytes
    if not isinstance(body, BodySource):
        raise TypeError(f"a body is bytes, bytearray, memoryview or a BodySource, not {type(body).__name__}")
    return body.size


def check_range(range: tuple[int, int] | None) -> None:
    """Raise ``ConfigError`` unless ``range`` is None or ``(start, end)`` with 0 <= start <= end."""
    if range is None:
        return
    start, end = range
    if start < 0 or end < start:
        raise ConfigError(f"byte range {range!r} is invalid: need 0 <= start <= end (end exclusive)")


def refuse_links(root: str, path: str, *, itself: bool = False) -> None:
    """Raises ``LinkInRepository`` if a folder between the local repository `root` and `path`
    (and, with `itself`, `path`) is a symbolic link; `root` itself may be one (the user chose
    it). Missing folders end the check: what mkdir makes next is a real folder. An lstat per
    level (2-4 for a key); a link planted between this check and the use is not caught
    (docs/SECURITY.md, "What remains")."""
    rel = path[len(root) + 1 :].split("/")
    cur = root
    for part in rel if itself else rel[:-1]:
        cur = f"{cur}/{part}"
        try:
            st = os.lstat(cur)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode):
            raise LinkInRepository(
                f"{cur} is a symbolic link inside the repository {root}; a local repository "
                "never follows one (a shared folder's writer could point it anywhere). Replace it "
                "with a real folder, or open the repository at its real path"
            )


def check_size(key: str, size: int, max_bytes: int | None) -> None:
    """Raise ``ObjectTooLarge`` when a read of ``size`` bytes of ``key`` exceeds ``max_bytes``
    (None: no cap). Every store calls it before it reads (or allocates for) a body."""
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(key, size, max_bytes)


async def read_capped(reader: ObjectReader, max_bytes: int) -> bytes:
    """The rest of a whole-object reader's content (``open_read`` without a range), refused
    with ``ObjectTooLarge`` before it is read when the object is larger than ``max_bytes``:
    the ``get(max_bytes=…)`` of a read-modify-write."""
    check_size(reader.info.key, reader.info.size, max_bytes)
    return await reader.read()


class StoreContext:
    """Mixin: ``async with store:`` closes the store on exit."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
