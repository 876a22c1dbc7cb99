"""Child processes that tests interrupt as Ctrl-C would."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` of a child a test sends SIGINT: the default disposition, explicitly.

    A suite started from a background job (`pytest … &` in a script, a CI step) inherits
    SIGINT ignored, and so would the child: Python then installs no KeyboardInterrupt
    handler, the SIGINT is lost and the test waits out its timeout. Ignoring an inherited
    SIGINT is right for the command itself (the shell asked for it); the test stands in for
    a terminal, so it gives the child the disposition a terminal's job has.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
