"""Reference entries: the frozen reference digest and entry encoding, URI checks, the merge into a put."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import blake3
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.cli.reference_commands import split_reference
from syncengine.errors import ConfigError
from syncengine.hashing.digests import TreeDigest
from syncengine.repo.manifest import ManifestBuilder, ManifestEntry, ManifestError, ManifestReader
from syncengine.repo.references import (
    REF_KEY,
    Merge,
    Reference,
    check_entry,
    reference_digest,
    reference_entry,
)

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "vectors.json").read_text())["reference"]


def test_ref_key_is_blake3_of_its_context_string() -> None:
    assert blake3.blake3(b"syncengine reference digest v1").hexdigest() == VECTORS["ref_key"] == REF_KEY.hex()


@pytest.mark.parametrize("vec", VECTORS["entries"], ids=lambda v: v["path"])
def test_reference_vectors(vec: dict[str, object]) -> None:
    uri, size, extra = str(vec["uri"]), int(vec["size"]), dict(vec["extra"])  # type: ignore[call-overload]
    # The digest is keyed BLAKE3 over exactly these bytes (computed here without the product).
    by_hand = blake3.blake3(bytes.fromhex(str(vec["digest_input"])), key=REF_KEY).hexdigest()
    assert by_hand == vec["digest"] == reference_digest(uri, size, extra).hex()
    e = reference_entry(str(vec["path"]), uri, size, extra)
    assert msgspec.msgpack.Encoder(order="deterministic").encode(e).hex() == vec["entry"]
    decoded = msgspec.msgpack.decode(bytes.fromhex(str(vec["entry"])), type=ManifestEntry)
    assert decoded == e and decoded.ref == uri and decoded.chunks == ()
    check_entry(decoded)


def test_reference_vectors_content_digest() -> None:
    tree = TreeDigest()
    for vec in VECTORS["entries"]:
        tree.add(vec["path"], bytes.fromhex(vec["digest"]))
    assert tree.hexdigest() == VECTORS["content_digest"]
    b = ManifestBuilder()
    for vec in VECTORS["entries"]:
        b.add(reference_entry(vec["path"], vec["uri"], vec["size"], vec["extra"]))
    _, m = b.finish()
    assert m.content_digest.hex() == VECTORS["content_digest"]


def test_s3_reference_extra_uses_wandb_key_names_with_the_old_digest() -> None:
    """Written since: `versionID` (W&B's name); the digest is the one the same object had
    when the key was written `version_id`, so re-logging it is identical content."""
    vec = json.loads((Path(__file__).parent.parent / "data" / "vectors.json").read_text())[
        "reference_wandb_names"
    ]
    uri, size, extra = vec["uri"], vec["size"], vec["extra"]
    assert set(extra) == {"etag", "versionID"}
    by_hand = blake3.blake3(bytes.fromhex(vec["digest_input"]), key=REF_KEY).hexdigest()
    assert by_hand == vec["digest"] == reference_digest(uri, size, extra).hex()
    (old,) = [v for v in VECTORS["entries"] if v["path"] == vec["path"]]
    assert old["extra"]["version_id"] == extra["versionID"] and old["digest"] == vec["digest"]
    e = reference_entry(vec["path"], uri, size, extra)
    assert msgspec.msgpack.Encoder(order="deterministic").encode(e).hex() == vec["entry"]
    check_entry(msgspec.msgpack.decode(bytes.fromhex(vec["entry"]), type=ManifestEntry))


def test_a_manifest_written_with_the_old_key_reads_with_wandb_names() -> None:
    (old,) = [v for v in VECTORS["entries"] if v["path"] == "train.csv"]
    stored = msgspec.msgpack.decode(bytes.fromhex(old["entry"]), type=ManifestEntry)
    assert stored.extra is not None and "version_id" in stored.extra  # as written before
    b = ManifestBuilder()
    pages = dict(b.add(stored))
    rest, m = b.finish()
    pages.update(rest)

    async def load(pid: bytes) -> bytes:
        return pages[pid]

    async def read() -> tuple[list[ManifestEntry], ManifestEntry | None]:
        reader = ManifestReader(m, load)
        return [e async for e in reader.entries()], await reader.get("train.csv")

    (listed,), got = asyncio.run(read())
    for e in (listed, got):
        assert e is not None and e.extra == {"etag": old["extra"]["etag"], "versionID": "3HL4kqtJlcpXroDTDmJ"}
        check_entry(e)  # the same digest, whichever spelling
        assert e.digest == stored.digest


def test_checksummed_file_digest_ignores_mtime_but_plain_one_does_not() -> None:
    with_sum = {"mtime_ns": 1, "blake3": "ab" * 32}
    assert reference_digest("file:///a", 1, with_sum) == reference_digest(
        "file:///a", 1, {**with_sum, "mtime_ns": 2}
    )
    assert reference_digest("file:///a", 1, {"mtime_ns": 1}) != reference_digest(
        "file:///a", 1, {"mtime_ns": 2}
    )


@given(
    uri=st.text(min_size=1, max_size=40),
    size=st.integers(0, 2**63),
    etag=st.text(max_size=20),
    other=st.text(max_size=20),
)
def test_reference_digest_changes_with_each_field(uri: str, size: int, etag: str, other: str) -> None:
    base = reference_digest(uri, size, {"etag": etag})
    assert reference_digest(uri + "x", size, {"etag": etag}) != base
    assert reference_digest(uri, size + 1, {"etag": etag}) != base
    if other != etag:
        assert reference_digest(uri, size, {"etag": other}) != base
    assert reference_digest(uri, size, {"etag": etag, "versionID": "1"}) != base


def test_tampered_reference_entry_is_refused() -> None:
    e = reference_entry("a", "s3://b/a", 3, {"etag": "x"})
    check_entry(e)
    bad = msgspec.structs.replace(e, extra={"etag": "y"})
    with pytest.raises(ManifestError, match="does not match"):
        check_entry(bad)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("bucket/key", "no URI"),
        ("gs://b/k", "unsupported scheme 'gs'"),
        ("s3:///key", "names no bucket"),
        ("file://host/x", "other hosts"),
        ("https:///x", "names no host"),
    ],
)
def test_bad_uris_are_one_line_errors(uri: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Reference.parse(uri)


def test_bad_name_and_max_objects() -> None:
    with pytest.raises(ConfigError, match="plain relative path"):
        Reference.parse("s3://b/k", name="../up")
    with pytest.raises(ConfigError, match="max_objects"):
        Reference.parse("s3://b/k/", max_objects=0)
    assert Reference.parse("s3://b/k/", name="/imgs/").name == "imgs"


def test_merge_places_references_between_files_and_refuses_a_shared_path() -> None:
    refs = [reference_entry(p, f"s3://b/{p}", 1, {"etag": "e"}) for p in ("a", "c/x", "z")]
    m = Merge(refs)
    assert [e.path for e in m.before("b")] == ["a"]
    assert [e.path for e in m.before("d")] == ["c/x"]
    assert [e.path for e in m.rest()] == ["z"]
    with pytest.raises(ConfigError, match="both a file and reference"):
        Merge(refs).before("c/x")


@pytest.mark.parametrize(
    ("files", "refs"),
    [
        (["a"], ["a/b"]),
        (["a/b"], ["a"]),
        ([], ["a", "a/b"]),
        (["a-c", "a/x"], ["a"]),
        (["z"], ["a", "a-b", "a/b"]),
    ],
)
def test_merge_refuses_a_path_that_is_a_file_and_a_folder(files: list[str], refs: list[str]) -> None:
    entries = [reference_entry(p, f"s3://b/{p}", 1, {"etag": "e"}) for p in refs]
    m = Merge(entries)
    with pytest.raises(ConfigError, match="would be a file and the folder of"):
        for f in files:
            m.before(f)
        m.rest()


def test_merge_allows_neighbours_that_only_share_a_name_prefix() -> None:
    m = Merge([reference_entry(p, f"s3://b/{p}", 1, {"etag": "e"}) for p in ("a", "a.b/c")])
    assert [e.path for e in m.before("a-x/y")] == ["a"]
    assert [e.path for e in m.before("ab")] == ["a.b/c"]


def test_cli_reference_values() -> None:
    assert split_reference("s3://b/k") == ("s3://b/k", None)
    assert split_reference("data/imgs=s3://b/images/") == ("s3://b/images/", "data/imgs")
    assert split_reference("https://h/f?a=b") == ("https://h/f?a=b", None)
    assert split_reference("x=https://h/f?a=b=c") == ("https://h/f?a=b=c", "x")
