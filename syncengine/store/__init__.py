"""Object stores: the `ObjectStore` protocol and its implementations (see docs/STORE.md, docs/S3.md).

>>> from syncengine.store import LocalStore, ObjectStore
>>> store: ObjectStore = LocalStore("/tmp/example-repo")
>>> open_store("s3://bucket/team/repo", endpoint_url="http://127.0.0.1:9000")
S3Store('s3://bucket/team/repo/', endpoint='http://127.0.0.1:9000')
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from syncengine.errors import ConfigError
from syncengine.store.base import (
    Body,
    BodySource,
    FileSlice,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
    PartInfo,
    StoreCapabilities,
    UploadInfo,
    validate_key,
    validate_prefix,
)
from syncengine.store.local import LocalStore

if TYPE_CHECKING:
    from syncengine.store.retry import RetryPolicy
    from syncengine.store.s3 import S3Store

__all__ = [
    "Body",
    "BodySource",
    "FileSlice",
    "LocalStore",
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "PartInfo",
    "RetryPolicy",
    "S3Store",
    "StoreCapabilities",
    "UploadInfo",
    "open_store",
    "validate_key",
    "validate_prefix",
]


def __getattr__(name: str) -> Any:
    # The S3 store pulls in aiohttp (~0.1 s to import): load it when first asked for, so
    # local-only use (and CLI start-up) does not pay for it.
    if name == "S3Store":
        from syncengine.store.s3 import S3Store

        return S3Store
    if name == "RetryPolicy":
        from syncengine.store.retry import RetryPolicy

        return RetryPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """The store a repository URL names: ``s3://bucket/prefix`` → `S3Store`; a plain path or
    ``file://`` URL → `LocalStore`. No I/O happens until the store is used.

    ``endpoint_url`` and ``region`` apply to S3 (else the AWS environment and config decide).
    """
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"{url!r} names no bucket; write s3://BUCKET/PREFIX")
        from syncengine.store.s3 import S3Store

        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region)
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{url!r}: file URLs on other hosts are not supported")
        return LocalStore(unquote(parts.path))
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme is not None:
        raise ConfigError(
            f"{url!r}: unsupported store scheme {scheme.group(1)!r} (use s3://, file:// or a path)"
        )
    return LocalStore(url)
