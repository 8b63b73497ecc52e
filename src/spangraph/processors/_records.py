"""A span's raw fields as plain tuples: the records an offloading processor ships.

``start_record(span, known)`` and ``end_record(span, known)`` are called on the thread
that starts or ends the span (the copy is what lets the span go at once: spans held in a
queue cost the program's garbage collector). They come from the C extension
``spangraph._speedups`` when it was built, from :func:`py_start_record` and
:func:`py_end_record` otherwise; both give the same tuples. ``known`` maps ``id`` of a
Resource to the Resource, for the worker to announce each one once.

Records (first item: what they are):

* START ``(0, trace_id, span_id, parent_id or 0, parent_is_remote, name, kind,
  start_time, attributes or None, resource_key)``
* END ``(1, ...same head..., end_time, status_code, status_description, attributes or
  None, [(name, timestamp, attributes)] or None, [(trace_id, span_id, attributes)] or
  None, resource_key)``
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

START: Final = 0
END: Final = 1
MAX_RESOURCES: Final = 4096

_HEAD: Final = operator.attrgetter(
    "_context", "_parent", "_name", "_kind", "_start_time", "_resource", "_attributes"
)
_TAIL: Final = operator.attrgetter("_end_time", "_status", "_events", "_links")


def _copy(attributes: Any) -> dict[str, Any] | None:
    inner = getattr(attributes, "_dict", None)
    if type(inner) is dict:
        return inner.copy() if inner else None
    return dict(attributes) if attributes else None


def _head(span: Any, known: dict[int, Any]) -> tuple[tuple[Any, ...], Any, int]:
    try:
        ctx, parent, name, kind, start, resource, attributes = _HEAD(span)
        kind_value = kind._value_
    except AttributeError:  # not the SDK's span: its public API
        ctx, parent, name, start = span.context, span.parent, span.name, span.start_time
        kind_value, resource, attributes = span.kind.value, span.resource, span.attributes
    key = id(resource)
    if key not in known and len(known) < MAX_RESOURCES:
        known[key] = resource
    head = (
        ctx[0],
        ctx[1],
        parent[1] if parent is not None else 0,
        bool(parent[2]) if parent is not None else False,
        name,
        kind_value,
        start,
    )
    return head, attributes, key


def py_start_record(span: Any, known: dict[int, Any]) -> tuple[Any, ...]:
    """The START record of ``span`` (any ReadableSpan)."""
    head, attributes, key = _head(span, known)
    return (START, *head, _copy(attributes), key)


def py_end_record(span: Any, known: dict[int, Any]) -> tuple[Any, ...]:
    """The END record of the ended ``span`` (any ReadableSpan)."""
    head, attributes, key = _head(span, known)
    try:
        end, status, events, links = _TAIL(span)
        code, description = status._status_code._value_, status._description
    except AttributeError:
        end, status, events, links = span.end_time, span.status, span.events, span.links
        code, description = status.status_code.value, status.description
    return (
        END,
        *head,
        end,
        code,
        description,
        _copy(attributes),
        [(e.name, e.timestamp, _copy(e.attributes) or {}) for e in events] if events else None,
        [(ln.context[0], ln.context[1], _copy(ln.attributes) or {}) for ln in links]
        if links
        else None,
        key,
    )


start_record: Callable[[Any, dict[int, Any]], tuple[Any, ...]]
end_record: Callable[[Any, dict[int, Any]], tuple[Any, ...]]
try:
    from .._speedups import end_record, start_record
except ImportError:  # not built (no C compiler at install): the same records, in Python
    start_record, end_record = py_start_record, py_end_record

SPEEDUPS: Final = start_record is not py_start_record
"""Whether the C versions are in use."""
