"""The direct GET connections (syncengine.store.s3_direct) against a loopback server that
answers exactly the bytes a test scripts: heads split anywhere, body bytes arriving with
the head, oversized heads, extra bytes, HEAD answers, dropped and stalled connections."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from syncengine.store.s3_direct import HEAD_MAX, DirectFailed, DirectPool

Answer = Callable[[bytes], list[bytes | float | None]]  # request head -> pieces (float: sleep, None: close)


class Scripted:
    """A server sending, for each request, the pieces ``answer`` returns (byte strings are
    written and flushed one by one; a float sleeps; None closes the connection)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                for piece in self.answer(head):
                    if piece is None:
                        writer.close()
                        return
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                        continue
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/bkt/key"


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Answer], Any]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Scripted:
        s = Scripted(answer)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s.server)
        return s

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def _ok(body: bytes, extra: str = "") -> bytes:
    return f'HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nETag: "e"\r\n{extra}\r\n'.encode() + body


async def _read_all(pool: DirectPool, url: str, bufsize: int = 7, method: str = "GET") -> tuple[Any, bytes]:
    conn = await pool.get(url, {"host": "x"}, stall=5.0, method=method)
    out = bytearray()
    buf = memoryview(bytearray(bufsize))
    while n := await conn.readinto(buf, 5.0):
        out += buf[:n]
    return conn, bytes(out)


async def test_a_head_split_byte_by_byte_and_a_body_in_pieces_are_read_whole(scripted: Any) -> None:
    body = os.urandom(50_000)
    answer = _ok(body)
    srv = await scripted(lambda _h: [answer[i : i + 1] for i in range(200)] + [answer[200:]])
    pool = DirectPool(5.0, "test")
    conn, got = await _read_all(pool, srv.url, bufsize=4096)
    assert got == body and conn.status == 200 and conn.headers["etag"] == '"e"'
    assert conn.finished and conn.reusable
    pool.release(conn)
    _conn2, got2 = await _read_all(pool, srv.url)
    assert got2 == body and srv.connections == 1  # kept alive
    assert srv.requests[0].startswith(b"GET /bkt/key HTTP/1.1\r\n")
    pool.close()


async def test_body_bytes_that_came_with_the_head_are_handed_over_first(scripted: Any) -> None:
    body = b"0123456789" * 100
    srv = await scripted(lambda _h: [_ok(body)])  # head and body in one write
    pool = DirectPool(5.0, "test")
    _conn, got = await _read_all(pool, srv.url, bufsize=3)
    assert got == body
    pool.close()


async def test_a_head_over_the_limit_fails(scripted: Any) -> None:
    huge = "X-Pad: " + "a" * (HEAD_MAX + 10) + "\r\n"
    srv = await scripted(lambda _h: [_ok(b"x", huge)])
    pool = DirectPool(5.0, "test")
    with pytest.raises(DirectFailed, match="larger than"):
        await pool.get(srv.url, {}, stall=5.0)
    pool.close()


async def test_more_bytes_than_announced_make_the_connection_unusable(scripted: Any) -> None:
    srv = await scripted(lambda _h: [_ok(b"abc") + b"JUNK"])
    pool = DirectPool(5.0, "test")
    conn, got = await _read_all(pool, srv.url)
    assert got == b"abc" and not conn.reusable
    pool.release(conn)
    await _read_all(pool, srv.url)
    assert srv.connections == 2
    pool.close()


async def test_a_head_answer_has_no_body_whatever_its_content_length(scripted: Any) -> None:
    srv = await scripted(lambda _h: [b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"])
    pool = DirectPool(5.0, "test")
    conn, got = await _read_all(pool, srv.url, method="HEAD")
    assert got == b"" and conn.headers["content-length"] == "12345" and conn.finished and conn.reusable
    pool.release(conn)
    await _read_all(pool, srv.url, method="HEAD")
    assert srv.connections == 1 and srv.requests[1].startswith(b"HEAD ")
    pool.close()


async def test_a_transfer_coding_overrides_a_content_length(scripted: Any) -> None:
    """Both headers at once (a server bug or a smuggling attempt): the body is chunk-framed,
    so it is not read as plain bytes, and the connection is not kept."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    chunked = head + b"5\r\nhello\r\n0\r\n\r\n"
    srv = await scripted(lambda _h: [chunked])
    pool = DirectPool(5.0, "test")
    conn = await pool.get(srv.url, {}, stall=5.0)
    assert conn.status == 200 and conn.length is None and not conn.reusable
    conn.close()
    pool.close()


async def test_a_connection_dropped_mid_body_returns_what_came_then_fails(scripted: Any) -> None:
    body = os.urandom(10_000)
    srv = await scripted(lambda _h: [_ok(body)[:-4000], None])
    pool = DirectPool(5.0, "test")
    conn = await pool.get(srv.url, {}, stall=5.0)
    buf = memoryview(bytearray(len(body)))
    n = await conn.readinto(buf, 5.0)
    assert 0 < n < len(body) and bytes(buf[:n]) == body[:n]
    with pytest.raises(DirectFailed):
        await conn.readinto(buf[n:], 5.0)
    pool.close()


async def test_a_stall_fails_after_the_stall_timeout_not_before_bytes_stop(scripted: Any) -> None:
    body = os.urandom(3000)
    answer = _ok(body)
    # bytes keep coming every 0.1 s for 0.6 s (longer than the 0.3 s stall timeout), then stop
    pieces: list[bytes | float | None] = [answer[:100]]
    for i in range(6):
        pieces += [0.1, answer[100 + i * 10 : 110 + i * 10]]
    pieces += [30.0]
    srv = await scripted(lambda _h: pieces)
    pool = DirectPool(5.0, "test")
    conn = await pool.get(srv.url, {}, stall=0.3)
    buf = memoryview(bytearray(len(body)))
    n = await conn.readinto(buf, 0.3)  # all that came before the stall, not cut at 0.3 s
    assert n == 160 - (len(answer) - len(body)) and bytes(buf[:n]) == body[:n]
    with pytest.raises(DirectFailed, match="no byte came"):
        await conn.readinto(buf[n:], 0.3)
    pool.close()


async def test_a_kept_alive_connection_the_server_closed_is_replaced(scripted: Any) -> None:
    srv = await scripted(lambda _h: [_ok(b"hello"), None])  # answers, then closes
    pool = DirectPool(5.0, "test")
    for _ in range(3):
        conn, got = await _read_all(pool, srv.url)
        assert got == b"hello"
        await asyncio.sleep(0.05)  # the close arrives
        pool.release(conn)
    assert srv.connections == 3
    pool.close()


async def test_an_unreachable_endpoint_fails_at_connect() -> None:
    pool = DirectPool(2.0, "test")
    with pytest.raises(DirectFailed, match="cannot connect"):
        await pool.get("http://127.0.0.1:1/b/k", {}, stall=2.0)
    pool.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_https_endpoint_is_read_over_tls_into_the_buffer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Real S3 is https: the direct connection speaks TLS (certificates checked against the
    default trust store, here a self-signed one named by SSL_CERT_FILE), and the body still
    lands in the caller's buffer, on asyncio's loop and on uvloop (what the CLI runs)."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    body = os.urandom(3_000_000)

    async def scenario() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        s = Scripted(lambda _h: [_ok(body)])
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0, ssl=server_ctx)
        url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/bkt/key"
        try:
            pool = DirectPool(5.0, "test")
            with pytest.raises(DirectFailed, match="cannot connect"):  # not trusted yet
                await pool.get(url, {}, stall=5.0)
            pool.close()
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            pool = DirectPool(5.0, "test")
            conn, got = await _read_all(pool, url, bufsize=1 << 20)
            assert got == body and conn.reusable
            pool.release(conn)
            _, again = await _read_all(pool, url, bufsize=65_536)
            assert again == body and s.connections == 1  # kept alive (the refused one never got there)
            pool.close()
            await asyncio.sleep(0.05)  # the server sees the close
        finally:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            srv.close()
            await srv.wait_closed()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


# ---- what an HTTP/1.1 client must reject (RFC 9110, RFC 9112) -------------------------------


@pytest.mark.parametrize(
    "value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"], ids=["crlf", "lf", "cr", "nul"]
)
async def test_a_header_value_with_cr_lf_or_nul_is_never_sent(scripted: Any, value: str) -> None:
    """A value that would end its line early (an etag echoed into If-Match, say) would let
    whoever chose it add headers or a request: refused before any byte goes out."""
    srv = await scripted(lambda _h: [_ok(b"x")])
    pool = DirectPool(5.0, "test")
    with pytest.raises(ValueError, match="cannot be sent"):
        await pool.get(srv.url, {"host": "x", "If-Match": value}, stall=5.0)
    with pytest.raises(ValueError, match="cannot be sent"):
        await pool.get(srv.url, {"host": "x", f"X{value}": "v"}, stall=5.0)
    assert srv.connections == 0 and not srv.requests
    pool.close()


_MALFORMED = {
    "bare-cr-in-value": b"X-A: a\rb\r\n",
    "bare-lf-in-value": b"X-A: a\nX-B: b\r\n",
    "obs-fold": b"X-A: a\r\n  folded\r\n",
    "space-before-colon": b"X-A : a\r\n",
    "nul-in-value": b"X-A: a\x00b\r\n",
    "empty-name": b": a\r\n",
    "no-colon": b"X-A a\r\n",
    "length-plus": b"Content-Length: +5\r\n",
    "length-hex": b"Content-Length: 0x10\r\n",
    "length-arabic-indic": "Content-Length: \u0663\r\n".encode(),  # int() takes it
    "length-superscript": b"Content-Length: \xb2\r\n",  # latin-1 '²': isdigit() says yes
    "length-underscore": b"Content-Length: 1_0\r\n",  # int() takes it
    "length-negative": b"Content-Length: -1\r\n",
    "length-empty": b"Content-Length: \r\n",
    "lengths-differ": b"Content-Length: 5\r\nContent-Length: 7\r\n",
    "length-list-differs": b"Content-Length: 5, 7\r\n",
    "status-non-ascii-digits": None,
}


@pytest.mark.parametrize("case", list(_MALFORMED))
async def test_a_malformed_answer_head_fails_over(scripted: Any, case: str) -> None:
    """Each of these is an answer an HTTP/1.1 client must not trust (a bare CR, obs-fold,
    field-name whitespace: RFC 9112 §2.2, §5.1, §5.2; a Content-Length that is not one
    run of ASCII digits, or fields that disagree: RFC 9110 §8.6). Reading it anyway could
    take the body for a different length than the server meant (a smuggled answer): the
    direct connection gives up (DirectFailed: the caller retries through aiohttp)."""
    extra = _MALFORMED[case]
    if extra is None:
        head = "HTTP/1.1 2\u0660\u0660 OK\r\nContent-Length: 5\r\n\r\n".encode()
    else:
        head = (
            b"HTTP/1.1 200 OK\r\n" + extra + (b"" if b"Content-Length" in extra else b"Content-Length: 5\r\n")
        )
        head += b"\r\n"
    srv = await scripted(lambda _h: [head + b"hello"])
    pool = DirectPool(5.0, "test")
    with pytest.raises(DirectFailed):
        await pool.get(srv.url, {"host": "x"}, stall=5.0)
    pool.close()


@pytest.mark.parametrize(
    "lengths", [b"Content-Length: 5\r\nContent-Length: 5\r\n", b"Content-Length: 5, 5\r\n"]
)
async def test_equal_content_lengths_are_one_length(scripted: Any, lengths: bytes) -> None:
    srv = await scripted(lambda _h: [b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\nhello"])
    pool = DirectPool(5.0, "test")
    conn, got = await _read_all(pool, srv.url)
    assert got == b"hello" and conn.length == 5
    pool.close()


async def test_through_a_proxy_a_plain_request_goes_in_absolute_form_with_its_credentials(
    scripted: Any,
) -> None:
    from syncengine.store.aws_env import proxy_for
    from tests.connectproxy import ConnectProxy

    srv = await scripted(lambda _h: [_ok(b"hello")])
    with ConnectProxy(authorization="Basic dTpw") as proxy:  # u:p
        port = proxy.port
        pool = DirectPool(
            5.0, "test", proxy=proxy_for(srv.url, {"HTTP_PROXY": f"http://u:p@127.0.0.1:{port}"})
        )
        _conn, got = await _read_all(pool, srv.url)
        assert got == b"hello" and proxy.forwarded == [srv.url.split("/")[2]]
        assert b"proxy-authorization" not in srv.requests[0].lower()  # the proxy's, not passed on
        pool.close()
        wrong = DirectPool(
            5.0, "test", proxy=proxy_for(srv.url, {"HTTP_PROXY": f"http://u:x@127.0.0.1:{port}"})
        )
        refused = await wrong.get(srv.url, {"host": "x"}, stall=5.0)  # the proxy's own answer
        assert refused.status == 407
        wrong.close()
        assert proxy.refused == 1 and len(srv.requests) == 1
