"""AWS Signature Version 4 for S3 requests, with the payload left unsigned: the one signer of
``S3Store`` and of the no-change read path (``s3_quick``).

It computes exactly what botocore's ``S3SigV4Auth`` computes for the same request (the tests
check AWS's published example and agreement with botocore on random methods, keys, queries,
headers and session tokens), without importing botocore: importing it costs a CLI command
~0.1 s, and signing here costs a fraction of its ~50 µs per request (docs/S3.md). Where the
credentials come from is not decided here: ``S3Store`` still resolves them through botocore's
chain unless they are static (explicit, or the environment's with no profile selected).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import SplitResult, urlsplit

UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
#: Headers botocore leaves out of the signature (hop-by-hop ones and those proxies rewrite);
#: they are sent, not signed.
UNSIGNED_HEADERS: Final = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    """The query (already percent-encoded as SigV4 wants) as SigV4 canonicalizes it: pairs
    sorted by name then value, a bare flag as ``name=``."""
    if not query:
        return ""
    pairs = [p.partition("=")[::2] for p in query.split("&") if p]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _host(url: SplitResult) -> str:
    """The Host header: lower-case host name, its port unless the scheme's default."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if url.port is not None and url.port != _DEFAULT_PORTS.get(url.scheme):
        host = f"{host}:{url.port}"
    return host


def sign_v4(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str | None = None,
    session_token: str | None = None,
    payload_hash: str = UNSIGNED_PAYLOAD,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers to send for a SigV4-signed S3 request: ``headers`` plus ``host``,
    ``x-amz-content-sha256``, ``x-amz-date``, ``x-amz-security-token`` (with a session token)
    and ``authorization``, all names lower-case.

    ``url`` is encoded as SigV4 canonicalizes a path (``s3_urls.object_url`` makes it so); its
    query may be in any order. ``amz_date`` is ``YYYYMMDDTHHMMSSZ`` (default: now, UTC).

    >>> h = sign_v4("GET", "http://127.0.0.1:9000/b/k", access_key="AK", secret_key="SK",
    ...             region="us-east-1", amz_date="20260101T000000Z")
    >>> h["authorization"].split(", ")[1]
    'SignedHeaders=host;x-amz-content-sha256;x-amz-date'
    """
    parts = urlsplit(url)
    if amz_date is None:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = {k.lower(): v for k, v in (headers or {}).items()}
    out["host"] = _host(parts)
    out["x-amz-content-sha256"] = payload_hash
    out["x-amz-date"] = amz_date
    if session_token:
        out["x-amz-security-token"] = session_token
    out.pop("authorization", None)
    names = sorted(n for n in out if n not in UNSIGNED_HEADERS)
    signed = ";".join(names)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            _canonical_query(parts.query),
            "".join(f"{n}:{' '.join(out[n].split())}\n" for n in names),
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
