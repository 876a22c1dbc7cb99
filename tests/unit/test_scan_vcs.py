"""Version-control folders are left out of a scan unless asked for (docs/SCANNING.md)."""

from __future__ import annotations

from pathlib import Path

from syncengine.scan import VCS_DIRS, excluded, scan


def _tree(root: Path, paths: list[str]) -> None:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


def test_vcs_folders_are_skipped_at_any_depth_unless_include_vcs(tmp_path: Path) -> None:
    data = ["data.csv", ".gitignore", "sub/x.txt", "CVS/kept", ".github/workflows/ci.yml"]
    vcs = [f"{d}/HEAD" for d in VCS_DIRS] + ["sub/.git/objects/ab", "sub/.hg/store", "wt/.git"]
    _tree(tmp_path, data + vcs)
    assert sorted(e.path for e in scan(tmp_path)) == sorted(data)
    assert sorted(e.path for e in scan(tmp_path, include_vcs=True)) == sorted(data + vcs)


def test_a_vcs_folder_named_as_the_root_is_scanned(tmp_path: Path) -> None:
    _tree(tmp_path, [".git/HEAD", ".git/objects/ab"])
    assert [e.path for e in scan(tmp_path / ".git")] == ["HEAD", "objects/ab"]


def test_excluded_answers_as_the_scan_does() -> None:
    assert excluded(".git", [], is_dir=True) and excluded(".git", [], is_dir=False)
    assert excluded("a/.svn/entries", [], is_dir=False)
    assert not excluded(".svn", [], is_dir=False)  # only the folder
    assert not excluded(".git", [], is_dir=True, include_vcs=True)
    assert excluded("build", ["build/"], is_dir=True) and not excluded("build", ["build/"], is_dir=False)
    assert excluded("artifacts/d-v0", ["artifacts/*-v*"], is_dir=True)
    assert not excluded("data", ["logs/"], is_dir=True)
