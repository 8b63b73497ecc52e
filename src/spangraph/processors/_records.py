"""A span's raw fields as plain tuples: the records an offloading processor ships.

``start_record(span, known)`` and ``end_record(span, known)`` are called on the thread
that starts or ends the span (the copy is what lets the span go at once: spans held in a
queue cost the program's garbage collector). They come from the C extension
``spangraph._speedups`` when it was built, from :func:`py_start_record` and
:func:`py_end_record` otherwise; both give the same tuples. ``known`` maps ``id`` of a
Resource to the Resource, for the worker to announce each one once. ``RecordBuffer``
gathers the records for the worker to write (C, or :class:`PyRecordBuffer`).

Records (first item: what they are):

* START ``(0, trace_id, span_id, parent_id or 0, parent_is_remote, name, kind,
  start_time, attributes, resource_key)``: the attributes are a copy (None when empty),
  and for a span that is not spangraph's own, ``(copy, weak reference to the span)``
  (the reference alone when empty), read by the worker (:func:`attributes_of_start`)
* END ``(1, ...same head..., end_time, status_code, status_description, attributes or
  None, [(name, timestamp, attributes)] or None, [(trace_id, span_id, attributes)] or
  None, resource_key)``
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple
from weakref import ReferenceType

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, Status, StatusCode

START: Final = 0
END: Final = 1

RESERVE: Final = 1024
"""Records past ``max_records`` that a full buffer still takes: the ends of runs
(:func:`ends_a_run`), so that a run cut short by drops still ends."""


def ends_a_run(record: tuple[Any, ...]) -> bool:
    """Whether ``record`` is the END record of a root span or of a workflow span."""
    if record[0] != END or len(record) < 12:
        return False
    attributes = record[11]
    return not record[3] or (
        type(attributes) is dict and attributes.get("spangraph.kind") == "workflow"
    )


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
    copied: Any = _copy(attributes)
    if copied is None or _SG_KIND not in copied:  # see attributes_of_start
        try:
            ref = ReferenceType(span)
        except TypeError:
            pass
        else:
            copied = ref if copied is None else (copied, ref)
    return (START, *head, copied, key)


_SG_KIND: Final = "spangraph.kind"


def attributes_of_start(value: Any) -> dict[str, Any] | None:
    """The attributes of a START record (its item 8). spangraph's own spans name their
    kind when they start: a copy of the attributes then. Any other span's record also
    holds a weak reference to the span, ``(copy, ref)`` (``ref`` alone when it had none):
    while the span is still there and has not ended, this reads the attributes it has
    now, those set just after the start included (Traceloop's decorators and
    OpenLLMetry's LangChain handler name a span's kind so), which the worker reads
    milliseconds later; else the copy. Never raises."""
    kind = type(value)
    if kind is tuple:
        copied, ref = value
    elif kind is ReferenceType:
        copied, ref = None, value
    else:
        return value
    span = ref()
    if span is None:
        return copied
    try:
        if span.end_time is not None:  # its end is on its way, with its final attributes
            return copied
        inner = getattr(getattr(span, "_attributes", None), "_dict", None)
        return _copy(inner if type(inner) is dict else span.attributes)
    except Exception:
        return copied


def read_starts(records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``records`` with the attributes of each START record read now
    (:func:`attributes_of_start`): what can leave the process (``marshal`` takes no
    reference). In C where the extension was built (``_c_read_starts``)."""
    if _c_read_starts is not None:
        return _c_read_starts(
            records if type(records) is list else list(records), attributes_of_start
        )
    return py_read_starts(records)


def py_read_starts(records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """:func:`read_starts` in Python."""
    return [
        (*record[:8], attributes_of_start(record[8]), record[9])
        if record[0] == START and len(record) == 10 and type(record[8]) in _READ_LATER
        else record
        for record in records
    ]


_READ_LATER: Final = (tuple, ReferenceType)


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


_KINDS: Final = {k.value: k for k in SpanKind}
_CODES: Final = {c.value: c for c in StatusCode}
_STATUSES: Final = {c.value: Status(c) for c in StatusCode}  # those without a description
_NO_RESOURCE: Final = Resource.get_empty()


class RecordContext(NamedTuple):
    """The ``SpanContext`` fields the mapping reads."""

    trace_id: int
    span_id: int
    is_remote: bool


class RecordEvent(NamedTuple):
    """The ``Event`` fields the mapping reads."""

    name: str
    timestamp: int
    attributes: dict[str, Any]


class RecordLink(NamedTuple):
    """The ``Link`` fields the mapping reads."""

    context: RecordContext
    attributes: dict[str, Any]


class RecordSpan:
    """A span read back from its record: the ``ReadableSpan`` attributes the mapping reads
    (``name``, ``context``, ``parent``, ``kind``, ``start_time``, ``end_time``,
    ``status``, ``attributes``, ``events``, ``links``, ``resource``), made in about half
    the time a ``ReadableSpan`` takes. ``end_time`` is ``None`` for a START record."""

    __slots__ = (
        "_attributes",
        "context",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "resource",
        "start_time",
        "status",
    )

    name: str
    context: RecordContext
    parent: RecordContext | None
    kind: SpanKind
    start_time: int | None
    end_time: int | None
    status: Status
    _attributes: dict[str, Any]
    events: Sequence[RecordEvent]
    links: Sequence[RecordLink]
    resource: Any

    @property
    def attributes(self) -> dict[str, Any]:
        return self._attributes

    def __repr__(self) -> str:
        return f"RecordSpan({self.name!r}, span_id={self.context.span_id:016x})"


def rebuild(record: tuple[Any, ...], resources: Mapping[int, Any]) -> RecordSpan:
    """The span a START or END record holds, read through the attributes of a
    ``ReadableSpan`` (``resources``: resource key -> Resource), for the mapping."""
    span = RecordSpan.__new__(RecordSpan)
    trace_id, parent_id = record[1], record[3]
    span.name = record[5]
    span.context = RecordContext(trace_id, record[2], False)
    span.parent = RecordContext(trace_id, parent_id, record[4]) if parent_id else None
    span.kind = _KINDS.get(record[6], SpanKind.INTERNAL)
    span.start_time = record[7]
    if record[0] == START:
        span.end_time = None
        span.status = _STATUSES[0]
        span._attributes = attributes_of_start(record[8]) or {}
        span.events = span.links = ()
        span.resource = resources.get(record[9]) or _NO_RESOURCE
        return span
    end, code, description, attributes, events, links, key = record[8:15]
    span.end_time = end
    span.status = (
        _STATUSES.get(code, _STATUSES[0])
        if description is None
        else Status(_CODES.get(code, StatusCode.UNSET), description)
    )
    span._attributes = attributes or {}
    span.events = [RecordEvent(*event) for event in events] if events else ()
    span.links = [RecordLink(RecordContext(t, s, True), a) for t, s, a in links] if links else ()
    span.resource = resources.get(key) or _NO_RESOURCE
    return span


RESOURCES: Final[dict[int, Any]] = {}
"""Resource key -> Resource, shared by the in-process processors (so that one record can
serve them all)."""

# the last record copied: (span, what, known, record). The in-process processors are
# called one after the other for the same span on the same thread, so the second one finds
# the first one's copy here. Records are tuples, shared read-only. A lookup racing with
# another thread's copy only misses: a tuple is read and replaced whole.
_last: tuple[Any, int, Any, Any] = (None, -1, None, None)


def copy_record(what: int, span: Any, known: dict[int, Any]) -> tuple[Any, ...] | None:
    """The START (``what`` 0) or END record of ``span``: the C copy where it was built, the
    public-API copy where that fails (not the SDK's span); ``None`` when neither can read
    it, or when ``known`` is full and lacks its Resource (the span itself must then be
    read). The record just copied for the same span, ``what`` and ``known`` is given
    again instead of a second copy. Never raises."""
    global _last
    last = _last
    if last[0] is span and last[1] == what and last[2] is known:
        return last[3]
    record = _copied(what, span, known)
    if record is not None:
        _last = (span, what, known, record)
    return record


def snapshot(span: Any, known: dict[int, Any]) -> tuple[Any, ...] | None:
    """A START record of the open ``span`` as it is now (its name and attributes at this
    moment: what an event of it is mapped with), never one copied before; ``None`` as
    for :func:`copy_record`. Never raises."""
    record = _copied(START, span, known)
    if record is not None and type(record[8]) in _READ_LATER:  # (its copy is of now)
        copied = record[8][0] if type(record[8]) is tuple else None
        record = (*record[:8], copied, record[9])
    return record


def _copied(what: int, span: Any, known: dict[int, Any]) -> tuple[Any, ...] | None:
    try:
        record = (start_record if what == START else end_record)(span, known)
    except Exception:
        try:
            record = (py_start_record if what == START else py_end_record)(span, known)
        except Exception:
            return None
    if record[-1] not in known:  # more Resources than MAX_RESOURCES: not readable back
        return None
    return record


class PyRecordBuffer:
    """The records of an offloading processor, gathered in one bounded list: what the C
    ``spangraph._speedups.RecordBuffer`` does, in Python (where it was not built).

    ``start(span, parent_context=None)`` / ``end(span)`` are the processor's ``on_start``
    / ``on_end``: they copy the span into its record and append it, and never raise (a
    span that cannot be copied goes to ``fallback(what, span)``, and is dropped, counted,
    if that fails too). ``add(record)`` appends any record (``False``: full or closed).
    ``take()`` returns the list of what was gathered and starts a new one. The worker
    sets ``idle`` before it waits: the next record calls ``wake()``. Past
    ``max_records``, new records are dropped, counted.
    """

    def __init__(
        self,
        known: dict[int, Any],
        fallback: Callable[[int, Any], tuple[Any, ...]],
        wake: Callable[[], Any] | None = None,
        max_records: int = 65_536,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.known = known
        self.max_records = max_records
        self._fallback = fallback
        self._wake = wake
        self._records: list[tuple[Any, ...]] = []
        self.dropped = 0
        self.unreadable = 0
        self.idle = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: tuple[Any, ...]) -> bool:
        records = self._records
        if self.closed or (
            len(records) >= self.max_records
            and not (len(records) < self.max_records + RESERVE and ends_a_run(record))
        ):
            self.dropped += 1
            return False
        records.append(record)  # one call: a take() in between leaves it in one list
        if self.idle and self._wake is not None:
            self.idle = False
            try:
                self._wake()
            except Exception:  # pragma: no cover - never raise into user code
                pass
        return True

    def _add_span(self, what: int, span: Any) -> None:
        try:
            self.add((py_start_record if what == START else py_end_record)(span, self.known))
            return
        except Exception:
            pass
        try:
            self.add(self._fallback(what, span))
        except Exception:
            self.dropped += 1
            self.unreadable += 1

    def start(self, span: Any, parent_context: Any = None) -> None:
        self._add_span(START, span)

    def end(self, span: Any) -> None:
        self._add_span(END, span)

    def take(self) -> list[tuple[Any, ...]]:
        taken, self._records = self._records, []
        return taken

    def reset(self) -> None:
        self._records = []
        self.dropped = self.unreadable = 0
        self.idle = self.closed = False


start_record: Callable[[Any, dict[int, Any]], tuple[Any, ...]]
end_record: Callable[[Any, dict[int, Any]], tuple[Any, ...]]
RecordBuffer: type[Any]
RecordQueue: type[Any] | None
_c_read_starts: Callable[..., list[tuple[Any, ...]]] | None
try:
    from .._speedups import RecordBuffer, RecordQueue, end_record, start_record
except ImportError:  # not built (no C compiler at install): the same records, in Python
    start_record, end_record = py_start_record, py_end_record
    RecordBuffer = PyRecordBuffer
    RecordQueue = None  # the processors' on_start/on_end stay Python methods
try:
    from .._speedups import read_starts as _c_read_starts
except ImportError:  # (an extension built from older sources keeps its other parts)
    _c_read_starts = None

SPEEDUPS: Final = start_record is not py_start_record
"""Whether the C versions are in use."""
