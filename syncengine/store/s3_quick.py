"""Reading a few small objects of an S3 repository without aiohttp or botocore: the read path
of a no-change ``syncengine put`` to ``s3://…`` (``put_memo.recall_unchanged`` reads the
repository config and the artifact head, then answers from the put memo).

Importing aiohttp and botocore costs a no-change put more than all its other work. This
path signs GET requests itself (SigV4, ``UNSIGNED-PAYLOAD``, checked against AWS's published
example in the tests) over one ``http.client`` connection, and is used only where it
resolves exactly what ``S3Store`` would: credentials from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``[/``AWS_SESSION_TOKEN``], the first provider
of the AWS chain) with no profile selected, the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, and no ``s3`` settings in the default profile of the AWS config
file. Anything else — or any failure — gives None or raises, and the caller takes the full
path, which reports errors properly.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import http.client
import os
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from syncengine.store.s3_urls import (
    Addressing,
    _addressing_setting,
    _check_endpoint,
    _env_endpoint,
    choose_addressing,
    default_endpoint,
    object_url,
)

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_TIMEOUT = 10.0


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_v4(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str,
    session_token: str | None = None,
    payload_hash: str = UNSIGNED_PAYLOAD,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a SigV4-signed S3 request without a body (``url`` already encoded as
    SigV4 canonicalizes it, as ``object_url`` makes it; its query, if any, in canonical
    order). ``amz_date`` is ``YYYYMMDDTHHMMSSZ``."""
    parts = urlsplit(url)
    out = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    out["host"] = parts.netloc
    out["x-amz-content-sha256"] = payload_hash
    out["x-amz-date"] = amz_date
    if session_token:
        out["x-amz-security-token"] = session_token
    names = sorted(out)
    signed = ";".join(names)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            parts.query,
            "".join(f"{n}:{out[n]}\n" for n in names),
            signed,
            payload_hash,
        ]
    )
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + secret_key).encode(), amz_date[:8])
    for step in (region, "s3", "aws4_request"):
        key = _hmac(key, step)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return out


def _config_has_s3_settings(environ: Mapping[str, str]) -> bool:
    path = Path(environ.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    if not path.exists():
        return False
    parser = configparser.RawConfigParser()
    parser.read(path)
    return parser.has_section("default") and parser.has_option("default", "s3")


class QuickReader:
    """``read(key) -> bytes | None`` for the repository at ``s3://bucket/prefix``: GETs over
    one keep-alive connection; 404 → None; any other answer raises ``OSError``."""

    def __init__(self, endpoint: str, bucket: str, prefix: str, region: str, addressing: str) -> None:
        self.endpoint, self.bucket, self.prefix, self.region = endpoint, bucket, prefix, region
        self.addressing = choose_addressing(endpoint, bucket, addressing)  # type: ignore[arg-type]
        self._creds = (
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN"),
        )
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self, url: str) -> http.client.HTTPConnection:
        if self._conn is None:
            parts = urlsplit(url)
            assert parts.hostname is not None
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(parts.hostname, parts.port, timeout=_TIMEOUT)
        return self._conn

    def __call__(self, key: str) -> bytes | None:
        url = object_url(self.endpoint, self.bucket, self.prefix + key, addressing=self.addressing)
        akid, secret, token = self._creds
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = sign_v4(
            "GET", url, access_key=akid, secret_key=secret, region=self.region, amz_date=amz_date,
            session_token=token,
        )  # fmt: skip
        conn = self._connection(url)
        parts = urlsplit(url)
        conn.request("GET", parts.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200:
            return body
        if resp.status == 404 and b"NoSuchKey" in body:
            return None
        raise OSError(f"GET {key}: HTTP {resp.status}")  # the full path reports it properly

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def quick_reader(url: str, endpoint_url: str | None = None) -> QuickReader | None:
    """A `QuickReader` for ``url`` when this path resolves exactly what ``S3Store`` would
    (see the module docstring), else None."""
    env = os.environ
    if not url.startswith("s3://"):
        return None
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not env.get("AWS_ACCESS_KEY_ID") or not env.get("AWS_SECRET_ACCESS_KEY"):
        return None
    if env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE"):
        return None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        return None
    style: Addressing = "auto"
    if env.get("SYNCENGINE_S3_ADDRESSING"):
        style = _addressing_setting(env["SYNCENGINE_S3_ADDRESSING"], "SYNCENGINE_S3_ADDRESSING")
    elif _config_has_s3_settings(env):
        return None
    configured = endpoint_url if endpoint_url is not None else _env_endpoint(env)
    endpoint = _check_endpoint(configured) if configured else default_endpoint(region)
    return QuickReader(endpoint, bucket, f"{prefix}/" if prefix else "", region, style)
