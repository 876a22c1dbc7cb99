"""The fault proxy relays S3 traffic to a real server byte-exact and injects the faults it is told to."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ReadTimeoutError

from tests.faultproxy import (
    KINDS,
    Corrupt,
    Delay,
    FaultProxy,
    Reset,
    Respond,
    Stall,
    Truncate,
)
from tests.s3server import S3TestServer, _sign_v4

ROOT = Path(__file__).resolve().parents[2]
KiB, MiB = 1 << 10, 1 << 20
FAILURES = (ClientError, HTTPClientError, IncompleteReadError)  # what a faulted botocore call raises


@pytest.fixture
def proxy(s3_server: S3TestServer) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint) as p:
        yield p


@functools.cache
def botocore_session() -> Any:
    return botocore.session.get_session()  # one per run: it caches the parsed service models


def s3_client(srv: S3TestServer, url: str, **config: Any) -> Any:
    """A botocore S3 client for `url` that never retries (each call is exactly one request)."""
    cfg = Config(
        retries={"total_max_attempts": 1},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        connect_timeout=5,
        read_timeout=config.pop("read_timeout", 10),
        **{
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            **config,
        },
    )
    return botocore_session().create_client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=srv.access_key,
        aws_secret_access_key=srv.secret_key,
        region_name=srv.region,
        config=cfg,
    )


@pytest.fixture
def s3(s3_server: S3TestServer, proxy: FaultProxy) -> Any:
    return s3_client(s3_server, proxy.url)


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def presigned(s3: Any, op: str, bucket: str, key: str) -> tuple[int, str]:
    """(port, path?query) of a presigned URL for `op`, for plain http.client calls."""
    u = urlsplit(s3.generate_presigned_url(op, Params={"Bucket": bucket, "Key": key}, ExpiresIn=600))
    assert u.port is not None
    return u.port, f"{u.path}?{u.query}"


def raw_exchange(port: int, request: bytes, *, then: bytes | None = None) -> tuple[bytes, bytes]:
    """Sends `request` on a fresh connection; with `then`, waits for an interim answer first.

    Returns (the interim answer or b"", everything else until the server closes).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        interim = b""
        if then is not None:
            interim = sock.recv(65536)
            sock.sendall(then)
        sock.shutdown(socket.SHUT_WR)  # no further requests: the server answers, then closes
        out = b""
        while data := sock.recv(65536):
            out += data
    return interim, out


# -- pass-through -----------------------------------------------------------------------------


def test_s3_operations_pass_through_byte_exact(
    s3: Any, proxy: FaultProxy, s3_server: S3TestServer, s3_bucket: str
) -> None:
    small, part1, part2 = os.urandom(300 * KiB), os.urandom(5 * MiB), os.urandom(700 * KiB)
    s3.put_object(Bucket=s3_bucket, Key="dir/small file", Body=small)
    with open(os.devnull, "rb") as empty:  # a file body: botocore sends Expect: 100-continue
        s3.put_object(Bucket=s3_bucket, Key="dir/from-file", Body=empty)
    assert s3.get_object(Bucket=s3_bucket, Key="dir/small file")["Body"].read() == small
    ranged = s3.get_object(Bucket=s3_bucket, Key="dir/small file", Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["Body"].read() == small[1000:2000]
    assert s3.head_object(Bucket=s3_bucket, Key="dir/small file")["ContentLength"] == len(small)

    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="big")["UploadId"]
    etags = [
        s3.upload_part(Bucket=s3_bucket, Key="big", UploadId=upload, PartNumber=n, Body=body)["ETag"]
        for n, body in ((1, part1), (2, part2))
    ]
    parts = s3.list_parts(Bucket=s3_bucket, Key="big", UploadId=upload)["Parts"]
    assert [p["Size"] for p in parts] == [len(part1), len(part2)]
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert s3.get_object(Bucket=s3_bucket, Key="big")["Body"].read() == part1 + part2
    listed = s3.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["big", "dir/from-file", "dir/small file"]

    log = proxy.requests
    assert all(r.fault is None and r.error is None and r.status == r.upstream_status for r in log)
    assert all(r.status is not None and 200 <= r.status < 300 for r in log)
    assert [r.bytes_up for r in log if r.method == "PUT" and "partNumber" in r.query] == [
        len(part1),
        len(part2),
    ]
    gets = [
        r.bytes_down
        for r in log
        if r.method == "GET" and not r.query and r.path.endswith(("small file", "/big"))
    ]
    assert gets == [len(small), 1000, len(part1 + part2)]
    assert proxy.stats.bytes_up >= len(small) + len(part1) + len(part2)
    assert proxy.stats.connections < len(log)  # keep-alive: one connection carried many requests


def test_upstream_sees_the_clients_host_header(
    proxy: FaultProxy, s3_server: S3TestServer, s3_bucket: str
) -> None:
    """SigV4 covers Host: a request signed for the proxy's address passes only if Host is untouched."""
    path = f"/{s3_bucket}?list-type=2"
    signed_for_proxy = _sign_v4("GET", proxy.url + path, b"", s3_server.access_key, s3_server.secret_key)
    with urllib.request.urlopen(urllib.request.Request(proxy.url + path, headers=signed_for_proxy)) as r:
        assert r.status == 200
    # The server does check Host: the same request signed for its own address is refused.
    signed_for_server = _sign_v4(
        "GET", s3_server.endpoint + path, b"", s3_server.access_key, s3_server.secret_key
    )
    signed_for_server["host"] = urlsplit(proxy.url).netloc
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(proxy.url + path, headers=signed_for_server))
    with e.value:
        assert e.value.code == 403


def test_expect_continue_and_chunked_request_bodies(s3: Any, s3_bucket: str) -> None:
    port, target = presigned(s3, "put_object", s3_bucket, "expect")
    head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5\r\n"
    head += "Expect: 100-continue\r\n\r\n"
    interim, answer = raw_exchange(port, head.encode(), then=b"HELLO")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # relayed before the client sent its body
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert s3.get_object(Bucket=s3_bucket, Key="expect")["Body"].read() == b"HELLO"

    port, target = presigned(s3, "put_object", s3_bucket, "chunked")
    head = f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
    _, answer = raw_exchange(port, head.encode() + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert s3.get_object(Bucket=s3_bucket, Key="chunked")["Body"].read() == b"hello world"


class RawUpstream:
    """A one-connection-at-a-time raw HTTP server: records request heads, sends canned answers."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            with conn:
                buf = b""
                while self.answers:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.heads.append(head + b"\r\n\r\n")
                    answer = self.answers.pop(0)
                    conn.sendall(answer)
                    if b"Connection: close" in answer.split(b"\r\n\r\n")[0]:
                        break
        self.sock.close()


def test_heads_and_response_framings_are_relayed_byte_exact() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Odd:  spaced \r\n\r\n"
        b"4\r\nWiki\r\n6;note=x\r\npedia \r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, ends at close"
    upstream = RawUpstream([chunked, chunked, until_close])
    request = (
        b"GET /b/k?uploads HTTP/1.1\r\nHost: Example.COM:1234\r\nx-AMZ-date: 1\r\n"
        b"X-Dup: 1\r\nX-Dup: 2\r\nAuthorization: AWS4-HMAC-SHA256 secret-ish\r\n\r\n"
    )
    with FaultProxy(upstream.url) as proxy:
        port = proxy.port
        proxy.add_rule(Corrupt(at=4), nth=2)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            received = b""
            for _ in range(3):  # one keep-alive connection, three requests
                sock.sendall(request)
            while data := sock.recv(65536):
                received += data
        log = proxy.requests
    corrupted = chunked.replace(b"pedia ", bytes([ord("p") ^ 0xFF]) + b"edia ")  # payload byte 4
    assert received == chunked + corrupted + until_close
    assert upstream.heads == [request] * 3
    assert [r.bytes_down for r in log] == [10, 10, len(b"no length, ends at close")]
    assert [r.conn for r in log] == [1, 1, 1]
    assert "secret-ish" not in repr(log)


def test_large_body_streams_through_cli_proxy_in_bounded_memory(
    s3_server: S3TestServer, s3_bucket: str, tmp_path: Path
) -> None:
    size = 256 * MiB
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            piece = bytes([i % 256]) + block[1:]
            digest.update(piece)
            f.write(piece)
    cmd = [sys.executable, "-m", "tests.faultproxy", "--upstream", s3_server.endpoint, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        base_kib = vm_kib(proc.pid, "VmRSS")
        s3 = s3_client(s3_server, url, read_timeout=60)
        with open(src, "rb") as f:
            s3.put_object(Bucket=s3_bucket, Key="big", Body=f)
        down = hashlib.sha256()
        for chunk in s3.get_object(Bucket=s3_bucket, Key="big")["Body"].iter_chunks(MiB):
            down.update(chunk)
        peak_kib = vm_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert down.digest() == digest.digest()
    assert peak_kib - base_kib < 32 * 1024, (base_kib, peak_kib)  # the body never sits in memory
    stats = json.loads(out.splitlines()[-1])
    assert stats["bytes_up"] == size and stats["bytes_down"] == size
    assert stats["requests"] == 2 and stats["faults"] == {}


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


# -- faults -----------------------------------------------------------------------------------


def test_reset_mid_request_body_writes_nothing(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    proxy.add_rule(Reset("request", after=64 * KiB), method="PUT")
    with pytest.raises(HTTPClientError):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(4 * MiB))
    proxy.clear_rules()
    assert not exists(s3, s3_bucket, "k")
    put = proxy.requests[0]
    assert put.fault == Reset("request", after=64 * KiB)
    assert (put.bytes_up, put.status, put.upstream_status, put.error) == (64 * KiB, None, None, None)


def test_reset_mid_response_body(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(MiB))
    proxy.add_rule(Reset("response", after=1000), method="GET")
    with pytest.raises((HTTPClientError, IncompleteReadError)):
        s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read()
    get = proxy.requests[-1]
    assert (get.fault, get.status, get.bytes_down) == (Reset("response", after=1000), 200, 1000)


def test_lost_response_after_the_write_happened(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    """The ambiguous failure: the client sees a reset, yet the server stored the object."""
    proxy.add_rule(Reset("before_response"), method="PUT", nth=1)
    with pytest.raises(HTTPClientError):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"stored anyway")
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"stored anyway"
    put = proxy.requests[0]
    assert (put.upstream_status, put.status) == (200, None)


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]
)
def test_answers_an_s3_error_without_forwarding(
    s3: Any, proxy: FaultProxy, s3_bucket: str, status: int, code: str
) -> None:
    proxy.add_rule(Respond(status, retry_after=3), method="PUT", times=2)
    with open(os.devnull, "rb") as empty:  # a file body: botocore sends Expect: 100-continue
        for body in (b"bytes body", empty):
            with pytest.raises(ClientError) as e:
                s3.put_object(Bucket=s3_bucket, Key="k", Body=body)
            assert e.value.response["Error"]["Code"] == code
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
            assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
    assert not exists(s3, s3_bucket, "k")
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"third time")  # times=2: the rule is spent
    assert [(r.status, r.upstream_status) for r in proxy.requests] == [
        (status, None),
        (status, None),
        (404, 404),
        (200, 200),
    ]
    assert proxy.requests[0].bytes_up == 0 and proxy.requests[0].bytes_down > 0  # the XML error


def test_stall_before_response_makes_the_client_time_out(
    s3_server: S3TestServer, proxy: FaultProxy, s3_bucket: str
) -> None:
    s3 = s3_client(s3_server, proxy.url, read_timeout=0.3)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    proxy.add_rule(Stall(60, "before_response", then="close"), method="GET")
    with pytest.raises(ReadTimeoutError):
        s3.get_object(Bucket=s3_bucket, Key="k")
    # stop() (the fixture) ends the stalled connection at once instead of waiting 60 s


def test_stall_in_request_body_makes_the_client_time_out(
    s3_server: S3TestServer, proxy: FaultProxy, s3_bucket: str
) -> None:
    s3 = s3_client(s3_server, proxy.url, read_timeout=0.3)
    proxy.add_rule(Stall(60, "request", after=100 * KiB, then="reset"), method="PUT")
    with pytest.raises(ReadTimeoutError):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(MiB))
    assert proxy.requests[0].bytes_up == 100 * KiB


def test_stall_then_continue_delivers_everything(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    data = os.urandom(200 * KiB)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=data)
    proxy.add_rule(Stall(0.05, "response", after=10 * KiB), method="GET")
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == data
    assert proxy.stats.faults == {"stall": 1}


def test_truncated_response_is_an_incomplete_read(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(10 * KiB))
    proxy.add_rule(Truncate(after=100), method="GET")
    port, target = presigned(s3, "get_object", s3_bucket, "k")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", target)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == str(10 * KiB)
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert len(e.value.partial) == 100
    conn.close()


def test_corrupt_flips_one_response_byte(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    data = os.urandom(64 * KiB)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=data)
    proxy.add_rule(Corrupt(at=7), method="GET", nth=1)
    got = s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read()
    assert len(got) == len(data) and got != data
    assert [i for i in range(len(data)) if got[i] != data[i]] == [7]
    assert got[7] == data[7] ^ 0xFF
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == data  # nth=1: only once


def test_corrupt_request_body_is_refused_when_it_carries_a_checksum(
    s3_server: S3TestServer, proxy: FaultProxy, s3_bucket: str
) -> None:
    # x-amz-checksum-crc32 is checked by SeaweedFS; the signed x-amz-content-sha256 alone is
    # not (4.48 stores the flipped byte), so only a checksum header proves the server verifies.
    s3 = s3_client(s3_server, proxy.url, request_checksum_calculation="when_supported")
    proxy.add_rule(Corrupt(phase="request"), method="PUT")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"checksummed payload")
    assert e.value.response["Error"]["Code"] == "BadDigest"
    proxy.clear_rules()
    assert not exists(s3, s3_bucket, "k")
    assert proxy.requests[0].fault == Corrupt(phase="request")


async def test_async_client_through_the_proxy(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    await asyncio.to_thread(s3.put_object, Bucket=s3_bucket, Key="k", Body=b"0123456789" * 1000)
    port, target = presigned(s3, "get_object", s3_bucket, "k")
    url = f"http://127.0.0.1:{port}{target}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            assert await r.read() == b"0123456789" * 1000
        proxy.add_rule(Truncate(after=10), method="GET")
        async with session.get(url) as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


def test_latency_is_applied_and_recorded(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    proxy.set_latency(0.02)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    proxy.add_rule(Delay(0.03), method="GET")
    s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read()
    proxy.set_latency(0)
    s3.head_object(Bucket=s3_bucket, Key="k")
    assert [r.delay for r in proxy.requests] == [0.02, pytest.approx(0.05), 0.0]
    assert proxy.stats.faults == {"delay": 1}


# -- rules --------------------------------------------------------------------------------------


def test_rules_pick_by_nth_regex_and_query(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    by_path = proxy.add_rule(Respond(500), method="PUT", path=r"/fail-\d+$")
    third_put = proxy.add_rule(Respond(503), method="PUT", nth=3)
    for key in ("ok-1", "fail-1", "ok-2", "ok-3"):
        with contextlib.suppress(ClientError):
            s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in proxy.requests] == [
        ("ok-1", 200),
        ("fail-1", 500),
        ("ok-2", 503),  # the third PUT, although the second was another rule's
        ("ok-3", 200),
    ]
    assert (by_path.seen, by_path.fired, third_put.seen, third_put.fired) == (1, 1, 4, 1)
    assert proxy.stats.faults == {"500": 1, "503": 1}


def test_resumed_multipart_upload_sends_only_the_missing_part(
    s3: Any, proxy: FaultProxy, s3_bucket: str
) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(MiB)]
    proxy.add_rule(Reset("request", after=512 * KiB), method="PUT", query={"partNumber": "3"}, times=1)
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="big")["UploadId"]
    for n, body in enumerate(parts, 1):
        try:
            s3.upload_part(Bucket=s3_bucket, Key="big", UploadId=upload, PartNumber=n, Body=body)
        except HTTPClientError:
            assert n == 3
    proxy.reset_stats()
    # Resume: ask the server what it has, send the rest.
    done = {
        p["PartNumber"]: p["ETag"]
        for p in s3.list_parts(Bucket=s3_bucket, Key="big", UploadId=upload)["Parts"]
    }
    assert sorted(done) == [1, 2]
    for n in (1, 2, 3):
        if n not in done:
            done[n] = s3.upload_part(
                Bucket=s3_bucket, Key="big", UploadId=upload, PartNumber=n, Body=parts[n - 1]
            )["ETag"]
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]} for n in (1, 2, 3)]},
    )
    part_puts = [r for r in proxy.requests if r.method == "PUT" and "partNumber" in r.query]
    assert [r.bytes_up for r in part_puts] == [MiB]
    assert proxy.stats.bytes_up == MiB + sum(r.bytes_up for r in proxy.requests if r.method == "POST")
    assert s3.get_object(Bucket=s3_bucket, Key="big")["Body"].read() == b"".join(parts)


def random_fault_run(s3: Any, proxy: FaultProxy, bucket: str, seed: int) -> list[str | None]:
    proxy.clear_rules()
    proxy.reset_stats()
    proxy.random_faults(0.3, seed=seed, kinds=["reset", "reset_request", "500", "503", "truncate", "corrupt"])
    for _ in range(40):
        with contextlib.suppress(*FAILURES):
            s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    return [r.fault.label if r.fault else None for r in proxy.requests]


def test_random_faults_are_deterministic_per_seed(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(20 * KiB))
    first = random_fault_run(s3, proxy, s3_bucket, seed=1)
    again = random_fault_run(s3, proxy, s3_bucket, seed=1)
    other = random_fault_run(s3, proxy, s3_bucket, seed=2)
    assert first == again != other
    assert len(first) == 40 and 0 < sum(f is not None for f in first) < 40
    assert len({f for f in first if f}) > 1  # a mix of kinds


def test_counters_add_up(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    proxy.random_faults(0.3, seed=7)
    for i in range(30):
        with contextlib.suppress(*FAILURES):
            s3.put_object(Bucket=s3_bucket, Key=f"k{i % 5}", Body=os.urandom(50 * KiB))
            s3.get_object(Bucket=s3_bucket, Key=f"k{i % 5}")["Body"].read()
    log, stats = proxy.requests, proxy.stats
    assert stats.requests == len(log)
    assert stats.bytes_up == sum(r.bytes_up for r in log) > 0
    assert stats.bytes_down == sum(r.bytes_down for r in log) > 0
    assert stats.faults == collections.Counter(r.fault.label for r in log if r.fault)
    assert stats.connections == len({r.conn for r in log})
    assert all(r.error is None for r in log if r.fault is None)


def test_presigned_signatures_are_not_logged(s3: Any, proxy: FaultProxy, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    port, target = presigned(s3, "get_object", s3_bucket, "k")
    signature = dict(p.split("=", 1) for p in target.split("?", 1)[1].split("&"))["X-Amz-Signature"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}") as r:
        assert r.read() == b"x"
    logged = proxy.requests[-1].query
    assert "X-Amz-Signature=REDACTED" in logged and signature not in repr(proxy.requests)


def test_cli_random_faults(s3_server: S3TestServer, s3_bucket: str) -> None:
    cmd = [
        sys.executable, "-m", "tests.faultproxy", "--upstream", s3_server.endpoint,
        "--latency", "0.01", "--fault-rate", "1", "--kinds", "503", "--seed", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        with pytest.raises(ClientError) as e:
            s3_client(s3_server, url).head_object(Bucket=s3_bucket, Key="k")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    stats = json.loads(out.splitlines()[-1])
    assert (stats["url"], stats["requests"], stats["faults"]) == (url, 1, {"503": 1})


def test_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # bound, never listening: connections are refused
        with FaultProxy(f"http://127.0.0.1:{closed_port}") as proxy:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(proxy.url + "/b/k")
            with e.value:
                assert e.value.code == 502
            assert proxy.requests[0].error is not None


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="phase"):
        Reset("sometime")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown fault kind"), FaultProxy("http://127.0.0.1:9") as p:
        p.random_faults(0.1, kinds=["meteor"])
    with pytest.raises(ValueError, match="upstream"):
        FaultProxy("https://example.com")
    assert set(KINDS) >= {"reset", "500", "503", "stall", "truncate", "corrupt"}
