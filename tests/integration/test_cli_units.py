"""Sizes and durations on the command line (README.md, "Units"): every flag reads the same
units, and every human-readable line prints them the same way (`--json` keeps numbers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from syncengine.cli.main import cli as root
from tests.integration.test_cli import cli

SIZE = r"\d+\.\d\d [KMGT]iB|\d+ B"  # format_size
DURATION = r"[\d.]+(ms|s)|\d+[mhd]( \d+[smh])?"  # format_duration


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"SYNCENGINE_REPO": str(tmp_path / "repo"), **more}


def _put(tmp_path: Path, env: dict[str, str], data: bytes, *extra: str) -> str:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "w.bin").write_bytes(data)
    r = cli("put", str(src), "-n", "p/m", "-t", "model", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _params(*argv: str) -> dict[str, object]:
    """The values click hands a command for ``argv`` (parsed, not run)."""
    group = root
    while isinstance(group, click.Group):
        command = group.get_command(click.Context(group), argv[0])
        assert command is not None, argv
        if not isinstance(command, click.Group):
            return command.make_context(argv[0], list(argv[1:])).params
        group, argv = command, argv[1:]
    raise AssertionError(argv)


def test_every_flag_reads_the_same_units(tmp_path: Path) -> None:
    """`watch --settle` took no `d`, `gc --grace` no `ms` or `1h 30m`, `cache cleanup` read `M`
    as one thing and environment variables `MB` as another: now one parser reads them all."""
    d = str(tmp_path)
    assert _params("watch", d, "-n", "p/m", "--settle", "1d", "--rescan", "1h 30m")["settle"] == 86400.0
    assert _params("watch", d, "-n", "p/m", "--rescan", "1h 30m")["rescan"] == 5400.0
    assert _params("gc", "--grace", "1500ms")["grace"] == 1.5
    assert _params("gc", "--grace", "1w")["grace"] == 7 * 86400.0
    assert _params("abort-uploads", "--older-than", "90")["older_than"] == 90.0
    assert _params("put", d, "-n", "p/m", "-t", "x", "--ttl", "1d 12h")["ttl"] == 129600.0
    assert _params("cache", "cleanup", "1.5GB")["target"] == 1_500_000_000
    assert _params("cache", "cleanup", "1.5G")["target"] == 1_610_612_736
    assert _params("hash", d, "--avg-chunk-size", "512KiB")["avg_chunk_size"] == 512 << 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("gc", "--grace", "soon"), "Invalid value for '--grace': 'soon' is not a duration"),
        (("gc", "--grace", "-1h"), "Invalid value for '--grace': '-1h': a duration cannot be negative"),
        (("abort-uploads", "--older-than", "nan"), "'nan' is not a duration"),
        (
            ("put", ".", "-n", "p/m", "-t", "x", "--ttl", "1y"),
            "Invalid value for '--ttl': '1y' is not a duration",
        ),
        (("edit", "p/m:v0", "--ttl", "1y"), "Invalid value for '--ttl': '1y' is not a duration"),
        (
            ("watch", ".", "-n", "p/m", "--settle", "inf"),
            "Invalid value for '--settle': 'inf' is not a duration",
        ),
        (("cache", "cleanup", "1XB"), "'1XB' is not a size"),
        (("cache", "cleanup", "--", "-1GB"), "'-1GB': a size cannot be negative"),
        (
            ("hash", ".", "--avg-chunk-size", "lots"),
            "Invalid value for '--avg-chunk-size': 'lots' is not a size",
        ),
        (
            ("dedup-report", ".", "--chunk-sizes", "1MiB,big"),
            "Invalid value for '--chunk-sizes': 'big' is not a size",
        ),
    ],
)
def test_a_bad_size_or_duration_is_a_usage_error(tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    r = cli(*argv, env=_env(tmp_path))
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_bad_size_variable_names_it(tmp_path: Path) -> None:
    r = cli("cache", "info", env=_env(tmp_path, SYNCENGINE_FILE_CACHE_SIZE="-1MB"))
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: SYNCENGINE_FILE_CACHE_SIZE='-1MB': a size cannot be negative"
    )
    r = cli("cache", "info", env=_env(tmp_path, SYNCENGINE_FILE_CACHE_SIZE="2MB"))
    assert r.returncode == 0 and "of 1.91 MiB (SYNCENGINE_FILE_CACHE_SIZE" in r.stdout  # 2*10^6, not 2 MiB


def test_put_versions_and_show_print_sizes_and_times_in_units(tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = _put(tmp_path, env, b"x" * 10650)
    assert re.fullmatch(
        rf"logged p/m:v0 \(1 file, 10\.40 KiB; 10\.40 KiB new in 1 pack, ({DURATION})\)\n"
        r"repository: .*\n",
        out,
    ), out
    r = cli("versions", "p/m", env=env)
    assert re.fullmatch(r"v0  \S+  1 file  10\.40 KiB  latest\n", r.stdout), r.stdout
    r = cli("show", "p/m", "--files", env=env)
    assert r.stdout == "w.bin  10.40 KiB\n"
    r = cli("hash", str(tmp_path / "src"), env=env)
    assert re.match(
        rf"1 file, 10\.40 KiB, ({DURATION}) \(({SIZE})/s\); 0 unchanged, 10\.40 KiB read", r.stdout
    )
    listing = json.loads(cli("versions", "p/m", "--json", env=env).stdout)
    assert listing[0]["size"] == 10650  # --json keeps the number


def test_edit_and_abort_uploads_print_durations_in_units(tmp_path: Path) -> None:
    env = _env(tmp_path)
    _put(tmp_path, env, b"y")
    r = cli("edit", "p/m:v0", "--ttl", "36h", env=env)
    assert r.stdout.strip() == "updated p/m:v0: ttl none -> 1d 12h"
    r = cli("edit", "p/m:v0", "--ttl", "90061", env=env)
    assert r.stdout.strip() == "updated p/m:v0: ttl 1d 12h -> 1d 1h"
    r = cli("abort-uploads", "--older-than", "1h 30m", "--dry-run", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "would abort 0 uploads older than 1h 30m"


def test_gc_prints_sizes_and_durations_in_units(tmp_path: Path) -> None:
    """`gc` printed `marked 10657 reclaimable bytes`, `run gc again in 86400s` and `deleted 2
    object(s), 10780 bytes` where `gc --dry-run` printed `10.40 KiB`."""
    env = _env(tmp_path, SYNCENGINE_GC_MIN_GRACE="1ms")  # a duration variable with a unit
    _put(tmp_path, env, b"a" * 10650)
    _put(tmp_path, env, b"b" * 10)
    assert cli("delete", "p/m:v0", env=env).returncode == 0
    r = cli("gc", "--dry-run", env=env)
    assert "reclaimable: " in r.stdout and re.search(rf"reclaimable: ({SIZE}) \(dry run", r.stdout), r.stdout
    r = cli("gc", "--grace", "1ms", env=env)
    assert re.fullmatch(
        rf"marked ({SIZE}) reclaimable \(mark \w+\); run `syncengine gc` again after .*\n", r.stdout
    )
    for _ in range(5):  # the sweep comes once the store's clock moved 1 ms past the mark
        r = cli("gc", "--grace", "1ms", env=env)
        if "deleted" in r.stdout:
            break
    assert re.search(  # 10650 bytes of "a" are stored compressed
        rf"^deleted \d+ object\(s\), ({SIZE}); repacked 1 pack\(s\) \(({SIZE}) live copied\); kept 0\n\Z",
        r.stdout,
        re.MULTILINE,
    ), r.stdout
    swept = json.loads(cli("gc", "--json", "--grace", "1ms", env=env).stdout)
    assert swept["phase"] == "nothing" and isinstance(swept["wait_seconds"], float)

    _put(tmp_path, env, b"c" * 100)
    assert cli("delete", "p/m:v1", env=env).returncode == 0
    assert re.match(rf"marked ({SIZE}) reclaimable", cli("gc", "--grace", "1d", env=env).stdout)
    r = cli("gc", "--grace", "1d", env=env)
    assert re.fullmatch(r"mark \w+ is in its grace period: run `gc` again in (1d|23h \d+m)\n", r.stdout), (
        r.stdout
    )
    waiting = json.loads(cli("gc", "--grace", "1d", "--json", env=env).stdout)
    assert waiting["phase"] == "waiting" and 86000 < waiting["wait_seconds"] <= 86400
    r = cli("gc", "--grace", "30m", env={**env, "SYNCENGINE_GC_MIN_GRACE": "1h"})
    assert r.returncode == 1 and "grace period 30m is below the minimum 1h" in r.stderr


def test_watch_text_log_shows_units_and_json_log_numbers() -> None:
    from syncengine.watch import WatchEvent

    fields = {"version": "v1", "bytes": 10650, "new_bytes": 0, "seconds": 2.345, "delay": 0.25}
    e = WatchEvent("logged", "step1", dict(fields), time="T")
    assert e.to_text() == (
        "T logged checkpoint=step1 version=v1 bytes='10.40 KiB' new_bytes='0 B' seconds=2.35s delay=250ms"
    )
    assert e.to_json() == {"time": "T", "event": "logged", "checkpoint": "step1", **fields}
    start = WatchEvent("start", None, {"settle": 30.0, "mode": "versions"}, time="T")
    assert start.to_text() == "T start settle=30s mode=versions"
