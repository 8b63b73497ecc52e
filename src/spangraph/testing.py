"""Helpers for users' own tests: capture spangraph's spans and events in memory.

>>> from spangraph import testing
>>> with testing.capture() as cap:              # doctest: +SKIP
...     my_workflow()
>>> assert cap.has_event("workflow.completed")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from . import _state
from . import semconv as sc
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

    def has_event(self, name: str, **attributes: Any) -> bool:
        """True when some event has this name and (at least) these attribute values."""
        return any(
            all(e.attributes.get(k) == v for k, v in attributes.items()) for e in self.events(name)
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


@contextmanager
def capture(tracer_provider: TracerProvider | None = None) -> Iterator[SpanCapture]:
    """Capture the spans spangraph's API makes inside the block.

    Uses a private TracerProvider (so nothing is exported anywhere) unless one is given.
    """
    provider = tracer_provider or TracerProvider()
    cap = SpanCapture()
    provider.add_span_processor(cap)
    previous = _state.tracer
    _state.tracer = provider.get_tracer(_state.INSTRUMENTATION_NAME, __version__)
    try:
        yield cap
    finally:
        _state.tracer = previous
        if tracer_provider is None:
            provider.shutdown()
