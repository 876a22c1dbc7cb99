"""`syncengine delete`, `cleanup`, `edit --ttl`, `cache info|cleanup` as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.test_cli import cli


def _env(tmp_path: Path) -> dict[str, str]:
    return {"SYNCENGINE_REPO": str(tmp_path / "repo")}


def _put(tmp_path: Path, env: dict[str, str], content: str, *extra: str) -> None:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "x.txt").write_text(content)
    r = cli("put", str(src), "-n", "p/m", "-t", "model", *extra, env=env)
    assert r.returncode == 0, r.stderr


def test_delete_refuses_aliases_dry_runs_and_prints_what_it_did(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for i in range(3):
        _put(tmp_path, env, str(i), *(["-a", "best"] if i == 1 else []))
    r = cli("delete", "p/m:v1", env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "error: p/m:v1 has alias(es) best: remove them first (syncengine alias rm p/m:v1 best) "
        "or delete them with it (delete_aliases=True, --delete-aliases)"
    )
    r = cli("delete", "p/m:v1", "--delete-aliases", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "would delete p/m:v1 (1 file, 1 B, with aliases best)"
    assert "best" in cli("versions", "p/m", env=env).stdout  # the dry run wrote nothing
    r = cli("delete", "p/m:v1", "--delete-aliases", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["ref"], out["aliases"], out["dry_run"]) == ("p/m:v1", ["best"], False)
    r = cli("delete", "p/m:v2", env=env)  # the newest: `latest` moves to v0
    assert r.returncode == 0 and r.stdout.strip() == "deleted p/m:v2 (1 file, 1 B)"
    listing = json.loads(cli("versions", "p/m", "--json", env=env).stdout)
    assert [(v["version"], v["aliases"]) for v in listing] == [(0, ["latest"])]
    r = cli("get", "p/m:v2", "--root", str(tmp_path / "out"), env=env)
    assert r.returncode == 1 and r.stderr.strip() == "error: p/m:v2 was deleted"
    r = cli("delete", "p/m", env=env)
    assert r.returncode == 2 and "name the version as PROJECT/NAME:vN" in r.stderr
    r = cli("delete", "p/mn:v0", env=env)
    assert r.returncode == 1 and "(did you mean 'm'?)" in r.stderr
    _put(tmp_path, env, "2")  # the content of the deleted v2: a new number
    assert json.loads(cli("show", "p/m", "--json", env=env).stdout)["version"] == 3


def test_cleanup_and_edit_ttl(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for i in range(5):
        _put(tmp_path, env, str(i), *(["-a", "prod"] if i == 0 else []))
    r = cli("edit", "p/m:v3", "--ttl", "30d", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["ttl_seconds"] == 30 * 86400
    r = cli("edit", "p/m:v3", "--ttl", "none", "--json", env=env)
    assert r.returncode == 0 and "ttl_seconds" not in json.loads(r.stdout)
    r = cli("edit", "p/m:v3", "--ttl", "soon", env=env)
    assert r.returncode == 2 and "'soon' is not a duration" in r.stderr
    r = cli("cleanup", "p/m", "--keep-last", "2", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "would delete p/m:v1 (1 file, 1 B) [keep-last]",
        "would delete p/m:v2 (1 file, 1 B) [keep-last]",
        "would delete 2 versions of p/m (2 B of files)",
    ]
    r = cli("cleanup", "p/m", "--keep-last", "2", "--json", env=env)
    out = json.loads(r.stdout)
    assert [d["ref"] for d in out["deleted"]] == ["p/m:v1", "p/m:v2"] and not out["dry_run"]
    listing = json.loads(cli("versions", "p/m", "--json", env=env).stdout)
    assert [v["version"] for v in listing] == [0, 3, 4]
    r = cli("cleanup", "p/m:v3", env=env)
    assert r.returncode == 2 and "without :alias or :vN" in r.stderr
    src = tmp_path / "src"
    (src / "x.txt").write_text("with ttl")
    r = cli("put", str(src), "-n", "p/m", "-t", "model", "--ttl", "7d", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["ttl_seconds"] == 7 * 86400
    r = cli(
        "put", str(src), "-n", "p/m", "-t", "model", "--ttl", "1h", "--json", env=env
    )  # unchanged content
    assert r.returncode == 0 and json.loads(r.stdout)["ttl_seconds"] == 3600
    assert json.loads(cli("show", "p/m", "--json", env=env).stdout)["ttl_seconds"] == 3600


def test_cache_info_and_cleanup(tmp_path: Path) -> None:
    env = _env(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"big{i}.bin").write_bytes(os.urandom(100_000))  # above the cache's 64 KiB floor
    assert cli("put", str(src), "-n", "p/big", "-t", "data", env=env).returncode == 0
    assert cli("get", "p/big", "--root", str(tmp_path / "out"), env=env).returncode == 0
    info = json.loads(cli("cache", "info", "--json", env=env).stdout)
    assert info["files"] == 3 and info["bytes"] == 300_000
    assert info["location"] == os.path.join(os.environ["SYNCENGINE_CACHE_DIR"], "files")
    assert info["bound"] == 20 << 30
    r = cli("cache", "info", env={**env, "SYNCENGINE_FILE_CACHE_SIZE": "1G"})
    assert r.returncode == 0 and "3 files, 292.97 KiB of 1.00 GiB" in r.stdout
    r = cli("cache", "cleanup", "150KB", "--dry-run", "--json", env=env)
    dry = json.loads(r.stdout)
    assert (dry["files_removed"], dry["bytes_freed"], dry["files"], dry["dry_run"]) == (2, 200_000, 1, True)
    assert json.loads(cli("cache", "info", "--json", env=env).stdout)["files"] == 3
    r = cli("cache", "cleanup", "150KB", env=env)
    assert r.returncode == 0 and r.stdout.startswith("removed 2 files")
    assert json.loads(cli("cache", "info", "--json", env=env).stdout)["bytes"] == 100_000
    r = cli("cache", "cleanup", "lots", env=env)  # a usage error, as every bad flag value
    assert r.returncode == 2 and "'lots' is not a size" in r.stderr


def test_alias_tag_edit_and_unlink_dry_run_and_say_what_they_did(tmp_path: Path) -> None:
    env = _env(tmp_path)
    _put(tmp_path, env, "0", "-a", "best", "-a", "prod", "--tag", "gold", "-m", '{"lr": 0.1}')

    def versions() -> list[tuple[int, list[str], list[str]]]:
        rows = json.loads(cli("versions", "p/m", "--json", env=env).stdout)
        return [(v["version"], v["aliases"], v.get("tags", [])) for v in rows]

    before = versions()
    assert before == [(0, ["best", "latest", "prod"], ["gold"])]
    r = cli("alias", "rm", "p/m:v0", "best", "--dry-run", env=env)
    assert (
        r.returncode == 0
        and r.stdout.strip() == "would remove best from p/m:v0; its aliases now: latest, prod"
    )
    r = cli("tag", "rm", "p/m:v0", "gold", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "would remove tag gold from p/m:v0; tags: (none)"
    r = cli("edit", "p/m:v0", "--ttl", "30d", "--set", "lr=0.2", "-d", "tuned", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.strip() == (
        "would update p/m:v0: description '' -> 'tuned'; metadata lr 0.1 -> 0.2; ttl none -> 30d"
    )
    shown = json.loads(cli("show", "p/m:v0", "--json", env=env).stdout)
    assert (shown["metadata"], shown.get("ttl_seconds"), shown.get("description")) == (
        {"lr": 0.1},
        None,
        None,
    )
    assert versions() == before  # no dry run wrote anything

    r = cli("alias", "rm", "p/m:v0", "bets", env=env)  # a typo: an error, nothing removed
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: p/m:v0 holds no alias 'bets' (did you mean 'best'?) (its aliases: best, latest, prod); "
        "nothing was removed"
    )
    r = cli("tag", "rm", "p/m:v0", "gld", env=env)
    assert r.returncode == 1 and "has no tag 'gld' (did you mean 'gold'?)" in r.stderr
    r = cli("alias", "rm", "p/m:v0", "best", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "removed best from p/m:v0; its aliases now: latest, prod"
    r = cli("tag", "rm", "p/m:v0", "gold", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "removed tag gold from p/m:v0; tags: (none)"
    r = cli("edit", "p/m:v0", "--ttl", "30d", "--unset", "lr", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "updated p/m:v0: metadata lr removed; ttl none -> 30d"
    r = cli("edit", "p/m:v0", "--ttl", "30d", "--json", env=env)  # the same again: nothing changes
    assert r.returncode == 0 and json.loads(r.stdout)["changes"] == []
    assert versions() == [(0, ["latest", "prod"], [])]

    assert cli("link", "p/m:v0", "reg/models", "-a", "staging", env=env).returncode == 0
    r = cli("unlink", "reg/models:staging", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.strip() == (
        "would unlink reg/models:v0, alias(es) staging removed with it (its source p/m:v0 is kept)"
    )
    assert cli("show", "reg/models:staging", env=env).returncode == 0  # still there
    r = cli("unlink", "reg/models:v0", "--dry-run", "--json", env=env)
    out = json.loads(r.stdout)
    assert (out["dry_run"], out.get("deleted", False), out["aliases_removed"]) == (True, False, ["staging"])
    r = cli("unlink", "p/m:v0", "--dry-run", env=env)
    assert r.returncode == 1 and "p/m:v0 is not a link into a collection" in r.stderr
    r = cli("unlink", "reg/models:v0", env=env)
    assert r.returncode == 0 and r.stdout.strip() == (
        "unlinked reg/models:v0, alias(es) staging removed with it (its source p/m:v0 is kept)"
    )
    assert cli("show", "reg/models:staging", env=env).returncode == 1
    assert versions() == [(0, ["latest", "prod"], [])]  # the source is untouched


def test_unknown_names_suggest_the_closest_in_every_command(tmp_path: Path) -> None:
    env = _env(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.txt").write_text("x")
    assert cli("put", str(src), "-n", "vision/mnist", "-t", "dataset", "-a", "best", env=env).returncode == 0
    artifact = "error: project 'vision' has no artifact 'mnst' (did you mean 'mnist'?) (it has: mnist)"
    project = "error: no project 'visoin' (did you mean 'vision'?); projects: vision"
    alias = "error: vision/mnist has no alias 'bset' (did you mean 'best'?) (aliases: best, latest)"
    cases = {
        ("get", "vision/mnst"): artifact,
        ("get", "visoin/mnist"): project,
        ("get", "vision/mnist:bset"): alias,
        ("show", "vision/mnist:bset"): alias,
        ("show", "vision/mnst", "--files"): artifact,
        ("versions", "vision/mnst"): artifact,
        ("versions", "visoin/mnist"): project,
        ("delete", "vision/mnst:v0"): artifact,
        ("lineage", "vision/mnist:bset"): alias,
        ("lineage", "visoin/mnist"): project,
        ("link", "vision/mnist:bset", "reg/models"): alias,
        ("link", "vision/mnst:v0", "reg/models"): artifact,
        ("alias", "add", "vision/mnst:v0", "prod"): artifact,
        ("alias", "rm", "vision/mnst:v0", "best"): artifact,
        ("tag", "add", "vision/mnist:bset", "gold"): alias,
        ("edit", "vision/mnst", "-d", "x"): artifact,
        ("cleanup", "vision/mnst"): artifact,
        ("draft", "vision/mnist:bset", "--add", str(src / "x.txt")): alias,
        ("unlink", "vision/mnst:v0"): artifact,
        ("verify", "vision/mnst", "--root", str(src)): artifact,
        ("diff", "vision/mnist:v0", "vision/mnst:v0"): artifact,
        ("ls", "visoin"): project,
    }
    for args, message in cases.items():
        r = cli(*args, env=env)
        assert (r.returncode, r.stderr.strip()) == (1, message), args
    r = cli("alias", "add", "vision/mnist:v3", "prod", env=env)
    assert r.stderr.strip() == "error: vision/mnist has no version v3 (the newest is v0)"
    r = cli("runs", "visoin", env=env)  # an unknown project, as everywhere else
    assert r.returncode == 1 and r.stderr.startswith("error: no project 'visoin' (did you mean 'vision'?)")
    # Bad names, aliases and types: one clear line before any work, in every command taking them.
    bad = {
        ("put", str(src), "-n", "vision/mnist", "-t", "data set"): "error: invalid type 'data set'",
        ("put", str(src), "-n", "vision/mn ist", "-t", "dataset"): "error: invalid artifact name 'mn ist'",
        ("put", str(src), "-n", "vision/mnist", "-t", "dataset", "-a", "v2"): "error: invalid alias 'v2'",
        ("alias", "add", "vision/mnist:v0", "a/b"): "error: invalid alias 'a/b'",
        ("link", "vision/mnist:v0", "reg/models", "-a", "v0"): "error: invalid alias 'v0'",
        ("link", "vision/mnist:v0", "reg/mo dels"): "error: invalid artifact name 'mo dels'",
        ("draft", "vision/mnist", "--add", str(src / "x.txt"), "-a", "a:b"): "error: invalid alias 'a:b'",
        ("draft", "vision/mnist", "--add", str(src / "x.txt"), "--tag", "x y"): "error: invalid tag 'x y'",
        ("distributed", "upsert", "vision/mnist", str(src), "-t", "data set", "-D", "j"): (
            "error: invalid type 'data set'"
        ),
    }
    for args, start in bad.items():
        r = cli(*args, env=env)
        assert r.returncode in (1, 2) and r.stderr.strip().startswith(start), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    listing = json.loads(cli("versions", "vision/mnist", "--json", env=env).stdout)
    assert [(v["version"], v["aliases"]) for v in listing] == [(0, ["best", "latest"])]  # nothing was written


def test_get_dry_run_lists_what_it_would_write_and_checkout_would_delete(tmp_path: Path) -> None:
    env = _env(tmp_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for rel, text in {"a.txt": "a", "b.txt": "b", "sub/c.txt": "c"}.items():
        (src / rel).write_text(text)
    assert cli("put", str(src), "-n", "p/m", "-t", "data", env=env).returncode == 0
    out = tmp_path / "out"
    r = cli("get", "p/m", "--root", str(out), "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "would write a.txt",
        "would write b.txt",
        "would write sub/c.txt",
        f"p/m:v0 -> {out}: would write 3 files",
    ]
    assert not out.exists()
    assert cli("get", "p/m", "--root", str(out), env=env).returncode == 0
    (out / "b.txt").write_text("changed")
    (out / "sub" / "c.txt").unlink()
    (out / "mine.txt").write_text("not in the version")
    r = cli("get", "p/m", "--root", str(out), "--checkout", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "would write b.txt",
        "would write sub/c.txt",
        "would delete mine.txt",
        f"p/m:v0 -> {out}: would write 2 files, delete 1",
    ]
    r = cli("get", "p/m", "--root", str(out), "--checkout", "--dry-run", "--prefix", "sub", "--json", env=env)
    got = json.loads(r.stdout)
    assert (got["would_write"], got["would_delete"], got["dry_run"]) == (["sub/c.txt"], [], True)
    assert (out / "mine.txt").exists() and (out / "b.txt").read_text() == "changed"  # untouched
