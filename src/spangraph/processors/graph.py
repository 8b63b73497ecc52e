"""GraphSpanProcessor: every span into the graph store, as a parent-child graph."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry.sdk.util import BoundedList

from ..exceptions import StoreTimeoutError, StoreUnavailableError
from ..mapping import LOGFIRE_SPAN_TYPE, SpanMapper, hex_span_id, hex_trace_id
from ..stores._base import GraphStore, WriteBatch
from ._records import RESOURCES, rebuild
from ._streams import StreamedCalls
from ._worker import END, START, BatchWorker, QueueingSpanProcessor, ends_a_run

_log = logging.getLogger("spangraph")

_START = START
_END = END

_MAX_START_LABELS: Final = 65_536
"""Spans whose start label the graph worker remembers until their end (open spans)."""


def _attributes_view(span: Any) -> Mapping[str, Any]:
    """The span's attributes, to read a few keys from: the SDK's own dict behind the
    read-only ``span.attributes`` proxy when it is there (whose reads go through
    Python-level ``Mapping`` methods), else the public API."""
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(inner) is dict:
        return inner
    return span.attributes or {}


_SEQUENCES: Final = (BoundedList, tuple, list)


def _has_any(span: Any, name: str) -> bool:
    """Whether ``span.events`` (``name`` "events") or ``span.links`` is non-empty, without
    the copy the SDK's property makes (a tuple of its ``BoundedList``, under its lock);
    the public property where the SDK's internals differ."""
    inner: Any = getattr(span, "_" + name, None)
    if type(inner) in _SEQUENCES:
        return len(inner) > 0
    return bool(getattr(span, name))


class GraphSpanProcessor(QueueingSpanProcessor):
    """Writes spans into a :class:`~spangraph.stores.GraphStore`.

    A node is written when its span *starts* (``state: running``) and completed when it
    ends, so a process that dies mid-run leaves its partial tree. A span that starts and
    ends within one batch is written once.

    ``on_start`` and ``on_end`` are called synchronously on the thread that starts or ends
    the span, therefore they do not block or throw an exception: each appends to a
    bounded queue. A worker thread batches (``max_batch_size`` items, or every
    ``schedule_delay`` seconds), writes each batch in one round trip with instrumentation
    suppressed, retries with backoff while the store is unreachable, and counts and logs
    what it has to drop.
    """

    def __init__(
        self,
        store: GraphStore,
        *,
        project: str = "default",
        max_queue_size: int = 65_536,
        max_batch_size: int = 1024,
        schedule_delay: float = 0.2,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self._mapper = SpanMapper(project, adoptions=True)
        # span id -> the kind label its start was written with, until its end (mapping
        # thread only; the least recently written goes past the bound)
        self._start_labels: OrderedDict[str, str] = OrderedDict()
        # Logfire's streamed model calls waiting for their stream's answer (mapping thread)
        self._streamed = StreamedCalls()
        self._known: dict[int, Any] = RESOURCES  # resource key -> Resource (see _records)
        # a store that can encode a batch apart from sending it (FalkorDB) gets that work
        # done by the preparing thread, so that the sending one only sends
        self._encode: Callable[[WriteBatch], Any] | None = getattr(store, "encode", None)
        # items: (START or END, the span's record, or the span where no copy could read it)
        self._worker: BatchWorker[tuple[int, Any], Any] = BatchWorker(
            "graph",
            self._prepare,
            store.write,
            transient=(StoreUnavailableError,),
            max_queue_size=max_queue_size,
            max_batch_size=min(max_batch_size, max_queue_size),  # a batch fits the queue
            schedule_delay=schedule_delay,
            pipelined=True,  # map the next batch while the store writes this one
            extend=self._extend,
            finalize=self._encode,
            submit=getattr(store, "submit", None) if self._encode is not None else None,
            split=self._split,
            split_on=(StoreTimeoutError,),
            responsive=self._responsive,
            keep_when_full=ends_a_run,  # a run's end, past a full queue (a reserve)
        )
        self._put = self._worker.put
        self._shutdown_timeout = shutdown_timeout
        self._fast_path()

    # on_start / on_end: QueueingSpanProcessor's (an append to the bounded queue)

    # -- worker ---------------------------------------------------------------------------

    def _split(self, payload: Any, count: int) -> list[tuple[Any, int]] | None:
        """``payload`` (a batch, or what the store encoded of one) as two, by span, with
        ``count`` shared in proportion to their rows; ``None`` when it has one span."""
        batch = getattr(payload, "source", payload)
        halves = batch.split() if isinstance(batch, WriteBatch) else None
        if halves is None:
            return None
        first, second = halves
        rows = len(first) + len(second)
        first_count = min(max(1, round(count * len(first) / rows)), count - 1)
        encode = self._encode
        return [
            (encode(first) if encode is not None else first, first_count),
            (encode(second) if encode is not None else second, count - first_count),
        ]

    def _responsive(self) -> bool:
        """Whether the store answers a ping (a write that times out then is the batch's
        own trouble, not the store's)."""
        try:
            self.store.ping()
        except Exception:
            return False
        return True

    def _prepare(self, items: list[tuple[int, Any]]) -> tuple[WriteBatch, int]:
        batch = WriteBatch()
        return batch, self._extend(batch, items)

    def _extend(self, batch: WriteBatch, items: list[tuple[int, Any]]) -> int:
        """Map ``items`` into ``batch``; how many items that was.

        A span's start and end in one call give one row; in different calls of one batch
        (the worker fills a batch in steps while the store is busy), two rows, which the
        stores write in order (start rows first).
        """
        known = self._known
        skipped = 0
        given = len(items)
        if not all(type(item) is tuple for _, item in items):
            # spans no copy could read: one without ids (built by other code) is skipped
            # alone here, not with every span of the batch below
            items, skipped = _with_ids(items)
        # span id -> its end item (a record, or a span no copy could read)
        ended = {
            (item[2] if type(item) is tuple else item.context.span_id): item
            for what, item in items
            if what == _END
        }
        # ids of the spans some item here is a child of
        parents_here = {
            item[3] if type(item) is tuple else (item.parent.span_id if item.parent else 0)
            for _, item in items
        }
        starts, ends, parents, events, links = (
            batch.starts,
            batch.ends,
            batch.parents,
            batch.events,
            batch.links,
        )
        mapper = self._mapper
        start_labels = self._start_labels
        streamed = self._streamed
        resolve = mapper.lineage.resolve
        node_props = mapper.node_props
        for what, item in items:
            is_end = what == _END
            if not is_end:
                if type(item) is tuple:  # a START record
                    trace_id, span_id, parent_id = item[1:4]
                else:
                    ctx, parent = item.context, item.parent
                    trace_id, span_id = ctx.trace_id, ctx.span_id
                    parent_id = parent.span_id if parent is not None else 0
                end = ended.get(span_id)
                if end is not None:
                    # Started and ended within this batch: write it once, at its end. When
                    # it is a parent here, its run ids are resolved now all the same (from
                    # its final attributes), so that spans from other instrumentations
                    # under it (whose rows come before its end) inherit them. No span is
                    # rebuilt for this.
                    if span_id not in parents_here:
                        continue
                    try:
                        resolve(
                            hex_span_id(span_id),
                            hex_span_id(parent_id) if parent_id else None,
                            hex_trace_id(trace_id),
                            (end[11] or {}) if type(end) is tuple else _attributes_view(end),
                        )
                    except Exception:
                        _log.exception("spangraph graph: could not map a span's start")
                    continue
            try:
                span = rebuild(item, known) if type(item) is tuple else item
            except Exception:
                _log.exception("spangraph graph: could not read a span record; skipped")
                skipped += 1
                continue
            try:
                label, props = node_props(span, ended=is_end)
            except Exception:
                _log.exception("spangraph graph: could not map span %r; skipped", span.name)
                skipped += 1
                continue
            span_id = props.pop("span_id")
            if is_end:
                started_as = start_labels.pop(span_id, None)
                if started_as is not None and started_as != label:
                    # its kind changed after its start was written: one kind label
                    batch.relabels.setdefault(started_as, []).append({"span_id": span_id})
            elif label is not None:
                if len(start_labels) >= _MAX_START_LABELS and span_id not in start_labels:
                    start_labels.popitem(last=False)
                start_labels[span_id] = label
            rows = (ends if is_end else starts).get(label)
            if rows is None:
                rows = (ends if is_end else starts)[label] = []
            rows.append({"span_id": span_id, "props": props})
            if is_end and (label is None or label == "LLM"):
                attributes = getattr(span, "_attributes", None)
                if type(attributes) is not dict:
                    attributes = span.attributes or {}
                if LOGFIRE_SPAN_TYPE in attributes:  # Logfire's: a stream's request or record
                    try:
                        answer = streamed.ended(attributes, span_id, label, props)
                    except Exception:  # (this span's node is written as it is)
                        _log.exception("spangraph graph: could not pair Logfire's %r", span.name)
                        answer = None
                    if answer is not None:  # the stream's answer, for its request's node
                        ends.setdefault("LLM", []).append(answer)
            parent_id = props.get("parent_span_id")
            if parent_id:
                parents.append(
                    {
                        "span_id": span_id,
                        "parent_span_id": parent_id,
                        "trace_id": props["trace_id"],
                        "workflow_id": props["workflow_id"],
                    }
                )
            if is_end:
                try:
                    span_events = (
                        mapper.event_rows(span, span_id) if _has_any(span, "events") else ()
                    )
                    span_links = mapper.link_rows(span, span_id) if _has_any(span, "links") else ()
                    resume, pause = (
                        mapper.pause_rows(span, props, span_id)
                        if label == "Workflow" and _has_any(span, "events")
                        else (None, None)
                    )
                    options, edges = (
                        mapper.option_rows(span, props, span_id)
                        if label == "Decision"
                        else ((), ())
                    )
                except Exception:  # the node is written; one span's odd data fails no other
                    _log.exception(
                        "spangraph graph: could not map the events, links or options of "
                        "span %r; its node is written without them",
                        span.name,
                    )
                    continue
                events.extend(span_events)
                if resume is not None:
                    batch.resumes.append(resume)
                if pause is not None:
                    batch.pauses.append(pause)
                for link_type, link_row in span_links:
                    links.setdefault(link_type, []).append(link_row)
                if options:
                    ends.setdefault("Option", []).extend(options)
                for edge_type, edge_row in edges:
                    links.setdefault(edge_type, []).append(edge_row)
        adopted = mapper.lineage.adopted
        if adopted:
            batch.adopted.extend(adopted)
            adopted.clear()
        if skipped:
            self._worker._count_drop(skipped, "could not be read or mapped")
        return given - skipped

    # -- SpanProcessor ------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._worker.flush(timeout_millis / 1000)

    def _request_flush(self) -> Callable[[float | None], bool]:
        """A flush asked for now, waited for by calling the result (see ``Spangraph``)."""
        return self._worker.request_flush()

    def shutdown(self) -> None:
        """Send what is queued within ``shutdown_timeout`` seconds (what is left is counted
        as dropped), then stop the worker; spans after this are ignored."""
        self._shutdown(self._shutdown_timeout)

    def _shutdown(self, timeout: float) -> None:
        # Processors cannot be removed from a TracerProvider: once shut down (or replaced by
        # a new configure()), ignore spans instead of counting them as drops.
        self._put = _ignore
        self._worker.shutdown(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return self._worker.stats()


def _ignore(item: object) -> bool:
    return False


def _with_ids(items: list[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], int]:
    """``items`` without the spans whose ids cannot be read (logged), and how many
    those were."""
    kept = []
    for what, item in items:
        if type(item) is not tuple:
            try:
                item.context.span_id  # noqa: B018
                _ = item.parent.span_id if item.parent else 0
            except Exception:
                _log.exception("spangraph graph: a span without readable ids; skipped")
                continue
        kept.append((what, item))
    return kept, len(items) - len(kept)
