"""Untrusted text made safe to print on a terminal: the one rule for every path, name, URI and
message a command shows in human-readable output (`--json` output is exact: JSON escapes
controls itself).

A shared repository or a source tree may hold paths, descriptions, metadata keys or reference
URIs with control characters: an ESC sequence printed raw can recolour, move the cursor, set
the window title or hide lines, a newline forges a line, a bidi override reorders what the
reader sees. ``shown`` escapes:

- C0 controls, DEL and C1 controls: ``\\t``, ``\\n``, ``\\r``, ``\\x1b``, ``\\x7f``,
  ``\\u0085`` (C1 as ``\\u``: ``\\xNN`` above 0x7f is reserved for bytes);
- the bidi embedding, override and isolate characters U+202A–U+202E and U+2066–U+2069, the
  marks U+200E, U+200F and U+061C, and the line and paragraph separators U+2028, U+2029:
  ``\\u202e``;
- bytes of an os path that are not UTF-8 (which Python carries as surrogates U+DC80–U+DCFF):
  ``\\xNN``, the byte; any other lone surrogate as ``\\udNNN``;
- the backslash itself, as ``\\\\``, so the mapping can be undone without doubt.

Everything else, letters of every script included, prints as it is.

This module imports nothing from the rest of syncengine, so any layer may use it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["shown", "terminal_safe"]

#: The characters that never reach a terminal raw (see the module docstring), but for the
#: newline ``\x0a`` and the backslash, which ``shown`` adds and ``terminal_safe`` leaves.
_UNSAFE: Final = (
    "\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
)
_FIELD: Final = re.compile(f"[{_UNSAFE}\\n\\\\]")
_LINES: Final = re.compile(f"[{_UNSAFE}]")


_SHORT: Final = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    n = ord(c)
    if c in _SHORT:
        return _SHORT[c]
    if n < 0x80:
        return f"\\x{n:02x}"
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    return f"\\u{n:04x}"


def shown(text: str) -> str:
    """``text`` as one line a terminal shows literally: controls, bidi characters, undecodable
    bytes and backslashes escaped (see the module docstring).

    >>> shown("a\\x1b[2Jb\\\\c\\u202ed")
    'a\\\\x1b[2Jb\\\\\\\\c\\\\u202ed'
    """
    return _FIELD.sub(_escape, text)


def terminal_safe(text: str) -> str:
    """The last guard before output: the characters ``shown`` escapes, except newlines and
    backslashes, so text already passed through ``shown`` is unchanged and lines a command
    means to print stay lines. It keeps a field some caller forgot from driving the
    terminal; ``shown`` on each untrusted field is what keeps one line one line."""
    return _LINES.sub(_escape, text)
