"""The permission bits of the files a download creates: the mode a manifest entry records,
through the process umask, as ``open(2)`` would apply it.

A manifest is written by whoever can write the repository. Its entry's mode reaches the disk
by ``chmod``, which ignores the umask: an entry saying 0o777 made a world-writable file under
a user whose umask is 022, one saying 0o4755 could have made a setuid one. ``file_mode`` keeps
the read/write/execute bits only (never setuid, setgid or sticky) and clears those the umask
clears, as for any file the user creates.

The umask cannot be read without being set (``os.umask`` returns the old value), and setting
it is process-wide: another thread creating a file in between would get the wrong mode. On
Linux (4.7+) ``/proc/self/status`` states it, read each time; elsewhere it is read once, by
setting and restoring it when this module is imported (at start-up, before a download's
threads run).

This module imports nothing from the rest of syncengine, so any layer may use it.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["DEFAULT_MODE", "file_mode", "umask"]

#: The mode of a file whose entry records none (0): rw-r--r--, through the umask.
DEFAULT_MODE: Final = 0o644


def _from_proc() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    return None


def _set_and_restore() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old & 0o777


_AT_IMPORT: Final = _from_proc()
_FALLBACK: Final = _AT_IMPORT if _AT_IMPORT is not None else _set_and_restore()


def umask() -> int:
    """The process umask: read from ``/proc/self/status`` where it is stated (so a change
    after start-up counts), else the value read at import."""
    found = _from_proc() if _AT_IMPORT is not None else None
    return _FALLBACK if found is None else found


def file_mode(recorded: int, mask: int | None = None) -> int:
    """The mode to give a file whose manifest entry records ``recorded``: its permission bits
    (0o777; no setuid, setgid or sticky bit), ``DEFAULT_MODE`` if it records none, less the
    bits of ``mask`` (the process umask unless given).

    >>> oct(file_mode(0o4777, mask=0o022))
    '0o755'
    >>> oct(file_mode(0, mask=0o077))
    '0o600'
    """
    if mask is None:
        mask = umask()
    return ((recorded & 0o777) or DEFAULT_MODE) & ~mask & 0o777
