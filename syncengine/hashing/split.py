"""Hashing one large file on several threads with exactly the chunks a single pass would give.

Chunk boundaries are a chain: each one depends only on the previous one and the content. A
segment hashed from an arbitrary offset produces a chain that, after an insertion-like
"misalignment", falls into step with the true chain within a few chunks, and once two chains
share one boundary they share all later ones. So: hash K segments in parallel, each from a
guessed start; then walk the true chain from offset 0 and, at the end of each segment, extend
it chunk by chunk (rarely more than a few) until it lands on a boundary of the next segment's
chain, from where that segment's chunks are the true ones. The result is identical to a
sequential pass (property-tested); the cost is a few duplicated chunks per segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from syncengine.hashing.digests import Chunk

#: Files at least this large are split when threads are free.
SPLIT_MIN = 64 << 20
SEGMENT_MIN = 32 << 20


def segment_starts(size: int, threads: int) -> list[int]:
    """Start offsets of the segments of a file of `size` bytes (the first is always 0)."""
    if threads < 2 or size < SPLIT_MIN:
        return [0]
    count = max(1, min(2 * threads, size // SEGMENT_MIN))
    step = size // count
    return [i * step for i in range(count)]


def merge_segments(
    starts: Sequence[int],
    chains: Sequence[list[Chunk]],
    hash_range: Callable[[int, int], list[Chunk]],
) -> list[Chunk]:
    """The true chunk list from per-segment chains.

    `chains[i]` holds the chunks from `starts[i]` up to the first one ending at or beyond
    `starts[i+1]` (the last chain runs to EOF); `hash_range(start, stop)` hashes more of the
    file the same way.
    """
    out: list[Chunk] = list(chains[0])
    for nxt_start, nxt in zip(starts[1:], chains[1:], strict=True):
        index = {nxt_start: 0}
        for i, c in enumerate(nxt):
            index[c.offset + c.length] = i + 1
        end = out[-1].offset + out[-1].length if out else 0
        while end not in index:
            more = hash_range(end, end + 1)
            if not more:  # EOF reached before the chains met: the file shrank meanwhile
                return out
            out.extend(more)
            end = out[-1].offset + out[-1].length
        out.extend(nxt[index[end] :])
    return out
