"""The one way the command line prints a line: through ``terminal_text.terminal_safe``, so no
control character from a repository or a source tree reaches the terminal raw. Commands pass
each untrusted field through ``terminal_text.shown`` as well, which also escapes newlines and
backslashes; `--json` lines pass unchanged (JSON has escaped every control already)."""

from __future__ import annotations

from typing import IO, Any

import click

from syncengine.terminal_text import terminal_safe


def echo(text: str = "", *, err: bool = False, file: IO[Any] | None = None) -> None:
    """``click.echo`` of ``text`` made terminal-safe."""
    click.echo(terminal_safe(text), err=err, file=file)
