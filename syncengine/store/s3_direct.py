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
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import urlsplit

from multidict import CIMultiDict

from syncengine.store.aws_env import Proxy

#: The status line and headers must fit in this many bytes (S3 answers use about 600).
HEAD_MAX: Final = 64 << 10
#: Idle connections kept per endpoint.
MAX_IDLE: Final = 64
#: What no header name or value may hold (RFC 9110 §5.5: a field value never holds CR, LF or NUL).
_FORBIDDEN_IN_HEADER: Final = re.compile(r"[\r\n\x00]")


#: RFC 9112 §4: HTTP-version SP 3DIGIT SP [reason] (ASCII digits only).
_STATUS_LINE: Final = re.compile(r"(HTTP/1\.[01]) ([0-9]{3})(?: [^\r\n\x00]*)?\Z")
#: RFC 9112 §5: token ":" OWS value OWS. No whitespace before the colon; a line starting
#: with whitespace (obs-fold) fails to match, as does a bare CR, a LF or NUL anywhere.
_FIELD_LINE: Final = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\r\n\x00]*)\Z")


def _content_length(values: list[str]) -> int | None:
    """The body length the ``Content-Length`` fields state (None: none), or ``ValueError``:
    anything but ASCII digits (``int()`` would take ``+5``, `` 5_0`` or ``٣``), or fields,
    or list members, that disagree (RFC 9110 §8.6; equal duplicates are one value)."""
    found = {v.strip(" \t") for value in values for v in value.split(",")}
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"the answer states different lengths: Content-Length {', '.join(sorted(found))}")
    (length,) = found
    if not re.fullmatch(r"[0-9]{1,18}", length):
        raise ValueError(f"a malformed Content-Length: {length[:40]!r}")
    return int(length)


class DirectFailed(Exception):
    """This read cannot, or can no longer, be served by a direct connection."""


async def _tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A socket to ``proxy`` through which a ``CONNECT host:port`` is established, for TLS to
    run over. The proxy's answer is read byte by byte up to its blank line, so that not one
    byte of the tunnel is consumed here."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            if proxy.authorization is not None:
                lines.append(f"Proxy-Authorization: {proxy.authorization}")
            await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            answer = bytearray()
            while not answer.endswith(b"\r\n\r\n"):
                byte = await loop.sock_recv(sock, 1)
                if not byte or len(answer) >= HEAD_MAX:
                    raise OSError("the proxy closed the connection or sent no end of its answer")
                answer += byte
            status = answer.split(b"\r\n", 1)[0].split(b" ", 2)
            if len(status) < 2 or status[1] != b"200":
                raise OSError(f"the proxy refused CONNECT {authority}: {bytes(answer[:80])!r}")
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"cannot resolve the proxy {proxy.host}")


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
        status = _STATUS_LINE.match(lines[0])
        if status is None:
            self._fail(DirectFailed(f"not an HTTP status line: {lines[0][:80]!r}"))
            return
        version, self.status = status[1], int(status[2])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            field = _FIELD_LINE.match(line)
            if field is None:  # a bare CR or LF, NUL, obs-fold, space before the colon ...
                self._fail(DirectFailed(f"a malformed header line: {line[:80]!r}"))
                return
            headers.add(field[1], field[2].strip(" \t"))
        self.headers = headers
        try:
            self.length = _content_length(headers.getall("Content-Length", []))
        except ValueError as e:
            self._fail(DirectFailed(str(e)))
            return
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
    """The direct connections of one store (one event loop), kept alive between GETs: TLS
    checked with ``tls`` (else the system's trust store), through ``proxy`` when one is
    given (``aws_env.proxy_for``: an https endpoint through a CONNECT tunnel, an http one by
    absolute-form requests, as botocore's urllib3 does)."""

    def __init__(
        self,
        connect_timeout: float,
        user_agent: str,
        *,
        tls: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._ssl = tls
        self._proxy = proxy
        self._closed = False

    async def _connect(self, host: str, port: int, tls: bool) -> _Conn:
        loop = asyncio.get_running_loop()
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        proxy = self._proxy
        try:
            async with asyncio.timeout(self._connect_timeout):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        _Conn,
                        host,
                        port,
                        ssl=self._ssl if tls else None,
                        server_hostname=host if tls else None,
                    )
                elif tls:
                    sock = await _tunnel(proxy, host, port)
                    _, conn = await loop.create_connection(
                        _Conn, sock=sock, ssl=self._ssl, server_hostname=host
                    )
                else:
                    _, conn = await loop.create_connection(_Conn, proxy.host, proxy.port)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            via = f" through the proxy {proxy.url}" if proxy is not None else ""
            raise DirectFailed(f"cannot connect to {host}:{port}{via}: {e}") from e
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
        if self._proxy is not None and not tls:  # a plain request goes to the proxy: absolute-form
            lines[0] = f"{method} {parts.scheme}://{parts.netloc}{target} HTTP/1.1"
            if self._proxy.authorization is not None:
                lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        for k, v in headers.items():
            if _FORBIDDEN_IN_HEADER.search(f"{k}{v}") or not k or ":" in k:
                # An injected header is never the server's doing: no fallback, a clear error.
                raise ValueError(f"header {k!r} cannot be sent: CR, LF or NUL in it, or a colon in its name")
            lines.append(f"{k}: {v}")
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
