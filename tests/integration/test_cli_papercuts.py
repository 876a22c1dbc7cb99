"""What a new user meets in the first hour (issue 14, part 5): each test names the papercut."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from syncengine.cli.main import cli as command


def run(*args: str, repo: Path, cwd: Path | None = None, **env: str) -> Result:
    """The command in-process (click's runner), on the repository `repo`."""
    runner = CliRunner(env={"SYNCENGINE_REPO": str(repo), **env})
    if cwd is None:
        return runner.invoke(command, list(args))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        return runner.invoke(command, list(args))


def ok_json(*args: str, repo: Path, cwd: Path | None = None) -> Any:
    r = run(*args, "--json", repo=repo, cwd=cwd)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --- `put .` in a fresh clone -------------------------------------------------------------


def test_put_of_a_clone_leaves_out_vcs_folders_and_include_vcs_logs_them(tmp_path: Path) -> None:
    work = tree(
        tmp_path / "work",
        {"data.csv": b"a,b\n", ".gitignore": b"build/\n", ".git/HEAD": b"ref", ".git/objects/ab": b"x",
         "sub/.hg/store": b"y", "sub/x.txt": b"z"},
    )  # fmt: skip
    repo = tmp_path / "repo"
    out = ok_json("put", "-n", "p/d", "-t", "dataset", str(work), repo=repo)
    assert out["files"] == 3  # data.csv, .gitignore, sub/x.txt
    files = run("show", "--files", "p/d:v0", repo=repo).stdout
    assert ".git/" not in files and ".hg/" not in files and ".gitignore" in files
    assert ok_json("put", "-n", "p/d", "-t", "dataset", str(work), "--include-vcs", repo=repo)["files"] == 6
    assert ok_json("hash", str(work), repo=repo)["files"] == 3  # the same scan
    assert ok_json("hash", str(work), "--include-vcs", repo=repo)["files"] == 6
    assert "--include-vcs" in run("put", "--help", repo=repo).stdout


def test_put_warns_about_build_output_and_environments_it_logs(tmp_path: Path) -> None:
    work = tree(
        tmp_path / "work",
        {"setup.py": b"", "build/lib/m.py": b"", "dist/m.whl": b"", "m.egg-info/PKG-INFO": b"",
         "env/pyvenv.cfg": b"home = /usr", "__pycache__/m.pyc": b"", "src/m.py": b""},
    )  # fmt: skip
    repo = tmp_path / "repo"
    r = run("put", "-n", "p/d", "-t", "code", str(work), repo=repo)
    assert r.exit_code == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: logged")]
    for name in ("build", "dist", "m.egg-info", "env", "__pycache__"):
        assert any(f"{work / name}," in w and f"--exclude '{name}/'" in w for w in warned), (name, r.stderr)
    assert len(warned) == 5  # src/ is not suspect
    r = run("put", "-n", "p/d", "-t", "code", str(work), "--exclude", "build/", "--exclude", "*.egg-info",
            repo=repo)  # fmt: skip
    assert r.exit_code == 0 and "'build/'" not in r.stderr and "egg-info" not in r.stderr, r.stderr
    assert "--exclude 'dist/'" in r.stderr
    r = run("put", "-n", "p/d", "-t", "code", str(work), "--include", "src/**", repo=repo)
    assert r.exit_code == 0 and "warning" not in r.stderr  # the files were chosen


def test_put_help_explains_include_and_exclude(tmp_path: Path) -> None:
    text = " ".join(run("put", "--help", repo=tmp_path).stdout.split())
    assert "--include GLOB Only files matching" in text and "--exclude GLOB Leave out" in text


# --- usage errors exit 2 --------------------------------------------------------------------


def test_a_malformed_name_or_reference_is_a_usage_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = tree(tmp_path / "data", {"x.txt": b"x"})
    r = run("put", "-n", "vision", "-t", "dataset", str(data), repo=repo)
    assert r.exit_code == 2, r.stderr
    assert "expected PROJECT/NAME (e.g. vision/mnist), not 'vision'" in r.stderr and "ALIAS" not in r.stderr
    r = run("put", "-n", "vision/mnist:best", "-t", "dataset", str(data), repo=repo)
    assert r.exit_code == 2 and "use -a to set aliases" in r.stderr
    assert run("put", "-n", "vision/mnist", "-t", "dataset", str(data), repo=repo).exit_code == 0
    for args in (
        ["get", "vision"],
        ["show", "vision/mnist:"],
        ["verify", "a/b/c"],
        ["put", "-n", "vision/mn ist", "-t", "dataset", str(data)],
        ["alias", "add", "vision/mnist:v0", "a:b"],
        ["tag", "add", "vision/mnist:v0", "bad tag"],
        ["cleanup", "vision"],
        ["runs", "../x"],
    ):
        r = run(*args, repo=repo)
        assert r.exit_code == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and "rror:" in r.stderr, (args, r.stderr)


# --- aliases shown, verify's default folder, --root a file, runs of an unknown project ------


def _logged(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    data = tree(tmp_path / "data", {"x.txt": b"x", "sub/y.txt": b"y"})
    assert (
        run("put", "-n", "vision/mnist", "-t", "dataset", str(data), "-a", "best", repo=repo).exit_code == 0
    )
    return repo, data


def test_alias_rm_and_show_name_every_alias_the_version_holds(tmp_path: Path) -> None:
    repo, _ = _logged(tmp_path)
    assert run("alias", "rm", "vision/mnist:v0", "best", repo=repo).exit_code == 0
    r = run("alias", "rm", "vision/mnist:v0", "best", repo=repo)
    assert r.exit_code == 1 and "(its aliases: latest)" in r.stderr, r.stderr
    assert run("tag", "add", "vision/mnist:v0", "gold", repo=repo).exit_code == 0
    assert run("alias", "add", "vision/mnist:v0", "prod", repo=repo).exit_code == 0
    shown = ok_json("show", "vision/mnist:v0", repo=repo)
    assert shown["aliases"] == ["latest", "prod"] and shown["tags"] == ["gold"]
    assert json.loads(run("show", "vision/mnist:prod", repo=repo).stdout)["aliases"] == ["latest", "prod"]


def test_verify_without_root_checks_the_folder_get_writes_by_default(tmp_path: Path) -> None:
    repo, _ = _logged(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    got = ok_json("get", "vision/mnist:best", repo=repo, cwd=work)
    assert got["root"] == str(work / "artifacts" / "mnist-v0")
    r = run("verify", "vision/mnist:best", repo=repo, cwd=work)
    assert r.exit_code == 0 and "artifacts/mnist-v0 matches" in r.stdout, r.stderr
    (work / "artifacts" / "mnist-v0" / "x.txt").write_bytes(b"changed")
    assert run("verify", "vision/mnist:best", repo=repo, cwd=work).exit_code == 1
    assert run("verify", "vision/mnist:best", repo=repo, cwd=tmp_path).exit_code == 1  # nothing there


def test_get_into_a_file_says_the_root_is_a_file(tmp_path: Path) -> None:
    repo, data = _logged(tmp_path)
    for args in (["get", "vision/mnist", "--root", str(data / "x.txt")],
                 ["get", "vision/mnist", "--dry-run", "--root", str(data / "x.txt")],
                 ["verify", "vision/mnist", "--root", str(data / "x.txt")]):  # fmt: skip
        r = run(*args, repo=repo)
        assert r.exit_code == 2 and f"{data / 'x.txt'} is a file, not a folder" in r.stderr, (args, r.stderr)
    r = run("get", "vision/mnist", "--root", str(data / "x.txt" / "out"), repo=repo)
    assert r.exit_code == 1 and f"{data / 'x.txt'} is a file, not a folder" in r.stderr, r.stderr
    assert data.joinpath("x.txt").read_bytes() == b"x"


def test_runs_of_an_unknown_project_is_an_error_and_of_a_known_one_an_empty_list(tmp_path: Path) -> None:
    repo, _ = _logged(tmp_path)
    r = run("runs", "vison", repo=repo)
    assert r.exit_code == 1 and "no project 'vison' (did you mean 'vision'?)" in r.stderr, r.stderr
    r = run("runs", "vision", repo=repo)
    assert r.exit_code == 0 and r.stdout.strip() == "project 'vision' has no runs", r.stdout
    assert ok_json("runs", "vision", repo=repo) == []
