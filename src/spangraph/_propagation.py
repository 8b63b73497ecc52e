"""Runs across services: a run's ids in W3C Baggage (``configure(propagate=True)``).

The process that starts a workflow or branch puts its ids in the context's baggage; the
OpenTelemetry propagators (``tracecontext,baggage`` by default) carry them in the
``baggage`` header of every instrumented outgoing request, and the receiving service's
instrumentation puts them in its context. There, :func:`run_ids` lets spangraph's own
spans join the run, and :class:`RunBaggageProcessor` stamps them on the other spans
(a web framework's server span) that start in it.
"""

from __future__ import annotations

import logging
from typing import Final, TypeGuard
from urllib.parse import quote_plus

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from . import semconv as sc
from ._attrs import encodable
from ._ids import MAX_ID_CHARS

_log = logging.getLogger("spangraph")

KEYS: Final = (sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.WORKFLOW_NAME, sc.BRANCH_ID)
"""The baggage entries of a run: named as the span attributes they carry."""


_MAX_PAIR_BYTES: Final = 4096
_MAX_HEADER_BYTES: Final = 8192
_MAX_PAIRS: Final = 180
"""What the W3C Baggage propagator sends: entries ``key=value`` of at most 4 096 bytes
once percent-encoded, at most 180 of them, in a header of at most 8 192 bytes (it leaves
out what does not fit)."""

_warned = False


def with_run(
    ctx: Context, workflow_id: str, execution_id: str, workflow_name: str, branch_id: str | None
) -> Context:
    """``ctx`` with the run's ids in its baggage (empty values left out). All of them, or
    none (with a warning, once) when the propagator would not carry them all unchanged:
    a called service that got some would put its spans in the wrong execution or branch.
    The workflow's name is no id: when it alone would not be carried as it is (white
    space around it, or too long), the ids go without it."""
    # as the spans carry them: a lone surrogate (from os.fsdecode) as U+FFFD, which the
    # propagator can percent-encode (it raised UnicodeEncodeError)
    values: tuple[str | None, ...] = tuple(
        encodable(v) if isinstance(v, str) else v
        for v in (workflow_id, execution_id, workflow_name, branch_id)
    )
    if not _carried(ctx, values, warn=False):
        values = (values[0], values[1], None, values[3])
        if not _carried(ctx, values):
            values = (None, None, None, None)
    for key, value in zip(KEYS, values, strict=True):
        if value:
            ctx = baggage.set_baggage(key, value, ctx)
        elif baggage.get_baggage(key, ctx) is not None:  # not a stale one from outside
            ctx = baggage.remove_baggage(key, ctx)
    return ctx


def _size(key: str, value: object) -> int:
    """Bytes of ``key=value`` in the header, as the propagator encodes it."""
    # (an entry from elsewhere may hold a lone surrogate: counted as U+FFFD)
    return len(quote_plus(encodable(key))) + 1 + len(quote_plus(encodable(str(value))))


def _carried(ctx: Context, values: tuple[str | None, ...], *, warn: bool = True) -> bool:
    """Whether the W3C Baggage propagator would carry ``values``, next to the other
    entries of ``ctx``, as they are: it strips the whitespace around a value, drops an
    entry that is too long, and stops at the header's limits. ``warn``: once, when not."""
    global _warned
    ours = {k: v for k, v in zip(KEYS, values, strict=True) if v}
    sizes = [_size(k, v) for k, v in ours.items()]
    others = [
        size
        for k, v in baggage.get_all(ctx).items()
        if k not in ours and (size := _size(k, v)) <= _MAX_PAIR_BYTES
    ]
    if (
        all(v == v.strip() for v in ours.values())
        and max(sizes, default=0) <= _MAX_PAIR_BYTES
        and len(sizes) + len(others) <= _MAX_PAIRS
        and sum(sizes) + sum(others) + len(sizes) + len(others) - 1 <= _MAX_HEADER_BYTES
    ):
        return True
    if warn and not _warned:
        _warned = True
        _log.warning(
            "spangraph: a run's ids are left out of baggage, so called services will not "
            "join it: the W3C Baggage propagator would strip the spaces around one, or "
            "leave one out as too long (entries of at most %d bytes percent-encoded, "
            "%d bytes in all) (workflow id %.80r)",
            _MAX_PAIR_BYTES,
            _MAX_HEADER_BYTES,
            values[0],
        )
    return False


def _usable_id(value: object) -> TypeGuard[str]:
    """An id as the SDK takes one from its user (non-blank, no white space around it, at
    most ``MAX_ID_CHARS``, not ``.`` or ``..``), and printable: baggage may come from
    anyone who can send the service a request."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_CHARS
        and value == value.strip()
        and value.isprintable()
        and value not in (".", "..")
    )


def run_ids(ctx: Context | None = None) -> dict[str, str] | None:
    """The run ids in the baggage of ``ctx`` (default: the current context), by attribute
    key; ``None`` when there is no workflow id, or when any id there is one the SDK
    would refuse (blank, too long, ``..``, a control character …): all of them or none,
    so that spans never join a run under an execution or branch not the caller's. A blank
    workflow name is left out."""
    entries = baggage.get_all(ctx)
    if not entries:
        return None
    out: dict[str, str] = {}
    for key in KEYS:
        value = entries.get(key)
        if value is None:
            continue
        if key == sc.WORKFLOW_NAME:  # a name, not an id: any non-blank text
            if isinstance(value, str) and value.strip():
                out[key] = value
        elif _usable_id(value):
            out[key] = value
        else:
            return None
    return out if sc.WORKFLOW_ID in out else None


class RunBaggageProcessor(SpanProcessor):
    """Stamps the run ids from the parent context's baggage on spans that start without
    them: the spans of other instrumentations in a service that received a request from
    a run. Added before spangraph's other processors, so that they see the ids."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            attributes = span.attributes
            if attributes is not None and sc.WORKFLOW_ID in attributes:
                return
            ids = run_ids(parent_context)
            if ids is not None:
                ids.setdefault(sc.EXECUTION_ID, ids[sc.WORKFLOW_ID])
                span.set_attributes(ids)
        except Exception:  # pragma: no cover - never raise into user code
            pass

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
