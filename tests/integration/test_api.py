"""The Python API as in the issue: sync facade, async core, notebooks and threads."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import syncengine as se
from syncengine import aio
from syncengine.errors import ConfigError


def make_data(root: Path) -> Path:
    d = root / "data" / "mnist"
    (d / "train").mkdir(parents=True)
    (d / "train" / "0001.png").write_bytes(b"\x89PNG fake")
    (d / "labels.csv").write_bytes(b"id,label\n1,7\n")
    return d


def test_the_issue_example(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("mnist", type="dataset", description="digits", metadata={"rows": 70000})
    art.add_dir(str(data))
    art.add_file(str(data / "labels.csv"), name="extra/labels-copy.csv")
    v = repo.log_artifact(art, project="vision", aliases=["best"])
    assert v.version == "v0" and sorted(v.aliases) == ["best", "latest"]
    v = repo.artifact("vision/mnist:latest")
    assert repo.artifact("vision/mnist:best").version == "v0"
    out = v.download(root=str(tmp_path / "out"))
    assert (Path(out) / "train" / "0001.png").read_bytes() == b"\x89PNG fake"
    assert (Path(out) / "extra" / "labels-copy.csv").read_bytes() == b"id,label\n1,7\n"

    v.description = "digits, cleaned"
    v.metadata["split"] = "train"
    v.aliases.append("prod")
    v.save()
    again = repo.artifact("vision/mnist:prod")
    assert again.description == "digits, cleaned"
    assert again.metadata == {"rows": 70000, "split": "train"}
    assert sorted(again.aliases) == ["best", "latest", "prod"]
    again.aliases.remove("best")
    again.save()
    assert sorted(repo.artifact("vision/mnist:v0").aliases) == ["latest", "prod"]

    assert [x.version for x in repo.artifact_versions("vision/mnist")] == ["v0"]
    assert repo.artifacts("vision", type="dataset") == ["vision/mnist"]
    assert repo.artifacts("vision", type="model") == []
    assert v.manifest.entries["train/0001.png"].size == 9

    same = se.Artifact("mnist", type="dataset")
    same.add_dir(str(data))
    same.add_file(str(data / "labels.csv"), name="extra/labels-copy.csv")
    assert repo.log_artifact(same, project="vision", aliases=["again"]).version == "v0"
    repo.close()


def test_facade_inside_a_running_loop_and_from_threads(tmp_path: Path) -> None:
    data = make_data(tmp_path)

    async def notebook_cell() -> str:
        repo = se.Repository.open(str(tmp_path / "repo"))  # sync call while a loop runs: no deadlock
        art = se.Artifact("nb", type="dataset")
        art.add_dir(str(data))
        return repo.log_artifact(art, project="p").version

    assert asyncio.run(notebook_cell()) == "v0"
    results: list[str] = []

    def worker(i: int) -> None:
        repo = se.Repository.open(str(tmp_path / "repo"))
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "f").write_bytes(str(i).encode())
        art = se.Artifact("threads", type="dataset")
        art.add_dir(str(d))
        results.append(repo.log_artifact(art, project="p").version)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["v0", "v1", "v2", "v3"]


def test_async_core(tmp_path: Path) -> None:
    data = make_data(tmp_path)

    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("m", type="model")
            art.add_dir(str(data), name="weights")
            v = await repo.log_artifact(art, project="p")
            assert v.version == "v0"
            m = await v.manifest()
            assert sorted(m.entries) == ["weights/labels.csv", "weights/train/0001.png"]

    asyncio.run(go())


def test_bad_input_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid artifact name"):
        se.Artifact("bad/name", type="dataset")
    art = se.Artifact("empty", type="dataset")
    repo = se.Repository.open(str(tmp_path / "repo"))
    with pytest.raises(ConfigError, match="has no files"):
        repo.log_artifact(art, project="p")
    with pytest.raises(FileNotFoundError):
        art.add_file(str(tmp_path / "missing"))
    d = make_data(tmp_path)
    art.add_dir(str(d))
    art.add_dir(str(d))
    with pytest.raises(ConfigError, match="given twice"):
        repo.log_artifact(art, project="p")


def test_checkout_and_verify(tmp_path: Path) -> None:
    from syncengine.repo.download import VerifyFailed

    data = make_data(tmp_path)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("c", type="dataset")
    art.add_dir(str(data))
    v = repo.log_artifact(art, project="p")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stray.txt").write_bytes(b"not in the version")
    v.download(str(out))
    assert (out / "stray.txt").exists()  # download never deletes
    with pytest.raises(VerifyFailed, match=r"extra: stray\.txt"):
        v.verify(str(out))
    v.checkout(str(out))
    assert not (out / "stray.txt").exists()
    v.verify(str(out))
    (out / "labels.csv").write_bytes(b"changed")
    with pytest.raises(VerifyFailed, match=r"changed: labels\.csv"):
        v.verify(str(out))


def test_the_facade_runs_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from syncengine._loop import loop_name, new_event_loop

    pytest.importorskip("uvloop")
    loop = new_event_loop()
    try:
        assert loop_name(loop) == "uvloop"
    finally:
        loop.close()
    monkeypatch.setenv("SYNCENGINE_NO_UVLOOP", "1")
    loop = new_event_loop()
    try:
        assert loop_name(loop) == "asyncio" and isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


# -- save(): each object writes only what it changed (no lost update) -----------------------


def log_shared(tmp_path: Path, metadata: dict[str, object], tags: tuple[str, ...] = ()) -> se.Repository:
    data = make_data(tmp_path)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("shared", type="dataset", description="start", metadata=metadata)
    art.add_dir(str(data))
    repo.log_artifact(art, project="p", tags=tags)
    return repo


def test_two_objects_of_one_version_keep_each_others_changes(tmp_path: Path) -> None:
    repo = log_shared(tmp_path, {"rows": 1, "drop": True, "cfg": {"lr": 0.1}}, tags=("seed",))
    a, b = repo.artifact("p/shared:v0"), repo.artifact("p/shared:v0")
    a.metadata["from_a"] = 1
    del a.metadata["drop"]
    b.metadata["from_b"] = 2
    b.metadata["cfg"]["lr"] = 0.2  # a nested change rewrites that key
    a.save()
    b.save()
    assert repo.artifact("p/shared:v0").metadata == {"rows": 1, "cfg": {"lr": 0.2}, "from_a": 1, "from_b": 2}
    # b's view was refreshed by its save: it now holds a's keys too
    assert b.metadata == {"rows": 1, "cfg": {"lr": 0.2}, "from_a": 1, "from_b": 2}

    a, b = repo.artifact("p/shared:v0"), repo.artifact("p/shared:v0")
    a.tags.append("from-a")
    a.save()
    b.description = "described by b"  # a description-only save keeps a's new tag
    b.save()
    c, d = repo.artifact("p/shared:v0"), repo.artifact("p/shared:v0")
    assert c.tags == ["seed", "from-a"] and c.description == "described by b"
    c.tags.remove("seed")
    d.tags.append("from-d")
    c.save()
    d.save()  # d still lists "seed" (it never removed it): the removal by c stands
    got = repo.artifact("p/shared:v0")
    assert got.tags == ["from-a", "from-d"] and got.description == "described by b"

    a, b = repo.artifact("p/shared:v0"), repo.artifact("p/shared:v0")
    a.aliases.append("alias-a")
    b.aliases.append("alias-b")
    b.metadata["late"] = True
    a.save()
    b.save()
    got = repo.artifact("p/shared:v0")
    assert sorted(got.aliases) == ["alias-a", "alias-b", "latest"]
    assert got.metadata["late"] is True and "from_a" in got.metadata
    repo.close()


def test_assigning_metadata_replaces_it_whole(tmp_path: Path) -> None:
    repo = log_shared(tmp_path, {"rows": 1, "old": "x"})
    a, b = repo.artifact("p/shared:v0"), repo.artifact("p/shared:v0")
    b.metadata["meanwhile"] = 1
    b.save()
    a.metadata = {"only": 1}
    a.save()
    assert repo.artifact("p/shared:v0").metadata == {"only": 1}
    assert a.metadata == {"only": 1}
    a.metadata["after"] = 2  # after a save the object is back to key-by-key updates
    c = repo.artifact("p/shared:v0")
    c.metadata["from_c"] = 3
    c.save()
    a.save()
    assert repo.artifact("p/shared:v0").metadata == {"only": 1, "after": 2, "from_c": 3}
    m = a.metadata
    m |= {"merged": 4}  # in-place |= is a key update, not a replacement
    a.metadata = m
    d = repo.artifact("p/shared:v0")
    d.metadata["from_d"] = 5
    d.save()
    a.save()
    want = {"only": 1, "after": 2, "from_c": 3, "from_d": 5, "merged": 4}
    assert repo.artifact("p/shared:v0").metadata == want
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        a.metadata["bad"] = object()
        a.save()
    repo.close()


def _concurrent_saver(repo_dir: str, me: int, barrier: object) -> None:
    repo = se.Repository.open(repo_dir)
    v = repo.artifact("p/shared:v0")  # every process reads the version before any of them saves
    barrier.wait()  # type: ignore[attr-defined]
    v.metadata[f"k{me}"] = me
    del v.metadata[f"del{me}"]
    v.tags.append(f"t{me}")
    v.aliases.append(f"a{me}")
    v.save()
    repo.close()


def test_concurrent_saves_from_several_processes_all_survive(tmp_path: Path) -> None:
    import multiprocessing

    n = 4
    repo = log_shared(tmp_path, {"keep": 0, **{f"del{i}": i for i in range(n)}}, tags=("seed",))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    where = str(tmp_path / "repo")
    procs = [ctx.Process(target=_concurrent_saver, args=(where, i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    got = repo.artifact("p/shared:v0")
    assert got.metadata == {"keep": 0, **{f"k{i}": i for i in range(n)}}
    assert sorted(got.tags) == sorted(["seed", *(f"t{i}" for i in range(n))])
    assert sorted(got.aliases) == sorted(["latest", *(f"a{i}" for i in range(n))])
    repo.close()


# -- the facade in a fork()ed child (multiprocessing "fork", DataLoader workers) ------------


def _forked_child(repo_dir: str, parent_repo: se.Repository) -> None:
    repo = se.Repository.open(repo_dir)
    v = repo.artifact("p/shared:v0")
    assert v.version == "v0" and v.metadata["rows"] == 1
    v.metadata["child"] = os.getpid()
    v.save()
    repo.close()
    assert parent_repo.artifact("p/shared:v0").metadata["child"] == os.getpid()  # opened before the fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork:DeprecationWarning")  # 3.12+: fork() of a threaded process
def test_the_facade_works_in_a_forked_child(tmp_path: Path) -> None:
    import multiprocessing

    repo = log_shared(tmp_path, {"rows": 1})  # the parent's loop thread is running now
    assert repo.artifact("p/shared:v0").version == "v0"
    ctx = multiprocessing.get_context("fork")
    for _ in range(2):  # the parent keeps working between children
        p = ctx.Process(target=_forked_child, args=(str(tmp_path / "repo"), repo))
        p.start()
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail("the facade hung in a forked child")
        assert p.exitcode == 0
        assert repo.artifact("p/shared:v0").metadata["child"] == p.pid
    pid = os.fork()
    if pid == 0:  # a bare os.fork() too
        code = 1
        try:
            _forked_child(str(tmp_path / "repo"), repo)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the facade hung in a child of os.fork()")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    repo.close()
