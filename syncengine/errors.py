"""The one exception hierarchy: every user-facing failure says what went wrong and what to do."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` (difflib), else ``""``.

    >>> did_you_mean("mnsit", ["mnist", "cifar"])
    " (did you mean 'mnist'?)"
    """
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class SyncEngineError(Exception):
    """Base of every error syncengine raises on purpose."""


class ConfigError(SyncEngineError, ValueError):
    """A setting or parameter is invalid."""


class NativeExtensionMissing(SyncEngineError, ImportError):
    """The compiled core `syncengine._native` is not importable."""


class FileChangedError(SyncEngineError, OSError):
    """A file changed (size or mtime) while it was being read; its digest would be torn."""

    def __init__(self, path: str, detail: str) -> None:
        self.message = f"{path}: file changed while being read ({detail}); retry once it is stable"
        super().__init__(self.message)
        self.filename = path
        self.strerror = f"changed while being read ({detail})"
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class HashingFailed(SyncEngineError):
    """Some files of a tree could not be hashed; `errors` lists (path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        shown = "; ".join(f"{p}: {m}" for p, m in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} file(s) could not be hashed: {shown}{more}")
        self.errors = errors


class InvalidKey(SyncEngineError, ValueError):
    """An object key (or list prefix) breaks the key rules of `syncengine.store`."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidKey], tuple[object, str]]:
        return type(self), (self.key, self.reason)


class ObjectNotFound(SyncEngineError, FileNotFoundError):
    """An object store has no object under the requested key."""

    def __init__(self, key: str, where: str) -> None:
        self.message = f"object {key!r} does not exist in {where}; check the key (or whether it was deleted)"
        super().__init__(self.message)
        self.filename = key
        self.key = key
        self.where = where

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[ObjectNotFound], tuple[str, str]]:
        return type(self), (self.key, self.where)


class PreconditionFailed(SyncEngineError):
    """A conditional write (create-if-absent or compare-and-swap) lost: nothing was written."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key!r} was not written: {detail}; re-read it and decide again")
        self.key = key
        self.detail = detail

    def __reduce__(self) -> tuple[type[PreconditionFailed], tuple[str, str]]:
        return type(self), (self.key, self.detail)


class UploadNotFound(SyncEngineError, FileNotFoundError):
    """A multipart upload id is unknown for the key (never created, completed or aborted)."""

    def __init__(self, key: str, upload_id: str) -> None:
        self.message = (
            f"no multipart upload {upload_id!r} for {key!r} (already completed or aborted?); "
            "start a new upload"
        )
        super().__init__(self.message)
        self.filename = key
        self.key = key
        self.upload_id = upload_id

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[UploadNotFound], tuple[str, str]]:
        return type(self), (self.key, self.upload_id)


class InvalidPart(SyncEngineError, ValueError):
    """A multipart part is out of range, too small or too large, or not the one uploaded."""


class BodySizeMismatch(SyncEngineError, ValueError):
    """A request body produced a different number of bytes than it declared."""


class StoreClosed(SyncEngineError, RuntimeError):
    """An object store was used after `close()`."""


class StoreError(SyncEngineError):
    """A remote object store refused or failed a request (base of the store errors below)."""


class StoreAccessDenied(StoreError, PermissionError):
    """The store rejected the credentials or their permissions (403, bad signature, unknown
    key id, missing credentials). Retrying cannot help; the message says what to check and
    never contains a secret."""


class LinkInRepository(StoreError, PermissionError):
    """A folder or object inside a local repository is a symbolic link. A local store never
    follows one: anyone who can write a shared repository folder could otherwise point
    ``data/xx`` or ``artifacts/p`` anywhere and make a reader write, read or delete there
    (docs/SECURITY.md)."""


class BucketNotFound(StoreError, FileNotFoundError):
    """The bucket does not exist at the endpoint (or these credentials cannot see it)."""


class StoreUnavailable(StoreError, ConnectionError):
    """A request kept failing with transient errors (connection resets, timeouts, 5xx,
    throttling) until the retry policy gave up."""


class StoreRequestFailed(StoreError):
    """The store answered with an error that retrying cannot fix (e.g. 400 InvalidArgument)."""


class ConditionalWritesUnsupported(StoreError):
    """The server does not honour conditional writes (``If-None-Match: *`` / ``If-Match``),
    on which version records and refs rely; using it would risk lost updates."""


class ObjectTooLarge(SyncEngineError, ValueError):
    """An object is larger than its kind may be (a read's ``max_bytes``): refused before its
    body is read, so a planted object or a server's ``Content-Length`` cannot make a reader
    allocate more (docs/FORMAT.md "Object sizes")."""

    def __init__(self, key: str, size: int, max_bytes: int) -> None:
        self.key, self.size, self.max_bytes = key, size, max_bytes
        super().__init__(
            f"{key} is {size} bytes, more than the {max_bytes} such an object may hold; not read "
            "(it was not written by syncengine, or is damaged: run `syncengine check`)"
        )


class ObjectChanged(StoreError):
    """An object was replaced or deleted while a pinned read (``open_read``) was resuming it."""


class PreconditionFailedAfterRetry(PreconditionFailed):
    """A conditional write lost after an earlier attempt of the same write failed in transit.

    The earlier attempt may have been applied and then changed by another writer, so the
    write's outcome is unknown: re-read the object and decide again (see docs/S3.md)."""


class ReferenceNotFound(SyncEngineError, FileNotFoundError):
    """An external object a reference names (s3://, file://, https://) does not exist."""


class ReferenceChanged(SyncEngineError):
    """An external object changed since its reference was logged (ETag, version, size or digest)."""


class ReferencesNotTrusted(SyncEngineError, PermissionError):
    """A version names external objects, and the user has not said this repository may make
    them be fetched (``--trust-references``, ``trust_references=True``, or
    ``SYNCENGINE_TRUST_REFERENCES``; docs/REFERENCES.md "Trust")."""


class TooManyObjects(SyncEngineError, ValueError):
    """A reference to a folder or prefix would expand to more objects than ``max_objects``."""
