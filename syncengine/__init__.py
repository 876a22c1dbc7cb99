"""syncengine: version directories of files in storage you own, and move them fast.

>>> import syncengine
>>> syncengine.IMPLEMENTATION in {"native", "python"}
True
"""

from syncengine._version import __version__
from syncengine.api import Artifact, ArtifactVersion, Repository
from syncengine.errors import FileChangedError, HashingFailed, SyncEngineError
from syncengine.hashing import IMPLEMENTATION, ChunkerParams, FileDigest

__all__ = [
    "IMPLEMENTATION",
    "Artifact",
    "ArtifactVersion",
    "ChunkerParams",
    "FileChangedError",
    "FileDigest",
    "HashingFailed",
    "Repository",
    "SyncEngineError",
    "__version__",
]
