"""Reading a few small objects of an S3 repository without aiohttp or botocore: the read path
of a no-change ``syncengine put`` to ``s3://…`` (``put_memo.recall_unchanged`` reads the
repository config and the artifact head, then answers from the put memo).

Importing aiohttp and botocore costs a no-change put more than all its other work. This
path signs GET requests with ``sigv4.sign_v4`` (S3Store's signer too) over one
``http.client`` connection, and is used only where it
resolves exactly what ``S3Store`` would: credentials from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``[/``AWS_SESSION_TOKEN``], the first provider
of the AWS chain), the region known and no ``s3`` settings in the selected profile of the
AWS config file (`aws_env.static_resolution`); the endpoint, CA bundle and proxy are the
store's own (`aws_env`). Anything else — or any failure — gives None or raises, and the
caller takes the full path, which reports errors properly.
"""

from __future__ import annotations

import http.client
from typing import Final
from urllib.parse import urlsplit

from syncengine.store.aws_env import (
    Proxy,
    StaticCredentials,
    proxy_for,
    settings,
    static_resolution,
    tls_context,
)
from syncengine.store.base import check_size
from syncengine.store.s3_urls import choose_addressing, object_url
from syncengine.store.sigv4 import sign_v4

#: An error answer is read up to this size (S3's are < 1 KiB); a longer one is not S3's.
_MAX_ERROR_BODY: Final = 64 << 10

_TIMEOUT = 10.0


class QuickReader:
    """``read(key) -> bytes | None`` for the repository at ``s3://bucket/prefix``: GETs over
    one keep-alive connection; 404 → None; any other answer raises ``OSError``."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        prefix: str,
        region: str,
        addressing: str,
        creds: StaticCredentials,
        ca_bundle: str | None = None,
    ) -> None:
        self.endpoint, self.bucket, self.prefix, self.region = endpoint, bucket, prefix, region
        self.addressing = choose_addressing(endpoint, bucket, addressing)  # type: ignore[arg-type]
        self.ca_bundle = ca_bundle
        #: HTTP(S)_PROXY / NO_PROXY, as for S3Store's connections (aws_env.proxy_for).
        self.proxy: Proxy | None = proxy_for(endpoint)
        self._creds = creds
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self, url: str) -> http.client.HTTPConnection:
        if self._conn is None:
            parts = urlsplit(url)
            assert parts.hostname is not None
            proxy = self.proxy
            if parts.scheme == "https":
                ctx = tls_context(self.ca_bundle)
                if proxy is None:
                    self._conn = http.client.HTTPSConnection(
                        parts.hostname, parts.port, timeout=_TIMEOUT, context=ctx
                    )
                else:  # TLS to the endpoint through a CONNECT tunnel
                    self._conn = http.client.HTTPSConnection(
                        proxy.host, proxy.port, timeout=_TIMEOUT, context=ctx
                    )
                    auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                    self._conn.set_tunnel(parts.hostname, parts.port, headers=auth)
            elif proxy is None:
                self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=_TIMEOUT)
            else:  # plain requests go to the proxy in absolute-form (see __call__)
                self._conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=_TIMEOUT)
        return self._conn

    def __call__(self, key: str, max_bytes: int | None = None) -> bytes | None:
        url = object_url(self.endpoint, self.bucket, self.prefix + key, addressing=self.addressing)
        c = self._creds
        headers = sign_v4(
            "GET", url, access_key=c.access_key, secret_key=c.secret_key, region=self.region,
            session_token=c.token,
        )  # fmt: skip
        conn = self._connection(url)
        parts = urlsplit(url)
        target = parts.path
        if self.proxy is not None and parts.scheme == "http":
            target = url
            if self.proxy.authorization:
                headers["Proxy-Authorization"] = self.proxy.authorization
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status == 200 and max_bytes is not None:
            length = resp.getheader("Content-Length")
            check_size(key, int(length) if length and length.isdigit() else max_bytes + 1, max_bytes)
        body = resp.read(_MAX_ERROR_BODY if resp.status != 200 else max_bytes)
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
    (the same `aws_env.static_resolution`), else None."""
    if not url.startswith("s3://"):
        return None
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        return None
    known = settings(endpoint_url=endpoint_url)
    static = static_resolution(known)
    if static is None:
        return None
    return QuickReader(
        static.endpoint,
        bucket,
        f"{prefix}/" if prefix else "",
        static.region,
        known.addressing,
        static.credentials,
        static.ca_bundle,
    )
