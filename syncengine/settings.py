"""Environment variables that hold a size or a duration, read with the one parser of each
(syncengine.units; README.md, "Units"); a bad value is a ``ConfigError`` naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping

from syncengine.errors import ConfigError
from syncengine.units import UnitError, parse_duration, parse_size


def _raw(name: str, environ: Mapping[str, str] | None) -> str:
    return (os.environ if environ is None else environ).get(name, "").strip()


def env_size(name: str, default: int, *, minimum: int = 0, environ: Mapping[str, str] | None = None) -> int:
    """Bytes from ``$name`` (``1048576``, ``500MB``, ``256MiB``, ``1G``), ``default`` when unset
    or blank.

    >>> env_size("SIZE", 0, environ={"SIZE": "8MiB"})
    8388608
    """
    raw = _raw(name, environ)
    if not raw:
        return default
    try:
        value = parse_size(raw)
    except UnitError as e:
        raise ConfigError(f"{name}={e}") from None  # e starts with repr(raw)
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is too small: at least {minimum} bytes are needed")
    return value


def env_duration(name: str, default: float, *, environ: Mapping[str, str] | None = None) -> float:
    """Seconds from ``$name`` (``90``, ``0.25``, ``500ms``, ``15m``, ``1h``), ``default`` when
    unset or blank.

    >>> env_duration("WAIT", 1.0, environ={"WAIT": "2m"})
    120.0
    """
    raw = _raw(name, environ)
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except UnitError as e:
        raise ConfigError(f"{name}={e}") from None  # e starts with repr(raw)
