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


MAX_JSON_CUT_CHARS: Final = 128 * MAX_VALUE_CHARS
"""Longer JSON text (1 MiB) is cut at its end like any text, not inside (which reads it)."""

_MIN_CAP: Final = 64
"""The shortest a string inside cut JSON is cut to (its marker included)."""


def truncate_text(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters as :func:`truncate` cuts it, except JSON of a
    list or map (a model call's messages as other instrumentations record them, in one
    attribute), which is cut inside by :func:`cut_json`: it stays JSON of the same shape,
    its short values (tool calls' names and ids, roles, finish reasons) whole."""
    if len(text) <= limit:
        return text
    if len(text) <= MAX_JSON_CUT_CHARS and text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict | list):
            cut = cut_json(value, limit)
            if cut is not None:
                return cut
    return truncate(text, limit)


def cut_json(value: Any, limit: int = MAX_VALUE_CHARS) -> str | None:
    """Compact JSON of ``value`` in at most ``limit`` characters, made to fit by cutting
    the strings in it that are longer than some length (each with a ``…[truncated N
    chars]`` marker), the same length for all, as long as fits; shorter strings, keys,
    numbers and the shape stay as they are. ``None`` when even strings cut to 64
    characters do not fit (or ``value`` has no JSON)."""

    def dumps(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)

    try:
        whole = dumps(value)
        if len(whole) <= limit:
            return whole
        best = dumps(_capped(value, _MIN_CAP))
        if len(best) > limit:
            return None  # too many strings, keys or numbers to fit, however cut
        lo, hi = _MIN_CAP + 1, _longest(value)
        while lo <= hi:
            cap = (lo + hi) // 2
            text = dumps(_capped(value, cap))
            if len(text) <= limit:
                best, lo = text, cap + 1
                if len(text) >= limit - limit // 16:
                    break  # close enough: fewer rounds over a large value
            else:
                hi = cap - 1
        return best
    except (ValueError, TypeError, RecursionError):
        return None


def _longest(value: Any) -> int:
    """The length of the longest string in ``value`` (keys aside), walked without
    recursion (JSON may nest deeper than Python's recursion limit allows twice over)."""
    longest, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif not (item is None or isinstance(item, bool | int | float)):
            longest = max(longest, len(safe_str(item)))
    return longest


def _capped(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return truncate(value, cap) if len(value) > cap else value
    if isinstance(value, dict):
        return {k: _capped(v, cap) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_capped(v, cap) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _capped(safe_str(value), cap)


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
        return encodable(truncate_text(value))
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
        text = json.dumps(value, default=str, ensure_ascii=False)
        if MAX_VALUE_CHARS < len(text) <= MAX_JSON_CUT_CHARS and isinstance(
            value, Mapping | list | tuple
        ):
            text = cut_json(value) or text  # cut inside: still JSON
        return encodable(truncate(text))
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
