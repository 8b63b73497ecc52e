"""Attribute values of any type, made safe for OpenTelemetry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from ._utf8 import utf8

MAX_VALUE_CHARS: Final = 8192
"""Longer string values are cut to this many characters, marker included."""

_INT64 = (-(2**63), 2**63 - 1)

_PLAIN: Final = frozenset((str, int, float, bool, tuple, type(None)))
"""Types of cleaned sequence items that are no subclass (a nested sequence is a tuple)."""


def truncate(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` when it has at most ``limit`` characters, else its start and a
    ``…[truncated N chars]`` marker, ``limit`` characters in all (only the marker when
    ``limit`` is shorter than it); N counts the characters really cut. A cut text is
    not longer than ``limit``, so cutting it again leaves it as it is."""
    if len(text) <= limit:
        return text
    # N has at most as many digits as len(text), so a marker counting len(text) fits;
    # one more step sizes it to N (cutting less can only shorten N).
    keep = max(0, limit - len(f"…[truncated {len(text)} chars]"))
    keep = max(0, limit - len(f"…[truncated {len(text) - keep} chars]"))
    return f"{text[:keep]}…[truncated {len(text) - keep} chars]"


def clean_value(value: Any) -> Any:
    """An OTel attribute value for ``value``: primitives pass, homogeneous sequences of
    primitives become tuples, everything else becomes (truncated) text. ``None`` stays
    ``None`` (the caller leaves the key out). Never raises."""
    try:
        return _clean_value(value)
    except Exception:  # e.g. a self-referencing list (RecursionError)
        return _text(value)


def _clean_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, str):
        return encodable(truncate(value))
    if isinstance(value, list | tuple):
        items = [_clean_value(v) for v in value]
        kinds = {type(v) for v in items}
        if not kinds <= _PLAIN:  # OpenTelemetry before 1.45 drops a subclass's sequence
            items = [plain_primitive(v) for v in items]
            kinds = {type(v) for v in items}
        if len(kinds) <= 1 and not kinds & {list, tuple, type(None)}:
            return tuple(items)
        return _text(value)
    if isinstance(value, Mapping):
        return _text(value)
    return _str(value)


def plain_primitive(value: Any) -> Any:
    """A str, int or float of a subclass (numpy.float64, an IntEnum, a str enum) as the
    plain value: the value itself, not what the subclass's ``__str__``, ``__float__`` or
    ``__int__`` makes of it. Anything else as it is (bool cannot be subclassed)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


def as_text(value: Any) -> str:
    """``value`` as (truncated) text: a ``str`` as it is, anything else as its JSON when
    it has one, else its ``str``. Never raises."""
    return _str(value) if isinstance(value, str) else _text(value)


def _text(value: Any) -> str:
    """JSON for ``value`` when it has one, else its (truncated) ``str``."""
    try:
        return encodable(truncate(json.dumps(value, default=str, ensure_ascii=False)))
    except Exception:  # unserializable keys, circular data, a __str__ that raises
        return _str(value)


def _str(value: Any) -> str:
    return encodable(truncate(safe_str(value)))


def encodable(text: str) -> str:
    """``text`` with each lone surrogate (what ``os.fsdecode`` leaves of bytes that are
    not UTF-8) as U+FFFD: an OTLP exporter cannot encode one and drops the attribute;
    spangraph's own writers mend it too, but the span goes to every exporter."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return utf8(text).decode()
    return text


def safe_str(value: Any) -> str:
    """``str(value)`` (not cut); ``<unprintable T>`` when that raises. Never raises."""
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Clean every value; keys become ``str``; ``None`` values are left out."""
    if not attributes:
        return {}
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        cleaned = clean_value(value)
        if cleaned is not None:
            out[encodable(str(key))] = cleaned
    return out
