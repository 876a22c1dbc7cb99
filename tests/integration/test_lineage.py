"""Runs, lineage and collections on a LocalStore repository, as an ML engineer uses them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import syncengine as se
from syncengine import aio
from syncengine.errors import ConfigError
from syncengine.repo.links import NotALink
from syncengine.repo.records import InvalidName
from syncengine.repo.runs import RunExists, RunNotFound


def write(root: Path, name: str, data: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    p.write_bytes(data)
    return p


def artifact(tmp: Path, name: str, type: str, data: bytes, **kw: Any) -> se.Artifact:
    art = se.Artifact(name, type=type, **kw)
    art.add_file(str(write(tmp / "src" / name / data.hex()[:16], "file.bin", data)))
    return art


@pytest.fixture
def repo(tmp_path: Path) -> Any:
    r = se.Repository.open(str(tmp_path / "repo"))
    yield r
    r.close()


# -- runs ----------------------------------------------------------------------------------------


def test_a_run_records_its_state_config_and_summary(repo: Any, tmp_path: Path) -> None:
    with repo.run(project="vision", job_type="train", group="sweep-1", config={"lr": 0.1}) as run:
        assert run.state == "running" and len(run.id) == 8
        run.summary["acc"] = 0.93
        v = run.log_artifact(artifact(tmp_path, "model", "model", b"weights"), aliases=["best"])
    assert run.state == "finished"
    assert v.record.logged_by == f"vision/{run.id}"
    (stored,) = repo.runs("vision")
    assert (stored.id, stored.job_type, stored.group, stored.state) == (
        run.id,
        "train",
        "sweep-1",
        "finished",
    )
    assert stored.config == {"lr": 0.1} and stored.summary == {"acc": 0.93}


def test_an_exception_marks_the_run_crashed(repo: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="out of memory"), repo.run(project="vision", id="oom-run") as run:
        raise RuntimeError("CUDA out of memory")
    (stored,) = repo.runs("vision")
    assert stored.state == "crashed" and stored.record.error == "RuntimeError: CUDA out of memory"
    assert run.state == "crashed"


def test_ids_resume_and_their_errors(repo: Any, tmp_path: Path) -> None:
    with repo.run(project="p", job_type="train", id="run-1") as run:
        run.log_artifact(artifact(tmp_path, "ckpt", "model", b"epoch 1"))
    with (
        pytest.raises(RunExists, match="run p/run-1 already exists; pass resume=True"),
        repo.run("p", id="run-1"),
    ):
        pass
    with (
        pytest.raises(RunNotFound, match="project 'p' has no run 'nope'"),
        repo.run("p", id="nope", resume=True),
    ):
        pass
    with pytest.raises(ConfigError, match="resume=True needs id="):
        repo.run(project="p", resume=True)
    with pytest.raises(InvalidName):
        repo.run(project="p", id="bad/id")
    with repo.run(project="p", id="run-1", resume=True, config={"epochs": 2}) as again:
        assert again.job_type == "train"  # from the stored record
        again.log_artifact(artifact(tmp_path, "ckpt", "model", b"epoch 2"))
    stored = repo.runs("p")[0]
    assert stored.record.resumed == 1 and stored.state == "finished" and stored.config == {"epochs": 2}
    assert [v.version for v in again.logged_artifacts()] == ["v0", "v1"]
    assert all(v.logged_by().id == "run-1" for v in again.logged_artifacts())


def test_a_run_must_be_running_to_use_or_log(repo: Any, tmp_path: Path) -> None:
    run = repo.run(project="p")
    with pytest.raises(ConfigError, match="is not running"):
        run.log_artifact(artifact(tmp_path, "x", "data", b"x"))
    with repo.run(project="p") as run:
        pass
    with pytest.raises(ConfigError, match="is not running"):
        run.use_artifact("x:latest")


def test_generated_ids_differ(repo: Any) -> None:
    ids = set()
    for _ in range(5):
        with repo.run(project="p") as run:
            ids.add(run.id)
    assert len(ids) == 5 and {r.id for r in repo.runs("p")} == ids


# -- lineage -----------------------------------------------------------------------------------


def pipeline(repo: Any, tmp_path: Path) -> dict[str, Any]:
    """data → train → model → eval → report, with the model also used by a second eval."""
    with repo.run(project="vision", job_type="prepare", id="prep") as prep:
        data = prep.log_artifact(artifact(tmp_path, "mnist", "dataset", b"pixels"))
    with repo.run(project="vision", job_type="train", id="train") as train:
        used = train.use_artifact("mnist:latest")
        model = train.log_artifact(artifact(tmp_path, "model", "model", b"weights"), aliases=["best"])
    for i in (1, 2):
        with repo.run(project="vision", job_type="eval", id=f"eval{i}") as ev:
            ev.use_artifact("vision/model:best")
            ev.log_artifact(artifact(tmp_path, "report", "report", f"report {i}".encode()))
    return {"data": data, "used": used, "model": model}


def test_logged_by_used_by_and_the_runs_artifacts(repo: Any, tmp_path: Path) -> None:
    p = pipeline(repo, tmp_path)
    assert p["used"].version == "v0" and p["used"].name == "vision/mnist"
    assert p["model"].logged_by().id == "train"
    assert [r.id for r in p["model"].used_by()] == ["eval1", "eval2"]
    assert [r.id for r in p["data"].used_by()] == ["train"]
    assert p["data"].logged_by().id == "prep"
    (train,) = [r for r in repo.runs("vision") if r.id == "train"]
    assert [v.name for v in train.used_artifacts()] == ["vision/mnist"]
    assert [v.name for v in train.logged_artifacts()] == ["vision/model"]
    assert repo.artifact("vision/report:v1").logged_by().id == "eval2"


def test_a_version_logged_outside_a_run_has_no_producer(repo: Any, tmp_path: Path) -> None:
    v = repo.log_artifact(artifact(tmp_path, "raw", "dataset", b"raw"), project="p")
    assert v.logged_by() is None and v.used_by() == []
    assert v.record.logged_by == ""  # old and run-less records look the same


def test_identical_content_keeps_its_producer(repo: Any, tmp_path: Path) -> None:
    with repo.run(project="p", id="first") as first:
        v = first.log_artifact(artifact(tmp_path, "m", "model", b"same"))
    with repo.run(project="p", id="second") as second:
        again = second.log_artifact(artifact(tmp_path, "m", "model", b"same"))
    assert again.version == v.version == "v0"
    assert again.logged_by().id == "first"
    assert [x.version for x in second.logged_artifacts()] == ["v0"]


def test_use_checks_type_and_names_in_the_run_project(repo: Any, tmp_path: Path) -> None:
    repo.log_artifact(artifact(tmp_path, "d", "dataset", b"d"), project="other")
    repo.log_artifact(artifact(tmp_path, "d", "dataset", b"e"), project="p")
    with repo.run(project="p") as run:
        assert run.use_artifact("d:v0").name == "p/d"
        assert run.use_artifact("other/d:v0").name == "other/d"
        with pytest.raises(ConfigError, match="has type 'dataset', not 'model'"):
            run.use_artifact("d:latest", type="model")
        with pytest.raises(LookupError, match="has no artifact 'nope'"):
            run.use_artifact("nope:latest")
    assert sorted(v.name for v in run.used_artifacts()) == ["other/d", "p/d"]


def test_many_runs_using_one_version_all_recorded(tmp_path: Path) -> None:
    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("d", type="dataset")
            art.add_file(str(write(tmp_path / "src", "f", b"data")))
            v = await repo.log_artifact(art, project="p")

            async def one(i: int) -> None:
                async with repo.run(project="p", job_type="eval", id=f"r{i}") as run:
                    await run.use_artifact("p/d:v0")

            await asyncio.gather(*(one(i) for i in range(16)))
            assert sorted(r.id for r in await v.used_by()) == sorted(f"r{i}" for i in range(16))

    asyncio.run(go())


def test_the_lineage_graph(repo: Any, tmp_path: Path) -> None:
    from syncengine.repo.lineage import graph

    pipeline(repo, tmp_path)
    core = repo._inner.core

    async def g(ref: str, depth: int) -> dict[str, Any]:
        from syncengine.repo.records import parse_ref

        return await graph(core, await core.resolve(parse_ref(ref)), depth)

    out = aio_run(g("vision/model:v0", 3))
    assert out["artifact"] == "vision/model:v0"
    up = out["logged_by"]
    assert (up["run"], up["job_type"], up["state"]) == ("vision/train", "train", "finished")
    assert up["used"][0]["artifact"] == "vision/mnist:v0"
    assert up["used"][0]["logged_by"]["run"] == "vision/prep"
    assert up["used"][0]["logged_by"]["used"] == []
    down = out["used_by"]
    assert [r["run"] for r in down] == ["vision/eval1", "vision/eval2"]
    assert [r["logged"][0]["artifact"] for r in down] == ["vision/report:v0", "vision/report:v1"]
    shallow = aio_run(g("vision/mnist:v0", 1))
    assert shallow["used_by"][0] == {
        "run": "vision/train",
        "state": "finished",
        "job_type": "train",
        "more": True,
    }
    deep = aio_run(g("vision/mnist:v0", 5))
    assert [r["run"] for r in deep["used_by"][0]["logged"][0]["used_by"]] == ["vision/eval1", "vision/eval2"]
    assert aio_run(g("vision/mnist:v0", 0)) == {
        "artifact": "vision/mnist:v0", "type": "dataset", "logged_by": None, "used_by": []
    }  # fmt: skip


def test_a_cycle_is_shown_once(repo: Any, tmp_path: Path) -> None:
    from syncengine.repo.lineage import graph

    v = repo.log_artifact(artifact(tmp_path, "d", "dataset", b"d"), project="p")
    with repo.run(project="p", id="loop") as run:
        run.use_artifact("d:v0")
        run.log_artifact(artifact(tmp_path, "d", "dataset", b"d"))  # identical: logs v0 again
    out = aio_run(graph(repo._inner.core, v.record, 10))
    assert out["logged_by"]["used"] == [{"artifact": "p/d:v0", "type": "dataset", "seen": True}]
    assert out["used_by"][0]["logged"] == [{"artifact": "p/d:v0", "type": "dataset", "seen": True}]


def aio_run(coro: Any) -> Any:
    from syncengine.api import _Loop

    return _Loop.run(coro)


# -- the sweep example of docs/LINEAGE.md ----------------------------------------------------------


def test_sweep_pick_the_best_run_and_use_its_model(repo: Any, tmp_path: Path) -> None:
    for lr, acc in [(0.1, 0.81), (0.01, 0.93), (0.001, 0.88)]:
        with repo.run(project="mnist", job_type="train", group="sweep-7", config={"lr": lr}) as run:
            run.summary["val_acc"] = acc
            run.log_artifact(artifact(tmp_path, "model", "model", f"lr={lr}".encode()))
    best = max(repo.runs("mnist", group="sweep-7"), key=lambda r: r.summary["val_acc"])
    (model,) = [v for v in best.logged_artifacts() if v.type == "model"]
    with repo.run(project="mnist", job_type="eval") as ev:
        used = ev.use_artifact(f"{model.name}:{model.version}")
    assert best.config == {"lr": 0.01} and used.version == "v1"
    assert used.logged_by().config["lr"] == 0.01


# -- collections -------------------------------------------------------------------------------


def test_link_into_a_registry_and_resolve_download_and_lineage(repo: Any, tmp_path: Path) -> None:
    p = pipeline(repo, tmp_path)
    link = p["model"].link("reg/models", aliases=["staging"])
    assert (link.name, link.version, link.linked_from) == ("reg/models", "v0", "vision/model:v0")
    assert sorted(link.aliases) == ["latest", "staging"]
    assert link.record.manifest == p["model"].record.manifest  # no data copied
    got = repo.artifact("reg/models:staging")
    assert got.linked_from == "vision/model:v0" and got.digest == p["model"].digest
    out = Path(got.download(root=str(tmp_path / "out")))
    assert (out / "file.bin").read_bytes() == b"weights"
    assert got.logged_by().id == "train"  # the source's lineage
    assert [r.id for r in got.used_by()] == ["eval1", "eval2"]

    again = repo.artifact("vision/model:best").link("reg/models", aliases=["prod"])
    assert again.version == "v0" and sorted(again.aliases) == ["latest", "prod", "staging"]
    via_link = got.link("other/models")  # a link of a link points at the source
    assert via_link.linked_from == "vision/model:v0"

    with repo.run(project="deploy", job_type="serve", id="srv") as srv:
        used = srv.use_artifact("reg/models:prod")
    assert used.name == "reg/models"
    assert [v.name for v in srv.used_artifacts()] == ["vision/model"]  # recorded on the source
    assert "srv" in [r.id for r in p["model"].used_by()]


def test_unlink_keeps_the_source(repo: Any, tmp_path: Path) -> None:
    a = repo.log_artifact(artifact(tmp_path, "m", "model", b"a"), project="p")
    b = repo.log_artifact(artifact(tmp_path, "m", "model", b"b"), project="p")
    la = a.link("reg/models", aliases=["prod"])
    lb = b.link("reg/models", aliases=["staging"])
    assert (la.version, lb.version) == ("v0", "v1")
    lb.unlink()
    with pytest.raises(LookupError, match="has no alias 'staging'"):
        repo.artifact("reg/models:staging")
    assert repo.artifact("reg/models:latest").version == "v0"
    assert repo.artifact("p/m:v1").download(root=str(tmp_path / "b"))  # the source is intact
    assert (tmp_path / "b" / "file.bin").read_bytes() == b"b"
    relinked = b.link("reg/models")
    assert relinked.version == "v2" and not relinked.record.deleted  # v1 is never reused
    with pytest.raises(NotALink, match="p/m:v0 is not a link"):
        a.unlink()


def test_link_refusals(repo: Any, tmp_path: Path) -> None:
    m = repo.log_artifact(artifact(tmp_path, "m", "model", b"a"), project="p")
    d = repo.log_artifact(artifact(tmp_path, "d", "dataset", b"d"), project="p")
    m.link("reg/models")
    with pytest.raises(Exception, match="has type 'model', not 'dataset'"):
        d.link("reg/models")
    with pytest.raises(ConfigError, match="names a version"):
        m.link("reg/models:v0")
    with pytest.raises(ConfigError, match="already in p/m"):
        m.link("p/m")


# -- the async API ----------------------------------------------------------------------------------


def test_async_runs(tmp_path: Path) -> None:
    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            async with repo.run(project="p", job_type="train", config={"x": 1}) as run:
                art = aio.Artifact("m", type="model")
                art.add_file(str(write(tmp_path / "s", "w", b"w")))
                v = await run.log_artifact(art)
            producer = await v.logged_by()
            assert producer is not None and producer.id == run.id and producer.state == "finished"
            link = await v.link("reg/models", aliases=["prod"])
            assert (await (await repo.artifact("reg/models:prod")).logged_by()).id == run.id  # type: ignore[union-attr]
            await link.unlink()
            assert [r.id for r in await repo.runs("p")] == [run.id]

    asyncio.run(go())


# -- the CLI --------------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def test_cli_lineage_runs_link_unlink(repo: Any, tmp_path: Path) -> None:
    pipeline(repo, tmp_path)
    r = str(tmp_path / "repo")
    out = cli("lineage", "vision/model:v0", "--repo", r)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for line in ["vision/model:v0 (model)", "logged by run vision/train [train, finished]",
                 "used vision/mnist:v0 (dataset)", "used by run vision/eval1 [eval, finished]",
                 "logged vision/report:v0 (report)"]:  # fmt: skip
        assert line in text, text
    js = json.loads(cli("lineage", "vision/model:best", "--json", "--depth", "1", "--repo", r).stdout)
    assert js["logged_by"]["run"] == "vision/train" and js["logged_by"]["more"] is True

    runs = json.loads(cli("runs", "vision", "--json", "--repo", r).stdout)
    assert [x["id"] for x in runs] == ["prep", "train", "eval1", "eval2"]
    assert "vision/train  train  finished" in cli("runs", "vision", "--repo", r).stdout

    linked = cli("link", "vision/model:best", "reg/models", "-a", "prod", "--repo", r)
    assert linked.returncode == 0 and "linked: reg/models:v0 -> vision/model:v0" in linked.stdout
    assert "already linked" in cli("link", "vision/model:v0", "reg/models", "--repo", r).stdout
    shown = cli("lineage", "reg/models:prod", "--repo", r).stdout
    assert "link of vision/model:v0" in shown and "logged by run vision/train" in shown
    assert "linked as reg/models:v0" in cli("lineage", "vision/model:v0", "--repo", r).stdout
    un = cli("unlink", "reg/models:v0", "--json", "--repo", r)
    assert un.returncode == 0 and json.loads(un.stdout)["deleted"] is True
    bad = cli("unlink", "vision/model:v0", "--repo", r)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: vision/model:v0 is not a link into a collection; only links can be unlinked "
        "(`syncengine delete` deletes a version)"
    ]
    missing = cli("lineage", "vision/nope:v0", "--repo", r)
    assert missing.returncode == 1 and "has no artifact 'nope'" in missing.stderr
    none = cli("runs", "empty", "--repo", r)  # no runs and no artifacts: no such project
    assert none.returncode == 1 and none.stderr.startswith("error: no project 'empty'")


def test_a_use_through_a_link_keeps_the_link_it_came_through(repo: Any, tmp_path: Path) -> None:
    from syncengine.repo.runs import version_runs

    v = repo.log_artifact(artifact(tmp_path, "m", "model", b"m"), project="p")
    v.link("reg/models", aliases=["prod"])
    with repo.run(project="p", id="user") as run:
        run.use_artifact("reg/models:prod")
    ((project, run_id, edge),) = aio_run(version_runs(repo._inner.core.store, v.record, "used_by"))
    assert (project, run_id, edge.via) == ("p", "user", "reg/models:v0")


# -- a property: both ends of every edge agree, whatever the runs did --------------------------------

_steps = st.lists(
    st.tuples(st.sampled_from(["use", "log"]), st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=12
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(_steps, min_size=1, max_size=4))
def test_both_ends_of_every_edge_agree(tmp_path_factory: pytest.TempPathFactory, runs: list[Any]) -> None:
    """Runs use and log versions of three artifacts (content drawn from four values); then every
    version's consumers are exactly the runs listing it as an input, its producer is the first
    run that logged its content, and every run's outputs are the versions it logged."""
    tmp = tmp_path_factory.mktemp("prop")

    async def go() -> None:
        async with await aio.Repository.open(str(tmp / "repo")) as repo:
            uses: dict[str, set[str]] = {}
            logs: dict[str, set[str]] = {}
            first: dict[str, str] = {}
            for i, steps in enumerate(runs):
                async with repo.run(project="p", id=f"r{i}") as run:
                    for kind, a, content in steps:
                        name = f"a{a}"
                        if kind == "log":
                            art = aio.Artifact(name, type="data")
                            art.add_file(
                                str(write(tmp / "src" / f"{name}-{content}", "f", f"{content}".encode()))
                            )
                            v = await run.log_artifact(art)
                            ref = f"{v.name}:{v.version}"
                            logs.setdefault(f"r{i}", set()).add(ref)
                            first.setdefault(ref, f"r{i}")
                        elif (await repo.artifacts("p")) and f"p/{name}" in await repo.artifacts("p"):
                            v = await run.use_artifact(f"{name}:latest")
                            uses.setdefault(f"{v.name}:{v.version}", set()).add(f"r{i}")
            for name in await repo.artifacts("p"):
                for v in await repo.artifact_versions(name):
                    ref = f"{v.name}:{v.version}"
                    assert {r.id for r in await v.used_by()} == uses.get(ref, set())
                    producer = await v.logged_by()
                    assert producer is not None and producer.id == first[ref]
            for run in await repo.runs("p"):
                assert {f"{v.name}:{v.version}" for v in await run.logged_artifacts()} == logs.get(
                    run.id, set()
                )
                inputs = {f"{v.name}:{v.version}" for v in await run.used_artifacts()}
                assert inputs == {ref for ref, who in uses.items() if run.id in who}

    asyncio.run(go())


def test_the_sweeps_example_in_lineage_md_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example in docs/LINEAGE.md, executed as written (its asserts included)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp() lands in tmp_path
    doc = (Path(__file__).parents[2] / "docs" / "LINEAGE.md").read_text()
    block = doc.split("<!-- sweeps-example -->\n```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "docs/LINEAGE.md (sweeps example)", "exec"), {})
    assert capsys.readouterr().out.strip() == "0.01 trained with lr=0.01"
