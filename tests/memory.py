"""Peak memory of the test process or a child: Linux /proc counters, not getrusage.

``ru_maxrss`` is carried over ``exec`` from the forking test runner and never falls, so
it cannot bound one command; VmHWM is per address space and resets through clear_refs.
"""

from __future__ import annotations

import re


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        m = re.search(rf"{field}:\s+(\d+)", f.read())
    assert m is not None, field
    return int(m[1]) / 1024


def reset_peak() -> None:
    """Starts a new peak-RSS window for this process."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    """This process's peak RSS (MiB) since its start or the last `reset_peak`."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's RSS now (MiB)."""
    return _status_mib("VmRSS")
