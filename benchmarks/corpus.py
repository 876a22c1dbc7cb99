"""Deterministic standard corpus for syncengine benchmarks (same bytes on every machine).

Usage::

    python benchmarks/corpus.py DIR [--modify] [--checkpoints] [--only small,medium,large]
                                    [--quick] [--force] [--digest] [--seed N]

Generator: every byte comes from the BLAKE3 extendable output (XOF) in keyed mode.
The key is ``BLAKE3-derive_key(CONTEXT, str(seed))``; a stream is named by a label
(for a base file: ``"file:" + its relative POSIX path``) and its bytes are
``blake3(label, key=key).digest(length=n, seek=offset)``. BLAKE3 is a fixed
specification, so the output does not depend on the platform, the library version or
the order in which files are written, and any block of any file can be produced on its
own (seek), which lets several threads write at ~8 GB/s per core.

Layout (standard sizes; ``--quick`` shrinks every set for smoke runs)::

    small/dNN/fNNNN.bin       10,000 x 16 KiB, 100 files per folder, 100 folders
    medium/mNN.bin            40 x 16 MiB
    large/l0.bin, l1.bin      2 x 512 MiB
    checkpoints/stepK/model.bin   (only with --checkpoints) K = 0..4, 512 MiB each

``--modify`` turns the base state into the "modified" state: 100 small files (the 100
whose keyed hash of ``"select-modify:" + path`` sorts first) get new bytes from the
stream ``"modify:" + path``, and ``large/l0.bin`` gets 1 MiB from the stream
``"append:large/l0.bin"`` appended. Both states are pure functions of the seed, and the
tool converges to the requested state from either one: running with ``--modify`` twice
changes nothing the second time (contents are compared before anything is written, so
mtimes stay too), and running without ``--modify`` restores the base state (the 100
files get their base bytes back and ``l0.bin`` is truncated to 512 MiB).

Checkpoints: ``model.bin`` is a sequence of 4 MiB blocks. Block ``b`` of step ``k``
holds the stream ``"checkpoint:{b}:{g}"`` where ``g`` is the last step ``<= k`` that
changed it (step 0 writes every block). At each step ``k >= 1`` the
``round(0.3 * blocks)`` blocks whose keyed hash of ``"select-checkpoint:{k}:{b}"`` sorts
first change; the others stay as they were (frozen layers).

Existing files with the expected size are kept (``--force`` rewrites them); the files
the modify step touches are compared by content, which is cheap. A JSON summary goes to
stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

try:
    import blake3
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("corpus.py needs the 'blake3' package: pip install blake3")

SEED = 20240601
CONTEXT = "syncengine benchmarks corpus v1 2024-06-01 seed key"
KIB = 1024
MIB = 1024 * KIB
WRITE_BLOCK = 1 * MIB  # XOF output and write size: measured fastest (~8 GB/s a core)
PREALLOCATE_MIN = 1 * MIB
BASE_SETS = ("small", "medium", "large")
ALL_SETS = (*BASE_SETS, "checkpoints")


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes of one corpus variant."""

    small_files: int
    small_files_per_dir: int
    small_size: int
    medium_files: int
    medium_size: int
    large_files: int
    large_size: int
    modify_files: int
    append_size: int
    checkpoint_steps: int
    checkpoint_size: int
    checkpoint_block: int
    checkpoint_change: float


STANDARD = CorpusSpec(
    small_files=10_000,
    small_files_per_dir=100,
    small_size=16 * KIB,
    medium_files=40,
    medium_size=16 * MIB,
    large_files=2,
    large_size=512 * MIB,
    modify_files=100,
    append_size=1 * MIB,
    checkpoint_steps=5,
    checkpoint_size=512 * MIB,
    checkpoint_block=4 * MIB,
    checkpoint_change=0.3,
)

QUICK = CorpusSpec(
    small_files=1_000,
    small_files_per_dir=100,
    small_size=16 * KIB,
    medium_files=4,
    medium_size=16 * MIB,
    large_files=2,
    large_size=64 * MIB,
    modify_files=10,
    append_size=1 * MIB,
    checkpoint_steps=5,
    checkpoint_size=64 * MIB,
    checkpoint_block=4 * MIB,
    checkpoint_change=0.3,
)


def seed_key(seed: int = SEED) -> bytes:
    """The 32-byte BLAKE3 key every stream of this corpus is keyed with."""
    return blake3.blake3(str(seed).encode("ascii"), derive_key_context=CONTEXT).digest()


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of the stream named ``label``, starting at ``offset`` in it."""

    label: str
    length: int
    offset: int = 0


@dataclass(frozen=True)
class Target:
    """A file to produce: its path relative to the corpus root and its content."""

    relpath: str
    segments: tuple[Segment, ...]
    compare_content: bool = False  # small files the modify step touches
    keep_prefix: int = 0  # bytes already known to be right when the file is longer

    @property
    def size(self) -> int:
        return sum(s.length for s in self.segments)


def stream_blocks(key: bytes, segments: Iterable[Segment], block: int = WRITE_BLOCK) -> Iterator[bytes]:
    """Yield the content described by ``segments`` in blocks of at most ``block`` bytes."""
    for seg in segments:
        hasher = blake3.blake3(seg.label.encode("utf-8"), key=key)
        done = 0
        while done < seg.length:
            n = min(block, seg.length - done)
            yield hasher.digest(length=n, seek=seg.offset + done)
            done += n


def content_bytes(key: bytes, segments: Iterable[Segment]) -> bytes:
    return b"".join(stream_blocks(key, segments))


def write_stream_file(path: Path, key: bytes, segments: Sequence[Segment]) -> int:
    """Write ``segments`` to ``path`` (truncating it); return the number of bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(s.length for s in segments)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if size >= PREALLOCATE_MIN and hasattr(os, "posix_fallocate"):
            # Reserving the extent up front roughly doubles write speed on ext4.
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, size)
        for chunk in stream_blocks(key, segments):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            written += len(chunk)
    finally:
        os.close(fd)
    return written


def ranked(key: bytes, labels: Iterable[str]) -> list[str]:
    """``labels`` sorted by their keyed BLAKE3 hash: a seed-determined shuffle."""
    return sorted(labels, key=lambda s: blake3.blake3(s.encode("utf-8"), key=key).digest())


def small_relpath(i: int, spec: CorpusSpec) -> str:
    return f"small/d{i // spec.small_files_per_dir:02d}/f{i:04d}.bin"


def modified_small_files(key: bytes, spec: CorpusSpec) -> list[str]:
    """The relative paths of the small files that ``--modify`` rewrites, sorted."""
    paths = [small_relpath(i, spec) for i in range(spec.small_files)]
    chosen = ranked(key, (f"select-modify:{p}" for p in paths))[: spec.modify_files]
    return sorted(label.split(":", 1)[1] for label in chosen)


def checkpoint_generations(key: bytes, spec: CorpusSpec) -> list[list[int]]:
    """For each step, for each block: the step that last wrote that block."""
    blocks = spec.checkpoint_size // spec.checkpoint_block
    changed_per_step = round(spec.checkpoint_change * blocks)
    gens = [[0] * blocks]
    for step in range(1, spec.checkpoint_steps):
        labels = [f"select-checkpoint:{step}:{b}" for b in range(blocks)]
        changed = {int(lab.rsplit(":", 1)[1]) for lab in ranked(key, labels)[:changed_per_step]}
        gens.append([step if b in changed else g for b, g in enumerate(gens[-1])])
    return gens


def plan(key: bytes, spec: CorpusSpec, sets: Sequence[str], modify: bool) -> list[Target]:
    """Every file of the requested sets, largest first so threads finish together."""
    targets: list[Target] = []
    if "small" in sets:
        touched = set(modified_small_files(key, spec))
        for i in range(spec.small_files):
            rel = small_relpath(i, spec)
            label = f"modify:{rel}" if modify and rel in touched else f"file:{rel}"
            targets.append(Target(rel, (Segment(label, spec.small_size),), compare_content=rel in touched))
    if "medium" in sets:
        for i in range(spec.medium_files):
            rel = f"medium/m{i:02d}.bin"
            targets.append(Target(rel, (Segment(f"file:{rel}", spec.medium_size),)))
    if "large" in sets:
        for i in range(spec.large_files):
            rel = f"large/l{i}.bin"
            segs = [Segment(f"file:{rel}", spec.large_size)]
            keep = 0
            if i == 0:
                keep = spec.large_size  # base bytes stay; only the appended tail can differ
                if modify:
                    segs.append(Segment(f"append:{rel}", spec.append_size))
            targets.append(Target(rel, tuple(segs), keep_prefix=keep))
    if "checkpoints" in sets:
        for step, gens in enumerate(checkpoint_generations(key, spec)):
            blocks = tuple(Segment(f"checkpoint:{b}:{g}", spec.checkpoint_block) for b, g in enumerate(gens))
            targets.append(Target(f"checkpoints/step{step}/model.bin", blocks))
    targets.sort(key=lambda t: -t.size)
    return targets


@dataclass
class Outcome:
    written_files: int = 0
    written_bytes: int = 0
    kept_files: int = 0
    paths: list[str] = field(default_factory=list)


def realize(root: Path, key: bytes, target: Target, force: bool) -> tuple[int, int]:
    """Make ``root/target.relpath`` hold ``target``'s bytes; return (files, bytes) written."""
    path = root / target.relpath
    want = target.size
    try:
        have = path.stat().st_size
    except FileNotFoundError:
        have = -1
    if force or have < 0:
        return 1, write_stream_file(path, key, target.segments)
    if target.compare_content:
        expected = content_bytes(key, target.segments)
        if have == want and path.read_bytes() == expected:
            return 0, 0
        path.write_bytes(expected)
        return 1, want
    if target.keep_prefix and have >= target.keep_prefix:
        return _fix_tail(path, key, target, have)
    if have == want:
        return 0, 0
    return 1, write_stream_file(path, key, target.segments)


def _fix_tail(path: Path, key: bytes, target: Target, have: int) -> tuple[int, int]:
    """Bring the bytes after ``keep_prefix`` in line (the ``--modify`` append), comparing first."""
    tail_segments: list[Segment] = []
    skip = target.keep_prefix
    for seg in target.segments:
        if skip >= seg.length:
            skip -= seg.length
            continue
        tail_segments.append(Segment(seg.label, seg.length - skip, seg.offset + skip))
        skip = 0
    expected = content_bytes(key, tail_segments)
    with open(path, "r+b") as f:
        f.seek(target.keep_prefix)
        if have == target.size and f.read(len(expected)) == expected:
            return 0, 0
        f.seek(target.keep_prefix)
        f.write(expected)
        f.truncate(target.size)
    return 1, len(expected)


def generate(
    root: Path,
    sets: Sequence[str] = BASE_SETS,
    *,
    modify: bool = False,
    force: bool = False,
    spec: CorpusSpec = STANDARD,
    seed: int = SEED,
    threads: int | None = None,
) -> dict[str, object]:
    """Create or update the corpus under ``root``; return the summary printed by the CLI."""
    key = seed_key(seed)
    start = time.perf_counter()
    targets = plan(key, spec, sets, modify)
    outcome = Outcome()
    # BLAKE3's XOF and file writes both release the GIL, so threads scale.
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        # Small files go in batches: one future per file costs more than the file.
        batches: list[list[Target]] = []
        for t in targets:
            if batches and t.size < MIB and len(batches[-1]) < 256 and batches[-1][0].size < MIB:
                batches[-1].append(t)
            else:
                batches.append([t])
        results = pool.map(lambda batch: [realize(root, key, t, force) for t in batch], batches)
        for batch_result in results:
            for files, nbytes in batch_result:
                outcome.written_files += files
                outcome.written_bytes += nbytes
                outcome.kept_files += 1 - files
    seconds = time.perf_counter() - start
    total = sum(t.size for t in targets)
    return {
        "dir": str(root),
        "seed": seed,
        "variant": "quick" if spec == QUICK else "standard",
        "sets": list(sets),
        "state": "modified" if modify else "base",
        "files": len(targets),
        "bytes": total,
        "written_files": outcome.written_files,
        "written_bytes": outcome.written_bytes,
        "kept_files": outcome.kept_files,
        "seconds": round(seconds, 3),
        "write_gb_per_second": round(outcome.written_bytes / seconds / 1e9, 3) if seconds else None,
        "generator": f"BLAKE3 XOF keyed by derive_key({CONTEXT!r}, str(seed)), stream label per file",
    }


def tree_digest(root: Path, relpaths: Iterable[str]) -> str:
    """BLAKE3 over (path, size, BLAKE3(content)) of the files on disk, for cross-machine checks."""
    outer = blake3.blake3()
    buf = bytearray(8 * MIB)
    view = memoryview(buf)
    for rel in sorted(relpaths):
        inner = blake3.blake3(max_threads=blake3.blake3.AUTO)
        size = 0
        with open(root / rel, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                inner.update(view[:n])
                size += n
        outer.update(f"{rel}\0{size}\0".encode() + inner.digest())
    return outer.hexdigest()


def parse_sets(only: str | None, checkpoints: bool) -> list[str]:
    sets = list(BASE_SETS) if only is None else [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in sets if s not in ALL_SETS]
    if unknown:
        raise SystemExit(f"--only: unknown set(s) {', '.join(unknown)}; choose from {', '.join(ALL_SETS)}")
    if checkpoints and "checkpoints" not in sets:
        sets.append("checkpoints")
    return [s for s in ALL_SETS if s in sets]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="corpus root (created if missing)")
    parser.add_argument("--modify", action="store_true", help="produce the modified state (see module doc)")
    parser.add_argument(
        "--checkpoints", action="store_true", help="also write checkpoints/step{0..4}/model.bin"
    )
    parser.add_argument("--only", help="comma-separated sets: small,medium,large (and checkpoints)")
    parser.add_argument("--force", action="store_true", help="rewrite files even if their size is right")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument("--digest", action="store_true", help="read the files back and print a tree digest")
    parser.add_argument(
        "--seed", type=int, default=SEED, help=f"default {SEED}; other seeds are not the standard"
    )
    parser.add_argument("--threads", type=int, default=None, help="writer threads (default: CPU count)")
    args = parser.parse_args(argv)

    sets = parse_sets(args.only, args.checkpoints)
    spec = QUICK if args.quick else STANDARD
    summary = generate(
        args.dir, sets, modify=args.modify, force=args.force, spec=spec, seed=args.seed, threads=args.threads
    )
    if args.digest:
        start = time.perf_counter()
        relpaths = [t.relpath for t in plan(seed_key(args.seed), spec, sets, args.modify)]
        summary["tree_digest"] = tree_digest(args.dir, relpaths)
        summary["digest_seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
