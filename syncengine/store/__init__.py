"""Object stores: the `ObjectStore` protocol and its implementations (see docs/STORE.md, docs/S3.md).

>>> from syncengine.store import LocalStore, ObjectStore
>>> store: ObjectStore = LocalStore("/tmp/example-repo")
>>> open_store("s3://bucket/team/repo", endpoint_url="http://127.0.0.1:9000")
S3Store('s3://bucket/team/repo/', endpoint='http://127.0.0.1:9000')
"""

from __future__ import annotations

import os
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
    check_size,
    read_capped,
    refuse_links,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from syncengine.store.local import LocalStore
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
    "check_size",
    "local_path",
    "open_store",
    "read_capped",
    "read_local_object",
    "validate_key",
    "validate_prefix",
]


def __getattr__(name: str) -> Any:
    # The S3 store pulls in aiohttp (~0.1 s to import): load it when first asked for, so
    # local-only use (and CLI start-up) does not pay for it. The local store pulls in asyncio,
    # which modules that only need `syncengine.store.base` (packs, records) do not want.
    if name == "LocalStore":
        from syncengine.store.local import LocalStore

        return LocalStore
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
    from syncengine.store.local import LocalStore

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


def local_path(url: str) -> str | None:
    """The directory a repository URL names when `open_store` would give a `LocalStore` for it
    (a plain path, or a ``file://`` URL on this host); None for anything else."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        return unquote(parts.path) if parts.netloc in ("", "localhost") else None
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        return None
    return url


def read_local_object(root: str, key: str, max_bytes: int | None = None) -> bytes | None:
    """Object ``key`` of the `LocalStore` at ``root``, read without an event loop (and so without
    importing asyncio), or None if there is none. The local layout is one plain file per key
    (docs/STORE.md), written by an atomic rename, so a read sees a whole object or none. More
    than ``max_bytes`` raise ``ObjectTooLarge`` before any is read, as `ObjectStore.get`."""
    validate_key(key)
    path = f"{os.path.abspath(root)}/{key}"
    refuse_links(os.path.abspath(root), path, itself=True)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb") as f:
            check_size(key, os.fstat(f.fileno()).st_size, max_bytes)
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
