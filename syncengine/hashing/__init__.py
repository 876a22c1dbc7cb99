"""Files to digests: chunking, BLAKE3, scanning, the stat cache and parallel tree hashing."""

from syncengine.hashing.backend import IMPLEMENTATION
from syncengine.hashing.digests import Chunk, FileDigest, TreeDigest, file_digest_from_chunks
from syncengine.hashing.params import DEFAULT_PARAMS, ChunkerParams

__all__ = [
    "DEFAULT_PARAMS",
    "IMPLEMENTATION",
    "Chunk",
    "ChunkerParams",
    "FileDigest",
    "TreeDigest",
    "file_digest_from_chunks",
]
