"""syncengine: version directories of files in storage you own, and move them fast.

>>> import syncengine
>>> syncengine.IMPLEMENTATION in {"native", "python"}
True
"""

from typing import TYPE_CHECKING, Any

from syncengine._version import __version__
from syncengine.errors import FileChangedError, HashingFailed, SyncEngineError
from syncengine.hashing import IMPLEMENTATION, ChunkerParams, FileDigest

__all__ = [
    "IMPLEMENTATION",
    "Artifact",
    "ArtifactVersion",
    "ChunkerParams",
    "Draft",
    "FileChangedError",
    "FileDigest",
    "HashingFailed",
    "Repository",
    "SyncEngineError",
    "Watcher",
    "__version__",
]

if TYPE_CHECKING:
    from syncengine.api import Artifact, ArtifactVersion, Draft, Repository
    from syncengine.watch import Watcher


def __getattr__(name: str) -> Any:
    # The repository API pulls in asyncio and the stores; `syncengine hash` needs neither.
    if name in {"Artifact", "ArtifactVersion", "Draft", "Repository"}:
        from syncengine import api

        return getattr(api, name)
    if name == "Watcher":
        from syncengine.watch import Watcher

        return Watcher
    raise AttributeError(f"module 'syncengine' has no attribute {name!r}")
