"""A repository others can write is untrusted input (docs/SECURITY.md): crafted objects, written
with the project's own encoders, get a clear error, never harm.

Each command runs as a child process that reports its own peak RSS, so a memory bound is the
child's, not the test runner's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from syncengine.hashing.tree import Source
from syncengine.repo import pack as pack_mod
from syncengine.repo.pack import CODEC_ZSTD, PackWriter, blob_digest, encode_index, index_entries
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Runs the CLI, then prints its peak RSS (MiB) as the last line of stderr. VmHWM, not
#: getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forking test runner.
_CLI_WITH_RSS = (
    "import re, sys\n"
    "from syncengine.cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    status = open('/proc/self/status').read()\n"
    "    print(int(re.search(r'VmHWM:\\s+(\\d+)', status)[1]) // 1024, file=sys.stderr)\n"
)


def cli(*args: str, cwd: Path) -> tuple[int, str, str, int]:
    """(exit status, stdout, stderr without the RSS line, peak RSS MiB) of `syncengine ARGS`."""
    p = subprocess.run(
        [sys.executable, "-c", _CLI_WITH_RSS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    *err, rss = p.stderr.rstrip("\n").split("\n")
    return p.returncode, p.stdout, "\n".join(err), int(rss)


async def _replace_every_pack_and_segment(
    repo: Repository, data: bytes, segment: tuple[bytes, bytes]
) -> None:
    store = repo.store
    for prefix in ("data/", "index/"):
        keys = [info.key async for info in store.list(prefix)]
        await store.delete(keys)
    pid = pack_mod.blob_digest(data)
    await store.put(f"data/{pid.hex()[:2]}/{pid.hex()}", data, if_none_match=True)
    sid, seg = segment
    await store.put(f"index/{sid.hex()}", seg, if_none_match=True)


def test_a_zstd_bomb_in_a_pack_is_refused_by_get_and_check_without_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 16 KiB file's blob replaced by a 12 KiB zstd frame that states (and holds) 400 MiB:
    the index says raw=16384, so the stored size is plausible; `get` and `check --read-data`
    must refuse it from the frame header, in a few tens of MiB."""
    src = tmp_path / "src"
    src.mkdir()
    body = bytes(16 << 10)
    (src / "a.bin").write_bytes(body)
    repo_dir = tmp_path / "repo"

    async def craft() -> None:
        repo = await Repository.open(LocalStore(repo_dir))
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)
        bomb = zstandard.ZstdCompressor(level=3).compress(bytes(400 << 20))
        w = PackWriter("zstd")
        monkeypatch.setattr(w, "_encode", lambda raw: (bomb, CODEC_ZSTD))
        w.add(blob_digest(body), body)
        pid, data, locs = w.finish()
        await _replace_every_pack_and_segment(repo, data, encode_index(index_entries(pid, locs)))

    asyncio.run(craft())
    rc, _, err, rss = cli("get", "p/d:v0", "--root", "out", "--repo", str(repo_dir), cwd=tmp_path)
    assert rc == 1 and "states 419430400 bytes" in err, err
    assert rss < 250, f"get peaked at {rss} MiB"
    assert not (tmp_path / "out" / "a.bin").exists()
    rc, out, err, rss = cli("check", "--read-data", "--json", "--repo", str(repo_dir), cwd=tmp_path)
    assert rc == 1, (out, err)
    assert "states 419430400 bytes" in json.dumps(json.loads(out)), out
    assert rss < 250, f"check --read-data peaked at {rss} MiB"


def test_gc_sweeps_only_packs_and_manifests_whatever_a_planted_mark_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who can write gc/marks/ can plant a mark; the victim's own `gc` must not delete
    the repository's config, heads, version records or a stray file under data/ for it."""
    import secrets

    from syncengine.repo import gc_objects as g
    from syncengine.repo.gc_sweep import collect

    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", "0")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    store = LocalStore(tmp_path / "repo")

    async def go() -> None:
        repo = await Repository.open(store)
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)
        await store.put("data/ab/notes.txt", b"not ours", if_none_match=True)
        keys = sorted([i.key async for i in store.list("")])
        precious = [k for k in keys if not k.startswith(("data/", "manifests/", "index/"))]
        assert {"config", "artifacts/p/d/head", "artifacts/p/d/versions/v0"} <= set(precious)
        planted = g.Mark(
            format=1,
            repository=repo.config.id,
            created="2020-01-01T00:00:00+00:00",
            grace=0.0,
            candidates=sorted([*precious, "data/ab/notes.txt", "data/../config"]),
        )
        await store.put(f"{g.MARKS}{secrets.token_hex(16)}", g.encode(planted), if_none_match=True)
        run = await collect(repo, grace=0.0)
        assert run.phase == "swept", run
        assert run.deleted == []
        after = {i.key async for i in store.list("")}
        assert set(precious) - after == set(), sorted(set(precious) - after)
        assert "data/ab/notes.txt" in after
        fresh = await Repository.open(LocalStore(tmp_path / "repo"))
        assert await fresh.check(read_data=True) == []

    asyncio.run(go())


def _swap_manifest(repo_dir: Path, build: object) -> None:
    """Replaces version p/d:v0's manifest by what `build(leaf_pid, leaf_page)` returns:
    (pages to store, Manifest); the record is rewritten to point at it, as anyone who can
    write the folder can."""
    from syncengine.repo.manifest import encode_manifest, encode_page
    from syncengine.repo.records import decode_version, encode_record

    async def go() -> None:
        store = LocalStore(repo_dir)
        key = "artifacts/p/d/versions/v0"
        record = decode_version(await store.get(key))
        repo = await Repository.open(store)
        reader = await repo.manifest(record)
        leaf = await reader.page(reader.manifest.root)
        pages, m = build(reader.manifest.root, leaf)  # type: ignore[operator]
        for page in pages:
            pid, data = encode_page(page)
            await store.put(f"manifests/{pid.hex()[:2]}/{pid.hex()}", data)
        mdata = encode_manifest(m)
        h = pack_mod.blob_digest(mdata).hex()
        mkey = f"manifests/{h[:2]}/{h}"
        await store.put(mkey, mdata)
        import msgspec

        bound = msgspec.structs.replace(record, manifest=mkey, content_digest=m.content_digest.hex())
        await store.put(key, encode_record(bound))

    asyncio.run(go())


def test_a_manifest_repeating_its_pages_is_refused_by_every_reader(tmp_path: Path) -> None:
    """Interior pages that name one leaf K times under different keys expand to K^2 entries
    from three tiny pages; get already refused the repeats, check reported "ok". Every
    reader now refuses the tree at its first repeated page."""
    from syncengine.repo.manifest import FORMAT, Manifest, Page, PageRef, encode_page

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 100)
    repo_dir = tmp_path / "repo"

    async def log() -> None:
        repo = await Repository.open(LocalStore(repo_dir))
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)
        (src / "b").write_bytes(b"y")
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)

    asyncio.run(log())
    k = 300

    def build(leaf_pid: bytes, leaf: object) -> tuple[list[Page], Manifest]:
        mid = Page(FORMAT, 1, refs=tuple(PageRef(f"a{i:04}", leaf_pid, 1, 100) for i in range(k)))
        mid_pid, _ = encode_page(mid)
        root = Page(FORMAT, 2, refs=tuple(PageRef(f"a{i:04}", mid_pid, k, 100 * k) for i in range(k)))
        root_pid, _ = encode_page(root)
        return [mid, root], Manifest(FORMAT, root_pid, 3, k * k, 100 * k * k, b"\0" * 32)

    _swap_manifest(repo_dir, build)
    repo = str(repo_dir)
    readers = (["show", "p/d:v0", "--files"], ["get", "p/d:v0", "--root", "o"], ["diff", "p/d:v1", "p/d:v0"])
    for args in readers:
        rc, out, err, _ = cli(*args, "--repo", repo, cwd=tmp_path)
        assert rc == 1 and "manifest page" in err and "internal error" not in err, (args, out[:300], err)
        assert out.count("\n") < k, args
    rc, out, err, _ = cli("check", "--json", "--repo", repo, cwd=tmp_path)
    assert rc == 1 and "manifest page" in out, (out, err)


def test_a_link_planted_inside_a_local_repository_is_never_followed(tmp_path: Path) -> None:
    """`artifacts/q -> elsewhere` made a victim's put write heads and version records there;
    `data/ab -> elsewhere` made gc and get read (and a sweep delete) through it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(10_000))
    repo_dir = tmp_path / "repo"
    rc, out, err, _ = cli(
        "put", "-n", "p/d", "-t", "dataset", str(src), "--repo", str(repo_dir), cwd=tmp_path
    )
    assert rc == 0, (out, err)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo_dir / "artifacts" / "q").symlink_to(elsewhere)
    rc, out, err = cli("put", "-n", "q/x", "-t", "dataset", str(src), "--repo", str(repo_dir), cwd=tmp_path)[
        :3
    ]
    assert rc == 1 and "symbolic link inside the repository" in err, (out, err)
    assert list(elsewhere.iterdir()) == []
    # A pack folder swapped for a link to a folder holding a file named like a pack.
    (repo_dir / "artifacts" / "q").unlink()
    victim = tmp_path / "victim"
    victim.mkdir()
    bait = victim / ("ab" + "0" * 62)
    bait.write_bytes(b"precious")
    (repo_dir / "data" / "ab").symlink_to(victim)

    async def sweep_and_list() -> list[str]:
        from syncengine.repo.gc_sweep import collect

        store = LocalStore(repo_dir)
        with pytest.raises(Exception, match="symbolic link"):
            await store.delete([f"data/ab/{bait.name}"])
        with pytest.raises(Exception, match="symbolic link"):
            await store.get(f"data/ab/{bait.name}")
        repo = await Repository.open(store)
        for _ in range(2):
            await collect(repo, grace=0.0)
        return [i.key async for i in store.list("data/")]

    os.environ["SYNCENGINE_GC_MIN_GRACE"] = "0"
    try:
        keys = asyncio.run(sweep_and_list())
    finally:
        del os.environ["SYNCENGINE_GC_MIN_GRACE"]
    assert not [k for k in keys if k.startswith("data/ab/")]
    assert bait.read_bytes() == b"precious"


def _rewrite_record(repo_dir: Path, key: str, change: dict[str, object] | bytes) -> None:
    """Overwrites a stored record: its JSON with `change` merged in, or raw bytes."""
    path = repo_dir / key
    if isinstance(change, bytes):
        path.write_bytes(change)
        return
    record = json.loads(path.read_bytes())
    record.update(change)
    path.write_text(json.dumps(record))


def _logged(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.bin").write_bytes(b"a" * 1000)
    repo_dir = tmp_path / "repo"
    rc, out, err, _ = cli(
        "put", "-n", "p/d", "-t", "dataset", str(src), "--repo", str(repo_dir), cwd=tmp_path
    )
    assert rc == 0, (out, err)
    return repo_dir


@pytest.mark.parametrize("name", ["../../escaped", "/abs/dir", "e"])
def test_a_record_is_read_only_with_valid_names_and_under_its_own_key(tmp_path: Path, name: str) -> None:
    """`get` without --root wrote into artifacts/<record.name>-v<N>: a record named
    ../../escaped or /abs/dir made it write (and --checkout delete) outside the working
    folder; a record of p/e:v0 stored at p/d's key was served as p/d:v0."""
    repo_dir = _logged(tmp_path)
    _rewrite_record(repo_dir, "artifacts/p/d/versions/v0", {"name": name})
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*") if "repo" not in p.parts)
    for args in (["get", "p/d:v0"], ["get", "p/d:v0", "--checkout"], ["show", "p/d:v0"], ["versions", "p/d"]):
        rc, out, err, _ = cli(*args, "--repo", str(repo_dir), cwd=work)
        assert rc == 1 and "internal error" not in err, (args, out, err)
        assert "artifacts/p/d/versions/v0" in err, (args, err)
    assert sorted(p for p in tmp_path.rglob("*") if "repo" not in p.parts) == before
    rc, out, err, _ = cli("check", "--repo", str(repo_dir), cwd=work)
    assert rc == 1 and "artifacts/p/d/versions/v0" in out + err, (out, err)


def test_a_deeply_nested_record_is_named_not_an_internal_error(tmp_path: Path) -> None:
    repo_dir = _logged(tmp_path)
    key = "artifacts/p/d/versions/v0"
    record = json.loads((repo_dir / key).read_bytes())
    record["metadata"] = {}
    text = json.dumps(record)
    deep = text[:-1] + ', "metadata": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    _rewrite_record(repo_dir, key, deep.encode())
    for args in (["versions", "p/d"], ["show", "p/d:v0"], ["check"], ["gc", "--dry-run"]):
        rc, out, err, _ = cli(*args, "--repo", str(repo_dir), cwd=tmp_path)
        assert rc == 1 and "internal error" not in err and "Recursion" not in out + err, (args, out, err)
        assert key in out + err and "nests deeper" in out + err, (args, out, err)


def test_metadata_nested_deeper_than_records_allow_is_refused_on_write(tmp_path: Path) -> None:
    import syncengine as se

    deep: object = 1
    for _ in range(150):
        deep = [deep]
    repo = se.Repository.open(str(tmp_path / "repo"))
    (tmp_path / "f").write_text("x")
    art = se.Artifact("d", type="dataset", metadata={"x": deep})
    art.add_file(str(tmp_path / "f"))
    with pytest.raises(se.SyncEngineError, match="nests deeper than 100 levels"):
        repo.log_artifact(art, project="p")


def test_put_does_not_follow_symlinks_out_of_the_source_folder_unless_asked(tmp_path: Path) -> None:
    """A hostile input folder with `creds -> ~/.aws/credentials` uploaded the victim's
    credentials; links inside the folder (Hugging Face snapshots link into their blob store)
    still work."""
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_text("[default]\naws_secret_access_key = hunter2\n")
    src = tmp_path / "src"
    (src / "blobs").mkdir(parents=True)
    (src / "blobs" / "w.bin").write_bytes(b"weights")
    (src / "model.bin").symlink_to("blobs/w.bin")
    (src / "creds").symlink_to(secret)
    (src / "home").symlink_to(secret.parent)
    repo = str(tmp_path / "repo")
    rc, out, err, _ = cli("put", "-n", "p/d", "-t", "dataset", str(src), "--repo", repo, cwd=tmp_path)
    assert rc == 0, (out, err)
    assert "creds" in err and "leads out of the folder" in err, err
    rc, out, err, _ = cli("show", "p/d:v0", "--files", "--repo", repo, cwd=tmp_path)
    paths = sorted(line.split()[0] for line in out.splitlines())
    assert paths == ["blobs/w.bin", "model.bin"], out
    rc, out, err, _ = cli(
        "put", "-n", "p/d", "-t", "dataset", str(src), "--follow-symlinks", "--repo", repo, cwd=tmp_path
    )
    assert rc == 0 and "v1" in out, (out, err)
    rc, out, err, _ = cli("show", "p/d:v1", "--files", "--repo", repo, cwd=tmp_path)
    assert {"creds", "home/credentials", "model.bin"} <= {line.split()[0] for line in out.splitlines()}, out


def test_a_record_and_its_manifest_are_bound_to_each_other_and_to_the_files(tmp_path: Path) -> None:
    """A record pointed at another version's manifest (or a manifest stating a content
    digest its entries do not have) made `verify` approve swapped content."""
    from syncengine.repo.manifest import ManifestBuilder, ManifestEntry, encode_manifest

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"first")
    repo_dir = tmp_path / "repo"
    repo = str(repo_dir)
    assert cli("put", "-n", "p/d", "-t", "dataset", str(src), "--repo", repo, cwd=tmp_path)[0] == 0
    (src / "a.bin").write_bytes(b"second")
    assert cli("put", "-n", "p/d", "-t", "dataset", str(src), "--repo", repo, cwd=tmp_path)[0] == 0
    v0 = json.loads((repo_dir / "artifacts/p/d/versions/v0").read_bytes())
    v1_key = "artifacts/p/d/versions/v1"
    v1 = json.loads((repo_dir / v1_key).read_bytes())
    # 1. v1's record points at v0's manifest: src holds v0's content, verify must not approve
    (src / "a.bin").write_bytes(b"first")
    _rewrite_record(repo_dir, v1_key, {"manifest": v0["manifest"]})
    for args in (["verify", "p/d:v1", "--root", str(src)], ["get", "p/d:v1", "--root", "o1"]):
        rc, out, err, _ = cli(*args, "--repo", repo, cwd=tmp_path)
        assert rc == 1 and "different content digests" in err, (args, out, err)
    # 2. a manifest object replaced in place (its name no longer matches its bytes)
    _rewrite_record(repo_dir, v1_key, {"manifest": v1["manifest"]})
    (repo_dir / v1["manifest"]).write_bytes((repo_dir / v0["manifest"]).read_bytes())
    rc, out, err, _ = cli("verify", "p/d:v1", "--root", str(src), "--repo", repo, cwd=tmp_path)
    assert rc == 1 and "does not match its name" in err, (out, err)
    # 3. a new manifest holding v0's entries but stating v1's content digest, and a record saying so
    entry = ManifestEntry("a.bin", 5, 0o644, pack_mod.blob_digest(b"first"))
    builder = ManifestBuilder()
    pages = builder.add(entry)
    more, m = builder.finish()

    async def store_forged() -> str:
        import msgspec

        store = LocalStore(repo_dir)
        for pid, data in pages + more:
            await store.put(f"manifests/{pid.hex()[:2]}/{pid.hex()}", data)
        forged = msgspec.structs.replace(m, content_digest=bytes.fromhex(v1["content_digest"]))
        mdata = encode_manifest(forged)
        h = pack_mod.blob_digest(mdata).hex()
        await store.put(f"manifests/{h[:2]}/{h}", mdata)
        return f"manifests/{h[:2]}/{h}"

    _rewrite_record(repo_dir, v1_key, {"manifest": asyncio.run(store_forged())})
    rc, out, err, _ = cli("verify", "p/d:v1", "--root", str(src), "--repo", repo, cwd=tmp_path)
    assert rc == 1 and "content digest does not match its entries" in err, (out, err)
    rc, out, err, _ = cli("check", "--repo", repo, cwd=tmp_path)
    assert rc == 1 and "content digest does not match its entries" in out + err, (out, err)


def test_check_applies_gets_path_rules_and_accepts_a_reference_to_an_empty_file(tmp_path: Path) -> None:
    from syncengine.repo.manifest import ManifestBuilder, ManifestEntry

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    repo_dir = tmp_path / "repo"
    repo = str(repo_dir)
    rc, out, err, _ = cli(
        "put", "-n", "p/d", "-t", "dataset", "--reference", f"file://{empty}", "--repo", repo, cwd=tmp_path
    )
    assert rc == 0, (out, err)
    rc, out, err, _ = cli("check", "--repo", repo, cwd=tmp_path)
    assert rc == 0, (out, err)  # a reference's digest is not BLAKE3 of its (empty) content

    def build(leaf_pid: bytes, leaf: object) -> tuple[list[object], object]:
        b = ManifestBuilder()
        pages = b.add(ManifestEntry("../escape", 0, 0o644, pack_mod.blob_digest(b"")))
        more, m = b.finish()
        from syncengine.repo.manifest import decode_page

        return [decode_page(pid, data) for pid, data in pages + more], m

    _swap_manifest(repo_dir, build)
    rc, out, err, _ = cli("check", "--repo", repo, cwd=tmp_path)
    assert rc == 1 and "'../escape' is absolute or contains '..'" in out + err, (out, err)


def test_the_quick_reader_of_a_local_repository_does_not_follow_links_either(tmp_path: Path) -> None:
    from syncengine.errors import LinkInRepository
    from syncengine.store import read_local_object

    repo_dir = _logged(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "head").write_bytes((repo_dir / "artifacts/p/d/head").read_bytes())
    assert read_local_object(str(repo_dir), "artifacts/p/d/head") is not None
    (repo_dir / "artifacts/p/d/head").unlink()
    (repo_dir / "artifacts/p/d/head").symlink_to(outside / "head")
    with pytest.raises(LinkInRepository):
        read_local_object(str(repo_dir), "artifacts/p/d/head")
    (repo_dir / "artifacts/p/d/head").unlink()
    (repo_dir / "artifacts/p/d").rename(outside / "d")
    (repo_dir / "artifacts/p/d").symlink_to(outside / "d")
    with pytest.raises(LinkInRepository):
        read_local_object(str(repo_dir), "artifacts/p/d/versions/v0")
