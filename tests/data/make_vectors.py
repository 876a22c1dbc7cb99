"""Writes tests/data/vectors.json from the reference implementation.

Run once when the format is defined; the tests compare both implementations against the
checked-in file, so a change of format shows up as a failing test, not a silent new vector.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import blake3

from syncengine.hashing import reference
from syncengine.hashing.digests import FILE_KEY, TREE_KEY, Chunk, TreeDigest, file_digest_from_chunks
from syncengine.hashing.params import ChunkerParams, gear_table

PARAMS = {
    "tiny": ChunkerParams(64, 256, 1024),
    "medium": ChunkerParams(4096, 16384, 65536),
    "default": ChunkerParams(),
}
INPUTS = [
    ("tiny", 0),
    ("tiny", 1),
    ("tiny", 64),
    ("tiny", 65),
    ("tiny", 1025),
    ("tiny", 5000),
    ("medium", 4096),
    ("medium", 300_000),
    ("default", 262_144),
    ("default", 262_145),
    ("default", 6_000_000),
]


def data_for(n: int) -> bytes:
    return blake3.blake3(f"syncengine vector {n}".encode()).digest(length=n)


def file_vector(name: str, n: int) -> dict[str, object]:
    params = PARAMS[name]
    data = data_for(n)
    if n <= params.small_file_limit:
        chunks: list[Chunk] = []
        digest = blake3.blake3(data).digest()
    else:
        chunks, pos = [], 0
        for length in reference.cut_points(data, params):
            chunks.append(Chunk(pos, length, blake3.blake3(data[pos : pos + length]).digest()))
            pos += length
        digest = file_digest_from_chunks(chunks)
    return {
        "params": name,
        "input": f"BLAKE3 XOF of 'syncengine vector {n}', {n} bytes",
        "size": n,
        "chunks": [[c.length, c.digest.hex()] for c in chunks],
        "digest": digest.hex(),
    }


def manifest_vector() -> dict[str, object]:
    from syncengine.repo.manifest import ManifestBuilder, ManifestEntry, encode_manifest

    entries = [
        ManifestEntry("a.txt", 3, 0o644, blake3.blake3(b"abc").digest()),
        ManifestEntry(
            "dir/big.bin",
            300_000,
            0o755,
            bytes(range(32)),
            ((200_000, bytes([1]) * 32), (100_000, bytes([2]) * 32)),
        ),
        ManifestEntry(
            "ref.csv", 10, 0o644, bytes(32), (), "s3://bucket/ref.csv", {"etag": "abc", "version_id": "v1"}
        ),
    ]
    b = ManifestBuilder()
    pages: list[tuple[bytes, bytes]] = []
    for e in entries:
        pages += b.add(e)
    rest, m = b.finish()
    pages += rest
    return {
        "entries": [
            [e.path, e.size, e.mode, e.digest.hex(), [[n, d.hex()] for n, d in e.chunks], e.ref, e.extra]
            for e in entries
        ],
        "pages": [[pid.hex(), data.hex()] for pid, data in pages],
        "manifest": encode_manifest(m).hex(),
    }


def reference_vector() -> dict[str, object]:
    """Reference entries (docs/FORMAT.md "References"): digest input bytes, digest, entry bytes."""
    import msgspec

    from syncengine.hashing.digests import TreeDigest
    from syncengine.repo.references import REF_KEY, covered_extra, reference_entry

    cases = [
        (
            "train.csv",
            "s3://bucket/data/train.csv",
            1234,
            {"etag": "d41d8cd98f00b204e9800998ecf8427e", "version_id": "3HL4kqtJlcpXroDTDmJ"},
        ),
        (
            "local/a.txt",
            "file:///data/a%20b.txt",
            5,
            {"mtime_ns": 1700000000123456789, "blake3": blake3.blake3(b"hello").hexdigest()},
        ),
        ("local/b.txt", "file:///data/b.txt", 7, {"mtime_ns": 1700000000000000000}),
        (
            "web/index.html",
            "https://example.com/index.html",
            42,
            {"etag": '"abc"', "last_modified": "Tue, 01 Dec 2026 21:00:00 GMT"},
        ),
    ]
    enc = msgspec.msgpack.Encoder(order="deterministic").encode
    tree = TreeDigest()
    out = []
    for path, uri, size, extra in sorted(cases, key=lambda c: c[0].encode()):
        e = reference_entry(path, uri, size, extra)
        tree.add(e.path, e.digest)
        out.append(
            {
                "path": path,
                "uri": uri,
                "size": size,
                "extra": extra,
                "digest_input": enc([uri, size, covered_extra(extra)]).hex(),
                "digest": e.digest.hex(),
                "entry": enc(e).hex(),
            }
        )
    return {"ref_key": REF_KEY.hex(), "entries": out, "content_digest": tree.hexdigest()}


def reference_wandb_names_vector() -> dict[str, object]:
    """An S3 reference as written since its `extra` uses W&B's key names (`versionID`); its
    digest input spells the key as before (`version_id`), so the digest equals the one of
    the same object logged earlier (`reference` → `train.csv`)."""
    import msgspec

    from syncengine.repo.references import covered_extra, reference_entry

    path, uri, size = "train.csv", "s3://bucket/data/train.csv", 1234
    extra = {"etag": "d41d8cd98f00b204e9800998ecf8427e", "versionID": "3HL4kqtJlcpXroDTDmJ"}
    enc = msgspec.msgpack.Encoder(order="deterministic").encode
    e = reference_entry(path, uri, size, extra)
    return {
        "path": path,
        "uri": uri,
        "size": size,
        "extra": extra,
        "digest_input": enc([uri, size, covered_extra(extra)]).hex(),
        "digest": e.digest.hex(),
        "entry": enc(e).hex(),
    }


def pack_vector() -> dict[str, object]:
    from syncengine.repo.pack import PackWriter, blob_digest, encode_index, index_entries

    blobs = [b"", b"hello", b"line\n" * 400]
    w = PackWriter("auto")
    for b in blobs:
        w.add(blob_digest(b), b)
    pid, data, locs = w.finish()
    sid, seg = encode_index(index_entries(pid, locs))
    return {
        "blobs": [b.hex() for b in blobs],
        "pack_id": pid.hex(),
        "pack": data.hex(),
        "index_id": sid.hex(),
        "index": seg.hex(),
    }


def records_vector() -> dict[str, object]:
    """The JSON records (config, version record, artifact head): exact bytes."""
    import msgspec

    from syncengine.repo.records import ArtifactHead, VersionRecord, encode_record
    from syncengine.repo.repository import RepoConfig

    config = RepoConfig(
        1, "0123456789abcdef0123456789abcdef", "blake3",
        {"min": 262144, "avg": 1048576, "max": 4194304, "seed": 0x73796E6367656172},
    )  # fmt: skip
    version = VersionRecord(
        1, "vision", "mnist", 3, "dataset", "manifests/ab/" + "ab" * 32, "cd" * 32, 2, 70000,
        "2024-06-01T12:00:00.000000Z", {"host": "trainer-1", "user": "ml"}, "Grüße, \"train\" split",
        {"rows": 70000, "split": {"train": 0.9}, "ok": True, "none": None}, ("nightly", "v2-data"), 86400,
    )  # fmt: skip
    head = ArtifactHead(
        1, "vision", "mnist", "dataset", 3, {"best": 2, "prod": 3}, {"cd" * 32: 3, "ef" * 32: 2}
    )
    # Since `latest` is an ordinary alias: here a user moved it to v2 (v3 is the newest).
    head_latest_alias = ArtifactHead(
        1, "vision", "mnist", "dataset", 3, {"best": 2, "latest": 2, "prod": 3}, {"cd" * 32: 3, "ef" * 32: 2},
        latest_in_aliases=True,
    )  # fmt: skip
    minimal = VersionRecord(
        1, "p", "n", 0, "t", "manifests/00/" + "00" * 32, "11" * 32, 0, 0, "2024-06-01T00:00:00Z"
    )
    return {
        "config": msgspec.json.encode(config).decode(),
        "version": encode_record(version).decode(),
        "version_minimal": encode_record(minimal).decode(),
        "head": encode_record(head).decode(),
        "head_latest_alias": encode_record(head_latest_alias).decode(),
    }


def lineage_vector() -> dict[str, object]:
    """Runs, edge markers and the creation-time lineage fields of a version record: exact bytes."""
    from syncengine.repo.records import VersionRecord, encode_record
    from syncengine.repo.runs import Edge, RunRecord, encode_edge, encode_run

    run = RunRecord(
        1, "vision", "k3x9q2ab", "2024-06-01T12:00:00.000000Z", "crashed", "train", "sweep-7",
        {"lr": 0.01, "layers": [64, 64], "opt": {"name": "adam"}}, {"val_acc": 0.93, "best": True},
        {"host": "trainer-1", "user": "ml"}, "2024-06-01T13:00:00.000000Z", 2,
        "RuntimeError: CUDA out of memory",
    )  # fmt: skip
    minimal = RunRecord(1, "p", "r", "2024-06-01T00:00:00Z")
    logged = VersionRecord(
        1, "vision", "model", 0, "model", "manifests/ab/" + "ab" * 32, "cd" * 32, 1, 7,
        "2024-06-01T12:30:00.000000Z", logged_by="vision/k3x9q2ab",
    )  # fmt: skip
    link = VersionRecord(
        1, "reg", "models", 4, "model", "manifests/ab/" + "ab" * 32, "cd" * 32, 1, 7,
        "2024-06-02T09:00:00.000000Z", {"host": "laptop", "user": "lead"}, deleted=True,
        linked_from="vision/model:v0",
    )  # fmt: skip
    return {
        "run": encode_run(run).decode(),
        "run_minimal": encode_run(minimal).decode(),
        "edge": encode_edge(Edge(1, "2024-06-01T12:10:00.000000Z")).decode(),
        "edge_via": encode_edge(Edge(1, "2024-06-01T12:10:00.000000Z", "reg/models:v4")).decode(),
        "version_logged_by": encode_record(logged).decode(),
        "version_link": encode_record(link).decode(),
    }


def distributed_vector() -> dict[str, object]:
    """A distributed writer's part record, a seal and a finished marker: exact bytes."""
    from syncengine.repo.distributed import FinishedRecord, PartRecord, SealRecord, encode

    part = PartRecord(
        1, "nlp", "corpus", "shard-job", "k3x9q2ab.0f1e2d3c4b5a6978", "dataset",
        "manifests/ab/" + "ab" * 32, "cd" * 32, 2, 6034, "2024-06-01T12:00:00.000000Z",
        {"host": "worker-3", "user": "ml"}, "nlp/k3x9q2ab", "index/" + "ef" * 32,
    )  # fmt: skip
    minimal = PartRecord(
        1, "p", "a", "g", "w.00", "t", "manifests/ab/" + "ab" * 32, "cd" * 32, 0, 0, "2024-06-01T00:00:00Z"
    )
    finished = FinishedRecord(
        1, "nlp", "corpus", "shard-job", 0, "cd" * 32, ("k3x9q2ab.0f1e2d3c4b5a6978", "m8a1.00ff00ff00ff00ff"),
        "2024-06-01T13:00:00.000000Z", "nlp/merge01",
    )  # fmt: skip
    return {
        "part": encode(part).decode(),
        "part_minimal": encode(minimal).decode(),
        "sealed": encode(SealRecord(1, "2024-06-01T12:59:00.000000Z", "nlp/merge01")).decode(),
        "finished": encode(finished).decode(),
    }


def main() -> None:
    table = gear_table()
    tree = TreeDigest()
    entries = [("a-b/x", data_for(3)), ("a/x", data_for(4)), ("ü/ñ.txt", b"")]
    for path, content in entries:
        tree.add(path, blake3.blake3(content).digest())
    out = {
        "params": {k: [p.min_size, p.avg_size, p.max_size] for k, p in PARAMS.items()},
        "gear_table_blake3": blake3.blake3(struct.pack("<256Q", *table)).hexdigest(),
        "gear_table_first": hex(table[0]),
        "file_key": FILE_KEY.hex(),
        "tree_key": TREE_KEY.hex(),
        "files": [file_vector(name, n) for name, n in INPUTS],
        "manifest": manifest_vector(),
        "reference": reference_vector(),
        "reference_wandb_names": reference_wandb_names_vector(),
        "pack": pack_vector(),
        "records": records_vector(),
        "lineage": lineage_vector(),
        "distributed": distributed_vector(),
        "tree": {
            "entries": [[p, blake3.blake3(c).hexdigest()] for p, c in entries],
            "digest": tree.hexdigest(),
        },
    }
    Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("vectors.json")).write_text(
        json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    main()
