"""Text from a shared repository never drives the terminal (issue 15 item 11): paths, record
fields, metadata keys, run fields and reference URIs holding ESC sequences, bidi overrides or
newlines reach every human-readable command's output escaped (``terminal_text``); `--json`
output stays exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

import syncengine as se
from syncengine.repo.records import decode_version, encode_record, version_key
from syncengine.repo.runs import decode_run, encode_run, run_key
from syncengine.terminal_text import shown, terminal_safe

from .test_hostile_repository import cli

#: Any C0/C1 control but the newline ending each line, DEL, and the bidi characters.
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

ESC = "\x1b]0;owned\x07\x1b[2J"
NAMES = [f"red{ESC}.txt", "rtl\u202etxt.exe", "new\nline", "back\\slash", "c1\x85\x9b31m"]


def _no_raw_controls(out: str) -> None:
    found = _RAW.findall(out)
    assert not found, f"raw control characters reached the terminal: {found!r} in {out!r}"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A repository whose v0 holds hostile paths, description, metadata key, created time and
    a reference URI, logged by a run whose fields hold ESC sequences; v1 drops two files."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(NAMES):
        (src / name).write_bytes(b"x" * i)
    repo_dir = tmp_path / "repo"
    with se.Repository.open(str(repo_dir)) as repo, repo.run(project="p", id="r1") as run:
        art = se.Artifact("d", type="dataset", description=f"desc{ESC}", metadata={f"k{ESC}": 1})
        art.add_dir(str(src))
        art.add_reference(f"file://{src / NAMES[0]}", name=f"ref{ESC}")
        run.log_artifact(art)
    # A crafted record: the writer's own encoder, a `created` no writer would store.
    key = version_key("p", "d", 0)
    record = decode_version((repo_dir / key).read_bytes(), key)
    (repo_dir / key).write_bytes(encode_record(msgspec.structs.replace(record, created=f"2026{ESC}")))
    rkey = run_key("p", "r1")
    run_record = decode_run((repo_dir / rkey).read_bytes(), rkey)
    crafted = msgspec.structs.replace(run_record, job_type=f"train{ESC}", group=f"g\u202e{ESC}", state=ESC)
    (repo_dir / rkey).write_bytes(encode_run(crafted))
    for name in NAMES[:2]:
        (src / name).unlink()
    rc, _, err, _ = cli("put", str(src), "-n", "p/d", "-t", "dataset", "--repo", str(repo_dir), cwd=tmp_path)
    assert rc == 0, err
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ("show", "p/d:v0", "--files"),
        ("diff", "p/d:v0", "p/d:v1"),
        ("verify", "p/d:v0", "--root", "src"),
        ("get", "p/d:v0", "--root", "src", "--dry-run", "--checkout"),
        ("ls", "p"),
        ("versions", "p/d"),
        ("lineage", "p/d:v0"),
        ("runs", "p"),
        ("edit", "p/d:v0", "--unset", f"k{ESC}", "--dry-run"),
        ("check",),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else str(a),
)
def test_no_raw_control_character_reaches_the_terminal(hostile: Path, args: tuple[str, ...]) -> None:
    rc, out, err, _ = cli(*args, "--repo", str(hostile / "repo"), cwd=hostile)
    assert rc in (0, 1), err
    _no_raw_controls(out)
    _no_raw_controls(err)


def test_paths_are_shown_escaped_one_line_each(hostile: Path) -> None:
    rc, out, err, _ = cli("show", "p/d:v0", "--files", "--repo", str(hostile / "repo"), cwd=hostile)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == len(NAMES) + 1  # a newline in a path forges no line
    shown_paths = {line.split("  ")[0] for line in lines}
    assert {shown(n) for n in NAMES} <= shown_paths
    assert "new\\nline" in shown_paths and "back\\\\slash" in shown_paths
    assert "red\\x1b]0;owned\\x07\\x1b[2J.txt" in shown_paths


def test_json_output_stays_exact(hostile: Path) -> None:
    rc, out, err, _ = cli("show", "p/d:v0", "--files", "--json", "--repo", str(hostile / "repo"), cwd=hostile)
    assert rc == 0, err
    _no_raw_controls(out)
    assert {f["path"] for f in json.loads(out)["files"]} == {*NAMES, f"ref{ESC}"}


def test_the_rule() -> None:
    text = "a\x1b[0m\\b\u202e\u2066\t\n\r\x7f\x85"
    assert shown(text) == "a\\x1b[0m\\\\b\\u202e\\u2066\\t\\n\\r\\x7f\\u0085"
    assert shown("é日本😀 plain/path.txt") == "é日本😀 plain/path.txt"
    assert shown(b"bad\xff".decode("utf-8", "surrogateescape")) == "bad\\xff"  # a byte, not U+00FF
    assert terminal_safe("line 1\nline\\2\x1b") == "line 1\nline\\2\\x1b"
    for text in ("x\x1by", "a\\b", "\u202e"):
        assert terminal_safe(shown(text)) == shown(text)
