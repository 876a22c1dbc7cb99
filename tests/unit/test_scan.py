"""Tests for syncengine.scan: order, globs, symlink policy and skipped-file warnings."""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.errors import ConfigError
from syncengine.scan import ScanEntry, ScanWarning, ScanWarningKind, scan


def make(root: Path, *paths: str) -> None:
    """Create files (content = their path) and, for paths ending in '/', empty dirs."""
    for p in paths:
        target = root / p
        if p.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(p)


def run(root: Path | str, **kwargs: object) -> tuple[list[str], list[ScanWarning]]:
    warnings: list[ScanWarning] = []
    entries = list(scan(root, on_warning=warnings.append, **kwargs))  # type: ignore[arg-type]
    return [e.path for e in entries], warnings


def utf8_sorted(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: p.encode("utf-8"))


# --- order -------------------------------------------------------------------------


def test_order_is_full_path_byte_order_not_per_directory_name_order(tmp_path: Path) -> None:
    # Sorting names per directory would put 'a' (a dir) before 'a-b'; full paths put
    # 'a-b' first because '-' (0x2d) < '/' (0x2f).
    make(tmp_path, "a/x", "a-b", "a.c", "a0", "b/c/d", "b/c-d", "b/c/e/f", "Z", "é", "a/y/z")
    paths, warnings = run(tmp_path)
    assert paths == ["Z", "a-b", "a.c", "a/x", "a/y/z", "a0", "b/c-d", "b/c/d", "b/c/e/f", "é"]
    assert paths == utf8_sorted(paths)
    assert warnings == []


def test_empty_directories_yield_nothing(tmp_path: Path) -> None:
    make(tmp_path, "empty/", "deep/er/", "f")
    assert run(tmp_path)[0] == ["f"]


_name_chars = st.sampled_from(
    ["a", "b", "A", "-", ".", "_", "0", " ", "~", "é", "ÿ", "Ā", "日", "\uffff", "😀"]
)
_names = st.text(_name_chars, min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
_trees = st.lists(st.lists(_names, min_size=1, max_size=4).map(tuple), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees)
def test_any_tree_comes_out_sorted_by_utf8_bytes(raw: list[tuple[str, ...]]) -> None:
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for parts in raw:  # keep paths that don't need a name to be both a file and a dir
        ancestors = {parts[:i] for i in range(1, len(parts))}
        if parts in dirs or parts in files or ancestors & files:
            continue
        files.add(parts)
        dirs |= ancestors
    with tempfile.TemporaryDirectory() as tmp:
        make(Path(tmp), *("/".join(p) for p in files))
        paths, warnings = run(tmp)
    assert paths == utf8_sorted(["/".join(p) for p in files])
    assert warnings == []


# --- roots and prefixes ------------------------------------------------------------


def test_prefix_is_prepended_to_every_path(tmp_path: Path) -> None:
    make(tmp_path, "a/x", "a-b")
    assert run(tmp_path, prefix="data/train")[0] == ["data/train/a-b", "data/train/a/x"]
    assert run(tmp_path, prefix="data/")[0] == ["data/a-b", "data/a/x"]


@pytest.mark.parametrize("prefix", ["/abs", "../up", "a/../b", "a//b", "./a", "/", "bad\udcff"])
def test_bad_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        scan(tmp_path, prefix=prefix)


def test_single_file_root_yields_one_entry_named_by_basename_or_prefix(tmp_path: Path) -> None:
    make(tmp_path, "sub/model.pt")
    f = tmp_path / "sub" / "model.pt"
    (entry,) = scan(f)
    assert entry.path == "model.pt"
    assert entry.abspath == str(f)
    assert entry.size == len("sub/model.pt")
    assert [e.path for e in scan(f, prefix="ckpt/latest.pt")] == ["ckpt/latest.pt"]


def test_missing_root_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope") as info:
        scan(missing)  # raised at call time, not on first next()
    assert info.value.filename == str(missing)


def test_relative_root_gives_absolute_abspaths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "d/f")
    monkeypatch.chdir(tmp_path)
    (entry,) = scan("d")
    assert entry.path == "f"
    assert entry.abspath == str(tmp_path / "d" / "f")


def test_stat_fields_match_os_stat(tmp_path: Path) -> None:
    make(tmp_path, "a/b.bin")
    (tmp_path / "a" / "b.bin").write_bytes(b"\0" * 12345)
    os.chmod(tmp_path / "a" / "b.bin", 0o751)
    (entry,) = scan(tmp_path)
    st_ = os.stat(entry.abspath)
    assert entry == ScanEntry(
        "a/b.bin",
        str(tmp_path / "a" / "b.bin"),
        12345,
        st_.st_mode,
        st_.st_mtime_ns,
        st_.st_ctime_ns,
        st_.st_ino,
        st_.st_dev,
    )
    assert entry.mode & 0o777 == 0o751


# --- include / exclude -------------------------------------------------------------

TREE = (
    "README.md",
    "a.tmp",
    "src/main.py",
    "src/util.py",
    "src/x.tmp",
    "src/deep/mod.py",
    "logs/run.txt",
    "logs/old/run.txt",
    "sub/logs/run.txt",
    "node_modules/pkg/index.js",
    "data/train/a.csv",
    "data/train/b.json",
    "data/test/deep/c.csv",
    "build",
    "out/build/obj.o",
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # basename pattern: any depth
        ({"exclude": ["*.tmp"]}, set(TREE) - {"a.tmp", "src/x.tmp"}),
        # anchored pattern: only at the root, and '*' does not cross '/'
        ({"exclude": ["logs/*.txt"]}, set(TREE) - {"logs/run.txt"}),
        ({"exclude": ["/README.md"]}, set(TREE) - {"README.md"}),
        # '**' crosses directories
        ({"exclude": ["logs/**"]}, set(TREE) - {"logs/run.txt", "logs/old/run.txt"}),
        ({"exclude": ["**/logs/*.txt"]}, set(TREE) - {"logs/run.txt", "sub/logs/run.txt"}),
        ({"exclude": ["data/**/*.csv"]}, set(TREE) - {"data/train/a.csv", "data/test/deep/c.csv"}),
        # a directory-name pattern prunes the whole directory
        ({"exclude": ["node_modules"]}, set(TREE) - {"node_modules/pkg/index.js"}),
        # trailing '/' matches directories only: the file 'build' stays
        ({"exclude": ["build/"]}, set(TREE) - {"out/build/obj.o"}),
        # '?' is one character other than '/'; classes work
        (
            {"exclude": ["?.tmp", "src/[mu]*.py"]},
            set(TREE) - {"a.tmp", "src/x.tmp", "src/main.py", "src/util.py"},
        ),
        ({"exclude": ["src?main.py", "src*util.py", "[!a].tmp"]}, set(TREE) - {"src/x.tmp"}),
        ({"include": ["*.py"]}, {"src/main.py", "src/util.py", "src/deep/mod.py"}),
        ({"include": ["src/*.py"]}, {"src/main.py", "src/util.py"}),
        ({"include": ["*.csv", "README.md"]}, {"README.md", "data/train/a.csv", "data/test/deep/c.csv"}),
        # an include matching a directory selects everything inside it
        ({"include": ["data/train"]}, {"data/train/a.csv", "data/train/b.json"}),
        ({"include": ["logs/"]}, {"logs/run.txt", "logs/old/run.txt", "sub/logs/run.txt"}),
        # exclude wins over include, also inside an included directory
        ({"include": ["src"], "exclude": ["*.tmp", "deep"]}, {"src/main.py", "src/util.py"}),
        ({"include": ["*.py"], "exclude": ["src/main.py"]}, {"src/util.py", "src/deep/mod.py"}),
        ({"include": ["nothing-matches"]}, set()),
    ],
)
def test_include_exclude_globs(tmp_path: Path, kwargs: dict[str, list[str]], expected: set[str]) -> None:
    make(tmp_path, *TREE)
    paths, warnings = run(tmp_path, **kwargs)
    assert paths == utf8_sorted(list(expected))
    assert warnings == []


def test_patterns_match_the_path_without_the_prefix(tmp_path: Path) -> None:
    make(tmp_path, "logs/a.txt", "b.txt")
    assert run(tmp_path, prefix="logs", exclude=["logs/*"])[0] == ["logs/b.txt"]


def test_excluded_directory_is_never_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "keep/a", "node_modules/x/y/z", "sub/node_modules/q")
    listed: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: str) -> Iterator[os.DirEntry[str]]:
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert run(tmp_path, exclude=["node_modules"])[0] == ["keep/a"]
    assert sorted(listed) == [".", "keep", "sub"]


def test_patterns_apply_to_a_single_file_root_by_basename(tmp_path: Path) -> None:
    make(tmp_path, "x.tmp")
    assert run(tmp_path / "x.tmp", exclude=["*.tmp"])[0] == []
    assert run(tmp_path / "x.tmp", include=["*.py"])[0] == []
    assert run(tmp_path / "x.tmp", include=["x.*"])[0] == ["x.tmp"]


@pytest.mark.parametrize("pattern", ["", "!keep.txt", "./a", "a/../b", "a//b", "/", "[z-a]"])
def test_bad_patterns_are_refused_at_call_time(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        scan(tmp_path, exclude=[pattern])


def test_a_bare_string_is_not_taken_as_a_list_of_one_letter_patterns(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sequence of patterns"):
        scan(tmp_path, include="*.py")


def test_escaped_glob_characters_match_literally(tmp_path: Path) -> None:
    make(tmp_path, "a*b", "axb", "[x]", "x", "!bang")
    assert run(tmp_path, exclude=["a\\*b", "\\[x]", "\\!bang"])[0] == ["axb", "x"]


# --- symlinks ----------------------------------------------------------------------


def test_symlink_to_file_yields_target_content_under_link_path(tmp_path: Path) -> None:
    make(tmp_path, "real.bin")
    (tmp_path / "link.bin").symlink_to("real.bin")
    by_path = {e.path: e for e in scan(tmp_path)}
    assert sorted(by_path) == ["link.bin", "real.bin"]
    assert by_path["link.bin"].ino == by_path["real.bin"].ino
    assert by_path["link.bin"].size == len("real.bin")
    assert by_path["link.bin"].abspath == str(tmp_path / "link.bin")


def test_symlink_to_directory_is_walked_and_sorted_as_a_directory(tmp_path: Path) -> None:
    make(tmp_path, "real/x", "real/y/z")
    (tmp_path / "ln").symlink_to("real")
    make(tmp_path, "ln-b")  # 'ln-b' < 'ln/x' only if 'ln' sorts as a directory
    paths, warnings = run(tmp_path)
    assert paths == ["ln-b", "ln/x", "ln/y/z", "real/x", "real/y/z"]
    assert warnings == []


def test_self_loop_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "d/f")
    (tmp_path / "d" / "self").symlink_to(".")
    paths, warnings = run(tmp_path)
    assert paths == ["d/f"]
    assert [(w.kind, w.path) for w in warnings] == [
        (ScanWarningKind.SYMLINK_LOOP, str(tmp_path / "d" / "self"))
    ]
    assert "skipped" in warnings[0].message


def test_link_to_parent_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "a/f", "top")
    (tmp_path / "a" / "b").symlink_to("..")
    (tmp_path / "a" / "c").symlink_to("../..")  # outside the root: walked until it reaches the root
    paths, warnings = run(tmp_path, include=["top", "a/*"], follow_symlinks=True)
    assert "a/f" in paths
    assert not any(p.startswith("a/b/") for p in paths)
    assert paths == utf8_sorted(paths)
    loops = [w for w in warnings if w.kind is ScanWarningKind.SYMLINK_LOOP]
    assert str(tmp_path / "a" / "b") in [w.path for w in loops]
    assert any(w.path.startswith(str(tmp_path / "a" / "c")) for w in loops)


def test_mutual_links_between_siblings_terminate(tmp_path: Path) -> None:
    make(tmp_path, "a/x", "b/y")
    (tmp_path / "a" / "tob").symlink_to("../b")
    (tmp_path / "b" / "toa").symlink_to("../a")
    paths, warnings = run(tmp_path)
    assert paths == ["a/tob/y", "a/x", "b/toa/x", "b/y"]
    assert sorted(w.path for w in warnings) == [
        str(tmp_path / "a" / "tob" / "toa"),
        str(tmp_path / "b" / "toa" / "tob"),
    ]
    assert {w.kind for w in warnings} == {ScanWarningKind.SYMLINK_LOOP}


def test_symlink_chain_to_itself_is_a_loop(tmp_path: Path) -> None:
    (tmp_path / "x").symlink_to("x")
    paths, warnings = run(tmp_path)
    assert paths == []
    assert [w.kind for w in warnings] == [ScanWarningKind.SYMLINK_LOOP]


def test_dangling_symlink_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "ok")
    (tmp_path / "gone").symlink_to("missing-target")
    paths, warnings = run(tmp_path)
    assert paths == ["ok"]
    (w,) = warnings
    assert w.kind is ScanWarningKind.DANGLING_SYMLINK
    assert w.path == str(tmp_path / "gone")
    assert "missing-target" in w.message


def test_symlinks_are_skipped_when_not_followed(tmp_path: Path) -> None:
    make(tmp_path, "real/x", "f")
    (tmp_path / "lnd").symlink_to("real")
    (tmp_path / "lnf").symlink_to("f")
    paths, warnings = run(tmp_path, follow_symlinks=False)
    assert paths == ["f", "real/x"]
    assert sorted((w.kind, w.path) for w in warnings) == [
        (ScanWarningKind.SKIPPED_SYMLINK, str(tmp_path / "lnd")),
        (ScanWarningKind.SKIPPED_SYMLINK, str(tmp_path / "lnf")),
    ]


def test_symlinked_root_is_followed_even_when_symlinks_are_not(tmp_path: Path) -> None:
    make(tmp_path, "real/x")
    (tmp_path / "root").symlink_to("real")
    assert run(tmp_path / "root", follow_symlinks=False) == (["x"], [])


# --- special files, names, permissions, races --------------------------------------


def test_fifo_is_skipped_without_opening_it(tmp_path: Path) -> None:
    make(tmp_path, "a", "z")
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would block forever
    paths, warnings = run(tmp_path)
    assert paths == ["a", "z"]
    (w,) = warnings
    assert (w.kind, w.path) == (ScanWarningKind.SPECIAL_FILE, str(tmp_path / "pipe"))
    assert "FIFO" in w.message


def test_socket_is_skipped(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        paths, warnings = run(tmp_path)
    finally:
        sock.close()
    assert paths == []
    assert [(w.kind, "socket" in w.message) for w in warnings] == [(ScanWarningKind.SPECIAL_FILE, True)]


def test_fifo_root_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="FIFO"):
        scan(tmp_path / "pipe")


def test_non_utf8_names_are_skipped_with_escaped_warning(tmp_path: Path) -> None:
    make(tmp_path, "good.txt", "sub/")
    base = os.fsencode(tmp_path)
    os.close(os.open(base + b"/sub/bad\xff.txt", os.O_CREAT | os.O_WRONLY))
    os.mkdir(base + b"/dir\xfe")
    os.close(os.open(base + b"/dir\xfe/inner", os.O_CREAT | os.O_WRONLY))
    paths, warnings = run(tmp_path)
    assert paths == ["good.txt"]
    by_path = {w.path: w for w in warnings}
    assert set(by_path) == {f"{tmp_path}/sub/bad\\xff.txt", f"{tmp_path}/dir\\xfe"}
    assert {w.kind for w in warnings} == {ScanWarningKind.NON_UTF8_NAME}
    for w in warnings:
        assert "UTF-8" in w.message
        assert w.message.isprintable()  # one printable line, no raw surrogates


def test_excluded_non_utf8_name_is_skipped_silently(tmp_path: Path) -> None:
    os.close(os.open(os.fsencode(tmp_path) + b"/bad\xff.tmp", os.O_CREAT | os.O_WRONLY))
    assert run(tmp_path, exclude=["*.tmp"]) == ([], [])


def test_control_characters_in_names_are_kept_but_escaped_in_warnings(tmp_path: Path) -> None:
    make(tmp_path, "new\nline")
    os.mkfifo(tmp_path / "pi\tpe")
    paths, warnings = run(tmp_path)
    assert paths == ["new\nline"]
    assert warnings[0].path.endswith("pi\\tpe")


def test_unreadable_directory_is_skipped_with_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs as root too: the listing itself is made to fail the way EACCES does.
    make(tmp_path, "a", "locked/secret", "z/b")
    real_scandir = os.scandir
    locked = str(tmp_path / "locked")

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if path == locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    paths, warnings = run(tmp_path)
    assert paths == ["a", "z/b"]
    (w,) = warnings
    assert (w.kind, w.path) == (ScanWarningKind.UNREADABLE, locked)
    assert "Permission denied" in w.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 directory")
def test_chmod_000_directory_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "a", "locked/secret")
    (tmp_path / "locked").chmod(0)
    try:
        paths, warnings = run(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert paths == ["a"]
    assert [(w.kind, w.path) for w in warnings] == [(ScanWarningKind.UNREADABLE, str(tmp_path / "locked"))]


def test_file_deleted_during_scan_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "a", "b", "c")
    warnings: list[ScanWarning] = []
    it = scan(tmp_path, on_warning=warnings.append)
    first = next(it)
    (tmp_path / "b").unlink()  # listed already, not yet stat()ed
    assert [first.path, *(e.path for e in it)] == ["a", "c"]
    assert [(w.kind, w.path) for w in warnings] == [(ScanWarningKind.VANISHED, str(tmp_path / "b"))]


def test_directory_deleted_during_scan_is_skipped_with_warning(tmp_path: Path) -> None:
    make(tmp_path, "a", "d/x")
    warnings: list[ScanWarning] = []
    it = scan(tmp_path, on_warning=warnings.append)
    assert next(it).path == "a"
    (tmp_path / "d" / "x").unlink()
    (tmp_path / "d").rmdir()
    assert list(it) == []
    assert [w.kind for w in warnings] == [ScanWarningKind.VANISHED]


def test_warnings_go_to_the_logger_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gone").symlink_to("missing")
    with caplog.at_level(logging.WARNING, logger="syncengine.scan"):
        assert list(scan(tmp_path)) == []
    (record,) = caplog.records
    assert record.name == "syncengine.scan"
    assert "dangling symlink" in record.getMessage()
    assert str(tmp_path / "gone") in record.getMessage()


def test_by_default_a_link_is_followed_only_when_it_stays_inside_the_root(tmp_path: Path) -> None:
    make(tmp_path, "root/data/x", "outside/secret")
    (tmp_path / "root" / "in-file").symlink_to("data/x")
    (tmp_path / "root" / "in-dir").symlink_to("data")
    (tmp_path / "root" / "out-file").symlink_to("../outside/secret")
    (tmp_path / "root" / "out-dir").symlink_to(tmp_path / "outside")
    paths, warnings = run(tmp_path / "root")
    assert paths == ["data/x", "in-dir/x", "in-file"]
    skipped = sorted(w.path for w in warnings if w.kind is ScanWarningKind.SKIPPED_SYMLINK)
    assert skipped == [str(tmp_path / "root" / "out-dir"), str(tmp_path / "root" / "out-file")]
    assert all("--follow-symlinks" in w.message for w in warnings)
    paths, _ = run(tmp_path / "root", follow_symlinks=True)
    assert paths == ["data/x", "in-dir/x", "in-file", "out-dir/secret", "out-file"]
