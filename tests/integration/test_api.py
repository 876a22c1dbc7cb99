"""The Python API as in the issue: sync facade, async core, notebooks and threads."""

from __future__ import annotations

import asyncio
import threading
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
