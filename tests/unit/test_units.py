"""syncengine.units: one meaning for every size and duration unit, in flags, environment
variables and printed lines (README.md, "Units")."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import syncengine.units
from syncengine.errors import ConfigError
from syncengine.settings import env_duration, env_size
from syncengine.units import (
    DURATION_UNITS,
    SIZE_UNITS,
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

# ---- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("7B", 7),
        ("1KB", 1000),
        ("1MB", 10**6),
        ("1GB", 10**9),
        ("1TB", 10**12),
        ("1KiB", 1 << 10),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("1TiB", 1 << 40),
        ("1K", 1 << 10),
        ("256M", 256 << 20),
        ("20G", 20 << 30),
        ("2T", 2 << 40),
        ("1gb", 10**9),  # units ignore case
        ("1gib", 1 << 30),
        (" 1.5 KiB ", 1536),  # blanks around and between
        ("0.5MB", 500_000),
        (".5KB", 500),
        ("10.40 KiB", 10650),  # what format_size prints, rounded to a whole byte
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "lots", "1 parsec", "1XB", "1e9", "nan", "inf", "1.2.3", "KB", "1 K B", "0x10", "1_000"]
)
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(UnitError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("value", ["-1", "-1KB", " -0.5GiB", -1])
def test_parse_size_rejects_negatives(value: str | int) -> None:
    with pytest.raises(UnitError, match="negative"):
        parse_size(value)


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)
    with pytest.raises(UnitError):
        parse_size(1.5)  # type: ignore[arg-type]
    with pytest.raises(UnitError):
        parse_size(True)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(SIZE_UNITS)))
def test_every_size_unit_scales_exactly(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * SIZE_UNITS[unit]
    assert parse_size(f"{n} {unit.upper()}") == n * SIZE_UNITS[unit]


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_round_trips_within_rounding(n: int) -> None:
    shown = format_size(n)
    back = parse_size(shown)
    # bytes exactly; otherwise two decimals of the unit: at most half a hundredth of it off
    assert abs(back - n) <= max(0.5, n * 0.005 / 1.0) + 1, (n, shown, back)
    number, unit = shown.split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert unit == "TiB" or float(number) < 1024  # never "1024.00 KiB"


@given(st.integers(min_value=0, max_value=1 << 50), st.integers(min_value=0, max_value=1 << 50))
def test_format_size_is_monotonic(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert parse_size(format_size(lo)) <= parse_size(format_size(hi))


@given(st.text(alphabet="0123456789.KMGTBikmgtb -+eE", max_size=8), st.integers(0, 1 << 40))
def test_parse_size_is_monotonic_in_the_number(text: str, n: int) -> None:
    try:
        small = parse_size(text)
    except UnitError:
        return
    assert small >= 0
    unit = text.strip().lstrip("0123456789.").strip()
    bigger = parse_size(f"{n + 1}{unit}")
    assert bigger >= parse_size(f"{n}{unit}")


def test_format_size_examples() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 10650, 1048575, 3 << 30)] == [
        "0 B",
        "1023 B",
        "1.00 KiB",
        "10.40 KiB",
        "1.00 MiB",
        "3.00 GiB",
    ]
    assert format_size(-2048) == "-2.00 KiB"


# ---- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0.0),
        ("90", 90.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("2min", 120.0),
        ("24h", 86400.0),
        ("7d", 7 * 86400.0),  # `watch --settle` refused `d` before
        ("2w", 14 * 86400.0),
        ("1h 30m", 5400.0),
        ("1h30m", 5400.0),
        ("1d 2h", 93600.0),
        (" 1 H ", 3600.0),
        ("1MIN", 60.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "  ", "soon", "1q", "1h 30", "30 1h", "nan", "inf", "1e3", "1y", "s", "1.2.3s", "1 hour"]
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(UnitError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["-1", "-5m", -1.0, math.nan, math.inf])
def test_parse_duration_rejects_negative_and_non_finite(value: str | float) -> None:
    with pytest.raises(UnitError):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(DURATION_UNITS)))
def test_every_duration_unit_scales(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == pytest.approx(float(n * DURATION_UNITS[unit]))


_SECONDS = st.floats(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False)


@given(_SECONDS)
def test_format_duration_round_trips_within_rounding(seconds: float) -> None:
    shown = format_duration(seconds)
    back = parse_duration(shown)
    # three significant digits under a minute; above, rounded to the unit below the largest
    # shown (1d 4h: to the hour) — at most 1/48 of the value off (half an hour of a day)
    assert abs(back - seconds) <= seconds / 48 + 0.0005, (seconds, shown, back)
    assert len(shown.split(" ")) <= 2


@given(_SECONDS, _SECONDS)
def test_format_duration_is_monotonic(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert parse_duration(format_duration(lo)) <= parse_duration(format_duration(hi))


def test_format_duration_examples() -> None:
    cases = {
        0: "0s",
        0.25: "250ms",
        0.0004: "0.4ms",
        2.345: "2.35s",
        30: "30s",
        59.96: "1m",
        90: "1m 30s",
        3569: "59m 29s",
        5400: "1h 30m",
        86399: "1d",  # 23h 59m 59s rounds to the day
        86400: "1d",
        93600: "1d 2h",
        30 * 86400: "30d",
    }
    assert {s: format_duration(s) for s in cases} == cases


# ---- one module, used by every setting ------------------------------------------------------


def test_units_imports_nothing_from_syncengine() -> None:
    """The utilities layer: any layer may import it, so it imports no other syncengine module."""
    tree = ast.parse(Path(syncengine.units.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] == "syncengine"}


def test_environment_sizes_use_the_same_units_as_flags() -> None:
    """`MB` in a SYNCENGINE_* size variable means 10^6, as `cache cleanup 1MB` does (it was 2^20)."""
    assert env_size("X", 1, environ={"X": "8MB"}) == 8_000_000 == parse_size("8MB")
    assert env_size("X", 1, environ={"X": "8MiB"}) == env_size("X", 1, environ={"X": "8M"}) == 8 << 20
    assert env_size("X", 1, environ={"X": "1.5GB"}) == 1_500_000_000  # a fraction was refused before
    assert env_size("X", 123, environ={"X": "  "}) == 123
    with pytest.raises(ConfigError, match=r"X='lots' is not a size"):
        env_size("X", 1, environ={"X": "lots"})
    with pytest.raises(ConfigError, match="X='-1MB': a size cannot be negative"):
        env_size("X", 1, environ={"X": "-1MB"})
    with pytest.raises(ConfigError, match="too small"):
        env_size("X", 1, minimum=1, environ={"X": "0"})


def test_environment_durations_take_units(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncengine.repo.gc_sweep import min_grace, sweep_timeout
    from syncengine.store.retry import RetryPolicy

    assert env_duration("X", 1.0, environ={"X": "2m"}) == 120.0
    assert env_duration("X", 1.0, environ={"X": "0.25"}) == 0.25  # plain seconds as before
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", "30m")
    monkeypatch.setenv("SYNCENGINE_GC_SWEEP_TIMEOUT", "1h 30m")
    assert (min_grace(), sweep_timeout()) == (1800.0, 5400.0)
    policy = RetryPolicy.from_env({"SYNCENGINE_S3_STALL_TIMEOUT": "500ms", "SYNCENGINE_S3_DEADLINE": "5m"})
    assert (policy.stall_timeout, policy.deadline) == (0.5, 300.0)
    with pytest.raises(ConfigError, match="SYNCENGINE_S3_DEADLINE='soon' is not a duration"):
        RetryPolicy.from_env({"SYNCENGINE_S3_DEADLINE": "soon"})
    with pytest.raises(ConfigError, match="SYNCENGINE_S3_BASE_DELAY='-1': a duration cannot be negative"):
        RetryPolicy.from_env({"SYNCENGINE_S3_BASE_DELAY": "-1"})


def test_transfer_settings_read_decimal_and_binary_units(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncengine.repo.file_cache import default_max_bytes
    from syncengine.store.base import StoreCapabilities
    from syncengine.transfer import default_part_size, multipart_threshold, part_size_for, put_buffer

    monkeypatch.setenv("SYNCENGINE_PART_SIZE", "5MB")
    monkeypatch.setenv("SYNCENGINE_MULTIPART_THRESHOLD", "64MiB")
    monkeypatch.setenv("SYNCENGINE_PUT_BUFFER", "100MB")
    monkeypatch.setenv("SYNCENGINE_FILE_CACHE_SIZE", "2GB")
    assert default_part_size() == 5_000_000
    assert multipart_threshold() == 64 << 20
    assert put_buffer() == 100_000_000
    assert default_max_bytes() == 2_000_000_000
    # 5MB is under S3's 5 MiB minimum part: the part size is still a valid one
    caps = StoreCapabilities(
        conditional_put=True,
        conditional_cas=True,
        conditional_across_hosts=True,
        ranged_get=True,
        max_put_size=5 << 30,
        multipart=True,
        min_part_size=5 << 20,
        max_part_size=5 << 30,
        max_parts=10_000,
        key_prefix_overlap=True,
    )
    assert part_size_for(1 << 30, caps) == 5 << 20
