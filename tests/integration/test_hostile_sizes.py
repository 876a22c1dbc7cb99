"""Metadata reads are capped by what the format allows (issue 15 item 13): a planted record,
head, manifest, page, index segment, run record, gc mark or config larger than its kind may be
is refused before it is read — the local store from the file's size, S3 from the answer's
``Content-Length`` — with one clear error naming the object and the cap, in bounded memory.
Writers refuse to store what readers would refuse."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from syncengine.errors import ConfigError, ObjectTooLarge
from syncengine.hashing.tree import Source
from syncengine.repo import object_caps as caps
from syncengine.repo.records import decode_version, encode_record, head_key, version_key
from syncengine.repo.repository import Repository
from syncengine.repo.runs import run_key
from syncengine.store import open_store
from syncengine.store.local import LocalStore

from .test_hostile_repository import cli

#: Peak RSS (MiB) a refused command stays under; each planted object is 4 MiB to 1 GiB + 1
#: byte, which a reader taking the store's word would hold whole (and the decode more).
RSS_BOUND = 200


def _sparse(path: Path, size: int) -> None:
    """An object file of ``size`` zero bytes that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    repo_dir = tmp_path / "repo"

    async def log() -> None:
        repo = await Repository.open(LocalStore(repo_dir))
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)

    asyncio.run(log())
    return repo_dir


def _record(repo_dir: Path) -> object:
    key = version_key("p", "d", 0)
    return decode_version((repo_dir / key).read_bytes(), key)


def _manifest_key(repo_dir: Path) -> str:
    return _record(repo_dir).manifest  # type: ignore[attr-defined, no-any-return]


def _root_page_key(repo_dir: Path) -> str:
    from syncengine.repo.manifest import decode_manifest

    root = decode_manifest((repo_dir / _manifest_key(repo_dir)).read_bytes()).root.hex()
    return f"manifests/{root[:2]}/{root}"


# (what is planted, its key from the repository, its size, a command that must read it)
CASES = [
    ("config", lambda r: "config", caps.CONFIG + 1, ("ls",)),
    ("version record", lambda r: version_key("p", "d", 0), caps.VERSION_RECORD + 1, ("show", "p/d:v0")),
    ("head", lambda r: head_key("p", "d"), caps.HEAD + 1, ("versions", "p/d")),
    ("manifest record", _manifest_key, caps.MANIFEST_RECORD + 1, ("show", "p/d:v0", "--files")),
    ("manifest page", _root_page_key, caps.MANIFEST_PAGE + 1, ("show", "p/d:v0", "--files")),
    ("index segment", lambda r: "index/" + "ab" * 32, caps.INDEX_SEGMENT + 1, ("check",)),
    ("run record", lambda r: run_key("p", "r1"), caps.RUN_RECORD + 1, ("runs", "p")),
    ("gc mark", lambda r: "gc/marks/" + "cd" * 16, caps.GC_OBJECT + 1, ("gc",)),
]


@pytest.mark.parametrize(("kind", "key_of", "size", "args"), CASES, ids=[c[0] for c in CASES])
def test_an_oversized_object_is_refused_before_it_is_read(
    tmp_path: Path, repo_dir: Path, kind: str, key_of: object, size: int, args: tuple[str, ...]
) -> None:
    key = key_of(repo_dir)  # type: ignore[operator]
    _sparse(repo_dir / key, size)
    rc, out, err, rss = cli(*args, "--repo", str(repo_dir), cwd=tmp_path)
    problem = err + out  # `check` lists problems on stdout with --json, stderr otherwise
    assert rc == 1, (kind, out[-500:], err[-500:])
    assert f"{key} is {size} bytes, more than the {size - 1}" in problem, (kind, problem[-800:])
    assert "internal error" not in problem
    assert rss < RSS_BOUND, f"{kind}: peak RSS {rss} MiB"


def test_writers_refuse_what_readers_would_refuse(tmp_path: Path, repo_dir: Path) -> None:
    record = _record(repo_dir)
    big = msgspec.structs.replace(record, metadata={"blob": "x" * caps.METADATA})  # type: ignore[type-var]
    with pytest.raises(ConfigError, match=r"metadata of p/d:v0 would be \d+ bytes, more than the 1048576"):
        encode_record(big)
    from syncengine.repo.manifest import FORMAT, ManifestEntry, Page, encode_page

    chunks = tuple((1 << 20, bytes(32)) for _ in range(caps.MANIFEST_PAGE // 36))
    entry = ManifestEntry("huge.bin", len(chunks) << 20, 0o644, bytes(32), chunks)
    with pytest.raises(ConfigError, match="a manifest page would be"):
        encode_page(Page(FORMAT, 0, entries=(entry,)))


async def _store_checks(url: str, endpoint: str | None) -> None:
    async with open_store(url, endpoint_url=endpoint) as store:
        await store.put("records/small", b"x" * 1000)
        await store.put("records/big", b"y" * (3 << 20))
        assert await store.get("records/small", max_bytes=1000) == b"x" * 1000
        before = getattr(store, "counters", None)
        received = before.bytes_received if before is not None else 0
        with pytest.raises(ObjectTooLarge) as caught:
            await store.get("records/big", max_bytes=1 << 20)
        assert caught.value.key == "records/big" and caught.value.max_bytes == 1 << 20
        assert "records/big is 3145728 bytes, more than the 1048576" in str(caught.value)
        if before is not None:  # S3: refused from Content-Length, the body never received
            assert store.counters.bytes_received - received < 64 << 10  # type: ignore[attr-defined]
        # A range is capped by its own length, not the object's.
        assert await store.get("records/big", (0, 10), max_bytes=10) == b"y" * 10
        # The store still works after a refused read (its connection was dropped, not reused).
        assert await store.get("records/small", max_bytes=1 << 20) == b"x" * 1000


def test_the_local_store_refuses_from_the_file_size(tmp_path: Path) -> None:
    asyncio.run(_store_checks(str(tmp_path / "store"), None))


def test_s3_refuses_from_content_length(
    s3_server: object, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_server.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(k, v)
    asyncio.run(_store_checks(f"s3://{s3_bucket}/caps", s3_server.endpoint))  # type: ignore[attr-defined]


def test_s3_repository_refuses_an_oversized_record_in_bounded_memory(
    tmp_path: Path, s3_server: object, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 96 MiB 'version record' in a bucket: `show` refuses it from the answer's headers."""
    for k, v in s3_server.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # type: ignore[attr-defined]
    url = f"s3://{s3_bucket}/r"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    rc, _, err, _ = cli("put", str(src), "-n", "p/d", "-t", "dataset", "--repo", url, cwd=tmp_path)
    assert rc == 0, err

    async def plant() -> None:
        async with open_store(url) as store:
            await store.put(version_key("p", "d", 0), bytes(96 << 20))

    asyncio.run(plant())
    rc, out, err, rss = cli("show", "p/d:v0", "--repo", url, cwd=tmp_path)
    assert rc == 1 and "more than the 4194304" in err and "internal error" not in err, (out, err)
    assert rss < RSS_BOUND, f"peak RSS {rss} MiB"


def test_s3_refuses_a_listing_answer_past_its_cap(
    s3_server: object, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a proxy) answering a listing with 65 MiB: refused as it arrives, not
    buffered whole; both the direct-connection and the aiohttp paths."""
    from syncengine.errors import StoreRequestFailed
    from tests.faultproxy import FaultProxy, Respond

    for k, v in s3_server.env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(k, v)
    body = b"<ListBucketResult>" + b" " * (65 << 20) + b"</ListBucketResult>"

    async def go(endpoint: str) -> None:
        async with open_store(f"s3://{s3_bucket}/caps", endpoint_url=endpoint) as store:
            with pytest.raises(StoreRequestFailed, match="larger than 67108864 bytes"):
                [i async for i in store.list("")]

    with FaultProxy(s3_server.endpoint) as proxy:  # type: ignore[attr-defined]
        proxy.add_rule(Respond(200, body=body), method="GET", query="list-type")
        asyncio.run(go(proxy.url))
