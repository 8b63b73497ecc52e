"""Text as UTF-8 for the wire, whatever the str holds."""

from __future__ import annotations

import re
from typing import Any, Final

REPLACEMENT: Final = "\ufffd".encode()
_SURROGATE: Final = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")
"""A lone surrogate as the ``surrogatepass`` error handler writes it in UTF-8."""


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, each lone surrogate in it as U+FFFD. UTF-8 cannot encode a lone
    surrogate (a str holds them after bytes are decoded with ``surrogateescape``, as
    ``os.fsdecode`` does); strict encoding would raise and fail a whole batch."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub(REPLACEMENT, text.encode("utf-8", "surrogatepass"))


def as_stored(name: str) -> str:
    """A name as the stores keep it as a node's name: a NUL or a lone surrogate as
    U+FFFD (FalkorDB's writes; the same on Neo4j, so names match on either store)."""
    if "\x00" in name:
        name = name.replace("\x00", "\ufffd")
    try:
        name.encode()
    except UnicodeEncodeError:
        name = utf8(name).decode()
    return name


def mended(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` of a command, each str in it as :func:`utf8` bytes."""
    return tuple(utf8(a) if isinstance(a, str) else a for a in args)


def mended_value(value: Any) -> Any:
    """``value`` with each str in it (in dicts, lists and tuples too) made encodable: its
    lone surrogates as U+FFFD."""
    if isinstance(value, str):
        return utf8(value).decode()
    if isinstance(value, dict):
        return {mended_value(k): mended_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(mended_value(v) for v in value)
    if isinstance(value, list):
        return [mended_value(v) for v in value]
    return value
