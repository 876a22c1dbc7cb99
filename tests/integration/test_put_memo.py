"""The put memo: an unchanged tree is recognized by a stat-only walk, a changed one never is."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.hashing import tree as tree_mod
from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo import put_memo
from syncengine.repo.repository import PutResult, Repository
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)


def write_tree(root: Path, n: int) -> None:
    for i in range(n):
        p = root / f"d{i % 7}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(i.to_bytes(4, "little") * (1 + i % 50))


@pytest.fixture
def trusted_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test a moment ago count as old enough (the racy rule is
    tested separately below, with its real value)."""
    monkeypatch.setattr(put_memo, "RACY_NS", -(10**9))


@pytest.fixture
def hashing_counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = tree_mod.TreeHasher.hash

    def counting(self: tree_mod.TreeHasher, sources: list[Source]) -> Iterator[tree_mod.HashedFile]:
        calls.append(1)
        return real(self, sources)

    monkeypatch.setattr(tree_mod.TreeHasher, "hash", counting)
    yield calls


def log(repo: Repository, data: Path, **kw: object) -> PutResult:
    return asyncio.run(
        repo.log([Source(str(data))], project="p", name="a", type="dataset", **kw)  # type: ignore[arg-type]
    )


def open_repo(path: Path) -> Repository:
    return asyncio.run(Repository.open(LocalStore(path), params=PARAMS))


def test_unchanged_tree_skips_hashing_and_still_applies_aliases(
    tmp_path: Path, trusted_now: None, hashing_counted: list[int]
) -> None:
    data = tmp_path / "data"
    write_tree(data, 3000)  # several checkpoints
    repo = open_repo(tmp_path / "repo")
    first = log(repo, data)
    assert first.created and hashing_counted == [1]
    again = log(repo, data, aliases=["prod"])
    assert not again.created and again.record.version == 0
    assert again.files == 3000 and again.bytes == first.bytes
    assert hashing_counted == [1]  # recognized from the walk alone
    head = asyncio.run(repo.head("p", "a"))
    assert head.aliases == {"prod": 0, "latest": 0}


@pytest.mark.parametrize("change", ["rewrite_same_size", "add", "remove", "chmod", "rename"])
def test_any_change_misses_the_memo(
    tmp_path: Path, trusted_now: None, hashing_counted: list[int], change: str
) -> None:
    data = tmp_path / "data"
    write_tree(data, 2500)
    repo = open_repo(tmp_path / "repo")
    log(repo, data)
    victim = data / "d3" / "f01200.bin"
    if change == "rewrite_same_size":
        st = victim.stat()
        victim.write_bytes(b"\xff" * st.st_size)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime tells
    elif change == "add":
        (data / "d3" / "new.bin").write_bytes(b"new")
    elif change == "remove":
        victim.unlink()
    elif change == "chmod":
        victim.chmod(0o600)
    else:
        victim.rename(victim.with_name("renamed.bin"))
    r = log(repo, data)
    assert hashing_counted == [1, 1]
    if change == "chmod":  # the mode is in the manifest, not in the content digest: same version
        assert not r.created and r.record.version == 0
    else:
        assert r.created and r.record.version == 1


def test_fresh_files_are_not_trusted(tmp_path: Path, hashing_counted: list[int]) -> None:
    """With the real racy rule, files stamped within 2 s of the memo's hash are hashed again."""
    data = tmp_path / "data"
    write_tree(data, 10)
    repo = open_repo(tmp_path / "repo")
    log(repo, data)
    again = log(repo, data)
    assert not again.created and hashing_counted == [1, 1]


def test_memo_of_another_artifact_or_filter_is_not_used(
    tmp_path: Path, trusted_now: None, hashing_counted: list[int]
) -> None:
    data = tmp_path / "data"
    write_tree(data, 50)
    repo = open_repo(tmp_path / "repo")
    log(repo, data)
    log(repo, data, exclude=["d1/"])
    assert hashing_counted == [1, 1]
    r = asyncio.run(repo.log([Source(str(data))], project="p", name="b", type="dataset"))
    assert r.created and hashing_counted == [1, 1, 1]


def test_version_gone_from_head_falls_back_to_hashing(
    tmp_path: Path, trusted_now: None, hashing_counted: list[int]
) -> None:
    data = tmp_path / "data"
    write_tree(data, 50)
    repo1 = open_repo(tmp_path / "repo1")
    log(repo1, data)
    # The same cache against a different repository: the memo's key differs (repository id).
    repo2 = open_repo(tmp_path / "repo2")
    r = log(repo2, data)
    assert r.created and r.record.version == 0 and hashing_counted == [1, 1]


def test_checkpoints_stop_the_walk_early(tmp_path: Path) -> None:
    """A walk that differs in its first files stops at the first checkpoint."""
    from syncengine.scan import ScanEntry

    def entries(n: int, bump: int) -> Iterator[ScanEntry]:
        for i in range(n):
            yield ScanEntry(f"f{i:06d}", f"/x/f{i:06d}", i + (bump if i == 0 else 0), 0o644, 1, 1, i, 1)

    fp = put_memo.Fingerprint()
    for e in entries(5000, 0):
        fp.add(e)
    memo = put_memo.Memo(fp.digest(), fp.files, b"".join(fp.checkpoints), 10**18, "d", 0, 0)
    assert put_memo.PutMemo.matches(memo, entries(5000, 0))
    consumed = 0

    def counted() -> Iterator[ScanEntry]:
        nonlocal consumed
        for e in entries(5000, 1):
            consumed += 1
            yield e

    assert not put_memo.PutMemo.matches(memo, counted())
    assert consumed == put_memo.CHECKPOINT


# -- recall_unchanged: the same answer without an event loop (the CLI's no-change put) ------------


def recall(repo_dir: Path, data: Path, **kw: object) -> tuple[object, list[str]] | None:
    from syncengine.store import read_local_object

    args: dict[str, object] = {"project": "p", "name": "a", "type": "dataset", **kw}
    return put_memo.recall_unchanged(
        lambda key, cap: read_local_object(str(repo_dir), key, cap),
        [Source(str(data))],
        **args,  # type: ignore[arg-type]
    )


@pytest.fixture
def walks_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = put_memo.PutMemo.matches

    def counting(memo: put_memo.Memo, entries: object) -> bool:
        calls.append(1)
        return real(memo, entries)  # type: ignore[arg-type]

    monkeypatch.setattr(put_memo.PutMemo, "matches", staticmethod(counting))
    return calls


def test_recall_unchanged_answers_what_log_answers(
    tmp_path: Path, trusted_now: None, hashing_counted: list[int]
) -> None:
    data = tmp_path / "data"
    write_tree(data, 3000)
    repo = open_repo(tmp_path / "repo")
    log(repo, data, aliases=["prod"])
    found = recall(tmp_path / "repo", data)
    assert found is not None
    record, warnings = found
    again = log(repo, data)
    assert not again.created and record == again.record and warnings == again.warnings == []
    # an alias already on that version changes nothing either; tags are ignored, as by log
    assert recall(tmp_path / "repo", data, aliases=["prod"], tags=["x"]) == found
    assert hashing_counted == [1]


def test_recall_unchanged_warns_like_log(tmp_path: Path, trusted_now: None) -> None:
    data = tmp_path / "data"
    write_tree(data, 20)
    repo = open_repo(tmp_path / "repo")
    log(repo, data)
    os.mkfifo(data / "pipe")  # skipped with a warning; the files are the same
    found = recall(tmp_path / "repo", data)
    assert found is not None and len(found[1]) == 1 and "FIFO" in found[1][0]
    assert found[1] == log(repo, data).warnings


@pytest.mark.parametrize(
    "case", ["alias_moves", "new_alias", "other_type", "bad_name", "bad_tag", "no_head", "no_repo"]
)
def test_recall_unchanged_leaves_anything_else_to_log(
    tmp_path: Path, trusted_now: None, walks_counted: list[int], case: str
) -> None:
    data = tmp_path / "data"
    write_tree(data, 50)
    repo = open_repo(tmp_path / "repo")
    log(repo, data, aliases=["prod"])
    log(repo, data, exclude=["d1/"], aliases=["prod"])  # v1 takes the alias
    walks_counted.clear()
    kw: dict[str, object] = {
        "alias_moves": {"aliases": ["prod"]},  # back to v0: the head must be written
        "new_alias": {"aliases": ["fresh"]},
        "other_type": {"type": "model"},  # log raises TypeMismatch
        "bad_name": {"name": "no/slash"},
        "bad_tag": {"tags": ["bad tag"]},
        "no_head": {"name": "other"},
        "no_repo": {},
    }[case]
    where = tmp_path / ("nowhere" if case == "no_repo" else "repo")
    assert recall(where, data, **kw) is None
    assert walks_counted == []  # decided before walking


def test_a_refuted_memo_is_not_walked_again_by_log(
    tmp_path: Path, trusted_now: None, walks_counted: list[int], hashing_counted: list[int]
) -> None:
    data = tmp_path / "data"
    write_tree(data, 2500)
    repo = open_repo(tmp_path / "repo")
    log(repo, data)
    (data / "d3" / "f01200.bin").write_bytes(b"changed")
    walks_counted.clear()
    assert recall(tmp_path / "repo", data) is None
    assert walks_counted == [1]
    r = log(repo, data)
    assert r.created and r.record.version == 1
    assert walks_counted == [1] and hashing_counted == [1, 1]  # log hashed at once
    # once only: the next put of this tree (now v1, with a fresh memo) is recognized again
    assert not put_memo._refuted
    assert recall(tmp_path / "repo", data) is not None


def test_the_shortcut_reads_the_repository_config_record() -> None:
    from syncengine.repo.repository import RepoConfig

    assert put_memo.RepoConfig is RepoConfig  # one record type: nothing to drift apart
