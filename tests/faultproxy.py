"""A fault-injecting HTTP/1.1 reverse proxy for tests: it sits between an S3 client and a real server.

Requests and responses are relayed byte for byte and streamed both ways (the request head,
Host and every signed header go upstream exactly as the client sent them, so SigV4
signatures stay valid), over keep-alive connections, with `Expect: 100-continue` and
chunked bodies. Rules pick requests (method, path regex, query parameters, the nth match,
a seeded probability) and apply one fault to each: a TCP reset mid-body, a local error
answer (500, 503 SlowDown with Retry-After, 429 …), a stall, a truncated or corrupted
response, or extra latency. Counters and a per-request log let tests assert what moved.

The proxy runs its own event loop in a thread, so sync tests, async tests and child
processes can all use it; it binds only to 127.0.0.1. It never reads Authorization (it
forwards the head untouched) and redacts signatures from the query strings it logs::

    with S3TestServer() as srv, FaultProxy(srv.endpoint) as proxy:
        proxy.add_rule(Respond(503, retry_after=1), method="GET", nth=1)
        try:
            urllib.request.urlopen(proxy.url + "/")  # any client, pointed at proxy.url
        except urllib.error.HTTPError as e:
            assert (e.code, e.headers["Retry-After"]) == (503, "1")
        assert proxy.stats.faults == {"503": 1} and proxy.requests[0].upstream_status is None

As a process (benchmarks): ``python -m tests.faultproxy --upstream URL --port 0
--latency 0.02 --fault-rate 0.1 --seed 1`` prints its URL on the first line of stdout and,
when stopped (SIGTERM or SIGINT), its stats as one JSON line. See docs/TESTING.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_KINDS",
    "KINDS",
    "Corrupt",
    "Delay",
    "Fault",
    "FaultProxy",
    "ProxyStats",
    "RequestRecord",
    "Reset",
    "Respond",
    "Rule",
    "Stall",
    "Truncate",
]

# Largest piece read or written at once, and the StreamReader limit: a connection buffers at
# most a few of these per direction, whatever the body size.
_PIECE = 256 * 1024

Phase = Literal["request", "before_response", "response"]
Then = Literal["continue", "close", "reset"]
_PHASES = ("request", "before_response", "response")


# -- faults ---------------------------------------------------------------------------------
# `after` counts body bytes (chunked framing excluded); None means half the body when its
# length is known, else 0. A fault positioned past the end of a shorter body fires at its end.


@dataclass(frozen=True)
class Reset:
    """Cut the client's connection with a TCP RST (SO_LINGER 0) and drop the upstream one.

    phase "request": after `after` request-body bytes went upstream; "before_response": the
    upstream answered, the client gets nothing; "response": after the head and `after`
    response-body bytes (bytes the client had not read yet may be lost: that is what a RST does).
    """

    phase: Phase = "response"
    after: int | None = None

    def __post_init__(self) -> None:
        _check_phase(self.phase, _PHASES)
        _check_after(self.after)

    @property
    def label(self) -> str:
        return "reset" if self.phase == "response" else f"reset_{self.phase}"


@dataclass(frozen=True)
class Respond:
    """Answer `status` with an S3 XML error body without contacting the upstream.

    The request body is read and dropped first, unless the client waits for
    `100-continue`: then the answer says `Connection: close` and the connection ends.
    """

    status: int = 503
    code: str | None = None  # S3 error code; default by status (503 → SlowDown, 500 → InternalError)
    message: str | None = None
    retry_after: int | None = None  # seconds, sent as a Retry-After header
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # replaces the XML error body

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"Respond status must be 200..599, got {self.status}")

    @property
    def label(self) -> str:
        return str(self.status)


@dataclass(frozen=True)
class Stall:
    """Stop moving bytes for `seconds`, then continue, close (FIN) or reset (RST).

    phase "request": stop reading the request body after `after` bytes; "before_response":
    hold the upstream's answer; "response": stop after the head and `after` body bytes.
    """

    seconds: float = 1.0
    phase: Phase = "before_response"
    after: int | None = None
    then: Then = "continue"

    def __post_init__(self) -> None:
        _check_phase(self.phase, _PHASES)
        _check_after(self.after)
        if self.then not in ("continue", "close", "reset"):
            raise ValueError(f"Stall then must be continue, close or reset, got {self.then!r}")
        if self.seconds < 0:
            raise ValueError("Stall seconds must be >= 0")

    @property
    def label(self) -> str:
        return "stall"


@dataclass(frozen=True)
class Truncate:
    """Send the response head (with its real Content-Length) and `after` body bytes, then close."""

    after: int | None = None

    def __post_init__(self) -> None:
        _check_after(self.after)

    @property
    def label(self) -> str:
        return "truncate"


@dataclass(frozen=True)
class Corrupt:
    """Flip (XOR 0xFF) the body byte at offset `at` (None: the middle; clamped to the last byte)."""

    at: int | None = None
    phase: Literal["request", "response"] = "response"

    def __post_init__(self) -> None:
        _check_phase(self.phase, ("request", "response"))
        _check_after(self.at)

    @property
    def label(self) -> str:
        return "corrupt" if self.phase == "response" else "corrupt_request"


@dataclass(frozen=True)
class Delay:
    """Hold the request `seconds` before forwarding it (on top of the global latency)."""

    seconds: float = 0.02

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("Delay seconds must be >= 0")

    @property
    def label(self) -> str:
        return "delay"


Fault: TypeAlias = Reset | Respond | Stall | Truncate | Corrupt | Delay


def _check_phase(phase: str, allowed: Sequence[str]) -> None:
    if phase not in allowed:
        raise ValueError(f"phase must be one of {', '.join(allowed)}; got {phase!r}")


def _check_after(after: int | None) -> None:
    if after is not None and after < 0:
        raise ValueError("a body offset must be >= 0")


# Named faults for random_faults() and the CLI. Retry-After 0 keeps retrying clients fast.
KINDS: dict[str, Fault] = {
    "reset": Reset("response"),
    "reset_request": Reset("request"),
    "reset_before_response": Reset("before_response"),
    "500": Respond(500),
    "503": Respond(503, retry_after=0),
    "429": Respond(429, retry_after=0),
    "stall": Stall(1.0, "before_response", then="close"),
    "truncate": Truncate(),
    "corrupt": Corrupt(),
    "delay": Delay(0.1),
}
# Faults a correct retrying client survives without checking content and without long waits.
DEFAULT_KINDS = ("reset", "reset_request", "reset_before_response", "500", "503", "truncate")


# -- rules ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Rule:
    """Which requests get which fault; made by `FaultProxy.add_rule`.

    A request matches when `method` equals (case-insensitive), `path` (a regex) is found in
    the URL-decoded path (``/bucket/key``), and `query` holds: a parameter name that must be
    present (``"partNumber"``, ``"uploads"``) or a mapping of names to None (present) or a
    regex the value must fully match. `seen` counts matching requests; the rule fires on the
    ones whose ordinal is in `nth` (1-based; None: all), with `probability` drawn from its own
    RNG seeded with `seed`, at most `times` times. Several faults: one is picked by that RNG.
    """

    faults: tuple[Fault, ...]
    method: str | None = None
    path: str | None = None
    query: str | Mapping[str, str | None] | None = None
    nth: frozenset[int] | None = None
    probability: float = 1.0
    times: int | None = None
    seed: int | None = 0
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)
    _path_re: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.faults:
            raise ValueError("a rule needs at least one fault")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")
        self._path_re = re.compile(self.path) if self.path is not None else None
        self._rng.seed(self.seed)

    def _matches(self, method: str, path: str, params: Mapping[str, list[str]]) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self._path_re is not None and not self._path_re.search(path):
            return False
        if isinstance(self.query, str):
            return self.query in params
        if self.query is not None:
            for name, pattern in self.query.items():
                values = params.get(name)
                if values is None:
                    return False
                if pattern is not None and not any(re.fullmatch(pattern, v) for v in values):
                    return False
        return True

    def _candidate(self, method: str, path: str, params: Mapping[str, list[str]]) -> Fault | None:
        """Counts a matching request and returns the fault this rule would apply to it."""
        if not self._matches(method, path, params):
            return None
        self.seen += 1
        if self.nth is not None and self.seen not in self.nth:
            return None
        if self.times is not None and self.fired >= self.times:
            return None
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return None
        return self.faults[0] if len(self.faults) == 1 else self._rng.choice(self.faults)


# -- records --------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the proxy saw it. Byte counts are body bytes (heads and chunk framing excluded)."""

    n: int  # 1-based, in arrival order
    conn: int  # client connection number: equal for requests on one keep-alive connection
    method: str
    path: str  # URL-decoded
    query: str  # raw, with signatures redacted
    status: int | None = None  # status line the client got (None: none, e.g. a reset)
    upstream_status: int | None = None  # what the upstream answered (None: not forwarded)
    bytes_up: int = 0  # request-body bytes forwarded upstream
    bytes_down: int = 0  # response-body bytes forwarded to the client (or answered locally)
    fault: Fault | None = None
    delay: float = 0.0  # seconds the request was held before forwarding
    error: str | None = None  # an unplanned failure (client or upstream went away, bad HTTP)


@dataclass(frozen=True)
class ProxyStats:
    """Totals since start (or `reset_stats`); they equal the sums over the full request log."""

    requests: int
    connections: int
    bytes_up: int
    bytes_down: int
    faults: dict[str, int]  # by fault label ("reset", "503", "stall", …)


# -- HTTP/1.1 plumbing ----------------------------------------------------------------------


class _Aborted(Exception):
    """A fault ended the connection on purpose."""


class _BadMessage(ValueError):
    """Malformed HTTP from a peer."""


@dataclass
class _Head:
    raw: bytes
    start: tuple[str, str, str]
    headers: list[tuple[str, str]]  # (lower-case name, value)

    @classmethod
    def parse(cls, raw: bytes, *, request: bool) -> _Head:
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) == 2 and not request:  # "HTTP/1.1 200" without a reason phrase
            parts.append("")
        if len(parts) != 3 or not all(parts[:2]):
            raise _BadMessage(f"bad start line {lines[0][:100]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadMessage(f"bad header line {line[:100]!r}")
            headers.append((name.lower(), value.strip()))
        return cls(raw, (parts[0], parts[1], parts[2]), headers)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k == name for t in v.split(",")}

    def keep_alive(self, version: str) -> bool:
        conn = self.tokens("connection")
        return "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn

    def framing(self, *, no_body: bool, default_close: bool) -> tuple[str, int | None]:
        """("length", n) | ("chunked", None) | ("close", None): how the body ends."""
        if no_body:
            return "length", 0
        if "chunked" in self.tokens("transfer-encoding"):
            return "chunked", None
        cl = self.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise _BadMessage(f"bad Content-Length {cl[:40]!r}")
            return "length", int(cl)
        return ("close", None) if default_close else ("length", 0)


_SECRET_QUERY = re.compile(r"(?i)((?:^|&)(?:X-Amz-Signature|X-Amz-Security-Token|Signature)=)[^&]*")


def _redact(query: str) -> str:
    return _SECRET_QUERY.sub(r"\1REDACTED", query)


def _position(offset: int | None, length: int | None) -> int:
    if offset is not None:
        return offset
    return length // 2 if length else 0


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: SO_LINGER on with a zero timeout, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flush(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    """Hand everything written so far to the kernel (bounded wait: the peer may not be reading)."""
    writer.transport.set_write_buffer_limits(high=0)
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout):
            await writer.drain()
    writer.transport.set_write_buffer_limits()


class _Conn:
    """One client connection and the upstream connection paired with it (opened lazily)."""

    def __init__(self, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.n = n
        self.c_reader = reader
        self.c_writer = writer
        self.u_reader: asyncio.StreamReader | None = None
        self.u_writer: asyncio.StreamWriter | None = None
        self.record: RequestRecord | None = None
        self.aborted = False  # a fault ended the connection: errors that follow are expected

    async def upstream(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.u_reader is not None and self.u_writer is not None:
            if not (self.u_writer.is_closing() or self.u_reader.at_eof()):
                return self.u_reader, self.u_writer
            self.drop_upstream()
        self.u_reader, self.u_writer = await asyncio.open_connection(host, port, limit=_PIECE)
        return self.u_reader, self.u_writer

    def drop_upstream(self) -> None:
        if self.u_writer is not None:
            _rst(self.u_writer)
        self.u_reader = self.u_writer = None

    def reset(self) -> None:
        _rst(self.c_writer)
        self.drop_upstream()

    def close(self) -> None:
        """Graceful for the client (buffered bytes go out, then FIN); the upstream is dropped."""
        self.c_writer.close()
        self.drop_upstream()


class _Flow:
    """One body on its way (up: client → upstream, down: upstream → client).

    Counts payload bytes, writes them to `dst` (None: drop them), flips the byte a Corrupt
    fault names, and fires a Reset/Stall/Truncate at its position.
    """

    def __init__(
        self,
        proxy: FaultProxy,
        conn: _Conn,
        up: bool,
        dst: asyncio.StreamWriter | None,
        fault: Fault | None,
        length: int | None,
    ) -> None:
        self.proxy = proxy
        self.conn = conn
        self.up = up
        self.dst = dst
        self.fault = fault
        self.pos = 0
        self.trigger: int | None = None
        self.flip: int | None = None
        if isinstance(fault, Corrupt):
            self.flip = _position(fault.at, length)
            if length:
                self.flip = min(self.flip, length - 1)
        elif isinstance(fault, Reset | Stall | Truncate):
            self.trigger = _position(fault.after, length)

    async def data(self, chunk: bytes) -> None:
        while chunk:
            if self.trigger is not None and self.pos >= self.trigger:
                await self.fire()
            n = len(chunk) if self.trigger is None else self.trigger - self.pos
            piece, chunk = chunk[:n], chunk[n:]
            if self.flip is not None and self.pos <= self.flip < self.pos + len(piece):
                i = self.flip - self.pos
                piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
                self.flip = None
            self.pos += len(piece)
            if self.dst is not None:
                self.proxy._count(self.conn.record, self.up, len(piece))
                self.dst.write(piece)
                await self.dst.drain()

    async def raw(self, framing: bytes) -> None:
        if self.dst is not None:
            self.dst.write(framing)
            await self.dst.drain()

    async def end(self) -> None:
        if self.trigger is not None:
            await self.fire()

    async def fire(self) -> None:
        self.trigger = None
        assert self.fault is not None and self.dst is not None
        await _fire(self.conn, self.fault, self.dst)


async def _fire(conn: _Conn, fault: Fault, dst: asyncio.StreamWriter) -> None:
    """Applies a Reset, Stall or Truncate now; raises _Aborted unless the connection goes on."""
    conn.aborted = True  # set first: stop() may cancel a stall, and the other side sees errors at once
    if isinstance(fault, Stall):
        await _flush(dst)
        await asyncio.sleep(fault.seconds)
        if fault.then == "continue":
            conn.aborted = False
            return
        if fault.then == "close":
            conn.close()
        else:
            conn.reset()
    elif isinstance(fault, Truncate):
        conn.close()
    elif isinstance(fault, Reset):
        await _flush(dst)
        conn.reset()
    raise _Aborted(fault.label)


async def _copy_exactly(src: asyncio.StreamReader, n: int, flow: _Flow) -> None:
    while n > 0:
        data = await src.read(min(n, _PIECE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await flow.data(data)


async def _copy_body(src: asyncio.StreamReader, framing: str, length: int | None, flow: _Flow) -> None:
    if framing == "length":
        await _copy_exactly(src, length or 0, flow)
    elif framing == "chunked":
        while True:
            line = await src.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadMessage(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise _BadMessage(f"bad chunk size line {line[:40]!r}")
            await flow.raw(line)
            if size == 0:
                break
            await _copy_exactly(src, size, flow)
            await flow.raw(await src.readexactly(2))
        while True:  # trailer fields, then the empty line that ends the message
            line = await src.readuntil(b"\r\n")
            await flow.raw(line)
            if line == b"\r\n":
                break
    else:  # the body runs until the sender closes
        while data := await src.read(_PIECE):
            await flow.data(data)
    await flow.end()


_S3_ERRORS = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    409: ("OperationAborted", "A conflicting conditional operation is currently in progress."),
    412: ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold"),
    429: ("TooManyRequests", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "faultproxy: the upstream is unreachable"),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "The server did not respond in time."),
}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Fault"


def _s3_error_xml(code: str, message: str, resource: str, request_id: str) -> bytes:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{esc(code)}</Code><Message>{esc(message)}</Message>"
        f"<Resource>{esc(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


# -- the proxy ------------------------------------------------------------------------------


class FaultProxy:
    """A loopback reverse proxy in front of `upstream` (``http://host:port``) that injects faults.

    Every method is thread-safe; rules and latency can change while requests run::

        with FaultProxy("http://127.0.0.1:8333") as proxy:
            proxy.add_rule(Reset("request", after=1 << 20), method="PUT", nth=1)
            ...  # point the client at proxy.url
            assert proxy.requests[0].fault == Reset("request", after=1 << 20)
    """

    def __init__(
        self, upstream: str, *, port: int = 0, latency: float = 0.0, log_limit: int | None = None
    ) -> None:
        u = urlsplit(upstream)
        if u.scheme != "http" or not u.hostname or u.path not in ("", "/"):
            raise ValueError(f"upstream must look like http://host:port, got {upstream!r}")
        self.upstream = upstream
        self._up_host = u.hostname
        self._up_port = u.port or 80
        self._want_port = port
        self.port = 0
        self._latency = latency
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: deque[RequestRecord] = deque(maxlen=log_limit)
        self._n = self._conns = self._bytes_up = self._bytes_down = 0
        self._faults: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def stop(self) -> None:
        """Closes the listener and every connection (stalled ones too) and ends the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._start_error = e
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", self._want_port, limit=_PIECE)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # -- faults -------------------------------------------------------------------------

    def add_rule(
        self,
        fault: Fault | Sequence[Fault],
        *,
        method: str | None = None,
        path: str | None = None,
        query: str | Mapping[str, str | None] | None = None,
        nth: int | Collection[int] | None = None,
        probability: float = 1.0,
        times: int | None = None,
        seed: int | None = 0,
    ) -> Rule:
        """Adds a rule after the existing ones; see `Rule`. The first rule that fires wins,
        but every rule counts the requests it matches (so `nth` means "the nth PUT" even if
        another rule faulted an earlier one)."""
        faults = tuple(fault) if isinstance(fault, Sequence) else (fault,)
        rule = Rule(
            faults,
            method=method,
            path=path,
            query=query,
            nth=frozenset([nth] if isinstance(nth, int) else nth) if nth is not None else None,
            probability=probability,
            times=times,
            seed=seed,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def set_latency(self, seconds: float) -> None:
        """Holds every request `seconds` before forwarding it (a real S3 round trip is ~20 ms)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = seconds

    def random_faults(
        self,
        rate: float,
        *,
        seed: int | None = 0,
        kinds: Sequence[str | Fault] = DEFAULT_KINDS,
        method: str | None = None,
        path: str | None = None,
        query: str | Mapping[str, str | None] | None = None,
    ) -> Rule:
        """Faults about `rate` of the matching requests, each with a fault drawn from `kinds`
        (names from `KINDS` or Fault objects). The same seed and request sequence give the
        same faults."""
        faults = []
        for k in kinds:
            if isinstance(k, str):
                if k not in KINDS:
                    raise ValueError(f"unknown fault kind {k!r}; known: {', '.join(KINDS)}")
                faults.append(KINDS[k])
            else:
                faults.append(k)
        return self.add_rule(faults, method=method, path=path, query=query, probability=rate, seed=seed)

    # -- counters -----------------------------------------------------------------------

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(self._n, self._conns, self._bytes_up, self._bytes_down, dict(self._faults))

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (the last `log_limit` requests)."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._log]

    def reset_stats(self) -> None:
        """Zeroes the counters and empties the log (rules keep their own counts)."""
        with self._lock:
            self._log.clear()
            self._n = self._conns = self._bytes_up = self._bytes_down = 0
            self._faults.clear()

    def _count(self, record: RequestRecord | None, up: bool, n: int) -> None:
        with self._lock:
            if up:
                self._bytes_up += n
            else:
                self._bytes_down += n
            if record is not None:
                if up:
                    record.bytes_up += n
                else:
                    record.bytes_down += n

    def _begin(self, conn: _Conn, head: _Head) -> tuple[RequestRecord, Fault | None]:
        method, target = head.start[0], head.start[1]
        u = urlsplit(target)  # origin-form ("/b/k?x") or absolute-form
        path, query = unquote(u.path), u.query
        params = parse_qs(query, keep_blank_values=True)
        with self._lock:
            fault: Fault | None = None
            winner: Rule | None = None
            for rule in self._rules:
                candidate = rule._candidate(method, path, params)
                if candidate is not None and fault is None:
                    fault, winner = candidate, rule
            if winner is not None:
                winner.fired += 1
            self._n += 1
            record = RequestRecord(self._n, conn.n, method, path, _redact(query), fault=fault)
            record.delay = self._latency + (fault.seconds if isinstance(fault, Delay) else 0.0)
            if fault is not None:
                self._faults[fault.label] = self._faults.get(fault.label, 0) + 1
            self._log.append(record)
        conn.record = record
        return record, fault

    # -- serving ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._conns += 1
            conn = _Conn(self._conns, reader, writer)
        try:
            while await self._exchange(conn):
                conn.record = None
        except (_Aborted, asyncio.CancelledError):  # CancelledError: stop(); ending quietly is the point
            pass
        except Exception as e:  # a peer went away or spoke bad HTTP: end this connection only
            if not conn.aborted and conn.record is not None and conn.record.error is None:
                conn.record.error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
            self._tasks.discard(task)

    async def _exchange(self, conn: _Conn) -> bool:
        """Relays one request and its response; False when the connection must end."""
        try:
            raw = await conn.c_reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed its connection between requests
        req = _Head.parse(raw, request=True)
        method, version = req.start[0], req.start[2]
        framing, length = req.framing(no_body=False, default_close=False)
        record, fault = self._begin(conn, req)
        if record.delay:
            await asyncio.sleep(record.delay)
        if isinstance(fault, Respond):
            return await self._answer_locally(conn, req, framing, length, fault)

        try:
            up_reader, up_writer = await conn.upstream(self._up_host, self._up_port)
        except OSError as e:
            record.error = f"upstream unreachable: {e}"
            await self._answer_locally(conn, req, framing, length, Respond(502), close=True)
            return False
        up_writer.write(raw)
        up_fault = fault if fault is not None and getattr(fault, "phase", None) == "request" else None
        pump = asyncio.create_task(
            _copy_body(conn.c_reader, framing, length, _Flow(self, conn, True, up_writer, up_fault, length))
        )
        pump.add_done_callback(lambda t: self._pump_done(conn, t))
        try:
            resp = await self._final_head(conn, up_reader)
            status = int(resp.start[1])
            record.upstream_status = status
            no_body = method == "HEAD" or status in (204, 304)
            r_framing, r_length = resp.framing(no_body=no_body, default_close=True)
            if isinstance(fault, Reset | Stall) and fault.phase == "before_response":
                await _fire(conn, fault, conn.c_writer)
            record.status = status
            conn.c_writer.write(resp.raw)
            down_fault = (
                fault if isinstance(fault, Truncate) or getattr(fault, "phase", None) == "response" else None
            )
            flow = _Flow(self, conn, False, conn.c_writer, down_fault, r_length)
            await _copy_body(up_reader, r_framing, r_length, flow)
        finally:
            body_sent = pump.done() and not pump.cancelled() and pump.exception() is None
            if not pump.done():  # an early answer: the client may never send the rest
                pump.cancel()
            await asyncio.wait([pump])
        return (
            body_sent and r_framing != "close" and req.keep_alive(version) and resp.keep_alive(resp.start[0])
        )

    def _pump_done(self, conn: _Conn, task: asyncio.Task[None]) -> None:
        # A request body that failed (client gone, bad framing, a fault) leaves the upstream
        # waiting for bytes that never come: drop it so the response side wakes up.
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not conn.aborted and conn.record is not None and conn.record.error is None:
                conn.record.error = f"request body: {type(exc).__name__}: {exc}"
            conn.drop_upstream()

    async def _final_head(self, conn: _Conn, up_reader: asyncio.StreamReader) -> _Head:
        """Reads the upstream's answer, relaying interim 1xx heads (100 Continue) to the client."""
        while True:
            try:
                raw = await up_reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                raise _BadMessage("the upstream closed the connection before answering") from e
            head = _Head.parse(raw, request=False)
            status = head.start[1]
            if not status.isdigit():
                raise _BadMessage(f"bad status {status[:20]!r}")
            if not status.startswith("1"):
                return head
            if status == "101":
                raise _BadMessage("protocol upgrades are not supported")
            conn.c_writer.write(raw)
            await conn.c_writer.drain()

    async def _answer_locally(
        self,
        conn: _Conn,
        req: _Head,
        framing: str,
        length: int | None,
        fault: Respond,
        *,
        close: bool = False,
    ) -> bool:
        method, target, version = req.start
        waits_for_continue = "100-continue" in req.tokens("expect")
        keep = not close and not waits_for_continue and req.keep_alive(version)
        if keep:  # read the body the answer makes moot, so the connection can carry the next request
            await _copy_body(conn.c_reader, framing, length, _Flow(self, conn, True, None, None, length))
        record = conn.record
        n = record.n if record is not None else 0
        request_id = f"FAULTPROXY{n:08d}"
        if fault.body is not None:
            body = fault.body
        else:
            code, message = _S3_ERRORS.get(fault.status, (_phrase(fault.status).replace(" ", ""), ""))
            body = _s3_error_xml(
                fault.code or code, fault.message or message, unquote(urlsplit(target).path), request_id
            )
        headers = [
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
            ("x-amz-request-id", request_id),
            ("Server", "faultproxy"),
        ]
        if fault.retry_after is not None:
            headers.append(("Retry-After", str(fault.retry_after)))
        headers.extend(fault.headers)
        headers.append(("Connection", "keep-alive" if keep else "close"))
        head = f"HTTP/1.1 {fault.status} {_phrase(fault.status)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        if record is not None:
            record.status = fault.status
        if method == "HEAD":
            body = b""
        self._count(record, False, len(body))  # before the client can see anything of it
        conn.c_writer.write(head.encode("latin-1") + body)
        await conn.c_writer.drain()
        return keep


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.faultproxy",
        description="A fault-injecting loopback HTTP proxy. Prints its URL, then runs until "
        "SIGTERM/SIGINT and prints its stats as JSON.",
    )
    p.add_argument("--upstream", required=True, help="http://host:port of the real server")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests to fault")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument(
        "--kinds",
        default=",".join(DEFAULT_KINDS),
        help=f"comma-separated fault kinds (of: {', '.join(KINDS)})",
    )
    p.add_argument("--log-limit", type=int, default=1000, help="requests kept in the log")
    args = p.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        proxy = FaultProxy(args.upstream, port=args.port, latency=args.latency, log_limit=args.log_limit)
        if args.fault_rate > 0:
            proxy.random_faults(args.fault_rate, seed=args.seed, kinds=args.kinds.split(","))
    except ValueError as e:
        p.error(str(e))
    try:
        with proxy:
            print(proxy.url, flush=True)
            while True:
                signal.pause()
    except SystemExit:
        pass
    s = proxy.stats
    print(json.dumps({"url": proxy.url, **dataclasses.asdict(s)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
