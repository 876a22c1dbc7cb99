"""Golden vectors (tests/data/vectors.json): both implementations reproduce the frozen format."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import ModuleType

import blake3
import pytest

from syncengine.hashing.digests import FILE_KEY, TREE_KEY, TreeDigest
from syncengine.hashing.params import ChunkerParams, gear_table

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "vectors.json").read_text())
PARAMS = {k: ChunkerParams(*v) for k, v in VECTORS["params"].items()}


def data_for(n: int) -> bytes:
    return blake3.blake3(f"syncengine vector {n}".encode()).digest(length=n)


def test_constants() -> None:
    assert blake3.blake3(struct.pack("<256Q", *gear_table())).hexdigest() == VECTORS["gear_table_blake3"]
    assert FILE_KEY.hex() == VECTORS["file_key"]
    assert TREE_KEY.hex() == VECTORS["tree_key"]


@pytest.mark.parametrize("vec", VECTORS["files"], ids=lambda v: f"{v['params']}-{v['size']}")
def test_file_vectors(vec: dict[str, object], impl: ModuleType, tmp_path: Path) -> None:
    params = PARAMS[str(vec["params"])]
    size = int(str(vec["size"]))
    data = data_for(size)
    path = tmp_path / "v.bin"
    path.write_bytes(data)
    got = impl.FileHasher(params).hash_file(str(path))
    assert got.digest.hex() == vec["digest"]
    assert [[c.length, c.digest.hex()] for c in got.chunks] == vec["chunks"]
    if vec["chunks"]:
        assert impl.cut_points(data, params) == [c[0] for c in vec["chunks"]]  # type: ignore[attr-defined]


def test_tree_vector() -> None:
    tree = TreeDigest()
    for path, digest in VECTORS["tree"]["entries"]:
        tree.add(path, bytes.fromhex(digest))
    assert tree.hexdigest() == VECTORS["tree"]["digest"]


def test_manifest_vector() -> None:
    from syncengine.repo.manifest import (
        ManifestBuilder,
        ManifestEntry,
        decode_manifest,
        decode_page,
        encode_manifest,
    )

    vec = VECTORS["manifest"]
    entries = [
        ManifestEntry(
            p, size, mode, bytes.fromhex(d), tuple((n, bytes.fromhex(c)) for n, c in chunks), ref, extra
        )
        for p, size, mode, d, chunks, ref, extra in vec["entries"]
    ]
    b = ManifestBuilder()
    pages = []
    for e in entries:
        pages += b.add(e)
    rest, m = b.finish()
    pages += rest
    assert [[pid.hex(), data.hex()] for pid, data in pages] == vec["pages"]
    assert encode_manifest(m).hex() == vec["manifest"]
    assert decode_manifest(bytes.fromhex(vec["manifest"])) == m
    pid, data = pages[0]
    assert decode_page(pid, data).entries == tuple(entries)


def test_pack_and_index_vectors() -> None:
    from syncengine.repo.pack import (
        PackWriter,
        blob_digest,
        decode_index,
        encode_index,
        index_entries,
        parse_pack,
    )

    vec = VECTORS["pack"]
    blobs = [bytes.fromhex(b) for b in vec["blobs"]]
    w = PackWriter("auto")
    for b in blobs:
        w.add(blob_digest(b), b)
    pid, data, locs = w.finish()
    assert (pid.hex(), data.hex()) == (vec["pack_id"], vec["pack"])
    assert parse_pack(pid, data) == locs
    sid, seg = encode_index(index_entries(pid, locs))
    assert (sid.hex(), seg.hex()) == (vec["index_id"], vec["index"])
    assert len(decode_index(sid, seg)) == 3


def test_record_vectors() -> None:
    """config, version record and artifact head: the exact JSON bytes, both ways."""
    import msgspec

    from syncengine.repo.records import (
        ArtifactHead,
        VersionRecord,
        decode_head,
        decode_version,
        encode_record,
    )
    from syncengine.repo.repository import RepoConfig

    vec = VECTORS["records"]
    config = msgspec.json.decode(vec["config"].encode(), type=RepoConfig)
    assert msgspec.json.encode(config).decode() == vec["config"]
    assert (config.format, config.hash, config.chunker["avg"]) == (1, "blake3", 1 << 20)
    for name in ("version", "version_minimal"):
        record = decode_version(vec[name].encode())
        assert isinstance(record, VersionRecord)
        assert encode_record(record).decode() == vec[name]
    full = decode_version(vec["version"].encode())
    assert full.metadata["split"] == {"train": 0.9} and full.tags == ("nightly", "v2-data")
    assert decode_version(vec["version_minimal"].encode()).description == ""  # defaults omitted
    # Written before `latest` was an ordinary alias: it reads with `latest` on the newest.
    head = decode_head(vec["head"].encode())
    assert isinstance(head, ArtifactHead) and head.aliases == {"best": 2, "prod": 3, "latest": 3}
    assert head.latest_in_aliases
    # Written since: `aliases` alone says who holds `latest` (here not the newest, v3).
    moved = decode_head(vec["head_latest_alias"].encode())
    assert (moved.latest, moved.aliases["latest"], moved.latest_in_aliases) == (3, 2, True)
    assert encode_record(moved).decode() == vec["head_latest_alias"]
