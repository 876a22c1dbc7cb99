"""A manifest entry's mode reaches the disk through the umask (issue 15 item 12): an entry of
0o777 (or with setuid, setgid or sticky bits, written by anyone who can write the
repository) never yields a file with a bit the user's umask denies, nor a setuid one; the
file cache's own files, and the targets a hardlink download shares with it, follow the
umask too."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from syncengine.file_modes import file_mode, umask
from syncengine.hashing.tree import Source
from syncengine.repo import pack as pack_mod
from syncengine.repo.manifest import Manifest, Page, encode_manifest, encode_page
from syncengine.repo.records import decode_version, encode_record
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

REPO_ROOT = Path(__file__).resolve().parents[2]
UMASK = 0o027
#: What each file's entry will say after the crafting below.
CRAFTED = {"open": 0o777, "setuid": 0o4755, "setgid": 0o2775, "sticky": 0o1777, "private": 0o600}


def _get(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`syncengine ARGS` in a child whose umask is UMASK (never the test runner's own)."""
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        preexec_fn=lambda: os.umask(UMASK),  # in the child only
    )


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """p/d:v0 whose manifest's entries carry the CRAFTED modes (one leaf page, rewritten with
    the project's encoders, the record pointed at it)."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(CRAFTED):
        (src / name).write_bytes(bytes([i]) * (100 << 10))  # above the file cache's minimum
    repo_dir = tmp_path / "repo"

    async def go() -> None:
        store = LocalStore(repo_dir)
        repo = await Repository.open(store)
        await repo.log([Source(str(src))], project="p", name="d", type="dataset", stat_cache=False)
        key = "artifacts/p/d/versions/v0"
        record = decode_version(await store.get(key), key)
        reader = await repo.manifest(record)
        leaf = await reader.page(reader.manifest.root)
        entries = tuple(msgspec.structs.replace(e, mode=CRAFTED[e.path]) for e in leaf.entries)
        pid, page = encode_page(Page(leaf.format, 0, entries=entries))
        await store.put(f"manifests/{pid.hex()[:2]}/{pid.hex()}", page)
        mdata = encode_manifest(msgspec.structs.replace(reader.manifest, root=pid))
        assert isinstance(reader.manifest, Manifest)
        h = pack_mod.blob_digest(mdata).hex()
        mkey = f"manifests/{h[:2]}/{h}"
        await store.put(mkey, mdata)
        await store.put(key, encode_record(msgspec.structs.replace(record, manifest=mkey)))

    asyncio.run(go())
    return repo_dir


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_get_applies_the_umask_and_never_sets_special_bits(tmp_path: Path, repo_dir: Path) -> None:
    r = _get("get", "p/d:v0", "--root", "out", "--repo", str(repo_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _modes(tmp_path / "out") == {
        "open": 0o750,
        "setuid": 0o750,
        "setgid": 0o750,
        "sticky": 0o750,
        "private": 0o600,
    }
    cache = Path(os.environ["SYNCENGINE_CACHE_DIR"]) / "files"
    cached = [p for p in cache.rglob("*") if p.is_file() and "objects" in p.parts]
    assert cached, "the downloads should have filled the file cache"
    for p in cached:  # the downloaded files the cache links to (shared entries): as they are
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & (UMASK | 0o7000) == 0, (p, oct(mode))


def test_a_hardlink_download_shares_a_cache_inode_the_umask_shaped(tmp_path: Path, repo_dir: Path) -> None:
    for root in ("first", "second"):
        args = ("get", "p/d:v0", "--root", root, "--link", "hardlink", "--repo", str(repo_dir))
        r = _get(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    modes = _modes(tmp_path / "second")
    assert set(modes.values()) == {0o440}, {k: oct(v) for k, v in modes.items()}


def test_the_rule_and_the_umask_read() -> None:
    assert file_mode(0o777, 0o022) == 0o755
    assert file_mode(0o4755, 0o002) == 0o755
    assert file_mode(0o7777, 0o000) == 0o777
    assert file_mode(0, 0o022) == 0o644
    assert file_mode(0o640, 0o077) == 0o600
    old = os.umask(0o037)  # the test runner's main thread; restored at once
    try:
        assert umask() == 0o037
        assert file_mode(0o777) == 0o740
    finally:
        os.umask(old)
