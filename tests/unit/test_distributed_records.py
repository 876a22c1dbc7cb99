"""Distributed writers' records (part, seal, finished marker): golden bytes and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from syncengine.repo.distributed import FinishedRecord, PartRecord, SealRecord, encode, part_key

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "vectors.json").read_text())["distributed"]


def test_part_record_golden_bytes_and_round_trip() -> None:
    for name in ("part", "part_minimal"):
        raw = VECTORS[name].encode()
        part = msgspec.json.decode(raw, type=PartRecord)
        assert encode(part) == raw
    full = msgspec.json.decode(VECTORS["part"].encode(), type=PartRecord)
    assert full.run == "nlp/k3x9q2ab" and full.index_segment.startswith("index/")
    assert part_key(full.project, full.name, full.distributed_id, full.writer) == (
        "distributed/nlp/corpus/shard-job/parts/k3x9q2ab.0f1e2d3c4b5a6978"
    )


def test_seal_and_finished_golden_bytes() -> None:
    seal = msgspec.json.decode(VECTORS["sealed"].encode(), type=SealRecord)
    assert encode(seal) == VECTORS["sealed"].encode()
    done = msgspec.json.decode(VECTORS["finished"].encode(), type=FinishedRecord)
    assert encode(done) == VECTORS["finished"].encode()
    assert done.version == 0 and len(done.parts) == 2
