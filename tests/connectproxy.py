"""Loopback network pieces for testing the S3 store's AWS settings against the real server:
`ConnectProxy`, an HTTP proxy (``CONNECT`` tunnels, and absolute-form requests forwarded as
a plain-http proxy does) that records where each connection went, and `TlsRelay`, which
terminates TLS with a self-signed certificate (`self_signed`) in front of a plain server.

Each runs its own event loop in a daemon thread, so in-process tests and CLI subprocesses
can use it alike. They relay bytes; they judge nothing but the proxy's own request heads.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def self_signed(folder: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for the IP ``name`` (its own CA) and its key, made by ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("no openssl command to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=IP:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class _Served:
    """A server on 127.0.0.1 run by an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def _start(
        self, handler: Callable[..., Coroutine[Any, Any, None]], tls: ssl.SSLContext | None = None
    ) -> None:
        async def quietly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await handler(reader, writer)  # a connection cut at close() is no error

        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(quietly, "127.0.0.1", 0, ssl=tls), self.loop
        )
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> _Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConnectProxy(_Served):
    """An HTTP proxy on 127.0.0.1: ``CONNECT host:port`` opens a tunnel (recorded in
    ``tunnels``); requests in absolute form (``GET http://host:port/path``) are sent on to
    that host in origin form (recorded in ``forwarded``). With ``authorization`` set, a
    request without that ``Proxy-Authorization`` value gets 407."""

    def __init__(self, authorization: str | None = None) -> None:
        super().__init__()
        self.authorization = authorization
        self.tunnels: list[str] = []
        self.forwarded: list[str] = []
        #: (method, absolute URL, body) of each forwarded request.
        self.requests: list[tuple[str, str, bytes]] = []
        self.refused = 0
        self._start(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _allowed(self, head: bytes) -> bool:
        if self.authorization is None:
            return True
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization" and value.strip() == self.authorization:
                return True
        self.refused += 1
        return False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if not self._allowed(head):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            self.tunnels.append(target)
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        parts = urlsplit(target)
        assert parts.hostname is not None and parts.port is not None, target
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
        back = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            while True:
                await self._forward(head, up_writer, reader)
                head = await reader.readuntil(b"\r\n\r\n")
                if not self._allowed(head):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            await back

    async def _forward(self, head: bytes, up: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        """One request in absolute form sent on in origin form, its body after it."""
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        parts = urlsplit(target)
        self.forwarded.append(parts.netloc)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = [
            ln for ln in lines[1:] if not ln.lower().startswith(("proxy-authorization:", "proxy-connection:"))
        ]
        up.write("\r\n".join([f"{method} {path} {version}", *kept]).encode("latin-1"))
        length = 0
        for ln in kept:
            name, _, value = ln.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            assert name.strip().lower() != "transfer-encoding", "chunked bodies are not relayed"
        body = await reader.readexactly(length) if length else b""
        self.requests.append((method, target, body))
        up.write(body)
        await up.drain()


class TlsRelay(_Served):
    """TLS on 127.0.0.1 (the certificate ``cert``/``key``), relayed as plain bytes to
    ``target`` (``http://host:port``): an https endpoint in front of a plain-http server."""

    def __init__(self, target: str, cert: Path, key: Path) -> None:
        super().__init__()
        parts = urlsplit(target)
        assert parts.hostname is not None and parts.port is not None
        self._to = (parts.hostname, parts.port)
        self.connections = 0  # TLS connections accepted
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self._start(self._handle, ctx)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
