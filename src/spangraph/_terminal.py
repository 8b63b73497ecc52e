"""Text from span data made safe to print on a terminal."""

from __future__ import annotations

import signal
import threading
from typing import Any, Final

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


interrupted: Final = threading.Event()
"""Set by :func:`on_interrupt`: a Ctrl-C (or SIGTERM) came, also when the
``KeyboardInterrupt`` it raised was lost (raised inside a ``__del__`` that the garbage
collector ran, where Python reports it and goes on)."""


def on_interrupt(signum: int, frame: Any) -> None:
    """A signal handler: note the interrupt, then raise ``KeyboardInterrupt`` as Python's
    own SIGINT handler does."""
    interrupted.set()
    raise KeyboardInterrupt


def handle_interrupts(*signums: int) -> dict[int, Any]:
    """Install :func:`on_interrupt` for ``signums`` (in the main thread only; a signal
    whose handler the program changed is left alone); the handlers it replaced, to put
    back with :func:`restore`."""
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced
    for signum in signums:
        current = signal.getsignal(signum)
        if current in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(signum, on_interrupt)
            replaced[signum] = current
    return replaced


def restore(replaced: dict[int, Any]) -> None:
    """Put back the handlers :func:`handle_interrupts` replaced."""
    for signum, handler in replaced.items():
        signal.signal(signum, handler)
