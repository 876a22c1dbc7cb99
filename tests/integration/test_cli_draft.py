"""`syncengine draft` as a user runs it: a new version from an old one plus --add/--remove."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli import cli


def ok(r: object) -> dict[str, object]:
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    out: dict[str, object] = json.loads(getattr(r, "stdout", ""))
    return out


def test_draft_command(tmp_path: Path) -> None:
    repo = ["--repo", str(tmp_path / "repo")]
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"a")
    (data / "sub" / "c.txt").write_bytes(b"c")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "n.txt").write_bytes(b"n")
    (tmp_path / "a=2.txt").write_bytes(b"A2")  # '=' in a path still works
    ok(cli("put", str(data), "-n", "p/ds", "-t", "dataset", "-m", '{"k": 1}', "-d", "base", "--json", *repo))

    out = ok(
        cli(
            "draft",
            "p/ds:v0",
            "--add",
            f"{tmp_path / 'new'}=extra",
            "--add",
            f"{tmp_path / 'a=2.txt'}=a.txt",
            "--remove",
            "sub",
            "--set",
            "x=2",
            "-a",
            "best",
            "--json",
            *repo,
        )
    )
    assert (out["ref"], out["base"], out["created_now"], out["files"]) == ("p/ds:v1", "p/ds:v0", True, 2)
    assert out["metadata"] == {"k": 1, "x": 2} and out["description"] == "base"
    assert out["files_added"] == 2 and out["new_bytes"] == 3
    ok(cli("get", "p/ds:best", "--root", str(tmp_path / "out"), "--json", *repo))
    got = {
        p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*.txt")
    }
    assert got == {"a.txt": b"A2", "extra/n.txt": b"n"}

    # the same change again: the existing version
    again = ok(cli("draft", "p/ds:v0", "--remove", "sub", "--add", f"{tmp_path / 'new'}=extra", "--add",
                   f"{tmp_path / 'a=2.txt'}=a.txt", "--json", *repo))  # fmt: skip
    assert (again["ref"], again["created_now"]) == ("p/ds:v1", False)

    r = cli("draft", "p/ds", "--remove", "nope", *repo)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: the draft of p/ds")
    assert "'nope'" in r.stderr
    r = cli("draft", "p/ds", *repo)
    assert r.returncode == 2 and "nothing to change" in r.stderr
    r = cli("draft", "p/ds", "--add", str(tmp_path / "missing"), *repo)
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    r = cli("draft", "p/ds:v0", "--remove", "sub", *repo)
    assert r.returncode == 0 and "logged p/ds:v2 from v0" in r.stdout


def test_draft_command_refuses_a_file_where_the_base_has_a_folder(tmp_path: Path) -> None:
    repo = ["--repo", str(tmp_path / "repo")]
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "c.txt").write_bytes(b"c")
    (tmp_path / "f").write_bytes(b"f")
    ok(cli("put", str(data), "-n", "p/ds", "-t", "dataset", "--json", *repo))
    r = cli("draft", "p/ds", "--add", f"{tmp_path / 'f'}=sub", *repo)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: the draft of p/ds (from v0) was not logged: 'sub' would be both a file and a folder "
        "(with 'sub/c.txt' under it); remove 'sub' in the draft first, or add under another name"
    )
    out = ok(cli("draft", "p/ds", "--remove", "sub", "--add", f"{tmp_path / 'f'}=sub", "--json", *repo))
    assert (out["version"], out["files"]) == (1, 1)
