"""Runs and lineage on S3 (real SeaweedFS): concurrent users of one version from separate
processes, and a lineage round trip through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import syncengine as se
from tests.integration.test_s3_repository import REPO_ROOT, cli, ok, ok_json, s3_env
from tests.s3server import S3TestServer

# One "machine": its own cache and state dirs; it shares only the bucket with the other.
USER = """
import sys
import syncengine as se
url, who = sys.argv[1], sys.argv[2]
repo = se.Repository.open(url)
for i in range(6):
    with repo.run(project="eval", job_type="eval", group=who, id=f"{who}-{i}") as run:
        v = run.use_artifact("data/mnist:prod")
        run.summary["files"] = v.files
print(v.version)
"""


@pytest.fixture
def s3_env_in_process(s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_env(s3_server)
    for k, v in env.items():
        if k.startswith(("AWS_", "SYNCENGINE_S3_")):
            monkeypatch.setenv(k, v)
    return env


def dataset(tmp_path: Path, data: bytes) -> se.Artifact:
    d = tmp_path / "src" / data.hex()[:12]
    d.mkdir(parents=True)
    (d / "part-0.bin").write_bytes(data)
    art = se.Artifact("mnist", type="dataset")
    art.add_dir(str(d))
    return art


def test_two_processes_use_one_version_and_both_edges_are_kept(
    tmp_path: Path, s3_bucket: str, s3_env_in_process: dict[str, str]
) -> None:
    url = f"s3://{s3_bucket}/shared"
    with se.Repository.open(url) as repo:
        repo.log_artifact(dataset(tmp_path, b"pixels"), project="data", aliases=["prod"])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", USER, url, who],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env={
                **s3_env_in_process,
                "SYNCENGINE_CACHE_DIR": str(tmp_path / f"cache-{who}"),
                "SYNCENGINE_STATE_DIR": str(tmp_path / f"state-{who}"),
            },
        )
        for who in ("a", "b")
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "v0"
    with se.Repository.open(url) as repo:
        v = repo.artifact("data/mnist:v0")
        users = sorted(r.id for r in v.used_by())
        assert users == sorted(f"{w}-{i}" for w in "ab" for i in range(6))
        runs = repo.runs("eval")
        assert len(runs) == 12 and {r.state for r in runs} == {"finished"}
        assert all(r.summary == {"files": 1} for r in runs)
        assert [x.name for x in repo.runs("eval", group="a")[0].used_artifacts()] == ["data/mnist"]


def test_lineage_round_trip_on_s3(tmp_path: Path, s3_bucket: str, s3_env_in_process: dict[str, str]) -> None:
    url = f"s3://{s3_bucket}/lineage"
    with se.Repository.open(url) as repo:
        with repo.run(project="vision", job_type="prepare", id="prep") as prep:
            prep.log_artifact(dataset(tmp_path, b"raw"))
        with repo.run(project="vision", job_type="train", id="train", config={"lr": 0.01}) as train:
            train.use_artifact("mnist:latest")
            model = se.Artifact("model", type="model")
            (tmp_path / "w.bin").write_bytes(b"weights")
            model.add_file(str(tmp_path / "w.bin"))
            v = train.log_artifact(model)
        link = v.link("reg/models", aliases=["prod"])
        assert link.linked_from == "vision/model:v0"

    env = s3_env_in_process
    graph = ok_json(cli("lineage", "reg/models:prod", "--json", "--repo", url, env=env))
    assert graph["link_of"] == "vision/model:v0"
    assert graph["logged_by"]["run"] == "vision/train"
    assert graph["logged_by"]["used"][0]["artifact"] == "vision/mnist:v0"
    assert graph["logged_by"]["used"][0]["logged_by"]["run"] == "vision/prep"
    text = ok(cli("lineage", "vision/mnist:v0", "--repo", url, env=env))
    assert "used by run vision/train [train, finished]" in text and "logged vision/model:v0 (model)" in text
    got = ok(cli("get", "reg/models:prod", "--root", str(tmp_path / "out"), "--repo", url, env=env))
    assert "reg/models:v0" in got and (tmp_path / "out" / "w.bin").read_bytes() == b"weights"
    runs = json.loads(ok(cli("runs", "vision", "--json", "--repo", url, env=env)))
    assert [(r["id"], r["state"]) for r in runs] == [("prep", "finished"), ("train", "finished")]
    ok(cli("unlink", "reg/models:v0", "--repo", url, env=env))
    with se.Repository.open(url) as repo:
        assert repo.artifact("vision/model:v0").logged_by().id == "train"  # the source is kept
        with pytest.raises(LookupError, match="has no alias 'prod'"):
            repo.artifact("reg/models:prod")
