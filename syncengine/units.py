"""Sizes and durations as people write and read them: the one parser and the one formatter of
each, used by every command-line flag, environment variable and human-readable line (the
table is in README.md, "Units").

Sizes follow GNU coreutils (``truncate -s``, ``dd``, ``sort -h``): ``KB``/``MB``/``GB``/``TB``
are decimal (10^3 …), ``KiB``/``MiB``/``GiB``/``TiB`` and the bare letters ``K``/``M``/``G``/``T``
binary (2^10 …), ``B`` or no unit bytes. Durations are a number with ``ms``, ``s``, ``m`` or
``min``, ``h``, ``d`` or ``w``, or several such terms added up (``1h 30m``); a bare number is
seconds. Units ignore case; blanks around the number and the unit are allowed.

This module imports nothing from the rest of syncengine, so any layer may use it.
"""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction
from typing import Final

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "UnitError",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]


class UnitError(ValueError):
    """Text that is not a size or a duration (or a negative one). The command line reports it
    as a usage error; settings read from the environment as a ``ConfigError`` naming the variable."""


#: Bytes in one of each size unit (keys lower case: units ignore case).
SIZE_UNITS: Final = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip

#: Seconds in one of each duration unit (keys lower case).
DURATION_UNITS: Final = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "min": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
    "w": Fraction(7 * 86400),
}

# A plain decimal number: no sign, exponent, "inf" or "nan" (a sign is caught first, for its
# own message; the others are not sizes anyone means).
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE = re.compile(rf"\s*{_NUMBER}\s*([a-z]*)\s*", re.IGNORECASE)
_TERM = re.compile(rf"\s*{_NUMBER}\s*([a-z]+)\s*", re.IGNORECASE)
_BARE = re.compile(rf"\s*{_NUMBER}\s*")

_SIZE_HINT = "use bytes or a number with KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (of 1024)"
_DURATION_HINT = "use seconds or a number with ms, s, m, h, d or w, e.g. 500ms, 30s, 15m, 1h 30m, 7d"


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` (rounded to a whole byte); an ``int`` is bytes already.

    >>> parse_size("1GB"), parse_size("1GiB"), parse_size("1.5 KiB"), parse_size("512"), parse_size(7)
    (1000000000, 1073741824, 1536, 512, 7)
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UnitError(f"a size is a number of bytes or text like '1GB', not {type(text).__name__}")
    if isinstance(text, int):
        if text < 0:
            raise UnitError(f"a size cannot be negative ({text})")
        return text
    if text.strip().startswith("-"):
        raise UnitError(f"{text!r}: a size cannot be negative")
    m = _SIZE.fullmatch(text)
    if m is None or m.group(2).lower() not in SIZE_UNITS:
        raise UnitError(f"{text!r} is not a size: {_SIZE_HINT}")
    return round(Fraction(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str | float) -> float:
    """Seconds in ``text``; a number is seconds already.

    >>> parse_duration("500ms"), parse_duration("90"), parse_duration("1h 30m"), parse_duration("7d")
    (0.5, 90.0, 5400.0, 604800.0)
    """
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise UnitError(f"a duration is seconds or text like '30s', not {type(text).__name__}")
    if not isinstance(text, str):
        if not math.isfinite(text) or text < 0:
            raise UnitError(f"a duration is a finite number of seconds, at least 0 (not {text})")
        return float(text)
    if text.strip().startswith("-"):
        raise UnitError(f"{text!r}: a duration cannot be negative")
    bare = _BARE.fullmatch(text)
    if bare is not None:
        return float(Fraction(bare.group(1)))
    total, pos = Fraction(0), 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None or m.group(2).lower() not in DURATION_UNITS:
            break
        total += Fraction(m.group(1)) * DURATION_UNITS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or pos < len(text):
        raise UnitError(f"{text!r} is not a duration: {_DURATION_HINT}")
    return float(total)


_BINARY: Final = ("B", "KiB", "MiB", "GiB", "TiB")  # the largest unit parse_size reads


def format_size(n: float) -> str:
    """``n`` bytes in binary units with two decimals (bytes as a whole number): ``512 B``,
    ``10.40 KiB``, ``1.00 GiB``. Accepts a rate (bytes per second) too.

    >>> format_size(0), format_size(10650), format_size(3 * 2**30)
    ('0 B', '10.40 KiB', '3.00 GiB')
    """
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in _BINARY[1:]:
        n /= 1024
        # move on while the shown value would read 1024.00 (1048575 B is 1.00 MiB, not 1024.00 KiB)
        if abs(round(n, 2)) < 1024 or unit == _BINARY[-1]:
            return f"{n:.2f} {unit}"
    raise AssertionError("unreachable")


# Units a duration is shown in, largest first (weeks are read but not shown: "30d" is clearer).
_SHOWN: Final = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: float) -> str:
    """``seconds`` for a person: ``250ms``, ``2.35s``, ``45s``, ``1m 30s``, ``1h 30m``, ``1d``,
    ``2d 4h``. Under a minute three significant digits; from a minute on whole seconds in at
    most the two largest units, rounded to the smaller one. `parse_duration` reads it back.

    >>> format_duration(0.25), format_duration(90), format_duration(86400), format_duration(5400)
    ('250ms', '1m 30s', '1d', '1h 30m')
    """
    if not math.isfinite(seconds):
        raise UnitError(f"{seconds} seconds is not a duration")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 0.9995:  # shown as ms unless it rounds to 1.00 s
        ms = seconds * 1000  # no exponent under 1 ms: parse_duration reads plain decimals only
        return f"{ms:.3g}ms" if ms >= 1 else f"{ms:.3f}".rstrip("0").rstrip(".") + "ms"
    if seconds < 59.95:
        return f"{seconds:.3g}s"
    # Round to the unit below the largest one reached (59m 45s and up round to 1h), so at
    # most two parts are left; from 59.95 s on the minute row always matches.
    rest = round(seconds)
    for (_, big), (_, small) in itertools.pairwise(_SHOWN):
        if seconds >= big - small / 2:
            rest = round(seconds / small) * small
            break
    parts: list[str] = []
    for unit, size in _SHOWN:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)
