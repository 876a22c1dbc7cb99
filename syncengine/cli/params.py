"""Size and duration arguments of the command line: syncengine.units' parsers, with a value
they reject turned into a usage error (exit status 2) naming the option."""

from __future__ import annotations

from typing import Any

import click

from syncengine.units import UnitError, parse_duration, parse_size


def size(text: str, param_hint: str) -> int:
    """Bytes in ``text`` (README.md, "Units"), or a usage error about ``param_hint``."""
    try:
        return parse_size(text)
    except UnitError as e:
        raise click.BadParameter(str(e), param_hint=f"'{param_hint}'") from None  # as click quotes it


def duration(text: str, param_hint: str) -> float:
    """Seconds in ``text`` (README.md, "Units"), or a usage error about ``param_hint``."""
    try:
        return parse_duration(text)
    except UnitError as e:
        raise click.BadParameter(str(e), param_hint=f"'{param_hint}'") from None  # as click quotes it


class Size(click.ParamType):  # type: ignore[type-arg]
    """``--opt 500MB``, ``--opt 1GiB``, ``--opt 4096`` → bytes (int)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except UnitError as e:
            self.fail(str(e), param, ctx)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``--opt 30s``, ``--opt 1h 30m``, ``--opt 90`` → seconds (float)."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except UnitError as e:
            self.fail(str(e), param, ctx)


SIZE = Size()
DURATION = Duration()
