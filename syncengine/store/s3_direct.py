"""GETs whose body the kernel copies straight into the reader's buffer.

aiohttp hands a body over as ``bytes`` objects: the event loop copies what the socket
received into a new object, the HTTP parser copies each body piece out of that into
another, and a reader wanting one buffer joins them (a third copy). For a download, whose
bytes are nearly all pack ranges, those copies and the fresh allocations behind them were
about a third of its CPU time. So `S3Store` sends its GETs on connections of its own: an
asyncio ``BufferedProtocol`` that parses the status line and headers and then lends the
socket the reader's buffer (``readinto``), with one copy (the kernel's) per byte.

Only the plain answer is handled here: 200 or 206 with a ``Content-Length`` and no
transfer coding. Anything else, an error status, a connection that drops, stalls or
frames the body otherwise, raises `DirectFailed`, and the caller falls back to its aiohttp
path, whose retry policy, error mapping and resumption deal with it. A connection is kept
for the next GET only when its answer was read to the end and the server did not ask to
close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import urlsplit

from multidict import CIMultiDict

#: The status line and headers must fit in this many bytes (S3 answers use about 600).
HEAD_MAX: Final = 64 << 10
#: Idle connections kept per endpoint.
MAX_IDLE: Final = 64


class DirectFailed(Exception):
    """This read cannot, or can no longer, be served by a direct connection."""


class _Conn(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: a request at a time, the body read into lent buffers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._head = bytearray(HEAD_MAX)
        self._hview = memoryview(self._head)
        self._hfill = 0  # bytes in _head
        self._spill = 0  # _head[_spill:_hfill] are body bytes not handed over yet
        self._in_body = False
        self._waiter: asyncio.Future[None] | None = None
        self._target: memoryview | None = None
        self._tfill = 0
        self.progress = 0  # bytes received so far (a stall check compares it)
        #: Body bytes the socket still has to deliver.
        self.unread = 0
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.length: int | None = None
        self.reusable = False
        #: Why a read failed after it had received part of its buffer (raised next time).
        self.failure: DirectFailed | None = None
        #: (host, port, TLS) the connection goes to: its pool.
        self.where: tuple[str, int, bool] = ("", 0, False)
        self._head_only = False  # the request was a HEAD: no body, whatever Content-Length says

    # -- protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._in_body and self._target is not None:
            want = min(len(self._target) - self._tfill, self.unread)
            if want > 0:
                return self._target[self._tfill : self._tfill + want]
        if self._hfill == len(self._head):
            if self._spill < self._hfill:  # full of body bytes nobody has taken yet
                raise DirectFailed("more bytes than the answer announced")
            self._hfill = self._spill = 0
        return self._hview[self._hfill :]

    def buffer_updated(self, nbytes: int) -> None:
        self.progress += nbytes
        if self._in_body and self._target is not None and self._tfill < len(self._target) and self.unread:
            self._tfill += nbytes
            self.unread -= nbytes
            if self._tfill == len(self._target) or not self.unread:
                self._wake()
            return
        old = self._hfill
        self._hfill += nbytes
        if not self._in_body:
            if self._waiter is None:  # bytes nobody asked for: the connection is not ours to trust
                self.reusable = False
                return
            self._parse_head(max(0, old - 3))
        elif self.unread >= nbytes:  # body bytes that came while no buffer was lent
            self.unread -= nbytes
        else:
            self.reusable = False

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self._settle(DirectFailed(f"the connection was lost: {exc or 'closed by the server'}"))

    # -- request and answer ----------------------------------------------------------------------

    def _settle(self, failure: DirectFailed | None = None) -> None:
        """Ends the wait under way, if any: done, or failed with ``failure``."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)

    def _wake(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self._settle()

    def _parse_head(self, search_from: int) -> None:
        end = self._head.find(b"\r\n\r\n", search_from, self._hfill)
        if end < 0:
            if self._hfill == len(self._head):
                self._fail(DirectFailed(f"the answer's head is larger than {HEAD_MAX} bytes"))
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            self.status = int(code)
        except ValueError:
            self._fail(DirectFailed(f"not an HTTP status line: {lines[0][:80]!r}"))
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail(DirectFailed(f"a malformed header line: {line[:80]!r}"))
                return
            headers.add(name.strip(), value.strip())
        self.headers = headers
        length = headers.get("Content-Length")
        self.length = int(length) if length is not None and length.isdigit() else None
        if "Transfer-Encoding" in headers:  # it overrides any Content-Length (RFC 9112 §6.3)
            self.length = None
        if self._head_only or self.status in (204, 304):
            self.length = 0
        self.reusable = (
            version == "HTTP/1.1"
            and self.length is not None
            and "close" not in headers.get("Connection", "").lower()
        )
        self._spill = end + 4
        spilled = self._hfill - self._spill
        if self.length is not None:
            if spilled > self.length:
                self.reusable = False
                self._hfill = self._spill + self.length
                spilled = self.length
            self.unread = self.length - spilled
        self._in_body = True
        self._wake()

    def _fail(self, exc: DirectFailed) -> None:
        self.reusable = False
        self._settle(exc)
        if self.transport is not None:
            self.transport.close()

    async def _wait(self, stall: float) -> None:
        """Until the waiter is woken; DirectFailed after ``stall`` seconds without a byte."""
        waiter = self._waiter
        assert waiter is not None
        while True:
            seen = self.progress
            done, _ = await asyncio.wait([waiter], timeout=stall)
            if done:
                waiter.result()
                return
            if self.progress == seen:
                self._waiter = None
                waiter.cancel()
                raise DirectFailed(f"no byte came for {stall:g} s")

    async def send(self, request: bytes, stall: float, head_only: bool = False) -> None:
        """Sends a request and waits for the head of its answer (``head_only``: a HEAD)."""
        if self.lost or self.transport is None:
            raise DirectFailed("the connection is closed")
        loop = asyncio.get_running_loop()
        self._hfill = self._spill = self._tfill = 0
        self._in_body = False
        self._target = None
        self.status, self.length, self.unread, self.reusable = 0, None, 0, False
        self.failure = None
        self._head_only = head_only
        self._waiter = loop.create_future()
        self.transport.write(request)
        self.transport.resume_reading()
        await self._wait(stall)

    async def readinto(self, buf: memoryview, stall: float) -> int:
        """Body bytes into ``buf``: all of it unless the body ends first (0 at its end).
        A failure after part of ``buf`` came returns that part, and raises next time."""
        if self.failure is not None:
            raise self.failure
        n = min(len(buf), self._hfill - self._spill)
        if n:
            buf[:n] = self._hview[self._spill : self._spill + n]
            self._spill += n
        if n == len(buf) or not self.unread:
            return n
        if self.lost or self.transport is None:
            raise DirectFailed("the connection was lost")
        self._target, self._tfill = buf, n
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.resume_reading()
            await self._wait(stall)
        except DirectFailed as e:
            if self._tfill == 0:
                raise
            self.failure = e
        finally:
            self._target = None
            self._waiter = None
        return self._tfill

    @property
    def finished(self) -> bool:
        """The whole body was read and handed over."""
        return self._in_body and not self.unread and self._spill == self._hfill

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class DirectPool:
    """The direct connections of one store (one event loop), kept alive between GETs."""

    def __init__(self, connect_timeout: float, user_agent: str) -> None:
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def _connect(self, host: str, port: int, tls: bool) -> _Conn:
        loop = asyncio.get_running_loop()
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Conn, host, port, ssl=self._ssl if tls else None, server_hostname=host if tls else None
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise DirectFailed(f"cannot connect to {host}:{port}: {e}") from e
        conn.where = (host, port, tls)
        return conn

    async def get(self, url: str, headers: Mapping[str, str], stall: float, method: str = "GET") -> _Conn:
        """Sends ``GET url`` (or HEAD) with ``headers`` (signed, host included) and returns
        the connection with the answer's head read. Hand it back with `release` (or close it)."""
        if self._closed:
            raise DirectFailed("the store is closed")
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        assert method in ("GET", "HEAD")
        lines = [f"{method} {target} HTTP/1.1", f"User-Agent: {self._user_agent}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        while True:
            conn = self._take_idle((host, port, tls))
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, tls)
            try:
                await conn.send(request, stall, method == "HEAD")
            except DirectFailed:
                conn.close()
                if reused:
                    continue  # closed while idle: the next one, or a fresh one (a GET may be resent)
                raise
            except BaseException:
                conn.close()
                raise
            return conn

    def _take_idle(self, where: tuple[str, int, bool]) -> _Conn | None:
        idle = self._idle.get(where, [])
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return None

    def release(self, conn: _Conn) -> None:
        """Done with the answer: an intact connection is kept for the next GET."""
        idle = self._idle.setdefault(conn.where, [])
        if self._closed or not (conn.reusable and conn.finished) or conn.lost or len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()
