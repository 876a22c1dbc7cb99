"""`latest` is an alias like any other, as in W&B: each newly logged version gets it, and users
may pass, move, remove or replace it (docs/FORMAT.md "Artifact head", docs/DELETION.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import syncengine as se
from syncengine.repo.records import head_key
from syncengine.repo.repository import ArtifactNotFound


def log(repo: se.Repository, tmp_path: Path, content: bytes, aliases: tuple[str, ...] = ()) -> str:
    src = tmp_path / "src" / content.decode()
    src.mkdir(parents=True, exist_ok=True)
    (src / "f.bin").write_bytes(content)
    art = se.Artifact("m", type="model")
    art.add_dir(str(src))
    return str(repo.log_artifact(art, project="p", aliases=list(aliases)).version)


def aliases_of(repo: se.Repository, ref: str) -> list[str]:
    return sorted(repo.artifact(ref).aliases)


def test_wandb_faq_example_replaces_every_alias_latest_included(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        assert log(repo, tmp_path, b"a", ("latest", "best")) == "v0"  # W&B's own call: no error
        artifact = repo.artifact("p/m:latest")
        assert sorted(artifact.aliases) == ["best", "latest"]
        artifact.aliases.append("best")
        artifact.aliases.remove("latest")
        artifact.aliases = ["replaced"]
        artifact.save()
        assert artifact.aliases == ["replaced"]
        assert aliases_of(repo, "p/m:v0") == ["replaced"]  # stored, not only shown
        for ref in ("p/m:latest", "p/m"):
            with pytest.raises(ArtifactNotFound) as e:
                repo.artifact(ref)
            assert str(e.value) == (
                "no version of p/m holds the alias 'latest' (it was removed; the newest is p/m:v0): "
                "name a version, or give it back (`syncengine alias add p/m:v0 latest`)"
            )
        assert repo.artifact("p/m:replaced").version == "v0"


def test_a_removed_latest_stays_removed_until_a_new_version(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        log(repo, tmp_path, b"a")
        log(repo, tmp_path, b"b", ("best",))
        v1 = repo.artifact("p/m:v1")
        v1.aliases.remove("latest")
        v1.save()
        # Unrelated edits give it back to no version: metadata, another alias, identical
        # content logged again, deleting another version.
        v1.metadata["k"] = 1
        v1.save()
        v0 = repo.artifact("p/m:v0")
        v0.aliases.append("prod")
        v0.save()
        assert log(repo, tmp_path, b"b") == "v1"
        log(repo, tmp_path, b"c")
        v2 = repo.artifact("p/m:v2")
        assert "latest" in v2.aliases  # a new version gets it (W&B)
        v2.aliases.remove("latest")
        v2.save()
        v2.delete()
        assert [aliases_of(repo, f"p/m:v{n}") for n in (0, 1)] == [["prod"], ["best"]]
        with pytest.raises(ArtifactNotFound, match="holds the alias 'latest'"):
            repo.artifact("p/m:latest")
        assert log(repo, tmp_path, b"d") == "v3"
        assert repo.artifact("p/m:latest").version == repo.artifact("p/m").version == "v3"


def test_moved_latest_resolves_there_and_a_delete_moves_it_as_documented(tmp_path: Path) -> None:
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        for c in (b"a", b"b", b"c"):
            log(repo, tmp_path, c)
        v0 = repo.artifact("p/m:v0")
        v0.aliases.append("latest")  # moves it from v2, atomically (one head write)
        v0.save()
        assert repo.artifact("p/m").version == repo.artifact("p/m:latest").version == "v0"
        assert aliases_of(repo, "p/m:v2") == []
        # Deleting the version that holds it moves it to the newest remaining version and
        # does not count as an alias that protects the version.
        d = repo.artifact("p/m:v0").delete()
        assert d.aliases == []
        assert repo.artifact("p/m:latest").version == "v2"
        # Re-logging identical content is no new version: `latest` stays; asking moves it.
        assert log(repo, tmp_path, b"b") == "v1" and repo.artifact("p/m:latest").version == "v2"
        assert log(repo, tmp_path, b"b", ("latest",)) == "v1"
        assert repo.artifact("p/m:latest").version == "v1"
        # cleanup and TTL protect aliased versions, `latest` aside (as before).
        c = repo.cleanup("p/m", keep_last=0)
        assert sorted(d.ref for d in c.deleted) == ["p/m:v1", "p/m:v2"]


def test_a_head_written_before_reads_latest_on_the_newest(tmp_path: Path) -> None:
    """Heads written before `latest` was an ordinary alias imply it on the newest version."""
    root = tmp_path / "repo"
    with se.Repository.open(str(root)) as repo:
        log(repo, tmp_path, b"a", ("best",))
        log(repo, tmp_path, b"b")
    path = root / head_key("p", "m")
    head = json.loads(path.read_bytes())
    head["aliases"].pop("latest")
    del head["latest_in_aliases"]
    path.write_bytes(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
    with se.Repository.open(str(root)) as repo:
        assert repo.artifact("p/m:latest").version == "v1"
        assert aliases_of(repo, "p/m:v1") == ["latest"]
        v1 = repo.artifact("p/m:v1")
        v1.aliases.remove("latest")
        v1.save()
    written = json.loads(path.read_bytes())
    assert written["latest_in_aliases"] is True and "latest" not in written["aliases"]
    with se.Repository.open(str(root)) as repo, pytest.raises(ArtifactNotFound):
        repo.artifact("p/m:latest")


def test_cli_put_alias_latest_and_alias_rm_latest(tmp_path: Path) -> None:
    env = {**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncengine", *args], capture_output=True, text=True, env=env, timeout=300
        )

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    r = cli("put", str(src), "-n", "p/d", "-t", "dataset", "-a", "latest", "-a", "best")
    assert r.returncode == 0, r.stderr
    r = cli("alias", "rm", "p/d:v0", "latest")
    assert r.returncode == 0, r.stderr
    r = cli("get", "p/d", "--root", str(tmp_path / "out"))
    assert r.returncode == 1 and "no version of p/d holds the alias 'latest'" in r.stderr
    assert cli("alias", "add", "p/d:v0", "latest").returncode == 0
    listing = json.loads(cli("versions", "p/d", "--json").stdout)
    assert [(v["version"], v["aliases"]) for v in listing] == [(0, ["best", "latest"])]
