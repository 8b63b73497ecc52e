"""Helpers for users' own tests: capture spangraph's spans and events in memory.

>>> from spangraph import testing
>>> with testing.capture() as cap:              # doctest: +SKIP
...     my_workflow()
>>> assert cap.has_event("workflow.completed")  # doctest: +SKIP

A capture gets every span that spangraph's API ends while its block is open, in any
thread. Captures nest: the outer one gets the spans made inside the inner one too.
spangraph's tracer is one for the whole process, so captures open at the same time in
different threads each get the spans of all of them; :func:`capture` warns
(``RuntimeWarning``) when a capture opens while one of another thread is open.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from . import _state
from . import semconv as sc
from ._attrs import clean_value
from ._version import __version__

__all__ = ["CapturedEvent", "SpanCapture", "capture"]


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One span event, with the span it belongs to."""

    name: str
    attributes: dict[str, Any]
    time_ns: int
    span_name: str
    span_kind: str | None
    span_id: str


class SpanCapture(SpanProcessor):
    """A span processor that keeps finished spans in memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self._spans.append(span)

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished spans in the order they ended."""
        with self._lock:
            return list(self._spans)

    def find(self, name: str | None = None, *, kind: str | None = None) -> list[ReadableSpan]:
        """Finished spans with this name and/or ``spangraph.kind``."""
        return [
            s
            for s in self.spans
            if (name is None or s.name == name)
            and (kind is None or (s.attributes or {}).get(sc.KIND) == kind)
        ]

    def events(self, name: str | None = None) -> list[CapturedEvent]:
        """Events of all finished spans in time order, optionally only those named ``name``
        (a name ending in ``.*`` matches a prefix: ``"step.*"``)."""
        out = []
        for span in self.spans:
            attrs = span.attributes or {}
            for ev in span.events:
                if name is not None and not _matches(ev.name, name):
                    continue
                out.append(
                    CapturedEvent(
                        name=ev.name,
                        attributes=dict(ev.attributes or {}),
                        time_ns=ev.timestamp,
                        span_name=span.name,
                        span_kind=attrs.get(sc.KIND),  # type: ignore[arg-type]
                        span_id=format(span.context.span_id, "016x"),
                    )
                )
        out.sort(key=lambda e: e.time_ns)
        return out

    def event_names(self) -> list[str]:
        """Names of all events in time order."""
        return [e.name for e in self.events()]

    def has_event(self, name: str, /, **attributes: Any) -> bool:
        """True when some event has this name and (at least) these attribute values,
        each compared as given and as spangraph records it (a list as a tuple, a dict
        as its JSON text)."""
        return any(
            all(_same(e.attributes.get(k), v) for k, v in attributes.items())
            for e in self.events(name)
        )

    def clear(self) -> None:
        """Forget everything captured so far."""
        with self._lock:
            self._spans.clear()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _matches(event_name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return event_name.startswith(pattern[:-1])
    return event_name == pattern


def _same(recorded: Any, expected: Any) -> bool:
    return bool(recorded == expected or recorded == clean_value(expected))


class _Open:
    """One open :func:`capture` block."""

    __slots__ = ("cap", "thread", "tracer")

    def __init__(self, cap: SpanCapture, tracer: trace.Tracer) -> None:
        self.cap = cap
        self.tracer = tracer
        self.thread = threading.get_ident()


_lock = threading.Lock()
_open: list[_Open] = []
"""The open captures, oldest first; the newest one's tracer is spangraph's tracer."""
_tracer_before: trace.Tracer | None = None
"""spangraph's tracer from before the first of the open captures."""


class _FanOut(SpanProcessor):
    """Gives each span that ends to the captures that were open when it started and
    still are; on the providers captures use."""

    def __init__(self) -> None:
        self._started: dict[int, tuple[_Open, ...]] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if _open:  # no capture open: nothing to give it to (and nothing to keep)
            self._started[span.get_span_context().span_id] = tuple(_open)

    def on_end(self, span: ReadableSpan) -> None:
        # a span of an earlier capture that ends now (a generator collected late) is not
        # the open capture's
        context = span.get_span_context()
        for entry in self._started.pop(context.span_id if context else 0, ()):
            if entry in _open:
                entry.cap.on_end(span)

    def forget(self, entry: _Open) -> None:
        """``entry`` closed: the spans it saw start and that have not ended (a thread
        that never left its step) no longer hold it, nor its capture and provider."""
        for span_id, entries in list(self._started.items()):
            if entry in entries:
                rest = tuple(e for e in entries if e is not entry)
                if rest:
                    self._started[span_id] = rest
                else:
                    self._started.pop(span_id, None)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


_FAN_OUT = _FanOut()


def _private_provider() -> TracerProvider:
    """A TracerProvider that records what the block does whatever the environment says
    to the program's own (``OTEL_SDK_DISABLED``, ``OTEL_TRACES_SAMPLER=always_off``,
    ``OTEL_SPAN_EVENT_COUNT_LIMIT=0`` ... would leave a capture empty, and a test that
    asserts something is *not* there passing for nothing): every span sampled, the
    OpenTelemetry default limits."""
    limits = SpanLimits(
        max_span_attributes=128,
        max_events=128,
        max_links=128,
        max_event_attributes=128,
        max_link_attributes=128,
        max_span_attribute_length=SpanLimits.UNSET,
        max_attribute_length=SpanLimits.UNSET,
    )
    provider = TracerProvider(sampler=ALWAYS_ON, span_limits=limits, shutdown_on_exit=False)
    if getattr(provider, "_disabled", False):  # read from OTEL_SDK_DISABLED
        provider._disabled = False
    return provider


_fanned: weakref.WeakSet[TracerProvider] = weakref.WeakSet()


def _configured(provider: TracerProvider) -> None:
    """``configure()`` chose ``provider``'s tracer while captures are open: they go on
    getting the spans (now also written to the configured store and exported), and a
    RuntimeWarning says so."""
    with _lock:
        if not _open:
            return
        if provider not in _fanned:
            provider.add_span_processor(_FAN_OUT)
            _fanned.add(provider)
    warnings.warn(
        "spangraph.configure() inside spangraph.testing.capture(): the capture goes on, "
        "and the spans are also written to the configured store and exported; call "
        "configure() outside the block (or not at all) to keep a test in memory",
        RuntimeWarning,
        stacklevel=3,
    )


@contextmanager
def capture(tracer_provider: TracerProvider | None = None) -> Iterator[SpanCapture]:
    """Capture the spans spangraph's API makes inside the block (in any thread): those
    that start inside it and end before it closes. A ``configure()`` or ``shutdown()``
    inside the block keeps the tracer it chose after the block.

    Uses a private TracerProvider (so nothing is exported anywhere) unless one is given;
    a given one keeps its processors, and its spans too are captured while the block is
    open. Nested captures: the outer one gets the inner one's spans too. Captures open
    at the same time in different threads each get the spans of all of them (the
    tracer is process-wide): a RuntimeWarning says so.
    """
    global _tracer_before
    from ._sdk import _instrument_threads, current

    if current() is None:
        # as configure() does by default: a thread started inside a step (a
        # ThreadPoolExecutor's too) carries the run, so a test sees the tree the
        # program makes (configure(instrument_threads=False) opts out for both)
        _instrument_threads()
    provider = tracer_provider or _private_provider()
    cap = SpanCapture()
    entry = _Open(cap, provider.get_tracer(_state.INSTRUMENTATION_NAME, __version__))
    with _lock:
        if provider not in _fanned:
            provider.add_span_processor(_FAN_OUT)
            _fanned.add(provider)
        shared = any(e.thread != entry.thread for e in _open)
        if not _open:
            _tracer_before = _state.tracer
        _open.append(entry)
        _state.tracer = entry.tracer
    if shared:
        warnings.warn(
            "spangraph.testing.capture(): a capture is open in another thread; "
            "spangraph's tracer is process-wide, so each of them gets the spans of both",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        yield cap
    finally:
        with _lock:
            _open.remove(entry)
            # configure() or shutdown() inside the block chose a tracer: it stays
            changed = _state.tracer is not entry.tracer
            if _open:
                if not changed:
                    _state.tracer = _open[-1].tracer
            else:
                if not changed:
                    _state.tracer = _tracer_before  # type: ignore[assignment]
                _tracer_before = None
            _FAN_OUT.forget(entry)  # (spans of it that never ended held it for good)
        if tracer_provider is None:
            provider.shutdown()
