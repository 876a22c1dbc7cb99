"""Distributed writers: many runs upsert parts of one artifact, one finish commits one version
(LocalStore and real S3 on SeaweedFS, 8 processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import syncengine as se
from syncengine import aio
from syncengine.repo.distributed import ArtifactFinished, DistributedConflict, NothingToFinish, parts
from tests.integration.test_s3_repository import REPO_ROOT, s3_env
from tests.s3server import S3TestServer

# One writer: its own run in group "shard-job", upserting its own files plus a shared one.
WRITER = """
import pathlib, sys
import syncengine as se
url, i, root = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
d = root / f"w{i}"
(d / "shards").mkdir(parents=True)
(d / "shards" / f"shard-{i}.bin").write_bytes(bytes([i]) * (3000 + i) + b"x" * i)
(d / "vocab.txt").write_text("the same vocabulary in every writer\\n")
repo = se.Repository.open(url)
with repo.run(project="nlp", job_type="preprocess", group="shard-job") as run:
    art = se.Artifact("corpus", type="dataset")
    art.add_dir(str(d))
    run.upsert_artifact(art)
print(run.id)
"""


def shard(i: int) -> bytes:
    return bytes([i]) * (3000 + i) + b"x" * i


def files(tmp_path: Path, name: str, content: dict[str, bytes]) -> se.Artifact:
    d = tmp_path / "src" / name
    for path, data in content.items():
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        (d / path).write_bytes(data)
    art = se.Artifact("corpus", type="dataset")
    art.add_dir(str(d))
    return art


@pytest.fixture
def s3_env_in_process(s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_env(s3_server)
    for k, v in env.items():
        if k.startswith(("AWS_", "SYNCENGINE_S3_")):
            monkeypatch.setenv(k, v)
    return env


def test_eight_processes_upsert_then_one_finish_on_s3(
    tmp_path: Path, s3_bucket: str, s3_env_in_process: dict[str, str]
) -> None:
    url = f"s3://{s3_bucket}/dist"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(i), str(tmp_path / "src")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env={
                **s3_env_in_process,  # each process is a machine: its own cache and state
                "SYNCENGINE_CACHE_DIR": str(tmp_path / f"cache-{i}"),
                "SYNCENGINE_STATE_DIR": str(tmp_path / f"state-{i}"),
            },
        )
        for i in range(8)
    ]
    writers = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        writers.append(out.strip())
    with se.Repository.open(url) as repo:
        with pytest.raises(se.SyncEngineError):
            repo.artifact("nlp/corpus")  # nothing is committed before finish
        with repo.run(project="nlp", job_type="merge", group="shard-job") as run:
            art = se.Artifact("corpus", type="dataset", metadata={"shards": 8})
            v = run.finish_artifact(art, aliases=["prod"])
        assert v.version == "v0" and v.metadata == {"shards": 8}
        expected = {f"shards/shard-{i}.bin": shard(i) for i in range(8)}
        expected["vocab.txt"] = b"the same vocabulary in every writer\n"
        assert sorted(v.manifest.entries) == sorted(expected)
        assert v.files == 9
        root = tmp_path / "out"
        v.download(root)
        v.verify(root)
        for path, data in expected.items():
            assert (root / path).read_bytes() == data
        assert v.logged_by().id == run.id
        assert [x.name for x in run.logged_artifacts()] == ["nlp/corpus"]
        # Finishing again (any run) returns the same version; no new one is made.
        with repo.run(project="nlp", job_type="merge", group="shard-job") as again:
            assert again.finish_artifact(se.Artifact("corpus", type="dataset")).version == "v0"
        assert [x.version for x in repo.artifact_versions("nlp/corpus")] == ["v0"]
        assert repo.artifact("nlp/corpus:prod").version == "v0"
    assert all(writers)


# The W&B documentation's distributed-writers example, one run per process: runs 1 and 2
# upsert image1.png and image2.png, run 3 adds image3.png and calls finish_artifact.
WANDB_RUN = """
import pathlib, sys
import syncengine as se
url, n, root = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
(root / f"image{n}.png").write_bytes(b"\\x89PNG image %d" % n)
repo = se.Repository.open(url)
with repo.run(project="p", job_type="writer") as run:
    artifact = se.Artifact("images", type="dataset")
    artifact.add_file(str(root / f"image{n}.png"))
    if n < 3:
        run.upsert_artifact(artifact, distributed_id="my_dist_artifact")
    else:
        print(run.finish_artifact(artifact, distributed_id="my_dist_artifact").version)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_wandb_three_run_example_in_three_processes(
    tmp_path: Path, where: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finishing run's own files are in the version too (they were silently dropped)."""
    env: dict[str, str] = {}
    url = str(tmp_path / "repo")
    if where == "s3":
        env = s3_env(request.getfixturevalue("s3_server"))
        url = f"s3://{request.getfixturevalue('s3_bucket')}/wandb"
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    versions = []
    for n in (1, 2, 3):
        machine = {
            **os.environ,
            **env,
            "SYNCENGINE_CACHE_DIR": str(tmp_path / f"cache-{n}"),
            "SYNCENGINE_STATE_DIR": str(tmp_path / f"state-{n}"),
        }
        r = subprocess.run(
            [sys.executable, "-c", WANDB_RUN, url, str(n), str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=machine,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        versions.append(r.stdout.strip())
    assert versions == ["", "", "v0"]
    with se.Repository.open(url) as repo:
        v = repo.artifact("p/images:v0")
        assert sorted(v.manifest.entries) == ["image1.png", "image2.png", "image3.png"]
        assert [x.version for x in repo.artifact_versions("p/images")] == ["v0"]
        v.download(tmp_path / "out")
        assert (tmp_path / "out" / "image3.png").read_bytes() == b"\x89PNG image 3"
    assert count_parts(url, "p", "images", "my_dist_artifact") == 3


def count_parts(url: str, project: str, name: str, distributed_id: str) -> int:
    async def go() -> int:
        async with await aio.Repository.open(url) as repo:
            return len(await parts(repo.core, project, name, distributed_id))

    return asyncio.run(go())


def test_finish_with_files_again_or_after_another_finish(tmp_path: Path) -> None:
    """A finish given files is idempotent when retried with the same files, and refuses
    (never drops) files that arrive after the id was finished."""
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        with repo.run(project="p", job_type="w", group="g") as run:
            run.upsert_artifact(files(tmp_path, "a", {"a.txt": b"a"}))
            v = run.finish_artifact(files(tmp_path, "own", {"own.txt": b"o"}))
            assert sorted(v.manifest.entries) == ["a.txt", "own.txt"]
            again = run.finish_artifact(files(tmp_path, "own", {"own.txt": b"o"}))
            assert again.version == v.version == "v0"
            assert count_parts(str(tmp_path / "repo"), "p", "corpus", "g") == 2  # the retry added none
            with pytest.raises(ArtifactFinished, match="finished as v0"):
                run.finish_artifact(files(tmp_path, "late", {"late.txt": b"l"}))
        assert [x.version for x in repo.artifact_versions("p/corpus")] == ["v0"]
        # With no upserts at all, a finish with files is a plain one-writer version.
        with repo.run(project="p", job_type="w") as run:
            solo = run.finish_artifact(files(tmp_path, "solo", {"s.txt": b"s"}), "solo")
        assert sorted(solo.manifest.entries) == ["s.txt"] and solo.version == "v1"


async def _local_repo(tmp_path: Path) -> aio.Repository:
    return await aio.Repository.open(str(tmp_path / "repo"))


def test_upsert_and_finish_on_local_store_with_distributed_id(tmp_path: Path) -> None:
    async def go() -> None:
        async with await _local_repo(tmp_path) as repo:
            for i in range(3):
                async with repo.run(project="p", job_type="w") as run:  # no group: explicit id
                    await run.upsert_artifact(files(tmp_path, f"w{i}", {f"f{i}.txt": b"%d" % i}), "job-1")
            found = await parts(repo.core, "p", "corpus", "job-1")
            assert len(found) == 3 and len({p.writer for p in found}) == 3
            assert all(p.run.startswith("p/") and p.index_segment.startswith("index/") for p in found)
            async with repo.run(project="p", job_type="merge") as run:
                v = await run.finish_artifact(se.Artifact("corpus", type="dataset"), "job-1")
            assert sorted((await v.manifest()).entries) == ["f0.txt", "f1.txt", "f2.txt"]
            # Identical content under another distributed id: the existing version.
            async with repo.run(project="p", job_type="w") as run:
                await run.upsert_artifact(
                    files(tmp_path, "all", {f"f{i}.txt": b"%d" % i for i in range(3)}), "job-2"
                )
                again = await run.finish_artifact(se.Artifact("corpus", type="dataset"), "job-2")
            assert again.version == v.version == "v0"

    asyncio.run(go())


def test_same_path_with_different_content_is_a_clear_error(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        ids = []
        for i in range(2):
            with repo.run(project="p", job_type="w", group="g") as run:
                run.upsert_artifact(files(tmp_path, f"w{i}", {"labels.csv": b"v%d" % i, f"own{i}": b"x"}))
                ids.append(run.id)
        with (
            repo.run(project="p", job_type="merge", group="g") as run,
            pytest.raises(DistributedConflict) as e,
        ):
            run.finish_artifact(se.Artifact("corpus", type="dataset"))
        msg = str(e.value)
        assert "'labels.csv'" in msg and all(f"run p/{i}" in msg for i in ids)
        assert "\n" not in msg
        with pytest.raises(se.SyncEngineError):
            repo.artifact("p/corpus")  # nothing committed


def test_upsert_after_finish_is_refused(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        with repo.run(project="p", job_type="w", group="g") as run:
            run.upsert_artifact(files(tmp_path, "a", {"a.txt": b"a"}))
            v = run.finish_artifact(se.Artifact("corpus", type="dataset"))
            with pytest.raises(ArtifactFinished, match=r"finished as v0.*immutable"):
                run.upsert_artifact(files(tmp_path, "b", {"b.txt": b"b"}))
        assert sorted(repo.artifact("p/corpus:v0").manifest.entries) == ["a.txt"]
        assert v.version == "v0"


def test_finish_twice_returns_the_same_version(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        with repo.run(project="p", job_type="w", group="g") as run:
            run.upsert_artifact(files(tmp_path, "a", {"a.txt": b"a"}))
            first = run.finish_artifact(se.Artifact("corpus", type="dataset"))
            second = run.finish_artifact(se.Artifact("corpus", type="dataset"))
        assert first.version == second.version == "v0"
        assert first.record == second.record
        assert [x.version for x in repo.artifact_versions("p/corpus")] == ["v0"]


def test_errors_without_group_parts_or_matching_type(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo, repo.run(project="p", job_type="w") as run:
        with pytest.raises(se.SyncEngineError, match="no group: pass distributed_id="):
            run.upsert_artifact(files(tmp_path, "a", {"a.txt": b"a"}))
        with pytest.raises(NothingToFinish, match="call upsert_artifact"):
            run.finish_artifact(se.Artifact("corpus", type="dataset"), "nothing")
        # the mistyped id was not sealed: writers may still use it
        run.upsert_artifact(files(tmp_path, "n", {"n.txt": b"n"}), "nothing")
        run.upsert_artifact(files(tmp_path, "b", {"b.txt": b"b"}), "d")
        with pytest.raises(se.SyncEngineError, match="type 'dataset', not 'model'"):
            run.finish_artifact(se.Artifact("corpus", type="model"), "d")


def test_a_crashed_upsert_leaves_no_part(tmp_path: Path) -> None:
    """A writer whose upload fails writes no part: finish sees only complete contributions."""

    async def go() -> None:
        async with await _local_repo(tmp_path) as repo:
            async with repo.run(project="p", job_type="w", group="g") as run:
                await run.upsert_artifact(files(tmp_path, "a", {"a.txt": b"a"}))
            gone = tmp_path / "gone.txt"
            gone.write_bytes(b"deleted before it is read")
            missing = se.Artifact("corpus", type="dataset")
            missing.add_file(str(gone))
            gone.unlink()  # the upsert fails while hashing, after it started
            with pytest.raises(FileNotFoundError):
                async with repo.run(project="p", job_type="w", group="g") as run:
                    await run.upsert_artifact(missing)
            assert len(await parts(repo.core, "p", "corpus", "g")) == 1
            async with repo.run(project="p", job_type="merge", group="g") as run:
                v = await run.finish_artifact(se.Artifact("corpus", type="dataset"))
            assert sorted((await v.manifest()).entries) == ["a.txt"]

    asyncio.run(go())
