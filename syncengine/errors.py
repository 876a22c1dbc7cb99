"""The one exception hierarchy: every user-facing failure says what went wrong and what to do."""

from __future__ import annotations


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
