"""GraphSpanProcessor: every span into the graph store, as a parent-child graph."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..exceptions import StoreUnavailableError
from ..mapping import SpanMapper
from ..stores._base import GraphStore, WriteBatch
from ._worker import BatchWorker

_log = logging.getLogger("spangraph")

_START = 0
_END = 1


class GraphSpanProcessor(SpanProcessor):
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
    ) -> None:
        self.store = store
        self._mapper = SpanMapper(project)
        self._worker: BatchWorker[tuple[int, ReadableSpan], WriteBatch] = BatchWorker(
            "graph",
            self._prepare,
            store.write,
            transient=(StoreUnavailableError,),
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay=schedule_delay,
        )
        self._put = self._worker.put

    # -- hot path -------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._put((_START, span))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._put((_END, span))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    # -- worker ---------------------------------------------------------------------------

    def _prepare(self, items: list[tuple[int, ReadableSpan]]) -> tuple[WriteBatch, int]:
        ended = {span.context.span_id for what, span in items if what == _END}
        batch = WriteBatch()
        mapper = self._mapper
        for what, span in items:
            if what == _START and span.context.span_id in ended:
                continue  # started and ended within this batch: write it once
            try:
                label, props = mapper.node_props(span, ended=what == _END)
            except Exception:
                _log.exception("spangraph graph: could not map span %r; skipped", span.name)
                continue
            span_id = props.pop("span_id")
            row = {"span_id": span_id, "props": props}
            (batch.ends if what == _END else batch.starts).setdefault(label, []).append(row)
            if props.get("parent_span_id"):
                batch.parents.append(
                    {
                        "span_id": span_id,
                        "parent_span_id": props["parent_span_id"],
                        "trace_id": props["trace_id"],
                        "workflow_id": props["workflow_id"],
                    }
                )
            if what == _END:
                batch.events.extend(mapper.event_rows(span, span_id))
                for link_type, link_row in mapper.link_rows(span, span_id):
                    batch.links.setdefault(link_type, []).append(link_row)
        return batch, len(items)

    # -- SpanProcessor ------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._worker.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self._worker.shutdown()

    def stats(self) -> dict[str, Any]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return self._worker.stats()
