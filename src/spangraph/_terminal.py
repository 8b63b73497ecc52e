"""Text from span data made safe to print on a terminal."""

from __future__ import annotations

from typing import Final

_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_VISIBLE: Final = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}
"""C0 and C1 controls and DEL as ``\\xNN``, bidirectional overrides and isolates as
``\\uNNNN``: what span names and attributes may hold that a terminal would act on (an
escape sequence clears the screen or retitles the window; an override reverses what
follows it)."""


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape."""
    return text.translate(_VISIBLE)
