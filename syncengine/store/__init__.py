"""Object stores: the `ObjectStore` protocol and its implementations (see docs/STORE.md).

>>> from syncengine.store import LocalStore, ObjectStore
>>> store: ObjectStore = LocalStore("/tmp/example-repo")
"""

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

__all__ = [
    "Body",
    "BodySource",
    "FileSlice",
    "LocalStore",
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "PartInfo",
    "StoreCapabilities",
    "UploadInfo",
    "validate_key",
    "validate_prefix",
]
