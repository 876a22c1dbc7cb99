"""The `syncengine` command as a user runs it: JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import blake3
import click
import pytest

from syncengine.hashing.digests import TreeDigest
from tests.children import default_sigint


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(params=["native", "python"])
def impl_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "native":
        from tests.conftest import native_module

        native_module()
        return {"SYNCENGINE_NO_EXTENSIONS": "0"}
    return {"SYNCENGINE_NO_EXTENSIONS": "1"}


def test_version_names_the_implementation(impl_env: dict[str, str]) -> None:
    r = cli("--version", env=impl_env)
    assert r.returncode == 0
    expected = "native core" if impl_env["SYNCENGINE_NO_EXTENSIONS"] == "0" else "pure-Python"
    assert expected in r.stdout and "0.1.0" in r.stdout


def test_hash_json_counts_files_and_matches_the_documented_tree_digest(
    tmp_path: Path, impl_env: dict[str, str]
) -> None:
    files = {"b.txt": b"bee", "a/1.bin": os.urandom(5000), "a/2.bin": b""}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    r = cli("hash", str(tmp_path), "--json", env=impl_env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress bar when piped
    out = json.loads(r.stdout)
    assert out["files"] == 3 and out["bytes"] == 5003
    assert out["implementation"] == ("native" if impl_env["SYNCENGINE_NO_EXTENSIONS"] == "0" else "python")
    tree = TreeDigest()
    for rel in sorted(files):
        tree.add(rel, blake3.blake3(files[rel]).digest())  # all are small files: plain BLAKE3
    assert out["tree_digest"] == tree.hexdigest()
    assert out["stat_cache"] == {"hits": 0, "misses": 3}


def test_hash_text_output(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    r = cli("hash", str(tmp_path))
    assert r.returncode == 0
    assert "1 file," in r.stdout and "tree digest" in r.stdout


def test_missing_path_is_one_line_error(tmp_path: Path) -> None:
    r = cli("hash", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_special_file_warns_and_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"ok")
    os.mkfifo(tmp_path / "pipe")
    r = cli("hash", str(tmp_path), "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["files"] == 1
    assert [s["kind"] for s in out["skipped"]] == ["special_file"]


def test_dedup_report_sees_shared_content(tmp_path: Path) -> None:
    shared = blake3.blake3(b"frozen").digest(length=3 << 20)
    for step, tail in (("s1", b"one"), ("s2", b"two")):
        d = tmp_path / step
        d.mkdir()
        (d / "model.bin").write_bytes(shared + blake3.blake3(tail).digest(length=300_000))
        (d / "config.json").write_bytes(b'{"lr": 0.1}')
    r = cli(
        "dedup-report", str(tmp_path / "s1"), str(tmp_path / "s2"), "--json", "--chunk-sizes", "64KiB,1MiB"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    total = 2 * (len(shared) + 300_000 + 11)
    assert out["total_bytes"] == total
    # whole-file dedup only finds the identical config; chunk dedup finds the frozen 3 MiB
    assert out["file_unique_bytes"] == total - 11
    fine = out["settings"][0]
    assert fine["chunk_unique_bytes"] < total - len(shared) + (1 << 20)
    assert fine["per_input"][1]["new_bytes"] < 300_000 + 2 * (256 << 10)
    text = cli("dedup-report", str(tmp_path / "s1"), str(tmp_path / "s2"))
    assert "whole-file dedup" in text.stdout and "saved" in text.stdout


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    r = cli("hash", str(tmp_path), "--avg-chunk-size", "lots")
    assert r.returncode == 2 and "not a size" in r.stderr


def test_progress_line_on_a_terminal_only(tmp_path: Path) -> None:
    import pty
    import select

    (tmp_path / "x").write_bytes(b"x")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine", "hash", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and b"1 file," in proc.stdout.read()
    assert b"hashing" in seen  # drawn on the terminal, and erased at the end (transient)
    piped = cli("hash", str(tmp_path))
    assert "hashing" not in piped.stderr and piped.stderr == ""


def test_put_get_versions_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"hello")
    (data / "sub" / "m.bin").write_bytes(os.urandom(400_000))
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    r = cli(
        "put",
        "-n",
        "proj/data",
        "-t",
        "dataset",
        "-a",
        "best",
        "-m",
        '{"rows": 2}',
        str(data),
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    v0 = json.loads(r.stdout)
    assert (v0["ref"], v0["created_now"], v0["metadata"]) == ("proj/data:v0", True, {"rows": 2})
    same = json.loads(cli("put", "-n", "proj/data", "-t", "dataset", str(data), "--json", env=env).stdout)
    assert (same["ref"], same["created_now"], same["new_bytes"]) == ("proj/data:v0", False, 0)
    (data / "b.txt").write_bytes(b"more")
    v1 = json.loads(cli("put", "-n", "proj/data", "-t", "dataset", str(data), "--json", env=env).stdout)
    assert v1["ref"] == "proj/data:v1" and v1["new_bytes"] == 4
    listing = json.loads(cli("versions", "proj/data", "--json", env=env).stdout)
    assert [(v["version"], v["aliases"]) for v in listing] == [(0, ["best"]), (1, ["latest"])]
    out = tmp_path / "out"
    g = cli("get", "proj/data:best", "--root", str(out), env=env)
    assert g.returncode == 0, g.stderr
    assert (out / "a.txt").read_bytes() == b"hello"
    assert (out / "sub" / "m.bin").read_bytes() == (data / "sub" / "m.bin").read_bytes()
    assert not (out / "b.txt").exists()
    bad = cli("get", "proj/dta", env=env)
    assert (
        bad.returncode == 1
        and bad.stderr.strip()
        == "error: project 'proj' has no artifact 'dta' (did you mean 'data'?) (it has: data)"
    )
    wrong = cli("put", "-n", "proj/data", "-t", "model", str(data), env=env)
    assert wrong.returncode == 1 and "has type 'dataset', not 'model'" in wrong.stderr


def test_ls_diff_alias_and_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_bytes(b"keep")
    (data / "gone.txt").write_bytes(b"gone")
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    assert cli("put", "-n", "p/a", "-t", "model", str(data), env=env).returncode == 0
    (data / "gone.txt").unlink()
    (data / "keep.txt").write_bytes(b"KEEP")
    (data / "new.txt").write_bytes(b"new")
    assert cli("put", "-n", "p/a", "-t", "model", str(data), env=env).returncode == 0
    assert cli("ls", env=env).stdout.split() == ["p"]
    assert json.loads(cli("ls", "p", "--json", env=env).stdout)[0]["latest"] == 1
    assert cli("diff", "p/a:v0", "p/a:v1", env=env).stdout.splitlines() == [
        "- gone.txt",
        "M keep.txt",
        "+ new.txt",
    ]
    assert cli("alias", "add", "p/a:v0", "prod", "stable", env=env).returncode == 0
    assert cli("alias", "add", "p/a:v1", "prod", env=env).returncode == 0  # moves prod
    assert cli("alias", "rm", "p/a:v0", "stable", env=env).returncode == 0
    listing = json.loads(cli("versions", "p/a", "--json", env=env).stdout)
    assert [v["aliases"] for v in listing] == [[], ["latest", "prod"]]
    bad_alias = cli("alias", "add", "p/a:v1", "a:b", env=env)
    assert bad_alias.returncode == 2 and "invalid alias" in bad_alias.stderr  # a usage error

    assert json.loads(cli("check", "--read-data", "--json", env=env).stdout) == {"ok": True, "problems": []}
    packs = sorted(p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    raw = bytearray(packs[0].read_bytes())
    raw[9] ^= 1
    packs[0].write_bytes(bytes(raw))
    assert cli("check", env=env).returncode == 0  # structure intact; only reading the data can tell
    r = cli("check", "--read-data", env=env)
    assert r.returncode == 1 and "BLAKE3 mismatch" in r.stderr and "p/a:v" in r.stderr
    packs[1].unlink()
    r = cli("check", "--json", env=env)
    assert r.returncode == 1 and "is missing" in json.loads(r.stdout)["problems"][0]


def test_verify_and_checkout_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    assert cli("put", "-n", "p/v", "-t", "t", str(data), env=env).returncode == 0
    out = tmp_path / "out"
    assert cli("get", "p/v", "--root", str(out), env=env).returncode == 0
    assert cli("verify", "p/v", "--root", str(out), env=env).returncode == 0
    (out / "extra.txt").write_bytes(b"x")
    r = cli("verify", "p/v", "--root", str(out), env=env)
    assert r.returncode == 1 and "extra: extra.txt" in r.stdout
    assert cli("get", "p/v", "--root", str(out), "--checkout", env=env).returncode == 0
    assert not (out / "extra.txt").exists()


def test_put_with_a_symlink_loop_warns_and_completes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "f.txt").write_bytes(b"f")
    (data / "sub" / "loop").symlink_to(data)
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    r = cli("put", "-n", "p/loop", "-t", "t", str(data), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 1
    assert "warning:" in r.stderr and "loop" in r.stderr


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as with `| true`
    p = subprocess.run(
        [sys.executable, "-m", "syncengine", "hash", str(tmp_path)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write_end)
    assert p.stderr == "" and p.returncode == 141


def test_tag_and_edit_after_logging(tmp_path: Path) -> None:
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    assert (
        cli("put", "-n", "p/d", "-t", "dataset", "-m", '{"a": 1, "b": 2}', str(data), env=env).returncode == 0
    )

    r = cli("tag", "add", "p/d:v0", "nightly", "gold", env=env)
    assert r.returncode == 0 and "nightly, gold" in r.stdout
    r = cli("tag", "rm", "p/d", "nightly", env=env)  # latest
    assert r.returncode == 0 and "tags: gold" in r.stdout
    r = cli("tag", "add", "p/d:v0", "bad tag", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid tag 'bad tag'" in r.stderr

    r = cli(
        "edit",
        "p/d:latest",
        "-d",
        "new words",
        "--set",
        "split=train",
        "--set",
        "n=3",
        "--unset",
        "a",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(cli("show", "p/d:v0", env=env).stdout)
    assert shown["description"] == "new words"
    assert shown["metadata"] == {"b": 2, "n": 3, "split": "train"}
    assert shown["tags"] == ["gold"]
    r = cli("edit", "p/d", "-m", '{"only": true}', env=env)
    assert r.returncode == 0
    assert json.loads(cli("show", "p/d", env=env).stdout)["metadata"] == {"only": True}
    assert cli("edit", "p/d", env=env).returncode == 2  # nothing to change: usage error
    assert cli("edit", "p/d", "-m", "[1]", env=env).returncode == 2


def test_put_on_a_terminal_counts_ahead_for_a_bar_with_totals(tmp_path: Path) -> None:
    import pty
    import select

    env = {**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo"), "COLUMNS": "160", "TERM": "xterm"}
    data = tmp_path / "data"
    for i in range(3000):
        p = data / f"d{i % 30}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(20_000))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine", "put", "-n", "p/d", "-t", "dataset", str(data)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    assert proc.stdout is not None and b"3000 files" in proc.stdout.read()
    assert b"logging" in seen and b"/3000 files" in seen  # the total the walk ahead found


def test_get_draws_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import pty
    import select

    env = {**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo"), "COLUMNS": "120", "TERM": "xterm"}
    data = tmp_path / "data"
    data.mkdir()
    for i in range(30):
        (data / f"f{i}.bin").write_bytes(os.urandom(70_000))
    assert cli("put", "-n", "p/d", "-t", "dataset", str(data), env=env).returncode == 0
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine", "get", "p/d", "--root", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and b"(30 files)" in proc.stdout.read()
    assert b"getting" in seen and b"/30 files" in seen
    piped = cli("get", "p/d", "--root", str(tmp_path / "out2"), env=env)
    assert piped.returncode == 0 and piped.stderr == ""


def test_ctrl_c_during_put_stops_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "SYNCENGINE_REPO": str(tmp_path / "repo")}
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"big{i}.bin").write_bytes(blake3.blake3(str(i).encode()).digest(length=48 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine", "put", "-n", "p/d", "-t", "dataset", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    packs = tmp_path / "repo" / "data"
    while time.monotonic() < deadline and proc.poll() is None:
        if packs.exists() and any(p.is_file() for p in packs.rglob("*")):
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the put finished before the interrupt landed")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    assert not (tmp_path / "repo" / "artifacts").exists() or not list(
        (tmp_path / "repo" / "artifacts").rglob("v0")
    )
    r = cli("put", "-n", "p/d", "-t", "dataset", str(data), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ref"] == "p/d:v0"
    assert cli("check", "--read-data", env=env).returncode == 0


def test_abort_uploads_respects_the_grace_period(tmp_path: Path) -> None:
    import asyncio

    from syncengine.store.local import LocalStore

    repo = tmp_path / "repo"
    env = {"SYNCENGINE_REPO": str(repo)}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_text("a")
    assert cli("put", "-n", "p/d", "-t", "dataset", str(data), env=env).returncode == 0

    async def start() -> str:
        async with LocalStore(repo) as store:
            return await store.create_multipart("data/zz/left-behind")

    asyncio.run(start())
    r = cli("abort-uploads", "--older-than", "1h", env=env)
    assert r.returncode == 0 and "aborted 0 uploads" in r.stdout  # too young
    r = cli("abort-uploads", "--older-than", "0s", "--dry-run", "--json", env=env)
    assert r.returncode == 0
    listed = json.loads(r.stdout)
    assert listed["dry_run"] and [u["key"] for u in listed["uploads"]] == ["data/zz/left-behind"]
    r = cli("abort-uploads", "--older-than", "0", env=env)
    assert r.returncode == 0 and "aborted 1 upload older" in r.stdout

    async def left() -> int:
        async with LocalStore(repo) as store:
            return len(await store.list_multipart_uploads())

    assert asyncio.run(left()) == 0
    assert cli("abort-uploads", "--older-than", "soon", env=env).returncode == 2


def test_a_damaged_record_is_one_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {"SYNCENGINE_REPO": str(repo)}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_text("a")
    assert cli("put", "-n", "p/d", "-t", "dataset", str(data), env=env).returncode == 0
    (repo / "artifacts" / "p" / "d" / "versions" / "v0").write_bytes(b'{"format": 1, "proj\xff')
    r = cli("show", "p/d:v0", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "artifacts/p/d/versions/v0 is damaged" in r.stderr
    (repo / "artifacts" / "p" / "d" / "head").write_bytes(b"[]")
    r = cli("versions", "p/d", env=env)
    assert r.returncode == 1 and "artifacts/p/d/head is damaged" in r.stderr and "Traceback" not in r.stderr


def _get_in(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", "get", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=300,
    )


def test_get_without_root_writes_the_documented_default_not_the_working_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    data = work / "data"  # the user's working folder, named like the artifact
    data.mkdir(parents=True)
    (data / "a.txt").write_bytes(b"v0 content")
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    assert cli("put", "-n", "proj/data", "-t", "dataset", str(data), env=env).returncode == 0
    (data / "a.txt").write_bytes(b"edited, not logged yet")
    (data / "notes.txt").write_bytes(b"mine")

    r = _get_in(work, "proj/data", env=env)
    assert r.returncode == 0, r.stderr
    out = work / "artifacts" / "data-v0"  # as the API's default (syncengine.repo.download.default_root)
    assert r.stdout.strip() == f"proj/data:v0 -> {out} (1 file)"
    assert (out / "a.txt").read_bytes() == b"v0 content"
    assert (data / "a.txt").read_bytes() == b"edited, not logged yet" and (data / "notes.txt").exists()
    got = json.loads(_get_in(work, "proj/data:v0", "--checkout", "--json", env=env).stdout)
    assert got["root"] == str(out) and got["written"] == 0
    assert sorted(p.name for p in data.iterdir()) == ["a.txt", "notes.txt"]  # checkout did not go there
    assert "./artifacts/<name>-v<N>" in cli("get", "--help").stdout


def test_get_uses_the_file_cache_unless_skipped_and_links_as_asked(tmp_path: Path) -> None:
    import stat

    from syncengine.repo.file_cache import FileCache

    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(200_000))  # above the cache's 64 KiB minimum
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    assert cli("put", "-n", "p/c", "-t", "dataset", str(data), env=env).returncode == 0
    skipped = cli("get", "p/c", "--root", str(tmp_path / "s"), "--skip-cache", env=env)
    assert skipped.returncode == 0, skipped.stderr
    with FileCache() as c:  # the fixture's SYNCENGINE_CACHE_DIR, inherited by the command
        assert len(c) == 0
    fast = cli("get", "p/c", "--root", str(tmp_path / "n"), "--no-fsync", env=env)
    assert fast.returncode == 0, fast.stderr
    assert (tmp_path / "n" / "big.bin").read_bytes() == (data / "big.bin").read_bytes()
    with FileCache() as c:  # a file not flushed is not a cache entry
        assert len(c) == 0
    assert cli("get", "p/c", "--root", str(tmp_path / "a"), env=env).returncode == 0
    with FileCache() as c:
        assert len(c) == 1

    for p in (tmp_path / "repo" / "data").rglob("*"):
        if p.is_file():
            p.unlink()  # only the cache can supply the file now
    ok = cli("get", "p/c", "--root", str(tmp_path / "b"), "--link", "hardlink", env=env)
    assert ok.returncode == 0, ok.stderr
    st = (tmp_path / "b" / "big.bin").stat()
    assert st.st_nlink == 2 and stat.S_IMODE(st.st_mode) == 0o444  # b/ and the cache's own copy
    assert (tmp_path / "a" / "big.bin").stat().st_nlink == 1  # never linked to a/'s writable file
    assert (tmp_path / "b" / "big.bin").read_bytes() == (data / "big.bin").read_bytes()
    fast = cli("get", "p/c", "--root", str(tmp_path / "f"), "--no-fsync", env=env)
    assert fast.returncode == 0, fast.stderr  # served by the cache as well
    assert (tmp_path / "f" / "big.bin").read_bytes() == (data / "big.bin").read_bytes()
    copied = cli("get", "p/c", "--root", str(tmp_path / "c"), "--link", "copy", env=env)
    assert copied.returncode == 0 and (tmp_path / "c" / "big.bin").stat().st_nlink == 1
    bad = cli("get", "p/c", "--root", str(tmp_path / "d"), "--skip-cache", env=env)
    assert bad.returncode == 1 and "big.bin" in bad.stderr and bad.stderr.count("\n") == 1
    assert cli("get", "p/c", "--link", "symlink", env=env).returncode == 2


def test_show_verify_alias_and_tag_print_one_json_object(tmp_path: Path) -> None:
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")
    assert cli("put", "-n", "p/j", "-t", "dataset", "-m", '{"k": 1}', str(data), env=env).returncode == 0

    r = cli("show", "p/j:v0", "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout.splitlines()) == 1  # one line: the record
    shown = json.loads(r.stdout)
    assert (shown["ref"], shown["metadata"]) == ("p/j:v0", {"k": 1})
    assert json.loads(cli("show", "p/j:v0", env=env).stdout) == shown  # the default: the same, indented

    r = cli("verify", "p/j", "--root", str(data), "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout) == {"ref": "p/j:v0", "root": str(data), "ok": True, "differences": []}
    (data / "extra.txt").write_bytes(b"x")
    (data / "a.txt").write_bytes(b"A")
    r = cli("verify", "p/j", "--root", str(data), "--json", env=env)
    assert r.returncode == 1 and r.stderr == ""  # differences: still exit status 1
    out = json.loads(r.stdout)
    assert out["ok"] is False
    assert [(d["path"], d["kind"]) for d in out["differences"]] == [
        ("a.txt", "changed"),
        ("extra.txt", "extra"),
    ]
    assert all(d["detail"] for d in out["differences"])

    r = cli("alias", "add", "p/j:v0", "prod", "stable", "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout) == {
        "ref": "p/j:v0",
        "action": "add",
        "names": ["prod", "stable"],
        "aliases": ["latest", "prod", "stable"],
        "dry_run": False,
    }
    r = cli("alias", "rm", "p/j:v0", "stable", "--json", env=env)
    assert r.returncode == 0
    assert json.loads(r.stdout) == {
        "ref": "p/j:v0",
        "action": "remove",
        "names": ["stable"],
        "aliases": ["latest", "prod"],
        "dry_run": False,
    }

    r = cli("tag", "add", "p/j:prod", "gold", "nightly", "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    tagged = json.loads(r.stdout)
    assert (tagged["ref"], tagged["tags"], tagged["metadata"]) == ("p/j:v0", ["gold", "nightly"], {"k": 1})
    r = cli("tag", "rm", "p/j:v0", "gold", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["tags"] == ["nightly"]


def test_the_default_repository_is_named_on_stderr_by_every_command_that_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncengine.cli.repo_commands import default_repo

    monkeypatch.delenv("SYNCENGINE_REPO", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # platformdirs' user data dir
    default = default_repo()
    assert default.startswith(str(tmp_path / "xdg"))
    note = f"repository: {default} (the default; --repo or SYNCENGINE_REPO selects another)"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")

    def named_once(r: subprocess.CompletedProcess[str], code: int = 0) -> str:
        assert r.returncode == code, r.stderr
        assert r.stderr.splitlines() == [note]  # once, on stderr, even where two steps open it
        return r.stdout

    put = json.loads(named_once(cli("put", "-n", "p/d", "-t", "t", str(data), "--json")))
    assert put["repo"] == default and os.path.isdir(default)
    text = named_once(cli("put", "-n", "p/d", "-t", "t", str(data)))  # the no-change path
    assert f"repository: {default}" in text  # put's report names the repository it used anyway
    for args in (
        ["ls", "--json"],
        ["ls", "p", "--json"],
        ["versions", "p/d", "--json"],
        ["show", "p/d", "--json"],
        ["diff", "p/d:v0", "p/d:v0", "--json"],
        ["alias", "add", "p/d:v0", "best", "--json"],
        ["tag", "add", "p/d:v0", "nice", "--json"],
        ["edit", "p/d", "-d", "words", "--json"],
        ["get", "p/d", "--root", str(tmp_path / "out"), "--json"],
        ["verify", "p/d", "--root", str(tmp_path / "out"), "--json"],
        ["check", "--json"],
        ["abort-uploads", "--json"],
    ):
        json.loads(named_once(cli(*args)))  # stdout stays one JSON document
    (tmp_path / "out" / "more.txt").write_bytes(b"more")
    named_once(cli("verify", "p/d", "--root", str(tmp_path / "out"), "--json"), code=1)
    missing = cli("show", "p/nope")  # a failure still says where it looked
    assert missing.returncode == 1 and missing.stderr.splitlines()[0] == note
    assert missing.stderr.splitlines()[1].startswith("error: ")

    # named explicitly: nothing is added
    for explicit, env in (([], {"SYNCENGINE_REPO": default}), (["--repo", default], {})):
        r = cli("show", "p/d", "--json", *explicit, env=env)
        assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["ref"] == "p/d:v0"
    assert cli("hash", str(data)).stderr == ""  # no repository, no note


@pytest.mark.parametrize(
    "metadata",
    ['{"a": 1e999}', '{"a": [-1e400]}', '{"a": NaN}', '{"a": Infinity}', "[1]", '"text"', "null", "{bad"],
)
def test_put_refuses_metadata_it_cannot_store_in_one_line(tmp_path: Path, metadata: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")
    r = cli("put", "-n", "p/m", "-t", "t", "-m", metadata, str(data), "--repo", str(tmp_path / "repo"))
    assert r.returncode == 2, r.stderr  # a usage error
    assert r.stderr.startswith("error: -m: ") and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == "" and not (tmp_path / "repo").exists()  # refused before anything was written


def test_edit_refuses_non_finite_and_non_object_metadata(tmp_path: Path) -> None:
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")
    assert cli("put", "-n", "p/m", "-t", "t", "-m", '{"a": 1}', str(data), env=env).returncode == 0
    for args, hint in (
        (["--set", "a=1e999"], "--set a: 1e999 is not a finite number"),
        (["--set", "b=[1, NaN]"], "--set b: NaN is not a finite number"),
        (["--set", "c=-Infinity"], "--set c: -Infinity is not a finite number"),
        (["-m", '{"a": 1e309}'], "-m: 1e309 is not a finite number"),
        (["-m", "[1]"], "-m: metadata must be a JSON object"),
        (["--set", "novalue"], "expected KEY=JSON"),
    ):
        r = cli("edit", "p/m", *args, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and hint in r.stderr, (args, r.stderr)
    assert json.loads(cli("show", "p/m", env=env).stdout)["metadata"] == {"a": 1}  # unchanged
    r = cli("edit", "p/m", "--set", "s=nan", "--set", "x=1.5e300", "--json", env=env)  # a bare word: a string
    assert r.returncode == 0 and json.loads(r.stdout)["metadata"] == {"a": 1, "s": "nan", "x": 1.5e300}


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from syncengine.cli.main import cli as command

    def broken(**_: object) -> None:
        raise RuntimeError("the index\nis odd")

    monkeypatch.setattr(command.commands["ls"], "callback", broken)
    tag_group = command.commands["tag"]
    assert isinstance(tag_group, click.Group)
    monkeypatch.setattr(tag_group.commands["add"], "callback", lambda **_: {}["missing"])
    expected = {
        "ls": "RuntimeError: the index is odd",
        "tag": "KeyError: 'missing'",  # from a subcommand of a group too
    }
    repo = ["--repo", str(tmp_path / "repo")]
    for args in (["ls", *repo], ["tag", "add", "p/d", "x", *repo]):
        monkeypatch.delenv("SYNCENGINE_DEBUG", raising=False)
        r = CliRunner().invoke(command, args)
        assert r.exit_code == 1
        assert r.stderr == (
            f"error: internal error: {expected[args[0]]} "
            "(please report; SYNCENGINE_DEBUG=1 shows the traceback)\n"
        )
        assert r.stdout == ""
        monkeypatch.setenv("SYNCENGINE_DEBUG", "1")
        r = CliRunner().invoke(command, args)
        assert r.exit_code == 1
        lines = r.stderr.splitlines()
        assert lines[0] == "Traceback (most recent call last):" and "test_cli.py" in r.stderr
        assert lines[-1].startswith(f"error: internal error: {expected[args[0]]} ")
    monkeypatch.setenv("SYNCENGINE_DEBUG", "0")
    assert "Traceback" not in CliRunner().invoke(command, ["ls", *repo]).stderr
    assert CliRunner().invoke(command, ["show"]).exit_code == 2  # usage errors keep click's exit status


def test_put_names_downloads_it_is_about_to_log_and_exclude_leaves_them_out(tmp_path: Path) -> None:
    """`get` without --root writes ./artifacts/<name>-v<N>: a later `put .` there is warned."""
    env = {"SYNCENGINE_REPO": str(tmp_path / "repo")}
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.csv").write_bytes(b"a,b\n")
    first = cli("put", "-n", "p/d", "-t", "dataset", str(work), env=env)
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    got = subprocess.run(
        [sys.executable, "-m", "syncengine", "get", "p/d"], cwd=work, env={**os.environ, **env},
        capture_output=True, text=True,
    )  # fmt: skip
    assert got.returncode == 0 and (work / "artifacts" / "d-v0" / "train.csv").exists(), got.stderr
    again = cli("put", "-n", "p/d", "-t", "dataset", str(work), env=env)
    assert again.returncode == 0
    assert (
        "warning: logged" in again.stderr
        and "d-v0" in again.stderr
        and "--exclude 'artifacts/'" in again.stderr
    )
    left_out = cli(
        "put", "-n", "p/d", "-t", "dataset", str(work), "--exclude", "artifacts/", "--json", env=env
    )
    assert left_out.returncode == 0 and "warning" not in left_out.stderr, left_out.stderr
    assert json.loads(left_out.stdout)["files"] == 1  # the download was not logged
