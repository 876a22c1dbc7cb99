"""`syncengine distributed upsert|finish|status` as shell scripts on many machines use them:
concurrent CLI processes, each its own cache and state (local store and SeaweedFS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_s3_repository import REPO_ROOT, s3_env
from tests.s3server import S3TestServer

WRITERS = 6
VOCAB = b"the same vocabulary in every writer\n"


def shard(i: int) -> bytes:
    return bytes([i]) * (5000 + i) + b"x" * i


def writer_dir(tmp_path: Path, i: int) -> Path:
    d = tmp_path / "src" / f"w{i}"
    (d / "shards").mkdir(parents=True, exist_ok=True)
    (d / "shards" / f"shard-{i}.bin").write_bytes(shard(i))
    (d / "vocab.txt").write_bytes(VOCAB)  # every writer has it, identical: kept once
    return d


def machine(env: dict[str, str], tmp_path: Path, i: int) -> dict[str, str]:
    """One writer machine: its own cache and state dirs."""
    return {
        **env,
        "SYNCENGINE_CACHE_DIR": str(tmp_path / f"cache-{i}"),
        "SYNCENGINE_STATE_DIR": str(tmp_path / f"state-{i}"),
    }


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncengine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    p = start(env, *args)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def concurrent_upserts(env: dict[str, str], tmp_path: Path, repo: str, distributed_id: str) -> list[dict]:
    procs = [
        start(
            machine(env, tmp_path, i),
            "distributed",
            "upsert",
            "nlp/corpus",
            str(writer_dir(tmp_path, i)),
            "-t",
            "dataset",
            "-D",
            distributed_id,
            "--run-id",
            f"writer-{i}",
            "--repo",
            repo,
            "--json",
        )
        for i in range(WRITERS)
    ]
    parts = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        parts.append(json.loads(out))
    return parts


def finish_and_check(env: dict[str, str], tmp_path: Path, repo: str, distributed_id: str) -> None:
    r = run(env, "versions", "nlp/corpus", "--repo", repo)
    assert r.returncode == 1 and "project 'nlp' has runs but no artifacts yet" in r.stderr  # no finish yet
    r = run(env, "distributed", "status", "nlp/corpus", "-D", distributed_id, "--repo", repo)
    assert r.returncode == 0 and f"distributed id {distributed_id}: open, {WRITERS} parts" in r.stdout
    r = run(
        env, "distributed", "finish", "nlp/corpus", "-t", "dataset", "-D", distributed_id,
        "--run-id", "merge", "-a", "prod", "-m", '{"shards": 6}', "--repo", repo,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        f"finished nlp/corpus:v0 from {WRITERS} parts of distributed id {distributed_id} "
        f"({WRITERS + 1} files, 29.36 KiB); "
        "upserts into it are refused from now on"
    )
    out = tmp_path / "out"
    r = run(env, "get", "nlp/corpus:prod", "--root", str(out), "--repo", repo)
    assert r.returncode == 0, r.stderr
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    want = {f"shards/shard-{i}.bin": shard(i) for i in range(WRITERS)} | {"vocab.txt": VOCAB}
    assert got == want
    assert run(env, "verify", "nlp/corpus:v0", "--root", str(out), "--repo", repo).returncode == 0
    lineage = json.loads(run(env, "lineage", "nlp/corpus:v0", "--json", "--repo", repo).stdout)
    assert lineage["logged_by"]["run"] == "nlp/merge"
    shown = json.loads(run(env, "show", "nlp/corpus:v0", "--json", "--repo", repo).stdout)
    assert (shown["metadata"], shown["logged_by"]) == ({"shards": 6}, "nlp/merge")
    runs = json.loads(run(env, "runs", "nlp", "--json", "--repo", repo).stdout)
    assert sorted((r["id"], r["state"]) for r in runs) == sorted(
        [(f"writer-{i}", "finished") for i in range(WRITERS)] + [("merge", "finished")]
    )

    # After finish the version is immutable: an upsert is an error, a finish gives v0 again.
    r = run(
        machine(env, tmp_path, 0), "distributed", "upsert", "nlp/corpus", str(writer_dir(tmp_path, 0)),
        "-t", "dataset", "-D", distributed_id, "--repo", repo,
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: distributed artifact nlp/corpus (distributed id {distributed_id!r}) was finished as v0: "
        "its version is immutable; upsert into a new distributed id, or log a new version"
    )
    r = run(env, "distributed", "finish", "nlp/corpus", "-t", "dataset", "-D", distributed_id, "--repo", repo)
    assert r.returncode == 0 and r.stdout.startswith("already finished as nlp/corpus:v0 from 6 parts")
    r = run(env, "distributed", "status", "nlp/corpus", "-D", distributed_id, "--repo", repo, "--json")
    status = json.loads(r.stdout)
    assert (status["state"], status["finished"]["version"], len(status["parts"])) == ("finished", 0, WRITERS)
    listing = json.loads(run(env, "versions", "nlp/corpus", "--json", "--repo", repo).stdout)
    assert [(v["version"], v["aliases"]) for v in listing] == [(0, ["latest", "prod"])]


def test_concurrent_cli_writers_on_the_local_store(tmp_path: Path) -> None:
    env = dict(os.environ)
    repo = str(tmp_path / "repo")
    parts = concurrent_upserts(env, tmp_path, repo, "job-7")
    assert sorted(p["run"] for p in parts) == [f"nlp/writer-{i}" for i in range(WRITERS)]
    assert all(p["files"] == 2 and p["distributed_id"] == "job-7" for p in parts)
    finish_and_check(env, tmp_path, repo, "job-7")


def test_concurrent_cli_writers_on_s3(tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> None:
    env = s3_env(s3_server)
    repo = f"s3://{s3_bucket}/team"
    concurrent_upserts(env, tmp_path, repo, "job-s3")
    finish_and_check(env, tmp_path, repo, "job-s3")


def test_conflicting_writers_and_usage_errors(tmp_path: Path) -> None:
    env = dict(os.environ)
    repo = str(tmp_path / "repo")
    for i, content in enumerate([b"one", b"two"]):
        d = tmp_path / f"c{i}"
        d.mkdir()
        (d / "labels.csv").write_bytes(content)
        r = run(
            machine(env, tmp_path, i), "distributed", "upsert", "p/ds", str(d), "-t", "dataset",
            "-D", "clash", "--run-id", f"w{i}", "--repo", repo, "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = run(env, "distributed", "finish", "p/ds", "-t", "dataset", "-D", "clash", "--repo", repo)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: path 'labels.csv' was upserted with different content by writer w0.")
    assert " (run p/w0, host " in line and " and writer w1." in line and " (run p/w1, host " in line
    assert line.endswith("upsert each path from one writer (or with identical content), then finish again")
    assert run(env, "versions", "p/ds", "--repo", repo).returncode == 1  # nothing committed

    r = run(env, "distributed", "finish", "p/ds", "-t", "dataset", "-D", "nobody", "--repo", repo)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: distributed artifact p/ds has no upserted files under distributed id 'nobody': "
        "call upsert_artifact from the writers first"
    )
    r = run(env, "distributed", "finish", "p/ds", "-t", "dataset", "-D", "clsah", "--repo", repo)
    assert r.returncode == 1 and "under distributed id 'clsah' (did you mean 'clash'?): " in r.stderr
    r = run(env, "distributed", "finish", "p/ds", "-t", "model", "-D", "clash", "--repo", repo)
    assert r.returncode == 1 and "as type 'dataset', not 'model'" in r.stderr
    r = run(
        env, "distributed", "upsert", "p/ds:v0", str(tmp_path / "c0"), "-t", "d", "-D", "x", "--repo", repo
    )
    assert r.returncode == 2 and "give PROJECT/NAME without :alias or :vN" in r.stderr
    r = run(
        env, "distributed", "upsert", "p/ds", str(tmp_path / "c0"), "-t", "d", "-D", "a b", "--repo", repo
    )
    assert r.returncode == 2 and "invalid distributed id 'a b'" in r.stderr  # a usage error


def test_finish_with_paths_includes_the_finishing_steps_files(tmp_path: Path) -> None:
    """`distributed finish NAME PATHS…`, like W&B's finish_artifact of an artifact with files:
    the finishing step's files are a part too, so the version holds them."""
    env = dict(os.environ)
    repo = str(tmp_path / "repo")
    for n in (1, 2, 3):
        (tmp_path / f"image{n}.png").write_bytes(b"image %d" % n)
    for n in (1, 2):
        r = run(
            machine(env, tmp_path, n), "distributed", "upsert", "p/images", str(tmp_path / f"image{n}.png"),
            "-t", "dataset", "-D", "d1", "--repo", repo,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = run(
        machine(env, tmp_path, 3), "distributed", "finish", "p/images", str(tmp_path / "image3.png"),
        "-t", "dataset", "-D", "d1", "--repo", repo, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["ref"], out["files"], out["parts"]) == ("p/images:v0", 3, 3)
    got = tmp_path / "got"
    assert run(env, "get", "p/images:v0", "--root", str(got), "--repo", repo).returncode == 0
    assert sorted(p.name for p in got.iterdir()) == ["image1.png", "image2.png", "image3.png"]
