"""S3Store: the `ObjectStore` protocol over S3 and S3-compatible services (AWS, MinIO, SeaweedFS, R2 …).

One aiohttp ``ClientSession`` per store carries every request; each request is signed by
:mod:`syncengine.store.sigv4` using credentials from the standard AWS chain (botocore's,
resolved and refreshed in a worker thread, unless they are static: ``aws_env``), and runs
under the one retry policy of :mod:`syncengine.store.retry`. Keys live under ``prefix`` in
``bucket``. docs/S3.md describes configuration, the retry parameters, the payload-signing
choice and the errors.

>>> store = S3Store("my-bucket", "team/repo", endpoint_url="http://127.0.0.1:9000")
>>> store
S3Store('s3://my-bucket/team/repo/', endpoint='http://127.0.0.1:9000')
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import datetime
import functools
import hashlib
import heapq
import itertools
import logging
import os
import re
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, ParamSpec, TypeVar
from urllib.parse import unquote_plus, urlsplit

from syncengine._version import __version__
from syncengine.errors import (
    BodySizeMismatch,
    BucketNotFound,
    ConditionalWritesUnsupported,
    ConfigError,
    InvalidKey,
    InvalidPart,
    ObjectChanged,
    ObjectNotFound,
    PreconditionFailed,
    PreconditionFailedAfterRetry,
    StoreAccessDenied,
    StoreClosed,
    StoreRequestFailed,
    UploadNotFound,
)
from syncengine.store.aws_env import (
    Proxy,
    StaticCredentials,
    configured,
    proxy_for,
    settings,
    static_resolution,
    tls_context,
)
from syncengine.store.base import (
    RESERVED_PREFIX,
    S3_SIZE_LIMITS,
    Body,
    BodySource,
    HashedParts,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    StoreCapabilities,
    StoreContext,
    UploadInfo,
    check_range,
    check_size,
    validate_key,
    validate_prefix,
)
from syncengine.store.retry import (
    AttemptGuard,
    Retrier,
    RetryPolicy,
    TransferCounters,
    Transient,
    transient_from_exception,
    transient_from_status,
    transport_errors,
)
from syncengine.store.s3_direct import DirectFailed, DirectPool, _Conn
from syncengine.store.s3_urls import (
    _AWS_HOST,
    Addressing,
    _addressing_setting,
    _is_ip_or_localhost,
    choose_addressing,
    default_endpoint,
    object_url,
)
from syncengine.store.sigv4 import sign_v4

if TYPE_CHECKING:  # imported when first used (see S3Store._ready)
    import aiohttp

try:  # zlib-ng's CRC-32 (vectorized: ~27 GB/s here, zlib's ~3.5 GB/s); the same value
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; any zlib gives the same CRC
    from zlib import crc32 as _crc32

__all__ = ["S3Store", "choose_addressing", "default_endpoint", "object_url"]

log = logging.getLogger("syncengine.store.s3")

_P = ParamSpec("_P")
_T = TypeVar("_T")

ListStrategy = Literal["auto", "flat", "walk"]

#: User metadata naming one logical conditional write; a retry that finds the key taken
#: compares it to learn whether its own earlier attempt won (docs/S3.md).
WRITE_ID_HEADER: Final = "x-amz-meta-syncengine-write-id"
#: Bodies up to this size are sent as one buffer; larger ones in slices, so the stall
#: timer sees progress while a big body drains.
_SEND_SLICE: Final = 1 << 20
#: Hash bodies at most this large on the event loop (MD5 runs ~0.75 GB/s: ~85 µs).
_INLINE_HASH: Final = 64 << 10
#: XML bodies larger than this are parsed in a worker thread.
_INLINE_PARSE: Final = 64 << 10
_DELETE_BATCH: Final = 1000
_XML_DECL: Final = '<?xml version="1.0" encoding="UTF-8"?>'
_MAX_PAGE: Final = 1000
# Upload ids of S3 and its clones are URL-safe tokens; anything else cannot name an upload.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9._~=+-]{1,1024}\Z")
_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "InvalidSecurity",
        "AccountProblem",
        "RequestTimeTooSkewed",
        "MissingSecurityHeader",
        "InvalidClientTokenId",
        "ExpiredToken",
        "TokenRefreshRequired",
    }
)
_REGION_CODES: Final = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)


# ---- credentials -------------------------------------------------------------------------


class _Secret:
    """Holds a secret; its repr never shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


def _sign(method: str, url: str, headers: Mapping[str, str], creds: Any, region: str) -> dict[str, str]:
    """SigV4 with the payload left unsigned (docs/S3.md says why), by ``sigv4.sign_v4``: what
    botocore's signer computes, without importing it; ``creds`` are frozen credentials
    (botocore's or `StaticCredentials`)."""
    return sign_v4(
        method,
        url,
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        session_token=creds.token,
        region=region,
        headers=headers,
    )


class _Resolved(NamedTuple):
    region: str
    endpoint: str
    provider: Any  # botocore Credentials / RefreshableCredentials, or None
    source: str
    addressing: Addressing  # from the profile's ``s3 = addressing_style = ...``, else "auto"
    proxy: Proxy | None  # HTTP(S)_PROXY / NO_PROXY for the endpoint
    tls: ssl.SSLContext | None  # an https endpoint's (AWS_CA_BUNDLE / ca_bundle)


class _CredentialCache:
    """Frozen credentials for signing; refreshed (in a thread) when they near expiry."""

    def __init__(self, provider: Any, run: Callable[..., Any]) -> None:
        self._provider = provider
        self._run = run
        self._frozen: Any = None
        self._lock = asyncio.Lock()
        self._force = False

    def invalidate(self) -> None:
        self._force = True

    @property
    def access_key_id(self) -> str:
        """The access key id last used (not a secret: it names the key, for error messages)."""
        return str(getattr(self._frozen, "access_key", "") or "")

    def _needs_refresh(self) -> bool:
        if self._frozen is None or self._force:
            return True
        refresh_needed = getattr(self._provider, "refresh_needed", None)
        return bool(refresh_needed()) if refresh_needed is not None else False

    def _fetch(self, force: bool) -> Any:
        if force and hasattr(self._provider, "_protected_refresh"):
            with contextlib.suppress(Exception):  # botocore raises its own; keep the old ones
                self._provider._protected_refresh(is_mandatory=True)
        return self._provider.get_frozen_credentials()

    async def get(self) -> Any:
        if not self._needs_refresh():
            return self._frozen
        async with self._lock:
            if self._needs_refresh():
                force, self._force = self._force and self._frozen is not None, False
                self._frozen = await self._run(self._fetch, force)
        return self._frozen


def _network(endpoint: str, ca_bundle: str | None) -> tuple[Proxy | None, ssl.SSLContext | None]:
    """The proxy and the TLS context of the connections to ``endpoint`` (aws_env's rules)."""
    tls = tls_context(ca_bundle) if endpoint.startswith("https:") else None
    return proxy_for(endpoint), tls


def _proxy_auth(proxy: Proxy | None) -> aiohttp.BasicAuth | None:
    import aiohttp

    if proxy is None or proxy.authorization is None:
        return None
    return aiohttp.BasicAuth.decode(proxy.authorization)


async def _no_hidden_resend(
    req: aiohttp.ClientRequest, handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]
) -> aiohttp.ClientResponse:
    """aiohttp resends an idempotent request (PUT included) once, unseen, when a kept-alive
    connection drops. The retry policy must see every attempt: a hidden resend of a
    conditional PUT would hide that its first try may have been applied (docs/S3.md,
    "Retried conditional writes"). A drop re-raised as a plain ``ClientConnectionError``
    is not one aiohttp resends; a failed connect (nothing sent) stays what it is."""
    import aiohttp

    try:
        return await handler(req)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
        raise aiohttp.ClientConnectionError(f"{type(e).__name__}: {e}") from e


# ---- XML ---------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse_xml(body: bytes) -> ET.Element:
    # S3 may pad a long CompleteMultipartUpload answer with leading whitespace.
    return ET.fromstring(body.lstrip())


def _child_text(el: ET.Element, name: str) -> str:
    for child in el:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _children(el: ET.Element, name: str) -> Iterator[ET.Element]:
    return (child for child in el if _local(child.tag) == name)


def _iso_time(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _http_time(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return time.time()


def _unquote_etag(etag: str | None) -> str:
    etag = (etag or "").strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    return etag


def _content_length(headers: Mapping[str, str], what: str) -> int:
    """The size an answer states. S3 frames every object body (and HEAD) by Content-Length;
    an answer without one (a proxy that re-chunks) would otherwise read as an empty object."""
    value = headers.get("Content-Length")
    if value is None or not value.isascii() or not value.isdigit():
        raise StoreRequestFailed(
            f"{what}: the answer has no valid Content-Length ({value!r}); an S3 server always sends one "
            "(is a proxy re-encoding the answers?)"
        )
    return int(value)


def _version_header(headers: Mapping[str, str]) -> str | None:
    v = headers.get("x-amz-version-id")
    return v if v and v != "null" else None  # "null": written while versioning was off


def _lost_detail(cond: Mapping[str, str]) -> str:
    if "If-Match" in cond:
        return f"its ETag is not {cond['If-Match']} (another writer changed it, or it does not exist)"
    return "an object with this key already exists (create-if-absent)"


def _quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


class _Page(NamedTuple):
    objects: list[tuple[str, int, str, float]]  # (full key, size, etag, mtime)
    prefixes: list[str]
    next_token: str | None


def _parse_list_page(body: bytes) -> _Page:
    root = _parse_xml(body)
    url_encoded = _child_text(root, "EncodingType") == "url"

    def decode(text: str) -> str:
        return unquote_plus(text) if url_encoded else text

    objects = [
        (
            decode(_child_text(c, "Key")),
            int(_child_text(c, "Size") or 0),
            _unquote_etag(_child_text(c, "ETag")),
            _iso_time(_child_text(c, "LastModified")),
        )
        for c in _children(root, "Contents")
    ]
    prefixes = [decode(_child_text(p, "Prefix")) for p in _children(root, "CommonPrefixes")]
    truncated = _child_text(root, "IsTruncated") == "true"
    token = _child_text(root, "NextContinuationToken") if truncated else None
    return _Page(objects, prefixes, token or None)


#: An error answer's body on a direct connection is read up to this size (S3's are < 1 KiB).
_MAX_ERROR_BODY: Final = 64 << 10
#: Any other answer read whole (listings, multipart answers: a page of 1,000 keys of at most
#: 1 KiB each is ~1.5 MiB of XML) is refused past this size, so a server cannot make the
#: client buffer without bound. Object bodies are capped by the reader (``get``'s max_bytes).
_MAX_ANSWER_BODY: Final = 64 << 20


class _HttpError(Exception):
    """A non-retryable error answer, for the calling method to map to a domain error."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error_fields(body: bytes) -> tuple[str, str, dict[str, str]]:
    """(code, message, other fields) of an S3 ``<Error>`` body; empty strings if none."""
    if not body.strip():
        return "", "", {}
    try:
        root = _parse_xml(body)
    except ET.ParseError:
        return "", body[:200].decode("utf-8", "replace").strip(), {}
    if _local(root.tag) != "Error":
        return "", "", {}
    fields = {_local(c.tag): (c.text or "") for c in root}
    return fields.pop("Code", ""), fields.pop("Message", ""), fields


# ---- request bodies ----------------------------------------------------------------------


_END: Final = object()


def _next_chunk(it: Iterator[bytes | bytearray | memoryview]) -> object:
    """The next non-empty chunk of ``it`` as a byte memoryview, or ``_END``."""
    for chunk in it:
        mv = memoryview(chunk).cast("B")
        if mv.nbytes:
            return mv
    return _END


def _close_quietly(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):  # still running in another thread
            close()


class _Payload:
    """A request body that every attempt sends from its start."""

    def __init__(self, store: S3Store, body: Body, *, what: str) -> None:
        self._store = store
        self._what = what
        self.mismatch: BodySizeMismatch | None = None
        self.content_md5: str | None = None
        self.checksum_crc32: str | None = None
        self.parts: list[memoryview] | None = None
        self.buffer: memoryview | None = None
        self.source: BodySource | None = None
        if isinstance(body, HashedParts):  # in-memory parts: checksummed and sent as they are
            self.parts, self.size = body.parts, body.size
        elif isinstance(body, bytes | bytearray | memoryview):
            self.buffer = memoryview(body).cast("B")
            self.size = self.buffer.nbytes
        elif isinstance(body, BodySource):
            self.buffer = None
            self.source = body
            self.size = body.size
        else:
            raise TypeError(
                f"a body is bytes, bytearray, memoryview or a BodySource, not {type(body).__name__}"
            )
        if self.size < 0:
            raise BodySizeMismatch(f"{what}: the body declares a negative size ({self.size})")

    async def prepare(self, checksum: str = "md5") -> None:
        """Checksum an in-memory body for the server to verify (off the loop when large):
        ``md5`` → Content-MD5; ``crc32`` → x-amz-checksum-crc32 (≈ 5× cheaper than MD5; used
        for whole-object PUTs, where S3 accepts it without a checksum algorithm declared at
        upload creation, unlike UploadPart)."""
        pieces = [self.buffer] if self.buffer is not None else self.parts
        if pieces is None:
            return

        def compute() -> bytes:
            if checksum == "crc32":
                crc = 0
                for piece in pieces:
                    crc = _crc32(piece, crc)
                return crc.to_bytes(4, "big")
            md5 = hashlib.md5()
            for piece in pieces:
                md5.update(piece)
            return md5.digest()

        digest = compute() if self.size <= _INLINE_HASH else await self._store._run(compute)
        value = base64.b64encode(digest).decode()
        if checksum == "crc32":
            self.checksum_crc32 = value
        else:
            self.content_md5 = value

    def data(self, guard: AttemptGuard) -> bytes | memoryview | AsyncIterator[memoryview] | None:
        """The body for one attempt."""
        if self.buffer is not None:
            if self.buffer.nbytes <= _SEND_SLICE:
                self._store.counters.bytes_sent += self.buffer.nbytes
                return self.buffer if self.buffer.nbytes else None
            return self._slices(self.buffer, guard)
        if self.parts is not None:
            return self._part_slices(self.parts, guard) if self.size else None
        return self._stream(guard)

    async def _part_slices(self, parts: list[memoryview], guard: AttemptGuard) -> AsyncIterator[memoryview]:
        for part in parts:
            async for piece in self._slices(part, guard):
                yield piece

    async def _slices(self, buf: memoryview, guard: AttemptGuard) -> AsyncIterator[memoryview]:
        counters = self._store.counters
        for off in range(0, buf.nbytes, _SEND_SLICE):
            piece = buf[off : off + _SEND_SLICE]
            guard.progress()
            counters.bytes_sent += piece.nbytes
            yield piece

    def _fail(self, produced: str) -> BodySizeMismatch:
        self.mismatch = BodySizeMismatch(
            f"{self._what}: the body produced {produced} bytes but declared {self.size}; nothing was written"
        )
        return self.mismatch

    async def _stream(self, guard: AttemptGuard) -> AsyncIterator[memoryview]:
        assert self.source is not None
        run = self._store._run
        counters = self._store.counters
        it: Iterator[bytes | bytearray | memoryview] = await run(lambda: iter(self.source.chunks()))  # type: ignore[union-attr]
        try:
            total = 0
            while total < self.size:
                got = await run(_next_chunk, it)
                if got is _END:
                    raise self._fail(str(total))
                assert isinstance(got, memoryview)
                total += got.nbytes
                if total > self.size:
                    raise self._fail(f"at least {total}")
                if total == self.size and await run(_next_chunk, it) is not _END:
                    # Checked before the last bytes go out: a complete body would let the
                    # server store the object.
                    raise self._fail(f"more than {total}")
                for off in range(0, got.nbytes, _SEND_SLICE):
                    piece = got[off : off + _SEND_SLICE]
                    guard.progress()
                    counters.bytes_sent += piece.nbytes
                    yield piece
            if self.size == 0 and await run(_next_chunk, it) is not _END:
                raise self._fail("more than 0")
        finally:
            with contextlib.suppress(RuntimeError):  # the pool is gone (store closed)
                await run(_close_quietly, it)


# ---- uploads the store started (SeaweedFS quirks, retried completes) ------------------


def xml_escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (xml.sax.saxutils.escape, without importing
    it: it pulls in urllib.request and http.client, ~9 ms of every command's start-up)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _UploadState:
    __slots__ = ("parts", "write_id")

    def __init__(self, write_id: str) -> None:
        self.write_id = write_id
        self.parts: dict[int, tuple[str, int]] = {}  # number -> (etag, size) of the last upload


# ---- the reader --------------------------------------------------------------------------


class _S3Reader:
    """A GET being streamed. A dropped connection resumes with a ranged GET pinned to the
    ETag of the first answer (``If-Match``), so every byte comes from one version.

    The first answer usually comes on a direct connection (s3_direct), whose body
    ``readinto`` receives straight into the caller's buffer; when that connection fails,
    the rest comes through aiohttp, resumed as above."""

    def __init__(
        self,
        store: S3Store,
        key: str,
        info: ObjectInfo,
        resp: aiohttp.ClientResponse | None,
        pos: int,
        end: int,
        direct: _Conn | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._info = info
        self._resp = resp
        self._direct = direct
        self._pos = pos  # the object offset of the next byte received
        self._end = end
        self._left = memoryview(b"")  # received through aiohttp, not handed over yet
        if pos >= end:
            self._release()

    @property
    def info(self) -> ObjectInfo:
        return self._info

    @property
    def remaining(self) -> int:
        """Bytes of the body not handed over yet."""
        return len(self._left) + self._end - self._pos

    def close(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()

    async def _chunk(self) -> bytes:
        """The next piece of the body through aiohttp (b"" at the end), resuming after
        transient failures."""
        retrier: Retrier | None = None
        while self._pos < self._end:
            try:
                if self._resp is None:
                    if retrier is None:
                        retrier = self._store._retrier(f"GET {self._store._display(self._key)} (resumed)")
                    self._resp = await self._store._resume(
                        self._key, self._info, self._pos, self._end, retrier
                    )
                async with asyncio.timeout(self._store.retry_policy.stall_timeout):
                    data = await self._resp.content.readany()
            except Transient as failure:
                self.close()
                retrier = retrier or self._store._retrier(f"GET {self._store._display(self._key)} (resumed)")
                await retrier.backoff(failure)
                continue
            except transport_errors() as e:
                transient = transient_from_exception(e)
                self.close()
                if transient is None:
                    raise self._store._transport_failure(f"GET {self._store._display(self._key)}", e) from e
                retrier = retrier or self._store._retrier(f"GET {self._store._display(self._key)} (resumed)")
                await retrier.backoff(transient)
                continue
            if not data:
                self.close()
                cut = Transient(f"the body ended at byte {self._pos}, before byte {self._end}")
                retrier = retrier or self._store._retrier(f"GET {self._store._display(self._key)} (resumed)")
                await retrier.backoff(cut)
                continue
            if len(data) > self._end - self._pos:
                data = data[: self._end - self._pos]
            self._pos += len(data)
            self._store.counters.bytes_received += len(data)
            if self._pos >= self._end:
                self._release()
            return data
        return b""

    async def _direct_into(self, buf: memoryview) -> int:
        """Into ``buf`` from the direct connection; 0 once it failed (it is then closed, and
        the rest comes through ``_chunk``)."""
        conn = self._direct
        assert conn is not None
        try:
            n = await conn.readinto(buf[: self._end - self._pos], self._store.retry_policy.stall_timeout)
        except DirectFailed as e:
            log.debug("GET %s: direct connection failed at byte %d (%s); resuming", self._key, self._pos, e)
            self._store.counters.retries += 1
            self._direct = None
            conn.close()
            return 0
        if not n:  # the body ended early: resumed by _chunk
            self._direct = None
            conn.close()
            return 0
        self._pos += n
        self._store.counters.bytes_received += n
        if self._pos >= self._end:
            self._release()
        return n

    async def readinto(self, buf: memoryview) -> int:
        """Fills ``buf`` with the next bytes of the body, all of it unless the body ends
        first; returns how many (0 at the end)."""
        n = 0
        while n < len(buf):
            if self._left:
                take = min(len(self._left), len(buf) - n)
                buf[n : n + take] = self._left[:take]
                self._left = self._left[take:]
                n += take
                continue
            if self._pos >= self._end:
                break
            if self._direct is not None:
                n += await self._direct_into(buf[n:])
                continue
            self._left = memoryview(await self._chunk())
        return n

    async def _piece(self) -> bytes:
        if self._left:
            data, self._left = bytes(self._left), memoryview(b"")
            return data
        if self._direct is not None and self._pos < self._end:
            return await self._filled(min(self._end - self._pos, 1 << 20))
        return await self._chunk()

    async def _filled(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), through ``readinto``."""
        buf = bytearray(size)
        n = await self.readinto(memoryview(buf))
        return bytes(buf) if n == size else bytes(buf[:n])

    def _release(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.release()
        direct, self._direct = self._direct, None
        if direct is not None:
            self._store._release_direct(direct)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._piece()
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        if self._direct is not None and not self._left and self._pos < self._end:
            return await self._filled(self._end - self._pos)
        chunks: list[bytes] = []
        while chunk := await self._piece():
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


# ---- the store ---------------------------------------------------------------------------


class S3Store(StoreContext):
    """An object store in an S3 bucket, under a key prefix.

    >>> import asyncio
    >>> async def demo() -> bytes:
    ...     async with S3Store("bucket", "repo", endpoint_url="http://127.0.0.1:9000") as store:
    ...         await store.put("a/b", b"hello")
    ...         return await store.get("a/b", range=(1, 3))

    Configuration (docs/S3.md): ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL``, else AWS's regional endpoint); ``region`` (else ``AWS_REGION``,
    ``AWS_DEFAULT_REGION``, the profile's config, ``us-east-1``); ``addressing``
    (``"auto"``: virtual-hosted on AWS, path-style elsewhere); credentials from the standard
    AWS chain for ``profile`` unless ``access_key_id``/``secret_access_key`` are given;
    ``retry`` (default: `RetryPolicy.from_env()`); ``max_connections`` for parallel
    transfers; ``list_page_size`` (max-keys per listing request) and ``list_strategy``
    (``"flat"`` listings trust the server's key order, ``"walk"`` lists one directory level
    at a time and merges, for servers like SeaweedFS that do not list in UTF-8 order;
    ``"auto"`` = flat on AWS, walk elsewhere).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing: Addressing = "auto",
        profile: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 64,
        list_page_size: int = _MAX_PAGE,
        list_strategy: ListStrategy = "auto",
        max_workers: int = 8,
        direct_reads: bool | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not re.fullmatch(r"[A-Za-z0-9._-]{3,255}", bucket):
            raise ConfigError(f"S3 bucket name {bucket!r} is invalid (3-63 letters, digits, '.', '-')")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKey as e:
                raise ConfigError(f"S3 key prefix {prefix!r} is invalid: {e.reason}") from None
        if addressing not in ("auto", "path", "virtual"):
            raise ConfigError(f"addressing must be 'auto', 'path' or 'virtual', not {addressing!r}")
        # What can be known without I/O now; the rest (profile config, credentials) on first use.
        self._known = settings(region, endpoint_url, addressing)
        addressing = self._known.addressing
        if list_strategy not in ("auto", "flat", "walk"):
            raise ConfigError(f"list_strategy must be 'auto', 'flat' or 'walk', not {list_strategy!r}")
        if not 1 <= list_page_size <= _MAX_PAGE:
            raise ConfigError(f"list_page_size must be in 1..{_MAX_PAGE}, got {list_page_size}")
        if max_connections < 1 or max_workers < 1:
            raise ConfigError("max_connections and max_workers must be >= 1")
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError(
                "pass both access_key_id and secret_access_key, or neither (to use the AWS chain)"
            )
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.profile = profile
        if direct_reads is None:
            direct_reads = os.environ.get("SYNCENGINE_S3_DIRECT_READS", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        #: GETs on connections of the store's own (s3_direct); else all through aiohttp.
        self.direct_reads = direct_reads
        self._direct: DirectPool | None = None
        self.retry_policy = retry if retry is not None else RetryPolicy.from_env()
        self.counters = TransferCounters()
        self.capabilities = StoreCapabilities(
            conditional_put=True,
            conditional_cas=True,
            conditional_across_hosts=True,
            ranged_get=True,
            key_prefix_overlap=True,
            streamed_reads=True,
            **S3_SIZE_LIMITS,  # type: ignore[arg-type]
        )
        self._addressing_arg: Addressing = addressing
        self._list_strategy_arg: ListStrategy = list_strategy
        self._page_size = list_page_size
        self._max_connections = max_connections
        self._explicit: tuple[str, _Secret, _Secret | None] | None = None
        if access_key_id is not None and secret_access_key is not None:
            token = _Secret(session_token) if session_token else None
            self._explicit = (access_key_id, _Secret(secret_access_key), token)
        self._region_arg = self._known.region
        self._endpoint_arg = self._known.endpoint
        self.endpoint: str | None = self._endpoint_arg or (
            default_endpoint(self._region_arg) if self._region_arg else None
        )
        self.region: str | None = self._region_arg
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="syncengine-s3store")
        self._closed = False
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._creds: _CredentialCache | None = None
        self._cred_source = ""
        self._addressing: Literal["path", "virtual"] = "path"
        self._flat_listing = False
        self._setup_lock: asyncio.Lock | None = None
        self._proxy: Proxy | None = None
        self._tls: ssl.SSLContext | None = None
        self._uploads: dict[str, _UploadState] = {}

    def __repr__(self) -> str:
        where = self.endpoint or "AWS (region from the profile)"
        return f"S3Store('s3://{self.bucket}/{self.prefix}', endpoint={where!r})"

    # ---- plumbing -------------------------------------------------------------------------

    def _display(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        try:
            if self._closed:
                raise RuntimeError
            fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except RuntimeError:
            raise StoreClosed(f"{self!r} is closed; open a new store to keep using it") from None
        return await fut

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self!r} is closed; open a new store to keep using it")

    def _retrier(self, what: str) -> Retrier:
        return Retrier(
            self.retry_policy,
            what,
            counters=self.counters,
            hint=f"endpoint {self.endpoint or '(unresolved)'}",
        )

    def _resolve_static(self) -> _Resolved | None:
        """The resolution without botocore, where it is the chain's own answer: credentials
        given explicitly or in the environment (`aws_env.env_credentials`), no profile, the
        region known already and no `s3` settings in the config file to read; else None."""
        explicit = None
        if self._explicit is not None:
            akid, secret, token = self._explicit
            explicit = StaticCredentials(akid, secret.value, token.value if token else None, "explicit")
        static = static_resolution(self._known, self.profile, explicit)
        if static is None:
            return None
        creds = static.credentials
        return _Resolved(
            static.region,
            static.endpoint,
            creds,
            creds.method,
            "auto",
            *_network(static.endpoint, static.ca_bundle),
        )

    def _resolve_sync(self) -> _Resolved:
        """Region, endpoint and the credential provider: may read files or the network."""
        static = self._resolve_static()
        if static is not None:
            return static
        import botocore.session  # type: ignore[import-untyped]

        try:
            session = botocore.session.Session(profile=self.profile)
            region = self._region_arg or session.get_config_variable("region") or "us-east-1"
            if self._explicit is not None:
                from botocore.credentials import Credentials  # type: ignore[import-untyped]

                akid, secret, token = self._explicit
                provider = Credentials(akid, secret.value, token.value if token else None, method="explicit")
            else:
                provider = session.get_credentials()
            conf = configured(self._known, session.get_scoped_config(), session.full_config)
        except ConfigError:
            raise
        except Exception as e:  # botocore's ProfileNotFound, config parse errors, ...
            raise StoreAccessDenied(
                f"cannot load AWS credentials or settings for {self._display('')}: {type(e).__name__}: {e}"
            ) from None
        endpoint = conf.endpoint or default_endpoint(region)
        source = getattr(provider, "method", "") if provider is not None else ""
        style: Addressing = "auto"
        if self._addressing_arg == "auto":
            try:
                s3_config = session.get_scoped_config().get("s3")
            except Exception:  # a missing profile was reported above
                s3_config = None
            set_style = s3_config.get("addressing_style") if isinstance(s3_config, dict) else None
            if set_style is not None:
                style = _addressing_setting(set_style, "the AWS config's s3.addressing_style")
        return _Resolved(
            region, endpoint, provider, source or "unknown", style, *_network(endpoint, conf.ca_bundle)
        )

    async def _setup(self) -> None:
        """Region, endpoint, credentials and the direct connection pool, once per event loop
        (the aiohttp session comes later, with the first request that needs it)."""
        loop = asyncio.get_running_loop()
        if self._creds is not None and self._loop is loop:
            return
        self._check_open()
        if self._loop is not None and self._loop is not loop:
            if not self._loop.is_closed():
                raise ConfigError(f"{self!r} is in use by another event loop; use one store per event loop")
            # Its loop is gone (e.g. a second asyncio.run): its connections died with it.
            self._session, self._setup_lock, self._creds, self._direct = None, None, None, None
            self._loop = None
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if self._creds is not None:
                return
            r = await self._run(self._resolve_sync)
            if r.provider is None:
                profile = f"profile {self.profile!r}" if self.profile else "the default profile"
                raise StoreAccessDenied(
                    f"no AWS credentials found for {self._display('')} at {r.endpoint}: set "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure {profile} in the "
                    "shared credentials/config files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE), "
                    "or run where a container or instance role provides them"
                )
            self.region, self.endpoint = r.region, r.endpoint
            self._cred_source = r.source
            self._proxy, self._tls = r.proxy, r.tls
            wanted = self._addressing_arg if self._addressing_arg != "auto" else r.addressing
            self._addressing = choose_addressing(r.endpoint, self.bucket, wanted)
            host = urlsplit(r.endpoint).hostname or ""
            strategy = self._list_strategy_arg
            self._flat_listing = strategy == "flat" or (
                strategy == "auto" and bool(_AWS_HOST.search(host)) and not _is_ip_or_localhost(host)
            )
            self._loop = loop
            if self.direct_reads:
                self._direct = DirectPool(
                    self.retry_policy.connect_timeout, f"syncengine/{__version__}", tls=r.tls, proxy=r.proxy
                )
            self._creds = _CredentialCache(r.provider, self._run)

    async def _ready(self) -> aiohttp.ClientSession:
        """The aiohttp session (after `_setup`). aiohttp is imported here, not with the
        module: a command whose requests all went out direct (a `get`, `ls`) never loads it
        (≈ 0.13 s of start-up)."""
        await self._setup()
        if self._session is not None:
            return self._session
        import aiohttp

        connector = aiohttp.TCPConnector(
            ssl=self._tls if self._tls is not None else True,
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=30.0,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self.retry_policy.connect_timeout, sock_read=None
            ),
            headers={"User-Agent": f"syncengine/{__version__}"},
            skip_auto_headers=("Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            read_bufsize=1 << 20,
            cookie_jar=aiohttp.DummyCookieJar(),
            proxy=self._proxy.url if self._proxy is not None else None,
            proxy_auth=_proxy_auth(self._proxy),
            middlewares=(_no_hidden_resend,),
        )
        self._session = session
        return session

    def _url(self, full_key: str, query: Sequence[tuple[str, str | None]] = ()) -> str:
        assert self.endpoint is not None
        return object_url(self.endpoint, self.bucket, full_key, addressing=self._addressing, query=query)

    def _transport_failure(self, what: str, exc: BaseException) -> StoreRequestFailed:
        return StoreRequestFailed(
            f"{what} at {self.endpoint} failed: {type(exc).__name__}: {exc}; "
            "check the endpoint URL (scheme, host, port) and any TLS settings"
        )

    async def _send(
        self,
        method: str,
        full_key: str,
        *,
        what: str,
        query: Sequence[tuple[str, str | None]] = (),
        headers: Mapping[str, str] | None = None,
        payload: _Payload | None = None,
        retrier: Retrier | None = None,
        conditional: bool = False,
        stream: bool = False,
    ) -> tuple[int, Mapping[str, str], bytes, aiohttp.ClientResponse | None]:
        """One request under the retry policy: (status, headers, body, live response).

        2xx (and 206) answers return; with ``stream`` the body is left unread in the live
        response. Retryable failures are retried; access, bucket and region errors raise
        their domain error; any other error answer raises `_HttpError`.
        """
        await self._setup()
        assert self._creds is not None and self.region is not None
        url = self._url(full_key, query)
        if self._direct is not None and payload is None and not stream and method in ("GET", "HEAD"):
            answer = await self._send_direct(method, url, headers or {}, what, conditional)
            if answer is not None:
                return answer
        session = await self._ready()
        import yarl

        target = yarl.URL(url, encoded=True)
        retrier = retrier or self._retrier(what)
        base_headers = dict(headers or {})
        if payload is not None:
            base_headers["Content-Length"] = str(payload.size)
            if payload.content_md5 is not None:
                base_headers["Content-MD5"] = payload.content_md5
            if payload.checksum_crc32 is not None:
                base_headers["x-amz-checksum-crc32"] = payload.checksum_crc32
        elif method in ("PUT", "POST"):
            base_headers["Content-Length"] = "0"
        refreshed = False
        while True:
            self._check_open()
            try:
                async with retrier.attempt() as guard:
                    creds = await self._creds.get()
                    signed = _sign(method, url, dict(base_headers), creds, self.region)
                    data = payload.data(guard) if payload is not None else None
                    self.counters.requests += 1
                    try:
                        resp = await session.request(method, target, data=data, headers=signed)
                    except transport_errors() as e:
                        if payload is not None and payload.mismatch is not None:
                            raise payload.mismatch from None
                        t = transient_from_exception(e)
                        if t is None:
                            raise self._transport_failure(what, e) from e
                        raise t from e
                    except RuntimeError as e:
                        if session.closed:
                            raise StoreClosed(f"{self!r} was closed during {what}") from None
                        raise self._transport_failure(what, e) from e
                    guard.progress()
                    if resp.status < 300 and stream and method != "HEAD":
                        return resp.status, resp.headers, b"", resp
                    try:
                        body = await self._read_all(resp, guard)
                    except transport_errors() as e:
                        t = transient_from_exception(e)
                        if t is None:
                            raise self._transport_failure(what, e) from e
                        raise t from e
                    finally:
                        resp.release()
            except Transient as t:
                await retrier.backoff(t)
                continue
            if payload is not None and payload.mismatch is not None:
                raise payload.mismatch  # the server answered before the body was complete
            status = resp.status
            if status < 300:
                # CompleteMultipartUpload (and copies) can fail after a 200 has been sent.
                if method == "POST" and b"<Error>" in body:
                    code, message, _ = _error_fields(body)
                    if code:
                        t2 = transient_from_status(500, code, message, None)
                        if t2 is not None:
                            await retrier.backoff(t2)
                            continue
                        raise self._error(500, code, message, resp.headers, what, conditional)
                return status, resp.headers, body, None
            code, message, _fields = _error_fields(body)
            if code in ("ExpiredToken", "TokenRefreshRequired") and not refreshed:
                # Temporary credentials expired early (or the clock is off): fetch fresh ones once.
                refreshed = True
                self._creds.invalidate()
                await retrier.backoff(Transient(f"the server answered {status} {code}", maybe_applied=False))
                continue
            t3 = transient_from_status(status, code, message, resp.headers.get("Retry-After"))
            if t3 is not None:
                await retrier.backoff(t3)
                continue
            raise self._error(status, code, message, resp.headers, what, conditional)

    async def _read_all(self, resp: aiohttp.ClientResponse, guard: AttemptGuard) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            data = await resp.content.readany()
            if not data:
                break
            guard.progress()
            self.counters.bytes_received += len(data)
            total += len(data)
            if total > _MAX_ANSWER_BODY:
                raise StoreRequestFailed(
                    f"{resp.method} {resp.url.path}: the answer is larger than {_MAX_ANSWER_BODY} bytes; "
                    "not an S3 answer this client reads"
                )
            chunks.append(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str],
        what: str,
        conditional: bool,
    ) -> Exception:
        """The domain error of a non-retryable answer, or `_HttpError` for the caller to map."""
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if status == 403 or code in _ACCESS_DENIED_CODES:
            return StoreAccessDenied(f"{what}: {self._denied_reason(code or str(status))} ({where})")
        if code == "NoSuchBucket":
            return BucketNotFound(
                f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint}; create it "
                f"(syncengine init s3://{self.bucket}/{self.prefix} --create-bucket), or check the "
                "bucket name and the endpoint (AWS_ENDPOINT_URL / endpoint_url)"
            )
        if status in (301, 307) or code in _REGION_CODES:
            region = headers.get("x-amz-bucket-region") or "its region"
            hint = (
                f"the bucket is not in region {self.region!r}; pass region= (here: {region}) "
                "or set AWS_REGION"
            )
            return StoreRequestFailed(f"{what}: {status} {code}: {hint} ({where})")
        if conditional and (status == 501 or code == "NotImplemented"):
            return ConditionalWritesUnsupported(
                f"{what}: {self.endpoint} answered {status} {code or 'NotImplemented'} to a conditional "
                "write (If-None-Match: * / If-Match): this server lacks conditional writes, which "
                "version records and refs need to be safe with concurrent writers; use a server that "
                "supports them (AWS S3, MinIO, SeaweedFS, R2)"
            )
        return _HttpError(status, code, message, headers)

    def _denied_reason(self, code: str) -> str:
        akid = self._creds.access_key_id if self._creds is not None else ""
        key = f"access key id {akid!r}" if akid else "the access key id"
        creds = f"the credentials ({key}, from: {self._cred_source or 'unknown'})"
        if code == "SignatureDoesNotMatch":
            return (
                "SignatureDoesNotMatch: the server computed a different request signature; check that "
                f"the secret access key belongs to {key} (credentials from: {self._cred_source}) and "
                f"the region ({self.region!r})"
            )
        if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
            return f"{code}: the server does not know {key}; check it (credentials from: {self._cred_source})"
        if code in ("InvalidToken", "ExpiredToken"):
            return f"{code}: the session token of {creds} is invalid or expired; renew the credentials"
        if code == "RequestTimeTooSkewed":
            return (
                "RequestTimeTooSkewed: this machine's clock differs from the server's by more than "
                "15 minutes; fix the clock (NTP)"
            )
        return (
            f"{code}: access denied; check that {creds} may read, write and list this bucket "
            "(S3 also answers 403 instead of 404 for a missing key when s3:ListBucket is not allowed)"
        )

    def _unexpected(self, e: _HttpError, what: str) -> StoreRequestFailed:
        text = f"{e.status} {e.code}".rstrip() + (f": {e.message}" if e.message else "")
        return StoreRequestFailed(f"{what} at {self.endpoint} failed: {text}")

    # ---- reads ----------------------------------------------------------------------------

    def _info_from_headers(self, key: str, headers: Mapping[str, str], size: int) -> ObjectInfo:
        return ObjectInfo(
            key, size, _unquote_etag(headers.get("ETag")), _http_time(headers.get("Last-Modified"))
        )

    async def _head_full(self, key: str, full_key: str) -> tuple[ObjectInfo, Mapping[str, str]]:
        what = f"HEAD {self._display(key)}"
        try:
            _, headers, _, _ = await self._send("HEAD", full_key, what=what)
        except _HttpError as e:
            if e.status == 404:
                raise ObjectNotFound(key, repr(self)) from None
            raise self._unexpected(e, what) from None
        size = _content_length(headers, what)
        return self._info_from_headers(key, headers, size), headers

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        self._check_open()
        info, _ = await self._head_full(key, self.prefix + key)
        return info

    async def _open(self, key: str, range: tuple[int, int] | None) -> _S3Reader:
        full = self.prefix + key
        if range is not None and range[0] >= range[1]:
            info, _ = await self._head_full(key, full)
            return _S3Reader(self, key, info, None, 0, 0)
        headers = {"Range": f"bytes={range[0]}-{range[1] - 1}"} if range is not None else {}
        what = f"GET {self._display(key)}"
        try:
            if self.direct_reads:
                reader = await self._open_direct(key, full, range, headers, what)
                if reader is not None:
                    return reader
            status, h, _, resp = await self._send("GET", full, what=what, headers=headers, stream=True)
        except _HttpError as e:
            if e.status == 404:
                raise ObjectNotFound(key, repr(self)) from None
            if e.status == 416:  # the range starts at or after the end
                info, _ = await self._head_full(key, full)
                return _S3Reader(self, key, info, None, 0, 0)
            raise self._unexpected(e, what) from None
        assert resp is not None
        try:
            length = _content_length(h, what)
            if status == 206:
                m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", h.get("Content-Range", ""))
                if m is None:
                    raise StoreRequestFailed(f"{what}: a 206 answer without a usable Content-Range")
                start = int(m.group(1))
                total = int(m.group(3)) if m.group(3) != "*" else start + length
                end = start + length
            else:
                total = length
                start = 0
                end = length
                if range is not None:  # the server ignored Range: skip to the start
                    await self._skip(resp, min(range[0], length))
                    start = min(range[0], length)
                    end = min(range[1], length)
            info = self._info_from_headers(key, h, total)
        except BaseException:
            resp.close()
            raise
        return _S3Reader(self, key, info, resp, start, end)

    async def _open_direct(
        self, key: str, full: str, range: tuple[int, int] | None, headers: dict[str, str], what: str
    ) -> _S3Reader | None:
        """The GET on a direct connection (s3_direct). The plain answer (200, or 206 with a
        usable Content-Range) gives the reader; an error answer that is no use retrying
        raises what ``_send`` would (``_HttpError`` for the caller to map). None for the
        rest (a failed or stalled connection, a retryable error, a server that ignored the
        range, unusual framing): the caller's aiohttp path then sends the GET again and
        deals with whatever it gets, under the retry policy."""
        await self._setup()
        conn = await self._direct_request("GET", self._url(full), headers, what, False)
        if conn is None:
            return None
        h, length, status = conn.headers, conn.length, conn.status
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", h.get("Content-Range", "")) if status == 206 else None
        if status == 200 and range is None and length is not None:
            start, end, total = 0, length, length
        elif m is not None and range is not None and length and int(m.group(1)) == range[0]:
            start, end = range[0], range[0] + length
            total = int(m.group(3)) if m.group(3) != "*" else end
        else:
            conn.close()
            return None
        return _S3Reader(self, key, self._info_from_headers(key, h, total), None, start, end, direct=conn)

    async def _send_direct(
        self, method: str, url: str, headers: Mapping[str, str], what: str, conditional: bool
    ) -> tuple[int, Mapping[str, str], bytes, None] | None:
        """A bodiless GET or HEAD with its answer read whole, on a direct connection: what
        ``_send`` returns for a 2xx answer; an error answer no retry would change raises
        what ``_send`` raises. None for the rest, which ``_send`` then sends through aiohttp
        under the retry policy (as `_open_direct` does)."""
        conn = await self._direct_request(method, url, headers, what, conditional)
        if conn is None:
            return None
        body = await self._direct_body(conn, _MAX_ANSWER_BODY)  # larger: refused on the aiohttp path
        return None if body is None else (conn.status, conn.headers, body, None)

    async def _direct_request(
        self, method: str, url: str, headers: Mapping[str, str], what: str, conditional: bool
    ) -> _Conn | None:
        """The request signed and sent on a direct connection: the connection, its 2xx
        answer's head read; raises the error of an answer no retry would change; None (a
        retry counted) when the connection failed or the answer is worth another attempt,
        and for anything but a final answer."""
        assert self._direct is not None and self._creds is not None and self.region is not None
        try:
            creds = await self._creds.get()
            self.counters.requests += 1
            signed = _sign(method, url, headers, creds, self.region)
            conn = await self._direct.get(url, signed, self.retry_policy.stall_timeout, method=method)
        except DirectFailed as e:
            log.debug("%s: direct connection failed (%s); through aiohttp", what, e)
            self.counters.retries += 1
            return None
        if conn.status < 200:
            conn.close()
            return None
        if conn.status >= 300:
            error = await self._direct_error(conn, what, conditional)
            if error is None:
                self.counters.retries += 1
                return None
            raise error
        return conn

    async def _direct_body(self, conn: _Conn, limit: int | None = None) -> bytes | None:
        """The whole body of the answer on ``conn`` (the connection handed back), or None
        (closed) when it is not framed by a Content-Length, is over ``limit`` or fails."""
        length = conn.length
        if length is None or (limit is not None and length > limit):
            conn.close()
            return None
        body = bytearray(length)
        try:
            n = await conn.readinto(memoryview(body), self.retry_policy.stall_timeout) if length else 0
        except DirectFailed:
            n = -1
        if n != length:
            conn.close()
            return None
        self.counters.bytes_received += length
        self._release_direct(conn)
        return bytes(body)

    async def _direct_error(self, conn: _Conn, what: str, conditional: bool) -> Exception | None:
        """The error an error answer on a direct connection stands for; None when it is
        worth another attempt (or its body cannot be read), for the aiohttp path."""
        body = await self._direct_body(conn, _MAX_ERROR_BODY)
        if body is None:
            return None
        code, message, _ = _error_fields(body)
        if code in ("ExpiredToken", "TokenRefreshRequired") or transient_from_status(
            conn.status, code, message, conn.headers.get("Retry-After")
        ):
            return None
        return self._error(conn.status, code, message, conn.headers, what, conditional)

    def _release_direct(self, conn: _Conn) -> None:
        if self._direct is not None:
            self._direct.release(conn)
        else:
            conn.close()

    async def _skip(self, resp: aiohttp.ClientResponse, n: int) -> None:
        while n > 0:
            data = await resp.content.read(min(n, 1 << 20))
            if not data:
                return
            n -= len(data)

    async def _resume(
        self, key: str, info: ObjectInfo, pos: int, end: int, retrier: Retrier
    ) -> aiohttp.ClientResponse:
        """A ranged GET of ``[pos, end)`` of exactly the version ``info`` describes."""
        what = f"GET {self._display(key)} (resumed at byte {pos})"
        headers = {"Range": f"bytes={pos}-{end - 1}", "If-Match": _quote_etag(info.etag)}
        try:
            status, h, _, resp = await self._send(
                "GET", self.prefix + key, what=what, headers=headers, stream=True, retrier=retrier
            )
        except _HttpError as e:
            if e.status in (404, 412, 416):
                raise ObjectChanged(
                    f"{self._display(key)} was replaced or deleted while being read (ETag {info.etag!r}); "
                    "read it again"
                ) from None
            raise self._unexpected(e, what) from None
        assert resp is not None
        if status != 206 or _unquote_etag(h.get("ETag")) != info.etag:
            resp.close()
            raise ObjectChanged(
                f"{self._display(key)}: the server did not resume the read at byte {pos}; read it again"
            )
        return resp

    @contextlib.asynccontextmanager
    async def open_read(self, key: str, range: tuple[int, int] | None = None) -> AsyncIterator[_S3Reader]:
        validate_key(key)
        check_range(range)
        self._check_open()
        reader = await self._open(key, range)
        try:
            yield reader
        finally:
            reader.close()

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        validate_key(key)
        check_range(range)
        self._check_open()
        reader = await self._open(key, range)
        try:
            # The reader's end is the answer's Content-Length, and it never reads past it: a
            # body larger than the cap is refused here, before a byte of it is received.
            check_size(key, reader.remaining, max_bytes)
            return await reader.read()
        finally:
            reader.close()

    # ---- writes ---------------------------------------------------------------------------

    def _check_conditions(self, op: str, if_none_match: bool, if_match: str | None) -> dict[str, str]:
        if if_none_match and if_match is not None:
            raise ConfigError(f"{op}: if_none_match and if_match cannot be combined")
        if if_none_match:
            return {"If-None-Match": "*"}
        if if_match is not None:
            if not isinstance(if_match, str) or not if_match:
                raise ConfigError(f"{op}: if_match must be a non-empty ETag string")
            return {"If-Match": _quote_etag(if_match)}
        return {}

    async def _find_own_write(self, key: str, write_id: str) -> ObjectInfo | None:
        """The object, if its current version was written by the write ``write_id``."""
        try:
            info, headers = await self._head_full(key, self.prefix + key)
        except ObjectNotFound:
            return None
        return info if headers.get(WRITE_ID_HEADER) == write_id else None

    async def _lost_condition(
        self, key: str, retrier: Retrier, write_id: str | None, detail: str
    ) -> ObjectInfo:
        """A conditional write answered 412 (or NoSuchUpload): was it our own earlier attempt?"""
        if retrier.attempts > 1 and retrier.maybe_applied and write_id is not None:
            info = await self._find_own_write(key, write_id)
            if info is not None:
                log.info("%s: an earlier attempt of this write succeeded", self._display(key))
                return info
            raise PreconditionFailedAfterRetry(
                key,
                f"{detail}; an earlier attempt of this write failed in transit, so it may have been "
                "applied and then replaced by another writer",
            )
        raise PreconditionFailed(key, detail)

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        validate_key(key)
        cond = self._check_conditions("put", if_none_match, if_match)
        what = f"PUT {self._display(key)}"
        payload = _Payload(self, body, what=what)
        if payload.size > self.capabilities.max_put_size:
            raise ConfigError(
                f"put {key!r}: {payload.size} bytes exceed max_put_size ({self.capabilities.max_put_size}); "
                "use a multipart upload"
            )
        self._check_open()
        return await self._put_full(key, self.prefix + key, payload, cond, what)

    async def _put_full(
        self, key: str, full_key: str, payload: _Payload, cond: dict[str, str], what: str
    ) -> ObjectInfo:
        await payload.prepare("crc32")
        headers = dict(cond)
        write_id = uuid.uuid4().hex if cond else None
        if write_id is not None:
            headers[WRITE_ID_HEADER] = write_id
        retrier = self._retrier(what)
        try:
            _, h, _, _ = await self._send(
                "PUT",
                full_key,
                what=what,
                headers=headers,
                payload=payload,
                retrier=retrier,
                conditional=bool(cond),
            )
        except _HttpError as e:
            if cond and (e.status == 412 or (e.status == 404 and "If-Match" in cond)):
                detail = _lost_detail(cond)
                return await self._lost_condition(key, retrier, write_id, detail)
            raise self._unexpected(e, what) from None
        return ObjectInfo(key, payload.size, _unquote_etag(h.get("ETag")), _http_time(h.get("Date")))

    async def delete(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            raise TypeError("delete takes a sequence of keys, not one str")
        for key in keys:
            validate_key(key)
        self._check_open()
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _DELETE_BATCH):
            await self._delete_batch(unique[i : i + _DELETE_BATCH])

    async def _delete_batch(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        objects = "".join(f"<Object><Key>{xml_escape(self.prefix + k)}</Key></Object>" for k in keys)
        body = f"{_XML_DECL}<Delete><Quiet>true</Quiet>{objects}</Delete>".encode()
        what = f"DELETE {len(keys)} object(s) under {self._display('')}"
        payload = _Payload(self, body, what=what)
        await payload.prepare()
        try:
            _, _, resp_body, _ = await self._send(
                "POST", "", what=what, query=[("delete", None)], payload=payload
            )
        except _HttpError as e:
            raise self._unexpected(e, what) from None
        if b"<Error>" not in resp_body:
            return
        root = await self._parse(resp_body, _parse_xml)
        errors = [
            (_child_text(e, "Key"), _child_text(e, "Code"), _child_text(e, "Message"))
            for e in _children(root, "Error")
        ]
        errors = [e for e in errors if e[1] != "NoSuchKey"]
        if not errors:
            return
        key, code, message = errors[0]
        if code in _ACCESS_DENIED_CODES:
            raise StoreAccessDenied(
                f"{what}: {self._denied_reason(code)} (bucket {self.bucket!r} at {self.endpoint})"
            )
        raise StoreRequestFailed(f"{what}: {len(errors)} key(s) not deleted, e.g. {key!r}: {code}: {message}")

    async def _parse(self, body: bytes, parser: Callable[[bytes], _T]) -> _T:
        try:
            if len(body) <= _INLINE_PARSE:
                return parser(body)
            return await self._run(parser, body)
        except ET.ParseError as e:
            raise StoreRequestFailed(f"{self.endpoint} sent an unreadable XML answer: {e}") from None

    # ---- listing --------------------------------------------------------------------------

    async def _pages(self, full_prefix: str, delimiter: bool) -> AsyncIterator[_Page]:
        token: str | None = None
        what = f"LIST {self._display(full_prefix[len(self.prefix) :])}"
        while True:
            query: list[tuple[str, str | None]] = [("list-type", "2")]
            if token is not None:
                query.append(("continuation-token", token))
            if delimiter:
                query.append(("delimiter", "/"))
            query += [("encoding-type", "url"), ("max-keys", str(self._page_size)), ("prefix", full_prefix)]
            try:
                _, _, body, _ = await self._send("GET", "", what=what, query=query)
            except _HttpError as e:
                raise self._unexpected(e, what) from None
            page = await self._parse(body, _parse_list_page)
            yield page
            if page.next_token is None:
                return
            if page.next_token == token:
                raise StoreRequestFailed(f"{what}: the server repeated a continuation token; giving up")
            token = page.next_token

    def _object_info(self, full_key: str, size: int, etag: str, mtime: float) -> ObjectInfo | None:
        """The store-relative record of a listed object, or None if it is no valid key here."""
        if not full_key.startswith(self.prefix):
            return None
        key = full_key[len(self.prefix) :]
        try:
            validate_key(key)
        except InvalidKey:
            return None  # written by another tool, or a store internal (.se-*)
        return ObjectInfo(key, size, etag, mtime)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        validate_prefix(prefix)
        self._check_open()
        await self._setup()
        full = self.prefix + prefix
        source = self._list_flat(full) if self._flat_listing else self._walk(full)
        try:
            async for info in source:
                yield info
        finally:
            await source.aclose()

    async def _list_flat(self, full_prefix: str) -> AsyncGenerator[ObjectInfo, None]:
        last = b""
        async for page in self._pages(full_prefix, delimiter=False):
            for full_key, size, etag, mtime in page.objects:
                b = full_key.encode("utf-8", "surrogatepass")
                if b <= last:
                    raise StoreRequestFailed(
                        f"{self.endpoint} listed {full_key!r} after {last.decode('utf-8', 'replace')!r}, "
                        "out of UTF-8 order; use S3Store(..., list_strategy='walk') with this server"
                    )
                last = b
                info = self._object_info(full_key, size, etag, mtime)
                if info is not None:
                    yield info

    async def _walk(self, level_prefix: str) -> AsyncGenerator[ObjectInfo, None]:
        """List one directory level with ``delimiter=/`` and descend into subdirectories in
        UTF-8 order.

        Servers order a level by name, placing a subdirectory ``x/`` either at ``x`` (filer
        based servers) or at ``x/`` (AWS). In UTF-8 order ``x/…`` comes after ``x-…`` and
        ``x.…``, so a subdirectory waits in a heap until an entry sorting after it arrives;
        entries arrive in nondecreasing order of their name without the slash, which makes
        the merge exact and keeps the heap small.
        """
        pending: list[tuple[bytes, str]] = []  # (prefix as UTF-8, prefix) of subdirectories
        async for page in self._pages(level_prefix, delimiter=True):
            entries: list[tuple[bytes, int, str, Any]] = []
            for obj in page.objects:
                entries.append((obj[0].encode("utf-8", "surrogatepass"), 1, obj[0], obj))
            for p in page.prefixes:
                if not p.endswith("/") or not p.startswith(level_prefix):
                    continue
                name = p[:-1].rpartition("/")[2]
                if name.startswith(RESERVED_PREFIX) or not name:
                    continue  # store internals (the conditional-write probe), or an empty part
                entries.append((p[:-1].encode("utf-8", "surrogatepass"), 0, p, None))
            entries.sort(key=lambda e: (e[0], e[1]))
            for sort_key, kind, name, obj in entries:
                while pending and pending[0][0] < sort_key:
                    _, sub = heapq.heappop(pending)
                    async for info in self._walk(sub):
                        yield info
                if kind == 0:
                    heapq.heappush(pending, (name.encode("utf-8", "surrogatepass"), name))
                else:
                    found = self._object_info(*obj)
                    if found is not None:
                        yield found
        while pending:
            _, sub = heapq.heappop(pending)
            async for info in self._walk(sub):
                yield info

    # ---- multipart ------------------------------------------------------------------------

    def _check_upload_id(self, key: str, upload_id: str) -> None:
        if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
            raise UploadNotFound(key, str(upload_id))

    async def create_multipart(self, key: str) -> str:
        validate_key(key)
        self._check_open()
        what = f"CREATE UPLOAD {self._display(key)}"
        write_id = uuid.uuid4().hex
        try:
            _, _, body, _ = await self._send(
                "POST",
                self.prefix + key,
                what=what,
                query=[("uploads", None)],
                headers={WRITE_ID_HEADER: write_id},
            )
        except _HttpError as e:
            raise self._unexpected(e, what) from None
        upload_id = _child_text(await self._parse(body, _parse_xml), "UploadId")
        if not upload_id:
            raise StoreRequestFailed(f"{what}: the answer carries no UploadId")
        self._uploads[upload_id] = _UploadState(write_id)
        return upload_id

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        validate_key(key)
        caps = self.capabilities
        if not isinstance(part_number, int) or not 1 <= part_number <= caps.max_parts:
            raise InvalidPart(f"part number {part_number} is outside 1..{caps.max_parts}")
        what = f"PUT part {part_number} of {self._display(key)}"
        payload = _Payload(self, body, what=what)
        if payload.size > caps.max_part_size:
            raise InvalidPart(
                f"part {part_number} is {payload.size} bytes, above max_part_size ({caps.max_part_size})"
            )
        self._check_upload_id(key, upload_id)
        self._check_open()
        await payload.prepare()
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        try:
            _, h, _, _ = await self._send("PUT", self.prefix + key, what=what, query=query, payload=payload)
        except _HttpError as e:
            if e.code == "NoSuchUpload" or e.status == 404:
                raise UploadNotFound(key, upload_id) from None
            if e.code in ("InvalidPart", "InvalidArgument", "EntityTooLarge"):
                raise InvalidPart(f"{what}: {e.code}: {e.message}") from None
            raise self._unexpected(e, what) from None
        etag = _unquote_etag(h.get("ETag"))
        state = self._uploads.get(upload_id)
        if state is not None:
            state.parts[part_number] = (etag, payload.size)
        return etag

    async def _list_parts_raw(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        what = f"LIST PARTS {self._display(key)}"
        parts: builtins.list[PartInfo] = []
        marker = "0"
        while True:
            query: list[tuple[str, str | None]] = [("max-parts", "1000"), ("uploadId", upload_id)]
            if marker != "0":
                query.append(("part-number-marker", marker))
            try:
                _, _, body, _ = await self._send("GET", self.prefix + key, what=what, query=query)
            except _HttpError as e:
                if e.code == "NoSuchUpload" or e.status == 404:
                    raise UploadNotFound(key, upload_id) from None
                raise self._unexpected(e, what) from None
            root = await self._parse(body, _parse_xml)
            for p in _children(root, "Part"):
                parts.append(
                    PartInfo(
                        int(_child_text(p, "PartNumber")),
                        _unquote_etag(_child_text(p, "ETag")),
                        int(_child_text(p, "Size") or 0),
                    )
                )
            nxt = _child_text(root, "NextPartNumberMarker")
            if _child_text(root, "IsTruncated") != "true" or not nxt or nxt == marker:
                return parts
            marker = nxt

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        validate_key(key)
        self._check_upload_id(key, upload_id)
        self._check_open()
        raw = await self._list_parts_raw(key, upload_id)
        # Some servers (SeaweedFS) keep every upload of a part number; S3 keeps the last.
        # Prefer the version this store uploaded last, else the last one listed.
        state = self._uploads.get(upload_id)
        best: dict[int, PartInfo] = {}
        for p in raw:
            known = state.parts.get(p.part_number) if state is not None else None
            current = best.get(p.part_number)
            if current is not None and known is not None and current.etag == known[0]:
                continue
            best[p.part_number] = p
        return [best[n] for n in sorted(best)]

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        cond = self._check_conditions("complete_multipart", if_none_match, if_match)
        if not parts:
            raise InvalidPart("complete_multipart needs at least one part")
        numbers = [n for n, _ in parts]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise InvalidPart(f"parts must be in strictly ascending part-number order, got {numbers}")
        if numbers[0] < 1 or numbers[-1] > self.capabilities.max_parts:
            raise InvalidPart(f"part numbers must lie in 1..{self.capabilities.max_parts}")
        self._check_upload_id(key, upload_id)
        self._check_open()
        what = f"COMPLETE UPLOAD {self._display(key)}"
        state = self._uploads.get(upload_id)
        sizes: dict[int, int] = {}
        for n, etag in parts:
            known = state.parts.get(n) if state is not None else None
            if known is None:
                break
            if _unquote_etag(etag) != known[0]:
                # S3 rejects a replaced part's old ETag; some servers keep old parts, so the
                # store checks what it knows itself.
                raise InvalidPart(
                    f"part {n} was last uploaded with ETag {known[0]!r}, not {etag!r} (a part uploaded "
                    "again replaces the earlier upload)"
                )
            sizes[n] = known[1]
        if len(sizes) < len(parts):
            listed = {(p.part_number, p.etag): p.size for p in await self._list_parts_raw(key, upload_id)}
            for n, etag in parts:
                size = listed.get((n, _unquote_etag(etag)))
                if size is None:
                    raise InvalidPart(f"part {n} with ETag {etag!r} was not uploaded to {upload_id!r}")
                sizes[n] = size
        xml_parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{xml_escape(_quote_etag(_unquote_etag(etag)))}</ETag></Part>"
            for n, etag in parts
        )
        body = f"{_XML_DECL}<CompleteMultipartUpload>{xml_parts}</CompleteMultipartUpload>"
        payload = _Payload(self, body.encode(), what=what)
        await payload.prepare()
        retrier = self._retrier(what)
        write_id = state.write_id if state is not None else None
        try:
            _, h, resp_body, _ = await self._send(
                "POST",
                self.prefix + key,
                what=what,
                query=[("uploadId", upload_id)],
                headers=cond,
                payload=payload,
                retrier=retrier,
                conditional=bool(cond),
            )
        except _HttpError as e:
            if e.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
                raise InvalidPart(f"{what}: {e.code}: {e.message}") from None
            if e.code == "NoSuchUpload" or (e.status == 404 and e.code != "NoSuchKey"):
                if retrier.attempts > 1 and retrier.maybe_applied and write_id is not None:
                    info = await self._find_own_write(key, write_id)
                    if info is not None:  # our earlier attempt completed it
                        self._uploads.pop(upload_id, None)
                        return info
                raise UploadNotFound(key, upload_id) from None
            if cond and (e.status == 412 or (e.status == 404 and "If-Match" in cond)):
                detail = _lost_detail(cond)
                info = await self._lost_condition(key, retrier, write_id, detail)
                self._uploads.pop(upload_id, None)
                return info
            raise self._unexpected(e, what) from None
        self._uploads.pop(upload_id, None)
        etag = _unquote_etag(_child_text(await self._parse(resp_body, _parse_xml), "ETag") or h.get("ETag"))
        return ObjectInfo(key, sum(sizes.values()), etag, _http_time(h.get("Date")))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        validate_key(key)
        self._check_upload_id(key, upload_id)
        self._check_open()
        what = f"ABORT UPLOAD {self._display(key)}"
        # S3 answers 404 NoSuchUpload for an unknown upload; some servers answer 204 for
        # anything, so the store asks first (abort is rare: the extra request is cheap).
        query: list[tuple[str, str | None]] = [("max-parts", "1"), ("uploadId", upload_id)]
        try:
            await self._send("GET", self.prefix + key, what=what, query=query)
            await self._send("DELETE", self.prefix + key, what=what, query=[("uploadId", upload_id)])
        except _HttpError as e:
            if e.code == "NoSuchUpload" or e.status == 404:
                raise UploadNotFound(key, upload_id) from None
            raise self._unexpected(e, what) from None
        finally:
            self._uploads.pop(upload_id, None)

    async def list_multipart_uploads(self, prefix: str = "") -> builtins.list[UploadInfo]:
        validate_prefix(prefix)
        self._check_open()
        what = f"LIST UPLOADS {self._display(prefix)}"
        out: builtins.list[UploadInfo] = []
        key_marker = id_marker = ""
        while True:
            query: list[tuple[str, str | None]] = []
            if key_marker:
                query.append(("key-marker", key_marker))
            query += [("max-uploads", "1000"), ("prefix", self.prefix + prefix)]
            if id_marker:
                query.append(("upload-id-marker", id_marker))
            query.append(("uploads", None))
            try:
                _, _, body, _ = await self._send("GET", "", what=what, query=query)
            except _HttpError as e:
                raise self._unexpected(e, what) from None
            root = await self._parse(body, _parse_xml)
            url_encoded = _child_text(root, "EncodingType") == "url"
            for u in _children(root, "Upload"):
                full_key = _child_text(u, "Key")
                if url_encoded:
                    full_key = unquote_plus(full_key)
                info = self._object_info(full_key, 0, "", 0.0)
                if info is None:
                    continue
                out.append(
                    UploadInfo(info.key, _child_text(u, "UploadId"), _iso_time(_child_text(u, "Initiated")))
                )
            nk, ni = _child_text(root, "NextKeyMarker"), _child_text(root, "NextUploadIdMarker")
            if _child_text(root, "IsTruncated") != "true" or (nk, ni) == (key_marker, id_marker) or not nk:
                break
            key_marker, id_marker = nk, ni
        out.sort(key=lambda u: (u.key.encode("utf-8"), u.initiated, u.upload_id))
        return out

    # ---- the bucket ------------------------------------------------------------------------

    async def create_bucket(self) -> bool:
        """Creates the store's bucket (``CreateBucket``; in the store's region, named in a
        ``LocationConstraint`` unless it is ``us-east-1``, as S3 requires). True when created;
        False when it exists already and is yours (``BucketAlreadyOwnedByYou``), so calling
        it again is harmless. A name another account holds raises `StoreRequestFailed`."""
        await self._setup()
        what = f"CreateBucket {self.bucket!r} at {self.endpoint}"
        payload = None
        if self.region and self.region != "us-east-1":
            xml = (
                f'{_XML_DECL}<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{xml_escape(self.region)}</LocationConstraint></CreateBucketConfiguration>"
            )
            payload = _Payload(self, xml.encode(), what=what)
            await payload.prepare()
        try:
            await self._send("PUT", "", what=what, payload=payload)
        except _HttpError as e:
            if e.code == "BucketAlreadyOwnedByYou":
                return False
            if e.code == "BucketAlreadyExists":
                raise StoreRequestFailed(
                    f"{what}: the name {self.bucket!r} is taken (by another account: bucket names are "
                    "global on AWS); choose another"
                ) from None
            raise self._unexpected(e, what) from None
        return True

    # ---- capability probe -----------------------------------------------------------------

    async def check_conditional_writes(self) -> None:
        """Prove that the server honours conditional writes, or raise `ConditionalWritesUnsupported`.

        Writes, overwrites and deletes one small probe object under ``<prefix>.se-store/``
        (needs write and delete permission). A repository can call it once when it opens a
        store on an unfamiliar server; AWS S3, MinIO, SeaweedFS and R2 pass.
        """
        self._check_open()
        probe = f"{RESERVED_PREFIX}store/probe-{uuid.uuid4().hex}"
        full = self.prefix + probe
        what = f"conditional-write probe {self._display(probe)}"

        def unsupported(detail: str) -> ConditionalWritesUnsupported:
            return ConditionalWritesUnsupported(
                f"{self.endpoint} does not honour conditional writes ({detail}); version records and "
                "refs need them to be safe with concurrent writers: use a server that supports "
                "If-None-Match: * and If-Match on PUT"
            )

        try:
            first = await self._put_full(
                probe, full, _Payload(self, b"1", what=what), {"If-None-Match": "*"}, what
            )
            try:
                await self._put_full(
                    probe, full, _Payload(self, b"2", what=what), {"If-None-Match": "*"}, what
                )
            except PreconditionFailed:
                pass
            else:
                raise unsupported("a create-if-absent PUT replaced an existing object")
            stale = first.etag + "0"
            try:
                await self._put_full(
                    probe, full, _Payload(self, b"3", what=what), {"If-Match": _quote_etag(stale)}, what
                )
            except PreconditionFailed:
                pass
            else:
                raise unsupported("a PUT with a stale If-Match ETag succeeded")
            await self._put_full(
                probe, full, _Payload(self, b"4", what=what), {"If-Match": _quote_etag(first.etag)}, what
            )
        finally:
            with contextlib.suppress(Exception):
                await self._delete_batch_full([full])

    async def _delete_batch_full(self, full_keys: Sequence[str]) -> None:
        for fk in full_keys:
            with contextlib.suppress(_HttpError):
                await self._send("DELETE", fk, what=f"DELETE {fk}")

    # ---- objects other tools wrote (references: syncengine/repo/references.py) ---------

    def for_bucket(self, bucket: str) -> S3Store:
        """A store over another bucket (no prefix) with this store's endpoint, region,
        addressing, credentials, retry policy and listing page size."""
        twin = S3Store(
            bucket,
            endpoint_url=self._endpoint_arg,
            region=self._region_arg,
            addressing=self._addressing_arg,
            profile=self.profile,
            retry=self.retry_policy,
            list_page_size=self._page_size,
            list_strategy=self._list_strategy_arg,
        )
        twin._explicit = self._explicit
        return twin

    async def head_object(self, key: str, version_id: str | None = None) -> tuple[ObjectInfo, str | None]:
        """HEAD of any key below the prefix, also one `validate_key` refuses (objects other
        tools wrote), of one version when ``version_id`` is given: (info, the object's
        ``x-amz-version-id`` or None when the bucket has no versioning)."""
        self._check_open()
        what = f"HEAD {self._display(key)}" + (f" (version {version_id})" if version_id else "")
        query: list[tuple[str, str | None]] = [("versionId", version_id)] if version_id else []
        try:
            _, headers, _, _ = await self._send("HEAD", self.prefix + key, what=what, query=query)
        except _HttpError as e:
            if e.status in (400, 404):  # 400: a version id the bucket does not know
                raise ObjectNotFound(key, repr(self)) from None
            raise self._unexpected(e, what) from None
        size = _content_length(headers, what)
        return self._info_from_headers(key, headers, size), _version_header(headers)

    async def open_object(self, key: str, version_id: str | None = None) -> tuple[_S3Reader, str | None]:
        """A streamed GET of any key below the prefix (one version when ``version_id`` is
        given): (reader, its ``x-amz-version-id`` or None). The caller closes the reader; a
        dropped connection resumes pinned to the first answer's ETag."""
        self._check_open()
        what = f"GET {self._display(key)}" + (f" (version {version_id})" if version_id else "")
        query: list[tuple[str, str | None]] = [("versionId", version_id)] if version_id else []
        try:
            _, h, _, resp = await self._send("GET", self.prefix + key, what=what, query=query, stream=True)
        except _HttpError as e:
            if e.status in (400, 404):
                raise ObjectNotFound(key, repr(self)) from None
            raise self._unexpected(e, what) from None
        assert resp is not None
        try:
            length = _content_length(h, what)
            info = self._info_from_headers(key, h, length)
        except BaseException:
            resp.close()
            raise
        return _S3Reader(self, key, info, resp, 0, length), _version_header(h)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key (below the store prefix) starts with ``prefix``, keys as the
        server lists them (any characters, server order), one ListObjectsV2 page of
        ``list_page_size`` keys per request."""
        self._check_open()
        await self._setup()
        async for page in self._pages(self.prefix + prefix, delimiter=False):
            for full_key, size, etag, mtime in page.objects:
                yield ObjectInfo(full_key[len(self.prefix) :], size, etag, mtime)

    # ---- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        if session is not None:
            await session.close()
        self._pool.shutdown(wait=False)


def _structural_check(store: S3Store) -> ObjectStore:
    return store  # mypy proves S3Store satisfies the ObjectStore protocol
