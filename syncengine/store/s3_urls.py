"""S3 endpoints, addressing and request URLs: pure functions, shared by `S3Store` and the
quick read path of a no-change put (`syncengine.store.s3_quick`), so that path imports
neither aiohttp nor botocore."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Literal, cast
from urllib.parse import quote, urlsplit

from syncengine.errors import ConfigError

Addressing = Literal["auto", "path", "virtual"]

_AWS_HOST = re.compile(r"(^|\.)amazonaws\.com(\.cn)?\Z")
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def default_endpoint(region: str) -> str:
    """AWS's regional S3 endpoint for ``region``.

    >>> default_endpoint("eu-west-1")
    'https://s3.eu-west-1.amazonaws.com'
    """
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://s3.{region}.{suffix}"


def choose_addressing(
    endpoint: str, bucket: str, addressing: Addressing = "auto"
) -> Literal["path", "virtual"]:
    """Resolve ``addressing="auto"``: virtual-hosted for AWS endpoints (when the bucket name
    is a DNS label that TLS can cover), path-style for every other endpoint (IPs,
    ``localhost``, self-hosted servers, which rarely have wildcard DNS).

    >>> choose_addressing("http://127.0.0.1:9000", "b1")
    'path'
    >>> choose_addressing("https://s3.us-east-1.amazonaws.com", "b1")
    'virtual'
    """
    if addressing in ("path", "virtual"):
        return addressing
    if addressing != "auto":
        raise ConfigError(f"addressing must be 'auto', 'path' or 'virtual', not {addressing!r}")
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if not _AWS_HOST.search(host) or not _DNS_BUCKET.match(bucket):
        return "path"
    if "." in bucket and parts.scheme == "https":
        return "path"  # *.s3.amazonaws.com certificates do not cover dotted names
    return "virtual"


def _addressing_setting(value: str, where: str) -> Addressing:
    """An addressing style named in a setting; botocore's ``virtual``/``path``/``auto``."""
    v = value.strip().lower()
    if v not in ("auto", "path", "virtual"):
        raise ConfigError(f"{where}={value!r}: use 'auto', 'path' or 'virtual'")
    return cast(Addressing, v)


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _quote_key(key: str) -> str:
    # SigV4 URI-encoding: everything but unreserved characters; '/' separates segments.
    return quote(key, safe="/~")


def _quote_param(value: str) -> str:
    return quote(value, safe="-_.~")


def object_url(
    endpoint: str,
    bucket: str,
    key: str = "",
    *,
    addressing: Literal["path", "virtual"] = "path",
    query: Sequence[tuple[str, str | None]] = (),
) -> str:
    """The request URL of ``key`` in ``bucket`` (``key=""``: the bucket itself).

    The key is percent-encoded exactly as SigV4 canonicalizes it, so the URL can be
    signed and sent as is. ``query`` pairs with value None are bare flags (``?uploads``).

    >>> object_url("http://127.0.0.1:9000", "b1", "a b/c")
    'http://127.0.0.1:9000/b1/a%20b/c'
    >>> object_url("https://s3.eu-west-1.amazonaws.com", "b1", "k", addressing="virtual",
    ...            query=[("uploadId", "x/y"), ("partNumber", "1")])
    'https://b1.s3.eu-west-1.amazonaws.com/k?uploadId=x%2Fy&partNumber=1'
    """
    parts = urlsplit(endpoint)
    base_path = parts.path.rstrip("/")
    if addressing == "virtual":
        netloc = f"{bucket}.{parts.netloc}"
        path = f"{base_path}/{_quote_key(key)}"
    else:
        netloc = parts.netloc
        path = f"{base_path}/{_quote_param(bucket)}" + (f"/{_quote_key(key)}" if key else "")
    url = f"{parts.scheme}://{netloc}{path}"
    if query:
        url += "?" + "&".join(
            _quote_param(k) if v is None else f"{_quote_param(k)}={_quote_param(v)}" for k, v in query
        )
    return url


def _env_endpoint(environ: Mapping[str, str]) -> str | None:
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


def _check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"S3 endpoint {url!r} is not an http(s) URL (like http://127.0.0.1:9000)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"S3 endpoint {url!r} must not carry a query, fragment or credentials")
    return url.rstrip("/")
