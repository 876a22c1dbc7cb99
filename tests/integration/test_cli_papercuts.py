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
    for name, pattern in [(n, n) for n in ("build", "dist", "env", "__pycache__")] + [
        ("m.egg-info", "*.egg-info")
    ]:
        assert any(f"{work / name}," in w and f"--exclude '{pattern}/'" in w for w in warned), (
            name,
            r.stderr,
        )
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


# --- wording ------------------------------------------------------------------------------


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = tree(tmp_path / "data", {"x.txt": b"x"})
    r = run("put", "-n", "p/d", "-t", "dataset", str(data / "x.txt"), repo=repo)
    assert r.exit_code == 0 and "(1 file, 1 B; 1 B new in 1 pack," in r.stdout, r.stdout
    assert "1 file  1 B" in run("versions", "p/d", repo=repo).stdout
    r = run("get", "p/d", "--root", str(tmp_path / "out"), repo=repo)
    assert r.stdout.strip().endswith("(1 file)")
    assert "1 file," in run("hash", str(data), repo=repo).stdout
    (tmp_path / "out" / "x.txt").write_bytes(b"y")
    assert run("verify", "p/d", "--root", str(tmp_path / "out"), repo=repo).stderr.strip() == "1 difference"
    r = run("get", "p/d", "--dry-run", "--root", str(tmp_path / "out"), repo=repo)
    assert r.stdout.strip().endswith("would write 1 file"), r.stdout
    for out in (r.stdout, run("verify", "p/d", "--root", str(tmp_path / "out"), repo=repo).stderr):
        assert "(s)" not in out and "1 files" not in out


def test_draft_reports_a_replacement_as_replaced(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = tree(tmp_path / "data", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    assert run("put", "-n", "p/d", "-t", "dataset", str(data), repo=repo).exit_code == 0
    new = tree(tmp_path / "new", {"a.txt": b"A", "b.txt": b"b", "d.txt": b"d"})
    args = ["draft", "p/d:v0", "--add", f"{new / 'a.txt'}=a.txt", "--add", f"{new / 'b.txt'}=b.txt",
            "--add", f"{new / 'd.txt'}=d.txt", "--remove", "c.txt"]  # fmt: skip
    r = run(*args, repo=repo)
    assert r.exit_code == 0 and "from v0 (1 added, 1 replaced, 1 removed; 3 files," in r.stdout, r.stdout
    out = ok_json(*args, repo=repo)  # the same again: the version just logged
    assert (out["added"], out["replaced"], out["removed"], out["files_added"]) == (1, 1, 1, 3)


def test_an_internal_error_with_debug_set_does_not_ask_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("odd")

    monkeypatch.setattr(command.commands["ls"], "callback", broken)
    r = run("ls", repo=tmp_path / "repo", SYNCENGINE_DEBUG="1")
    assert r.exit_code == 1 and "Traceback" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == "error: internal error: RuntimeError: odd (please report it with the traceback above)"
    r = run("ls", repo=tmp_path / "repo", SYNCENGINE_DEBUG="")
    assert r.stderr.strip().endswith("(please report; SYNCENGINE_DEBUG=1 shows the traceback)")


# --- dedup-report chunks as put does ------------------------------------------------------


def test_dedup_report_uses_and_names_the_repository_chunker(tmp_path: Path) -> None:
    import asyncio

    from syncengine.hashing.params import ChunkerParams
    from syncengine.repo.repository import Repository
    from syncengine.store import LocalStore

    data = tree(tmp_path / "ckpt", {"w.bin": bytes(range(256)) * 4096})
    fresh = tmp_path / "none"
    out = ok_json("dedup-report", str(data), repo=fresh)
    assert (out["chunker_source"], out["repo"]) == ("new repository", str(fresh))
    assert [s["chunker"] for s in out["settings"]] == ["gear-256k-1m-4m"]  # what a new repository gets
    assert not fresh.exists()  # reporting created no repository
    text = run("dedup-report", str(data), repo=fresh).stdout
    assert f"chunker gear-256k-1m-4m: a new repository's (none at {fresh} yet)" in text

    async def make(root: Path) -> None:
        async with LocalStore(str(root)) as store:
            await Repository.open(store, params=ChunkerParams(16 * 1024, 64 * 1024, 256 * 1024))

    small = tmp_path / "small"
    asyncio.run(make(small))
    out = ok_json("dedup-report", str(data), repo=small)
    assert out["chunker_source"] == "repository"
    assert [(s["chunker"], s["avg_chunk_size"]) for s in out["settings"]] == [("gear-16k-64k-256k", 65536)]
    assert "chunker gear-16k-64k-256k: the repository's" in run("dedup-report", str(data), repo=small).stdout
    out = ok_json("dedup-report", str(data), "--chunk-sizes", "256KiB,4MiB", repo=small)
    assert out["chunker_source"] == "chunk-sizes" and [s["avg_chunk_size"] for s in out["settings"]] == [
        256 * 1024,
        4 << 20,
    ]
